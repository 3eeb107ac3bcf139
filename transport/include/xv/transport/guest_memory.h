// SPDX-License-Identifier: GPL-2.0-only
// Guest memory, through grants only ("VirtIO with Grants").
//
// A DMA address with bit 63 set is (gref << 12 | offset); a buffer of `len`
// bytes spans refs gref .. gref + ceil((offset + len) / 4096) - 1. An address
// without bit 63 is refused: xen-virtiod never maps guest RAM by frame.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "xv/result.h"
#include "xv/xen/grant.h"
#include "xv/xen/types.h"

namespace xv::transport {

/// One buffer a descriptor names.
struct DmaBuffer {
    std::uint64_t addr = 0;
    std::uint32_t len = 0;
    bool device_writable = false;
};

/// The result of mapping a batch of buffers: host spans in input order,
/// kept alive by the mappings.
struct MappedBuffers {
    std::vector<std::span<std::byte>> spans;
    std::vector<xen::GrantMapping> maps;  ///< at most 2: one RO, one RW
};

/// Translates grant DMA addresses of one guest into host mappings.
class GuestMemory {
public:
    GuestMemory(xen::GrantMapper& mapper, xen::DomId domid) : mapper_(mapper), domid_(domid) {}

    xen::DomId domid() const noexcept { return domid_; }
    xen::GrantMapper& mapper() noexcept { return mapper_; }

    /// Maps one area (a ring) of `len` bytes at grant address `addr`.
    /// Errors: non-grant address (EPERM, "not a grant address"), len 0 or
    /// overflow (EINVAL), map failure (from the mapper).
    Result<std::pair<std::span<std::byte>, xen::GrantMapping>> map_area(std::uint64_t addr, std::uint64_t len,
                                                                        bool writable);

    /// Maps all buffers in at most two grant calls: every device-readable
    /// page in one RO call, every device-writable page in one RW call.
    Result<MappedBuffers> map_buffers(std::span<const DmaBuffer> buffers);

private:
    xen::GrantMapper& mapper_;
    xen::DomId domid_;
};

}  // namespace xv::transport
