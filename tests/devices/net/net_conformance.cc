// SPDX-License-Identifier: GPL-2.0-only
// The typed virtio transport conformance suite on virtio-net, over mmio,
// mmio+nonblocking, pci and pci+nonblocking (a real tap per device, inside
// the private network namespace net_tests.cc enters).
#include <gtest/gtest.h>

#include <atomic>

#include "device_conformance.h"
#include "xv/devices/net.h"

namespace xv::test {
namespace {

struct MakeNet {
    static Result<std::unique_ptr<transport::Device>> make(xen::DomId d, boost::asio::any_io_executor ex) {
        static std::atomic<int> n{0};
        devices::NetConfig cfg;
        cfg.tap = "xvnc" + std::to_string(n++);
        return devices::make_net(cfg, {d, "net0"}, std::move(ex));
    }
};

INSTANTIATE_TYPED_TEST_SUITE_P(Net, VirtioConformance, ConformanceKinds<MakeNet>, ConformanceKindNames);

}  // namespace
}  // namespace xv::test
