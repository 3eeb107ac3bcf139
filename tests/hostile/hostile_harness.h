// SPDX-License-Identifier: GPL-2.0-only
// The malicious-guest suite's host: one GuestManager (in-process sessions
// on xen/sim) serving an honest guest and a hostile one, a guest-side blk
// driver, a background writer that proves the honest guest keeps working
// and loses nothing, and a log sink to assert the lines an operator sees.
//
//   test thread (hostile guest) --traps--> sim --ioreq--> GuestManager
//   HonestWriter thread (honest guest) --traps--^         (same supervisor)
#pragma once

#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "config.h"
#include "guest_manager.h"
#include "xv/devices/blk.h"
#include "xv/guest/transport_driver.h"
#include "xv/guest/virtqueue_driver.h"
#include "xv/transport/virtio_core.h"
#include "xv/xen/sim.h"

namespace xv::hostile {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

/// Where libxl puts the first virtio-mmio slot (xen-facts §3.2).
inline constexpr std::uint64_t kBase = 0x02000000;
inline constexpr std::uint32_t kSpi = 33;

// --- log capture ---------------------------------------------------------------

/// Keeps every log line (the formatted payload) for assertions.
class CaptureSink final : public spdlog::sinks::base_sink<std::mutex> {
public:
    /// Lines containing every one of `parts`.
    std::size_t count(std::initializer_list<std::string_view> parts);
    bool contains(std::initializer_list<std::string_view> parts) { return count(parts) > 0; }
    /// Waits (bounded) until a line contains every one of `parts`.
    bool wait_for(std::initializer_list<std::string_view> parts, std::chrono::milliseconds limit = 5000ms);
    /// Forgets what was captured.
    void clear();
    /// The captured lines (copy).
    std::vector<std::string> lines();

protected:
    void sink_it_(const spdlog::details::log_msg& msg) override;
    void flush_() override {}

private:
    std::vector<std::string> lines_;
};

/// The process-wide capture sink (installed on the default logger once).
CaptureSink& log_sink();

/// A description of every line containing `part` (for failure messages).
std::string dump_lines(std::string_view part);

// --- images -------------------------------------------------------------------

/// A sparse image file of `bytes` in `dir` (default: the temp directory).
struct TempImage {
    explicit TempImage(std::uint64_t bytes, fs::path dir = fs::temp_directory_path());
    ~TempImage();
    TempImage(const TempImage&) = delete;
    TempImage& operator=(const TempImage&) = delete;
    /// Bytes of the image at `offset` (read with plain file I/O).
    std::vector<std::byte> read(std::uint64_t offset, std::size_t len) const;
    fs::path path;
};

// --- the host -------------------------------------------------------------------

/// How the hostile guest's blk device is reached.
enum class Tk { Mmio, MmioNb, Pci, PciNb };
const char* tk_name(Tk t);
inline bool is_pci(Tk t) { return t == Tk::Pci || t == Tk::PciNb; }
inline bool is_nb(Tk t) { return t == Tk::MmioNb || t == Tk::PciNb; }

/// One simulated host: the simulator, two I/O threads, the guest manager.
class Host {
public:
    Host(const std::string& config_text, xen::sim::SimOptions opts = {});
    ~Host();

    /// Starts the manager and the I/O threads.
    Result<daemon::Verdicts> start();
    /// Stops the manager (every session) and the threads.
    void shutdown();
    /// Runs `f` on the io_context and waits for it.
    void on_io(std::function<void()> f);
    /// Creates the simulated guest `name`.
    Result<xen::DomId> create_guest(const std::string& name, std::uint64_t pages = 16384);
    /// Announces virtio-mmio device `devid` of `fe` as libxl does.
    Result<void> announce_mmio(xen::DomId fe, unsigned devid, const char* type = "virtio,device2");

    /// Waits (bounded) until `pred` holds.
    static bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds limit = 5000ms);

    std::shared_ptr<xen::sim::SimHypervisor> sim;
    daemon::Config config;
    boost::asio::io_context io;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard{io.get_executor()};
    std::vector<std::thread> threads;
    std::shared_ptr<daemon::GuestManager> manager;
};

/// "/local/domain/0/backend/virtio/<fe>/<devid>".
std::string be_path(xen::DomId fe, unsigned devid);

// --- a guest-side blk driver -------------------------------------------------------

/// A blk frontend over one GuestTransport: one queue, requests one at a
/// time through buffers allocated once (guest RAM in the sim is never freed).
class BlkGuest {
public:
    static constexpr std::uint32_t kMaxData = 64 * 1024;

    /// Probes the device (mmio at kBase, or pci slot 0) on `vcpu`.
    static Result<std::unique_ptr<BlkGuest>> attach(std::shared_ptr<xen::sim::SimGuest> g, Tk tk, unsigned vcpu = 0);

    /// Creates a queue driver with `o` (not yet programmed into the device).
    Result<void> make_queue(guest::DriverOptions o);
    /// bring_up(): reset, features, the queue, DRIVER_OK.
    Result<std::uint64_t> up(guest::DriverOptions o = {}, std::uint64_t features = default_features());
    static std::uint64_t default_features();

    /// Makes a request available, kicks, and waits for its used entry.
    /// Returns the status byte (or an error when nothing came back).
    Result<std::uint8_t> write(std::uint64_t sector, std::span<const std::byte> data,
                               std::chrono::milliseconds limit = 5000ms);
    Result<std::uint8_t> read(std::uint64_t sector, std::span<std::byte> out, std::chrono::milliseconds limit = 5000ms);
    Result<std::uint8_t> flush(std::chrono::milliseconds limit = 5000ms);
    /// Waits for the next used entry (bounded).
    std::optional<guest::UsedElem> wait_used(std::chrono::milliseconds limit = 5000ms);

    /// Device status as the driver reads it.
    std::uint8_t status();
    bool needs_reset() { return status() & transport::status::kNeedsReset; }
    /// Waits (bounded) until DEVICE_NEEDS_RESET reads back set.
    bool wait_needs_reset(std::chrono::milliseconds limit = 5000ms);

    xen::sim::SimGuest& sim() { return *g_; }
    std::shared_ptr<xen::sim::SimGuest> sim_ptr() { return g_; }
    guest::GuestTransport& t() { return *t_; }
    guest::VirtqueueDriver& q() { return *q_; }
    xen::DomId domid() const { return g_->domid(); }
    Tk kind() const { return tk_; }

    /// Pre-granted buffers (header RO, data RO and RW, status RW).
    guest::GuestBuf hdr, data_ro, data_rw, status_buf;

private:
    BlkGuest() = default;
    Result<std::uint8_t> run(std::uint32_t type, std::uint64_t sector, std::uint32_t len, bool to_device,
                             std::chrono::milliseconds limit);
    std::shared_ptr<xen::sim::SimGuest> g_;
    std::unique_ptr<guest::GuestTransport> t_;
    std::unique_ptr<guest::VirtqueueDriver> q_;
    Tk tk_ = Tk::Mmio;
};

/// A deterministic 4 KiB pattern for write number `n`.
std::vector<std::byte> pattern(std::uint64_t n, std::size_t len = 4096);

// --- the honest guest ------------------------------------------------------------

/// Writes, reads back and verifies, in a loop on its own thread, until
/// stopped; remembers every acknowledged write to verify them all at the end.
class HonestWriter {
public:
    explicit HonestWriter(BlkGuest& b, std::uint64_t first_sector = 0, unsigned slots = 32)
        : b_(b), first_(first_sector), slots_(slots) {}
    ~HonestWriter() { stop(); }
    void start();
    void stop();
    /// Completed write+read+verify rounds.
    std::uint64_t rounds() const { return rounds_.load(); }
    /// Waits until `n` more rounds completed (bounded): proof it still works.
    bool progresses(std::uint64_t n = 3, std::chrono::milliseconds limit = 10000ms);
    /// Problems seen (empty when all went well).
    std::vector<std::string> errors();
    /// Reads back every acknowledged write through the guest and from the
    /// image file; returns the mismatches.
    std::vector<std::string> verify_all(const fs::path& image);

private:
    BlkGuest& b_;
    std::uint64_t first_;
    unsigned slots_;
    std::thread th_;
    std::atomic<bool> stop_{false};
    std::atomic<std::uint64_t> rounds_{0};
    std::mutex mu_;
    std::vector<std::string> errors_;
    std::map<std::uint64_t, std::uint64_t> acked_;  ///< sector -> write number
};

// --- the fixture ---------------------------------------------------------------

/// The configuration: dom0 safe, two UnsafeVM guests "honest" and "evil",
/// one blk each; the evil one's on `tk`. `extra` is appended; when it
/// starts with "[[device]]" it replaces the hostile guest's blk.
std::string two_guest_config(const fs::path& honest_img, const fs::path& evil_img, Tk tk, const std::string& extra = {});

/// Honest guest (mmio blk, writing all along) + hostile guest (blk on the
/// transport of the test parameter), one supervisor.
class HostileFixture : public ::testing::Test {
protected:
    /// Builds and starts everything; `tk` is the hostile guest's transport.
    /// `before_start` runs once both guests are announced, before the
    /// manager starts (to tamper with xenstore); `attach_evil` false leaves
    /// the hostile guest's driver unattached (its device may not exist).
    void start_host(Tk tk, xen::sim::SimOptions opts = {}, std::function<void()> before_start = {},
                    bool attach_evil = true);
    void TearDown() override;

    /// The hostile guest's blk driver (attached, not brought up).
    BlkGuest& evil() { return *evil_; }
    /// Asserts the honest guest still makes progress right now.
    void expect_honest_progress();
    /// "dom<evil> blk0": what every log line about the hostile device names.
    std::string evil_label() const { return "dom" + std::to_string(evil_dom_) + " blk0"; }
    std::string evil_queue() const { return evil_label() + " q0"; }

    std::unique_ptr<TempImage> honest_img_, evil_img_;
    /// When set, the hostile guest's disk is this file instead of evil_img_.
    fs::path evil_path_override_;
    /// When set, the hostile guest's [[device]] entry (instead of a blk),
    /// announced as `evil_compatible_`; its driver is then not attached.
    std::string evil_device_;
    std::string evil_compatible_ = "virtio,device2";
    std::unique_ptr<Host> host_;
    xen::DomId honest_dom_ = 0, evil_dom_ = 0;
    std::unique_ptr<BlkGuest> honest_;
    std::unique_ptr<BlkGuest> evil_;
    std::unique_ptr<HonestWriter> writer_;
    bool check_leaks_ = true;
};

/// The same fixture, parameterised by the hostile guest's transport.
class HostileByTransport : public HostileFixture, public ::testing::WithParamInterface<Tk> {
protected:
    void SetUp() override { start_host(GetParam()); }
};

/// For INSTANTIATE_TEST_SUITE_P names.
std::string tk_param_name(const ::testing::TestParamInfo<Tk>& i);

}  // namespace xv::hostile
