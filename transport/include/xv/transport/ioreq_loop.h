// SPDX-License-Identifier: GPL-2.0-only
// The asynchronous ioreq loop of one guest: owns its xen::IoreqServer,
// waits on the server's fd with Asio, and answers every ioreq at once from
// register state by routing it to a register handler.
//
//   xen::IoreqServer fd --async_wait--> serve_pending() on the loop strand
//                  (set_poll: then any_ready()/serve_ready() on the slots in
//                   memory; serve_pending() and one more look before the wait)
//        IOREQ_TYPE_COPY        -> range map: mmio windows, ECAM, BAR windows
//        IOREQ_TYPE_PCI_CONFIG  -> PCI function by SBDF (x86, map_pcidev)
//        INVALIDATE/TIMEOFFSET  -> acknowledged
//        unclaimed / data_is_ptr / count > 1 / odd size
//                               -> reads all ones, writes ignored, logged
//                                  (rate-limited, naming domid and address)
//
// Lifecycle:
//
//   Created --start()--> Running --stop()--> Stopping --------------------> Stopped
//     add_*() claims       serving             still serving while every      ranges unmapped,
//     ranges (map_mmio)                        device resets (quiesce)        server destroyed,
//     before the guest                                                        done()
//     can touch them
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/strand.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "xv/log.h"
#include "xv/result.h"
#include "xv/transport/pci.h"
#include "xv/transport/pci_host.h"
#include "xv/transport/region.h"
#include "xv/xen/ioreq.h"

namespace xv::transport {

/// The ioreq loop of one guest.
class IoreqLoop : public std::enable_shared_from_this<IoreqLoop> {
public:
    /// Lifecycle state (drawn above).
    enum class State { Created, Running, Stopping, Stopped };

    /// Counters of the loop.
    struct Stats {
        std::uint64_t served = 0;     ///< ioreqs answered
        std::uint64_t wakeups = 0;    ///< fd readiness events handled
        std::uint64_t unclaimed = 0;  ///< addresses nothing claims
        std::uint64_t malformed = 0;  ///< data_is_ptr, count > 1, bad size, bad type
        std::uint64_t polled = 0;     ///< ioreqs served by the poll window (set_poll), without a wake-up
        std::uint64_t polls_in_vain = 0;    ///< poll rounds that ended without an ioreq
        std::uint64_t poll_in_vain_ns = 0;  ///< CPU time those rounds polled (drawn on the budget)
        std::int64_t poll_window_ns = 0;    ///< the adapted window now (0 .. set_poll())
        std::uint64_t polls_contended = 0;  ///< of polls_in_vain: stopped because another task wanted the CPU
    };

    /// Creates the ioreq server of `domid` through `dm` (which must outlive
    /// the loop) and the loop around it.
    static Result<std::shared_ptr<IoreqLoop>> create(boost::asio::any_io_executor ex, xen::DeviceModel& dm,
                                                     xen::DomId domid);
    /// Wraps an existing server (tests, or a caller that set it up itself).
    static std::shared_ptr<IoreqLoop> wrap(boost::asio::any_io_executor ex, std::unique_ptr<xen::IoreqServer> server);
    ~IoreqLoop();

    /// Claims [base, base + region_size) with map_mmio and routes it to
    /// `region`. Call before start() or on the loop strand.
    Result<void> add_region(std::uint64_t base, std::shared_ptr<MmioRegion> region, std::string name);
    /// Claims the ECAM and BAR windows of an Arm PCI host.
    Result<void> add_pci_host(std::shared_ptr<PciHost> host);
    /// x86: claims `sbdf` (map_pcidev); config accesses arrive as
    /// IoreqType::PciConfig; BAR0 is claimed and routed whenever the guest
    /// programs it with memory decoding on.
    Result<void> add_pci_function(xen::Sbdf sbdf, std::shared_ptr<PciTransport> fn);

    /// Starts waiting on the server's fd.
    void start();
    /// Orderly stop: keeps serving while every device quiesces (async
    /// reset), then unmaps every range, destroys the server and calls
    /// `done` (on the loop strand).
    void stop(std::function<void()> done);

    /// After serving, keep polling the server for up to `window` before
    /// waiting on its fd again (0, the default: wait at once). A guest's
    /// register accesses come in bursts; polling answers the next one
    /// without the sleep and wake-up of the fd wait, whose tail on a busy
    /// or idle-halted host is tens of microseconds.
    ///
    /// The poll reads the ioreq slots in memory (IoreqServer::any_ready,
    /// serve_ready), not the event channel: an access costs the loop no
    /// system call, and Xen's notifications meanwhile hit a masked port.
    /// Before the fd wait the loop reads those events and unmasks their
    /// ports (serve_pending), then looks at the slots once more, so an
    /// ioreq that came meanwhile is served, not slept on.
    ///
    /// `window` is a maximum: the loop adapts the window it uses between 0
    /// and it (IoreqLoop::Stats::poll_window_ns):
    ///
    ///   woken after sleeping < window   the next access came soon after
    ///                                   the last: double the window
    ///                                   (from kPollGrowStart), up to `window`
    ///   woken after sleeping >= window  the guest is not in a burst: halve
    ///                                   the window (below kPollGrowStart: 0)
    ///
    /// so that a guest that does not trap costs no polling at all. A poll
    /// stops (and halves the window) when a yield between two looks comes
    /// back after more than kPollContended: another task ran, so the CPU
    /// is wanted and polling would only delay that task. A poll
    /// that finds nothing draws on a budget that grows by 1/kPollBudgetShare
    /// of the time that passes (at most kPollCreditMax banked): polling in
    /// vain costs at most 1/kPollBudgetShare of one CPU per loop on average,
    /// whatever the guest does. One poll round serves at most
    /// kMaxPollServes ioreqs before the strand runs other work; the poll
    /// then goes on after that work (no fd wait in between).
    void set_poll(std::chrono::microseconds window) noexcept { poll_ns_ = std::int64_t(window.count()) * 1000; }
    /// The maximum set_poll() set.
    std::chrono::microseconds poll_window() const noexcept {
        return std::chrono::microseconds(poll_ns_.load(std::memory_order_relaxed) / 1000);
    }
    /// Whether a poll stops when its CPU is wanted (kPollContended; on by
    /// default). Off: polls the whole window whatever else runs (tests of
    /// the window's rules on a busy host).
    void set_poll_gives_way(bool on) noexcept { gives_way_ = on; }
    static constexpr std::chrono::nanoseconds kPollGrowStart{std::chrono::microseconds(10)};
    static constexpr unsigned kPollBudgetShare = 10;
    static constexpr std::chrono::nanoseconds kPollContended{std::chrono::microseconds(20)};
    static constexpr std::chrono::nanoseconds kPollCreditMax{std::chrono::milliseconds(2)};
    static constexpr unsigned kMaxPollServes = 256;
    /// A poll round looks at the ioreq slots without yielding for this
    /// long before it yields between looks.
    static constexpr std::chrono::nanoseconds kPollSpin{std::chrono::microseconds(2)};

    /// The steps on the way to the fd wait, where an ioreq may come while
    /// the loop is not looking (set_sleep_hook).
    enum class SleepStep {
        PollEnded,  ///< the poll found nothing more; its events not read yet
        Rechecked,  ///< events read, ports unmasked, slots looked at: next is the fd wait
    };
    /// Calls `hook` on the strand at each SleepStep (tests: an ioreq posted
    /// exactly there must still be served). Set before start() or on the
    /// loop strand.
    void set_sleep_hook(std::function<void(SleepStep)> hook) { sleep_hook_ = std::move(hook); }

    /// Routes and answers one ioreq (what serve_pending calls; public for
    /// benchmarks of the register path alone).
    std::uint64_t handle(const xen::IoRequest& req);

    State state() const { return state_.load(); }
    Stats stats() const;
    xen::DomId domid() const noexcept { return domid_; }
    /// The id of the loop's ioreq server in Xen (the same after stop()).
    xen::IoServId server_id() const noexcept { return server_id_; }
    /// The strand that serves the ioreqs.
    boost::asio::strand<boost::asio::any_io_executor>& strand() noexcept { return strand_; }

private:
    IoreqLoop(boost::asio::any_io_executor ex, std::unique_ptr<xen::IoreqServer> server);

    struct Route {
        std::uint64_t end;  ///< inclusive
        std::shared_ptr<MmioRegion> region;
        std::string name;
    };

    void arm();
    void on_ready();
    /// Serves, polls, then goes on (posted) or arm()s; `polling`: the
    /// continuation of a poll that was still finding work (counts as polled).
    void serve_and_poll(bool polling);
    unsigned serve_now(bool polled = false);  ///< polled: found by poll_for_more()
    /// Serves the READY slots found in memory (IoreqServer::serve_ready),
    /// counted as polled; their events are left pending (events_left_).
    unsigned serve_from_memory();
    /// True when it stopped at kMaxPollServes (the guest is still trapping).
    bool poll_for_more();
    void adapt_window(std::chrono::steady_clock::time_point woken);
    bool readable_now() const;
    void drain_extra();
    void on_bar_change(std::uint32_t sbdf, std::optional<std::uint64_t> old_base,
                       std::optional<std::uint64_t> new_base);
    void finish_stop(std::function<void()> done);
    Result<void> add_route_locked(std::uint64_t base, std::uint64_t size, std::shared_ptr<MmioRegion> region,
                                  std::string name);

    boost::asio::any_io_executor ex_;
    boost::asio::strand<boost::asio::any_io_executor> strand_;
    std::unique_ptr<xen::IoreqServer> server_;
    xen::DomId domid_;
    xen::IoServId server_id_;
    boost::asio::posix::stream_descriptor sd_;
    std::atomic<State> state_{State::Created};

    mutable std::mutex mu_;  ///< guards routes_, pci_, quiescers_
    std::map<std::uint64_t, Route> routes_;
    std::unordered_map<std::uint32_t, std::shared_ptr<PciTransport>> pci_;
    std::vector<std::function<void(std::function<void()>)>> quiescers_;

    std::atomic<std::uint64_t> served_{0}, wakeups_{0}, unclaimed_{0}, malformed_{0}, polled_{0};
    std::atomic<std::int64_t> poll_ns_{0};  ///< set_poll(): the maximum window
    // Adaptive polling (set_poll), used on the strand only; the atomics are
    // read by stats().
    std::atomic<std::int64_t> window_ns_{0};  ///< the window now
    std::atomic<bool> gives_way_{true};       ///< set_poll_gives_way()
    std::chrono::steady_clock::time_point asleep_since_{};  ///< the fd wait began (arm())
    std::int64_t credit_ns_ = kPollCreditMax.count();        ///< budget for polls in vain
    std::chrono::steady_clock::time_point credit_at_{};     ///< when credit_ns_ was last topped up
    std::atomic<std::uint64_t> polls_in_vain_{0}, poll_in_vain_ns_{0}, polls_contended_{0};
    /// serve_from_memory() answered ioreqs whose events are still pending
    /// (ports masked): read and unmask them before the fd wait (strand only).
    bool events_left_ = false;
    std::function<void(SleepStep)> sleep_hook_;  ///< set_sleep_hook()
    log::RateLimit rl_;
};

}  // namespace xv::transport
