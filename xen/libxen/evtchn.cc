// SPDX-License-Identifier: GPL-2.0-only
// EventChannels on libxenevtchn (xenevtchn.h, Xen 4.17).
extern "C" {  // the Xen 4.17 headers carry no extern "C" guards of their own
#include <xenevtchn.h>
#include <xen/xen.h>
}

#include <fcntl.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>

#include "libxen_impl.h"
#include "xv/log.h"

namespace xv::xen::libxen {
namespace {

class EvtchnChannels final : public EventChannels {
public:
    EvtchnChannels(xenevtchn_handle* h, int fd) : h_(h), fd_(fd) {}
    ~EvtchnChannels() override {
        std::lock_guard lk(mu_);
        for (Port p : bound_) {
            if (xenevtchn_unbind(h_, p) != 0)
                spdlog::debug("xen: unbind of event channel port {} at close failed: errno {}", p, errno);
        }
        bound_.clear();
        xenevtchn_close(h_);  // the kernel also unbinds anything left
    }

    int fd() const override { return fd_; }

    Result<Port> bind_interdomain(DomId domid, Port remote_port) override {
        const std::string what =
            "bind event channel to dom " + std::to_string(domid) + " port " + std::to_string(remote_port);
        if (domid >= DOMID_FIRST_RESERVED) return make_error(std::errc::invalid_argument, what + ": reserved domid");
        // public/event_channel.h: port 0 is never a valid channel.
        if (remote_port == 0) return make_error(std::errc::invalid_argument, what + ": port 0 is invalid");
        errno = 0;
        xenevtchn_port_or_error_t p = xenevtchn_bind_interdomain(h_, domid, remote_port);
        if (p < 0) return call_error("xenevtchn_bind_interdomain", errno, what, CallKind::EventChannel);
        std::lock_guard lk(mu_);
        bound_.insert(Port(p));
        return Port(p);
    }

    Result<void> unbind(Port local_port) override {
        std::lock_guard lk(mu_);
        if (!bound_.count(local_port))
            return make_error(std::errc::invalid_argument,
                              "unbind event channel port " + std::to_string(local_port) + ": not bound here");
        errno = 0;
        if (xenevtchn_unbind(h_, local_port) != 0)
            return call_error("xenevtchn_unbind", errno, "unbind port " + std::to_string(local_port),
                              CallKind::EventChannel);
        bound_.erase(local_port);
        return ok();
    }

    Result<void> notify(Port local_port) override {
        if (!is_bound(local_port))
            return make_error(std::errc::invalid_argument,
                              "notify event channel port " + std::to_string(local_port) + ": not bound here");
        errno = 0;
        if (xenevtchn_notify(h_, local_port) != 0)
            return call_error("xenevtchn_notify", errno, "notify port " + std::to_string(local_port),
                              CallKind::EventChannel);
        return ok();
    }

    Result<std::optional<Port>> pending() override {
        errno = 0;
        // The fd is O_NONBLOCK, so this read returns EAGAIN instead of waiting.
        xenevtchn_port_or_error_t p = xenevtchn_pending(h_);
        if (p < 0) {
            int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) return std::optional<Port>{};
            return call_error("xenevtchn_pending", err, "read pending event channel", CallKind::EventChannel);
        }
        return std::optional<Port>(Port(p));
    }

    Result<void> unmask(Port local_port) override {
        if (!is_bound(local_port))
            return make_error(std::errc::invalid_argument,
                              "unmask event channel port " + std::to_string(local_port) + ": not bound here");
        errno = 0;
        if (xenevtchn_unmask(h_, local_port) != 0)
            return call_error("xenevtchn_unmask", errno, "unmask port " + std::to_string(local_port),
                              CallKind::EventChannel);
        return ok();
    }

    Result<void> restrict_to(DomId domid) override {
        errno = 0;
        if (xenevtchn_restrict(h_, domid) != 0)
            return call_error("xenevtchn_restrict", errno, "restrict event channel handle to dom " +
                                                               std::to_string(domid),
                              CallKind::EventChannel);
        return ok();
    }

    std::size_t bound_ports() const override {
        std::lock_guard lk(mu_);
        return bound_.size();
    }

private:
    bool is_bound(Port p) const {
        std::lock_guard lk(mu_);
        return bound_.count(p) != 0;
    }

    xenevtchn_handle* h_;
    int fd_;
    mutable std::mutex mu_;
    std::set<Port> bound_;
};

}  // namespace

int set_nonblocking(int fd) {
    int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0) return errno;
    if (fl & O_NONBLOCK) return 0;
    if (::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return errno;
    return 0;
}

Result<std::unique_ptr<EventChannels>> open_evtchn() {
    errno = 0;
    xenevtchn_handle* h = xenevtchn_open(tool_logger(), 0);
    if (!h) return call_error("xenevtchn_open", errno, "open the event channel device", CallKind::EventChannel);
    int fd = xenevtchn_fd(h);
    if (fd < 0) {
        int err = errno;
        xenevtchn_close(h);
        return call_error("xenevtchn_fd", err, "event channel handle", CallKind::EventChannel);
    }
    // libxenevtchn opens /dev/xen/evtchn blocking and xenevtchn_pending()
    // read()s it: make it non-blocking so pending() never waits.
    if (int err = set_nonblocking(fd); err != 0) {
        xenevtchn_close(h);
        return call_error("fcntl(O_NONBLOCK)", err, "event channel fd", CallKind::EventChannel);
    }
    return std::unique_ptr<EventChannels>(new EvtchnChannels(h, fd));
}

}  // namespace xv::xen::libxen
