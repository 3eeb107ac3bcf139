// SPDX-License-Identifier: GPL-2.0-only
// The Device interface: what a virtio device (blk, net, console) implements.
// A device never sees the transport (mmio/pci), the ioreq loop or grants.
//
// Device lifecycle (driven by the transport, virtio 1.2 §2.1, §3.1):
//
//   +-------+  features_ok   +------------+  DRIVER_OK: activate()  +--------+
//   | Reset | -------------> | FeaturesOk | ----------------------> | Active |
//   +-------+                +------------+                         +--------+
//       ^   status := 0 / reset(): async, done() when all in-flight    |   |
//       +----------------------------------------------------------------+   |
//       |                    queue broken / activate error                    v
//       +---------------------------------------------------------- +--------+
//                        (DEVICE_NEEDS_RESET until the driver resets) | Failed |
//                                                                     +--------+
#pragma once

#include <boost/asio/any_io_executor.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "xv/result.h"
#include "xv/transport/virtqueue.h"
#include "xv/xen/types.h"

namespace xv::transport {

/// Virtio device IDs (virtio 1.2 §5).
enum class DeviceId : std::uint32_t { Net = 1, Block = 2, Console = 3 };

/// Transport-independent feature bits (virtio 1.2 §6).
namespace feature {
inline constexpr unsigned kIndirectDesc = 28;
inline constexpr unsigned kEventIdx = 29;
inline constexpr unsigned kVersion1 = 32;
inline constexpr unsigned kAccessPlatform = 33;
inline constexpr unsigned kRingPacked = 34;
inline constexpr unsigned kInOrder = 35;
inline constexpr unsigned kRingReset = 40;
constexpr std::uint64_t bit(unsigned b) { return 1ULL << b; }
}  // namespace feature

/// Where a device lives, for log lines and xenstore paths.
struct DeviceIdentity {
    xen::DomId domid = 0;
    std::string name;  ///< "blk0", "net0", "console0"
    std::string label() const { return "dom" + std::to_string(domid) + " " + name; }
};

/// Given to a device at activation: the negotiated features and its queues.
struct ActivateContext {
    std::uint64_t features = 0;
    /// One entry per queue the driver enabled (nullptr for queues left
    /// disabled); index = queue index.
    std::vector<Virtqueue*> queues;
    /// Tells the driver that config space changed (bumps generation,
    /// raises the config interrupt).
    std::function<void()> config_changed;
    /// Marks the device DEVICE_NEEDS_RESET with a reason (logged).
    std::function<void(const Error&)> needs_reset;
};

/// A virtio device.
///
/// Threading: read_config/write_config are called from the register path
/// and must be quick (no I/O, no waiting). activate/reset run on the
/// device's control strand; queue_notify runs on that queue's strand.
class Device {
public:
    virtual ~Device() = default;

    virtual DeviceId device_id() const = 0;
    virtual const DeviceIdentity& identity() const = 0;

    /// Device-type feature bits offered. The transport adds VERSION_1,
    /// ACCESS_PLATFORM and the ring features it supports.
    virtual std::uint64_t device_features() const = 0;

    virtual std::uint16_t num_queues() const = 0;
    /// Largest size the device accepts for queue `q` (power of two).
    virtual std::uint16_t max_queue_size(std::uint16_t q) const { return q < num_queues() ? 256 : 0; }

    /// Size of the device-specific config space in bytes.
    virtual std::uint32_t config_size() const = 0;
    /// Reads config bytes [offset, offset + out.size()); the transport has
    /// already checked the range against config_size().
    virtual void read_config(std::uint32_t offset, std::span<std::byte> out) const = 0;
    /// Writes config bytes (most fields are read-only: ignore those).
    virtual void write_config(std::uint32_t offset, std::span<const std::byte> data) {
        (void)offset;
        (void)data;
    }

    /// The driver set DRIVER_OK. Start serving. An Error sets
    /// DEVICE_NEEDS_RESET with its message.
    virtual Result<void> activate(ActivateContext ctx) = 0;

    /// The driver reset the device (or the guest is going away): stop all
    /// work, drop every DescriptorChain (their mappings go with them) and
    /// call `done` once nothing touches guest memory any more. `done` may be
    /// called inline.
    virtual void reset(std::function<void()> done) = 0;

    /// Queue `q` was kicked by the driver. Runs on the queue's strand.
    virtual void queue_notify(std::uint16_t q) = 0;
};

}  // namespace xv::transport
