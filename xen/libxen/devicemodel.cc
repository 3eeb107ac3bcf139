// SPDX-License-Identifier: GPL-2.0-only
// DeviceModel and IoreqServer on libxendevicemodel + libxenforeignmemory
// (xendevicemodel.h, xenforeignmemory.h, public/hvm/ioreq.h, Xen 4.17).
//
// The one foreign mapping xen-virtiod ever makes is of the ioreq server's
// own pages (XENMEM_resource_ioreq_server), never of guest RAM.
//
// Ioreq server lifecycle (DmIoreqServer):
//
//   [none] --create_ioreq_server--> Created --map_resource--> Mapped
//          --set_ioreq_server_state(1)--> Enabled --bind vp_eports--> Serving
//
//   Serving --serve_pending()--> Serving (per vCPU: READY -> INPROCESS ->
//            IORESP_READY -> notify, see xen/common/ioreq_slot.h)
//   any state --destructor / setup failure--> unbind ports -> unmap resource
//            -> destroy_ioreq_server -> [none]   (each step only if done)
// HVM_IOREQSRV_BUFIOREQ_* are tools-only definitions (public/hvm/hvm_op.h).
#ifndef __XEN_TOOLS__
#define __XEN_TOOLS__ 1
#endif
extern "C" {  // the Xen 4.17 headers carry no extern "C" guards of their own
#include <xendevicemodel.h>
#include <xenforeignmemory.h>
#include <xen/xen.h>
#include <xen/memory.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/ioreq.h>
}

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "../common/ioreq_slot.h"
#include "libxen_impl.h"
#include "xv/log.h"

namespace xv::xen::libxen {
namespace {

/// The device-model and foreign-memory handles, shared by a DmModel and the
/// ioreq servers it created (a server must be able to destroy itself in Xen
/// after the DmModel is gone).
struct DmHandles {
    xendevicemodel_handle* dm = nullptr;
    xenforeignmemory_handle* fmem = nullptr;
    DmHandles() = default;
    DmHandles(const DmHandles&) = delete;
    DmHandles& operator=(const DmHandles&) = delete;
    ~DmHandles() {
        if (fmem) xenforeignmemory_close(fmem);
        if (dm) xendevicemodel_close(dm);
    }
};

std::string dom_str(DomId d) { return "dom " + std::to_string(d); }

class DmIoreqServer final : public IoreqServer {
public:
    DmIoreqServer(std::shared_ptr<DmHandles> h, std::shared_ptr<Counters> c, DomId domid, unsigned vcpus)
        : h_(std::move(h)), c_(std::move(c)), domid_(domid), vcpus_(vcpus) {}

    ~DmIoreqServer() override { teardown(); }

    /// Runs the setup order of xen-facts.md §2.5; on failure the caller
    /// destroys the object, which undoes the steps already done.
    Result<void> setup(bool buffered) {
        const std::string who = "ioreq server for " + dom_str(domid_);
        // 1. Create. public/hvm/dm_op.h: with BUFIOREQ_OFF the buffered ring is
        // not allocated and every request is synchronous (all virtio needs).
        const int bufmode = buffered ? HVM_IOREQSRV_BUFIOREQ_ATOMIC : HVM_IOREQSRV_BUFIOREQ_OFF;
        ioservid_t id = 0;
        errno = 0;
        if (xendevicemodel_create_ioreq_server(h_->dm, domid_, bufmode, &id) != 0)
            return call_error("xendevicemodel_create_ioreq_server", errno, "create " + who, CallKind::DeviceModel);
        id_ = id;
        created_ = true;

        // 2. Map the ioreq page(s) with acquire_resource. public/memory.h:
        // frame 0 is the buffered page (exists only with bufioreq, else
        // ENOENT), frames 1.. hold 128 ioreq slots each.
        pages_ = ioreq_page_count(vcpus_);
        const unsigned long first =
            buffered ? XENMEM_resource_ioreq_server_frame_bufioreq : XENMEM_resource_ioreq_server_frame_ioreq(0);
        const unsigned long nr = pages_ + (buffered ? 1 : 0);
        void* addr = nullptr;
        errno = 0;
        res_ = xenforeignmemory_map_resource(h_->fmem, domid_, XENMEM_resource_ioreq_server, id_, first, nr, &addr,
                                             PROT_READ | PROT_WRITE, 0);
        if (!res_)
            return call_error("xenforeignmemory_map_resource", errno,
                              "map " + std::to_string(nr) + " ioreq page(s) of server " + std::to_string(id_) +
                                  " for " + dom_str(domid_),
                              CallKind::ForeignMemory);
        c_->resource_maps.fetch_add(1, std::memory_order_relaxed);
        auto* base = static_cast<std::byte*>(addr);
        if (buffered) {
            buf_page_ = base;
            slots_ = base + kPageSize;
        } else {
            slots_ = base;
        }

        // 3. Enable: the vp_eport fields are valid only from here on.
        errno = 0;
        if (xendevicemodel_set_ioreq_server_state(h_->dm, domid_, id_, 1) != 0)
            return call_error("xendevicemodel_set_ioreq_server_state(1)", errno, "enable " + who,
                              CallKind::DeviceModel);

        // 4. One event-channel handle for all vCPU ports of this server.
        auto ev = open_evtchn();
        if (!ev) return std::move(ev).error();
        evt_ = std::move(*ev);
        // Not restricted here: the worker's xentoolcore_restrict_all() does
        // it for every handle, and Linux refuses a second
        // IOCTL_EVTCHN_RESTRICT_DOMID on the same handle with EACCES
        // (drivers/xen/evtchn.c), which made restrict_all fail and every
        // worker refuse to serve (R5) on real Xen.
        for (unsigned v = 0; v < vcpus_; ++v) {
            Port remote = detail::slot_port(slot(v));
            if (remote == 0)
                return make_error(std::errc::protocol_error,
                                  who + ": vCPU " + std::to_string(v) + " has no ioreq event channel (vp_eport 0)");
            auto local = evt_->bind_interdomain(domid_, remote);
            if (!local) return Error{local.error().code, who + ": vCPU " + std::to_string(v) + ": " +
                                                             local.error().message};
            if (!ports_.add(*local, v))
                return make_error(std::errc::protocol_error,
                                  who + ": local port " + std::to_string(*local) + " bound twice");
            vcpu_ports_.push_back(*local);
        }
        if (buffered) {
            evtchn_port_t bport = 0;
            errno = 0;
            if (xendevicemodel_get_ioreq_server_info(h_->dm, domid_, id_, nullptr, nullptr, &bport) != 0)
                return call_error("xendevicemodel_get_ioreq_server_info", errno, "buffered port of " + who,
                                  CallKind::DeviceModel);
            auto local = evt_->bind_interdomain(domid_, bport);
            if (!local) return Error{local.error().code, who + ": buffered ioreq port: " + local.error().message};
            buf_port_ = *local;
        }
        spdlog::info("xen: ioreq server {} for {} serving {} vCPU(s) ({} page(s){})", id_, dom_str(domid_), vcpus_,
                     pages_, buffered ? ", buffered" : "");
        return ok();
    }

    IoServId id() const override { return id_; }
    DomId domid() const override { return domid_; }
    unsigned vcpus() const override { return vcpus_; }
    int fd() const override { return evt_ ? evt_->fd() : -1; }

    Result<unsigned> serve_pending(const IoreqHandler& handler) override {
        if (!evt_) return make_error(std::errc::bad_file_descriptor, "ioreq server not set up");
        unsigned served = 0;
        // Bounded: at most a few events per port per call; the rest stays
        // readable on fd() for the next call.
        const std::size_t budget = 4 * (ports_.size() + 1);
        for (std::size_t i = 0; i < budget; ++i) {
            auto p = evt_->pending();
            if (!p) return std::move(p).error();
            if (!p->has_value()) break;
            const Port port = **p;
            if (auto u = evt_->unmask(port); !u)
                XV_LOG_LIMITED(rl_, spdlog::level::warn, "xen: dom {} ioreq server {}: {}", domid_, id_,
                               u.error().describe());
            if (buf_port_ && port == *buf_port_) {
                auto d = drain_buffered_ring(buf_page_, handler, 2 * IOREQ_BUFFER_SLOT_NUM);
                if (d.corrupt)
                    XV_LOG_LIMITED(rl_, spdlog::level::warn,
                                   "xen: dom {} ioreq server {}: buffered ring pointers inconsistent", domid_, id_);
                served += d.served;
                continue;
            }
            auto v = ports_.vcpu_of(port);
            if (!v) {
                XV_LOG_LIMITED(rl_, spdlog::level::warn, "xen: dom {} ioreq server {}: event on unknown port {}",
                               domid_, id_, port);
                continue;
            }
            // public/hvm/ioreq.h: only a READY slot is ours; anything else is
            // a spurious or repeated event (or one whose ioreq serve_ready()
            // answered already).
            if (serve_slot(*v, port, handler)) ++served;
        }
        return served;
    }

    bool any_ready() const noexcept override {
        // Only the state of each slot, read with acquire (ioreq_slot.h); the
        // fields are read by take_request() after its own acquire.
        return slots_ && detail::any_slot_ready(slots_, vcpus_);
    }

    Result<unsigned> serve_ready(const IoreqHandler& handler) override {
        if (!evt_ || !slots_) return make_error(std::errc::bad_file_descriptor, "ioreq server not set up");
        unsigned served = 0;
        // Each slot once: a vCPU that traps again meanwhile is found by the
        // caller's next look. The events of these ioreqs stay pending on the
        // fd (their ports masked) until serve_pending() reads them.
        for (unsigned v = 0; v < vcpus_ && v < vcpu_ports_.size(); ++v)
            if (serve_slot(v, vcpu_ports_[v], handler)) ++served;
        return served;
    }

    Result<void> map_mmio(std::uint64_t start, std::uint64_t end) override {
        return range_op(true, start, end);
    }
    Result<void> unmap_mmio(std::uint64_t start, std::uint64_t end) override {
        return range_op(false, start, end);
    }

    Result<void> map_pcidev(Sbdf sbdf) override { return pcidev_op(true, sbdf); }
    Result<void> unmap_pcidev(Sbdf sbdf) override { return pcidev_op(false, sbdf); }

private:
    volatile void* slot(unsigned vcpu) const {
        return slots_ + std::size_t(vcpu) * detail::kIoreqSlotSize;
    }

    /// The handshake of public/hvm/ioreq.h on vCPU `v`'s slot: takes it if
    /// READY (state read with acquire, then the fields, copied once),
    /// answers it, writes IORESP_READY with release and notifies `port`
    /// (Xen resumes the vCPU on that event). False when it was not READY.
    bool serve_slot(unsigned v, Port port, const IoreqHandler& handler) {
        volatile void* s = slot(v);
        IoRequest req;
        if (!detail::take_request(s, v, req)) return false;
        std::uint64_t value = 0;
        // IOREQ_TYPE_INVALIDATE asks a device model to drop its map cache
        // of guest RAM; we map no guest RAM, so it is only acknowledged.
        if (req.type != IoreqType::Invalidate) value = handler(req);
        detail::complete_request(s, req, value);
        if (auto n = evt_->notify(port); !n)
            XV_LOG_LIMITED(rl_, spdlog::level::warn, "xen: dom {} ioreq server {} vCPU {}: {}", domid_, id_, v,
                           n.error().describe());
        return true;
    }

    Result<void> range_op(bool map, std::uint64_t start, std::uint64_t end) {
        char buf[80];
        std::snprintf(buf, sizeof buf, "MMIO [%#llx, %#llx]", (unsigned long long)start, (unsigned long long)end);
        const std::string what = std::string(map ? "claim " : "release ") + buf + " for " + dom_str(domid_) +
                                 " on ioreq server " + std::to_string(id_);
        // public/hvm/dm_op.h: ranges are inclusive, start <= end.
        if (start > end) return make_error(std::errc::invalid_argument, what + ": start above end");
        errno = 0;
        int rc = map ? xendevicemodel_map_io_range_to_ioreq_server(h_->dm, domid_, id_, 1, start, end)
                     : xendevicemodel_unmap_io_range_from_ioreq_server(h_->dm, domid_, id_, 1, start, end);
        if (rc != 0)
            return call_error(map ? "xendevicemodel_map_io_range_to_ioreq_server"
                                  : "xendevicemodel_unmap_io_range_from_ioreq_server",
                              errno, what, CallKind::DeviceModel);
        return ok();
    }

    Result<void> pcidev_op(bool map, Sbdf s) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%04x:%02x:%02x.%x", s.segment, s.bus, s.device, s.function);
        const std::string what = std::string(map ? "claim PCI " : "release PCI ") + buf + " for " +
                                 dom_str(domid_) + " on ioreq server " + std::to_string(id_);
        // XEN_DMOP_PCI_SBDF: device is 5 bits, function 3 bits.
        if (s.device > 31 || s.function > 7) return make_error(std::errc::invalid_argument, what + ": bad SBDF");
        errno = 0;
        int rc = map ? xendevicemodel_map_pcidev_to_ioreq_server(h_->dm, domid_, id_, s.segment, s.bus, s.device,
                                                                 s.function)
                     : xendevicemodel_unmap_pcidev_from_ioreq_server(h_->dm, domid_, id_, s.segment, s.bus,
                                                                     s.device, s.function);
        if (rc != 0)
            return call_error(map ? "xendevicemodel_map_pcidev_to_ioreq_server"
                                  : "xendevicemodel_unmap_pcidev_from_ioreq_server",
                              errno, what, CallKind::DeviceModel);
        return ok();
    }

    void teardown() noexcept {
        // Unbind every port (closing the handle unbinds the rest).
        if (evt_) {
            for (Port p : ports_.ports()) (void)evt_->unbind(p);
            if (buf_port_) (void)evt_->unbind(*buf_port_);
            evt_.reset();
        }
        if (res_) {
            if (xenforeignmemory_unmap_resource(h_->fmem, res_) != 0)
                spdlog::error("xen: unmap of ioreq pages of server {} for {} failed: errno {}", id_, dom_str(domid_),
                              errno);
            res_ = nullptr;
            slots_ = nullptr;
            buf_page_ = nullptr;
        }
        if (created_) {
            // public/hvm/dm_op.h: destroying deregisters every I/O range.
            if (xendevicemodel_destroy_ioreq_server(h_->dm, domid_, id_) != 0) {
                int err = errno;
                // ESRCH: the guest is already gone, and the server with it.
                if (err != ESRCH)
                    spdlog::error("xen: destroy of ioreq server {} for {} failed: errno {} ({})", id_,
                                  dom_str(domid_), err, std::strerror(err));
            }
            created_ = false;
        }
    }

    std::shared_ptr<DmHandles> h_;
    std::shared_ptr<Counters> c_;
    DomId domid_;
    unsigned vcpus_;
    IoServId id_ = 0;
    bool created_ = false;
    unsigned pages_ = 0;
    xenforeignmemory_resource_handle* res_ = nullptr;
    std::byte* slots_ = nullptr;
    std::byte* buf_page_ = nullptr;
    std::unique_ptr<EventChannels> evt_;
    PortMap ports_;
    std::vector<Port> vcpu_ports_;  ///< local port of each vCPU's slot, by vCPU
    std::optional<Port> buf_port_;
    log::RateLimit rl_;
};

class DmModel final : public DeviceModel {
public:
    DmModel(std::shared_ptr<DmHandles> h, std::shared_ptr<Counters> c) : h_(std::move(h)), c_(std::move(c)) {}

    Result<std::unique_ptr<IoreqServer>> create_ioreq_server(DomId domid, bool buffered) override {
        if (domid >= DOMID_FIRST_RESERVED)
            return make_error(std::errc::invalid_argument, "create ioreq server: reserved domid " +
                                                               std::to_string(domid));
        auto n = nr_vcpus(domid);
        if (!n) return std::move(n).error();
        auto srv = std::make_unique<DmIoreqServer>(h_, c_, domid, *n);
        if (auto r = srv->setup(buffered); !r) return std::move(r).error();  // srv's destructor undoes setup
        return std::unique_ptr<IoreqServer>(std::move(srv));
    }

    Result<void> destroy_ioreq_server(DomId domid, IoServId id) override {
        errno = 0;
        // public/hvm/dm_op.h: destroying deregisters every I/O range.
        if (xendevicemodel_destroy_ioreq_server(h_->dm, domid, id) != 0)
            return call_error("xendevicemodel_destroy_ioreq_server", errno,
                              "destroy ioreq server " + std::to_string(id) + " of " + dom_str(domid),
                              CallKind::DeviceModel);
        return ok();
    }

    Result<std::vector<IoServId>> ioreq_servers(DomId domid) override {
        std::vector<IoServId> out;
        for (IoServId id = 0; id < 8; ++id) {  // MAX_NR_IOREQ_SERVERS
            errno = 0;
            // No gfn pointers: XEN_DMOP_no_gfns, nothing is mapped.
            if (xendevicemodel_get_ioreq_server_info(h_->dm, domid, id, nullptr, nullptr, nullptr) == 0) {
                out.push_back(id);
                continue;
            }
            if (errno == ENOENT || errno == EPERM) continue;  // free, or another emulator domain's
            return call_error("xendevicemodel_get_ioreq_server_info", errno,
                              "ioreq server " + std::to_string(id) + " of " + dom_str(domid), CallKind::DeviceModel);
        }
        return out;
    }

    Result<void> set_irq_level(DomId domid, std::uint32_t irq, bool level) override {
        errno = 0;
        if (xendevicemodel_set_irq_level(h_->dm, domid, irq, level ? 1 : 0) != 0)
            return call_error("xendevicemodel_set_irq_level", errno,
                              "set SPI " + std::to_string(irq) + (level ? " high" : " low") + " for " + dom_str(domid),
                              CallKind::DeviceModel);
        return ok();
    }

    Result<void> inject_msi(DomId domid, std::uint64_t addr, std::uint32_t data) override {
        errno = 0;
        if (xendevicemodel_inject_msi(h_->dm, domid, addr, data) != 0) {
            char buf[64];
            std::snprintf(buf, sizeof buf, "inject MSI addr %#llx data %#x", (unsigned long long)addr, data);
            return call_error("xendevicemodel_inject_msi", errno, std::string(buf) + " for " + dom_str(domid),
                              CallKind::DeviceModel);
        }
        return ok();
    }

    Result<void> set_pci_intx_level(DomId domid, Sbdf sbdf, std::uint8_t intx, bool level) override {
        const std::string what = "set INT" + std::string(1, char('A' + (intx & 3))) + " of PCI " +
                                 std::to_string(sbdf.bus) + ":" + std::to_string(sbdf.device) + " for " + dom_str(domid);
        // public/hvm/dm_op.h xen_dm_op_set_pci_intx_level: intx 0..3, device 5 bits.
        if (intx > 3 || sbdf.device > 31) return make_error(std::errc::invalid_argument, what + ": bad INTx or device");
        errno = 0;
        if (xendevicemodel_set_pci_intx_level(h_->dm, domid, sbdf.segment, sbdf.bus, sbdf.device, intx,
                                              level ? 1 : 0) != 0)
            return call_error("xendevicemodel_set_pci_intx_level", errno, what, CallKind::DeviceModel);
        return ok();
    }

    Result<unsigned> nr_vcpus(DomId domid) override {
        unsigned n = 0;
        errno = 0;
        if (xendevicemodel_nr_vcpus(h_->dm, domid, &n) != 0)
            return call_error("xendevicemodel_nr_vcpus", errno, "vCPU count of " + dom_str(domid),
                              CallKind::DeviceModel);
        if (n == 0 || n > kMaxVcpus)
            return make_error(std::errc::protocol_error,
                              "vCPU count of " + dom_str(domid) + ": Xen reported " + std::to_string(n));
        return n;
    }

    Result<void> restrict_to(DomId domid) override {
        errno = 0;
        if (xendevicemodel_restrict(h_->dm, domid) != 0)
            return call_error("xendevicemodel_restrict", errno, "restrict device-model handle to " + dom_str(domid),
                              CallKind::DeviceModel);
        errno = 0;
        if (xenforeignmemory_restrict(h_->fmem, domid) != 0)
            return call_error("xenforeignmemory_restrict", errno, "restrict foreign-memory handle to " +
                                                                     dom_str(domid),
                              CallKind::ForeignMemory);
        return ok();
    }

private:
    std::shared_ptr<DmHandles> h_;
    std::shared_ptr<Counters> c_;
};

}  // namespace

Result<std::unique_ptr<DeviceModel>> open_devicemodel(std::shared_ptr<Counters> c) {
    auto h = std::make_shared<DmHandles>();
    errno = 0;
    h->dm = xendevicemodel_open(tool_logger(), 0);
    if (!h->dm) return call_error("xendevicemodel_open", errno, "open the device-model interface", CallKind::DeviceModel);
    errno = 0;
    h->fmem = xenforeignmemory_open(tool_logger(), 0);
    if (!h->fmem)
        return call_error("xenforeignmemory_open", errno, "open the foreign-memory interface (for ioreq pages)",
                          CallKind::ForeignMemory);
    return std::unique_ptr<DeviceModel>(new DmModel(std::move(h), std::move(c)));
}

}  // namespace xv::xen::libxen
