// SPDX-License-Identifier: GPL-2.0-only
// xen/sim SimHypervisor: handle factory, toolstack side (domains, libxl's
// xenstore layout) and DomainControl.
#include <cerrno>
#include <cinttypes>

#include "core.h"
#include "xv/log.h"

namespace xv::xen::sim {
namespace detail {
namespace {

class DomainControlImpl final : public DomainControl {
public:
    explicit DomainControlImpl(std::shared_ptr<Core> core) : core_(std::move(core)) { ++core_->res.open_handles; }
    ~DomainControlImpl() override { --core_->res.open_handles; }

    Result<DomainInfo> info(DomId domid) override {
        std::lock_guard lk(core_->mu);
        XV_TRY(core_->check_restrict_locked(domid, std::nullopt, "domain info"));
        const Domain* d = core_->find_locked(domid);
        if (!d) return errno_error(ESRCH, "domain info: " + dom_name(domid) + " does not exist");
        return to_info(*d);
    }

    Result<std::vector<DomainInfo>> list() override {
        std::lock_guard lk(core_->mu);
        std::vector<DomainInfo> out;
        for (auto& [id, d] : core_->domains)
            if (!core_->restricted || *core_->restricted == id) out.push_back(to_info(*d));
        return out;
    }

    Result<void> set_target(DomId backend, DomId guest) override {
        {
            std::lock_guard lk(core_->mu);
            if (core_->opts.self_domid != 0)
                return errno_error(EPERM, "set target of " + dom_name(backend) + " to " + dom_name(guest) +
                                              ": only dom0 may set a target");
            XV_TRY(core_->check_restrict_locked(guest, std::nullopt, "set target"));
        }
        return core_->set_target(backend, guest);
    }

    XsmMode xsm_mode() override { return core_->opts.xsm; }

private:
    static DomainInfo to_info(const Domain& d) {
        DomainInfo i;
        i.domid = d.id;
        i.dying = d.dying;
        i.paused = d.paused;
        i.hvm = true;
        i.max_vcpu_id = d.vcpus ? d.vcpus - 1 : 0;
        i.target = d.target;
        return i;
    }

    std::shared_ptr<Core> core_;
};

class SimHypervisorImpl final : public SimHypervisor {
public:
    explicit SimHypervisorImpl(SimOptions opts) : core_(std::make_shared<Core>(std::move(opts))) {
        toolstack_ = make_xenstore(core_, 0, /*count_handle=*/false);
    }

    std::string name() const override { return "sim"; }

    Result<std::unique_ptr<GrantMapper>> open_grants() override { return make_grant_mapper(core_); }
    Result<std::unique_ptr<EventChannels>> open_event_channels() override { return make_event_channels(core_); }
    Result<std::unique_ptr<DeviceModel>> open_device_model() override { return make_device_model(core_); }
    Result<std::unique_ptr<XenStore>> open_xenstore() override {
        return make_xenstore(core_, core_->opts.self_domid, true);
    }
    Result<std::unique_ptr<DomainControl>> open_domain_control() override {
        return std::unique_ptr<DomainControl>(std::make_unique<DomainControlImpl>(core_));
    }

    Result<DomId> self_domid() override { return core_->opts.self_domid; }

    Result<void> restrict_all(DomId domid) override {
        std::lock_guard lk(core_->mu);
        // xentoolcore.h: "If called again with a different domid, it will
        // necessarily fail."
        if (core_->restricted && *core_->restricted != domid)
            return errno_error(EPERM, "restrict all handles to " + dom_name(domid) + ": already restricted to " +
                                          dom_name(*core_->restricted));
        core_->restricted = domid;
        core_->restricted_to.store(domid, std::memory_order_release);
        return ok();
    }

    BoundaryStats stats() const override {
        BoundaryStats s;
        s.grant_map_calls = core_->stats.grant_map_calls;
        s.grant_pages_mapped = core_->stats.grant_pages_mapped;
        s.grant_unmap_calls = core_->stats.grant_unmap_calls;
        s.grant_copy_calls = core_->stats.grant_copy_calls;
        s.foreign_ram_maps = 0;  // there is no API for it
        s.resource_maps = core_->stats.resource_maps;
        return s;
    }

    Result<DomId> create_domain(const DomainConfig& cfg) override { return core_->create_domain(cfg); }
    Result<void> destroy_domain(DomId domid) override { return core_->destroy_domain(domid); }

    std::shared_ptr<SimGuest> guest(DomId domid) override {
        std::shared_ptr<Domain> d;
        {
            std::lock_guard lk(core_->mu);
            auto it = core_->domains.find(domid);
            if (it == core_->domains.end() || it->second->dying || domid == 0 || !it->second->mem) return nullptr;
            d = it->second;
        }
        return make_guest(core_, std::move(d));
    }

    std::vector<DomId> zombies() const override {
        std::lock_guard lk(core_->mu);
        std::vector<DomId> out;
        for (auto& [id, d] : core_->domains)
            if (d->dying) out.push_back(id);
        return out;
    }

    Result<void> set_paused(DomId domid, bool paused) override {
        std::lock_guard lk(core_->mu);
        auto d = core_->live_locked(domid, paused ? "pause" : "unpause");
        if (!d) return std::move(d).error();
        d.value()->paused = paused;
        return ok();
    }

    Result<void> set_target(DomId device_model, DomId guest, bool xenstored) override {
        // The toolstack's whole step: Xen's target, xenstored's, the key.
        XV_TRY(core_->set_target(device_model, guest));
        if (xenstored) {
            store_set_target(*core_->store, device_model, guest);
        } else {
            XV_TRY(toolstack_->write("/local/domain/" + std::to_string(device_model) + "/target",
                                     std::to_string(guest)));
        }
        return ok();
    }

    XenStore& toolstack_store() override { return *toolstack_; }

    void set_xenstore_up(bool up) override { store_set_up(*core_->store, up); }

    Result<void> add_virtio_device(const VirtioDeviceSpec& spec) override {
        XV_TRY(check_pair(spec.frontend, spec.backend, "add virtio device"));
        std::string dev = std::to_string(spec.devid);
        std::string be = "/local/domain/" + std::to_string(spec.backend) + "/backend/virtio/" +
                         std::to_string(spec.frontend) + "/" + dev;
        std::string fe = "/local/domain/" + std::to_string(spec.frontend) + "/device/virtio/" + dev;
        // xen-facts §3.2 (libxl_virtio.c + libxl_device.c generic keys).
        std::vector<std::pair<std::string, std::string>> bkeys = {
            {"frontend", fe},
            {"frontend-id", std::to_string(spec.frontend)},
            {"online", "1"},
            {"state", "1"},
            {"irq", std::to_string(spec.irq)},
            {"base", hex(spec.base)},
            {"type", spec.type},
            {"transport", spec.transport},
            {"grant_usage", spec.grant_usage ? "1" : "0"},
        };
        std::vector<std::pair<std::string, std::string>> fkeys = {
            {"backend", be},
            {"backend-id", std::to_string(spec.backend)},
            {"state", "1"},
        };
        return write_device(spec.frontend, spec.backend, be, fe, bkeys, fkeys);
    }

    Result<void> add_virtio_disk(const VirtioDiskSpec& spec) override {
        XV_TRY(check_pair(spec.frontend, spec.backend, "add virtio disk"));
        std::string dev = std::to_string(spec.devid);
        std::string be = "/local/domain/" + std::to_string(spec.backend) + "/backend/virtio_disk/" +
                         std::to_string(spec.frontend) + "/" + dev;
        std::string fe = "/local/domain/" + std::to_string(spec.frontend) + "/device/virtio_disk/" + dev;
        // lab-notes.md "How xl 4.17 describes a virtio disk": base in DECIMAL.
        std::vector<std::pair<std::string, std::string>> bkeys = {
            {"frontend", fe},
            {"frontend-id", std::to_string(spec.frontend)},
            {"online", "1"},
            {"state", "1"},
            {"params", spec.params},
            {"mode", spec.writable ? "w" : "r"},
            {"type", "standalone"},
            {"specification", "virtio"},
            {"transport", "mmio"},
            {"base", std::to_string(spec.base)},
            {"irq", std::to_string(spec.irq)},
            {"discard-enable", "0"},
            {"grant_usage", spec.grant_usage ? "1" : "0"},
        };
        std::vector<std::pair<std::string, std::string>> fkeys = {
            {"backend", be},
            {"backend-id", std::to_string(spec.backend)},
            {"state", "1"},
        };
        return write_device(spec.frontend, spec.backend, be, fe, bkeys, fkeys);
    }

    Resources resources() const override {
        Resources r;
        r.ioreq_servers = core_->res.ioreq_servers;
        r.stale_ioreq_servers = core_->res.stale_ioreq_servers;
        r.bound_ports = core_->res.bound_ports;
        r.mapped_grant_pages = core_->res.mapped_grant_pages;
        r.open_handles = core_->res.open_handles;
        return r;
    }

private:
    Result<void> check_pair(DomId fe, DomId be, const char* what) {
        std::lock_guard lk(core_->mu);
        auto f = core_->live_locked(fe, what);
        if (!f) return std::move(f).error();
        auto b = core_->live_locked(be, what);
        if (!b) return std::move(b).error();
        return ok();
    }

    /// libxl__device_generic_add: one transaction; backend dir owned by the
    /// backend with read access for the frontend, frontend dir owned by the
    /// frontend with read access for the backend.
    Result<void> write_device(DomId fe_dom, DomId be_dom, const std::string& be, const std::string& fe,
                              const std::vector<std::pair<std::string, std::string>>& bkeys,
                              const std::vector<std::pair<std::string, std::string>>& fkeys) {
        XenStore& xs = *toolstack_;
        for (int attempt = 0; attempt < 16; ++attempt) {
            auto t = xs.transaction_start();
            if (!t) return std::move(t).error();
            auto body = [&]() -> Result<void> {
                XV_TRY(xs.rm(fe, *t));
                XV_TRY(xs.mkdir(fe, *t));
                XV_TRY(xs.set_perms(fe, {{fe_dom, XsPerm::None}, {be_dom, XsPerm::Read}}, *t));
                XV_TRY(xs.rm(be, *t));
                XV_TRY(xs.mkdir(be, *t));
                XV_TRY(xs.set_perms(be, {{be_dom, XsPerm::None}, {fe_dom, XsPerm::Read}}, *t));
                for (auto& [k, v] : fkeys) XV_TRY(xs.write(fe + "/" + k, v, *t));
                for (auto& [k, v] : bkeys) XV_TRY(xs.write(be + "/" + k, v, *t));
                return ok();
            };
            auto r = body();
            if (!r) {
                (void)xs.transaction_end(*t, true);
                return r;
            }
            auto e = xs.transaction_end(*t, false);
            if (e) return ok();
            if (e.error().code != std::errc::resource_unavailable_try_again) return e;
        }
        return errno_error(EAGAIN, "write device " + be + ": too many transaction conflicts");
    }

    std::shared_ptr<Core> core_;
    std::unique_ptr<XenStore> toolstack_;
};

}  // namespace
}  // namespace detail

std::shared_ptr<SimHypervisor> SimHypervisor::create(SimOptions opts) {
    return std::make_shared<detail::SimHypervisorImpl>(std::move(opts));
}

}  // namespace xv::xen::sim
