// SPDX-License-Identifier: GPL-2.0-only
// The split virtqueue, device side (virtio 1.2 §2.7).
#include "split_queue.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <bit>

namespace xv::transport {

namespace {

using ring::kDescIndirect;
using ring::kDescNext;
using ring::kDescWrite;
constexpr std::uint16_t kDescKnown = kDescNext | kDescWrite | kDescIndirect;
constexpr std::uint16_t kAvailNoInterrupt = 1;  // VIRTQ_AVAIL_F_NO_INTERRUPT
constexpr std::uint16_t kUsedNoNotify = 1;      // VIRTQ_USED_F_NO_NOTIFY

struct Desc {
    std::uint64_t addr;
    std::uint32_t len;
    std::uint16_t flags;
    std::uint16_t next;
};
static_assert(sizeof(Desc) == 16);

}  // namespace

Result<std::unique_ptr<Virtqueue>> SplitQueue::create(const QueueConfig& cfg, GuestMemory& mem, Strand strand,
                                                      RaiseFn raise, FatalFn fatal) {
    // virtio 1.2 §2.7: "Queue Size value is always a power of 2. The
    // maximum Queue Size value is 32768." Alignment table: descriptor
    // table 16, available ring 2, used ring 4.
    XV_TRY(check_geometry(cfg, {"§2.7", "split", true, "avail", 2, "used", 4}));
    std::unique_ptr<SplitQueue> q(new SplitQueue(cfg, mem, std::move(strand), std::move(raise), std::move(fatal)));
    const std::uint64_t n = cfg.size;
    const RingArea areas[] = {{"descriptor table", cfg.desc_addr, desc_bytes(n), &q->desc_, &q->desc_map_},
                              {"avail ring", cfg.driver_addr, avail_bytes(n), &q->avail_, &q->avail_map_},
                              {"used ring", cfg.device_addr, used_bytes(n), &q->used_, &q->used_map_}};
    XV_TRY(map_rings(cfg, mem, areas));
    // The device starts with notifications enabled (used flags 0,
    // avail_event 0) and used idx as found (0 after a reset).
    q->used_idx_ = ring::load16(q->used_ + 2, std::memory_order_relaxed);
    q->signalled_used_ = q->used_idx_;
    // The size is a power of 2 (checked above): ring slot = index & mask,
    // no division on the data path.
    q->mask_ = std::uint16_t(cfg.size - 1);
    return std::unique_ptr<Virtqueue>(std::move(q));
}

Result<bool> SplitQueue::parse_next(ChainAccumulator& acc, std::uint16_t& id, std::uint16_t& slots) {
    const std::uint16_t n = cfg_.size;
    if (avail_seen_ == last_avail_) {
        // Everything seen so far is consumed: read idx again (once per run
        // of chains, not once per chain). virtio 1.2 §2.7.13.3: the driver
        // issues a write barrier before it updates idx; the acquire load
        // pairs with it so that the ring entries and descriptors below are
        // read after idx.
        const std::uint16_t avail_idx = ring::load16(avail_ + 2, std::memory_order_acquire);
        const std::uint16_t pending = std::uint16_t(avail_idx - last_avail_);
        if (pending == 0) return false;
        // virtio 1.2 §2.7.6: idx counts chains added; it cannot be more than
        // a queue's worth ahead of what the device has consumed.
        if (pending > n)
            return fail_fmt(std::errc::protocol_error,
                             "virtio 1.2 §2.7.6: avail idx {} is {} entries ahead of the {} consumed, "
                                         "more than the queue size {}",
                                         avail_idx, pending, last_avail_, n);
        avail_seen_ = avail_idx;
    }
    const std::uint16_t head = ring::load16(avail_ + 4 + 2 * std::size_t(last_avail_ & mask_), std::memory_order_relaxed);
    // virtio 1.2 §2.7.6: ring[] holds heads of chains, i.e. indexes into
    // the descriptor table.
    if (head >= n)
        return fail_fmt(std::errc::protocol_error,
                         "virtio 1.2 §2.7.6: avail ring entry {} names head {}, beyond the table of {}",
                                     last_avail_, head, n);
    XV_TRY(walk(desc_, n, head, false, acc, head));
    ++last_avail_;
    // virtio 1.2 §2.7.10: with EVENT_IDX the driver kicks when its idx
    // passes avail_event; keep it at the next entry we will read.
    if (cfg_.event_idx && notify_enabled_)
        ring::store16(used_ + 4 + 8 * std::size_t(n), last_avail_, std::memory_order_relaxed);
    id = head;
    slots = 1;
    return true;
}

Result<void> SplitQueue::walk(const std::byte* table, std::uint32_t table_len, std::uint16_t first, bool indirect,
                              ChainAccumulator& acc, std::uint16_t head) {
    std::uint32_t idx = first;
    // Bounded walk: a chain in a table of N entries has at most N
    // descriptors; one more NEXT means a loop. virtio 1.2 §2.7.5.2: "loops
    // in the descriptor chain are forbidden".
    std::uint32_t ttl = table_len;
    const char* where = indirect ? "indirect table" : "descriptor table";
    for (;;) {
        if (ttl == 0)
            return fail_fmt(std::errc::protocol_error,
                             "virtio 1.2 §2.7.5.2: chain {} loops (more than {} descriptors in the {})",
                                         head, table_len, where);
        --ttl;
        Desc d;
        std::memcpy(&d, table + 16 * std::size_t(idx), sizeof d);  // one snapshot; never re-read
        if (d.flags & ~kDescKnown)
            return fail_fmt(std::errc::protocol_error,
                             "virtio 1.2 §2.7.5: chain {}: descriptor {} of the {} has unknown flags {:#x}",
                                         head, idx, where, d.flags);
        if (d.flags & kDescIndirect) {
            // virtio 1.2 §2.7.5.3.1 (driver requirements, indirect descriptors).
            if (!cfg_.indirect)
                return fail_fmt(std::errc::protocol_error,
                                 "virtio 1.2 §2.7.5.3.1: chain {}: INDIRECT set but "
                                             "VIRTIO_F_INDIRECT_DESC was not negotiated",
                                             head);
            if (indirect)
                return fail_fmt(std::errc::protocol_error,
                                 "virtio 1.2 §2.7.5.3.1: chain {}: INDIRECT inside an indirect table", head);
            if (d.flags & kDescNext)
                return fail_fmt(std::errc::protocol_error,
                                 "virtio 1.2 §2.7.5.3.1: chain {}: descriptor {} sets both INDIRECT and NEXT",
                                             head, idx);
            if (d.len == 0 || d.len % 16 != 0 || d.len / 16 > max_indirect_)
                return fail_fmt(std::errc::protocol_error,
                                 "virtio 1.2 §2.7.5.3: chain {}: indirect table of {} bytes (must be a "
                                             "non-zero multiple of 16, at most {} entries)",
                                             head, d.len, max_indirect_);
            // virtio 1.2 §2.7.5.3.2: the WRITE flag of the descriptor naming
            // the table is ignored. The table is device-readable: map it RO.
            auto m = mem_.map_area(d.addr, d.len, false);
            if (!m) return fail_with(Error{m.error().code, fmt::format("chain {}: indirect table: {}", head,
                                                                       m.error().message)});
            // The table stays mapped only while it is walked.
            return walk(m->first.data(), d.len / 16, 0, true, acc, head);
        }
        if (const char* rule = acc.add(d.addr, d.len, (d.flags & kDescWrite) != 0))
            return fail_fmt(std::errc::protocol_error, "{} (chain {}, {} entry {})", rule, head, where, idx);
        if (!(d.flags & kDescNext)) return ok();
        if (d.next >= table_len)
            return fail_fmt(std::errc::protocol_error,
                             "virtio 1.2 §2.7.5: chain {}: next {} beyond the {} of {} entries", head,
                                         d.next, where, table_len);
        idx = d.next;
    }
}

void SplitQueue::write_used(std::uint16_t id, std::uint16_t /*slots*/, std::uint32_t len) {
    std::byte* elem = used_ + 4 + 8 * std::size_t(used_idx_ & mask_);
    ring::store32(elem, id);
    ring::store32(elem + 4, len);
    ++used_idx_;
    if (unsignalled_ < 0x10000) ++unsignalled_;
    // virtio 1.2 §2.7.8 / §2.7.14: the element must be visible before the
    // driver sees idx move: release store.
    ring::store16(used_ + 2, used_idx_, std::memory_order_release);
}

void SplitQueue::write_used_many(const UsedEntry* e, std::size_t n) {
    if (n == 0) return;
    for (std::size_t i = 0; i < n; ++i) {
        std::byte* elem = used_ + 4 + 8 * std::size_t(used_idx_ & mask_);
        ring::store32(elem, e[i].id);
        ring::store32(elem + 4, e[i].len);
        ++used_idx_;
    }
    unsignalled_ = std::uint32_t(std::min<std::size_t>(0x10000, unsignalled_ + n));
    // virtio 1.2 §2.7.8 / §2.7.14: every element must be visible before the
    // driver sees idx move: one release store for all of them (the driver
    // may see idx move by n at once, as after several pushes it reaps late).
    ring::store16(used_ + 2, used_idx_, std::memory_order_release);
}

void SplitQueue::notify_guest() {
    if (broken_ || unsignalled_ == 0) return;  // nothing new to tell
    ++stats_.notify_calls;
    // virtio 1.2 §2.7.7 / §2.7.10: the used idx store must be visible
    // before flags / used_event are read (Linux: virtio_mb before the check).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    bool need;
    if (cfg_.event_idx) {
        // virtio 1.2 §2.7.10: notify when used idx passed used_event since
        // the last notification (vring_need_event). Past 2^16 entries the
        // old index is ambiguous: notify.
        const std::uint16_t ev = ring::load16(avail_ + 4 + 2 * std::size_t(cfg_.size), std::memory_order_relaxed);
        need = unsignalled_ >= 0x10000 || ring::need_event(ev, used_idx_, signalled_used_);
    } else {
        // virtio 1.2 §2.7.7.2: flags 1 (NO_INTERRUPT): SHOULD NOT notify.
        need = !(ring::load16(avail_, std::memory_order_relaxed) & kAvailNoInterrupt);
    }
    signalled_used_ = used_idx_;
    unsignalled_ = 0;
    if (need) {
        ++stats_.interrupts;
        if (raise_) raise_();
    } else {
        ++stats_.interrupts_suppressed;
    }
}

void SplitQueue::disable_notifications() {
    notify_enabled_ = false;
    // virtio 1.2 §2.7.10: without EVENT_IDX, used flags NO_NOTIFY asks the
    // driver not to kick; with it, avail_event simply stops advancing.
    if (!cfg_.event_idx) ring::store16(used_, kUsedNoNotify, std::memory_order_relaxed);
}

bool SplitQueue::enable_notifications() {
    notify_enabled_ = true;
    if (broken_) return false;
    if (cfg_.event_idx)
        ring::store16(used_ + 4 + 8 * std::size_t(cfg_.size), last_avail_, std::memory_order_relaxed);
    else
        ring::store16(used_, 0, std::memory_order_relaxed);
    // virtio 1.2 §2.7.10: publish the request for kicks, then a full
    // barrier, then re-read idx, or a chain added in between is never seen.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return ring::load16(avail_ + 2, std::memory_order_acquire) != last_avail_;
}

}  // namespace xv::transport
