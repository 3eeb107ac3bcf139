// SPDX-License-Identifier: GPL-2.0-only
// Fault injection with real components: a disk that returns EIO (a FUSE
// file system served by the test), a file system that runs out of space (a
// small tmpfs in a private mount namespace), a disk that stalls for
// seconds, xenstore going away and coming back (sim), a guest dying with
// I/O stalled, and a worker killed with SIGKILL while writing. The honest
// guest of the same supervisor keeps writing and verifying all along.
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "fuse_disk.h"
#include "hostile_harness.h"
#include "xv/transport/nonblocking.h"

namespace xv::hostile {
namespace {

namespace nb = transport::nonblocking;
using devices::blk::kStatusIoErr;
using devices::blk::kStatusOk;

/// Why the mount namespace could not be had ("" when it could).
std::string g_ns_error = "not set up";

/// Enters a private mount namespace before any test starts a thread.
class MountNamespace : public ::testing::Environment {
public:
    void SetUp() override { g_ns_error = enter_private_mount_namespace(); }
};
[[maybe_unused]] auto* const g_env = ::testing::AddGlobalTestEnvironment(new MountNamespace);

/// A fresh directory under the temp directory.
fs::path make_dir(const char* what) {
    static int n = 0;
    auto p = fs::temp_directory_path() / ("xv-fault-" + std::to_string(::getpid()) + "-" + what + std::to_string(n++));
    fs::create_directories(p);
    return p;
}

class Fault : public HostileFixture {
protected:
    void TearDown() override {
        HostileFixture::TearDown();  // stops the daemon before the disk goes
        disk_.reset();
        if (!tmpfs_.empty()) (void)::umount2(tmpfs_.c_str(), MNT_DETACH);
        std::error_code ec;
        if (!dir_.empty()) fs::remove_all(dir_, ec);
    }

    /// The hostile guest's disk becomes a 4 MiB FUSE image.
    void with_fuse_disk(Tk tk = Tk::Mmio, xen::sim::SimOptions opts = {}) {
        if (!g_ns_error.empty()) GTEST_SKIP() << "no private mount namespace: " << g_ns_error;
        dir_ = make_dir("fuse");
        auto d = FuseDisk::mount(dir_, 4 << 20);
        if (!d) GTEST_SKIP() << "FUSE is not available here: " << d.error().describe();
        disk_ = std::move(d).value();
        evil_path_override_ = disk_->image();
        start_host(tk, opts);
        if (HasFatalFailure()) return;
        auto r = evil().up({.size = 16});
        ASSERT_TRUE(r.has_value()) << r.error().describe();
        log_sink().clear();
    }

    std::unique_ptr<FuseDisk> disk_;
    fs::path dir_, tmpfs_;
};

TEST_F(Fault, DiskEioOnWriteIsIoErrAndTheDeviceGoesOn) {
    with_fuse_disk();
    if (IsSkipped()) return;
    disk_->eio_from = 64 * 512;
    disk_->eio_to = 72 * 512;
    disk_->eio_writes = true;
    auto w = evil().write(64, pattern(1));
    ASSERT_TRUE(w.has_value()) << w.error().describe();
    EXPECT_EQ(*w, kStatusIoErr);
    EXPECT_TRUE(log_sink().wait_for({evil_queue(), "OUT", "sector 64", "Input/output error"})) << dump_lines(evil_label());
    // Outside the bad range the disk works, and the device never needed a reset.
    auto w2 = evil().write(128, pattern(2));
    ASSERT_TRUE(w2.has_value());
    EXPECT_EQ(*w2, kStatusOk);
    EXPECT_EQ(disk_->bytes(128 * 512, 4096), pattern(2));
    EXPECT_FALSE(evil().needs_reset());
    expect_honest_progress();
    disk_->eio_writes = false;
    auto w3 = evil().write(64, pattern(3));
    ASSERT_TRUE(w3.has_value());
    EXPECT_EQ(*w3, kStatusOk);
    EXPECT_EQ(disk_->bytes(64 * 512, 4096), pattern(3));
}

TEST_F(Fault, DiskEioOnReadIsIoErr) {
    with_fuse_disk(Tk::PciNb);
    if (IsSkipped()) return;
    auto w = evil().write(64, pattern(4));
    ASSERT_TRUE(w.has_value());
    ASSERT_EQ(*w, kStatusOk);
    disk_->eio_from = 64 * 512;
    disk_->eio_to = 65 * 512;
    disk_->eio_reads = true;
    std::vector<std::byte> back(4096);
    auto r = evil().read(64, back);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(*r, kStatusIoErr);
    EXPECT_TRUE(log_sink().wait_for({evil_queue(), "IN", "Input/output error"})) << dump_lines(evil_label());
    expect_honest_progress();
    disk_->eio_reads = false;
    r = evil().read(64, back);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(*r, kStatusOk);
    EXPECT_EQ(back, pattern(4));
}

TEST_F(Fault, FlushEioIsIoErr) {
    with_fuse_disk();
    if (IsSkipped()) return;
    auto w = evil().write(8, pattern(5));
    ASSERT_TRUE(w.has_value());
    ASSERT_EQ(*w, kStatusOk);
    disk_->eio_fsync = true;
    auto f = evil().flush();
    ASSERT_TRUE(f.has_value()) << f.error().describe();
    EXPECT_EQ(*f, kStatusIoErr) << "a FLUSH whose fsync failed reported success";
    EXPECT_TRUE(log_sink().wait_for({evil_queue(), "FLUSH", "Input/output error"})) << dump_lines(evil_label());
    disk_->eio_fsync = false;
    f = evil().flush();
    ASSERT_TRUE(f.has_value());
    EXPECT_EQ(*f, kStatusOk);
    expect_honest_progress();
}

TEST_F(Fault, FileSystemFullIsIoErrAndAcknowledgedWritesStay) {
    if (!g_ns_error.empty()) GTEST_SKIP() << "no private mount namespace: " << g_ns_error;
    dir_ = make_dir("tmpfs");
    tmpfs_ = dir_;
    ASSERT_EQ(::mount("tmpfs", tmpfs_.c_str(), "tmpfs", 0, "size=512k"), 0) << std::strerror(errno);
    {
        std::ofstream filler(tmpfs_ / "filler", std::ios::binary);
        std::vector<char> z(256 * 1024, 'z');
        filler.write(z.data(), std::streamsize(z.size()));
    }
    auto img = tmpfs_ / "disk.img";
    std::ofstream(img).close();
    fs::resize_file(img, 4 << 20);  // sparse: 4 MiB of image on 512 KiB of space
    evil_path_override_ = img;
    start_host(Tk::Mmio);
    ASSERT_TRUE(evil().up({.size = 16}).has_value());
    log_sink().clear();
    std::vector<int> acked;
    bool full = false;
    for (int k = 0; k < 200 && !full; ++k) {
        auto w = evil().write(std::uint64_t(k) * 8, pattern(100 + k));
        ASSERT_TRUE(w.has_value()) << w.error().describe();
        if (*w == kStatusOk) acked.push_back(k);
        else full = *w == kStatusIoErr;
    }
    ASSERT_TRUE(full) << "the small file system never filled up";
    EXPECT_FALSE(acked.empty());
    EXPECT_TRUE(log_sink().wait_for({evil_queue(), "OUT", "No space left on device"})) << dump_lines(evil_label());
    expect_honest_progress();
    // Everything acknowledged is there, through the guest and in the file.
    std::vector<std::byte> back(4096);
    for (int k : acked) {
        auto r = evil().read(std::uint64_t(k) * 8, back);
        ASSERT_TRUE(r.has_value());
        EXPECT_EQ(*r, kStatusOk);
        EXPECT_EQ(back, pattern(100 + k)) << "acknowledged write " << k;
    }
    // Space comes back: writes work again, no reset needed.
    fs::remove(tmpfs_ / "filler");
    auto w = evil().write(std::uint64_t(acked.size() + 1) * 8, pattern(99));
    ASSERT_TRUE(w.has_value());
    EXPECT_EQ(*w, kStatusOk);
    EXPECT_FALSE(evil().needs_reset());
}

TEST_F(Fault, DiskStallingForSecondsKeepsEveryRegisterAccessAnswered) {
    // A vCPU whose access is not answered within 1 s reports an error here.
    xen::sim::SimOptions opts;
    opts.ioreq_timeout = 1000ms;
    with_fuse_disk(Tk::MmioNb, opts);
    if (IsSkipped()) return;
    disk_->stall_ms = 2500;
    // One write goes into the stalled disk.
    auto data = pattern(6);
    std::memcpy(evil().data_ro.ptr, data.data(), data.size());
    devices::blk::OutHdr h{devices::blk::req::kOut, 0, 24};
    std::memcpy(evil().hdr.ptr, &h, sizeof h);
    auto d = evil().data_ro;
    d.len = 4096;
    ASSERT_TRUE(evil().q().chain().add(evil().hdr, false).add(d, false).add(evil().status_buf, true).submit().has_value());
    ASSERT_TRUE(evil().t().notify(0).has_value());
    // The guest resets the device while its write is stuck: through ACCESS
    // the reset is accepted at once and ACCESS reads BUSY until it is done.
    auto& io = dynamic_cast<guest::NbRegisterIo&>(evil().t().regs());
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(io.start(nb::command(true, 4, transport::mmio_reg::kStatus), 0).has_value());
    const std::uint64_t honest_before = writer_->rounds();
    {
        // nonblocking.md guarantee 2: a second access while BUSY sets
        // ERROR_RETRY and changes nothing else (here: DRIVER_OK etc. must
        // not reach the status register).
        auto a = evil().sim().mmio_read(0, io.access_addr(), 4);
        ASSERT_TRUE(a.has_value());
        ASSERT_TRUE(*a & nb::kBusy) << "the reset did not wait for the stalled write";
        ASSERT_TRUE(evil().sim().mmio_write(0, io.access_addr() + 4, 4, 0x0f).has_value());
        ASSERT_TRUE(evil().sim().mmio_write(0, io.access_addr(), 4, nb::command(true, 4, transport::mmio_reg::kStatus)).has_value());
        auto b = evil().sim().mmio_read(0, io.access_addr(), 4);
        ASSERT_TRUE(b.has_value());
        EXPECT_TRUE(*b & nb::kErrorRetry) << std::hex << *b;
        EXPECT_FALSE(*b & nb::kErrorInvalid) << std::hex << *b;
        EXPECT_TRUE(*b & nb::kBusy) << std::hex << *b;
    }
    std::uint64_t polls = 0, busy_polls = 0;
    std::chrono::nanoseconds worst{0};
    for (;;) {
        const auto a0 = std::chrono::steady_clock::now();
        auto a = evil().sim().mmio_read(0, io.access_addr(), 4);
        worst = std::max(worst, std::chrono::steady_clock::now() - a0);
        ASSERT_TRUE(a.has_value()) << "a trapped access was not answered: " << a.error().describe();
        ++polls;
        if (!(*a & nb::kBusy)) break;
        ++busy_polls;
        ASSERT_LT(std::chrono::steady_clock::now() - t0, 15s) << "the reset never completed";
        std::this_thread::sleep_for(1ms);
    }
    const auto stalled_for = std::chrono::steady_clock::now() - t0;
    EXPECT_GT(busy_polls, 100u) << "the reset did not wait for the stalled write";
    EXPECT_GE(stalled_for, 1500ms);
    EXPECT_LT(worst, 500ms) << "one trapped access took " << std::chrono::duration<double>(worst).count() << " s";
    EXPECT_GT(writer_->rounds(), honest_before + 5) << "the honest guest was held up by the other guest's disk";
    EXPECT_EQ(evil().status(), 0) << "the access refused while BUSY reached the status register";
    EXPECT_EQ(evil().sim().mapped_refs(), 0u);
    // The write that was in the kernel completed before the reset finished.
    EXPECT_EQ(disk_->bytes(24 * 512, 4096), data);
    disk_->stall_ms = 0;
    auto r = evil().up({.size = 16});
    ASSERT_TRUE(r.has_value()) << r.error().describe();
    auto w = evil().write(32, pattern(7));
    ASSERT_TRUE(w.has_value());
    EXPECT_EQ(*w, kStatusOk);
    RecordProperty("polls_while_busy", int(busy_polls));
}

TEST_F(Fault, GuestDiesWithIoStalledInTheDisk) {
    with_fuse_disk(Tk::Pci);
    if (IsSkipped()) return;
    disk_->stall_ms = 800;
    for (int k = 0; k < 5; ++k) {
        devices::blk::OutHdr h{devices::blk::req::kOut, 0, std::uint64_t(k) * 8};
        auto hb = evil().q().alloc(16, true);
        ASSERT_TRUE(hb.has_value());
        std::memcpy(hb->ptr, &h, sizeof h);
        ASSERT_TRUE(evil().q().chain().add(*hb, false).readable(4096, std::byte(k)).writable(1).submit().has_value());
    }
    ASSERT_TRUE(evil().t().notify(0).has_value());
    std::this_thread::sleep_for(100ms);
    evil_.reset();
    ASSERT_TRUE(host_->sim->destroy_domain(evil_dom_).has_value());
    expect_honest_progress();  // while the dead guest's I/O is still stuck
    EXPECT_TRUE(Host::eventually([&] { return host_->manager->sessions().size() == 1; }, 20s));
    EXPECT_TRUE(Host::eventually([&] { return host_->sim->zombies().empty(); }, 20s))
        << "the dead guest's grants stay mapped";
    EXPECT_TRUE(Host::eventually([&] { return host_->sim->resources().ioreq_servers == 1; }, 20s));
    expect_honest_progress();
}

TEST_F(Fault, XenstoreGoingAwayAndComingBack) {
    start_host(Tk::Mmio);
    ASSERT_TRUE(evil().up({.size = 16}).has_value());
    host_->sim->set_xenstore_up(false);
    // A rescan while xenstored is gone (a watch wakeup, a signal) must not
    // take the guests for gone.
    host_->on_io([&] { host_->manager->rescan(); });
    EXPECT_TRUE(log_sink().wait_for({"xenstore"})) << "nothing logged about the lost xenstore";
    EXPECT_EQ(host_->manager->sessions().size(), 2u) << "a xenstore outage stopped served guests";
    expect_honest_progress();
    auto w = evil().write(8, pattern(8));
    ASSERT_TRUE(w.has_value()) << w.error().describe();
    EXPECT_EQ(*w, kStatusOk);
    // A guest that dies during the outage is noticed once xenstore is back.
    evil_.reset();
    ASSERT_TRUE(host_->sim->destroy_domain(evil_dom_).has_value());
    std::this_thread::sleep_for(50ms);
    host_->sim->set_xenstore_up(true);
    EXPECT_TRUE(Host::eventually([&] { return host_->manager->sessions().size() == 1; }))
        << "the guest that died during the outage is still served";
    EXPECT_TRUE(Host::eventually([&] { return host_->sim->resources().ioreq_servers == 1; }));
    // And the watches work again: a new guest is picked up.
    auto late = host_->create_guest("evil");
    ASSERT_TRUE(late.has_value());
    ASSERT_TRUE(host_->announce_mmio(*late, 0).has_value());
    EXPECT_TRUE(Host::eventually([&] { return host_->manager->sessions().size() == 2; }))
        << "no watch fired after xenstore came back";
    expect_honest_progress();
}

TEST_F(Fault, TapDisappearingKeepsTheGuestSane) {
    if (!g_ns_error.empty()) GTEST_SKIP() << "no private network namespace: " << g_ns_error;
    evil_device_ = "[[device]]\nguest = \"evil\"\ntype = \"net\"\ntap = \"xvh-evil0\"\n";
    evil_compatible_ = "virtio,device1";
    start_host(Tk::Mmio);
    ASSERT_EQ(host_->manager->sessions().size(), 2u);
    auto g = host_->sim->guest(evil_dom_);
    auto t = guest::make_mmio_guest(*g, kBase, false);
    ASSERT_TRUE(t.has_value()) << t.error().describe();
    auto rx = guest::VirtqueueDriver::create(*g, {.size = 16, .index = 0});
    auto tx = guest::VirtqueueDriver::create(*g, {.size = 16, .index = 1});
    ASSERT_TRUE(rx.has_value() && tx.has_value());
    namespace feat = transport::feature;
    auto f = (*t)->bring_up(feat::bit(feat::kVersion1) | feat::bit(feat::kAccessPlatform), {rx->get(), tx->get()});
    ASSERT_TRUE(f.has_value()) << f.error().describe();
    for (int i = 0; i < 8; ++i) ASSERT_TRUE((*rx)->chain().writable(2048).submit().has_value());
    ASSERT_TRUE((*t)->notify(0).has_value());
    // One frame: virtio_net_hdr (12 bytes with VERSION_1) + a broadcast frame.
    auto send = [&](int n) -> bool {
        std::vector<std::byte> frame(12 + 60, std::byte{0});
        for (int i = 0; i < 6; ++i) frame[12 + i] = std::byte{0xff};
        frame[12 + 12] = std::byte{0x88};
        frame[12 + 13] = std::byte{0xb5};
        frame[12 + 14] = std::byte(n);
        if (!(*tx)->chain().readable(frame).submit()) return false;
        if (!(*t)->notify(1)) return false;
        for (int i = 0; i < 500; ++i) {
            if ((*tx)->next_used()) return true;
            std::this_thread::sleep_for(1ms);
        }
        return false;
    };
    ASSERT_TRUE(send(0)) << "a frame to the live tap never came back";
    ASSERT_EQ(std::system("ip link del xvh-evil0"), 0) << "cannot delete the tap";
    log_sink().clear();
    // Every frame still comes back (dropped, logged); the device does not break.
    for (int n = 1; n <= 20; ++n) ASSERT_TRUE(send(n)) << "frame " << n << " after the tap went away never came back";
    EXPECT_TRUE(log_sink().wait_for({"dom" + std::to_string(evil_dom_) + " net0", "xvh-evil0"}))
        << dump_lines("net0");
    auto st = (*t)->status();
    ASSERT_TRUE(st.has_value());
    EXPECT_FALSE(*st & transport::status::kNeedsReset);
    expect_honest_progress();
    // The guest can still reset its device.
    EXPECT_TRUE((*t)->reset().has_value());
}

// --- a worker killed with SIGKILL while it writes ------------------------------------

/// The child: its own simulated host, daemon and guest, writing fresh
/// sectors and reporting each acknowledged write ("W k") and each
/// completed FLUSH ("F k": every write up to k) on `fd`. Never returns.
[[noreturn]] void writer_child(int fd, const fs::path& image) {
    auto say = [fd](const std::string& s) {
        if (::write(fd, s.data(), s.size()) != ssize_t(s.size())) _exit(3);
    };
    Host host(R"(
[[domain]]
id = 0
roles = ["hardware", "control"]
class = "safe"

[[domain]]
name = "w"
roles = ["domu"]
class = "unsafe"

[[device]]
guest = "w"
type = "blk"
path = ")" + image.string() + "\"\n");
    auto dom = host.create_guest("w");
    if (!dom || !host.announce_mmio(*dom, 0) || !host.start()) _exit(4);
    auto b = BlkGuest::attach(host.sim->guest(*dom), Tk::Mmio);
    if (!b || !(*b)->up({.size = 16})) _exit(5);
    say("R\n");
    for (std::uint64_t k = 0; k < 2040; ++k) {
        auto w = (*b)->write(k * 8, pattern(k));
        if (!w || *w != kStatusOk) _exit(6);
        say("W " + std::to_string(k) + "\n");
        if (k % 16 == 15) {
            auto f = (*b)->flush();
            if (!f || *f != kStatusOk) _exit(7);
            say("F " + std::to_string(k) + "\n");
        }
    }
    say("D\n");
    for (;;) ::pause();
}

TEST(WorkerKill, EveryAcknowledgedWriteSurvivesSigkill) {
    TempImage img(8 << 20);
    int p[2];
    ASSERT_EQ(::pipe(p), 0);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::close(p[0]);
        writer_child(p[1], img.path);
    }
    ::close(p[1]);
    // Read acknowledgements until enough arrived, then kill mid-stream.
    std::string buf;
    std::set<std::uint64_t> acked;
    std::uint64_t flushed_upto = 0;
    bool flushed_any = false, ready = false;
    auto parse = [&](bool all) {
        std::size_t pos;
        while ((pos = buf.find('\n')) != std::string::npos) {
            std::string line = buf.substr(0, pos);
            buf.erase(0, pos + 1);
            if (line == "R") ready = true;
            else if (line.rfind("W ", 0) == 0) acked.insert(std::stoull(line.substr(2)));
            else if (line.rfind("F ", 0) == 0) {
                flushed_upto = std::stoull(line.substr(2));
                flushed_any = true;
            }
        }
        (void)all;
    };
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    char chunk[4096];
    while (acked.size() < 300 && std::chrono::steady_clock::now() < deadline) {
        ssize_t n = ::read(p[0], chunk, sizeof chunk);
        if (n <= 0) break;
        buf.append(chunk, std::size_t(n));
        parse(false);
    }
    ASSERT_TRUE(ready) << "the worker never came up";
    ASSERT_GE(acked.size(), 300u) << "the worker stopped early";
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
    // Acknowledgements already in the pipe were acknowledged before the kill.
    for (;;) {
        ssize_t n = ::read(p[0], chunk, sizeof chunk);
        if (n <= 0) break;
        buf.append(chunk, std::size_t(n));
    }
    parse(true);
    ::close(p[0]);
    EXPECT_TRUE(flushed_any);
    // Every acknowledged write (and everything a completed FLUSH covered) is in the image.
    std::ifstream f(img.path, std::ios::binary);
    std::vector<std::byte> back(4096);
    std::size_t bad = 0;
    for (std::uint64_t k : acked) {
        f.seekg(std::streamoff(k * 8 * 512));
        f.read(reinterpret_cast<char*>(back.data()), 4096);
        if (back != pattern(k) && bad++ < 5) ADD_FAILURE() << "acknowledged write " << k << " is not in the image";
    }
    for (std::uint64_t k = 0; k <= flushed_upto; ++k)
        EXPECT_TRUE(acked.count(k)) << "FLUSH " << flushed_upto << " completed before write " << k << " was acknowledged";
    EXPECT_EQ(bad, 0u);
    RecordProperty("acknowledged_before_kill", int(acked.size()));
}

}  // namespace
}  // namespace xv::hostile
