// SPDX-License-Identifier: GPL-2.0-only
#include "bus_harness.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <future>

#include "xv/transport/interrupt.h"
#include "xv/transport/nonblocking.h"

namespace xv::test {

using namespace std::chrono_literals;
namespace nb = transport::nonblocking;

const char* kind_name(TransportKind k) {
    switch (k) {
        case TransportKind::Mmio: return "mmio";
        case TransportKind::MmioNb: return "mmio-nb";
        case TransportKind::Pci: return "pci";
        case TransportKind::PciNb: return "pci-nb";
    }
    return "?";
}

// --- register interfaces ----------------------------------------------------

namespace {

class PlainIo final : public RegisterIo {
public:
    PlainIo(xen::sim::SimGuest& g, std::uint64_t base, unsigned vcpu) : g_(g), base_(base), vcpu_(vcpu) {}
    Result<std::uint64_t> read(std::uint32_t off, unsigned size) override {
        return g_.mmio_read(vcpu_, base_ + off, size);
    }
    Result<void> write(std::uint32_t off, unsigned size, std::uint64_t value) override {
        return g_.mmio_write(vcpu_, base_ + off, size, value);
    }

private:
    xen::sim::SimGuest& g_;
    std::uint64_t base_;
    unsigned vcpu_;
};

}  // namespace

Result<void> NbRegisterIo::start(std::uint32_t cmd, std::uint32_t data) {
    ++traps_;
    XV_TRY(g_.mmio_write(vcpu_, a_ + 4, 4, data));
    ++traps_;
    return g_.mmio_write(vcpu_, a_, 4, cmd);
}

Result<std::uint32_t> NbRegisterIo::wait_idle(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (unsigned i = 0;; ++i) {
        ++traps_;
        auto a = g_.mmio_read(vcpu_, a_, 4);
        if (!a) return std::move(a).error();
        if (!(*a & nb::kBusy)) return std::uint32_t(*a);
        if (std::chrono::steady_clock::now() > deadline)
            return make_error(std::errc::timed_out, fmt::format("ACCESS still BUSY ({:#x})", *a));
        if (i > 16) std::this_thread::sleep_for(20us);
    }
}

Result<std::uint64_t> NbRegisterIo::read(std::uint32_t off, unsigned size) {
    if (size == 8) {
        auto lo = read(off, 4);
        if (!lo) return lo;
        auto hi = read(off + 4, 4);
        if (!hi) return hi;
        return *lo | (*hi << 32);
    }
    XV_TRY(start(nb::command(false, size, off), 0));
    auto a = wait_idle();
    if (!a) return std::move(a).error();
    if (*a & (nb::kErrorRetry | nb::kErrorInvalid))
        return make_error(std::errc::invalid_argument, fmt::format("indirect read {:#x}/{} refused: {:#x}", off, size, *a));
    ++traps_;
    return g_.mmio_read(vcpu_, a_ + 4, 4);
}

Result<void> NbRegisterIo::write(std::uint32_t off, unsigned size, std::uint64_t value) {
    if (size == 8) {
        XV_TRY(write(off, 4, value & 0xffffffff));
        return write(off + 4, 4, value >> 32);
    }
    XV_TRY(start(nb::command(true, size, off), std::uint32_t(value)));
    auto a = wait_idle();
    if (!a) return std::move(a).error();
    if (*a & (nb::kErrorRetry | nb::kErrorInvalid))
        return make_error(std::errc::invalid_argument,
                          fmt::format("indirect write {:#x}/{} refused: {:#x}", off, size, *a));
    return ok();
}

// --- generic driver steps ---------------------------------------------------

Result<void> GuestTransport::reset(std::chrono::milliseconds timeout) {
    XV_TRY(set_status(0));
    auto deadline = std::chrono::steady_clock::now() + timeout;
    // virtio 1.2 §4.2.3.1 / §4.1.4.3.2: wait until status reads back 0.
    for (;;) {
        auto s = status();
        if (!s) return std::move(s).error();
        if (*s == 0) return ok();
        if (std::chrono::steady_clock::now() > deadline)
            return make_error(std::errc::timed_out, fmt::format("status still {:#x} after reset", *s));
        std::this_thread::sleep_for(100us);
    }
}

Result<std::uint64_t> GuestTransport::bring_up(std::uint64_t want, const std::vector<VirtqueueDriver*>& queues) {
    namespace st = transport::status;
    XV_TRY(reset());
    XV_TRY(set_status(st::kAcknowledge));
    XV_TRY(set_status(st::kAcknowledge | st::kDriver));
    auto offered = device_features();
    if (!offered) return std::move(offered).error();
    const std::uint64_t f = *offered & want;
    XV_TRY(set_driver_features(f));
    XV_TRY(set_status(st::kAcknowledge | st::kDriver | st::kFeaturesOk));
    auto s = status();
    if (!s) return std::move(s).error();
    if (!(*s & st::kFeaturesOk)) return make_error(std::errc::invalid_argument, "device refused FEATURES_OK");
    for (auto* q : queues) {
        auto c = q->config();
        XV_TRY(setup_queue(c.index, c.size, c.desc_addr, c.driver_addr, c.device_addr));
        XV_TRY(enable_queue(c.index));
    }
    XV_TRY(set_status(st::kAcknowledge | st::kDriver | st::kFeaturesOk | st::kDriverOk));
    return f;
}

// --- virtio-mmio guest ------------------------------------------------------

namespace {

using namespace transport::mmio_reg;

class MmioGuest final : public GuestTransport {
public:
    explicit MmioGuest(std::unique_ptr<RegisterIo> io) : io_(std::move(io)) {}
    RegisterIo& regs() override { return *io_; }
    Result<std::uint8_t> status() override {
        auto v = io_->read(kStatus, 4);
        if (!v) return std::move(v).error();
        return std::uint8_t(*v);
    }
    Result<void> set_status(std::uint8_t s) override { return io_->write(kStatus, 4, s); }
    Result<std::uint64_t> device_features() override {
        XV_TRY(io_->write(kDeviceFeaturesSel, 4, 0));
        auto lo = io_->read(kDeviceFeatures, 4);
        if (!lo) return lo;
        XV_TRY(io_->write(kDeviceFeaturesSel, 4, 1));
        auto hi = io_->read(kDeviceFeatures, 4);
        if (!hi) return hi;
        return *lo | (*hi << 32);
    }
    Result<void> set_driver_features(std::uint64_t f) override {
        XV_TRY(io_->write(kDriverFeaturesSel, 4, 0));
        XV_TRY(io_->write(kDriverFeatures, 4, f & 0xffffffff));
        XV_TRY(io_->write(kDriverFeaturesSel, 4, 1));
        return io_->write(kDriverFeatures, 4, f >> 32);
    }
    Result<std::uint16_t> num_queues() override {
        std::uint16_t n = 0;
        for (; n < 64; ++n) {
            auto m = queue_max(n);
            if (!m) return std::move(m).error();
            if (*m == 0) break;
        }
        return n;
    }
    Result<std::uint16_t> queue_max(std::uint16_t q) override {
        XV_TRY(io_->write(kQueueSel, 4, q));
        auto v = io_->read(kQueueNumMax, 4);
        if (!v) return std::move(v).error();
        return std::uint16_t(*v);
    }
    Result<void> setup_queue(std::uint16_t q, std::uint16_t size, std::uint64_t desc, std::uint64_t driver,
                             std::uint64_t device) override {
        XV_TRY(io_->write(kQueueSel, 4, q));
        XV_TRY(io_->write(kQueueNum, 4, size));
        XV_TRY(io_->write(kQueueDescLow, 4, desc & 0xffffffff));
        XV_TRY(io_->write(kQueueDescHigh, 4, desc >> 32));
        XV_TRY(io_->write(kQueueDriverLow, 4, driver & 0xffffffff));
        XV_TRY(io_->write(kQueueDriverHigh, 4, driver >> 32));
        XV_TRY(io_->write(kQueueDeviceLow, 4, device & 0xffffffff));
        return io_->write(kQueueDeviceHigh, 4, device >> 32);
    }
    Result<void> enable_queue(std::uint16_t q) override {
        XV_TRY(io_->write(kQueueSel, 4, q));
        return io_->write(kQueueReady, 4, 1);
    }
    Result<bool> queue_enabled(std::uint16_t q) override {
        XV_TRY(io_->write(kQueueSel, 4, q));
        auto v = io_->read(kQueueReady, 4);
        if (!v) return std::move(v).error();
        return *v == 1;
    }
    Result<void> notify(std::uint16_t q) override { return io_->write(kQueueNotify, 4, q); }
    Result<std::uint8_t> take_isr() override {
        auto v = io_->read(kInterruptStatus, 4);
        if (!v) return std::move(v).error();
        if (*v) XV_TRY(io_->write(kInterruptAck, 4, *v));
        return std::uint8_t(*v);
    }
    Result<std::uint32_t> config_generation() override {
        auto v = io_->read(kConfigGeneration, 4);
        if (!v) return std::move(v).error();
        return std::uint32_t(*v);
    }
    Result<std::uint64_t> config_read(std::uint32_t off, unsigned size) override {
        return io_->read(kConfig + off, size);
    }
    Result<void> config_write(std::uint32_t off, unsigned size, std::uint64_t v) override {
        return io_->write(kConfig + off, size, v);
    }

private:
    std::unique_ptr<RegisterIo> io_;
};

}  // namespace

Result<std::unique_ptr<GuestTransport>> make_mmio_guest(xen::sim::SimGuest& g, std::uint64_t base, bool nonblocking,
                                                        unsigned vcpu) {
    // Probe like Linux virtio_mmio: magic, then version.
    auto magic = g.mmio_read(vcpu, base + kMagic, 4);
    if (!magic) return std::move(magic).error();
    const std::uint32_t want = nonblocking ? nb::kMagic : kMagicVirt;
    if (*magic != want)
        return make_error(std::errc::no_such_device, fmt::format("magic {:#x}, expected {:#x}", *magic, want));
    auto ver = g.mmio_read(vcpu, base + kVersion, 4);
    if (!ver) return std::move(ver).error();
    if (*ver != 2) return make_error(std::errc::no_such_device, fmt::format("version {}", *ver));
    std::unique_ptr<RegisterIo> io;
    if (nonblocking) io = std::make_unique<NbRegisterIo>(g, base + nb::kMmioAccess, vcpu);
    else io = std::make_unique<PlainIo>(g, base, vcpu);
    return std::unique_ptr<GuestTransport>(new MmioGuest(std::move(io)));
}

// --- virtio-pci guest -------------------------------------------------------

PciGuest::PciGuest(xen::sim::SimGuest& g, std::uint64_t ecam_fn, unsigned vcpu) : g_(g), ecam_(ecam_fn), vcpu_(vcpu) {}

Result<std::uint32_t> PciGuest::cfg_read(std::uint32_t reg, unsigned size) {
    auto v = g_.mmio_read(vcpu_, ecam_ + reg, size);
    if (!v) return std::move(v).error();
    return std::uint32_t(*v);
}

Result<void> PciGuest::cfg_write(std::uint32_t reg, unsigned size, std::uint32_t v) {
    return g_.mmio_write(vcpu_, ecam_ + reg, size, v);
}

Result<void> PciGuest::enumerate(std::uint64_t bar_addr, bool nonblocking) {
    auto id = cfg_read(0, 4);
    if (!id) return std::move(id).error();
    if ((*id & 0xffff) != transport::pci_layout::kVendorVirtio)
        return make_error(std::errc::no_such_device, fmt::format("vendor/device {:#x}", *id));
    // BAR sizing (PCI 3.0 §6.2.5.1) with decoding off, as Linux does.
    XV_TRY(cfg_write(0x04, 2, 0));
    XV_TRY(cfg_write(0x10, 4, 0xffffffff));
    XV_TRY(cfg_write(0x14, 4, 0xffffffff));
    auto lo = cfg_read(0x10, 4);
    if (!lo) return std::move(lo).error();
    auto hi = cfg_read(0x14, 4);
    if (!hi) return std::move(hi).error();
    caps.bar_flags = *lo & 0xf;
    std::uint64_t mask = (std::uint64_t(*hi) << 32) | (*lo & 0xfffffff0u);
    caps.bar_size = ~mask + 1;
    XV_TRY(cfg_write(0x10, 4, std::uint32_t(bar_addr)));
    XV_TRY(cfg_write(0x14, 4, std::uint32_t(bar_addr >> 32)));
    XV_TRY(cfg_write(0x04, 2, 0x6));  // memory space + bus master
    caps.bar = bar_addr;
    // Capability walk like virtio_pci_modern's virtio_pci_find_capability.
    auto ptr = cfg_read(0x34, 1);
    if (!ptr) return std::move(ptr).error();
    unsigned p = *ptr & 0xfc;
    for (unsigned guard = 0; p && guard < 48; ++guard) {
        auto hdr = cfg_read(p, 4);
        if (!hdr) return std::move(hdr).error();
        const unsigned cap_id = *hdr & 0xff, next = (*hdr >> 8) & 0xfc, type = *hdr >> 24;
        caps.chain.push_back({std::uint8_t(p), std::uint8_t(cap_id), std::uint8_t(type)});
        if (cap_id == 0x11) {
            caps.msix = p;
        } else if (cap_id == 0x09) {
            auto w1 = cfg_read(p + 4, 4);
            auto off = cfg_read(p + 8, 4);
            auto len = cfg_read(p + 12, 4);
            if (!w1 || !off || !len) return make_error(std::errc::io_error, "cap read failed");
            switch (type) {
                case 1: caps.common = *off; break;
                case 2: {
                    caps.notify = *off;
                    auto m = cfg_read(p + 16, 4);
                    if (!m) return std::move(m).error();
                    caps.notify_mult = *m;
                    break;
                }
                case 3: caps.isr = *off; break;
                case 4: caps.device = *off; caps.device_len = *len; break;
                case 5: caps.pci_cfg = p; break;
                case 9:
                    // docs/nonblocking.md: qualify vendor_id before use.
                    if ((*w1 & 0xffff) == nb::kPciVendorIdXen) {
                        caps.vendor = p;
                        caps.nb_bar = (*w1 >> 16) & 0xff;
                        caps.nb_version = (*w1 >> 24) & 0xff;
                        caps.nb_offset = *off;
                    }
                    break;
                default: break;
            }
        }
        p = next;
    }
    if (nonblocking) {
        if (!caps.vendor) return make_error(std::errc::no_such_device, "no Xen vendor capability");
        io_ = std::make_unique<NbRegisterIo>(g_, caps.bar + caps.nb_offset, vcpu_);
    } else {
        io_ = std::make_unique<PlainIo>(g_, caps.bar, vcpu_);
    }
    return ok();
}

Result<std::uint8_t> PciGuest::status() {
    auto v = io_->read(caps.common + 0x14, 1);
    if (!v) return std::move(v).error();
    return std::uint8_t(*v);
}
Result<void> PciGuest::set_status(std::uint8_t s) { return io_->write(caps.common + 0x14, 1, s); }
Result<std::uint64_t> PciGuest::device_features() {
    XV_TRY(io_->write(caps.common + 0x00, 4, 0));
    auto lo = io_->read(caps.common + 0x04, 4);
    if (!lo) return lo;
    XV_TRY(io_->write(caps.common + 0x00, 4, 1));
    auto hi = io_->read(caps.common + 0x04, 4);
    if (!hi) return hi;
    return *lo | (*hi << 32);
}
Result<void> PciGuest::set_driver_features(std::uint64_t f) {
    XV_TRY(io_->write(caps.common + 0x08, 4, 0));
    XV_TRY(io_->write(caps.common + 0x0c, 4, f & 0xffffffff));
    XV_TRY(io_->write(caps.common + 0x08, 4, 1));
    return io_->write(caps.common + 0x0c, 4, f >> 32);
}
Result<std::uint16_t> PciGuest::num_queues() {
    auto v = io_->read(caps.common + 0x12, 2);
    if (!v) return std::move(v).error();
    return std::uint16_t(*v);
}
Result<std::uint16_t> PciGuest::queue_max(std::uint16_t q) {
    XV_TRY(io_->write(caps.common + 0x16, 2, q));
    auto v = io_->read(caps.common + 0x18, 2);
    if (!v) return std::move(v).error();
    return std::uint16_t(*v);
}
Result<void> PciGuest::setup_queue(std::uint16_t q, std::uint16_t size, std::uint64_t desc, std::uint64_t driver,
                                   std::uint64_t device) {
    XV_TRY(io_->write(caps.common + 0x16, 2, q));
    XV_TRY(io_->write(caps.common + 0x18, 2, size));
    XV_TRY(io_->write(caps.common + 0x20, 4, desc & 0xffffffff));
    XV_TRY(io_->write(caps.common + 0x24, 4, desc >> 32));
    XV_TRY(io_->write(caps.common + 0x28, 4, driver & 0xffffffff));
    XV_TRY(io_->write(caps.common + 0x2c, 4, driver >> 32));
    XV_TRY(io_->write(caps.common + 0x30, 4, device & 0xffffffff));
    return io_->write(caps.common + 0x34, 4, device >> 32);
}
Result<void> PciGuest::enable_queue(std::uint16_t q) {
    XV_TRY(io_->write(caps.common + 0x16, 2, q));
    return io_->write(caps.common + 0x1c, 2, 1);
}
Result<bool> PciGuest::queue_enabled(std::uint16_t q) {
    XV_TRY(io_->write(caps.common + 0x16, 2, q));
    auto v = io_->read(caps.common + 0x1c, 2);
    if (!v) return std::move(v).error();
    return *v == 1;
}
Result<void> PciGuest::notify(std::uint16_t q) {
    XV_TRY(io_->write(caps.common + 0x16, 2, q));
    auto off = io_->read(caps.common + 0x1e, 2);
    if (!off) return std::move(off).error();
    return io_->write(std::uint32_t(caps.notify + *off * caps.notify_mult), 2, q);
}
Result<std::uint8_t> PciGuest::take_isr() {
    auto v = io_->read(caps.isr, 1);
    if (!v) return std::move(v).error();
    return std::uint8_t(*v);
}
Result<std::uint32_t> PciGuest::config_generation() {
    auto v = io_->read(caps.common + 0x15, 1);
    if (!v) return std::move(v).error();
    return std::uint32_t(*v);
}
Result<std::uint64_t> PciGuest::config_read(std::uint32_t off, unsigned size) { return io_->read(caps.device + off, size); }
Result<void> PciGuest::config_write(std::uint32_t off, unsigned size, std::uint64_t v) {
    return io_->write(caps.device + off, size, v);
}

Result<std::unique_ptr<GuestTransport>> make_pci_guest(xen::sim::SimGuest& g, const transport::PciHostConfig& host,
                                                       unsigned slot, bool nonblocking, unsigned vcpu) {
    auto pg = std::make_unique<PciGuest>(g, host.ecam_base + (std::uint64_t(slot) << 15), vcpu);
    // Each slot gets its own naturally aligned BAR0 in the host's window.
    XV_TRY(pg->enumerate(host.mmio_base + std::uint64_t(slot) * transport::pci_layout::kBar0Size, nonblocking));
    return std::unique_ptr<GuestTransport>(std::move(pg));
}

// --- the harness ------------------------------------------------------------

Result<std::unique_ptr<BusHarness>> BusHarness::create(Options opts, DeviceFactory factory) {
    std::unique_ptr<BusHarness> h(new BusHarness());
    h->opts = opts;
    h->hv = xen::sim::SimHypervisor::create();
    xen::sim::DomainConfig dc;
    dc.name = fmt::format("guest-{}", kind_name(opts.kind));
    dc.memory_pages = opts.guest_pages;
    dc.vcpus = opts.vcpus;
    auto domid = h->hv->create_domain(dc);
    if (!domid) return std::move(domid).error();
    h->domid = *domid;
    h->guest = h->hv->guest(h->domid);
    auto grants = h->hv->open_grants();
    if (!grants) return std::move(grants).error();
    h->grants = std::move(*grants);
    auto dm = h->hv->open_device_model();
    if (!dm) return std::move(dm).error();
    h->dm = std::move(*dm);
    h->mem = std::make_shared<transport::GuestMemory>(*h->grants, h->domid);
    h->device = factory(h->domid);
    transport::TransportEnv env;
    env.executor = h->io.get_executor();
    env.memory = h->mem;
    auto loop = transport::IoreqLoop::create(h->io.get_executor(), *h->dm, h->domid);
    if (!loop) return std::move(loop).error();
    h->loop = std::move(*loop);
    const bool nbk = is_nonblocking(opts.kind);
    if (is_pci(opts.kind)) {
        auto host = transport::PciHost::create({});
        if (!host) return std::move(host).error();
        h->host = std::move(*host);
        transport::PciOptions po;
        po.nonblocking = nbk;
        auto fn = h->host->add_device(h->device, env, *h->dm, h->domid, po);
        if (!fn) return std::move(fn).error();
        h->pci = std::move(*fn);
        h->spi = h->host->intx_spi(0, 1);
        // The sim injects MSIs too (x86 semantics), so MSI-X can be tested
        // behind the same host.
        transport::PciInterrupts irqs;
        irqs.intx = transport::make_spi_line(*h->dm, h->domid, h->spi);
        irqs.msi = transport::make_msi_sink(*h->dm, h->domid);
        h->pci->set_interrupts(std::move(irqs));
        XV_TRY(h->loop->add_pci_host(h->host));
    } else {
        h->spi = 33;
        transport::MmioOptions mo;
        mo.nonblocking = nbk;
        h->mmio = transport::MmioTransport::create(h->device, env, transport::make_spi_line(*h->dm, h->domid, h->spi),
                                                   mo);
        XV_TRY(h->loop->add_region(kMmioBase, h->mmio, "virtio-mmio 0"));
    }
    h->loop->start();
    h->work_ = std::make_unique<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>>(
        h->io.get_executor());
    for (unsigned i = 0; i < opts.io_threads; ++i) h->threads_.emplace_back([p = h.get()] { p->io.run(); });
    if (is_pci(opts.kind)) {
        auto d = make_pci_guest(*h->guest, h->host->config(), 0, nbk);
        if (!d) return std::move(d).error();
        h->drv = std::move(*d);
    } else {
        auto d = make_mmio_guest(*h->guest, kMmioBase, nbk);
        if (!d) return std::move(d).error();
        h->drv = std::move(*d);
    }
    return h;
}

BusHarness::~BusHarness() { shutdown(); }

void BusHarness::shutdown() {
    if (stopped_) return;
    stopped_ = true;
    drv.reset();
    if (loop) {
        auto p = std::make_shared<std::promise<void>>();
        auto f = p->get_future();
        loop->stop([p] { p->set_value(); });
        if (f.wait_for(10s) != std::future_status::ready) {
            ADD_FAILURE() << "ioreq loop did not stop within 10 s";
            io.stop();
        }
    }
    work_.reset();
    for (auto& t : threads_) t.join();
    threads_.clear();
}

Result<std::unique_ptr<VirtqueueDriver>> BusHarness::driver(std::uint16_t q, std::uint16_t size, bool event_idx) {
    DriverOptions o;
    o.index = q;
    o.size = size;
    o.event_idx = event_idx;
    o.backend = 0;
    o.log_name = fmt::format("test q{}", q);
    return VirtqueueDriver::create(*guest, o);
}

std::uint64_t BusHarness::wait_irq(std::uint64_t seen, std::chrono::milliseconds timeout) {
    return guest->wait_irq(spi, seen, timeout);
}

std::uint64_t BusHarness::irq_count() const { return guest->irq_count(spi); }

}  // namespace xv::test
