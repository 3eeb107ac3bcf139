// SPDX-License-Identifier: GPL-2.0-only
// xen/sim: ioreq servers, trapping vCPUs, interrupts and event channels.
#include <gtest/gtest.h>
#include <poll.h>
#include <time.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "xv/xen/sim.h"

namespace xv::xen::sim {
namespace {

using namespace std::chrono_literals;

/// A backend thread serving one ioreq server until stopped.
class Server {
public:
    Server(IoreqServer& s, IoreqHandler h) : s_(s), h_(std::move(h)) {
        t_ = std::thread([this] {
            while (!stop_) {
                pollfd p{s_.fd(), POLLIN, 0};
                if (::poll(&p, 1, 20) > 0) {
                    auto r = s_.serve_pending(h_);
                    if (r) served_ += *r;
                }
            }
        });
    }
    ~Server() {
        stop_ = true;
        t_.join();
    }
    unsigned served() const { return served_; }

private:
    IoreqServer& s_;
    IoreqHandler h_;
    std::atomic<bool> stop_{false};
    std::atomic<unsigned> served_{0};
    std::thread t_;
};

struct IoreqFixture : ::testing::Test {
    void SetUp() override { make({}); }

    void make(SimOptions o) {
        hv = SimHypervisor::create(o);
        auto id = hv->create_domain({"guest", 64, 2});
        ASSERT_TRUE(id);
        domid = *id;
        g = hv->guest(domid);
        auto d = hv->open_device_model();
        ASSERT_TRUE(d);
        dm = std::move(*d);
    }

    std::unique_ptr<IoreqServer> server() {
        auto s = dm->create_ioreq_server(domid);
        EXPECT_TRUE(s) << s.error().describe();
        return s ? std::move(*s) : nullptr;
    }

    std::shared_ptr<SimHypervisor> hv;
    DomId domid = 0;
    std::shared_ptr<SimGuest> g;
    std::unique_ptr<DeviceModel> dm;
};

TEST_F(IoreqFixture, RoundTripWithBackendThread) {
    auto s = server();
    ASSERT_TRUE(s);
    EXPECT_EQ(s->vcpus(), 2u);
    EXPECT_EQ(s->domid(), domid);
    ASSERT_TRUE(s->map_mmio(0x2000000, 0x20001ff));
    std::mutex mu;
    std::vector<IoRequest> seen;
    std::uint32_t reg = 0;
    Server srv(*s, [&](const IoRequest& r) -> std::uint64_t {
        std::lock_guard lk(mu);
        seen.push_back(r);
        if (r.is_write) reg = std::uint32_t(r.data);
        return r.addr == 0x2000000 ? 0x74726976 : reg;
    });
    auto magic = g->mmio_read(0, 0x2000000, 4);
    ASSERT_TRUE(magic) << magic.error().describe();
    EXPECT_EQ(*magic, 0x74726976u);
    ASSERT_TRUE(g->mmio_write(1, 0x2000070, 4, 0x1234567890ull));  // truncated to 4 bytes
    auto back = g->mmio_read(1, 0x2000070, 4);
    ASSERT_TRUE(back);
    EXPECT_EQ(*back, 0x34567890u);
    auto narrow = g->mmio_read(0, 0x2000070, 1);
    ASSERT_TRUE(narrow);
    EXPECT_EQ(*narrow, 0x90u);
    std::lock_guard lk(mu);
    ASSERT_EQ(seen.size(), 4u);
    EXPECT_EQ(seen[0].type, IoreqType::Copy);
    EXPECT_FALSE(seen[0].is_write);
    EXPECT_EQ(seen[0].size, 4u);
    EXPECT_EQ(seen[0].vcpu, 0u);
    EXPECT_TRUE(seen[1].is_write);
    EXPECT_EQ(seen[1].vcpu, 1u);
    EXPECT_EQ(seen[1].data, 0x34567890u);
    EXPECT_EQ(hv->stats().resource_maps, 1u);
}

TEST_F(IoreqFixture, VcpusRunConcurrently) {
    auto s = server();
    ASSERT_TRUE(s->map_mmio(0x1000, 0x1fff));
    Server srv(*s, [](const IoRequest& r) -> std::uint64_t { return r.addr + r.vcpu; });
    std::atomic<int> bad{0};
    std::thread t0([&] {
        for (int i = 0; i < 200; ++i) {
            auto v = g->mmio_read(0, 0x1000 + i * 4, 4);
            if (!v || *v != 0x1000u + i * 4) ++bad;
        }
    });
    std::thread t1([&] {
        for (int i = 0; i < 200; ++i) {
            auto v = g->mmio_read(1, 0x1800 + i * 4, 4);
            if (!v || *v != 0x1800u + i * 4 + 1) ++bad;
        }
    });
    t0.join();
    t1.join();
    EXPECT_EQ(bad.load(), 0);
    EXPECT_EQ(g->turnaround().count, 400u);
}

TEST_F(IoreqFixture, UnclaimedAddressIsADataAbort) {
    auto s = server();
    ASSERT_TRUE(s->map_mmio(0x2000000, 0x20001ff));
    auto r = g->mmio_read(0, 0x3000000, 4);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("data abort: no ioreq server claims 0x3000000"), std::string::npos)
        << r.error().message;
    // An access that straddles the end of the range is not claimed either.
    EXPECT_FALSE(g->mmio_read(0, 0x20001fe, 4));
    // Bad vCPU and bad size are refused without touching the server.
    EXPECT_FALSE(g->mmio_read(7, 0x2000000, 4));
    EXPECT_FALSE(g->mmio_read(0, 0x2000000, 3));
}

TEST_F(IoreqFixture, TimeoutWhenNobodyServes) {
    SimOptions o;
    o.ioreq_timeout = 50ms;
    make(o);
    auto s = server();
    ASSERT_TRUE(s->map_mmio(0x1000, 0x1fff));
    auto t0 = std::chrono::steady_clock::now();
    auto r = g->mmio_read(0, 0x1000, 4);
    auto took = std::chrono::steady_clock::now() - t0;
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, std::errc::timed_out);
    EXPECT_NE(r.error().message.find("ioreq not completed"), std::string::npos);
    EXPECT_GE(took, 50ms);
    // The fd said something was there; a late answer is ignored and the
    // slot is usable again.
    pollfd p{s->fd(), POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 0), 1);
    auto late = s->serve_pending([](const IoRequest&) { return 1; });
    ASSERT_TRUE(late);
    EXPECT_EQ(*late, 0u);  // the vCPU took its slot back
    Server srv(*s, [](const IoRequest&) -> std::uint64_t { return 5; });
    auto ok = g->mmio_read(0, 0x1000, 4);
    ASSERT_TRUE(ok);
    EXPECT_EQ(*ok, 5u);
}

/// CPU time of the calling thread.
std::chrono::nanoseconds thread_cpu() {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

/// The calling thread is the vCPU: its CPU time for one access that the
/// server answers only after 100 ms.
std::chrono::nanoseconds cpu_of_a_late_answer(IoreqFixture& f, std::chrono::microseconds spin) {
    SimOptions o;
    o.vcpu_spin = spin;
    f.make(o);
    auto s = f.server();
    EXPECT_TRUE(s && s->map_mmio(0x1000, 0x1fff));
    if (!s) return {};
    Server srv(*s, [](const IoRequest& r) -> std::uint64_t {
        std::this_thread::sleep_for(100ms);
        return r.addr ^ 0x5a;
    });
    const auto wall0 = std::chrono::steady_clock::now();
    const auto cpu0 = thread_cpu();
    auto v = f.g->mmio_read(0, 0x1010, 4);
    const auto cpu = thread_cpu() - cpu0;
    EXPECT_TRUE(v) << v.error().describe();
    if (v) {
        EXPECT_EQ(*v, 0x1010u ^ 0x5a);
    }
    EXPECT_GE(std::chrono::steady_clock::now() - wall0, 100ms);
    return cpu;
}

TEST_F(IoreqFixture, VcpuWithoutSpinSleepsUntilItsAnswer) {
    // vcpu_spin 0: the trapped vCPU sleeps at once, as Xen blocks a vCPU
    // waiting for its ioreq server; 100 ms of waiting cost it next to no
    // CPU. With a spin longer than the wait it polls (yielding) all along:
    // on an idle host ~100 ms of CPU, on a loaded one still its share.
    const auto blocked = cpu_of_a_late_answer(*this, 0us);
    const auto spinning = cpu_of_a_late_answer(*this, 200000us);
    EXPECT_LT(blocked, 5ms) << "blocked vCPU used " << blocked.count() << " ns";
    EXPECT_GT(spinning, 10ms) << "spinning vCPU used " << spinning.count() << " ns";
}

TEST_F(IoreqFixture, TurnaroundPercentilesRecorded) {
    auto s = server();
    ASSERT_TRUE(s->map_mmio(0x1000, 0x1fff));
    std::atomic<int> n{0};
    Server srv(*s, [&](const IoRequest&) -> std::uint64_t {
        // Every tenth access is slow.
        if (++n % 10 == 0) std::this_thread::sleep_for(3ms);
        return 0;
    });
    g->reset_turnaround();
    for (int i = 0; i < 50; ++i) ASSERT_TRUE(g->mmio_write(0, 0x1000, 4, i));
    auto t = g->turnaround();
    EXPECT_EQ(t.count, 50u);
    EXPECT_GT(t.p50_us, 0.0);
    EXPECT_LE(t.p50_us, t.p99_us);
    EXPECT_LE(t.p99_us, t.p999_us);
    EXPECT_LE(t.p999_us, t.max_us);
    EXPECT_GE(t.max_us, 3000.0);  // the slow ones show up at the tail
    EXPECT_LT(t.p50_us, t.max_us);
    // The server's completion of each access: the slow handler is in it,
    // the vCPU's wake-up after it is not (each sample <= its turnaround).
    auto c = g->completion();
    EXPECT_EQ(c.count, 50u);
    EXPECT_GE(c.max_us, 3000.0);
    EXPECT_LE(c.p50_us, t.p50_us);
    EXPECT_LE(c.p99_us, t.p99_us);
    EXPECT_LE(c.max_us, t.max_us);
    g->reset_turnaround();
    EXPECT_EQ(g->turnaround().count, 0u);
    EXPECT_EQ(g->completion().count, 0u);
}

TEST_F(IoreqFixture, OverlappingClaimsAndUnmap) {
    auto a = server();
    auto b = server();
    ASSERT_TRUE(a && b);
    EXPECT_NE(a->id(), b->id());
    ASSERT_TRUE(a->map_mmio(0x1000, 0x1fff));
    auto e = b->map_mmio(0x1800, 0x27ff);
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().code, std::errc::file_exists);
    EXPECT_FALSE(a->map_mmio(0x1fff, 0x1fff));   // inclusive end overlaps
    EXPECT_TRUE(b->map_mmio(0x2000, 0x2fff));    // adjacent is fine
    EXPECT_FALSE(b->map_mmio(0x3000, 0x2fff));   // end before start
    EXPECT_FALSE(a->unmap_mmio(0x1000, 0x1ffe)); // not an exact claim
    ASSERT_TRUE(a->unmap_mmio(0x1000, 0x1fff));
    EXPECT_TRUE(b->map_mmio(0x1000, 0x1fff));
    Sbdf dev{0, 0, 3, 0};
    ASSERT_TRUE(a->map_pcidev(dev));
    EXPECT_FALSE(b->map_pcidev(dev));
    EXPECT_FALSE(a->map_pcidev(Sbdf{0, 0, 32, 0}));
    // Destroying a server drops its claims.
    a.reset();
    EXPECT_TRUE(b->map_pcidev(dev));
}

TEST_F(IoreqFixture, PciConfigAccessCarriesSbdf) {
    auto s = server();
    Sbdf dev{0, 1, 3, 2};
    ASSERT_TRUE(s->map_pcidev(dev));
    std::atomic<std::uint64_t> addr{0};
    std::atomic<bool> pci{false};
    Server srv(*s, [&](const IoRequest& r) -> std::uint64_t {
        addr = r.addr;
        pci = r.type == IoreqType::PciConfig;
        return 0x10411af4;
    });
    auto v = g->pci_config_read(0, dev, 0, 4);
    ASSERT_TRUE(v) << v.error().describe();
    EXPECT_EQ(*v, 0x10411af4u);
    EXPECT_TRUE(pci.load());
    std::uint64_t sbdf = (1u << 8) | (3u << 3) | 2u;
    EXPECT_EQ(addr.load(), sbdf << 32);
    ASSERT_TRUE(g->pci_config_write(1, dev, 0x10, 4, 0xffffffff));
    EXPECT_EQ(addr.load(), (sbdf << 32) | 0x10);
    EXPECT_FALSE(g->pci_config_read(0, Sbdf{0, 1, 4, 0}, 0, 4));  // unclaimed device
}

TEST_F(IoreqFixture, InvalidateIsBroadcastAndAcknowledged) {
    auto a = server();
    auto b = server();
    std::atomic<int> inv{0};
    auto h = [&](const IoRequest& r) -> std::uint64_t {
        if (r.type == IoreqType::Invalidate) ++inv;
        return 0;
    };
    Server sa(*a, h);
    Server sb(*b, h);
    ASSERT_TRUE(g->invalidate(0));
    EXPECT_EQ(inv.load(), 2);
}

TEST_F(IoreqFixture, DestroyedServerFailsWaitingVcpu) {
    auto s = server();
    ASSERT_TRUE(s->map_mmio(0x1000, 0x1fff));
    std::thread vcpu([&] {
        auto r = g->mmio_read(0, 0x1000, 4);
        EXPECT_FALSE(r);
    });
    // Wait until the request is posted, then drop the server unanswered.
    pollfd p{s->fd(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 5000), 1);
    s.reset();
    vcpu.join();
    EXPECT_EQ(hv->resources().ioreq_servers, 0u);
    auto r = g->mmio_read(0, 0x1000, 4);
    ASSERT_FALSE(r);  // nothing claims the range any more
    EXPECT_NE(r.error().message.find("data abort"), std::string::npos);
}

// A process that dies does not destroy its ioreq server: Xen keeps it, its
// ranges claimed, until destroy_ioreq_server (or the domain's end). The
// process's objects going inside a ProcessExit model that.
TEST_F(IoreqFixture, ServerOfADeadProcessStaysUntilDestroyed) {
    auto s = server();
    ASSERT_TRUE(s);
    const IoServId id = s->id();
    ASSERT_TRUE(s->map_mmio(0x1000, 0x1fff));
    {
        ProcessExit dead;
        EXPECT_TRUE(ProcessExit::active());
        s.reset();
    }
    EXPECT_FALSE(ProcessExit::active());
    EXPECT_EQ(hv->resources().ioreq_servers, 1u);
    EXPECT_EQ(hv->resources().stale_ioreq_servers, 1u);
    // Its range is still taken; the guest's access is not answered.
    auto again = server();
    ASSERT_TRUE(again);
    auto e = again->map_mmio(0x1000, 0x1fff);
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().code, std::errc::file_exists);
    EXPECT_FALSE(g->mmio_read(0, 0x1000, 4));

    // Destroyed by id (another handle, as a supervisor would): the range is free.
    auto other = hv->open_device_model();
    ASSERT_TRUE(other);
    ASSERT_TRUE((*other)->destroy_ioreq_server(domid, id));
    EXPECT_EQ(hv->resources().stale_ioreq_servers, 0u);
    EXPECT_EQ(hv->resources().ioreq_servers, 1u);  // `again`
    auto twice = (*other)->destroy_ioreq_server(domid, id);
    ASSERT_FALSE(twice);
    EXPECT_EQ(twice.error().code, std::errc::no_such_file_or_directory);
    EXPECT_TRUE(again->map_mmio(0x1000, 0x1fff));
    again.reset();
    EXPECT_EQ(hv->resources().ioreq_servers, 0u);
}

// A restricted handle destroys only its own domain's servers; a live
// server destroyed by id stops serving and is counted until its object goes.
TEST_F(IoreqFixture, DestroyByIdRespectsRestrictionAndStopsALiveServer) {
    auto s = server();
    ASSERT_TRUE(s && s->map_mmio(0x1000, 0x1fff));
    auto other = hv->open_device_model();
    ASSERT_TRUE(other);
    ASSERT_TRUE((*other)->restrict_to(DomId(domid + 1)));
    auto r = (*other)->destroy_ioreq_server(domid, s->id());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, std::errc::operation_not_permitted);
    ASSERT_TRUE(dm->destroy_ioreq_server(domid, s->id()));
    EXPECT_FALSE(s->serve_pending({}));
    EXPECT_EQ(hv->resources().ioreq_servers, 1u);
    EXPECT_EQ(hv->resources().stale_ioreq_servers, 0u);
    s.reset();
    EXPECT_EQ(hv->resources().ioreq_servers, 0u);
}

// The domain's end takes a stale server with it.
TEST_F(IoreqFixture, DomainDestroyTakesAStaleServer) {
    auto s = server();
    ASSERT_TRUE(s && s->map_mmio(0x1000, 0x1fff));
    {
        ProcessExit dead;
        s.reset();
    }
    EXPECT_EQ(hv->resources().stale_ioreq_servers, 1u);
    g.reset();
    ASSERT_TRUE(hv->destroy_domain(domid));
    EXPECT_EQ(hv->resources().ioreq_servers, 0u);
    EXPECT_EQ(hv->resources().stale_ioreq_servers, 0u);
}

TEST_F(IoreqFixture, IrqEdgesAndWaiters) {
    std::vector<IrqEvent> cb_seen;
    std::mutex mu;
    g->on_irq([&](const IrqEvent& e) {
        std::lock_guard lk(mu);
        cb_seen.push_back(e);
    });
    std::thread waiter([&] {
        auto n = g->wait_irq(33, 0, 5000ms);
        EXPECT_EQ(n, 1u);
    });
    ASSERT_TRUE(dm->set_irq_level(domid, 33, true));
    waiter.join();
    ASSERT_TRUE(dm->set_irq_level(domid, 33, true));   // still high: no new edge
    EXPECT_EQ(g->irq_count(33), 1u);
    ASSERT_TRUE(dm->set_irq_level(domid, 33, false));
    ASSERT_TRUE(dm->set_irq_level(domid, 33, true));
    EXPECT_EQ(g->irq_count(33), 2u);
    EXPECT_EQ(g->irq_count(34), 0u);
    EXPECT_FALSE(dm->set_irq_level(domid, 5, true));     // not an SPI
    EXPECT_FALSE(dm->set_irq_level(999, 33, true));      // no such domain
    ASSERT_TRUE(dm->inject_msi(domid, 0xfee00000, 0x41));
    ASSERT_TRUE(dm->inject_msi(domid, 0xfee00000, 0x42));
    EXPECT_EQ(g->irq_count(kMsiIrq), 2u);
    ASSERT_TRUE(dm->set_pci_intx_level(domid, Sbdf{0, 0, 3, 0}, 1, true));
    EXPECT_EQ(g->irq_count(1), 1u);
    EXPECT_FALSE(dm->set_pci_intx_level(domid, Sbdf{}, 4, true));
    auto log = g->irq_log();
    ASSERT_EQ(log.size(), 7u);
    EXPECT_EQ(log[0].kind, IrqEvent::Spi);
    EXPECT_EQ(log[2].level, false);
    EXPECT_EQ(log[4].kind, IrqEvent::Msi);
    EXPECT_EQ(log[4].msi_data, 0x41u);
    EXPECT_EQ(log[6].kind, IrqEvent::Intx);
    std::lock_guard lk(mu);
    EXPECT_EQ(cb_seen.size(), 7u);
    // A wait with nothing coming times out and returns the unchanged count.
    EXPECT_EQ(g->wait_irq(40, 0, 10ms), 0u);
    auto n = dm->nr_vcpus(domid);
    ASSERT_TRUE(n);
    EXPECT_EQ(*n, 2u);
}

TEST_F(IoreqFixture, DeviceModelRestriction) {
    auto other = hv->create_domain({"other", 16, 1});
    ASSERT_TRUE(other);
    ASSERT_TRUE(dm->restrict_to(domid));
    auto e = dm->set_irq_level(*other, 33, true);
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().code, std::errc::operation_not_permitted);
    EXPECT_FALSE(dm->create_ioreq_server(*other));
    EXPECT_FALSE(dm->nr_vcpus(*other));
    EXPECT_TRUE(dm->set_irq_level(domid, 33, true));
    EXPECT_FALSE(dm->restrict_to(*other));
}

TEST_F(IoreqFixture, EventChannelsBothWays) {
    auto ev = hv->open_event_channels();
    ASSERT_TRUE(ev);
    auto& ch = **ev;
    auto gport = g->alloc_unbound(0);
    ASSERT_TRUE(gport);
    auto local = ch.bind_interdomain(domid, *gport);
    ASSERT_TRUE(local) << local.error().describe();
    EXPECT_EQ(ch.bound_ports(), 1u);
    EXPECT_EQ(hv->resources().bound_ports, 1u);
    EXPECT_FALSE(ch.bind_interdomain(domid, *gport));  // no longer unbound
    // Backend -> guest.
    ASSERT_TRUE(ch.notify(*local));
    EXPECT_EQ(g->wait_notification(*gport, 0, 1000ms), 1u);
    // Guest -> backend: fd readable, pending() returns the port, masked until unmask.
    ASSERT_TRUE(g->notify(*gport));
    pollfd p{ch.fd(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 1000), 1);
    auto pend = ch.pending();
    ASSERT_TRUE(pend);
    ASSERT_TRUE(pend->has_value());
    EXPECT_EQ(**pend, *local);
    ASSERT_TRUE(g->notify(*gport));  // while masked: remembered, not delivered
    auto none = ch.pending();
    ASSERT_TRUE(none);
    EXPECT_FALSE(none->has_value());
    EXPECT_EQ(::poll(&p, 1, 0), 0);
    ASSERT_TRUE(ch.unmask(*local));
    EXPECT_EQ(::poll(&p, 1, 0), 1);
    auto again = ch.pending();
    ASSERT_TRUE(again && again->has_value());
    EXPECT_EQ(**again, *local);
    // Ports allocated for another domain, and unknown ports, are refused.
    auto other = hv->create_domain({"other", 16, 1});
    ASSERT_TRUE(other);
    auto foreign = g->alloc_unbound(*other);
    ASSERT_TRUE(foreign);
    EXPECT_FALSE(ch.bind_interdomain(domid, *foreign));
    EXPECT_FALSE(ch.bind_interdomain(domid, 999));
    // Restriction.
    ASSERT_TRUE(ch.restrict_to(domid));
    auto og = hv->guest(*other);
    auto op = og->alloc_unbound(0);
    ASSERT_TRUE(op);
    auto r = ch.bind_interdomain(*other, *op);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, std::errc::operation_not_permitted);
    // Unbind returns the guest port to unbound; closing the handle unbinds the rest.
    ASSERT_TRUE(ch.unbind(*local));
    EXPECT_EQ(ch.bound_ports(), 0u);
    auto rebound = ch.bind_interdomain(domid, *gport);
    ASSERT_TRUE(rebound);
    ev->reset();
    EXPECT_EQ(hv->resources().bound_ports, 0u);
}

TEST_F(IoreqFixture, XsmSiloRefusesDriverDomain) {
    SimOptions o;
    o.self_domid = 5;
    o.xsm = XsmMode::Silo;
    make(o);
    auto ctl = hv->open_domain_control();
    ASSERT_TRUE(ctl);
    EXPECT_EQ((*ctl)->xsm_mode(), XsmMode::Silo);
    auto s = dm->create_ioreq_server(domid);
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().code, std::errc::operation_not_permitted);
}

TEST_F(IoreqFixture, DriverDomainNeedsTarget) {
    SimOptions o;
    o.self_domid = 5;
    make(o);
    auto s = dm->create_ioreq_server(domid);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().message.find("set_target"), std::string::npos);
    // The toolstack (dom0) grants the privilege.
    ASSERT_TRUE(hv->set_target(5, domid));
    auto s2 = dm->create_ioreq_server(domid);
    ASSERT_TRUE(s2) << s2.error().describe();
    auto again = hv->set_target(5, domid);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, std::errc::invalid_argument);
    // The driver domain's own DomainControl cannot set targets.
    auto ctl = hv->open_domain_control();
    ASSERT_TRUE(ctl);
    EXPECT_FALSE((*ctl)->set_target(5, domid));
    auto info = (*ctl)->info(5);
    ASSERT_TRUE(info);
    ASSERT_TRUE(info->target.has_value());
    EXPECT_EQ(*info->target, domid);
    auto g2 = hv->guest(domid);
    ASSERT_TRUE(g2);
    auto ev = hv->open_event_channels();
    auto port = g2->alloc_unbound(5);
    ASSERT_TRUE(port);
    EXPECT_TRUE((*ev)->bind_interdomain(domid, *port));  // Dummy XSM: fine
}

/// Waits (bounded) until `pred` holds.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds t = 5s) {
    const auto until = std::chrono::steady_clock::now() + t;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > until) return false;
        std::this_thread::yield();
    }
    return true;
}

bool readable(const IoreqServer& s) {
    pollfd p{s.fd(), POLLIN, 0};
    return ::poll(&p, 1, 0) == 1;
}

// IoreqServer::serve_ready: a READY slot is found and answered in memory,
// without a read of the event channel. The event stays delivered (fd
// readable) and the port masked: the vCPU's next notification costs no
// delivery. serve_pending() reads it and unmasks; the event that came while
// masked is delivered again at once, a third access is delivered as usual.
TEST_F(IoreqFixture, ServeReadyAnswersFromMemoryAndLeavesTheEventPending) {
    auto s = server();
    ASSERT_TRUE(s->map_mmio(0x1000, 0x1fff));
    EXPECT_FALSE(s->any_ready());
    auto handler = [](const IoRequest& r) -> std::uint64_t { return r.addr + 1; };
    for (unsigned i = 0; i < 2; ++i) {
        std::atomic<bool> done{false};
        Result<std::uint64_t> got = std::uint64_t{0};
        std::thread vcpu([&] {
            got = g->mmio_read(0, 0x1000 + 8 * i, 4);
            done = true;
        });
        EXPECT_TRUE(eventually([&] { return s->any_ready(); }));
        auto n = s->serve_ready(handler);
        vcpu.join();  // served, or timed out in the sim when not
        ASSERT_TRUE(n) << n.error().describe();
        EXPECT_EQ(*n, 1u);
        ASSERT_TRUE(got) << got.error().describe();
        EXPECT_EQ(*got, 0x1001u + 8 * i);
        EXPECT_FALSE(s->any_ready());
        const auto e = g->ioreq_events();
        EXPECT_EQ(e.notifies, i + 1);
        EXPECT_EQ(e.deliveries, 1u) << "access " << i << ": a masked port is not delivered again";
        EXPECT_EQ(e.reads, 0u) << "access " << i << ": served without reading the event channel";
        EXPECT_TRUE(readable(*s)) << "the event of the first access stays pending";
    }
    // Read and unmask: the second notification, pending while masked, is
    // delivered again (a spurious one: its ioreq was answered).
    auto r = s->serve_pending(handler);
    ASSERT_TRUE(r);
    EXPECT_EQ(*r, 0u);
    EXPECT_EQ(g->ioreq_events().reads, 1u);
    EXPECT_EQ(g->ioreq_events().deliveries, 2u);
    EXPECT_TRUE(readable(*s));
    r = s->serve_pending(handler);
    ASSERT_TRUE(r);
    EXPECT_EQ(*r, 0u);
    EXPECT_FALSE(readable(*s)) << "nothing pending any more";
    // Unmasked: the next access is delivered and wakes a backend on the fd.
    Server srv(*s, handler);
    auto third = g->mmio_read(1, 0x1010, 4);
    ASSERT_TRUE(third) << third.error().describe();
    EXPECT_EQ(*third, 0x1011u);
    EXPECT_EQ(g->ioreq_events().deliveries, 3u);
}

// An event on an ioreq port with no READY slot behind it is read, its port
// unmasked and nothing served; the port delivers the next real ioreq.
TEST_F(IoreqFixture, SpuriousIoreqEventIsReadAndUnmasked) {
    SimOptions o;
    o.ioreq_timeout = 2s;
    make(o);
    auto s = server();
    ASSERT_TRUE(s->map_mmio(0x1000, 0x1fff));
    ASSERT_TRUE(g->kick_ioreq_port(0));
    EXPECT_TRUE(readable(*s));
    EXPECT_FALSE(s->any_ready());
    unsigned calls = 0;
    auto r = s->serve_pending([&](const IoRequest&) -> std::uint64_t { return ++calls; });
    ASSERT_TRUE(r);
    EXPECT_EQ(*r, 0u);
    EXPECT_EQ(calls, 0u);
    EXPECT_FALSE(readable(*s));
    EXPECT_FALSE(g->kick_ioreq_port(2));  // no such vCPU
    Server srv(*s, [](const IoRequest&) -> std::uint64_t { return 7; });
    auto v = g->mmio_read(0, 0x1000, 4);
    ASSERT_TRUE(v) << v.error().describe();
    EXPECT_EQ(*v, 7u);
}

// public/hvm/ioreq.h: only a slot whose state nibble is STATE_IOREQ_READY
// is a request. Other values are neither seen by any_ready() nor served;
// the bits above the nibble (data_is_ptr, dir) do not hide a READY state.
// The hostile fields of a READY slot reach the handler as they are (the
// ioreq loop refuses them).
TEST_F(IoreqFixture, OnlyAReadyStateNibbleIsARequest) {
    auto s = server();
    ASSERT_TRUE(s->map_mmio(0x1000, 0x1fff));
    std::vector<IoRequest> seen;
    auto handler = [&](const IoRequest& r) -> std::uint64_t {
        seen.push_back(r);
        return 0xab;
    };
    for (std::uint8_t state : {0, 2, 3, 4, 7, 15}) {
        SimGuest::RawIoreq raw;
        raw.state = state;
        raw.addr = 0x1000;
        ASSERT_TRUE(g->post_raw_ioreq(0, raw));
        EXPECT_FALSE(s->any_ready()) << "state " << int(state);
        auto n = s->serve_ready(handler);
        ASSERT_TRUE(n);
        EXPECT_EQ(*n, 0u) << "state " << int(state);
        n = s->serve_pending(handler);
        ASSERT_TRUE(n);
        EXPECT_EQ(*n, 0u) << "state " << int(state);
        EXPECT_EQ(g->raw_ioreq(0)->state, state) << "left as it was";
    }
    EXPECT_TRUE(seen.empty());
    SimGuest::RawIoreq raw;
    raw.state = 1;
    raw.data_is_ptr = true;
    raw.is_write = true;
    raw.count = 3;
    raw.size = 5;
    raw.type = 9;
    raw.addr = 0x1008;
    ASSERT_TRUE(g->post_raw_ioreq(1, raw));
    EXPECT_TRUE(s->any_ready());
    auto n = s->serve_ready(handler);
    ASSERT_TRUE(n);
    EXPECT_EQ(*n, 1u);
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_TRUE(seen[0].data_is_ptr);
    EXPECT_TRUE(seen[0].is_write);
    EXPECT_EQ(seen[0].count, 3u);
    EXPECT_EQ(seen[0].size, 5u);
    EXPECT_EQ(int(seen[0].type), 9);
    EXPECT_EQ(seen[0].vcpu, 1u);
    EXPECT_EQ(g->raw_ioreq(1)->state, 3u);  // STATE_IORESP_READY
    // The vCPU's next access takes its slot back.
    Server srv(*s, [](const IoRequest&) -> std::uint64_t { return 9; });
    auto v = g->mmio_read(0, 0x1000, 4);
    ASSERT_TRUE(v) << v.error().describe();
    EXPECT_EQ(*v, 9u);
}

}  // namespace
}  // namespace xv::xen::sim
