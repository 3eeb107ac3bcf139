// SPDX-License-Identifier: GPL-2.0-only
// xen/sim EventChannels: interdomain channels between the backend's domain
// and a guest, one eventfd per handle, masking as the Linux evtchn driver
// does (a delivered port stays masked until unmask()).
//
// Port state machine (per end, xen/common/event_channel.c):
//
//   Free --alloc_unbound--> Unbound --bind_interdomain--> Interdomain
//     ^                        ^                               |
//     |                        +-------- peer closes ----------+
//     +------------------------- close / unbind ---------------+
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <set>

#include "core.h"

namespace xv::xen::sim::detail {

class EvtchnHandle final : public EventChannels {
public:
    explicit EvtchnHandle(std::shared_ptr<Core> core) : core_(std::move(core)) {
        fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        ++core_->res.open_handles;
    }

    ~EvtchnHandle() override {
        {
            std::lock_guard lk(core_->mu);
            for (Port p : std::set<Port>(ports_)) unbind_locked(p);
        }
        if (fd_ >= 0) ::close(fd_);
        --core_->res.open_handles;
    }

    int fd() const override { return fd_; }

    Result<Port> bind_interdomain(DomId domid, Port remote_port) override {
        std::lock_guard lk(core_->mu);
        std::string what = "bind to port " + std::to_string(remote_port) + " of " + dom_name(domid);
        if (fd_ < 0) return errno_error(EBADF, what + ": handle has no eventfd");
        XV_TRY(core_->check_restrict_locked(domid, restrict_, what.c_str()));
        XV_TRY(core_->check_xsm_locked(domid, what.c_str()));
        auto rr = core_->live_locked(domid, what.c_str());
        if (!rr) return std::move(rr).error();
        Domain& remote = **rr;
        // event_channel.c evtchn_bind_interdomain: the remote port must be
        // unbound and allocated for us.
        if (remote_port == 0 || remote_port >= remote.ports.size() ||
            remote.ports[remote_port].state != PortEntry::Unbound)
            return errno_error(EINVAL, what + ": not an unbound port");
        if (remote.ports[remote_port].remote_dom != core_->opts.self_domid)
            return errno_error(EINVAL, what + ": port is allocated for " +
                                           dom_name(remote.ports[remote_port].remote_dom));
        Domain* self = core_->find_locked(core_->opts.self_domid);
        if (!self) return errno_error(ESRCH, what + ": backend domain is gone");
        Port local = 0;
        for (Port p = 1; p < self->ports.size(); ++p)
            if (self->ports[p].state == PortEntry::Free) {
                local = p;
                break;
            }
        if (local == 0) {
            if (self->ports.size() >= kMaxPorts) return errno_error(ENOSPC, what + ": no free local port");
            local = Port(self->ports.size());
            self->ports.emplace_back();
        }
        PortEntry& l = self->ports[local];
        l = PortEntry{};
        l.state = PortEntry::Interdomain;
        l.remote_dom = domid;
        l.remote_port = remote_port;
        l.owner = this;
        PortEntry& r = remote.ports[remote_port];
        r.state = PortEntry::Interdomain;
        r.remote_port = local;
        ports_.insert(local);
        ++core_->res.bound_ports;
        return local;
    }

    Result<void> unbind(Port local_port) override {
        std::lock_guard lk(core_->mu);
        if (!ports_.count(local_port))
            return errno_error(EINVAL, "unbind port " + std::to_string(local_port) + ": not bound through this handle");
        unbind_locked(local_port);
        return ok();
    }

    Result<void> notify(Port local_port) override {
        std::lock_guard lk(core_->mu);
        std::string what = "notify port " + std::to_string(local_port);
        if (!ports_.count(local_port)) return errno_error(EINVAL, what + ": not bound through this handle");
        Domain* self = core_->find_locked(core_->opts.self_domid);
        if (!self) return errno_error(ESRCH, what + ": backend domain is gone");
        PortEntry& l = self->ports[local_port];
        XV_TRY(core_->check_restrict_locked(l.remote_dom, restrict_, what.c_str()));
        // event_channel.c evtchn_send: sending on a port whose peer is gone
        // is silently dropped.
        if (l.remote_closed) return ok();
        Domain* remote = core_->find_locked(l.remote_dom);
        if (!remote || remote->dying || l.remote_port >= remote->ports.size()) return ok();
        ++remote->ports[l.remote_port].received;
        core_->evt_cv.notify_all();
        return ok();
    }

    Result<std::optional<Port>> pending() override {
        std::lock_guard lk(core_->mu);
        if (ring_.empty()) {
            drain();
            return std::optional<Port>{};
        }
        Port p = ring_.front();
        ring_.pop_front();
        if (ring_.empty()) drain();
        return std::optional<Port>{p};
    }

    Result<void> unmask(Port local_port) override {
        std::lock_guard lk(core_->mu);
        if (!ports_.count(local_port))
            return errno_error(EINVAL, "unmask port " + std::to_string(local_port) + ": not bound through this handle");
        Domain* self = core_->find_locked(core_->opts.self_domid);
        if (!self) return errno_error(ESRCH, "unmask: backend domain is gone");
        PortEntry& l = self->ports[local_port];
        l.masked = false;
        if (l.pending) {
            l.pending = false;
            deliver_locked(local_port, l);
        }
        return ok();
    }

    Result<void> restrict_to(DomId domid) override {
        std::lock_guard lk(core_->mu);
        if (restrict_ && *restrict_ != domid)
            return errno_error(EPERM, "restrict event channel handle to " + dom_name(domid) + ": already restricted to " +
                                          dom_name(*restrict_));
        restrict_ = domid;
        return ok();
    }

    std::size_t bound_ports() const override {
        std::lock_guard lk(core_->mu);
        return ports_.size();
    }

    /// A guest sent an event to our `local_port` (Core::mu held).
    void deliver_locked(Port local_port, PortEntry& l) {
        if (l.masked) {
            l.pending = true;
            return;
        }
        l.masked = true;
        ring_.push_back(local_port);
        std::uint64_t one = 1;
        ssize_t w = ::write(fd_, &one, sizeof one);
        (void)w;
    }

private:
    void drain() {
        std::uint64_t v;
        ssize_t r = ::read(fd_, &v, sizeof v);
        (void)r;
    }

    void unbind_locked(Port local) {
        ports_.erase(local);
        ring_.erase(std::remove(ring_.begin(), ring_.end(), local), ring_.end());
        --core_->res.bound_ports;
        Domain* self = core_->find_locked(core_->opts.self_domid);
        if (!self || local >= self->ports.size()) return;
        PortEntry& l = self->ports[local];
        if (!l.remote_closed) {
            // The guest's end goes back to unbound (for us), as on Xen.
            Domain* remote = core_->find_locked(l.remote_dom);
            if (remote && !remote->dying && l.remote_port < remote->ports.size()) {
                PortEntry& r = remote->ports[l.remote_port];
                if (r.state == PortEntry::Interdomain && r.remote_port == local) {
                    r.state = PortEntry::Unbound;
                    r.remote_port = 0;
                }
            }
        }
        l = PortEntry{};
    }

    std::shared_ptr<Core> core_;
    int fd_ = -1;
    std::set<Port> ports_;           ///< guarded by Core::mu
    std::deque<Port> ring_;          ///< delivered, not yet returned by pending()
    std::optional<DomId> restrict_;
};

void evtchn_deliver_locked(EvtchnHandle* h, Port local_port, PortEntry& entry) {
    if (h) h->deliver_locked(local_port, entry);
}

std::unique_ptr<EventChannels> make_event_channels(std::shared_ptr<Core> core) {
    return std::make_unique<EvtchnHandle>(std::move(core));
}

}  // namespace xv::xen::sim::detail
