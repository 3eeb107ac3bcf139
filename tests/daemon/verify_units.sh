#!/bin/sh
# Runs `systemd-analyze verify` on the unit files of systemd/, with
# ExecStart/ExecStartPre pointed at the built binary (the installed path
# /usr/sbin/xen-virtiod does not exist in a build tree) and the template
# verified through one instance.
#   verify_units.sh <systemd source dir> <built xen-virtiod>
set -eu
src=$1
bin=$2
command -v systemd-analyze >/dev/null 2>&1 || { echo "systemd-analyze not installed: skipped"; exit 77; }
[ -x "$bin" ] || { echo "not executable: $bin" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in xen-virtiod.service xen-virtiod@.service; do
    sed "s|/usr/sbin/xen-virtiod|$bin|g" "$src/$unit" > "$tmp/$unit"
done
ln -s "xen-virtiod@.service" "$tmp/xen-virtiod@5.service"
cd "$tmp"
out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no \
      "$tmp/xen-virtiod.service" "$tmp/xen-virtiod@5.service" 2>&1) || rc=$?
rc=${rc:-0}
# Units named in After=/Wants= (xenstored, xendomains) may not be installed
# here; that is not a fault of ours. Anything else is.
problems=$(printf '%s\n' "$out" | grep -v -e '^$' \
    -e 'xenstored.service' -e 'xendomains.service' -e 'xen-init-dom0.service' -e 'proc-xen.mount' || true)
if [ -n "$problems" ]; then
    printf '%s\n' "$problems" >&2
    exit 1
fi
[ "$rc" -eq 0 ] || { printf '%s\n' "$out" >&2; exit "$rc"; }
echo "systemd-analyze verify: ok"
