// SPDX-License-Identifier: GPL-2.0-only
// Privileges (R5), each in a forked child: after the filter is installed a
// forbidden syscall is refused (EPERM, or the process is killed under
// seccomp = "kill") while what the serving loop uses keeps working.
//
// The children leave with _exit(): LeakSanitizer's exit-time check stops
// the world with ptrace, which the filter (rightly) refuses.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <linux/capability.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <thread>

#include "fakes.h"
#include "privileges.h"

namespace xv::daemon {
namespace {

/// Runs `fn` in a forked child; returns the raw wait status.
int run_child(const std::function<int()>& fn) {
    pid_t pid = fork();
    if (pid == 0) _exit(fn());
    int status = 0;
    EXPECT_EQ(waitpid(pid, &status, 0), pid);
    return status;
}

/// Exit code bits for the child's checks (0 = all passed).
enum Bit : int {
    kInstall = 1 << 0,
    kExecve = 1 << 1,
    kInet = 1 << 2,
    kPtrace = 1 << 3,
    kUnix = 1 << 4,
    kEventfd = 1 << 5,
    kClockMmap = 1 << 6,
    kThread = 1 << 7,
    kOpenRead = 1 << 8,
    kOpenWrite = 1 << 9,
};

TEST(Privileges, SeccompRefusesForbiddenAndAllowsServingSyscalls) {
    int status = run_child([] {
        PrivilegeDropper d;
        if (!d.drop_capabilities({}) || !d.sandbox(SeccompMode::Errno, PrivilegeOptions::sanitizer_build()))
            return int(kInstall);
        if (d.state() != PrivilegeState::Sandboxed) return int(kInstall);
        int bad = 0;
        // Forbidden: new programs, the network, debugging other processes.
        char* const argv[] = {const_cast<char*>("/bin/true"), nullptr};
        errno = 0;
        if (!(execve("/bin/true", argv, environ) == -1 && errno == EPERM)) bad |= kExecve;
        errno = 0;
        if (!(socket(AF_INET, SOCK_STREAM, 0) == -1 && errno == EPERM)) bad |= kInet;
        errno = 0;
        if (!(ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) == -1 && errno == EPERM)) bad |= kPtrace;
        // Allowed: a unix socket (xenstore), eventfd I/O, time, memory, threads.
        int us = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (us < 0) bad |= kUnix;
        else close(us);
        int ev = eventfd(0, EFD_CLOEXEC);
        std::uint64_t one = 1, got = 0;
        if (ev < 0 || write(ev, &one, 8) != 8 || read(ev, &got, 8) != 8 || got != 1) bad |= kEventfd;
        if (ev >= 0) close(ev);
        timespec ts{};
        void* p = mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0 || p == MAP_FAILED || munmap(p, 1 << 20) != 0)
            bad |= kClockMmap;
        std::atomic<int> ran{0};
        try {
            std::thread t([&] { ran = getpid() > 0 ? 1 : 2; });
            t.join();
        } catch (...) {
        }
        if (ran != 1) bad |= kThread;
        // Read-only opens work (configuration reload); writing opens do not.
        int rd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
        if (rd < 0) bad |= kOpenRead;
        else close(rd);
        errno = 0;
        if (!(open("/tmp/xv-seccomp-must-not-exist", O_WRONLY | O_CREAT | O_CLOEXEC, 0600) == -1 && errno == EPERM))
            bad |= kOpenWrite;
        errno = 0;
        if (!(openat(AT_FDCWD, "/proc/self/status", O_RDWR | O_CLOEXEC) == -1 && errno == EPERM)) bad |= kOpenWrite;
        return bad;
    });
    ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    int bits = WEXITSTATUS(status);
    EXPECT_EQ(bits & kInstall, 0) << "filter not installed";
    EXPECT_EQ(bits & kExecve, 0) << "execve not refused with EPERM";
    EXPECT_EQ(bits & kInet, 0) << "socket(AF_INET) not refused with EPERM";
    EXPECT_EQ(bits & kPtrace, 0) << "ptrace not refused with EPERM";
    EXPECT_EQ(bits & kUnix, 0) << "socket(AF_UNIX) refused";
    EXPECT_EQ(bits & kEventfd, 0) << "eventfd I/O refused";
    EXPECT_EQ(bits & kClockMmap, 0) << "clock_gettime/mmap refused";
    EXPECT_EQ(bits & kThread, 0) << "thread creation refused";
    EXPECT_EQ(bits & kOpenRead, 0) << "read-only open refused";
    EXPECT_EQ(bits & kOpenWrite, 0) << "open for writing not refused with EPERM";
    EXPECT_FALSE(std::filesystem::exists("/tmp/xv-seccomp-must-not-exist"));
}

TEST(Privileges, KillModeKillsOnAForbiddenSyscall) {
    int status = run_child([] {
        if (!set_no_new_privs() || !install_seccomp(SeccompMode::Kill, PrivilegeOptions::sanitizer_build()))
            return 1;
        if (getpid() <= 0) return 2;  // allowed: still alive
        socket(AF_INET, SOCK_DGRAM, 0);
        return 3;  // not reached
    });
    ASSERT_TRUE(WIFSIGNALED(status)) << "exit " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    EXPECT_EQ(WTERMSIG(status), SIGSYS);
}

TEST(Privileges, OffInstallsNothing) {
    int status = run_child([] {
        if (!install_seccomp(SeccompMode::Off, false)) return 1;
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        if (s < 0) return 2;
        close(s);
        return 0;
    });
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(Privileges, NoNewPrivsIsSet) {
    int status = run_child([] {
        if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 0) return 1;  // not set before
        if (!set_no_new_privs()) return 2;
        return prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 ? 0 : 3;
    });
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(Privileges, CapabilitiesAreDroppedToTheKeptOnes) {
    auto before = effective_capabilities();
    ASSERT_TRUE(before);
    if (!(before.value() & (1ULL << CAP_CHOWN)) || !(before.value() & (1ULL << CAP_NET_ADMIN)))
        GTEST_SKIP() << "needs CAP_CHOWN and CAP_NET_ADMIN (run as root)";
    const bool had_setpcap = before.value() & (1ULL << CAP_SETPCAP);
    char tmpl[] = "/tmp/xv-caps-XXXXXX";
    int fd = mkstemp(tmpl);
    ASSERT_GE(fd, 0);
    close(fd);
    const std::string file = tmpl;
    int status = run_child([&] {
        if (chown(file.c_str(), 12345, 12345) != 0) return 1;  // allowed before
        PrivilegeDropper d;
        if (!d.drop_capabilities({CAP_NET_ADMIN})) return 2;
        if (d.state() != PrivilegeState::CapsDropped) return 3;
        auto eff = effective_capabilities();
        if (!eff || eff.value() != (1ULL << CAP_NET_ADMIN)) return 4;
        errno = 0;
        if (!(chown(file.c_str(), 0, 0) == -1 && errno == EPERM)) return 5;
        if (had_setpcap) {
            if (prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN, 0, 0, 0) != 0) return 6;
            if (prctl(PR_CAPBSET_READ, CAP_NET_ADMIN, 0, 0, 0) != 1) return 7;
        }
        return 0;
    });
    std::filesystem::remove(file);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "1 chown before, 2-3 drop, 4 effective set, 5 chown after, 6-7 bounding set";
}

TEST(Privileges, StateMachineOrderIsEnforced) {
    PrivilegeDropper d;
    EXPECT_EQ(d.state(), PrivilegeState::Setup);
    auto r = d.sandbox(SeccompMode::Errno, false);  // before dropping capabilities
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("setup"), std::string::npos);
    EXPECT_EQ(d.state(), PrivilegeState::Setup) << "a refused step changes nothing";

    testing::FakeHypervisor hv;
    ASSERT_TRUE(d.restrict_xen(hv, 5));
    EXPECT_EQ(d.state(), PrivilegeState::Restricted);
    EXPECT_EQ(hv.restricted_to, xen::DomId(5));
    EXPECT_FALSE(d.restrict_xen(hv, 6)) << "a worker restricts once";
    EXPECT_EQ(hv.restrict_calls, 1);
}

TEST(Privileges, FailedRestrictionStopsTheWorker) {
    testing::FakeHypervisor hv;
    hv.restrict_fails = true;
    PrivilegeDropper d;
    auto r = d.drop_all(&hv, 7, PrivilegeOptions{});
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("dom7"), std::string::npos) << r.error().message;
    EXPECT_EQ(d.state(), PrivilegeState::Failed);
    EXPECT_FALSE(d.drop_capabilities({})) << "nothing continues after a failure";
}

TEST(Privileges, DropAllInAChild) {
    int status = run_child([] {
        testing::FakeHypervisor hv;
        PrivilegeDropper d;
        PrivilegeOptions o;
        o.keep_caps = {CAP_NET_ADMIN};
        if (!d.drop_all(&hv, 9, o)) return 1;
        if (hv.restricted_to != xen::DomId(9)) return 2;
        if (d.state() != PrivilegeState::Sandboxed) return 3;
        errno = 0;
        if (!(socket(AF_INET6, SOCK_STREAM, 0) == -1 && errno == EPERM)) return 4;
        return 0;
    });
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(Privileges, SyscallListsAreNamed) {
    const auto& s = serving_syscalls();
    auto has = [&](const char* n) { return std::find(s.begin(), s.end(), n) != s.end(); };
    for (const char* n : {"io_uring_enter", "ioctl", "epoll_pwait", "futex", "sendmsg", "recvmsg", "exit_group"})
        EXPECT_TRUE(has(n)) << n;
    for (const char* n : {"execve", "ptrace", "bind", "listen", "clone3", "openat2"}) EXPECT_FALSE(has(n)) << n;
    EXPECT_FALSE(sanitizer_syscalls().empty());
}

}  // namespace
}  // namespace xv::daemon
