// SPDX-License-Identifier: GPL-2.0-only
#include "hostile_harness.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>

namespace xv::hostile {

namespace feat = transport::feature;

// --- log capture -----------------------------------------------------------------

void CaptureSink::sink_it_(const spdlog::details::log_msg& msg) {
    lines_.emplace_back(msg.payload.data(), msg.payload.size());
    if (lines_.size() > 200000) lines_.erase(lines_.begin(), lines_.begin() + 100000);
}

std::size_t CaptureSink::count(std::initializer_list<std::string_view> parts) {
    std::lock_guard lk(mutex_);
    std::size_t n = 0;
    for (const auto& l : lines_) {
        bool all = true;
        for (auto p : parts) all = all && l.find(p) != std::string::npos;
        n += all;
    }
    return n;
}

bool CaptureSink::wait_for(std::initializer_list<std::string_view> parts, std::chrono::milliseconds limit) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
        if (count(parts)) return true;
        std::this_thread::sleep_for(2ms);
    }
    return count(parts) > 0;
}

void CaptureSink::clear() {
    std::lock_guard lk(mutex_);
    lines_.clear();
}

std::vector<std::string> CaptureSink::lines() {
    std::lock_guard lk(mutex_);
    return lines_;
}

CaptureSink& log_sink() {
    static std::shared_ptr<CaptureSink> sink = [] {
        auto s = std::make_shared<CaptureSink>();
        spdlog::default_logger()->sinks().push_back(s);
        // Guest-triggered lines are warnings; keep the console quiet unless asked.
        if (!std::getenv("XV_TEST_VERBOSE"))
            for (auto& other : spdlog::default_logger()->sinks())
                if (other != s) other->set_level(spdlog::level::err);
        return s;
    }();
    return *sink;
}

std::string dump_lines(std::string_view part) {
    std::string out;
    for (const auto& l : log_sink().lines())
        if (l.find(part) != std::string::npos) out += "  | " + l + "\n";
    return out.empty() ? "  (no log line mentions " + std::string(part) + ")\n" : out;
}

// --- images ------------------------------------------------------------------------

TempImage::TempImage(std::uint64_t bytes, fs::path dir) {
    static std::atomic<int> counter{0};
    path = dir / fmt::format("xv-hostile-{}-{}.img", ::getpid(), counter++);
    std::ofstream(path).close();
    fs::resize_file(path, bytes);
}

TempImage::~TempImage() {
    std::error_code ec;
    fs::remove(path, ec);
}

std::vector<std::byte> TempImage::read(std::uint64_t offset, std::size_t len) const {
    std::vector<std::byte> out(len);
    std::ifstream f(path, std::ios::binary);
    f.seekg(std::streamoff(offset));
    f.read(reinterpret_cast<char*>(out.data()), std::streamsize(len));
    return out;
}

// --- host ----------------------------------------------------------------------------

const char* tk_name(Tk t) {
    switch (t) {
        case Tk::Mmio: return "Mmio";
        case Tk::MmioNb: return "MmioNb";
        case Tk::Pci: return "Pci";
        case Tk::PciNb: return "PciNb";
    }
    return "?";
}

std::string tk_param_name(const ::testing::TestParamInfo<Tk>& i) { return tk_name(i.param); }

Host::Host(const std::string& config_text, xen::sim::SimOptions opts) {
    (void)log_sink();
    sim = xen::sim::SimHypervisor::create(opts);
    auto c = daemon::parse_config(config_text, "<hostile>");
    EXPECT_TRUE(c.has_value()) << (c ? "" : c.error().describe());
    if (c) config = std::move(c).value();
}

Host::~Host() { shutdown(); }

Result<daemon::Verdicts> Host::start() {
    daemon::ManagerOptions mo;
    manager = daemon::GuestManager::create(config, *sim, io.get_executor(), mo);
    auto v = manager->start();
    for (int i = 0; i < 2; ++i) threads.emplace_back([this] { io.run(); });
    return v;
}

void Host::on_io(std::function<void()> f) {
    std::promise<void> done;
    boost::asio::post(io, [&] {
        f();
        done.set_value();
    });
    done.get_future().wait();
}

void Host::shutdown() {
    if (manager) {
        std::promise<void> done;
        manager->stop([&done] { done.set_value(); });
        EXPECT_EQ(done.get_future().wait_for(20s), std::future_status::ready) << "the manager did not stop";
        manager.reset();
    }
    guard.reset();
    io.stop();
    for (auto& t : threads) t.join();
    threads.clear();
}

Result<xen::DomId> Host::create_guest(const std::string& name, std::uint64_t pages) {
    xen::sim::DomainConfig dc;
    dc.name = name;
    dc.memory_pages = pages;
    return sim->create_domain(dc);
}

Result<void> Host::announce_mmio(xen::DomId fe, unsigned devid, const char* type) {
    xen::sim::VirtioDeviceSpec s;
    s.frontend = fe;
    s.backend = 0;
    s.devid = devid;
    s.type = type;
    s.base = kBase + 0x200 * devid;
    s.irq = kSpi + devid;
    s.grant_usage = true;
    return sim->add_virtio_device(s);
}

bool Host::eventually(const std::function<bool()>& pred, std::chrono::milliseconds limit) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
        if (pred()) return true;
        std::this_thread::sleep_for(5ms);
    }
    return pred();
}

std::string be_path(xen::DomId fe, unsigned devid) {
    return "/local/domain/0/backend/virtio/" + std::to_string(fe) + "/" + std::to_string(devid);
}

// --- BlkGuest ----------------------------------------------------------------------

std::uint64_t BlkGuest::default_features() {
    return feat::bit(feat::kVersion1) | feat::bit(feat::kAccessPlatform) | feat::bit(feat::kIndirectDesc) |
           feat::bit(feat::kRingPacked) | feat::bit(feat::kEventIdx) | (1ULL << devices::blk::feature::kFlush);
}

Result<std::unique_ptr<BlkGuest>> BlkGuest::attach(std::shared_ptr<xen::sim::SimGuest> g, Tk tk, unsigned vcpu) {
    std::unique_ptr<BlkGuest> b(new BlkGuest());
    b->g_ = std::move(g);
    b->tk_ = tk;
    if (is_pci(tk)) {
        auto t = guest::make_pci_guest(*b->g_, transport::PciHostConfig{}, 0, is_nb(tk), vcpu);
        if (!t) return std::move(t).error();
        b->t_ = std::move(t).value();
    } else {
        auto t = guest::make_mmio_guest(*b->g_, kBase, is_nb(tk), vcpu);
        if (!t) return std::move(t).error();
        b->t_ = std::move(t).value();
    }
    auto alloc = [&](std::uint32_t len, bool ro) -> Result<guest::GuestBuf> {
        auto a = b->g_->alloc_dma(len, 0, ro);
        if (!a) return std::move(a).error();
        return guest::GuestBuf{*a, len, ro, b->g_->dma_ptr(*a)};
    };
    auto h = alloc(16, true);
    auto dro = alloc(kMaxData, true);
    auto drw = alloc(kMaxData, false);
    auto st = alloc(1, false);
    if (!h || !dro || !drw || !st) return make_error(std::errc::not_enough_memory, "cannot allocate guest buffers");
    b->hdr = *h;
    b->data_ro = *dro;
    b->data_rw = *drw;
    b->status_buf = *st;
    return b;
}

Result<void> BlkGuest::make_queue(guest::DriverOptions o) {
    auto q = guest::VirtqueueDriver::create(*g_, o);
    if (!q) return std::move(q).error();
    q_ = std::move(q).value();
    return ok();
}

Result<std::uint64_t> BlkGuest::up(guest::DriverOptions o, std::uint64_t features) {
    if (!o.packed) features &= ~feat::bit(feat::kRingPacked);
    if (!o.indirect) features &= ~feat::bit(feat::kIndirectDesc);
    if (!o.event_idx) features &= ~feat::bit(feat::kEventIdx);
    XV_TRY(make_queue(o));
    return t_->bring_up(features, {q_.get()});
}

std::optional<guest::UsedElem> BlkGuest::wait_used(std::chrono::milliseconds limit) {
    auto end = std::chrono::steady_clock::now() + limit;
    std::uint64_t seen = g_->irq_count(kSpi);
    for (;;) {
        if (auto u = q_->next_used()) return u;
        if (std::chrono::steady_clock::now() > end) return std::nullopt;
        if (is_pci(tk_)) std::this_thread::sleep_for(100us);
        else seen = g_->wait_irq(kSpi, seen, 1ms);
    }
}

Result<std::uint8_t> BlkGuest::run(std::uint32_t type, std::uint64_t sector, std::uint32_t len, bool to_device,
                                   std::chrono::milliseconds limit) {
    devices::blk::OutHdr h{type, 0, sector};
    std::memcpy(hdr.ptr, &h, sizeof h);
    *status_buf.ptr = std::byte{0xee};
    auto c = q_->chain();
    c.add(hdr, false);
    if (len) {
        guest::GuestBuf d = to_device ? data_ro : data_rw;
        d.len = len;
        c.add(d, !to_device);
    }
    c.add(status_buf, true);
    auto s = c.submit();
    if (!s) return std::move(s).error();
    XV_TRY(t_->notify(0));
    auto u = wait_used(limit);
    if (!u) return make_error(std::errc::timed_out, "no used entry for the request");
    if (u->id != s->id) return make_error(std::errc::protocol_error, fmt::format("used id {} for head {}", u->id, s->id));
    return std::uint8_t(*status_buf.ptr);
}

Result<std::uint8_t> BlkGuest::write(std::uint64_t sector, std::span<const std::byte> data,
                                     std::chrono::milliseconds limit) {
    if (data.size() > kMaxData) return make_error(std::errc::invalid_argument, "too much data");
    std::memcpy(data_ro.ptr, data.data(), data.size());
    return run(devices::blk::req::kOut, sector, std::uint32_t(data.size()), true, limit);
}

Result<std::uint8_t> BlkGuest::read(std::uint64_t sector, std::span<std::byte> out, std::chrono::milliseconds limit) {
    if (out.size() > kMaxData) return make_error(std::errc::invalid_argument, "too much data");
    std::memset(data_rw.ptr, 0, out.size());
    auto r = run(devices::blk::req::kIn, sector, std::uint32_t(out.size()), false, limit);
    if (r) std::memcpy(out.data(), data_rw.ptr, out.size());
    return r;
}

Result<std::uint8_t> BlkGuest::flush(std::chrono::milliseconds limit) {
    return run(devices::blk::req::kFlush, 0, 0, false, limit);
}

std::uint8_t BlkGuest::status() {
    auto s = t_->status();
    return s ? *s : 0xff;
}

bool BlkGuest::wait_needs_reset(std::chrono::milliseconds limit) {
    return Host::eventually([&] { auto s = t_->status(); return s && (*s & transport::status::kNeedsReset); }, limit);
}

std::vector<std::byte> pattern(std::uint64_t n, std::size_t len) {
    std::vector<std::byte> v(len);
    std::uint64_t x = n * 0x9e3779b97f4a7c15ULL + 1;
    for (std::size_t i = 0; i < len; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v[i] = std::byte(x);
    }
    return v;
}

// --- HonestWriter ---------------------------------------------------------------------

void HonestWriter::start() {
    stop_ = false;
    th_ = std::thread([this] {
        std::uint64_t n = 1;
        std::vector<std::byte> back(4096);
        while (!stop_) {
            const std::uint64_t sector = first_ + (n % slots_) * 8;
            auto data = pattern(n);
            auto w = b_.write(sector, data);
            if (!w || *w != devices::blk::kStatusOk) {
                std::lock_guard lk(mu_);
                errors_.push_back(fmt::format("write {} at sector {}: {}", n, sector,
                                              w ? fmt::format("status {}", *w) : w.error().describe()));
                if (!w) return;  // the guest is stuck: stop here and report it
                ++n;
                continue;
            }
            {
                std::lock_guard lk(mu_);
                acked_[sector] = n;
            }
            auto r = b_.read(sector, back);
            if (!r || *r != devices::blk::kStatusOk || back != data) {
                std::lock_guard lk(mu_);
                errors_.push_back(fmt::format("read back {} at sector {}: {}", n, sector,
                                              !r ? r.error().describe()
                                              : *r ? fmt::format("status {}", *r)
                                                   : std::string("data differs")));
                if (!r) return;
            }
            ++n;
            ++rounds_;
        }
    });
}

void HonestWriter::stop() {
    stop_ = true;
    if (th_.joinable()) th_.join();
}

bool HonestWriter::progresses(std::uint64_t n, std::chrono::milliseconds limit) {
    const std::uint64_t at = rounds_.load();
    return Host::eventually([&] { return rounds_.load() >= at + n; }, limit);
}

std::vector<std::string> HonestWriter::errors() {
    std::lock_guard lk(mu_);
    return errors_;
}

std::vector<std::string> HonestWriter::verify_all(const fs::path& image) {
    std::vector<std::string> bad;
    std::map<std::uint64_t, std::uint64_t> acked;
    {
        std::lock_guard lk(mu_);
        acked = acked_;
    }
    std::vector<std::byte> back(4096);
    for (auto [sector, n] : acked) {
        auto want = pattern(n);
        auto r = b_.read(sector, back);
        if (!r || *r != 0 || back != want) bad.push_back(fmt::format("sector {} (write {}) through the guest", sector, n));
        std::vector<std::byte> file(4096);
        std::ifstream f(image, std::ios::binary);
        f.seekg(std::streamoff(sector * 512));
        f.read(reinterpret_cast<char*>(file.data()), 4096);
        if (file != want) bad.push_back(fmt::format("sector {} (write {}) in the image file", sector, n));
    }
    if (acked.empty()) bad.push_back("no write was acknowledged at all");
    return bad;
}

// --- fixture ---------------------------------------------------------------------------

std::string two_guest_config(const fs::path& honest_img, const fs::path& evil_img, Tk tk, const std::string& extra) {
    return fmt::format(R"(
[[domain]]
id = 0
roles = ["hardware", "control"]
class = "safe"

[[domain]]
name = "honest"
roles = ["domu"]
class = "unsafe"

[[domain]]
name = "evil"
roles = ["domu"]
class = "unsafe"

[[device]]
guest = "honest"
type = "blk"
path = "{}"

{}
{})",
                       honest_img.string(),
                       extra.rfind("[[device]]", 0) == 0
                           ? std::string()
                           : fmt::format("[[device]]\nguest = \"evil\"\ntype = \"blk\"\ntransport = \"{}\"\n"
                                         "nonblocking = {}\npath = \"{}\"\n",
                                         is_pci(tk) ? "pci" : "mmio", is_nb(tk) ? "true" : "false", evil_img.string()),
                       extra);
}

void HostileFixture::start_host(Tk tk, xen::sim::SimOptions opts, std::function<void()> before_start,
                                bool attach_evil) {
    log_sink().clear();
    honest_img_ = std::make_unique<TempImage>(4 << 20);
    evil_img_ = std::make_unique<TempImage>(4 << 20);
    const fs::path evil_path = evil_path_override_.empty() ? evil_img_->path : evil_path_override_;
    host_ = std::make_unique<Host>(two_guest_config(honest_img_->path, evil_path, tk, evil_device_), opts);
    auto h = host_->create_guest("honest");
    ASSERT_TRUE(h.has_value());
    honest_dom_ = *h;
    auto e = host_->create_guest("evil");
    ASSERT_TRUE(e.has_value());
    evil_dom_ = *e;
    ASSERT_TRUE(host_->announce_mmio(honest_dom_, 0).has_value());
    if (!is_pci(tk)) {
        ASSERT_TRUE(host_->announce_mmio(evil_dom_, 0, evil_compatible_.c_str()).has_value());
    }
    if (before_start) before_start();
    auto v = host_->start();
    ASSERT_TRUE(v.has_value()) << v.error().describe();
    ASSERT_FALSE(v.value().refuses_start());
    if (attach_evil) {
        ASSERT_EQ(host_->manager->sessions().size(), 2u);
    }

    auto hb = BlkGuest::attach(host_->sim->guest(honest_dom_), Tk::Mmio, 0);
    ASSERT_TRUE(hb.has_value()) << hb.error().describe();
    honest_ = std::move(hb).value();
    auto up = honest_->up();
    ASSERT_TRUE(up.has_value()) << up.error().describe();
    writer_ = std::make_unique<HonestWriter>(*honest_, 0, 8);
    writer_->start();
    ASSERT_TRUE(writer_->progresses(1)) << "the honest guest does not work even before the attack";
    if (!attach_evil || !evil_device_.empty()) return;

    auto eb = BlkGuest::attach(host_->sim->guest(evil_dom_), tk, 0);
    ASSERT_TRUE(eb.has_value()) << eb.error().describe();
    evil_ = std::move(eb).value();
}

void HostileFixture::expect_honest_progress() {
    ASSERT_TRUE(writer_);
    EXPECT_TRUE(writer_->progresses(2)) << "the honest guest stopped making progress during the attack";
}

void HostileFixture::TearDown() {
    if (writer_) {
        EXPECT_TRUE(writer_->progresses(1)) << "the honest guest stopped making progress after the attack";
        writer_->stop();
        for (const auto& e : writer_->errors()) ADD_FAILURE() << "honest guest: " << e;
        for (const auto& e : writer_->verify_all(honest_img_->path)) ADD_FAILURE() << "honest guest lost data: " << e;
    }
    if (host_) {
        host_->shutdown();
        if (check_leaks_) {
            auto r = host_->sim->resources();
            EXPECT_EQ(r.ioreq_servers, 0u);
            EXPECT_EQ(r.bound_ports, 0u);
            EXPECT_EQ(r.mapped_grant_pages, 0u) << "grant maps leaked";
        }
    }
    writer_.reset();
    evil_.reset();
    honest_.reset();
    host_.reset();
}

}  // namespace xv::hostile
