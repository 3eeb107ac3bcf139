// SPDX-License-Identifier: GPL-2.0-only
// The device fuzz harness shared by fuzz_blk, fuzz_net and fuzz_console: a
// real device (a real image file with io_uring, a real tap in a private
// network namespace, a real listening socket) activated on split queues
// over simulated grants, exactly as a transport would (ActivateContext),
// then fed chains whose contents a target-specific generator builds from
// the input: mostly well-formed requests, now and then a hostile one.
//
// Chains are laid out by a small guest driver here: readable pieces are
// copied into a read-only granted pool, writable ones come from a
// read-write pool, so request bytes never touch the rings. Each iteration
// activates the device, runs the steps, then resets it (reset(done) must
// complete) and destroys the queues; no grant page may stay mapped.
//
// Single-threaded: device work runs in io_context::poll() between steps.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "fuzz_common.h"
#include "sim_world.h"
#include "xv/guest/virtqueue_driver.h"
#include "xv/transport/device.h"
#include "xv/transport/guest_memory.h"
#include "xv/transport/virtqueue.h"
#include "xv/xen/sim.h"

namespace xv::fuzz::dev {

using guest::desc_flags::kIndirect;
using guest::desc_flags::kNext;
using guest::desc_flags::kWrite;

inline constexpr std::uint32_t kPage = 4096;
inline constexpr std::uint32_t kPoolBytes = 64 * kPage;
inline constexpr std::uint16_t kRingSize = 64;

/// One buffer of a chain: readable pieces carry their bytes, writable
/// pieces only a length.
struct Piece {
    std::vector<std::byte> data;
    std::uint32_t len = 0;
    bool write = false;

    static Piece in(std::vector<std::byte> d) {
        Piece p;
        p.len = std::uint32_t(d.size());
        p.data = std::move(d);
        return p;
    }
    static Piece out(std::uint32_t len) {
        Piece p;
        p.len = len;
        p.write = true;
        return p;
    }
};

/// Appends a trivially copyable value's bytes.
template <class T>
void put(std::vector<std::byte>& v, const T& x) {
    const auto* b = reinterpret_cast<const std::byte*>(&x);
    v.insert(v.end(), b, b + sizeof(T));
}

/// One simulated guest with granted data pools and ring memory.
struct World : SimWorld {
    std::uint64_t ro_dma = 0, rw_dma = 0, table_dma = 0;
    std::byte *ro = nullptr, *rw = nullptr, *tables = nullptr;
    std::map<std::uint16_t, std::unique_ptr<guest::VirtqueueDriver>> rings;

    World() {
        ro_dma = guest->alloc_dma(kPoolBytes, 0, true).value();
        rw_dma = guest->alloc_dma(kPoolBytes, 0, false).value();
        table_dma = guest->alloc_dma(4 * kPage, 0, true).value();
        ro = guest->dma_ptr(ro_dma);
        rw = guest->dma_ptr(rw_dma);
        tables = guest->dma_ptr(table_dma);
    }

    static World& get() {
        static World* w = new World;
        return *w;
    }

    /// Ring memory of queue `q`, zeroed for a fresh queue.
    guest::VirtqueueDriver& ring(std::uint16_t q) {
        auto& d = rings[q];
        if (!d) {
            guest::DriverOptions o;
            o.index = q;
            o.size = kRingSize;
            o.indirect = true;
            o.log_name = "fuzz q" + std::to_string(q);
            d = std::move(guest::VirtqueueDriver::create(*guest, o).value());
        }
        std::memset(d->desc_area(), 0, 16 * kRingSize);
        std::memset(d->driver_area(), 0, 6 + 2 * kRingSize);
        std::memset(d->device_area(), 0, 6 + 8 * kRingSize);
        return *d;
    }
};

/// A chain the driver made available and has not seen used yet.
struct Outstanding {
    std::vector<std::uint16_t> descs;
    std::vector<std::pair<std::uint32_t, std::uint32_t>> writable;  ///< (rw pool offset, len)
    std::uint64_t writable_total = 0;
    std::uint64_t tag = 0;  ///< for the target's own bookkeeping
};

/// One used entry, as the driver reads it.
struct Used {
    std::uint16_t queue = 0;
    std::uint32_t len = 0;
    Outstanding chain;
};

/// One activation of a device on fresh queues.
class Harness {
public:
    Harness(World& w, transport::Device& dev) : w_(w), dev_(dev) {}
    ~Harness() { finish(); }

    /// Creates queues [0, n) (each enabled unless `enabled` says no) and
    /// activates the device. False when the device refused activation.
    bool activate(std::uint64_t features, std::uint16_t n, const std::function<bool(std::uint16_t)>& enabled) {
        transport::ActivateContext ctx;
        ctx.features = features;
        const bool event_idx = features & transport::feature::bit(transport::feature::kEventIdx);
        const bool indirect = features & transport::feature::bit(transport::feature::kIndirectDesc);
        for (std::uint16_t q = 0; q < n; ++q) {
            Q st;
            if (enabled(q)) {
                auto& d = w_.ring(q);
                transport::QueueConfig cfg = d.config();
                cfg.event_idx = event_idx;
                cfg.indirect = indirect;
                cfg.copy_readable_max = 512;
                cfg.log_name = "fuzz " + std::to_string(q);
                auto vq = transport::create_virtqueue(
                    cfg, *w_.mem, transport::Strand(boost::asio::make_strand(w_.io.get_executor())), [] {},
                    [this](const Error&) { ++queue_failures_; });
                FUZZ_CHECK(vq.has_value(), "queue %u: %s", q, vq.error().describe().c_str());
                st.vq = std::move(*vq);
                st.drv = &d;
                for (std::uint16_t i = 0; i < kRingSize; ++i) st.free.push_back(std::uint16_t(kRingSize - 1 - i));
            }
            ctx.queues.push_back(st.vq.get());
            qs_.push_back(std::move(st));
        }
        ctx.config_changed = [this] { ++config_changes_; };
        ctx.needs_reset = [this](const Error&) { ++needs_reset_; };
        auto r = dev_.activate(std::move(ctx));
        active_ = r.has_value();
        w_.poll();
        return active_;
    }

    /// Lays a chain out and makes it available on queue `q`; returns false
    /// when the queue is disabled or there is no room (nothing published).
    bool add(std::uint16_t q, const std::vector<Piece>& pieces, bool indirect, std::uint64_t tag = 0) {
        if (q >= qs_.size() || !qs_[q].vq || pieces.empty()) return false;
        Q& s = qs_[q];
        const std::size_t need = indirect ? 1 : pieces.size();
        if (s.free.size() < need || pieces.size() > kRingSize) return false;
        struct D {
            std::uint64_t addr;
            std::uint32_t len;
            bool write;
        };
        std::vector<D> ds;
        Outstanding o;
        o.tag = tag;
        for (const auto& p : pieces) {
            std::uint32_t& used = p.write ? rw_used_ : ro_used_;
            if (std::uint64_t(used) + p.len > kPoolBytes) return false;
            const std::uint32_t off = used;
            used += p.len;
            if (p.write) {
                std::memset(w_.rw + off, 0xee, p.len);
                o.writable.emplace_back(off, p.len);
                o.writable_total += p.len;
                ds.push_back({w_.rw_dma + off, p.len, true});
            } else {
                if (!p.data.empty()) std::memcpy(w_.ro + off, p.data.data(), p.data.size());
                ds.push_back({w_.ro_dma + off, p.len, false});
            }
        }
        o.descs.assign(s.free.end() - std::ptrdiff_t(need), s.free.end());
        s.free.resize(s.free.size() - need);
        if (indirect) {
            if (table_used_ + 16 * ds.size() > 4 * kPage) {
                s.free.insert(s.free.end(), o.descs.begin(), o.descs.end());
                return false;
            }
            std::byte* t = w_.tables + table_used_;
            for (std::size_t i = 0; i < ds.size(); ++i) {
                guest::SplitDesc e{ds[i].addr, ds[i].len,
                                   std::uint16_t((ds[i].write ? kWrite : 0) | (i + 1 < ds.size() ? kNext : 0)),
                                   std::uint16_t(i + 1)};
                std::memcpy(t + 16 * i, &e, 16);
            }
            s.drv->set_desc(o.descs[0], {w_.table_dma + table_used_, std::uint32_t(16 * ds.size()), kIndirect, 0});
            table_used_ += std::uint32_t(16 * ds.size());
        } else {
            for (std::size_t i = 0; i < ds.size(); ++i) {
                guest::SplitDesc e{ds[i].addr, ds[i].len, std::uint16_t(ds[i].write ? kWrite : 0), 0};
                if (i + 1 < ds.size()) {
                    e.flags |= kNext;
                    e.next = o.descs[i + 1];
                }
                s.drv->set_desc(o.descs[i], e);
            }
        }
        const std::uint16_t head = o.descs[0];
        s.drv->set_avail_ring(s.avail, head);
        s.drv->set_avail_idx(++s.avail);
        s.out[head] = std::move(o);
        return true;
    }

    /// The driver kicks queue `q` (queue_notify on the queue's strand).
    void notify(std::uint16_t q) {
        if (q >= qs_.size() || !qs_[q].vq || !active_) return;
        boost::asio::post(qs_[q].vq->strand(), [d = &dev_, q] { d->queue_notify(q); });
    }

    /// Used entries published since the last call, over all queues. Checks
    /// what the device may never do: name a chain that is not in flight,
    /// or claim more bytes than the chain could hold.
    std::vector<Used> reap() {
        std::vector<Used> out;
        for (std::uint16_t q = 0; q < qs_.size(); ++q) {
            Q& s = qs_[q];
            if (!s.vq) continue;
            const std::uint16_t idx = s.drv->used_idx();
            while (s.last_used != idx) {
                const std::byte* e = s.drv->device_area() + 4 + 8 * std::size_t(s.last_used % kRingSize);
                std::uint32_t id, len;
                std::memcpy(&id, e, 4);
                std::memcpy(&len, e + 4, 4);
                ++s.last_used;
                auto it = s.out.find(std::uint16_t(id));
                FUZZ_CHECK(id < kRingSize && it != s.out.end(), "queue %u: used id %u is not in flight", q, id);
                FUZZ_CHECK(len <= it->second.writable_total, "queue %u: used len %u > %llu writable bytes", q, len,
                           static_cast<unsigned long long>(it->second.writable_total));
                s.free.insert(s.free.end(), it->second.descs.begin(), it->second.descs.end());
                out.push_back({q, len, std::move(it->second)});
                s.out.erase(it);
            }
        }
        return out;
    }

    /// Host view of a writable piece of a used chain.
    const std::byte* rw_bytes(std::uint32_t off) const { return w_.rw + off; }

    /// Resets the device (must finish) and drops the queues.
    void finish() {
        if (finished_) return;
        finished_ = true;
        bool done = false;
        dev_.reset([&done] { done = true; });
        FUZZ_CHECK(run_until(w_, done, 5000), "device reset did not finish");
        w_.poll();
        qs_.clear();
        w_.poll();
        FUZZ_CHECK(w_.grants->pages_in_use() == 0, "%llu grant pages still mapped after reset",
                   static_cast<unsigned long long>(w_.grants->pages_in_use()));
    }

    bool active() const { return active_; }
    std::uint64_t queue_failures() const { return queue_failures_; }
    std::uint64_t needs_reset() const { return needs_reset_; }
    transport::Virtqueue* queue(std::uint16_t q) { return q < qs_.size() ? qs_[q].vq.get() : nullptr; }

private:
    struct Q {
        std::unique_ptr<transport::Virtqueue> vq;
        guest::VirtqueueDriver* drv = nullptr;
        std::vector<std::uint16_t> free;
        std::uint16_t avail = 0;
        std::uint16_t last_used = 0;
        std::map<std::uint16_t, Outstanding> out;
    };
    World& w_;
    transport::Device& dev_;
    std::vector<Q> qs_;
    bool active_ = false;
    bool finished_ = false;
    std::uint32_t ro_used_ = 0, rw_used_ = 0, table_used_ = 0;
    std::uint64_t queue_failures_ = 0, needs_reset_ = 0, config_changes_ = 0;
};

/// Features the device offers plus the transport's, trimmed by the input
/// (the driver accepts a subset, virtio 1.2 §3.1.1).
inline std::uint64_t negotiate(FuzzedDataProvider& in, const transport::Device& dev) {
    using transport::feature::bit;
    std::uint64_t offered = dev.device_features() | bit(transport::feature::kVersion1) |
                            bit(transport::feature::kAccessPlatform) | bit(transport::feature::kIndirectDesc) |
                            bit(transport::feature::kEventIdx);
    // Each feature is dropped with probability 1/4 (kept when the input ran out).
    std::uint64_t drop = in.ConsumeIntegral<std::uint64_t>() & in.ConsumeIntegral<std::uint64_t>();
    return (offered & ~drop) | bit(transport::feature::kVersion1) | bit(transport::feature::kAccessPlatform);
}

}  // namespace xv::fuzz::dev
