// SPDX-License-Identifier: GPL-2.0-only
// The one way the devices take the next chain off a virtqueue.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

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

/// Pops up to `max` chains, appended to `out`, with one grant map call for
/// all of them (Virtqueue::pop_batch). On an empty ring it re-enables the
/// driver's notifications and looks once more, as next_chain() does.
/// Chain: at least one appended. Broken: the queue called fatal().
inline Next next_chains(transport::Virtqueue& q, std::size_t max, std::vector<transport::DescriptorChain>& out) {
    for (;;) {
        auto r = q.pop_batch(max, out);
        if (!r) return Next::Broken;
        if (*r > 0) return Next::Chain;
        if (!q.enable_notifications()) return Next::Empty;
    }
}

}  // namespace xv::devices
