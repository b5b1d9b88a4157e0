//! Bad input gets one clear line on stderr and a non-zero exit, before any VM runs.

use vireo_tests::{guest, run_vmm, scratch};

fn assert_one_line_error(r: &vireo_tests::Ran, needle: &str) {
    assert_eq!(r.status, Some(1), "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {r:?}");
    assert!(lines[0].starts_with("vireo-vmm: error: "), "{r:?}");
    assert!(
        lines[0].contains(needle),
        "want {needle:?} in {:?}",
        lines[0]
    );
}

#[test]
fn missing_kernel_file() {
    let r = run_vmm(&["--kernel", "/nonexistent/vmlinux"], 10);
    assert_one_line_error(&r, "no such file");
}

#[test]
fn a_file_that_is_not_a_kernel() {
    let p = scratch("not-a-kernel.txt");
    std::fs::write(&p, "just some text, no kernel here\n").unwrap();
    let r = run_vmm(&["--kernel", p.to_str().unwrap()], 10);
    assert_one_line_error(&r, "is not a kernel");
    let r = run_vmm(&["--kernel", "/tmp"], 10);
    assert_one_line_error(&r, "not a regular file");
}

#[test]
fn unreadable_kernel_file() {
    // Root reads any file regardless of its mode, so use a path that is not a file at all.
    let r = run_vmm(&["--kernel", "/proc/self/fd/999"], 10);
    assert_eq!(r.status, Some(1), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
}

#[test]
fn missing_initrd() {
    let g = guest("pio");
    let r = run_vmm(
        &[
            "--kernel",
            g.to_str().unwrap(),
            "--initrd",
            "/nonexistent/initrd",
        ],
        10,
    );
    assert_one_line_error(&r, "cannot open initrd");
}

/// Drives are opened before the VM is built: a missing file, a file that is not the qcow2
/// image it is said to be, a qcow2 image whose backing chain loops and direct I/O asked of a
/// qcow2 image are one line each.
#[test]
fn bad_drives() {
    let g = guest("pio");
    let kernel = g.to_str().unwrap();
    let r = run_vmm(
        &["--kernel", kernel, "--drive", "path=/nonexistent/d.img"],
        10,
    );
    assert_one_line_error(&r, "drive: cannot open /nonexistent/d.img: no such file");
    let raw = scratch("bad-drive.raw");
    std::fs::write(&raw, [0u8; 4096]).unwrap();
    let arg = format!("path={},format=qcow2", raw.display());
    let r = run_vmm(&["--kernel", kernel, "--drive", &arg], 10);
    assert_one_line_error(&r, "is not a usable image: Not a qcow2 file");
    let r = run_vmm(&["--kernel", kernel, "--drive", "path=/x,format=qed"], 10);
    assert_one_line_error(
        &r,
        "invalid --drive format \"qed\": use format=raw or format=qcow2",
    );
    // An image whose header names itself (relative to its directory) as its backing file, made
    // with qemu-img's -u, which does not open the backing file.
    let looped = scratch("bad-drive-loop.qcow2");
    let _ = std::fs::remove_file(&looped);
    let name = looped.file_name().unwrap().to_str().unwrap();
    qemu_img_create(&["-u", "-F", "qcow2", "-b", name, looped.to_str().unwrap()]);
    let arg = format!("path={}", looped.display());
    let r = run_vmm(&["--kernel", kernel, "--drive", &arg], 10);
    assert_one_line_error(&r, "backing chain comes back to");
    // Direct I/O is for raw images.
    let qcow2 = scratch("bad-drive-direct.qcow2");
    let _ = std::fs::remove_file(&qcow2);
    qemu_img_create(&[qcow2.to_str().unwrap()]);
    let arg = format!("path={},format=qcow2,direct", qcow2.display());
    let r = run_vmm(&["--kernel", kernel, "--drive", &arg], 10);
    assert_one_line_error(&r, "direct I/O is for raw images, and this one is qcow2");
}

/// `qemu-img create -q -f qcow2 ARGS... 1M`.
fn qemu_img_create(args: &[&str]) {
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .args(args)
        .arg("1M")
        .output()
        .expect("this test needs qemu-img (apt-get install qemu-utils)");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn more_memory_than_the_host_has() {
    let g = guest("pio");
    let r = run_vmm(
        &["--kernel", g.to_str().unwrap(), "--memory", "100000G"],
        10,
    );
    assert_one_line_error(&r, "this host has only");
    let r = run_vmm(&["--kernel", g.to_str().unwrap(), "--memory", "lots"], 10);
    assert_one_line_error(&r, "invalid memory size");
    let r = run_vmm(&["--kernel", g.to_str().unwrap(), "--memory", "1"], 10);
    assert_one_line_error(&r, "at least");
}

#[test]
fn more_vcpus_than_kvm_allows() {
    let g = guest("pio");
    let r = run_vmm(&["--kernel", g.to_str().unwrap(), "--vcpus", "0"], 10);
    assert_one_line_error(&r, "at least 1");
    let r = run_vmm(&["--kernel", g.to_str().unwrap(), "--vcpus", "255"], 10);
    assert_one_line_error(&r, "vCPUs asked for");
}

#[test]
fn bad_config_file() {
    let p = scratch("bad.json");
    std::fs::write(&p, r#"{"kernel": "/k", "vcpu": 2}"#).unwrap();
    let r = run_vmm(&["--config", p.to_str().unwrap()], 10);
    assert_one_line_error(&r, "unknown field");
    let r = run_vmm(&["--serial", "tty"], 10);
    assert_one_line_error(&r, "no kernel");
    let g = guest("pio");
    let r = run_vmm(&["--kernel", g.to_str().unwrap(), "--serial", "tty"], 10);
    assert_one_line_error(&r, "invalid --serial");
}

/// `--smbios` values the tables cannot carry are refused before anything is built; the
/// JSON configuration's `smbios` object is checked the same way.
#[test]
fn bad_smbios_identities() {
    let g = guest("pio");
    let kernel = g.to_str().unwrap();
    let long = format!("serial={}", "s".repeat(65));
    for (flag, needle) in [
        (
            "uuid=ec2-0000",
            "invalid --smbios uuid: \"ec2-0000\" is not a UUID",
        ),
        ("uuid=ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7eg", "is not a UUID"),
        (
            long.as_str(),
            "invalid --smbios serial: 65 bytes long; at most 64",
        ),
        (
            "asset-tag=i-1\u{1}",
            "holds a NUL or another control character",
        ),
        ("owner=me", "invalid --smbios \"owner=me\": use uuid=UUID"),
        ("product=a,product=b", "product given twice"),
    ] {
        let r = run_vmm(&["--kernel", kernel, "--smbios", flag], 10);
        assert_one_line_error(&r, needle);
    }
    let p = scratch("bad-smbios.json");
    let cfg = format!(r#"{{"kernel": "{kernel}", "smbios": {{"uuid": "ec2"}}}}"#);
    std::fs::write(&p, cfg).unwrap();
    let r = run_vmm(&["--config", p.to_str().unwrap()], 10);
    assert_one_line_error(&r, "is not a UUID");
}

#[test]
fn command_line_too_long() {
    let g = guest("pio");
    let long = "x".repeat(5000);
    let r = run_vmm(&["--kernel", g.to_str().unwrap(), "--cmdline", &long], 10);
    assert_one_line_error(&r, "command line");
}

/// Runs vireo-vmm through a wrapper command (a mount namespace, another user), stdin closed.
fn run_wrapped(wrapper: &[&str], vmm_args: &[&str]) -> vireo_tests::Ran {
    vireo_tests::require_kvm();
    std::process::Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(vireo_tests::vmm_bin())
        .args(vmm_args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cannot run the wrapper")
        .into()
}

/// A copy of a test guest that any user can read.
fn world_readable_guest() -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = std::env::temp_dir().join(format!("vireo-pio-{}.elf", std::process::id()));
    std::fs::copy(guest("pio"), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

#[test]
fn no_dev_kvm() {
    // An empty /dev in a private mount namespace: the host's /dev is untouched.
    let g = world_readable_guest();
    let r = run_wrapped(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /dev && exec \"$0\" \"$@\"",
        ],
        &["--kernel", g.to_str().unwrap()],
    );
    assert_one_line_error(&r, "/dev/kvm does not exist");
}

#[test]
fn no_permission_on_dev_kvm() {
    // A private /dev whose kvm node is root's with mode 0600 (whatever the host's is), and the
    // unprivileged "nobody" user.
    let g = world_readable_guest();
    let r = run_wrapped(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /dev && mknod -m 600 /dev/kvm c 10 232 && \
             exec setpriv --reuid 65534 --regid 65534 --clear-groups \"$0\" \"$@\"",
        ],
        &["--kernel", g.to_str().unwrap()],
    );
    assert_one_line_error(&r, "no permission to open /dev/kvm");
}
