// SPDX-License-Identifier: GPL-2.0-only
// Fuzz target: the virtio-mmio register file,
// plain and with the non-blocking registers, as ioreqs (see bus_fuzz.h).
#include "bus_fuzz.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    xv::fuzz::quiet_logs();
    (void)xv::fuzz::bus::World::get();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return xv::fuzz::bus::run(data, size, /*pci=*/false);
}
