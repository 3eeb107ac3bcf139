// SPDX-License-Identifier: GPL-2.0-only
// virtio-net over a tap (virtio 1.2 §5.1): tx/rx data path, control queue.
#include <sys/uio.h>
#include <unistd.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "common/next_chain.h"
#include "tap.h"
#include "xv/cpu_time.h"
#include "xv/devices/net.h"
#include "xv/log.h"

namespace xv::devices {

namespace asio = boost::asio;
using transport::DescriptorChain;
using transport::Virtqueue;
using Mac = std::array<std::uint8_t, 6>;

std::string_view net_error_name(NetError e) {
    switch (e) {
        case NetError::None: return "ok";
        case NetError::ShortChain: return "chain shorter than header + Ethernet header";
        case NetError::FrameTooLong: return "frame longer than 65550 bytes";
        case NetError::BadFlags: return "bad header flags";
        case NetError::BadGsoType: return "gso_type unknown or not negotiated";
        case NetError::BadGso: return "bad gso_size/hdr_len";
        case NetError::BadCsumOffsets: return "csum_start/csum_offset beyond the frame";
        case NetError::RxBufferTooSmall: return "rx buffer too small";
        case NetError::CtrlMalformed: return "malformed control message";
        case NetError::CtrlUnsupported: return "control command not supported";
        case NetError::CtrlBadValue: return "control value out of range";
        case NetError::TapRejected: return "tap refused the frame";
    }
    return "unknown";
}

std::uint8_t net_error_ack(NetError e) {
    // virtio 1.2 §5.1.6.5: the device writes VIRTIO_NET_OK or VIRTIO_NET_ERR
    // into the ack byte of every control command.
    return e == NetError::None ? net_ctrl::kOk : net_ctrl::kErr;
}

namespace {
constexpr std::uint64_t fbit(unsigned b) { return 1ULL << b; }
bool has(std::uint64_t f, unsigned b) { return (f & fbit(b)) != 0; }
}  // namespace

NetError validate_tx_header(const VirtioNetHdr& h, std::uint32_t frame_len, std::uint64_t features) {
    using namespace net_hdr;
    if (frame_len < kMinFrame) return NetError::ShortChain;
    if (frame_len > kMaxFrame) return NetError::FrameTooLong;
    // virtio 1.2 §5.1.6.2.1: the driver MUST NOT set DATA_VALID or RSC_INFO.
    if (h.flags & ~kNeedsCsum) return NetError::BadFlags;
    if (h.flags & kNeedsCsum) {
        // §5.1.6.2.1: NEEDS_CSUM only when VIRTIO_NET_F_CSUM was negotiated.
        if (!has(features, net_feature::kCsum)) return NetError::BadFlags;
        // §5.1.6.2: the checksum is stored at csum_start + csum_offset (2 bytes).
        if (std::uint32_t(h.csum_start) + h.csum_offset + 2 > frame_len) return NetError::BadCsumOffsets;
    }
    const std::uint8_t gso = h.gso_type & ~kGsoEcn;
    if (h.gso_type & kGsoEcn) {
        // §5.1.6.2.1: ECN only with VIRTIO_NET_F_HOST_ECN (never offered).
        if (!has(features, net_feature::kHostEcn) || gso == kGsoNone) return NetError::BadGsoType;
    }
    switch (gso) {
        case kGsoNone: return NetError::None;
        // §5.1.6.2.1: a GSO type only when its HOST_* feature was negotiated.
        case kGsoTcpv4:
            if (!has(features, net_feature::kHostTso4)) return NetError::BadGsoType;
            break;
        case kGsoTcpv6:
            if (!has(features, net_feature::kHostTso6)) return NetError::BadGsoType;
            break;
        case kGsoUdp:
            if (!has(features, net_feature::kHostUfo)) return NetError::BadGsoType;
            break;
        default: return NetError::BadGsoType;
    }
    // §5.1.6.2: GSO needs the checksum offloaded and a segment size; the
    // headers (hdr_len) lie inside the frame.
    if (!(h.flags & kNeedsCsum)) return NetError::BadFlags;
    if (h.gso_size == 0 || h.hdr_len > frame_len) return NetError::BadGso;
    return NetError::None;
}

namespace {

constexpr std::size_t kIovMax = 1024;  // UIO_MAXIOV
constexpr unsigned kTxBudget = 256;
constexpr unsigned kTxBatch = 64;  // chains popped (and grant-mapped) together
/// tx_state of a chain of the current batch.
constexpr std::uint8_t kTxPending = 0;  ///< to be written to the tap
constexpr std::uint8_t kTxDone = 1;     ///< written, refused or invalid: only its used entry is left
/// Header + frame up to this size are copied into one buffer and go to
/// the tap with one write(): cheaper than the kernel importing and walking
/// a two-piece iovec list (measured on Linux 6.18: a 1514-byte frame costs
/// about 17 ns less, a 64-byte one about 40 ns less). Larger frames (TSO)
/// go with writev() straight from the grant pages.
constexpr std::size_t kTxCopy = 2048;
constexpr unsigned kRxBudget = 256;
constexpr unsigned kRxBatch = 64;  // rx chains popped (and grant-mapped) together

/// What is shared by the device object and its sessions (outlives both).
struct Core {
    transport::DeviceIdentity id;
    net::Tap tap;
    std::uint16_t max_pairs = 1;
    std::uint16_t mtu = 0;
    std::uint64_t offered = 0;
    std::chrono::nanoseconds tx_poll{0};  ///< NetConfig::tx_poll_us
    bool tx_poll_gives_way = true;        ///< NetConfig::tx_poll_gives_way

    mutable std::mutex cfg_mu;  // mac, status, filter
    Mac mac{};
    bool link_up = true;
    bool announce = false;
    bool promisc = true;
    /// promisc, readable without the lock (set with it, under cfg_mu).
    std::atomic<bool> promisc_fast{true};
    bool allmulti = false;
    bool alluni = false;
    std::vector<Mac> uc, mc;

    std::atomic<std::uint16_t> active_pairs{1};
    log::RateLimit rl{5.0, 20.0};

    struct Counters {
        std::atomic<std::uint64_t> tx_frames{0}, tx_bytes{0}, tx_dropped{0}, tx_eagain{0}, rx_frames{0}, rx_bytes{0},
            rx_filtered{0}, rx_dropped{0}, rx_merged{0}, rx_stalls{0}, ctrl_ok{0}, ctrl_err{0}, tx_polls{0},
            tx_poll_hits{0}, tx_polls_in_vain{0}, tx_polls_contended{0}, tx_poll_in_vain_ns{0};
    } n;

    /// virtio 1.2 §5.1.6.5.1/§5.1.6.5.2: rx mode and MAC table filtering.
    bool accept(const Mac& d) const {
        // The usual case (promiscuous: every frame) without taking the lock.
        if (promisc_fast.load(std::memory_order_acquire)) return true;
        std::lock_guard lk(cfg_mu);
        if (promisc) return true;
        static constexpr Mac kBcast{0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
        if (d == kBcast) return true;
        if (d[0] & 1) return allmulti || std::find(mc.begin(), mc.end(), d) != mc.end();
        return alluni || d == mac || std::find(uc.begin(), uc.end(), d) != uc.end();
    }
};

/// Popped chains in ring order: a vector and the index of the first. (A
/// std::deque of chains, which are larger than its 512-byte nodes, would
/// allocate and free a node per chain.)
class ChainFifo {
public:
    bool empty() const noexcept { return head_ == v_.size(); }
    std::size_t size() const noexcept { return v_.size() - head_; }
    DescriptorChain& front() noexcept { return v_[head_]; }
    DescriptorChain& operator[](std::size_t i) noexcept { return v_[head_ + i]; }
    auto begin() noexcept { return v_.begin() + static_cast<std::ptrdiff_t>(head_); }
    auto end() noexcept { return v_.end(); }
    void reserve(std::size_t n) { v_.reserve(n); }
    /// Drops the first chain (normally moved out just before).
    void pop_front() noexcept {
        if (v_[head_].valid()) v_[head_] = DescriptorChain{};  // goes back to its queue, as a destroyed one would
        if (++head_ == v_.size()) clear();
    }
    void push_back(DescriptorChain&& c) {
        if (head_ > 0 && v_.size() == v_.capacity()) {
            v_.erase(v_.begin(), v_.begin() + static_cast<std::ptrdiff_t>(head_));
            head_ = 0;
        }
        v_.push_back(std::move(c));
    }
    void clear() noexcept {
        v_.clear();
        head_ = 0;
    }

private:
    std::vector<DescriptorChain> v_;
    std::size_t head_ = 0;
};

/// One rx/tx queue pair of an active session.
struct Pair {
    std::size_t index = 0;
    std::atomic<bool> enabled{false};

    // rx side: guarded by rx_mu, runs on the rx queue's strand.
    std::mutex rx_mu;
    bool rx_stopped = false;
    Virtqueue* rxq = nullptr;
    std::optional<asio::posix::stream_descriptor> rxd;
    bool rx_armed = false;
    ChainFifo held;  ///< popped rx chains not used yet
    std::vector<DescriptorChain> rx_pop;  ///< one pop_batch() before the chains join `held`
    std::vector<iovec> rx_iov;            ///< the readv list, kept between frames
    std::vector<std::uint32_t> rx_lens;   ///< used lengths of a merged frame
    std::vector<std::byte> spill;      ///< bytes of a frame beyond the held chains
    std::size_t spill_len = 0, spill_off = 0;
    bool spilling = false;
    std::vector<std::pair<DescriptorChain, std::uint32_t>> partial;  ///< chains of a spilled frame
    /// Chains used but not yet pushed, and their used lengths (pushed
    /// together by rx_flush(), before rx_pump returns).
    std::vector<DescriptorChain> rx_done;
    std::vector<std::uint32_t> rx_done_len;

    // tx side: guarded by tx_mu, runs on the tx queue's strand.
    std::mutex tx_mu;
    bool tx_stopped = false;
    Virtqueue* txq = nullptr;
    std::optional<asio::posix::stream_descriptor> txd;
    bool tx_waiting = false;
    /// Chains popped in one batch (one grant map call) and their validated
    /// headers; tx_next is the first not yet written to the tap (the rest
    /// wait there while the tap is full).
    std::vector<DescriptorChain> tx_batch;
    std::vector<VirtioNetHdr> tx_hdrs;
    std::size_t tx_next = 0;
    std::size_t tx_done = 0;            ///< first chain of tx_batch not yet pushed (<= tx_next)
    std::vector<iovec> tx_iov;          ///< the writev list, kept between frames
    std::vector<std::byte> tx_bounce;
    std::vector<std::uint8_t> tx_state;  ///< per chain of tx_batch: kTxPending / kTxDone
    std::vector<std::byte> tx_copy;  ///< kTxCopy bytes: header + frame of a small frame
    std::uint64_t tx_sent_frames = 0, tx_sent_bytes = 0;  ///< counted at the next flush
    /// A poll window (NetConfig::tx_poll_us) is open: the ring ran empty
    /// and is looked at again until tx_poll_end.
    bool tx_polling = false;
    bool tx_poll_posted = false;  ///< a look (tx_pump) is posted to the strand
    std::chrono::steady_clock::time_point tx_poll_end;
    std::int64_t tx_poll_cpu0 = 0;  ///< the thread's CPU time when the window opened
};

/// Everything of one activation (activate .. reset).
class Session : public std::enable_shared_from_this<Session> {
public:
    Session(std::shared_ptr<Core> core, transport::ActivateContext ctx) : core_(std::move(core)), ctx_(std::move(ctx)) {}

    Result<void> start();
    void stop();
    void notify(std::uint16_t q);
    bool has_feature(unsigned b) const { return has(ctx_.features, b); }
    void config_changed() {
        if (ctx_.config_changed) ctx_.config_changed();
    }

private:
    std::string qname(const Virtqueue* q) const {
        return core_->id.label() + " q" + std::to_string(q ? q->index() : 0);
    }
    enum class Dir { Rx, Tx };
    /// Runs rx_pump/tx_pump of `p` later on that queue's strand, under its lock.
    void post_pump(Pair& p, Dir d);
    // rx
    void rx_pump(Pair& p);
    bool rx_fill(Pair& p, bool& pushed);
    bool rx_continue_spill(Pair& p, bool& pushed);
    void rx_deliver(Pair& p, const std::vector<iovec>& iov, std::size_t n, std::size_t included,
                    std::size_t guest_cap, bool& pushed);
    void rx_arm(Pair& p);
    void set_num_buffers(DescriptorChain& c, std::uint16_t n);
    /// Queues a used rx chain for the next rx_flush().
    void rx_used(Pair& p, DescriptorChain&& c, std::uint32_t len);
    void rx_flush(Pair& p);
    // tx
    void tx_pump(Pair& p);
    /// What tx_take() found: chains appended to tx_batch, none (the driver
    /// asked to kick), a poll round posted, or a broken queue.
    enum class Take { Chain, Empty, Polling, Broken };
    Take tx_take(Pair& p, unsigned max);
    /// Closes the open poll window; `found`: it ended with chains.
    void tx_poll_close(Pair& p, bool found, bool contended = false);
    NetError tx_prepare(DescriptorChain& c, VirtioNetHdr& hdr, std::uint32_t& frame_len);
    void tx_arm(Pair& p);
    void tx_flush(Pair& p, bool& pushed);
    /// Writes frame `i` of the batch with writev(); false when the tap is
    /// full (then armed).
    bool tx_write(Pair& p, std::size_t i);
    /// Counts frame `i` of the batch sent (n >= 0) or refused by the tap.
    void tx_result(Pair& p, std::size_t i, ssize_t n, int err);
    // ctrl
    void ctrl_pump();
    NetError ctrl_execute(std::uint8_t cls, std::uint8_t cmd, const std::vector<std::byte>& data);
    NetError set_pairs(std::uint16_t n);

    std::shared_ptr<Core> core_;
    transport::ActivateContext ctx_;
    std::size_t hdr_len_ = 12;
    bool mrg_ = false;
    std::size_t rx_target_ = 0;  ///< guest capacity to gather before reading (MRG_RXBUF)
    std::vector<std::unique_ptr<Pair>> pairs_;

    std::mutex ctrl_mu_;
    bool ctrl_stopped_ = false;
    Virtqueue* ctrlq_ = nullptr;
    std::uint16_t ctrl_index_ = 0xffff;
};

Result<void> Session::start() {
    const auto f = ctx_.features;
    // virtio 1.2 §5.1.6: the header is 12 bytes with VERSION_1 or MRG_RXBUF,
    // 10 bytes (no num_buffers) otherwise.
    hdr_len_ = (has(f, transport::feature::kVersion1) || has(f, net_feature::kMrgRxbuf)) ? 12 : 10;
    mrg_ = has(f, net_feature::kMrgRxbuf);
    const bool mq = has(f, net_feature::kMq);
    const bool gso_in = has(f, net_feature::kGuestTso4) || has(f, net_feature::kGuestTso6) || has(f, net_feature::kGuestUfo);
    std::size_t mtu = core_->mtu ? core_->mtu : 1500;
    rx_target_ = hdr_len_ + (gso_in ? net_hdr::kMaxFrame : std::min<std::size_t>(mtu + 18, net_hdr::kMaxFrame));

    // §5.1.2: controlq is 2N with MQ, else 2.
    const std::size_t npairs = mq ? core_->max_pairs : 1;
    ctrl_index_ = static_cast<std::uint16_t>(mq ? 2 * core_->max_pairs : 2);
    if (ctx_.queues.size() < 2 || !ctx_.queues[0] || !ctx_.queues[1])
        return make_error(std::errc::invalid_argument, core_->id.label() + ": receiveq1/transmitq1 not enabled");

    XV_TRY(core_->tap.set_vnet_hdr_size(static_cast<int>(hdr_len_)));
    // §5.1.3.1: GUEST_TSO*/UFO depend on GUEST_CSUM; tell the tap what the
    // guest accepts so it never hands us anything else.
    net::TapOffloads off;
    off.csum = has(f, net_feature::kGuestCsum);
    off.tso4 = off.csum && has(f, net_feature::kGuestTso4);
    off.tso6 = off.csum && has(f, net_feature::kGuestTso6);
    off.ufo = off.csum && has(f, net_feature::kGuestUfo);
    XV_TRY(core_->tap.set_offloads(off));

    {
        std::lock_guard lk(core_->cfg_mu);
        // §5.1.6.5.1: rx mode starts promiscuous until the driver says otherwise.
        core_->promisc = true;
        core_->promisc_fast.store(true, std::memory_order_release);
        core_->allmulti = core_->alluni = false;
        core_->uc.clear();
        core_->mc.clear();
        core_->announce = false;
    }
    // §5.1.6.5.5: only the first pair is used until VQ_PAIRS_SET.
    core_->active_pairs = 1;
    for (std::size_t i = 0; i < core_->tap.queues(); ++i) XV_TRY(core_->tap.set_queue_enabled(i, i == 0));

    for (std::size_t i = 0; i < npairs; ++i) {
        auto p = std::make_unique<Pair>();
        p->index = i;
        Virtqueue* rxq = 2 * i < ctx_.queues.size() ? ctx_.queues[2 * i] : nullptr;
        Virtqueue* txq = 2 * i + 1 < ctx_.queues.size() ? ctx_.queues[2 * i + 1] : nullptr;
        int fd = core_->tap.fd(i);
        if (rxq) {
            int d = ::dup(fd);
            if (d < 0) return errno_error(errno, core_->id.label() + ": dup tap fd");
            p->rxq = rxq;
            p->rxd.emplace(rxq->strand(), d);
            p->spill.resize(hdr_len_ + net_hdr::kMaxFrame);
            p->rx_done.reserve(2 * kRxBatch);
            p->held.reserve(2 * kRxBatch);
            p->rx_done_len.reserve(2 * kRxBatch);
        }
        if (txq) {
            int d = ::dup(fd);
            if (d < 0) return errno_error(errno, core_->id.label() + ": dup tap fd");
            p->txq = txq;
            p->txd.emplace(txq->strand(), d);
            p->tx_batch.reserve(kTxBatch);
            p->tx_hdrs.reserve(kTxBatch);
            p->tx_state.reserve(kTxBatch);
            p->tx_iov.reserve(64);
            p->tx_copy.resize(kTxCopy);
        }
        p->enabled = (i == 0);
        pairs_.push_back(std::move(p));
    }
    if (has(f, net_feature::kCtrlVq) && ctrl_index_ < ctx_.queues.size()) ctrlq_ = ctx_.queues[ctrl_index_];

    // Chains may have been posted before DRIVER_OK: look once.
    for (auto& p : pairs_) {
        if (p->rxq) post_pump(*p, Dir::Rx);
        if (p->txq) post_pump(*p, Dir::Tx);
    }
    if (ctrlq_) asio::post(ctrlq_->strand(), [self = shared_from_this()] { self->ctrl_pump(); });
    return ok();
}

void Session::stop() {
    // Taking each lock waits for a handler running on that queue; after it
    // every handler sees *_stopped and touches nothing.
    for (auto& p : pairs_) {
        {
            std::lock_guard lk(p->rx_mu);
            p->rx_stopped = true;
            p->held.clear();
            p->partial.clear();
            p->rx_done.clear();
            p->rx_done_len.clear();
            p->spilling = false;
            boost::system::error_code ec;
            if (p->rxd) p->rxd->close(ec);
            p->rxq = nullptr;
        }
        {
            std::lock_guard lk(p->tx_mu);
            p->tx_stopped = true;
            p->tx_batch.clear();
            p->tx_hdrs.clear();
            p->tx_state.clear();
            p->tx_next = p->tx_done = 0;
            boost::system::error_code ec;
            if (p->txd) p->txd->close(ec);
            p->txq = nullptr;
        }
    }
    std::lock_guard lk(ctrl_mu_);
    ctrl_stopped_ = true;
    ctrlq_ = nullptr;
}

void Session::post_pump(Pair& p, Dir d) {
    Virtqueue* q = d == Dir::Rx ? p.rxq : p.txq;
    if (!q) return;
    asio::post(q->strand(), [self = shared_from_this(), pp = &p, d] {
        std::lock_guard lk(d == Dir::Rx ? pp->rx_mu : pp->tx_mu);
        if (d == Dir::Rx)
            self->rx_pump(*pp);
        else
            self->tx_pump(*pp);
    });
}

void Session::notify(std::uint16_t q) {
    if (q == ctrl_index_) {
        ctrl_pump();
        return;
    }
    std::size_t i = q / 2;
    if (i >= pairs_.size()) return;
    Pair& p = *pairs_[i];
    if (q % 2 == 0) {
        std::lock_guard lk(p.rx_mu);
        // Already waiting for the tap with buffers in hand: nothing to do.
        if (p.rx_armed && !p.spilling && !p.held.empty()) return;
        rx_pump(p);
    } else {
        std::lock_guard lk(p.tx_mu);
        tx_pump(p);
    }
}

// ---------------------------------------------------------------- rx -----

void Session::set_num_buffers(DescriptorChain& c, std::uint16_t n) {
    // virtio 1.2 §5.1.6.4: num_buffers = descriptor chains used for this
    // packet (1 without MRG_RXBUF).
    if (hdr_len_ < 12) return;
    auto w = c.writer();
    w.skip(10);
    (void)w.write_obj(std::uint16_t(n));  // little-endian host
}

void Session::rx_used(Pair& p, DescriptorChain&& c, std::uint32_t len) {
    p.rx_done.push_back(std::move(c));
    p.rx_done_len.push_back(len);
}

void Session::rx_flush(Pair& p) {
    // One unmap call for the chains used since the last flush, then their
    // used entries in the order they were used (the chains of a merged
    // frame stay adjacent, §5.1.6.4). The notification is the caller's.
    if (p.rx_done.empty()) return;
    p.rxq->push_batch(p.rx_done, p.rx_done_len);
    p.rx_done.clear();
    p.rx_done_len.clear();
}

bool Session::rx_fill(Pair& p, bool& pushed) {
    // Room held for the next frame: one chain without MRG_RXBUF (§5.1.6.3.2),
    // else chains up to rx_target_ (counted only as far as needed).
    std::size_t cap = 0;
    for (std::size_t i = 0; i < p.held.size() && (mrg_ ? cap < rx_target_ : cap == 0); ++i)
        cap += p.held[i].writable_bytes();
    for (;;) {
        if (!p.held.empty() && (!mrg_ || cap >= rx_target_)) return true;
        // A batch of chains in one grant map call. Empty, or broken (the
        // transport was told): serve what is held.
        p.rx_pop.clear();
        if (next_chains(*p.rxq, kRxBatch, p.rx_pop) != Next::Chain) return !p.held.empty();
        for (auto& c : p.rx_pop) {
            // §5.1.6.3.1: every rx buffer holds at least the header.
            if (c.writable_bytes() < hdr_len_) {
                XV_LOG_LIMITED(core_->rl, spdlog::level::warn, "{}: {} ({} writable bytes), returned empty",
                               qname(p.rxq), net_error_name(NetError::RxBufferTooSmall), c.writable_bytes());
                rx_used(p, std::move(c), 0);
                pushed = true;
                continue;
            }
            cap += c.writable_bytes();
            p.held.push_back(std::move(c));
        }
        p.rx_pop.clear();
    }
}

void Session::rx_arm(Pair& p) {
    if (p.rx_armed || !p.rxd) return;
    p.rx_armed = true;
    auto self = shared_from_this();
    Pair* pp = &p;
    p.rxd->async_wait(asio::posix::stream_descriptor::wait_read, [self, pp](boost::system::error_code ec) {
        std::lock_guard lk(pp->rx_mu);
        pp->rx_armed = false;
        if (ec || pp->rx_stopped) return;
        self->rx_pump(*pp);
    });
}

bool Session::rx_continue_spill(Pair& p, bool& pushed) {
    while (p.spill_off < p.spill_len) {
        DescriptorChain c;
        if (!p.held.empty()) {
            c = std::move(p.held.front());
            p.held.pop_front();
        } else {
            const Next got = next_chain(*p.rxq, c);
            if (got == Next::Broken) return false;
            if (got == Next::Empty) {
                core_->n.rx_stalls++;
                return false;  // wait for the next rx kick
            }
            if (c.writable_bytes() < hdr_len_) {
                rx_used(p, std::move(c), 0);
                pushed = true;
                continue;
            }
        }
        auto w = c.writer();
        std::size_t k = std::min<std::size_t>(w.available(), p.spill_len - p.spill_off);
        (void)w.write(std::span<const std::byte>(p.spill.data() + p.spill_off, k));
        p.spill_off += k;
        p.partial.emplace_back(std::move(c), static_cast<std::uint32_t>(k));
    }
    set_num_buffers(p.partial.front().first, static_cast<std::uint16_t>(p.partial.size()));
    for (auto& [c, len] : p.partial) rx_used(p, std::move(c), len);
    p.partial.clear();
    p.spilling = false;
    core_->n.rx_merged++;
    pushed = true;
    return true;
}

namespace {
/// Copies bytes [off, off + out.size()) of the gather list into `out`.
bool gather(const std::vector<iovec>& iov, std::size_t off, std::span<std::byte> out) {
    std::size_t done = 0;
    for (const auto& v : iov) {
        if (done == out.size()) break;
        if (off >= v.iov_len) {
            off -= v.iov_len;
            continue;
        }
        std::size_t k = std::min(v.iov_len - off, out.size() - done);
        std::memcpy(out.data() + done, static_cast<const std::byte*>(v.iov_base) + off, k);
        done += k;
        off = 0;
    }
    return done == out.size();
}
}  // namespace

void Session::rx_pump(Pair& p) {
    if (p.rx_stopped || !p.rxq || p.rxq->broken() || !p.enabled) return;
    bool pushed = false;
    std::vector<iovec>& iov = p.rx_iov;  // reused: no allocation per frame
    unsigned budget = 0;
    for (; budget < kRxBudget; ++budget) {
        if (p.spilling) {
            if (!rx_continue_spill(p, pushed)) break;
            continue;
        }
        if (!rx_fill(p, pushed)) {
            // Backpressure: no rx buffers, so the frame stays in the tap.
            core_->n.rx_stalls++;
            break;
        }
        iov.clear();
        std::size_t included = 0, guest_cap = 0;
        for (auto& c : p.held) {
            const auto& segs = c.writable_segments();
            if (iov.size() + segs.size() + 1 > kIovMax) break;
            for (auto s : segs) iov.push_back({s.data(), s.size()});
            guest_cap += c.writable_bytes();
            ++included;
            if (!mrg_) break;  // §5.1.6.3.2: one chain per packet without MRG_RXBUF
            if (guest_cap >= rx_target_) break;  // room for the largest frame
        }
        if (included == 0) break;  // a single chain with > 1023 segments: cannot happen with queue sizes <= 256
        iov.push_back({p.spill.data(), p.spill.size()});
        ssize_t n = ::readv(p.rxd->native_handle(), iov.data(), static_cast<int>(iov.size()));
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                XV_LOG_LIMITED(core_->rl, spdlog::level::warn, "{}: read from tap {}: {}", qname(p.rxq),
                               core_->tap.name(), std::strerror(errno));
            if (errno == EBADFD) break;  // queue detached (VQ_PAIRS_SET)
            rx_arm(p);
            break;
        }
        rx_deliver(p, iov, static_cast<std::size_t>(n), included, guest_cap, pushed);
        if (p.rx_done.size() >= kRxBatch) {
            rx_flush(p);
            p.rxq->notify_guest();
        }
    }
    if (budget == kRxBudget) post_pump(p, Dir::Rx);
    if (pushed) {
        rx_flush(p);
        p.rxq->notify_guest();
    }
}

void Session::rx_deliver(Pair& p, const std::vector<iovec>& iov, std::size_t n, std::size_t included,
                         std::size_t guest_cap, bool& pushed) {
    // `iov`: the writable segments of the first `included` held chains,
    // then the spill buffer, as read into.
    Mac dst{};
    if (n < hdr_len_ + net_hdr::kMinFrame || !gather(iov, hdr_len_, std::as_writable_bytes(std::span(dst)))) return;
    if (!core_->accept(dst)) {
        core_->n.rx_filtered++;
        return;  // the chains stay held for the next frame
    }
    // §5.1.6.4.1: without GUEST_CSUM the device sets no header flags.
    if (!has_feature(net_feature::kGuestCsum)) {
        auto w = p.held.front().writer();
        (void)w.write_obj(std::uint8_t(0));
    }
    if (n > guest_cap) {
        if (!mrg_) {
            core_->n.rx_dropped++;
            XV_LOG_LIMITED(core_->rl, spdlog::level::warn, "{}: {} ({} bytes for a {}-byte frame), frame dropped",
                           qname(p.rxq), net_error_name(NetError::RxBufferTooSmall), guest_cap, n);
            return;
        }
        // MRG_RXBUF: the held chains are full; the rest goes out as more
        // chains arrive (the tap is not read meanwhile).
        for (std::size_t i = 0; i < included; ++i) {
            std::uint32_t len = p.held.front().writable_bytes();
            p.partial.emplace_back(std::move(p.held.front()), len);
            p.held.pop_front();
        }
        p.spill_len = n - guest_cap;
        p.spill_off = 0;
        p.spilling = true;
        // The spilled bytes sit at the start of the spill buffer.
        core_->n.rx_frames++;
        core_->n.rx_bytes += n - hdr_len_;
        return;
    }
    std::size_t left = n;
    std::uint16_t used = 0;
    std::vector<std::uint32_t>& lens = p.rx_lens;
    lens.clear();
    for (std::size_t i = 0; i < included && left > 0; ++i) {
        std::size_t k = std::min<std::size_t>(left, p.held[i].writable_bytes());
        lens.push_back(static_cast<std::uint32_t>(k));
        left -= k;
        ++used;
    }
    set_num_buffers(p.held.front(), used);
    // Counted before the used entries are published (a guest that sees the
    // frame also sees it in the statistics).
    if (used > 1) core_->n.rx_merged++;
    core_->n.rx_frames++;
    core_->n.rx_bytes += n - hdr_len_;
    for (auto len : lens) {
        rx_used(p, std::move(p.held.front()), len);
        p.held.pop_front();
    }
    pushed = true;
}

// ---------------------------------------------------------------- tx -----

NetError Session::tx_prepare(DescriptorChain& c, VirtioNetHdr& hdr, std::uint32_t& frame_len) {
    // §5.1.6.2: header then frame, all device-readable. Device-writable
    // parts of a tx chain are ignored.
    if (c.readable_bytes() < hdr_len_ + net_hdr::kMinFrame) return NetError::ShortChain;
    frame_len = static_cast<std::uint32_t>(c.readable_bytes() - hdr_len_);
    hdr = {};
    // The header is copied once: the guest cannot change it after validation.
    auto out = std::as_writable_bytes(std::span<VirtioNetHdr, 1>(&hdr, 1)).first(hdr_len_);
    const auto segs = c.readable_segments();
    if (!segs.empty() && segs[0].size() >= hdr_len_) {
        std::memcpy(out.data(), segs[0].data(), hdr_len_);  // the usual case: one segment holds it
    } else {
        auto r = c.reader();
        if (!r.read(out)) return NetError::ShortChain;
    }
    return validate_tx_header(hdr, frame_len, ctx_.features);
}

void Session::tx_arm(Pair& p) {
    if (p.tx_waiting || !p.txd) return;
    p.tx_waiting = true;
    core_->n.tx_eagain++;
    auto self = shared_from_this();
    Pair* pp = &p;
    p.txd->async_wait(asio::posix::stream_descriptor::wait_write, [self, pp](boost::system::error_code ec) {
        std::lock_guard lk(pp->tx_mu);
        pp->tx_waiting = false;
        if (ec || pp->tx_stopped) return;
        self->tx_pump(*pp);
    });
}

void Session::tx_flush(Pair& p, bool& pushed) {
    // The chains written (or dropped) since the last flush, in ring order:
    // their grant mappings released in one unmap call, then their used
    // entries written. §5.1.6.2: tx buffers are device-readable only: used
    // length 0.
    if (p.tx_done == p.tx_next) return;
    // Counted before the used entries are published, so that a guest that
    // sees a buffer used also sees it in the statistics.
    if (p.tx_sent_frames) {
        core_->n.tx_frames.fetch_add(p.tx_sent_frames, std::memory_order_relaxed);
        core_->n.tx_bytes.fetch_add(p.tx_sent_bytes, std::memory_order_relaxed);
        p.tx_sent_frames = p.tx_sent_bytes = 0;
    }
    p.txq->push_batch(std::span<DescriptorChain>(p.tx_batch.data() + p.tx_done, p.tx_next - p.tx_done), {});
    p.tx_done = p.tx_next;
    pushed = true;
}

namespace {
/// Appends the writev list of one frame: the validated copy of its header,
/// then the chain's readable segments after the guest's header (zero copy:
/// the frame goes to the tap straight from the grant pages).
void frame_iov(std::vector<iovec>& iov, const VirtioNetHdr& hdr, std::size_t hdr_len, const DescriptorChain& c) {
    iov.push_back({const_cast<VirtioNetHdr*>(&hdr), hdr_len});
    std::size_t skip = hdr_len;
    for (auto s : c.readable_segments()) {
        if (skip >= s.size()) {
            skip -= s.size();
            continue;
        }
        iov.push_back({const_cast<std::byte*>(s.data()) + skip, s.size() - skip});
        skip = 0;
    }
}
}  // namespace

void Session::tx_result(Pair& p, std::size_t i, ssize_t n, int err) {
    const std::size_t frame_len = p.tx_batch[i].readable_bytes() - hdr_len_;
    if (n >= 0) {
        // Added to the statistics by tx_flush(), before the used entries
        // are published.
        ++p.tx_sent_frames;
        p.tx_sent_bytes += frame_len;
    } else {
        core_->n.tx_dropped++;
        XV_LOG_LIMITED(core_->rl, spdlog::level::warn, "{}: {} {}: {} (frame of {} bytes dropped)", qname(p.txq),
                       core_->tap.name(), net_error_name(NetError::TapRejected), std::strerror(err), frame_len);
    }
    p.tx_state[i] = kTxDone;
}

bool Session::tx_write(Pair& p, std::size_t i) {
    // One frame, one system call, on the queue's strand: a frame the tap
    // refuses for want of room (EAGAIN) stays pending and no later frame of
    // the queue is tried before it, so the frames of a queue reach the tap
    // in ring order (a batch handed to the kernel at once could have a
    // later frame find room that an earlier one did not).
    const DescriptorChain& c = p.tx_batch[i];
    const int fd = p.txd->native_handle();
    const std::size_t total = c.readable_bytes();  // header + frame
    const void* buf = nullptr;
    std::vector<iovec>& iov = p.tx_iov;  // reused: no allocation per frame or per kick
    if (total <= kTxCopy) {
        // The validated copy of the header, then the frame, in one buffer.
        std::byte* out = p.tx_copy.data();
        std::memcpy(out, &p.tx_hdrs[i], hdr_len_);
        std::size_t o = hdr_len_, skip = hdr_len_;
        for (auto s : c.readable_segments()) {
            if (skip >= s.size()) {
                skip -= s.size();
                continue;
            }
            std::memcpy(out + o, s.data() + skip, s.size() - skip);
            o += s.size() - skip;
            skip = 0;
        }
        buf = out;
    } else {
        iov.clear();
        frame_iov(iov, p.tx_hdrs[i], hdr_len_, c);
        if (iov.size() > kIovMax) {
            // Too many pieces for one writev: linearise (rare).
            const std::size_t frame_len = total - hdr_len_;
            p.tx_bounce.resize(frame_len);
            std::size_t o = 0;
            for (std::size_t k = 1; k < iov.size(); ++k) {
                std::memcpy(p.tx_bounce.data() + o, iov[k].iov_base, iov[k].iov_len);
                o += iov[k].iov_len;
            }
            iov.resize(1);
            iov.push_back({p.tx_bounce.data(), frame_len});
        }
    }
    for (;;) {
        const ssize_t n = buf ? ::write(fd, buf, total) : ::writev(fd, iov.data(), static_cast<int>(iov.size()));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            tx_arm(p);  // keep this chain and the ones after it; resend once the tap has room
            return false;
        }
        tx_result(p, i, n, errno);
        return true;
    }
}

namespace {
/// A yield between two looks that takes longer than this ran another
/// task: the CPU is wanted elsewhere and the window closes.
constexpr std::chrono::microseconds kTxPollContended{20};
}  // namespace

void Session::tx_poll_close(Pair& p, bool found, bool contended) {
    p.tx_polling = false;
    if (found) {
        core_->n.tx_poll_hits.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    core_->n.tx_polls_in_vain.fetch_add(1, std::memory_order_relaxed);
    if (contended) core_->n.tx_polls_contended.fetch_add(1, std::memory_order_relaxed);
    core_->n.tx_poll_in_vain_ns.fetch_add(std::uint64_t(std::max<std::int64_t>(0, thread_cpu_ns() - p.tx_poll_cpu0)),
                                          std::memory_order_relaxed);
}

Session::Take Session::tx_take(Pair& p, unsigned max) {
    if (core_->tx_poll.count() <= 0) {
        switch (next_chains(*p.txq, max, p.tx_batch)) {
            case Next::Chain: return Take::Chain;
            case Next::Empty: return Take::Empty;
            case Next::Broken: return Take::Broken;
        }
    }
    // The ring ran empty: look again for up to tx_poll before asking the
    // driver to kick, as vhost-net's busy polling does. Notifications stay
    // off meanwhile (virtio 1.2 §2.7.10): a driver that refills within the
    // window does not kick. Each look is one handler on the queue's strand:
    // other handlers (other queues, the ioreq path, stop) run between looks.
    auto r = p.txq->pop_batch(max, p.tx_batch);
    if (!r) return Take::Broken;  // fatal() was called: the transport was told
    if (*r > 0) {
        if (p.tx_polling) tx_poll_close(p, /*found=*/true);
        return Take::Chain;
    }
    const auto now = std::chrono::steady_clock::now();
    if (!p.tx_polling) {
        p.tx_polling = true;
        p.tx_poll_end = now + core_->tx_poll;
        p.tx_poll_cpu0 = thread_cpu_ns();
        core_->n.tx_polls.fetch_add(1, std::memory_order_relaxed);
    } else if (now >= p.tx_poll_end) {
        tx_poll_close(p, /*found=*/false);
    }
    if (p.tx_polling) {
        // Between looks the CPU goes to whoever else wants it (on a busy
        // host the guest's vCPU may wait for this very CPU); a yield that
        // comes back late means it is wanted: the window closes.
        const auto before = std::chrono::steady_clock::now();
        std::this_thread::yield();
        if (std::chrono::steady_clock::now() - before <= kTxPollContended || !core_->tx_poll_gives_way) {
            // One look in flight at a time (a kick during the window runs
            // tx_pump too, and must not start a second chain of looks).
            if (!p.tx_poll_posted) {
                p.tx_poll_posted = true;
                asio::post(p.txq->strand(), [self = shared_from_this(), pp = &p] {
                    std::lock_guard lk(pp->tx_mu);
                    pp->tx_poll_posted = false;
                    self->tx_pump(*pp);
                });
            }
            return Take::Polling;
        }
        tx_poll_close(p, /*found=*/false, /*contended=*/true);
    }
    // The window is over: ask for a kick and look once more (next_chains).
    switch (next_chains(*p.txq, max, p.tx_batch)) {
        case Next::Chain: return Take::Chain;
        case Next::Empty: return Take::Empty;
        case Next::Broken: return Take::Broken;
    }
    return Take::Broken;
}

void Session::tx_pump(Pair& p) {
    if (p.tx_stopped || !p.txq || p.txq->broken() || p.tx_waiting) return;
    // virtio 1.2 §2.7.10: while the device works through the ring (and
    // while it polls) the driver need not kick: with EVENT_IDX the pops
    // leave avail_event where it is, without it used flags say NO_NOTIFY.
    // Every way out that waits for a kick goes through next_chains(),
    // which asks for kicks again and looks once more; the others come back
    // by themselves (budget: posted; tap full: armed; polling: posted).
    p.txq->disable_notifications();
    bool pushed = false;
    unsigned budget = 0;
    while (budget < kTxBudget && !p.tx_waiting) {
        if (p.tx_next == p.tx_batch.size()) {
            // The batch is done: give it back (one unmap call, one used
            // publish, one notification check: virtio 1.2 §2.7.10 decides
            // whether it interrupts), then take the next one off the ring
            // in one grant map call. Each chain is validated once and its
            // header copied (the guest cannot change it after validation).
            tx_flush(p, pushed);
            if (pushed) p.txq->notify_guest();
            pushed = false;
            p.tx_batch.clear();
            p.tx_hdrs.clear();
            p.tx_state.clear();
            p.tx_next = p.tx_done = 0;
            if (tx_take(p, std::min<unsigned>(kTxBatch, kTxBudget - budget)) != Take::Chain) break;
            for (auto& c : p.tx_batch) {
                VirtioNetHdr hdr{};
                std::uint32_t frame_len = 0;
                NetError e = tx_prepare(c, hdr, frame_len);
                if (e != NetError::None) {
                    core_->n.tx_dropped++;
                    XV_LOG_LIMITED(core_->rl, spdlog::level::warn,
                                   "{}: tx frame dropped: {} (len {}, flags {:#x}, gso_type {:#x}, hdr_len {}, csum {}+{})",
                                   qname(p.txq), net_error_name(e), c.readable_bytes(), hdr.flags, hdr.gso_type,
                                   hdr.hdr_len, hdr.csum_start, hdr.csum_offset);
                }
                hdr.num_buffers = 0;
                p.tx_hdrs.push_back(hdr);
                // An invalid chain goes back unsent, in ring order with the others.
                p.tx_state.push_back(e == NetError::None ? kTxPending : kTxDone);
            }
            continue;
        }
        const std::size_t i = p.tx_next;
        if (p.tx_state[i] == kTxPending && !tx_write(p, i)) break;  // the tap is full: armed
        ++p.tx_next;
        ++budget;
    }
    // Whatever was sent or dropped goes back now, also while waiting for
    // room in the tap (tx never holds a sent buffer).
    tx_flush(p, pushed);
    if (budget >= kTxBudget && !p.tx_waiting) post_pump(p, Dir::Tx);
    if (pushed) p.txq->notify_guest();
}

// -------------------------------------------------------------- ctrl -----

void Session::ctrl_pump() {
    std::lock_guard lk(ctrl_mu_);
    if (ctrl_stopped_ || !ctrlq_ || ctrlq_->broken()) return;
    bool pushed = false;
    for (unsigned budget = 0; budget < 64; ++budget) {
        DescriptorChain c;
        if (next_chain(*ctrlq_, c) != Next::Chain) break;
        pushed = true;
        // §5.1.6.5: {u8 class; u8 command; data (readable)} then u8 ack (writable).
        if (c.writable_bytes() < 1) {
            core_->n.ctrl_err++;
            XV_LOG_LIMITED(core_->rl, spdlog::level::warn, "{}: control message without an ack byte", qname(ctrlq_));
            ctrlq_->push(std::move(c), 0);
            continue;
        }
        NetError e = NetError::None;
        std::uint8_t cls = 0xff, cmd = 0xff;
        auto rd = c.reader();
        // Bound what is copied: the largest valid message is a full MAC table.
        constexpr std::size_t kMaxData = 8 + 2 * 6 * 4096;
        if (c.readable_bytes() < 2 || c.readable_bytes() - 2 > kMaxData) {
            e = NetError::CtrlMalformed;
        } else {
            cls = *rd.read_obj<std::uint8_t>();
            cmd = *rd.read_obj<std::uint8_t>();
            std::vector<std::byte> data(rd.available());
            (void)rd.read(data);
            e = ctrl_execute(cls, cmd, data);
        }
        if (e == NetError::None) {
            core_->n.ctrl_ok++;
        } else {
            core_->n.ctrl_err++;
            XV_LOG_LIMITED(core_->rl, spdlog::level::warn, "{}: control class {} command {}: {}", qname(ctrlq_), cls,
                           cmd, net_error_name(e));
        }
        auto w = c.writer();
        (void)w.write_obj(net_error_ack(e));
        ctrlq_->push(std::move(c), 1);
    }
    if (pushed) ctrlq_->notify_guest();
}

NetError Session::ctrl_execute(std::uint8_t cls, std::uint8_t cmd, const std::vector<std::byte>& data) {
    using namespace net_ctrl;
    auto u8 = [&](std::size_t i) { return std::to_integer<std::uint8_t>(data[i]); };
    auto le32 = [&](std::size_t i) {
        return std::uint32_t(u8(i)) | std::uint32_t(u8(i + 1)) << 8 | std::uint32_t(u8(i + 2)) << 16 |
               std::uint32_t(u8(i + 3)) << 24;
    };
    switch (cls) {
        case kClassRx: {
            // §5.1.6.5.1: PROMISC/ALLMULTI with CTRL_RX; data is one byte on/off.
            if (!has_feature(net_feature::kCtrlRx)) return NetError::CtrlUnsupported;
            if (cmd != kRxPromisc && cmd != kRxAllmulti) return NetError::CtrlUnsupported;
            if (data.size() != 1) return NetError::CtrlMalformed;
            std::lock_guard lk(core_->cfg_mu);
            (cmd == kRxPromisc ? core_->promisc : core_->allmulti) = u8(0) != 0;
            core_->promisc_fast.store(core_->promisc, std::memory_order_release);
            return NetError::None;
        }
        case kClassMac: {
            if (cmd == kMacTableSet) {
                // §5.1.6.5.2: {le32 entries; u8 macs[entries][6]} unicast, then multicast.
                if (!has_feature(net_feature::kCtrlRx)) return NetError::CtrlUnsupported;
                std::size_t off = 0;
                std::vector<Mac> tables[2];
                bool overflow[2] = {false, false};
                for (int t = 0; t < 2; ++t) {
                    if (data.size() - off < 4) return NetError::CtrlMalformed;
                    std::uint64_t entries = le32(off);
                    off += 4;
                    if (entries * 6 > data.size() - off) return NetError::CtrlMalformed;
                    overflow[t] = entries > kMacTableMax;
                    for (std::uint64_t e = 0; e < entries; ++e, off += 6) {
                        if (overflow[t]) continue;
                        Mac m;
                        for (int b = 0; b < 6; ++b) m[b] = u8(off + b);
                        tables[t].push_back(m);
                    }
                }
                if (off != data.size()) return NetError::CtrlMalformed;
                std::lock_guard lk(core_->cfg_mu);
                core_->uc = std::move(tables[0]);
                core_->mc = std::move(tables[1]);
                // A table too long to keep: accept the whole class instead.
                core_->alluni = overflow[0];
                if (overflow[1]) core_->allmulti = true;
                return NetError::None;
            }
            if (cmd == kMacAddrSet) {
                // §5.1.6.5.2: MAC_ADDR_SET with CTRL_MAC_ADDR; data is the 6-byte address.
                if (!has_feature(net_feature::kCtrlMacAddr)) return NetError::CtrlUnsupported;
                if (data.size() != 6) return NetError::CtrlMalformed;
                Mac m;
                for (int b = 0; b < 6; ++b) m[b] = u8(b);
                if (m[0] & 1) return NetError::CtrlBadValue;  // a multicast address is no station address
                {
                    std::lock_guard lk(core_->cfg_mu);
                    core_->mac = m;
                }
                return NetError::None;
            }
            return NetError::CtrlUnsupported;
        }
        case kClassAnnounce: {
            // §5.1.6.5.4: ANNOUNCE_ACK clears the ANNOUNCE status bit.
            if (!has_feature(net_feature::kGuestAnnounce)) return NetError::CtrlUnsupported;
            if (cmd != kAnnounceAck) return NetError::CtrlUnsupported;
            if (!data.empty()) return NetError::CtrlMalformed;
            bool changed;
            {
                std::lock_guard lk(core_->cfg_mu);
                changed = core_->announce;
                core_->announce = false;
            }
            (void)changed;
            return NetError::None;
        }
        case kClassMq: {
            if (!has_feature(net_feature::kMq)) return NetError::CtrlUnsupported;
            if (cmd != kMqVqPairsSet) return NetError::CtrlUnsupported;
            if (data.size() != 2) return NetError::CtrlMalformed;
            return set_pairs(static_cast<std::uint16_t>(u8(0) | u8(1) << 8));
        }
        default: return NetError::CtrlUnsupported;
    }
}

NetError Session::set_pairs(std::uint16_t n) {
    // §5.1.6.5.5: 1 <= virtqueue_pairs <= max_virtqueue_pairs.
    if (n < 1 || n > pairs_.size()) return NetError::CtrlBadValue;
    // §5.1.6.5.5: "The driver MUST configure the virtqueues before enabling
    // them with the VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET command": both queues of
    // every pair asked for must have been enabled.
    for (std::size_t i = 0; i < n; ++i) {
        Pair& p = *pairs_[i];
        {
            std::lock_guard lk(p.rx_mu);
            if (!p.rxq) return NetError::CtrlBadValue;
        }
        std::lock_guard lk(p.tx_mu);
        if (!p.txq) return NetError::CtrlBadValue;
    }
    for (std::size_t i = 0; i < pairs_.size(); ++i) {
        Pair& p = *pairs_[i];
        bool en = i < n;
        // §5.1.6.5.5: no packets on rx queues beyond the pairs in use once
        // the command is acked: detach their tap queues first.
        auto r = core_->tap.set_queue_enabled(i, en);
        if (!r) {
            XV_LOG_LIMITED(core_->rl, spdlog::level::err, "{}: {}", core_->id.label(), r.error().describe());
            return NetError::CtrlBadValue;
        }
        bool was = p.enabled.exchange(en);
        if (en && !was) {
            std::lock_guard lk(p.rx_mu);
            if (p.rxq) {
                auto self = shared_from_this();
                Pair* pp = &p;
                asio::post(p.rxq->strand(), [self, pp] {
                    std::lock_guard lk2(pp->rx_mu);
                    self->rx_pump(*pp);
                });
            }
        }
    }
    core_->active_pairs = n;
    return NetError::None;
}

// ------------------------------------------------------------ device -----

class NetDeviceImpl final : public NetDevice {
public:
    NetDeviceImpl(std::shared_ptr<Core> core, asio::any_io_executor ex) : core_(std::move(core)), ex_(std::move(ex)) {}
    ~NetDeviceImpl() override { reset([] {}); }

    transport::DeviceId device_id() const override { return transport::DeviceId::Net; }
    const transport::DeviceIdentity& identity() const override { return core_->id; }
    std::uint64_t device_features() const override { return core_->offered; }
    std::uint16_t num_queues() const override { return static_cast<std::uint16_t>(2 * core_->max_pairs + 1); }
    std::uint32_t config_size() const override { return 20; }

    void read_config(std::uint32_t offset, std::span<std::byte> out) const override {
        // §5.1.4: mac[6] @0, le16 status @6, le16 max_virtqueue_pairs @8,
        // le16 mtu @10, le32 speed @12, u8 duplex @16, padding.
        std::array<std::uint8_t, 20> c{};
        {
            std::lock_guard lk(core_->cfg_mu);
            std::copy(core_->mac.begin(), core_->mac.end(), c.begin());
            std::uint16_t st = (core_->link_up ? net_status::kLinkUp : 0) | (core_->announce ? net_status::kAnnounce : 0);
            c[6] = st & 0xff;
            c[7] = st >> 8;
        }
        c[8] = core_->max_pairs & 0xff;
        c[9] = core_->max_pairs >> 8;
        c[10] = core_->mtu & 0xff;
        c[11] = core_->mtu >> 8;
        c[12] = c[13] = c[14] = c[15] = 0xff;  // speed unknown
        c[16] = 0xff;                          // duplex unknown
        for (std::size_t i = 0; i < out.size(); ++i)
            out[i] = offset + i < c.size() ? std::byte(c[offset + i]) : std::byte(0);
    }

    Result<void> activate(transport::ActivateContext ctx) override {
        reset([] {});
        auto s = std::make_shared<Session>(core_, std::move(ctx));
        if (auto r = s->start(); !r) {
            s->stop();
            return r;
        }
        std::lock_guard lk(mu_);
        session_ = std::move(s);
        return ok();
    }

    void reset(std::function<void()> done) override {
        std::shared_ptr<Session> s;
        {
            std::lock_guard lk(mu_);
            s = std::move(session_);
        }
        if (s) s->stop();
        if (done) done();
    }

    void queue_notify(std::uint16_t q) override {
        if (auto s = session()) s->notify(q);
    }

    const std::string& tap_name() const override { return core_->tap.name(); }
    std::array<std::uint8_t, 6> mac() const override {
        std::lock_guard lk(core_->cfg_mu);
        return core_->mac;
    }
    void set_link_up(bool up) override {
        {
            std::lock_guard lk(core_->cfg_mu);
            if (core_->link_up == up) return;
            core_->link_up = up;
        }
        // §5.1.4.2: a status change is signalled with a config change.
        if (auto s = session(); s && s->has_feature(net_feature::kStatus)) s->config_changed();
    }
    bool announce() override {
        auto s = session();
        if (!s || !s->has_feature(net_feature::kGuestAnnounce)) return false;
        {
            std::lock_guard lk(core_->cfg_mu);
            core_->announce = true;
        }
        s->config_changed();
        return true;
    }
    std::uint16_t active_pairs() const override { return core_->active_pairs.load(); }
    NetStats stats() const override {
        const auto& n = core_->n;
        return NetStats{n.tx_frames,   n.tx_bytes,     n.tx_dropped,       n.tx_eagain,          n.rx_frames,
                        n.rx_bytes,    n.rx_filtered,  n.rx_dropped,       n.rx_merged,          n.rx_stalls,
                        n.ctrl_ok,     n.ctrl_err,     n.tx_polls,         n.tx_poll_hits,       n.tx_polls_in_vain,
                        n.tx_polls_contended, n.tx_poll_in_vain_ns};
    }

private:
    std::shared_ptr<Session> session() const {
        std::lock_guard lk(mu_);
        return session_;
    }

    std::shared_ptr<Core> core_;
    asio::any_io_executor ex_;
    mutable std::mutex mu_;
    std::shared_ptr<Session> session_;
};

}  // namespace

Result<std::unique_ptr<NetDevice>> make_net_device(const NetConfig& cfg, transport::DeviceIdentity id,
                                                   asio::any_io_executor ex) {
    if (cfg.queues < 1 || cfg.queues > 16)
        return make_error(std::errc::invalid_argument, id.label() + ": queues must be 1..16, not " + std::to_string(cfg.queues));
    if (cfg.mtu != 0 && cfg.mtu < 68)
        return make_error(std::errc::invalid_argument, id.label() + ": mtu below 68");
    if (cfg.tx_poll_us > NetConfig::kMaxTxPollUs)
        return make_error(std::errc::invalid_argument, id.label() + ": tx_poll_us must be 0.." +
                                                           std::to_string(NetConfig::kMaxTxPollUs) + ", not " +
                                                           std::to_string(cfg.tx_poll_us));
    if (cfg.mac && ((*cfg.mac)[0] & 1))
        return make_error(std::errc::invalid_argument, id.label() + ": mac is a multicast address");
    auto tap = net::Tap::open(cfg.tap, cfg.queues);
    if (!tap) return Error{tap.error().code, id.label() + ": " + tap.error().message};
    auto core = std::make_shared<Core>();
    core->id = std::move(id);
    core->tap = std::move(*tap);
    core->max_pairs = cfg.queues;
    core->mtu = cfg.mtu;
    core->tx_poll = std::chrono::microseconds(cfg.tx_poll_us);
    core->tx_poll_gives_way = cfg.tx_poll_gives_way;
    if (cfg.mtu) {
        if (auto r = core->tap.set_mtu(cfg.mtu); !r) return Error{r.error().code, core->id.label() + ": " + r.error().message};
    }
    if (!cfg.bridge.empty()) {
        if (auto r = core->tap.attach_bridge(cfg.bridge); !r)
            return Error{r.error().code, core->id.label() + ": " + r.error().message};
    }
    if (auto r = core->tap.set_up(); !r) return Error{r.error().code, core->id.label() + ": " + r.error().message};
    for (std::size_t i = 1; i < core->tap.queues(); ++i) (void)core->tap.set_queue_enabled(i, false);
    if (cfg.mac) {
        core->mac = *cfg.mac;
    } else {
        std::random_device rd;
        core->mac = {0x52, 0x54, 0x00, std::uint8_t(rd()), std::uint8_t(rd()), std::uint8_t(rd())};
    }
    using namespace net_feature;
    const auto& sup = core->tap.supported();
    std::uint64_t f = fbit(kCsum) | fbit(kMac) | fbit(kHostTso4) | fbit(kHostTso6) | fbit(kMrgRxbuf) | fbit(kStatus) |
                      fbit(kCtrlVq) | fbit(kCtrlRx) | fbit(kGuestAnnounce) | fbit(kCtrlMacAddr);
    if (sup.csum) f |= fbit(kGuestCsum);
    if (sup.tso4) f |= fbit(kGuestTso4);
    if (sup.tso6) f |= fbit(kGuestTso6);
    // UFO both ways only where the kernel still takes it.
    if (sup.ufo) f |= fbit(kGuestUfo) | fbit(kHostUfo);
    if (cfg.mtu) f |= fbit(kMtu);
    if (cfg.queues > 1) f |= fbit(kMq);
    core->offered = f;
    spdlog::info("{}: tap {} with {} queue pair(s), offloads csum={} tso4={} tso6={} ufo={}", core->id.label(),
                 core->tap.name(), cfg.queues, sup.csum, sup.tso4, sup.tso6, sup.ufo);
    return std::unique_ptr<NetDevice>(std::make_unique<NetDeviceImpl>(std::move(core), std::move(ex)));
}

Result<std::unique_ptr<transport::Device>> make_net(const NetConfig& cfg, transport::DeviceIdentity id,
                                                   asio::any_io_executor ex) {
    auto d = make_net_device(cfg, std::move(id), std::move(ex));
    if (!d) return std::move(d).error();
    return std::unique_ptr<transport::Device>(std::move(*d));
}

}  // namespace xv::devices
