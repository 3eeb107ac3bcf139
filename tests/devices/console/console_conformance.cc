// SPDX-License-Identifier: GPL-2.0-only
// The typed virtio transport conformance suite on virtio-console, over mmio,
// mmio+nonblocking, pci and pci+nonblocking (pty backend; and with one
// extra port, MULTIPORT).
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <string>

#include "device_conformance.h"
#include "xv/devices/console.h"

namespace xv::test {
namespace {

struct MakeConsole {
    static Result<std::unique_ptr<transport::Device>> make(xen::DomId d, boost::asio::any_io_executor ex) {
        devices::ConsoleConfig cfg;
        return devices::make_console(cfg, {d, "console0"}, std::move(ex));
    }
};

/// With one extra port: MULTIPORT offered, six queues (virtio 1.2 §5.3.2).
struct MakeConsoleMultiport {
    static Result<std::unique_ptr<transport::Device>> make(xen::DomId d, boost::asio::any_io_executor ex) {
        static std::atomic<int> n{0};
        devices::ConsoleConfig cfg;
        cfg.ports.push_back({"org.example.port", "/tmp/xv-conformance-console-" + std::to_string(::getpid()) + "-" +
                                                     std::to_string(n++) + ".sock"});
        return devices::make_console(cfg, {d, "console0"}, std::move(ex));
    }
};

INSTANTIATE_TYPED_TEST_SUITE_P(Console, VirtioConformance, ConformanceKinds<MakeConsole>, ConformanceKindNames);
INSTANTIATE_TYPED_TEST_SUITE_P(ConsoleMultiport, VirtioConformance, ConformanceKinds<MakeConsoleMultiport>,
                               ConformanceKindNames);

}  // namespace
}  // namespace xv::test
