// SPDX-License-Identifier: GPL-2.0-only
// Hostile register traffic: the non-blocking registers abused, feature
// negotiation violations, config space and queue registers out of range,
// reset storms and notification floods. The honest guest of the same
// supervisor keeps writing and verifying all along (fixture).
#include <cstring>

#include "hostile_harness.h"
#include "xv/transport/mmio.h"
#include "xv/transport/nonblocking.h"
#include "xv/transport/pci.h"

namespace xv::hostile {
namespace {

namespace nb = transport::nonblocking;
namespace st = transport::status;
namespace feat = transport::feature;

constexpr std::uint8_t kUpToFeaturesOk = st::kAcknowledge | st::kDriver | st::kFeaturesOk;

// --- the non-blocking registers -------------------------------------------------

class NbRegs : public HostileByTransport {
protected:
    guest::NbRegisterIo& io() { return dynamic_cast<guest::NbRegisterIo&>(evil().t().regs()); }
    /// Offset of the device status register in the indirect register space.
    std::uint32_t status_off() const { return is_pci(GetParam()) ? 0x14 : transport::mmio_reg::kStatus; }
    /// Offset of a read-only register (mmio MagicValue, pci device_feature).
    std::uint32_t ro_off() const { return is_pci(GetParam()) ? 0x04 : transport::mmio_reg::kMagic; }
    unsigned status_size() const { return is_pci(GetParam()) ? 1 : 4; }

    /// Starts `cmd` and returns ACCESS once idle.
    std::uint32_t access(std::uint32_t cmd, std::uint32_t data = 0) {
        EXPECT_TRUE(io().start(cmd, data).has_value());
        auto a = io().wait_idle();
        EXPECT_TRUE(a.has_value());
        return a ? *a : 0;
    }
    void expect_invalid(std::uint32_t cmd) {
        const std::uint8_t before = evil().status();
        auto a = access(cmd, 0);
        EXPECT_TRUE(a & nb::kErrorInvalid) << std::hex << "cmd " << cmd << " ACCESS " << a;
        EXPECT_TRUE(a & nb::kErrorRetry) << std::hex << "cmd " << cmd << " ACCESS " << a;
        EXPECT_FALSE(a & nb::kBusy);
        EXPECT_EQ(evil().status(), before) << "a refused access changed the device";
    }
    void SetUp() override {
        HostileByTransport::SetUp();
        auto r = evil().up({.size = 16});
        ASSERT_TRUE(r.has_value()) << r.error().describe();
        log_sink().clear();
    }
    void TearDown() override {
        if (!HasFatalFailure()) {
            // Whatever was tried, the device still serves its own guest.
            auto r = evil().up({.size = 16});
            EXPECT_TRUE(r.has_value()) << r.error().describe();
            if (r) {
                auto w = evil().write(64, pattern(64));
                EXPECT_TRUE(w.has_value() && *w == 0);
            }
            expect_honest_progress();
        }
        HostileByTransport::TearDown();
    }
};

TEST_P(NbRegs, SizeFieldThreeIsInvalid) {
    expect_invalid(nb::kWrite | (3u << nb::kSizeShift) | status_off());
}

TEST_P(NbRegs, OffsetOutsideTheRegisterFileIsInvalid) {
    expect_invalid(nb::command(false, 4, 0x1fffc));
    expect_invalid(nb::command(true, 4, 0x1fffc));
}

TEST_P(NbRegs, WriteToReadOnlyRegisterIsInvalid) {
    auto before = evil().t().regs().read(ro_off(), 4);
    ASSERT_TRUE(before.has_value());
    expect_invalid(nb::command(true, 4, ro_off()));
    auto after = evil().t().regs().read(ro_off(), 4);
    ASSERT_TRUE(after.has_value());
    EXPECT_EQ(*after, *before);
}

TEST_P(NbRegs, ReservedCommandBitsAreInvalid) {
    expect_invalid(nb::command(false, status_size(), status_off()) | (1u << 20));
}

TEST_P(NbRegs, MisalignedOffsetIsInvalid) {
    expect_invalid(nb::command(false, 4, status_off() + 2));
}

TEST_P(NbRegs, AccessesTheRegistersThemselvesAreInvalid) {
    const std::uint32_t self = is_pci(GetParam()) ? transport::pci_layout::kNbOff : nb::kMmioAccess;
    expect_invalid(nb::command(true, 4, self));
    expect_invalid(nb::command(false, 4, self + 4));
}

// A second access while BUSY: see Fault.DiskStallingForSecondsKeepsEveryRegisterAccessAnswered,
// where the stalled disk keeps the first access BUSY for seconds (deterministic).

TEST_P(NbRegs, AccessDataWithoutAccessDoesNothing) {
    const std::uint8_t before = evil().status();
    for (std::uint32_t v : {0u, 0xffffffffu, 0x4u})
        ASSERT_TRUE(evil().sim().mmio_write(0, io().access_addr() + 4, 4, v).has_value());
    auto d = evil().sim().mmio_read(0, io().access_addr() + 4, 4);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(evil().status(), before);
    auto w = evil().write(8, pattern(8));
    ASSERT_TRUE(w.has_value());
    EXPECT_EQ(*w, 0);
}

TEST_P(NbRegs, NarrowAccessesToTheRegistersAreIgnored) {
    const std::uint8_t before = evil().status();
    ASSERT_TRUE(evil().sim().mmio_write(0, io().access_addr(), 2, nb::command(true, 1, status_off())).has_value());
    ASSERT_TRUE(evil().sim().mmio_write(0, io().access_addr() + 1, 1, 0xff).has_value());
    auto a = evil().sim().mmio_read(0, io().access_addr(), 4);
    ASSERT_TRUE(a.has_value());
    EXPECT_FALSE(*a & nb::kBusy) << "a 2-byte write started an access";
    EXPECT_EQ(evil().status(), before);
    EXPECT_TRUE(log_sink().wait_for({evil_label()})) << dump_lines(evil_label());
}

INSTANTIATE_TEST_SUITE_P(Hostile, NbRegs, ::testing::Values(Tk::MmioNb, Tk::PciNb), tk_param_name);

// --- negotiation, config space, queue registers ---------------------------------------

class Negotiation : public HostileByTransport {
protected:
    void ack_driver() {
        auto& t = evil().t();
        ASSERT_TRUE(t.reset().has_value());
        ASSERT_TRUE(t.set_status(st::kAcknowledge).has_value());
        ASSERT_TRUE(t.set_status(st::kAcknowledge | st::kDriver).has_value());
        log_sink().clear();
    }
    std::uint64_t good_features() {
        return BlkGuest::default_features() & ~(feat::bit(feat::kRingPacked) | feat::bit(feat::kEventIdx));
    }
    void expect_needs_reset(std::string_view why) {
        EXPECT_TRUE(evil().wait_needs_reset()) << "status " << int(evil().status());
        EXPECT_TRUE(log_sink().wait_for({evil_label(), why})) << dump_lines(evil_label());
        expect_honest_progress();
    }
    void expect_evil_works() {
        auto r = evil().up({.size = 16});
        ASSERT_TRUE(r.has_value()) << r.error().describe();
        auto w = evil().write(32, pattern(32));
        ASSERT_TRUE(w.has_value());
        EXPECT_EQ(*w, 0);
    }
};

TEST_P(Negotiation, FeaturesOkWithUnofferedFeatureIsRefused) {
    ack_driver();
    ASSERT_TRUE(evil().t().set_driver_features(good_features() | (1ULL << 50)).has_value());
    ASSERT_TRUE(evil().t().set_status(kUpToFeaturesOk).has_value());
    EXPECT_FALSE(evil().status() & st::kFeaturesOk) << "FEATURES_OK accepted with an unoffered bit";
    EXPECT_TRUE(log_sink().wait_for({evil_label(), "FEATURES_OK refused"})) << dump_lines(evil_label());
    expect_honest_progress();
    expect_evil_works();
}

TEST_P(Negotiation, FeaturesOkWithoutAccessPlatformIsRefused) {
    ack_driver();
    ASSERT_TRUE(evil().t().set_driver_features(good_features() & ~feat::bit(feat::kAccessPlatform)).has_value());
    ASSERT_TRUE(evil().t().set_status(kUpToFeaturesOk).has_value());
    EXPECT_FALSE(evil().status() & st::kFeaturesOk);
    EXPECT_TRUE(log_sink().wait_for({evil_label(), "FEATURES_OK refused"})) << dump_lines(evil_label());
    expect_evil_works();
}

TEST_P(Negotiation, DriverOkWithoutFeaturesOkNeedsReset) {
    ack_driver();
    ASSERT_TRUE(evil().t().set_driver_features(good_features()).has_value());
    ASSERT_TRUE(evil().t().set_status(st::kAcknowledge | st::kDriver | st::kDriverOk).has_value());
    expect_needs_reset("DEVICE_NEEDS_RESET");
    EXPECT_FALSE(evil().status() & st::kDriverOk) << "the device went live without FEATURES_OK";
    expect_evil_works();
}

TEST_P(Negotiation, FeaturesChangedAfterFeaturesOkAreIgnored) {
    ack_driver();
    const std::uint64_t f = good_features();
    ASSERT_TRUE(evil().t().set_driver_features(f).has_value());
    ASSERT_TRUE(evil().t().set_status(kUpToFeaturesOk).has_value());
    ASSERT_TRUE(evil().status() & st::kFeaturesOk);
    // Now claim packed rings and event idx too.
    ASSERT_TRUE(evil().t().set_driver_features(f | feat::bit(feat::kRingPacked) | feat::bit(feat::kEventIdx)).has_value());
    EXPECT_TRUE(log_sink().wait_for({evil_label(), "after FEATURES_OK"})) << dump_lines(evil_label());
    // The negotiated set is what FEATURES_OK fixed: a split queue works.
    ASSERT_TRUE(evil().make_queue({.size = 16}).has_value());
    auto c = evil().q().config();
    ASSERT_TRUE(evil().t().setup_queue(0, c.size, c.desc_addr, c.driver_addr, c.device_addr).has_value());
    ASSERT_TRUE(evil().t().enable_queue(0).has_value());
    ASSERT_TRUE(evil().t().set_status(kUpToFeaturesOk | st::kDriverOk).has_value());
    auto w = evil().write(40, pattern(40));
    ASSERT_TRUE(w.has_value()) << w.error().describe();
    EXPECT_EQ(*w, 0);
    expect_honest_progress();
}

TEST_P(Negotiation, ClearingStatusBitsNeedsReset) {
    ack_driver();
    ASSERT_TRUE(evil().t().set_driver_features(good_features()).has_value());
    ASSERT_TRUE(evil().t().set_status(kUpToFeaturesOk).has_value());
    ASSERT_TRUE(evil().t().set_status(st::kAcknowledge).has_value());  // DRIVER and FEATURES_OK dropped
    expect_needs_reset("DEVICE_NEEDS_RESET");
    expect_evil_works();
}

TEST_P(Negotiation, ConfigSpaceOutOfRangeIsRefused) {
    ASSERT_TRUE(evil().up({.size = 16}).has_value());
    log_sink().clear();
    auto cap = evil().t().config_read(0, 4);
    ASSERT_TRUE(cap.has_value());
    // Past the end of the config space (still inside the register window):
    // plain accesses are ignored (writes) or read 0, with a log line; through
    // ACCESS they are refused with ERROR_INVALID.
    for (std::uint32_t off : {0x80u, 0xfcu}) {
        auto w = evil().t().config_write(off, 4, 0xdeadbeef);
        EXPECT_EQ(w.has_value(), !is_nb(GetParam())) << "config write at " << off;
        auto r = evil().t().config_read(off, 4);
        EXPECT_EQ(r.has_value(), !is_nb(GetParam())) << "config read at " << off;
        if (r) {
            EXPECT_EQ(*r, 0u);
        }
    }
    // A field the driver may not write: the capacity.
    (void)evil().t().config_write(0, 4, 0xffffffff);
    auto cap2 = evil().t().config_read(0, 4);
    ASSERT_TRUE(cap2.has_value());
    EXPECT_EQ(*cap2, *cap) << "the guest changed its disk's capacity";
    if (!is_nb(GetParam())) {
        EXPECT_TRUE(log_sink().wait_for({evil_label(), "out of range"})) << dump_lines(evil_label());
    }
    auto w = evil().write(48, pattern(48));
    ASSERT_TRUE(w.has_value());
    EXPECT_EQ(*w, 0);
    expect_honest_progress();
}

class QueueRegs : public Negotiation {
protected:
    void features_ok(bool packed = false) {
        ack_driver();
        auto f = good_features() | (packed ? feat::bit(feat::kRingPacked) : 0);
        ASSERT_TRUE(evil().t().set_driver_features(f).has_value());
        ASSERT_TRUE(evil().t().set_status(kUpToFeaturesOk).has_value());
        ASSERT_TRUE(evil().status() & st::kFeaturesOk);
    }
    /// Programs queue 0 with a ring of `alloc_size` entries but QueueNum `size`.
    void program(std::uint16_t size, bool packed = false, std::uint16_t alloc_size = 16) {
        ASSERT_TRUE(evil().make_queue({.size = alloc_size, .packed = packed}).has_value());
        auto c = evil().q().config();
        ASSERT_TRUE(evil().t().setup_queue(0, size, c.desc_addr, c.driver_addr, c.device_addr).has_value());
        ASSERT_TRUE(evil().t().enable_queue(0).has_value());
    }
};

TEST_P(QueueRegs, SizeZeroIsRefused) {
    features_ok();
    program(0);
    expect_needs_reset("size 0 invalid");
    expect_evil_works();
}

TEST_P(QueueRegs, SizeAboveMaximumIsRefused) {
    features_ok();
    auto max = evil().t().queue_max(0);
    ASSERT_TRUE(max.has_value());
    ASSERT_LT(*max, 32768);
    program(std::uint16_t(*max * 2));
    expect_needs_reset("invalid");
    expect_evil_works();
}

TEST_P(QueueRegs, SplitSizeNotAPowerOfTwoIsRefused) {
    features_ok();
    program(12);
    expect_needs_reset("size 12 invalid");
    expect_evil_works();
}

TEST_P(QueueRegs, PackedSizeNotAPowerOfTwoIsServed) {
    // virtio 1.2 §2.8: packed rings may have any size: a size of 7 is legal.
    features_ok(true);
    program(7, true, 7);
    ASSERT_TRUE(evil().t().set_status(kUpToFeaturesOk | st::kDriverOk).has_value());
    for (int i = 0; i < 10; ++i) {  // more requests than slots: wraps the ring
        auto w = evil().write(8 * i, pattern(100 + i));
        ASSERT_TRUE(w.has_value()) << w.error().describe();
        EXPECT_EQ(*w, 0);
    }
    EXPECT_FALSE(evil().needs_reset());
    EXPECT_EQ(evil_img_->read(8 * 9 * 512, 4096), pattern(109));
}

TEST_P(QueueRegs, MissingQueueSelectedAndEnabledIsHarmless) {
    features_ok();
    ASSERT_TRUE(evil().make_queue({.size = 16, .index = 5}).has_value());
    auto c = evil().q().config();
    (void)evil().t().setup_queue(5, 16, c.desc_addr, c.driver_addr, c.device_addr);
    (void)evil().t().enable_queue(5);
    auto en = evil().t().queue_enabled(5);
    ASSERT_TRUE(en.has_value());
    EXPECT_FALSE(*en) << "queue 5 of a one-queue device reads enabled";
    expect_honest_progress();
    expect_evil_works();
}

TEST_P(QueueRegs, AddressesRewrittenWhileEnabledAreIgnored) {
    ASSERT_TRUE(evil().up({.size = 16}).has_value());
    log_sink().clear();
    // Point the live queue elsewhere (a plain gpa): must be ignored.
    ASSERT_TRUE(evil().t().setup_queue(0, 16, 0x40000000, 0x40001000, 0x40002000).has_value());
    EXPECT_TRUE(log_sink().wait_for({evil_label(), "queue 0"})) << dump_lines(evil_label());
    auto w = evil().write(56, pattern(56));
    ASSERT_TRUE(w.has_value()) << w.error().describe();
    EXPECT_EQ(*w, 0);
    EXPECT_FALSE(evil().needs_reset());
    expect_honest_progress();
}

TEST_P(QueueRegs, ResetStorm) {
    // Bring-ups, requests and resets as fast as the guest can trap.
    for (int i = 0; i < 30; ++i) {
        auto r = evil().up({.size = 16});
        ASSERT_TRUE(r.has_value()) << "round " << i << ": " << r.error().describe();
        auto data = pattern(5000 + i);
        std::memcpy(evil().data_ro.ptr, data.data(), data.size());
        devices::blk::OutHdr h{devices::blk::req::kOut, 0, std::uint64_t(i % 8) * 8};
        std::memcpy(evil().hdr.ptr, &h, sizeof h);
        auto d = evil().data_ro;
        d.len = 4096;
        ASSERT_TRUE(evil().q().chain().add(evil().hdr, false).add(d, false).add(evil().status_buf, true).submit().has_value());
        ASSERT_TRUE(evil().t().notify(0).has_value());
        if (i % 2) {
            ASSERT_TRUE(evil().t().set_status(0).has_value());  // reset without waiting
        }
    }
    expect_honest_progress();
    ASSERT_TRUE(evil().t().reset().has_value());
    EXPECT_TRUE(Host::eventually([&] { return evil().sim().mapped_refs() == 0; }))
        << evil().sim().mapped_refs() << " refs still mapped after the final reset";
    expect_evil_works();
}

TEST_P(QueueRegs, ResetsWithManyRequestsInFlight) {
    for (int i = 0; i < 10; ++i) {
        ASSERT_TRUE(evil().up({.size = 64}).has_value());
        for (int k = 0; k < 12; ++k) {
            devices::blk::OutHdr h{devices::blk::req::kOut, 0, std::uint64_t(k) * 16};
            auto hb = evil().q().alloc(16, true);
            ASSERT_TRUE(hb.has_value());
            std::memcpy(hb->ptr, &h, sizeof h);
            auto d = evil().data_ro;
            d.len = 8192;
            ASSERT_TRUE(evil().q().chain().add(*hb, false).add(d, false).writable(1).submit().has_value());
        }
        ASSERT_TRUE(evil().t().notify(0).has_value());
        ASSERT_TRUE(evil().t().reset().has_value()) << "reset with requests in flight did not complete";
        EXPECT_EQ(evil().sim().mapped_refs(), 0u) << "status read 0 while grants were still mapped";
    }
    expect_honest_progress();
    expect_evil_works();
}

TEST_P(QueueRegs, NotificationFlood) {
    ASSERT_TRUE(evil().up({.size = 16}).has_value());
    log_sink().clear();
    const std::uint64_t before = writer_->rounds();
    // Kicks as fast as the vCPU traps, for a second (or 3000 of them), and
    // on until the honest guest finished a round while the flood goes on
    // (at most 10 s): a fast flood can be over before one honest round
    // completes on a loaded host, which would say nothing about starvation.
    const auto t0 = std::chrono::steady_clock::now();
    int kicks = 0;
    const auto flooding = [&] {
        const auto el = std::chrono::steady_clock::now() - t0;
        if (kicks < 3000 && el < 1s) {
            return true;
        }
        return writer_->rounds() == before && el < 10s;
    };
    for (; flooding(); ++kicks) {
        ASSERT_TRUE(evil().t().notify(0).has_value());
        if (kicks % 10 == 0) {
            ASSERT_TRUE(evil().t().notify(9).has_value());  // no such queue
        }
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_GT(writer_->rounds(), before) << "the honest guest made no progress during " << kicks << " kicks";
    // Guest-triggered lines are rate limited (burst 10, then 5 per second).
    EXPECT_LE(double(log_sink().count({evil_label(), "notify of queue"})), 12 + 6 * secs);
    RecordProperty("kicks", kicks);
    auto w = evil().write(72, pattern(72));
    ASSERT_TRUE(w.has_value());
    EXPECT_EQ(*w, 0);
    expect_honest_progress();
}

TEST_P(QueueRegs, OddWidthAndUnknownRegistersAreIgnored) {
    ASSERT_TRUE(evil().up({.size = 16}).has_value());
    log_sink().clear();
    const std::uint8_t before = evil().status();
    auto& r = evil().t().regs();
    if (is_pci(GetParam())) {
        (void)r.write(0x14, 4, 0);      // device_status is one byte wide
        (void)r.write(0x0c, 2, 0xffff); // driver_feature is 32-bit
        (void)r.write(0x5000, 4, 1);    // a hole in BAR0
        (void)r.write(0x15, 1, 0);      // config_generation is read-only
    } else {
        (void)r.write(transport::mmio_reg::kStatus, 1, 0);  // control registers are 32-bit
        (void)r.write(transport::mmio_reg::kStatus + 2, 2, 0);
        (void)r.write(0x0fc, 4, 1);     // unknown register
        (void)r.write(transport::mmio_reg::kMagic, 4, 0);  // read-only
    }
    EXPECT_EQ(evil().status(), before);
    if (!is_nb(GetParam())) {
        EXPECT_TRUE(log_sink().wait_for({evil_label()})) << dump_lines(evil_label());
    }
    auto w = evil().write(80, pattern(80));
    ASSERT_TRUE(w.has_value());
    EXPECT_EQ(*w, 0);
    expect_honest_progress();
}

INSTANTIATE_TEST_SUITE_P(Hostile, Negotiation, ::testing::Values(Tk::Mmio, Tk::MmioNb, Tk::Pci, Tk::PciNb),
                         tk_param_name);
INSTANTIATE_TEST_SUITE_P(Hostile, QueueRegs, ::testing::Values(Tk::Mmio, Tk::MmioNb, Tk::Pci, Tk::PciNb),
                         tk_param_name);

}  // namespace
}  // namespace xv::hostile
