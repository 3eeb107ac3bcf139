// SPDX-License-Identifier: GPL-2.0-only
// Pure helpers of the libxen boundary: device-node checks, error messages
// with advice, ioreq page arithmetic, the port -> vCPU map, XSM command-line
// parsing, grant-copy validation and the buffered ioreq ring. Nothing here
// calls into Xen, so all of it is unit-tested on a machine without Xen.
// (No Xen header in this file: the .cc holds the ABI-dependent parts.)
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xv/result.h"
#include "xv/xen/grant.h"
#include "xv/xen/hypervisor.h"
#include "xv/xen/ioreq.h"
#include "xv/xen/types.h"

namespace xv::xen::libxen {

// ---------------------------------------------------------------------------
// Device nodes

/// Where the nodes a backend needs live, and how to probe them. The default
/// (system_probe()) looks at the real filesystem; tests substitute their own.
struct NodeProbe {
    /// Directory of the Xen device nodes ($XV_XEN_DEV_DIR, else /dev/xen).
    std::string dev_dir = "/dev/xen";
    /// xenstored's Unix socket ($XENSTORED_PATH, else /var/run/xenstored/socket).
    std::string xenstored_socket = "/var/run/xenstored/socket";
    /// /sys/hypervisor/type reads "xen": we run in a Xen domain.
    bool in_xen_domain = false;
    /// 0 when `path` exists and is readable and writable, else an errno
    /// (ENOENT: missing; EACCES: present but not accessible to us).
    std::function<int(const std::string& path)> probe;
};

/// The probe of this process: environment overrides + access(2).
NodeProbe system_probe();

/// Checks privcmd, evtchn, gntdev and xenstore (xenbus node or xenstored
/// socket) in that order; the Error names the first missing or inaccessible
/// node and what to do. Codes: ENODEV (not a Xen domain), ENOENT (a module
/// is not loaded / xenstored not running), EACCES (no permission).
Result<void> check_nodes(const NodeProbe& p);

/// True when privcmd, evtchn and gntdev are all present.
bool nodes_present(const NodeProbe& p);

// ---------------------------------------------------------------------------
// Error messages

/// Which family a failing call belongs to (selects the advice given).
enum class CallKind { Grant, EventChannel, DeviceModel, ForeignMemory, DomainControl, XenStore, ToolCore };

/// Likely causes of EPERM/EACCES for calls of `kind`, from lab-notes.md
/// "A backend in a driver domain". Empty when there is no specific advice.
std::string permission_hint(CallKind kind);

/// An Error for a failed library call: "<what>: <call> failed: errno N (text)"
/// plus advice for EPERM/EACCES (privileges) and ENOSYS (Xen built without
/// the ioreq server). The code is `err` (EIO when err is 0).
Error call_error(std::string_view call, int err, std::string_view what, CallKind kind);

// ---------------------------------------------------------------------------
// Ioreq pages and ports

/// Slots per ioreq page: 4096 / sizeof(ioreq_t) = 128 (public/hvm/ioreq.h).
inline constexpr unsigned kSlotsPerPage = 128;
/// Largest vCPU count we accept from Xen (HVM_MAX_VCPUS is 128 on x86,
/// Arm's GICv3 limit is 4096); anything above is treated as bogus.
inline constexpr unsigned kMaxVcpus = 4096;

/// Pages of ioreq slots for `vcpus` vCPUs: ceil(vcpus / 128); 0 for 0.
constexpr unsigned ioreq_page_count(unsigned vcpus) { return (vcpus + kSlotsPerPage - 1) / kSlotsPerPage; }

/// Local event-channel port -> vCPU index, for the ports of one ioreq server.
/// Ports are unique; a lookup of an unknown port gives nullopt (a stray or
/// forged port must not index the slot array).
class PortMap {
public:
    /// Records `port` as vCPU `vcpu`'s; false if the port is already known.
    bool add(Port port, unsigned vcpu);
    /// The vCPU of `port`, if known.
    std::optional<unsigned> vcpu_of(Port port) const;
    /// Forgets `port`; false if it was unknown.
    bool remove(Port port);
    /// All recorded ports in ascending order.
    std::vector<Port> ports() const;
    /// Number of recorded ports.
    std::size_t size() const { return entries_.size(); }
    /// True when no port is recorded.
    bool empty() const { return entries_.empty(); }

private:
    struct Entry {
        Port port;
        unsigned vcpu;
    };
    std::vector<Entry> entries_;  // sorted by port
};

// ---------------------------------------------------------------------------
// XSM

/// The XSM mode named by "xsm=" on a Xen command line (the last one wins,
/// as Xen parses parameters in order); Unknown when absent or unrecognised.
XsmMode parse_xsm_cmdline(std::string_view cmdline);

// ---------------------------------------------------------------------------
// Xenstore values

/// A domid written in xenstore ("5"): decimal digits only, below
/// DOMID_FIRST_RESERVED (0x7ff0); nullopt for anything else.
std::optional<DomId> parse_domid(std::string_view s);

// ---------------------------------------------------------------------------
// Grant copy

/// Checks one segment before it reaches Xen: len > 0, offset + len within
/// the granted page (GNTST_bad_copy_arg otherwise), a local buffer.
Result<void> validate_copy_segment(const GrantCopySegment& s, std::size_t index);

/// errno for a GNTST_* status (public/grant_table.h).
int gntst_to_errno(int status);
/// Name of a GNTST_* status ("bad_gntref", ...).
const char* gntst_name(int status);

// ---------------------------------------------------------------------------
// Buffered ioreq ring (HVM_IOREQSRV_BUFIOREQ_ATOMIC)

/// Outcome of draining the buffered ring.
struct BufferedDrain {
    unsigned served = 0;  ///< requests handed to the handler
    bool corrupt = false; ///< pointers out of range or a torn 8-byte entry
};

/// Serves every entry of a buffered_iopage (public/hvm/ioreq.h) between
/// read_pointer and write_pointer, at most `max` entries, advancing
/// read_pointer atomically after each. Never trusts the pointers: a ring
/// claiming more than IOREQ_BUFFER_SLOT_NUM entries, or an 8-byte entry
/// whose second half is missing, stops the drain with corrupt = true.
BufferedDrain drain_buffered_ring(void* page, const IoreqHandler& handler, unsigned max);

}  // namespace xv::xen::libxen
