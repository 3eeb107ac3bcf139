// SPDX-License-Identifier: GPL-2.0-only
// xen/sim: an in-process simulated hypervisor.
//
// It is the hypervisor of every test above xen/ and of `xen-virtiod demo`.
// The backend side sees the ordinary xv::xen::Hypervisor interface; tests
// and the demo drive the *guest* side through SimGuest (memory, grants,
// vCPUs that trap on MMIO, interrupts) and the *toolstack* side through
// SimHypervisor (create/destroy domains, write xenstore as libxl does).
//
//   test / demo guest driver           backend under test
//   ------------------------           ------------------
//   SimGuest::mmio_write() --ioreq-->  IoreqServer::serve_pending()
//        (blocks, timed)   <-resp---        (completes)
//   SimGuest::grant()                  GrantMapper::map() (RO/RW enforced)
//   SimGuest irq log      <--------    DeviceModel::set_irq_level()
//
// Semantics follow Xen: mapping a revoked ref, a ref granted to another
// domain, or a RO ref with writable=true fails (EINVAL/EPERM as Xen);
// with SimOptions::protect_pages, a write through a read-only mapping
// faults (SIGSEGV) as it does on Xen. Destroying a domain while the backend
// still maps its grants leaves it a zombie until the last unmap.
//
// Domain lifecycle:
//
//   create_domain()           destroy_domain()             last unmap of its grants
//   ---------------> Running -----------------> Zombie (dying) -----------------------> gone
//                       |     (servers stop, xenstore home removed,                     ^
//                       |      @releaseDomain fires)                                    |
//                       +---------------- destroy_domain() with nothing mapped ---------+
//
// One trapped access of a vCPU (one in flight per vCPU):
//
//   post slot READY, signal server fd --> wait --+-- IORESP_READY --> value, slot NONE
//                                                +-- ioreq_timeout --> ETIMEDOUT, slot NONE
//                                                +-- server/domain gone --> ESRCH
//
// Every request type reaches the IoreqHandler, IoreqType::Invalidate too
// (SimGuest::invalidate): the handler only has to answer it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "xv/xen/hypervisor.h"

namespace xv::xen::sim {

struct SimOptions {
    /// Map grants with real page protections (RO faults on write). When
    /// false, mappings of contiguous guest frames are plain pointers into
    /// guest memory (for benchmarks); RO is then only checked at map time.
    bool protect_pages = true;
    /// The domid the backend (this process) runs in.
    DomId self_domid = 0;
    /// How long a simulated vCPU waits for its ioreq before reporting a hang.
    std::chrono::milliseconds ioreq_timeout{10000};
    /// How long a trapped vCPU polls its ioreq slot (yielding) for the
    /// answer before it sleeps until the server's notification. 0: it
    /// sleeps at once, as a vCPU on Xen does (blocked until the answer and
    /// its event; it uses no CPU meanwhile).
    std::chrono::microseconds vcpu_spin{50};
    /// The XSM mode Xen runs with. Under Silo, grant maps/copies and event
    /// channels between two DomUs (neither of them dom0) fail with EPERM,
    /// as on Debian's arm64 Xen (lab-notes.md, "A backend in a driver domain").
    XsmMode xsm = XsmMode::Dummy;
};

struct DomainConfig {
    std::string name;
    std::uint64_t memory_pages = 4096;  ///< guest RAM, 4 KiB pages
    unsigned vcpus = 2;
    /// Created paused (`xl create -p`). Only DomainControl::info reports
    /// it; the simulated vCPUs trap either way.
    bool paused = false;
};

/// Timing of one trapped access, from the vCPU's trap to its completion.
struct TurnaroundStats {
    std::uint64_t count = 0;
    double p50_us = 0, p99_us = 0, p999_us = 0, max_us = 0;
};

/// The irq_count() key that counts MSIs.
inline constexpr std::uint32_t kMsiIrq = 0xffffffff;
/// How many entries SimGuest::irq_log() keeps.
inline constexpr std::size_t kIrqLogMax = 65536;

/// An interrupt the backend raised for a guest.
struct IrqEvent {
    enum Kind { Spi, Msi, Intx } kind = Spi;
    std::uint32_t irq = 0;      ///< SPI number, or INTx pin
    bool level = false;
    std::uint64_t msi_addr = 0;
    std::uint32_t msi_data = 0;
};

class SimHypervisor;

/// The guest side of one simulated domain. Thread-safe.
class SimGuest {
public:
    virtual ~SimGuest() = default;

    virtual DomId domid() const = 0;
    virtual const std::string& name() const = 0;
    virtual unsigned vcpus() const = 0;

    // --- memory -----------------------------------------------------------
    /// Allocates `n` consecutive guest frames; returns the first gfn.
    virtual Result<std::uint64_t> alloc_pages(std::uint64_t n) = 0;
    /// Host pointer to guest-physical address `gpa` (guest driver's own view).
    virtual std::byte* gpa_ptr(std::uint64_t gpa) = 0;
    virtual Result<void> write(std::uint64_t gpa, std::span<const std::byte> data) = 0;
    virtual Result<void> read(std::uint64_t gpa, std::span<std::byte> out) = 0;

    // --- grants -----------------------------------------------------------
    /// Grants frame `gfn` to domain `to`; returns the ref.
    virtual Result<GrantRef> grant(std::uint64_t gfn, DomId to, bool readonly) = 0;
    /// Grants `n` frames starting at `gfn` under CONSECUTIVE refs (as Linux
    /// gnttab_alloc_grant_reference_seq does); returns the first ref.
    virtual Result<GrantRef> grant_range(std::uint64_t gfn, std::uint32_t n, DomId to, bool readonly) = 0;
    /// Ends access like gnttab_end_foreign_access_ref: fails with EBUSY
    /// while the backend maps the ref.
    virtual Result<void> end_access(GrantRef ref) = 0;
    /// Revokes a ref even while mapped (existing mappings stay valid, as on
    /// Xen; new maps fail).
    virtual void revoke(GrantRef ref) = 0;
    /// Allocates `len` bytes (page aligned + `offset`), grants the pages
    /// consecutively and returns the grant DMA address the frontend would
    /// put in a descriptor (bit 63 | ref << 12 | offset).
    virtual Result<std::uint64_t> alloc_dma(std::uint64_t len, DomId to, bool readonly, std::uint32_t offset = 0) = 0;
    /// Host pointer to the buffer behind a grant DMA address from alloc_dma.
    virtual std::byte* dma_ptr(std::uint64_t dma_addr) = 0;
    /// Number of this guest's refs currently mapped by a backend.
    virtual std::uint64_t mapped_refs() const = 0;

    // --- event channels (guest side) --------------------------------------
    /// Allocates an unbound port that domain `remote` may bind to
    /// (EVTCHNOP_alloc_unbound); returns the guest's port.
    virtual Result<Port> alloc_unbound(DomId remote) = 0;
    /// Sends an event on a guest port (EVTCHNOP_send); a no-op while the
    /// port is not bound yet, as on Xen.
    virtual Result<void> notify(Port port) = 0;
    /// Closes a guest port (EVTCHNOP_close); the backend's end stays bound
    /// but no longer delivers.
    virtual Result<void> close_port(Port port) = 0;
    /// Events the backend sent to guest port `port` so far.
    virtual std::uint64_t notifications(Port port) const = 0;
    /// Waits until notifications(port) > `seen` or the timeout passes;
    /// returns the new count.
    virtual std::uint64_t wait_notification(Port port, std::uint64_t seen, std::chrono::milliseconds timeout) = 0;

    // --- vCPUs (block like a real trap) ------------------------------------
    /// MMIO read of `size` bytes at `addr` by `vcpu`. Blocks until an ioreq
    /// server completes it; an error when nothing claims the address (Arm:
    /// data abort) or the server does not answer within the timeout.
    virtual Result<std::uint64_t> mmio_read(unsigned vcpu, std::uint64_t addr, unsigned size) = 0;
    virtual Result<void> mmio_write(unsigned vcpu, std::uint64_t addr, unsigned size, std::uint64_t value) = 0;
    /// x86-style PCI config access (IOREQ_TYPE_PCI_CONFIG) to a claimed SBDF.
    virtual Result<std::uint64_t> pci_config_read(unsigned vcpu, Sbdf sbdf, std::uint32_t reg, unsigned size) = 0;
    virtual Result<void> pci_config_write(unsigned vcpu, Sbdf sbdf, std::uint32_t reg, unsigned size,
                                          std::uint64_t value) = 0;
    /// Sends IOREQ_TYPE_INVALIDATE (size 4, write, data ~0) to every ioreq
    /// server of the domain, as Xen does once per guest, and waits for each
    /// to acknowledge it (the handler sees IoreqType::Invalidate and only
    /// has to answer). Ok when no server exists.
    virtual Result<void> invalidate(unsigned vcpu) = 0;
    /// Turnaround of every trapped access since the last reset_turnaround():
    /// from the trap to the vCPU running again.
    virtual TurnaroundStats turnaround() const = 0;
    /// The same accesses from the trap to the ioreq server's completion
    /// (IORESP_READY written), without the vCPU's own wake-up after it.
    virtual TurnaroundStats completion() const = 0;
    virtual void reset_turnaround() = 0;

    // --- ioreq event channels (tests of the backend's side) -----------------
    /// Counters over the ioreq ports of the domain's ioreq servers in Xen.
    /// A port is modelled as Linux's evtchn device shows it to a backend:
    /// the first event masks it and makes the backend's fd readable; events
    /// while it is masked only leave it pending; serve_pending() reads the
    /// fd and unmasks, delivering a pending event again.
    struct IoreqEvents {
        std::uint64_t notifies = 0;    ///< notifications of a vCPU's ioreq port by Xen
        std::uint64_t deliveries = 0;  ///< events made readable on the backend's fd (redeliveries too)
        std::uint64_t reads = 0;       ///< reads of the event channel by the backend (serve_pending)
    };
    virtual IoreqEvents ioreq_events() const = 0;
    /// Notifies `vcpu`'s ioreq port of every server with no ioreq posted
    /// (a spurious or repeated event). Does not wait.
    virtual Result<void> kick_ioreq_port(unsigned vcpu) = 0;
    /// Raw contents of one ioreq slot (public/hvm/ioreq.h ioreq_t), values
    /// Xen itself would not write included.
    struct RawIoreq {
        std::uint8_t state = 1;  ///< state nibble (1 = STATE_IOREQ_READY); only the low 4 bits are kept
        std::uint8_t type = 1;   ///< IOREQ_TYPE_* (1 = COPY)
        bool is_write = false;
        bool data_is_ptr = false;
        std::uint64_t addr = 0;
        std::uint64_t data = 0;
        std::uint32_t size = 4;
        std::uint32_t count = 1;
    };
    /// Writes `vcpu`'s slot of the domain's first ioreq server with `r`
    /// (the state last, release) and notifies the port, as Xen does, but
    /// does not wait for an answer; the vCPU's next access takes the slot
    /// back. Only for tests of what a backend does with such a slot.
    virtual Result<void> post_raw_ioreq(unsigned vcpu, const RawIoreq& r) = 0;
    /// That slot now (state nibble and data).
    virtual Result<RawIoreq> raw_ioreq(unsigned vcpu) const = 0;

    // --- interrupts -------------------------------------------------------
    /// Every interrupt raised for this guest, in order (the last
    /// kIrqLogMax entries).
    virtual std::vector<IrqEvent> irq_log() const = 0;
    /// Count of rising edges (level 0 -> 1) of SPI `irq`, plus MSIs when
    /// irq is kMsiIrq (0xffffffff). Rising edges of PCI INTx pin p (0..3)
    /// count under irq p (SPIs start at 32, so they never collide).
    virtual std::uint64_t irq_count(std::uint32_t irq) const = 0;
    /// Waits until irq_count(irq) > `seen` or the timeout passes; returns
    /// the new count.
    virtual std::uint64_t wait_irq(std::uint32_t irq, std::uint64_t seen, std::chrono::milliseconds timeout) = 0;
    /// Called (on the backend's thread) for each interrupt raised.
    virtual void on_irq(std::function<void(const IrqEvent&)> cb) = 0;
};

/// Where libxl would put a virtio device (xl.cfg `virtio = [...]`).
struct VirtioDeviceSpec {
    DomId frontend = 0;
    DomId backend = 0;
    unsigned devid = 0;
    std::string type = "virtio,device";  ///< DT compatible
    std::string transport = "mmio";
    bool grant_usage = true;
    std::uint64_t base = 0x02000000;
    std::uint32_t irq = 33;
};

/// Where xl 4.17 would put `disk = [..., specification=virtio]`.
struct VirtioDiskSpec {
    DomId frontend = 0;
    DomId backend = 0;
    unsigned devid = 51712;
    std::string params;  ///< image path
    bool writable = true;
    bool grant_usage = true;
    std::uint64_t base = 0x02000000;  ///< written in DECIMAL, as 4.17 does
    std::uint32_t irq = 33;
};

/// While one is alive on a thread, backend objects destroyed on that
/// thread are released the way the kernel releases a dead process's
/// descriptors, not by our code's orderly calls: grant maps and event
/// channels go with their handles, but an ioreq server stays in Xen, its
/// ranges still claimed and its vCPU accesses unanswered, until
/// DeviceModel::destroy_ioreq_server or the domain's destruction
/// (public/hvm/dm_op.h; Xen keeps no link from a server to a process).
/// Tests wrap the teardown of a "killed" worker in one.
class ProcessExit {
public:
    ProcessExit();
    ~ProcessExit();
    ProcessExit(const ProcessExit&) = delete;
    ProcessExit& operator=(const ProcessExit&) = delete;
    /// True on a thread inside a ProcessExit.
    static bool active();
};

/// The simulated hypervisor. Create with SimHypervisor::create().
class SimHypervisor : public Hypervisor {
public:
    static std::shared_ptr<SimHypervisor> create(SimOptions opts = {});

    /// Creates a domain (xenstore /local/domain/<id> with name and domid).
    virtual Result<DomId> create_domain(const DomainConfig& cfg) = 0;
    /// Destroys a domain: its ioreq servers stop, its xenstore home goes,
    /// @releaseDomain fires; while grants stay mapped it lingers as a zombie.
    virtual Result<void> destroy_domain(DomId domid) = 0;
    /// Pauses or unpauses a domain (`xl pause`/`xl unpause`), as reported
    /// by DomainControl::info.
    virtual Result<void> set_paused(DomId domid, bool paused) = 0;
    /// The guest side of a live domain (nullptr when unknown or destroyed).
    virtual std::shared_ptr<SimGuest> guest(DomId domid) = 0;
    /// Domains destroyed but still referenced by backend mappings.
    virtual std::vector<DomId> zombies() const = 0;
    /// Gives `device_model` device-model privilege over `guest` as the
    /// toolstack in dom0 does (xc_domain_set_target, xenstored's
    /// XS_SET_TARGET and the xenstore `target` key).
    /// A driver-domain backend (SimOptions::self_domid != 0) needs it for
    /// every DeviceModel operation on the guest. EINVAL when a target is set.
    /// `xenstored = false` leaves out XS_SET_TARGET (a toolstack that only
    /// calls xc_domain_set_target and writes the key).
    virtual Result<void> set_target(DomId device_model, DomId guest, bool xenstored = true) = 0;

    /// A privileged xenstore connection (the toolstack's view).
    virtual XenStore& toolstack_store() = 0;
    /// Takes xenstored away (false: every request of every connection,
    /// the toolstack's too, fails with EIO; no watch fires) or brings it
    /// back (true: every registered watch fires once, as libxenstore
    /// re-registers them after a reconnect).
    virtual void set_xenstore_up(bool up) = 0;
    /// Writes a virtio device exactly as libxl_virtio.c does.
    virtual Result<void> add_virtio_device(const VirtioDeviceSpec& spec) = 0;
    /// Writes a 4.17 `virtio_disk` exactly as libxl_disk.c does.
    virtual Result<void> add_virtio_disk(const VirtioDiskSpec& spec) = 0;

    /// Live resources held by backends (for leak tests).
    struct Resources {
        std::uint64_t ioreq_servers = 0;        ///< every server in Xen, stale ones too
        std::uint64_t stale_ioreq_servers = 0;  ///< of them: left by a dead process (ProcessExit)
        std::uint64_t bound_ports = 0;
        std::uint64_t mapped_grant_pages = 0;
        std::uint64_t open_handles = 0;
    };
    virtual Resources resources() const = 0;
};

}  // namespace xv::xen::sim
