// SPDX-License-Identifier: GPL-2.0-only
// virtio-mmio version 2 (virtio 1.2 §4.2.2), with the optional Xen
// non-blocking registers (docs/nonblocking.md).
//
// Register map (one 0x200 window per device, as libxl allocates them):
//
//   0x000 MagicValue "virt" (0x74726976), "vmnb" with nonblocking
//   0x004 Version 2           0x008 DeviceID          0x00c VendorID
//   0x010 DeviceFeatures      0x014 DeviceFeaturesSel
//   0x018 ACCESS *            0x01c ACCESS_DATA *      (* nonblocking only)
//   0x020 DriverFeatures      0x024 DriverFeaturesSel
//   0x030 QueueSel            0x034 QueueNumMax       0x038 QueueNum
//   0x044 QueueReady          0x050 QueueNotify
//   0x060 InterruptStatus     0x064 InterruptACK      0x070 Status
//   0x080/84 QueueDesc        0x090/94 QueueDriver    0x0a0/a4 QueueDevice
//   0x0ac SHMSel  0x0b0/b4 SHMLen  0x0b8/bc SHMBase (no regions: all ones)
//   0x0c0 QueueReset (0: RING_RESET not offered)      0x0fc ConfigGeneration
//   0x100.. device config space (8/16/32/64-bit accesses)
//
// Control registers take aligned 32-bit accesses only (virtio 1.2
// §4.2.2.2); others read 0 and are ignored, with a rate-limited log line.
// Interrupts: InterruptStatus bit + an edge on the SPI (libxl describes it
// as edge-rising).
#pragma once

#include <cstdint>
#include <memory>

#include "xv/transport/interrupt.h"
#include "xv/transport/nonblocking.h"
#include "xv/transport/region.h"
#include "xv/transport/virtio_core.h"

namespace xv::transport {

/// virtio-mmio register offsets (virtio 1.2 §4.2.2).
namespace mmio_reg {
inline constexpr std::uint32_t kMagic = 0x000, kVersion = 0x004, kDeviceId = 0x008, kVendorId = 0x00c;
inline constexpr std::uint32_t kDeviceFeatures = 0x010, kDeviceFeaturesSel = 0x014;
inline constexpr std::uint32_t kDriverFeatures = 0x020, kDriverFeaturesSel = 0x024;
inline constexpr std::uint32_t kQueueSel = 0x030, kQueueNumMax = 0x034, kQueueNum = 0x038;
inline constexpr std::uint32_t kQueueReady = 0x044, kQueueNotify = 0x050;
inline constexpr std::uint32_t kInterruptStatus = 0x060, kInterruptAck = 0x064, kStatus = 0x070;
inline constexpr std::uint32_t kQueueDescLow = 0x080, kQueueDescHigh = 0x084;
inline constexpr std::uint32_t kQueueDriverLow = 0x090, kQueueDriverHigh = 0x094;
inline constexpr std::uint32_t kQueueDeviceLow = 0x0a0, kQueueDeviceHigh = 0x0a4;
inline constexpr std::uint32_t kShmSel = 0x0ac, kShmLenLow = 0x0b0, kShmLenHigh = 0x0b4;
inline constexpr std::uint32_t kShmBaseLow = 0x0b8, kShmBaseHigh = 0x0bc, kQueueReset = 0x0c0;
inline constexpr std::uint32_t kConfigGeneration = 0x0fc, kConfig = 0x100;
inline constexpr std::uint32_t kMagicVirt = 0x74726976;  ///< "virt"
inline constexpr std::uint64_t kWindowSize = 0x200;      ///< libxl VIRTIO_MMIO_DEV_SIZE
}  // namespace mmio_reg

/// Options of one virtio-mmio device.
struct MmioOptions {
    bool nonblocking = false;           ///< ACCESS/ACCESS_DATA + magic "vmnb"
    std::uint32_t vendor_id = 0x58656e20;  ///< "Xen "
    std::uint64_t window_size = mmio_reg::kWindowSize;
};

/// One virtio-mmio device: a thin register decoder over VirtioCore.
class MmioTransport : public MmioRegion, public CoreHooks, public std::enable_shared_from_this<MmioTransport> {
public:
    /// Creates the transport; `irq` is the device's SPI (edge).
    static std::shared_ptr<MmioTransport> create(std::shared_ptr<Device> device, TransportEnv env,
                                                 std::unique_ptr<InterruptLine> irq, MmioOptions opts = {});
    ~MmioTransport() override;

    std::uint64_t region_size() const override { return opts_.window_size; }
    std::uint64_t mmio_read(std::uint64_t offset, unsigned size) override;
    void mmio_write(std::uint64_t offset, unsigned size, std::uint64_t value) override;
    void quiesce(std::function<void()> done) override;

    /// The shared core (status, queues) for tests and diagnostics.
    VirtioCore& core() noexcept { return *core_; }
    /// Indirect-access counters (accepted, refused).
    std::pair<std::uint64_t, std::uint64_t> indirect_counts() const;

    void deliver_locked(IrqCause cause, std::uint16_t queue) override;
    void reset_done_locked() override {}

private:
    MmioTransport(std::shared_ptr<Device> device, TransportEnv env, std::unique_ptr<InterruptLine> irq,
                  MmioOptions opts);
    /// A register access with its asynchronous effect reported to `done`.
    std::uint64_t access(std::uint32_t offset, unsigned size, bool write, std::uint64_t value, Done done);
    std::uint64_t read_locked(std::uint32_t offset);
    void write_locked(std::uint32_t offset, std::uint32_t value, Done& done);
    bool indirect_valid(std::uint32_t offset, unsigned size, bool write) const;

    std::shared_ptr<VirtioCore> core_;
    std::unique_ptr<InterruptLine> irq_;
    MmioOptions opts_;
    // Selector registers (under core_->mutex()).
    std::uint32_t device_features_sel_ = 0;
    std::uint32_t driver_features_sel_ = 0;
    std::uint32_t queue_sel_ = 0;
    std::uint32_t shm_sel_ = 0;
    nonblocking::IndirectRegs nb_;
};

}  // namespace xv::transport
