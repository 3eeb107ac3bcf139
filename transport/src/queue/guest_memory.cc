// SPDX-License-Identifier: GPL-2.0-only
// Guest memory through grants only: decode grant DMA addresses, map batches
// (one RO call, one RW call), prepare grant copies.
#include "xv/transport/guest_memory.h"

#include <fmt/format.h>

#include <limits>

namespace xv::transport {

namespace gd = xen::grant_dma;

Result<std::pair<xen::GrantRef, std::uint32_t>> GuestMemory::decode(std::uint64_t addr, std::uint64_t len,
                                                                   const char* what) const {
    // Grants only (xen-facts §1.1): an address without bit 63 would need a
    // foreign mapping of guest RAM, which this daemon never makes.
    if (!gd::is_grant(addr))
        return make_error(std::errc::operation_not_permitted,
                          fmt::format("dom{}: {} at {:#x} is not a grant address (bit 63 clear); "
                                      "guest RAM is reached through grants only",
                                      domid_, what, addr));
    const std::uint64_t ref0 = gd::first_ref(addr);
    // offset < 4096 and len < 2^64 - 4096 keep pages() from overflowing.
    if (len > std::numeric_limits<std::uint64_t>::max() - 2 * xen::kPageSize)
        return make_error(std::errc::invalid_argument, fmt::format("dom{}: {} length {:#x} overflows", domid_, what, len));
    const std::uint64_t pages = gd::pages(addr, len);
    // Grant refs are 32 bits: the last ref of the range must still be one.
    if (ref0 > std::numeric_limits<xen::GrantRef>::max() ||
        (pages > 0 && pages - 1 > std::numeric_limits<xen::GrantRef>::max() - ref0))
        return make_error(std::errc::invalid_argument,
                          fmt::format("dom{}: {} at {:#x} len {} runs past grant ref 2^32", domid_, what, addr, len));
    if (pages > max_pages_)
        return make_error(std::errc::argument_list_too_long,
                          fmt::format("dom{}: {} at {:#x} len {} needs {} pages, more than {} per map", domid_, what,
                                      addr, len, pages, max_pages_));
    return std::pair<xen::GrantRef, std::uint32_t>{xen::GrantRef(ref0), std::uint32_t(pages)};
}

Result<std::pair<std::span<std::byte>, xen::GrantMapping>> GuestMemory::map_area(std::uint64_t addr,
                                                                                 std::uint64_t len, bool writable) {
    if (len == 0)
        return make_error(std::errc::invalid_argument, fmt::format("dom{}: area at {:#x} has length 0", domid_, addr));
    auto d = decode(addr, len, "area");
    if (!d) return std::move(d).error();
    auto [ref0, pages] = *d;
    std::vector<xen::GrantRef> refs(pages);
    for (std::uint32_t i = 0; i < pages; ++i) refs[i] = ref0 + i;
    auto m = mapper_.map(domid_, refs, writable);
    if (!m)
        return Error{m.error().code, fmt::format("dom{}: map {} area at {:#x} ({} refs from {}): {}", domid_,
                                                 writable ? "RW" : "RO", addr, pages, ref0, m.error().message)};
    std::span<std::byte> span(m->data() + gd::offset(addr), std::size_t(len));
    return std::pair<std::span<std::byte>, xen::GrantMapping>{span, std::move(*m)};
}

Result<MappedBuffers> GuestMemory::map_buffers(std::span<const DmaBuffer> buffers) {
    MapScratch scratch;
    MappedBuffers out;
    auto r = map_buffers(buffers, scratch, out);
    if (!r) return std::move(r).error();
    return out;
}

Result<void> GuestMemory::map_buffers(std::span<const DmaBuffer> buffers, MapScratch& s, MappedBuffers& out) {
    out.spans.clear();
    out.maps.clear();
    s.ro.clear();
    s.rw.clear();
    s.first_page.resize(buffers.size());
    for (std::size_t i = 0; i < buffers.size(); ++i) {
        const DmaBuffer& b = buffers[i];
        auto d = decode(b.addr, b.len, b.device_writable ? "device-writable buffer" : "device-readable buffer");
        if (!d) return std::move(d).error();
        auto [ref0, pages] = *d;
        auto& refs = b.device_writable ? s.rw : s.ro;
        if (pages > max_pages_ - refs.size())
            return make_error(std::errc::argument_list_too_long,
                              fmt::format("dom{}: {} buffers need more than {} {} pages", domid_, buffers.size(),
                                          max_pages_, b.device_writable ? "RW" : "RO"));
        s.first_page[i] = std::uint32_t(refs.size());
        for (std::uint32_t p = 0; p < pages; ++p) refs.push_back(ref0 + p);
    }
    // All device-readable pages in ONE read-only call (the frontend granted
    // them read-only: DMA_TO_DEVICE), all device-writable in ONE RW call.
    std::byte* ro_base = nullptr;
    std::byte* rw_base = nullptr;
    if (!s.ro.empty()) {
        auto m = mapper_.map(domid_, s.ro, false);
        if (!m)
            return Error{m.error().code, fmt::format("dom{}: map {} device-readable refs (first {}): {}", domid_,
                                                     s.ro.size(), s.ro.front(), m.error().message)};
        ro_base = m->data();
        out.maps.push_back(std::move(*m));
    }
    if (!s.rw.empty()) {
        auto m = mapper_.map(domid_, s.rw, true);
        if (!m) {
            out.maps.clear();
            return Error{m.error().code, fmt::format("dom{}: map {} device-writable refs RW (first {}): {}", domid_,
                                                     s.rw.size(), s.rw.front(), m.error().message)};
        }
        rw_base = m->data();
        out.maps.push_back(std::move(*m));
    }
    out.spans.reserve(buffers.size());
    for (std::size_t i = 0; i < buffers.size(); ++i) {
        const DmaBuffer& b = buffers[i];
        if (b.len == 0) {
            out.spans.emplace_back();
            continue;
        }
        std::byte* base = b.device_writable ? rw_base : ro_base;
        out.spans.emplace_back(base + std::size_t(s.first_page[i]) * xen::kPageSize + gd::offset(b.addr), b.len);
    }
    return ok();
}

Result<bool> GuestMemory::add_chain(std::span<const DmaBuffer> buffers, ChainMapBatch& batch) const {
    if (batch.open_) batch.abort_entry();
    const std::size_t refs0 = batch.refs_.size();
    auto undo = [&] { batch.refs_.resize(refs0); };
    // The entry's refs are its RO pages, then its RW pages. A chain lists
    // its device-readable buffers first (virtio 1.2 §2.7.4.2, checked when
    // it was walked), so they go straight in; RW pages met before a
    // readable buffer wait in rw_tmp_.
    batch.rw_tmp_.clear();
    std::uint32_t ro = 0, rw = 0;
    bool rw_direct = false;  // RW refs appended to refs_ in place
    for (const DmaBuffer& b : buffers) {
        xen::GrantRef ref0;
        std::uint32_t pages;
        if (!decode_ok(b.addr, b.len, ref0, pages)) {
            undo();
            auto d = decode(b.addr, b.len, b.device_writable ? "device-writable buffer" : "device-readable buffer");
            if (!d) return std::move(d).error();
            return make_error(std::errc::invalid_argument,
                              fmt::format("dom{}: buffer at {:#x} len {} refused", domid_, b.addr, b.len));
        }
        const std::uint32_t have = b.device_writable ? rw : ro;
        if (pages > max_pages_ - have) {
            undo();
            return make_error(std::errc::argument_list_too_long,
                              fmt::format("dom{}: {} buffers need more than {} {} pages", domid_, buffers.size(),
                                          max_pages_, b.device_writable ? "RW" : "RO"));
        }
        if (b.device_writable) {
            if (rw == 0 && batch.rw_tmp_.empty()) rw_direct = true;
            if (rw_direct) {
                for (std::uint32_t p = 0; p < pages; ++p) batch.refs_.push_back(ref0 + p);
            } else {
                for (std::uint32_t p = 0; p < pages; ++p) batch.rw_tmp_.push_back(ref0 + p);
            }
            rw += pages;
        } else {
            if (rw_direct && rw != 0) {
                // A readable buffer after a writable one: move the RW refs aside.
                batch.rw_tmp_.assign(batch.refs_.end() - rw, batch.refs_.end());
                batch.refs_.resize(batch.refs_.size() - rw);
                rw_direct = false;
            }
            for (std::uint32_t p = 0; p < pages; ++p) batch.refs_.push_back(ref0 + p);
            ro += pages;
        }
    }
    const std::uint64_t pages = std::uint64_t(ro) + rw;
    // One call maps at most the page limit in each direction.
    if (batch.n_ != 0 && batch.pages_ + pages > 2 * std::uint64_t(max_pages_)) {
        undo();
        return false;
    }
    if (!rw_direct) batch.refs_.insert(batch.refs_.end(), batch.rw_tmp_.begin(), batch.rw_tmp_.end());
    if (batch.n_ == batch.entries_.size()) batch.entries_.emplace_back();
    auto& e = batch.entries_[batch.n_++];
    e.ro_addr = e.rw_addr = nullptr;
    e.ro = ro;
    e.rw = rw;
    batch.pages_ += pages;
    batch.refs_end_ = batch.refs_.size();
    return true;
}

Error GuestMemory::buffer_error(const DmaBuffer& b, std::size_t buffers) const {
    auto d = decode(b.addr, b.len, b.device_writable ? "device-writable buffer" : "device-readable buffer");
    if (!d) return std::move(d).error();
    // The address is fine: the chain's pages in that direction passed the limit.
    return make_error(std::errc::argument_list_too_long,
                      fmt::format("dom{}: {} buffers need more than {} {} pages", domid_, buffers, max_pages_,
                                  b.device_writable ? "RW" : "RO"));
}

Result<void> GuestMemory::map_batch(ChainMapBatch& batch) {
    if (batch.pages_ == 0) return ok();
    // One grant call for every chain of the batch: RO for device-readable
    // pages (the frontend granted them read-only: DMA_TO_DEVICE), RW for
    // device-writable ones.
    auto r = mapper_.map_batch(domid_, std::span(batch.refs_.data(), batch.refs_end_),
                               std::span(batch.entries_.data(), batch.n_));
    if (!r)
        return Error{r.error().code,
                     fmt::format("dom{}: map {} refs of {} chains (device-readable pages RO, device-writable pages "
                                 "RW): {}",
                                 domid_, batch.refs_end_, batch.n_, r.error().message)};
    return ok();
}

Result<void> GuestMemory::add_copy_in(const DmaBuffer& buf, std::byte* dst,
                                      std::vector<xen::GrantCopySegment>& segs) const {
    auto d = decode(buf.addr, buf.len, "device-readable buffer");
    if (!d) return std::move(d).error();
    auto [ref0, pages] = *d;
    std::uint32_t off = gd::offset(buf.addr);
    std::uint64_t left = buf.len;
    for (std::uint32_t p = 0; p < pages; ++p) {
        // A segment never crosses a granted page.
        std::uint32_t n = std::uint32_t(std::min<std::uint64_t>(left, xen::kPageSize - off));
        segs.push_back(xen::GrantCopySegment{domid_, ref0 + p, std::uint16_t(off), std::uint16_t(n), dst, false});
        dst += n;
        left -= n;
        off = 0;
    }
    return ok();
}

Result<void> GuestMemory::copy(std::span<const xen::GrantCopySegment> segs) {
    if (segs.empty()) return ok();
    auto r = mapper_.copy(segs);
    if (!r)
        return Error{r.error().code,
                     fmt::format("dom{}: grant copy of {} segments: {}", domid_, segs.size(), r.error().message)};
    return ok();
}

}  // namespace xv::transport
