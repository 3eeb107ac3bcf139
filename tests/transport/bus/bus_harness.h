// SPDX-License-Identifier: GPL-2.0-only
// Guest-side test harness for the virtio transports, over xen/sim.
//
// BusHarness builds one simulated guest, an io_context on its own threads
// (SimGuest::mmio_read/mmio_write block like a vCPU, so the backend must
// run elsewhere), an IoreqLoop and one device on the chosen transport:
//
//   TransportKind::Mmio    virtio-mmio at 0x02000000, SPI 33 (edge)
//   TransportKind::MmioNb  the same, driven only through ACCESS/ACCESS_DATA
//   TransportKind::Pci     virtio-pci behind the ECAM host, INTA on SPI 44
//   TransportKind::PciNb   the same, driven only through the vendor capability
//
// GuestTransport is the guest driver's view: status, features, queues,
// notify, ISR, config - implemented once over plain registers and once
// over the two non-blocking registers, for mmio and for pci (which also
// enumerates the function through ECAM like Linux's virtio_pci_modern).
#pragma once

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xv/guest/transport_driver.h"
#include "xv/result.h"
#include "xv/test/virtqueue_driver.h"
#include "xv/transport/device.h"
#include "xv/transport/ioreq_loop.h"
#include "xv/transport/mmio.h"
#include "xv/transport/pci.h"
#include "xv/transport/pci_host.h"
#include "xv/xen/sim.h"

namespace xv::test {

/// Which transport (and which register interface) a test uses.
enum class TransportKind { Mmio, MmioNb, Pci, PciNb };

/// "mmio", "mmio-nb", "pci", "pci-nb".
const char* kind_name(TransportKind k);
/// True for the two non-blocking kinds.
constexpr bool is_nonblocking(TransportKind k) { return k == TransportKind::MmioNb || k == TransportKind::PciNb; }
/// True for the two PCI kinds.
constexpr bool is_pci(TransportKind k) { return k == TransportKind::Pci || k == TransportKind::PciNb; }

/// The guest-side transport drivers live in guest/ (the demo uses them too).
using guest::GuestTransport;
using guest::make_mmio_guest;
using guest::make_pci_guest;
using guest::NbRegisterIo;
using guest::PciCaps;
using guest::PciGuest;
using guest::RegisterIo;

/// Makes the device under test for guest `domid`.
using DeviceFactory = std::function<std::shared_ptr<transport::Device>(xen::DomId domid)>;

/// One guest, one device on one transport, the backend on its own threads.
class BusHarness {
public:
    struct Options {
        TransportKind kind = TransportKind::Mmio;
        unsigned io_threads = 2;
        std::uint64_t guest_pages = 8192;
        unsigned vcpus = 2;
    };
    static Result<std::unique_ptr<BusHarness>> create(Options opts, DeviceFactory factory);
    ~BusHarness();

    /// A driver for queue `q` (size `size`) in this guest: split ring, or
    /// packed with `packed` (VIRTIO_F_RING_PACKED must then be negotiated).
    Result<std::unique_ptr<VirtqueueDriver>> driver(std::uint16_t q, std::uint16_t size = 16, bool event_idx = false,
                                                    bool packed = false);
    /// Waits for the device's next queue/config interrupt (SPI edge or MSI)
    /// after `seen`; returns the new count.
    std::uint64_t wait_irq(std::uint64_t seen, std::chrono::milliseconds timeout = std::chrono::seconds(5));
    /// Interrupts so far on the device's line.
    std::uint64_t irq_count() const;
    /// Stops the loop (orderly) and the threads; idempotent.
    void shutdown();

    Options opts;
    std::shared_ptr<xen::sim::SimHypervisor> hv;
    xen::DomId domid = 0;
    std::shared_ptr<xen::sim::SimGuest> guest;
    std::unique_ptr<xen::GrantMapper> grants;
    std::unique_ptr<xen::DeviceModel> dm;
    std::shared_ptr<transport::GuestMemory> mem;
    boost::asio::io_context io;
    std::shared_ptr<transport::Device> device;
    std::shared_ptr<transport::IoreqLoop> loop;
    std::shared_ptr<transport::MmioTransport> mmio;   ///< mmio kinds
    std::shared_ptr<transport::PciHost> host;         ///< pci kinds
    std::shared_ptr<transport::PciTransport> pci;     ///< pci kinds
    std::unique_ptr<GuestTransport> drv;              ///< the guest driver
    std::uint32_t spi = 0;                            ///< device interrupt line
    static constexpr std::uint64_t kMmioBase = 0x02000000;

private:
    BusHarness() = default;
    std::unique_ptr<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
    std::vector<std::thread> threads_;
    bool stopped_ = false;
};

}  // namespace xv::test
