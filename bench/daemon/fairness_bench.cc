// SPDX-License-Identifier: GPL-2.0-only
// Fairness between guests (issue 5: "Two guests at once: one flooding its
// queues, the other's throughput stays within 20 % of running alone").
//
// The honest guest keeps 4 verified 4 KiB random reads in flight on an
// image on the real filesystem; the flooder keeps every descriptor of its
// two queues busy with 64 KiB reads and writes, one kick per request. The
// flood is switched on and off in alternating windows (tests/integration/
// fairness.h), so the baseline (flood off) is measured in the same run,
// under the same background load. Printed for three shapes: each guest on
// its own I/O thread (workers = 1: two guests on a 2-core machine), each on
// two, and every guest on one shared executor of two threads (the design
// before guest_executor.h): the honest guest's rate in both windows, the
// ratio (goal >= 0.80) and the worst round.
//
// Environment: XV_FAIRNESS_ROUNDS (default 10), XV_FAIRNESS_WINDOW_MS
// (default 300), XV_TEST_IMAGE_DIR (the honest image, default /var/tmp),
// XV_FAIRNESS_PROTECT=0 (the simulator hands out views of premapped guest
// RAM instead of one mmap per grant mapping).
#include <cstdio>
#include <cstdlib>
#include <string>

#include "fairness.h"
#include "xv/log.h"

namespace {

unsigned env_uint(const char* name, unsigned dflt) {
    const char* v = std::getenv(name);
    if (!v || !*v) return dflt;
    char* end = nullptr;
    unsigned long n = std::strtoul(v, &end, 10);
    return end && *end == 0 && n > 0 && n < 100000 ? unsigned(n) : dflt;
}

}  // namespace

int main() {
    using namespace xv::daemon::testing;
    spdlog::set_level(spdlog::level::warn);
    constexpr double kGoal = 0.80;
    bool ok = true;
    double per_guest_ratio = 0;
    struct Shape {
        bool per_guest;
        unsigned threads;
        const char* name;
    };
    const Shape shapes[] = {{true, 1, "own I/O threads per guest, workers = 1 (xen-virtiod; 2 guests on 2 cores)"},
                            {true, 2, "own I/O threads per guest, workers = 2"},
                            {false, 2, "one shared executor, 2 threads (the previous design)"}};
    for (const Shape& sh : shapes) {
        const bool per_guest = sh.per_guest && sh.threads == 1;
        FairnessOptions o;
        o.rounds = env_uint("XV_FAIRNESS_ROUNDS", 10);
        o.window = std::chrono::milliseconds(env_uint("XV_FAIRNESS_WINDOW_MS", 300));
        o.per_guest_threads = sh.per_guest;
        o.io_threads = sh.threads;
        if (const char* pp = std::getenv("XV_FAIRNESS_PROTECT"); pp && *pp == '0') o.protect_pages = false;
        auto r = measure_fairness(o);
        const char* shape = sh.name;
        if (!r) {
            std::printf("%s: setup failed: %s\n", shape, r.error().describe().c_str());
            ok = false;
            continue;
        }
        if (!r->failure.empty()) {
            std::printf("%s: FAILED: %s\n", shape, r->failure.c_str());
            ok = false;
            continue;
        }
        std::printf("%s:\n"
                    "  honest guest, flood off : %8.0f requests/s (4 KiB reads, QD %u)\n"
                    "  honest guest, flood on  : %8.0f requests/s\n"
                    "  ratio                   : %8.2f   (worst of %u rounds %.2f; goal >= %.2f)\n"
                    "  flooder                 : %8.0f requests/s of %u KiB (%.0f MiB/s)\n",
                    shape, r->solo_rps, o.honest_depth, r->flooded_rps, r->ratio(), o.rounds, r->worst_round,
                    kGoal, r->flooder_rps, o.flood_len / 1024, r->flooder_rps * o.flood_len / 1048576.0);
        if (per_guest) per_guest_ratio = r->ratio();
    }
    std::printf("fairness: %s (ratio %.2f, goal >= %.2f)\n", per_guest_ratio >= kGoal ? "MET" : "NOT MET",
                per_guest_ratio, kGoal);
    return ok ? 0 : 1;
}
