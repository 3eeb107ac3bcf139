// SPDX-License-Identifier: GPL-2.0-only
#include "blk_request.h"

#include <bit>
#include <cstring>

namespace xv::devices::blkimpl {

// virtio 1.2 §5.2.6: every field is little-endian; both targets (x86-64,
// Arm64) are little-endian hosts, so the wire structs are read as they are.
static_assert(std::endian::native == std::endian::little, "blk wire structs are read in host order");

std::uint8_t virtio_status(ReqErr e) noexcept {
    switch (e) {
        case ReqErr::None:
            return blk::kStatusOk;
        // virtio 1.2 §5.2.6: UNSUPP is "for a request unsupported by device".
        case ReqErr::UnknownType:
        case ReqErr::NotNegotiated:
        // virtio 1.2 §5.2.6.2: "MUST set the status byte to VIRTIO_BLK_S_UNSUPP
        // for discard, secure erase and write zeroes commands if any unknown flag
        // is set ... for discard commands if the unmap flag is set".
        case ReqErr::UnknownFlags:
        case ReqErr::UnmapOnDiscard:
            return blk::kStatusUnsupp;
        // virtio 1.2 §5.2.6.2: "MUST set the status byte to VIRTIO_BLK_S_IOERR for
        // a write request if the VIRTIO_BLK_F_RO feature if offered".
        case ReqErr::ReadOnly:
        // virtio 1.2 §5.2.6: IOERR is "for device or driver error".
        case ReqErr::ShortHeader:
        case ReqErr::BadDataLength:
        case ReqErr::OutOfRange:
        case ReqErr::TooManySegments:
        case ReqErr::SegmentTooLarge:
        case ReqErr::IdBufferTooSmall:
        case ReqErr::HostIo:
        case ReqErr::ShortIo:
            return blk::kStatusIoErr;
    }
    return blk::kStatusIoErr;
}

const char* describe(ReqErr e) noexcept {
    switch (e) {
        case ReqErr::None: return "ok";
        case ReqErr::ShortHeader: return "request header shorter than 16 bytes";
        case ReqErr::UnknownType: return "unsupported request type";
        case ReqErr::NotNegotiated: return "request type needs a feature not negotiated";
        case ReqErr::ReadOnly: return "write to a read-only disk";
        case ReqErr::BadDataLength: return "data length not a multiple of 512";
        case ReqErr::OutOfRange: return "beyond the end of the disk";
        case ReqErr::TooManySegments: return "too many segments";
        case ReqErr::SegmentTooLarge: return "segment larger than advertised";
        case ReqErr::UnknownFlags: return "reserved flag bits set";
        case ReqErr::UnmapOnDiscard: return "unmap flag set on a discard";
        case ReqErr::IdBufferTooSmall: return "GET_ID buffer shorter than 20 bytes";
        case ReqErr::HostIo: return "host I/O error";
        case ReqErr::ShortIo: return "host I/O ended early (backing shrank?)";
    }
    return "?";
}

const char* type_name(std::uint32_t type) noexcept {
    switch (type) {
        case blk::req::kIn: return "IN";
        case blk::req::kOut: return "OUT";
        case blk::req::kFlush: return "FLUSH";
        case blk::req::kGetId: return "GET_ID";
        case blk::req::kDiscard: return "DISCARD";
        case blk::req::kWriteZeroes: return "WRITE_ZEROES";
        default: return "UNKNOWN";
    }
}

bool in_range(std::uint64_t sector, std::uint64_t bytes, std::uint64_t capacity) noexcept {
    const std::uint64_t sectors = bytes / blk::kSectorSize + (bytes % blk::kSectorSize ? 1 : 0);
    return sector <= capacity && sectors <= capacity - sector;
}

namespace {

/// Appends up to `n` bytes of `cur` to `iov`; false when more than `max` entries.
template <class Cursor>
bool take_iov(Cursor& cur, std::size_t n, std::vector<iovec>& iov, std::uint32_t max) {
    for (auto s : cur.take(n)) {
        if (iov.size() >= max) return false;
        iov.push_back(iovec{const_cast<void*>(static_cast<const void*>(s.data())), s.size()});
    }
    return true;
}

/// The data of an IN or OUT request: `len` bytes of `cur` from `sector` on.
template <class Cursor>
ReqErr take_data(Cursor& cur, std::uint64_t sector, std::uint64_t len, const ParseLimits& lim, std::vector<iovec>& iov) {
    // virtio 1.2 §5.2.6.1: the data length MUST be a multiple of 512.
    if (len % blk::kSectorSize) return ReqErr::BadDataLength;
    // virtio 1.2 §5.2.6.1: no read or write beyond capacity.
    if (!in_range(sector, len, lim.capacity_sectors)) return ReqErr::OutOfRange;
    return take_iov(cur, len, iov, lim.max_iov) ? ReqErr::None : ReqErr::TooManySegments;
}

ReqErr parse_segments(transport::Reader& rd, std::uint64_t bytes, bool discard, const ParseLimits& lim,
                      std::vector<Range>& ranges) {
    const std::uint32_t max_seg = discard ? lim.max_discard_seg : lim.max_write_zeroes_seg;
    const std::uint32_t max_sectors = discard ? lim.max_discard_sectors : lim.max_write_zeroes_sectors;
    // virtio 1.2 §5.2.6: data "consists of one or more segments" of 16 bytes.
    if (bytes == 0 || bytes % sizeof(blk::DiscardSeg) != 0) return ReqErr::BadDataLength;
    // virtio 1.2 §5.2.6.1: the driver MUST NOT send more than max_discard_seg /
    // max_write_zeroes_seg segments.
    if (bytes / sizeof(blk::DiscardSeg) > max_seg) return ReqErr::TooManySegments;
    ReqErr worst = ReqErr::None;
    const std::size_t n = bytes / sizeof(blk::DiscardSeg);
    for (std::size_t i = 0; i < n; ++i) {
        auto seg = rd.read_obj<blk::DiscardSeg>();
        if (!seg) return ReqErr::BadDataLength;
        // virtio 1.2 §5.2.6.2: UNSUPP if any unknown flag is set, and for a
        // discard with unmap set; these win over range errors.
        if (seg->flags & ~blk::kFlagUnmap) return ReqErr::UnknownFlags;
        if (discard && (seg->flags & blk::kFlagUnmap)) return ReqErr::UnmapOnDiscard;
        if (worst != ReqErr::None) continue;
        if (seg->num_sectors > max_sectors) {
            worst = ReqErr::SegmentTooLarge;
            continue;
        }
        const std::uint64_t len = std::uint64_t(seg->num_sectors) * blk::kSectorSize;
        if (!in_range(seg->sector, len, lim.capacity_sectors)) {
            worst = ReqErr::OutOfRange;
            continue;
        }
        if (len == 0) continue;  // an empty segment changes nothing
        ranges.push_back(Range{seg->sector * blk::kSectorSize, len, (seg->flags & blk::kFlagUnmap) != 0});
    }
    return worst;
}

}  // namespace

ParsedRequest parse_request(const transport::DescriptorChain& chain, const ParseLimits& lim,
                            std::vector<iovec>& iov, std::vector<Range>& ranges) {
    ParsedRequest p;
    iov.clear();
    ranges.clear();

    // virtio 1.2 §5.2.6: status is the last byte, written by the device: the
    // last byte of the last device-writable buffer.
    const auto& ws = chain.writable_segments();
    for (auto it = ws.rbegin(); it != ws.rend(); ++it) {
        if (!it->empty()) {
            p.status = it->data() + it->size() - 1;
            break;
        }
    }
    if (!p.status) return p;  // no room for the status byte: caller returns it with len 0
    const std::uint64_t writable_data = std::uint64_t(chain.writable_bytes()) - 1;

    transport::Reader rd = chain.reader();
    auto hdr = rd.read_obj<blk::OutHdr>();
    // virtio 1.2 §5.2.6: type, reserved and sector are device-readable (16 B).
    if (!hdr) {
        p.err = ReqErr::ShortHeader;
        return p;
    }
    p.type = hdr->type;
    p.sector = hdr->sector;

    switch (p.type) {
        case blk::req::kIn: {
            p.data_len = writable_data;
            transport::Writer w = chain.writer();
            p.err = take_data(w, p.sector, p.data_len, lim, iov);
            return p;
        }
        case blk::req::kOut: {
            // virtio 1.2 §5.2.6.2: IOERR for a write when RO is offered, and
            // MUST NOT write any data.
            if (lim.readonly) {
                p.err = ReqErr::ReadOnly;
                return p;
            }
            p.data_len = rd.available();
            p.err = take_data(rd, p.sector, p.data_len, lim, iov);
            return p;
        }
        case blk::req::kFlush:
            // virtio 1.2 §5.2.6: sector is unused for FLUSH; no data.
            return p;
        case blk::req::kGetId:
            p.data_len = writable_data;
            // virtio 1.2 §5.2.6.1: "The length of data MUST be 20 bytes".
            if (p.data_len < blk::kIdBytes) p.err = ReqErr::IdBufferTooSmall;
            return p;
        case blk::req::kDiscard:
        case blk::req::kWriteZeroes: {
            const bool discard = p.type == blk::req::kDiscard;
            if (discard ? !lim.discard : !lim.write_zeroes) {
                p.err = ReqErr::NotNegotiated;
                return p;
            }
            if (lim.readonly) {
                p.err = ReqErr::ReadOnly;  // §5.2.6.2: a write request on a RO disk
                return p;
            }
            p.err = parse_segments(rd, rd.available(), discard, lim, ranges);
            return p;
        }
        default:
            // virtio 1.2 §5.2.6.2: zoned requests without ZONED MUST be UNSUPP;
            // so is every type this device does not implement.
            p.err = ReqErr::UnknownType;
            return p;
    }
}

}  // namespace xv::devices::blkimpl
