// SPDX-License-Identifier: GPL-2.0-only
// The daemon's configuration: a TOML file (interface.md is the contract for
// its keys) parsed into a plain data model the rest of the daemon uses.
//
//   /etc/xen-virtiod/xen-virtiod.toml
//     [daemon]        strict, log_level, workers, default_class, seccomp,
//                     ioreq_poll_us, ioreq_realtime_priority, worker_cgroups
//     [[domain]]      id | name, roles, class, allow_unrestricted
//     [[device]]      guest, type, index, transport, grants, nonblocking,
//                     blk: path readonly discard queues
//                     net: tap mac queues bridge mtu tx_poll_us
//                     console: backend socket log ports
//
// Parsing is strict: an unknown key, a wrong type or a bad value is an
// error naming the file, the line and the key, e.g.
//   /etc/xen-virtiod/xen-virtiod.toml:14: [[device]] #2 key 'queus': unknown key
// Every error in the file is reported (one per line), not only the first.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xv/result.h"
#include "xv/xen/types.h"

namespace xv::daemon {

/// Where the daemon looks for its configuration by default.
inline constexpr const char* kDefaultConfigPath = "/etc/xen-virtiod/xen-virtiod.toml";

/// A domain role (seed "Roles"): Hardware Domain, Control Domain, DomU.
enum class Role : std::uint8_t { Hardware, Control, DomU };

/// The criticality class of a domain (seed "SafeVMs and UnSafeVMs").
enum class VmClass : std::uint8_t { Safe, Unsafe };

/// A virtio device type this daemon serves.
enum class DeviceType : std::uint8_t { Blk, Net, Console };

/// A virtio transport.
enum class Transport : std::uint8_t { Pci, Mmio };

/// Where a virtio-console's data goes.
enum class ConsoleBackend : std::uint8_t { Pty, Socket, Log };

/// What the seccomp filter does with a syscall it does not allow (R5).
enum class SeccompMode : std::uint8_t { Errno, Kill, Off };
/// [daemon] worker_cgroups: each worker in a cpu cgroup of its own (worker_cgroup.h).
enum class WorkerCgroupMode : std::uint8_t { Auto, Off };

/// "hardware" | "control" | "domu".
const char* to_string(Role r);
/// "safe" | "unsafe".
const char* to_string(VmClass c);
/// "blk" | "net" | "console".
const char* to_string(DeviceType t);
/// "pci" | "mmio".
const char* to_string(Transport t);
/// "pty" | "socket" | "log".
const char* to_string(ConsoleBackend b);
/// "errno" | "kill" | "off".
const char* to_string(SeccompMode m);

/// Parses a role name; nullopt when unknown.
std::optional<Role> parse_role(std::string_view s);
/// Parses a class name; nullopt when unknown.
std::optional<VmClass> parse_class(std::string_view s);
/// Parses a device type name; nullopt when unknown.
std::optional<DeviceType> parse_device_type(std::string_view s);
/// Parses a transport name; nullopt when unknown.
std::optional<Transport> parse_transport(std::string_view s);

/// A set of roles (a domain may hold several: Dom0 is usually both the
/// Hardware Domain and the Control Domain).
struct RoleSet {
    bool hardware = false;
    bool control = false;
    bool domu = false;

    /// True when `r` is in the set.
    bool has(Role r) const { return r == Role::Hardware ? hardware : r == Role::Control ? control : domu; }
    /// Adds `r`.
    void add(Role r) { (r == Role::Hardware ? hardware : r == Role::Control ? control : domu) = true; }
    /// True when no role is set.
    bool empty() const { return !hardware && !control && !domu; }
    /// "hardware,control" (in that order), or "none".
    std::string str() const;
    bool operator==(const RoleSet&) const = default;
};

/// A MAC address.
using Mac = std::array<std::uint8_t, 6>;

/// Parses "52:54:00:12:34:56" (six hex pairs, ':' separated); nullopt on
/// a bad format.
std::optional<Mac> parse_mac(std::string_view s);
/// Formats a MAC as "52:54:00:12:34:56".
std::string format_mac(const Mac& m);

/// [daemon]
struct DaemonSection {
    bool strict = false;                  ///< R3/R6 warnings become errors
    std::string log_level = "info";       ///< error|warn|info|debug|trace
    unsigned workers = 2;                 ///< I/O threads (1..64)
    VmClass default_class = VmClass::Unsafe;  ///< class of a guest without [[domain]] entry
    SeccompMode seccomp = SeccompMode::Errno; ///< R5: action for syscalls the filter refuses
    /// After serving an ioreq, a guest's ioreq loop keeps polling for the
    /// next one up to this long before sleeping on the event channel again
    /// (0: sleeps at once). The loop adapts its window between 0 and this
    /// (IoreqLoop::set_poll): none for a guest that does not trap in
    /// bursts, and polling in vain is held to a tenth of one CPU per guest.
    unsigned ioreq_poll_us = kDefaultIoreqPollUs;
    static constexpr unsigned kDefaultIoreqPollUs = 50;
    static constexpr unsigned kMaxIoreqPollUs = 1000;
    /// SCHED_FIFO priority of a guest's I/O threads, which serve its ioreqs
    /// (0: the normal policy). Needs CAP_SYS_NICE or RLIMIT_RTPRIO >= it
    /// (systemd LimitRTPRIO=); refused: a warning, and served at the normal policy.
    unsigned ioreq_realtime_priority = 0;
    static constexpr unsigned kMaxRealtimePriority = 99;  ///< sched(7): SCHED_FIFO 1..99
    /// "auto": the supervisor puts each worker in a cpu cgroup of its own,
    /// equal weights, where the cgroup tree lets it (worker_cgroup.h);
    /// "off": workers stay in the service's group.
    WorkerCgroupMode worker_cgroups = WorkerCgroupMode::Auto;
};

/// [[domain]]: the role and class of one domain.
struct DomainEntry {
    std::optional<xen::DomId> id;         ///< domid, when given
    std::string name;                     ///< domain name, when given
    RoleSet roles;                        ///< explicit or defaulted (see roles_explicit)
    bool roles_explicit = false;          ///< `roles` was written in the file
    std::optional<VmClass> cls;           ///< `class`, when written
    bool allow_unrestricted = false;      ///< R5: serve an UnsafeVM even when its worker cannot be restricted
    unsigned line = 0;                    ///< line of the table in the file

    /// "dom5 (guest1)", "dom5" or "guest1".
    std::string label() const;
};

/// One extra port (1..) of a console `ports` array: a unix socket on the
/// host side, named for the guest (virtio 1.2 §5.3.6.2 PORT_NAME).
struct ConsolePortEntry {
    std::string name;                     ///< 1..255 bytes, printable, no '/'
    std::string socket;                   ///< unix socket path; default from the guest, index and name
    unsigned line = 0;                    ///< line of the entry in the file

    static constexpr std::size_t kMaxPorts = 15;      ///< max_nr_ports <= 16
    static constexpr std::size_t kMaxName = 255;
};

/// [[device]]: backend resources of one virtio device of a guest.
struct DeviceEntry {
    std::optional<xen::DomId> guest_id;   ///< `guest` given as an integer (or a name resolved by [[domain]])
    std::string guest_name;               ///< `guest` given as a string (or the id's [[domain]] name)
    DeviceType type = DeviceType::Blk;
    unsigned index = 0;                   ///< nth device of this type for the guest
    Transport transport = Transport::Mmio;
    bool grants = true;                   ///< "VirtIO with Grants" (false is refused: R1)
    bool grants_explicit = false;         ///< `grants` was written in the file
    bool nonblocking = false;             ///< the two non-blocking registers (default: true on pci)
    // blk
    std::string path;                     ///< image or block device; empty: xenstore `params`
    bool readonly = false;
    bool discard = true;
    unsigned queues = 1;                  ///< blk and net: 1..8
    // net
    std::string tap;                      ///< tap interface name; empty: generated
    std::optional<Mac> mac;               ///< empty: generated
    std::string bridge;                   ///< bridge to add the tap to; empty: none
    unsigned mtu = 1500;
    /// Poll window of a transmit queue that ran empty (devices/net.h
    /// NetConfig::tx_poll_us), 0..1000 us; 0: ask for a kick at once.
    unsigned tx_poll_us = kDefaultTxPollUs;
    static constexpr unsigned kDefaultTxPollUs = 50;
    static constexpr unsigned kMaxTxPollUs = 1000;
    // console
    ConsoleBackend console = ConsoleBackend::Pty;
    std::string socket;                   ///< backend = "socket": unix socket path
    std::string log;                      ///< backend = "log": log file path
    /// Ports 1.. (VIRTIO_CONSOLE_F_MULTIPORT offered when not empty).
    std::vector<ConsolePortEntry> console_ports;
    unsigned line = 0;                    ///< line of the table in the file
    unsigned ordinal = 0;                 ///< 1-based position among [[device]] tables

    /// "guest1 blk0", "dom5 net1".
    std::string label() const;
    /// "blk0", "net1".
    std::string name() const;
};

/// The whole configuration.
struct Config {
    std::string source = "<defaults>";    ///< file it was read from
    DaemonSection daemon;
    std::vector<DomainEntry> domains;
    std::vector<DeviceEntry> devices;

    /// The [[domain]] entry with this domid, or nullptr.
    const DomainEntry* find_domain(xen::DomId id) const;
    /// The [[domain]] entry with this name, or nullptr.
    const DomainEntry* find_domain(std::string_view name) const;
    /// The [[domain]] entry for a guest known by domid and/or name.
    const DomainEntry* find_guest(std::optional<xen::DomId> id, std::string_view name) const;
    /// True when `dev` belongs to the guest known by domid and/or name.
    bool device_matches(const DeviceEntry& dev, std::optional<xen::DomId> id, std::string_view name) const;
    /// Every [[device]] of a guest, in file order.
    std::vector<const DeviceEntry*> devices_of(std::optional<xen::DomId> id, std::string_view name) const;
    /// The [[device]] (guest, type, index), or nullptr.
    const DeviceEntry* find_device(std::optional<xen::DomId> id, std::string_view name, DeviceType type,
                                   unsigned index) const;
    /// The class of a guest: its [[domain]] `class`; SafeVM for a Control
    /// Domain without one (seed "SafeVMs and UnSafeVMs": the Control Domain
    /// must be a SafeVM); otherwise [daemon] default_class.
    VmClass class_of(std::optional<xen::DomId> id, std::string_view name) const;
    /// True when the guest's class comes from a [[domain]] entry.
    bool class_configured(std::optional<xen::DomId> id, std::string_view name) const;
};

/// Parses configuration text; `source` names it in error messages.
Result<Config> parse_config(std::string_view text, std::string_view source);

/// Reads and parses a file. A missing or unreadable file is an error.
Result<Config> load_config(const std::filesystem::path& path);

}  // namespace xv::daemon
