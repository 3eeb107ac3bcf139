// SPDX-License-Identifier: GPL-2.0-only
// virtio-pci specifics: capability walk, BAR sizing, MSI-X programming and
// delivery, INTx + ISR read-to-clear, the PCI_CFG window, ECAM decode, the
// x86 PciConfig ioreq path, and the guest device-tree fragment.
#include <boost/asio/executor_work_guard.hpp>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>

#include <unistd.h>
#include <thread>

#include "bus_harness.h"
#include "echo_device.h"
#include "xv/transport/interrupt.h"

namespace xv::test {
namespace {

using namespace std::chrono_literals;
namespace st = transport::status;
namespace pl = transport::pci_layout;

class PciTest : public ::testing::Test {
protected:
    void SetUp() override {
        BusHarness::Options o;
        o.kind = TransportKind::Pci;
        auto h = BusHarness::create(o, [](xen::DomId d) { return std::make_shared<EchoDevice>(d); });
        ASSERT_TRUE(h) << h.error().describe();
        h_ = std::move(*h);
    }
    void TearDown() override {
        if (h_) h_->shutdown();
    }
    PciGuest& pg() { return static_cast<PciGuest&>(*h_->drv); }
    std::uint64_t bar() { return pg().caps.bar; }
    Result<std::uint64_t> bar_read(std::uint32_t off, unsigned size) { return h_->guest->mmio_read(0, bar() + off, size); }
    Result<void> bar_write(std::uint32_t off, unsigned size, std::uint64_t v) {
        return h_->guest->mmio_write(0, bar() + off, size, v);
    }
    /// Negotiates and sets queue 0 up, without DRIVER_OK.
    std::unique_ptr<VirtqueueDriver> negotiate_and_queue() {
        auto f = pg().device_features();
        EXPECT_TRUE(f);
        EXPECT_TRUE(pg().reset());
        EXPECT_TRUE(pg().set_status(st::kAcknowledge | st::kDriver));
        EXPECT_TRUE(pg().set_driver_features(*f & ~transport::feature::bit(transport::feature::kRingPacked) &
                                             ~transport::feature::bit(transport::feature::kEventIdx)));
        EXPECT_TRUE(pg().set_status(st::kAcknowledge | st::kDriver | st::kFeaturesOk));
        auto d = h_->driver(0, 16);
        EXPECT_TRUE(d);
        auto c = (*d)->config();
        EXPECT_TRUE(pg().setup_queue(0, 16, c.desc_addr, c.driver_addr, c.device_addr));
        return std::move(*d);
    }
    std::optional<UsedElem> wait_used(VirtqueueDriver& q) {
        auto deadline = std::chrono::steady_clock::now() + 5s;
        for (;;) {
            if (auto u = q.next_used()) return u;
            if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
            std::this_thread::sleep_for(100us);
        }
    }
    std::unique_ptr<BusHarness> h_;
};

// Identification and the capability list as Linux's virtio_pci_modern walks it.
TEST_F(PciTest, HeaderAndCapabilityWalk) {
    EXPECT_EQ(*pg().cfg_read(0x00, 2), pl::kVendorVirtio);
    EXPECT_EQ(*pg().cfg_read(0x02, 2), pl::kDeviceIdBase + 42u);
    EXPECT_EQ(*pg().cfg_read(0x08, 1), 1u);  // revision 1: modern only
    EXPECT_TRUE(*pg().cfg_read(0x06, 2) & 0x10);  // capability list
    EXPECT_GE(*pg().cfg_read(0x2e, 2), 0x40u);
    EXPECT_EQ(*pg().cfg_read(0x3d, 1), 1u);  // INTA
    auto& c = pg().caps;
    std::vector<std::pair<int, int>> got;
    for (auto& e : c.chain) got.emplace_back(e.id, e.cfg_type);
    std::vector<std::pair<int, int>> want = {{9, 1}, {9, 2}, {9, 3}, {9, 4}, {9, 5}, {0x11, 0}};
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ(got[i].first, want[i].first) << i;
        if (want[i].first == 9) {
            EXPECT_EQ(got[i].second, want[i].second) << i;
        }
    }
    EXPECT_EQ(c.vendor, 0) << "no vendor capability without nonblocking";
    EXPECT_EQ(c.common, pl::kCommonOff);
    EXPECT_EQ(c.notify_mult, pl::kNotifyMultiplier);
    EXPECT_EQ(c.device_len, 16u);
    EXPECT_EQ(*pg().num_queues(), 2);
}

// PCI BAR sizing: all ones reads back the size mask and the type bits.
TEST_F(PciTest, BarSizing) {
    auto& c = pg().caps;
    EXPECT_EQ(c.bar_flags, 0x4u);  // 64-bit, non-prefetchable memory
    EXPECT_EQ(c.bar_size, pl::kBar0Size);
    ASSERT_TRUE(pg().cfg_write(0x10, 4, 0xffffffff));
    EXPECT_EQ(*pg().cfg_read(0x10, 4), std::uint32_t(~(pl::kBar0Size - 1)) | 0x4u);
    ASSERT_TRUE(pg().cfg_write(0x10, 4, std::uint32_t(c.bar)));
    EXPECT_EQ(*pg().cfg_read(0x10, 4), std::uint32_t(c.bar) | 0x4u);
    // Unimplemented BARs and the ROM read 0 after all ones.
    ASSERT_TRUE(pg().cfg_write(0x18, 4, 0xffffffff));
    EXPECT_EQ(*pg().cfg_read(0x18, 4), 0u);
    ASSERT_TRUE(pg().cfg_write(0x30, 4, 0xffffffff));
    EXPECT_EQ(*pg().cfg_read(0x30, 4), 0u);
    // Memory decoding off: the BAR window no longer answers for it.
    ASSERT_TRUE(pg().cfg_write(0x04, 2, 0));
    EXPECT_EQ(*bar_read(pl::kCommonOff + 0x12, 2), 0xffffu);
    ASSERT_TRUE(pg().cfg_write(0x04, 2, 6));
    EXPECT_EQ(*bar_read(pl::kCommonOff + 0x12, 2), 2u);
}

// ECAM decode: absent slots, functions and buses read all ones.
TEST_F(PciTest, EcamDecode) {
    auto a = transport::PciHost::decode((3u << 20) | (7u << 15) | (5u << 12) | 0x44);
    EXPECT_EQ(a.bus, 3u);
    EXPECT_EQ(a.device, 7u);
    EXPECT_EQ(a.function, 5u);
    EXPECT_EQ(a.reg, 0x44u);
    const auto ecam = h_->host->config().ecam_base;
    EXPECT_EQ(*h_->guest->mmio_read(0, ecam + (5u << 15), 4), 0xffffffffu);               // empty slot
    EXPECT_EQ(*h_->guest->mmio_read(0, ecam + (1u << 12), 4), 0xffffffffu);               // function 1
    EXPECT_EQ(*h_->guest->mmio_read(0, ecam + 0x100, 4), 0u);                             // extended space
    EXPECT_EQ(*h_->guest->mmio_read(0, ecam + 0x2, 2), pl::kDeviceIdBase + 42u);
    ASSERT_TRUE(h_->guest->mmio_write(0, ecam + (5u << 15) + 0x4, 2, 0x6));  // ignored
}

// INTx: level raised while ISR is set, lowered by the read-to-clear ISR.
TEST_F(PciTest, IntxAndIsrReadToClear) {
    auto q = negotiate_and_queue();
    ASSERT_TRUE(pg().enable_queue(0));
    ASSERT_TRUE(pg().set_status(0x0f));
    auto seen = h_->irq_count();
    ASSERT_TRUE(q->chain().readable("intx").writable(8).submit());
    ASSERT_TRUE(pg().notify(0));
    ASSERT_GT(h_->wait_irq(seen), seen);
    ASSERT_TRUE(wait_used(*q));
    EXPECT_TRUE(h_->pci->intx_asserted());
    EXPECT_TRUE(*pg().cfg_read(0x06, 2) & 0x08);  // status: interrupt pending
    EXPECT_EQ(*pg().take_isr(), transport::isr::kQueue);
    EXPECT_FALSE(h_->pci->intx_asserted());
    EXPECT_EQ(*pg().take_isr(), 0);
    auto log = h_->guest->irq_log();
    ASSERT_FALSE(log.empty());
    EXPECT_EQ(log.back().irq, h_->spi);
    EXPECT_FALSE(log.back().level);
    // INTx disabled in the command register: no line.
    ASSERT_TRUE(pg().cfg_write(0x04, 2, 0x6 | 0x400));
    seen = h_->irq_count();
    ASSERT_TRUE(q->chain().readable("masked").writable(8).submit());
    ASSERT_TRUE(pg().notify(0));
    ASSERT_TRUE(wait_used(*q));
    EXPECT_FALSE(h_->pci->intx_asserted());
    EXPECT_EQ(h_->irq_count(), seen);
    // Re-enabling raises the line for the pending ISR bit.
    ASSERT_TRUE(pg().cfg_write(0x04, 2, 0x6));
    EXPECT_TRUE(h_->pci->intx_asserted());
    EXPECT_EQ(*pg().take_isr(), transport::isr::kQueue);
}

// MSI-X: vectors from the guest-programmed table, masking and PBA.
TEST_F(PciTest, MsixProgrammingAndDelivery) {
    auto& c = pg().caps;
    ASSERT_NE(c.msix, 0);
    const unsigned nvec = (*pg().cfg_read(c.msix + 2, 2) & 0x7ff) + 1;
    EXPECT_EQ(nvec, 3u);  // 2 queues + config
    EXPECT_EQ(*pg().cfg_read(c.msix + 4, 4), pl::kMsixTableOff);
    EXPECT_EQ(*pg().cfg_read(c.msix + 8, 4), pl::kMsixPbaOff);
    for (unsigned v = 0; v < nvec; ++v) {
        ASSERT_TRUE(bar_write(pl::kMsixTableOff + 16 * v + 0, 4, 0xfee00000 + (v << 12)));
        ASSERT_TRUE(bar_write(pl::kMsixTableOff + 16 * v + 4, 4, 0));
        ASSERT_TRUE(bar_write(pl::kMsixTableOff + 16 * v + 8, 4, 0x40 + v));
        ASSERT_TRUE(bar_write(pl::kMsixTableOff + 16 * v + 12, 4, 0));  // unmask
    }
    ASSERT_TRUE(pg().cfg_write(c.msix + 2, 2, 0x8000));  // enable
    auto q = negotiate_and_queue();
    // Vector numbers: config 0, queue 0 -> 1; out of range -> NO_VECTOR.
    ASSERT_TRUE(bar_write(c.common + 0x10, 2, 99));
    EXPECT_EQ(*bar_read(c.common + 0x10, 2), pl::kNoVector);
    ASSERT_TRUE(bar_write(c.common + 0x10, 2, 0));
    EXPECT_EQ(*bar_read(c.common + 0x10, 2), 0u);
    ASSERT_TRUE(bar_write(c.common + 0x16, 2, 0));
    ASSERT_TRUE(bar_write(c.common + 0x1a, 2, 1));
    EXPECT_EQ(*bar_read(c.common + 0x1a, 2), 1u);
    ASSERT_TRUE(pg().enable_queue(0));
    ASSERT_TRUE(pg().set_status(0x0f));

    auto seen = h_->guest->irq_count(xen::sim::kMsiIrq);
    ASSERT_TRUE(q->chain().readable("msi").writable(8).submit());
    ASSERT_TRUE(pg().notify(0));
    ASSERT_GT(h_->guest->wait_irq(xen::sim::kMsiIrq, seen, 5s), seen);
    auto log = h_->guest->irq_log();
    ASSERT_FALSE(log.empty());
    EXPECT_EQ(log.back().kind, xen::sim::IrqEvent::Msi);
    EXPECT_EQ(log.back().msi_addr, 0xfee01000u);
    EXPECT_EQ(log.back().msi_data, 0x41u);
    EXPECT_FALSE(h_->pci->intx_asserted()) << "no INTx while MSI-X is on";
    ASSERT_TRUE(wait_used(*q));

    // Masked vector: pending bit, no message; unmask delivers it.
    ASSERT_TRUE(bar_write(pl::kMsixTableOff + 16 * 1 + 12, 4, 1));
    seen = h_->guest->irq_count(xen::sim::kMsiIrq);
    ASSERT_TRUE(q->chain().readable("pending").writable(8).submit());
    ASSERT_TRUE(pg().notify(0));
    ASSERT_TRUE(wait_used(*q));
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(h_->guest->irq_count(xen::sim::kMsiIrq), seen);
    EXPECT_EQ(*bar_read(pl::kMsixPbaOff, 4) & 2u, 2u);
    ASSERT_TRUE(bar_write(pl::kMsixTableOff + 16 * 1 + 12, 4, 0));
    EXPECT_EQ(h_->guest->irq_count(xen::sim::kMsiIrq), seen + 1);
    EXPECT_EQ(*bar_read(pl::kMsixPbaOff, 4) & 2u, 0u);

    // Config change goes to vector 0.
    seen = h_->guest->irq_count(xen::sim::kMsiIrq);
    static_cast<EchoDevice&>(*h_->device).bump_config();
    EXPECT_EQ(h_->guest->irq_count(xen::sim::kMsiIrq), seen + 1);
    EXPECT_EQ(h_->guest->irq_log().back().msi_data, 0x40u);
}

// virtio 1.2 §4.1.4.9: the PCI_CFG capability is a window into the BAR.
TEST_F(PciTest, PciCfgWindow) {
    auto p = pg().caps.pci_cfg;
    ASSERT_NE(p, 0);
    ASSERT_TRUE(pg().cfg_write(p + 4, 1, 0));                      // bar 0
    ASSERT_TRUE(pg().cfg_write(p + 8, 4, pl::kCommonOff + 0x12));  // num_queues
    ASSERT_TRUE(pg().cfg_write(p + 12, 4, 2));                     // length 2
    EXPECT_EQ(*pg().cfg_read(p + 16, 4) & 0xffff, 2u);
    // A write through the window: device status.
    ASSERT_TRUE(pg().cfg_write(p + 8, 4, pl::kCommonOff + 0x14));
    ASSERT_TRUE(pg().cfg_write(p + 12, 4, 1));
    ASSERT_TRUE(pg().cfg_write(p + 16, 1, st::kAcknowledge));
    EXPECT_EQ(*pg().status(), st::kAcknowledge);
    // Bad length: nothing happens.
    ASSERT_TRUE(pg().cfg_write(p + 12, 4, 3));
    EXPECT_EQ(*pg().cfg_read(p + 16, 4), 0u);
}

// Common config: wrong-width and read-only writes are ignored.
TEST_F(PciTest, CommonConfigWidths) {
    auto& c = pg().caps;
    ASSERT_TRUE(bar_write(c.common + 0x12, 2, 7));  // num_queues is read-only
    EXPECT_EQ(*bar_read(c.common + 0x12, 2), 2u);
    ASSERT_TRUE(bar_write(c.common + 0x14, 4, st::kAcknowledge));  // status is 8-bit
    EXPECT_EQ(*bar_read(c.common + 0x14, 1), 0u);
    ASSERT_TRUE(bar_write(c.common + 0x14, 1, st::kAcknowledge));
    EXPECT_EQ(*bar_read(c.common + 0x14, 1), st::kAcknowledge);
    // queue_enable := 0 is ignored (the driver must not write it).
    EXPECT_EQ(*bar_read(c.common + 0x1e, 2), 0u);
    ASSERT_TRUE(bar_write(c.common + 0x16, 2, 1));
    EXPECT_EQ(*bar_read(c.common + 0x1e, 2), 1u);  // queue_notify_off = index
}

// x86: config accesses arrive as IOREQ_TYPE_PCI_CONFIG for a claimed SBDF;
// BAR0 is claimed wherever the guest programs it.
TEST(PciX86, PciConfigIoreqPath) {
    auto hv = xen::sim::SimHypervisor::create();
    xen::sim::DomainConfig dc;
    dc.name = "x86";
    auto domid = hv->create_domain(dc);
    ASSERT_TRUE(domid);
    auto guest = hv->guest(*domid);
    auto grants = std::move(*hv->open_grants());
    auto dm = std::move(*hv->open_device_model());
    boost::asio::io_context io;
    auto work = boost::asio::make_work_guard(io);
    transport::TransportEnv env;
    env.executor = io.get_executor();
    env.memory = std::make_shared<transport::GuestMemory>(*grants, *domid);
    xen::Sbdf sbdf{0, 0, 3, 0};
    transport::PciInterrupts irqs;
    irqs.intx = transport::make_pci_intx_line(*dm, *domid, sbdf, 0);
    irqs.msi = transport::make_msi_sink(*dm, *domid);
    auto fn = transport::PciTransport::create(std::make_shared<EchoDevice>(*domid), env, std::move(irqs));
    auto loop = transport::IoreqLoop::create(io.get_executor(), *dm, *domid);
    ASSERT_TRUE(loop);
    ASSERT_TRUE((*loop)->add_pci_function(sbdf, fn));
    (*loop)->start();
    std::thread t([&] { io.run(); });

    auto id = guest->pci_config_read(0, sbdf, 0, 4);
    ASSERT_TRUE(id) << id.error().describe();
    EXPECT_EQ(*id, (std::uint64_t(pl::kDeviceIdBase + 42) << 16) | pl::kVendorVirtio);
    // Not claimed: another SBDF.
    EXPECT_FALSE(guest->pci_config_read(0, xen::Sbdf{0, 0, 4, 0}, 0, 4));
    const std::uint64_t bar = 0xe0000000;
    ASSERT_TRUE(guest->pci_config_write(0, sbdf, 0x10, 4, bar));
    ASSERT_TRUE(guest->pci_config_write(0, sbdf, 0x04, 2, 0x6));
    EXPECT_EQ(*guest->mmio_read(0, bar + pl::kCommonOff + 0x12, 2), 2u);
    // Move the BAR: the old address is released, the new one served.
    ASSERT_TRUE(guest->pci_config_write(0, sbdf, 0x10, 4, bar + 0x10000));
    EXPECT_FALSE(guest->mmio_read(0, bar + pl::kCommonOff + 0x12, 2));
    EXPECT_EQ(*guest->mmio_read(0, bar + 0x10000 + pl::kCommonOff + 0x12, 2), 2u);
    // INTx through set_pci_intx_level.
    ASSERT_TRUE(guest->mmio_write(0, bar + 0x10000 + pl::kCommonOff + 0x14, 1, st::kAcknowledge));

    std::promise<void> stopped;
    (*loop)->stop([&] { stopped.set_value(); });
    EXPECT_EQ(stopped.get_future().wait_for(10s), std::future_status::ready);
    EXPECT_EQ(hv->resources().ioreq_servers, 0u);
    work.reset();
    t.join();
}

// The guest DT fragment: addresses, interrupt-map, iommu-map, grant-dma node.
TEST(PciHostDt, FragmentTextAndDtc) {
    transport::PciHostConfig cfg;
    cfg.backend_domid = 7;
    ASSERT_TRUE(transport::validate(cfg));
    auto dts = transport::render_dt_fragment(cfg);
    for (const char* want : {"compatible = \"pci-host-ecam-generic\";", "device_type = \"pci\";",
                             "reg = <0x0 0x33000000 0x0 0x100000>;",
                             "ranges = <0x02000000 0x0 0x34000000 0x0 0x34000000 0x0 0x2000000>;",
                             "iommu-map = <0x0 &xen_grant_dma 7 0x10000>;", "iommu-map-mask = <0x0>;",
                             "compatible = \"xen,grant-dma\";", "#iommu-cells = <1>;",
                             "interrupt-map-mask = <0x1800 0x0 0x0 0x7>;", "bus-range = <0x0 0x0>;"})
        EXPECT_NE(dts.find(want), std::string::npos) << want << "\n" << dts;
    // Slot 1, INTB swizzles to the third SPI: 44 + (1 + 2 - 1) % 4 = 46 -> cell 14.
    EXPECT_NE(dts.find("<0x800 0x0 0x0 0x2 65000 0x0 0xe 0x4>"), std::string::npos) << dts;
    auto host = transport::PciHost::create(cfg);
    ASSERT_TRUE(host);
    EXPECT_EQ((*host)->intx_spi(1, 2), 46u);
    EXPECT_EQ((*host)->intx_spi(0, 1), 44u);
    EXPECT_EQ((*host)->intx_spi(5, 4), 44u);

    if (std::system("command -v dtc >/dev/null 2>&1") != 0) {
        GTEST_SKIP() << "dtc not installed: text checked, compilation skipped";
    }
    char dir[] = "/tmp/xv-dtXXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    std::string src = std::string(dir) + "/pci.dts", out = std::string(dir) + "/pci.dtb";
    std::ofstream(src) << dts;
    std::string cmd = "dtc -q -I dts -O dtb -o " + out + " " + src;
    EXPECT_EQ(std::system(cmd.c_str()), 0) << dts;
    std::remove(src.c_str());
    std::remove(out.c_str());
    ::rmdir(dir);
}

// validate(): windows that collide with Xen's guest map or each other.
TEST(PciHostDt, RejectsCollidingPlacement) {
    transport::PciHostConfig c;
    c.ecam_base = 0x02000000;  // GUEST_VIRTIO_MMIO
    EXPECT_FALSE(transport::validate(c));
    c = {};
    c.mmio_base = 0x38000000;  // GUEST_GNTTAB
    EXPECT_FALSE(transport::validate(c));
    c = {};
    c.mmio_base = 0x33000000;  // on the ECAM window
    EXPECT_FALSE(transport::validate(c));
    c = {};
    c.intx_spi_base = 40;  // virtio-mmio SPIs
    EXPECT_FALSE(transport::validate(c));
    c = {};
    c.mmio_base = 0x100000000ULL;  // not 32-bit
    EXPECT_FALSE(transport::validate(c));
    EXPECT_TRUE(transport::validate(transport::PciHostConfig{}));
}

}  // namespace
}  // namespace xv::test
