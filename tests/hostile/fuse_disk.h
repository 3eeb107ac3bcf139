// SPDX-License-Identifier: GPL-2.0-only
// A one-file FUSE file system for fault injection: a real kernel file
// system (the daemon opens, reads, writes and fsyncs it through io_uring as
// any image) whose answers the test controls: EIO on a byte range, EIO on
// fsync, or a stall of every read/write for a while. Device-mapper's
// `error`/`delay` targets would do the same at the block layer, but this
// kernel has no device-mapper; FUSE is built in.
//
//   daemon io_uring --> kernel FUSE --> /dev/fuse --> FuseDisk thread (this process)
//                                                     data in memory, faults applied
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "xv/result.h"

struct fuse_session;

namespace xv::hostile {

/// Puts this process in a private mount and network namespace, mounts with
/// private propagation (call while single-threaded). Empty on success,
/// else why not.
std::string enter_private_mount_namespace();

class FuseDisk {
public:
    /// Mounts at `dir` (must exist) a file system holding "disk.img" of `size` bytes.
    static Result<std::unique_ptr<FuseDisk>> mount(const std::filesystem::path& dir, std::uint64_t size);
    ~FuseDisk();
    FuseDisk(const FuseDisk&) = delete;
    FuseDisk& operator=(const FuseDisk&) = delete;

    /// The image path.
    std::filesystem::path image() const { return dir_ / "disk.img"; }
    /// The bytes as the file system holds them.
    std::vector<std::byte> bytes(std::uint64_t off, std::size_t len);

    /// Reads/writes touching [eio_from, eio_to) fail with EIO while set.
    std::atomic<bool> eio_reads{false}, eio_writes{false}, eio_fsync{false};
    std::atomic<std::uint64_t> eio_from{0}, eio_to{~0ULL};
    /// Every read and write sleeps this long before it is answered.
    std::atomic<int> stall_ms{0};
    /// Counters.
    std::atomic<std::uint64_t> reads{0}, writes{0}, fsyncs{0}, eios{0};

private:
    FuseDisk() = default;
    friend struct FuseOps;
    std::filesystem::path dir_;
    std::uint64_t size_ = 0;
    std::mutex mu_;
    std::vector<std::byte> data_;
    fuse_session* se_ = nullptr;
    std::thread th_;
};

}  // namespace xv::hostile
