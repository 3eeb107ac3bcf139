// SPDX-License-Identifier: GPL-2.0-only
// Internal to xen/libxen: the classes behind open_libxen(). Each wraps one
// libxen* handle and follows the Xen 4.17 headers in /usr/include.
//
//   LibxenHypervisor --open_grants()----------> GnttabMapper    (xengnttab)
//                    --open_event_channels()--> EvtchnChannels  (xenevtchn)
//                    --open_device_model()----> DmModel         (xendevicemodel
//                    |                            + xenforeignmemory, ioreq pages only)
//                    |                          DmModel::create_ioreq_server()
//                    |                            -> DmIoreqServer (own xenevtchn)
//                    --open_xenstore()--------> XsStore         (xenstore)
//                    --open_domain_control()--> XcDomainControl (xenctrl)
//
// Ioreq server lifecycle (DmIoreqServer, devicemodel.cc):
//
//   [none] --create_ioreq_server--> Created --map_resource--> Mapped
//          --set_ioreq_server_state(1)--> Enabled --bind vp_eports--> Serving
//   Serving --serve_pending()--> Serving
//   any state --destructor or setup failure--> unbind ports -> unmap
//          resource -> destroy_ioreq_server -> [none]  (each step only if done)
//
// All of them share one Counters block (BoundaryStats) through a shared_ptr,
// so handles may outlive the Hypervisor object.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "libxen_detail.h"
#include "xv/xen/hypervisor.h"

struct xentoollog_logger;

namespace xv::xen::libxen {

/// Counters of every handle opened through one LibxenHypervisor.
struct Counters {
    std::atomic<std::uint64_t> grant_map_calls{0};
    std::atomic<std::uint64_t> grant_pages_mapped{0};
    std::atomic<std::uint64_t> grant_unmap_calls{0};
    std::atomic<std::uint64_t> grant_copy_calls{0};
    std::atomic<std::uint64_t> resource_maps{0};
};

/// A xentoollog logger that forwards the libraries' messages to spdlog
/// (errors as warnings, the rest at debug), so nothing writes to stderr
/// behind the daemon's back. One static instance; never destroyed.
xentoollog_logger* tool_logger();

/// Sets O_NONBLOCK on `fd`; an errno on failure.
int set_nonblocking(int fd);

Result<std::unique_ptr<GrantMapper>> open_gnttab(std::shared_ptr<Counters> c);
Result<std::unique_ptr<EventChannels>> open_evtchn();
Result<std::unique_ptr<DeviceModel>> open_devicemodel(std::shared_ptr<Counters> c);
Result<std::unique_ptr<XenStore>> open_xs();
Result<std::unique_ptr<DomainControl>> open_xc();

}  // namespace xv::xen::libxen
