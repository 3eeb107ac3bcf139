// SPDX-License-Identifier: GPL-2.0-only
// virtio-net tx throughput: simulated guest -> virtqueue -> sim grants ->
// write to a tap, against plain write()s of the same frames (with the same
// 12-byte vnet header, from the same guest buffers in the same order, so
// equally warm or cold in the cache) to the same tap, in the same run. Frames of 1514
// and 64 bytes, and a 64 KiB TCP/IPv4 TSO frame (the vnet header asks
// the kernel to segment it: VIRTIO_NET_F_HOST_TSO4 and CSUM negotiated);
// the ratio device/baseline is printed at the end. The queues negotiate
// VIRTIO_F_EVENT_IDX, as Linux guests do.
//
// Two figures per side. Wall clock: frames per second with the guest on the
// bench thread and the device on its own loop thread, as a guest vCPU and
// the backend run. Per CPU second: frames per second of CPU time of the
// thread doing the work (the device's loop thread; the baseline's write()
// thread) - what one backend core can carry, and what does not depend on
// how busy a shared machine is. Each case runs three times, alternating
// with the baseline; the best run counts.
//
// rx: frames sent into the tap by the bench (a packet socket on the tap,
// as the host stack would hand them to the guest) and received in the
// guest's rx buffers, against plain read()s of the same frames from a
// second tap by a thread of its own, in the same run. The sender is the
// bench thread in both cases; per CPU second counts the receiving thread.
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/if.h>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <pthread.h>
#include <time.h>

#include "../../tests/devices/net/net_test_util.h"

namespace {

using namespace xv;
using Clock = std::chrono::steady_clock;

const nettest::NetNs g_ns = nettest::enter_private_netns();

constexpr int kBatch = 128;           // frames per iteration (the tx ring is 256)
constexpr std::uint32_t kMaxLen = 12 + 1514;
/// The TSO case: Ethernet + IPv4 + TCP headers and 65000 bytes of payload
/// (IPv4 total length 65040, within its 16-bit field).
constexpr int kTsoFrame = 14 + 20 + 20 + 65000;
constexpr std::uint32_t kTsoLen = 12 + kTsoFrame;

/// A TCP/IPv4 frame of kTsoFrame bytes behind a virtio-net header asking
/// for TSO with a 1448-byte MSS and the TCP checksum offloaded (virtio 1.2
/// §5.1.6.2): what a Linux guest sends with TSO on.
std::vector<std::byte> tso_frame(const nettest::Mac& dst, const nettest::Mac& src) {
    std::vector<std::byte> b(kTsoLen);
    devices::VirtioNetHdr h;
    h.flags = devices::net_hdr::kNeedsCsum;
    h.gso_type = devices::net_hdr::kGsoTcpv4;
    h.hdr_len = 14 + 20 + 20;
    h.gso_size = 1448;
    h.csum_start = 14 + 20;
    h.csum_offset = 16;  // TCP checksum field
    std::memcpy(b.data(), &h, sizeof h);
    auto* f = reinterpret_cast<std::uint8_t*>(b.data() + 12);
    std::memcpy(f, dst.data(), 6);
    std::memcpy(f + 6, src.data(), 6);
    f[12] = 0x08;  // IPv4
    f[13] = 0x00;
    std::uint8_t* ip = f + 14;
    const std::uint16_t tot = kTsoFrame - 14;
    const std::uint8_t iph[20] = {0x45, 0, std::uint8_t(tot >> 8), std::uint8_t(tot), 0, 1, 0x40, 0, 64, 6, 0, 0,
                                  10, 0, 0, 1, 10, 0, 0, 2};
    std::memcpy(ip, iph, 20);
    std::uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2) sum += std::uint32_t(ip[i]) << 8 | ip[i + 1];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    ip[10] = std::uint8_t(~sum >> 8);
    ip[11] = std::uint8_t(~sum);
    std::uint8_t* tcp = ip + 20;
    const std::uint8_t tcph[20] = {0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0};
    std::memcpy(tcp, tcph, 20);
    for (int i = 0; i < 65000; ++i) tcp[20 + i] = std::uint8_t(i);
    return b;
}

struct Bench {
    nettest::NetRig rig;
    std::vector<test::GuestBuf> bufs;  // one per ring slot, header + frame
    std::vector<test::GuestBuf> tso_bufs;  // the same for the TSO frame
    std::vector<std::byte> base_tso_buf;
    int base_fd = -1;                  // the baseline's own queue of the same tap
    std::vector<std::byte> base_buf;
    // rx
    std::vector<test::GuestBuf> rx_bufs;  // guest rx buffers, one per frame of a batch
    int sender = -1;                      // AF_PACKET socket that receives nothing
    int dev_ifindex = 0, base_rx_ifindex = 0;
    int base_rx_fd = -1;                  // the rx baseline's tap (read by base_rx_thread)
    std::thread base_rx_thread;
    std::atomic<std::uint64_t> base_rx_frames{0};
    std::atomic<bool> base_rx_stop{false};
    std::vector<std::byte> rx_frame[2];   // 1514 and 64 bytes
    bool protect = false;                 // sim grant mappings with page protections
    unsigned tx_poll_us = 0;              // the device's tx poll window
};
Bench* g = nullptr;

std::string setup() {
    g = new Bench;
    devices::NetConfig cfg;
    cfg.tap = "xvbench0";
    cfg.queues = 2;  // a multi-queue tap, so the baseline can attach a queue of its own
    // The device's tx poll window (NetConfig::tx_poll_us): its default, or
    // XV_NET_BENCH_TX_POLL_US (0: no polling, a kick for every refill of
    // an empty ring).
    if (const char* tp = std::getenv("XV_NET_BENCH_TX_POLL_US"); tp && *tp)
        cfg.tx_poll_us = static_cast<unsigned>(std::strtoul(tp, nullptr, 10));
    g->tx_poll_us = cfg.tx_poll_us;
    xen::sim::SimOptions so;
    // Mappings as plain pointers into guest memory, as for the other
    // benchmarks; XV_NET_BENCH_PROTECT=1 maps each batch with mmap() and
    // page protections instead (closer to what gntdev costs).
    const char* prot = std::getenv("XV_NET_BENCH_PROTECT");
    so.protect_pages = g->protect = prot && *prot == '1';
    g->rig.event_idx = true;
    using namespace devices::net_feature;
    const std::uint64_t features = 1ULL << kCsum | 1ULL << kHostTso4;
    auto r = g->rig.start(cfg, features, 2, 256, 16384, so);
    if (!r) return r.error().describe();
    const nettest::Mac dst{0x02, 0, 0, 0, 0, 2}, src{0x52, 0x54, 0, 0, 0, 1};
    auto f = nettest::frame(dst, src, 1500);
    for (int i = 0; i < kBatch; ++i) {
        auto b = g->rig.drv[1]->alloc(kMaxLen, /*readonly=*/true);
        if (!b) return b.error().describe();
        std::memset(b->ptr, 0, 12);
        std::memcpy(b->ptr + 12, f.data(), f.size());
        g->bufs.push_back(*b);
    }
    g->base_tso_buf = tso_frame(dst, src);
    for (int i = 0; i < kBatch; ++i) {
        auto b = g->rig.drv[1]->alloc(kTsoLen, /*readonly=*/true);
        if (!b) return b.error().describe();
        std::memcpy(b->ptr, g->base_tso_buf.data(), kTsoLen);
        g->tso_bufs.push_back(*b);
    }
    g->base_buf.assign(kMaxLen, std::byte(0));
    std::memcpy(g->base_buf.data() + 12, f.data(), f.size());
    g->base_fd = ::open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    struct ifreq ifr{};
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
    std::strncpy(ifr.ifr_name, g->rig.dev->tap_name().c_str(), IFNAMSIZ - 1);
    if (g->base_fd < 0 || ::ioctl(g->base_fd, TUNSETIFF, &ifr) < 0) return std::string("baseline tap queue: ") + std::strerror(errno);
    int hs = 12;
    if (::ioctl(g->base_fd, TUNSETVNETHDRSZ, &hs) < 0) return "TUNSETVNETHDRSZ";

    // rx: guest buffers for a frame of up to 1514 bytes with its header.
    for (int i = 0; i < kBatch; ++i) {
        auto b = g->rig.drv[0]->alloc(kMaxLen, /*readonly=*/false);
        if (!b) return b.error().describe();
        g->rx_bufs.push_back(*b);
    }
    g->rx_frame[0] = nettest::frame(src, dst, 1500);
    g->rx_frame[1] = nettest::frame(src, dst, 50);
    // The rx baseline's tap: one queue, the same header size, up.
    g->base_rx_fd = ::open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    struct ifreq ifr1{};
    ifr1.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    std::strncpy(ifr1.ifr_name, "xvbench1", IFNAMSIZ - 1);
    if (g->base_rx_fd < 0 || ::ioctl(g->base_rx_fd, TUNSETIFF, &ifr1) < 0)
        return std::string("baseline rx tap: ") + std::strerror(errno);
    if (::ioctl(g->base_rx_fd, TUNSETVNETHDRSZ, &hs) < 0) return "TUNSETVNETHDRSZ";
    int ctl = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq up{};
    std::strncpy(up.ifr_name, "xvbench1", IFNAMSIZ - 1);
    up.ifr_flags = IFF_UP;
    const bool up_ok = ctl >= 0 && ::ioctl(ctl, SIOCSIFFLAGS, &up) == 0;
    if (ctl >= 0) ::close(ctl);
    if (!up_ok) return std::string("xvbench1 up: ") + std::strerror(errno);
    // Protocol 0: the socket only sends (it must not take a copy of every
    // frame the tx cases write into the tap).
    g->sender = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (g->sender < 0) return std::string("packet socket: ") + std::strerror(errno);
    g->dev_ifindex = static_cast<int>(::if_nametoindex(g->rig.dev->tap_name().c_str()));
    g->base_rx_ifindex = static_cast<int>(::if_nametoindex("xvbench1"));
    if (g->dev_ifindex == 0 || g->base_rx_ifindex == 0) return "if_nametoindex";
    g->base_rx_thread = std::thread([] {
        std::vector<std::byte> b(kMaxLen + 64);
        while (!g->base_rx_stop.load(std::memory_order_relaxed)) {
            if (::read(g->base_rx_fd, b.data(), b.size()) > 0) g->base_rx_frames.fetch_add(1, std::memory_order_release);
        }
    });
    return {};
}

/// CPU seconds thread `t` has used so far.
double cpu_seconds(pthread_t t) {
    clockid_t id;
    timespec ts{};
    if (::pthread_getcpuclockid(t, &id) != 0 || ::clock_gettime(id, &ts) != 0) return 0;
    return double(ts.tv_sec) + double(ts.tv_nsec) / 1e9;
}

struct Best {
    double wall = 0;  ///< frames per wall-clock second
    double cpu = 0;   ///< frames per CPU second of the working thread
};
std::map<std::pair<std::string, int>, Best> g_best;
/// Per frame size: kicks of the streaming guest (each wakes the device's
/// thread) and frames it sent.
std::map<std::int64_t, std::pair<std::uint64_t, std::uint64_t>> g_stream_kicks;

void record(benchmark::State& st, const char* what, std::size_t frames, Clock::duration d, double cpu) {
    const double secs = std::chrono::duration<double>(d).count();
    const double fps = secs > 0 ? frames / secs : 0;
    const double per_cpu = cpu > 0 ? frames / cpu : 0;
    // Only runs of at least 0.2 s count (the library's first, one-iteration
    // probe of each case is too short to time a thread's CPU use).
    if (secs >= 0.2) {
        Best& b = g_best[{what, static_cast<int>(st.range(0))}];
        b.wall = std::max(b.wall, fps);
        b.cpu = std::max(b.cpu, per_cpu);
    }
    st.counters["frames/s"] = fps;
    st.counters["frames/cpu_s"] = per_cpu;
    st.SetItemsProcessed(static_cast<std::int64_t>(frames));
    st.SetBytesProcessed(static_cast<std::int64_t>(frames * st.range(0)));
}

/// Guest -> device -> tap: a batch of chains, one kick, wait for all used.
void BM_DeviceTx(benchmark::State& st) {
    const auto len = static_cast<std::uint32_t>(12 + st.range(0));
    const auto& bufs = st.range(0) == kTsoFrame ? g->tso_bufs : g->bufs;
    auto& drv = *g->rig.drv[1];
    std::size_t frames = 0;
    const pthread_t dev_thread = g->rig.loop.native_handle();
    const double c0 = cpu_seconds(dev_thread);
    auto t0 = Clock::now();
    for (auto _ : st) {
        for (int i = 0; i < kBatch; ++i) {
            test::GuestBuf b = bufs[i];
            b.len = len;
            if (!drv.chain().add(b, false).submit()) {
                st.SkipWithError("submit failed");
                return;
            }
        }
        g->rig.kick(1);
        for (int got = 0; got < kBatch;) {
            if (drv.next_used())
                ++got;
            else
                std::this_thread::yield();
        }
        frames += kBatch;
    }
    record(st, "device", frames, Clock::now() - t0, cpu_seconds(dev_thread) - c0);
}

/// Guest -> device -> tap with a streaming guest, as a guest's vCPU sends:
/// it reclaims used buffers and refills the ring as it goes (up to kBatch
/// frames in flight) and kicks only when the device asks for it (EVENT_IDX,
/// virtio 1.2 §2.7.10), so the device never waits for a whole batch.
void BM_DeviceTxStream(benchmark::State& st) {
    const auto len = static_cast<std::uint32_t>(12 + st.range(0));
    const auto& bufs = st.range(0) == kTsoFrame ? g->tso_bufs : g->bufs;
    auto& drv = *g->rig.drv[1];
    std::size_t sent = 0, done = 0;
    auto reclaim = [&] {
        bool any = false;
        while (drv.next_used()) {
            ++done;
            any = true;
        }
        return any;
    };
    const pthread_t dev_thread = g->rig.loop.native_handle();
    const double c0 = cpu_seconds(dev_thread);
    auto t0 = Clock::now();
    for (auto _ : st) {
        const std::size_t goal = done + kBatch;
        while (done < goal) {
            bool progress = reclaim();
            // Completions come in ring order: the buffer of frame `sent`
            // was last used by frame sent - kBatch, which is done.
            bool added = false;
            while (sent - done < static_cast<std::size_t>(kBatch)) {
                test::GuestBuf b = bufs[sent % kBatch];
                b.len = len;
                if (!drv.chain().add(b, false).submit()) {
                    st.SkipWithError("submit failed");
                    return;
                }
                ++sent;
                added = true;
            }
            if (added && drv.kick_needed()) {
                g->rig.kick(1);
                ++g_stream_kicks[st.range(0)].first;
            }
            if (!progress && !added) std::this_thread::yield();
        }
    }
    // The frames still in flight count too: wait for them.
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    while (done < sent && Clock::now() < deadline) {
        if (!reclaim()) std::this_thread::yield();
    }
    if (done < sent) {
        st.SkipWithError("tx frames not completed");
        return;
    }
    g_stream_kicks[st.range(0)].second += done;
    record(st, "device_stream", done, Clock::now() - t0, cpu_seconds(dev_thread) - c0);
}

/// The target's baseline: plain write()s of the same frames to the same
/// tap, from the same buffers the guest posts (header + frame each), in
/// the order the guest posts them - the same bytes at the same addresses,
/// as warm or cold in the cache as the device finds them.
void BM_BaselineWrite(benchmark::State& st) {
    const auto len = static_cast<std::size_t>(12 + st.range(0));
    const auto& bufs = st.range(0) == kTsoFrame ? g->tso_bufs : g->bufs;
    std::size_t frames = 0;
    const double c0 = cpu_seconds(::pthread_self());
    auto t0 = Clock::now();
    for (auto _ : st) {
        for (int i = 0; i < kBatch; ++i) {
            if (::write(g->base_fd, bufs[i].ptr, len) != static_cast<ssize_t>(len)) {
                st.SkipWithError("write to tap failed");
                return;
            }
        }
        frames += kBatch;
    }
    record(st, "baseline", frames, Clock::now() - t0, cpu_seconds(::pthread_self()) - c0);
}

/// For comparison only: write()s of one frame from one buffer, over and
/// over (always hot in the cache, which no guest's stream of buffers is:
/// 128 buffers of a 64 KiB TSO frame are 8 MiB).
void BM_BaselineWriteOneBuf(benchmark::State& st) {
    const auto len = static_cast<std::size_t>(12 + st.range(0));
    const std::byte* buf = st.range(0) == kTsoFrame ? g->base_tso_buf.data() : g->base_buf.data();
    std::size_t frames = 0;
    const double c0 = cpu_seconds(::pthread_self());
    auto t0 = Clock::now();
    for (auto _ : st) {
        for (int i = 0; i < kBatch; ++i) {
            if (::write(g->base_fd, buf, len) != static_cast<ssize_t>(len)) {
                st.SkipWithError("write to tap failed");
                return;
            }
        }
        frames += kBatch;
    }
    record(st, "baseline_onebuf", frames, Clock::now() - t0, cpu_seconds(::pthread_self()) - c0);
}

/// Sends `n` copies of `f` out of interface `ifindex` (into its tap).
bool send_frames(int ifindex, const std::vector<std::byte>& f, int n) {
    sockaddr_ll to{};
    to.sll_family = AF_PACKET;
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    std::memcpy(to.sll_addr, f.data(), 6);
    for (int i = 0; i < n; ++i)
        if (::sendto(g->sender, f.data(), f.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to) !=
            static_cast<ssize_t>(f.size()))
            return false;
    return true;
}

/// Attaches (true) or detaches the tx baseline's queue of the device's tap,
/// so that frames sent into that tap reach only the device's queue.
bool base_queue(bool attach) {
    struct ifreq ifr{};
    ifr.ifr_flags = attach ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
    return ::ioctl(g->base_fd, TUNSETQUEUE, &ifr) == 0;
}

/// Tap -> device -> guest rx buffers: the guest posts a batch of buffers,
/// the bench sends as many frames into the tap, and waits for all used.
void BM_DeviceRx(benchmark::State& st) {
    const auto& f = g->rx_frame[st.range(0) == 1514 ? 0 : 1];
    auto& drv = *g->rig.drv[0];
    if (!base_queue(false)) {
        st.SkipWithError("detach the baseline's tap queue");
        return;
    }
    std::size_t frames = 0;
    const pthread_t dev_thread = g->rig.loop.native_handle();
    const double c0 = cpu_seconds(dev_thread);
    auto t0 = Clock::now();
    for (auto _ : st) {
        for (int i = 0; i < kBatch; ++i) {
            if (!drv.chain().add(g->rx_bufs[i], true).submit()) {
                st.SkipWithError("submit failed");
                return;
            }
        }
        g->rig.kick(0);
        if (!send_frames(g->dev_ifindex, f, kBatch)) {
            st.SkipWithError("send into the tap failed");
            return;
        }
        const auto deadline = Clock::now() + std::chrono::seconds(5);
        for (int got = 0; got < kBatch;) {
            if (auto u = drv.next_used()) {
                if (u->len != 12 + f.size()) {
                    st.SkipWithError("rx frame of the wrong length");
                    return;
                }
                ++got;
            } else if (Clock::now() > deadline) {
                st.SkipWithError("rx frames lost");
                return;
            } else {
                std::this_thread::yield();
            }
        }
        frames += kBatch;
    }
    record(st, "device_rx", frames, Clock::now() - t0, cpu_seconds(dev_thread) - c0);
    base_queue(true);
}

/// The same frames sent into a second tap, read() one by one by a thread.
void BM_BaselineRead(benchmark::State& st) {
    const auto& f = g->rx_frame[st.range(0) == 1514 ? 0 : 1];
    std::size_t frames = 0;
    const double c0 = cpu_seconds(g->base_rx_thread.native_handle());
    std::uint64_t want = g->base_rx_frames.load();
    auto t0 = Clock::now();
    for (auto _ : st) {
        if (!send_frames(g->base_rx_ifindex, f, kBatch)) {
            st.SkipWithError("send into the tap failed");
            return;
        }
        want += kBatch;
        const auto deadline = Clock::now() + std::chrono::seconds(5);
        while (g->base_rx_frames.load(std::memory_order_acquire) < want) {
            if (Clock::now() > deadline) {
                st.SkipWithError("baseline rx frames lost");
                return;
            }
            std::this_thread::yield();
        }
        frames += kBatch;
    }
    record(st, "baseline_rx", frames, Clock::now() - t0, cpu_seconds(g->base_rx_thread.native_handle()) - c0);
}

void register_all() {
    for (int rep = 0; rep < 3; ++rep)
        for (int size : {1514, 64, kTsoFrame}) {
            benchmark::RegisterBenchmark("BM_BaselineWrite", BM_BaselineWrite)->Arg(size)->UseRealTime()->MinTime(1.0);
            benchmark::RegisterBenchmark("BM_DeviceTx", BM_DeviceTx)->Arg(size)->UseRealTime()->MinTime(1.0);
            benchmark::RegisterBenchmark("BM_DeviceTxStream", BM_DeviceTxStream)->Arg(size)->UseRealTime()->MinTime(1.0);
            benchmark::RegisterBenchmark("BM_BaselineWriteOneBuf", BM_BaselineWriteOneBuf)
                ->Arg(size)
                ->UseRealTime()
                ->MinTime(0.5);
        }
    for (int rep = 0; rep < 3; ++rep)
        for (int size : {1514, 64}) {
            benchmark::RegisterBenchmark("BM_BaselineRead", BM_BaselineRead)->Arg(size)->UseRealTime()->MinTime(1.0);
            benchmark::RegisterBenchmark("BM_DeviceRx", BM_DeviceRx)->Arg(size)->UseRealTime()->MinTime(1.0);
        }
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (!g_ns.ok) {
        std::printf("net_bench skipped: %s\n", g_ns.why.c_str());
        return 0;
    }
    if (auto err = setup(); !err.empty()) {
        std::printf("net_bench skipped: %s\n", err.c_str());
        return 0;
    }
    register_all();
    benchmark::RunSpecifiedBenchmarks();
    std::printf("\nsim grant mappings: %s\n", g->protect ? "mmap with page protections per batch (XV_NET_BENCH_PROTECT=1)"
                                                      : "pointers into guest memory");
    std::printf("virtio-net tx (sim guest -> tap) against plain write() to the same tap, best of 3 runs each\n"
                "guest 'batch': posts %d frames, kicks, waits for all; 'stream': keeps %d in flight, kicks when asked\n"
                "(frame 65054: one TCP/IPv4 TSO frame of 64 KiB)\n",
                kBatch, kBatch);
    std::printf("%6s %-7s %-15s %12s %8s %12s %8s %7s %7s\n", "frame", "guest", "rate", "device fr/s", "Gbit/s",
                "write() fr/s", "Gbit/s", "ratio", "target");
    const std::pair<const char*, double Best::*> rates[] = {{"wall clock", &Best::wall}, {"per CPU second", &Best::cpu}};
    for (int size : {1514, 64, kTsoFrame}) {
        const Best b = g_best[{"baseline", size}];
        for (auto [guest, key] : {std::pair{"batch", "device"}, std::pair{"stream", "device_stream"}}) {
            const Best d = g_best[{key, size}];
            for (auto [name, m] : rates)
                std::printf("%6d %-7s %-15s %12.0f %8.3f %12.0f %8.3f %6.1f%% %7s\n", size, guest, name, d.*m,
                            d.*m * size * 8 / 1e9, b.*m, b.*m * size * 8 / 1e9,
                            b.*m > 0 ? 100.0 * (d.*m) / (b.*m) : 0.0, ">=80%");
        }
    }
    for (int size : {1514, 64, kTsoFrame}) {
        const auto [kicks, frames] = g_stream_kicks[size];
        std::printf("stream guest, frame %d: %llu kicks for %llu frames (one per %.0f)\n", size, (unsigned long long)kicks,
                    (unsigned long long)frames, kicks ? double(frames) / double(kicks) : 0.0);
    }
    std::printf("\nfor comparison, not the target's baseline: write() of one buffer over and over (hot in the cache)\n"
                "instead of the guest's %d buffers in turn\n",
                kBatch);
    std::printf("%6s %-15s %12s %8s %22s\n", "frame", "rate", "write() fr/s", "Gbit/s", "stream device / this");
    for (int size : {1514, 64, kTsoFrame}) {
        const Best c = g_best[{"baseline_onebuf", size}], d = g_best[{"device_stream", size}];
        for (auto [name, m] : rates)
            std::printf("%6d %-15s %12.0f %8.3f %21.1f%%\n", size, name, c.*m, c.*m * size * 8 / 1e9,
                        c.*m > 0 ? 100.0 * (d.*m) / (c.*m) : 0.0);
    }
    std::printf("\nvirtio-net rx (tap -> sim guest) against plain read() from a tap, best of 3 runs each\n");
    std::printf("%6s %-13s %14s %9s %14s %9s %7s\n", "frame", "rate", "device fr/s", "Gbit/s", "read() fr/s", "Gbit/s",
                "ratio");
    for (int size : {1514, 64}) {
        const Best d = g_best[{"device_rx", size}], b = g_best[{"baseline_rx", size}];
        const std::pair<const char*, double Best::*> rates[] = {{"wall clock", &Best::wall}, {"per CPU second", &Best::cpu}};
        for (auto [name, m] : rates)
            std::printf("%6d %-13s %14.0f %9.3f %14.0f %9.3f %6.1f%%\n", size, name, d.*m, d.*m * size * 8 / 1e9, b.*m,
                        b.*m * size * 8 / 1e9, b.*m > 0 ? 100.0 * (d.*m) / (b.*m) : 0.0);
    }
    auto s = g->rig.dev->stats();
    std::printf("tx frames %llu, dropped %llu, waits for tap room %llu; rx frames %llu, dropped %llu, stalls %llu\n",
                (unsigned long long)s.tx_frames, (unsigned long long)s.tx_dropped, (unsigned long long)s.tx_eagain,
                (unsigned long long)s.rx_frames, (unsigned long long)s.rx_dropped, (unsigned long long)s.rx_stalls);
    const double dev_cpu = cpu_seconds(g->rig.loop.native_handle());
    std::printf("tx poll window %u us (XV_NET_BENCH_TX_POLL_US): %llu windows, %llu found chains, %llu in vain "
                "(%llu ended early: CPU wanted); CPU polled in vain %.1f ms = %.2f %% of the device thread's %.2f s\n",
                g->tx_poll_us, (unsigned long long)s.tx_polls, (unsigned long long)s.tx_poll_hits,
                (unsigned long long)s.tx_polls_in_vain, (unsigned long long)s.tx_polls_contended,
                double(s.tx_poll_in_vain_ns) / 1e6, dev_cpu > 0 ? 100.0 * double(s.tx_poll_in_vain_ns) / 1e9 / dev_cpu : 0.0,
                dev_cpu);
    for (int qi : {0, 1}) {
        const auto& qs = g->rig.q[qi]->stats();
        std::printf("%s queue: %llu chains completed, %llu notification checks, %llu interrupts, %llu suppressed "
                    "(EVENT_IDX)\n",
                    qi == 0 ? "rx" : "tx", (unsigned long long)qs.completed, (unsigned long long)qs.notify_calls,
                    (unsigned long long)qs.interrupts, (unsigned long long)qs.interrupts_suppressed);
    }
    g->rig.stop();
    g->base_rx_stop = true;
    send_frames(g->base_rx_ifindex, g->rx_frame[1], 1);  // wakes the reader
    g->base_rx_thread.join();
    ::close(g->base_rx_fd);
    ::close(g->sender);
    ::close(g->base_fd);
    benchmark::Shutdown();
    return 0;
}
