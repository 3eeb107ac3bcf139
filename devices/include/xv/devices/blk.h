// SPDX-License-Identifier: GPL-2.0-only
// virtio-blk (virtio 1.2 §5.2) on the transport::Device interface, backed by
// a raw image file or a host block device through io_uring.
//
// Request layout (virtio 1.2 §5.2.6), one descriptor chain per request:
//
//   +----------------------------+---------------------+-----------+
//   | virtio_blk_outhdr (16 B)   | data (n x 512 B)    | status    |
//   | le32 type, le32 reserved,  | IN: device-writable | u8, last  |
//   | le64 sector  (readable)    | OUT: readable       | writable  |
//   +----------------------------+---------------------+-----------+
//
// Device lifecycle (on top of transport/device.h):
//
//   make_blk() --> Idle --activate()--> Serving --reset(done)--> Draining
//                   ^                                               |
//                   +----- every io_uring op completed: done() -----+
//
// In Draining no chain is popped any more; requests still in the kernel
// point into grant mappings, so the device waits for every one of them
// before it drops the chains and calls done().
#pragma once

#include <boost/asio/any_io_executor.hpp>

#include <cstdint>
#include <memory>
#include <string>

#include "xv/result.h"
#include "xv/transport/device.h"

namespace xv::devices {

/// What the daemon configures for one virtio-blk device.
struct BlkConfig {
    std::string path;            ///< raw image file or block device
    bool readonly = false;       ///< offer VIRTIO_BLK_F_RO, open O_RDONLY
    bool discard = true;         ///< offer DISCARD and WRITE_ZEROES
    std::uint16_t queues = 1;    ///< request queues (MQ when > 1)
    bool direct = true;          ///< O_DIRECT for aligned requests
    std::string serial;          ///< GET_ID string (first 20 bytes used)
    std::uint32_t io_depth = 256;  ///< io_uring entries per queue (>= 8)
};

/// Counters of one virtio-blk device (all queues).
struct BlkStats {
    std::uint64_t requests = 0;      ///< requests completed (any status)
    std::uint64_t errors = 0;        ///< completed with IOERR or UNSUPP
    std::uint64_t bytes_read = 0;
    std::uint64_t bytes_written = 0;
    std::uint64_t flushes = 0;
    std::uint64_t direct_ios = 0;    ///< reads/writes served through O_DIRECT
    std::uint64_t buffered_ios = 0;  ///< reads/writes served through the page cache
    std::uint64_t dropped_chains = 0;///< chains without a status byte (used len 0)
};

/// A virtio-blk device; the extra calls are for tests and diagnostics.
class BlkDevice : public transport::Device {
public:
    /// Disk size in 512-byte sectors (config field `capacity`).
    virtual std::uint64_t capacity_sectors() const = 0;
    /// Counters summed over all queues.
    virtual BlkStats stats() const = 0;
    /// Requests currently owned by the device (popped, not yet completed).
    virtual std::uint64_t in_flight() const = 0;
};

/// Opens the backing file or device and builds the device. Fails with a
/// message naming the path when it cannot be opened or io_uring is missing.
Result<std::unique_ptr<transport::Device>> make_blk(const BlkConfig& cfg, transport::DeviceIdentity id,
                                                    boost::asio::any_io_executor ex);

/// virtio-blk wire constants (virtio 1.2 §5.2; xen-facts.md §5.4).
namespace blk {

/// Feature bits (virtio 1.2 §5.2.3).
namespace feature {
inline constexpr unsigned kSizeMax = 1;
inline constexpr unsigned kSegMax = 2;
inline constexpr unsigned kGeometry = 4;
inline constexpr unsigned kRo = 5;
inline constexpr unsigned kBlkSize = 6;
inline constexpr unsigned kFlush = 9;
inline constexpr unsigned kTopology = 10;
inline constexpr unsigned kConfigWce = 11;
inline constexpr unsigned kMq = 12;
inline constexpr unsigned kDiscard = 13;
inline constexpr unsigned kWriteZeroes = 14;
}  // namespace feature

/// Request types (virtio 1.2 §5.2.6).
namespace req {
inline constexpr std::uint32_t kIn = 0;
inline constexpr std::uint32_t kOut = 1;
inline constexpr std::uint32_t kFlush = 4;
inline constexpr std::uint32_t kGetId = 8;
inline constexpr std::uint32_t kGetLifetime = 10;
inline constexpr std::uint32_t kDiscard = 11;
inline constexpr std::uint32_t kWriteZeroes = 13;
inline constexpr std::uint32_t kSecureErase = 14;
}  // namespace req

/// Status byte values (virtio 1.2 §5.2.6).
inline constexpr std::uint8_t kStatusOk = 0;
inline constexpr std::uint8_t kStatusIoErr = 1;
inline constexpr std::uint8_t kStatusUnsupp = 2;

/// Bytes of the GET_ID answer (VIRTIO_BLK_ID_BYTES).
inline constexpr std::size_t kIdBytes = 20;
/// The protocol sector, whatever blk_size says (virtio 1.2 §5.2.6).
inline constexpr std::uint32_t kSectorSize = 512;
/// The WRITE_ZEROES `unmap` flag (virtio 1.2 §5.2.6).
inline constexpr std::uint32_t kFlagUnmap = 1;

/// struct virtio_blk_outhdr (little-endian on the wire).
struct OutHdr {
    std::uint32_t type;
    std::uint32_t reserved;
    std::uint64_t sector;
};
static_assert(sizeof(OutHdr) == 16);

/// struct virtio_blk_discard_write_zeroes.
struct DiscardSeg {
    std::uint64_t sector;
    std::uint32_t num_sectors;
    std::uint32_t flags;
};
static_assert(sizeof(DiscardSeg) == 16);

/// Config space offsets (virtio 1.2 §5.2.4, packed).
namespace cfg {
inline constexpr std::uint32_t kCapacity = 0;
inline constexpr std::uint32_t kSizeMax = 8;
inline constexpr std::uint32_t kSegMax = 12;
inline constexpr std::uint32_t kGeometry = 16;
inline constexpr std::uint32_t kBlkSize = 20;
inline constexpr std::uint32_t kPhysicalBlockExp = 24;
inline constexpr std::uint32_t kAlignmentOffset = 25;
inline constexpr std::uint32_t kMinIoSize = 26;
inline constexpr std::uint32_t kOptIoSize = 28;
inline constexpr std::uint32_t kWriteback = 32;
inline constexpr std::uint32_t kNumQueues = 34;
inline constexpr std::uint32_t kMaxDiscardSectors = 36;
inline constexpr std::uint32_t kMaxDiscardSeg = 40;
inline constexpr std::uint32_t kDiscardSectorAlignment = 44;
inline constexpr std::uint32_t kMaxWriteZeroesSectors = 48;
inline constexpr std::uint32_t kMaxWriteZeroesSeg = 52;
inline constexpr std::uint32_t kWriteZeroesMayUnmap = 56;
inline constexpr std::uint32_t kSize = 60;  ///< up to unused1[3]; no secure erase / zoned
}  // namespace cfg

}  // namespace blk
}  // namespace xv::devices
