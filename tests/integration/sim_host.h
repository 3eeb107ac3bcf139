// SPDX-License-Identifier: GPL-2.0-only
// One simulated host for the daemon's end-to-end tests and benchmarks: the
// simulator, an io_context on I/O threads, a configuration, and the guest
// manager under test; plus temp images and xenstore announcements as libxl
// writes them.
#pragma once

#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <initializer_list>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "config.h"
#include "guest_manager.h"
#include "xv/xen/sim.h"

namespace xv::daemon::testing {

using namespace std::chrono_literals;

/// Guest-physical base of the first virtio-mmio slot (GUEST_VIRTIO_MMIO_BASE).
inline constexpr std::uint64_t kBase = 0x02000000;

/// The simulator, an io_context on `io_threads` threads, a configuration
/// and the guest manager under test.
class Host {
public:
    explicit Host(std::string config_text, xen::sim::SimOptions so = {}) {
        sim = xen::sim::SimHypervisor::create(so);
        auto c = parse_config(config_text, "<test>");
        if (c) {
            config = std::move(c).value();
        } else {
            config_error = c.error().describe();
            std::cerr << "test configuration: " << config_error << "\n";
        }
    }
    ~Host() { shutdown(); }

    /// Starts the manager and the I/O threads.
    /// In-process sessions get their own `io_threads` threads each unless
    /// `mo` says otherwise (the shape the daemon runs guests in).
    Result<Verdicts> start(ManagerOptions mo = {}, unsigned io_threads = 2) {
        if (!config_error.empty()) return make_error(std::errc::invalid_argument, config_error);
        if (per_guest_threads && !mo.spawn_workers && !mo.only_guest && mo.threads_per_guest == 0)
            mo.threads_per_guest = io_threads;
        manager = GuestManager::create(config, *sim, io.get_executor(), std::move(mo));
        auto v = manager->start();
        for (unsigned i = 0; i < io_threads; ++i) threads.emplace_back([this] { io.run(); });
        return v;
    }

    /// Runs `f` on the manager's strand (where its state lives: rescan,
    /// sessions, stats) and waits.
    template <class F>
    auto on_io(F&& f) {
        std::packaged_task<decltype(f())()> task(std::forward<F>(f));
        auto fut = task.get_future();
        if (manager)
            boost::asio::post(manager->strand(), [&task] { task(); });
        else
            boost::asio::post(io, [&task] { task(); });
        return fut.get();
    }

    /// The manager's live sessions, read on its strand (its session map
    /// changes there).
    std::vector<std::shared_ptr<GuestSession>> sessions() {
        return on_io([&] { return manager->sessions(); });
    }

    /// Waits until `pred` holds (bounded).
    template <class P>
    bool eventually(P pred, std::chrono::milliseconds limit = 5000ms) {
        auto end = std::chrono::steady_clock::now() + limit;
        while (std::chrono::steady_clock::now() < end) {
            if (pred()) return true;
            std::this_thread::sleep_for(10ms);
        }
        return pred();
    }

    /// Orderly stop of the manager (what SIGTERM does), then the threads.
    void shutdown() {
        if (!manager) return;
        std::promise<void> done;
        manager->stop([&done] { done.set_value(); });
        done.get_future().wait_for(10s);
        manager.reset();
        guard.reset();
        io.stop();
        for (auto& t : threads) t.join();
        threads.clear();
    }

    /// True when the simulator holds no backend resource any more.
    bool released() const {
        auto r = sim->resources();
        return r.ioreq_servers == 0 && r.bound_ports == 0 && r.mapped_grant_pages == 0;
    }
    /// The resource counters, for failure messages.
    std::string resources_text() const {
        auto r = sim->resources();
        return "ioreq servers " + std::to_string(r.ioreq_servers) + ", ports " + std::to_string(r.bound_ports) +
               ", grant pages " + std::to_string(r.mapped_grant_pages) + ", handles " +
               std::to_string(r.open_handles);
    }

    /// Set to false before start() to run every session on `io`.
    bool per_guest_threads = true;
    std::shared_ptr<xen::sim::SimHypervisor> sim;
    Config config;
    std::string config_error;
    boost::asio::io_context io;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard{io.get_executor()};
    std::vector<std::thread> threads;
    std::shared_ptr<GuestManager> manager;
};

/// Configuration text for tests: dom0 as the Hardware and Control Domain
/// (a SafeVM, R4), then one DomU [[domain]] per (name, class) pair.
inline std::string domains_toml(std::initializer_list<std::pair<const char*, const char*>> guests) {
    std::string t = "[[domain]]\nid = 0\nroles = [\"hardware\", \"control\"]\nclass = \"safe\"\n";
    for (const auto& [name, cls] : guests)
        t += std::string("\n[[domain]]\nname = \"") + name + "\"\nroles = [\"domu\"]\nclass = \"" + cls + "\"\n";
    return t;
}

/// A [[device]] of type blk for `guest` on `image`, plus `extra` lines.
inline std::string blk_toml(const std::string& guest, const std::string& image, const std::string& extra = "") {
    return "\n[[device]]\nguest = \"" + guest + "\"\ntype = \"blk\"\npath = \"" + image + "\"\n" + extra;
}

/// A temp image file of `bytes`: on tmpfs when /dev/shm exists (figures
/// that do not depend on a disk), or on the real filesystem
/// (XV_TEST_IMAGE_DIR, default /var/tmp).
struct TempImage {
    enum class Where { Tmpfs, Filesystem };
    explicit TempImage(std::uint64_t bytes, Where where = Where::Tmpfs) {
        namespace fs = std::filesystem;
        std::error_code ec;
        fs::path dir;
        if (where == Where::Filesystem) {
            const char* env = std::getenv("XV_TEST_IMAGE_DIR");
            dir = env && *env ? fs::path(env) : fs::is_directory("/var/tmp", ec) ? fs::path("/var/tmp")
                                                                                 : fs::temp_directory_path();
        } else {
            dir = fs::is_directory("/dev/shm", ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
        }
        path = dir / ("xv-e2e-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".img");
        std::ofstream(path).close();
        fs::resize_file(path, bytes);
    }
    ~TempImage() {
        std::error_code ec;
        std::filesystem::remove(path, ec);
    }
    TempImage(const TempImage&) = delete;
    TempImage& operator=(const TempImage&) = delete;
    std::filesystem::path path;
    static inline int counter = 0;
};

/// A virtio device of `fe` in slot `devid`, as xl.cfg `virtio = [...]` announces it.
inline xen::sim::VirtioDeviceSpec spec(xen::DomId fe, unsigned devid, const char* type, bool grants = true,
                                       xen::DomId backend = 0) {
    xen::sim::VirtioDeviceSpec s;
    s.frontend = fe;
    s.backend = backend;
    s.devid = devid;
    s.type = type;
    s.base = kBase + 0x200 * devid;
    s.irq = 33 + devid;
    s.grant_usage = grants;
    return s;
}

/// The backend directory of that device.
inline std::string be_path(xen::DomId fe, unsigned devid, xen::DomId backend = 0) {
    return "/local/domain/" + std::to_string(backend) + "/backend/virtio/" + std::to_string(fe) + "/" +
           std::to_string(devid);
}

/// What `xl destroy` / libxl's device removal writes: online=0 and state=5
/// (Closing) in ONE transaction. Two separate writes would race with the
/// backend, which may answer 6 after the first and see it overwritten by 5.
inline Result<void> begin_device_removal(xen::XenStore& xs, const std::string& backend_path) {
    for (;;) {
        auto txn = xs.transaction_start();
        if (!txn) return txn.error();
        const xen::Txn t = txn.value();
        auto w = xs.write(backend_path + "/online", "0", t);
        if (w) w = xs.write(backend_path + "/state", "5", t);
        if (!w) {
            (void)xs.transaction_end(t, true);
            return w;
        }
        auto e = xs.transaction_end(t);
        if (e || e.error().code != std::errc::resource_unavailable_try_again) return e;
    }
}

/// Creates the simulated guest `name`.
inline Result<xen::DomId> create_guest(Host& h, const char* name, unsigned vcpus = 2) {
    xen::sim::DomainConfig dc;
    dc.name = name;
    dc.vcpus = vcpus;
    return h.sim->create_domain(dc);
}

}  // namespace xv::daemon::testing
