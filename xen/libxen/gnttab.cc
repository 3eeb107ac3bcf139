// SPDX-License-Identifier: GPL-2.0-only
// GrantMapper on libxengnttab (xengnttab.h, Xen 4.17).
extern "C" {  // the Xen 4.17 headers carry no extern "C" guards of their own
#include <xengnttab.h>
#include <xen/grant_table.h>
}

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include <vector>

#include "libxen_impl.h"
#include "xv/log.h"

namespace xv::xen::libxen {
namespace {

/// Most refs one map() takes (bounds the refs array we build from a caller's
/// span; the gntdev driver has its own, smaller per-handle limit).
constexpr std::size_t kMaxRefsPerMap = 65536;

class GnttabMapper final : public GrantMapper {
public:
    GnttabMapper(xengnttab_handle* h, std::shared_ptr<Counters> c) : h_(h), c_(std::move(c)) {}
    ~GnttabMapper() override {
        if (pages_in_use_.load() != 0)
            spdlog::warn("xen: grant handle closed with {} pages still mapped", pages_in_use_.load());
        xengnttab_close(h_);  // unmaps whatever is left
    }

    // map_batch() is GrantMapper's: gntdev maps one protection per call, so
    // a chain's device-readable refs are one xengnttab_map_domain_grant_refs
    // call (PROT_READ) and its device-writable refs another (RW).

    Result<GrantMapping> map(DomId domid, std::span<const GrantRef> refs, bool writable) override {
        // The message is built only for an error.
        auto what = [&] { return "map " + std::to_string(refs.size()) + " grant refs of dom " + std::to_string(domid); };
        if (refs.empty()) return make_error(std::errc::invalid_argument, what() + ": no refs");
        if (refs.size() > kMaxRefsPerMap)
            return make_error(std::errc::argument_list_too_long, what() + ": more than " +
                                                                     std::to_string(kMaxRefsPerMap) + " refs");
        if (domid >= DOMID_FIRST_RESERVED) return make_error(std::errc::invalid_argument, what() + ": reserved domid");
        // xengnttab takes a non-const array; never hand it the caller's span.
        // One buffer per thread, reused: no allocation per map once warm.
        thread_local std::vector<std::uint32_t> r;
        r.assign(refs.begin(), refs.end());
        // public/grant_table.h: a ref granted read-only maps only with
        // GNTMAP_readonly, which gntdev derives from PROT_READ without PROT_WRITE.
        const int prot = writable ? (PROT_READ | PROT_WRITE) : PROT_READ;
        map_calls_.fetch_add(1, std::memory_order_relaxed);
        c_->grant_map_calls.fetch_add(1, std::memory_order_relaxed);
        errno = 0;
        void* addr = xengnttab_map_domain_grant_refs(h_, std::uint32_t(r.size()), domid, r.data(), prot);
        if (addr == nullptr) {
            int err = errno;
            map_failures_.fetch_add(1, std::memory_order_relaxed);
            return call_error("xengnttab_map_domain_grant_refs", err,
                              what() + (writable ? " (rw)" : " (ro)") + " first ref " + std::to_string(refs[0]),
                              CallKind::Grant);
        }
        pages_mapped_.fetch_add(r.size(), std::memory_order_relaxed);
        pages_in_use_.fetch_add(r.size(), std::memory_order_relaxed);
        c_->grant_pages_mapped.fetch_add(r.size(), std::memory_order_relaxed);
        return GrantMapping(this, static_cast<std::byte*>(addr), std::uint32_t(r.size()), writable);
    }

    Result<void> copy(std::span<const GrantCopySegment> segments) override {
        if (segments.empty()) return ok();
        if (segments.size() > kMaxRefsPerMap)
            return make_error(std::errc::argument_list_too_long,
                              "grant copy of " + std::to_string(segments.size()) + " segments: too many");
        std::vector<xengnttab_grant_copy_segment_t> segs(segments.size());
        for (std::size_t i = 0; i < segments.size(); ++i) {
            const auto& s = segments[i];
            XV_TRY(validate_copy_segment(s, i));
            auto& g = segs[i];
            g = {};
            g.len = s.len;
            if (s.to_guest) {
                g.source.virt = s.local;
                g.dest.foreign.ref = s.ref;
                g.dest.foreign.offset = s.offset;
                g.dest.foreign.domid = s.domid;
                g.flags = GNTCOPY_dest_gref;
            } else {
                g.source.foreign.ref = s.ref;
                g.source.foreign.offset = s.offset;
                g.source.foreign.domid = s.domid;
                g.dest.virt = s.local;
                g.flags = GNTCOPY_source_gref;
            }
        }
        copy_calls_.fetch_add(1, std::memory_order_relaxed);
        copy_segments_.fetch_add(segs.size(), std::memory_order_relaxed);
        c_->grant_copy_calls.fetch_add(1, std::memory_order_relaxed);
        errno = 0;
        if (xengnttab_grant_copy(h_, std::uint32_t(segs.size()), segs.data()) != 0) {
            int err = errno;
            return call_error("xengnttab_grant_copy", err,
                              "grant copy of " + std::to_string(segs.size()) + " segments", CallKind::Grant);
        }
        // The call succeeding says nothing of each segment: check every status.
        for (std::size_t i = 0; i < segs.size(); ++i) {
            if (segs[i].status == GNTST_okay) continue;
            const auto& s = segments[i];
            int st = segs[i].status;
            return errno_error(gntst_to_errno(st),
                               "grant copy " + std::string(s.to_guest ? "to" : "from") + " dom " +
                                   std::to_string(s.domid) + " ref " + std::to_string(s.ref) + " (segment " +
                                   std::to_string(i) + " of " + std::to_string(segs.size()) + ") failed: GNTST_" +
                                   gntst_name(st) + " (" + std::to_string(st) + ")");
        }
        return ok();
    }

    GrantStats stats() const override {
        GrantStats s;
        s.map_calls = map_calls_.load();
        s.unmap_calls = unmap_calls_.load();
        s.pages_mapped = pages_mapped_.load();
        s.pages_unmapped = pages_unmapped_.load();
        s.copy_calls = copy_calls_.load();
        s.copy_segments = copy_segments_.load();
        s.map_failures = map_failures_.load();
        return s;
    }

    std::uint64_t pages_in_use() const override { return pages_in_use_.load(); }

protected:
    void unmap(std::byte* addr, std::uint32_t pages) noexcept override {
        unmap_calls_.fetch_add(1, std::memory_order_relaxed);
        c_->grant_unmap_calls.fetch_add(1, std::memory_order_relaxed);
        if (xengnttab_unmap(h_, addr, pages) != 0) {
            int err = errno;
            // The pages stay counted in use: the mapping is still there.
            spdlog::error("xen: xengnttab_unmap of {} pages at {} failed: errno {} ({})", pages,
                          static_cast<void*>(addr), err, std::strerror(err));
            return;
        }
        pages_unmapped_.fetch_add(pages, std::memory_order_relaxed);
        pages_in_use_.fetch_sub(pages, std::memory_order_relaxed);
    }

private:
    xengnttab_handle* h_;
    std::shared_ptr<Counters> c_;
    std::atomic<std::uint64_t> map_calls_{0}, unmap_calls_{0}, pages_mapped_{0}, pages_unmapped_{0};
    std::atomic<std::uint64_t> copy_calls_{0}, copy_segments_{0}, map_failures_{0}, pages_in_use_{0};
};

}  // namespace

Result<std::unique_ptr<GrantMapper>> open_gnttab(std::shared_ptr<Counters> c) {
    errno = 0;
    xengnttab_handle* h = xengnttab_open(tool_logger(), 0);
    if (!h) return call_error("xengnttab_open", errno, "open the grant device", CallKind::Grant);
    return std::unique_ptr<GrantMapper>(new GnttabMapper(h, std::move(c)));
}

}  // namespace xv::xen::libxen
