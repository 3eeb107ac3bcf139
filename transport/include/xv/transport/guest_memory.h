// SPDX-License-Identifier: GPL-2.0-only
// Guest memory, through grants only ("VirtIO with Grants").
//
// A DMA address with bit 63 set is (gref << 12 | offset); a buffer of `len`
// bytes spans refs gref .. gref + ceil((offset + len) / 4096) - 1. An address
// without bit 63 is refused: xen-virtiod never maps guest RAM by frame.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "xv/result.h"
#include "xv/xen/grant.h"
#include "xv/xen/types.h"

namespace xv::transport {

/// One buffer a descriptor names.
struct DmaBuffer {
    std::uint64_t addr = 0;
    std::uint32_t len = 0;
    bool device_writable = false;
};

/// The result of mapping a batch of buffers: host spans in input order,
/// kept alive by the mappings.
struct MappedBuffers {
    std::vector<std::span<std::byte>> spans;
    std::vector<xen::GrantMapping> maps;  ///< at most 2: one RO, one RW
};

/// Reusable working storage for map_buffers(), so that a queue mapping a
/// chain per request does not allocate. One per caller (per queue).
struct MapScratch {
    std::vector<xen::GrantRef> ro;           ///< refs of device-readable pages
    std::vector<xen::GrantRef> rw;           ///< refs of device-writable pages
    std::vector<std::uint32_t> first_page;   ///< per buffer: its first page in ro/rw
};

/// Chains mapped together in one grant call (GrantMapper::map_batch): each
/// chain is one entry, its device-readable pages RO followed by its
/// device-writable pages RW, released on its own. Reused across pops, so
/// that a warm queue maps without allocating. Where a buffer lands is known
/// before the call: at its part's address (ro_addr or rw_addr of its
/// entry) plus the position add_buffer() gave.
class ChainMapBatch {
public:
    /// Forgets every entry (their mappings should have been taken; any left
    /// are released). The entries' storage is kept for the next batch.
    void clear() noexcept {
        refs_.clear();
        for (std::size_t k = 0; k < n_; ++k) entries_[k].map.reset(), entries_[k].map2.reset();
        n_ = 0;
        pages_ = 0;
        refs_end_ = 0;
        open_ = false;
    }

    /// One-pass building of an entry, buffer by buffer, while a chain is
    /// walked (GuestMemory::add_buffer()): begin_entry(), the buffers with
    /// every device-readable one before the device-writable ones, then
    /// end_entry() or abort_entry(). An open entry is not mapped by
    /// GuestMemory::map_batch() and survives clear_closed().
    void begin_entry() noexcept {
        open_ = true;
        open_ro_ = open_rw_ = 0;
    }
    /// Pages of the open entry.
    std::uint64_t open_pages() const noexcept { return open_ro_ + open_rw_; }
    /// Forgets the open entry's buffers.
    void abort_entry() noexcept {
        refs_.resize(refs_end_);
        open_ = false;
    }
    /// Closes the open entry: it is mapped by the next map_batch().
    void end_entry() {
        if (n_ == entries_.size()) entries_.emplace_back();
        auto& e = entries_[n_++];
        e.ro_addr = e.rw_addr = nullptr;
        e.ro = std::uint32_t(open_ro_);
        e.rw = std::uint32_t(open_rw_);
        pages_ += open_ro_ + open_rw_;
        refs_end_ = refs_.size();
        open_ = false;
    }
    /// clear() for the closed entries only: the open one (if any) becomes
    /// the batch's first.
    void clear_closed() noexcept {
        if (!open_) return clear();
        for (std::size_t k = 0; k < n_; ++k) entries_[k].map.reset(), entries_[k].map2.reset();
        refs_.erase(refs_.begin(), refs_.begin() + std::ptrdiff_t(refs_end_));
        n_ = 0;
        pages_ = 0;
        refs_end_ = 0;
    }
    /// Entries (chains) added.
    std::size_t size() const noexcept { return n_; }
    /// Pages of all entries.
    std::uint64_t pages() const noexcept { return pages_; }
    /// Entry `k` after GuestMemory::map_batch(): its mappings, to move out.
    xen::GrantBatchEntry& entry(std::size_t k) noexcept { return entries_[k]; }

private:
    friend class GuestMemory;
    std::vector<xen::GrantRef> refs_;  ///< entry after entry: RO refs, then RW refs
    std::vector<xen::GrantRef> rw_tmp_;
    std::vector<xen::GrantBatchEntry> entries_;  ///< the first n_ are in use
    std::size_t n_ = 0;
    std::uint64_t pages_ = 0;
    std::size_t refs_end_ = 0;   ///< refs_ of the closed entries (an open one's follow)
    bool open_ = false;          ///< an entry is being built
    // 64-bit each: end_entry() reads both right after add_buffer() wrote
    // them; as two adjacent 32-bit fields the compiler merges the reads
    // into one load that waits for both stores (no store forwarding).
    std::uint64_t open_ro_ = 0;  ///< its RO pages so far
    std::uint64_t open_rw_ = 0;  ///< its RW pages so far
};

/// Translates grant DMA addresses of one guest into host mappings.
/// Holds no mutable state: queues on different strands may share one.
class GuestMemory {
public:
    /// Most pages one map call may take (per direction); a chain needing
    /// more is refused with E2BIG instead of asking the grant device for it.
    static constexpr std::uint32_t kDefaultMaxPagesPerMap = 16384;  // 64 MiB

    /// `mapper` must outlive this object and every mapping made through it.
    GuestMemory(xen::GrantMapper& mapper, xen::DomId domid) : mapper_(mapper), domid_(domid) {}

    /// The guest whose grants this maps.
    xen::DomId domid() const noexcept { return domid_; }
    /// The grant device underneath.
    xen::GrantMapper& mapper() noexcept { return mapper_; }
    /// Sets the per-call page limit (default kDefaultMaxPagesPerMap).
    void set_max_pages_per_map(std::uint32_t n) noexcept { max_pages_ = n; }

    /// Maps one area (a ring) of `len` bytes at grant address `addr`.
    /// Errors: non-grant address (EPERM, "not a grant address"), len 0 or
    /// overflow (EINVAL), map failure (from the mapper).
    Result<std::pair<std::span<std::byte>, xen::GrantMapping>> map_area(std::uint64_t addr, std::uint64_t len,
                                                                        bool writable);

    /// Maps all buffers in at most two grant calls: every device-readable
    /// page in one RO call, every device-writable page in one RW call.
    /// Errors: a non-grant address (EPERM), a ref range past 2^32 (EINVAL),
    /// more than the page limit per direction (E2BIG), a map failure (from
    /// the mapper: revoked ref, RO ref asked RW, ...). A zero-length buffer
    /// maps nothing and gets an empty span, but its address is still checked.
    Result<MappedBuffers> map_buffers(std::span<const DmaBuffer> buffers);

    /// map_buffers() into `out` (cleared first), reusing `scratch`.
    Result<void> map_buffers(std::span<const DmaBuffer> buffers, MapScratch& scratch, MappedBuffers& out);

    /// Adds one chain's buffers (in chain order) as the next entry of
    /// `batch`, with map_buffers()'s checks (a chain over the page limit
    /// per direction: E2BIG). Returns false, adding nothing, when the batch
    /// is not empty and the chain would take it over the page limit: map
    /// the batch, then add the chain to a fresh one.
    Result<bool> add_chain(std::span<const DmaBuffer> buffers, ChainMapBatch& batch) const;

    /// Adds one buffer to the open entry of `batch` (ChainMapBatch::
    /// begin_entry()), with add_chain()'s checks; device-readable buffers
    /// must all come before device-writable ones. `at` is set to where the
    /// buffer will start, in bytes from its entry's RO (or RW) address.
    /// false, adding nothing, when add_chain() would refuse the buffer:
    /// buffer_error() then says why.
    bool add_buffer(ChainMapBatch& batch, std::uint64_t addr, std::uint32_t len, bool device_writable,
                    std::size_t& at) const {
        xen::GrantRef ref0;
        std::uint32_t pages;
        if (!decode_ok(addr, len, ref0, pages)) [[unlikely]]
            return false;
        std::uint64_t& have = device_writable ? batch.open_rw_ : batch.open_ro_;
        if (pages > max_pages_ - have) [[unlikely]]
            return false;  // have <= max_pages_
        at = std::size_t(have) * xen::kPageSize + xen::grant_dma::offset(addr);
        auto& refs = batch.refs_;
        const std::size_t n = refs.size();
        if (pages == 1 && n < refs.capacity()) [[likely]] {
            // The common buffer (one page, warm batch): one store, no
            // zero-fill and no loop set up for one element.
            refs.push_back(ref0);
        } else if (pages != 0) {
            refs.resize(n + pages);
            xen::GrantRef* r = refs.data() + n;
            for (std::uint32_t p = 0; p < pages; ++p) r[p] = ref0 + p;
        }
        have += pages;
        return true;
    }
    /// Why add_buffer() refused `buf`, a buffer of a chain of `buffers`
    /// buffers (add_chain()'s error).
    Error buffer_error(const DmaBuffer& buf, std::size_t buffers) const;
    /// True when `batch`'s open entry fits one map call with its closed
    /// entries (add_chain() would not return false); else map the batch
    /// (its closed entries), clear_closed(), and end the entry then.
    bool entry_fits(const ChainMapBatch& batch) const noexcept {
        return batch.n_ == 0 || batch.pages_ + batch.open_pages() <= 2 * std::uint64_t(max_pages_);
    }

    /// Maps every entry of `batch` in ONE grant call (nothing when it has
    /// no pages). On an error nothing stays mapped.
    Result<void> map_batch(ChainMapBatch& batch);

    /// Appends to `segs` the grant-copy segments that read `buf` (device-
    /// readable) into `dst` (buf.len bytes); one segment per page touched.
    /// Nothing is copied until copy() runs them. Same address checks as
    /// map_buffers().
    Result<void> add_copy_in(const DmaBuffer& buf, std::byte* dst, std::vector<xen::GrantCopySegment>& segs) const;

    /// Runs `segs` in one grant-copy call; the error names this guest.
    Result<void> copy(std::span<const xen::GrantCopySegment> segs);

private:
    /// Checks `addr`/`len` and yields the first ref and the page count.
    Result<std::pair<xen::GrantRef, std::uint32_t>> decode(std::uint64_t addr, std::uint64_t len,
                                                          const char* what) const;
    /// decode() without building an error: false when decode() would fail
    /// (call it then for the error).
    bool decode_ok(std::uint64_t addr, std::uint64_t len, xen::GrantRef& ref0, std::uint32_t& pages) const noexcept {
        if (!xen::grant_dma::is_grant(addr) || len > 0xffffffffULL) return false;
        const std::uint64_t r = xen::grant_dma::first_ref(addr);
        const std::uint64_t p = xen::grant_dma::pages(addr, len);
        if (r > 0xffffffffULL || (p > 0 && p - 1 > 0xffffffffULL - r) || p > max_pages_) return false;
        ref0 = xen::GrantRef(r);
        pages = std::uint32_t(p);
        return true;
    }

    xen::GrantMapper& mapper_;
    xen::DomId domid_;
    std::uint32_t max_pages_ = kDefaultMaxPagesPerMap;
};

}  // namespace xv::transport
