// SPDX-License-Identifier: GPL-2.0-only
// The transport-independent half of virtio-mmio and virtio-pci: device
// status, feature negotiation, per-queue registers, config generation and
// the asynchronous work behind them (queue setup, activation, reset).
//
// Register path vs. work (architecture.md "Never block the guest"):
//
//   ioreq (loop thread) --mutex--> register state, answered at once
//        |  QueueReady=1, DRIVER_OK, status := 0   --post--> control strand
//        |  QueueNotify(q)                          --post--> queue q's strand
//        v
//   the vCPU resumes; the work completes later and updates register state.
//
// Device status state machine (virtio 1.2 §2.1, §3.1.1):
//
//            ACK            DRIVER          FEATURES_OK (re-checked)
//   Reset ------> Acked ----------> Driver --------------------> FeaturesOk
//     ^                                                            | DRIVER_OK
//     |  status := 0                                               v
//   Resetting <------------------------------------------- Activating -> Active
//   (status reads back non-zero until Device::reset() is done, then 0)
//
//   any illegal write (clearing a bit, skipping a step, DRIVER_OK without
//   FEATURES_OK, a non-grant ring address, a broken queue)
//       -> status |= DEVICE_NEEDS_RESET (+ config interrupt once DRIVER_OK),
//          never a crash; only status := 0 leaves it.
//
// Locking: one short mutex per device guards all register state; it is
// never held while calling into the Device (read_config, activate, ...),
// only while delivering an interrupt through CoreHooks.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/strand.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "xv/log.h"
#include "xv/result.h"
#include "xv/transport/device.h"
#include "xv/transport/guest_memory.h"
#include "xv/transport/virtqueue.h"

namespace xv::transport {

/// Device status bits (virtio 1.2 §2.1).
namespace status {
inline constexpr std::uint8_t kAcknowledge = 1;
inline constexpr std::uint8_t kDriver = 2;
inline constexpr std::uint8_t kDriverOk = 4;
inline constexpr std::uint8_t kFeaturesOk = 8;
inline constexpr std::uint8_t kNeedsReset = 64;
inline constexpr std::uint8_t kFailed = 128;
}  // namespace status

/// Interrupt status bits (mmio InterruptStatus, pci ISR; virtio 1.2 §4.2.2, §4.1.4.5).
namespace isr {
inline constexpr std::uint8_t kQueue = 1;
inline constexpr std::uint8_t kConfig = 2;
}  // namespace isr

/// Completion of an asynchronous register effect (called exactly once,
/// never with the device mutex held).
using Done = std::function<void()>;

/// What a transport needs besides the device.
struct TransportEnv {
    /// Executor of the io_context; the control strand and one strand per
    /// queue are made from it.
    boost::asio::any_io_executor executor;
    /// Guest memory through grants (rings are mapped through it).
    std::shared_ptr<GuestMemory> memory;
    /// Ring features the transport offers on top of the device's
    /// (virtio 1.2 §6). VERSION_1 and ACCESS_PLATFORM are always offered.
    std::uint64_t ring_features = feature::bit(feature::kIndirectDesc) | feature::bit(feature::kEventIdx) |
                                  feature::bit(feature::kRingPacked);
    /// Refuse FEATURES_OK unless the driver accepted ACCESS_PLATFORM: without
    /// it the driver would hand out guest-physical addresses (grants only).
    bool require_access_platform = true;
};

/// Why an interrupt is raised.
enum class IrqCause { Queue, Config };

/// Transport-specific interrupt delivery, called with the device mutex held.
class CoreHooks {
public:
    virtual ~CoreHooks() = default;
    /// Deliver an interrupt (set the ISR bit, pulse/raise a line, send MSI-X).
    virtual void deliver_locked(IrqCause cause, std::uint16_t queue) = 0;
    /// The device finished a reset: drop transport interrupt state.
    virtual void reset_done_locked() = 0;
};

/// Lifecycle of the core, as drawn in the file comment.
enum class CoreState { Reset, Acked, Driver, FeaturesOk, Activating, Active, Resetting, Stopped };

/// Register state of one queue (virtio 1.2 §4.2.2 / §4.1.4.3).
struct QueueRegs {
    std::uint16_t size = 0;       ///< QueueNum / queue_size (starts at the maximum)
    std::uint16_t max_size = 0;   ///< QueueNumMax; 0 = queue not available
    std::uint64_t desc = 0;
    std::uint64_t driver = 0;
    std::uint64_t device = 0;
    bool ready = false;           ///< QueueReady / queue_enable as the driver sees it
    std::uint16_t msix_vector = 0xffff;  ///< pci only (VIRTIO_MSI_NO_VECTOR)
};

/// The common virtio transport core. Create with make(); owned through a
/// shared_ptr because queued work keeps it alive.
class VirtioCore : public std::enable_shared_from_this<VirtioCore> {
public:
    /// Builds a core for `device`. `transport_name` ("mmio"/"pci") is for logs.
    static std::shared_ptr<VirtioCore> make(std::shared_ptr<Device> device, TransportEnv env,
                                            std::string transport_name);
    ~VirtioCore();

    VirtioCore(const VirtioCore&) = delete;
    VirtioCore& operator=(const VirtioCore&) = delete;

    /// Sets (or clears, with nullptr) the delivery hooks. The transport
    /// clears them in its destructor.
    void set_hooks(CoreHooks* hooks);

    /// The per-device mutex; every *_locked call needs it held.
    std::mutex& mutex() noexcept { return mu_; }

    // --- cached device facts (constant, no lock needed) ------------------
    Device& device() noexcept { return *device_; }
    DeviceId device_id() const noexcept { return device_id_; }
    std::uint16_t num_queues() const noexcept { return num_queues_; }
    std::uint32_t config_size() const noexcept { return config_size_; }
    /// Features offered: device | VERSION_1 | ACCESS_PLATFORM | ring features.
    std::uint64_t offered_features() const noexcept { return offered_; }
    /// "dom5 blk0 (mmio)" for log lines.
    const std::string& label() const noexcept { return label_; }
    /// The control strand (activate, reset, queue setup, indirect accesses).
    Strand& control_strand() noexcept { return control_; }

    // --- register state (mutex held) -------------------------------------
    /// 32 offered feature bits of word `sel` (virtio 1.2 §4.2.2 DeviceFeatures).
    std::uint32_t device_features_word_locked(std::uint32_t sel) const;
    std::uint32_t driver_features_word_locked(std::uint32_t sel) const;
    /// Stores 32 driver feature bits; ignored once FEATURES_OK is set.
    void set_driver_features_word_locked(std::uint32_t sel, std::uint32_t value);
    std::uint64_t driver_features_locked() const { return driver_features_; }

    /// Device status as the driver reads it.
    std::uint8_t status_locked() const { return status_; }
    /// Driver writes the status byte. Asynchronous effects (reset,
    /// activation) call `done` when finished; otherwise `done` runs at once
    /// (after the caller released the mutex: the call only queues it).
    void write_status_locked(std::uint8_t value, Done done);
    CoreState state_locked() const { return state_; }

    /// Registers of queue `q`, nullptr when q >= num_queues().
    QueueRegs* queue_locked(std::uint16_t q);
    /// Driver writes QueueReady/queue_enable. 1: validate and map the rings
    /// on the control strand (`done` when mapped). 0: disable (mmio).
    void set_queue_ready_locked(std::uint16_t q, bool ready, Done done);
    /// True when writes to queue `q`'s configuration are allowed now.
    bool queue_config_writable_locked(std::uint16_t q) const;
    /// Driver kicked queue `q`: queue_notify runs on its strand; `done`
    /// after it ran (or at once when the queue is not live).
    void notify_locked(std::uint16_t q, Done done);

    /// ConfigGeneration (virtio 1.2 §2.5.1).
    std::uint32_t config_generation_locked() const { return config_generation_; }

    /// Interrupt status bits (mmio InterruptStatus / pci ISR).
    std::uint8_t isr_locked() const { return isr_; }
    void set_isr_locked(std::uint8_t bits) { isr_ |= bits; }
    void clear_isr_locked(std::uint8_t bits) { isr_ &= std::uint8_t(~bits); }

    /// pci: config_msix_vector.
    std::uint16_t config_msix_vector_locked() const { return config_msix_vector_; }
    void set_config_msix_vector_locked(std::uint16_t v) { config_msix_vector_ = v; }

    /// Sets DEVICE_NEEDS_RESET with a logged reason (virtio 1.2 §2.1.2) and
    /// sends a config interrupt when DRIVER_OK is set.
    void needs_reset_locked(const std::string& reason);

    /// Runs `done` callbacks queued by *_locked calls; call after unlocking.
    void run_pending(std::vector<Done>& pending);
    /// Moves the queued `done` callbacks out (mutex held).
    std::vector<Done> take_pending_locked() { return std::move(pending_done_); }

    // --- config space (no lock: the device is called directly) ------------
    /// Reads `size` (1,2,4,8) config bytes at `offset`; nullopt out of range.
    std::optional<std::uint64_t> read_config(std::uint32_t offset, unsigned size);
    /// Writes config bytes; false out of range.
    bool write_config(std::uint32_t offset, unsigned size, std::uint64_t value);

    /// Orderly stop: asynchronous reset, then the core refuses further
    /// activation. `done` when the device no longer touches guest memory.
    void quiesce(Done done);

    /// Counters for tests and logs.
    struct Stats {
        std::uint64_t notifies = 0;
        std::uint64_t interrupts = 0;
        std::uint64_t resets = 0;
        std::uint64_t needs_reset = 0;
    };
    Stats stats() const;

    /// The limiter for guest-triggered log lines of this device.
    log::RateLimit& rate_limit() noexcept { return rl_; }

private:
    VirtioCore(std::shared_ptr<Device> device, TransportEnv env, std::string transport_name);

    struct QueueSlot {
        QueueRegs regs;
        std::unique_ptr<Strand> strand;
        std::unique_ptr<Virtqueue> vq;
        std::uint64_t gen = 0;  ///< bumped when the queue is (re)enabled/disabled
    };

    void start_reset_locked(Done done, bool stopping);
    void finish_reset();
    void do_reset_on_control(std::uint64_t epoch);
    void create_queue_on_control(std::uint16_t q, std::uint64_t epoch, std::uint64_t gen, Done done);
    void activate_on_control(std::uint64_t epoch, Done done);
    void raise_locked(IrqCause cause, std::uint16_t q);
    bool features_acceptable_locked(std::string& why) const;

    std::shared_ptr<Device> device_;
    TransportEnv env_;
    std::string label_;
    DeviceId device_id_;
    std::uint16_t num_queues_;
    std::uint32_t config_size_;
    std::uint64_t offered_;
    Strand control_;

    mutable std::mutex mu_;
    CoreHooks* hooks_ = nullptr;
    CoreState state_ = CoreState::Reset;
    std::uint8_t status_ = 0;
    std::uint64_t driver_features_ = 0;
    std::uint32_t config_generation_ = 0;
    std::uint8_t isr_ = 0;
    std::uint16_t config_msix_vector_ = 0xffff;
    std::uint64_t epoch_ = 0;  ///< bumped at every reset: stale work is dropped
    bool stopping_ = false;
    std::vector<QueueSlot> queues_;
    std::vector<Done> pending_done_;
    /// Holds a `done` that, unless taken (d = nullptr), joins pending_done_
    /// when the scope ends: a synchronous outcome completes once the caller unlocked.
    struct PendingDone {
        VirtioCore* core;
        Done d;
        ~PendingDone() {
            if (d) core->pending_done_.push_back(std::move(d));
        }
    };
    std::vector<Done> reset_waiters_;
    Stats stats_;
    log::RateLimit rl_;
};

}  // namespace xv::transport
