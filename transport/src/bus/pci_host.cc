// SPDX-License-Identifier: GPL-2.0-only
// Generic ECAM host bridge (Arm) and its guest device-tree fragment.
#include "xv/transport/pci_host.h"

#include <fmt/format.h>

#include <atomic>

#include "xv/log.h"
#include "xv/transport/interrupt.h"

namespace xv::transport {

namespace {

struct Area {
    const char* name;
    std::uint64_t base, size;
};

// xen/include/public/arch-arm.h (Xen 4.17): the fixed guest memory map.
constexpr Area kXenGuestMap[] = {
    {"GUEST_VIRTIO_MMIO", 0x02000000, 0x00100000},
    {"GUEST_GIC (GICD..GICR0)", 0x03000000, 0x01020000},
    {"GUEST_VPCI_ECAM", 0x10000000, 0x10000000},
    {"GUEST_ACPI", 0x20000000, 0x02000000},
    {"GUEST_PL011", 0x22000000, 0x00001000},
    {"GUEST_VPCI_MEM", 0x23000000, 0x10000000},
    {"GUEST_GNTTAB", 0x38000000, 0x01000000},
    {"GUEST_MAGIC", 0x39000000, 0x01000000},
    {"GUEST_RAM0", 0x40000000, 0xc0000000},
};

bool overlaps(std::uint64_t a, std::uint64_t as, std::uint64_t b, std::uint64_t bs) {
    return a < b + bs && b < a + as;
}

}  // namespace

Result<void> validate(const PciHostConfig& c) {
    constexpr std::uint64_t kMiB = 1ULL << 20;
    if (c.ecam_size == 0 || c.ecam_size % kMiB != 0 || c.ecam_size > 256 * kMiB || c.ecam_base % kMiB != 0)
        return make_error(std::errc::invalid_argument,
                          fmt::format("PCI host: ECAM window {:#x}+{:#x} must be 1 MiB aligned, 1..256 buses",
                                      c.ecam_base, c.ecam_size));
    if (c.mmio_size == 0 || c.mmio_base % 0x10000 != 0 || c.mmio_size % 0x10000 != 0 ||
        c.mmio_base + c.mmio_size > (1ULL << 32))
        return make_error(std::errc::invalid_argument,
                          fmt::format("PCI host: BAR window {:#x}+{:#x} must be 64 KiB aligned and below 4 GiB",
                                      c.mmio_base, c.mmio_size));
    if (c.mmio_size < pci_layout::kBar0Size)
        return make_error(std::errc::invalid_argument, "PCI host: BAR window smaller than one BAR");
    if (overlaps(c.ecam_base, c.ecam_size, c.mmio_base, c.mmio_size))
        return make_error(std::errc::invalid_argument, "PCI host: ECAM and BAR windows overlap");
    for (auto& a : kXenGuestMap) {
        for (auto [what, base, size] : {std::tuple{"ECAM", c.ecam_base, c.ecam_size},
                                        std::tuple{"BAR", c.mmio_base, c.mmio_size}}) {
            if (overlaps(base, size, a.base, a.size))
                return make_error(std::errc::invalid_argument,
                                  fmt::format("PCI host: {} window {:#x}+{:#x} overlaps Xen's {} at {:#x}+{:#x}",
                                              what, base, size, a.name, a.base, a.size));
        }
    }
    // GUEST_VPL011_SPI is 32 and libxl gives SPIs 33..43 to virtio-mmio.
    if (c.intx_spi_base < 44 || c.intx_spi_base + 3 > 987)
        return make_error(std::errc::invalid_argument,
                          fmt::format("PCI host: INTx SPIs {}..{} collide with vpl011/virtio-mmio (32..43) or "
                                      "exceed the GIC",
                                      c.intx_spi_base, c.intx_spi_base + 3));
    return ok();
}

std::string render_dt_fragment(const PciHostConfig& c) {
    std::string imap;
    // Standard INTx swizzle for devices on bus 0: slot bits 12:11 select the
    // row (interrupt-map-mask 0x1800), pin 1..4 the column. The GIC of a Xen
    // guest has #address-cells = 0 and 3 interrupt cells (SPI, number - 32,
    // 4 = level high).
    for (unsigned slot = 0; slot < 4; ++slot) {
        for (unsigned pin = 1; pin <= 4; ++pin) {
            std::uint32_t spi = c.intx_spi_base + (slot + pin - 1) % 4;
            imap += fmt::format("{}\n\t\t\t\t<0x{:x} 0x0 0x0 0x{:x} {} 0x0 0x{:x} 0x4>", imap.empty() ? "" : ",",
                                slot << 11, pin, c.gic_phandle, spi - 32);
        }
    }
    const unsigned last_bus = unsigned(c.ecam_size >> 20) - 1;
    return fmt::format(
        "/dts-v1/;\n"
        "\n"
        "/*\n"
        " * xen-virtiod virtio-pci host for domain backend {backend} (xl.cfg: device_tree=\"<this>.dtb\").\n"
        " * INTx uses SPIs {spi0}..{spi3}: make sure the guest has that many SPIs (xl.cfg nr_spis).\n"
        " */\n"
        "/ {{\n"
        "\t#address-cells = <2>;\n"
        "\t#size-cells = <2>;\n"
        "\n"
        "\tpassthrough {{\n"
        "\t\tcompatible = \"simple-bus\";\n"
        "\t\tranges;\n"
        "\t\t#address-cells = <2>;\n"
        "\t\t#size-cells = <2>;\n"
        "\n"
        "\t\txen_grant_dma: xen-grant-dma {{\n"
        "\t\t\tcompatible = \"xen,grant-dma\";\n"
        "\t\t\t#iommu-cells = <1>;\n"
        "\t\t}};\n"
        "\n"
        "\t\tpcie@{ecam:x} {{\n"
        "\t\t\tcompatible = \"pci-host-ecam-generic\";\n"
        "\t\t\tdevice_type = \"pci\";\n"
        "\t\t\treg = <0x{ecam_hi:x} 0x{ecam_lo:x} 0x{ecams_hi:x} 0x{ecams_lo:x}>;\n"
        "\t\t\tbus-range = <0x0 0x{last_bus:x}>;\n"
        "\t\t\t#address-cells = <3>;\n"
        "\t\t\t#size-cells = <2>;\n"
        "\t\t\t#interrupt-cells = <1>;\n"
        "\t\t\tlinux,pci-domain = <{domain}>;\n"
        "\t\t\tdma-coherent;\n"
        "\t\t\tranges = <0x02000000 0x0 0x{mmio:x} 0x0 0x{mmio:x} 0x0 0x{mmios:x}>;\n"
        "\t\t\tinterrupt-map-mask = <0x1800 0x0 0x0 0x7>;\n"
        "\t\t\tinterrupt-map = {imap};\n"
        "\t\t\t/* every requester id maps to the backend domain: grants only */\n"
        "\t\t\tiommu-map = <0x0 &xen_grant_dma {backend} 0x10000>;\n"
        "\t\t\tiommu-map-mask = <0x0>;\n"
        "\t\t}};\n"
        "\t}};\n"
        "}};\n",
        fmt::arg("backend", c.backend_domid), fmt::arg("spi0", c.intx_spi_base),
        fmt::arg("spi3", c.intx_spi_base + 3), fmt::arg("ecam", c.ecam_base),
        fmt::arg("ecam_hi", c.ecam_base >> 32), fmt::arg("ecam_lo", c.ecam_base & 0xffffffff),
        fmt::arg("ecams_hi", c.ecam_size >> 32), fmt::arg("ecams_lo", c.ecam_size & 0xffffffff),
        fmt::arg("last_bus", last_bus), fmt::arg("domain", c.pci_domain), fmt::arg("mmio", c.mmio_base),
        fmt::arg("mmios", c.mmio_size), fmt::arg("imap", imap));
}

/// The ECAM window.
class PciHost::Ecam final : public MmioRegion {
public:
    explicit Ecam(std::weak_ptr<PciHost> host, std::uint64_t size) : host_(std::move(host)), size_(size) {}
    std::uint64_t region_size() const override { return size_; }
    std::uint64_t mmio_read(std::uint64_t offset, unsigned size) override {
        auto fn = target(offset, size);
        // PCI: a config read of an absent function returns all ones.
        if (!fn) return all_ones(size);
        return fn->config_read(unsigned(offset & 0xfff), size);
    }
    void mmio_write(std::uint64_t offset, unsigned size, std::uint64_t value) override {
        if (auto fn = target(offset, size)) fn->config_write(unsigned(offset & 0xfff), size, std::uint32_t(value));
    }
    void quiesce(std::function<void()> done) override { done(); }

private:
    std::shared_ptr<PciTransport> target(std::uint64_t offset, unsigned size) {
        if (size > 4) return nullptr;
        auto host = host_.lock();
        if (!host) return nullptr;
        auto a = decode(offset);
        if (a.bus != 0 || a.function != 0) return nullptr;  // devices on bus 0, function 0
        return host->function(a.device);
    }
    std::weak_ptr<PciHost> host_;
    std::uint64_t size_;
};

/// The BAR window.
class PciHost::Window final : public MmioRegion {
public:
    Window(std::weak_ptr<PciHost> host, std::uint64_t base, std::uint64_t size)
        : host_(std::move(host)), base_(base), size_(size) {}
    std::uint64_t region_size() const override { return size_; }
    std::uint64_t mmio_read(std::uint64_t offset, unsigned size) override {
        std::uint64_t off;
        if (auto fn = target(offset, size, off)) return fn->bar_read(off, size);
        XV_LOG_LIMITED(rl_, spdlog::level::debug, "PCI host: read at {:#x} hits no BAR", base_ + offset);
        return all_ones(size);
    }
    void mmio_write(std::uint64_t offset, unsigned size, std::uint64_t value) override {
        std::uint64_t off;
        if (auto fn = target(offset, size, off)) fn->bar_write(off, size, value);
    }
    void quiesce(std::function<void()> done) override { done(); }

private:
    std::shared_ptr<PciTransport> target(std::uint64_t offset, unsigned size, std::uint64_t& off) {
        auto host = host_.lock();
        if (!host) return nullptr;
        const std::uint64_t addr = base_ + offset;
        // The slot that answered last first: a driver talks to one device
        // at a time.
        const unsigned first = last_.load(std::memory_order_relaxed);
        for (unsigned i = 0; i < kSlots; ++i) {
            const unsigned s = (first + i) % kSlots;
            auto fn = host->function(s);
            if (!fn) continue;
            auto bar = fn->bar0_address();
            if (bar && addr >= *bar && addr + size <= *bar + PciTransport::bar0_size()) {
                off = addr - *bar;
                last_.store(s, std::memory_order_relaxed);
                return fn;
            }
        }
        return nullptr;
    }
    std::atomic<unsigned> last_{0};
    std::weak_ptr<PciHost> host_;
    std::uint64_t base_, size_;
    log::RateLimit rl_;
};

Result<std::shared_ptr<PciHost>> PciHost::create(PciHostConfig cfg) {
    XV_TRY(validate(cfg));
    auto host = std::shared_ptr<PciHost>(new PciHost(cfg));
    host->ecam_ = std::make_shared<Ecam>(host, cfg.ecam_size);
    host->window_ = std::make_shared<Window>(host, cfg.mmio_base, cfg.mmio_size);
    return host;
}

std::uint32_t PciHost::intx_spi(unsigned slot, unsigned pin) const {
    if (pin < 1 || pin > 4) pin = 1;
    return cfg_.intx_spi_base + (slot + pin - 1) % 4;
}

std::optional<unsigned> PciHost::free_slot() const {
    std::lock_guard lk(mu_);
    for (unsigned s = 0; s < kSlots; ++s)
        if (!slots_[s]) return s;
    return std::nullopt;
}

Result<void> PciHost::attach(unsigned slot, std::shared_ptr<PciTransport> fn) {
    if (slot >= kSlots || !fn) return make_error(std::errc::invalid_argument, fmt::format("PCI slot {} invalid", slot));
    std::lock_guard lk(mu_);
    if (slots_[slot]) return make_error(std::errc::file_exists, fmt::format("PCI slot {} is taken", slot));
    slots_[slot] = std::move(fn);
    return ok();
}

std::shared_ptr<PciTransport> PciHost::function(unsigned slot) const {
    if (slot >= kSlots) return nullptr;
    std::lock_guard lk(mu_);
    return slots_[slot];
}

Result<std::shared_ptr<PciTransport>> PciHost::add_device(std::shared_ptr<Device> device, TransportEnv env,
                                                          xen::DeviceModel& dm, xen::DomId domid, PciOptions opts) {
    auto slot = free_slot();
    if (!slot) return make_error(std::errc::no_space_on_device, "PCI host: all 32 slots are taken");
    PciInterrupts irqs;
    irqs.intx = make_spi_line(dm, domid, intx_spi(*slot, 1));
    auto fn = PciTransport::create(std::move(device), std::move(env), std::move(irqs), opts);
    XV_TRY(attach(*slot, fn));
    return fn;
}

std::shared_ptr<MmioRegion> PciHost::ecam_region() { return ecam_; }
std::shared_ptr<MmioRegion> PciHost::mmio_region() { return window_; }

void PciHost::quiesce(std::function<void()> done) {
    std::vector<std::shared_ptr<PciTransport>> fns;
    {
        std::lock_guard lk(mu_);
        for (auto& f : slots_)
            if (f) fns.push_back(f);
    }
    if (fns.empty()) {
        done();
        return;
    }
    auto left = std::make_shared<std::atomic<std::size_t>>(fns.size());
    auto shared_done = std::make_shared<std::function<void()>>(std::move(done));
    for (auto& f : fns)
        f->quiesce([left, shared_done] {
            if (left->fetch_sub(1) == 1) (*shared_done)();
        });
}

}  // namespace xv::transport
