// SPDX-License-Identifier: GPL-2.0-only
// How a guest's ioreqs are waited for: [daemon] ioreq_poll_us and
// ioreq_realtime_priority (interface.md), applied to the guest's ioreq loop
// and to the threads that serve it. The daemon and bench/ioreq apply a
// configuration through these two calls and nothing else.
//
// A trapped vCPU waits for our answer (xen/include/xv/xen/ioreq.h): its
// turnaround is the event channel's wake-up of our thread plus the register
// work. Two knobs shorten the wake-up tail:
//   poll window     after serving, keep looking for the next ioreq for
//                   up to ioreq_poll_us (default 50) before sleeping on the
//                   event channel (IoreqLoop::set_poll, adaptive: 0 for a
//                   guest that does not trap in bursts; polls in vain held
//                   to a tenth of a CPU): a burst of accesses is served
//                   without wake-ups. Not with SCHED_FIFO (below).
//   SCHED_FIFO      the guest's I/O threads preempt normal tasks when the
//                   event channel wakes them (sched(7)).
//
// Realtime threads, in the order a worker runs:
//
//   start_guest: RealtimeThreads scope   calling thread -> SCHED_FIFO
//     GuestExecutor threads created      inherit it (PTHREAD_INHERIT_SCHED)
//   end of scope                         calling thread -> its old policy
//   PrivilegeDropper::drop_all           capabilities dropped, seccomp on;
//                                        sched_setscheduler is not allowed
//                                        afterwards, and not needed
//
// Refused (EPERM: neither CAP_SYS_NICE nor RLIMIT_RTPRIO >= the priority),
// or asked once the worker is sandboxed: a warning naming the key, and the
// guest is served with the normal policy.
#pragma once

#include <sched.h>

#include <chrono>
#include <string>

#include "config.h"
#include "xv/transport/ioreq_loop.h"

namespace xv::daemon {

/// The ioreq settings of [daemon].
struct IoreqTuning {
    std::chrono::microseconds poll{0};  ///< ioreq_poll_us
    unsigned realtime_priority = 0;     ///< ioreq_realtime_priority (0: off)

    static IoreqTuning from(const DaemonSection& d) {
        return {std::chrono::microseconds(d.ioreq_poll_us), d.ioreq_realtime_priority};
    }
    /// Sets the loop's poll window.
    void apply(transport::IoreqLoop& loop) const { loop.set_poll(poll); }
};

/// While alive, the calling thread runs SCHED_FIFO at the configured
/// priority, so that every thread it starts meanwhile does too; the
/// destructor gives the calling thread its previous policy back.
class RealtimeThreads {
public:
    enum class Outcome {
        Off,        ///< priority 0: nothing done
        Applied,    ///< threads started in the scope run SCHED_FIFO
        Refused,    ///< the kernel said no (logged): normal policy
        Sandboxed,  ///< asked after seccomp went on (logged): normal policy
    };

    /// `who` names the guest in the log ("dom5").
    RealtimeThreads(const IoreqTuning& t, const std::string& who);
    ~RealtimeThreads();
    RealtimeThreads(const RealtimeThreads&) = delete;
    RealtimeThreads& operator=(const RealtimeThreads&) = delete;

    Outcome outcome() const noexcept { return outcome_; }

private:
    Outcome outcome_ = Outcome::Off;
    int old_policy_ = SCHED_OTHER;
    sched_param old_param_{};
};

/// "off" | "applied" | "refused" | "sandboxed".
const char* to_string(RealtimeThreads::Outcome o);

/// The scheduling policy of the calling thread (SCHED_OTHER, SCHED_FIFO,
/// ...) and its priority; for logs and tests.
std::pair<int, int> current_thread_scheduling();

}  // namespace xv::daemon
