// SPDX-License-Identifier: GPL-2.0-only
// xen-virtiod: entry point. Commands, config keys and exit statuses are a
// contract (README "Commands"):
//   0 clean stop; 1 usage/config error; 2 refused by the safety policy;
//   3 Xen unavailable or a privilege missing.
#include <CLI/CLI.hpp>

#include <iostream>

#include "check.h"
#include "config.h"
#include "demo.h"
#include "serve.h"
#include "xv/log.h"
#include "xv_config.h"

using namespace xv::daemon;

int main(int argc, char** argv) {
    CLI::App app{"xen-virtiod " XV_VERSION
                 " - VirtIO backend daemon for Xen: virtio-blk, virtio-net and virtio-console over virtio-mmio\n"
                 "and virtio-pci, as an ioreq server, guest memory through grants only, with the Xen\n"
                 "non-blocking registers. Without a command it runs `serve`.",
                 "xen-virtiod"};
    app.set_version_flag("--version", "xen-virtiod " XV_VERSION);
    app.require_subcommand(0, 1);
    app.footer(
        "Exit status: 0 clean stop, 1 usage or configuration error, 2 refused by the safety policy,\n"
        "3 Xen unavailable or a privilege missing.");

    ServeOptions so;
    so.config_path = kDefaultConfigPath;
    auto add_serve_opts = [&so](CLI::App* a) {
        a->add_option("--config", so.config_path, "Configuration file")->capture_default_str();
        a->add_option("--domid", so.domid, "Serve this guest only; exit when it is destroyed");
        a->add_flag("--foreground", so.foreground, "Log to stderr even under systemd");
        a->add_option("--log-level", so.log_level, "error|warn|info|debug|trace (overrides the config)");
        a->add_flag("--worker", so.worker, "Run as a worker of the Hardware Domain service")->group("");
    };
    add_serve_opts(&app);
    auto* serve = app.add_subcommand("serve", "Run the backend (the default command)");
    add_serve_opts(serve);

    std::string check_config = kDefaultConfigPath;
    bool check_json = false;
    auto* check = app.add_subcommand("check", "Evaluate the safety policy (R1-R6) and print the verdicts");
    check->add_option("--config", check_config, "Configuration file")->capture_default_str();
    check->add_flag("--json", check_json, "One JSON object instead of the table");

    DemoOptions demo_opts;
    auto* demo = app.add_subcommand("demo", "Run the daemon against the simulated hypervisor with simulated guests");
    demo->add_option("--guests", demo_opts.guests, "Number of simulated guests")->capture_default_str();
    demo->add_option("--seconds", demo_opts.seconds, "Seconds of I/O per device")->capture_default_str();
    demo->add_flag("--json", demo_opts.json, "Print one JSON summary object");

    DtOptions dt;
    dt.config_path = kDefaultConfigPath;
    auto* dtf = app.add_subcommand("dt-fragment", "Print the guest device-tree fragment for xl's device_tree= (Arm)");
    dtf->add_option("--guest", dt.guest, "Guest name or domid")->required();
    dtf->add_option("--config", dt.config_path, "Configuration file")->capture_default_str();

    AttachOptions at;
    auto* attach = app.add_subcommand(
        "attach", "Dom0: give a driver domain device-model privilege over a (paused) guest");
    attach->add_option("--backend-domain", at.backend, "Driver domain (name or domid)")->required();
    attach->add_option("--guest", at.guest, "Guest (name or domid)")->required();

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int rc = app.exit(e);
        return rc == 0 ? 0 : 1;
    }

    if (check->parsed()) {
        xv::log::init(false, "warn");
        return run_check_command(check_config, check_json, std::cout, std::cerr);
    }
    if (demo->parsed()) {
        xv::log::init(false, demo_opts.json ? "error" : "warn");
        return run_demo(demo_opts, std::cout);
    }
    if (dtf->parsed()) {
        xv::log::init(false, "warn");
        return run_dt_fragment(dt, std::cout);
    }
    if (attach->parsed()) {
        xv::log::init(false, "info");
        return run_attach(at);
    }
    return run_serve(so);
}
