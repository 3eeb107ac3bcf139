// SPDX-License-Identifier: GPL-2.0-only
// Helpers for the virtio-net tests and benchmark: a private network
// namespace, packet sockets on the tap, Ethernet frames, a device wired to
// simulated guest queues.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "xv/devices/net.h"
#include "xv/test/queue_harness.h"

namespace xv::nettest {

/// Test frames use the IEEE "local experimental" ethertype, so nothing the
/// kernel sends by itself is mistaken for one.
inline constexpr std::uint16_t kEtherType = 0x88b5;

/// Result of moving this process into a fresh network namespace.
struct NetNs {
    bool ok = false;
    std::string why;
};

/// Enters a new network namespace (once, before any thread exists) so that
/// taps and traffic stay private to the test; IPv6 is off so the kernel
/// sends nothing on its own.
inline NetNs enter_private_netns() {
    NetNs r;
    if (::unshare(CLONE_NEWNET) != 0) {
        r.why = std::string("unshare(CLONE_NEWNET): ") + std::strerror(errno);
        return r;
    }
    for (const char* p : {"/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"}) {
        std::ofstream f(p);
        if (f) f << "1\n";
    }
    if (::access("/dev/net/tun", R_OK | W_OK) != 0) {
        r.why = "no /dev/net/tun";
        return r;
    }
    r.ok = true;
    return r;
}

using Mac = std::array<std::uint8_t, 6>;

/// An Ethernet frame dst|src|kEtherType|payload (payload bytes = seed + i).
inline std::vector<std::byte> frame(const Mac& dst, const Mac& src, std::size_t payload, std::uint8_t seed = 0) {
    std::vector<std::byte> f(14 + payload);
    std::memcpy(f.data(), dst.data(), 6);
    std::memcpy(f.data() + 6, src.data(), 6);
    f[12] = std::byte(kEtherType >> 8);
    f[13] = std::byte(kEtherType & 0xff);
    for (std::size_t i = 0; i < payload; ++i) f[14 + i] = std::byte(std::uint8_t(seed + i));
    return f;
}

/// A raw packet socket bound to one interface and kEtherType (or ETH_P_ALL).
class PacketSocket {
public:
    static std::optional<PacketSocket> open(const std::string& ifname, std::uint16_t proto = kEtherType,
                                            bool vnet_hdr = false) {
        PacketSocket s;
        s.fd_ = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(proto));
        if (s.fd_ < 0) return std::nullopt;
        if (vnet_hdr) {
            int one = 1;
            if (::setsockopt(s.fd_, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0) return std::nullopt;
        }
        sockaddr_ll sll{};
        sll.sll_family = AF_PACKET;
        sll.sll_protocol = htons(proto);
        sll.sll_ifindex = static_cast<int>(::if_nametoindex(ifname.c_str()));
        if (sll.sll_ifindex == 0) return std::nullopt;
        if (::bind(s.fd_, reinterpret_cast<sockaddr*>(&sll), sizeof sll) < 0) return std::nullopt;
        s.ifindex_ = sll.sll_ifindex;
        return s;
    }
    PacketSocket() = default;
    PacketSocket(PacketSocket&& o) noexcept : fd_(o.fd_), ifindex_(o.ifindex_) { o.fd_ = -1; }
    PacketSocket& operator=(PacketSocket&& o) noexcept {
        std::swap(fd_, o.fd_);
        ifindex_ = o.ifindex_;
        return *this;
    }
    ~PacketSocket() {
        if (fd_ >= 0) ::close(fd_);
    }

    /// Sends one frame out of the interface (towards the guest).
    bool send(std::span<const std::byte> f) { return ::send(fd_, f.data(), f.size(), 0) == ssize_t(f.size()); }

    /// Next frame seen on the interface within `timeout`.
    std::optional<std::vector<std::byte>> recv(std::chrono::milliseconds timeout) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return std::nullopt;
        std::vector<std::byte> b(70000);
        ssize_t n = ::recv(fd_, b.data(), b.size(), 0);
        if (n < 0) return std::nullopt;
        b.resize(static_cast<std::size_t>(n));
        return b;
    }
    int fd() const { return fd_; }

private:
    int fd_ = -1;
    int ifindex_ = 0;
};

/// A net device on simulated guest queues, with the loop on its own thread.
struct NetRig {
    std::unique_ptr<test::QueueHarness> h;
    std::unique_ptr<devices::NetDevice> dev;
    std::vector<std::unique_ptr<test::VirtqueueDriver>> drv;
    std::vector<std::unique_ptr<transport::Virtqueue>> q;
    std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guard;
    std::thread loop;
    std::vector<Error> needs_reset;
    std::atomic<int> config_changes{0};
    /// Queues the driver leaves disabled (set before start(); their drv
    /// and q slots stay empty).
    std::set<std::uint16_t> disabled;
    /// VIRTIO_F_EVENT_IDX on every queue (set before start()).
    bool event_idx = false;

    ~NetRig() { stop(); }

    /// Creates the device, `nq` queues of `qsize` entries, and activates it.
    Result<void> start(const devices::NetConfig& cfg, std::uint64_t features, std::uint16_t nq,
                       std::uint16_t qsize = 64, std::uint64_t guest_pages = 16384, xen::sim::SimOptions so = {}) {
        auto hh = test::QueueHarness::create(so, guest_pages);
        if (!hh) return std::move(hh).error();
        h = std::move(*hh);
        auto d = devices::make_net_device(cfg, {h->domid, "net0"}, h->io.get_executor());
        if (!d) return std::move(d).error();
        dev = std::move(*d);
        transport::ActivateContext ctx;
        ctx.features = features | transport::feature::bit(transport::feature::kVersion1);
        if (event_idx) ctx.features |= transport::feature::bit(transport::feature::kEventIdx);
        for (std::uint16_t i = 0; i < nq; ++i) {
            if (disabled.count(i)) {
                ctx.queues.push_back(nullptr);
                drv.emplace_back();
                q.emplace_back();
                continue;
            }
            test::DriverOptions o;
            o.size = qsize;
            o.event_idx = event_idx;
            o.index = i;
            o.log_name = "dom" + std::to_string(h->domid) + " net0 q" + std::to_string(i);
            auto dr = h->driver(o);
            if (!dr) return std::move(dr).error();
            auto vq = h->queue(**dr);
            if (!vq) return std::move(vq).error();
            ctx.queues.push_back(vq->get());
            drv.push_back(std::move(*dr));
            q.push_back(std::move(*vq));
        }
        ctx.config_changed = [this] { ++config_changes; };
        ctx.needs_reset = [this](const Error& e) { needs_reset.push_back(e); };
        guard.emplace(h->io.get_executor());
        loop = std::thread([this] { h->io.run(); });
        return dev->activate(std::move(ctx));
    }

    /// Stops the device and the loop.
    void stop() {
        if (dev) {
            bool done = false;
            dev->reset([&] { done = true; });
        }
        if (guard) {
            guard.reset();
            h->io.stop();
        }
        if (loop.joinable()) loop.join();
        q.clear();
    }

    /// The driver kicks queue `i` (runs on the queue's strand, as the transport does).
    void kick(std::uint16_t i) {
        auto* d = dev.get();
        boost::asio::post(q[i]->strand(), [d, i] { d->queue_notify(i); });
    }

    /// Waits for the next used entry of queue `i`.
    std::optional<test::UsedElem> wait_used(std::uint16_t i,
                                            std::chrono::milliseconds timeout = std::chrono::milliseconds(3000)) {
        auto end = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            if (auto u = drv[i]->next_used()) return u;
            if (std::chrono::steady_clock::now() > end) return std::nullopt;
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
    }
};

/// Host-endian view of a virtio_net_hdr_v1 for building/reading test data.
inline std::vector<std::byte> hdr_bytes(const devices::VirtioNetHdr& h) {
    std::vector<std::byte> b(sizeof h);
    std::memcpy(b.data(), &h, sizeof h);
    return b;
}

}  // namespace xv::nettest
