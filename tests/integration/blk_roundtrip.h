// SPDX-License-Identifier: GPL-2.0-only
// A virtio-blk write + read-back through the guest-side drivers, with
// GoogleTest assertions (daemon end-to-end tests).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <span>
#include <vector>

#include "xv/devices/blk.h"
#include "xv/guest/transport_driver.h"
#include "xv/guest/virtqueue_driver.h"
#include "xv/transport/device.h"
#include "xv/xen/sim.h"

namespace xv::daemon::testing {

/// Writes `data` at `sector` then reads it back through the guest driver.
inline void blk_roundtrip(xen::sim::SimGuest& g, std::uint64_t base, std::uint32_t spi, std::uint64_t sector,
                          std::vector<std::byte> data, xen::DomId backend = 0) {
    auto t = guest::make_mmio_guest(g, base, false, 0);
    ASSERT_TRUE(t.has_value()) << t.error().describe();
    guest::DriverOptions o;
    o.size = 16;
    o.backend = backend;
    auto q = guest::VirtqueueDriver::create(g, o);
    ASSERT_TRUE(q.has_value());
    namespace feat = transport::feature;
    auto f = t.value()->bring_up(feat::bit(feat::kVersion1) | feat::bit(feat::kAccessPlatform), {q.value().get()});
    ASSERT_TRUE(f.has_value()) << f.error().describe();
    auto wait = [&]() -> std::optional<guest::UsedElem> {
        std::uint64_t seen = g.irq_count(spi);
        for (int i = 0; i < 250; ++i) {
            if (auto u = q.value()->next_used()) return u;
            seen = g.wait_irq(spi, seen, std::chrono::milliseconds(20));
            (void)t.value()->take_isr();
        }
        return std::nullopt;
    };
    devices::blk::OutHdr w{devices::blk::req::kOut, 0, sector};
    auto sw = q.value()->chain().readable(std::as_bytes(std::span(&w, 1))).readable(std::span<const std::byte>(data)).writable(1).submit();
    ASSERT_TRUE(sw.has_value());
    ASSERT_TRUE(t.value()->notify(0).has_value());
    ASSERT_TRUE(wait().has_value());
    EXPECT_EQ(sw.value().buf(2).bytes()[0], std::byte{0});
    devices::blk::OutHdr r{devices::blk::req::kIn, 0, sector};
    auto sr = q.value()->chain().readable(std::as_bytes(std::span(&r, 1))).writable(std::uint32_t(data.size())).writable(1).submit();
    ASSERT_TRUE(sr.has_value());
    ASSERT_TRUE(t.value()->notify(0).has_value());
    ASSERT_TRUE(wait().has_value());
    EXPECT_EQ(sr.value().buf(2).bytes()[0], std::byte{0});
    EXPECT_TRUE(std::equal(data.begin(), data.end(), sr.value().buf(1).bytes().begin()));
}

}  // namespace xv::daemon::testing
