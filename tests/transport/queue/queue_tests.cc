// SPDX-License-Identifier: GPL-2.0-only
// Virtqueue tests, driven from the guest side over xen/sim: one test per
// spec rule (virtio 1.2 §2.7 split, §2.8 packed) and per grant rule.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "xv/test/queue_harness.h"
#include "xv/test/virtqueue_driver.h"
#include "xv/transport/guest_memory.h"
#include "xv/transport/virtqueue.h"

namespace {

using namespace xv;
using namespace xv::test;
using namespace xv::test::desc_flags;
using transport::DescriptorChain;
using transport::Reader;
using transport::Writer;
using transport::Virtqueue;

class QueueTest : public ::testing::Test {
protected:
    void SetUp() override {
        auto h = QueueHarness::create();
        ASSERT_TRUE(h) << h.error().describe();
        h_ = std::move(*h);
    }

    std::unique_ptr<VirtqueueDriver> driver(DriverOptions o = {}) {
        auto d = h_->driver(std::move(o));
        EXPECT_TRUE(d) << d.error().describe();
        return d ? std::move(*d) : nullptr;
    }
    std::unique_ptr<Virtqueue> queue(const VirtqueueDriver& d) {
        auto q = h_->queue(d);
        EXPECT_TRUE(q) << q.error().describe();
        return q ? std::move(*q) : nullptr;
    }
    std::unique_ptr<Virtqueue> queue(const transport::QueueConfig& c) {
        auto q = h_->queue(c);
        EXPECT_TRUE(q) << q.error().describe();
        return q ? std::move(*q) : nullptr;
    }
    /// Pops expecting a chain.
    DescriptorChain pop_one(Virtqueue& q) {
        auto r = q.pop();
        EXPECT_TRUE(r) << r.error().describe();
        if (!r || !*r) {
            ADD_FAILURE() << "no chain";
            return {};
        }
        return std::move(**r);
    }
    /// Pops expecting an error mentioning `needle`; checks the queue broke.
    void expect_broken(Virtqueue& q, const std::string& needle) {
        auto r = q.pop();
        ASSERT_FALSE(r) << "chain accepted";
        EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().message;
        EXPECT_TRUE(q.broken());
        ASSERT_EQ(h_->fatal.size(), 1u);
        EXPECT_EQ(h_->fatal[0].message, r.error().message);
        // Stays broken: later pops fail without a second fatal report.
        EXPECT_FALSE(q.pop());
        EXPECT_EQ(h_->fatal.size(), 1u);
    }
    xen::GrantStats gstats() const { return h_->grants->stats(); }

    std::unique_ptr<QueueHarness> h_;
};

std::vector<std::byte> bytes_of(std::string_view s) {
    std::vector<std::byte> v(s.size());
    std::memcpy(v.data(), s.data(), s.size());
    return v;
}

// --- basic behaviour ------------------------------------------------------------

TEST_F(QueueTest, SplitRoundTripBlkLikeRequest) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    auto req = d->chain().readable("HEADER0123456789").writable(4096).writable(1).submit();
    ASSERT_TRUE(req) << req.error().describe();
    auto c = pop_one(*q);
    ASSERT_TRUE(c.valid());
    EXPECT_EQ(c.id(), req->id);
    EXPECT_EQ(c.readable_bytes(), 16u);
    EXPECT_EQ(c.writable_bytes(), 4097u);
    ASSERT_EQ(c.writable_segments().size(), 2u);
    auto rd = c.reader();
    std::array<std::byte, 16> hdr{};
    ASSERT_TRUE(rd.read(hdr));
    EXPECT_EQ(std::memcmp(hdr.data(), "HEADER0123456789", 16), 0);
    auto w = c.writer();
    std::vector<std::byte> data(4096, std::byte{0x5a});
    ASSERT_TRUE(w.write(data));
    ASSERT_TRUE(w.write_obj(std::uint8_t(0)));
    EXPECT_FALSE(w.write_obj(std::uint8_t(1)));  // bounded: nothing left
    q->complete(std::move(c), std::uint32_t(w.written()));
    auto u = d->next_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->id, req->id);
    EXPECT_EQ(u->len, 4097u);
    EXPECT_EQ(req->buf(1).bytes()[4095], std::byte{0x5a});
    EXPECT_EQ(h_->raised, 1u);
    EXPECT_EQ(q->stats().popped, 1u);
    EXPECT_EQ(q->stats().completed, 1u);
    EXPECT_EQ(q->stats().bytes_written, 4097u);
    auto r = q->pop();
    ASSERT_TRUE(r);
    EXPECT_FALSE(*r);  // empty ring
    EXPECT_TRUE(h_->fatal.empty());
}

TEST_F(QueueTest, RingsMappedOnceAndReleasedAtDestruction) {
    auto d = driver({.size = 256});
    auto before = gstats();
    auto q = queue(*d);
    auto after = gstats();
    EXPECT_EQ(after.map_calls - before.map_calls, 3u);  // one RW call per ring area
    EXPECT_EQ(h_->grants->pages_in_use(), d->ring_refs());
    EXPECT_EQ(h_->guest->mapped_refs(), d->ring_refs());
    q.reset();
    EXPECT_EQ(h_->grants->pages_in_use(), 0u);
    EXPECT_EQ(h_->guest->mapped_refs(), 0u);
}

TEST_F(QueueTest, ViewsOfAChainStayValidWhenTheChainIsMoved) {
    auto d = driver({.size = 16});
    auto q = queue(*d);
    auto req = d->chain().readable(16).readable(3000).writable(4096).writable(1).submit();
    ASSERT_TRUE(req);
    std::memset(req->buf(0).bytes().data(), 'a', 16);
    std::memset(req->buf(1).bytes().data(), 'b', 3000);
    auto c = pop_one(*q);
    Reader rd = c.reader();
    Writer w = c.writer();
    const auto* segs = c.readable_segments().data();
    // The chain moves twice (into a vector that then grows): the views
    // made before still walk its buffers.
    std::vector<DescriptorChain> held;
    held.push_back(std::move(c));
    for (int i = 0; i < 8; ++i) held.emplace_back();
    EXPECT_FALSE(c.valid());
    EXPECT_EQ(held[0].readable_segments().data(), segs);  // the segment list itself did not move
    std::array<char, 3016> got{};
    ASSERT_TRUE(rd.read(std::as_writable_bytes(std::span(got))));
    EXPECT_EQ(got[0], 'a');
    EXPECT_EQ(got[15], 'a');
    EXPECT_EQ(got[16], 'b');
    EXPECT_EQ(got[3015], 'b');
    EXPECT_TRUE(w.skip(4096) == 4096 && w.write_obj(std::uint8_t{7}));
    EXPECT_EQ(req->buf(3).bytes()[0], std::byte{7});
    q->complete(std::move(held[0]), 4097);
    held.clear();
    // A copy of a cursor split off a view owns its list.
    auto req2 = d->chain().readable(10).readable(10).writable(1).submit();
    ASSERT_TRUE(req2);
    std::memset(req2->buf(1).bytes().data(), 'z', 10);
    auto c2 = pop_one(*q);
    Reader all = c2.reader();
    auto head = all.split_at(15);
    auto copy = head;
    head = decltype(head)();
    EXPECT_EQ(copy.available(), 15u);
    EXPECT_EQ(copy.skip(10), 10u);
    auto rest = copy.take(5);
    ASSERT_EQ(rest.size(), 1u);
    ASSERT_EQ(rest[0].size(), 5u);
    EXPECT_EQ(rest[0][4], std::byte{'z'});
    EXPECT_EQ(all.available(), 5u);
    // A split cursor moved around (into a vector that then grows) and
    // assigned over still walks the list it owns, after its source is gone.
    Reader again = c2.reader();
    std::vector<decltype(head)> moved;
    moved.push_back(again.split_at(12));
    for (int i = 0; i < 8; ++i) moved.emplace_back();
    decltype(head) assigned;
    assigned = moved[0];
    moved.clear();
    EXPECT_EQ(assigned.available(), 12u);
    EXPECT_EQ(assigned.skip(10), 10u);
    auto tail = assigned.take(2);
    ASSERT_EQ(tail.size(), 1u);
    ASSERT_EQ(tail[0].size(), 2u);
    EXPECT_EQ(tail[0][1], std::byte{'z'});
    EXPECT_EQ(assigned.available(), 0u);
    q->complete(std::move(c2), 0);
}

TEST_F(QueueTest, OneMapCallAndOneUnmapCallPerChain) {
    auto d = driver({.size = 16});
    auto q = queue(*d);
    auto req = d->chain().readable(100).readable(5000).readable(3).writable(10).writable(8192).writable(1).submit();
    ASSERT_TRUE(req);
    auto before = gstats();
    auto c = pop_one(*q);
    auto mid = gstats();
    // RO and RW pages of the chain in ONE batched call (per-ref protection).
    EXPECT_EQ(mid.map_calls - before.map_calls, 1u);
    EXPECT_EQ(mid.pages_mapped - before.pages_mapped, 1u + 2u + 1u + 1u + 2u + 1u);
    EXPECT_EQ(c.readable_segments().size(), 3u);
    EXPECT_EQ(c.writable_segments().size(), 3u);
    EXPECT_EQ(c.readable_bytes(), 5103u);
    // The device-readable buffers are mapped read-only, in chain order.
    std::memset(req->buf(0).bytes().data(), 'r', 100);
    EXPECT_EQ(c.readable_segments()[0][99], std::byte{'r'});
    c.writable_segments()[2][0] = std::byte{'w'};
    EXPECT_EQ(req->buf(5).bytes()[0], std::byte{'w'});
    q->complete(std::move(c), 0);
    auto after = gstats();
    EXPECT_EQ(after.unmap_calls - mid.unmap_calls, 1u);
    EXPECT_EQ(h_->grants->pages_in_use(), d->ring_refs());
}

TEST_F(QueueTest, PopBatchSplitsTheGrantCallAtThePageLimit) {
    auto d = driver({.size = 32});
    auto q = queue(*d);
    h_->mem->set_max_pages_per_map(4);  // 2 * 4 pages per call at most
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(d->chain().readable(16).writable(4096).writable(1).submit());
    auto before = gstats();
    std::vector<DescriptorChain> out;
    auto n = q->pop_batch(16, out);
    ASSERT_TRUE(n) << n.error().describe();
    ASSERT_EQ(*n, 5u);
    // 3 pages per chain: two chains per call, then the last one.
    EXPECT_EQ(gstats().map_calls - before.map_calls, 3u);
    for (auto& c : out) {
        EXPECT_EQ(c.readable_bytes(), 16u);
        EXPECT_EQ(c.writable_bytes(), 4097u);
        EXPECT_EQ(c.writable_segments().size(), 2u);
        q->push(std::move(c), 0);
    }
    EXPECT_EQ(h_->grants->pages_in_use(), d->ring_refs());
}

TEST_F(QueueTest, ReadOnlyChainMapsOnceWriteOnlyChainMapsOnce) {
    auto d = driver({.size = 16});
    auto q = queue(*d);
    ASSERT_TRUE(d->chain().readable(64).readable(64).submit());
    ASSERT_TRUE(d->chain().writable(64).writable(64).submit());
    for (int i = 0; i < 2; ++i) {
        auto before = gstats();
        auto c = pop_one(*q);
        EXPECT_EQ(gstats().map_calls - before.map_calls, 1u);
        q->complete(std::move(c), 0);
    }
}

TEST_F(QueueTest, ZeroLengthDescriptorInsideChainIsSkipped) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    auto z = d->alloc(16, true);
    ASSERT_TRUE(z);
    ASSERT_TRUE(d->chain().readable("hi").raw(z->dma, 0, false).writable(4).submit());
    auto c = pop_one(*q);
    EXPECT_EQ(c.readable_segments().size(), 1u);
    EXPECT_EQ(c.writable_bytes(), 4u);
    q->complete(std::move(c), 4);
    EXPECT_TRUE(h_->fatal.empty());
}

// --- spec rules: split ring -----------------------------------------------------

TEST_F(QueueTest, SplitSizeMustBePowerOfTwo) {
    auto d = driver({.size = 16});
    auto cfg = d->config();
    cfg.size = 12;
    auto q = h_->queue(cfg);
    ASSERT_FALSE(q);
    EXPECT_NE(q.error().message.find("power of 2"), std::string::npos) << q.error().message;
    cfg.size = 0;
    EXPECT_FALSE(h_->queue(cfg));
    EXPECT_EQ(h_->grants->pages_in_use(), 0u);
}

TEST_F(QueueTest, MisalignedOrNonGrantRingRefused) {
    auto d = driver({.size = 16});
    auto cfg = d->config();
    cfg.desc_addr += 8;
    EXPECT_FALSE(h_->queue(cfg));
    cfg = d->config();
    cfg.device_addr &= ~xen::grant_dma::kFlag;
    auto q = h_->queue(cfg);
    ASSERT_FALSE(q);
    EXPECT_EQ(q.error().code, std::errc::operation_not_permitted);
    EXPECT_NE(q.error().message.find("not a grant address"), std::string::npos);
    EXPECT_EQ(h_->grants->pages_in_use(), 0u);  // the areas mapped before are released
    EXPECT_EQ(h_->hv->stats().foreign_ram_maps, 0u);
}

TEST_F(QueueTest, LoopInChainDetected) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    auto a = d->alloc(16, true);
    ASSERT_TRUE(a);
    d->set_desc(0, {a->dma, 16, kNext, 1});
    d->set_desc(1, {a->dma, 16, kNext, 0});
    d->push_avail(0);
    expect_broken(*q, "loops");
}

TEST_F(QueueTest, NextOutOfRangeDetected) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    auto a = d->alloc(16, true);
    ASSERT_TRUE(a);
    d->set_desc(0, {a->dma, 16, kNext, 8});
    d->push_avail(0);
    expect_broken(*q, "beyond the descriptor table");
}

TEST_F(QueueTest, HeadOutOfRange) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    d->push_avail(8);
    expect_broken(*q, "§2.7.6");
}

TEST_F(QueueTest, AvailIdxJumpingPastQueueSize) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    ASSERT_TRUE(d->chain().readable("x").submit());
    d->set_avail_idx(9);
    expect_broken(*q, "more than the queue size");
}

TEST_F(QueueTest, AvailIdxExactlyQueueSizeAhead) {
    auto d = driver({.size = 4});
    auto q = queue(*d);
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(d->chain().writable(8).submit());
    std::vector<DescriptorChain> out;
    auto n = q->pop_batch(16, out);
    ASSERT_TRUE(n) << n.error().describe();
    EXPECT_EQ(*n, 4u);
    for (auto& c : out) q->push(std::move(c), 8);
    q->notify_guest();
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(d->next_used());
    EXPECT_TRUE(h_->fatal.empty());
}

TEST_F(QueueTest, UnknownFlagsRejected) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    auto s = d->chain().readable("x").stage();
    ASSERT_TRUE(s);
    auto desc = d->desc(s->id);
    desc.flags |= 0x10;
    d->set_desc(s->id, desc);
    d->publish();
    expect_broken(*q, "unknown flags");
}

TEST_F(QueueTest, EmptyChainRejected) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    auto a = d->alloc(16, true);
    ASSERT_TRUE(a);
    ASSERT_TRUE(d->chain().raw(a->dma, 0, false).submit());
    expect_broken(*q, "empty");
}

TEST_F(QueueTest, NonGrantBufferAddressRefused) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    ASSERT_TRUE(d->chain().raw(0x40000000, 16, false).submit());
    expect_broken(*q, "not a grant address");
    EXPECT_EQ(h_->fatal[0].code, std::errc::operation_not_permitted);
    EXPECT_EQ(h_->hv->stats().foreign_ram_maps, 0u);
}

TEST_F(QueueTest, ChainsLeftAfterBreakAreNotReturned) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    ASSERT_TRUE(d->chain().writable(8).submit());
    auto c = pop_one(*q);
    ASSERT_TRUE(d->chain().writable(8).readable("bad").submit());
    EXPECT_FALSE(q->pop());
    ASSERT_TRUE(q->broken());
    const auto used_before = d->used_idx();
    q->complete(std::move(c), 8);  // §2.1.2: a broken queue's ring is left alone
    EXPECT_EQ(d->used_idx(), used_before);
    EXPECT_EQ(h_->grants->pages_in_use(), d->ring_refs());  // but the grants are released
}

// --- indirect descriptors (§2.7.5.3) -------------------------------------------------

TEST_F(QueueTest, IndirectChain) {
    auto d = driver({.size = 8, .indirect = true});
    auto q = queue(*d);
    auto req = d->chain().readable("0123456789abcdef").writable(4096).writable(1).indirect().submit();
    ASSERT_TRUE(req) << req.error().describe();
    EXPECT_EQ(req->ring_descs, 1);
    auto before = gstats();
    auto c = pop_one(*q);
    auto mid = gstats();
    EXPECT_EQ(mid.map_calls - before.map_calls, 2u);  // table RO, then the chain (RO + RW pages) in one call
    EXPECT_EQ(mid.unmap_calls - before.unmap_calls, 1u);  // the table is released once walked
    EXPECT_EQ(c.readable_bytes(), 16u);
    EXPECT_EQ(c.writable_bytes(), 4097u);
    auto w = c.writer();
    ASSERT_TRUE(w.write(bytes_of("ok")));
    q->complete(std::move(c), 2);
    auto u = d->next_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->id, req->id);
    EXPECT_EQ(req->buf(1).str().substr(0, 2), "ok");
}

TEST_F(QueueTest, IndirectAfterDirectDescriptors) {
    // §2.7.5.3.2: zero or more direct descriptors, then one INDIRECT.
    auto d = driver({.size = 8, .indirect = true});
    auto q = queue(*d);
    auto hdr = d->alloc(16, true);
    auto data = d->alloc(512, false);
    ASSERT_TRUE(hdr && data);
    auto table = d->alloc(16, true);
    ASSERT_TRUE(table);
    SplitDesc t{data->dma, 512, kWrite, 0};
    std::memcpy(table->ptr, &t, 16);
    d->set_desc(0, {hdr->dma, 16, kNext, 1});
    d->set_desc(1, {table->dma, 16, kIndirect, 0});
    d->push_avail(0);
    auto c = pop_one(*q);
    EXPECT_EQ(c.readable_bytes(), 16u);
    EXPECT_EQ(c.writable_bytes(), 512u);
    q->complete(std::move(c), 0);
}

TEST_F(QueueTest, IndirectNotNegotiated) {
    auto d = driver({.size = 8, .indirect = false});
    auto q = queue(*d);
    ASSERT_TRUE(d->chain().readable("x").indirect().submit());
    expect_broken(*q, "not negotiated");
}

TEST_F(QueueTest, NestedIndirectRejected) {
    auto d = driver({.size = 8, .indirect = true});
    auto q = queue(*d);
    auto inner = d->alloc(16, true);
    auto outer = d->alloc(16, true);
    auto buf = d->alloc(16, true);
    ASSERT_TRUE(inner && outer && buf);
    SplitDesc in{buf->dma, 16, 0, 0};
    std::memcpy(inner->ptr, &in, 16);
    SplitDesc out{inner->dma, 16, kIndirect, 0};
    std::memcpy(outer->ptr, &out, 16);
    d->set_desc(0, {outer->dma, 16, kIndirect, 0});
    d->push_avail(0);
    expect_broken(*q, "INDIRECT inside an indirect table");
}

TEST_F(QueueTest, IndirectWithNextRejected) {
    auto d = driver({.size = 8, .indirect = true});
    auto q = queue(*d);
    auto t = d->alloc(16, true);
    auto b = d->alloc(16, true);
    ASSERT_TRUE(t && b);
    d->set_desc(0, {t->dma, 16, kIndirect | kNext, 1});
    d->set_desc(1, {b->dma, 16, 0, 0});
    d->push_avail(0);
    expect_broken(*q, "both INDIRECT and NEXT");
}

TEST_F(QueueTest, IndirectTableLengthNotMultipleOf16) {
    auto d = driver({.size = 8, .indirect = true});
    auto q = queue(*d);
    auto s = d->chain().readable("abc").writable(4).indirect().stage();
    ASSERT_TRUE(s);
    auto desc = d->desc(s->id);
    desc.len = 24;
    d->set_desc(s->id, desc);
    d->publish();
    expect_broken(*q, "multiple of 16");
}

TEST_F(QueueTest, IndirectTableLongerThanQueueSize) {
    auto d = driver({.size = 4, .indirect = true});
    auto q = queue(*d);
    auto c = d->chain();
    for (int i = 0; i < 5; ++i) c.readable("x");
    ASSERT_TRUE(c.indirect().submit());
    expect_broken(*q, "at most 4 entries");
}

TEST_F(QueueTest, IndirectTableLoopDetected) {
    auto d = driver({.size = 8, .indirect = true});
    auto q = queue(*d);
    auto t = d->alloc(32, true);
    auto b = d->alloc(16, true);
    ASSERT_TRUE(t && b);
    SplitDesc e0{b->dma, 16, kNext, 1}, e1{b->dma, 16, kNext, 0};
    std::memcpy(t->ptr, &e0, 16);
    std::memcpy(t->ptr + 16, &e1, 16);
    d->set_desc(0, {t->dma, 32, kIndirect, 0});
    d->push_avail(0);
    expect_broken(*q, "loops");
}

// --- exactly-once return and grant lifetime -------------------------------------

TEST_F(QueueTest, CompleteThenDropReturnsOnce) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    ASSERT_TRUE(d->chain().writable(8).submit());
    {
        auto c = pop_one(*q);
        q->complete(std::move(c), 8);
        EXPECT_FALSE(c.valid());
    }  // moved-from chain destroyed here: nothing more goes to the ring
    EXPECT_EQ(d->used_idx(), 1);
    EXPECT_EQ(q->stats().abandoned, 0u);
    q->push(DescriptorChain{}, 0);  // an empty chain is ignored
    EXPECT_EQ(d->used_idx(), 1);
}

TEST_F(QueueTest, DropWithoutCompleteReturnsLenZero) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    auto req = d->chain().readable("x").writable(64).submit();
    ASSERT_TRUE(req);
    {
        auto c = pop_one(*q);
        ASSERT_TRUE(c.writer().write(bytes_of("partial")));
    }
    auto u = d->next_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->id, req->id);
    EXPECT_EQ(u->len, 0u);
    EXPECT_EQ(q->stats().abandoned, 1u);
    EXPECT_EQ(h_->raised, 1u);  // the driver is told
    EXPECT_EQ(h_->grants->pages_in_use(), d->ring_refs());
    EXPECT_FALSE(d->next_used());
}

TEST_F(QueueTest, MoveAssignOverLiveChainReturnsIt) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    auto a = d->chain().writable(8).submit();
    auto b = d->chain().writable(8).submit();
    ASSERT_TRUE(a && b);
    auto c1 = pop_one(*q);
    auto c2 = pop_one(*q);
    c1 = std::move(c2);  // the chain held by c1 is returned with len 0
    EXPECT_EQ(c1.id(), b->id);
    auto u = d->next_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->id, a->id);
    EXPECT_EQ(u->len, 0u);
    q->complete(std::move(c1), 3);
    u = d->next_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->id, b->id);
    EXPECT_EQ(u->len, 3u);
    EXPECT_EQ(q->stats().abandoned, 1u);
    EXPECT_EQ(q->stats().completed, 2u);
}

TEST_F(QueueTest, WrittenLengthClampedToWritableBytes) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    ASSERT_TRUE(d->chain().readable("x").writable(8).submit());
    q->complete(pop_one(*q), 100);
    auto u = d->next_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->len, 8u);
}

TEST_F(QueueTest, GrantsUnmappedBeforeUsedIdxPublished) {
    auto d = driver({.size = 128});
    auto q = queue(*d);
    const std::uint64_t ring = d->ring_refs();
    constexpr int kChains = 40;
    std::vector<Submitted> reqs;
    for (int i = 0; i < kChains; ++i) {
        auto r = d->chain().readable(16).writable(4096).submit();
        ASSERT_TRUE(r);
        reqs.push_back(*r);
    }
    std::vector<DescriptorChain> chains;
    ASSERT_TRUE(q->pop_batch(kChains, chains));
    ASSERT_EQ(chains.size(), std::size_t(kChains));
    // The guest watches the used idx from another thread; each time it
    // moves, the refs of every returned chain must already be unmapped:
    // mapped refs <= ring + 2 refs for each chain not yet returned.
    std::atomic<bool> stop{false};
    std::atomic<int> violations{0};
    std::atomic<int> observed{0};
    std::atomic<std::uint16_t> last_seen{0};
    std::thread guest([&] {
        std::uint16_t seen = 0;
        while (!stop.load()) {
            std::uint16_t idx = d->used_idx();
            if (idx == seen) continue;
            std::uint64_t mapped = h_->guest->mapped_refs();
            if (mapped > ring + 2u * std::uint64_t(kChains - idx)) ++violations;
            seen = idx;
            last_seen = idx;
            ++observed;
        }
    });
    std::uint16_t pushed = 0;
    for (auto& c : chains) {
        q->push(std::move(c), 0);
        ++pushed;
        // Let the guest look at this idx before the next push (bounded, so
        // a loaded machine only makes the check coarser, never hangs it).
        auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
        while (last_seen.load() < pushed && std::chrono::steady_clock::now() < until) std::this_thread::yield();
    }
    while (d->used_idx() != kChains) std::this_thread::yield();
    stop = true;
    guest.join();
    EXPECT_EQ(violations.load(), 0);
    EXPECT_GT(observed.load(), 0);
    EXPECT_EQ(h_->guest->mapped_refs(), ring);
    // Every data grant can be ended by the frontend now.
    for (auto& r : reqs)
        for (auto& b : r.bufs) EXPECT_TRUE(h_->guest->end_access(b.ref()));
}

TEST_F(QueueTest, PushBatchUnmapsAllChainsInOneCallThenPublishesInOrder) {
    auto d = driver({.size = 128});
    auto q = queue(*d);
    const std::uint64_t ring = d->ring_refs();
    constexpr int kChains = 40;
    std::vector<Submitted> reqs;
    for (int i = 0; i < kChains; ++i) {
        auto r = d->chain().readable(16).writable(4096).writable(1).submit();
        ASSERT_TRUE(r);
        reqs.push_back(*r);
    }
    std::vector<DescriptorChain> chains;
    ASSERT_TRUE(q->pop_batch(kChains, chains));
    ASSERT_EQ(chains.size(), std::size_t(kChains));
    std::vector<std::uint32_t> lens;
    for (int i = 0; i < kChains; ++i) lens.push_back(std::uint32_t(i * 100));
    lens.back() = 1 << 20;  // more than the chain's 4097 writable bytes: clamped
    // The guest watches the used idx from another thread: once it moved,
    // no data grant may be mapped any more (all unmapped before the first
    // used entry is published).
    std::atomic<bool> stop{false};
    std::atomic<int> violations{0};
    std::thread guest([&] {
        while (!stop.load())
            if (d->used_idx() != 0 && h_->guest->mapped_refs() > ring) ++violations;
    });
    const auto before = gstats();
    q->push_batch(chains, lens);
    const auto after = gstats();
    stop = true;
    guest.join();
    EXPECT_EQ(violations.load(), 0);
    EXPECT_EQ(after.unmap_calls - before.unmap_calls, 1u);  // one call for the 40 chains
    EXPECT_EQ(after.pages_unmapped - before.pages_unmapped, 3u * kChains);
    EXPECT_EQ(h_->guest->mapped_refs(), ring);
    for (auto& c : chains) EXPECT_FALSE(c.valid());
    EXPECT_EQ(q->stats().completed, std::uint64_t(kChains));
    std::uint64_t bytes = 0;
    for (int i = 0; i + 1 < kChains; ++i) bytes += std::uint64_t(i * 100);
    EXPECT_EQ(q->stats().bytes_written, bytes + 4097);  // the clamped length counted
    EXPECT_EQ(d->used_idx(), kChains);
    for (int i = 0; i < kChains; ++i) {
        auto u = d->next_used();
        ASSERT_TRUE(u) << i;
        EXPECT_EQ(u->id, reqs[i].id);
        EXPECT_EQ(u->len, i + 1 == kChains ? 4097u : std::uint32_t(i * 100));
    }
    EXPECT_FALSE(d->next_used());
    q->notify_guest();
    EXPECT_EQ(h_->raised, 1u);
    for (auto& r : reqs)
        for (auto& b : r.bufs) EXPECT_TRUE(h_->guest->end_access(b.ref()));
}

TEST_F(QueueTest, PushBatchSkipsChainsOfAnotherQueueAndMissingLengthsAreZero) {
    auto d = driver({.size = 16});
    auto q = queue(*d);
    auto d2 = driver({.size = 16, .index = 1});
    auto q2 = queue(*d2);
    ASSERT_TRUE(d->chain().readable(16).writable(8).submit());
    ASSERT_TRUE(d->chain().readable(16).writable(8).submit());
    ASSERT_TRUE(d2->chain().readable(16).writable(8).submit());
    std::vector<DescriptorChain> chains;
    ASSERT_TRUE(q->pop_batch(2, chains));
    ASSERT_TRUE(q2->pop_batch(1, chains));
    ASSERT_EQ(chains.size(), 3u);
    const std::uint32_t lens[] = {5};
    q->push_batch(chains, lens);
    EXPECT_FALSE(chains[0].valid());
    EXPECT_FALSE(chains[1].valid());
    EXPECT_TRUE(chains[2].valid());  // q2's chain is left alone, still mapped
    EXPECT_EQ(q->stats().completed, 2u);
    auto u0 = d->next_used();
    auto u1 = d->next_used();
    ASSERT_TRUE(u0 && u1);
    EXPECT_EQ(u0->len, 5u);
    EXPECT_EQ(u1->len, 0u);
    EXPECT_FALSE(d2->next_used());
    q2->complete(std::move(chains[2]), 8);
    auto u2 = d2->next_used();
    ASSERT_TRUE(u2);
    EXPECT_EQ(u2->len, 8u);
}

// --- notification suppression -------------------------------------------------------

TEST_F(QueueTest, NoInterruptFlagSuppressesNotification) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    ASSERT_TRUE(d->chain().writable(8).submit());
    ASSERT_TRUE(d->chain().writable(8).submit());
    d->set_no_interrupt(true);
    q->complete(pop_one(*q), 0);
    EXPECT_EQ(h_->raised, 0u);
    EXPECT_EQ(q->stats().interrupts_suppressed, 1u);
    d->set_no_interrupt(false);
    q->complete(pop_one(*q), 0);
    EXPECT_EQ(h_->raised, 1u);
    q->notify_guest();  // nothing new: no second interrupt
    EXPECT_EQ(h_->raised, 1u);
}

TEST_F(QueueTest, EventIdxUsedEventSuppressesUntilCrossed) {
    auto d = driver({.size = 16, .event_idx = true});
    auto q = queue(*d);
    for (int i = 0; i < 6; ++i) ASSERT_TRUE(d->chain().writable(8).submit());
    // The driver wants an interrupt once the used idx passes 3 (entry 3 used).
    d->set_used_event(3);
    std::vector<std::uint64_t> raised_after;
    for (int i = 0; i < 6; ++i) {
        q->complete(pop_one(*q), 0);
        raised_after.push_back(h_->raised);
    }
    // used idx 1,2,3: no; 4: crosses used_event 3 -> yes; 5,6: no (event not re-armed).
    EXPECT_EQ(raised_after, (std::vector<std::uint64_t>{0, 0, 0, 1, 1, 1}));
    EXPECT_EQ(q->stats().interrupts_suppressed, 5u);
    // Batched: two pushes then one notify that crosses the event.
    for (int i = 0; i < 2; ++i) ASSERT_TRUE(d->chain().writable(8).submit());
    d->set_used_event(6);
    q->push(pop_one(*q), 0);
    q->push(pop_one(*q), 0);
    q->notify_guest();
    EXPECT_EQ(h_->raised, 2u);
}

TEST_F(QueueTest, EventIdxAvailEventControlsKicks) {
    auto d = driver({.size = 16, .event_idx = true});
    auto q = queue(*d);
    ASSERT_TRUE(d->chain().writable(8).submit());
    EXPECT_TRUE(d->kick_needed());  // avail_event 0 crossed by idx 0 -> 1
    auto c = pop_one(*q);
    EXPECT_EQ(d->avail_event(), 1);  // the device wants a kick at the next entry
    // Device busy: it polls and does not want kicks.
    q->disable_notifications();
    ASSERT_TRUE(d->chain().writable(8).submit());
    EXPECT_TRUE(d->kick_needed());  // idx 1 -> 2 crosses avail_event 1 (still as published)
    auto c2 = pop_one(*q);
    EXPECT_EQ(d->avail_event(), 1);  // not advanced while disabled
    ASSERT_TRUE(d->chain().writable(8).submit());
    EXPECT_FALSE(d->kick_needed());  // 2 -> 3 does not cross 1: suppressed
    // Re-enabling reports the chain that came meanwhile (no lost wake-up).
    EXPECT_TRUE(q->enable_notifications());
    EXPECT_EQ(d->avail_event(), 2);
    auto c3 = pop_one(*q);
    EXPECT_FALSE(q->enable_notifications());
    q->complete(std::move(c), 0);
    q->complete(std::move(c2), 0);
    q->complete(std::move(c3), 0);
}

TEST_F(QueueTest, NoNotifyFlagWithoutEventIdx) {
    auto d = driver({.size = 8});
    auto q = queue(*d);
    EXPECT_FALSE(d->device_no_notify());
    q->disable_notifications();
    EXPECT_TRUE(d->device_no_notify());
    ASSERT_TRUE(d->chain().writable(8).submit());
    EXPECT_FALSE(d->kick_needed());
    EXPECT_TRUE(q->enable_notifications());  // a chain arrived meanwhile
    EXPECT_FALSE(d->device_no_notify());
    q->complete(pop_one(*q), 0);
    EXPECT_FALSE(q->enable_notifications());
    ASSERT_TRUE(d->chain().writable(8).submit());
    EXPECT_TRUE(d->kick_needed());
}

// --- batching and grant copy --------------------------------------------------------

TEST_F(QueueTest, PopBatchTakesUpToMax) {
    auto d = driver({.size = 16});
    auto q = queue(*d);
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(d->chain().readable(16).writable(1).submit());
    std::vector<DescriptorChain> out;
    auto n = q->pop_batch(3, out);
    ASSERT_TRUE(n);
    EXPECT_EQ(*n, 3u);
    n = q->pop_batch(8, out);
    ASSERT_TRUE(n);
    EXPECT_EQ(*n, 2u);
    ASSERT_EQ(out.size(), 5u);
    for (auto& c : out) q->push(std::move(c), 1);
    q->notify_guest();
    EXPECT_EQ(h_->raised, 1u);
    for (int i = 0; i < 5; ++i) EXPECT_TRUE(d->next_used());
}

TEST_F(QueueTest, SmallReadablePartIsGrantCopiedOncePerBatch) {
    auto d = driver({.size = 32});
    auto cfg = d->config();
    cfg.copy_readable_max = 64;
    auto q = queue(cfg);
    std::vector<Submitted> reqs;
    for (int i = 0; i < 8; ++i) {
        std::string hdr = "header-" + std::to_string(i) + "-padding";
        auto r = d->chain().at_offset(i == 3 ? 4090 : 0).readable(hdr).writable(4096).writable(1).submit();
        ASSERT_TRUE(r);
        reqs.push_back(*r);
    }
    ASSERT_TRUE(d->chain().readable(100).writable(1).submit());  // too big to copy: mapped
    auto before = gstats();
    std::vector<DescriptorChain> out;
    auto n = q->pop_batch(16, out);
    ASSERT_TRUE(n) << n.error().describe();
    ASSERT_EQ(*n, 9u);
    auto after = gstats();
    EXPECT_EQ(after.copy_calls - before.copy_calls, 1u);
    EXPECT_EQ(after.copy_segments - before.copy_segments, 9u);  // 8 headers, one straddling
    EXPECT_EQ(after.map_calls - before.map_calls, 1u);          // every chain's mapped part in one call
    for (int i = 0; i < 8; ++i) {
        EXPECT_TRUE(out[i].readable_copied());
        std::string hdr = "header-" + std::to_string(i) + "-padding";
        std::string got(hdr.size(), '\0');
        auto rd = out[i].reader();
        ASSERT_TRUE(rd.read(std::as_writable_bytes(std::span<char>(got.data(), got.size()))));
        EXPECT_EQ(got, hdr);
        // A snapshot: the driver changing the buffer now is not seen.
        reqs[i].buf(0).bytes()[0] = std::byte{'X'};
        EXPECT_EQ(out[i].readable_segments()[0][0], std::byte{'h'});
    }
    EXPECT_FALSE(out[8].readable_copied());
    for (auto& c : out) q->push(std::move(c), 1);
    EXPECT_EQ(q->stats().chains_copied, 8u);
    EXPECT_EQ(h_->grants->pages_in_use(), d->ring_refs());
}

TEST_F(QueueTest, GrantCopyOfRevokedRefFailsTheBatch) {
    auto d = driver({.size = 16});
    auto cfg = d->config();
    cfg.copy_readable_max = 64;
    auto q = queue(cfg);
    ASSERT_TRUE(d->chain().readable("good").writable(1).submit());
    auto bad = d->chain().readable("bad").writable(1).submit();
    ASSERT_TRUE(bad);
    h_->guest->revoke(bad->buf(0).ref());
    std::vector<DescriptorChain> out;
    auto n = q->pop_batch(16, out);
    ASSERT_FALSE(n);
    EXPECT_TRUE(out.empty());
    EXPECT_TRUE(q->broken());
    EXPECT_EQ(h_->grants->pages_in_use(), d->ring_refs());
}

// --- packed ring (§2.8) -----------------------------------------------------------

TEST_F(QueueTest, PackedRoundTripAndBufferIds) {
    auto d = driver({.size = 8, .packed = true});
    auto q = queue(*d);
    auto r1 = d->chain().readable("hdr1").writable(16).submit();
    auto r2 = d->chain().readable("hdr2").writable(16).writable(1).submit();
    ASSERT_TRUE(r1 && r2);
    EXPECT_NE(r1->id, r2->id);
    auto c1 = pop_one(*q);
    auto c2 = pop_one(*q);
    EXPECT_EQ(c1.id(), r1->id);
    EXPECT_EQ(c2.id(), r2->id);
    EXPECT_EQ(c1.ring_slots(), 2);
    EXPECT_EQ(c2.ring_slots(), 3);
    // Out of order completion: the used entries carry the buffer ids.
    ASSERT_TRUE(c2.writer().write(bytes_of("second")));
    q->complete(std::move(c2), 6);
    q->complete(std::move(c1), 0);
    auto u = d->next_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->id, r2->id);
    EXPECT_EQ(u->len, 6u);
    EXPECT_EQ(r2->buf(1).str().substr(0, 6), "second");
    u = d->next_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->id, r1->id);
    EXPECT_FALSE(d->next_used());
    EXPECT_TRUE(h_->fatal.empty());
}

TEST_F(QueueTest, PackedWrapCountersOverManyLaps) {
    auto d = driver({.size = 5, .packed = true});  // not a power of two: fine for packed
    auto q = queue(*d);
    auto hdr = d->alloc(16, true);
    auto data = d->alloc(64, false);
    ASSERT_TRUE(hdr && data);
    int completed = 0;
    for (int round = 0; round < 40; ++round) {
        // 1-, 2- and 3-descriptor chains so that chains straddle the ring end.
        const int descs = 1 + round % 3;
        auto b = d->chain();
        if (descs >= 2) b.add(*hdr, false);
        if (descs == 3) b.add(*hdr, false);
        b.add(*data, true);
        auto r = b.submit();
        ASSERT_TRUE(r) << r.error().describe();
        auto c = pop_one(*q);
        ASSERT_TRUE(c.valid()) << "round " << round;
        EXPECT_EQ(c.id(), r->id);
        EXPECT_EQ(c.ring_slots(), descs);
        EXPECT_EQ(c.writable_bytes(), 64u);
        q->complete(std::move(c), std::uint32_t(round));
        auto u = d->next_used();
        ASSERT_TRUE(u) << "round " << round;
        EXPECT_EQ(u->id, r->id);
        EXPECT_EQ(u->len, std::uint32_t(round));
        ++completed;
    }
    EXPECT_EQ(completed, 40);
    auto r = q->pop();
    ASSERT_TRUE(r);
    EXPECT_FALSE(*r);
    EXPECT_TRUE(h_->fatal.empty());
}

TEST_F(QueueTest, PackedSizeLimits) {
    auto d = driver({.size = 8, .packed = true});
    auto cfg = d->config();
    cfg.size = 0;
    EXPECT_FALSE(h_->queue(cfg));
    cfg.size = 6;  // within the mapped ring, not a power of two: accepted
    EXPECT_TRUE(h_->queue(cfg));
}

TEST_F(QueueTest, PackedIndirect) {
    auto d = driver({.size = 8, .packed = true, .indirect = true});
    auto q = queue(*d);
    auto req = d->chain().readable("hello").writable(32).writable(1).indirect().submit();
    ASSERT_TRUE(req) << req.error().describe();
    auto c = pop_one(*q);
    EXPECT_EQ(c.id(), req->id);
    EXPECT_EQ(c.ring_slots(), 1);
    EXPECT_EQ(c.readable_bytes(), 5u);
    EXPECT_EQ(c.writable_bytes(), 33u);
    q->complete(std::move(c), 33);
    auto u = d->next_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->id, req->id);
}

TEST_F(QueueTest, PackedIndirectNotNegotiated) {
    auto d = driver({.size = 8, .packed = true, .indirect = false});
    auto q = queue(*d);
    ASSERT_TRUE(d->chain().readable("x").indirect().submit());
    expect_broken(*q, "not negotiated");
}

TEST_F(QueueTest, PackedIndirectEntryFlagsOnlyWrite) {
    auto d = driver({.size = 8, .packed = true, .indirect = true});
    auto q = queue(*d);
    auto t = d->alloc(16, true);
    auto b = d->alloc(16, true);
    ASSERT_TRUE(t && b);
    PackedDesc nested{b->dma, 16, 0, kIndirect};
    std::memcpy(t->ptr, &nested, 16);
    d->set_packed_desc(0, {t->dma, 16, 0, std::uint16_t(kIndirect | kAvail)});
    expect_broken(*q, "only WRITE");
}

TEST_F(QueueTest, PackedIndirectLengthNotMultipleOf16) {
    auto d = driver({.size = 8, .packed = true, .indirect = true});
    auto q = queue(*d);
    auto t = d->alloc(32, true);
    ASSERT_TRUE(t);
    d->set_packed_desc(0, {t->dma, 20, 0, std::uint16_t(kIndirect | kAvail)});
    expect_broken(*q, "multiple of 16");
}

TEST_F(QueueTest, PackedIndirectInsideNextListRejected) {
    auto d = driver({.size = 8, .packed = true, .indirect = true});
    auto q = queue(*d);
    auto t = d->alloc(16, true);
    auto b = d->alloc(16, true);
    ASSERT_TRUE(t && b);
    d->set_packed_desc(1, {t->dma, 16, 0, std::uint16_t(kIndirect | kAvail)});
    d->set_packed_desc(0, {b->dma, 16, 0, std::uint16_t(kNext | kAvail)});
    expect_broken(*q, "linked by NEXT");
}

TEST_F(QueueTest, PackedChainLongerThanRingRejected) {
    auto d = driver({.size = 4, .packed = true});
    auto q = queue(*d);
    auto b = d->alloc(16, true);
    ASSERT_TRUE(b);
    // Every descriptor available and chained: the walk would go round forever.
    for (std::uint16_t i = 1; i < 4; ++i) d->set_packed_desc(i, {b->dma, 16, 0, std::uint16_t(kNext | kAvail)});
    d->set_packed_desc(0, {b->dma, 16, 0, std::uint16_t(kNext | kAvail)});
    expect_broken(*q, "longer than the queue size");
}

TEST_F(QueueTest, PackedUnknownFlagsRejected) {
    auto d = driver({.size = 8, .packed = true});
    auto q = queue(*d);
    auto b = d->alloc(16, true);
    ASSERT_TRUE(b);
    d->set_packed_desc(0, {b->dma, 16, 0, std::uint16_t(kAvail | 0x100)});
    expect_broken(*q, "unknown flags");
}

TEST_F(QueueTest, PackedNotAvailableUntilHeadFlagsWritten) {
    auto d = driver({.size = 8, .packed = true});
    auto q = queue(*d);
    ASSERT_TRUE(d->chain().readable("a").writable(4).stage());
    auto r = q->pop();
    ASSERT_TRUE(r);
    EXPECT_FALSE(*r);
    d->publish();
    auto c = pop_one(*q);
    EXPECT_TRUE(c.valid());
    q->complete(std::move(c), 0);
}

TEST_F(QueueTest, PackedDropWithoutCompleteReturnsLenZero) {
    auto d = driver({.size = 8, .packed = true});
    auto q = queue(*d);
    auto r = d->chain().readable("a").writable(4).submit();
    ASSERT_TRUE(r);
    { auto c = pop_one(*q); }
    auto u = d->next_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->id, r->id);
    EXPECT_EQ(u->len, 0u);
    // The ring continues normally after the abandoned chain.
    auto r2 = d->chain().readable("b").writable(4).submit();
    ASSERT_TRUE(r2);
    q->complete(pop_one(*q), 4);
    u = d->next_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->id, r2->id);
    EXPECT_EQ(u->len, 4u);
}

TEST_F(QueueTest, PackedEventSuppression) {
    auto d = driver({.size = 8, .packed = true, .event_idx = true});
    auto q = queue(*d);
    for (int i = 0; i < 6; ++i) ASSERT_TRUE(d->chain().writable(8).submit());
    d->set_used_event(3);  // interrupt when the used descriptor at position 3 is written
    std::vector<std::uint64_t> raised_after;
    for (int i = 0; i < 6; ++i) {
        q->complete(pop_one(*q), 0);
        raised_after.push_back(h_->raised);
        ASSERT_TRUE(d->next_used());
    }
    EXPECT_EQ(raised_after, (std::vector<std::uint64_t>{0, 0, 0, 1, 1, 1}));
    // DISABLE: never; ENABLE: always.
    d->set_no_interrupt(true);
    ASSERT_TRUE(d->chain().writable(8).submit());
    q->complete(pop_one(*q), 0);
    ASSERT_TRUE(d->next_used());
    EXPECT_EQ(h_->raised, 1u);
    d->set_no_interrupt(false);
    ASSERT_TRUE(d->chain().writable(8).submit());
    q->complete(pop_one(*q), 0);
    ASSERT_TRUE(d->next_used());
    EXPECT_EQ(h_->raised, 2u);
    // Second lap: an event on the other wrap counter fires only there.
    d->set_used_event(8 + 2);  // lap 1, offset 2
    std::vector<std::uint64_t> lap2;
    for (int i = 0; i < 4; ++i) {
        ASSERT_TRUE(d->chain().writable(8).submit());
        q->complete(pop_one(*q), 0);
        ASSERT_TRUE(d->next_used());
        lap2.push_back(h_->raised);
    }
    EXPECT_EQ(lap2, (std::vector<std::uint64_t>{2, 2, 3, 3}));
    // used positions 8, 9, 10, 11: fires when position 10 is used
    EXPECT_EQ(h_->raised, 3u);
}

TEST_F(QueueTest, PackedDeviceEventSuppression) {
    auto d = driver({.size = 8, .packed = true, .event_idx = true});
    auto q = queue(*d);
    q->disable_notifications();
    EXPECT_TRUE(d->device_no_notify());
    ASSERT_TRUE(d->chain().writable(8).submit());
    EXPECT_FALSE(d->kick_needed());
    EXPECT_TRUE(q->enable_notifications());  // arrived while disabled
    auto c = pop_one(*q);
    EXPECT_FALSE(q->enable_notifications());
    // DESC mode, at the next descriptor the device will read.
    EXPECT_EQ(d->avail_event() & 0x7fff, 1);
    ASSERT_TRUE(d->chain().writable(8).submit());
    EXPECT_TRUE(d->kick_needed());
    q->complete(std::move(c), 0);
    q->complete(pop_one(*q), 0);
}

TEST_F(QueueTest, PackedRingMapsReleased) {
    auto d = driver({.size = 8, .packed = true});
    auto q = queue(*d);
    EXPECT_EQ(h_->grants->pages_in_use(), d->ring_refs());
    q.reset();
    EXPECT_EQ(h_->grants->pages_in_use(), 0u);
    EXPECT_EQ(h_->guest->mapped_refs(), 0u);
}

// --- GuestMemory directly ----------------------------------------------------------

TEST_F(QueueTest, GuestMemoryMapBuffersKeepsInputOrder) {
    auto d = driver({.size = 8});
    auto a = d->alloc(10, true);
    auto b = d->alloc(20, false, 100);
    auto c = d->alloc(30, true, 4080);
    ASSERT_TRUE(a && b && c);
    std::memcpy(a->ptr, "aaaaaaaaaa", 10);
    std::memcpy(c->ptr, "cccccccccccccccccccccccccccccc", 30);
    transport::DmaBuffer bufs[] = {{a->dma, 10, false}, {b->dma, 20, true}, {c->dma, 30, false}};
    auto before = gstats();
    auto m = h_->mem->map_buffers(bufs);
    ASSERT_TRUE(m) << m.error().describe();
    EXPECT_EQ(gstats().map_calls - before.map_calls, 2u);
    ASSERT_EQ(m->spans.size(), 3u);
    EXPECT_EQ(m->spans[0][0], std::byte{'a'});
    EXPECT_EQ(m->spans[1].size(), 20u);
    m->spans[1][0] = std::byte{'B'};
    EXPECT_EQ(b->ptr[0], std::byte{'B'});
    EXPECT_EQ(m->spans[2][29], std::byte{'c'});
    EXPECT_EQ(m->maps.size(), 2u);
}

TEST_F(QueueTest, GuestMemoryRefRangePast32BitsRefused) {
    // ref 0xffffffff, two pages: the second ref would be 2^32.
    std::uint64_t addr = xen::grant_dma::kFlag | (0xffffffffULL << 12) | 0xff0;
    transport::DmaBuffer bufs[] = {{addr, 32, false}};
    auto m = h_->mem->map_buffers(bufs);
    ASSERT_FALSE(m);
    EXPECT_EQ(m.error().code, std::errc::invalid_argument);
    auto area = h_->mem->map_area(xen::grant_dma::kFlag | (1ULL << 40 << 12), 16, true);
    EXPECT_FALSE(area);  // ref beyond 32 bits
    EXPECT_FALSE(h_->mem->map_area(xen::grant_dma::kFlag, 0, true));  // empty area
}

// --- spec rules on both ring layouts (split §2.7, packed §2.8) --------------------

/// The rules that hold for split and packed rings alike; the parameter is
/// `packed`.
class RingRules : public QueueTest, public ::testing::WithParamInterface<bool> {
protected:
    std::unique_ptr<VirtqueueDriver> ring(std::uint16_t size) { return driver({.size = size, .packed = GetParam()}); }
};

INSTANTIATE_TEST_SUITE_P(Layouts, RingRules, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "packed" : "split"; });

// xen-facts §1.1: a short buffer can straddle two pages: consecutive refs.
TEST_P(RingRules, StraddlingShortBufferUsesTwoConsecutiveRefs) {
    auto d = ring(8);
    auto q = queue(*d);
    // 16 bytes at offset 4088: 8 bytes in one page, 8 in the next.
    auto req = d->chain().at_offset(4088).readable("ABCDEFGHIJKLMNOP").writable(1).submit();
    ASSERT_TRUE(req);
    auto before = gstats();
    auto c = pop_one(*q);
    EXPECT_EQ(gstats().pages_mapped - before.pages_mapped, 3u);  // 2 RO + 1 RW
    ASSERT_EQ(c.readable_segments().size(), 1u);
    EXPECT_EQ(c.readable_segments()[0].size(), 16u);
    EXPECT_EQ(std::memcmp(c.readable_segments()[0].data(), "ABCDEFGHIJKLMNOP", 16), 0);
    // Both refs of the buffer are held by the backend while the chain lives.
    EXPECT_EQ(h_->guest->end_access(req->buf(0).ref()).error().code, std::errc::device_or_resource_busy);
    EXPECT_EQ(h_->guest->end_access(req->buf(0).ref() + 1).error().code, std::errc::device_or_resource_busy);
    q->complete(std::move(c), 0);
    EXPECT_TRUE(h_->guest->end_access(req->buf(0).ref()));
    EXPECT_TRUE(h_->guest->end_access(req->buf(0).ref() + 1));
}

// virtio 1.2 §2.7.4.2 / §2.8.4.2: device-writable descriptors come last.
TEST_P(RingRules, WritableBeforeReadableRejected) {
    auto d = ring(8);
    auto q = queue(*d);
    ASSERT_TRUE(d->chain().writable(8).readable("late").submit());
    expect_broken(*q, "§2.7.4.2");
    EXPECT_EQ(h_->grants->pages_in_use(), d->ring_refs());
}

// virtio 1.2 §2.7.5.2 / §2.8.5: the lengths of a chain sum to less than 2^32.
TEST_P(RingRules, LengthSumOver32BitsRejected) {
    auto d = ring(8);
    auto q = queue(*d);
    auto a = d->alloc(16, true);
    ASSERT_TRUE(a);
    // 0x80000000 + 0x80000000 = 2^32: one byte too many. Never mapped.
    auto before = gstats();
    ASSERT_TRUE(d->chain().raw(a->dma, 0x80000000u, false).raw(a->dma, 0x80000000u, true).submit());
    expect_broken(*q, "2^32");
    EXPECT_EQ(gstats().map_calls, before.map_calls);
}

// xen-facts §1.1: a buffer granted read-only cannot be device-writable.
TEST_P(RingRules, DeviceWritableDescriptorOnReadOnlyGrantFails) {
    auto d = ring(8);
    auto q = queue(*d);
    auto ro = d->alloc(64, true);
    ASSERT_TRUE(ro);
    ASSERT_TRUE(d->chain().readable("hdr").add(*ro, true).submit());
    expect_broken(*q, "device-writable");
    EXPECT_EQ(h_->fatal[0].code, std::errc::operation_not_permitted);
    // Nothing stays mapped from the failed chain (its RO part neither).
    EXPECT_EQ(h_->grants->pages_in_use(), d->ring_refs());
}

// A revoked grant fails the map; the queue breaks, nothing stays mapped.
TEST_P(RingRules, RevokedGrantFails) {
    auto d = ring(8);
    auto q = queue(*d);
    auto req = d->chain().readable("hdr").writable(16).submit();
    ASSERT_TRUE(req);
    h_->guest->revoke(req->buf(1).ref());  // not mapped: freed at once
    expect_broken(*q, "not granted");
    EXPECT_EQ(h_->grants->pages_in_use(), d->ring_refs());
}

// One grant map call for every chain popped together; each chain is
// unmapped on its own, right before its used entry is published.
TEST_P(RingRules, PopBatchMapsAllChainsInOneCallAndUnmapsEachAtItsCompletion) {
    auto d = ring(32);
    auto q = queue(*d);
    std::vector<Submitted> reqs;
    for (int i = 0; i < 8; ++i) {
        auto r = d->chain().readable(16).writable(4096).writable(1).submit();
        ASSERT_TRUE(r);
        reqs.push_back(*r);
    }
    auto before = gstats();
    std::vector<DescriptorChain> out;
    auto n = q->pop_batch(16, out);
    ASSERT_TRUE(n) << n.error().describe();
    ASSERT_EQ(*n, 8u);
    EXPECT_EQ(gstats().map_calls - before.map_calls, 1u);  // one call for all 8 chains
    for (int i = 0; i < 8; ++i) {
        ASSERT_EQ(out[i].writable_segments().size(), 2u);
        out[i].writable_segments()[1][0] = std::byte(0x40 + i);
    }
    for (int i = 0; i < 8; ++i) {
        // Chain i is unmapped before its used entry exists; the later ones stay mapped.
        q->push(std::move(out[i]), 1);
        EXPECT_EQ(gstats().unmap_calls - before.unmap_calls, std::uint64_t(i + 1));
        EXPECT_TRUE(h_->guest->end_access(reqs[i].buf(2).ref())) << "chain " << i;
        if (i + 1 < 8) {
            EXPECT_EQ(h_->guest->end_access(reqs[i + 1].buf(2).ref()).error().code,
                      std::errc::device_or_resource_busy);
        }
        auto u = d->next_used();
        ASSERT_TRUE(u);
        EXPECT_EQ(u->id, reqs[i].id);
        EXPECT_EQ(reqs[i].buf(2).bytes()[0], std::byte(0x40 + i));
    }
    EXPECT_EQ(h_->grants->pages_in_use(), d->ring_refs());
}

}  // namespace
