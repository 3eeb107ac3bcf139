// SPDX-License-Identifier: GPL-2.0-only
// xen/sim SimGuest: the guest side of one simulated domain (its RAM, grant
// table, event channels, trapping vCPUs and interrupt log).
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "../common/ioreq_slot.h"
#include "core.h"

namespace xv::xen::sim::detail {
namespace {

class SimGuestImpl final : public SimGuest {
public:
    SimGuestImpl(std::shared_ptr<Core> core, std::shared_ptr<Domain> dom)
        : core_(std::move(core)), d_(std::move(dom)) {}

    DomId domid() const override { return d_->id; }
    const std::string& name() const override { return d_->name; }
    unsigned vcpus() const override { return d_->vcpus; }

    // --- memory ---------------------------------------------------------------
    Result<std::uint64_t> alloc_pages(std::uint64_t n) override {
        std::lock_guard lk(core_->mu);
        if (d_->dying) return errno_error(ESRCH, "alloc pages: " + dom_name(d_->id) + " is dying");
        if (n == 0 || n > d_->pages - d_->next_gfn)
            return errno_error(ENOMEM, "alloc " + std::to_string(n) + " pages in " + dom_name(d_->id) + ": only " +
                                           std::to_string(d_->pages - d_->next_gfn) + " left");
        std::uint64_t gfn = d_->next_gfn;
        d_->next_gfn += n;
        return gfn;
    }

    std::byte* gpa_ptr(std::uint64_t gpa) override {
        if (!d_->mem || gpa >= d_->pages * kPageSize) return nullptr;
        return d_->mem + gpa;
    }

    Result<void> write(std::uint64_t gpa, std::span<const std::byte> data) override {
        XV_TRY(check_range(gpa, data.size(), "write"));
        if (!data.empty()) std::memcpy(d_->mem + gpa, data.data(), data.size());
        return ok();
    }

    Result<void> read(std::uint64_t gpa, std::span<std::byte> out) override {
        XV_TRY(check_range(gpa, out.size(), "read"));
        if (!out.empty()) std::memcpy(out.data(), d_->mem + gpa, out.size());
        return ok();
    }

    // --- grants ---------------------------------------------------------------
    Result<GrantRef> grant(std::uint64_t gfn, DomId to, bool readonly) override {
        return core_->grant_range(d_->id, gfn, 1, to, readonly);
    }

    Result<GrantRef> grant_range(std::uint64_t gfn, std::uint32_t n, DomId to, bool readonly) override {
        return core_->grant_range(d_->id, gfn, n, to, readonly);
    }

    Result<void> end_access(GrantRef ref) override {
        std::lock_guard lk(core_->mu);
        std::lock_guard g(d_->grant_mu);
        std::string what = "end access to ref " + std::to_string(ref) + " of " + dom_name(d_->id);
        if (ref >= d_->grants.size() || !d_->grants[ref].in_use) return errno_error(EINVAL, what + ": not granted");
        GrantEntry& e = d_->grants[ref];
        // grant-dma-ops.c: "Grant still in use by backend domain".
        if (e.map_count) return errno_error(EBUSY, what + ": still mapped by the backend");
        e = GrantEntry{};
        return ok();
    }

    void revoke(GrantRef ref) override {
        std::lock_guard lk(core_->mu);
        std::lock_guard g(d_->grant_mu);
        if (ref >= d_->grants.size() || !d_->grants[ref].in_use) return;
        GrantEntry& e = d_->grants[ref];
        if (e.map_count)
            e.revoked = true;  // freed at the last unmap
        else
            e = GrantEntry{};
    }

    Result<std::uint64_t> alloc_dma(std::uint64_t len, DomId to, bool readonly, std::uint32_t offset) override {
        if (len == 0 || offset >= kPageSize)
            return errno_error(EINVAL, "alloc dma in " + dom_name(d_->id) + ": bad length or offset");
        std::uint64_t pages = (offset + len + kPageSize - 1) / kPageSize;
        if (pages > 0xffffffffull) return errno_error(ENOMEM, "alloc dma in " + dom_name(d_->id) + ": too large");
        auto gfn = alloc_pages(pages);
        if (!gfn) return std::move(gfn).error();
        auto ref = grant_range(*gfn, std::uint32_t(pages), to, readonly);
        if (!ref) return std::move(ref).error();
        return grant_dma::encode(*ref, offset);
    }

    std::byte* dma_ptr(std::uint64_t dma_addr) override {
        if (!grant_dma::is_grant(dma_addr)) return nullptr;
        std::uint64_t ref = grant_dma::first_ref(dma_addr);
        std::lock_guard lk(d_->grant_mu);
        if (ref >= d_->grants.size() || !d_->grants[ref].in_use || !d_->mem) return nullptr;
        return d_->mem + d_->grants[ref].gfn * kPageSize + grant_dma::offset(dma_addr);
    }

    std::uint64_t mapped_refs() const override {
        std::lock_guard lk(d_->grant_mu);
        return std::uint64_t(std::count_if(d_->grants.begin(), d_->grants.end(),
                                           [](const GrantEntry& e) { return e.in_use && e.map_count > 0; }));
    }

    // --- event channels ---------------------------------------------------------
    Result<Port> alloc_unbound(DomId remote) override {
        std::lock_guard lk(core_->mu);
        std::string what = "alloc unbound port of " + dom_name(d_->id) + " for " + dom_name(remote);
        if (d_->dying) return errno_error(ESRCH, what + ": domain is dying");
        if (!core_->find_locked(remote)) return errno_error(ESRCH, what + ": no such remote domain");
        Port port = 0;
        for (Port p = 1; p < d_->ports.size(); ++p)
            if (d_->ports[p].state == PortEntry::Free) {
                port = p;
                break;
            }
        if (port == 0) {
            if (d_->ports.size() >= kMaxPorts) return errno_error(ENOSPC, what + ": no free port");
            port = Port(d_->ports.size());
            d_->ports.emplace_back();
        }
        PortEntry& e = d_->ports[port];
        e = PortEntry{};
        e.state = PortEntry::Unbound;
        e.remote_dom = remote;
        return port;
    }

    Result<void> notify(Port port) override {
        std::lock_guard lk(core_->mu);
        std::string what = "notify port " + std::to_string(port) + " of " + dom_name(d_->id);
        if (d_->dying) return errno_error(ESRCH, what + ": domain is dying");
        if (port == 0 || port >= d_->ports.size() || d_->ports[port].state == PortEntry::Free)
            return errno_error(EINVAL, what + ": port not allocated");
        PortEntry& e = d_->ports[port];
        if (e.state != PortEntry::Interdomain) return ok();  // evtchn_send on an unbound port: dropped
        Domain* r = core_->find_locked(e.remote_dom);
        if (!r || e.remote_port >= r->ports.size()) return ok();
        PortEntry& re = r->ports[e.remote_port];
        if (re.state != PortEntry::Interdomain || !re.owner) return ok();
        evtchn_deliver_locked(re.owner, e.remote_port, re);
        return ok();
    }

    Result<void> close_port(Port port) override {
        std::lock_guard lk(core_->mu);
        if (port == 0 || port >= d_->ports.size() || d_->ports[port].state == PortEntry::Free)
            return errno_error(EINVAL, "close port " + std::to_string(port) + " of " + dom_name(d_->id) +
                                           ": not allocated");
        PortEntry& e = d_->ports[port];
        if (e.state == PortEntry::Interdomain) {
            Domain* r = core_->find_locked(e.remote_dom);
            if (r && e.remote_port < r->ports.size()) r->ports[e.remote_port].remote_closed = true;
        }
        e = PortEntry{};
        return ok();
    }

    std::uint64_t notifications(Port port) const override {
        std::lock_guard lk(core_->mu);
        return port < d_->ports.size() ? d_->ports[port].received : 0;
    }

    std::uint64_t wait_notification(Port port, std::uint64_t seen, std::chrono::milliseconds timeout) override {
        std::unique_lock lk(core_->mu);
        auto count = [&] { return port < d_->ports.size() ? d_->ports[port].received : 0; };
        core_->evt_cv.wait_for(lk, timeout, [&] { return count() > seen || d_->dying; });
        return count();
    }

    // --- vCPUs ------------------------------------------------------------------
    Result<std::uint64_t> mmio_read(unsigned vcpu, std::uint64_t addr, unsigned size) override {
        IoRequest r;
        r.type = IoreqType::Copy;
        r.addr = addr;
        r.size = size;
        return core_->vcpu_access(d_, vcpu, r);
    }

    Result<void> mmio_write(unsigned vcpu, std::uint64_t addr, unsigned size, std::uint64_t value) override {
        IoRequest r;
        r.type = IoreqType::Copy;
        r.is_write = true;
        r.addr = addr;
        r.size = size;
        r.data = value;
        auto res = core_->vcpu_access(d_, vcpu, r);
        if (!res) return std::move(res).error();
        return ok();
    }

    Result<std::uint64_t> pci_config_read(unsigned vcpu, Sbdf sbdf, std::uint32_t reg, unsigned size) override {
        IoRequest r;
        r.type = IoreqType::PciConfig;
        r.addr = pci_addr(sbdf, reg);
        r.size = size;
        return core_->vcpu_access(d_, vcpu, r);
    }

    Result<void> pci_config_write(unsigned vcpu, Sbdf sbdf, std::uint32_t reg, unsigned size,
                                  std::uint64_t value) override {
        IoRequest r;
        r.type = IoreqType::PciConfig;
        r.is_write = true;
        r.addr = pci_addr(sbdf, reg);
        r.size = size;
        r.data = value;
        auto res = core_->vcpu_access(d_, vcpu, r);
        if (!res) return std::move(res).error();
        return ok();
    }

    Result<void> invalidate(unsigned vcpu) override { return core_->vcpu_invalidate(d_, vcpu); }

    TurnaroundStats turnaround() const override {
        std::vector<double> v;
        {
            std::lock_guard lk(d_->stats_mu);
            v = d_->turnaround_us;
        }
        return percentiles(std::move(v));
    }

    TurnaroundStats completion() const override {
        std::vector<double> v;
        {
            std::lock_guard lk(d_->stats_mu);
            v = d_->completed_us;
        }
        return percentiles(std::move(v));
    }

    static TurnaroundStats percentiles(std::vector<double> v) {
        TurnaroundStats t;
        t.count = v.size();
        if (v.empty()) return t;
        std::sort(v.begin(), v.end());
        auto pct = [&](double p) {
            // Nearest rank.
            std::size_t rank = std::size_t(std::ceil(p * double(v.size())));
            if (rank == 0) rank = 1;
            return v[std::min(rank, v.size()) - 1];
        };
        t.p50_us = pct(0.50);
        t.p99_us = pct(0.99);
        t.p999_us = pct(0.999);
        t.max_us = v.back();
        return t;
    }

    void reset_turnaround() override {
        std::lock_guard lk(d_->stats_mu);
        d_->turnaround_us.clear();
        d_->completed_us.clear();
        d_->turnaround_next = 0;
    }

    // --- ioreq event channels ------------------------------------------------------
    IoreqEvents ioreq_events() const override {
        IoreqEvents e;
        std::lock_guard lk(core_->mu);
        for (const auto& s : d_->servers) {
            e.notifies += s->notifies.load(std::memory_order_relaxed);
            e.deliveries += s->deliveries.load(std::memory_order_relaxed);
            e.reads += s->event_reads.load(std::memory_order_relaxed);
        }
        return e;
    }

    Result<void> kick_ioreq_port(unsigned vcpu) override {
        if (vcpu >= d_->vcpus) return errno_error(EINVAL, "kick ioreq port: " + dom_name(d_->id) + " has no vCPU " +
                                                              std::to_string(vcpu));
        std::vector<std::shared_ptr<ServerState>> servers;
        {
            std::lock_guard lk(core_->mu);
            servers = d_->servers;
        }
        for (auto& s : servers) {
            bool deliver = false;
            {
                std::lock_guard sl(s->mu);
                if (s->stopped) continue;
                deliver = s->notify_locked(vcpu);
            }
            if (deliver) s->signal_fd();
        }
        return ok();
    }

    Result<void> post_raw_ioreq(unsigned vcpu, const RawIoreq& r) override {
        auto s = first_server(vcpu, "post raw ioreq");
        if (!s) return std::move(s).error();
        std::lock_guard vl(*d_->vcpu_mu[vcpu]);  // not while an access of this vCPU is in flight
        bool deliver = false;
        {
            std::lock_guard sl((*s)->mu);
            volatile void* slot = (*s)->slot(vcpu);
            xv::xen::detail::post_raw_request(slot, std::uint8_t(r.state & 0x0f), r.type, r.is_write, r.data_is_ptr,
                                              r.addr, r.data, r.size, r.count, xv::xen::detail::slot_port(slot));
            deliver = (*s)->notify_locked(vcpu);
        }
        if (deliver) (*s)->signal_fd();
        return ok();
    }

    Result<RawIoreq> raw_ioreq(unsigned vcpu) const override {
        auto s = first_server(vcpu, "read raw ioreq");
        if (!s) return std::move(s).error();
        std::lock_guard sl((*s)->mu);
        RawIoreq r;
        r.state = xv::xen::detail::slot_state((*s)->slot(vcpu));
        r.data = xv::xen::detail::slot_data((*s)->slot(vcpu));
        return r;
    }

    // --- interrupts ---------------------------------------------------------------
    std::vector<IrqEvent> irq_log() const override {
        std::lock_guard lk(core_->mu);
        return {d_->irq_log.begin(), d_->irq_log.end()};
    }

    std::uint64_t irq_count(std::uint32_t irq) const override {
        std::lock_guard lk(core_->mu);
        return count_locked(irq);
    }

    std::uint64_t wait_irq(std::uint32_t irq, std::uint64_t seen, std::chrono::milliseconds timeout) override {
        std::unique_lock lk(core_->mu);
        core_->irq_cv.wait_for(lk, timeout, [&] { return count_locked(irq) > seen || d_->dying; });
        return count_locked(irq);
    }

    void on_irq(std::function<void(const IrqEvent&)> cb) override {
        if (!cb) return;
        std::lock_guard lk(core_->mu);
        d_->irq_cbs.push_back(std::make_shared<std::function<void(const IrqEvent&)>>(std::move(cb)));
    }

private:
    Result<std::shared_ptr<ServerState>> first_server(unsigned vcpu, const char* what) const {
        if (vcpu >= d_->vcpus)
            return errno_error(EINVAL, std::string(what) + ": " + dom_name(d_->id) + " has no vCPU " +
                                           std::to_string(vcpu));
        std::lock_guard lk(core_->mu);
        if (d_->servers.empty() || !d_->servers.front()->page)
            return errno_error(ENOENT, std::string(what) + ": " + dom_name(d_->id) + " has no ioreq server");
        return d_->servers.front();
    }

    static std::uint64_t pci_addr(Sbdf s, std::uint32_t reg) {
        // public/hvm/ioreq.h: 63..48 SEGMENT | 47..40 BUS | 39..35 DEV | 34..32 FN | 31..0 OFFSET.
        std::uint64_t sbdf = (std::uint64_t(s.segment) << 16) | (std::uint64_t(s.bus) << 8) |
                             (std::uint64_t(s.device & 0x1f) << 3) | (s.function & 7u);
        return (sbdf << 32) | reg;
    }

    std::uint64_t count_locked(std::uint32_t irq) const {
        auto it = d_->irq_edges.find(irq);
        return it == d_->irq_edges.end() ? 0 : it->second;
    }

    Result<void> check_range(std::uint64_t gpa, std::size_t len, const char* op) const {
        std::uint64_t limit = d_->pages * kPageSize;
        if (!d_->mem || gpa > limit || len > limit - gpa)
            return errno_error(EFAULT, std::string(op) + " " + std::to_string(len) + " bytes at gpa " + hex(gpa) +
                                           " of " + dom_name(d_->id) + ": outside guest RAM");
        return ok();
    }

    std::shared_ptr<Core> core_;
    std::shared_ptr<Domain> d_;
};

}  // namespace

std::shared_ptr<SimGuest> make_guest(std::shared_ptr<Core> core, std::shared_ptr<Domain> dom) {
    return std::make_shared<SimGuestImpl>(std::move(core), std::move(dom));
}

}  // namespace xv::xen::sim::detail
