// SPDX-License-Identifier: GPL-2.0-only
// The driver-domain deployment on xen/sim (issue 8; lab-notes "A backend in
// a driver domain"): `attach` from Dom0 with its preconditions, a backend
// in a DomU serving its target guest with grants, the teardown (state 5 ->
// 6) leaving no zombie, and `check` run inside the driver domain.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "attach.h"
#include "blk_roundtrip.h"
#include "check.h"
#include "sim_host.h"

namespace xv::daemon {
namespace {

using namespace std::chrono_literals;
using namespace testing;

/// Runs `attach` against `sim`; returns (status, stdout, stderr).
struct AttachRun {
    int status;
    std::string out, err;
};
AttachRun attach(xen::sim::SimHypervisor& sim, const std::string& be, const std::string& guest) {
    std::ostringstream out, err;
    int st = attach_command(AttachOptions{be, guest}, sim, out, err);
    return {st, out.str(), err.str()};
}

Result<xen::DomId> create(xen::sim::SimHypervisor& sim, const char* name, bool paused) {
    xen::sim::DomainConfig dc;
    dc.name = name;
    dc.paused = paused;
    return sim.create_domain(dc);
}

TEST(Attach, GivesTheDriverDomainTargetOverAPausedGuest) {
    auto sim = xen::sim::SimHypervisor::create();
    auto drv = create(*sim, "drv", false);
    auto g = create(*sim, "g1", true);
    ASSERT_TRUE(drv && g);
    auto r = attach(*sim, "drv", "g1");
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("xl unpause g1"), std::string::npos) << r.out;
    auto dc = sim->open_domain_control().value();
    auto info = dc->info(*drv);
    ASSERT_TRUE(info.has_value());
    ASSERT_TRUE(info.value().target.has_value());
    EXPECT_EQ(*info.value().target, *g);
    EXPECT_EQ(sim->toolstack_store().read("/local/domain/" + std::to_string(*drv) + "/target").value(),
              std::to_string(*g));
    // Again for the same guest (a retried hook): nothing to do, success.
    auto again = attach(*sim, std::to_string(*drv), std::to_string(*g));
    EXPECT_EQ(again.status, 0) << again.err;
    EXPECT_NE(again.out.find("already"), std::string::npos) << again.out;
}

TEST(Attach, RefusesADriverDomainThatAlreadyHasAnotherTarget) {
    auto sim = xen::sim::SimHypervisor::create();
    auto drv = create(*sim, "drv", false);
    auto g1 = create(*sim, "g1", true);
    auto g2 = create(*sim, "g2", true);
    ASSERT_TRUE(drv && g1 && g2);
    ASSERT_EQ(attach(*sim, "drv", "g1").status, 0);
    auto r = attach(*sim, "drv", "g2");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("already has device-model privilege over dom" + std::to_string(*g1)), std::string::npos)
        << r.err;
    EXPECT_NE(r.err.find("one driver domain per guest"), std::string::npos) << r.err;
    EXPECT_EQ(*sim->open_domain_control().value()->info(*drv).value().target, *g1) << "target unchanged";
}

TEST(Attach, ADriverDomainWhoseGuestWasDestroyedMustBeRestartedForANewOne) {
    auto sim = xen::sim::SimHypervisor::create();
    auto drv = create(*sim, "drv", false);
    auto g1 = create(*sim, "g1", true);
    auto g2 = create(*sim, "g2", true);
    ASSERT_TRUE(drv && g1 && g2);
    ASSERT_EQ(attach(*sim, "drv", "g1").status, 0);
    ASSERT_TRUE(sim->destroy_domain(*g1).has_value());
    EXPECT_EQ(sim->zombies(), std::vector<xen::DomId>{*g1}) << "Xen holds the target until drv dies";
    auto r = attach(*sim, "drv", "g2");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("dom" + std::to_string(*g1) + ", which was destroyed"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("restart the driver domain (xl destroy drv"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("one target for its whole life"), std::string::npos) << r.err;
    // A fresh driver domain: the zombie goes with the old one.
    ASSERT_TRUE(sim->destroy_domain(*drv).has_value());
    EXPECT_TRUE(sim->zombies().empty());
    auto drv2 = create(*sim, "drv2", false);
    ASSERT_TRUE(drv2);
    EXPECT_EQ(attach(*sim, "drv2", "g2").status, 0);
}

TEST(Attach, RefusesAGuestThatDoesNotExistOrIsRunning) {
    auto sim = xen::sim::SimHypervisor::create();
    auto drv = create(*sim, "drv", false);
    auto running = create(*sim, "running", false);
    ASSERT_TRUE(drv && running);
    auto missing = attach(*sim, "drv", "nosuchguest");
    EXPECT_EQ(missing.status, 1);
    EXPECT_NE(missing.err.find("guest 'nosuchguest' does not exist"), std::string::npos) << missing.err;
    auto by_id = attach(*sim, "drv", "4242");
    EXPECT_EQ(by_id.status, 1);
    EXPECT_NE(by_id.err.find("dom4242"), std::string::npos) << by_id.err;
    auto no_drv = attach(*sim, "nosuchdrv", "running");
    EXPECT_EQ(no_drv.status, 1);
    EXPECT_NE(no_drv.err.find("driver domain 'nosuchdrv' does not exist"), std::string::npos) << no_drv.err;

    auto r = attach(*sim, "drv", "running");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("is running"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("xl create -p"), std::string::npos) << r.err;
    EXPECT_FALSE(sim->open_domain_control().value()->info(*drv).value().target.has_value());
    // Paused again (xl pause): accepted.
    ASSERT_TRUE(sim->set_paused(*running, true).has_value());
    EXPECT_EQ(attach(*sim, "drv", "running").status, 0);
}

TEST(Attach, RefusesNonsenseDomainPairs) {
    auto sim = xen::sim::SimHypervisor::create();
    auto drv = create(*sim, "drv", true);
    ASSERT_TRUE(drv);
    EXPECT_EQ(attach(*sim, "drv", "drv").status, 1);
    auto d0 = attach(*sim, "0", "drv");
    EXPECT_EQ(d0.status, 1);
    EXPECT_NE(d0.err.find("dom0 already has device-model privilege"), std::string::npos) << d0.err;
    EXPECT_EQ(attach(*sim, "drv", "0").status, 1);
}

TEST(Attach, XsmSiloIsRefusedWithTheFix) {
    xen::sim::SimOptions so;
    so.xsm = xen::XsmMode::Silo;
    auto sim = xen::sim::SimHypervisor::create(so);
    auto drv = create(*sim, "drv", false);
    auto g = create(*sim, "g1", true);
    ASSERT_TRUE(drv && g);
    auto r = attach(*sim, "drv", "g1");
    EXPECT_EQ(r.status, 3);
    EXPECT_NE(r.err.find("XSM SILO"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("xsm=dummy"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("FLASK"), std::string::npos) << r.err;
    EXPECT_FALSE(sim->open_domain_control().value()->info(*drv).value().target.has_value());
}

// --- the backend side, inside the driver domain ---------------------------

constexpr xen::DomId kDrv = 7;

std::string driver_domain_config(const TempImage& img) {
    return domains_toml({{"g1", "unsafe"}}) + "\n[[domain]]\nid = 7\nroles = [\"domu\"]\nclass = \"unsafe\"\n" +
           blk_toml("g1", img.path.string());
}

xen::sim::SimOptions in_driver_domain(xen::XsmMode xsm = xen::XsmMode::Dummy) {
    xen::sim::SimOptions so;
    so.self_domid = kDrv;
    so.xsm = xsm;
    return so;
}

TEST(DriverDomain, ServesItsTargetGuestWithGrantsAndTeardownReleasesAllItHolds) {
    TempImage img(4 << 20);
    Host h(driver_domain_config(img), in_driver_domain());
    auto g = create_guest(h, "g1");
    ASSERT_TRUE(g);
    // Dom0's part (xl create -p; xen-virtiod attach).
    ASSERT_TRUE(h.sim->set_target(kDrv, *g).has_value());
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*g, 0, "virtio,device2", true, kDrv)).has_value());
    ManagerOptions mo;
    mo.only_guest = *g;  // the per-guest instance, xen-virtiod@<G>
    std::atomic<bool> gone = false;  // set on an I/O thread
    mo.on_only_guest_gone = [&] { gone = true; };
    auto v = h.start(mo);
    ASSERT_TRUE(v.has_value()) << v.error().describe();
    EXPECT_FALSE(v.value().refuses_start());
    ASSERT_EQ(h.sessions().size(), 1u);
    EXPECT_EQ(h.sim->toolstack_store().read(be_path(*g, 0, kDrv) + "/state").value(), "2");
    blk_roundtrip(*h.sim->guest(*g), kBase, 33, 8, std::vector<std::byte>(8192, std::byte{0x7d}), kDrv);
    EXPECT_GT(h.sim->resources().mapped_grant_pages + h.sim->resources().ioreq_servers, 0u);

    // xl destroy: online=0, state=5, wait for 6; then the domain goes.
    auto& xs = h.sim->toolstack_store();
    ASSERT_TRUE(begin_device_removal(xs, be_path(*g, 0, kDrv)).has_value());
    EXPECT_TRUE(h.eventually([&] {
        auto st = xs.read(be_path(*g, 0, kDrv) + "/state");
        return st && st.value() == "6";
    }))
        << "the backend never answered Closed (6)";
    EXPECT_TRUE(h.eventually([&] { return h.released(); })) << h.resources_text();
    ASSERT_TRUE(h.sim->destroy_domain(*g).has_value());
    // Nothing of ours holds the guest: no grant page, no ioreq server, no
    // port. What is left is Xen's own reference from set_target, dropped
    // only when the driver domain is destroyed (lab: dd-destroy-no-zombie,
    // dd-no-zombie-after-drv).
    EXPECT_EQ(h.sim->resources().mapped_grant_pages, 0u);
    EXPECT_EQ(h.sim->zombies(), std::vector<xen::DomId>{*g}) << "held by the driver domain's target only";
    EXPECT_TRUE(h.eventually([&] { return gone.load(); })) << "the per-guest instance did not notice its guest is gone";
    EXPECT_EQ(h.sim->stats().foreign_ram_maps, 0u);
}

TEST(DriverDomain, AGuestFoundBeforeAttachIsServedOnceTheTargetIsGiven) {
    // The order xl 4.17 forces: `xl create -p` writes the devices (and
    // waits for InitWait) before the hook can run `attach`.
    TempImage img(4 << 20);
    Host h(driver_domain_config(img), in_driver_domain());
    auto g = create_guest(h, "g1");
    ASSERT_TRUE(g);
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*g, 0, "virtio,device2", true, kDrv)).has_value());
    auto v = h.start();
    ASSERT_TRUE(v.has_value()) << v.error().describe();
    EXPECT_TRUE(h.sessions().empty());
    auto& xs = h.sim->toolstack_store();
    EXPECT_NE(xs.read(be_path(*g, 0, kDrv) + "/state").value(), "2") << "InitWait before device-model privilege";
    EXPECT_FALSE(xs.read(be_path(*g, 0, kDrv) + "/error").has_value()) << "waiting is not an error";
    EXPECT_EQ(h.sim->resources().ioreq_servers, 0u);
    // Dom0: xen-virtiod attach (set_target, xenstored's target, the key).
    ASSERT_TRUE(h.sim->set_target(kDrv, *g).has_value());
    EXPECT_TRUE(h.eventually([&] {
        auto st = xs.read(be_path(*g, 0, kDrv) + "/state");
        return st && st.value() == "2";
    })) << "not served after the target key appeared";
    EXPECT_EQ(h.sessions().size(), 1u);
    blk_roundtrip(*h.sim->guest(*g), kBase, 33, 8, std::vector<std::byte>(8192, std::byte{0x5a}), kDrv);
}

TEST(DriverDomain, AGuestWhoseNameItCannotReadIsRefusedWithTheFixNotMismatched) {
    // Xen's target without xenstored's: /local/domain/<g>/name is
    // unreadable from the driver domain, and the configuration names the
    // guest. Matching nothing would serve it with defaults and the wrong
    // class; the error says why and what to do.
    TempImage img(4 << 20);
    Host h(driver_domain_config(img), in_driver_domain());
    auto g = create_guest(h, "g1");
    ASSERT_TRUE(g);
    ASSERT_TRUE(h.sim->set_target(kDrv, *g, /*xenstored=*/false).has_value());
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*g, 0, "virtio,device2", true, kDrv)).has_value());
    auto v = h.start();
    ASSERT_TRUE(v.has_value()) << v.error().describe();
    EXPECT_TRUE(h.sessions().empty());
    auto err = h.sim->toolstack_store().read(be_path(*g, 0, kDrv) + "/error");
    ASSERT_TRUE(err.has_value());
    const std::string id = std::to_string(*g);
    EXPECT_NE(err.value().find("name of dom" + id + " cannot be read from this domain"), std::string::npos)
        << err.value();
    EXPECT_NE(err.value().find("'g1'"), std::string::npos) << err.value();
    EXPECT_NE(err.value().find("guest = " + id), std::string::npos) << err.value();
    EXPECT_NE(err.value().find("xen-virtiod attach"), std::string::npos) << err.value();
    EXPECT_EQ(h.sim->resources().ioreq_servers, 0u);
}

TEST(DriverDomain, AGuestNamedByDomidNeedsNoReadableName) {
    TempImage img(4 << 20);
    Host h(driver_domain_config(img), in_driver_domain());
    auto g = create_guest(h, "g1");
    ASSERT_TRUE(g);
    // The same configuration with the guest given by domid.
    const std::string id = std::to_string(*g);
    auto cfg = parse_config("[[domain]]\nid = 0\nroles = [\"hardware\", \"control\"]\nclass = \"safe\"\n"
                            "\n[[domain]]\nid = " + id + "\nroles = [\"domu\"]\nclass = \"unsafe\"\n"
                            "\n[[domain]]\nid = 7\nroles = [\"domu\"]\nclass = \"unsafe\"\n"
                            "\n[[device]]\nguest = " + id + "\ntype = \"blk\"\npath = \"" + img.path.string() + "\"\n",
                            "<test>");
    ASSERT_TRUE(cfg.has_value()) << cfg.error().describe();
    h.config = std::move(cfg).value();
    ASSERT_TRUE(h.sim->set_target(kDrv, *g, /*xenstored=*/false).has_value());
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*g, 0, "virtio,device2", true, kDrv)).has_value());
    auto v = h.start();
    ASSERT_TRUE(v.has_value()) << v.error().describe();
    ASSERT_EQ(h.sessions().size(), 1u);
    blk_roundtrip(*h.sim->guest(*g), kBase, 33, 8, std::vector<std::byte>(8192, std::byte{0x3c}), kDrv);
}

TEST(DriverDomain, UnderXsmSiloNothingIsServedAndNothingLeaks) {
    TempImage img(4 << 20);
    Host h(driver_domain_config(img), in_driver_domain(xen::XsmMode::Silo));
    auto g = create_guest(h, "g1");
    ASSERT_TRUE(g);
    ASSERT_TRUE(h.sim->set_target(kDrv, *g).has_value());
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*g, 0, "virtio,device2", true, kDrv)).has_value());
    auto v = h.start();
    ASSERT_TRUE(v.has_value()) << v.error().describe();
    bool silo = false;
    for (const auto& i : v.value().items)
        silo |= i.rule == "XSM" && i.level == Level::Warning && i.message.find("xsm=dummy") != std::string::npos;
    EXPECT_TRUE(silo);
    EXPECT_TRUE(h.sessions().empty());
    auto err = h.sim->toolstack_store().read(be_path(*g, 0, kDrv) + "/error");
    ASSERT_TRUE(err.has_value());
    EXPECT_NE(err.value().find("SILO"), std::string::npos) << err.value();
    EXPECT_TRUE(h.released()) << h.resources_text();
}

TEST(DriverDomain, CheckInsideTheDriverDomainReportsXsmAndTargetPerGuest) {
    TempImage img(4 << 20);
    auto cfg_path = std::filesystem::temp_directory_path() / ("xv-dd-" + std::to_string(::getpid()) + ".toml");
    std::ofstream(cfg_path) << driver_domain_config(img);
    for (bool with_target : {false, true}) {
        auto sim = xen::sim::SimHypervisor::create(in_driver_domain());
        xen::sim::DomainConfig dc;
        dc.name = "g1";
        auto g = sim->create_domain(dc);
        ASSERT_TRUE(g);
        if (with_target) {
            ASSERT_TRUE(sim->set_target(kDrv, *g).has_value());
        }
        ASSERT_TRUE(sim->add_virtio_device(spec(*g, 0, "virtio,device2", true, kDrv)).has_value());
        std::ostringstream out, err;
        int st = check_command(cfg_path.string(), false, sim.get(), out, err);
        EXPECT_EQ(st, 0) << out.str() << err.str();
        const std::string t = out.str();
        EXPECT_NE(t.find("xsm dummy"), std::string::npos) << t;
        EXPECT_NE(t.find("TARGET"), std::string::npos) << t;
        const std::string want = with_target ? "has device-model privilege (target) over dom" + std::to_string(*g)
                                             : "no device-model privilege over dom" + std::to_string(*g);
        EXPECT_NE(t.find(want), std::string::npos) << t;
        // The driver domain's class (R3) and the guest's rules are on the table.
        EXPECT_NE(t.find("backend runs in an UnsafeVM"), std::string::npos) << t;
        EXPECT_NE(t.find("the daemon runs outside the Control Domain"), std::string::npos) << t;
    }
    std::filesystem::remove(cfg_path);
}

}  // namespace
}  // namespace xv::daemon
