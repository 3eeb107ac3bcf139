// SPDX-License-Identifier: GPL-2.0-only
// Two guests served at once (issue 5: "one flooding its queues, the
// other's throughput stays within 20 % of running alone"), in two shapes:
//
//   separate processes  the deployment's: each guest's simulator and worker
//                       (a `serve --domid N` manager, the guest on its own
//                       executor) in a process of its own; the flooder's is
//                       forked before any thread starts and driven through
//                       a shared page (the sim is in-process: one simulator
//                       cannot serve two processes, so each has its own)
//   one process         one simulator, one daemon serving both guests,
//                       each on its own executor (or one shared executor)
//
// In one process every grant mapping of either guest is an mmap/munmap of
// the same address space (the mm lock, TLB shootdowns to every thread), so
// the flooder's mappings make each honest request costlier; in the
// deployment each worker's mappings stay in its own process.
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
// CPU accounting: every thread's run time and run-queue wait
// (/proc/<pid>/task/*/schedstat, nanoseconds; both processes in the
// deployment's shape) is sampled around each window and split into the backend's
// threads of each guest (its executor threads "xv-dom<id>" and the
// io_uring workers "iou-wrk-<tid>" they start), the simulated guests'
// vCPU threads (on real Xen: the guests' own physical CPUs, not the
// Hardware Domain's) and the rest of the process.
//
// Used by tests/integration (a bound the sanitizer build meets on a loaded
// machine) and by bench/daemon (the figure against the goal).
#pragma once

#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
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
#include "worker_cgroup.h"
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
    /// every thread is scheduled on its own (the default). With
    /// separate_processes: one group per worker process, equal weights (the
    /// default CPUWeight of a systemd unit, as each xen-virtiod@.service
    /// instance gets).
    /// With separate_processes the groups are the daemon's own
    /// (daemon/worker_cgroup.h, what the supervisor does): a group standing
    /// for the service, <hierarchy>/xv-fairness-<pid> (one default weight
    /// against the rest of the machine, as a service unit has), and in it
    /// worker-<domid> per worker process, made by WorkerCgroups and entered
    /// with WorkerCgroupSlot::enter() by each process before it starts its
    /// simulator and worker. A cgroup v2 hierarchy (e.g. /sys/fs/cgroup)
    /// works there too.
    std::string cpu_cgroup;
    /// The deployment's shape: each guest's simulator and worker (a
    /// `serve --domid N` manager, its guest on its own executor) in a
    /// process of its own, forked before any thread starts. Grant mappings
    /// (mmap/munmap, the mm lock, TLB shootdowns) are then per process, as
    /// they are per worker on Xen. false: both guests' backends in this
    /// one process (the single-process shape).
    bool separate_processes = false;
    /// With separate_processes and a cgroup v1 cpu_cgroup: each simulated
    /// guest's vCPU threads leave its worker's group for a group of their
    /// own beside the service's group (equal weight), as on Xen, where a
    /// guest's vCPUs are scheduled by Xen against the Hardware Domain's
    /// vCPUs by domain weight and take nothing from the worker's share of
    /// the Hardware Domain. false: the vCPU threads stay in the worker's
    /// process group (they then compete with the backend they talk to).
    bool vcpus_apart = false;
    /// SimOptions::vcpu_spin of both simulators: how long a trapped vCPU
    /// polls (yielding) for its ioreq answer before it sleeps. 0: it sleeps
    /// at once, as on Xen, where a vCPU waiting for an ioreq server is
    /// blocked and runs nothing, let alone on the backend's CPUs.
    std::chrono::microseconds vcpu_spin = xen::sim::SimOptions{}.vcpu_spin;
};

/// Host CPUs in use (CPU seconds per second) by each part, over windows of one kind.
struct CpuSplit {
    double honest_backend = 0;  ///< the honest guest's executor threads and their io_uring workers
    double flood_backend = 0;   ///< the flooder's
    double honest_vcpus = 0;    ///< the simulated honest guest (its vCPU thread)
    double flood_vcpus = 0;     ///< the simulated flooder (one vCPU thread per queue)
    double other = 0;           ///< the rest: manager(s), simulator(s), shared executor
    /// Time the honest guest's backend threads were runnable but waited for
    /// a CPU (seconds per second): the scheduler's delay, not our code's.
    double honest_backend_wait = 0;
    /// The same for the simulated honest guest's vCPU thread (on Xen: the
    /// guest's own physical CPU, not the backend's).
    double honest_vcpus_wait = 0;
    /// Times a second the honest backend's threads / vCPU thread were put
    /// on a CPU (each wake-up is one; a preempted thread resumed is another):
    /// the hand-offs of its chain. Wait / slices is the run-queue latency
    /// of one hand-off.
    double honest_backend_slices = 0, honest_vcpus_slices = 0;
    bool sampled = false;       ///< schedstat was readable
    /// Mean wait for a CPU per slice, microseconds (0 without slices).
    static double per_slice_us(double wait, double slices) { return slices > 0 ? 1e6 * wait / slices : 0; }
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
    /// The flooder's simulator and worker ran in a process of their own.
    bool separate_processes = false;
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

/// Run time in nanoseconds and name of every thread of process `pid` (0:
/// this one) (tid -> {comm, ns}); empty when /proc/<pid>/task/<tid>/schedstat
/// cannot be read (a kernel without CONFIG_SCHED_INFO). Thread ids are
/// unique across processes, so two processes' maps can be merged.
struct TaskTime {
    std::string comm;
    std::uint64_t ns = 0;       ///< on a CPU
    std::uint64_t wait_ns = 0;  ///< runnable, waiting for a CPU (schedstat's second field)
    std::uint64_t slices = 0;   ///< times it was put on a CPU (schedstat's third field)
};
inline std::map<int, TaskTime> task_times(int pid = 0) {
    std::map<int, TaskTime> out;
    const std::string base = pid ? "/proc/" + std::to_string(pid) + "/task" : std::string("/proc/self/task");
    DIR* d = ::opendir(base.c_str());
    if (!d) return out;
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        const std::string dir = base + "/" + e->d_name;
        std::ifstream ss(dir + "/schedstat"), cs(dir + "/comm");
        TaskTime t;
        if (!(ss >> t.ns >> t.wait_ns >> t.slices)) continue;
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
        const bool known = it != a.end() && it->second.ns <= t.ns && it->second.wait_ns <= t.wait_ns &&
                           it->second.slices <= t.slices;
        auto& x = acc[tid];
        x.comm = t.comm;
        x.ns += t.ns - (known ? it->second.ns : 0);
        x.wait_ns += t.wait_ns - (known ? it->second.wait_ns : 0);
        x.slices += t.slices - (known ? it->second.slices : 0);
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
        const double cpu = double(t.ns) / 1e9 / seconds, wait = double(t.wait_ns) / 1e9 / seconds,
                     slices = double(t.slices) / seconds;
        std::string who = t.comm;
        if (who.rfind("iou-wrk-", 0) == 0 || who.rfind("iou-sqp-", 0) == 0) {
            auto it = owner.find(std::atoi(who.c_str() + 8));
            who = it != owner.end() ? it->second : "";
        }
        if (tid == honest_vcpu) {
            c.honest_vcpus += cpu;
            c.honest_vcpus_wait += wait;
            c.honest_vcpus_slices += slices;
        } else if (std::find(flood_vcpus.begin(), flood_vcpus.end(), tid) != flood_vcpus.end())
            c.flood_vcpus += cpu;
        else if (who == honest_exec) {
            c.honest_backend += cpu;
            c.honest_backend_wait += wait;
            c.honest_backend_slices += slices;
        } else if (who == flood_exec)
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
    /// Moves every thread of process `pid` into group `k` (threads it
    /// starts later are born there).
    bool move_process(Kind k, int pid) { return put(kids_[k] + "/cgroup.procs", std::to_string(pid)); }
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

/// The deployment's cgroups for the two-process shape: a group standing
/// for xen-virtiod.service under the hierarchy `root` (v1 cpu hierarchy
/// or v2), and the daemon's WorkerCgroups in it (the supervisor's code
/// path: the same module, told by a file written as /proc/self/cgroup
/// would read that it runs in that group). The destructor moves this
/// process back to the group it came from and removes every group.
class ServiceGroup {
public:
    Result<void> create(const std::string& root) {
        const std::string name = "xv-fairness-" + std::to_string(::getpid());
        std::string fs_root, line;
        if (std::ifstream(root + "/cpu.shares")) {
            // v1: the module looks for <fs_root>/cpu (or cpu,cpuacct).
            const auto slash = root.find_last_of('/');
            const std::string leaf = slash == std::string::npos ? root : root.substr(slash + 1);
            if (leaf != "cpu" && leaf != "cpu,cpuacct")
                return make_error(std::errc::invalid_argument,
                                  root + ": a cgroup v1 cpu hierarchy must be mounted at <root>/cpu");
            fs_root = root.substr(0, slash);
            line = "1:cpu:/" + name;
            v2_ = false;
        } else if (std::ifstream(root + "/cgroup.controllers")) {
            fs_root = root;
            line = "0::/" + name;
            v2_ = true;
            // The root hands the cpu controller to its children (the root
            // may hold processes: no internal-process rule there).
            (void)put(root + "/cgroup.subtree_control", "+cpu");
        } else {
            return make_error(std::errc::no_such_file_or_directory,
                              root + ": neither a cgroup v1 cpu hierarchy (cpu.shares) nor cgroup v2 "
                                     "(cgroup.controllers)");
        }
        root_ = root;
        service_ = root + "/" + name;
        if (::mkdir(service_.c_str(), 0755) != 0) return errno_error(errno, "mkdir " + service_);
        made_ = true;
        if (!v2_ && !put(service_ + "/cpu.shares", "1024"))
            return make_error(std::errc::permission_denied, service_ + "/cpu.shares");
        // Where this process is now, to come back to.
        std::ifstream self("/proc/self/cgroup");
        for (std::string l; std::getline(self, l);) {
            auto a = l.find(':'), b = a == std::string::npos ? a : l.find(':', a + 1);
            if (b == std::string::npos) continue;
            const std::string ctrls = l.substr(a + 1, b - a - 1);
            if ((v2_ && l.substr(0, a) == "0" && ctrls.empty()) ||
                (!v2_ && ("," + ctrls + ",").find(",cpu,") != std::string::npos))
                home_ = root + (l.substr(b + 1) == "/" ? std::string() : l.substr(b + 1));
        }
        self_file_ = "/tmp/" + name + ".cgroup";
        std::ofstream(self_file_) << line << "\n";
        daemon::WorkerCgroupOptions wo;
        wo.fs_root = fs_root;
        wo.proc_self_cgroup = self_file_;
        groups_ = daemon::WorkerCgroups::setup(wo);
        ::unlink(self_file_.c_str());
        if (!groups_->enabled())
            return make_error(std::errc::operation_not_supported, "worker cgroups: " + groups_->why_not());
        if (groups_->base() != service_)
            return make_error(std::errc::invalid_argument,
                              "worker cgroups under " + groups_->base() + ", not " + service_);
        return ok();
    }
    /// The group of `domid`'s worker, opened (WorkerCgroups::prepare).
    Result<daemon::WorkerCgroupSlot> prepare(xen::DomId domid) {
        auto s = groups_->prepare(domid);
        if (s) doms_.push_back(domid);
        return s;
    }
    std::string weight() const { return groups_ ? std::string(groups_->weight_file()) + " " + groups_->weight() : ""; }
    ~ServiceGroup() {
        if (!home_.empty()) (void)put(home_ + "/cgroup.procs", std::to_string(::getpid()));
        if (groups_) {
            for (auto d : doms_) groups_->release(d);
            for (int k = 0; k < 100 && groups_->pending() > 0; ++k) {
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
                groups_->retry();
            }
        }
        if (made_) {
            (void)::rmdir((service_ + "/supervisor").c_str());
            (void)::rmdir(service_.c_str());
        }
    }

private:
    static bool put(const std::string& file, const std::string& text) {
        std::ofstream f(file);
        f << text << std::flush;
        return bool(f);
    }
    std::string root_, service_, home_, self_file_;
    bool v2_ = false, made_ = false;
    std::shared_ptr<daemon::WorkerCgroups> groups_;
    std::vector<xen::DomId> doms_;
};

/// The simulated guests' vCPU groups of vcpus_apart: cgroup v1 groups
/// <root>/xv-fairness-<pid>-vcpus-{honest,flood} beside the service's
/// group, default weight. The destructor moves what is left in them back
/// to the root and removes them.
class VcpuGroups {
public:
    Result<void> create(const std::string& root) {
        if (!std::ifstream(root + "/tasks"))
            return make_error(std::errc::no_such_file_or_directory, root + "/tasks: not a cgroup v1 cpu hierarchy");
        root_ = root;
        const std::string base = root + "/xv-fairness-" + std::to_string(::getpid()) + "-vcpus-";
        for (int k = 0; k < 2; ++k) {
            dirs_[k] = base + (k == 0 ? "honest" : "flood");
            if (::mkdir(dirs_[k].c_str(), 0755) != 0) return errno_error(errno, "mkdir " + dirs_[k]);
            made_[k] = true;
            if (!put(dirs_[k] + "/cpu.shares", "1024"))
                return make_error(std::errc::permission_denied, dirs_[k] + "/cpu.shares");
        }
        return ok();
    }
    /// Moves thread `tid` into the honest (0) or the flooder's (1) group.
    bool move(int k, int tid) { return put(dirs_[k] + "/tasks", std::to_string(tid)); }
    ~VcpuGroups() {
        for (int k = 0; k < 2; ++k) {
            if (!made_[k]) continue;
            std::ifstream t(dirs_[k] + "/tasks");
            for (std::string tid; std::getline(t, tid);) (void)put(root_ + "/tasks", tid);
            for (int n = 0; n < 100 && ::rmdir(dirs_[k].c_str()) != 0 && errno == EBUSY; ++n)
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }

private:
    static bool put(const std::string& file, const std::string& text) {
        std::ofstream f(file);
        f << text << std::flush;
        return bool(f);
    }
    std::string root_, dirs_[2];
    bool made_[2] = {};
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

namespace fairness_detail {

inline constexpr std::uint64_t kHonestBytes = 32ull << 20, kFloodBytes = 64ull << 20;
inline constexpr std::uint32_t kSpi = 33;  // the first virtio-mmio slot's SPI (spec())

/// What the honest side and the flooder share: the flood switch and the
/// flooder's counts. Only lock-free atomics and plain bytes, so it also
/// works in a MAP_SHARED page between two processes.
struct FloodControl {
    std::atomic<bool> go{false};     ///< the flooder's process may start (it is in its cgroup)
    std::atomic<bool> on{false};     ///< flood now
    std::atomic<bool> quit{false};   ///< stop, let in-flight requests complete, exit
    std::atomic<unsigned> ready{0};  ///< flooder vCPUs running
    std::atomic<unsigned> in_flight{0};
    std::atomic<std::uint64_t> done{0};
    std::atomic<int> vcpu_tids[8] = {};
    std::atomic<int> backend_domid{0};
    std::atomic<bool> claimed{false}, failed{false};
    char why[512] = {};
    /// Records the first failure (any thread, either process).
    void fail(const std::string& w) {
        bool f = false;
        if (!claimed.compare_exchange_strong(f, true)) return;
        std::snprintf(why, sizeof why, "%s", w.c_str());
        failed.store(true);
    }
    std::string failure() const { return failed.load() ? std::string(why) : std::string(); }
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free && std::atomic<int>::is_always_lock_free);

/// One simulated vCPU of the flooder: keeps every descriptor of queue `qi`
/// busy with `flood_len` requests (writes and reads alternating), one kick
/// per request, while ctl.on; otherwise lets what is in flight complete.
inline void flood_vcpu(unsigned qi, xen::sim::SimGuest& fg, BlkGuest& fb, const FairnessOptions& o,
                       FloodControl& ctl) {
    ctl.vcpu_tids[qi] = int(::gettid());
    (void)pthread_setname_np(pthread_self(), ("vcpu-flood" + std::to_string(qi)).c_str());
    ++ctl.ready;
    auto& q = *fb.q[qi];
    // The vCPU of this queue kicks through its own transport handle.
    auto tr = guest::make_mmio_guest(fg, kBase, false, qi);
    if (!tr) return ctl.fail("flooder transport: " + tr.error().describe());
    auto& t = *tr.value();
    const unsigned nslots = 64 / 3;  // three descriptors per chain
    std::vector<Slot> slots;
    for (unsigned i = 0; i < nslots; ++i) {
        auto s = make_slot(q, o.flood_len, i % 2 == 0);
        if (!s) return ctl.fail("flooder: " + s.error().describe());
        slots.push_back(*s);
    }
    const std::uint64_t span = kFloodBytes / o.flood_queues / o.flood_len;
    std::mt19937_64 frng(qi + 1);
    std::map<std::uint16_t, unsigned> by_head;
    std::vector<unsigned> idle;
    for (unsigned i = 0; i < nslots; ++i) idle.push_back(i);
    std::uint64_t seen = fg.irq_count(kSpi);
    while (!ctl.quit) {
        while (ctl.on && !idle.empty()) {
            unsigned i = idle.back();
            idle.pop_back();
            auto r = submit(q, slots[i], (qi * span + frng() % span) * (o.flood_len / 512));
            if (!r) return ctl.fail("flooder submit: " + r.error().describe());
            by_head[*r] = i;
            ++ctl.in_flight;
            (void)t.notify(std::uint16_t(qi));  // one kick per request: the flood
        }
        auto u = q.next_used();
        if (!u) {
            if (by_head.empty()) {
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
                continue;
            }
            seen = fg.wait_irq(kSpi, seen, std::chrono::milliseconds(5));
            (void)t.take_isr();
            continue;
        }
        auto it = by_head.find(std::uint16_t(u->id));
        if (it == by_head.end()) return ctl.fail("flooder: unknown used id");
        unsigned i = it->second;
        by_head.erase(it);
        --ctl.in_flight;
        if (slots[i].status.ptr[0] != std::byte{blk::kStatusOk}) return ctl.fail("flooder: status not OK");
        ctl.done.fetch_add(1, std::memory_order_relaxed);
        idle.push_back(i);
    }
}

/// The honest guest: `honest_depth` reads of `honest_len` at random aligned
/// offsets; each completion is checked (status, data).
class HonestDriver {
public:
    HonestDriver(const FairnessOptions& o, xen::sim::SimGuest& g, BlkGuest& b) : o_(o), g_(g), b_(b), rng_(42) {
        if (o.honest_rate)
            period_ = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / o.honest_rate));
    }
    Result<void> init() {
        for (unsigned i = 0; i < o_.honest_depth; ++i) {
            auto s = make_slot(*b_.q[0], o_.honest_len, false);
            if (!s) return std::move(s).error();
            slots_.push_back(*s);
        }
        for (unsigned i = o_.honest_depth; i-- > 0;) free_.push_back(i);
        return ok();
    }
    /// Runs the guest for `dur`; returns the requests completed and adds
    /// their latencies (microseconds) to `lat`. Saturating: every free slot
    /// is submitted at once. Paced: one read is due every period; a due
    /// read waits for a free slot (then the rate achieved falls short).
    std::uint64_t run(std::chrono::milliseconds dur, std::vector<double>* lat) {
        const bool paced = o_.honest_rate > 0;
        std::uint64_t n = 0;
        const auto start = Clock::now(), end = start + dur;
        auto next_due = start;
        auto last_progress = start;
        for (;;) {
            auto now = Clock::now();
            if (now >= end || !failure.empty()) break;
            bool submitted = false;
            while (!free_.empty() && (!paced || next_due <= now)) {
                if (!submit_one()) return n;
                submitted = true;
                next_due += period_;
            }
            if (submitted) {
                if (auto r = b_.t->notify(0); !r) {
                    failure = "honest notify: " + r.error().describe();
                    return n;
                }
            }
            const std::uint64_t seen = g_.irq_count(kSpi);
            auto u = b_.q[0]->next_used();
            if (!u) {
                if (now - last_progress > std::chrono::seconds(10) && !by_head_.empty()) {
                    failure = "honest guest: no completion within 10 s";
                    return n;
                }
                // Sleep until a completion, or the next due read (1 ms granularity).
                auto wait = std::chrono::milliseconds(5);
                if (paced && !free_.empty())
                    wait = std::clamp(std::chrono::ceil<std::chrono::milliseconds>(next_due - now),
                                      std::chrono::milliseconds(1), wait);
                if (by_head_.empty() && paced)
                    std::this_thread::sleep_until(std::min(next_due, end));
                else
                    (void)g_.wait_irq(kSpi, seen, wait);
                (void)b_.t->take_isr();
                continue;
            }
            auto it = by_head_.find(std::uint16_t(u->id));
            if (it == by_head_.end()) {
                failure = "honest guest: unknown used id";
                return n;
            }
            const InFlight f = it->second;
            by_head_.erase(it);
            last_progress = Clock::now();
            const Slot& s = slots_[f.slot];
            if (s.status.ptr[0] != std::byte{blk::kStatusOk}) failure = "honest guest: status not OK";
            for (std::uint32_t k = 0; k < o_.honest_len; k += 509)
                if (s.data.ptr[k] != honest_pattern(f.offset + k)) {
                    failure = "honest guest: wrong data at offset " + std::to_string(f.offset + k);
                    break;
                }
            if (lat) lat->push_back(std::chrono::duration<double, std::micro>(last_progress - f.submitted).count());
            free_.push_back(f.slot);
            ++n;
        }
        return n;
    }
    std::string failure;

private:
    struct InFlight {
        unsigned slot;
        std::uint64_t offset;
        Clock::time_point submitted;
    };
    bool submit_one() {
        const unsigned i = free_.back();
        free_.pop_back();
        const std::uint64_t off = (rng_() % (kHonestBytes / o_.honest_len)) * o_.honest_len;
        blk::OutHdr hd{blk::req::kIn, 0, off / 512};
        std::memcpy(slots_[i].hdr.ptr, &hd, sizeof hd);
        slots_[i].status.ptr[0] = std::byte{0xff};
        auto r = b_.q[0]->chain().add(slots_[i].hdr, false).add(slots_[i].data, true).add(slots_[i].status, true).submit();
        if (!r) {
            failure = "honest submit: " + r.error().describe();
            return false;
        }
        by_head_[std::uint16_t(r->id)] = {i, off, Clock::now()};
        return true;
    }
    const FairnessOptions& o_;
    xen::sim::SimGuest& g_;
    BlkGuest& b_;
    std::mt19937_64 rng_;
    Clock::duration period_{0};
    std::vector<Slot> slots_;
    std::map<std::uint16_t, InFlight> by_head_;
    std::vector<unsigned> free_;
};

/// The honest image: a file on the real filesystem filled with the pattern.
/// The daemon reads aligned requests with O_DIRECT (BlkConfig::direct), so
/// the honest reads reach the disk; the flooder's image is on tmpfs: the
/// two guests do not share a disk, only the host's CPUs.
inline Result<void> fill_honest_image(const TempImage& img) {
    std::vector<char> buf(1 << 20);
    std::ofstream f(img.path, std::ios::binary | std::ios::in | std::ios::out);
    for (std::uint64_t at = 0; at < kHonestBytes; at += buf.size()) {
        for (std::size_t k = 0; k < buf.size(); ++k) buf[k] = char(honest_pattern(at + k));
        f.write(buf.data(), std::streamsize(buf.size()));
    }
    if (!f) return make_error(std::errc::io_error, "cannot fill the honest image " + img.path.string());
    return ok();
}

inline xen::sim::SimOptions sim_options(const FairnessOptions& o) {
    xen::sim::SimOptions so;
    so.protect_pages = o.protect_pages;
    so.vcpu_spin = o.vcpu_spin;
    return so;
}

/// Starts one guest's worker on `h` as `xen-virtiod serve --domid N` does
/// (serve.cc): a manager for that guest only on one thread, the guest on
/// its own executor with `io_threads` threads.
inline Result<void> start_worker(Host& h, xen::DomId domid, unsigned io_threads) {
    ManagerOptions mo;
    mo.only_guest = domid;
    mo.threads_per_guest = io_threads;
    auto v = h.start(std::move(mo), 1);
    if (!v) return std::move(v).error();
    if (h.sessions().size() != 1)
        return make_error(std::errc::io_error, "the worker serves " + std::to_string(h.sessions().size()) +
                                                   " guests, not 1");
    return ok();
}

/// The flooder's worker process: its own simulator with the flooding guest,
/// the worker serving it, the flooding vCPUs; runs until ctl.quit. The
/// flooder is dom2 here (dom1 is created and left idle), so that its
/// executor's thread name differs from the honest guest's.
inline int flood_process(const FairnessOptions& o, FloodControl& ctl) {
    for (int k = 0; k < 20000 && !ctl.go && !ctl.quit; ++k) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (ctl.quit) return 1;
    TempImage flood_img(kFloodBytes);
    Host h(domains_toml({{"flood", "unsafe"}}) +
               blk_toml("flood", flood_img.path.string(), "queues = " + std::to_string(o.flood_queues) + "\n"),
           sim_options(o));
    {
        xen::sim::DomainConfig idle;
        idle.name = "idle";
        idle.vcpus = 1;
        (void)h.sim->create_domain(idle);
    }
    auto flood = create_guest(h, "flood", o.flood_queues);
    if (!flood) return ctl.fail("flooder process: cannot create the simulated guest"), 1;
    if (auto r = h.sim->add_virtio_device(spec(*flood, 0, "virtio,device2")); !r)
        return ctl.fail("flooder process: " + r.error().describe()), 1;
    if (auto r = start_worker(h, *flood, o.io_threads); !r)
        return ctl.fail("flooder process: " + r.error().describe()), 1;
    ctl.backend_domid = int(*flood);
    auto fg = h.sim->guest(*flood);
    BlkGuest fb;
    if (auto r = fb.attach(*fg, 0, o.flood_queues); !r) return ctl.fail("flooder process: " + r.error().describe()), 1;
    std::vector<std::thread> vcpus;
    for (unsigned qi = 0; qi < o.flood_queues; ++qi)
        vcpus.emplace_back([&, qi] { flood_vcpu(qi, *fg, fb, o, ctl); });
    for (auto& t : vcpus) t.join();  // they return on ctl.quit (or a failure)
    h.shutdown();
    return ctl.failed ? 1 : 0;
}

/// The alternating windows, the honest side's accounts.
struct Windows {
    double solo_time = 0, flood_time = 0;
    std::uint64_t solo_n = 0, flood_n = 0, flooder_n = 0;
    std::vector<double> solo_lat, flood_lat;
    std::map<int, TaskTime> solo_tasks, flood_tasks;
    double worst = 1e9;

    /// `sample()` returns the run time of every thread that counts.
    template <class Sample>
    void run(const FairnessOptions& o, FloodControl& ctl, HonestDriver& honest, Sample&& sample) {
        for (unsigned round = 0; round < o.rounds && honest.failure.empty() && !ctl.failed; ++round) {
            // Solo: the flood drained (bounded wait; the flooder owns at most 21 chains a queue).
            ctl.on = false;
            for (int k = 0; k < 2000 && ctl.in_flight.load() > 0; ++k)
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            (void)honest.run(std::chrono::milliseconds(10), nullptr);  // the honest ring refilled after the switch
            auto c0 = sample();
            auto t0 = Clock::now();
            const std::uint64_t a = honest.run(o.window, &solo_lat);
            const double ts = std::chrono::duration<double>(Clock::now() - t0).count();
            add_task_delta(solo_tasks, c0, sample());
            // Flooded.
            ctl.on = true;
            (void)honest.run(o.warmup, nullptr);
            const std::uint64_t f0 = ctl.done.load();
            c0 = sample();
            t0 = Clock::now();
            const std::uint64_t b = honest.run(o.window, &flood_lat);
            const double tf = std::chrono::duration<double>(Clock::now() - t0).count();
            add_task_delta(flood_tasks, c0, sample());
            flooder_n += ctl.done.load() - f0;
            solo_n += a;
            solo_time += ts;
            flood_n += b;
            flood_time += tf;
            if (a > 0) worst = std::min(worst, (double(b) / tf) / (double(a) / ts));
        }
        ctl.on = false;
    }

    void fill(FairnessResult& res, const std::string& honest_exec, const std::string& flood_exec, int honest_tid,
              const FloodControl& ctl, unsigned flood_queues) {
        std::vector<int> flood_tids;
        for (unsigned i = 0; i < flood_queues && i < 8; ++i) flood_tids.push_back(ctl.vcpu_tids[i].load());
        res.solo_cpu = split_cpu(solo_tasks, solo_time, honest_exec, flood_exec, honest_tid, flood_tids);
        res.flooded_cpu = split_cpu(flood_tasks, flood_time, honest_exec, flood_exec, honest_tid, flood_tids);
        res.solo_p50_us = quantile(solo_lat, 0.50);
        res.solo_p99_us = quantile(solo_lat, 0.99);
        res.flooded_p50_us = quantile(flood_lat, 0.50);
        res.flooded_p99_us = quantile(flood_lat, 0.99);
        res.flooder_requests = flooder_n;
        res.honest_requests = solo_n + flood_n;
        res.solo_rps = solo_time > 0 ? double(solo_n) / solo_time : 0;
        res.flooded_rps = flood_time > 0 ? double(flood_n) / flood_time : 0;
        res.flooder_rps = flood_time > 0 ? double(flooder_n) / flood_time : 0;
        res.worst_round = worst > 1e8 ? 0 : worst;
    }
};

/// Both guests in one process: one simulator, one daemon (the manager and
/// each guest's executor), both simulated guests' vCPUs.
inline Result<FairnessResult> measure_in_one_process(const FairnessOptions& o) {
    TempImage honest_img(kHonestBytes, TempImage::Where::Filesystem), flood_img(kFloodBytes);
    XV_TRY(fill_honest_image(honest_img));
    Host h("[daemon]\nworkers = " + std::to_string(o.io_threads) + "\n" +
               domains_toml({{"honest", "unsafe"}, {"flood", "unsafe"}}) +
               blk_toml("honest", honest_img.path.string()) +
               blk_toml("flood", flood_img.path.string(), "queues = " + std::to_string(o.flood_queues) + "\n"),
           sim_options(o));
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
    HonestDriver honest_drv(o, *hg, hb);
    XV_TRY(honest_drv.init());

    FloodControl ctl;
    std::vector<std::thread> flooders;
    for (unsigned qi = 0; qi < o.flood_queues; ++qi)
        flooders.emplace_back([&, qi] { flood_vcpu(qi, *fg, fb, o, ctl); });
    for (int k = 0; k < 5000 && ctl.ready.load() < o.flood_queues; ++k)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const int honest_tid = int(::gettid());
    const std::string honest_exec = "xv-dom" + std::to_string(*honest), flood_exec = "xv-dom" + std::to_string(*flood);

    // Per-guest cgroups (o.cpu_cgroup): destroyed (threads moved back)
    // before the flooders are joined, whichever way this function returns.
    std::optional<CpuGroups> groups;
    auto stop_flooders = [&] {
        ctl.on = false;
        ctl.quit = true;
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
            bool flood_vcpu_tid = false;
            for (unsigned i = 0; i < o.flood_queues && i < 8; ++i) flood_vcpu_tid |= ctl.vcpu_tids[i] == tid;
            if (tid == honest_tid)
                k = CpuGroups::HonestVcpus;
            else if (flood_vcpu_tid)
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
    Windows w;
    w.run(o, ctl, honest_drv, [] { return task_times(); });
    w.fill(res, honest_exec, flood_exec, honest_tid, ctl, o.flood_queues);
    groups.reset();
    stop_flooders();
    res.failure = !honest_drv.failure.empty() ? honest_drv.failure : ctl.failure();
    h.shutdown();
    return res;
}

/// One page shared with a child process, holding a T.
template <class T>
class SharedPage {
public:
    SharedPage() {
        void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) t_ = new (p) T();
    }
    ~SharedPage() {
        if (!t_) return;
        t_->~T();
        ::munmap(t_, sizeof(T));
    }
    SharedPage(const SharedPage&) = delete;
    SharedPage& operator=(const SharedPage&) = delete;
    T* get() const { return t_; }

private:
    T* t_ = nullptr;
};

/// The deployment's shape: the flooder's simulator and worker in a child
/// process, the honest guest's in this one.
inline Result<FairnessResult> measure_in_two_processes(const FairnessOptions& o) {
    TempImage honest_img(kHonestBytes, TempImage::Where::Filesystem);
    XV_TRY(fill_honest_image(honest_img));
    SharedPage<FloodControl> page;
    FloodControl* ctl = page.get();
    if (!ctl) return errno_error(errno, "mmap of the shared control page");
    // Per-worker cgroups: the daemon's (ServiceGroup); each process enters
    // its worker's group before it starts anything, as a worker spawned by
    // the supervisor enters it before exec. The honest guest is dom1 in its
    // simulator, the flooder dom2 in its own.
    std::optional<ServiceGroup> groups;
    daemon::WorkerCgroupSlot honest_slot, flood_slot;
    if (!o.cpu_cgroup.empty()) {
        groups.emplace();
        XV_TRY(groups->create(o.cpu_cgroup));
        auto hs = groups->prepare(1);
        if (!hs) return std::move(hs).error();
        auto fs = groups->prepare(2);
        if (!fs) return std::move(fs).error();
        honest_slot = std::move(hs).value();
        flood_slot = std::move(fs).value();
    }
    // fork() before this process starts any thread: the child gets one
    // thread and no lock held by another.
    std::fflush(nullptr);
    const pid_t child = ::fork();
    if (child < 0) return errno_error(errno, "fork");
    if (child == 0) {
        if (flood_slot.valid() && !flood_slot.enter()) ::_exit(1);
        int rc = 1;
        try {
            rc = flood_process(o, *ctl);
        } catch (...) {
            ctl->fail("flooder process: exception");
        }
        std::fflush(nullptr);
        ::_exit(rc);
    }
    // From here on, every way out stops and reaps the child.
    struct Reaper {
        pid_t pid;
        FloodControl* ctl;
        int status = -1;
        void reap() {
            if (pid <= 0) return;
            ctl->on = false;
            ctl->quit = true;
            for (int k = 0; k < 15000; ++k) {
                if (::waitpid(pid, &status, WNOHANG) == pid) {
                    pid = 0;
                    return;
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }
            ::kill(pid, SIGKILL);
            (void)::waitpid(pid, &status, 0);
            pid = 0;
        }
        ~Reaper() { reap(); }
    } reaper{child, ctl};

    if (honest_slot.valid() && !honest_slot.enter())
        return make_error(std::errc::permission_denied, "could not enter " + honest_slot.path());
    ctl->go = true;

    Host h(domains_toml({{"honest", "unsafe"}}) + blk_toml("honest", honest_img.path.string()), sim_options(o));
    auto honest = create_guest(h, "honest", 1);
    if (!honest) return make_error(std::errc::io_error, "cannot create the simulated honest guest");
    XV_TRY(h.sim->add_virtio_device(spec(*honest, 0, "virtio,device2")));
    XV_TRY(start_worker(h, *honest, o.io_threads));
    auto hg = h.sim->guest(*honest);
    BlkGuest hb;
    XV_TRY(hb.attach(*hg, 0, 1));
    HonestDriver honest_drv(o, *hg, hb);
    XV_TRY(honest_drv.init());
    for (int k = 0; k < 20000 && ctl->ready.load() < o.flood_queues && !ctl->failed; ++k) {
        if (int st; ::waitpid(child, &st, WNOHANG) == child) {
            reaper.pid = 0;
            return make_error(std::errc::io_error, "the flooder's process ended before it flooded: " +
                                                       (ctl->failed ? ctl->failure() : std::string("no reason given")));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (ctl->failed || ctl->ready.load() < o.flood_queues)
        return make_error(std::errc::io_error, "the flooder's process did not start: " + ctl->failure());
    FairnessResult res;
    res.separate_processes = true;
    res.separate_executors = true;
    const int honest_tid = int(::gettid());
    const std::string honest_exec = "xv-dom" + std::to_string(*honest),
                      flood_exec = "xv-dom" + std::to_string(ctl->backend_domid.load());
    if (honest_exec == flood_exec) return make_error(std::errc::io_error, "both guests have the same domid");
    // vcpus_apart: the vCPU threads (this one is the honest guest's) go to
    // groups beside the service's; the groups go once the flooder's
    // process is reaped and this thread is back where it came from.
    std::optional<VcpuGroups> vcpu_groups;
    struct VcpuGroupsGone {
        std::optional<VcpuGroups>& g;
        Reaper& r;
        std::optional<ServiceGroup>& s;
        ~VcpuGroupsGone() {
            r.reap();
            s.reset();
            g.reset();
        }
    } vcpu_groups_gone{vcpu_groups, reaper, groups};
    if (o.vcpus_apart && !o.cpu_cgroup.empty()) {
        vcpu_groups.emplace();
        XV_TRY(vcpu_groups->create(o.cpu_cgroup));
        bool moved = vcpu_groups->move(0, honest_tid);
        for (unsigned i = 0; i < o.flood_queues && i < 8; ++i) moved = moved && vcpu_groups->move(1, ctl->vcpu_tids[i]);
        if (!moved) return make_error(std::errc::permission_denied, "could not move the vCPU threads");
    }
    Windows w;
    w.run(o, *ctl, honest_drv, [child] {
        auto t = task_times();
        t.merge(task_times(int(child)));
        return t;
    });
    w.fill(res, honest_exec, flood_exec, honest_tid, *ctl, o.flood_queues);
    res.failure = !honest_drv.failure.empty() ? honest_drv.failure : ctl->failure();
    reaper.reap();
    if (res.failure.empty() && !(WIFEXITED(reaper.status) && WEXITSTATUS(reaper.status) == 0))
        res.failure = "the flooder's process ended with status " + std::to_string(reaper.status);
    h.shutdown();
    groups.reset();
    return res;
}

}  // namespace fairness_detail

/// Runs the alternating windows on a fresh simulated host (or two, one per
/// process); an Error when the setup fails (the figures are then
/// meaningless). With separate_processes the caller must not have started
/// any thread (the flooder's process is forked first).
inline Result<FairnessResult> measure_fairness(const FairnessOptions& o) {
    return o.separate_processes ? fairness_detail::measure_in_two_processes(o)
                                : fairness_detail::measure_in_one_process(o);
}

}  // namespace xv::daemon::testing
