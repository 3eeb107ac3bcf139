// SPDX-License-Identifier: GPL-2.0-only
// xen/libxen on a machine without Xen: clear failures that name the missing
// device node and the fix, no crash, no leak; plus the pure helpers.
#include <gtest/gtest.h>

#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/hvm/ioreq.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "../../common/ioreq_slot.h"
#include "../libxen_detail.h"
#include "xv/xen/hypervisor.h"

namespace fs = std::filesystem;
using namespace xv::xen;
using namespace xv::xen::libxen;

namespace {

/// Sets (or unsets, with nullptr) an environment variable for one scope.
class EnvGuard {
public:
    EnvGuard(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) old_ = old;
        if (value) ::setenv(name, value, 1);
        else ::unsetenv(name);
    }
    ~EnvGuard() {
        if (old_) ::setenv(name_.c_str(), old_->c_str(), 1);
        else ::unsetenv(name_.c_str());
    }

private:
    std::string name_;
    std::optional<std::string> old_;
};

/// A temporary directory standing in for /dev/xen, with the named nodes as
/// plain files.
class FakeDevDir {
public:
    explicit FakeDevDir(std::initializer_list<const char*> nodes) {
        char tmpl[] = "/tmp/xv-libxen-XXXXXX";
        const char* d = ::mkdtemp(tmpl);
        if (d) path_ = d;
        for (const char* n : nodes) std::ofstream(path_ / n).put('\0');
    }
    ~FakeDevDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    std::string str() const { return path_.string(); }

private:
    fs::path path_;
};

bool real_xen_here() { return ::access("/dev/xen/privcmd", F_OK) == 0; }

bool contains(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

/// A probe over a fixed set of present nodes (full paths) -> errno.
NodeProbe fixed_probe(std::map<std::string, int> result, bool in_xen = false) {
    NodeProbe p;
    p.dev_dir = "/dev/xen";
    p.xenstored_socket = "/var/run/xenstored/socket";
    p.in_xen_domain = in_xen;
    p.probe = [result](const std::string& path) {
        auto it = result.find(path);
        return it == result.end() ? ENOENT : it->second;
    };
    return p;
}

}  // namespace

// ---------------------------------------------------------------------------
// open_libxen() / xen_present() on this machine

TEST(OpenLibxen, NoXenNamesPrivcmdAndTheDemo) {
    if (real_xen_here()) GTEST_SKIP() << "this machine has /dev/xen/privcmd";
    EnvGuard g("XV_XEN_DEV_DIR", nullptr);
    auto h = open_libxen();
    ASSERT_FALSE(h.has_value());
    const auto& e = h.error();
    EXPECT_TRUE(contains(e.message, "/dev/xen/privcmd missing")) << e.message;
    std::ifstream t("/sys/hypervisor/type");
    std::string type;
    t >> type;
    if (type == "xen") {
        EXPECT_EQ(e.code, std::errc::no_such_file_or_directory);
        EXPECT_TRUE(contains(e.message, "modprobe xen-privcmd")) << e.message;
    } else {
        EXPECT_EQ(e.code.value(), ENODEV);
        EXPECT_TRUE(contains(e.message, "not running in a Xen domain")) << e.message;
        EXPECT_TRUE(contains(e.message, "xen-virtiod demo")) << e.message;
    }
    EXPECT_FALSE(xen_present());
}

TEST(OpenLibxen, MissingGntdevIsNamedExactly) {
    FakeDevDir dir({"privcmd", "evtchn", "xenbus"});
    EnvGuard g("XV_XEN_DEV_DIR", dir.str().c_str());
    auto h = open_libxen();
    ASSERT_FALSE(h.has_value());
    const auto& m = h.error().message;
    EXPECT_EQ(h.error().code, std::errc::no_such_file_or_directory);
    EXPECT_TRUE(contains(m, dir.str() + "/gntdev missing")) << m;
    EXPECT_TRUE(contains(m, "modprobe xen-gntdev")) << m;
    EXPECT_FALSE(contains(m, "privcmd")) << m;
    EXPECT_FALSE(contains(m, "evtchn")) << m;
    EXPECT_FALSE(xen_present());
}

TEST(OpenLibxen, MissingEvtchnIsNamedBeforeGntdev) {
    FakeDevDir dir({"privcmd"});
    EnvGuard g("XV_XEN_DEV_DIR", dir.str().c_str());
    auto h = open_libxen();
    ASSERT_FALSE(h.has_value());
    const auto& m = h.error().message;
    EXPECT_TRUE(contains(m, dir.str() + "/evtchn missing")) << m;
    EXPECT_TRUE(contains(m, "modprobe xen-evtchn")) << m;
    EXPECT_FALSE(contains(m, "gntdev")) << m;
    EXPECT_FALSE(xen_present());
}

TEST(OpenLibxen, MissingPrivcmdInTempDir) {
    FakeDevDir dir({"evtchn", "gntdev", "xenbus"});
    EnvGuard g("XV_XEN_DEV_DIR", dir.str().c_str());
    auto h = open_libxen();
    ASSERT_FALSE(h.has_value());
    const auto& m = h.error().message;
    EXPECT_TRUE(contains(m, dir.str() + "/privcmd missing")) << m;
    EXPECT_FALSE(contains(m, "gntdev")) << m;
    EXPECT_FALSE(xen_present());
}

TEST(OpenLibxen, MissingXenstoreNamesBothWays) {
    FakeDevDir dir({"privcmd", "evtchn", "gntdev"});
    EnvGuard g("XV_XEN_DEV_DIR", dir.str().c_str());
    EnvGuard s("XENSTORED_PATH", (dir.str() + "/no-socket").c_str());
    auto h = open_libxen();
    ASSERT_FALSE(h.has_value());
    const auto& m = h.error().message;
    EXPECT_EQ(h.error().code, std::errc::no_such_file_or_directory);
    EXPECT_TRUE(contains(m, dir.str() + "/xenbus")) << m;
    EXPECT_TRUE(contains(m, dir.str() + "/no-socket")) << m;
    EXPECT_TRUE(contains(m, "xenstore")) << m;
    // The three nodes a backend needs are there: "looks like Xen".
    EXPECT_TRUE(xen_present());
}

TEST(OpenLibxen, AllNodesPresentThenEveryOpenFailsCleanly) {
    // The fake nodes pass the check; the libraries then open the real
    // /dev/xen nodes, which this machine lacks: every open must fail with an
    // Error naming the library call, never crash or hang.
    if (real_xen_here()) GTEST_SKIP() << "this machine has /dev/xen/privcmd";
    FakeDevDir dir({"privcmd", "evtchn", "gntdev", "xenbus"});
    EnvGuard g("XV_XEN_DEV_DIR", dir.str().c_str());
    EnvGuard s("XENSTORED_PATH", nullptr);
    auto h = open_libxen();
    ASSERT_TRUE(h.has_value()) << h.error().describe();
    auto& hv = **h;
    EXPECT_EQ(hv.name(), "xen");

    auto gr = hv.open_grants();
    ASSERT_FALSE(gr.has_value());
    EXPECT_TRUE(contains(gr.error().message, "xengnttab_open")) << gr.error().message;

    auto ev = hv.open_event_channels();
    ASSERT_FALSE(ev.has_value());
    EXPECT_TRUE(contains(ev.error().message, "xenevtchn_open")) << ev.error().message;

    auto dm = hv.open_device_model();
    ASSERT_FALSE(dm.has_value());
    EXPECT_TRUE(contains(dm.error().message, "xendevicemodel_open") ||
                contains(dm.error().message, "xenforeignmemory_open"))
        << dm.error().message;

    auto xs = hv.open_xenstore();
    ASSERT_FALSE(xs.has_value());
    EXPECT_TRUE(contains(xs.error().message, "xs_open")) << xs.error().message;

    auto dc = hv.open_domain_control();
    ASSERT_FALSE(dc.has_value());
    EXPECT_TRUE(contains(dc.error().message, "xc_interface_open")) << dc.error().message;

    auto self = hv.self_domid();
    ASSERT_FALSE(self.has_value());
    EXPECT_TRUE(contains(self.error().message, "own domid")) << self.error().message;

    auto st = hv.stats();
    EXPECT_EQ(st.grant_map_calls, 0u);
    EXPECT_EQ(st.foreign_ram_maps, 0u);
    EXPECT_EQ(st.resource_maps, 0u);
}

// ---------------------------------------------------------------------------
// check_nodes with a substitute probe

TEST(CheckNodes, AllPresentIsOk) {
    auto p = fixed_probe({{"/dev/xen/privcmd", 0}, {"/dev/xen/evtchn", 0}, {"/dev/xen/gntdev", 0},
                          {"/dev/xen/xenbus", 0}});
    EXPECT_TRUE(check_nodes(p).has_value());
    EXPECT_TRUE(nodes_present(p));
}

TEST(CheckNodes, SocketAloneServesXenstore) {
    auto p = fixed_probe({{"/dev/xen/privcmd", 0}, {"/dev/xen/evtchn", 0}, {"/dev/xen/gntdev", 0},
                          {"/var/run/xenstored/socket", 0}});
    EXPECT_TRUE(check_nodes(p).has_value());
}

TEST(CheckNodes, PrivcmdMissingInsideXenAsksForTheModule) {
    auto p = fixed_probe({{"/dev/xen/evtchn", 0}, {"/dev/xen/gntdev", 0}}, /*in_xen=*/true);
    auto r = check_nodes(p);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, std::errc::no_such_file_or_directory);
    EXPECT_TRUE(contains(r.error().message, "/dev/xen/privcmd missing")) << r.error().message;
    EXPECT_TRUE(contains(r.error().message, "modprobe xen-privcmd")) << r.error().message;
    EXPECT_FALSE(contains(r.error().message, "not running in a Xen domain")) << r.error().message;
}

TEST(CheckNodes, PrivcmdMissingOutsideXenIsEnodev) {
    auto p = fixed_probe({}, /*in_xen=*/false);
    auto r = check_nodes(p);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code.value(), ENODEV);
    EXPECT_TRUE(contains(r.error().message, "xen-virtiod demo")) << r.error().message;
    EXPECT_FALSE(nodes_present(p));
}

TEST(CheckNodes, InaccessibleNodeIsEaccesAndNamed) {
    auto p = fixed_probe({{"/dev/xen/privcmd", 0}, {"/dev/xen/evtchn", 0}, {"/dev/xen/gntdev", EACCES},
                          {"/dev/xen/xenbus", 0}});
    auto r = check_nodes(p);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, std::errc::permission_denied);
    EXPECT_TRUE(contains(r.error().message, "/dev/xen/gntdev is not accessible")) << r.error().message;
    EXPECT_TRUE(contains(r.error().message, "root")) << r.error().message;
    // Present but inaccessible still means a Xen domain.
    EXPECT_TRUE(nodes_present(p));
}

TEST(CheckNodes, RealUnreadableFileIsEacces) {
    if (::geteuid() == 0) GTEST_SKIP() << "root bypasses file permissions";
    FakeDevDir dir({"privcmd", "evtchn", "gntdev", "xenbus"});
    ASSERT_EQ(::chmod((dir.str() + "/evtchn").c_str(), 0), 0);
    EnvGuard g("XV_XEN_DEV_DIR", dir.str().c_str());
    auto r = check_nodes(system_probe());
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, std::errc::permission_denied);
    EXPECT_TRUE(contains(r.error().message, dir.str() + "/evtchn")) << r.error().message;
}

TEST(CheckNodes, ProbeWithoutFunctionFailsClosed) {
    NodeProbe p;
    p.probe = nullptr;
    EXPECT_FALSE(check_nodes(p).has_value());
    EXPECT_FALSE(nodes_present(p));
}

// ---------------------------------------------------------------------------
// Error messages

TEST(CallError, EpermOnDeviceModelGivesTheThreeCauses) {
    auto e = call_error("xendevicemodel_create_ioreq_server", EPERM, "create ioreq server for dom 5",
                        CallKind::DeviceModel);
    EXPECT_EQ(e.code, std::errc::operation_not_permitted);
    EXPECT_TRUE(contains(e.message, "create ioreq server for dom 5")) << e.message;
    EXPECT_TRUE(contains(e.message, "xendevicemodel_create_ioreq_server")) << e.message;
    EXPECT_TRUE(contains(e.message, "errno 1")) << e.message;
    EXPECT_TRUE(contains(e.message, "SILO")) << e.message;
    EXPECT_TRUE(contains(e.message, "xc_domain_set_target")) << e.message;
    EXPECT_TRUE(contains(e.message, "unrestricted=1")) << e.message;
}

TEST(CallError, EpermOnEventChannelNamesXsm) {
    auto e = call_error("xenevtchn_bind_interdomain", EPERM, "bind", CallKind::EventChannel);
    EXPECT_TRUE(contains(e.message, "XSM")) << e.message;
    EXPECT_FALSE(contains(e.message, "unrestricted=1")) << e.message;
}

TEST(CallError, EnosysOnDeviceModelNamesTheKconfig) {
    auto e = call_error("xendevicemodel_create_ioreq_server", ENOSYS, "create", CallKind::DeviceModel);
    EXPECT_EQ(e.code.value(), ENOSYS);
    EXPECT_TRUE(contains(e.message, "CONFIG_IOREQ_SERVER")) << e.message;
}

TEST(CallError, OtherErrnoHasNoPrivilegeHint) {
    auto e = call_error("xengnttab_map_domain_grant_refs", EINVAL, "map 3 grant refs of dom 5", CallKind::Grant);
    EXPECT_EQ(e.code, std::errc::invalid_argument);
    EXPECT_FALSE(contains(e.message, "likely")) << e.message;
    EXPECT_TRUE(contains(e.message, "map 3 grant refs of dom 5")) << e.message;
}

TEST(CallError, ZeroErrnoBecomesEio) {
    auto e = call_error("xs_read", 0, "read x", CallKind::XenStore);
    EXPECT_EQ(e.code.value(), EIO);
}

TEST(CallError, EveryKindWithPrivilegeAdviceSaysSomething) {
    for (auto k : {CallKind::Grant, CallKind::EventChannel, CallKind::DeviceModel, CallKind::ForeignMemory,
                   CallKind::DomainControl, CallKind::XenStore})
        EXPECT_FALSE(permission_hint(k).empty()) << int(k);
}

// ---------------------------------------------------------------------------
// Ioreq page arithmetic and the port map

TEST(IoreqPages, CeilOfVcpusOver128) {
    EXPECT_EQ(ioreq_page_count(0), 0u);
    EXPECT_EQ(ioreq_page_count(1), 1u);
    EXPECT_EQ(ioreq_page_count(127), 1u);
    EXPECT_EQ(ioreq_page_count(128), 1u);
    EXPECT_EQ(ioreq_page_count(129), 2u);
    EXPECT_EQ(ioreq_page_count(256), 2u);
    EXPECT_EQ(ioreq_page_count(257), 3u);
    for (unsigned v = 1; v <= kMaxVcpus; ++v) {
        unsigned p = ioreq_page_count(v);
        // Enough slots, and not one page too many.
        ASSERT_GE(std::size_t(p) * kPageSize, std::size_t(v) * sizeof(ioreq_t)) << v;
        ASSERT_LT(std::size_t(p - 1) * kSlotsPerPage, v) << v;
    }
    EXPECT_EQ(kSlotsPerPage * sizeof(ioreq_t), kPageSize);
}

TEST(PortMap, AddLookupRemove) {
    PortMap m;
    EXPECT_TRUE(m.empty());
    EXPECT_TRUE(m.add(40, 0));
    EXPECT_TRUE(m.add(12, 1));
    EXPECT_TRUE(m.add(77, 2));
    EXPECT_FALSE(m.add(12, 5)) << "a port maps to one vCPU";
    EXPECT_EQ(m.size(), 3u);
    EXPECT_EQ(m.vcpu_of(12), 1u);
    EXPECT_EQ(m.vcpu_of(40), 0u);
    EXPECT_EQ(m.vcpu_of(77), 2u);
    EXPECT_FALSE(m.vcpu_of(13).has_value());
    EXPECT_FALSE(m.vcpu_of(0).has_value());
    EXPECT_EQ(m.ports(), (std::vector<Port>{12, 40, 77}));
    EXPECT_TRUE(m.remove(40));
    EXPECT_FALSE(m.remove(40));
    EXPECT_FALSE(m.vcpu_of(40).has_value());
    EXPECT_EQ(m.vcpu_of(77), 2u);
}

TEST(PortMap, MatchesAReferenceMapUnderRandomUse) {
    std::mt19937 rng(1234);
    PortMap m;
    std::map<Port, unsigned> ref;
    for (int i = 0; i < 5000; ++i) {
        Port p = rng() % 600;
        unsigned v = rng() % 128;
        switch (rng() % 3) {
        case 0: EXPECT_EQ(m.add(p, v), ref.emplace(p, v).second); break;
        case 1: EXPECT_EQ(m.remove(p), ref.erase(p) == 1); break;
        default: {
            auto it = ref.find(p);
            auto got = m.vcpu_of(p);
            if (it == ref.end()) EXPECT_FALSE(got.has_value());
            else EXPECT_EQ(got, it->second);
        }
        }
    }
    EXPECT_EQ(m.size(), ref.size());
}

// ---------------------------------------------------------------------------
// XSM and domids

TEST(XsmCmdline, ParsesTheModes) {
    EXPECT_EQ(parse_xsm_cmdline("console=dtuart dtuart=/pl011@9000000 xsm=silo dom0_mem=768M"), XsmMode::Silo);
    EXPECT_EQ(parse_xsm_cmdline("xsm=dummy"), XsmMode::Dummy);
    EXPECT_EQ(parse_xsm_cmdline("flask=enforcing xsm=flask"), XsmMode::Flask);
    EXPECT_EQ(parse_xsm_cmdline("console=dtuart dom0_mem=768M"), XsmMode::Unknown);
    EXPECT_EQ(parse_xsm_cmdline(""), XsmMode::Unknown);
    EXPECT_EQ(parse_xsm_cmdline("noxsm=silo"), XsmMode::Unknown);
    EXPECT_EQ(parse_xsm_cmdline("xsm=bogus"), XsmMode::Unknown);
    EXPECT_EQ(parse_xsm_cmdline("xsm="), XsmMode::Unknown);
    EXPECT_EQ(parse_xsm_cmdline("xsm=silo\txsm=dummy"), XsmMode::Dummy) << "the last one wins";
    EXPECT_EQ(parse_xsm_cmdline("xsm=silox"), XsmMode::Unknown);
}

TEST(ParseDomid, DecimalBelowReserved) {
    EXPECT_EQ(parse_domid("0"), DomId(0));
    EXPECT_EQ(parse_domid("5"), DomId(5));
    EXPECT_EQ(parse_domid("32751"), DomId(0x7fef));
    EXPECT_FALSE(parse_domid("32752").has_value()) << "DOMID_FIRST_RESERVED";
    EXPECT_FALSE(parse_domid("").has_value());
    EXPECT_FALSE(parse_domid("-1").has_value());
    EXPECT_FALSE(parse_domid("5a").has_value());
    EXPECT_FALSE(parse_domid(" 5").has_value());
    EXPECT_FALSE(parse_domid("123456").has_value());
    EXPECT_FALSE(parse_domid("0x10").has_value());
}

// ---------------------------------------------------------------------------
// Grant copy

TEST(GrantCopy, SegmentValidation) {
    std::byte buf[kPageSize];
    GrantCopySegment s;
    s.domid = 5;
    s.ref = 9;
    s.offset = 0;
    s.len = 4096;
    s.local = buf;
    EXPECT_TRUE(validate_copy_segment(s, 0).has_value());
    s.offset = 1;
    auto r = validate_copy_segment(s, 3);
    ASSERT_FALSE(r.has_value());
    EXPECT_TRUE(contains(r.error().message, "segment 3")) << r.error().message;
    EXPECT_TRUE(contains(r.error().message, "ref 9")) << r.error().message;
    s.offset = 4000;
    s.len = 96;
    EXPECT_TRUE(validate_copy_segment(s, 0).has_value());
    s.len = 0;
    EXPECT_FALSE(validate_copy_segment(s, 0).has_value());
    s.len = 8;
    s.local = nullptr;
    EXPECT_FALSE(validate_copy_segment(s, 0).has_value());
    s.local = buf;
    s.domid = DOMID_SELF;
    EXPECT_FALSE(validate_copy_segment(s, 0).has_value());
}

TEST(GrantCopy, StatusToErrno) {
    EXPECT_EQ(gntst_to_errno(GNTST_okay), 0);
    EXPECT_EQ(gntst_to_errno(GNTST_permission_denied), EPERM);
    EXPECT_EQ(gntst_to_errno(GNTST_bad_gntref), EINVAL);
    EXPECT_EQ(gntst_to_errno(GNTST_bad_domain), ESRCH);
    EXPECT_EQ(gntst_to_errno(GNTST_eagain), EAGAIN);
    EXPECT_EQ(gntst_to_errno(GNTST_general_error), EIO);
    EXPECT_EQ(gntst_to_errno(-99), EIO);
    EXPECT_STREQ(gntst_name(GNTST_bad_gntref), "bad_gntref");
    EXPECT_STREQ(gntst_name(GNTST_permission_denied), "permission_denied");
    EXPECT_STREQ(gntst_name(-99), "unknown");
}

// ---------------------------------------------------------------------------
// Buffered ioreq ring

namespace {

struct alignas(4096) BufPage {
    buffered_iopage_t p;
    char pad[4096 - sizeof(buffered_iopage_t)];
};

void put(BufPage& pg, std::uint32_t idx, std::uint8_t type, std::uint8_t size_log2, std::uint32_t addr,
         std::uint32_t data) {
    buf_ioreq_t& e = pg.p.buf_ioreq[idx % IOREQ_BUFFER_SLOT_NUM];
    std::memset(&e, 0, sizeof e);
    e.type = type;
    e.dir = IOREQ_WRITE;
    e.size = size_log2 & 3;
    e.addr = addr & 0xfffff;
    e.data = data;
}

}  // namespace

TEST(BufferedRing, ServesEntriesAndJoinsEightByteWrites) {
    auto pg = std::make_unique<BufPage>();
    std::memset(pg.get(), 0, sizeof *pg);
    // Start near the end so the ring wraps (slot index = pointer % 511).
    const std::uint32_t start = 2 * IOREQ_BUFFER_SLOT_NUM - 1;
    pg->p.read_pointer = start;
    put(*pg, start, IOREQ_TYPE_COPY, 2, 0x1234, 0xdeadbeef);          // 4-byte write
    put(*pg, start + 1, IOREQ_TYPE_COPY, 3, 0x5678, 0x11223344);      // 8-byte write, low half
    put(*pg, start + 2, IOREQ_TYPE_COPY, 0, 0, 0x55667788);           // ... high half
    put(*pg, start + 3, IOREQ_TYPE_PIO, 0, 0x3f8, 0x41);              // 1-byte port write
    pg->p.write_pointer = start + 4;

    std::vector<IoRequest> seen;
    auto d = drain_buffered_ring(pg.get(), [&](const IoRequest& r) {
        seen.push_back(r);
        return std::uint64_t(0);
    }, 100);
    EXPECT_FALSE(d.corrupt);
    ASSERT_EQ(d.served, 3u);
    ASSERT_EQ(seen.size(), 3u);
    EXPECT_EQ(seen[0].addr, 0x1234u);
    EXPECT_EQ(seen[0].size, 4u);
    EXPECT_EQ(seen[0].data, 0xdeadbeefu);
    EXPECT_TRUE(seen[0].is_write);
    EXPECT_EQ(seen[1].addr, 0x5678u);
    EXPECT_EQ(seen[1].size, 8u);
    EXPECT_EQ(seen[1].data, 0x5566778811223344ull);
    EXPECT_EQ(seen[2].type, IoreqType::Pio);
    EXPECT_EQ(seen[2].size, 1u);
    EXPECT_EQ(seen[2].data, 0x41u);
    EXPECT_EQ(pg->p.read_pointer, start + 4);
}

TEST(BufferedRing, HonoursTheBudget) {
    auto pg = std::make_unique<BufPage>();
    std::memset(pg.get(), 0, sizeof *pg);
    for (std::uint32_t i = 0; i < 10; ++i) put(*pg, i, IOREQ_TYPE_COPY, 2, i, i);
    pg->p.write_pointer = 10;
    unsigned calls = 0;
    auto d = drain_buffered_ring(pg.get(), [&](const IoRequest&) { return std::uint64_t(++calls); }, 4);
    EXPECT_EQ(d.served, 4u);
    EXPECT_EQ(calls, 4u);
    EXPECT_EQ(pg->p.read_pointer, 4u);
    d = drain_buffered_ring(pg.get(), [&](const IoRequest&) { return std::uint64_t(++calls); }, 100);
    EXPECT_EQ(d.served, 6u);
    EXPECT_EQ(pg->p.read_pointer, 10u);
}

TEST(BufferedRing, RejectsImpossiblePointers) {
    auto pg = std::make_unique<BufPage>();
    std::memset(pg.get(), 0, sizeof *pg);
    pg->p.read_pointer = 0;
    pg->p.write_pointer = IOREQ_BUFFER_SLOT_NUM + 1;
    unsigned calls = 0;
    auto d = drain_buffered_ring(pg.get(), [&](const IoRequest&) { return std::uint64_t(++calls); }, 100);
    EXPECT_TRUE(d.corrupt);
    EXPECT_EQ(d.served, 0u);
    EXPECT_EQ(calls, 0u);
    EXPECT_EQ(pg->p.read_pointer, 0u) << "nothing consumed";
    // write behind read (wrapped negative) is as impossible.
    pg->p.read_pointer = 5;
    pg->p.write_pointer = 3;
    d = drain_buffered_ring(pg.get(), [&](const IoRequest&) { return std::uint64_t(++calls); }, 100);
    EXPECT_TRUE(d.corrupt);
    EXPECT_EQ(calls, 0u);
}

TEST(BufferedRing, TornEightByteWriteIsNotServed) {
    auto pg = std::make_unique<BufPage>();
    std::memset(pg.get(), 0, sizeof *pg);
    put(*pg, 0, IOREQ_TYPE_COPY, 3, 0x10, 1);
    pg->p.write_pointer = 1;  // the high half never arrived
    unsigned calls = 0;
    auto d = drain_buffered_ring(pg.get(), [&](const IoRequest&) { return std::uint64_t(++calls); }, 100);
    EXPECT_TRUE(d.corrupt);
    EXPECT_EQ(calls, 0u);
    EXPECT_EQ(pg->p.read_pointer, 0u);
}

// ---------------------------------------------------------------------------
// The per-vCPU slot handshake (xen/common/ioreq_slot.h) on real ioreq_t slots

namespace {

struct alignas(4096) SlotPage {
    ioreq_t slot[4];
};

}  // namespace

// public/hvm/ioreq.h: the state nibble shares its byte with data_is_ptr,
// dir and df. A slot is a request only when the nibble is
// STATE_IOREQ_READY, whatever those bits hold; any other value (the other
// states, values Xen never writes) is neither seen by any_slot_ready() nor
// taken, and stays as it was. A taken slot is INPROCESS, then IORESP_READY
// with the data of a read.
TEST(IoreqSlot, OnlyTheReadyNibbleIsARequest) {
    auto pg = std::make_unique<SlotPage>();
    std::memset(pg.get(), 0, sizeof *pg);
    EXPECT_FALSE(xv::xen::detail::any_slot_ready(pg->slot, 4));
    for (unsigned state = 0; state < 16; ++state) {
        if (state == STATE_IOREQ_READY) continue;
        for (unsigned dir : {IOREQ_READ, IOREQ_WRITE}) {
            pg->slot[2] = {};
            pg->slot[2].state = state;
            pg->slot[2].dir = dir;
            pg->slot[2].data_is_ptr = 1;
            EXPECT_FALSE(xv::xen::detail::any_slot_ready(pg->slot, 4)) << "state " << state;
            IoRequest r;
            EXPECT_FALSE(xv::xen::detail::take_request(&pg->slot[2], 2, r)) << "state " << state;
            EXPECT_EQ(pg->slot[2].state, state);
        }
    }
    pg->slot[2] = {};
    // A READY slot beyond the count asked about is not looked at.
    pg->slot[3].state = STATE_IOREQ_READY;
    EXPECT_FALSE(xv::xen::detail::any_slot_ready(pg->slot, 3));
    EXPECT_TRUE(xv::xen::detail::any_slot_ready(pg->slot, 4));
    pg->slot[3].dir = IOREQ_READ;
    pg->slot[3].data_is_ptr = 1;
    pg->slot[3].size = 4;
    pg->slot[3].count = 2;
    pg->slot[3].addr = 0x2000010;
    pg->slot[3].type = IOREQ_TYPE_COPY;
    IoRequest r;
    ASSERT_TRUE(xv::xen::detail::take_request(&pg->slot[3], 3, r));
    EXPECT_EQ(pg->slot[3].state, STATE_IOREQ_INPROCESS);
    EXPECT_FALSE(xv::xen::detail::any_slot_ready(pg->slot, 4));
    EXPECT_TRUE(r.data_is_ptr);
    EXPECT_FALSE(r.is_write);
    EXPECT_EQ(r.count, 2u);
    EXPECT_EQ(r.addr, 0x2000010u);
    EXPECT_EQ(r.vcpu, 3u);
    xv::xen::detail::complete_request(&pg->slot[3], r, 0xffffffff);
    EXPECT_EQ(pg->slot[3].state, STATE_IORESP_READY);
    EXPECT_EQ(pg->slot[3].data, 0xffffffffu);
    EXPECT_EQ(pg->slot[3].data_is_ptr, 1u);  // the other bits of the byte untouched
    EXPECT_EQ(pg->slot[3].dir, unsigned(IOREQ_READ));
}
