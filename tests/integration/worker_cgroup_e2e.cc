// SPDX-License-Identifier: GPL-2.0-only
// Worker cgroups end to end, on the machine's real cpu controller: the
// supervisor (GuestManager in worker mode with its fork/exec spawner, as
// `xen-virtiod serve` runs it) starts the worker of a simulated guest, the
// worker is in a cpu cgroup of its own before it executes (its
// /proc/<pid>/cgroup says so), and the group is gone once the guest was
// destroyed and its worker reaped.
//
// The worker is a small script standing in for `serve --domid N --worker`
// (the simulator lives in this process; a real worker would not find it):
// it records its pid and cgroups, then exits 0 once told its guest is gone,
// as a worker does. The supervisor's own cgroup is a test group made under
// the hierarchy's root (the module reads it from a file written like
// /proc/self/cgroup), so that the machine's groups are left alone.
//
// Needs a writable cpu controller: root with a cgroup v1 cpu hierarchy, or
// cgroup v2 whose root enables cpu for its children; skipped elsewhere.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "sim_host.h"
#include "worker_cgroup.h"

namespace xv::daemon {
namespace {

namespace fs = std::filesystem;
using namespace testing;
using namespace std::chrono_literals;

std::string slurp(const fs::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

/// A test group of the real hierarchy (removed by the destructor), and
/// what /proc/self/cgroup would say for a process in it.
struct RealGroup {
    fs::path dir;        ///< the test group
    std::string line;    ///< "1:cpu:/xv-e2e-<pid>" or "0::/xv-e2e-<pid>"
    std::string prefix;  ///< the line's start for a process of a group below it ("1:cpu:")
    std::string skip;    ///< why the test cannot run here

    RealGroup() {
        const std::string name = "xv-e2e-" + std::to_string(::getpid());
        if (::geteuid() != 0) {
            skip = "needs root to create cpu cgroups";
            return;
        }
        // v1: the cpu hierarchy; v2: the unified one, when its root hands
        // the cpu controller to its children.
        const std::string self = slurp("/proc/self/cgroup");
        std::istringstream in(self);
        std::string v1_id;
        for (std::string l; std::getline(in, l);) {
            auto a = l.find(':'), b = l.find(':', a + 1);
            if (a == std::string::npos || b == std::string::npos) continue;
            std::istringstream cs(l.substr(a + 1, b - a - 1));
            for (std::string c; std::getline(cs, c, ',');)
                if (c == "cpu") prefix = l.substr(0, b + 1);
        }
        fs::path mount;
        if (!prefix.empty() && fs::exists("/sys/fs/cgroup/cpu/cpu.shares")) {
            mount = "/sys/fs/cgroup/cpu";
        } else {
            prefix = "0::";
            for (const char* m : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}) {
                if (slurp(fs::path(m) / "cgroup.subtree_control").find("cpu") != std::string::npos) {
                    mount = m;
                    break;
                }
            }
            if (mount.empty()) {
                skip = "no writable cpu controller: no cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu and no cgroup v2 "
                       "root with cpu in cgroup.subtree_control";
                return;
            }
        }
        dir = mount / name;
        if (::mkdir(dir.c_str(), 0755) != 0) {
            skip = "cannot create " + dir.string() + ": " + std::strerror(errno);
            dir.clear();
            return;
        }
        line = prefix + "/" + name;
    }
    ~RealGroup() {
        if (dir.empty()) return;
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(dir, ec))
            if (e.is_directory()) (void)::rmdir(e.path().c_str());
        (void)::rmdir(dir.c_str());
    }
};

/// A script standing in for the worker.
struct FakeWorker {
    explicit FakeWorker(const fs::path& dir) {
        base = dir;
        script = base / "worker.sh";
        out = base / "worker.out";
        flag = base / "guest-alive";
        std::ofstream(flag) << "1\n";
        std::ofstream(script) << "#!/bin/sh\n"
                              << "{ echo $$; cat /proc/$$/cgroup; } > " << out.string() << ".tmp\n"
                              << "mv " << out.string() << ".tmp " << out.string() << "\n"
                              << "while [ -e " << flag.string() << " ]; do sleep 0.02; done\n"
                              << "exit 0\n";
        ::chmod(script.c_str(), 0755);
    }
    fs::path base, script, out, flag;
};

/// A temp dir with the fake worker, a host with one guest and a blk device,
/// and the supervisor's options for the real fork/exec spawner.
struct Rig {
    explicit Rig(const RealGroup& g, const char* tag)
        : tmp(fs::temp_directory_path() / (std::string("xv-cg-e2e-") + tag + std::to_string(::getpid()))),
          made(fs::create_directories(tmp)),
          w(tmp),
          img(4 << 20),
          h(domains_toml({{"g1", "unsafe"}}) + blk_toml("g1", img.path.string())) {
        std::ofstream(tmp / "self-cgroup") << g.line << "\n";
        mo.spawn_workers = true;  // the real fork/exec spawner, made by start()
        mo.self_exe = w.script.string();
        mo.config_path = "/dev/null";
        mo.reap_period = 10ms;
        mo.worker_cgroups.proc_self_cgroup = (tmp / "self-cgroup").string();
    }
    ~Rig() {
        std::error_code ec;
        fs::remove_all(tmp, ec);
    }
    /// Creates the guest with its device; its domid (0: failed).
    xen::DomId add_guest() {
        auto d = create_guest(h, "g1");
        EXPECT_TRUE(d.has_value());
        if (!d) return 0;
        EXPECT_TRUE(h.sim->add_virtio_device(spec(*d, 0, "virtio,device2")).has_value());
        return *d;
    }
    /// Destroys the guest, lets the fake worker exit 0 (as `serve --domid N`
    /// does) and waits until the supervisor reaped it.
    void end_guest(xen::DomId domid) {
        ASSERT_TRUE(h.sim->destroy_domain(domid).has_value());
        fs::remove(w.flag);
        EXPECT_TRUE(h.eventually([&] { return h.on_io([&] { return h.manager->stats().workers_exited; }) == 1; }, 10s));
    }
    fs::path tmp;
    bool made;
    FakeWorker w;
    TempImage img;
    Host h;
    ManagerOptions mo;
};

TEST(WorkerCgroupE2E, ASupervisorStartedWorkerIsInItsOwnCpuCgroupWhichIsGoneAfterTheGuest) {
    RealGroup g;
    if (!g.skip.empty()) GTEST_SKIP() << g.skip;
    Rig r(g, "");
    const xen::DomId d1 = r.add_guest();
    ASSERT_NE(d1, 0);
    auto v = r.h.start(r.mo);
    ASSERT_TRUE(v.has_value()) << v.error().describe();

    ASSERT_TRUE(r.h.eventually([&] { return fs::exists(r.w.out); }, 10s)) << "the worker did not start";
    std::istringstream rec(slurp(r.w.out));
    int pid = 0;
    rec >> pid;
    ASSERT_GT(pid, 0);
    const std::string group = g.line + "/worker-" + std::to_string(d1);
    const fs::path group_dir = g.dir / ("worker-" + std::to_string(d1));
    // What the worker saw of itself, and what the kernel says now.
    EXPECT_NE(slurp(r.w.out).find(group + "\n"), std::string::npos) << slurp(r.w.out);
    EXPECT_NE(slurp("/proc/" + std::to_string(pid) + "/cgroup").find(group + "\n"), std::string::npos)
        << slurp("/proc/" + std::to_string(pid) + "/cgroup");
    ASSERT_TRUE(fs::is_directory(group_dir));
    const bool v2 = g.prefix == "0::";
    EXPECT_EQ(std::stoi(slurp(group_dir / (v2 ? "cpu.weight" : "cpu.shares"))), v2 ? 100 : 1024);
    EXPECT_NE(slurp(group_dir / "cgroup.procs").find(std::to_string(pid)), std::string::npos);

    // The guest goes; its worker exits 0 and is reaped; its group goes too.
    ASSERT_NO_FATAL_FAILURE(r.end_guest(d1));
    EXPECT_TRUE(r.h.eventually([&] { return !fs::exists(group_dir); }, 5s)) << group_dir << " left behind";
    EXPECT_EQ(r.h.on_io([&] { return r.h.manager->stats().workers_crashed; }), 0u);
    r.h.shutdown();
}

TEST(WorkerCgroupE2E, WithWorkerCgroupsOffTheWorkerStaysInTheSupervisorsGroup) {
    RealGroup g;
    if (!g.skip.empty()) GTEST_SKIP() << g.skip;
    Rig r(g, "off-");
    const xen::DomId d1 = r.add_guest();
    ASSERT_NE(d1, 0);
    r.mo.worker_cgroups.mode = WorkerCgroupMode::Off;
    ASSERT_TRUE(r.h.start(r.mo).has_value());
    ASSERT_TRUE(r.h.eventually([&] { return fs::exists(r.w.out); }, 10s));
    EXPECT_EQ(slurp(r.w.out).find("/worker-"), std::string::npos) << slurp(r.w.out);
    EXPECT_FALSE(fs::exists(g.dir / ("worker-" + std::to_string(d1))));
    ASSERT_NO_FATAL_FAILURE(r.end_guest(d1));
    r.h.shutdown();
}

}  // namespace
}  // namespace xv::daemon
