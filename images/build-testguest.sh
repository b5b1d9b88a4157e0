#!/usr/bin/env bash
# Builds the small instance guest and the image manifests vireod registers at set-up:
#   OUTDIR/testguest.elf       tests/guests/instance.S, an ELF64 kernel that runs on any KVM
#                              (KVM-PVM included): prints its command line and user data, idles
#   OUTDIR/testguest-disk.raw  its 8 MiB root disk (a marker line, then zeroes)
#   OUTDIR/testguest.json      manifest: vireo-testguest
#   OUTDIR/debian.json         manifest: vireo-debian-12 (vmlinux, initrd.cpio.gz, rootfs.ext4 from
#                              images/build-guest.sh), root on /dev/vda, runs its user data
# Usage: images/build-testguest.sh [OUTDIR]   (default: build/guest)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTDIR=${1:-$ROOT/build/guest}
mkdir -p "$OUTDIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
as --64 -I "$ROOT/tests/guests" -o "$tmp/instance.o" "$ROOT/tests/guests/instance.S"
# Linked at 2 MiB, as the test guests are (tests/build.rs).
ld -m elf_x86_64 -static -nostdlib -Ttext=0x200000 -e _start -o "$tmp/testguest.elf" "$tmp/instance.o"
mv "$tmp/testguest.elf" "$OUTDIR/testguest.elf"
if [ ! -f "$OUTDIR/testguest-disk.raw" ]; then
    printf 'VIREO-TESTGUEST-DISK\n' >"$tmp/disk.raw"
    truncate -s 8M "$tmp/disk.raw"
    mv "$tmp/disk.raw" "$OUTDIR/testguest-disk.raw"
fi
cat >"$OUTDIR/testguest.json.tmp" <<'JSON'
{"name": "vireo-testguest", "description": "Vireo's small instance guest (runs on any KVM)",
 "kernel": "testguest.elf", "root_disk": "testguest-disk.raw", "cmdline": "console=ttyS0"}
JSON
mv "$OUTDIR/testguest.json.tmp" "$OUTDIR/testguest.json"
cat >"$OUTDIR/debian.json.tmp" <<'JSON'
{"name": "vireo-debian-12", "description": "Debian 12 cloud kernel, busybox root file system",
 "kernel": "vmlinux", "initrd": "initrd.cpio.gz", "root_disk": "rootfs.ext4",
 "cmdline": "console=ttyS0 panic=-1 quiet vireo.root=/dev/vda vireo.exit=wait"}
JSON
mv "$OUTDIR/debian.json.tmp" "$OUTDIR/debian.json"
