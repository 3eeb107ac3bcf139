// SPDX-License-Identifier: GPL-2.0-only
// xen-virtiod: entry point. Commands and exit statuses are a contract
// (docs/interface: serve, check, demo, dt-fragment, attach).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>

#include "xv/log.h"
#include "xv_config.h"

int main(int argc, char** argv) {
    CLI::App app{"xen-virtiod " XV_VERSION
                 " - VirtIO backend daemon for Xen (virtio-blk, -net, -console over virtio-mmio and "
                 "virtio-pci, grants only, non-blocking registers)",
                 "xen-virtiod"};
    app.set_version_flag("--version", "xen-virtiod " XV_VERSION);
    app.require_subcommand(0, 1);
    auto* serve = app.add_subcommand("serve", "Run the backend (the default command)");
    (void)serve;
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int rc = app.exit(e);
        return rc == 0 ? 0 : 1;
    }
    std::cerr << "xen-virtiod: nothing to do yet\n";
    return 0;
}
