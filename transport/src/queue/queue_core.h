// SPDX-License-Identifier: GPL-2.0-only
// Internal: what split and packed queues share. Ring memory access with the
// orderings the spec asks for, the chain accumulator that enforces the
// ring-independent rules, and the pop/push/abandon skeleton.
//
//   QueueCore::pop_batch()
//     for each chain: parse_next() (ring-specific walk, bounded)
//                       -> ChainAccumulator (readable before writable,
//                          32-bit length sum, unknown flags rejected)
//                     map its buffers (one RO + one RW call), or for a small
//                     readable part queue grant-copy segments
//     one grant copy for the whole batch
//   push(): retire (unmap first) -> write_used() -> release store
#pragma once

#include <atomic>
#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "xv/log.h"
#include "xv/transport/guest_memory.h"
#include "xv/transport/virtqueue.h"

namespace xv::transport {

// Virtio rings are little-endian (virtio 1.2 §2.4); this code reads them
// natively, so only little-endian hosts are supported.
static_assert(std::endian::native == std::endian::little, "virtio rings are little-endian");

namespace ring {

/// Loads a 16-bit ring field with `order` (shared with the guest).
inline std::uint16_t load16(const std::byte* p, std::memory_order order) {
    return std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(const_cast<std::byte*>(p))).load(order);
}
/// Stores a 16-bit ring field with `order`.
inline void store16(std::byte* p, std::uint16_t v, std::memory_order order) {
    std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(p)).store(v, order);
}
/// Stores a 32-bit ring field (relaxed; published by a later release store).
inline void store32(std::byte* p, std::uint32_t v) {
    std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(p)).store(v, std::memory_order_relaxed);
}

/// Descriptor flags both layouts share (virtio 1.2 §2.7.5, §2.8.13).
inline constexpr std::uint16_t kDescNext = 1;      // VIRTQ_DESC_F_NEXT
inline constexpr std::uint16_t kDescWrite = 2;     // VIRTQ_DESC_F_WRITE
inline constexpr std::uint16_t kDescIndirect = 4;  // VIRTQ_DESC_F_INDIRECT

/// virtio 1.2 §2.7.10 (vring_need_event): notify when the driver's event
/// index lies in (old, new]: (u16)(new - event - 1) < (u16)(new - old).
inline bool need_event(std::uint16_t event, std::uint16_t new_idx, std::uint16_t old_idx) {
    return std::uint16_t(new_idx - event - 1) < std::uint16_t(new_idx - old_idx);
}

}  // namespace ring

/// Appends a segment whose place in its grant mapping is known but not its
/// address yet: `at` bytes from its part's start, kept in the segment's
/// data field until place_segments() adds the mapped address. (Built in
/// place: a span built aside and copied in as one 16-byte load would wait
/// for its two 8-byte stores, which do not forward.)
template <class Byte>
void add_pending_segment(SegmentList<Byte>& segs, std::size_t at, std::uint32_t len) {
    segs.emplace_back(reinterpret_cast<Byte*>(std::uintptr_t(at)), std::size_t(len));
}
/// The pending segments' addresses once their part is mapped at `base`.
template <class Byte>
void place_segments(SegmentList<Byte>& segs, std::byte* base) noexcept {
    for (auto& s : segs)
        s = std::span<Byte>(reinterpret_cast<Byte*>(base + reinterpret_cast<std::uintptr_t>(s.data())), s.size());
}

/// Collects one chain's buffers and enforces the rules common to both
/// ring layouts. With a batch (direct()), each buffer goes straight into
/// the batch's open entry and the chain's segments as the chain is walked
/// (one pass, descriptor to grant refs and segment); otherwise into `bufs`.
struct ChainAccumulator {
    std::vector<DmaBuffer> bufs;
    std::uint64_t readable = 0;
    std::uint64_t writable = 0;
    std::uint32_t descriptors = 0;
    bool seen_writable = false;
    const GuestMemory* mem = nullptr;  ///< direct: checks and decodes the buffers
    ChainMapBatch* batch = nullptr;    ///< direct: the batch whose open entry they go to
    ChainSegments* segs = nullptr;     ///< the chain's segments (direct: pending until mapped)
    bool refused = false;              ///< direct: a buffer was refused (see bad)
    DmaBuffer bad;                     ///< direct: the first buffer refused

    bool direct() const noexcept { return batch != nullptr; }

    void clear() noexcept {
        bufs.clear();
        readable = writable = 0;
        descriptors = 0;
        seen_writable = false;
        refused = false;
        segs->clear();
    }

    /// Adds a direct descriptor; returns the rule it breaks, or nullptr.
    /// A buffer the grant layer refuses (address, page limit) is not a
    /// rule: the walk goes on and `refused` is reported after it.
    const char* add(std::uint64_t addr, std::uint32_t len, bool write) {
        ++descriptors;
        // virtio 1.2 §2.7.4.2 / §2.8.4.2: "The driver MUST place any
        // device-writable descriptor elements after any device-readable".
        if (!write && seen_writable) [[unlikely]]
            return "virtio 1.2 §2.7.4.2: a device-readable descriptor after a device-writable one";
        seen_writable |= write;
        // virtio 1.2 §2.7.5.2 / §2.8.5: a chain is at most 2^32 bytes
        // (our sum must fit 32 bits for the used length).
        if (readable + writable + len > 0xffffffffULL) [[unlikely]]
            return "virtio 1.2 §2.7.5.2: total chain length exceeds 2^32 - 1 bytes";
        (write ? writable : readable) += len;
        if (batch) {
            std::size_t at;
            if (refused) [[unlikely]]
                return nullptr;
            if (!mem->add_buffer(*batch, addr, len, write, at)) [[unlikely]] {
                refused = true;
                bad = DmaBuffer{addr, len, write};
            } else if (len != 0) {
                if (write)
                    add_pending_segment(segs->writable, at, len);
                else
                    add_pending_segment(segs->readable, at, len);
            }
        } else {
            bufs.push_back(DmaBuffer{addr, len, write});
        }
        return nullptr;
    }
};

/// The skeleton both queue layouts share.
class QueueCore : public Virtqueue {
public:
    QueueCore(QueueConfig cfg, GuestMemory& mem, Strand strand, RaiseFn raise, FatalFn fatal);
    ~QueueCore() override;

    Result<std::optional<DescriptorChain>> pop() override;
    Result<std::size_t> pop_batch(std::size_t max, std::vector<DescriptorChain>& out) override;
    void push(DescriptorChain&& chain, std::uint32_t written) override;
    void push_batch(std::span<DescriptorChain> chains, std::span<const std::uint32_t> written) override;

protected:
    void abandon(DescriptorChain&& chain) noexcept override;

    /// A ring area the queue maps RW for its lifetime.
    struct RingArea {
        const char* what;           ///< "descriptor table", named in errors
        std::uint64_t addr = 0;     ///< grant DMA address
        std::uint64_t len = 0;
        std::byte** ptr = nullptr;  ///< out: the area
        xen::GrantMapping* map = nullptr;  ///< out: keeps it mapped
    };
    /// What a ring layout asks of QueueConfig (virtio 1.2 §2.7 split,
    /// §2.8 packed): its size range and the alignment of each area.
    struct Geometry {
        const char* section;        ///< "§2.7"
        const char* layout;         ///< "split"
        bool pow2;                  ///< the size must be a power of 2
        const char* driver_area;    ///< "avail" / "driver"
        std::uint32_t driver_align;
        const char* device_area;    ///< "used" / "device"
        std::uint32_t device_align;
    };
    /// create()'s checks, shared by both layouts: size in 1..32768 (a power
    /// of 2 when the layout asks), descriptor area aligned to 16, the two
    /// other areas as `g` says. The error names the queue and the rule.
    static Result<void> check_geometry(const QueueConfig& cfg, const Geometry& g);

    /// Maps each area RW in one grant call (the frontend grants its coherent
    /// ring memory RW, xen-facts §1.1); an error names the queue and the area.
    static Result<void> map_rings(const QueueConfig& cfg, GuestMemory& mem, std::span<const RingArea> areas);

    /// Walks the next available chain into `acc` (and sets id/slots).
    /// false when the ring is empty. An Error names the rule broken.
    virtual Result<bool> parse_next(ChainAccumulator& acc, std::uint16_t& id, std::uint16_t& slots) = 0;
    /// Writes one used entry (id, len) and publishes it (release).
    virtual void write_used(std::uint16_t id, std::uint16_t slots, std::uint32_t len) = 0;
    /// One used entry to write (push_batch()).
    struct UsedEntry {
        std::uint16_t id;
        std::uint16_t slots;
        std::uint32_t len;
    };
    /// Writes `n` used entries in order and publishes them; the default
    /// calls write_used() for each (a layout may publish them with one
    /// release store).
    virtual void write_used_many(const UsedEntry* e, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) write_used(e[i].id, e[i].slots, e[i].len);
    }

    /// Fails the queue with `msg` (logged once per rate-limit window).
    [[gnu::cold]] Error fail_with(std::errc code, const std::string& msg);
    /// Fails the queue with an error from below (grant map, copy).
    [[gnu::cold]] Error fail_with(Error e);
    /// fail_with(code, fmt::format(f, a...)) out of line: the message is
    /// built in a cold function, so that the walk's fast path keeps its
    /// registers (no spills for the arguments of an error it never takes).
    template <class... A>
    [[gnu::cold, gnu::noinline]] Error fail_fmt(std::errc code, fmt::format_string<A...> f, A... a) {
        return fail_with(code, fmt::format(f, std::move(a)...));
    }

    GuestMemory& mem_;
    xv::log::RateLimit log_limit_;
    std::uint16_t max_indirect_ = 0;
    std::uint64_t in_flight_ = 0;

private:
    /// Sets up the chain out.back() from acc_: small readable parts become
    /// grant-copy segments, the rest is added to batch_ (see map_pending()).
    Result<void> prepare(std::vector<DescriptorChain>& out, std::vector<xen::GrantCopySegment>& segs);
    /// Maps batch_ in one grant call and hands each entry's mappings and
    /// spans to its chain (out[pending_first_ ...]).
    Result<void> map_pending(std::vector<DescriptorChain>& out);

    ChainAccumulator acc_;
    ChainMapBatch batch_;
    std::vector<std::size_t> batch_chain_;  ///< per batch_ entry: its chain's index in `out`
    std::vector<DmaBuffer> subset_;
    std::vector<xen::GrantCopySegment> segs_;
    std::vector<DescriptorChain> one_;
};

}  // namespace xv::transport
