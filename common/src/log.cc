// SPDX-License-Identifier: GPL-2.0-only
#include "xv/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/systemd_sink.h>

#include <algorithm>
#include <cstdlib>

namespace xv::log {

bool set_level(std::string_view level) {
    static constexpr std::pair<std::string_view, spdlog::level::level_enum> kLevels[] = {
        {"error", spdlog::level::err}, {"warn", spdlog::level::warn},   {"info", spdlog::level::info},
        {"debug", spdlog::level::debug}, {"trace", spdlog::level::trace},
    };
    for (auto [name, lvl] : kLevels) {
        if (name == level) {
            spdlog::set_level(lvl);
            return true;
        }
    }
    return false;
}

void init(bool journal, std::string_view level) {
    std::shared_ptr<spdlog::logger> logger;
    if (journal && std::getenv("JOURNAL_STREAM") != nullptr) {
        logger = std::make_shared<spdlog::logger>("xen-virtiod", std::make_shared<spdlog::sinks::systemd_sink_mt>());
        logger->set_pattern("%v");
    } else {
        logger = std::make_shared<spdlog::logger>("xen-virtiod",
                                                  std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
        logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
    }
    spdlog::set_default_logger(logger);
    set_level(level);
}

bool RateLimit::allow(std::uint64_t* suppressed) {
    while (lock_.test_and_set(std::memory_order_acquire)) {
    }
    auto now = std::chrono::steady_clock::now();
    if (last_.time_since_epoch().count() != 0) {
        double dt = std::chrono::duration<double>(now - last_).count();
        tokens_ = std::min(burst_, tokens_ + dt * rate_);
    }
    last_ = now;
    bool ok = tokens_ >= 1.0;
    if (ok) {
        tokens_ -= 1.0;
        if (suppressed) *suppressed = dropped_;
        dropped_ = 0;
    } else {
        ++dropped_;
    }
    lock_.clear(std::memory_order_release);
    return ok;
}

}  // namespace xv::log
