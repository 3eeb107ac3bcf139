// SPDX-License-Identifier: GPL-2.0-only
// `xen-virtiod check [--config FILE] [--json]`: evaluates the safety policy
// (policy.h) for the configuration and, when xenstore is reachable, for the
// guests announced under backend/virtio/... and backend/virtio_disk/...,
// and prints one verdict line per rule and guest with its seed section.
//
//   load_config --error--> exit 1 (message names file, line, key)
//        |
//   host_facts(hv) + scan xenstore (hv may be null: config only)
//        |
//   evaluate() --> render_table() | render_json() --> exit 0 (would start)
//                                                       or 2 (would refuse)
//
// The same table goes to the log at start (log_verdicts()).
#pragma once

#include <iosfwd>
#include <string>
#include <utility>
#include <vector>

#include "config.h"
#include "discovery.h"
#include "policy.h"
#include "xv/xen/hypervisor.h"

namespace xv::daemon {

/// Everything `check` found and decided.
struct CheckReport {
    std::string config_path;
    bool strict = false;
    HostFacts host;
    std::vector<GuestFacts> guests;                                ///< found in xenstore
    std::vector<std::pair<std::string, std::string>> xs_errors;    ///< (path, why) of malformed devices
    Verdicts verdicts;

    /// 0 = would start, 2 = would refuse to start.
    int exit_status() const { return verdicts.exit_status(); }
};

/// What the hypervisor says about the domain this process runs in
/// (`hv` may be null: nothing is known). The Control Domain is taken to
/// be domain 0, as Xen sets it up unless told otherwise.
HostFacts host_facts(xen::Hypervisor* hv);

/// Turns announced devices into per-guest facts: the device type comes from
/// the DT compatible ("virtio,device2" = blk), the index from the order of
/// the guest's devices of that type, the non-blocking setting from the
/// matching [[device]] (default: on for pci). A [[device]] with explicit
/// `grants = true` supplies grant usage where xenstore has no grant_usage
/// key (4.17 virtio_disk); `grants = false` always wins. `xs` (may be null)
/// gives guest names and key presence.
std::vector<GuestFacts> guests_from_announced(const std::vector<AnnouncedDevice>& devices, const Config& config,
                                              xen::XenStore* xs);

/// Adds the guest's configured virtio-pci devices (xenstore never announces
/// them; the daemon's own PCI host serves them) to its facts, so that the
/// policy sees them in `check` and at the daemon's start alike.
void add_configured_pci_devices(GuestFacts& guest, xen::DomId domid, const Config& config);

/// Gathers facts and evaluates the policy. Never fails: what cannot be
/// learned is reported as unknown.
CheckReport run_check(const Config& config, const std::string& config_path, xen::Hypervisor* hv);

/// The human table: a header, one line per verdict, xenstore errors, and
/// a result line.
std::string render_table(const CheckReport& report);

/// One JSON object: {"config", "strict", "exit_status", "would_start",
/// "host": {...}, "verdicts": [{rule, section, level, domid, domain,
/// device, message}], "xenstore_errors": [{path, message}],
/// "summary": {ok, warning, device_refused, error_refuse}}.
std::string render_json(const CheckReport& report);

/// The verdicts as log lines ("policy R1 ok dom5 (guest1) blk0 [FFI:
/// Memory Mappings]: ...").
std::vector<std::string> render_log_lines(const Verdicts& verdicts);

/// Logs every verdict through spdlog (ok: info, warning/refused: warn,
/// refuse: error).
void log_verdicts(const Verdicts& verdicts);

/// The whole command: loads `config_path`, runs the check, prints to `out`
/// (errors to `err`; with `json` also a JSON error object to `out`).
/// Returns the exit status: 0, 1 (usage/config error) or 2.
int check_command(const std::string& config_path, bool json, xen::Hypervisor* hv, std::ostream& out,
                  std::ostream& err);

}  // namespace xv::daemon
