// SPDX-License-Identifier: GPL-2.0-only
// DescriptorChain ownership: returned to the used ring exactly once.
#include "xv/transport/virtqueue.h"

namespace xv::transport {

DescriptorChain& DescriptorChain::operator=(DescriptorChain&& o) noexcept {
    if (this != &o) {
        // A live chain being overwritten goes back to its queue first;
        // abandon() only reads its id and clears it (no recursion).
        if (queue_) drop();
        take(o);
    }
    return *this;
}

void DescriptorChain::drop() noexcept { queue_->abandon(std::move(*this)); }

}  // namespace xv::transport
