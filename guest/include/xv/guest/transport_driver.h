// SPDX-License-Identifier: GPL-2.0-only
// Guest-side transport drivers over xen/sim: what a frontend kernel does
// with the registers of a virtio-mmio device or a virtio-pci function
// (Linux virtio_mmio / virtio_pci_modern), plainly or only through the two
// Xen non-blocking registers (docs/nonblocking.md). Used by the tests and
// by `xen-virtiod demo`.
//
//   GuestTransport  status, features, queues, notify, ISR, config space
//     +-- MmioGuest   registers at the device's window (libxl's 0x200 slot)
//     +-- PciGuest    ECAM enumeration, BAR sizing/programming, capability walk
//   RegisterIo      plain trapping accesses, or NbRegisterIo (ACCESS/ACCESS_DATA)
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "xv/guest/virtqueue_driver.h"
#include "xv/result.h"
#include "xv/transport/pci_host.h"
#include "xv/xen/sim.h"

namespace xv::guest {

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

}  // namespace xv::guest
