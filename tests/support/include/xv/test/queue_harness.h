// SPDX-License-Identifier: GPL-2.0-only
// A backend-side harness over xen/sim for queue, transport and device
// tests: one simulated hypervisor, one guest, a grant handle and the
// GuestMemory the queues map through, an io_context and a strand.
//
//   auto h = QueueHarness::create().value();
//   auto drv = h->driver({.size = 16}).value();
//   auto q = h->queue(*drv).value();        // create_virtqueue over drv->config()
//   ... h->raised (interrupts), h->fatal (errors reported by queues)
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>

#include <memory>
#include <vector>

#include "xv/result.h"
#include "xv/test/virtqueue_driver.h"
#include "xv/transport/guest_memory.h"
#include "xv/transport/virtqueue.h"
#include "xv/xen/sim.h"

namespace xv::test {

/// One simulated guest plus what the backend needs to serve its queues.
class QueueHarness {
public:
    /// Creates the hypervisor (with `opts`) and a guest of `guest_pages` 4 KiB pages.
    static Result<std::unique_ptr<QueueHarness>> create(xen::sim::SimOptions opts = {},
                                                        std::uint64_t guest_pages = 8192);

    /// A guest-side driver for a new queue of this guest.
    Result<std::unique_ptr<VirtqueueDriver>> driver(DriverOptions opts = {});
    /// The device side of `drv`'s queue; interrupts count into `raised`,
    /// fatal errors are appended to `fatal`.
    Result<std::unique_ptr<transport::Virtqueue>> queue(const VirtqueueDriver& drv);
    /// Same, from an explicit config (for invalid-config tests).
    Result<std::unique_ptr<transport::Virtqueue>> queue(const transport::QueueConfig& cfg);

    std::shared_ptr<xen::sim::SimHypervisor> hv;      ///< the simulated hypervisor
    xen::DomId domid = 0;                             ///< the guest
    std::shared_ptr<xen::sim::SimGuest> guest;        ///< its guest side
    std::unique_ptr<xen::GrantMapper> grants;         ///< the backend's grant handle
    std::unique_ptr<transport::GuestMemory> mem;      ///< the guest's memory through `grants`
    boost::asio::io_context io;                       ///< loop for strands
    transport::Strand strand;                         ///< the queues' strand
    std::uint64_t raised = 0;                         ///< used-buffer notifications sent
    std::vector<Error> fatal;                         ///< errors queues reported through fatal()

private:
    QueueHarness() : strand(boost::asio::make_strand(io.get_executor())) {}
};

}  // namespace xv::test
