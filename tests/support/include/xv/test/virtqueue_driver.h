// SPDX-License-Identifier: GPL-2.0-only
// The guest-side virtqueue driver lives in guest/ (it also drives the
// demo's simulated guests); tests use it under their own namespace.
#pragma once

#include "xv/guest/virtqueue_driver.h"

namespace xv::test {
using guest::ChainBuilder;
using guest::DriverOptions;
using guest::GuestBuf;
using guest::PackedDesc;
using guest::SplitDesc;
using guest::Submitted;
using guest::UsedElem;
using guest::VirtqueueDriver;
namespace desc_flags = guest::desc_flags;
}  // namespace xv::test
