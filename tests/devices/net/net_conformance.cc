// SPDX-License-Identifier: GPL-2.0-only
// The typed virtio transport conformance suite on virtio-net, over mmio,
// mmio+nonblocking, pci and pci+nonblocking (a real tap per device, inside
// the private network namespace net_tests.cc enters).
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>

#include <atomic>

#include "virtio_conformance.h"
#include "xv/devices/net.h"

namespace xv::test {
namespace {

/// One loop for the devices' executors (net uses the queues' strands).
boost::asio::io_context& device_io() {
    static boost::asio::io_context io;
    return io;
}

template <TransportKind K>
struct NetOn {
    static constexpr TransportKind kind = K;
    static std::shared_ptr<transport::Device> make(xen::DomId d) {
        static std::atomic<int> n{0};
        devices::NetConfig cfg;
        cfg.tap = "xvnc" + std::to_string(n++);
        auto dev = devices::make_net(cfg, {d, "net0"}, device_io().get_executor());
        if (!dev) {
            ADD_FAILURE() << dev.error().describe();
            return nullptr;
        }
        return std::shared_ptr<transport::Device>(std::move(*dev));
    }
};

struct NetKindNames {
    template <class T>
    static std::string GetName(int) {
        std::string s = kind_name(T::kind);
        for (auto& c : s)
            if (c == '-') c = '_';
        return s;
    }
};

using NetKinds = ::testing::Types<NetOn<TransportKind::Mmio>, NetOn<TransportKind::MmioNb>, NetOn<TransportKind::Pci>,
                                  NetOn<TransportKind::PciNb>>;
INSTANTIATE_TYPED_TEST_SUITE_P(Net, VirtioConformance, NetKinds, NetKindNames);

}  // namespace
}  // namespace xv::test
