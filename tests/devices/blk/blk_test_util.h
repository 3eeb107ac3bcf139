// SPDX-License-Identifier: GPL-2.0-only
// Test fixture for virtio-blk: a temp backing file, a simulated guest with
// its driver-side queues (tests/support), the device under test, and
// helpers that build requests as the Linux driver does.
#pragma once

#include <gtest/gtest.h>

#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "xv/devices/blk.h"
#include "xv/test/queue_harness.h"
#include "xv/test/virtqueue_driver.h"

namespace xv::devices::blktest {

namespace blk = xv::devices::blk;
using test::Submitted;
using test::UsedElem;

/// A temporary file of `bytes` bytes, removed at destruction.
class TempFile {
public:
    explicit TempFile(std::uint64_t bytes, bool fill = true, const char* dir = "/var/tmp") {
        path_ = std::string(dir) + "/xv-blk-test-XXXXXX";
        fd_ = ::mkstemp(path_.data());
        if (fd_ < 0) return;
        if (fill) {
            std::vector<std::byte> buf(1 << 16);
            std::mt19937_64 rng(bytes);
            for (std::uint64_t off = 0; off < bytes; off += buf.size()) {
                for (auto& b : buf) b = std::byte(rng());
                const auto n = std::min<std::uint64_t>(buf.size(), bytes - off);
                if (::pwrite(fd_, buf.data(), n, off_t(off)) != ssize_t(n)) break;
            }
        } else if (::ftruncate(fd_, off_t(bytes)) != 0) {
            ::close(fd_);
            fd_ = -1;
        }
    }
    ~TempFile() {
        if (fd_ >= 0) ::close(fd_);
        ::unlink(path_.c_str());
    }
    bool ok() const { return fd_ >= 0; }
    int fd() const { return fd_; }
    const std::string& path() const { return path_; }
    /// The file's bytes at [off, off + n).
    std::vector<std::byte> read(std::uint64_t off, std::size_t n) const {
        std::vector<std::byte> v(n);
        if (::pread(fd_, v.data(), n, off_t(off)) != ssize_t(n)) v.clear();
        return v;
    }
    void write(std::uint64_t off, std::span<const std::byte> d) const {
        if (::pwrite(fd_, d.data(), d.size(), off_t(off)) != ssize_t(d.size())) ADD_FAILURE() << "pwrite";
    }
    std::uint64_t blocks() const {
        struct stat st {};
        ::fstat(fd_, &st);
        return std::uint64_t(st.st_blocks);
    }

private:
    std::string path_;
    int fd_ = -1;
};

/// Bytes of a request header.
inline std::vector<std::byte> header(std::uint32_t type, std::uint64_t sector) {
    blk::OutHdr h{type, 0, sector};
    std::vector<std::byte> v(sizeof h);
    std::memcpy(v.data(), &h, sizeof h);
    return v;
}

/// Bytes of discard/write-zeroes segments.
inline std::vector<std::byte> segments(std::initializer_list<blk::DiscardSeg> segs) {
    std::vector<std::byte> v(segs.size() * sizeof(blk::DiscardSeg));
    std::memcpy(v.data(), std::data(segs), v.size());
    return v;
}

/// A pattern of `n` bytes derived from `seed`.
inline std::vector<std::byte> pattern(std::size_t n, std::uint32_t seed) {
    std::vector<std::byte> v(n);
    std::mt19937 rng(seed);
    for (auto& b : v) b = std::byte(rng());
    return v;
}

/// The status byte of a submitted request (last byte of its last buffer).
inline std::uint8_t status_of(const Submitted& s) {
    if (s.bufs.empty() || !s.bufs.back().ptr || s.bufs.back().len == 0) return 0xee;
    const auto& b = s.bufs.back();
    return std::uint8_t(b.ptr[b.len - 1]);
}

/// Device + guest + queues.
class BlkFixture : public ::testing::Test {
protected:
    /// Features a Linux driver accepts from what the device offers.
    std::uint64_t driver_features() const {
        return dev_->device_features() | transport::feature::bit(transport::feature::kVersion1) |
               transport::feature::bit(transport::feature::kAccessPlatform);
    }

    /// Builds the device over `file` with `cfg` (path filled in) and
    /// `nqueues` driver queues of `qsize` entries, and activates it.
    void start(const TempFile& file, BlkConfig cfg = {}, std::uint16_t qsize = 64,
               xen::sim::SimOptions opts = {}, std::uint64_t guest_pages = 8192) {
        start_path(file.path(), std::move(cfg), qsize, opts, guest_pages);
    }

    void start_path(const std::string& path, BlkConfig cfg = {}, std::uint16_t qsize = 64,
                    xen::sim::SimOptions opts = {}, std::uint64_t guest_pages = 8192,
                    std::uint64_t features_mask = ~0ULL) {
        auto h = test::QueueHarness::create(opts, guest_pages);
        ASSERT_TRUE(h) << h.error().describe();
        h_ = std::move(*h);
        cfg.path = path;
        auto d = make_blk(cfg, transport::DeviceIdentity{h_->domid, "blk0"}, h_->io.get_executor());
        ASSERT_TRUE(d) << d.error().describe();
        dev_.reset(dynamic_cast<BlkDevice*>(d->release()));
        ASSERT_NE(dev_, nullptr);
        ASSERT_EQ(dev_->device_id(), transport::DeviceId::Block);
        drivers_.clear();
        queues_.clear();
        for (std::uint16_t q = 0; q < std::max<std::uint16_t>(1, cfg.queues); ++q) {
            test::DriverOptions o;
            o.size = qsize;
            o.index = q;
            o.log_name = "dom" + std::to_string(h_->domid) + " blk0 q" + std::to_string(q);
            auto drv = h_->driver(o);
            ASSERT_TRUE(drv) << drv.error().describe();
            auto vq = h_->queue(**drv);
            ASSERT_TRUE(vq) << vq.error().describe();
            drivers_.push_back(std::move(*drv));
            queues_.push_back(std::move(*vq));
        }
        activate(features_mask);
    }

    void activate(std::uint64_t features_mask = ~0ULL) {
        transport::ActivateContext ctx;
        ctx.features = driver_features() & features_mask;
        for (auto& q : queues_) ctx.queues.push_back(q.get());
        ctx.needs_reset = [this](const Error& e) { needs_reset_.push_back(e); };
        ctx.config_changed = [] {};
        auto r = dev_->activate(std::move(ctx));
        ASSERT_TRUE(r) << r.error().describe();
    }

    test::VirtqueueDriver& drv(std::size_t q = 0) { return *drivers_.at(q); }

    /// Kicks queue `q` on its strand (as the transport does).
    void kick(std::uint16_t q = 0) {
        boost::asio::post(queues_.at(q)->strand(), [this, q] { dev_->queue_notify(q); });
    }

    /// Runs the loop until `n` used entries arrived on queue `q` (or 20 s).
    std::vector<UsedElem> wait_used(std::size_t n, std::uint16_t q = 0) {
        std::vector<UsedElem> out;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
            while (auto u = drv(q).next_used()) out.push_back(*u);
            if (out.size() >= n) break;
            h_->io.restart();
            h_->io.run_for(std::chrono::milliseconds(2));
        }
        while (auto u = drv(q).next_used()) out.push_back(*u);
        return out;
    }

    /// Submits one chain on queue `q`, kicks, waits, returns its used len.
    std::uint32_t roundtrip(const Submitted& s, std::uint16_t q = 0) {
        kick(q);
        auto used = wait_used(1, q);
        EXPECT_EQ(used.size(), 1u);
        if (used.empty()) return ~0u;
        EXPECT_EQ(used[0].id, s.id);
        return used[0].len;
    }

    /// A read of `len` bytes at `sector` into one writable buffer.
    Submitted read_req(std::uint64_t sector, std::uint32_t len, std::uint16_t q = 0) {
        auto s = drv(q).chain().readable(header(blk::req::kIn, sector)).writable(len).writable(1).submit();
        EXPECT_TRUE(s) << (s ? "" : s.error().describe());
        return s ? std::move(*s) : Submitted{};
    }

    /// A write of `data` at `sector`.
    Submitted write_req(std::uint64_t sector, std::span<const std::byte> data, std::uint16_t q = 0) {
        auto s = drv(q).chain().readable(header(blk::req::kOut, sector)).readable(data).writable(1).submit();
        EXPECT_TRUE(s) << (s ? "" : s.error().describe());
        return s ? std::move(*s) : Submitted{};
    }

    /// A request with only a header and the status byte (FLUSH, unknown types).
    Submitted bare_req(std::uint32_t type, std::uint64_t sector = 0, std::uint16_t q = 0) {
        auto s = drv(q).chain().readable(header(type, sector)).writable(1).submit();
        EXPECT_TRUE(s) << (s ? "" : s.error().describe());
        return s ? std::move(*s) : Submitted{};
    }

    /// A DISCARD / WRITE_ZEROES request with `segs`.
    Submitted seg_req(std::uint32_t type, std::span<const std::byte> segs, std::uint16_t q = 0) {
        auto s = drv(q).chain().readable(header(type, 0)).readable(segs).writable(1).submit();
        EXPECT_TRUE(s) << (s ? "" : s.error().describe());
        return s ? std::move(*s) : Submitted{};
    }

    /// Resets the device and runs the loop until done() was called.
    bool reset_and_wait() {
        bool done = false;
        dev_->reset([&] { done = true; });
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while (!done && std::chrono::steady_clock::now() < deadline) {
            h_->io.restart();
            h_->io.run_for(std::chrono::milliseconds(2));
        }
        return done;
    }

    void TearDown() override {
        if (dev_) {
            EXPECT_TRUE(reset_and_wait());
        }
        if (h_) {
            // Handlers still queued hold the workers; let them run out.
            h_->io.restart();
            h_->io.poll();
        }
        dev_.reset();
        queues_.clear();
        drivers_.clear();
        if (h_) {
            h_->io.restart();
            h_->io.poll();
        }
        h_.reset();
    }

    std::unique_ptr<test::QueueHarness> h_;
    std::unique_ptr<BlkDevice> dev_;
    std::vector<std::unique_ptr<test::VirtqueueDriver>> drivers_;
    std::vector<std::unique_ptr<transport::Virtqueue>> queues_;
    std::vector<Error> needs_reset_;
};

}  // namespace xv::devices::blktest
