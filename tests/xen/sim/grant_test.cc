// SPDX-License-Identifier: GPL-2.0-only
// xen/sim: guest memory, grants and the GrantMapper.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "xv/xen/sim.h"

namespace xv::xen::sim {
namespace {

struct GrantFixture : ::testing::Test {
    void SetUp() override { make({}); }

    void make(SimOptions o) {
        hv = SimHypervisor::create(o);
        auto id = hv->create_domain({"guest", 256, 2});
        ASSERT_TRUE(id) << id.error().describe();
        domid = *id;
        g = hv->guest(domid);
        ASSERT_TRUE(g);
        auto m = hv->open_grants();
        ASSERT_TRUE(m);
        mapper = std::move(*m);
    }

    /// Allocates one page, fills it with `fill` and grants it to dom0.
    GrantRef page(bool readonly, std::uint8_t fill, std::uint64_t* gfn_out = nullptr) {
        auto gfn = g->alloc_pages(1);
        EXPECT_TRUE(gfn);
        std::memset(g->gpa_ptr(*gfn * kPageSize), fill, kPageSize);
        if (gfn_out) *gfn_out = *gfn;
        auto ref = g->grant(*gfn, 0, readonly);
        EXPECT_TRUE(ref);
        return *ref;
    }

    std::shared_ptr<SimHypervisor> hv;
    DomId domid = 0;
    std::shared_ptr<SimGuest> g;
    std::unique_ptr<GrantMapper> mapper;
};

TEST_F(GrantFixture, MemoryIsBoundsChecked) {
    auto gfn = g->alloc_pages(2);
    ASSERT_TRUE(gfn);
    std::uint64_t gpa = *gfn * kPageSize + 100;
    std::byte in[8] = {std::byte{1}, std::byte{2}, std::byte{3}};
    ASSERT_TRUE(g->write(gpa, in));
    std::byte out[8]{};
    ASSERT_TRUE(g->read(gpa, out));
    EXPECT_EQ(0, std::memcmp(in, out, sizeof in));
    EXPECT_EQ(g->gpa_ptr(gpa)[1], std::byte{2});
    EXPECT_FALSE(g->write(256 * kPageSize - 4, in));  // straddles the end of RAM
    EXPECT_FALSE(g->read(~0ull - 2, out));            // overflow
    EXPECT_EQ(g->gpa_ptr(256 * kPageSize), nullptr);
    auto too_many = g->alloc_pages(1000);
    ASSERT_FALSE(too_many);
    EXPECT_EQ(too_many.error().code, std::errc::not_enough_memory);
}

TEST_F(GrantFixture, MapSeesGuestDataAndWritesBack) {
    GrantRef ref = page(false, 0xab);
    GrantRef refs[] = {ref};
    auto m = mapper->map(domid, refs, true);
    ASSERT_TRUE(m) << m.error().describe();
    EXPECT_EQ(m->data()[17], std::byte{0xab});
    m->data()[5] = std::byte{0x42};
    std::byte b{};
    auto gfn_ptr = g->dma_ptr(grant_dma::encode(ref));
    ASSERT_NE(gfn_ptr, nullptr);
    b = gfn_ptr[5];
    EXPECT_EQ(b, std::byte{0x42});
    EXPECT_EQ(mapper->pages_in_use(), 1u);
    EXPECT_EQ(g->mapped_refs(), 1u);
    m->reset();
    EXPECT_EQ(mapper->pages_in_use(), 0u);
    EXPECT_EQ(g->mapped_refs(), 0u);
}

TEST_F(GrantFixture, WritableMapOfReadOnlyRefFails) {
    GrantRef ref = page(true, 1);
    GrantRef refs[] = {ref};
    auto m = mapper->map(domid, refs, true);
    ASSERT_FALSE(m);
    EXPECT_EQ(m.error().code, std::errc::operation_not_permitted);
    EXPECT_NE(m.error().message.find("ref " + std::to_string(ref)), std::string::npos) << m.error().message;
    EXPECT_NE(m.error().message.find("dom" + std::to_string(domid)), std::string::npos);
    auto ro = mapper->map(domid, refs, false);
    ASSERT_TRUE(ro);
    EXPECT_FALSE(ro->writable());
    EXPECT_EQ(ro->data()[0], std::byte{1});
    EXPECT_EQ(mapper->stats().map_failures, 1u);
}

using GrantDeathTest = GrantFixture;

TEST_F(GrantDeathTest, WriteThroughReadOnlyMappingFaults) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    GrantRef ref = page(true, 7);
    GrantRef refs[] = {ref};
    auto m = mapper->map(domid, refs, false);
    ASSERT_TRUE(m);
    volatile std::byte* p = m->data();
    std::byte before = p[0];
    EXPECT_EQ(before, std::byte{7});
    EXPECT_DEATH({ p[0] = std::byte{8}; }, "");
    std::byte after = p[0];
    EXPECT_EQ(after, std::byte{7});
}

TEST_F(GrantFixture, RevokedRefCannotBeMappedButOldMappingStays) {
    GrantRef ref = page(false, 3);
    GrantRef refs[] = {ref};
    auto m = mapper->map(domid, refs, true);
    ASSERT_TRUE(m);
    g->revoke(ref);
    auto again = mapper->map(domid, refs, true);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, std::errc::invalid_argument);
    EXPECT_NE(again.error().message.find("revoked"), std::string::npos) << again.error().message;
    m->data()[0] = std::byte{9};  // the existing mapping is still valid
    EXPECT_EQ(m->data()[0], std::byte{9});
    m->reset();
    // Once unmapped, the revoked ref is gone entirely.
    auto third = mapper->map(domid, refs, false);
    ASSERT_FALSE(third);
    EXPECT_EQ(third.error().code, std::errc::invalid_argument);
}

TEST_F(GrantFixture, UnknownRefFails) {
    GrantRef refs[] = {12345};
    auto m = mapper->map(domid, refs, false);
    ASSERT_FALSE(m);
    EXPECT_EQ(m.error().code, std::errc::invalid_argument);
    EXPECT_NE(m.error().message.find("ref 12345"), std::string::npos);
    GrantRef none[] = {0};
    EXPECT_FALSE(mapper->map(999, none, false));  // unknown domain
    EXPECT_FALSE(mapper->map(domid, std::span<const GrantRef>{}, false));
}

TEST_F(GrantFixture, RefGrantedToAnotherDomainFails) {
    auto other = hv->create_domain({"other", 16, 1});
    ASSERT_TRUE(other);
    auto gfn = g->alloc_pages(1);
    ASSERT_TRUE(gfn);
    auto ref = g->grant(*gfn, *other, false);
    ASSERT_TRUE(ref);
    GrantRef refs[] = {*ref};
    auto m = mapper->map(domid, refs, false);
    ASSERT_FALSE(m);
    EXPECT_EQ(m.error().code, std::errc::invalid_argument);
    EXPECT_NE(m.error().message.find("granted to dom" + std::to_string(*other)), std::string::npos)
        << m.error().message;
}

TEST_F(GrantFixture, EndAccessIsBusyWhileMapped) {
    GrantRef ref = page(false, 0);
    GrantRef refs[] = {ref};
    auto m = mapper->map(domid, refs, true);
    ASSERT_TRUE(m);
    auto e = g->end_access(ref);
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().code, std::errc::device_or_resource_busy);
    m->reset();
    EXPECT_TRUE(g->end_access(ref));
    EXPECT_FALSE(g->end_access(ref));  // already ended
    EXPECT_FALSE(mapper->map(domid, refs, true));
}

TEST_F(GrantFixture, ConsecutiveRefsAndStraddlingBuffer) {
    // A 200-byte buffer at offset 4000 spans two pages: two consecutive refs.
    auto dma = g->alloc_dma(200, 0, true, 4000);
    ASSERT_TRUE(dma);
    EXPECT_TRUE(grant_dma::is_grant(*dma));
    EXPECT_EQ(grant_dma::offset(*dma), 4000u);
    EXPECT_EQ(grant_dma::pages(*dma, 200), 2u);
    std::byte* buf = g->dma_ptr(*dma);
    ASSERT_NE(buf, nullptr);
    for (int i = 0; i < 200; ++i) buf[i] = std::byte(i);
    GrantRef first = GrantRef(grant_dma::first_ref(*dma));
    GrantRef refs[] = {first, first + 1};
    auto m = mapper->map(domid, refs, false);
    ASSERT_TRUE(m) << m.error().describe();
    EXPECT_EQ(m->pages(), 2u);
    for (int i = 0; i < 200; ++i) ASSERT_EQ(m->data()[4000 + i], std::byte(i)) << i;
    // Writable map of the RO range refused; the next ref after the range is not ours.
    EXPECT_FALSE(mapper->map(domid, refs, true));
    GrantRef beyond[] = {first, first + 1, first + 2};
    EXPECT_FALSE(mapper->map(domid, beyond, false));
}

TEST_F(GrantFixture, NonContiguousFramesAreMappedInOrder) {
    // Refs consecutive, frames not: page A, gap, page B.
    std::uint64_t ga = 0, gb = 0;
    GrantRef ra = page(false, 0xa1, &ga);
    ASSERT_TRUE(g->alloc_pages(3));
    GrantRef rb = page(false, 0xb2, &gb);
    ASSERT_EQ(rb, ra + 1);
    ASSERT_NE(gb, ga + 1);
    GrantRef refs[] = {rb, ra};
    auto m = mapper->map(domid, refs, true);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->data()[0], std::byte{0xb2});
    EXPECT_EQ(m->data()[kPageSize], std::byte{0xa1});
    m->data()[kPageSize + 1] = std::byte{0x55};
    EXPECT_EQ(g->gpa_ptr(ga * kPageSize)[1], std::byte{0x55});
}

TEST_F(GrantFixture, FastPathWithoutProtection) {
    SimOptions o;
    o.protect_pages = false;
    make(o);
    auto dma = g->alloc_dma(3 * kPageSize, 0, false);
    ASSERT_TRUE(dma);
    GrantRef first = GrantRef(grant_dma::first_ref(*dma));
    GrantRef refs[] = {first, first + 1, first + 2};
    auto m = mapper->map(domid, refs, true);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->data(), g->dma_ptr(*dma));  // a plain pointer into guest RAM
    // Two mappings of the same frames coexist and release independently.
    auto m2 = mapper->map(domid, refs, false);
    ASSERT_TRUE(m2);
    EXPECT_EQ(mapper->pages_in_use(), 6u);
    m->reset();
    EXPECT_EQ(mapper->pages_in_use(), 3u);
    EXPECT_FALSE(g->end_access(first));
    m2->reset();
    EXPECT_TRUE(g->end_access(first));
    // Still no writable map of a RO ref, even without page protection.
    GrantRef ro = page(true, 0);
    GrantRef ror[] = {ro};
    EXPECT_FALSE(mapper->map(domid, ror, true));
}

TEST_F(GrantFixture, CountersTrackMapUnmapCopy) {
    auto dma = g->alloc_dma(2 * kPageSize, 0, false);
    ASSERT_TRUE(dma);
    GrantRef first = GrantRef(grant_dma::first_ref(*dma));
    GrantRef refs[] = {first, first + 1};
    {
        auto a = mapper->map(domid, refs, true);
        auto b = mapper->map(domid, std::span<const GrantRef>(refs, 1), false);
        ASSERT_TRUE(a && b);
        EXPECT_EQ(mapper->pages_in_use(), 3u);
        EXPECT_EQ(hv->resources().mapped_grant_pages, 3u);
    }
    std::byte local[16]{};
    GrantCopySegment seg{domid, first, 0, 16, local, false};
    ASSERT_TRUE(mapper->copy(std::span(&seg, 1)));
    auto s = mapper->stats();
    EXPECT_EQ(s.map_calls, 2u);
    EXPECT_EQ(s.unmap_calls, 2u);
    EXPECT_EQ(s.pages_mapped, 3u);
    EXPECT_EQ(s.pages_unmapped, 3u);
    EXPECT_EQ(s.copy_calls, 1u);
    EXPECT_EQ(s.copy_segments, 1u);
    EXPECT_EQ(mapper->pages_in_use(), 0u);
    auto bs = hv->stats();
    EXPECT_EQ(bs.grant_map_calls, 2u);
    EXPECT_EQ(bs.grant_pages_mapped, 3u);
    EXPECT_EQ(bs.grant_unmap_calls, 2u);
    EXPECT_EQ(bs.grant_copy_calls, 1u);
    EXPECT_EQ(bs.foreign_ram_maps, 0u);
    EXPECT_EQ(hv->resources().mapped_grant_pages, 0u);
}

TEST_F(GrantFixture, CopyChecksDirectionAndBounds) {
    std::uint64_t gfn = 0;
    GrantRef ro = page(true, 0x11, &gfn);
    GrantRef rw = page(false, 0x22);
    std::byte buf[64];
    std::memset(buf, 0x77, sizeof buf);
    // Guest -> local from a RO ref is fine.
    GrantCopySegment rd{domid, ro, 10, 32, buf, false};
    ASSERT_TRUE(mapper->copy(std::span(&rd, 1)));
    EXPECT_EQ(buf[0], std::byte{0x11});
    // Local -> guest into a RO ref is refused.
    GrantCopySegment wr{domid, ro, 0, 8, buf, true};
    auto e = mapper->copy(std::span(&wr, 1));
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().code, std::errc::operation_not_permitted);
    // Crossing the page end is refused.
    GrantCopySegment cross{domid, rw, 4090, 16, buf, false};
    EXPECT_FALSE(mapper->copy(std::span(&cross, 1)));
    // A batch with one bad segment fails as a whole: nothing is written.
    std::memset(buf, 0x99, sizeof buf);
    GrantCopySegment batch[] = {{domid, rw, 0, 8, buf, true}, {domid, ro, 0, 8, buf, true}};
    auto be = mapper->copy(batch);
    ASSERT_FALSE(be);
    EXPECT_NE(be.error().message.find("segment 1"), std::string::npos) << be.error().message;
    auto rwptr = g->dma_ptr(grant_dma::encode(rw));
    EXPECT_EQ(rwptr[0], std::byte{0x22});
    // The good batch writes.
    GrantCopySegment good{domid, rw, 100, 8, buf, true};
    ASSERT_TRUE(mapper->copy(std::span(&good, 1)));
    EXPECT_EQ(rwptr[100], std::byte{0x99});
    EXPECT_EQ(rwptr[99], std::byte{0x22});
    // Foreign and unknown refs fail.
    GrantCopySegment unk{domid, 99999, 0, 8, buf, false};
    EXPECT_FALSE(mapper->copy(std::span(&unk, 1)));
}

TEST_F(GrantFixture, ConcurrentMapsFromManyThreads) {
    auto dma = g->alloc_dma(4 * kPageSize, 0, false);
    ASSERT_TRUE(dma);
    GrantRef first = GrantRef(grant_dma::first_ref(*dma));
    std::vector<std::thread> ts;
    std::atomic<int> failures{0};
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&, t] {
            for (int i = 0; i < 200; ++i) {
                GrantRef refs[] = {first + GrantRef(t)};
                auto m = mapper->map(domid, refs, true);
                if (!m) {
                    ++failures;
                    continue;
                }
                m->data()[i % kPageSize] = std::byte(t);
            }
        });
    for (auto& t : ts) t.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(mapper->pages_in_use(), 0u);
    EXPECT_EQ(mapper->stats().map_calls, 800u);
    EXPECT_EQ(g->mapped_refs(), 0u);
}

TEST_F(GrantFixture, MoveAndResetUnmapExactlyOnce) {
    GrantRef ref = page(false, 0);
    GrantRef refs[] = {ref};
    {
        auto m = mapper->map(domid, refs, true);
        ASSERT_TRUE(m);
        EXPECT_EQ(g->mapped_refs(), 1u);
        m->reset();
    }
    auto m = mapper->map(domid, refs, true);
    ASSERT_TRUE(m);
    GrantMapping moved = std::move(*m);
    EXPECT_FALSE(m->valid());
    EXPECT_TRUE(moved.valid());
    moved.reset();
    moved.reset();  // idempotent
    EXPECT_EQ(g->mapped_refs(), 0u);
    EXPECT_EQ(mapper->stats().unmap_calls, 2u);
}

TEST_F(GrantDeathTest, ReadOnlyViewFaultsOnWriteWithoutPageProtection) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    SimOptions o;
    o.protect_pages = false;
    make(o);
    // Contiguous frames are handed out as views of premapped guest RAM; the
    // RO view is PROT_READ, so RO protection stays real.
    auto dma = g->alloc_dma(2 * kPageSize, 0, true);
    ASSERT_TRUE(dma);
    std::memset(g->dma_ptr(*dma), 0x5a, 2 * kPageSize);
    GrantRef first = GrantRef(grant_dma::first_ref(*dma));
    GrantRef refs[] = {first, first + 1};
    auto m = mapper->map(domid, refs, false);
    ASSERT_TRUE(m);
    EXPECT_NE(m->data(), g->dma_ptr(*dma));  // not the guest's RW mapping
    volatile std::byte* p = m->data();
    std::byte seen = p[kPageSize + 7];
    EXPECT_EQ(seen, std::byte{0x5a});
    g->dma_ptr(*dma)[3] = std::byte{0x11};  // the guest's writes show through
    seen = p[3];
    EXPECT_EQ(seen, std::byte{0x11});
    EXPECT_DEATH({ p[kPageSize] = std::byte{8}; }, "");
}

/// Three chains' worth of refs: RO page + RW page each.
struct BatchFixture : GrantFixture {
    void SetUp() override {
        SimOptions o;
        o.protect_pages = protect_pages_;
        make(o);
        for (int i = 0; i < 3; ++i) {
            ro.push_back(page(true, std::uint8_t(0x10 + i)));
            rw.push_back(page(false, std::uint8_t(0x20 + i)));
            refs.push_back(ro.back());
            refs.push_back(rw.back());
            entries[i].ro = 1;
            entries[i].rw = 1;
        }
    }
    bool protect_pages_ = false;
    std::vector<GrantRef> ro, rw, refs;
    GrantBatchEntry entries[3];
};

TEST_F(BatchFixture, MapBatchIsOneCallAndEntriesReleaseOnTheirOwn) {
    ASSERT_TRUE(mapper->map_batch(domid, refs, entries));
    EXPECT_EQ(mapper->stats().map_calls, 1u);
    EXPECT_EQ(mapper->pages_in_use(), 6u);
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(entries[i].ro_addr[5], std::byte(0x10 + i));
        EXPECT_EQ(entries[i].rw_addr[5], std::byte(0x20 + i));
        EXPECT_TRUE(entries[i].map.valid());
        EXPECT_FALSE(entries[i].map2.valid());  // one handle per entry
    }
    entries[1].rw_addr[0] = std::byte{0x77};
    // A mapped ref cannot be ended; releasing entry 1 frees exactly its refs.
    EXPECT_FALSE(g->end_access(rw[1]));
    entries[1].map.reset();
    EXPECT_EQ(mapper->stats().unmap_calls, 1u);
    EXPECT_EQ(mapper->pages_in_use(), 4u);
    EXPECT_TRUE(g->end_access(rw[1]));
    EXPECT_TRUE(g->end_access(ro[1]));
    EXPECT_FALSE(g->end_access(rw[0]));
    EXPECT_FALSE(g->end_access(ro[2]));
    EXPECT_EQ(entries[0].rw_addr[5], std::byte{0x20});  // the others stay mapped
    entries[0].map.reset();
    entries[2].map.reset();
    EXPECT_EQ(mapper->pages_in_use(), 0u);
    EXPECT_EQ(mapper->stats().unmap_calls, 3u);
}

TEST_F(BatchFixture, MapBatchFailsAsAWhole) {
    g->revoke(rw[2]);  // not mapped: freed at once
    auto r = mapper->map_batch(domid, refs, entries);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("ref " + std::to_string(rw[2]) + ": ref is not granted"), std::string::npos)
        << r.error().message;
    EXPECT_EQ(mapper->pages_in_use(), 0u);
    for (auto& e : entries) EXPECT_FALSE(e.map.valid());
    EXPECT_TRUE(g->end_access(rw[0]));  // no map count left behind
    // A RO ref asked RW fails the batch too.
    std::vector<GrantRef> bad = {ro[0], ro[1]};
    GrantBatchEntry e[1];
    e[0].ro = 1;
    e[0].rw = 1;
    auto r2 = mapper->map_batch(domid, bad, e);
    ASSERT_FALSE(r2);
    EXPECT_EQ(r2.error().code, std::errc::operation_not_permitted);
    EXPECT_TRUE(g->end_access(ro[0]));
}

TEST_F(BatchFixture, DestroyedDomainStaysZombieUntilLastEntryIsReleased) {
    ASSERT_TRUE(mapper->map_batch(domid, refs, entries));
    ASSERT_TRUE(hv->destroy_domain(domid));
    EXPECT_EQ(hv->zombies(), std::vector<DomId>{domid});
    entries[0].map.reset();
    entries[1].map.reset();
    EXPECT_EQ(hv->zombies(), std::vector<DomId>{domid});
    EXPECT_EQ(entries[2].rw_addr[5], std::byte{0x22});  // memory alive while mapped
    entries[2].map.reset();
    EXPECT_TRUE(hv->zombies().empty());
}

TEST_F(BatchFixture, ReleaseMappingsIsOneUnmapCallForAllEntries) {
    ASSERT_TRUE(mapper->map_batch(domid, refs, entries));
    g->revoke(ro[1]);  // mapped: freed with its last mapping
    GrantMapping* maps[] = {&entries[0].map, nullptr, &entries[1].map, &entries[1].map2, &entries[2].map};
    release_mappings(maps);
    for (auto& e : entries) EXPECT_FALSE(e.map.valid());
    const auto s = mapper->stats();
    EXPECT_EQ(s.unmap_calls, 1u);
    EXPECT_EQ(s.pages_unmapped, 6u);
    EXPECT_EQ(mapper->pages_in_use(), 0u);
    EXPECT_EQ(hv->stats().grant_unmap_calls, 1u);
    EXPECT_EQ(hv->resources().mapped_grant_pages, 0u);
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(g->end_access(rw[i])) << i;  // no map count left behind
    EXPECT_TRUE(g->end_access(ro[0]));
    // The revoked ref is gone entirely now.
    GrantRef gone[] = {ro[1]};
    EXPECT_FALSE(mapper->map(domid, gone, false));
    // Released mappings are not released again.
    release_mappings(maps);
    EXPECT_EQ(mapper->stats().unmap_calls, 1u);
}

TEST_F(BatchFixture, ReleaseMappingsOfADestroyedDomainReleasesTheZombie) {
    ASSERT_TRUE(mapper->map_batch(domid, refs, entries));
    ASSERT_TRUE(hv->destroy_domain(domid));
    GrantMapping* first[] = {&entries[0].map, &entries[1].map};
    release_mappings(first);
    EXPECT_EQ(hv->zombies(), std::vector<DomId>{domid});
    EXPECT_EQ(entries[2].rw_addr[5], std::byte{0x22});  // memory alive while mapped
    GrantMapping* last[] = {&entries[2].map};
    release_mappings(last);
    EXPECT_TRUE(hv->zombies().empty());
    EXPECT_EQ(mapper->stats().unmap_calls, 2u);
}

struct ProtectedBatchFixture : BatchFixture {
    ProtectedBatchFixture() { protect_pages_ = true; }
};

TEST_F(ProtectedBatchFixture, MapBatchWithPageProtectionMapsExactFrames) {
    ASSERT_TRUE(mapper->map_batch(domid, refs, entries));
    EXPECT_EQ(mapper->stats().map_calls, 1u);
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(entries[i].ro_addr[5], std::byte(0x10 + i));
        EXPECT_EQ(entries[i].rw_addr[5], std::byte(0x20 + i));
    }
    GrantMapping* maps[] = {&entries[0].map, &entries[1].map, &entries[2].map};
    release_mappings(maps);  // their own mmaps go too
    EXPECT_EQ(mapper->stats().unmap_calls, 1u);
    EXPECT_EQ(mapper->pages_in_use(), 0u);
    EXPECT_TRUE(g->end_access(ro[0]));
}

}  // namespace
}  // namespace xv::xen::sim
