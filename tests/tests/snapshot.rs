//! Snapshots and live migration on this host's KVM, with the `counter` test guest: it counts
//! ticks on the serial console and keeps a 256 KiB pattern in memory that it checks every 8
//! ticks. A restored or migrated guest must go on from the next tick with the pattern intact.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use vireo_tests::{guest, require_kvm, scratch, vmm_bin, Api};
use vireo_vmm_api::{
    LoadRequest, MigrateRequest, MigrationProgress, MigrationState, SnapshotRequest, SnapshotStats,
    VmInfo, VmState,
};
use vmm::snapshot::{decode_state, encode_state, MachineState};

/// One HTTP request on the API socket; returns (status, body). These tests check the exact
/// status and body of refusals too, so they send through the client's raw call.
fn call(sock: &Path, method: &str, path: &str, body: Option<String>) -> (u16, String) {
    Api::new(sock).send(method, path, body.as_deref())
}

/// A request body of the control API's types.
fn body(request: &impl serde::Serialize) -> Option<String> {
    Some(serde_json::to_string(request).unwrap())
}

fn snapshot_to(dir: &Path) -> Option<String> {
    body(&SnapshotRequest {
        path: dir.to_path_buf(),
    })
}

fn load(dir: &Path, resume: bool) -> Option<String> {
    body(&LoadRequest {
        path: dir.to_path_buf(),
        resume,
        verify_memory: true,
    })
}

fn migrate_to(destination: &str, downtime_ms: Option<u64>) -> Option<String> {
    body(&MigrateRequest {
        destination: destination.to_string(),
        downtime_ms,
    })
}

fn state_of(vm_body: &str) -> VmState {
    serde_json::from_str::<VmInfo>(vm_body)
        .unwrap_or_else(|e| panic!("{e}: {vm_body}"))
        .state
}

/// A vireo-vmm process, killed if the test ends early.
struct Vmm {
    child: Child,
    sock: PathBuf,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vmm {
    fn spawn(args: &[&str], sock: &Path) -> Vmm {
        Self::spawn_program(vmm_bin().as_os_str(), args, sock)
    }

    /// Runs `program args --api-sock sock` (`ip netns exec NS vireo-vmm ...`).
    fn spawn_program(program: &std::ffi::OsStr, args: &[&str], sock: &Path) -> Vmm {
        require_kvm();
        let _ = std::fs::remove_file(sock);
        let child = Command::new(program)
            .args(args)
            .arg("--api-sock")
            .arg(sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Vmm {
            child,
            sock: sock.to_path_buf(),
        }
    }

    fn wait_api(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.sock.exists() {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("vireo-vmm exited ({st}): {}", self.stderr());
            }
            assert!(Instant::now() < deadline, "the API socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// Waits for the process to exit; returns its status.
    fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "vireo-vmm did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The ticks printed so far on the console file, in order.
fn ticks(console: &Path) -> Vec<u64> {
    std::fs::read_to_string(console)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("tick ").and_then(|n| n.trim().parse().ok()))
        .collect()
}

fn wait_tick(console: &Path, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ticks(console).last().copied().unwrap_or(0) < at_least {
        assert!(
            Instant::now() < deadline,
            "the guest never reached tick {at_least}; console: {:?}",
            std::fs::read_to_string(console).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The console shows every tick from 1 once and in order, and no pattern check failed.
fn assert_continuous(console: &Path) {
    let t = ticks(console);
    let text = std::fs::read_to_string(console).unwrap();
    assert!(!text.contains("BAD"), "the pattern was damaged: {text}");
    assert_eq!(
        text.matches("counter: start").count(),
        1,
        "the guest started over: {text}"
    );
    for (i, n) in t.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1, "ticks not continuous: {t:?}");
    }
}

fn boot_counter(name: &str) -> (Vmm, PathBuf) {
    let console = scratch(&format!("{name}.console"));
    let _ = std::fs::remove_file(&console);
    let serial = format!("file:{}", console.display());
    let mut vm = Vmm::spawn(
        &[
            "--kernel",
            guest("counter").to_str().unwrap(),
            "--memory",
            "64",
            "--cmdline",
            "x",
            "--serial",
            &serial,
        ],
        &scratch(&format!("{name}.sock")),
    );
    vm.wait_api();
    (vm, console)
}

/// Boots the counter guest, lets it tick 3 times, snapshots it to a fresh directory and
/// stops it.
fn take_snapshot(name: &str) -> (PathBuf, PathBuf) {
    let (mut vm, console) = boot_counter(name);
    wait_tick(&console, 3);
    let dir = scratch(&format!("{name}.snap"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(call(&vm.sock, "PUT", "/vm/pause", None).0, 204);
    let (code, body) = call(&vm.sock, "PUT", "/vm/snapshot", snapshot_to(&dir));
    assert_eq!(code, 200, "{body}");
    assert_eq!(call(&vm.sock, "PUT", "/vm/stop", None).0, 204);
    assert_eq!(vm.wait_exit(Duration::from_secs(10)), 0);
    (dir, console)
}

#[test]
fn snapshot_and_restore_continue_the_counter_with_memory_intact() {
    let (mut vm, console) = boot_counter("snap-restore");
    wait_tick(&console, 2);
    // Only a paused VM can be snapshotted; the body is checked.
    let dir = scratch("snap-restore.snap");
    let _ = std::fs::remove_dir_all(&dir);
    let (code, body) = call(&vm.sock, "PUT", "/vm/snapshot", snapshot_to(&dir));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("paused"), "{body}");
    assert_eq!(
        call(&vm.sock, "PUT", "/vm/snapshot", Some("{}".into())).0,
        400
    );
    assert_eq!(call(&vm.sock, "GET", "/vm/snapshot", None).0, 405);

    assert_eq!(call(&vm.sock, "PUT", "/vm/pause", None).0, 204);
    let (code, body) = call(&vm.sock, "PUT", "/vm/snapshot", snapshot_to(&dir));
    assert_eq!(code, 200, "{body}");
    let stats: SnapshotStats = serde_json::from_str(&body).unwrap();
    assert_eq!(stats.memory_bytes, 64 << 20);
    // A sparse file: only the pages the guest and the boot code touched hold data.
    assert!(stats.memory_data_bytes < 8 << 20, "{body}");
    let at_snapshot = *ticks(&console).last().unwrap();
    assert_eq!(call(&vm.sock, "PUT", "/vm/stop", None).0, 204);
    assert_eq!(vm.wait_exit(Duration::from_secs(10)), 0);

    // Restored without --resume: paused until told.
    let serial = format!("file:{}", console.display());
    let sock = scratch("snap-restore-2.sock");
    let mut restored = Vmm::spawn(
        &["--restore", dir.to_str().unwrap(), "--serial", &serial],
        &sock,
    );
    restored.wait_api();
    let (_, body) = call(&sock, "GET", "/vm", None);
    assert_eq!(state_of(&body), VmState::Paused);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(*ticks(&console).last().unwrap(), at_snapshot);
    assert_eq!(call(&sock, "PUT", "/vm/resume", None).0, 204);
    wait_tick(&console, at_snapshot + 12);
    assert_eq!(call(&sock, "PUT", "/vm/stop", None).0, 204);
    assert_eq!(restored.wait_exit(Duration::from_secs(10)), 0);
    assert_continuous(&console);
    let text = std::fs::read_to_string(&console).unwrap();
    let after = &text[text.find(&format!("tick {}\n", at_snapshot + 1)).unwrap()..];
    assert!(
        after.contains("pattern ok"),
        "no pattern check after the restore: {text}"
    );

    // The same snapshot restores again (the memory file is mapped privately, never written).
    let console2 = scratch("snap-restore-again.console");
    let _ = std::fs::remove_file(&console2);
    let mut again = Vmm::spawn(
        &[
            "--restore",
            dir.to_str().unwrap(),
            "--resume",
            "--serial",
            &format!("file:{}", console2.display()),
        ],
        &scratch("snap-restore-3.sock"),
    );
    again.wait_api();
    wait_tick(&console2, at_snapshot + 9);
    assert_eq!(ticks(&console2)[0], at_snapshot + 1);
    assert!(!std::fs::read_to_string(&console2).unwrap().contains("BAD"));
}

/// Runs `vireo-vmm --restore dir`; returns (status, stderr).
fn restore_fails(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let sock = scratch("refused.sock");
    let _ = std::fs::remove_file(&sock);
    let out = Command::new("timeout")
        .args(["20", vmm_bin().to_str().unwrap(), "--restore"])
        .arg(dir)
        .args(["--serial", "none", "--resume", "--api-sock"])
        .arg(&sock)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // Nothing half-started: no API socket is left behind.
    assert!(!sock.exists(), "a refused restore left its API socket");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// The snapshot format version and the migration protocol version this vireo-vmm uses.
const FORMAT: u32 = 4;
const PROTOCOL: u32 = 4;

/// The snapshot format's checksum (XXH64, seed 0).
fn checksum(b: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(b, 0)
}

/// Rewrites a snapshot's state file with `f` applied to the state (and optionally another
/// version), with valid checksums, as a tampered but well-formed snapshot.
fn rewrite_state(src: &Path, dst: &Path, version: u32, f: impl Fn(&mut MachineState)) {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("memory"), dst.join("memory")).unwrap();
    let raw = std::fs::read(src.join("state")).unwrap();
    let mut state = decode_state(&raw[64..]).unwrap();
    f(&mut state);
    let encoded = encode_state(&state).unwrap();
    let mut h = raw[..64].to_vec();
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[16..24].copy_from_slice(&(encoded.len() as u64).to_le_bytes());
    h[24..32].copy_from_slice(&checksum(&encoded).to_le_bytes());
    let c = checksum(&h[..56]);
    h[56..64].copy_from_slice(&c.to_le_bytes());
    h.extend_from_slice(&encoded);
    std::fs::write(dst.join("state"), h).unwrap();
}

fn assert_refused(dir: &Path, extra: &[&str], expect: &str) {
    let (status, stderr) = restore_fails(dir, extra);
    assert_eq!(status, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("vireo-vmm: error: "), "{stderr}");
    assert!(stderr.contains(expect), "expected {expect:?}: {stderr}");
}

#[test]
fn damaged_or_mismatched_snapshots_are_refused_with_one_line() {
    let (good, _) = take_snapshot("refuse");

    let copy = |name: &str| {
        let d = scratch(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["state", "memory"] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        d
    };
    let flip = |path: PathBuf, at: u64| {
        let mut b = std::fs::read(&path).unwrap();
        b[at as usize] ^= 0x01;
        std::fs::write(&path, b).unwrap();
    };

    // One flipped byte in the state, in the header, in the memory (inside the pattern).
    let d = copy("refuse-state");
    let len = std::fs::metadata(d.join("state")).unwrap().len();
    flip(d.join("state"), len / 2);
    assert_refused(&d, &[], "state checksum mismatch");
    let d = copy("refuse-header");
    flip(d.join("state"), 20);
    assert_refused(&d, &[], "header checksum mismatch");
    let d = copy("refuse-memory");
    flip(d.join("memory"), 0x40_0123);
    assert_refused(&d, &[], "memory checksum mismatch");
    // Without the memory check the damage is the guest's to find: it does.
    let d2 = d.clone();
    let console = scratch("refuse-memory.console");
    let _ = std::fs::remove_file(&console);
    let mut vm = Vmm::spawn(
        &[
            "--restore",
            d2.to_str().unwrap(),
            "--resume",
            "--no-verify-memory",
            "--serial",
            &format!("file:{}", console.display()),
        ],
        &scratch("refuse-noverify.sock"),
    );
    vm.wait_api();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("pattern BAD")
    {
        assert!(
            Instant::now() < deadline,
            "the guest never saw its damaged memory"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(vm);

    // Not a snapshot, a missing one, a short memory file.
    let d = copy("refuse-magic");
    let mut b = std::fs::read(d.join("state")).unwrap();
    b[0] = b'X';
    std::fs::write(d.join("state"), b).unwrap();
    assert_refused(&d, &[], "not a vireo snapshot");
    assert_refused(&scratch("refuse-nothing-here"), &[], "no such file");
    let d = copy("refuse-short");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("memory"))
        .unwrap();
    f.set_len(32 << 20).unwrap();
    assert_refused(&d, &[], "bytes, the snapshot's RAM is");

    // Well-formed (valid checksums) but mismatched: another format version, a vCPU count
    // that does not match the vCPU states, CPU features this host lacks.
    let d = scratch("refuse-version");
    rewrite_state(&good, &d, 99, |_| {});
    assert_refused(
        &d,
        &[],
        &format!("format version 99, this vireo-vmm reads version {FORMAT}"),
    );
    let d = scratch("refuse-vcpus");
    rewrite_state(&good, &d, FORMAT, |s| s.config.vcpus = 2);
    assert_refused(&d, &[], "1 vCPU states for 2 vCPUs");
    let d = scratch("refuse-cpu");
    rewrite_state(&good, &d, FORMAT, |s| {
        for leaf in &mut s.host.cpu_features {
            leaf[4] = u32::MAX;
            leaf[5] = u32::MAX;
        }
    });
    assert_refused(&d, &[], "CPU features this host lacks");
    let d = scratch("refuse-vendor");
    rewrite_state(&good, &d, FORMAT, |s| {
        s.host.cpu_vendor = "CyrixInstead".into()
    });
    assert_refused(&d, &[], "CPU vendor");
    let d = scratch("refuse-regions");
    rewrite_state(&good, &d, FORMAT, |s| s.regions = vec![(0, 4096)]);
    assert_refused(&d, &[], "memory regions");

    // And the original still restores.
    let mut vm = Vmm::spawn(
        &["--restore", good.to_str().unwrap(), "--serial", "none"],
        &scratch("refuse-good.sock"),
    );
    vm.wait_api();
}

/// The guest calibrated its clocks to its TSC's rate, which the snapshot records: a host whose
/// TSC runs within 250 ppm of it restores it; one further off must scale the TSC or refuse.
#[test]
fn a_snapshot_restores_only_where_its_tsc_rate_can_be_kept() {
    let (good, console) = take_snapshot("tsc");
    let raw = std::fs::read(good.join("state")).unwrap();
    let local = decode_state(&raw[64..]).unwrap().host.tsc_khz;
    assert!(
        local > 0,
        "this host's KVM does not report its TSC rate (KVM_GET_TSC_KHZ)"
    );

    // 100 ppm off, as two hosts of one model can be: it runs.
    let near = scratch("tsc-near");
    rewrite_state(&good, &near, FORMAT, |s| {
        s.host.tsc_khz = local + local / 10_000
    });
    let at = *ticks(&console).last().unwrap();
    let serial = format!("file:{}", console.display());
    let sock = scratch("tsc-near.sock");
    let mut vm = Vmm::spawn(
        &[
            "--restore",
            near.to_str().unwrap(),
            "--resume",
            "--serial",
            &serial,
        ],
        &sock,
    );
    vm.wait_api();
    wait_tick(&console, at + 4);
    assert_eq!(call(&sock, "PUT", "/vm/stop", None).0, 204);
    assert_eq!(vm.wait_exit(Duration::from_secs(10)), 0);

    // Twice the rate: only a KVM that scales TSCs can run it.
    let far = scratch("tsc-far");
    rewrite_state(&good, &far, FORMAT, |s| s.host.tsc_khz = local * 2);
    let scales = kvm_ioctls::Kvm::new()
        .unwrap()
        .check_extension(kvm_ioctls::Cap::TscControl);
    if scales {
        let sock = scratch("tsc-far.sock");
        let mut vm = Vmm::spawn(
            &["--restore", far.to_str().unwrap(), "--serial", "none"],
            &sock,
        );
        vm.wait_api();
        assert_eq!(call(&sock, "PUT", "/vm/stop", None).0, 204);
        assert_eq!(vm.wait_exit(Duration::from_secs(10)), 0);
    } else {
        assert_refused(
            &far,
            &[],
            &format!(
                "the guest's TSC runs at {} kHz, this host's at {local} kHz, and its KVM cannot scale a TSC",
                local * 2
            ),
        );
    }
}

/// A free TCP port on loopback (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a destination on a fresh port; returns it and its address.
fn destination(name: &str, console: &Path) -> (Vmm, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let vm = Vmm::spawn(
        &[
            "--incoming",
            &addr,
            "--serial",
            &format!("file:{}", console.display()),
        ],
        &scratch(&format!("{name}.sock")),
    );
    (vm, addr)
}

/// PUT /vm/migrate, retried while the destination is not listening yet.
fn migrate(sock: &Path, addr: &str) -> MigrationProgress {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = call(sock, "PUT", "/vm/migrate", migrate_to(addr, Some(50)));
        if code == 200 {
            return serde_json::from_str(&body).unwrap();
        }
        assert!(
            body.contains("cannot connect") && Instant::now() < deadline,
            "migration failed: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ten_live_migrations_in_a_row_keep_the_guest_state() {
    let (mut src, console) = boot_counter("migrate");
    wait_tick(&console, 2);
    for hop in 0..10 {
        let (mut dst, addr) = destination(&format!("migrate-{hop}"), &console);
        let before = *ticks(&console).last().unwrap();
        let report = migrate(&src.sock, &addr);
        assert_eq!(report.state, MigrationState::Completed, "{report:?}");
        assert!(report.rounds >= 1, "{report:?}");
        assert!(report.pages_sent > 0, "{report:?}");
        // The source exits 0 once the destination runs the guest.
        assert_eq!(
            src.wait_exit(Duration::from_secs(10)),
            0,
            "{}",
            src.stderr()
        );
        dst.wait_api();
        wait_tick(&console, before + 3);
        src = dst;
    }
    // A last pattern check on the final destination.
    let last = *ticks(&console).last().unwrap();
    wait_tick(&console, (last / 8 + 1) * 8 + 1);
    assert_eq!(call(&src.sock, "PUT", "/vm/stop", None).0, 204);
    assert_eq!(src.wait_exit(Duration::from_secs(10)), 0);
    assert_continuous(&console);
}

#[test]
fn failed_migrations_leave_the_source_running() {
    let (src, console) = boot_counter("migrate-fail");
    wait_tick(&console, 2);
    // Nobody listens there.
    let port = free_port();
    let (code, body) = call(
        &src.sock,
        "PUT",
        "/vm/migrate",
        migrate_to(&format!("127.0.0.1:{port}"), None),
    );
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("cannot connect"), "{body}");
    let (_, p) = call(&src.sock, "GET", "/vm/migrate", None);
    let p: MigrationProgress = serde_json::from_str(&p).unwrap();
    assert_eq!(p.state, MigrationState::Failed);
    // Bad requests.
    assert_eq!(
        call(&src.sock, "PUT", "/vm/migrate", Some("{}".into())).0,
        400
    );
    assert_eq!(
        call(
            &src.sock,
            "PUT",
            "/vm/migrate",
            migrate_to("127.0.0.1:1", Some(0))
        )
        .0,
        400
    );

    // A peer that accepts and then hangs up mid-stream.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 64];
        let _ = s.read(&mut b);
        drop(s);
    });
    let (code, body) = call(&src.sock, "PUT", "/vm/migrate", migrate_to(&addr, None));
    peer.join().unwrap();
    assert_eq!(code, 502, "{body}");

    // Still running, and still counting.
    let (_, vm) = call(&src.sock, "GET", "/vm", None);
    assert_eq!(state_of(&vm), VmState::Running);
    let now = *ticks(&console).last().unwrap();
    wait_tick(&console, now + 2);
    assert_continuous(&console);
}

#[test]
fn a_destination_refuses_a_bad_stream_with_status_1() {
    require_kvm();
    for garbage in [
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        // The right magic, a future version.
        [b"VIREOMIG".as_slice(), &7u32.to_le_bytes()].concat(),
        // A HELLO frame claiming an absurd length.
        [
            b"VIREOMIG".as_slice(),
            &PROTOCOL.to_le_bytes(),
            &1u32.to_le_bytes(),
            &u64::MAX.to_le_bytes(),
        ]
        .concat(),
    ] {
        let console = scratch("bad-stream.console");
        let (mut dst, addr) = destination("bad-stream", &console);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match std::net::TcpStream::connect(&addr) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("destination never listened: {e}"),
            }
        };
        s.write_all(&garbage).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        assert_eq!(dst.wait_exit(Duration::from_secs(10)), 1);
        let err = dst.stderr();
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with("vireo-vmm: error: migration: "), "{err}");
    }
}

/// Two network namespaces joined by a veth pair, standing for two hosts; removed on drop.
struct TwoHosts {
    a: String,
    b: String,
}

impl TwoHosts {
    fn new() -> TwoHosts {
        let id = std::process::id() % 100_000;
        let h = TwoHosts {
            a: format!("vireo-mig-a-{id}"),
            b: format!("vireo-mig-b-{id}"),
        };
        let (va, vb) = (format!("vma{id}"), format!("vmb{id}"));
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("run ip");
            assert!(st.success(), "ip {args:?} failed");
        };
        ip(&["netns", "add", &h.a]);
        ip(&["netns", "add", &h.b]);
        ip(&[
            "-n", &h.a, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &h.b,
        ]);
        for (ns, dev, addr) in [(&h.a, &va, "10.213.0.1/24"), (&h.b, &vb, "10.213.0.2/24")] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        h
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn migration_between_two_network_namespaces() {
    require_kvm();
    let hosts = TwoHosts::new();
    let console = scratch("netns.console");
    let _ = std::fs::remove_file(&console);
    let serial = format!("file:{}", console.display());
    let vmm = vmm_bin();
    let vmm = vmm.to_str().unwrap();
    let counter = guest("counter");
    let mut src = Vmm::spawn_program(
        "ip".as_ref(),
        &[
            "netns",
            "exec",
            &hosts.a,
            vmm,
            "--kernel",
            counter.to_str().unwrap(),
            "--memory",
            "64",
            "--cmdline",
            "x",
            "--serial",
            &serial,
        ],
        &scratch("netns-a.sock"),
    );
    src.wait_api();
    wait_tick(&console, 2);
    let mut dst = Vmm::spawn_program(
        "ip".as_ref(),
        &[
            "netns",
            "exec",
            &hosts.b,
            vmm,
            "--incoming",
            "10.213.0.2:7070",
            "--serial",
            &serial,
        ],
        &scratch("netns-b.sock"),
    );
    // The source's namespace cannot reach the destination's listener through loopback: only
    // through the veth pair.
    let report = migrate(&src.sock, "10.213.0.2:7070");
    assert_eq!(report.state, MigrationState::Completed, "{report:?}");
    assert_eq!(src.wait_exit(Duration::from_secs(10)), 0);
    dst.wait_api();
    let now = *ticks(&console).last().unwrap();
    wait_tick(&console, now + 3);
    assert_eq!(call(&dst.sock, "PUT", "/vm/stop", None).0, 204);
    assert_eq!(dst.wait_exit(Duration::from_secs(10)), 0);
    assert_continuous(&console);
}

#[test]
fn a_destination_opens_only_the_devices_its_own_config_allows() {
    let console = scratch("allowed.console");
    let _ = std::fs::remove_file(&console);
    let disk = scratch("allowed-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let serial = format!("file:{}", console.display());
    let drive = format!("path={}", disk.display());
    let mut src = Vmm::spawn(
        &[
            "--kernel",
            guest("counter").to_str().unwrap(),
            "--memory",
            "64",
            "--cmdline",
            "x",
            "--drive",
            &drive,
            "--serial",
            &serial,
        ],
        &scratch("allowed-src.sock"),
    );
    src.wait_api();
    wait_tick(&console, 2);

    // A destination told nothing refuses a source that would make it open a host file.
    let (mut dst, addr) = destination("allowed-none", &console);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, body) = loop {
        let r = call(&src.sock, "PUT", "/vm/migrate", migrate_to(&addr, None));
        if !r.1.contains("cannot connect") || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("--config"), "{body}");
    assert_eq!(dst.wait_exit(Duration::from_secs(10)), 1);
    let (_, vm) = call(&src.sock, "GET", "/vm", None);
    assert_eq!(state_of(&vm), VmState::Running);

    // With the VM's configuration, the same drive is allowed.
    let cfg = scratch("allowed.json");
    std::fs::write(
        &cfg,
        json!({"kernel": guest("counter"), "memory_mib": 64, "drives": [{"path": disk}]})
            .to_string(),
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut dst = Vmm::spawn(
        &[
            "--incoming",
            &addr,
            "--config",
            cfg.to_str().unwrap(),
            "--serial",
            &serial,
        ],
        &scratch("allowed-dst.sock"),
    );
    let report = migrate(&src.sock, &addr);
    assert_eq!(report.state, MigrationState::Completed, "{report:?}");
    assert_eq!(src.wait_exit(Duration::from_secs(10)), 0);
    dst.wait_api();
    let now = *ticks(&console).last().unwrap();
    wait_tick(&console, now + 2);
    assert_continuous(&console);
}

/// A restored VM's memory is its snapshot's file mapped privately: pages it has not touched
/// since are only in that file. Snapshotting it again (into the very directory it runs from)
/// and migrating it right away must still carry those pages.
#[test]
fn a_restored_vm_snapshots_into_its_own_directory_and_migrates_with_file_pages() {
    let (dir, console) = take_snapshot("restored-again");
    let at_snapshot = *ticks(&console).last().unwrap();
    let serial = format!("file:{}", console.display());

    // Restored paused (nothing touched yet), snapshotted at once over its own files.
    let sock = scratch("restored-again-1.sock");
    let mut vm = Vmm::spawn(
        &["--restore", dir.to_str().unwrap(), "--serial", &serial],
        &sock,
    );
    vm.wait_api();
    let (code, body) = call(&sock, "PUT", "/vm/snapshot", snapshot_to(&dir));
    assert_eq!(code, 200, "{body}");
    assert_eq!(call(&sock, "PUT", "/vm/stop", None).0, 204);
    assert_eq!(vm.wait_exit(Duration::from_secs(10)), 0);

    // Restored from the rewritten files, migrated before its next pattern check.
    let mut vm = Vmm::spawn(
        &["--restore", dir.to_str().unwrap(), "--serial", &serial],
        &scratch("restored-again-2.sock"),
    );
    vm.wait_api();
    let (mut dst, addr) = destination("restored-again-dst", &console);
    let report = migrate(&vm.sock, &addr);
    assert_eq!(report.state, MigrationState::Completed, "{report:?}");
    assert_eq!(vm.wait_exit(Duration::from_secs(10)), 0);
    dst.wait_api();
    // A VM paused when its migration began stays paused on the destination.
    let (_, st) = call(&dst.sock, "GET", "/vm", None);
    assert_eq!(state_of(&st), VmState::Paused);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(*ticks(&console).last().unwrap(), at_snapshot);
    assert_eq!(call(&dst.sock, "PUT", "/vm/resume", None).0, 204);
    wait_tick(&console, (at_snapshot / 8 + 2) * 8 + 1);
    assert_eq!(call(&dst.sock, "PUT", "/vm/stop", None).0, 204);
    assert_continuous(&console);
    let text = std::fs::read_to_string(&console).unwrap();
    let after = &text[text.find(&format!("tick {}\n", at_snapshot + 1)).unwrap()..];
    assert!(after.contains("pattern ok"), "{text}");
}

/// A VMM started with nothing but its API socket waits for `PUT /vm/snapshot/load`: requests
/// before that, a bad body and a damaged snapshot are refused with a reason and leave it
/// waiting; a good snapshot then runs on the same socket and the counter goes on.
#[test]
fn a_vmm_started_with_only_its_api_loads_a_snapshot_through_it() {
    let (dir, console) = take_snapshot("api-load");
    let at_snapshot = *ticks(&console).last().unwrap();
    let serial = format!("file:{}", console.display());
    let sock = scratch("api-load-2.sock");
    let mut vm = Vmm::spawn(&["--serial", &serial], &sock);
    vm.wait_api();

    let (code, body) = call(&sock, "GET", "/vm", None);
    assert_eq!((code, body.as_str()), (200, r#"{"state":"not-loaded"}"#));
    let (code, body) = call(&sock, "PUT", "/vm/pause", None);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("load a snapshot first"), "{body}");
    assert_eq!(call(&sock, "GET", "/vm/snapshot/load", None).0, 405);
    let (code, body) = call(
        &sock,
        "PUT",
        "/vm/snapshot/load",
        Some(format!(r#"{{"path": {:?}, "bogus": 1}}"#, dir)),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("bogus"), "{body}");
    let missing = scratch("api-load-missing.snap");
    let (code, body) = call(&sock, "PUT", "/vm/snapshot/load", load(&missing, false));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("api-load-missing.snap"), "{body}");
    // A damaged memory file is refused (its checksum is verified by default).
    let damaged = scratch("api-load-damaged.snap");
    let _ = std::fs::remove_dir_all(&damaged);
    std::fs::create_dir_all(&damaged).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), damaged.join(e.file_name())).unwrap();
    }
    let mem = std::fs::read_dir(&damaged)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&mem).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"damage", 0x1000).unwrap();
    let (code, body) = call(&sock, "PUT", "/vm/snapshot/load", load(&damaged, false));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("checksum"), "{body}");
    assert_eq!(
        call(&sock, "GET", "/vm", None).1,
        r#"{"state":"not-loaded"}"#
    );
    assert!(vm.child.try_wait().unwrap().is_none(), "the VMM gave up");

    let (code, body) = call(&sock, "PUT", "/vm/snapshot/load", load(&dir, true));
    assert_eq!(code, 204, "{body}");
    wait_tick(&console, at_snapshot + 10);
    let (_, body) = call(&sock, "GET", "/vm", None);
    assert_eq!(state_of(&body), VmState::Running);
    assert_eq!(call(&sock, "PUT", "/vm/stop", None).0, 204);
    assert_eq!(vm.wait_exit(Duration::from_secs(10)), 0);
    assert_continuous(&console);
    assert!(!sock.exists(), "the API socket was left behind");
}
