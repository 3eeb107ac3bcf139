// SPDX-License-Identifier: GPL-2.0-only
#include "fuse_disk.h"

#include <sched.h>
#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <string_view>

#ifdef XV_HAVE_FUSE
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#endif

namespace xv::hostile {

std::string enter_private_mount_namespace() {
    // A private network namespace too: the taps of the fault tests are
    // created and deleted there, never on the host.
    if (::unshare(CLONE_NEWNS | CLONE_NEWNET) != 0)
        return std::string("unshare(CLONE_NEWNS | CLONE_NEWNET): ") + std::strerror(errno);
    if (::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
        return std::string("make / private: ") + std::strerror(errno);
    return {};
}

#ifndef XV_HAVE_FUSE

Result<std::unique_ptr<FuseDisk>> FuseDisk::mount(const std::filesystem::path&, std::uint64_t) {
    return make_error(std::errc::function_not_supported, "built without libfuse3 (install libfuse3-dev)");
}
std::vector<std::byte> FuseDisk::bytes(std::uint64_t, std::size_t) { return {}; }
FuseDisk::~FuseDisk() = default;

#else

namespace {
constexpr fuse_ino_t kFileIno = 2;
constexpr std::string_view kName = "disk.img";
}  // namespace

struct FuseOps {
    static FuseDisk& self(fuse_req_t req) { return *static_cast<FuseDisk*>(fuse_req_userdata(req)); }

    static void fill(FuseDisk& d, fuse_ino_t ino, struct stat& st) {
        std::memset(&st, 0, sizeof st);
        st.st_ino = ino;
        if (ino == FUSE_ROOT_ID) {
            st.st_mode = S_IFDIR | 0755;
            st.st_nlink = 2;
        } else {
            st.st_mode = S_IFREG | 0644;
            st.st_nlink = 1;
            st.st_size = off_t(d.size_);
            st.st_blksize = 4096;
            st.st_blocks = off_t(d.size_ / 512);
        }
    }

    static void lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
        if (parent != FUSE_ROOT_ID || kName != name) return (void)fuse_reply_err(req, ENOENT);
        fuse_entry_param e{};
        e.ino = kFileIno;
        e.attr_timeout = 3600;
        e.entry_timeout = 3600;
        fill(self(req), kFileIno, e.attr);
        fuse_reply_entry(req, &e);
    }

    static void getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
        if (ino != FUSE_ROOT_ID && ino != kFileIno) return (void)fuse_reply_err(req, ENOENT);
        struct stat st;
        fill(self(req), ino, st);
        fuse_reply_attr(req, &st, 3600);
    }

    static void setattr(fuse_req_t req, fuse_ino_t ino, struct stat*, int, fuse_file_info* fi) {
        getattr(req, ino, fi);  // the size is fixed
    }

    static void open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
        if (ino != kFileIno) return (void)fuse_reply_err(req, EISDIR);
        fi->direct_io = 1;  // every read and write reaches us: no page cache in between
        fuse_reply_open(req, fi);
    }

    static bool faulty(FuseDisk& d, std::uint64_t off, std::uint64_t len) {
        return off < d.eio_to.load() && off + len > d.eio_from.load();
    }

    static void stall(FuseDisk& d) {
        if (int ms = d.stall_ms.load()) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    }

    static void read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info*) {
        FuseDisk& d = self(req);
        ++d.reads;
        stall(d);
        if (d.eio_reads && faulty(d, std::uint64_t(off), size)) {
            ++d.eios;
            return (void)fuse_reply_err(req, EIO);
        }
        std::lock_guard lk(d.mu_);
        if (std::uint64_t(off) >= d.size_) return (void)fuse_reply_buf(req, nullptr, 0);
        size = std::min<std::uint64_t>(size, d.size_ - std::uint64_t(off));
        fuse_reply_buf(req, reinterpret_cast<const char*>(d.data_.data() + off), size);
    }

    static void write(fuse_req_t req, fuse_ino_t, const char* buf, size_t size, off_t off, fuse_file_info*) {
        FuseDisk& d = self(req);
        ++d.writes;
        stall(d);
        if (d.eio_writes && faulty(d, std::uint64_t(off), size)) {
            ++d.eios;
            return (void)fuse_reply_err(req, EIO);
        }
        std::lock_guard lk(d.mu_);
        if (std::uint64_t(off) >= d.size_) return (void)fuse_reply_err(req, ENOSPC);
        size = std::min<std::uint64_t>(size, d.size_ - std::uint64_t(off));
        std::memcpy(d.data_.data() + off, buf, size);
        fuse_reply_write(req, size);
    }

    static void fsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) {
        FuseDisk& d = self(req);
        ++d.fsyncs;
        stall(d);
        if (d.eio_fsync) {
            ++d.eios;
            return (void)fuse_reply_err(req, EIO);
        }
        fuse_reply_err(req, 0);
    }

    static void flush(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }
    static void release(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }
};

Result<std::unique_ptr<FuseDisk>> FuseDisk::mount(const std::filesystem::path& dir, std::uint64_t size) {
    std::unique_ptr<FuseDisk> d(new FuseDisk());
    d->dir_ = dir;
    d->size_ = size;
    d->data_.resize(size);
    static const fuse_lowlevel_ops ops = [] {
        fuse_lowlevel_ops o{};
        o.lookup = FuseOps::lookup;
        o.getattr = FuseOps::getattr;
        o.setattr = FuseOps::setattr;
        o.open = FuseOps::open;
        o.read = FuseOps::read;
        o.write = FuseOps::write;
        o.fsync = FuseOps::fsync;
        o.flush = FuseOps::flush;
        o.release = FuseOps::release;
        return o;
    }();
    char arg0[] = "xv-fuse-disk";
    char* argv[] = {arg0, nullptr};
    fuse_args args = FUSE_ARGS_INIT(1, argv);
    d->se_ = fuse_session_new(&args, &ops, sizeof ops, d.get());
    fuse_opt_free_args(&args);
    if (!d->se_) return make_error(std::errc::io_error, "fuse_session_new failed");
    if (fuse_session_mount(d->se_, dir.c_str()) != 0) {
        fuse_session_destroy(d->se_);
        d->se_ = nullptr;
        return make_error(std::errc::operation_not_permitted, "cannot mount FUSE at " + dir.string());
    }
    d->th_ = std::thread([se = d->se_] { fuse_session_loop(se); });
    return d;
}

std::vector<std::byte> FuseDisk::bytes(std::uint64_t off, std::size_t len) {
    std::lock_guard lk(mu_);
    if (off >= size_) return {};
    len = std::min<std::uint64_t>(len, size_ - off);
    return {data_.begin() + std::ptrdiff_t(off), data_.begin() + std::ptrdiff_t(off + len)};
}

FuseDisk::~FuseDisk() {
    if (!se_) return;
    stall_ms = 0;
    fuse_session_exit(se_);
    fuse_session_unmount(se_);  // the loop's read of /dev/fuse returns ENODEV
    if (th_.joinable()) th_.join();
    fuse_session_destroy(se_);
}

#endif  // XV_HAVE_FUSE

}  // namespace xv::hostile
