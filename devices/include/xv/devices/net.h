// SPDX-License-Identifier: GPL-2.0-only
// virtio-net (virtio 1.2 §5.1) backed by a Linux tap device.
//
//   guest txq --pop--> [hdr copy + validate] --writev(grant pages)--> tap fd
//   guest rxq <--push-- readv(grant pages [+ spill buffer]) <-------- tap fd
//   guest ctrlq: rx mode, MAC table/address, announce ack, MQ pairs
//
// Queue layout (§5.1.2): rx0=0, tx0=1, ... rxN=2N, txN=2N+1, then the
// control queue: 2*max_pairs when MQ is negotiated, else 2.
//
// Device lifecycle (the transport drives it, see xv/transport/device.h):
//
//   make_net()            activate()                reset(done)
//   ---------> [Idle] ---------------> [Active] ----------------> [Idle]
//   tap opened,  ^  (one Session per activation: tap fds dup'd,     |
//   link up      |   async waits on the queue strands)              |
//                +---------------------------------------------------+
//                  done() once no handler touches guest memory
//
// Backpressure: with no rx buffers posted the device stops reading the tap
// (frames wait in the tap's queue) and resumes on the next rx kick; a tx
// frame the tap cannot take yet (EAGAIN) is kept and sent once the tap fd
// is writable. Frames are never dropped because of the device itself.
#pragma once

#include <boost/asio/any_io_executor.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "xv/result.h"
#include "xv/transport/device.h"

namespace xv::devices {

/// Backend configuration of one virtio-net device.
struct NetConfig {
    /// Tap interface name; empty lets the kernel pick one ("tap%d").
    std::string tap;
    /// Guest MAC; a random locally administered one when unset.
    std::optional<std::array<std::uint8_t, 6>> mac;
    /// Queue pairs offered (VIRTIO_NET_F_MQ when > 1); 1..16.
    std::uint16_t queues = 1;
    /// Bridge to attach the tap to (SIOCBRADDIF); empty: none.
    std::string bridge;
    /// MTU offered with VIRTIO_NET_F_MTU and set on the tap; 0: the tap's.
    std::uint16_t mtu = 0;
    /// Once a transmit queue runs empty, the device keeps looking at its
    /// avail ring for up to this long, with the driver's notifications off,
    /// before it asks for a kick again (0: asks at once). A guest that
    /// refills within the window is served without a kick and without the
    /// device's thread sleeping and waking. Each look is a separate handler
    /// on the queue's strand (other queues and the ioreq path run between
    /// looks) and the device yields the CPU between looks; a yield that
    /// comes back late (another task wanted the CPU) ends the window.
    unsigned tx_poll_us = kDefaultTxPollUs;
    static constexpr unsigned kDefaultTxPollUs = 50;
    static constexpr unsigned kMaxTxPollUs = 1000;
    /// Whether a window ends when a yield between looks comes back late
    /// (on by default; tests turn it off to poll whole windows on a busy
    /// host). Not a configuration key.
    bool tx_poll_gives_way = true;
};

/// virtio-net feature bits (virtio 1.2 §5.1.3).
namespace net_feature {
inline constexpr unsigned kCsum = 0;
inline constexpr unsigned kGuestCsum = 1;
inline constexpr unsigned kMtu = 3;
inline constexpr unsigned kMac = 5;
inline constexpr unsigned kGuestTso4 = 7;
inline constexpr unsigned kGuestTso6 = 8;
inline constexpr unsigned kGuestEcn = 9;
inline constexpr unsigned kGuestUfo = 10;
inline constexpr unsigned kHostTso4 = 11;
inline constexpr unsigned kHostTso6 = 12;
inline constexpr unsigned kHostEcn = 13;
inline constexpr unsigned kHostUfo = 14;
inline constexpr unsigned kMrgRxbuf = 15;
inline constexpr unsigned kStatus = 16;
inline constexpr unsigned kCtrlVq = 17;
inline constexpr unsigned kCtrlRx = 18;
inline constexpr unsigned kGuestAnnounce = 21;
inline constexpr unsigned kMq = 22;
inline constexpr unsigned kCtrlMacAddr = 23;
}  // namespace net_feature

/// struct virtio_net_hdr_v1 (virtio 1.2 §5.1.6), little-endian wire layout.
struct VirtioNetHdr {
    std::uint8_t flags = 0;
    std::uint8_t gso_type = 0;
    std::uint16_t hdr_len = 0;
    std::uint16_t gso_size = 0;
    std::uint16_t csum_start = 0;
    std::uint16_t csum_offset = 0;
    std::uint16_t num_buffers = 0;
};
static_assert(sizeof(VirtioNetHdr) == 12);

/// Header flag and gso_type values (virtio 1.2 §5.1.6).
namespace net_hdr {
inline constexpr std::uint8_t kNeedsCsum = 1;
inline constexpr std::uint8_t kDataValid = 2;
inline constexpr std::uint8_t kRscInfo = 4;
inline constexpr std::uint8_t kGsoNone = 0;
inline constexpr std::uint8_t kGsoTcpv4 = 1;
inline constexpr std::uint8_t kGsoUdp = 3;
inline constexpr std::uint8_t kGsoTcpv6 = 4;
inline constexpr std::uint8_t kGsoEcn = 0x80;
/// Largest frame accepted from the guest, without the header (64 KiB GSO
/// payload plus Ethernet and VLAN headers).
inline constexpr std::uint32_t kMaxFrame = 65550;
/// Smallest frame: an Ethernet header.
inline constexpr std::uint32_t kMinFrame = 14;
}  // namespace net_hdr

/// Control queue classes, commands and acks (virtio 1.2 §5.1.6.5).
namespace net_ctrl {
inline constexpr std::uint8_t kOk = 0;
inline constexpr std::uint8_t kErr = 1;
inline constexpr std::uint8_t kClassRx = 0;
inline constexpr std::uint8_t kRxPromisc = 0;
inline constexpr std::uint8_t kRxAllmulti = 1;
inline constexpr std::uint8_t kClassMac = 1;
inline constexpr std::uint8_t kMacTableSet = 0;
inline constexpr std::uint8_t kMacAddrSet = 1;
inline constexpr std::uint8_t kClassAnnounce = 3;
inline constexpr std::uint8_t kAnnounceAck = 0;
inline constexpr std::uint8_t kClassMq = 4;
inline constexpr std::uint8_t kMqVqPairsSet = 0;
/// Entries kept per MAC filter table; longer tables switch the filter to
/// "all unicast" / "all multicast" for that class instead.
inline constexpr std::uint32_t kMacTableMax = 64;
}  // namespace net_ctrl

/// Config space status bits (virtio 1.2 §5.1.4).
namespace net_status {
inline constexpr std::uint16_t kLinkUp = 1;
inline constexpr std::uint16_t kAnnounce = 2;
}  // namespace net_status

/// Everything that can go wrong with one guest request, device-wide.
enum class NetError : std::uint8_t {
    None = 0,
    ShortChain,         ///< tx chain shorter than the header + an Ethernet header
    FrameTooLong,       ///< tx frame longer than kMaxFrame
    BadFlags,           ///< DATA_VALID/RSC_INFO on tx, or NEEDS_CSUM without CSUM
    BadGsoType,         ///< unknown gso_type, or one whose feature was not negotiated
    BadGso,             ///< gso_size 0 or hdr_len beyond the frame
    BadCsumOffsets,     ///< csum_start + csum_offset + 2 beyond the frame
    RxBufferTooSmall,   ///< rx chain cannot hold the header (or the frame without MRG_RXBUF)
    CtrlMalformed,      ///< control message with a bad length or layout
    CtrlUnsupported,    ///< class/command not offered or not negotiated
    CtrlBadValue,       ///< value out of range (e.g. VQ_PAIRS_SET beyond max)
    TapRejected,        ///< the kernel refused the frame (write error other than EAGAIN)
};

/// Short name of an error, for log lines.
std::string_view net_error_name(NetError e);

/// The virtio outcome of an error: the control-queue ack byte
/// (VIRTIO_NET_OK / VIRTIO_NET_ERR). Data-queue errors drop the frame and
/// return the chain; this is the one place the mapping is made.
std::uint8_t net_error_ack(NetError e);

/// Validates a tx header against the frame length and the negotiated
/// features (virtio 1.2 §5.1.6.2.1). Pure function, for the data path and tests.
NetError validate_tx_header(const VirtioNetHdr& hdr, std::uint32_t frame_len, std::uint64_t features);

/// Counters of one net device (all queues); read at any time.
struct NetStats {
    std::uint64_t tx_frames = 0;
    std::uint64_t tx_bytes = 0;
    std::uint64_t tx_dropped = 0;   ///< bad header / rejected by the tap
    std::uint64_t tx_eagain = 0;    ///< times the tap was full and the device waited
    std::uint64_t rx_frames = 0;
    std::uint64_t rx_bytes = 0;
    std::uint64_t rx_filtered = 0;  ///< not for us under the rx mode / MAC table
    std::uint64_t rx_dropped = 0;   ///< guest buffer too small
    std::uint64_t rx_merged = 0;    ///< frames that used more than one chain
    std::uint64_t rx_stalls = 0;    ///< times reading stopped for lack of rx buffers
    std::uint64_t ctrl_ok = 0;
    std::uint64_t ctrl_err = 0;
    /// tx polling (NetConfig::tx_poll_us): windows started when a transmit
    /// queue ran empty, windows that found chains, windows that ended empty
    /// (then the driver is asked to kick), of those the ones ended early
    /// because the CPU was wanted, and the CPU time those empty windows took.
    std::uint64_t tx_polls = 0;
    std::uint64_t tx_poll_hits = 0;
    std::uint64_t tx_polls_in_vain = 0;
    std::uint64_t tx_polls_contended = 0;
    std::uint64_t tx_poll_in_vain_ns = 0;
};

/// A virtio-net device; the daemon keeps it as a transport::Device.
class NetDevice : public transport::Device {
public:
    /// Name of the tap interface (as the kernel reports it).
    virtual const std::string& tap_name() const = 0;
    /// The MAC the guest sees (config space; follows MAC_ADDR_SET).
    virtual std::array<std::uint8_t, 6> mac() const = 0;
    /// Sets or clears LINK_UP in the config status and signals the change.
    virtual void set_link_up(bool up) = 0;
    /// Asks the guest to announce itself (status ANNOUNCE, §5.1.6.5.4);
    /// false when GUEST_ANNOUNCE was not negotiated.
    virtual bool announce() = 0;
    /// Queue pairs in use (1 until the driver sends VQ_PAIRS_SET).
    virtual std::uint16_t active_pairs() const = 0;
    /// Counters since creation.
    virtual NetStats stats() const = 0;
};

/// Opens the tap (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, IFF_MULTI_QUEUE with
/// one fd per pair), probes its offloads, sets MTU, bridge and link up.
Result<std::unique_ptr<NetDevice>> make_net_device(const NetConfig& cfg, transport::DeviceIdentity id,
                                                   boost::asio::any_io_executor ex);

/// make_net_device() as a plain transport::Device.
Result<std::unique_ptr<transport::Device>> make_net(const NetConfig& cfg, transport::DeviceIdentity id,
                                                   boost::asio::any_io_executor ex);

}  // namespace xv::devices
