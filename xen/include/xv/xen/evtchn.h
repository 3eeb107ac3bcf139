// SPDX-License-Identifier: GPL-2.0-only
// Event channels: bind interdomain, notify, unmask, one fd to wait on.
#pragma once

#include <cstdint>
#include <optional>

#include "xv/result.h"
#include "xv/xen/types.h"

namespace xv::xen {

/// An event-channel handle (libxenevtchn / the simulator). All ports bound
/// through one handle signal the same fd; pending() says which one fired.
/// Ports still bound when the handle dies are unbound.
class EventChannels {
public:
    virtual ~EventChannels() = default;

    /// Readable when a port bound through this handle is pending. The fd
    /// is non-blocking; wrap it in an Asio stream_descriptor and async_wait.
    virtual int fd() const = 0;

    /// Binds to `remote_port` of `domid`; returns the local port.
    virtual Result<Port> bind_interdomain(DomId domid, Port remote_port) = 0;

    /// Unbinds a local port.
    virtual Result<void> unbind(Port local_port) = 0;

    /// Sends an event on a local port.
    virtual Result<void> notify(Port local_port) = 0;

    /// Next pending local port, or nullopt when none is pending. The port
    /// stays masked until unmask().
    virtual Result<std::optional<Port>> pending() = 0;

    /// Unmasks a local port returned by pending().
    virtual Result<void> unmask(Port local_port) = 0;

    /// Restricts the handle to one domain (xenevtchn_restrict).
    virtual Result<void> restrict_to(DomId domid) = 0;

    /// Number of ports currently bound through this handle.
    virtual std::size_t bound_ports() const = 0;
};

}  // namespace xv::xen
