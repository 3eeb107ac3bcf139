// SPDX-License-Identifier: GPL-2.0-only
// virtio-console (virtio 1.2 §5.3): port 0 on a pty, a unix socket or a log.
//
//   guest transmitq --copy--> [bounded output buffer, drop-oldest] --> pty master / socket client
//                        \--> [log file, always, via io_uring]
//   guest receiveq  <--copy-- [one staged chunk] <-- pty master / socket client
//                              (the host side is not read while a chunk waits
//                               for rx buffers: input stays in order, none lost)
//
// Queues (§5.3.2, no MULTIPORT): 0 = port0 receiveq, 1 = port0 transmitq.
//
// Host side lifecycle (independent of the guest's resets):
//
//   make_console()                 socket client connects        client leaves
//   -------------> [Detached] ---------------------------> [Attached] ---+
//                      ^   pty: always Attached (the device keeps the     |
//                      |   slave open; the tty buffers what nobody reads)  |
//                      +---------------------------------------------------+
//
// Guest side: Idle --activate()--> Active --reset(done)--> Idle; done() is
// called once no handler touches guest memory.
#pragma once

#include <boost/asio/any_io_executor.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "xv/result.h"
#include "xv/transport/device.h"

namespace xv::devices {

/// Backend configuration of one virtio-console device.
struct ConsoleConfig {
    /// Where port 0 goes on the host side.
    enum class Backend { Pty, Socket, Log };
    Backend backend = Backend::Pty;
    /// Socket backend: the unix socket to listen on (one client at a time).
    std::string socket_path;
    /// Receives all guest output whatever the backend (required for Log).
    std::string log_path;
    /// Output kept while nobody reads it (drop-oldest beyond this).
    std::size_t buffer_bytes = 64 * 1024;
    /// How often the pty's window size is looked at (VIRTIO_CONSOLE_F_SIZE).
    std::chrono::milliseconds winsize_poll{200};
};

/// virtio-console feature bits (virtio 1.2 §5.3.3).
namespace console_feature {
inline constexpr unsigned kSize = 0;
inline constexpr unsigned kMultiport = 1;
inline constexpr unsigned kEmergWrite = 2;
}  // namespace console_feature

/// Everything that can go wrong with one guest request.
enum class ConsoleError : std::uint8_t {
    None = 0,
    TxHasWritable,     ///< transmitq chain with device-writable buffers (ignored, data still taken)
    TxTooLong,         ///< transmitq chain beyond the per-chain limit (truncated)
    RxNotWritable,     ///< receiveq chain without device-writable space
};

/// Short name of an error, for log lines.
std::string_view console_error_name(ConsoleError e);

/// The virtio outcome of an error: the used length the chain is returned
/// with (virtio 1.2 §2.7.8: bytes written into device-writable buffers);
/// the one place this mapping is made.
std::uint32_t console_error_used_len(ConsoleError e, std::uint32_t written);

/// Counters of one console; read at any time.
struct ConsoleStats {
    std::uint64_t out_bytes = 0;      ///< guest -> host, accepted
    std::uint64_t out_dropped = 0;    ///< oldest output bytes dropped (buffer full)
    std::uint64_t in_bytes = 0;       ///< host -> guest, delivered
    std::uint64_t log_bytes = 0;      ///< written to the log file
    std::uint64_t log_dropped = 0;    ///< log bytes dropped (the file could not keep up)
    std::uint64_t emerg_chars = 0;    ///< characters from emerg_wr
    std::uint64_t attaches = 0;       ///< socket clients accepted
    std::uint64_t bad_chains = 0;
};

/// A virtio-console device; the daemon keeps it as a transport::Device.
class ConsoleDevice : public transport::Device {
public:
    /// The pty slave path ("/dev/pts/N") for the Pty backend, else empty.
    virtual const std::string& pty_path() const = 0;
    /// The socket path for the Socket backend, else empty.
    virtual const std::string& socket_path() const = 0;
    /// True while a socket client is connected (always true for a pty).
    virtual bool attached() const = 0;
    /// Current window size (cols, rows) as the guest sees it.
    virtual std::pair<std::uint16_t, std::uint16_t> window_size() const = 0;
    /// Counters since creation.
    virtual ConsoleStats stats() const = 0;
};

/// Opens the host side (pty, listening socket and/or log file).
Result<std::unique_ptr<ConsoleDevice>> make_console_device(const ConsoleConfig& cfg, transport::DeviceIdentity id,
                                                           boost::asio::any_io_executor ex);

/// make_console_device() as a plain transport::Device.
Result<std::unique_ptr<transport::Device>> make_console(const ConsoleConfig& cfg, transport::DeviceIdentity id,
                                                        boost::asio::any_io_executor ex);

}  // namespace xv::devices
