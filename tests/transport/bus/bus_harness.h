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

/// Register access in one transport's register space (mmio window offsets
/// or BAR0 offsets), plain or through ACCESS/ACCESS_DATA.
class RegisterIo {
public:
    virtual ~RegisterIo() = default;
    virtual Result<std::uint64_t> read(std::uint32_t off, unsigned size) = 0;
    virtual Result<void> write(std::uint32_t off, unsigned size, std::uint64_t value) = 0;
};

/// The guest driver's view of one virtio device.
class GuestTransport {
public:
    virtual ~GuestTransport() = default;

    virtual Result<std::uint8_t> status() = 0;
    virtual Result<void> set_status(std::uint8_t s) = 0;
    virtual Result<std::uint64_t> device_features() = 0;
    virtual Result<void> set_driver_features(std::uint64_t f) = 0;
    virtual Result<std::uint16_t> num_queues() = 0;
    /// QueueNumMax / initial queue_size (0 = not available).
    virtual Result<std::uint16_t> queue_max(std::uint16_t q) = 0;
    /// Selects `q` and programs size and the three ring addresses.
    virtual Result<void> setup_queue(std::uint16_t q, std::uint16_t size, std::uint64_t desc, std::uint64_t driver,
                                     std::uint64_t device) = 0;
    virtual Result<void> enable_queue(std::uint16_t q) = 0;
    virtual Result<bool> queue_enabled(std::uint16_t q) = 0;
    virtual Result<void> notify(std::uint16_t q) = 0;
    /// Reads and acknowledges the interrupt status (mmio: read + ACK; pci: read-to-clear).
    virtual Result<std::uint8_t> take_isr() = 0;
    virtual Result<std::uint32_t> config_generation() = 0;
    virtual Result<std::uint64_t> config_read(std::uint32_t off, unsigned size) = 0;
    virtual Result<void> config_write(std::uint32_t off, unsigned size, std::uint64_t v) = 0;
    /// The register interface underneath (for width/hostile tests).
    virtual RegisterIo& regs() = 0;

    /// Writes 0 and waits (polling status, bounded) until it reads 0.
    Result<void> reset(std::chrono::milliseconds timeout = std::chrono::seconds(10));
    /// ACK, DRIVER, features, FEATURES_OK (checked), queues, DRIVER_OK.
    /// Returns the negotiated features.
    Result<std::uint64_t> bring_up(std::uint64_t want_features, const std::vector<VirtqueueDriver*>& queues);
};

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

    /// A split-ring driver for queue `q` (size `size`) in this guest.
    Result<std::unique_ptr<VirtqueueDriver>> driver(std::uint16_t q, std::uint16_t size = 16, bool event_idx = false);
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

/// What a PCI guest driver found while enumerating its function.
struct PciCaps {
    struct Entry {
        std::uint8_t at, id, cfg_type;
    };
    std::vector<Entry> chain;        ///< capability list in walk order
    std::uint64_t bar = 0;           ///< BAR0 address the driver programmed
    std::uint64_t bar_size = 0;      ///< from BAR sizing
    std::uint32_t bar_flags = 0;     ///< low 4 bits of BAR0
    std::uint32_t common = 0, notify = 0, notify_mult = 0, isr = 0, device = 0, device_len = 0;
    std::uint8_t pci_cfg = 0, msix = 0, vendor = 0;
    std::uint8_t nb_bar = 0xff, nb_version = 0;
    std::uint32_t nb_offset = 0;
};

/// The guest driver of one virtio-pci function behind an ECAM window.
class PciGuest final : public GuestTransport {
public:
    PciGuest(xen::sim::SimGuest& g, std::uint64_t ecam_fn, unsigned vcpu);
    /// Sizes and programs BAR0 at `bar_addr`, enables decoding, walks the caps.
    Result<void> enumerate(std::uint64_t bar_addr, bool nonblocking);
    /// Config space access through ECAM.
    Result<std::uint32_t> cfg_read(std::uint32_t reg, unsigned size);
    Result<void> cfg_write(std::uint32_t reg, unsigned size, std::uint32_t v);

    RegisterIo& regs() override { return *io_; }
    Result<std::uint8_t> status() override;
    Result<void> set_status(std::uint8_t s) override;
    Result<std::uint64_t> device_features() override;
    Result<void> set_driver_features(std::uint64_t f) override;
    Result<std::uint16_t> num_queues() override;
    Result<std::uint16_t> queue_max(std::uint16_t q) override;
    Result<void> setup_queue(std::uint16_t q, std::uint16_t size, std::uint64_t desc, std::uint64_t driver,
                             std::uint64_t device) override;
    Result<void> enable_queue(std::uint16_t q) override;
    Result<bool> queue_enabled(std::uint16_t q) override;
    Result<void> notify(std::uint16_t q) override;
    Result<std::uint8_t> take_isr() override;
    Result<std::uint32_t> config_generation() override;
    Result<std::uint64_t> config_read(std::uint32_t off, unsigned size) override;
    Result<void> config_write(std::uint32_t off, unsigned size, std::uint64_t v) override;

    PciCaps caps;

private:
    xen::sim::SimGuest& g_;
    std::uint64_t ecam_;
    unsigned vcpu_;
    std::unique_ptr<RegisterIo> io_;
};

/// A guest driver over virtio-mmio registers at `base` (plain or non-blocking).
Result<std::unique_ptr<GuestTransport>> make_mmio_guest(xen::sim::SimGuest& g, std::uint64_t base, bool nonblocking,
                                                        unsigned vcpu = 0);
/// A guest driver over virtio-pci: enumerates slot `slot` of the ECAM host
/// (size + program BAR0, enable memory decoding, walk the capabilities).
Result<std::unique_ptr<GuestTransport>> make_pci_guest(xen::sim::SimGuest& g, const transport::PciHostConfig& host,
                                                       unsigned slot, bool nonblocking, unsigned vcpu = 0);

/// Register access through ACCESS/ACCESS_DATA at `access_addr` only; polls
/// BUSY (bounded) and fails on ERROR_RETRY/ERROR_INVALID.
class NbRegisterIo : public RegisterIo {
public:
    NbRegisterIo(xen::sim::SimGuest& g, std::uint64_t access_addr, unsigned vcpu) : g_(g), a_(access_addr), vcpu_(vcpu) {}
    Result<std::uint64_t> read(std::uint32_t off, unsigned size) override;
    Result<void> write(std::uint32_t off, unsigned size, std::uint64_t value) override;
    /// Starts an access without waiting (for BUSY/ERROR_RETRY tests).
    Result<void> start(std::uint32_t cmd, std::uint32_t data);
    /// Polls until BUSY clears; returns the final ACCESS value.
    Result<std::uint32_t> wait_idle(std::chrono::milliseconds timeout = std::chrono::seconds(10));
    /// Traps made so far (all of them on ACCESS/ACCESS_DATA).
    std::uint64_t traps() const { return traps_; }
    std::uint64_t access_addr() const { return a_; }

private:
    xen::sim::SimGuest& g_;
    std::uint64_t a_;
    unsigned vcpu_;
    std::uint64_t traps_ = 0;
};

}  // namespace xv::test
