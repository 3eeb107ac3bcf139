// SPDX-License-Identifier: GPL-2.0-only
// The commands that talk to Xen: serve, check, dt-fragment, attach.
#pragma once

#include <optional>
#include <ostream>
#include <string>

#include "attach.h"
#include "xv/xen/types.h"

namespace xv::daemon {

/// Exit statuses (README "Commands").
inline constexpr int kExitOk = 0;
inline constexpr int kExitUsage = 1;
inline constexpr int kExitPolicy = 2;
inline constexpr int kExitXen = 3;

/// Options of `serve`.
struct ServeOptions {
    std::string config_path;
    std::optional<xen::DomId> domid;  ///< --domid: one guest only
    bool foreground = false;
    bool worker = false;              ///< started by the Hardware Domain service
    std::string log_level;            ///< empty: from the config
};

/// `serve`: runs until SIGTERM/SIGINT (or, with --domid, until the guest
/// is destroyed). SIGHUP reloads the configuration for guests not yet
/// connected.
int run_serve(const ServeOptions& opts);

/// `check`: the safety verdicts for the configuration and, when Xen is
/// reachable, for the guests xenstore announces.
int run_check_command(const std::string& config_path, bool json, std::ostream& out, std::ostream& err);

/// Options of `dt-fragment`.
struct DtOptions {
    std::string guest;
    std::string config_path;
};
/// `dt-fragment`: the .dts of the PCI host bridge for the guest's virtio-pci devices.
int run_dt_fragment(const DtOptions& opts, std::ostream& out);

/// `attach` on real Xen: attach_command() (attach.h) with libxen.
int run_attach(const AttachOptions& opts);

}  // namespace xv::daemon
