#!/usr/bin/env bash
# make bench-boot: in one lab boot, alternately boots the same Debian guest (vmlinux, busybox
# initrd, 1 vCPU, 256 MiB, "console=ttyS0 panic=-1 quiet") under vireo-vmm and under
# `qemu-system-x86_64 -M microvm -enable-kvm`, RUNS times each, and prints the medians of the
# time from process start to the guest's ready line, their ratio, and each VMM's own resident
# memory (RSS minus the guest-RAM mapping) sampled at the ready line. Not a test: it asserts
# nothing, it reports.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
BIN_DIR=target/x86_64-unknown-linux-gnu/release
TIMER=$BIN_DIR/boot-timer
[ -x "$BIN_DIR/vireo-vmm" ] && [ -x "$TIMER" ] || { echo "bench-boot: run make build first" >&2; exit 1; }

CMDLINE="console=ttyS0 panic=-1 quiet"
G=/vireo/guest
script="
for i in \$(seq $RUNS); do
  /tmp/boot-timer vireo 256 -- vireo-vmm --kernel $G/vmlinux --initrd $G/initrd.cpio.gz \
      --vcpus 1 --memory 256 --cmdline '$CMDLINE' | grep BOOT-TIMER
  /tmp/boot-timer qemu 256 -- qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 256 -smp 1 \
      -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
      -kernel $G/vmlinux -initrd $G/initrd.cpio.gz -append '$CMDLINE' | grep BOOT-TIMER
done
qemu-system-x86_64 --version | head -1
"
out=$(lab/lab run --with-qemu --smp 1 --bin-dir "$BIN_DIR" --put "$TIMER:/tmp/boot-timer" -- "$script")
python3 - "$RUNS" <<PY
import json, statistics, sys
runs = {"vireo": [], "qemu": []}
qemu_version = "qemu"
for line in """$out""".splitlines():
    line = line.strip()
    if line.startswith("BOOT-TIMER "):
        r = json.loads(line[len("BOOT-TIMER "):])
        runs[r["label"]].append(r)
    elif line.startswith("QEMU emulator version"):
        qemu_version = "QEMU " + line.split()[3]

def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None

print(f"bench-boot: Debian 6.1 cloud vmlinux + busybox initrd, 1 vCPU, 256 MiB, in the lab, "
      f"{sys.argv[1]} alternating runs each (medians)")
print(f"{'VMM':<28}{'boot to ready line':>20}{'own memory (RSS - guest RAM)':>32}{'exits by itself':>18}")
rows = {}
for label, name in (("vireo", "vireo-vmm"), ("qemu", qemu_version + " -M microvm")):
    rs = runs[label]
    t, own = med(rs, "ready_s"), med(rs, "own_kib")
    rows[label] = t
    ok = sum(1 for r in rs if r["exited_by_itself"])
    ts = f"{t:.3f} s" if t is not None else "no ready line"
    ms = f"{own/1024:.1f} MiB" if own is not None else "n/a"
    print(f"{name:<28}{ts:>20}{ms:>32}{f'{ok}/{len(rs)}':>18}")
if rows["vireo"] and rows["qemu"]:
    print(f"ratio vireo-vmm / QEMU: {rows['vireo']/rows['qemu']:.2f}x  "
          f"(target <= 0.28x; Firecracker 0.30x, Cloud Hypervisor 0.34x in LAB-FINDINGS)")
print("all runs:", json.dumps(runs))
PY
