// SPDX-License-Identifier: GPL-2.0-only
#include "blk_backing.h"

#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "xv/log.h"

namespace xv::devices::blkimpl {

namespace {

bool power_of_two(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

Result<std::shared_ptr<Backing>> Backing::open(const BlkConfig& cfg, const std::string& label) {
    if (cfg.path.empty()) return make_error(std::errc::invalid_argument, label + ": no backing path configured");
    std::shared_ptr<Backing> b(new Backing());
    b->path_ = cfg.path;
    b->readonly_ = cfg.readonly;
    const int mode = cfg.readonly ? O_RDONLY : O_RDWR;
    b->fd_ = ::open(cfg.path.c_str(), mode | O_CLOEXEC);
    if (b->fd_ < 0) return errno_error(errno, label + ": open " + cfg.path);

    struct stat st {};
    if (::fstat(b->fd_, &st) != 0) return errno_error(errno, label + ": stat " + cfg.path);
    if (S_ISREG(st.st_mode)) {
        b->kind_ = BackingKind::File;
        b->capacity_sectors_ = std::uint64_t(st.st_size) / blk::kSectorSize;
        b->logical_block_ = 512;
        std::uint64_t pb = std::uint64_t(st.st_blksize);
        b->physical_block_ = (power_of_two(pb) && pb >= 512 && pb <= 65536) ? std::uint32_t(pb) : 512;
        b->min_io_ = b->physical_block_;
    } else if (S_ISBLK(st.st_mode)) {
        b->kind_ = BackingKind::BlockDevice;
        std::uint64_t bytes = 0;
        if (::ioctl(b->fd_, BLKGETSIZE64, &bytes) != 0) return errno_error(errno, label + ": BLKGETSIZE64 " + cfg.path);
        b->capacity_sectors_ = bytes / blk::kSectorSize;
        int lbs = 512;
        unsigned int pbs = 512, iomin = 0, ioopt = 0;
        if (::ioctl(b->fd_, BLKSSZGET, &lbs) != 0 || lbs < 512 || !power_of_two(std::uint64_t(lbs))) lbs = 512;
        if (::ioctl(b->fd_, BLKPBSZGET, &pbs) != 0 || pbs < unsigned(lbs) || !power_of_two(pbs)) pbs = unsigned(lbs);
        if (::ioctl(b->fd_, BLKIOMIN, &iomin) != 0) iomin = 0;
        if (::ioctl(b->fd_, BLKIOOPT, &ioopt) != 0) ioopt = 0;
        b->logical_block_ = std::uint32_t(lbs);
        b->physical_block_ = pbs;
        b->min_io_ = iomin;
        b->opt_io_ = ioopt;
    } else {
        return make_error(std::errc::invalid_argument, label + ": " + cfg.path + " is neither a regular file nor a block device");
    }
    if (b->capacity_sectors_ == 0) spdlog::warn("{}: {} is smaller than one sector; every request will fail", label, cfg.path);

    b->direct_align_ = b->logical_block_;
    if (cfg.direct) {
        b->direct_fd_ = ::open(cfg.path.c_str(), mode | O_CLOEXEC | O_DIRECT);
        if (b->direct_fd_ < 0) {
            spdlog::warn("{}: O_DIRECT not available on {} ({}); using the page cache only", label, cfg.path,
                         std::error_code(errno, std::generic_category()).message());
        }
    }
    return b;
}

Backing::~Backing() {
    if (pool_) pool_->join();  // helper ops hold no guest memory; they finish quickly
    if (direct_fd_ >= 0) ::close(direct_fd_);
    if (fd_ >= 0) ::close(fd_);
}

void Backing::run_blocking(std::function<void()> fn) {
    std::lock_guard lk(pool_mu_);
    if (!pool_) pool_ = std::make_unique<boost::asio::thread_pool>(2);
    boost::asio::post(*pool_, std::move(fn));
}

int blockdev_discard(int fd, std::uint64_t offset, std::uint64_t len) {
    std::uint64_t range[2] = {offset, len};
    return ::ioctl(fd, BLKDISCARD, range) == 0 ? 0 : errno;
}

int blockdev_zeroout(int fd, std::uint64_t offset, std::uint64_t len) {
    std::uint64_t range[2] = {offset, len};
    return ::ioctl(fd, BLKZEROOUT, range) == 0 ? 0 : errno;
}

}  // namespace xv::devices::blkimpl
