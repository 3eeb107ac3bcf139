// SPDX-License-Identifier: GPL-2.0-only
// Fuzz target: xenstore discovery (daemon/discovery.cc) over hostile trees.
//
// Each input writes a tree under /local/domain/<self>/backend/{virtio,
// virtio_disk}/<fe>/<devid>/ into the simulated xenstore: mostly the keys
// and value shapes libxl writes (so read_announced_device() gets past its
// first checks), with junk names, missing keys, out-of-range numbers,
// oversized and odd-character values mixed in. The daemon then scans it,
// writes `error` and `state` nodes as it would, and reads them back.
// Oracle: every device accepted satisfies what discovery.h promises.
#include <memory>
#include <set>
#include <string>

#include "discovery.h"
#include "fuzz_common.h"
#include "xv/xen/sim.h"

namespace {

using namespace xv;
using namespace xv::daemon;
using xv::fuzz::one_in;
using xv::fuzz::pick;

std::shared_ptr<xen::sim::SimHypervisor> g_hv;

std::string junk(FuzzedDataProvider& in) {
    if (one_in(in, 8)) return std::string(in.ConsumeIntegralInRange<std::size_t>(0, 5000), 'a');
    return in.ConsumeRandomLengthString(24);
}

/// A number as libxl writes it (hex or decimal), or something that is not.
std::string number(FuzzedDataProvider& in, std::uint64_t lo, std::uint64_t hi) {
    if (one_in(in, 6)) return pick<const char*>(in, {"", "-1", "0x", "1e3", " 5", "5 ", "+5", "0x1g", "99999999999999999999999"});
    std::uint64_t v = one_in(in, 8) ? in.ConsumeIntegral<std::uint64_t>() : in.ConsumeIntegralInRange(lo, hi);
    char buf[32];
    std::snprintf(buf, sizeof buf, in.ConsumeBool() ? "%#llx" : "%llu", static_cast<unsigned long long>(v));
    return buf;
}

std::string value_for(FuzzedDataProvider& in, const std::string& key, xen::DomId fe) {
    if (one_in(in, 12)) return junk(in);
    if (key == "frontend")
        return one_in(in, 6) ? pick<const char*>(in, {"/local/domain/9/device/virtio/0", "device/virtio/0", "/local/domain/1"})
                             : "/local/domain/" + std::to_string(fe) + "/device/" +
                                   pick<const char*>(in, {"virtio/0", "virtio_disk/51712", "vbd/51712"});
    if (key == "frontend-id") return one_in(in, 6) ? number(in, 0, 0x8000) : std::to_string(fe);
    if (key == "state") return number(in, 0, 9);
    if (key == "online") return pick<const char*>(in, {"1", "0", "yes"});
    if (key == "base") return number(in, 0x02000000, 0x02100000) ;
    if (key == "irq") return number(in, 0, 1100);
    if (key == "transport") return pick<const char*>(in, {"mmio", "pci", "ccw", ""});
    if (key == "grant_usage") return pick<const char*>(in, {"1", "0", "2", "true"});
    if (key == "type") return pick<const char*>(in, {"virtio,device", "virtio,device2", "virtio,device1a", "virtio", "x"});
    if (key == "params") return pick<const char*>(in, {"/var/lib/img", "img", "", "/dev/xvda"});
    if (key == "mode") return pick<const char*>(in, {"w", "r", "rw"});
    if (key == "discard-enable") return pick<const char*>(in, {"1", "0"});
    return junk(in);
}

void write_tree(FuzzedDataProvider& in, xen::XenStore& xs, xen::DomId self) {
    const std::string home = "/local/domain/" + std::to_string(self) + "/backend/";
    unsigned devices = in.ConsumeIntegralInRange(0, 6);
    for (unsigned i = 0; i < devices; ++i) {
        bool disk = in.ConsumeBool();
        xen::DomId fe = xen::DomId(in.ConsumeIntegralInRange(1, 3));
        std::string fe_name = one_in(in, 8) ? pick<const char*>(in, {"abc", "-1", "0x5", "99999", "32752", "", "1a", "01", "002"})
                                            : std::to_string(fe);
        std::string dev_name = one_in(in, 8) ? pick<const char*>(in, {"x", "4294967296", "0x10", "-0", "007", "00", "01"})
                                             : pick<const char*>(in, {"0", "1", "51712", "51728"});
        const std::string dir = home + (disk ? "virtio_disk/" : "virtio/") + fe_name + "/" + dev_name;
        static const char* const keys[] = {"frontend", "frontend-id", "state", "online", "base", "irq",
                                           "transport", "grant_usage", "type", "params", "mode",
                                           "discard-enable", "specification", "error"};
        for (const char* key : keys) {
            if (one_in(in, 10)) continue;  // key missing
            (void)xs.write(dir + "/" + key, value_for(in, key, fe));
        }
        if (one_in(in, 8)) (void)xs.write(dir + "/" + junk(in), junk(in));
        if (one_in(in, 16)) (void)xs.write(dir + "/base/deeper", "1");
    }
}

void check_device(const AnnouncedDevice& d, xen::DomId self) {
    FUZZ_CHECK(d.base != 0 && (d.base & 3) == 0 && d.base < (1ULL << 48), "base %#llx",
               static_cast<unsigned long long>(d.base));
    FUZZ_CHECK(d.irq >= 32 && d.irq <= 1019, "irq %u is not an Arm SPI", d.irq);
    FUZZ_CHECK(d.state >= 0 && d.state <= 8, "state %d", d.state);
    FUZZ_CHECK(d.transport == "mmio" || d.transport == "pci", "transport %s", d.transport.c_str());
    FUZZ_CHECK(d.type.rfind("virtio,device", 0) == 0, "type %s", d.type.c_str());
    const std::string fe_home = "/local/domain/" + std::to_string(d.frontend) + "/device/";
    FUZZ_CHECK(d.frontend_path.rfind(fe_home, 0) == 0, "frontend %s", d.frontend_path.c_str());
    const std::string be_home = "/local/domain/" + std::to_string(self) + "/backend/" + kind_name(d.kind) + "/";
    FUZZ_CHECK(d.backend_path.rfind(be_home, 0) == 0, "backend %s", d.backend_path.c_str());
    if (d.kind == BackendKind::VirtioDisk) FUZZ_CHECK(!d.params.empty() && d.params[0] == '/', "params %s", d.params.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    xv::fuzz::quiet_logs();
    g_hv = xen::sim::SimHypervisor::create();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider in(data, size);
    xen::XenStore& xs = g_hv->toolstack_store();
    const xen::DomId self = pick<xen::DomId>(in, {0, 1, 7});
    const std::string be = "/local/domain/" + std::to_string(self);
    (void)xs.rm(be + "/backend");
    (void)xs.rm(be + "/error");
    write_tree(in, xs, self);

    std::optional<xen::DomId> only;
    if (one_in(in, 4)) only = xen::DomId(in.ConsumeIntegralInRange(0, 4));
    ScanResult r = scan_announced_devices(xs, self, only);
    std::set<std::string> keys;
    for (const auto& d : r.devices) {
        check_device(d, self);
        FUZZ_CHECK(!only || d.frontend == *only, "frontend %u listed for %u", d.frontend, *only);
        FUZZ_CHECK(keys.insert(d.key()).second, "device %s listed twice", d.key().c_str());
        FUZZ_CHECK(r.errors.count(d.backend_path) == 0, "%s both valid and rejected", d.backend_path.c_str());
        // What the daemon does next with a device it refuses or serves.
        const std::string msg = "fuzz: refused";
        if (write_device_error(xs, self, d, msg)) {
            auto back = xs.read(d.backend_path + "/error");
            FUZZ_CHECK(back && back.value() == msg, "error node of %s not written", d.backend_path.c_str());
        }
        (void)write_backend_state(xs, d, xen::XenbusState::Closed);
    }
    for (const auto& [path, err] : r.errors) FUZZ_CHECK(!err.message.empty(), "empty error for %s", path.c_str());
    // Leave the store as it was (and every allocation balanced, so that
    // libFuzzer's leak check does not run after each input).
    (void)xs.rm(be + "/backend");
    (void)xs.rm(be + "/error");
    return 0;
}
