// SPDX-License-Identifier: GPL-2.0-only
// Backend-side harness over xen/sim for queue and device tests.
#include "xv/test/queue_harness.h"

namespace xv::test {

Result<std::unique_ptr<QueueHarness>> QueueHarness::create(xen::sim::SimOptions opts, std::uint64_t guest_pages) {
    std::unique_ptr<QueueHarness> h(new QueueHarness());
    h->hv = xen::sim::SimHypervisor::create(opts);
    xen::sim::DomainConfig dc;
    dc.name = "guest";
    dc.memory_pages = guest_pages;
    auto d = h->hv->create_domain(dc);
    if (!d) return std::move(d).error();
    h->domid = *d;
    h->guest = h->hv->guest(*d);
    if (!h->guest) return make_error(std::errc::no_such_process, "harness: guest vanished");
    auto g = h->hv->open_grants();
    if (!g) return std::move(g).error();
    h->grants = std::move(*g);
    h->mem = std::make_unique<transport::GuestMemory>(*h->grants, h->domid);
    return h;
}

Result<std::unique_ptr<VirtqueueDriver>> QueueHarness::driver(DriverOptions opts) {
    opts.backend = hv->self_domid() ? *hv->self_domid() : opts.backend;
    return VirtqueueDriver::create(*guest, std::move(opts));
}

Result<std::unique_ptr<transport::Virtqueue>> QueueHarness::queue(const VirtqueueDriver& drv) {
    return queue(drv.config());
}

Result<std::unique_ptr<transport::Virtqueue>> QueueHarness::queue(const transport::QueueConfig& cfg) {
    return transport::create_virtqueue(
        cfg, *mem, strand, [this] { ++raised; }, [this](const Error& e) { fatal.push_back(e); });
}

}  // namespace xv::test
