// SPDX-License-Identifier: GPL-2.0-only
// Interrupt lines and MSI sinks over xen::DeviceModel.
#include "xv/transport/interrupt.h"

namespace xv::transport {

namespace {

class SpiLine final : public InterruptLine {
public:
    SpiLine(xen::DeviceModel& dm, xen::DomId domid, std::uint32_t spi) : dm_(dm), domid_(domid), spi_(spi) {}
    // xen-facts §3.3: XEN_DMOP_set_irq_level takes SPIs only (Arm).
    Result<void> set_level(bool level) override { return dm_.set_irq_level(domid_, spi_, level); }

private:
    xen::DeviceModel& dm_;
    xen::DomId domid_;
    std::uint32_t spi_;
};

class PciIntxLine final : public InterruptLine {
public:
    PciIntxLine(xen::DeviceModel& dm, xen::DomId domid, xen::Sbdf sbdf, std::uint8_t intx)
        : dm_(dm), domid_(domid), sbdf_(sbdf), intx_(intx) {}
    Result<void> set_level(bool level) override { return dm_.set_pci_intx_level(domid_, sbdf_, intx_, level); }

private:
    xen::DeviceModel& dm_;
    xen::DomId domid_;
    xen::Sbdf sbdf_;
    std::uint8_t intx_;
};

class DmMsiSink final : public MsiSink {
public:
    DmMsiSink(xen::DeviceModel& dm, xen::DomId domid) : dm_(dm), domid_(domid) {}
    Result<void> send(std::uint64_t addr, std::uint32_t data) override { return dm_.inject_msi(domid_, addr, data); }

private:
    xen::DeviceModel& dm_;
    xen::DomId domid_;
};

}  // namespace

std::unique_ptr<InterruptLine> make_spi_line(xen::DeviceModel& dm, xen::DomId domid, std::uint32_t spi) {
    return std::make_unique<SpiLine>(dm, domid, spi);
}

std::unique_ptr<InterruptLine> make_pci_intx_line(xen::DeviceModel& dm, xen::DomId domid, xen::Sbdf sbdf,
                                                  std::uint8_t intx) {
    return std::make_unique<PciIntxLine>(dm, domid, sbdf, intx);
}

std::unique_ptr<MsiSink> make_msi_sink(xen::DeviceModel& dm, xen::DomId domid) {
    return std::make_unique<DmMsiSink>(dm, domid);
}

}  // namespace xv::transport
