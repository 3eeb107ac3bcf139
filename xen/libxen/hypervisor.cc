// SPDX-License-Identifier: GPL-2.0-only
// open_libxen(): the real hypervisor, after checking the device nodes.
extern "C" {  // the Xen 4.17 headers carry no extern "C" guards of their own
#include <xentoolcore.h>
#include <xentoollog.h>
}

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

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

/// What an open file descriptor refers to ("/dev/xen/gntdev", "socket:[..]").
std::string fd_target(int fd) {
    char link[64], buf[256];
    std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = ::readlink(link, buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, std::size_t(n)) : std::string();
}

/// xentoolcore_restrict_all() restricts the device-model, foreign-memory
/// and event-channel handles by ioctl, but it cannot restrict grant-table
/// and xenstore handles to one domain: for those (and for libxencall) it
/// dup2()s /dev/null over the descriptor (xentoolcore__restrict_by_dup2_null).
/// A backend that maps grants and answers xenstore cannot work like that
/// (seen on Xen 4.17: every worker lost xenstore and gntdev and stopped).
/// These are the descriptors to keep: gntdev, the xenbus device and
/// sockets (xenstored). libxencall's privcmd and hypercall-buffer
/// descriptors are not kept: a restricted worker makes no other hypercalls.
struct KeptFd {
    int fd;
    int copy;
    int fd_flags;
    std::string target;
};

std::vector<KeptFd> keep_unrestrictable_fds() {
    std::vector<KeptFd> out;
    DIR* d = ::opendir("/proc/self/fd");
    if (!d) return out;
    std::vector<int> fds;
    while (dirent* e = ::readdir(d)) {
        char* end = nullptr;
        long v = std::strtol(e->d_name, &end, 10);
        if (end && *end == '\0' && v >= 0 && v != ::dirfd(d)) fds.push_back(int(v));
    }
    ::closedir(d);
    for (int fd : fds) {
        std::string t = fd_target(fd);
        if (t != "/dev/xen/gntdev" && t != "/dev/xen/xenbus" && t.rfind("socket:", 0) != 0) continue;
        int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (copy < 0) continue;
        out.push_back({fd, copy, ::fcntl(fd, F_GETFD), std::move(t)});
    }
    return out;
}

/// Puts back the kept descriptors that were replaced by /dev/null.
void restore_fds(std::vector<KeptFd>& kept) {
    for (auto& k : kept) {
        if (fd_target(k.fd) == "/dev/null") {
            if (::dup3(k.copy, k.fd, (k.fd_flags >= 0 && (k.fd_flags & FD_CLOEXEC)) ? O_CLOEXEC : 0) < 0)
                spdlog::warn("xen: cannot restore fd {} ({}) after restricting: {}", k.fd, k.target,
                             std::strerror(errno));
            else
                spdlog::debug("xen: fd {} ({}) kept open after restricting (it cannot be restricted)", k.fd,
                              k.target);
        }
        ::close(k.copy);
    }
}

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
        auto kept = keep_unrestrictable_fds();
        errno = 0;
        int rc = xentoolcore_restrict_all(domid);
        int err = errno;
        restore_fds(kept);
        if (rc != 0)
            return call_error("xentoolcore_restrict_all", err, "restrict handles to dom " + std::to_string(domid),
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
