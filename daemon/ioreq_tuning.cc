// SPDX-License-Identifier: GPL-2.0-only
#include "ioreq_tuning.h"

#include <pthread.h>

#include <spdlog/spdlog.h>

#include <cstring>

#include "privileges.h"

namespace xv::daemon {

RealtimeThreads::RealtimeThreads(const IoreqTuning& t, const std::string& who) {
    if (t.realtime_priority == 0) return;
    const int prio = int(t.realtime_priority);
    if (seccomp_installed()) {
        // The filter does not allow sched_setscheduler: asking would fail
        // (seccomp = "errno") or kill the worker (seccomp = "kill").
        outcome_ = Outcome::Sandboxed;
        spdlog::warn("{}: ioreq_realtime_priority = {} not applied: the process is already sandboxed (seccomp); "
                     "its ioreqs are served with the normal scheduling policy",
                     who, prio);
        return;
    }
    const pthread_t self = pthread_self();
    if (int rc = pthread_getschedparam(self, &old_policy_, &old_param_); rc != 0) {
        outcome_ = Outcome::Refused;
        spdlog::warn("{}: ioreq_realtime_priority = {} not applied: cannot read the thread's policy: {}", who, prio,
                     std::strerror(rc));
        return;
    }
    sched_param p{};
    p.sched_priority = prio;
    if (int rc = pthread_setschedparam(self, SCHED_FIFO, &p); rc != 0) {
        outcome_ = Outcome::Refused;
        // sched(7): an unprivileged thread may use SCHED_FIFO up to its
        // RLIMIT_RTPRIO; CAP_SYS_NICE lifts the limit.
        spdlog::warn("{}: ioreq_realtime_priority = {} refused by the kernel ({}): its ioreqs are served with the "
                     "normal scheduling policy. Allow it with LimitRTPRIO={} in the service unit (or CAP_SYS_NICE), "
                     "or set ioreq_realtime_priority = 0",
                     who, prio, std::strerror(rc), prio);
        return;
    }
    outcome_ = Outcome::Applied;
    spdlog::info("{}: I/O threads run SCHED_FIFO priority {} (ioreq_realtime_priority)", who, prio);
}

RealtimeThreads::~RealtimeThreads() {
    if (outcome_ != Outcome::Applied) return;
    // Lowering one's own policy needs no privilege (sched(7)).
    if (int rc = pthread_setschedparam(pthread_self(), old_policy_, &old_param_); rc != 0)
        spdlog::warn("cannot restore the scheduling policy of the thread that started realtime I/O threads: {}",
                     std::strerror(rc));
}

const char* to_string(RealtimeThreads::Outcome o) {
    switch (o) {
        case RealtimeThreads::Outcome::Off: return "off";
        case RealtimeThreads::Outcome::Applied: return "applied";
        case RealtimeThreads::Outcome::Refused: return "refused";
        case RealtimeThreads::Outcome::Sandboxed: return "sandboxed";
    }
    return "?";
}

std::pair<int, int> current_thread_scheduling() {
    int policy = 0;
    sched_param p{};
    if (pthread_getschedparam(pthread_self(), &policy, &p) != 0) return {-1, 0};
    return {policy, p.sched_priority};
}

}  // namespace xv::daemon
