// SPDX-License-Identifier: GPL-2.0-only
// The one way the devices take the next chain off a virtqueue.
#pragma once

#include <utility>

#include "xv/transport/virtqueue.h"

namespace xv::devices {

/// What next_chain() found.
enum class Next { Chain, Empty, Broken };

/// Pops the next chain into `out`. On an empty ring it re-enables the
/// driver's notifications and looks once more, so that a chain made
/// available in between is not left without a kick (virtio 1.2 §2.7.10).
/// Broken: the queue called fatal() and the transport sets
/// DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2); nothing more comes from it.
inline Next next_chain(transport::Virtqueue& q, transport::DescriptorChain& out) {
    for (;;) {
        auto r = q.pop();
        if (!r) return Next::Broken;
        if (*r) {
            out = std::move(**r);
            return Next::Chain;
        }
        if (!q.enable_notifications()) return Next::Empty;
    }
}

}  // namespace xv::devices
