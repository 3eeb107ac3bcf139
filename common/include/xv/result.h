// SPDX-License-Identifier: GPL-2.0-only
// Result<T>: the error-or-value type used on every boundary of xen-virtiod.
//
// No exception crosses the Asio loop: functions that can fail return a
// Result. An Error carries a std::error_code (usually errno) and a message
// that already names the object concerned ("map 3 grant refs of dom 5: ...").
#pragma once

#include <cerrno>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace xv {

/// A failure: an error code plus a human-readable message with context.
struct Error {
    std::error_code code;
    std::string message;

    /// Message and code as one line: "message (code text)".
    std::string describe() const {
        if (!code) return message;
        return message + " (" + code.message() + ")";
    }
};

/// Builds an Error from an errno value and a message.
inline Error errno_error(int err, std::string message) {
    return Error{std::error_code(err, std::generic_category()), std::move(message)};
}

/// Builds an Error from a std::errc and a message.
inline Error make_error(std::errc e, std::string message) {
    return Error{std::make_error_code(e), std::move(message)};
}

/// Either a T or an Error. Move-only T is supported.
template <class T>
class [[nodiscard]] Result {
public:
    Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(implicit)
    Result(Error err) : v_(std::in_place_index<1>, std::move(err)) {}  // NOLINT(implicit)

    bool has_value() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return has_value(); }

    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }
    T&& operator*() && { return std::move(*this).value(); }

    const Error& error() const& { return std::get<1>(v_); }
    Error&& error() && { return std::get<1>(std::move(v_)); }

private:
    std::variant<T, Error> v_;
};

/// Result without a value. A success holds no Error at all (no string is
/// built or destroyed), so an ok() on a hot path costs one flag.
template <>
class [[nodiscard]] Result<void> {
public:
    Result() noexcept = default;
    Result(Error err) : err_(std::move(err)) {}  // NOLINT(implicit)

    bool has_value() const noexcept { return !err_.has_value(); }
    explicit operator bool() const noexcept { return !err_.has_value(); }
    void value() const {}
    /// The error; an empty Error for a success.
    const Error& error() const& { return err_ ? *err_ : no_error(); }
    Error&& error() && {
        if (!err_) err_.emplace();
        return std::move(*err_);
    }

private:
    static const Error& no_error() noexcept {
        static const Error none{};
        return none;
    }
    std::optional<Error> err_;
};

/// Success for Result<void>.
inline Result<void> ok() noexcept { return {}; }

}  // namespace xv

/// Propagates an error from an expression yielding Result<...>.
#define XV_TRY(expr)                                  \
    do {                                              \
        auto&& xv_try_r_ = (expr);                    \
        if (!xv_try_r_) return std::move(xv_try_r_).error(); \
    } while (0)
