// SPDX-License-Identifier: GPL-2.0-only
// One virtio-blk request queue: pops chains on the queue's strand and runs
// them through a private io_uring.
//
// Why liburing and not asio::random_access_file: Asio's file support has
// no fsync/fdatasync and no fallocate, and submits one system call per
// operation. With liburing a whole kick (many chains) is submitted in one
// io_uring_submit(), reads/writes go straight into the grant mappings as
// iovecs, FLUSH is IORING_OP_FSYNC and DISCARD/WRITE_ZEROES on files are
// IORING_OP_FALLOCATE, all on the same ring. The ring signals an eventfd,
// which Asio waits on (posix::stream_descriptor) on the queue's strand.
//
// Request slots (one per chain the device owns):
//
//   Free --pop+parse--> InKernel --CQE (short/EAGAIN: resubmit)--> done
//     ^      |  (FLUSH with earlier writes in flight)                |
//     |      +--> WaitWrites --earlier writes done--> InKernel       |
//     |      +--> invalid / GET_ID: done at once                     |
//     +---- status byte, batched push (one unmap call), notify -------+
//
// Per run() round: one pop_batch() (one grant map call for all chains
// popped), one io_uring_submit() for their SQEs, one reap of all ready
// CQEs, one push_batch() of the chains completed (one grant unmap call),
// and one guest notification per run().
//
// Worker states: Running --quiesce()--> Draining (no pop; cancel what can
// be cancelled; wait until no op is in the kernel) --> Stopped (chains
// dropped, done() called). Nothing touches the Virtqueue after Stopped.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <liburing.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "blk_backing.h"
#include "blk_request.h"
#include "xv/log.h"
#include "xv/transport/virtqueue.h"

namespace xv::devices::blkimpl {

/// Counters shared by every queue of one device.
struct SharedStats {
    std::atomic<std::uint64_t> requests{0}, errors{0}, bytes_read{0}, bytes_written{0}, flushes{0},
        direct_ios{0}, buffered_ios{0}, dropped_chains{0};
};

/// What all queues of one activated device share.
struct DeviceShared {
    std::shared_ptr<Backing> backing;
    std::string label;                 ///< "dom5 blk0"
    std::array<char, blk::kIdBytes> id{};  ///< GET_ID answer, NUL-padded
    ParseLimits limits;
    bool use_direct = false;
    /// virtio 1.2 §5.2.6.2 cases 1 and 2: writes must be stable at completion
    /// when FLUSH was offered but neither FLUSH nor CONFIG_WCE negotiated,
    /// or CONFIG_WCE was negotiated and `writeback` is 0.
    bool flush_negotiated = false;
    bool wce_negotiated = false;
    std::shared_ptr<std::atomic<std::uint8_t>> writeback;
    std::shared_ptr<SharedStats> stats;
    std::uint32_t io_depth = 256;
};

/// The data path of one virtqueue. All members run on the queue's strand.
class QueueWorker : public std::enable_shared_from_this<QueueWorker> {
public:
    /// Sets up the ring and its eventfd for `vq`.
    static Result<std::shared_ptr<QueueWorker>> create(transport::Virtqueue& vq, std::shared_ptr<const DeviceShared> shared,
                                                      boost::asio::any_io_executor ex);
    ~QueueWorker();
    QueueWorker(const QueueWorker&) = delete;
    QueueWorker& operator=(const QueueWorker&) = delete;

    /// The driver kicked the queue (call on the queue's strand).
    void kick();
    /// Stops popping, waits for every op in the kernel, drops the chains,
    /// then calls `done` (on the strand). Safe from any thread.
    void quiesce(std::function<void()> done);
    /// Chains owned right now.
    std::uint64_t in_flight() const noexcept { return owned_.load(std::memory_order_relaxed); }

private:
    enum class Op : std::uint8_t { Rw = 1, Fsync = 2, Falloc = 3, Cancel = 4 };

    struct Slot {
        transport::DescriptorChain chain;
        ParsedRequest req;
        std::vector<iovec> iov;
        std::size_t iov_first = 0;
        std::vector<Range> ranges;
        std::uint64_t offset = 0;     ///< next file offset (IN/OUT)
        std::uint64_t remaining = 0;  ///< bytes still to transfer (IN/OUT)
        std::uint32_t pending = 0;    ///< ops in the kernel or the helper pool
        ReqErr err = ReqErr::None;
        int host_errno = 0;
        std::uint64_t write_seq = 0;  ///< writes: own number; FLUSH: first write it need not wait for
        bool is_write = false;
        bool direct = false;
        bool in_use = false;
        std::uint32_t used_len = 0;
    };

    QueueWorker(transport::Virtqueue& vq, std::shared_ptr<const DeviceShared> shared, boost::asio::any_io_executor ex);
    Result<void> init();

    void run();                       // pump + submit + reap until idle, then arm
    void pump();                      // pops and starts new requests
    void start(transport::DescriptorChain&& chain);
    bool reap();                      // handles ready CQEs; true when any
    void arm();                       // async_wait on the eventfd
    void submit();
    void flush_done();                // push_batch of the completed chains

    io_uring_sqe* get_sqe();
    void submit_rw(std::uint16_t idx);
    void submit_fsync(std::uint16_t idx);
    void submit_falloc(std::uint16_t idx, std::uint32_t range, int mode);
    void submit_discard(std::uint16_t idx);
    void on_cqe(std::uint64_t user_data, int res);
    void on_rw(Slot& s, std::uint16_t idx, int res);
    void on_helper_done(std::uint16_t idx, int err);
    void fail(Slot& s, ReqErr e, int err = 0);
    void op_done(std::uint16_t idx);
    void finish(std::uint16_t idx);
    void write_done(std::uint64_t seq);
    void start_ready_flushes();
    bool writethrough() const noexcept;
    void log_error(const Slot& s) const;
    void maybe_stopped();

    transport::Virtqueue* vq_;
    transport::Strand strand_;
    std::shared_ptr<const DeviceShared> shared_;
    boost::asio::posix::stream_descriptor efd_;
    io_uring ring_{};
    bool ring_ok_ = false;
    bool armed_ = false;
    bool need_notify_ = false;
    bool stopping_ = false;
    bool stopped_ = false;
    bool cancel_sent_ = false;
    std::vector<std::function<void()>> on_stopped_;

    /// Fixed-file indexes of the backing's descriptors in the ring
    /// (io_uring_register_files), -1 when not registered.
    int fixed_fd_ = -1, fixed_direct_fd_ = -1;

    std::vector<transport::DescriptorChain> popped_;  ///< one pop_batch()
    std::vector<transport::DescriptorChain> done_;    ///< completed, not yet pushed
    std::vector<std::uint32_t> done_len_;

    std::vector<Slot> slots_;
    std::vector<std::uint16_t> free_;
    std::uint32_t in_kernel_ = 0;       // SQEs prepared or submitted, not yet reaped, plus helper ops
    std::uint32_t helper_ops_ = 0;      // of which on the helper pool
    std::atomic<std::uint64_t> owned_{0};
    std::uint64_t next_write_seq_ = 1;
    std::set<std::uint64_t> writes_in_flight_;
    std::deque<std::uint16_t> waiting_flushes_;
    mutable log::RateLimit rl_{5.0, 10.0};
};

}  // namespace xv::devices::blkimpl
