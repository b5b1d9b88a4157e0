//! virtio-vsock end to end, in the lab: a stock Debian guest with `--vsock cid=3,uds=PATH`.
//! Host → guest: a host process connects to PATH, says `CONNECT 5000`, reads `OK <port>`, and
//! talks to a listener in the guest. Guest → host: the guest connects to CID 2 port 6000 and
//! talks to a host process listening on `PATH_6000`. Refusals both ways: no guest listener on
//! 5999 (the host socket is closed), no host listener on 6001 (the guest's connect fails).
//! Busybox has neither vsock nor Unix-socket clients, so both ends are
//! tests/programs/vsock_probe.c, built static with gcc and given to the guest in an initrd
//! appended to the standard one.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use vireo_tests::{repo_root, run_in_lab, Ran};

static LAB: Mutex<()> = Mutex::new(());

/// The guest's part: /etc/vireo/vsock.sh.
const GUEST: &str = r#"#!/bin/sh
vsock-probe listen 5000 &
L=$!
vsock-probe connect 2 6000 "hello from guest"
vsock-probe connect 2 6001 "nobody listens"
wait $L
"#;

/// What both lab scripts share: `start_peer CMD SOCKET` starts a host-side probe and waits
/// for its socket; `start_vm` builds the guest's initrd (the probe and /etc/vireo/vsock.sh
/// appended), starts the VM in the background as $VMM and waits until the guest listens.
const HOST_PRELUDE: &str = r#"#!/bin/sh
# The VMM's log goes to its own file, shown on stderr (so in a failure's report) at the end: in
# the console file its debug lines would land in the middle of the guest's lines.
trap 'cat /tmp/vmm.log >&2 2>/dev/null' EXIT
start_peer() {
    $1 >/tmp/peer.out &
    PEER=$!
    i=0
    while [ ! -S "$2" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
}
start_vm() {
    mkdir -p /tmp/extra/etc/vireo /tmp/extra/bin
    cp /vireo/vsock-probe /tmp/extra/bin/vsock-probe
    cp /vireo/vsock-guest.sh /tmp/extra/etc/vireo/vsock.sh
    chmod 0755 /tmp/extra/bin/vsock-probe /tmp/extra/etc/vireo/vsock.sh
    (cd /tmp/extra && find . | cpio -o -H newc 2>/dev/null | gzip) >/tmp/extra.gz
    cat /vireo/guest/initrd.cpio.gz /tmp/extra.gz >/tmp/initrd.gz
    # debug: a guest fault's registers reach the VMM's log, and so the failure report.
    VIREO_LOG=debug timeout 240 vireo-vmm --kernel /vireo/guest/vmlinux --initrd /tmp/initrd.gz --memory 256 \
        --vsock cid=3,uds=/tmp/v.sock $VMM_ARGS \
        --cmdline "console=ttyS0 panic=-1 quiet vireo.run=vsock" >/tmp/console 2>/tmp/vmm.log &
    VMM=$!
    i=0
    while ! grep -q VSOCK-LISTENING /tmp/console && kill -0 $VMM 2>/dev/null && [ $i -lt 1800 ]; do
        sleep 0.1
        i=$((i + 1))
    done
}
"#;

/// The lab's part.
const HOST: &str = r#"
start_peer "/vireo/vsock-probe uds-listen /tmp/v.sock_6000" /tmp/v.sock_6000
start_vm
/vireo/vsock-probe uds-connect /tmp/v.sock 5999 "nobody listens"
/vireo/vsock-probe uds-connect /tmp/v.sock 5000 "ping from host"
wait $VMM
echo "VMM-EXIT=$?"
if [ -e /tmp/v.sock ]; then echo SOCKET-LEFT; else echo SOCKET-REMOVED; fi
wait $PEER
cat /tmp/peer.out
cat /tmp/console
"#;

/// Bulk: 16 MiB each way at once, checked end to end.
const BULK_GUEST: &str = r#"#!/bin/sh
vsock-probe sink 5001 &
L=$!
vsock-probe send 2 6002 16777216
wait $L
"#;

const BULK_HOST: &str = r#"
start_peer "/vireo/vsock-probe uds-sink /tmp/v.sock_6002" /tmp/v.sock_6002
start_vm
/vireo/vsock-probe uds-send /tmp/v.sock 5001 16777216
wait $VMM
echo "VMM-EXIT=$?"
wait $PEER
cat /tmp/peer.out
cat /tmp/console
"#;

/// A connection across a snapshot: the guest holds one open to the host; the VM is snapshotted,
/// stopped and restored in a new VMM, whose host end knows nothing of it.
const RESTORE_GUEST: &str = r#"#!/bin/sh
vsock-probe listen 5000 &
vsock-probe hold 2 6003
"#;

const RESTORE_HOST: &str = r#"
VMM_ARGS="--api-sock /tmp/a.sock"
start_peer "/vireo/vsock-probe uds-sink /tmp/v.sock_6003" /tmp/v.sock_6003
start_vm
i=0
while ! grep -q GUEST-HELD /tmp/console && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
vireo-api /tmp/a.sock PUT /vm/pause
vireo-api /tmp/a.sock PUT /vm/snapshot '{"path": "/tmp/snap"}'
vireo-api /tmp/a.sock PUT /vm/stop
wait $VMM
timeout 120 vireo-vmm --restore /tmp/snap --resume --api-sock /tmp/b.sock --serial file:/tmp/console2 &
VMM=$!
i=0
while ! grep -q GUEST-HOLD-ENDED /tmp/console2 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
vireo-api /tmp/b.sock PUT /vm/stop
wait $VMM
echo "VMM-EXIT=$?"
cat /tmp/console
echo ---- restored
cat /tmp/console2
"#;

/// Builds tests/programs/vsock_probe.c static into target/vsock-probe/.
fn build_probe() -> PathBuf {
    let root = repo_root();
    let out = root.join("target/vsock-probe");
    std::fs::create_dir_all(&out).unwrap();
    let bin = out.join("vsock-probe");
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(root.join("tests/programs/vsock_probe.c"))
        .status()
        .unwrap_or_else(|e| panic!("this test needs gcc to build its vsock probe: {e}"));
    assert!(
        status.success(),
        "gcc -static failed on tests/programs/vsock_probe.c (static glibc: libc6-dev)"
    );
    bin
}

fn lines(r: &Ran) -> Vec<&str> {
    r.stdout.lines().map(|l| l.trim_end_matches('\r')).collect()
}

fn line_with<'a>(r: &'a Ran, prefix: &str) -> &'a str {
    lines(r)
        .into_iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line: {r:?}"))
}

/// Runs `host` in the lab with the probe and `guest` as /etc/vireo/vsock.sh at hand.
fn lab_run(name: &str, guest: &str, host: &str) -> Ran {
    let probe = build_probe();
    let dir = std::env::temp_dir().join(format!("vireo-vsock-lab-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (guest_sh, host_sh) = (dir.join("vsock-guest.sh"), dir.join("host.sh"));
    std::fs::write(&guest_sh, guest).unwrap();
    std::fs::write(&host_sh, format!("{HOST_PRELUDE}{host}")).unwrap();
    let puts = [
        format!("{}:/vireo/vsock-probe", probe.display()),
        format!("{}:/vireo/vsock-guest.sh", guest_sh.display()),
        format!("{}:/vireo/host.sh", host_sh.display()),
    ];
    let mut extra = Vec::new();
    for p in &puts {
        extra.extend(["--put", p.as_str()]);
    }
    let r = run_in_lab("sh /vireo/host.sh", &extra);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

#[test]
fn round_trips_both_ways_and_refusals() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let r = lab_run("basic", GUEST, HOST);

    assert_eq!(line_with(&r, "VMM-EXIT="), "VMM-EXIT=0", "{r:?}");
    assert_eq!(line_with(&r, "SOCKET-"), "SOCKET-REMOVED", "{r:?}");
    // Host → guest: the OK line names the host-side port, then the guest's listener answers.
    let ok = line_with(&r, "HOST-OK-LINE ");
    let port = ok
        .strip_prefix("HOST-OK-LINE OK ")
        .unwrap_or_else(|| panic!("{ok}"));
    assert!(port.parse::<u32>().is_ok(), "{ok}");
    assert_eq!(
        line_with(&r, "GUEST-SERVED "),
        "GUEST-SERVED ping from host"
    );
    assert_eq!(line_with(&r, "HOST-GOT "), "HOST-GOT ECHO PING FROM HOST");
    // Guest → host.
    assert_eq!(
        line_with(&r, "HOST-SERVED "),
        "HOST-SERVED hello from guest"
    );
    assert_eq!(
        line_with(&r, "GUEST-GOT "),
        "GUEST-GOT HOST-ACK hello from guest"
    );
    // Refusals: the host socket is closed; the guest's connect fails.
    assert_eq!(line_with(&r, "HOST-CLOSED "), "HOST-CLOSED 5999");
    assert!(
        line_with(&r, "GUEST-CONNECT-FAILED ").starts_with("GUEST-CONNECT-FAILED 6001 "),
        "{r:?}"
    );
}

#[test]
fn bulk_transfers_both_ways_arrive_intact() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let r = lab_run("bulk", BULK_GUEST, BULK_HOST);
    assert_eq!(line_with(&r, "VMM-EXIT="), "VMM-EXIT=0", "{r:?}");
    // Each receiver answers "GOT <bytes> <checksum>" of what it read to EOF.
    for who in ["HOST", "GUEST"] {
        let sent = line_with(&r, &format!("{who}-SENT "));
        let sent = sent.split_once(' ').unwrap().1;
        assert!(sent.starts_with("16777216 "), "{sent}");
        let reply = line_with(&r, &format!("{who}-REPLY "));
        assert_eq!(
            reply.split_once(' ').unwrap().1,
            format!("GOT {sent}"),
            "{r:?}"
        );
    }
    // Not asserted (timings): how fast it went, for the log.
    for who in ["HOST", "GUEST"] {
        eprintln!("{}", line_with(&r, &format!("{who}-MBPS ")));
    }
}

#[test]
fn a_restored_guest_sees_its_vsock_connections_reset_at_once() {
    let _g = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let r = lab_run("restore", RESTORE_GUEST, RESTORE_HOST);
    assert_eq!(line_with(&r, "GUEST-HELD"), "GUEST-HELD 6003", "{r:?}");
    // Without the transport reset the guest would wait in read() until its watchdog.
    assert_eq!(
        line_with(&r, "GUEST-HOLD-ENDED"),
        "GUEST-HOLD-ENDED Connection reset by peer",
        "{r:?}"
    );
    assert_eq!(line_with(&r, "VMM-EXIT="), "VMM-EXIT=0", "{r:?}");
}
