# shellcheck shell=bash
# Sourced by benches/migrate.sh and benches/stress-migrate.sh: the ticking Debian guest both
# move, and the start of the script both run in the lab.

# tick_guest_initrd WORK NAME READY PAD: makes WORK/extra.gz, an initrd extension (the lab
# appends it to the standard initrd) holding the guest script /etc/vireo/NAME.sh (the Debian
# guest's vireo.run=NAME). The guest mounts a 128 MiB tmpfs on /dev/shm and, with
# vireo.dirty=1 on its command line, rewrites 16 MiB of a file there every 0.1 s; it prints
# the line READY (nothing when READY is empty), then a tick line "TICK N" every 50 ms, with
# " PAD" after the number when PAD is not empty.
tick_guest_initrd() {
  local work=$1 name=$2 ready=$3 pad=$4
  mkdir -p "$work/x/etc/vireo"
  {
    cat <<'GUEST'
#!/bin/sh
mkdir -p /dev/shm && mount -t tmpfs -o size=128m tmpfs /dev/shm
if grep -q vireo.dirty=1 /proc/cmdline; then
    (while :; do dd if=/dev/zero of=/dev/shm/d bs=1M count=16 conv=notrunc 2>/dev/null; sleep 0.1; done) &
fi
GUEST
    [ -z "$ready" ] || echo "echo $ready"
    echo 'i=0'
    echo "while :; do i=\$((i + 1)); echo \"TICK \$i${pad:+ $pad}\"; sleep 0.05; done"
  } > "$work/x/etc/vireo/$name.sh"
  (cd "$work/x" && find . | cpio -o -H newc 2>/dev/null | gzip > "$work/extra.gz")
}

# tick_lab_prelude: prints the start of the lab script (bash, in the lab): `set -u`, loopback
# up, /tmp/i.gz (the standard initrd and /tmp/extra.gz, the guest's extension), K (the
# kernel), and `last FILE`.
tick_lab_prelude() {
  cat <<'LAB'
set -u
# The lab's loopback starts down; migrations go over it.
ip link set lo up
cat /vireo/guest/initrd.cpio.gz /tmp/extra.gz > /tmp/i.gz
K=/vireo/guest/vmlinux
# last FILE: the number of FILE's last whole tick line. The console is written a byte at a time,
# so its last line may be a tick half written ("TICK " or "TICK 1" of "TICK 123"): that line
# is left out. (It once was not, and wait_tick compared an empty number: "[: : integer
# expression expected".)
last() { tail -c 1000 "$1" 2>/dev/null | sed '$d' | grep -o 'TICK [0-9][0-9]*' | tail -1 | cut -d' ' -f2; }
LAB
}
