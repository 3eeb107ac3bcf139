// SPDX-License-Identifier: GPL-2.0-only
// create_virtqueue: split or packed per the negotiated features.
#include "packed_queue.h"
#include "split_queue.h"

namespace xv::transport {

Result<std::unique_ptr<Virtqueue>> create_virtqueue(const QueueConfig& cfg, GuestMemory& mem, Strand strand,
                                                    Virtqueue::RaiseFn raise, Virtqueue::FatalFn fatal) {
    if (cfg.packed) return PackedQueue::create(cfg, mem, std::move(strand), std::move(raise), std::move(fatal));
    return SplitQueue::create(cfg, mem, std::move(strand), std::move(raise), std::move(fatal));
}

}  // namespace xv::transport
