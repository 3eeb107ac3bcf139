// SPDX-License-Identifier: GPL-2.0-only
#include "attach.h"

#include <chrono>
#include <optional>
#include <ostream>
#include <thread>
#include <tuple>

#include "discovery.h"

namespace xv::daemon {

namespace {

constexpr int kOk = 0, kUsage = 1, kXen = 3;

/// Resolves "5" or "guest1" through xenstore names.
std::optional<xen::DomId> resolve(xen::XenStore& xs, const std::string& s) {
    if (s.empty()) return std::nullopt;
    if (s.find_first_not_of("0123456789") == std::string::npos) {
        if (auto n = parse_xs_uint(s, 0x7fef)) return xen::DomId(*n);
        return std::nullopt;
    }
    auto list = xs.directory("/local/domain");
    if (!list) return std::nullopt;
    for (const auto& id : list.value()) {
        auto nm = xs.read("/local/domain/" + id + "/name");
        auto n = parse_xs_uint(id, 0x7fef);
        if (nm && n && nm.value() == s) return xen::DomId(*n);
    }
    return std::nullopt;
}

std::string dom(xen::DomId d) { return "dom" + std::to_string(d); }

}  // namespace

int attach_command(const AttachOptions& opts, xen::Hypervisor& hv, std::ostream& out, std::ostream& err) {
    auto xs = hv.open_xenstore();
    if (!xs) {
        err << "xen-virtiod attach: " << xs.error().describe() << "\n";
        return kXen;
    }
    auto dc = hv.open_domain_control();
    if (!dc) {
        err << "xen-virtiod attach: " << dc.error().describe() << "\n";
        return kXen;
    }
    auto be = resolve(*xs.value(), opts.backend);
    auto guest = resolve(*xs.value(), opts.guest);
    for (auto [id, text, what] : {std::tuple{be, opts.backend, "driver domain"}, std::tuple{guest, opts.guest, "guest"}})
        if (!id) {
            err << "xen-virtiod attach: " << what << " '" << text
                << "' does not exist (neither a domid nor a domain name in xenstore)\n";
            return kUsage;
        }
    if (*be == *guest) {
        err << "xen-virtiod attach: the driver domain and the guest are the same domain (" << dom(*be) << ")\n";
        return kUsage;
    }
    if (*be == 0 || *guest == 0) {
        err << "xen-virtiod attach: " << (*be == 0 ? "dom0 already has device-model privilege over every guest; attach "
                                                     "is for a backend in a driver domain"
                                                   : "dom0 cannot be the guest of a driver domain")
            << "\n";
        return kUsage;
    }

    // lab-notes "A backend in a driver domain" 1: SILO refuses event
    // channels and grant maps between two DomUs.
    switch (dc.value()->xsm_mode()) {
        case xen::XsmMode::Silo:
            err << "xen-virtiod attach: Xen runs XSM SILO, which refuses event channels and grant maps between two "
                   "DomUs: driver domain "
                << dom(*be) << " could not serve " << dom(*guest)
                << " (its ioreq server's event channels fail with EPERM). Boot Xen with xsm=dummy (Xen command line; "
                   "on Debian GRUB_CMDLINE_XEN_DEFAULT=\"xsm=dummy\"), or with a FLASK policy that allows it; under "
                   "SILO only the control domain can be a backend.\n";
            return kXen;
        case xen::XsmMode::Flask:
            err << "xen-virtiod attach: note: Xen runs XSM FLASK: its policy must allow " << dom(*be)
                << " device-model operations, event channels and grant maps with " << dom(*guest) << "\n";
            break;
        case xen::XsmMode::Unknown:
            err << "xen-virtiod attach: note: Xen's XSM mode is unknown; under SILO the driver domain will fail to "
                   "create its ioreq server (EPERM)\n";
            break;
        case xen::XsmMode::Dummy: break;
    }

    auto gi = dc.value()->info(*guest);
    if (!gi) {
        err << "xen-virtiod attach: guest " << dom(*guest) << ": " << gi.error().describe() << "\n";
        return gi.error().code == std::errc::no_such_process ? kUsage : kXen;
    }
    if (gi.value().dying) {
        err << "xen-virtiod attach: guest " << dom(*guest) << " is being destroyed\n";
        return kUsage;
    }
    if (!gi.value().paused) {
        err << "xen-virtiod attach: guest " << dom(*guest)
            << " is running: attach it while it is paused, so that its backend is ready before it boots: "
               "`xl create -p guest.cfg`, `xen-virtiod attach --backend-domain "
            << opts.backend << " --guest " << opts.guest << "`, `xl unpause " << opts.guest << "`\n";
        return kUsage;
    }
    auto bi = dc.value()->info(*be);
    if (!bi) {
        err << "xen-virtiod attach: driver domain " << dom(*be) << ": " << bi.error().describe() << "\n";
        return bi.error().code == std::errc::no_such_process ? kUsage : kXen;
    }
    const std::string key = "/local/domain/" + std::to_string(*be) + "/target";
    // Xen keeps a device-model domain's target for the device-model
    // domain's whole life (xen/common/domctl.c XEN_DOMCTL_set_target: "Hold
    // reference on @e until we destroy @d"; no call undoes it).
    const char* for_life =
        "a domain has one target for its whole life: Xen keeps it, and the destroyed guest as a (null) domain, "
        "until the driver domain itself is destroyed";
    if (bi.value().target) {
        if (*bi.value().target != *guest) {
            const xen::DomId old = *bi.value().target;
            auto oi = dc.value()->info(old);
            const bool gone = (!oi && oi.error().code == std::errc::no_such_process) || (oi && oi.value().dying);
            err << "xen-virtiod attach: driver domain " << dom(*be) << " already has device-model privilege over "
                << dom(old) << (gone ? ", which was destroyed" : "") << " (" << for_life
                << "): use one driver domain per guest; to serve " << dom(*guest) << " from " << opts.backend
                << ", restart the driver domain (xl destroy " << opts.backend << "; xl create <its cfg>)"
                << (gone ? "" : " after destroying " + dom(old)) << "\n";
            return kUsage;
        }
        out << dom(*be) << " already has device-model privilege over " << dom(*guest) << "\n";
    } else if (auto r = dc.value()->set_target(*be, *guest); !r) {
        err << "xen-virtiod attach: xc_domain_set_target(" << *be << ", " << *guest << "): " << r.error().describe();
        if (r.error().code == std::errc::invalid_argument)
            err << " (Xen: " << dom(*be) << " already has a target although " << key << " does not say so; "
                << for_life << ")";
        err << "\n";
        return kXen;
    }
    // xenstored's side of the same privilege (XS_SET_TARGET, as libxl does
    // for a stub device model): the driver domain may then read the
    // guest's nodes, its name among them ([[device]] guest = "name").
    // Repeated on a retried attach; xenstored accepts it again.
    // xenstored knows the guest only once libxl has introduced it, at the
    // end of the domain build, after its name appeared; until then
    // XS_SET_TARGET answers ENOENT or EINVAL (xenstored
    // find_connected_domain). attach may run that early (xl 4.17's
    // `create -p` waits for the backend before it returns), so retry for
    // up to 10 s; without it the driver domain still serves the guest, it
    // only cannot read the guest's nodes (its name among them).
    for (int i = 0;; ++i) {
        auto r = xs.value()->set_target(*be, *guest);
        if (r) break;
        const auto c = r.error().code;
        const bool early = c == std::errc::no_such_file_or_directory || c == std::errc::invalid_argument;
        if (!early || i >= 100) {
            err << "xen-virtiod attach: note: xenstore set_target(" << *be << ", " << *guest
                << "): " << r.error().describe() << ": " << dom(*be) << " cannot read " << dom(*guest)
                << "'s xenstore nodes (name it by domid in the driver domain's xen-virtiod.toml)\n";
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    // The key the driver domain's privcmd reads at module load, and the
    // backend's xenstore permissions follow (lab-notes 2 and 3).
    if (auto r = xs.value()->write(key, std::to_string(*guest)); !r) {
        err << "xen-virtiod attach: write " << key << ": " << r.error().describe() << "\n";
        return kXen;
    }
    out << dom(*be) << " now has device-model privilege over " << dom(*guest) << " (" << key << " = " << *guest
        << "); unpause the guest: xl unpause " << opts.guest << "\n";
    return kOk;
}

}  // namespace xv::daemon
