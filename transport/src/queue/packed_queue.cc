// SPDX-License-Identifier: GPL-2.0-only
// The packed virtqueue, device side (virtio 1.2 §2.8).
#include "packed_queue.h"

#include <fmt/format.h>

#include <atomic>

namespace xv::transport {

namespace {

using ring::kDescIndirect;
using ring::kDescNext;
using ring::kDescWrite;
constexpr std::uint16_t kDescAvail = 1 << 7;   // VIRTQ_DESC_F_AVAIL
constexpr std::uint16_t kDescUsed = 1 << 15;   // VIRTQ_DESC_F_USED
constexpr std::uint16_t kDescKnown = kDescNext | kDescWrite | kDescIndirect | kDescAvail | kDescUsed;
constexpr std::uint16_t kEventEnable = 0;   // RING_EVENT_FLAGS_ENABLE
constexpr std::uint16_t kEventDisable = 1;  // RING_EVENT_FLAGS_DISABLE
constexpr std::uint16_t kEventDesc = 2;     // RING_EVENT_FLAGS_DESC

struct PackedDesc {
    std::uint64_t addr;
    std::uint32_t len;
    std::uint16_t id;
    std::uint16_t flags;
};
static_assert(sizeof(PackedDesc) == 16);

}  // namespace

Result<std::unique_ptr<Virtqueue>> PackedQueue::create(const QueueConfig& cfg, GuestMemory& mem, Strand strand,
                                                       RaiseFn raise, FatalFn fatal) {
    // virtio 1.2 §2.8: packed queue sizes need not be powers of 2; at
    // most 2^15. §2.8.10.1: descriptor ring aligned to 16, event
    // suppression structures to 4.
    XV_TRY(check_geometry(cfg, {"§2.8", "packed", false, "driver", 4, "device", 4}));
    std::unique_ptr<PackedQueue> q(new PackedQueue(cfg, mem, std::move(strand), std::move(raise), std::move(fatal)));
    const RingArea areas[] = {
        {"descriptor ring", cfg.desc_addr, 16 * std::uint64_t(cfg.size), &q->desc_, &q->desc_map_},
        {"driver event suppression", cfg.driver_addr, 4, &q->driver_evt_, &q->driver_map_},
        {"device event suppression", cfg.device_addr, 4, &q->device_evt_, &q->device_map_}};
    XV_TRY(map_rings(cfg, mem, areas));
    return std::unique_ptr<Virtqueue>(std::move(q));
}

bool PackedQueue::head_available() const {
    // virtio 1.2 §2.8.1: the driver writes the head's flags last,
    // after a write barrier; the acquire load pairs with it.
    const std::uint16_t flags = ring::load16(desc_ + 16 * std::size_t(next_avail_) + 14, std::memory_order_acquire);
    const bool avail = (flags & kDescAvail) != 0;
    const bool used = (flags & kDescUsed) != 0;
    return avail == avail_wrap_ && used != avail_wrap_;
}

Result<bool> PackedQueue::parse_next(ChainAccumulator& acc, std::uint16_t& id, std::uint16_t& slots) {
    const std::uint16_t n = cfg_.size;
    if (!head_available()) return false;
    const std::uint16_t head = next_avail_;
    std::uint16_t idx = next_avail_;
    std::uint32_t count = 0;
    for (;;) {
        PackedDesc d;
        std::memcpy(&d, desc_ + 16 * std::size_t(idx), sizeof d);  // one snapshot; never re-read
        ++count;
        if (d.flags & ~kDescKnown)
            return fail_fmt(std::errc::protocol_error,
                             "virtio 1.2 §2.8.13: chain at {}: descriptor {} has unknown flags {:#x}",
                                         head, idx, d.flags);
        if (d.flags & kDescIndirect) {
            // virtio 1.2 §2.8.19 (driver requirements, indirect descriptors).
            if (!cfg_.indirect)
                return fail_fmt(std::errc::protocol_error,
                                 "virtio 1.2 §2.8.19: chain at {}: INDIRECT set but "
                                             "VIRTIO_F_INDIRECT_DESC was not negotiated",
                                             head);
            if ((d.flags & kDescNext) || count > 1)
                return fail_fmt(std::errc::protocol_error,
                                 "virtio 1.2 §2.8.19: chain at {}: an INDIRECT descriptor in a list linked "
                                             "by NEXT",
                                             head);
            if (d.len == 0 || d.len % 16 != 0 || d.len / 16 > max_indirect_)
                return fail_fmt(std::errc::protocol_error,
                                 "virtio 1.2 §2.8.7: chain at {}: indirect table of {} bytes (must be a "
                                             "non-zero multiple of 16, at most {} entries)",
                                             head, d.len, max_indirect_);
            auto m = mem_.map_area(d.addr, d.len, false);  // device-readable: RO
            if (!m) return fail_with(Error{m.error().code, fmt::format("chain at {}: indirect table: {}", head,
                                                                       m.error().message)});
            const std::byte* table = m->first.data();
            for (std::uint32_t i = 0; i < d.len / 16; ++i) {
                PackedDesc e;
                std::memcpy(&e, table + 16 * std::size_t(i), sizeof e);
                // virtio 1.2 §2.8.19: "The driver MUST NOT set any flags
                // except DESC_F_WRITE for descriptors within an indirect
                // descriptor table" (this also excludes nested INDIRECT).
                if (e.flags & ~kDescWrite)
                    return fail_fmt(std::errc::protocol_error,
                                     "virtio 1.2 §2.8.19: chain at {}: indirect entry {} has flags {:#x} "
                                                 "(only WRITE is allowed)",
                                                 head, i, e.flags);
                if (const char* rule = acc.add(e.addr, e.len, (e.flags & kDescWrite) != 0))
                    return fail_fmt(std::errc::protocol_error,
                                     "{} (chain at {}, indirect entry {})", rule, head, i);
            }
            id = d.id;  // virtio 1.2 §2.8.7: the buffer id is the indirect descriptor's
            break;
        }
        if (const char* rule = acc.add(d.addr, d.len, (d.flags & kDescWrite) != 0))
            return fail_fmt(std::errc::protocol_error, "{} (chain at {}, descriptor {})", rule, head, idx);
        if (!(d.flags & kDescNext)) {
            id = d.id;  // virtio 1.2 §2.8.6: the buffer id is in the last descriptor
            break;
        }
        // Bounded walk: a chain holds at most N descriptors (§2.8.6:
        // no chain longer than the queue); one more NEXT is a loop over the ring.
        if (count >= n)
            return fail_fmt(std::errc::protocol_error,
                             "virtio 1.2 §2.8.6: chain at {} is longer than the queue size {}", head, n);
        idx = std::uint16_t(idx + 1 == n ? 0 : idx + 1);
    }
    // Consume `count` ring slots; the wrap counter flips at the end of the ring.
    std::uint32_t next = std::uint32_t(next_avail_) + count;
    if (next >= n) {
        next -= n;
        avail_wrap_ = !avail_wrap_;
    }
    next_avail_ = std::uint16_t(next);
    // virtio 1.2 §2.8.10: with EVENT_IDX, ask for a kick at the next
    // descriptor we will read.
    if (cfg_.event_idx && notify_enabled_) {
        ring::store16(device_evt_, std::uint16_t(next_avail_ | (avail_wrap_ ? 0x8000 : 0)), std::memory_order_relaxed);
        ring::store16(device_evt_ + 2, kEventDesc, std::memory_order_relaxed);
    }
    slots = std::uint16_t(count);
    return true;
}

void PackedQueue::write_used(std::uint16_t id, std::uint16_t slots, std::uint32_t len) {
    std::byte* d = desc_ + 16 * std::size_t(next_used_);
    ring::store32(d + 8, len);
    ring::store16(d + 12, id, std::memory_order_relaxed);
    // virtio 1.2 §2.8.1: a used descriptor has AVAIL == USED ==
    // the device wrap counter; flags are written last, with release
    // ordering, so the driver sees id and len first.
    ring::store16(d + 14, used_wrap_ ? std::uint16_t(kDescAvail | kDescUsed) : std::uint16_t(0),
                  std::memory_order_release);
    std::uint32_t next = std::uint32_t(next_used_) + (slots ? slots : 1);
    if (next >= cfg_.size) {
        next -= cfg_.size;
        used_wrap_ = !used_wrap_;
    }
    next_used_ = std::uint16_t(next);
    const std::uint32_t cap = 2u * cfg_.size;
    unsignalled_ = std::min(cap, unsignalled_ + (slots ? slots : 1u));
}

void PackedQueue::notify_guest() {
    if (broken_ || unsignalled_ == 0) return;
    ++stats_.notify_calls;
    // virtio 1.2 §2.8.10: the used descriptors must be visible before the
    // driver's event suppression structure is read.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const std::uint16_t off_wrap = ring::load16(driver_evt_, std::memory_order_relaxed);
    const std::uint16_t flags = ring::load16(driver_evt_ + 2, std::memory_order_relaxed);
    const std::uint32_t cycle = 2u * cfg_.size;
    const std::uint32_t now = lap_pos(next_used_, used_wrap_);
    bool need;
    if (flags == kEventDisable) {
        need = false;
    } else if (flags == kEventDesc && cfg_.event_idx) {
        // virtio 1.2 §2.8.10: notify once the descriptor at (off, wrap) is
        // used, i.e. it lies among the slots used since the last decision.
        const std::uint16_t off = off_wrap & 0x7fff;
        if (off >= cfg_.size || unsignalled_ >= cycle) {
            need = true;  // out of range or ambiguous: err on the side of notifying
        } else {
            const std::uint32_t ev = lap_pos(off, (off_wrap & 0x8000) != 0);
            const std::uint32_t since_ev = (now + cycle - ev - 1) % cycle;   // (new - event - 1)
            const std::uint32_t since_old = (now + cycle - signalled_pos_) % cycle;  // (new - old)
            need = since_ev < since_old;
        }
    } else {
        // ENABLE, or DESC without EVENT_IDX (§2.8.10: the driver MUST NOT
        // use DESC then; notifying is the safe reading), or an unknown value.
        need = true;
    }
    signalled_pos_ = now;
    unsignalled_ = 0;
    if (need) {
        ++stats_.interrupts;
        if (raise_) raise_();
    } else {
        ++stats_.interrupts_suppressed;
    }
}

void PackedQueue::disable_notifications() {
    notify_enabled_ = false;
    // virtio 1.2 §2.8.10: device event suppression flags DISABLE.
    ring::store16(device_evt_ + 2, kEventDisable, std::memory_order_relaxed);
}

bool PackedQueue::enable_notifications() {
    notify_enabled_ = true;
    if (broken_) return false;
    if (cfg_.event_idx) {
        ring::store16(device_evt_, std::uint16_t(next_avail_ | (avail_wrap_ ? 0x8000 : 0)), std::memory_order_relaxed);
        ring::store16(device_evt_ + 2, kEventDesc, std::memory_order_relaxed);
    } else {
        ring::store16(device_evt_ + 2, kEventEnable, std::memory_order_relaxed);
    }
    // virtio 1.2 §2.8.10: full barrier between enabling and re-checking.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return head_available();
}

}  // namespace xv::transport
