// SPDX-License-Identifier: GPL-2.0-only
#include "guest_executor.h"

#include <pthread.h>

#include <algorithm>

namespace xv::daemon {

GuestExecutor::GuestExecutor(unsigned threads, unsigned domid) {
    guard_.emplace(io_.get_executor());
    const std::string name = "xv-dom" + std::to_string(domid);
    for (unsigned i = 0; i < std::max(1u, threads); ++i) {
        threads_.emplace_back([this] { io_.run(); });
        // Named so that `top -H` and the journal tell the guests apart (15 characters at most).
        (void)pthread_setname_np(threads_.back().native_handle(), name.substr(0, 15).c_str());
    }
}

GuestExecutor::~GuestExecutor() {
    halt();
    drain();
}

bool GuestExecutor::on_own_thread() const {
    const auto me = std::this_thread::get_id();
    return std::any_of(threads_.begin(), threads_.end(), [me](const std::thread& t) { return t.get_id() == me; });
}

void GuestExecutor::halt() {
    guard_.reset();
    io_.stop();
    for (auto& t : threads_)
        if (t.joinable()) t.join();
    threads_.clear();
}

void GuestExecutor::drain() {
    if (drained_) return;
    drained_ = true;
    io_.shutdown();
}

}  // namespace xv::daemon
