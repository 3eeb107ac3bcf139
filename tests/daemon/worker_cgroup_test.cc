// SPDX-License-Identifier: GPL-2.0-only
// Worker cgroups (daemon/worker_cgroup.h) against a cgroup tree in a
// temporary directory: the files a kernel would create in a new group are
// made by the test (mkdir in a real cgroup file system makes them), and a
// group "empties" when the test removes them (rmdir of a real group with
// no process succeeds). The real hierarchies are exercised end to end in
// tests/integration/worker_cgroup_e2e.cc.
#include <gtest/gtest.h>

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "worker_cgroup.h"

namespace xv::daemon {
namespace {

namespace fs = std::filesystem;

std::string read(const fs::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void write(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }

/// The log lines written while it lives.
struct LogCapture {
    LogCapture() : sink(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(100)) {
        sink->set_pattern("%l %v");
        spdlog::default_logger()->sinks().push_back(sink);
    }
    ~LogCapture() { spdlog::default_logger()->sinks().pop_back(); }
    std::string text() const {
        std::string out;
        for (const auto& l : sink->last_formatted()) out += l + "\n";
        return out;
    }
    std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink;
};

/// A fake cgroup file system: <root>/proc-self-cgroup and the hierarchy.
struct Tree {
    Tree() {
        root = fs::temp_directory_path() /
               ("xv-cgroup-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
        fs::create_directories(root);
    }
    ~Tree() {
        std::error_code ec;
        fs::remove_all(root, ec);
    }
    /// The files the kernel creates in a v1 cpu group / a v2 group.
    static void v1_group(const fs::path& d) {
        fs::create_directories(d);
        write(d / "cpu.shares", "1024\n");
        write(d / "cgroup.procs", "");
        write(d / "tasks", "");
    }
    static void v2_group(const fs::path& d, const std::string& controllers = "cpu memory pids") {
        fs::create_directories(d);
        write(d / "cgroup.controllers", controllers + "\n");
        write(d / "cgroup.subtree_control", "\n");
        write(d / "cgroup.procs", "");
        write(d / "cpu.weight", "100\n");
    }
    /// As a process of `path` sees /proc/self/cgroup (v1 cpu, or v2 only).
    void self_in_v1(const std::string& path) {
        write(root / "self-cgroup", "9:name=systemd:/\n4:memory:/x\n2:cpuacct:/\n1:cpu:" + path + "\n0::/\n");
    }
    void self_in_v2(const std::string& path) { write(root / "self-cgroup", "0::" + path + "\n"); }
    WorkerCgroupOptions options() const {
        WorkerCgroupOptions o;
        o.fs_root = (root / "fs").string();
        o.proc_self_cgroup = (root / "self-cgroup").string();
        return o;
    }
    fs::path fs_dir() const { return root / "fs"; }
    fs::path root;
    static inline int counter = 0;
};

/// Empties a fake group (a reaped worker's), as the kernel's count drops.
void empty_group(const fs::path& d) {
    for (const auto& e : fs::directory_iterator(d)) fs::remove(e.path());
}

TEST(WorkerCgroups, V1GroupPerWorkerWithEqualSharesAndThePidPlacedBeforeExec) {
    Tree t;
    const fs::path own = t.fs_dir() / "cpu/system.slice/xen-virtiod.service";
    Tree::v1_group(t.fs_dir() / "cpu");
    Tree::v1_group(own);
    t.self_in_v1("/system.slice/xen-virtiod.service");
    LogCapture log;
    auto cg = WorkerCgroups::setup(t.options());
    ASSERT_TRUE(cg->enabled()) << cg->why_not() << "\n" << log.text();
    EXPECT_EQ(cg->layout(), WorkerCgroups::Layout::V1);
    EXPECT_EQ(cg->base(), own.string());
    EXPECT_FALSE(fs::exists(own / "supervisor")) << "v1 has no internal-process rule: the supervisor stays";
    EXPECT_NE(log.text().find("worker-<domid>"), std::string::npos) << log.text();

    for (int dom : {3, 7}) {
        Tree::v1_group(own / ("worker-" + std::to_string(dom)));  // what mkdir makes in cgroupfs
        write(own / ("worker-" + std::to_string(dom)) / "cpu.shares", "2");  // not the weight wanted
        auto slot = cg->prepare(xen::DomId(dom));
        ASSERT_TRUE(slot.has_value()) << slot.error().describe();
        EXPECT_EQ(slot->path(), (own / ("worker-" + std::to_string(dom))).string());
        EXPECT_EQ(read(own / ("worker-" + std::to_string(dom)) / "cpu.shares"), "1024");
        // The child writes "0" (itself) between fork and exec.
        pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) ::_exit(slot->enter() ? 0 : 1);
        int st = 0;
        ASSERT_EQ(::waitpid(pid, &st, 0), pid);
        EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        EXPECT_EQ(read(own / ("worker-" + std::to_string(dom)) / "cgroup.procs"), "0");
    }
}

TEST(WorkerCgroups, V1InTheHierarchyRootMakesAGroupOfItsOwn) {
    Tree t;
    Tree::v1_group(t.fs_dir() / "cpu");
    Tree::v1_group(t.fs_dir() / "cpu/xen-virtiod");  // its files, as mkdir would make them
    write(t.fs_dir() / "cpu/xen-virtiod/cpu.shares", "2");
    t.self_in_v1("/");
    auto cg = WorkerCgroups::setup(t.options());
    ASSERT_TRUE(cg->enabled()) << cg->why_not();
    EXPECT_EQ(cg->base(), (t.fs_dir() / "cpu/xen-virtiod").string());
    EXPECT_EQ(read(t.fs_dir() / "cpu/xen-virtiod/cpu.shares"), "1024");
}

TEST(WorkerCgroups, V2MovesTheSupervisorIntoALeafEnablesCpuAndGivesEachWorkerWeight100) {
    Tree t;
    const fs::path own = t.fs_dir() / "system.slice/xen-virtiod.service";
    Tree::v2_group(t.fs_dir());
    Tree::v2_group(own);
    write(own / "cgroup.procs", "4242\n");  // the supervisor
    Tree::v2_group(own / "supervisor");
    t.self_in_v2("/system.slice/xen-virtiod.service");
    auto cg = WorkerCgroups::setup(t.options());
    ASSERT_TRUE(cg->enabled()) << cg->why_not();
    EXPECT_EQ(cg->layout(), WorkerCgroups::Layout::V2);
    EXPECT_EQ(cg->base(), own.string());
    EXPECT_EQ(read(own / "supervisor/cgroup.procs"), "4242") << "moved before the controller was enabled";
    EXPECT_EQ(read(own / "cgroup.subtree_control"), "+cpu");

    Tree::v2_group(own / "worker-12");
    write(own / "worker-12/cpu.weight", "1");
    auto slot = cg->prepare(12);
    ASSERT_TRUE(slot.has_value()) << slot.error().describe();
    EXPECT_EQ(read(own / "worker-12/cpu.weight"), "100");
    ASSERT_TRUE(slot->place(777).has_value());
    EXPECT_EQ(read(own / "worker-12/cgroup.procs"), "777");
}

TEST(WorkerCgroups, V2InTheHierarchyRootEnablesCpuOnBothLevelsAboveTheWorkers) {
    // No service manager (the daemon in the root group, as in the lab's
    // Dom0): the workers go under <root>/xen-virtiod, and cpu must be
    // enabled in the root's and in xen-virtiod's subtree_control, or the
    // kernel gives worker-<domid> no cpu.weight.
    Tree t;
    Tree::v2_group(t.fs_dir());
    write(t.fs_dir() / "cgroup.procs", "1\n4242\n");
    Tree::v2_group(t.fs_dir() / "xen-virtiod");
    t.self_in_v2("/");
    auto cg = WorkerCgroups::setup(t.options());
    ASSERT_TRUE(cg->enabled()) << cg->why_not();
    EXPECT_EQ(cg->base(), (t.fs_dir() / "xen-virtiod").string());
    EXPECT_EQ(read(t.fs_dir() / "cgroup.subtree_control"), "+cpu");
    EXPECT_EQ(read(t.fs_dir() / "xen-virtiod/cgroup.subtree_control"), "+cpu");
    EXPECT_EQ(read(t.fs_dir() / "cgroup.procs"), "1\n4242\n") << "the root may hold processes: nobody moved";
}

TEST(WorkerCgroups, V2WithCpuAlreadyEnabledDoesNotMoveAnything) {
    Tree t;
    const fs::path own = t.fs_dir() / "s.slice/x.service";
    Tree::v2_group(t.fs_dir());
    Tree::v2_group(own);
    write(own / "cgroup.subtree_control", "cpu\n");
    t.self_in_v2("/s.slice/x.service");
    auto cg = WorkerCgroups::setup(t.options());
    ASSERT_TRUE(cg->enabled()) << cg->why_not();
    EXPECT_FALSE(fs::exists(own / "supervisor"));
    EXPECT_EQ(read(own / "cgroup.subtree_control"), "cpu\n");
}

TEST(WorkerCgroups, V2OnAHybridHostIsFoundUnderUnified) {
    Tree t;
    const fs::path own = t.fs_dir() / "unified/a.service";
    Tree::v2_group(t.fs_dir() / "unified");
    Tree::v2_group(own);
    Tree::v2_group(own / "supervisor");
    t.self_in_v2("/a.service");
    auto cg = WorkerCgroups::setup(t.options());
    ASSERT_TRUE(cg->enabled()) << cg->why_not();
    EXPECT_EQ(cg->base(), own.string());
}

TEST(WorkerCgroups, ReleaseRemovesTheGroupAndRetriesWhileItIsBusy) {
    Tree t;
    const fs::path own = t.fs_dir() / "cpu/svc";
    Tree::v1_group(t.fs_dir() / "cpu");
    Tree::v1_group(own);
    t.self_in_v1("/svc");
    auto cg = WorkerCgroups::setup(t.options());
    ASSERT_TRUE(cg->enabled());
    Tree::v1_group(own / "worker-4");
    ASSERT_TRUE(cg->prepare(4).has_value());
    // Not empty yet (here: the fake's files; on the kernel: EBUSY for a moment).
    cg->release(4);
    EXPECT_TRUE(fs::exists(own / "worker-4"));
    EXPECT_EQ(cg->pending(), 1u);
    empty_group(own / "worker-4");
    cg->retry();
    EXPECT_FALSE(fs::exists(own / "worker-4"));
    EXPECT_EQ(cg->pending(), 0u);
    // Empty at once: removed by release() itself.
    fs::create_directories(own / "worker-5");
    cg->release(5);
    EXPECT_FALSE(fs::exists(own / "worker-5"));
    EXPECT_EQ(cg->pending(), 0u);
    // A restarted worker wants its group again: no longer due for removal.
    Tree::v1_group(own / "worker-6");
    ASSERT_TRUE(cg->prepare(6).has_value());
    cg->release(6);
    ASSERT_EQ(cg->pending(), 1u);
    ASSERT_TRUE(cg->prepare(6).has_value());
    EXPECT_EQ(cg->pending(), 0u);
}

TEST(WorkerCgroups, StaleWorkerGroupsOfAnEarlierRunAreRemovedAtSetup) {
    Tree t;
    const fs::path own = t.fs_dir() / "cpu/svc";
    Tree::v1_group(t.fs_dir() / "cpu");
    Tree::v1_group(own);
    fs::create_directories(own / "worker-3");
    fs::create_directories(own / "worker-9");
    Tree::v1_group(own / "worker-5");  // still populated
    fs::create_directories(own / "other");
    t.self_in_v1("/svc");
    LogCapture log;
    auto cg = WorkerCgroups::setup(t.options());
    ASSERT_TRUE(cg->enabled());
    EXPECT_FALSE(fs::exists(own / "worker-3"));
    EXPECT_FALSE(fs::exists(own / "worker-9"));
    EXPECT_TRUE(fs::exists(own / "worker-5"));
    EXPECT_TRUE(fs::exists(own / "other")) << "only worker-* groups are ours";
    EXPECT_NE(log.text().find("cannot remove " + (own / "worker-5").string()), std::string::npos) << log.text();
}

/// The fallback: one warning naming what, why and what to do; a disabled
/// object whose methods do nothing.
void expect_fallback(const Tree& t, const std::string& why, const LogCapture& log) {
    auto cg = WorkerCgroups::setup(t.options());
    EXPECT_FALSE(cg->enabled());
    EXPECT_NE(cg->why_not().find(why), std::string::npos) << cg->why_not();
    const std::string text = log.text();
    EXPECT_NE(text.find("warning worker cgroups: not used: "), std::string::npos) << text;
    EXPECT_NE(text.find(why), std::string::npos) << text;
    EXPECT_NE(text.find("Delegate=cpu"), std::string::npos) << text;
    EXPECT_NE(text.find("worker_cgroups = \"off\""), std::string::npos) << text;
    auto slot = cg->prepare(1);
    EXPECT_FALSE(slot.has_value());
    cg->release(1);
    cg->retry();
    EXPECT_EQ(cg->pending(), 0u);
}

TEST(WorkerCgroups, V2WithoutTheCpuControllerFallsBackWithOneLogLine) {
    Tree t;
    Tree::v2_group(t.fs_dir());
    Tree::v2_group(t.fs_dir() / "system.slice/x.service", "memory pids");
    t.self_in_v2("/system.slice/x.service");
    LogCapture log;
    expect_fallback(t, "the cpu controller is not available", log);
    EXPECT_FALSE(fs::exists(t.fs_dir() / "system.slice/x.service/supervisor")) << "nothing moved";
}

TEST(WorkerCgroups, AKernelRefusalAtSetupFallsBack) {
    Tree t;
    const fs::path own = t.fs_dir() / "system.slice/x.service";
    Tree::v2_group(t.fs_dir());
    Tree::v2_group(own);
    Tree::v2_group(own / "supervisor");
    fs::remove(own / "cgroup.subtree_control");
    fs::create_directories(own / "cgroup.subtree_control");  // cannot be written
    t.self_in_v2("/system.slice/x.service");
    LogCapture log;
    expect_fallback(t, "cgroup.subtree_control", log);
}

TEST(WorkerCgroups, NoCgroupFileSystemFallsBack) {
    Tree t;
    t.self_in_v1("/svc");  // but no <fs>/cpu hierarchy
    {
        LogCapture log;
        expect_fallback(t, "no cgroup v1 cpu hierarchy", log);
    }
    t.self_in_v2("/svc");  // and no v2 mount either
    {
        LogCapture log;
        expect_fallback(t, "no cgroup v2 hierarchy", log);
    }
    std::filesystem::remove(t.root / "self-cgroup");
    LogCapture log;
    expect_fallback(t, "lists neither", log);
}

TEST(WorkerCgroups, OffIsOffWithoutTouchingTheTree) {
    Tree t;
    const fs::path own = t.fs_dir() / "system.slice/x.service";
    Tree::v2_group(t.fs_dir());
    Tree::v2_group(own);
    write(own / "cgroup.procs", "4242\n");
    t.self_in_v2("/system.slice/x.service");
    auto o = t.options();
    o.mode = WorkerCgroupMode::Off;
    LogCapture log;
    auto cg = WorkerCgroups::setup(o);
    EXPECT_FALSE(cg->enabled());
    EXPECT_FALSE(fs::exists(own / "supervisor"));
    EXPECT_EQ(read(own / "cgroup.subtree_control"), "\n");
    EXPECT_NE(log.text().find("worker_cgroups = \"off\""), std::string::npos) << log.text();
}

TEST(WorkerCgroups, APrepareTheKernelRefusesIsAnErrorAndLeavesNoGroup) {
    Tree t;
    const fs::path own = t.fs_dir() / "cpu/svc";
    Tree::v1_group(t.fs_dir() / "cpu");
    Tree::v1_group(own);
    t.self_in_v1("/svc");
    auto cg = WorkerCgroups::setup(t.options());
    ASSERT_TRUE(cg->enabled());
    // mkdir made an empty directory: no cpu.shares to write (as a hierarchy
    // without the cpu controller would).
    auto slot = cg->prepare(8);
    ASSERT_FALSE(slot.has_value());
    EXPECT_NE(slot.error().message.find("cpu.shares"), std::string::npos) << slot.error().describe();
    EXPECT_FALSE(fs::exists(own / "worker-8"));
    // A slot that is not valid: enter() reports failure, place() an error.
    WorkerCgroupSlot none;
    EXPECT_FALSE(none.enter());
    EXPECT_FALSE(none.place(1).has_value());
}

TEST(WorkerCgroups, HostileCgroupPathsAreRefused) {
    Tree t;
    Tree::v1_group(t.fs_dir() / "cpu");
    t.self_in_v1("/../../etc");
    LogCapture log;
    expect_fallback(t, "unusable cpu cgroup path", log);
}

}  // namespace
}  // namespace xv::daemon
