# tests/lab/lib/driver-domain.sh: the driver-domain scenario's build steps,
# sourced by tests/lab/run (uses its log, die, stamp_ok, inputs_hash,
# CACHE, LAB_DIR, LINUX_TREE, LINUX_PATCH, JOBS, NICE, IMG).
#
# The guests a driver domain serves run the stock XEN_VIRTIO kernel: the
# lab's DomU configuration built from Debian's linux-source-6.1 WITHOUT the
# lab's grant-DMA patch (that patch only matters for a Dom0 backend, which
# gets no iommus from xl 4.17; a driver-domain backend does).

DD_STOCK_KERNEL=""

# dd_build_stock_kernel: the DomU kernel from a pristine tree (hard links
# to the lab's tree, the patched files reverted), cached.
dd_build_stock_kernel() {
    local src=$CACHE/src/linux-stock/linux-source-6.1
    local bdir=$CACHE/build/domu-linux-6.1-stock
    local key; key=$( (inputs_hash "$LAB_DIR/config/domu-kernel.config" "$LINUX_TREE/Makefile"; echo stock) | sha256sum | cut -c1-16)
    DD_STOCK_KERNEL=$bdir/arch/arm64/boot/Image
    if stamp_ok "$bdir/lab-stamp" "$key" && [ -f "$DD_STOCK_KERNEL" ]; then STAGE_STATE=cached; return; fi
    if ! stamp_ok "$src/.lab-stock" "$key"; then
        rm -rf "$CACHE/src/linux-stock"; mkdir -p "$CACHE/src/linux-stock"
        cp -al "$LINUX_TREE" "$src" || die "cannot link $LINUX_TREE"
        rm -f "$src/.lab-applied.patch"
        local f
        for f in $(sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' "$LINUX_PATCH"); do
            cp --remove-destination "$LINUX_TREE/$f" "$src/$f"   # own copy: the lab tree keeps its patch
        done
        patch -d "$src" -p1 -R -s < "$LINUX_PATCH" >>"$LOG" 2>&1 || die "cannot revert the lab patch in $src"
        grep -q 'xen-virtiod lab' "$src/drivers/xen/grant-dma-ops.c" && die "$src still carries the lab patch"
        echo "$key" > "$src/.lab-stock"
    fi
    mkdir -p "$bdir"
    local mk=(make -C "$src" O="$bdir" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-)
    KCONFIG_ALLCONFIG=$LAB_DIR/config/domu-kernel.config "${NICE[@]}" "${mk[@]}" allnoconfig >>"$LOG" 2>&1 ||
        die "stock DomU kernel allnoconfig failed"
    grep -qx 'CONFIG_XEN_VIRTIO=y' "$bdir/.config" || die "stock DomU kernel lacks CONFIG_XEN_VIRTIO"
    "${NICE[@]}" "${mk[@]}" -j"$JOBS" Image >>"$LOG" 2>&1 || die "stock DomU kernel build failed (see $LOG)"
    echo "$key" > "$bdir/lab-stamp"
}

# dd_images ROOT: puts the driver-domain guests' kernel and initramfs into
# the Dom0 rootfs ROOT and points their xl configurations at them.
dd_images() {
    local root=$1
    [ -f "$DD_STOCK_KERNEL" ] || die "no stock DomU kernel (dd_build_stock_kernel did not run)"
    # The Image must not contain the lab patch's message.
    if grep -q 'no iommus property: grants for backend dom0' "$DD_STOCK_KERNEL"; then
        die "$DD_STOCK_KERNEL carries the lab patch"
    fi
    mkdir -p "$root/lab/dd"
    cp "$DD_STOCK_KERNEL" "$root/lab/dd/Image"
    # The DomU initramfs with drv-guest-init in front of its /init.
    local r=$IMG/dd-guest-root
    rm -rf "$r"; cp -a "$IMG/domu-root" "$r"
    mv "$r/init" "$r/init.domu"
    cp "$LAB_DIR/guest/drv-guest-init" "$r/init"; chmod +x "$r/init"
    (cd "$r" && find . | cpio -o -H newc --quiet | gzip -1) > "$root/lab/dd/initrd.cpio.gz"
    local g
    for g in dg dg2; do
        sed -i -e 's|^kernel = .*|kernel = "/lab/dd/Image"|' -e 's|^ramdisk = .*|ramdisk = "/lab/dd/initrd.cpio.gz"|' \
            "$root/lab/domu-$g.cfg"
    done
    cp "$LAB_DIR/guest/drv-dom0" "$root/lab/drv-dom0"
}
