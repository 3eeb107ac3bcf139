// SPDX-License-Identifier: GPL-2.0-only
#include "libxen_detail.h"

extern "C" {  // the Xen 4.17 headers carry no extern "C" guards of their own
#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/hvm/ioreq.h>
}

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace xv::xen::libxen {

static_assert(sizeof(ioreq_t) * kSlotsPerPage == kPageSize, "128 ioreq slots per 4 KiB page");
static_assert(sizeof(buf_ioreq_t) == 8, "buf_ioreq_t is 8 bytes");
static_assert(sizeof(buffered_iopage_t) <= kPageSize, "buffered_iopage fits a page");

// ---------------------------------------------------------------------------
// Device nodes

namespace {

std::string env_or(const char* name, std::string fallback) {
    const char* v = std::getenv(name);
    if (v && *v) return v;
    return fallback;
}

bool sys_says_xen() {
    std::ifstream f("/sys/hypervisor/type");
    std::string type;
    if (!(f >> type)) return false;
    return type == "xen";
}

int access_probe(const std::string& path) {
    if (::access(path.c_str(), F_OK) != 0) return errno ? errno : ENOENT;
    if (::access(path.c_str(), R_OK | W_OK) != 0) return errno ? errno : EACCES;
    return 0;
}

Error inaccessible(const std::string& node, int err) {
    return errno_error(err, node + " is not accessible (" + std::strerror(err) +
                                "): run xen-virtiod as root, or give its user read/write access to " + node);
}

}  // namespace

NodeProbe system_probe() {
    NodeProbe p;
    p.dev_dir = env_or("XV_XEN_DEV_DIR", "/dev/xen");
    // libxenstore honours XENSTORED_PATH for both the socket and the device.
    p.xenstored_socket = env_or("XENSTORED_PATH", "/var/run/xenstored/socket");
    p.in_xen_domain = sys_says_xen();
    p.probe = access_probe;
    return p;
}

Result<void> check_nodes(const NodeProbe& p) {
    auto probe = [&](const std::string& path) { return p.probe ? p.probe(path) : ENOENT; };
    const std::string privcmd = p.dev_dir + "/privcmd";
    const std::string evtchn = p.dev_dir + "/evtchn";
    const std::string gntdev = p.dev_dir + "/gntdev";
    const std::string xenbus = p.dev_dir + "/xenbus";

    if (int e = probe(privcmd); e != 0) {
        if (e == EACCES || e == EPERM) return inaccessible(privcmd, EACCES);
        if (!p.in_xen_domain)
            return errno_error(ENODEV, privcmd +
                                           " missing: not running in a Xen domain (run in Dom0 or a driver "
                                           "domain, or use `xen-virtiod demo` for the simulator)");
        return errno_error(ENOENT, privcmd +
                                       " missing: load the xen-privcmd module (modprobe xen-privcmd; in a "
                                       "driver domain: modprobe xen-privcmd unrestricted=1) in the backend domain");
    }
    if (int e = probe(evtchn); e != 0) {
        if (e == EACCES || e == EPERM) return inaccessible(evtchn, EACCES);
        return errno_error(ENOENT, evtchn +
                                       " missing: load the xen-evtchn module (modprobe xen-evtchn) in the "
                                       "backend domain");
    }
    if (int e = probe(gntdev); e != 0) {
        if (e == EACCES || e == EPERM) return inaccessible(gntdev, EACCES);
        return errno_error(ENOENT, gntdev +
                                       " missing: load the xen-gntdev module (modprobe xen-gntdev) in the "
                                       "backend domain");
    }
    // xenstore: libxenstore tries the xenstored socket, then the xenbus device.
    int es = probe(p.xenstored_socket);
    int eb = probe(xenbus);
    if (es != 0 && eb != 0) {
        if (eb == EACCES || eb == EPERM) return inaccessible(xenbus, EACCES);
        if (es == EACCES || es == EPERM) return inaccessible(p.xenstored_socket, EACCES);
        return errno_error(ENOENT, xenbus + " and " + p.xenstored_socket +
                                       " missing: xenstore is unreachable (mount xenfs or load the "
                                       "xen-xenbus-dev support in the backend domain; in Dom0 start xenstored)");
    }
    return ok();
}

bool nodes_present(const NodeProbe& p) {
    if (!p.probe) return false;
    for (const char* n : {"/privcmd", "/evtchn", "/gntdev"}) {
        int e = p.probe(p.dev_dir + n);
        // Present but not accessible still means "this is a Xen domain".
        if (e != 0 && e != EACCES && e != EPERM) return false;
    }
    return true;
}

// ---------------------------------------------------------------------------
// Error messages

std::string permission_hint(CallKind kind) {
    switch (kind) {
    case CallKind::DeviceModel:
    case CallKind::ForeignMemory:
        return "likely causes: (1) Xen's XSM policy refuses it (Debian's Arm Xen boots XSM SILO: only the control "
               "domain can be a device model; boot Xen with xsm=dummy or a FLASK policy that allows it); (2) in a "
               "driver domain, no device-model target over the guest (from Dom0: xc_domain_set_target(backend, "
               "guest) before unpause, and write /local/domain/<backend>/target); (3) privcmd is restricted in "
               "this domain (load xen-privcmd with unrestricted=1)";
    case CallKind::EventChannel:
        return "likely cause: Xen's XSM policy refuses event channels between these domains (XSM SILO allows them "
               "only with the control domain; boot Xen with xsm=dummy or a FLASK policy that allows it)";
    case CallKind::Grant:
        return "likely causes: the ref was not granted to this domain or is read-only, or Xen's XSM policy "
               "refuses grant maps between these domains (XSM SILO: only with the control domain)";
    case CallKind::DomainControl:
        return "likely cause: this domain is not the control domain (domctls need Dom0 privilege, or a FLASK "
               "policy that grants them)";
    case CallKind::XenStore:
        return "likely cause: the xenstore node's permissions do not let this domain access it";
    case CallKind::ToolCore:
        return "";
    }
    return "";
}

Error call_error(std::string_view call, int err, std::string_view what, CallKind kind) {
    if (err == 0) err = EIO;
    std::string msg;
    msg.reserve(160);
    msg.append(what).append(": ").append(call).append(" failed: errno ").append(std::to_string(err));
    msg.append(" (").append(std::strerror(err)).append(")");
    if (err == EPERM || err == EACCES) {
        std::string hint = permission_hint(kind);
        if (!hint.empty()) msg.append("; ").append(hint);
    } else if (err == ENOSYS && (kind == CallKind::DeviceModel || kind == CallKind::ForeignMemory)) {
        msg.append("; Xen was built without the ioreq server (Arm needs CONFIG_EXPERT=y CONFIG_IOREQ_SERVER=y; "
                   "Debian's arm64 hypervisor lacks it)");
    } else if (err == ESRCH) {
        msg.append("; the domain does not exist (any more)");
    }
    return errno_error(err, std::move(msg));
}

// ---------------------------------------------------------------------------
// Port map

bool PortMap::add(Port port, unsigned vcpu) {
    auto it = std::lower_bound(entries_.begin(), entries_.end(), port,
                               [](const Entry& e, Port p) { return e.port < p; });
    if (it != entries_.end() && it->port == port) return false;
    entries_.insert(it, Entry{port, vcpu});
    return true;
}

std::optional<unsigned> PortMap::vcpu_of(Port port) const {
    auto it = std::lower_bound(entries_.begin(), entries_.end(), port,
                               [](const Entry& e, Port p) { return e.port < p; });
    if (it == entries_.end() || it->port != port) return std::nullopt;
    return it->vcpu;
}

bool PortMap::remove(Port port) {
    auto it = std::lower_bound(entries_.begin(), entries_.end(), port,
                               [](const Entry& e, Port p) { return e.port < p; });
    if (it == entries_.end() || it->port != port) return false;
    entries_.erase(it);
    return true;
}

std::vector<Port> PortMap::ports() const {
    std::vector<Port> out;
    out.reserve(entries_.size());
    for (const auto& e : entries_) out.push_back(e.port);
    return out;
}

// ---------------------------------------------------------------------------
// XSM

XsmMode parse_xsm_cmdline(std::string_view cmdline) {
    XsmMode mode = XsmMode::Unknown;
    std::size_t i = 0;
    while (i < cmdline.size()) {
        while (i < cmdline.size() && (cmdline[i] == ' ' || cmdline[i] == '\t' || cmdline[i] == '\n')) ++i;
        std::size_t j = i;
        while (j < cmdline.size() && cmdline[j] != ' ' && cmdline[j] != '\t' && cmdline[j] != '\n') ++j;
        std::string_view tok = cmdline.substr(i, j - i);
        i = j;
        // Xen accepts '-' and '_' interchangeably in names; "xsm" has neither.
        if (tok.substr(0, 4) != "xsm=") continue;
        std::string_view v = tok.substr(4);
        if (v == "silo") mode = XsmMode::Silo;
        else if (v == "dummy") mode = XsmMode::Dummy;
        else if (v == "flask") mode = XsmMode::Flask;
        else mode = XsmMode::Unknown;
    }
    return mode;
}

// ---------------------------------------------------------------------------
// Xenstore values

std::optional<DomId> parse_domid(std::string_view s) {
    if (s.empty() || s.size() > 5) return std::nullopt;
    unsigned v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return std::nullopt;
        v = v * 10 + unsigned(c - '0');
    }
    if (v >= DOMID_FIRST_RESERVED) return std::nullopt;
    return DomId(v);
}

// ---------------------------------------------------------------------------
// Grant copy

Result<void> validate_copy_segment(const GrantCopySegment& s, std::size_t index) {
    const std::string where = "grant copy segment " + std::to_string(index) + " (dom " + std::to_string(s.domid) +
                              " ref " + std::to_string(s.ref) + ")";
    if (s.len == 0) return make_error(std::errc::invalid_argument, where + ": zero length");
    // public/grant_table.h GNTTABOP_copy: the range must not cross the granted
    // page (GNTST_bad_copy_arg); check before Xen does.
    if (std::size_t(s.offset) + s.len > kPageSize)
        return make_error(std::errc::invalid_argument, where + ": offset " + std::to_string(s.offset) + " + len " +
                                                           std::to_string(s.len) + " crosses the granted page");
    if (s.local == nullptr) return make_error(std::errc::invalid_argument, where + ": no local buffer");
    if (s.domid >= DOMID_FIRST_RESERVED)
        return make_error(std::errc::invalid_argument, where + ": reserved domid");
    return ok();
}

int gntst_to_errno(int status) {
    switch (status) {
    case GNTST_okay: return 0;
    case GNTST_bad_domain: return ESRCH;
    case GNTST_bad_gntref: return EINVAL;
    case GNTST_bad_handle: return EINVAL;
    case GNTST_bad_virt_addr: return EFAULT;
    case GNTST_bad_dev_addr: return EFAULT;
    case GNTST_no_device_space: return ENOSPC;
    case GNTST_permission_denied: return EPERM;
    case GNTST_bad_page: return EINVAL;
    case GNTST_bad_copy_arg: return EINVAL;
    case GNTST_address_too_big: return E2BIG;
    case GNTST_eagain: return EAGAIN;
    case GNTST_no_space: return ENOSPC;
    default: return EIO;
    }
}

const char* gntst_name(int status) {
    switch (status) {
    case GNTST_okay: return "okay";
    case GNTST_general_error: return "general_error";
    case GNTST_bad_domain: return "bad_domain";
    case GNTST_bad_gntref: return "bad_gntref";
    case GNTST_bad_handle: return "bad_handle";
    case GNTST_bad_virt_addr: return "bad_virt_addr";
    case GNTST_bad_dev_addr: return "bad_dev_addr";
    case GNTST_no_device_space: return "no_device_space";
    case GNTST_permission_denied: return "permission_denied";
    case GNTST_bad_page: return "bad_page";
    case GNTST_bad_copy_arg: return "bad_copy_arg";
    case GNTST_address_too_big: return "address_too_big";
    case GNTST_eagain: return "eagain";
    case GNTST_no_space: return "no_space";
    default: return "unknown";
    }
}

// ---------------------------------------------------------------------------
// Buffered ring

BufferedDrain drain_buffered_ring(void* page, const IoreqHandler& handler, unsigned max) {
    BufferedDrain out;
    auto* bp = static_cast<buffered_iopage_t*>(page);
    // The pointer pair is one 64-bit word that Xen updates atomically in
    // HVM_IOREQSRV_BUFIOREQ_ATOMIC mode (public/hvm/ioreq.h union
    // bufioreq_pointers); read it in one load: read_pointer is the low half
    // on little-endian Arm64/x86.
    static_assert(offsetof(buffered_iopage_t, read_pointer) == 0 && offsetof(buffered_iopage_t, write_pointer) == 4);
    auto* pair = reinterpret_cast<std::uint64_t*>(page);
    auto* rp_word = &bp->read_pointer;
    while (out.served < max) {
        std::uint64_t both = std::atomic_ref<std::uint64_t>(*pair).load(std::memory_order_acquire);
        std::uint32_t rp = std::uint32_t(both);
        std::uint32_t wp = std::uint32_t(both >> 32);
        if (rp == wp) break;
        std::uint32_t avail = wp - rp;
        if (avail > IOREQ_BUFFER_SLOT_NUM) {
            out.corrupt = true;
            break;
        }
        buf_ioreq_t e;
        std::memcpy(&e, &bp->buf_ioreq[rp % IOREQ_BUFFER_SLOT_NUM], sizeof e);
        IoRequest req;
        req.vcpu = 0;
        req.type = static_cast<IoreqType>(e.type);
        req.is_write = e.dir == IOREQ_WRITE;
        req.data_is_ptr = false;
        req.addr = e.addr;
        req.data = e.data;
        req.size = 1u << e.size;
        req.count = 1;
        std::uint32_t used = 1;
        if (req.size == 8) {
            // "If 8, use two buf_ioreqs": the high half is the next entry's data.
            if (avail < 2) {
                out.corrupt = true;
                break;
            }
            buf_ioreq_t hi;
            std::memcpy(&hi, &bp->buf_ioreq[(rp + 1) % IOREQ_BUFFER_SLOT_NUM], sizeof hi);
            req.data |= std::uint64_t(hi.data) << 32;
            used = 2;
        }
        (void)handler(req);  // buffered requests are writes; no answer goes back
        std::atomic_ref<std::uint32_t>(*rp_word).fetch_add(used, std::memory_order_acq_rel);
        ++out.served;
    }
    return out;
}

}  // namespace xv::xen::libxen
