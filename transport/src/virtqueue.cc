// SPDX-License-Identifier: GPL-2.0-only
// DescriptorChain ownership: returned to the used ring exactly once.
#include "xv/transport/virtqueue.h"

namespace xv::transport {

DescriptorChain::DescriptorChain(DescriptorChain&& o) noexcept { *this = std::move(o); }

DescriptorChain& DescriptorChain::operator=(DescriptorChain&& o) noexcept {
    if (this != &o) {
        // A live chain being overwritten goes back to its queue first;
        // abandon() only reads its id and clears it (no recursion).
        if (queue_) queue_->abandon(std::move(*this));
        queue_ = o.queue_;
        id_ = o.id_;
        slots_ = o.slots_;
        readable_len_ = o.readable_len_;
        writable_len_ = o.writable_len_;
        readable_ = std::move(o.readable_);
        writable_ = std::move(o.writable_);
        map_ = std::move(o.map_);
        map2_ = std::move(o.map2_);
        copied_ = std::move(o.copied_);
        o.queue_ = nullptr;
        o.readable_.clear();
        o.writable_.clear();
        o.copied_.clear();
    }
    return *this;
}

DescriptorChain::~DescriptorChain() {
    if (queue_) queue_->abandon(std::move(*this));
}

}  // namespace xv::transport
