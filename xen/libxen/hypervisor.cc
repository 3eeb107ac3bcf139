// SPDX-License-Identifier: GPL-2.0-only
// open_libxen(): the real hypervisor, after checking the device nodes.
extern "C" {  // the Xen 4.17 headers carry no extern "C" guards of their own
#include <xentoolcore.h>
#include <xentoollog.h>
}

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "libxen_impl.h"
#include "xv/log.h"

namespace xv::xen::libxen {

namespace {

void tool_vmessage(xentoollog_logger*, xentoollog_level level, int errnoval, const char* context,
                   const char* format, va_list al) {
    char buf[512];
    std::vsnprintf(buf, sizeof buf, format, al);
    spdlog::level::level_enum lvl = spdlog::level::debug;
    if (level >= XTL_ERROR) lvl = spdlog::level::warn;
    else if (level >= XTL_WARN) lvl = spdlog::level::info;
    if (errnoval >= 0)
        spdlog::log(lvl, "xen: {}: {} (errno {}: {})", context ? context : "libxen", buf, errnoval,
                    std::strerror(errnoval));
    else
        spdlog::log(lvl, "xen: {}: {}", context ? context : "libxen", buf);
}

void tool_destroy(xentoollog_logger*) {}

xentoollog_logger g_logger{tool_vmessage, nullptr, tool_destroy};

class LibxenHypervisor final : public Hypervisor {
public:
    LibxenHypervisor() : c_(std::make_shared<Counters>()) {}

    std::string name() const override { return "xen"; }

    Result<std::unique_ptr<GrantMapper>> open_grants() override { return open_gnttab(c_); }
    Result<std::unique_ptr<EventChannels>> open_event_channels() override { return open_evtchn(); }
    Result<std::unique_ptr<DeviceModel>> open_device_model() override { return open_devicemodel(c_); }
    Result<std::unique_ptr<XenStore>> open_xenstore() override { return open_xs(); }
    Result<std::unique_ptr<DomainControl>> open_domain_control() override { return open_xc(); }

    Result<DomId> self_domid() override {
        std::lock_guard lk(mu_);
        if (self_) return *self_;
        auto xs = open_xs();
        if (!xs) return Error{xs.error().code, "learn own domid: " + xs.error().message};
        // A relative path resolves under our own /local/domain/<id>.
        auto v = (*xs)->read("domid");
        if (!v) {
            // As backends do (virtio-disk, xen-vhost-frontend): no "domid"
            // node means Dom0, whose home the toolstack does not populate.
            if (v.error().code == std::errc::no_such_file_or_directory) {
                self_ = DomId(0);
                return *self_;
            }
            return Error{v.error().code, "learn own domid: " + v.error().message};
        }
        auto d = parse_domid(*v);
        if (!d) return make_error(std::errc::protocol_error, "learn own domid: xenstore \"domid\" holds \"" + *v + "\"");
        self_ = *d;
        return *self_;
    }

    Result<void> restrict_all(DomId domid) override {
        std::lock_guard lk(mu_);
        if (restricted_) {
            if (*restricted_ == domid) return ok();
            // xentoolcore.h: "If called again with a different domid, it will
            // necessarily fail."
            return errno_error(EPERM, "restrict handles to dom " + std::to_string(domid) +
                                          ": already restricted to dom " + std::to_string(*restricted_));
        }
        errno = 0;
        if (xentoolcore_restrict_all(domid) != 0)
            return call_error("xentoolcore_restrict_all", errno, "restrict handles to dom " + std::to_string(domid),
                              CallKind::ToolCore);
        restricted_ = domid;
        return ok();
    }

    BoundaryStats stats() const override {
        BoundaryStats s;
        s.grant_map_calls = c_->grant_map_calls.load();
        s.grant_pages_mapped = c_->grant_pages_mapped.load();
        s.grant_unmap_calls = c_->grant_unmap_calls.load();
        s.grant_copy_calls = c_->grant_copy_calls.load();
        s.foreign_ram_maps = 0;  // there is no code path that makes one
        s.resource_maps = c_->resource_maps.load();
        return s;
    }

private:
    std::shared_ptr<Counters> c_;
    std::mutex mu_;
    std::optional<DomId> self_;
    std::optional<DomId> restricted_;
};

}  // namespace

xentoollog_logger* tool_logger() { return &g_logger; }

}  // namespace xv::xen::libxen

namespace xv::xen {

Result<std::unique_ptr<Hypervisor>> open_libxen() {
    XV_TRY(libxen::check_nodes(libxen::system_probe()));
    return std::unique_ptr<Hypervisor>(new libxen::LibxenHypervisor());
}

bool xen_present() { return libxen::nodes_present(libxen::system_probe()); }

}  // namespace xv::xen
