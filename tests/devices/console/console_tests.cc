// SPDX-License-Identifier: GPL-2.0-only
// virtio-console from the guest side: simulated guest queues, the host side
// through the real pty, unix socket and log file.
#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <fstream>
#include <sstream>
#include <thread>

#include "xv/devices/console.h"
#include "xv/test/queue_harness.h"

namespace xv {
namespace {

using namespace std::chrono_literals;
using devices::ConsoleConfig;
namespace cf = devices::console_feature;

/// A console device on two simulated guest queues, the loop on a thread.
class ConsoleTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir = std::filesystem::temp_directory_path() /
              ("xv-console-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
        std::filesystem::create_directories(dir);
    }
    void TearDown() override {
        stop();
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
    }

    /// `nq`: queues the driver enables (0: all the device has).
    void start(ConsoleConfig cfg, std::uint64_t features = (1ULL << cf::kSize) | (1ULL << cf::kEmergWrite),
               std::uint16_t nq = 2) {
        auto hh = test::QueueHarness::create();
        ASSERT_TRUE(hh) << hh.error().describe();
        h = std::move(*hh);
        auto d = devices::make_console_device(cfg, {h->domid, "console0"}, h->io.get_executor());
        ASSERT_TRUE(d) << d.error().describe();
        dev = std::move(*d);
        guard.emplace(h->io.get_executor());
        loop = std::thread([this] { h->io.run(); });
        if (nq == 0) nq = dev->num_queues();
        activate(features, nq);
    }

    /// Activates the device on `nq` fresh queues (after a reset).
    void activate(std::uint64_t features, std::uint16_t nq) {
        q.clear();
        drv.clear();
        transport::ActivateContext ctx;
        ctx.features = features | transport::feature::bit(transport::feature::kVersion1);
        for (std::uint16_t i = 0; i < nq; ++i) {
            test::DriverOptions o;
            o.size = 64;
            o.index = i;
            o.log_name = "console0 q" + std::to_string(i);
            auto dr = h->driver(o);
            ASSERT_TRUE(dr);
            auto vq = h->queue(**dr);
            ASSERT_TRUE(vq);
            ctx.queues.push_back(vq->get());
            drv.push_back(std::move(*dr));
            q.push_back(std::move(*vq));
        }
        ctl_bufs.clear();
        ctx.config_changed = [this] { ++config_changes; };
        ctx.needs_reset = [this](const Error&) { ++needs_reset; };
        ASSERT_TRUE(dev->activate(std::move(ctx)));
    }

    void stop() {
        if (dev) dev->reset([] {});
        if (guard) {
            guard.reset();
            h->io.stop();
        }
        if (loop.joinable()) loop.join();
        q.clear();
        dev.reset();
    }

    void kick(std::uint16_t i) {
        auto* d = dev.get();
        boost::asio::post(q[i]->strand(), [d, i] { d->queue_notify(i); });
    }

    std::optional<test::UsedElem> wait_used(std::uint16_t i, std::chrono::milliseconds t = 3000ms) {
        auto end = std::chrono::steady_clock::now() + t;
        for (;;) {
            if (auto u = drv[i]->next_used()) return u;
            if (std::chrono::steady_clock::now() > end) return std::nullopt;
            std::this_thread::sleep_for(200us);
        }
    }

    /// The guest writes `text` on port 0.
    void guest_write(std::string_view text) {
        ASSERT_TRUE(drv[1]->chain().readable(text).submit());
        kick(1);
        auto u = wait_used(1);
        ASSERT_TRUE(u);
        EXPECT_EQ(u->len, 0u);
    }

    /// Posts `n` receive buffers of `len` bytes.
    std::vector<test::Submitted> post_rx(int n, std::uint32_t len) {
        std::vector<test::Submitted> v;
        for (int i = 0; i < n; ++i) {
            auto s = drv[0]->chain().writable(len).submit();
            EXPECT_TRUE(s);
            if (s) v.push_back(*s);
        }
        kick(0);
        return v;
    }

    /// Collects `want` bytes of guest input from used rx chains in `bufs`.
    std::string collect_rx(const std::vector<test::Submitted>& bufs, std::size_t want, std::chrono::milliseconds t = 3000ms) {
        std::string got;
        while (got.size() < want) {
            auto u = wait_used(0, t);
            if (!u) break;
            for (auto& b : bufs)
                if (b.id == u->id) got += b.buf(0).str().substr(0, u->len);
        }
        return got;
    }

    static std::string read_fd(int fd, std::size_t want, std::chrono::milliseconds t = 3000ms) {
        std::string got;
        auto end = std::chrono::steady_clock::now() + t;
        while (got.size() < want && std::chrono::steady_clock::now() < end) {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            char b[4096];
            ssize_t n = ::read(fd, b, sizeof b);
            if (n <= 0) break;
            got.append(b, static_cast<std::size_t>(n));
        }
        return got;
    }

    static std::string file(const std::filesystem::path& p) {
        std::ifstream f(p);
        std::stringstream s;
        s << f.rdbuf();
        return s.str();
    }

    /// Waits until the log file holds at least `n` bytes.
    std::string wait_log(std::size_t n) {
        for (int i = 0; i < 300; ++i) {
            auto s = file(dir / "console.log");
            if (s.size() >= n) return s;
            std::this_thread::sleep_for(10ms);
        }
        return file(dir / "console.log");
    }

    int connect_client() {
        int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, dev->socket_path().c_str(), sizeof a.sun_path - 1);
        if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
            ::close(s);
            return -1;
        }
        return s;
    }

    /// One control message (virtio 1.2 §5.3.6.2).
    struct Ctl {
        std::uint32_t id = 0;
        std::uint16_t event = 0, value = 0;
        std::string payload;
    };

    static std::string ctl_bytes(std::uint32_t id, std::uint16_t event, std::uint16_t value) {
        std::string m(8, '\0');
        for (int i = 0; i < 4; ++i) m[i] = char(id >> (8 * i));
        m[4] = char(event);
        m[5] = char(event >> 8);
        m[6] = char(value);
        m[7] = char(value >> 8);
        return m;
    }

    /// The driver sends raw bytes on the control transmitq (queue 3).
    void ctl_send_raw(std::string_view bytes) {
        ASSERT_TRUE(drv[3]->chain().readable(bytes).submit());
        kick(3);
        auto u = wait_used(3);
        ASSERT_TRUE(u);
        EXPECT_EQ(u->len, 0u);
    }
    void ctl_send(std::uint32_t id, std::uint16_t event, std::uint16_t value) {
        ctl_send_raw(ctl_bytes(id, event, value));
    }

    /// Posts `n` control receive buffers (queue 2) of `len` bytes.
    void ctl_post(int n, std::uint32_t len = 4096) {
        for (int i = 0; i < n; ++i) {
            auto sb = drv[2]->chain().writable(len).submit();
            ASSERT_TRUE(sb);
            ctl_bufs.emplace(sb->id, *sb);
        }
        kick(2);
    }

    /// The next device control message, if one comes within `t`.
    std::optional<Ctl> ctl_next(std::chrono::milliseconds t = 3000ms) {
        auto u = wait_used(2, t);
        if (!u) return std::nullopt;
        auto it = ctl_bufs.find(u->id);
        if (it == ctl_bufs.end() || u->len < 8) return Ctl{0xffffffffu, 0xffff, 0xffff, "bad used element"};
        std::string m = it->second.buf(0).str().substr(0, u->len);
        ctl_bufs.erase(it);
        auto b = [&](int i) { return std::uint32_t(std::uint8_t(m[std::size_t(i)])); };
        return Ctl{b(0) | b(1) << 8 | b(2) << 16 | b(3) << 24, std::uint16_t(b(4) | b(5) << 8),
                   std::uint16_t(b(6) | b(7) << 8), m.substr(8)};
    }

    /// Posts `n` receive buffers of `len` bytes on port `p`'s receiveq.
    std::vector<test::Submitted> post_port_rx(std::size_t p, int n, std::uint32_t len) {
        const std::uint16_t qi = p == 0 ? 0 : std::uint16_t(2 * p + 2);
        std::vector<test::Submitted> v;
        for (int i = 0; i < n; ++i) {
            auto sb = drv[qi]->chain().writable(len).submit();
            EXPECT_TRUE(sb);
            if (sb) v.push_back(*sb);
        }
        kick(qi);
        return v;
    }

    /// Collects `want` bytes from port `p`'s used receive chains.
    std::string collect_port_rx(std::size_t p, const std::vector<test::Submitted>& bufs, std::size_t want,
                                std::chrono::milliseconds t = 3000ms) {
        const std::uint16_t qi = p == 0 ? 0 : std::uint16_t(2 * p + 2);
        std::string got;
        while (got.size() < want) {
            auto u = wait_used(qi, t);
            if (!u) break;
            for (auto& b : bufs)
                if (b.id == u->id) got += b.buf(0).str().substr(0, u->len);
        }
        return got;
    }

    int connect_to(const std::string& path) {
        int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
        if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
            ::close(s);
            return -1;
        }
        return s;
    }

    std::map<std::uint16_t, test::Submitted> ctl_bufs;
    static inline std::atomic<int> counter{0};
    std::filesystem::path dir;
    std::unique_ptr<test::QueueHarness> h;
    std::unique_ptr<devices::ConsoleDevice> dev;
    std::vector<std::unique_ptr<test::VirtqueueDriver>> drv;
    std::vector<std::unique_ptr<transport::Virtqueue>> q;
    std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guard;
    std::thread loop;
    std::atomic<int> config_changes{0};
    std::atomic<int> needs_reset{0};
};

ConsoleConfig pty_cfg(const std::filesystem::path& log = {}) {
    ConsoleConfig c;
    c.backend = ConsoleConfig::Backend::Pty;
    c.log_path = log.string();
    c.winsize_poll = 20ms;
    return c;
}

TEST_F(ConsoleTest, GuestOutputAppearsOnPtyAndInLog) {
    start(pty_cfg(dir / "console.log"));
    ASSERT_FALSE(dev->pty_path().empty());
    int s = ::open(dev->pty_path().c_str(), O_RDWR | O_NOCTTY | O_NONBLOCK);
    ASSERT_GE(s, 0) << dev->pty_path();
    guest_write("hello\r\nworld\n");
    EXPECT_EQ(read_fd(s, 13), "hello\r\nworld\n");  // raw: no translation, no echo
    EXPECT_EQ(wait_log(13), "hello\r\nworld\n");
    EXPECT_EQ(dev->stats().out_bytes, 13u);
    ::close(s);
}

TEST_F(ConsoleTest, PtyInputReachesGuestInOrderThroughSmallBuffers) {
    start(pty_cfg());
    int s = ::open(dev->pty_path().c_str(), O_RDWR | O_NOCTTY);
    ASSERT_GE(s, 0);
    std::string input;
    for (int i = 0; i < 3000; ++i) input += char('a' + i % 26);
    // The pty holds only part of the input while the guest posts no rx
    // buffers (backpressure): a writer thread keeps writing as it drains.
    ::fcntl(s, F_SETFL, ::fcntl(s, F_GETFL) | O_NONBLOCK);
    std::thread writer([&] {
        std::size_t done = 0;
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (done < input.size() && std::chrono::steady_clock::now() < deadline) {
            ssize_t n = ::write(s, input.data() + done, input.size() - done);
            if (n > 0) {
                done += std::size_t(n);
                continue;
            }
            pollfd p{s, POLLOUT, 0};
            (void)::poll(&p, 1, 50);
        }
    });
    // Fewer buffers than the input needs: the rest waits, in order.
    auto bufs = post_rx(20, 64);
    std::string got = collect_rx(bufs, 20 * 64);
    EXPECT_EQ(got, input.substr(0, 20 * 64));
    EXPECT_FALSE(wait_used(0, 200ms)) << "input delivered without buffers";
    auto more = post_rx(40, 64);
    got += collect_rx(more, input.size() - got.size());
    writer.join();
    EXPECT_EQ(got, input);
    EXPECT_EQ(dev->stats().in_bytes, input.size());
    ::close(s);
}

TEST_F(ConsoleTest, SocketReplaysDetachedOutputOnAttachAndCarriesInput) {
    ConsoleConfig c;
    c.backend = ConsoleConfig::Backend::Socket;
    c.socket_path = (dir / "c.sock").string();
    start(c, 1ULL << cf::kEmergWrite);
    EXPECT_FALSE(dev->attached());
    EXPECT_FALSE(dev->device_features() & (1ULL << cf::kSize));  // no window size on a socket
    guest_write("boot messages\n");
    int cl = connect_client();
    ASSERT_GE(cl, 0);
    EXPECT_EQ(read_fd(cl, 14), "boot messages\n");
    guest_write("live\n");
    EXPECT_EQ(read_fd(cl, 5), "live\n");
    EXPECT_TRUE(dev->attached());
    // A second client is turned away while the first is attached.
    int cl2 = connect_client();
    if (cl2 >= 0) {
        EXPECT_EQ(read_fd(cl2, 1, 500ms), "");
        ::close(cl2);
    }
    auto bufs = post_rx(4, 64);
    ASSERT_EQ(::write(cl, "ls -l\n", 6), 6);
    EXPECT_EQ(collect_rx(bufs, 6), "ls -l\n");
    // Detach, write, re-attach: the output kept meanwhile comes first.
    ::close(cl);
    for (int i = 0; i < 100 && dev->attached(); ++i) std::this_thread::sleep_for(10ms);
    EXPECT_FALSE(dev->attached());
    guest_write("while away\n");
    cl = connect_client();
    ASSERT_GE(cl, 0);
    EXPECT_EQ(read_fd(cl, 11), "while away\n");
    EXPECT_EQ(dev->stats().attaches, 2u);
    ::close(cl);
}

TEST_F(ConsoleTest, ClientLeavingWhileGuestWritesLosesNoInput) {
    // virtio 1.2 §5.3: all host input reaches the guest, in order. A client
    // sends more than the device reads at once, then leaves while the guest
    // has no receive buffers; the guest writes (the send to the gone client
    // fails) and only then posts buffers: all of the input must arrive.
    ConsoleConfig c;
    c.backend = ConsoleConfig::Backend::Socket;
    c.socket_path = (dir / "c.sock").string();
    start(c, 1ULL << cf::kEmergWrite);
    int cl = connect_client();
    ASSERT_GE(cl, 0);
    for (int i = 0; i < 100 && !dev->attached(); ++i) std::this_thread::sleep_for(10ms);
    ASSERT_TRUE(dev->attached());
    std::string input;
    for (int i = 0; i < 3 * 4096 + 123; ++i) input += char('A' + i % 23);
    ASSERT_EQ(::write(cl, input.data(), input.size()), ssize_t(input.size()));
    std::this_thread::sleep_for(100ms);  // the device reads its first chunk
    ::close(cl);
    guest_write("bye\n");
    std::this_thread::sleep_for(100ms);  // the host side tries to send it
    auto bufs = post_rx(60, 256);
    EXPECT_EQ(collect_rx(bufs, input.size()), input);
    EXPECT_EQ(dev->stats().in_bytes, input.size());
    // Input read to its end, the client is dropped; its output waits for
    // the next client.
    for (int i = 0; i < 300 && dev->attached(); ++i) std::this_thread::sleep_for(10ms);
    EXPECT_FALSE(dev->attached());
    cl = connect_client();
    ASSERT_GE(cl, 0);
    EXPECT_EQ(read_fd(cl, 4), "bye\n");
    ::close(cl);
}

TEST_F(ConsoleTest, DetachedBufferDropsOldestButLogKeepsAll) {
    ConsoleConfig c;
    c.backend = ConsoleConfig::Backend::Socket;
    c.socket_path = (dir / "c.sock").string();
    c.log_path = (dir / "console.log").string();
    c.buffer_bytes = 16;
    start(c);
    const std::string all = "0123456789abcdefghijklmnopqrstuvwxyzABCD";  // 40 bytes
    guest_write(all.substr(0, 20));
    guest_write(all.substr(20));
    EXPECT_EQ(wait_log(40), all);
    int cl = connect_client();
    ASSERT_GE(cl, 0);
    EXPECT_EQ(read_fd(cl, 16), all.substr(24));
    EXPECT_EQ(dev->stats().out_dropped, 24u);
    ::close(cl);
}

TEST_F(ConsoleTest, WindowSizeChangeUpdatesConfigAndNotifies) {
    start(pty_cfg());
    std::array<std::byte, 4> c{};
    dev->read_config(0, c);
    EXPECT_EQ(std::to_integer<int>(c[0]), 80);
    EXPECT_EQ(std::to_integer<int>(c[2]), 24);
    int s = ::open(dev->pty_path().c_str(), O_RDWR | O_NOCTTY);
    ASSERT_GE(s, 0);
    winsize ws{};
    ws.ws_col = 300;
    ws.ws_row = 43;
    ASSERT_EQ(::ioctl(s, TIOCSWINSZ, &ws), 0);
    for (int i = 0; i < 200 && config_changes == 0; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_GE(config_changes.load(), 1);
    dev->read_config(0, c);
    EXPECT_EQ(std::to_integer<int>(c[0]) | std::to_integer<int>(c[1]) << 8, 300);
    EXPECT_EQ(std::to_integer<int>(c[2]) | std::to_integer<int>(c[3]) << 8, 43);
    EXPECT_EQ(dev->window_size(), (std::pair<std::uint16_t, std::uint16_t>{300, 43}));
    ::close(s);
}

TEST_F(ConsoleTest, WindowSizeChangeIsSilentWithoutFSize) {
    start(pty_cfg(), 1ULL << cf::kEmergWrite);
    int s = ::open(dev->pty_path().c_str(), O_RDWR | O_NOCTTY);
    ASSERT_GE(s, 0);
    winsize ws{};
    ws.ws_col = 100;
    ws.ws_row = 30;
    ASSERT_EQ(::ioctl(s, TIOCSWINSZ, &ws), 0);
    for (int i = 0; i < 100 && dev->window_size().first != 100; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(dev->window_size().first, 100);
    EXPECT_EQ(config_changes.load(), 0);
    ::close(s);
}

TEST_F(ConsoleTest, EmergWriteEmitsOneCharacter) {
    start(pty_cfg(dir / "console.log"));
    int s = ::open(dev->pty_path().c_str(), O_RDWR | O_NOCTTY | O_NONBLOCK);
    ASSERT_GE(s, 0);
    std::array<std::byte, 4> v{std::byte('X'), std::byte(0), std::byte(0), std::byte(0)};
    dev->write_config(8, v);
    std::array<std::byte, 1> v2{std::byte('Y')};
    dev->write_config(8, v2);
    std::array<std::byte, 2> ro{std::byte(1), std::byte(2)};
    dev->write_config(0, ro);  // cols: read-only, ignored
    EXPECT_EQ(read_fd(s, 2), "XY");
    EXPECT_EQ(wait_log(2), "XY");
    EXPECT_EQ(dev->stats().emerg_chars, 2u);
    std::array<std::byte, 2> c{};
    dev->read_config(0, c);
    EXPECT_EQ(std::to_integer<int>(c[0]), 80);
    ::close(s);
}

TEST_F(ConsoleTest, BadChainsAreReturnedAndDataStillFlows) {
    start(pty_cfg());
    int s = ::open(dev->pty_path().c_str(), O_RDWR | O_NOCTTY | O_NONBLOCK);
    ASSERT_GE(s, 0);
    // A receive chain with nothing device-writable, then a good one.
    ASSERT_TRUE(drv[0]->chain().readable(std::uint32_t(16)).submit());
    auto good = post_rx(1, 32);
    ASSERT_EQ(::write(s, "abc", 3), 3);
    auto u1 = wait_used(0);
    ASSERT_TRUE(u1);
    EXPECT_EQ(u1->len, 0u);
    EXPECT_EQ(collect_rx(good, 3), "abc");
    // A transmit chain with a writable part: its readable bytes still go out.
    ASSERT_TRUE(drv[1]->chain().readable("out").writable(8).submit());
    kick(1);
    auto u2 = wait_used(1);
    ASSERT_TRUE(u2);
    EXPECT_EQ(u2->len, 0u);
    EXPECT_EQ(read_fd(s, 3), "out");
    EXPECT_EQ(dev->stats().bad_chains, 2u);
    EXPECT_EQ(needs_reset.load(), 0);
    ::close(s);
}

TEST_F(ConsoleTest, LogBackendAndResetUnmapsEverything) {
    ConsoleConfig c;
    c.backend = ConsoleConfig::Backend::Log;
    c.log_path = (dir / "console.log").string();
    start(c);
    EXPECT_TRUE(dev->pty_path().empty());
    guest_write("only to the log\n");
    EXPECT_EQ(wait_log(16), "only to the log\n");
    post_rx(4, 64);
    bool done = false;
    dev->reset([&] { done = true; });
    EXPECT_TRUE(done);
    guard.reset();
    h->io.stop();
    loop.join();
    q.clear();
    EXPECT_EQ(h->guest->mapped_refs(), 0u);
}

// --- MULTIPORT (virtio 1.2 §5.3.6.2) ------------------------------------------

namespace cc = devices::console_control;
constexpr std::uint64_t kMulti = (1ULL << cf::kSize) | (1ULL << cf::kEmergWrite) | (1ULL << cf::kMultiport);

ConsoleConfig multi_cfg(const std::filesystem::path& dir, std::size_t extra = 1) {
    ConsoleConfig c = pty_cfg();
    for (std::size_t i = 1; i <= extra; ++i)
        c.ports.push_back({"org.example.agent" + std::to_string(i), (dir / ("p" + std::to_string(i) + ".sock")).string()});
    return c;
}

#define EXPECT_CTL(m, i, ev, val)                                   \
    do {                                                            \
        ASSERT_TRUE(m) << "no control message";                     \
        EXPECT_EQ((m)->id, (i));                                    \
        EXPECT_EQ((m)->event, (ev));                                \
        EXPECT_EQ((m)->value, (val));                               \
    } while (0)

TEST_F(ConsoleTest, WithoutExtraPortsMultiportIsNotOffered) {
    start(pty_cfg());
    EXPECT_FALSE(dev->device_features() & (1ULL << cf::kMultiport));
    EXPECT_EQ(dev->num_queues(), 2u);
    EXPECT_EQ(dev->port_count(), 1u);
    std::array<std::byte, 4> m{};
    dev->read_config(4, m);
    EXPECT_EQ(std::to_integer<int>(m[0]), 1);  // max_nr_ports as before
}

TEST_F(ConsoleTest, MultiportOfferedButNotNegotiatedLeavesPortZeroAsBefore) {
    start(multi_cfg(dir), (1ULL << cf::kSize) | (1ULL << cf::kEmergWrite), 2);
    EXPECT_TRUE(dev->device_features() & (1ULL << cf::kMultiport));
    EXPECT_EQ(dev->num_queues(), 6u);
    std::array<std::byte, 4> m{};
    dev->read_config(4, m);
    EXPECT_EQ(std::to_integer<int>(m[0]), 2);
    int s = ::open(dev->pty_path().c_str(), O_RDWR | O_NOCTTY | O_NONBLOCK);
    ASSERT_GE(s, 0);
    guest_write("plain console\n");
    EXPECT_EQ(read_fd(s, 14), "plain console\n");
    auto bufs = post_rx(2, 64);
    ASSERT_EQ(::write(s, "in", 2), 2);
    EXPECT_EQ(collect_rx(bufs, 2), "in");
    EXPECT_EQ(dev->stats().control_out, 0u);
    ::close(s);
}

TEST_F(ConsoleTest, MultiportHandshakeAndDataOnPortOneThroughUnixSocket) {
    start(multi_cfg(dir), kMulti, 0);
    ASSERT_EQ(drv.size(), 6u);
    ctl_post(16);
    // virtio 1.2 §5.3.6.2: DEVICE_READY (id unused) -> DEVICE_ADD per port.
    ctl_send(0xffffffffu, cc::kDeviceReady, 1);
    auto m = ctl_next();
    EXPECT_CTL(m, 0u, cc::kDeviceAdd, 0);
    m = ctl_next();
    EXPECT_CTL(m, 1u, cc::kDeviceAdd, 0);
    // Port 0 ready: it is the console, its size, and its host side (the pty) is open.
    ctl_send(0, cc::kPortReady, 1);
    m = ctl_next();
    EXPECT_CTL(m, 0u, cc::kConsolePort, 1);
    m = ctl_next();
    EXPECT_CTL(m, 0u, cc::kResize, 0);
    ASSERT_EQ(m->payload.size(), 4u);
    EXPECT_EQ(std::uint8_t(m->payload[0]) | std::uint8_t(m->payload[1]) << 8, 80);  // cols
    EXPECT_EQ(std::uint8_t(m->payload[2]) | std::uint8_t(m->payload[3]) << 8, 24);  // rows
    m = ctl_next();
    EXPECT_CTL(m, 0u, cc::kPortOpen, 1);
    // The driver answers CONSOLE_PORT with PORT_OPEN (§5.3.6.2.2).
    ctl_send(0, cc::kPortOpen, 1);
    // Port 1 ready: its name (no NUL); no client yet, so no PORT_OPEN.
    ctl_send(1, cc::kPortReady, 1);
    m = ctl_next();
    EXPECT_CTL(m, 1u, cc::kPortName, 1);
    EXPECT_EQ(m->payload, "org.example.agent1");
    EXPECT_FALSE(ctl_next(200ms));
    // A client attaches on the host side: PORT_OPEN(1, 1).
    int cl = connect_to(dev->port_socket_path(1));
    ASSERT_GE(cl, 0);
    m = ctl_next();
    EXPECT_CTL(m, 1u, cc::kPortOpen, 1);
    EXPECT_TRUE(dev->port_attached(1));
    // The guest opens the port; data both ways.
    ctl_send(1, cc::kPortOpen, 1);
    auto bufs = post_port_rx(1, 4, 64);
    ASSERT_EQ(::write(cl, "ping\n", 5), 5);
    EXPECT_EQ(collect_port_rx(1, bufs, 5), "ping\n");
    ASSERT_TRUE(drv[5]->chain().readable("pong\n").submit());
    kick(5);
    auto u = wait_used(5);
    ASSERT_TRUE(u);
    EXPECT_EQ(u->len, 0u);
    EXPECT_EQ(read_fd(cl, 5), "pong\n");
    // Port 0 is untouched by port 1's traffic.
    int s = ::open(dev->pty_path().c_str(), O_RDWR | O_NOCTTY | O_NONBLOCK);
    ASSERT_GE(s, 0);
    guest_write("console\n");
    EXPECT_EQ(read_fd(s, 8), "console\n");
    // The window follows the pty: RESIZE for port 0.
    winsize ws{};
    ws.ws_col = 132;
    ws.ws_row = 50;
    ASSERT_EQ(::ioctl(s, TIOCSWINSZ, &ws), 0);
    m = ctl_next();
    EXPECT_CTL(m, 0u, cc::kResize, 0);
    ASSERT_EQ(m->payload.size(), 4u);
    EXPECT_EQ(std::uint8_t(m->payload[0]) | std::uint8_t(m->payload[1]) << 8, 132);
    EXPECT_EQ(std::uint8_t(m->payload[2]) | std::uint8_t(m->payload[3]) << 8, 50);
    // The client leaves: PORT_OPEN(1, 0).
    ::close(cl);
    m = ctl_next();
    EXPECT_CTL(m, 1u, cc::kPortOpen, 0);
    EXPECT_EQ(dev->port_stats(1).in_bytes, 5u);
    EXPECT_EQ(dev->port_stats(1).out_bytes, 5u);
    EXPECT_EQ(dev->stats().out_bytes, 8u);
    EXPECT_EQ(dev->stats().bad_control, 0u);
    EXPECT_EQ(dev->stats().control_in, 5u);
    EXPECT_EQ(needs_reset.load(), 0);
    ::close(s);
}

TEST_F(ConsoleTest, MultiportInputWaitsUntilTheGuestOpensThePort) {
    start(multi_cfg(dir), kMulti, 0);
    // The client is there before the driver: PORT_OPEN comes with PORT_READY.
    int cl = connect_to(dev->port_socket_path(1));
    ASSERT_GE(cl, 0);
    for (int i = 0; i < 100 && !dev->port_attached(1); ++i) std::this_thread::sleep_for(10ms);
    ctl_post(8);
    ctl_send(0xffffffffu, cc::kDeviceReady, 1);
    ctl_next();
    ctl_next();
    ctl_send(1, cc::kPortReady, 1);
    auto m = ctl_next();
    EXPECT_CTL(m, 1u, cc::kPortName, 1);
    m = ctl_next();
    EXPECT_CTL(m, 1u, cc::kPortOpen, 1);
    // Input before the guest opened the port waits (a Linux guest drops
    // what reaches a closed port).
    auto bufs = post_port_rx(1, 4, 64);
    ASSERT_EQ(::write(cl, "early", 5), 5);
    EXPECT_FALSE(wait_used(4, 300ms)) << "input delivered to a port the guest has not opened";
    ctl_send(1, cc::kPortOpen, 1);
    EXPECT_EQ(collect_port_rx(1, bufs, 5), "early");
    // Closed again: the next input waits again, then arrives in order.
    ctl_send(1, cc::kPortOpen, 0);
    ASSERT_EQ(::write(cl, "later", 5), 5);
    EXPECT_FALSE(wait_used(4, 300ms));
    ctl_send(1, cc::kPortOpen, 1);
    EXPECT_EQ(collect_port_rx(1, bufs, 5), "later");
    EXPECT_EQ(dev->port_stats(1).in_bytes, 10u);
    ::close(cl);
}

TEST_F(ConsoleTest, MultiportHostileControlMessagesAreIgnored) {
    start(multi_cfg(dir), kMulti, 0);
    ctl_post(8);
    ctl_send(1, cc::kPortReady, 1);           // port not added yet (no DEVICE_READY)
    ctl_send(1, cc::kPortOpen, 1);            // same
    ctl_send(0xffffffffu, 99, 1);             // unknown event
    ctl_send(0, cc::kDeviceAdd, 0);           // a device-to-driver event
    ctl_send(0, cc::kResize, 0);              // same
    ctl_send_raw(std::string("\x01\x00\x00", 3));  // shorter than the header
    ctl_send(0xffffffffu, cc::kDeviceReady, 7);    // value other than 0/1
    EXPECT_FALSE(ctl_next(200ms)) << "a bad message made the device talk";
    EXPECT_EQ(dev->stats().bad_control, 7u);
    // The good handshake still works afterwards.
    ctl_send(0xffffffffu, cc::kDeviceReady, 1);
    auto m = ctl_next();
    EXPECT_CTL(m, 0u, cc::kDeviceAdd, 0);
    m = ctl_next();
    EXPECT_CTL(m, 1u, cc::kDeviceAdd, 0);
    // §5.3.6.2.1: a repeated DEVICE_READY adds no port twice.
    ctl_send(0xffffffffu, cc::kDeviceReady, 1);
    EXPECT_FALSE(ctl_next(200ms));
    // Port ids beyond max_nr_ports, and far beyond.
    ctl_send(2, cc::kPortReady, 1);
    ctl_send(0x7fffffffu, cc::kPortOpen, 1);
    ctl_send(1, cc::kPortOpen, 2);
    // A control receive buffer too small for a message goes back unused;
    // the message comes in the next one.
    ASSERT_TRUE(drv[3]->chain().readable(ctl_bytes(1, cc::kPortReady, 1)).writable(16).submit());  // writable part: still read
    kick(3);
    ASSERT_TRUE(wait_used(3));
    auto u = wait_used(2);  // the first of the 8 buffers posted above takes PORT_NAME
    ASSERT_TRUE(u);
    EXPECT_EQ(u->len, 8u + 18u);
    ctl_bufs.erase(u->id);
    EXPECT_EQ(dev->stats().bad_control, 10u);
    EXPECT_EQ(dev->stats().bad_chains, 1u);
    EXPECT_EQ(needs_reset.load(), 0);
}

TEST_F(ConsoleTest, MultiportControlBufferTooSmallKeepsTheMessage) {
    start(multi_cfg(dir), kMulti, 0);
    ASSERT_TRUE(drv[2]->chain().writable(4).submit());  // too small for any message
    ctl_post(2);
    kick(2);
    ctl_send(0xffffffffu, cc::kDeviceReady, 1);
    auto u = wait_used(2);
    ASSERT_TRUE(u);
    EXPECT_EQ(u->len, 0u);
    auto m = ctl_next();
    EXPECT_CTL(m, 0u, cc::kDeviceAdd, 0);
    m = ctl_next();
    EXPECT_CTL(m, 1u, cc::kDeviceAdd, 0);
    EXPECT_EQ(dev->stats().bad_chains, 1u);
}

TEST_F(ConsoleTest, MultiportControlBacklogIsBounded) {
    start(multi_cfg(dir), kMulti, 0);
    // No control receive buffers at all: each PORT_READY(0) queues three
    // messages (CONSOLE_PORT, RESIZE, PORT_OPEN); the backlog stops growing.
    ctl_send(0xffffffffu, cc::kDeviceReady, 1);
    for (int i = 0; i < 400; ++i) ctl_send(0, cc::kPortReady, 1);
    EXPECT_EQ(dev->stats().control_dropped, 2u + 400u * 3u - 1024u);
    // What was kept arrives, in order.
    ctl_post(60);
    auto m = ctl_next();
    EXPECT_CTL(m, 0u, cc::kDeviceAdd, 0);
    m = ctl_next();
    EXPECT_CTL(m, 1u, cc::kDeviceAdd, 0);
    m = ctl_next();
    EXPECT_CTL(m, 0u, cc::kConsolePort, 1);
}

TEST_F(ConsoleTest, MultiportResetAndRenegotiation) {
    start(multi_cfg(dir, 2), kMulti, 0);
    ASSERT_EQ(drv.size(), 8u);
    ctl_post(8);
    ctl_send(0xffffffffu, cc::kDeviceReady, 1);
    for (std::uint32_t p = 0; p < 3; ++p) {
        auto m = ctl_next();
        EXPECT_CTL(m, p, cc::kDeviceAdd, 0);
    }
    ctl_send(2, cc::kPortReady, 1);
    auto m = ctl_next();
    EXPECT_CTL(m, 2u, cc::kPortName, 1);
    EXPECT_EQ(m->payload, "org.example.agent2");
    // Reset: the next driver starts from scratch and gets every port again.
    bool done = false;
    dev->reset([&] { done = true; });
    EXPECT_TRUE(done);
    activate(kMulti, 8);
    ctl_post(8);
    ctl_send(0xffffffffu, cc::kDeviceReady, 1);
    for (std::uint32_t p = 0; p < 3; ++p) {
        m = ctl_next();
        EXPECT_CTL(m, p, cc::kDeviceAdd, 0);
    }
    // A port-2 client attached now: PORT_OPEN when the port gets ready.
    int cl = connect_to(dev->port_socket_path(2));
    ASSERT_GE(cl, 0);
    for (int i = 0; i < 100 && !dev->port_attached(2); ++i) std::this_thread::sleep_for(10ms);
    ctl_send(2, cc::kPortReady, 1);
    m = ctl_next();
    EXPECT_CTL(m, 2u, cc::kPortName, 1);
    m = ctl_next();
    EXPECT_CTL(m, 2u, cc::kPortOpen, 1);
    ctl_send(2, cc::kPortOpen, 1);
    auto bufs = post_port_rx(2, 2, 64);
    ASSERT_EQ(::write(cl, "two", 3), 3);
    EXPECT_EQ(collect_port_rx(2, bufs, 3), "two");
    // Then a driver without MULTIPORT: the two-queue console.
    dev->reset([] {});
    activate((1ULL << cf::kSize) | (1ULL << cf::kEmergWrite), 2);
    int s = ::open(dev->pty_path().c_str(), O_RDWR | O_NOCTTY | O_NONBLOCK);
    ASSERT_GE(s, 0);
    guest_write("single\n");
    EXPECT_EQ(read_fd(s, 7), "single\n");
    ::close(s);
    ::close(cl);
    dev->reset([] {});
    guard.reset();
    h->io.stop();
    loop.join();
    q.clear();
    drv.clear();
    EXPECT_EQ(h->guest->mapped_refs(), 0u);
}

TEST(ConsoleCreate, BadPortsAreRefused) {
    boost::asio::io_context io;
    auto dir = std::filesystem::temp_directory_path() / ("xv-console-ports-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto make = [&](std::vector<devices::ConsolePortConfig> ports, ConsoleConfig c = ConsoleConfig{}) {
        c.ports = std::move(ports);
        return devices::make_console(c, {3, "console0"}, io.get_executor());
    };
    const std::string a = (dir / "a.sock").string(), b = (dir / "b.sock").string();
    auto r = make({{"", a}});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("dom3 console0: port 1: name '' empty"), std::string::npos) << r.error().message;
    EXPECT_FALSE(make({{"a/b", a}}));
    EXPECT_FALSE(make({{"ok", a}, {"ok", b}}));
    EXPECT_FALSE(make({{"x", a}, {"y", a}}));
    EXPECT_FALSE(make({{"x", ""}}));
    EXPECT_FALSE(make({{std::string(256, 'n'), a}}));
    std::vector<devices::ConsolePortConfig> many;
    for (int i = 0; i < 16; ++i) many.push_back({"p" + std::to_string(i), (dir / ("m" + std::to_string(i))).string()});
    EXPECT_FALSE(make(many));
    ConsoleConfig sock;
    sock.backend = ConsoleConfig::Backend::Socket;
    sock.socket_path = a;
    EXPECT_FALSE(make({{"x", a}}, sock));  // port 0's socket
    EXPECT_TRUE(make({{"x", b}}, sock));
    EXPECT_FALSE(devices::console_port_name_problem("org.qemu.guest_agent.0"));
    EXPECT_TRUE(devices::console_port_name_problem("tab\there"));
    std::filesystem::remove_all(dir);
}


TEST(ConsoleCreate, BadConfigIsRefused) {
    boost::asio::io_context io;
    ConsoleConfig c;
    c.backend = ConsoleConfig::Backend::Log;
    auto r = devices::make_console(c, {3, "console0"}, io.get_executor());
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("dom3 console0"), std::string::npos);
    c.backend = ConsoleConfig::Backend::Socket;
    EXPECT_FALSE(devices::make_console(c, {3, "console0"}, io.get_executor()));
    auto p = std::filesystem::temp_directory_path() / ("xv-notasock-" + std::to_string(::getpid()));
    std::ofstream(p) << "x";
    c.socket_path = p.string();
    EXPECT_FALSE(devices::make_console(c, {3, "console0"}, io.get_executor()));
    EXPECT_TRUE(std::filesystem::exists(p)) << "a regular file was removed";
    std::filesystem::remove(p);
    EXPECT_EQ(devices::console_error_used_len(devices::ConsoleError::RxNotWritable, 5), 0u);
    EXPECT_EQ(devices::console_error_used_len(devices::ConsoleError::None, 5), 5u);
}

}  // namespace
}  // namespace xv
