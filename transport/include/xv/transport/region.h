// SPDX-License-Identifier: GPL-2.0-only
// A guest-physical MMIO window served by the ioreq loop (a virtio-mmio
// device, the ECAM window, the PCI BAR window).
#pragma once

#include <cstdint>
#include <functional>

namespace xv::transport {

/// Register handlers of one MMIO window. Called from the ioreq loop:
/// answer from register state and never wait for device work.
class MmioRegion {
public:
    virtual ~MmioRegion() = default;
    /// Window length in bytes.
    virtual std::uint64_t region_size() const = 0;
    /// Read of `size` (1, 2, 4, 8) bytes at `offset` into the window.
    virtual std::uint64_t mmio_read(std::uint64_t offset, unsigned size) = 0;
    /// Write of `size` bytes at `offset`.
    virtual void mmio_write(std::uint64_t offset, unsigned size, std::uint64_t value) = 0;
    /// Orderly stop: reset every device behind the window; `done` once
    /// none touches guest memory.
    virtual void quiesce(std::function<void()> done) = 0;
};

/// All-ones of `size` bytes: what an unclaimed or refused read returns.
constexpr std::uint64_t all_ones(unsigned size) { return size >= 8 ? ~0ULL : (1ULL << (8 * size)) - 1; }

}  // namespace xv::transport
