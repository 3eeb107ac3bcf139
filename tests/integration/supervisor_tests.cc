// SPDX-License-Identifier: GPL-2.0-only
// The Hardware Domain service's supervision of per-guest workers, on
// xen/sim: the supervisor is the real GuestManager in worker mode; its
// WorkerSpawner either runs each worker in this process (a `--domid N`
// GuestManager on its own io_context and thread, against the same
// simulator: the worker code path, without exec) or only scripts exits
// (restart, backoff and accounting). The fork/exec spawner is tested on
// small scripts.
//
// A worker "crash" (FakeSpawner::kill) stops its io_context and its
// thread, destroys every handler still queued without running it, then
// destroys the worker's objects without the orderly stop: every Xen handle
// it held is closed by its destructor, as the kernel closes a dead
// process's descriptors. Nothing of the orderly stop runs (no device reset,
// no backend state 6).
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>

#include "blk_roundtrip.h"
#include "sim_host.h"

namespace xv::daemon {
namespace {

using namespace std::chrono_literals;
using namespace testing;
using Clock = std::chrono::steady_clock;

/// A worker run in this process: what `xen-virtiod serve --domid N` does,
/// without exec and the sandbox.
struct InProcessWorker {
    /// An io_context whose handlers can be destroyed before the objects
    /// they point into (execution_context's shutdown phase).
    struct Io : boost::asio::io_context {
        using boost::asio::io_context::shutdown;
    };
    Io io;  // destroyed last
    std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guard;
    std::shared_ptr<GuestManager> manager;
    std::thread thread;

    ~InProcessWorker() { halt(); }
    /// The end of the process: the loop stops; handlers still queued or
    /// waiting hold descriptor chains (grant mappings through the session's
    /// grant handle), so they are destroyed while the session and its
    /// handles still exist; then the session closes its handles.
    void halt() {
        guard.reset();
        io.stop();
        if (thread.joinable()) thread.join();
        io.shutdown();
        manager.reset();
    }
};

/// The spawner under the supervisor in these tests.
class FakeSpawner : public WorkerSpawner {
public:
    /// `run`: start an in-process worker per spawn; otherwise only record.
    FakeSpawner(Host& h, bool run) : h_(h), run_(run) {}
    ~FakeSpawner() override {
        std::map<int, std::unique_ptr<InProcessWorker>> w;
        {
            std::lock_guard lk(mu_);
            w.swap(workers_);
        }
        w.clear();  // joins outside the lock: a worker thread may be in finish()
    }

    Result<int> spawn(xen::DomId domid) override {
        std::unique_lock lk(mu_);
        const int id = next_id_++;
        Entry& e = entries_[id];
        e.domid = domid;
        spawns_.push_back({domid, Clock::now()});
        if (scripted_exit_) {
            e.exit = *scripted_exit_;
            cv_.notify_all();
            return id;
        }
        if (!run_) return id;
        auto w = std::make_unique<InProcessWorker>();
        w->guard.emplace(w->io.get_executor());
        ManagerOptions mo;
        mo.only_guest = domid;
        // As `serve --domid N --worker` sets it (serve.cc).
        mo.report_ioreq_servers = true;
        mo.on_only_guest_gone = [this, id] { terminate(id); };  // the worker raises SIGTERM
        w->manager = GuestManager::create(h_.config, *h_.sim, w->io.get_executor(), mo);
        lk.unlock();
        auto v = w->manager->start();
        lk.lock();
        if (!v || v.value().refuses_start()) {
            w->manager.reset();
            e.exit = WorkerExit{false, v ? 2 : 3};
            cv_.notify_all();
            return id;
        }
        auto* io = &w->io;
        w->thread = std::thread([io] { io->run(); });
        workers_[id] = std::move(w);
        return id;
    }

    std::optional<WorkerExit> poll(int id) override {
        std::lock_guard lk(mu_);
        auto it = entries_.find(id);
        if (it == entries_.end() || !it->second.exit) return std::nullopt;
        return it->second.exit;
    }

    void terminate(int id) override {
        std::shared_ptr<GuestManager> m;
        {
            std::lock_guard lk(mu_);
            auto it = workers_.find(id);
            if (it == workers_.end()) return;
            m = it->second->manager;
        }
        // What SIGTERM does in the worker: the orderly stop, then exit 0.
        if (m) m->stop([this, id] { finish(id, WorkerExit{false, 0}); });
    }

    WorkerExit wait(int id, std::chrono::milliseconds limit) override {
        std::unique_lock lk(mu_);
        if (!cv_.wait_for(lk, limit, [&] { return entries_[id].exit.has_value(); }))
            entries_[id].exit = WorkerExit{true, SIGKILL};
        return *entries_[id].exit;
    }

    /// Takes the running worker of `domid` out of the table (null if none).
    std::pair<int, std::unique_ptr<InProcessWorker>> take_worker(xen::DomId domid) {
        std::lock_guard lk(mu_);
        int id = -1;
        for (auto& [i, e] : entries_)
            if (e.domid == domid && !e.exit && workers_.count(i)) id = i;
        if (id < 0) return {-1, nullptr};
        auto w = std::move(workers_[id]);
        workers_.erase(id);
        return {id, std::move(w)};
    }

    /// Stops the worker of `domid` abruptly: it serves nothing more and
    /// answers no xenstore state, and reports a crash. The simulator
    /// cannot close a dead process's handles as the kernel does; the dead
    /// worker's handles are released by running its teardown on its own
    /// executor after it stopped serving.
    bool crash(xen::DomId domid, int sig = SIGSEGV) {
        auto [id, w] = take_worker(domid);
        if (!w) return false;
        w->guard.reset();
        w->io.stop();
        if (w->thread.joinable()) w->thread.join();
        w->io.restart();
        std::atomic<bool> released{false};
        w->manager->stop([&released] { released = true; });
        for (int i = 0; i < 100 && !released; ++i) w->io.run_for(std::chrono::milliseconds(50));
        w.reset();
        std::lock_guard lk(mu_);
        entries_[id].exit = WorkerExit{true, sig};
        cv_.notify_all();
        return released;
    }

    /// Kills the worker of `domid` (a crash by `sig`): no orderly stop, its
    /// handles closed as the kernel closes a dead process's (halt()), and
    /// what Xen keeps of a dead process (its ioreq servers) kept
    /// (xen::sim::ProcessExit).
    bool kill(xen::DomId domid, int sig = SIGSEGV) {
        auto [id, w] = take_worker(domid);
        if (!w) return false;
        {
            xen::sim::ProcessExit dead;
            w->halt();
            w.reset();
        }
        std::lock_guard lk(mu_);
        entries_[id].exit = WorkerExit{true, sig};
        cv_.notify_all();
        return true;
    }

    /// Reports worker `id` (taken with take_worker) as ended with `e`.
    void report_exit(int id, WorkerExit e) {
        std::lock_guard lk(mu_);
        entries_[id].exit = e;
        cv_.notify_all();
    }

    /// Every later spawn ends at once with `e` (no worker runs).
    void script_exit(std::optional<WorkerExit> e) {
        std::lock_guard lk(mu_);
        scripted_exit_ = e;
    }

    std::size_t spawns() const {
        std::lock_guard lk(mu_);
        return spawns_.size();
    }
    std::vector<Clock::time_point> spawn_times() const {
        std::lock_guard lk(mu_);
        std::vector<Clock::time_point> out;
        for (auto& s : spawns_) out.push_back(s.at);
        return out;
    }
    std::size_t running() const {
        std::lock_guard lk(mu_);
        std::size_t n = 0;
        for (auto& [i, e] : entries_) n += !e.exit && workers_.count(i);
        return n;
    }

private:
    struct Entry {
        xen::DomId domid = 0;
        std::optional<WorkerExit> exit;
    };
    struct Spawn {
        xen::DomId domid;
        Clock::time_point at;
    };

    void finish(int id, WorkerExit e) {
        // Called on the worker's own thread: the worker's io_context stops
        // (the process exits) without joining itself.
        std::lock_guard lk(mu_);
        auto it = workers_.find(id);
        if (it != workers_.end()) {
            it->second->guard.reset();
            it->second->io.stop();
        }
        if (!entries_[id].exit) entries_[id].exit = e;
        cv_.notify_all();
    }

    Host& h_;
    bool run_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    int next_id_ = 100;
    std::map<int, Entry> entries_;
    std::map<int, std::unique_ptr<InProcessWorker>> workers_;
    std::vector<Spawn> spawns_;
    std::optional<WorkerExit> scripted_exit_;
};

std::string config_with_blk(const TempImage& a, const TempImage& b) {
    return domains_toml({{"g1", "unsafe"}, {"g2", "unsafe"}}) + blk_toml("g1", a.path.string()) +
           blk_toml("g2", b.path.string());
}

/// A supervisor (worker mode) over a FakeSpawner.
struct Supervised {
    Supervised(std::string config, bool run_workers) : h(std::move(config)), spawner(std::make_shared<FakeSpawner>(h, run_workers)) {}
    ~Supervised() {
        h.shutdown();
    }
    Result<Verdicts> start() {
        ManagerOptions mo;
        mo.spawn_workers = true;
        mo.spawner = spawner;
        mo.reap_period = reap_period;
        mo.restart_backoff = backoff;
        mo.restart_backoff_max = backoff_max;
        mo.restart_limit = limit;
        mo.healthy_after = healthy_after;
        mo.settle_quiet = settle_quiet;
        mo.settle_max = settle_max;
        return h.start(mo);
    }
    ManagerStats stats() { return h.on_io([&] { return h.manager->stats(); }); }
    /// Creates guest `name` with one blk device announced as libxl does.
    Result<xen::DomId> guest_with_blk(const char* name) {
        auto d = create_guest(h, name);
        if (!d) return d;
        if (auto r = h.sim->add_virtio_device(spec(*d, 0, "virtio,device2")); !r) return r.error();
        return d;
    }

    bool backend_state_is(xen::DomId dom, const char* s) {
        auto v = h.sim->toolstack_store().read(be_path(dom, 0) + "/state");
        return v && v.value() == s;
    }

    std::chrono::milliseconds backoff{50}, backoff_max{400}, healthy_after{60s};
    std::chrono::milliseconds settle_quiet{250}, settle_max{3000};
    std::chrono::milliseconds reap_period{10};
    unsigned limit = 3;
    Host h;
    std::shared_ptr<FakeSpawner> spawner;
};

TEST(Supervisor, OneWorkerPerGuestServesItAndExitsWhenTheGuestIsDestroyed) {
    TempImage a(4 << 20), b(4 << 20);
    Supervised s(config_with_blk(a, b), true);
    auto d1 = s.guest_with_blk("g1");
    auto d2 = s.guest_with_blk("g2");
    ASSERT_TRUE(d1 && d2);
    auto v = s.start();
    ASSERT_TRUE(v.has_value()) << v.error().describe();
    EXPECT_EQ(s.spawner->spawns(), 2u);
    EXPECT_TRUE(s.h.sessions().empty()) << "the supervisor itself serves nothing";
    ASSERT_TRUE(s.h.eventually([&] { return s.backend_state_is(*d1, "2") && s.backend_state_is(*d2, "2"); }));
    blk_roundtrip(*s.h.sim->guest(*d1), kBase, 33, 8, std::vector<std::byte>(4096, std::byte{0x31}));
    blk_roundtrip(*s.h.sim->guest(*d2), kBase, 33, 8, std::vector<std::byte>(4096, std::byte{0x32}));

    ASSERT_TRUE(s.h.sim->destroy_domain(*d1).has_value());
    EXPECT_TRUE(s.h.eventually([&] { return s.stats().workers_exited == 1; }));
    EXPECT_EQ(s.spawner->running(), 1u);
    auto st = s.stats();
    EXPECT_EQ(st.workers_crashed, 0u);
    EXPECT_EQ(st.workers_restarted, 0u) << "a worker whose guest went away is not restarted";
    EXPECT_TRUE(s.h.sim->zombies().empty());
    // g2 is untouched.
    blk_roundtrip(*s.h.sim->guest(*d2), kBase, 33, 16, std::vector<std::byte>(4096, std::byte{0x33}));
    ASSERT_TRUE(s.h.sim->destroy_domain(*d2).has_value());
    EXPECT_TRUE(s.h.eventually([&] { return s.stats().workers_exited == 2; }));
    EXPECT_TRUE(s.h.eventually([&] { return s.h.released(); })) << s.h.resources_text();
    EXPECT_TRUE(s.h.sim->zombies().empty());
}

TEST(Supervisor, SigtermStopsEveryWorkerInOrderAndReleasesEverything) {
    TempImage a(4 << 20), b(4 << 20);
    Supervised s(config_with_blk(a, b), true);
    auto d1 = s.guest_with_blk("g1");
    auto d2 = s.guest_with_blk("g2");
    ASSERT_TRUE(d1 && d2);
    ASSERT_TRUE(s.start().has_value());
    ASSERT_TRUE(s.h.eventually([&] { return s.backend_state_is(*d1, "2") && s.backend_state_is(*d2, "2"); }));
    blk_roundtrip(*s.h.sim->guest(*d1), kBase, 33, 8, std::vector<std::byte>(4096, std::byte{0x51}));
    auto before = s.stats();
    s.h.shutdown();  // what SIGTERM does
    EXPECT_EQ(s.spawner->running(), 0u);
    EXPECT_TRUE(s.h.released()) << s.h.resources_text();
    // The orderly stop answered Closed (6) for each device.
    EXPECT_TRUE(s.backend_state_is(*d1, "6"));
    EXPECT_TRUE(s.backend_state_is(*d2, "6"));
    EXPECT_EQ(before.workers_crashed, 0u);
}

TEST(Supervisor, RepeatedCrashesBackOffExponentiallyThenGiveUpWithAnErrorNode) {
    TempImage a(4 << 20), b(4 << 20);
    Supervised s(config_with_blk(a, b), false);
    s.backoff = 40ms;
    s.backoff_max = 100ms;
    s.limit = 3;
    s.spawner->script_exit(WorkerExit{true, SIGSEGV});
    auto d1 = s.guest_with_blk("g1");
    ASSERT_TRUE(d1);
    ASSERT_TRUE(s.start().has_value());
    ASSERT_TRUE(s.h.eventually([&] { return s.stats().guests_given_up == 1; }, 10s));
    auto st = s.stats();
    EXPECT_EQ(st.workers_crashed, 4u) << "the first run and three restarts";
    EXPECT_EQ(st.workers_restarted, 3u);
    auto t = s.spawner->spawn_times();
    ASSERT_EQ(t.size(), 4u);
    // Backoff 40, 80, then capped at 100 ms (lower bounds only: a loaded
    // machine may be late, never early).
    EXPECT_GE(t[1] - t[0], 40ms);
    EXPECT_GE(t[2] - t[1], 80ms);
    EXPECT_GE(t[3] - t[2], 100ms);
    auto err = s.h.sim->toolstack_store().read(be_path(*d1, 0) + "/error");
    ASSERT_TRUE(err.has_value()) << "a guest given up has an error node";
    EXPECT_NE(err.value().find("crashed 4 times"), std::string::npos) << err.value();
    // Nothing more is spawned for it.
    std::this_thread::sleep_for(300ms);
    EXPECT_EQ(s.spawner->spawns(), 4u);
}

TEST(Supervisor, WorkerRefusedByPolicyOrConfigurationIsNotRestarted) {
    TempImage a(4 << 20), b(4 << 20);
    Supervised s(config_with_blk(a, b), false);
    s.spawner->script_exit(WorkerExit{false, 2});
    auto d1 = s.guest_with_blk("g1");
    ASSERT_TRUE(d1);
    ASSERT_TRUE(s.start().has_value());
    ASSERT_TRUE(s.h.eventually([&] { return s.stats().workers_failed == 1; }));
    std::this_thread::sleep_for(200ms);
    EXPECT_EQ(s.spawner->spawns(), 1u);
    EXPECT_EQ(s.stats().workers_restarted, 0u);
    auto err = s.h.sim->toolstack_store().read(be_path(*d1, 0) + "/error");
    ASSERT_TRUE(err.has_value());
    EXPECT_NE(err.value().find("safety policy"), std::string::npos) << err.value();
}

TEST(Supervisor, CrashedWorkerOfADestroyedGuestIsNotRestarted) {
    TempImage a(4 << 20), b(4 << 20);
    Supervised s(config_with_blk(a, b), true);
    s.backoff = 500ms;
    auto d1 = s.guest_with_blk("g1");
    ASSERT_TRUE(d1);
    ASSERT_TRUE(s.start().has_value());
    ASSERT_TRUE(s.h.eventually([&] { return s.backend_state_is(*d1, "2"); }));
    ASSERT_TRUE(s.spawner->crash(*d1));
    ASSERT_TRUE(s.h.sim->destroy_domain(*d1).has_value());
    std::this_thread::sleep_for(900ms);
    EXPECT_EQ(s.spawner->spawns(), 1u);
    EXPECT_TRUE(s.h.sim->zombies().empty());
    EXPECT_TRUE(s.h.released()) << s.h.resources_text();
}

// Issue 5: "worker crash: no leaked grant maps, event channels or ioreq
// servers (tested with the sim's counters)". The worker dies while the
// guest has requests in flight (chains mapped); nothing of the orderly
// stop runs. The sim then holds no grant mapping, bound port or ioreq
// server of it, and the restarted worker serves the guest again.
TEST(Supervisor, WorkerCrashLeaksNoGrantMapPortOrIoreqServerAndTheRestartServesAgain) {
    TempImage a(4 << 20), b(4 << 20);
    Supervised s(config_with_blk(a, b), true);
    s.backoff = 600ms;  // long enough to look at the counters between crash and restart
    auto d1 = s.guest_with_blk("g1");
    ASSERT_TRUE(d1);
    ASSERT_TRUE(s.start().has_value());
    ASSERT_TRUE(s.h.eventually([&] { return s.backend_state_is(*d1, "2"); }));
    auto g = s.h.sim->guest(*d1);
    blk_roundtrip(*g, kBase, 33, 8, std::vector<std::byte>(4096, std::byte{0x71}));

    // Requests in flight at the crash: 8 reads made available and kicked,
    // not waited for.
    auto t = guest::make_mmio_guest(*g, kBase, false, 0);
    ASSERT_TRUE(t.has_value());
    guest::DriverOptions o;
    o.size = 32;
    auto q = guest::VirtqueueDriver::create(*g, o);
    ASSERT_TRUE(q.has_value());
    namespace feat = transport::feature;
    ASSERT_TRUE(t.value()->bring_up(feat::bit(feat::kVersion1) | feat::bit(feat::kAccessPlatform), {q.value().get()}));
    for (unsigned i = 0; i < 8; ++i) {
        devices::blk::OutHdr r{devices::blk::req::kIn, 0, 8u * i};
        ASSERT_TRUE(q.value()->chain().readable(std::as_bytes(std::span(&r, 1))).writable(65536).writable(1).submit());
    }
    ASSERT_TRUE(t.value()->notify(0).has_value());
    EXPECT_GT(s.h.sim->resources().ioreq_servers, 0u);

    // The worker recorded its ioreq server for the supervisor.
    const std::string recorded = ioreq_servers_path(s.h.sim->toolstack_store(), 0, *d1);
    ASSERT_TRUE(s.h.sim->toolstack_store().read(recorded).has_value());

    ASSERT_TRUE(s.spawner->kill(*d1, SIGSEGV));
    // The kernel's share, at once: no grant mapping or bound port is left.
    EXPECT_EQ(s.h.sim->resources().bound_ports, 0u);
    EXPECT_EQ(s.h.sim->resources().mapped_grant_pages, 0u);
    EXPECT_EQ(s.h.sim->stats().foreign_ram_maps, 0u);
    // Xen's share: the supervisor destroys the server the dead worker left,
    // before the restart (the backoff is 600 ms).
    ASSERT_TRUE(s.h.eventually([&] { return s.stats().workers_crashed == 1; }));
    EXPECT_EQ(s.stats().workers_restarted, 0u);
    EXPECT_EQ(s.stats().stale_ioreq_servers_destroyed, 1u);
    EXPECT_TRUE(s.h.released()) << "after the crash: " << s.h.resources_text();
    EXPECT_EQ(s.h.sim->resources().ioreq_servers, 0u);
    EXPECT_EQ(s.h.sim->resources().stale_ioreq_servers, 0u);
    EXPECT_FALSE(s.h.sim->toolstack_store().read(recorded).has_value()) << "the record is removed with the server";

    // The supervisor restarts it and the guest is served again.
    ASSERT_TRUE(s.h.eventually([&] { return s.stats().workers_restarted == 1 && s.spawner->running() == 1; }));
    ASSERT_TRUE(s.h.eventually([&] { return s.h.sim->resources().ioreq_servers > 0; }));
    t.value().reset();
    q.value().reset();
    blk_roundtrip(*g, kBase, 33, 16, std::vector<std::byte>(4096, std::byte{0x72}));
    EXPECT_EQ(s.h.sim->resources().ioreq_servers, 1u) << "only the new worker's server";
    EXPECT_EQ(s.h.sim->resources().stale_ioreq_servers, 0u);
    g.reset();
    s.h.shutdown();
    EXPECT_TRUE(s.h.released()) << s.h.resources_text();
}

// The same crash, the guest destroyed before the supervisor looks: Xen took
// the stale server with the domain; the supervisor destroys nothing, only
// removes the worker's record.
TEST(Supervisor, CrashedWorkersServerOfADestroyedGuestGoesWithTheDomain) {
    TempImage a(4 << 20), b(4 << 20);
    Supervised s(config_with_blk(a, b), true);
    s.backoff = 600ms;
    s.reap_period = 1s;  // the guest is destroyed between the crash and the supervisor's look
    auto d1 = s.guest_with_blk("g1");
    ASSERT_TRUE(d1);
    ASSERT_TRUE(s.start().has_value());
    ASSERT_TRUE(s.h.eventually([&] { return s.backend_state_is(*d1, "2"); }));
    const std::string recorded = ioreq_servers_path(s.h.sim->toolstack_store(), 0, *d1);
    ASSERT_TRUE(s.h.sim->toolstack_store().read(recorded).has_value());
    ASSERT_TRUE(s.spawner->kill(*d1, SIGSEGV));
    EXPECT_EQ(s.h.sim->resources().stale_ioreq_servers, 1u);
    ASSERT_TRUE(s.h.sim->destroy_domain(*d1).has_value());
    ASSERT_TRUE(s.h.eventually([&] { return s.stats().workers_crashed == 1; }));
    EXPECT_EQ(s.stats().stale_ioreq_servers_destroyed, 0u);
    EXPECT_EQ(s.h.sim->resources().ioreq_servers, 0u);
    EXPECT_EQ(s.h.sim->resources().stale_ioreq_servers, 0u);
    EXPECT_FALSE(s.h.sim->toolstack_store().read(recorded).has_value());
    EXPECT_EQ(s.stats().workers_restarted, 0u);
}

/// The level SPI `irq` of `g` was last set to (false when never raised).
bool spi_level(const xen::sim::SimGuest& g, std::uint32_t irq) {
    bool level = false;
    for (const auto& e : g.irq_log())
        if (e.kind == xen::sim::IrqEvent::Spi && e.irq == irq) level = e.level;
    return level;
}

// A worker dies while its guest's virtio-pci INTx line is asserted (a
// completion whose interrupt the guest has not acknowledged; INTx is a
// level, virtio 1.2 §4.1.4.5): the line would stay asserted in the vGIC
// with nobody left to lower it. The supervisor lowers the INTx SPIs of our
// PCI host for a guest with virtio-pci devices, as it does the mmio SPIs.
TEST(Supervisor, CrashedWorkersPciIntxLineIsLowered) {
    TempImage a(4 << 20);
    Supervised s(domains_toml({{"g1", "unsafe"}}) + blk_toml("g1", a.path.string(), "transport = \"pci\"\n"), true);
    s.backoff = 600ms;  // the supervisor's clean-up is looked at before the restart
    auto d1 = create_guest(s.h, "g1");
    ASSERT_TRUE(d1);
    ASSERT_TRUE(s.start().has_value());
    auto g = s.h.sim->guest(*d1);
    const transport::PciHostConfig host;  // the defaults the daemon uses (INTx SPIs 44-47)
    std::unique_ptr<guest::GuestTransport> t;
    ASSERT_TRUE(s.h.eventually([&] {
        auto r = guest::make_pci_guest(*g, host, 0, true, 0);
        if (r) t = std::move(r).value();
        return t != nullptr;
    })) << "the worker does not serve the PCI host";
    guest::DriverOptions o;
    o.size = 16;
    auto q = guest::VirtqueueDriver::create(*g, o);
    ASSERT_TRUE(q.has_value());
    namespace feat = transport::feature;
    auto f = t->bring_up(feat::bit(feat::kVersion1) | feat::bit(feat::kAccessPlatform), {q.value().get()});
    ASSERT_TRUE(f.has_value()) << f.error().describe();
    // Slot 0, INTA: SPI intx_spi_base (pci_host.h swizzle).
    const std::uint32_t spi = host.intx_spi_base;
    const std::uint64_t seen = g->irq_count(spi);
    devices::blk::OutHdr r{devices::blk::req::kIn, 0, 0};
    ASSERT_TRUE(q.value()->chain().readable(std::as_bytes(std::span(&r, 1))).writable(4096).writable(1).submit());
    ASSERT_TRUE(t->notify(0).has_value());
    ASSERT_GT(g->wait_irq(spi, seen, 5000ms), seen) << "no INTx for the completion";
    ASSERT_TRUE(q.value()->next_used().has_value());
    ASSERT_TRUE(spi_level(*g, spi)) << "INTx is a level: asserted until the guest reads ISR";

    ASSERT_TRUE(s.spawner->kill(*d1, SIGSEGV));
    ASSERT_TRUE(s.h.eventually([&] { return s.stats().workers_crashed == 1; }));
    EXPECT_FALSE(spi_level(*g, spi)) << "the dead worker's INTx line is still asserted";
    EXPECT_GE(s.stats().stale_irq_lines_lowered, 1u);
    EXPECT_EQ(s.h.sim->resources().stale_ioreq_servers, 0u);
    t.reset();
    q.value().reset();
    g.reset();
}

// A worker dies after creating its guest's ioreq server and before it
// recorded the server's id: Xen keeps the server, nobody knows its id. The
// worker records its intent first (the ids of the guest's servers this
// domain emulates before it creates one); the supervisor destroys every
// server of the guest that is not in that list. Here the dead worker's
// last moments are played with the simulator's device model: the intent
// the worker writes, a server created, the process gone (ProcessExit).
TEST(Supervisor, ServerCreatedByAWorkerThatDiedBeforeRecordingItIsDestroyed) {
    TempImage a(4 << 20), b(4 << 20);
    Supervised s(config_with_blk(a, b), true);
    s.backoff = 600ms;
    auto d1 = s.guest_with_blk("g1");
    ASSERT_TRUE(d1);
    ASSERT_TRUE(s.start().has_value());
    ASSERT_TRUE(s.h.eventually([&] { return s.backend_state_is(*d1, "2"); }));
    auto& xs = s.h.sim->toolstack_store();
    const std::string recorded = ioreq_servers_path(xs, 0, *d1), intent = ioreq_intent_path(xs, 0, *d1);
    auto rec = xs.read(recorded);
    ASSERT_TRUE(rec.has_value());
    EXPECT_FALSE(xs.read(intent).has_value()) << "the intent is removed once the server is recorded";
    ASSERT_EQ(s.h.sim->resources().ioreq_servers, 1u);

    // The worker's handles go with it; its recorded server and the one it
    // was creating stay in Xen.
    auto [id, w] = s.spawner->take_worker(*d1);
    ASSERT_TRUE(w);
    {
        auto dm = s.h.sim->open_device_model();
        ASSERT_TRUE(dm.has_value());
        auto before = dm.value()->ioreq_servers(*d1);
        ASSERT_TRUE(before.has_value());
        ASSERT_EQ(before.value().size(), 1u);
        ASSERT_TRUE(xs.write(intent, std::to_string(before.value()[0])).has_value());
        auto srv = dm.value()->create_ioreq_server(*d1);
        ASSERT_TRUE(srv.has_value());
        xen::sim::ProcessExit dead;
        srv.value().reset();
        w->halt();
        w.reset();
    }
    EXPECT_EQ(s.h.sim->resources().stale_ioreq_servers, 2u);
    s.spawner->report_exit(id, WorkerExit{true, SIGKILL});
    ASSERT_TRUE(s.h.eventually([&] { return s.stats().workers_crashed == 1; }));
    EXPECT_EQ(s.stats().stale_ioreq_servers_destroyed, 2u) << "the recorded server and the unrecorded one";
    EXPECT_EQ(s.h.sim->resources().ioreq_servers, 0u);
    EXPECT_EQ(s.h.sim->resources().stale_ioreq_servers, 0u);
    EXPECT_FALSE(xs.read(intent).has_value());
    EXPECT_FALSE(xs.read(recorded).has_value());
    // The restarted worker serves the guest with one server.
    ASSERT_TRUE(s.h.eventually([&] { return s.stats().workers_restarted == 1 && s.spawner->running() == 1; }));
    ASSERT_TRUE(s.h.eventually([&] { return s.backend_state_is(*d1, "2"); }));
    auto g = s.h.sim->guest(*d1);
    blk_roundtrip(*g, kBase, 33, 0, std::vector<std::byte>(4096, std::byte{0x5a}));
    EXPECT_EQ(s.h.sim->resources().ioreq_servers, 1u);
}

TEST(Supervisor, DeviceAnnouncedAfterTheGuestStartedGetsAnErrorNodeAndTheOthersKeepWorking) {
    TempImage a(4 << 20), b(4 << 20);
    Host h(config_with_blk(a, b));
    auto d1 = create_guest(h, "g1");
    ASSERT_TRUE(d1);
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*d1, 0, "virtio,device2")).has_value());
    ASSERT_TRUE(h.start().has_value());
    ASSERT_EQ(h.sessions().size(), 1u);
    // A net device announced later: a sandboxed worker could not create its tap.
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*d1, 1, "virtio,device1")).has_value());
    ASSERT_TRUE(h.eventually([&] { return h.sim->toolstack_store().read(be_path(*d1, 1) + "/error").has_value(); }));
    auto err = h.sim->toolstack_store().read(be_path(*d1, 1) + "/error").value();
    EXPECT_NE(err.find("announced after"), std::string::npos) << err;
    EXPECT_NE(err.find("xen-virtiod@" + std::to_string(*d1)), std::string::npos) << err;
    EXPECT_EQ(h.on_io([&] { return h.manager->stats().late_devices_refused; }), 1u);
    blk_roundtrip(*h.sim->guest(*d1), kBase, 33, 8, std::vector<std::byte>(4096, std::byte{0x61}));
}

// libxl writes a guest's devices one by one; a worker serves the devices
// present when it starts. The supervisor waits until the guest's device
// list in xenstore stopped changing (settle_quiet) before spawning.
TEST(Supervisor, WorkerIsSpawnedOnceTheGuestsDeviceListSettledAndServesEveryDevice) {
    TempImage a(4 << 20), b(4 << 20), c(4 << 20);
    Supervised s(config_with_blk(a, b) + blk_toml("g1", c.path.string(), "index = 1\n"), true);
    s.settle_quiet = 1000ms;
    ASSERT_TRUE(s.start().has_value());
    auto d1 = create_guest(s.h, "g1");
    ASSERT_TRUE(d1);
    ASSERT_TRUE(s.h.sim->add_virtio_device(spec(*d1, 0, "virtio,device2")).has_value());
    std::this_thread::sleep_for(100ms);
    ASSERT_TRUE(s.h.sim->add_virtio_device(spec(*d1, 1, "virtio,device2")).has_value());
    const auto last_added = Clock::now();
    ASSERT_TRUE(s.h.eventually([&] { return s.spawner->spawns() == 1; }, 10s));
    EXPECT_GE(s.spawner->spawn_times()[0], last_added) << "spawned before the device list settled";
    EXPECT_GE(s.stats().settle_waits, 1u);
    ASSERT_TRUE(s.h.eventually([&] { return s.backend_state_is(*d1, "2"); }));
    auto xs1 = s.h.sim->toolstack_store().read(be_path(*d1, 1) + "/state");
    EXPECT_TRUE(xs1 && xs1.value() == "2") << "the second device is served too";
    EXPECT_FALSE(s.h.sim->toolstack_store().read(be_path(*d1, 1) + "/error").has_value());
    blk_roundtrip(*s.h.sim->guest(*d1), kBase + 0x200, 34, 8, std::vector<std::byte>(4096, std::byte{0x81}));
    EXPECT_EQ(s.spawner->spawns(), 1u);
}

// The wait is bounded: a guest whose device list keeps changing is served
// settle_max after it was first seen, with the devices present then.
TEST(Supervisor, SettleWaitIsBoundedForADeviceListThatKeepsChanging) {
    TempImage a(4 << 20), b(4 << 20);
    Supervised s(config_with_blk(a, b), true);
    s.settle_quiet = 400ms;
    s.settle_max = 800ms;
    ASSERT_TRUE(s.start().has_value());
    auto d1 = create_guest(s.h, "g1");
    ASSERT_TRUE(d1);
    const auto first = Clock::now();
    ASSERT_TRUE(s.h.sim->add_virtio_device(spec(*d1, 0, "virtio,device2")).has_value());
    // A new device every 150 ms for 4.5 s (never 400 ms quiet).
    Clock::time_point last;
    for (unsigned devid = 1; devid <= 30; ++devid) {
        std::this_thread::sleep_for(150ms);
        ASSERT_TRUE(s.h.sim->add_virtio_device(spec(*d1, devid, "virtio,device")).has_value());
        last = Clock::now();
    }
    ASSERT_EQ(s.spawner->spawns(), 1u) << "spawned once, while the list was still changing";
    const auto at = s.spawner->spawn_times()[0];
    EXPECT_GE(at, first + 800ms) << "never before settle_max";
    EXPECT_LT(at, last) << "the wait is bounded by settle_max, not by the guest";
    ASSERT_TRUE(s.h.eventually([&] { return s.backend_state_is(*d1, "2"); }));
}

// --- the fork/exec spawner ----------------------------------------------

/// An executable shell script in a temp file.
struct Script {
    explicit Script(const std::string& body) {
        path = std::filesystem::temp_directory_path() /
               ("xv-worker-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".sh");
        std::ofstream(path) << "#!/bin/sh\n" << body << "\n";
        ::chmod(path.c_str(), 0755);
    }
    ~Script() {
        std::error_code ec;
        std::filesystem::remove(path, ec);
    }
    std::filesystem::path path;
    static inline int counter = 0;
};

std::optional<WorkerExit> poll_until(WorkerSpawner& sp, int id, std::chrono::milliseconds limit) {
    auto end = Clock::now() + limit;
    while (Clock::now() < end) {
        if (auto e = sp.poll(id)) return e;
        std::this_thread::sleep_for(5ms);
    }
    return std::nullopt;
}

TEST(ProcessSpawner, PassesTheWorkerArgumentsAndReportsItsExitStatus) {
    auto out = std::filesystem::temp_directory_path() / ("xv-worker-args-" + std::to_string(::getpid()));
    Script sc("echo \"$@\" > " + out.string() + "; exit 7");
    auto sp = make_process_spawner(sc.path.string(), "/etc/x.toml");
    auto id = sp->spawn(12);
    ASSERT_TRUE(id.has_value()) << id.error().describe();
    auto e = poll_until(*sp, *id, 10s);
    ASSERT_TRUE(e.has_value());
    EXPECT_FALSE(e->signaled);
    EXPECT_EQ(e->status, 7);
    std::ifstream f(out);
    std::string line;
    std::getline(f, line);
    EXPECT_EQ(line, "serve --domid 12 --config /etc/x.toml --worker");
    std::filesystem::remove(out);
}

TEST(ProcessSpawner, TerminateSendsSigtermAndACrashIsReportedAsASignal) {
    Script sleeper("exec sleep 30");
    auto sp = make_process_spawner(sleeper.path.string(), "/dev/null");
    auto id = sp->spawn(3);
    ASSERT_TRUE(id.has_value());
    EXPECT_FALSE(sp->poll(*id).has_value()) << "still running";
    sp->terminate(*id);
    auto e = sp->wait(*id, 10s);
    EXPECT_TRUE(e.signaled);
    EXPECT_EQ(e.status, SIGTERM);

    Script crasher("kill -SEGV $$");
    auto sp2 = make_process_spawner(crasher.path.string(), "/dev/null");
    auto id2 = sp2->spawn(4);
    ASSERT_TRUE(id2.has_value());
    auto e2 = poll_until(*sp2, *id2, 10s);
    ASSERT_TRUE(e2.has_value());
    EXPECT_TRUE(e2->signaled);
    EXPECT_EQ(e2->status, SIGSEGV);
}

TEST(ProcessSpawner, MissingBinaryExits127) {
    auto sp = make_process_spawner("/nonexistent/xen-virtiod", "/dev/null");
    auto id = sp->spawn(3);
    ASSERT_TRUE(id.has_value());
    auto e = poll_until(*sp, *id, 10s);
    ASSERT_TRUE(e.has_value());
    EXPECT_FALSE(e->signaled);
    EXPECT_EQ(e->status, 127);
}

TEST(ProcessSpawner, WaitKillsAWorkerThatIgnoresSigterm) {
    Script stubborn("trap '' TERM; while :; do sleep 1; done");
    auto sp = make_process_spawner(stubborn.path.string(), "/dev/null");
    auto id = sp->spawn(3);
    ASSERT_TRUE(id.has_value());
    std::this_thread::sleep_for(200ms);  // let the shell install its trap
    sp->terminate(*id);
    auto e = sp->wait(*id, 300ms);
    EXPECT_TRUE(e.signaled);
    EXPECT_EQ(e.status, SIGKILL);
}

}  // namespace
}  // namespace xv::daemon
