// SPDX-License-Identifier: GPL-2.0-only
// Virtqueue data-path benchmark: virtio-blk-like 4 KiB requests (16-byte
// header RO, 4096 data RW, 1-byte status RW) through a split ring over
// xen/sim grants (protect_pages = false: mappings are views of premapped
// guest RAM, RO views PROT_READ), one core, B chains per notification. Each
// iteration: the driver builds B requests (header, three descriptors, avail
// entry each) and makes them available with one idx store, the device pops them (validate + one grant map call for all B chains), reads
// the header, writes the status, completes them (one unmap per chain, then
// its used entry; queue-map-pushb: one push_batch(), one unmap call for all
// B chains, then their used entries) and notifies once; the driver reaps
// the used ring.
//
// Baseline, same run and ring layout: a bare ring round trip that trusts
// the ring (no validation, no grants: buffer addresses translated through
// a flat table set up once), as a device with all guest RAM mapped would.
//
// Printed at the end: requests/s per variant, the ratio to the baseline of
// the same batch size, and grant calls per request.
#include <benchmark/benchmark.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>

#include "xv/log.h"
#include "xv/test/queue_harness.h"
#include "xv/test/virtqueue_driver.h"
#include "xv/transport/virtqueue.h"

namespace {

using namespace xv;
using namespace xv::test;

constexpr std::uint16_t kQueueSize = 512;  // room for 128 chains of 3 descriptors

struct Figures {
    double rps = 0;
    double maps_per_req = 0, unmaps_per_req = 0, copies_per_req = 0;
};
std::map<std::string, Figures> g_figures;  // bench-only: collected for the summary

/// CPU time of this thread: the machine is shared, so rates are per CPU
/// second of the benchmarking thread (one core), not per wall second.
double thread_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

/// A grant device that costs nothing: refs are translated through a table
/// filled once (consecutive refs must be consecutive host pages). Used to
/// show what the queue itself costs apart from the simulated grant device.
class NullGrants final : public xen::GrantMapper {
public:
    void add(xen::GrantRef ref, std::byte* page) {
        if (ref >= pages_.size()) pages_.resize(ref + 1, nullptr);
        pages_[ref] = page;
    }
    /// The host address of `refs` when they are consecutive host pages, else nullptr.
    std::byte* base_of(std::span<const xen::GrantRef> refs) const {
        std::byte* base = refs[0] < pages_.size() ? pages_[refs[0]] : nullptr;
        for (std::size_t i = 1; i < refs.size(); ++i)
            if (refs[i] >= pages_.size() || pages_[refs[i]] != base + i * xen::kPageSize) base = nullptr;
        return base;
    }
    Result<xen::GrantMapping> map(xen::DomId, std::span<const xen::GrantRef> refs, bool writable) override {
        ++stats_.map_calls;
        std::byte* base = base_of(refs);
        if (!base) return make_error(std::errc::invalid_argument, "null grants: refs not contiguous");
        stats_.pages_mapped += refs.size();
        return xen::GrantMapping(this, base, std::uint32_t(refs.size()), writable);
    }
    Result<void> map_batch(xen::DomId, std::span<const xen::GrantRef> refs,
                           std::span<xen::GrantBatchEntry> entries) override {
        ++stats_.map_calls;
        std::size_t at = 0;
        for (auto& e : entries) {
            e.ro_addr = e.ro ? base_of(refs.subspan(at, e.ro)) : nullptr;
            e.rw_addr = e.rw ? base_of(refs.subspan(at + e.ro, e.rw)) : nullptr;
            if ((e.ro && !e.ro_addr) || (e.rw && !e.rw_addr))
                return make_error(std::errc::invalid_argument, "null grants: refs not contiguous");
            at += e.ro + e.rw;
            stats_.pages_mapped += e.ro + e.rw;
            if (e.ro + e.rw) e.map = xen::GrantMapping(this, e.ro ? e.ro_addr : e.rw_addr, e.ro + e.rw, e.rw != 0);
        }
        return ok();
    }
    Result<void> copy(std::span<const xen::GrantCopySegment> segs) override {
        ++stats_.copy_calls;
        for (auto& s : segs) std::memcpy(s.local, pages_[s.ref] + s.offset, s.len);
        return ok();
    }
    xen::GrantStats stats() const override { return stats_; }
    std::uint64_t pages_in_use() const override { return stats_.pages_mapped - stats_.pages_unmapped; }

protected:
    void unmap(std::byte*, std::uint32_t pages) noexcept override {
        ++stats_.unmap_calls;
        stats_.pages_unmapped += pages;
    }

private:
    std::vector<std::byte*> pages_;
    xen::GrantStats stats_;
};

/// The value of `r`, or the error printed and the program stopped (set-up
/// failures are not benchmark results).
template <class T>
T must(Result<T> r, const char* what) {
    if (!r) {
        std::fprintf(stderr, "queue_bench: %s: %s\n", what, r.error().describe().c_str());
        std::exit(1);
    }
    return std::move(*r);
}

/// Guest set-up shared by all variants: rings plus B pre-built chains.
struct Setup {
    std::unique_ptr<QueueHarness> h;
    std::unique_ptr<VirtqueueDriver> drv;
    std::vector<std::uint16_t> heads;
    std::vector<GuestBuf> hdrs, datas, stats;

    explicit Setup(std::size_t batch) {
        xen::sim::SimOptions o;
        o.protect_pages = false;
        h = must(QueueHarness::create(o, 4096 + 2 * 128 * 3), "create the simulated guest");
        drv = must(h->driver({.size = kQueueSize}), "set up the guest ring");
        for (std::size_t i = 0; i < batch; ++i) {
            hdrs.push_back(must(drv->alloc(16, true), "allocate a header"));
            datas.push_back(must(drv->alloc(4096, false), "allocate a data buffer"));
            stats.push_back(must(drv->alloc(1, false), "allocate a status byte"));
            heads.push_back(std::uint16_t(3 * i));
        }
    }

    /// Driver side, as a virtio-blk driver issuing B reads: for each
    /// request the header, its three descriptors and its avail ring entry,
    /// then one idx store for all of them.
    void offer() {
        std::uint16_t idx = drv->avail_idx();
        for (std::size_t i = 0; i < heads.size(); ++i) {
            const std::uint32_t hdr[4] = {0 /*VIRTIO_BLK_T_IN*/, 0, std::uint32_t(sector++), 0};
            std::memcpy(hdrs[i].ptr, hdr, 16);
            const std::uint16_t d0 = heads[i];
            drv->set_desc(d0, {hdrs[i].dma, 16, desc_flags::kNext, std::uint16_t(d0 + 1)});
            drv->set_desc(d0 + 1, {datas[i].dma, 4096, desc_flags::kNext | desc_flags::kWrite, std::uint16_t(d0 + 2)});
            drv->set_desc(d0 + 2, {stats[i].dma, 1, desc_flags::kWrite, 0});
            drv->set_avail_ring(idx++, d0);
        }
        drv->set_avail_idx(idx);
    }
    /// Driver side: reap every used entry and read its status byte; returns how many.
    std::size_t reap() {
        std::size_t n = 0;
        while (auto u = drv->next_used()) {
            const std::size_t i = u->id / 3;
            if (i < stats.size()) benchmark::DoNotOptimize(*stats[i].ptr);
            benchmark::DoNotOptimize(u->len);
            ++n;
        }
        return n;
    }

    std::uint32_t sector = 0;
};

void record(benchmark::State& state, const std::string& name, double secs, std::uint64_t reqs,
            const xen::GrantStats& g0, const xen::GrantStats& g1) {
    Figures f;
    f.rps = secs > 0 ? double(reqs) / secs : 0;
    if (reqs) {
        f.maps_per_req = double(g1.map_calls - g0.map_calls) / double(reqs);
        f.unmaps_per_req = double(g1.unmap_calls - g0.unmap_calls) / double(reqs);
        f.copies_per_req = double(g1.copy_calls - g0.copy_calls) / double(reqs);
    }
    g_figures[name + "/" + std::to_string(state.range(0))] = f;
    state.SetItemsProcessed(std::int64_t(reqs));
    state.counters["req/s"] = f.rps;
    state.counters["map/req"] = f.maps_per_req;
    state.counters["unmap/req"] = f.unmaps_per_req;
    state.counters["copy/req"] = f.copies_per_req;
}

/// The queue under test: validation, grants, used ring, notification.
/// `null_grants`: through NullGrants instead of the simulated grant device.
/// `batch_push`: the chains go back with one push_batch() (one unmap call
/// for all of them) instead of one push() each.
void run_queue(benchmark::State& state, std::uint32_t copy_readable_max, bool null_grants, const char* name,
               bool batch_push = false) {
    const std::size_t batch = std::size_t(state.range(0));
    Setup s(batch);
    auto cfg = s.drv->config();
    cfg.copy_readable_max = copy_readable_max;
    NullGrants null;
    std::unique_ptr<transport::GuestMemory> null_mem;
    transport::GuestMemory* mem = s.h->mem.get();
    xen::GrantMapper* grants = s.h->grants.get();
    if (null_grants) {
        // Every page the rings and buffers use, translated once.
        auto add = [&](std::uint64_t dma, std::uint64_t len) {
            std::byte* p = s.h->guest->dma_ptr(dma) - (dma & 0xfff);
            for (std::uint64_t i = 0; i < xen::grant_dma::pages(dma, len); ++i)
                null.add(xen::GrantRef(xen::grant_dma::first_ref(dma) + i), p + i * xen::kPageSize);
        };
        add(cfg.desc_addr, 16 * kQueueSize);
        add(cfg.driver_addr, 6 + 2 * kQueueSize);
        add(cfg.device_addr, 6 + 8 * kQueueSize);
        for (std::size_t i = 0; i < batch; ++i) {
            add(s.hdrs[i].dma, 16);
            add(s.datas[i].dma, 4096);
            add(s.stats[i].dma, 1);
        }
        null_mem = std::make_unique<transport::GuestMemory>(null, s.h->domid);
        mem = null_mem.get();
        grants = &null;
    }
    auto q = must(transport::create_virtqueue(cfg, *mem, s.h->strand, [] {}, [](const Error&) {}), "create the queue");
    std::vector<transport::DescriptorChain> chains;
    chains.reserve(batch);
    const std::vector<std::uint32_t> lens(batch, 4097);
    std::uint64_t reqs = 0;
    const auto g0 = grants->stats();
    const double t0 = thread_cpu_seconds();
    for (auto _ : state) {
        s.offer();
        chains.clear();
        auto n = q->pop_batch(batch, chains);
        if (!n || *n != batch) {
            state.SkipWithError("pop_batch failed");
            break;
        }
        for (auto& c : chains) {
            auto rd = c.reader();
            auto hdr = rd.read_obj<std::array<std::uint32_t, 4>>();
            benchmark::DoNotOptimize(hdr);
            // The data would be filled by io_uring; the status byte is last.
            auto w = c.writer();
            w.skip(4096);
            w.write_obj(std::uint8_t(0));
            if (!batch_push) q->push(std::move(c), 4097);
        }
        if (batch_push) q->push_batch(chains, lens);
        q->notify_guest();
        reqs += s.reap();
    }
    const double secs = thread_cpu_seconds() - t0;
    record(state, name, secs, reqs, g0, grants->stats());
}

void BM_QueueMap(benchmark::State& state) { run_queue(state, 0, false, "queue-map"); }
void BM_QueueMapPushBatch(benchmark::State& state) { run_queue(state, 0, false, "queue-map-pushb", true); }
void BM_QueueCopyHeader(benchmark::State& state) { run_queue(state, 64, false, "queue-copyhdr"); }
void BM_QueueMapNullGrants(benchmark::State& state) { run_queue(state, 0, true, "queue-map-null"); }
void BM_QueueCopyHeaderNullGrants(benchmark::State& state) { run_queue(state, 64, true, "queue-copyhdr-null"); }

/// Baseline: the same ring, read and written without checks or grants.
void BM_BareRing(benchmark::State& state) {
    const std::size_t batch = std::size_t(state.range(0));
    Setup s(batch);
    // Flat translation set up once (ref -> host page), like guest RAM
    // mapped in advance.
    std::map<std::uint64_t, std::byte*> slow;
    for (std::size_t i = 0; i < batch; ++i)
        for (const GuestBuf* b : {&s.hdrs[i], &s.datas[i], &s.stats[i]}) slow[b->ref()] = b->ptr - (b->dma & 0xfff);
    const std::uint64_t min_ref = slow.begin()->first;
    std::vector<std::byte*> page(slow.rbegin()->first - min_ref + 1);
    for (auto& [r, p] : slow) page[r - min_ref] = p;
    auto host = [&](std::uint64_t addr) {
        return page[((addr & ~xen::grant_dma::kFlag) >> 12) - min_ref] + (addr & 0xfff);
    };
    const std::uint16_t n = kQueueSize;
    std::byte* desc = s.drv->desc_area();
    std::byte* avail = s.drv->driver_area();
    std::byte* used = s.drv->device_area();
    std::uint16_t last_avail = 0, used_idx = 0;
    std::uint64_t reqs = 0;
    auto ld16 = [](std::byte* p, std::memory_order o) {
        return std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(p)).load(o);
    };
    const auto g0 = s.h->grants->stats();
    const double t0 = thread_cpu_seconds();
    for (auto _ : state) {
        s.offer();
        const std::uint16_t avail_idx = ld16(avail + 2, std::memory_order_acquire);
        while (last_avail != avail_idx) {
            std::uint16_t head = ld16(avail + 4 + 2 * (last_avail % n), std::memory_order_relaxed);
            ++last_avail;
            SplitDesc d[3];
            std::uint16_t i = head;
            int k = 0;
            for (;;) {
                std::memcpy(&d[k], desc + 16 * std::size_t(i), 16);
                if (!(d[k].flags & desc_flags::kNext) || k == 2) break;
                i = d[k].next;
                ++k;
            }
            std::array<std::uint32_t, 4> hdr;
            std::memcpy(&hdr, host(d[0].addr), 16);
            benchmark::DoNotOptimize(hdr);
            *host(d[k].addr) = std::byte{0};
            std::byte* e = used + 4 + 8 * std::size_t(used_idx % n);
            const std::uint32_t id = head, len = 4097;
            std::memcpy(e, &id, 4);
            std::memcpy(e + 4, &len, 4);
            ++used_idx;
            std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(used + 2))
                .store(used_idx, std::memory_order_release);
        }
        std::atomic_thread_fence(std::memory_order_seq_cst);
        benchmark::DoNotOptimize(ld16(avail, std::memory_order_relaxed));  // flags check
        reqs += s.reap();
    }
    const double secs = thread_cpu_seconds() - t0;
    record(state, "bare-ring", secs, reqs, g0, s.h->grants->stats());
}

BENCHMARK(BM_BareRing)->Arg(1)->Arg(8)->Arg(32)->Arg(128)->ArgName("batch");
BENCHMARK(BM_QueueMap)->Arg(1)->Arg(8)->Arg(32)->Arg(128)->ArgName("batch");
BENCHMARK(BM_QueueMapPushBatch)->Arg(1)->Arg(8)->Arg(32)->Arg(128)->ArgName("batch");
BENCHMARK(BM_QueueCopyHeader)->Arg(1)->Arg(8)->Arg(32)->Arg(128)->ArgName("batch");
BENCHMARK(BM_QueueMapNullGrants)->Arg(1)->Arg(8)->Arg(32)->Arg(128)->ArgName("batch");
BENCHMARK(BM_QueueCopyHeaderNullGrants)->Arg(1)->Arg(8)->Arg(32)->Arg(128)->ArgName("batch");

}  // namespace

int main(int argc, char** argv) {
    spdlog::set_level(spdlog::level::err);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    std::printf("\nsummary (requests per CPU second of one core; 4 KiB blk-like requests, split ring;\n"
                "sim grants without page protection; *-null: a grant device that costs nothing)\n");
    std::printf("%-19s %6s %14s %10s %8s %8s %8s\n", "variant", "batch", "requests/s", "vs bare", "map/req",
                "unmap/req", "copy/req");
    for (const char* v :
         {"bare-ring", "queue-map", "queue-map-pushb", "queue-copyhdr", "queue-map-null", "queue-copyhdr-null"}) {
        for (int b : {1, 8, 32, 128}) {
            auto it = g_figures.find(std::string(v) + "/" + std::to_string(b));
            if (it == g_figures.end()) continue;
            auto base = g_figures.find("bare-ring/" + std::to_string(b));
            double ratio = base != g_figures.end() && base->second.rps > 0 ? it->second.rps / base->second.rps : 0;
            std::printf("%-19s %6d %14.0f %9.1f%% %8.2f %8.2f %8.3f\n", v, b, it->second.rps, 100.0 * ratio,
                        it->second.maps_per_req, it->second.unmaps_per_req, it->second.copies_per_req);
        }
    }
    return 0;
}
