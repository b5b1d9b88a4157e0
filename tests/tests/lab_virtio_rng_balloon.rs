//! virtio-rng and virtio-balloon with Debian's own drivers, in the lab.

use std::sync::Mutex;

use vireo_tests::{guest_script_initrd, run_in_lab};

static LAB: Mutex<()> = Mutex::new(());

/// The guest's side: entropy from the virtio-rng device, then MemTotal once it has stopped
/// changing (Linux takes inflated balloon pages out of MemTotal).
const GUEST: &str = r#"#!/bin/sh
echo "RNG-CURRENT $(cat /sys/class/misc/hw_random/rng_current)"
echo "RNG-BYTES $(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
last=0
stable=0
i=0
while [ $stable -lt 10 ] && [ $i -lt 300 ]; do
    now=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)
    if [ "$now" = "$last" ]; then stable=$((stable + 1)); else stable=0; fi
    last=$now
    sleep 0.1
    i=$((i + 1))
done
echo "MEMTOTAL $last"
"#;

fn line<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    out.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line in {out:?}"))
        .split_whitespace()
        .collect()
}

#[test]
fn guest_drivers_get_entropy_and_give_back_ballooned_memory() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let extra = guest_script_initrd("virt", GUEST);
    let put = format!("{}:/tmp/extra.gz", extra.display());
    // The same guest twice: without a balloon for the baseline, then asked for 64 MiB. Each VM
    // is bounded; one that hangs prints its debug log, one that fails its last lines but the
    // debug ones (its error line).
    let script = "cat /vireo/guest/initrd.cpio.gz /tmp/extra.gz > /tmp/i.gz; \
        for b in '' '--balloon target=64,stats=1'; do \
          VIREO_LOG=debug timeout 120 vireo-vmm --kernel /vireo/guest/vmlinux --initrd /tmp/i.gz \
            --memory 256 --rng $b --cmdline 'console=ttyS0 panic=-1 quiet vireo.run=virt' \
            2>/tmp/vmm.log; rc=$?; echo VMM-EXIT=$rc; \
          if [ $rc = 124 ]; then echo VMM-HUNG; tail -40 /tmp/vmm.log; \
          elif [ $rc != 0 ]; then grep -v DEBUG /tmp/vmm.log | tail -20; fi; done";
    let mut r = run_in_lab(script, &["--put", &put]);
    if r.stdout.contains("VMM-HUNG") {
        // Seen once in about twenty runs and not reproduced since (see the session notes):
        // keep the evidence, try once more.
        eprintln!("a VM hung; its output follows, and the lab run is retried once:\n{r:?}");
        r = run_in_lab(script, &["--put", &put]);
    }
    assert_eq!(r.stdout.matches("VMM-EXIT=0").count(), 2, "{r:?}");
    assert_eq!(line(&r.stdout, "RNG-CURRENT "), ["virtio_rng.0"], "{r:?}");
    let bytes = line(&r.stdout, "RNG-BYTES ");
    assert_eq!(bytes.len(), 1);
    assert_eq!(bytes[0].len(), 128, "64 bytes of entropy: {r:?}");
    assert_ne!(bytes[0], "0".repeat(128));
    let totals: Vec<u64> = r
        .stdout
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("MEMTOTAL "))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert_eq!(totals.len(), 2, "{r:?}");
    let given_back = totals[0] - totals[1];
    assert!(
        (64 * 1024..=68 * 1024).contains(&given_back),
        "the guest gave back 64 MiB: MemTotal {} -> {} kB",
        totals[0],
        totals[1]
    );
}
