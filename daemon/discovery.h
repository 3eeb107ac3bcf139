// SPDX-License-Identifier: GPL-2.0-only
// Discovery: the virtio devices the toolstack (libxl) announced in xenstore
// for this backend domain.
//
// Two layouts (xen-facts §3.2, lab-notes "How xl ... describes"):
//
//   /local/domain/<be>/backend/virtio/<fe>/<devid>/       xl.cfg virtio = [...]  (Xen >= 4.18)
//       frontend frontend-id online state type transport grant_usage base(hex) irq(dec)
//   /local/domain/<be>/backend/virtio_disk/<fe>/<devid>/  disk = [...,specification=virtio] (4.17)
//       frontend frontend-id online state params mode type specification transport
//       base(DECIMAL) irq discard-enable [grant_usage]
//
// Everything read here comes from xenstore, which a guest's toolstack
// writes on its behalf: it is validated like guest input. A malformed
// device yields a ParseError for that device only.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "xv/result.h"
#include "xv/xen/types.h"
#include "xv/xen/xenstore.h"

namespace xv::daemon {

/// Which xenstore layout announced a device.
enum class BackendKind { Virtio, VirtioDisk };

/// "virtio" or "virtio_disk".
const char* kind_name(BackendKind k);

/// One virtio device announced for us, validated.
struct AnnouncedDevice {
    BackendKind kind = BackendKind::Virtio;
    xen::DomId frontend = 0;
    unsigned devid = 0;
    std::string backend_path;   ///< absolute backend directory
    std::string frontend_path;  ///< absolute frontend directory
    std::string type;           ///< DT compatible ("virtio,device", "virtio,device2")
    std::string transport;      ///< "mmio" (or "pci")
    bool grant_usage = true;
    std::uint64_t base = 0;     ///< MMIO window of the device
    std::uint32_t irq = 0;      ///< Arm SPI, 32..1019
    int state = 0;              ///< backend XenbusState
    bool online = true;
    // virtio_disk only
    std::string params;         ///< image path
    bool writable = true;
    bool discard = false;

    /// Stable key "virtio/<fe>/<devid>".
    std::string key() const;
};

/// Parses an unsigned integer as libxl writes them: "0x..." hex or
/// decimal. Rejects empty strings, signs, junk and values above `max`.
std::optional<std::uint64_t> parse_xs_uint(const std::string& s, std::uint64_t max = UINT64_MAX);

/// Reads and validates one device directory. Errors name the path and key.
Result<AnnouncedDevice> read_announced_device(xen::XenStore& xs, BackendKind kind, xen::DomId self,
                                              xen::DomId frontend, unsigned devid);

/// The result of one scan: valid devices, and per-path errors.
struct ScanResult {
    std::vector<AnnouncedDevice> devices;
    /// backend path -> why it was rejected; the message names the guest
    /// ("dom<fe>") and, when the directory name parsed, the device.
    std::map<std::string, Error> errors;
    /// Set when xenstore itself failed (not a device's fault): the lists
    /// are then incomplete and say nothing about which guests went away.
    std::optional<Error> failed;
};

/// Lists every device announced for backend domain `self` (both layouts).
ScanResult scan_announced_devices(xen::XenStore& xs, xen::DomId self, std::optional<xen::DomId> only_frontend = {});

/// Writes an error for a device where the toolstack and `xenstore-ls`
/// show it: `<backend dir>/error` and, as xenbus drivers do,
/// `/local/domain/<be>/error/<backend dir relative>/error`.
Result<void> write_device_error(xen::XenStore& xs, xen::DomId self, const AnnouncedDevice& dev,
                                const std::string& message);

/// The same for a backend directory that did not parse into a device
/// (a scan error: `path` is a key of ScanResult::errors).
Result<void> write_backend_error(xen::XenStore& xs, xen::DomId self, const std::string& backend_path,
                                 const std::string& message);

/// Sets the backend `state` node.
Result<void> write_backend_state(xen::XenStore& xs, const AnnouncedDevice& dev, xen::XenbusState state);

}  // namespace xv::daemon
