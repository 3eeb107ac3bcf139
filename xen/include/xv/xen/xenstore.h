// SPDX-License-Identifier: GPL-2.0-only
// XenStore: read, write, mkdir, rm, permissions, transactions, watches.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "xv/result.h"
#include "xv/xen/types.h"

namespace xv::xen {

/// A transaction id; kNoTxn means "outside any transaction".
using Txn = std::uint32_t;
inline constexpr Txn kNoTxn = 0;

/// One xenstore permission entry (xs_permissions).
struct XsPerm {
    enum Access : std::uint8_t { None = 0, Read = 1, Write = 2, Both = 3 };
    DomId domid = 0;
    Access access = None;
    bool operator==(const XsPerm&) const = default;
};

/// A fired watch.
struct WatchEvent {
    std::string path;
    std::string token;
};

/// A xenstore connection. Paths are absolute ("/local/domain/0/...") or
/// relative to the caller's domain home, as in libxenstore.
class XenStore {
public:
    virtual ~XenStore() = default;

    /// Value of `path`; an Error with ENOENT when it does not exist.
    virtual Result<std::string> read(const std::string& path, Txn t = kNoTxn) = 0;
    /// Writes `value` (creating parents).
    virtual Result<void> write(const std::string& path, const std::string& value, Txn t = kNoTxn) = 0;
    virtual Result<void> mkdir(const std::string& path, Txn t = kNoTxn) = 0;
    /// Removes `path` and its children (ENOENT is not an error).
    virtual Result<void> rm(const std::string& path, Txn t = kNoTxn) = 0;
    /// Children names of `path`.
    virtual Result<std::vector<std::string>> directory(const std::string& path, Txn t = kNoTxn) = 0;
    virtual Result<std::vector<XsPerm>> get_perms(const std::string& path, Txn t = kNoTxn) = 0;
    /// First entry: owner and access of everyone else; then per-domain grants.
    virtual Result<void> set_perms(const std::string& path, const std::vector<XsPerm>& perms, Txn t = kNoTxn) = 0;

    virtual Result<Txn> transaction_start() = 0;
    /// Ends a transaction; with `abort == false` an Error with EAGAIN means
    /// "conflict: retry the transaction".
    virtual Result<void> transaction_end(Txn t, bool abort = false) = 0;

    /// Watches `path` and its children; fires once right away as Xen does.
    virtual Result<void> watch(const std::string& path, const std::string& token) = 0;
    virtual Result<void> unwatch(const std::string& path, const std::string& token) = 0;
    /// Readable when a watch event is queued (non-blocking fd).
    virtual int watch_fd() const = 0;
    /// Next queued watch event, or nullopt.
    virtual Result<std::optional<WatchEvent>> read_watch() = 0;

    /// Lets domain `dm` act on `target`'s nodes as `target` may (XS_SET_TARGET,
    /// libxenstore xs_set_target; libxl does it for a stub device model next
    /// to xc_domain_set_target). Without it a driver domain cannot even read
    /// its guest's /local/domain/<target>/name. Only a privileged connection
    /// (Dom0) may.
    virtual Result<void> set_target(DomId dm, DomId target) {
        return make_error(std::errc::function_not_supported, "xenstore set_target dom" + std::to_string(dm) +
                                                                 " -> dom" + std::to_string(target) +
                                                                 ": not supported by this store");
    }

    /// "/local/domain/<domid>".
    virtual std::string domain_path(DomId domid) const {
        return "/local/domain/" + std::to_string(domid);
    }
};

}  // namespace xv::xen
