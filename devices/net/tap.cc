// SPDX-License-Identifier: GPL-2.0-only
// Tap interface set-up through the tun driver's ioctls.
#include "tap.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace xv::devices::net {

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
        reset();
        fd_ = o.release();
    }
    return *this;
}

void UniqueFd::reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

unsigned tun_offload_flags(const TapOffloads& o) {
    unsigned f = 0;
    if (o.csum) f |= TUN_F_CSUM;
    // The segmentation offloads are only meaningful with checksum offload.
    if (o.csum && o.tso4) f |= TUN_F_TSO4;
    if (o.csum && o.tso6) f |= TUN_F_TSO6;
    if (o.csum && o.ufo) f |= TUN_F_UFO;
    return f;
}

namespace {

Result<UniqueFd> open_one(std::string& name, bool multi) {
    UniqueFd fd(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
    if (!fd.valid()) return errno_error(errno, "open /dev/net/tun");
    struct ifreq ifr{};
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (multi ? IFF_MULTI_QUEUE : 0);
    if (name.size() >= IFNAMSIZ) return make_error(std::errc::invalid_argument, "tap name too long: " + name);
    std::memcpy(ifr.ifr_name, name.data(), name.size());
    if (::ioctl(fd.get(), TUNSETIFF, &ifr) < 0) return errno_error(errno, "TUNSETIFF on tap '" + name + "'");
    name.assign(ifr.ifr_name, ::strnlen(ifr.ifr_name, IFNAMSIZ));
    return fd;
}

/// A datagram socket for interface ioctls in the caller's network namespace.
Result<UniqueFd> ctl_socket() {
    UniqueFd s(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!s.valid()) return errno_error(errno, "socket for interface ioctls");
    return s;
}

}  // namespace

Result<Tap> Tap::open(const std::string& name, std::uint16_t queues) {
    if (queues == 0) return make_error(std::errc::invalid_argument, "tap needs at least one queue");
    Tap t;
    t.name_ = name;
    for (std::uint16_t q = 0; q < queues; ++q) {
        auto fd = open_one(t.name_, queues > 1);
        if (!fd) return std::move(fd).error();
        t.fds_.push_back(std::move(*fd));
    }
    // Probe: the richest set first, then without UFO (removed from some
    // kernels), then checksum only.
    const TapOffloads probes[] = {{true, true, true, true}, {true, true, true, false}, {true, false, false, false}};
    for (const auto& p : probes) {
        unsigned f = tun_offload_flags(p);
        if (::ioctl(t.fds_[0].get(), TUNSETOFFLOAD, f) == 0) {
            t.supported_ = p;
            break;
        }
    }
    XV_TRY(t.set_offloads({}));
    XV_TRY(t.set_vnet_hdr_size(12));
    // The virtio 1 header is little-endian; a no-op on little-endian hosts.
    for (auto& fd : t.fds_) {
        int le = 1;
        (void)::ioctl(fd.get(), TUNSETVNETLE, &le);
    }
    return t;
}

Result<void> Tap::set_vnet_hdr_size(int size) {
    for (auto& fd : fds_)
        if (::ioctl(fd.get(), TUNSETVNETHDRSZ, &size) < 0) return errno_error(errno, "TUNSETVNETHDRSZ on " + name_);
    return ok();
}

Result<void> Tap::set_offloads(const TapOffloads& o) {
    unsigned f = tun_offload_flags(o);
    for (auto& fd : fds_)
        if (::ioctl(fd.get(), TUNSETOFFLOAD, f) < 0) return errno_error(errno, "TUNSETOFFLOAD on " + name_);
    return ok();
}

Result<void> Tap::set_queue_enabled(std::size_t q, bool enabled) {
    if (!multi_queue() || q >= fds_.size()) return ok();
    struct ifreq ifr{};
    ifr.ifr_flags = enabled ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
    if (::ioctl(fds_[q].get(), TUNSETQUEUE, &ifr) < 0) {
        // Attaching an attached queue (or detaching a detached one) is EINVAL.
        if (errno == EINVAL) return ok();
        return errno_error(errno, "TUNSETQUEUE on " + name_ + " queue " + std::to_string(q));
    }
    return ok();
}

Result<void> Tap::set_mtu(std::uint16_t mtu) {
    auto s = ctl_socket();
    if (!s) return std::move(s).error();
    struct ifreq ifr{};
    std::memcpy(ifr.ifr_name, name_.data(), name_.size());
    ifr.ifr_mtu = mtu;
    if (::ioctl(s->get(), SIOCSIFMTU, &ifr) < 0) return errno_error(errno, "set MTU " + std::to_string(mtu) + " on " + name_);
    return ok();
}

Result<void> Tap::set_up() {
    auto s = ctl_socket();
    if (!s) return std::move(s).error();
    struct ifreq ifr{};
    std::memcpy(ifr.ifr_name, name_.data(), name_.size());
    if (::ioctl(s->get(), SIOCGIFFLAGS, &ifr) < 0) return errno_error(errno, "get flags of " + name_);
    ifr.ifr_flags |= IFF_UP;
    if (::ioctl(s->get(), SIOCSIFFLAGS, &ifr) < 0) return errno_error(errno, "set " + name_ + " up");
    return ok();
}

Result<void> Tap::attach_bridge(const std::string& bridge) {
    if (bridge.size() >= IFNAMSIZ) return make_error(std::errc::invalid_argument, "bridge name too long: " + bridge);
    auto s = ctl_socket();
    if (!s) return std::move(s).error();
    struct ifreq ifr{};
    std::memcpy(ifr.ifr_name, bridge.data(), bridge.size());
    struct ifreq idx{};
    std::memcpy(idx.ifr_name, name_.data(), name_.size());
    if (::ioctl(s->get(), SIOCGIFINDEX, &idx) < 0) return errno_error(errno, "ifindex of " + name_);
    ifr.ifr_ifindex = idx.ifr_ifindex;
    if (::ioctl(s->get(), SIOCBRADDIF, &ifr) < 0) return errno_error(errno, "add " + name_ + " to bridge " + bridge);
    return ok();
}

}  // namespace xv::devices::net
