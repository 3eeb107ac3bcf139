// SPDX-License-Identifier: GPL-2.0-only
#include "guest_session.h"

#include <spdlog/spdlog.h>

#include <mutex>

#include "xv/transport/interrupt.h"
#include "xv/transport/pci.h"

namespace xv::daemon {

const char* state_name(GuestSession::State s) {
    switch (s) {
        case GuestSession::State::Discovered: return "discovered";
        case GuestSession::State::Initialising: return "initialising";
        case GuestSession::State::Connected: return "connected";
        case GuestSession::State::Closing: return "closing";
        case GuestSession::State::Closed: return "closed";
    }
    return "?";
}

Result<std::shared_ptr<GuestSession>> GuestSession::start(xen::Hypervisor& hv, xen::XenStore* xs,
                                                          boost::asio::any_io_executor ex, GuestPlan plan) {
    std::shared_ptr<GuestSession> s(new GuestSession(xs, std::move(plan)));
    s->state_ = State::Initialising;
    if (auto r = s->build(hv, ex); !r) {
        spdlog::error("dom{}: cannot serve the guest: {}", s->plan_.domid, r.error().describe());
        s->release();
        s->state_ = State::Closed;
        return std::move(r).error();
    }
    s->loop_->start();
    // xen-facts §3.4: the backend moves to InitWait once its ranges are
    // claimed, so the guest never touches an unbacked window (and xl 4.17
    // waits for exactly this).
    s->write_states(xen::XenbusState::InitWait);
    s->state_ = State::Connected;
    for (const auto& d : s->devices())
        spdlog::info("dom{} {}: serving {} over {}{}{}{}", s->plan_.domid, d.name, to_string(d.type),
                     to_string(d.transport), d.nonblocking ? " with the non-blocking registers" : "",
                     d.detail.empty() ? "" : ", ", d.detail);
    return s;
}

GuestSession::~GuestSession() { release(); }

Result<void> GuestSession::build(xen::Hypervisor& hv, boost::asio::any_io_executor ex) {
    const xen::DomId dom = plan_.domid;
    ex_ = ex;
    auto grants = hv.open_grants();
    if (!grants) return std::move(grants).error();
    grants_ = std::move(grants).value();
    auto dm = hv.open_device_model();
    if (!dm) return std::move(dm).error();
    dm_ = std::move(dm).value();
    memory_ = std::make_shared<transport::GuestMemory>(*grants_, dom);

    if (plan_.before_ioreq_server) plan_.before_ioreq_server(*dm_);
    auto loop = transport::IoreqLoop::create(ex, *dm_, dom);
    if (!loop) return std::move(loop).error();
    loop_ = std::move(loop).value();
    plan_.ioreq.apply(*loop_);
    if (plan_.on_ioreq_server) plan_.on_ioreq_server(loop_->server_id());

    transport::TransportEnv env;
    env.executor = ex;
    env.memory = memory_;

    for (const DevicePlan& p : plan_.devices) {
        transport::DeviceIdentity id{dom, p.name};
        Built b;
        b.plan = p;
        switch (p.type) {
            case DeviceType::Blk: {
                auto d = devices::make_blk(p.blk, id, ex);
                if (!d) return Error{d.error().code, p.name + ": " + d.error().message};
                b.device = std::shared_ptr<transport::Device>(std::move(d).value());
                b.detail = p.blk.path + (p.blk.readonly ? " (read-only)" : "");
                break;
            }
            case DeviceType::Net: {
                auto d = devices::make_net(p.net, id, ex);
                if (!d) return Error{d.error().code, p.name + ": " + d.error().message};
                b.device = std::shared_ptr<transport::Device>(std::move(d).value());
                b.detail = "tap " + p.net.tap;
                break;
            }
            case DeviceType::Console: {
                auto d = devices::make_console_device(p.console, id, ex);
                if (!d) return Error{d.error().code, p.name + ": " + d.error().message};
                auto* raw = d.value().get();
                b.detail = !raw->pty_path().empty()      ? "pty " + raw->pty_path()
                           : !raw->socket_path().empty() ? "socket " + raw->socket_path()
                                                         : "log " + p.console.log_path;
                b.device = std::shared_ptr<transport::Device>(std::move(d).value());
                break;
            }
        }
        if (p.transport == Transport::Mmio) {
            if (!p.announced)
                return make_error(std::errc::invalid_argument,
                                  p.name + ": a virtio-mmio device needs the window and irq libxl announces");
            auto irq = transport::make_spi_line(*dm_, dom, p.announced->irq);
            transport::MmioOptions opts;
            opts.nonblocking = p.nonblocking;
            b.mmio = transport::MmioTransport::create(b.device, env, std::move(irq), opts);
            XV_TRY(loop_->add_region(p.announced->base, b.mmio, p.name));
        } else {
            if (!pci_host_) {
                auto host = transport::PciHost::create(plan_.pci);
                if (!host) return std::move(host).error();
                pci_host_ = std::move(host).value();
            }
            transport::PciOptions opts;
            opts.nonblocking = p.nonblocking;
            auto fn = pci_host_->add_device(b.device, env, *dm_, dom, opts);
            if (!fn) return Error{fn.error().code, p.name + ": " + fn.error().message};
            b.pci = std::move(fn).value();
        }
        built_.push_back(std::move(b));
    }
    if (pci_host_) XV_TRY(loop_->add_pci_host(pci_host_));

    // Publish where the console can be reached (as xenconsoled does with
    // console/tty), next to the device's backend directory.
    if (xs_) {
        for (const auto& b : built_) {
            if (b.plan.type != DeviceType::Console || !b.plan.announced) continue;
            auto* con = static_cast<devices::ConsoleDevice*>(b.device.get());
            if (!con->pty_path().empty()) (void)xs_->write(b.plan.announced->backend_path + "/tty", con->pty_path());
        }
    }
    return ok();
}

void GuestSession::write_states(xen::XenbusState s) {
    if (!xs_) return;
    for (const auto& b : built_) {
        if (!b.plan.announced) continue;
        if (auto r = write_backend_state(*xs_, *b.plan.announced, s); !r)
            spdlog::warn("dom{} {}: cannot write backend state {}: {}", plan_.domid, b.plan.name, int(s),
                         r.error().describe());
    }
}

void GuestSession::stop(std::function<void()> done) {
    State expect = State::Connected;
    if (!state_.compare_exchange_strong(expect, State::Closing)) {
        // Already closing or closed: report completion once.
        if (done) done();
        return;
    }
    spdlog::info("dom{}: stopping (devices reset, grants unmapped, ioreq server destroyed)", plan_.domid);
    auto self = shared_from_this();
    loop_->stop([self, done = std::move(done)]() mutable {
        self->write_states(xen::XenbusState::Closed);
        self->release();
        self->state_ = State::Closed;
        spdlog::info("dom{}: closed", self->plan_.domid);
        if (done) done();
    });
}

void GuestSession::release() {
    // Order matters: transports and devices hold chains (grant maps) and
    // interrupt lines (device model); the loop holds the ioreq server.
    built_.clear();
    pci_host_.reset();
    loop_.reset();
    memory_.reset();
    dm_.reset();
    grants_.reset();
}

std::vector<DeviceReport> GuestSession::devices() const {
    std::vector<DeviceReport> out;
    for (const auto& b : built_)
        out.push_back({b.plan.name, b.plan.type, b.plan.transport, b.plan.nonblocking, b.detail});
    return out;
}

std::shared_ptr<transport::Device> GuestSession::device(const std::string& name) const {
    for (const auto& b : built_)
        if (b.plan.name == name) return b.device;
    return nullptr;
}

}  // namespace xv::daemon
