// SPDX-License-Identifier: GPL-2.0-only
// `xen-virtiod demo`: the real daemon code (configuration parser, policy,
// discovery, guest manager, sessions, transports, devices) against the
// simulated hypervisor, with simulated guests whose built-in drivers
// write, read back and verify data on every device.
//
//   guest 1 "safe-guest"    SafeVM   virtio-pci + non-blocking registers
//   guest 2 "unsafe-guest"  UnsafeVM virtio-mmio, announced in xenstore as libxl does
//   (more guests alternate)
//   each: blk (image file, io_uring), net (tap in a private network
//   namespace), console (pty)
//
// Prints live progress, then a summary (or one JSON object with --json).
// Exit 0 only when every device verified its data.
#pragma once

#include <ostream>

namespace xv::daemon {

/// Options of the demo (interface.md).
struct DemoOptions {
    unsigned guests = 2;
    double seconds = 5.0;
    bool json = false;
};

/// Runs the demo; returns the process exit status.
int run_demo(const DemoOptions& opts, std::ostream& out);

}  // namespace xv::daemon
