// SPDX-License-Identifier: GPL-2.0-only
// The per-vCPU ioreq slot handshake (public/hvm/ioreq.h), shared by the
// libxen and sim implementations so both follow the same protocol:
//
//   READY --(server takes it)--> INPROCESS --(answered)--> IORESP_READY
//
// Xen (or the simulated vCPU) owns the slot in NONE and IORESP_READY.
#pragma once

#include <cstdint>

#include "xv/xen/ioreq.h"

struct ioreq;

namespace xv::xen::detail {

/// Size of one slot in the shared ioreq page (sizeof(ioreq_t)).
inline constexpr std::size_t kIoreqSlotSize = 32;

/// If `slot` holds a READY request, marks it INPROCESS and copies it into
/// `out` (the copy is what we validate; the guest cannot change it later).
bool take_request(volatile void* slot, unsigned vcpu, IoRequest& out);

/// Writes the read value (for reads) and marks the slot IORESP_READY with
/// release ordering, so Xen sees the data before the state.
void complete_request(volatile void* slot, const IoRequest& req, std::uint64_t read_value);

/// Fills a slot as Xen does before signalling the vCPU's port (used by the
/// simulator's vCPUs).
void post_request(volatile void* slot, const IoRequest& req, std::uint32_t vp_eport);

/// Reads the state field of a slot (acquire).
std::uint8_t slot_state(const volatile void* slot);

/// Whether one of the `n` consecutive slots from `first` is READY: the
/// state of each read once (acquire), nothing else touched. A state value
/// that is not READY (any other nibble) is not a request.
bool any_slot_ready(const volatile void* first, unsigned n);

/// Writes a slot with raw field values and state nibble, then notifies
/// nobody (the simulator's tests of what the backend does with values Xen
/// would not write).
void post_raw_request(volatile void* slot, std::uint8_t state, std::uint8_t type, bool is_write, bool data_is_ptr,
                      std::uint64_t addr, std::uint64_t data, std::uint32_t size, std::uint32_t count,
                      std::uint32_t vp_eport);

/// Marks a slot NONE after the vCPU consumed the response (simulator).
void release_slot(volatile void* slot);

/// Reads the response data of a slot (simulator).
std::uint64_t slot_data(const volatile void* slot);

/// The vp_eport field of a slot (Xen fills it at enable time).
std::uint32_t slot_port(const volatile void* slot);
void set_slot_port(volatile void* slot, std::uint32_t port);

inline constexpr std::uint8_t kStateNone = 0;
inline constexpr std::uint8_t kStateReady = 1;
inline constexpr std::uint8_t kStateInProcess = 2;
inline constexpr std::uint8_t kStateRespReady = 3;

}  // namespace xv::xen::detail
