// SPDX-License-Identifier: GPL-2.0-only
// Configuration parsing: every key, the defaults, and each kind of error
// with file:line:key in its message.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "config.h"

namespace xv::daemon {
namespace {

constexpr const char* kFile = "/etc/xen-virtiod/xen-virtiod.toml";

Config parse_ok(const std::string& text) {
    auto r = parse_config(text, kFile);
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
    return r ? r.value() : Config{};
}

std::string parse_err(const std::string& text) {
    auto r = parse_config(text, kFile);
    EXPECT_FALSE(r.has_value()) << "parsed although it should not:\n" << text;
    return r ? std::string() : r.error().message;
}

TEST(Config, EmptyFileGivesDefaults) {
    Config c = parse_ok("");
    EXPECT_FALSE(c.daemon.strict);
    EXPECT_EQ(c.daemon.log_level, "info");
    EXPECT_EQ(c.daemon.workers, 2u);
    EXPECT_EQ(c.daemon.default_class, VmClass::Unsafe);
    EXPECT_EQ(c.daemon.seccomp, SeccompMode::Errno);
    EXPECT_EQ(c.daemon.ioreq_poll_us, 50u);  // adaptive, up to 50 us (configuration.md)
    EXPECT_EQ(c.daemon.ioreq_realtime_priority, 0u);
    EXPECT_EQ(c.daemon.worker_cgroups, WorkerCgroupMode::Auto);
    EXPECT_TRUE(c.domains.empty());
    EXPECT_TRUE(c.devices.empty());
    EXPECT_EQ(c.source, kFile);
}

TEST(Config, EveryKeyIsRead) {
    Config c = parse_ok(R"(
[daemon]
strict = true
log_level = "debug"
workers = 4
default_class = "safe"
seccomp = "kill"
ioreq_poll_us = 50
ioreq_realtime_priority = 20
worker_cgroups = "off"

[[domain]]
id = 0
roles = ["hardware", "control"]
class = "safe"

[[domain]]
name = "guest1"
id = 5
roles = ["domu"]
class = "unsafe"
allow_unrestricted = true

[[device]]
guest = "guest1"
type = "blk"
index = 1
transport = "pci"
grants = true
nonblocking = false
path = "/var/lib/xen/images/guest1.img"
readonly = true
discard = false
queues = 4

[[device]]
guest = 5
type = "net"
transport = "mmio"
nonblocking = true
tap = "vif-guest1"
mac = "52:54:00:12:34:56"
queues = 2
bridge = "xenbr0"
mtu = 9000
tx_poll_us = 0

[[device]]
guest = "guest1"
type = "console"
backend = "socket"
socket = "/run/xen-virtiod/g1.sock"

[[device]]
guest = "guest1"
type = "console"
index = 1
backend = "log"
log = "/var/log/xen-virtiod/g1.log"
)");
    EXPECT_TRUE(c.daemon.strict);
    EXPECT_EQ(c.daemon.log_level, "debug");
    EXPECT_EQ(c.daemon.workers, 4u);
    EXPECT_EQ(c.daemon.default_class, VmClass::Safe);
    EXPECT_EQ(c.daemon.seccomp, SeccompMode::Kill);
    EXPECT_EQ(c.daemon.ioreq_poll_us, 50u);
    EXPECT_EQ(c.daemon.ioreq_realtime_priority, 20u);
    EXPECT_EQ(c.daemon.worker_cgroups, WorkerCgroupMode::Off);

    ASSERT_EQ(c.domains.size(), 2u);
    EXPECT_EQ(c.domains[0].id, xen::DomId(0));
    EXPECT_TRUE(c.domains[0].roles.hardware && c.domains[0].roles.control && !c.domains[0].roles.domu);
    EXPECT_EQ(c.domains[0].cls, VmClass::Safe);
    EXPECT_EQ(c.domains[0].line, 12u);
    EXPECT_EQ(c.domains[1].name, "guest1");
    EXPECT_EQ(c.domains[1].id, xen::DomId(5));
    EXPECT_TRUE(c.domains[1].roles.domu);
    EXPECT_EQ(c.domains[1].cls, VmClass::Unsafe);
    EXPECT_TRUE(c.domains[1].allow_unrestricted);

    ASSERT_EQ(c.devices.size(), 4u);
    const auto& blk = c.devices[0];
    EXPECT_EQ(blk.guest_name, "guest1");
    EXPECT_EQ(blk.guest_id, xen::DomId(5)) << "name resolved through [[domain]]";
    EXPECT_EQ(blk.type, DeviceType::Blk);
    EXPECT_EQ(blk.index, 1u);
    EXPECT_EQ(blk.transport, Transport::Pci);
    EXPECT_TRUE(blk.grants);
    EXPECT_TRUE(blk.grants_explicit);
    EXPECT_FALSE(blk.nonblocking) << "explicit false wins over the pci default";
    EXPECT_EQ(blk.path, "/var/lib/xen/images/guest1.img");
    EXPECT_TRUE(blk.readonly);
    EXPECT_FALSE(blk.discard);
    EXPECT_EQ(blk.queues, 4u);
    EXPECT_EQ(blk.name(), "blk1");

    const auto& net = c.devices[1];
    EXPECT_EQ(net.guest_id, xen::DomId(5));
    EXPECT_EQ(net.guest_name, "guest1") << "domid resolved through [[domain]]";
    EXPECT_EQ(net.type, DeviceType::Net);
    EXPECT_EQ(net.transport, Transport::Mmio);
    EXPECT_TRUE(net.nonblocking);
    EXPECT_EQ(net.tap, "vif-guest1");
    ASSERT_TRUE(net.mac.has_value());
    EXPECT_EQ(format_mac(*net.mac), "52:54:00:12:34:56");
    EXPECT_EQ(net.queues, 2u);
    EXPECT_EQ(net.bridge, "xenbr0");
    EXPECT_EQ(net.mtu, 9000u);
    EXPECT_EQ(net.tx_poll_us, 0u);

    EXPECT_EQ(c.devices[2].console, ConsoleBackend::Socket);
    EXPECT_EQ(c.devices[2].socket, "/run/xen-virtiod/g1.sock");
    EXPECT_EQ(c.devices[3].console, ConsoleBackend::Log);
    EXPECT_EQ(c.devices[3].log, "/var/log/xen-virtiod/g1.log");
}

TEST(Config, DeviceDefaults) {
    Config c = parse_ok(R"(
[[device]]
guest = "g"
type = "blk"
[[device]]
guest = "g"
type = "net"
transport = "pci"
[[device]]
guest = "g"
type = "console"
backend = "socket"
[[device]]
guest = 7
type = "console"
index = 2
backend = "log"
)");
    ASSERT_EQ(c.devices.size(), 4u);
    const auto& b = c.devices[0];
    EXPECT_EQ(b.index, 0u);
    EXPECT_EQ(b.transport, Transport::Mmio);
    EXPECT_TRUE(b.grants);
    EXPECT_FALSE(b.grants_explicit);
    EXPECT_FALSE(b.nonblocking) << "mmio: off by default (the magic changes)";
    EXPECT_EQ(b.path, "");
    EXPECT_FALSE(b.readonly);
    EXPECT_TRUE(b.discard);
    EXPECT_EQ(b.queues, 1u);
    EXPECT_FALSE(b.guest_id.has_value());
    EXPECT_TRUE(c.devices[1].nonblocking) << "pci: on by default (a vendor capability)";
    EXPECT_EQ(c.devices[1].mtu, 1500u);
    EXPECT_EQ(c.devices[1].tx_poll_us, 50u);
    EXPECT_FALSE(c.devices[1].mac.has_value());
    EXPECT_EQ(c.devices[2].socket, "/run/xen-virtiod/g.console0.sock");
    EXPECT_EQ(c.devices[3].log, "/var/log/xen-virtiod/dom7.console2.log");
    EXPECT_EQ(c.devices[0].console, ConsoleBackend::Pty);
}

TEST(Config, ConsolePorts) {
    Config c = parse_ok(R"([[device]]
guest = "g"
type = "console"
ports = [
  { name = "org.example.agent", socket = "/run/xen-virtiod/agent.sock" },
  { name = "b", backend = "socket" },
]
[[device]]
guest = "g"
type = "console"
index = 1
[[device.ports]]
name = "x"
[[device]]
guest = "g"
type = "console"
index = 2
)");
    ASSERT_EQ(c.devices.size(), 3u);
    const auto& p = c.devices[0].console_ports;
    ASSERT_EQ(p.size(), 2u);
    EXPECT_EQ(p[0].name, "org.example.agent");
    EXPECT_EQ(p[0].socket, "/run/xen-virtiod/agent.sock");
    EXPECT_EQ(p[0].line, 5u);
    EXPECT_EQ(p[1].name, "b");
    EXPECT_EQ(p[1].socket, "/run/xen-virtiod/g.console0.b.sock");
    ASSERT_EQ(c.devices[1].console_ports.size(), 1u);
    EXPECT_EQ(c.devices[1].console_ports[0].socket, "/run/xen-virtiod/g.console1.x.sock");
    EXPECT_TRUE(c.devices[2].console_ports.empty());
}

TEST(Config, ConsolePortsAtMostFifteen) {
    std::string t = "[[device]]\nguest = \"g\"\ntype = \"console\"\nports = [";
    for (int i = 0; i < 16; ++i) t += "{ name = \"p" + std::to_string(i) + "\" },";
    t += "]\n";
    std::string e = parse_err(t);
    EXPECT_NE(e.find(std::string(kFile) + ":4: [[device]] #1 key 'ports': 16 ports, at most 15"), std::string::npos) << e;
}

TEST(Config, DomainRoleDefaults) {
    Config c = parse_ok("[[domain]]\nid = 0\n[[domain]]\nid = 3\n[[domain]]\nname = \"x\"\n");
    ASSERT_EQ(c.domains.size(), 3u);
    EXPECT_EQ(c.domains[0].roles.str(), "hardware,control");
    EXPECT_FALSE(c.domains[0].roles_explicit);
    EXPECT_EQ(c.domains[1].roles.str(), "domu");
    EXPECT_EQ(c.domains[2].roles.str(), "domu");
    EXPECT_FALSE(c.domains[1].cls.has_value());
}

TEST(Config, LookupByNameOrDomid) {
    Config c = parse_ok(R"(
[[domain]]
id = 0
[[domain]]
id = 5
name = "guest1"
class = "safe"
[[device]]
guest = "guest1"
type = "blk"
[[device]]
guest = 9
type = "net"
index = 3
)");
    ASSERT_NE(c.find_domain(xen::DomId(5)), nullptr);
    EXPECT_EQ(c.find_domain(xen::DomId(5)), c.find_domain("guest1"));
    EXPECT_EQ(c.find_domain("nope"), nullptr);
    EXPECT_EQ(c.find_domain(xen::DomId(6)), nullptr);
    EXPECT_EQ(c.find_guest(xen::DomId(5), ""), c.find_guest(std::nullopt, "guest1"));
    EXPECT_EQ(c.devices_of(xen::DomId(5), "").size(), 1u);
    EXPECT_EQ(c.devices_of(std::nullopt, "guest1").size(), 1u);
    EXPECT_EQ(c.devices_of(xen::DomId(9), "").size(), 1u);
    EXPECT_NE(c.find_device(xen::DomId(9), "", DeviceType::Net, 3), nullptr);
    EXPECT_EQ(c.find_device(xen::DomId(9), "", DeviceType::Net, 0), nullptr);
    EXPECT_EQ(c.class_of(xen::DomId(5), ""), VmClass::Safe);
    EXPECT_EQ(c.class_of(xen::DomId(0), ""), VmClass::Safe) << "a Control Domain without class is a SafeVM";
    EXPECT_EQ(c.class_of(xen::DomId(9), ""), VmClass::Unsafe) << "default_class";
    EXPECT_TRUE(c.class_configured(xen::DomId(5), ""));
    EXPECT_FALSE(c.class_configured(xen::DomId(9), ""));
}

TEST(Config, UnknownKeyNamesFileLineAndKey) {
    std::string e = parse_err(R"([[device]]
guest = "g"
type = "blk"

[[device]]
guest = "g"
type = "net"
queus = 2
)");
    EXPECT_EQ(e, std::string(kFile) + ":8: [[device]] #2 key 'queus': unknown key");
}

TEST(Config, UnknownKeysEverywhere) {
    std::string e = parse_err("[daemon]\nstrikt = true\n[[domain]]\nid = 1\nclas = \"safe\"\n[other]\nx = 1\n");
    EXPECT_NE(e.find(":2: [daemon] key 'strikt': unknown key"), std::string::npos) << e;
    EXPECT_NE(e.find(":5: [[domain]] #1 key 'clas': unknown key"), std::string::npos) << e;
    EXPECT_NE(e.find(":6: top level key 'other': unknown key"), std::string::npos) << e;
}

TEST(Config, WrongTypes) {
    std::string e = parse_err(R"([daemon]
strict = "yes"
workers = "2"
[[domain]]
id = "0"
roles = "hardware"
[[device]]
guest = true
type = "blk"
queues = 1.5
)");
    EXPECT_NE(e.find(":2: [daemon] key 'strict': expected a boolean, got string"), std::string::npos) << e;
    EXPECT_NE(e.find(":3: [daemon] key 'workers': expected an integer, got string"), std::string::npos) << e;
    EXPECT_NE(e.find(":5: [[domain]] #1 key 'id': expected an integer, got string"), std::string::npos) << e;
    EXPECT_NE(e.find(":6: [[domain]] #1 key 'roles': expected an array of strings, got string"), std::string::npos)
        << e;
    EXPECT_NE(e.find(":8: [[device]] #1 key 'guest': expected a domain name or domid, got boolean"),
              std::string::npos)
        << e;
    EXPECT_NE(e.find(":10: [[device]] #1 key 'queues': expected an integer, got float"), std::string::npos) << e;
}

struct BadValue {
    const char* text;
    const char* expect;  // substring, with the line
};

class ConfigBadValue : public ::testing::TestWithParam<BadValue> {};

TEST_P(ConfigBadValue, IsRejectedWithLineAndKey) {
    std::string e = parse_err(GetParam().text);
    EXPECT_NE(e.find(std::string(kFile) + GetParam().expect), std::string::npos) << e;
}

INSTANTIATE_TEST_SUITE_P(
    Values, ConfigBadValue,
    ::testing::Values(
        BadValue{"[daemon]\nlog_level = \"loud\"\n", ":2: [daemon] key 'log_level': 'loud' is not one of"},
        BadValue{"[daemon]\nworkers = 0\n", ":2: [daemon] key 'workers': value 0 out of range 1..64"},
        BadValue{"[daemon]\nseccomp = \"maybe\"\n", ":2: [daemon] key 'seccomp'"},
        BadValue{"[daemon]\nioreq_poll_us = 1001\n", ":2: [daemon] key 'ioreq_poll_us': value 1001 out of range 0..1000"},
        BadValue{"[daemon]\nioreq_poll_us = -1\n", ":2: [daemon] key 'ioreq_poll_us': value -1 out of range 0..1000"},
        BadValue{"[daemon]\nstrict = false\nioreq_poll_us = \"50us\"\n", ":3: [daemon] key 'ioreq_poll_us': expected an integer, got string"},
        BadValue{"[daemon]\nioreq_realtime_priority = 100\n", ":2: [daemon] key 'ioreq_realtime_priority': value 100 out of range 0..99"},
        BadValue{"[daemon]\nioreq_realtime_priority = -5\n", ":2: [daemon] key 'ioreq_realtime_priority': value -5 out of range 0..99"},
        BadValue{"[daemon]\nioreq_realtime_priority = true\n", ":2: [daemon] key 'ioreq_realtime_priority': expected an integer, got boolean"},
        BadValue{"[daemon]\ndefault_class = \"meh\"\n", ":2: [daemon] key 'default_class'"},
        BadValue{"[daemon]\nworker_cgroups = \"yes\"\n", ":2: [daemon] key 'worker_cgroups': 'yes' is not one of auto|off"},
        BadValue{"[daemon]\nworkers = 2\nworker_cgroups = true\n", ":3: [daemon] key 'worker_cgroups': expected a string, got boolean"},
        BadValue{"[[domain]]\nid = 32752\n", ":2: [[domain]] #1 key 'id': value 32752 out of range 0..32751"},
        BadValue{"[[domain]]\nid = -1\n", ":2: [[domain]] #1 key 'id': value -1 out of range"},
        BadValue{"[[domain]]\nid = 1\nroles = [\"root\"]\n", ":3: [[domain]] #1 key 'roles': 'root' is not one of"},
        BadValue{"[[domain]]\nid = 1\nroles = []\n", ":3: [[domain]] #1 key 'roles': empty"},
        BadValue{"[[domain]]\nid = 1\nroles = [\"domu\", \"domu\"]\n", ":3: [[domain]] #1 key 'roles': role 'domu' listed twice"},
        BadValue{"[[domain]]\nid = 1\nclass = \"critical\"\n", ":3: [[domain]] #1 key 'class': 'critical'"},
        BadValue{"[[domain]]\nroles = [\"domu\"]\n", ":1: [[domain]] #1 key 'id': missing"},
        BadValue{"[[domain]]\nid = 1\n[[domain]]\nid = 1\n", ":3: [[domain]] #2 key 'id': domid 1 already described at line 1"},
        BadValue{"[[domain]]\nname = \"a\"\n[[domain]]\nname = \"a\"\n", ":3: [[domain]] #2 key 'name': 'a' already"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"gpu\"\n", ":3: [[device]] #1 key 'type': 'gpu' is not one of blk|net|console"},
        BadValue{"[[device]]\nguest = \"g\"\n", ":1: [[device]] #1 key 'type': missing"},
        BadValue{"[[device]]\ntype = \"blk\"\n", ":1: [[device]] #1 key 'guest': missing"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"blk\"\ntransport = \"usb\"\n", ":4: [[device]] #1 key 'transport': 'usb' is not one of pci|mmio"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"blk\"\nqueues = 9\n", ":4: [[device]] #1 key 'queues': value 9 out of range 1..8"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"net\"\nqueues = 0\n", ":4: [[device]] #1 key 'queues': value 0 out of range 1..8"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"blk\"\npath = \"images/g.img\"\n", ":4: [[device]] #1 key 'path': 'images/g.img' is not an absolute path"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"net\"\nmac = \"52:54:00:12:34\"\n", ":4: [[device]] #1 key 'mac': '52:54:00:12:34' is not a MAC address"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"net\"\nmac = \"52-54-00-12-34-56\"\n", ":4: [[device]] #1 key 'mac': '52-54-00-12-34-56' is not a MAC"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"net\"\nmac = \"zz:54:00:12:34:56\"\n", ":4: [[device]] #1 key 'mac': 'zz:54:00:12:34:56' is not a MAC"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"net\"\nmac = \"01:00:5e:00:00:01\"\n", ":4: [[device]] #1 key 'mac': '01:00:5e:00:00:01' is a multicast"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"net\"\nmac = \"00:00:00:00:00:00\"\n", ":4: [[device]] #1 key 'mac': '00:00:00:00:00:00' is the all-zero"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"net\"\ntap = \"a/b\"\n", ":4: [[device]] #1 key 'tap': 'a/b' is not an interface name"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"net\"\nbridge = \"averyveryverylongbridge\"\n", ":4: [[device]] #1 key 'bridge': 'averyveryverylongbridge' is not an interface name"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"net\"\nmtu = 20\n", ":4: [[device]] #1 key 'mtu': value 20 out of range 68..65535"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"net\"\ntx_poll_us = 1001\n", ":4: [[device]] #1 key 'tx_poll_us': value 1001 out of range 0..1000"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"net\"\ntx_poll_us = -1\n", ":4: [[device]] #1 key 'tx_poll_us': value -1 out of range 0..1000"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"blk\"\ntx_poll_us = 10\n", ":4: [[device]] #1 key 'tx_poll_us'"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nbackend = \"tty\"\n", ":4: [[device]] #1 key 'backend': 'tty' is not one of pty|socket|log"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nsocket = \"/run/x.sock\"\n", ":4: [[device]] #1 key 'socket': only applies with backend = \"socket\""},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nbackend = \"socket\"\nsocket = \"/run/xen-virtiod/this-socket-path-is-much-longer-than-a-unix-socket-address-can-hold-in-sun-path-really.sock\"\n", ":5: [[device]] #1 key 'socket': path too long"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"blk\"\ntap = \"t0\"\n", ":4: [[device]] #1 key 'tap': does not apply to type blk"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"net\"\npath = \"/x\"\n", ":4: [[device]] #1 key 'path': does not apply to type net"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nports = \"x\"\n", ":4: [[device]] #1 key 'ports': expected an array of tables"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nports = [ 3 ]\n", ":4: [[device]] #1 key 'ports[1]': expected a table, got integer"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nports = [ { socket = \"/run/a.sock\" } ]\n", ":4: [[device]] #1 key 'ports[1].name': missing"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nports = [ { name = \"a/b\" } ]\n", ":4: [[device]] #1 key 'ports[1].name': 'a/b' contains '/'"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nports = [ { name = \"\" } ]\n", ":4: [[device]] #1 key 'ports[1].name': '' is empty"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nports = [ { name = \"a\", colour = 1 } ]\n", ":4: [[device]] #1 key 'ports[1].colour': unknown key"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nports = [ { name = \"a\", backend = \"pty\" } ]\n", ":4: [[device]] #1 key 'ports[1].backend': 'pty' is not one of socket"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nports = [ { name = \"a\", socket = \"run/a.sock\" } ]\n", ":4: [[device]] #1 key 'ports[1].socket': 'run/a.sock' is not an absolute path"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nports = [\n  { name = \"a\" },\n  { name = \"a\" },\n]\n", ":6: [[device]] #1 key 'ports[2].name': 'a' already used at line 5"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nbackend = \"socket\"\nsocket = \"/run/a.sock\"\nports = [ { name = \"a\", socket = \"/run/a.sock\" } ]\n", ":6: [[device]] #1 key 'ports[1].socket': /run/a.sock already used at line 1"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nports = [ { name = \"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn\" } ]\n", ":4: [[device]] #1 key 'ports[1].socket': the default"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"blk\"\nports = []\n", ":4: [[device]] #1 key 'ports': does not apply to type blk"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"console\"\nqueues = 2\n", ":4: [[device]] #1 key 'queues': does not apply to type console"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"blk\"\nindex = 32\n", ":4: [[device]] #1 key 'index': value 32 out of range 0..31"},
        BadValue{"[[device]]\nguest = 0\ntype = \"blk\"\n", ":2: [[device]] #1 key 'guest': value 0 out of range"},
        BadValue{"[[device]]\nguest = \"\"\ntype = \"blk\"\n", ":2: [[device]] #1 key 'guest': '' is not a domain name"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"blk\"\ngrants = 1\n", ":4: [[device]] #1 key 'grants': expected a boolean, got integer"},
        BadValue{"[[device]]\nguest = \"g\"\ntype = \"blk\"\n\n[[device]]\nguest = \"g\"\ntype = \"blk\"\n", ":5: [[device]] #2 key 'index': duplicate device (g, blk, 0), first at line 1"},
        BadValue{"[[domain]]\nid = 4\nname = \"g\"\n[[device]]\nguest = 4\ntype = \"net\"\n[[device]]\nguest = \"g\"\ntype = \"net\"\n", ":7: [[device]] #2 key 'index': duplicate device (dom4, net, 0), first at line 4"},
        BadValue{"[device]\nguest = \"g\"\n", ":1: [[device]]: must be an array of tables"},
        BadValue{"daemon = 3\n", ":1: [daemon]: must be a table"}));

TEST(Config, SyntaxErrorNamesLineAndColumn) {
    std::string e = parse_err("[daemon]\nstrict = tru\n");
    EXPECT_EQ(e.rfind(std::string(kFile) + ":2:", 0), 0u) << e;
}

TEST(Config, AllErrorsAreReported) {
    std::string e = parse_err("[daemon]\nworkers = 0\nlog_level = \"x\"\n");
    EXPECT_NE(e.find(":2:"), std::string::npos);
    EXPECT_NE(e.find(":3:"), std::string::npos);
    EXPECT_NE(e.find('\n'), std::string::npos);
}

TEST(Config, MacParsing) {
    auto m = parse_mac("52:54:00:AB:cd:Ef");
    ASSERT_TRUE(m);
    EXPECT_EQ(format_mac(*m), "52:54:00:ab:cd:ef");
    EXPECT_FALSE(parse_mac("52:54:00:ab:cd:ef:"));
    EXPECT_FALSE(parse_mac("5254.00ab.cdef"));
    EXPECT_FALSE(parse_mac(""));
}

TEST(Config, LoadFromFile) {
    char tmpl[] = "/tmp/xv-config-XXXXXX";
    int fd = mkstemp(tmpl);
    ASSERT_GE(fd, 0);
    close(fd);
    {
        std::ofstream f(tmpl);
        f << "[daemon]\nworkers = 3\n[[device]]\nguest = \"g\"\ntype = \"blk\"\nbogus = 1\n";
    }
    auto r = load_config(tmpl);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message, std::string(tmpl) + ":6: [[device]] #1 key 'bogus': unknown key");
    {
        std::ofstream f(tmpl);
        f << "[daemon]\nworkers = 3\n";
    }
    auto r2 = load_config(tmpl);
    ASSERT_TRUE(r2) << r2.error().message;
    EXPECT_EQ(r2->daemon.workers, 3u);
    EXPECT_EQ(r2->source, tmpl);
    std::filesystem::remove(tmpl);
    auto r3 = load_config(tmpl);
    ASSERT_FALSE(r3);
    EXPECT_EQ(r3.error().code, std::errc::no_such_file_or_directory);
    EXPECT_NE(r3.error().message.find(tmpl), std::string::npos);
}

TEST(Config, ExampleFileParses) {
    const char* root = std::getenv("XV_SOURCE_ROOT");
    if (!root) GTEST_SKIP() << "XV_SOURCE_ROOT not set (run through meson test)";
    auto r = load_config(std::filesystem::path(root) / "systemd/xen-virtiod.toml.example");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_FALSE(r->domains.empty());
    EXPECT_FALSE(r->devices.empty());
}

}  // namespace
}  // namespace xv::daemon
