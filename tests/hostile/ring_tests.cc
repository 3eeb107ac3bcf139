// SPDX-License-Identifier: GPL-2.0-only
// Hostile rings: what a compromised frontend can put in its descriptors,
// rings and grants. Each case: the hostile device ends in DEVICE_NEEDS_RESET
// (or answers VIRTIO_BLK_S_IOERR/UNSUPP in its used ring) with a log line
// naming the domain, device and queue; the honest guest served by the same
// supervisor keeps writing and verifying all along (fixture), loses nothing,
// and nothing leaks once the host stops.
#include <cstring>

#include "hostile_harness.h"

namespace xv::hostile {
namespace {

namespace df = guest::desc_flags;
namespace gd = xen::grant_dma;
using guest::PackedDesc;
using guest::SplitDesc;

class Ring : public HostileByTransport {
protected:
    /// Brings the hostile device up with one queue of 16.
    void up(guest::DriverOptions o = {}) {
        if (o.size == 16 || o.size == 0) o.size = 16;
        auto r = evil().up(o);
        ASSERT_TRUE(r.has_value()) << r.error().describe();
        log_sink().clear();
    }
    void kick() { ASSERT_TRUE(evil().t().notify(0).has_value()); }

    /// The hostile device reads back DEVICE_NEEDS_RESET and a log line names
    /// its queue and contains `why`.
    void expect_broken(std::string_view why) {
        EXPECT_TRUE(evil().wait_needs_reset()) << "status " << int(evil().status());
        EXPECT_TRUE(log_sink().wait_for({evil_queue(), why})) << "no line naming " << evil_queue() << " and '"
                                                              << why << "':\n"
                                                              << dump_lines(evil_label());
        EXPECT_TRUE(log_sink().wait_for({evil_label(), "DEVICE_NEEDS_RESET"})) << dump_lines(evil_label());
        expect_honest_progress();
        expect_recovers();
    }

    /// After a reset the hostile guest gets a working device again: the
    /// breakage was its own and lasted until it reset (virtio 1.2 §2.1.2).
    void expect_recovers() {
        auto r = evil().up({.size = 16});
        ASSERT_TRUE(r.has_value()) << r.error().describe();
        auto data = pattern(777);
        auto w = evil().write(200, data);
        ASSERT_TRUE(w.has_value()) << w.error().describe();
        EXPECT_EQ(*w, devices::blk::kStatusOk);
        std::vector<std::byte> back(4096);
        auto rd = evil().read(200, back);
        ASSERT_TRUE(rd.has_value());
        EXPECT_EQ(back, data);
    }

    /// A split descriptor over a guest buffer.
    static SplitDesc d(const guest::GuestBuf& b, std::uint32_t len, std::uint16_t flags, std::uint16_t next = 0) {
        return SplitDesc{b.dma, len, flags, next};
    }
    /// Writes the 16-entry indirect table `entries` into a fresh RO buffer.
    template <class D>
    guest::GuestBuf table(const std::vector<D>& entries) {
        auto t = evil().q().alloc(std::uint32_t(16 * entries.size()), true);
        EXPECT_TRUE(t.has_value());
        std::memcpy(t->ptr, entries.data(), 16 * entries.size());
        return *t;
    }
};

TEST_P(Ring, ChainLoopIsDetected) {
    up();
    auto& q = evil().q();
    q.set_desc(0, d(evil().hdr, 16, df::kNext, 1));
    q.set_desc(1, d(evil().data_ro, 512, df::kNext, 0));  // back to 0: a loop
    q.push_avail(0);
    kick();
    expect_broken("loops");
}

TEST_P(Ring, SelfLoopInIndirectTableIsDetected) {
    up({.indirect = true});
    auto t = table(std::vector<SplitDesc>{d(evil().hdr, 16, df::kNext, 0)});
    evil().q().set_desc(0, SplitDesc{t.dma, 16, df::kIndirect, 0});
    evil().q().push_avail(0);
    kick();
    expect_broken("loops");
}

TEST_P(Ring, NestedIndirectIsRefused) {
    up({.indirect = true});
    auto inner = table(std::vector<SplitDesc>{d(evil().hdr, 16, 0)});
    auto outer = table(std::vector<SplitDesc>{SplitDesc{inner.dma, 16, df::kIndirect, 0}});
    evil().q().set_desc(0, SplitDesc{outer.dma, 16, df::kIndirect, 0});
    evil().q().push_avail(0);
    kick();
    expect_broken("INDIRECT inside an indirect table");
}

TEST_P(Ring, IndirectTableOfHugeLengthIsRefused) {
    up({.indirect = true});
    auto t = table(std::vector<SplitDesc>{d(evil().hdr, 16, 0)});
    evil().q().set_desc(0, SplitDesc{t.dma, 0xfffffff0u, df::kIndirect, 0});
    evil().q().push_avail(0);
    kick();
    expect_broken("indirect table of");
}

TEST_P(Ring, HugeDescriptorLengthIsRefused) {
    up();
    // 4 GiB - 1 from a one-page grant: far more pages than any map may hold.
    evil().q().set_desc(0, d(evil().hdr, 16, df::kNext, 1));
    evil().q().set_desc(1, d(evil().data_ro, 0xffffffffu - 17, df::kNext, 2));  // sum exactly 2^32 - 1
    evil().q().set_desc(2, d(evil().status_buf, 1, df::kWrite));
    evil().q().push_avail(0);
    kick();
    expect_broken(evil_queue());
}

TEST_P(Ring, ChainLengthWrappingPast2To32IsRefused) {
    up();
    // 0x80000000 + 0x80000000 wraps a 32-bit sum to 0.
    evil().q().set_desc(0, d(evil().data_ro, 0x80000000u, df::kNext, 1));
    evil().q().set_desc(1, d(evil().data_ro, 0x80000000u, df::kNext, 2));
    evil().q().set_desc(2, d(evil().status_buf, 1, df::kWrite));
    evil().q().push_avail(0);
    kick();
    expect_broken("2^32");
}

TEST_P(Ring, HeadOutOfRangeIsRefused) {
    up();
    evil().q().set_avail_ring(0, 16 + 5);
    evil().q().set_avail_idx(1);
    kick();
    expect_broken("beyond the table");
}

TEST_P(Ring, NextOutOfRangeIsRefused) {
    up();
    evil().q().set_desc(0, d(evil().hdr, 16, df::kNext, 0xffff));
    evil().q().push_avail(0);
    kick();
    expect_broken("next 65535 beyond");
}

TEST_P(Ring, AvailIdxJumpingPastQueueSizeIsRefused) {
    up();
    evil().q().set_avail_idx(17);  // 17 new chains in a queue of 16
    kick();
    expect_broken("more than the queue size");
}

TEST_P(Ring, AvailIdxMovingBackwardsIsRefused) {
    up();
    evil().q().set_avail_idx(0xffff);  // "65535 new chains": idx went backwards
    kick();
    expect_broken("more than the queue size");
}

TEST_P(Ring, UnknownDescriptorFlagsAreRefused) {
    up();
    evil().q().set_desc(0, d(evil().hdr, 16, 0x40));
    evil().q().push_avail(0);
    kick();
    expect_broken("unknown flags");
}

TEST_P(Ring, ReadableAfterWritableIsRefused) {
    up();
    evil().q().set_desc(0, d(evil().data_rw, 512, df::kWrite | df::kNext, 1));
    evil().q().set_desc(1, d(evil().hdr, 16, 0));
    evil().q().push_avail(0);
    kick();
    expect_broken("device-readable descriptor after a device-writable one");
}

TEST_P(Ring, ChainOfZeroBytesIsRefused) {
    up();
    evil().q().set_desc(0, d(evil().hdr, 0, 0));
    evil().q().push_avail(0);
    kick();
    expect_broken("empty");
}

TEST_P(Ring, WriteThroughReadOnlyGrantIsRefused) {
    up();
    // A read request whose data buffer was granted read-only: the device
    // would have to write through a RO grant.
    auto guard = pattern(31, 4096);
    std::memcpy(evil().data_ro.ptr, guard.data(), guard.size());
    devices::blk::OutHdr h{devices::blk::req::kIn, 0, 0};
    std::memcpy(evil().hdr.ptr, &h, sizeof h);
    evil().q().set_desc(0, d(evil().hdr, 16, df::kNext, 1));
    evil().q().set_desc(1, d(evil().data_ro, 4096, df::kWrite | df::kNext, 2));
    evil().q().set_desc(2, d(evil().status_buf, 1, df::kWrite));
    evil().q().push_avail(0);
    kick();
    EXPECT_TRUE(evil().wait_needs_reset());
    EXPECT_EQ(0, std::memcmp(evil().data_ro.ptr, guard.data(), guard.size())) << "a RO grant was written";
    expect_broken("read-only");
}

TEST_P(Ring, PlainPhysicalBufferAddressIsRefused) {
    up();
    evil().q().set_desc(0, SplitDesc{0x40001000, 16, df::kNext, 1});  // a gpa: bit 63 clear
    evil().q().set_desc(1, d(evil().status_buf, 1, df::kWrite));
    evil().q().push_avail(0);
    kick();
    expect_broken("bit 63 clear");
}

TEST_P(Ring, RevokedGrantIsRefused) {
    up();
    evil().sim().revoke(evil().data_ro.ref());
    auto w = evil().write(0, pattern(1), 500ms);
    EXPECT_FALSE(w.has_value() && *w == 0) << "a write through a revoked grant succeeded";
    // The revoked ref may be handed out again: recover on a fresh buffer.
    auto fresh = evil().q().alloc(BlkGuest::kMaxData, true);
    ASSERT_TRUE(fresh.has_value());
    evil().data_ro = *fresh;
    expect_broken(evil_queue());
}

TEST_P(Ring, GrantToAnotherDomainIsRefused) {
    up();
    // The page is granted to the honest guest, not to the backend.
    auto other = evil().sim().alloc_dma(4096, honest_dom_, true);
    ASSERT_TRUE(other.has_value());
    devices::blk::OutHdr h{devices::blk::req::kOut, 0, 8};
    std::memcpy(evil().hdr.ptr, &h, sizeof h);
    evil().q().set_desc(0, d(evil().hdr, 16, df::kNext, 1));
    evil().q().set_desc(1, SplitDesc{*other, 4096, df::kNext, 2});
    evil().q().set_desc(2, d(evil().status_buf, 1, df::kWrite));
    evil().q().push_avail(0);
    kick();
    expect_broken(evil_queue());
}

TEST_P(Ring, GrantRefOnlyAnotherGuestHasIsRefused) {
    up();
    // The honest guest owns many more refs; its last one does not exist in
    // the hostile guest's grant table. Its page holds a secret.
    std::uint64_t dma = 0;
    for (int i = 0; i < 300; ++i) {
        auto a = honest_->sim().alloc_dma(4096, 0, true);
        ASSERT_TRUE(a.has_value());
        dma = *a;
    }
    auto secret = pattern(4242);
    std::memcpy(honest_->sim().dma_ptr(dma), secret.data(), secret.size());
    devices::blk::OutHdr h{devices::blk::req::kOut, 0, 16};
    std::memcpy(evil().hdr.ptr, &h, sizeof h);
    evil().q().set_desc(0, d(evil().hdr, 16, df::kNext, 1));
    evil().q().set_desc(1, SplitDesc{dma, 4096, df::kNext, 2});
    evil().q().set_desc(2, d(evil().status_buf, 1, df::kWrite));
    evil().q().push_avail(0);
    kick();
    expect_broken(evil_queue());
    EXPECT_NE(evil_img_->read(16 * 512, 4096), secret) << "the honest guest's page reached the hostile guest's disk";
}

TEST_P(Ring, GrantsRevokedWhileRequestsAreInFlight) {
    up({.size = 64});
    // Eight 64 KiB writes in flight, then every data grant is revoked at
    // once. Maps made before the revoke stay valid (as on Xen); maps after
    // it fail. Each request either completes with its data on disk, or the
    // device asks for a reset; nothing stays mapped afterwards.
    std::vector<guest::GuestBuf> bufs;
    std::vector<guest::Submitted> subs;
    std::vector<std::vector<std::byte>> datas;
    for (int i = 0; i < 8; ++i) {
        auto b = evil().q().alloc(65536, true);
        ASSERT_TRUE(b.has_value());
        datas.push_back(pattern(900 + i, 65536));
        std::memcpy(b->ptr, datas.back().data(), 65536);
        auto hdr = evil().q().alloc(16, true);
        ASSERT_TRUE(hdr.has_value());
        devices::blk::OutHdr h{devices::blk::req::kOut, 0, std::uint64_t(i) * 128};
        std::memcpy(hdr->ptr, &h, sizeof h);
        auto s = evil().q().chain().add(*hdr, false).add(*b, false).writable(1).submit();
        ASSERT_TRUE(s.has_value());
        subs.push_back(*s);
        bufs.push_back(*b);
    }
    kick();
    for (auto& b : bufs)
        for (std::uint32_t p = 0; p < 16; ++p) evil().sim().revoke(b.ref() + p);
    std::size_t done = 0, ok_count = 0;
    bool broken = false;
    while (done < subs.size() && !broken) {
        if (auto u = evil().wait_used(200ms)) {
            ++done;
            for (std::size_t i = 0; i < subs.size(); ++i)
                if (subs[i].id == u->id && subs[i].buf(2).bytes()[0] == std::byte{0}) {
                    ++ok_count;
                    EXPECT_EQ(evil_img_->read(i * 128 * 512, 65536), datas[i]) << "write " << i << " acknowledged, not on disk";
                }
        } else {
            broken = evil().needs_reset();
        }
    }
    EXPECT_TRUE(done == subs.size() || broken) << done << " of " << subs.size() << " came back and no reset asked";
    // Once reset, the device maps nothing of the hostile guest but what a
    // new bring-up maps.
    ASSERT_TRUE(evil().t().reset().has_value());
    EXPECT_TRUE(Host::eventually([&] { return evil().sim().mapped_refs() == 0; }))
        << evil().sim().mapped_refs() << " refs still mapped after reset";
    expect_honest_progress();
    expect_recovers();
    RecordProperty("acknowledged", int(ok_count));
}

INSTANTIATE_TEST_SUITE_P(Hostile, Ring, ::testing::Values(Tk::Mmio, Tk::Pci), tk_param_name);

// --- packed rings ---------------------------------------------------------------

class PackedRing : public Ring {};

TEST_P(PackedRing, ChainLongerThanTheRingIsRefused) {
    up({.packed = true});
    auto& q = evil().q();
    // Every descriptor available and linked: the walk would go round forever.
    for (std::uint16_t i = 16; i-- > 0;)
        q.set_packed_desc(i, PackedDesc{evil().data_ro.dma, 512, 0, std::uint16_t(df::kAvail | df::kNext)});
    kick();
    expect_broken("longer than the queue size");
}

TEST_P(PackedRing, NestedIndirectIsRefused) {
    up({.packed = true, .indirect = true});
    auto inner = table(std::vector<PackedDesc>{PackedDesc{evil().hdr.dma, 16, 0, 0}});
    auto outer = table(std::vector<PackedDesc>{PackedDesc{inner.dma, 16, 0, df::kIndirect}});
    evil().q().set_packed_desc(0, PackedDesc{outer.dma, 16, 0, std::uint16_t(df::kAvail | df::kIndirect)});
    kick();
    expect_broken("only WRITE is allowed");
}

TEST_P(PackedRing, HugeLengthIsRefused) {
    up({.packed = true});
    evil().q().set_packed_desc(0, PackedDesc{evil().data_ro.dma, 0xffffffffu, 0, df::kAvail});
    kick();
    expect_broken("pages");
}

TEST_P(PackedRing, WriteThroughReadOnlyGrantIsRefused) {
    up({.packed = true});
    evil().q().set_packed_desc(1, PackedDesc{evil().data_ro.dma, 4096, 0, std::uint16_t(df::kAvail | df::kWrite)});
    evil().q().set_packed_desc(0, PackedDesc{evil().hdr.dma, 16, 0, std::uint16_t(df::kAvail | df::kNext)});
    kick();
    expect_broken("read-only");
}

INSTANTIATE_TEST_SUITE_P(Hostile, PackedRing, ::testing::Values(Tk::Mmio, Tk::Pci), tk_param_name);

// --- ring areas -------------------------------------------------------------------

class RingArea : public HostileByTransport {
protected:
    /// Negotiates, programs queue 0 with the given areas and enables it.
    void program(std::uint64_t desc, std::uint64_t drv, std::uint64_t dev, std::uint16_t size = 16) {
        namespace st = transport::status;
        auto& t = evil().t();
        ASSERT_TRUE(t.reset().has_value());
        ASSERT_TRUE(t.set_status(st::kAcknowledge | st::kDriver).has_value());
        ASSERT_TRUE(t.set_driver_features(BlkGuest::default_features() & ~(transport::feature::bit(
                                                                                transport::feature::kRingPacked)))
                        .has_value());
        ASSERT_TRUE(t.set_status(st::kAcknowledge | st::kDriver | st::kFeaturesOk).has_value());
        log_sink().clear();
        ASSERT_TRUE(t.setup_queue(0, size, desc, drv, dev).has_value());
        ASSERT_TRUE(t.enable_queue(0).has_value());
    }
    void expect_needs_reset(std::string_view why) {
        EXPECT_TRUE(evil().wait_needs_reset()) << "status " << int(evil().status());
        EXPECT_TRUE(log_sink().wait_for({evil_label(), why})) << dump_lines(evil_label());
        expect_honest_progress();
    }
    std::uint64_t rw(std::uint64_t len) {
        auto a = evil().sim().alloc_dma(len, 0, false);
        EXPECT_TRUE(a.has_value());
        return *a;
    }
};

TEST_P(RingArea, RingNotGrantedIsRefused) {
    program(gd::encode(0x00ffff00), rw(64), rw(256));
    expect_needs_reset("setup failed");
}

TEST_P(RingArea, RingGrantedReadOnlyIsRefused) {
    auto ro = evil().sim().alloc_dma(256, 0, true);
    ASSERT_TRUE(ro.has_value());
    program(*ro, rw(64), rw(256));
    expect_needs_reset("setup failed");
}

TEST_P(RingArea, PlainPhysicalRingAddressIsRefused) {
    program(0x40000000, rw(64), rw(256));
    expect_needs_reset("not a grant address");
}

TEST_P(RingArea, QueueEnabledWithNoAddressesIsRefused) {
    program(0, 0, 0);
    expect_needs_reset("not a grant address");
}

TEST_P(RingArea, RingRefBeyond32BitsIsRefused) {
    program(gd::kFlag | (std::uint64_t(1) << 44), rw(64), rw(256));
    expect_needs_reset("2^32");
}

TEST_P(RingArea, MisalignedRingIsRefused) {
    program(rw(256) + 8, rw(64), rw(256));
    expect_needs_reset("misaligned");
}

TEST_P(RingArea, RingGrantRevokedAfterUseIsNotMappedAgain) {
    auto r = evil().up({.size = 16});
    ASSERT_TRUE(r.has_value());
    auto c = evil().q().config();
    // Used first: the device maps the rings on its queue's strand, which may
    // run after the register write that enabled the queue has completed (a
    // grant revoked before that is simply not mapped: setup failed).
    auto w = evil().write(0, pattern(4));
    ASSERT_TRUE(w.has_value()) << w.error().message;
    EXPECT_EQ(*w, 0);
    // The live mapping stays valid (Xen semantics); the device keeps working.
    evil().sim().revoke(xen::GrantRef(gd::first_ref(c.desc_addr)));
    w = evil().write(1, pattern(5));
    ASSERT_TRUE(w.has_value()) << w.error().message;
    EXPECT_EQ(*w, 0);
    // A new bring-up on the revoked ring cannot map it.
    program(c.desc_addr, c.driver_addr, c.device_addr);
    expect_needs_reset("setup failed");
}

INSTANTIATE_TEST_SUITE_P(Hostile, RingArea, ::testing::Values(Tk::Mmio, Tk::Pci), tk_param_name);

// --- requests the device answers with a status --------------------------------------

class BlkRequest : public HostileByTransport {
protected:
    void SetUp() override {
        HostileByTransport::SetUp();
        auto r = evil().up({.size = 16});
        ASSERT_TRUE(r.has_value()) << r.error().describe();
        log_sink().clear();
    }
    /// Submits hdr(type, sector) + `data` bytes + status; returns the status.
    std::uint8_t request(std::uint32_t type, std::uint64_t sector, std::uint32_t data_len, bool data_writable,
                         std::uint32_t hdr_len = 16) {
        devices::blk::OutHdr h{type, 0, sector};
        std::memcpy(evil().hdr.ptr, &h, sizeof h);
        auto c = evil().q().chain();
        auto hb = evil().hdr;
        hb.len = hdr_len;
        c.add(hb, false);
        if (data_len) {
            auto b = data_writable ? evil().data_rw : evil().data_ro;
            b.len = data_len;
            c.add(b, data_writable);
        }
        c.add(evil().status_buf, true);
        auto s = c.submit();
        EXPECT_TRUE(s.has_value());
        EXPECT_TRUE(evil().t().notify(0).has_value());
        auto u = evil().wait_used();
        EXPECT_TRUE(u.has_value());
        return std::uint8_t(*evil().status_buf.ptr);
    }
    void expect_still_works() {
        EXPECT_FALSE(evil().needs_reset()) << "a bad request is answered, it does not break the device";
        auto w = evil().write(300, pattern(3));
        ASSERT_TRUE(w.has_value());
        EXPECT_EQ(*w, 0);
        expect_honest_progress();
    }
};

TEST_P(BlkRequest, SectorBeyondCapacityIsIoErr) {
    EXPECT_EQ(request(devices::blk::req::kOut, 8192, 4096, false), devices::blk::kStatusIoErr);
    EXPECT_TRUE(log_sink().wait_for({evil_queue(), "OUT", "sector 8192"})) << dump_lines(evil_label());
    expect_still_works();
}

TEST_P(BlkRequest, SectorWrappingPast2To64IsIoErr) {
    // sector * 512 + len wraps 64 bits to a small offset.
    EXPECT_EQ(request(devices::blk::req::kIn, (~0ULL) / 512, 4096, true), devices::blk::kStatusIoErr);
    EXPECT_TRUE(log_sink().wait_for({evil_queue(), "IN"})) << dump_lines(evil_label());
    expect_still_works();
}

TEST_P(BlkRequest, ShortHeaderIsIoErr) {
    EXPECT_EQ(request(devices::blk::req::kOut, 0, 4096, false, 8), devices::blk::kStatusIoErr);
    EXPECT_TRUE(log_sink().wait_for({evil_queue()})) << dump_lines(evil_label());
    expect_still_works();
}

TEST_P(BlkRequest, DataNotSectorMultipleIsIoErr) {
    EXPECT_EQ(request(devices::blk::req::kOut, 0, 513, false), devices::blk::kStatusIoErr);
    EXPECT_TRUE(log_sink().wait_for({evil_queue(), "OUT"})) << dump_lines(evil_label());
    expect_still_works();
}

TEST_P(BlkRequest, UnknownTypeIsUnsupported) {
    EXPECT_EQ(request(0x7777, 0, 512, true), devices::blk::kStatusUnsupp);
    EXPECT_TRUE(log_sink().wait_for({evil_queue()})) << dump_lines(evil_label());
    expect_still_works();
}

INSTANTIATE_TEST_SUITE_P(Hostile, BlkRequest, ::testing::Values(Tk::Mmio, Tk::Pci), tk_param_name);

}  // namespace
}  // namespace xv::hostile
