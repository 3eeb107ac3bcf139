// SPDX-License-Identifier: GPL-2.0-only
// The simulated guest the bus and device fuzz harnesses start from (kept
// out of fuzz_common.h: fuzz_config and fuzz_discovery do not link the
// transport): one domain, its grants seen through the backend's grant
// mapper and GuestMemory, and the io_context the code under test runs on.
// A harness's World derives from it and adds its rings and pools; it is
// made once per process and shared by every iteration.
#pragma once

#include <boost/asio/io_context.hpp>

#include <cstddef>
#include <memory>

#include "xv/transport/guest_memory.h"
#include "xv/xen/sim.h"

namespace xv::fuzz {

struct SimWorld {
    std::shared_ptr<xen::sim::SimHypervisor> hv;
    xen::DomId domid = 0;
    std::shared_ptr<xen::sim::SimGuest> guest;
    std::unique_ptr<xen::GrantMapper> grants;
    std::shared_ptr<transport::GuestMemory> mem;
    boost::asio::io_context io;

    /// A guest "fuzz" of `pages` 4 KiB pages. Aborts (a harness bug, not
    /// a finding) when the simulation refuses.
    explicit SimWorld(std::uint64_t pages = 1024) {
        hv = xen::sim::SimHypervisor::create();
        xen::sim::DomainConfig dc;
        dc.name = "fuzz";
        dc.memory_pages = pages;
        domid = hv->create_domain(dc).value();
        guest = hv->guest(domid);
        grants = std::move(hv->open_grants().value());
        mem = std::make_shared<transport::GuestMemory>(*grants, domid);
    }
    SimWorld(const SimWorld&) = delete;
    SimWorld& operator=(const SimWorld&) = delete;

    /// Runs ready work until none is left or `rounds` polls ran; returns
    /// the number of handlers run.
    std::size_t poll(int rounds = 256) {
        io.restart();
        std::size_t n = 0;
        for (int i = 0; i < rounds; ++i) {
            std::size_t k = io.poll();
            n += k;
            if (!k) break;
        }
        return n;
    }
};

}  // namespace xv::fuzz
