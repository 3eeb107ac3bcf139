// SPDX-License-Identifier: GPL-2.0-only
// The two Xen non-blocking registers, ACCESS and ACCESS_DATA
// (docs/nonblocking.md, version 1; register layout as AMD's non-blocking
// virtio-mmio extension, edgarigl/xen virtio_mmio_ind_ext.h).
//
//   ACCESS (write = start an indirect access, read = status only)
//     31    WRITE (1) / READ (0)
//     30    BUSY          (read)  an access is in flight
//     29:28 SIZE          0 = 8, 1 = 16, 2 = 32 bit; 3 is malformed
//     27    ERROR_RETRY   (read)  the last write to ACCESS was not accepted
//     26    ERROR_INVALID (read)  ... because it was malformed (ours, v1;
//                                 always together with ERROR_RETRY)
//     16:0  OFFSET        register offset (mmio: register file; pci: BAR)
//   ACCESS_DATA: write value before writing ACCESS; read value once BUSY = 0.
//
// State machine of one device's indirect access:
//
//          write ACCESS (well formed)            work done on the strand
//   Idle ---------------------------> Busy ------------------------------> Idle
//    |  write ACCESS (malformed):        | write ACCESS / ACCESS_DATA:
//    |  ERROR_RETRY|ERROR_INVALID, Idle  | ERROR_RETRY, nothing changes
//
// The ioreq that writes ACCESS completes at once; the access itself runs
// later on the device's control strand (nonblocking.md guarantee 1).
#pragma once

#include <boost/asio/post.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>

namespace xv::transport::nonblocking {

inline constexpr std::uint32_t kMagic = 0x626e6d76;        ///< "vmnb" replaces "virt" (mmio)
inline constexpr std::uint32_t kMmioAccess = 0x018;        ///< ACCESS on virtio-mmio
inline constexpr std::uint32_t kMmioAccessData = 0x01c;    ///< ACCESS_DATA on virtio-mmio
inline constexpr std::uint32_t kWrite = 1u << 31;
inline constexpr std::uint32_t kBusy = 1u << 30;
inline constexpr unsigned kSizeShift = 28;
inline constexpr std::uint32_t kSizeMask = 3u << kSizeShift;
inline constexpr std::uint32_t kErrorRetry = 1u << 27;
inline constexpr std::uint32_t kErrorInvalid = 1u << 26;
inline constexpr std::uint32_t kOffsetMask = 0x1ffff;

/// virtio-pci: VIRTIO_PCI_CAP_VENDOR_CFG (virtio 1.2/1.3) carrying our registers.
inline constexpr std::uint8_t kPciCfgTypeVendor = 9;
/// PCI-SIG vendor id of XenSource, qualifying the vendor capability.
inline constexpr std::uint16_t kPciVendorIdXen = 0x5853;
/// Version of the capability layout (docs/nonblocking.md).
inline constexpr std::uint8_t kPciCapVersion = 1;
/// Length of the vendor capability in config space.
inline constexpr std::uint8_t kPciCapLength = 16;

/// Encodes an ACCESS command (driver side; used by tests and guest tools).
constexpr std::uint32_t command(bool write, unsigned size_bytes, std::uint32_t offset) {
    std::uint32_t sz = size_bytes == 1 ? 0 : size_bytes == 2 ? 1 : size_bytes == 4 ? 2 : 3;
    return (write ? kWrite : 0) | (sz << kSizeShift) | (offset & kOffsetMask);
}

/// One accepted indirect access.
struct IndirectRequest {
    std::uint32_t offset = 0;
    unsigned size = 4;       ///< bytes: 1, 2 or 4
    bool write = false;
    std::uint32_t value = 0; ///< for writes: ACCESS_DATA latched at the ACCESS write
    std::uint64_t seq = 0;   ///< identifies the access for complete()
};

/// Register state of ACCESS/ACCESS_DATA. Not thread-safe: the owning
/// transport calls it with its device mutex held.
class IndirectRegs {
public:
    /// Says whether an access is well formed for the transport (offset in
    /// its register file, size allowed there, register writable).
    using Validator = std::function<bool(std::uint32_t offset, unsigned size, bool write)>;

    /// ACCESS as the driver reads it (no side effect).
    std::uint32_t read_access() const { return access_; }
    /// ACCESS_DATA as the driver reads it (valid for reads once BUSY = 0).
    std::uint32_t read_data() const { return data_; }
    /// True while an access is in flight.
    bool busy() const { return (access_ & kBusy) != 0; }

    /// Driver writes ACCESS_DATA. While BUSY it is refused (ERROR_RETRY).
    void write_data(std::uint32_t value);

    /// Driver writes ACCESS. Returns the access to run when it was
    /// accepted (BUSY is then set); nullopt when refused.
    std::optional<IndirectRequest> write_access(std::uint32_t cmd, const Validator& valid);

    /// One driver access to ACCESS (`is_access`) or ACCESS_DATA: a write
    /// goes to write_access() / write_data(), a read returns the register
    /// in `read_value`. Returns the access to run for an accepted write
    /// to ACCESS.
    std::optional<IndirectRequest> driver_access(bool is_access, bool write, std::uint32_t value,
                                                 std::uint32_t& read_value, const Validator& valid) {
        if (is_access) {
            if (write) return write_access(value, valid);
            read_value = read_access();
        } else if (write) {
            write_data(value);
        } else {
            read_value = read_data();
        }
        return std::nullopt;
    }

    /// The access `seq` finished; for reads `value` goes to ACCESS_DATA.
    void complete(std::uint64_t seq, std::uint32_t value);

    /// Counters for tests.
    std::uint64_t accepted() const { return accepted_; }
    std::uint64_t refused() const { return refused_; }

private:
    std::uint32_t access_ = 0;
    std::uint32_t data_ = 0;
    std::uint64_t seq_ = 0;
    std::uint64_t accepted_ = 0;
    std::uint64_t refused_ = 0;
};

/// Runs the accepted access `req` through a transport's register entry
/// `access(offset, size, write, value, done)` and completes it in `regs`
/// (under `mu`, the device mutex): a read at once with the value read, a
/// write once the transport says it finished (`done`). `keep` holds the
/// transport (and so `mu` and `regs`) alive until then. Shared by the
/// mmio and pci transports.
template <class Mutex, class AccessFn>
void run_indirect(const IndirectRequest& req, std::shared_ptr<const void> keep, Mutex& mu, IndirectRegs& regs,
                  AccessFn&& access) {
    if (!req.write) {
        auto v = access(req.offset, req.size, false, 0, std::function<void()>{});
        std::lock_guard lk(mu);
        regs.complete(req.seq, std::uint32_t(v));
        return;
    }
    access(req.offset, req.size, true, req.value,
           std::function<void()>([keep = std::move(keep), &mu, &regs, seq = req.seq] {
               std::lock_guard lk(mu);
               regs.complete(seq, 0);
           }));
}

/// Queues the accepted access `req` on `strand` (nonblocking.md guarantee
/// 1: it never runs in the trap) and runs it there (run_indirect) through
/// the transport's register entry `access` (a member of `Transport`).
/// `mu` (the device mutex) and `regs` belong to `t`, which is held alive
/// until the access completed. Shared by the mmio and pci transports.
template <class Transport, class Strand, class Mutex, class Done>
void post_indirect(std::shared_ptr<Transport> t, const IndirectRequest& req, Strand& strand, Mutex& mu,
                   IndirectRegs& regs,
                   std::uint64_t (Transport::*access)(std::uint32_t, unsigned, bool, std::uint64_t, Done)) {
    boost::asio::post(strand, [t = std::move(t), req, &mu, &regs, access]() mutable {
        Transport* tp = t.get();
        run_indirect(req, std::move(t), mu, regs,
                     [tp, access](std::uint32_t off, unsigned size, bool write, std::uint64_t value, Done done) {
                         return (tp->*access)(off, size, write, value, std::move(done));
                     });
    });
}

}  // namespace xv::transport::nonblocking
