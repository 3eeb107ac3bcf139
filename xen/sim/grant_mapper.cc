// SPDX-License-Identifier: GPL-2.0-only
// xen/sim GrantMapper: maps a batch of a guest's grant refs in one call,
// with Xen's checks (ref granted, not revoked, granted to us, RO vs RW),
// and page protections that make a write through a RO mapping fault.
//
// Placement: with protect_pages, every mapping is an mmap of exactly its
// frames (an access past it faults). Without, a run of contiguous frames is
// handed out as a view into guest RAM premapped once: RW parts into the
// guest's RW mapping, RO parts into a PROT_READ view of the same memfd, so
// RO still faults on write; only the bounds are not enforced. Map counts,
// revocation and zombie release are the same in both placements.
//
// Cost: a map or unmap takes the handle's mutex and the guest's grant_mu,
// not Core::mu (the handle remembers the last guest it mapped; the
// restriction and XSM checks need no lock), builds no string unless it
// fails, and allocates nothing once its slots are warm. A mapping keeps
// its guest's memory alive through the handle's pin on that guest (one
// shared reference per guest with a count of its live mappings, under the
// handle's mutex), not a shared reference of its own.
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core.h"

namespace xv::xen::sim::detail {
namespace {

/// One live mapping made by a GrantMapperImpl (a slot; cookie = index + 1).
struct MapRecord {
    static constexpr std::uint32_t kInlineRefs = 6;
    Domain* dom = nullptr;         ///< its guest, kept alive by the handle's pin on it
    std::uint32_t nrefs = 0;       ///< refs (pages) of the mapping
    GrantRef small[kInlineRefs];   ///< its refs when nrefs <= kInlineRefs (no copy through the heap)
    std::vector<GrantRef> big;     ///< else; capacity kept when the slot is reused
    std::byte* addr = nullptr;     ///< what GrantMapping::data() returns
    std::byte* own[2] = {nullptr, nullptr};  ///< own mmaps (RO part, RW part), munmapped on release
    std::uint32_t own_pages[2] = {0, 0};
    bool live = false;

    std::span<const GrantRef> refs() const noexcept {
        return {nrefs <= kInlineRefs ? small : big.data(), nrefs};
    }
    void set_refs(const GrantRef* r, std::uint32_t n) {
        nrefs = n;
        if (n <= kInlineRefs) {
            for (std::uint32_t i = 0; i < n; ++i) small[i] = r[i];
        } else {
            big.assign(r, r + n);
        }
    }
};

/// A read-only view of a whole guest RAM (PROT_READ, shared with the
/// guest's memfd): RO mappings of contiguous frames point into it, so a
/// write through them faults as on Xen.
struct RoView {
    std::weak_ptr<Domain> dom;
    std::byte* base = nullptr;
    std::size_t len = 0;
};

/// Why a ref cannot be mapped or copied (Xen's grant_table.c checks).
enum class RefFault { None, NotGranted, Revoked, OtherDomain, ReadOnly, OutsideRam };

class GrantMapperImpl final : public GrantMapper {
public:
    explicit GrantMapperImpl(std::shared_ptr<Core> core) : core_(std::move(core)) { ++core_->res.open_handles; }

    ~GrantMapperImpl() override {
        // Mappings still alive when the handle dies are released, as closing
        // /dev/xen/gntdev does.
        std::vector<std::uint64_t> left;
        {
            std::lock_guard lk(mu_);
            for (std::size_t i = 0; i < slots_.size(); ++i)
                if (slots_[i].live) left.push_back(i + 1);
        }
        for (auto c : left) release(c, /*count_call=*/false);
        for (auto& v : views_) ::munmap(v.base, v.len);
        --core_->res.open_handles;
    }

    Result<GrantMapping> map(DomId domid, std::span<const GrantRef> refs, bool writable) override {
        GrantBatchEntry e;
        (writable ? e.rw : e.ro) = std::uint32_t(std::min<std::size_t>(refs.size(), UINT32_MAX));
        auto r = map_counted(domid, refs, std::span(&e, 1));
        if (!r) return std::move(r).error();
        return std::move(e.map);
    }

    Result<void> map_batch(DomId domid, std::span<const GrantRef> refs, std::span<GrantBatchEntry> entries) override {
        return map_counted(domid, refs, entries);
    }

    Result<void> copy(std::span<const GrantCopySegment> segs) override {
        {
            std::lock_guard lk(mu_);
            ++stats_.copy_calls;
            stats_.copy_segments += segs.size();
        }
        core_->stats.grant_copy_calls.fetch_add(1, std::memory_order_relaxed);
        if (segs.size() > kMaxBatch) return errno_error(E2BIG, "grant copy: too many segments");
        thread_local std::vector<std::byte*> guest;
        guest.resize(segs.size());
        // Core::mu keeps the guest side from ending or revoking access
        // between the checks and the copy; grant_mu (one guest's at a time)
        // orders the reads with concurrent maps and unmaps.
        std::lock_guard lk(core_->mu);
        Domain* locked = nullptr;
        std::unique_lock<std::mutex> g;
        // Check every segment first: the call fails as a whole (the error
        // names the first bad segment), as one GNTTABOP_copy batch checked up front.
        for (std::size_t i = 0; i < segs.size(); ++i) {
            const auto& s = segs[i];
            auto what = [&] {
                return "grant copy segment " + std::to_string(i) + " (" + dom_name(s.domid) + " ref " +
                       std::to_string(s.ref) + ")";
            };
            XV_TRY(checks_locked(s.domid, what));
            Domain& d = *core_->find_locked(s.domid);
            if (&d != locked) {
                g = std::unique_lock(d.grant_mu);
                locked = &d;
            }
            if (auto f = check_ref(d, s.ref, s.to_guest); f != RefFault::None) return ref_error(f, d, s.ref, what());
            // grant_table.h: the range must lie inside the granted page.
            if (std::size_t(s.offset) + s.len > kPageSize)
                return errno_error(EINVAL, what() + ": offset " + std::to_string(s.offset) + " + len " +
                                               std::to_string(s.len) + " crosses the page");
            if (s.len && !s.local) return errno_error(EFAULT, what() + ": no local buffer");
            guest[i] = d.mem + d.grants[s.ref].gfn * kPageSize + s.offset;
        }
        if (g) g.unlock();
        for (std::size_t i = 0; i < segs.size(); ++i) {
            const auto& s = segs[i];
            if (s.to_guest)
                std::memmove(guest[i], s.local, s.len);
            else
                std::memmove(s.local, guest[i], s.len);
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
    void unmap(std::byte* addr, std::uint32_t pages) noexcept override {
        // Without a cookie: the latest live mapping at `addr` of `pages`.
        std::uint64_t cookie = 0;
        {
            std::lock_guard lk(mu_);
            for (std::size_t i = 0; i < slots_.size(); ++i)
                if (slots_[i].live && slots_[i].addr == addr && slots_[i].nrefs == pages) cookie = i + 1;
        }
        if (cookie) release(cookie, true);
    }
    void unmap_cookie(std::byte* addr, std::uint32_t pages, std::uint64_t cookie) noexcept override {
        if (cookie == 0) return unmap(addr, pages);
        release(cookie, true);
    }
    /// One unmap call for all of `maps`: the handle's mutex once, each
    /// guest's grant_mu once per run of its mappings; the same per-ref
    /// unref, zombie release and counters as release() (one call counted).
    void unmap_batch(std::span<const Unmap> maps) noexcept override {
        if (maps.size() == 1) return unmap_cookie(maps[0].addr, maps[0].pages, maps[0].cookie);
        // Released after the locks: guest references (a guest's memory may
        // go with its last one; `cur` is the current run's guest, `held` the
        // earlier runs'), own mmaps, destroyed guests to drop. Only `cur`
        // is used when one guest's views are released: no allocation.
        std::vector<std::shared_ptr<Domain>> held;  // guests whose last mapping went (pin dropped)
        std::vector<std::pair<std::byte*, std::size_t>> own;
        std::vector<std::shared_ptr<Domain>> zombies;
        std::size_t pages = 0;
        bool any = false;
        {
            std::lock_guard lk(mu_);
            Domain* locked = nullptr;
            std::size_t run = 0;  // mappings of `locked` released in this run
            std::unique_lock<std::mutex> g;
            auto end_run = [&] {  // grant_mu of `locked` is held
                if (!locked) return;
                if (locked->dying && locked->mapped_pages == 0) zombies.push_back(shared_of(locked, held));
                // The guest stays alive (in `held`) until the locks are gone.
                if (auto last = unpin_locked(locked, run)) held.push_back(std::move(last));
                run = 0;
            };
            for (const Unmap& m : maps) {
                std::size_t slot = SIZE_MAX;
                if (m.cookie != 0) {
                    slot = m.cookie - 1;
                } else {
                    // Without a cookie: the latest live mapping at addr of pages (as unmap()).
                    for (std::size_t i = 0; i < slots_.size(); ++i)
                        if (slots_[i].live && slots_[i].addr == m.addr && slots_[i].nrefs == m.pages) slot = i;
                }
                if (slot >= slots_.size() || !slots_[slot].live) continue;
                MapRecord& rec = slots_[slot];
                if (rec.dom != locked) {
                    end_run();
                    if (g) g.unlock();
                    locked = rec.dom;
                    g = std::unique_lock(locked->grant_mu);
                }
                rec.dom = nullptr;
                pages += free_slot_locked(slot, *locked, [&](std::byte* a, std::size_t len) { own.emplace_back(a, len); });
                ++run;
                any = true;
            }
            end_run();
            if (g) g.unlock();
            stats_.pages_unmapped += pages;
            if (any) ++stats_.unmap_calls;
        }
        if (!any) return;
        core_->stats.grant_unmap_calls.fetch_add(1, std::memory_order_relaxed);
        core_->res.mapped_grant_pages.fetch_sub(pages, std::memory_order_relaxed);
        for (auto& [a, len] : own) ::munmap(a, len);
        for (auto& z : zombies) release_zombie(z);
    }

private:
    /// Xen's per-ref checks (grant_table.c map_grant_ref / gnttab_copy).
    RefFault check_ref(const Domain& d, GrantRef ref, bool writable) const {
        if (ref >= d.grants.size() || !d.grants[ref].in_use) return RefFault::NotGranted;
        const GrantEntry& e = d.grants[ref];
        if (e.revoked) return RefFault::Revoked;
        if (e.to != core_->opts.self_domid) return RefFault::OtherDomain;
        if (writable && e.readonly) return RefFault::ReadOnly;
        if (e.gfn >= d.pages) return RefFault::OutsideRam;
        return RefFault::None;
    }
    Error ref_error(RefFault f, const Domain& d, GrantRef ref, const std::string& what) const {
        switch (f) {
            case RefFault::NotGranted: return errno_error(EINVAL, what + ": ref is not granted");
            case RefFault::Revoked: return errno_error(EINVAL, what + ": ref was revoked");
            case RefFault::OtherDomain:
                return errno_error(EINVAL, what + ": ref is granted to " + dom_name(d.grants[ref].to) + ", not to " +
                                               dom_name(core_->opts.self_domid));
            case RefFault::ReadOnly: return errno_error(EPERM, what + ": ref is read-only, writable access refused");
            case RefFault::OutsideRam: return errno_error(EINVAL, what + ": frame outside guest RAM");
            case RefFault::None: break;
        }
        return errno_error(EINVAL, what);
    }

    /// Restriction, XSM and liveness checks; `what` is only built for an error.
    template <class What>
    Result<void> checks_locked(DomId domid, const What& what) const {
        if (!core_->check_restrict_locked(domid, std::nullopt, "") || !core_->check_xsm_locked(domid, "") ||
            !core_->live_locked(domid, "")) {
            const std::string w = what();
            XV_TRY(core_->check_restrict_locked(domid, std::nullopt, w.c_str()));
            XV_TRY(core_->check_xsm_locked(domid, w.c_str()));
            auto dr = core_->live_locked(domid, w.c_str());
            if (!dr) return std::move(dr).error();
        }
        return ok();
    }

    Result<void> map_counted(DomId domid, std::span<const GrantRef> refs, std::span<GrantBatchEntry> entries) {
        // Mappings the entries still hold are released first (that takes mu_).
        for (auto& e : entries) {
            e.ro_addr = e.rw_addr = nullptr;
            if (e.map.valid()) e.map.reset();
            if (e.map2.valid()) e.map2.reset();
        }
        std::lock_guard lk(mu_);
        auto r = map_locked(domid, refs, entries);
        ++stats_.map_calls;
        if (!r) ++stats_.map_failures;
        core_->stats.grant_map_calls.fetch_add(1, std::memory_order_relaxed);
        return r;
    }

    /// Locks the grant table of `domid` for a map, after the restriction,
    /// XSM and liveness checks, and sets `d`. Core::mu only when the handle
    /// does not know the guest yet (or the one it knows is gone or dying):
    /// then the checks run under it with their exact errors and the guest
    /// is remembered (weakly: a destroyed guest's memory is not kept).
    /// `dom` is set too unless the handle's pin on the guest (it has live
    /// mappings of it) keeps it alive: then no reference is counted.
    template <class What>
    Result<std::unique_lock<std::mutex>> lock_guest(DomId domid, const What& what, Domain*& d,
                                                    std::shared_ptr<Domain>& dom) {
        const std::uint32_t r = core_->restricted_to.load(std::memory_order_acquire);
        const bool xsm_refuses = core_->opts.xsm == XsmMode::Silo && core_->opts.self_domid != 0 && domid != 0;
        if (guest_id_ == domid && (r == Core::kUnrestricted || r == domid) && !xsm_refuses) {
            if (pinned(guest_raw_) && guest_raw_->id == domid) {
                std::unique_lock g(guest_raw_->grant_mu);
                if (!guest_raw_->dying) {
                    d = guest_raw_;
                    return g;
                }
            } else if ((dom = guest_.lock())) {
                std::unique_lock g(dom->grant_mu);
                if (!dom->dying) {
                    d = dom.get();
                    return g;
                }
            }
        }
        std::lock_guard lk(core_->mu);
        XV_TRY(checks_locked(domid, what));
        dom = core_->domains.find(domid)->second;
        if (guest_.lock() != dom) {
            guest_ = dom;
            guest_id_ = domid;
            guest_ro_ = nullptr;
        }
        guest_raw_ = dom.get();
        d = dom.get();
        // dying is written with Core::mu held: still alive once grant_mu is taken.
        return std::unique_lock(dom->grant_mu);
    }

    Result<void> map_locked(DomId domid, std::span<const GrantRef> refs, std::span<GrantBatchEntry> entries) {
        std::size_t total = 0;
        bool has_ro = false;
        for (const auto& e : entries) {
            total += std::size_t(e.ro) + e.rw;
            has_ro |= e.ro != 0;
        }
        auto what = [&] { return "map " + std::to_string(total) + " grant refs of " + dom_name(domid); };
        if (total == 0) return errno_error(EINVAL, what() + ": no refs");
        if (total > kMaxBatch) return errno_error(E2BIG, what() + ": too many refs");
        if (total > refs.size()) return errno_error(EINVAL, what() + ": entries name more refs than given");
        refs = refs.first(total);
        std::vector<std::uint64_t>& gfns = gfns_;
        gfns.resize(total);
        Domain* dp = nullptr;
        std::shared_ptr<Domain> dom;  // null when the handle's pin keeps the guest
        // Every part's frames contiguous: each is a view into premapped
        // guest RAM (without protect_pages), placed in the same pass as
        // its slot is filled.
        bool contiguous = true;
        {
            auto g = lock_guest(domid, what, dp, dom);
            if (!g) return std::move(g).error();
            Domain& d = *dp;
            // One pass: each ref is checked, then counted; a bad ref takes
            // back the counts of the refs before it (checked, so neither
            // revoked nor freed meanwhile: grant_mu is held).
            const GrantRef* ref = refs.data();
            std::uint64_t* gfn = gfns.data();
            for (const auto& e : entries) {
                for (int part = 0; part < 2; ++part) {
                    const std::uint32_t n = part == 0 ? e.ro : e.rw;
                    const bool writable = part == 1;
                    for (std::uint32_t i = 0; i < n; ++i, ++ref, ++gfn) {
                        if (auto f = check_ref(d, *ref, writable); f != RefFault::None) [[unlikely]] {
                            for (const GrantRef* j = refs.data(); j != ref; ++j) --d.grants[*j].map_count;
                            return ref_error(f, d, *ref, what() + ", ref " + std::to_string(*ref));
                        }
                        GrantEntry& ge = d.grants[*ref];
                        ++ge.map_count;
                        *gfn = ge.gfn;
                        if (i != 0 && ge.gfn != gfn[-1] + 1) contiguous = false;
                    }
                }
            }
            d.mapped_pages += total;
        }
        if (has_ro && !guest_ro_ && !core_->opts.protect_pages) guest_ro_ = ro_view(shared(dp, dom));
        std::size_t slots = 0;
        if (contiguous && !core_->opts.protect_pages && (guest_ro_ || !has_ro)) {
            // Views only: nothing can fail from here.
            const GrantRef* ref = refs.data();
            const std::uint64_t* gfn = gfns.data();
            for (GrantBatchEntry& e : entries) {
                if (e.ro + e.rw == 0) continue;  // nothing mapped, nothing to release
                e.ro_addr = e.ro ? guest_ro_ + gfn[0] * kPageSize : nullptr;
                e.rw_addr = e.rw ? dp->mem + gfn[e.ro] * kPageSize : nullptr;
                const std::uint32_t slot = new_slot();
                MapRecord& rec = slots_[slot];
                rec.dom = dp;
                rec.set_refs(ref, e.ro + e.rw);
                rec.own[0] = rec.own[1] = nullptr;
                rec.own_pages[0] = e.ro;
                rec.own_pages[1] = e.rw;
                rec.addr = e.ro ? e.ro_addr : e.rw_addr;
                rec.live = true;
                e.map = GrantMapping(this, rec.addr, e.ro + e.rw, e.rw != 0, std::uint64_t(slot) + 1);
                ref += e.ro + e.rw;
                gfn += e.ro + e.rw;
                ++slots;
            }
        } else {
            auto placed_or = place(dp, dom, refs, entries);
            if (!placed_or) return errno_error(placed_or.error().code.value(), what() + ": " + placed_or.error().message);
            slots = *placed_or;
        }
        if (dom)
            pin_locked(std::move(dom), slots);
        else
            pin_more_locked(dp, slots);
        stats_.pages_mapped += total;
        core_->stats.grant_pages_mapped.fetch_add(total, std::memory_order_relaxed);
        core_->res.mapped_grant_pages.fetch_add(total, std::memory_order_relaxed);
        return ok();
    }

    /// `dom`, or the handle's pin's reference on `d` when `dom` is null.
    std::shared_ptr<Domain> shared(Domain* d, const std::shared_ptr<Domain>& dom) const {
        return dom ? dom : shared_of(d, {});
    }

    /// A free slot (made when none is).
    std::uint32_t new_slot() {
        if (!free_.empty()) {
            const std::uint32_t slot = free_.back();
            free_.pop_back();
            return slot;
        }
        slots_.emplace_back();
        return std::uint32_t(slots_.size() - 1);
    }

    /// map_locked()'s placement when a part is not a plain view: a view
    /// into premapped guest RAM when its frames are contiguous (RW: the
    /// guest's own RW mapping; RO: a PROT_READ view), or, with
    /// protect_pages, an mmap of exactly its frames. The refs are counted
    /// (gfns_ holds their frames); on an error their counts are taken back
    /// and nothing stays mapped. Returns the slots filled.
    Result<std::size_t> place(Domain* dp, const std::shared_ptr<Domain>& dom_or_null, std::span<const GrantRef> refs,
                              std::span<GrantBatchEntry> entries) {
        const std::shared_ptr<Domain> dom = shared(dp, dom_or_null);
        const std::vector<std::uint64_t>& gfns = gfns_;
        std::vector<Placed>& placed = placed_;
        placed.assign(entries.size(), Placed{});
        std::size_t at = 0;
        for (std::size_t k = 0; k < entries.size(); ++k) {
            for (int part = 0; part < 2; ++part) {
                const std::uint32_t n = part == 0 ? entries[k].ro : entries[k].rw;
                if (n == 0) continue;
                const std::span<const std::uint64_t> g(gfns.data() + at, n);
                at += n;
                bool contiguous = true;
                for (std::size_t i = 1; i < n; ++i)
                    if (g[i] != g[0] + i) contiguous = false;
                if (!core_->opts.protect_pages && contiguous) {
                    if (part == 1) {
                        placed[k].addr[1] = dom->mem + g[0] * kPageSize;
                    } else {
                        if (!guest_ro_) guest_ro_ = ro_view(dom);
                        if (guest_ro_) placed[k].addr[0] = guest_ro_ + g[0] * kPageSize;
                    }
                }
                if (!placed[k].addr[part]) {
                    auto m = mmap_pages(*dom, g, part == 1);
                    if (!m) {
                        for (std::size_t j = 0; j <= k; ++j)
                            for (int p = 0; p < 2; ++p)
                                if (placed[j].own[p])
                                    ::munmap(placed[j].addr[p],
                                             std::size_t(p == 0 ? entries[j].ro : entries[j].rw) * kPageSize);
                        undo(dom, refs);
                        return std::move(m).error();
                    }
                    placed[k].addr[part] = *m;
                    placed[k].own[part] = true;
                }
            }
        }
        std::size_t pos = 0;
        std::size_t slots = 0;
        for (std::size_t k = 0; k < entries.size(); ++k) {
            GrantBatchEntry& e = entries[k];
            if (e.ro + e.rw == 0) continue;  // nothing mapped, nothing to release
            const std::uint32_t slot = new_slot();
            MapRecord& rec = slots_[slot];
            rec.dom = dp;
            ++slots;
            rec.set_refs(refs.data() + pos, e.ro + e.rw);
            pos += std::size_t(e.ro) + e.rw;
            for (int p = 0; p < 2; ++p) {
                rec.own[p] = placed[k].own[p] ? placed[k].addr[p] : nullptr;
                rec.own_pages[p] = p == 0 ? e.ro : e.rw;
            }
            rec.addr = e.ro ? placed[k].addr[0] : placed[k].addr[1];
            rec.live = true;
            e.ro_addr = placed[k].addr[0];
            e.rw_addr = placed[k].addr[1];
            e.map = GrantMapping(this, rec.addr, e.ro + e.rw, e.rw != 0, std::uint64_t(slot) + 1);
        }
        return slots;
    }

    /// The PROT_READ view of `dom`'s RAM, made on first use (nullptr if
    /// it cannot be made: the caller then mmaps the frames).
    std::byte* ro_view(const std::shared_ptr<Domain>& dom) {
        for (auto it = views_.begin(); it != views_.end();) {
            auto v = it->dom.lock();
            if (v == dom) return it->base;
            if (!v) {
                // The domain is gone: its view goes with it.
                ::munmap(it->base, it->len);
                it = views_.erase(it);
            } else {
                ++it;
            }
        }
        const std::size_t len = dom->pages * kPageSize;
        void* p = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, dom->memfd, 0);
        if (p == MAP_FAILED) return nullptr;
        views_.push_back(RoView{dom, static_cast<std::byte*>(p), len});
        return static_cast<std::byte*>(p);
    }

    /// Reserves a range and maps each run of consecutive frames over it
    /// with the protection Xen would give (GNTMAP_readonly -> PROT_READ).
    static Result<std::byte*> mmap_pages(const Domain& d, std::span<const std::uint64_t> gfns, bool writable) {
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

    /// Takes back the map counts of a failed map.
    void undo(const std::shared_ptr<Domain>& dom, std::span<const GrantRef> refs) {
        bool released;
        {
            std::lock_guard g(dom->grant_mu);
            for (GrantRef r : refs) unref_locked(*dom, r);
            dom->mapped_pages -= refs.size();
            released = dom->dying && dom->mapped_pages == 0;
        }
        if (released) release_zombie(dom);
    }

    /// A destroyed domain whose last grant mapping went: drop it (Core::mu).
    void release_zombie(const std::shared_ptr<Domain>& dom) {
        std::lock_guard lk(core_->mu);
        auto it = core_->domains.find(dom->id);
        if (it != core_->domains.end() && it->second == dom) core_->maybe_release_locked(dom->id);
    }

    static void unref_locked(Domain& d, GrantRef r) {
        if (r >= d.grants.size()) return;
        GrantEntry& e = d.grants[r];
        if (e.map_count) --e.map_count;
        // A revoked ref is freed once its last mapping goes.
        if (e.revoked && e.map_count == 0) e = GrantEntry{};
    }

    /// Frees the live slot `slot` (mu_ and its guest's grant_mu held): the
    /// map counts of its refs and the guest's mapped pages, the slot itself
    /// (its refs keep their capacity for the slot's next map). Returns its
    /// pages; its own mmaps go to on_own(addr, len), to be unmapped after
    /// the locks. The slot's guest reference is the caller's to take.
    template <class OnOwn>
    std::size_t free_slot_locked(std::size_t slot, Domain& d, OnOwn&& on_own) {
        MapRecord& rec = slots_[slot];
        const std::size_t pages = rec.nrefs;
        for (GrantRef r : rec.refs()) unref_locked(d, r);
        d.mapped_pages -= pages;
        rec.nrefs = 0;
        for (int p = 0; p < 2; ++p)
            if (rec.own[p]) on_own(rec.own[p], std::size_t(rec.own_pages[p]) * kPageSize);
        rec.live = false;
        free_.push_back(std::uint32_t(slot));
        return pages;
    }

    void release(std::uint64_t cookie, bool count_call) noexcept {
        std::shared_ptr<Domain> dom;  // set when the guest's pin goes, or for a zombie
        std::pair<std::byte*, std::size_t> own[2]{};
        int n_own = 0;
        std::size_t pages;
        bool released;
        {
            std::lock_guard lk(mu_);
            const std::size_t slot = cookie - 1;
            if (slot >= slots_.size() || !slots_[slot].live) return;
            Domain* d = slots_[slot].dom;
            slots_[slot].dom = nullptr;
            {
                std::lock_guard g(d->grant_mu);
                pages = free_slot_locked(slot, *d, [&](std::byte* a, std::size_t len) { own[n_own++] = {a, len}; });
                // The last unmap of a destroyed domain's grants releases the zombie.
                released = d->dying && d->mapped_pages == 0;
                if (released) dom = shared_of(d, {});
            }
            // Dropped (if it was the last reference) only after the locks.
            if (auto last = unpin_locked(d)) dom = std::move(last);
            stats_.pages_unmapped += pages;
            if (count_call) ++stats_.unmap_calls;
        }
        if (count_call) core_->stats.grant_unmap_calls.fetch_add(1, std::memory_order_relaxed);
        core_->res.mapped_grant_pages.fetch_sub(pages, std::memory_order_relaxed);
        for (int i = 0; i < n_own; ++i) ::munmap(own[i].first, own[i].second);
        if (released) release_zombie(dom);
    }

    /// The handle's reference on a guest it has live mappings of.
    struct Pin {
        std::shared_ptr<Domain> dom;
        std::size_t slots = 0;  ///< live mappings (slots) of that guest
    };
    /// Adds `slots` live mappings of `dom` to its pin (mu_ held).
    /// The reference is moved into a new pin (no count taken per map).
    void pin_locked(std::shared_ptr<Domain> dom, std::size_t slots) {
        if (slots == 0) return;
        for (Pin& p : pins_)
            if (p.dom == dom) {
                p.slots += slots;
                return;
            }
        pins_.push_back(Pin{std::move(dom), slots});
    }
    /// True when the handle has live mappings of `d` (mu_ held): its pin
    /// keeps `d` alive.
    bool pinned(const Domain* d) const noexcept {
        for (const Pin& p : pins_)
            if (p.dom.get() == d) return true;
        return false;
    }
    /// Adds `slots` live mappings of `d`, a pinned guest (mu_ held).
    void pin_more_locked(Domain* d, std::size_t slots) noexcept {
        for (Pin& p : pins_)
            if (p.dom.get() == d) {
                p.slots += slots;
                return;
            }
    }
    /// `n` live mappings of `d` gone (mu_ held): its pin's reference when
    /// they were the last (to drop after the locks), else null.
    std::shared_ptr<Domain> unpin_locked(Domain* d, std::size_t n = 1) noexcept {
        for (std::size_t i = 0; i < pins_.size(); ++i) {
            if (pins_[i].dom.get() != d) continue;
            pins_[i].slots -= n;
            if (pins_[i].slots != 0) return nullptr;
            std::shared_ptr<Domain> last = std::move(pins_[i].dom);
            pins_[i] = std::move(pins_.back());
            pins_.pop_back();
            return last;
        }
        return nullptr;
    }
    /// A shared reference to `d`, a guest pinned by this handle or in `held` (mu_ held).
    std::shared_ptr<Domain> shared_of(Domain* d, std::span<const std::shared_ptr<Domain>> held) const {
        for (const Pin& p : pins_)
            if (p.dom.get() == d) return p.dom;
        for (const auto& h : held)
            if (h.get() == d) return h;
        return nullptr;
    }

    std::shared_ptr<Core> core_;
    mutable std::mutex mu_;  ///< guards everything below (held across a whole map)
    std::vector<Pin> pins_;  ///< one per guest with live mappings
    GrantStats stats_;
    std::weak_ptr<Domain> guest_;  ///< the guest mapped last
    Domain* guest_raw_ = nullptr;  ///< the same (compared only unless pinned(): may be gone)
    DomId guest_id_ = 0;
    std::byte* guest_ro_ = nullptr;  ///< its PROT_READ view, once made
    std::vector<MapRecord> slots_;
    std::vector<std::uint32_t> free_;
    std::vector<RoView> views_;
    std::vector<std::uint64_t> gfns_;  ///< map_locked() scratch: the frames of its refs
    struct Placed {
        std::byte* addr[2] = {nullptr, nullptr};
        bool own[2] = {false, false};
    };
    std::vector<Placed> placed_;       ///< map_locked() scratch: where each entry's parts went
};

}  // namespace

std::unique_ptr<GrantMapper> make_grant_mapper(std::shared_ptr<Core> core) {
    return std::make_unique<GrantMapperImpl>(std::move(core));
}

}  // namespace xv::xen::sim::detail
