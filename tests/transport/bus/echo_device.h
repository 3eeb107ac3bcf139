// SPDX-License-Identifier: GPL-2.0-only
// A small test device on transport::Device: every chain on any queue is
// answered by copying its device-readable bytes into its device-writable
// buffers (an "echo"). With hold(true) chains are kept, not completed,
// until release() - a device whose backend stalls.
//
// Config space (16 bytes): 0 le64 counter (bump_config() changes it and
// notifies the driver), 8 le32 scratch (writable), 12 le32 0x5a5aa5a5.
#pragma once

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <thread>
#include <utility>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "xv/transport/device.h"

namespace xv::test {

/// Device id of the echo device (not a real virtio type).
inline constexpr transport::DeviceId kEchoDeviceId = static_cast<transport::DeviceId>(42);
/// The echo device's one device-specific feature bit.
inline constexpr unsigned kEchoFeature = 0;

class EchoDevice : public transport::Device {
public:
    explicit EchoDevice(xen::DomId domid, std::uint16_t queues = 2) : nq_(queues) {
        id_.domid = domid;
        id_.name = "echo0";
    }
    transport::DeviceId device_id() const override { return kEchoDeviceId; }
    const transport::DeviceIdentity& identity() const override { return id_; }
    std::uint64_t device_features() const override { return transport::feature::bit(kEchoFeature); }
    std::uint16_t num_queues() const override { return nq_; }
    std::uint16_t max_queue_size(std::uint16_t q) const override { return q < nq_ ? 64 : 0; }
    std::uint32_t config_size() const override { return 16; }

    void read_config(std::uint32_t offset, std::span<std::byte> out) const override {
        std::lock_guard lk(mu_);
        std::byte cfg[16];
        std::memcpy(cfg, &counter_, 8);
        std::memcpy(cfg + 8, &scratch_, 4);
        std::uint32_t magic = 0x5a5aa5a5;
        std::memcpy(cfg + 12, &magic, 4);
        std::memcpy(out.data(), cfg + offset, out.size());
    }
    void write_config(std::uint32_t offset, std::span<const std::byte> data) override {
        std::lock_guard lk(mu_);
        if (offset < 8 || offset + data.size() > 12) return;  // only the scratch word is writable
        std::byte w[4];
        std::memcpy(w, &scratch_, 4);
        std::memcpy(w + (offset - 8), data.data(), data.size());
        std::memcpy(&scratch_, w, 4);
    }

    Result<void> activate(transport::ActivateContext ctx) override {
        std::lock_guard lk(mu_);
        ctx_ = std::move(ctx);
        active_ = true;
        ++activations_;
        return ok();
    }

    void reset(std::function<void()> done) override {
        std::vector<transport::Virtqueue*> qs;
        std::chrono::milliseconds delay{0};
        {
            std::lock_guard lk(mu_);
            delay = reset_delay_;
            active_ = false;
            for (auto* q : ctx_.queues)
                if (q) qs.push_back(q);
            ++resets_;
        }
        if (qs.empty()) {
            done();
            return;
        }
        // Drop held chains on each queue's strand (their mappings go with
        // them), then report done.
        auto left = std::make_shared<std::atomic<std::size_t>>(qs.size());
        if (delay.count() > 0) {
            // A backend whose reset takes a while: done() comes from a timer.
            auto t = std::make_shared<boost::asio::steady_timer>(qs[0]->strand(), delay);
            done = [t, real = std::move(done)]() mutable {
                t->async_wait([t, real = std::move(real)](const boost::system::error_code&) { real(); });
            };
        }
        auto d = std::make_shared<std::function<void()>>(std::move(done));
        for (auto* q : qs) {
            boost::asio::post(q->strand(), [this, q, left, d] {
                {
                    std::lock_guard lk(mu_);
                    auto& h = held_[q->index()];
                    dropped_ += h.size();
                    h.clear();
                }
                if (left->fetch_sub(1) == 1) {
                    std::lock_guard lk(mu_);
                    ctx_ = {};
                    (*d)();
                }
            });
        }
    }

    void queue_notify(std::uint16_t qi) override {
        transport::Virtqueue* q;
        std::chrono::milliseconds block{0};
        {
            std::lock_guard lk(mu_);
            ++notifies_;
            block = std::exchange(block_notify_, std::chrono::milliseconds{0});
            if (!active_ || qi >= ctx_.queues.size() || !ctx_.queues[qi]) return;
            q = ctx_.queues[qi];
        }
        // A stalled backend: the queue's strand is busy for `block`.
        if (block.count() > 0) std::this_thread::sleep_for(block);
        for (;;) {
            auto c = q->pop();
            if (!c || !*c) return;
            std::lock_guard lk(mu_);
            if (hold_) {
                held_[qi].push_back(std::move(**c));
                continue;
            }
            echo(*q, std::move(**c));
        }
    }

    /// Holds (true) or completes (false) chains from now on.
    void hold(bool on) {
        std::lock_guard lk(mu_);
        hold_ = on;
    }
    /// The next reset() reports done only after `d`.
    void delay_reset(std::chrono::milliseconds d) {
        std::lock_guard lk(mu_);
        reset_delay_ = d;
    }
    /// The next queue_notify() blocks its strand for `d` first.
    void block_next_notify(std::chrono::milliseconds d) {
        std::lock_guard lk(mu_);
        block_notify_ = d;
    }
    /// Completes every held chain on its queue's strand.
    void release() {
        std::lock_guard lk(mu_);
        hold_ = false;
        for (auto* q : ctx_.queues) {
            if (!q) continue;
            boost::asio::post(q->strand(), [this, q] {
                std::lock_guard lk2(mu_);
                if (!active_) return;
                auto h = std::move(held_[q->index()]);
                held_[q->index()].clear();
                for (auto& c : h) echo(*q, std::move(c));
            });
        }
    }
    /// Changes the config counter and tells the driver.
    void bump_config() {
        std::function<void()> cb;
        {
            std::lock_guard lk(mu_);
            ++counter_;
            cb = ctx_.config_changed;
        }
        if (cb) cb();
    }
    /// Reports DEVICE_NEEDS_RESET through the activation context.
    void fail(const std::string& why) {
        std::function<void(const Error&)> cb;
        {
            std::lock_guard lk(mu_);
            cb = ctx_.needs_reset;
        }
        if (cb) cb(make_error(std::errc::io_error, why));
    }

    std::size_t held() const {
        std::lock_guard lk(mu_);
        std::size_t n = 0;
        for (auto& [k, v] : held_) n += v.size();
        return n;
    }
    std::uint64_t activations() const { std::lock_guard lk(mu_); return activations_; }
    std::uint64_t resets() const { std::lock_guard lk(mu_); return resets_; }
    std::uint64_t notifies() const { std::lock_guard lk(mu_); return notifies_; }
    std::uint64_t dropped() const { std::lock_guard lk(mu_); return dropped_; }
    std::uint64_t negotiated() const { std::lock_guard lk(mu_); return ctx_.features; }
    bool active() const { std::lock_guard lk(mu_); return active_; }

private:
    void echo(transport::Virtqueue& q, transport::DescriptorChain c) {
        auto r = c.reader();
        auto w = c.writer();
        std::vector<std::byte> buf(r.available());
        r.read(buf);
        std::size_t n = std::min(buf.size(), w.available());
        w.write(std::span<const std::byte>(buf.data(), n));
        q.complete(std::move(c), std::uint32_t(w.written()));
    }

    transport::DeviceIdentity id_;
    std::uint16_t nq_;
    mutable std::mutex mu_;
    transport::ActivateContext ctx_;
    bool active_ = false;
    bool hold_ = false;
    std::map<std::uint16_t, std::vector<transport::DescriptorChain>> held_;
    std::chrono::milliseconds reset_delay_{0};
    std::chrono::milliseconds block_notify_{0};
    std::uint64_t counter_ = 0;
    std::uint32_t scratch_ = 0;
    std::uint64_t activations_ = 0, resets_ = 0, notifies_ = 0, dropped_ = 0;
};

}  // namespace xv::test
