// SPDX-License-Identifier: GPL-2.0-only
// A guest-side virtio driver over xen/sim (tests and `xen-virtiod demo`): it lays out split or
// packed rings in simulated guest RAM, grants them to the backend as the
// Linux frontend does ("VirtIO with Grants": rings RW, device-readable
// buffers RO, device-writable buffers RW, consecutive refs per buffer) and
// offers raw access to every ring field for hostile tests.
//
//   auto drv = VirtqueueDriver::create(guest, {.size = 16}).value();
//   auto q = create_virtqueue(drv->config(), mem, strand, raise, fatal);
//   auto req = drv->chain().readable(hdr).writable(4096).writable(1).submit().value();
//   ... device pops and completes ...
//   auto used = drv->next_used();           // {id, len}
//   req.buf(2).bytes()[0]                   // what the device wrote
//
// Lifecycle of a chain, driver side:
//   chain() -> ChainBuilder --submit()--> available (in flight)
//        --device completes--> next_used() returns it, descriptors reclaimed
//
// Guest RAM in the simulator is never freed: long tests should allocate
// buffers once (alloc()) and reuse them with ChainBuilder::add().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "xv/result.h"
#include "xv/transport/virtqueue.h"
#include "xv/xen/sim.h"

namespace xv::guest {

/// A granted guest buffer: the DMA address a descriptor carries and the
/// guest's own view of the bytes.
struct GuestBuf {
    std::uint64_t dma = 0;     ///< grant DMA address (bit 63 | ref << 12 | offset)
    std::uint32_t len = 0;     ///< bytes
    bool readonly = false;     ///< granted read-only to the backend
    std::byte* ptr = nullptr;  ///< guest-side view (nullptr for raw addresses)

    /// The bytes, guest view.
    std::span<std::byte> bytes() const { return {ptr, ptr ? len : 0}; }
    /// The bytes as a string (for text payloads).
    std::string str() const { return std::string(reinterpret_cast<const char*>(ptr), ptr ? len : 0); }
    /// First grant ref of the buffer.
    xen::GrantRef ref() const { return xen::GrantRef(xen::grant_dma::first_ref(dma)); }
};

/// How the driver sets a queue up (what it would negotiate and program).
struct DriverOptions {
    std::uint16_t size = 16;          ///< entries
    bool packed = false;              ///< VIRTIO_F_RING_PACKED
    bool event_idx = false;           ///< VIRTIO_F_EVENT_IDX
    bool indirect = false;            ///< VIRTIO_F_INDIRECT_DESC
    std::uint16_t index = 0;          ///< queue index
    xen::DomId backend = 0;           ///< the domain the grants are for
    std::string log_name = "test q0"; ///< QueueConfig::log_name
};

/// One used-ring entry as the driver reads it.
struct UsedElem {
    std::uint32_t id = 0;   ///< head index (split) or buffer id (packed)
    std::uint32_t len = 0;  ///< bytes the device wrote
};

/// A split-ring descriptor as laid out in guest memory (virtio 1.2 §2.7.5).
struct SplitDesc {
    std::uint64_t addr = 0;
    std::uint32_t len = 0;
    std::uint16_t flags = 0;
    std::uint16_t next = 0;
};

/// A packed-ring descriptor as laid out in guest memory (virtio 1.2 §2.8.13).
struct PackedDesc {
    std::uint64_t addr = 0;
    std::uint32_t len = 0;
    std::uint16_t id = 0;
    std::uint16_t flags = 0;
};

/// Descriptor flag bits (virtio 1.2 §2.7.5, §2.8.13).
namespace desc_flags {
inline constexpr std::uint16_t kNext = 1;
inline constexpr std::uint16_t kWrite = 2;
inline constexpr std::uint16_t kIndirect = 4;
inline constexpr std::uint16_t kAvail = 1 << 7;  ///< packed only
inline constexpr std::uint16_t kUsed = 1 << 15;  ///< packed only
}  // namespace desc_flags

/// A chain the driver made available: its id and its buffers, to read back
/// what the device wrote.
struct Submitted {
    std::uint16_t id = 0;            ///< head (split) / buffer id (packed)
    std::uint16_t ring_descs = 0;    ///< ring descriptors it occupies
    std::vector<GuestBuf> bufs;      ///< in chain order
    std::optional<GuestBuf> table;   ///< the indirect table, when indirect

    /// Buffer `i` of the chain.
    const GuestBuf& buf(std::size_t i) const { return bufs.at(i); }
};

class VirtqueueDriver;

/// Fluent chain builder: each readable()/writable() call allocates and
/// grants one buffer (RO for device-readable, RW for device-writable).
class ChainBuilder {
public:
    explicit ChainBuilder(VirtqueueDriver& drv) : drv_(drv) {}

    /// A device-readable buffer holding `data` (granted RO).
    ChainBuilder& readable(std::span<const std::byte> data);
    /// A device-readable buffer holding `text` (granted RO).
    ChainBuilder& readable(std::string_view text);
    /// A device-readable buffer of `len` bytes filled with `fill`.
    ChainBuilder& readable(std::uint32_t len, std::byte fill = std::byte{0});
    /// A device-writable buffer of `len` bytes (granted RW, zeroed).
    ChainBuilder& writable(std::uint32_t len);
    /// An existing buffer, device-writable or not, whatever its grant.
    ChainBuilder& add(const GuestBuf& buf, bool device_writable);
    /// A descriptor with any address/length (non-grant, zero length...).
    ChainBuilder& raw(std::uint64_t addr, std::uint32_t len, bool device_writable);
    /// The next allocated buffer starts at this offset in its first page.
    ChainBuilder& at_offset(std::uint32_t offset);
    /// Put the buffers in one indirect table (granted RO) instead of the ring.
    ChainBuilder& indirect(bool on = true);
    /// Writes the chain and makes it available (publishes the idx / head
    /// flags with release ordering). Fails when the ring is full or a
    /// buffer cannot be allocated.
    Result<Submitted> submit();
    /// Like submit(), but leaves the chain unpublished (split: ring entry
    /// written, idx not moved; packed: head flags not written). publish()
    /// on the driver makes all of them available at once.
    Result<Submitted> stage();

private:
    /// Adds the chain built so far; publishes it when `publish_now`.
    Result<Submitted> add(bool publish_now);
    struct Item {
        GuestBuf buf;
        bool write;
    };
    VirtqueueDriver& drv_;
    std::vector<Item> items_;
    std::uint32_t offset_ = 0;
    bool indirect_ = false;
    std::optional<Error> err_;
};

/// The guest side of one virtqueue over a SimGuest.
class VirtqueueDriver {
public:
    /// Allocates and grants the ring memory (RW, like a coherent DMA alloc).
    static Result<std::unique_ptr<VirtqueueDriver>> create(xen::sim::SimGuest& guest, DriverOptions opts);

    /// The QueueConfig a transport would hand to create_virtqueue().
    transport::QueueConfig config() const;
    /// Options it was created with.
    const DriverOptions& options() const { return opts_; }
    /// The simulated guest underneath.
    xen::sim::SimGuest& guest() { return guest_; }

    /// Starts a chain.
    ChainBuilder chain() { return ChainBuilder(*this); }
    /// Allocates and grants a buffer (`readonly`: RO grant) at `offset` in its first page.
    Result<GuestBuf> alloc(std::uint32_t len, bool readonly, std::uint32_t offset = 0);

    /// Makes every staged chain available (split: one idx store; packed:
    /// head flags written in order).
    void publish();

    /// Next used entry, if the device published one; reclaims its descriptors.
    std::optional<UsedElem> next_used();
    /// Chains made available and not yet seen used.
    std::size_t in_flight() const { return in_flight_; }
    /// Free ring descriptors.
    std::size_t free_descs() const;

    // --- notification suppression (virtio 1.2 §2.7.7, §2.7.10, §2.8.10) ----
    /// Split: avail->used_event. Packed: driver event {off_wrap, DESC}; the
    /// index is taken as "the used position `idx` after the start", wrap derived.
    void set_used_event(std::uint16_t idx);
    /// Split: avail flags NO_INTERRUPT. Packed: driver event DISABLE/ENABLE.
    void set_no_interrupt(bool on);
    /// Split: used->avail_event. Packed: device event off_wrap.
    std::uint16_t avail_event() const;
    /// Split: used->flags has NO_NOTIFY. Packed: device event flags == DISABLE.
    bool device_no_notify() const;
    /// Whether the driver must kick for the chains published since the last
    /// call (Linux virtqueue_kick_prepare: event index or flags).
    bool kick_needed();

    // --- raw ring access for hostile tests ---------------------------------
    /// Split descriptor `i` (guest view).
    SplitDesc desc(std::uint16_t i) const;
    /// Overwrites split descriptor `i`.
    void set_desc(std::uint16_t i, const SplitDesc& d);
    /// Packed descriptor `i`.
    PackedDesc packed_desc(std::uint16_t i) const;
    /// Overwrites packed descriptor `i` (flags included, release store last).
    void set_packed_desc(std::uint16_t i, const PackedDesc& d);
    /// Split: avail->idx.
    std::uint16_t avail_idx() const;
    /// Split: stores avail->idx (release).
    void set_avail_idx(std::uint16_t idx);
    /// Split: avail->ring[slot % size] = head.
    void set_avail_ring(std::uint16_t slot, std::uint16_t head);
    /// Split: used->idx (acquire).
    std::uint16_t used_idx() const;
    /// Split: writes head `h` into the next avail slot and bumps idx.
    void push_avail(std::uint16_t head);
    /// Packed: the driver's wrap counter and next slot.
    bool avail_wrap() const { return avail_wrap_; }
    std::uint16_t next_avail_slot() const { return next_avail_; }
    /// Guest pointers to the three areas (desc, driver, device).
    std::byte* desc_area() const { return desc_; }
    std::byte* driver_area() const { return driver_; }
    std::byte* device_area() const { return device_; }
    /// Grant refs backing the ring areas (for leak checks).
    std::uint64_t ring_refs() const { return ring_refs_; }

private:
    friend class ChainBuilder;
    VirtqueueDriver(xen::sim::SimGuest& guest, DriverOptions opts) : guest_(guest), opts_(std::move(opts)) {}
    Result<Submitted> add_chain(std::vector<GuestBuf> bufs, std::vector<bool> write, bool indirect, bool publish_now);
    Result<GuestBuf> make_table(const std::vector<GuestBuf>& bufs, const std::vector<bool>& write);

    xen::sim::SimGuest& guest_;
    DriverOptions opts_;
    std::uint64_t desc_dma_ = 0, driver_dma_ = 0, device_dma_ = 0;
    std::byte* desc_ = nullptr;
    std::byte* driver_ = nullptr;
    std::byte* device_ = nullptr;
    std::uint64_t ring_refs_ = 0;
    std::size_t in_flight_ = 0;
    std::vector<std::vector<std::uint16_t>> chain_descs_;  ///< per id: ring descriptors it holds
    // split
    std::vector<std::uint16_t> free_;  ///< free descriptor indexes
    std::uint16_t avail_shadow_ = 0;   ///< avail idx including staged chains
    std::uint16_t last_used_ = 0;
    std::uint16_t kicked_at_ = 0;      ///< avail idx at the last kick_needed()
    // packed
    std::vector<std::uint16_t> free_ids_;
    std::size_t packed_free_ = 0;    ///< free ring slots
    std::uint16_t next_avail_ = 0;
    bool avail_wrap_ = true;
    std::uint16_t next_used_ = 0;
    bool used_wrap_ = true;
    std::uint32_t kicked_pos_ = 0;   ///< lap position at the last kick_needed()
    std::uint32_t avail_pos_ = 0;    ///< lap position of next_avail_ incl. staged
    std::vector<std::pair<std::uint16_t, std::uint16_t>> staged_heads_;  ///< packed: (slot, flags)
};

}  // namespace xv::guest
