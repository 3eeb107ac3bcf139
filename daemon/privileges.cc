// SPDX-License-Identifier: GPL-2.0-only
#include "privileges.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace xv::daemon {

namespace {

std::atomic<bool> g_seccomp_installed{false};

/// Highest capability number this kernel knows (PR_CAPBSET_READ fails
/// with EINVAL past it).
int last_cap() {
    int c = 0;
    while (c < 63 && prctl(PR_CAPBSET_READ, c + 1, 0, 0, 0) >= 0) ++c;
    return c;
}

struct CapSets {
    std::uint64_t effective = 0, permitted = 0, inheritable = 0;
};

Result<CapSets> capget_self() {
    __user_cap_header_struct hdr{};
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    hdr.pid = 0;
    __user_cap_data_struct data[2]{};
    if (syscall(SYS_capget, &hdr, data) != 0) return errno_error(errno, "capget");
    CapSets s;
    s.effective = std::uint64_t(data[1].effective) << 32 | data[0].effective;
    s.permitted = std::uint64_t(data[1].permitted) << 32 | data[0].permitted;
    s.inheritable = std::uint64_t(data[1].inheritable) << 32 | data[0].inheritable;
    return s;
}

Result<void> capset_self(const CapSets& s) {
    __user_cap_header_struct hdr{};
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    hdr.pid = 0;
    __user_cap_data_struct data[2]{};
    for (int i = 0; i < 2; ++i) {
        data[i].effective = std::uint32_t(s.effective >> (32 * i));
        data[i].permitted = std::uint32_t(s.permitted >> (32 * i));
        data[i].inheritable = std::uint32_t(s.inheritable >> (32 * i));
    }
    if (syscall(SYS_capset, &hdr, data) != 0) return errno_error(errno, "capset");
    return ok();
}

/// Adds an allow rule for a syscall name; names unknown on this
/// architecture are skipped.
Result<void> allow(scmp_filter_ctx ctx, const std::string& name) {
    int nr = seccomp_syscall_resolve_name(name.c_str());
    if (nr == __NR_SCMP_ERROR || nr < 0) return ok();
    int rc;
    if (name == "socket" || name == "socketpair") {
        // Only unix sockets (xenstore's socket, the journal, console
        // sockets): a compromised worker cannot reach the network.
        // (datum_b, unused by EQ, is spelled out: clang warns about the
        // macro's missing field initializer otherwise.)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, SCMP_A0(SCMP_CMP_EQ, AF_UNIX, 0));
    } else if (name == "clone") {
        // Threads only (the Asio pool); no new processes.
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, std::uint64_t(CLONE_THREAD), std::uint64_t(CLONE_THREAD)));
    } else if (name == "openat" || name == "open") {
        // Read-only opens (a SIGHUP reload reads the configuration); no
        // creating, truncating or writing files after setup.
        const std::uint64_t mask = O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND | (O_TMPFILE & ~O_DIRECTORY);
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                              name == "openat" ? SCMP_A2(SCMP_CMP_MASKED_EQ, mask, 0)
                                               : SCMP_A1(SCMP_CMP_MASKED_EQ, mask, 0));
    } else if (name == "kill" || name == "tgkill") {
        // Signals to this process only (abort(), raise()).
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, SCMP_A0(SCMP_CMP_EQ, std::uint64_t(getpid()), 0));
    } else {
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
    }
    if (rc < 0) return errno_error(-rc, "seccomp: allow " + name);
    return ok();
}

}  // namespace

const char* to_string(PrivilegeState s) {
    switch (s) {
        case PrivilegeState::Setup: return "setup";
        case PrivilegeState::Restricted: return "restricted";
        case PrivilegeState::CapsDropped: return "caps-dropped";
        case PrivilegeState::Sandboxed: return "sandboxed";
        case PrivilegeState::Failed: return "failed";
    }
    return "?";
}

const std::vector<std::string>& serving_syscalls() {
    static const std::vector<std::string> list{
        // data path: images, taps, ptys, eventfds, Xen device fds
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
        "openat", "open", "lseek", "close", "fcntl", "dup", "dup3", "pipe2", "fstat", "newfstatat", "statx",
        "fsync", "fdatasync", "fallocate", "sync_file_range",
        // ioctl: /dev/xen/{evtchn,gntdev,privcmd} and TUN/tap need it
        "ioctl",
        // Asio: io_uring for files, epoll for descriptors, eventfd/timerfd
        // (a device creates its ring when the guest activates it)
        "io_uring_setup", "io_uring_enter", "io_uring_register",
        "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll",
        "eventfd2", "timerfd_create", "timerfd_settime", "timerfd_gettime",
        // memory: allocator, grant mappings (mmap of gntdev), ioreq pages
        "mmap", "munmap", "mprotect", "madvise", "mremap", "brk", "msync", "memfd_create",
        // threads and time
        "futex", "clone", "set_robust_list", "rseq", "sched_yield", "sched_getaffinity",
        "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday",
        "getpid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getrandom",
        // xenstore's unix socket, the journal, console sockets
        "socket", "socketpair", "connect", "accept4", "sendmsg", "recvmsg", "sendto", "recvfrom",
        "getsockopt", "setsockopt", "getsockname", "getpeername", "shutdown",
        // signals and exit
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "kill", "tgkill",
        "restart_syscall", "exit", "exit_group",
    };
    return list;
}

const std::vector<std::string>& sanitizer_syscalls() {
    // What ASan/UBSan use when they print a report or start a thread:
    // reading /proc/self/maps and the binary (read-only open/openat are in
    // the serving list; readlink, getdents64), their alternate signal stack
    // (sigaltstack), prctl (PR_GET_DUMPABLE, thread names), statistics
    // (getrusage), limits (prlimit64), stat calls.
    static const std::vector<std::string> list{"readlink",  "readlinkat", "getdents64", "sigaltstack",
                                               "prctl",     "getrusage",  "prlimit64",  "getrlimit",
                                               "stat",      "lstat",      "access",     "faccessat"};
    return list;
}

Result<void> PrivilegeDropper::fail(Error e) {
    state_ = PrivilegeState::Failed;
    return e;
}

Result<void> PrivilegeDropper::restrict_xen(xen::Hypervisor& hv, xen::DomId guest) {
    if (state_ != PrivilegeState::Setup)
        return make_error(std::errc::operation_not_permitted,
                          std::string("restrict Xen handles: worker is ") + to_string(state_) + ", not setup");
    // xen-facts §2.7: xentoolcore_restrict_all can be done once per process,
    // for one domid: a worker serves exactly one guest (R5).
    if (auto r = hv.restrict_all(guest); !r)
        return fail(Error{r.error().code, "restrict Xen handles to dom" + std::to_string(guest) + ": " +
                                              r.error().message});
    state_ = PrivilegeState::Restricted;
    return ok();
}

Result<void> PrivilegeDropper::drop_capabilities(const std::vector<int>& keep) {
    if (state_ != PrivilegeState::Setup && state_ != PrivilegeState::Restricted)
        return make_error(std::errc::operation_not_permitted,
                          std::string("drop capabilities: worker is ") + to_string(state_));
    std::uint64_t keep_mask = 0;
    for (int c : keep) {
        if (c < 0 || c > 63) return fail(make_error(std::errc::invalid_argument, "drop capabilities: bad CAP number"));
        keep_mask |= 1ULL << c;
    }
    auto cur = capget_self();
    if (!cur) return fail(std::move(cur).error());

    // Bounding set: needs CAP_SETPCAP. Without it, no_new_privs (set in the
    // next step) already stops execve from gaining anything.
    if (cur->effective & (1ULL << CAP_SETPCAP)) {
        const int last = last_cap();
        for (int c = 0; c <= last; ++c) {
            if (keep_mask & (1ULL << c)) continue;
            if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL)
                return fail(errno_error(errno, "PR_CAPBSET_DROP " + std::to_string(c)));
        }
    }
    // Ambient set (Linux 4.3+): EINVAL on older kernels means there is none.
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        return fail(errno_error(errno, "PR_CAP_AMBIENT_CLEAR_ALL"));

    CapSets next;
    next.permitted = cur->permitted & keep_mask;
    next.effective = next.permitted;
    next.inheritable = 0;
    if (auto r = capset_self(next); !r) return fail(std::move(r).error());
    state_ = PrivilegeState::CapsDropped;
    return ok();
}

Result<void> PrivilegeDropper::sandbox(SeccompMode mode, bool allow_sanitizer_syscalls) {
    if (state_ != PrivilegeState::CapsDropped)
        return make_error(std::errc::operation_not_permitted,
                          std::string("sandbox: worker is ") + to_string(state_) + ", not caps-dropped");
    if (auto r = set_no_new_privs(); !r) return fail(std::move(r).error());
    if (auto r = install_seccomp(mode, allow_sanitizer_syscalls); !r) return fail(std::move(r).error());
    state_ = PrivilegeState::Sandboxed;
    return ok();
}

Result<void> PrivilegeDropper::drop_all(xen::Hypervisor* hv, xen::DomId guest, const PrivilegeOptions& opts) {
    if (hv) XV_TRY(restrict_xen(*hv, guest));
    XV_TRY(drop_capabilities(opts.keep_caps));
    return sandbox(opts.seccomp, opts.allow_sanitizer_syscalls);
}

Result<void> set_no_new_privs() {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return errno_error(errno, "PR_SET_NO_NEW_PRIVS");
    return ok();
}

Result<void> install_seccomp(SeccompMode mode, bool allow_sanitizer_syscalls) {
    if (mode == SeccompMode::Off) return ok();
    scmp_filter_ctx ctx = seccomp_init(mode == SeccompMode::Kill ? SCMP_ACT_KILL_PROCESS : SCMP_ACT_ERRNO(EPERM));
    if (!ctx) return errno_error(ENOMEM, "seccomp_init");
    struct Release {
        scmp_filter_ctx c;
        ~Release() { seccomp_release(c); }
    } release{ctx};

    // Every thread of the worker gets the filter, not only the caller.
    if (int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1); rc < 0)
        return errno_error(-rc, "seccomp: TSYNC");
    for (const auto& name : serving_syscalls()) XV_TRY(allow(ctx, name));
    if (allow_sanitizer_syscalls)
        for (const auto& name : sanitizer_syscalls()) XV_TRY(allow(ctx, name));
    // clone3 passes its flags in memory, where a filter cannot look:
    // answer ENOSYS so that libc falls back to clone (filtered above).
    int clone3 = seccomp_syscall_resolve_name("clone3");
    if (clone3 >= 0)
        if (int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), clone3, 0); rc < 0)
            return errno_error(-rc, "seccomp: clone3");
    if (int rc = seccomp_load(ctx); rc < 0) return errno_error(-rc, "seccomp_load");
    g_seccomp_installed = true;
    return ok();
}

bool seccomp_installed() { return g_seccomp_installed.load(); }

Result<std::uint64_t> effective_capabilities() {
    auto s = capget_self();
    if (!s) return std::move(s).error();
    return s->effective;
}

}  // namespace xv::daemon
