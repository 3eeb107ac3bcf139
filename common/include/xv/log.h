// SPDX-License-Identifier: GPL-2.0-only
// Logging for every layer: spdlog underneath, with the context a reader at
// 3 a.m. needs (domid, device, queue) and rate limiting for anything a
// guest can trigger.
#pragma once

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace xv::log {

/// Sets the global level from "error|warn|info|debug|trace"; false if unknown.
bool set_level(std::string_view level);

/// Sends logs to stderr (default) or to the systemd journal when
/// `journal` is true and the process runs under systemd.
void init(bool journal, std::string_view level);

/// A token bucket for guest-triggerable log lines: at most `burst` lines,
/// refilled at `per_second`. Counts what it suppressed so the next allowed
/// line can say "(N similar suppressed)". Thread-safe.
class RateLimit {
public:
    explicit RateLimit(double per_second = 5.0, double burst = 10.0) : rate_(per_second), burst_(burst), tokens_(burst) {}

    /// True when a line may be logged now. `suppressed` receives how many
    /// calls were refused since the last allowed one.
    bool allow(std::uint64_t* suppressed = nullptr);

private:
    double rate_;
    double burst_;
    double tokens_;
    std::chrono::steady_clock::time_point last_{};
    std::uint64_t dropped_ = 0;
    std::atomic_flag lock_ = ATOMIC_FLAG_INIT;
};

}  // namespace xv::log

/// Logs a guest-triggered warning through a RateLimit `rl`.
#define XV_LOG_LIMITED(rl, level, ...)                                                   \
    do {                                                                                 \
        std::uint64_t xv_supp_ = 0;                                                      \
        if ((rl).allow(&xv_supp_)) {                                                     \
            if (xv_supp_) spdlog::log(level, "({} similar messages suppressed)", xv_supp_); \
            spdlog::log(level, __VA_ARGS__);                                             \
        }                                                                                \
    } while (0)
