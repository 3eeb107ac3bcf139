// SPDX-License-Identifier: GPL-2.0-only
// The ioreq server and the device-model operations on one guest.
//
// Protocol (public/hvm/ioreq.h): one 32-byte ioreq slot per vCPU in a page
// mapped with acquire_resource (the ioreq page only, never guest RAM).
//
//   vCPU traps -> Xen fills slot, state = READY, signals the vCPU's port
//   server:  pending port -> slot READY -> state = INPROCESS
//            handle (read: fill data) -> state = IORESP_READY -> notify
//   Xen resumes the vCPU (it was blocked all along: answer quickly!)
//
// A server can also be polled in memory (any_ready / serve_ready): the
// slot's state says READY before Xen notifies the port, so a loop that is
// awake finds the ioreq with no system call. The event Xen then sends
// stays pending, its port masked by the kernel until the event is read:
//
//   poll:   any_ready() -> serve_ready()      (events left pending, ports masked)
//   sleep:  serve_pending() (read events, unmask ports, serve what they name)
//           -> any_ready() once more -> wait on fd()
//
// Setup order (create -> map pages -> enable -> bind per-vCPU ports ->
// map ranges) is handled inside DeviceModel::create_ioreq_server().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "xv/result.h"
#include "xv/xen/types.h"

namespace xv::xen {

/// IOREQ_TYPE_*.
enum class IoreqType : std::uint8_t {
    Pio = 0,
    Copy = 1,  ///< MMIO
    PciConfig = 2,
    TimeOffset = 7,
    Invalidate = 8,
};

/// A decoded ioreq (a copy of the slot, taken once: the guest cannot change
/// it under us).
struct IoRequest {
    unsigned vcpu = 0;
    IoreqType type = IoreqType::Copy;
    bool is_write = false;      ///< dir == IOREQ_WRITE
    bool data_is_ptr = false;   ///< data is a guest address (never served: grants only)
    std::uint64_t addr = 0;     ///< MMIO/port address, or SBDF<<32|reg for PCI config
    std::uint64_t data = 0;     ///< value written (writes)
    std::uint32_t size = 0;     ///< bytes: 1, 2, 4 or 8
    std::uint32_t count = 1;    ///< rep count
};

/// PCI segment/bus/device/function.
struct Sbdf {
    std::uint16_t segment = 0;
    std::uint8_t bus = 0;
    std::uint8_t device = 0;
    std::uint8_t function = 0;
};

/// Handler for one ioreq: returns the value to answer a read with (ignored
/// for writes). Must not wait for device work.
using IoreqHandler = std::function<std::uint64_t(const IoRequest&)>;

/// One ioreq server registered for one guest. Destroying it unbinds its
/// ports, unmaps its ioreq page and destroys the server in Xen.
class IoreqServer {
public:
    virtual ~IoreqServer() = default;

    virtual IoServId id() const = 0;
    virtual DomId domid() const = 0;
    virtual unsigned vcpus() const = 0;

    /// Readable when some vCPU has an ioreq for us (non-blocking fd).
    virtual int fd() const = 0;

    /// Serves every ioreq that is ready now: calls `handler` for each and
    /// completes it (IORESP_READY + notify). Returns how many were served.
    /// Never blocks. It reads the pending events from fd() and unmasks
    /// their ports: an event whose slot is not READY (already answered by
    /// serve_ready(), or spurious) is consumed and ignored.
    virtual Result<unsigned> serve_pending(const IoreqHandler& handler) = 0;

    /// Whether some vCPU's slot is STATE_IOREQ_READY now, read from the
    /// shared ioreq page alone (the state of each slot, acquire): no system
    /// call, the event channel untouched. Any other state value is no
    /// request.
    virtual bool any_ready() const noexcept = 0;

    /// Serves the vCPUs whose slot is READY now, found in the ioreq page
    /// without reading the event channel, with the handshake of
    /// serve_pending() (public/hvm/ioreq.h: state read with acquire before
    /// the fields; the answer, then IORESP_READY with release, then notify
    /// of the vCPU's port). The events Xen sent for these ioreqs stay
    /// pending on fd(), and their ports masked: the kernel masks a port
    /// once it delivered an event until user space unmasks it, so Xen's
    /// notifications cost dom0 no interrupt while a loop polls. Before
    /// waiting on fd() a caller must therefore call serve_pending() (reads
    /// the events, unmasks the ports; an event that arrived while masked is
    /// delivered again) and then look at any_ready() once more: an ioreq
    /// whose event came while its port was masked is then either READY in
    /// memory or readable on fd(). Returns how many were served. Never
    /// blocks.
    virtual Result<unsigned> serve_ready(const IoreqHandler& handler) = 0;

    /// Claims guest-physical MMIO [start, end] (end inclusive).
    virtual Result<void> map_mmio(std::uint64_t start, std::uint64_t end) = 0;
    virtual Result<void> unmap_mmio(std::uint64_t start, std::uint64_t end) = 0;
    /// Claims a PCI device (x86: config accesses arrive as IoreqType::PciConfig).
    virtual Result<void> map_pcidev(Sbdf sbdf) = 0;
    virtual Result<void> unmap_pcidev(Sbdf sbdf) = 0;
};

/// Device-model operations on one guest (libxendevicemodel / simulator).
class DeviceModel {
public:
    virtual ~DeviceModel() = default;

    /// Creates, maps and enables an ioreq server for `domid`, with its
    /// per-vCPU event channels bound. `buffered` asks for buffered ioreqs
    /// (never needed by virtio; kept for completeness).
    virtual Result<std::unique_ptr<IoreqServer>> create_ioreq_server(DomId domid, bool buffered = false) = 0;

    /// Destroys ioreq server `id` of `domid` (XEN_DMOP_destroy_ioreq_server;
    /// its ranges are deregistered with it). For a server whose IoreqServer
    /// object is gone without destroying it: Xen keeps a server until the
    /// domain dies or this call, whatever happens to the process that
    /// created it. ENOENT when there is no such server.
    virtual Result<void> destroy_ioreq_server(DomId domid, IoServId id) = 0;

    /// Ids of the ioreq servers of `domid` that this domain emulates
    /// (another emulator domain's are not listed). Xen keeps at most 8 per
    /// domain (MAX_NR_IOREQ_SERVERS, ids 0..7) and libxendevicemodel has no
    /// list call: each id is probed with XEN_DMOP_get_ioreq_server_info
    /// without gfns (ENOENT: free; EPERM: another domain's server).
    virtual Result<std::vector<IoServId>> ioreq_servers(DomId domid) = 0;

    /// Arm: sets the level of an SPI of the guest (edge lines: raise, lower).
    virtual Result<void> set_irq_level(DomId domid, std::uint32_t irq, bool level) = 0;
    /// x86: injects an MSI.
    virtual Result<void> inject_msi(DomId domid, std::uint64_t addr, std::uint32_t data) = 0;
    /// x86: sets a PCI INTx line level (intx 0 = A .. 3 = D).
    virtual Result<void> set_pci_intx_level(DomId domid, Sbdf sbdf, std::uint8_t intx, bool level) = 0;

    /// Number of vCPUs of the guest.
    virtual Result<unsigned> nr_vcpus(DomId domid) = 0;

    /// Restricts this handle to one domain (xendevicemodel_restrict).
    virtual Result<void> restrict_to(DomId domid) = 0;
};

}  // namespace xv::xen
