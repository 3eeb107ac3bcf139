// SPDX-License-Identifier: GPL-2.0-only
// Internal: the split virtqueue (virtio 1.2 §2.7), device side.
//
//   descriptor table (16 * N, align 16)   avail ring (6 + 2N, align 2)
//   +--------+------+-------+------+      +-------+-----+---------+------------+
//   | addr64 | len32| flags | next | x N  | flags | idx | ring[N] | used_event |
//   +--------+------+-------+------+      +-------+-----+---------+------------+
//   used ring (6 + 8N, align 4)
//   +-------+-----+----------------------+-------------+
//   | flags | idx | ring[N] {id32, len32} | avail_event |
//   +-------+-----+----------------------+-------------+
//
// The three areas are grant-mapped RW once, at creation, for the queue's
// lifetime (the frontend grants its coherent ring memory RW).
#pragma once

#include "queue_core.h"

namespace xv::transport {

/// A split virtqueue over three grant-mapped ring areas.
class SplitQueue final : public QueueCore {
public:
    /// Ring area sizes for `n` entries (virtio 1.2 §2.7, with event fields).
    static constexpr std::uint64_t desc_bytes(std::uint64_t n) { return 16 * n; }
    static constexpr std::uint64_t avail_bytes(std::uint64_t n) { return 6 + 2 * n; }
    static constexpr std::uint64_t used_bytes(std::uint64_t n) { return 6 + 8 * n; }

    /// Maps the rings; errors name the area and the rule.
    static Result<std::unique_ptr<Virtqueue>> create(const QueueConfig& cfg, GuestMemory& mem, Strand strand,
                                                     RaiseFn raise, FatalFn fatal);

    void notify_guest() override;
    void disable_notifications() override;
    bool enable_notifications() override;

private:
    using QueueCore::QueueCore;

    Result<bool> parse_next(ChainAccumulator& acc, std::uint16_t& id, std::uint16_t& slots) override;
    void write_used(std::uint16_t id, std::uint16_t slots, std::uint32_t len) override;
    void write_used_many(const UsedEntry* e, std::size_t n) override;
    Result<void> walk(const std::byte* table, std::uint32_t table_len, std::uint16_t first, bool indirect,
                      ChainAccumulator& acc, std::uint16_t head);

    xen::GrantMapping desc_map_, avail_map_, used_map_;
    std::byte* desc_ = nullptr;
    std::byte* avail_ = nullptr;
    std::byte* used_ = nullptr;
    std::uint16_t mask_ = 0;           ///< size - 1 (the size is a power of 2)
    std::uint16_t last_avail_ = 0;     ///< next avail ring slot to consume
    std::uint16_t avail_seen_ = 0;     ///< avail idx last read (acquire); entries up to it are readable
    std::uint16_t used_idx_ = 0;       ///< our copy of used->idx
    std::uint16_t signalled_used_ = 0; ///< used idx at the last notification decision
    std::uint32_t unsignalled_ = 0;    ///< used entries since then (saturates at 2^16)
    bool notify_enabled_ = true;
};

}  // namespace xv::transport
