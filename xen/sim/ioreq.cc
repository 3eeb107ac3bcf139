// SPDX-License-Identifier: GPL-2.0-only
// xen/sim DeviceModel and IoreqServer: the backend side of the ioreq
// handshake (xen/common/ioreq_slot.h), MMIO/PCI claims and interrupts.
//
// Server lifecycle:
//
//   create_ioreq_server()          domain destroyed / ~IoreqServer
//   ---------------------> Enabled ------------------------------> Stopped
//    (page mapped, vp_eport set)     (waiting vCPUs fail, claims dropped)
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>

#include "../common/ioreq_slot.h"
#include "core.h"
#include "xv/log.h"

namespace xv::xen::sim::detail {
namespace {

constexpr std::uint32_t sbdf_code(Sbdf s) {
    // dm_op.h XEN_DMOP_PCI_SBDF.
    return (std::uint32_t(s.segment) << 16) | (std::uint32_t(s.bus) << 8) | (std::uint32_t(s.device & 0x1f) << 3) |
           (s.function & 7u);
}

class IoreqServerImpl final : public IoreqServer {
public:
    IoreqServerImpl(std::shared_ptr<Core> core, std::shared_ptr<ServerState> st)
        : core_(std::move(core)), st_(std::move(st)) {
        ++core_->res.ioreq_servers;
    }

    ~IoreqServerImpl() override {
        bool stays = false;
        {
            std::lock_guard lk(core_->mu);
            Domain* d = core_->find_locked(st_->domid);
            const bool in_xen = d && std::find(d->servers.begin(), d->servers.end(), st_) != d->servers.end();
            if (ProcessExit::active() && in_xen) {
                // The process died: its ioreq page and ports go with its
                // descriptors, the server and its ranges stay in Xen.
                stays = true;
                st_->orphaned = true;
                ++core_->res.stale_ioreq_servers;
            } else {
                // dm_op.h destroy_ioreq_server: "Any registered I/O ranges
                // will be automatically deregistered".
                if (d) d->servers.erase(std::remove(d->servers.begin(), d->servers.end(), st_), d->servers.end());
                st_->mmio.clear();
                st_->pci.clear();
            }
        }
        {
            std::lock_guard sl(st_->mu);
            if (!st_->stopped) {
                st_->stopped = true;
                st_->stop_reason = stays ? "the process serving the ioreq server died" : "ioreq server destroyed";
            }
            st_->cv.notify_all();
        }
        if (!stays) --core_->res.ioreq_servers;
    }

    IoServId id() const override { return st_->id; }
    DomId domid() const override { return st_->domid; }
    unsigned vcpus() const override { return st_->vcpus; }
    int fd() const override { return st_->fd; }

    Result<unsigned> serve_pending(const IoreqHandler& handler) override {
        // Reads the events first (later deliveries make fd readable again),
        // then unmasks their ports: an event that came while a port was
        // masked is delivered again, so it wakes the next wait on fd.
        std::uint64_t v;
        ssize_t r = ::read(st_->fd, &v, sizeof v);
        (void)r;
        st_->event_reads.fetch_add(1, std::memory_order_relaxed);
        bool again = false;
        {
            std::lock_guard sl(st_->mu);
            if (st_->stopped) return stopped_error();
            again = st_->unmask_all_locked();
        }
        if (again) st_->signal_fd();
        return serve_slots(handler);
    }

    bool any_ready() const noexcept override {
        return st_->page && xv::xen::detail::any_slot_ready(st_->page, st_->vcpus);
    }

    Result<unsigned> serve_ready(const IoreqHandler& handler) override { return serve_slots(handler); }

    Result<void> map_mmio(std::uint64_t start, std::uint64_t end) override {
        std::string what = "map mmio [" + hex(start) + ", " + hex(end) + "] of " + dom_name(st_->domid) + " to server " +
                           std::to_string(st_->id);
        if (end < start) return errno_error(EINVAL, what + ": end before start");
        std::lock_guard lk(core_->mu);
        auto dr = core_->live_locked(st_->domid, what.c_str());
        if (!dr) return std::move(dr).error();
        for (auto& s : (*dr)->servers)
            for (auto& [b, e] : s->mmio)
                if (start <= e && b <= end)
                    return errno_error(EEXIST, what + ": overlaps [" + hex(b) + ", " + hex(e) + "] of server " +
                                                   std::to_string(s->id));
        st_->mmio.emplace_back(start, end);
        return ok();
    }

    Result<void> unmap_mmio(std::uint64_t start, std::uint64_t end) override {
        std::lock_guard lk(core_->mu);
        auto it = std::find(st_->mmio.begin(), st_->mmio.end(), std::make_pair(start, end));
        if (it == st_->mmio.end())
            return errno_error(ENOENT, "unmap mmio [" + hex(start) + ", " + hex(end) + "] of " +
                                           dom_name(st_->domid) + ": not mapped by server " + std::to_string(st_->id));
        st_->mmio.erase(it);
        return ok();
    }

    Result<void> map_pcidev(Sbdf sbdf) override {
        std::string what = "map pci device " + hex(sbdf_code(sbdf)) + " of " + dom_name(st_->domid);
        if (sbdf.device > 31 || sbdf.function > 7) return errno_error(EINVAL, what + ": bad device/function");
        std::lock_guard lk(core_->mu);
        auto dr = core_->live_locked(st_->domid, what.c_str());
        if (!dr) return std::move(dr).error();
        std::uint32_t code = sbdf_code(sbdf);
        for (auto& s : (*dr)->servers)
            if (std::find(s->pci.begin(), s->pci.end(), code) != s->pci.end())
                return errno_error(EEXIST, what + ": already claimed by server " + std::to_string(s->id));
        st_->pci.push_back(code);
        return ok();
    }

    Result<void> unmap_pcidev(Sbdf sbdf) override {
        std::lock_guard lk(core_->mu);
        auto it = std::find(st_->pci.begin(), st_->pci.end(), sbdf_code(sbdf));
        if (it == st_->pci.end())
            return errno_error(ENOENT, "unmap pci device " + hex(sbdf_code(sbdf)) + " of " + dom_name(st_->domid) +
                                           ": not mapped");
        st_->pci.erase(it);
        return ok();
    }

private:
    /// With st_->mu held.
    Error stopped_error() const {
        return errno_error(ESRCH, "serve ioreqs of " + dom_name(st_->domid) + " server " + std::to_string(st_->id) +
                                      ": " + st_->stop_reason);
    }

    /// Serves every READY slot (public/hvm/ioreq.h handshake,
    /// xen/common/ioreq_slot.h), leaving the event channel alone.
    Result<unsigned> serve_slots(const IoreqHandler& handler) {
        unsigned served = 0;
        for (unsigned vcpu = 0; vcpu < st_->vcpus; ++vcpu) {
            // A slot that is not READY is passed over without the lock (the
            // state alone, acquire); take_request() checks it again under it.
            if (xv::xen::detail::slot_state(st_->slot(vcpu)) != xv::xen::detail::kStateReady) continue;
            IoRequest req;
            std::uint64_t gen;
            {
                std::lock_guard sl(st_->mu);
                if (st_->stopped) return stopped_error();
                if (!xv::xen::detail::take_request(st_->slot(vcpu), vcpu, req)) continue;
                gen = st_->gen[vcpu];
            }
            // The handler runs without the lock: the vCPU may time out meanwhile.
            std::uint64_t value = handler ? handler(req) : 0;
            bool answered = false;
            {
                std::lock_guard sl(st_->mu);
                volatile void* slot = st_->slot(vcpu);
                if (st_->gen[vcpu] == gen && xv::xen::detail::slot_state(slot) == xv::xen::detail::kStateInProcess) {
                    st_->done_at[vcpu] = std::chrono::steady_clock::now();
                    xv::xen::detail::complete_request(slot, req, value);
                    answered = true;
                }
            }
            // Wake a sleeping vCPU after unlocking, so that it does not
            // wake up only to wait for the mutex (a spinning one has seen
            // the state already).
            if (answered) st_->cv.notify_all();
            ++served;
        }
        return served;
    }


    std::shared_ptr<Core> core_;
    std::shared_ptr<ServerState> st_;
};

class DeviceModelImpl final : public DeviceModel {
public:
    explicit DeviceModelImpl(std::shared_ptr<Core> core) : core_(std::move(core)) { ++core_->res.open_handles; }
    ~DeviceModelImpl() override { --core_->res.open_handles; }

    /// What every device-model op on `domid` checks first, with core_->mu
    /// held: the handle's restriction, a live domain, device-model privilege.
    Result<Domain*> dm_domain_locked(DomId domid, const char* what) const {
        XV_TRY(core_->check_restrict_locked(domid, restrict_, what));
        auto dr = core_->live_locked(domid, what);
        if (!dr) return std::move(dr).error();
        XV_TRY(core_->check_dm_priv_locked(domid, what));
        return dr;
    }

    Result<std::unique_ptr<IoreqServer>> create_ioreq_server(DomId domid, bool buffered) override {
        (void)buffered;  // xen-facts §2.5: virtio never needs buffered ioreqs; none are sent
        std::string what = "create ioreq server for " + dom_name(domid);
        std::shared_ptr<ServerState> st;
        {
            std::lock_guard lk(core_->mu);
            auto dr = dm_domain_locked(domid, what.c_str());
            if (!dr) return std::move(dr).error();
            // lab-notes.md: under SILO the per-vCPU event channel is refused.
            XV_TRY(core_->check_xsm_locked(domid, what.c_str()));
            Domain& d = **dr;
            if (d.servers.size() >= 8) return errno_error(ENOSPC, what + ": too many ioreq servers");
            st = std::make_shared<ServerState>(domid, d.next_server++, d.vcpus);
            if (!st->page || st->fd < 0) return errno_error(ENOMEM, what + ": no ioreq page");
            // Enable: Xen fills vp_eport of each slot (one port per vCPU).
            for (unsigned v = 0; v < d.vcpus; ++v) xv::xen::detail::set_slot_port(st->slot(v), v + 1);
            d.servers.push_back(st);
        }
        ++core_->stats.resource_maps;  // the ioreq page, via acquire_resource
        return std::unique_ptr<IoreqServer>(std::make_unique<IoreqServerImpl>(core_, std::move(st)));
    }

    Result<void> destroy_ioreq_server(DomId domid, IoServId id) override {
        const std::string what = "destroy ioreq server " + std::to_string(id) + " of " + dom_name(domid);
        std::shared_ptr<ServerState> st;
        {
            std::lock_guard lk(core_->mu);
            auto dr = dm_domain_locked(domid, what.c_str());
            if (!dr) return std::move(dr).error();
            auto& list = (*dr)->servers;
            auto it = std::find_if(list.begin(), list.end(), [id](const auto& s) { return s->id == id; });
            if (it == list.end()) return errno_error(ENOENT, what + ": no such server");
            st = *it;
            list.erase(it);
            // dm_op.h: "Any registered I/O ranges will be automatically deregistered".
            st->mmio.clear();
            st->pci.clear();
            if (st->orphaned) {
                // No IoreqServer object is left to count it down.
                st->orphaned = false;
                --core_->res.ioreq_servers;
                --core_->res.stale_ioreq_servers;
            }
        }
        std::lock_guard sl(st->mu);
        st->stopped = true;
        st->stop_reason = "ioreq server destroyed";
        st->cv.notify_all();
        return ok();
    }

    Result<std::vector<IoServId>> ioreq_servers(DomId domid) override {
        std::lock_guard lk(core_->mu);
        auto dr = dm_domain_locked(domid, ("list ioreq servers of " + dom_name(domid)).c_str());
        if (!dr) return std::move(dr).error();
        std::vector<IoServId> out;
        for (const auto& st : (*dr)->servers) out.push_back(st->id);
        return out;
    }

    Result<void> set_irq_level(DomId domid, std::uint32_t irq, bool level) override {
        IrqEvent ev;
        ev.kind = IrqEvent::Spi;
        ev.irq = irq;
        ev.level = level;
        return core_->raise_irq(domid, ev, current_restrict());
    }

    Result<void> inject_msi(DomId domid, std::uint64_t addr, std::uint32_t data) override {
        IrqEvent ev;
        ev.kind = IrqEvent::Msi;
        ev.level = true;
        ev.msi_addr = addr;
        ev.msi_data = data;
        return core_->raise_irq(domid, ev, current_restrict());
    }

    Result<void> set_pci_intx_level(DomId domid, Sbdf sbdf, std::uint8_t intx, bool level) override {
        (void)sbdf;
        IrqEvent ev;
        ev.kind = IrqEvent::Intx;
        ev.irq = intx;
        ev.level = level;
        return core_->raise_irq(domid, ev, current_restrict());
    }

    Result<unsigned> nr_vcpus(DomId domid) override {
        std::lock_guard lk(core_->mu);
        auto dr = dm_domain_locked(domid, "nr_vcpus");
        if (!dr) return std::move(dr).error();
        return (*dr)->vcpus;
    }

    Result<void> restrict_to(DomId domid) override {
        std::lock_guard lk(core_->mu);
        if (restrict_ && *restrict_ != domid)
            return errno_error(EPERM, "restrict device model handle to " + dom_name(domid) + ": already restricted to " +
                                          dom_name(*restrict_));
        restrict_ = domid;
        return ok();
    }

private:
    std::optional<DomId> current_restrict() const {
        std::lock_guard lk(core_->mu);
        return restrict_;
    }

    std::shared_ptr<Core> core_;
    std::optional<DomId> restrict_;  ///< guarded by Core::mu
};

thread_local unsigned t_process_exit = 0;

}  // namespace

std::unique_ptr<DeviceModel> make_device_model(std::shared_ptr<Core> core) {
    return std::make_unique<DeviceModelImpl>(std::move(core));
}

}  // namespace xv::xen::sim::detail

namespace xv::xen::sim {

ProcessExit::ProcessExit() { ++detail::t_process_exit; }
ProcessExit::~ProcessExit() { --detail::t_process_exit; }
bool ProcessExit::active() { return detail::t_process_exit > 0; }

}  // namespace xv::xen::sim
