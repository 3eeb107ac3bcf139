// SPDX-License-Identifier: GPL-2.0-only
// Fuzz target: the packed virtqueue chain walker (transport/src/queue/packed_queue.cc),
// driven through the real queue over simulated grants (see ring_fuzz.h).
#include "ring_fuzz.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    xv::fuzz::quiet_logs();
    (void)xv::fuzz::ring::World::get();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return xv::fuzz::ring::run(data, size, /*packed=*/true);
}
