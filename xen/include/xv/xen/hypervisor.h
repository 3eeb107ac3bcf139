// SPDX-License-Identifier: GPL-2.0-only
// The hypervisor boundary: the one object through which everything above
// xen/ reaches Xen. Two implementations: libxen (real Xen) and sim (an
// in-process simulated hypervisor for tests and `xen-virtiod demo`).
//
//   daemon/ devices/ transport/  --(these interfaces only)-->  xen/
//                                                      +-- libxen/ (libxen*.so)
//                                                      +-- sim/    (in-process)
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "xv/xen/evtchn.h"
#include "xv/xen/grant.h"
#include "xv/xen/ioreq.h"
#include "xv/result.h"
#include "xv/xen/types.h"
#include "xv/xen/xenstore.h"

namespace xv::xen {

/// What is known about one domain.
struct DomainInfo {
    DomId domid = 0;
    bool dying = false;
    bool shutdown = false;
    bool paused = false;
    bool hvm = true;
    unsigned max_vcpu_id = 0;
    std::optional<DomId> target;  ///< device-model target, if one was set
};

/// Xen's XSM mode, as far as it can be learned.
enum class XsmMode { Unknown, Dummy, Silo, Flask };

/// Domain queries and control (libxenctrl / simulator).
class DomainControl {
public:
    virtual ~DomainControl() = default;

    /// Info on `domid`; an Error with ESRCH when it does not exist.
    virtual Result<DomainInfo> info(DomId domid) = 0;
    /// All domains visible to the caller.
    virtual Result<std::vector<DomainInfo>> list() = 0;
    /// Gives `backend` device-model privilege over `guest` (xc_domain_set_target).
    virtual Result<void> set_target(DomId backend, DomId guest) = 0;
    /// The XSM mode, when it can be learned.
    virtual XsmMode xsm_mode() = 0;
};

/// Counters of the whole boundary, for tests, logs and the lab.
struct BoundaryStats {
    std::uint64_t grant_map_calls = 0;
    std::uint64_t grant_pages_mapped = 0;
    std::uint64_t grant_unmap_calls = 0;
    std::uint64_t grant_copy_calls = 0;
    /// Foreign mappings of guest RAM. xen-virtiod never makes one; kept so
    /// the tests and the lab can prove it stays 0.
    std::uint64_t foreign_ram_maps = 0;
    /// acquire_resource mappings (ioreq pages only).
    std::uint64_t resource_maps = 0;
};

/// Factory of handles. Each call opens a new handle; a worker serving one
/// guest opens its own and restricts them.
class Hypervisor {
public:
    virtual ~Hypervisor() = default;

    /// "xen" or "sim".
    virtual std::string name() const = 0;

    virtual Result<std::unique_ptr<GrantMapper>> open_grants() = 0;
    virtual Result<std::unique_ptr<EventChannels>> open_event_channels() = 0;
    virtual Result<std::unique_ptr<DeviceModel>> open_device_model() = 0;
    virtual Result<std::unique_ptr<XenStore>> open_xenstore() = 0;
    virtual Result<std::unique_ptr<DomainControl>> open_domain_control() = 0;

    /// The domid this process runs in.
    virtual Result<DomId> self_domid() = 0;

    /// Restricts every handle of this process, opened before or after, to
    /// `domid` (xentoolcore_restrict_all). Can be done once per process.
    virtual Result<void> restrict_all(DomId domid) = 0;

    /// Counters over all handles opened through this object.
    virtual BoundaryStats stats() const = 0;
};

/// The real hypervisor through libxen*. Fails with a message naming the
/// missing /dev/xen node and what to do when Xen is not there.
Result<std::unique_ptr<Hypervisor>> open_libxen();

/// True when this machine looks like a Xen domain with the device nodes a
/// backend needs (/dev/xen/privcmd, evtchn, gntdev).
bool xen_present();

}  // namespace xv::xen
