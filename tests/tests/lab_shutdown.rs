//! Graceful shutdown of the stock Debian guest, in the lab: `PUT /vm/shutdown` presses
//! Ctrl-Alt-Del on the i8042's keyboard, Linux's atkbd driver turns it into a SIGINT for PID 1
//! (the init sets /proc/sys/kernel/ctrl-alt-del to 0), and the init stops what runs, unmounts or
//! remounts read-only, and powers off; the VMM exits 0.
//!
//! Four VMs in one lab boot:
//! - `wait`: the init idles (`vireo.exit=wait`) when the request comes;
//! - `busy`: the init runs a user script (`vireo.run=busy`) that catches SIGTERM;
//! - `disk`: the root is an ext4 virtio-blk disk (`vireo.root=/dev/vda`); after the shutdown
//!   the superblock does not ask for journal recovery (the file system was unmounted or
//!   remounted read-only);
//! - `dirty`: the same disk with the plain `poweroff -f` ending, which leaves the journal
//!   needing recovery: the control that shows the check above can fail.
//!
//! The lab has no curl: tests/programs/api_request.c, built static, is the API client.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use vireo_tests::{repo_root, run_in_lab, scratch, Ran};

static LAB: Mutex<()> = Mutex::new(());

const BUSY_SCRIPT: &str = r#"#!/bin/sh
trap 'echo BUSY-TERMINATED; exit 0' TERM
echo BUSY-RUNNING
while :; do sleep 1; done
"#;

const HOST: &str = r#"
mkdir -p /tmp/extra/etc/vireo
cp /vireo/busy.sh /tmp/extra/etc/vireo/busy.sh
chmod 0755 /tmp/extra/etc/vireo/busy.sh
(cd /tmp/extra && find . | cpio -o -H newc 2>/dev/null | gzip) >/tmp/extra.gz
cat /vireo/guest/initrd.cpio.gz /tmp/extra.gz >/tmp/initrd.gz
cp /tmp/root.ext4 /tmp/root2.ext4

# boot NAME CMDLINE [VMM ARGS...]: starts a VM in the background as $VMM.
boot() {
    name=$1 cmdline=$2
    shift 2
    rm -f /tmp/api.sock
    timeout 90 vireo-vmm --kernel /vireo/guest/vmlinux --initrd /tmp/initrd.gz --memory 256 \
        --api-sock /tmp/api.sock "$@" --cmdline "console=ttyS0 panic=-1 quiet $cmdline" \
        >"/tmp/$name.console" 2>&1 &
    VMM=$!
}
# shutdown_on NAME PATTERN: once the console shows PATTERN, asks for a shutdown and reports.
shutdown_on() {
    i=0
    while ! grep -q "$2" "/tmp/$1.console" && kill -0 $VMM 2>/dev/null && [ $i -lt 1200 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    t0=$(date +%s%N)
    /vireo/api-request /tmp/api.sock PUT /vm/shutdown | head -1 | sed "s/^/$1-API=/"
    wait $VMM
    echo "$1-EXIT=$?"
    echo "$1-MS=$((($(date +%s%N) - t0) / 1000000))"
    sed "s/^/$1-CONSOLE /" "/tmp/$1.console"
}
# ext4 superblock s_feature_incompat (offset 1024 + 0x60): bit 2 (RECOVER) is set while the
# file system is mounted read-write and cleared when it is unmounted or remounted read-only.
fs_state() {
    echo "$1-FS-INCOMPAT=$(od -An -tu4 -j1120 -N4 "$2" | tr -d ' ')"
}

boot wait "vireo.exit=wait"
shutdown_on wait VIREO-READY
boot busy "vireo.run=busy vireo.exit=wait"
shutdown_on busy BUSY-RUNNING
boot disk "vireo.root=/dev/vda vireo.exit=wait" --drive path=/tmp/root.ext4
shutdown_on disk VIREO-READY
fs_state disk /tmp/root.ext4
timeout 90 vireo-vmm --kernel /vireo/guest/vmlinux --initrd /tmp/initrd.gz --memory 256 \
    --drive path=/tmp/root2.ext4 --cmdline "console=ttyS0 panic=-1 quiet vireo.root=/dev/vda" \
    >/tmp/dirty.console 2>&1
echo "dirty-EXIT=$?"
fs_state dirty /tmp/root2.ext4
"#;

/// Where images/build-guest.sh puts the guest ($VIREO_BUILD/guest, as the lab takes it).
fn guest_dir() -> PathBuf {
    std::env::var_os("VIREO_BUILD")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build"))
        .join("guest")
}

/// Builds tests/programs/api_request.c static into target/api-request/.
fn build_client() -> PathBuf {
    let root = repo_root();
    let out = root.join("target/api-request");
    std::fs::create_dir_all(&out).unwrap();
    let bin = out.join("api-request");
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(root.join("tests/programs/api_request.c"))
        .status()
        .unwrap_or_else(|e| panic!("this test needs gcc to build its API client: {e}"));
    assert!(
        status.success(),
        "gcc -static failed on tests/programs/api_request.c (static glibc: libc6-dev)"
    );
    bin
}

fn value<'a>(r: &'a Ran, key: &str) -> &'a str {
    r.stdout
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line: {r:?}"))
}

fn console(r: &Ran, vm: &str) -> Vec<String> {
    let prefix = format!("{vm}-CONSOLE ");
    r.stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

#[test]
fn put_vm_shutdown_powers_the_guest_off_through_its_init() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let client = build_client();
    let built = Command::new(repo_root().join("images/build-guest.sh"))
        .arg(guest_dir())
        .output()
        .expect("cannot run images/build-guest.sh");
    assert!(
        built.status.success(),
        "images/build-guest.sh failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let (busy, host) = (scratch("busy.sh"), scratch("shutdown-host.sh"));
    std::fs::write(&busy, BUSY_SCRIPT).unwrap();
    std::fs::write(&host, HOST).unwrap();
    let puts = [
        format!("{}:/vireo/api-request", client.display()),
        format!("{}:/vireo/busy.sh", busy.display()),
        format!("{}:/vireo/host.sh", host.display()),
        format!(
            "{}:/tmp/root.ext4",
            guest_dir().join("rootfs.ext4").display()
        ),
    ];
    let mut extra = Vec::new();
    for p in &puts {
        extra.extend(["--put", p.as_str()]);
    }
    let r = run_in_lab("sh /vireo/host.sh", &extra);
    assert_eq!(r.status, Some(0), "{r:?}");

    for vm in ["wait", "busy", "disk"] {
        assert_eq!(value(&r, &format!("{vm}-API=")), "204", "{vm}: {r:?}");
        assert_eq!(
            value(&r, &format!("{vm}-EXIT=")),
            "0",
            "{vm}: the VMM exits 0: {r:?}"
        );
        let console = console(&r, vm);
        // The guest's own init powered off, after the request: its line, then the kernel's.
        let init = console
            .iter()
            .position(|l| l == "vireo-init: ctrl-alt-del, powering off")
            .unwrap_or_else(|| panic!("{vm}: the init saw ctrl-alt-del: {console:#?}"));
        assert!(
            console[init..]
                .iter()
                .any(|l| l.contains("reboot: Power down")),
            "{vm}: the kernel powered off after the init's line: {console:#?}"
        );
        assert!(
            !console.iter().any(|l| l.contains("VIREO-ERROR")),
            "{vm}: {console:#?}"
        );
    }
    // The user script was running and was asked to stop before the power-off.
    let busy = console(&r, "busy");
    let running = busy.iter().position(|l| l == "BUSY-RUNNING");
    let terminated = busy.iter().position(|l| l == "BUSY-TERMINATED");
    assert!(
        matches!((running, terminated), (Some(a), Some(b)) if a < b),
        "{busy:#?}"
    );
    // The root disk was remounted read-only (its journal is clean); a plain `poweroff -f`
    // leaves the journal needing recovery.
    assert_eq!(value(&r, "dirty-EXIT="), "0", "{r:?}");
    const RECOVER: u32 = 1 << 2;
    let incompat = |vm: &str| -> u32 { value(&r, &format!("{vm}-FS-INCOMPAT=")).parse().unwrap() };
    assert_eq!(
        incompat("disk") & RECOVER,
        0,
        "disk: clean after the shutdown: {r:?}"
    );
    assert_ne!(incompat("dirty") & RECOVER, 0, "dirty: the control: {r:?}");
    eprintln!(
        "shutdown took {} / {} / {} ms (wait / busy / disk)",
        value(&r, "wait-MS="),
        value(&r, "busy-MS="),
        value(&r, "disk-MS=")
    );
}
