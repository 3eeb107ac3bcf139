// SPDX-License-Identifier: GPL-2.0-only
// The common virtio transport core: status, features, queues, reset.
#include "xv/transport/virtio_core.h"

#include <boost/asio/post.hpp>

#include <fmt/format.h>

#include <utility>

#include "xv/xen/types.h"

namespace xv::transport {

namespace {

/// Runs `fn` on `strand`.
template <class Fn>
void post_to(Strand& strand, Fn&& fn) {
    boost::asio::post(strand, std::forward<Fn>(fn));
}

constexpr std::uint8_t kKnownStatusBits = status::kAcknowledge | status::kDriver | status::kDriverOk |
                                          status::kFeaturesOk | status::kNeedsReset | status::kFailed;

}  // namespace

std::shared_ptr<VirtioCore> VirtioCore::make(std::shared_ptr<Device> device, TransportEnv env,
                                             std::string transport_name) {
    return std::shared_ptr<VirtioCore>(new VirtioCore(std::move(device), std::move(env), std::move(transport_name)));
}

VirtioCore::VirtioCore(std::shared_ptr<Device> device, TransportEnv env, std::string transport_name)
    : device_(std::move(device)),
      env_(std::move(env)),
      label_(device_->identity().label() + " (" + transport_name + ")"),
      device_id_(device_->device_id()),
      num_queues_(device_->num_queues()),
      config_size_(device_->config_size()),
      // virtio 1.2 §6.1: VERSION_1 marks a modern device; ACCESS_PLATFORM is
      // what Linux requires before it uses grant DMA (xen-facts §1.2).
      offered_(device_->device_features() | feature::bit(feature::kVersion1) |
               feature::bit(feature::kAccessPlatform) | env_.ring_features),
      control_(boost::asio::make_strand(env_.executor)) {
    queues_.resize(num_queues_);
    for (std::uint16_t q = 0; q < num_queues_; ++q) {
        auto max = device_->max_queue_size(q);
        // virtio 1.2 §2.7: a split queue size is a power of two, at most 32768.
        if (max > 32768) max = 32768;
        queues_[q].regs.max_size = max;
        queues_[q].regs.size = max;
        queues_[q].strand = std::make_unique<Strand>(boost::asio::make_strand(env_.executor));
    }
}

VirtioCore::~VirtioCore() {
    // A device destroyed together with its transport, without the orderly
    // reset (a worker torn down after a crash), may still own chains of its
    // queues, and a chain releases itself into its Virtqueue: drop the
    // device (when this is its last owner) while queues_ still exist.
    device_.reset();
}

void VirtioCore::set_hooks(CoreHooks* hooks) {
    std::lock_guard lk(mu_);
    hooks_ = hooks;
}

std::uint32_t VirtioCore::device_features_word_locked(std::uint32_t sel) const {
    if (sel > 1) return 0;  // virtio 1.2 §4.2.2: bits beyond 63 are not offered
    return std::uint32_t(offered_ >> (32 * sel));
}

std::uint32_t VirtioCore::driver_features_word_locked(std::uint32_t sel) const {
    if (sel > 1) return 0;
    return std::uint32_t(driver_features_ >> (32 * sel));
}

void VirtioCore::set_driver_features_word_locked(std::uint32_t sel, std::uint32_t value) {
    // virtio 1.2 §3.1.1: features are written before FEATURES_OK; afterwards
    // the negotiated set is fixed.
    if (status_ & status::kFeaturesOk) {
        XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: driver features written after FEATURES_OK, ignored", label_);
        return;
    }
    if (sel > 1) {
        if (value != 0)
            XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: driver features word {} = {:#x} ignored", label_, sel,
                           value);
        return;
    }
    std::uint64_t mask = 0xffffffffULL << (32 * sel);
    driver_features_ = (driver_features_ & ~mask) | (std::uint64_t(value) << (32 * sel));
}

bool VirtioCore::features_acceptable_locked(std::string& why) const {
    // virtio 1.2 §2.2.1: the driver MUST NOT accept a feature the device did
    // not offer; §3.1.1 step 5-6: the device re-checks at FEATURES_OK.
    if (auto extra = driver_features_ & ~offered_) {
        why = fmt::format("driver accepted features {:#x} that were not offered", extra);
        return false;
    }
    // virtio 1.2 §6.1: a modern-only device may refuse a driver that does
    // not accept VERSION_1 (we have no legacy interface).
    if (!(driver_features_ & feature::bit(feature::kVersion1))) {
        why = "driver did not accept VIRTIO_F_VERSION_1";
        return false;
    }
    // virtio 1.2 §6.1: "A device MAY fail to operate further if
    // VIRTIO_F_ACCESS_PLATFORM is not accepted" - grants only.
    if (env_.require_access_platform && !(driver_features_ & feature::bit(feature::kAccessPlatform))) {
        why = "driver did not accept VIRTIO_F_ACCESS_PLATFORM (grant DMA is required)";
        return false;
    }
    return true;
}

void VirtioCore::write_status_locked(std::uint8_t value, Done done) {
    if (value == 0) {
        // virtio 1.2 §2.4: writing 0 resets the device.
        start_reset_locked(std::move(done), false);
        return;
    }
    // Synchronous outcomes complete `done` once the caller unlocked.
    PendingDone fin{this, std::move(done)};
    if (stopping_ || state_ == CoreState::Stopped) return;
    if (state_ == CoreState::Resetting) {
        // virtio 1.2 §4.2.3.1 / §4.1.4.3.2: the driver waits for status 0.
        XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: status {:#x} written during reset, ignored", label_, value);
        return;
    }
    if (status_ & status::kNeedsReset) {
        XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: status {:#x} written while DEVICE_NEEDS_RESET, ignored",
                       label_, value);
        return;
    }
    const std::uint8_t cur = status_;
    if (value & ~kKnownStatusBits) {
        needs_reset_locked(fmt::format("status {:#x} sets reserved bits", value));
        return;
    }
    // virtio 1.2 §2.1.2: the driver MUST NOT clear a device status bit.
    if (cur & ~value) {
        needs_reset_locked(fmt::format("status {:#x} -> {:#x} clears bits", cur, value));
        return;
    }
    const std::uint8_t added = value & ~cur;
    if (added == 0) return;
    // virtio 1.2 §2.1.2: DEVICE_NEEDS_RESET is set by the device only.
    if (added & status::kNeedsReset) {
        needs_reset_locked("driver set DEVICE_NEEDS_RESET");
        return;
    }
    if (added & status::kFailed) {
        // virtio 1.2 §2.1: FAILED - the driver gave up on the device.
        spdlog::warn("{}: driver set FAILED (status {:#x})", label_, value);
        status_ = value;
        return;
    }
    // virtio 1.2 §3.1.1: ACKNOWLEDGE, then DRIVER, then FEATURES_OK, then
    // DRIVER_OK, each step with every earlier bit still set.
    if ((added & status::kDriver) && !(value & status::kAcknowledge)) {
        needs_reset_locked("DRIVER set without ACKNOWLEDGE");
        return;
    }
    if ((added & status::kFeaturesOk) && !(value & status::kDriver)) {
        needs_reset_locked("FEATURES_OK set without DRIVER");
        return;
    }
    if ((added & status::kDriverOk) && !(value & status::kFeaturesOk)) {
        needs_reset_locked("DRIVER_OK set without FEATURES_OK");
        return;
    }
    if ((added & status::kDriverOk) && (added & status::kFeaturesOk)) {
        needs_reset_locked("FEATURES_OK and DRIVER_OK set in one write (FEATURES_OK must be re-read first)");
        return;
    }
    std::uint8_t next = value;
    if (added & status::kFeaturesOk) {
        std::string why;
        if (!features_acceptable_locked(why)) {
            // virtio 1.2 §3.1.1 step 6: the device leaves FEATURES_OK unset
            // and the driver finds it so when it re-reads status.
            XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: FEATURES_OK refused: {}", label_, why);
            next &= std::uint8_t(~status::kFeaturesOk);
        }
    }
    status_ = next;
    if (next & status::kFeaturesOk) state_ = CoreState::FeaturesOk;
    else if (next & status::kDriver) state_ = CoreState::Driver;
    else if (next & status::kAcknowledge) state_ = CoreState::Acked;

    if (added & status::kDriverOk) {
        state_ = CoreState::Activating;
        // The done of this write waits for the activation, not for the ioreq.
        Done d = std::move(fin.d);
        fin.d = nullptr;
        auto self = shared_from_this();
        std::uint64_t epoch = epoch_;
        post_to(control_, [self, epoch, d = std::move(d)]() mutable { self->activate_on_control(epoch, std::move(d)); });
    }
}

void VirtioCore::activate_on_control(std::uint64_t epoch, Done done) {
    ActivateContext ctx;
    std::vector<std::uint16_t> live;
    bool skip = false;
    {
        std::lock_guard lk(mu_);
        if (epoch != epoch_ || state_ != CoreState::Activating || (status_ & status::kNeedsReset)) skip = true;
        ctx.features = driver_features_;
        ctx.queues.resize(num_queues_, nullptr);
        for (std::uint16_t q = 0; q < num_queues_; ++q) {
            if (queues_[q].vq) {
                ctx.queues[q] = queues_[q].vq.get();
                live.push_back(q);
            }
        }
    }
    if (skip) {
        if (done) done();
        return;
    }
    std::weak_ptr<VirtioCore> weak = weak_from_this();
    ctx.config_changed = [weak, epoch] {
        auto self = weak.lock();
        if (!self) return;
        std::lock_guard lk(self->mu_);
        if (epoch != self->epoch_) return;
        // virtio 1.2 §2.5.1: the generation changes with the config space.
        ++self->config_generation_;
        if (self->status_ & status::kDriverOk) self->raise_locked(IrqCause::Config, 0);
    };
    ctx.needs_reset = [weak, epoch](const Error& e) {
        auto self = weak.lock();
        if (!self) return;
        std::lock_guard lk(self->mu_);
        if (epoch != self->epoch_) return;
        self->needs_reset_locked(e.describe());
    };
    auto r = device_->activate(std::move(ctx));
    {
        std::lock_guard lk(mu_);
        if (epoch == epoch_) {
            if (!r) {
                needs_reset_locked("activate failed: " + r.error().describe());
            } else if (state_ == CoreState::Activating) {
                state_ = CoreState::Active;
            }
        }
    }
    // Kicks that arrived before activation finished were not delivered:
    // notify every live queue once (a spurious notification is harmless,
    // virtio 1.2 §2.9).
    auto self = shared_from_this();
    for (auto q : live) {
        post_to(*queues_[q].strand, [self, q, epoch] {
            {
                std::lock_guard lk(self->mu_);
                if (epoch != self->epoch_ || self->state_ != CoreState::Active) return;
            }
            self->device_->queue_notify(q);
        });
    }
    if (done) done();
}

QueueRegs* VirtioCore::queue_locked(std::uint16_t q) {
    if (q >= num_queues_) return nullptr;
    return &queues_[q].regs;
}

bool VirtioCore::queue_config_writable_locked(std::uint16_t q) const {
    if (q >= num_queues_) return false;
    // virtio 1.2 §4.2.2.3 / §4.1.4.3.2: the queue is configured while it is
    // not ready, and not while the device is resetting.
    return !queues_[q].regs.ready && state_ != CoreState::Resetting && !stopping_;
}

void VirtioCore::set_queue_ready_locked(std::uint16_t q, bool ready, Done done) {
    PendingDone fin{this, std::move(done)};
    if (q >= num_queues_ || stopping_ || state_ == CoreState::Resetting) return;
    auto& slot = queues_[q];
    if (!ready) {
        if (!slot.regs.ready) return;
        slot.regs.ready = false;
        ++slot.gen;
        if (state_ == CoreState::Active || state_ == CoreState::Activating) {
            // virtio 1.2 §4.2.2.3: a live queue is only stopped by reset.
            needs_reset_locked(fmt::format("queue {} disabled while the device runs", q));
            return;
        }
        if (slot.vq) {
            auto vq = std::move(slot.vq);
            // Destroyed on the control strand, like it was created.
            post_to(control_, [vq = std::shared_ptr<Virtqueue>(std::move(vq))]() mutable { vq.reset(); });
        }
        return;
    }
    if (slot.regs.ready) return;
    if (status_ & status::kNeedsReset) return;
    // virtio 1.2 §3.1.1 step 7: queues are set up after FEATURES_OK.
    if (!(status_ & status::kFeaturesOk)) {
        needs_reset_locked(fmt::format("queue {} enabled before FEATURES_OK", q));
        return;
    }
    if (slot.regs.max_size == 0) {
        needs_reset_locked(fmt::format("queue {} enabled but not available", q));
        return;
    }
    const bool packed = driver_features_ & feature::bit(feature::kRingPacked);
    const auto size = slot.regs.size;
    // virtio 1.2 §2.7: split queue size is a power of 2; §2.8: packed any
    // size up to 32768; never 0 and never above QueueNumMax.
    if (size == 0 || size > slot.regs.max_size || (!packed && (size & (size - 1)) != 0)) {
        needs_reset_locked(fmt::format("queue {} size {} invalid (max {})", q, size, slot.regs.max_size));
        return;
    }
    // Grants only: every ring address is a grant DMA address (bit 63).
    for (auto [name, addr] : {std::pair{"descriptor", slot.regs.desc}, std::pair{"driver", slot.regs.driver},
                              std::pair{"device", slot.regs.device}}) {
        if (!xen::grant_dma::is_grant(addr)) {
            needs_reset_locked(
                fmt::format("queue {} {} area {:#x} is not a grant address (grants only)", q, name, addr));
            return;
        }
    }
    slot.regs.ready = true;
    std::uint64_t gen = ++slot.gen;
    Done d = std::move(fin.d);
    fin.d = nullptr;
    auto self = shared_from_this();
    std::uint64_t epoch = epoch_;
    post_to(control_, [self, q, epoch, gen, d = std::move(d)]() mutable {
        self->create_queue_on_control(q, epoch, gen, std::move(d));
    });
}

void VirtioCore::create_queue_on_control(std::uint16_t q, std::uint64_t epoch, std::uint64_t gen, Done done) {
    QueueConfig cfg;
    bool skip = false;
    {
        std::lock_guard lk(mu_);
        auto& slot = queues_[q];
        skip = epoch != epoch_ || gen != slot.gen || !slot.regs.ready;
        cfg.index = q;
        cfg.size = slot.regs.size;
        cfg.desc_addr = slot.regs.desc;
        cfg.driver_addr = slot.regs.driver;
        cfg.device_addr = slot.regs.device;
        cfg.packed = driver_features_ & feature::bit(feature::kRingPacked);
        cfg.event_idx = driver_features_ & feature::bit(feature::kEventIdx);
        cfg.indirect = driver_features_ & feature::bit(feature::kIndirectDesc);
        cfg.log_name = device_->identity().label() + " q" + std::to_string(q);
    }
    if (skip) {
        if (done) done();
        return;
    }
    std::weak_ptr<VirtioCore> weak = weak_from_this();
    auto raise = [weak, q, epoch] {
        auto self = weak.lock();
        if (!self) return;
        std::lock_guard lk(self->mu_);
        if (epoch != self->epoch_) return;
        self->raise_locked(IrqCause::Queue, q);
    };
    auto fatal = [weak, q, epoch](const Error& e) {
        auto self = weak.lock();
        if (!self) return;
        std::lock_guard lk(self->mu_);
        if (epoch != self->epoch_) return;
        // virtio 1.2 §2.1.2: a broken queue puts the device in NEEDS_RESET.
        self->needs_reset_locked(fmt::format("queue {} broken: {}", q, e.describe()));
    };
    auto r = create_virtqueue(cfg, *env_.memory, *queues_[q].strand, std::move(raise), std::move(fatal));
    std::unique_ptr<Virtqueue> stale;
    {
        std::lock_guard lk(mu_);
        auto& slot = queues_[q];
        if (!r) {
            if (epoch == epoch_ && gen == slot.gen)
                needs_reset_locked(fmt::format("queue {} setup failed: {}", q, r.error().describe()));
        } else if (epoch != epoch_ || gen != slot.gen || !slot.regs.ready) {
            stale = std::move(*r);
        } else {
            slot.vq = std::move(*r);
        }
    }
    stale.reset();
    if (done) done();
}

void VirtioCore::notify_locked(std::uint16_t q, Done done) {
    if (q >= num_queues_ || !queues_[q].regs.ready || state_ == CoreState::Resetting) {
        if (done) pending_done_.push_back(std::move(done));
        if (q >= num_queues_)
            XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: notify of queue {} that does not exist", label_, q);
        return;
    }
    ++stats_.notifies;
    auto self = shared_from_this();
    std::uint64_t epoch = epoch_;
    post_to(*queues_[q].strand, [self, q, epoch, done = std::move(done)] {
        bool live;
        {
            std::lock_guard lk(self->mu_);
            live = epoch == self->epoch_ && self->state_ == CoreState::Active && self->queues_[q].vq;
        }
        // Kicks before activation are replayed by activate_on_control.
        if (live) self->device_->queue_notify(q);
        if (done) done();
    });
}

void VirtioCore::raise_locked(IrqCause cause, std::uint16_t q) {
    ++stats_.interrupts;
    if (hooks_) hooks_->deliver_locked(cause, q);
}

void VirtioCore::needs_reset_locked(const std::string& reason) {
    ++stats_.needs_reset;
    XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: DEVICE_NEEDS_RESET: {}", label_, reason);
    if (status_ & status::kNeedsReset) return;
    status_ |= status::kNeedsReset;
    // virtio 1.2 §2.1.2: with DRIVER_OK set the device MUST send a
    // configuration change notification.
    if (status_ & status::kDriverOk) raise_locked(IrqCause::Config, 0);
}

void VirtioCore::run_pending(std::vector<Done>& pending) {
    for (auto& d : pending)
        if (d) d();
    pending.clear();
}

void VirtioCore::start_reset_locked(Done done, bool stopping) {
    if (stopping) stopping_ = true;
    if (!stopping_ && state_ == CoreState::Reset && status_ == 0) {
        // Nothing was negotiated or activated (no queue can be live with
        // status 0): the reset completes at once. Otherwise a driver that
        // reads status 0 right after writing it (virtio 1.2 §4.2.3.1) would
        // take the reset as done while it is still in progress.
        for (auto& s : queues_) {
            s.regs.ready = false;
            s.regs.size = s.regs.max_size;
            s.regs.desc = s.regs.driver = s.regs.device = 0;
            s.regs.msix_vector = 0xffff;
        }
        driver_features_ = 0;
        isr_ = 0;
        if (done) pending_done_.push_back(std::move(done));
        return;
    }
    if (done) reset_waiters_.push_back(std::move(done));
    if (state_ == CoreState::Resetting) return;  // joins the reset in progress
    if (state_ == CoreState::Stopped) {
        auto w = std::move(reset_waiters_);
        for (auto& d : w) pending_done_.push_back(std::move(d));
        return;
    }
    ++stats_.resets;
    state_ = CoreState::Resetting;
    std::uint64_t epoch = ++epoch_;
    for (auto& s : queues_) ++s.gen;
    auto self = shared_from_this();
    post_to(control_, [self, epoch] { self->do_reset_on_control(epoch); });
}

void VirtioCore::do_reset_on_control(std::uint64_t epoch) {
    // Fence every queue strand first: a queue_notify that started before
    // the epoch changed has returned once its strand ran the fence, so the
    // device sees no notify racing with reset().
    auto self = shared_from_this();
    auto remaining = std::make_shared<std::atomic<std::size_t>>(queues_.size() + 1);
    auto arrive = [self, remaining, epoch] {
        if (remaining->fetch_sub(1) != 1) return;
        post_to(self->control_, [self, epoch] {
            (void)epoch;
            // Device::reset may call done inline or from any thread.
            self->device_->reset([self] { post_to(self->control_, [self] { self->finish_reset(); }); });
        });
    };
    for (auto& s : queues_) post_to(*s.strand, arrive);
    arrive();
}

void VirtioCore::finish_reset() {
    std::vector<std::unique_ptr<Virtqueue>> dead;
    std::vector<Done> waiters;
    {
        std::lock_guard lk(mu_);
        for (auto& s : queues_)
            if (s.vq) dead.push_back(std::move(s.vq));
    }
    // Unmap the rings BEFORE status reads 0: once the driver sees the reset
    // complete it may end access to the ring grants (Linux refuses to end
    // access to a ref the backend still maps, grant-dma-ops.c).
    dead.clear();
    {
        std::lock_guard lk(mu_);
        for (auto& s : queues_) {
            // virtio 1.2 §4.2.2.1 / §4.1.4.3.1: reset returns every queue
            // register to its initial value.
            s.regs.ready = false;
            s.regs.size = s.regs.max_size;
            s.regs.desc = s.regs.driver = s.regs.device = 0;
            s.regs.msix_vector = 0xffff;
            ++s.gen;
        }
        status_ = 0;
        driver_features_ = 0;
        isr_ = 0;
        config_msix_vector_ = 0xffff;
        state_ = stopping_ ? CoreState::Stopped : CoreState::Reset;
        if (hooks_) hooks_->reset_done_locked();
        waiters = std::move(reset_waiters_);
        reset_waiters_.clear();
    }
    spdlog::debug("{}: reset complete", label_);
    for (auto& d : waiters)
        if (d) d();
}

void VirtioCore::quiesce(Done done) {
    std::vector<Done> p;
    {
        std::lock_guard lk(mu_);
        start_reset_locked(std::move(done), true);
        p = take_pending_locked();
    }
    run_pending(p);
}

std::optional<std::uint64_t> VirtioCore::read_config(std::uint32_t offset, unsigned size) {
    if (size != 1 && size != 2 && size != 4 && size != 8) return std::nullopt;
    if (std::uint64_t(offset) + size > config_size_) return std::nullopt;
    std::byte buf[8] = {};
    device_->read_config(offset, std::span<std::byte>(buf, size));
    std::uint64_t v = 0;
    for (unsigned i = 0; i < size; ++i) v |= std::uint64_t(std::to_integer<std::uint8_t>(buf[i])) << (8 * i);
    return v;
}

bool VirtioCore::write_config(std::uint32_t offset, unsigned size, std::uint64_t value) {
    if (size != 1 && size != 2 && size != 4 && size != 8) return false;
    if (std::uint64_t(offset) + size > config_size_) return false;
    std::byte buf[8];
    for (unsigned i = 0; i < size; ++i) buf[i] = std::byte(std::uint8_t(value >> (8 * i)));
    device_->write_config(offset, std::span<const std::byte>(buf, size));
    return true;
}

VirtioCore::Stats VirtioCore::stats() const {
    std::lock_guard lk(mu_);
    return stats_;
}

}  // namespace xv::transport
