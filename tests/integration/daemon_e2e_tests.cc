// SPDX-License-Identifier: GPL-2.0-only
// End to end against xen/sim: a guest is created with devices announced in
// the simulator's xenstore exactly as libxl writes them -> the guest
// manager serves them -> a guest-side driver verifies data -> the guest is
// destroyed -> every resource is released.
#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <thread>

#include "config.h"
#include "guest_manager.h"
#include "xv/devices/blk.h"
#include "xv/guest/transport_driver.h"
#include "xv/guest/virtqueue_driver.h"
#include "xv/transport/device.h"
#include "xv/xen/sim.h"

namespace xv::daemon {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
namespace feat = transport::feature;

constexpr std::uint64_t kBase = 0x02000000;

/// One simulated host: the simulator, an io_context on two threads, a
/// configuration, and the guest manager under test.
class Host {
public:
    explicit Host(std::string config_text) {
        sim = xen::sim::SimHypervisor::create();
        auto c = parse_config(config_text, "<test>");
        EXPECT_TRUE(c.has_value()) << (c ? "" : c.error().describe());
        if (c) config = std::move(c).value();
    }
    ~Host() { shutdown(); }

    /// Starts the manager and the I/O threads.
    Result<Verdicts> start() {
        ManagerOptions mo;
        manager = GuestManager::create(config, *sim, io.get_executor(), mo);
        auto v = manager->start();
        for (int i = 0; i < 2; ++i) threads.emplace_back([this] { io.run(); });
        return v;
    }

    /// Runs `f` on the manager's executor and waits (rescan, sessions).
    template <class F>
    auto on_io(F&& f) {
        std::packaged_task<decltype(f())()> task(std::forward<F>(f));
        auto fut = task.get_future();
        boost::asio::post(io, [&task] { task(); });
        return fut.get();
    }

    /// Waits until `pred` holds (bounded).
    template <class P>
    bool eventually(P pred, std::chrono::milliseconds limit = 5000ms) {
        auto end = std::chrono::steady_clock::now() + limit;
        while (std::chrono::steady_clock::now() < end) {
            if (pred()) return true;
            std::this_thread::sleep_for(10ms);
        }
        return pred();
    }

    void shutdown() {
        if (!manager) return;
        std::promise<void> done;
        manager->stop([&done] { done.set_value(); });
        done.get_future().wait_for(10s);
        manager.reset();
        guard.reset();
        io.stop();
        for (auto& t : threads) t.join();
        threads.clear();
    }

    std::shared_ptr<xen::sim::SimHypervisor> sim;
    Config config;
    boost::asio::io_context io;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard{io.get_executor()};
    std::vector<std::thread> threads;
    std::shared_ptr<GuestManager> manager;
};

/// A temp image file of `bytes`.
struct TempImage {
    explicit TempImage(std::uint64_t bytes) {
        path = fs::temp_directory_path() / ("xv-e2e-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".img");
        std::ofstream(path).close();
        fs::resize_file(path, bytes);
    }
    ~TempImage() {
        std::error_code ec;
        fs::remove(path, ec);
    }
    fs::path path;
    static inline int counter = 0;
};

xen::sim::VirtioDeviceSpec spec(xen::DomId fe, unsigned devid, const char* type, bool grants = true) {
    xen::sim::VirtioDeviceSpec s;
    s.frontend = fe;
    s.backend = 0;
    s.devid = devid;
    s.type = type;
    s.base = kBase + 0x200 * devid;
    s.irq = 33 + devid;
    s.grant_usage = grants;
    return s;
}

std::string be_path(xen::DomId fe, unsigned devid) {
    return "/local/domain/0/backend/virtio/" + std::to_string(fe) + "/" + std::to_string(devid);
}

/// Writes `data` at `sector` then reads it back through the guest driver.
void blk_roundtrip(xen::sim::SimGuest& g, std::uint64_t base, std::uint32_t spi, std::uint64_t sector,
                   std::vector<std::byte> data) {
    auto t = guest::make_mmio_guest(g, base, false, 0);
    ASSERT_TRUE(t.has_value()) << t.error().describe();
    guest::DriverOptions o;
    o.size = 16;
    auto q = guest::VirtqueueDriver::create(g, o);
    ASSERT_TRUE(q.has_value());
    auto f = t.value()->bring_up(feat::bit(feat::kVersion1) | feat::bit(feat::kAccessPlatform), {q.value().get()});
    ASSERT_TRUE(f.has_value()) << f.error().describe();
    auto wait = [&]() -> std::optional<guest::UsedElem> {
        std::uint64_t seen = g.irq_count(spi);
        for (int i = 0; i < 250; ++i) {
            if (auto u = q.value()->next_used()) return u;
            seen = g.wait_irq(spi, seen, 20ms);
            (void)t.value()->take_isr();
        }
        return std::nullopt;
    };
    devices::blk::OutHdr w{devices::blk::req::kOut, 0, sector};
    auto sw = q.value()->chain().readable(std::as_bytes(std::span(&w, 1))).readable(std::span<const std::byte>(data)).writable(1).submit();
    ASSERT_TRUE(sw.has_value());
    ASSERT_TRUE(t.value()->notify(0).has_value());
    ASSERT_TRUE(wait().has_value());
    EXPECT_EQ(sw.value().buf(2).bytes()[0], std::byte{0});
    devices::blk::OutHdr r{devices::blk::req::kIn, 0, sector};
    auto sr = q.value()->chain().readable(std::as_bytes(std::span(&r, 1))).writable(std::uint32_t(data.size())).writable(1).submit();
    ASSERT_TRUE(sr.has_value());
    ASSERT_TRUE(t.value()->notify(0).has_value());
    ASSERT_TRUE(wait().has_value());
    EXPECT_EQ(sr.value().buf(2).bytes()[0], std::byte{0});
    EXPECT_TRUE(std::equal(data.begin(), data.end(), sr.value().buf(1).bytes().begin()));
}

const char* kUnsafeGuestConfig = R"(
[[domain]]
id = 0
roles = ["hardware", "control"]
class = "safe"

[[domain]]
name = "g1"
roles = ["domu"]
class = "unsafe"
)";

/// kUnsafeGuestConfig plus one blk device of g1 on `image`.
std::string unsafe_guest_with_blk(const TempImage& image) {
    return std::string(kUnsafeGuestConfig) + "[[device]]\nguest = \"g1\"\ntype = \"blk\"\npath = \"" +
           image.path.string() + "\"\n";
}

/// Creates the simulated guest `name`.
Result<xen::DomId> create_guest(Host& h, const char* name) {
    xen::sim::DomainConfig dc;
    dc.name = name;
    return h.sim->create_domain(dc);
}

TEST(DaemonE2E, ServesAnnouncedGuestVerifiesDataAndReleasesEverythingOnDestroy) {
    TempImage img(8 << 20);
    Host h(unsafe_guest_with_blk(img));
    auto dom = create_guest(h, "g1");
    ASSERT_TRUE(dom.has_value());
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*dom, 0, "virtio,device2")).has_value());
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*dom, 1, "virtio,device3")).has_value());

    auto v = h.start();
    ASSERT_TRUE(v.has_value()) << v.error().describe();
    EXPECT_FALSE(v.value().refuses_start());
    ASSERT_EQ(h.manager->sessions().size(), 1u);
    auto& xs = h.sim->toolstack_store();
    // The backend moved to InitWait once its ranges were claimed (xen-facts §3.4).
    EXPECT_EQ(xs.read(be_path(*dom, 0) + "/state").value(), "2");
    EXPECT_EQ(xs.read(be_path(*dom, 1) + "/state").value(), "2");
    // The console's pty is published next to its backend directory.
    auto tty = xs.read(be_path(*dom, 1) + "/tty");
    ASSERT_TRUE(tty.has_value());
    EXPECT_EQ(tty.value().rfind("/dev/pts/", 0), 0u);

    std::vector<std::byte> data(8192);
    std::mt19937 rng(7);
    for (auto& b : data) b = std::byte(rng());
    auto g = h.sim->guest(*dom);
    blk_roundtrip(*g, kBase, 33, 64, data);
    // The data is in the image file too.
    {
        std::ifstream f(img.path, std::ios::binary);
        f.seekg(64 * 512);
        std::vector<char> back(data.size());
        f.read(back.data(), std::streamsize(back.size()));
        EXPECT_TRUE(std::equal(data.begin(), data.end(), reinterpret_cast<const std::byte*>(back.data())));
    }
    EXPECT_GT(h.sim->resources().ioreq_servers, 0u);

    // Destroy the guest: the manager notices and releases everything.
    g.reset();
    ASSERT_TRUE(h.sim->destroy_domain(*dom).has_value());
    EXPECT_TRUE(h.eventually([&] { return h.manager->sessions().empty(); }));
    EXPECT_TRUE(h.eventually([&] {
        auto r = h.sim->resources();
        return r.ioreq_servers == 0 && r.bound_ports == 0 && r.mapped_grant_pages == 0;
    })) << "ioreq servers " << h.sim->resources().ioreq_servers << ", ports " << h.sim->resources().bound_ports
        << ", grant pages " << h.sim->resources().mapped_grant_pages;
    EXPECT_TRUE(h.sim->zombies().empty());
    EXPECT_EQ(h.sim->stats().foreign_ram_maps, 0u);
}

TEST(DaemonE2E, DeviceWithoutGrantsGetsAnErrorNodeAndTheOtherDevicesStillWork) {
    TempImage img(4 << 20);
    Host h(unsafe_guest_with_blk(img));
    auto dom = create_guest(h, "g1");
    ASSERT_TRUE(dom.has_value());
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*dom, 0, "virtio,device2")).has_value());
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*dom, 1, "virtio,device3", /*grants=*/false)).has_value());
    auto v = h.start();
    ASSERT_TRUE(v.has_value());
    EXPECT_FALSE(v.value().refuses_start()) << "an UnsafeVM without grants loses the device, not the daemon";
    auto& xs = h.sim->toolstack_store();
    auto err = xs.read(be_path(*dom, 1) + "/error");
    ASSERT_TRUE(err.has_value()) << "no error node for the device without grants";
    EXPECT_NE(err.value().find("grant"), std::string::npos) << err.value();
    // The xenbus-style error node too.
    EXPECT_TRUE(xs.read("/local/domain/0/error/backend/virtio/" + std::to_string(*dom) + "/1/error").has_value());
    // blk still works.
    auto g = h.sim->guest(*dom);
    blk_roundtrip(*g, kBase, 33, 8, std::vector<std::byte>(4096, std::byte{0x5a}));
}

TEST(DaemonE2E, SafeVmDeviceWithoutTheNonBlockingRegistersRefusesStart) {
    TempImage img(4 << 20);
    Host h(R"(
[[domain]]
id = 0
roles = ["hardware", "control"]
class = "safe"

[[domain]]
name = "safe1"
roles = ["domu"]
class = "safe"

[[device]]
guest = "safe1"
type = "blk"
transport = "mmio"
nonblocking = false
path = ")" + img.path.string() + "\"\n");
    auto dom = create_guest(h, "safe1");
    ASSERT_TRUE(dom.has_value());
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*dom, 0, "virtio,device2")).has_value());
    auto v = h.start();
    ASSERT_TRUE(v.has_value());
    EXPECT_TRUE(v.value().refuses_start());
    EXPECT_EQ(v.value().exit_status(), 2);
    bool r2 = false;
    for (const auto& i : v.value().items) r2 |= i.rule == "R2" && i.level == Level::Refuse;
    EXPECT_TRUE(r2) << "the refusal names R2 (FFI: Synchronous Emulation)";
    EXPECT_TRUE(h.manager->sessions().empty()) << "nothing is served when the daemon refuses to start";
    EXPECT_EQ(h.sim->resources().ioreq_servers, 0u);
}

TEST(DaemonE2E, MalformedXenstoreEntryIsRefusedAloneWithAnErrorNode) {
    TempImage img(4 << 20);
    Host h(unsafe_guest_with_blk(img));
    auto dom = create_guest(h, "g1");
    ASSERT_TRUE(dom.has_value());
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*dom, 0, "virtio,device2")).has_value());
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*dom, 1, "virtio,device3")).has_value());
    auto& xs = h.sim->toolstack_store();
    ASSERT_TRUE(xs.write(be_path(*dom, 1) + "/base", "0xjunk").has_value());
    auto v = h.start();
    ASSERT_TRUE(v.has_value());
    auto err = xs.read(be_path(*dom, 1) + "/error");
    ASSERT_TRUE(err.has_value());
    EXPECT_NE(err.value().find("base"), std::string::npos) << err.value();
    auto g = h.sim->guest(*dom);
    blk_roundtrip(*g, kBase, 33, 16, std::vector<std::byte>(4096, std::byte{0x11}));
}

TEST(DaemonE2E, BackendStateClosingFromXlDestroyStopsTheGuestAndAnswersClosed) {
    TempImage img(4 << 20);
    Host h(unsafe_guest_with_blk(img));
    auto dom = create_guest(h, "g1");
    ASSERT_TRUE(dom.has_value());
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*dom, 0, "virtio,device2")).has_value());
    ASSERT_TRUE(h.start().has_value());
    ASSERT_EQ(h.manager->sessions().size(), 1u);
    auto& xs = h.sim->toolstack_store();
    // lab-notes: `xl destroy` sets online=0 and state=5, then waits for 6.
    ASSERT_TRUE(xs.write(be_path(*dom, 0) + "/online", "0").has_value());
    ASSERT_TRUE(xs.write(be_path(*dom, 0) + "/state", "5").has_value());
    EXPECT_TRUE(h.eventually([&] {
        auto s = xs.read(be_path(*dom, 0) + "/state");
        return s && s.value() == "6";
    })) << "backend never answered Closed (6)";
    EXPECT_TRUE(h.eventually([&] { return h.sim->resources().ioreq_servers == 0; }));
}

TEST(DaemonE2E, GuestCreatedLaterIsPickedUpThroughTheWatch) {
    TempImage img(4 << 20);
    Host h(unsafe_guest_with_blk(img));
    ASSERT_TRUE(h.start().has_value());
    EXPECT_TRUE(h.manager->sessions().empty());
    auto dom = create_guest(h, "g1");
    ASSERT_TRUE(dom.has_value());
    ASSERT_TRUE(h.sim->add_virtio_device(spec(*dom, 0, "virtio,device2")).has_value());
    ASSERT_TRUE(h.eventually([&] {
        auto s = h.sim->toolstack_store().read(be_path(*dom, 0) + "/state");
        return s && s.value() == "2";
    }));
    auto g = h.sim->guest(*dom);
    blk_roundtrip(*g, kBase, 33, 0, std::vector<std::byte>(4096, std::byte{0x42}));
}

TEST(DaemonE2E, PlanMatchesAnnouncedDevicesToConfigurationAndRefusesUnknownGenericSlots) {
    auto c = parse_config(std::string(kUnsafeGuestConfig) +
                              "[[device]]\nguest = \"g1\"\ntype = \"blk\"\npath = \"/img/a\"\n"
                              "[[device]]\nguest = \"g1\"\ntype = \"blk\"\nindex = 1\npath = \"/img/b\"\n",
                          "<t>");
    ASSERT_TRUE(c.has_value()) << c.error().describe();
    std::vector<AnnouncedDevice> ann(3);
    for (unsigned i = 0; i < 3; ++i) {
        ann[i].frontend = 5;
        ann[i].devid = i;
        ann[i].transport = "mmio";
        ann[i].base = kBase + 0x200 * i;
        ann[i].irq = 33 + i;
        ann[i].backend_path = be_path(5, i);
    }
    ann[0].type = "virtio,device2";
    ann[1].type = "virtio,device2";
    ann[2].type = "virtio,device";  // generic: nothing left in the configuration for it
    auto pr = plan_guest(c.value(), 5, "g1", ann, 0);
    ASSERT_EQ(pr.plan.devices.size(), 2u);
    EXPECT_EQ(pr.plan.devices[0].blk.path, "/img/a");
    EXPECT_EQ(pr.plan.devices[1].blk.path, "/img/b");
    EXPECT_EQ(pr.plan.devices[1].name, "blk1");
    ASSERT_EQ(pr.refused.size(), 1u);
    EXPECT_EQ(pr.refused[0].first.devid, 2u);
}

}  // namespace
}  // namespace xv::daemon
