// SPDX-License-Identifier: GPL-2.0-only
// Hostile xenstore values, a frontend that never connects, and a guest that
// exits with requests in flight: the hostile guest's device gets an
// `error` node and a log line (or is released without a leak), the honest
// guest of the same supervisor keeps writing and verifying.
#include <cstring>

#include "hostile_harness.h"

namespace xv::hostile {
namespace {

class Xenstore : public HostileFixture {
protected:
    /// Starts with `key` of the hostile device's backend directory set to `value`.
    void start_with(const std::string& key, const std::string& value) {
        start_host(Tk::Mmio, {}, [&] {
            ASSERT_TRUE(host_->sim->toolstack_store().write(be_path(evil_dom_, 0) + "/" + key, value).has_value());
        }, false);
    }
    /// The hostile device has an error node mentioning `what` (in its
    /// backend directory and under /local/domain/0/error/, as xenbus
    /// backends write them), a log line names the guest, the device and its
    /// backend path, and nothing serves its window.
    void expect_refused(std::string_view what) {
        auto& xs = host_->sim->toolstack_store();
        auto err = xs.read(be_path(evil_dom_, 0) + "/error");
        ASSERT_TRUE(err.has_value()) << "no error node";
        EXPECT_NE(err.value().find(what), std::string::npos) << err.value();
        auto mirror = xs.read("/local/domain/0/error/backend/virtio/" + std::to_string(evil_dom_) + "/0/error");
        ASSERT_TRUE(mirror.has_value()) << "no error node under /local/domain/0/error";
        EXPECT_EQ(mirror.value(), err.value());
        EXPECT_TRUE(log_sink().wait_for({"dom" + std::to_string(evil_dom_) + " virtio device 0", be_path(evil_dom_, 0),
                                         std::string(what)}))
            << dump_lines(be_path(evil_dom_, 0));
        auto g = host_->sim->guest(evil_dom_);
        auto magic = g->mmio_read(0, kBase, 4);
        EXPECT_FALSE(magic.has_value() && *magic != 0xffffffff) << "the refused device's window answers";
        expect_honest_progress();
    }
};

TEST_F(Xenstore, GarbageBaseIsRefused) {
    start_with("base", "0x2000000zz");
    expect_refused("base");
}

TEST_F(Xenstore, UnalignedOrHugeBaseIsRefused) {
    start_with("base", "0xffffffffffffff00");
    expect_refused("base");
}

TEST_F(Xenstore, GarbageIrqIsRefused) {
    start_with("irq", "-1");
    expect_refused("irq");
}

TEST_F(Xenstore, IrqBeyondTheGicIsRefused) {
    start_with("irq", "4294967329");  // 2^32 + 33: truncates to 33 if parsed carelessly
    expect_refused("irq");
}

// Arm: the line is raised with XEN_DMOP_set_irq_level, SPIs only (xen-facts
// §3.3); 0..15 are SGIs, 16..31 PPIs.
TEST_F(Xenstore, SgiAsIrqIsRefused) {
    start_with("irq", "0");
    expect_refused("not an SPI");
}

TEST_F(Xenstore, PpiAsIrqIsRefused) {
    start_with("irq", "31");  // the last PPI, one below the first SPI
    expect_refused("not an SPI");
}

TEST_F(Xenstore, DeviceAnnouncedLaterWithAPpiIsRefused) {
    // Found by the rescan of a running daemon, not by the first scan.
    start_host(Tk::Mmio);
    ASSERT_TRUE(evil().up({.size = 16}).has_value());
    xen::sim::VirtioDeviceSpec s;  // written in one transaction: no scan sees a valid irq first
    s.frontend = evil_dom_;
    s.backend = 0;
    s.devid = 1;
    s.type = "virtio,device2";
    s.base = kBase + 0x200;
    s.irq = 27;  // the virtual timer's PPI
    s.grant_usage = true;
    ASSERT_TRUE(host_->sim->add_virtio_device(s).has_value());
    EXPECT_TRUE(Host::eventually([&] {
        auto e = host_->sim->toolstack_store().read(be_path(evil_dom_, 1) + "/error");
        return e.has_value() && e.value().find("not an SPI") != std::string::npos;
    })) << "no error node for the device with a PPI";
    EXPECT_TRUE(log_sink().wait_for({"dom" + std::to_string(evil_dom_) + " virtio device 1", "not an SPI"}))
        << dump_lines("not an SPI");
    expect_honest_progress();
}

TEST_F(Xenstore, MisnamedDeviceDirectoryIsRefused) {
    // "00" names device 0 a second time (found by fuzz_discovery).
    start_host(Tk::Mmio, {}, [&] {
        ASSERT_TRUE(host_->sim->toolstack_store()
                        .write("/local/domain/0/backend/virtio/" + std::to_string(evil_dom_) + "/00/frontend-id",
                               std::to_string(evil_dom_))
                        .has_value());
    }, false);
    const std::string path = "/local/domain/0/backend/virtio/" + std::to_string(evil_dom_) + "/00";
    auto err = host_->sim->toolstack_store().read(path + "/error");
    ASSERT_TRUE(err.has_value()) << "no error node for the misnamed directory";
    EXPECT_NE(err.value().find("not a device id"), std::string::npos) << err.value();
    EXPECT_TRUE(log_sink().wait_for({"dom" + std::to_string(evil_dom_), path, "not a device id"}))
        << dump_lines("not a device id");
    expect_honest_progress();
}

TEST_F(Xenstore, GarbageTypeIsRefused) {
    start_with("type", "../../../etc/passwd");
    expect_refused("type");
}

TEST_F(Xenstore, GarbageTransportIsRefused) {
    start_with("transport", "pcie");
    expect_refused("transport");
}

TEST_F(Xenstore, FrontendIdOfAnotherGuestIsRefused) {
    // A backend directory listed under the hostile guest but naming the honest one.
    start_host(Tk::Mmio, {}, [&] {
        ASSERT_TRUE(host_->sim->toolstack_store()
                        .write(be_path(evil_dom_, 0) + "/frontend-id", std::to_string(honest_dom_))
                        .has_value());
    }, false);
    expect_refused("frontend-id");
}

TEST_F(Xenstore, OversizedValueIsRefused) {
    start_with("type", "virtio,device2" + std::string(4000, 'A'));
    // xenstore takes 4096-byte values; the type check refuses it either way.
    auto err = host_->sim->toolstack_store().read(be_path(evil_dom_, 0) + "/error");
    ASSERT_TRUE(err.has_value());
    EXPECT_LT(err.value().size(), 4096u) << "the error node echoes the whole hostile value";
    expect_honest_progress();
}

TEST_F(Xenstore, ValueCorruptedWhileServedStopsOnlyThatGuest) {
    start_host(Tk::Mmio);
    ASSERT_TRUE(evil().up({.size = 16}).has_value());
    ASSERT_TRUE(host_->sim->toolstack_store().write(be_path(evil_dom_, 0) + "/irq", "junk").has_value());
    EXPECT_TRUE(Host::eventually([&] {
        return host_->sim->toolstack_store().read(be_path(evil_dom_, 0) + "/error").has_value();
    })) << "no error node for the corrupted entry";
    EXPECT_TRUE(log_sink().wait_for({be_path(evil_dom_, 0), "irq"})) << dump_lines("irq");
    expect_honest_progress();
}

TEST_F(Xenstore, FrontendThatNeverConnectsHoldsNothingUp) {
    // The hostile guest is announced and served, but its frontend never
    // touches the device nor writes its xenstore state.
    start_host(Tk::Mmio);
    auto& xs = host_->sim->toolstack_store();
    EXPECT_EQ(xs.read(be_path(evil_dom_, 0) + "/state").value(), "2") << "backend is not waiting (InitWait)";
    expect_honest_progress();
    // A frontend that writes garbage as its state does not matter either.
    ASSERT_TRUE(xs.write("/local/domain/" + std::to_string(evil_dom_) + "/device/virtio/0/state", "banana").has_value());
    expect_honest_progress();
    // It goes away without ever connecting: everything of it is released.
    evil_.reset();
    ASSERT_TRUE(host_->sim->destroy_domain(evil_dom_).has_value());
    EXPECT_TRUE(Host::eventually([&] { return host_->manager->sessions().size() == 1; }));
    EXPECT_TRUE(Host::eventually([&] { return host_->sim->resources().ioreq_servers == 1; }));
    EXPECT_TRUE(host_->sim->zombies().empty());
    expect_honest_progress();
}

TEST_F(Xenstore, OverlappingWindowsRefuseOnlyThatGuest) {
    // Two devices of the hostile guest announced at the same window.
    start_host(Tk::Mmio, {}, [&] {
        ASSERT_TRUE(host_->announce_mmio(evil_dom_, 1, "virtio,device3").has_value());
        ASSERT_TRUE(host_->sim->toolstack_store().write(be_path(evil_dom_, 1) + "/base", "0x2000000").has_value());
    }, false);
    EXPECT_TRUE(log_sink().wait_for({"dom" + std::to_string(evil_dom_), "overlaps"})) << dump_lines("overlaps");
    EXPECT_TRUE(host_->sim->toolstack_store().read(be_path(evil_dom_, 0) + "/error").has_value());
    EXPECT_EQ(host_->manager->sessions().size(), 1u);
    EXPECT_EQ(host_->sim->resources().ioreq_servers, 1u) << "the refused guest's ioreq server was left behind";
    expect_honest_progress();
}

TEST_F(Xenstore, ManyBogusDevicesAreAllRefused) {
    start_host(Tk::Mmio, {}, [&] {
        for (unsigned i = 1; i <= 64; ++i) ASSERT_TRUE(host_->announce_mmio(evil_dom_, i, "virtio,device2").has_value());
    }, false);
    // Only one blk is configured for the hostile guest: every other one has no image.
    unsigned errors = 0;
    for (unsigned i = 1; i <= 64; ++i) errors += host_->sim->toolstack_store().read(be_path(evil_dom_, i) + "/error").has_value();
    EXPECT_EQ(errors, 64u);
    expect_honest_progress();
}

// --- a guest that exits with requests in flight -----------------------------------------

class GuestExit : public HostileByTransport {};

TEST_P(GuestExit, WithRequestsInFlightReleasesEverything) {
    ASSERT_TRUE(evil().up({.size = 64}).has_value());
    for (int k = 0; k < 20; ++k) {
        devices::blk::OutHdr h{k % 3 ? devices::blk::req::kOut : devices::blk::req::kIn, 0, std::uint64_t(k) * 128};
        auto hb = evil().q().alloc(16, true);
        ASSERT_TRUE(hb.has_value());
        std::memcpy(hb->ptr, &h, sizeof h);
        auto c = evil().q().chain().add(*hb, false);
        if (k % 3) c.readable(65536, std::byte(k));
        else c.writable(65536);
        ASSERT_TRUE(c.writable(1).submit().has_value());
    }
    ASSERT_TRUE(evil().t().notify(0).has_value());
    evil_.reset();
    ASSERT_TRUE(host_->sim->destroy_domain(evil_dom_).has_value());
    EXPECT_TRUE(Host::eventually([&] { return host_->manager->sessions().size() == 1; }));
    EXPECT_TRUE(log_sink().wait_for({"dom" + std::to_string(evil_dom_), "went away"})) << dump_lines("went away");
    EXPECT_TRUE(Host::eventually([&] { return host_->sim->zombies().empty(); }))
        << "the dead guest's grants are still mapped";
    EXPECT_TRUE(Host::eventually([&] { return host_->sim->resources().ioreq_servers == 1; }))
        << host_->sim->resources().ioreq_servers << " ioreq servers for one guest";
    expect_honest_progress();
}

TEST_P(GuestExit, DuringAResetStormReleasesEverything) {
    std::atomic<bool> stop{false};
    auto g = evil().sim_ptr();
    std::thread storm([&] {
        while (!stop) {
            if (!evil().up({.size = 16})) break;
            auto d = evil().data_ro;
            d.len = 4096;
            (void)evil().q().chain().add(evil().hdr, false).add(d, false).add(evil().status_buf, true).submit();
            if (!evil().t().notify(0)) break;
            if (!evil().t().set_status(0)) break;
        }
    });
    std::this_thread::sleep_for(100ms);
    ASSERT_TRUE(host_->sim->destroy_domain(evil_dom_).has_value());
    stop = true;
    storm.join();  // the vCPU's traps fail once the domain is gone
    evil_.reset();
    g.reset();
    EXPECT_TRUE(Host::eventually([&] { return host_->manager->sessions().size() == 1; }));
    EXPECT_TRUE(Host::eventually([&] { return host_->sim->zombies().empty(); }));
    EXPECT_TRUE(Host::eventually([&] { return host_->sim->resources().ioreq_servers == 1; }));
    expect_honest_progress();
}

INSTANTIATE_TEST_SUITE_P(Hostile, GuestExit, ::testing::Values(Tk::Mmio, Tk::PciNb), tk_param_name);

}  // namespace
}  // namespace xv::hostile
