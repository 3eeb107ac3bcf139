// SPDX-License-Identifier: GPL-2.0-only
// xen/sim: xenstore (permissions, transactions, watches, libxl layouts)
// and domain control (info, destroy, zombies, restrict_all).
#include <gtest/gtest.h>
#include <poll.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "xv/xen/sim.h"

namespace xv::xen::sim {
namespace {

using namespace std::chrono_literals;

std::vector<WatchEvent> drain(XenStore& xs) {
    std::vector<WatchEvent> out;
    for (;;) {
        auto e = xs.read_watch();
        if (!e || !e->has_value()) break;
        out.push_back(**e);
    }
    return out;
}

bool has_event(const std::vector<WatchEvent>& evs, const std::string& path, const std::string& token) {
    return std::any_of(evs.begin(), evs.end(),
                       [&](const WatchEvent& e) { return e.path == path && e.token == token; });
}

TEST(SimXenstore, ReadWriteMkdirRmDirectory) {
    auto hv = SimHypervisor::create();
    XenStore& xs = hv->toolstack_store();
    ASSERT_TRUE(xs.write("/a/b/c", "v1"));  // parents are created
    auto v = xs.read("/a/b/c");
    ASSERT_TRUE(v);
    EXPECT_EQ(*v, "v1");
    auto parent = xs.read("/a/b");
    ASSERT_TRUE(parent);
    EXPECT_EQ(*parent, "");
    ASSERT_TRUE(xs.mkdir("/a/d"));
    ASSERT_TRUE(xs.mkdir("/a/d"));  // idempotent
    auto dir = xs.directory("/a");
    ASSERT_TRUE(dir);
    EXPECT_EQ(*dir, (std::vector<std::string>{"b", "d"}));
    ASSERT_TRUE(xs.rm("/a/b"));
    auto gone = xs.read("/a/b/c");
    ASSERT_FALSE(gone);
    EXPECT_EQ(gone.error().code, std::errc::no_such_file_or_directory);
    EXPECT_TRUE(xs.rm("/a/b"));  // ENOENT is not an error
    EXPECT_FALSE(xs.write("/bad path", "x"));
    EXPECT_FALSE(xs.write("/a//b", "x"));
    EXPECT_FALSE(xs.write("/a/", "x"));
    EXPECT_FALSE(xs.rm("/"));
    // Domain homes exist with name and domid.
    auto name = xs.read("/local/domain/0/name");
    ASSERT_TRUE(name);
    EXPECT_EQ(*name, "Domain-0");
}

TEST(SimXenstore, PermissionsForADriverDomainConnection) {
    SimOptions o;
    o.self_domid = 3;
    auto hv = SimHypervisor::create(o);
    auto fe = hv->create_domain({"guest", 16, 1});
    ASSERT_TRUE(fe);
    XenStore& ts = hv->toolstack_store();
    auto c = hv->open_xenstore();
    ASSERT_TRUE(c);
    XenStore& xs = **c;
    // Own home: full access, relative paths resolve into it.
    ASSERT_TRUE(xs.write("data/x", "1"));
    auto abs = ts.read("/local/domain/3/data/x");
    ASSERT_TRUE(abs);
    EXPECT_EQ(*abs, "1");
    auto perms = ts.get_perms("/local/domain/3/data/x");
    ASSERT_TRUE(perms);
    EXPECT_EQ((*perms)[0].domid, 3);  // created by dom3: owned by it
    // Another domain's home: nothing.
    std::string other = "/local/domain/" + std::to_string(*fe);
    auto r = xs.read(other + "/name");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, std::errc::permission_denied);
    EXPECT_FALSE(xs.write(other + "/evil", "1"));
    EXPECT_FALSE(xs.write("/tool/x", "1"));  // root is dom0's
    // Explicit grants: read only.
    ASSERT_TRUE(ts.write(other + "/shared", "s"));
    ASSERT_TRUE(ts.set_perms(other + "/shared", {{*fe, XsPerm::None}, {3, XsPerm::Read}}));
    auto s = xs.read(other + "/shared");
    ASSERT_TRUE(s);
    EXPECT_EQ(*s, "s");
    EXPECT_FALSE(xs.write(other + "/shared", "t"));
    EXPECT_FALSE(xs.set_perms(other + "/shared", {{3, XsPerm::Both}}));  // not the owner
    // An owner may not give its node away.
    auto giveaway = xs.set_perms("data/x", {{*fe, XsPerm::Both}});
    ASSERT_FALSE(giveaway);
    EXPECT_EQ(giveaway.error().code, std::errc::operation_not_permitted);
    EXPECT_TRUE(xs.set_perms("data/x", {{3, XsPerm::Read}}));
    // Device-model target: the driver domain gets its guest's rights.
    ASSERT_TRUE(hv->set_target(3, *fe));
    EXPECT_TRUE(xs.read(other + "/name"));
}

TEST(SimXenstore, TransactionConflictIsEagain) {
    auto hv = SimHypervisor::create();
    XenStore& ts = hv->toolstack_store();
    auto c = hv->open_xenstore();
    ASSERT_TRUE(c);
    XenStore& xs = **c;
    ASSERT_TRUE(ts.write("/t/a", "0"));
    auto t = xs.transaction_start();
    ASSERT_TRUE(t);
    auto a = xs.read("/t/a", *t);
    ASSERT_TRUE(a);
    ASSERT_TRUE(xs.write("/t/b", "in-txn", *t));
    // Not visible outside before commit.
    EXPECT_FALSE(ts.read("/t/b"));
    auto inside = xs.read("/t/b", *t);
    ASSERT_TRUE(inside);
    // Someone else changes what the transaction read.
    ASSERT_TRUE(ts.write("/t/a", "1"));
    auto end = xs.transaction_end(*t);
    ASSERT_FALSE(end);
    EXPECT_EQ(end.error().code, std::errc::resource_unavailable_try_again);
    EXPECT_FALSE(ts.read("/t/b"));  // nothing applied
    // A retry commits.
    auto t2 = xs.transaction_start();
    ASSERT_TRUE(t2);
    ASSERT_TRUE(xs.read("/t/a", *t2));
    ASSERT_TRUE(xs.write("/t/b", "in-txn", *t2));
    ASSERT_TRUE(xs.rm("/t/a", *t2));
    ASSERT_TRUE(ts.write("/unrelated", "x"));  // does not conflict
    ASSERT_TRUE(xs.transaction_end(*t2));
    auto b = ts.read("/t/b");
    ASSERT_TRUE(b);
    EXPECT_EQ(*b, "in-txn");
    EXPECT_FALSE(ts.read("/t/a"));
    // Abort discards; unknown transactions are refused.
    auto t3 = xs.transaction_start();
    ASSERT_TRUE(t3);
    ASSERT_TRUE(xs.write("/t/c", "x", *t3));
    ASSERT_TRUE(xs.transaction_end(*t3, true));
    EXPECT_FALSE(ts.read("/t/c"));
    EXPECT_FALSE(xs.transaction_end(*t3));
    EXPECT_FALSE(xs.read("/t/b", 12345));
}

TEST(SimXenstore, WatchesFireOnRegistrationAndBelow) {
    auto hv = SimHypervisor::create();
    XenStore& ts = hv->toolstack_store();
    auto c = hv->open_xenstore();
    ASSERT_TRUE(c);
    XenStore& xs = **c;
    ASSERT_TRUE(xs.watch("/w", "tok"));
    pollfd p{xs.watch_fd(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 0), 1);
    auto first = drain(xs);
    ASSERT_EQ(first.size(), 1u);
    EXPECT_EQ(first[0].path, "/w");
    EXPECT_EQ(first[0].token, "tok");
    EXPECT_EQ(::poll(&p, 1, 0), 0);  // drained
    ASSERT_TRUE(ts.write("/w/x/y", "1"));
    ASSERT_TRUE(ts.write("/other", "1"));
    auto evs = drain(xs);
    ASSERT_EQ(evs.size(), 1u);
    EXPECT_EQ(evs[0].path, "/w/x/y");
    // Removing a parent fires watches set below it.
    ASSERT_TRUE(xs.watch("/w/x/y", "deep"));
    drain(xs);
    ASSERT_TRUE(ts.rm("/w/x"));
    evs = drain(xs);
    EXPECT_TRUE(has_event(evs, "/w/x", "tok"));
    EXPECT_TRUE(has_event(evs, "/w/x/y", "deep"));
    // Transactions fire at commit only.
    auto t = ts.transaction_start();
    ASSERT_TRUE(t);
    ASSERT_TRUE(ts.write("/w/t", "1", *t));
    EXPECT_TRUE(drain(xs).empty());
    ASSERT_TRUE(ts.transaction_end(*t));
    EXPECT_TRUE(has_event(drain(xs), "/w/t", "tok"));
    // Unwatch stops events; unknown unwatch fails.
    ASSERT_TRUE(xs.unwatch("/w", "tok"));
    ASSERT_TRUE(ts.write("/w/z", "1"));
    EXPECT_FALSE(has_event(drain(xs), "/w/z", "tok"));
    EXPECT_FALSE(xs.unwatch("/w", "tok"));
    EXPECT_FALSE(xs.watch("/w/x/y", "deep"));  // duplicate
}

TEST(SimXenstore, RelativeWatchReportsRelativePaths) {
    auto hv = SimHypervisor::create();
    auto c = hv->open_xenstore();
    ASSERT_TRUE(c);
    XenStore& xs = **c;
    ASSERT_TRUE(xs.watch("backend", "be"));
    drain(xs);
    ASSERT_TRUE(hv->toolstack_store().write("/local/domain/0/backend/virtio/1/0/state", "1"));
    auto evs = drain(xs);
    ASSERT_EQ(evs.size(), 1u);
    EXPECT_EQ(evs[0].path, "backend/virtio/1/0/state");
}

TEST(SimXenstore, WatchesNotDeliveredWithoutReadAccess) {
    SimOptions o;
    o.self_domid = 3;
    auto hv = SimHypervisor::create(o);
    auto c = hv->open_xenstore();
    ASSERT_TRUE(c);
    XenStore& xs = **c;
    ASSERT_TRUE(xs.watch("/secret", "s"));
    drain(xs);
    ASSERT_TRUE(hv->toolstack_store().write("/secret/x", "1"));  // owned by dom0, no access
    EXPECT_TRUE(drain(xs).empty());
}

TEST(SimXenstore, DomainLifecycleSpecialWatches) {
    auto hv = SimHypervisor::create();
    auto c = hv->open_xenstore();
    ASSERT_TRUE(c);
    XenStore& xs = **c;
    ASSERT_TRUE(xs.watch("@introduceDomain", "intro"));
    ASSERT_TRUE(xs.watch("@releaseDomain", "release"));
    drain(xs);
    auto id = hv->create_domain({"g", 16, 1});
    ASSERT_TRUE(id);
    auto evs = drain(xs);
    EXPECT_TRUE(has_event(evs, "@introduceDomain", "intro"));
    EXPECT_FALSE(has_event(evs, "@releaseDomain", "release"));
    std::string home = "/local/domain/" + std::to_string(*id);
    auto nm = xs.read(home + "/name");
    ASSERT_TRUE(nm);
    EXPECT_EQ(*nm, "g");
    auto did = xs.read(home + "/domid");
    ASSERT_TRUE(did);
    EXPECT_EQ(*did, std::to_string(*id));
    auto perms = xs.get_perms(home);
    ASSERT_TRUE(perms);
    EXPECT_EQ((*perms)[0].domid, *id);
    ASSERT_TRUE(hv->destroy_domain(*id));
    evs = drain(xs);
    EXPECT_TRUE(has_event(evs, "@releaseDomain", "release"));
    EXPECT_FALSE(xs.read(home + "/name"));
    EXPECT_FALSE(xs.watch("@bogus", "x"));
}

TEST(SimXenstore, LibxlVirtioDeviceLayout) {
    SimOptions o;
    o.self_domid = 2;
    auto hv = SimHypervisor::create(o);
    auto fe = hv->create_domain({"guest", 16, 1});
    ASSERT_TRUE(fe);
    VirtioDeviceSpec spec;
    spec.frontend = *fe;
    spec.backend = 2;
    spec.devid = 0;
    spec.irq = 33;
    spec.base = 0x2000000;
    ASSERT_TRUE(hv->add_virtio_device(spec));
    XenStore& ts = hv->toolstack_store();
    std::string be = "/local/domain/2/backend/virtio/" + std::to_string(*fe) + "/0";
    std::string fep = "/local/domain/" + std::to_string(*fe) + "/device/virtio/0";
    auto rd = [&](const std::string& p) {
        auto r = ts.read(p);
        return r ? *r : std::string("<missing>");
    };
    EXPECT_EQ(rd(be + "/frontend"), fep);
    EXPECT_EQ(rd(be + "/frontend-id"), std::to_string(*fe));
    EXPECT_EQ(rd(be + "/online"), "1");
    EXPECT_EQ(rd(be + "/state"), "1");
    EXPECT_EQ(rd(be + "/irq"), "33");
    EXPECT_EQ(rd(be + "/base"), "0x2000000");
    EXPECT_EQ(rd(be + "/type"), "virtio,device");
    EXPECT_EQ(rd(be + "/transport"), "mmio");
    EXPECT_EQ(rd(be + "/grant_usage"), "1");
    EXPECT_EQ(rd(fep + "/backend"), be);
    EXPECT_EQ(rd(fep + "/backend-id"), "2");
    EXPECT_EQ(rd(fep + "/state"), "1");
    auto bp = ts.get_perms(be);
    ASSERT_TRUE(bp);
    EXPECT_EQ(*bp, (std::vector<XsPerm>{{2, XsPerm::None}, {*fe, XsPerm::Read}}));
    auto fp = ts.get_perms(fep);
    ASSERT_TRUE(fp);
    EXPECT_EQ(*fp, (std::vector<XsPerm>{{*fe, XsPerm::None}, {2, XsPerm::Read}}));
    // The backend (dom2) can move its own state and read the frontend's.
    auto c = hv->open_xenstore();
    ASSERT_TRUE(c);
    EXPECT_TRUE((*c)->write(be + "/state", "2"));
    EXPECT_TRUE((*c)->read(fep + "/state"));
    EXPECT_FALSE((*c)->write(fep + "/state", "4"));
    spec.frontend = 77;  // no such domain
    EXPECT_FALSE(hv->add_virtio_device(spec));
}

TEST(SimXenstore, Xl417VirtioDiskLayout) {
    auto hv = SimHypervisor::create();
    auto fe = hv->create_domain({"guest", 16, 1});
    ASSERT_TRUE(fe);
    VirtioDiskSpec spec;
    spec.frontend = *fe;
    spec.backend = 0;
    spec.devid = 51712;
    spec.params = "/srv/guest.img";
    spec.writable = false;
    spec.base = 0x2000200;
    spec.irq = 34;
    ASSERT_TRUE(hv->add_virtio_disk(spec));
    XenStore& ts = hv->toolstack_store();
    std::string be = "/local/domain/0/backend/virtio_disk/" + std::to_string(*fe) + "/51712";
    std::string fep = "/local/domain/" + std::to_string(*fe) + "/device/virtio_disk/51712";
    auto rd = [&](const std::string& p) {
        auto r = ts.read(p);
        return r ? *r : std::string("<missing>");
    };
    EXPECT_EQ(rd(be + "/params"), "/srv/guest.img");
    EXPECT_EQ(rd(be + "/mode"), "r");
    EXPECT_EQ(rd(be + "/type"), "standalone");
    EXPECT_EQ(rd(be + "/specification"), "virtio");
    EXPECT_EQ(rd(be + "/transport"), "mmio");
    EXPECT_EQ(rd(be + "/base"), "33554944");  // decimal, as xl 4.17 writes it
    EXPECT_EQ(rd(be + "/irq"), "34");
    EXPECT_EQ(rd(be + "/state"), "1");
    EXPECT_EQ(rd(be + "/frontend-id"), std::to_string(*fe));
    EXPECT_NE(rd(be + "/discard-enable"), "<missing>");
    EXPECT_EQ(rd(fep + "/backend"), be);
    EXPECT_EQ(rd(fep + "/backend-id"), "0");
    EXPECT_EQ(rd(fep + "/state"), "1");
}

TEST(SimDomains, InfoListAndTarget) {
    auto hv = SimHypervisor::create();
    auto ctl = hv->open_domain_control();
    ASSERT_TRUE(ctl);
    auto& dc = **ctl;
    auto id = hv->create_domain({"g", 16, 3});
    ASSERT_TRUE(id);
    auto info = dc.info(*id);
    ASSERT_TRUE(info);
    EXPECT_EQ(info->max_vcpu_id, 2u);
    EXPECT_FALSE(info->dying);
    auto none = dc.info(999);
    ASSERT_FALSE(none);
    EXPECT_EQ(none.error().code, std::errc::no_such_process);
    auto l = dc.list();
    ASSERT_TRUE(l);
    EXPECT_EQ(l->size(), 2u);  // dom0 + guest
    auto drv = hv->create_domain({"drv", 16, 1});
    ASSERT_TRUE(drv);
    ASSERT_TRUE(dc.set_target(*drv, *id));
    auto second = dc.set_target(*drv, *id);
    ASSERT_FALSE(second);
    EXPECT_EQ(second.error().code, std::errc::invalid_argument);
    EXPECT_EQ(dc.info(*drv)->target, std::optional<DomId>(*id));
    // xc_domain_set_target is Xen's side only: the key and xenstored's
    // target are the toolstack's (xen-virtiod attach) to write.
    EXPECT_FALSE(hv->toolstack_store().read("/local/domain/" + std::to_string(*drv) + "/target"));
    EXPECT_EQ(dc.xsm_mode(), XsmMode::Dummy);
    auto self = hv->self_domid();
    ASSERT_TRUE(self);
    EXPECT_EQ(*self, 0);
    EXPECT_EQ(hv->name(), "sim");
}

TEST(SimDomains, DestroyWhileMappedLeavesZombieUntilUnmap) {
    auto hv = SimHypervisor::create();
    auto id = hv->create_domain({"g", 16, 1});
    ASSERT_TRUE(id);
    auto g = hv->guest(*id);
    auto dm = hv->open_device_model();
    ASSERT_TRUE(dm);
    auto srv = (*dm)->create_ioreq_server(*id);
    ASSERT_TRUE(srv);
    ASSERT_TRUE((*srv)->map_mmio(0x1000, 0x1fff));
    auto dma = g->alloc_dma(100, 0, false);
    ASSERT_TRUE(dma);
    std::memset(g->dma_ptr(*dma), 0x5a, 100);
    auto mapper = hv->open_grants();
    ASSERT_TRUE(mapper);
    GrantRef refs[] = {GrantRef(grant_dma::first_ref(*dma))};
    auto m = (*mapper)->map(*id, refs, true);
    ASSERT_TRUE(m);
    // A vCPU blocked in an access is released by the destruction.
    std::thread vcpu([&] { EXPECT_FALSE(g->mmio_read(0, 0x1000, 4)); });
    pollfd p{(*srv)->fd(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 5000), 1);
    ASSERT_TRUE(hv->destroy_domain(*id));
    vcpu.join();
    EXPECT_EQ(hv->guest(*id), nullptr);
    EXPECT_EQ(hv->zombies(), std::vector<DomId>{*id});
    auto ctl = hv->open_domain_control();
    auto info = (*ctl)->info(*id);
    ASSERT_TRUE(info);
    EXPECT_TRUE(info->dying);
    // The server is stopped; the mapping still reads the guest's data.
    EXPECT_FALSE((*srv)->serve_pending([](const IoRequest&) { return 0; }));
    EXPECT_EQ(m->data()[0], std::byte{0x5a});
    EXPECT_FALSE((*mapper)->map(*id, refs, true));  // no new maps of a dying domain
    EXPECT_FALSE(hv->destroy_domain(*id));
    m->reset();
    EXPECT_TRUE(hv->zombies().empty());
    auto after = (*ctl)->info(*id);
    ASSERT_FALSE(after);
    EXPECT_EQ(after.error().code, std::errc::no_such_process);
    srv->reset();
    auto res = hv->resources();
    EXPECT_EQ(res.ioreq_servers, 0u);
    EXPECT_EQ(res.mapped_grant_pages, 0u);
    EXPECT_EQ(res.open_handles, 3u);  // dm, mapper, ctl
}

TEST(SimDomains, DestroyWithoutMappingsIsImmediate) {
    auto hv = SimHypervisor::create();
    auto id = hv->create_domain({"g", 16, 1});
    ASSERT_TRUE(id);
    ASSERT_TRUE(hv->destroy_domain(*id));
    EXPECT_TRUE(hv->zombies().empty());
    EXPECT_FALSE(hv->destroy_domain(0));
    EXPECT_FALSE(hv->destroy_domain(999));
}

TEST(SimDomains, ADeviceModelHoldsItsDestroyedTargetUntilItIsDestroyedItself) {
    // xen/common/domctl.c XEN_DOMCTL_set_target: "Hold reference on @e
    // until we destroy @d"; and a second target is EINVAL.
    auto hv = SimHypervisor::create();
    auto drv = hv->create_domain({"drv", 16, 1});
    auto g = hv->create_domain({"g", 16, 1});
    auto g2 = hv->create_domain({"g2", 16, 1});
    ASSERT_TRUE(drv && g && g2);
    ASSERT_TRUE(hv->set_target(*drv, *g));
    ASSERT_TRUE(hv->destroy_domain(*g));
    EXPECT_EQ(hv->zombies(), std::vector<DomId>{*g});
    auto ctl = hv->open_domain_control();
    ASSERT_TRUE(ctl);
    EXPECT_EQ((*ctl)->info(*drv)->target, std::optional<DomId>(*g));
    auto again = (*ctl)->set_target(*drv, *g2);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, std::errc::invalid_argument);
    ASSERT_TRUE(hv->destroy_domain(*drv));
    EXPECT_TRUE(hv->zombies().empty());
    EXPECT_FALSE((*ctl)->info(*g));
}

TEST(SimDomains, RestrictAllSemantics) {
    auto hv = SimHypervisor::create();
    auto a = hv->create_domain({"a", 16, 1});
    auto b = hv->create_domain({"b", 16, 1});
    ASSERT_TRUE(a && b);
    auto dm = hv->open_device_model();  // opened before: restricted too
    ASSERT_TRUE(hv->restrict_all(*a));
    ASSERT_TRUE(hv->restrict_all(*a));  // same domid again: fine
    auto again = hv->restrict_all(*b);
    ASSERT_FALSE(again);
    auto ctl = hv->open_domain_control();
    EXPECT_TRUE((*ctl)->info(*a));
    auto ib = (*ctl)->info(*b);
    ASSERT_FALSE(ib);
    EXPECT_EQ(ib.error().code, std::errc::operation_not_permitted);
    auto l = (*ctl)->list();
    ASSERT_TRUE(l);
    ASSERT_EQ(l->size(), 1u);
    EXPECT_EQ((*l)[0].domid, *a);
    EXPECT_TRUE((*dm)->set_irq_level(*a, 33, true));
    auto e = (*dm)->set_irq_level(*b, 33, true);
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().code, std::errc::operation_not_permitted);
    // Grants of the other domain cannot be mapped.
    auto gb = hv->guest(*b);
    auto dma = gb->alloc_dma(10, 0, false);
    ASSERT_TRUE(dma);
    auto mapper = hv->open_grants();
    GrantRef refs[] = {GrantRef(grant_dma::first_ref(*dma))};
    auto m = (*mapper)->map(*b, refs, false);
    ASSERT_FALSE(m);
    EXPECT_EQ(m.error().code, std::errc::operation_not_permitted);
    auto ev = hv->open_event_channels();
    auto port = gb->alloc_unbound(0);
    ASSERT_TRUE(port);
    EXPECT_FALSE((*ev)->bind_interdomain(*b, *port));
}

TEST(SimDomains, LeakCountersReturnToZero) {
    auto hv = SimHypervisor::create();
    auto id = hv->create_domain({"g", 16, 2});
    ASSERT_TRUE(id);
    auto g = hv->guest(*id);
    {
        auto dm = hv->open_device_model();
        auto ev = hv->open_event_channels();
        auto gm = hv->open_grants();
        auto xs = hv->open_xenstore();
        auto srv = (*dm)->create_ioreq_server(*id);
        ASSERT_TRUE(srv);
        auto port = g->alloc_unbound(0);
        ASSERT_TRUE((*ev)->bind_interdomain(*id, *port));
        auto dma = g->alloc_dma(kPageSize, 0, false);
        GrantRef refs[] = {GrantRef(grant_dma::first_ref(*dma))};
        auto m = (*gm)->map(*id, refs, true);
        ASSERT_TRUE(m);
        auto r = hv->resources();
        EXPECT_EQ(r.ioreq_servers, 1u);
        EXPECT_EQ(r.bound_ports, 1u);
        EXPECT_EQ(r.mapped_grant_pages, 1u);
        EXPECT_EQ(r.open_handles, 4u);
        (void)m->data();
        // Destruction order: the mapping before its mapper.
        *m = GrantMapping{};
    }
    auto r = hv->resources();
    EXPECT_EQ(r.ioreq_servers, 0u);
    EXPECT_EQ(r.bound_ports, 0u);
    EXPECT_EQ(r.mapped_grant_pages, 0u);
    EXPECT_EQ(r.open_handles, 0u);
}

}  // namespace
}  // namespace xv::xen::sim
