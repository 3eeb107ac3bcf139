// SPDX-License-Identifier: GPL-2.0-only
// Shared helpers of the libFuzzer targets in tests/fuzz.
//
// Every target reads a STRUCTURED input through FuzzedDataProvider: the
// bytes choose among mostly valid values (so validation is passed and the
// deep paths run) and, now and then, a raw hostile value. An oracle failure
// (an invariant the code promises) aborts, which libFuzzer reports as a
// crash with the input that caused it.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <vector>

/// Aborts with a message when an invariant does not hold.
#define FUZZ_CHECK(cond, ...)                                                          \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            std::fprintf(stderr, "fuzz invariant failed at %s:%d: %s: ", __FILE__,     \
                         __LINE__, #cond);                                             \
            std::fprintf(stderr, __VA_ARGS__);                                         \
            std::fprintf(stderr, "\n");                                                \
            std::abort();                                                              \
        }                                                                              \
    } while (0)

namespace xv::fuzz {

/// Silences the project's logging: the targets feed it errors by design.
/// XV_FUZZ_LOG=debug (or any level) turns it back on to study an input.
inline void quiet_logs() {
    const char* lvl = std::getenv("XV_FUZZ_LOG");
    spdlog::set_level(lvl ? spdlog::level::from_str(lvl) : spdlog::level::off);
}

/// One of `choices`, picked by the input.
template <class T>
T pick(FuzzedDataProvider& in, std::initializer_list<T> choices) {
    return *(choices.begin() + in.ConsumeIntegralInRange<std::size_t>(0, choices.size() - 1));
}

/// Runs `w`'s work (w.poll(), then up to 1 ms of w.io) until `done` is set
/// or `max_rounds` rounds passed; returns `done`. `W` is a fuzz World with
/// poll() and an io_context `io`.
template <class W>
bool run_until(W& w, const bool& done, int max_rounds) {
    for (int i = 0; i < max_rounds && !done; ++i) {
        w.poll();
        if (!done) {
            w.io.restart();
            w.io.run_one_for(std::chrono::milliseconds(1));
        }
    }
    return done;
}

/// True with probability about 1/n (n >= 1): how often a value is made
/// hostile. An exhausted input gives false (the valid choice).
inline bool one_in(FuzzedDataProvider& in, unsigned n) { return in.ConsumeIntegralInRange<unsigned>(1, n) == n; }

/// A mostly-in-range integer: with probability 1/`wild` any value of T.
template <class T>
T mostly(FuzzedDataProvider& in, T lo, T hi, unsigned wild = 16) {
    if (one_in(in, wild)) return in.ConsumeIntegral<T>();
    return in.ConsumeIntegralInRange<T>(lo, hi);
}

}  // namespace xv::fuzz
