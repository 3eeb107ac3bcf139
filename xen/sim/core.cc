// SPDX-License-Identifier: GPL-2.0-only
// xen/sim core: domains, guest memory, grant tables, interrupts and the
// vCPU side of the ioreq handshake.
#include "core.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "../common/ioreq_slot.h"
#include "xv/cpu_relax.h"
#include "xv/log.h"

namespace xv::xen::sim::detail {

namespace {
/// Turnaround samples kept per guest (a ring once full).
constexpr std::size_t kMaxTurnaroundSamples = 1u << 20;
/// Largest simulated guest RAM (pages): 16 GiB of address space, sparse.
constexpr std::uint64_t kMaxGuestPages = 1ull << 22;
}  // namespace

std::string dom_name(DomId d) { return "dom" + std::to_string(d); }

std::string hex(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
    return buf;
}

// ---------------------------------------------------------------------------
// ServerState

ServerState::ServerState(DomId d, IoServId i, unsigned n)
    : domid(d), id(i), vcpus(n), port_masked(n, 0), port_pending(n, 0), gen(n, 0), done_at(n) {
    page_bytes = ((std::size_t(n) * xv::xen::detail::kIoreqSlotSize + kPageSize - 1) / kPageSize) * kPageSize;
    if (page_bytes == 0) page_bytes = kPageSize;
    page = std::aligned_alloc(kPageSize, page_bytes);
    if (page) std::memset(page, 0, page_bytes);
    fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

ServerState::~ServerState() {
    std::free(page);
    if (fd >= 0) ::close(fd);
}

bool ServerState::notify_locked(unsigned v) {
    notifies.fetch_add(1, std::memory_order_relaxed);
    // Linux drivers/xen/evtchn.c: the upcall of a user-bound port disables
    // (masks) it and queues it for read(); Xen's later notifications of a
    // masked port only set its pending bit (xen/common/event_channel.c).
    if (port_masked[v]) {
        port_pending[v] = 1;
        return false;
    }
    port_masked[v] = 1;
    deliveries.fetch_add(1, std::memory_order_relaxed);
    return true;
}

void ServerState::signal_fd() {
    std::uint64_t one = 1;
    ssize_t w = ::write(fd, &one, sizeof one);
    (void)w;  // EAGAIN only when the counter is saturated: still readable
}

bool ServerState::unmask_all_locked() {
    // Writing the ports back to the evtchn device unmasks them; a port
    // whose event is pending is delivered again at once.
    bool again = false;
    for (unsigned v = 0; v < vcpus; ++v) {
        if (!port_masked[v]) continue;
        port_masked[v] = 0;
        if (port_pending[v]) {
            port_pending[v] = 0;
            port_masked[v] = 1;
            deliveries.fetch_add(1, std::memory_order_relaxed);
            again = true;
        }
    }
    return again;
}

// ---------------------------------------------------------------------------
// Domain

Domain::~Domain() {
    if (mem) ::munmap(mem, pages * kPageSize);
    if (memfd >= 0) ::close(memfd);
}

// ---------------------------------------------------------------------------
// Core

Core::Core(SimOptions o) : opts(std::move(o)), store(make_store()) {
    // Dom0 always exists (the toolstack's domain); it has no simulated RAM.
    auto d0 = std::make_shared<Domain>();
    d0->id = 0;
    d0->name = "Domain-0";
    d0->vcpus = 1;
    d0->ports.resize(1);
    domains[0] = d0;
    store_domain_created(*store, 0, d0->name);
    if (opts.self_domid != 0) {
        DomainConfig cfg;
        cfg.name = "driver-" + std::to_string(opts.self_domid);
        cfg.memory_pages = 16;
        cfg.vcpus = 1;
        (void)create_domain(cfg, opts.self_domid);
    }
}

Core::~Core() = default;

Domain* Core::find_locked(DomId domid) const {
    auto it = domains.find(domid);
    return it == domains.end() ? nullptr : it->second.get();
}

Result<Domain*> Core::live_locked(DomId domid, const char* what) const {
    Domain* d = find_locked(domid);
    if (!d || d->dying) return errno_error(ESRCH, std::string(what) + ": " + dom_name(domid) + " does not exist");
    return d;
}

Result<void> Core::check_restrict_locked(DomId domid, const std::optional<DomId>& handle_restrict,
                                         const char* what) const {
    if (restricted && *restricted != domid)
        return errno_error(EPERM, std::string(what) + ": process is restricted to " + dom_name(*restricted) +
                                      ", refusing " + dom_name(domid));
    if (handle_restrict && *handle_restrict != domid)
        return errno_error(EPERM, std::string(what) + ": handle is restricted to " + dom_name(*handle_restrict) +
                                      ", refusing " + dom_name(domid));
    return ok();
}

Result<void> Core::check_xsm_locked(DomId guest, const char* what) const {
    // lab-notes.md: XSM SILO refuses event channels and grant maps between
    // two DomUs unless one is the control domain.
    if (opts.xsm == XsmMode::Silo && opts.self_domid != 0 && guest != 0)
        return errno_error(EPERM, std::string(what) + ": XSM SILO forbids " + dom_name(opts.self_domid) + " <-> " +
                                      dom_name(guest));
    return ok();
}

Result<void> Core::check_dm_priv_locked(DomId guest, const char* what) const {
    if (opts.self_domid == 0) return ok();
    // lab-notes.md: a driver domain needs xc_domain_set_target(drvdom, guest).
    const Domain* self = find_locked(opts.self_domid);
    if (self && self->target && *self->target == guest) return ok();
    return errno_error(EPERM, std::string(what) + ": " + dom_name(opts.self_domid) +
                                  " has no device-model privilege over " + dom_name(guest) +
                                  " (set_target not done)");
}

void Core::maybe_release_locked(DomId domid) {
    auto it = domains.find(domid);
    if (it == domains.end()) return;
    Domain& d = *it->second;
    bool unmapped;
    {
        std::lock_guard g(d.grant_mu);
        unmapped = d.mapped_pages == 0;
    }
    if (!d.dying || !unmapped) return;
    // Xen keeps a device model's reference on its target until the device
    // model itself is destroyed (xen/common/domctl.c XEN_DOMCTL_set_target,
    // put in complete_domain_destroy): the target stays a zombie till then.
    for (auto& [id, other] : domains)
        if (id != domid && other->target && *other->target == domid) return;
    const std::optional<DomId> held = d.target;
    domains.erase(it);
    if (held) maybe_release_locked(*held);
}

Result<DomId> Core::create_domain(const DomainConfig& cfg, std::optional<DomId> want) {
    if (cfg.vcpus == 0 || cfg.vcpus > 128)
        return errno_error(EINVAL, "create domain '" + cfg.name + "': vcpus must be 1..128");
    if (cfg.memory_pages > kMaxGuestPages)
        return errno_error(EINVAL, "create domain '" + cfg.name + "': too much memory");
    auto d = std::make_shared<Domain>();
    d->name = cfg.name;
    d->vcpus = cfg.vcpus;
    d->paused = cfg.paused;
    d->pages = cfg.memory_pages;
    d->ports.resize(1);  // port 0 is never handed out
    d->grants.resize(kFirstRef);
    for (unsigned i = 0; i < cfg.vcpus; ++i) d->vcpu_mu.push_back(std::make_unique<std::mutex>());
    if (d->pages) {
        std::string nm = "xv-sim-" + cfg.name;
        d->memfd = ::memfd_create(nm.c_str(), MFD_CLOEXEC);
        if (d->memfd < 0) return errno_error(errno, "create domain '" + cfg.name + "': memfd_create");
        if (::ftruncate(d->memfd, off_t(d->pages * kPageSize)) != 0)
            return errno_error(errno, "create domain '" + cfg.name + "': ftruncate");
        void* p = ::mmap(nullptr, d->pages * kPageSize, PROT_READ | PROT_WRITE, MAP_SHARED, d->memfd, 0);
        if (p == MAP_FAILED) return errno_error(errno, "create domain '" + cfg.name + "': mmap guest RAM");
        d->mem = static_cast<std::byte*>(p);
    }
    DomId id;
    {
        std::lock_guard lk(mu);
        if (want) {
            if (domains.count(*want)) return errno_error(EEXIST, "create domain: " + dom_name(*want) + " exists");
            id = *want;
        } else {
            unsigned tries = 0;
            while (domains.count(next_domid) || next_domid == 0 || next_domid >= kDomIdSelf) {
                if (++tries > 0x7ff0) return errno_error(ENOSPC, "create domain: no free domid");
                next_domid = DomId(next_domid >= kDomIdSelf - 1 ? 1 : next_domid + 1);
            }
            id = next_domid;
            next_domid = DomId(next_domid + 1 >= kDomIdSelf ? 1 : next_domid + 1);
        }
        d->id = id;
        domains[id] = d;
    }
    store_domain_created(*store, id, cfg.name);
    spdlog::debug("sim: created {} '{}' ({} pages, {} vCPUs)", dom_name(id), cfg.name, cfg.memory_pages, cfg.vcpus);
    return id;
}

Result<void> Core::destroy_domain(DomId domid) {
    std::vector<std::shared_ptr<ServerState>> servers;
    {
        std::lock_guard lk(mu);
        if (domid == 0 || domid == opts.self_domid)
            return errno_error(EPERM, "destroy " + dom_name(domid) + ": refusing to destroy the backend's domain");
        Domain* d = find_locked(domid);
        if (!d) return errno_error(ESRCH, "destroy " + dom_name(domid) + ": no such domain");
        if (d->dying) return errno_error(ESRCH, "destroy " + dom_name(domid) + ": already dying");
        {
            std::lock_guard g(d->grant_mu);  // grant unmaps read `dying` under it alone
            d->dying = true;
        }
        servers = std::move(d->servers);
        d->servers.clear();
        // Close the guest's event channels: backend ends stay bound but dead.
        for (auto& p : d->ports) {
            if (p.state == PortEntry::Interdomain) {
                Domain* r = find_locked(p.remote_dom);
                if (r && p.remote_port < r->ports.size()) r->ports[p.remote_port].remote_closed = true;
            }
            p = PortEntry{};
        }
        // A device model keeps its target (and the reference on it) when
        // the target is destroyed: a domain has one target for life.
        maybe_release_locked(domid);
    }
    for (auto& s : servers) {
        {
            // Xen destroys a domain's servers with it: a stale one (its
            // process died) is gone now; a live one is counted until its
            // IoreqServer object goes.
            std::lock_guard lk(mu);
            if (s->orphaned) {
                s->orphaned = false;
                --res.ioreq_servers;
                --res.stale_ioreq_servers;
            }
        }
        std::lock_guard sl(s->mu);
        s->stopped = true;
        s->stop_reason = dom_name(domid) + " was destroyed";
        s->cv.notify_all();
    }
    irq_cv.notify_all();
    evt_cv.notify_all();
    store_domain_released(*store, domid);
    spdlog::debug("sim: destroyed {}", dom_name(domid));
    return ok();
}

Result<void> Core::set_target(DomId dm, DomId guest) {
    std::string what = "set target of " + dom_name(dm) + " to " + dom_name(guest);
    {
        std::lock_guard lk(mu);
        auto br = live_locked(dm, what.c_str());
        if (!br) return std::move(br).error();
        auto gr = live_locked(guest, what.c_str());
        if (!gr) return std::move(gr).error();
        // lab-notes.md: a domain has one target; a second call gives EINVAL.
        if (dm == guest || (*br)->target) return errno_error(EINVAL, what + ": target already set");
        (*br)->target = guest;
    }
    return ok();
}

Result<GrantRef> Core::grant_range(DomId domid, std::uint64_t gfn, std::uint32_t n, DomId to, bool readonly) {
    std::lock_guard lk(mu);
    auto dr = live_locked(domid, "grant");
    if (!dr) return std::move(dr).error();
    Domain& d = **dr;
    if (n == 0) return errno_error(EINVAL, "grant: " + dom_name(domid) + ": zero frames");
    if (gfn >= d.pages || n > d.pages - gfn)
        return errno_error(EINVAL, "grant: " + dom_name(domid) + ": frames " + hex(gfn) + "+" + std::to_string(n) +
                                       " outside guest RAM");
    std::lock_guard g(d.grant_mu);
    // Find n consecutive free refs (first fit), as gnttab_alloc_grant_reference_seq.
    GrantRef start = kFirstRef;
    std::uint32_t run = 0;
    for (GrantRef r = kFirstRef; r < d.grants.size() && run < n; ++r) {
        if (d.grants[r].in_use) {
            run = 0;
            start = r + 1;
        } else {
            ++run;
        }
    }
    if (run < n) {
        // Extend the table at the end (the tail run continues into new entries).
        if (std::uint64_t(start) + n > kMaxRefs)
            return errno_error(ENOSPC, "grant: " + dom_name(domid) + ": grant table full");
        if (d.grants.size() < std::size_t(start) + n) d.grants.resize(std::size_t(start) + n);
    }
    for (std::uint32_t i = 0; i < n; ++i) {
        GrantEntry& e = d.grants[start + i];
        e = GrantEntry{};
        e.in_use = true;
        e.readonly = readonly;
        e.to = to;
        e.gfn = gfn + i;
    }
    return start;
}

// ---------------------------------------------------------------------------
// Interrupts

Result<void> Core::raise_irq(DomId domid, const IrqEvent& ev, const std::optional<DomId>& handle_restrict) {
    std::vector<std::shared_ptr<std::function<void(const IrqEvent&)>>> cbs;
    {
        std::lock_guard lk(mu);
        XV_TRY(check_restrict_locked(domid, handle_restrict, "raise interrupt"));
        auto dr = live_locked(domid, "raise interrupt");
        if (!dr) return std::move(dr).error();
        XV_TRY(check_dm_priv_locked(domid, "raise interrupt"));
        Domain& d = **dr;
        switch (ev.kind) {
        case IrqEvent::Spi:
            // xen/arch/arm/dm.c: irq >= NR_LOCAL_IRQS && irq < vgic_num_irqs(d); level 0/1.
            if (ev.irq < kFirstSpi || ev.irq >= kSpiEnd)
                return errno_error(EINVAL, "set_irq_level " + dom_name(domid) + ": irq " + std::to_string(ev.irq) +
                                               " is not an SPI");
            break;
        case IrqEvent::Intx:
            if (ev.irq > 3)
                return errno_error(EINVAL, "set_pci_intx_level " + dom_name(domid) + ": intx " +
                                               std::to_string(ev.irq) + " is not A..D");
            break;
        case IrqEvent::Msi:
            break;
        }
        d.irq_log.push_back(ev);
        while (d.irq_log.size() > kIrqLogMax) d.irq_log.pop_front();
        if (ev.kind == IrqEvent::Msi) {
            ++d.irq_edges[kMsiIrq];
        } else {
            bool& lvl = d.irq_level[ev.irq];
            if (ev.level && !lvl) ++d.irq_edges[ev.irq];
            lvl = ev.level;
        }
        cbs = d.irq_cbs;
    }
    irq_cv.notify_all();
    for (auto& cb : cbs) (*cb)(ev);
    return ok();
}

// ---------------------------------------------------------------------------
// vCPU traps

Result<std::uint64_t> Core::vcpu_access(const std::shared_ptr<Domain>& d, unsigned vcpu, IoRequest req) {
    const char* kind = req.type == IoreqType::PciConfig ? "pci config" : "mmio";
    if (vcpu >= d->vcpus)
        return errno_error(EINVAL, std::string(kind) + " access: " + dom_name(d->id) + " has no vCPU " +
                                       std::to_string(vcpu));
    if (req.size != 1 && req.size != 2 && req.size != 4 && req.size != 8)
        return errno_error(EINVAL, std::string(kind) + " access: " + dom_name(d->id) + ": bad size " +
                                       std::to_string(req.size));
    if (req.size < 8) req.data &= (1ull << (req.size * 8)) - 1;
    req.vcpu = vcpu;
    std::lock_guard vl(*d->vcpu_mu[vcpu]);  // one access in flight per vCPU
    std::shared_ptr<ServerState> server;
    {
        std::lock_guard lk(mu);
        if (d->dying) return errno_error(ESRCH, std::string(kind) + " access: " + dom_name(d->id) + " is dying");
        for (auto& s : d->servers) {
            if (req.type == IoreqType::PciConfig) {
                auto sbdf = std::uint32_t(req.addr >> 32);
                if (std::find(s->pci.begin(), s->pci.end(), sbdf) != s->pci.end()) server = s;
            } else {
                // dm_op.h: a request goes to a server only if it falls
                // entirely within one of its ranges.
                std::uint64_t last = req.addr + req.size - 1;
                if (last < req.addr) continue;
                for (auto& [b, e] : s->mmio)
                    if (req.addr >= b && last <= e) server = s;
            }
            if (server) break;
        }
    }
    if (!server) {
        if (req.type == IoreqType::PciConfig)
            return errno_error(ENODEV, "pci config access by " + dom_name(d->id) + " vCPU " + std::to_string(vcpu) +
                                           ": no ioreq server claims SBDF " + hex(req.addr >> 32));
        return errno_error(EFAULT, "data abort: no ioreq server claims " + hex(req.addr) + " (" + dom_name(d->id) +
                                       " vCPU " + std::to_string(vcpu) + ")");
    }
    return run_on_server(d, server, req);
}

// How long a trapped vCPU polls (SimOptions::vcpu_spin, 50 us by default):
// a register access is answered within a few microseconds; a futex sleep
// and wake-up on a busy host costs more than that, and was the tail of the
// turnaround. The poll yields, so the backend's threads get the CPU.
void Core::spin_for_response(volatile void* slot, std::chrono::steady_clock::time_point until) {
    // Only reads the state (acquire); the answer is taken under the
    // server's mutex afterwards, as before.
    for (unsigned i = 1; xv::xen::detail::slot_state(slot) != xv::xen::detail::kStateRespReady; ++i) {
        if (i % 16 == 0) {
            if (std::chrono::steady_clock::now() >= until) return;
            std::this_thread::yield();
        } else {
            cpu_relax();
        }
    }
}

Result<std::uint64_t> Core::run_on_server(const std::shared_ptr<Domain>& d, const std::shared_ptr<ServerState>& s,
                                          IoRequest req) {
    using clock = std::chrono::steady_clock;
    const unsigned vcpu = req.vcpu;
    auto fail = [&](int err, const std::string& why) {
        return errno_error(err, "ioreq " + hex(req.addr) + " of " + dom_name(d->id) + " vCPU " +
                                    std::to_string(vcpu) + " (server " + std::to_string(s->id) + "): " + why);
    };
    if (!s->page || s->fd < 0) return fail(ENOMEM, "server has no ioreq page");
    clock::time_point t0;
    bool deliver = false;
    {
        std::lock_guard sl(s->mu);
        if (s->stopped) return fail(ESRCH, "server stopped: " + s->stop_reason);
        volatile void* slot = s->slot(vcpu);
        if (xv::xen::detail::slot_state(slot) != xv::xen::detail::kStateNone) xv::xen::detail::release_slot(slot);
        ++s->gen[vcpu];
        t0 = clock::now();
        // xen/common/ioreq.c ioreq_send: the request, state READY (after a
        // write barrier: post_request stores it with release), then the
        // notification of the vCPU's port.
        xv::xen::detail::post_request(slot, req, xv::xen::detail::slot_port(slot));
        deliver = s->notify_locked(vcpu);
    }
    if (deliver) s->signal_fd();
    if (opts.vcpu_spin.count() > 0) spin_for_response(s->slot(vcpu), t0 + opts.vcpu_spin);
    std::unique_lock sl(s->mu);
    volatile void* slot = s->slot(vcpu);
    bool done = s->cv.wait_until(sl, t0 + opts.ioreq_timeout, [&] {
        return s->stopped || xv::xen::detail::slot_state(slot) == xv::xen::detail::kStateRespReady;
    });
    if (xv::xen::detail::slot_state(slot) == xv::xen::detail::kStateRespReady) {
        auto t1 = clock::now();
        const auto done_at = std::min(t1, std::max(t0, s->done_at[vcpu]));
        std::uint64_t v = req.is_write ? 0 : xv::xen::detail::slot_data(slot);
        xv::xen::detail::release_slot(slot);
        sl.unlock();
        if (!req.is_write && req.size < 8) v &= (1ull << (req.size * 8)) - 1;
        const double us = std::chrono::duration<double, std::micro>(t1 - t0).count();
        const double done_us = std::chrono::duration<double, std::micro>(done_at - t0).count();
        std::lock_guard st(d->stats_mu);
        if (d->turnaround_us.size() < kMaxTurnaroundSamples) {
            d->turnaround_us.push_back(us);
            d->completed_us.push_back(done_us);
        } else {
            d->turnaround_us[d->turnaround_next] = us;
            d->completed_us[d->turnaround_next] = done_us;
            d->turnaround_next = (d->turnaround_next + 1) % kMaxTurnaroundSamples;
        }
        return v;
    }
    // Not completed: take the slot back so a late answer is ignored.
    ++s->gen[vcpu];
    xv::xen::detail::release_slot(slot);
    if (s->stopped) return fail(ESRCH, "server stopped: " + s->stop_reason);
    (void)done;
    return fail(ETIMEDOUT, "ioreq not completed within " + std::to_string(opts.ioreq_timeout.count()) + " ms");
}

Result<void> Core::vcpu_invalidate(const std::shared_ptr<Domain>& d, unsigned vcpu) {
    if (vcpu >= d->vcpus)
        return errno_error(EINVAL, "invalidate: " + dom_name(d->id) + " has no vCPU " + std::to_string(vcpu));
    std::lock_guard vl(*d->vcpu_mu[vcpu]);
    std::vector<std::shared_ptr<ServerState>> servers;
    {
        std::lock_guard lk(mu);
        if (d->dying) return errno_error(ESRCH, "invalidate: " + dom_name(d->id) + " is dying");
        servers = d->servers;
    }
    // xen/common/ioreq.c send_invalidate_req: type INVALIDATE, size 4,
    // dir WRITE, data ~0, broadcast to every server.
    IoRequest req;
    req.vcpu = vcpu;
    req.type = IoreqType::Invalidate;
    req.is_write = true;
    req.size = 4;
    req.data = ~0ull;
    for (auto& s : servers) XV_TRY(run_on_server(d, s, req));
    return ok();
}

}  // namespace xv::xen::sim::detail
