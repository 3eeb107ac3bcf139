// SPDX-License-Identifier: GPL-2.0-only
// Interrupt outputs of a virtio transport, over xen::DeviceModel.
//
//   virtio-mmio on Arm   -> InterruptLine (SPI, edge: raise then lower)
//   virtio-pci INTx      -> InterruptLine (level: Arm SPI via interrupt-map,
//                           x86 set_pci_intx_level)
//   virtio-pci MSI-X     -> MsiSink (x86 inject_msi, address/data from the
//                           guest-programmed MSI-X table)
#pragma once

#include <cstdint>
#include <memory>

#include "xv/result.h"
#include "xv/xen/ioreq.h"
#include "xv/xen/types.h"

namespace xv::transport {

/// One wired interrupt line into a guest.
class InterruptLine {
public:
    virtual ~InterruptLine() = default;
    /// Drives the line to `level`.
    virtual Result<void> set_level(bool level) = 0;
    /// An edge: raise then lower (Arm SPI described as edge-rising).
    Result<void> pulse() {
        XV_TRY(set_level(true));
        return set_level(false);
    }
};

/// Sends message-signalled interrupts into a guest.
class MsiSink {
public:
    virtual ~MsiSink() = default;
    /// Injects one MSI with the address/data the guest programmed.
    virtual Result<void> send(std::uint64_t addr, std::uint32_t data) = 0;
};

/// Arm: SPI `spi` of `domid` through DeviceModel::set_irq_level. `dm` must
/// outlive the line.
std::unique_ptr<InterruptLine> make_spi_line(xen::DeviceModel& dm, xen::DomId domid, std::uint32_t spi);

/// x86: PCI INTx pin (0 = A .. 3 = D) of `sbdf` through set_pci_intx_level.
std::unique_ptr<InterruptLine> make_pci_intx_line(xen::DeviceModel& dm, xen::DomId domid, xen::Sbdf sbdf,
                                                  std::uint8_t intx);

/// MSIs through DeviceModel::inject_msi.
std::unique_ptr<MsiSink> make_msi_sink(xen::DeviceModel& dm, xen::DomId domid);

}  // namespace xv::transport
