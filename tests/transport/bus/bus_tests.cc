// SPDX-License-Identifier: GPL-2.0-only
// virtio transports from the guest side through xen/sim: the conformance
// suite on the echo device over mmio, mmio+nonblocking, pci, pci+nonblocking,
// each with split and with packed rings,
// plus request round trips, interrupts, quiesce with requests in flight,
// broken queues, config space and register widths.
#include <gtest/gtest.h>

#include <boost/asio/post.hpp>

#include <future>
#include <thread>

#include "bus_harness.h"
#include "echo_device.h"
#include "virtio_conformance.h"

namespace xv::test {
namespace {

using namespace std::chrono_literals;
namespace st = transport::status;

template <TransportKind K, bool Packed = false>
struct EchoOn {
    static constexpr TransportKind kind = K;
    static constexpr bool packed = Packed;  ///< VIRTIO_F_RING_PACKED negotiated
    static std::shared_ptr<transport::Device> make(xen::DomId d) { return std::make_shared<EchoDevice>(d); }
};

/// Every transport, with split and with packed rings.
using AllKinds = ::testing::Types<EchoOn<TransportKind::Mmio>, EchoOn<TransportKind::MmioNb>,
                                  EchoOn<TransportKind::Pci>, EchoOn<TransportKind::PciNb>,
                                  EchoOn<TransportKind::Mmio, true>, EchoOn<TransportKind::MmioNb, true>,
                                  EchoOn<TransportKind::Pci, true>, EchoOn<TransportKind::PciNb, true>>;

struct KindNames {
    template <class T>
    static std::string GetName(int) {
        std::string n = kind_name(T::kind);
        for (auto& c : n)
            if (c == '-') c = '_';
        return T::packed ? n + "_packed" : n;
    }
};

INSTANTIATE_TYPED_TEST_SUITE_P(Echo, VirtioConformance, AllKinds, KindNames);

/// Echo-device tests on every transport.
template <class T>
class EchoBus : public VirtioConformance<T> {
protected:
    EchoDevice& echo() { return static_cast<EchoDevice&>(*this->h_->device); }
    /// Brings the device up with `n` queues of 16; returns the drivers.
    std::vector<std::unique_ptr<VirtqueueDriver>> up(std::uint16_t n = 2, bool event_idx = false) {
        std::vector<std::unique_ptr<VirtqueueDriver>> qs;
        std::vector<VirtqueueDriver*> raw;
        for (std::uint16_t q = 0; q < n; ++q) {
            auto d = this->queue_driver(q, 16, event_idx);
            EXPECT_TRUE(d);
            raw.push_back(d->get());
            qs.push_back(std::move(*d));
        }
        auto want = ~0ULL;
        if (!event_idx) want &= ~transport::feature::bit(transport::feature::kEventIdx);
        auto f = this->drv().bring_up(this->ring_features(want), raw);
        EXPECT_TRUE(f) << (f ? "" : f.error().describe());
        return qs;
    }
    /// Waits (bounded) for the next used entry of `q`.
    std::optional<UsedElem> wait_used(VirtqueueDriver& q, std::chrono::milliseconds t = 5s) {
        auto deadline = std::chrono::steady_clock::now() + t;
        for (;;) {
            if (auto u = q.next_used()) return u;
            if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
            std::this_thread::sleep_for(100us);
        }
    }
};
TYPED_TEST_SUITE(EchoBus, AllKinds, KindNames);

// A request round trip: notify, the device echoes, used ring + interrupt.
TYPED_TEST(EchoBus, RoundTripWithInterrupt) {
    auto qs = this->up();
    for (std::uint16_t q = 0; q < 2; ++q) {
        auto seen = this->h_->irq_count();
        auto req = qs[q]->chain().readable("hello virtio").writable(32).submit();
        ASSERT_TRUE(req) << req.error().describe();
        ASSERT_TRUE(this->drv().notify(q));
        auto u = this->wait_used(*qs[q]);
        ASSERT_TRUE(u);
        EXPECT_EQ(u->id, req->id);
        EXPECT_EQ(u->len, 12u);
        EXPECT_EQ(req->buf(1).str().substr(0, 12), "hello virtio");
        EXPECT_GT(this->h_->wait_irq(seen), seen) << "no interrupt for queue " << q;
        auto isr = this->drv().take_isr();
        ASSERT_TRUE(isr);
        EXPECT_TRUE(*isr & transport::isr::kQueue);
    }
    EXPECT_EQ(this->echo().activations(), 1u);
    EXPECT_EQ(this->echo().negotiated() & transport::feature::bit(kEchoFeature), transport::feature::bit(kEchoFeature));
}

// Reset with requests in flight: reset completes once the device dropped
// them; no grant stays mapped; the device comes back up afterwards.
TYPED_TEST(EchoBus, ResetWithRequestsInFlight) {
    auto qs = this->up();
    this->echo().hold(true);
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(qs[0]->chain().readable("x").writable(8).submit());
    ASSERT_TRUE(this->drv().notify(0));
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (this->echo().held() < 4 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
    ASSERT_EQ(this->echo().held(), 4u);
    EXPECT_GT(this->h_->guest->mapped_refs(), 0u);
    const auto resets0 = this->echo().resets();
    ASSERT_TRUE(this->drv().reset());
    EXPECT_EQ(this->echo().dropped(), 4u);
    EXPECT_EQ(this->echo().resets(), resets0 + 1);
    EXPECT_EQ(this->h_->guest->mapped_refs(), 0u);
    // Up again on fresh rings.
    this->echo().hold(false);
    auto qs2 = this->up();
    auto req = qs2[1]->chain().readable("again").writable(8).submit();
    ASSERT_TRUE(req);
    ASSERT_TRUE(this->drv().notify(1));
    auto u = this->wait_used(*qs2[1]);
    ASSERT_TRUE(u);
    EXPECT_EQ(u->len, 5u);
}

// Kicks before activation finished are not lost.
TYPED_TEST(EchoBus, KickRightAfterDriverOkIsServed) {
    auto qs = this->up();
    auto req = qs[0]->chain().readable("early").writable(8).submit();
    ASSERT_TRUE(req);
    ASSERT_TRUE(this->drv().notify(0));
    ASSERT_TRUE(this->wait_used(*qs[0]));
}

// virtio 1.2 §2.1.2: a broken queue sets DEVICE_NEEDS_RESET and sends a
// config interrupt.
TYPED_TEST(EchoBus, BrokenQueueNeedsResetWithConfigInterrupt) {
    auto qs = this->up();
    auto seen = this->h_->irq_count();
    // A descriptor with a guest-physical (non-grant) address.
    ASSERT_TRUE(qs[0]->chain().raw(0x40001000, 64, false).submit());
    ASSERT_TRUE(this->drv().notify(0));
    auto s = this->wait_status_bits(st::kNeedsReset);
    EXPECT_TRUE(s & st::kNeedsReset) << int(s);
    EXPECT_GT(this->h_->wait_irq(seen), seen);
    auto isr = this->drv().take_isr();
    ASSERT_TRUE(isr);
    EXPECT_TRUE(*isr & transport::isr::kConfig);
    ASSERT_TRUE(this->drv().reset());
    EXPECT_EQ(*this->drv().status(), 0);
}

// virtio 1.2 §2.5.1: a config change bumps the generation and notifies.
TYPED_TEST(EchoBus, ConfigChangeBumpsGenerationAndInterrupts) {
    auto qs = this->up();
    // DRIVER_OK returns at once; activation runs on the control strand.
    auto until = std::chrono::steady_clock::now() + 5s;
    while (!this->echo().active() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
    ASSERT_TRUE(this->echo().active());
    auto g0 = this->drv().config_generation();
    ASSERT_TRUE(g0);
    auto c0 = this->drv().config_read(0, 4);
    ASSERT_TRUE(c0);
    auto seen = this->h_->irq_count();
    this->echo().bump_config();
    EXPECT_NE(*this->drv().config_generation(), *g0);
    EXPECT_EQ(*this->drv().config_read(0, 4), *c0 + 1);
    EXPECT_GT(this->h_->wait_irq(seen), seen);
    EXPECT_TRUE(*this->drv().take_isr() & transport::isr::kConfig);
}

// Config space accesses of 8/16/32 bits; writes reach the device.
TYPED_TEST(EchoBus, ConfigSpaceWidths) {
    EXPECT_EQ(*this->drv().config_read(12, 4), 0x5a5aa5a5u);
    EXPECT_EQ(*this->drv().config_read(12, 2), 0xa5a5u);
    EXPECT_EQ(*this->drv().config_read(14, 1), 0x5au);
    ASSERT_TRUE(this->drv().config_write(8, 4, 0x11223344));
    EXPECT_EQ(*this->drv().config_read(8, 4), 0x11223344u);
    ASSERT_TRUE(this->drv().config_write(9, 1, 0xab));
    EXPECT_EQ(*this->drv().config_read(8, 4), 0x1122ab44u);
    // The read-only counter ignores writes.
    ASSERT_TRUE(this->drv().config_write(0, 4, 0xffffffff));
    EXPECT_EQ(*this->drv().config_read(0, 4), 0u);
}

// The device's own needs_reset callback reaches the status register.
TYPED_TEST(EchoBus, DeviceReportedFailureNeedsReset) {
    auto qs = this->up();
    // Activation runs on the control strand after DRIVER_OK.
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!this->echo().active() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
    ASSERT_TRUE(this->echo().active());
    this->echo().fail("disk vanished");
    EXPECT_TRUE(*this->drv().status() & st::kNeedsReset);
    ASSERT_TRUE(this->drv().reset());
}

// --- virtio-mmio specifics ----------------------------------------------------

class MmioTest : public ::testing::Test {
protected:
    void SetUp() override {
        BusHarness::Options o;
        o.kind = TransportKind::Mmio;
        auto h = BusHarness::create(o, [](xen::DomId d) { return std::make_shared<EchoDevice>(d); });
        ASSERT_TRUE(h) << h.error().describe();
        h_ = std::move(*h);
    }
    Result<std::uint64_t> rd(std::uint32_t off, unsigned size) {
        return h_->guest->mmio_read(0, BusHarness::kMmioBase + off, size);
    }
    std::unique_ptr<BusHarness> h_;
};

// virtio 1.2 §4.2.2: identification registers.
TEST_F(MmioTest, IdentificationRegisters) {
    EXPECT_EQ(*rd(0x000, 4), 0x74726976u);
    EXPECT_EQ(*rd(0x004, 4), 2u);
    EXPECT_EQ(*rd(0x008, 4), 42u);
    // 0x018/0x01c are unused without the non-blocking extension.
    EXPECT_EQ(*rd(0x018, 4), 0u);
    // SHM regions absent: length all ones.
    EXPECT_EQ(*rd(0x0b0, 4), 0xffffffffu);
    EXPECT_EQ(*rd(0x0b4, 4), 0xffffffffu);
}

// virtio 1.2 §4.2.2.2: control registers take aligned 32-bit accesses only.
TEST_F(MmioTest, ControlRegisterWidths) {
    EXPECT_EQ(*rd(0x000, 2), 0u);
    EXPECT_EQ(*rd(0x000, 1), 0u);
    EXPECT_EQ(*rd(0x002, 4), 0u);  // misaligned (the sim forwards it as is)
    ASSERT_TRUE(h_->guest->mmio_write(0, BusHarness::kMmioBase + 0x070, 1, st::kAcknowledge));
    EXPECT_EQ(*rd(0x070, 4), 0u) << "a byte write to Status must be ignored";
    ASSERT_TRUE(h_->guest->mmio_write(0, BusHarness::kMmioBase + 0x070, 4, st::kAcknowledge));
    EXPECT_EQ(*rd(0x070, 4), st::kAcknowledge);
    // Writes to read-only registers change nothing.
    ASSERT_TRUE(h_->guest->mmio_write(0, BusHarness::kMmioBase + 0x000, 4, 0));
    EXPECT_EQ(*rd(0x000, 4), 0x74726976u);
}

// Queue registers are frozen while the queue is ready.
TEST_F(MmioTest, QueueRegistersFrozenWhileReady) {
    auto d = h_->driver(0, 16);
    ASSERT_TRUE(d);
    ASSERT_TRUE(h_->drv->bring_up(~0ULL & ~transport::feature::bit(transport::feature::kRingPacked), {d->get()}));
    ASSERT_TRUE(h_->guest->mmio_write(0, BusHarness::kMmioBase + 0x030, 4, 0));
    ASSERT_TRUE(h_->guest->mmio_write(0, BusHarness::kMmioBase + 0x038, 4, 8));
    EXPECT_EQ(*rd(0x038, 4), 16u);
    EXPECT_EQ(*rd(0x080, 4), std::uint32_t((*d)->config().desc_addr));
}

// Unclaimed addresses and malformed ioreqs never crash the loop.
TEST_F(MmioTest, UnclaimedAndOddAccesses) {
    // Beyond the window: nothing claims it, the sim reports an abort.
    EXPECT_FALSE(h_->guest->mmio_read(0, BusHarness::kMmioBase + 0x1000, 4));
    xen::IoRequest req;
    req.type = xen::IoreqType::Copy;
    req.addr = BusHarness::kMmioBase;
    req.size = 4;
    req.count = 2;
    EXPECT_EQ(h_->loop->handle(req), 0xffffffffu);
    req.count = 1;
    req.data_is_ptr = true;
    EXPECT_EQ(h_->loop->handle(req), 0xffffffffu);
    req.data_is_ptr = false;
    req.size = 3;
    EXPECT_EQ(h_->loop->handle(req), ~0ULL);
    req.size = 4;
    req.addr = 0x1234;
    EXPECT_EQ(h_->loop->handle(req), 0xffffffffu);
    req.type = xen::IoreqType::Invalidate;
    EXPECT_EQ(h_->loop->handle(req), 0u);
    auto s = h_->loop->stats();
    EXPECT_EQ(s.malformed, 3u);
    EXPECT_EQ(s.unclaimed, 1u);
    // Still serving.
    EXPECT_EQ(*rd(0x000, 4), 0x74726976u);
}

// IoreqLoop::set_poll: accesses that follow each other within the window
// are served by the poll, not by a new wake-up from the fd wait; every one
// is answered correctly, and stop still finishes.
TEST_F(MmioTest, PollingServesBackToBackAccessesWithoutWakeUps) {
    h_->loop->set_poll(2s);
    h_->loop->set_poll_gives_way(false);  // a busy test host must not stop the polls
    EXPECT_EQ(*rd(0x000, 4), 0x74726976u);  // the first access wakes the loop
    const auto before = h_->loop->stats();
    constexpr unsigned kAccesses = 100;  // fewer than IoreqLoop::kMaxPollServes
    for (unsigned i = 0; i < kAccesses; ++i) ASSERT_EQ(*rd(0x008, 4), 42u) << "access " << i;
    const auto after = h_->loop->stats();
    EXPECT_EQ(after.served - before.served, kAccesses);
    // Without polling every access is a wake-up of its own; a host too busy
    // to trap again within 2 s may add a few.
    EXPECT_LT(after.wakeups - before.wakeups, kAccesses / 4);
    // What the wake-ups did not serve, the poll did, and says so.
    EXPECT_GE(after.polled - before.polled, kAccesses / 2);
    EXPECT_LE(after.polled - before.polled, kAccesses);
    h_->shutdown();
    EXPECT_EQ(h_->loop->state(), transport::IoreqLoop::State::Stopped);
}

// A guest trapping back to back for longer than one poll round
// (kMaxPollServes ioreqs) stays served by the poll: the round lets the
// strand's other work run and goes on, instead of sleeping on the fd and
// costing the next access a wake-up each kMaxPollServes accesses.
TEST_F(MmioTest, PollingGoesOnPastOneRoundOfServes) {
    using transport::IoreqLoop;
    h_->loop->set_poll(2s);
    h_->loop->set_poll_gives_way(false);
    // The window grows from 0 by doubling at each wake-up after a wait
    // shorter than the maximum (set_poll): 1 ms pauses take it to 640 us.
    for (unsigned i = 0; i < 7; ++i) {
        std::this_thread::sleep_for(1ms);
        ASSERT_EQ(*rd(0x000, 4), 0x74726976u);
    }
    const auto before = h_->loop->stats();
    constexpr unsigned kRounds = 8;
    const unsigned accesses = kRounds * IoreqLoop::kMaxPollServes + 10;
    for (unsigned i = 0; i < accesses; ++i) ASSERT_EQ(*rd(0x008, 4), 42u) << "access " << i;
    const auto after = h_->loop->stats();
    EXPECT_EQ(after.served - before.served, accesses);
    // At least one wake-up per round before (kRounds); only a host too busy
    // to trap again within the window adds any now.
    EXPECT_LT(after.wakeups - before.wakeups, kRounds);
    EXPECT_GE(after.polled - before.polled, accesses - kRounds);
    h_->shutdown();
    EXPECT_EQ(h_->loop->state(), IoreqLoop::State::Stopped);
}

/// Grows the loop's poll window (set_poll(2s), not giving way): wake-ups
/// after waits shorter than the maximum double it, 1 ms pauses take it to
/// 640 us.
void grow_poll_window(BusHarness& h) {
    h.loop->set_poll(2s);
    h.loop->set_poll_gives_way(false);
    for (unsigned i = 0; i < 7; ++i) {
        std::this_thread::sleep_for(1ms);
        ASSERT_EQ(*h.guest->mmio_read(0, BusHarness::kMmioBase, 4), 0x74726976u);
    }
}

/// Waits (bounded) until `pred` holds.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds t = 5s) {
    const auto until = std::chrono::steady_clock::now() + t;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > until) return false;
        std::this_thread::sleep_for(100us);
    }
    return true;
}

// The poll looks at the ioreq slots in memory (IoreqServer::any_ready,
// serve_ready): accesses it serves cost no read of the event channel, and
// while it polls the vCPUs' ports stay masked, so Xen's notifications are
// not delivered to the loop's fd either. Reads and deliveries happen only
// around the fd waits (one read per wake-up, a few on the way to a wait).
TEST_F(MmioTest, MemoryPollServesAccessesWithoutReadingTheEventChannel) {
    grow_poll_window(*h_);
    const auto before = h_->loop->stats();
    const auto ev0 = h_->guest->ioreq_events();
    constexpr unsigned kAccesses = 200;
    for (unsigned i = 0; i < kAccesses; ++i) ASSERT_EQ(*rd(0x008, 4), 42u) << "access " << i;
    const auto after = h_->loop->stats();
    const auto ev1 = h_->guest->ioreq_events();
    const auto polled = after.polled - before.polled;
    const auto waits = after.wakeups - before.wakeups + 1;
    EXPECT_EQ(ev1.notifies - ev0.notifies, kAccesses);
    EXPECT_GE(polled, kAccesses / 2);
    // Reading the fd for each polled access (as a poll of the fd does)
    // would make reads >= polled.
    EXPECT_LE(ev1.reads - ev0.reads, 4 * waits) << polled << " polled, " << waits - 1 << " wake-ups";
    EXPECT_LE(ev1.deliveries - ev0.deliveries, 4 * waits) << polled << " polled, " << waits - 1 << " wake-ups";
    h_->shutdown();
    EXPECT_EQ(h_->loop->state(), transport::IoreqLoop::State::Stopped);
}

// An access that comes exactly as the loop goes to sleep is served, at each
// step on the way to the fd wait: as the poll ends (its port masked, the
// event only pending) and after the events were read and the slots looked
// at (the port unmasked: its event wakes the wait). A loop that went to
// sleep without unmasking would leave the vCPU waiting until its timeout.
TEST_F(MmioTest, AnAccessAsTheLoopGoesToSleepIsServed) {
    using Step = transport::IoreqLoop::SleepStep;
    /// What the hook shares with the test (it outlives a failed assertion).
    struct Probe {
        std::atomic<bool> armed{false}, fired{false}, posted{false}, done{false};
        Result<std::uint64_t> got = std::uint64_t{0};
        std::thread vcpu;
        ~Probe() {
            if (vcpu.joinable()) vcpu.join();
        }
    };
    for (Step step : {Step::PollEnded, Step::Rechecked}) {
        SCOPED_TRACE(step == Step::PollEnded ? "as the poll ended" : "just before the fd wait");
        SetUp();
        auto p = std::make_shared<Probe>();
        std::shared_ptr<xen::sim::SimGuest> guest = h_->guest;
        // Runs on the loop's strand: posts an access of the vCPU the burst
        // came from (its port masked while the poll ran) and returns only
        // once Xen has notified that port.
        auto hook = [p, guest, step](Step at) {
            if (at != step || !p->armed || p->fired.exchange(true)) return;
            const auto notified = guest->ioreq_events().notifies;
            // The Probe joins this thread: it must not own the Probe.
            p->vcpu = std::thread([raw = p.get(), guest] {
                raw->got = guest->mmio_read(0, BusHarness::kMmioBase + 0x008, 4);
                raw->done = true;
            });
            while (guest->ioreq_events().notifies == notified) std::this_thread::yield();
            p->posted = true;
        };
        // The loop runs already: the hook is set on its strand.
        std::promise<void> set;
        boost::asio::post(h_->loop->strand(), [&] {
            h_->loop->set_sleep_hook(hook);
            set.set_value();
        });
        set.get_future().wait();
        grow_poll_window(*h_);
        // A burst the poll serves from memory, then the hook's access.
        p->armed = true;
        for (unsigned i = 0; i < 20; ++i) ASSERT_EQ(*rd(0x004, 4), 2u);
        ASSERT_TRUE(eventually([&] { return p->posted.load(); }, 10s)) << "the loop never went to sleep";
        const auto t0 = std::chrono::steady_clock::now();
        ASSERT_TRUE(eventually([&] { return p->done.load(); }, 8s)) << "the access was not served (lost wake-up)";
        EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
        p->vcpu.join();
        ASSERT_TRUE(p->got) << p->got.error().describe();
        EXPECT_EQ(*p->got, 42u);
        // And the loop serves on.
        EXPECT_EQ(*rd(0x000, 4), 0x74726976u);
        h_->shutdown();
    }
}

// A spurious event on an ioreq port (no READY slot behind it) wakes the
// loop, which serves nothing, refuses nothing and goes back to sleep; the
// next accesses are served. Both with the loop asleep (no poll) and with
// the poll window open (the port masked, the event delivered again when
// the loop unmasks it).
TEST_F(MmioTest, ASpuriousIoreqEventIsHarmless) {
    for (bool polling : {false, true}) {
        SCOPED_TRACE(polling ? "polling" : "not polling");
        SetUp();
        if (polling) grow_poll_window(*h_);
        ASSERT_EQ(*rd(0x008, 4), 42u);
        std::this_thread::sleep_for(20ms);  // the window (640 us at most) is over: asleep
        const auto before = h_->loop->stats();
        const auto ev0 = h_->guest->ioreq_events();
        ASSERT_TRUE(h_->guest->kick_ioreq_port(0));
        ASSERT_TRUE(h_->guest->kick_ioreq_port(1));
        ASSERT_TRUE(eventually([&] { return h_->loop->stats().wakeups > before.wakeups; }))
            << "the event did not wake the loop";
        std::this_thread::sleep_for(20ms);
        const auto mid = h_->loop->stats();
        const auto ev1 = h_->guest->ioreq_events();
        EXPECT_EQ(mid.served, before.served);
        EXPECT_EQ(mid.malformed, before.malformed);
        EXPECT_EQ(mid.unclaimed, before.unclaimed);
        EXPECT_GE(ev1.reads, ev0.reads + 1);
        // Back asleep: nothing reads the fd while no event comes.
        std::this_thread::sleep_for(50ms);
        EXPECT_EQ(h_->guest->ioreq_events().reads, ev1.reads);
        EXPECT_LE(h_->loop->stats().wakeups - before.wakeups, 2u);
        for (unsigned i = 0; i < 20; ++i) {
            ASSERT_EQ(*h_->guest->mmio_read(i % 2, BusHarness::kMmioBase + 0x008, 4), 42u) << "access " << i;
            // A kick while the port is masked by the poll, now and then.
            if (polling && i % 5 == 0) {
                ASSERT_TRUE(h_->guest->kick_ioreq_port(i % 2));
            }
        }
        EXPECT_EQ(h_->loop->stats().served, before.served + 20);
        h_->shutdown();
    }
}

// A slot whose state is not READY (a value Xen would not write) is no
// ioreq: the poll passes over it and still ends, nothing is served and the
// slot is left as it was. A READY slot with hostile fields, found by the
// poll in memory, is refused and logged as one found through the event
// channel is (count, data_is_ptr, size, type): all ones for a read.
TEST_F(MmioTest, HostileSlotStatesAndFieldsFoundByThePoll) {
    grow_poll_window(*h_);
    std::this_thread::sleep_for(5ms);  // the window (640 us at most) is over: asleep
    const auto before = h_->loop->stats();
    xen::sim::SimGuest::RawIoreq raw;
    raw.addr = BusHarness::kMmioBase + 0x008;
    raw.state = 7;
    ASSERT_TRUE(h_->guest->post_raw_ioreq(0, raw));
    // Its event wakes the loop, which finds nothing, polls in vain and
    // ends the poll.
    ASSERT_TRUE(eventually([&] { return h_->loop->stats().polls_in_vain > before.polls_in_vain; }))
        << "the poll did not end";
    EXPECT_GT(h_->loop->stats().wakeups, before.wakeups);
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(h_->guest->raw_ioreq(0)->state, 7u);
    EXPECT_EQ(h_->loop->stats().served, before.served);
    // READY with hostile fields, one after the other on vCPU 0 while vCPU 1
    // keeps the poll going.
    struct Case {
        const char* what;
        void (*set)(xen::sim::SimGuest::RawIoreq&);
        bool unclaimed;  ///< counted as unclaimed, not malformed
    };
    const Case cases[] = {
        {"count 2", [](auto& r) { r.count = 2; }, false},
        {"data_is_ptr", [](auto& r) { r.data_is_ptr = true; }, false},
        {"size 3", [](auto& r) { r.size = 3; }, false},
        {"type 5", [](auto& r) { r.type = 5; }, true},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.what);
        ASSERT_EQ(*h_->guest->mmio_read(1, BusHarness::kMmioBase + 0x004, 4), 2u);
        const auto s0 = h_->loop->stats();
        xen::sim::SimGuest::RawIoreq r;
        r.addr = BusHarness::kMmioBase + 0x008;
        r.data = 0x5a5a;
        c.set(r);
        ASSERT_TRUE(h_->guest->post_raw_ioreq(0, r));
        ASSERT_TRUE(eventually([&] { return h_->guest->raw_ioreq(0)->state == 3u; }))  // IORESP_READY
            << "not answered";
        const auto s1 = h_->loop->stats();
        EXPECT_EQ(s1.served, s0.served + 1);
        EXPECT_EQ(s1.malformed - s0.malformed, c.unclaimed ? 0u : 1u);
        EXPECT_EQ(s1.unclaimed - s0.unclaimed, c.unclaimed ? 1u : 0u);
        const std::uint64_t ones = r.size == 3 ? ~0ULL : 0xffffffffULL;
        EXPECT_EQ(h_->guest->raw_ioreq(0)->data, ones);
    }
    // vCPU 0 takes its slot back and is served as usual.
    ASSERT_EQ(*rd(0x008, 4), 42u);
    h_->shutdown();
}

// Without set_poll every ioreq is served after a wake-up; none is counted
// as polled.
TEST_F(MmioTest, WithoutPollingNothingIsServedByThePoll) {
    EXPECT_EQ(h_->loop->poll_window(), std::chrono::microseconds(0));
    for (unsigned i = 0; i < 50; ++i) ASSERT_EQ(*rd(0x008, 4), 42u) << "access " << i;
    const auto s = h_->loop->stats();
    EXPECT_GE(s.served, 50u);
    EXPECT_EQ(s.polled, 0u);
    h_->loop->set_poll(std::chrono::microseconds(75));
    EXPECT_EQ(h_->loop->poll_window(), std::chrono::microseconds(75));
    h_->shutdown();
}

// set_poll() is a maximum: back-to-back accesses grow the window from 0
// (never past the maximum), and a guest that pauses longer than the
// maximum between accesses shrinks it back to 0, after which no poll runs
// in vain any more.
TEST_F(MmioTest, PollWindowGrowsForBurstsAndShrinksToZeroForAPausingGuest) {
    using transport::IoreqLoop;
    constexpr auto kMax = std::chrono::microseconds(400);
    h_->loop->set_poll(kMax);
    h_->loop->set_poll_gives_way(false);
    EXPECT_EQ(h_->loop->stats().poll_window_ns, 0);
    for (unsigned i = 0; i < 200; ++i) ASSERT_EQ(*rd(0x008, 4), 42u) << "access " << i;
    auto s = h_->loop->stats();
    EXPECT_GE(s.poll_window_ns, IoreqLoop::kPollGrowStart.count());
    EXPECT_LE(s.poll_window_ns, std::chrono::nanoseconds(kMax).count());
    EXPECT_GT(s.polled, 0u);
    // Pauses of 20 ms (50 times the maximum): each wake-up halves the
    // window; from 400 us, six of them take it below kPollGrowStart.
    for (unsigned i = 0; i < 8; ++i) {
        std::this_thread::sleep_for(20ms);
        ASSERT_EQ(*rd(0x008, 4), 42u);
    }
    s = h_->loop->stats();
    EXPECT_EQ(s.poll_window_ns, 0);
    for (unsigned i = 0; i < 3; ++i) {
        std::this_thread::sleep_for(20ms);
        ASSERT_EQ(*rd(0x008, 4), 42u);
    }
    EXPECT_EQ(h_->loop->stats().polls_in_vain, s.polls_in_vain);
    EXPECT_EQ(h_->loop->stats().poll_window_ns, 0);
    h_->shutdown();
}

// A guest that traps just after every poll gave up (7.5 ms apart, the
// window's maximum 5 ms: each wait is shorter than the maximum, so the
// window stays at it) makes every poll end in vain: the budget holds that
// waste to 1/kPollBudgetShare of the time (plus kPollCreditMax banked),
// not the two thirds of a CPU the polls alone would take.
TEST_F(MmioTest, PollsInVainAreHeldToTheBudget) {
    using transport::IoreqLoop;
    h_->loop->set_poll(5ms);
    h_->loop->set_poll_gives_way(false);
    // Accesses 1 ms apart grow the window to the 1 ms that catches them.
    for (unsigned i = 0; i < 20; ++i) {
        std::this_thread::sleep_for(1ms);
        ASSERT_EQ(*rd(0x008, 4), 42u);
    }
    const auto before = h_->loop->stats();
    ASSERT_GT(before.poll_window_ns, 0);
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned i = 0; i < 40; ++i) {
        std::this_thread::sleep_for(7500us);
        ASSERT_EQ(*rd(0x008, 4), 42u);
    }
    const auto elapsed = std::chrono::steady_clock::now() - t0;
    const auto after = h_->loop->stats();
    EXPECT_GT(after.polls_in_vain, before.polls_in_vain);
    const auto vain = std::chrono::nanoseconds(after.poll_in_vain_ns - before.poll_in_vain_ns);
    // A late look past a round's end may overshoot it (a busy host); the
    // slack allows that, and is far below the ~200 ms of unbudgeted polls.
    const auto bound = IoreqLoop::kPollCreditMax + elapsed / IoreqLoop::kPollBudgetShare + 25ms;
    EXPECT_LE(vain, bound) << "polled in vain " << vain.count() / 1000 << " us of "
                           << std::chrono::duration_cast<std::chrono::microseconds>(elapsed).count() << " us";
    h_->shutdown();
}

// Orderly stop with requests in flight: quiesce, unmap, destroy.
TEST_F(MmioTest, StopWithRequestsInFlight) {
    auto d = h_->driver(0, 16);
    ASSERT_TRUE(d);
    ASSERT_TRUE(h_->drv->bring_up(~0ULL & ~transport::feature::bit(transport::feature::kRingPacked), {d->get()}));
    auto& echo = static_cast<EchoDevice&>(*h_->device);
    echo.hold(true);
    ASSERT_TRUE((*d)->chain().readable("x").writable(8).submit());
    ASSERT_TRUE(h_->drv->notify(0));
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (echo.held() < 1 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
    ASSERT_EQ(echo.held(), 1u);
    h_->shutdown();
    EXPECT_EQ(echo.dropped(), 1u);
    EXPECT_EQ(h_->guest->mapped_refs(), 0u);
    EXPECT_EQ(h_->hv->resources().ioreq_servers, 0u);
    EXPECT_EQ(h_->loop->state(), transport::IoreqLoop::State::Stopped);
}

}  // namespace
}  // namespace xv::test
