// SPDX-License-Identifier: GPL-2.0-only
// The typed virtio transport conformance suite on virtio-blk, over mmio,
// mmio+nonblocking, pci and pci+nonblocking (a 1 MiB raw image per device,
// unlinked once the device holds it open; two request queues so the
// all-queues activation covers MQ).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "device_conformance.h"
#include "xv/devices/blk.h"

namespace xv::test {
namespace {

struct MakeBlk {
    static Result<std::unique_ptr<transport::Device>> make(xen::DomId d, boost::asio::any_io_executor ex) {
        std::string path = "/var/tmp/xv-blk-conf-XXXXXX";
        const int fd = ::mkstemp(path.data());
        if (fd < 0) return errno_error(errno, "mkstemp " + path);
        const bool sized = ::ftruncate(fd, 1 << 20) == 0;
        const int err = errno;
        ::close(fd);
        if (!sized) {
            ::unlink(path.c_str());
            return errno_error(err, "ftruncate " + path);
        }
        devices::BlkConfig cfg;
        cfg.path = path;
        cfg.queues = 2;
        cfg.serial = "conformance";
        auto dev = devices::make_blk(cfg, {d, "blk0"}, std::move(ex));
        ::unlink(path.c_str());
        return dev;
    }
};

INSTANTIATE_TYPED_TEST_SUITE_P(Blk, VirtioConformance, ConformanceKinds<MakeBlk>, ConformanceKindNames);

}  // namespace
}  // namespace xv::test
