// SPDX-License-Identifier: GPL-2.0-only
// The safety policy matrix: each rule, each verdict level, each exit
// status, for SafeVM and UnsafeVM guests on mmio and pci, with and without
// grants and the non-blocking registers.
#include <gtest/gtest.h>

#include "config.h"
#include "policy.h"

namespace xv::daemon {
namespace {

Config cfg(const std::string& text) {
    auto r = parse_config(text, "test.toml");
    EXPECT_TRUE(r) << r.error().message;
    return r ? r.value() : Config{};
}

/// A driver domain (dom1, UnsafeVM) with device-model privilege over dom5:
/// every host-side rule is satisfied, so guest rules decide alone.
HostFacts driver_domain(std::optional<xen::DomId> target = xen::DomId(5)) {
    HostFacts h;
    h.domid = 1;
    h.is_control_domain = false;
    h.xsm = xen::XsmMode::Dummy;
    h.target = target;
    h.xen_reachable = true;
    return h;
}

const std::string kDriverDomain = "[[domain]]\nid = 1\nroles = [\"domu\"]\nclass = \"unsafe\"\n";

GuestFacts guest5(Transport t, bool grants, bool nb) {
    GuestFacts g;
    g.domid = 5;
    g.name = "guest1";
    DeviceFacts d;
    d.type = DeviceType::Blk;
    d.transport = t;
    d.grant_usage = grants;
    d.nonblocking = nb;
    d.key = "virtio/5/0";
    d.xs_path = "/local/domain/1/backend/virtio/5/0";
    g.devices.push_back(d);
    return g;
}

std::vector<const Verdict*> find(const Verdicts& v, const std::string& rule, std::optional<xen::DomId> domid = {}) {
    std::vector<const Verdict*> out;
    for (const auto& x : v.items)
        if (x.rule == rule && (!domid || x.domid == domid)) out.push_back(&x);
    return out;
}

const Verdict& one(const Verdicts& v, const std::string& rule, std::optional<xen::DomId> domid = {}) {
    auto f = find(v, rule, domid);
    EXPECT_EQ(f.size(), 1u) << rule;
    static Verdict none;
    return f.empty() ? none : *f[0];
}

struct MatrixCase {
    VmClass cls;
    Transport transport;
    bool grants;
    bool nonblocking;
};

std::string case_name(const ::testing::TestParamInfo<MatrixCase>& i) {
    return std::string(to_string(i.param.cls)) + "_" + to_string(i.param.transport) +
           (i.param.grants ? "_grants" : "_nogrants") + (i.param.nonblocking ? "_nb" : "_sync");
}

class PolicyMatrix : public ::testing::TestWithParam<MatrixCase> {};

TEST_P(PolicyMatrix, RulesR1R2R3) {
    const auto p = GetParam();
    const bool safe = p.cls == VmClass::Safe;
    for (bool strict : {false, true}) {
        SCOPED_TRACE(strict ? "strict" : "default");
        Config c = cfg(std::string("[daemon]\nstrict = ") + (strict ? "true" : "false") + "\n" + kDriverDomain +
                       "[[domain]]\nid = 5\nname = \"guest1\"\nclass = \"" + to_string(p.cls) + "\"\n");
        Verdicts v = evaluate(c, {guest5(p.transport, p.grants, p.nonblocking)}, driver_domain());

        // R1 (FFI: Memory Mappings): no grants -> SafeVM refuse, UnsafeVM device refused.
        const Verdict& r1 = one(v, "R1", 5);
        EXPECT_EQ(r1.section, "FFI: Memory Mappings");
        EXPECT_EQ(r1.device, "blk0");
        EXPECT_EQ(r1.device_key, "virtio/5/0");
        EXPECT_EQ(r1.level, p.grants ? Level::Ok : safe ? Level::Refuse : Level::DeviceRefused);

        // R2 (FFI: Synchronous Emulation): SafeVM needs the registers.
        const Verdict& r2 = one(v, "R2", 5);
        EXPECT_EQ(r2.section, "FFI: Synchronous Emulation");
        EXPECT_EQ(r2.level, (safe && !p.nonblocking) ? Level::Refuse : Level::Ok);
        EXPECT_NE(r2.message.find(to_string(p.transport)), std::string::npos);

        // R3 (FFI: Shared Memory and Interrupts): a SafeVM frontend is a warning, strict: refuse.
        const Verdict& r3 = one(v, "R3", 5);
        EXPECT_EQ(r3.section, "FFI: Shared Memory and Interrupts");
        EXPECT_EQ(r3.level, safe ? (strict ? Level::Refuse : Level::Warning) : Level::Ok);

        // Exit status: 2 exactly when something refuses the start.
        const bool refuse = (safe && (!p.grants || !p.nonblocking)) || (safe && strict);
        EXPECT_EQ(v.exit_status(), refuse ? 2 : 0);
        EXPECT_EQ(v.refuses_start(), refuse);

        // The discovery code learns which device not to serve.
        // (R3 under strict refuses the start but names no device.)
        auto refusals = v.refusals(xen::DomId(5), "virtio/5/0");
        EXPECT_EQ(!refusals.empty(), !p.grants || (safe && !p.nonblocking));
    }
}

INSTANTIATE_TEST_SUITE_P(AllCombinations, PolicyMatrix,
                         ::testing::ValuesIn([] {
                             std::vector<MatrixCase> v;
                             for (VmClass c : {VmClass::Safe, VmClass::Unsafe})
                                 for (Transport t : {Transport::Mmio, Transport::Pci})
                                     for (bool g : {true, false})
                                         for (bool nb : {true, false}) v.push_back({c, t, g, nb});
                             return v;
                         }()),
                         case_name);

TEST(Policy, AllHostRulesOkForAnUnsafeDriverDomain) {
    Verdicts v = evaluate(cfg(kDriverDomain), {}, driver_domain());
    EXPECT_EQ(one(v, "R4").level, Level::Ok);
    EXPECT_EQ(one(v, "R6").level, Level::Ok);
    EXPECT_EQ(one(v, "R3").level, Level::Ok);
    EXPECT_EQ(one(v, "XSM").level, Level::Ok);
    EXPECT_EQ(v.exit_status(), 0);
    EXPECT_EQ(v.count(Level::Ok), v.items.size());
}

TEST(Policy, R1UnsafeVmWithoutGrantsOnlyRefusesThatDevice) {
    Config c = cfg(kDriverDomain + "[[domain]]\nid = 5\nclass = \"unsafe\"\n");
    GuestFacts g = guest5(Transport::Mmio, true, false);
    DeviceFacts bad = g.devices[0];
    bad.type = DeviceType::Net;
    bad.grant_usage = false;
    bad.key = "virtio/5/1";
    g.devices.push_back(bad);
    Verdicts v = evaluate(c, {g}, driver_domain());
    EXPECT_EQ(v.exit_status(), 0);
    EXPECT_TRUE(v.refusals(xen::DomId(5), "virtio/5/0").empty());
    auto r = v.refusals(xen::DomId(5), "virtio/5/1");
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0]->rule, "R1");
    EXPECT_EQ(r[0]->level, Level::DeviceRefused);
    std::string text = xenstore_error_text(*r[0]);
    EXPECT_NE(text.find("dom5"), std::string::npos) << text;
    EXPECT_NE(text.find("net0"), std::string::npos) << text;
    EXPECT_NE(text.find("R1"), std::string::npos) << text;
    EXPECT_NE(text.find("FFI: Memory Mappings"), std::string::npos) << text;
    EXPECT_NE(text.find("grant_usage=0"), std::string::npos) << text;
}

TEST(Policy, R3BackendInASafeVm) {
    for (bool strict : {false, true}) {
        Config c = cfg(std::string("[daemon]\nstrict = ") + (strict ? "true" : "false") +
                       "\n[[domain]]\nid = 1\nroles = [\"domu\"]\nclass = \"safe\"\n");
        Verdicts v = evaluate(c, {}, driver_domain());
        const Verdict& r3 = one(v, "R3", 1);
        EXPECT_EQ(r3.level, strict ? Level::Refuse : Level::Warning);
        EXPECT_EQ(v.exit_status(), strict ? 2 : 0);
    }
}

TEST(Policy, R4ControlDomainMustBeSafe) {
    Config c = cfg("[[domain]]\nid = 0\nroles = [\"hardware\", \"control\"]\nclass = \"unsafe\"\n" + kDriverDomain);
    Verdicts v = evaluate(c, {}, driver_domain());
    auto r4 = find(v, "R4");
    ASSERT_EQ(r4.size(), 1u);
    EXPECT_EQ(r4[0]->level, Level::Refuse);
    EXPECT_EQ(r4[0]->section, "Roles");
    EXPECT_NE(r4[0]->message.find("must be a SafeVM"), std::string::npos);
    EXPECT_EQ(v.exit_status(), 2);
}

TEST(Policy, R4ControlDomainWithoutClassIsSafe) {
    Config c = cfg("[[domain]]\nid = 0\n" + kDriverDomain);
    Verdicts v = evaluate(c, {}, driver_domain());
    EXPECT_EQ(one(v, "R4").level, Level::Ok);
    EXPECT_EQ(v.exit_status(), 0);
}

TEST(Policy, R4AtMostOneControlAndOneHardwareDomain) {
    Config c = cfg(
        "[[domain]]\nid = 0\nroles = [\"control\"]\nclass = \"safe\"\n"
        "[[domain]]\nid = 2\nroles = [\"control\", \"hardware\"]\nclass = \"safe\"\n"
        "[[domain]]\nid = 3\nroles = [\"hardware\"]\n");
    Verdicts v = evaluate(c, {}, driver_domain());
    auto r4 = find(v, "R4");
    ASSERT_EQ(r4.size(), 2u);
    EXPECT_NE(r4[0]->message.find("only be one Control Domain"), std::string::npos) << r4[0]->message;
    EXPECT_NE(r4[1]->message.find("only be one Hardware Domain"), std::string::npos) << r4[1]->message;
    for (auto* x : r4) EXPECT_EQ(x->level, Level::Refuse);
    EXPECT_EQ(v.exit_status(), 2);
}

TEST(Policy, R4DomUCannotAlsoBePrivileged) {
    Config c = cfg("[[domain]]\nid = 4\nroles = [\"domu\", \"hardware\"]\n");
    Verdicts v = evaluate(c, {}, driver_domain());
    EXPECT_EQ(one(v, "R4").level, Level::Refuse);
    EXPECT_EQ(one(v, "R4").domid, xen::DomId(4));
}

TEST(Policy, R4XenAndConfigDisagreeAboutTheControlDomain) {
    Config c = cfg("[[domain]]\nid = 0\nroles = [\"hardware\"]\nclass = \"unsafe\"\n");
    HostFacts h;
    h.domid = 0;
    h.is_control_domain = true;
    h.xen_reachable = true;
    Verdicts v = evaluate(c, {}, h);
    auto r4 = find(v, "R4");
    ASSERT_FALSE(r4.empty());
    EXPECT_EQ(r4[0]->level, Level::Refuse);
    EXPECT_NE(r4[0]->message.find("Xen reports dom0 is the Control Domain"), std::string::npos) << r4[0]->message;
}

TEST(Policy, R6DaemonInTheControlDomain) {
    for (bool strict : {false, true}) {
        Config c = cfg(std::string("[daemon]\nstrict = ") + (strict ? "true" : "false") + "\n[[domain]]\nid = 0\n");
        HostFacts h;
        h.domid = 0;
        h.is_control_domain = true;
        h.xen_reachable = true;
        Verdicts v = evaluate(c, {}, h);
        const Verdict& r6 = one(v, "R6");
        EXPECT_EQ(r6.section, "Full Privileges");
        EXPECT_EQ(r6.level, strict ? Level::Refuse : Level::Warning);
        // Dom0 is a SafeVM (the Control Domain must be one), so the backend
        // also runs in a SafeVM (R3).
        EXPECT_EQ(one(v, "R3", 0).level, strict ? Level::Refuse : Level::Warning);
        EXPECT_EQ(v.exit_status(), strict ? 2 : 0);
    }
}

TEST(Policy, R5UnrestrictableWorker) {
    struct Case {
        const char* cls;
        bool allow;
        Level want;
    } cases[] = {{"unsafe", false, Level::DeviceRefused},
                 {"unsafe", true, Level::Warning},
                 {"safe", true, Level::DeviceRefused},
                 {"safe", false, Level::DeviceRefused}};
    for (const auto& k : cases) {
        SCOPED_TRACE(std::string(k.cls) + (k.allow ? " allow" : ""));
        Config c = cfg(kDriverDomain + "[[domain]]\nid = 5\nclass = \"" + k.cls + "\"\nallow_unrestricted = " +
                       (k.allow ? "true" : "false") + "\n");
        HostFacts h = driver_domain();
        h.workers_restrictable = false;
        Verdicts v = evaluate(c, {guest5(Transport::Pci, true, true)}, h);
        const Verdict& r5 = one(v, "R5", 5);
        EXPECT_EQ(r5.section, "Privileges");
        EXPECT_EQ(r5.level, k.want);
        EXPECT_EQ(r5.device, "*");
        // A guest-wide refusal covers each of its devices.
        EXPECT_EQ(v.refusals(xen::DomId(5), "virtio/5/0").empty(), k.want != Level::DeviceRefused);
    }
}

TEST(Policy, R5SeccompOffCountsAsUnrestricted) {
    Config c = cfg("[daemon]\nseccomp = \"off\"\n" + kDriverDomain + "[[domain]]\nid = 5\n");
    Verdicts v = evaluate(c, {guest5(Transport::Mmio, true, false)}, driver_domain());
    EXPECT_EQ(one(v, "R5", 5).level, Level::DeviceRefused);
    EXPECT_NE(one(v, "R5", 5).message.find("seccomp"), std::string::npos);
    Config ok = cfg(kDriverDomain + "[[domain]]\nid = 5\n");
    EXPECT_EQ(one(evaluate(ok, {guest5(Transport::Mmio, true, false)}, driver_domain()), "R5", 5).level, Level::Ok);
}

TEST(Policy, XsmSiloBlocksADriverDomainOnly) {
    HostFacts h = driver_domain();
    h.xsm = xen::XsmMode::Silo;
    Verdicts v = evaluate(cfg(kDriverDomain), {}, h);
    EXPECT_EQ(one(v, "XSM").level, Level::Warning);
    EXPECT_NE(one(v, "XSM").message.find("SILO"), std::string::npos);

    HostFacts d0;
    d0.domid = 0;
    d0.is_control_domain = true;
    d0.xsm = xen::XsmMode::Silo;
    d0.xen_reachable = true;
    EXPECT_EQ(one(evaluate(cfg(""), {}, d0), "XSM").level, Level::Ok);
}

TEST(Policy, TargetOverEachGuest) {
    Config c = cfg(kDriverDomain);
    GuestFacts g5 = guest5(Transport::Mmio, true, false);
    GuestFacts g6 = g5;
    g6.domid = 6;
    g6.devices[0].key = "virtio/6/0";
    Verdicts v = evaluate(c, {g5, g6}, driver_domain(xen::DomId(5)));
    EXPECT_EQ(one(v, "TARGET", 5).level, Level::Ok);
    const Verdict& t6 = one(v, "TARGET", 6);
    EXPECT_EQ(t6.level, Level::Warning);
    EXPECT_EQ(t6.section, "VirtIO Privileges");
    EXPECT_NE(t6.message.find("its target is dom5"), std::string::npos) << t6.message;
    EXPECT_NE(t6.message.find("attach --backend-domain 1 --guest 6"), std::string::npos) << t6.message;

    HostFacts d0;
    d0.domid = 0;
    d0.is_control_domain = true;
    d0.xen_reachable = true;
    EXPECT_EQ(one(evaluate(cfg(""), {g6}, d0), "TARGET", 6).level, Level::Ok);
}

TEST(Policy, ConfiguredGuestsAreEvaluatedWithoutXenstore) {
    Config c = cfg(kDriverDomain +
                   "[[domain]]\nname = \"critical\"\nclass = \"safe\"\n"
                   "[[device]]\nguest = \"critical\"\ntype = \"blk\"\ntransport = \"pci\"\ngrants = false\n"
                   "[[device]]\nguest = \"critical\"\ntype = \"net\"\ntransport = \"mmio\"\n");
    Verdicts v = evaluate(c, {}, driver_domain());
    auto r1 = find(v, "R1");
    ASSERT_EQ(r1.size(), 2u);
    EXPECT_EQ(r1[0]->domain, "critical");
    EXPECT_EQ(r1[0]->device, "blk0");
    EXPECT_EQ(r1[0]->level, Level::Refuse);
    EXPECT_EQ(r1[1]->level, Level::Ok);
    auto r2 = find(v, "R2");
    ASSERT_EQ(r2.size(), 2u);
    EXPECT_EQ(r2[0]->level, Level::Ok) << "pci: non-blocking registers on by default";
    EXPECT_EQ(r2[1]->level, Level::Refuse) << "mmio: off by default, a SafeVM needs them";
    EXPECT_EQ(v.exit_status(), 2);
}

TEST(Policy, XenstoreFactsReplaceTheConfiguredGuest) {
    // The config says grants = false, but the running guest was found in
    // xenstore: its announced devices are what is evaluated, once.
    Config c = cfg(kDriverDomain + "[[domain]]\nid = 5\nname = \"guest1\"\n"
                                   "[[device]]\nguest = 5\ntype = \"blk\"\ngrants = false\n");
    Verdicts v = evaluate(c, {guest5(Transport::Mmio, true, false)}, driver_domain());
    auto r1 = find(v, "R1", 5);
    ASSERT_EQ(r1.size(), 1u);
    EXPECT_EQ(r1[0]->device_key, "virtio/5/0");
    EXPECT_EQ(r1[0]->level, Level::Ok);
}

TEST(Policy, DefaultClassAppliesToUnconfiguredGuests) {
    GuestFacts g = guest5(Transport::Mmio, true, false);
    Verdicts unsafe = evaluate(cfg(kDriverDomain), {g}, driver_domain());
    EXPECT_EQ(unsafe.exit_status(), 0);
    EXPECT_NE(one(unsafe, "R3", 5).message.find("default_class"), std::string::npos);
    Verdicts safe = evaluate(cfg("[daemon]\ndefault_class = \"safe\"\n" + kDriverDomain), {g}, driver_domain());
    EXPECT_EQ(one(safe, "R2", 5).level, Level::Refuse);
    EXPECT_EQ(safe.exit_status(), 2);
    // A class in the facts wins over the configuration.
    g.cls = VmClass::Unsafe;
    EXPECT_EQ(evaluate(cfg("[daemon]\ndefault_class = \"safe\"\n" + kDriverDomain), {g}, driver_domain())
                  .exit_status(),
              0);
}

TEST(Policy, GenericSlotIsNamedByItsKey) {
    GuestFacts g = guest5(Transport::Mmio, false, false);
    g.devices[0].type.reset();
    Verdicts v = evaluate(cfg(kDriverDomain), {g}, driver_domain());
    EXPECT_EQ(one(v, "R1", 5).device, "dev(virtio/5/0)");
    EXPECT_EQ(one(v, "R1", 5).level, Level::DeviceRefused);
}

TEST(Policy, TypeFromCompatible) {
    EXPECT_EQ(type_from_compatible("virtio,device1"), DeviceType::Net);
    EXPECT_EQ(type_from_compatible("virtio,device2"), DeviceType::Blk);
    EXPECT_EQ(type_from_compatible("virtio,device3"), DeviceType::Console);
    EXPECT_FALSE(type_from_compatible("virtio,device"));
    EXPECT_FALSE(type_from_compatible("virtio,device22"));
}

TEST(Policy, LevelNames) {
    EXPECT_STREQ(to_string(Level::Ok), "ok");
    EXPECT_STREQ(to_string(Level::Warning), "warning");
    EXPECT_STREQ(to_string(Level::DeviceRefused), "device-refused");
    EXPECT_STREQ(to_string(Level::Refuse), "error-refuse");
}

}  // namespace
}  // namespace xv::daemon
