// SPDX-License-Identifier: GPL-2.0-only
// DomainControl on libxenctrl (xenctrl.h, Xen 4.17). Uses only calls that
// 4.18+ kept: xc_domain_getinfolist (not xc_domain_getinfo, removed in 4.18).
//
// xenctrl.h pulls in headers that need GNU C (anonymous unions in
// xen/hvm/save.h, __DECL_REG in xen/foreign/*.h) and refuse strict ISO mode;
// the project builds with -std=c++20, so lift __STRICT_ANSI__ for these
// includes only and restore it for everything after.
#ifdef __STRICT_ANSI__
#define XV_WAS_STRICT_ANSI 1
#undef __STRICT_ANSI__
#endif
extern "C" {  // the Xen 4.17 headers carry no extern "C" guards of their own
#include <xenctrl.h>
#include <xenevtchn.h>
#include <xen/version.h>
}
#ifdef XV_WAS_STRICT_ANSI
#define __STRICT_ANSI__ 1
#undef XV_WAS_STRICT_ANSI
#endif

#include <cerrno>
#include <cstring>

#include "libxen_impl.h"
#include "xv/log.h"

namespace xv::xen::libxen {
namespace {

DomainInfo to_info(const xc_domaininfo_t& d) {
    DomainInfo i;
    i.domid = DomId(d.domain);
    i.dying = (d.flags & XEN_DOMINF_dying) != 0;
    i.shutdown = (d.flags & XEN_DOMINF_shutdown) != 0;
    i.paused = (d.flags & XEN_DOMINF_paused) != 0;
    i.hvm = (d.flags & XEN_DOMINF_hvm_guest) != 0;
    i.max_vcpu_id = d.max_vcpu_id == XEN_INVALID_MAX_VCPU_ID ? 0 : d.max_vcpu_id;
    return i;
}

class XcDomainControl final : public DomainControl {
public:
    XcDomainControl(xc_interface* xch, std::unique_ptr<XenStore> xs) : xch_(xch), xs_(std::move(xs)) {}
    ~XcDomainControl() override { xc_interface_close(xch_); }

    Result<DomainInfo> info(DomId domid) override {
        if (domid >= DOMID_FIRST_RESERVED)
            return errno_error(ESRCH, "dom " + std::to_string(domid) + ": reserved domid");
        xc_domaininfo_t d{};
        errno = 0;
        int n = xc_domain_getinfolist(xch_, domid, 1, &d);
        if (n < 0)
            return call_error("xc_domain_getinfolist", errno, "info on dom " + std::to_string(domid),
                              CallKind::DomainControl);
        // getinfolist returns the first domain >= domid: check it is this one.
        if (n == 0 || d.domain != domid) return errno_error(ESRCH, "dom " + std::to_string(domid) + " does not exist");
        DomainInfo i = to_info(d);
        fill_target(i);
        return i;
    }

    Result<std::vector<DomainInfo>> list() override {
        constexpr unsigned kBatch = 256;
        std::vector<xc_domaininfo_t> buf(kBatch);
        std::vector<DomainInfo> out;
        std::uint32_t first = 0;
        while (first < DOMID_FIRST_RESERVED) {
            errno = 0;
            int n = xc_domain_getinfolist(xch_, first, kBatch, buf.data());
            if (n < 0) return call_error("xc_domain_getinfolist", errno, "list domains", CallKind::DomainControl);
            if (n == 0) break;
            for (int k = 0; k < n && k < int(kBatch); ++k) out.push_back(to_info(buf[k]));
            std::uint32_t next = std::uint32_t(buf[std::size_t(std::min<int>(n, kBatch)) - 1].domain) + 1;
            if (unsigned(n) < kBatch || next <= first) break;
            first = next;
        }
        for (auto& i : out) fill_target(i);
        return out;
    }

    Result<void> set_target(DomId backend, DomId guest) override {
        errno = 0;
        // xenctrl.h: xc_domain_set_target(xch, domid, target): the device-model
        // domain first, then the guest it may act on.
        if (xc_domain_set_target(xch_, backend, guest) != 0)
            return call_error("xc_domain_set_target", errno,
                              "give dom " + std::to_string(backend) + " device-model rights over dom " +
                                  std::to_string(guest),
                              CallKind::DomainControl);
        return ok();
    }

    XsmMode xsm_mode() override {
        // FLASK answers getenforce; dummy and SILO have no flask_op (ENOSYS).
        if (xc_flask_getenforce(xch_) >= 0) return XsmMode::Flask;
        xen_commandline_t cmdline;
        std::memset(cmdline, 0, sizeof cmdline);
        if (xc_version(xch_, XENVER_commandline, &cmdline) != 0) return XsmMode::Unknown;
        cmdline[sizeof cmdline - 1] = '\0';
        // Without "xsm=" the default depends on the build (Debian Arm: SILO),
        // which is not knowable from here.
        XsmMode m = parse_xsm_cmdline(cmdline);
        if (m == XsmMode::Unknown) m = probe_silo();
        return m;
    }

private:
    /// A DomU reads "<denied>" for Xen's command line (xsm_xen_version:
    /// XENVER_commandline is XSM_PRIV). A driver domain with a target can
    /// still tell SILO from dummy: an unbound event channel for its target
    /// (EVTCHNOP_alloc_unbound, what privcmd's IOCTL_EVTCHN_BIND_UNBOUND_PORT
    /// issues) is refused by SILO between two DomUs (xsm/silo.c
    /// silo_evtchn_unbound: EPERM) and allowed by dummy (XSM_TARGET on
    /// itself). Unknown when there is no target or the probe says neither.
    XsmMode probe_silo() {
        if (!xs_) return XsmMode::Unknown;
        auto self = xs_->read("domid");
        auto target = xs_->read("target");
        if (!self || !target) return XsmMode::Unknown;
        auto s = parse_domid(*self), t = parse_domid(*target);
        if (!s || !t || *s == 0 || *t == 0 || *s == *t) return XsmMode::Unknown;
        xenevtchn_handle* h = xenevtchn_open(nullptr, 0);
        if (!h) return XsmMode::Unknown;
        errno = 0;
        xenevtchn_port_or_error_t p = xenevtchn_bind_unbound_port(h, *t);
        const int err = errno;
        XsmMode m = XsmMode::Unknown;
        if (p >= 0) {
            (void)xenevtchn_unbind(h, evtchn_port_t(p));
            m = XsmMode::Dummy;
        } else if (err == EPERM || err == EACCES) {
            m = XsmMode::Silo;
        }
        xenevtchn_close(h);
        return m;
    }

public:

private:
    /// Xen does not report a domain's device-model target; the toolstack
    /// writes it to /local/domain/<id>/target (lab-notes.md), so read that.
    void fill_target(DomainInfo& i) {
        if (!xs_) return;
        auto v = xs_->read("/local/domain/" + std::to_string(i.domid) + "/target");
        if (v) i.target = parse_domid(*v);
    }

    xc_interface* xch_;
    std::unique_ptr<XenStore> xs_;
};

}  // namespace

Result<std::unique_ptr<DomainControl>> open_xc() {
    errno = 0;
    xc_interface* xch = xc_interface_open(tool_logger(), tool_logger(), 0);
    if (!xch) return call_error("xc_interface_open", errno, "open the Xen control interface", CallKind::DomainControl);
    // Best effort: only used to report device-model targets.
    auto xs = open_xs();
    std::unique_ptr<XenStore> store;
    if (xs) store = std::move(*xs);
    else spdlog::debug("xen: domain control without xenstore: {}", xs.error().describe());
    return std::unique_ptr<DomainControl>(new XcDomainControl(xch, std::move(store)));
}

}  // namespace xv::xen::libxen
