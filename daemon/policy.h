// SPDX-License-Identifier: GPL-2.0-only
// The safety policy: the rules of seeds/roles.rst ("Xen Domain Roles and
// Privileges") as a pure function of the configuration and of what is
// known about the guests and about this daemon's own domain.
//
//   Config ----------------------+
//   GuestFacts (xenstore/config) +--> evaluate() --> Verdicts --> exit status
//   HostFacts (Xen, self) -------+                     |           0 start / 2 refuse
//                                                      +--> refused devices
//                                                           (xenstore error text)
//
// | id | rule (seed section)                                  | broken            |
// |----|------------------------------------------------------|-------------------|
// | R1 | SafeVM frontends use grants (FFI: Memory Mappings)   | refuse to start;  |
// |    | grant_usage=0 is refused whatever the class          | UnsafeVM: device  |
// | R2 | SafeVM devices have the non-blocking registers       | refuse to start   |
// |    | (FFI: Synchronous Emulation)                         |                   |
// | R3 | frontends and backends in UnsafeVMs only             | warning (strict:  |
// |    | (FFI: Shared Memory and Interrupts)                  | refuse)           |
// | R4 | Control Domain is a SafeVM; one Control, one Hardware| refuse to start   |
// |    | Domain (Roles)                                       |                   |
// | R5 | one restricted worker per guest (Privileges)         | guest refused     |
// |    |                                                      | (allow_unrestricted|
// |    |                                                      | for UnsafeVMs)    |
// | R6 | a daemon in the Control Domain (Full Privileges)     | warning (strict:  |
// |    |                                                      | refuse)           |
//
// Besides the rules, two facts (rule ids "XSM" and "TARGET", seed section
// "VirtIO Privileges") say whether a deployment can work at all: Xen's XSM
// mode and, for a driver domain, device-model privilege over each guest.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config.h"
#include "xv/xen/hypervisor.h"
#include "xv/xen/types.h"

namespace xv::daemon {

/// One virtio device of a guest, as found in xenstore or in the config.
struct DeviceFacts {
    std::optional<DeviceType> type;   ///< nullopt: a generic "virtio,device" slot
    unsigned index = 0;               ///< nth device of this type for the guest
    Transport transport = Transport::Mmio;
    bool grant_usage = true;          ///< the frontend uses "VirtIO with Grants"
    bool nonblocking = false;         ///< the two non-blocking registers are enabled
    std::string key;                  ///< "virtio/5/0" (xenstore) or "config/blk0"
    std::string xs_path;              ///< backend directory in xenstore; empty for config-only

    /// "blk0", or "dev<key>" for a generic slot.
    std::string name() const;
};

/// Where a GuestFacts came from.
enum class FactsSource : std::uint8_t { Xenstore, Config };

/// A guest with virtio frontends served by this daemon.
struct GuestFacts {
    std::optional<xen::DomId> domid;  ///< unknown for a configured guest not running
    std::string name;
    std::optional<VmClass> cls;       ///< nullopt: take it from the config
    std::vector<DeviceFacts> devices;
    FactsSource source = FactsSource::Xenstore;

    /// "dom5 (guest1)", "dom5" or "guest1".
    std::string label() const;
};

/// What is known about the domain this daemon runs in.
struct HostFacts {
    std::optional<xen::DomId> domid;          ///< nullopt: Xen not reachable
    std::optional<RoleSet> roles;             ///< nullopt: from config, else inferred
    std::optional<VmClass> cls;               ///< nullopt: from config
    std::optional<bool> is_control_domain;    ///< nullopt: unknown (roles decide)
    xen::XsmMode xsm = xen::XsmMode::Unknown;
    std::optional<xen::DomId> target;         ///< device-model target of this domain
    bool workers_restrictable = true;         ///< R5: a worker can restrict itself to its guest
    bool xen_reachable = false;               ///< facts come from a live Xen
};

/// How serious a verdict is.
enum class Level : std::uint8_t {
    Ok,             ///< rule satisfied (or fact fine)
    Warning,        ///< recommendation broken; the daemon starts
    DeviceRefused,  ///< this device (or guest) is not served; the daemon starts
    Refuse,         ///< the daemon refuses to start
};

/// "dummy" | "silo" | "flask" | "unknown".
const char* xsm_name(xen::XsmMode m);

/// "ok" | "warning" | "device-refused" | "error-refuse".
const char* to_string(Level l);

/// One line of the policy's answer.
struct Verdict {
    std::string rule;                 ///< "R1".."R6", "XSM", "TARGET"
    std::string section;              ///< seed section, e.g. "FFI: Memory Mappings"
    Level level = Level::Ok;
    std::optional<xen::DomId> domid;  ///< the domain concerned, when known
    std::string domain;               ///< its label ("dom5 (guest1)", "host dom0")
    std::string device;               ///< "blk0"; "*" = every device of the guest; empty = none
    std::string device_key;           ///< DeviceFacts::key of the device, when one
    std::string xs_path;              ///< backend directory of the device, when known
    std::string message;
};

/// The policy's answer: every verdict, in a stable order (host rules
/// first, then guests in input order, then rules in order).
struct Verdicts {
    std::vector<Verdict> items;

    /// True when a verdict has level Refuse.
    bool refuses_start() const;
    /// 0 = would start, 2 = would refuse (interface.md exit statuses).
    int exit_status() const { return refuses_start() ? 2 : 0; }
    /// Verdicts with level DeviceRefused or Refuse for a guest's device
    /// (`device_key`) or for the whole guest ("*").
    std::vector<const Verdict*> refusals(std::optional<xen::DomId> domid, const std::string& device_key) const;
    /// Count of verdicts at `l`.
    std::size_t count(Level l) const;
};

/// Evaluates R1..R6 and the XSM/TARGET facts. Guests in `guests` are
/// evaluated as given; every configured guest with [[device]] entries that
/// is not among them is evaluated from the configuration alone. Pure: no
/// I/O, no logging.
Verdicts evaluate(const Config& config, const std::vector<GuestFacts>& guests, const HostFacts& host);

/// The text the discovery code writes to a refused device's xenstore
/// `error` node (and logs), e.g. "xen-virtiod refused dom5 blk0: R1 (seed
/// "FFI: Memory Mappings"): ...".
std::string xenstore_error_text(const Verdict& v);

/// Builds the facts of the configured guests (config only: no xenstore).
std::vector<GuestFacts> guests_from_config(const Config& config);

/// The device type announced by a DT compatible: "virtio,device1" net,
/// "virtio,device2" blk, "virtio,device3" console; nullopt otherwise.
std::optional<DeviceType> type_from_compatible(const std::string& compatible);

}  // namespace xv::daemon
