// SPDX-License-Identifier: GPL-2.0-only
#include "ioreq_slot.h"

#include <xen/xen.h>
#include <xen/hvm/ioreq.h>

#include <atomic>
#include <cstring>

namespace xv::xen::detail {

static_assert(sizeof(ioreq_t) == kIoreqSlotSize, "ioreq_t is 32 bytes (public/hvm/ioreq.h)");
static_assert(STATE_IOREQ_READY == kStateReady && STATE_IORESP_READY == kStateRespReady);

namespace {
// The state nibble lives in the byte before `type`, at offset 30.
constexpr std::size_t kStateByte = 30;

std::uint8_t* state_byte(volatile void* slot) {
    return reinterpret_cast<std::uint8_t*>(const_cast<void*>(slot)) + kStateByte;
}
const std::uint8_t* state_byte(const volatile void* slot) {
    return reinterpret_cast<const std::uint8_t*>(const_cast<const void*>(slot)) + kStateByte;
}
std::uint8_t load_state(const volatile void* slot) {
    return std::atomic_ref<const std::uint8_t>(*state_byte(slot)).load(std::memory_order_acquire) & 0x0f;
}
/// Writes the byte that holds the state nibble with data_is_ptr, dir and
/// df in one release store: a server may read that byte (acquire) at any
/// time, so its other bits are not written on their own.
void store_request_byte(volatile void* slot, std::uint8_t state, bool data_is_ptr, bool is_write) {
    ioreq_t tmp{};
    tmp.state = state & 0x0f;
    tmp.data_is_ptr = data_is_ptr ? 1 : 0;
    tmp.dir = is_write ? IOREQ_WRITE : IOREQ_READ;
    tmp.df = 0;
    std::uint8_t byte;
    std::memcpy(&byte, reinterpret_cast<const std::uint8_t*>(&tmp) + kStateByte, 1);
    std::atomic_ref<std::uint8_t>(*state_byte(slot)).store(byte, std::memory_order_release);
}
void store_state(volatile void* slot, std::uint8_t state) {
    auto* b = state_byte(slot);
    std::atomic_ref<std::uint8_t> ref(*b);
    std::uint8_t old = ref.load(std::memory_order_relaxed);
    ref.store(std::uint8_t((old & 0xf0) | (state & 0x0f)), std::memory_order_release);
}
ioreq_t* as_ioreq(volatile void* slot) { return reinterpret_cast<ioreq_t*>(const_cast<void*>(slot)); }
const ioreq_t* as_ioreq(const volatile void* slot) {
    return reinterpret_cast<const ioreq_t*>(const_cast<const void*>(slot));
}
}  // namespace

bool take_request(volatile void* slot, unsigned vcpu, IoRequest& out) {
    if (load_state(slot) != STATE_IOREQ_READY) return false;
    // Acquire above orders the reads of the fields after the state check.
    ioreq_t copy;
    std::memcpy(&copy, const_cast<const void*>(static_cast<volatile void*>(slot)), sizeof copy);
    store_state(slot, STATE_IOREQ_INPROCESS);
    out.vcpu = vcpu;
    out.type = static_cast<IoreqType>(copy.type);
    out.is_write = copy.dir == IOREQ_WRITE;
    out.data_is_ptr = copy.data_is_ptr != 0;
    out.addr = copy.addr;
    out.data = copy.data;
    out.size = copy.size;
    out.count = copy.count;
    return true;
}

void complete_request(volatile void* slot, const IoRequest& req, std::uint64_t read_value) {
    ioreq_t* p = as_ioreq(slot);
    if (!req.is_write) p->data = read_value;
    // Release: Xen must see the data before IORESP_READY.
    store_state(slot, STATE_IORESP_READY);
}

void post_request(volatile void* slot, const IoRequest& req, std::uint32_t vp_eport) {
    ioreq_t* p = as_ioreq(slot);
    p->addr = req.addr;
    p->data = req.data;
    p->count = req.count;
    p->size = req.size;
    p->vp_eport = vp_eport;
    p->type = static_cast<std::uint8_t>(req.type);
    store_request_byte(slot, STATE_IOREQ_READY, req.data_is_ptr, req.is_write);
}

std::uint8_t slot_state(const volatile void* slot) { return load_state(slot); }

bool any_slot_ready(const volatile void* first, unsigned n) {
    const auto* base = static_cast<const volatile std::byte*>(first);
    for (unsigned v = 0; v < n; ++v)
        if (load_state(base + std::size_t(v) * kIoreqSlotSize) == STATE_IOREQ_READY) return true;
    return false;
}

void post_raw_request(volatile void* slot, std::uint8_t state, std::uint8_t type, bool is_write, bool data_is_ptr,
                      std::uint64_t addr, std::uint64_t data, std::uint32_t size, std::uint32_t count,
                      std::uint32_t vp_eport) {
    ioreq_t* p = as_ioreq(slot);
    p->addr = addr;
    p->data = data;
    p->count = count;
    p->size = size;
    p->vp_eport = vp_eport;
    p->type = type;
    store_request_byte(slot, state, data_is_ptr, is_write);
}

void release_slot(volatile void* slot) { store_state(slot, STATE_IOREQ_NONE); }

std::uint64_t slot_data(const volatile void* slot) { return as_ioreq(slot)->data; }

std::uint32_t slot_port(const volatile void* slot) { return as_ioreq(slot)->vp_eport; }
void set_slot_port(volatile void* slot, std::uint32_t port) { as_ioreq(slot)->vp_eport = port; }

}  // namespace xv::xen::detail
