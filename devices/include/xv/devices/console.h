// SPDX-License-Identifier: GPL-2.0-only
// virtio-console (virtio 1.2 §5.3): port 0 on a pty, a unix socket or a log;
// with extra ports configured, VIRTIO_CONSOLE_F_MULTIPORT and ports 1.. on
// unix sockets.
//
//   guest transmitq --copy--> [bounded output buffer, drop-oldest] --> pty master / socket client
//                        \--> [log file, always, via io_uring]
//   guest receiveq  <--copy-- [one staged chunk] <-- pty master / socket client
//                              (the host side is not read while a chunk waits
//                               for rx buffers: input stays in order, none lost)
//
// Queues (§5.3.2): 0 = port0 receiveq, 1 = port0 transmitq; with MULTIPORT
// 2 = control receiveq (device -> driver), 3 = control transmitq (driver ->
// device), then port p >= 1 on 2p+2 (receiveq) and 2p+3 (transmitq).
//
// MULTIPORT is offered only when `ports` is not empty (a guest of a device
// without extra ports sees exactly the two-queue console). Control flow
// with MULTIPORT negotiated (§5.3.6.2):
//
//   driver: DEVICE_READY(1) --> device: DEVICE_ADD(p) for each port not yet added
//   driver: PORT_READY(p,1) --> device: CONSOLE_PORT(0,1) + RESIZE(0) (F_SIZE)
//                                       for port 0, PORT_NAME(p, name) for
//                                       a named port, PORT_OPEN(p,1) while the
//                                       host side is attached
//   host client attaches/leaves --> device: PORT_OPEN(p, 1/0) (port ready)
//   driver: PORT_OPEN(p, 1/0)   --> host input to port p >= 1 flows / waits
//
// Every driver message is checked (length, event, port id, value); a bad
// one is logged with domid/device/queue, counted and ignored.
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
#include <optional>
#include <vector>

#include "xv/result.h"
#include "xv/transport/device.h"

namespace xv::devices {

/// An extra port (1..) of a multiport console: a unix socket on the host
/// side, one client at a time, named for the guest (PORT_NAME).
struct ConsolePortConfig {
    /// The port's name as the guest sees it (/dev/virtio-ports/<name> on
    /// Linux): 1..kMaxPortName bytes, printable, no '/'.
    std::string name;
    /// The unix socket to listen on.
    std::string socket_path;
};

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
    /// Ports 1.. (MULTIPORT offered when not empty); at most kMaxExtraPorts.
    std::vector<ConsolePortConfig> ports;

    static constexpr std::size_t kMaxExtraPorts = 15;  ///< max_nr_ports <= 16: 34 queues
    static constexpr std::size_t kMaxPortName = 255;
};

/// Checks a port name (1..kMaxPortName bytes, no control character, no '/');
/// nullopt when fine, else why not.
std::optional<std::string> console_port_name_problem(std::string_view name);

/// virtio-console feature bits (virtio 1.2 §5.3.3).
namespace console_feature {
inline constexpr unsigned kSize = 0;
inline constexpr unsigned kMultiport = 1;
inline constexpr unsigned kEmergWrite = 2;
}  // namespace console_feature

/// Control messages with MULTIPORT (virtio 1.2 §5.3.6.2): struct
/// virtio_console_control { le32 id; le16 event; le16 value; }, then a
/// payload for RESIZE (le16 cols, le16 rows) and PORT_NAME (the name,
/// UTF-8, no NUL).
namespace console_control {
inline constexpr std::size_t kHeaderSize = 8;
inline constexpr std::uint16_t kDeviceReady = 0;   ///< driver -> device
inline constexpr std::uint16_t kDeviceAdd = 1;     ///< device -> driver
inline constexpr std::uint16_t kDeviceRemove = 2;  ///< device -> driver
inline constexpr std::uint16_t kPortReady = 3;     ///< driver -> device
inline constexpr std::uint16_t kConsolePort = 4;   ///< device -> driver
inline constexpr std::uint16_t kResize = 5;        ///< device -> driver
inline constexpr std::uint16_t kPortOpen = 6;      ///< both ways
inline constexpr std::uint16_t kPortName = 7;      ///< device -> driver
}  // namespace console_control

/// Everything that can go wrong with one guest request.
enum class ConsoleError : std::uint8_t {
    None = 0,
    TxHasWritable,     ///< transmitq chain with device-writable buffers (ignored, data still taken)
    TxTooLong,         ///< transmitq chain beyond the per-chain limit (truncated)
    RxNotWritable,     ///< receiveq chain without device-writable space
    ControlShort,      ///< control transmitq message shorter than its header
    ControlEvent,      ///< control event unknown or not one the driver sends
    ControlPort,       ///< control message for a port that does not exist or was not added
    ControlValue,      ///< control value other than 0 or 1
    ControlRxTooSmall, ///< control receiveq chain too small for the next message
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
    std::uint64_t bad_control = 0;    ///< driver control messages refused (MULTIPORT)
    std::uint64_t control_in = 0;     ///< driver control messages handled
    std::uint64_t control_out = 0;    ///< device control messages delivered to the driver
    std::uint64_t control_dropped = 0; ///< device control messages dropped (driver took none: queue full)
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
    /// Counters since creation (port 0 data; control counters).
    virtual ConsoleStats stats() const = 0;
    /// Number of ports (1 + the extra ports configured).
    virtual std::size_t port_count() const = 0;
    /// The socket path of port `p` (empty when `p` has none or is out of range).
    virtual std::string port_socket_path(std::size_t p) const = 0;
    /// True while a client is connected to port `p`.
    virtual bool port_attached(std::size_t p) const = 0;
    /// Data counters of port `p` (zeros when out of range).
    virtual ConsoleStats port_stats(std::size_t p) const = 0;
};

/// Opens the host side (pty, listening socket and/or log file).
Result<std::unique_ptr<ConsoleDevice>> make_console_device(const ConsoleConfig& cfg, transport::DeviceIdentity id,
                                                           boost::asio::any_io_executor ex);

/// make_console_device() as a plain transport::Device.
Result<std::unique_ptr<transport::Device>> make_console(const ConsoleConfig& cfg, transport::DeviceIdentity id,
                                                        boost::asio::any_io_executor ex);

}  // namespace xv::devices
