// SPDX-License-Identifier: GPL-2.0-only
#include "discovery.h"

#include <cerrno>
#include <charconv>

namespace xv::daemon {

namespace {

constexpr xen::DomId kMaxGuestDomId = 0x7fef;  // DOMID_FIRST_RESERVED - 1
constexpr std::uint64_t kFirstSpi = 32;         // Arm GIC: NR_LOCAL_IRQS
constexpr std::uint64_t kLastSpi = 1019;        // Arm GIC: 1020..1023 are special INTIDs

std::string home(xen::DomId d) { return "/local/domain/" + std::to_string(d); }

Error bad(const std::string& path, const std::string& key, const std::string& why) {
    return make_error(std::errc::invalid_argument, path + "/" + key + ": " + why);
}

/// A value read from xenstore as it may appear in a log line or an error
/// node: printable ASCII, at most 64 characters (a 4 KiB hostile value
/// would not even fit the error node it is reported in).
std::string quoted(const std::string& v) {
    std::string s = v.substr(0, 64);
    for (char& c : s)
        if (c < 0x20 || c > 0x7e) c = '?';
    return "'" + s + (v.size() > 64 ? "'..." : "'");
}

/// Reads a key; nullopt when absent.
std::optional<std::string> read_opt(xen::XenStore& xs, const std::string& path) {
    auto r = xs.read(path);
    if (!r) return std::nullopt;
    return std::move(r).value();
}

}  // namespace

const char* kind_name(BackendKind k) { return k == BackendKind::Virtio ? "virtio" : "virtio_disk"; }

std::string AnnouncedDevice::key() const {
    return std::string(kind_name(kind)) + "/" + std::to_string(frontend) + "/" + std::to_string(devid);
}

std::optional<std::uint64_t> parse_xs_uint(const std::string& s, std::uint64_t max) {
    // xen-facts §3.2: libxl writes `base` as "%#"PRIx64 for virtio and as
    // decimal for 4.17's virtio_disk; accept both, nothing else.
    if (s.empty() || s.size() > 20) return std::nullopt;
    int base = 10;
    std::string_view digits(s);
    if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
        base = 16;
        digits.remove_prefix(2);
    }
    std::uint64_t v = 0;
    auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v, base);
    if (ec != std::errc() || ptr != digits.data() + digits.size()) return std::nullopt;
    if (v > max) return std::nullopt;
    return v;
}

Result<AnnouncedDevice> read_announced_device(xen::XenStore& xs, BackendKind kind, xen::DomId self,
                                              xen::DomId frontend, unsigned devid) {
    AnnouncedDevice d;
    d.kind = kind;
    d.frontend = frontend;
    d.devid = devid;
    d.backend_path = home(self) + "/backend/" + kind_name(kind) + "/" + std::to_string(frontend) + "/" +
                     std::to_string(devid);
    const std::string& p = d.backend_path;

    auto need = [&](const char* key) -> Result<std::string> {
        auto r = xs.read(p + "/" + key);
        // A key that is not there is the device's fault; xenstore failing
        // to answer is not (the scan as a whole failed).
        if (!r && r.error().code != std::errc::no_such_file_or_directory)
            return Error{r.error().code, p + "/" + key + ": " + r.error().message};
        if (!r) return bad(p, key, "missing (" + r.error().describe() + ")");
        if (r.value().size() > 4096) return bad(p, key, "value too long");
        return std::move(r).value();
    };

    // frontend-id must agree with the directory it is listed under.
    {
        auto v = need("frontend-id");
        if (!v) return std::move(v).error();
        auto id = parse_xs_uint(v.value(), kMaxGuestDomId);
        if (!id || *id != frontend) return bad(p, "frontend-id", quoted(v.value()) + " does not match " + std::to_string(frontend));
    }
    {
        auto v = need("frontend");
        if (!v) return std::move(v).error();
        d.frontend_path = v.value();
        const std::string expect = home(frontend) + "/device/";
        if (d.frontend_path.rfind(expect, 0) != 0)
            return bad(p, "frontend", quoted(d.frontend_path) + " is not under " + expect);
    }
    {
        auto v = need("state");
        if (!v) return std::move(v).error();
        auto s = parse_xs_uint(v.value(), 8);
        if (!s) return bad(p, "state", quoted(v.value()) + " is not a XenbusState");
        d.state = int(*s);
    }
    if (auto v = read_opt(xs, p + "/online")) d.online = (*v == "1");
    {
        auto v = need("base");
        if (!v) return std::move(v).error();
        // A 48-bit guest-physical address, 4-byte aligned (register window).
        auto b = parse_xs_uint(v.value(), (1ULL << 48) - 1);
        if (!b || *b == 0 || (*b & 3) != 0)
            return bad(p, "base", quoted(v.value()) + " is not a 4-byte aligned guest-physical address");
        d.base = *b;
    }
    {
        auto v = need("irq");
        if (!v) return std::move(v).error();
        // The line is raised with XEN_DMOP_set_irq_level, which takes Arm
        // SPIs only: 32..1019 (xen-facts §3.3; xen/arch/arm/dm.c checks
        // irq >= NR_LOCAL_IRQS). 0..15 are SGIs and 16..31 PPIs (GIC
        // architecture): a device announced there could never interrupt,
        // or would alias a per-CPU line of the guest.
        auto i = parse_xs_uint(v.value(), kLastSpi);
        if (!i) return bad(p, "irq", quoted(v.value()) + " is not an interrupt number (32..1019)");
        if (*i < kFirstSpi)
            return bad(p, "irq", quoted(v.value()) + " is an SGI/PPI (0..31), not an SPI (32..1019)");
        d.irq = std::uint32_t(*i);
    }
    if (auto v = read_opt(xs, p + "/transport")) {
        if (*v != "mmio" && *v != "pci") return bad(p, "transport", quoted(*v) + " is neither mmio nor pci");
        d.transport = *v;
    } else {
        d.transport = "mmio";
    }
    if (auto v = read_opt(xs, p + "/grant_usage")) {
        if (*v != "0" && *v != "1") return bad(p, "grant_usage", quoted(*v) + " is neither 0 nor 1");
        d.grant_usage = (*v == "1");
    } else {
        // libxl's default: grants exactly when the backend is not Dom0
        // (lab-notes: xl 4.20; 4.17 virtio_disk has no key at all).
        d.grant_usage = self != 0;
    }

    if (kind == BackendKind::Virtio) {
        auto v = need("type");
        if (!v) return std::move(v).error();
        // "virtio,device" (generic) or "virtio,device<N>", N a virtio device
        // id (virtio 1.2 §5: at most a few dozen; three digits is plenty).
        const std::string& t = v.value();
        const std::string id = t.size() > 13 ? t.substr(13) : std::string();
        if (t.rfind("virtio,device", 0) != 0 || id.size() > 3 || id.find_first_not_of("0123456789") != std::string::npos)
            return bad(p, "type", quoted(t) + " is not a virtio,device<N> compatible");
        d.type = v.value();
    } else {
        auto v = need("params");
        if (!v) return std::move(v).error();
        if (v.value().empty() || v.value()[0] != '/')
            return bad(p, "params", quoted(v.value()) + " is not an absolute path");
        d.params = v.value();
        d.type = "virtio,device2";
        if (auto m = read_opt(xs, p + "/mode")) {
            if (*m != "w" && *m != "r") return bad(p, "mode", quoted(*m) + " is neither w nor r");
            d.writable = (*m == "w");
        }
        if (auto de = read_opt(xs, p + "/discard-enable")) d.discard = (*de == "1");
    }
    return d;
}

ScanResult scan_announced_devices(xen::XenStore& xs, xen::DomId self, std::optional<xen::DomId> only_frontend) {
    ScanResult out;
    for (BackendKind kind : {BackendKind::Virtio, BackendKind::VirtioDisk}) {
        const std::string base = home(self) + "/backend/" + kind_name(kind);
        auto fes = xs.directory(base);
        if (!fes) {
            // ENOENT: nothing announced of this kind.
            if (fes.error().code != std::errc::no_such_file_or_directory) out.failed = fes.error();
            continue;
        }
        for (const auto& fe_name : fes.value()) {
            // Canonical decimal only: "01" or "00" would name the same
            // domain (and device) as "1" / "0" a second time, and the keys
            // are then read from the canonical path anyway.
            auto fe = parse_xs_uint(fe_name, kMaxGuestDomId);
            if (!fe || fe_name != std::to_string(*fe)) {
                out.errors.emplace(base + "/" + fe_name,
                                   bad(base, fe_name, "not a frontend domid"));
                continue;
            }
            if (only_frontend && *only_frontend != *fe) continue;
            auto devs = xs.directory(base + "/" + fe_name);
            if (!devs) {
                if (devs.error().code != std::errc::no_such_file_or_directory) out.failed = devs.error();
                continue;
            }
            for (const auto& dev_name : devs.value()) {
                auto devid = parse_xs_uint(dev_name, UINT32_MAX);
                const std::string path = base + "/" + fe_name + "/" + dev_name;
                if (!devid || dev_name != std::to_string(*devid)) {
                    out.errors.emplace(path, make_error(std::errc::invalid_argument,
                                                        "dom" + fe_name + ": " + path + ": not a device id"));
                    continue;
                }
                auto d = read_announced_device(xs, kind, self, xen::DomId(*fe), unsigned(*devid));
                if (d)
                    out.devices.push_back(std::move(d).value());
                else if (d.error().code == std::errc::invalid_argument)
                    // Named by guest and device, for the log line and the error node.
                    out.errors.emplace(path, Error{d.error().code, "dom" + fe_name + " " + kind_name(kind) +
                                                                       " device " + dev_name + ": " +
                                                                       d.error().message});
                else
                    out.failed = std::move(d).error();
            }
        }
    }
    return out;
}

Result<void> write_device_error(xen::XenStore& xs, xen::DomId self, const AnnouncedDevice& dev,
                                const std::string& message) {
    return write_backend_error(xs, self, dev.backend_path, message);
}

Result<void> write_backend_error(xen::XenStore& xs, xen::DomId self, const std::string& backend_path,
                                 const std::string& message) {
    XV_TRY(xs.write(backend_path + "/error", message));
    const std::string prefix = home(self) + "/";
    if (backend_path.rfind(prefix, 0) != 0) return ok();
    std::string rel = backend_path.substr(prefix.size());
    return xs.write(home(self) + "/error/" + rel + "/error", message);
}

Result<void> write_backend_state(xen::XenStore& xs, const AnnouncedDevice& dev, xen::XenbusState state) {
    return xs.write(dev.backend_path + "/state", std::to_string(static_cast<int>(state)));
}

}  // namespace xv::daemon
