// SPDX-License-Identifier: GPL-2.0-only
// virtio-console port 0 (virtio 1.2 §5.3) on a pty, a unix socket or a log.
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

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

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
    }
    return "unknown";
}

std::uint32_t console_error_used_len(ConsoleError e, std::uint32_t written) {
    // virtio 1.2 §2.7.8.2: the used length is exactly what the device wrote;
    // a chain it could not use goes back with 0.
    return e == ConsoleError::RxNotWritable ? 0 : written;
}

namespace {

constexpr std::size_t kInputChunk = 4096;          ///< host bytes staged for the guest at once
constexpr std::size_t kMaxTxChain = 64 * 1024;     ///< bytes taken from one transmitq chain
constexpr std::size_t kLogPendingMax = 1 << 20;    ///< log bytes waiting for the file
constexpr unsigned kTxBudget = 256;

class Session;

/// The host side: pty/socket/log, output buffer, window size. Survives
/// guest resets. Every handler runs on `strand` holding `mu`.
struct Host : std::enable_shared_from_this<Host> {
    Host(ConsoleConfig c, transport::DeviceIdentity i, asio::any_io_executor ex)
        : cfg(std::move(c)), id(std::move(i)), strand(asio::make_strand(ex)), timer(strand) {}

    ConsoleConfig cfg;
    transport::DeviceIdentity id;
    asio::strand<asio::any_io_executor> strand;

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

    log::RateLimit rl{2.0, 5.0};
    struct Counters {
        std::atomic<std::uint64_t> out_bytes{0}, out_dropped{0}, in_bytes{0}, log_bytes{0}, log_dropped{0},
            emerg_chars{0}, attaches{0}, bad_chains{0};
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

/// The guest side of one activation.
class Session : public std::enable_shared_from_this<Session> {
public:
    Session(std::shared_ptr<Host> h, transport::ActivateContext c) : host_(std::move(h)), ctx_(std::move(c)) {
        rxq_ = ctx_.queues.size() > 0 ? ctx_.queues[0] : nullptr;
        txq_ = ctx_.queues.size() > 1 ? ctx_.queues[1] : nullptr;
        has_rx_ = rxq_ != nullptr;
    }
    bool has_rx() const { return has_rx_; }
    const transport::ActivateContext& ctx() const { return ctx_; }

    void start() {
        auto self = shared_from_this();
        if (txq_) asio::post(txq_->strand(), [self] { self->notify(1); });
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

    void notify(std::uint16_t q) {
        if (q == 0) {
            std::lock_guard lk(rx_mu_);
            rx_pump();
        } else if (q == 1) {
            std::lock_guard lk(tx_mu_);
            tx_pump();
        }
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
        if (rx_stopped_ || !rxq_ || rxq_->broken() || in_.empty()) return;
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
            asio::post(txq_->strand(), [self] { self->notify(1); });
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
    transport::ActivateContext ctx_;
    bool has_rx_ = false;

    std::mutex rx_mu_;
    bool rx_stopped_ = false;
    Virtqueue* rxq_ = nullptr;
    std::string in_;
    std::size_t in_off_ = 0;

    std::mutex tx_mu_;
    bool tx_stopped_ = false;
    Virtqueue* txq_ = nullptr;
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
    if (closed || read_armed || input_inflight || !io || !session || !session->has_rx()) return;
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
    if (!io || input_inflight || !session || !session->has_rx()) return;
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

class ConsoleDeviceImpl final : public ConsoleDevice {
public:
    explicit ConsoleDeviceImpl(std::shared_ptr<Host> h) : host_(std::move(h)) {}
    ~ConsoleDeviceImpl() override {
        reset([] {});
        host_->shutdown();
    }

    transport::DeviceId device_id() const override { return transport::DeviceId::Console; }
    const transport::DeviceIdentity& identity() const override { return host_->id; }
    std::uint64_t device_features() const override {
        std::uint64_t f = 1ULL << console_feature::kEmergWrite;
        if (host_->cfg.backend == ConsoleConfig::Backend::Pty) f |= 1ULL << console_feature::kSize;
        return f;
    }
    std::uint16_t num_queues() const override { return 2; }
    std::uint32_t config_size() const override { return 12; }

    void read_config(std::uint32_t offset, std::span<std::byte> out) const override {
        // virtio 1.2 §5.3.4: le16 cols @0, le16 rows @2, le32 max_nr_ports @4,
        // le32 emerg_wr @8 (reads as 0).
        std::array<std::uint8_t, 12> c{};
        std::uint16_t cl = host_->cols.load(), rw = host_->rows.load();
        c[0] = cl & 0xff;
        c[1] = cl >> 8;
        c[2] = rw & 0xff;
        c[3] = rw >> 8;
        c[4] = 1;
        for (std::size_t i = 0; i < out.size(); ++i)
            out[i] = offset + i < c.size() ? std::byte(c[offset + i]) : std::byte(0);
    }

    void write_config(std::uint32_t offset, std::span<const std::byte> data) override {
        // virtio 1.2 §5.3.4: a write to emerg_wr emits its low byte on port 0.
        // Everything else is read-only and ignored.
        if (offset > 8 || offset + data.size() <= 8) return;
        char ch = static_cast<char>(data[8 - offset]);
        host_->n.emerg_chars++;
        auto h = host_;
        asio::post(h->strand, [h, ch] {
            std::lock_guard lk(h->mu);
            if (!h->closed) h->append(std::string_view(&ch, 1));
        });
    }

    Result<void> activate(transport::ActivateContext ctx) override {
        reset([] {});
        const bool size = (ctx.features >> console_feature::kSize) & 1;
        auto s = std::make_shared<Session>(host_, std::move(ctx));
        {
            std::lock_guard lk(host_->mu);
            host_->session = s;
            host_->input_inflight = false;
            host_->on_resize = size ? s->ctx().config_changed : nullptr;
            host_->arm_read();
        }
        {
            std::lock_guard lk(mu_);
            session_ = s;
        }
        s->start();
        return ok();
    }

    void reset(std::function<void()> done) override {
        std::shared_ptr<Session> s;
        {
            std::lock_guard lk(mu_);
            s = std::move(session_);
        }
        if (s) {
            s->stop();  // waits for a running queue handler
            std::lock_guard lk(host_->mu);
            if (host_->session == s) {
                host_->session.reset();
                host_->on_resize = nullptr;
                host_->input_inflight = false;
            }
        }
        if (done) done();
    }

    void queue_notify(std::uint16_t q) override {
        std::shared_ptr<Session> s;
        {
            std::lock_guard lk(mu_);
            s = session_;
        }
        if (s) s->notify(q);
    }

    const std::string& pty_path() const override { return host_->pty_path; }
    const std::string& socket_path() const override { return host_->sock_path; }
    bool attached() const override {
        std::lock_guard lk(host_->mu);
        return host_->io.has_value();
    }
    std::pair<std::uint16_t, std::uint16_t> window_size() const override { return {host_->cols, host_->rows}; }
    ConsoleStats stats() const override {
        const auto& n = host_->n;
        return ConsoleStats{n.out_bytes,   n.out_dropped, n.in_bytes, n.log_bytes,
                            n.log_dropped, n.emerg_chars, n.attaches, n.bad_chains};
    }

private:
    std::shared_ptr<Host> host_;
    std::mutex mu_;
    std::shared_ptr<Session> session_;
};

}  // namespace

Result<std::unique_ptr<ConsoleDevice>> make_console_device(const ConsoleConfig& cfg, transport::DeviceIdentity id,
                                                           asio::any_io_executor ex) {
    auto h = std::make_shared<Host>(cfg, std::move(id), std::move(ex));
    if (auto r = h->open(); !r) {
        h->shutdown();
        return std::move(r).error();
    }
    {
        std::lock_guard lk(h->mu);
        h->accept_next();
        h->poll_winsize();
    }
    if (!h->pty_path.empty()) spdlog::info("{}: console on pty {}", h->id.label(), h->pty_path);
    if (!h->sock_path.empty()) spdlog::info("{}: console on socket {}", h->id.label(), h->sock_path);
    if (!h->cfg.log_path.empty()) spdlog::info("{}: console log {}", h->id.label(), h->cfg.log_path);
    return std::unique_ptr<ConsoleDevice>(std::make_unique<ConsoleDeviceImpl>(std::move(h)));
}

Result<std::unique_ptr<transport::Device>> make_console(const ConsoleConfig& cfg, transport::DeviceIdentity id,
                                                        asio::any_io_executor ex) {
    auto d = make_console_device(cfg, std::move(id), std::move(ex));
    if (!d) return std::move(d).error();
    return std::unique_ptr<transport::Device>(std::move(*d));
}

}  // namespace xv::devices
