// SPDX-License-Identifier: GPL-2.0-only
// Fuzz target: virtio-net header and control-queue parsing, and the data
// path around them (devices/net), on a real tap in a private network
// namespace.
//
// Steps: tx chains (virtio_net_hdr_v1 + Ethernet frame, split over buffers
// in any way; flags, gso and checksum fields mostly consistent with the
// negotiated features, sometimes not), rx buffers (small ones too, with and
// without MRG_RXBUF), frames injected into the tap from the host side (a
// packet socket), control messages (rx mode, MAC table / address, announce
// ack, VQ_PAIRS_SET; well-formed or with bad lengths and values), and
// validate_tx_header() on raw headers.
//
// Oracles: a frame with a consistent header leaves through the tap byte
// for byte and in order; an injected frame reaches the guest (when it does)
// byte for byte and in order; a well-formed control command that was
// negotiated (for VQ_PAIRS_SET: on pairs whose queues are all enabled) is
// acked VIRTIO_NET_OK, a malformed one VIRTIO_NET_ERR; tx
// chains are used with len 0 and control chains with len 1;
// validate_tx_header() never accepts a header the spec forbids.
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "device_fuzz.h"
#include "xv/devices/net.h"

namespace {

using namespace xv;
using namespace xv::fuzz::dev;
using xv::fuzz::one_in;
using xv::fuzz::pick;
namespace nf = xv::devices::net_feature;
namespace nh = xv::devices::net_hdr;
namespace nc = xv::devices::net_ctrl;
using devices::VirtioNetHdr;
using transport::feature::bit;

constexpr std::uint16_t kEtherType = 0x88b5;  // IEEE 802 local experimental: the kernel leaves it alone
constexpr std::uint16_t kPairs = 2;

std::unique_ptr<devices::NetDevice> g_dev;
int g_pkt = -1;
int g_ifindex = 0;
std::uint32_t g_seq = 0;  // tag of the frames we make
std::optional<std::uint32_t> tag_of(const std::byte* f, std::size_t n) {
    if (n < 18) return std::nullopt;
    std::uint16_t et;
    std::memcpy(&et, f + 12, 2);
    if (ntohs(et) != kEtherType) return std::nullopt;
    std::uint32_t t;
    std::memcpy(&t, f + 14, 4);
    return t;
}

/// Frames in flight, oldest first, in preallocated slots: an input that
/// records frames allocates nothing that outlives it (libFuzzer would
/// otherwise run its leak check after every such input).
class FrameLog {
public:
    static constexpr std::size_t kSlots = 4096;  // more than the tap queues hold
    FrameLog() {
        slots_.resize(kSlots);
        for (auto& s : slots_) s.reserve(256);
    }
    /// Highest tag pushed out of a full log: such a frame may still come.
    std::uint32_t evicted = 0;
    std::size_t size() const { return n_; }
    bool empty() const { return n_ == 0; }
    const std::vector<std::byte>& operator[](std::size_t i) const { return slots_[(head_ + i) % kSlots]; }
    const std::vector<std::byte>& front() const { return (*this)[0]; }
    void pop_front() {
        head_ = (head_ + 1) % kSlots;
        --n_;
    }
    /// Drops the first `k` frames (delivered late or never).
    void drop(std::size_t k) {
        head_ = (head_ + k) % kSlots;
        n_ -= k;
    }
    /// Appends a frame; the oldest goes when full (the tap's queue is bounded too).
    void push_back(const std::vector<std::byte>& f) {
        if (n_ == kSlots) {
            if (auto t = tag_of(front().data(), front().size())) evicted = *t;
            pop_front();
        }
        auto& s = slots_[(head_ + n_) % kSlots];
        s.assign(f.begin(), f.end());
        ++n_;
    }

private:
    std::vector<std::vector<std::byte>> slots_;
    std::size_t head_ = 0, n_ = 0;
};
FrameLog* g_tx_sent;  // consistent tx frames, in order, as the tap must show them
FrameLog* g_rx_sent;  // frames injected towards the guest, in order

/// An Ethernet frame carrying a tag (sequence number) after the header.
std::vector<std::byte> frame(FuzzedDataProvider& in, const std::array<std::uint8_t, 6>& dst, std::uint32_t tag) {
    std::vector<std::byte> f;
    for (auto b : dst) f.push_back(std::byte(b));
    for (std::uint8_t b : {0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc}) f.push_back(std::byte(b));
    const std::uint16_t et = htons(kEtherType);
    put(f, et);
    put(f, tag);
    std::size_t len = one_in(in, 16) ? in.ConsumeIntegralInRange<std::size_t>(1400, 9000)
                                     : in.ConsumeIntegralInRange<std::size_t>(0, 200);
    const std::uint8_t fill = in.ConsumeIntegral<std::uint8_t>();
    for (std::size_t i = 0; i < len; ++i) f.push_back(std::byte(std::uint8_t(fill + i)));
    return f;
}


/// Splits `bytes` into 1..4 readable pieces.
void split_into(FuzzedDataProvider& in, const std::vector<std::byte>& bytes, std::vector<Piece>& ps) {
    std::size_t at = 0;
    unsigned parts = in.ConsumeIntegralInRange(1, 4);
    for (unsigned i = 0; i < parts && at < bytes.size(); ++i) {
        std::size_t n = i + 1 == parts ? bytes.size() - at : in.ConsumeIntegralInRange<std::size_t>(1, bytes.size() - at);
        ps.push_back(Piece::in({bytes.begin() + std::ptrdiff_t(at), bytes.begin() + std::ptrdiff_t(at + n)}));
        at += n;
    }
}

/// A header for `frame_len` bytes; `consistent` says whether the generator
/// kept it within the rules for `features`.
VirtioNetHdr header(FuzzedDataProvider& in, std::uint32_t frame_len, std::uint64_t features, bool& consistent,
                    bool& offload) {
    VirtioNetHdr h;
    consistent = true;
    offload = false;
    if ((features & bit(nf::kCsum)) && frame_len > 20 && one_in(in, 3)) {
        h.flags = nh::kNeedsCsum;
        h.csum_start = std::uint16_t(in.ConsumeIntegralInRange<std::uint32_t>(14, frame_len - 2));
        h.csum_offset = std::uint16_t(in.ConsumeIntegralInRange<std::uint32_t>(0, frame_len - 2 - h.csum_start));
        offload = true;
        if ((features & bit(nf::kHostTso4)) && one_in(in, 2)) {
            h.gso_type = nh::kGsoTcpv4;
            h.gso_size = std::uint16_t(in.ConsumeIntegralInRange(1, 1500));
            h.hdr_len = std::uint16_t(in.ConsumeIntegralInRange<std::uint32_t>(0, frame_len));
        }
    }
    if (one_in(in, 8)) {
        consistent = false;
        switch (in.ConsumeIntegralInRange(0, 5)) {
            case 0: h.flags = in.ConsumeIntegral<std::uint8_t>(); break;
            case 1: h.gso_type = in.ConsumeIntegral<std::uint8_t>(); break;
            case 2: h.flags = nh::kNeedsCsum; h.csum_start = 0xffff; h.csum_offset = 0xffff; break;
            case 3: h.gso_type = nh::kGsoTcpv6; h.flags = nh::kNeedsCsum; h.gso_size = 0; break;
            case 4: h.flags = nh::kDataValid; break;
            default: h.gso_type = nh::kGsoUdp | nh::kGsoEcn; h.flags = nh::kNeedsCsum; h.gso_size = 100; break;
        }
        offload = true;
    }
    h.num_buffers = in.ConsumeIntegral<std::uint16_t>();  // ignored on tx
    return h;
}

/// validate_tx_header() against the rules of virtio 1.2 §5.1.6.2.1.
void check_validate(FuzzedDataProvider& in, std::uint64_t features) {
    VirtioNetHdr h;
    h.flags = in.ConsumeIntegral<std::uint8_t>();
    h.gso_type = in.ConsumeIntegral<std::uint8_t>();
    h.hdr_len = in.ConsumeIntegral<std::uint16_t>();
    h.gso_size = in.ConsumeIntegral<std::uint16_t>();
    h.csum_start = in.ConsumeIntegral<std::uint16_t>();
    h.csum_offset = in.ConsumeIntegral<std::uint16_t>();
    const std::uint32_t len = in.ConsumeIntegralInRange<std::uint32_t>(0, 70000);
    if (devices::validate_tx_header(h, len, features) != devices::NetError::None) return;
    FUZZ_CHECK(len >= nh::kMinFrame && len <= nh::kMaxFrame, "accepted frame of %u bytes", len);
    FUZZ_CHECK((h.flags & ~nh::kNeedsCsum) == 0, "accepted flags %#x", h.flags);
    if (h.flags & nh::kNeedsCsum) {
        FUZZ_CHECK(features & bit(nf::kCsum), "accepted NEEDS_CSUM without CSUM");
        FUZZ_CHECK(std::uint32_t(h.csum_start) + h.csum_offset + 2 <= len, "accepted csum %u+%u beyond %u",
                   h.csum_start, h.csum_offset, len);
    }
    const std::uint8_t gso = h.gso_type & ~nh::kGsoEcn;
    if (gso != nh::kGsoNone) {
        const unsigned need = gso == nh::kGsoTcpv4 ? nf::kHostTso4 : gso == nh::kGsoTcpv6 ? nf::kHostTso6
                              : gso == nh::kGsoUdp ? nf::kHostUfo : 64;
        FUZZ_CHECK(need < 64 && (features & bit(need)), "accepted gso type %#x", h.gso_type);
        FUZZ_CHECK(h.gso_size > 0 && h.hdr_len <= len && (h.flags & nh::kNeedsCsum), "accepted gso header");
    }
    if (h.gso_type & nh::kGsoEcn) FUZZ_CHECK(features & bit(nf::kHostEcn), "accepted ECN");
}

/// A control command: its bytes and what the device must answer.
struct Ctrl {
    std::vector<std::byte> cmd;  ///< class, command, data
    enum { Ok, Err, Any } expect = Ok;
    bool split = false;
};

/// `enabled[q]`: queue q was enabled at activation.
Ctrl control(FuzzedDataProvider& in, std::uint64_t features, const std::vector<bool>& enabled) {
    Ctrl c;
    auto has = [&](unsigned f) { return (features & bit(f)) != 0; };
    const int kind = in.ConsumeIntegralInRange(0, 6);
    auto hdr = [&](std::uint8_t cls, std::uint8_t cmd) {
        c.cmd.push_back(std::byte(cls));
        c.cmd.push_back(std::byte(cmd));
    };
    switch (kind) {
        case 0:  // RX promisc / allmulti
            hdr(nc::kClassRx, in.ConsumeIntegralInRange<std::uint8_t>(0, 1));
            c.cmd.push_back(std::byte(in.ConsumeIntegralInRange<std::uint8_t>(0, 1)));
            if (!has(nf::kCtrlRx)) c.expect = Ctrl::Err;
            break;
        case 1: {  // MAC table set: two tables
            hdr(nc::kClassMac, nc::kMacTableSet);
            for (int t = 0; t < 2; ++t) {
                std::uint32_t n = one_in(in, 8) ? in.ConsumeIntegralInRange<std::uint32_t>(60, 70)
                                                : in.ConsumeIntegralInRange<std::uint32_t>(0, 4);
                put(c.cmd, n);
                for (std::uint32_t i = 0; i < n * 6; ++i) c.cmd.push_back(std::byte(in.ConsumeIntegral<std::uint8_t>()));
            }
            if (!has(nf::kCtrlRx)) c.expect = Ctrl::Err;
            break;
        }
        case 2:  // MAC address set
            hdr(nc::kClassMac, nc::kMacAddrSet);
            for (std::uint8_t b : {0x52, 0x54, 0x00, 0x12, 0x34, 0x56}) c.cmd.push_back(std::byte(b));
            if (!has(nf::kCtrlMacAddr)) c.expect = Ctrl::Err;
            break;
        case 3:  // announce ack
            hdr(nc::kClassAnnounce, nc::kAnnounceAck);
            if (!has(nf::kGuestAnnounce)) c.expect = Ctrl::Err;
            break;
        case 4: {  // VQ_PAIRS_SET
            hdr(nc::kClassMq, nc::kMqVqPairsSet);
            std::uint16_t n = one_in(in, 6) ? pick<std::uint16_t>(in, {0, 3, 0x8000, 0xffff})
                                            : in.ConsumeIntegralInRange<std::uint16_t>(1, kPairs);
            put(c.cmd, n);
            if (!has(nf::kMq) || n == 0 || n > kPairs) {
                c.expect = Ctrl::Err;
                break;
            }
            // §5.1.6.5.5: the driver MUST configure (enable) the queues of
            // the pairs it asks for; asking for one it left disabled is an
            // error (found by this target: receiveq2 disabled, pairs = 2).
            for (std::uint16_t q = 0; q < 2 * n; ++q)
                if (!enabled[q]) c.expect = Ctrl::Err;
            break;
        }
        case 5:  // unknown class / command
            hdr(pick<std::uint8_t>(in, {2, 5, 6, 0xff}), in.ConsumeIntegral<std::uint8_t>());
            c.expect = Ctrl::Err;
            break;
        default:  // raw bytes
            c.cmd = [&] {
                auto s = in.ConsumeBytes<std::byte>(in.ConsumeIntegralInRange<std::size_t>(0, 40));
                return s;
            }();
            c.expect = Ctrl::Any;
            break;
    }
    if (c.expect != Ctrl::Any && c.cmd.size() > 2 && one_in(in, 10)) {  // bad length
        c.cmd.resize(in.ConsumeBool() ? 2 + in.ConsumeIntegralInRange<std::size_t>(0, c.cmd.size() - 3)
                                      : c.cmd.size() + in.ConsumeIntegralInRange<std::size_t>(1, 8));
        if (kind == 1 && c.cmd.size() > 2) c.expect = Ctrl::Any;  // a table may still parse
        else c.expect = Ctrl::Err;
    }
    c.split = in.ConsumeBool();
    return c;
}

void run(FuzzedDataProvider& in) {
    World& w = World::get();
    const std::uint64_t features = negotiate(in, *g_dev);
    const bool mq = features & bit(nf::kMq);
    const bool mrg = features & bit(nf::kMrgRxbuf);
    const std::uint16_t ctrlq = mq ? 2 * kPairs : 2;
    const bool has_ctrl = features & bit(nf::kCtrlVq);
    const bool indirect = features & bit(transport::feature::kIndirectDesc);
    Harness h(w, *g_dev);
    std::vector<bool> enabled;
    if (!h.activate(features, std::uint16_t(ctrlq + 1), [&](std::uint16_t) {
            enabled.push_back(!one_in(in, 20));
            return bool(enabled.back());
        }))
        return;
    const auto mac = g_dev->mac();
    // Frames outlive an iteration (the tap queues them, libFuzzer reruns
    // inputs), so the records are process-wide.
    auto& tx_sent = *g_tx_sent;
    auto& rx_sent = *g_rx_sent;
    std::map<std::uint64_t, Ctrl> ctrls;
    std::uint64_t ctrl_tag = 1;

    auto find = [](const FrameLog& q, std::uint32_t t) {
        for (std::size_t i = 0; i < q.size(); ++i)
            if (tag_of(q[i].data(), q[i].size()) == t) return std::optional<std::size_t>(i);
        return std::optional<std::size_t>();
    };
    auto drain_tap = [&] {
        std::byte buf[10000];
        for (;;) {
            sockaddr_ll from{};
            socklen_t fl = sizeof from;
            ssize_t n = ::recvfrom(g_pkt, buf, sizeof buf, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &fl);
            if (n <= 0) break;
            if (from.sll_pkttype == PACKET_OUTGOING) continue;  // our own injected frames
            auto t = tag_of(buf, std::size_t(n));
            if (!t) continue;
            auto at = find(tx_sent, *t);
            if (!at) continue;  // not one whose bytes are fixed (offloads, mq, inconsistent)
            // Frames leave in order; the ones before it were dropped by the kernel.
            tx_sent.drop(*at);
            FUZZ_CHECK(tx_sent.front().size() == std::size_t(n) &&
                           std::memcmp(tx_sent.front().data(), buf, std::size_t(n)) == 0,
                       "frame %u left the tap changed", *t);
            tx_sent.pop_front();
        }
    };

    unsigned steps = in.ConsumeIntegralInRange(1, 40);
    for (unsigned i = 0; i < steps && in.remaining_bytes() > 0; ++i) {
        const std::uint16_t pair = std::uint16_t(mq ? in.ConsumeIntegralInRange<unsigned>(0, kPairs - 1) : 0);
        switch (in.ConsumeIntegralInRange(0, 7)) {
            case 0: case 1: {  // tx
                auto f = frame(in, mac, ++g_seq);
                bool consistent, offload;
                VirtioNetHdr hdr = header(in, std::uint32_t(f.size()), features, consistent, offload);
                std::vector<std::byte> bytes;
                put(bytes, hdr);
                if (one_in(in, 16)) {
                    bytes.resize(in.ConsumeIntegralInRange<std::size_t>(0, 11));  // short chain
                    consistent = false;
                } else {
                    bytes.insert(bytes.end(), f.begin(), f.end());
                }
                std::vector<Piece> ps;
                split_into(in, bytes, ps);
                if (one_in(in, 16)) ps.push_back(Piece::out(8));  // a writable buffer on tx
                if (ps.empty()) break;
                if (h.add(std::uint16_t(2 * pair + 1), ps, indirect && one_in(in, 3)) && consistent && !offload && !mq)
                    tx_sent.push_back(f);
                h.notify(std::uint16_t(2 * pair + 1));
                break;
            }
            case 2: {  // rx buffers
                std::vector<Piece> ps;
                if (mrg || one_in(in, 4)) ps.push_back(Piece::out(in.ConsumeIntegralInRange<std::uint32_t>(1, 2048)));
                else ps.push_back(Piece::out(in.ConsumeIntegralInRange<std::uint32_t>(12, 65562)));
                if (one_in(in, 3)) ps.push_back(Piece::out(in.ConsumeIntegralInRange<std::uint32_t>(1, 4096)));
                (void)h.add(std::uint16_t(2 * pair), ps, indirect && one_in(in, 3));
                h.notify(std::uint16_t(2 * pair));
                break;
            }
            case 3: {  // a frame for the guest, from the host side
                std::array<std::uint8_t, 6> dst = mac;
                if (one_in(in, 4)) dst = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
                else if (one_in(in, 8)) dst = {0x01, 0x00, 0x5e, 0x00, 0x00, 0x01};
                else if (one_in(in, 8)) dst = {0x02, 0x11, 0x22, 0x33, 0x44, 0x55};
                auto f = frame(in, dst, ++g_seq);
                sockaddr_ll a{};
                a.sll_family = AF_PACKET;
                a.sll_ifindex = g_ifindex;
                a.sll_halen = 6;
                std::memcpy(a.sll_addr, dst.data(), 6);
                if (::sendto(g_pkt, f.data(), f.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a) ==
                    ssize_t(f.size()))
                    rx_sent.push_back(f);
                break;
            }
            case 4: {  // control
                if (!has_ctrl) break;
                Ctrl c = control(in, features, enabled);
                if (c.cmd.empty()) break;
                std::vector<Piece> ps;
                if (c.split && c.cmd.size() > 2) {
                    ps.push_back(Piece::in({c.cmd.begin(), c.cmd.begin() + 2}));
                    ps.push_back(Piece::in({c.cmd.begin() + 2, c.cmd.end()}));
                } else {
                    ps.push_back(Piece::in(c.cmd));
                }
                ps.push_back(Piece::out(1));  // ack
                const std::uint64_t tag = ctrl_tag++;
                if (h.add(ctrlq, ps, indirect && one_in(in, 3), tag)) ctrls[tag] = c;
                h.notify(ctrlq);
                break;
            }
            case 5: check_validate(in, features); break;
            case 6:
                if (one_in(in, 4)) g_dev->set_link_up(in.ConsumeBool());
                else if (one_in(in, 2)) (void)g_dev->announce();
                else {
                    std::uint32_t off = in.ConsumeIntegralInRange<std::uint32_t>(0, g_dev->config_size() - 1);
                    std::vector<std::byte> v(in.ConsumeIntegralInRange<std::uint32_t>(1, g_dev->config_size() - off));
                    g_dev->read_config(off, v);
                }
                break;
            default:
                h.notify(std::uint16_t(in.ConsumeIntegralInRange<unsigned>(0, ctrlq)));
                break;
        }
        w.poll();
        drain_tap();
        std::uint16_t skip_merged = 0;
        for (auto& u : h.reap()) {
            if (u.queue == ctrlq) {
                FUZZ_CHECK(u.len == 1, "control chain used with len %u", u.len);
                auto it = ctrls.find(u.chain.tag);
                if (it == ctrls.end()) continue;
                const auto& ack = u.chain.writable.back();
                const std::uint8_t a = std::uint8_t(*h.rw_bytes(ack.first + ack.second - 1));
                FUZZ_CHECK(a == nc::kOk || a == nc::kErr, "ack byte %u", a);
                if (it->second.expect == Ctrl::Ok)
                    FUZZ_CHECK(a == nc::kOk, "well-formed control %u/%u acked %u", std::uint8_t(it->second.cmd[0]),
                               std::uint8_t(it->second.cmd[1]), a);
                if (it->second.expect == Ctrl::Err)
                    FUZZ_CHECK(a == nc::kErr, "malformed control (%zu bytes) acked OK", it->second.cmd.size());
                ctrls.erase(it);
            } else if (u.queue % 2 == 1) {
                FUZZ_CHECK(u.len == 0, "tx chain used with len %u", u.len);
            } else if (u.len > 0) {
                if (skip_merged) {  // later buffers of a merged frame
                    --skip_merged;
                    continue;
                }
                // rx: header + frame in this chain's writable buffers.
                std::vector<std::byte> got;
                std::uint32_t left = u.len;
                for (const auto& [off, len] : u.chain.writable) {
                    const std::uint32_t k = std::min(left, len);
                    got.insert(got.end(), h.rw_bytes(off), h.rw_bytes(off) + k);
                    left -= k;
                }
                FUZZ_CHECK(got.size() >= sizeof(VirtioNetHdr), "rx used len %u shorter than the header", u.len);
                VirtioNetHdr hdr;
                std::memcpy(&hdr, got.data(), sizeof hdr);
                if (mrg && hdr.num_buffers > 1) {
                    skip_merged = std::uint16_t(hdr.num_buffers - 1);
                    continue;
                }
                auto t = tag_of(got.data() + sizeof hdr, got.size() - sizeof hdr);
                if (!t) continue;  // the kernel's own traffic
                if (mq) continue;  // pairs may reorder frames between queues
                auto at = find(rx_sent, *t);
                if (!at && *t <= rx_sent.evicted) continue;  // the log forgot it, the tap did not
                FUZZ_CHECK(at.has_value(), "rx frame %u was never sent (or came twice / out of order)", *t);
                rx_sent.drop(*at);  // dropped (filtered) ones
                const auto& f = rx_sent.front();
                FUZZ_CHECK(got.size() - sizeof hdr == f.size() &&
                               std::memcmp(got.data() + sizeof hdr, f.data(), f.size()) == 0,
                           "rx frame %u reached the guest changed", *t);
                rx_sent.pop_front();
            }
        }
    }
    w.poll();
    drain_tap();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    xv::fuzz::quiet_logs();
    // A private network namespace: the tap and whatever reaches it stay here.
    FUZZ_CHECK(::unshare(CLONE_NEWNET) == 0, "unshare(CLONE_NEWNET): %s (run as root)", std::strerror(errno));
    World& w = World::get();
    g_tx_sent = new FrameLog;
    g_rx_sent = new FrameLog;
    devices::NetConfig cfg;
    cfg.queues = kPairs;
    auto d = devices::make_net_device(cfg, {w.domid, "net0"}, w.io.get_executor());
    FUZZ_CHECK(d.has_value(), "make_net_device: %s", d.error().describe().c_str());
    g_dev = std::move(*d);
    g_ifindex = int(::if_nametoindex(g_dev->tap_name().c_str()));
    g_pkt = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(kEtherType));
    FUZZ_CHECK(g_pkt >= 0, "packet socket: %s", std::strerror(errno));
    sockaddr_ll a{};
    a.sll_family = AF_PACKET;
    a.sll_protocol = htons(kEtherType);
    a.sll_ifindex = g_ifindex;
    FUZZ_CHECK(::bind(g_pkt, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "bind: %s", std::strerror(errno));
    w.poll();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider in(data, size);
    run(in);
    return 0;
}
