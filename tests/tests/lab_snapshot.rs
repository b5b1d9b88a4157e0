//! Snapshots and live migration of a stock Debian guest, in the lab: the guest keeps 16 MiB
//! of random bytes in a tmpfs file (their MD5 printed at start and every 10 ticks) and counts
//! ticks on its console. It goes through snapshot + restore, then a live migration to a
//! second vireo-vmm process; the ticks must go on without a gap or a restart and the MD5 must
//! never change. The lab needs `vireo-api` (benches/) beside vireo-vmm in the binary
//! directory, as `make build` leaves it.

use std::sync::Mutex;

use vireo_tests::{guest_script_initrd, run_in_lab, vmm_bin};

static LAB: Mutex<()> = Mutex::new(());

const GUEST: &str = r#"#!/bin/sh
mkdir -p /dev/shm && mount -t tmpfs -o size=64m tmpfs /dev/shm
dd if=/dev/urandom of=/dev/shm/pattern bs=1M count=16 2>/dev/null
echo "PATTERN $(md5sum < /dev/shm/pattern | cut -d' ' -f1)"
i=0
while true; do
    i=$((i + 1))
    if [ $((i % 10)) = 0 ]; then
        echo "TICK $i $(md5sum < /dev/shm/pattern | cut -d' ' -f1)"
    else
        echo "TICK $i"
    fi
    sleep 0.1
done
"#;

/// The lab's side. `tick N` waits for the console to reach tick N (60 s at most).
const SCRIPT: &str = r#"
set -u
# The lab's loopback starts down; the migration goes over it.
ip link set lo up
cat /vireo/guest/initrd.cpio.gz /tmp/extra.gz > /tmp/i.gz
con=/tmp/con.log
# The number of the console's last whole tick line: the console is written a byte at a time,
# and a half-written "TICK 1" of "TICK 123" would read as tick 1.
last() { tail -c 2000 $con | sed '$d' | grep -o 'TICK [0-9][0-9]*' | tail -1 | cut -d' ' -f2; }
# stuck: what the VMM that should be running was doing (for a failure's report).
stuck() {
    echo "NO-TICK $1"
    for s in /tmp/a.sock /tmp/b.sock /tmp/c.sock; do
        [ -S $s ] || continue
        echo "$s: $(vireo-api $s GET /vm)"
        vireo-api $s GET /metrics | grep -E '^vireo_vcpu_exits_total|^vireo_vcpu_seconds'
    done
    for p in $(pidof vireo-vmm); do
        for t in /proc/$p/task/*; do echo "$p $(cat $t/comm) $(cut -d' ' -f3 $t/stat) $(cat $t/wchan)"; done
    done
    tail -n 5 /tmp/a.err /tmp/b.err /tmp/c.err 2>/dev/null
    dmesg | tail -n 5
    cat $con
    exit 1
}
tick() { n=0; while w=$(last); [ -z "$w" ] || [ "$w" -lt "$1" ]; do
    sleep 0.1; n=$((n + 1)); if [ $n -gt 600 ]; then stuck "$1"; fi; done; }
timeout 150 env VIREO_LOG=debug vireo-vmm --kernel /vireo/guest/vmlinux --initrd /tmp/i.gz --memory 256 --rng \
    --cmdline 'console=ttyS0 panic=-1 quiet vireo.run=snap vireo.exit=wait' \
    --api-sock /tmp/a.sock --serial file:$con 2>/tmp/a.err &
a=$!
tick 12
vireo-api /tmp/a.sock PUT /vm/pause || exit 1
vireo-api /tmp/a.sock PUT /vm/snapshot '{"path": "/tmp/snap"}' || exit 1
echo "SNAPSHOT-AT $(last)"
vireo-api /tmp/a.sock PUT /vm/stop >/dev/null
wait $a; echo "A-EXIT=$?"
timeout 150 env VIREO_LOG=debug vireo-vmm --restore /tmp/snap --resume --api-sock /tmp/b.sock --serial file:$con 2>/tmp/b.err &
b=$!
tick $(( $(last) + 25 ))
echo "RESTORED-TO $(last)"
timeout 150 env VIREO_LOG=debug vireo-vmm --incoming 127.0.0.1:4444 --api-sock /tmp/c.sock --serial file:$con 2>/tmp/c.err &
c=$!
# The destination listens once it has built its VM shell: wait for port 4444 (0x115C) in
# LISTEN (0A) rather than for a fixed time, which a loaded host overran.
n=0
until grep -q ':115C 00000000:0000 0A' /proc/net/tcp; do
    sleep 0.05; n=$((n + 1)); [ $n -lt 600 ] || { echo NO-LISTENER; cat /tmp/c.err; exit 1; }
done
vireo-api /tmp/b.sock PUT /vm/migrate '{"destination": "127.0.0.1:4444", "downtime_ms": 50}' \
    || { echo MIGRATE-FAILED; cat /tmp/b.err /tmp/c.err; kill $b $c; exit 1; }
wait $b; echo "B-EXIT=$?"
echo "MIGRATED-AT $(last)"
tick $(( $(last) + 25 ))
vireo-api /tmp/c.sock PUT /vm/stop >/dev/null
wait $c; echo "C-EXIT=$?"
cat /tmp/a.err /tmp/b.err /tmp/c.err
echo CONSOLE-BEGIN
cat $con
"#;

#[test]
fn debian_guest_survives_snapshot_restore_and_live_migration() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let api = vmm_bin().parent().unwrap().join("vireo-api");
    assert!(
        api.is_file(),
        "{} is missing: build the workspace's binaries (make build)",
        api.display()
    );
    let extra = guest_script_initrd("snap", GUEST);
    let put = format!("{}:/tmp/extra.gz", extra.display());
    let r = run_in_lab(SCRIPT, &["--put", &put, "--timeout", "400"]);
    let out = &r.stdout;
    assert_eq!(r.status, Some(0), "{r:?}");
    for exit in ["A-EXIT=0", "B-EXIT=0", "C-EXIT=0"] {
        assert!(out.contains(exit), "no {exit}: {r:?}");
    }
    assert!(!out.contains("MIGRATE-FAILED"), "{r:?}");
    let console = out.split_once("CONSOLE-BEGIN").expect("no console").1;
    let console = console.replace('\r', "");
    assert_eq!(
        console.matches("VIREO-READY").count(),
        1,
        "the guest booted twice: {console}"
    );
    let pattern = console
        .lines()
        .find_map(|l| l.strip_prefix("PATTERN "))
        .expect("no PATTERN line")
        .trim()
        .to_string();
    let mut expect = 1u64;
    let mut checks = 0;
    for l in console.lines().filter(|l| l.starts_with("TICK ")) {
        let mut f = l.split_whitespace().skip(1);
        let n: u64 = f
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a garbled tick line {l:?}: {console}"));
        assert_eq!(n, expect, "ticks not continuous at {l:?}: {console}");
        if let Some(md5) = f.next() {
            assert_eq!(md5, pattern, "the pattern changed at tick {n}: {console}");
            checks += 1;
        }
        expect += 1;
    }
    let at = |key: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}: {out}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (snap, migrated) = (at("SNAPSHOT-AT "), at("MIGRATED-AT "));
    // The pattern was checked after the restore and after the migration.
    assert!(expect > migrated + 20 && migrated > snap + 20, "{console}");
    assert!(checks >= 6, "{console}");
}
