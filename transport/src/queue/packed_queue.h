// SPDX-License-Identifier: GPL-2.0-only
// Internal: the packed virtqueue (virtio 1.2 §2.8), device side.
//
//   descriptor ring (16 * N, align 16)
//   +--------+-------+------+-----------------------------------------+
//   | addr64 | len32 | id16 | flags16: NEXT 1, WRITE 2, INDIRECT 4,   | x N
//   |        |       |      |          AVAIL 1<<7, USED 1<<15         |
//   +--------+-------+------+-----------------------------------------+
//   driver event suppression (driver writes)   device event suppression (we write)
//   +---------------------+---------+          +---------------------+---------+
//   | off 15 | wrap 1 bit | flags16 |          | off 15 | wrap 1 bit | flags16 |
//   +---------------------+---------+          +---------------------+---------+
//   flags: ENABLE 0, DISABLE 1, DESC 2 (only with EVENT_IDX)
//
// Wrap counters (§2.8.1) start at 1. A descriptor is available when its
// AVAIL bit equals the driver wrap counter and USED differs; the device
// marks it used by writing AVAIL = USED = its own wrap counter.
#pragma once

#include "queue_core.h"

namespace xv::transport {

/// A packed virtqueue over three grant-mapped areas.
class PackedQueue final : public QueueCore {
public:
    /// Maps the ring; errors name the area and the rule.
    static Result<std::unique_ptr<Virtqueue>> create(const QueueConfig& cfg, GuestMemory& mem, Strand strand,
                                                     RaiseFn raise, FatalFn fatal);

    void notify_guest() override;
    void disable_notifications() override;
    bool enable_notifications() override;

private:
    using QueueCore::QueueCore;

    Result<bool> parse_next(ChainAccumulator& acc, std::uint16_t& id, std::uint16_t& slots) override;
    void write_used(std::uint16_t id, std::uint16_t slots, std::uint32_t len) override;
    /// True when the descriptor at next_avail_ is available (acquire).
    bool head_available() const;
    /// Position on the 2N-long lap cycle (for event offsets).
    std::uint32_t lap_pos(std::uint16_t idx, bool wrap) const { return idx + (wrap ? 0u : cfg_.size); }

    xen::GrantMapping desc_map_, driver_map_, device_map_;
    std::byte* desc_ = nullptr;
    std::byte* driver_evt_ = nullptr;
    std::byte* device_evt_ = nullptr;
    std::uint16_t next_avail_ = 0;
    bool avail_wrap_ = true;
    std::uint16_t next_used_ = 0;
    bool used_wrap_ = true;
    std::uint32_t signalled_pos_ = 0;  ///< lap position of next_used_ at the last notification decision
    std::uint32_t unsignalled_ = 0;    ///< slots used since (saturates at 2N)
    bool notify_enabled_ = true;
};

}  // namespace xv::transport
