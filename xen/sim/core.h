// SPDX-License-Identifier: GPL-2.0-only
// xen/sim internals: the state of the simulated hypervisor shared by every
// handle, guest facade and the toolstack side. Private to xen/sim.
//
// Ownership:
//
//   SimHypervisorImpl --shared_ptr--> Core <--shared_ptr-- every handle
//                                       |                  (mapper, evtchn,
//                                       |                   device model,
//                                       |                   xenstore, domctl)
//                                       +--> Domain (shared_ptr; also held by
//                                       |     SimGuest facades and by grant
//                                       |     mappings, so guest memory
//                                       |     outlives a destroyed domain
//                                       |     while it is mapped)
//                                       +--> Store (xenstore tree)
//
// Domain lifecycle:
//
//   create_domain()        destroy_domain()               last backend unmap
//   -------------> Running ----------------> Dying/zombie ------------------> gone
//                     |                          (when nothing is mapped)       ^
//                     +---------------------------------------------------------+
//
// Locking: Core::mu guards domains, event channels, the ioreq server
// registry and interrupt state. A domain's grant table and its count of
// mapped pages have their own mutex (Domain::grant_mu), so that a grant map
// or unmap of one guest takes no process-wide lock; Domain::dying is written
// with both held, read with either. Each ioreq server has its own mutex for
// the slot handshake (a vCPU waits on it without holding Core::mu). The
// xenstore has its own mutex. Lock order: a GrantMapper handle's mutex, then
// Core::mu, then Domain::grant_mu, then Server::mu; the store mutex is never
// held together with Core::mu.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "xv/xen/sim.h"

namespace xv::xen::sim::detail {

class Store;
class EvtchnHandle;

/// Deletes a Store (defined where Store is complete).
struct StoreDeleter {
    void operator()(Store* s) const noexcept;
};
/// The xenstore tree with dom0's home.
std::unique_ptr<Store, StoreDeleter> make_store();
/// Writes /local/domain/<id>/{name,domid} (home owned by the domain) and
/// fires @introduceDomain.
void store_domain_created(Store& s, DomId domid, const std::string& name);
/// Removes /local/domain/<id>, drops the domain's watches and fires @releaseDomain.
void store_domain_released(Store& s, DomId domid);
/// xenstored goes away (every request fails with EIO) or comes back (every
/// watch of every connection fires once, as after a reconnect).
void store_set_up(Store& s, bool up);
/// Records that `dm` is the device model of `guest` (xenstored gives it
/// the guest's access rights) and writes /local/domain/<dm>/target, as the
/// whole toolstack step does.
void store_set_target(Store& s, DomId dm, DomId guest);
/// XS_SET_TARGET alone (xenstored's access rights, no key).
void store_set_xs_target(Store& s, DomId dm, DomId guest);

/// The first grant ref handed out (Linux reserves 0..7, GNTTAB_NR_RESERVED_ENTRIES).
inline constexpr GrantRef kFirstRef = 8;
/// Upper bound on a guest's grant table (entries).
inline constexpr GrantRef kMaxRefs = 1u << 20;
/// Upper bound on the refs of one map/copy call.
inline constexpr std::size_t kMaxBatch = 1u << 16;
/// First SPI number (Arm: NR_LOCAL_IRQS).
inline constexpr std::uint32_t kFirstSpi = 32;
/// One past the last SPI a simulated guest has (GICv3 max 1020).
inline constexpr std::uint32_t kSpiEnd = 1020;
/// Event-channel ports per domain.
inline constexpr Port kMaxPorts = 4096;

/// One grant table entry of a guest.
struct GrantEntry {
    bool in_use = false;
    bool revoked = false;
    bool readonly = false;
    DomId to = 0;
    std::uint64_t gfn = 0;
    std::uint32_t map_count = 0;  ///< backend mappings (pages) of this ref
};

/// One event-channel port of a domain.
struct PortEntry {
    enum State { Free, Unbound, Interdomain } state = Free;
    DomId remote_dom = 0;
    Port remote_port = 0;
    bool remote_closed = false;   ///< the other end was closed
    EvtchnHandle* owner = nullptr; ///< backend handle owning this port (backend domains)
    bool masked = false;          ///< delivered, not yet unmasked
    bool pending = false;         ///< fired while masked
    std::uint64_t received = 0;   ///< events delivered to this port (guest view)
};

/// The slot page and handshake state of one ioreq server.
struct ServerState {
    ServerState(DomId d, IoServId i, unsigned vcpus);
    ~ServerState();
    ServerState(const ServerState&) = delete;
    ServerState& operator=(const ServerState&) = delete;

    volatile void* slot(unsigned vcpu) { return static_cast<std::byte*>(page) + vcpu * 32; }

    DomId domid;
    IoServId id;
    unsigned vcpus;
    void* page = nullptr;              ///< ceil(vcpus*32/4096) 4 KiB-aligned pages
    std::size_t page_bytes = 0;
    int fd = -1;                       ///< eventfd: the events delivered to the backend (its evtchn fd)
    std::mutex mu;                     ///< guards the handshake below
    /// Xen's notify of vCPU `v`'s ioreq port, with `mu` held: as Linux's
    /// evtchn device, the first event masks the port and is delivered (true:
    /// the caller writes `fd` after unlocking); while the port is masked a
    /// notify only leaves it pending (no system call, no wake-up).
    bool notify_locked(unsigned v);
    /// The backend read `fd` (its events): unmasks every masked port, with
    /// `mu` held; true when a port had an event pending, which is then
    /// delivered again (the caller writes `fd` after unlocking).
    bool unmask_all_locked();
    /// Delivers an event to the backend: makes `fd` readable.
    void signal_fd();
    std::vector<std::uint8_t> port_masked;   ///< per vCPU: delivered, not yet unmasked
    std::vector<std::uint8_t> port_pending;  ///< per vCPU: notified while masked
    // Event counters of the ioreq ports (SimGuest::ioreq_events).
    std::atomic<std::uint64_t> notifies{0};     ///< notifications of a port by Xen
    std::atomic<std::uint64_t> deliveries{0};   ///< events written to fd (wake-ups of a waiting backend)
    std::atomic<std::uint64_t> event_reads{0};  ///< reads of fd by the backend (serve_pending)
    std::condition_variable cv;        ///< a slot was completed / the server stopped
    std::vector<std::uint64_t> gen;    ///< per-vCPU request generation
    /// Per vCPU: when the server completed its last request (IORESP_READY).
    std::vector<std::chrono::steady_clock::time_point> done_at;
    bool stopped = false;              ///< server destroyed or its domain died
    std::string stop_reason;
    // Claims (guarded by Core::mu).
    std::vector<std::pair<std::uint64_t, std::uint64_t>> mmio;  ///< inclusive ranges
    std::vector<std::uint32_t> pci;    ///< SBDFs (seg<<16|bus<<8|dev<<3|fn)
    /// Its IoreqServer object went in a ProcessExit: the server stays in
    /// Xen until destroy_ioreq_server or the domain's end (Core::mu).
    bool orphaned = false;
};

/// One simulated domain.
struct Domain {
    Domain() = default;
    ~Domain();
    Domain(const Domain&) = delete;
    Domain& operator=(const Domain&) = delete;

    DomId id = 0;
    std::string name;
    unsigned vcpus = 1;
    bool dying = false;                ///< written with Core::mu and grant_mu held
    bool paused = false;
    std::optional<DomId> target;

    // Memory (guarded by Core::mu except the immutable fd/base/pages).
    int memfd = -1;
    std::byte* mem = nullptr;          ///< the whole RAM, MAP_SHARED RW
    std::uint64_t pages = 0;
    std::uint64_t next_gfn = 0;

    // Grants (guarded by grant_mu; changes by the guest side also hold Core::mu).
    mutable std::mutex grant_mu;
    std::vector<GrantEntry> grants;    ///< index = ref
    std::uint64_t mapped_pages = 0;    ///< backend page mappings of this domain's refs

    // Event channels.
    std::vector<PortEntry> ports;      ///< index = port; port 0 is reserved

    // Ioreq servers.
    std::vector<std::shared_ptr<ServerState>> servers;
    IoServId next_server = 0;
    std::vector<std::unique_ptr<std::mutex>> vcpu_mu;  ///< one access in flight per vCPU

    // Interrupts.
    std::deque<IrqEvent> irq_log;
    std::map<std::uint32_t, bool> irq_level;
    std::map<std::uint32_t, std::uint64_t> irq_edges;
    std::vector<std::shared_ptr<std::function<void(const IrqEvent&)>>> irq_cbs;

    // Turnaround samples in microseconds (own lock: read by tests any time):
    // trap -> vCPU resumed, and trap -> the server completed it (same index).
    mutable std::mutex stats_mu;
    std::vector<double> turnaround_us;
    std::vector<double> completed_us;
    std::size_t turnaround_next = 0;   ///< ring position once the cap is reached
};

/// Live resources counted for leak tests.
struct ResourceCounters {
    std::atomic<std::uint64_t> ioreq_servers{0};
    std::atomic<std::uint64_t> stale_ioreq_servers{0};  ///< of them: orphaned
    std::atomic<std::uint64_t> bound_ports{0};
    std::atomic<std::uint64_t> mapped_grant_pages{0};
    std::atomic<std::uint64_t> open_handles{0};
};

/// Boundary counters (BoundaryStats), atomics.
struct BoundaryCounters {
    std::atomic<std::uint64_t> grant_map_calls{0};
    std::atomic<std::uint64_t> grant_pages_mapped{0};
    std::atomic<std::uint64_t> grant_unmap_calls{0};
    std::atomic<std::uint64_t> grant_copy_calls{0};
    std::atomic<std::uint64_t> resource_maps{0};
};

/// The whole simulated hypervisor.
class Core : public std::enable_shared_from_this<Core> {
public:
    explicit Core(SimOptions opts);
    ~Core();

    const SimOptions opts;

    mutable std::mutex mu;
    std::condition_variable irq_cv;    ///< an interrupt was raised (with mu)
    std::condition_variable evt_cv;    ///< a guest port received an event (with mu)
    std::map<DomId, std::shared_ptr<Domain>> domains;  ///< live and zombie
    DomId next_domid = 1;
    std::optional<DomId> restricted;   ///< restrict_all()
    /// `restricted` for readers without Core::mu (set once, with it held):
    /// kUnrestricted or the domid.
    static constexpr std::uint32_t kUnrestricted = 0xffffffff;
    std::atomic<std::uint32_t> restricted_to{kUnrestricted};

    ResourceCounters res;
    BoundaryCounters stats;
    std::unique_ptr<Store, StoreDeleter> store;

    // --- helpers, called with `mu` held (suffix _locked) -------------------
    /// The domain, live or zombie; nullptr when unknown.
    Domain* find_locked(DomId domid) const;
    /// The live domain or an Error (ESRCH) naming `what`.
    Result<Domain*> live_locked(DomId domid, const char* what) const;
    /// EPERM when `domid` is outside the process-wide or the handle's restriction.
    Result<void> check_restrict_locked(DomId domid, const std::optional<DomId>& handle_restrict,
                                       const char* what) const;
    /// EPERM under XSM Silo when the backend and `guest` are both DomUs.
    Result<void> check_xsm_locked(DomId guest, const char* what) const;
    /// EPERM unless this process may use device-model ops on `guest`
    /// (dom0, or a domain whose target is `guest`).
    Result<void> check_dm_priv_locked(DomId guest, const char* what) const;
    /// Drops a dying domain once nothing maps its grants any more (takes
    /// the domain's grant_mu).
    void maybe_release_locked(DomId domid);

    // --- domains ------------------------------------------------------------
    Result<DomId> create_domain(const DomainConfig& cfg, std::optional<DomId> want = std::nullopt);
    Result<void> destroy_domain(DomId domid);
    /// xc_domain_set_target(dm, guest) by dom0 (Xen's side only: xenstored's is store_set_xs_target).
    Result<void> set_target(DomId dm, DomId guest);

    // --- grants ---------------------------------------------------------------
    /// Grants `n` frames from `gfn` under consecutive refs.
    Result<GrantRef> grant_range(DomId domid, std::uint64_t gfn, std::uint32_t n, DomId to, bool readonly);

    // --- interrupts -----------------------------------------------------------
    /// Records an interrupt for `domid` and calls the guest's callbacks.
    Result<void> raise_irq(DomId domid, const IrqEvent& ev, const std::optional<DomId>& handle_restrict);

    // --- vCPU traps -----------------------------------------------------------
    /// Runs one trapped access of `vcpu`: finds the claiming server, posts
    /// the request, waits for completion or the timeout.
    Result<std::uint64_t> vcpu_access(const std::shared_ptr<Domain>& d, unsigned vcpu, IoRequest req);
    /// Sends IOREQ_TYPE_INVALIDATE to every server of the domain.
    Result<void> vcpu_invalidate(const std::shared_ptr<Domain>& d, unsigned vcpu);

private:
    /// Polls `slot` (yielding, until `until`) for the server's answer; the
    /// caller then takes the answer under the server's mutex or sleeps.
    static void spin_for_response(volatile void* slot, std::chrono::steady_clock::time_point until);
    Result<std::uint64_t> run_on_server(const std::shared_ptr<Domain>& d, const std::shared_ptr<ServerState>& s,
                                        IoRequest req);
};

/// The guest-side facade of one domain.
std::shared_ptr<SimGuest> make_guest(std::shared_ptr<Core> core, std::shared_ptr<Domain> dom);

/// Handle factories.
std::unique_ptr<GrantMapper> make_grant_mapper(std::shared_ptr<Core> core);
std::unique_ptr<EventChannels> make_event_channels(std::shared_ptr<Core> core);
std::unique_ptr<DeviceModel> make_device_model(std::shared_ptr<Core> core);
std::unique_ptr<DomainControl> make_domain_control(std::shared_ptr<Core> core);
/// A xenstore connection of domain `domid` (privileged when 0).
std::unique_ptr<XenStore> make_xenstore(std::shared_ptr<Core> core, DomId domid, bool count_handle);

/// Delivers an event to backend port `local_port` (its entry) owned by `h`
/// (called with Core::mu held).
void evtchn_deliver_locked(EvtchnHandle* h, Port local_port, PortEntry& entry);

/// "dom<N>".
std::string dom_name(DomId d);
/// "0x<hex>".
std::string hex(std::uint64_t v);

}  // namespace xv::xen::sim::detail
