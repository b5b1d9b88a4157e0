//! virtio-net end to end, in the lab: a network namespace (`unshare -n`) with a TAP at
//! 172.16.0.1/24, vireo-vmm on that TAP, and a stock Debian guest at 172.16.0.2 that pings the
//! host, downloads a file over HTTP and uploads one over TCP. Both files' checksums are compared.
//! The lab's L1 kernel loads `tun` (lab/lab's LAB_MODULES); busybox gives `unshare`, `tunctl`,
//! `ip`, `httpd` and `nc` on both sides.

use std::sync::Mutex;

use vireo_tests::{run_in_lab, scratch, Ran};

static LAB: Mutex<()> = Mutex::new(());

/// The guest's part: /etc/vireo/net.sh in an initrd appended to the standard one.
const GUEST: &str = r#"#!/bin/sh
echo "GUEST-MAC $(cat /sys/class/net/eth0/address)"
ip link set lo up
ip link set eth0 up
ip addr add 172.16.0.2/24 dev eth0
echo "GUEST-CARRIER $(cat /sys/class/net/eth0/carrier)"
if ping -c 3 -W 10 172.16.0.1 >/tmp/ping 2>&1; then echo GUEST-PING-OK; else cat /tmp/ping; fi
# (busybox 1.35's wget crashes with -T.)
if wget -q -O /tmp/blob http://172.16.0.1:8080/blob; then
    echo "GUEST-DOWN-SHA $(sha256sum /tmp/blob | cut -d' ' -f1)"
fi
dd if=/dev/urandom of=/tmp/up bs=1024 count=1024 2>/dev/null
echo "GUEST-UP-SHA $(sha256sum /tmp/up | cut -d' ' -f1)"
nc -w 30 172.16.0.1 9000 </tmp/up
echo "GUEST-RX-TX $(grep eth0: /proc/net/dev)"
"#;

/// The lab's part, run inside its own network namespace.
const HOST: &str = r#"#!/bin/sh
ip link set lo up
tunctl -t vtap0 >/dev/null || { echo "HOST-FAIL tunctl"; exit 1; }
ip addr add 172.16.0.1/24 dev vtap0
ip link set vtap0 up
mkdir -p /tmp/www /tmp/extra/etc/vireo
dd if=/dev/urandom of=/tmp/www/blob bs=1024 count=4096 2>/dev/null
echo "HOST-DOWN-SHA $(sha256sum /tmp/www/blob | cut -d' ' -f1)"
httpd -f -p 172.16.0.1:8080 -h /tmp/www &
HTTPD=$!
# Its stdin must stay open: at EOF it would close the connection before the upload ends.
{ sleep 300 & echo $! >/tmp/nc-stdin.pid; wait; } | nc -l -p 9000 >/tmp/up &
NC=$!
cp /vireo/net-guest.sh /tmp/extra/etc/vireo/net.sh
chmod 0755 /tmp/extra/etc/vireo/net.sh
(cd /tmp/extra && find . | cpio -o -H newc 2>/dev/null | gzip) >/tmp/extra.gz
cat /vireo/guest/initrd.cpio.gz /tmp/extra.gz >/tmp/initrd.gz
BOOT="--kernel /vireo/guest/vmlinux --initrd /tmp/initrd.gz --memory 256"
vireo-vmm $BOOT --net tap=vtap0,mac=02:00:00:00:00:02 \
    --cmdline "console=ttyS0 panic=-1 quiet vireo.run=net"
echo "VMM-EXIT=$?"
# The receiver ends when the guest's nc closes; do not wait forever if it never connected.
i=0
while kill -0 $NC 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
kill $NC "$(cat /tmp/nc-stdin.pid)" 2>/dev/null
echo "HOST-UP-SHA $(sha256sum /tmp/up | cut -d' ' -f1)"
kill $HTTPD

# A TAP that is missing, and one that another VMM holds: one-line errors naming them.
vireo-vmm $BOOT --net tap=nosuch0 2>&1
echo "MISSING-EXIT=$?"
vireo-vmm $BOOT --net tap=vtap0 --cmdline "console=ttyS0 panic=-1 quiet vireo.exit=wait" \
    >/tmp/holder.log 2>&1 &
HOLDER=$!
i=0
while ! grep -q VIREO-READY /tmp/holder.log && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
vireo-vmm $BOOT --net tap=vtap0 2>&1
echo "BUSY-EXIT=$?"
kill $HOLDER
"#;

fn value<'a>(r: &'a Ran, key: &str) -> &'a str {
    r.stdout
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find_map(|l| l.strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("no {key} line: {r:?}"))
}

#[test]
fn guest_pings_downloads_and_uploads_through_a_tap() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let host = scratch("net-host.sh");
    let guest = scratch("net-guest.sh");
    std::fs::write(&host, HOST).unwrap();
    std::fs::write(&guest, GUEST).unwrap();
    let puts = [
        format!("{}:/vireo/net-host.sh", host.display()),
        format!("{}:/vireo/net-guest.sh", guest.display()),
    ];
    let r = run_in_lab(
        "unshare -n sh /vireo/net-host.sh",
        &["--put", &puts[0], "--put", &puts[1]],
    );

    assert_eq!(value(&r, "VMM-EXIT="), "0", "the guest powered off: {r:?}");
    assert_eq!(value(&r, "GUEST-MAC "), "02:00:00:00:00:02", "{r:?}");
    assert_eq!(value(&r, "GUEST-CARRIER "), "1", "link up: {r:?}");
    assert!(r.stdout.contains("GUEST-PING-OK"), "ping failed: {r:?}");
    let down = value(&r, "HOST-DOWN-SHA ");
    assert_eq!(down.len(), 64, "{r:?}");
    assert_eq!(value(&r, "GUEST-DOWN-SHA "), down, "download intact: {r:?}");
    assert_eq!(
        value(&r, "HOST-UP-SHA "),
        value(&r, "GUEST-UP-SHA "),
        "upload intact: {r:?}"
    );
    // /proc/net/dev: bytes packets errs drop fifo frame ... of what the guest received. A
    // frame published before all its buffers were would count as a length ("frame") error.
    let rx: Vec<u64> = value(&r, "GUEST-RX-TX ")
        .trim_start_matches("eth0:")
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(rx[0] > 4 << 20, "the download came through eth0: {rx:?}");
    assert_eq!(
        (rx[2], rx[5]),
        (0, 0),
        "no receive errors in the guest: {rx:?}"
    );

    assert_eq!(value(&r, "MISSING-EXIT="), "1", "{r:?}");
    assert!(
        r.stdout
            .contains("vireo-vmm: error: TAP nosuch0: no such interface"),
        "{r:?}"
    );
    assert_eq!(value(&r, "BUSY-EXIT="), "1", "{r:?}");
    assert!(
        r.stdout.contains("vireo-vmm: error: TAP vtap0: busy"),
        "{r:?}"
    );
}
