// SPDX-License-Identifier: GPL-2.0-only
// One served guest: its grant handle, device-model handle, ioreq loop,
// devices and transports, and its xenstore handshake.
//
// Guest lifecycle (architecture.md "Lifecycles"):
//
//   +------------+ start() +--------------+ ranges claimed, +-----------+
//   | Discovered | ------> | Initialising | --------------> | Connected |
//   +------------+         +--------------+  state=InitWait +-----------+
//                                 | error                      |  stop(): backend state 5,
//                                 v                            v  domain death, SIGTERM
//                            +--------+  all devices reset, +---------+
//                            | Closed | <------------------ | Closing |
//                            +--------+  grants unmapped,   +---------+
//                                        server destroyed,
//                                        state=Closed (6)
//
// Every resource is owned by the session and released by stop() (or the
// destructor), so domain destroy, worker exit and SIGTERM leak no grant
// maps, event channels or ioreq servers.
#pragma once

#include <boost/asio/any_io_executor.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config.h"
#include "discovery.h"
#include "ioreq_tuning.h"
#include "xv/devices/blk.h"
#include "xv/devices/console.h"
#include "xv/devices/net.h"
#include "xv/result.h"
#include "xv/transport/ioreq_loop.h"
#include "xv/transport/mmio.h"
#include "xv/transport/pci_host.h"
#include "xv/xen/hypervisor.h"

namespace xv::daemon {

/// What to build for one device of a guest.
struct DevicePlan {
    std::string name;              ///< "blk0", "net0", "console0"
    DeviceType type = DeviceType::Blk;
    Transport transport = Transport::Mmio;
    bool nonblocking = false;
    std::optional<AnnouncedDevice> announced;  ///< from xenstore (mmio window, irq)
    devices::BlkConfig blk;
    devices::NetConfig net;
    devices::ConsoleConfig console;
};

/// What to build for one guest.
struct GuestPlan {
    xen::DomId domid = 0;
    std::string name;
    VmClass cls = VmClass::Unsafe;
    std::vector<DevicePlan> devices;
    transport::PciHostConfig pci;  ///< used when a device is on pci
    IoreqTuning ioreq;             ///< [daemon] ioreq_poll_us, ioreq_realtime_priority
    /// Called with the id of the guest's ioreq server as soon as it exists
    /// (a worker records it for its supervisor); may be empty.
    std::function<void(xen::IoServId)> on_ioreq_server;
    /// Called just before the guest's ioreq server is created, with the
    /// device-model handle that creates it (a worker records its intent for
    /// its supervisor: a crash between the creation and on_ioreq_server
    /// would otherwise leave a server nobody knows of); may be empty.
    std::function<void(xen::DeviceModel&)> before_ioreq_server;
};

/// Live facts about one device of a session (for logs, demo and tests).
struct DeviceReport {
    std::string name;
    DeviceType type = DeviceType::Blk;
    Transport transport = Transport::Mmio;
    bool nonblocking = false;
    std::string detail;  ///< path, tap name or pty path
};

/// One served guest (see the state machine above).
class GuestSession : public std::enable_shared_from_this<GuestSession> {
public:
    enum class State { Discovered, Initialising, Connected, Closing, Closed };

    /// Builds every device and transport of `plan`, claims their ranges and
    /// starts serving. `xs` may be null (no xenstore handshake).
    static Result<std::shared_ptr<GuestSession>> start(xen::Hypervisor& hv, xen::XenStore* xs,
                                                       boost::asio::any_io_executor ex, GuestPlan plan);
    ~GuestSession();

    GuestSession(const GuestSession&) = delete;
    GuestSession& operator=(const GuestSession&) = delete;

    /// Orderly stop: devices reset (in-flight work completes), grants
    /// unmapped, ranges released, the ioreq server destroyed, backend state
    /// Closed written. `done` runs once, on an executor thread.
    void stop(std::function<void()> done);

    State state() const noexcept { return state_.load(); }
    xen::DomId domid() const noexcept { return plan_.domid; }
    const GuestPlan& plan() const noexcept { return plan_; }
    std::vector<DeviceReport> devices() const;
    /// The device called `name`, or nullptr.
    std::shared_ptr<transport::Device> device(const std::string& name) const;
    /// The executor the guest's ioreq loop, transports and devices run on.
    boost::asio::any_io_executor executor() const { return ex_; }
    /// The ioreq loop (statistics).
    std::shared_ptr<transport::IoreqLoop> loop() const { return loop_; }
    /// The PCI host, when a device is on pci.
    std::shared_ptr<transport::PciHost> pci_host() const { return pci_host_; }

private:
    GuestSession(xen::XenStore* xs, GuestPlan plan) : xs_(xs), plan_(std::move(plan)) {}
    Result<void> build(xen::Hypervisor& hv, boost::asio::any_io_executor ex);
    void write_states(xen::XenbusState s);
    void release();

    xen::XenStore* xs_;
    GuestPlan plan_;
    boost::asio::any_io_executor ex_;
    std::atomic<State> state_{State::Discovered};
    std::unique_ptr<xen::GrantMapper> grants_;
    std::unique_ptr<xen::DeviceModel> dm_;
    std::shared_ptr<transport::GuestMemory> memory_;
    std::shared_ptr<transport::IoreqLoop> loop_;
    std::shared_ptr<transport::PciHost> pci_host_;
    struct Built {
        DevicePlan plan;
        std::shared_ptr<transport::Device> device;
        std::shared_ptr<transport::MmioTransport> mmio;
        std::shared_ptr<transport::PciTransport> pci;
        std::string detail;
    };
    std::vector<Built> built_;
};

const char* state_name(GuestSession::State s);

}  // namespace xv::daemon
