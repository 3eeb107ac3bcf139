// SPDX-License-Identifier: GPL-2.0-only
// The typed virtio transport conformance suite on virtio-console, over mmio,
// mmio+nonblocking, pci and pci+nonblocking (pty backend).
#include <gtest/gtest.h>

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

INSTANTIATE_TYPED_TEST_SUITE_P(Console, VirtioConformance, ConformanceKinds<MakeConsole>, ConformanceKindNames);

}  // namespace
}  // namespace xv::test
