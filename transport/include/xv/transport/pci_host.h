// SPDX-License-Identifier: GPL-2.0-only
// A generic ECAM PCI host bridge for Arm guests ("pci-host-ecam-generic"),
// served entirely by the ioreq loop as two MMIO windows, plus the guest
// device-tree fragment that describes it (for xl's `device_tree=`).
//
//   ecam_base  +-------------------------------+  bus 0 only:
//              | bus<<20 | dev<<15 | fn<<12 | reg  (1 MiB per bus)
//              +-------------------------------+
//   mmio_base  +-------------------------------+  32-bit non-prefetchable
//              | BAR0 of each function, placed |  window for the BARs the
//              | by the guest's PCI core       |  guest assigns
//              +-------------------------------+
//   INTx: slot s, pin p (1 = INTA) -> SPI intx_spi_base + (s + p - 1) % 4
//   (the standard swizzle, described by interrupt-map), level-high.
//   MSI: none on Arm (no ITS for this host); guests use INTx.
//
// Default addresses (xen/include/public/arch-arm.h of 4.17 leaves
// 0x33000000-0x37ffffff free between GUEST_VPCI_MEM (ends 0x33000000) and
// GUEST_GNTTAB_BASE 0x38000000; EPAM's proposal put ECAM at 0x33000000):
//   ECAM 0x33000000 (1 MiB), MMIO 0x34000000 (32 MiB), INTx SPIs 44-47
//   (GUEST_VIRTIO_MMIO_SPI_LAST is 43).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "xv/result.h"
#include "xv/transport/pci.h"
#include "xv/transport/region.h"
#include "xv/xen/ioreq.h"

namespace xv::transport {

/// Placement of the host bridge in the guest's physical address space.
struct PciHostConfig {
    std::uint64_t ecam_base = 0x33000000;
    std::uint64_t ecam_size = 0x00100000;  ///< 1 MiB: bus 0
    std::uint64_t mmio_base = 0x34000000;
    std::uint64_t mmio_size = 0x02000000;
    std::uint32_t intx_spi_base = 44;      ///< INTA..INTD -> 4 consecutive SPIs
    xen::DomId backend_domid = 0;          ///< for iommu-map (xen,grant-dma)
    std::uint32_t gic_phandle = 65000;     ///< GUEST_PHANDLE_GIC in libxl's guest DT
    std::uint16_t pci_domain = 0;          ///< linux,pci-domain
};

/// Checks a host configuration (windows aligned, 32-bit MMIO window, no
/// overlap with Xen's fixed guest map or each other, SPIs in range).
Result<void> validate(const PciHostConfig& cfg);

/// Renders the .dts fragment for xl's `device_tree=`: the host node
/// (compatible "pci-host-ecam-generic", reg, ranges, bus-range,
/// interrupt-map, iommu-map to the xen,grant-dma node) under /passthrough.
std::string render_dt_fragment(const PciHostConfig& cfg);

/// The ECAM host bridge: functions on bus 0, function 0 of each slot.
class PciHost : public std::enable_shared_from_this<PciHost> {
public:
    static constexpr unsigned kSlots = 32;

    /// Creates a host after validate().
    static Result<std::shared_ptr<PciHost>> create(PciHostConfig cfg);

    const PciHostConfig& config() const noexcept { return cfg_; }

    /// The SPI that INTx pin `pin` (1 = INTA) of `slot` arrives on.
    std::uint32_t intx_spi(unsigned slot, unsigned pin = 1) const;
    /// First free slot, nullopt when all 32 are taken.
    std::optional<unsigned> free_slot() const;
    /// Attaches `fn` at `slot` (EEXIST when taken, EINVAL out of range).
    Result<void> attach(unsigned slot, std::shared_ptr<PciTransport> fn);
    /// Function at `slot`, or nullptr.
    std::shared_ptr<PciTransport> function(unsigned slot) const;

    /// Creates a virtio-pci function for `device` in the first free slot
    /// with its INTA on the swizzled SPI (level) through `dm`.
    Result<std::shared_ptr<PciTransport>> add_device(std::shared_ptr<Device> device, TransportEnv env,
                                                     xen::DeviceModel& dm, xen::DomId domid, PciOptions opts = {});

    /// The ECAM window (config space of every function).
    std::shared_ptr<MmioRegion> ecam_region();
    /// The BAR window: routes to the function whose BAR0 holds the address.
    std::shared_ptr<MmioRegion> mmio_region();

    /// ECAM decode of an offset into the window.
    struct EcamAddress {
        unsigned bus, device, function, reg;
    };
    static EcamAddress decode(std::uint64_t offset) {
        return {unsigned(offset >> 20) & 0xff, unsigned(offset >> 15) & 0x1f, unsigned(offset >> 12) & 7,
                unsigned(offset & 0xfff)};
    }

    /// Resets every function (orderly stop).
    void quiesce(std::function<void()> done);

    std::string dt_fragment() const { return render_dt_fragment(cfg_); }

private:
    explicit PciHost(PciHostConfig cfg) : cfg_(cfg) {}
    class Ecam;
    class Window;
    friend class Ecam;
    friend class Window;

    PciHostConfig cfg_;
    mutable std::mutex mu_;  ///< guards slots_ (attach vs. access)
    std::array<std::shared_ptr<PciTransport>, kSlots> slots_{};
    std::shared_ptr<MmioRegion> ecam_;
    std::shared_ptr<MmioRegion> window_;
};

}  // namespace xv::transport
