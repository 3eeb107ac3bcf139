// SPDX-License-Identifier: GPL-2.0-only
// R5 (seed "Privileges"): a worker serving one guest keeps only what its
// serving loop needs. After setup (handles opened, ioreq server created,
// taps and images opened, sockets bound) it drops, in this order:
//
//   +-------+ restrict_xen  +------------+ drop_capabilities +-------------+
//   | Setup | ------------> | Restricted | ----------------> | CapsDropped |
//   +-------+ (restrict_all +------------+  (bounding set,   +-------------+
//       |      to the guest)                  capset, ambient)      |
//       |                                                  no_new_privs +
//       | any step fails: the worker exits, the guest      install_seccomp
//       v is not served (a SafeVM never unrestricted)              v
//   +--------+                                               +-----------+
//   | Failed |                                               | Sandboxed |
//   +--------+                                               +-----------+
//
// Every step is one-way: nothing here can be undone by the process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config.h"
#include "xv/result.h"
#include "xv/xen/hypervisor.h"
#include "xv/xen/types.h"

namespace xv::daemon {

/// Where a worker is in dropping its privileges.
enum class PrivilegeState : std::uint8_t { Setup, Restricted, CapsDropped, Sandboxed, Failed };

/// "setup" | "restricted" | "caps-dropped" | "sandboxed" | "failed".
const char* to_string(PrivilegeState s);

/// What a worker keeps and how the filter acts.
struct PrivilegeOptions {
    /// Capabilities (CAP_* numbers) kept in the permitted and effective
    /// sets; every other one is dropped. Empty: keep none.
    std::vector<int> keep_caps;
    /// Action for a syscall the filter does not allow (Off: no filter).
    SeccompMode seccomp = SeccompMode::Errno;
    /// Also allow what ASan/UBSan/LSan need to print a report (see
    /// sanitizer_syscalls()); on by default in a sanitizer build.
    bool allow_sanitizer_syscalls = sanitizer_build();

    /// True when this binary was built with AddressSanitizer.
    static constexpr bool sanitizer_build() {
#if defined(__SANITIZE_ADDRESS__)
        return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
        return true;
#else
        return false;
#endif
#else
        return false;
#endif
    }
};

/// The syscalls the serving loop uses (names as libseccomp knows them;
/// names that do not exist on this architecture are skipped). socket is
/// allowed for AF_UNIX only, open/openat read-only, clone only for
/// threads, kill/tgkill only on this process; clone3 answers ENOSYS so
/// that libc falls back to clone. Files, taps and sockets a worker writes
/// must be opened before the filter goes on.
const std::vector<std::string>& serving_syscalls();

/// The extra syscalls sanitizers use to print a report: readlink and
/// getdents64 (they read /proc/self/maps and the binary path), sigaltstack
/// and prctl (their signal handlers), getrusage (report statistics),
/// prlimit64, and a few stat calls.
const std::vector<std::string>& sanitizer_syscalls();

/// Tracks one worker through the state machine above.
class PrivilegeDropper {
public:
    PrivilegeDropper() = default;

    /// Setup -> Restricted: every Xen handle of this process, opened before
    /// or after, can only affect `guest` (Hypervisor::restrict_all).
    Result<void> restrict_xen(xen::Hypervisor& hv, xen::DomId guest);

    /// Restricted (or Setup when Xen is not restricted by the caller) ->
    /// CapsDropped: drops every capability but `keep` from the bounding
    /// set (when CAP_SETPCAP allows), clears the ambient set, and sets
    /// permitted = effective = keep, inheritable = none (capset).
    Result<void> drop_capabilities(const std::vector<int>& keep);

    /// CapsDropped -> Sandboxed: PR_SET_NO_NEW_PRIVS, then a seccomp
    /// filter on every thread of the process (TSYNC) allowing only
    /// serving_syscalls() (+ sanitizer_syscalls() when asked).
    Result<void> sandbox(SeccompMode mode, bool allow_sanitizer_syscalls);

    /// All three steps. `hv` may be null (no Xen handles to restrict:
    /// tests, demo); then the Restricted step is skipped.
    Result<void> drop_all(xen::Hypervisor* hv, xen::DomId guest, const PrivilegeOptions& opts);

    /// The current state.
    PrivilegeState state() const { return state_; }

private:
    Result<void> fail(Error e);
    PrivilegeState state_ = PrivilegeState::Setup;
};

/// True once install_seccomp() put a filter on this process (calls the
/// filter does not allow, such as sched_setscheduler, must not be made).
bool seccomp_installed();

/// Sets PR_SET_NO_NEW_PRIVS (execve can never gain privileges again).
Result<void> set_no_new_privs();

/// Installs the seccomp filter (see PrivilegeDropper::sandbox). Requires
/// no_new_privs or CAP_SYS_ADMIN.
Result<void> install_seccomp(SeccompMode mode, bool allow_sanitizer_syscalls);

/// The effective capability set of this thread as a bit mask (bit n = CAP n).
Result<std::uint64_t> effective_capabilities();

}  // namespace xv::daemon
