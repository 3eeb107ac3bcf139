// SPDX-License-Identifier: GPL-2.0-only
// Two guests served by one daemon at once (issue 5: "one flooding its
// queues, the other's throughput stays within 20 % of running alone").
//
// The honest guest keeps `honest_depth` 4 KiB random reads in flight on one
// queue against an image on the real filesystem (not tmpfs; O_DIRECT), and checks
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
// Two honest workloads: saturating (a new read as soon as one completes,
// `honest_depth` always in flight: the guest needs a full host CPU of its
// own, which the simulated guest takes from the same host CPUs as the
// backend and the flooder's simulated vCPUs), and paced (`honest_rate`
// reads a second, at most `honest_depth` in flight: a guest that needs
// little CPU, where the rate achieved and the completion latency show what
// the backend gives it).
//
// CPU accounting: every thread's run time (/proc/self/task/*/schedstat,
// nanoseconds) is sampled around each window and split into the backend's
// threads of each guest (its executor threads "xv-dom<id>" and the
// io_uring workers "iou-wrk-<tid>" they start), the simulated guests'
// vCPU threads (on real Xen: the guests' own physical CPUs, not the
// Hardware Domain's) and the rest of the process.
//
// Used by tests/integration (a bound the sanitizer build meets on a loaded
// machine) and by bench/daemon (the figure against the goal).
#pragma once

#include <dirent.h>
#include <sys/stat.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
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
    unsigned honest_depth = 4;                 ///< honest reads kept in flight (at most, when paced)
    /// 0: saturating (a new read as each completes); otherwise the honest
    /// guest offers this many reads a second (paced, open loop).
    unsigned honest_rate = 0;
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
    /// A cgroup v1 cpu hierarchy (e.g. /sys/fs/cgroup/cpu; needs root):
    /// each guest's backend threads and each simulated guest's vCPU threads
    /// are moved into a group of their own, all four of equal weight, as a
    /// deployment runs one worker unit per guest (xen-virtiod@.service,
    /// one cgroup each) and Xen schedules each domain by its weight. Empty:
    /// every thread is scheduled on its own (the default).
    std::string cpu_cgroup;
};

/// Host CPUs in use (CPU seconds per second) by each part, over windows of one kind.
struct CpuSplit {
    double honest_backend = 0;  ///< the honest guest's executor threads and their io_uring workers
    double flood_backend = 0;   ///< the flooder's
    double honest_vcpus = 0;    ///< the simulated honest guest (its vCPU thread)
    double flood_vcpus = 0;     ///< the simulated flooder (one vCPU thread per queue)
    double other = 0;           ///< the rest: manager, simulator, shared executor
    bool sampled = false;       ///< schedstat was readable
    /// The flooder's part of the backend's CPU.
    double flood_backend_share() const {
        const double b = honest_backend + flood_backend;
        return b > 0 ? flood_backend / b : 0;
    }
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
    CpuSplit solo_cpu, flooded_cpu;  ///< CPU use in the solo and the flooded windows
    /// Honest completion latency (from submission), microseconds, over all
    /// solo / flooded windows.
    double solo_p50_us = 0, solo_p99_us = 0, flooded_p50_us = 0, flooded_p99_us = 0;

    /// flooded_rps / solo_rps.
    double ratio() const { return solo_rps > 0 ? flooded_rps / solo_rps : 0; }
};

namespace fairness_detail {

namespace feat = transport::feature;
namespace blk = devices::blk;
using Clock = std::chrono::steady_clock;

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

/// Run time in nanoseconds and name of every thread of this process
/// (tid -> {comm, ns}); empty when /proc/self/task/<tid>/schedstat cannot
/// be read (a kernel without CONFIG_SCHED_INFO).
struct TaskTime {
    std::string comm;
    std::uint64_t ns = 0;
};
inline std::map<int, TaskTime> task_times() {
    std::map<int, TaskTime> out;
    DIR* d = ::opendir("/proc/self/task");
    if (!d) return out;
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        const std::string dir = std::string("/proc/self/task/") + e->d_name;
        std::ifstream ss(dir + "/schedstat"), cs(dir + "/comm");
        TaskTime t;
        if (!(ss >> t.ns)) continue;
        std::getline(cs, t.comm);
        out[std::atoi(e->d_name)] = std::move(t);
    }
    ::closedir(d);
    return out;
}

/// Adds the run time each thread had between `a` and `b` to `acc`
/// (a thread started in between counts from zero).
inline void add_task_delta(std::map<int, TaskTime>& acc, const std::map<int, TaskTime>& a,
                           const std::map<int, TaskTime>& b) {
    for (const auto& [tid, t] : b) {
        auto it = a.find(tid);
        const std::uint64_t before = it != a.end() && it->second.ns <= t.ns ? it->second.ns : 0;
        auto& x = acc[tid];
        x.comm = t.comm;
        x.ns += t.ns - before;
    }
}

/// Splits the run time of `acc` (over `seconds`) between the parts.
inline CpuSplit split_cpu(const std::map<int, TaskTime>& acc, double seconds, const std::string& honest_exec,
                          const std::string& flood_exec, int honest_vcpu, const std::vector<int>& flood_vcpus) {
    CpuSplit c;
    if (seconds <= 0 || acc.empty()) return c;
    c.sampled = true;
    // An io_uring worker is named after the thread whose ring started it.
    std::map<int, std::string> owner;
    for (const auto& [tid, t] : acc) owner[tid] = t.comm;
    for (const auto& [tid, t] : acc) {
        const double cpu = double(t.ns) / 1e9 / seconds;
        std::string who = t.comm;
        if (who.rfind("iou-wrk-", 0) == 0 || who.rfind("iou-sqp-", 0) == 0) {
            auto it = owner.find(std::atoi(who.c_str() + 8));
            who = it != owner.end() ? it->second : "";
        }
        if (tid == honest_vcpu)
            c.honest_vcpus += cpu;
        else if (std::find(flood_vcpus.begin(), flood_vcpus.end(), tid) != flood_vcpus.end())
            c.flood_vcpus += cpu;
        else if (who == honest_exec)
            c.honest_backend += cpu;
        else if (who == flood_exec)
            c.flood_backend += cpu;
        else
            c.other += cpu;
    }
    return c;
}

/// Four sibling cpu cgroups of equal weight under <root>/xv-fairness-<pid>
/// (cgroup v1: a thread is moved by writing its id to `tasks`). The
/// destructor moves every thread back to the root and removes the groups.
class CpuGroups {
public:
    enum Kind { HonestBackend, FloodBackend, HonestVcpus, FloodVcpus, kKinds };
    Result<void> create(const std::string& root) {
        root_ = root;
        base_ = root + "/xv-fairness-" + std::to_string(::getpid());
        if (!std::ifstream(root + "/tasks"))
            return make_error(std::errc::no_such_file_or_directory, root + "/tasks: not a cgroup v1 cpu hierarchy");
        if (::mkdir(base_.c_str(), 0755) != 0) return errno_error(errno, "mkdir " + base_);
        made_base_ = true;
        // The parent competes with the rest of the machine with the default
        // weight: as the process's session does under autogroup scheduling
        // (kernel.sched_autogroup_enabled), or as one service unit would.
        if (!put(base_ + "/cpu.shares", "1024"))
            return make_error(std::errc::permission_denied, base_ + "/cpu.shares");
        static const char* names[kKinds] = {"backend-honest", "backend-flood", "vcpus-honest", "vcpus-flood"};
        for (int k = 0; k < kKinds; ++k) {
            kids_[k] = base_ + "/" + names[k];
            if (::mkdir(kids_[k].c_str(), 0755) != 0) return errno_error(errno, "mkdir " + kids_[k]);
            made_[k] = true;
            if (!put(kids_[k] + "/cpu.shares", "1024"))
                return make_error(std::errc::permission_denied, kids_[k] + "/cpu.shares");
        }
        return ok();
    }
    /// Moves thread `tid` into group `k`; false when the kernel refuses
    /// (io_uring workers cannot be moved; those started later inherit the
    /// group of the thread whose ring starts them).
    bool move(Kind k, int tid) { return put(kids_[k] + "/tasks", std::to_string(tid)); }
    ~CpuGroups() {
        for (int k = 0; k < kKinds; ++k) {
            if (!made_[k]) continue;
            std::ifstream t(kids_[k] + "/tasks");
            for (std::string tid; std::getline(t, tid);) (void)put(root_ + "/tasks", tid);
            (void)::rmdir(kids_[k].c_str());
        }
        if (made_base_) (void)::rmdir(base_.c_str());
    }

private:
    static bool put(const std::string& file, const std::string& text) {
        if (text.empty()) return false;
        std::ofstream f(file);
        f << text << std::flush;
        return bool(f);
    }
    std::string root_, base_, kids_[kKinds];
    bool made_base_ = false, made_[kKinds] = {};
};

/// The `p` quantile (0..1) of `v` (sorted in place), 0 when empty.
inline double quantile(std::vector<double>& v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, std::size_t(p * double(v.size())))];
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
    // pattern. The daemon reads aligned requests with O_DIRECT (BlkConfig::
    // direct), so the honest reads reach the disk; the flooder's image is on
    // tmpfs: the two guests do not share a disk, only the host's CPUs.
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
    struct InFlight {
        unsigned slot;
        std::uint64_t offset;
        Clock::time_point submitted;
    };
    std::map<std::uint16_t, InFlight> honest_by_head;
    std::vector<unsigned> honest_free;
    for (unsigned i = o.honest_depth; i-- > 0;) honest_free.push_back(i);
    auto honest_submit = [&]() -> bool {
        const unsigned i = honest_free.back();
        honest_free.pop_back();
        const std::uint64_t off = (rng() % (kHonestBytes / o.honest_len)) * o.honest_len;
        blk::OutHdr hd{blk::req::kIn, 0, off / 512};
        std::memcpy(hslots[i].hdr.ptr, &hd, sizeof hd);
        hslots[i].status.ptr[0] = std::byte{0xff};
        auto r = hb.q[0]->chain().add(hslots[i].hdr, false).add(hslots[i].data, true).add(hslots[i].status, true).submit();
        if (!r) {
            fail("honest submit: " + r.error().describe());
            return false;
        }
        honest_by_head[std::uint16_t(r->id)] = {i, off, Clock::now()};
        return true;
    };
    const int honest_tid = int(::gettid());
    const bool paced = o.honest_rate > 0;
    const auto period = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
        paced ? 1.0 / o.honest_rate : 0.0));
    // Runs the honest guest for `dur`; returns the requests completed and
    // adds their latencies (microseconds) to `lat`. Saturating: every free
    // slot is submitted at once. Paced: one read is due every `period`;
    // a due read waits for a free slot (then the rate achieved falls short).
    auto honest_run = [&](std::chrono::milliseconds dur, std::vector<double>* lat) -> std::uint64_t {
        std::uint64_t n = 0;
        const auto start = Clock::now(), end = start + dur;
        auto next_due = start;
        auto last_progress = start;
        for (;;) {
            auto now = Clock::now();
            if (now >= end) break;
            bool submitted = false;
            while (!honest_free.empty() && (!paced || next_due <= now)) {
                if (!honest_submit()) return n;
                submitted = true;
                next_due += period;
            }
            if (submitted) {
                if (auto r = hb.t->notify(0); !r) {
                    fail("honest notify: " + r.error().describe());
                    return n;
                }
            }
            const std::uint64_t seen = hg->irq_count(33);
            auto u = hb.q[0]->next_used();
            if (!u) {
                if (now - last_progress > std::chrono::seconds(10) && !honest_by_head.empty()) {
                    fail("honest guest: no completion within 10 s");
                    return n;
                }
                // Sleep until a completion, or the next due read (1 ms granularity).
                auto wait = std::chrono::milliseconds(5);
                if (paced && !honest_free.empty())
                    wait = std::clamp(std::chrono::ceil<std::chrono::milliseconds>(next_due - now),
                                      std::chrono::milliseconds(1), wait);
                if (honest_by_head.empty() && paced)
                    std::this_thread::sleep_until(std::min(next_due, end));
                else
                    (void)hg->wait_irq(33, seen, wait);
                (void)hb.t->take_isr();
                continue;
            }
            auto it = honest_by_head.find(std::uint16_t(u->id));
            if (it == honest_by_head.end()) {
                fail("honest guest: unknown used id");
                return n;
            }
            const InFlight f = it->second;
            honest_by_head.erase(it);
            last_progress = Clock::now();
            const Slot& s = hslots[f.slot];
            if (s.status.ptr[0] != std::byte{blk::kStatusOk}) fail("honest guest: status not OK");
            for (std::uint32_t k = 0; k < o.honest_len; k += 509)
                if (s.data.ptr[k] != honest_pattern(f.offset + k)) {
                    fail("honest guest: wrong data at offset " + std::to_string(f.offset + k));
                    break;
                }
            if (lat) lat->push_back(std::chrono::duration<double, std::micro>(last_progress - f.submitted).count());
            honest_free.push_back(f.slot);
            ++n;
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
    std::vector<int> flood_tids(o.flood_queues, 0);
    std::atomic<unsigned> flooders_ready{0};
    for (unsigned qi = 0; qi < o.flood_queues; ++qi) {
        flooders.emplace_back([&, qi] {
            flood_tids[qi] = int(::gettid());
            (void)pthread_setname_np(pthread_self(), ("vcpu-flood" + std::to_string(qi)).c_str());
            ++flooders_ready;
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

    for (int k = 0; k < 5000 && flooders_ready.load() < o.flood_queues; ++k)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const std::string honest_exec = "xv-dom" + std::to_string(*honest), flood_exec = "xv-dom" + std::to_string(*flood);

    // Per-guest cgroups (o.cpu_cgroup): destroyed (threads moved back)
    // before the flooders are joined, whichever way this function returns.
    std::optional<CpuGroups> groups;
    auto stop_flooders = [&] {
        flood_on = false;
        quit = true;
        for (auto& t : flooders)
            if (t.joinable()) t.join();
    };
    if (!o.cpu_cgroup.empty()) {
        groups.emplace();
        if (auto r = groups->create(o.cpu_cgroup); !r) {
            groups.reset();
            stop_flooders();
            return std::move(r).error();
        }
        unsigned moved = 0;
        for (const auto& [tid, t] : task_times()) {
            std::optional<CpuGroups::Kind> k;
            if (tid == honest_tid)
                k = CpuGroups::HonestVcpus;
            else if (std::find(flood_tids.begin(), flood_tids.end(), tid) != flood_tids.end())
                k = CpuGroups::FloodVcpus;
            else if (t.comm == honest_exec)
                k = CpuGroups::HonestBackend;
            else if (t.comm == flood_exec)
                k = CpuGroups::FloodBackend;
            if (k && groups->move(*k, tid)) ++moved;
        }
        if (moved < 2 + o.flood_queues + 1) {
            groups.reset();
            stop_flooders();
            return make_error(std::errc::permission_denied, "could not move the threads into " + o.cpu_cgroup);
        }
    }

    double solo_time = 0, flood_time = 0;
    std::uint64_t solo_n = 0, flood_n = 0;
    std::vector<double> solo_lat, flood_lat;
    std::map<int, TaskTime> solo_tasks, flood_tasks;
    res.worst_round = 1e9;
    for (unsigned round = 0; round < o.rounds && res.failure.empty(); ++round) {
        // Solo: the flood drained (bounded wait; the flooder owns at most 21 chains a queue).
        flood_on = false;
        for (int k = 0; k < 2000 && flood_in_flight.load() > 0; ++k) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        (void)honest_run(std::chrono::milliseconds(10), nullptr);  // the honest ring refilled after the switch
        auto c0 = task_times();
        auto t0 = Clock::now();
        const std::uint64_t a = honest_run(o.window, &solo_lat);
        const double ts = std::chrono::duration<double>(Clock::now() - t0).count();
        add_task_delta(solo_tasks, c0, task_times());
        // Flooded.
        flood_on = true;
        (void)honest_run(o.warmup, nullptr);
        const std::uint64_t f0 = flood_done.load();
        c0 = task_times();
        t0 = Clock::now();
        const std::uint64_t b = honest_run(o.window, &flood_lat);
        const double tf = std::chrono::duration<double>(Clock::now() - t0).count();
        add_task_delta(flood_tasks, c0, task_times());
        res.flooder_requests += flood_done.load() - f0;
        solo_n += a;
        solo_time += ts;
        flood_n += b;
        flood_time += tf;
        if (a > 0) res.worst_round = std::min(res.worst_round, (double(b) / tf) / (double(a) / ts));
    }
    {
        res.solo_cpu = split_cpu(solo_tasks, solo_time, honest_exec, flood_exec, honest_tid, flood_tids);
        res.flooded_cpu = split_cpu(flood_tasks, flood_time, honest_exec, flood_exec, honest_tid, flood_tids);
        res.solo_p50_us = quantile(solo_lat, 0.50);
        res.solo_p99_us = quantile(solo_lat, 0.99);
        res.flooded_p50_us = quantile(flood_lat, 0.50);
        res.flooded_p99_us = quantile(flood_lat, 0.99);
    }
    groups.reset();
    stop_flooders();
    res.honest_requests = solo_n + flood_n;
    res.solo_rps = solo_time > 0 ? double(solo_n) / solo_time : 0;
    res.flooded_rps = flood_time > 0 ? double(flood_n) / flood_time : 0;
    res.flooder_rps = flood_time > 0 ? double(res.flooder_requests) / flood_time : 0;
    if (res.worst_round > 1e8) res.worst_round = 0;
    h.shutdown();
    return res;
}

}  // namespace xv::daemon::testing
