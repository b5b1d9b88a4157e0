#!/usr/bin/env bash
# Build the Vireo test guest from Debian packages only:
#   OUTDIR/bzImage         Debian's cloud kernel (linux-image-cloud-amd64), as shipped
#   OUTDIR/vmlinux         the same kernel as an uncompressed ELF (boots through its PVH note)
#   OUTDIR/initrd.cpio.gz  busybox initramfs with the virtio modules; /init is images/guest-init.sh
#   OUTDIR/rootfs.ext4     the same tree as a 32 MiB ext4 image (mkfs.ext4 -d), for vireo.root=/dev/vda
# Usage: images/build-guest.sh [OUTDIR]   (default: build/guest in the repository)
# Cached: does nothing (quickly) when the packages and these scripts did not change.
set -euo pipefail
PROG=build-guest.sh # used by images/lib.sh
# shellcheck source=images/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OUTDIR=${1:-$VIREO_BUILD/guest}
[ $# -le 1 ] || die "usage: images/build-guest.sh [OUTDIR]"
HERE="$VIREO_ROOT/images"

# Modules the guest loads (their dependencies come through modules.dep).
GUEST_MODULES="virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev virtio_mmio
  virtio_blk virtio_net failover net_failover vsock vmw_vsock_virtio_transport_common
  vmw_vsock_virtio_transport virtio_rng virtio_balloon"
# Initramfs compression: gzip (see docs/lab.md for the measurements behind this choice).
COMPRESS="gzip -9 -n"

print_outputs() {
    printf '%s\n' "$OUTDIR/bzImage" "$OUTDIR/vmlinux" "$OUTDIR/initrd.cpio.gz" "$OUTDIR/rootfs.ext4"
}

mkdir -p "$VIREO_BUILD"
if [ -z "${VIREO_LOCKED:-}" ]; then # one builder at a time (lab/lab takes the same lock)
    exec {LOCK}>"$VIREO_BUILD/.lock"
    flock "$LOCK"
fi
kernel_tree
BB=$(busybox_bin)
BBVER=$(basename "$(dirname "$(dirname "$BB")")")
SCRIPTS_KEY=$(cat "$HERE/build-guest.sh" "$HERE/guest-init.sh" "$HERE/lib.sh" | md5sum | cut -c1-16)
STAMP="kernel=$KPKG=$KPKGVER busybox=$BBVER scripts=$SCRIPTS_KEY"

if [ -f "$OUTDIR/.stamp" ] && [ "$(cat "$OUTDIR/.stamp")" = "$STAMP" ] &&
    [ -s "$OUTDIR/bzImage" ] && [ -s "$OUTDIR/vmlinux" ] && [ -s "$OUTDIR/initrd.cpio.gz" ] && [ -s "$OUTDIR/rootfs.ext4" ]; then
    print_outputs
    exit 0
fi

mkdir -p "$OUTDIR" "$VIREO_BUILD/tmp"
rm -f "$OUTDIR/.stamp"
WORK=$(mktemp -d "$VIREO_BUILD/tmp/guest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
VMLINUZ="$KTREE/boot/vmlinuz-$KVER"
CONFIG="$KTREE/boot/config-$KVER"

# --- bzImage ---------------------------------------------------------------------------------
cp -f "$VMLINUZ" "$WORK/bzImage"

# --- vmlinux: find the compressed payload inside the bzImage and decompress it -----------------
# (what linux/scripts/extract-vmlinux does, for the compression the kernel config names)
comp=$(sed -n 's/^CONFIG_KERNEL_\(GZIP\|BZIP2\|LZMA\|XZ\|LZO\|LZ4\|ZSTD\)=y$/\1/p' "$CONFIG")
case $comp in
GZIP) magic='\x1f\x8b\x08'; dec=("$(tool gzip gzip)" -dc) ;;
XZ) magic='\xfd7zXZ\x00'; dec=("$(tool xz xz-utils)" -dc) ;;
LZMA) magic='\x5d\x00\x00\x00'; dec=("$(tool xz xz-utils)" --format=lzma -dc) ;;
BZIP2) magic='BZh'; dec=("$(tool bzip2 bzip2)" -dc) ;;
LZO) magic='\x89LZO'; dec=("$(tool lzop lzop)" -dc) ;;
LZ4) magic='\x02\x21\x4c\x18'; dec=("$(tool lz4 lz4)" -dc) ;;
ZSTD) magic='\x28\xb5\x2f\xfd'; dec=("$(tool zstd zstd)" -dc) ;;
*) die "cannot tell the kernel's compression from $CONFIG" ;;
esac
found=
for off in $(LC_ALL=C grep -aboP "$magic" "$VMLINUZ" | cut -d: -f1); do
    # The decompressor may complain about the data after the payload; the ELF check decides.
    tail -c +$((off + 1)) "$VMLINUZ" | "${dec[@]}" >"$WORK/vmlinux" 2>/dev/null || true
    if [ "$(head -c4 "$WORK/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
        found=$off
        break
    fi
done
[ -n "$found" ] || die "no ${comp,,}-compressed ELF found in $VMLINUZ"
# PVH entry point: ELF note "Xen", type 0x12 (XEN_ELFNOTE_PHYS32_ENTRY).
if command -v readelf >/dev/null 2>&1; then
    readelf -n "$WORK/vmlinux" | grep -q 'Xen.*(0x00000012)' || die "vmlinux has no PVH ELF note (Xen 0x12)"
else
    LC_ALL=C grep -qaP '\x04\x00\x00\x00[\x04\x08]\x00\x00\x00\x12\x00\x00\x00Xen\x00' "$WORK/vmlinux" ||
        die "vmlinux has no PVH ELF note (Xen 0x12)"
fi

# --- initramfs -------------------------------------------------------------------------------
R="$WORK/root"
mkdir -p "$R"/{bin,dev,proc,sys,tmp,run,root,etc/vireo,usr} "$R/lib/modules/$KVER"
ln -s bin "$R/sbin"
ln -s ../bin "$R/usr/bin"
ln -s ../bin "$R/usr/sbin"
cp "$BB" "$R/bin/busybox"
for a in $("$BB" --list); do
    [ "$a" = busybox ] || ln -s busybox "$R/bin/$a"
done
install -m 0755 "$HERE/guest-init.sh" "$R/init"
printf '#!/bin/sh\necho "VIREO-RUN hello"\n' >"$R/etc/vireo/hello.sh"
chmod 0755 "$R/etc/vireo/hello.sh"
chmod 1777 "$R/tmp"
# shellcheck disable=SC2086 # a list of names
mods=$(mod_closure "$KTREE" "$KVER" $GUEST_MODULES) || die "guest modules missing from $KPKG"
for m in $mods; do
    mkdir -p "$R/lib/modules/$KVER/$(dirname "$m")"
    cp "$KTREE/lib/modules/$KVER/$m" "$R/lib/modules/$KVER/$m"
done
cp "$KTREE/lib/modules/$KVER/modules.builtin" "$R/lib/modules/$KVER/" 2>/dev/null || true
"$BB" depmod -b "$R" "$KVER" || die "depmod -b failed"
find "$R" -exec touch -h -d @0 {} +
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) >"$WORK/initrd.cpio" ||
    die "cpio failed"
$COMPRESS <"$WORK/initrd.cpio" >"$WORK/initrd.cpio.gz"
# The same tree as a root disk, without a loop mount. Fixed UUID and hash seed, like the cpio above.
MKE2FS=$(PATH=$PATH:/sbin:/usr/sbin command -v mke2fs) || die "mke2fs not found (apt-get install e2fsprogs)"
"$MKE2FS" -q -F -t ext4 -d "$R" -L vireo-root -U 6a1b0b5e-7c1e-4e0a-9d5b-0d1f1a1e2b3c \
    -E root_owner=0:0,hash_seed=6a1b0b5e-7c1e-4e0a-9d5b-0d1f1a1e2b3c -m 0 "$WORK/rootfs.ext4" 32M >/dev/null ||
    die "mke2fs of the root disk failed"

# --- install atomically ----------------------------------------------------------------------
for f in bzImage vmlinux initrd.cpio.gz rootfs.ext4; do
    mv -f "$WORK/$f" "$OUTDIR/$f"
done
echo "$STAMP" >"$OUTDIR/.stamp"
note "guest: $KPKG $KPKGVER (kernel $KVER, ${comp,,}), busybox $BBVER, $(echo "$mods" | wc -l) modules"
print_outputs
