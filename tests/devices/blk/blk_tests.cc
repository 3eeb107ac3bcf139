// SPDX-License-Identifier: GPL-2.0-only
// virtio-blk driven from the guest side through xen/sim: requests are
// built in simulated guest RAM, granted as Linux does, kicked on the
// queue's strand; the used ring, status bytes, data and the backing file
// are checked.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include "blk_test_util.h"

namespace xv::devices::blktest {
namespace {

using transport::feature::bit;
constexpr std::uint64_t MiB = 1 << 20;

class Blk : public BlkFixture {};

std::uint64_t cfg_u64(BlkDevice& d, std::uint32_t off, std::size_t n) {
    std::uint64_t v = 0;
    std::vector<std::byte> b(n);
    d.read_config(off, b);
    std::memcpy(&v, b.data(), n);
    return v;
}

// --- features and config space (virtio 1.2 §5.2.3, §5.2.4) -----------------

TEST_F(Blk, FeaturesAndConfigSpaceDescribeTheBacking) {
    TempFile f(4 * MiB + 300);  // a partial last sector is not usable
    ASSERT_TRUE(f.ok());
    BlkConfig cfg;
    cfg.queues = 2;
    start(f, cfg);
    const auto feat = dev_->device_features();
    namespace fb = blk::feature;
    EXPECT_TRUE(feat & bit(fb::kFlush));
    EXPECT_TRUE(feat & bit(fb::kConfigWce));
    EXPECT_TRUE(feat & bit(fb::kMq));
    EXPECT_TRUE(feat & bit(fb::kDiscard));
    EXPECT_TRUE(feat & bit(fb::kWriteZeroes));
    EXPECT_TRUE(feat & bit(fb::kSegMax));
    EXPECT_TRUE(feat & bit(fb::kBlkSize));
    EXPECT_FALSE(feat & bit(fb::kRo));
    EXPECT_EQ(dev_->num_queues(), 2);
    EXPECT_EQ(dev_->config_size(), blk::cfg::kSize);
    EXPECT_EQ(cfg_u64(*dev_, blk::cfg::kCapacity, 8), 4 * MiB / 512);
    EXPECT_EQ(dev_->capacity_sectors(), 4 * MiB / 512);
    EXPECT_EQ(cfg_u64(*dev_, blk::cfg::kBlkSize, 4), 512u);
    EXPECT_EQ(cfg_u64(*dev_, blk::cfg::kNumQueues, 2), 2u);
    EXPECT_EQ(cfg_u64(*dev_, blk::cfg::kSegMax, 4), 254u);
    EXPECT_GT(cfg_u64(*dev_, blk::cfg::kMaxDiscardSectors, 4), 0u);
    EXPECT_GT(cfg_u64(*dev_, blk::cfg::kMaxDiscardSeg, 4), 0u);
    EXPECT_EQ(cfg_u64(*dev_, blk::cfg::kWriteZeroesMayUnmap, 1), 1u);
    // writeback: writable with CONFIG_WCE, only 0 or 1.
    EXPECT_EQ(cfg_u64(*dev_, blk::cfg::kWriteback, 1), 1u);
    std::byte zero{0}, junk{7};
    dev_->write_config(blk::cfg::kWriteback, std::span(&zero, 1));
    EXPECT_EQ(cfg_u64(*dev_, blk::cfg::kWriteback, 1), 0u);
    dev_->write_config(blk::cfg::kWriteback, std::span(&junk, 1));
    EXPECT_EQ(cfg_u64(*dev_, blk::cfg::kWriteback, 1), 0u);
    // Read-only fields ignore writes.
    std::array<std::byte, 8> ones;
    ones.fill(std::byte{0xff});
    dev_->write_config(blk::cfg::kCapacity, ones);
    EXPECT_EQ(cfg_u64(*dev_, blk::cfg::kCapacity, 8), 4 * MiB / 512);
    // A read straddling writeback sees the live value.
    EXPECT_EQ(cfg_u64(*dev_, 30, 4) >> 16 & 0xff, 0u);
}

TEST_F(Blk, ReadOnlyDiskOffersRoAndNoDiscard) {
    TempFile f(1 * MiB);
    BlkConfig cfg;
    cfg.readonly = true;
    start(f, cfg);
    const auto feat = dev_->device_features();
    EXPECT_TRUE(feat & bit(blk::feature::kRo));
    EXPECT_FALSE(feat & bit(blk::feature::kDiscard));
    EXPECT_FALSE(feat & bit(blk::feature::kWriteZeroes));
    EXPECT_FALSE(feat & bit(blk::feature::kMq));
}

TEST(BlkMake, RefusesMissingPathAndBadQueueCount) {
    boost::asio::io_context io;
    BlkConfig cfg;
    cfg.path = "/nonexistent/xv-blk.img";
    auto r = make_blk(cfg, {1, "blk0"}, io.get_executor());
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("/nonexistent/xv-blk.img"), std::string::npos);
    EXPECT_NE(r.error().message.find("dom1 blk0"), std::string::npos);
    TempFile f(64 * 1024);
    cfg.path = f.path();
    cfg.queues = 0;
    EXPECT_FALSE(make_blk(cfg, {1, "blk0"}, io.get_executor()));
    cfg.path = "/dev/null";  // a character device is not a disk
    cfg.queues = 1;
    EXPECT_FALSE(make_blk(cfg, {1, "blk0"}, io.get_executor()));
}

// --- IN / OUT ---------------------------------------------------------------

TEST_F(Blk, WriteThenReadBackMatchesTheFile) {
    TempFile f(4 * MiB);
    start(f);
    const auto data = pattern(8192, 1);
    auto w = write_req(16, data);
    EXPECT_EQ(roundtrip(w), 1u);  // virtio 1.2 §5.2.6: only the status byte written
    EXPECT_EQ(status_of(w), blk::kStatusOk);
    EXPECT_EQ(f.read(16 * 512, data.size()), data);

    auto r = read_req(16, 8192);
    EXPECT_EQ(roundtrip(r), 8192u + 1);
    EXPECT_EQ(status_of(r), blk::kStatusOk);
    auto got = r.buf(1).bytes();
    EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin()));
    EXPECT_EQ(dev_->stats().bytes_written, 8192u);
    EXPECT_EQ(dev_->stats().bytes_read, 8192u);
    EXPECT_EQ(dev_->in_flight(), 0u);
}

TEST_F(Blk, ScatteredUnalignedBuffersGoThroughThePageCache) {
    TempFile f(1 * MiB);
    start(f);
    // Three data buffers, the first at an odd offset in its page: not
    // O_DIRECT-able, served buffered, data still exact.
    auto s = drv().chain()
                 .readable(header(blk::req::kIn, 3))
                 .at_offset(100)
                 .writable(512)
                 .writable(4096)
                 .writable(1536)
                 .writable(1)
                 .submit();
    ASSERT_TRUE(s);
    EXPECT_EQ(roundtrip(*s), 512u + 4096 + 1536 + 1);
    EXPECT_EQ(status_of(*s), blk::kStatusOk);
    auto want = f.read(3 * 512, 512 + 4096 + 1536);
    std::vector<std::byte> got;
    for (int i = 1; i <= 3; ++i) {
        auto b = s->buf(i).bytes();
        got.insert(got.end(), b.begin(), b.end());
    }
    EXPECT_EQ(got, want);
    EXPECT_GE(dev_->stats().buffered_ios, 1u);
}

TEST_F(Blk, AlignedRequestsUseODirect) {
    TempFile f(1 * MiB);
    start(f);
    auto r = read_req(8, 4096);
    EXPECT_EQ(roundtrip(r), 4097u);
    EXPECT_EQ(status_of(r), blk::kStatusOk);
    auto got = r.buf(1).bytes();
    auto want = f.read(8 * 512, 4096);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin()));
    EXPECT_EQ(dev_->stats().direct_ios, 1u);
}

TEST_F(Blk, HeaderDataAndStatusMayShareBuffers) {
    // Any layout (virtio 1.2 §2.6.4): header and data in one readable buffer.
    TempFile f(1 * MiB);
    start(f);
    auto hdr = header(blk::req::kOut, 5);
    auto data = pattern(1024, 9);
    hdr.insert(hdr.end(), data.begin(), data.end());
    auto s = drv().chain().readable(hdr).writable(1).submit();
    ASSERT_TRUE(s);
    EXPECT_EQ(roundtrip(*s), 1u);
    EXPECT_EQ(status_of(*s), blk::kStatusOk);
    EXPECT_EQ(f.read(5 * 512, 1024), data);
}

// --- FLUSH (virtio 1.2 §5.2.6.2) ---------------------------------------------

TEST_F(Blk, FlushCompletesAfterTheWritesBeforeIt) {
    TempFile f(4 * MiB);
    start(f);
    std::vector<Submitted> writes;
    for (int i = 0; i < 8; ++i) writes.push_back(write_req(std::uint64_t(i) * 256, pattern(64 * 1024, i)));
    auto fl = bare_req(blk::req::kFlush);
    auto used = wait_used(0);
    kick();
    used = wait_used(9);
    ASSERT_EQ(used.size(), 9u);
    // The flush is used last: every earlier write completed before it.
    EXPECT_EQ(used.back().id, fl.id);
    EXPECT_EQ(status_of(fl), blk::kStatusOk);
    for (auto& w : writes) EXPECT_EQ(status_of(w), blk::kStatusOk);
    for (int i = 0; i < 8; ++i) EXPECT_EQ(f.read(std::uint64_t(i) * 256 * 512, 64 * 1024), pattern(64 * 1024, i));
    EXPECT_EQ(dev_->stats().flushes, 1u);
}

TEST_F(Blk, ARequestBehindAWaitingFlushIsNotHeldUp) {
    TempFile f(8 * MiB);
    start(f);
    auto w = write_req(0, pattern(1 * MiB, 3));  // O_DIRECT: goes to the disk
    auto fl = bare_req(blk::req::kFlush);         // waits for w, then fsyncs
    // An unaligned read: page cache, completes at once.
    auto r = drv().chain().readable(header(blk::req::kIn, 4096)).at_offset(8).writable(512).writable(1).submit();
    ASSERT_TRUE(r);
    kick();
    auto used = wait_used(3);
    ASSERT_EQ(used.size(), 3u);
    auto pos = [&](std::uint16_t id) {
        return std::find_if(used.begin(), used.end(), [&](auto& u) { return u.id == id; }) - used.begin();
    };
    EXPECT_LT(pos(w.id), pos(fl.id));
    EXPECT_LT(pos(r->id), pos(fl.id));  // completed out of submission order
    EXPECT_EQ(status_of(*r), blk::kStatusOk);
    EXPECT_EQ(status_of(fl), blk::kStatusOk);
}

TEST_F(Blk, FlushOnAReadOnlyDiskSucceeds) {
    TempFile f(1 * MiB);
    BlkConfig cfg;
    cfg.readonly = true;
    start(f, cfg);
    auto fl = bare_req(blk::req::kFlush);
    EXPECT_EQ(roundtrip(fl), 1u);
    EXPECT_EQ(status_of(fl), blk::kStatusOk);
}

// --- GET_ID ------------------------------------------------------------------

TEST_F(Blk, GetIdReturnsTheSerialNulPadded) {
    TempFile f(1 * MiB);
    BlkConfig cfg;
    cfg.serial = "disk-7";
    start(f, cfg);
    auto s = drv().chain().readable(header(blk::req::kGetId, 0)).writable(20).writable(1).submit();
    ASSERT_TRUE(s);
    EXPECT_EQ(roundtrip(*s), 21u);
    EXPECT_EQ(status_of(*s), blk::kStatusOk);
    std::string id = s->buf(1).str();
    EXPECT_EQ(id, std::string("disk-7") + std::string(14, '\0'));
}

TEST_F(Blk, GetIdTruncatesToTwentyBytesWithoutNul) {
    TempFile f(1 * MiB);
    BlkConfig cfg;
    cfg.serial = "0123456789abcdefghijKLMN";
    start(f, cfg);
    auto s = drv().chain().readable(header(blk::req::kGetId, 0)).writable(20).writable(1).submit();
    ASSERT_TRUE(s);
    EXPECT_EQ(roundtrip(*s), 21u);
    EXPECT_EQ(s->buf(1).str(), "0123456789abcdefghij");
}

TEST_F(Blk, GetIdWithAShortBufferIsAnError) {
    TempFile f(1 * MiB);
    start(f);
    auto s = drv().chain().readable(header(blk::req::kGetId, 0)).writable(10).writable(1).submit();
    ASSERT_TRUE(s);
    EXPECT_EQ(roundtrip(*s), 1u);
    EXPECT_EQ(status_of(*s), blk::kStatusIoErr);
}

// --- DISCARD / WRITE_ZEROES (virtio 1.2 §5.2.6) -----------------------------

off_t next_hole(int fd, off_t from) { return ::lseek(fd, from, SEEK_HOLE); }

TEST_F(Blk, DiscardPunchesAHole) {
    TempFile f(4 * MiB);
    ::fsync(f.fd());
    start(f);
    const auto before = f.blocks();
    ASSERT_EQ(next_hole(f.fd(), 0), off_t(4 * MiB));  // fully allocated
    auto s = seg_req(blk::req::kDiscard, segments({{2048, 2048, 0}}));  // [1 MiB, 2 MiB)
    EXPECT_EQ(roundtrip(s), 1u);
    EXPECT_EQ(status_of(s), blk::kStatusOk);
    EXPECT_EQ(next_hole(f.fd(), 0), off_t(1 * MiB));
    EXPECT_LT(f.blocks(), before);
    EXPECT_EQ(f.read(1 * MiB, 4096), std::vector<std::byte>(4096));
    struct stat st {};
    ::fstat(f.fd(), &st);
    EXPECT_EQ(std::uint64_t(st.st_size), 4 * MiB);  // KEEP_SIZE
}

TEST_F(Blk, DiscardWithSeveralSegments) {
    TempFile f(4 * MiB);
    ::fsync(f.fd());
    start(f);
    auto s = seg_req(blk::req::kDiscard, segments({{0, 256, 0}, {4096, 512, 0}, {7000, 0, 0}}));
    EXPECT_EQ(roundtrip(s), 1u);
    EXPECT_EQ(status_of(s), blk::kStatusOk);
    EXPECT_EQ(next_hole(f.fd(), 0), 0);
    EXPECT_EQ(next_hole(f.fd(), 256 * 512), off_t(2 * MiB));
}

TEST_F(Blk, WriteZeroesZeroesAndUnmapPunches) {
    TempFile f(4 * MiB);
    ::fsync(f.fd());
    start(f);
    const auto before = f.blocks();
    // Without unmap: zeroes, allocation kept (ZERO_RANGE leaves the blocks).
    auto a = seg_req(blk::req::kWriteZeroes, segments({{100, 300, 0}}));
    EXPECT_EQ(roundtrip(a), 1u);
    EXPECT_EQ(status_of(a), blk::kStatusOk);
    EXPECT_EQ(f.read(100 * 512, 300 * 512), std::vector<std::byte>(300 * 512));
    EXPECT_NE(f.read(99 * 512, 512), std::vector<std::byte>(512));   // neighbours untouched
    EXPECT_NE(f.read(400 * 512, 512), std::vector<std::byte>(512));
    EXPECT_EQ(f.blocks(), before);
    // With unmap (and write_zeroes_may_unmap): deallocated, reads zero.
    auto b = seg_req(blk::req::kWriteZeroes, segments({{4096, 2048, blk::kFlagUnmap}}));
    EXPECT_EQ(roundtrip(b), 1u);
    EXPECT_EQ(status_of(b), blk::kStatusOk);
    EXPECT_EQ(next_hole(f.fd(), 1 * MiB), off_t(2 * MiB));
    EXPECT_LT(f.blocks(), before);
    EXPECT_EQ(f.read(2 * MiB, 8192), std::vector<std::byte>(8192));
}

TEST_F(Blk, DiscardFlagsAreChecked) {
    TempFile f(1 * MiB);
    start(f);
    // virtio 1.2 §5.2.6.2: UNSUPP for unmap on discard and for unknown flags.
    auto a = seg_req(blk::req::kDiscard, segments({{0, 8, blk::kFlagUnmap}}));
    EXPECT_EQ(roundtrip(a), 1u);
    EXPECT_EQ(status_of(a), blk::kStatusUnsupp);
    auto b = seg_req(blk::req::kWriteZeroes, segments({{0, 8, 0}, {8, 8, 4}}));
    EXPECT_EQ(roundtrip(b), 1u);
    EXPECT_EQ(status_of(b), blk::kStatusUnsupp);
    // UNSUPP for flags wins over a range error in another segment.
    auto c = seg_req(blk::req::kDiscard, segments({{~0ULL, 8, 0}, {0, 8, 2}}));
    EXPECT_EQ(roundtrip(c), 1u);
    EXPECT_EQ(status_of(c), blk::kStatusUnsupp);
}

TEST_F(Blk, DiscardSegmentsAreBounded) {
    TempFile f(1 * MiB);
    start(f);
    const auto max_seg = cfg_u64(*dev_, blk::cfg::kMaxDiscardSeg, 4);
    std::vector<std::byte> many((max_seg + 1) * sizeof(blk::DiscardSeg));
    for (std::size_t i = 0; i <= max_seg; ++i) {
        blk::DiscardSeg s{i, 1, 0};
        std::memcpy(many.data() + i * sizeof s, &s, sizeof s);
    }
    auto a = seg_req(blk::req::kDiscard, many);
    EXPECT_EQ(roundtrip(a), 1u);
    EXPECT_EQ(status_of(a), blk::kStatusIoErr);
    // Beyond capacity, and with sector + count overflowing 64 bits.
    auto b = seg_req(blk::req::kDiscard, segments({{2040, 16, 0}}));
    EXPECT_EQ(roundtrip(b), 1u);
    EXPECT_EQ(status_of(b), blk::kStatusIoErr);
    auto c = seg_req(blk::req::kWriteZeroes, segments({{~0ULL - 3, 8, 0}}));
    EXPECT_EQ(roundtrip(c), 1u);
    EXPECT_EQ(status_of(c), blk::kStatusIoErr);
    // Larger than max_discard_sectors.
    auto d = seg_req(blk::req::kDiscard, segments({{0, 0xffffffffu, 0}}));
    EXPECT_EQ(roundtrip(d), 1u);
    EXPECT_EQ(status_of(d), blk::kStatusIoErr);
    // A payload that is not whole segments.
    auto e = seg_req(blk::req::kDiscard, std::vector<std::byte>(24));
    EXPECT_EQ(roundtrip(e), 1u);
    EXPECT_EQ(status_of(e), blk::kStatusIoErr);
    EXPECT_EQ(dev_->stats().errors, 5u);
}

TEST_F(Blk, DiscardNotNegotiatedIsUnsupported) {
    TempFile f(1 * MiB);
    start_path(f.path(), {}, 64, {}, 8192,
               ~(bit(blk::feature::kDiscard) | bit(blk::feature::kWriteZeroes)));
    auto a = seg_req(blk::req::kDiscard, segments({{0, 8, 0}}));
    EXPECT_EQ(roundtrip(a), 1u);
    EXPECT_EQ(status_of(a), blk::kStatusUnsupp);
    auto b = seg_req(blk::req::kWriteZeroes, segments({{0, 8, 0}}));
    EXPECT_EQ(roundtrip(b), 1u);
    EXPECT_EQ(status_of(b), blk::kStatusUnsupp);
}

// --- read-only (virtio 1.2 §5.2.6.2) ----------------------------------------

TEST_F(Blk, ReadOnlyDiskRefusesWritesAndWritesNothing) {
    TempFile f(1 * MiB);
    const auto orig = f.read(0, 8192);
    BlkConfig cfg;
    cfg.readonly = true;
    start(f, cfg);
    auto w = write_req(0, pattern(8192, 5));
    EXPECT_EQ(roundtrip(w), 1u);
    EXPECT_EQ(status_of(w), blk::kStatusIoErr);
    EXPECT_EQ(f.read(0, 8192), orig);
    // Not offered, so UNSUPP (§5.2.6: unsupported by the device).
    auto d = seg_req(blk::req::kDiscard, segments({{0, 8, 0}}));
    EXPECT_EQ(roundtrip(d), 1u);
    EXPECT_EQ(status_of(d), blk::kStatusUnsupp);
    auto r = read_req(0, 8192);
    EXPECT_EQ(roundtrip(r), 8193u);
    EXPECT_EQ(status_of(r), blk::kStatusOk);
    auto got = r.buf(1).bytes();
    EXPECT_TRUE(std::equal(got.begin(), got.end(), orig.begin()));
}

// --- hostile requests --------------------------------------------------------

TEST_F(Blk, OutOfRangeSectorsAreIoErr) {
    TempFile f(1 * MiB);  // 2048 sectors
    start(f);
    auto a = read_req(2047, 1024);  // crosses the end
    EXPECT_EQ(roundtrip(a), 1u);
    EXPECT_EQ(status_of(a), blk::kStatusIoErr);
    auto b = read_req(~0ULL, 512);  // sector * 512 overflows
    EXPECT_EQ(roundtrip(b), 1u);
    EXPECT_EQ(status_of(b), blk::kStatusIoErr);
    auto c = write_req(~0ULL / 512 + 1, pattern(512, 1));
    EXPECT_EQ(roundtrip(c), 1u);
    EXPECT_EQ(status_of(c), blk::kStatusIoErr);
    auto d = read_req(2047, 512);  // the last sector is fine
    EXPECT_EQ(roundtrip(d), 513u);
    EXPECT_EQ(status_of(d), blk::kStatusOk);
    auto e = bare_req(blk::req::kIn, 2048);  // empty read at the end: nothing to do
    EXPECT_EQ(roundtrip(e), 1u);
    EXPECT_EQ(status_of(e), blk::kStatusOk);
}

// Every refused request is logged with domid, device, queue, sector and
// length, through a rate limit: a guest flooding bad requests cannot flood
// the log, and every request still gets its status.
TEST_F(Blk, BadRequestsAreLoggedWithContextAndRateLimited) {
    TempFile f(1 * MiB);  // 2048 sectors
    start(f);
    auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(1000);
    sink->set_pattern("%v");
    auto logger = spdlog::default_logger();
    logger->sinks().push_back(sink);
    struct Unhook {
        std::shared_ptr<spdlog::logger> l;
        ~Unhook() { l->sinks().pop_back(); }
    } unhook{logger};

    constexpr int kBad = 20;  // 3 descriptors each: fits the 64-entry ring
    std::vector<Submitted> reqs;
    for (int i = 0; i < kBad; ++i) reqs.push_back(read_req(2047, 1024));  // crosses the end
    kick();
    ASSERT_EQ(wait_used(kBad).size(), std::size_t(kBad));
    for (auto& r : reqs) EXPECT_EQ(status_of(r), blk::kStatusIoErr);

    const std::string ctx = "dom" + std::to_string(h_->domid) + " blk0 q0: IN sector 2047 len 1024: beyond the end";
    const auto lines = sink->last_formatted();
    const auto logged = std::count_if(lines.begin(), lines.end(),
                                      [&](const std::string& l) { return l.find(ctx) != std::string::npos; });
    EXPECT_GE(logged, 1) << "no log line with \"" << ctx << "\"";
    // log::RateLimit{5/s, burst 10} per queue: far fewer lines than requests.
    EXPECT_LE(logged, 12);
    EXPECT_EQ(dev_->stats().errors, std::uint64_t(kBad));
}

TEST_F(Blk, DataLengthMustBeSectorMultiple) {
    TempFile f(1 * MiB);
    const auto orig = f.read(0, 1024);
    start(f);
    auto a = read_req(0, 100);
    EXPECT_EQ(roundtrip(a), 1u);
    EXPECT_EQ(status_of(a), blk::kStatusIoErr);
    EXPECT_EQ(a.buf(1).bytes()[0], std::byte{0});  // nothing read into it
    auto b = write_req(0, pattern(700, 2));
    EXPECT_EQ(roundtrip(b), 1u);
    EXPECT_EQ(status_of(b), blk::kStatusIoErr);
    EXPECT_EQ(f.read(0, 1024), orig);
}

TEST_F(Blk, StatusIsTheLastByteOfTheLastWritableBuffer) {
    TempFile f(1 * MiB);
    start(f);
    // 512 + 4 writable bytes: data would be 515 bytes: IOERR, written into
    // the last byte of the 4-byte buffer.
    auto s = drv().chain().readable(header(blk::req::kIn, 0)).writable(512).writable(4).submit();
    ASSERT_TRUE(s);
    s->buf(2).ptr[3] = std::byte{0x55};
    EXPECT_EQ(roundtrip(*s), 1u);
    EXPECT_EQ(std::uint8_t(s->buf(2).ptr[3]), blk::kStatusIoErr);
    EXPECT_EQ(s->buf(2).ptr[0], std::byte{0});
}

TEST_F(Blk, ShortOrMisplacedHeaderIsIoErr) {
    TempFile f(1 * MiB);
    start(f);
    auto a = drv().chain().readable(std::vector<std::byte>(8)).writable(1).submit();
    ASSERT_TRUE(a);
    EXPECT_EQ(roundtrip(*a), 1u);
    EXPECT_EQ(status_of(*a), blk::kStatusIoErr);
    // Header in a device-writable buffer: not device-readable at all.
    auto b = drv().chain().writable(16).writable(512).writable(1).submit();
    ASSERT_TRUE(b);
    EXPECT_EQ(roundtrip(*b), 1u);
    EXPECT_EQ(status_of(*b), blk::kStatusIoErr);
}

TEST_F(Blk, ChainWithoutStatusByteIsReturnedWithLenZero) {
    TempFile f(1 * MiB);
    const auto orig = f.read(0, 512);
    start(f);
    auto s = drv().chain().readable(header(blk::req::kOut, 0)).readable(pattern(512, 4)).submit();
    ASSERT_TRUE(s);
    EXPECT_EQ(roundtrip(*s), 0u);
    EXPECT_EQ(dev_->stats().dropped_chains, 1u);
    EXPECT_EQ(f.read(0, 512), orig);  // not executed
    // The device keeps serving.
    auto r = read_req(0, 512);
    EXPECT_EQ(roundtrip(r), 513u);
}

TEST_F(Blk, UnknownTypesAreUnsupported) {
    TempFile f(1 * MiB);
    start(f);
    for (std::uint32_t t : {2u, 3u, 5u, blk::req::kGetLifetime, blk::req::kSecureErase, 15u, 26u, 0x80000000u,
                            0xffffffffu}) {
        auto s = bare_req(t);
        EXPECT_EQ(roundtrip(s), 1u) << t;
        EXPECT_EQ(status_of(s), blk::kStatusUnsupp) << t;
    }
}

TEST_F(Blk, BackingThatShrankGivesIoErrNotACrash) {
    TempFile f(1 * MiB);
    start(f);
    ASSERT_EQ(::ftruncate(f.fd(), 512 * 1024), 0);
    auto s = drv().chain().readable(header(blk::req::kIn, 2000)).at_offset(4).writable(4096).writable(1).submit();
    ASSERT_TRUE(s);
    EXPECT_EQ(roundtrip(*s), 1u);
    EXPECT_EQ(status_of(*s), blk::kStatusIoErr);
}

// --- concurrency ------------------------------------------------------------

TEST_F(Blk, ManyRequestsInFlightAllCompleteWithTheRightData) {
    TempFile f(8 * MiB);
    start(f, {}, 128);
    std::mt19937 rng(42);
    std::map<std::uint16_t, std::pair<std::uint64_t, std::uint32_t>> reads;  // id -> sector, len
    std::vector<Submitted> subs;
    // Distinct 64 KiB areas so reads and writes never overlap.
    std::vector<std::uint64_t> areas(128);
    for (std::size_t i = 0; i < areas.size(); ++i) areas[i] = i * 128;
    std::shuffle(areas.begin(), areas.end(), rng);
    for (int i = 0; i < 40; ++i) {
        const std::uint32_t len = 512u << (rng() % 8);  // 512 B .. 64 KiB
        if (i % 2) {
            subs.push_back(write_req(areas[i], pattern(len, 100 + i)));
        } else {
            subs.push_back(read_req(areas[i], len));
            reads[subs.back().id] = {areas[i], len};
        }
    }
    kick();
    auto used = wait_used(subs.size());
    ASSERT_EQ(used.size(), subs.size());
    std::set<std::uint32_t> ids;
    for (auto& u : used) ids.insert(u.id);
    EXPECT_EQ(ids.size(), subs.size());  // each exactly once
    for (int i = 0; i < 40; ++i) {
        const auto& s = subs[i];
        EXPECT_EQ(status_of(s), blk::kStatusOk);
        if (i % 2) {
            EXPECT_EQ(f.read(areas[i] * 512, s.buf(1).len), pattern(s.buf(1).len, 100 + i));
        } else {
            auto got = s.buf(1).bytes();
            auto want = f.read(areas[i] * 512, got.size());
            EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin())) << "read " << i;
        }
    }
    EXPECT_EQ(dev_->in_flight(), 0u);
}

TEST_F(Blk, MoreRequestsThanSlotsAreServedAsSlotsFree) {
    TempFile f(4 * MiB);
    BlkConfig cfg;
    cfg.io_depth = 64;  // the smallest ring: 64 slots for a 256-entry queue
    start(f, cfg, 256);
    auto buf = drv().alloc(4096, false);
    ASSERT_TRUE(buf);
    std::size_t n = 0;
    for (int i = 0; i < 80; ++i) {  // 3 descriptors each: 240 of 256
        auto s = drv().chain().readable(header(blk::req::kIn, std::uint64_t(i) * 8)).add(*buf, true).writable(1).submit();
        ASSERT_TRUE(s);
        ++n;
    }
    kick();
    auto used = wait_used(n);
    EXPECT_EQ(used.size(), n);
    EXPECT_EQ(dev_->stats().requests, n);
    EXPECT_EQ(dev_->stats().errors, 0u);
}

TEST_F(Blk, TwoQueuesServeIndependently) {
    TempFile f(4 * MiB);
    BlkConfig cfg;
    cfg.queues = 2;
    start(f, cfg);
    auto w = write_req(64, pattern(4096, 77), 0);
    EXPECT_EQ(roundtrip(w, 0), 1u);
    auto r = read_req(64, 4096, 1);
    EXPECT_EQ(roundtrip(r, 1), 4097u);
    auto got = r.buf(1).bytes();
    auto want = pattern(4096, 77);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin()));
}

// --- reset (device.h: done once nothing touches guest memory) -----------------

TEST_F(Blk, ResetWithRequestsInFlightWaitsThenReleasesEverything) {
    TempFile f(16 * MiB);
    ::fsync(f.fd());
    start(f, {}, 64, {}, 16384);
    const auto rings = h_->grants->pages_in_use();
    std::vector<Submitted> subs;
    for (int i = 0; i < 20; ++i) {  // 3 descriptors each: 60 of 64
        if (i % 2)
            subs.push_back(read_req(std::uint64_t(i) * 1024, 256 * 1024));
        else
            subs.push_back(write_req(std::uint64_t(i) * 1024, pattern(256 * 1024, i)));
    }
    kick();
    // Run only the kick: the requests are now in the kernel.
    h_->io.restart();
    while (dev_->in_flight() == 0 && h_->io.run_one_for(std::chrono::seconds(5))) {
    }
    EXPECT_GT(h_->grants->pages_in_use(), rings);
    ASSERT_TRUE(reset_and_wait());
    EXPECT_EQ(dev_->in_flight(), 0u);
    EXPECT_EQ(h_->grants->pages_in_use(), rings);  // every chain's grants unmapped
    // Chains finished before the reset carry their status; the others were
    // dropped and went back with len 0 (the queue's rule for abandoned chains).
    for (auto& u : wait_used(0)) {
        if (u.len == 0) continue;
        auto it = std::find_if(subs.begin(), subs.end(), [&](auto& s) { return s.id == u.id; });
        ASSERT_NE(it, subs.end());
        EXPECT_EQ(status_of(*it), blk::kStatusOk);
    }
    // A kick after reset does nothing.
    auto late = bare_req(blk::req::kFlush);
    late.bufs.back().ptr[0] = std::byte{0xee};
    kick();
    h_->io.restart();
    h_->io.run_for(std::chrono::milliseconds(20));
    for (auto& u : wait_used(0)) EXPECT_NE(u.id, late.id);
    EXPECT_EQ(status_of(late), 0xee);
    EXPECT_EQ(dev_->in_flight(), 0u);
}

TEST_F(Blk, DeviceServesAgainAfterResetAndReactivation) {
    TempFile f(1 * MiB);
    start(f);
    auto a = read_req(0, 512);
    EXPECT_EQ(roundtrip(a), 513u);
    ASSERT_TRUE(reset_and_wait());
    // The driver sets the queues up again (fresh rings) and activates.
    queues_.clear();
    drivers_.clear();
    auto d = h_->driver({});
    ASSERT_TRUE(d);
    auto q = h_->queue(**d);
    ASSERT_TRUE(q);
    drivers_.push_back(std::move(*d));
    queues_.push_back(std::move(*q));
    activate();
    auto w = write_req(1, pattern(512, 8));
    EXPECT_EQ(roundtrip(w), 1u);
    EXPECT_EQ(status_of(w), blk::kStatusOk);
    EXPECT_EQ(f.read(512, 512), pattern(512, 8));
}

TEST_F(Blk, ResetOfAnIdleDeviceCallsDoneAtOnce) {
    TempFile f(1 * MiB);
    start(f);
    bool done = false;
    // Not active yet after a first reset: done is inline.
    ASSERT_TRUE(reset_and_wait());
    dev_->reset([&] { done = true; });
    EXPECT_TRUE(done);
}

// --- a real block device ------------------------------------------------------

/// A loop device over a temp file, when this machine lets us make one.
class LoopDevice {
public:
    explicit LoopDevice(const std::string& file) {
        std::string cmd = "losetup --find --show " + file + " 2>/dev/null";
        FILE* p = ::popen(cmd.c_str(), "r");
        if (!p) return;
        char buf[256] = {};
        if (std::fgets(buf, sizeof buf, p)) dev_ = buf;
        ::pclose(p);
        while (!dev_.empty() && (dev_.back() == '\n' || dev_.back() == ' ')) dev_.pop_back();
        if (!dev_.empty() && ::access(dev_.c_str(), R_OK | W_OK) != 0) {
            detach();
        }
    }
    ~LoopDevice() { detach(); }
    const std::string& path() const { return dev_; }

private:
    void detach() {
        if (dev_.empty()) return;
        std::string cmd = "losetup -d " + dev_ + " 2>/dev/null";
        [[maybe_unused]] int rc = std::system(cmd.c_str());
        dev_.clear();
    }
    std::string dev_;
};

TEST_F(Blk, LoopBlockDeviceReadWriteDiscardZeroes) {
    TempFile f(8 * MiB);
    ::fsync(f.fd());
    LoopDevice loop(f.path());
    if (loop.path().empty()) GTEST_SKIP() << "cannot create a loop device here";
    start_path(loop.path());
    EXPECT_EQ(dev_->capacity_sectors(), 8 * MiB / 512);
    auto w = write_req(128, pattern(64 * 1024, 11));
    EXPECT_EQ(roundtrip(w), 1u);
    EXPECT_EQ(status_of(w), blk::kStatusOk);
    auto fl = bare_req(blk::req::kFlush);
    EXPECT_EQ(roundtrip(fl), 1u);
    EXPECT_EQ(status_of(fl), blk::kStatusOk);
    auto r = read_req(128, 64 * 1024);
    EXPECT_EQ(roundtrip(r), 64u * 1024 + 1);
    auto got = r.buf(1).bytes();
    auto want = pattern(64 * 1024, 11);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin()));
    // BLKZEROOUT through the helper pool.
    auto z = seg_req(blk::req::kWriteZeroes, segments({{128, 64, 0}}));
    EXPECT_EQ(roundtrip(z), 1u);
    EXPECT_EQ(status_of(z), blk::kStatusOk);
    auto r2 = read_req(128, 32 * 1024);
    EXPECT_EQ(roundtrip(r2), 32u * 1024 + 1);
    auto z2 = r2.buf(1).bytes();
    EXPECT_TRUE(std::all_of(z2.begin(), z2.end(), [](std::byte b) { return b == std::byte{0}; }));
    // BLKDISCARD: a loop device punches the backing file.
    auto d = seg_req(blk::req::kDiscard, segments({{4096, 4096, 0}}));
    EXPECT_EQ(roundtrip(d), 1u);
    EXPECT_EQ(status_of(d), blk::kStatusOk);
    EXPECT_EQ(next_hole(f.fd(), 2 * MiB), off_t(2 * MiB));
}

}  // namespace
}  // namespace xv::devices::blktest
