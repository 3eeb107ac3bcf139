// SPDX-License-Identifier: GPL-2.0-only
// The typed virtio transport conformance suite on virtio-console, over mmio,
// mmio+nonblocking, pci and pci+nonblocking (pty backend).
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>

#include <atomic>

#include "virtio_conformance.h"
#include "xv/devices/console.h"

namespace xv::test {
namespace {

/// One loop for the devices' executors (the console host side runs there; not run in these tests).
boost::asio::io_context& device_io() {
    static boost::asio::io_context io;
    return io;
}

template <TransportKind K>
struct ConsoleOn {
    static constexpr TransportKind kind = K;
    static std::shared_ptr<transport::Device> make(xen::DomId d) {
        devices::ConsoleConfig cfg;
        auto dev = devices::make_console(cfg, {d, "console0"}, device_io().get_executor());
        if (!dev) {
            ADD_FAILURE() << dev.error().describe();
            return nullptr;
        }
        return std::shared_ptr<transport::Device>(std::move(*dev));
    }
};

struct ConsoleKindNames {
    template <class T>
    static std::string GetName(int) {
        std::string s = kind_name(T::kind);
        for (auto& c : s)
            if (c == '-') c = '_';
        return s;
    }
};

using ConsoleKinds = ::testing::Types<ConsoleOn<TransportKind::Mmio>, ConsoleOn<TransportKind::MmioNb>, ConsoleOn<TransportKind::Pci>,
                                  ConsoleOn<TransportKind::PciNb>>;
INSTANTIATE_TYPED_TEST_SUITE_P(Console, VirtioConformance, ConsoleKinds, ConsoleKindNames);

}  // namespace
}  // namespace xv::test
