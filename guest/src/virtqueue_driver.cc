// SPDX-License-Identifier: GPL-2.0-only
// Guest-side virtio driver for tests (split and packed rings over xen/sim).
#include "xv/guest/virtqueue_driver.h"

#include <atomic>
#include <cstring>

namespace xv::guest {

namespace {

using namespace desc_flags;

std::uint16_t ld16(const std::byte* p, std::memory_order o = std::memory_order_relaxed) {
    return std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(const_cast<std::byte*>(p))).load(o);
}
void st16(std::byte* p, std::uint16_t v, std::memory_order o = std::memory_order_relaxed) {
    std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(p)).store(v, o);
}
std::uint32_t ld32(const std::byte* p) {
    return std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(const_cast<std::byte*>(p)))
        .load(std::memory_order_relaxed);
}

/// virtio 1.2 §2.7.10: vring_need_event.
bool need_event(std::uint16_t ev, std::uint16_t new_idx, std::uint16_t old_idx) {
    return std::uint16_t(new_idx - ev - 1) < std::uint16_t(new_idx - old_idx);
}

}  // namespace

// --- ChainBuilder --------------------------------------------------------------

ChainBuilder& ChainBuilder::readable(std::span<const std::byte> data) {
    if (err_) return *this;
    if (data.empty()) return raw(drv_.desc_dma_, 0, false);
    auto b = drv_.alloc(std::uint32_t(data.size()), true, offset_);
    offset_ = 0;
    if (!b) {
        err_ = std::move(b).error();
        return *this;
    }
    std::memcpy(b->ptr, data.data(), data.size());
    items_.push_back({*b, false});
    return *this;
}

ChainBuilder& ChainBuilder::readable(std::string_view text) {
    return readable(std::as_bytes(std::span<const char>(text.data(), text.size())));
}

ChainBuilder& ChainBuilder::readable(std::uint32_t len, std::byte fill) {
    std::vector<std::byte> v(len, fill);
    return readable(std::span<const std::byte>(v));
}

ChainBuilder& ChainBuilder::writable(std::uint32_t len) {
    if (err_) return *this;
    auto b = drv_.alloc(len, false, offset_);
    offset_ = 0;
    if (!b) {
        err_ = std::move(b).error();
        return *this;
    }
    items_.push_back({*b, true});
    return *this;
}

ChainBuilder& ChainBuilder::add(const GuestBuf& buf, bool device_writable) {
    items_.push_back({buf, device_writable});
    return *this;
}

ChainBuilder& ChainBuilder::raw(std::uint64_t addr, std::uint32_t len, bool device_writable) {
    items_.push_back({GuestBuf{addr, len, !device_writable, nullptr}, device_writable});
    return *this;
}

ChainBuilder& ChainBuilder::at_offset(std::uint32_t offset) {
    offset_ = offset;
    return *this;
}

ChainBuilder& ChainBuilder::indirect(bool on) {
    indirect_ = on;
    return *this;
}

Result<Submitted> ChainBuilder::add(bool publish_now) {
    if (err_) return *err_;
    std::vector<GuestBuf> bufs;
    std::vector<bool> write;
    for (auto& it : items_) {
        bufs.push_back(it.buf);
        write.push_back(it.write);
    }
    return drv_.add_chain(std::move(bufs), std::move(write), indirect_, publish_now);
}

Result<Submitted> ChainBuilder::submit() { return add(true); }

Result<Submitted> ChainBuilder::stage() { return add(false); }

// --- VirtqueueDriver -------------------------------------------------------------

Result<std::unique_ptr<VirtqueueDriver>> VirtqueueDriver::create(xen::sim::SimGuest& guest, DriverOptions opts) {
    const std::uint64_t n = opts.size;
    if (n == 0) return make_error(std::errc::invalid_argument, "test driver: queue size 0");
    std::unique_ptr<VirtqueueDriver> d(new VirtqueueDriver(guest, opts));
    const std::uint64_t desc_len = 16 * n;
    const std::uint64_t drv_len = opts.packed ? 4 : 6 + 2 * n;
    const std::uint64_t dev_len = opts.packed ? 4 : 6 + 8 * n;
    // Coherent ring memory is granted RW (xen-facts §1.1).
    auto a = guest.alloc_dma(desc_len, opts.backend, false);
    if (!a) return std::move(a).error();
    auto b = guest.alloc_dma(drv_len, opts.backend, false);
    if (!b) return std::move(b).error();
    auto c = guest.alloc_dma(dev_len, opts.backend, false);
    if (!c) return std::move(c).error();
    d->desc_dma_ = *a;
    d->driver_dma_ = *b;
    d->device_dma_ = *c;
    d->desc_ = guest.dma_ptr(*a);
    d->driver_ = guest.dma_ptr(*b);
    d->device_ = guest.dma_ptr(*c);
    d->ring_refs_ = xen::grant_dma::pages(*a, desc_len) + xen::grant_dma::pages(*b, drv_len) +
                    xen::grant_dma::pages(*c, dev_len);
    std::memset(d->desc_, 0, desc_len);
    std::memset(d->driver_, 0, drv_len);
    std::memset(d->device_, 0, dev_len);
    d->chain_descs_.resize(n);
    if (opts.packed) {
        for (std::uint64_t i = n; i-- > 0;) d->free_ids_.push_back(std::uint16_t(i));
        d->packed_free_ = n;
    } else {
        for (std::uint64_t i = n; i-- > 0;) d->free_.push_back(std::uint16_t(i));
    }
    return d;
}

transport::QueueConfig VirtqueueDriver::config() const {
    transport::QueueConfig c;
    c.index = opts_.index;
    c.size = opts_.size;
    c.desc_addr = desc_dma_;
    c.driver_addr = driver_dma_;
    c.device_addr = device_dma_;
    c.packed = opts_.packed;
    c.event_idx = opts_.event_idx;
    c.indirect = opts_.indirect;
    c.log_name = opts_.log_name;
    return c;
}

Result<GuestBuf> VirtqueueDriver::alloc(std::uint32_t len, bool readonly, std::uint32_t offset) {
    auto a = guest_.alloc_dma(len, opts_.backend, readonly, offset);
    if (!a) return std::move(a).error();
    GuestBuf b{*a, len, readonly, guest_.dma_ptr(*a)};
    std::memset(b.ptr, 0, len);
    return b;
}

std::size_t VirtqueueDriver::free_descs() const { return opts_.packed ? packed_free_ : free_.size(); }

Result<GuestBuf> VirtqueueDriver::make_table(const std::vector<GuestBuf>& bufs, const std::vector<bool>& write) {
    // Indirect tables are device-readable: the frontend grants them RO.
    auto t = alloc(std::uint32_t(16 * bufs.size()), true);
    if (!t) return t;
    for (std::size_t i = 0; i < bufs.size(); ++i) {
        std::byte* e = t->ptr + 16 * i;
        if (opts_.packed) {
            PackedDesc d{bufs[i].dma, bufs[i].len, 0, std::uint16_t(write[i] ? kWrite : 0)};
            std::memcpy(e, &d, 16);
        } else {
            SplitDesc d{bufs[i].dma, bufs[i].len,
                        std::uint16_t((write[i] ? kWrite : 0) | (i + 1 < bufs.size() ? kNext : 0)),
                        std::uint16_t(i + 1)};
            std::memcpy(e, &d, 16);
        }
    }
    return t;
}

Result<Submitted> VirtqueueDriver::add_chain(std::vector<GuestBuf> bufs, std::vector<bool> write, bool indirect,
                                             bool publish_now) {
    if (bufs.empty()) return make_error(std::errc::invalid_argument, "test driver: a chain needs a buffer");
    Submitted s;
    std::vector<GuestBuf> ring_bufs = bufs;
    std::vector<bool> ring_write = write;
    std::vector<std::uint16_t> ring_flags(bufs.size(), 0);
    if (indirect) {
        auto t = make_table(bufs, write);
        if (!t) return std::move(t).error();
        s.table = *t;
        ring_bufs = {*t};
        ring_write = {false};
        ring_flags = {kIndirect};
    }
    const std::size_t n = ring_bufs.size();
    s.bufs = std::move(bufs);
    s.ring_descs = std::uint16_t(n);
    const std::uint16_t qsz = opts_.size;
    if (!opts_.packed) {
        if (free_.size() < n) return make_error(std::errc::no_buffer_space, "test driver: ring full");
        std::vector<std::uint16_t> idx(n);
        for (auto& i : idx) {
            i = free_.back();
            free_.pop_back();
        }
        for (std::size_t i = 0; i < n; ++i) {
            SplitDesc d{ring_bufs[i].dma, ring_bufs[i].len,
                        std::uint16_t(ring_flags[i] | (ring_write[i] ? kWrite : 0) | (i + 1 < n ? kNext : 0)),
                        std::uint16_t(i + 1 < n ? idx[i + 1] : 0)};
            set_desc(idx[i], d);
        }
        s.id = idx[0];
        chain_descs_[idx[0]] = idx;
        set_avail_ring(avail_shadow_, idx[0]);
        ++avail_shadow_;
        if (publish_now) set_avail_idx(avail_shadow_);
    } else {
        if (packed_free_ < n || free_ids_.empty()) return make_error(std::errc::no_buffer_space, "test driver: ring full");
        const std::uint16_t id = free_ids_.back();
        free_ids_.pop_back();
        packed_free_ -= n;
        std::vector<std::uint16_t> slots(n);
        std::uint16_t head_flags = 0;
        const std::uint16_t head = next_avail_;
        for (std::size_t i = 0; i < n; ++i) {
            // virtio 1.2 §2.8.1: available = AVAIL bit equal to the driver
            // wrap counter, USED bit its inverse.
            std::uint16_t f = std::uint16_t(ring_flags[i] | (ring_write[i] ? kWrite : 0) | (i + 1 < n ? kNext : 0) |
                                            (avail_wrap_ ? kAvail : kUsed));
            std::byte* p = desc_ + 16 * std::size_t(next_avail_);
            PackedDesc d{ring_bufs[i].dma, ring_bufs[i].len, id, 0};
            std::memcpy(p, &d, 14);  // addr, len, id; flags below
            if (i == 0)
                head_flags = f;
            else
                st16(p + 14, f, std::memory_order_relaxed);
            slots[i] = next_avail_;
            if (++next_avail_ == qsz) {
                next_avail_ = 0;
                avail_wrap_ = !avail_wrap_;
            }
        }
        avail_pos_ = std::uint32_t((avail_pos_ + n) % (2u * qsz));
        s.id = id;
        chain_descs_[id] = slots;
        // The head's flags go last, with release ordering (virtio 1.2 §2.8.21).
        if (publish_now)
            st16(desc_ + 16 * std::size_t(head) + 14, head_flags, std::memory_order_release);
        else
            staged_heads_.emplace_back(head, head_flags);
    }
    ++in_flight_;
    return s;
}

void VirtqueueDriver::publish() {
    if (!opts_.packed) {
        set_avail_idx(avail_shadow_);
        return;
    }
    for (auto [slot, flags] : staged_heads_) st16(desc_ + 16 * std::size_t(slot) + 14, flags, std::memory_order_release);
    staged_heads_.clear();
}

std::optional<UsedElem> VirtqueueDriver::next_used() {
    const std::uint16_t qsz = opts_.size;
    if (!opts_.packed) {
        if (used_idx() == last_used_) return std::nullopt;
        const std::byte* e = device_ + 4 + 8 * std::size_t(last_used_ % qsz);
        UsedElem u{ld32(e), ld32(e + 4)};
        ++last_used_;
        if (u.id < qsz && !chain_descs_[u.id].empty()) {
            for (auto i : chain_descs_[u.id]) free_.push_back(i);
            chain_descs_[u.id].clear();
            if (in_flight_) --in_flight_;
        }
        return u;
    }
    std::byte* p = desc_ + 16 * std::size_t(next_used_);
    const std::uint16_t f = ld16(p + 14, std::memory_order_acquire);
    const bool avail = (f & kAvail) != 0, used = (f & kUsed) != 0;
    // virtio 1.2 §2.8.1: used = AVAIL == USED == the driver's used wrap counter.
    if (avail != used || used != used_wrap_) return std::nullopt;
    UsedElem u{ld16(p + 12), ld32(p + 8)};
    std::size_t skip = 1;
    if (u.id < qsz && !chain_descs_[u.id].empty()) {
        skip = chain_descs_[u.id].size();
        packed_free_ += skip;
        chain_descs_[u.id].clear();
        free_ids_.push_back(std::uint16_t(u.id));
        if (in_flight_) --in_flight_;
    }
    std::size_t next = next_used_ + skip;
    if (next >= qsz) {
        next -= qsz;
        used_wrap_ = !used_wrap_;
    }
    next_used_ = std::uint16_t(next);
    return u;
}

void VirtqueueDriver::set_used_event(std::uint16_t idx) {
    if (!opts_.packed) {
        st16(driver_ + 4 + 2 * std::size_t(opts_.size), idx);
        return;
    }
    const std::uint32_t pos = idx % (2u * opts_.size);
    const std::uint16_t off = std::uint16_t(pos % opts_.size);
    const bool wrap = pos < opts_.size;  // lap 0 runs with wrap counter 1
    st16(driver_, std::uint16_t(off | (wrap ? 0x8000 : 0)));
    st16(driver_ + 2, 2);  // RING_EVENT_FLAGS_DESC
}

void VirtqueueDriver::set_no_interrupt(bool on) {
    if (!opts_.packed)
        st16(driver_, on ? 1 : 0);
    else
        st16(driver_ + 2, on ? 1 : 0);  // DISABLE : ENABLE
}

std::uint16_t VirtqueueDriver::avail_event() const {
    if (!opts_.packed) return ld16(device_ + 4 + 8 * std::size_t(opts_.size));
    return ld16(device_);
}

bool VirtqueueDriver::device_no_notify() const {
    if (!opts_.packed) return (ld16(device_) & 1) != 0;
    return ld16(device_ + 2) == 1;
}

bool VirtqueueDriver::kick_needed() {
    // virtio 1.2 §2.7.13.4 / §2.8.22: a full barrier between publishing
    // and reading the device's suppression fields.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (!opts_.packed) {
        const std::uint16_t now = avail_idx();
        const std::uint16_t old = kicked_at_;
        kicked_at_ = now;
        if (now == old) return false;
        if (opts_.event_idx) return need_event(avail_event(), now, old);
        return !device_no_notify();
    }
    const std::uint32_t cycle = 2u * opts_.size;
    const std::uint32_t now = avail_pos_, old = kicked_pos_;
    kicked_pos_ = now;
    if (now == old) return false;
    const std::uint16_t flags = ld16(device_ + 2);
    if (flags == 1) return false;
    if (flags != 2 || !opts_.event_idx) return true;
    const std::uint16_t ow = ld16(device_);
    const std::uint32_t ev = (ow & 0x7fff) + ((ow & 0x8000) ? 0u : opts_.size);
    return (now + cycle - ev - 1) % cycle < (now + cycle - old) % cycle;
}

SplitDesc VirtqueueDriver::desc(std::uint16_t i) const {
    SplitDesc d;
    std::memcpy(&d, desc_ + 16 * std::size_t(i % opts_.size), 16);
    return d;
}

void VirtqueueDriver::set_desc(std::uint16_t i, const SplitDesc& d) {
    std::memcpy(desc_ + 16 * std::size_t(i % opts_.size), &d, 16);
}

PackedDesc VirtqueueDriver::packed_desc(std::uint16_t i) const {
    PackedDesc d;
    std::memcpy(&d, desc_ + 16 * std::size_t(i % opts_.size), 16);
    return d;
}

void VirtqueueDriver::set_packed_desc(std::uint16_t i, const PackedDesc& d) {
    std::byte* p = desc_ + 16 * std::size_t(i % opts_.size);
    std::memcpy(p, &d, 14);
    st16(p + 14, d.flags, std::memory_order_release);
}

std::uint16_t VirtqueueDriver::avail_idx() const { return ld16(driver_ + 2, std::memory_order_relaxed); }

void VirtqueueDriver::set_avail_idx(std::uint16_t idx) {
    // virtio 1.2 §2.7.13.3: ring entries before idx (release).
    st16(driver_ + 2, idx, std::memory_order_release);
}

void VirtqueueDriver::set_avail_ring(std::uint16_t slot, std::uint16_t head) {
    st16(driver_ + 4 + 2 * std::size_t(slot % opts_.size), head);
}

std::uint16_t VirtqueueDriver::used_idx() const { return ld16(device_ + 2, std::memory_order_acquire); }

void VirtqueueDriver::push_avail(std::uint16_t head) {
    set_avail_ring(avail_shadow_, head);
    ++avail_shadow_;
    set_avail_idx(avail_shadow_);
}

}  // namespace xv::guest
