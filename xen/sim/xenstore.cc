// SPDX-License-Identifier: GPL-2.0-only
// xen/sim XenStore: one in-memory tree shared by every connection, with
// xenstored's permission rules, snapshot transactions and watches.
//
// Transaction lifecycle (per connection):
//
//   transaction_start()            transaction_end(abort=false)
//   ------------------> Open ----+-------------------------------> Committed
//     (snapshot of the tree)     |   (EAGAIN -> Discarded when a node it
//                                |    read or wrote changed meanwhile)
//                                +--- transaction_end(abort=true) --> Discarded
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <map>
#include <set>

#include "core.h"
#include "xv/log.h"

namespace xv::xen::sim::detail {

namespace {

/// docs/misc/xenstore.txt: absolute paths are at most 3072 bytes.
constexpr std::size_t kMaxPath = 3072;
/// Largest value accepted (XENSTORE_PAYLOAD_MAX).
constexpr std::size_t kMaxValue = 4096;
/// Open transactions per connection (xenstored's default quota is 10).
constexpr std::size_t kMaxTxns = 16;
/// Watches per unprivileged connection (xenstored's default quota is 128).
constexpr std::size_t kMaxWatches = 128;
/// Queued watch events per connection; the oldest are dropped beyond it.
constexpr std::size_t kMaxQueued = 65536;

struct Node {
    std::string value;
    std::vector<XsPerm> perms;     ///< [0] = owner + everyone else's access
    std::set<std::string> children;
    std::uint64_t gen = 0;         ///< last change (value, perms or children)
};

using Tree = std::map<std::string, Node>;

std::string parent_of(const std::string& p) {
    if (p == "/") return "/";
    auto pos = p.rfind('/');
    return pos == 0 ? "/" : p.substr(0, pos);
}

std::string base_of(const std::string& p) { return p.substr(p.rfind('/') + 1); }

std::string join(const std::string& dir, const std::string& name) { return dir == "/" ? "/" + name : dir + "/" + name; }

/// True when `p` is `dir` or below it.
bool at_or_below(const std::string& p, const std::string& dir) {
    if (dir == "/") return true;
    return p == dir || (p.size() > dir.size() && p.compare(0, dir.size(), dir) == 0 && p[dir.size()] == '/');
}

/// One change to report to watchers.
struct Fire {
    std::string path;
    std::vector<XsPerm> perms;
    bool recurse = false;  ///< a removal: watches below the path fire too
};

struct TxnState {
    Tree tree;                                   ///< snapshot, then our changes
    std::map<std::string, std::uint64_t> orig;   ///< gen at first touch (0: absent)
    std::set<std::string> written;               ///< nodes we changed or removed
    std::vector<Fire> fires;                     ///< fired at commit
};

}  // namespace

class XenStoreImpl;

/// The shared tree (Store is declared in core.h).
class Store {
public:
    std::mutex mu;
    Tree tree;
    std::uint64_t gen = 1;
    std::map<DomId, DomId> targets;  ///< device-model domain -> its target
    std::set<XenStoreImpl*> conns;
    Txn next_txn = 1;
    /// False while xenstored is "gone" (SimHypervisor::set_xenstore_up).
    bool up = true;

    Store() {
        Node root;
        root.perms = {{0, XsPerm::None}};
        root.gen = gen;
        tree["/"] = root;
    }

    /// xenstored perm_for_conn().
    XsPerm::Access access(const std::vector<XsPerm>& perms, DomId conn) const {
        if (conn == 0 || perms.empty()) return conn == 0 ? XsPerm::Both : XsPerm::None;
        auto t = targets.find(conn);
        std::optional<DomId> target;
        if (t != targets.end()) target = t->second;
        if (perms[0].domid == conn || (target && perms[0].domid == *target)) return XsPerm::Both;
        for (std::size_t i = 1; i < perms.size(); ++i)
            if (perms[i].domid == conn || (target && perms[i].domid == *target)) return perms[i].access;
        return perms[0].access;
    }

    void fire_locked(const Fire& f);
    void fire_special_locked(const std::string& name);
};

namespace {

/// Tree operations for one connection, on the global tree or a
/// transaction's snapshot. `touch` records the first access of a path
/// (transactions), `changed` collects watch events.
class Ops {
public:
    Ops(Store& s, Tree& t, DomId conn, TxnState* txn) : s_(s), t_(t), conn_(conn), txn_(txn) {}

    std::vector<Fire> fires;

    Result<std::string> read(const std::string& p) {
        touch(p);
        auto it = t_.find(p);
        if (it == t_.end()) return errno_error(ENOENT, "xenstore read " + p + ": no such node");
        if (!(s_.access(it->second.perms, conn_) & XsPerm::Read))
            return errno_error(EACCES, "xenstore read " + p + ": permission denied for " + dom_name(conn_));
        return it->second.value;
    }

    Result<std::vector<std::string>> directory(const std::string& p) {
        touch(p);
        auto it = t_.find(p);
        if (it == t_.end()) return errno_error(ENOENT, "xenstore directory " + p + ": no such node");
        if (!(s_.access(it->second.perms, conn_) & XsPerm::Read))
            return errno_error(EACCES, "xenstore directory " + p + ": permission denied for " + dom_name(conn_));
        return std::vector<std::string>(it->second.children.begin(), it->second.children.end());
    }

    Result<std::vector<XsPerm>> get_perms(const std::string& p) {
        touch(p);
        auto it = t_.find(p);
        if (it == t_.end()) return errno_error(ENOENT, "xenstore get_perms " + p + ": no such node");
        if (!(s_.access(it->second.perms, conn_) & XsPerm::Read))
            return errno_error(EACCES, "xenstore get_perms " + p + ": permission denied for " + dom_name(conn_));
        return it->second.perms;
    }

    /// Writes `value` (or only creates the node when `mkdir`).
    Result<void> write(const std::string& p, const std::string& value, bool mkdir) {
        touch(p);
        auto it = t_.find(p);
        if (it != t_.end()) {
            if (!(s_.access(it->second.perms, conn_) & XsPerm::Write))
                return errno_error(EACCES, "xenstore write " + p + ": permission denied for " + dom_name(conn_));
            if (mkdir) return ok();
            touch_write(p);
            it->second.value = value;
            it->second.gen = ++s_.gen;
            fires.push_back({p, it->second.perms, false});
            return ok();
        }
        // xenstored errno_from_parents: creating needs write access to the
        // closest existing ancestor.
        std::vector<std::string> missing{p};
        std::string anc = parent_of(p);
        for (;;) {
            touch(anc);
            if (t_.count(anc)) break;
            missing.push_back(anc);
            anc = parent_of(anc);
        }
        if (!(s_.access(t_[anc].perms, conn_) & XsPerm::Write))
            return errno_error(EACCES, "xenstore write " + p + ": permission denied for " + dom_name(conn_) +
                                           " on " + anc);
        std::vector<XsPerm> perms = t_[anc].perms;
        // construct_node: a node created by an unprivileged domain is owned by it.
        if (conn_ != 0 && !perms.empty()) perms[0].domid = conn_;
        for (auto i = missing.rbegin(); i != missing.rend(); ++i) {
            const std::string& path = *i;
            std::string par = parent_of(path);
            touch_write(par);
            touch_write(path);
            Node n;
            n.perms = perms;
            n.gen = ++s_.gen;
            if (path == p && !mkdir) n.value = value;
            t_[path] = std::move(n);
            t_[par].children.insert(base_of(path));
            t_[par].gen = s_.gen;
        }
        fires.push_back({p, perms, false});
        return ok();
    }

    Result<void> rm(const std::string& p) {
        touch(p);
        if (p == "/") return errno_error(EINVAL, "xenstore rm /: refusing to remove the root");
        auto it = t_.find(p);
        if (it == t_.end()) return ok();  // ENOENT is not an error (interface contract)
        if (!(s_.access(it->second.perms, conn_) & XsPerm::Write))
            return errno_error(EACCES, "xenstore rm " + p + ": permission denied for " + dom_name(conn_));
        fires.push_back({p, it->second.perms, true});
        std::vector<std::string> gone;
        collect(p, gone);
        for (auto& g : gone) {
            touch_write(g);
            t_.erase(g);
        }
        std::string par = parent_of(p);
        touch_write(par);
        t_[par].children.erase(base_of(p));
        t_[par].gen = ++s_.gen;
        return ok();
    }

    Result<void> set_perms(const std::string& p, const std::vector<XsPerm>& perms) {
        touch(p);
        std::string what = "xenstore set_perms " + p;
        if (perms.empty()) return errno_error(EINVAL, what + ": empty permission list");
        for (auto& e : perms)
            if (e.access > XsPerm::Both) return errno_error(EINVAL, what + ": bad access value");
        auto it = t_.find(p);
        if (it == t_.end()) return errno_error(ENOENT, what + ": no such node");
        // do_set_perms: only the owner (or a privileged connection) may, and
        // an unprivileged domain may not give the node away.
        if (conn_ != 0) {
            auto t = s_.targets.find(conn_);
            bool owner = it->second.perms.empty() ? false
                                                   : (it->second.perms[0].domid == conn_ ||
                                                      (t != s_.targets.end() && it->second.perms[0].domid == t->second));
            if (!owner) return errno_error(EACCES, what + ": " + dom_name(conn_) + " is not the owner");
            if (perms[0].domid != it->second.perms[0].domid)
                return errno_error(EPERM, what + ": " + dom_name(conn_) + " may not change the owner");
        }
        touch_write(p);
        it->second.perms = perms;
        it->second.gen = ++s_.gen;
        fires.push_back({p, perms, false});
        return ok();
    }

private:
    void collect(const std::string& p, std::vector<std::string>& out) {
        auto it = t_.find(p);
        if (it == t_.end()) return;
        out.push_back(p);
        for (auto& c : it->second.children) collect(join(p, c), out);
    }

    void touch(const std::string& p) {
        if (!txn_ || txn_->orig.count(p)) return;
        auto it = t_.find(p);
        txn_->orig[p] = it == t_.end() ? 0 : it->second.gen;
    }

    void touch_write(const std::string& p) {
        touch(p);
        if (txn_) txn_->written.insert(p);
    }

    Store& s_;
    Tree& t_;
    DomId conn_;
    TxnState* txn_;
};

}  // namespace

/// One connection.
class XenStoreImpl final : public XenStore {
public:
    XenStoreImpl(std::shared_ptr<Core> core, DomId domid, bool count)
        : core_(std::move(core)), s_(*core_->store), domid_(domid), count_(count) {
        fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        std::lock_guard lk(s_.mu);
        s_.conns.insert(this);
        if (count_) ++core_->res.open_handles;
    }

    ~XenStoreImpl() override {
        {
            std::lock_guard lk(s_.mu);
            s_.conns.erase(this);
        }
        if (fd_ >= 0) ::close(fd_);
        if (count_) --core_->res.open_handles;
    }

    Result<std::string> read(const std::string& path, Txn t) override {
        return run<std::string>(path, t, "read", [](Ops& o, const std::string& p) { return o.read(p); });
    }

    Result<void> write(const std::string& path, const std::string& value, Txn t) override {
        if (value.size() > kMaxValue) return errno_error(E2BIG, "xenstore write " + path + ": value too large");
        return run_void(path, t, "write", [&](Ops& o, const std::string& p) { return o.write(p, value, false); });
    }

    Result<void> mkdir(const std::string& path, Txn t) override {
        return run_void(path, t, "mkdir", [](Ops& o, const std::string& p) { return o.write(p, {}, true); });
    }

    Result<void> rm(const std::string& path, Txn t) override {
        return run_void(path, t, "rm", [](Ops& o, const std::string& p) { return o.rm(p); });
    }

    Result<std::vector<std::string>> directory(const std::string& path, Txn t) override {
        return run<std::vector<std::string>>(path, t, "directory",
                                             [](Ops& o, const std::string& p) { return o.directory(p); });
    }

    Result<std::vector<XsPerm>> get_perms(const std::string& path, Txn t) override {
        return run<std::vector<XsPerm>>(path, t, "get_perms",
                                        [](Ops& o, const std::string& p) { return o.get_perms(p); });
    }

    Result<void> set_perms(const std::string& path, const std::vector<XsPerm>& perms, Txn t) override {
        return run_void(path, t, "set_perms", [&](Ops& o, const std::string& p) { return o.set_perms(p, perms); });
    }

    Result<void> set_target(DomId dm, DomId target) override {
        // xenstored do_set_target: only a privileged connection may.
        if (domid_ != 0)
            return errno_error(EACCES, "xenstore set_target dom" + std::to_string(dm) + " -> dom" +
                                           std::to_string(target) + ": only dom0 may");
        {
            std::lock_guard lk(s_.mu);
            if (!s_.up) return down_error("set_target", "");
        }
        store_set_xs_target(s_, dm, target);
        return ok();
    }

    Result<Txn> transaction_start() override {
        std::lock_guard lk(s_.mu);
        if (!s_.up) return down_error("transaction_start", "");
        if (txns_.size() >= kMaxTxns)
            return errno_error(ENOSPC, "xenstore transaction_start: " + dom_name(domid_) + " has too many open");
        Txn id = s_.next_txn++;
        if (s_.next_txn == kNoTxn) s_.next_txn = 1;
        auto st = std::make_unique<TxnState>();
        st->tree = s_.tree;
        txns_[id] = std::move(st);
        return id;
    }

    Result<void> transaction_end(Txn t, bool abort) override {
        std::lock_guard lk(s_.mu);
        if (!s_.up) return down_error("transaction_end", "");
        auto it = txns_.find(t);
        if (it == txns_.end()) return errno_error(ENOENT, "xenstore transaction_end: no transaction " + std::to_string(t));
        std::unique_ptr<TxnState> st = std::move(it->second);
        txns_.erase(it);
        if (abort) return ok();
        for (auto& [p, g] : st->orig) {
            auto n = s_.tree.find(p);
            std::uint64_t now = n == s_.tree.end() ? 0 : n->second.gen;
            if (now != g)
                return errno_error(EAGAIN, "xenstore transaction " + std::to_string(t) + ": " + p +
                                               " changed meanwhile, retry");
        }
        // Apply: parents sort before their children.
        for (auto& p : st->written) {
            auto src = st->tree.find(p);
            if (src == st->tree.end()) {
                s_.tree.erase(p);
                if (p != "/") {
                    auto par = s_.tree.find(parent_of(p));
                    if (par != s_.tree.end()) par->second.children.erase(base_of(p));
                }
                continue;
            }
            Node& dst = s_.tree[p];
            dst.value = src->second.value;
            dst.perms = src->second.perms;
            dst.gen = ++s_.gen;
            if (p != "/") s_.tree[parent_of(p)].children.insert(base_of(p));
        }
        for (auto& f : st->fires) s_.fire_locked(f);
        return ok();
    }

    Result<void> watch(const std::string& path, const std::string& token) override {
        std::lock_guard lk(s_.mu);
        if (!s_.up) return down_error("watch", path);
        std::string abs;
        if (path == "@introduceDomain" || path == "@releaseDomain") {
            abs = path;
        } else if (!path.empty() && path[0] == '@') {
            return errno_error(EINVAL, "xenstore watch " + path + ": unknown special path");
        } else {
            auto r = normalize(path, "watch");
            if (!r) return std::move(r).error();
            abs = *r;
        }
        for (auto& w : watches_)
            if (w.abs == abs && w.token == token)
                return errno_error(EEXIST, "xenstore watch " + path + " (" + token + "): already watched");
        if (domid_ != 0 && watches_.size() >= kMaxWatches)
            return errno_error(E2BIG, "xenstore watch " + path + ": too many watches for " + dom_name(domid_));
        watches_.push_back({abs, path, token, !path.empty() && path[0] != '/' && path[0] != '@'});
        // xenstored fires a new watch once right away.
        queue_locked({path, token});
        return ok();
    }

    Result<void> unwatch(const std::string& path, const std::string& token) override {
        std::lock_guard lk(s_.mu);
        if (!s_.up) return down_error("unwatch", path);
        std::string abs = path;
        if (path.empty() || path[0] != '@') {
            auto r = normalize(path, "unwatch");
            if (!r) return std::move(r).error();
            abs = *r;
        }
        auto it = std::find_if(watches_.begin(), watches_.end(),
                               [&](const WatchEntry& w) { return w.abs == abs && w.token == token; });
        if (it == watches_.end())
            return errno_error(ENOENT, "xenstore unwatch " + path + " (" + token + "): not watched");
        watches_.erase(it);
        return ok();
    }

    int watch_fd() const override { return fd_; }

    Result<std::optional<WatchEvent>> read_watch() override {
        std::lock_guard lk(s_.mu);
        if (!s_.up) return down_error("read_watch", "");
        if (queue_.empty()) {
            drain();
            return std::optional<WatchEvent>{};
        }
        WatchEvent ev = std::move(queue_.front());
        queue_.pop_front();
        if (queue_.empty()) drain();
        return std::optional<WatchEvent>{std::move(ev)};
    }

    // --- used by Store (s_.mu held) ----------------------------------------------
    struct WatchEntry {
        std::string abs;    ///< absolute path or @special
        std::string given;  ///< as registered
        std::string token;
        bool relative = false;
    };

    DomId domid() const { return domid_; }
    const std::vector<WatchEntry>& watches() const { return watches_; }

    /// Queues an event (s_.mu held).
    void queue_locked(WatchEvent ev) {
        if (queue_.size() >= kMaxQueued) queue_.pop_front();
        bool was_empty = queue_.empty();
        queue_.push_back(std::move(ev));
        if (was_empty) {
            std::uint64_t one = 1;
            ssize_t w = ::write(fd_, &one, sizeof one);
            (void)w;
        }
    }

    /// The event path as this watch reports it (relative watches get
    /// relative paths, as xenstored does).
    std::string report_path(const WatchEntry& w, const std::string& abs) const {
        if (!w.relative) return abs;
        std::string home = domain_path(domid_);
        if (abs.size() > home.size() && abs.compare(0, home.size(), home) == 0 && abs[home.size()] == '/')
            return abs.substr(home.size() + 1);
        return abs;
    }

    /// After an outage: the connection is re-established and, as libxenstore
    /// re-registers its watches, every watch fires once (s_.mu held).
    void reconnected_locked() {
        for (const auto& w : watches_) queue_locked({w.given, w.token});
    }

private:
    /// What every request gets while xenstored is gone (the socket/ring
    /// reports an I/O error, as libxenstore does when xenstored dies).
    static Error down_error(const char* op, const std::string& path) {
        return errno_error(EIO, std::string("xenstore ") + op + (path.empty() ? "" : " " + path) +
                                    ": xenstored is not running");
    }

    /// Absolute, validated path (xenstored valid_chars / is_valid_nodename).
    Result<std::string> normalize(const std::string& path, const char* op) const {
        std::string p = path;
        if (p.empty()) return errno_error(EINVAL, std::string("xenstore ") + op + ": empty path");
        if (p[0] != '/') p = domain_path(domid_) + "/" + p;
        if (p.size() > kMaxPath) return errno_error(EINVAL, std::string("xenstore ") + op + ": path too long");
        for (char c : p) {
            bool okc = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                       c == '/' || c == '_' || c == '@';
            if (!okc) return errno_error(EINVAL, std::string("xenstore ") + op + " " + path + ": invalid character");
        }
        if (p != "/" && (p.back() == '/' || p.find("//") != std::string::npos))
            return errno_error(EINVAL, std::string("xenstore ") + op + " " + path + ": malformed path");
        return p;
    }

    template <class T, class F>
    Result<T> run(const std::string& path, Txn t, const char* op, F&& f) {
        auto pr = normalize(path, op);
        if (!pr) return std::move(pr).error();
        std::lock_guard lk(s_.mu);
        if (!s_.up) return down_error(op, path);
        if (t != kNoTxn) {
            auto it = txns_.find(t);
            if (it == txns_.end())
                return errno_error(ENOENT, std::string("xenstore ") + op + " " + path + ": no transaction " +
                                               std::to_string(t));
            Ops o(s_, it->second->tree, domid_, it->second.get());
            auto r = f(o, *pr);
            for (auto& fi : o.fires) it->second->fires.push_back(std::move(fi));
            return r;
        }
        Ops o(s_, s_.tree, domid_, nullptr);
        auto r = f(o, *pr);
        for (auto& fi : o.fires) s_.fire_locked(fi);
        return r;
    }

    template <class F>
    Result<void> run_void(const std::string& path, Txn t, const char* op, F&& f) {
        auto r = run<bool>(path, t, op, [&](Ops& o, const std::string& p) -> Result<bool> {
            auto v = f(o, p);
            if (!v) return std::move(v).error();
            return true;
        });
        if (!r) return std::move(r).error();
        return ok();
    }

    void drain() {
        std::uint64_t v;
        ssize_t r = ::read(fd_, &v, sizeof v);
        (void)r;
    }

    std::shared_ptr<Core> core_;
    Store& s_;
    DomId domid_;
    bool count_;
    int fd_ = -1;
    // Guarded by s_.mu.
    std::map<Txn, std::unique_ptr<TxnState>> txns_;
    std::vector<WatchEntry> watches_;
    std::deque<WatchEvent> queue_;
};

void Store::fire_locked(const Fire& f) {
    for (XenStoreImpl* c : conns) {
        // xenstored watch_permitted: only readers of the node hear of it.
        if (!(access(f.perms, c->domid()) & XsPerm::Read)) continue;
        for (auto& w : c->watches()) {
            if (!w.abs.empty() && w.abs[0] == '@') continue;
            if (at_or_below(f.path, w.abs))
                c->queue_locked({c->report_path(w, f.path), w.token});
            else if (f.recurse && at_or_below(w.abs, f.path))
                c->queue_locked({c->report_path(w, w.abs), w.token});
        }
    }
}

void Store::fire_special_locked(const std::string& name) {
    for (XenStoreImpl* c : conns)
        for (auto& w : c->watches())
            if (w.abs == name) c->queue_locked({name, w.token});
}

void StoreDeleter::operator()(Store* s) const noexcept { delete s; }

std::unique_ptr<Store, StoreDeleter> make_store() { return std::unique_ptr<Store, StoreDeleter>(new Store()); }

void store_domain_created(Store& s, DomId domid, const std::string& name) {
    std::lock_guard lk(s.mu);
    std::string home = "/local/domain/" + std::to_string(domid);
    Ops o(s, s.tree, 0, nullptr);
    (void)o.write("/local/domain", {}, true);
    (void)o.rm(home);
    (void)o.write(home, {}, true);
    // The home is owned by the domain (no access for others).
    (void)o.set_perms(home, {{domid, XsPerm::None}});
    (void)o.write(home + "/name", name, false);
    (void)o.write(home + "/domid", std::to_string(domid), false);
    for (auto& f : o.fires) s.fire_locked(f);
    s.fire_special_locked("@introduceDomain");
}

void store_set_up(Store& s, bool up) {
    std::lock_guard lk(s.mu);
    if (s.up == up) return;
    s.up = up;
    if (up)
        for (auto* c : s.conns) c->reconnected_locked();
}

void store_domain_released(Store& s, DomId domid) {
    std::lock_guard lk(s.mu);
    Ops o(s, s.tree, 0, nullptr);
    (void)o.rm("/local/domain/" + std::to_string(domid));
    for (auto& f : o.fires) s.fire_locked(f);
    s.targets.erase(domid);
    for (auto it = s.targets.begin(); it != s.targets.end();)
        it = it->second == domid ? s.targets.erase(it) : std::next(it);
    s.fire_special_locked("@releaseDomain");
}

void store_set_xs_target(Store& s, DomId dm, DomId guest) {
    std::lock_guard lk(s.mu);
    s.targets[dm] = guest;
}

void store_set_target(Store& s, DomId dm, DomId guest) {
    std::lock_guard lk(s.mu);
    s.targets[dm] = guest;
    // lab-notes.md: the toolstack also writes /local/domain/<dm>/target.
    Ops o(s, s.tree, 0, nullptr);
    (void)o.write("/local/domain/" + std::to_string(dm) + "/target", std::to_string(guest), false);
    for (auto& f : o.fires) s.fire_locked(f);
}

std::unique_ptr<XenStore> make_xenstore(std::shared_ptr<Core> core, DomId domid, bool count_handle) {
    return std::make_unique<XenStoreImpl>(std::move(core), domid, count_handle);
}

}  // namespace xv::xen::sim::detail
