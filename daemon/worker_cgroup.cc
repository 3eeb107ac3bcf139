// SPDX-License-Identifier: GPL-2.0-only
#include "worker_cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

namespace xv::daemon {

namespace {

constexpr const char* kOperatorHint =
    "run xen-virtiod.service with Delegate=cpu (as shipped), or set [daemon] worker_cgroups = \"off\" to silence "
    "this";

bool is_dir(const std::string& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& p) { return ::access(p.c_str(), F_OK) == 0; }

/// Writes `text` to a cgroup control file in one write(2) (the kernel
/// parses each write on its own).
Result<void> put(const std::string& file, const std::string& text) {
    const int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno_error(errno, "open " + file);
    const ssize_t n = ::write(fd, text.data(), text.size());
    const int err = errno;
    ::close(fd);
    if (n < 0) return errno_error(err, "write '" + text + "' to " + file);
    if (std::size_t(n) != text.size()) return make_error(std::errc::io_error, "short write to " + file);
    return ok();
}

std::string slurp(const std::string& file) {
    std::ifstream f(file);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

/// Whitespace-separated words of a control file (cgroup.controllers, ...).
std::vector<std::string> words(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string w; in >> w;) out.push_back(w);
    return out;
}

bool has_word(const std::string& text, const std::string& w) {
    for (const auto& x : words(text))
        if (x == w) return true;
    return false;
}

Result<void> make_dir(const std::string& p) {
    if (::mkdir(p.c_str(), 0755) == 0 || (errno == EEXIST && is_dir(p))) return ok();
    return errno_error(errno, "mkdir " + p);
}

/// A cgroup path from /proc/self/cgroup: absolute, no "..", no
/// "(deleted)" suffix. Returns the empty string when it is not usable.
std::string clean_path(std::string p) {
    if (p.empty() || p[0] != '/') return {};
    if (p.find("/..") != std::string::npos || p.find(' ') != std::string::npos) return {};
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    return p;
}

}  // namespace

// --- the slot ----------------------------------------------------------------

WorkerCgroupSlot::WorkerCgroupSlot(int fd, std::string path)
    : fd_(fd), path_(std::move(path)),
      failure_line_("xen-virtiod: worker cannot enter its cgroup " + path_ +
                    "; it runs in the supervisor's cgroup, without a CPU share of its own\n") {}

WorkerCgroupSlot::~WorkerCgroupSlot() {
    if (fd_ >= 0) ::close(fd_);
}

WorkerCgroupSlot::WorkerCgroupSlot(WorkerCgroupSlot&& o) noexcept
    : fd_(o.fd_), path_(std::move(o.path_)), failure_line_(std::move(o.failure_line_)) {
    o.fd_ = -1;
}

WorkerCgroupSlot& WorkerCgroupSlot::operator=(WorkerCgroupSlot&& o) noexcept {
    if (this != &o) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = o.fd_;
        o.fd_ = -1;
        path_ = std::move(o.path_);
        failure_line_ = std::move(o.failure_line_);
    }
    return *this;
}

bool WorkerCgroupSlot::enter() const noexcept {
    // Only write(2) here: the caller may be the child of a multi-threaded
    // process between fork and exec. "0" is the writing process itself
    // (cgroup-v2.rst "cgroup.procs"; v1 alike).
    if (fd_ >= 0 && ::write(fd_, "0", 1) == 1) return true;
    if (!failure_line_.empty()) {
        ssize_t r = ::write(STDERR_FILENO, failure_line_.data(), failure_line_.size());
        (void)r;
    }
    return false;
}

Result<void> WorkerCgroupSlot::place(int pid) const {
    if (fd_ < 0) return make_error(std::errc::bad_file_descriptor, "no cgroup to place pid " + std::to_string(pid));
    const std::string text = std::to_string(pid);
    if (::write(fd_, text.data(), text.size()) != ssize_t(text.size()))
        return errno_error(errno, "move pid " + text + " into " + path_);
    return ok();
}

// --- setup -------------------------------------------------------------------

std::shared_ptr<WorkerCgroups> WorkerCgroups::setup(const WorkerCgroupOptions& o) {
    std::shared_ptr<WorkerCgroups> cg(new WorkerCgroups());
    if (o.mode == WorkerCgroupMode::Off) {
        cg->why_not_ = "[daemon] worker_cgroups = \"off\"";
        spdlog::info("worker cgroups: off ([daemon] worker_cgroups = \"off\"); every worker shares the service's "
                     "cgroup, and a guest flooding its queues can take more CPU than its neighbours");
        return cg;
    }
    // /proc/self/cgroup (cgroups(7)): "hierarchy-ID:controller-list:path";
    // v2 is the line "0::path". A v1 cpu hierarchy takes precedence (on a
    // hybrid host the cpu controller is bound there, not in v2).
    std::ifstream in(o.proc_self_cgroup);
    std::string line, v1_path, v2_path;
    bool have_v1 = false, have_v2 = false;
    while (std::getline(in, line)) {
        auto a = line.find(':');
        auto b = a == std::string::npos ? a : line.find(':', a + 1);
        if (b == std::string::npos) continue;
        const std::string id = line.substr(0, a), ctrls = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
        if (id == "0" && ctrls.empty()) {
            have_v2 = true;
            v2_path = path;
            continue;
        }
        std::istringstream cs(ctrls);
        for (std::string c; std::getline(cs, c, ',');)
            if (c == "cpu") {
                have_v1 = true;
                v1_path = path;
            }
    }
    Result<void> r = ok();
    if (have_v1)
        r = cg->setup_v1(o, v1_path);
    else if (have_v2)
        r = cg->setup_v2(o, v2_path);
    else
        r = make_error(std::errc::no_such_file_or_directory,
                       o.proc_self_cgroup + " lists neither a cgroup v1 cpu hierarchy nor cgroup v2");
    if (!r) {
        cg->layout_ = Layout::None;
        cg->base_.clear();
        cg->why_not_ = r.error().describe();
        spdlog::warn("worker cgroups: not used: {}; every worker shares the service's cgroup, and a guest flooding "
                     "its queues can take more CPU than its neighbours; {}",
                     cg->why_not_, kOperatorHint);
        return cg;
    }
    cg->remove_stale();
    spdlog::info("worker cgroups: each worker in {}/worker-<domid> (cgroup {}, {} {})", cg->base_,
                 cg->layout_ == Layout::V2 ? "v2" : "v1", cg->weight_file(), cg->weight());
    return cg;
}

Result<void> WorkerCgroups::setup_v1(const WorkerCgroupOptions& o, const std::string& own_raw) {
    std::string mount = o.fs_root + "/cpu";
    if (!exists(mount + "/cpu.shares")) mount = o.fs_root + "/cpu,cpuacct";
    if (!exists(mount + "/cpu.shares"))
        return make_error(std::errc::no_such_file_or_directory,
                          "no cgroup v1 cpu hierarchy at " + o.fs_root + "/cpu (no cpu.shares)");
    const std::string own = clean_path(own_raw);
    if (own.empty()) return make_error(std::errc::invalid_argument, "unusable cpu cgroup path '" + own_raw + "'");
    std::string base = own == "/" ? mount : mount + own;
    if (!is_dir(base)) return make_error(std::errc::no_such_file_or_directory, "own cpu cgroup " + base + " not found");
    if (::access(base.c_str(), W_OK) != 0) return errno_error(errno, "own cpu cgroup " + base + " is not writable");
    if (own == "/") {
        // No service manager gave us a group: one of our own under the root.
        base += "/xen-virtiod";
        XV_TRY(make_dir(base));
        XV_TRY(put(base + "/cpu.shares", "1024"));
    }
    layout_ = Layout::V1;
    base_ = base;
    return ok();
}

Result<void> WorkerCgroups::setup_v2(const WorkerCgroupOptions& o, const std::string& own_raw) {
    std::string mount = o.fs_root;
    if (!exists(mount + "/cgroup.controllers")) mount = o.fs_root + "/unified";
    if (!exists(mount + "/cgroup.controllers"))
        return make_error(std::errc::no_such_file_or_directory,
                          "no cgroup v2 hierarchy at " + o.fs_root + " (no cgroup.controllers)");
    const std::string own = clean_path(own_raw);
    if (own.empty()) return make_error(std::errc::invalid_argument, "unusable cgroup path '" + own_raw + "'");
    const std::string dir = own == "/" ? mount : mount + own;
    if (!is_dir(dir)) return make_error(std::errc::no_such_file_or_directory, "own cgroup " + dir + " not found");
    // The cpu controller must be available to our group (enabled by the
    // parent: systemd does so for a unit with Delegate=cpu).
    const std::string avail = slurp(dir + "/cgroup.controllers");
    if (!has_word(avail, "cpu"))
        return make_error(std::errc::operation_not_supported,
                          "the cpu controller is not available in " + dir + " (its cgroup.controllers: '" +
                              std::string(avail.substr(0, avail.find('\n'))) + "'; the service manager did not "
                              "delegate it)");
    if (::access(dir.c_str(), W_OK) != 0 || ::access((dir + "/cgroup.subtree_control").c_str(), W_OK) != 0)
        return errno_error(errno, "own cgroup " + dir + " is not writable (not delegated to the service?)");
    std::string base = dir;
    if (own == "/") {
        // The root may hold processes; our workers go one level down, into
        // <root>/xen-virtiod, which holds no process and enables cpu for its
        // own children too: a controller reaches a group only when every
        // ancestor enables it in cgroup.subtree_control (cgroup-v2.rst
        // "Enabling and Disabling"; without the second write the kernel
        // makes worker-<domid> without cpu.weight).
        XV_TRY(put(dir + "/cgroup.subtree_control", "+cpu"));
        base = dir + "/xen-virtiod";
        XV_TRY(make_dir(base));
        XV_TRY(put(base + "/cgroup.subtree_control", "+cpu"));
    } else if (!has_word(slurp(dir + "/cgroup.subtree_control"), "cpu")) {
        // No internal processes (cgroup-v2.rst): a group that enables a
        // controller for its children holds no process itself. Everything
        // in our group (the supervisor; with systemd nothing else) moves
        // into a leaf of its own first.
        const std::string leaf = dir + "/supervisor";
        XV_TRY(make_dir(leaf));
        std::istringstream procs(slurp(dir + "/cgroup.procs"));
        for (std::string pid; procs >> pid;) {
            auto r = put(leaf + "/cgroup.procs", pid);
            if (!r && r.error().code != std::errc::no_such_process) return r;
        }
        XV_TRY(put(dir + "/cgroup.subtree_control", "+cpu"));
    }
    layout_ = Layout::V2;
    base_ = base;
    return ok();
}

std::string WorkerCgroups::path_of(xen::DomId domid) const { return base_ + "/worker-" + std::to_string(domid); }

void WorkerCgroups::remove_stale() {
    DIR* d = ::opendir(base_.c_str());
    if (!d) return;
    std::vector<std::string> stale;
    while (dirent* e = ::readdir(d))
        if (std::strncmp(e->d_name, "worker-", 7) == 0) stale.emplace_back(e->d_name);
    ::closedir(d);
    for (const auto& name : stale) {
        const std::string p = base_ + "/" + name;
        if (::rmdir(p.c_str()) == 0)
            spdlog::info("worker cgroups: removed {} left by an earlier run", p);
        else
            spdlog::warn("worker cgroups: cannot remove {} left by an earlier run: {} (a process of it still "
                         "runs?); a worker for that guest will share it",
                         p, std::strerror(errno));
    }
}

Result<WorkerCgroupSlot> WorkerCgroups::prepare(xen::DomId domid) {
    if (!enabled()) return make_error(std::errc::operation_not_supported, "worker cgroups not used: " + why_not_);
    pending_.erase(domid);  // the group is wanted again
    const std::string p = path_of(domid);
    XV_TRY(make_dir(p));
    if (auto r = put(p + "/" + weight_file(), weight()); !r) {
        (void)::rmdir(p.c_str());
        return std::move(r).error();
    }
    const std::string procs = p + "/cgroup.procs";
    const int fd = ::open(procs.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        (void)::rmdir(p.c_str());
        return errno_error(err, "open " + procs);
    }
    return WorkerCgroupSlot(fd, p);
}

bool WorkerCgroups::remove(xen::DomId domid, bool quiet) {
    const std::string p = path_of(domid);
    if (::rmdir(p.c_str()) == 0 || errno == ENOENT) return true;
    // EBUSY: the kernel still counts the reaped worker's tasks for a moment.
    if (errno != EBUSY && !quiet)
        spdlog::warn("worker cgroups: cannot remove {}: {}", p, std::strerror(errno));
    return false;
}

void WorkerCgroups::release(xen::DomId domid) {
    if (!enabled()) return;
    if (!remove(domid, false)) pending_.insert(domid);
}

void WorkerCgroups::retry() {
    for (auto it = pending_.begin(); it != pending_.end();)
        it = remove(*it, true) ? pending_.erase(it) : std::next(it);
}

}  // namespace xv::daemon
