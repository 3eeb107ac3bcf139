// SPDX-License-Identifier: GPL-2.0-only
// XenStore on libxenstore (xenstore.h, Xen 4.17).
extern "C" {  // the Xen 4.17 headers carry no extern "C" guards of their own
#include <xenstore.h>
#include <xen/io/xs_wire.h>
}

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "libxen_impl.h"
#include "xv/log.h"

namespace xv::xen::libxen {
namespace {

/// free()s what libxenstore returned.
struct FreeDeleter {
    void operator()(void* p) const noexcept { std::free(p); }
};

class XsStore final : public XenStore {
public:
    XsStore(xs_handle* h, int fd) : h_(h), fd_(fd) {}
    ~XsStore() override { xs_close(h_); }

    Result<std::string> read(const std::string& path, Txn t) override {
        XV_TRY(check_path(path, "read"));
        unsigned int len = 0;
        errno = 0;
        std::unique_ptr<void, FreeDeleter> v(xs_read(h_, t, path.c_str(), &len));
        if (!v) return fail("xs_read", "read " + path);
        return std::string(static_cast<const char*>(v.get()), len);
    }

    Result<void> write(const std::string& path, const std::string& value, Txn t) override {
        XV_TRY(check_path(path, "write"));
        // xs_wire.h: a value is at most XENSTORE_PAYLOAD_MAX bytes with the path.
        if (value.size() + path.size() + 1 > XENSTORE_PAYLOAD_MAX)
            return make_error(std::errc::value_too_large, "write " + path + ": value of " +
                                                              std::to_string(value.size()) + " bytes is too long");
        errno = 0;
        if (!xs_write(h_, t, path.c_str(), value.data(), unsigned(value.size()))) return fail("xs_write", "write " + path);
        return ok();
    }

    Result<void> mkdir(const std::string& path, Txn t) override {
        XV_TRY(check_path(path, "mkdir"));
        errno = 0;
        if (!xs_mkdir(h_, t, path.c_str())) return fail("xs_mkdir", "mkdir " + path);
        return ok();
    }

    Result<void> rm(const std::string& path, Txn t) override {
        XV_TRY(check_path(path, "rm"));
        errno = 0;
        if (!xs_rm(h_, t, path.c_str())) {
            if (errno == ENOENT) return ok();
            return fail("xs_rm", "rm " + path);
        }
        return ok();
    }

    Result<std::vector<std::string>> directory(const std::string& path, Txn t) override {
        XV_TRY(check_path(path, "directory"));
        unsigned int num = 0;
        errno = 0;
        std::unique_ptr<char*, FreeDeleter> d(xs_directory(h_, t, path.c_str(), &num));
        if (!d) return fail("xs_directory", "list " + path);
        std::vector<std::string> out;
        out.reserve(num);
        for (unsigned i = 0; i < num; ++i) out.emplace_back(d.get()[i]);
        return out;
    }

    Result<std::vector<XsPerm>> get_perms(const std::string& path, Txn t) override {
        XV_TRY(check_path(path, "get_perms"));
        unsigned int num = 0;
        errno = 0;
        std::unique_ptr<xs_permissions, FreeDeleter> p(xs_get_permissions(h_, t, path.c_str(), &num));
        if (!p) return fail("xs_get_permissions", "permissions of " + path);
        std::vector<XsPerm> out;
        out.reserve(num);
        for (unsigned i = 0; i < num; ++i) {
            const auto& e = p.get()[i];
            XsPerm x;
            x.domid = DomId(e.id);
            x.access = XsPerm::Access(e.perms & (XS_PERM_READ | XS_PERM_WRITE));
            out.push_back(x);
        }
        return out;
    }

    Result<void> set_perms(const std::string& path, const std::vector<XsPerm>& perms, Txn t) override {
        XV_TRY(check_path(path, "set_perms"));
        if (perms.empty()) return make_error(std::errc::invalid_argument, "set permissions of " + path + ": none given");
        std::vector<xs_permissions> p(perms.size());
        for (std::size_t i = 0; i < perms.size(); ++i) {
            p[i].id = perms[i].domid;
            p[i].perms = unsigned(perms[i].access) & (XS_PERM_READ | XS_PERM_WRITE);
        }
        errno = 0;
        if (!xs_set_permissions(h_, t, path.c_str(), p.data(), unsigned(p.size())))
            return fail("xs_set_permissions", "set permissions of " + path);
        return ok();
    }

    Result<Txn> transaction_start() override {
        errno = 0;
        xs_transaction_t t = xs_transaction_start(h_);
        if (t == XBT_NULL) return fail("xs_transaction_start", "start a xenstore transaction");
        return Txn(t);
    }

    Result<void> transaction_end(Txn t, bool abort) override {
        if (t == kNoTxn) return make_error(std::errc::invalid_argument, "end of transaction 0");
        errno = 0;
        if (!xs_transaction_end(h_, t, abort)) {
            // xenstore.h: "if errno == EAGAIN, you have to restart transaction".
            if (errno == EAGAIN)
                return errno_error(EAGAIN, "xenstore transaction " + std::to_string(t) + " conflicted: retry it");
            return fail("xs_transaction_end", "end xenstore transaction " + std::to_string(t));
        }
        return ok();
    }

    Result<void> watch(const std::string& path, const std::string& token) override {
        XV_TRY(check_path(path, "watch"));
        XV_TRY(check_path(token, "watch token"));
        errno = 0;
        if (!xs_watch(h_, path.c_str(), token.c_str())) return fail("xs_watch", "watch " + path);
        return ok();
    }

    Result<void> unwatch(const std::string& path, const std::string& token) override {
        XV_TRY(check_path(path, "unwatch"));
        XV_TRY(check_path(token, "unwatch token"));
        errno = 0;
        if (!xs_unwatch(h_, path.c_str(), token.c_str())) return fail("xs_unwatch", "unwatch " + path);
        return ok();
    }

    Result<void> set_target(DomId dm, DomId target) override {
        errno = 0;
        // xenstore.h: bool xs_set_target(h, domid, target); xenstored answers
        // EACCES to an unprivileged connection.
        if (!xs_set_target(h_, dm, target))
            return fail("xs_set_target", "give dom" + std::to_string(dm) + " xenstore access to dom" +
                                             std::to_string(target) + "'s nodes");
        return ok();
    }

    int watch_fd() const override { return fd_; }

    Result<std::optional<WatchEvent>> read_watch() override {
        errno = 0;
        // xenstore.h: call xs_check_watch until it returns NULL with EAGAIN.
        std::unique_ptr<char*, FreeDeleter> w(xs_check_watch(h_));
        if (!w) {
            if (errno == EAGAIN || errno == 0) return std::optional<WatchEvent>{};
            return fail("xs_check_watch", "read a xenstore watch event");
        }
        WatchEvent ev;
        ev.path = w.get()[XS_WATCH_PATH] ? w.get()[XS_WATCH_PATH] : "";
        ev.token = w.get()[XS_WATCH_TOKEN] ? w.get()[XS_WATCH_TOKEN] : "";
        return std::optional<WatchEvent>(std::move(ev));
    }

private:
    static Result<void> check_path(const std::string& s, const char* op) {
        // A NUL would silently cut the string libxenstore sees.
        if (s.empty() || s.find('\0') != std::string::npos)
            return make_error(std::errc::invalid_argument, std::string("xenstore ") + op + ": empty path or NUL in it");
        if (s.size() > XENSTORE_ABS_PATH_MAX)
            return make_error(std::errc::filename_too_long, std::string("xenstore ") + op + ": path too long");
        return ok();
    }

    static Error fail(const char* call, std::string what) {
        int err = errno;
        return call_error(call, err, what, CallKind::XenStore);
    }

    xs_handle* h_;
    int fd_;
};

}  // namespace

Result<std::unique_ptr<XenStore>> open_xs() {
    errno = 0;
    xs_handle* h = xs_open(0);
    if (!h) return call_error("xs_open", errno, "connect to xenstore", CallKind::XenStore);
    // The watch fd is a pipe made on first use; ask for it now so watch_fd()
    // can be const, and make it non-blocking as the interface promises
    // (libxenstore only reads it when it knows a byte is there).
    errno = 0;
    int fd = xs_fileno(h);
    if (fd < 0) {
        int err = errno;
        xs_close(h);
        return call_error("xs_fileno", err, "xenstore watch fd", CallKind::XenStore);
    }
    if (int err = set_nonblocking(fd); err != 0) {
        xs_close(h);
        return call_error("fcntl(O_NONBLOCK)", err, "xenstore watch fd", CallKind::XenStore);
    }
    return std::unique_ptr<XenStore>(new XsStore(h, fd));
}

}  // namespace xv::xen::libxen
