// SPDX-License-Identifier: GPL-2.0-only
// Virtqueues (virtio 1.2 §2.7 split, §2.8 packed) over grant-mapped memory,
// and the DescriptorChain a device works on.
//
// A device never sees a guest address. pop() walks the ring once, validates
// the chain with every walk bounded, maps all of its buffers through grants
// in one batched call (RO for device-readable, RW for device-writable pages;
// pop_batch() maps all the chains it pops in that one call, each chain
// still released on its own) and yields a move-only DescriptorChain with
// bounded Reader/Writer views. A chain keeps its grant handles inline and
// its segments in storage its queue reuses: popping allocates nothing on a
// warm queue, and moving a chain copies no segment list. The chain goes
// back to the used ring exactly once (push/complete); its grant mappings
// are released right before the used entry is published, as Linux requires
// (drivers/xen/grant-dma-ops.c refuses to end access to a mapped ref).
//
//   lifecycle of a chain:
//     avail ring --pop()--> DescriptorChain (mapped) --complete()--> used ring
//                                   |  (dropped without complete: returned
//                                   +-- with len 0 at destruction, logged)
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/strand.hpp>
#include <boost/container/small_vector.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "xv/result.h"
#include "xv/xen/grant.h"
#include "xv/xen/types.h"

namespace xv::transport {

class GuestMemory;
class Virtqueue;

/// The strand a queue's data path runs on.
using Strand = boost::asio::strand<boost::asio::any_io_executor>;

/// Segments of a chain kept inline: a chain of up to this many buffers per
/// direction needs no heap allocation (a virtio-blk request has 1 + 2).
inline constexpr std::size_t kInlineSegments = 4;

/// A list of host byte segments, inline up to kInlineSegments.
template <class Byte>
using SegmentList = boost::container::small_vector<std::span<Byte>, kInlineSegments>;


/// Bounded sequential view over a list of host byte segments. A view made
/// by a chain (reader(), writer()) refers to the chain's segment list,
/// which its queue keeps at a fixed address: the view stays valid when the
/// chain is moved, until the chain is completed. One made by split_at()
/// owns a copy of its list. Reader reads device-readable buffers; Writer
/// fills device-writable ones.
template <class Byte>
class SegmentCursor {
public:
    using Segment = std::span<Byte>;
    SegmentCursor() = default;
    /// Over a copy of `segs` (kept on the heap: a view pays nothing for it).
    explicit SegmentCursor(std::span<const Segment> segs)
        : own_(std::make_unique<SegmentList<Byte>>(segs.begin(), segs.end())) {
        segs_ = {own_->data(), own_->size()};
        for (auto& s : segs_) remaining_ += s.size();
    }
    /// A view over `segs` (which must outlive the cursor) with their total
    /// size known (`total` is the sum of segs' sizes).
    SegmentCursor(std::span<const Segment> segs, std::size_t total) noexcept : segs_(segs), remaining_(total) {}

    SegmentCursor(const SegmentCursor& o)
        : own_(o.own_ ? std::make_unique<SegmentList<Byte>>(*o.own_) : nullptr), segs_(o.segs_), idx_(o.idx_),
          off_(o.off_), remaining_(o.remaining_) {
        if (own_) segs_ = {own_->data(), own_->size()};
    }
    // An owned list is on the heap: moving the pointer keeps segs_ valid.
    SegmentCursor(SegmentCursor&& o) noexcept = default;
    SegmentCursor& operator=(const SegmentCursor& o) {
        if (this != &o) *this = SegmentCursor(o);
        return *this;
    }
    SegmentCursor& operator=(SegmentCursor&& o) noexcept = default;

    /// Bytes left.
    std::size_t available() const noexcept { return remaining_; }

    /// Up to `n` bytes as segments (for readv/writev, io_uring), consumed.
    SegmentList<Byte> take(std::size_t n) {
        SegmentList<Byte> out;
        consume(n, [&](Segment s) { out.push_back(s); });
        return out;
    }

    /// Splits off the first `n` bytes (or fewer) into a new cursor (owning
    /// its list); this cursor continues after them.
    SegmentCursor split_at(std::size_t n) {
        auto t = take(n);
        return SegmentCursor(std::span<const Segment>(t.data(), t.size()));
    }

    /// Skips up to `n` bytes; returns how many were skipped.
    std::size_t skip(std::size_t n) {
        std::size_t before = remaining_;
        consume(n, [](Segment) {});
        return before - remaining_;
    }

protected:
    /// The current segment when it holds `n` more bytes, else nullptr; with
    /// them consumed. The fast path of read() and write(): one memcpy()
    /// whose size the compiler sees for read_obj() and write_obj().
    Byte* take_contiguous(std::size_t n) noexcept {
        if (idx_ >= segs_.size() || segs_[idx_].size() - off_ < n) return nullptr;
        Byte* p = segs_[idx_].data() + off_;
        off_ += n;
        remaining_ -= n;
        if (off_ == segs_[idx_].size()) {
            ++idx_;
            off_ = 0;
        }
        return p;
    }

    /// Calls f(segment) for up to `n` bytes, consumed (no list built).
    template <class F>
    void consume(std::size_t n, F&& f) {
        while (n > 0 && idx_ < segs_.size()) {
            const auto& s = segs_[idx_];
            std::size_t k = std::min(n, s.size() - off_);
            if (k) f(s.subspan(off_, k));
            off_ += k;
            n -= k;
            remaining_ -= k;
            if (off_ == s.size()) {
                ++idx_;
                off_ = 0;
            }
        }
    }

private:
    std::unique_ptr<SegmentList<Byte>> own_;  ///< the list, when this cursor owns it (split_at())
    std::span<const Segment> segs_;           ///< the list walked (*own_ or a chain's)
    std::size_t idx_ = 0;
    std::size_t off_ = 0;
    std::size_t remaining_ = 0;
};

/// Reads device-readable buffers.
class Reader : public SegmentCursor<const std::byte> {
public:
    using SegmentCursor::SegmentCursor;

    /// Copies exactly out.size() bytes; false (and nothing consumed) if
    /// fewer are available.
    bool read(std::span<std::byte> out) {
        if (out.size() > available()) return false;
        if (const std::byte* p = take_contiguous(out.size())) {
            if (!out.empty()) std::memcpy(out.data(), p, out.size());
            return true;
        }
        std::size_t done = 0;
        consume(out.size(), [&](std::span<const std::byte> s) {
            std::memcpy(out.data() + done, s.data(), s.size());
            done += s.size();
        });
        return true;
    }

    /// Reads one trivially copyable object (little-endian wire layout).
    template <class T>
    std::optional<T> read_obj() {
        static_assert(std::is_trivially_copyable_v<T>);
        T v;
        if (!read(std::as_writable_bytes(std::span<T, 1>(&v, 1)))) return std::nullopt;
        return v;
    }
};

/// Writes device-writable buffers; counts what was written.
class Writer : public SegmentCursor<std::byte> {
public:
    using SegmentCursor::SegmentCursor;

    /// Copies all of `in`; false (and nothing written) if it does not fit.
    bool write(std::span<const std::byte> in) {
        if (in.size() > available()) return false;
        if (std::byte* p = take_contiguous(in.size())) {
            if (!in.empty()) std::memcpy(p, in.data(), in.size());
            written_ += in.size();
            return true;
        }
        std::size_t done = 0;
        consume(in.size(), [&](std::span<std::byte> s) {
            std::memcpy(s.data(), in.data() + done, s.size());
            done += s.size();
        });
        written_ += in.size();
        return true;
    }

    template <class T>
    bool write_obj(const T& v) {
        static_assert(std::is_trivially_copyable_v<T>);
        return write(std::as_bytes(std::span<const T, 1>(&v, 1)));
    }

    /// Records bytes filled directly through take() (e.g. by io_uring).
    void add_written(std::size_t n) noexcept { written_ += n; }
    std::size_t written() const noexcept { return written_; }

private:
    std::size_t written_ = 0;
};

/// A chain's host segments. Its queue keeps them (one per chain in
/// flight, reused: popping allocates nothing on a warm queue) at a fixed
/// address, so that moving a chain moves a pointer and the views made from
/// it stay valid.
struct ChainSegments {
    SegmentList<const std::byte> readable;
    SegmentList<std::byte> writable;
    std::vector<std::byte> copied;  ///< snapshot of small device-readable data
    ChainSegments* next_free = nullptr;

    void clear() noexcept {
        readable.clear();
        writable.clear();
        copied.clear();
    }
};

/// A validated descriptor chain with its buffers mapped. Move-only.
class DescriptorChain {
public:
    // User-provided (not "= default"): a value-initialized chain, as
    // vector::emplace_back() makes, then skips zero-filling the whole
    // object (a rep stos) before the member initializers run.
    DescriptorChain() noexcept {}
    DescriptorChain(DescriptorChain&& o) noexcept { take(o); }
    DescriptorChain& operator=(DescriptorChain&&) noexcept;
    DescriptorChain(const DescriptorChain&) = delete;
    DescriptorChain& operator=(const DescriptorChain&) = delete;
    ~DescriptorChain() {
        if (queue_) drop();
    }

    /// Head index (split) or buffer id (packed).
    std::uint16_t id() const noexcept { return id_; }
    /// Descriptors this chain used in the ring (packed: slots to skip).
    std::uint16_t ring_slots() const noexcept { return slots_; }
    /// Total device-readable / device-writable bytes.
    std::uint32_t readable_bytes() const noexcept { return readable_len_; }
    std::uint32_t writable_bytes() const noexcept { return writable_len_; }

    /// A fresh view over the device-readable buffers (valid while the
    /// chain is live, wherever it is moved).
    Reader reader() const noexcept { return Reader(readable_segments(), readable_len_); }
    /// A fresh view over the device-writable buffers (valid while the
    /// chain is live, wherever it is moved).
    Writer writer() const noexcept { return Writer(writable_segments(), writable_len_); }

    /// The device-readable buffers, in chain order (empty ones left out).
    std::span<const std::span<const std::byte>> readable_segments() const noexcept {
        if (!segs_) return {};
        return {segs_->readable.data(), segs_->readable.size()};
    }
    /// The device-writable buffers, in chain order (empty ones left out).
    std::span<const std::span<std::byte>> writable_segments() const noexcept {
        if (!segs_) return {};
        return {segs_->writable.data(), segs_->writable.size()};
    }
    /// True when the device-readable bytes were grant-copied into a private
    /// snapshot instead of mapped (QueueConfig::copy_readable_max); the
    /// driver can then no longer change them under the device.
    bool readable_copied() const noexcept { return segs_ && !segs_->copied.empty(); }

    /// True until the chain was completed or moved from.
    bool valid() const noexcept { return queue_ != nullptr; }

    /// Releases the grant mappings now (done automatically at complete).
    void unmap() noexcept {
        map_.reset();
        map2_.reset();
    }

private:
    friend class Virtqueue;
    friend class QueueCore;
    friend class SplitQueue;
    friend class PackedQueue;
    /// Moves `o` in (this chain is empty); `o` is left empty.
    void take(DescriptorChain& o) noexcept {
        queue_ = o.queue_;
        id_ = o.id_;
        slots_ = o.slots_;
        readable_len_ = o.readable_len_;
        writable_len_ = o.writable_len_;
        segs_ = o.segs_;
        map_ = std::move(o.map_);
        map2_ = std::move(o.map2_);
        o.queue_ = nullptr;
        o.segs_ = nullptr;
        o.readable_len_ = o.writable_len_ = 0;
    }
    /// A live chain dropped without complete: back to its queue (len 0).
    void drop() noexcept;

    Virtqueue* queue_ = nullptr;
    std::uint16_t id_ = 0;
    std::uint16_t slots_ = 0;
    std::uint32_t readable_len_ = 0;
    std::uint32_t writable_len_ = 0;
    ChainSegments* segs_ = nullptr;  ///< kept by queue_ (null when empty)
    // The grant mappings of a chain are one batch entry: one or two handles.
    xen::GrantMapping map_, map2_;
};

/// How a queue was set up by the driver (values from the transport's registers).
struct QueueConfig {
    std::uint16_t index = 0;
    std::uint16_t size = 0;        ///< entries; power of two for split rings
    std::uint64_t desc_addr = 0;   ///< grant DMA addresses
    std::uint64_t driver_addr = 0; ///< avail ring / driver event suppression
    std::uint64_t device_addr = 0; ///< used ring / device event suppression
    bool packed = false;           ///< VIRTIO_F_RING_PACKED negotiated
    bool event_idx = false;        ///< VIRTIO_F_EVENT_IDX negotiated
    bool indirect = false;         ///< VIRTIO_F_INDIRECT_DESC negotiated
    std::string log_name;          ///< "dom5 blk0 q0" for log lines
    /// Largest indirect table (entries) accepted; 0 = the queue size
    /// (virtio 1.2 §2.7.5.3.1: a chain is never longer than the queue size).
    std::uint16_t max_indirect = 0;
    /// Chains whose device-readable bytes total at most this many are not
    /// mapped for reading: those bytes are grant-copied into the chain, one
    /// copy call per pop_batch() for all its chains. 0 = always map.
    std::uint32_t copy_readable_max = 0;
};

/// Queue statistics.
struct QueueStats {
    std::uint64_t popped = 0;
    std::uint64_t completed = 0;
    std::uint64_t bytes_written = 0;
    std::uint64_t interrupts = 0;
    std::uint64_t interrupts_suppressed = 0;
    std::uint64_t errors = 0;
    std::uint64_t chains_copied = 0;   ///< chains whose readable bytes were grant-copied
    std::uint64_t abandoned = 0;       ///< chains dropped without complete (returned with len 0)
    std::uint64_t notify_calls = 0;    ///< notify_guest() calls with new used entries
};

/// A virtqueue, device side. All calls for one queue run on its strand.
class Virtqueue {
public:
    /// `raise` sends a used-buffer notification to the guest; `fatal` is
    /// called once when the driver broke the queue (the transport then sets
    /// DEVICE_NEEDS_RESET, virtio 1.2 §2.1.2).
    using RaiseFn = std::function<void()>;
    using FatalFn = std::function<void(const Error&)>;

    virtual ~Virtqueue() = default;

    std::uint16_t index() const noexcept { return cfg_.index; }
    std::uint16_t size() const noexcept { return cfg_.size; }
    const std::string& name() const noexcept { return cfg_.log_name; }
    Strand& strand() noexcept { return strand_; }

    /// Next available chain, nullopt when the ring is empty. An Error means
    /// the driver broke the ring or a grant could not be mapped; fatal()
    /// has then been called and the queue stays broken until reset.
    virtual Result<std::optional<DescriptorChain>> pop() = 0;

    /// Pops up to `max` chains and appends them to `out`; returns how many.
    /// Readable bytes of small chains are grant-copied in one call for the
    /// whole batch (QueueConfig::copy_readable_max). On an Error nothing is
    /// appended and the queue is broken, as for pop().
    virtual Result<std::size_t> pop_batch(std::size_t max, std::vector<DescriptorChain>& out) {
        std::size_t n = 0;
        while (n < max) {
            auto r = pop();
            if (!r) return std::move(r).error();
            if (!*r) break;
            out.push_back(std::move(**r));
            ++n;
        }
        return n;
    }

    /// Puts a chain on the used ring with `written` bytes (unmaps first).
    /// Does not notify the guest.
    virtual void push(DescriptorChain&& chain, std::uint32_t written) = 0;

    /// push() for each chain in order, chains[i] with written[i] bytes (0
    /// when `written` is shorter), but every chain's grant mappings are
    /// released before the first of their used entries is published, in
    /// one unmap call for several chains where the grant device allows.
    /// Chains not of this queue are skipped as by push(). Does not notify.
    virtual void push_batch(std::span<DescriptorChain> chains, std::span<const std::uint32_t> written) {
        for (std::size_t i = 0; i < chains.size(); ++i)
            push(std::move(chains[i]), i < written.size() ? written[i] : 0);
    }

    /// Notifies the guest if the driver asked for it (EVENT_IDX / flags).
    virtual void notify_guest() = 0;

    /// push() then notify_guest().
    void complete(DescriptorChain&& chain, std::uint32_t written) {
        push(std::move(chain), written);
        notify_guest();
    }

    /// Asks the driver not to kick (while the device is busy polling);
    /// enable_notifications() re-enables them and returns true when chains
    /// arrived meanwhile (pop again to avoid a lost wake-up).
    virtual void disable_notifications() = 0;
    virtual bool enable_notifications() = 0;

    /// True once fatal() was called.
    bool broken() const noexcept { return broken_; }
    const QueueStats& stats() const noexcept { return stats_; }

protected:
    Virtqueue(QueueConfig cfg, Strand strand, RaiseFn raise, FatalFn fatal)
        : cfg_(std::move(cfg)), strand_(std::move(strand)), raise_(std::move(raise)), fatal_(std::move(fatal)) {}
    friend class DescriptorChain;
    /// Called by ~DescriptorChain (and by a move assignment over a live
    /// chain) for a chain never completed. Must not move from `chain`:
    /// it only reads its id and clears it (see retire()).
    virtual void abandon(DescriptorChain&& chain) noexcept = 0;

    /// What is left of a chain once retired: where it goes in the used ring.
    struct Retired {
        std::uint16_t id = 0;
        std::uint16_t slots = 0;
        std::uint32_t writable_len = 0;
    };
    /// Unmaps the chain's grants (first!), detaches it from the queue and
    /// returns its id; `chain` is left empty and !valid(). Its segments go
    /// back to this queue's pool.
    Retired retire(DescriptorChain& chain) noexcept {
        Retired r{chain.id_, chain.slots_, chain.writable_len_};
        chain.unmap();  // unmap before the used entry is published
        chain.queue_ = nullptr;
        if (chain.segs_) give_back_segments(chain.segs_);
        chain.segs_ = nullptr;
        chain.readable_len_ = chain.writable_len_ = 0;
        return r;
    }
    /// Empty segments for a chain being popped, from the pool (made when
    /// the pool is empty; a warm queue allocates nothing).
    ChainSegments* take_segments() {
        if (ChainSegments* s = seg_free_) {
            seg_free_ = s->next_free;
            return s;
        }
        seg_all_.push_back(std::make_unique<ChainSegments>());
        return seg_all_.back().get();
    }
    /// Segments back to the pool, emptied (their capacity kept).
    void give_back_segments(ChainSegments* s) noexcept {
        s->clear();
        s->next_free = seg_free_;
        seg_free_ = s;
    }
    /// True when `chain` belongs to this queue and is live.
    bool owns(const DescriptorChain& chain) const noexcept { return chain.queue_ == this; }

    /// Marks the queue broken and reports once.
    void fail(const Error& e) {
        ++stats_.errors;
        if (!broken_) {
            broken_ = true;
            if (fatal_) fatal_(e);
        }
    }

    QueueConfig cfg_;
    Strand strand_;
    RaiseFn raise_;
    FatalFn fatal_;
    bool broken_ = false;
    QueueStats stats_;

private:
    std::vector<std::unique_ptr<ChainSegments>> seg_all_;  ///< every chain's segments ever made
    ChainSegments* seg_free_ = nullptr;                    ///< those not in use
};

/// Creates a split or packed queue per `cfg`, mapping its ring areas RW in
/// one grant call each (split: descriptor table, avail ring including
/// used_event, used ring including avail_event; packed: descriptor ring and
/// the two event suppression structures). The mappings are released when
/// the queue is destroyed. Fails with a clear error for a non-grant ring
/// address, a size not allowed (§2.7: power of two for split, ≤ 32768),
/// a misaligned area or an unmappable ring. `mem` must outlive the queue,
/// and the queue must outlive every chain it handed out.
Result<std::unique_ptr<Virtqueue>> create_virtqueue(const QueueConfig& cfg, GuestMemory& mem, Strand strand,
                                                    Virtqueue::RaiseFn raise, Virtqueue::FatalFn fatal);

}  // namespace xv::transport
