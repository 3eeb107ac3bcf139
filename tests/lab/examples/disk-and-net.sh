#!/bin/sh
# Example for `tests/lab/run --guest-script FILE`: runs inside the lab's
# DomU g1 (busybox; /dev/vda is the xen-virtiod disk, eth0 is up with
# 10.99.0.2/24 and Dom0 at 10.99.0.1, the virtio console is /dev/hvc1).
# Its output lands in tests/lab/out/guest-script.out, its exit status is
# the result guest-script:g1.
set -e
echo "kernel: $(uname -r)"
echo "disk: /dev/vda $(cat /sys/block/vda/size) sectors, $(cat /sys/block/vda/queue/write_cache)"
# 256 KiB through the page cache and back.
dd if=/dev/urandom of=/tmp/p bs=4k count=64 2>/dev/null
dd if=/tmp/p of=/dev/vda bs=4k seek=4096 conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/q bs=4k skip=4096 count=64 2>/dev/null
cmp /tmp/p /tmp/q && echo "disk: 256 KiB at 16 MiB read back identical"
ip -4 addr show eth0 | grep inet
ping -c 2 -W 3 10.99.0.1 | tail -n 2
