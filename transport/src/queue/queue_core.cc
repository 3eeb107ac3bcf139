// SPDX-License-Identifier: GPL-2.0-only
// The pop/push/abandon skeleton shared by split and packed queues.
#include "queue_core.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>

namespace xv::transport {

QueueCore::QueueCore(QueueConfig cfg, GuestMemory& mem, Strand strand, RaiseFn raise, FatalFn fatal)
    : Virtqueue(std::move(cfg), std::move(strand), std::move(raise), std::move(fatal)), mem_(mem) {
    // virtio 1.2 §2.7.5.3.1: "A driver MUST NOT create a descriptor chain
    // longer than the Queue Size of the device" -- this bounds indirect tables.
    max_indirect_ = cfg_.max_indirect != 0 ? std::min(cfg_.max_indirect, cfg_.size) : cfg_.size;
    // Without grant copies every buffer is mapped: the walk puts it in the
    // map batch directly (one pass from descriptor to grant refs).
    acc_.mem = &mem_;
    acc_.segs = take_segments();
    if (cfg_.copy_readable_max == 0) acc_.batch = &batch_;
}

Result<void> QueueCore::check_geometry(const QueueConfig& cfg, const Geometry& g) {
    if (cfg.size == 0 || cfg.size > 32768 || (g.pow2 && !std::has_single_bit(cfg.size)))
        return make_error(std::errc::invalid_argument,
                          fmt::format("{}: virtio 1.2 {}: {} queue size {} is not {}in 1..32768", cfg.log_name,
                                      g.section, g.layout, cfg.size, g.pow2 ? "a power of 2 " : ""));
    // The grant address carries the in-page offset, so alignment is checked on it.
    if (cfg.desc_addr % 16 != 0 || cfg.driver_addr % g.driver_align != 0 || cfg.device_addr % g.device_align != 0)
        return make_error(std::errc::invalid_argument,
                          fmt::format("{}: virtio 1.2 {}: misaligned ring (desc {:#x} needs 16, {} {:#x} {}, {} {:#x} {})",
                                      cfg.log_name, g.section, cfg.desc_addr, g.driver_area, cfg.driver_addr,
                                      g.driver_align, g.device_area, cfg.device_addr, g.device_align));
    return ok();
}

Result<void> QueueCore::map_rings(const QueueConfig& cfg, GuestMemory& mem, std::span<const RingArea> areas) {
    for (const RingArea& a : areas) {
        auto m = mem.map_area(a.addr, a.len, true);
        if (!m) return Error{m.error().code, cfg.log_name + ": " + a.what + ": " + m.error().message};
        *a.ptr = m->first.data();
        *a.map = std::move(m->second);
    }
    return ok();
}

QueueCore::~QueueCore() {
    if (in_flight_ != 0)
        spdlog::error("{}: queue destroyed with {} chains still in flight (device did not drop them first)", name(),
                      in_flight_);
}

Error QueueCore::fail_with(std::errc code, const std::string& msg) {
    return fail_with(make_error(code, msg));
}

Error QueueCore::fail_with(Error e) {
    e.message = name() + ": " + e.message;
    XV_LOG_LIMITED(log_limit_, spdlog::level::warn, "{}; queue stopped until the driver resets the device",
                   e.describe());
    fail(e);
    return e;
}

Result<std::optional<DescriptorChain>> QueueCore::pop() {
    one_.clear();
    auto r = pop_batch(1, one_);
    if (!r) return std::move(r).error();
    if (*r == 0) return std::optional<DescriptorChain>{};
    std::optional<DescriptorChain> c(std::move(one_.front()));
    one_.clear();
    return c;
}

Result<std::size_t> QueueCore::pop_batch(std::size_t max, std::vector<DescriptorChain>& out) {
    if (broken_)
        return make_error(std::errc::io_error, name() + ": queue is broken; the driver must reset the device");
    const std::size_t start = out.size();
    auto drop_batch = [&] {
        // The chains are retired by their destructors (broken: no ring write).
        for (std::size_t k = 0; k < batch_.size(); ++k) batch_.entry(k).map.reset(), batch_.entry(k).map2.reset();
        batch_.clear();
        batch_chain_.clear();
        out.erase(out.begin() + std::ptrdiff_t(start), out.end());
    };
    segs_.clear();
    batch_.clear();
    batch_chain_.clear();
    const bool direct = acc_.direct();
    std::size_t n = 0;
    while (n < max) {
        acc_.clear();
        if (direct) batch_.begin_entry();
        std::uint16_t id = 0, slots = 0;
        auto r = parse_next(acc_, id, slots);
        if (!r) {
            drop_batch();  // queue is broken: the ring is left alone
            return std::move(r).error();
        }
        if (!*r) {
            if (direct) batch_.abort_entry();
            break;
        }
        // virtio 1.2 §2.7.5 / §2.8.5: a chain describes at least one buffer;
        // one with no bytes at all carries no request.
        if (acc_.readable + acc_.writable == 0) {
            auto e = fail_fmt(std::errc::invalid_argument,
                               "virtio 1.2 §2.7.5: chain {} is empty (0 bytes)", id);
            drop_batch();
            return e;
        }
        // A buffer the grant layer refuses, reported once the chain is
        // known to keep every ring rule.
        if (acc_.refused) {
            auto e = fail_with(mem_.buffer_error(acc_.bad, acc_.descriptors));
            drop_batch();
            return e;
        }
        out.emplace_back();
        DescriptorChain& c = out.back();
        c.queue_ = this;
        c.id_ = id;
        c.slots_ = slots;
        c.segs_ = acc_.segs;  // the segments walked go with the chain
        acc_.segs = take_segments();
        ++in_flight_;
        if (direct) {
            c.readable_len_ = std::uint32_t(acc_.readable);
            c.writable_len_ = std::uint32_t(acc_.writable);
            if (!mem_.entry_fits(batch_)) {
                // The batch is full: map it now; this chain starts the next.
                auto m = map_pending(out);
                if (!m) {
                    auto e = fail_with(std::move(m).error());
                    drop_batch();
                    return e;
                }
            }
            batch_.end_entry();
            batch_chain_.push_back(out.size() - 1);
        } else if (auto f = prepare(out, segs_); !f) {
            auto e = fail_with(std::move(f).error());
            drop_batch();
            return e;
        }
        ++stats_.popped;
        ++n;
    }
    // One grant map for the whole batch, one grant copy for its small
    // readable parts.
    auto m = map_pending(out);
    if (!m) {
        auto e = fail_with(std::move(m).error());
        drop_batch();
        return e;
    }
    if (!segs_.empty()) {
        auto r = mem_.copy(segs_);
        if (!r) {
            auto e = fail_with(std::move(r).error());
            drop_batch();
            return e;
        }
    }
    return n;
}

Result<void> QueueCore::prepare(std::vector<DescriptorChain>& out, std::vector<xen::GrantCopySegment>& segs) {
    DescriptorChain& c = out.back();
    c.readable_len_ = std::uint32_t(acc_.readable);
    c.writable_len_ = std::uint32_t(acc_.writable);
    const bool copy =
        cfg_.copy_readable_max != 0 && acc_.readable != 0 && acc_.readable <= cfg_.copy_readable_max;
    std::span<const DmaBuffer> to_map = acc_.bufs;
    ChainSegments& cs = *c.segs_;
    if (copy) {
        cs.copied.resize(acc_.readable);
        std::size_t off = 0;
        subset_.clear();
        for (const DmaBuffer& b : acc_.bufs) {
            if (b.device_writable) {
                subset_.push_back(b);
                continue;
            }
            XV_TRY(mem_.add_copy_in(b, cs.copied.data() + off, segs));
            off += b.len;
        }
        cs.readable.emplace_back(cs.copied.data(), cs.copied.size());
        to_map = subset_;
        ++stats_.chains_copied;
    }
    if (to_map.empty()) return ok();
    // Where each buffer lands in its part of the mapping: the parts' pages
    // in chain order (as add_chain() lays the refs out).
    std::uint64_t ro_pages = 0, rw_pages = 0;
    for (const DmaBuffer& b : to_map) {
        std::uint64_t& have = b.device_writable ? rw_pages : ro_pages;
        const std::size_t at = std::size_t(have) * xen::kPageSize + xen::grant_dma::offset(b.addr);
        have += xen::grant_dma::pages(b.addr, b.len);
        if (b.len == 0) continue;
        if (b.device_writable)
            add_pending_segment(cs.writable, at, b.len);
        else
            add_pending_segment(cs.readable, at, b.len);
    }
    auto added = mem_.add_chain(to_map, batch_);
    if (!added) return std::move(added).error();
    if (!*added) {
        // The batch is full: map it now, then start a new one with this chain.
        XV_TRY(map_pending(out));
        added = mem_.add_chain(to_map, batch_);
        if (!added) return std::move(added).error();
    }
    batch_chain_.push_back(out.size() - 1);
    return ok();
}

Result<void> QueueCore::map_pending(std::vector<DescriptorChain>& out) {
    if (batch_.size() == 0) return ok();
    XV_TRY(mem_.map_batch(batch_));
    for (std::size_t k = 0; k < batch_.size(); ++k) {
        DescriptorChain& c = out[batch_chain_[k]];
        auto& e = batch_.entry(k);
        c.map_ = std::move(e.map);
        c.map2_ = std::move(e.map2);
        // The chain's segments were laid out when it was walked: add the
        // addresses of the parts (a part with no pages has no segments;
        // a grant-copied readable part is not pending).
        ChainSegments& cs = *c.segs_;
        if (e.ro) place_segments(cs.readable, e.ro_addr);
        if (e.rw) place_segments(cs.writable, e.rw_addr);
    }
    batch_.clear_closed();  // an entry being built stays
    batch_chain_.clear();
    return ok();
}

void QueueCore::push(DescriptorChain&& chain, std::uint32_t written) {
    if (!owns(chain)) {
        if (chain.valid())
            spdlog::error("{}: push of chain {} that belongs to another queue (ignored)", name(), chain.id());
        return;
    }
    auto r = retire(chain);  // unmaps the chain's grants before the used entry exists
    --in_flight_;
    if (written > r.writable_len) {
        spdlog::error("{}: device reports {} bytes written into chain {} of {} writable bytes; clamped", name(),
                      written, r.id, r.writable_len);
        written = r.writable_len;
    }
    if (broken_) return;  // DEVICE_NEEDS_RESET (§2.1.2): the ring is no longer ours to write
    write_used(r.id, r.slots, written);
    ++stats_.completed;
    stats_.bytes_written += written;
}

void QueueCore::push_batch(std::span<DescriptorChain> chains, std::span<const std::uint32_t> written) {
    // Up to kStep chains at a time: all their mappings released in one
    // call, then their used entries written (push() finds them unmapped).
    constexpr std::size_t kStep = 64;
    for (std::size_t at = 0; at < chains.size(); at += kStep) {
        const std::size_t end = std::min(chains.size(), at + kStep);
        xen::GrantMapping* maps[2 * kStep];
        std::size_t n = 0;
        for (std::size_t i = at; i < end; ++i) {
            if (!owns(chains[i])) continue;
            maps[n++] = &chains[i].map_;
            maps[n++] = &chains[i].map2_;
        }
        xen::release_mappings(std::span<xen::GrantMapping* const>(maps, n));
        // As push() for each, but their used entries published together.
        UsedEntry used[kStep];
        std::size_t u = 0;
        for (std::size_t i = at; i < end; ++i) {
            DescriptorChain& chain = chains[i];
            std::uint32_t w = i < written.size() ? written[i] : 0;
            if (!owns(chain)) {
                push(std::move(chain), w);  // logs a foreign chain, ignores it
                continue;
            }
            auto r = retire(chain);  // already unmapped above
            --in_flight_;
            if (w > r.writable_len) {
                spdlog::error("{}: device reports {} bytes written into chain {} of {} writable bytes; clamped",
                              name(), w, r.id, r.writable_len);
                w = r.writable_len;
            }
            used[u++] = UsedEntry{r.id, r.slots, w};
        }
        if (broken_) continue;  // DEVICE_NEEDS_RESET (§2.1.2): the ring is no longer ours to write
        write_used_many(used, u);
        stats_.completed += u;
        for (std::size_t k = 0; k < u; ++k) stats_.bytes_written += used[k].len;
    }
}

void QueueCore::abandon(DescriptorChain&& chain) noexcept {
    // Only read the id and clear the chain: moving from it would create a
    // second live chain whose destructor would come back here.
    auto r = retire(chain);
    --in_flight_;
    ++stats_.abandoned;
    if (broken_) return;
    XV_LOG_LIMITED(log_limit_, spdlog::level::warn, "{}: chain {} dropped without completion; returned with len 0",
                   name(), r.id);
    write_used(r.id, r.slots, 0);
    ++stats_.completed;
    notify_guest();
}

}  // namespace xv::transport
