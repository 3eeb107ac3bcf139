// SPDX-License-Identifier: GPL-2.0-only
// The safety policy end to end (issue 5: "each rule, each verdict, each
// exit code, for SafeVM and UnsafeVM guests on mmio and pci, with and
// without grants and the non-blocking registers"), on xen/sim: a guest is
// created and its device announced as libxl writes it (mmio) or configured
// (pci); then
//   - `check` (check_command, table and --json) against the simulator,
//   - the daemon's start (GuestManager::start, what `serve` runs; serve
//     exits 2 exactly when the verdicts refuse the start),
//   - what is then served: the device, or its xenstore error node, or
//     nothing at all and no ioreq server,
// must all agree with the rule table of safety-policy.md. The pure policy
// function has its own matrix in tests/daemon/policy_test.cc; this one
// covers what lies between: facts from xenstore and configuration, domid
// and device matching (pci devices too), exit statuses and serving.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <fstream>
#include <sstream>

#include "check.h"
#include "serve.h"
#include "sim_host.h"

namespace xv::daemon {
namespace {

using namespace testing;

/// A config file for check_command.
struct ConfigFile {
    explicit ConfigFile(const std::string& text) {
        path = std::filesystem::temp_directory_path() /
               ("xv-policy-e2e-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".toml");
        std::ofstream(path) << text;
    }
    ~ConfigFile() {
        std::error_code ec;
        std::filesystem::remove(path, ec);
    }
    std::filesystem::path path;
    static inline int counter = 0;
};

struct CheckOut {
    int status = -1;
    std::string table;
    nlohmann::json json;
};

CheckOut run_check_on(const std::string& config_text, xen::Hypervisor& hv) {
    ConfigFile f(config_text);
    CheckOut c;
    std::ostringstream o1, e1, o2, e2;
    c.status = check_command(f.path.string(), false, &hv, o1, e1);
    c.table = o1.str();
    const int js = check_command(f.path.string(), true, &hv, o2, e2);
    EXPECT_EQ(js, c.status) << "--json and the table disagree on the exit status";
    c.json = nlohmann::json::parse(o2.str(), nullptr, false);
    return c;
}

/// The JSON verdicts of `rule` for `domid` (any domid when negative).
std::vector<nlohmann::json> verdicts_of(const nlohmann::json& j, const std::string& rule, long domid = -1) {
    std::vector<nlohmann::json> out;
    if (!j.is_object() || !j.contains("verdicts")) return out;
    for (const auto& v : j["verdicts"])
        if (v["rule"] == rule && (domid < 0 || (v["domid"].is_number() && v["domid"].get<long>() == domid)))
            out.push_back(v);
    return out;
}

/// The level of the one verdict of `rule` for `domid` on `device`.
std::string level_of(const nlohmann::json& j, const std::string& rule, long domid, const std::string& device = "") {
    std::string level;
    int n = 0;
    for (const auto& v : verdicts_of(j, rule, domid)) {
        if (!device.empty() && !(v["device"].is_string() && v["device"] == device)) continue;
        level = v["level"].get<std::string>();
        ++n;
    }
    EXPECT_EQ(n, 1) << rule << " dom" << domid << " " << device << ": " << j.dump();
    return level;
}

struct Case {
    const char* cls;  ///< "safe" | "unsafe"
    bool pci;
    bool grants;
    bool nonblocking;
};

std::string case_name(const ::testing::TestParamInfo<Case>& i) {
    return std::string(i.param.cls) + (i.param.pci ? "_pci" : "_mmio") + (i.param.grants ? "_grants" : "_nogrants") +
           (i.param.nonblocking ? "_nb" : "_sync");
}

class PolicyE2E : public ::testing::TestWithParam<Case> {};

// Guest rules R1, R2, R3 for blk0 of g1; a console with grants and the
// non-blocking registers beside it, which every rule accepts.
TEST_P(PolicyE2E, CheckStartAndServingAgreeWithTheRules) {
    const Case k = GetParam();
    const bool safe = std::string(k.cls) == "safe";
    TempImage img(4 << 20);
    const std::string blk_extra = std::string("transport = \"") + (k.pci ? "pci" : "mmio") + "\"\n" +
                                  (k.pci ? std::string("grants = ") + (k.grants ? "true" : "false") + "\n" : "") +
                                  "nonblocking = " + (k.nonblocking ? "true" : "false") + "\n";
    const std::string text = domains_toml({{"g1", k.cls}}) + blk_toml("g1", img.path.string(), blk_extra) +
                             "\n[[device]]\nguest = \"g1\"\ntype = \"console\"\nnonblocking = true\n";
    Host h(text);
    auto dom = create_guest(h, "g1");
    ASSERT_TRUE(dom.has_value());
    // libxl announces mmio devices; the blk device is slot 0 (when on
    // mmio), the console the next slot.
    unsigned slot = 0;
    if (!k.pci) {
        ASSERT_TRUE(h.sim->add_virtio_device(spec(*dom, slot++, "virtio,device2", k.grants)).has_value());
    }
    const unsigned console_slot = slot;
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*dom, console_slot, "virtio,device3")).has_value());

    // What the rules say (safety-policy.md).
    const std::string want_r1 = k.grants ? "ok" : safe ? "error-refuse" : "device-refused";
    const std::string want_r2 = safe && !k.nonblocking ? "error-refuse" : "ok";
    const std::string want_r3 = safe ? "warning" : "ok";
    const bool refuse = safe && (!k.grants || !k.nonblocking);
    const int want_exit = refuse ? kExitPolicy : kExitOk;

    // check, against the simulator.
    CheckOut c = run_check_on(text, *h.sim);
    ASSERT_TRUE(c.json.is_object()) << "check --json printed no JSON object";
    EXPECT_EQ(c.status, want_exit) << c.table;
    EXPECT_EQ(c.json["exit_status"], want_exit);
    EXPECT_EQ(c.json["would_start"], !refuse);
    EXPECT_EQ(level_of(c.json, "R1", *dom, "blk0"), want_r1);
    EXPECT_EQ(level_of(c.json, "R2", *dom, "blk0"), want_r2);
    EXPECT_EQ(level_of(c.json, "R3", *dom), want_r3);
    EXPECT_EQ(level_of(c.json, "R1", *dom, "console0"), "ok");
    // The device's verdict names the device where it is configured or announced.
    for (const auto& v : verdicts_of(c.json, "R1", *dom)) {
        if (v["device"] == "blk0") {
            EXPECT_NE(v["domain"].get<std::string>().find("g1"), std::string::npos) << v.dump();
        }
    }
    EXPECT_NE(c.table.find(refuse ? "would refuse" : "would start"), std::string::npos) << c.table;
    EXPECT_NE(c.table.find("R1"), std::string::npos);

    // The daemon's start: the same verdicts, the same exit status.
    auto v = h.start();
    ASSERT_TRUE(v.has_value()) << v.error().describe();
    EXPECT_EQ(v.value().refuses_start() ? kExitPolicy : kExitOk, want_exit);
    EXPECT_EQ(v.value().exit_status(), c.status);
    if (refuse) {
        EXPECT_TRUE(h.sessions().empty()) << "nothing is served when the start is refused";
        EXPECT_EQ(h.sim->resources().ioreq_servers, 0u);
        EXPECT_EQ(h.sim->resources().mapped_grant_pages, 0u);
        return;
    }
    ASSERT_EQ(h.sessions().size(), 1u);
    auto s = h.sessions()[0];
    EXPECT_EQ(s->domid(), *dom);
    EXPECT_NE(s->device("console0"), nullptr) << "the console is served whatever happens to blk0";
    auto& xs = h.sim->toolstack_store();
    EXPECT_TRUE(h.eventually([&] {
        auto st = xs.read(be_path(*dom, console_slot) + "/state");
        return st && st.value() == "2";
    }));
    if (k.grants) {
        EXPECT_NE(s->device("blk0"), nullptr) << "blk0 is served";
        if (k.pci) {
            EXPECT_NE(s->pci_host(), nullptr) << "blk0 is behind the PCI host";
        } else {
            EXPECT_FALSE(xs.read(be_path(*dom, 0) + "/error").has_value());
        }
    } else {
        // UnsafeVM without grants: that device only is refused (R1).
        EXPECT_EQ(s->device("blk0"), nullptr) << "blk0 must not be served without grants";
        EXPECT_EQ(s->pci_host(), nullptr);
        if (!k.pci) {
            auto err = xs.read(be_path(*dom, 0) + "/error");
            ASSERT_TRUE(err.has_value()) << "no error node for the refused device";
            EXPECT_NE(err.value().find("R1"), std::string::npos) << err.value();
        }
    }
}

INSTANTIATE_TEST_SUITE_P(AllCombinations, PolicyE2E,
                         ::testing::ValuesIn([] {
                             std::vector<Case> v;
                             for (const char* c : {"safe", "unsafe"})
                                 for (bool pci : {false, true})
                                     for (bool g : {true, false})
                                         for (bool nb : {true, false}) v.push_back({c, pci, g, nb});
                             return v;
                         }()),
                         case_name);

// Host and guest-wide rules (R3 host side, R4, R5, R6) and strict mode.
struct HostCase {
    const char* name;
    std::string config;  ///< after the domains and the device
    const char* dom0_class;
    const char* guest_class;
    const char* guest_extra;  ///< more keys of g1's [[domain]]
    const char* rule;
    bool guest_rule;     ///< the verdict names the guest (else the host)
    const char* level;
    int exit;
    bool served;         ///< g1's blk0 served after start
};

TEST(PolicyE2EHost, RulesR3R4R5R6AndStrict) {
    const HostCase cases[] = {
        {"R6 warning: the daemon runs in the Control Domain", "", "safe", "unsafe", "", "R6", false, "warning", 0, true},
        {"R6 strict: refuse", "[daemon]\nstrict = true\n", "safe", "unsafe", "", "R6", false, "error-refuse", 2, false},
        {"R3 host side: the backend runs in a SafeVM (dom0)", "", "safe", "unsafe", "", "R3", false, "warning", 0, true},
        {"R4: an UnsafeVM Control Domain", "", "unsafe", "unsafe", "", "R4", false, "error-refuse", 2, false},
        {"R5: seccomp off, UnsafeVM: guest refused", "[daemon]\nseccomp = \"off\"\n", "safe", "unsafe", "", "R5",
         true, "device-refused", 0, false},
        {"R5: seccomp off, allow_unrestricted UnsafeVM: warning", "[daemon]\nseccomp = \"off\"\n", "safe", "unsafe",
         "allow_unrestricted = true\n", "R5", true, "warning", 0, true},
        {"R5: seccomp off, SafeVM: guest refused", "[daemon]\nseccomp = \"off\"\n", "safe", "safe",
         "allow_unrestricted = true\n", "R5", true, "device-refused", 0, false},
        {"R5: all restricted", "", "safe", "unsafe", "", "R5", true, "ok", 0, true},
    };
    for (const auto& k : cases) {
        SCOPED_TRACE(k.name);
        TempImage img(4 << 20);
        std::string doms = std::string("[[domain]]\nid = 0\nroles = [\"hardware\", \"control\"]\nclass = \"") +
                           k.dom0_class + "\"\n\n[[domain]]\nname = \"g1\"\nroles = [\"domu\"]\nclass = \"" +
                           k.guest_class + "\"\n" + k.guest_extra;
        const std::string text = k.config + doms + blk_toml("g1", img.path.string(), "nonblocking = true\n");
        Host h(text);
        ASSERT_TRUE(h.config_error.empty()) << h.config_error;
        auto dom = create_guest(h, "g1");
        ASSERT_TRUE(dom.has_value());
        ASSERT_TRUE(h.sim->add_virtio_device(spec(*dom, 0, "virtio,device2")).has_value());
        CheckOut c = run_check_on(text, *h.sim);
        ASSERT_TRUE(c.json.is_object());
        EXPECT_EQ(c.status, k.exit) << c.table;
        bool found = false;
        for (const auto& v : verdicts_of(c.json, k.rule)) {
            const bool names_guest = v["domid"].is_number() && v["domid"].get<long>() == long(*dom);
            if (names_guest != k.guest_rule) continue;
            found |= v["level"] == k.level;
        }
        EXPECT_TRUE(found) << k.rule << " " << k.level << " not in " << c.json["verdicts"].dump();
        auto v = h.start();
        ASSERT_TRUE(v.has_value()) << v.error().describe();
        EXPECT_EQ(v.value().exit_status(), k.exit);
        if (k.exit != 0) {
            EXPECT_TRUE(h.sessions().empty());
            EXPECT_EQ(h.sim->resources().ioreq_servers, 0u);
            continue;
        }
        auto& xs = h.sim->toolstack_store();
        if (k.served) {
            ASSERT_EQ(h.sessions().size(), 1u);
            EXPECT_TRUE(h.eventually([&] {
                auto st = xs.read(be_path(*dom, 0) + "/state");
                return st && st.value() == "2";
            }));
        } else {
            EXPECT_TRUE(h.sessions().empty()) << "the refused guest is not served";
            auto err = xs.read(be_path(*dom, 0) + "/error");
            ASSERT_TRUE(err.has_value()) << "the refused guest's device has no error node";
            EXPECT_NE(err.value().find(k.rule), std::string::npos) << err.value();
            EXPECT_EQ(h.sim->resources().ioreq_servers, 0u);
        }
    }
}

}  // namespace
}  // namespace xv::daemon
