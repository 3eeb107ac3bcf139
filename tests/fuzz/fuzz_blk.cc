// SPDX-License-Identifier: GPL-2.0-only
// Fuzz target: virtio-blk request parsing and execution (devices/blk:
// blk_request.cc parse_request, blk_queue.cc, io_uring on a real image).
//
// Requests are built as a driver builds them (virtio 1.2 §5.2.6): header
// (type, ioprio, sector; sometimes split over two buffers or short), data
// buffers (readable for OUT/DISCARD/WRITE_ZEROES, writable for IN/GET_ID,
// sometimes not a multiple of 512 or past the end of the disk), and the
// status byte (own buffer, or the last byte of the last data buffer, or
// missing). A batch of requests is kicked and drained.
//
// Oracles: a well-formed request completes with VIRTIO_BLK_S_OK and the
// used length the spec asks for; a malformed one never does; an IN reads
// what the last completed OUT / WRITE_ZEROES wrote there (a shadow disk,
// with ranges of unknown content where requests raced or were discarded).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "device_fuzz.h"
#include "xv/devices/blk.h"

namespace {

using namespace xv;
using namespace xv::fuzz::dev;
using xv::fuzz::one_in;
using xv::fuzz::pick;
namespace blk = xv::devices::blk;

constexpr std::uint64_t kSectors = 2048;  // 1 MiB image
constexpr std::uint32_t kSector = 512;

struct Disk {
    std::unique_ptr<transport::Device> dev;
    bool readonly = false;
    bool discard = false;
    std::vector<std::byte> shadow;
    std::vector<bool> known;  ///< per sector: shadow holds its content
};

std::vector<Disk>* g_disks;

/// What the driver expects from one request.
struct Req {
    std::uint32_t type = 0;
    std::uint64_t sector = 0;
    std::uint32_t data_len = 0;
    enum { Ok, Fail, Any } expect = Ok;  ///< what the generator made of it
    bool has_status = true;
    bool reframed = false;  ///< short header read on from the next buffers: what it did is unknown
    std::byte fill{0};  ///< OUT data byte
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;  ///< WRITE_ZEROES/DISCARD (sector, count)
};

struct OutHdr {
    std::uint32_t type;
    std::uint32_t ioprio;
    std::uint64_t sector;
};
struct Seg {
    std::uint64_t sector;
    std::uint32_t num;
    std::uint32_t flags;
};

/// Builds one request; `q` is the queue it goes to.
std::vector<Piece> build(FuzzedDataProvider& in, Disk& d, std::uint64_t features, Req& r) {
    using transport::feature::bit;
    r.type = pick<std::uint32_t>(in, {blk::req::kIn, blk::req::kIn, blk::req::kOut, blk::req::kOut, blk::req::kFlush,
                                      blk::req::kGetId, blk::req::kDiscard, blk::req::kWriteZeroes,
                                      blk::req::kGetLifetime, blk::req::kSecureErase, 7});
    auto fail = [&] { r.expect = Req::Fail; };
    const bool rw = r.type == blk::req::kIn || r.type == blk::req::kOut;
    const std::uint32_t nsec = in.ConsumeIntegralInRange<std::uint32_t>(1, 16);
    r.sector = in.ConsumeIntegralInRange<std::uint64_t>(0, kSectors - nsec);
    if (one_in(in, 12)) {
        r.sector = pick<std::uint64_t>(in, {kSectors, kSectors - 1, ~0ULL, ~0ULL / kSector, 1ULL << 55});
        // Past the end (sector is only used by IN/OUT); the last sector alone is fine.
        if (rw && (r.sector >= kSectors || kSectors - r.sector < nsec)) fail();
    }
    std::vector<Piece> ps;
    bool short_header = false;
    std::vector<std::byte> hdr;
    put(hdr, OutHdr{r.type, 0, r.sector});
    if (one_in(in, 16)) {
        hdr.resize(in.ConsumeIntegralInRange<std::size_t>(0, 15));  // short header
        fail();
        short_header = true;
    }
    if (!hdr.empty() && one_in(in, 4)) {  // header over two buffers
        std::size_t cut = in.ConsumeIntegralInRange<std::size_t>(1, hdr.size());
        ps.push_back(Piece::in({hdr.begin(), hdr.begin() + std::ptrdiff_t(cut)}));
        if (cut < hdr.size()) ps.push_back(Piece::in({hdr.begin() + std::ptrdiff_t(cut), hdr.end()}));
    } else if (!hdr.empty()) {
        ps.push_back(Piece::in(hdr));
    }
    // Data buffers.
    std::uint32_t total = nsec * kSector;
    if (one_in(in, 12)) {
        total += in.ConsumeIntegralInRange<std::uint32_t>(1, 511);  // not whole sectors
        if (rw) fail();
    }
    auto split = [&](std::uint32_t len, bool write, std::byte fill) {
        unsigned parts = in.ConsumeIntegralInRange(1, 4);
        for (unsigned i = 0; i < parts && len; ++i) {
            std::uint32_t n = i + 1 == parts ? len : in.ConsumeIntegralInRange<std::uint32_t>(1, len);
            ps.push_back(write ? Piece::out(n) : Piece::in(std::vector<std::byte>(n, fill)));
            len -= n;
        }
    };
    switch (r.type) {
        case blk::req::kIn:
            r.data_len = total;
            split(total, true, {});
            break;
        case blk::req::kOut:
            r.data_len = total;
            r.fill = std::byte(in.ConsumeIntegral<std::uint8_t>() | 1);
            split(total, false, r.fill);
            if (d.readonly) fail();
            break;
        case blk::req::kFlush:
            if (!(features & bit(blk::feature::kFlush)) && r.expect == Req::Ok) r.expect = Req::Any;
            break;
        case blk::req::kGetId:
            r.data_len = pick<std::uint32_t>(in, {20, 20, 512, 8});
            if (r.data_len < blk::kIdBytes) fail();
            split(r.data_len, true, {});
            break;
        case blk::req::kDiscard:
        case blk::req::kWriteZeroes: {
            const bool wz = r.type == blk::req::kWriteZeroes;
            if (!(features & bit(wz ? blk::feature::kWriteZeroes : blk::feature::kDiscard)) || d.readonly)
                fail();
            std::vector<std::byte> segs;
            unsigned n = in.ConsumeIntegralInRange(1, 3);
            for (unsigned i = 0; i < n; ++i) {
                std::uint32_t cnt = in.ConsumeIntegralInRange<std::uint32_t>(1, 64);
                std::uint64_t s = in.ConsumeIntegralInRange<std::uint64_t>(0, kSectors - cnt);
                std::uint32_t flags = wz && in.ConsumeBool() ? blk::kFlagUnmap : 0;
                if (one_in(in, 10)) {
                    flags = in.ConsumeIntegral<std::uint32_t>() | 2;  // reserved bits
                    fail();
                }
                if (one_in(in, 12)) {
                    s = kSectors - cnt + in.ConsumeIntegralInRange<std::uint64_t>(1, 1ULL << 40);
                    fail();
                }
                if (!wz && (flags & blk::kFlagUnmap)) fail();
                put(segs, Seg{s, cnt, flags});
                r.ranges.emplace_back(s, cnt);
            }
            if (one_in(in, 10)) {
                segs.resize(segs.size() - in.ConsumeIntegralInRange<std::size_t>(1, 15));  // partial segment
                fail();
            }
            ps.push_back(Piece::in(segs));
            break;
        }
        case 7:
            fail();  // no such type: UNSUPP
            break;
        default:  // GET_LIFETIME, SECURE_ERASE: optional
            if (r.expect == Req::Ok) r.expect = Req::Any;
            break;
    }
    // Status byte (virtio 1.2 §5.2.6: the last byte of the last writable buffer).
    if (one_in(in, 16)) {
        // No status buffer: the last writable byte (of the data) is taken as
        // the status, or, without any, the chain cannot be answered.
        bool any_writable = false;
        for (const auto& p : ps) any_writable |= p.write;
        if (!any_writable) r.has_status = false;
        else r.expect = Req::Any;
    } else if (r.type == blk::req::kIn && !ps.empty() && ps.back().write && in.ConsumeBool()) {
        ps.back().len += 1;  // status in the last data buffer
    } else {
        ps.push_back(Piece::out(1));
    }
    if (short_header) {
        // virtio 1.2 §2.6.4 (message framing): the device reads the header
        // from the first 16 device-readable bytes, wherever the buffers end.
        // A short header followed by more readable bytes (segments, data) is
        // another, possibly well-formed, request; only too few bytes in all
        // must fail.
        std::size_t readable = 0;
        for (const auto& p : ps) readable += p.write ? 0 : p.data.size();
        if (readable >= sizeof(OutHdr)) {
            r.expect = Req::Any;
            r.reframed = true;
        }
    }
    return ps;
}

/// Used length a completed request must report (bytes the device wrote).
std::uint32_t expected_len(const Req& r) {
    switch (r.type) {
        case blk::req::kIn: return r.data_len + 1;
        case blk::req::kGetId: return std::min<std::uint32_t>(r.data_len, blk::kIdBytes) + 1;  // 20 id bytes
        default: return 1;
    }
}

void run(FuzzedDataProvider& in) {
    World& w = World::get();
    Disk& d = (*g_disks)[in.ConsumeIntegralInRange<std::size_t>(0, g_disks->size() - 1)];
    const std::uint64_t features = negotiate(in, *d.dev);
    Harness h(w, *d.dev);
    const std::uint16_t nq = d.dev->num_queues();
    const bool mq = features & transport::feature::bit(blk::feature::kMq);
    if (!h.activate(features, nq, [&](std::uint16_t q) { return q == 0 || (mq && !one_in(in, 8)); })) return;

    std::map<std::uint64_t, Req> reqs;  // by tag
    std::uint64_t next_tag = 1;
    unsigned batches = in.ConsumeIntegralInRange(1, 8);
    for (unsigned b = 0; b < batches && in.remaining_bytes() > 0; ++b) {
        unsigned n = in.ConsumeIntegralInRange(1, 8);
        std::vector<std::uint64_t> batch;
        for (unsigned i = 0; i < n; ++i) {
            Req r;
            auto ps = build(in, d, features, r);
            const std::uint16_t q = std::uint16_t(mq ? in.ConsumeIntegralInRange<unsigned>(0, nq - 1) : 0);
            const std::uint64_t tag = next_tag++;
            if (!h.add(q, ps, (features & transport::feature::bit(transport::feature::kIndirectDesc)) && one_in(in, 3),
                       tag))
                continue;
            reqs[tag] = r;
            batch.push_back(tag);
        }
        // Sectors two requests of this batch touch, one of them writing:
        // their content is whatever order the device chose.
        std::vector<unsigned> touched(kSectors, 0), written(kSectors, 0);
        auto span_of = [](const Req& r, auto&& fn) {
            if (r.type == blk::req::kIn || r.type == blk::req::kOut)
                fn(r.sector, (std::uint64_t(r.data_len) + kSector - 1) / kSector);
            for (auto [s, c] : r.ranges) fn(s, c);
        };
        for (auto t : batch) {
            const Req& r = reqs[t];
            const bool writes = r.type != blk::req::kIn;
            span_of(r, [&](std::uint64_t s0, std::uint64_t c) {
                for (std::uint64_t s = s0; s < s0 + c && s < kSectors; ++s) {
                    ++touched[s];
                    if (writes) ++written[s];
                }
            });
        }
        auto racy = [&](std::uint64_t s) { return s >= kSectors || (written[s] > 0 && touched[s] > 1); };
        for (std::uint16_t q = 0; q < nq; ++q) h.notify(q);
        auto* bd = static_cast<devices::BlkDevice*>(d.dev.get());
        for (int i = 0; i < 2000; ++i) {
            w.poll();
            if (bd->in_flight() == 0 && w.poll() == 0) break;
            w.io.restart();
            w.io.run_one_for(std::chrono::milliseconds(1));
        }
        std::map<std::uint64_t, std::uint8_t> outcome;  // tag -> status
        for (auto& u : h.reap()) {
            auto it = reqs.find(u.chain.tag);
            if (it == reqs.end()) continue;
            const Req& r = it->second;
            if (!r.has_status) {
                FUZZ_CHECK(u.len == 0, "request without a status byte used with len %u", u.len);
                continue;
            }
            const auto& last = u.chain.writable.back();
            const std::uint8_t status = std::uint8_t(*h.rw_bytes(last.first + last.second - 1));
            outcome[u.chain.tag] = status;
            FUZZ_CHECK(status <= blk::kStatusUnsupp, "status byte %u", status);
            if (r.expect == Req::Ok) {
                FUZZ_CHECK(status == blk::kStatusOk, "well-formed request type %u sector %llu len %u: status %u",
                           r.type, static_cast<unsigned long long>(r.sector), r.data_len, status);
                FUZZ_CHECK(u.len == expected_len(r), "request type %u: used len %u, expected %u", r.type, u.len,
                           expected_len(r));
            } else if (r.expect == Req::Fail) {
                FUZZ_CHECK(status != blk::kStatusOk, "malformed request type %u sector %llu len %u completed OK",
                           r.type, static_cast<unsigned long long>(r.sector), r.data_len);
            }
            if (status == blk::kStatusOk && r.type == blk::req::kIn) {
                // An IN reads what the disk holds, where that is known.
                std::uint64_t pos = 0;
                for (const auto& [off, len] : u.chain.writable) {
                    for (std::uint32_t i = 0; i < len && pos < r.data_len; ++i, ++pos) {
                        const std::uint64_t sec = r.sector + pos / kSector;
                        if (racy(sec) || !d.known[sec]) continue;
                        FUZZ_CHECK(*h.rw_bytes(off + i) == d.shadow[r.sector * kSector + pos],
                                   "IN sector %llu byte %llu differs from what was written",
                                   static_cast<unsigned long long>(sec), static_cast<unsigned long long>(pos % kSector));
                    }
                }
            }
        }
        // The shadow follows completed writes that raced with nothing.
        for (auto t : batch) {
            const Req& r = reqs[t];
            if (r.type == blk::req::kIn) continue;
            auto st = outcome.find(t);
            const bool ok = st != outcome.end() && st->second == blk::kStatusOk;
            span_of(r, [&](std::uint64_t s0, std::uint64_t c) {
                for (std::uint64_t s = s0; s < s0 + c && s < kSectors; ++s) {
                    if (r.reframed) {
                        d.known[s] = false;
                        continue;
                    }
                    if (!ok || racy(s) || r.type == blk::req::kDiscard || r.type != blk::req::kOut) {
                        // WRITE_ZEROES reads back zeroes (virtio 1.2 §5.2.6.2).
                        if (ok && !racy(s) && r.type == blk::req::kWriteZeroes) {
                            std::fill_n(d.shadow.begin() + std::ptrdiff_t(s * kSector), kSector, std::byte{0});
                            d.known[s] = true;
                        } else if (r.type != blk::req::kFlush && r.type != blk::req::kGetId) {
                            d.known[s] = false;
                        }
                        continue;
                    }
                    std::fill_n(d.shadow.begin() + std::ptrdiff_t(s * kSector), kSector, r.fill);
                    d.known[s] = true;
                }
            });
        }
        for (auto t : batch) reqs.erase(t);
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    xv::fuzz::quiet_logs();
    World& w = World::get();
    g_disks = new std::vector<Disk>;
    for (int i = 0; i < 2; ++i) {
        std::string path = "/var/tmp/xv-fuzz-blk-" + std::to_string(::getpid()) + "-" + std::to_string(i) + ".img";
        int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
        FUZZ_CHECK(fd >= 0 && ::ftruncate(fd, kSectors * kSector) == 0, "cannot create %s", path.c_str());
        ::close(fd);
        devices::BlkConfig cfg;
        cfg.path = path;
        cfg.readonly = i == 1;
        cfg.discard = i == 0;
        cfg.queues = i == 0 ? 2 : 1;
        cfg.serial = "fuzz-serial";
        cfg.io_depth = 32;
        transport::DeviceIdentity id{w.domid, "blk" + std::to_string(i)};
        auto dev = devices::make_blk(cfg, id, w.io.get_executor());
        FUZZ_CHECK(dev.has_value(), "make_blk: %s", dev.error().describe().c_str());
        ::unlink(path.c_str());  // the device keeps it open
        Disk d;
        d.dev = std::move(*dev);
        d.readonly = cfg.readonly;
        d.discard = cfg.discard;
        d.shadow.assign(kSectors * kSector, std::byte{0});
        d.known.assign(kSectors, true);
        g_disks->push_back(std::move(d));
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider in(data, size);
    run(in);
    return 0;
}
