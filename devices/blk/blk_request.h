// SPDX-License-Identifier: GPL-2.0-only
// Parsing and validating one virtio-blk request (virtio 1.2 §5.2.6), and
// the device's one error type with its one mapping to a status byte.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "xv/devices/blk.h"
#include "xv/transport/virtqueue.h"

namespace xv::devices::blkimpl {

/// Why a request did not succeed. virtio_status() is the only place that
/// turns one into a status byte.
enum class ReqErr : std::uint8_t {
    None,
    ShortHeader,       ///< fewer than 16 device-readable header bytes
    UnknownType,       ///< type the device does not implement
    NotNegotiated,     ///< DISCARD / WRITE_ZEROES without its feature
    ReadOnly,          ///< a write to a read-only disk
    BadDataLength,     ///< data not a multiple of 512 (or empty payload)
    OutOfRange,        ///< sector + length beyond capacity
    TooManySegments,   ///< more iovecs or discard segments than allowed
    SegmentTooLarge,   ///< a discard/write-zeroes segment over the limit
    UnknownFlags,      ///< reserved discard/write-zeroes flag bits set
    UnmapOnDiscard,    ///< the unmap flag on a DISCARD
    IdBufferTooSmall,  ///< GET_ID with fewer than 20 writable data bytes
    HostIo,            ///< the host I/O failed (errno in the request)
    ShortIo,           ///< the host I/O hit end of file
};

/// The virtio status byte for `e` (virtio 1.2 §5.2.6).
std::uint8_t virtio_status(ReqErr e) noexcept;
/// A short text for log lines.
const char* describe(ReqErr e) noexcept;
/// A short name of a request type for log lines ("IN", "OUT", ...).
const char* type_name(std::uint32_t type) noexcept;

/// A byte range of a DISCARD or WRITE_ZEROES segment.
struct Range {
    std::uint64_t offset = 0;
    std::uint64_t len = 0;
    bool unmap = false;
};

/// What parse_request() needs to know about the device.
struct ParseLimits {
    std::uint64_t capacity_sectors = 0;
    bool readonly = false;
    bool discard = false;       ///< VIRTIO_BLK_F_DISCARD negotiated
    bool write_zeroes = false;  ///< VIRTIO_BLK_F_WRITE_ZEROES negotiated
    std::uint32_t max_discard_sectors = 0;
    std::uint32_t max_discard_seg = 0;
    std::uint32_t max_write_zeroes_sectors = 0;
    std::uint32_t max_write_zeroes_seg = 0;
    std::uint32_t max_iov = 1024;  ///< IOV_MAX
};

/// A request after validation.
struct ParsedRequest {
    std::uint32_t type = 0;
    std::uint64_t sector = 0;
    /// The status byte: last byte of the last device-writable buffer;
    /// nullptr when the chain has no device-writable byte at all.
    std::byte* status = nullptr;
    /// Data bytes (IN, OUT, GET_ID).
    std::uint64_t data_len = 0;
    ReqErr err = ReqErr::None;
};

/// Parses `chain`: fills `iov` with the data segments of IN/OUT (zero
/// copy: they point into the chain's mappings) and `ranges` with the
/// segments of DISCARD/WRITE_ZEROES. Never trusts a guest value.
ParsedRequest parse_request(const transport::DescriptorChain& chain, const ParseLimits& lim,
                            std::vector<iovec>& iov, std::vector<Range>& ranges);

/// True when [sector, sector + bytes/512) lies inside `capacity` sectors
/// (overflow-safe).
bool in_range(std::uint64_t sector, std::uint64_t bytes, std::uint64_t capacity) noexcept;

}  // namespace xv::devices::blkimpl
