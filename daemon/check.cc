// SPDX-License-Identifier: GPL-2.0-only
#include "check.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <ostream>

namespace xv::daemon {

namespace {

std::string dom(xen::DomId d) { return "dom" + std::to_string(d); }

/// A guest name as read from xenstore: printable, bounded, else empty.
std::string sane_name(const std::string& s) {
    if (s.empty() || s.size() > 255) return {};
    for (char c : s)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return {};
    return s;
}

std::string pad(const std::string& s, std::size_t w) { return s.size() >= w ? s : s + std::string(w - s.size(), ' '); }

}  // namespace

HostFacts host_facts(xen::Hypervisor* hv) {
    HostFacts h;
    if (!hv) return h;
    auto self = hv->self_domid();
    if (!self) return h;
    h.xen_reachable = true;
    h.domid = self.value();
    // Xen makes domain 0 the Control Domain (is_privileged) unless a
    // different layout was built (dom0less, late hardware domain); the
    // configuration's [[domain]] roles say so then.
    h.is_control_domain = self.value() == 0;
    if (auto dc = hv->open_domain_control()) {
        h.xsm = dc.value()->xsm_mode();
        if (auto info = dc.value()->info(self.value())) h.target = info.value().target;
    }
    // A driver domain may not be allowed to query even itself through
    // domctl; the key `xen-virtiod attach` writes says the same.
    if (!h.target && self.value() != 0)
        if (auto xs = hv->open_xenstore())
            if (auto t = xs.value()->read(xs.value()->domain_path(self.value()) + "/target"))
                if (auto n = parse_xs_uint(t.value(), 0x7fef)) h.target = xen::DomId(*n);
    h.workers_restrictable = true;  // every worker calls restrict_all for its one guest (R5)
    return h;
}

std::vector<GuestFacts> guests_from_announced(const std::vector<AnnouncedDevice>& devices, const Config& config,
                                              xen::XenStore* xs) {
    std::vector<GuestFacts> out;
    std::map<xen::DomId, std::size_t> by_fe;
    std::map<std::pair<xen::DomId, int>, unsigned> next_index;  // (fe, type) -> next index
    for (const auto& dev : devices) {
        auto [it, inserted] = by_fe.emplace(dev.frontend, out.size());
        if (inserted) {
            GuestFacts g;
            g.domid = dev.frontend;
            g.source = FactsSource::Xenstore;
            if (xs)
                if (auto n = xs->read("/local/domain/" + std::to_string(dev.frontend) + "/name"))
                    g.name = sane_name(n.value());
            out.push_back(std::move(g));
        }
        GuestFacts& g = out[it->second];
        DeviceFacts f;
        f.type = type_from_compatible(dev.type);
        f.key = dev.key();
        f.xs_path = dev.backend_path;
        f.transport = dev.transport == "pci" ? Transport::Pci : Transport::Mmio;
        f.grant_usage = dev.grant_usage;
        const DeviceEntry* cfg = nullptr;
        if (f.type) {
            f.index = next_index[{dev.frontend, int(*f.type)}]++;
            cfg = config.find_device(g.domid, g.name, *f.type, f.index);
        }
        f.nonblocking = cfg ? cfg->nonblocking : f.transport == Transport::Pci;
        if (cfg && cfg->grants_explicit) {
            if (!cfg->grants) {
                f.grant_usage = false;
            } else if (!f.grant_usage && xs && !xs->read(dev.backend_path + "/grant_usage")) {
                // lab-notes "How xl 4.17 describes a virtio disk": no
                // grant_usage key; a guest kernel that forces grants uses
                // them anyway, which the operator states with grants = true.
                f.grant_usage = true;
            }
        }
        g.devices.push_back(std::move(f));
    }
    return out;
}

void add_configured_pci_devices(GuestFacts& guest, xen::DomId domid, const Config& config) {
    for (const DeviceEntry* e : config.devices_of(domid, guest.name)) {
        if (e->transport != Transport::Pci) continue;
        DeviceFacts d;
        d.type = e->type;
        d.index = e->index;
        d.transport = Transport::Pci;
        d.grant_usage = e->grants;
        d.nonblocking = e->nonblocking;
        d.key = "config/" + e->name();
        guest.devices.push_back(std::move(d));
    }
}

CheckReport run_check(const Config& config, const std::string& config_path, xen::Hypervisor* hv) {
    CheckReport r;
    r.config_path = config_path;
    r.strict = config.daemon.strict;
    r.host = host_facts(hv);
    if (hv && r.host.domid) {
        if (auto xs = hv->open_xenstore()) {
            ScanResult scan = scan_announced_devices(*xs.value(), *r.host.domid);
            for (auto& [path, e] : scan.errors) r.xs_errors.emplace_back(path, e.describe());
            r.guests = guests_from_announced(scan.devices, config, xs.value().get());
            // A guest found in xenstore replaces its configuration-only facts
            // in evaluate(): its configured virtio-pci devices (which xenstore
            // never announces) are added here, as the daemon's start does
            // (GuestManager::guest_facts), so `check` and `serve` decide alike.
            for (GuestFacts& g : r.guests) {
                if (g.domid) add_configured_pci_devices(g, *g.domid, config);
            }
        } else {
            r.xs_errors.emplace_back("xenstore", xs.error().describe());
        }
    }
    r.verdicts = evaluate(config, r.guests, r.host);
    return r;
}

std::string render_table(const CheckReport& report) {
    const char* head[5] = {"RULE", "LEVEL", "DOMAIN", "DEVICE", "SEED SECTION"};
    std::size_t w[5];
    for (int i = 0; i < 5; ++i) w[i] = std::string(head[i]).size();
    for (const auto& v : report.verdicts.items) {
        w[0] = std::max(w[0], v.rule.size());
        w[1] = std::max(w[1], std::string(to_string(v.level)).size());
        w[2] = std::max(w[2], v.domain.size());
        w[3] = std::max(w[3], v.device.size());
        w[4] = std::max(w[4], v.section.size());
    }
    std::string s = "xen-virtiod check: " + report.config_path + (report.strict ? " (strict)" : "") + "\n";
    const auto& h = report.host;
    s += "host: " + (h.domid ? dom(*h.domid) : std::string("Xen not reachable")) +
         ", xsm " + xsm_name(h.xsm) +
         (h.is_control_domain ? (*h.is_control_domain ? ", control domain" : ", not the control domain") : "") +
         (h.target ? ", target " + dom(*h.target) : "") + "\n\n";
    for (int i = 0; i < 5; ++i) s += pad(head[i], w[i]) + "  ";
    s += "MESSAGE\n";
    for (const auto& v : report.verdicts.items) {
        s += pad(v.rule, w[0]) + "  " + pad(to_string(v.level), w[1]) + "  " + pad(v.domain, w[2]) + "  " +
             pad(v.device.empty() ? "-" : v.device, w[3]) + "  " + pad(v.section, w[4]) + "  " + v.message + "\n";
    }
    for (const auto& [path, why] : report.xs_errors) s += "xenstore: " + path + ": " + why + "\n";
    const auto& vs = report.verdicts;
    s += "\nresult: ";
    s += vs.refuses_start() ? "would refuse to start" : "would start";
    s += " (" + std::to_string(vs.count(Level::Refuse)) + " error-refuse, " +
         std::to_string(vs.count(Level::DeviceRefused)) + " device-refused, " +
         std::to_string(vs.count(Level::Warning)) + " warning, " + std::to_string(vs.count(Level::Ok)) + " ok)\n";
    return s;
}

std::string render_json(const CheckReport& report) {
    using J = nlohmann::ordered_json;
    J j;
    j["config"] = report.config_path;
    j["strict"] = report.strict;
    j["exit_status"] = report.exit_status();
    j["would_start"] = !report.verdicts.refuses_start();
    const auto& h = report.host;
    J host;
    host["domid"] = h.domid ? J(*h.domid) : J(nullptr);
    host["xen_reachable"] = h.xen_reachable;
    host["control_domain"] = h.is_control_domain ? J(*h.is_control_domain) : J(nullptr);
    host["xsm"] = xsm_name(h.xsm);
    host["target"] = h.target ? J(*h.target) : J(nullptr);
    j["host"] = host;
    J arr = J::array();
    for (const auto& v : report.verdicts.items) {
        J o;
        o["rule"] = v.rule;
        o["section"] = v.section;
        o["level"] = to_string(v.level);
        o["domid"] = v.domid ? J(*v.domid) : J(nullptr);
        o["domain"] = v.domain;
        o["device"] = v.device.empty() ? J(nullptr) : J(v.device);
        o["message"] = v.message;
        arr.push_back(std::move(o));
    }
    j["verdicts"] = std::move(arr);
    J errs = J::array();
    for (const auto& [path, why] : report.xs_errors) errs.push_back(J{{"path", path}, {"message", why}});
    j["xenstore_errors"] = std::move(errs);
    const auto& vs = report.verdicts;
    j["summary"] = J{{"ok", vs.count(Level::Ok)},
                     {"warning", vs.count(Level::Warning)},
                     {"device_refused", vs.count(Level::DeviceRefused)},
                     {"error_refuse", vs.count(Level::Refuse)}};
    // Strings from xenstore may hold invalid UTF-8: replace, never throw.
    return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

std::vector<std::string> render_log_lines(const Verdicts& verdicts) {
    std::vector<std::string> out;
    out.reserve(verdicts.items.size());
    for (const auto& v : verdicts.items) {
        std::string s = "policy " + v.rule + " " + to_string(v.level) + " " + v.domain;
        if (!v.device.empty()) s += " " + v.device;
        s += " [" + v.section + "]: " + v.message;
        out.push_back(std::move(s));
    }
    return out;
}

void log_verdicts(const Verdicts& verdicts) {
    auto lines = render_log_lines(verdicts);
    for (std::size_t i = 0; i < lines.size(); ++i) {
        switch (verdicts.items[i].level) {
            case Level::Ok: spdlog::info("{}", lines[i]); break;
            case Level::Warning:
            case Level::DeviceRefused: spdlog::warn("{}", lines[i]); break;
            case Level::Refuse: spdlog::error("{}", lines[i]); break;
        }
    }
}

int check_command(const std::string& config_path, bool json, xen::Hypervisor* hv, std::ostream& out,
                  std::ostream& err) {
    auto cfg = load_config(config_path);
    if (!cfg) {
        err << "xen-virtiod check: " << cfg.error().describe() << "\n";
        if (json) {
            nlohmann::ordered_json j;
            j["config"] = config_path;
            j["exit_status"] = 1;
            j["error"] = cfg.error().describe();
            out << j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
        }
        return 1;
    }
    CheckReport report = run_check(cfg.value(), config_path, hv);
    out << (json ? render_json(report) : render_table(report));
    return report.exit_status();
}

}  // namespace xv::daemon
