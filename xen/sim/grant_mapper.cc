// SPDX-License-Identifier: GPL-2.0-only
// xen/sim GrantMapper: maps a batch of a guest's grant refs in one call,
// with Xen's checks (ref granted, not revoked, granted to us, RO vs RW),
// and page protections that make a write through a RO mapping fault.
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core.h"

namespace xv::xen::sim::detail {
namespace {

/// One live mapping made by a GrantMapperImpl.
struct MapRecord {
    std::shared_ptr<Domain> dom;   ///< keeps the guest's memory alive
    std::vector<GrantRef> refs;
    bool mmapped = false;          ///< own mmap (munmap on release) vs pointer into guest RAM
};

class GrantMapperImpl final : public GrantMapper {
public:
    explicit GrantMapperImpl(std::shared_ptr<Core> core) : core_(std::move(core)) { ++core_->res.open_handles; }

    ~GrantMapperImpl() override {
        // Mappings still alive when the handle dies are released, as closing
        // /dev/xen/gntdev does.
        std::vector<std::pair<std::byte*, std::uint32_t>> left;
        {
            std::lock_guard lk(mu_);
            for (auto& [addr, rec] : records_) left.emplace_back(addr, std::uint32_t(rec.refs.size()));
        }
        for (auto& [a, n] : left) release(a, n, /*count_call=*/false);
        --core_->res.open_handles;
    }

    Result<GrantMapping> map(DomId domid, std::span<const GrantRef> refs, bool writable) override {
        auto r = do_map(domid, refs, writable);
        std::lock_guard lk(mu_);
        ++stats_.map_calls;
        ++core_->stats.grant_map_calls;
        if (!r) ++stats_.map_failures;
        return r;
    }

    Result<void> copy(std::span<const GrantCopySegment> segs) override {
        {
            std::lock_guard lk(mu_);
            ++stats_.copy_calls;
            stats_.copy_segments += segs.size();
        }
        ++core_->stats.grant_copy_calls;
        if (segs.size() > kMaxBatch) return errno_error(E2BIG, "grant copy: too many segments");
        std::lock_guard lk(core_->mu);
        // Check every segment first: the call fails as a whole (the error
        // names the first bad segment), as one GNTTABOP_copy batch checked up front.
        for (std::size_t i = 0; i < segs.size(); ++i) {
            const auto& s = segs[i];
            std::string what = "grant copy segment " + std::to_string(i) + " (" + dom_name(s.domid) + " ref " +
                               std::to_string(s.ref) + ")";
            XV_TRY(core_->check_restrict_locked(s.domid, std::nullopt, what.c_str()));
            XV_TRY(core_->check_xsm_locked(s.domid, what.c_str()));
            auto dr = core_->live_locked(s.domid, what.c_str());
            if (!dr) return std::move(dr).error();
            XV_TRY(check_ref(**dr, s.ref, s.to_guest, what));
            // grant_table.h: the range must lie inside the granted page.
            if (std::size_t(s.offset) + s.len > kPageSize)
                return errno_error(EINVAL, what + ": offset " + std::to_string(s.offset) + " + len " +
                                               std::to_string(s.len) + " crosses the page");
            if (s.len && !s.local) return errno_error(EFAULT, what + ": no local buffer");
        }
        for (const auto& s : segs) {
            Domain* d = core_->find_locked(s.domid);
            std::byte* g = d->mem + d->grants[s.ref].gfn * kPageSize + s.offset;
            if (s.to_guest)
                std::memmove(g, s.local, s.len);
            else
                std::memmove(s.local, g, s.len);
        }
        return ok();
    }

    GrantStats stats() const override {
        std::lock_guard lk(mu_);
        return stats_;
    }

    std::uint64_t pages_in_use() const override {
        std::lock_guard lk(mu_);
        return stats_.pages_mapped - stats_.pages_unmapped;
    }

protected:
    void unmap(std::byte* addr, std::uint32_t pages) noexcept override { release(addr, pages, true); }

private:
    /// Xen's per-ref checks (grant_table.c map_grant_ref / gnttab_copy).
    Result<void> check_ref(const Domain& d, GrantRef ref, bool writable, const std::string& what) const {
        if (ref >= d.grants.size() || !d.grants[ref].in_use)
            return errno_error(EINVAL, what + ": ref is not granted");
        const GrantEntry& e = d.grants[ref];
        if (e.revoked) return errno_error(EINVAL, what + ": ref was revoked");
        if (e.to != core_->opts.self_domid)
            return errno_error(EINVAL, what + ": ref is granted to " + dom_name(e.to) + ", not to " +
                                           dom_name(core_->opts.self_domid));
        if (writable && e.readonly) return errno_error(EPERM, what + ": ref is read-only, writable access refused");
        if (e.gfn >= d.pages) return errno_error(EINVAL, what + ": frame outside guest RAM");
        return ok();
    }

    Result<GrantMapping> do_map(DomId domid, std::span<const GrantRef> refs, bool writable) {
        std::string what = "map " + std::to_string(refs.size()) + " grant refs of " + dom_name(domid);
        if (refs.empty()) return errno_error(EINVAL, what + ": no refs");
        if (refs.size() > kMaxBatch) return errno_error(E2BIG, what + ": too many refs");
        std::shared_ptr<Domain> dom;
        std::vector<std::uint64_t> gfns(refs.size());
        {
            std::lock_guard lk(core_->mu);
            XV_TRY(core_->check_restrict_locked(domid, std::nullopt, what.c_str()));
            XV_TRY(core_->check_xsm_locked(domid, what.c_str()));
            auto dr = core_->live_locked(domid, what.c_str());
            if (!dr) return std::move(dr).error();
            Domain& d = **dr;
            for (std::size_t i = 0; i < refs.size(); ++i)
                XV_TRY(check_ref(d, refs[i], writable, what + ", ref " + std::to_string(refs[i])));
            for (std::size_t i = 0; i < refs.size(); ++i) {
                ++d.grants[refs[i]].map_count;
                gfns[i] = d.grants[refs[i]].gfn;
            }
            d.mapped_pages += refs.size();
            dom = core_->domains[domid];
        }
        std::byte* addr = nullptr;
        bool mmapped = false;
        bool contiguous = true;
        for (std::size_t i = 1; i < gfns.size(); ++i)
            if (gfns[i] != gfns[0] + i) contiguous = false;
        if (!core_->opts.protect_pages && contiguous) {
            addr = dom->mem + gfns[0] * kPageSize;
        } else {
            auto m = mmap_pages(*dom, gfns, writable);
            if (!m) {
                undo(domid, refs);
                return errno_error(m.error().code.value(), what + ": " + m.error().message);
            }
            addr = *m;
            mmapped = true;
        }
        {
            std::lock_guard lk(mu_);
            records_.emplace(addr, MapRecord{std::move(dom), {refs.begin(), refs.end()}, mmapped});
            stats_.pages_mapped += refs.size();
        }
        core_->stats.grant_pages_mapped += refs.size();
        core_->res.mapped_grant_pages += refs.size();
        return GrantMapping(this, addr, std::uint32_t(refs.size()), writable);
    }

    /// Reserves a range and maps each run of consecutive frames over it
    /// with the protection Xen would give (GNTMAP_readonly -> PROT_READ).
    static Result<std::byte*> mmap_pages(const Domain& d, const std::vector<std::uint64_t>& gfns, bool writable) {
        std::size_t len = gfns.size() * kPageSize;
        void* base = ::mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED) return errno_error(errno, "reserve address space");
        auto* b = static_cast<std::byte*>(base);
        int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
        for (std::size_t i = 0; i < gfns.size();) {
            std::size_t run = 1;
            while (i + run < gfns.size() && gfns[i + run] == gfns[i] + run) ++run;
            void* p = ::mmap(b + i * kPageSize, run * kPageSize, prot, MAP_SHARED | MAP_FIXED, d.memfd,
                             off_t(gfns[i] * kPageSize));
            if (p == MAP_FAILED) {
                int e = errno;
                ::munmap(base, len);
                return errno_error(e, "mmap guest frames");
            }
            i += run;
        }
        return b;
    }

    void undo(DomId domid, std::span<const GrantRef> refs) {
        std::lock_guard lk(core_->mu);
        Domain* d = core_->find_locked(domid);
        if (!d) return;
        for (GrantRef r : refs) unref_locked(*d, r);
        d->mapped_pages -= refs.size();
        core_->maybe_release_locked(domid);
    }

    static void unref_locked(Domain& d, GrantRef r) {
        if (r >= d.grants.size()) return;
        GrantEntry& e = d.grants[r];
        if (e.map_count) --e.map_count;
        // A revoked ref is freed once its last mapping goes.
        if (e.revoked && e.map_count == 0) e = GrantEntry{};
    }

    void release(std::byte* addr, std::uint32_t pages, bool count_call) noexcept {
        MapRecord rec;
        {
            std::lock_guard lk(mu_);
            // Several fast-path mappings of the same frames share an address:
            // release the latest one with this size. (Known limit: if two
            // different refs grant the same frames and both are fast-path
            // mapped, the map counts may be released on the other ref.)
            auto [lo, hi] = records_.equal_range(addr);
            auto found = records_.end();
            for (auto it = lo; it != hi; ++it)
                if (it->second.refs.size() == pages) found = it;
            if (found == records_.end()) return;
            rec = std::move(found->second);
            records_.erase(found);
            stats_.pages_unmapped += pages;
            if (count_call) ++stats_.unmap_calls;
        }
        if (count_call) ++core_->stats.grant_unmap_calls;
        core_->res.mapped_grant_pages -= pages;
        if (rec.mmapped) ::munmap(addr, std::size_t(pages) * kPageSize);
        std::lock_guard lk(core_->mu);
        Domain& d = *rec.dom;
        for (GrantRef r : rec.refs) unref_locked(d, r);
        d.mapped_pages -= rec.refs.size();
        // The last unmap of a destroyed domain's grants releases the zombie.
        auto it = core_->domains.find(d.id);
        if (it != core_->domains.end() && it->second == rec.dom) core_->maybe_release_locked(d.id);
    }

    std::shared_ptr<Core> core_;
    mutable std::mutex mu_;
    GrantStats stats_;
    std::multimap<std::byte*, MapRecord> records_;
};

}  // namespace

std::unique_ptr<GrantMapper> make_grant_mapper(std::shared_ptr<Core> core) {
    return std::make_unique<GrantMapperImpl>(std::move(core));
}

}  // namespace xv::xen::sim::detail
