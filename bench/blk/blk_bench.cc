// SPDX-License-Identifier: GPL-2.0-only
// virtio-blk data-path benchmark against fio on the same file, same run.
//
// Our path: a simulated guest (xen/sim, protect_pages = false) builds
// virtio-blk requests in its RAM, one split queue, one kick per batch of
// completions; the device pops the chains (validate + grant map), submits
// readv/writev straight into the mapped pages through io_uring (O_DIRECT),
// completes (status, unmap, used ring). One thread runs guest and device.
//
// Baseline: `fio --ioengine=io_uring --direct=1` with the same block size,
// queue depth and pattern on the same file.
//
// Workloads: 4 KiB random read at QD 32 (IOPS), 1 MiB sequential read and
// write at QD 8 (bandwidth). Targets: >= 80 % of fio's IOPS, >= 90 % of its
// bandwidth. Both sides use O_DIRECT on the same file (its page cache is
// dropped after it is written), the same block size, queue depth and file
// size. Each workload runs as several pairs whose order alternates (fio
// first, then ours first, ...: ABBA...), because host caching and load
// drift can favour whichever side runs second; the table gives the median
// of each side and the median of the per-pair ratios (with their range),
// and how many of our requests went through O_DIRECT and how many through
// the page cache. The file is read twice before the first pair (warm-up).
// Environment: XV_BLK_BENCH_DIR (default /var/tmp),
// XV_BLK_BENCH_MIB (default 256), XV_BLK_BENCH_SECONDS (default 3),
// XV_BLK_BENCH_PAIRS (default 7).
#include <benchmark/benchmark.h>

#include <boost/asio/post.hpp>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "xv/devices/blk.h"
#include "xv/log.h"
#include "xv/test/queue_harness.h"
#include "xv/test/virtqueue_driver.h"

namespace {

using namespace xv;
namespace blk = xv::devices::blk;
using Clock = std::chrono::steady_clock;

struct Params {
    std::string dir = "/var/tmp";
    std::uint64_t mib = 256;
    int seconds = 3;
    int pairs = 7;
};

struct Workload {
    const char* name;
    bool read;
    bool random;
    std::uint32_t bs;
    std::uint32_t qd;
    bool iops_target;  // else bandwidth
};

const Workload kWorkloads[] = {
    {"4k-randread-qd32", true, true, 4096, 32, true},
    {"1m-seqread-qd8", true, false, 1 << 20, 8, false},
    {"1m-seqwrite-qd8", false, false, 1 << 20, 8, false},
};

struct Figures {
    double iops = 0;
    double bw = 0;  // bytes/s
    std::uint64_t errors = 0;
    std::uint64_t direct = 0;    // our requests served through O_DIRECT
    std::uint64_t buffered = 0;  // ... through the page cache
};

/// One pair: ours and fio, run back to back.
struct Pair {
    Figures ours, fio;
};

Params g_params;
std::string g_file;
std::map<std::string, std::vector<Pair>> g_results;

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const std::size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

std::string make_file(const Params& p) {
    std::string path = p.dir + "/xv-blk-bench-XXXXXX";
    int fd = ::mkstemp(path.data());
    if (fd < 0) return {};
    std::vector<char> buf(1 << 20);
    std::mt19937_64 rng(1);
    for (auto& c : buf) c = char(rng());
    for (std::uint64_t i = 0; i < p.mib; ++i) {
        buf[0] = char(i);
        if (::write(fd, buf.data(), buf.size()) != ssize_t(buf.size())) {
            ::close(fd);
            ::unlink(path.c_str());
            return {};
        }
    }
    ::fsync(fd);
    // Both sides read with O_DIRECT; drop the pages the set-up left cached
    // all the same, so neither side can be served from them.
    (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
    return path;
}

/// Reads the whole file twice with O_DIRECT before any pair runs. On a
/// virtual disk the host's own cache is out of our reach: warmed up this
/// way it is in the same state for every pair instead of favouring the
/// pairs that run later.
void warm_up(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0) return;
    void* buf = nullptr;
    if (::posix_memalign(&buf, 4096, 1 << 20) == 0) {
        for (int pass = 0; pass < 2; ++pass)
            for (off_t off = 0; ::pread(fd, buf, 1 << 20, off) > 0; off += 1 << 20) {
            }
        std::free(buf);
    }
    ::close(fd);
}

Figures run_fio(const Workload& w) {
    std::string rw = w.random ? (w.read ? "randread" : "randwrite") : (w.read ? "read" : "write");
    std::string cmd = "fio --name=xv --filename=" + g_file + " --ioengine=io_uring --direct=1 --rw=" + rw +
                      " --bs=" + std::to_string(w.bs) + " --iodepth=" + std::to_string(w.qd) +
                      " --size=" + std::to_string(g_params.mib) + "M --runtime=" + std::to_string(g_params.seconds) +
                      " --time_based --numjobs=1 --output-format=json 2>/dev/null";
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return {};
    std::string out;
    char buf[4096];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    ::pclose(p);
    Figures f;
    auto pos = out.find('{');
    if (pos == std::string::npos) return f;
    auto j = nlohmann::json::parse(out.substr(pos), nullptr, false);
    if (j.is_discarded() || !j.contains("jobs") || j["jobs"].empty()) return f;
    const auto& side = j["jobs"][0][w.read ? "read" : "write"];
    f.iops = side.value("iops", 0.0);
    f.bw = side.value("bw_bytes", 0.0);
    return f;
}

/// One guest queue + the device over g_file.
struct OurPath {
    std::unique_ptr<test::QueueHarness> h;
    std::unique_ptr<test::VirtqueueDriver> drv;
    std::unique_ptr<transport::Virtqueue> vq;
    std::unique_ptr<transport::Device> dev;

    bool init(std::uint32_t qd, std::uint32_t bs) {
        xen::sim::SimOptions o;
        o.protect_pages = false;
        auto hh = test::QueueHarness::create(o, 1024 + std::uint64_t(qd) * (bs / 4096 + 3));
        if (!hh) return false;
        h = std::move(*hh);
        auto d = h->driver({.size = 256});
        if (!d) return false;
        drv = std::move(*d);
        auto q = h->queue(*drv);
        if (!q) return false;
        vq = std::move(*q);
        devices::BlkConfig cfg;
        cfg.path = g_file;
        auto dv = devices::make_blk(cfg, {h->domid, "blk0"}, h->io.get_executor());
        if (!dv) {
            std::fprintf(stderr, "blk_bench: %s\n", dv.error().describe().c_str());
            return false;
        }
        dev = std::move(*dv);
        transport::ActivateContext ctx;
        ctx.features = dev->device_features() | transport::feature::bit(transport::feature::kVersion1);
        ctx.queues = {vq.get()};
        return bool(dev->activate(std::move(ctx)));
    }

    Figures run(const Workload& w, double seconds) {
        struct Slot {
            test::GuestBuf hdr, data, status;
        };
        std::vector<Slot> slots(w.qd);
        for (auto& s : slots) {
            s.hdr = drv->alloc(16, true).value();
            s.data = drv->alloc(w.bs, !w.read).value();
            s.status = drv->alloc(1, false).value();
        }
        const std::uint64_t blocks = g_params.mib * (1 << 20) / w.bs;
        std::mt19937_64 rng(7);
        std::uint64_t next_seq = 0;
        std::vector<std::uint32_t> by_id(1 << 16);
        auto submit = [&](std::uint32_t i) {
            const std::uint64_t blkno = w.random ? rng() % blocks : next_seq++ % blocks;
            blk::OutHdr hdr{w.read ? blk::req::kIn : blk::req::kOut, 0, blkno * (w.bs / 512)};
            std::memcpy(slots[i].hdr.ptr, &hdr, sizeof hdr);
            slots[i].status.ptr[0] = std::byte{0xff};
            auto s = drv->chain().add(slots[i].hdr, false).add(slots[i].data, w.read).add(slots[i].status, true).submit();
            if (s) by_id[s->id] = i;
        };
        auto kick = [&] { boost::asio::post(vq->strand(), [this] { dev->queue_notify(0); }); };

        Figures f;
        std::uint64_t done = 0;
        std::uint32_t outstanding = w.qd;
        const auto t0 = Clock::now();
        const auto t_end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
        for (std::uint32_t i = 0; i < w.qd; ++i) submit(i);
        kick();
        while (outstanding > 0) {
            h->io.restart();
            h->io.run_one();
            bool again = false;
            const bool time_left = Clock::now() < t_end;
            while (auto u = drv->next_used()) {
                const std::uint32_t i = by_id[std::uint16_t(u->id)];
                if (std::uint8_t(slots[i].status.ptr[0]) != blk::kStatusOk) ++f.errors;
                ++done;
                if (time_left) {
                    submit(i);
                    again = true;
                } else {
                    --outstanding;
                }
            }
            if (again) kick();
        }
        const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
        f.iops = double(done) / secs;
        f.bw = f.iops * w.bs;
        if (auto* b = dynamic_cast<devices::BlkDevice*>(dev.get())) {
            const auto st = b->stats();
            f.direct = st.direct_ios;
            f.buffered = st.buffered_ios;
        }
        return f;
    }

    ~OurPath() {
        if (dev && h) {
            bool stopped = false;
            dev->reset([&] { stopped = true; });
            while (!stopped) {
                h->io.restart();
                h->io.run_one_for(std::chrono::milliseconds(10));
            }
            h->io.restart();
            h->io.poll();
        }
        dev.reset();
        vq.reset();
        if (h) {
            h->io.restart();
            h->io.poll();
        }
    }
};

double ratio(const Workload& w, const Pair& p) {
    return w.iops_target ? (p.fio.iops ? p.ours.iops / p.fio.iops : 0) : (p.fio.bw ? p.ours.bw / p.fio.bw : 0);
}

/// One pair; `ours_first` alternates between pairs.
void bench_workload(benchmark::State& state, const Workload* w, bool ours_first) {
    Figures ours, fio;
    for (auto _ : state) {
        if (!ours_first) fio = run_fio(*w);
        {
            OurPath p;
            if (!p.init(w->qd, w->bs)) {
                state.SkipWithError("device set-up failed");
                return;
            }
            ours = p.run(*w, g_params.seconds);
        }
        if (ours_first) fio = run_fio(*w);
    }
    g_results[w->name].push_back({ours, fio});
    state.counters["IOPS"] = ours.iops;
    state.counters["MB/s"] = ours.bw / 1e6;
    state.counters["fio_IOPS"] = fio.iops;
    state.counters["fio_MB/s"] = fio.bw / 1e6;
    state.counters["ratio"] = ratio(*w, {ours, fio});
    state.counters["ours_first"] = ours_first;
    state.counters["errors"] = double(ours.errors);
}

}  // namespace

int main(int argc, char** argv) {
    if (const char* d = std::getenv("XV_BLK_BENCH_DIR")) g_params.dir = d;
    if (const char* m = std::getenv("XV_BLK_BENCH_MIB")) g_params.mib = std::max(16ul, std::strtoul(m, nullptr, 10));
    if (const char* s = std::getenv("XV_BLK_BENCH_SECONDS")) g_params.seconds = std::max(1, std::atoi(s));
    if (const char* s = std::getenv("XV_BLK_BENCH_PAIRS")) g_params.pairs = std::clamp(std::atoi(s), 1, 50);
    xv::log::set_level("warn");
    benchmark::Initialize(&argc, argv);
    g_file = make_file(g_params);
    if (g_file.empty()) {
        std::fprintf(stderr, "blk_bench: cannot create a %lu MiB file in %s\n", g_params.mib, g_params.dir.c_str());
        return 1;
    }
    warm_up(g_file);
    // Pair k runs fio first when k is even, ours first when k is odd.
    for (int k = 0; k < g_params.pairs; ++k)
        for (const auto& w : kWorkloads)
            benchmark::RegisterBenchmark(w.name, bench_workload, &w, k % 2 == 1)
                ->Iterations(1)
                ->UseRealTime()
                ->Unit(benchmark::kSecond);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    ::unlink(g_file.c_str());

    std::printf("\nvirtio-blk over sim grants + io_uring vs fio (io_uring, O_DIRECT, same file/bs/QD), %lu MiB file in "
                "%s, %d s per side, %d pairs in alternating order, medians\n",
                g_params.mib, g_params.dir.c_str(), g_params.seconds, g_params.pairs);
    std::printf("%-18s %12s %12s %10s %10s %7s %13s %8s %6s %10s %9s\n", "workload", "ours IOPS", "fio IOPS",
                "ours MB/s", "fio MB/s", "ratio", "ratio range", "target", "met", "O_DIRECT", "buffered");
    for (const auto& w : kWorkloads) {
        auto it = g_results.find(w.name);
        if (it == g_results.end() || it->second.empty()) continue;
        std::vector<double> oi, fi, ob, fb, rs;
        std::uint64_t direct = 0, buffered = 0, errors = 0;
        for (const Pair& p : it->second) {
            oi.push_back(p.ours.iops);
            fi.push_back(p.fio.iops);
            ob.push_back(p.ours.bw);
            fb.push_back(p.fio.bw);
            rs.push_back(ratio(w, p));
            direct += p.ours.direct;
            buffered += p.ours.buffered;
            errors += p.ours.errors;
        }
        const double r = median(rs);
        const double target = w.iops_target ? 0.80 : 0.90;
        std::printf("%-18s %12.0f %12.0f %10.1f %10.1f %7.2f %6.2f-%-6.2f %8s %6s %10llu %9llu%s\n", w.name, median(oi),
                    median(fi), median(ob) / 1e6, median(fb) / 1e6, r, *std::min_element(rs.begin(), rs.end()),
                    *std::max_element(rs.begin(), rs.end()), w.iops_target ? ">=0.80" : ">=0.90",
                    r >= target ? "yes" : "NO", (unsigned long long)direct, (unsigned long long)buffered,
                    errors ? "  (errors!)" : "");
    }
    return 0;
}
