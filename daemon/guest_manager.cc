// SPDX-License-Identifier: GPL-2.0-only
#include "guest_manager.h"

#include <spdlog/spdlog.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <sstream>
#include <chrono>
#include <cstring>
#include <thread>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/post.hpp>

#include "check.h"

namespace xv::daemon {

namespace {

/// A tap name that fits IFNAMSIZ (15 characters): "xvn<domid>.<index>".
std::string default_tap(xen::DomId dom, unsigned index) {
    return "xvn" + std::to_string(dom) + "." + std::to_string(index);
}

/// Xen's OUI 00:16:3e, then the domid and the index.
std::array<std::uint8_t, 6> default_mac(xen::DomId dom, unsigned index) {
    return {0x00, 0x16, 0x3e, std::uint8_t(dom >> 8), std::uint8_t(dom & 0xff), std::uint8_t(index & 0xff)};
}

/// Fills the backend configuration of one device from its [[device]]
/// entry (may be null) and what xenstore announced (may be null).
std::optional<std::string> fill_backend(DevicePlan& p, const DeviceEntry* cfg, const AnnouncedDevice* ann,
                                        xen::DomId dom, unsigned index) {
    switch (p.type) {
        case DeviceType::Blk:
            p.blk.path = cfg && !cfg->path.empty() ? cfg->path : ann ? ann->params : std::string();
            if (p.blk.path.empty()) return "no image: neither a [[device]] path nor xenstore params";
            p.blk.readonly = cfg ? cfg->readonly : (ann && !ann->writable);
            p.blk.discard = cfg ? cfg->discard : (ann ? ann->discard : true);
            p.blk.queues = std::uint16_t(cfg ? cfg->queues : 1);
            p.blk.serial = "xv-" + std::to_string(dom) + "-" + std::to_string(index);
            return std::nullopt;
        case DeviceType::Net:
            p.net.tap = cfg && !cfg->tap.empty() ? cfg->tap : default_tap(dom, index);
            p.net.mac = cfg && cfg->mac ? *cfg->mac : default_mac(dom, index);
            p.net.queues = std::uint16_t(cfg ? cfg->queues : 1);
            p.net.bridge = cfg ? cfg->bridge : std::string();
            p.net.mtu = std::uint16_t(cfg ? cfg->mtu : 1500);
            static_assert(DeviceEntry::kDefaultTxPollUs == devices::NetConfig::kDefaultTxPollUs &&
                          DeviceEntry::kMaxTxPollUs == devices::NetConfig::kMaxTxPollUs);
            if (cfg) p.net.tx_poll_us = cfg->tx_poll_us;
            return std::nullopt;
        case DeviceType::Console:
            p.console.backend = !cfg || cfg->console == ConsoleBackend::Pty ? devices::ConsoleConfig::Backend::Pty
                                : cfg->console == ConsoleBackend::Socket  ? devices::ConsoleConfig::Backend::Socket
                                                                          : devices::ConsoleConfig::Backend::Log;
            p.console.socket_path = cfg && !cfg->socket.empty()
                                        ? cfg->socket
                                        : "/run/xen-virtiod/dom" + std::to_string(dom) + "-console" +
                                              std::to_string(index) + ".sock";
            p.console.log_path = cfg ? cfg->log : std::string();
            if (cfg)
                for (const auto& port : cfg->console_ports) p.console.ports.push_back({port.name, port.socket});
            return std::nullopt;
    }
    return "unknown device type";
}

/// fork/exec of `xen-virtiod serve --domid N --worker`, waitpid to reap;
/// each worker in a cpu cgroup of its own when `cgroups` is enabled.
class ProcessSpawner final : public WorkerSpawner {
public:
    ProcessSpawner(std::string exe, std::string config, std::shared_ptr<WorkerCgroups> cgroups)
        : exe_(std::move(exe)), config_(std::move(config)), cgroups_(std::move(cgroups)) {}

    Result<int> spawn(xen::DomId domid) override {
        // Everything the child needs is built before fork: between fork and
        // exec a multi-threaded process may only make async-signal-safe calls.
        const std::string dom = std::to_string(domid);
        const char* argv[] = {exe_.c_str(), "serve", "--domid", dom.c_str(), "--config", config_.c_str(),
                              "--worker", nullptr};
        WorkerCgroupSlot slot;
        if (cgroups_ && cgroups_->enabled()) {
            if (auto s = cgroups_->prepare(domid))
                slot = std::move(s).value();
            else
                spdlog::warn("dom{}: the worker runs without a cgroup of its own (no CPU share of its own): {}",
                             domid, s.error().describe());
        }
        pid_t pid = fork();
        if (pid < 0) {
            if (slot.valid()) cgroups_->release(domid);
            return errno_error(errno, "fork");
        }
        if (pid == 0) {
            // Into its group before exec: every thread it starts is born there.
            if (slot.valid()) (void)slot.enter();
            execv(exe_.c_str(), const_cast<char* const*>(argv));
            _exit(127);
        }
        if (slot.valid()) grouped_[int(pid)] = domid;
        return int(pid);
    }

    std::optional<WorkerExit> poll(int id) override {
        if (cgroups_) cgroups_->retry();
        int status = 0;
        pid_t r = waitpid(pid_t(id), &status, WNOHANG);
        if (r != pid_t(id)) return std::nullopt;
        reaped(id);
        return decode(status);
    }

    void terminate(int id) override { (void)kill(pid_t(id), SIGTERM); }

    WorkerExit wait(int id, std::chrono::milliseconds limit) override {
        auto end = std::chrono::steady_clock::now() + limit;
        while (std::chrono::steady_clock::now() < end) {
            if (auto e = poll(id)) return *e;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        spdlog::error("worker pid {} did not stop within {} ms: SIGKILL", id, limit.count());
        (void)kill(pid_t(id), SIGKILL);
        int status = 0;
        (void)waitpid(pid_t(id), &status, 0);
        reaped(id);
        return decode(status);
    }

private:
    /// The worker's group goes once the worker was reaped.
    void reaped(int id) {
        auto it = grouped_.find(id);
        if (it == grouped_.end()) return;
        cgroups_->release(it->second);
        grouped_.erase(it);
    }
    static WorkerExit decode(int status) {
        if (WIFSIGNALED(status)) return {true, WTERMSIG(status)};
        return {false, WIFEXITED(status) ? WEXITSTATUS(status) : 0};
    }
    std::string exe_, config_;
    std::shared_ptr<WorkerCgroups> cgroups_;
    std::map<int, xen::DomId> grouped_;  ///< pid -> guest, for workers placed in a group
};

std::string describe_exit(const WorkerExit& e) {
    return e.signaled ? "signal " + std::to_string(e.status) + " (" + strsignal(e.status) + ")"
                      : "exit status " + std::to_string(e.status);
}

}  // namespace

std::string ioreq_servers_path(const xen::XenStore& xs, xen::DomId self, xen::DomId guest) {
    return xs.domain_path(self) + "/xen-virtiod/" + std::to_string(guest) + "/ioreq-servers";
}

std::string ioreq_intent_path(const xen::XenStore& xs, xen::DomId self, xen::DomId guest) {
    return xs.domain_path(self) + "/xen-virtiod/" + std::to_string(guest) + "/ioreq-server-intent";
}

std::shared_ptr<WorkerSpawner> make_process_spawner(std::string self_exe, std::string config_path,
                                                    std::shared_ptr<WorkerCgroups> cgroups) {
    return std::make_shared<ProcessSpawner>(std::move(self_exe), std::move(config_path), std::move(cgroups));
}

PlanResult plan_guest(const Config& config, xen::DomId domid, const std::string& name,
                      const std::vector<AnnouncedDevice>& announced, xen::DomId backend_domid) {
    PlanResult out;
    out.plan.domid = domid;
    out.plan.name = name;
    out.plan.cls = config.class_of(domid, name);
    out.plan.pci.backend_domid = backend_domid;
    out.plan.ioreq = IoreqTuning::from(config.daemon);

    std::vector<AnnouncedDevice> devs = announced;
    std::sort(devs.begin(), devs.end(), [](const auto& a, const auto& b) {
        return a.kind != b.kind ? a.kind < b.kind : a.devid < b.devid;
    });
    std::map<DeviceType, unsigned> next_index;
    std::set<const DeviceEntry*> used;
    // mmio entries of this guest, for generic "virtio,device" slots whose
    // type only the configuration knows.
    std::vector<const DeviceEntry*> generic_pool;
    for (const DeviceEntry* e : config.devices_of(domid, name))
        if (e->transport == Transport::Mmio) generic_pool.push_back(e);

    for (const auto& dev : devs) {
        std::optional<DeviceType> type =
            dev.kind == BackendKind::VirtioDisk ? std::optional(DeviceType::Blk) : type_from_compatible(dev.type);
        const DeviceEntry* cfg = nullptr;
        if (type) {
            cfg = config.find_device(domid, name, *type, next_index[*type]);
        } else {
            for (const DeviceEntry* e : generic_pool)
                if (!used.count(e)) {
                    cfg = e;
                    type = e->type;
                    break;
                }
            if (!type) {
                out.refused.emplace_back(dev, "generic '" + dev.type +
                                                  "' slot and no unused [[device]] entry for this guest says "
                                                  "what it is (set type = \"blk\"|\"net\"|\"console\")");
                continue;
            }
        }
        if (cfg) used.insert(cfg);
        unsigned index = next_index[*type]++;
        if (!dev.grant_usage && !(cfg && cfg->grants_explicit && cfg->grants)) {
            // safety-policy.md: never a foreign mapping of guest RAM; a
            // guest without grants is refused whatever its class.
            out.refused.emplace_back(dev, "grant_usage=0: the frontend would use guest-physical addresses and "
                                          "xen-virtiod maps guest memory only through grants (seed \"FFI: Memory "
                                          "Mappings\"); set grant_usage=1 in xl.cfg");
            continue;
        }
        if (dev.transport != "mmio") {
            out.refused.emplace_back(dev, "transport '" + dev.transport +
                                              "' announced in xenstore: only mmio windows come from the "
                                              "toolstack; configure virtio-pci devices in [[device]]");
            continue;
        }
        DevicePlan p;
        p.type = *type;
        p.name = std::string(to_string(*type)) + std::to_string(index);
        p.transport = Transport::Mmio;
        p.nonblocking = cfg ? cfg->nonblocking : false;
        p.announced = dev;
        if (auto why = fill_backend(p, cfg, &dev, domid, index)) {
            out.refused.emplace_back(dev, *why);
            continue;
        }
        out.plan.devices.push_back(std::move(p));
    }

    // virtio-pci devices come from the configuration only (xl has no
    // virtio-pci on Arm, lab-notes.md); they sit behind our ECAM host.
    for (const DeviceEntry* e : config.devices_of(domid, name)) {
        if (e->transport != Transport::Pci || used.count(e)) continue;
        DevicePlan p;
        p.type = e->type;
        // The entry's own index names it, so the policy's verdicts (keyed
        // "config/<name>") and the plan agree.
        unsigned index = e->index;
        p.name = e->name();
        p.transport = Transport::Pci;
        p.nonblocking = e->nonblocking;
        if (!e->grants) continue;  // refused by the policy (R1), reported there
        if (auto why = fill_backend(p, e, nullptr, domid, index)) {
            spdlog::error("dom{} {}: {}", domid, p.name, *why);
            continue;
        }
        out.plan.devices.push_back(std::move(p));
    }
    return out;
}

std::shared_ptr<GuestManager> GuestManager::create(const Config& config, xen::Hypervisor& hv,
                                                   boost::asio::any_io_executor ex, ManagerOptions opts) {
    return std::shared_ptr<GuestManager>(new GuestManager(config, hv, ex, std::move(opts)));
}

GuestManager::GuestManager(const Config& config, xen::Hypervisor& hv, boost::asio::any_io_executor ex,
                           ManagerOptions opts)
    : config_(config), hv_(hv), ex_(ex), strand_(boost::asio::make_strand(ex)), opts_(std::move(opts)),
      reap_timer_(ex), settle_timer_(ex) {}

GuestManager::~GuestManager() {
    // The watch fd belongs to the XenStore handle: never close it twice.
    if (watch_sd_ && watch_sd_->is_open()) (void)watch_sd_->release();
    // Sessions not stopped in order (the manager dropped without stop(), as
    // a crashed worker's are): their own threads are joined and what they
    // left queued is destroyed first, while the grant and device-model
    // handles those handlers may still use are open; then the sessions
    // close their handles, as the kernel closes a dead process's; the
    // io_contexts go last (guest_executor.h).
    for (auto& [key, ex] : executors_) {
        if (ex->on_own_thread()) {
            // Cannot join itself: leave the threads (and the guest) alive
            // rather than destroy what they are running.
            spdlog::critical("guest manager destroyed on a guest's own thread; its threads are left running");
            (void)ex.release();
            continue;
        }
        ex->halt();
        ex->drain();
    }
    sessions_.clear();
    closing_.clear();
    executors_.clear();
}

Result<Verdicts> GuestManager::start() {
    auto self = hv_.self_domid();
    if (!self) return std::move(self).error();
    self_ = self.value();
    auto xs = hv_.open_xenstore();
    if (!xs) return std::move(xs).error();
    xs_ = std::move(xs).value();
    if (auto dc = hv_.open_domain_control()) dc_ = std::move(dc).value();
    host_ = host_facts(&hv_);
    if (opts_.spawn_workers && !opts_.spawner) {
        // Each worker in a cpu cgroup of its own, equal weights, where the
        // cgroup tree lets us (otherwise one log line, and without).
        opts_.spawner = make_process_spawner(opts_.self_exe, opts_.config_path,
                                             WorkerCgroups::setup(opts_.worker_cgroups));
    }

    // Watch before the first scan, so nothing announced in between is missed.
    for (const char* kind : {"virtio", "virtio_disk"}) {
        const std::string path = "/local/domain/" + std::to_string(self_) + "/backend/" + kind;
        if (auto r = xs_->watch(path, kind); !r)
            spdlog::warn("cannot watch {}: {}", path, r.error().describe());
    }
    (void)xs_->watch("@introduceDomain", "introduce");
    (void)xs_->watch("@releaseDomain", "release");
    // In a driver domain, `xen-virtiod attach` (Dom0) writes our target key
    // once we may act on a guest: a guest found before that is picked up then.
    if (self_ != 0) (void)xs_->watch(xs_->domain_path(self_) + "/target", "target");

    // The first scan decides whether we start at all (safety-policy.md).
    ScanResult scan = scan_announced_devices(*xs_, self_, opts_.only_guest);
    ++stats_.scans;
    auto want = wanted(scan);
    Verdicts all;
    {
        std::vector<GuestFacts> facts;
        for (auto& [dom, devs] : want)
            for (auto& x : guest_facts(dom, devs)) facts.push_back(std::move(x));
        all = evaluate(config_, facts, host_);
    }
    log_verdicts(all);
    if (all.refuses_start()) return all;

    for (auto& [path, err] : scan.errors) {
        report_scan_error(path, err);
        reported_.insert(path);
    }
    for (auto& [dom, devs] : want) start_guest(dom, devs, true, nullptr);
    arm_watch();
    if (opts_.spawn_workers) reap_workers();
    return all;
}

std::map<xen::DomId, std::vector<AnnouncedDevice>> GuestManager::wanted(ScanResult& scan) {
    std::map<xen::DomId, std::vector<AnnouncedDevice>> want;
    for (auto& d : scan.devices) {
        if (d.frontend == self_) continue;  // never serve ourselves
        if (!d.online || d.state >= int(xen::XenbusState::Closing)) continue;
        want[d.frontend].push_back(d);
    }
    // Guests with configured virtio-pci devices, when their domain exists.
    for (const DeviceEntry& e : config_.devices) {
        if (e.transport != Transport::Pci) continue;
        std::optional<xen::DomId> dom = e.guest_id;
        if (!dom && !e.guest_name.empty()) {
            if (auto list = xs_->directory("/local/domain")) {
                for (const auto& id : list.value()) {
                    auto n = parse_xs_uint(id, 0x7fef);
                    if (!n) continue;
                    if (auto nm = xs_->read("/local/domain/" + id + "/name"); nm && nm.value() == e.guest_name) {
                        dom = xen::DomId(*n);
                        break;
                    }
                }
            }
        }
        if (!dom || *dom == self_) continue;
        if (opts_.only_guest && *opts_.only_guest != *dom) continue;
        if (!guest_alive(*dom)) continue;
        want[*dom];  // ensure the guest is considered
    }
    return want;
}

std::vector<GuestFacts> GuestManager::guest_facts(xen::DomId domid, const std::vector<AnnouncedDevice>& devs) {
    auto facts = guests_from_announced(devs, config_, xs_.get());
    if (facts.empty()) {
        GuestFacts f;
        f.domid = domid;
        f.name = guest_name(domid);
        facts.push_back(std::move(f));
    }
    // Configured virtio-pci devices (not in xenstore) count for the policy too.
    add_configured_pci_devices(facts.front(), domid, config_);
    return facts;
}

bool GuestManager::guest_alive(xen::DomId domid) {
    if (dc_) {
        auto info = dc_->info(domid);
        if (info) return !info.value().dying;
        if (info.error().code == std::errc::no_such_process) return false;
        // A driver domain may not query other domains (sysctl refused):
        // fall through to what xenstore says.
    }
    return bool(xs_->read("/local/domain/" + std::to_string(domid) + "/name"));
}

std::string GuestManager::guest_name(xen::DomId domid, std::string* why) {
    auto n = xs_->read("/local/domain/" + std::to_string(domid) + "/name");
    if (n) {
        std::string s = n.value().substr(0, 64);
        for (char& c : s)
            if (c < 0x20 || c > 0x7e) c = '?';
        return s;
    }
    if (why) *why = n.error().describe();
    return {};
}

bool GuestManager::has_target(xen::DomId domid) {
    // Dom0 acts on every guest. Under FLASK the policy, not a target, may
    // grant device-model operations (lab-notes "A backend in a driver
    // domain"): try, and let a refused call explain itself.
    if (self_ == 0 || host_.xsm == xen::XsmMode::Flask) return true;
    const std::string key = xs_->domain_path(self_) + "/target";
    auto t = xs_->read(key);
    std::optional<std::uint64_t> target;
    if (t) target = parse_xs_uint(t.value(), 0x7fef);
    if (target && *target == domid) {
        if (waiting_target_.erase(domid)) spdlog::info("dom{}: {} = {}: device-model privilege given", domid, key, domid);
        return true;
    }
    if (waiting_target_.insert(domid).second)
        spdlog::warn("dom{}: waiting for device-model privilege over it ({} is {}): nothing is set up before that "
                     "(an ioreq server would be refused with EPERM). In Dom0, while the guest is paused: "
                     "xen-virtiod attach --backend-domain {} --guest {}",
                     domid, key, t ? "dom" + t.value() : std::string("absent"), self_, domid);
    return false;
}

std::string GuestManager::unreadable_name_problem(xen::DomId domid, const std::string& why) const {
    std::set<std::string> names;
    for (const auto& e : config_.devices)
        if (!e.guest_id && !e.guest_name.empty()) names.insert(e.guest_name);
    for (const auto& d : config_.domains)
        if (!d.id && !d.name.empty()) names.insert(d.name);
    if (names.empty()) return {};
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "'" : ", '") + n + "'";
    return "the name of dom" + std::to_string(domid) + " cannot be read from this domain (/local/domain/" +
           std::to_string(domid) + "/name: " + why + "), so the configuration entries that name a guest (" + list +
           ") cannot be matched to it and its class and devices are unknown; name the guest by domid in " +
           "xen-virtiod.toml (guest = " + std::to_string(domid) + ", [[domain]] id = " + std::to_string(domid) +
           "), or give this domain xenstore access to it from Dom0 (xen-virtiod attach --backend-domain " +
           std::to_string(self_) + " --guest " + std::to_string(domid) + " does, with xenstored's set_target)";
}

void GuestManager::start_guest(xen::DomId domid, const std::vector<AnnouncedDevice>& devs, bool at_start,
                               Verdicts* out) {
    (void)out;
    if (refused_guests_.count(domid) || given_up_.count(domid)) return;
    // A worker (or a restarted one) finds the whole device set itself.
    if (workers_.count(domid)) return;
    if (sessions_.count(domid)) return refuse_late_devices(domid, devs);
    if (!at_start && !settled(domid, devs)) return;
    if (!has_target(domid)) return;  // picked up when `attach` writes our target key
    std::string name_why;
    const std::string name = guest_name(domid, &name_why);
    if (name.empty()) {
        // A driver domain without xenstored's target privilege cannot read
        // the guest's name: entries naming a guest would silently not match
        // (a SafeVM's class lost, a generic slot without its type).
        if (std::string why = unreadable_name_problem(domid, name_why); !why.empty()) {
            spdlog::error("dom{}: not served: {}", domid, why);
            ++stats_.guests_refused;
            refused_guests_.insert(domid);
            for (const auto& d : devs) (void)write_device_error(*xs_, self_, d, "xen-virtiod: " + why);
            return;
        }
    }

    // Evaluate the policy for this guest (again: guests found later).
    auto facts = guest_facts(domid, devs);
    PlanResult pr = plan_guest(config_, domid, name, devs, self_);
    Verdicts v = evaluate(config_, facts, host_);
    if (!at_start) log_verdicts(v);

    // A verdict refusing the whole guest: Refuse, or DeviceRefused for every
    // device ("*", R5: its worker cannot be restricted to it).
    auto refuses_guest = [domid](const Verdict& item) {
        return item.domid && *item.domid == domid &&
               (item.level == Level::Refuse || (item.level == Level::DeviceRefused && item.device == "*"));
    };
    bool guest_refused = false;
    for (const auto& item : v.items) {
        if (!refuses_guest(item)) continue;
        guest_refused = true;
        spdlog::error("dom{} ({}): not served: {} (seed \"{}\"): {}", domid, name, item.rule, item.section,
                      item.message);
    }
    if (guest_refused) {
        ++stats_.guests_refused;
        refused_guests_.insert(domid);
        for (const auto& d : devs) {
            const Verdict* why = nullptr;
            for (const auto& item : v.items)
                if (refuses_guest(item)) why = &item;
            if (why) (void)write_device_error(*xs_, self_, d, xenstore_error_text(*why));
        }
        return;
    }
    // Devices the policy refuses (UnsafeVM without grants, ...).
    std::set<std::string> policy_refused;
    for (const auto& item : v.items) {
        if (item.level != Level::DeviceRefused || !item.domid || *item.domid != domid) continue;
        policy_refused.insert(item.device_key);
        for (const auto& d : devs)
            if (d.key() == item.device_key && reported_.insert(d.backend_path).second) {
                ++stats_.devices_refused;
                spdlog::error("dom{} {}: refused: {}", domid, d.backend_path, xenstore_error_text(item));
                (void)write_device_error(*xs_, self_, d, xenstore_error_text(item));
            }
    }
    for (const auto& [d, why] : pr.refused) {
        if (policy_refused.count(d.key()) || !reported_.insert(d.backend_path).second) continue;
        ++stats_.devices_refused;
        spdlog::error("dom{} {}: refused: {}", domid, d.backend_path, why);
        (void)write_device_error(*xs_, self_, d, "xen-virtiod refused dom" + std::to_string(domid) + ": " + why);
    }
    std::erase_if(pr.plan.devices, [&](const DevicePlan& p) {
        return (p.announced && policy_refused.count(p.announced->key())) ||
               (!p.announced && policy_refused.count("config/" + p.name));
    });
    if (pr.plan.devices.empty()) return;

    if (opts_.spawn_workers) {
        spawn_worker(domid);
        return;
    }
    if (opts_.report_ioreq_servers) {
        // Recorded as soon as the server exists, before its ranges are
        // claimed: a worker dying from then on leaves a server its
        // supervisor knows about.
        pr.plan.on_ioreq_server = [this, domid](xen::IoServId id) { record_ioreq_server(domid, id); };
        // And the servers that exist before it is created: a worker dying
        // between the creation and the record leaves its intent, from which
        // the supervisor finds the server it created.
        pr.plan.before_ioreq_server = [this, domid](xen::DeviceModel& dm) { record_ioreq_intent(domid, dm); };
    }
    // Each guest on its own threads when asked (guest_executor.h).
    std::unique_ptr<GuestExecutor> own;
    if (opts_.threads_per_guest > 0) {
        // ioreq_realtime_priority: the guest's threads inherit the policy
        // from this one while they are started (ioreq_tuning.h).
        RealtimeThreads rt(pr.plan.ioreq, "dom" + std::to_string(domid));
        own = std::make_unique<GuestExecutor>(opts_.threads_per_guest, domid);
    } else if (pr.plan.ioreq.realtime_priority) {
        spdlog::warn("dom{}: ioreq_realtime_priority applies to a guest's own I/O threads; this guest shares the "
                     "daemon's threads and is served with their policy", domid);
    }
    auto s = GuestSession::start(hv_, xs_.get(), own ? own->executor() : ex_, std::move(pr.plan));
    if (!s) {
        // Not retried until the guest goes away (or SIGHUP): the error node
        // written here fires our own watch, and a retry on every rescan
        // would rebuild and tear down the guest's ioreq server in a loop.
        refused_guests_.insert(domid);
        for (const auto& d : devs) (void)write_device_error(*xs_, self_, d, "xen-virtiod: " + s.error().message);
        return;
    }
    ++stats_.sessions_started;
    if (own) executors_[s.value().get()] = std::move(own);
    sessions_[domid] = s.value();
    auto& known = started_with_[domid];
    for (const auto& d : devs) known.insert(d.backend_path);
    if (opts_.on_session) opts_.on_session(s.value());
}

bool GuestManager::settled(xen::DomId domid, const std::vector<AnnouncedDevice>& devs) {
    using Clock = std::chrono::steady_clock;
    const auto now = Clock::now();
    std::set<std::string> paths;
    for (const auto& d : devs) paths.insert(d.backend_path);
    auto [it, fresh] = settling_.try_emplace(domid);
    Settling& st = it->second;
    if (fresh) {
        st.first_seen = st.last_change = now;
        st.paths = std::move(paths);
        ++stats_.settle_waits;
    } else if (paths != st.paths) {
        st.last_change = now;
        st.paths = std::move(paths);
    }
    const auto quiet_at = st.last_change + opts_.settle_quiet;
    const auto max_at = st.first_seen + opts_.settle_max;
    if (now >= quiet_at || now >= max_at) {
        if (now < quiet_at)
            spdlog::warn("dom{}: its device list still changed {} ms ago; serving the {} device(s) announced now "
                         "(settle_max {} ms)", domid,
                         std::chrono::duration_cast<std::chrono::milliseconds>(now - st.last_change).count(),
                         st.paths.size(), opts_.settle_max.count());
        settling_.erase(it);
        return true;
    }
    // Look again when it may have settled (a device written meanwhile
    // rescans earlier through the watch, and moves this deadline).
    auto due = std::min(quiet_at, max_at);
    if (settle_timer_.expiry() <= now || due < settle_timer_.expiry()) {
        settle_timer_.expires_at(due);
        auto self = shared_from_this();
        settle_timer_.async_wait(boost::asio::bind_executor(strand_, [self](const boost::system::error_code& ec) {
            if (!ec) self->rescan();
        }));
    }
    return false;
}

void GuestManager::stop_guest(xen::DomId domid, const char* why) {
    auto it = sessions_.find(domid);
    if (it == sessions_.end()) return;
    spdlog::info("dom{}: {}", domid, why);
    auto s = it->second;
    sessions_.erase(it);
    started_with_.erase(domid);
    ++stats_.sessions_stopped;
    // Kept until closed: a SIGTERM meanwhile waits for this stop too, so
    // the guest's grants are unmapped and state 6 written before exit.
    closing_[domid] = s;
    s->stop(on_closed(domid));
}

std::function<void()> GuestManager::on_closed(xen::DomId domid) {
    auto self = shared_from_this();
    return [self, domid] {
        boost::asio::post(self->strand_, [self, domid] {
            self->retire(domid);
            self->maybe_stopped();
        });
    };
}

void GuestManager::retire(xen::DomId domid) {
    auto it = closing_.find(domid);
    if (it == closing_.end()) return;
    auto s = std::move(it->second);
    closing_.erase(it);
    auto ex = executors_.find(s.get());
    if (ex == executors_.end()) return;
    auto own = std::move(ex->second);
    executors_.erase(ex);
    own->halt();
    own->drain();
    s.reset();
}

void GuestManager::maybe_stopped() {
    if (!stopping_ || !closing_.empty() || !stop_done_) return;
    auto done = std::move(stop_done_);
    stop_done_ = nullptr;
    done();
}

void GuestManager::arm_watch() {
    if (stopping_ || !xs_) return;
    if (!watch_sd_) {
        int fd = xs_->watch_fd();
        if (fd < 0) return;
        watch_sd_.emplace(strand_, fd);
    }
    auto self = shared_from_this();
    watch_sd_->async_wait(boost::asio::posix::stream_descriptor::wait_read,
                          boost::asio::bind_executor(strand_, [self](const boost::system::error_code& ec) {
                              if (ec || self->stopping_) return;
                              self->on_watch();
                              self->arm_watch();
                          }));
}

void GuestManager::on_watch() {
    bool any = false;
    for (int i = 0; i < 256; ++i) {  // bounded: a flood of events is one rescan
        auto ev = xs_->read_watch();
        if (!ev || !ev.value()) break;
        any = true;
    }
    if (any) rescan();
}

void GuestManager::report_scan_error(const std::string& path, const Error& err) {
    // The message names the guest and device (discovery.h); the error node
    // goes where xenbus backends put theirs.
    ++stats_.devices_refused;
    spdlog::error("refused xenstore entry {}: {}", path, err.describe());
    if (auto r = write_backend_error(*xs_, self_, path, "xen-virtiod: " + err.message); !r)
        spdlog::warn("{}: cannot write the error node: {}", path, r.error().describe());
}

void GuestManager::rescan() {
    if (stopping_) return;
    ++stats_.scans;
    ScanResult scan = scan_announced_devices(*xs_, self_, opts_.only_guest);
    if (scan.failed) {
        // xenstored gone or restarting: an incomplete scan must not be read
        // as "every guest went away". Served guests keep being served; the
        // watches fire again once xenstore is back (libxenstore re-registers
        // them), and the next scan decides.
        spdlog::error("xenstore scan failed, served guests are kept until it answers again: {}",
                      scan.failed->describe());
        return;
    }
    for (auto& [path, err] : scan.errors) {
        if (!reported_.insert(path).second) continue;
        report_scan_error(path, err);
    }
    // Guests that went away: backend state Closing (xl destroy), backend
    // directory removed, or the domain dying/destroyed.
    std::map<xen::DomId, bool> closing;
    for (const auto& d : scan.devices)
        if (d.state >= int(xen::XenbusState::Closing) || !d.online) closing[d.frontend] = true;
    std::vector<xen::DomId> gone;
    for (const auto& [dom, s] : sessions_) {
        bool present = false;
        for (const auto& d : scan.devices) present |= d.frontend == dom;
        bool has_pci = false;
        for (const auto& p : s->plan().devices) has_pci |= p.transport == Transport::Pci;
        if (closing.count(dom) || !guest_alive(dom) || (!present && !has_pci)) gone.push_back(dom);
    }
    for (auto dom : gone) stop_guest(dom, "guest went away (xenstore state Closing, or domain destroyed)");
    for (auto dom : std::vector<xen::DomId>(refused_guests_.begin(), refused_guests_.end()))
        if (!guest_alive(dom)) refused_guests_.erase(dom);
    for (auto dom : std::vector<xen::DomId>(given_up_.begin(), given_up_.end()))
        if (!guest_alive(dom)) given_up_.erase(dom);
    std::erase_if(settling_, [&](const auto& kv) { return !guest_alive(kv.first); });
    std::erase_if(waiting_target_, [&](xen::DomId dom) { return !guest_alive(dom); });

    auto want = wanted(scan);
    for (auto& [dom, devs] : want) start_guest(dom, devs, false, nullptr);

    if (opts_.only_guest && !sessions_.count(*opts_.only_guest) && !guest_alive(*opts_.only_guest)) {
        spdlog::info("dom{}: guest gone, worker exits", *opts_.only_guest);
        if (opts_.on_only_guest_gone) opts_.on_only_guest_gone();
    }
}

void GuestManager::refuse_late_devices(xen::DomId domid, const std::vector<AnnouncedDevice>& devs) {
    const auto& known = started_with_[domid];
    for (const auto& d : devs) {
        if (known.count(d.backend_path) || !reported_.insert(d.backend_path).second) continue;
        ++stats_.late_devices_refused;
        const std::string why =
            "xen-virtiod: dom" + std::to_string(domid) + " " + d.backend_path +
            ": announced after the guest's backend started; a backend serves the devices present when it starts "
            "(once sandboxed it can no longer open images, ptys or taps, R5): restart the guest, or its "
            "xen-virtiod@" + std::to_string(domid) + " instance, to serve it";
        spdlog::error("{}", why);
        (void)write_device_error(*xs_, self_, d, why);
    }
}

void GuestManager::error_all_devices(xen::DomId domid, const std::string& why) {
    ScanResult scan = scan_announced_devices(*xs_, self_, domid);
    for (const auto& d : scan.devices) (void)write_device_error(*xs_, self_, d, why);
}

void GuestManager::spawn_worker(xen::DomId domid) {
    // R5: one worker per guest, restricted to it (it calls restrict_all).
    Worker& w = workers_[domid];
    auto pid = opts_.spawner->spawn(domid);
    w.started = std::chrono::steady_clock::now();
    if (!pid) {
        spdlog::error("dom{}: cannot start a worker: {}", domid, pid.error().describe());
        w.id = -1;
        on_worker_exit(domid, WorkerExit{false, 127});
        return;
    }
    w.id = pid.value();
    ++stats_.workers_spawned;
    spdlog::info("dom{}: worker pid {} started", domid, w.id);
}

void GuestManager::record_ioreq_intent(xen::DomId domid, xen::DeviceModel& dm) {
    // The ids of the guest's servers that this domain emulates now
    // (space separated; empty: none), or "?" when they cannot be listed.
    std::string before = "?";
    if (auto ids = dm.ioreq_servers(domid)) {
        before.clear();
        for (auto id : ids.value()) {
            if (!before.empty()) before += ' ';
            before += std::to_string(id);
        }
    } else {
        spdlog::warn("dom{}: cannot list the guest's ioreq servers before creating ours: {} (if this worker dies "
                     "before it records its server, the server stays in Xen until the guest is destroyed)",
                     domid, ids.error().describe());
    }
    const std::string path = ioreq_intent_path(*xs_, self_, domid);
    if (auto r = xs_->write(path, before); !r)
        spdlog::warn("dom{}: cannot record the ioreq server intent at {}: {}", domid, path, r.error().describe());
}

void GuestManager::record_ioreq_server(xen::DomId domid, xen::IoServId id) {
    const std::string path = ioreq_servers_path(*xs_, self_, domid);
    std::string list;
    if (auto v = xs_->read(path)) list = v.value() + " ";
    list += std::to_string(id);
    if (auto r = xs_->write(path, list); !r) {
        spdlog::warn("dom{}: cannot record ioreq server {} for the supervisor at {}: {} (if this worker dies, the "
                     "server stays in Xen until the guest is destroyed)",
                     domid, id, path, r.error().describe());
        return;  // the intent stays: the supervisor still finds the server from it
    }
    (void)xs_->rm(ioreq_intent_path(*xs_, self_, domid));
}

namespace {

/// Parses a space-separated list of ioreq server ids (at most 8 are read:
/// MAX_NR_IOREQ_SERVERS); tokens that are not ids are reported in `bad`.
std::vector<xen::IoServId> parse_server_ids(const std::string& text, std::vector<std::string>* bad) {
    std::vector<xen::IoServId> out;
    std::istringstream in(text);
    std::string tok;
    for (unsigned n = 0; n < 8 && in >> tok; ++n) {
        if (auto id = parse_xs_uint(tok, 0xffff))
            out.push_back(xen::IoServId(*id));
        else if (bad)
            bad->push_back(tok);
    }
    return out;
}

}  // namespace

// What a dead worker leaves behind. Its process's descriptors are closed
// by the kernel, and with them:
//   grant maps      /dev/xen/gntdev release unmaps every grant of the file
//   event channels  /dev/xen/evtchn release unbinds every port of the file
//   ioreq pages     the acquire_resource mapping goes with the address space
//   xenstore        the connection closes: its watches and transactions go
// Xen itself keeps, with no link to a process:
//   ioreq servers   live until XEN_DMOP_destroy_ioreq_server or the domain's
//                   end, their ranges still claimed: a restarted worker's
//                   map_io_range would fail with EEXIST, and the guest's
//                   accesses would wait on a server nobody serves
//   SPI levels      an interrupt line raised with XEN_DMOP_set_irq_level and
//                   not lowered yet stays asserted in the vGIC (mmio SPIs,
//                   and the INTx SPIs of our PCI host)
// The worker records, before it creates a server, the guest's servers that
// exist (record_ioreq_intent), then the new server's id as soon as it
// exists and before its ranges are claimed (record_ioreq_server). A worker
// dead in between left its intent: the guest's servers this domain
// emulates that the intent does not list are its. Destroying them from
// here gives the worker's guest nothing it could not do itself: a worker's
// device-model handle already acts on every server of its guest. What is
// left: another device model in this domain creating a server for the same
// guest in that window would lose it too (one backend per guest is the
// supported shape), and a worker that could not list the servers ("?")
// leaves its unrecorded server, which claims no range (ranges are claimed
// after the record), until the guest is destroyed.
void GuestManager::release_worker_leftovers(xen::DomId domid, int pid, const WorkerExit& how) {
    const std::string path = ioreq_servers_path(*xs_, self_, domid);
    const std::string intent_path = ioreq_intent_path(*xs_, self_, domid);
    auto recorded = xs_->read(path);
    auto intent = xs_->read(intent_path);
    const bool orderly = !how.signaled && how.status == 0;  // its orderly stop destroyed them
    if (!orderly && guest_alive(domid)) {
        if (!dm_) {
            if (auto dm = hv_.open_device_model())
                dm_ = std::move(dm).value();
            else
                spdlog::error("dom{}: cannot open the device model to release what worker pid {} left: {}", domid,
                              pid, dm.error().describe());
        }
        std::set<xen::IoServId> gone;
        auto destroy = [&](xen::IoServId id, const char* how_found) {
            if (!gone.insert(id).second) return;
            if (auto r = dm_->destroy_ioreq_server(domid, id); r) {
                ++stats_.stale_ioreq_servers_destroyed;
                spdlog::info("dom{}: destroyed ioreq server {} left by worker pid {} ({}; {})", domid, id, pid,
                             describe_exit(how), how_found);
            } else if (r.error().code != std::errc::no_such_file_or_directory) {
                spdlog::error("dom{}: cannot destroy ioreq server {} left by worker pid {}: {}", domid, id, pid,
                              r.error().describe());
            }
        };
        if (dm_ && recorded) {
            std::vector<std::string> bad;
            for (auto id : parse_server_ids(recorded.value(), &bad)) destroy(id, "recorded");
            for (const auto& tok : bad)
                spdlog::warn("dom{}: {}: '{}' is not an ioreq server id; ignored", domid, path, tok);
        }
        if (dm_ && intent) {
            // The worker died after announcing that it creates a server and
            // before it recorded the server's id: every server of the guest
            // that this domain emulates now, and did not before the intent,
            // is the dead worker's (one worker per guest; R5).
            if (intent.value() == "?") {
                spdlog::warn("dom{}: worker pid {} died while creating its ioreq server and could not list the "
                             "servers before; a server it created stays until the guest is destroyed",
                             domid, pid);
            } else if (auto now = dm_->ioreq_servers(domid); !now) {
                spdlog::warn("dom{}: cannot list the guest's ioreq servers after worker pid {} died: {}", domid, pid,
                             now.error().describe());
            } else {
                const auto before = parse_server_ids(intent.value(), nullptr);
                for (auto id : now.value())
                    if (std::find(before.begin(), before.end(), id) == before.end())
                        destroy(id, "created before it was recorded");
            }
        }
        if (dm_) {
            // Interrupt lines: a level the dead worker raised stays asserted
            // in the vGIC. The mmio SPIs libxl announced, and the four INTx
            // SPIs of our PCI host (pci_host.h) when the guest has
            // virtio-pci devices in the configuration.
            ScanResult scan = scan_announced_devices(*xs_, self_, domid);
            std::set<std::uint32_t> lines;
            for (const auto& d : scan.devices)
                if (d.frontend == domid && d.transport == "mmio" && d.irq != 0) lines.insert(d.irq);
            std::vector<AnnouncedDevice> mine;
            for (const auto& d : scan.devices)
                if (d.frontend == domid) mine.push_back(d);
            const PlanResult pr = plan_guest(config_, domid, guest_name(domid), mine, self_);
            for (const auto& p : pr.plan.devices)
                if (p.transport == Transport::Pci) {
                    for (std::uint32_t pin = 0; pin < 4; ++pin) lines.insert(pr.plan.pci.intx_spi_base + pin);
                    break;
                }
            for (auto irq : lines)
                if (dm_->set_irq_level(domid, irq, false)) ++stats_.stale_irq_lines_lowered;
        }
    }
    if (recorded) (void)xs_->rm(path);
    if (intent) (void)xs_->rm(intent_path);
}

void GuestManager::on_worker_exit(xen::DomId domid, const WorkerExit& how) {
    auto it = workers_.find(domid);
    if (it == workers_.end()) return;
    Worker& w = it->second;
    const int pid = w.id;
    release_worker_leftovers(domid, pid, how);
    const auto now = std::chrono::steady_clock::now();
    const auto ran = now - w.started;
    w.id = -1;
    // The guest is no longer served: say so where the toolstack looks.
    auto give_up = [&](const std::string& why) {
        spdlog::error("{}", why);
        error_all_devices(domid, why);
        given_up_.insert(domid);
        workers_.erase(it);
    };
    if (!how.signaled && how.status == 0) {
        // Orderly: the guest went away, or the worker was told to stop.
        ++stats_.workers_exited;
        spdlog::info("dom{}: worker pid {} exited", domid, pid);
        workers_.erase(it);
        return;
    }
    if (!how.signaled && (how.status == 1 || how.status == 2 || how.status == 3 || how.status == 127)) {
        // Configuration, policy or privilege (or exec) failure: a restart
        // would fail the same way. The worker logged the reason.
        ++stats_.workers_failed;
        const std::string why = "xen-virtiod: the worker for dom" + std::to_string(domid) + " failed (" +
                                describe_exit(how) + ": " +
                                (how.status == 1   ? "configuration error"
                                 : how.status == 2 ? "refused by the safety policy"
                                 : how.status == 3 ? "Xen unavailable or a privilege missing"
                                                   : "cannot execute " + opts_.self_exe) +
                                "); not restarted, see its log";
        return give_up(why);
    }
    ++stats_.workers_crashed;
    if (stopping_ || !guest_alive(domid)) {
        spdlog::info("dom{}: worker pid {} ended ({}); the guest is gone", domid, pid, describe_exit(how));
        workers_.erase(it);
        return;
    }
    if (ran >= opts_.healthy_after) w.failures = 0;
    if (++w.failures > opts_.restart_limit) {
        ++stats_.guests_given_up;
        return give_up("xen-virtiod: the worker for dom" + std::to_string(domid) + " crashed " +
                       std::to_string(w.failures) + " times in a row (last: " + describe_exit(how) +
                       "); the guest is no longer served");
    }
    w.backoff = w.failures == 1 ? opts_.restart_backoff : std::min(w.backoff * 2, opts_.restart_backoff_max);
    w.restart_at = now + w.backoff;
    spdlog::error("dom{}: worker pid {} crashed ({}); restart {} of {} in {} ms", domid, pid, describe_exit(how),
                  w.failures, opts_.restart_limit, w.backoff.count());
}

void GuestManager::reap_workers() {
    const auto now = std::chrono::steady_clock::now();
    std::vector<xen::DomId> doms;
    for (const auto& [dom, w] : workers_) doms.push_back(dom);
    for (auto dom : doms) {
        auto it = workers_.find(dom);
        if (it == workers_.end()) continue;
        if (it->second.id >= 0) {
            if (auto how = opts_.spawner->poll(it->second.id)) on_worker_exit(dom, *how);
        } else if (!stopping_ && now >= it->second.restart_at) {
            if (!guest_alive(dom)) {
                workers_.erase(it);
                continue;
            }
            ++stats_.workers_restarted;
            spawn_worker(dom);
        }
    }
    if (stopping_) return;
    reap_timer_.expires_after(opts_.reap_period);
    auto self = shared_from_this();
    reap_timer_.async_wait(boost::asio::bind_executor(strand_, [self](const boost::system::error_code& ec) {
        if (!ec) self->reap_workers();
    }));
}

void GuestManager::stop(std::function<void()> done) {
    auto self = shared_from_this();
    boost::asio::post(strand_, [self, done = std::move(done)]() mutable {
        self->stopping_ = true;
        self->reap_timer_.cancel();
        self->settle_timer_.cancel();
        if (self->watch_sd_) {
            self->watch_sd_->cancel();
            (void)self->watch_sd_->release();
            self->watch_sd_.reset();
        }
        // SIGTERM every worker, then wait for each (bounded: SIGKILL after).
        for (auto& [dom, w] : self->workers_)
            if (w.id >= 0) self->opts_.spawner->terminate(w.id);
        for (auto& [dom, w] : self->workers_) {
            if (w.id < 0) continue;
            auto how = self->opts_.spawner->wait(w.id, std::chrono::seconds(10));
            spdlog::info("dom{}: worker pid {} stopped ({})", dom, w.id, describe_exit(how));
            self->release_worker_leftovers(dom, w.id, how);
            ++(how.signaled || how.status != 0 ? self->stats_.workers_crashed : self->stats_.workers_exited);
        }
        self->workers_.clear();
        self->stop_done_ = done ? std::move(done) : [] {};
        auto sessions = std::move(self->sessions_);
        self->sessions_.clear();
        for (auto& [id, s] : sessions) {
            const xen::DomId dom = id;  // a structured binding cannot be captured before clang 16
            ++self->stats_.sessions_stopped;
            self->closing_[dom] = s;
            s->stop(self->on_closed(dom));
        }
        self->maybe_stopped();
    });
}

void GuestManager::reload(Config config) {
    auto self = shared_from_this();
    boost::asio::post(strand_, [self, c = std::move(config)]() mutable {
        self->config_ = std::move(c);
        self->refused_guests_.clear();
        self->rescan();
    });
}

std::vector<std::shared_ptr<GuestSession>> GuestManager::sessions() const {
    std::vector<std::shared_ptr<GuestSession>> out;
    for (const auto& [d, s] : sessions_) out.push_back(s);
    return out;
}

}  // namespace xv::daemon
