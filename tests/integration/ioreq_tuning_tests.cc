// SPDX-License-Identifier: GPL-2.0-only
// [daemon] ioreq_poll_us and ioreq_realtime_priority reach a served guest:
// its ioreq loop polls for the configured window (the loop counts what the
// poll served), and its I/O threads run SCHED_FIFO when the process may
// (otherwise the normal policy, with a warning). No timing is asserted.
#include <gtest/gtest.h>

#include <pthread.h>

#include <boost/asio/post.hpp>

#include <future>
#include <thread>

#include "ioreq_tuning.h"
#include "sim_host.h"

namespace xv::daemon {
namespace {

using namespace std::chrono_literals;
using namespace testing;

constexpr std::uint32_t kMagic = 0x74726976;  // virtio-mmio MagicValue "virt"

std::string config(const TempImage& img, const std::string& daemon) {
    return "[daemon]\n" + daemon + "\n" + domains_toml({{"g1", "unsafe"}}) + blk_toml("g1", img.path.string());
}

/// Serves g1 with one blk device under `daemon_keys`.
struct Served {
    explicit Served(const std::string& daemon_keys) : h(config(img, daemon_keys)) {
        auto d = create_guest(h, "g1");
        if (!d || !h.sim->add_virtio_device(spec(*d, 0, "virtio,device2"))) return;
        dom = *d;
        auto v = h.start();
        if (!v || h.sessions().size() != 1) return;
        session = h.sessions().front();
    }
    TempImage img{1 << 20};
    Host h;
    xen::DomId dom = 0;
    std::shared_ptr<GuestSession> session;
};

/// The policy and priority of a thread of `ex`.
std::pair<int, int> scheduling_on(boost::asio::any_io_executor ex) {
    std::promise<std::pair<int, int>> p;
    boost::asio::post(ex, [&p] { p.set_value(current_thread_scheduling()); });
    return p.get_future().get();
}

/// Whether this process may run a thread SCHED_FIFO at `prio` (probed on a
/// scratch thread).
bool may_use_fifo(int prio) {
    bool ok = false;
    std::thread t([&] {
        sched_param p{};
        p.sched_priority = prio;
        ok = pthread_setschedparam(pthread_self(), SCHED_FIFO, &p) == 0;
    });
    t.join();
    return ok;
}

TEST(IoreqTuning, ConfiguredPollWindowReachesTheGuestsLoopAndServesAccessesWithoutWakeUps) {
    Served s("ioreq_poll_us = 1000");
    ASSERT_TRUE(s.session);
    auto loop = s.session->loop();
    EXPECT_EQ(loop->poll_window(), 1000us);
    auto g = s.h.sim->guest(s.dom);
    // Back-to-back reads: once one arrives within the window of the last,
    // the poll serves it (bounded, so a very slow host cannot hang the test).
    unsigned reads = 0;
    while (loop->stats().polled == 0 && reads < 5000) {
        auto v = g->mmio_read(0, kBase, 4);
        ASSERT_TRUE(v) << v.error().describe();
        ASSERT_EQ(*v, kMagic);
        ++reads;
    }
    EXPECT_GT(loop->stats().polled, 0u) << "after " << reads << " reads";
    EXPECT_LE(loop->stats().polled, loop->stats().served);
}

TEST(IoreqTuning, WithoutTheKeyTheLoopPollsAnAdaptiveWindowOfAtMost50us) {
    Served s("strict = false");
    ASSERT_TRUE(s.session);
    auto loop = s.session->loop();
    EXPECT_EQ(loop->poll_window(), 50us);
    auto g = s.h.sim->guest(s.dom);
    for (int i = 0; i < 200; ++i) ASSERT_EQ(*g->mmio_read(0, kBase, 4), kMagic);
    EXPECT_GE(loop->stats().served, 200u);
    EXPECT_LE(loop->stats().poll_window_ns, 50000);
}

TEST(IoreqTuning, ZeroTurnsPollingOffAndTheLoopWaitsOnTheEventChannelAtOnce) {
    Served s("ioreq_poll_us = 0");
    ASSERT_TRUE(s.session);
    auto loop = s.session->loop();
    EXPECT_EQ(loop->poll_window(), 0us);
    auto g = s.h.sim->guest(s.dom);
    for (int i = 0; i < 200; ++i) ASSERT_EQ(*g->mmio_read(0, kBase, 4), kMagic);
    EXPECT_GE(loop->stats().served, 200u);
    EXPECT_EQ(loop->stats().polled, 0u);
    EXPECT_EQ(loop->stats().polls_in_vain, 0u);
    EXPECT_EQ(loop->stats().poll_window_ns, 0);
}

// A SCHED_FIFO loop thread would keep the normal threads of its CPU off it
// while it polls (sched_yield(2) yields only to its own priority): with
// ioreq_realtime_priority the loop waits on the event channel, whatever
// the poll window.
TEST(IoreqTuning, RealtimeThreadsDoNotPoll) {
    if (!may_use_fifo(7)) GTEST_SKIP() << "SCHED_FIFO not allowed here";
    Served s("ioreq_poll_us = 1000\nioreq_realtime_priority = 7");
    ASSERT_TRUE(s.session);
    auto loop = s.session->loop();
    EXPECT_EQ(loop->poll_window(), 1000us);
    auto g = s.h.sim->guest(s.dom);
    for (int i = 0; i < 300; ++i) ASSERT_EQ(*g->mmio_read(0, kBase, 4), kMagic);
    EXPECT_GE(loop->stats().served, 300u);
    EXPECT_EQ(loop->stats().polled, 0u);
    EXPECT_EQ(loop->stats().polls_in_vain, 0u);
}

TEST(IoreqTuning, RealtimePriorityReachesTheGuestsThreadsWhenAllowedAndTheStarterIsRestored) {
    const auto before = current_thread_scheduling();
    Served s("ioreq_realtime_priority = 7");
    ASSERT_TRUE(s.session);
    // The thread that started the guest (here: this one) has its policy back.
    EXPECT_EQ(current_thread_scheduling(), before);
    const auto on_guest = scheduling_on(s.session->executor());
    if (may_use_fifo(7)) {
        EXPECT_EQ(on_guest, std::make_pair(int(SCHED_FIFO), 7));
    } else {
        // Refused (no CAP_SYS_NICE, RLIMIT_RTPRIO below 7): served anyway.
        EXPECT_EQ(on_guest.first, SCHED_OTHER);
    }
    // Served either way.
    EXPECT_EQ(*s.h.sim->guest(s.dom)->mmio_read(0, kBase, 4), kMagic);
}

TEST(IoreqTuning, DefaultThreadsKeepTheNormalPolicy) {
    Served s("strict = false");
    ASSERT_TRUE(s.session);
    EXPECT_EQ(scheduling_on(s.session->executor()).first, current_thread_scheduling().first);
    EXPECT_NE(scheduling_on(s.session->executor()).first, SCHED_FIFO);
}

TEST(IoreqTuning, RealtimeScopeOnlyCoversThreadsStartedInside) {
    IoreqTuning off;
    {
        RealtimeThreads rt(off, "test");
        EXPECT_EQ(rt.outcome(), RealtimeThreads::Outcome::Off);
    }
    IoreqTuning on;
    on.realtime_priority = 3;
    const auto before = current_thread_scheduling();
    std::pair<int, int> inside{-1, 0}, outside{-1, 0};
    RealtimeThreads::Outcome outcome;
    {
        RealtimeThreads rt(on, "test");
        outcome = rt.outcome();
        std::thread([&] { inside = current_thread_scheduling(); }).join();
    }
    std::thread([&] { outside = current_thread_scheduling(); }).join();
    EXPECT_EQ(current_thread_scheduling(), before);
    EXPECT_EQ(outside, before);
    if (outcome == RealtimeThreads::Outcome::Applied) {
        EXPECT_EQ(inside, std::make_pair(int(SCHED_FIFO), 3));
    } else {
        EXPECT_EQ(outcome, RealtimeThreads::Outcome::Refused);
        EXPECT_FALSE(may_use_fifo(3));
        EXPECT_EQ(inside, before);
    }
}

}  // namespace
}  // namespace xv::daemon
