// SPDX-License-Identifier: GPL-2.0-only
// ACCESS / ACCESS_DATA register state (docs/nonblocking.md).
#include "xv/transport/nonblocking.h"

namespace xv::transport::nonblocking {

void IndirectRegs::write_data(std::uint32_t value) {
    // nonblocking.md: one access in flight; while BUSY nothing changes.
    if (busy()) {
        access_ |= kErrorRetry;
        ++refused_;
        return;
    }
    data_ = value;
}

std::optional<IndirectRequest> IndirectRegs::write_access(std::uint32_t cmd, const Validator& valid) {
    // nonblocking.md guarantee 2: a second access while BUSY sets
    // ERROR_RETRY and changes nothing else.
    if (busy()) {
        access_ |= kErrorRetry;
        ++refused_;
        return std::nullopt;
    }
    const unsigned sz_field = (cmd & kSizeMask) >> kSizeShift;
    const bool write = (cmd & kWrite) != 0;
    const std::uint32_t offset = cmd & kOffsetMask;
    const unsigned size = sz_field == 0 ? 1 : sz_field == 1 ? 2 : sz_field == 2 ? 4 : 0;
    // Echo the command fields so the driver can see what was refused or runs.
    const std::uint32_t echo = cmd & (kWrite | kSizeMask | kOffsetMask);
    // Malformed: size 3, offset outside the register file, a size the
    // register does not take, a write to a read-only register, or bits
    // other than the defined ones.
    const bool reserved_bits = (cmd & ~(kWrite | kSizeMask | kOffsetMask)) != 0;
    if (size == 0 || reserved_bits || offset % size != 0 || !valid(offset, size, write)) {
        access_ = echo | kErrorRetry | kErrorInvalid;
        ++refused_;
        return std::nullopt;
    }
    IndirectRequest req;
    req.offset = offset;
    req.size = size;
    req.write = write;
    req.value = size == 4 ? data_ : data_ & ((1u << (8 * size)) - 1);
    req.seq = ++seq_;
    access_ = echo | kBusy;
    ++accepted_;
    return req;
}

void IndirectRegs::complete(std::uint64_t seq, std::uint32_t value) {
    if (seq != seq_ || !busy()) return;
    if (!(access_ & kWrite)) data_ = value;
    access_ &= ~kBusy;
}

}  // namespace xv::transport::nonblocking
