#!/usr/bin/env bash
# Boots the Debian guest under vireo-vmm (2 vCPUs, 512 MiB) and checks for its ready line:
# directly when this host's KVM is hardware-assisted, in the lab when it is PVM or absent.
set -euo pipefail
vmm=$1 guest=$2
args=(--vcpus 2 --memory 512 --cmdline "console=ttyS0 panic=-1 quiet")

if [ -e /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    echo "smoke: booting on this host's KVM"
    out=$("$vmm" --kernel "$guest/vmlinux" --initrd "$guest/initrd.cpio.gz" "${args[@]}" | tee /dev/stderr)
else
    echo "smoke: this host's KVM cannot run stock kernels (PVM or none); booting in the lab"
    out=$(lab/lab run --bin-dir "$(dirname "$vmm")" -- \
        "vireo-vmm --kernel /vireo/guest/vmlinux --initrd /vireo/guest/initrd.cpio.gz --vcpus 2 --memory 512 --cmdline 'console=ttyS0 panic=-1 quiet'" |
        tee /dev/stderr)
fi
ready=$(grep -m1 '^VIREO-READY ' <<<"$out" | tr -d '\r') || { echo "smoke: FAILED: no ready line" >&2; exit 1; }
echo "smoke: ok: $ready"
