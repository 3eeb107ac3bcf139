// SPDX-License-Identifier: GPL-2.0-only
// What every device suite needs to run the typed transport conformance
// suite (tests/transport/bus/virtio_conformance.h) on its device, over
// mmio, mmio+nonblocking, pci and pci+nonblocking:
//
//   struct MakeBlk {
//       static Result<std::unique_ptr<transport::Device>> make(xen::DomId d, boost::asio::any_io_executor ex);
//   };
//   INSTANTIATE_TYPED_TEST_SUITE_P(Blk, VirtioConformance, ConformanceKinds<MakeBlk>, ConformanceKindNames);
//
// The devices' own executor (host-side I/O: taps, ptys, io_uring eventfds)
// is one io_context run by one thread for the whole program.
#pragma once

#include <gtest/gtest.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <memory>
#include <string>
#include <thread>

#include "virtio_conformance.h"
#include "xv/result.h"
#include "xv/transport/device.h"

namespace xv::test {

/// The loop the devices' host side runs on, with its thread; stopped and
/// joined at program exit.
class DeviceLoop {
public:
    static DeviceLoop& get() {
        static DeviceLoop loop;
        return loop;
    }
    boost::asio::any_io_executor executor() { return io_.get_executor(); }
    ~DeviceLoop() {
        work_.reset();
        io_.stop();
        if (thread_.joinable()) thread_.join();
    }

private:
    DeviceLoop() : work_(io_.get_executor()), thread_([this] { io_.run(); }) {}
    boost::asio::io_context io_;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
    std::thread thread_;
};

/// One device (built by `Maker::make`) on transport `K`, the type
/// parameter VirtioConformance expects.
template <class Maker, TransportKind K>
struct DeviceOn {
    static constexpr TransportKind kind = K;
    static std::shared_ptr<transport::Device> make(xen::DomId d) {
        Result<std::unique_ptr<transport::Device>> dev = Maker::make(d, DeviceLoop::get().executor());
        if (!dev) {
            ADD_FAILURE() << dev.error().describe();
            return nullptr;
        }
        return std::shared_ptr<transport::Device>(std::move(*dev));
    }
};

/// The four transports for one device.
template <class Maker>
using ConformanceKinds = ::testing::Types<DeviceOn<Maker, TransportKind::Mmio>, DeviceOn<Maker, TransportKind::MmioNb>,
                                          DeviceOn<Maker, TransportKind::Pci>, DeviceOn<Maker, TransportKind::PciNb>>;

/// Test names "mmio", "mmio_nb", "pci", "pci_nb".
struct ConformanceKindNames {
    template <class T>
    static std::string GetName(int) {
        std::string s = kind_name(T::kind);
        for (auto& c : s)
            if (c == '-') c = '_';
        return s;
    }
};

}  // namespace xv::test
