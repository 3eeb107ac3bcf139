// SPDX-License-Identifier: GPL-2.0-only
#include "config.h"

#include <toml++/toml.h>

#include <cerrno>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace xv::daemon {

namespace {

constexpr std::int64_t kMaxDomId = 0x7fef;  // DOMID_FIRST_RESERVED - 1
constexpr std::size_t kMaxPath = 4095;      // PATH_MAX - 1
constexpr std::size_t kMaxSunPath = 107;    // sizeof(sockaddr_un::sun_path) - 1
constexpr std::size_t kMaxIfName = 15;      // IFNAMSIZ - 1

const char* type_name(toml::node_type t) {
    switch (t) {
        case toml::node_type::table: return "table";
        case toml::node_type::array: return "array";
        case toml::node_type::string: return "string";
        case toml::node_type::integer: return "integer";
        case toml::node_type::floating_point: return "float";
        case toml::node_type::boolean: return "boolean";
        case toml::node_type::date: return "date";
        case toml::node_type::time: return "time";
        case toml::node_type::date_time: return "date-time";
        default: return "nothing";
    }
}

/// Collects errors while one file is read.
class Reader {
public:
    explicit Reader(std::string source) : source_(std::move(source)) {}

    /// Records "<file>:<line>: <section> key '<key>': <msg>".
    void error(unsigned line, const std::string& section, std::string_view key, const std::string& msg) {
        std::string s = source_ + ":" + std::to_string(line) + ": " + section;
        if (!key.empty()) s += " key '" + std::string(key) + "'";
        s += ": " + msg;
        errors_.push_back(std::move(s));
    }

    bool ok() const { return errors_.empty(); }
    std::string joined() const {
        std::string out;
        for (const auto& e : errors_) {
            if (!out.empty()) out += '\n';
            out += e;
        }
        return out;
    }

    /// A boolean value, or an error.
    std::optional<bool> boolean(const toml::node& n, const std::string& sec, std::string_view key) {
        if (auto v = n.value<bool>(); v && n.is_boolean()) return v;
        wrong_type(n, sec, key, "a boolean");
        return std::nullopt;
    }

    /// A string value, or an error.
    std::optional<std::string> string(const toml::node& n, const std::string& sec, std::string_view key) {
        if (n.is_string()) return *n.value<std::string>();
        wrong_type(n, sec, key, "a string");
        return std::nullopt;
    }

    /// One of a fixed set of names, as its value; anything else is an error
    /// that lists the names.
    template <class E>
    std::optional<E> choice(const toml::node& n, const std::string& sec, std::string_view key,
                            std::initializer_list<std::pair<std::string_view, E>> names) {
        auto v = string(n, sec, key);
        if (!v) return std::nullopt;
        std::string list;
        for (const auto& [name, value] : names) {
            if (*v == name) return value;
            list += (list.empty() ? "" : "|") + std::string(name);
        }
        error(line(n), sec, key, "'" + *v + "' is not one of " + list);
        return std::nullopt;
    }

    /// An integer in [lo, hi], or an error.
    std::optional<std::int64_t> integer(const toml::node& n, const std::string& sec, std::string_view key,
                                        std::int64_t lo, std::int64_t hi) {
        if (!n.is_integer()) {
            wrong_type(n, sec, key, "an integer");
            return std::nullopt;
        }
        std::int64_t v = *n.value<std::int64_t>();
        if (v < lo || v > hi) {
            error(line(n), sec, key,
                  "value " + std::to_string(v) + " out of range " + std::to_string(lo) + ".." + std::to_string(hi));
            return std::nullopt;
        }
        return v;
    }

    /// An absolute path (no NUL, bounded length), or an error.
    std::optional<std::string> abs_path(const toml::node& n, const std::string& sec, std::string_view key,
                                        std::size_t max = kMaxPath) {
        auto s = string(n, sec, key);
        if (!s) return std::nullopt;
        if (s->empty() || (*s)[0] != '/') {
            error(line(n), sec, key, "'" + *s + "' is not an absolute path");
            return std::nullopt;
        }
        if (s->size() > max || s->find('\0') != std::string::npos) {
            error(line(n), sec, key, "path too long (at most " + std::to_string(max) + " bytes) or contains NUL");
            return std::nullopt;
        }
        return s;
    }

    /// A network interface name (1..15 bytes, no '/', ':' or blank).
    std::optional<std::string> ifname(const toml::node& n, const std::string& sec, std::string_view key) {
        auto s = string(n, sec, key);
        if (!s) return std::nullopt;
        bool bad = s->empty() || s->size() > kMaxIfName || *s == "." || *s == "..";
        for (char c : *s)
            if (c == '/' || c == ':' || c <= ' ' || c == 0x7f) bad = true;
        if (bad) {
            error(line(n), sec, key,
                  "'" + *s + "' is not an interface name (1..15 characters, no '/', ':' or blanks)");
            return std::nullopt;
        }
        return s;
    }

    static unsigned line(const toml::node& n) { return unsigned(n.source().begin.line); }

    const std::string& source() const { return source_; }

private:
    void wrong_type(const toml::node& n, const std::string& sec, std::string_view key, const char* want) {
        error(line(n), sec, key, std::string("expected ") + want + ", got " + type_name(n.type()));
    }

    std::string source_;
    std::vector<std::string> errors_;
};

void read_daemon(Reader& r, const toml::table& t, DaemonSection& d) {
    const std::string sec = "[daemon]";
    for (auto&& [k, node] : t) {
        const std::string_view key = k.str();
        if (key == "strict") {
            if (auto v = r.boolean(node, sec, key)) d.strict = *v;
        } else if (key == "log_level") {
            if (auto v = r.string(node, sec, key)) {
                static const std::set<std::string> levels{"error", "warn", "info", "debug", "trace"};
                if (levels.count(*v))
                    d.log_level = *v;
                else
                    r.error(Reader::line(node), sec, key, "'" + *v + "' is not one of error|warn|info|debug|trace");
            }
        } else if (key == "workers") {
            if (auto v = r.integer(node, sec, key, 1, 64)) d.workers = unsigned(*v);
        } else if (key == "default_class") {
            if (auto v = r.string(node, sec, key)) {
                if (auto c = parse_class(*v))
                    d.default_class = *c;
                else
                    r.error(Reader::line(node), sec, key, "'" + *v + "' is not one of safe|unsafe");
            }
        } else if (key == "seccomp") {
            if (auto v = r.choice<SeccompMode>(
                    node, sec, key, {{"errno", SeccompMode::Errno}, {"kill", SeccompMode::Kill}, {"off", SeccompMode::Off}}))
                d.seccomp = *v;
        } else if (key == "ioreq_poll_us") {
            if (auto v = r.integer(node, sec, key, 0, DaemonSection::kMaxIoreqPollUs)) d.ioreq_poll_us = unsigned(*v);
        } else if (key == "ioreq_realtime_priority") {
            if (auto v = r.integer(node, sec, key, 0, DaemonSection::kMaxRealtimePriority))
                d.ioreq_realtime_priority = unsigned(*v);
        } else if (key == "worker_cgroups") {
            if (auto v = r.choice<WorkerCgroupMode>(node, sec, key,
                                                    {{"auto", WorkerCgroupMode::Auto}, {"off", WorkerCgroupMode::Off}}))
                d.worker_cgroups = *v;
        } else {
            r.error(Reader::line(node), sec, key, "unknown key");
        }
    }
}

void read_domain(Reader& r, const toml::table& t, unsigned ordinal, DomainEntry& d) {
    const std::string sec = "[[domain]] #" + std::to_string(ordinal);
    d.line = unsigned(t.source().begin.line);
    for (auto&& [k, node] : t) {
        const std::string_view key = k.str();
        if (key == "id") {
            if (auto v = r.integer(node, sec, key, 0, kMaxDomId)) d.id = xen::DomId(*v);
        } else if (key == "name") {
            if (auto v = r.string(node, sec, key)) {
                if (v->empty() || v->size() > 255 || v->find('/') != std::string::npos)
                    r.error(Reader::line(node), sec, key, "'" + *v + "' is not a domain name");
                else
                    d.name = *v;
            }
        } else if (key == "roles") {
            const toml::array* arr = node.as_array();
            if (!arr) {
                r.error(Reader::line(node), sec, key, std::string("expected an array of strings, got ") +
                                                          type_name(node.type()));
                continue;
            }
            d.roles_explicit = true;
            if (arr->empty()) r.error(Reader::line(node), sec, key, "empty: give at least one of hardware|control|domu");
            for (const auto& el : *arr) {
                auto s = r.string(el, sec, key);
                if (!s) continue;
                auto role = parse_role(*s);
                if (!role) {
                    r.error(Reader::line(el), sec, key, "'" + *s + "' is not one of hardware|control|domu");
                    continue;
                }
                if (d.roles.has(*role))
                    r.error(Reader::line(el), sec, key, "role '" + *s + "' listed twice");
                d.roles.add(*role);
            }
        } else if (key == "class") {
            if (auto v = r.string(node, sec, key)) {
                if (auto c = parse_class(*v))
                    d.cls = *c;
                else
                    r.error(Reader::line(node), sec, key, "'" + *v + "' is not one of safe|unsafe");
            }
        } else if (key == "allow_unrestricted") {
            if (auto v = r.boolean(node, sec, key)) d.allow_unrestricted = *v;
        } else {
            r.error(Reader::line(node), sec, key, "unknown key");
        }
    }
    if (!d.id && d.name.empty()) r.error(d.line, sec, "id", "missing: give id = <domid> or name = \"...\"");
    if (!d.roles_explicit) {
        // Dom0 is the Hardware and Control Domain unless told otherwise;
        // any other domain is a DomU (a driver domain is a DomU).
        if (d.id && *d.id == 0) {
            d.roles.hardware = true;
            d.roles.control = true;
        } else {
            d.roles.domu = true;
        }
    }
}

/// Why a console port name is refused (the guest makes a file name of it,
/// /dev/virtio-ports/<name>), or nullopt.
std::optional<std::string> port_name_problem(std::string_view n) {
    if (n.empty()) return "is empty";
    if (n.size() > ConsolePortEntry::kMaxName)
        return "is longer than " + std::to_string(ConsolePortEntry::kMaxName) + " bytes";
    if (n == "." || n == "..") return "is '.' or '..'";
    for (char c : n) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return "contains a control character";
        if (c == '/') return "contains '/'";
    }
    return std::nullopt;
}

/// A console's `ports`: an array of tables { name, backend = "socket", socket }.
void read_console_ports(Reader& r, const toml::node& node, const std::string& sec, DeviceEntry& d) {
    const toml::array* arr = node.as_array();
    if (!arr) {
        r.error(Reader::line(node), sec, "ports",
                std::string("expected an array of tables { name = \"...\", socket = \"...\" }, got ") +
                    type_name(node.type()));
        return;
    }
    if (arr->size() > ConsolePortEntry::kMaxPorts)
        r.error(Reader::line(node), sec, "ports",
                std::to_string(arr->size()) + " ports, at most " + std::to_string(ConsolePortEntry::kMaxPorts));
    std::size_t i = 0;
    for (const auto& el : *arr) {
        ++i;
        const std::string key = "ports[" + std::to_string(i) + "]";
        const toml::table* t = el.as_table();
        if (!t) {
            r.error(Reader::line(el), sec, key, std::string("expected a table, got ") + type_name(el.type()));
            continue;
        }
        ConsolePortEntry p;
        p.line = Reader::line(el) ? Reader::line(el) : Reader::line(node);
        bool have_name = false;
        for (auto&& [k, v] : *t) {
            const std::string sub = key + "." + std::string(k.str());
            if (k.str() == "name") {
                if (auto s = r.string(v, sec, sub)) {
                    have_name = true;
                    if (auto why = port_name_problem(*s))
                        r.error(Reader::line(v), sec, sub, "'" + *s + "' " + *why);
                    else
                        p.name = *s;
                }
            } else if (k.str() == "backend") {
                // Only sockets for now; the key leaves room for more.
                if (auto s = r.string(v, sec, sub); s && *s != "socket")
                    r.error(Reader::line(v), sec, sub, "'" + *s + "' is not one of socket");
            } else if (k.str() == "socket") {
                if (auto s = r.abs_path(v, sec, sub, kMaxSunPath)) p.socket = *s;
            } else {
                r.error(Reader::line(v), sec, sub, "unknown key (name, backend, socket)");
            }
        }
        if (!have_name) r.error(p.line, sec, key + ".name", "missing");
        for (const auto& q : d.console_ports)
            if (!p.name.empty() && q.name == p.name)
                r.error(p.line, sec, key + ".name", "'" + p.name + "' already used at line " + std::to_string(q.line));
        d.console_ports.push_back(std::move(p));
    }
}

/// Keys each device type accepts beyond the common ones.
bool key_applies(DeviceType t, std::string_view key) {
    static const std::set<std::string_view> blk{"path", "readonly", "discard", "queues"};
    static const std::set<std::string_view> net{"tap", "mac", "queues", "bridge", "mtu", "tx_poll_us"};
    static const std::set<std::string_view> con{"backend", "socket", "log", "ports"};
    switch (t) {
        case DeviceType::Blk: return blk.count(key) != 0;
        case DeviceType::Net: return net.count(key) != 0;
        case DeviceType::Console: return con.count(key) != 0;
    }
    return false;
}

void read_device(Reader& r, const toml::table& t, unsigned ordinal, DeviceEntry& d) {
    const std::string sec = "[[device]] #" + std::to_string(ordinal);
    d.line = unsigned(t.source().begin.line);
    d.ordinal = ordinal;
    static const std::set<std::string_view> common{"guest", "type", "index", "transport", "grants", "nonblocking"};
    static const std::set<std::string_view> specific{"path", "readonly", "discard", "queues", "tap", "mac",
                                                     "bridge", "mtu", "tx_poll_us", "backend", "socket", "log",
                                                     "ports"};

    // The type decides which other keys apply: read it first.
    std::optional<DeviceType> type;
    if (const toml::node* n = t.get("type")) {
        if (auto v = r.string(*n, sec, "type")) {
            type = parse_device_type(*v);
            if (!type) r.error(Reader::line(*n), sec, "type", "'" + *v + "' is not one of blk|net|console");
        }
    } else {
        r.error(d.line, sec, "type", "missing (blk|net|console)");
    }
    if (type) d.type = *type;

    bool have_guest = false, have_nb = false, have_socket = false, have_log = false;
    unsigned socket_line = 0, log_line = 0;
    for (auto&& [k, node] : t) {
        const std::string_view key = k.str();
        const unsigned ln = Reader::line(node);
        if (!common.count(key) && !specific.count(key)) {
            r.error(ln, sec, key, "unknown key");
            continue;
        }
        if (specific.count(key) && type && !key_applies(*type, key)) {
            r.error(ln, sec, key, std::string("does not apply to type ") + to_string(*type));
            continue;
        }
        if (key == "type") {
            continue;
        } else if (key == "guest") {
            have_guest = true;
            if (node.is_integer()) {
                if (auto v = r.integer(node, sec, key, 1, kMaxDomId)) d.guest_id = xen::DomId(*v);
            } else if (node.is_string()) {
                std::string s = *node.value<std::string>();
                if (s.empty() || s.size() > 255 || s.find('/') != std::string::npos)
                    r.error(ln, sec, key, "'" + s + "' is not a domain name");
                else
                    d.guest_name = s;
            } else {
                r.error(ln, sec, key, std::string("expected a domain name or domid, got ") + type_name(node.type()));
            }
        } else if (key == "index") {
            if (auto v = r.integer(node, sec, key, 0, 31)) d.index = unsigned(*v);
        } else if (key == "transport") {
            if (auto v = r.string(node, sec, key)) {
                if (auto tr = parse_transport(*v))
                    d.transport = *tr;
                else
                    r.error(ln, sec, key, "'" + *v + "' is not one of pci|mmio");
            }
        } else if (key == "grants") {
            if (auto v = r.boolean(node, sec, key)) {
                d.grants = *v;
                d.grants_explicit = true;
            }
        } else if (key == "nonblocking") {
            if (auto v = r.boolean(node, sec, key)) {
                d.nonblocking = *v;
                have_nb = true;
            }
        } else if (key == "path") {
            if (auto v = r.abs_path(node, sec, key)) d.path = *v;
        } else if (key == "readonly") {
            if (auto v = r.boolean(node, sec, key)) d.readonly = *v;
        } else if (key == "discard") {
            if (auto v = r.boolean(node, sec, key)) d.discard = *v;
        } else if (key == "queues") {
            // Bounded so that a device never asks for more vCPU-bound
            // resources than a small guest has (interface.md: 1..8).
            if (auto v = r.integer(node, sec, key, 1, 8)) d.queues = unsigned(*v);
        } else if (key == "tap") {
            if (auto v = r.ifname(node, sec, key)) d.tap = *v;
        } else if (key == "bridge") {
            if (auto v = r.ifname(node, sec, key)) d.bridge = *v;
        } else if (key == "mac") {
            if (auto v = r.string(node, sec, key)) {
                auto m = parse_mac(*v);
                if (!m)
                    r.error(ln, sec, key, "'" + *v + "' is not a MAC address (six hex pairs: 52:54:00:12:34:56)");
                else if ((*m)[0] & 1)
                    r.error(ln, sec, key, "'" + *v + "' is a multicast address (low bit of the first octet set)");
                else if (*m == Mac{})
                    r.error(ln, sec, key, "'" + *v + "' is the all-zero address");
                else
                    d.mac = *m;
            }
        } else if (key == "mtu") {
            // 68: the IPv4 minimum (RFC 791); 65535: virtio-net's u16 mtu field.
            if (auto v = r.integer(node, sec, key, 68, 65535)) d.mtu = unsigned(*v);
        } else if (key == "tx_poll_us") {
            if (auto v = r.integer(node, sec, key, 0, DeviceEntry::kMaxTxPollUs)) d.tx_poll_us = unsigned(*v);
        } else if (key == "backend") {
            if (auto v = r.string(node, sec, key)) {
                if (*v == "pty")
                    d.console = ConsoleBackend::Pty;
                else if (*v == "socket")
                    d.console = ConsoleBackend::Socket;
                else if (*v == "log")
                    d.console = ConsoleBackend::Log;
                else
                    r.error(ln, sec, key, "'" + *v + "' is not one of pty|socket|log");
            }
        } else if (key == "socket") {
            if (auto v = r.abs_path(node, sec, key, kMaxSunPath)) d.socket = *v;
            have_socket = true;
            socket_line = ln;
        } else if (key == "log") {
            if (auto v = r.abs_path(node, sec, key)) d.log = *v;
            have_log = true;
            log_line = ln;
        } else if (key == "ports") {
            read_console_ports(r, node, sec, d);
        }
    }
    if (!have_guest) r.error(d.line, sec, "guest", "missing (a domain name or domid)");
    // The non-blocking registers are a vendor capability on virtio-pci
    // (invisible to a driver that does not know it) but change the magic
    // value on virtio-mmio (a driver that does not know the extension
    // leaves the device alone), so they default to on for pci only.
    if (!have_nb) d.nonblocking = d.transport == Transport::Pci;
    if (type == DeviceType::Console) {
        if (have_socket && d.console != ConsoleBackend::Socket)
            r.error(socket_line, sec, "socket", "only applies with backend = \"socket\"");
        if (have_log && d.console != ConsoleBackend::Log)
            r.error(log_line, sec, "log", "only applies with backend = \"log\"");
    }
}

std::string guest_key(const DeviceEntry& d) {
    return d.guest_id ? "dom" + std::to_string(*d.guest_id) : d.guest_name;
}

}  // namespace

const char* to_string(Role r) {
    switch (r) {
        case Role::Hardware: return "hardware";
        case Role::Control: return "control";
        case Role::DomU: return "domu";
    }
    return "?";
}
const char* to_string(VmClass c) { return c == VmClass::Safe ? "safe" : "unsafe"; }
const char* to_string(DeviceType t) {
    switch (t) {
        case DeviceType::Blk: return "blk";
        case DeviceType::Net: return "net";
        case DeviceType::Console: return "console";
    }
    return "?";
}
const char* to_string(Transport t) { return t == Transport::Pci ? "pci" : "mmio"; }
const char* to_string(ConsoleBackend b) {
    switch (b) {
        case ConsoleBackend::Pty: return "pty";
        case ConsoleBackend::Socket: return "socket";
        case ConsoleBackend::Log: return "log";
    }
    return "?";
}
const char* to_string(SeccompMode m) {
    switch (m) {
        case SeccompMode::Errno: return "errno";
        case SeccompMode::Kill: return "kill";
        case SeccompMode::Off: return "off";
    }
    return "?";
}

std::optional<Role> parse_role(std::string_view s) {
    if (s == "hardware") return Role::Hardware;
    if (s == "control") return Role::Control;
    if (s == "domu") return Role::DomU;
    return std::nullopt;
}
std::optional<VmClass> parse_class(std::string_view s) {
    if (s == "safe") return VmClass::Safe;
    if (s == "unsafe") return VmClass::Unsafe;
    return std::nullopt;
}
std::optional<DeviceType> parse_device_type(std::string_view s) {
    if (s == "blk") return DeviceType::Blk;
    if (s == "net") return DeviceType::Net;
    if (s == "console") return DeviceType::Console;
    return std::nullopt;
}
std::optional<Transport> parse_transport(std::string_view s) {
    if (s == "pci") return Transport::Pci;
    if (s == "mmio") return Transport::Mmio;
    return std::nullopt;
}

std::string RoleSet::str() const {
    std::string s;
    for (Role r : {Role::Hardware, Role::Control, Role::DomU}) {
        if (!has(r)) continue;
        if (!s.empty()) s += ',';
        s += to_string(r);
    }
    return s.empty() ? "none" : s;
}

std::optional<Mac> parse_mac(std::string_view s) {
    if (s.size() != 17) return std::nullopt;
    Mac m{};
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    for (std::size_t i = 0; i < 6; ++i) {
        int hi = hex(s[i * 3]), lo = hex(s[i * 3 + 1]);
        if (hi < 0 || lo < 0) return std::nullopt;
        if (i < 5 && s[i * 3 + 2] != ':') return std::nullopt;
        m[i] = std::uint8_t(hi << 4 | lo);
    }
    return m;
}

std::string format_mac(const Mac& m) {
    static const char* digits = "0123456789abcdef";
    std::string s;
    for (std::size_t i = 0; i < m.size(); ++i) {
        if (i) s += ':';
        s += digits[m[i] >> 4];
        s += digits[m[i] & 15];
    }
    return s;
}

std::string DomainEntry::label() const {
    if (id && !name.empty()) return "dom" + std::to_string(*id) + " (" + name + ")";
    if (id) return "dom" + std::to_string(*id);
    return name;
}

std::string DeviceEntry::name() const { return std::string(to_string(type)) + std::to_string(index); }

std::string DeviceEntry::label() const {
    return (guest_name.empty() ? "dom" + std::to_string(guest_id.value_or(0)) : guest_name) + " " + name();
}

const DomainEntry* Config::find_domain(xen::DomId id) const {
    for (const auto& d : domains)
        if (d.id && *d.id == id) return &d;
    return nullptr;
}

const DomainEntry* Config::find_domain(std::string_view name) const {
    if (name.empty()) return nullptr;
    for (const auto& d : domains)
        if (d.name == name) return &d;
    return nullptr;
}

const DomainEntry* Config::find_guest(std::optional<xen::DomId> id, std::string_view name) const {
    if (id)
        if (const auto* d = find_domain(*id)) return d;
    return find_domain(name);
}

bool Config::device_matches(const DeviceEntry& dev, std::optional<xen::DomId> id, std::string_view name) const {
    if (id && dev.guest_id && *dev.guest_id == *id) return true;
    if (!name.empty() && !dev.guest_name.empty() && dev.guest_name == name) return true;
    return false;
}

std::vector<const DeviceEntry*> Config::devices_of(std::optional<xen::DomId> id, std::string_view name) const {
    std::vector<const DeviceEntry*> out;
    for (const auto& d : devices)
        if (device_matches(d, id, name)) out.push_back(&d);
    return out;
}

const DeviceEntry* Config::find_device(std::optional<xen::DomId> id, std::string_view name, DeviceType type,
                                       unsigned index) const {
    for (const auto& d : devices)
        if (d.type == type && d.index == index && device_matches(d, id, name)) return &d;
    return nullptr;
}

VmClass Config::class_of(std::optional<xen::DomId> id, std::string_view name) const {
    if (const auto* d = find_guest(id, name)) {
        if (d->cls) return *d->cls;
        // Seed "SafeVMs and UnSafeVMs": "The Control Domain must be a SafeVM".
        if (d->roles.control) return VmClass::Safe;
    }
    return daemon.default_class;
}

bool Config::class_configured(std::optional<xen::DomId> id, std::string_view name) const {
    const auto* d = find_guest(id, name);
    return d && d->cls.has_value();
}

Result<Config> parse_config(std::string_view text, std::string_view source) {
    Config cfg;
    cfg.source = std::string(source);
    Reader r(cfg.source);

    toml::table root;
    try {
        root = toml::parse(text, source);
    } catch (const toml::parse_error& e) {
        const auto& b = e.source().begin;
        return make_error(std::errc::invalid_argument, cfg.source + ":" + std::to_string(b.line) + ":" +
                                                           std::to_string(b.column) + ": " +
                                                           std::string(e.description()));
    }

    // [daemon] first: default_class is used by the domain defaults.
    if (const toml::node* n = root.get("daemon")) {
        if (const toml::table* t = n->as_table())
            read_daemon(r, *t, cfg.daemon);
        else
            r.error(Reader::line(*n), "[daemon]", "", "must be a table ([daemon])");
    }

    auto tables = [&](const char* name, auto&& fn) {
        const toml::node* n = root.get(name);
        if (!n) return;
        const toml::array* arr = n->as_array();
        if (!arr || !arr->is_array_of_tables()) {
            r.error(Reader::line(*n), std::string("[[") + name + "]]", "",
                    std::string("must be an array of tables ([[") + name + "]])");
            return;
        }
        unsigned i = 0;
        for (const auto& el : *arr) fn(*el.as_table(), ++i);
    };

    for (auto&& [k, node] : root) {
        const std::string_view key = k.str();
        if (key != "daemon" && key != "domain" && key != "device")
            r.error(Reader::line(node), "top level", key, "unknown key (expected [daemon], [[domain]], [[device]])");
    }

    tables("domain", [&](const toml::table& t, unsigned i) {
        DomainEntry d;
        read_domain(r, t, i, d);
        const std::string sec = "[[domain]] #" + std::to_string(i);
        for (const auto& prev : cfg.domains) {
            if (d.id && prev.id && *d.id == *prev.id)
                r.error(d.line, sec, "id",
                        "domid " + std::to_string(*d.id) + " already described at line " + std::to_string(prev.line));
            if (!d.name.empty() && d.name == prev.name)
                r.error(d.line, sec, "name",
                        "'" + d.name + "' already described at line " + std::to_string(prev.line));
        }
        cfg.domains.push_back(std::move(d));
    });

    tables("device", [&](const toml::table& t, unsigned i) {
        DeviceEntry d;
        read_device(r, t, i, d);
        // Link the guest's name and domid through its [[domain]] entry.
        if (const DomainEntry* dom = cfg.find_guest(d.guest_id, d.guest_name)) {
            if (!d.guest_id && dom->id) d.guest_id = dom->id;
            if (d.guest_name.empty()) d.guest_name = dom->name;
        }
        if (d.guest_id && *d.guest_id == 0)
            r.error(d.line, "[[device]] #" + std::to_string(i), "guest", "domain 0 cannot be a virtio frontend here");
        cfg.devices.push_back(std::move(d));
    });

    // Duplicate (guest, type, index).
    std::map<std::string, unsigned> seen;
    for (const auto& d : cfg.devices) {
        if (!d.guest_id && d.guest_name.empty()) continue;  // already an error
        const std::string key = guest_key(d) + "/" + d.name();
        auto [it, inserted] = seen.emplace(key, d.line);
        if (!inserted)
            r.error(d.line, "[[device]] #" + std::to_string(d.ordinal), "index",
                    "duplicate device (" + guest_key(d) + ", " + to_string(d.type) + ", " +
                        std::to_string(d.index) + "), first at line " + std::to_string(it->second));
    }

    // Fill the defaults that depend on the guest.
    for (auto& d : cfg.devices) {
        if (d.type != DeviceType::Console) continue;
        const std::string g = guest_key(d);
        if (d.console == ConsoleBackend::Socket && d.socket.empty())
            d.socket = "/run/xen-virtiod/" + g + ".console" + std::to_string(d.index) + ".sock";
        if (d.console == ConsoleBackend::Log && d.log.empty())
            d.log = "/var/log/xen-virtiod/" + g + ".console" + std::to_string(d.index) + ".log";
        // Ports 1..: a socket each, none shared (with port 0's either).
        std::map<std::string, unsigned> socks;
        if (d.console == ConsoleBackend::Socket) socks.emplace(d.socket, d.line);
        const std::string sec = "[[device]] #" + std::to_string(d.ordinal);
        for (std::size_t i = 0; i < d.console_ports.size(); ++i) {
            auto& p = d.console_ports[i];
            const std::string key = "ports[" + std::to_string(i + 1) + "].socket";
            if (p.name.empty()) continue;  // already an error
            if (p.socket.empty()) {
                p.socket = "/run/xen-virtiod/" + g + ".console" + std::to_string(d.index) + "." + p.name + ".sock";
                if (p.socket.size() > kMaxSunPath) {
                    r.error(p.line, sec, key, "the default " + p.socket + " is longer than " +
                                                  std::to_string(kMaxSunPath) + " bytes: give a shorter socket path");
                    continue;
                }
            }
            auto [it, fresh] = socks.emplace(p.socket, p.line);
            if (!fresh)
                r.error(p.line, sec, key, p.socket + " already used at line " + std::to_string(it->second));
        }
    }

    if (!r.ok()) return make_error(std::errc::invalid_argument, r.joined());
    return cfg;
}

Result<Config> load_config(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        int err = errno ? errno : ENOENT;
        return errno_error(err, path.string() + ": cannot open the configuration file");
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) return errno_error(EIO, path.string() + ": cannot read the configuration file");
    std::string text = ss.str();
    if (text.size() > (1u << 20)) return make_error(std::errc::file_too_large, path.string() + ": larger than 1 MiB");
    return parse_config(text, path.string());
}

}  // namespace xv::daemon
