#!/usr/bin/env bash
# Build the Debian 12 AMI from Debian's packages only (mmdebstrap from deb.debian.org):
#   OUTDIR/debian-ami/root.raw    the root volume: one ext4 file system on the whole disk (no
#                                 partition table), sparse; the kernel mounts it as /dev/vda
#   OUTDIR/debian-ami/vmlinuz     Debian's cloud kernel (linux-image-cloud-amd64) from the image's /boot
#   OUTDIR/debian-ami/initrd.img  the image's own initramfs (initramfs-tools) from its /boot
#   OUTDIR/debian-ami.json        the manifest vireod registers (RegisterImage, vireod init --image)
# In it: systemd, cloud-init (datasources Ec2, None), openssh-server (host keys made at first
# boot), sudo, curl, ifupdown with DHCP, the default user admin (passwordless sudo, no password
# login), a getty on the serial console ttyS0. See images/README.md.
# Usage: images/build-debian-ami.sh [OUTDIR]   (default: build/guest in the repository)
# Cached: does nothing (quickly) while this script, its package list and the versions apt knows
# for the main packages stay the same. VIREO_AMI_REBUILD=1 rebuilds anyway (to pick up the
# archive's newest packages). The downloaded .debs are kept in build/debs/ami-archives.
set -euo pipefail
PROG=build-debian-ami.sh # used by images/lib.sh
# shellcheck source=images/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OUTDIR=${1:-$VIREO_BUILD/guest}
[ $# -le 1 ] || die "usage: images/build-debian-ami.sh [OUTDIR]"
AMI="$OUTDIR/debian-ami"
MANIFEST="$OUTDIR/debian-ami.json"

SUITE=bookworm
MIRRORS=("deb http://deb.debian.org/debian $SUITE main"
    "deb http://deb.debian.org/debian $SUITE-updates main"
    "deb http://deb.debian.org/debian-security $SUITE-security main")
# What the image has on top of mmdebstrap's "apt" variant (Essential packages and apt), with
# their hard dependencies; no Recommends. The init system and udev; the kernel and the tools
# that make its initramfs; ifupdown and dhclient as on Debian's own cloud images (cloud-init
# writes /etc/network/interfaces.d/50-cloud-init, and its EC2 datasource takes an early DHCP
# lease with dhclient); cloud-init with growpart; ssh, sudo, curl; dmidecode (the SMBIOS
# identity) and a few everyday tools.
PACKAGES="systemd systemd-sysv udev dbus libpam-systemd kmod
  linux-image-cloud-amd64 initramfs-tools zstd
  ifupdown isc-dhcp-client iproute2 iputils-ping netbase
  cloud-init cloud-guest-utils locales
  openssh-server sudo curl ca-certificates
  dmidecode procps less e2fsprogs"
# The kernel command line (vireo-vmm adds pci=off and declares the virtio-mmio devices in ACPI).
# net.ifnames=0 keeps the kernel's eth0: virtio-net on virtio-mmio gets no predictable name.
CMDLINE="console=ttyS0 root=/dev/vda rw net.ifnames=0"
# The root file system's size (the disk's); the image uses about half of it.
DISK_MIB=1024
# Fixed identifiers, so that two builds of the same packages differ as little as possible.
FS_UUID=3d1e5a62-9b0c-4f7e-8a41-5c2b7e0d9f13

print_outputs() {
    printf '%s\n' "$MANIFEST" "$AMI/vmlinuz" "$AMI/initrd.img" "$AMI/root.raw"
}

MMDEBSTRAP=$(command -v mmdebstrap) || die "mmdebstrap not found (scripts/install-deps.sh installs it)"
MKE2FS=$(PATH=$PATH:/sbin:/usr/sbin command -v mke2fs) || die "mke2fs not found (apt-get install e2fsprogs)"

# The inputs: this script (the package list, the configuration it writes) and the versions apt
# knows for the packages that matter most (a new kernel or cloud-init means a new image).
versions=$(kernel_pkg_resolve)
for p in systemd cloud-init openssh-server; do versions+=" $(pkg_resolve "$p" | tr ' ' =)"; done
STAMP="script=$(md5sum <"${BASH_SOURCE[0]}" | cut -c1-16) ${versions// /=}"
if [ -z "${VIREO_AMI_REBUILD:-}" ] && [ -f "$AMI/.stamp" ] && [ "$(cat "$AMI/.stamp")" = "$STAMP" ] &&
    [ -s "$AMI/vmlinuz" ] && [ -s "$AMI/initrd.img" ] && [ -s "$AMI/root.raw" ] && [ -s "$MANIFEST" ]; then
    print_outputs
    exit 0
fi
if [ -n "${VIREO_AMI_REBUILD:-}" ]; then
    note "VIREO_AMI_REBUILD is set: rebuilding"
elif [ -f "$AMI/.stamp" ] && [ "$(cat "$AMI/.stamp")" != "$STAMP" ]; then
    note "inputs changed: was '$(cat "$AMI/.stamp")', now '$STAMP'"
fi

# mmdebstrap's root mode (chroot, mounts, files of any owner) needs root: without it, the build
# runs again under sudo, and what it leaves in build/ is then given to the caller.
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "building the AMI needs root (mmdebstrap's root mode), and there is no sudo"
    note "building the AMI needs root (mmdebstrap's root mode): running it with sudo"
    exec sudo -- env VIREO_BUILD="$VIREO_BUILD" VIREO_AMI_REBUILD="${VIREO_AMI_REBUILD:-}" \
        VIREO_AMI_OWNER="$(id -u):$(id -g)" "${BASH_SOURCE[0]}" "$OUTDIR"
fi

# One build at a time, on a lock of its own: a build takes minutes, and build/.lock (the guest
# build's, lab/lab's) must not wait for it.
mkdir -p "$VIREO_BUILD/tmp" "$VIREO_BUILD/debs/ami-archives"
exec {LOCK}>"$VIREO_BUILD/.lock-ami"
flock "$LOCK"
WORK=$(mktemp -d "$VIREO_BUILD/tmp/ami.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
CACHE="$VIREO_BUILD/debs/ami-archives"
T0=$EPOCHREALTIME
note "building the Debian 12 AMI with mmdebstrap (takes minutes; log: $WORK/mmdebstrap.log)"

# Configuration written into the tree once the packages are in (mmdebstrap's customize hook
# runs it with the tree as $1). Everything the image needs beyond Debian's defaults is here.
cat >"$WORK/customize.sh" <<'EOF'
#!/bin/sh
set -eu
R=$1 CMDLINE=$2
# The root volume: the whole disk /dev/vda (no partition table), checked at boot.
printf '%s\n' '# <file system> <mount point> <type> <options> <dump> <pass>' \
    '/dev/vda / ext4 rw,discard,errors=remount-ro 0 1' >"$R/etc/fstab"
echo debian >"$R/etc/hostname"
printf '%s\n' '127.0.0.1 localhost' '::1 localhost ip6-localhost ip6-loopback' \
    'ff02::1 ip6-allnodes' 'ff02::2 ip6-allrouters' >"$R/etc/hosts"
echo 'LANG=C.UTF-8' >"$R/etc/default/locale"
# Networking: loopback here; cloud-init writes the NICs' configuration (DHCP on eth0 from EC2's
# metadata or its fallback) into interfaces.d at each boot.
printf '%s\n' '# The loopback interface; cloud-init configures the others in interfaces.d.' \
    'source /etc/network/interfaces.d/*' '' 'auto lo' 'iface lo inet loopback' >"$R/etc/network/interfaces"
# cloud-init: the EC2 datasource, falling back to None (no metadata: defaults only). strict_id:
# the EC2 datasource is used where the machine's SMBIOS says EC2 (a system UUID starting with
# ec2, serial number the same, as vireod gives its instances); anywhere else it steps aside at
# once instead of asking 169.254.169.254 for two minutes, and the None datasource takes over.
echo 'datasource_list: [ Ec2, None ]' >"$R/etc/cloud/cloud.cfg.d/90_dpkg.cfg"
cat >"$R/etc/cloud/cloud.cfg.d/01_vireo_ami.cfg" <<'CFG'
# The Vireo Debian 12 AMI: the default user as on Debian's own AMIs (admin, passwordless sudo,
# no password, SSH keys from the instance's metadata), no password logins over SSH.
system_info:
  default_user:
    name: admin
    lock_passwd: true
    gecos: Debian
    groups: [adm, audio, cdrom, dialout, dip, floppy, netdev, plugdev, sudo, video]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
datasource:
  Ec2:
    strict_id: true
disable_root: true
ssh_pwauth: false
# The host key types Debian 12's sshd offers (cloud-init 22.4 would also make a DSA key).
ssh_genkeytypes: [rsa, ecdsa, ed25519]
# No boot loader here (the VMM loads the kernel): nothing for grub-dpkg to set in debconf.
grub_dpkg:
  enabled: false
# C.UTF-8 needs no locale-gen at first boot.
locale: C.UTF-8
CFG
# The initramfs must find the root volume: virtio-blk behind virtio-mmio (vireo-vmm has no PCI).
printf '%s\n' virtio_mmio virtio_blk >>"$R/etc/initramfs-tools/modules"
# Its fsck hook looks for the root's type on the build host's devices; name it, so that the
# initramfs checks the root volume before mounting it.
echo 'FSTYPE=ext4' >"$R/etc/initramfs-tools/conf.d/vireo-ami-fstype"
chroot "$R" update-initramfs -u -k all >/dev/null
chroot "$R" sh -c 'lsinitramfs /boot/initrd.img-*' >"$R/../initrd.list"
for f in virtio_mmio.ko virtio_blk.ko fsck.ext4; do
    grep -q "/$f\$" "$R/../initrd.list" || { echo "customize: the initramfs has no $f" >&2; exit 1; }
done
rm -f "$R/../initrd.list"
# First-boot state: no host keys (cloud-init makes them for each instance), no machine id, no
# random seed, no cloud-init instance, no logs.
rm -f "$R"/etc/ssh/ssh_host_*
: >"$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id" "$R/var/lib/systemd/random-seed"
rm -rf "$R/var/lib/cloud/"* "$R/var/cache/debconf/"*-old "$R/var/lib/dpkg/"*-old
find "$R/var/log" -type f -delete
# Keep the kernel command line beside the kernel, for whoever looks at the image.
echo "$CMDLINE" >"$R/etc/kernel-cmdline"
EOF
chmod 0755 "$WORK/customize.sh"

# shellcheck disable=SC2086 # the package list is words
if ! "$MMDEBSTRAP" --mode=root --format=directory --variant=apt --skip=essential/unlink \
    --include="$(echo $PACKAGES | tr ' ' ,)" \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --setup-hook='mkdir -p "$1/var/cache/apt/archives"' \
    --setup-hook="sync-in $CACHE /var/cache/apt/archives" \
    --customize-hook="sync-out /var/cache/apt/archives $WORK/archives" \
    --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
    --customize-hook="\"$WORK/customize.sh\" \"\$1\" \"$CMDLINE\"" \
    "$SUITE" "$WORK/root" "${MIRRORS[@]}" >"$WORK/mmdebstrap.log" 2>&1; then
    tail -n 30 "$WORK/mmdebstrap.log" | sed 's/^/  /' >&2
    die "mmdebstrap failed (the last lines of its log are above)"
fi
# The .debs of this build replace the cache (older versions are dropped).
rm -rf "$CACHE" && mv "$WORK/archives" "$CACHE"
T1=$EPOCHREALTIME

R="$WORK/root"
mkdir -p "$WORK/out"
kernels=("$R"/boot/vmlinuz-*)
[ ${#kernels[@]} = 1 ] && [ -f "${kernels[0]}" ] || die "expected one kernel in the image's /boot, found: ${kernels[*]}"
kver=${kernels[0]##*/vmlinuz-}
[ -s "$R/boot/initrd.img-$kver" ] || die "the image has no /boot/initrd.img-$kver"
cp "${kernels[0]}" "$WORK/out/vmlinuz"
cp "$R/boot/initrd.img-$kver" "$WORK/out/initrd.img"
used_kib=$(du -sk "$R" | cut -f1)
[ "$used_kib" -lt $((DISK_MIB * 1024 * 3 / 4)) ] ||
    die "the root file system holds $((used_kib / 1024)) MiB, too much for a $DISK_MIB MiB disk"
# The file system, made from the tree without mounting anything: ext4 like Debian's images
# (journal, 4 KiB blocks); mke2fs -d keeps owners, modes, links and extended attributes, and
# leaves unused blocks as holes.
"$MKE2FS" -q -F -t ext4 -d "$R" -L debian-root -U "$FS_UUID" -E root_owner=0:0,hash_seed="$FS_UUID" \
    "$WORK/out/root.raw" "${DISK_MIB}M" >/dev/null || die "mke2fs of the root volume failed"
T2=$EPOCHREALTIME
pkgver() { chroot "$R" dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo '?'; }
summary="kernel $kver, systemd $(pkgver systemd), cloud-init $(pkgver cloud-init), openssh $(pkgver openssh-server), $(chroot "$R" dpkg-query -W -f='.\n' | wc -l) packages"

# --- install atomically ----------------------------------------------------------------------
mkdir -p "$AMI"
rm -f "$AMI/.stamp"
for f in vmlinuz initrd.img root.raw; do mv -f "$WORK/out/$f" "$AMI/$f"; done
cat >"$MANIFEST.tmp" <<EOF
{"name": "debian-12-cloud", "description": "Debian 12 (bookworm) with systemd, cloud-init, OpenSSH; default user admin; $summary",
 "kernel": "debian-ami/vmlinuz", "initrd": "debian-ami/initrd.img", "root_disk": "debian-ami/root.raw",
 "cmdline": "$CMDLINE"}
EOF
mv -f "$MANIFEST.tmp" "$MANIFEST"
echo "$STAMP" >"$AMI/.stamp"
if [ -n "${VIREO_AMI_OWNER:-}" ]; then # built under sudo for this user
    chown -R "$VIREO_AMI_OWNER" "$AMI" "$MANIFEST" "$CACHE" "$VIREO_BUILD/.lock-ami"
    find "$VIREO_BUILD/debs" -maxdepth 1 -user 0 -exec chown "$VIREO_AMI_OWNER" {} +
fi
note "AMI: $summary; root volume $((used_kib / 1024)) MiB used of $DISK_MIB MiB ($(du -k "$AMI/root.raw" | cut -f1 | awk '{printf "%d", $1/1024}') MiB on disk), initrd $(($(stat -c %s "$AMI/initrd.img") / 1024)) KiB; mmdebstrap $(awk "BEGIN{printf \"%.0f\", $T1-$T0}") s, file system $(awk "BEGIN{printf \"%.0f\", $T2-$T1}") s"
print_outputs
