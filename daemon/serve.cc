// SPDX-License-Identifier: GPL-2.0-only
#include "serve.h"

#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <csignal>
#include <climits>
#include <cstdlib>
#include <future>
#include <iostream>
#include <thread>

#include "check.h"
#include "config.h"
#include "discovery.h"
#include "guest_manager.h"
#include "privileges.h"
#include "xv/log.h"
#include "xv/transport/pci_host.h"
#include "xv/xen/hypervisor.h"
#include "xv_config.h"

namespace xv::daemon {

namespace {

/// Opens real Xen, or explains why not (exit status 3).
Result<std::unique_ptr<xen::Hypervisor>> open_xen() {
    auto hv = xen::open_libxen();
    if (!hv) return std::move(hv).error();
    return std::move(hv).value();
}

std::string self_exe() {
    char buf[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return "xen-virtiod";
    return std::string(buf, std::size_t(n));
}

/// sd_notify watchdog pings while the loop is alive.
void arm_watchdog(boost::asio::steady_timer& t, std::chrono::microseconds period) {
    t.expires_after(period / 2);
    t.async_wait([&t, period](const boost::system::error_code& ec) {
        if (ec) return;
        sd_notify(0, "WATCHDOG=1");
        arm_watchdog(t, period);
    });
}

}  // namespace

int run_serve(const ServeOptions& opts) {
    auto cfg = load_config(opts.config_path);
    if (!cfg) {
        xv::log::init(!opts.foreground, "info");
        spdlog::error("{}", cfg.error().message);
        std::cerr << "xen-virtiod: " << cfg.error().message << "\n";
        return kExitUsage;
    }
    Config config = std::move(cfg).value();
    xv::log::init(!opts.foreground, opts.log_level.empty() ? config.daemon.log_level : opts.log_level);
    spdlog::info("xen-virtiod {} starting ({}; config {})", XV_VERSION,
                 opts.domid ? "guest dom" + std::to_string(*opts.domid) + " only" : "all guests",
                 opts.config_path);

    if (!xen::xen_present()) {
        auto why = open_xen();
        std::string msg = why ? "Xen device nodes missing" : why.error().message;
        spdlog::error("{}", msg);
        std::cerr << "xen-virtiod: " << msg << "\n"
                  << "xen-virtiod: no Xen here; `xen-virtiod demo` runs the daemon on the simulated hypervisor\n";
        return kExitXen;
    }
    auto hvr = open_xen();
    if (!hvr) {
        spdlog::error("{}", hvr.error().describe());
        std::cerr << "xen-virtiod: " << hvr.error().describe() << "\n";
        return kExitXen;
    }
    auto hv = std::move(hvr).value();

    boost::asio::io_context io;
    ManagerOptions mo;
    mo.only_guest = opts.domid;
    // Hardware Domain service: one restricted worker process per guest (R5).
    mo.spawn_workers = !opts.domid;
    // `--domid N` (a worker, or a driver domain serving one guest): the guest
    // runs on its own executor with the [daemon] workers threads, as every
    // in-process guest does (guest_executor.h); the manager's loop (xenstore
    // watch, signals, watchdog) keeps the main thread. The guest's threads
    // exist before the privilege drop below: ioreq_realtime_priority is
    // applied as they start, while the process may still change policies.
    if (opts.domid) mo.threads_per_guest = config.daemon.workers;
    mo.report_ioreq_servers = opts.worker;
    mo.self_exe = self_exe();
    mo.config_path = opts.config_path;
    mo.worker_cgroups.mode = config.daemon.worker_cgroups;
    int exit_status = kExitOk;
    bool guest_gone = false;
    mo.on_only_guest_gone = [&] {
        guest_gone = true;
        boost::asio::post(io, [] { raise(SIGTERM); });
    };
    auto manager = GuestManager::create(config, *hv, io.get_executor(), mo);
    auto verdicts = manager->start();
    if (!verdicts) {
        spdlog::error("{}", verdicts.error().describe());
        std::cerr << "xen-virtiod: " << verdicts.error().describe() << "\n";
        return kExitXen;
    }
    if (verdicts.value().refuses_start()) {
        for (const auto* v : [&] {
                 std::vector<const Verdict*> r;
                 for (const auto& i : verdicts.value().items)
                     if (i.level == Level::Refuse) r.push_back(&i);
                 return r;
             }())
            std::cerr << "xen-virtiod: refusing to start: " << v->rule << " (seed \"" << v->section << "\") "
                      << v->domain << (v->device.empty() ? "" : " " + v->device) << ": " << v->message << "\n";
        return kExitPolicy;
    }

    // R5: a per-guest worker restricts itself to its guest, drops its
    // capabilities and installs its seccomp filter once set up.
    if (opts.domid) {
        PrivilegeOptions po;
        po.seccomp = config.daemon.seccomp;
        PrivilegeDropper dropper;
        if (auto r = dropper.drop_all(hv.get(), *opts.domid, po); !r) {
            const auto* dom = config.find_domain(*opts.domid);
            if (config.class_of(*opts.domid, dom ? dom->name : "") == VmClass::Safe ||
                !(dom && dom->allow_unrestricted)) {
                spdlog::error("dom{}: cannot drop privileges ({}); refusing to serve it (R5)", *opts.domid,
                              r.error().describe());
                return kExitXen;
            }
            spdlog::warn("dom{}: serving unrestricted (allow_unrestricted = true): {}", *opts.domid,
                         r.error().describe());
        } else {
            spdlog::info("dom{}: worker restricted to its guest, capabilities dropped, seccomp on", *opts.domid);
        }
    }

    boost::asio::signal_set signals(io, SIGTERM, SIGINT, SIGHUP);
    std::function<void()> wait_signal;
    wait_signal = [&] {
        signals.async_wait([&](const boost::system::error_code& ec, int sig) {
            if (ec) return;
            if (sig == SIGHUP) {
                auto re = load_config(opts.config_path);
                if (re) {
                    manager->reload(std::move(re).value());
                    spdlog::info("configuration reloaded (applies to guests not yet connected)");
                } else {
                    spdlog::error("reload refused: {}", re.error().message);
                }
                wait_signal();
                return;
            }
            spdlog::info("{}: orderly stop", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            sd_notify(0, "STOPPING=1");
            manager->stop([&] { io.stop(); });
        });
    };
    wait_signal();

    boost::asio::steady_timer watchdog(io);
    std::uint64_t wd_usec = 0;
    if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) arm_watchdog(watchdog, std::chrono::microseconds(wd_usec));
    sd_notifyf(0, "READY=1\nSTATUS=serving %zu guest(s)", manager->sessions().size());

    std::vector<std::thread> threads;
    const unsigned manager_threads = opts.domid ? 1u : config.daemon.workers;
    for (unsigned i = 1; i < manager_threads; ++i) threads.emplace_back([&io] { io.run(); });
    io.run();
    for (auto& t : threads) t.join();
    (void)guest_gone;
    // What this process did at the hypervisor boundary: grants only, never a
    // foreign mapping of guest RAM (safety-policy.md, R1). The lab reads it.
    const xen::BoundaryStats bs = hv->stats();
    spdlog::info("boundary: {} grant map calls, {} grant pages mapped, {} grant unmap calls, {} grant copy calls, "
                 "{} foreign RAM maps, {} resource maps",
                 bs.grant_map_calls, bs.grant_pages_mapped, bs.grant_unmap_calls, bs.grant_copy_calls,
                 bs.foreign_ram_maps, bs.resource_maps);
    spdlog::info("xen-virtiod stopped");
    return exit_status;
}

int run_check_command(const std::string& config_path, bool json, std::ostream& out, std::ostream& err) {
    std::unique_ptr<xen::Hypervisor> hv;
    if (xen::xen_present())
        if (auto h = xen::open_libxen()) hv = std::move(h).value();
    return check_command(config_path, json, hv.get(), out, err);
}

int run_dt_fragment(const DtOptions& opts, std::ostream& out) {
    auto cfg = load_config(opts.config_path);
    if (!cfg) {
        std::cerr << "xen-virtiod: " << cfg.error().message << "\n";
        return kExitUsage;
    }
    std::optional<xen::DomId> id;
    std::string name = opts.guest;
    if (auto n = parse_xs_uint(opts.guest, 0x7fef);
        n && opts.guest.find_first_not_of("0123456789") == std::string::npos) {
        id = xen::DomId(*n);
        name.clear();
    }
    bool any_pci = false;
    for (const auto* d : cfg.value().devices_of(id, name)) any_pci |= d->transport == Transport::Pci;
    if (!any_pci) {
        std::cerr << "xen-virtiod: guest '" << opts.guest << "' has no [[device]] with transport = \"pci\" in "
                  << opts.config_path << "\n";
        return kExitUsage;
    }
    transport::PciHostConfig host;
    host.backend_domid = 0;
    if (xen::xen_present())
        if (auto hv = xen::open_libxen())
            if (auto self = hv.value()->self_domid()) host.backend_domid = self.value();
    out << transport::render_dt_fragment(host);
    return kExitOk;
}

int run_attach(const AttachOptions& opts) {
    auto hv = xen::open_libxen();
    if (!hv) {
        std::cerr << "xen-virtiod: " << hv.error().describe() << "\n";
        return kExitXen;
    }
    return attach_command(opts, *hv.value(), std::cout, std::cerr);
}

}  // namespace xv::daemon
