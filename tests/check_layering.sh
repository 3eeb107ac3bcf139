#!/bin/sh
# Fails when a file outside xen/ includes a Xen header, or when a layer
# includes a header of a layer above it (daemon -> devices -> transport -> xen).
root=${1:-.}
cd "$root" || exit 2
fail=0
bad=$(grep -rlE '#include *[<"](xen/|xen(ctrl|store|gnttab|evtchn|devicemodel|foreignmemory|toolcore|toollog|guest|light)[._])' \
      --include='*.h' --include='*.cc' --include='*.hpp' --include='*.cpp' . \
      | grep -v '^\./xen/' | grep -v '^\./build' | grep -v '^\./tests/lab/' || true)
if [ -n "$bad" ]; then echo "Xen headers included outside xen/:"; echo "$bad"; fail=1; fi
check() {  # layer, forbidden include prefix
  hits=$(grep -rlE "#include *\"xv/$2/" "$1" --include='*.h' --include='*.cc' 2>/dev/null || true)
  if [ -n "$hits" ]; then echo "$1/ includes xv/$2/ (points upward):"; echo "$hits"; fail=1; fi
}
check xen transport; check xen devices; check transport devices
check common xen; check common transport
check transport guest; check devices guest; check xen guest
[ $fail -eq 0 ] && echo "layering: 1 passed, 0 failed"
exit $fail
