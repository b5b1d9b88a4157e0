//! virtio-blk under the stock Debian guest, in the lab: the guest's root file system on a
//! virtio-blk ext4 image (build/guest/rootfs.ext4 with `vireo.root=/dev/vda`), writes that a
//! guest `sync` makes durable in the host file, the root on a qcow2 copy-on-write overlay of
//! that image, read-only drives, and an IOPS limit.
//!
//! The guest scripts are written into a copy of the root image with the host's debugfs
//! (e2fsprogs, which the lab needs anyway) and run through `vireo.run=`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use vireo_tests::{repo_root, run_in_lab, scratch, Ran};

static LAB: Mutex<()> = Mutex::new(());

const BOOT: &str = "--kernel /vireo/guest/vmlinux --initrd /vireo/guest/initrd.cpio.gz \
                    --memory 256 --drive path=/tmp/root.ext4,serial=vireo-root";
const CMDLINE: &str = "console=ttyS0 panic=-1 quiet vireo.root=/dev/vda";

/// Writes 1024 lines of 64 bytes (so none straddles a file-system block) to /data.txt and
/// syncs; the init then powers off with `poweroff -f`, which does not sync.
/// The marker is split in the script so that only the file's data holds it whole.
const WRITE_SCRIPT: &str = r#"
grep ' / ' /proc/mounts | sed 's/^/ROOT-MOUNT /'
echo "ROOT-SERIAL $(cat /sys/block/vda/serial)"
p=VIREO-BLK
i=0
while [ $i -lt 1024 ]; do
    printf '%s-PATTERN-%08d-abcdefghijklmnopqrstuvwxyz0123456789\n' $p $i
    i=$((i + 1))
done >/data.txt
sync
echo "WRITTEN $(md5sum </data.txt)"
"#;

const READ_SCRIPT: &str = r#"
echo "READ $(md5sum </data.txt)"
"#;

const RO_SCRIPT: &str = r#"
echo "RO-FLAG $(cat /sys/block/vdb/ro)"
echo "RO-SERIAL $(cat /sys/block/vdb/serial)"
if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct 2>/dev/null; then
    echo "RO-WRITE accepted"
else
    echo "RO-WRITE refused"
fi
echo "RO-READ $(dd if=/dev/vdb bs=10 count=1 2>/dev/null)"
"#;

/// 60 direct 4 KiB reads drain the limiter's initial bucket, then 200 more are timed by the
/// lab (not the guest, whose clock drifts in the lab) between the two marker lines.
const IOPS_SCRIPT: &str = r#"
dd if=/dev/vdb of=/dev/null bs=4096 count=60 iflag=direct 2>/dev/null
echo IOPS-START
dd if=/dev/vdb of=/dev/null bs=4096 count=200 skip=60 iflag=direct 2>/dev/null || echo "IOPS-FAILED"
echo IOPS-END
"#;

fn debugfs() -> PathBuf {
    ["/usr/sbin/debugfs", "/sbin/debugfs"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("this test needs debugfs (apt-get install e2fsprogs)")
}

/// A copy of the guest's root image with the test scripts in /etc/vireo.
fn root_image(name: &str) -> PathBuf {
    let built = Command::new(repo_root().join("images/build-guest.sh"))
        .output()
        .expect("cannot run images/build-guest.sh");
    assert!(
        built.status.success(),
        "images/build-guest.sh failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let image = scratch(&format!("{name}.ext4"));
    std::fs::copy(repo_root().join("build/guest/rootfs.ext4"), &image).unwrap();
    let mut cmds = String::from("cd /etc/vireo\n");
    for (script, body) in [
        ("blkwrite", WRITE_SCRIPT),
        ("blkread", READ_SCRIPT),
        ("blkro", RO_SCRIPT),
        ("blkiops", IOPS_SCRIPT),
    ] {
        let host = scratch(&format!("{script}.sh"));
        std::fs::write(&host, body).unwrap();
        cmds += &format!("write {} {script}.sh\n", host.display());
    }
    let cmdfile = scratch("debugfs.cmds");
    std::fs::write(&cmdfile, cmds).unwrap();
    let out = Command::new(debugfs())
        .arg("-w")
        .arg("-f")
        .arg(&cmdfile)
        .arg(&image)
        .output()
        .expect("cannot run debugfs");
    assert!(out.status.success(), "debugfs failed: {out:?}");
    image
}

fn put(image: &std::path::Path) -> String {
    format!("{}:/tmp/root.ext4", image.display())
}

/// The value after `KEY ` on the line starting with it.
fn line<'a>(r: &'a Ran, key: &str) -> Option<&'a str> {
    r.stdout.lines().find_map(|l| {
        l.trim_end_matches('\r')
            .strip_prefix(key)
            .and_then(|v| v.strip_prefix(' '))
    })
}

fn exits(r: &Ran) -> Vec<i32> {
    r.stdout
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("VMM-EXIT="))
        .map(|v| v.parse().unwrap())
        .collect()
}

#[test]
fn root_on_virtio_blk_and_synced_writes_reach_the_image() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let image = root_image("write");
    let script = format!(
        "vireo-vmm {BOOT} --cmdline '{CMDLINE} vireo.run=blkwrite'; echo VMM-EXIT=$?; \
         echo \"HOST-LINES $(grep -c VIREO-BLK-PATTERN- /tmp/root.ext4)\"; \
         vireo-vmm {BOOT} --cmdline '{CMDLINE} vireo.run=blkread'; echo VMM-EXIT=$?"
    );
    let r = run_in_lab(&script, &["--put", &put(&image)]);
    assert_eq!(exits(&r), vec![0, 0], "both VMs powered off: {r:?}");
    assert_eq!(
        r.stdout.matches("VIREO-READY ").count(),
        2,
        "the init ran from the disk and printed its ready line: {r:?}"
    );
    let mount = line(&r, "ROOT-MOUNT").unwrap_or_else(|| panic!("{r:?}"));
    assert!(
        mount.starts_with("/dev/vda / ext4 rw"),
        "root is the virtio-blk disk: {mount}"
    );
    assert_eq!(line(&r, "ROOT-SERIAL"), Some("vireo-root"), "{r:?}");
    // The host file holds every line the guest wrote and synced.
    assert_eq!(line(&r, "HOST-LINES"), Some("1024"), "{r:?}");
    // A second boot reads back the same bytes.
    let written = line(&r, "WRITTEN").unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(line(&r, "READ"), Some(written), "{r:?}");
}

/// The lines WRITE_SCRIPT writes to /data.txt.
fn written_lines() -> String {
    (0..1024)
        .map(|i| format!("VIREO-BLK-PATTERN-{i:08}-abcdefghijklmnopqrstuvwxyz0123456789\n"))
        .collect()
}

/// The text between the lines `BEGIN` and `END` of the output, without line breaks.
fn block_between(r: &Ran, begin: &str, end: &str) -> Option<String> {
    let mut lines = r.stdout.lines().map(|l| l.trim_end_matches('\r'));
    lines.find(|l| *l == begin)?;
    let mut out = String::new();
    for l in lines {
        if l == end {
            return Some(out);
        }
        out.push_str(l);
    }
    None
}

/// The root on a qcow2 overlay of the root image, as vireod will give instances: the guest
/// boots, writes and syncs a file, powers off, and boots again to read it back. The base image
/// is unchanged (checksummed in the lab before and after), and the overlay, brought back to the
/// host, passes `qemu-img check` and flattens (vireo_storage::flatten) to an ext4 image that
/// holds the file (read with debugfs, no mount).
#[test]
fn root_on_a_qcow2_overlay_leaves_the_base_unchanged() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let base = root_image("qcow2-base");
    // The overlay names its base by absolute path: the lab gets the base at the same path.
    let overlay = scratch("qcow2-root.qcow2");
    let _ = std::fs::remove_file(&overlay);
    vireo_storage::create_overlay(&base, &overlay).unwrap();
    let (b, o) = (base.display(), overlay.display());
    let boot = format!(
        "--kernel /vireo/guest/vmlinux --initrd /vireo/guest/initrd.cpio.gz --memory 256 \
         --drive path={o},format=qcow2,serial=vireo-root"
    );
    let script = format!(
        "echo \"BASE-BEFORE $(md5sum <{b})\"; \
         vireo-vmm {boot} --cmdline '{CMDLINE} vireo.run=blkwrite'; echo VMM-EXIT=$?; \
         vireo-vmm {boot} --cmdline '{CMDLINE} vireo.run=blkread'; echo VMM-EXIT=$?; \
         echo \"BASE-AFTER $(md5sum <{b})\"; \
         echo OVERLAY-BEGIN; gzip -c {o} | base64; echo OVERLAY-END"
    );
    let r = run_in_lab(
        &script,
        &["--put", &format!("{b}:{b}"), "--put", &format!("{o}:{o}")],
    );
    assert_eq!(exits(&r), vec![0, 0], "both VMs powered off: {r:?}");
    let mount = line(&r, "ROOT-MOUNT").unwrap_or_else(|| panic!("{r:?}"));
    assert!(mount.starts_with("/dev/vda / ext4 rw"), "{mount}");
    let written = line(&r, "WRITTEN").unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(
        line(&r, "READ"),
        Some(written),
        "the second boot reads it back"
    );
    let before = line(&r, "BASE-BEFORE").unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(
        line(&r, "BASE-AFTER"),
        Some(before),
        "the base is unchanged"
    );

    // The overlay the guest wrote, back on the host beside its base.
    let encoded = block_between(&r, "OVERLAY-BEGIN", "OVERLAY-END")
        .unwrap_or_else(|| panic!("no overlay in the output: {}", r.stderr));
    let b64 = scratch("qcow2-root.qcow2.gz.b64");
    std::fs::write(&b64, encoded).unwrap();
    let _ = std::fs::remove_file(&overlay);
    let unpacked = Command::new("sh")
        .arg("-c")
        .arg(format!("base64 -d <'{}' | gzip -dc >'{o}'", b64.display()))
        .status()
        .unwrap();
    assert!(unpacked.success());
    let check = Command::new("qemu-img")
        .arg("check")
        .arg(&overlay)
        .output()
        .expect("this test needs qemu-img (apt-get install qemu-utils)");
    assert!(check.status.success(), "qemu-img check: {check:?}");

    let flat = scratch("qcow2-root-flat.ext4");
    let _ = std::fs::remove_file(&flat);
    vireo_storage::flatten_format(&overlay, vireo_storage::Format::Qcow2, &flat).unwrap();
    let cat = Command::new(debugfs())
        .arg("-R")
        .arg("cat /data.txt")
        .arg(&flat)
        .output()
        .expect("cannot run debugfs");
    assert!(cat.status.success(), "{cat:?}");
    assert!(
        String::from_utf8_lossy(&cat.stdout) == written_lines(),
        "the flattened image holds the file the guest wrote"
    );
    let in_base = Command::new(debugfs())
        .arg("-R")
        .arg("stat /data.txt")
        .arg(&base)
        .output()
        .expect("cannot run debugfs");
    assert!(
        !String::from_utf8_lossy(&in_base.stdout).contains("Inode:"),
        "the base image has no /data.txt"
    );
}

#[test]
fn read_only_drive_refuses_writes_and_the_file_stays_the_same() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let image = root_image("ro");
    let script = format!(
        "dd if=/dev/zero of=/tmp/data.img bs=1M count=4 2>/dev/null; \
         printf RO-CONTENT | dd of=/tmp/data.img conv=notrunc 2>/dev/null; \
         echo \"BEFORE $(md5sum </tmp/data.img)\"; \
         vireo-vmm {BOOT} --drive path=/tmp/data.img,ro,serial=ro-disk \
           --cmdline '{CMDLINE} vireo.run=blkro'; echo VMM-EXIT=$?; \
         echo \"AFTER $(md5sum </tmp/data.img)\""
    );
    let r = run_in_lab(&script, &["--put", &put(&image)]);
    assert_eq!(exits(&r), vec![0], "{r:?}");
    assert_eq!(line(&r, "RO-FLAG"), Some("1"), "the guest sees F_RO: {r:?}");
    assert_eq!(line(&r, "RO-SERIAL"), Some("ro-disk"), "{r:?}");
    assert_eq!(line(&r, "RO-WRITE"), Some("refused"), "{r:?}");
    assert_eq!(line(&r, "RO-READ"), Some("RO-CONTENT"), "reads work: {r:?}");
    let before = line(&r, "BEFORE").unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(
        line(&r, "AFTER"),
        Some(before),
        "the file is unchanged: {r:?}"
    );
}

/// Seconds between the IOPS-START and IOPS-END lines of each VM, stamped by the lab.
fn timed_runs(r: &Ran) -> Vec<f64> {
    let mut out = Vec::new();
    let mut start = None;
    for l in r.stdout.lines() {
        let Some((t, rest)) = l.split_once(' ') else {
            continue;
        };
        let Ok(t) = t.parse::<f64>() else { continue };
        match rest.trim_end() {
            "IOPS-START" => start = Some(t),
            "IOPS-END" => out.push(t - start.take().expect("IOPS-END before IOPS-START")),
            _ => {}
        }
    }
    out
}

#[test]
fn iops_limit_holds_the_configured_rate() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let image = root_image("iops");
    const LIMIT: f64 = 50.0;
    // The same reads with the limit and without; every console line gets the lab's clock.
    let script = format!(
        "dd if=/dev/zero of=/tmp/data.img bs=1M count=4 2>/dev/null; \
         for spec in ,iops={LIMIT} ''; do \
           vireo-vmm {BOOT} --drive path=/tmp/data.img$spec \
             --cmdline '{CMDLINE} vireo.run=blkiops' | \
             while IFS= read -r l; do echo \"$EPOCHREALTIME $l\"; done; \
         done"
    );
    let r = run_in_lab(&script, &["--put", &put(&image)]);
    assert!(!r.stdout.contains("IOPS-FAILED"), "{r:?}");
    let runs = timed_runs(&r);
    assert_eq!(runs.len(), 2, "two VMs timed their reads: {r:?}");
    let (limited, free) = (200.0 / runs[0], 200.0 / runs[1]);
    eprintln!("200 direct 4 KiB reads: {limited:.1} IOPS with iops={LIMIT}, {free:.1} without");
    assert!(
        free > 2.0 * LIMIT,
        "without a limit the guest reads much faster than the limit ({free:.1} IOPS), \
         so the limit is what is measured"
    );
    assert!(
        (limited - LIMIT).abs() <= 0.1 * LIMIT,
        "the limited drive did {limited:.1} IOPS, not {LIMIT} within 10%: {r:?}"
    );
}
