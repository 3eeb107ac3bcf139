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
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "config.h"
#include "discovery.h"
#include "guest_session.h"
#include "policy.h"
#include "xv/xen/hypervisor.h"

namespace xv::daemon {

/// How the manager runs.
struct ManagerOptions {
    /// Serve this guest only (`--domid N`): the Driver Domain shape, or a
    /// worker of the Hardware Domain service.
    std::optional<xen::DomId> only_guest;
    /// Run one worker process per guest instead of in-process sessions.
    bool spawn_workers = false;
    /// For spawned workers: this binary and the configuration file.
    std::string self_exe;
    std::string config_path;
    /// Called when the guest of `only_guest` went away.
    std::function<void()> on_only_guest_gone;
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
};

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

    /// Stops discovery and every session; `done` when all are closed.
    void stop(std::function<void()> done);

    /// Replaces the configuration used for guests found from now on
    /// (SIGHUP); connected guests keep theirs.
    void reload(Config config);

    /// Live sessions.
    std::vector<std::shared_ptr<GuestSession>> sessions() const;
    ManagerStats stats() const { return stats_; }

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
    std::string guest_name(xen::DomId domid);
    void spawn_worker(xen::DomId domid);
    void reap_workers();

    Config config_;
    xen::Hypervisor& hv_;
    boost::asio::any_io_executor ex_;
    boost::asio::strand<boost::asio::any_io_executor> strand_;
    ManagerOptions opts_;
    std::unique_ptr<xen::XenStore> xs_;
    std::unique_ptr<xen::DomainControl> dc_;
    xen::DomId self_ = 0;
    HostFacts host_;
    std::optional<boost::asio::posix::stream_descriptor> watch_sd_;
    boost::asio::steady_timer reap_timer_;
    bool stopping_ = false;
    std::map<xen::DomId, std::shared_ptr<GuestSession>> sessions_;
    std::map<xen::DomId, int> workers_;            ///< domid -> worker pid
    std::set<std::string> reported_;               ///< backend paths already given an error node
    std::set<xen::DomId> refused_guests_;
    ManagerStats stats_;
};

}  // namespace xv::daemon
