// SPDX-License-Identifier: GPL-2.0-only
// The host side of a virtio-blk device: an open raw image file or block
// device, its geometry, and a small helper pool for the blocking ioctls
// (BLKDISCARD, BLKZEROOUT) that io_uring cannot run for us.
#pragma once

#include <boost/asio/thread_pool.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "xv/devices/blk.h"
#include "xv/result.h"

namespace xv::devices::blkimpl {

/// What the backing is.
enum class BackingKind { File, BlockDevice };

/// An open backing file or device. Immutable after open(), except the
/// helper pool; shared by all queues of one device.
class Backing {
public:
    /// Opens `cfg.path` (O_RDONLY when read-only), plus an O_DIRECT
    /// descriptor when `cfg.direct` and the file system allows it.
    static Result<std::shared_ptr<Backing>> open(const BlkConfig& cfg, const std::string& label);

    ~Backing();
    Backing(const Backing&) = delete;
    Backing& operator=(const Backing&) = delete;

    /// Descriptor for buffered I/O, fsync and fallocate.
    int fd() const noexcept { return fd_; }
    /// Descriptor opened with O_DIRECT, or -1.
    int direct_fd() const noexcept { return direct_fd_; }
    /// Alignment O_DIRECT needs for addresses, lengths and offsets.
    std::uint32_t direct_align() const noexcept { return direct_align_; }

    BackingKind kind() const noexcept { return kind_; }
    bool readonly() const noexcept { return readonly_; }
    /// Usable size in 512-byte sectors (a partial last sector is not usable).
    std::uint64_t capacity_sectors() const noexcept { return capacity_sectors_; }
    /// Logical block size in bytes (512 for files).
    std::uint32_t logical_block() const noexcept { return logical_block_; }
    /// Physical block size in bytes.
    std::uint32_t physical_block() const noexcept { return physical_block_; }
    /// Minimum and optimal I/O sizes in bytes (0 when unknown).
    std::uint32_t min_io() const noexcept { return min_io_; }
    std::uint32_t opt_io() const noexcept { return opt_io_; }
    const std::string& path() const noexcept { return path_; }

    /// Runs `fn` on the helper pool (blocking ioctls only; never guest
    /// memory). Created on first use.
    void run_blocking(std::function<void()> fn);

private:
    Backing() = default;

    std::string path_;
    int fd_ = -1;
    int direct_fd_ = -1;
    std::uint32_t direct_align_ = 512;
    BackingKind kind_ = BackingKind::File;
    bool readonly_ = false;
    std::uint64_t capacity_sectors_ = 0;
    std::uint32_t logical_block_ = 512;
    std::uint32_t physical_block_ = 512;
    std::uint32_t min_io_ = 0;
    std::uint32_t opt_io_ = 0;
    std::mutex pool_mu_;
    std::unique_ptr<boost::asio::thread_pool> pool_;
};

/// Blocking BLKDISCARD / BLKZEROOUT of [offset, offset + len) on `fd`;
/// 0 or an errno value.
int blockdev_discard(int fd, std::uint64_t offset, std::uint64_t len);
int blockdev_zeroout(int fd, std::uint64_t offset, std::uint64_t len);

}  // namespace xv::devices::blkimpl
