#!/usr/bin/env bash
# make bench-io: block and network throughput of vireo-vmm's virtio devices, in one lab boot.
# Not a test: it asserts nothing, it reports. See docs/benchmarks.md.
#
# Block: fio inside the stock Debian guest (1 vCPU, 512 MiB) on a virtio-blk drive backed by a
# RAM block device of the lab host (/dev/ram0, Debian's brd module), under vireo-vmm and, for
# reference, under QEMU -M microvm, then the same fio jobs (O_DIRECT on both sides) in the lab
# host against /dev/ram0 itself, in two modes: "irq" (libaio; the guest notifies the device and
# takes an interrupt per completion batch) and "polled" (io_uring --hipri on a virtio-blk poll
# queue, virtio_blk.poll_queues=1, the drive with queues=2 and poll_us=POLL_US, QEMU with an
# iothread polling as long: no notification, no interrupt while busy). ROUNDS rounds alternate
# vireo, QEMU and host; medians are shown. In polled mode each round also runs the vireo-vmm
# guest on the same drive with io_engine=null (no I/O at all): the ceiling that the guest's own
# I/O path and the VMM leave for any device in this lab. Guests boot with mitigations=off, as the lab host does.
# Network: iperf3 from the guest to an iperf3 server on the lab host, over a TAP in a network
# namespace created for it, once with vireo-vmm's virtio-net and once with QEMU's user-space
# virtio-net (-M microvm, vhost=off) and the same guest. Throughput is taken on the receiving
# side, the lab host, whose clock keeps time (the nested guest's does not).
#
# fio and iperf3 are Debian's packages (apt-get download, dpkg-deb -x) with every shared library
# they need (ldd), the dynamic loader included, under build/bench/tools; they reach the lab with
# --put and the guest as a read-only ext4 image on its first virtio-blk drive (/dev/vda), since
# the libraries weigh ~80 MiB (librbd, libicudata, ...), too much to unpack from an initrd.
# The guest's scripts come in a small cpio appended to the standard initrd.
#
# Environment: BIN_DIR (vireo-vmm's directory, default the release build), RUNTIME (seconds per
# fio job, default 4), IODEPTH (default 16), IPERF_TIME (seconds, default 8), DISK_MIB (size of
# the drive, default 256), ROUNDS (alternating rounds of everything, default 3), POLL_US (the
# polled mode's polling window, default 2000: a few of the lab's nested exits).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC2034 # used by images/lib.sh
PROG=bench-io
# shellcheck source=images/lib.sh
. images/lib.sh

BIN_DIR=${BIN_DIR:-target/x86_64-unknown-linux-gnu/release}
RUNTIME=${RUNTIME:-4}
IODEPTH=${IODEPTH:-16}
IPERF_TIME=${IPERF_TIME:-8}
DISK_MIB=${DISK_MIB:-256}
ROUNDS=${ROUNDS:-3}
POLL_US=${POLL_US:-2000}
for v in RUNTIME IODEPTH IPERF_TIME DISK_MIB ROUNDS POLL_US; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v wants a positive number, not '${!v}'"
done
[ -x "$BIN_DIR/vireo-vmm" ] || die "no $BIN_DIR/vireo-vmm: run make build first"
MKE2FS=$(PATH=$PATH:/sbin:/usr/sbin command -v mke2fs) || die "mke2fs not found (apt-get install e2fsprogs)"
# brd (RAM block device) from the lab's own kernel package: unlike tmpfs it takes O_DIRECT, so
# guest and host run the same fio jobs with --direct=1. images/build-guest.sh extracts the package.
BRD=$(find "$VIREO_BUILD/pkgs" -path '*/kernel/drivers/block/brd.ko' 2>/dev/null | head -n1)
[ -n "$BRD" ] || die "brd.ko not found under $VIREO_BUILD/pkgs (run make images)"

B="$VIREO_BUILD/bench"
mkdir -p "$B"

# --- fio and iperf3 with their libraries -----------------------------------------------------------
# build/bench/tools/{bin,lib}: bin/fio and bin/iperf3 are wrappers that run the real binaries
# through the packaged loader with --library-path, so they use only the libraries beside them,
# wherever the tree is mounted (the lab with --with-qemu has the host's libc in /lib too).
build_tools() {
    local key pkgs root t lp bin libs f
    key="$(apt_lists_key) tools-v1"
    if [ -f "$B/tools.img" ] && [ "$(cat "$B/tools.key" 2>/dev/null)" = "$key" ]; then return 0; fi
    note "fetching fio, iperf3 and the libraries they need (apt-get download)"
    # Every library package in the dependency closure; ldd below keeps only what is loaded.
    pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances fio iperf3 2>/dev/null | grep -E '^(lib|zlib)' | sort -u) ||
        die "apt-cache depends fio iperf3 failed (run apt-get update?)"
    rm -rf "$B/debs" "$B/pkgroot" "$B/tools"
    mkdir -p "$B/debs" "$B/pkgroot"
    # shellcheck disable=SC2086 # a list of names
    (cd "$B/debs" && apt-get download -q -o APT::Sandbox::User=root fio iperf3 $pkgs >"$B/debs/log" 2>&1) ||
        { sed 's/^/  /' "$B/debs/log" >&2; die "apt-get download failed"; }
    for f in "$B"/debs/*.deb; do dpkg-deb -x "$f" "$B/pkgroot" || die "dpkg-deb -x $f failed"; done
    root="$B/pkgroot" t="$B/tools"
    lp="$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu/ceph"
    mkdir -p "$t/bin" "$t/lib"
    cp -L "$root/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$t/lib/" || die "libc6 has no loader"
    for bin in fio iperf3; do
        cp "$root/usr/bin/$bin" "$t/bin/$bin.real"
        libs=$("$t/lib/ld-linux-x86-64.so.2" --library-path "$lp" --list "$root/usr/bin/$bin") ||
            die "ldd $bin failed"
        ! grep -q 'not found' <<<"$libs" || die "$bin: libraries missing: $(grep 'not found' <<<"$libs" | tr '\n' ' ')"
        for f in $(awk '$2 == "=>" && $3 ~ /^\// && $1 !~ /ld-linux/ { print $3 }' <<<"$libs"); do
            case $f in "$root"/*) ;; *) die "$bin: $f does not come from the downloaded packages" ;; esac
            cp -L "$f" "$t/lib/"
        done
        printf '%s\n' '#!/bin/sh' 'd=$(cd "$(dirname "$0")/.." && pwd)' \
            "exec \"\$d/lib/ld-linux-x86-64.so.2\" --library-path \"\$d/lib\" \"\$d/bin/$bin.real\" \"\$@\"" \
            >"$t/bin/$bin"
        chmod 0755 "$t/bin/$bin"
    done
    rm -f "$B/tools.img"
    "$MKE2FS" -q -F -t ext4 -d "$t" -L bench-tools -O ^has_journal -m 0 -E root_owner=0:0 "$B/tools.img" \
        "$(($(du -sk --apparent-size "$t" | cut -f1) * 11 / 10 + 4096))k" >/dev/null || die "mke2fs failed"
    rm -rf "$B/pkgroot"
    echo "$key" >"$B/tools.key"
}

# --- what runs in the guest and in the lab -----------------------------------------------------------
# The fio jobs: name, rw, block size. Guest and host run the same ones.
JOBS="randread-4k randread 4k
randwrite-4k randwrite 4k
seqread-1m read 1m
seqwrite-1m write 1m"
FIO_OPTS="--iodepth=$IODEPTH --runtime=$RUNTIME --time_based --ramp_time=1 --thread \
--norandommap --randrepeat=0 --output-format=json"
# The two modes' I/O engines: completions by interrupt, or polled by the submitting thread.
FIO_IRQ="--ioengine=libaio"
FIO_POLLED="--ioengine=io_uring --hipri"

write_scripts() {
    local g="$B/guest"
    rm -rf "$g"
    mkdir -p "$g/etc/vireo"
    # Guest: mount the tools, the drive that holds ext4 (QEMU -M microvm need not keep the
    # order of the drives); the other drive, if any, is the one to benchmark.
    cat >"$g/etc/vireo/bench-tools.sh" <<'EOF'
mkdir -p /opt/bench /tmp
TOOLS= DISK=
for d in /dev/vda /dev/vdb; do
    if [ -z "$TOOLS" ] && mount -t ext4 -o ro $d /opt/bench 2>/dev/null; then TOOLS=$d; else DISK=$d; fi
done
[ -n "$TOOLS" ] || { echo "BENCH-ERROR guest cannot mount the tools (ext4 on /dev/vda or /dev/vdb)"; exit 1; }
PATH=/opt/bench/bin:$PATH
EOF
    local mode engine
    for mode in irq polled; do
        if [ $mode = irq ]; then engine=$FIO_IRQ; else engine=$FIO_POLLED; fi
        {
            echo '#!/bin/sh'
            echo '. /etc/vireo/bench-tools.sh'
            echo 'echo "BENCH-CLOCK start $(cut -d" " -f1 /proc/uptime)"'
            echo "while read -r name rw bs; do"
            echo "    echo \"BENCH-FIO guest \$name@$mode \$(fio --name=\$name --filename=\$DISK --direct=1 --rw=\$rw --bs=\$bs $engine $FIO_OPTS 2>&1 | tr -d '\\n')\""
            echo "done <<'JOBS'"
            echo "$JOBS"
            echo "JOBS"
            echo 'echo "BENCH-CLOCK end $(cut -d" " -f1 /proc/uptime)"'
        } >"$g/etc/vireo/bfio-$mode.sh"
    done
    # Guest: iperf3 client to the lab host.
    cat >"$g/etc/vireo/bnet.sh" <<EOF
#!/bin/sh
. /etc/vireo/bench-tools.sh
ip link set lo up
ip link set eth0 up
ip addr add 172.16.0.2/24 dev eth0
ping -c 1 -W 20 172.16.0.1 >/dev/null || echo "BENCH-ERROR guest cannot ping 172.16.0.1"
iperf3 -c 172.16.0.1 -t $IPERF_TIME 2>&1 | grep -E 'sender|receiver|error' | sed 's/^/GUEST-IPERF /'
EOF
    chmod 0755 "$g/etc/vireo/"*.sh
    (cd "$g" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -n) >"$B/extra.cpio.gz"

    # Lab host: ROUNDS rounds of the guest with fio under each VMM then fio on the drive's
    # device itself, then the network half in a network namespace.
    cat >"$B/lab.sh" <<EOF
B=/vireo/bench G=/vireo/guest
# The guests' kernels run without mitigations, as the lab host's does (lab/lab boots it so).
CMDLINE="console=ttyS0 panic=-1 quiet mitigations=off"
cat \$G/initrd.cpio.gz \$B/extra.cpio.gz >/tmp/initrd.gz
insmod \$B/brd.ko rd_nr=1 rd_size=$((DISK_MIB * 1024)) || { echo "BENCH-ERROR insmod brd"; exit 1; }
DISK=/dev/ram0
# Allocate the RAM disk's pages up front, so no side pays for that.
dd if=/dev/zero of=\$DISK bs=1M count=$DISK_MIB oflag=direct 2>/dev/null
# The same guest under vireo-vmm and under QEMU, both with direct I/O on the device (vireo-vmm's
# 'direct', QEMU's cache=none with aio=threads), as fio on the lab host has: data moves once,
# between the RAM disk and guest memory. Each line of the guest's tagged. A VMM still running
# after 300 s is killed (exit status 137 in the report): a guest the nested lab hung costs that,
# not the whole run.
# Polled mode: Linux gives virtio-blk at most one queue per possible CPU, poll queues included,
# so the 1-vCPU guest is told of a second possible CPU (possible_cpus=2; it never comes up) to
# have a default queue and a poll queue.
for round in \$(seq $ROUNDS); do
for mode in irq polled; do
if [ \$mode = irq ]; then
    VQ= QQ= QIO= GARGS= FIO="$FIO_IRQ"
else
    VQ=",queues=2,poll_us=$POLL_US" QQ=",num-queues=2,iothread=iot0"
    QIO="-object iothread,id=iot0,poll-max-ns=$((POLL_US * 1000))"
    GARGS="virtio_blk.poll_queues=1 possible_cpus=2" FIO="$FIO_POLLED"
fi
# In polled mode also the same vireo-vmm guest on a drive that does no I/O (io_engine=null):
# what any device could reach here, the guest's own path and the VMM with the disk's share gone.
VMMS="vireo qemu"
[ \$mode = irq ] || VMMS="vireo null qemu"
for vmm in \$VMMS; do
    if [ \$vmm != qemu ]; then
        NULL=
        [ \$vmm = vireo ] || NULL=",io_engine=null"
        timeout -s KILL 300 vireo-vmm --kernel \$G/vmlinux --initrd /tmp/initrd.gz --vcpus 1 --memory 512 \\
            --drive path=\$B/tools.img,ro,format=raw --drive path=\$DISK,format=raw,direct\$VQ\$NULL \\
            --cmdline "\$CMDLINE \$GARGS vireo.run=bfio-\$mode"
    else
        timeout -s KILL 300 qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 512 -smp 1 -nodefaults -no-user-config \\
            -nographic -serial stdio -no-reboot -kernel \$G/vmlinux -initrd /tmp/initrd.gz \\
            -append "\$CMDLINE \$GARGS vireo.run=bfio-\$mode" \$QIO \\
            -drive file=\$B/tools.img,if=none,id=tools,format=raw,readonly=on -device virtio-blk-device,drive=tools \\
            -drive file=\$DISK,if=none,id=disk,format=raw,cache=none -device virtio-blk-device,drive=disk\$QQ
    fi | while IFS= read -r l; do
        l=\${l%\$'\\r'}
        case \$l in
        BENCH-CLOCK*) echo "\$l vmm=\$vmm-\$mode lab=\$EPOCHREALTIME" ;;
        "BENCH-FIO guest "*) echo "BENCH-FIO \$vmm \${l#BENCH-FIO guest }" ;;
        *) echo "\$l" ;;
        esac
    done
    echo "BENCH-EXIT \$vmm-fio-\$mode-\$round \${PIPESTATUS[0]}"
done
while read -r name rw bs; do
    echo "BENCH-FIO host \$name@\$mode \$(\$B/tools/bin/fio --name=\$name --filename=\$DISK --direct=1 --rw=\$rw --bs=\$bs \$FIO $FIO_OPTS 2>&1 | tr -d '\\n')"
done <<'JOBS'
$JOBS
JOBS
done
done
unshare -n sh \$B/net.sh
EOF
    cat >"$B/net.sh" <<EOF
B=/vireo/bench G=/vireo/guest
CMDLINE="console=ttyS0 panic=-1 quiet mitigations=off vireo.run=bnet"
ip link set lo up
tunctl -t vtap0 >/dev/null || { echo "BENCH-ERROR tunctl"; exit 1; }
ip addr add 172.16.0.1/24 dev vtap0
ip link set vtap0 up
for round in \$(seq $ROUNDS); do
for vmm in vireo qemu; do
    \$B/tools/bin/iperf3 -s -1 -B 172.16.0.1 -J >/tmp/iperf.json 2>&1 &
    srv=\$!
    if [ \$vmm = vireo ]; then
        timeout -s KILL 300 vireo-vmm --kernel \$G/vmlinux --initrd /tmp/initrd.gz --vcpus 1 --memory 512 \\
            --drive path=\$B/tools.img,ro,format=raw --net tap=vtap0,mac=02:00:00:00:00:02 --cmdline "\$CMDLINE"
    else
        timeout -s KILL 300 qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 512 -smp 1 -nodefaults -no-user-config \\
            -nographic -serial stdio -no-reboot -kernel \$G/vmlinux -initrd /tmp/initrd.gz -append "\$CMDLINE" \\
            -drive file=\$B/tools.img,if=none,id=tools,format=raw,readonly=on -device virtio-blk-device,drive=tools \\
            -netdev tap,id=n0,ifname=vtap0,script=no,downscript=no,vhost=off \\
            -device virtio-net-device,netdev=n0,mac=02:00:00:00:00:02
    fi
    echo "BENCH-EXIT \$vmm-net \$?"
    i=0
    while kill -0 \$srv 2>/dev/null && [ \$i -lt 50 ]; do sleep 0.1; i=\$((i + 1)); done
    kill \$srv 2>/dev/null
    wait \$srv 2>/dev/null
    echo "BENCH-IPERF \$vmm \$(tr -d '\\n' </tmp/iperf.json)"
done
done
qemu-system-x86_64 --version | head -n1
EOF
}

flock_build() {
    exec {LOCK}>"$B/.lock"
    flock "$LOCK"
    build_tools
    write_scripts
}
flock_build

echo "bench-io: running in the lab (about $((ROUNDS * (28 * (RUNTIME + 2) + 2 * IPERF_TIME + 150))) s)..." >&2
out=$(lab/lab run --with-qemu --smp 2 --mem 3072 --timeout 2400 --bin-dir "$BIN_DIR" \
    --put "$BRD:/vireo/bench/brd.ko" --put "$B/tools:/vireo/bench/tools" --put "$B/tools.img:/vireo/bench/tools.img" \
    --put "$B/extra.cpio.gz:/vireo/bench/extra.cpio.gz" --put "$B/lab.sh:/vireo/bench/lab.sh" \
    --put "$B/net.sh:/vireo/bench/net.sh" -- 'sh /vireo/bench/lab.sh') || st=$?
printf '%s\n' "$out" >"$B/last.log"
[ "${st:-0}" -eq 0 ] || echo "bench-io: the lab run ended with status $st (its output: $B/last.log)" >&2

python3 - "$B/last.log" "$RUNTIME" "$IODEPTH" "$IPERF_TIME" "$ROUNDS" "$POLL_US" <<'PY'
import json, statistics, sys

log, runtime, iodepth, iperf_time, rounds, poll_us = sys.argv[1:]
fio = {}      # (side, job) -> that job's result in each round (fio's JSON "jobs"[0]) or error texts
iperf = {}    # vmm -> bits per second received by the lab host in each round, or error texts
exits, guest_iperf, qemu_version = {}, [], "QEMU"
clock = {}    # (vmm, "start"/"end") -> (guest uptime, lab time) around the guest's fio jobs

def first_json(text):
    i = text.find("{")
    if i < 0:
        return None
    try:
        return json.JSONDecoder().raw_decode(text[i:])[0]
    except ValueError:
        return None

for line in open(log, errors="replace"):
    line = line.strip().replace("\r", "")
    if line.startswith("BENCH-FIO "):
        _, side, job, *rest = line.split(" ", 3) + [""]
        j = first_json(rest[0])
        fio.setdefault((side, job), []).append(
            j["jobs"][0] if j and j.get("jobs") else (rest[0][:200] or "no output"))
    elif line.startswith("BENCH-IPERF "):
        _, vmm, rest = (line.split(" ", 2) + [""])[:3]
        j = first_json(rest)
        try:
            v = j["end"]["sum_received"]["bits_per_second"]
        except (TypeError, KeyError):
            v = (j or {}).get("error") or rest[:200] or "no output"
        iperf.setdefault(vmm, []).append(v)
    elif line.startswith("BENCH-CLOCK "):
        f = line.split()
        kv = dict(w.split("=", 1) for w in f[3:] if "=" in w)
        try:
            clock.setdefault((kv["vmm"], f[1]), []).append((float(f[2]), float(kv["lab"])))
        except (IndexError, KeyError, ValueError):
            pass
    elif line.startswith("BENCH-EXIT "):
        _, what, code = line.split()
        exits[what] = code
    elif line.startswith("GUEST-IPERF ") or "BENCH-ERROR" in line:
        guest_iperf.append(line)
    elif line.startswith("QEMU emulator version"):
        qemu_version = "QEMU " + line.split()[3]

def figures(side, job, kind):
    """The job's figure in each round (None where it failed)."""
    out = []
    for r in fio.get((side, job), []):
        if isinstance(r, str) or r.get("error"):
            out.append(None)
            continue
        d = r["read"] if kind.startswith("read") else r["write"]
        out.append(d["iops"] if kind.endswith("iops") else d["bw"] / 1024)  # bw: KiB/s
    return out

def figure(side, job, kind):
    vals = figures(side, job, kind)
    ok = [v for v in vals if v is not None]
    if not vals:
        return None, "missing"
    if not ok:
        return None, "failed"
    v = statistics.median(ok)
    return v, (f"{v:,.0f} IOPS" if kind.endswith("iops") else f"{v:,.1f} MiB/s")

print(f"bench-io: in the lab (nested: TCG host with emulated SVM), guest: Debian 6.1 cloud kernel, "
      f"1 vCPU, 512 MiB")
print(f"block: fio {runtime} s per job (after 1 s ramp), iodepth {iodepth}, O_DIRECT on both "
      f"sides; guests: a virtio-blk drive on the lab's RAM disk /dev/ram0 (brd); lab host: /dev/ram0; "
      f"medians of {rounds} alternating rounds")
modes = [("irq", "libaio: the guest notifies, the device interrupts"),
         ("polled", f"io_uring --hipri: a virtio-blk poll queue in the guest, the device polling "
                    f"{poll_us} us (vireo-vmm poll_us, QEMU iothread poll-max-ns)")]
jobs = [("randread-4k", "read-iops"), ("randwrite-4k", "write-iops"),
        ("seqread-1m", "read-bw"), ("seqwrite-1m", "write-bw")]
def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "n/a"
for mode, what in modes:
    print(f"{mode}: {what}")
    print(f"  {'job':<14}{'vireo-vmm guest':>17}{'QEMU guest':>17}{'lab host':>17}"
          f"{'vireo/host':>12}{'vireo/QEMU':>12}")
    for job, kind in jobs:
        key = f"{job}@{mode}"
        v, vs = figure("vireo", key, kind)
        q, qs = figure("qemu", key, kind)
        h, hs = figure("host", key, kind)
        print(f"  {job:<14}{vs:>17}{qs:>17}{hs:>17}{ratio(v, h):>12}{ratio(v, q):>12}")
    if any(side == "null" and job.endswith("@" + mode) for side, job in fio):
        print(f"  ceiling: the vireo-vmm guest on a drive with io_engine=null (no I/O: the guest's "
              f"path and the VMM only)")
        for job, kind in jobs:
            key = f"{job}@{mode}"
            n, ns = figure("null", key, kind)
            h, _ = figure("host", key, kind)
            print(f"  {job:<14}{ns:>17}{'':>17}{'':>17}{ratio(n, h):>12}")
print("target: vireo-vmm guest >= 0.8x lab host")
print("each round (vireo / QEMU / host, then the null drive where it ran):")
fmt = lambda vals: ",".join("-" if x is None else f"{x:.0f}" for x in vals)
for mode, _ in modes:
    for job, kind in jobs:
        key = f"{job}@{mode}"
        sides = ("vireo", "qemu", "host") + (("null",) if ("null", key) in fio else ())
        print(f"  {key:<20}" + " / ".join(fmt(figures(side, key, kind)) for side in sides))
for mode, _ in modes:
    for vmm in ("vireo", "null", "qemu"):
        tag = f"{vmm}-{mode}"
        if (tag, "start") in clock and (tag, "end") in clock:
            pairs = list(zip(clock[(tag, "start")], clock[(tag, "end")]))
            g = statistics.median(e[0] - s[0] for s, e in pairs)
            l = statistics.median(e[1] - s[1] for s, e in pairs)
            print(f"({vmm} guest's {mode} fio jobs: {g:.1f} s on its clock, {l:.1f} s on the lab's; "
                  f"guest figures are per guest-second)")
print()
print(f"network: iperf3 guest -> lab host, {iperf_time} s, one TCP stream, TAP in a network "
      f"namespace; received bytes counted on the lab host")
def mbit(vmm):
    vals = iperf.get(vmm, ["missing"])
    ok = [x for x in vals if isinstance(x, (int, float))]
    if not ok:
        return None, f"failed: {vals[0]}", ""
    v = statistics.median(ok)
    each = ",".join(f"{x / 1e6:.0f}" if isinstance(x, (int, float)) else "-" for x in vals)
    return v, f"{v / 1e6:,.0f} Mbit/s", f"  (rounds: {each})"
(v, vs, ve), (q, qs, qe) = mbit("vireo"), mbit("qemu")
print(f"{'vireo-vmm virtio-net':<44}{vs:>16}{ve}")
print(f"{qemu_version + ' -M microvm virtio-net (vhost=off)':<44}{qs:>16}{qe}")
if v is not None and q:
    print(f"ratio vireo-vmm / QEMU: {v / q:.2f}x  (target >= 1.0x)")
print()
print(f"(whole lab output: {log})")
print("VMM exit statuses:", " ".join(f"{k}={c}" for k, c in exits.items()) or "none")
for l in guest_iperf:
    print(l)
PY
exit "${st:-0}"
