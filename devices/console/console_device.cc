// SPDX-License-Identifier: GPL-2.0-only
// virtio-console (virtio 1.2 §5.3): port 0 on a pty, a unix socket or a log;
// with MULTIPORT, ports 1.. on unix sockets and the control queues.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/stream_file.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <atomic>
#include <cerrno>
#include <deque>
#include <cstring>
#include <mutex>
#include <set>

#include "common/next_chain.h"
#include "xv/devices/console.h"
#include "xv/log.h"

namespace xv::devices {

namespace asio = boost::asio;
using transport::DescriptorChain;
using transport::Virtqueue;

std::string_view console_error_name(ConsoleError e) {
    switch (e) {
        case ConsoleError::None: return "ok";
        case ConsoleError::TxHasWritable: return "transmitq chain has device-writable buffers";
        case ConsoleError::TxTooLong: return "transmitq chain too long (truncated)";
        case ConsoleError::RxNotWritable: return "receiveq chain without device-writable space";
        case ConsoleError::ControlShort: return "control message shorter than its 8-byte header (ignored)";
        case ConsoleError::ControlEvent: return "control event the driver does not send (ignored)";
        case ConsoleError::ControlPort: return "control message for a port that does not exist or was not added (ignored)";
        case ConsoleError::ControlValue: return "control value other than 0 or 1 (ignored)";
        case ConsoleError::ControlRxTooSmall: return "control receiveq chain too small for the message (returned unused)";
    }
    return "unknown";
}

std::uint32_t console_error_used_len(ConsoleError e, std::uint32_t written) {
    // virtio 1.2 §2.7.8.2: the used length is exactly what the device wrote;
    // a chain it could not use goes back with 0.
    return e == ConsoleError::RxNotWritable || e == ConsoleError::ControlRxTooSmall ? 0 : written;
}

std::optional<std::string> console_port_name_problem(std::string_view name) {
    if (name.empty()) return "empty";
    if (name.size() > ConsoleConfig::kMaxPortName)
        return "longer than " + std::to_string(ConsoleConfig::kMaxPortName) + " bytes";
    for (char c : name) {
        const auto u = static_cast<unsigned char>(c);
        // The guest makes a file name of it (/dev/virtio-ports/<name>).
        if (u < 0x20 || u == 0x7f) return "contains a control character";
        if (c == '/') return "contains '/'";
    }
    if (name == "." || name == "..") return "is '.' or '..'";
    return std::nullopt;
}

namespace {

constexpr std::size_t kInputChunk = 4096;          ///< host bytes staged for the guest at once
constexpr std::size_t kMaxTxChain = 64 * 1024;     ///< bytes taken from one transmitq chain
constexpr std::size_t kLogPendingMax = 1 << 20;    ///< log bytes waiting for the file
constexpr unsigned kTxBudget = 256;
constexpr std::size_t kMaxPendingControl = 1024;   ///< device control messages waiting for buffers

class Session;

/// The host side: pty/socket/log, output buffer, window size. Survives
/// guest resets. Every handler runs on `strand` holding `mu`.
struct Host : std::enable_shared_from_this<Host> {
    Host(ConsoleConfig c, transport::DeviceIdentity i, asio::any_io_executor ex)
        : cfg(std::move(c)), id(std::move(i)), strand(asio::make_strand(ex)), timer(strand) {}

    ConsoleConfig cfg;
    transport::DeviceIdentity id;
    asio::strand<asio::any_io_executor> strand;
    std::string port_name;  ///< ports 1..: the name sent with PORT_NAME

    std::mutex mu;
    bool closed = false;

    int slave_fd = -1;  ///< kept open so the pty never hangs up
    std::string pty_path;
    std::string sock_path;
    std::optional<asio::local::stream_protocol::acceptor> acceptor;

    std::optional<asio::posix::stream_descriptor> io;  ///< pty master or socket client
    bool is_client = false;
    /// The client stopped taking output (a write failed): it stays attached
    /// until its input is read to end of file, its output waits for the next.
    bool out_dead = false;
    std::uint64_t gen = 0;  ///< bumped when `io` changes
    bool read_armed = false, write_armed = false;

    std::string out;  ///< pending output: out[out_head..]
    std::size_t out_head = 0;

    std::optional<asio::stream_file> logf;
    int log_fd = -1;  ///< fallback when the file cannot go through io_uring
    std::string log_pending, log_inflight;
    bool log_busy = false;

    asio::steady_timer timer;
    std::atomic<std::uint16_t> cols{80}, rows{24};

    std::shared_ptr<Session> session;
    bool input_inflight = false;
    std::function<void()> on_resize;
    /// MULTIPORT: told when a socket client attaches (true) or leaves.
    std::function<void(bool)> on_connect;

    log::RateLimit rl{2.0, 5.0};
    struct Counters {
        std::atomic<std::uint64_t> out_bytes{0}, out_dropped{0}, in_bytes{0}, log_bytes{0}, log_dropped{0},
            emerg_chars{0}, attaches{0}, bad_chains{0}, bad_control{0}, control_in{0}, control_out{0},
            control_dropped{0};
    } n;

    Result<void> open();
    void shutdown();
    void append(std::string_view data);  // on strand, mu held
    void flush();
    void log_kick();
    void arm_read();
    void do_read();
    void drop_client(const char* why);
    void accept_next();
    void poll_winsize();
    void input_done();
    /// Writes what is pending synchronously and closes the file (at shutdown).
    void finish_log();
};

/// The guest side of one port for one activation: its receiveq and
/// transmitq (either may be missing: a queue the driver left disabled).
class Session : public std::enable_shared_from_this<Session> {
public:
    /// `open`: whether host input may go to the guest from the start (port
    /// 0 always; ports 1.. once the driver opened them, PORT_OPEN).
    Session(std::shared_ptr<Host> h, Virtqueue* rxq, Virtqueue* txq, bool open)
        : host_(std::move(h)), has_rx_(rxq != nullptr), rxq_(rxq), txq_(txq), gate_(open) {}
    bool has_rx() const { return has_rx_; }
    /// Host input may be read for the guest now.
    bool rx_open() const { return has_rx_ && gate_.load(); }

    void start() {
        auto self = shared_from_this();
        std::lock_guard lk(tx_mu_);
        if (txq_) asio::post(txq_->strand(), [self] { self->notify_tx(); });
    }

    void stop() {
        {
            std::lock_guard lk(rx_mu_);
            rx_stopped_ = true;
            rxq_ = nullptr;
            in_.clear();
        }
        std::lock_guard lk(tx_mu_);
        tx_stopped_ = true;
        txq_ = nullptr;
    }

    void notify_rx() {
        std::lock_guard lk(rx_mu_);
        rx_pump();
    }
    void notify_tx() {
        std::lock_guard lk(tx_mu_);
        tx_pump();
    }

    /// MULTIPORT: the driver opened (true) or closed the port. Closed, host
    /// input waits (on the host side, and a chunk already read here) until
    /// it opens again: a Linux guest drops what reaches a port nobody opened.
    void set_open(bool open) {
        if (gate_.exchange(open) == open || !open) return;
        auto self = shared_from_this();
        {
            std::lock_guard lk(rx_mu_);
            if (rx_stopped_ || !rxq_) return;
            asio::post(rxq_->strand(), [self] { self->notify_rx(); });
        }
        auto h = host_;
        asio::post(h->strand, [h] {
            std::lock_guard lk(h->mu);
            h->arm_read();
        });
    }

    /// Host input for the guest: one chunk at a time (Host waits for
    /// input_done before reading more).
    void deliver(std::string data) {
        std::unique_lock lk(rx_mu_);
        if (rx_stopped_ || !rxq_) return;
        auto self = shared_from_this();
        asio::post(rxq_->strand(), [self, d = std::move(data)]() mutable {
            std::lock_guard lk2(self->rx_mu_);
            if (self->rx_stopped_) return;
            self->in_ = std::move(d);
            self->in_off_ = 0;
            self->rx_pump();
        });
    }

private:
    std::string qname(const Virtqueue* q) const { return host_->id.label() + " q" + std::to_string(q ? q->index() : 0); }

    void rx_pump() {
        if (rx_stopped_ || !rxq_ || rxq_->broken() || in_.empty() || !gate_.load()) return;
        bool pushed = false;
        while (in_off_ < in_.size()) {
            DescriptorChain c;
            // No rx buffers: the rest waits for the next kick, in order.
            if (next_chain(*rxq_, c) != Next::Chain) break;
            pushed = true;
            // virtio 1.2 §5.3.6.1: receiveq buffers are device-writable.
            if (c.writable_bytes() == 0) {
                host_->n.bad_chains++;
                XV_LOG_LIMITED(host_->rl, spdlog::level::warn, "{}: {}", qname(rxq_),
                               console_error_name(ConsoleError::RxNotWritable));
                rxq_->push(std::move(c), console_error_used_len(ConsoleError::RxNotWritable, 0));
                continue;
            }
            auto w = c.writer();
            std::size_t k = std::min<std::size_t>(w.available(), in_.size() - in_off_);
            (void)w.write(std::as_bytes(std::span(in_.data() + in_off_, k)));
            in_off_ += k;
            host_->n.in_bytes += k;
            rxq_->push(std::move(c), console_error_used_len(ConsoleError::None, static_cast<std::uint32_t>(k)));
        }
        if (pushed) rxq_->notify_guest();
        if (in_off_ >= in_.size()) {
            in_.clear();
            in_off_ = 0;
            auto h = host_;
            asio::post(h->strand, [h] { h->input_done(); });
        }
    }

    void tx_pump() {
        if (tx_stopped_ || !txq_ || txq_->broken()) return;
        std::string data;
        bool pushed = false;
        unsigned budget = 0;
        for (; budget < kTxBudget; ++budget) {
            DescriptorChain c;
            if (next_chain(*txq_, c) != Next::Chain) break;
            pushed = true;
            // virtio 1.2 §5.3.6.1: transmitq buffers are device-readable;
            // writable parts are not ours to fill (ignored).
            if (c.writable_bytes() != 0) {
                host_->n.bad_chains++;
                XV_LOG_LIMITED(host_->rl, spdlog::level::warn, "{}: {}", qname(txq_),
                               console_error_name(ConsoleError::TxHasWritable));
            }
            std::size_t len = c.readable_bytes();
            if (len > kMaxTxChain) {
                host_->n.bad_chains++;
                XV_LOG_LIMITED(host_->rl, spdlog::level::warn, "{}: {} ({} bytes)", qname(txq_),
                               console_error_name(ConsoleError::TxTooLong), len);
                len = kMaxTxChain;
            }
            // Copied at once: the chain goes back right away and a slow host
            // reader never holds guest memory.
            std::size_t at = data.size();
            data.resize(at + len);
            auto rd = c.reader();
            (void)rd.read(std::as_writable_bytes(std::span(data.data() + at, len)));
            txq_->push(std::move(c), 0);
        }
        if (pushed) txq_->notify_guest();
        if (budget == kTxBudget) {
            auto self = shared_from_this();
            asio::post(txq_->strand(), [self] { self->notify_tx(); });
        }
        if (!data.empty()) {
            auto h = host_;
            asio::post(h->strand, [h, d = std::move(data)] {
                std::lock_guard lk(h->mu);
                if (!h->closed) h->append(d);
            });
        }
    }

    std::shared_ptr<Host> host_;
    const bool has_rx_;

    std::mutex rx_mu_;
    bool rx_stopped_ = false;
    Virtqueue* rxq_ = nullptr;
    std::string in_;
    std::size_t in_off_ = 0;

    std::mutex tx_mu_;
    bool tx_stopped_ = false;
    Virtqueue* txq_ = nullptr;

    std::atomic<bool> gate_;
};

/// MULTIPORT control queues of one activation (virtio 1.2 §5.3.6.2):
/// queue 2 carries device messages to the driver, queue 3 the driver's.
/// Every driver message is hostile input: checked, logged and counted when
/// bad, then ignored (the spec asks nothing more of the device).
///
/// Locking: mu_ guards everything here. Host callbacks (host_changed,
/// resized) come with their Host's mu held, so mu_ is taken after a Host's
/// mu and never the other way round: what a driver message asks of a host
/// is posted to the host's strand.
class Control : public std::enable_shared_from_this<Control> {
public:
    Control(std::vector<std::shared_ptr<Host>> hosts, std::vector<std::shared_ptr<Session>> ports, Virtqueue* rxq,
            Virtqueue* txq, bool size)
        : hosts_(std::move(hosts)), ports_(std::move(ports)), rxq_(rxq), txq_(txq), size_(size),
          st_(ports_.size()) {}

    /// The host side of port `p` is attached or not at activation.
    void init_host_open(std::size_t p, bool open) {
        std::lock_guard lk(mu_);
        if (p < st_.size()) st_[p].host_open = open;
    }

    void start() {
        std::lock_guard lk(mu_);
        if (!txq_) return;
        auto self = shared_from_this();
        asio::post(txq_->strand(), [self] { self->notify_tx(); });
    }

    void stop() {
        std::lock_guard lk(mu_);
        stopped_ = true;
        rxq_ = txq_ = nullptr;
        out_.clear();
    }

    /// Control receiveq kicked: new buffers for pending messages.
    void notify_rx() {
        std::lock_guard lk(mu_);
        rx_pump();
    }

    /// Control transmitq kicked: driver messages.
    void notify_tx() {
        std::lock_guard lk(mu_);
        tx_pump();
    }

    /// The host side of port `p` attached (true) or left: PORT_OPEN once
    /// the driver has the port ready. Called with that Host's mu held.
    void host_changed(std::size_t p, bool open) {
        std::lock_guard lk(mu_);
        if (stopped_ || p >= st_.size() || st_[p].host_open == open) return;
        st_[p].host_open = open;
        if (!st_[p].ready) return;
        send(std::uint32_t(p), console_control::kPortOpen, open ? 1 : 0);
        kick_rx();
    }

    /// Port 0's window changed (F_SIZE): RESIZE once the port is ready.
    /// Called with Host 0's mu held.
    void resized() {
        std::lock_guard lk(mu_);
        if (stopped_ || !size_ || st_.empty() || !st_[0].ready) return;
        send_resize();
        kick_rx();
    }

private:
    struct PortState {
        bool added = false;       ///< DEVICE_ADD sent
        bool ready = false;       ///< PORT_READY(1) received
        bool guest_open = false;  ///< PORT_OPEN from the driver
        bool host_open = false;   ///< a client (or the pty) on the host side
    };

    Host& h0() const { return *hosts_[0]; }
    std::string qname(const Virtqueue* q, unsigned fallback) const {
        return h0().id.label() + " q" + std::to_string(q ? q->index() : fallback);
    }

    void bad(ConsoleError e, std::uint32_t id, std::uint16_t event, std::uint16_t value, std::size_t len) {
        h0().n.bad_control++;
        XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: {} (id {}, event {}, value {}, {} bytes)", qname(txq_, 3),
                       console_error_name(e), id, event, value, len);
    }

    /// Queues one device message (mu_ held); bounded: a driver that posts
    /// no control buffers cannot make the device hold more and more.
    void send(std::uint32_t id, std::uint16_t event, std::uint16_t value, std::string_view payload = {}) {
        if (out_.size() >= kMaxPendingControl) {
            h0().n.control_dropped++;
            XV_LOG_LIMITED(rl_, spdlog::level::warn,
                           "{}: {} control messages wait for driver buffers, event {} for port {} dropped",
                           qname(rxq_, 2), out_.size(), event, id);
            return;
        }
        std::string m(console_control::kHeaderSize + payload.size(), '\0');
        // virtio 1.2 §5.3.6.2: le32 id, le16 event, le16 value.
        for (int i = 0; i < 4; ++i) m[i] = char((id >> (8 * i)) & 0xff);
        m[4] = char(event & 0xff);
        m[5] = char(event >> 8);
        m[6] = char(value & 0xff);
        m[7] = char(value >> 8);
        std::copy(payload.begin(), payload.end(), m.begin() + console_control::kHeaderSize);
        out_.push_back(std::move(m));
    }

    void send_resize() {
        // virtio 1.2 §5.3.6.2: struct virtio_console_resize { le16 cols; le16 rows; }.
        const std::uint16_t c = h0().cols.load(), r = h0().rows.load();
        const char sz[4] = {char(c & 0xff), char(c >> 8), char(r & 0xff), char(r >> 8)};
        send(0, console_control::kResize, 0, std::string_view(sz, 4));
    }

    /// Has the control receiveq's strand deliver what is pending (mu_ held).
    void kick_rx() {
        if (stopped_ || !rxq_ || out_.empty()) return;
        auto self = shared_from_this();
        asio::post(rxq_->strand(), [self] { self->notify_rx(); });
    }

    void rx_pump() {
        if (stopped_ || !rxq_ || rxq_->broken() || out_.empty()) return;
        bool pushed = false;
        while (!out_.empty()) {
            DescriptorChain c;
            if (next_chain(*rxq_, c) != Next::Chain) break;  // waits for buffers, in order
            pushed = true;
            const std::string& m = out_.front();
            if (c.writable_bytes() < m.size()) {
                // The message stays for the next buffer.
                h0().n.bad_chains++;
                XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: {} ({} writable bytes, message of {})",
                               qname(rxq_, 2), console_error_name(ConsoleError::ControlRxTooSmall),
                               c.writable_bytes(), m.size());
                rxq_->push(std::move(c), console_error_used_len(ConsoleError::ControlRxTooSmall, 0));
                continue;
            }
            auto w = c.writer();
            (void)w.write(std::as_bytes(std::span(m.data(), m.size())));
            rxq_->push(std::move(c), console_error_used_len(ConsoleError::None, std::uint32_t(m.size())));
            out_.pop_front();
            h0().n.control_out++;
        }
        if (pushed) rxq_->notify_guest();
    }

    void tx_pump() {
        if (stopped_ || !txq_ || txq_->broken()) return;
        bool pushed = false;
        unsigned budget = 0;
        for (; budget < kTxBudget; ++budget) {
            DescriptorChain c;
            if (next_chain(*txq_, c) != Next::Chain) break;
            pushed = true;
            if (c.writable_bytes() != 0) {
                // virtio 1.2 §5.3.6.1: driver messages are device-readable;
                // a writable part is not ours to fill (ignored).
                h0().n.bad_chains++;
                XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: {}", qname(txq_, 3),
                               console_error_name(ConsoleError::TxHasWritable));
            }
            const std::size_t len = c.readable_bytes();
            std::array<std::byte, console_control::kHeaderSize> b{};
            const bool whole = len >= b.size() && c.reader().read(b);
            txq_->push(std::move(c), 0);
            if (!whole) {
                bad(ConsoleError::ControlShort, 0, 0, 0, len);
                continue;
            }
            auto u = [&](std::size_t i) { return std::uint32_t(std::to_integer<std::uint8_t>(b[i])); };
            const std::uint32_t id = u(0) | u(1) << 8 | u(2) << 16 | u(3) << 24;
            const auto event = std::uint16_t(u(4) | u(5) << 8);
            const auto value = std::uint16_t(u(6) | u(7) << 8);
            handle(id, event, value, len);
        }
        if (pushed) txq_->notify_guest();
        if (budget == kTxBudget) {
            auto self = shared_from_this();
            asio::post(txq_->strand(), [self] { self->notify_tx(); });
        }
        kick_rx();
    }

    /// One driver message (virtio 1.2 §5.3.6.2).
    void handle(std::uint32_t id, std::uint16_t event, std::uint16_t value, std::size_t len) {
        namespace cc = console_control;
        // Only these two values are defined for the driver's messages.
        if (value > 1 && (event == cc::kDeviceReady || event == cc::kPortReady || event == cc::kPortOpen)) {
            bad(ConsoleError::ControlValue, id, event, value, len);
            return;
        }
        // PORT_READY and PORT_OPEN name a port the device added (§5.3.6.2).
        if ((event == cc::kPortReady || event == cc::kPortOpen) && (id >= st_.size() || !st_[id].added)) {
            bad(ConsoleError::ControlPort, id, event, value, len);
            return;
        }
        switch (event) {
            case cc::kDeviceReady: {
                // id is unused (§5.3.6.2).
                h0().n.control_in++;
                if (value == 0) {
                    XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: the driver reports it could not set up the device",
                                   qname(txq_, 3));
                    return;
                }
                // virtio 1.2 §5.3.6.2.1: never DEVICE_ADD a port that exists
                // (a repeated DEVICE_READY adds nothing).
                for (std::size_t p = 0; p < st_.size(); ++p) {
                    if (st_[p].added) continue;
                    st_[p].added = true;
                    send(std::uint32_t(p), cc::kDeviceAdd, 0);
                }
                return;
            }
            case cc::kPortReady: {
                h0().n.control_in++;
                PortState& ps = st_[id];
                if (value == 0) {
                    ps.ready = false;
                    XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: the driver reports it could not add port {}",
                                   qname(txq_, 3), id);
                    return;
                }
                ps.ready = true;
                if (id == 0) {
                    // Port 0 is the console: the guest's hvc, as without
                    // MULTIPORT; with F_SIZE its size comes as RESIZE (a
                    // multiport driver does not read cols/rows).
                    send(0, cc::kConsolePort, 1);
                    if (size_) send_resize();
                } else {
                    const std::string& name = hosts_[id]->port_name;
                    if (!name.empty()) send(id, cc::kPortName, 1, name);  // §5.3.6.2: no NUL
                }
                if (ps.host_open) send(id, cc::kPortOpen, 1);
                return;
            }
            case cc::kPortOpen: {
                h0().n.control_in++;
                st_[id].guest_open = value == 1;
                // Port 0's input flows whatever the driver says (as without
                // MULTIPORT: the console takes input at any time).
                if (id != 0) ports_[id]->set_open(value == 1);
                return;
            }
            default:
                // DEVICE_ADD, DEVICE_REMOVE, CONSOLE_PORT, RESIZE and
                // PORT_NAME go from the device to the driver; anything
                // else is unknown.
                bad(ConsoleError::ControlEvent, id, event, value, len);
                return;
        }
    }

    const std::vector<std::shared_ptr<Host>> hosts_;
    const std::vector<std::shared_ptr<Session>> ports_;
    log::RateLimit rl_{2.0, 5.0};

    std::mutex mu_;
    bool stopped_ = false;
    Virtqueue* rxq_ = nullptr;
    Virtqueue* txq_ = nullptr;
    const bool size_;
    std::vector<PortState> st_;
    std::deque<std::string> out_;
};

Result<void> Host::open() {
    using B = ConsoleConfig::Backend;
    if (cfg.buffer_bytes == 0) cfg.buffer_bytes = 4096;
    if (cfg.backend == B::Pty) {
        int m = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (m < 0) return errno_error(errno, id.label() + ": posix_openpt");
        io.emplace(strand, m);
        if (::grantpt(m) < 0 || ::unlockpt(m) < 0) return errno_error(errno, id.label() + ": grantpt/unlockpt");
        char name[128];
        if (::ptsname_r(m, name, sizeof name) != 0) return errno_error(errno, id.label() + ": ptsname");
        pty_path = name;
        slave_fd = ::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (slave_fd < 0) return errno_error(errno, id.label() + ": open " + pty_path);
        // Raw: no echo, no line editing, no CR/NL translation of guest bytes.
        termios t{};
        if (::tcgetattr(slave_fd, &t) == 0) {
            ::cfmakeraw(&t);
            (void)::tcsetattr(slave_fd, TCSANOW, &t);
        }
        winsize ws{};
        ws.ws_col = 80;
        ws.ws_row = 24;
        (void)::ioctl(m, TIOCSWINSZ, &ws);
        int fl = ::fcntl(m, F_GETFL);
        ::fcntl(m, F_SETFL, fl | O_NONBLOCK);
    } else if (cfg.backend == B::Socket) {
        if (cfg.socket_path.empty()) return make_error(std::errc::invalid_argument, id.label() + ": socket backend without a path");
        if (cfg.socket_path.size() >= sizeof(sockaddr_un{}.sun_path))
            return make_error(std::errc::filename_too_long, id.label() + ": socket path too long");
        struct stat st{};
        if (::lstat(cfg.socket_path.c_str(), &st) == 0) {
            // Replace a stale socket of an earlier run, nothing else.
            if (!S_ISSOCK(st.st_mode))
                return make_error(std::errc::file_exists, id.label() + ": " + cfg.socket_path + " exists and is no socket");
            ::unlink(cfg.socket_path.c_str());
        }
        boost::system::error_code ec;
        acceptor.emplace(strand);
        asio::local::stream_protocol::endpoint ep(cfg.socket_path);
        acceptor->open(ep.protocol(), ec);
        if (!ec) acceptor->bind(ep, ec);
        if (!ec) acceptor->listen(1, ec);
        if (ec) return Error{ec, id.label() + ": listen on " + cfg.socket_path};
        sock_path = cfg.socket_path;
    } else if (cfg.log_path.empty()) {
        return make_error(std::errc::invalid_argument, id.label() + ": log backend without a log path");
    }
    if (!cfg.log_path.empty()) {
        boost::system::error_code ec;
        try {
            logf.emplace(strand);
            logf->open(cfg.log_path,
                       asio::file_base::write_only | asio::file_base::create | asio::file_base::append, ec);
        } catch (const std::exception&) {
            ec = std::make_error_code(std::errc::not_supported);
        }
        if (ec) {
            logf.reset();
            log_fd = ::open(cfg.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
            if (log_fd < 0) return errno_error(errno, id.label() + ": open log " + cfg.log_path);
        }
    }
    return ok();
}

void Host::shutdown() {
    std::lock_guard lk(mu);
    closed = true;
    boost::system::error_code ec;
    timer.cancel();
    if (io) io->close(ec);
    if (acceptor) acceptor->close(ec);
    if (!sock_path.empty()) ::unlink(sock_path.c_str());
    if (slave_fd >= 0) ::close(slave_fd);
    slave_fd = -1;
    // Whatever the file did not take yet goes out now, synchronously: the
    // device is going away.
    if (logf && !log_busy) finish_log();
    // With a write in flight, its handler finishes the log.
    if (log_fd >= 0) {
        if (!log_pending.empty()) (void)!::write(log_fd, log_pending.data(), log_pending.size());
        ::close(log_fd);
        log_fd = -1;
    }
    session.reset();
    on_resize = nullptr;
    on_connect = nullptr;
}

void Host::append(std::string_view d) {
    n.out_bytes += d.size();
    if (logf || log_fd >= 0) {
        log_pending.append(d);
        if (log_pending.size() > kLogPendingMax) {
            std::size_t drop = log_pending.size() - kLogPendingMax;
            log_pending.erase(0, drop);
            n.log_dropped += drop;
        }
        log_kick();
    }
    if (cfg.backend == ConsoleConfig::Backend::Log) return;
    out.append(d);
    std::size_t pending = out.size() - out_head;
    if (pending > cfg.buffer_bytes) {
        // Drop the oldest: the newest output is what a user attaching wants.
        std::size_t drop = pending - cfg.buffer_bytes;
        out_head += drop;
        n.out_dropped += drop;
        XV_LOG_LIMITED(rl, spdlog::level::warn, "{}: console output buffer full, {} oldest bytes dropped ({} in all)",
                       id.label(), drop, n.out_dropped.load());
    }
    if (out_head > out.size() / 2) {
        out.erase(0, out_head);
        out_head = 0;
    }
    flush();
}

void Host::flush() {
    if (!io || write_armed || out_dead) return;
    while (out_head < out.size()) {
        const char* p = out.data() + out_head;
        std::size_t len = out.size() - out_head;
        ssize_t w = is_client ? ::send(io->native_handle(), p, len, MSG_NOSIGNAL | MSG_DONTWAIT)
                              : ::write(io->native_handle(), p, len);
        if (w > 0) {
            out_head += static_cast<std::size_t>(w);
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            write_armed = true;
            auto self = shared_from_this();
            std::uint64_t g = gen;
            io->async_wait(asio::posix::stream_descriptor::wait_write, [self, g](boost::system::error_code ec) {
                std::lock_guard lk(self->mu);
                if (self->closed || g != self->gen) return;
                self->write_armed = false;
                if (!ec) self->flush();
            });
            return;
        }
        if (is_client) {
            const int err = errno;
            // virtio 1.2 §5.3: host input goes to the guest in order. A client
            // whose write side failed (it left while the guest writes) may
            // still have sent input the device has not read yet: keep reading
            // it to end of file (paced by the guest's receive buffers) before
            // the client is dropped. Its output stays for the next client.
            out_dead = true;
            spdlog::info("{}: console client {} stopped taking output ({}); reading its input to the end",
                         id.label(), sock_path, std::strerror(err));
            arm_read();
        }
        return;
    }
    out.clear();
    out_head = 0;
}

void Host::log_kick() {
    if (log_fd >= 0) {
        // Fallback path: a local append of what is pending.
        while (!log_pending.empty()) {
            ssize_t w = ::write(log_fd, log_pending.data(), log_pending.size());
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                XV_LOG_LIMITED(rl, spdlog::level::err, "{}: write to console log {}: {}", id.label(), cfg.log_path,
                               std::strerror(errno));
                n.log_dropped += log_pending.size();
                log_pending.clear();
                break;
            }
            n.log_bytes += static_cast<std::size_t>(w);
            log_pending.erase(0, static_cast<std::size_t>(w));
        }
        return;
    }
    if (!logf || log_busy || log_pending.empty()) return;
    log_busy = true;
    log_inflight.swap(log_pending);
    log_pending.clear();
    auto self = shared_from_this();
    asio::async_write(*logf, asio::buffer(log_inflight), [self](boost::system::error_code ec, std::size_t w) {
        std::lock_guard lk(self->mu);
        self->log_busy = false;
        self->n.log_bytes += w;
        if (ec && ec != asio::error::operation_aborted) {
            self->n.log_dropped += self->log_inflight.size() - w;
            XV_LOG_LIMITED(self->rl, spdlog::level::err, "{}: write to console log {}: {}", self->id.label(),
                           self->cfg.log_path, ec.message());
        }
        self->log_inflight.clear();
        if (!self->closed)
            self->log_kick();
        else
            self->finish_log();
    });
}

void Host::finish_log() {
    if (!logf) return;
    boost::system::error_code ec;
    std::size_t done = 0;
    while (done < log_pending.size() && !ec) done += logf->write_some(asio::buffer(log_pending.data() + done, log_pending.size() - done), ec);
    n.log_bytes += done;
    log_pending.clear();
    logf->close(ec);
    logf.reset();
}

void Host::arm_read() {
    if (closed || read_armed || input_inflight || !io || !session || !session->rx_open()) return;
    read_armed = true;
    auto self = shared_from_this();
    std::uint64_t g = gen;
    io->async_wait(asio::posix::stream_descriptor::wait_read, [self, g](boost::system::error_code ec) {
        std::lock_guard lk(self->mu);
        if (self->closed || g != self->gen) return;
        self->read_armed = false;
        if (!ec) self->do_read();
    });
}

void Host::do_read() {
    if (!io || input_inflight || !session || !session->rx_open()) return;
    std::string buf(kInputChunk, '\0');
    ssize_t r;
    do {
        r = ::read(io->native_handle(), buf.data(), buf.size());
    } while (r < 0 && errno == EINTR);
    if (r > 0) {
        buf.resize(static_cast<std::size_t>(r));
        input_inflight = true;  // no more reading until the guest took it all
        session->deliver(std::move(buf));
        return;
    }
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        arm_read();
        return;
    }
    if (is_client) {
        drop_client(r == 0 ? "disconnected" : "read failed");
        return;
    }
    // A pty master only fails when no slave is open; the device keeps one,
    // so this is unexpected: say so and stop reading.
    XV_LOG_LIMITED(rl, spdlog::level::err, "{}: read from pty {}: {}", id.label(), pty_path,
                   r == 0 ? "end of file" : std::strerror(errno));
}

void Host::drop_client(const char* why) {
    spdlog::info("{}: console client {} ({})", id.label(), why, sock_path);
    boost::system::error_code ec;
    if (io) io->close(ec);
    io.reset();
    is_client = false;
    out_dead = false;
    read_armed = write_armed = false;
    ++gen;
    if (on_connect) on_connect(false);
}

void Host::accept_next() {
    if (!acceptor || closed) return;
    auto self = shared_from_this();
    acceptor->async_accept([self](boost::system::error_code ec, asio::local::stream_protocol::socket s) {
        std::lock_guard lk(self->mu);
        if (self->closed) return;
        if (!ec) {
            if (self->io) {
                // One client at a time: a second one is turned away.
                XV_LOG_LIMITED(self->rl, spdlog::level::warn, "{}: console {} already has a client, refused another",
                               self->id.label(), self->sock_path);
                s.close(ec);
            } else {
                int fd = s.release(ec);
                if (!ec) {
                    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
                    ++self->gen;
                    self->io.emplace(self->strand, fd);
                    self->is_client = true;
                    self->out_dead = false;
                    self->read_armed = self->write_armed = false;
                    self->n.attaches++;
                    spdlog::info("{}: console client attached on {}", self->id.label(), self->sock_path);
                    if (self->on_connect) self->on_connect(true);
                    self->flush();  // replay what was kept while detached
                    self->arm_read();
                }
            }
        } else if (ec == asio::error::operation_aborted) {
            return;
        }
        self->accept_next();
    });
}

void Host::poll_winsize() {
    if (closed || cfg.backend != ConsoleConfig::Backend::Pty) return;
    winsize ws{};
    if (io && ::ioctl(io->native_handle(), TIOCGWINSZ, &ws) == 0) {
        if (ws.ws_col != cols.load() || ws.ws_row != rows.load()) {
            cols = ws.ws_col;
            rows = ws.ws_row;
            // virtio 1.2 §5.3.4: with F_SIZE the device signals a new size
            // through a configuration change notification.
            if (on_resize) on_resize();
        }
    }
    timer.expires_after(cfg.winsize_poll);
    auto self = shared_from_this();
    timer.async_wait([self](boost::system::error_code ec) {
        if (ec) return;
        std::lock_guard lk(self->mu);
        self->poll_winsize();
    });
}

void Host::input_done() {
    std::lock_guard lk(mu);
    input_inflight = false;
    arm_read();
}

/// What one activation serves: a Session per port (index = port id) and,
/// with MULTIPORT, the control queues.
struct Activation {
    std::vector<std::shared_ptr<Session>> ports;
    std::shared_ptr<Control> control;
};

ConsoleStats stats_of(const Host& h) {
    const auto& n = h.n;
    return ConsoleStats{n.out_bytes,   n.out_dropped,   n.in_bytes,    n.log_bytes,      n.log_dropped,
                        n.emerg_chars, n.attaches,      n.bad_chains,  n.bad_control,    n.control_in,
                        n.control_out, n.control_dropped};
}

class ConsoleDeviceImpl final : public ConsoleDevice {
public:
    explicit ConsoleDeviceImpl(std::vector<std::shared_ptr<Host>> h) : hosts_(std::move(h)) {}
    ~ConsoleDeviceImpl() override {
        reset([] {});
        for (auto& h : hosts_) h->shutdown();
    }

    transport::DeviceId device_id() const override { return transport::DeviceId::Console; }
    const transport::DeviceIdentity& identity() const override { return host0().id; }
    std::uint64_t device_features() const override {
        std::uint64_t f = 1ULL << console_feature::kEmergWrite;
        if (host0().cfg.backend == ConsoleConfig::Backend::Pty) f |= 1ULL << console_feature::kSize;
        // Offered only with extra ports: a device without them looks
        // exactly like the two-queue console to its guest.
        if (multiport_offered()) f |= 1ULL << console_feature::kMultiport;
        return f;
    }
    std::uint16_t num_queues() const override {
        // virtio 1.2 §5.3.2: port 0's pair, the control pair, then a pair
        // per further port.
        return multiport_offered() ? std::uint16_t(2 * (hosts_.size() + 1)) : 2;
    }
    std::uint32_t config_size() const override { return 12; }

    void read_config(std::uint32_t offset, std::span<std::byte> out) const override {
        // virtio 1.2 §5.3.4: le16 cols @0, le16 rows @2, le32 max_nr_ports @4,
        // le32 emerg_wr @8 (reads as 0).
        std::array<std::uint8_t, 12> c{};
        std::uint16_t cl = host0().cols.load(), rw = host0().rows.load();
        c[0] = cl & 0xff;
        c[1] = cl >> 8;
        c[2] = rw & 0xff;
        c[3] = rw >> 8;
        c[4] = std::uint8_t(hosts_.size());  // at most 1 + kMaxExtraPorts
        for (std::size_t i = 0; i < out.size(); ++i)
            out[i] = offset + i < c.size() ? std::byte(c[offset + i]) : std::byte(0);
    }

    void write_config(std::uint32_t offset, std::span<const std::byte> data) override {
        // virtio 1.2 §5.3.4: a write to emerg_wr emits its low byte on port 0.
        // Everything else is read-only and ignored.
        if (offset > 8 || offset + data.size() <= 8) return;
        char ch = static_cast<char>(data[8 - offset]);
        host0().n.emerg_chars++;
        auto h = hosts_[0];
        asio::post(h->strand, [h, ch] {
            std::lock_guard lk(h->mu);
            if (!h->closed) h->append(std::string_view(&ch, 1));
        });
    }

    Result<void> activate(transport::ActivateContext ctx) override {
        reset([] {});
        const bool size = (ctx.features >> console_feature::kSize) & 1;
        const bool multi = multiport_offered() && ((ctx.features >> console_feature::kMultiport) & 1);
        auto q = [&](std::size_t i) -> Virtqueue* { return i < ctx.queues.size() ? ctx.queues[i] : nullptr; };
        auto a = std::make_shared<Activation>();
        a->ports.push_back(std::make_shared<Session>(hosts_[0], q(0), q(1), true));
        if (multi) {
            // Ports 1.. take host input once the driver opened them.
            for (std::size_t p = 1; p < hosts_.size(); ++p)
                a->ports.push_back(std::make_shared<Session>(hosts_[p], q(2 * p + 2), q(2 * p + 3), false));
            a->control = std::make_shared<Control>(hosts_, a->ports, q(2), q(3), size);
        }
        auto changed = ctx.config_changed;
        for (std::size_t p = 0; p < a->ports.size(); ++p) {
            Host& h = *hosts_[p];
            std::lock_guard lk(h.mu);
            h.session = a->ports[p];
            h.input_inflight = false;
            if (p == 0) {
                std::function<void()> r;
                if (size && a->control)
                    r = [changed, c = a->control] {
                        if (changed) changed();
                        c->resized();
                    };
                else if (size)
                    r = changed;
                h.on_resize = std::move(r);
            }
            if (a->control) {
                a->control->init_host_open(p, h.io.has_value());
                h.on_connect = [c = a->control, p](bool open) { c->host_changed(p, open); };
            }
            h.arm_read();
        }
        {
            std::lock_guard lk(mu_);
            act_ = a;
        }
        for (auto& s : a->ports) s->start();
        if (a->control) a->control->start();
        return ok();
    }

    void reset(std::function<void()> done) override {
        std::shared_ptr<Activation> a;
        {
            std::lock_guard lk(mu_);
            a = std::move(act_);
        }
        if (a) {
            // Each stop waits for a running queue handler.
            for (auto& s : a->ports) s->stop();
            if (a->control) a->control->stop();
            for (std::size_t p = 0; p < a->ports.size(); ++p) {
                Host& h = *hosts_[p];
                std::lock_guard lk(h.mu);
                if (h.session == a->ports[p]) {
                    h.session.reset();
                    h.on_resize = nullptr;
                    h.on_connect = nullptr;
                    h.input_inflight = false;
                }
            }
        }
        if (done) done();
    }

    void queue_notify(std::uint16_t q) override {
        std::shared_ptr<Activation> a;
        {
            std::lock_guard lk(mu_);
            a = act_;
        }
        if (!a) return;
        if (q < 2) {
            q == 0 ? a->ports[0]->notify_rx() : a->ports[0]->notify_tx();
        } else if (a->control) {
            if (q == 2) {
                a->control->notify_rx();
            } else if (q == 3) {
                a->control->notify_tx();
            } else {
                const std::size_t p = (q - 2) / 2;
                if (p < a->ports.size()) q % 2 == 0 ? a->ports[p]->notify_rx() : a->ports[p]->notify_tx();
            }
        }
    }

    const std::string& pty_path() const override { return host0().pty_path; }
    const std::string& socket_path() const override { return host0().sock_path; }
    bool attached() const override { return port_attached(0); }
    std::pair<std::uint16_t, std::uint16_t> window_size() const override { return {host0().cols, host0().rows}; }
    ConsoleStats stats() const override { return stats_of(host0()); }
    std::size_t port_count() const override { return hosts_.size(); }
    std::string port_socket_path(std::size_t p) const override {
        return p < hosts_.size() ? hosts_[p]->sock_path : std::string();
    }
    bool port_attached(std::size_t p) const override {
        if (p >= hosts_.size()) return false;
        std::lock_guard lk(hosts_[p]->mu);
        return hosts_[p]->io.has_value();
    }
    ConsoleStats port_stats(std::size_t p) const override {
        return p < hosts_.size() ? stats_of(*hosts_[p]) : ConsoleStats{};
    }

private:
    Host& host0() const { return *hosts_[0]; }
    bool multiport_offered() const { return hosts_.size() > 1; }

    const std::vector<std::shared_ptr<Host>> hosts_;  ///< index = port id
    std::mutex mu_;
    std::shared_ptr<Activation> act_;
};

/// Checks the extra ports of a configuration.
Result<void> check_ports(const ConsoleConfig& cfg, const transport::DeviceIdentity& id) {
    if (cfg.ports.size() > ConsoleConfig::kMaxExtraPorts)
        return make_error(std::errc::invalid_argument, id.label() + ": " + std::to_string(cfg.ports.size()) +
                                                           " extra ports, at most " +
                                                           std::to_string(ConsoleConfig::kMaxExtraPorts));
    std::set<std::string> names, paths;
    if (cfg.backend == ConsoleConfig::Backend::Socket) paths.insert(cfg.socket_path);
    for (std::size_t i = 0; i < cfg.ports.size(); ++i) {
        const auto& p = cfg.ports[i];
        const std::string what = id.label() + ": port " + std::to_string(i + 1);
        if (auto why = console_port_name_problem(p.name))
            return make_error(std::errc::invalid_argument, what + ": name '" + p.name + "' " + *why);
        if (!names.insert(p.name).second)
            return make_error(std::errc::invalid_argument, what + ": name '" + p.name + "' used twice");
        if (p.socket_path.empty()) return make_error(std::errc::invalid_argument, what + ": no socket path");
        if (!paths.insert(p.socket_path).second)
            return make_error(std::errc::invalid_argument, what + ": socket " + p.socket_path + " used twice");
    }
    return ok();
}

}  // namespace

Result<std::unique_ptr<ConsoleDevice>> make_console_device(const ConsoleConfig& cfg, transport::DeviceIdentity id,
                                                           asio::any_io_executor ex) {
    if (auto r = check_ports(cfg, id); !r) return std::move(r).error();
    std::vector<std::shared_ptr<Host>> hosts;
    hosts.push_back(std::make_shared<Host>(cfg, id, ex));
    hosts[0]->cfg.ports.clear();
    for (std::size_t i = 0; i < cfg.ports.size(); ++i) {
        ConsoleConfig pc;
        pc.backend = ConsoleConfig::Backend::Socket;
        pc.socket_path = cfg.ports[i].socket_path;
        pc.buffer_bytes = cfg.buffer_bytes;
        pc.winsize_poll = cfg.winsize_poll;
        hosts.push_back(std::make_shared<Host>(pc, transport::DeviceIdentity{id.domid, id.name + ".port" + std::to_string(i + 1)}, ex));
        hosts.back()->port_name = cfg.ports[i].name;
    }
    for (auto& h : hosts) {
        if (auto r = h->open(); !r) {
            for (auto& o : hosts) o->shutdown();
            return std::move(r).error();
        }
    }
    for (auto& h : hosts) {
        {
            std::lock_guard lk(h->mu);
            h->accept_next();
            h->poll_winsize();
        }
        if (!h->pty_path.empty()) spdlog::info("{}: console on pty {}", h->id.label(), h->pty_path);
        if (!h->sock_path.empty())
            spdlog::info("{}: console{} on socket {}", h->id.label(),
                         h->port_name.empty() ? std::string() : " port '" + h->port_name + "'", h->sock_path);
        if (!h->cfg.log_path.empty()) spdlog::info("{}: console log {}", h->id.label(), h->cfg.log_path);
    }
    return std::unique_ptr<ConsoleDevice>(std::make_unique<ConsoleDeviceImpl>(std::move(hosts)));
}

Result<std::unique_ptr<transport::Device>> make_console(const ConsoleConfig& cfg, transport::DeviceIdentity id,
                                                        asio::any_io_executor ex) {
    auto d = make_console_device(cfg, std::move(id), std::move(ex));
    if (!d) return std::move(d).error();
    return std::unique_ptr<transport::Device>(std::move(*d));
}

}  // namespace xv::devices
