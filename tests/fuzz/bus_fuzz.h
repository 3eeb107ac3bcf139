// SPDX-License-Identifier: GPL-2.0-only
// The register-file fuzz harness shared by fuzz_mmio and fuzz_pci: the real
// ioreq loop (IoreqLoop::handle, as serve_pending calls it), virtio-mmio or
// the ECAM host + virtio-pci function (config space, BAR0 with common /
// notify / ISR / device / MSI-X / non-blocking regions, and the x86
// IOREQ_TYPE_PCI_CONFIG path), VirtioCore, an echo device and its queues
// over simulated grants. Single-threaded: the asynchronous work behind a
// register (queue setup, activation, reset, indirect accesses) runs when
// the input says so (io_context::poll), so accesses also land while work
// is pending (BUSY, Resetting, Activating).
//
// The input is a list of steps: a register access chosen among the real
// registers with plausible values (ring addresses of granted rings, feature
// words the device offers, status steps, ACCESS commands), a raw access
// (any offset, size, value, malformed ioreqs), or a whole driver bring-up
// (reset, ACK, DRIVER, features, FEATURES_OK, queues, DRIVER_OK) done with
// plain registers or through ACCESS/ACCESS_DATA.
//
// Oracles: no crash, leak or UB; a correct bring-up on a fresh device ends
// with status ACK|DRIVER|FEATURES_OK|DRIVER_OK; the loop stops (every
// device quiesces) and leaves no grant page mapped and no ioreq server.
#pragma once

#include <boost/asio/io_context.hpp>

#include <memory>
#include <vector>

#include "echo_device.h"
#include "fuzz_common.h"
#include "sim_world.h"
#include "xv/guest/virtqueue_driver.h"
#include "xv/transport/interrupt.h"
#include "xv/transport/ioreq_loop.h"
#include "xv/transport/mmio.h"
#include "xv/transport/nonblocking.h"
#include "xv/transport/pci.h"
#include "xv/transport/pci_host.h"
#include "xv/transport/virtio_core.h"
#include "xv/xen/sim.h"

namespace xv::fuzz::bus {

namespace nb = transport::nonblocking;
namespace mr = transport::mmio_reg;
namespace pl = transport::pci_layout;
using transport::feature::bit;

inline constexpr std::uint64_t kMmioBase = 0x02000000;
inline constexpr std::uint16_t kQueues = 2;
inline constexpr std::uint16_t kRingSize = 16;
inline constexpr xen::Sbdf kX86Sbdf{0, 0, 3, 0};

/// One simulated guest with granted rings (split and packed, per queue),
/// shared by every iteration.
struct World : SimWorld {
    std::unique_ptr<xen::DeviceModel> dm;
    std::vector<std::unique_ptr<guest::VirtqueueDriver>> split, packed;

    World() {
        dm = std::move(hv->open_device_model().value());
        for (std::uint16_t q = 0; q < kQueues; ++q) {
            for (bool pk : {false, true}) {
                guest::DriverOptions o;
                o.index = q;
                o.size = kRingSize;
                o.packed = pk;
                (pk ? packed : split).push_back(std::move(guest::VirtqueueDriver::create(*guest, o).value()));
            }
        }
    }

    static World& get() {
        static World* w = new World;
        return *w;
    }

    /// Runs ready work, at most 64 rounds.
    void poll() { SimWorld::poll(64); }
};

/// One iteration: a fresh device on a fresh transport and loop.
class Session {
public:
    Session(FuzzedDataProvider& in, bool pci) : in_(in), w_(World::get()), pci_(pci) {}

    void run() {
        setup();
        unsigned steps = in_.ConsumeIntegralInRange(1, 96);
        for (unsigned i = 0; i < steps && in_.remaining_bytes() > 0; ++i) step(i == 0);
        teardown();
    }

private:
    // --- setup / teardown ------------------------------------------------------
    void setup() {
        nbk_ = in_.ConsumeBool();
        x86_ = pci_ && one_in(in_, 3);
        dev_ = std::make_shared<test::EchoDevice>(w_.domid, kQueues);
        transport::TransportEnv env;
        env.executor = w_.io.get_executor();
        env.memory = w_.mem;
        if (one_in(in_, 8)) env.require_access_platform = false;
        loop_ = std::move(transport::IoreqLoop::create(w_.io.get_executor(), *w_.dm, w_.domid).value());
        if (!pci_) {
            transport::MmioOptions mo;
            mo.nonblocking = nbk_;
            mmio_ = transport::MmioTransport::create(dev_, env, transport::make_spi_line(*w_.dm, w_.domid, 33), mo);
            FUZZ_CHECK(loop_->add_region(kMmioBase, mmio_, "fuzz mmio").has_value(), "add_region");
        } else {
            transport::PciOptions po;
            po.nonblocking = nbk_;
            po.msix_vectors = pick<std::uint16_t>(in_, {0, 0, 1, 3, 64});
            transport::PciInterrupts irqs;
            if (x86_) {
                irqs.intx = transport::make_pci_intx_line(*w_.dm, w_.domid, kX86Sbdf, 0);
                irqs.msi = transport::make_msi_sink(*w_.dm, w_.domid);
                fn_ = transport::PciTransport::create(dev_, env, std::move(irqs), po);
                FUZZ_CHECK(loop_->add_pci_function(kX86Sbdf, fn_).has_value(), "add_pci_function");
            } else {
                host_ = std::move(transport::PciHost::create({}).value());
                fn_ = std::move(host_->add_device(dev_, env, *w_.dm, w_.domid, po).value());
                irqs.intx = transport::make_spi_line(*w_.dm, w_.domid, host_->intx_spi(0, 1));
                irqs.msi = transport::make_msi_sink(*w_.dm, w_.domid);
                fn_->set_interrupts(std::move(irqs));
                FUZZ_CHECK(loop_->add_pci_host(host_).has_value(), "add_pci_host");
            }
        }
        loop_->start();
    }

    void teardown() {
        bool done = false;
        loop_->stop([&done] { done = true; });
        FUZZ_CHECK(run_until(w_, done, 2000), "the ioreq loop did not stop (a device never finished its reset)");
        w_.poll();
        loop_.reset();
        mmio_.reset();
        fn_.reset();
        host_.reset();
        dev_.reset();
        w_.poll();
        FUZZ_CHECK(w_.grants->pages_in_use() == 0, "%llu grant pages still mapped after the loop stopped",
                   static_cast<unsigned long long>(w_.grants->pages_in_use()));
        FUZZ_CHECK(w_.hv->resources().ioreq_servers == 0, "ioreq server left behind");
    }

    // --- raw ioreqs ----------------------------------------------------------------
    std::uint64_t ioreq(xen::IoreqType type, std::uint64_t addr, unsigned size, bool write, std::uint64_t value) {
        xen::IoRequest r;
        r.vcpu = in_.ConsumeIntegralInRange(0u, 1u);
        r.type = type;
        r.is_write = write;
        r.addr = addr;
        r.size = size;
        r.data = value;
        return loop_->handle(r);
    }
    std::uint64_t mmio(std::uint64_t addr, unsigned size, bool write, std::uint64_t value = 0) {
        return ioreq(xen::IoreqType::Copy, addr, size, write, value);
    }

    /// Config space of the function (ECAM on Arm, PCI_CONFIG ioreqs on x86).
    std::uint64_t cfg(std::uint32_t reg, unsigned size, bool write, std::uint32_t value = 0) {
        if (x86_) {
            const std::uint64_t code = (std::uint64_t(kX86Sbdf.bus) << 8) | (std::uint64_t(kX86Sbdf.device) << 3) |
                                       kX86Sbdf.function;
            return ioreq(xen::IoreqType::PciConfig, (code << 32) | reg, size, write, value);
        }
        return mmio(host_->config().ecam_base + reg, size, write, value);
    }

    std::uint64_t bar_base() const { return x86_ ? 0xe0000000ULL : host_->config().mmio_base; }

    // --- plausible values --------------------------------------------------------
    std::uint64_t ring_addr(std::uint16_t q, int area, bool packed) {
        auto& d = packed ? *w_.packed[q % kQueues] : *w_.split[q % kQueues];
        auto c = d.config();
        return area == 0 ? c.desc_addr : area == 1 ? c.driver_addr : c.device_addr;
    }

    std::uint32_t feature_word(std::uint32_t sel, std::uint64_t offered) {
        std::uint64_t want = offered;
        if (in_.ConsumeBool()) want &= ~bit(transport::feature::kRingPacked);
        if (in_.ConsumeBool()) want &= ~bit(transport::feature::kEventIdx);
        if (in_.ConsumeBool()) want &= ~bit(transport::feature::kIndirectDesc);
        if (one_in(in_, 16)) want = in_.ConsumeIntegral<std::uint64_t>();
        return sel == 0 ? std::uint32_t(want) : sel == 1 ? std::uint32_t(want >> 32) : 0;
    }

    std::uint32_t value(std::uint32_t reg_kind) {
        if (one_in(in_, 10)) return in_.ConsumeIntegral<std::uint32_t>();
        switch (reg_kind) {
            case 0: return pick<std::uint32_t>(in_, {0, 1, 3, 11, 15, 0x4f, 0x80, 7, 4, 8});  // status
            case 1: return in_.ConsumeIntegralInRange<std::uint32_t>(0, 3);                     // selectors
            case 2: return pick<std::uint32_t>(in_, {16, 8, 1, 64, 128, 0, 3, 0x8000});         // queue size
            case 3: {                                                                           // ring address word
                std::uint64_t a = ring_addr(std::uint16_t(in_.ConsumeIntegralInRange(0, 1)),
                                            in_.ConsumeIntegralInRange(0, 2), in_.ConsumeBool());
                return in_.ConsumeBool() ? std::uint32_t(a) : std::uint32_t(a >> 32);
            }
            case 4: return pick<std::uint32_t>(in_, {0xffffffff, 0x30000000, 0x1, 0x0, 0x3});  // feature words
            default: return in_.ConsumeIntegralInRange<std::uint32_t>(0, 2);                    // queue index, flags
        }
    }

    // --- register writes as a driver does them (plain or indirect) -----------------
    /// Writes a virtio register: plain, or with ACCESS_DATA + ACCESS.
    void reg_write(std::uint32_t off, unsigned size, std::uint32_t v, bool indirect) {
        if (indirect && nbk_) {
            (void)nb_write(nb_data(), 4, v);
            (void)nb_write(nb_access(), 4, nb::command(true, size, off));
            wait_idle();
            return;
        }
        if (pci_) (void)mmio(bar_base() + off, size, true, v);
        else (void)mmio(kMmioBase + off, size, true, v);
    }
    std::uint32_t reg_read(std::uint32_t off, unsigned size, bool indirect) {
        if (indirect && nbk_) {
            (void)nb_write(nb_access(), 4, nb::command(false, size, off));
            wait_idle();
            return std::uint32_t(nb_read(nb_data()));
        }
        return std::uint32_t(mmio((pci_ ? bar_base() : kMmioBase) + off, size, false));
    }
    std::uint64_t nb_access() const { return pci_ ? bar_base() + pl::kNbOff : kMmioBase + nb::kMmioAccess; }
    std::uint64_t nb_data() const { return pci_ ? bar_base() + pl::kNbOff + 4 : kMmioBase + nb::kMmioAccessData; }
    std::uint64_t nb_write(std::uint64_t addr, unsigned size, std::uint32_t v) { return mmio(addr, size, true, v); }
    std::uint64_t nb_read(std::uint64_t addr) { return mmio(addr, 4, false); }
    void wait_idle() {
        for (int i = 0; i < 8; ++i) {
            w_.poll();
            if (!(nb_read(nb_access()) & nb::kBusy)) return;
        }
    }

    /// Programs BAR0 and turns memory decoding on (pci).
    void enable_bar() {
        cfg(0x10, 4, true, std::uint32_t(bar_base()));
        cfg(0x04, 2, true, 0x6);  // memory space + bus master
    }

    // --- a whole bring-up -------------------------------------------------------------
    void bring_up(bool fresh) {
        const bool indirect = nbk_ && in_.ConsumeBool();
        const bool packed = in_.ConsumeBool();
        if (pci_) enable_bar();
        // Offsets per transport (virtio 1.2 §4.2.2 mmio, §4.1.4.3 pci common cfg).
        const std::uint32_t status = pci_ ? 0x14 : mr::kStatus;
        const unsigned status_size = pci_ ? 1 : 4;
        reg_write(status, status_size, 0, indirect);
        w_.poll();
        reg_write(status, status_size, 1, indirect);
        reg_write(status, status_size, 3, indirect);
        std::uint64_t offered = 0;
        for (std::uint32_t sel = 0; sel < 2; ++sel) {
            reg_write(pci_ ? 0x00 : mr::kDeviceFeaturesSel, 4, sel, indirect);
            offered |= std::uint64_t(reg_read(pci_ ? 0x04 : mr::kDeviceFeatures, 4, indirect)) << (32 * sel);
        }
        std::uint64_t want = offered;
        if (!packed) want &= ~bit(transport::feature::kRingPacked);
        if (in_.ConsumeBool()) want &= ~bit(transport::feature::kEventIdx);
        const bool hostile = one_in(in_, 8);
        if (hostile) want = in_.ConsumeIntegral<std::uint64_t>();
        for (std::uint32_t sel = 0; sel < 2; ++sel) {
            reg_write(pci_ ? 0x08 : mr::kDriverFeaturesSel, 4, sel, indirect);
            reg_write(pci_ ? 0x0c : mr::kDriverFeatures, 4, std::uint32_t(want >> (32 * sel)), indirect);
        }
        reg_write(status, status_size, 11, indirect);
        w_.poll();
        for (std::uint16_t q = 0; q < kQueues; ++q) {
            const bool pk = (want & bit(transport::feature::kRingPacked)) != 0;
            auto wr64 = [&](std::uint32_t lo, std::uint64_t v) {
                reg_write(lo, 4, std::uint32_t(v), indirect);
                reg_write(lo + 4, 4, std::uint32_t(v >> 32), indirect);
            };
            if (pci_) {
                reg_write(0x16, 2, q, indirect);
                reg_write(0x18, 2, kRingSize, indirect);
                wr64(0x20, ring_addr(q, 0, pk));
                wr64(0x28, ring_addr(q, 1, pk));
                wr64(0x30, ring_addr(q, 2, pk));
                reg_write(0x1c, 2, 1, indirect);
            } else {
                reg_write(mr::kQueueSel, 4, q, indirect);
                reg_write(mr::kQueueNum, 4, kRingSize, indirect);
                wr64(mr::kQueueDescLow, ring_addr(q, 0, pk));
                wr64(mr::kQueueDriverLow, ring_addr(q, 1, pk));
                wr64(mr::kQueueDeviceLow, ring_addr(q, 2, pk));
                reg_write(mr::kQueueReady, 4, 1, indirect);
            }
            w_.poll();
        }
        reg_write(status, status_size, 15, indirect);
        w_.poll();
        const std::uint32_t st = reg_read(status, status_size, indirect) & 0xff;
        if (fresh && !hostile)
            FUZZ_CHECK(st == 15, "%s%s%s: bring-up ended with status %#x", pci_ ? "pci" : "mmio",
                       nbk_ ? "-nb" : "", indirect ? " (indirect)" : "", st);
    }

    // --- one step ------------------------------------------------------------------
    void step(bool first) {
        switch (in_.ConsumeIntegralInRange(0, 15)) {
            case 0: bring_up(first); break;
            case 1: w_.poll(); break;
            case 2: raw(); break;
            case 3: case 4: indirect_access(); break;
            default: pci_ ? pci_access() : mmio_access(); break;
        }
        if (in_.ConsumeIntegralInRange(0, 3) != 0) w_.poll();
    }

    /// Any offset, size, value or a malformed ioreq.
    void raw() {
        xen::IoRequest r;
        r.type = pick(in_, {xen::IoreqType::Copy, xen::IoreqType::Copy, xen::IoreqType::PciConfig,
                            xen::IoreqType::Pio, xen::IoreqType::Invalidate, xen::IoreqType::TimeOffset,
                            static_cast<xen::IoreqType>(5)});
        r.is_write = in_.ConsumeBool();
        r.size = pick<std::uint32_t>(in_, {1, 2, 4, 8, 0, 3, 16});
        r.count = one_in(in_, 4) ? in_.ConsumeIntegral<std::uint32_t>() : 1;
        r.data_is_ptr = one_in(in_, 8);
        r.data = in_.ConsumeIntegral<std::uint64_t>();
        r.vcpu = in_.ConsumeIntegral<std::uint8_t>();
        const std::uint64_t base = pci_ ? (in_.ConsumeBool() ? bar_base() : host_ ? host_->config().ecam_base : 0)
                                        : kMmioBase;
        r.addr = one_in(in_, 4) ? in_.ConsumeIntegral<std::uint64_t>()
                                : base + in_.ConsumeIntegralInRange<std::uint64_t>(0, 0x8000);
        (void)loop_->handle(r);
    }

    /// ACCESS / ACCESS_DATA: well-formed commands on real registers, and not.
    void indirect_access() {
        switch (in_.ConsumeIntegralInRange(0, 3)) {
            case 0: (void)nb_write(nb_data(), 4, value(in_.ConsumeIntegralInRange(0u, 5u))); break;
            case 1: {
                std::uint32_t off = pci_ ? pick<std::uint32_t>(in_, {0x00, 0x04, 0x08, 0x0c, 0x10, 0x12, 0x14, 0x15,
                                                                     0x16, 0x18, 0x1a, 0x1c, 0x1e, 0x20, 0x24, 0x28,
                                                                     0x2c, 0x30, 0x34, 0x3a, pl::kIsrOff,
                                                                     pl::kDeviceOff, pl::kDeviceOff + 8,
                                                                     pl::kNotifyOff, pl::kNbOff, pl::kMsixTableOff})
                                         : pick<std::uint32_t>(in_, {mr::kStatus, mr::kQueueSel, mr::kQueueNum,
                                                                     mr::kQueueReady, mr::kQueueNotify,
                                                                     mr::kInterruptAck, mr::kDeviceFeatures,
                                                                     mr::kDriverFeatures, mr::kQueueDescLow,
                                                                     mr::kConfig, mr::kConfig + 8, mr::kMagic,
                                                                     nb::kMmioAccess, mr::kConfigGeneration});
                if (one_in(in_, 8)) off = in_.ConsumeIntegralInRange<std::uint32_t>(0, nb::kOffsetMask);
                unsigned size = pick<unsigned>(in_, {4, 4, 2, 1, 3});
                std::uint32_t cmd = nb::command(in_.ConsumeBool(), size, off);
                if (one_in(in_, 16)) cmd = in_.ConsumeIntegral<std::uint32_t>();
                (void)nb_write(nb_access(), pick<unsigned>(in_, {4, 4, 4, 2, 1, 8}), cmd);
                break;
            }
            case 2: (void)nb_read(nb_access()); break;
            default: (void)nb_read(nb_data()); break;
        }
    }

    void mmio_access() {
        struct Reg {
            std::uint32_t off;
            std::uint32_t kind;
        };
        static const Reg regs[] = {
            {mr::kMagic, 5}, {mr::kVersion, 5}, {mr::kDeviceId, 5}, {mr::kDeviceFeatures, 4},
            {mr::kDeviceFeaturesSel, 1}, {mr::kDriverFeatures, 4}, {mr::kDriverFeaturesSel, 1},
            {mr::kQueueSel, 5}, {mr::kQueueNumMax, 2}, {mr::kQueueNum, 2}, {mr::kQueueReady, 5},
            {mr::kQueueNotify, 5}, {mr::kInterruptStatus, 5}, {mr::kInterruptAck, 5}, {mr::kStatus, 0},
            {mr::kQueueDescLow, 3}, {mr::kQueueDescHigh, 3}, {mr::kQueueDriverLow, 3}, {mr::kQueueDriverHigh, 3},
            {mr::kQueueDeviceLow, 3}, {mr::kQueueDeviceHigh, 3}, {mr::kShmSel, 1}, {mr::kShmLenLow, 5},
            {mr::kShmBaseLow, 5}, {mr::kQueueReset, 5}, {mr::kConfigGeneration, 5}, {mr::kConfig, 5},
            {mr::kConfig + 8, 4}, {mr::kConfig + 12, 5}, {nb::kMmioAccess, 5}, {nb::kMmioAccessData, 5}};
        const Reg& r = regs[in_.ConsumeIntegralInRange<std::size_t>(0, std::size(regs) - 1)];
        std::uint32_t off = r.off;
        unsigned size = 4;
        if (off >= mr::kConfig) {
            size = pick<unsigned>(in_, {1, 2, 4, 8});
            off += in_.ConsumeIntegralInRange<std::uint32_t>(0, 20);
        } else if (one_in(in_, 8)) {
            size = pick<unsigned>(in_, {1, 2, 8});
            off += in_.ConsumeIntegralInRange<std::uint32_t>(0, 3);
        }
        if (in_.ConsumeBool()) (void)mmio(kMmioBase + off, size, true, value(r.kind));
        else (void)mmio(kMmioBase + off, size, false);
    }

    void pci_access() {
        switch (in_.ConsumeIntegralInRange(0, 5)) {
            case 0: enable_bar(); break;
            case 1: {  // config space: header, capabilities, the pci_cfg window
                std::uint32_t reg = pick<std::uint32_t>(in_, {0x00, 0x04, 0x06, 0x08, 0x0c, 0x10, 0x14, 0x18, 0x2c,
                                                             0x30, 0x34, 0x3c, pl::kCapCommon, pl::kCapNotify,
                                                             pl::kCapIsr, pl::kCapDevice, pl::kCapPciCfg,
                                                             pl::kCapPciCfg + 4, pl::kCapPciCfg + 8,
                                                             pl::kCapPciCfg + 12, pl::kCapPciCfg + 16,
                                                             pl::kCapMsix, pl::kCapMsix + 2, pl::kCapVendor,
                                                             0x100, 0xffc});
                if (one_in(in_, 6)) reg = in_.ConsumeIntegralInRange<std::uint32_t>(0, 0x1003);
                else reg += in_.ConsumeIntegralInRange<std::uint32_t>(0, 3) * (one_in(in_, 4) ? 1 : 0);
                unsigned size = pick<unsigned>(in_, {4, 4, 2, 1});
                std::uint32_t v = reg == 0x10 ? pick<std::uint32_t>(in_, {std::uint32_t(bar_base()), 0xffffffff, 0,
                                                                         std::uint32_t(bar_base() + 0x8000)})
                                              : reg == 0x04 ? pick<std::uint32_t>(in_, {0x6, 0x2, 0x0, 0x406, 0xffff})
                                                            : value(in_.ConsumeIntegralInRange(0u, 5u));
                if (in_.ConsumeBool()) (void)cfg(reg, size, true, v);
                else (void)cfg(reg, size, false);
                break;
            }
            default: {  // BAR0 regions
                std::uint32_t region = pick<std::uint32_t>(in_, {pl::kCommonOff, pl::kCommonOff, pl::kCommonOff,
                                                                 pl::kIsrOff, pl::kDeviceOff, pl::kNotifyOff,
                                                                 pl::kNbOff, pl::kMsixTableOff, pl::kMsixPbaOff});
                std::uint32_t span = region == pl::kCommonOff ? pl::kCommonLen
                                     : region == pl::kMsixTableOff ? 16 * 64
                                     : region == pl::kNotifyOff ? 16 : 24;
                std::uint32_t off = region + in_.ConsumeIntegralInRange<std::uint32_t>(0, span);
                if (one_in(in_, 10)) off = in_.ConsumeIntegralInRange<std::uint32_t>(0, 0x8010);
                unsigned size = pick<unsigned>(in_, {4, 2, 1, 8});
                std::uint32_t kind = region == pl::kCommonOff ? (off == 0x14 ? 0u : off >= 0x20 ? 3u : off == 0x18 ? 2u
                                                                                                   : off == 0x0c ? 4u : 1u)
                                                              : 5u;
                if (in_.ConsumeBool()) (void)mmio(bar_base() + off, size, true, value(kind));
                else (void)mmio(bar_base() + off, size, false);
                break;
            }
        }
    }

    FuzzedDataProvider& in_;
    World& w_;
    bool pci_;
    bool nbk_ = false;
    bool x86_ = false;
    std::shared_ptr<test::EchoDevice> dev_;
    std::shared_ptr<transport::IoreqLoop> loop_;
    std::shared_ptr<transport::MmioTransport> mmio_;
    std::shared_ptr<transport::PciHost> host_;
    std::shared_ptr<transport::PciTransport> fn_;
};

inline int run(const std::uint8_t* data, std::size_t size, bool pci) {
    FuzzedDataProvider in(data, size);
    Session(in, pci).run();
    return 0;
}

}  // namespace xv::fuzz::bus
