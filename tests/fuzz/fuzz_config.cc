// SPDX-License-Identifier: GPL-2.0-only
// Fuzz target: the TOML configuration parser (daemon/config.cc).
//
// Input: first byte picks the mode.
//   raw:       the rest is the file text (seeds: the example config).
//   generated: a document assembled from the real sections and keys with
//              mostly well-typed values, so the per-key validation runs.
// Oracle: parse_config() never crashes; an accepted config respects every
// documented bound; an error names the source; queries on the result work.
#include <string>

#include "config.h"
#include "fuzz_common.h"

namespace {

using namespace xv::daemon;
using xv::fuzz::one_in;
using xv::fuzz::pick;

constexpr const char* kSource = "/etc/xen-virtiod/xen-virtiod.toml";

std::string quoted(FuzzedDataProvider& in, std::initializer_list<const char*> good) {
    if (one_in(in, 8)) {
        std::string s = in.ConsumeRandomLengthString(40);
        std::string q = "\"";
        for (char c : s) {
            if (c == '"' || c == '\\') q += '\\';
            if (c == '\n') q += "\\n";
            else q += c;
        }
        return q + "\"";
    }
    return std::string("\"") + pick(in, good) + "\"";
}

std::string integer(FuzzedDataProvider& in, long lo, long hi) {
    if (one_in(in, 6)) return std::to_string(in.ConsumeIntegral<std::int64_t>());
    return std::to_string(in.ConsumeIntegralInRange<long>(lo - 1, hi + 1));
}

std::string boolean(FuzzedDataProvider& in) { return in.ConsumeBool() ? "true" : "false"; }

/// A value of the wrong TOML type, now and then.
std::string wrong_type(FuzzedDataProvider& in) {
    return pick<const char*>(in, {"1", "\"x\"", "true", "[1, 2]", "{ a = 1 }", "1.5", "1979-05-27", "[]"});
}

std::string daemon_line(FuzzedDataProvider& in) {
    std::string key = pick<const char*>(in, {"strict", "log_level", "workers", "default_class", "seccomp", "bogus"});
    std::string v;
    if (one_in(in, 10)) v = wrong_type(in);
    else if (key == "strict") v = boolean(in);
    else if (key == "log_level") v = quoted(in, {"error", "warn", "info", "debug", "trace", "loud"});
    else if (key == "workers") v = integer(in, 1, 64);
    else if (key == "default_class") v = quoted(in, {"safe", "unsafe", "maybe"});
    else if (key == "seccomp") v = quoted(in, {"errno", "kill", "off", "trap"});
    else v = integer(in, 0, 1);
    return key + " = " + v + "\n";
}

std::string domain_line(FuzzedDataProvider& in) {
    std::string key = pick<const char*>(in, {"id", "name", "roles", "class", "allow_unrestricted", "rolez"});
    std::string v;
    if (one_in(in, 10)) v = wrong_type(in);
    else if (key == "id") v = integer(in, 0, 0x7ff0);
    else if (key == "name") v = quoted(in, {"guest1", "critical", "Domain-0", "", "g"});
    else if (key == "roles") {
        v = "[";
        unsigned n = in.ConsumeIntegralInRange(0, 3);
        for (unsigned i = 0; i < n; ++i) v += (i ? ", " : "") + quoted(in, {"hardware", "control", "domu", "root"});
        v += "]";
    } else if (key == "class") v = quoted(in, {"safe", "unsafe", "x"});
    else v = boolean(in);
    return key + " = " + v + "\n";
}

std::string device_line(FuzzedDataProvider& in) {
    std::string key = pick<const char*>(in, {"guest", "type", "index", "transport", "grants", "nonblocking", "path",
                                             "readonly", "discard", "queues", "tap", "mac", "bridge", "mtu",
                                             "backend", "socket", "log", "queus"});
    std::string v;
    if (one_in(in, 10)) v = wrong_type(in);
    else if (key == "guest") v = in.ConsumeBool() ? integer(in, 0, 0x7ff0) : quoted(in, {"guest1", "critical", "nobody"});
    else if (key == "type") v = quoted(in, {"blk", "net", "console", "gpu"});
    else if (key == "index") v = integer(in, 0, 31);
    else if (key == "transport") v = quoted(in, {"pci", "mmio", "ccw"});
    else if (key == "grants" || key == "nonblocking" || key == "readonly" || key == "discard") v = boolean(in);
    else if (key == "path" || key == "socket" || key == "log") v = quoted(in, {"/var/lib/a.img", "/run/x.sock", "rel", ""});
    else if (key == "queues") v = integer(in, 1, 8);
    else if (key == "tap") v = quoted(in, {"vif1", "", "a-very-long-interface-name", "bad/name"});
    else if (key == "mac") v = quoted(in, {"52:54:00:12:34:56", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "52:54:00:12:34", "zz:54:00:12:34:56"});
    else if (key == "bridge") v = quoted(in, {"xenbr0", ""});
    else if (key == "mtu") v = integer(in, 68, 65535);
    else if (key == "backend") v = quoted(in, {"pty", "socket", "log", "file"});
    else v = integer(in, 1, 2);
    return key + " = " + v + "\n";
}

std::string generate(FuzzedDataProvider& in) {
    std::string text;
    unsigned tables = in.ConsumeIntegralInRange(0, 8);
    for (unsigned t = 0; t < tables; ++t) {
        int kind = in.ConsumeIntegralInRange(0, 3);
        if (kind == 0) text += "[daemon]\n";
        else if (kind == 1) text += "[[domain]]\n";
        else if (kind == 2) text += "[[device]]\n";
        else text += pick<const char*>(in, {"[daemon.x]\n", "[[daemon]]\n", "[other]\n", "[domain]\n"});
        unsigned lines = in.ConsumeIntegralInRange(0, 10);
        for (unsigned l = 0; l < lines; ++l) {
            if (kind == 0) text += daemon_line(in);
            else if (kind == 1) text += domain_line(in);
            else text += device_line(in);
        }
    }
    return text;
}

void check(const Config& c) {
    FUZZ_CHECK(c.daemon.workers >= 1 && c.daemon.workers <= 64, "workers %u", c.daemon.workers);
    for (const auto& d : c.devices) {
        FUZZ_CHECK(d.index <= 31, "index %u", d.index);
        FUZZ_CHECK(d.queues >= 1 && d.queues <= 8, "queues %u", d.queues);
        FUZZ_CHECK(d.mtu >= 68 && d.mtu <= 65535, "mtu %u", d.mtu);
        FUZZ_CHECK(d.guest_id || !d.guest_name.empty(), "device without a guest");
        // Queries the daemon makes with each device.
        (void)c.find_device(d.guest_id, d.guest_name, d.type, d.index);
        (void)c.devices_of(d.guest_id, d.guest_name);
        (void)c.class_of(d.guest_id, d.guest_name);
        (void)d.label();
        (void)d.name();
    }
    for (const auto& d : c.domains) {
        (void)d.label();
        (void)d.roles.str();
        if (d.id) (void)c.find_domain(*d.id);
        if (!d.name.empty()) FUZZ_CHECK(c.find_domain(std::string_view(d.name)) != nullptr, "lost domain %s", d.name.c_str());
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    xv::fuzz::quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider in(data, size);
    std::string text;
    if (in.ConsumeBool()) text = generate(in);
    else text = in.ConsumeRemainingBytesAsString();
    auto r = parse_config(text, kSource);
    if (r) check(r.value());
    else  // every error names the file (config.h)
        FUZZ_CHECK(r.error().message.rfind(kSource, 0) == 0, "error without the file name: %s",
                   r.error().message.c_str());
    return 0;
}
