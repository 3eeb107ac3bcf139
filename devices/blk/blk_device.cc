// SPDX-License-Identifier: GPL-2.0-only
// The virtio-blk device: features, config space, activation and reset.
#include <boost/asio/post.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <mutex>

#include "blk_backing.h"
#include "blk_queue.h"
#include "xv/devices/blk.h"
#include "xv/log.h"

namespace xv::devices {

namespace {

using blkimpl::Backing;
using blkimpl::DeviceShared;
using blkimpl::QueueWorker;
using transport::feature::bit;

// Limits we advertise (virtio 1.2 §5.2.4).
constexpr std::uint32_t kSizeMax = 1u << 20;          // bytes per segment
constexpr std::uint32_t kMaxDiscardSectors = 1u << 22;  // 2 GiB per segment
constexpr std::uint32_t kMaxDiscardSeg = 32;
constexpr std::uint32_t kMaxWriteZeroesSectors = 1u << 22;
constexpr std::uint32_t kMaxWriteZeroesSeg = 32;

template <class T>
void put(std::array<std::byte, blk::cfg::kSize>& a, std::uint32_t off, T v) {
    static_assert(std::is_integral_v<T>);
    std::memcpy(a.data() + off, &v, sizeof v);  // little-endian host (see blk_request.cc)
}

unsigned log2u(std::uint32_t v) {
    unsigned r = 0;
    while (v > 1) {
        v >>= 1;
        ++r;
    }
    return r;
}

class BlkDeviceImpl final : public BlkDevice {
public:
    BlkDeviceImpl(const BlkConfig& cfg, transport::DeviceIdentity id, boost::asio::any_io_executor ex,
                  std::shared_ptr<Backing> backing)
        : cfg_(cfg), id_(std::move(id)), ex_(std::move(ex)), backing_(std::move(backing)),
          writeback_(std::make_shared<std::atomic<std::uint8_t>>(1)),
          stats_(std::make_shared<blkimpl::SharedStats>()) {
        cfg_.queues = std::max<std::uint16_t>(1, cfg_.queues);
        build_config();
    }

    ~BlkDeviceImpl() override {
        std::lock_guard lk(mu_);
        if (!workers_.empty()) {
            spdlog::error("{}: destroyed while active; stopping its queues without waiting", id_.label());
            for (auto& w : workers_)
                if (w) w->quiesce([] {});
        }
    }

    transport::DeviceId device_id() const override { return transport::DeviceId::Block; }
    const transport::DeviceIdentity& identity() const override { return id_; }

    std::uint64_t device_features() const override {
        namespace f = blk::feature;
        // virtio 1.2 §5.2.5.2: devices SHOULD always offer FLUSH, and MUST
        // offer it if they offer CONFIG_WCE.
        std::uint64_t v = bit(f::kSizeMax) | bit(f::kSegMax) | bit(f::kBlkSize) | bit(f::kTopology) |
                          bit(f::kFlush) | bit(f::kConfigWce);
        if (cfg_.readonly) v |= bit(f::kRo);
        if (cfg_.queues > 1) v |= bit(f::kMq);
        if (!cfg_.readonly) {
            v |= bit(f::kWriteZeroes);
            if (cfg_.discard) v |= bit(f::kDiscard);
        }
        return v;
    }

    std::uint16_t num_queues() const override { return cfg_.queues; }
    std::uint32_t config_size() const override { return blk::cfg::kSize; }

    void read_config(std::uint32_t offset, std::span<std::byte> out) const override {
        // The transport checked the range; check again, it costs nothing.
        if (offset > config_.size() || out.size() > config_.size() - offset) return;
        std::memcpy(out.data(), config_.data() + offset, out.size());
        const std::uint32_t wb = blk::cfg::kWriteback;
        if (wb >= offset && wb < offset + out.size())
            out[wb - offset] = std::byte{writeback_->load(std::memory_order_relaxed)};
    }

    void write_config(std::uint32_t offset, std::span<const std::byte> data) override {
        // virtio 1.2 §5.2.5: with CONFIG_WCE the driver sets `writeback`
        // (0 writethrough, 1 writeback); every other field is read-only.
        if (offset != blk::cfg::kWriteback || data.size() != 1) return;
        const auto v = std::uint8_t(data[0]);
        if (v > 1) {
            XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: writeback value {} ignored (0 or 1)", id_.label(), v);
            return;
        }
        writeback_->store(v, std::memory_order_relaxed);
    }

    Result<void> activate(transport::ActivateContext ctx) override {
        namespace f = blk::feature;
        if (ctx.queues.size() > cfg_.queues)
            return make_error(std::errc::invalid_argument,
                              id_.label() + ": " + std::to_string(ctx.queues.size()) + " queues given, device has " +
                                  std::to_string(cfg_.queues));
        auto has = [&](unsigned b) { return (ctx.features & bit(b)) != 0; };
        auto shared = std::make_shared<DeviceShared>();
        shared->backing = backing_;
        shared->label = id_.label();
        std::memcpy(shared->id.data(), cfg_.serial.data(), std::min(cfg_.serial.size(), shared->id.size()));
        auto& lim = shared->limits;
        lim.capacity_sectors = backing_->capacity_sectors();
        // virtio 1.2 §5.2.6.2: writes fail "if the VIRTIO_BLK_F_RO feature if
        // offered", whatever the driver accepted.
        lim.readonly = cfg_.readonly;
        lim.discard = has(f::kDiscard) && (device_features() & bit(f::kDiscard));
        lim.write_zeroes = has(f::kWriteZeroes) && (device_features() & bit(f::kWriteZeroes));
        lim.max_discard_sectors = kMaxDiscardSectors;
        lim.max_discard_seg = kMaxDiscardSeg;
        lim.max_write_zeroes_sectors = kMaxWriteZeroesSectors;
        lim.max_write_zeroes_seg = kMaxWriteZeroesSeg;
        shared->use_direct = cfg_.direct;
        shared->flush_negotiated = has(f::kFlush);
        shared->wce_negotiated = has(f::kConfigWce);
        // virtio 1.2 §5.2.5.2: CONFIG_WCE without FLUSH: writeback starts at 0.
        if (shared->wce_negotiated && !shared->flush_negotiated) writeback_->store(0);
        shared->writeback = writeback_;
        shared->stats = stats_;
        shared->io_depth = cfg_.io_depth;

        std::vector<std::shared_ptr<QueueWorker>> workers(ctx.queues.size());
        bool any = false;
        for (std::size_t q = 0; q < ctx.queues.size(); ++q) {
            if (!ctx.queues[q]) continue;
            auto w = QueueWorker::create(*ctx.queues[q], shared, ex_);
            if (!w) {
                for (auto& started : workers)
                    if (started) started->quiesce([] {});
                return std::move(w).error();
            }
            workers[q] = std::move(*w);
            any = true;
        }
        if (!any) return make_error(std::errc::invalid_argument, id_.label() + ": no request queue enabled");
        std::lock_guard lk(mu_);
        workers_ = std::move(workers);
        spdlog::info("{}: active, {} sectors, {} queue(s), {}{}", id_.label(), lim.capacity_sectors,
                     ctx.queues.size(), cfg_.readonly ? "read-only" : "read-write",
                     backing_->direct_fd() >= 0 && cfg_.direct ? ", O_DIRECT" : "");
        return ok();
    }

    void reset(std::function<void()> done) override {
        std::vector<std::shared_ptr<QueueWorker>> workers;
        {
            std::lock_guard lk(mu_);
            workers = std::move(workers_);
            workers_.clear();
        }
        // virtio 1.2 §5.2.5: the cache mode after reset can be either; we
        // return to writeback.
        writeback_->store(1);
        struct State {
            std::atomic<std::size_t> left{0};
            std::function<void()> done;
        };
        auto st = std::make_shared<State>();
        st->done = std::move(done);
        std::size_t n = 0;
        for (auto& w : workers)
            if (w) ++n;
        if (n == 0) {
            st->done();
            return;
        }
        st->left = n;
        for (auto& w : workers) {
            if (!w) continue;
            w->quiesce([st] {
                if (st->left.fetch_sub(1) == 1) st->done();
            });
        }
    }

    void queue_notify(std::uint16_t q) override {
        std::shared_ptr<QueueWorker> w;
        {
            std::lock_guard lk(mu_);
            if (q < workers_.size()) w = workers_[q];
        }
        if (w) w->kick();
    }

    std::uint64_t capacity_sectors() const override { return backing_->capacity_sectors(); }

    BlkStats stats() const override {
        const auto& s = *stats_;
        BlkStats r;
        r.requests = s.requests.load();
        r.errors = s.errors.load();
        r.bytes_read = s.bytes_read.load();
        r.bytes_written = s.bytes_written.load();
        r.flushes = s.flushes.load();
        r.direct_ios = s.direct_ios.load();
        r.buffered_ios = s.buffered_ios.load();
        r.dropped_chains = s.dropped_chains.load();
        return r;
    }

    std::uint64_t in_flight() const override {
        std::lock_guard lk(mu_);
        std::uint64_t n = 0;
        for (auto& w : workers_)
            if (w) n += w->in_flight();
        return n;
    }

private:
    void build_config() {
        namespace c = blk::cfg;
        config_.fill(std::byte{0});  // §5.2.5.2: unused0/unused1 MUST be 0
        put<std::uint64_t>(config_, c::kCapacity, backing_->capacity_sectors());
        put<std::uint32_t>(config_, c::kSizeMax, kSizeMax);
        // seg_max: a chain also needs the header and the status descriptors.
        put<std::uint32_t>(config_, c::kSegMax, max_queue_size(0) - 2);
        const std::uint32_t lbs = backing_->logical_block();
        put<std::uint32_t>(config_, c::kBlkSize, lbs);
        put<std::uint8_t>(config_, c::kPhysicalBlockExp,
                          std::uint8_t(log2u(std::max(backing_->physical_block(), lbs) / lbs)));
        put<std::uint8_t>(config_, c::kAlignmentOffset, 0);
        put<std::uint16_t>(config_, c::kMinIoSize,
                           std::uint16_t(std::clamp<std::uint32_t>(backing_->min_io() / lbs, 1, 0xffff)));
        put<std::uint32_t>(config_, c::kOptIoSize, backing_->opt_io() / lbs);
        put<std::uint16_t>(config_, c::kNumQueues, cfg_.queues);
        put<std::uint32_t>(config_, c::kMaxDiscardSectors, kMaxDiscardSectors);
        put<std::uint32_t>(config_, c::kMaxDiscardSeg, kMaxDiscardSeg);
        put<std::uint32_t>(config_, c::kDiscardSectorAlignment,
                           std::max<std::uint32_t>(1, backing_->physical_block() / blk::kSectorSize));
        put<std::uint32_t>(config_, c::kMaxWriteZeroesSectors, kMaxWriteZeroesSectors);
        put<std::uint32_t>(config_, c::kMaxWriteZeroesSeg, kMaxWriteZeroesSeg);
        // §5.2.6.2: clear write_zeroes_may_unmap iff write zeroes never deallocates.
        put<std::uint8_t>(config_, c::kWriteZeroesMayUnmap, cfg_.discard ? 1 : 0);
    }

    BlkConfig cfg_;
    transport::DeviceIdentity id_;
    boost::asio::any_io_executor ex_;
    std::shared_ptr<Backing> backing_;
    std::array<std::byte, blk::cfg::kSize> config_{};
    std::shared_ptr<std::atomic<std::uint8_t>> writeback_;
    std::shared_ptr<blkimpl::SharedStats> stats_;
    mutable std::mutex mu_;
    std::vector<std::shared_ptr<QueueWorker>> workers_;
    log::RateLimit rl_;
};

}  // namespace

Result<std::unique_ptr<transport::Device>> make_blk(const BlkConfig& cfg, transport::DeviceIdentity id,
                                                    boost::asio::any_io_executor ex) {
    const std::string label = id.label();
    if (cfg.queues == 0 || cfg.queues > 64)
        return make_error(std::errc::invalid_argument, label + ": queues must be 1..64, not " + std::to_string(cfg.queues));
    auto backing = Backing::open(cfg, label);
    if (!backing) return std::move(backing).error();
    // Fail now, with a clear message, when io_uring cannot be used at all.
    io_uring probe{};
    int r = io_uring_queue_init(8, &probe, 0);
    if (r < 0) return errno_error(-r, label + ": io_uring is not available (kernel or seccomp policy)");
    io_uring_queue_exit(&probe);
    return std::unique_ptr<transport::Device>(
        std::make_unique<BlkDeviceImpl>(cfg, std::move(id), std::move(ex), std::move(*backing)));
}

}  // namespace xv::devices
