// SPDX-License-Identifier: GPL-2.0-only
// Grant mapping: the only way xen-virtiod reaches guest memory.
//
// "VirtIO with Grants": a frontend hands out grant references for the pages
// it wants the backend to see. The backend maps a batch of refs of one
// domain in ONE call, read-only or read-write, and unmaps them when the
// GrantMapping object dies. There is deliberately no interface for mapping
// guest RAM by frame number (foreign mapping).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "xv/result.h"
#include "xv/xen/types.h"

namespace xv::xen {

class GrantMapper;

/// A contiguous virtual mapping of `pages()` grant refs. Move-only; unmaps
/// itself (one unmap call) when destroyed.
class GrantMapping {
public:
    GrantMapping() = default;
    GrantMapping(GrantMapper* owner, std::byte* addr, std::uint32_t pages, bool writable) noexcept
        : owner_(owner), addr_(addr), pages_(pages), writable_(writable) {}
    /// With a `cookie` the owner chose (handed back at release; 0 = none).
    GrantMapping(GrantMapper* owner, std::byte* addr, std::uint32_t pages, bool writable,
                 std::uint64_t cookie) noexcept
        : owner_(owner), addr_(addr), pages_(pages), writable_(writable), cookie_(cookie) {}
    GrantMapping(GrantMapping&& o) noexcept { *this = std::move(o); }
    GrantMapping& operator=(GrantMapping&& o) noexcept;
    GrantMapping(const GrantMapping&) = delete;
    GrantMapping& operator=(const GrantMapping&) = delete;
    ~GrantMapping() { reset(); }

    /// Unmaps now (idempotent). Inline: on an empty mapping (moved from,
    /// already released) it is one test.
    void reset() noexcept {
        if (owner_ || addr_) [[unlikely]]
            release_now();
    }

    bool valid() const noexcept { return addr_ != nullptr; }
    std::byte* data() const noexcept { return addr_; }
    std::uint32_t pages() const noexcept { return pages_; }
    std::size_t size() const noexcept { return std::size_t(pages_) * kPageSize; }
    bool writable() const noexcept { return writable_; }
    /// The whole mapping as bytes.
    std::span<std::byte> bytes() const noexcept { return {addr_, size()}; }

private:
    friend void release_mappings(std::span<GrantMapping* const> maps) noexcept;
    void release_now() noexcept;
    GrantMapper* owner_ = nullptr;
    std::byte* addr_ = nullptr;
    std::uint32_t pages_ = 0;
    bool writable_ = false;
    std::uint64_t cookie_ = 0;
};

/// One mapping of a GrantMapper::map_batch() call: the next `ro` refs of
/// the batch mapped read-only, then the next `rw` refs read-write, released
/// together. The two parts need not be adjacent: reach them through
/// ro_addr / rw_addr, not map.data().
struct GrantBatchEntry {
    std::uint32_t ro = 0;          ///< in: refs mapped read-only
    std::uint32_t rw = 0;          ///< in: refs mapped read-write (after the RO ones)
    std::byte* ro_addr = nullptr;  ///< out: the RO pages, contiguous (null when ro == 0)
    std::byte* rw_addr = nullptr;  ///< out: the RW pages, contiguous (null when rw == 0)
    GrantMapping map;              ///< out: keeps the entry mapped
    GrantMapping map2;             ///< out: a second mapping, when the mapper needs one for the RW part
};

/// One segment of a grant copy: `len` bytes between a granted page of
/// `domid` and a local buffer. The range must not cross the granted page.
struct GrantCopySegment {
    DomId domid = 0;
    GrantRef ref = 0;
    std::uint16_t offset = 0;  ///< offset inside the granted page
    std::uint16_t len = 0;
    std::byte* local = nullptr;
    bool to_guest = false;     ///< true: local -> guest (needs a RW grant)
};

/// Counters every GrantMapper keeps (used by tests, benchmarks, the lab).
struct GrantStats {
    std::uint64_t map_calls = 0;
    std::uint64_t unmap_calls = 0;
    std::uint64_t pages_mapped = 0;
    std::uint64_t pages_unmapped = 0;
    std::uint64_t copy_calls = 0;
    std::uint64_t copy_segments = 0;
    std::uint64_t map_failures = 0;
};

/// A grant-table device handle (libxengnttab / the simulator).
class GrantMapper {
public:
    virtual ~GrantMapper() = default;

    /// Maps `refs` of domain `domid` as one contiguous range, in one call.
    /// With `writable == false` the pages are mapped read-only (required for
    /// refs the frontend granted read-only); a write through such a mapping
    /// faults, as on Xen.
    virtual Result<GrantMapping> map(DomId domid, std::span<const GrantRef> refs, bool writable) = 0;

    /// Maps several entries of `refs` (in order, `ro + rw` refs each) of
    /// domain `domid`, RO and RW per entry, as one batch: Xen's map
    /// hypercall takes a batch of refs each with its own GNTMAP_readonly
    /// flag. Each entry is released on its own (GrantBatchEntry::map). Fails
    /// as a whole: on an error nothing stays mapped. The default makes one
    /// map() call per non-empty RO or RW part (what a mapper can do when its
    /// device maps only one protection per call, like gntdev).
    virtual Result<void> map_batch(DomId domid, std::span<const GrantRef> refs, std::span<GrantBatchEntry> entries);

    /// Copies all segments in one call. Fails as a whole if any segment
    /// fails (the error names the first bad ref).
    virtual Result<void> copy(std::span<const GrantCopySegment> segments) = 0;

    /// Counters since the handle was opened.
    virtual GrantStats stats() const = 0;

    /// Pages currently mapped through this handle.
    virtual std::uint64_t pages_in_use() const = 0;

    /// One mapping to release, as GrantMapping hands it back.
    struct Unmap {
        std::byte* addr;
        std::uint32_t pages;
        std::uint64_t cookie;
    };

protected:
    friend class GrantMapping;
    friend void release_mappings(std::span<GrantMapping* const> maps) noexcept;
    /// Releases several mappings of this mapper in ONE unmap call (counted
    /// once). The default releases them one by one (one call each).
    virtual void unmap_batch(std::span<const Unmap> maps) noexcept {
        for (const Unmap& m : maps) unmap_cookie(m.addr, m.pages, m.cookie);
    }
    /// Releases a mapping made by map(); called once per mapping.
    virtual void unmap(std::byte* addr, std::uint32_t pages) noexcept = 0;
    /// Releases a mapping that carries the cookie its mapper gave it; the
    /// default ignores the cookie.
    virtual void unmap_cookie(std::byte* addr, std::uint32_t pages, std::uint64_t /*cookie*/) noexcept {
        unmap(addr, pages);
    }
};

inline Result<void> GrantMapper::map_batch(DomId domid, std::span<const GrantRef> refs,
                                           std::span<GrantBatchEntry> entries) {
    std::size_t at = 0;
    for (std::size_t i = 0; i < entries.size(); ++i) {
        GrantBatchEntry& e = entries[i];
        e.ro_addr = e.rw_addr = nullptr;
        e.map.reset();
        e.map2.reset();
        if (std::size_t(e.ro) + e.rw > refs.size() - at) {
            for (std::size_t j = 0; j < i; ++j) entries[j].map.reset(), entries[j].map2.reset();
            return make_error(std::errc::invalid_argument, "grant map batch: entries name more refs than given");
        }
        for (int part = 0; part < 2; ++part) {
            const std::uint32_t n = part == 0 ? e.ro : e.rw;
            if (n == 0) continue;
            auto m = map(domid, refs.subspan(at, n), part == 1);
            if (!m) {
                for (std::size_t j = 0; j <= i; ++j) entries[j].map.reset(), entries[j].map2.reset();
                return std::move(m).error();
            }
            (part == 0 ? e.ro_addr : e.rw_addr) = m->data();
            (e.map.valid() ? e.map2 : e.map) = std::move(*m);
            at += n;
        }
    }
    return ok();
}

/// Releases every valid mapping in `maps` (null pointers and empty
/// mappings are skipped), as their reset() would, but with one
/// GrantMapper::unmap_batch() call per run of mappings of the same mapper
/// (at most 128 a call). Every mapping is released when this returns.
inline void release_mappings(std::span<GrantMapping* const> maps) noexcept {
    constexpr std::size_t kChunk = 128;
    GrantMapper::Unmap items[kChunk];
    std::size_t n = 0;
    GrantMapper* owner = nullptr;
    auto flush = [&] {
        if (n) owner->unmap_batch(std::span<const GrantMapper::Unmap>(items, n));
        n = 0;
    };
    for (GrantMapping* m : maps) {
        if (!m || !m->owner_ || !m->addr_) continue;
        if (m->owner_ != owner || n == kChunk) {
            flush();
            owner = m->owner_;
        }
        items[n++] = GrantMapper::Unmap{m->addr_, m->pages_, m->cookie_};
        m->owner_ = nullptr;
        m->addr_ = nullptr;
        m->pages_ = 0;
        m->cookie_ = 0;
    }
    flush();
}

inline GrantMapping& GrantMapping::operator=(GrantMapping&& o) noexcept {
    if (this != &o) {
        reset();
        owner_ = o.owner_;
        addr_ = o.addr_;
        pages_ = o.pages_;
        writable_ = o.writable_;
        cookie_ = o.cookie_;
        o.owner_ = nullptr;
        o.addr_ = nullptr;
        o.pages_ = 0;
    }
    return *this;
}

inline void GrantMapping::release_now() noexcept {
    if (owner_ && addr_) owner_->unmap_cookie(addr_, pages_, cookie_);
    owner_ = nullptr;
    addr_ = nullptr;
    pages_ = 0;
    cookie_ = 0;
}

}  // namespace xv::xen
