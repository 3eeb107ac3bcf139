// SPDX-License-Identifier: GPL-2.0-only
// virtio-mmio v2 register decoder (virtio 1.2 §4.2.2) + non-blocking registers.
#include "xv/transport/mmio.h"

#include <boost/asio/post.hpp>

#include <utility>

namespace xv::transport {

using namespace mmio_reg;

std::shared_ptr<MmioTransport> MmioTransport::create(std::shared_ptr<Device> device, TransportEnv env,
                                                     std::unique_ptr<InterruptLine> irq, MmioOptions opts) {
    auto t = std::shared_ptr<MmioTransport>(
        new MmioTransport(std::move(device), std::move(env), std::move(irq), opts));
    t->core_->set_hooks(t.get());
    return t;
}

MmioTransport::MmioTransport(std::shared_ptr<Device> device, TransportEnv env, std::unique_ptr<InterruptLine> irq,
                             MmioOptions opts)
    : core_(VirtioCore::make(std::move(device), std::move(env), opts.nonblocking ? "mmio-nb" : "mmio")),
      irq_(std::move(irq)),
      opts_(opts) {
    if (opts_.window_size < kConfig + core_->config_size()) opts_.window_size = kConfig + core_->config_size();
}

MmioTransport::~MmioTransport() { core_->set_hooks(nullptr); }

std::pair<std::uint64_t, std::uint64_t> MmioTransport::indirect_counts() const {
    std::lock_guard lk(core_->mutex());
    return {nb_.accepted(), nb_.refused()};
}

void MmioTransport::deliver_locked(IrqCause cause, std::uint16_t) {
    // virtio 1.2 §4.2.2: InterruptStatus bit 0 = used buffer, bit 1 = config.
    core_->set_isr_locked(cause == IrqCause::Queue ? isr::kQueue : isr::kConfig);
    if (!irq_) return;
    if (auto r = irq_->pulse(); !r)
        XV_LOG_LIMITED(core_->rate_limit(), spdlog::level::err, "{}: interrupt injection failed: {}",
                       core_->label(), r.error().describe());
}

std::uint64_t MmioTransport::mmio_read(std::uint64_t offset, unsigned size) {
    if (offset >= opts_.window_size) return 0;
    return access(std::uint32_t(offset), size, false, 0, nullptr);
}

void MmioTransport::mmio_write(std::uint64_t offset, unsigned size, std::uint64_t value) {
    if (offset >= opts_.window_size) return;
    access(std::uint32_t(offset), size, true, value, nullptr);
}

void MmioTransport::quiesce(std::function<void()> done) { core_->quiesce(std::exchange(done, nullptr)); }

std::uint64_t MmioTransport::access(std::uint32_t offset, unsigned size, bool write, std::uint64_t value,
                                    Done done) {
    auto finish = [&done] {
        if (done) done();
    };
    if (offset >= kConfig) {
        // virtio 1.2 §4.2.2.2: config space takes 8/16/32-bit accesses
        // (64-bit fields as two 32-bit ones; a 64-bit access is served too).
        const std::uint32_t cfg_off = offset - kConfig;
        std::uint64_t v = 0;
        if (write) {
            if (!core_->write_config(cfg_off, size, value))
                XV_LOG_LIMITED(core_->rate_limit(), spdlog::level::warn,
                               "{}: config write of {} bytes at {:#x} out of range, ignored", core_->label(), size,
                               cfg_off);
        } else if (auto r = core_->read_config(cfg_off, size)) {
            v = *r;
        } else {
            XV_LOG_LIMITED(core_->rate_limit(), spdlog::level::warn,
                           "{}: config read of {} bytes at {:#x} out of range, reads 0", core_->label(), size,
                           cfg_off);
        }
        finish();
        return v;
    }
    // virtio 1.2 §4.2.2.2: the driver MUST use aligned 32-bit accesses for
    // the control registers.
    if (size != 4 || offset % 4 != 0) {
        XV_LOG_LIMITED(core_->rate_limit(), spdlog::level::warn,
                       "{}: {}-byte {} at control register {:#x} (only aligned 32-bit), {}", core_->label(), size,
                       write ? "write" : "read", offset, write ? "ignored" : "reads 0");
        finish();
        return 0;
    }
    if (opts_.nonblocking && (offset == nonblocking::kMmioAccess || offset == nonblocking::kMmioAccessData)) {
        std::optional<nonblocking::IndirectRequest> req;
        std::uint32_t v = 0;
        {
            std::lock_guard lk(core_->mutex());
            req = nb_.driver_access(offset == nonblocking::kMmioAccess, write, std::uint32_t(value), v,
                                    [this](std::uint32_t o, unsigned s, bool w) { return indirect_valid(o, s, w); });
        }
        if (req) {
            // nonblocking.md guarantee 1: only queued here; it runs later
            // on the device's control strand.
            nonblocking::post_indirect(shared_from_this(), *req, core_->control_strand(), core_->mutex(), nb_,
                                       &MmioTransport::access);
        }
        finish();
        return v;
    }
    std::uint64_t v = 0;
    std::vector<Done> pending;
    {
        std::lock_guard lk(core_->mutex());
        if (write) write_locked(offset, std::uint32_t(value), done);
        else v = read_locked(offset);
        pending = core_->take_pending_locked();
    }
    core_->run_pending(pending);
    finish();
    return v;
}

std::uint64_t MmioTransport::read_locked(std::uint32_t offset) {
    auto& c = *core_;
    auto* q = c.queue_locked(std::uint16_t(queue_sel_ > 0xffff ? 0xffff : queue_sel_));
    if (queue_sel_ > 0xffff) q = nullptr;
    switch (offset) {
        case kMagic: return opts_.nonblocking ? nonblocking::kMagic : kMagicVirt;
        case kVersion: return 2;  // virtio 1.2 §4.2.2: 2 = non-legacy
        case kDeviceId: return std::uint32_t(c.device_id());
        case kVendorId: return opts_.vendor_id;
        case kDeviceFeatures: return c.device_features_word_locked(device_features_sel_);
        case kDeviceFeaturesSel: return device_features_sel_;
        case kDriverFeatures: return c.driver_features_word_locked(driver_features_sel_);
        case kDriverFeaturesSel: return driver_features_sel_;
        case kQueueSel: return queue_sel_;
        // virtio 1.2 §4.2.2: QueueNumMax 0 = queue not available.
        case kQueueNumMax: return q ? q->max_size : 0;
        case kQueueNum: return q ? q->size : 0;
        case kQueueReady: return q && q->ready ? 1 : 0;
        case kInterruptStatus: return c.isr_locked();
        case kStatus: return c.status_locked();
        case kQueueDescLow: return q ? std::uint32_t(q->desc) : 0;
        case kQueueDescHigh: return q ? std::uint32_t(q->desc >> 32) : 0;
        case kQueueDriverLow: return q ? std::uint32_t(q->driver) : 0;
        case kQueueDriverHigh: return q ? std::uint32_t(q->driver >> 32) : 0;
        case kQueueDeviceLow: return q ? std::uint32_t(q->device) : 0;
        case kQueueDeviceHigh: return q ? std::uint32_t(q->device >> 32) : 0;
        case kShmSel: return shm_sel_;
        // virtio 1.2 §4.2.2: a length of all ones means "no such region".
        case kShmLenLow:
        case kShmLenHigh:
        case kShmBaseLow:
        case kShmBaseHigh: return 0xffffffff;
        case kQueueReset: return 0;
        case kConfigGeneration: return c.config_generation_locked();
        default:
            XV_LOG_LIMITED(c.rate_limit(), spdlog::level::warn, "{}: read of unknown register {:#x}, reads 0",
                           c.label(), offset);
            return 0;
    }
}

void MmioTransport::write_locked(std::uint32_t offset, std::uint32_t value, Done& done) {
    auto& c = *core_;
    const bool sel_ok = queue_sel_ <= 0xffff && c.queue_locked(std::uint16_t(queue_sel_)) != nullptr;
    const auto qi = std::uint16_t(queue_sel_);
    auto queue_field = [&](auto&& apply) {
        if (!sel_ok) {
            XV_LOG_LIMITED(c.rate_limit(), spdlog::level::warn, "{}: write {:#x} for missing queue {}, ignored",
                           c.label(), offset, queue_sel_);
            return;
        }
        // virtio 1.2 §4.2.2.3: queue registers are written only while the
        // queue is not ready.
        if (!c.queue_config_writable_locked(qi)) {
            XV_LOG_LIMITED(c.rate_limit(), spdlog::level::warn,
                           "{}: write {:#x} to queue {} while it is ready, ignored", c.label(), offset, qi);
            return;
        }
        apply(*c.queue_locked(qi));
    };
    auto lo = [](std::uint64_t& f, std::uint32_t v) { f = (f & 0xffffffff00000000ULL) | v; };
    auto hi = [](std::uint64_t& f, std::uint32_t v) { f = (f & 0xffffffffULL) | (std::uint64_t(v) << 32); };
    switch (offset) {
        case kDeviceFeaturesSel: device_features_sel_ = value; return;
        case kDriverFeatures: c.set_driver_features_word_locked(driver_features_sel_, value); return;
        case kDriverFeaturesSel: driver_features_sel_ = value; return;
        case kQueueSel: queue_sel_ = value; return;
        case kQueueNum:
            queue_field([&](QueueRegs& q) { q.size = value > 0xffff ? 0 : std::uint16_t(value); });
            return;
        case kQueueReady:
            if (!sel_ok) return;
            c.set_queue_ready_locked(qi, value & 1, std::exchange(done, nullptr));
            return;
        case kQueueNotify:
            // virtio 1.2 §4.2.2: without NOTIFICATION_DATA the value is the
            // queue index.
            c.notify_locked(std::uint16_t(value & 0xffff), std::exchange(done, nullptr));
            return;
        case kInterruptAck: c.clear_isr_locked(std::uint8_t(value)); return;
        case kStatus: c.write_status_locked(std::uint8_t(value), std::exchange(done, nullptr)); return;
        case kQueueDescLow: queue_field([&](QueueRegs& q) { lo(q.desc, value); }); return;
        case kQueueDescHigh: queue_field([&](QueueRegs& q) { hi(q.desc, value); }); return;
        case kQueueDriverLow: queue_field([&](QueueRegs& q) { lo(q.driver, value); }); return;
        case kQueueDriverHigh: queue_field([&](QueueRegs& q) { hi(q.driver, value); }); return;
        case kQueueDeviceLow: queue_field([&](QueueRegs& q) { lo(q.device, value); }); return;
        case kQueueDeviceHigh: queue_field([&](QueueRegs& q) { hi(q.device, value); }); return;
        case kShmSel: shm_sel_ = value; return;
        case kQueueReset: return;  // RING_RESET is not offered
        default:
            XV_LOG_LIMITED(c.rate_limit(), spdlog::level::warn,
                           "{}: write {:#x} to read-only or unknown register {:#x}, ignored", c.label(), value,
                           offset);
            return;
    }
}

bool MmioTransport::indirect_valid(std::uint32_t offset, unsigned size, bool write) const {
    if (offset >= kConfig) return std::uint64_t(offset) + size <= kConfig + core_->config_size();
    if (size != 4) return false;  // virtio 1.2 §4.2.2.2: control registers are 32-bit
    switch (offset) {
        // read-only registers
        case kMagic:
        case kVersion:
        case kDeviceId:
        case kVendorId:
        case kDeviceFeatures:
        case kQueueNumMax:
        case kInterruptStatus:
        case kShmLenLow:
        case kShmLenHigh:
        case kShmBaseLow:
        case kShmBaseHigh:
        case kConfigGeneration: return !write;
        // registers the driver may read and write
        case kDeviceFeaturesSel:
        case kDriverFeatures:
        case kDriverFeaturesSel:
        case kQueueSel:
        case kQueueNum:
        case kQueueReady:
        case kQueueNotify:
        case kInterruptAck:
        case kStatus:
        case kQueueDescLow:
        case kQueueDescHigh:
        case kQueueDriverLow:
        case kQueueDriverHigh:
        case kQueueDeviceLow:
        case kQueueDeviceHigh:
        case kShmSel:
        case kQueueReset: return true;
        default: return false;  // ACCESS/ACCESS_DATA themselves, holes, legacy registers
    }
}

}  // namespace xv::transport
