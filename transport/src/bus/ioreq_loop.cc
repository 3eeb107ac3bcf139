// SPDX-License-Identifier: GPL-2.0-only
// The per-guest ioreq loop: Asio wait on the ioreq server fd, routing,
// orderly stop.
#include "xv/transport/ioreq_loop.h"
#include "xv/cpu_relax.h"
#include "xv/cpu_time.h"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/post.hpp>

#include <fmt/format.h>
#include <poll.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

namespace xv::transport {

namespace {

/// x86: BAR0 of a PCI function as an MMIO region at its current address.
class BarRegion final : public MmioRegion {
public:
    explicit BarRegion(std::weak_ptr<PciTransport> fn) : fn_(std::move(fn)) {}
    std::uint64_t region_size() const override { return PciTransport::bar0_size(); }
    std::uint64_t mmio_read(std::uint64_t offset, unsigned size) override {
        auto fn = fn_.lock();
        return fn ? fn->bar_read(offset, size) : all_ones(size);
    }
    void mmio_write(std::uint64_t offset, unsigned size, std::uint64_t value) override {
        if (auto fn = fn_.lock()) fn->bar_write(offset, size, value);
    }
    void quiesce(std::function<void()> done) override { done(); }

private:
    std::weak_ptr<PciTransport> fn_;
};

constexpr std::uint32_t sbdf_code(xen::Sbdf s) {
    // public/hvm/ioreq.h: IOREQ_TYPE_PCI_CONFIG addr bits 63..32 =
    // segment 16 | bus 8 | device 5 | function 3.
    return (std::uint32_t(s.segment) << 16) | (std::uint32_t(s.bus) << 8) | (std::uint32_t(s.device & 0x1f) << 3) |
           (s.function & 7u);
}

}  // namespace

Result<std::shared_ptr<IoreqLoop>> IoreqLoop::create(boost::asio::any_io_executor ex, xen::DeviceModel& dm,
                                                     xen::DomId domid) {
    // xen-facts §2.5: BUFIOREQ_OFF - a virtio backend never needs buffered ioreqs.
    auto server = dm.create_ioreq_server(domid, false);
    if (!server) return std::move(server).error();
    return wrap(std::move(ex), std::move(*server));
}

std::shared_ptr<IoreqLoop> IoreqLoop::wrap(boost::asio::any_io_executor ex, std::unique_ptr<xen::IoreqServer> server) {
    return std::shared_ptr<IoreqLoop>(new IoreqLoop(std::move(ex), std::move(server)));
}

IoreqLoop::IoreqLoop(boost::asio::any_io_executor ex, std::unique_ptr<xen::IoreqServer> server)
    : ex_(ex), strand_(boost::asio::make_strand(ex)), server_(std::move(server)), domid_(server_->domid()),
      server_id_(server_->id()), sd_(ex) {
    // A duplicate, so that closing the descriptor never closes the
    // server's own fd.
    int fd = ::dup(server_->fd());
    if (fd >= 0) {
        boost::system::error_code ec;
        sd_.assign(fd, ec);
        if (ec) {
            ::close(fd);
            spdlog::error("dom{}: ioreq loop cannot watch fd {}: {}", domid_, server_->fd(), ec.message());
        }
    } else {
        spdlog::error("dom{}: ioreq loop cannot dup fd {}: {}", domid_, server_->fd(), std::strerror(errno));
    }
}

IoreqLoop::~IoreqLoop() {
    boost::system::error_code ec;
    sd_.close(ec);
}

Result<void> IoreqLoop::add_route_locked(std::uint64_t base, std::uint64_t size, std::shared_ptr<MmioRegion> region,
                                         std::string name) {
    if (size == 0 || base + size - 1 < base)
        return make_error(std::errc::invalid_argument, fmt::format("dom{}: {} at {:#x}+{:#x} is empty or wraps",
                                                                   domid_, name, base, size));
    const std::uint64_t end = base + size - 1;
    auto it = routes_.upper_bound(end);
    if (it != routes_.begin()) {
        auto prev = std::prev(it);
        if (prev->second.end >= base)
            return make_error(std::errc::file_exists, fmt::format("dom{}: {} at {:#x}+{:#x} overlaps {}", domid_,
                                                                  name, base, size, prev->second.name));
    }
    if (!server_) return make_error(std::errc::bad_file_descriptor, fmt::format("dom{}: loop stopped", domid_));
    // xen-facts §3.4: the range is claimed before the guest can touch it.
    if (auto r = server_->map_mmio(base, end); !r)
        return Error{r.error().code, fmt::format("dom{}: claim {} at {:#x}+{:#x}: {}", domid_, name, base, size,
                                                 r.error().message)};
    routes_[base] = Route{end, std::move(region), std::move(name)};
    return ok();
}

Result<void> IoreqLoop::add_region(std::uint64_t base, std::shared_ptr<MmioRegion> region, std::string name) {
    if (!region) return make_error(std::errc::invalid_argument, "null region");
    std::lock_guard lk(mu_);
    auto size = region->region_size();
    auto weak = std::weak_ptr<MmioRegion>(region);
    XV_TRY(add_route_locked(base, size, region, std::move(name)));
    quiescers_.push_back([weak](std::function<void()> done) {
        if (auto r = weak.lock()) r->quiesce(std::move(done));
        else done();
    });
    return ok();
}

Result<void> IoreqLoop::add_pci_host(std::shared_ptr<PciHost> host) {
    if (!host) return make_error(std::errc::invalid_argument, "null PCI host");
    std::lock_guard lk(mu_);
    const auto& c = host->config();
    XV_TRY(add_route_locked(c.ecam_base, c.ecam_size, host->ecam_region(), "PCI ECAM"));
    if (auto r = add_route_locked(c.mmio_base, c.mmio_size, host->mmio_region(), "PCI BAR window"); !r) {
        (void)server_->unmap_mmio(c.ecam_base, c.ecam_base + c.ecam_size - 1);
        routes_.erase(c.ecam_base);
        return r;
    }
    quiescers_.push_back([host](std::function<void()> done) { host->quiesce(std::move(done)); });
    return ok();
}

Result<void> IoreqLoop::add_pci_function(xen::Sbdf sbdf, std::shared_ptr<PciTransport> fn) {
    if (!fn) return make_error(std::errc::invalid_argument, "null PCI function");
    std::lock_guard lk(mu_);
    const auto code = sbdf_code(sbdf);
    if (pci_.count(code))
        return make_error(std::errc::file_exists, fmt::format("dom{}: PCI {:#x} already added", domid_, code));
    if (!server_) return make_error(std::errc::bad_file_descriptor, "loop stopped");
    if (auto r = server_->map_pcidev(sbdf); !r)
        return Error{r.error().code, fmt::format("dom{}: claim PCI {:04x}:{:02x}:{:02x}.{}: {}", domid_, sbdf.segment,
                                                 sbdf.bus, sbdf.device, sbdf.function, r.error().message)};
    pci_[code] = fn;
    std::weak_ptr<IoreqLoop> weak = weak_from_this();
    fn->set_bar_listener([weak, code](std::optional<std::uint64_t> o, std::optional<std::uint64_t> n) {
        if (auto self = weak.lock()) self->on_bar_change(code, o, n);
    });
    quiescers_.push_back([fn](std::function<void()> done) { fn->quiesce(std::move(done)); });
    return ok();
}

void IoreqLoop::on_bar_change(std::uint32_t code, std::optional<std::uint64_t> old_base,
                              std::optional<std::uint64_t> new_base) {
    std::lock_guard lk(mu_);
    auto it = pci_.find(code);
    if (it == pci_.end() || !server_) return;
    const auto size = PciTransport::bar0_size();
    if (old_base) {
        auto r = routes_.find(*old_base);
        if (r != routes_.end() && r->second.region && r->second.name.rfind("PCI BAR", 0) == 0) {
            (void)server_->unmap_mmio(*old_base, *old_base + size - 1);
            routes_.erase(r);
        }
    }
    if (new_base) {
        auto r = add_route_locked(*new_base, size, std::make_shared<BarRegion>(it->second),
                                  fmt::format("PCI BAR0 of {:#x}", code));
        if (!r)
            XV_LOG_LIMITED(rl_, spdlog::level::warn, "dom{}: guest placed BAR0 of PCI {:#x} at {:#x}: {}", domid_,
                           code, *new_base, r.error().describe());
    }
}

void IoreqLoop::start() {
    State expected = State::Created;
    if (!state_.compare_exchange_strong(expected, State::Running)) return;
    auto self = shared_from_this();
    boost::asio::post(strand_, [self] {
        // Ioreqs may already be waiting: serve them, then wait.
        self->on_ready();
    });
}

bool IoreqLoop::readable_now() const {
    if (!sd_.is_open()) return false;
    pollfd p{};
    p.fd = const_cast<boost::asio::posix::stream_descriptor&>(sd_).native_handle();
    p.events = POLLIN;
    return ::poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

void IoreqLoop::arm() {
    if (!sd_.is_open() || state_ == State::Stopped) return;
    auto self = shared_from_this();
    asleep_since_ = std::chrono::steady_clock::now();
    sd_.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                   boost::asio::bind_executor(strand_, [self](const boost::system::error_code& ec) {
                       if (ec || self->state_ == State::Stopped) return;
                       self->adapt_window(std::chrono::steady_clock::now());
                       self->on_ready();
                   }));
    // The descriptor is edge-triggered in epoll: an event that arrived
    // between the last serve and this wait would be lost, so look once.
    if (readable_now()) boost::asio::post(strand_, [self] { self->drain_extra(); });
}

void IoreqLoop::drain_extra() {
    if (state_ == State::Stopped) return;
    serve_now();
    if (readable_now()) {
        auto self = shared_from_this();
        boost::asio::post(strand_, [self] { self->drain_extra(); });
    }
}

void IoreqLoop::on_ready() {
    if (state_ == State::Stopped) return;
    ++wakeups_;
    serve_and_poll(false);
}

void IoreqLoop::serve_and_poll(bool polling) {
    if (state_ == State::Stopped) return;
    serve_now(polling);
    // A poll that stopped at kMaxPollServes was finding work: it goes on
    // after the strand's other handlers instead of sleeping on the fd
    // (which cost the next access a wake-up every kMaxPollServes accesses).
    bool busy = poll_for_more();
    if (!busy && sleep_hook_) sleep_hook_(SleepStep::PollEnded);
    if (!busy && events_left_) {
        // The poll served ioreqs from memory and left their events pending,
        // their ports masked (xen/ioreq.h serve_ready): a masked port would
        // not wake the fd wait. Read the events and unmask the ports
        // (serve_pending, which also serves any slot they name that is
        // READY), then look at the slots once more: an ioreq posted while
        // its port was masked is READY there now, or its event was
        // delivered again at the unmask and the fd is readable.
        events_left_ = false;
        serve_now();
        // The unmask (a write to the evtchn device) before the reads of the
        // slots: Xen writes READY before it tests the mask.
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (server_ && server_->any_ready()) {
            serve_from_memory();
            busy = true;
        }
    }
    if (busy || readable_now()) {
        // More is ready (serve_pending is bounded): let other handlers run
        // first, then serve again.
        auto self = shared_from_this();
        boost::asio::post(strand_, [self, busy] { self->serve_and_poll(busy); });
        return;
    }
    if (sleep_hook_) sleep_hook_(SleepStep::Rechecked);
    arm();
}

void IoreqLoop::adapt_window(std::chrono::steady_clock::time_point woken) {
    // The rule of set_poll() (ioreq_loop.h): grow when the fd wait was
    // shorter than the maximum window (a longer poll would have served the
    // access without the wake-up), shrink when it was not.
    const std::int64_t max_ns = poll_ns_.load(std::memory_order_relaxed);
    std::int64_t w = window_ns_.load(std::memory_order_relaxed);
    const std::int64_t slept = std::chrono::nanoseconds(woken - asleep_since_).count();
    if (max_ns <= 0) {
        w = 0;
    } else if (slept >= max_ns) {
        w /= 2;
        if (w < kPollGrowStart.count()) w = 0;
    } else if (w < max_ns) {
        w = std::min(max_ns, std::max<std::int64_t>(kPollGrowStart.count(), 2 * w));
    }
    window_ns_.store(w, std::memory_order_relaxed);
}

bool IoreqLoop::poll_for_more() {
    using clock = std::chrono::steady_clock;
    const std::int64_t max_ns = poll_ns_.load(std::memory_order_relaxed);
    const std::int64_t window = std::min(window_ns_.load(std::memory_order_relaxed), max_ns);
    if (window <= 0 || !server_) return false;
    // A realtime thread (ioreq_realtime_priority) does not poll: its
    // sched_yield() gives the CPU only to threads of its own priority
    // (sched_yield(2)), so it would keep every normal thread of its CPU
    // (another guest's I/O, a device's strand) off it for the whole window.
    // Its wake-up from the fd wait is the fast path instead. A thread's
    // policy is set as it starts (daemon/ioreq_tuning.h), so asked once.
    thread_local const int policy = ::sched_getscheduler(0);
    if (policy == SCHED_FIFO || policy == SCHED_RR) return false;
    auto now = clock::now();
    // The budget of polls in vain: 1/kPollBudgetShare of the time passed.
    if (credit_at_ != clock::time_point{})
        credit_ns_ = std::min<std::int64_t>(kPollCreditMax.count(),
                                            credit_ns_ + std::chrono::nanoseconds(now - credit_at_).count() /
                                                             std::int64_t(kPollBudgetShare));
    credit_at_ = now;
    // Bounded: a guest trapping without pause must not keep the strand
    // from its other work (stop, region changes).
    for (unsigned serves = 0; serves < kMaxPollServes && state_ != State::Stopped;) {
        // A round that finds nothing is paid from the budget: it never
        // polls longer than the budget holds.
        const std::int64_t limit = std::min(window, credit_ns_);
        if (limit <= 0) return false;
        const auto start = clock::now();
        const auto until = start + std::chrono::nanoseconds(limit);
        // The thread's CPU time is a system call: read only once the round
        // yields (cpu_mark, at mark_at). Before that it ran without giving
        // the CPU away, so its wall time is its CPU time at most.
        std::int64_t cpu_mark = -1;
        clock::time_point mark_at{};
        // A round that found nothing: its CPU time comes off the budget.
        auto charge_in_vain = [&] {
            const std::int64_t spent =
                cpu_mark < 0 ? std::chrono::nanoseconds(clock::now() - start).count()
                             : thread_cpu_ns() - cpu_mark + std::chrono::nanoseconds(mark_at - start).count();
            credit_ns_ -= spent;
            polls_in_vain_.fetch_add(1, std::memory_order_relaxed);
            poll_in_vain_ns_.fetch_add(std::uint64_t(spent), std::memory_order_relaxed);
        };
        for (;;) {
            // The slots themselves, not the event channel: no system call
            // (xen/ioreq.h any_ready). A slot in any state but READY is no
            // ioreq and does not end the round.
            if (server_->any_ready()) {
                const unsigned n = serve_from_memory();
                if (n > 0) {
                    serves += n;
                    // The answer is written and notified; the vCPU it
                    // resumes (or another task) may be waiting for this
                    // very CPU. Offer it once, off the access's path, before
                    // looking again.
                    std::this_thread::yield();
                    break;
                }
            }
            now = clock::now();
            if (now >= until || state_ == State::Stopped) {
                charge_in_vain();
                return false;
            }
            // The first kPollSpin of a round only looks again: the next
            // access of a guest in a burst comes within a microsecond or
            // two, and a yield is a system call.
            if (now - start < kPollSpin) {
                cpu_relax();
                continue;
            }
            if (cpu_mark < 0) {
                cpu_mark = thread_cpu_ns();
                mark_at = now;
            }
            // Give the CPU away between looks: on a busy host the thread
            // that will trap next may be waiting for this very CPU. A yield
            // that comes back late ran another task: the CPU is wanted
            // elsewhere, and polling on would take it from that task (KVM's
            // halt polling likewise stops once its CPU has another runnable
            // task). Stop, and halve the window.
            const auto before_yield = clock::now();
            std::this_thread::yield();
            if (clock::now() - before_yield > kPollContended && gives_way_.load(std::memory_order_relaxed)) {
                charge_in_vain();
                polls_contended_.fetch_add(1, std::memory_order_relaxed);
                std::int64_t w = window_ns_.load(std::memory_order_relaxed) / 2;
                window_ns_.store(w < kPollGrowStart.count() ? 0 : w, std::memory_order_relaxed);
                return false;
            }
        }
    }
    return state_ != State::Stopped;
}

unsigned IoreqLoop::serve_from_memory() {
    if (!server_) return 0;
    auto r = server_->serve_ready([this](const xen::IoRequest& req) {
        ++served_;
        ++polled_;
        return handle(req);
    });
    if (!r) {
        XV_LOG_LIMITED(rl_, spdlog::level::err, "dom{}: serving ioreqs failed: {}", domid_, r.error().describe());
        return 0;
    }
    if (*r > 0) events_left_ = true;
    return *r;
}

unsigned IoreqLoop::serve_now(bool polled) {
    if (!server_) return 0;
    // Counted before the answer is handed back: a vCPU (or a test) that
    // sees its access completed also sees it counted.
    auto r = server_->serve_pending([this, polled](const xen::IoRequest& req) {
        ++served_;
        if (polled) ++polled_;
        return handle(req);
    });
    if (!r) {
        XV_LOG_LIMITED(rl_, spdlog::level::err, "dom{}: serving ioreqs failed: {}", domid_, r.error().describe());
        return 0;
    }
    return *r;
}

std::uint64_t IoreqLoop::handle(const xen::IoRequest& req) {
    using xen::IoreqType;
    if (req.type == IoreqType::Invalidate || req.type == IoreqType::TimeOffset) return 0;  // lab-notes: acknowledge
    const bool size_ok = req.size == 1 || req.size == 2 || req.size == 4 || req.size == 8;
    const unsigned size = size_ok ? req.size : 8;
    // Grants only: a data_is_ptr request would make us touch guest RAM;
    // rep (count > 1) accesses are not a register access either.
    if (req.data_is_ptr || req.count != 1 || !size_ok) {
        ++malformed_;
        XV_LOG_LIMITED(rl_, spdlog::level::warn,
                       "dom{} vcpu{}: refused ioreq type {} addr {:#x} size {} count {} data_is_ptr {}", domid_,
                       req.vcpu, int(req.type), req.addr, req.size, req.count, req.data_is_ptr);
        return req.is_write ? 0 : all_ones(size);
    }
    const std::uint64_t value = req.data & all_ones(size);
    if (req.type == IoreqType::Copy) {
        std::shared_ptr<MmioRegion> region;
        std::uint64_t base = 0;
        {
            std::lock_guard lk(mu_);
            auto it = routes_.upper_bound(req.addr);
            if (it != routes_.begin()) {
                --it;
                if (req.addr + size - 1 <= it->second.end && req.addr + size - 1 >= req.addr) {
                    region = it->second.region;
                    base = it->first;
                }
            }
        }
        if (!region) {
            ++unclaimed_;
            XV_LOG_LIMITED(rl_, spdlog::level::warn, "dom{} vcpu{}: {}-byte {} at unclaimed address {:#x}", domid_,
                           req.vcpu, size, req.is_write ? "write" : "read", req.addr);
            return req.is_write ? 0 : all_ones(size);
        }
        if (req.is_write) {
            region->mmio_write(req.addr - base, size, value);
            return 0;
        }
        return region->mmio_read(req.addr - base, size) & all_ones(size);
    }
    if (req.type == IoreqType::PciConfig) {
        const auto code = std::uint32_t(req.addr >> 32);
        const auto reg = std::uint32_t(req.addr);
        std::shared_ptr<PciTransport> fn;
        {
            std::lock_guard lk(mu_);
            auto it = pci_.find(code);
            if (it != pci_.end()) fn = it->second;
        }
        if (!fn || size > 4) {
            ++unclaimed_;
            XV_LOG_LIMITED(rl_, spdlog::level::warn, "dom{} vcpu{}: PCI config {} of {:#x} reg {:#x} unclaimed",
                           domid_, req.vcpu, req.is_write ? "write" : "read", code, reg);
            return req.is_write ? 0 : all_ones(size);
        }
        if (req.is_write) {
            fn->config_write(reg, size, std::uint32_t(value));
            return 0;
        }
        return fn->config_read(reg, size);
    }
    ++unclaimed_;
    XV_LOG_LIMITED(rl_, spdlog::level::warn, "dom{} vcpu{}: ioreq type {} at {:#x} not handled", domid_, req.vcpu,
                   int(req.type), req.addr);
    return req.is_write ? 0 : all_ones(size);
}

void IoreqLoop::stop(std::function<void()> done) {
    State s = state_.load();
    if (s == State::Stopping || s == State::Stopped) {
        if (done) boost::asio::post(strand_, std::move(done));
        return;
    }
    state_ = State::Stopping;
    if (s == State::Created) {
        // Nobody waits on the fd yet; serve while the devices reset anyway.
        auto self = shared_from_this();
        boost::asio::post(strand_, [self] { self->arm(); });
    }
    std::vector<std::function<void(std::function<void()>)>> qs;
    {
        std::lock_guard lk(mu_);
        qs = quiescers_;
    }
    auto self = shared_from_this();
    auto shared_done = std::make_shared<std::function<void()>>(std::move(done));
    auto left = std::make_shared<std::atomic<std::size_t>>(qs.size() + 1);
    auto arrive = [self, left, shared_done] {
        if (left->fetch_sub(1) != 1) return;
        boost::asio::post(self->strand_, [self, shared_done] { self->finish_stop(std::move(*shared_done)); });
    };
    for (auto& q : qs) q(arrive);
    arrive();
}

void IoreqLoop::finish_stop(std::function<void()> done) {
    {
        std::lock_guard lk(mu_);
        if (server_) {
            for (auto& [base, r] : routes_) (void)server_->unmap_mmio(base, r.end);
            for (auto& [code, fn] : pci_) {
                xen::Sbdf s{std::uint16_t(code >> 16), std::uint8_t(code >> 8), std::uint8_t((code >> 3) & 0x1f),
                            std::uint8_t(code & 7)};
                (void)server_->unmap_pcidev(s);
                fn->set_bar_listener(nullptr);
            }
        }
        routes_.clear();
        pci_.clear();
        quiescers_.clear();
        state_ = State::Stopped;
        boost::system::error_code ec;
        sd_.close(ec);
        server_.reset();  // destroys the server in Xen
    }
    spdlog::info("dom{}: ioreq loop stopped", domid_);
    if (done) done();
}

IoreqLoop::Stats IoreqLoop::stats() const {
    Stats s;
    s.served = served_;
    s.wakeups = wakeups_;
    s.unclaimed = unclaimed_;
    s.malformed = malformed_;
    s.polled = polled_;
    s.polls_in_vain = polls_in_vain_.load(std::memory_order_relaxed);
    s.poll_in_vain_ns = poll_in_vain_ns_.load(std::memory_order_relaxed);
    s.poll_window_ns = window_ns_.load(std::memory_order_relaxed);
    s.polls_contended = polls_contended_.load(std::memory_order_relaxed);
    return s;
}

}  // namespace xv::transport
