//! virtio-blk under the stock Debian guest, in the lab: the guest's root file system on a
//! virtio-blk ext4 image (build/guest/rootfs.ext4 with `vireo.root=/dev/vda`), writes that a
//! guest `sync` makes durable in the host file, the root on a qcow2 copy-on-write overlay of
//! that image, read-only drives, an IOPS limit, a root drive with a poll queue that the VMM
//! polls (`queues=2,poll_us=N`), and a data drive with `io_engine=io_uring`.
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

/// What the guest made of a two-queue drive (which queue is the poll queue), the writes of
/// WRITE_SCRIPT, then 2000 direct 4 KiB reads one after the other (each submitted once the
/// last completed: without polling, each would notify the device).
const MQ_SCRIPT: &str = r#"
echo "MQ-QUEUES $(dmesg | grep -o '[0-9]*/[0-9]*/[0-9]* default/read/poll queues' | head -n1)"
echo "MQ-HCTX $(ls /sys/block/vda/mq | tr '\n' ' ')"
echo "MQ-IOPOLL $(cat /sys/block/vda/queue/io_poll)"
. /etc/vireo/blkwrite.sh
dd if=/dev/vda of=/dev/null bs=4096 count=2000 iflag=direct 2>/dev/null && echo "MQ-READS done"
echo MQ-DONE
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

/// The 16 MiB data drive read direct, 4 MiB at a time (the guest splits each into several
/// requests of at most 1280 KiB and queues them together), and 4 KiB at a time.
const URING_SCRIPT: &str = r#"
echo "URING-BIG $(dd if=/dev/vdb bs=4M count=4 iflag=direct 2>/dev/null | md5sum)"
echo "URING-SMALL $(dd if=/dev/vdb bs=4096 count=4096 iflag=direct 2>/dev/null | md5sum)"
echo URING-DONE
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
        ("blkmq", MQ_SCRIPT),
        ("blkuring", URING_SCRIPT),
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

/// The first boot's root drive has io_engine=io_uring (the guest's reads and writes go to
/// the image in batches), the second the default, one request after the other.
#[test]
fn root_on_virtio_blk_and_synced_writes_reach_the_image() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let image = root_image("write");
    let script = format!(
        "vireo-vmm {BOOT},io_engine=io_uring --cmdline '{CMDLINE} vireo.run=blkwrite'; echo VMM-EXIT=$?; \
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

/// The sum of a metric's samples for drive `n` in a `GET /metrics` text.
fn drive_total(r: &Ran, metric: &str, n: usize) -> Option<u64> {
    let prefix = format!("{metric}{{drive=\"{n}\"");
    let values: Vec<u64> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The root on a drive with two queues that the I/O thread polls: Linux makes the second a
/// poll queue (virtio_blk.poll_queues=1; possible_cpus=2 since it allows one queue per
/// possible CPU), the guest boots from the drive and writes, and its synced writes reach the
/// image. While busy the guest hardly notifies the drive: the device found the requests by
/// polling (metrics read before the guest powers off; without polling the guest's one-by-one
/// reads would notify it about once each).
#[test]
fn a_polled_root_drive_with_a_poll_queue_serves_the_guest() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let image = root_image("mq");
    let script = format!(
        "vireo-vmm --kernel /vireo/guest/vmlinux --initrd /vireo/guest/initrd.cpio.gz \
           --memory 256 --drive path=/tmp/root.ext4,serial=vireo-root,queues=2,poll_us=10000 \
           --api-sock /tmp/mq.sock --serial file:/tmp/mq.log \
           --cmdline '{CMDLINE} virtio_blk.poll_queues=1 possible_cpus=2 vireo.run=blkmq vireo.exit=wait' & \
         v=$!; n=0; \
         until grep -q MQ-DONE /tmp/mq.log 2>/dev/null || [ $n -gt 1800 ]; do sleep 0.1; n=$((n + 1)); done; \
         cat /tmp/mq.log; \
         vireo-api /tmp/mq.sock GET /metrics | grep -E '^vireo_block_(requests|notifications)_total'; \
         vireo-api /tmp/mq.sock PUT /vm/shutdown >/dev/null; wait $v; echo VMM-EXIT=$?; \
         echo \"HOST-LINES $(grep -c VIREO-BLK-PATTERN- /tmp/root.ext4)\""
    );
    let r = run_in_lab(&script, &["--put", &put(&image)]);
    assert_eq!(exits(&r), vec![0], "the VM powered off: {r:?}");
    assert_eq!(
        line(&r, "MQ-QUEUES"),
        Some("1/0/1 default/read/poll queues"),
        "{r:?}"
    );
    assert_eq!(line(&r, "MQ-HCTX").map(str::trim), Some("0 1"), "{r:?}");
    assert_eq!(line(&r, "MQ-IOPOLL"), Some("1"), "{r:?}");
    let mount = line(&r, "ROOT-MOUNT").unwrap_or_else(|| panic!("{r:?}"));
    assert!(mount.starts_with("/dev/vda / ext4 rw"), "{mount}");
    assert!(line(&r, "WRITTEN").is_some(), "{r:?}");
    assert_eq!(line(&r, "HOST-LINES"), Some("1024"), "{r:?}");
    assert_eq!(line(&r, "MQ-READS"), Some("done"), "{r:?}");
    let requests = drive_total(&r, "vireo_block_requests_total", 0).expect("request counts");
    let notified = drive_total(&r, "vireo_block_notifications_total", 0).expect("notifications");
    eprintln!("polled root drive: {requests} requests, {notified} notifications");
    assert!(
        requests > 2000,
        "the guest's reads went to the drive: {r:?}"
    );
    assert!(
        notified * 10 < requests,
        "polling found most requests without a notification ({notified} for {requests})"
    );
}

/// io_engine=io_uring under the Debian guest, on a data drive of random bytes: the guest's
/// large direct reads reach the drive as several requests queued together, which the device
/// hands to the file as io_uring batches (vireo_block_batches_total), and every byte read
/// matches the file.
#[test]
fn io_engine_io_uring_batches_the_guests_requests_and_reads_the_image_exactly() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let image = root_image("uring");
    let script = format!(
        "head -c 16777216 /dev/urandom >/tmp/data.img; echo \"HOST-MD5 $(md5sum </tmp/data.img)\"; \
         vireo-vmm {BOOT} --drive path=/tmp/data.img,format=raw,serial=data,io_engine=io_uring \
           --api-sock /tmp/u.sock --serial file:/tmp/u.log \
           --cmdline '{CMDLINE} vireo.run=blkuring vireo.exit=wait' & \
         v=$!; n=0; \
         until grep -q URING-DONE /tmp/u.log 2>/dev/null || [ $n -gt 1800 ]; do sleep 0.1; n=$((n + 1)); done; \
         cat /tmp/u.log; \
         vireo-api /tmp/u.sock GET /metrics | grep -E '^vireo_block_(batches|batched_requests)_total'; \
         vireo-api /tmp/u.sock PUT /vm/shutdown >/dev/null; wait $v; echo VMM-EXIT=$?"
    );
    let r = run_in_lab(&script, &["--put", &put(&image)]);
    assert_eq!(exits(&r), vec![0], "the VM powered off: {r:?}");
    let host = line(&r, "HOST-MD5").unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(line(&r, "URING-BIG"), Some(host), "{r:?}");
    assert_eq!(line(&r, "URING-SMALL"), Some(host), "{r:?}");
    let batches = drive_total(&r, "vireo_block_batches_total", 1).expect("batch count");
    let batched = drive_total(&r, "vireo_block_batched_requests_total", 1).expect("batched");
    eprintln!("io_uring data drive: {batches} batches, {batched} requests in them");
    // Four 4 MiB reads of four requests each; runs measured 3 and 4 batches holding 12 to 15
    // of the 16 requests (the I/O thread may take a request before the rest are queued).
    assert!(batches >= 1, "the 4 MiB reads went as batches: {r:?}");
}
