// SPDX-License-Identifier: GPL-2.0-only
#include "demo.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iomanip>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "check.h"
#include "config.h"
#include "guest_manager.h"
#include "xv/devices/blk.h"
#include "xv/guest/transport_driver.h"
#include "xv/guest/virtqueue_driver.h"
#include "xv/transport/device.h"
#include "xv/xen/sim.h"

namespace xv::daemon {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
namespace feat = transport::feature;

constexpr std::uint64_t kMmioBase = 0x02000000;  // GUEST_VIRTIO_MMIO_BASE
constexpr std::uint32_t kMmioSpi = 33;            // GUEST_VIRTIO_MMIO_SPI_FIRST
constexpr std::uint64_t kImageBytes = 32ull << 20;
constexpr std::uint16_t kEtherType = 0x88b5;      // IEEE local experimental
constexpr auto kWait = std::chrono::seconds(5);

/// Counters of one device, shared between its driver thread and the
/// progress printer.
struct DeviceCounters {
    std::string type;
    std::string transport;
    std::atomic<std::uint64_t> requests{0};
    std::atomic<std::uint64_t> bytes{0};
    std::atomic<std::uint64_t> errors{0};
    std::atomic<bool> verified{false};
    std::atomic<bool> done{false};
    std::mutex mu;
    std::string failure;

    void fail(const std::string& why) {
        std::lock_guard lk(mu);
        if (failure.empty()) failure = why;
        ++errors;
    }
};

/// One simulated guest of the demo.
struct DemoGuest {
    xen::DomId domid = 0;
    std::string name;
    bool safe = false;
    bool pci = false;
    std::shared_ptr<xen::sim::SimGuest> sim;
    std::string image;
    std::string tap;
    std::map<std::string, std::unique_ptr<DeviceCounters>> devs;  // blk0, net0, console0
    std::shared_ptr<GuestSession> session;
};

/// Waits for the next used entry of `q`, acknowledging interrupts.
Result<guest::UsedElem> wait_used(guest::VirtqueueDriver& q, guest::GuestTransport& t, xen::sim::SimGuest& g,
                                  std::uint32_t spi, const std::atomic<bool>& stop) {
    auto deadline = Clock::now() + kWait;
    std::uint64_t seen = g.irq_count(spi);
    for (;;) {
        if (auto u = q.next_used()) return *u;
        if (Clock::now() > deadline) return make_error(std::errc::timed_out, "no completion within 5 s");
        if (stop && Clock::now() > deadline - std::chrono::seconds(4)) {
            // stopping: do not wait the full bound for a lost completion
        }
        seen = g.wait_irq(spi, seen, std::chrono::milliseconds(20));
        (void)t.take_isr();
    }
}

/// Brings a device up on its transport with `queues` split rings.
struct Attached {
    std::unique_ptr<guest::GuestTransport> t;
    std::vector<std::unique_ptr<guest::VirtqueueDriver>> q;
    std::uint32_t spi = 0;
};

Result<Attached> attach(DemoGuest& dg, const DevicePlan& plan, unsigned slot, unsigned vcpu, unsigned nqueues,
                        std::uint64_t want, xen::DomId backend, const transport::PciHostConfig& host) {
    Attached a;
    if (plan.transport == Transport::Pci) {
        auto t = guest::make_pci_guest(*dg.sim, host, slot, plan.nonblocking, vcpu);
        if (!t) return std::move(t).error();
        a.t = std::move(t).value();
        a.spi = host.intx_spi_base + (slot % 4);  // INTA swizzle (pci_host.h)
    } else {
        auto t = guest::make_mmio_guest(*dg.sim, plan.announced->base, plan.nonblocking, vcpu);
        if (!t) return std::move(t).error();
        a.t = std::move(t).value();
        a.spi = plan.announced->irq;
    }
    std::vector<guest::VirtqueueDriver*> raw;
    for (unsigned i = 0; i < nqueues; ++i) {
        guest::DriverOptions o;
        o.size = 64;
        o.index = std::uint16_t(i);
        o.backend = backend;
        o.log_name = dg.name + " " + plan.name + " q" + std::to_string(i);
        auto q = guest::VirtqueueDriver::create(*dg.sim, o);
        if (!q) return std::move(q).error();
        raw.push_back(q.value().get());
        a.q.push_back(std::move(q).value());
    }
    want |= feat::bit(feat::kVersion1) | feat::bit(feat::kAccessPlatform);
    auto f = a.t->bring_up(want, raw);
    if (!f) return std::move(f).error();
    return a;
}

// --- virtio-blk guest driver ------------------------------------------------

void drive_blk(DemoGuest& dg, const DevicePlan& plan, unsigned slot, xen::DomId be,
               const transport::PciHostConfig& host, Clock::time_point until, const std::atomic<bool>& stop) {
    auto& c = *dg.devs.at(plan.name);
    auto a = attach(dg, plan, slot, 0, 1, feat::bit(devices::blk::feature::kFlush), be, host);
    if (!a) return c.fail("bring-up: " + a.error().describe());
    auto& q = *a.value().q[0];
    auto& t = *a.value().t;
    auto cap = t.config_read(devices::blk::cfg::kCapacity, 8);
    if (!cap || *cap != kImageBytes / 512) return c.fail("capacity reads " + (cap ? std::to_string(*cap) : "?"));

    // Guest RAM is allocated once and reused (a frontend's DMA pool).
    constexpr unsigned kSlots = 8;
    constexpr std::uint32_t kMaxLen = 64 * 1024;
    struct Slot {
        guest::GuestBuf hdr, wdata, rdata, status;
    };
    std::vector<Slot> slots(kSlots);
    for (auto& sl : slots) {
        auto h = q.alloc(16, true), w = q.alloc(kMaxLen, true), r = q.alloc(kMaxLen, false), st = q.alloc(1, false);
        if (!h || !w || !r || !st) return c.fail("guest buffer allocation");
        sl = {*h, *w, *r, *st};
    }
    auto hdr_at = [](guest::GuestBuf& b, std::uint32_t type, std::uint64_t sector) {
        devices::blk::OutHdr h{type, 0, sector};
        std::memcpy(b.ptr, &h, sizeof h);
    };
    auto sized = [](guest::GuestBuf b, std::uint32_t len) {
        b.len = len;
        return b;
    };
    // Each slot owns its own region of the disk, so requests in flight
    // never overlap (their completion order is free, virtio 1.2 §2.7.14).
    const std::uint64_t region_sectors = kImageBytes / 512 / kSlots;
    std::mt19937_64 rng(dg.domid * 7919u);
    bool all_ok = true;
    unsigned round = 0;
    do {
        std::vector<std::pair<std::uint64_t, std::uint32_t>> io(kSlots);  // sector, len
        for (unsigned i = 0; i < kSlots; ++i) {
            std::uint32_t len = std::uint32_t(4096 * (1 + rng() % 16));
            std::uint64_t sector = i * region_sectors + (rng() % ((region_sectors * 512 - len) / 4096)) * 8;
            io[i] = {sector, len};
            auto& sl = slots[i];
            for (std::uint32_t k = 0; k < len; ++k) sl.wdata.ptr[k] = std::byte(rng());
            hdr_at(sl.hdr, devices::blk::req::kOut, sector);
            sl.status.ptr[0] = std::byte{0xff};
            auto sub = q.chain().add(sl.hdr, false).add(sized(sl.wdata, len), false).add(sl.status, true).submit();
            if (!sub) return c.fail("submit write: " + sub.error().describe());
        }
        if (auto r = t.notify(0); !r) return c.fail("notify: " + r.error().describe());
        for (unsigned i = 0; i < kSlots; ++i) {
            auto u = wait_used(q, t, *dg.sim, a.value().spi, stop);
            if (!u) return c.fail("write: " + u.error().describe());
        }
        for (unsigned i = 0; i < kSlots; ++i)
            if (slots[i].status.ptr[0] != std::byte{0}) return c.fail("write status not OK");
        // FLUSH (virtio 1.2 §5.2.6.1) through slot 0's header and status.
        hdr_at(slots[0].hdr, devices::blk::req::kFlush, 0);
        slots[0].status.ptr[0] = std::byte{0xff};
        if (!q.chain().add(slots[0].hdr, false).add(slots[0].status, true).submit()) return c.fail("submit flush");
        (void)t.notify(0);
        if (auto u = wait_used(q, t, *dg.sim, a.value().spi, stop); !u) return c.fail("flush: " + u.error().describe());
        if (slots[0].status.ptr[0] != std::byte{0}) return c.fail("flush status not OK");
        c.requests += kSlots + 1;

        for (unsigned i = 0; i < kSlots; ++i) {
            auto& sl = slots[i];
            hdr_at(sl.hdr, devices::blk::req::kIn, io[i].first);
            std::memset(sl.rdata.ptr, 0, io[i].second);
            sl.status.ptr[0] = std::byte{0xff};
            auto sub = q.chain().add(sl.hdr, false).add(sized(sl.rdata, io[i].second), true).add(sl.status, true).submit();
            if (!sub) return c.fail("submit read: " + sub.error().describe());
        }
        (void)t.notify(0);
        for (unsigned i = 0; i < kSlots; ++i) {
            auto u = wait_used(q, t, *dg.sim, a.value().spi, stop);
            if (!u) return c.fail("read: " + u.error().describe());
        }
        for (unsigned i = 0; i < kSlots; ++i) {
            const auto& sl = slots[i];
            bool ok = sl.status.ptr[0] == std::byte{0} && std::memcmp(sl.wdata.ptr, sl.rdata.ptr, io[i].second) == 0;
            if (!ok) {
                all_ok = false;
                c.fail("sector " + std::to_string(io[i].first) + ": data read back differs");
            }
            c.bytes += 2 * io[i].second;
        }
        c.requests += kSlots;
        ++round;
    } while (Clock::now() < until && !stop);
    (void)t.reset();
    c.verified = all_ok && round > 0;
}

// --- virtio-net guest driver ------------------------------------------------

/// A raw socket on the tap, in the demo's own network namespace: it sees
/// what the guest sends and injects what the guest must receive.
class TapPeer {
public:
    ~TapPeer() {
        if (fd_ >= 0) ::close(fd_);
    }
    Result<void> open(const std::string& ifname) {
        fd_ = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
        if (fd_ < 0) return errno_error(errno, "AF_PACKET socket");
        unsigned idx = if_nametoindex(ifname.c_str());
        if (idx == 0) return errno_error(errno, "tap " + ifname + " not found");
        sockaddr_ll sll{};
        sll.sll_family = AF_PACKET;
        sll.sll_protocol = htons(ETH_P_ALL);
        sll.sll_ifindex = int(idx);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&sll), sizeof sll) < 0)
            return errno_error(errno, "bind AF_PACKET to " + ifname);
        ifindex_ = int(idx);
        return ok();
    }
    Result<void> send(std::span<const std::byte> frame) {
        sockaddr_ll sll{};
        sll.sll_family = AF_PACKET;
        sll.sll_ifindex = ifindex_;
        sll.sll_halen = 6;
        std::memcpy(sll.sll_addr, frame.data(), 6);
        if (::sendto(fd_, frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&sll), sizeof sll) < 0)
            return errno_error(errno, "send to tap");
        return ok();
    }
    /// Next frame with our ethertype, within `ms`.
    std::optional<std::vector<std::byte>> recv(int ms) {
        auto deadline = Clock::now() + std::chrono::milliseconds(ms);
        std::vector<std::byte> buf(2048);
        while (Clock::now() < deadline) {
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            sockaddr_ll from{};
            socklen_t fl = sizeof from;
            ssize_t n = ::recvfrom(fd_, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &fl);
            if (n < 14) continue;
            if (from.sll_pkttype == PACKET_OUTGOING) continue;  // our own injections
            std::uint16_t et = std::uint16_t(std::uint16_t(buf[12]) << 8 | std::uint16_t(buf[13]));
            if (et != kEtherType) continue;
            buf.resize(std::size_t(n));
            return buf;
        }
        return std::nullopt;
    }

private:
    int fd_ = -1;
    int ifindex_ = 0;
};

std::vector<std::byte> make_frame(const std::array<std::uint8_t, 6>& dst, const std::array<std::uint8_t, 6>& src,
                                  std::uint32_t seq, std::size_t payload) {
    std::vector<std::byte> f(14 + payload);
    std::memcpy(f.data(), dst.data(), 6);
    std::memcpy(f.data() + 6, src.data(), 6);
    f[12] = std::byte(kEtherType >> 8);
    f[13] = std::byte(kEtherType & 0xff);
    for (std::size_t i = 0; i < payload; ++i) f[14 + i] = std::byte((seq * 131 + i) & 0xff);
    std::memcpy(f.data() + 14, &seq, 4);
    return f;
}

void drive_net(DemoGuest& dg, const DevicePlan& plan, unsigned slot, xen::DomId be,
               const transport::PciHostConfig& host, Clock::time_point until, const std::atomic<bool>& stop) {
    auto& c = *dg.devs.at(plan.name);
    TapPeer peer;
    if (auto r = peer.open(plan.net.tap); !r) return c.fail(r.error().describe());
    auto a = attach(dg, plan, slot, 1, 2, feat::bit(devices::net_feature::kMac), be, host);
    if (!a) return c.fail("bring-up: " + a.error().describe());
    auto& rx = *a.value().q[0];
    auto& tx = *a.value().q[1];
    auto& t = *a.value().t;
    const auto mac = *plan.net.mac;
    const std::array<std::uint8_t, 6> host_mac{0x02, 0, 0, 0, 0, 1};
    constexpr std::uint32_t kBuf = 12 + 1514;  // virtio_net_hdr_v1 + a full frame (no MRG_RXBUF)
    auto txb = tx.alloc(kBuf, true);
    auto rxbuf = rx.alloc(kBuf, false);
    if (!txb || !rxbuf) return c.fail("guest buffer allocation");
    bool all_ok = true;
    std::uint32_t seq = 0;
    do {
        // Guest -> tap: the 12-byte virtio_net_hdr_v1 (§5.1.6) then the frame.
        std::size_t payload = 46 + (seq * 97) % 1400;
        auto frame = make_frame(host_mac, mac, seq, payload);
        std::memset(txb->ptr, 0, 12);
        std::memcpy(txb->ptr + 12, frame.data(), frame.size());
        guest::GuestBuf out = *txb;
        out.len = std::uint32_t(12 + frame.size());
        if (!tx.chain().add(out, false).submit()) return c.fail("tx submit");
        (void)t.notify(1);
        if (auto u = wait_used(tx, t, *dg.sim, a.value().spi, stop); !u) return c.fail("tx: " + u.error().describe());
        auto got = peer.recv(2000);
        if (!got || *got != frame) {
            all_ok = false;
            c.fail("tx frame " + std::to_string(seq) + (got ? " differs on the tap" : " never reached the tap"));
        }
        // Tap -> guest.
        auto in = make_frame(mac, host_mac, seq ^ 0x5a5a, payload);
        if (!rx.chain().add(*rxbuf, true).submit()) return c.fail("rx submit");
        (void)t.notify(0);
        if (auto r = peer.send(in); !r) return c.fail(r.error().describe());
        // Skip frames the kernel itself sends on a fresh link (IPv6 ND ...).
        bool matched = false;
        for (int tries = 0; tries < 8 && !matched; ++tries) {
            auto u = wait_used(rx, t, *dg.sim, a.value().spi, stop);
            if (!u) return c.fail("rx: " + u.error().describe());
            if (u.value().len >= 12 + in.size() && std::memcmp(rxbuf->ptr + 12, in.data(), in.size()) == 0) {
                matched = true;
                break;
            }
            if (!rx.chain().add(*rxbuf, true).submit()) return c.fail("rx resubmit");
            (void)t.notify(0);
        }
        if (!matched) {
            all_ok = false;
            c.fail("rx frame " + std::to_string(seq) + " not received intact");
        }
        c.requests += 2;
        c.bytes += 2 * frame.size();
        ++seq;
    } while (Clock::now() < until && !stop);
    (void)t.reset();
    c.verified = all_ok && seq > 0;
}

// --- virtio-console guest driver --------------------------------------------

void drive_console(DemoGuest& dg, const DevicePlan& plan, unsigned slot, xen::DomId be,
                   const transport::PciHostConfig& host, Clock::time_point until, const std::atomic<bool>& stop,
                   const std::string& pty) {
    auto& c = *dg.devs.at(plan.name);
    int fd = ::open(pty.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return c.fail("open " + pty + ": " + std::strerror(errno));
    termios tio{};
    if (::tcgetattr(fd, &tio) == 0) {
        ::cfmakeraw(&tio);
        (void)::tcsetattr(fd, TCSANOW, &tio);
    }
    auto close_fd = std::unique_ptr<int, void (*)(int*)>(&fd, [](int* f) { ::close(*f); });
    auto a = attach(dg, plan, slot, 2, 2, 0, be, host);
    if (!a) return c.fail("bring-up: " + a.error().describe());
    auto& rx = *a.value().q[0];
    auto& tx = *a.value().q[1];
    auto& t = *a.value().t;
    auto txb = tx.alloc(256, true);
    auto rxbuf = rx.alloc(256, false);
    if (!txb || !rxbuf) return c.fail("guest buffer allocation");
    bool all_ok = true;
    unsigned line = 0;
    do {
        std::string out = dg.name + " says line " + std::to_string(line) + "\r\n";
        std::memcpy(txb->ptr, out.data(), out.size());
        guest::GuestBuf ob = *txb;
        ob.len = std::uint32_t(out.size());
        if (!tx.chain().add(ob, false).submit()) return c.fail("tx submit");
        (void)t.notify(1);
        if (auto u = wait_used(tx, t, *dg.sim, a.value().spi, stop); !u) return c.fail("tx: " + u.error().describe());
        std::string got;
        auto deadline = Clock::now() + std::chrono::seconds(2);
        while (got.size() < out.size() && Clock::now() < deadline) {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            char buf[512];
            ssize_t n = ::read(fd, buf, std::min(sizeof buf, out.size() - got.size()));
            if (n > 0) got.append(buf, std::size_t(n));
        }
        if (got != out) {
            all_ok = false;
            c.fail("line " + std::to_string(line) + " arrived as '" + got + "'");
        }
        std::string in = "host input " + std::to_string(line) + "\n";
        if (!rx.chain().add(*rxbuf, true).submit()) return c.fail("rx submit");
        (void)t.notify(0);
        if (::write(fd, in.data(), in.size()) != ssize_t(in.size())) return c.fail("write to pty");
        std::string recv;
        while (recv.size() < in.size()) {
            auto u = wait_used(rx, t, *dg.sim, a.value().spi, stop);
            if (!u) return c.fail("rx: " + u.error().describe());
            recv.append(reinterpret_cast<const char*>(rxbuf->ptr), std::min<std::size_t>(u.value().len, 256));
            if (recv.size() < in.size()) {
                if (!rx.chain().add(*rxbuf, true).submit()) return c.fail("rx resubmit");
                (void)t.notify(0);
            }
        }
        if (recv != in) {
            all_ok = false;
            c.fail("input " + std::to_string(line) + " arrived as '" + recv + "'");
        }
        c.requests += 2;
        c.bytes += out.size() + in.size();
        ++line;
    } while (Clock::now() < until && !stop);
    (void)t.reset();
    c.verified = all_ok && line > 0;
}

/// A private network namespace so the demo's taps touch nothing on the host.
bool enter_private_netns(std::string& why) {
    if (::unshare(CLONE_NEWNET) != 0) {
        why = std::string("unshare(CLONE_NEWNET): ") + std::strerror(errno) + " (run the demo as root)";
        return false;
    }
    int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s >= 0) {
        ifreq ifr{};
        std::strcpy(ifr.ifr_name, "lo");
        if (::ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
            ifr.ifr_flags |= IFF_UP;
            (void)::ioctl(s, SIOCSIFFLAGS, &ifr);
        }
        ::close(s);
    }
    return true;
}

std::string demo_config_text(const std::vector<DemoGuest>& guests) {
    std::ostringstream t;
    t << "# The demo's configuration, parsed by the daemon's own parser.\n"
         "[daemon]\nlog_level = \"warn\"\nworkers = 2\n\n"
         "[[domain]]\nid = 0\nroles = [\"hardware\", \"control\"]\nclass = \"safe\"\n\n";
    for (const auto& g : guests) {
        t << "[[domain]]\nname = \"" << g.name << "\"\nroles = [\"domu\"]\nclass = \""
          << (g.safe ? "safe" : "unsafe") << "\"\n\n";
        const char* tr = g.pci ? "pci" : "mmio";
        const char* nb = g.safe ? "true" : "false";
        t << "[[device]]\nguest = \"" << g.name << "\"\ntype = \"blk\"\ntransport = \"" << tr
          << "\"\nnonblocking = " << nb << "\npath = \"" << g.image << "\"\n\n";
        t << "[[device]]\nguest = \"" << g.name << "\"\ntype = \"net\"\ntransport = \"" << tr
          << "\"\nnonblocking = " << nb << "\ntap = \"" << g.tap << "\"\n\n";
        t << "[[device]]\nguest = \"" << g.name << "\"\ntype = \"console\"\ntransport = \"" << tr
          << "\"\nnonblocking = " << nb << "\nbackend = \"pty\"\n\n";
    }
    return t.str();
}

}  // namespace

int run_demo(const DemoOptions& opts, std::ostream& out) {
    if (opts.guests == 0 || opts.guests > 16) {
        spdlog::error("demo: --guests must be 1..16");
        return 1;
    }
    const bool tty = !opts.json && ::isatty(STDOUT_FILENO);
    std::string netns_why;
    const bool have_netns = enter_private_netns(netns_why);
    if (!have_netns) spdlog::warn("demo: {}; virtio-net cannot be shown", netns_why);

    // Work directory with the guests' disk images.
    fs::path work = fs::temp_directory_path() / ("xen-virtiod-demo-" + std::to_string(::getpid()));
    std::error_code ec;
    fs::create_directories(work, ec);
    struct Cleanup {
        fs::path p;
        ~Cleanup() {
            std::error_code e;
            fs::remove_all(p, e);
        }
    } cleanup{work};

    xen::sim::SimOptions so;
    so.protect_pages = true;
    so.self_domid = 0;
    auto sim = xen::sim::SimHypervisor::create(so);

    std::vector<DemoGuest> guests(opts.guests);
    for (unsigned i = 0; i < opts.guests; ++i) {
        auto& g = guests[i];
        g.safe = (i % 2 == 0);
        g.pci = g.safe;
        g.name = g.safe ? "safe-guest" : "unsafe-guest";
        if (opts.guests > 2) g.name += std::to_string(i / 2 + 1);
        xen::sim::DomainConfig dc;
        dc.name = g.name;
        dc.memory_pages = 16384;  // 64 MiB
        dc.vcpus = 3;             // one per device driver thread
        auto id = sim->create_domain(dc);
        if (!id) {
            spdlog::error("demo: create {}: {}", g.name, id.error().describe());
            return 1;
        }
        g.domid = id.value();
        g.sim = sim->guest(g.domid);
        g.image = (work / (g.name + ".img")).string();
        {
            std::ofstream f(g.image, std::ios::binary);
            f.close();
            fs::resize_file(g.image, kImageBytes, ec);
        }
        g.tap = "xvdemo" + std::to_string(g.domid);
        for (const char* d : {"blk0", "net0", "console0"}) {
            auto c = std::make_unique<DeviceCounters>();
            c->type = std::string(d).substr(0, std::string(d).size() - 1);
            c->transport = g.pci ? "pci" : "mmio";
            g.devs.emplace(d, std::move(c));
        }
        if (!g.pci) {
            // The UnsafeVM's devices are announced by the "toolstack" exactly
            // as libxl writes them for virtio = [...] (xen-facts §3.2).
            const char* types[] = {"virtio,device2", "virtio,device1", "virtio,device3"};
            for (unsigned d = 0; d < 3; ++d) {
                xen::sim::VirtioDeviceSpec spec;
                spec.frontend = g.domid;
                spec.backend = 0;
                spec.devid = d;
                spec.type = types[d];
                spec.transport = "mmio";
                spec.grant_usage = true;
                spec.base = kMmioBase + 0x200 * d;
                spec.irq = kMmioSpi + d;
                if (auto r = sim->add_virtio_device(spec); !r) {
                    spdlog::error("demo: announce {}: {}", g.name, r.error().describe());
                    return 1;
                }
            }
        }
    }

    auto cfg = parse_config(demo_config_text(guests), "<demo>");
    if (!cfg) {
        spdlog::error("demo: {}", cfg.error().describe());
        return 1;
    }
    Config config = std::move(cfg).value();

    boost::asio::io_context io;
    auto work_guard = boost::asio::make_work_guard(io);
    std::vector<std::thread> threads;
    std::mutex sessions_mu;
    std::map<xen::DomId, std::shared_ptr<GuestSession>> sessions;
    ManagerOptions mo;
    // Each guest on its own I/O threads, as each has its own worker process on Xen.
    mo.threads_per_guest = std::max(2u, config.daemon.workers);
    mo.on_session = [&](std::shared_ptr<GuestSession> s) {
        std::lock_guard lk(sessions_mu);
        sessions[s->domid()] = s;
    };
    auto manager = GuestManager::create(config, *sim, io.get_executor(), mo);
    auto verdicts = manager->start();
    if (!verdicts) {
        spdlog::error("demo: {}", verdicts.error().describe());
        return 3;
    }
    if (!opts.json) {
        out << "xen-virtiod demo: " << opts.guests << " simulated guest(s), " << opts.seconds
            << " s of I/O each, on the simulated hypervisor\n\nSafety policy (seed: Xen FuSa domain roles):\n";
        for (const auto& l : render_log_lines(verdicts.value())) out << "  " << l << "\n";
        out << "\n";
    }
    if (verdicts.value().refuses_start()) {
        spdlog::error("demo: the safety policy refuses to start");
        return 2;
    }
    for (unsigned i = 0; i < std::max(2u, config.daemon.workers); ++i) threads.emplace_back([&io] { io.run(); });

    const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opts.seconds));
    std::atomic<bool> stop{false};
    std::vector<std::thread> drivers;
    for (auto& g : guests) {
        std::shared_ptr<GuestSession> s;
        {
            std::lock_guard lk(sessions_mu);
            if (sessions.count(g.domid)) s = sessions[g.domid];
        }
        if (!s) {
            for (auto& [n, c] : g.devs) c->fail("no session was started for the guest");
            continue;
        }
        g.session = s;
        unsigned pci_slot = 0;
        const auto host = s->plan().pci;
        for (const auto& p : s->plan().devices) {
            unsigned slot = p.transport == Transport::Pci ? pci_slot++ : 0;
            auto* gp = &g;
            if (p.type == DeviceType::Blk)
                drivers.emplace_back([gp, p, slot, host, until, &stop] { drive_blk(*gp, p, slot, 0, host, until, stop); gp->devs.at(p.name)->done = true; });
            else if (p.type == DeviceType::Net) {
                if (!have_netns) {
                    g.devs.at(p.name)->fail(netns_why);
                    continue;
                }
                drivers.emplace_back([gp, p, slot, host, until, &stop] { drive_net(*gp, p, slot, 0, host, until, stop); gp->devs.at(p.name)->done = true; });
            } else {
                std::string pty;
                for (const auto& d : s->devices())
                    if (d.name == p.name && d.detail.rfind("pty ", 0) == 0) pty = d.detail.substr(4);
                drivers.emplace_back([gp, p, slot, host, until, &stop, pty] { drive_console(*gp, p, slot, 0, host, until, stop, pty); gp->devs.at(p.name)->done = true; });
            }
        }
    }

    // Live progress.
    auto print_progress = [&](bool final_line) {
        std::ostringstream s;
        for (auto& g : guests) {
            s << std::left << std::setw(16) << ("dom" + std::to_string(g.domid) + " " + g.name) << " "
              << std::setw(9) << (g.safe ? "SafeVM" : "UnsafeVM");
            for (const char* d : {"blk0", "net0", "console0"}) {
                auto& c = *g.devs.at(d);
                s << " | " << c.type << "/" << c.transport << " " << std::setw(6) << c.requests.load() << " req "
                  << std::setw(7) << std::fixed << std::setprecision(1) << double(c.bytes.load()) / 1048576.0
                  << " MiB " << (c.errors ? "ERR" : (final_line ? (c.verified ? "verified" : "unverified") : "ok"));
            }
            s << "\n";
        }
        return s.str();
    };
    if (tty) {
        std::size_t lines = guests.size();
        bool first = true;
        for (;;) {
            bool all_done = true;
            for (auto& g : guests)
                for (auto& [n, c] : g.devs) all_done &= c->done || c->errors > 0;
            if (!first) out << "\x1b[" << lines << "A";
            first = false;
            out << print_progress(false) << std::flush;
            if (all_done) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(500));
        }
    }
    for (auto& t : drivers) t.join();

    // Turnaround of every trapped access, all guests (worst of each percentile).
    xen::sim::TurnaroundStats ta;
    for (auto& g : guests) {
        auto t = g.sim->turnaround();
        ta.count += t.count;
        ta.p50_us = std::max(ta.p50_us, t.p50_us);
        ta.p99_us = std::max(ta.p99_us, t.p99_us);
        ta.p999_us = std::max(ta.p999_us, t.p999_us);
        ta.max_us = std::max(ta.max_us, t.max_us);
    }
    auto stats = sim->stats();

    // Orderly stop, then prove nothing leaked.
    std::promise<void> stopped;
    manager->stop([&stopped] { stopped.set_value(); });
    stopped.get_future().wait_for(std::chrono::seconds(10));
    for (auto& g : guests) g.session.reset();
    {
        std::lock_guard lk(sessions_mu);
        sessions.clear();
    }
    manager.reset();
    work_guard.reset();
    io.stop();
    for (auto& t : threads) t.join();
    auto left = sim->resources();

    bool all_verified = true;
    nlohmann::json j;
    j["guests"] = nlohmann::json::array();
    for (auto& g : guests) {
        nlohmann::json gj;
        gj["domid"] = g.domid;
        gj["name"] = g.name;
        gj["class"] = g.safe ? "safe" : "unsafe";
        gj["devices"] = nlohmann::json::array();
        for (const char* d : {"blk0", "net0", "console0"}) {
            auto& c = *g.devs.at(d);
            all_verified &= c.verified.load();
            nlohmann::json dj{{"type", c.type},           {"transport", c.transport},
                              {"nonblocking", g.safe},     {"requests", c.requests.load()},
                              {"bytes", c.bytes.load()},   {"errors", c.errors.load()},
                              {"verified", c.verified.load()}};
            if (!c.failure.empty()) dj["failure"] = c.failure;
            gj["devices"].push_back(dj);
        }
        j["guests"].push_back(gj);
    }
    j["ioreq_turnaround_us"] = {{"p50", ta.p50_us}, {"p99", ta.p99_us}, {"p999", ta.p999_us}, {"max", ta.max_us},
                                {"count", ta.count}};
    j["grants"] = {{"map_calls", stats.grant_map_calls},
                   {"pages_mapped", stats.grant_pages_mapped},
                   {"unmap_calls", stats.grant_unmap_calls},
                   {"foreign_ram_maps", stats.foreign_ram_maps}};
    j["leaks"] = {{"ioreq_servers", left.ioreq_servers},
                  {"bound_ports", left.bound_ports},
                  {"mapped_grant_pages", left.mapped_grant_pages}};
    const bool leak_free = left.ioreq_servers == 0 && left.bound_ports == 0 && left.mapped_grant_pages == 0;
    j["verified"] = all_verified && leak_free;

    if (opts.json) {
        out << j.dump() << "\n";
    } else {
        if (!tty) out << print_progress(true);
        out << "\n";
        for (auto& g : guests)
            for (const char* d : {"blk0", "net0", "console0"}) {
                auto& c = *g.devs.at(d);
                out << "  dom" << g.domid << " " << d << ": "
                    << (c.verified ? "verified" : "NOT verified" + (c.failure.empty() ? "" : ": " + c.failure)) << "\n";
            }
        out << std::fixed << std::setprecision(1) << "\nioreq turnaround (trap -> completion, " << ta.count
            << " accesses): p50 " << ta.p50_us << " us, p99 " << ta.p99_us << " us, p99.9 " << ta.p999_us
            << " us, max " << ta.max_us << " us\n"
            << "grants: " << stats.grant_map_calls << " map calls (" << stats.grant_pages_mapped << " pages), "
            << stats.grant_unmap_calls << " unmap calls; foreign mappings of guest RAM: " << stats.foreign_ram_maps
            << "\nafter stop: " << left.ioreq_servers << " ioreq servers, " << left.bound_ports << " event channels, "
            << left.mapped_grant_pages << " grant pages still held\n"
            << (all_verified && leak_free ? "demo: every device verified its data\n" : "demo: FAILED\n");
    }
    return all_verified && leak_free ? 0 : 1;
}

}  // namespace xv::daemon
