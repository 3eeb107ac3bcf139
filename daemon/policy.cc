// SPDX-License-Identifier: GPL-2.0-only
#include "policy.h"

#include <map>

namespace xv::daemon {

namespace {

// Seed sections (seeds/roles.rst), quoted exactly.
constexpr const char* kSecMemory = "FFI: Memory Mappings";
constexpr const char* kSecSync = "FFI: Synchronous Emulation";
constexpr const char* kSecShared = "FFI: Shared Memory and Interrupts";
constexpr const char* kSecRoles = "Roles";
constexpr const char* kSecPrivileges = "Privileges";
constexpr const char* kSecFull = "Full Privileges";
constexpr const char* kSecVirtioPriv = "VirtIO Privileges";

std::string dom(xen::DomId d) { return "dom" + std::to_string(d); }

}  // namespace

const char* xsm_name(xen::XsmMode m) {
    switch (m) {
        case xen::XsmMode::Dummy: return "dummy";
        case xen::XsmMode::Silo: return "silo";
        case xen::XsmMode::Flask: return "flask";
        case xen::XsmMode::Unknown: break;
    }
    return "unknown";
}

namespace {

class Builder {
public:
    explicit Builder(Verdicts& out) : out_(out) {}

    Verdict& add(const char* rule, const char* section, Level level, std::optional<xen::DomId> domid,
                 std::string domain, std::string message) {
        Verdict v;
        v.rule = rule;
        v.section = section;
        v.level = level;
        v.domid = domid;
        v.domain = std::move(domain);
        v.message = std::move(message);
        out_.items.push_back(std::move(v));
        return out_.items.back();
    }

private:
    Verdicts& out_;
};

bool same_guest(const GuestFacts& a, std::optional<xen::DomId> id, const std::string& name) {
    if (a.domid && id) return *a.domid == *id;
    return !a.name.empty() && a.name == name;
}

}  // namespace

const char* to_string(Level l) {
    switch (l) {
        case Level::Ok: return "ok";
        case Level::Warning: return "warning";
        case Level::DeviceRefused: return "device-refused";
        case Level::Refuse: return "error-refuse";
    }
    return "?";
}

std::string DeviceFacts::name() const {
    if (type) return std::string(to_string(*type)) + std::to_string(index);
    return "dev(" + key + ")";
}

std::string GuestFacts::label() const {
    if (domid && !name.empty()) return dom(*domid) + " (" + name + ")";
    if (domid) return dom(*domid);
    return name.empty() ? "dom?" : name;
}

bool Verdicts::refuses_start() const {
    for (const auto& v : items)
        if (v.level == Level::Refuse) return true;
    return false;
}

std::size_t Verdicts::count(Level l) const {
    std::size_t n = 0;
    for (const auto& v : items) n += v.level == l;
    return n;
}

std::vector<const Verdict*> Verdicts::refusals(std::optional<xen::DomId> domid, const std::string& device_key) const {
    std::vector<const Verdict*> out;
    for (const auto& v : items) {
        if (v.level != Level::DeviceRefused && v.level != Level::Refuse) continue;
        if (!v.domid || !domid || *v.domid != *domid) continue;
        if (v.device == "*" || (!device_key.empty() && v.device_key == device_key)) out.push_back(&v);
    }
    return out;
}

std::optional<DeviceType> type_from_compatible(const std::string& compatible) {
    if (compatible == "virtio,device1") return DeviceType::Net;
    if (compatible == "virtio,device2") return DeviceType::Blk;
    if (compatible == "virtio,device3") return DeviceType::Console;
    return std::nullopt;
}

std::vector<GuestFacts> guests_from_config(const Config& config) {
    std::vector<GuestFacts> out;
    for (const auto& d : config.devices) {
        GuestFacts* g = nullptr;
        for (auto& e : out)
            if ((d.guest_id && e.domid && *e.domid == *d.guest_id) ||
                (!d.guest_name.empty() && e.name == d.guest_name)) {
                g = &e;
                break;
            }
        if (!g) {
            out.emplace_back();
            g = &out.back();
            g->domid = d.guest_id;
            g->name = d.guest_name;
            g->source = FactsSource::Config;
        }
        DeviceFacts f;
        f.type = d.type;
        f.index = d.index;
        f.transport = d.transport;
        f.grant_usage = d.grants;
        f.nonblocking = d.nonblocking;
        f.key = "config/" + d.name();
        g->devices.push_back(std::move(f));
    }
    return out;
}

std::string xenstore_error_text(const Verdict& v) {
    std::string s = "xen-virtiod refused " + v.domain;
    if (!v.device.empty() && v.device != "*") s += " " + v.device;
    s += ": " + v.rule + " (seed \"" + v.section + "\"): " + v.message;
    return s;
}

Verdicts evaluate(const Config& config, const std::vector<GuestFacts>& guests, const HostFacts& host) {
    Verdicts out;
    Builder b(out);
    const bool strict = config.daemon.strict;
    const Level soft = strict ? Level::Refuse : Level::Warning;
    const char* soft_note = strict ? " (an error under strict = true)" : "";

    // ---- this daemon's domain ----------------------------------------------
    const DomainEntry* self = host.domid ? config.find_domain(*host.domid) : nullptr;
    RoleSet roles;
    if (host.roles) {
        roles = *host.roles;
    } else if (self) {
        roles = self->roles;
    } else if (host.is_control_domain.value_or(false) || (host.domid && *host.domid == 0)) {
        roles.control = host.is_control_domain.value_or(true);
        roles.hardware = host.domid && *host.domid == 0;
        if (roles.empty()) roles.domu = true;
    } else {
        roles.domu = host.domid.has_value();
        if (!host.domid) roles.hardware = roles.control = true;  // no Xen: assume the usual Dom0 service
    }
    const bool is_control = host.is_control_domain.value_or(roles.control);
    VmClass host_class;
    if (host.cls)
        host_class = *host.cls;
    else if (self && self->cls)
        host_class = *self->cls;
    else if (is_control)
        host_class = VmClass::Safe;  // seed "SafeVMs and UnSafeVMs": the Control Domain must be a SafeVM
    else
        host_class = config.daemon.default_class;
    const std::string host_label =
        host.domid ? "host " + dom(*host.domid) : std::string("host (no Xen)");

    // ---- R4: roles (seed "Roles", "SafeVMs and UnSafeVMs") ---------------
    {
        std::size_t before = out.items.size();
        std::vector<std::string> controls, hardwares;
        for (const auto& d : config.domains) {
            if (d.roles.control) controls.push_back(d.label());
            if (d.roles.hardware) hardwares.push_back(d.label());
            // "The Control Domain must be a SafeVM because the Control
            // Domain has enough privileges to affect the entire system."
            if (d.roles.control && d.cls == VmClass::Unsafe)
                b.add("R4", kSecRoles, Level::Refuse, d.id, d.label(),
                      "the Control Domain must be a SafeVM, but " + d.label() +
                          " is configured class = \"unsafe\" (line " + std::to_string(d.line) + ")");
            // "A DomU is a regular domain without extra privileges".
            if (d.roles.domu && (d.roles.control || d.roles.hardware))
                b.add("R4", kSecRoles, Level::Refuse, d.id, d.label(),
                      d.label() + " cannot be a DomU and also " + (d.roles.control ? "the Control" : "the Hardware") +
                          " Domain (line " + std::to_string(d.line) + ")");
        }
        auto join = [](const std::vector<std::string>& v) {
            std::string s;
            for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
            return s;
        };
        // "There can only be one Control Domain in the system."
        if (controls.size() > 1)
            b.add("R4", kSecRoles, Level::Refuse, std::nullopt, "config",
                  "there can only be one Control Domain, the configuration names " + std::to_string(controls.size()) +
                      ": " + join(controls));
        // "there can only be one Hardware Domain in the system"
        if (hardwares.size() > 1)
            b.add("R4", kSecRoles, Level::Refuse, std::nullopt, "config",
                  "there can only be one Hardware Domain, the configuration names " +
                      std::to_string(hardwares.size()) + ": " + join(hardwares));
        // What Xen says about this domain must agree with the file.
        if (host.is_control_domain && self && self->roles_explicit && *host.is_control_domain != self->roles.control)
            b.add("R4", kSecRoles, Level::Refuse, host.domid, host_label,
                  std::string("Xen reports ") + host_label.substr(5) + (*host.is_control_domain ? " is" : " is not") +
                      " the Control Domain, the configuration says roles = " + self->roles.str() + " (line " +
                      std::to_string(self->line) + ")");
        if (is_control && host.cls == VmClass::Unsafe)
            b.add("R4", kSecRoles, Level::Refuse, host.domid, host_label,
                  "this daemon runs in the Control Domain, which must be a SafeVM, but its class is unsafe");
        if (out.items.size() == before)
            b.add("R4", kSecRoles, Level::Ok, host.domid, host_label,
                  "roles consistent: " + std::to_string(controls.size()) + " Control Domain and " +
                      std::to_string(hardwares.size()) + " Hardware Domain configured; this domain: " + roles.str() +
                      ", " + to_string(host_class));
    }

    // ---- R6: a daemon in the Control Domain (seed "Full Privileges") ------
    if (is_control)
        b.add("R6", kSecFull, soft, host.domid, host_label,
              "the daemon runs in the Control Domain, which holds full privileges: guest input reaches the whole "
              "platform; prefer a Hardware Domain without control rights or a driver domain" +
                  std::string(soft_note));
    else
        b.add("R6", kSecFull, Level::Ok, host.domid, host_label, "the daemon runs outside the Control Domain");

    // ---- R3 (backend side, seed "FFI: Shared Memory and Interrupts") ------
    if (host_class == VmClass::Safe)
        b.add("R3", kSecShared, soft, host.domid, host_label,
              "VirtIO backends are recommended to run in UnsafeVMs only; this domain is a SafeVM" +
                  std::string(soft_note));
    else
        b.add("R3", kSecShared, Level::Ok, host.domid, host_label, "backend runs in an UnsafeVM");

    // ---- XSM (seed "VirtIO Privileges"; lab-notes "A backend in a driver domain")
    const bool driver_domain = !is_control;
    switch (host.xsm) {
        case xen::XsmMode::Silo:
            if (driver_domain)
                b.add("XSM", kSecVirtioPriv, Level::Warning, host.domid, host_label,
                      "Xen runs XSM SILO: only the Control Domain may use event channels and grants with DomUs, so "
                      "this driver domain cannot serve guests; boot Xen with xsm=dummy or a FLASK policy that "
                      "allows it");
            else
                b.add("XSM", kSecVirtioPriv, Level::Ok, host.domid, host_label,
                      "Xen runs XSM SILO: the Control Domain may serve DomUs");
            break;
        case xen::XsmMode::Flask:
            b.add("XSM", kSecVirtioPriv, Level::Ok, host.domid, host_label,
                  "Xen runs XSM FLASK: the policy must grant this domain device_model over its guests");
            break;
        case xen::XsmMode::Dummy:
            b.add("XSM", kSecVirtioPriv, Level::Ok, host.domid, host_label, "Xen runs XSM dummy (no XSM policy)");
            break;
        case xen::XsmMode::Unknown:
            b.add("XSM", kSecVirtioPriv, Level::Ok, host.domid, host_label,
                  host.xen_reachable ? "XSM mode unknown" : "XSM mode unknown (Xen not reachable)");
            break;
    }

    // ---- guests ------------------------------------------------------------
    std::vector<GuestFacts> all = guests;
    for (auto& g : guests_from_config(config)) {
        bool found = false;
        for (const auto& e : guests)
            if (same_guest(e, g.domid, g.name)) found = true;
        if (!found) all.push_back(std::move(g));
    }

    for (const auto& g : all) {
        const VmClass cls = g.cls ? *g.cls : config.class_of(g.domid, g.name);
        const bool configured = g.cls.has_value() || config.class_configured(g.domid, g.name);
        const std::string label = g.label();
        const bool safe = cls == VmClass::Safe;
        const std::string cls_text =
            std::string(safe ? "SafeVM" : "UnsafeVM") + (configured ? "" : " (by [daemon] default_class)");

        for (const auto& d : g.devices) {
            // R1, seed "FFI: Memory Mappings": "only UnsafeVMs can run VirtIO
            // frontends without "VirtIO with Grants"". This daemon never maps
            // guest RAM at all, so grant_usage=0 is refused for every class;
            // for a SafeVM the configuration itself is unsafe: refuse to start.
            auto& v1 = [&]() -> Verdict& {
                if (d.grant_usage)
                    return b.add("R1", kSecMemory, Level::Ok, g.domid, label,
                                 std::string(to_string(d.transport)) + ": uses \"VirtIO with Grants\"");
                if (safe)
                    return b.add("R1", kSecMemory, Level::Refuse, g.domid, label,
                                 "grant_usage=0 would need a foreign mapping of a SafeVM's memory: forbidden; "
                                 "give the guest grant_usage=1 (xl.cfg) and grants = true");
                return b.add("R1", kSecMemory, Level::DeviceRefused, g.domid, label,
                             "grant_usage=0 would need a foreign mapping of guest memory, which xen-virtiod never "
                             "makes: this device is not served; give the guest grant_usage=1 (xl.cfg)");
            }();
            v1.device = d.name();
            v1.device_key = d.key;
            v1.xs_path = d.xs_path;

            // R2, seed "FFI: Synchronous Emulation": "only UnsafeVMs can run
            // VirtIO frontends without "non-blocking VirtIO"".
            auto& v2 = [&]() -> Verdict& {
                if (d.nonblocking)
                    return b.add("R2", kSecSync, Level::Ok, g.domid, label,
                                 std::string(to_string(d.transport)) + ": non-blocking registers enabled");
                if (safe)
                    return b.add("R2", kSecSync, Level::Refuse, g.domid, label,
                                 std::string(to_string(d.transport)) +
                                     ": a SafeVM's device needs the two non-blocking registers: set "
                                     "nonblocking = true");
                return b.add("R2", kSecSync, Level::Ok, g.domid, label,
                             std::string(to_string(d.transport)) +
                                 ": synchronous emulation, allowed for an UnsafeVM");
            }();
            v2.device = d.name();
            v2.device_key = d.key;
            v2.xs_path = d.xs_path;
        }

        // R3, frontend side: "it is recommended that both VirtIO frontends
        // and backends run in UnsafeVMs only".
        if (safe)
            b.add("R3", kSecShared, soft, g.domid, label,
                  cls_text + " runs VirtIO frontends; the recommendation is UnsafeVMs only" + soft_note);
        else
            b.add("R3", kSecShared, Level::Ok, g.domid, label, cls_text + " frontend");

        // R5, seed "Privileges": only the VirtIO privileges, only over its
        // frontends: one worker restricted to this guest, caps dropped,
        // seccomp after setup.
        {
            const DomainEntry* e = config.find_guest(g.domid, g.name);
            const bool allow = e && e->allow_unrestricted;
            std::string why;
            if (!host.workers_restrictable) why = "its worker cannot restrict its Xen handles to this guest";
            if (config.daemon.seccomp == SeccompMode::Off)
                why += std::string(why.empty() ? "" : "; ") + "seccomp = \"off\"";
            Verdict* v5;
            if (why.empty())
                v5 = &b.add("R5", kSecPrivileges, Level::Ok, g.domid, label,
                            "served by a worker restricted to " + (g.domid ? dom(*g.domid) : label) +
                                ", capabilities dropped, seccomp " + to_string(config.daemon.seccomp));
            else if (!safe && allow)
                v5 = &b.add("R5", kSecPrivileges, Level::Warning, g.domid, label,
                            why + ": served anyway (allow_unrestricted = true for this UnsafeVM)");
            else
                v5 = &b.add("R5", kSecPrivileges, Level::DeviceRefused, g.domid, label,
                            why + ": the guest is not served" +
                                (safe ? std::string(" (a SafeVM is never served unrestricted)")
                                      : std::string(" (allow_unrestricted = true would accept it)")));
            v5->device = std::string(1, '*');  // not = "*": g++ 12 -O2 warns -Wrestrict falsely (GCC PR 105651)
        }

        // TARGET, seed "VirtIO Privileges": "device model hypercalls
        // targeting VirtIO frontend domains". Implicit in the Control Domain;
        // a driver domain needs `target` over the guest (one guest only).
        if (is_control) {
            b.add("TARGET", kSecVirtioPriv, Level::Ok, g.domid, label,
                  "the Control Domain has device-model privilege over every guest");
        } else if (!host.xen_reachable || !g.domid) {
            b.add("TARGET", kSecVirtioPriv, Level::Ok, g.domid, label,
                  "device-model privilege (target) not known: Xen not reachable or guest not running");
        } else if (host.target && *host.target == *g.domid) {
            b.add("TARGET", kSecVirtioPriv, Level::Ok, g.domid, label,
                  host_label.substr(5) + " has device-model privilege (target) over " + dom(*g.domid));
        } else {
            b.add("TARGET", kSecVirtioPriv, Level::Warning, g.domid, label,
                  host_label.substr(5) + " has no device-model privilege over " + dom(*g.domid) +
                      (host.target ? " (its target is " + dom(*host.target) + "; a domain has one target)"
                                   : std::string(" (no target set)")) +
                      ": ioreq server creation will fail with EPERM; from the Control Domain run "
                      "`xen-virtiod attach --backend-domain " +
                      std::to_string(host.domid.value_or(0)) + " --guest " + std::to_string(*g.domid) + "`");
        }
    }
    return out;
}

}  // namespace xv::daemon
