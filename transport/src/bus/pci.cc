// SPDX-License-Identifier: GPL-2.0-only
// virtio-pci modern function (virtio 1.2 §4.1) + MSI-X + INTx + the
// non-blocking vendor capability.
#include "xv/transport/pci.h"

#include <boost/asio/post.hpp>

#include <utility>

#include "xv/transport/region.h"

namespace xv::transport {

using namespace pci_layout;

namespace {

constexpr std::uint16_t kCmdMem = 1u << 1;
constexpr std::uint16_t kCmdIntxDisable = 1u << 10;
constexpr std::uint16_t kStatusIntx = 1u << 3;
constexpr std::uint16_t kStatusCapList = 1u << 4;
constexpr std::uint16_t kMsixEnable = 1u << 15;
constexpr std::uint16_t kMsixFunctionMask = 1u << 14;

/// PCI class code per virtio device type (base, sub).
std::pair<std::uint8_t, std::uint8_t> class_of(DeviceId id) {
    switch (id) {
        case DeviceId::Net: return {0x02, 0x00};      // network, ethernet
        case DeviceId::Block: return {0x01, 0x00};    // mass storage, SCSI (as QEMU reports virtio-blk)
        case DeviceId::Console: return {0x07, 0x80};  // communication, other
    }
    return {0xff, 0x00};
}

/// One field of struct virtio_pci_common_cfg (virtio 1.2 §4.1.4.3).
struct Field {
    std::uint32_t off;
    unsigned width;
    bool writable;
};
constexpr Field kCommonFields[] = {
    {0x00, 4, true},  {0x04, 4, false}, {0x08, 4, true},  {0x0c, 4, true},  {0x10, 2, true},
    {0x12, 2, false}, {0x14, 1, true},  {0x15, 1, false}, {0x16, 2, true},  {0x18, 2, true},
    {0x1a, 2, true},  {0x1c, 2, true},  {0x1e, 2, false}, {0x20, 8, true},  {0x28, 8, true},
    {0x30, 8, true},  {0x38, 2, false}, {0x3a, 2, true},  {0x3c, 2, false}, {0x3e, 2, false},
};

const Field* field_at(std::uint32_t off) {
    for (auto& f : kCommonFields)
        if (off >= f.off && off < f.off + f.width) return &f;
    return nullptr;
}

/// virtio 1.2 §4.1.3.1: natural width, 64-bit fields also as two 32-bit halves.
bool width_ok(const Field& f, std::uint32_t off, unsigned size) {
    if (off == f.off && size == f.width) return true;
    return f.width == 8 && size == 4 && (off - f.off) % 4 == 0;
}

}  // namespace

std::shared_ptr<PciTransport> PciTransport::create(std::shared_ptr<Device> device, TransportEnv env,
                                                   PciInterrupts irqs, PciOptions opts) {
    auto t = std::shared_ptr<PciTransport>(new PciTransport(std::move(device), std::move(env), std::move(irqs), opts));
    t->core_->set_hooks(t.get());
    return t;
}

PciTransport::PciTransport(std::shared_ptr<Device> device, TransportEnv env, PciInterrupts irqs, PciOptions opts)
    : core_(VirtioCore::make(std::move(device), std::move(env), opts.nonblocking ? "pci-nb" : "pci")),
      irqs_(std::move(irqs)),
      opts_(opts) {
    unsigned n = opts.msix_vectors ? opts.msix_vectors : core_->num_queues() + 1u;
    if (n > kMaxVectors) n = kMaxVectors;
    if (n == 0) n = 1;
    nvec_ = std::uint16_t(n);
    msix_.resize(nvec_);
    pba_.resize((nvec_ + 63) / 64);
    build_config_space();
}

PciTransport::~PciTransport() { core_->set_hooks(nullptr); }

void PciTransport::build_config_space() {
    auto put8 = [this](std::uint32_t r, std::uint8_t v, std::uint8_t wm = 0) {
        cfg_[r] = v;
        wmask_[r] = wm;
    };
    auto put16 = [&](std::uint32_t r, std::uint16_t v, std::uint16_t wm = 0) {
        put8(r, std::uint8_t(v), std::uint8_t(wm));
        put8(r + 1, std::uint8_t(v >> 8), std::uint8_t(wm >> 8));
    };
    auto put32 = [&](std::uint32_t r, std::uint32_t v, std::uint32_t wm = 0) {
        put16(r, std::uint16_t(v), std::uint16_t(wm));
        put16(r + 2, std::uint16_t(v >> 16), std::uint16_t(wm >> 16));
    };
    const auto id = core_->device_id();
    put16(0x00, kVendorVirtio);
    // virtio 1.2 §4.1.2.1: PCI Device ID 0x1040 + virtio device id, revision >= 1.
    put16(0x02, std::uint16_t(kDeviceIdBase + std::uint32_t(id)));
    // Command: memory space, bus master, INTx disable are writable.
    put16(0x04, 0, 0x0406);
    put16(0x06, kStatusCapList);
    put8(0x08, 1);
    auto [base, sub] = class_of(id);
    put8(0x09, 0);
    put8(0x0a, sub);
    put8(0x0b, base);
    put8(0x0c, 0, 0xff);  // cache line size: scratch
    put8(0x0e, 0);        // header type 0
    // BAR0: 64-bit memory BAR; address bits below the size read 0, which
    // is the BAR sizing protocol (PCI 3.0 §6.2.5.1).
    put32(0x10, 0x4, std::uint32_t(~(kBar0Size - 1)) & 0xfffffff0u);
    put32(0x14, 0, 0xffffffffu);
    put16(0x2c, kVendorVirtio);
    put16(0x2e, opts_.subsystem_id);
    put8(0x34, kCapCommon);
    put8(0x3c, 0, 0xff);  // interrupt line: scratch for firmware
    put8(0x3d, 1);        // INTA

    // struct virtio_pci_cap (virtio 1.2 §4.1.4).
    auto vcap = [&](std::uint8_t at, std::uint8_t next, std::uint8_t len, std::uint8_t type, std::uint32_t off,
                    std::uint32_t length) {
        put8(at, 0x09);  // PCI_CAP_ID_VNDR
        put8(at + 1, next);
        put8(at + 2, len);
        put8(at + 3, type);
        put8(at + 4, 0);  // bar
        put8(at + 5, 0);  // id
        put32(at + 8, off);
        put32(at + 12, length);
    };
    const bool has_device_cfg = core_->config_size() > 0;
    vcap(kCapCommon, kCapNotify, 16, kCfgCommon, kCommonOff, kCommonLen);
    const std::uint32_t nq = core_->num_queues();
    vcap(kCapNotify, kCapIsr, 20, kCfgNotify, kNotifyOff, (nq ? nq : 1) * kNotifyMultiplier);
    put32(kCapNotify + 16, kNotifyMultiplier);  // notify_off_multiplier
    vcap(kCapIsr, has_device_cfg ? kCapDevice : kCapPciCfg, 16, kCfgIsr, kIsrOff, kIsrLen);
    if (has_device_cfg) {
        std::uint32_t len = core_->config_size() > kDeviceMax ? kDeviceMax : core_->config_size();
        vcap(kCapDevice, kCapPciCfg, 16, kCfgDevice, kDeviceOff, len);
    }
    // virtio 1.2 §4.1.4.9: PCI_CFG window; bar/offset/length/data writable.
    vcap(kCapPciCfg, kCapMsix, 20, kCfgPci, 0, 0);
    wmask_[kCapPciCfg + 4] = 0xff;
    for (unsigned i = 8; i < 20; ++i) wmask_[kCapPciCfg + i] = 0xff;

    // MSI-X capability (PCI 3.0 §6.8.2): table and PBA in BAR0.
    put8(kCapMsix, 0x11);
    put8(kCapMsix + 1, opts_.nonblocking ? kCapVendor : 0);
    put16(kCapMsix + 2, std::uint16_t(nvec_ - 1), kMsixEnable | kMsixFunctionMask);
    put32(kCapMsix + 4, kMsixTableOff | 0);
    put32(kCapMsix + 8, kMsixPbaOff | 0);

    if (opts_.nonblocking) {
        // docs/nonblocking.md §3: VIRTIO_PCI_CAP_VENDOR_CFG qualified by
        // vendor_id 0x5853, pointing at ACCESS (ACCESS_DATA at +4).
        put8(kCapVendor, 0x09);
        put8(kCapVendor + 1, 0);
        put8(kCapVendor + 2, nonblocking::kPciCapLength);
        put8(kCapVendor + 3, nonblocking::kPciCfgTypeVendor);
        put16(kCapVendor + 4, nonblocking::kPciVendorIdXen);
        put8(kCapVendor + 6, 0);  // bar
        put8(kCapVendor + 7, nonblocking::kPciCapVersion);
        put32(kCapVendor + 8, kNbOff);
        put32(kCapVendor + 12, kNbLen);
    }
}

void PciTransport::set_bar_listener(BarListener l) {
    std::lock_guard lk(core_->mutex());
    bar_listener_ = std::move(l);
}

void PciTransport::set_interrupts(PciInterrupts irqs) {
    std::lock_guard lk(core_->mutex());
    irqs_ = std::move(irqs);
    intx_level_ = false;
}

void PciTransport::quiesce(std::function<void()> done) { core_->quiesce(std::move(done)); }

bool PciTransport::intx_asserted() const {
    std::lock_guard lk(core_->mutex());
    return intx_level_;
}

std::pair<std::uint64_t, std::uint64_t> PciTransport::indirect_counts() const {
    std::lock_guard lk(core_->mutex());
    return {nb_.accepted(), nb_.refused()};
}

std::uint32_t PciTransport::cfg_get_locked(std::uint32_t reg, unsigned size) const {
    std::uint32_t v = 0;
    for (unsigned i = 0; i < size; ++i) {
        std::uint8_t b = cfg_[reg + i];
        if (reg + i == 0x06 && intx_level_) b |= kStatusIntx;  // status: interrupt pending
        v |= std::uint32_t(b) << (8 * i);
    }
    return v;
}

std::optional<std::uint64_t> PciTransport::bar0_address_locked() const {
    std::uint16_t cmd = std::uint16_t(cfg_[0x04] | (cfg_[0x05] << 8));
    if (!(cmd & kCmdMem)) return std::nullopt;
    std::uint64_t lo = cfg_get_locked(0x10, 4) & 0xfffffff0u;
    std::uint64_t hi = cfg_get_locked(0x14, 4);
    std::uint64_t base = (hi << 32) | lo;
    if (base == 0 || base + kBar0Size < base) return std::nullopt;
    return base;
}

std::optional<std::uint64_t> PciTransport::bar0_address() const {
    std::lock_guard lk(core_->mutex());
    return bar0_address_locked();
}

bool PciTransport::msix_enabled_locked() const { return cfg_[kCapMsix + 3] & (kMsixEnable >> 8); }
bool PciTransport::msix_function_masked_locked() const { return cfg_[kCapMsix + 3] & (kMsixFunctionMask >> 8); }

std::uint32_t PciTransport::config_read(std::uint32_t reg, unsigned size) {
    if ((size != 1 && size != 2 && size != 4) || reg % size != 0 || reg >= 4096) return std::uint32_t(all_ones(size));
    if (reg >= 256) return 0;  // no PCIe extended capabilities
    const std::uint32_t data_reg = kCapPciCfg + 16;
    if (reg + size > data_reg && reg < data_reg + 4) {
        // virtio 1.2 §4.1.4.9: a read of pci_cfg_data reads `length` bytes
        // of the BAR at `offset`.
        std::uint32_t v = std::uint32_t(pci_cfg_window(false, 0));
        std::lock_guard lk(core_->mutex());
        for (unsigned i = 0; i < 4; ++i) cfg_[data_reg + i] = std::uint8_t(v >> (8 * i));
        return cfg_get_locked(reg, size);
    }
    std::lock_guard lk(core_->mutex());
    return cfg_get_locked(reg, size);
}

void PciTransport::config_write(std::uint32_t reg, unsigned size, std::uint32_t value) {
    if ((size != 1 && size != 2 && size != 4) || reg % size != 0 || reg >= 256) return;
    std::optional<std::uint64_t> old_bar, new_bar;
    BarListener listener;
    bool window = false;
    std::uint32_t window_data = 0;
    {
        std::lock_guard lk(core_->mutex());
        old_bar = bar0_address_locked();
        const bool msix_was = msix_enabled_locked(), fmask_was = msix_function_masked_locked();
        for (unsigned i = 0; i < size; ++i) {
            std::uint32_t r = reg + i;
            std::uint8_t b = std::uint8_t(value >> (8 * i));
            cfg_[r] = std::uint8_t((cfg_[r] & ~wmask_[r]) | (b & wmask_[r]));
        }
        new_bar = bar0_address_locked();
        const std::uint32_t data_reg = kCapPciCfg + 16;
        if (reg + size > data_reg && reg < data_reg + 4) {
            window = true;
            window_data = cfg_get_locked(data_reg, 4);
        }
        // The INTx level follows command.INTX_DISABLE and MSI-X enable.
        update_intx_locked();
        // PCI 3.0 §6.8.2.3: enabling MSI-X or clearing the function mask
        // sends the messages that became pending meanwhile.
        if (msix_enabled_locked() && (!msix_was || (fmask_was && !msix_function_masked_locked())))
            flush_pending_vectors_locked();
        if (old_bar != new_bar) listener = bar_listener_;
    }
    if (window) pci_cfg_window(true, window_data);
    if (listener) listener(old_bar, new_bar);
}

std::uint64_t PciTransport::pci_cfg_window(bool write, std::uint32_t data) {
    std::uint8_t bar;
    std::uint32_t off, len;
    {
        std::lock_guard lk(core_->mutex());
        bar = cfg_[kCapPciCfg + 4];
        off = cfg_get_locked(kCapPciCfg + 8, 4);
        len = cfg_get_locked(kCapPciCfg + 12, 4);
    }
    // virtio 1.2 §4.1.4.9.1: length 1, 2 or 4, offset aligned to it, inside
    // the BAR; otherwise the access does nothing.
    if (bar != 0 || (len != 1 && len != 2 && len != 4) || off % len != 0 || off + std::uint64_t(len) > kBar0Size) {
        XV_LOG_LIMITED(core_->rate_limit(), spdlog::level::warn,
                       "{}: PCI_CFG window access bar {} offset {:#x} length {} refused", core_->label(), bar, off,
                       len);
        return 0;
    }
    if (write) {
        bar_write(off, len, data & std::uint32_t(all_ones(len)));
        return 0;
    }
    return bar_read(off, len);
}

void PciTransport::update_intx_locked() {
    std::uint16_t cmd = std::uint16_t(cfg_[0x04] | (cfg_[0x05] << 8));
    bool want = !msix_enabled_locked() && !(cmd & kCmdIntxDisable) && core_->isr_locked() != 0;
    if (want == intx_level_) return;
    intx_level_ = want;
    if (!irqs_.intx) return;
    if (auto r = irqs_.intx->set_level(want); !r)
        XV_LOG_LIMITED(core_->rate_limit(), spdlog::level::err, "{}: INTx level {} failed: {}", core_->label(), want,
                       r.error().describe());
}

void PciTransport::fire_vector_locked(std::uint16_t vec) {
    if (vec >= nvec_) return;
    // PCI 3.0 §6.8.3.4: a masked vector records a pending bit instead.
    if (msix_function_masked_locked() || (msix_[vec].ctrl & 1)) {
        pba_[vec / 64] |= 1ULL << (vec % 64);
        return;
    }
    pba_[vec / 64] &= ~(1ULL << (vec % 64));
    if (!irqs_.msi) return;
    if (auto r = irqs_.msi->send(msix_[vec].addr, msix_[vec].data); !r)
        XV_LOG_LIMITED(core_->rate_limit(), spdlog::level::err, "{}: MSI-X vector {} failed: {}", core_->label(), vec,
                       r.error().describe());
}

void PciTransport::flush_pending_vectors_locked() {
    if (!msix_enabled_locked() || msix_function_masked_locked()) return;
    for (std::uint16_t v = 0; v < nvec_; ++v)
        if ((pba_[v / 64] >> (v % 64)) & 1 && !(msix_[v].ctrl & 1)) fire_vector_locked(v);
}

void PciTransport::deliver_locked(IrqCause cause, std::uint16_t queue) {
    // virtio 1.2 §4.1.4.5.1: the config bit is set before a config
    // notification; the queue bit only when MSI-X is off.
    if (cause == IrqCause::Config) core_->set_isr_locked(isr::kConfig);
    if (msix_enabled_locked()) {
        std::uint16_t vec = kNoVector;
        if (cause == IrqCause::Config) vec = core_->config_msix_vector_locked();
        else if (auto* q = core_->queue_locked(queue)) vec = q->msix_vector;
        // virtio 1.2 §4.1.5.1.2: NO_VECTOR - no interrupt for this event.
        if (vec != kNoVector) fire_vector_locked(vec);
        return;
    }
    if (cause == IrqCause::Queue) core_->set_isr_locked(isr::kQueue);
    update_intx_locked();
}

void PciTransport::reset_done_locked() {
    for (auto& w : pba_) w = 0;
    update_intx_locked();
}

std::uint64_t PciTransport::bar_read(std::uint64_t offset, unsigned size) {
    if (offset >= kBar0Size) return 0;
    return access(std::uint32_t(offset), size, false, 0, nullptr);
}

void PciTransport::bar_write(std::uint64_t offset, unsigned size, std::uint64_t value) {
    if (offset >= kBar0Size) return;
    access(std::uint32_t(offset), size, true, value, nullptr);
}

std::uint64_t PciTransport::access(std::uint32_t off, unsigned size, bool write, std::uint64_t value, Done done) {
    std::uint64_t v = 0;
    std::vector<Done> pending;
    std::optional<nonblocking::IndirectRequest> req;
    bool bad_size = size != 1 && size != 2 && size != 4 && size != 8;
    if (bad_size || off % size != 0) {
        XV_LOG_LIMITED(core_->rate_limit(), spdlog::level::warn, "{}: misaligned {}-byte BAR access at {:#x}",
                       core_->label(), size, off);
        if (done) done();
        return write ? 0 : all_ones(size);
    }
    if (off >= kDeviceOff && off < kDeviceOff + kDeviceMax) {
        const std::uint32_t c = off - kDeviceOff;
        if (write) {
            if (!core_->write_config(c, size, value))
                XV_LOG_LIMITED(core_->rate_limit(), spdlog::level::warn,
                               "{}: device config write at {:#x} out of range", core_->label(), c);
        } else if (auto r = core_->read_config(c, size)) {
            v = *r;
        }
        if (done) done();
        return v;
    }
    {
        std::lock_guard lk(core_->mutex());
        if (off < kCommonOff + kCommonLen) {
            if (write) common_write_locked(off - kCommonOff, size, value, done);
            else v = common_read_locked(off - kCommonOff, size);
        } else if (off >= kIsrOff && off < kIsrOff + kIsrLen) {
            if (!write && off == kIsrOff) {
                // virtio 1.2 §4.1.4.5: reading ISR clears it and lowers INTx.
                v = core_->isr_locked();
                core_->clear_isr_locked(0xff);
                update_intx_locked();
            }
        } else if (off >= kNotifyOff && off < kNotifyOff + core_->num_queues() * kNotifyMultiplier) {
            // virtio 1.2 §4.1.4.4: the doorbell address names the queue.
            if (write) core_->notify_locked(std::uint16_t((off - kNotifyOff) / kNotifyMultiplier),
                                            std::exchange(done, nullptr));
        } else if (opts_.nonblocking && off >= kNbOff && off < kNbOff + kNbLen) {
            if (size != 4) {
                XV_LOG_LIMITED(core_->rate_limit(), spdlog::level::warn, "{}: {}-byte access to {:#x} ignored",
                               core_->label(), size, off);
            } else {
                std::uint32_t reg = 0;
                req = nb_.driver_access(off == kNbOff, write, std::uint32_t(value), reg,
                                        [this](std::uint32_t o, unsigned s, bool w) { return indirect_valid(o, s, w); });
                v = reg;
            }
        } else if (off >= kMsixTableOff && off < kMsixTableOff + 16u * nvec_) {
            auto& e = msix_[(off - kMsixTableOff) / 16];
            const std::uint32_t f = (off - kMsixTableOff) % 16;
            if (size == 8 && f % 8 == 0) {
                if (f == 0) {
                    if (write) e.addr = value;
                    else v = e.addr;
                } else {
                    if (write) {
                        e.data = std::uint32_t(value);
                        e.ctrl = std::uint32_t(value >> 32);
                    } else {
                        v = e.data | (std::uint64_t(e.ctrl) << 32);
                    }
                }
            } else if (size == 4) {
                std::uint32_t* word = nullptr;
                std::uint32_t tmp_lo = std::uint32_t(e.addr), tmp_hi = std::uint32_t(e.addr >> 32);
                switch (f) {
                    case 0: word = &tmp_lo; break;
                    case 4: word = &tmp_hi; break;
                    case 8: word = &e.data; break;
                    default: word = &e.ctrl; break;
                }
                if (write) {
                    *word = std::uint32_t(value);
                    e.addr = (std::uint64_t(tmp_hi) << 32) | tmp_lo;
                } else {
                    v = *word;
                }
            }
            e.ctrl &= 1;  // only the mask bit is defined
            // PCI 3.0 §6.8.3.4: unmasking a vector with its pending bit set
            // sends the message.
            if (write) flush_pending_vectors_locked();
        } else if (off >= kMsixPbaOff && off < kMsixPbaOff + 8u * pba_.size()) {
            if (!write) {
                std::uint64_t w = pba_[(off - kMsixPbaOff) / 8];
                v = size == 8 ? w : (w >> (8 * ((off - kMsixPbaOff) % 8))) & all_ones(size);
            }
        }
        pending = core_->take_pending_locked();
    }
    if (req) {
        nonblocking::post_indirect(shared_from_this(), *req, core_->control_strand(), core_->mutex(), nb_,
                                   &PciTransport::access);
    }
    core_->run_pending(pending);
    if (done) done();
    return v;
}

std::uint64_t PciTransport::common_read_locked(std::uint32_t off, unsigned size) {
    const Field* f = field_at(off);
    if (!f || off + size > f->off + f->width) return 0;
    auto& c = *core_;
    auto* q = c.queue_locked(queue_select_);
    std::uint64_t full = 0;
    switch (f->off) {
        case 0x00: full = dfselect_; break;
        case 0x04: full = c.device_features_word_locked(dfselect_); break;
        case 0x08: full = gfselect_; break;
        case 0x0c: full = c.driver_features_word_locked(gfselect_); break;
        case 0x10: full = c.config_msix_vector_locked(); break;
        case 0x12: full = c.num_queues(); break;
        case 0x14: full = c.status_locked(); break;
        case 0x15: full = std::uint8_t(c.config_generation_locked()); break;
        case 0x16: full = queue_select_; break;
        case 0x18: full = q ? q->size : 0; break;  // 0: queue not available
        case 0x1a: full = q ? q->msix_vector : kNoVector; break;
        case 0x1c: full = q && q->ready ? 1 : 0; break;
        case 0x1e: full = q ? queue_select_ : 0; break;  // queue_notify_off: doorbell q at q * multiplier
        case 0x20: full = q ? q->desc : 0; break;
        case 0x28: full = q ? q->driver : 0; break;
        case 0x30: full = q ? q->device : 0; break;
        default: full = 0; break;
    }
    return (full >> (8 * (off - f->off))) & all_ones(size);
}

void PciTransport::common_write_locked(std::uint32_t off, unsigned size, std::uint64_t value, Done& done) {
    auto& c = *core_;
    const Field* f = field_at(off);
    if (!f || !f->writable || !width_ok(*f, off, size)) {
        XV_LOG_LIMITED(c.rate_limit(), spdlog::level::warn,
                       "{}: {}-byte write {:#x} to common cfg {:#x} (read-only or wrong width), ignored", c.label(),
                       size, value, off);
        return;
    }
    auto* q = c.queue_locked(queue_select_);
    auto set64 = [&](std::uint64_t& field) {
        if (!q) return;
        // virtio 1.2 §4.1.4.3.2: queue fields are written while the queue
        // is not enabled.
        if (!c.queue_config_writable_locked(queue_select_)) {
            XV_LOG_LIMITED(c.rate_limit(), spdlog::level::warn, "{}: queue {} address written while enabled",
                           c.label(), queue_select_);
            return;
        }
        if (size == 8) field = value;
        else if (off == f->off) field = (field & 0xffffffff00000000ULL) | std::uint32_t(value);
        else field = (field & 0xffffffffULL) | (value << 32);
    };
    switch (f->off) {
        case 0x00: dfselect_ = std::uint32_t(value); return;
        case 0x08: gfselect_ = std::uint32_t(value); return;
        case 0x0c: c.set_driver_features_word_locked(gfselect_, std::uint32_t(value)); return;
        case 0x10:
            // virtio 1.2 §4.1.5.1.2: a vector that cannot be mapped reads back NO_VECTOR.
            c.set_config_msix_vector_locked(value < nvec_ ? std::uint16_t(value) : kNoVector);
            return;
        case 0x14: c.write_status_locked(std::uint8_t(value), std::exchange(done, nullptr)); return;
        case 0x16: queue_select_ = std::uint16_t(value); return;
        case 0x18:
            if (q && c.queue_config_writable_locked(queue_select_)) q->size = std::uint16_t(value);
            return;
        case 0x1a:
            if (q) q->msix_vector = value < nvec_ ? std::uint16_t(value) : kNoVector;
            return;
        case 0x1c:
            if (!q) return;
            if ((value & 0xffff) == 0) {
                // virtio 1.2 §4.1.4.3.2: the driver MUST NOT write 0 to queue_enable.
                XV_LOG_LIMITED(c.rate_limit(), spdlog::level::warn, "{}: queue_enable := 0 ignored", c.label());
                return;
            }
            c.set_queue_ready_locked(queue_select_, true, std::exchange(done, nullptr));
            return;
        // q is null when queue_select names a queue that does not exist:
        // the write is dropped (virtio 1.2 §4.1.4.3: queue_size reads 0 there).
        case 0x20: if (q) set64(q->desc); return;
        case 0x28: if (q) set64(q->driver); return;
        case 0x30: if (q) set64(q->device); return;
        default: return;  // queue_reset: RING_RESET not offered
    }
}

bool PciTransport::indirect_valid(std::uint32_t off, unsigned size, bool write) const {
    if (off < kCommonOff + kCommonLen) {
        const Field* f = field_at(off - kCommonOff);
        if (!f) return false;
        if (write) return f->writable && width_ok(*f, off - kCommonOff, size);
        return off - kCommonOff + size <= f->off + f->width;
    }
    if (off == kIsrOff) return !write;
    if (off >= kDeviceOff && off < kDeviceOff + kDeviceMax)
        return std::uint64_t(off - kDeviceOff) + size <= core_->config_size();
    if (off >= kNotifyOff && off < kNotifyOff + core_->num_queues() * kNotifyMultiplier)
        return (off - kNotifyOff) % kNotifyMultiplier == 0 && size >= 2;
    return false;  // MSI-X table/PBA, ACCESS/ACCESS_DATA, holes
}

}  // namespace xv::transport
