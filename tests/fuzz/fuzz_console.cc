// SPDX-License-Identifier: GPL-2.0-only
// Fuzz target: virtio-console (devices/console), guest side and host side.
//
// The device serves a real unix socket with one client connected (this
// process). Steps: transmitq chains (output; sometimes with device-writable
// buffers, sometimes longer than the per-chain limit), receiveq chains
// (sometimes without writable space), client input, emergency writes
// (config emerg_wr, virtio 1.2 §5.3.4), config reads at any offset, kicks,
// the client leaving and coming back, and a device reset at the end.
// The device has one extra port, so it offers MULTIPORT (virtio 1.2
// §5.3.6.2): when negotiated, steps also put driver control messages
// (well-formed or not: any id, event, value and length) on the control
// transmitq, buffers on the control receiveq, and data on port 1's queues.
//
// Oracles: bytes travel in order and without loss in both directions
// within one activation (a rolling counter in the data; the first byte of
// an activation and the bytes after a truncated chain resynchronise it;
// input may have one gap per client change, output is not checked after
// one);
// tx chains come back with used length 0 and rx chains with at most their
// writable bytes; device control messages are whole (8-byte header at
// least), carry only device events for existing ports, and add no port twice
// in one activation; reset finishes; no grant page stays mapped.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <fcntl.h>

#include <cerrno>
#include <optional>
#include <set>
#include <string>

#include "device_fuzz.h"
#include "xv/devices/console.h"

namespace {

using namespace xv;
using namespace xv::fuzz::dev;
using xv::fuzz::one_in;
using xv::fuzz::pick;

constexpr std::uint8_t kEmerg = 0xff;  // emergency characters (never a counter value)
constexpr unsigned kMod = 251;

std::unique_ptr<devices::ConsoleDevice> g_dev;
std::string g_path, g_port_path;
int g_client = -1;

/// A byte stream that must arrive in order: a rolling counter mod 251.
struct Stream {
    std::uint8_t next_send = 0;
    std::optional<std::uint8_t> expect;  ///< next value the receiver must see (nullopt: resync)
    bool checking = true;                ///< false once a gap is allowed somewhere ahead
    unsigned gaps = 0;                   ///< single gaps allowed ahead (one per client change)

    std::vector<std::byte> make(std::size_t n) {
        std::vector<std::byte> v(n);
        for (auto& b : v) {
            b = std::byte(next_send);
            next_send = std::uint8_t((next_send + 1) % kMod);
        }
        return v;
    }
    void receive(const std::byte* p, std::size_t n, const char* what) {
        for (std::size_t i = 0; i < n; ++i) {
            const std::uint8_t v = std::uint8_t(p[i]);
            if (v == kEmerg) continue;
            FUZZ_CHECK(v < kMod, "%s: byte %u is not from the stream", what, v);
            if (expect && checking && v != *expect && gaps > 0) --gaps;
            else if (expect && checking) FUZZ_CHECK(v == *expect, "%s: got %u, expected %u (lost, duplicated or reordered data)", what, v, *expect);
            expect = std::uint8_t((v + 1) % kMod);
        }
    }
};

Stream g_out, g_in;  // guest -> client, client -> guest

void connect_client() {
    if (g_client >= 0) ::close(g_client);
    g_client = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", g_path.c_str());
    FUZZ_CHECK(::connect(g_client, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "connect %s: %s", g_path.c_str(),
               std::strerror(errno));
}

void drain_client() {
    std::byte buf[4096];
    for (;;) {
        ssize_t n = ::recv(g_client, buf, sizeof buf, 0);
        if (n <= 0) break;
        g_out.receive(buf, std::size_t(n), "console output");
    }
}

void run(FuzzedDataProvider& in) {
    World& w = World::get();
    const std::uint64_t features = negotiate(in, *g_dev);
    Harness h(w, *g_dev);
    if (!h.activate(features, g_dev->num_queues(), [&](std::uint16_t q) { return !one_in(in, 16) || q > 1; })) return;
    g_out.expect.reset();  // a new activation: in-flight bytes of the last one may be gone
    g_in.expect.reset();
    g_in.gaps = 0;
    g_out.checking = true;
    const bool indirect = features & transport::feature::bit(transport::feature::kIndirectDesc);
    const bool multi = (features >> devices::console_feature::kMultiport) & 1;
    std::set<std::uint32_t> added;  // DEVICE_ADD seen in this activation

    unsigned steps = in.ConsumeIntegralInRange(1, 48);
    for (unsigned i = 0; i < steps && in.remaining_bytes() > 0; ++i) {
        switch (in.ConsumeIntegralInRange(0, 12)) {
            case 0: case 1: {  // transmitq: output
                std::vector<Piece> ps;
                unsigned n = in.ConsumeIntegralInRange(1, 4);
                for (unsigned k = 0; k < n; ++k) {
                    std::size_t len = one_in(in, 16) ? in.ConsumeIntegralInRange<std::size_t>(60000, 70000)
                                                     : in.ConsumeIntegralInRange<std::size_t>(1, 300);
                    // Beyond 64 KiB a chain is truncated (TxTooLong): the output
                    // then has a gap at a point we cannot tell; stop checking
                    // it until the next activation.
                    if (len > 4096) g_out.checking = false;
                    ps.push_back(Piece::in(g_out.make(len)));
                }
                if (one_in(in, 10)) ps.push_back(Piece::out(16));  // TxHasWritable: data still taken
                if (!h.add(1, ps, indirect && one_in(in, 3))) g_out.expect.reset();
                h.notify(1);
                break;
            }
            case 2: case 3: {  // receiveq: buffers for input
                std::vector<Piece> ps;
                if (one_in(in, 12)) ps.push_back(Piece::in(std::vector<std::byte>(8, std::byte{1})));
                else
                    for (unsigned k = in.ConsumeIntegralInRange(1, 3); k > 0; --k)
                        ps.push_back(Piece::out(in.ConsumeIntegralInRange<std::uint32_t>(1, 512)));
                (void)h.add(0, ps, indirect && one_in(in, 3));
                h.notify(0);
                break;
            }
            case 4: {  // client input
                auto bytes = g_in.make(in.ConsumeIntegralInRange<std::size_t>(1, 600));
                ssize_t n = ::send(g_client, bytes.data(), bytes.size(), MSG_NOSIGNAL);
                // Unsent bytes break the counter sequence: rewind it.
                const std::size_t sent = n > 0 ? std::size_t(n) : 0;
                g_in.next_send = std::uint8_t((g_in.next_send + kMod * 8 - (bytes.size() - sent) % kMod) % kMod);
                break;
            }
            case 5: {  // emergency write (and other config writes, ignored)
                std::uint32_t off = in.ConsumeIntegralInRange<std::uint32_t>(0, 11);
                std::uint32_t len = pick<std::uint32_t>(in, {1, 2, 4});
                if (off + len > g_dev->config_size()) break;
                std::vector<std::byte> v(len, std::byte{kEmerg});
                g_dev->write_config(off, v);
                break;
            }
            case 6: {  // config reads (the transport has range-checked them)
                std::uint32_t off = in.ConsumeIntegralInRange<std::uint32_t>(0, g_dev->config_size() - 1);
                std::uint32_t len = in.ConsumeIntegralInRange<std::uint32_t>(1, g_dev->config_size() - off);
                std::vector<std::byte> v(len);
                g_dev->read_config(off, v);
                break;
            }
            case 7:
                if (one_in(in, 8)) {  // the client leaves and comes back
                    drain_client();
                    connect_client();
                    g_out.expect.reset();
                    // Input: what the old client sent and the device had not
                    // read yet goes with it (dropped on a failed write, or
                    // when the new client is refused while the old one is
                    // still attached, and what reaches a refused client is
                    // lost too); what the device had read still reaches
                    // the guest, before the new client's bytes. One gap,
                    // in order on both sides of it (found by this target:
                    // resetting the expectation here let the old client's
                    // bytes resynchronise it, then the gap failed).
                    ++g_in.gaps;
                    // What the device held for the old client may reach the
                    // new one, and what it wrote to the old socket after our
                    // last read is gone: output order is not checked until
                    // the next activation.
                    g_out.checking = false;
                }
                break;
            case 10: {  // MULTIPORT: a driver control message, good or bad
                if (!multi) break;
                const std::uint32_t id = pick<std::uint32_t>(in, {0, 1, 2, 0xffffffffu, in.ConsumeIntegral<std::uint32_t>()});
                const std::uint16_t ev = in.ConsumeIntegralInRange<std::uint16_t>(0, 9);
                const std::uint16_t val = in.ConsumeIntegralInRange<std::uint16_t>(0, 2);
                std::vector<std::byte> m(8);
                for (int k = 0; k < 4; ++k) m[std::size_t(k)] = std::byte(id >> (8 * k));
                m[4] = std::byte(ev & 0xff);
                m[5] = std::byte(ev >> 8);
                m[6] = std::byte(val & 0xff);
                m[7] = std::byte(val >> 8);
                if (one_in(in, 6)) m.resize(in.ConsumeIntegralInRange<std::size_t>(1, 16));  // short or long
                std::vector<Piece> ps{Piece::in(std::move(m))};
                if (one_in(in, 12)) ps.push_back(Piece::out(8));
                (void)h.add(3, ps, indirect && one_in(in, 3));
                h.notify(3);
                break;
            }
            case 11: {  // MULTIPORT: control receive buffers (sometimes too small)
                if (!multi) break;
                (void)h.add(2, {Piece::out(one_in(in, 8) ? in.ConsumeIntegralInRange<std::uint32_t>(1, 11) : 64)},
                            indirect && one_in(in, 3));
                h.notify(2);
                break;
            }
            case 12: {  // MULTIPORT: port 1 output and receive buffers
                if (!multi) break;
                std::vector<std::byte> d(in.ConsumeIntegralInRange<std::size_t>(1, 200), std::byte{'p'});
                (void)h.add(5, {Piece::in(std::move(d))}, false);
                h.notify(5);
                (void)h.add(4, {Piece::out(64)}, false);
                h.notify(4);
                break;
            }
            default:
                h.notify(std::uint16_t(in.ConsumeIntegralInRange(0, 1)));
                break;
        }
        w.poll();
        drain_client();
        for (auto& u : h.reap()) {
            if (u.queue == 1 || u.queue == 3 || u.queue == 5) {
                FUZZ_CHECK(u.len == 0, "transmitq %u chain used with len %u", u.queue, u.len);
                continue;
            }
            std::uint32_t room = 0;
            for (const auto& [off, len] : u.chain.writable) room += len;
            FUZZ_CHECK(u.len <= room, "queue %u: used len %u beyond %u writable bytes", u.queue, u.len, room);
            if (u.queue == 4) continue;  // port 1 input: nothing is sent to it here
            if (u.queue == 2) {
                if (u.len == 0) continue;  // a buffer too small, returned unused
                FUZZ_CHECK(u.len >= 8, "control message of %u bytes", u.len);
                std::vector<std::byte> m;
                std::uint32_t left = u.len;
                for (const auto& [off, len] : u.chain.writable) {
                    const std::uint32_t k = std::min(left, len);
                    m.insert(m.end(), h.rw_bytes(off), h.rw_bytes(off) + k);
                    left -= k;
                }
                auto b = [&](std::size_t k) { return std::uint32_t(std::to_integer<std::uint8_t>(m[k])); };
                const std::uint32_t id = b(0) | b(1) << 8 | b(2) << 16 | b(3) << 24;
                const std::uint32_t ev = b(4) | b(5) << 8;
                FUZZ_CHECK(id < g_dev->port_count(), "control message for port %u of %zu", id, g_dev->port_count());
                FUZZ_CHECK(ev == 1 || ev == 4 || ev == 5 || ev == 6 || ev == 7, "device sent event %u", ev);
                // virtio 1.2 §5.3.6.2.1: never DEVICE_ADD an existing port.
                if (ev == 1) FUZZ_CHECK(added.insert(id).second, "port %u added twice", id);
                continue;
            }
            std::uint32_t left = u.len;
            for (const auto& [off, len] : u.chain.writable) {
                const std::uint32_t k = std::min(left, len);
                g_in.receive(h.rw_bytes(off), k, "console input");
                left -= k;
            }
        }
    }
    // Let output reach the client before the reset.
    for (int i = 0; i < 20; ++i) {
        if (w.poll() == 0) break;
        drain_client();
    }
    drain_client();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    xv::fuzz::quiet_logs();
    World& w = World::get();
    g_path = "/tmp/xv-fuzz-console-" + std::to_string(::getpid()) + ".sock";
    g_port_path = "/tmp/xv-fuzz-console-" + std::to_string(::getpid()) + ".p1.sock";
    devices::ConsoleConfig cfg;
    cfg.backend = devices::ConsoleConfig::Backend::Socket;
    cfg.socket_path = g_path;
    cfg.ports.push_back({"org.example.fuzz", g_port_path});
    auto d = devices::make_console_device(cfg, {w.domid, "console0"}, w.io.get_executor());
    FUZZ_CHECK(d.has_value(), "make_console_device: %s", d.error().describe().c_str());
    g_dev = std::move(*d);
    connect_client();
    w.poll();
    return 0;
}

/// After the reset: output the device accepted before it still reaches the
/// client; let it arrive before the next activation resynchronises (bytes
/// of chains the reset dropped are legitimately missing in between).
void settle() {
    World& w = World::get();
    for (int quiet = 0, i = 0; quiet < 3 && i < 200; ++i) {
        std::size_t n = w.poll();
        std::byte buf[4096];
        ssize_t k = ::recv(g_client, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
        drain_client();
        quiet = (n == 0 && k <= 0) ? quiet + 1 : 0;
        if (quiet) ::usleep(200);
    }
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider in(data, size);
    run(in);
    settle();
    return 0;
}
