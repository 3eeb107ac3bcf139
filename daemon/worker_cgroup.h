// SPDX-License-Identifier: GPL-2.0-only
// Worker cgroups: the Hardware Domain service puts each per-guest worker
// (`serve --domid N --worker`) in a cpu cgroup of its own, all of equal
// weight, so that a guest flooding its queues gets one worker's share of
// the service's CPU time and not more (issue 5: the other guest's
// throughput stays within 20 % of running alone). Without it every worker
// process is scheduled on its own and the flooder's busier threads win.
//
// Where, found from /proc/self/cgroup:
//
//   cgroup v2 ("0::/system.slice/xen-virtiod.service", Delegate=cpu):
//     <own>/supervisor          the supervisor (and whatever else was in
//                               <own>): moved there first, as a cgroup
//                               with controllers enabled for its children
//                               may hold no process (cgroup-v2.rst "No
//                               Internal Process Constraint")
//     <own>/cgroup.subtree_control  += "+cpu"
//     <own>/worker-<domid>      cpu.weight 100, one per worker
//   cgroup v1 (a "cpu" hierarchy, e.g. /sys/fs/cgroup/cpu):
//     <own>/worker-<domid>      cpu.shares 1024, one per worker; the
//                               supervisor stays in <own>
//   <own> is the hierarchy's root (no service manager): "<root>/xen-virtiod"
//   is made and used instead (v2: with +cpu in the root's subtree_control).
//
// A worker is placed before it executes: prepare() opens its group's
// cgroup.procs in the parent; the child, between fork and exec, writes "0"
// (itself) into it with write(2), which is async-signal-safe; every thread
// the worker starts is born in its group. release() removes the group after
// the worker was reaped (retried later while the kernel still counts it
// busy); setup() removes worker-* groups an earlier run left.
//
// Never fatal: when the groups cannot be used (worker_cgroups = "off", no
// cpu controller, not delegated, read-only, no permission) setup() logs one
// line (what, why, what the operator can do) and every method is a no-op.
#pragma once

#include <memory>
#include <set>
#include <string>

#include "config.h"
#include "xv/result.h"
#include "xv/xen/types.h"

namespace xv::daemon {

/// Where to look (tests point both at a temporary directory).
struct WorkerCgroupOptions {
    WorkerCgroupMode mode = WorkerCgroupMode::Auto;
    /// Where the cgroup file systems are mounted: the v2 hierarchy at the
    /// root itself (or at <root>/unified on a hybrid host), a v1 cpu
    /// hierarchy at <root>/cpu (or <root>/cpu,cpuacct).
    std::string fs_root = "/sys/fs/cgroup";
    /// This process's cgroups, as the kernel lists them.
    std::string proc_self_cgroup = "/proc/self/cgroup";
};

/// A worker's group, opened before fork.
class WorkerCgroupSlot {
public:
    WorkerCgroupSlot() = default;
    WorkerCgroupSlot(int fd, std::string path);
    ~WorkerCgroupSlot();
    WorkerCgroupSlot(WorkerCgroupSlot&& o) noexcept;
    WorkerCgroupSlot& operator=(WorkerCgroupSlot&& o) noexcept;
    WorkerCgroupSlot(const WorkerCgroupSlot&) = delete;
    WorkerCgroupSlot& operator=(const WorkerCgroupSlot&) = delete;

    bool valid() const { return fd_ >= 0; }
    /// The group's directory.
    const std::string& path() const { return path_; }
    /// Moves the calling process into the group (writes "0" to its
    /// cgroup.procs). Async-signal-safe: meant for the child between fork
    /// and exec; on failure it writes a line, built beforehand, to stderr
    /// and returns false (the worker then runs in its parent's group).
    bool enter() const noexcept;
    /// Moves process `pid` into the group (a parent placing a child).
    Result<void> place(int pid) const;

private:
    int fd_ = -1;
    std::string path_;
    std::string failure_line_;
};

class WorkerCgroups {
public:
    enum class Layout { None, V1, V2 };

    /// Finds this process's cgroup and makes the workers' parent ready.
    /// Never fails: when the groups cannot be used, says so in one log
    /// line and returns an object whose methods do nothing.
    static std::shared_ptr<WorkerCgroups> setup(const WorkerCgroupOptions& opts);

    bool enabled() const { return layout_ != Layout::None; }
    Layout layout() const { return layout_; }
    /// The directory the worker-<domid> groups are made in (empty: disabled).
    const std::string& base() const { return base_; }
    /// Why the groups are not used (empty when they are).
    const std::string& why_not() const { return why_not_; }
    /// The group of `domid`'s worker.
    std::string path_of(xen::DomId domid) const;
    /// The weight every worker gets: cpu.weight 100 (v2), cpu.shares 1024 (v1).
    const char* weight_file() const { return layout_ == Layout::V2 ? "cpu.weight" : "cpu.shares"; }
    const char* weight() const { return layout_ == Layout::V2 ? "100" : "1024"; }

    /// Makes (or reuses) `domid`'s group with the common weight and opens
    /// its cgroup.procs. An Error (disabled, or the kernel refused) means:
    /// run the worker without a group of its own; the caller logs it.
    Result<WorkerCgroupSlot> prepare(xen::DomId domid);
    /// After `domid`'s worker was reaped: removes its group, or retries at
    /// the next call to retry() while the kernel still counts it populated.
    void release(xen::DomId domid);
    /// Retries removals release() could not make yet.
    void retry();
    /// Groups whose removal is still due.
    std::size_t pending() const { return pending_.size(); }

private:
    WorkerCgroups() = default;
    Result<void> setup_v1(const WorkerCgroupOptions& o, const std::string& own);
    Result<void> setup_v2(const WorkerCgroupOptions& o, const std::string& own);
    void remove_stale();
    bool remove(xen::DomId domid, bool quiet);

    Layout layout_ = Layout::None;
    std::string base_;
    std::string why_not_;
    std::set<xen::DomId> pending_;
};

}  // namespace xv::daemon
