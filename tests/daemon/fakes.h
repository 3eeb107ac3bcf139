// SPDX-License-Identifier: GPL-2.0-only
// Small in-test fakes of the xen/ interfaces the policy code uses:
// a map-backed XenStore and a Hypervisor that hands it out.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "xv/xen/hypervisor.h"

namespace xv::daemon::testing {

/// The contents of a fake xenstore (absolute paths -> values).
struct FakeStoreData {
    std::map<std::string, std::string> nodes;

    /// Writes a value (parents are implicit).
    void set(const std::string& path, const std::string& value) { nodes[path] = value; }
};

/// A XenStore over FakeStoreData: read/write/directory/rm only.
class FakeXenStore : public xen::XenStore {
public:
    explicit FakeXenStore(std::shared_ptr<FakeStoreData> d) : d_(std::move(d)) {}

    Result<std::string> read(const std::string& path, xen::Txn = xen::kNoTxn) override {
        auto it = d_->nodes.find(path);
        if (it == d_->nodes.end()) return errno_error(ENOENT, "read " + path);
        return it->second;
    }
    Result<void> write(const std::string& path, const std::string& value, xen::Txn = xen::kNoTxn) override {
        d_->nodes[path] = value;
        return ok();
    }
    Result<void> mkdir(const std::string& path, xen::Txn = xen::kNoTxn) override {
        d_->nodes.emplace(path, "");
        return ok();
    }
    Result<void> rm(const std::string& path, xen::Txn = xen::kNoTxn) override {
        for (auto it = d_->nodes.begin(); it != d_->nodes.end();) {
            if (it->first == path || it->first.rfind(path + "/", 0) == 0)
                it = d_->nodes.erase(it);
            else
                ++it;
        }
        return ok();
    }
    Result<std::vector<std::string>> directory(const std::string& path, xen::Txn = xen::kNoTxn) override {
        std::set<std::string> kids;
        const std::string prefix = path + "/";
        for (const auto& [k, v] : d_->nodes) {
            if (k.rfind(prefix, 0) != 0) continue;
            std::string rest = k.substr(prefix.size());
            kids.insert(rest.substr(0, rest.find('/')));
        }
        if (kids.empty()) return errno_error(ENOENT, "directory " + path);
        return std::vector<std::string>(kids.begin(), kids.end());
    }
    Result<std::vector<xen::XsPerm>> get_perms(const std::string&, xen::Txn = xen::kNoTxn) override {
        return std::vector<xen::XsPerm>{};
    }
    Result<void> set_perms(const std::string&, const std::vector<xen::XsPerm>&, xen::Txn = xen::kNoTxn) override {
        return ok();
    }
    Result<xen::Txn> transaction_start() override { return xen::Txn(1); }
    Result<void> transaction_end(xen::Txn, bool = false) override { return ok(); }
    Result<void> watch(const std::string&, const std::string&) override { return ok(); }
    Result<void> unwatch(const std::string&, const std::string&) override { return ok(); }
    int watch_fd() const override { return -1; }
    Result<std::optional<xen::WatchEvent>> read_watch() override { return std::optional<xen::WatchEvent>{}; }

private:
    std::shared_ptr<FakeStoreData> d_;
};

/// DomainControl answering from fixed facts.
class FakeDomainControl : public xen::DomainControl {
public:
    FakeDomainControl(xen::DomId self, std::optional<xen::DomId> target, xen::XsmMode xsm)
        : self_(self), target_(target), xsm_(xsm) {}
    Result<xen::DomainInfo> info(xen::DomId domid) override {
        xen::DomainInfo i;
        i.domid = domid;
        if (domid == self_) i.target = target_;
        return i;
    }
    Result<std::vector<xen::DomainInfo>> list() override { return std::vector<xen::DomainInfo>{}; }
    Result<void> set_target(xen::DomId, xen::DomId) override { return ok(); }
    xen::XsmMode xsm_mode() override { return xsm_; }

private:
    xen::DomId self_;
    std::optional<xen::DomId> target_;
    xen::XsmMode xsm_;
};

/// A Hypervisor with a fake xenstore and fixed domain facts.
class FakeHypervisor : public xen::Hypervisor {
public:
    xen::DomId self = 0;
    std::optional<xen::DomId> target;
    xen::XsmMode xsm = xen::XsmMode::Dummy;
    std::shared_ptr<FakeStoreData> store = std::make_shared<FakeStoreData>();
    bool xenstore_fails = false;
    int restrict_calls = 0;
    std::optional<xen::DomId> restricted_to;
    bool restrict_fails = false;

    std::string name() const override { return "fake"; }
    Result<std::unique_ptr<xen::GrantMapper>> open_grants() override { return unsupported(); }
    Result<std::unique_ptr<xen::EventChannels>> open_event_channels() override { return unsupported(); }
    Result<std::unique_ptr<xen::DeviceModel>> open_device_model() override { return unsupported(); }
    Result<std::unique_ptr<xen::XenStore>> open_xenstore() override {
        if (xenstore_fails) return errno_error(ECONNREFUSED, "xenstore: connect");
        return std::unique_ptr<xen::XenStore>(std::make_unique<FakeXenStore>(store));
    }
    Result<std::unique_ptr<xen::DomainControl>> open_domain_control() override {
        return std::unique_ptr<xen::DomainControl>(std::make_unique<FakeDomainControl>(self, target, xsm));
    }
    Result<xen::DomId> self_domid() override { return self; }
    Result<void> restrict_all(xen::DomId domid) override {
        ++restrict_calls;
        if (restrict_fails) return errno_error(EPERM, "xentoolcore_restrict_all");
        if (restricted_to && *restricted_to != domid) return errno_error(EINVAL, "already restricted");
        restricted_to = domid;
        return ok();
    }
    xen::BoundaryStats stats() const override { return {}; }

    /// Announces a device as libxl's virtio layout does (base in hex).
    void add_virtio(xen::DomId fe, unsigned devid, const std::string& type, const std::string& transport,
                    const std::string& grant_usage, const std::string& base = "0x2000000",
                    const std::string& irq = "33") {
        const std::string p = "/local/domain/" + std::to_string(self) + "/backend/virtio/" + std::to_string(fe) +
                              "/" + std::to_string(devid);
        store->set(p + "/frontend", "/local/domain/" + std::to_string(fe) + "/device/virtio/" + std::to_string(devid));
        store->set(p + "/frontend-id", std::to_string(fe));
        store->set(p + "/online", "1");
        store->set(p + "/state", "1");
        store->set(p + "/type", type);
        store->set(p + "/transport", transport);
        if (!grant_usage.empty()) store->set(p + "/grant_usage", grant_usage);
        store->set(p + "/base", base);
        store->set(p + "/irq", irq);
    }

    /// Announces a 4.17 virtio disk (base in decimal, no grant_usage key).
    void add_virtio_disk(xen::DomId fe, unsigned devid, const std::string& params, const std::string& base,
                         const std::string& irq = "33") {
        const std::string p = "/local/domain/" + std::to_string(self) + "/backend/virtio_disk/" +
                              std::to_string(fe) + "/" + std::to_string(devid);
        store->set(p + "/frontend",
                   "/local/domain/" + std::to_string(fe) + "/device/virtio_disk/" + std::to_string(devid));
        store->set(p + "/frontend-id", std::to_string(fe));
        store->set(p + "/online", "1");
        store->set(p + "/state", "1");
        store->set(p + "/params", params);
        store->set(p + "/mode", "w");
        store->set(p + "/type", "standalone");
        store->set(p + "/specification", "virtio");
        store->set(p + "/transport", "mmio");
        store->set(p + "/base", base);
        store->set(p + "/irq", irq);
    }

    /// Names a domain in xenstore.
    void name_domain(xen::DomId d, const std::string& n) {
        store->set("/local/domain/" + std::to_string(d) + "/name", n);
    }

private:
    static Error unsupported() { return errno_error(ENOSYS, "not in this fake"); }
};

}  // namespace xv::daemon::testing
