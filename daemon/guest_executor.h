// SPDX-License-Identifier: GPL-2.0-only
// The I/O threads of one guest served in-process.
//
// On real Xen the Hardware Domain service runs one worker process per
// guest, so two guests never share an event loop: the kernel schedules one
// guest's threads against the other's. A daemon serving several guests in
// one process (`demo`, the simulator) gives each guest the same: its own
// io_context and threads. A guest that floods its queues then keeps its
// own threads busy; its neighbour's ioreqs and completions are not queued
// behind the flood in a shared FIFO, and the neighbour's threads, asleep
// most of the time, are woken by the kernel as soon as it has work.
//
// Teardown order (also what a crash of the guest's worker amounts to in
// process): halt() stops and joins the threads; drain() destroys every
// handler still queued or waiting (they may own descriptor chains, that is
// grant mappings, and I/O objects); only then may the session that owns
// the grant and device-model handles go; the io_context goes last.
//
//   Running --halt()--> Halted --drain()--> Drained --~GuestExecutor
//   (threads run io)    (joined)           (no handler left)
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace xv::daemon {

/// One guest's io_context and the threads that run it.
class GuestExecutor {
public:
    /// Starts `threads` threads (at least one) named "xv-dom<domid>".
    GuestExecutor(unsigned threads, unsigned domid);
    /// halt() and drain(); must not run on one of its own threads.
    ~GuestExecutor();
    GuestExecutor(const GuestExecutor&) = delete;
    GuestExecutor& operator=(const GuestExecutor&) = delete;

    boost::asio::any_io_executor executor() { return io_.get_executor(); }
    /// Stops the loop and joins the threads (idempotent). Handlers not yet
    /// run stay queued.
    void halt();
    /// After halt(): destroys every handler still queued or waiting for
    /// I/O, and the objects they own (idempotent).
    void drain();
    /// True when called on one of this executor's threads.
    bool on_own_thread() const;

private:
    /// io_context whose two-phase teardown (shutdown: handlers destroyed;
    /// destroy: services) can be split around the session's destruction.
    struct Io : boost::asio::io_context {
        using boost::asio::io_context::shutdown;
    };
    Io io_;
    std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guard_;
    std::vector<std::thread> threads_;
    bool drained_ = false;
};

}  // namespace xv::daemon
