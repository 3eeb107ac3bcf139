// SPDX-License-Identifier: GPL-2.0-only
// A typed virtio transport conformance suite, reusable for every device:
//
//   template <xv::test::TransportKind K> struct BlkOn {
//       static constexpr auto kind = K;
//       static std::shared_ptr<xv::transport::Device> make(xv::xen::DomId d) { ... }
//   };
//   using BlkKinds = ::testing::Types<BlkOn<TransportKind::Mmio>, BlkOn<TransportKind::MmioNb>,
//                                     BlkOn<TransportKind::Pci>, BlkOn<TransportKind::PciNb>>;
//   INSTANTIATE_TYPED_TEST_SUITE_P(Blk, VirtioConformance, BlkKinds);
//
// A type may also say `static constexpr bool packed = true;`: the suite then
// negotiates VIRTIO_F_RING_PACKED and lays its queues out as packed rings
// (virtio 1.2 §2.8); without it, split rings with RING_PACKED refused.
//
// Each test drives the device from the guest side (BusHarness) and checks
// one rule of virtio 1.2 §2.1, §2.2, §2.5, §3.1 or the grants-only rule.
#pragma once

#include <gtest/gtest.h>

#include <thread>
#include <type_traits>

#include "bus_harness.h"
#include "xv/transport/virtio_core.h"

namespace xv::test {

/// T::packed when the type says so, else false (split rings).
template <class T, class = void>
struct PackedOf : std::false_type {};
template <class T>
struct PackedOf<T, std::void_t<decltype(T::packed)>> : std::bool_constant<T::packed> {};

template <class T>
class VirtioConformance : public ::testing::Test {
protected:
    /// True for the packed-ring variant of the suite.
    static constexpr bool kPacked = PackedOf<T>::value;
    /// `want` with VIRTIO_F_RING_PACKED set for the packed variant, cleared for split.
    static std::uint64_t ring_features(std::uint64_t want = ~0ULL) {
        const std::uint64_t p = transport::feature::bit(transport::feature::kRingPacked);
        return kPacked ? want | p : want & ~p;
    }
    /// A driver for queue `q` in the variant's ring layout.
    Result<std::unique_ptr<VirtqueueDriver>> queue_driver(std::uint16_t q, std::uint16_t size = 16,
                                                          bool event_idx = false) {
        return h_->driver(q, size, event_idx, kPacked);
    }
    void SetUp() override {
        BusHarness::Options o;
        o.kind = T::kind;
        auto h = BusHarness::create(o, [](xen::DomId d) { return T::make(d); });
        ASSERT_TRUE(h) << h.error().describe();
        h_ = std::move(*h);
    }
    void TearDown() override {
        if (h_) h_->shutdown();
    }
    GuestTransport& drv() { return *h_->drv; }
    /// Waits (bounded) until status has `bits`.
    std::uint8_t wait_status_bits(std::uint8_t bits, std::chrono::milliseconds t = std::chrono::seconds(5)) {
        auto deadline = std::chrono::steady_clock::now() + t;
        for (;;) {
            auto s = drv().status();
            if (!s) return 0;
            if ((*s & bits) == bits || std::chrono::steady_clock::now() > deadline) return *s;
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
    }
    /// Drives the driver to DRIVER with `features` accepted; returns status after FEATURES_OK.
    std::uint8_t negotiate(std::uint64_t features) {
        namespace st = transport::status;
        EXPECT_TRUE(drv().reset());
        EXPECT_TRUE(drv().set_status(st::kAcknowledge));
        EXPECT_TRUE(drv().set_status(st::kAcknowledge | st::kDriver));
        EXPECT_TRUE(drv().set_driver_features(features));
        EXPECT_TRUE(drv().set_status(st::kAcknowledge | st::kDriver | st::kFeaturesOk));
        auto s = drv().status();
        EXPECT_TRUE(s);
        return s ? *s : 0;
    }
    std::unique_ptr<BusHarness> h_;
};

TYPED_TEST_SUITE_P(VirtioConformance);

// virtio 1.2 §2.4: writing 0 resets; the driver waits for status 0.
TYPED_TEST_P(VirtioConformance, ResetReadsBackZero) {
    ASSERT_TRUE(this->drv().set_status(transport::status::kAcknowledge));
    EXPECT_EQ(*this->drv().status(), transport::status::kAcknowledge);
    ASSERT_TRUE(this->drv().reset());
    EXPECT_EQ(*this->drv().status(), 0);
}

// xen-facts §1.2: Linux needs VERSION_1 and ACCESS_PLATFORM for grant DMA.
TYPED_TEST_P(VirtioConformance, OffersVersion1AndAccessPlatform) {
    auto f = this->drv().device_features();
    ASSERT_TRUE(f);
    EXPECT_TRUE(*f & transport::feature::bit(transport::feature::kVersion1));
    EXPECT_TRUE(*f & transport::feature::bit(transport::feature::kAccessPlatform));
}

// virtio 1.2 §3.1.1: the device re-checks at FEATURES_OK and refuses
// features it did not offer.
TYPED_TEST_P(VirtioConformance, RefusesUnofferedFeature) {
    auto f = this->drv().device_features();
    ASSERT_TRUE(f);
    unsigned extra = 0;
    while (extra < 64 && (*f >> extra) & 1) ++extra;
    ASSERT_LT(extra, 64u);
    auto s = this->negotiate(*f | (1ULL << extra));
    EXPECT_FALSE(s & transport::status::kFeaturesOk) << "status " << int(s);
    EXPECT_FALSE(s & transport::status::kNeedsReset);
    // The same driver accepting exactly the offer gets FEATURES_OK.
    s = this->negotiate(*f);
    EXPECT_TRUE(s & transport::status::kFeaturesOk) << "status " << int(s);
}

// virtio 1.2 §6.1 + grants only: VERSION_1 and ACCESS_PLATFORM are required.
TYPED_TEST_P(VirtioConformance, RefusesDriverWithoutVersion1OrAccessPlatform) {
    auto f = this->drv().device_features();
    ASSERT_TRUE(f);
    using namespace transport::feature;
    EXPECT_FALSE(this->negotiate(*f & ~bit(kVersion1)) & transport::status::kFeaturesOk);
    EXPECT_FALSE(this->negotiate(*f & ~bit(kAccessPlatform)) & transport::status::kFeaturesOk);
}

// virtio 1.2 §3.1.1: the whole init sequence reaches DRIVER_OK with queues live.
TYPED_TEST_P(VirtioConformance, ActivatesWithAllQueues) {
    auto n = this->drv().num_queues();
    ASSERT_TRUE(n);
    ASSERT_GT(*n, 0);
    std::vector<std::unique_ptr<VirtqueueDriver>> qs;
    std::vector<VirtqueueDriver*> raw;
    for (std::uint16_t q = 0; q < *n; ++q) {
        auto max = this->drv().queue_max(q);
        ASSERT_TRUE(max);
        ASSERT_GT(*max, 0);
        auto d = this->queue_driver(q, std::min<std::uint16_t>(*max, 16));
        ASSERT_TRUE(d) << d.error().describe();
        raw.push_back(d->get());
        qs.push_back(std::move(*d));
    }
    auto f = this->drv().bring_up(this->ring_features(), raw);
    ASSERT_TRUE(f) << f.error().describe();
    // virtio 1.2 §2.8: the packed variant really runs packed rings (the
    // device offered RING_PACKED), the split variant split ones.
    EXPECT_EQ((*f & transport::feature::bit(transport::feature::kRingPacked)) != 0, this->kPacked);
    auto s = this->drv().status();
    ASSERT_TRUE(s);
    EXPECT_EQ(*s, 0x0f);
    for (std::uint16_t q = 0; q < *n; ++q) EXPECT_TRUE(*this->drv().queue_enabled(q));
    // Activation runs on the control strand; nothing may go wrong later.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(*this->drv().status(), 0x0f);
    // Reset with live queues: back to 0, queues disabled, rings unmapped.
    ASSERT_TRUE(this->drv().reset());
    for (std::uint16_t q = 0; q < *n; ++q) EXPECT_FALSE(*this->drv().queue_enabled(q));
    EXPECT_EQ(this->h_->guest->mapped_refs(), 0u);
}

// virtio 1.2 §2.1.2 / §3.1.1: illegal status transitions set
// DEVICE_NEEDS_RESET; only a reset clears it.
TYPED_TEST_P(VirtioConformance, IllegalStatusTransitionsNeedReset) {
    namespace st = transport::status;
    const std::uint8_t bad[][2] = {
        {0, st::kAcknowledge | st::kDriver | st::kDriverOk},   // DRIVER_OK without FEATURES_OK
        {0, st::kDriver},                                      // DRIVER without ACKNOWLEDGE
        {st::kAcknowledge | st::kDriver, st::kAcknowledge},    // clears DRIVER
        {0, st::kAcknowledge | 0x10},                          // reserved bit
        {0, st::kAcknowledge | st::kNeedsReset},               // driver sets NEEDS_RESET
    };
    for (auto& b : bad) {
        ASSERT_TRUE(this->drv().reset());
        if (b[0]) {
            ASSERT_TRUE(this->drv().set_status(st::kAcknowledge));
            ASSERT_TRUE(this->drv().set_status(b[0]));
        }
        ASSERT_TRUE(this->drv().set_status(b[1]));
        auto s = this->drv().status();
        ASSERT_TRUE(s);
        EXPECT_TRUE(*s & st::kNeedsReset) << "from " << int(b[0]) << " to " << int(b[1]) << ": " << int(*s);
        // Further writes do nothing until reset.
        ASSERT_TRUE(this->drv().set_status(*s | st::kFeaturesOk));
        EXPECT_FALSE(*this->drv().status() & st::kFeaturesOk);
    }
    ASSERT_TRUE(this->drv().reset());
    EXPECT_EQ(*this->drv().status(), 0);
}

// Grants only: a ring address without bit 63 -> DEVICE_NEEDS_RESET.
TYPED_TEST_P(VirtioConformance, NonGrantRingAddressNeedsReset) {
    auto f = this->drv().device_features();
    ASSERT_TRUE(f);
    ASSERT_TRUE(this->negotiate(this->ring_features(*f)) & transport::status::kFeaturesOk);
    auto d = this->queue_driver(0, 16);
    ASSERT_TRUE(d);
    auto c = (*d)->config();
    ASSERT_TRUE(this->drv().setup_queue(0, 16, c.desc_addr & ~xen::grant_dma::kFlag, c.driver_addr, c.device_addr));
    ASSERT_TRUE(this->drv().enable_queue(0));
    EXPECT_TRUE(*this->drv().status() & transport::status::kNeedsReset);
    EXPECT_FALSE(*this->drv().queue_enabled(0));
    EXPECT_EQ(this->h_->guest->mapped_refs(), 0u);
    ASSERT_TRUE(this->drv().reset());
}

// virtio 1.2 §2.5.1: the generation does not change when config did not.
TYPED_TEST_P(VirtioConformance, ConfigGenerationStable) {
    auto g1 = this->drv().config_generation();
    ASSERT_TRUE(g1);
    auto g2 = this->drv().config_generation();
    ASSERT_TRUE(g2);
    EXPECT_EQ(*g1, *g2);
}

// virtio 1.2 §4.2.2 / §4.1.4.3: a queue beyond the device's reads size 0.
TYPED_TEST_P(VirtioConformance, MissingQueueIsNotAvailable) {
    auto n = this->drv().num_queues();
    ASSERT_TRUE(n);
    auto m = this->drv().queue_max(*n);
    ASSERT_TRUE(m);
    EXPECT_EQ(*m, 0);
}

// virtio 1.2 §3.1.1 step 7: enabling a queue before FEATURES_OK is illegal.
TYPED_TEST_P(VirtioConformance, QueueBeforeFeaturesOkNeedsReset) {
    ASSERT_TRUE(this->drv().reset());
    ASSERT_TRUE(this->drv().set_status(transport::status::kAcknowledge));
    auto d = this->queue_driver(0, 16);
    ASSERT_TRUE(d);
    auto c = (*d)->config();
    ASSERT_TRUE(this->drv().setup_queue(0, 16, c.desc_addr, c.driver_addr, c.device_addr));
    ASSERT_TRUE(this->drv().enable_queue(0));
    EXPECT_TRUE(*this->drv().status() & transport::status::kNeedsReset);
    ASSERT_TRUE(this->drv().reset());
}

// virtio 1.2 §6 / §2.8: the ring layout is a feature like any other: the
// packed variant finds RING_PACKED offered and gets FEATURES_OK with it;
// the split variant gets FEATURES_OK without it.
TYPED_TEST_P(VirtioConformance, RingLayoutIsNegotiated) {
    auto f = this->drv().device_features();
    ASSERT_TRUE(f);
    const std::uint64_t packed = transport::feature::bit(transport::feature::kRingPacked);
    if (this->kPacked) {
        EXPECT_TRUE(*f & packed) << "RING_PACKED not offered";
    }
    auto s = this->negotiate(this->ring_features(*f));
    EXPECT_TRUE(s & transport::status::kFeaturesOk) << "status " << int(s);
}

REGISTER_TYPED_TEST_SUITE_P(VirtioConformance, RingLayoutIsNegotiated, ResetReadsBackZero, OffersVersion1AndAccessPlatform,
                            RefusesUnofferedFeature, RefusesDriverWithoutVersion1OrAccessPlatform,
                            ActivatesWithAllQueues, IllegalStatusTransitionsNeedReset, NonGrantRingAddressNeedsReset,
                            ConfigGenerationStable, MissingQueueIsNotAvailable, QueueBeforeFeaturesOkNeedsReset);

}  // namespace xv::test
