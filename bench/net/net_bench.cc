// SPDX-License-Identifier: GPL-2.0-only
// virtio-net tx throughput: simulated guest -> virtqueue -> sim grants ->
// writev to a tap, against plain write()s of the same frames (with the same
// 12-byte vnet header) to the same tap, in the same run. Frames of 1514
// and 64 bytes; the ratio device/baseline is printed at the end.
#include <sys/ioctl.h>
#include <linux/if_tun.h>

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <map>

#include "../../tests/devices/net/net_test_util.h"

namespace {

using namespace xv;
using Clock = std::chrono::steady_clock;

const nettest::NetNs g_ns = nettest::enter_private_netns();

constexpr int kBatch = 128;           // frames per iteration (the tx ring is 256)
constexpr std::uint32_t kMaxLen = 12 + 1514;

struct Bench {
    nettest::NetRig rig;
    std::vector<test::GuestBuf> bufs;  // one per ring slot, header + frame
    int base_fd = -1;                  // the baseline's own queue of the same tap
    std::vector<std::byte> base_buf;
};
Bench* g = nullptr;
std::map<std::pair<std::string, int>, double> g_fps;

std::string setup() {
    g = new Bench;
    devices::NetConfig cfg;
    cfg.tap = "xvbench0";
    cfg.queues = 2;  // a multi-queue tap, so the baseline can attach a queue of its own
    xen::sim::SimOptions so;
    so.protect_pages = false;
    auto r = g->rig.start(cfg, 0, 2, 256, 16384, so);
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
    g->base_buf.assign(kMaxLen, std::byte(0));
    std::memcpy(g->base_buf.data() + 12, f.data(), f.size());
    g->base_fd = ::open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    struct ifreq ifr{};
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
    std::strncpy(ifr.ifr_name, g->rig.dev->tap_name().c_str(), IFNAMSIZ - 1);
    if (g->base_fd < 0 || ::ioctl(g->base_fd, TUNSETIFF, &ifr) < 0) return std::string("baseline tap queue: ") + std::strerror(errno);
    int hs = 12;
    if (::ioctl(g->base_fd, TUNSETVNETHDRSZ, &hs) < 0) return "TUNSETVNETHDRSZ";
    return {};
}

void record(benchmark::State& st, const char* what, std::size_t frames, Clock::duration d) {
    double secs = std::chrono::duration<double>(d).count();
    double fps = secs > 0 ? frames / secs : 0;
    g_fps[{what, static_cast<int>(st.range(0))}] = fps;
    st.counters["frames/s"] = fps;
    st.SetItemsProcessed(static_cast<std::int64_t>(frames));
    st.SetBytesProcessed(static_cast<std::int64_t>(frames * st.range(0)));
}

/// Guest -> device -> tap: a batch of chains, one kick, wait for all used.
void BM_DeviceTx(benchmark::State& st) {
    const auto len = static_cast<std::uint32_t>(12 + st.range(0));
    auto& drv = *g->rig.drv[1];
    std::size_t frames = 0;
    auto t0 = Clock::now();
    for (auto _ : st) {
        for (int i = 0; i < kBatch; ++i) {
            test::GuestBuf b = g->bufs[i];
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
    record(st, "device", frames, Clock::now() - t0);
}

/// Plain write()s of the same header + frame to the same tap.
void BM_BaselineWrite(benchmark::State& st) {
    const auto len = static_cast<std::size_t>(12 + st.range(0));
    std::size_t frames = 0;
    auto t0 = Clock::now();
    for (auto _ : st) {
        for (int i = 0; i < kBatch; ++i) {
            if (::write(g->base_fd, g->base_buf.data(), len) != static_cast<ssize_t>(len)) {
                st.SkipWithError("write to tap failed");
                return;
            }
        }
        frames += kBatch;
    }
    record(st, "baseline", frames, Clock::now() - t0);
}

BENCHMARK(BM_BaselineWrite)->Arg(1514)->Arg(64)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_DeviceTx)->Arg(1514)->Arg(64)->UseRealTime()->MinTime(1.0);

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
    benchmark::RunSpecifiedBenchmarks();
    std::printf("\nvirtio-net tx (sim guest -> tap) against plain write() to the same tap\n");
    std::printf("%8s %16s %16s %8s\n", "frame", "device fr/s", "write() fr/s", "ratio");
    for (int size : {1514, 64}) {
        double d = g_fps[{"device", size}], b = g_fps[{"baseline", size}];
        std::printf("%8d %16.0f %16.0f %7.1f%%\n", size, d, b, b > 0 ? 100.0 * d / b : 0.0);
    }
    auto s = g->rig.dev->stats();
    std::printf("tx frames %llu, dropped %llu, waits for tap room %llu\n", (unsigned long long)s.tx_frames,
                (unsigned long long)s.tx_dropped, (unsigned long long)s.tx_eagain);
    g->rig.stop();
    ::close(g->base_fd);
    benchmark::Shutdown();
    return 0;
}
