// SPDX-License-Identifier: GPL-2.0-only
// One look of a busy-wait, for the pollers (the ioreq loop's poll of the
// ioreq page, the simulator's trapped vCPU waiting for its answer).
#pragma once

namespace xv {

/// Tells the CPU this is a spin loop (lets a sibling hyperthread run and
/// saves power): PAUSE on x86, YIELD on Arm64, nothing elsewhere.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
}

}  // namespace xv
