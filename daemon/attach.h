// SPDX-License-Identifier: GPL-2.0-only
// `xen-virtiod attach --backend-domain D --guest G`, run in Dom0 by the
// toolstack flow (lab-notes "A backend in a driver domain"):
//
//   xl create -p guest.cfg -> xen-virtiod attach --backend-domain D --guest G -> xl unpause G
//
// It gives driver domain D device-model privilege over guest G
// (xc_domain_set_target(D, G), xenstored's set_target so that D may read
// G's nodes, and /local/domain/D/target = G) after
// checking, in this order, with a message saying what to do:
//
//   both domains exist (domid or xenstore name), D != G, neither is Dom0  else exit 1
//   Xen's XSM mode: SILO refuses DomU<->DomU backends                     else exit 3
//   G is alive and still paused (the backend must be ready before it boots) else exit 1
//   D has no target yet (a domain has one), or already G (nothing to do)   else exit 1
//   set_target, xenstore set_target, then the key                          else exit 3
#pragma once

#include <iosfwd>
#include <string>

#include "xv/xen/hypervisor.h"

namespace xv::daemon {

/// Options of `attach`.
struct AttachOptions {
    std::string backend;  ///< driver domain: name or domid
    std::string guest;    ///< guest: name or domid
};

/// The whole command against `hv` (real Xen, or the simulator in tests).
/// Returns the exit status: 0, 1 (usage / precondition) or 3 (Xen refused).
int attach_command(const AttachOptions& opts, xen::Hypervisor& hv, std::ostream& out, std::ostream& err);

}  // namespace xv::daemon
