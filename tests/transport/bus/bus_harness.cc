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

Result<std::unique_ptr<VirtqueueDriver>> BusHarness::driver(std::uint16_t q, std::uint16_t size, bool event_idx,
                                                         bool packed) {
    DriverOptions o;
    o.index = q;
    o.size = size;
    o.event_idx = event_idx;
    o.packed = packed;
    o.backend = 0;
    o.log_name = fmt::format("test q{}", q);
    return VirtqueueDriver::create(*guest, o);
}

std::uint64_t BusHarness::wait_irq(std::uint64_t seen, std::chrono::milliseconds timeout) {
    return guest->wait_irq(spi, seen, timeout);
}

std::uint64_t BusHarness::irq_count() const { return guest->irq_count(spi); }

}  // namespace xv::test
