// SPDX-License-Identifier: GPL-2.0-only
// Two guests served by one daemon at once: an honest guest doing small
// synchronous reads, and a flooder keeping every queue of its disk full of
// large requests and kicking for each one. Measures the honest guest's
// request rate alone and while the flooder runs, in the same process, on
// the same simulated host (issue 5: "the other's throughput stays within
// 20 % of running alone").
//
//   phase 1 (solo)     honest guest alone for `phase`         -> solo_rps
//   phase 2 (flooded)  flooder starts, `warmup`, honest guest -> flooded_rps
//                      for `phase` while the flooder runs       (flooder_rps)
//
// Used by tests/integration (a generous progress bound) and by
// bench/daemon (the figures).
#pragma once

#include <atomic>
#include <chrono>
#include <cstring>
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
    std::chrono::milliseconds phase{1500};
    std::chrono::milliseconds warmup{200};
    unsigned honest_depth = 1;             ///< requests the honest guest keeps in flight
    std::uint32_t honest_len = 4096;       ///< bytes per honest read
    unsigned flood_queues = 2;             ///< flooder's blk queues, one vCPU each
    std::uint32_t flood_len = 64 * 1024;   ///< bytes per flooder request
    unsigned io_threads = 2;               ///< the daemon's `workers`
};

/// What was measured.
struct FairnessResult {
    double solo_rps = 0;      ///< honest guest alone, requests per second
    double flooded_rps = 0;   ///< honest guest while the flooder runs
    double flooder_rps = 0;   ///< the flooder's own rate in phase 2
    std::uint64_t honest_requests = 0, flooder_requests = 0;
    std::string failure;      ///< empty when every request completed with status OK

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

inline Result<void> submit(guest::VirtqueueDriver& q, Slot& s, std::uint64_t sector) {
    blk::OutHdr h{s.write ? blk::req::kOut : blk::req::kIn, 0, sector};
    std::memcpy(s.hdr.ptr, &h, sizeof h);
    s.status.ptr[0] = std::byte{0xff};
    auto r = q.chain().add(s.hdr, false).add(s.data, !s.write).add(s.status, true).submit();
    if (!r) return std::move(r).error();
    return ok();
}

}  // namespace fairness_detail

/// Runs both phases on a fresh simulated host; an Error when the setup
/// fails (the figures are then meaningless).
inline Result<FairnessResult> measure_fairness(const FairnessOptions& o) {
    using namespace fairness_detail;
    constexpr std::uint64_t kHonestBytes = 16ull << 20, kFloodBytes = 64ull << 20;
    TempImage honest_img(kHonestBytes), flood_img(kFloodBytes);
    Host h("[daemon]\nworkers = " + std::to_string(o.io_threads) + "\n" +
           domains_toml({{"honest", "unsafe"}, {"flood", "unsafe"}}) + blk_toml("honest", honest_img.path.string()) +
           blk_toml("flood", flood_img.path.string(), "queues = " + std::to_string(o.flood_queues) + "\n"));
    auto honest = create_guest(h, "honest", 1);
    auto flood = create_guest(h, "flood", o.flood_queues);
    if (!honest || !flood) return make_error(std::errc::io_error, "cannot create the simulated guests");
    XV_TRY(h.sim->add_virtio_device(spec(*honest, 0, "virtio,device2")));
    XV_TRY(h.sim->add_virtio_device(spec(*flood, 0, "virtio,device2")));
    auto v = h.start({}, o.io_threads);
    if (!v) return std::move(v).error();
    if (h.manager->sessions().size() != 2)
        return make_error(std::errc::io_error, "the daemon serves " + std::to_string(h.manager->sessions().size()) +
                                                   " guests, not 2");
    auto hg = h.sim->guest(*honest);
    auto fg = h.sim->guest(*flood);

    BlkGuest hb, fb;
    XV_TRY(hb.attach(*hg, 0, 1));
    XV_TRY(fb.attach(*fg, 0, o.flood_queues));

    FairnessResult res;
    std::mutex fail_mu;
    auto fail = [&](const std::string& why) {
        std::lock_guard lk(fail_mu);
        if (res.failure.empty()) res.failure = why;
    };

    // The honest guest: `honest_depth` reads at random 4 KiB-aligned
    // sectors, kick, wait for all of them (interrupt driven), repeat.
    std::vector<Slot> hslots;
    for (unsigned i = 0; i < o.honest_depth; ++i) {
        auto s = make_slot(*hb.q[0], o.honest_len, false);
        if (!s) return std::move(s).error();
        hslots.push_back(*s);
    }
    std::mt19937_64 rng(42);
    auto honest_run = [&](std::chrono::milliseconds dur) -> double {
        std::uint64_t n = 0;
        auto start = Clock::now();
        auto end = start + dur;
        while (Clock::now() < end) {
            for (auto& s : hslots) {
                std::uint64_t sector = (rng() % (kHonestBytes / 4096 - 1)) * 8;
                if (auto r = submit(*hb.q[0], s, sector); !r) {
                    fail("honest submit: " + r.error().describe());
                    return 0;
                }
            }
            if (auto r = hb.t->notify(0); !r) {
                fail("honest notify: " + r.error().describe());
                return 0;
            }
            for (std::size_t i = 0; i < hslots.size(); ++i)
                if (!wait_used(*hb.q[0], *hb.t, *hg, 33, std::chrono::seconds(10))) {
                    fail("honest guest: no completion within 10 s");
                    return 0;
                }
            for (auto& s : hslots)
                if (s.status.ptr[0] != std::byte{blk::kStatusOk}) fail("honest guest: status not OK");
            n += hslots.size();
        }
        res.honest_requests += n;
        return double(n) / std::chrono::duration<double>(Clock::now() - start).count();
    };

    res.solo_rps = honest_run(o.phase);

    // The flooder: one vCPU per queue keeps its ring full of large
    // requests (writes and reads alternating) and kicks for every one.
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> flood_done{0};
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
            auto sector_of = [&] { return (qi * span + frng() % span) * (o.flood_len / 512); };
            std::map<std::uint16_t, unsigned> by_head;
            for (unsigned i = 0; i < nslots; ++i) {
                blk::OutHdr hd{slots[i].write ? blk::req::kOut : blk::req::kIn, 0, sector_of()};
                std::memcpy(slots[i].hdr.ptr, &hd, sizeof hd);
                slots[i].status.ptr[0] = std::byte{0xff};
                auto r = q.chain().add(slots[i].hdr, false).add(slots[i].data, !slots[i].write).add(slots[i].status, true).submit();
                if (!r) return fail("flooder submit: " + r.error().describe());
                by_head[r->id] = i;
                (void)t.notify(std::uint16_t(qi));
            }
            const std::uint32_t spi = 33;
            std::uint64_t seen = fg->irq_count(spi);
            while (!stop) {
                auto u = q.next_used();
                if (!u) {
                    seen = fg->wait_irq(spi, seen, std::chrono::milliseconds(5));
                    (void)t.take_isr();
                    continue;
                }
                auto it = by_head.find(std::uint16_t(u->id));
                if (it == by_head.end()) return fail("flooder: unknown used id");
                unsigned i = it->second;
                by_head.erase(it);
                if (slots[i].status.ptr[0] != std::byte{blk::kStatusOk}) return fail("flooder: status not OK");
                flood_done.fetch_add(1, std::memory_order_relaxed);
                blk::OutHdr hd{slots[i].write ? blk::req::kOut : blk::req::kIn, 0, sector_of()};
                std::memcpy(slots[i].hdr.ptr, &hd, sizeof hd);
                slots[i].status.ptr[0] = std::byte{0xff};
                auto r = q.chain().add(slots[i].hdr, false).add(slots[i].data, !slots[i].write).add(slots[i].status, true).submit();
                if (!r) return fail("flooder resubmit: " + r.error().describe());
                by_head[r->id] = i;
                (void)t.notify(std::uint16_t(qi));  // one kick per request: the flood
            }
        });
    }
    std::this_thread::sleep_for(o.warmup);
    const std::uint64_t f0 = flood_done.load();
    const auto t0 = Clock::now();
    res.flooded_rps = honest_run(o.phase);
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    res.flooder_requests = flood_done.load() - f0;
    res.flooder_rps = double(res.flooder_requests) / secs;
    stop = true;
    for (auto& t : flooders) t.join();
    // The honest device still works after the flood.
    if (res.failure.empty() && honest_run(std::chrono::milliseconds(50)) <= 0)
        fail("honest guest made no progress after the flood");
    h.shutdown();
    return res;
}

}  // namespace xv::daemon::testing
