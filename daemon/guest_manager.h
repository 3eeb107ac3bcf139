// SPDX-License-Identifier: GPL-2.0-only
// The guest manager: discovery -> policy -> one GuestSession per guest.
//
// Shaped like Asio's connection_manager: it owns the sessions, starts one
// when a guest appears in xenstore (or, for configured virtio-pci devices,
// when the named domain exists), stops it when the guest goes away
// (backend state Closing from `xl destroy`, the domain dying, the backend
// directory removed) and stops them all on SIGTERM.
//
//   xenstore watch (backend/virtio, backend/virtio_disk, @introduceDomain,
//   @releaseDomain) --> rescan() --> per guest: plan + policy verdicts
//        refused device: `error` node + log line; the guest's other devices still work
//        refused guest (SafeVM rule): nothing served, error nodes, log
//        otherwise: GuestSession::start()
//
// Two ways to run a session (architecture.md "Deployment shapes"):
//   in-process   the simulator (`demo`, tests) and `--domid N` workers
//   worker       real Xen without --domid: the supervisor runs
//                `xen-virtiod serve --domid N` per guest, restricted to it
//
// A guest's device set is fixed when its session (or worker) starts: a
// sandboxed worker can no longer open images, create ptys or taps
// (privileges.h), so a device announced later for a guest already served
// gets an `error` node and a log line, never a half-built device.
//
// Worker supervision (the Hardware Domain service), per guest:
//
//   +---------+ spawn  +---------+ exit 0 (guest gone, SIGTERM)   +------+
//   | Wanted  | -----> | Running | -----------------------------> | Done |
//   +---------+        +---------+ exit 1/2/3 (config, policy,    +------+
//        ^                  |        privilege: restarting cannot help)
//        | backoff elapsed, | crash (signal, other exit status)
//        | guest alive      v
//        |            +------------+ restart_limit failures in a row
//        +----------- | Backoff    | -----------------------------> GivenUp
//                     | 1,2,4..max |   (`error` node + log line)
//                     +------------+
//
// A worker that ran for `healthy_after` resets the failure count.
//
// Each worker runs in a cpu cgroup of its own, all of equal weight, entered
// between fork and exec and removed once the worker was reaped, where the
// cgroup tree allows it ([daemon] worker_cgroups, worker_cgroup.h): a
// guest flooding its queues gets one worker's share of the CPU.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <chrono>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "config.h"
#include "discovery.h"
#include "guest_executor.h"
#include "guest_session.h"
#include "policy.h"
#include "worker_cgroup.h"
#include "xv/xen/hypervisor.h"

namespace xv::daemon {

/// How a worker process ended.
struct WorkerExit {
    bool signaled = false;  ///< killed by a signal (a crash)
    int status = 0;         ///< exit status, or the signal number
};

/// Starts, watches and stops the worker processes of the Hardware Domain
/// service. The real one forks and executes `xen-virtiod serve --domid N
/// --worker`; tests provide their own.
class WorkerSpawner {
public:
    virtual ~WorkerSpawner() = default;
    /// Starts a worker for `domid`; returns its id (the pid).
    virtual Result<int> spawn(xen::DomId domid) = 0;
    /// How `id` ended, if it did (never blocks).
    virtual std::optional<WorkerExit> poll(int id) = 0;
    /// Asks the worker to stop (SIGTERM).
    virtual void terminate(int id) = 0;
    /// Waits until the worker ended, at most `limit`, then kills it (SIGKILL).
    virtual WorkerExit wait(int id, std::chrono::milliseconds limit) = 0;
};

/// The fork/exec spawner: `self_exe serve --domid N --config FILE --worker`;
/// with `cgroups` enabled each worker enters its own group before exec and
/// the group is removed once the worker was reaped (worker_cgroup.h).
std::shared_ptr<WorkerSpawner> make_process_spawner(std::string self_exe, std::string config_path,
                                                    std::shared_ptr<WorkerCgroups> cgroups = nullptr);

/// How the manager runs.
struct ManagerOptions {
    /// Serve this guest only (`--domid N`): the Driver Domain shape, or a
    /// worker of the Hardware Domain service.
    std::optional<xen::DomId> only_guest;
    /// Run one worker process per guest instead of in-process sessions.
    bool spawn_workers = false;
    /// In-process sessions: each guest gets its own io_context with this
    /// many threads (guest_executor.h), as each gets its own process under
    /// the Hardware Domain service (`serve --domid N` sets [daemon]
    /// workers); 0 runs every session on the manager's executor.
    unsigned threads_per_guest = 0;
    /// For spawned workers: this binary and the configuration file.
    std::string self_exe;
    std::string config_path;
    /// Spawns the workers (null: make_process_spawner(self_exe, config_path,
    /// WorkerCgroups::setup(worker_cgroups)), made by start()).
    std::shared_ptr<WorkerSpawner> spawner;
    /// Where the process spawner puts each worker's cpu cgroup ([daemon]
    /// worker_cgroups; tests point it at a temporary tree).
    WorkerCgroupOptions worker_cgroups;
    /// How often worker exits are collected and due restarts made.
    std::chrono::milliseconds reap_period{500};
    /// First restart delay after a crash; doubles up to restart_backoff_max.
    std::chrono::milliseconds restart_backoff{1000};
    std::chrono::milliseconds restart_backoff_max{30000};
    /// Crashes in a row after which the guest is given up.
    unsigned restart_limit = 5;
    /// A worker that ran this long resets the crash count.
    std::chrono::milliseconds healthy_after{60000};
    /// Called when the guest of `only_guest` went away.
    std::function<void()> on_only_guest_gone;
    /// A guest found after start is served (or its worker spawned) once
    /// its list of announced devices has not changed for `settle_quiet`
    /// (libxl writes a guest's devices one by one, and a backend serves
    /// the devices present when it starts), or `settle_max` after it was
    /// first seen, whichever comes first.
    std::chrono::milliseconds settle_quiet{250};
    std::chrono::milliseconds settle_max{3000};
    /// A worker of the Hardware Domain service (`serve --worker`): records
    /// the ids of its guest's ioreq servers under ioreq_servers_path() for
    /// the supervisor, which destroys them if the worker dies (Xen keeps an
    /// ioreq server until the domain dies or it is destroyed).
    bool report_ioreq_servers = false;
    /// Called after each session started (demo, tests).
    std::function<void(std::shared_ptr<GuestSession>)> on_session;
};

/// Counters for logs and tests.
struct ManagerStats {
    std::uint64_t scans = 0;
    std::uint64_t sessions_started = 0;
    std::uint64_t sessions_stopped = 0;
    std::uint64_t devices_refused = 0;
    std::uint64_t guests_refused = 0;
    std::uint64_t workers_spawned = 0;
    std::uint64_t workers_exited = 0;    ///< ended with status 0
    std::uint64_t workers_crashed = 0;   ///< signal or unexpected status
    std::uint64_t workers_failed = 0;    ///< status 1/2/3: not restarted
    std::uint64_t workers_restarted = 0;
    std::uint64_t guests_given_up = 0;
    std::uint64_t late_devices_refused = 0;
    std::uint64_t settle_waits = 0;      ///< guests held back while their device list changed
    std::uint64_t stale_ioreq_servers_destroyed = 0;  ///< left in Xen by workers that died
    std::uint64_t stale_irq_lines_lowered = 0;        ///< SPIs (mmio, PCI INTx) of dead workers' guests set low
};

/// Where a worker records the ids of its guest's ioreq servers (space
/// separated): <our domain>/xen-virtiod/<guest>/ioreq-servers.
std::string ioreq_servers_path(const xen::XenStore& xs, xen::DomId self, xen::DomId guest);
/// Where a worker records, just before it creates its guest's ioreq
/// server, the ids of the servers of that guest this domain emulates
/// already (space separated; "?" when they could not be listed); removed
/// once the new server's id is recorded under ioreq_servers_path().
std::string ioreq_intent_path(const xen::XenStore& xs, xen::DomId self, xen::DomId guest);

/// Builds the plan of one guest from what xenstore announced and the
/// configuration; devices that cannot be served are returned in `refused`
/// with the reason. Pure (no Xen calls) apart from reading xenstore names.
struct PlanResult {
    GuestPlan plan;
    std::vector<std::pair<AnnouncedDevice, std::string>> refused;
};
PlanResult plan_guest(const Config& config, xen::DomId domid, const std::string& name,
                      const std::vector<AnnouncedDevice>& announced, xen::DomId backend_domid);

class GuestManager : public std::enable_shared_from_this<GuestManager> {
public:
    static std::shared_ptr<GuestManager> create(const Config& config, xen::Hypervisor& hv,
                                                boost::asio::any_io_executor ex, ManagerOptions opts);
    ~GuestManager();

    /// Opens xenstore, evaluates the policy for every guest already
    /// announced and starts serving. The returned verdicts refuse start
    /// (exit 2) when a SafeVM rule is broken; nothing was started then.
    Result<Verdicts> start();

    /// Scans xenstore now (what a watch event triggers).
    void rescan();
    /// Logs a refused xenstore entry (a ScanResult error) and writes its error node.
    void report_scan_error(const std::string& path, const Error& err);

    /// Stops discovery and every session; `done` when all are closed.
    void stop(std::function<void()> done);

    /// Replaces the configuration used for guests found from now on
    /// (SIGHUP); connected guests keep theirs.
    void reload(Config config);

    /// Live sessions.
    std::vector<std::shared_ptr<GuestSession>> sessions() const;
    ManagerStats stats() const { return stats_; }
    /// The strand the manager's state lives on: the methods above are
    /// called there (post to it from other threads).
    const boost::asio::strand<boost::asio::any_io_executor>& strand() const { return strand_; }

private:
    GuestManager(const Config& config, xen::Hypervisor& hv, boost::asio::any_io_executor ex, ManagerOptions opts);
    void arm_watch();
    void on_watch();
    /// Guests to serve now: announced devices plus configured pci devices.
    std::map<xen::DomId, std::vector<AnnouncedDevice>> wanted(ScanResult& scan);
    void start_guest(xen::DomId domid, const std::vector<AnnouncedDevice>& devs, bool at_start, Verdicts* out);
    void stop_guest(xen::DomId domid, const char* why);
    /// Policy facts of one guest: announced devices plus configured pci ones.
    std::vector<GuestFacts> guest_facts(xen::DomId domid, const std::vector<AnnouncedDevice>& devs);
    bool guest_alive(xen::DomId domid);
    /// The guest's xenstore name; empty, with the reason in `why`, when it
    /// cannot be read (a driver domain without xenstore target privilege).
    std::string guest_name(xen::DomId domid, std::string* why = nullptr);
    /// False (logged once) while this driver domain lacks device-model
    /// privilege over `domid`: its /local/domain/<self>/target, written by
    /// `xen-virtiod attach` in Dom0, names another domain or none.
    bool has_target(xen::DomId domid);
    /// Why configuration entries naming a guest by name cannot apply to
    /// `domid` whose name is unreadable; empty when no entry names a guest.
    std::string unreadable_name_problem(xen::DomId domid, const std::string& why) const;
    void spawn_worker(xen::DomId domid);
    void reap_workers();
    void on_worker_exit(xen::DomId domid, const WorkerExit& how);
    /// After a worker of `domid` ended: releases what it left in Xen that
    /// the kernel does not release with its process (see the .cc).
    void release_worker_leftovers(xen::DomId domid, int pid, const WorkerExit& how);
    /// A worker records its guest's ioreq server id (report_ioreq_servers).
    void record_ioreq_server(xen::DomId domid, xen::IoServId id);
    /// A worker records the guest's servers before it creates its own.
    void record_ioreq_intent(xen::DomId domid, xen::DeviceModel& dm);
    /// Devices announced for a guest after its session or worker started.
    void refuse_late_devices(xen::DomId domid, const std::vector<AnnouncedDevice>& devs);
    /// Writes `why` as the error node of every device announced for `domid`.
    void error_all_devices(xen::DomId domid, const std::string& why);

    Config config_;
    xen::Hypervisor& hv_;
    boost::asio::any_io_executor ex_;
    boost::asio::strand<boost::asio::any_io_executor> strand_;
    ManagerOptions opts_;
    std::unique_ptr<xen::XenStore> xs_;
    std::unique_ptr<xen::DomainControl> dc_;
    std::unique_ptr<xen::DeviceModel> dm_;  ///< supervisor: destroys dead workers' ioreq servers
    xen::DomId self_ = 0;
    HostFacts host_;
    std::optional<boost::asio::posix::stream_descriptor> watch_sd_;
    boost::asio::steady_timer reap_timer_;
    bool stopping_ = false;
    std::map<xen::DomId, std::shared_ptr<GuestSession>> sessions_;
    /// Sessions whose orderly stop is under way; stop() waits for them too.
    std::map<xen::DomId, std::shared_ptr<GuestSession>> closing_;
    /// Own I/O threads of in-process sessions (threads_per_guest > 0),
    /// live or closing; retired once the session closed.
    std::map<const GuestSession*, std::unique_ptr<GuestExecutor>> executors_;
    /// After `domid`'s session closed: joins its threads, destroys what
    /// they left queued, then lets the session (its Xen handles) go.
    void retire(xen::DomId domid);
    /// The completion of the stop of `domid`'s session (runs on its thread).
    std::function<void()> on_closed(xen::DomId domid);
    std::function<void()> stop_done_;
    /// Runs stop_done_ once nothing is closing any more.
    void maybe_stopped();
    /// One supervised worker (see the diagram above).
    struct Worker {
        int id = -1;                                  ///< pid; -1 while in backoff
        std::chrono::steady_clock::time_point started;
        std::chrono::steady_clock::time_point restart_at;
        unsigned failures = 0;                        ///< crashes in a row
        std::chrono::milliseconds backoff{0};
    };
    std::map<xen::DomId, Worker> workers_;
    std::set<xen::DomId> given_up_;
    /// Backend paths each served guest started with (late-device check).
    std::map<xen::DomId, std::set<std::string>> started_with_;
    std::set<std::string> reported_;               ///< backend paths already given an error node
    std::set<xen::DomId> refused_guests_;
    std::set<xen::DomId> waiting_target_;          ///< guests logged as waiting for `attach`
    /// Guests found after start whose device list is still settling.
    struct Settling {
        std::chrono::steady_clock::time_point first_seen, last_change;
        std::set<std::string> paths;  ///< backend paths seen last time
    };
    std::map<xen::DomId, Settling> settling_;
    boost::asio::steady_timer settle_timer_;
    /// True when `domid`'s announced devices are settled (see settle_quiet);
    /// otherwise arms a rescan for when they may be.
    bool settled(xen::DomId domid, const std::vector<AnnouncedDevice>& devs);
    ManagerStats stats_;
};

}  // namespace xv::daemon
