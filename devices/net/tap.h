// SPDX-License-Identifier: GPL-2.0-only
// A Linux tap interface with virtio-net headers, one fd per queue pair.
// Private to devices/net.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "xv/result.h"

namespace xv::devices::net {

/// An owned file descriptor.
class UniqueFd {
public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
    UniqueFd& operator=(UniqueFd&& o) noexcept;
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd() { reset(); }
    /// Closes the fd (idempotent).
    void reset() noexcept;
    /// Gives up ownership.
    int release() noexcept {
        int f = fd_;
        fd_ = -1;
        return f;
    }
    int get() const noexcept { return fd_; }
    bool valid() const noexcept { return fd_ >= 0; }

private:
    int fd_ = -1;
};

/// TUNSETOFFLOAD bits this tap accepts (what it may hand to the guest).
struct TapOffloads {
    bool csum = false;
    bool tso4 = false;
    bool tso6 = false;
    bool ufo = false;
};

/// An open tap: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (+ IFF_MULTI_QUEUE).
class Tap {
public:
    /// Opens `queues` fds on interface `name` (empty: kernel's choice),
    /// non-blocking, with a 12-byte vnet header, and probes the offloads.
    static Result<Tap> open(const std::string& name, std::uint16_t queues);

    const std::string& name() const noexcept { return name_; }
    int fd(std::size_t q) const noexcept { return fds_[q].get(); }
    std::size_t queues() const noexcept { return fds_.size(); }
    bool multi_queue() const noexcept { return fds_.size() > 1; }
    /// Offloads the kernel accepted when probed.
    const TapOffloads& supported() const noexcept { return supported_; }

    /// TUNSETVNETHDRSZ on every fd.
    Result<void> set_vnet_hdr_size(int size);
    /// TUNSETOFFLOAD on every fd.
    Result<void> set_offloads(const TapOffloads& o);
    /// Attaches or detaches queue `q` (TUNSETQUEUE), multi-queue taps only.
    Result<void> set_queue_enabled(std::size_t q, bool enabled);
    /// Sets the interface MTU (SIOCSIFMTU).
    Result<void> set_mtu(std::uint16_t mtu);
    /// Sets the interface up (SIOCSIFFLAGS | IFF_UP).
    Result<void> set_up();
    /// Adds the interface to a bridge (SIOCBRADDIF).
    Result<void> attach_bridge(const std::string& bridge);

private:
    std::string name_;
    std::vector<UniqueFd> fds_;
    TapOffloads supported_;
};

/// TUNSETOFFLOAD flag word for `o`.
unsigned tun_offload_flags(const TapOffloads& o);

}  // namespace xv::devices::net
