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
    GrantMapping(GrantMapping&& o) noexcept { *this = std::move(o); }
    GrantMapping& operator=(GrantMapping&& o) noexcept;
    GrantMapping(const GrantMapping&) = delete;
    GrantMapping& operator=(const GrantMapping&) = delete;
    ~GrantMapping() { reset(); }

    /// Unmaps now (idempotent).
    void reset() noexcept;

    bool valid() const noexcept { return addr_ != nullptr; }
    std::byte* data() const noexcept { return addr_; }
    std::uint32_t pages() const noexcept { return pages_; }
    std::size_t size() const noexcept { return std::size_t(pages_) * kPageSize; }
    bool writable() const noexcept { return writable_; }
    /// The whole mapping as bytes.
    std::span<std::byte> bytes() const noexcept { return {addr_, size()}; }

private:
    GrantMapper* owner_ = nullptr;
    std::byte* addr_ = nullptr;
    std::uint32_t pages_ = 0;
    bool writable_ = false;
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

    /// Copies all segments in one call. Fails as a whole if any segment
    /// fails (the error names the first bad ref).
    virtual Result<void> copy(std::span<const GrantCopySegment> segments) = 0;

    /// Counters since the handle was opened.
    virtual GrantStats stats() const = 0;

    /// Pages currently mapped through this handle.
    virtual std::uint64_t pages_in_use() const = 0;

protected:
    friend class GrantMapping;
    /// Releases a mapping made by map(); called once per mapping.
    virtual void unmap(std::byte* addr, std::uint32_t pages) noexcept = 0;
};

inline GrantMapping& GrantMapping::operator=(GrantMapping&& o) noexcept {
    if (this != &o) {
        reset();
        owner_ = o.owner_;
        addr_ = o.addr_;
        pages_ = o.pages_;
        writable_ = o.writable_;
        o.owner_ = nullptr;
        o.addr_ = nullptr;
        o.pages_ = 0;
    }
    return *this;
}

inline void GrantMapping::reset() noexcept {
    if (owner_ && addr_) owner_->unmap(addr_, pages_);
    owner_ = nullptr;
    addr_ = nullptr;
    pages_ = 0;
}

}  // namespace xv::xen
