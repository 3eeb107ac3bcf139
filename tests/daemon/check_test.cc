// SPDX-License-Identifier: GPL-2.0-only
// `check`: the xenstore discovery helpers it relies on, facts from
// announced devices, the table, the JSON shape and the exit statuses.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <unistd.h>

#include "check.h"
#include "discovery.h"
#include "fakes.h"

namespace xv::daemon {
namespace {

using testing::FakeHypervisor;
using testing::FakeXenStore;

Config cfg(const std::string& text) {
    auto r = parse_config(text, "test.toml");
    EXPECT_TRUE(r) << r.error().message;
    return r ? r.value() : Config{};
}

/// A temporary config file, removed at the end of the test.
struct TempConfig {
    std::string path;
    explicit TempConfig(const std::string& text) {
        char tmpl[] = "/tmp/xv-check-XXXXXX";
        int fd = mkstemp(tmpl);
        EXPECT_GE(fd, 0);
        close(fd);
        path = tmpl;
        std::ofstream(path) << text;
    }
    ~TempConfig() { std::filesystem::remove(path); }
};

TEST(Discovery, ParsesHexAndDecimalAsLibxlWritesThem) {
    // xen-facts §3.2: virtio writes base as "%#"PRIx64, 4.17 virtio_disk in decimal.
    EXPECT_EQ(parse_xs_uint("0x2000000"), 0x2000000u);
    EXPECT_EQ(parse_xs_uint("0X2000200"), 0x2000200u);
    EXPECT_EQ(parse_xs_uint("33554432"), 0x2000000u);
    EXPECT_EQ(parse_xs_uint("33"), 33u);
    EXPECT_EQ(parse_xs_uint("0"), 0u);
    EXPECT_EQ(parse_xs_uint("0xffffffffffffffff"), UINT64_MAX);
    EXPECT_FALSE(parse_xs_uint(""));
    EXPECT_FALSE(parse_xs_uint("0x"));
    EXPECT_FALSE(parse_xs_uint("-1"));
    EXPECT_FALSE(parse_xs_uint("+1"));
    EXPECT_FALSE(parse_xs_uint(" 1"));
    EXPECT_FALSE(parse_xs_uint("12a"));
    EXPECT_FALSE(parse_xs_uint("0x1g"));
    EXPECT_FALSE(parse_xs_uint("18446744073709551616"));
    EXPECT_FALSE(parse_xs_uint("1020", 1019));
    EXPECT_EQ(parse_xs_uint("1019", 1019), 1019u);
}

TEST(Discovery, BothLayoutsAreFound) {
    FakeHypervisor hv;
    hv.self = 0;
    hv.add_virtio(5, 0, "virtio,device2", "mmio", "1", "0x2000000", "33");
    hv.add_virtio_disk(5, 51712, "/images/g5.img", "33554944", "34");
    auto xs = hv.open_xenstore();
    ASSERT_TRUE(xs);
    ScanResult scan = scan_announced_devices(*xs.value(), 0);
    ASSERT_EQ(scan.devices.size(), 2u);
    EXPECT_TRUE(scan.errors.empty());
    EXPECT_EQ(scan.devices[0].base, 0x2000000u);
    EXPECT_EQ(scan.devices[0].irq, 33u);
    EXPECT_TRUE(scan.devices[0].grant_usage);
    EXPECT_EQ(scan.devices[1].base, 0x2000200u) << "decimal base of a 4.17 virtio_disk";
    EXPECT_EQ(scan.devices[1].irq, 34u);
    EXPECT_FALSE(scan.devices[1].grant_usage) << "no key, Dom0 backend: libxl's default is no grants";
}

TEST(Discovery, NonCanonicalNamesDoNotAliasADevice) {
    // Found by fuzz_discovery: "00" and "0" (or "05" and "5") parsed to the
    // same devid (domid) and the same device was listed twice.
    FakeHypervisor hv;
    hv.self = 0;
    hv.add_virtio(5, 0, "virtio,device2", "mmio", "1");
    const std::string be = "/local/domain/0/backend/virtio/";
    hv.store->set(be + "5/00/frontend-id", "5");
    hv.store->set(be + "05/0/frontend-id", "5");
    hv.store->set(be + "5/1/frontend-id", "6");  // and one that parses but is refused
    auto xs = hv.open_xenstore();
    ASSERT_TRUE(xs);
    ScanResult scan = scan_announced_devices(*xs.value(), 0);
    ASSERT_EQ(scan.devices.size(), 1u);
    EXPECT_EQ(scan.devices[0].backend_path, be + "5/0");
    ASSERT_EQ(scan.errors.size(), 3u);
    EXPECT_EQ(scan.errors.count(be + "05"), 1u);
    // Refusals name the guest, and the device when its name parsed (the
    // log line and the error node carry this message).
    EXPECT_EQ(scan.errors.at(be + "5/00").message.rfind("dom5: ", 0), 0u) << scan.errors.at(be + "5/00").message;
    EXPECT_EQ(scan.errors.at(be + "5/1").message.rfind("dom5 virtio device 1: ", 0), 0u)
        << scan.errors.at(be + "5/1").message;
    // The error node goes in the backend directory and, as xenbus backends
    // write it, under /local/domain/<be>/error/.
    ASSERT_TRUE(write_backend_error(*xs.value(), 0, be + "5/1", "bad").has_value());
    EXPECT_EQ(hv.store->nodes[be + "5/1/error"], "bad");
    EXPECT_EQ(hv.store->nodes["/local/domain/0/error/backend/virtio/5/1/error"], "bad");
}

TEST(Discovery, IrqMustBeAnArmSpi) {
    // xen-facts §3.3: set_irq_level takes SPIs only (32..1019); 0..15 are
    // SGIs and 16..31 PPIs.
    FakeHypervisor hv;
    hv.self = 0;
    hv.add_virtio(5, 0, "virtio,device2", "mmio", "1", "0x2000000", "0");
    hv.add_virtio(5, 1, "virtio,device2", "mmio", "1", "0x2000200", "31");
    hv.add_virtio(5, 2, "virtio,device2", "mmio", "1", "0x2000400", "32");
    hv.add_virtio(5, 3, "virtio,device2", "mmio", "1", "0x2000600", "1019");
    hv.add_virtio(5, 4, "virtio,device2", "mmio", "1", "0x2000800", "1020");
    auto xs = hv.open_xenstore();
    ASSERT_TRUE(xs);
    ScanResult scan = scan_announced_devices(*xs.value(), 0);
    ASSERT_EQ(scan.devices.size(), 2u);
    EXPECT_EQ(scan.devices[0].irq, 32u);
    EXPECT_EQ(scan.devices[1].irq, 1019u);
    const std::string be = "/local/domain/0/backend/virtio/5/";
    ASSERT_EQ(scan.errors.size(), 3u);
    for (const char* dev : {"0", "1"}) {
        const auto& msg = scan.errors.at(be + dev).message;
        EXPECT_NE(msg.find("dom5 virtio device " + std::string(dev) + ": "), std::string::npos) << msg;
        EXPECT_NE(msg.find(be + dev + "/irq"), std::string::npos) << msg;
        EXPECT_NE(msg.find("not an SPI"), std::string::npos) << msg;
    }
    EXPECT_NE(scan.errors.at(be + "4").message.find("32..1019"), std::string::npos);
}

TEST(Check, GuestsFromAnnouncedDevices) {
    FakeHypervisor hv;
    hv.self = 1;
    hv.name_domain(5, "guest1");
    hv.add_virtio(5, 0, "virtio,device2", "mmio", "1");
    hv.add_virtio(5, 1, "virtio,device1", "pci", "1", "0x2000200", "34");
    hv.add_virtio(5, 2, "virtio,device2", "mmio", "0", "0x2000400", "35");
    hv.add_virtio(5, 3, "virtio,device", "mmio", "1", "0x2000600", "36");
    hv.add_virtio_disk(7, 51712, "/images/g7.img", "33554432");
    Config c = cfg(
        "[[device]]\nguest = \"guest1\"\ntype = \"blk\"\nindex = 0\nnonblocking = true\n"
        "[[device]]\nguest = 7\ntype = \"blk\"\ngrants = true\n");
    auto xs = hv.open_xenstore();
    ASSERT_TRUE(xs);
    ScanResult scan = scan_announced_devices(*xs.value(), 1);
    ASSERT_EQ(scan.devices.size(), 5u);
    auto guests = guests_from_announced(scan.devices, c, xs.value().get());
    ASSERT_EQ(guests.size(), 2u);
    const GuestFacts& g5 = guests[0];
    EXPECT_EQ(g5.domid, xen::DomId(5));
    EXPECT_EQ(g5.name, "guest1");
    ASSERT_EQ(g5.devices.size(), 4u);
    EXPECT_EQ(g5.devices[0].name(), "blk0");
    EXPECT_TRUE(g5.devices[0].nonblocking) << "from [[device]] guest1 blk0";
    EXPECT_EQ(g5.devices[1].name(), "net0");
    EXPECT_EQ(g5.devices[1].transport, Transport::Pci);
    EXPECT_TRUE(g5.devices[1].nonblocking) << "pci default";
    EXPECT_EQ(g5.devices[2].name(), "blk1");
    EXPECT_FALSE(g5.devices[2].grant_usage);
    EXPECT_FALSE(g5.devices[2].nonblocking) << "mmio default";
    EXPECT_FALSE(g5.devices[3].type.has_value()) << "generic virtio,device slot";
    EXPECT_EQ(g5.devices[0].key, "virtio/5/0");
    EXPECT_EQ(g5.devices[0].xs_path, "/local/domain/1/backend/virtio/5/0");

    const GuestFacts& g7 = guests[1];
    ASSERT_EQ(g7.devices.size(), 1u);
    // Driver domain (self 1): libxl's default is grants; the key is absent.
    EXPECT_TRUE(g7.devices[0].grant_usage);
}

TEST(Check, GrantsFromConfigWhenXenstoreHasNoKey) {
    FakeHypervisor hv;
    hv.self = 0;  // Dom0 backend, 4.17 disk: no grant_usage key -> no grants
    hv.add_virtio_disk(7, 51712, "/images/g7.img", "33554432");
    hv.add_virtio(8, 0, "virtio,device2", "mmio", "0");
    auto xs = hv.open_xenstore();
    ASSERT_TRUE(xs);
    auto scan = scan_announced_devices(*xs.value(), 0);
    auto by_domid = [](const std::vector<GuestFacts>& gs, xen::DomId d) -> const DeviceFacts& {
        for (const auto& g : gs)
            if (g.domid == d) return g.devices.at(0);
        throw std::runtime_error("guest not found");
    };
    auto none = guests_from_announced(scan.devices, cfg(""), xs.value().get());
    ASSERT_EQ(none.size(), 2u);
    EXPECT_FALSE(by_domid(none, 7).grant_usage);
    // The operator states that the guest kernel forces grants.
    Config c = cfg("[[device]]\nguest = 7\ntype = \"blk\"\ngrants = true\n"
                   "[[device]]\nguest = 8\ntype = \"blk\"\ngrants = true\n");
    auto with = guests_from_announced(scan.devices, c, xs.value().get());
    EXPECT_TRUE(by_domid(with, 7).grant_usage);
    EXPECT_FALSE(by_domid(with, 8).grant_usage) << "an explicit grant_usage=0 in xenstore is not overridden";
    // grants = false always wins.
    Config off = cfg("[[device]]\nguest = 8\ntype = \"blk\"\ngrants = false\n");
    hv.add_virtio(8, 0, "virtio,device2", "mmio", "1");
    auto scan2 = scan_announced_devices(*xs.value(), 0);
    auto g = guests_from_announced(scan2.devices, off, xs.value().get());
    EXPECT_FALSE(by_domid(g, 8).grant_usage);
    EXPECT_TRUE(by_domid(guests_from_announced(scan2.devices, cfg(""), xs.value().get()), 8).grant_usage);
}

TEST(Check, HostFactsFromTheHypervisor) {
    FakeHypervisor hv;
    hv.self = 3;
    hv.target = 5;
    hv.xsm = xen::XsmMode::Silo;
    HostFacts h = host_facts(&hv);
    EXPECT_TRUE(h.xen_reachable);
    EXPECT_EQ(h.domid, xen::DomId(3));
    EXPECT_EQ(h.is_control_domain, false);
    EXPECT_EQ(h.target, xen::DomId(5));
    EXPECT_EQ(h.xsm, xen::XsmMode::Silo);
    HostFacts none = host_facts(nullptr);
    EXPECT_FALSE(none.xen_reachable);
    EXPECT_FALSE(none.domid);
}

TEST(Check, RefusesASafeVmWithoutGrantsFoundInXenstore) {
    FakeHypervisor hv;
    hv.self = 0;
    hv.add_virtio(5, 0, "virtio,device2", "pci", "0");
    Config c = cfg("[[domain]]\nid = 0\n[[domain]]\nid = 5\nclass = \"safe\"\n");
    CheckReport r = run_check(c, "test.toml", &hv);
    EXPECT_EQ(r.exit_status(), 2);
    ASSERT_EQ(r.guests.size(), 1u);
    bool r1 = false;
    for (const auto& v : r.verdicts.items)
        if (v.rule == "R1" && v.domid == xen::DomId(5)) {
            r1 = true;
            EXPECT_EQ(v.level, Level::Refuse);
            EXPECT_EQ(v.xs_path, "/local/domain/0/backend/virtio/5/0");
        }
    EXPECT_TRUE(r1);
}

TEST(Check, MalformedXenstoreDevicesAreReportedNotFatal) {
    FakeHypervisor hv;
    hv.self = 0;
    hv.add_virtio(5, 0, "virtio,device2", "mmio", "1", "0xzz");
    hv.add_virtio(5, 1, "virtio,device2", "mmio", "maybe", "0x2000200");
    hv.add_virtio(5, 2, "virtio,device2", "mmio", "1", "0x2000400");
    CheckReport r = run_check(cfg(""), "test.toml", &hv);
    ASSERT_EQ(r.xs_errors.size(), 2u);
    EXPECT_NE(r.xs_errors[0].second.find("base"), std::string::npos) << r.xs_errors[0].second;
    EXPECT_NE(r.xs_errors[1].second.find("grant_usage"), std::string::npos) << r.xs_errors[1].second;
    ASSERT_EQ(r.guests.size(), 1u);
    EXPECT_EQ(r.guests[0].devices.size(), 1u);
    std::string table = render_table(r);
    EXPECT_NE(table.find("xenstore: /local/domain/0/backend/virtio/5/0"), std::string::npos) << table;
}

TEST(Check, XenstoreUnreachable) {
    FakeHypervisor hv;
    hv.xenstore_fails = true;
    CheckReport r = run_check(cfg(""), "test.toml", &hv);
    ASSERT_EQ(r.xs_errors.size(), 1u);
    EXPECT_EQ(r.xs_errors[0].first, "xenstore");
    EXPECT_TRUE(r.guests.empty());
}

TEST(Check, JsonShape) {
    FakeHypervisor hv;
    hv.self = 1;
    hv.target = 5;
    hv.add_virtio(5, 0, "virtio,device2", "mmio", "0");
    hv.add_virtio(5, 1, "virtio,device2", "mmio", "junk");
    Config c = cfg("[[domain]]\nid = 1\nroles = [\"domu\"]\nclass = \"unsafe\"\n[[domain]]\nid = 5\nname = \"g\"\n");
    CheckReport r = run_check(c, "/etc/x.toml", &hv);
    auto j = nlohmann::json::parse(render_json(r));
    ASSERT_TRUE(j.is_object());
    EXPECT_EQ(j["config"], "/etc/x.toml");
    EXPECT_EQ(j["strict"], false);
    EXPECT_EQ(j["exit_status"], 0);
    EXPECT_EQ(j["would_start"], true);
    ASSERT_TRUE(j["host"].is_object());
    EXPECT_EQ(j["host"]["domid"], 1);
    EXPECT_EQ(j["host"]["control_domain"], false);
    EXPECT_EQ(j["host"]["xsm"], "dummy");
    EXPECT_EQ(j["host"]["target"], 5);
    EXPECT_EQ(j["host"]["xen_reachable"], true);
    ASSERT_TRUE(j["verdicts"].is_array());
    EXPECT_EQ(j["verdicts"].size(), r.verdicts.items.size());
    std::set<std::string> rules, levels;
    for (const auto& v : j["verdicts"]) {
        for (const char* k : {"rule", "section", "level", "domid", "domain", "device", "message"})
            EXPECT_TRUE(v.contains(k)) << k;
        EXPECT_TRUE(v["rule"].is_string());
        EXPECT_TRUE(v["section"].is_string());
        EXPECT_TRUE(v["domid"].is_number() || v["domid"].is_null());
        EXPECT_TRUE(v["device"].is_string() || v["device"].is_null());
        rules.insert(v["rule"]);
        levels.insert(v["level"]);
    }
    for (const char* rule : {"R1", "R2", "R3", "R4", "R5", "R6", "XSM", "TARGET"}) EXPECT_TRUE(rules.count(rule)) << rule;
    EXPECT_TRUE(levels.count("device-refused"));
    ASSERT_TRUE(j["xenstore_errors"].is_array());
    ASSERT_EQ(j["xenstore_errors"].size(), 1u);
    EXPECT_EQ(j["xenstore_errors"][0]["path"], "/local/domain/1/backend/virtio/5/1");
    const auto& s = j["summary"];
    EXPECT_EQ(s["ok"].get<std::size_t>() + s["warning"].get<std::size_t>() + s["device_refused"].get<std::size_t>() +
                  s["error_refuse"].get<std::size_t>(),
              r.verdicts.items.size());
    EXPECT_EQ(s["device_refused"], 1);
}

TEST(Check, JsonSurvivesHostileStrings) {
    FakeHypervisor hv;
    hv.self = 1;
    hv.name_domain(5, std::string("bad\xff\xfe name"));
    hv.add_virtio(5, 0, "virtio,device2", "mmio", "1");
    CheckReport r = run_check(cfg(""), "t", &hv);
    const std::string text = render_json(r);
    EXPECT_TRUE(nlohmann::json::accept(text)) << text;
    auto j = nlohmann::json::parse(text);
    EXPECT_EQ(j["verdicts"].size(), r.verdicts.items.size());
}

TEST(Check, TableHasOneLinePerVerdict) {
    Config c = cfg("[[domain]]\nname = \"g\"\nclass = \"safe\"\n[[device]]\nguest = \"g\"\ntype = \"net\"\n");
    CheckReport r = run_check(c, "cfg.toml", nullptr);
    std::string t = render_table(r);
    std::istringstream in(t);
    std::string line;
    std::size_t rows = 0;
    bool header = false;
    while (std::getline(in, line)) {
        if (line.rfind("RULE", 0) == 0) header = true;
        for (const char* rule : {"R1 ", "R2 ", "R3 ", "R4 ", "R5 ", "R6 ", "XSM ", "TARGET "})
            if (line.rfind(rule, 0) == 0) ++rows;
    }
    EXPECT_TRUE(header);
    EXPECT_EQ(rows, r.verdicts.items.size());
    EXPECT_NE(t.find("FFI: Synchronous Emulation"), std::string::npos);
    EXPECT_NE(t.find("result: would refuse to start"), std::string::npos) << t;
    auto lines = render_log_lines(r.verdicts);
    ASSERT_EQ(lines.size(), r.verdicts.items.size());
    EXPECT_EQ(lines[0].rfind("policy R4 ", 0), 0u) << lines[0];
    log_verdicts(r.verdicts);  // must not throw
}

TEST(Check, CommandExitStatuses) {
    std::ostringstream out, err;
    // 1: file missing.
    EXPECT_EQ(check_command("/nonexistent/xen-virtiod.toml", false, nullptr, out, err), 1);
    EXPECT_NE(err.str().find("/nonexistent/xen-virtiod.toml"), std::string::npos);

    // 1: unknown key, with file:line:key; --json also prints an error object.
    {
        TempConfig f("[daemon]\nstrict = false\n\n[[device]]\nguest = \"g\"\ntype = \"blk\"\nqueus = 2\n");
        std::ostringstream o, e;
        EXPECT_EQ(check_command(f.path, true, nullptr, o, e), 1);
        EXPECT_NE(e.str().find(f.path + ":7: [[device]] #1 key 'queus': unknown key"), std::string::npos) << e.str();
        auto j = nlohmann::json::parse(o.str());
        EXPECT_EQ(j["exit_status"], 1);
        EXPECT_NE(j["error"].get<std::string>().find("queus"), std::string::npos);
    }
    // 0: would start.
    {
        TempConfig f("[[domain]]\nname = \"g\"\nclass = \"unsafe\"\n[[device]]\nguest = \"g\"\ntype = \"blk\"\n");
        std::ostringstream o, e;
        EXPECT_EQ(check_command(f.path, false, nullptr, o, e), 0);
        EXPECT_NE(o.str().find("result: would start"), std::string::npos) << o.str();
    }
    // 2: would refuse (a SafeVM on mmio without the non-blocking registers).
    {
        TempConfig f("[[domain]]\nname = \"g\"\nclass = \"safe\"\n[[device]]\nguest = \"g\"\ntype = \"blk\"\n");
        std::ostringstream o, e;
        EXPECT_EQ(check_command(f.path, true, nullptr, o, e), 2);
        auto j = nlohmann::json::parse(o.str());
        EXPECT_EQ(j["exit_status"], 2);
        EXPECT_EQ(j["would_start"], false);
    }
}

}  // namespace
}  // namespace xv::daemon
