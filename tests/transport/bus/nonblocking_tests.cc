// SPDX-License-Identifier: GPL-2.0-only
// The two non-blocking registers (docs/nonblocking.md) on virtio-mmio and
// virtio-pci: protocol, BUSY, ERROR_RETRY, malformed accesses, a frontend
// that uses only the two registers, and ioreq turnaround while the
// device's queue work is stalled for seconds.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "bus_harness.h"
#include "echo_device.h"
#include "xv/transport/nonblocking.h"

namespace xv::test {
namespace {

using namespace std::chrono_literals;
namespace st = transport::status;
namespace nb = transport::nonblocking;

template <TransportKind K>
struct Kind {
    static constexpr TransportKind kind = K;
};
using NbKinds = ::testing::Types<Kind<TransportKind::MmioNb>, Kind<TransportKind::PciNb>>;
using AllKinds = ::testing::Types<Kind<TransportKind::Mmio>, Kind<TransportKind::MmioNb>, Kind<TransportKind::Pci>,
                                  Kind<TransportKind::PciNb>>;
struct Names {
    template <class T>
    static std::string GetName(int) {
        std::string n = kind_name(T::kind);
        for (auto& c : n)
            if (c == '-') c = '_';
        return n;
    }
};

template <class T>
class Nb : public ::testing::Test {
protected:
    void SetUp() override {
        BusHarness::Options o;
        o.kind = T::kind;
        auto h = BusHarness::create(o, [](xen::DomId d) { return std::make_shared<EchoDevice>(d); });
        ASSERT_TRUE(h) << h.error().describe();
        h_ = std::move(*h);
        nbio_ = dynamic_cast<NbRegisterIo*>(&h_->drv->regs());
    }
    void TearDown() override {
        if (h_) h_->shutdown();
    }
    EchoDevice& echo() { return static_cast<EchoDevice&>(*h_->device); }
    /// Offsets of registers in the register file the two registers address.
    std::uint32_t status_off() const { return is_pci(T::kind) ? pci_caps().common + 0x14 : 0x070; }
    unsigned status_size() const { return is_pci(T::kind) ? 1 : 4; }
    std::uint32_t readonly_off() const { return is_pci(T::kind) ? pci_caps().common + 0x12 : 0x000; }
    const PciCaps& pci_caps() const { return static_cast<PciGuest&>(*h_->drv).caps; }
    std::uint32_t raw_access() { return std::uint32_t(*h_->guest->mmio_read(1, nbio_->access_addr(), 4)); }
    std::vector<std::unique_ptr<VirtqueueDriver>> up() {
        std::vector<std::unique_ptr<VirtqueueDriver>> qs;
        for (std::uint16_t q = 0; q < 2; ++q) qs.push_back(std::move(*h_->driver(q, 16)));
        auto f = h_->drv->bring_up(~0ULL & ~transport::feature::bit(transport::feature::kRingPacked),
                                   {qs[0].get(), qs[1].get()});
        EXPECT_TRUE(f) << (f ? "" : f.error().describe());
        return qs;
    }
    std::unique_ptr<BusHarness> h_;
    NbRegisterIo* nbio_ = nullptr;
};
TYPED_TEST_SUITE(Nb, NbKinds, Names);

// Discovery: "vmnb" magic on mmio, the Xen vendor capability on pci.
TYPED_TEST(Nb, Discovery) {
    ASSERT_NE(this->nbio_, nullptr);
    if (is_pci(TypeParam::kind)) {
        auto& c = this->pci_caps();
        EXPECT_NE(c.vendor, 0);
        EXPECT_EQ(c.nb_bar, 0);
        EXPECT_EQ(c.nb_version, nb::kPciCapVersion);
        EXPECT_EQ(c.nb_offset, transport::pci_layout::kNbOff);
    } else {
        EXPECT_EQ(*this->h_->guest->mmio_read(0, BusHarness::kMmioBase, 4), nb::kMagic);
    }
}

// The protocol: write ACCESS_DATA, write ACCESS, poll BUSY, read ACCESS_DATA.
TYPED_TEST(Nb, IndirectReadAndWrite) {
    auto& io = *this->nbio_;
    ASSERT_TRUE(io.write(this->status_off(), this->status_size(), st::kAcknowledge));
    auto s = io.read(this->status_off(), this->status_size());
    ASSERT_TRUE(s);
    EXPECT_EQ(*s, st::kAcknowledge);
    // ACCESS echoes the last command and shows neither BUSY nor an error.
    auto a = this->raw_access();
    EXPECT_EQ(a & nb::kBusy, 0u);
    EXPECT_EQ(a & (nb::kErrorRetry | nb::kErrorInvalid), 0u);
    EXPECT_EQ(a & nb::kOffsetMask, this->status_off());
    EXPECT_EQ(*this->h_->drv->config_read(12, 4), 0x5a5aa5a5u);
    EXPECT_EQ(*this->h_->drv->config_read(13, 1), 0xa5u);
}

// One access in flight: a second ACCESS write while BUSY sets ERROR_RETRY
// and changes nothing; the ioreqs themselves complete at once.
TYPED_TEST(Nb, SecondAccessWhileBusyGetsErrorRetry) {
    auto qs = this->up();
    this->echo().delay_reset(400ms);
    auto& io = *this->nbio_;
    const auto resets0 = this->echo().resets();
    this->h_->guest->reset_turnaround();
    ASSERT_TRUE(io.start(nb::command(true, this->status_size(), this->status_off()), 0));  // reset
    auto a = this->raw_access();
    EXPECT_TRUE(a & nb::kBusy) << std::hex << a;
    // A second access while BUSY.
    ASSERT_TRUE(this->h_->guest->mmio_write(1, io.access_addr(), 4, nb::command(false, 4, 0x0)));
    a = this->raw_access();
    EXPECT_TRUE(a & nb::kBusy);
    EXPECT_TRUE(a & nb::kErrorRetry);
    EXPECT_EQ(a & nb::kWrite, nb::kWrite) << "the in-flight command must be unchanged";
    // ACCESS_DATA is frozen while BUSY too.
    ASSERT_TRUE(this->h_->guest->mmio_write(1, io.access_addr() + 4, 4, 0x1234));
    EXPECT_NE(*this->h_->guest->mmio_read(1, io.access_addr() + 4, 4), 0x1234u);
    auto t = this->h_->guest->turnaround();
    EXPECT_LT(t.max_us, 100000.0) << "an ioreq waited for the reset";
    auto fin = io.wait_idle();
    ASSERT_TRUE(fin);
    EXPECT_EQ(*fin & nb::kBusy, 0u);
    // The reset completed: status reads 0.
    EXPECT_EQ(*io.read(this->status_off(), this->status_size()), 0u);
    EXPECT_EQ(this->echo().resets(), resets0 + 1);
}

// Malformed indirect accesses: ERROR_RETRY|ERROR_INVALID, not executed, never BUSY.
TYPED_TEST(Nb, MalformedAccesses) {
    auto& io = *this->nbio_;
    const std::uint32_t bad[] = {
        nb::command(false, 4, 0) | (3u << nb::kSizeShift),  // size field 3
        nb::command(false, 4, 0x1fffc),                     // outside the register file
        nb::command(true, 4, this->readonly_off()),         // write to a read-only register
        nb::command(false, 4, this->status_off() + 1),      // misaligned
        nb::command(false, 4, is_pci(TypeParam::kind) ? transport::pci_layout::kNbOff : nb::kMmioAccess),
        nb::command(false, 4, 0) | (1u << 20),              // reserved bits
    };
    for (auto cmd : bad) {
        ASSERT_TRUE(io.start(cmd, 0xdeadbeef));
        auto a = this->raw_access();
        EXPECT_EQ(a & nb::kBusy, 0u) << std::hex << cmd;
        EXPECT_TRUE(a & nb::kErrorRetry) << std::hex << cmd;
        EXPECT_TRUE(a & nb::kErrorInvalid) << std::hex << cmd;
    }
    if (!is_pci(TypeParam::kind)) {
        // A 16-bit access to a 32-bit control register is malformed on mmio.
        ASSERT_TRUE(io.start(nb::command(false, 2, 0x070), 0));
        EXPECT_TRUE(this->raw_access() & nb::kErrorInvalid);
    }
    // Nothing was executed and a good access works afterwards.
    EXPECT_EQ(*io.read(this->status_off(), this->status_size()), 0u);
    EXPECT_EQ(this->raw_access() & (nb::kErrorRetry | nb::kErrorInvalid), 0u);
}

// A frontend that uses only ACCESS/ACCESS_DATA brings the device up, does
// I/O and resets it with requests in flight.
TYPED_TEST(Nb, FrontendUsingOnlyTheTwoRegisters) {
    this->h_->guest->reset_turnaround();
    const auto traps0 = this->nbio_->traps();
    auto qs = this->up();
    auto req = qs[0]->chain().readable("only two registers").writable(32).submit();
    ASSERT_TRUE(req);
    auto seen = this->h_->irq_count();
    ASSERT_TRUE(this->h_->drv->notify(0));
    EXPECT_GT(this->h_->wait_irq(seen), seen);
    auto u = qs[0]->next_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->len, 18u);
    // Requests in flight, then reset.
    this->echo().hold(true);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(qs[1]->chain().readable("x").writable(4).submit());
    ASSERT_TRUE(this->h_->drv->notify(1));
    ASSERT_EQ(this->echo().held(), 3u) << "BUSY clears only after queue_notify ran";
    ASSERT_TRUE(this->h_->drv->reset());
    EXPECT_EQ(this->echo().dropped(), 3u);
    EXPECT_EQ(this->h_->guest->mapped_refs(), 0u);
    // Every trap of this frontend was on ACCESS or ACCESS_DATA.
    auto t = this->h_->guest->turnaround();
    EXPECT_EQ(t.count, this->nbio_->traps() - traps0);
    EXPECT_LT(t.max_us, 100000.0);
}

/// Every register of the transport, for a vCPU that hammers them.
std::vector<std::pair<std::uint64_t, unsigned>> all_registers(BusHarness& h) {
    std::vector<std::pair<std::uint64_t, unsigned>> regs;
    if (is_pci(h.opts.kind)) {
        auto& c = static_cast<PciGuest&>(*h.drv).caps;
        const std::pair<std::uint32_t, unsigned> common[] = {{0x00, 4}, {0x04, 4}, {0x08, 4}, {0x0c, 4}, {0x10, 2},
                                                             {0x12, 2}, {0x14, 1}, {0x15, 1}, {0x16, 2}, {0x18, 2},
                                                             {0x1a, 2}, {0x1c, 2}, {0x1e, 2}, {0x20, 4}, {0x28, 4},
                                                             {0x30, 4}};
        for (auto [o, s] : common) regs.emplace_back(c.bar + c.common + o, s);
        regs.emplace_back(c.bar + c.device, 4);
        regs.emplace_back(c.bar + transport::pci_layout::kMsixTableOff, 4);
        if (c.vendor) {
            regs.emplace_back(c.bar + c.nb_offset, 4);
            regs.emplace_back(c.bar + c.nb_offset + 4, 4);
        }
        regs.emplace_back(h.host->config().ecam_base + 0x00, 4);  // config space via ECAM
        regs.emplace_back(h.host->config().ecam_base + 0x04, 2);
    } else {
        for (std::uint32_t o = 0; o <= 0xfc; o += 4)
            if (o != 0x060) regs.emplace_back(BusHarness::kMmioBase + o, 4);  // all but the ISR (ack races)
        regs.emplace_back(BusHarness::kMmioBase + 0x100, 4);
    }
    return regs;
}

template <class T>
class Stall : public Nb<T> {};
TYPED_TEST_SUITE(Stall, AllKinds, Names);

// The device's queue work is stuck for 2.5 s (its strand sleeps) while
// another vCPU traps on every register: each ioreq completes, and the
// worst turnaround stays far below the stall.
TYPED_TEST(Stall, RegistersStayResponsiveWhileQueueWorkIsStalled) {
    auto qs = this->up();
    constexpr auto kStall = 2500ms;
    this->echo().block_next_notify(kStall);
    auto req = qs[0]->chain().readable("stalled").writable(16).submit();
    ASSERT_TRUE(req);
    this->h_->guest->reset_turnaround();
    auto t0 = std::chrono::steady_clock::now();
    // vCPU 0 kicks the queue (through whatever its transport uses: with the
    // non-blocking registers the kick returns at once and BUSY stays set).
    std::thread kicker([&] {
        if (is_nonblocking(TypeParam::kind)) {
            // Start the notify without waiting for it.
            if (is_pci(TypeParam::kind)) {
                auto& c = this->pci_caps();
                ASSERT_TRUE(this->nbio_->start(nb::command(true, 2, c.notify + 0 * c.notify_mult), 0));
            } else {
                ASSERT_TRUE(this->nbio_->start(nb::command(true, 4, 0x050), 0));
            }
        } else {
            ASSERT_TRUE(this->h_->drv->notify(0));
        }
    });
    kicker.join();
    auto regs = all_registers(*this->h_);
    std::uint64_t n = 0, failed = 0;
    while (std::chrono::steady_clock::now() - t0 < kStall) {
        for (auto [addr, size] : regs) {
            auto v = this->h_->guest->mmio_read(1, addr, size);
            ++n;
            if (!v) ++failed;
        }
    }
    auto t = this->h_->guest->turnaround();
    std::printf("[ stall %s ] %llu ioreqs during a %lld ms stall: p50 %.1f us, p99 %.1f us, p99.9 %.1f us, max %.1f us\n",
                kind_name(TypeParam::kind), static_cast<unsigned long long>(t.count),
                static_cast<long long>(kStall.count()), t.p50_us, t.p99_us, t.p999_us, t.max_us);
    EXPECT_EQ(failed, 0u);
    EXPECT_GT(n, 100u);
    EXPECT_GE(t.count, n);
    // Far below the stall: a tenth of it even under sanitizers.
    EXPECT_LT(t.max_us, 250000.0);
    // The request completes once the stall is over.
    auto deadline = std::chrono::steady_clock::now() + 10s;
    std::optional<UsedElem> u;
    while (!(u = qs[0]->next_used()) && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
    ASSERT_TRUE(u);
    EXPECT_EQ(u->len, 7u);
    if (is_nonblocking(TypeParam::kind)) {
        EXPECT_TRUE(this->nbio_->wait_idle());
    }
}

}  // namespace
}  // namespace xv::test
