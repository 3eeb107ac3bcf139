// SPDX-License-Identifier: GPL-2.0-only
// virtio-pci modern (virtio 1.2 §4.1): one PCI function with a type-0
// config header, one 64-bit memory BAR and the virtio capabilities, plus
// the Xen non-blocking registers behind a vendor capability
// (docs/nonblocking.md).
//
// Config space (256 bytes):
//   0x00 vendor 0x1af4, device 0x1040 + virtio id   0x08 revision 1, class
//   0x10 BAR0 (64-bit memory, kBar0Size bytes)       0x2c subsystem ids
//   0x34 capability pointer -> 0x40                  0x3d INTA
//   0x40 COMMON_CFG  -> 0x50 NOTIFY_CFG -> 0x64 ISR_CFG -> 0x74 DEVICE_CFG
//   -> 0x84 PCI_CFG -> 0x98 MSI-X -> 0xa4 VENDOR_CFG (Xen, nonblocking only)
//
// BAR0 layout:
//   0x0000 common cfg (0x40)      0x1000 ISR (read-to-clear)
//   0x2000 device cfg             0x3000 notify: queue q at q * 4
//   0x4000 ACCESS, 0x4004 ACCESS_DATA (nonblocking)
//   0x5000 MSI-X table (16 bytes per vector)   0x6000 MSI-X PBA
//
// Interrupts: MSI-X when the guest enabled it (per-vector address/data/
// mask from the table; a masked vector sets its PBA bit and fires on
// unmask), else INTx as a level: asserted while ISR != 0 (and INTx is not
// disabled in the command register), lowered when ISR is read.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "xv/transport/interrupt.h"
#include "xv/transport/nonblocking.h"
#include "xv/transport/virtio_core.h"

namespace xv::transport {

/// Constants of our virtio-pci function layout.
namespace pci_layout {
inline constexpr std::uint16_t kVendorVirtio = 0x1af4;
inline constexpr std::uint16_t kDeviceIdBase = 0x1040;  ///< virtio 1.2 §4.1.2: 0x1040 + device id
inline constexpr std::uint64_t kBar0Size = 0x8000;
inline constexpr std::uint32_t kCommonOff = 0x0000, kCommonLen = 0x40;
inline constexpr std::uint32_t kIsrOff = 0x1000, kIsrLen = 4;
inline constexpr std::uint32_t kDeviceOff = 0x2000, kDeviceMax = 0x1000;
inline constexpr std::uint32_t kNotifyOff = 0x3000, kNotifyMultiplier = 4;
inline constexpr std::uint32_t kNbOff = 0x4000, kNbLen = 8;
inline constexpr std::uint32_t kMsixTableOff = 0x5000, kMsixPbaOff = 0x6000;
inline constexpr std::uint16_t kMaxVectors = 64;
inline constexpr std::uint16_t kNoVector = 0xffff;  ///< VIRTIO_MSI_NO_VECTOR
/// Capability offsets in config space.
inline constexpr std::uint8_t kCapCommon = 0x40, kCapNotify = 0x50, kCapIsr = 0x64, kCapDevice = 0x74;
inline constexpr std::uint8_t kCapPciCfg = 0x84, kCapMsix = 0x98, kCapVendor = 0xa4;
/// virtio_pci_cap cfg_type values (virtio 1.2 §4.1.4).
inline constexpr std::uint8_t kCfgCommon = 1, kCfgNotify = 2, kCfgIsr = 3, kCfgDevice = 4, kCfgPci = 5;
}  // namespace pci_layout

/// Options of one virtio-pci function.
struct PciOptions {
    bool nonblocking = false;          ///< vendor capability with ACCESS/ACCESS_DATA
    std::uint16_t msix_vectors = 0;    ///< 0: one per queue + one for config (at most 64)
    std::uint16_t subsystem_id = 0x40; ///< virtio 1.2 §4.1.2.1: >= 0x40 for modern-only
};

/// Interrupt outputs of one function (either may be null).
struct PciInterrupts {
    std::unique_ptr<InterruptLine> intx;  ///< INTA as a level line
    std::unique_ptr<MsiSink> msi;
};

/// One virtio-pci function: config space + BAR0.
class PciTransport : public CoreHooks, public std::enable_shared_from_this<PciTransport> {
public:
    /// Called after a config write moved, enabled or disabled BAR0 decoding.
    using BarListener = std::function<void(std::optional<std::uint64_t> old_base,
                                           std::optional<std::uint64_t> new_base)>;

    static std::shared_ptr<PciTransport> create(std::shared_ptr<Device> device, TransportEnv env,
                                                PciInterrupts irqs, PciOptions opts = {});
    ~PciTransport() override;

    /// Config space read of `size` (1, 2, 4) bytes at `reg` (0..4095; the
    /// PCIe extended space reads 0). Misaligned: all ones.
    std::uint32_t config_read(std::uint32_t reg, unsigned size);
    /// Config space write.
    void config_write(std::uint32_t reg, unsigned size, std::uint32_t value);

    /// BAR0 access at `offset` (register path: never waits for device work).
    std::uint64_t bar_read(std::uint64_t offset, unsigned size);
    void bar_write(std::uint64_t offset, unsigned size, std::uint64_t value);

    /// Guest address of BAR0 while memory decoding is on, else nullopt.
    std::optional<std::uint64_t> bar0_address() const;
    static constexpr std::uint64_t bar0_size() { return pci_layout::kBar0Size; }
    void set_bar_listener(BarListener l);

    /// Replaces the interrupt outputs (used when the slot is known only at
    /// attach time).
    void set_interrupts(PciInterrupts irqs);

    /// Orderly stop (asynchronous reset of the device).
    void quiesce(std::function<void()> done);

    VirtioCore& core() noexcept { return *core_; }
    std::uint16_t msix_vectors() const noexcept { return nvec_; }
    /// True while INTx is asserted.
    bool intx_asserted() const;
    /// Indirect-access counters (accepted, refused).
    std::pair<std::uint64_t, std::uint64_t> indirect_counts() const;

    void deliver_locked(IrqCause cause, std::uint16_t queue) override;
    void reset_done_locked() override;

private:
    PciTransport(std::shared_ptr<Device> device, TransportEnv env, PciInterrupts irqs, PciOptions opts);
    void build_config_space();
    std::uint64_t access(std::uint32_t offset, unsigned size, bool write, std::uint64_t value, Done done);
    std::uint64_t common_read_locked(std::uint32_t off, unsigned size);
    void common_write_locked(std::uint32_t off, unsigned size, std::uint64_t value, Done& done);
    bool indirect_valid(std::uint32_t offset, unsigned size, bool write) const;
    std::uint32_t cfg_get_locked(std::uint32_t reg, unsigned size) const;
    std::optional<std::uint64_t> bar0_address_locked() const;
    bool msix_enabled_locked() const;
    bool msix_function_masked_locked() const;
    void update_intx_locked();
    void fire_vector_locked(std::uint16_t vec);
    void flush_pending_vectors_locked();
    std::uint64_t pci_cfg_window(bool write, std::uint32_t data);

    struct MsixEntry {
        std::uint64_t addr = 0;
        std::uint32_t data = 0;
        std::uint32_t ctrl = 1;  ///< bit 0: masked (PCI: masked at reset)
    };

    std::shared_ptr<VirtioCore> core_;
    PciInterrupts irqs_;
    PciOptions opts_;
    std::uint16_t nvec_;
    std::array<std::uint8_t, 256> cfg_{};
    std::array<std::uint8_t, 256> wmask_{};
    std::vector<MsixEntry> msix_;
    std::vector<std::uint64_t> pba_;
    bool intx_level_ = false;
    std::uint32_t dfselect_ = 0, gfselect_ = 0;
    std::uint16_t queue_select_ = 0;
    nonblocking::IndirectRegs nb_;
    BarListener bar_listener_;
};

}  // namespace xv::transport
