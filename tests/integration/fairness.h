// SPDX-License-Identifier: GPL-2.0-only
// Two guests served by one daemon at once (issue 5: "one flooding its
// queues, the other's throughput stays within 20 % of running alone").
//
// The honest guest keeps `honest_depth` 4 KiB random reads in flight on one
// queue against an image on the real filesystem (not tmpfs), and checks
// every byte it reads against the pattern written before. The flooder
// keeps every descriptor of its `flood_queues` queues busy with 64 KiB
// reads and writes on a tmpfs image, one kick per request.
//
// The honest guest runs all the time; the flood is switched on and off in
// alternating windows, so both sides of the ratio see the same background
// load (a shared, loaded machine changes speed over seconds, and a "solo"
// phase measured first and a "flooded" phase measured later would compare
// two different machines):
//
//   round k:  flood off, drained -> honest for `window`   -> solo sample
//             flood on, `warmup` -> honest for `window`   -> flooded sample
//
// ratio = (honest requests in flooded windows / their time)
//       / (honest requests in solo windows / their time)
//
// Used by tests/integration (a bound the sanitizer build meets on a loaded
// machine) and by bench/daemon (the figure against the goal).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sim_host.h"
#include "xv/devices/blk.h"
#include "xv/guest/transport_driver.h"
#include "xv/guest/virtqueue_driver.h"
#include "xv/transport/device.h"

namespace xv::daemon::testing {

/// What to run.
struct FairnessOptions {
    unsigned rounds = 6;                       ///< solo/flooded window pairs
    std::chrono::milliseconds window{250};     ///< honest measurement per window
    std::chrono::milliseconds warmup{50};      ///< flood running before a flooded window
    unsigned honest_depth = 4;                 ///< honest reads kept in flight
    std::uint32_t honest_len = 4096;           ///< bytes per honest read
    unsigned flood_queues = 2;                 ///< flooder's blk queues, one vCPU each
    std::uint32_t flood_len = 64 * 1024;       ///< bytes per flooder request
    /// The daemon's `workers`: I/O threads of each guest (per_guest_threads)
    /// or of the shared executor. One thread for each of the two guests is
    /// what a 2-core machine has; with two each, the flooder alone can keep
    /// both cores busy.
    unsigned io_threads = 1;
    /// Each guest on its own I/O threads (the in-process shape of one
    /// worker per guest); false: every guest on one shared executor.
    bool per_guest_threads = true;
    /// The simulator maps each grant with its own mmap (page protections,
    /// as gntdev does); false: views into premapped guest RAM.
    bool protect_pages = true;
};

/// What was measured.
struct FairnessResult {
    double solo_rps = 0;      ///< honest guest, flood off (all solo windows)
    double flooded_rps = 0;   ///< honest guest, flood on (all flooded windows)
    double flooder_rps = 0;   ///< the flooder's own rate in the flooded windows
    double worst_round = 0;   ///< lowest per-round flooded/solo ratio
    std::uint64_t honest_requests = 0, flooder_requests = 0;
    std::string failure;      ///< empty when every request completed with status OK and the right data
    /// The two guests ran on two executors, neither the manager's: no
    /// handler of one guest was ever queued behind the other's.
    bool separate_executors = false;

    /// flooded_rps / solo_rps.
    double ratio() const { return solo_rps > 0 ? flooded_rps / solo_rps : 0; }
};

namespace fairness_detail {

namespace feat = transport::feature;
namespace blk = devices::blk;
using Clock = std::chrono::steady_clock;

/// Blocks until `q` has a used entry, acknowledging interrupts; nullopt
/// after `limit` (or when `stop` is set).
inline std::optional<guest::UsedElem> wait_used(guest::VirtqueueDriver& q, guest::GuestTransport& t,
                                                xen::sim::SimGuest& g, std::uint32_t spi,
                                                std::chrono::milliseconds limit,
                                                const std::atomic<bool>* stop = nullptr) {
    auto end = Clock::now() + limit;
    std::uint64_t seen = g.irq_count(spi);
    for (;;) {
        if (auto u = q.next_used()) return u;
        if (Clock::now() > end || (stop && stop->load())) return std::nullopt;
        seen = g.wait_irq(spi, seen, std::chrono::milliseconds(5));
        (void)t.take_isr();
    }
}

/// One blk device brought up from the guest side with `nq` queues.
struct BlkGuest {
    std::unique_ptr<guest::GuestTransport> t;
    std::vector<std::unique_ptr<guest::VirtqueueDriver>> q;

    Result<void> attach(xen::sim::SimGuest& g, unsigned vcpu, unsigned nq) {
        auto tr = guest::make_mmio_guest(g, kBase, false, vcpu);
        if (!tr) return std::move(tr).error();
        t = std::move(tr).value();
        std::vector<guest::VirtqueueDriver*> raw;
        for (unsigned i = 0; i < nq; ++i) {
            guest::DriverOptions o;
            o.size = 64;
            o.index = std::uint16_t(i);
            o.log_name = "dom" + std::to_string(g.domid()) + " blk0 q" + std::to_string(i);
            auto d = guest::VirtqueueDriver::create(g, o);
            if (!d) return std::move(d).error();
            raw.push_back(d.value().get());
            q.push_back(std::move(d).value());
        }
        std::uint64_t want = feat::bit(feat::kVersion1) | feat::bit(feat::kAccessPlatform);
        if (nq > 1) want |= feat::bit(blk::feature::kMq);
        auto f = t->bring_up(want, raw);
        if (!f) return std::move(f).error();
        return ok();
    }
};

/// A request slot: header, data and status buffers allocated once.
struct Slot {
    guest::GuestBuf hdr, data, status;
    bool write = false;
};

inline Result<Slot> make_slot(guest::VirtqueueDriver& q, std::uint32_t len, bool write) {
    auto h = q.alloc(16, true);
    auto d = q.alloc(len, write);  // device-readable data is granted RO
    auto s = q.alloc(1, false);
    if (!h || !d || !s) return make_error(std::errc::not_enough_memory, "guest buffer allocation");
    return Slot{*h, *d, *s, write};
}

/// Makes the request of `s` at `sector` available; returns its head.
inline Result<std::uint16_t> submit(guest::VirtqueueDriver& q, Slot& s, std::uint64_t sector) {
    blk::OutHdr h{s.write ? blk::req::kOut : blk::req::kIn, 0, sector};
    std::memcpy(s.hdr.ptr, &h, sizeof h);
    s.status.ptr[0] = std::byte{0xff};
    auto r = q.chain().add(s.hdr, false).add(s.data, !s.write).add(s.status, true).submit();
    if (!r) return std::move(r).error();
    return r->id;
}

}  // namespace fairness_detail

/// The byte the honest image holds at `offset` (checked on every read).
inline std::byte honest_pattern(std::uint64_t offset) {
    return std::byte((offset >> 9) * 131 + (offset & 511));
}

/// Runs the alternating windows on a fresh simulated host; an Error when
/// the setup fails (the figures are then meaningless).
inline Result<FairnessResult> measure_fairness(const FairnessOptions& o) {
    using namespace fairness_detail;
    constexpr std::uint64_t kHonestBytes = 32ull << 20, kFloodBytes = 64ull << 20;
    // The honest image is a file on the real filesystem, filled with the
    // pattern (and so in the page cache: a disk's latency would measure the
    // disk, not the daemon).
    TempImage honest_img(kHonestBytes, TempImage::Where::Filesystem), flood_img(kFloodBytes);
    {
        std::vector<char> buf(1 << 20);
        std::ofstream f(honest_img.path, std::ios::binary | std::ios::in | std::ios::out);
        for (std::uint64_t at = 0; at < kHonestBytes; at += buf.size()) {
            for (std::size_t k = 0; k < buf.size(); ++k) buf[k] = char(honest_pattern(at + k));
            f.write(buf.data(), std::streamsize(buf.size()));
        }
        if (!f) return make_error(std::errc::io_error, "cannot fill the honest image " + honest_img.path.string());
    }
    Host h("[daemon]\nworkers = " + std::to_string(o.io_threads) + "\n" +
           domains_toml({{"honest", "unsafe"}, {"flood", "unsafe"}}) + blk_toml("honest", honest_img.path.string()) +
           blk_toml("flood", flood_img.path.string(), "queues = " + std::to_string(o.flood_queues) + "\n"),
           [&] {
               xen::sim::SimOptions so;
               so.protect_pages = o.protect_pages;
               return so;
           }());
    auto honest = create_guest(h, "honest", 1);
    auto flood = create_guest(h, "flood", o.flood_queues);
    if (!honest || !flood) return make_error(std::errc::io_error, "cannot create the simulated guests");
    XV_TRY(h.sim->add_virtio_device(spec(*honest, 0, "virtio,device2")));
    XV_TRY(h.sim->add_virtio_device(spec(*flood, 0, "virtio,device2")));
    h.per_guest_threads = o.per_guest_threads;
    auto v = h.start({}, o.io_threads);
    if (!v) return std::move(v).error();
    if (h.sessions().size() != 2)
        return make_error(std::errc::io_error, "the daemon serves " + std::to_string(h.sessions().size()) +
                                                   " guests, not 2");
    auto hg = h.sim->guest(*honest);
    auto fg = h.sim->guest(*flood);
    FairnessResult res;
    {
        auto ss = h.sessions();
        const auto mex = boost::asio::any_io_executor(h.io.get_executor());
        res.separate_executors = ss[0]->executor() != ss[1]->executor() && ss[0]->executor() != mex &&
                                 ss[1]->executor() != mex;
    }

    BlkGuest hb, fb;
    XV_TRY(hb.attach(*hg, 0, 1));
    XV_TRY(fb.attach(*fg, 0, o.flood_queues));

    std::mutex fail_mu;
    auto fail = [&](const std::string& why) {
        std::lock_guard lk(fail_mu);
        if (res.failure.empty()) res.failure = why;
    };

    // The honest guest: `honest_depth` reads of 4 KiB at random aligned
    // offsets always in flight; each completion is checked (status, data)
    // and replaced by a new read.
    std::vector<Slot> hslots;
    for (unsigned i = 0; i < o.honest_depth; ++i) {
        auto s = make_slot(*hb.q[0], o.honest_len, false);
        if (!s) return std::move(s).error();
        hslots.push_back(*s);
    }
    std::mt19937_64 rng(42);
    std::map<std::uint16_t, std::pair<unsigned, std::uint64_t>> honest_by_head;  // head -> slot, offset
    auto honest_submit = [&](unsigned i) -> bool {
        const std::uint64_t off = (rng() % (kHonestBytes / o.honest_len)) * o.honest_len;
        blk::OutHdr hd{blk::req::kIn, 0, off / 512};
        std::memcpy(hslots[i].hdr.ptr, &hd, sizeof hd);
        hslots[i].status.ptr[0] = std::byte{0xff};
        auto r = hb.q[0]->chain().add(hslots[i].hdr, false).add(hslots[i].data, true).add(hslots[i].status, true).submit();
        if (!r) {
            fail("honest submit: " + r.error().describe());
            return false;
        }
        honest_by_head[std::uint16_t(r->id)] = {i, off};
        return true;
    };
    for (unsigned i = 0; i < o.honest_depth; ++i)
        if (!honest_submit(i)) return res;
    if (auto r = hb.t->notify(0); !r) return std::move(r).error();
    // Runs the honest guest for `dur`; returns the requests completed.
    auto honest_run = [&](std::chrono::milliseconds dur) -> std::uint64_t {
        std::uint64_t n = 0;
        const auto end = Clock::now() + dur;
        while (Clock::now() < end) {
            auto u = wait_used(*hb.q[0], *hb.t, *hg, 33, std::chrono::seconds(10));
            if (!u) {
                fail("honest guest: no completion within 10 s");
                return n;
            }
            auto it = honest_by_head.find(std::uint16_t(u->id));
            if (it == honest_by_head.end()) {
                fail("honest guest: unknown used id");
                return n;
            }
            auto [i, off] = it->second;
            honest_by_head.erase(it);
            const Slot& s = hslots[i];
            if (s.status.ptr[0] != std::byte{blk::kStatusOk}) fail("honest guest: status not OK");
            for (std::uint32_t k = 0; k < o.honest_len; k += 509)
                if (s.data.ptr[k] != honest_pattern(off + k)) {
                    fail("honest guest: wrong data at offset " + std::to_string(off + k));
                    break;
                }
            ++n;
            if (!honest_submit(i)) return n;
            if (auto r = hb.t->notify(0); !r) {
                fail("honest notify: " + r.error().describe());
                return n;
            }
        }
        return n;
    };

    // The flooder: one vCPU per queue keeps every descriptor busy with
    // large requests (writes and reads alternating) and kicks for each one,
    // while `flood_on`; otherwise it lets what is in flight complete.
    std::atomic<bool> flood_on{false}, quit{false};
    std::atomic<std::uint64_t> flood_done{0};
    std::atomic<unsigned> flood_in_flight{0};
    std::vector<std::thread> flooders;
    for (unsigned qi = 0; qi < o.flood_queues; ++qi) {
        flooders.emplace_back([&, qi] {
            auto& q = *fb.q[qi];
            // The vCPU of this queue kicks through its own transport handle.
            auto tr = guest::make_mmio_guest(*fg, kBase, false, qi);
            if (!tr) return fail("flooder transport: " + tr.error().describe());
            auto& t = *tr.value();
            const unsigned nslots = 64 / 3;  // three descriptors per chain
            std::vector<Slot> slots;
            for (unsigned i = 0; i < nslots; ++i) {
                auto s = make_slot(q, o.flood_len, i % 2 == 0);
                if (!s) return fail("flooder: " + s.error().describe());
                slots.push_back(*s);
            }
            const std::uint64_t span = kFloodBytes / o.flood_queues / o.flood_len;
            std::mt19937_64 frng(qi + 1);
            std::map<std::uint16_t, unsigned> by_head;
            std::vector<unsigned> idle;
            for (unsigned i = 0; i < nslots; ++i) idle.push_back(i);
            const std::uint32_t spi = 33;
            std::uint64_t seen = fg->irq_count(spi);
            while (!quit) {
                while (flood_on && !idle.empty()) {
                    unsigned i = idle.back();
                    idle.pop_back();
                    auto r = submit(q, slots[i], (qi * span + frng() % span) * (o.flood_len / 512));
                    if (!r) return fail("flooder submit: " + r.error().describe());
                    by_head[*r] = i;
                    ++flood_in_flight;
                    (void)t.notify(std::uint16_t(qi));  // one kick per request: the flood
                }
                auto u = q.next_used();
                if (!u) {
                    if (by_head.empty()) {
                        std::this_thread::sleep_for(std::chrono::milliseconds(1));
                        continue;
                    }
                    seen = fg->wait_irq(spi, seen, std::chrono::milliseconds(5));
                    (void)t.take_isr();
                    continue;
                }
                auto it = by_head.find(std::uint16_t(u->id));
                if (it == by_head.end()) return fail("flooder: unknown used id");
                unsigned i = it->second;
                by_head.erase(it);
                --flood_in_flight;
                if (slots[i].status.ptr[0] != std::byte{blk::kStatusOk}) return fail("flooder: status not OK");
                flood_done.fetch_add(1, std::memory_order_relaxed);
                idle.push_back(i);
            }
        });
    }

    double solo_time = 0, flood_time = 0;
    std::uint64_t solo_n = 0, flood_n = 0;
    res.worst_round = 1e9;
    for (unsigned round = 0; round < o.rounds && res.failure.empty(); ++round) {
        // Solo: the flood drained (bounded wait; the flooder owns at most 21 chains a queue).
        flood_on = false;
        for (int k = 0; k < 2000 && flood_in_flight.load() > 0; ++k) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        (void)honest_run(std::chrono::milliseconds(10));  // the honest ring refilled after the switch
        auto t0 = Clock::now();
        const std::uint64_t a = honest_run(o.window);
        const double ts = std::chrono::duration<double>(Clock::now() - t0).count();
        // Flooded.
        flood_on = true;
        (void)honest_run(o.warmup);
        const std::uint64_t f0 = flood_done.load();
        t0 = Clock::now();
        const std::uint64_t b = honest_run(o.window);
        const double tf = std::chrono::duration<double>(Clock::now() - t0).count();
        res.flooder_requests += flood_done.load() - f0;
        solo_n += a;
        solo_time += ts;
        flood_n += b;
        flood_time += tf;
        if (a > 0) res.worst_round = std::min(res.worst_round, (double(b) / tf) / (double(a) / ts));
    }
    flood_on = false;
    quit = true;
    for (auto& t : flooders) t.join();
    res.honest_requests = solo_n + flood_n;
    res.solo_rps = solo_time > 0 ? double(solo_n) / solo_time : 0;
    res.flooded_rps = flood_time > 0 ? double(flood_n) / flood_time : 0;
    res.flooder_rps = flood_time > 0 ? double(res.flooder_requests) / flood_time : 0;
    if (res.worst_round > 1e8) res.worst_round = 0;
    h.shutdown();
    return res;
}

}  // namespace xv::daemon::testing
