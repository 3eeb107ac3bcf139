// SPDX-License-Identifier: GPL-2.0-only
// Basic Xen types, in our own words (no Xen header is needed to use them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

namespace xv::xen {

using DomId = std::uint16_t;     ///< domid_t
using GrantRef = std::uint32_t;  ///< grant_ref_t
using Port = std::uint32_t;      ///< evtchn_port_t
using IoServId = std::uint16_t;  ///< ioservid_t

inline constexpr DomId kDomIdSelf = 0x7ff0;     ///< DOMID_SELF
inline constexpr DomId kDomIdInvalid = 0x7ff4;  ///< DOMID_INVALID
inline constexpr std::size_t kPageSize = 4096;  ///< Xen pages are 4 KiB on every arch
inline constexpr unsigned kPageShift = 12;

/// Grant DMA addresses, as Linux drivers/xen/grant-dma-ops.c forms them:
/// bit 63 set, grant ref in bits 62..12, offset into the first page in 11..0.
/// A buffer of `len` bytes spans the consecutive refs
/// gref .. gref + ceil((offset + len) / 4096) - 1.
namespace grant_dma {
inline constexpr std::uint64_t kFlag = 1ULL << 63;

/// True when `addr` is a grant address (bit 63 set).
constexpr bool is_grant(std::uint64_t addr) { return (addr & kFlag) != 0; }
/// The first grant ref of a grant address.
constexpr std::uint64_t first_ref(std::uint64_t addr) { return (addr & ~kFlag) >> kPageShift; }
/// Offset into the first granted page.
constexpr std::uint32_t offset(std::uint64_t addr) { return std::uint32_t(addr & (kPageSize - 1)); }
/// Number of pages a buffer of `len` bytes at `addr` spans (0 for len 0).
constexpr std::uint64_t pages(std::uint64_t addr, std::uint64_t len) {
    return len == 0 ? 0 : (offset(addr) + len + kPageSize - 1) / kPageSize;
}
/// Encodes (ref, offset) as the frontend does.
constexpr std::uint64_t encode(GrantRef ref, std::uint32_t off = 0) {
    return kFlag | (std::uint64_t(ref) << kPageShift) | (off & (kPageSize - 1));
}
}  // namespace grant_dma

/// XenbusState (public/io/xenbus.h).
enum class XenbusState : int {
    Unknown = 0,
    Initialising = 1,
    InitWait = 2,
    Initialised = 3,
    Connected = 4,
    Closing = 5,
    Closed = 6,
    Reconfiguring = 7,
    Reconfigured = 8,
};

}  // namespace xv::xen
