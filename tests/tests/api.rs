//! The control API on a running VM (host KVM, a test guest that halts): state, pause/resume,
//! balloon target, drive rate limits, metrics, errors, stop.

use std::io::{Read, Write};
use std::ops::{Deref, DerefMut};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vireo_tests::{guest, require_kvm, scratch, vmm_bin, Api};
use vireo_vmm_api::{BalloonTarget, DriveLimits, RateLimiter, TokenBucket, VmState};

/// A vireo-vmm process, killed if the test fails before the VM is stopped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Running {
    /// Starts vireo-vmm with `--api-sock sock` added and waits for the socket.
    fn start(cmd: &mut Command, sock: &Path) -> Running {
        let vm = Running(
            cmd.arg("--api-sock")
                .arg(sock)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "the API socket never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        vm
    }
}

impl Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

#[test]
fn control_api_drives_a_running_vm() {
    require_kvm();
    let sock = scratch("api.sock");
    let disk = scratch("api-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut vm = Running::start(
        Command::new(vmm_bin())
            .args(["--kernel", guest("power").to_str().unwrap()])
            .args(["--memory", "64", "--vcpus", "2", "--cmdline", "h"])
            .args(["--balloon", "target=8"])
            .arg("--drive")
            .arg(format!("path={},iops=100", disk.display())),
        &sock,
    );

    // The typed calls check the status too: 200 with a body, 204 without.
    let api = Api::new(&sock);
    assert_eq!(api.block(api.vm()).unwrap().state, VmState::Running);
    api.block(api.pause()).unwrap();
    assert_eq!(api.block(api.vm()).unwrap().state, VmState::Paused);
    api.block(api.resume()).unwrap();
    assert_eq!(api.block(api.vm()).unwrap().state, VmState::Running);

    // Balloon target: valid, too large, malformed.
    api.block(api.set_balloon(&BalloonTarget { target_mib: 16 }))
        .unwrap();
    assert_eq!(api.block(api.balloon()).unwrap().target_mib, 16);
    let too_large = api.block(api.set_balloon(&BalloonTarget { target_mib: 65 }));
    assert_eq!(too_large.unwrap_err().status(), Some(400));
    assert_eq!(api.send("PATCH", "/balloon", Some(r#""x""#)).0, 400);
    assert_eq!(api.block(api.balloon()).unwrap().target_mib, 16);

    // Drive rate limits: read, change, reject bad changes without applying them. `drive0`:
    // drive 0's limits as the VMM has them now.
    let drive0 = || {
        api.block(api.drive_limits(0))
            .unwrap()
            .rate_limiter
            .unwrap()
    };
    let limits = drive0();
    assert_eq!(limits.ops.unwrap().size, 100);
    let bucket = |size| TokenBucket {
        one_time_burst: 0,
        refill_time_ms: 1000,
        size,
    };
    let drive = |bytes, ops| DriveLimits {
        rate_limiter: Some(RateLimiter { bytes, ops }),
    };
    let new = drive(Some(bucket(1048576)), Some(bucket(500)));
    api.block(api.set_drive_limits(0, &new)).unwrap();
    let limits = drive0();
    assert_eq!(limits.ops.unwrap().size, 500);
    assert_eq!(limits.bytes.unwrap().size, 1048576);
    let zero = drive(None, Some(bucket(0)));
    let refused = api.block(api.set_drive_limits(0, &zero));
    assert_eq!(refused.unwrap_err().status(), Some(400));
    let unknown = r#"{"rx_rate_limiter": {"ops": null}}"#;
    assert_eq!(api.send("PATCH", "/drives/0", Some(unknown)).0, 400);
    let limits = drive0();
    assert_eq!(limits.ops.unwrap().size, 500);
    let unlimited = DriveLimits {
        rate_limiter: Some(RateLimiter::default()),
    };
    api.block(api.set_drive_limits(0, &unlimited)).unwrap();
    let limits = drive0();
    assert_eq!(limits.ops, None);
    assert_eq!(
        api.block(api.drive_limits(1)).unwrap_err().status(),
        Some(404)
    );
    assert_eq!(
        api.block(api.net_limits(0)).unwrap_err().status(),
        Some(404)
    );

    // Metrics, unknown resources and methods.
    let metrics = api.block(api.metrics()).unwrap();
    assert!(metrics.contains("vireo_vcpu_exits_total{vcpu=\"1\",reason=\"io_out\"}"));
    assert!(metrics.contains("vireo_balloon_target_bytes 16777216"));
    assert_eq!(api.send("GET", "/nope", None).0, 404);
    assert_eq!(api.send("DELETE", "/vm", None).0, 405);
    let mut raw = UnixStream::connect(&sock).unwrap();
    raw.write_all(b"NOT HTTP\r\n\r\n").unwrap();
    let mut resp = String::new();
    let _ = raw.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");

    api.block(api.stop()).unwrap();
    let status = vm.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "the socket is removed when the VMM exits");
}

/// Every sample of a Prometheus text exposition as ("name{labels}", value), after checking
/// each line's shape: `# HELP`/`# TYPE` comments, or `name{labels} value` with a valid name.
fn samples(text: &str) -> Vec<(String, f64)> {
    let valid = |n: &str| {
        let mut c = n.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    };
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(valid(name), "bad name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with("}"), "{line:?}");
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        out.push((series.to_string(), value));
    }
    out
}

fn value(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no {series}"))
        .1
}

#[test]
fn metrics_report_real_values_that_never_go_down() {
    require_kvm();
    let sock = scratch("metrics.sock");
    let disk = scratch("metrics-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut vm = Running::start(
        Command::new(vmm_bin())
            .args(["--kernel", guest("power").to_str().unwrap()])
            .args(["--memory", "64", "--vcpus", "2", "--cmdline", "h"])
            .arg("--drive")
            .arg(format!(
                "path={},serial=vol-1,iops=100,io_engine=io_uring",
                disk.display()
            )),
        &sock,
    );
    // The guest writes its banner (port I/O exits) and halts; give it a moment.
    std::thread::sleep(Duration::from_millis(200));
    let api = Api::new(&sock);
    let text = api.block(api.metrics()).unwrap();
    let first = samples(&text);
    assert!(
        value(&first, "vireo_vcpu_seconds_total{vcpu=\"0\"}") > 0.0,
        "{text}"
    );
    assert!(value(&first, "vireo_vcpu_steal_seconds_total{vcpu=\"1\"}") >= 0.0);
    assert!(value(&first, "vireo_vm_exits_total") > 0.0, "{text}");
    assert_eq!(value(&first, "vireo_memory_bytes"), (64u64 << 20) as f64);
    assert!(value(&first, "vireo_memory_resident_bytes") > 0.0, "{text}");
    assert!(value(&first, "vireo_memory_resident_bytes") <= (64u64 << 20) as f64);
    assert!(value(&first, "vireo_vmm_resident_bytes") > 0.0);
    // The guest never touches its drive: present, labelled, zero.
    let d = "drive=\"0\",serial=\"vol-1\"";
    for series in [
        format!("vireo_block_requests_total{{{d},op=\"read\"}}"),
        format!("vireo_block_read_bytes_total{{{d}}}"),
        format!("vireo_block_written_bytes_total{{{d}}}"),
        format!("vireo_block_errors_total{{{d}}}"),
        format!("vireo_block_request_seconds_bucket{{{d},le=\"+Inf\"}}"),
        format!("vireo_block_request_seconds_count{{{d}}}"),
        format!("vireo_block_throttled_total{{{d}}}"),
        format!("vireo_block_throttled_seconds_total{{{d}}}"),
        format!("vireo_block_batches_total{{{d}}}"),
        format!("vireo_block_batched_requests_total{{{d}}}"),
    ] {
        assert_eq!(value(&first, &series), 0.0, "{series}");
    }
    assert!(
        !text.contains("vireo_net_"),
        "no net device, no net metrics"
    );

    std::thread::sleep(Duration::from_millis(100));
    let second = samples(&api.block(api.metrics()).unwrap());
    assert_eq!(first.len(), second.len(), "the same series both times");
    for (series, v) in &first {
        let name = series.split('{').next().unwrap();
        let monotonic = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .any(|s| name.ends_with(s));
        if monotonic {
            let now = value(&second, series);
            assert!(now >= *v, "{series} went down: {v} then {now}");
        }
    }

    api.block(api.stop()).unwrap();
    assert_eq!(vm.wait().unwrap().code(), Some(0));
}

/// Sends `requests` on one connection and returns the status code of each response.
fn pipelined(sock: &Path, requests: &[(&str, &str)]) -> Vec<u16> {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    for (method, path) in requests {
        write!(s, "{method} {path} HTTP/1.1\r\nHost: vm\r\n\r\n").unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.match_indices("HTTP/1.1 ")
        .map(|(i, _)| resp[i + 9..i + 12].parse().unwrap())
        .collect()
}

#[test]
fn shutdown_presses_ctrl_alt_del_on_a_running_vm_only() {
    require_kvm();
    let sock = scratch("shutdown.sock");
    // The guest halts with interrupts off: it never reads the keyboard, so the VM keeps
    // running after the key press and only PUT /vm/stop ends it.
    let mut vm = Running::start(
        Command::new(vmm_bin())
            .args(["--kernel", guest("power").to_str().unwrap()])
            .args(["--memory", "64", "--vcpus", "2", "--cmdline", "h"]),
        &sock,
    );

    let api = Api::new(&sock);
    let (code, body) = api.send("PUT", "/vm/shutdown", None);
    assert_eq!((code, body.as_str()), (204, ""));
    std::thread::sleep(Duration::from_millis(300));
    assert!(vm.try_wait().unwrap().is_none(), "the VM still runs");
    assert_eq!(api.block(api.vm()).unwrap().state, VmState::Running);
    assert_eq!(api.send("GET", "/vm/shutdown", None).0, 405);

    // A paused guest could not act on the key press: refused, and accepted again on resume.
    api.block(api.pause()).unwrap();
    match api.block(api.shutdown()) {
        Err(vireo_vmm_api::Error::Status {
            status, message, ..
        }) => {
            assert_eq!(status, 409);
            assert!(message.contains("paused"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    api.block(api.resume()).unwrap();
    api.block(api.shutdown()).unwrap();

    // Once stopped, the VM refuses a shutdown (a request on the connection that stopped it),
    // then the process exits 0 and the socket is gone.
    assert_eq!(
        pipelined(&sock, &[("PUT", "/vm/stop"), ("PUT", "/vm/shutdown")]),
        vec![204, 409]
    );
    assert_eq!(vm.wait().unwrap().code(), Some(0));
    assert!(UnixStream::connect(&sock).is_err());
}

/// (thread name, `Seccomp:` mode, `Seccomp_filters:` count) of each thread of `pid`.
fn seccomp_of_threads(pid: u32) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = std::fs::read_to_string(task.unwrap().path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |key: &str| -> String {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {status}"))
                .trim()
                .to_string()
        };
        out.push((
            field("Name:"),
            field("Seccomp:").parse().unwrap(),
            field("Seccomp_filters:").parse().unwrap(),
        ));
    }
    out.sort();
    out
}

#[test]
fn every_thread_of_a_running_vmm_is_under_its_seccomp_filter() {
    require_kvm();
    let sock = scratch("seccomp.sock");
    let vm = Running::start(
        Command::new(vmm_bin())
            .args(["--kernel", guest("power").to_str().unwrap()])
            .args(["--memory", "64", "--vcpus", "2", "--cmdline", "h"]),
        &sock,
    );
    let api = Api::new(&sock);
    api.block(api.vm()).unwrap();
    // Each vCPU thread adds its own filter as it starts: wait for both.
    let deadline = Instant::now() + Duration::from_secs(10);
    let threads = loop {
        let t = seccomp_of_threads(vm.id());
        if t.iter()
            .filter(|(n, _, f)| n.starts_with("vcpu") && *f == 3)
            .count()
            == 2
            || Instant::now() > deadline
        {
            break t;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Mode 2 is "filter". The process's threads have the clone3 filter and the process
    // filter; vCPU threads have the vCPU filter on top.
    for (name, mode, filters) in &threads {
        assert_eq!(*mode, 2, "{name} is not filtered: {threads:?}");
        if name.starts_with("kvm-") {
            // KVM's own worker (kvm-nx-lpage-recovery), a kernel thread in the process that
            // takes the filters of the vCPU thread whose first KVM_RUN made it.
            continue;
        }
        let want = if name.starts_with("vcpu") { 3 } else { 2 };
        assert_eq!(*filters, want, "{name}: {threads:?}");
    }
    for name in ["vireo-vmm", "io", "api", "vcpu0", "vcpu1"] {
        assert!(
            threads.iter().any(|t| t.0 == name),
            "no {name}: {threads:?}"
        );
    }
    api.block(api.stop()).unwrap();

    // --seccomp off leaves the process unfiltered.
    let sock = scratch("seccomp-off.sock");
    let vm = Running::start(
        Command::new(vmm_bin())
            .args(["--kernel", guest("power").to_str().unwrap()])
            .args(["--memory", "64", "--cmdline", "h", "--seccomp", "off"]),
        &sock,
    );
    let threads = seccomp_of_threads(vm.id());
    assert!(threads.iter().all(|t| t.1 == 0), "{threads:?}");
    let api = Api::new(&sock);
    api.block(api.stop()).unwrap();
}
