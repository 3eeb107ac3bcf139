// SPDX-License-Identifier: GPL-2.0-only
#include "blk_queue.h"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace xv::devices::blkimpl {

namespace {

// user_data layout: op (8 bits) | fallocate mode (8) | range index (32) | slot (16).
constexpr std::uint64_t pack(std::uint8_t op, std::uint16_t slot, std::uint32_t range = 0, std::uint8_t mode = 0) {
    return (std::uint64_t(op) << 56) | (std::uint64_t(mode) << 48) | (std::uint64_t(range) << 16) | slot;
}
constexpr std::uint8_t op_of(std::uint64_t u) { return std::uint8_t(u >> 56); }
constexpr std::uint8_t mode_of(std::uint64_t u) { return std::uint8_t(u >> 48); }
constexpr std::uint32_t range_of(std::uint64_t u) { return std::uint32_t(u >> 16); }
constexpr std::uint16_t slot_of(std::uint64_t u) { return std::uint16_t(u); }

constexpr int kPunch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
constexpr int kZero = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
static_assert(kPunch < 256 && kZero < 256, "fallocate modes must fit the user_data field");

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

/// Pop/submit/reap rounds one run() may do before it yields the I/O
/// thread: a guest that refills its ring as fast as cached I/O completes
/// would otherwise keep it forever, starving the other guests' strands.
constexpr unsigned kRoundBudget = 4;

}  // namespace

Result<std::shared_ptr<QueueWorker>> QueueWorker::create(transport::Virtqueue& vq,
                                                         std::shared_ptr<const DeviceShared> shared,
                                                         boost::asio::any_io_executor ex) {
    std::shared_ptr<QueueWorker> w(new QueueWorker(vq, std::move(shared), std::move(ex)));
    XV_TRY(w->init());
    return w;
}

QueueWorker::QueueWorker(transport::Virtqueue& vq, std::shared_ptr<const DeviceShared> shared,
                         boost::asio::any_io_executor ex)
    : vq_(&vq), strand_(vq.strand()), shared_(std::move(shared)), efd_(std::move(ex)) {}

Result<void> QueueWorker::init() {
    const std::string& name = vq_->name();
    int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) return errno_error(errno, name + ": eventfd");
    boost::system::error_code ec;
    efd_.assign(efd, ec);
    if (ec) {
        ::close(efd);
        return Error{ec, name + ": register eventfd with the event loop"};
    }
    const std::uint32_t depth = std::clamp<std::uint32_t>(shared_->io_depth, 64, 4096);
    io_uring_params p{};
    p.flags = IORING_SETUP_CLAMP;
    int r = io_uring_queue_init_params(depth, &ring_, &p);
    if (r < 0) return errno_error(-r, name + ": io_uring_setup (is io_uring allowed here?)");
    ring_ok_ = true;
    if (!(p.features & IORING_FEAT_NODROP))
        spdlog::warn("{}: kernel io_uring lacks FEAT_NODROP; completions may be lost under overload", name);
    r = io_uring_register_eventfd(&ring_, efd);
    if (r < 0) return errno_error(-r, name + ": io_uring_register_eventfd");

    // The backing's descriptors as fixed files: the kernel then skips the
    // per-operation file lookup. Without it (old kernel, RLIMIT_NOFILE)
    // the plain descriptors are used.
    const Backing& b = *shared_->backing;
    int fds[2];
    unsigned nfds = 0;
    fds[nfds++] = b.fd();
    if (b.direct_fd() >= 0) fds[nfds++] = b.direct_fd();
    if (io_uring_register_files(&ring_, fds, nfds) == 0) {
        fixed_fd_ = 0;
        if (nfds == 2) fixed_direct_fd_ = 1;
    }

    // One slot per chain the device may own: never more than the ring can
    // hold nor the queue can have outstanding.
    const std::size_t n = std::max<std::size_t>(1, std::min<std::size_t>(p.sq_entries, vq_->size()));
    popped_.reserve(n);
    done_.reserve(n);
    done_len_.reserve(n);
    slots_.resize(n);
    free_.reserve(n);
    for (std::size_t i = n; i-- > 0;) {
        slots_[i].iov.reserve(64);
        free_.push_back(std::uint16_t(i));
    }
    return ok();
}

QueueWorker::~QueueWorker() {
    if (ring_ok_) {
        // Ops still in the kernel point into grant mappings (and into slots_):
        // let them finish before the chains and the ring go.
        if (in_kernel_ > helper_ops_) {
            io_uring_submit(&ring_);
            while (in_kernel_ > helper_ops_) {
                io_uring_cqe* cqe = nullptr;
                if (io_uring_wait_cqe(&ring_, &cqe) < 0) break;
                io_uring_cqe_seen(&ring_, cqe);
                --in_kernel_;
            }
        }
        io_uring_queue_exit(&ring_);
    }
}

void QueueWorker::kick() {
    if (stopping_) return;
    run();
}

void QueueWorker::quiesce(std::function<void()> done) {
    boost::asio::post(strand_, [self = shared_from_this(), done = std::move(done)]() mutable {
        if (self->stopped_) {
            done();
            return;
        }
        self->stopping_ = true;
        self->on_stopped_.push_back(std::move(done));
        // Queued ops can be cancelled; ops already running in the kernel
        // cannot, so the wait below is still needed.
        if (self->in_kernel_ > self->helper_ops_ && !self->cancel_sent_) {
            if (io_uring_sqe* sqe = self->get_sqe()) {
                io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
                io_uring_sqe_set_data64(sqe, pack(std::uint8_t(Op::Cancel), 0));
                self->cancel_sent_ = true;
            }
        }
        self->run();
    });
}

void QueueWorker::run() {
    if (stopped_) return;
    bool budget_spent = false;
    for (unsigned round = 0;; ++round) {
        pump();
        submit();
        const bool reaped = reap();
        flush_done();
        if (!reaped) break;
        if (round + 1 == kRoundBudget) {
            budget_spent = true;
            break;
        }
    }
    if (need_notify_ && vq_) {
        need_notify_ = false;
        vq_->notify_guest();
    }
    maybe_stopped();
    if (stopped_) return;
    arm();
    // Budget spent: continue behind what other strands posted meanwhile.
    // Otherwise, a completion that arrived after the last reap but before
    // the wait was registered may have signalled nobody: look once more.
    if (budget_spent || io_uring_cq_ready(&ring_))
        boost::asio::post(strand_, [self = shared_from_this()] { self->run(); });
}

void QueueWorker::arm() {
    if (armed_ || stopped_) return;
    armed_ = true;
    efd_.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                    boost::asio::bind_executor(strand_, [self = shared_from_this()](boost::system::error_code ec) {
                        self->armed_ = false;
                        if (ec || self->stopped_) return;
                        std::uint64_t v;
                        [[maybe_unused]] auto n = ::read(self->efd_.native_handle(), &v, sizeof v);
                        self->run();
                    }));
}

void QueueWorker::submit() {
    if (!io_uring_sq_ready(&ring_)) return;
    int r = io_uring_submit(&ring_);
    if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR)
        XV_LOG_LIMITED(rl_, spdlog::level::err, "{}: io_uring_submit: {}", vq_ ? vq_->name() : shared_->label,
                       errno_text(-r));
}

io_uring_sqe* QueueWorker::get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {
        io_uring_submit(&ring_);
        sqe = io_uring_get_sqe(&ring_);
    }
    if (sqe) ++in_kernel_;
    return sqe;
}

void QueueWorker::pump() {
    // Leave room for the largest request (one SQE per discard segment).
    const std::uint32_t need =
        std::max<std::uint32_t>(1, std::max(shared_->limits.max_discard_seg, shared_->limits.max_write_zeroes_seg));
    while (!stopping_ && vq_ && !free_.empty()) {
        // As many chains as there are free slots, mapped in one grant call.
        popped_.clear();
        auto r = vq_->pop_batch(free_.size(), popped_);
        if (!r) {
            // The queue called fatal(): the transport sets DEVICE_NEEDS_RESET.
            XV_LOG_LIMITED(rl_, spdlog::level::err, "{}: queue broken: {}", vq_->name(), r.error().describe());
            return;
        }
        if (*r == 0) return;
        for (auto& c : popped_) {
            if (io_uring_sq_space_left(&ring_) < need) io_uring_submit(&ring_);
            start(std::move(c));
        }
        popped_.clear();
    }
}

void QueueWorker::flush_done() {
    if (done_.empty() || !vq_) return;
    // virtio 1.2 §2.7.8: used entries in completion order; every chain's
    // grants are released before its used entry is published.
    vq_->push_batch(done_, done_len_);
    done_.clear();
    done_len_.clear();
    need_notify_ = true;
}

void QueueWorker::start(transport::DescriptorChain&& chain) {
    const std::uint16_t idx = free_.back();
    free_.pop_back();
    Slot& s = slots_[idx];
    s.in_use = true;
    owned_.fetch_add(1, std::memory_order_relaxed);
    s.chain = std::move(chain);
    s.req = parse_request(s.chain, shared_->limits, s.iov, s.ranges);
    s.err = s.req.err;
    s.host_errno = 0;
    s.pending = 0;
    s.iov_first = 0;
    s.is_write = false;
    s.direct = false;
    s.used_len = 0;

    if (!s.req.status) {
        // virtio 1.2 §5.2.6: the status byte is device-writable and last; a
        // chain without one cannot be answered: return it with len 0.
        XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: request without a device-writable status byte; returned with len 0",
                       vq_->name());
        shared_->stats->dropped_chains.fetch_add(1, std::memory_order_relaxed);
        done_.push_back(std::move(s.chain));
        done_len_.push_back(0);
        s.in_use = false;
        free_.push_back(idx);
        owned_.fetch_sub(1, std::memory_order_relaxed);
        return;
    }
    if (s.err != ReqErr::None) return finish(idx);

    switch (s.req.type) {
        case blk::req::kIn:
        case blk::req::kOut: {
            s.offset = s.req.sector * blk::kSectorSize;
            s.remaining = s.req.data_len;
            if (s.req.type == blk::req::kIn) s.used_len = std::uint32_t(s.req.data_len);
            if (s.remaining == 0) return finish(idx);
            const Backing& b = *shared_->backing;
            if (shared_->use_direct && b.direct_fd() >= 0) {
                const std::uint64_t a = b.direct_align();
                bool aligned = s.offset % a == 0;
                for (const iovec& v : s.iov)
                    aligned = aligned && reinterpret_cast<std::uintptr_t>(v.iov_base) % a == 0 && v.iov_len % a == 0;
                s.direct = aligned;
            }
            if (s.req.type == blk::req::kOut) {
                s.is_write = true;
                s.write_seq = next_write_seq_++;
                writes_in_flight_.insert(s.write_seq);
            }
            return submit_rw(idx);
        }
        case blk::req::kFlush:
            // virtio 1.2 §5.2.6.2 case 3: a write becomes stable once a FLUSH
            // sent after it completed. We also wait for the writes this queue
            // still has in flight, so that FLUSH behaves as a barrier here.
            s.write_seq = next_write_seq_;
            waiting_flushes_.push_back(idx);
            return start_ready_flushes();
        case blk::req::kGetId: {
            // virtio 1.2 §5.2.6: NUL-padded ASCII, up to 20 bytes, no NUL when 20.
            transport::Writer w = s.chain.writer();
            w.write(std::as_bytes(std::span(shared_->id)));
            s.used_len = blk::kIdBytes;
            return finish(idx);
        }
        case blk::req::kDiscard:
        case blk::req::kWriteZeroes:
            if (s.ranges.empty()) return finish(idx);
            s.is_write = true;
            s.write_seq = next_write_seq_++;
            writes_in_flight_.insert(s.write_seq);
            return submit_discard(idx);
        default:
            s.err = ReqErr::UnknownType;  // parse_request already refuses these
            return finish(idx);
    }
}

bool QueueWorker::writethrough() const noexcept {
    // virtio 1.2 §5.2.6.2 case 1: FLUSH offered (always) but neither FLUSH nor
    // CONFIG_WCE negotiated; case 2: CONFIG_WCE negotiated and writeback == 0.
    if (!shared_->flush_negotiated && !shared_->wce_negotiated) return true;
    return shared_->wce_negotiated && shared_->writeback->load(std::memory_order_relaxed) == 0;
}

void QueueWorker::submit_rw(std::uint16_t idx) {
    Slot& s = slots_[idx];
    io_uring_sqe* sqe = get_sqe();
    if (!sqe) {
        fail(s, ReqErr::HostIo, EAGAIN);
        return op_done(idx);
    }
    const Backing& b = *shared_->backing;
    const int fixed = s.direct ? fixed_direct_fd_ : fixed_fd_;
    const int fd = fixed >= 0 ? fixed : s.direct ? b.direct_fd() : b.fd();
    const unsigned n = unsigned(s.iov.size() - s.iov_first);
    const iovec* v = s.iov.data() + s.iov_first;
    const int flags = s.req.type == blk::req::kIn ? 0 : writethrough() ? RWF_DSYNC : 0;
    // One segment (a page-sized request, or a large one in one mapping):
    // plain READ/WRITE, the kernel copies no iovec array.
    if (s.req.type == blk::req::kIn) {
        if (n == 1)
            io_uring_prep_read(sqe, fd, v->iov_base, unsigned(v->iov_len), s.offset);
        else
            io_uring_prep_readv(sqe, fd, v, n, s.offset);
    } else {
        if (n == 1)
            io_uring_prep_write(sqe, fd, v->iov_base, unsigned(v->iov_len), s.offset);
        else
            io_uring_prep_writev(sqe, fd, v, n, s.offset);
        sqe->rw_flags = flags;
    }
    if (fixed >= 0) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, pack(std::uint8_t(Op::Rw), idx));
    ++s.pending;
}

void QueueWorker::submit_fsync(std::uint16_t idx) {
    Slot& s = slots_[idx];
    io_uring_sqe* sqe = get_sqe();
    if (!sqe) {
        fail(s, ReqErr::HostIo, EAGAIN);
        return op_done(idx);
    }
    io_uring_prep_fsync(sqe, shared_->backing->fd(), IORING_FSYNC_DATASYNC);
    io_uring_sqe_set_data64(sqe, pack(std::uint8_t(Op::Fsync), idx));
    ++s.pending;
}

void QueueWorker::submit_falloc(std::uint16_t idx, std::uint32_t range, int mode) {
    Slot& s = slots_[idx];
    io_uring_sqe* sqe = get_sqe();
    if (!sqe) {
        fail(s, ReqErr::HostIo, EAGAIN);
        return;
    }
    const Range& r = s.ranges[range];
    io_uring_prep_fallocate(sqe, shared_->backing->fd(), mode, r.offset, r.len);
    io_uring_sqe_set_data64(sqe, pack(std::uint8_t(Op::Falloc), idx, range, std::uint8_t(mode)));
    ++s.pending;
}

void QueueWorker::submit_discard(std::uint16_t idx) {
    Slot& s = slots_[idx];
    const bool discard = s.req.type == blk::req::kDiscard;
    const Backing& b = *shared_->backing;
    if (b.kind() == BackingKind::BlockDevice) {
        // BLKDISCARD / BLKZEROOUT block: run them on the helper pool, never here.
        ++s.pending;
        ++in_kernel_;
        ++helper_ops_;
        shared_->backing->run_blocking([self = shared_from_this(), idx, ranges = s.ranges, discard,
                                        fd = b.fd()]() {
            int err = 0;
            for (const Range& r : ranges) {
                err = discard ? blockdev_discard(fd, r.offset, r.len) : blockdev_zeroout(fd, r.offset, r.len);
                if (err) break;
            }
            boost::asio::post(self->strand_, [self, idx, err] { self->on_helper_done(idx, err); });
        });
        return;
    }
    for (std::uint32_t i = 0; i < s.ranges.size() && s.err == ReqErr::None; ++i) {
        // virtio 1.2 §5.2.6.2: a discard MAY deallocate; a write zeroes with
        // unmap MAY deallocate "provided that following reads return zeroes"
        // (a punched hole reads as zeroes); without unmap it must not.
        const bool punch = discard || s.ranges[i].unmap;
        submit_falloc(idx, i, punch ? kPunch : kZero);
    }
    if (s.pending == 0) op_done(idx);
}

void QueueWorker::on_helper_done(std::uint16_t idx, int err) {
    --in_kernel_;
    --helper_ops_;
    Slot& s = slots_[idx];
    --s.pending;
    if (err && !stopping_) fail(s, ReqErr::HostIo, err);
    op_done(idx);
    run();
}

bool QueueWorker::reap() {
    unsigned head;
    unsigned n = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
        ++n;
        --in_kernel_;
        on_cqe(cqe->user_data, cqe->res);
    }
    if (n) io_uring_cq_advance(&ring_, n);
    return n != 0;
}

void QueueWorker::on_cqe(std::uint64_t ud, int res) {
    const auto op = Op(op_of(ud));
    if (op == Op::Cancel) return;
    const std::uint16_t idx = slot_of(ud);
    if (idx >= slots_.size() || !slots_[idx].in_use) return;  // cannot happen; never trust it blindly
    Slot& s = slots_[idx];
    if (op == Op::Rw) return on_rw(s, idx, res);
    --s.pending;
    if (stopping_) return op_done(idx);
    if (op == Op::Fsync) {
        if (res < 0) fail(s, ReqErr::HostIo, -res);
        return op_done(idx);
    }
    // Op::Falloc
    if (res == -EOPNOTSUPP && mode_of(ud) == kZero) {
        // No ZERO_RANGE on this file system: a punched hole reads as zeroes too.
        submit_falloc(idx, range_of(ud), kPunch);
        return op_done(idx);
    }
    if (res < 0) fail(s, ReqErr::HostIo, -res);
    op_done(idx);
}

void QueueWorker::on_rw(Slot& s, std::uint16_t idx, int res) {
    --s.pending;
    if (stopping_) return op_done(idx);
    if (res == -EAGAIN || res == -EINTR) {
        submit_rw(idx);
        return op_done(idx);
    }
    if (res == -EINVAL && s.direct) {
        // The backing wants a larger O_DIRECT alignment than we assumed.
        XV_LOG_LIMITED(rl_, spdlog::level::warn, "{}: O_DIRECT refused at offset {}; retrying through the page cache",
                       vq_->name(), s.offset);
        s.direct = false;
        submit_rw(idx);
        return op_done(idx);
    }
    if (res < 0) {
        fail(s, ReqErr::HostIo, -res);
        return op_done(idx);
    }
    if (res == 0) {
        // End of file inside the advertised capacity: the backing shrank.
        fail(s, ReqErr::ShortIo);
        return op_done(idx);
    }
    // Short transfer: advance over what was done and go on with the rest.
    std::uint64_t done = std::min<std::uint64_t>(std::uint64_t(res), s.remaining);
    s.remaining -= done;
    s.offset += done;
    while (done > 0 && s.iov_first < s.iov.size()) {
        iovec& v = s.iov[s.iov_first];
        if (done >= v.iov_len) {
            done -= v.iov_len;
            ++s.iov_first;
        } else {
            v.iov_base = static_cast<std::byte*>(v.iov_base) + done;
            v.iov_len -= done;
            done = 0;
        }
    }
    if (s.remaining > 0 && s.iov_first < s.iov.size()) submit_rw(idx);
    op_done(idx);
}

void QueueWorker::fail(Slot& s, ReqErr e, int err) {
    if (s.err == ReqErr::None) {
        s.err = e;
        s.host_errno = err;
    }
}

void QueueWorker::op_done(std::uint16_t idx) {
    if (slots_[idx].pending == 0) finish(idx);
}

void QueueWorker::finish(std::uint16_t idx) {
    Slot& s = slots_[idx];
    if (stopping_) return;  // dropped when the worker stops
    if (s.is_write) {
        s.is_write = false;
        write_done(s.write_seq);
    }
    SharedStats& st = *shared_->stats;
    st.requests.fetch_add(1, std::memory_order_relaxed);
    std::uint32_t used = 1;
    if (s.err == ReqErr::None) {
        used = s.used_len + 1;
        if (s.req.type == blk::req::kIn) st.bytes_read.fetch_add(s.req.data_len, std::memory_order_relaxed);
        if (s.req.type == blk::req::kOut) st.bytes_written.fetch_add(s.req.data_len, std::memory_order_relaxed);
        if (s.req.type == blk::req::kFlush) st.flushes.fetch_add(1, std::memory_order_relaxed);
        if ((s.req.type == blk::req::kIn || s.req.type == blk::req::kOut) && s.req.data_len)
            (s.direct ? st.direct_ios : st.buffered_ios).fetch_add(1, std::memory_order_relaxed);
    } else {
        st.errors.fetch_add(1, std::memory_order_relaxed);
        log_error(s);
    }
    *s.req.status = std::byte{virtio_status(s.err)};
    done_.push_back(std::move(s.chain));
    done_len_.push_back(used);
    s.in_use = false;
    s.ranges.clear();
    free_.push_back(idx);
    owned_.fetch_sub(1, std::memory_order_relaxed);
}

void QueueWorker::write_done(std::uint64_t seq) {
    writes_in_flight_.erase(seq);
    start_ready_flushes();
}

void QueueWorker::start_ready_flushes() {
    while (!waiting_flushes_.empty()) {
        const std::uint16_t idx = waiting_flushes_.front();
        if (!writes_in_flight_.empty() && *writes_in_flight_.begin() < slots_[idx].write_seq) return;
        waiting_flushes_.pop_front();
        submit_fsync(idx);
    }
}

void QueueWorker::log_error(const Slot& s) const {
    const auto lvl = s.err == ReqErr::HostIo || s.err == ReqErr::ShortIo ? spdlog::level::err : spdlog::level::warn;
    XV_LOG_LIMITED(rl_, lvl, "{}: {} sector {} len {}: {}{}{} -> status {}", vq_->name(), type_name(s.req.type),
                   s.req.sector, s.req.data_len, describe(s.err), s.host_errno ? ": " : "",
                   s.host_errno ? errno_text(s.host_errno) : std::string(), virtio_status(s.err));
}

void QueueWorker::maybe_stopped() {
    if (!stopping_ || stopped_ || in_kernel_ != 0) return;
    stopped_ = true;
    flush_done();  // completed before the stop: answered as usual
    // Nothing in the kernel points into guest memory any more: drop the
    // chains (each unmaps its grants).
    for (Slot& s : slots_) {
        if (!s.in_use) continue;
        s.chain = transport::DescriptorChain{};
        s.in_use = false;
        s.ranges.clear();
    }
    owned_.store(0, std::memory_order_relaxed);
    waiting_flushes_.clear();
    writes_in_flight_.clear();
    vq_ = nullptr;
    boost::system::error_code ec;
    efd_.cancel(ec);
    auto cbs = std::move(on_stopped_);
    on_stopped_.clear();
    for (auto& cb : cbs) cb();
}

}  // namespace xv::devices::blkimpl
