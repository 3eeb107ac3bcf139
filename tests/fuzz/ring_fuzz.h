// SPDX-License-Identifier: GPL-2.0-only
// The chain-walker fuzz harness shared by fuzz_split_queue and
// fuzz_packed_queue: the real queue code (create_virtqueue, pop, pop_batch,
// push, abandon, notification suppression) over grants of a simulated
// guest (xen/sim, page protections on: a write through a read-only
// mapping faults).
//
// The input is a program for a guest driver: lay out descriptors (direct
// or indirect tables) in the ring, publish them, and interleave the
// device's pops, completions, drops and notification calls. Buffers come
// from fixed granted pools (RO pool with a known byte pattern, RW pool),
// never from the ring areas, so fuzzed data cannot scribble the rings by
// accident. Each descriptor is well formed unless the input asks, now and
// then, for a hostile value (loop, bad next, unknown flag, nested
// indirect, non-grant address, length past the grants, RO grant marked
// device-writable, avail idx jump, head out of range ...).
//
// Oracles:
//  - while the iteration stayed well formed ("clean"), every chain pops,
//    has the expected readable/writable lengths and reads back the RO
//    pattern, and the queue never fails;
//  - the queue reports a failure at most once, and stays broken after it;
//  - popped == completed + abandoned once every chain is gone;
//  - no grant page stays mapped after the queue is destroyed.
#pragma once

#include <boost/asio/io_context.hpp>

#include <cstring>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "fuzz_common.h"
#include "xv/guest/virtqueue_driver.h"
#include "xv/test/queue_harness.h"
#include "xv/transport/virtqueue.h"
#include "xv/xen/grant.h"

namespace xv::fuzz::ring {

using guest::desc_flags::kAvail;
using guest::desc_flags::kIndirect;
using guest::desc_flags::kNext;
using guest::desc_flags::kUsed;
using guest::desc_flags::kWrite;

inline constexpr std::uint32_t kPage = 4096;
inline constexpr std::uint32_t kPoolBytes = 8 * kPage;      ///< each data pool
inline constexpr std::uint32_t kTableBytes = 4 * kPage;     ///< indirect tables
inline constexpr std::uint32_t kTableSlot = 256;            ///< bytes per table (16 entries)
inline constexpr std::uint64_t kGrantBit = 1ULL << 63;

/// Byte the RO pool holds at offset `off`.
inline std::byte pattern(std::uint32_t off) { return std::byte(std::uint8_t(off * 7 + (off >> 8) + 1)); }

/// Process-wide state: one simulated guest, its pools, and one driver
/// (ring memory) per queue shape, reused by every iteration.
struct World {
    std::unique_ptr<test::QueueHarness> h;
    std::uint64_t ro_dma = 0, rw_dma = 0, table_dma = 0;
    std::byte* ro = nullptr;
    std::byte* rw = nullptr;
    std::byte* tables = nullptr;
    std::map<std::tuple<bool, std::uint16_t, bool, bool>, std::unique_ptr<guest::VirtqueueDriver>> drivers;

    static World& get() {
        static World* w = [] {
            auto* w = new World;
            w->h = std::move(test::QueueHarness::create({}, 2048).value());
            auto& g = *w->h->guest;
            const xen::DomId be = w->h->hv->self_domid() ? *w->h->hv->self_domid() : 0;
            w->ro_dma = g.alloc_dma(kPoolBytes, be, /*readonly=*/true).value();
            w->rw_dma = g.alloc_dma(kPoolBytes, be, false).value();
            w->table_dma = g.alloc_dma(kTableBytes, be, true).value();
            w->ro = g.dma_ptr(w->ro_dma);
            w->rw = g.dma_ptr(w->rw_dma);
            w->tables = g.dma_ptr(w->table_dma);
            for (std::uint32_t i = 0; i < kPoolBytes; ++i) w->ro[i] = pattern(i);
            return w;
        }();
        return *w;
    }

    guest::VirtqueueDriver& driver(bool packed, std::uint16_t size, bool event_idx, bool indirect) {
        auto& d = drivers[{packed, size, event_idx, indirect}];
        if (!d) {
            guest::DriverOptions o;
            o.size = size;
            o.packed = packed;
            o.event_idx = event_idx;
            o.indirect = indirect;
            o.backend = h->hv->self_domid() ? *h->hv->self_domid() : 0;
            o.log_name = "fuzz q0";
            d = std::move(guest::VirtqueueDriver::create(*h->guest, o).value());
        }
        // Fresh ring memory for every iteration (a new queue starts at 0).
        const std::size_t n = size;
        std::memset(d->desc_area(), 0, 16 * n);
        std::memset(d->driver_area(), 0, packed ? 4 : 6 + 2 * n);
        std::memset(d->device_area(), 0, packed ? 4 : 6 + 8 * n);
        return *d;
    }
};

/// One buffer of a chain as the driver laid it out.
struct Buf {
    std::uint64_t addr = 0;
    std::uint32_t len = 0;
    bool write = false;
};

/// What the driver knows about a chain it made available.
struct Record {
    std::vector<std::uint16_t> descs;  ///< split: descriptor indexes it holds
    std::uint16_t slots = 0;           ///< packed: ring slots it holds
    std::vector<Buf> bufs;
    std::uint64_t readable = 0, writable = 0;
};

/// The driver program interpreter and the device calls.
class Session {
public:
    Session(FuzzedDataProvider& in, bool packed) : in_(in), w_(World::get()), packed_(packed) {}

    void run() {
        if (!setup()) return;
        unsigned ops = in_.ConsumeIntegralInRange(1, 64);
        for (unsigned i = 0; i < ops && in_.remaining_bytes() > 0; ++i) step();
        finish();
    }

private:
    // --- setup -------------------------------------------------------------
    bool setup() {
        size_ = packed_ ? pick<std::uint16_t>(in_, {1, 2, 3, 4, 5, 8, 16, 31, 64, 256})
                        : pick<std::uint16_t>(in_, {1, 2, 4, 8, 16, 32, 64, 256});
        const bool event_idx = in_.ConsumeBool();
        const bool indirect = in_.ConsumeBool();
        drv_ = &w_.driver(packed_, size_, event_idx, indirect);
        transport::QueueConfig cfg = drv_->config();
        cfg.copy_readable_max = pick<std::uint32_t>(in_, {0, 0, 64, 512, 4096, 65536});
        cfg.max_indirect = pick<std::uint16_t>(in_, {0, 0, 0, 4, 8, 16});
        max_entries_ = cfg.max_indirect ? cfg.max_indirect : size_;
        if (one_in(in_, 24)) {
            // A hostile queue setup: must fail cleanly or work.
            taint();
            switch (in_.ConsumeIntegralInRange(0, 5)) {
                case 0: cfg.size = in_.ConsumeIntegral<std::uint16_t>(); break;
                case 1: cfg.desc_addr += in_.ConsumeIntegralInRange(1, 4096); break;
                case 2: cfg.driver_addr &= ~kGrantBit; break;
                case 3: cfg.device_addr = in_.ConsumeIntegral<std::uint64_t>(); break;
                case 4: cfg.desc_addr = w_.ro_dma; break;  // ring on a RO grant
                default: cfg.size = std::uint16_t(cfg.size * 2); break;  // past the granted ring
            }
        }
        cfg_ = cfg;
        auto q = w_.h->queue(cfg);
        w_.h->fatal.clear();
        if (!q) {
            FUZZ_CHECK(tainted_, "well-formed queue refused: %s", q.error().describe().c_str());
            FUZZ_CHECK(w_.h->grants->pages_in_use() == 0, "failed queue setup left %llu pages mapped",
                       static_cast<unsigned long long>(w_.h->grants->pages_in_use()));
            return false;
        }
        q_ = std::move(*q);
        for (std::uint16_t i = 0; i < size_; ++i) free_descs_.push_back(i);
        for (std::uint16_t i = 0; i < size_; ++i) free_ids_.push_back(i);
        free_slots_ = size_;
        return true;
    }

    void taint() { tainted_ = true; }

    // --- buffers -----------------------------------------------------------
    Buf make_buf(bool write) {
        Buf b;
        b.write = write;
        const std::uint64_t base = write ? w_.rw_dma : w_.ro_dma;
        b.len = in_.ConsumeIntegralInRange<std::uint32_t>(1, one_in(in_, 4) ? 2 * kPage + 100 : 600);
        std::uint32_t off = in_.ConsumeIntegralInRange<std::uint32_t>(0, kPoolBytes - b.len);
        b.addr = base + off;
        if (one_in(in_, 24)) {
            taint();
            switch (in_.ConsumeIntegralInRange(0, 6)) {
                case 0: b.addr &= ~kGrantBit; break;                        // not a grant address
                case 1: b.len = 0xffffffffu; break;                         // huge
                case 2: b.len = kPoolBytes; b.addr = base + kPage; break;   // runs past the grants
                case 3: b.addr = w_.ro_dma + off; break;                    // device-writable on a RO grant
                case 4: b.addr = in_.ConsumeIntegral<std::uint64_t>(); break;
                case 5: b.len = 0; break;
                default: b.addr = w_.table_dma; break;                      // another area (RO)
            }
        }
        return b;
    }

    /// The chain's buffers: readable ones first (virtio 1.2 §2.7.4.2).
    std::vector<Buf> make_bufs(unsigned n) {
        std::vector<Buf> bufs;
        unsigned nr = in_.ConsumeIntegralInRange(0u, n);
        for (unsigned i = 0; i < n; ++i) bufs.push_back(make_buf(i >= nr));
        if (n >= 2 && one_in(in_, 32)) {  // writable before readable
            taint();
            std::swap(bufs.front(), bufs.back());
        }
        return bufs;
    }

    Record record_of(const std::vector<Buf>& bufs) {
        Record r;
        r.bufs = bufs;
        for (const auto& b : bufs) (b.write ? r.writable : r.readable) += b.len;
        return r;
    }

    /// Writes an indirect table for `bufs`; returns its grant address.
    std::optional<std::uint64_t> write_table(const std::vector<Buf>& bufs) {
        if (tables_used_ >= kTableBytes / kTableSlot) return std::nullopt;
        const std::uint32_t at = (tables_used_++) * kTableSlot;
        std::byte* t = w_.tables + at;
        std::memset(t, 0, kTableSlot);
        for (std::size_t i = 0; i < bufs.size(); ++i) {
            std::uint16_t flags = std::uint16_t((bufs[i].write ? kWrite : 0) | (i + 1 < bufs.size() ? kNext : 0));
            std::uint16_t next = std::uint16_t(i + 1);
            if (one_in(in_, 32)) {
                taint();
                switch (in_.ConsumeIntegralInRange(0, 3)) {
                    case 0: flags |= kIndirect; break;                         // nested indirect
                    case 1: next = in_.ConsumeIntegral<std::uint16_t>(); break;
                    case 2: next = std::uint16_t(i); flags |= kNext; break;    // loop
                    default: flags = in_.ConsumeIntegral<std::uint16_t>(); break;
                }
            }
            std::byte* e = t + 16 * i;
            std::memcpy(e, &bufs[i].addr, 8);
            std::memcpy(e + 8, &bufs[i].len, 4);
            if (packed_) {
                // virtio 1.2 §2.8.19: entries of a packed indirect table carry
                // only WRITE; they are consecutive (no NEXT, no id).
                std::uint16_t pf = std::uint16_t(flags & ~kNext);
                if (flags & ~(kWrite | kNext)) pf = flags;
                std::memset(e + 12, 0, 2);
                std::memcpy(e + 14, &pf, 2);
            } else {
                std::memcpy(e + 12, &flags, 2);
                std::memcpy(e + 14, &next, 2);
            }
        }
        return w_.table_dma + at;
    }

    // --- driver: make a chain available -------------------------------------
    void add_chain() {
        const unsigned n = in_.ConsumeIntegralInRange<unsigned>(1, std::min<unsigned>(8, size_));
        const bool indirect = cfg_.indirect && n <= max_entries_ && one_in(in_, 3);
        std::vector<Buf> bufs = make_bufs(n);
        if (packed_) add_packed(bufs, indirect);
        else add_split(bufs, indirect);
    }

    void add_split(const std::vector<Buf>& bufs, bool indirect) {
        const std::size_t need = indirect ? 1 : bufs.size();
        if (free_descs_.size() < need) return;
        Record r = record_of(bufs);
        r.descs.assign(free_descs_.end() - std::ptrdiff_t(need), free_descs_.end());
        free_descs_.resize(free_descs_.size() - need);
        if (indirect) {
            auto t = write_table(bufs);
            if (!t) {
                free_descs_.insert(free_descs_.end(), r.descs.begin(), r.descs.end());
                return;
            }
            guest::SplitDesc d{*t, std::uint32_t(16 * bufs.size()), kIndirect, 0};
            if (one_in(in_, 24)) {
                taint();
                switch (in_.ConsumeIntegralInRange(0, 2)) {
                    case 0: d.len = in_.ConsumeIntegral<std::uint32_t>(); break;
                    case 1: d.flags |= kNext; d.next = r.descs[0]; break;
                    default: d.len = 16 * 300; break;  // more entries than allowed
                }
            }
            drv_->set_desc(r.descs[0], d);
        } else {
            for (std::size_t i = 0; i < bufs.size(); ++i) {
                guest::SplitDesc d{bufs[i].addr, bufs[i].len, std::uint16_t(bufs[i].write ? kWrite : 0), 0};
                if (i + 1 < bufs.size()) {
                    d.flags |= kNext;
                    d.next = r.descs[i + 1];
                }
                if (one_in(in_, 32)) {
                    taint();
                    switch (in_.ConsumeIntegralInRange(0, 3)) {
                        case 0: d.flags |= kNext; d.next = r.descs[0]; break;                // loop
                        case 1: d.flags |= kNext; d.next = in_.ConsumeIntegral<std::uint16_t>(); break;
                        case 2: d.flags = in_.ConsumeIntegral<std::uint16_t>(); break;
                        default: d.flags |= kIndirect; break;
                    }
                }
                drv_->set_desc(r.descs[i], d);
            }
        }
        std::uint16_t head = r.descs[0];
        if (one_in(in_, 32)) {
            taint();
            head = in_.ConsumeIntegral<std::uint16_t>();  // head out of range (or someone else's)
        }
        drv_->set_avail_ring(avail_shadow_, head);
        ++avail_shadow_;
        records_[r.descs[0]] = std::move(r);
        if (!one_in(in_, 4)) drv_->set_avail_idx(avail_shadow_);  // else: published by a later step
    }

    void add_packed(const std::vector<Buf>& bufs, bool indirect) {
        const std::uint16_t need = std::uint16_t(indirect ? 1 : bufs.size());
        if (free_slots_ < need || free_ids_.empty()) return;
        Record r = record_of(bufs);
        r.slots = need;
        const std::uint16_t id = free_ids_.back();
        free_ids_.pop_back();
        std::vector<guest::PackedDesc> ds;
        if (indirect) {
            auto t = write_table(bufs);
            if (!t) {
                free_ids_.push_back(id);
                return;
            }
            guest::PackedDesc d{*t, std::uint32_t(16 * bufs.size()), id, kIndirect};
            if (one_in(in_, 24)) {
                taint();
                d.len = one_in(in_, 2) ? in_.ConsumeIntegral<std::uint32_t>() : 16 * 300;
            }
            ds.push_back(d);
        } else {
            for (std::size_t i = 0; i < bufs.size(); ++i)
                ds.push_back({bufs[i].addr, bufs[i].len, id,
                              std::uint16_t((bufs[i].write ? kWrite : 0) | (i + 1 < bufs.size() ? kNext : 0))});
        }
        // Avail/used bits per slot (virtio 1.2 §2.8.1); the head is written last.
        std::vector<std::uint16_t> slot(ds.size());
        std::uint16_t s = next_avail_;
        bool wrap = avail_wrap_;
        for (std::size_t i = 0; i < ds.size(); ++i) {
            slot[i] = s;
            ds[i].flags |= wrap ? kAvail : kUsed;
            if (one_in(in_, 40)) {
                taint();
                switch (in_.ConsumeIntegralInRange(0, 3)) {
                    case 0: ds[i].flags ^= kAvail | kUsed; break;   // wrong lap
                    case 1: ds[i].flags = in_.ConsumeIntegral<std::uint16_t>(); break;
                    case 2: ds[i].id = in_.ConsumeIntegral<std::uint16_t>(); break;
                    default: ds[i].flags |= kIndirect; break;
                }
            }
            if (++s == size_) {
                s = 0;
                wrap = !wrap;
            }
        }
        for (std::size_t i = ds.size(); i-- > 0;) drv_->set_packed_desc(slot[i], ds[i]);
        next_avail_ = s;
        avail_wrap_ = wrap;
        free_slots_ = std::uint16_t(free_slots_ - need);
        records_[id] = std::move(r);
    }

    // --- device ---------------------------------------------------------------
    void check_chain(const transport::DescriptorChain& c) {
        auto it = records_.find(c.id());
        if (tainted_) {
            // Whatever the ring said, the chain's views agree with its totals.
            std::uint64_t rd = 0, wr = 0;
            for (auto s : c.readable_segments()) rd += s.size();
            for (auto s : c.writable_segments()) wr += s.size();
            FUZZ_CHECK(rd == c.readable_bytes() && wr == c.writable_bytes(), "chain %u: views %llu/%llu, totals %u/%u",
                       c.id(), static_cast<unsigned long long>(rd), static_cast<unsigned long long>(wr),
                       c.readable_bytes(), c.writable_bytes());
            return;
        }
        FUZZ_CHECK(it != records_.end(), "chain id %u was never made available", c.id());
        const Record& r = it->second;
        FUZZ_CHECK(c.readable_bytes() == r.readable && c.writable_bytes() == r.writable,
                   "chain %u: %u/%u bytes, driver put %llu/%llu", c.id(), c.readable_bytes(), c.writable_bytes(),
                   static_cast<unsigned long long>(r.readable), static_cast<unsigned long long>(r.writable));
        if (packed_) FUZZ_CHECK(c.ring_slots() == r.slots, "chain %u: %u slots, driver used %u", c.id(), c.ring_slots(), r.slots);
        // The device reads exactly what the driver put there.
        auto rd = c.reader();
        for (const auto& b : r.bufs) {
            if (b.write) continue;
            std::vector<std::byte> got(b.len);
            FUZZ_CHECK(rd.read(got), "chain %u: short read", c.id());
            const std::uint32_t off = std::uint32_t(b.addr - w_.ro_dma);
            for (std::uint32_t i = 0; i < b.len; ++i)
                FUZZ_CHECK(got[i] == pattern(off + i), "chain %u: byte %u differs", c.id(), i);
        }
        FUZZ_CHECK(rd.available() == 0, "chain %u: readable bytes left over", c.id());
    }

    void pop() {
        const bool was_broken = q_->broken();
        std::vector<transport::DescriptorChain> got;
        if (in_.ConsumeBool()) {
            auto r = q_->pop();
            if (!r) return popped_error(r.error(), was_broken);
            if (*r) got.push_back(std::move(**r));
        } else {
            auto r = q_->pop_batch(in_.ConsumeIntegralInRange<std::size_t>(1, 16), got);
            if (!r) return popped_error(r.error(), was_broken);
            FUZZ_CHECK(*r == got.size(), "pop_batch said %zu, gave %zu", *r, got.size());
        }
        FUZZ_CHECK(!was_broken || got.empty(), "a broken queue handed out a chain");
        for (auto& c : got) {
            check_chain(c);
            held_.push_back(std::move(c));
        }
    }

    void popped_error(const Error& e, bool was_broken) {
        FUZZ_CHECK(tainted_, "well-formed ring refused: %s", e.describe().c_str());
        FUZZ_CHECK(q_->broken(), "pop failed but the queue is not broken: %s", e.describe().c_str());
        (void)was_broken;
    }

    void release(std::uint16_t id) {
        auto it = records_.find(id);
        if (it == records_.end()) return;
        if (packed_) {
            free_slots_ = std::uint16_t(free_slots_ + it->second.slots);
            free_ids_.push_back(id);
        } else {
            free_descs_.insert(free_descs_.end(), it->second.descs.begin(), it->second.descs.end());
        }
        records_.erase(it);
    }

    void complete() {
        if (held_.empty()) return;
        std::size_t i = in_.ConsumeIntegralInRange<std::size_t>(0, held_.size() - 1);
        transport::DescriptorChain c = std::move(held_[i]);
        held_.erase(held_.begin() + std::ptrdiff_t(i));
        const std::uint16_t id = c.id();
        auto wr = c.writer();
        std::uint32_t n = in_.ConsumeIntegralInRange<std::uint32_t>(0, c.writable_bytes());
        std::vector<std::byte> fill(n, std::byte{0x5a});
        FUZZ_CHECK(wr.write(fill), "chain %u: writer refused %u of %u bytes", id, n, c.writable_bytes());
        std::uint32_t written = wr.written();
        if (one_in(in_, 16)) written = in_.ConsumeIntegral<std::uint32_t>();  // device bug: clamped
        if (in_.ConsumeBool()) q_->complete(std::move(c), written);
        else q_->push(std::move(c), written);
        ++completed_;
        release(id);
    }

    void drop() {
        if (held_.empty()) return;
        std::size_t i = in_.ConsumeIntegralInRange<std::size_t>(0, held_.size() - 1);
        const std::uint16_t id = held_[i].id();
        held_.erase(held_.begin() + std::ptrdiff_t(i));  // abandoned: returned with len 0
        ++completed_;
        release(id);
    }

    void step() {
        switch (in_.ConsumeIntegralInRange(0, 11)) {
            case 0: case 1: case 2: add_chain(); break;
            case 3: case 4: pop(); break;
            case 5: case 6: complete(); break;
            case 7: drop(); break;
            case 8:
                if (!packed_) drv_->set_avail_idx(avail_shadow_);
                break;
            case 9:
                switch (in_.ConsumeIntegralInRange(0, 4)) {
                    case 0: q_->disable_notifications(); break;
                    case 1: (void)q_->enable_notifications(); break;
                    case 2: q_->notify_guest(); break;
                    case 3: drv_->set_used_event(in_.ConsumeIntegral<std::uint16_t>()); break;
                    default: drv_->set_no_interrupt(in_.ConsumeBool()); break;
                }
                break;
            case 10:
                if (one_in(in_, 4)) hostile_ring();
                break;
            default: {
                // A held chain's buffers stay readable and writable until completed.
                if (held_.empty()) break;
                auto& c = held_[in_.ConsumeIntegralInRange<std::size_t>(0, held_.size() - 1)];
                for (auto s : c.writable_segments()) std::memset(s.data(), 0xa5, s.size());
                std::uint64_t sum = 0;
                for (auto s : c.readable_segments())
                    for (auto b : s) sum += std::uint8_t(b);
                (void)sum;
                break;
            }
        }
    }

    /// Scribbles a ring field the way a compromised driver would.
    void hostile_ring() {
        taint();
        if (packed_) {
            guest::PackedDesc d{in_.ConsumeIntegral<std::uint64_t>(), in_.ConsumeIntegral<std::uint32_t>(),
                                in_.ConsumeIntegral<std::uint16_t>(), in_.ConsumeIntegral<std::uint16_t>()};
            drv_->set_packed_desc(in_.ConsumeIntegralInRange<std::uint16_t>(0, std::uint16_t(size_ - 1)), d);
            return;
        }
        switch (in_.ConsumeIntegralInRange(0, 2)) {
            case 0: drv_->set_avail_idx(in_.ConsumeIntegral<std::uint16_t>()); break;  // idx jump
            case 1:
                drv_->set_desc(in_.ConsumeIntegralInRange<std::uint16_t>(0, std::uint16_t(size_ - 1)),
                               {in_.ConsumeIntegral<std::uint64_t>(), in_.ConsumeIntegral<std::uint32_t>(),
                                in_.ConsumeIntegral<std::uint16_t>(), in_.ConsumeIntegral<std::uint16_t>()});
                break;
            default:
                drv_->set_avail_ring(in_.ConsumeIntegral<std::uint16_t>(), in_.ConsumeIntegral<std::uint16_t>());
                break;
        }
    }

    void finish() {
        // Clean input: everything made available pops.
        if (!tainted_ && !packed_) drv_->set_avail_idx(avail_shadow_);
        if (!tainted_) {
            for (int i = 0; i < 64 && !q_->broken(); ++i) {
                std::vector<transport::DescriptorChain> got;
                auto r = q_->pop_batch(64, got);
                FUZZ_CHECK(r.has_value(), "well-formed ring refused at the end: %s", r.error().describe().c_str());
                if (got.empty()) break;
                for (auto& c : got) {
                    check_chain(c);
                    held_.push_back(std::move(c));
                }
            }
            FUZZ_CHECK(records_.size() == held_.size(), "%zu chains made available, %zu popped and held",
                       records_.size(), held_.size());
        }
        held_.clear();
        const auto st = q_->stats();
        // Every chain went back exactly once (an abandoned one counts as
        // completed, with len 0), unless the queue broke: then the ring is no
        // longer written (virtio 1.2 §2.1.2).
        // (abandoned is not compared with popped: a pop_batch() that fails
        // midway drops chains it built but never counted as popped.)
        FUZZ_CHECK(q_->broken() ? st.completed <= st.popped : st.popped == st.completed,
                   "popped %llu, completed %llu, abandoned %llu", static_cast<unsigned long long>(st.popped),
                   static_cast<unsigned long long>(st.completed), static_cast<unsigned long long>(st.abandoned));
        FUZZ_CHECK(w_.h->fatal.size() <= 1, "queue reported %zu failures", w_.h->fatal.size());
        FUZZ_CHECK(w_.h->fatal.empty() == !q_->broken(), "broken %d with %zu failures reported", q_->broken(),
                   w_.h->fatal.size());
        if (!tainted_) {
            FUZZ_CHECK(!q_->broken(), "well-formed ring broke the queue: %s", w_.h->fatal[0].describe().c_str());
            if (!packed_)  // every chain went back to the used ring exactly once
                FUZZ_CHECK(drv_->used_idx() == std::uint16_t(st.completed), "used idx %u after %llu used entries",
                           drv_->used_idx(), static_cast<unsigned long long>(st.completed));
        }
        q_.reset();
        w_.h->fatal.clear();
        FUZZ_CHECK(w_.h->grants->pages_in_use() == 0, "%llu grant pages still mapped after the queue is gone",
                   static_cast<unsigned long long>(w_.h->grants->pages_in_use()));
    }

    FuzzedDataProvider& in_;
    World& w_;
    bool packed_;
    std::uint16_t size_ = 0;
    std::uint16_t max_entries_ = 0;
    guest::VirtqueueDriver* drv_ = nullptr;
    transport::QueueConfig cfg_;
    std::unique_ptr<transport::Virtqueue> q_;
    bool tainted_ = false;
    // split driver state
    std::vector<std::uint16_t> free_descs_;
    std::uint16_t avail_shadow_ = 0;
    // packed driver state
    std::vector<std::uint16_t> free_ids_;
    std::uint16_t free_slots_ = 0;
    std::uint16_t next_avail_ = 0;
    bool avail_wrap_ = true;
    std::uint32_t tables_used_ = 0;
    std::map<std::uint16_t, Record> records_;  ///< by head (split) / buffer id (packed)
    std::vector<transport::DescriptorChain> held_;
    std::uint64_t completed_ = 0;  ///< completions and drops issued
};

/// Runs one input against a split (packed == false) or packed queue.
inline int run(const std::uint8_t* data, std::size_t size, bool packed) {
    FuzzedDataProvider in(data, size);
    Session(in, packed).run();
    return 0;
}

}  // namespace xv::fuzz::ring
