// SPDX-License-Identifier: GPL-2.0-only
// Fairness between guests (issue 5: "Two guests at once: one flooding its
// queues, the other's throughput stays within 20 % of running alone").
//
// The honest guest reads 4 KiB at random offsets of an image on the real
// filesystem (O_DIRECT) and verifies every byte; the flooder keeps every
// descriptor of its two queues busy with 64 KiB reads and writes on tmpfs,
// one kick per request. The flood is switched on and off in alternating
// windows (tests/integration/fairness.h), so the baseline (flood off) is
// measured in the same run, under the same background load.
//
// Shapes, each printed with the honest guest's rate and latency in both
// windows, the ratio (goal >= 0.80), the worst round, the host CPU used by
// each guest's backend threads (executor + io_uring workers), by each
// simulated guest's vCPU threads and by the rest, how long the honest
// backend waited for a CPU, the hand-offs of the honest chain (how often
// a second the honest backend's threads and vCPU thread were put on a CPU,
// and their mean wait for it each time: the run-queue latency of one
// hand-off, from schedstat), and the honest backend's CPU per request:
//   - deployment shape: each guest's simulator and worker (`serve --domid
//     N`: a manager for that guest, the guest on its own I/O thread) in a
//     process of its own, the flooder's forked first; honest guest
//     saturating (4 reads always in flight), then paced at XV_FAIRNESS_RATE
//     reads a second (default 2000, at most 4 in flight: met when it gets
//     >= 80 % of its solo rate and its p99 latency stays within 4 / rate);
//   - with XV_FAIRNESS_CGROUP=/sys/fs/cgroup/cpu (cgroup v1, root; or a
//     cgroup v2 hierarchy such as /sys/fs/cgroup): the same with each
//     worker process in a cpu cgroup of its own, equal weights, made by the
//     daemon's own module (daemon/worker_cgroup.h, what the supervisor of
//     xen-virtiod.service does) under a group standing for the service;
//   - with XV_FAIRNESS_CGROUP naming a cgroup v1 cpu hierarchy, also the
//     same with each simulated guest's vCPU threads moved out of its
//     worker's group into a group of their own beside the service's (equal
//     weight). On Xen a guest's vCPUs are scheduled by Xen against the
//     Hardware Domain's vCPUs, by domain weight; they are not threads of
//     the worker and take nothing from its group's share. In the shape above
//     they are threads of the worker's process (the simulator is
//     in-process), so the flooder's vCPUs, which wake tens of thousands of
//     times a second, compete inside the flooder's worker group and the
//     honest vCPU inside the honest worker's. Both rows are printed;
//   - with XV_FAIRNESS_CGROUP: the deployment shape + per-worker cgroups
//     again with the simulated vCPUs blocking at once on a trap
//     (SimOptions::vcpu_spin = 0). By default a trapped simulated vCPU
//     polls its ioreq slot, yielding, for up to 50 us before it sleeps: the
//     flooder's two vCPUs, trapping on every kick, then take tens of
//     thousands of CPU slices a second from the 2 host CPUs the backends
//     run on. On Xen a vCPU that traps to an ioreq server is blocked by Xen
//     until the answer and its event: it is not running, and never on the
//     backend domain's CPUs. The guest drivers wait for their used-ring
//     interrupt on a condition variable (SimGuest::wait_irq), not spinning;
//     their ISR reads are traps, covered by the same setting;
//   - single-process shape: both guests' backends in one process, each on
//     its own I/O thread (saturating, paced), two threads each, one shared
//     executor, and with XV_FAIRNESS_CGROUP (v1 only) its per-guest
//     thread groups.
//
// Environment: XV_FAIRNESS_ROUNDS (default 10), XV_FAIRNESS_WINDOW_MS
// (default 300), XV_FAIRNESS_RATE, XV_FAIRNESS_CGROUP, XV_TEST_IMAGE_DIR
// (the honest image, default /var/tmp), XV_FAIRNESS_PROTECT=0 (the
// simulator hands out views of premapped guest RAM instead of one mmap per
// grant mapping), XV_FAIRNESS_ONLY=deployment|single,
// XV_FAIRNESS_VCPU_SPIN_US (the simulated vCPUs' poll for an ioreq answer
// in every other shape, microseconds; default 50, 0: block at once).
#include <chrono>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
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

void print_cpu(const char* what, const xv::daemon::testing::CpuSplit& c) {
    if (!c.sampled) {
        std::printf("  CPU, %-16s: not sampled (no /proc/self/task/*/schedstat)\n", what);
        return;
    }
    std::printf("  CPU, %-16s: backend honest %.2f, flooder %.2f (flooder %2.0f %% of the backend); "
                "simulated vCPUs honest %.2f, flooder %.2f; other %.2f; waited for a CPU: honest backend %.2f, "
                "honest vCPU %.2f\n",
                what, c.honest_backend, c.flood_backend, 100 * c.flood_backend_share(), c.honest_vcpus, c.flood_vcpus,
                c.other, c.honest_backend_wait, c.honest_vcpus_wait);
    using xv::daemon::testing::CpuSplit;
    std::printf("  hand-offs, %-11s: honest backend %6.0f slices/s, %5.1f us wait each; honest vCPU %6.0f slices/s, "
                "%5.1f us wait each\n",
                what, c.honest_backend_slices, CpuSplit::per_slice_us(c.honest_backend_wait, c.honest_backend_slices),
                c.honest_vcpus_slices, CpuSplit::per_slice_us(c.honest_vcpus_wait, c.honest_vcpus_slices));
}

}  // namespace

int main() {
    using namespace xv::daemon::testing;
    spdlog::set_level(spdlog::level::warn);
    constexpr double kGoal = 0.80;
    bool ok = true;
    const unsigned rate = env_uint("XV_FAIRNESS_RATE", 2000);
    struct Shape {
        bool processes;  // one worker process per guest (the deployment's shape)
        bool per_guest;
        unsigned threads;
        unsigned rate;  // 0: saturating
        bool grouped;   // per-guest (per-process) cpu cgroups of equal weight
        const char* name;
        bool vcpus_apart = false;  // the simulated vCPUs in groups beside the service's (cgroup v1)
        bool vcpus_block = false;  // a trapped simulated vCPU sleeps at once (vcpu_spin 0), as on Xen
    };
    // The two-process shapes run first, while this process has started no
    // thread yet (each forks the flooder's process before its own threads).
    const Shape shapes[] = {
        {true, true, 1, 0, false, "deployment shape: one worker process per guest, workers = 1, saturating honest guest"},
        {true, true, 1, rate, false, "deployment shape: one worker process per guest, workers = 1, paced honest guest"},
        {true, true, 1, 0, true, "deployment shape + the supervisor's per-worker cgroups (daemon/worker_cgroup.h), saturating honest guest"},
        {true, true, 1, rate, true, "deployment shape + the supervisor's per-worker cgroups (daemon/worker_cgroup.h), paced honest guest"},
        {true, true, 1, 0, true,
         "deployment shape + per-worker cgroups, simulated vCPUs scheduled apart (as Xen does), saturating honest guest",
         true},
        {true, true, 1, rate, true,
         "deployment shape + per-worker cgroups, simulated vCPUs scheduled apart (as Xen does), paced honest guest", true},
        {true, true, 1, 0, true,
         "deployment shape + per-worker cgroups, a trapped simulated vCPU blocks at once (as on Xen), saturating honest guest",
         false, true},
        {true, true, 1, rate, true,
         "deployment shape + per-worker cgroups, a trapped simulated vCPU blocks at once (as on Xen), paced honest guest",
         false, true},
        {false, true, 1, 0, false, "single-process shape: both guests' backends in one process, own I/O thread each, saturating"},
        {false, true, 1, rate, false, "single-process shape, own I/O thread each, paced honest guest"},
        {false, true, 2, 0, false, "single-process shape, two I/O threads per guest, saturating"},
        {false, false, 2, 0, false, "single-process shape, one shared executor, 2 threads (the design before per-guest executors), saturating"},
        {false, true, 1, 0, true, "single-process shape + per-guest cgroups of equal weight, saturating"},
        {false, true, 1, rate, true, "single-process shape + per-guest cgroups of equal weight, paced"}};
    const char* cgroup = std::getenv("XV_FAIRNESS_CGROUP");
    std::optional<std::chrono::microseconds> vcpu_spin;  // XV_FAIRNESS_VCPU_SPIN_US, 0 allowed
    if (const char* v = std::getenv("XV_FAIRNESS_VCPU_SPIN_US"); v && *v) {
        char* end = nullptr;
        const unsigned long us = std::strtoul(v, &end, 10);
        if (end && *end == 0 && us <= 1000000) vcpu_spin = std::chrono::microseconds(us);
    }
    struct Verdict {
        double ratio = -1;
        bool p99_ok = false;
        double cost_growth = 0;  // honest backend CPU per request, flood on / off (0: not sampled)
        double flooded_rps = 0;  // the honest guest's rate with the flood on
    };
    // The highest flood-off rate of the saturating honest guest over every
    // shape of this run. A shape whose own flood-off rate is low (blocking
    // vCPUs: each wake-up of a sleeping thread costs an idle exit here)
    // would pass its own ratio too easily; a saturating row is only met when
    // its flood-on rate is also within 20 % of this best rate.
    double best_solo_rps = 0;
    std::map<std::string, Verdict> verdicts;  // "<processes>/<grouped>/<paced>"
    // XV_FAIRNESS_ONLY=deployment or =single: only those shapes.
    const char* only = std::getenv("XV_FAIRNESS_ONLY");
    const std::string only_s = only ? only : "";
    for (const Shape& sh : shapes) {
        if (sh.grouped && !(cgroup && *cgroup)) continue;
        // Threads of one process in different groups: cgroup v1 only.
        if (sh.vcpus_apart && !std::ifstream(std::string(cgroup) + "/tasks")) continue;
        if ((only_s == "deployment" && !sh.processes) || (only_s == "single" && sh.processes)) continue;
        FairnessOptions o;
        o.rounds = env_uint("XV_FAIRNESS_ROUNDS", 10);
        o.window = std::chrono::milliseconds(env_uint("XV_FAIRNESS_WINDOW_MS", 300));
        o.per_guest_threads = sh.per_guest;
        o.io_threads = sh.threads;
        o.honest_rate = sh.rate;
        o.separate_processes = sh.processes;
        if (sh.grouped) o.cpu_cgroup = cgroup;
        o.vcpus_apart = sh.vcpus_apart;
        if (vcpu_spin) o.vcpu_spin = *vcpu_spin;
        if (sh.vcpus_block) o.vcpu_spin = std::chrono::microseconds(0);
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
        std::printf("%s:\n", shape);
        if (sh.rate)
            std::printf("  honest guest offers     : %8u requests/s (4 KiB reads, at most %u in flight)\n", sh.rate,
                        o.honest_depth);
        std::printf("  honest guest, flood off : %8.0f requests/s%s, latency p50 %.0f us, p99 %.0f us\n"
                    "  honest guest, flood on  : %8.0f requests/s, latency p50 %.0f us, p99 %.0f us\n"
                    "  ratio                   : %8.2f   (worst of %u rounds %.2f; goal >= %.2f)\n"
                    "  flooder                 : %8.0f requests/s of %u KiB (%.0f MiB/s)\n",
                    r->solo_rps, sh.rate ? "" : " (4 KiB reads, QD 4)", r->solo_p50_us, r->solo_p99_us,
                    r->flooded_rps, r->flooded_p50_us, r->flooded_p99_us, r->ratio(), o.rounds, r->worst_round, kGoal,
                    r->flooder_rps, o.flood_len / 1024, r->flooder_rps * o.flood_len / 1048576.0);
        print_cpu("flood off", r->solo_cpu);
        print_cpu("flood on", r->flooded_cpu);
        if (r->flooded_cpu.sampled && r->flooded_rps > 0 && r->flooder_rps > 0)
            std::printf("  backend CPU per request : honest %.1f us (flood off %.1f us), flooder %.1f us (flood on)\n",
                        1e6 * r->flooded_cpu.honest_backend / r->flooded_rps,
                        r->solo_rps > 0 ? 1e6 * r->solo_cpu.honest_backend / r->solo_rps : 0.0,
                        1e6 * r->flooded_cpu.flood_backend / r->flooder_rps);
        std::fflush(stdout);
        if (sh.per_guest && sh.threads == 1) {
            // The paced guest is served when it gets its rate with the flood
            // on as without, and its p99 latency stays under its budget
            // (4 reads in flight at `rate`: 4 / rate seconds, 2 ms at 2000/s).
            Verdict& v = verdicts[std::string(sh.processes ? "p" : "s") + (sh.grouped ? "g" : "-") +
                                  (sh.rate ? "r" : "-") + (sh.vcpus_apart ? "v" : "") + (sh.vcpus_block ? "b" : "")];
            v.ratio = r->ratio();
            v.flooded_rps = r->flooded_rps;
            if (!sh.rate) best_solo_rps = std::max(best_solo_rps, r->solo_rps);
            v.p99_ok = !sh.rate || r->flooded_p99_us <= 1e6 * o.honest_depth / sh.rate;
            if (r->solo_cpu.sampled && r->flooded_cpu.sampled && r->solo_rps > 0 && r->flooded_rps > 0 &&
                r->solo_cpu.honest_backend > 0)
                v.cost_growth = (r->flooded_cpu.honest_backend / r->flooded_rps) /
                                (r->solo_cpu.honest_backend / r->solo_rps);
        }
    }
    auto say = [&](const char* what, const char* key) {
        auto it = verdicts.find(key);
        if (it == verdicts.end()) return;
        const bool paced = key[2] == 'r';
        const double cross = best_solo_rps > 0 ? it->second.flooded_rps / best_solo_rps : 0;
        const bool met = it->second.ratio >= kGoal && it->second.p99_ok && (paced || cross >= kGoal);
        char vs_best[96] = "";
        if (!paced)
            std::snprintf(vs_best, sizeof vs_best, "; %.2f of the best flood-off rate of any shape", cross);
        std::printf("fairness, %-52s: %s (ratio %.2f, goal >= %.2f%s%s; honest backend CPU per request x%.2f "
                    "with the flood)\n",
                    what, met ? "MET" : "NOT MET", it->second.ratio, kGoal, vs_best,
                    paced ? (it->second.p99_ok ? "; p99 latency within its 4-in-flight budget"
                                               : "; p99 latency beyond its 4-in-flight budget")
                          : "",
                    it->second.cost_growth);
    };
    say("deployment shape (a process per guest), saturating", "p--");
    say("deployment shape (a process per guest), paced", "p-r");
    say("deployment shape + per-worker cgroups, saturating", "pg-");
    say("deployment shape + per-worker cgroups, paced", "pgr");
    say("deployment + per-worker cgroups, vCPUs apart, saturating", "pg-v");
    say("deployment + per-worker cgroups, vCPUs apart, paced", "pgrv");
    say("deployment + per-worker cgroups, vCPUs block, saturating", "pg-b");
    say("deployment + per-worker cgroups, vCPUs block, paced", "pgrb");
    say("single-process shape, saturating", "s--");
    say("single-process shape, paced", "s-r");
    return ok ? 0 : 1;
}
