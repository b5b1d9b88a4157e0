//! Many moves of one Debian guest in the lab, each checked: a guest that rewrites 16 MiB of
//! tmpfs every 0.1 s and prints a numbered tick line of ~80 bytes every 50 ms (so that its
//! console's transmit interrupts are busy whenever it is stopped) goes through MOVES moves in
//! a row, live migrations to a new vireo-vmm with, every fourth move, a snapshot restored in a
//! new vireo-vmm instead (alternately by `--restore` and by `PUT /vm/snapshot/load`). After
//! each move the guest must print 20 more ticks within 30 s; every tick must be on the console
//! exactly once and in order, and the guest must have booted once.
//!
//! A guest that stops is examined: the VMM's threads, metrics and stderr, the lab's kernel,
//! and its machine snapshotted and decoded (`vireo-snapshot-dump`, with the page walk of its
//! instruction pointer). The emulated host has a failure of its own (docs/snapshots.md,
//! "Guests that stop after a move"), seen under QEMU's migrations too: the guest's CR3 lies
//! 4 GiB above its RAM and it faults on every instruction fetch (or, unable to take that
//! fault, triple-faults with a #PF on an instruction fetch as its last exception). Such a
//! guest is counted, reported on stderr and in `build/lab/retries.log`, and a new guest takes
//! the next move; the test fails if more than half the moves lose their guest that way (the
//! lab then says nothing about the VMM). Any other stop fails it at once: a lost interrupt, a
//! timer that never fires, a migration or a restore that fails. `make stress-migrate` does the
//! same hundreds of times beside QEMU. The lab needs `vireo-api` and `vireo-snapshot-dump`
//! (benches/) beside vireo-vmm in the binary directory, as `make build` leaves them.

use std::sync::Mutex;

use vireo_tests::{guest_script_initrd, run_in_lab, vmm_bin};

static LAB: Mutex<()> = Mutex::new(());

/// Moves in the one lab boot: about 3 minutes on the 2-core development machine.
const MOVES: u32 = 28;

/// What pads each tick line (the guest's `pad`).
const PAD: &str = "................................................................";

const GUEST: &str = r#"#!/bin/sh
mkdir -p /dev/shm && mount -t tmpfs -o size=64m tmpfs /dev/shm
(while :; do dd if=/dev/zero of=/dev/shm/d bs=1M count=16 conv=notrunc 2>/dev/null; sleep 0.1; done) &
pad=................................................................
i=0
while :; do i=$((i + 1)); echo "TICK $i $pad"; sleep 0.05; done
"#;

/// The lab's side; MOVES comes from the environment. Each guest (a new one after a failure
/// with the emulated host's signature) writes its own console file.
const SCRIPT: &str = r###"
set -u
ip link set lo up
cat /vireo/guest/initrd.cpio.gz /tmp/extra.gz > /tmp/i.gz
export VIREO_LOG=warn,vmm::vstate::vcpu=debug
# The number of the console's last whole tick line (the last line may be half written).
last() { tail -c 1000 $con 2>/dev/null | sed '$d' | grep -o 'TICK [0-9][0-9]*' | tail -1 | cut -d' ' -f2; }
# wait_tick N SECS: until tick N is on the console; status 1 when SECS pass first.
wait_tick() {
    local until=$((EPOCHSECONDS + $2)) w
    while :; do
        w=$(last); [ -n "$w" ] && [ "$w" -ge "$1" ] && return 0
        [ $EPOCHSECONDS -ge $until ] && return 1
        sleep 0.05
    done
}
n=0 g=0 host=0
boot() {
    g=$((g + 1)) n=$((n + 1)) con=/tmp/con-$g.log
    vs=/tmp/v$n.sock ve=/tmp/v$n.err
    vireo-vmm --kernel /vireo/guest/vmlinux --initrd /tmp/i.gz --memory 256 \
        --cmdline 'console=ttyS0 panic=-1 quiet vireo.run=many vireo.exit=wait' \
        --api-sock $vs --serial file:$con 2>$ve & vp=$!
    wait_tick 20 120 || stuck "the guest did not boot"
}
# stuck WHY: what the VMM that should be running was doing, with the decoded state of its
# machine. The emulated host's signature (docs/snapshots.md: seen under QEMU too) is a guest
# whose CR3 lies outside its RAM, or, where the guest could not even take the fault and
# triple-faulted, a last exception that is a #PF on an instruction fetch (error code 0x10):
# such a guest is counted (HOST-BROKE) and a new one boots; anything else ends the test.
stuck() {
    echo "STUCK move $move ($kind): $1"
    echo "## threads (name state utime stime wchan)"
    for t in /proc/$vp/task/*; do echo "  $(cat $t/comm) $(sed 's/^.*) //' $t/stat | cut -d' ' -f1,12,13) $(cat $t/wchan)"; done
    echo "## GET /vm: $(vireo-api $vs GET /vm 2>&1)"
    vireo-api $vs GET /metrics 2>&1 | grep -E '^vireo_vcpu'
    echo "## stderr"; tail -n 10 $ve
    echo "## lab kernel"; dmesg | tail -n 15
    echo "## console"; tail -n 8 $con
    rm -rf /tmp/stuck
    if vireo-api $vs PUT /vm/pause >/dev/null 2>&1 && vireo-api $vs PUT /vm/snapshot '{"path": "/tmp/stuck"}' >/dev/null 2>&1; then
        echo "## the stuck machine"; vireo-snapshot-dump /tmp/stuck/state /tmp/stuck/memory | tee /tmp/dump
    fi
    vireo-api $vs PUT /vm/stop >/dev/null 2>&1 || kill $vp 2>/dev/null; wait $vp 2>/dev/null
    if grep -q 'IS OUTSIDE GUEST RAM' /tmp/dump 2>/dev/null \
        || { grep -q 'triple-faulted' $ve && grep -qE 'exception [01]/[01]/14/0x1[0-9a-f] ' $ve; }; then
        host=$((host + 1))
        echo "HOST-BROKE move $move ($kind): $1"
        rm -f /tmp/dump
        boot
        return
    fi
    exit 1
}
move=0 kind=boot
boot
for move in $(seq $MOVES); do
    n=$((n + 1)) s2=/tmp/v$n.sock e2=/tmp/v$n.err
    if [ $((move % 4)) = 0 ]; then
        kind=restore-exec; [ $((move % 8)) = 0 ] && kind=restore-api
        rm -rf /tmp/snap
        if ! vireo-api $vs PUT /vm/pause >/dev/null || ! vireo-api $vs PUT /vm/snapshot '{"path": "/tmp/snap"}' >/dev/null; then
            stuck "the snapshot failed"; continue
        fi
        vireo-api $vs PUT /vm/stop >/dev/null; wait $vp
        t=$(last)
        if [ $kind = restore-exec ]; then
            vireo-vmm --restore /tmp/snap --resume --no-verify-memory --api-sock $s2 --serial file:$con 2>$e2 & vp=$!
        else
            vireo-vmm --api-sock $s2 --serial file:$con 2>$e2 & vp=$!
            i=0; until vireo-api $s2 GET /vm >/dev/null 2>&1; do sleep 0.05; i=$((i + 1)); [ $i -lt 400 ] || break; done
            vireo-api $s2 PUT /vm/snapshot/load '{"path": "/tmp/snap", "resume": true, "verify_memory": false}' >/dev/null
        fi
        vs=$s2 ve=$e2
    else
        kind=migrate port=$((7000 + move))
        vireo-vmm --incoming 127.0.0.1:$port --api-sock $s2 --serial file:$con 2>$e2 & p2=$!
        hex=$(printf '%04X' $port) i=0
        until grep -q ":$hex 00000000:0000 0A" /proc/net/tcp; do
            sleep 0.05; i=$((i + 1)); [ $i -lt 400 ] || { echo "no listener on $port: $(cat $e2)"; exit 1; }
        done
        if ! vireo-api $vs PUT /vm/migrate "{\"destination\": \"127.0.0.1:$port\", \"downtime_ms\": 50}" >/dev/null; then
            kill $p2; wait $p2
            stuck "the migration failed: $(tail -n 3 $ve)"; continue
        fi
        wait $vp; vp=$p2 vs=$s2 ve=$e2
        # Counted from the end of the migration: the source ticked on while it ran.
        t=$(last)
    fi
    if wait_tick $((t + 20)) 30; then echo "MOVED $move $kind at tick $t"; else stuck "no tick for 30 s after the move"; fi
done
vireo-api $vs PUT /vm/stop >/dev/null; wait $vp
echo "HOST-BROKE-COUNT $host"
for i in $(seq $g); do echo "CONSOLE-BEGIN $i"; cat /tmp/con-$i.log; echo; done
echo CONSOLE-END
"###;

// Not in `make test` while issue 21 is open: in the final CI rehearsal the lab's own kernel
// broke twice in a row during these 28 moves (a freeze, then an oops in L1's KVM_RUN path), so
// the test failed for the emulated host, not for vireo-vmm. `make test-migrate-many` runs it.
#[test]
#[ignore = "the lab's L1 breaks during long migration runs (issue 21); run with make test-migrate-many"]
fn a_dirty_debian_guest_keeps_ticking_through_many_migrations_and_restores() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let bin = vmm_bin().parent().unwrap().to_path_buf();
    for tool in ["vireo-api", "vireo-snapshot-dump"] {
        assert!(
            bin.join(tool).is_file(),
            "{} is missing: build the workspace's binaries (make build)",
            bin.join(tool).display()
        );
    }
    let extra = guest_script_initrd("many", GUEST);
    let put = format!("{}:/tmp/extra.gz", extra.display());
    let command = format!("MOVES={MOVES}\n{SCRIPT}");
    let r = run_in_lab(&command, &["--put", &put, "--timeout", "900"]);
    let out = &r.stdout;
    assert_eq!(r.status, Some(0), "a guest stopped after a move: {r:?}");
    let moved = out.lines().filter(|l| l.starts_with("MOVED ")).count();
    let broke: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("HOST-BROKE move"))
        .collect();
    assert_eq!(moved + broke.len(), MOVES as usize, "{r:?}");
    if !broke.is_empty() {
        // Not vireo's doing (the same happens to QEMU's guests in the lab), but seen: on
        // stderr, and in the list of the lab's breakages that `make test` prints at its end.
        let note = format!(
            "lab_migrate_many: the emulated host broke {} of {MOVES} moves' guests (CR3 outside RAM): {}\n",
            broke.len(),
            broke.join("; ")
        );
        eprint!("{note}");
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(vireo_tests::repo_root().join("build/lab/retries.log"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, note.as_bytes()));
    }
    // A lab that breaks most guests says nothing about the VMM.
    assert!(
        moved * 2 >= MOVES as usize,
        "only {moved} of {MOVES} moves kept their guest: the lab is unusable: {r:?}"
    );
    let consoles = out
        .split_once("CONSOLE-BEGIN ")
        .expect("no console")
        .1
        .split_once("CONSOLE-END")
        .expect("no console end")
        .0
        .replace('\r', "");
    for console in consoles.split("CONSOLE-BEGIN ") {
        assert_eq!(
            console.matches("VIREO-READY").count(),
            1,
            "a guest booted other than once: {console}"
        );
        let mut ticks: Vec<&str> = console.lines().filter(|l| l.starts_with("TICK ")).collect();
        // A guest stopped for the emulated host's breakage may have left half a line.
        if ticks.last().is_some_and(|l| !l.ends_with(PAD)) {
            ticks.pop();
        }
        for (expect, l) in (1u64..).zip(ticks) {
            let n: u64 = l
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a garbled tick line {l:?}: {console}"));
            assert_eq!(n, expect, "ticks not continuous at {l:?}");
        }
    }
}
