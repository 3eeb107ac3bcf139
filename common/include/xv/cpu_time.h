// SPDX-License-Identifier: GPL-2.0-only
// CPU time of the calling thread, for what polling in vain cost: the time
// another task had the CPU meanwhile is not counted.
#pragma once

#include <time.h>

#include <cstdint>

namespace xv {

/// CLOCK_THREAD_CPUTIME_ID in nanoseconds.
inline std::int64_t thread_cpu_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return std::int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace xv
