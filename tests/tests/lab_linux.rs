//! Debian's stock cloud kernel under vireo-vmm, in the lab (QEMU-TCG host with AMD SVM + NPT,
//! where kvm-amd gives a hardware-assisted /dev/kvm). Each test boots the lab once, so they
//! take turns: the lab gets one of the machine's cores.

use std::sync::Mutex;

use vireo_tests::{guest, guest_script_initrd, run_in_lab, Ran};

static LAB: Mutex<()> = Mutex::new(());

const BOOT: &str = "--initrd /vireo/guest/initrd.cpio.gz --memory 512";

/// (ready line, exit status) of each VM run by a lab script that prints `VMM-EXIT=<status>`
/// after each one.
fn runs(r: &Ran) -> Vec<(Option<String>, i32)> {
    let mut out = Vec::new();
    let mut ready = None;
    for line in r.stdout.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("VIREO-READY ") {
            ready = Some(line.to_string());
        } else if let Some(code) = line.strip_prefix("VMM-EXIT=") {
            out.push((ready.take(), code.parse().unwrap()));
        }
    }
    out
}

fn field<'a>(ready: &'a str, key: &str) -> &'a str {
    ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {ready:?}"))
}

/// Run in the guest (`vireo.run=xsave`): the kernel's XSAVE verdict and which CPUs have it.
const XSAVE_SCRIPT: &str = "#!/bin/sh
echo \"XSAVE-PROBLEMS=$(dmesg | grep -c 'XSAVE consistency problem')\"
echo \"XSAVE-CPUS=$(grep -cw xsave /proc/cpuinfo) AVX-CPUS=$(grep -cw avx /proc/cpuinfo)\"
";

#[test]
fn stock_kernel_boots_to_the_ready_line_with_1_and_2_vcpus() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let extra = guest_script_initrd("xsave", XSAVE_SCRIPT);
    let boot = "--initrd /tmp/i.gz --memory 512";
    let cmdline = "console=ttyS0 panic=-1 quiet vireo.run=xsave";
    let script = format!(
        "cat /vireo/guest/initrd.cpio.gz /tmp/extra.gz > /tmp/i.gz; \
         grep -qw xsave /proc/cpuinfo && echo L1-XSAVE; grep -qw avx /proc/cpuinfo && echo L1-AVX; \
         for n in 1 2; do vireo-vmm --kernel /vireo/guest/vmlinux {boot} --vcpus $n \
           --cmdline '{cmdline}'; echo VMM-EXIT=$?; done; \
         vireo-vmm --kernel /vireo/guest/bzImage {boot} --vcpus 2 \
           --cmdline '{cmdline}'; echo VMM-EXIT=$?"
    );
    let put = format!("{}:/tmp/extra.gz", extra.display());
    let r = run_in_lab(&script, &["--put", &put]);
    let runs = runs(&r);
    assert_eq!(runs.len(), 3, "three VMs ran: {r:?}");
    for ((ready, status), want_vcpus) in runs.iter().zip(["1", "2", "2"]) {
        let ready = ready
            .as_deref()
            .unwrap_or_else(|| panic!("no ready line: {r:?}"));
        assert_eq!(*status, 0, "powered off cleanly: {r:?}");
        assert_eq!(field(ready, "vcpus"), want_vcpus, "{ready}");
        let mem: u64 = field(ready, "mem_kib").parse().unwrap();
        assert!(
            (400_000..=512 * 1024).contains(&mem),
            "guest sees about 512 MiB: {ready}"
        );
        assert!(field(ready, "kernel").ends_with("-cloud-amd64"), "{ready}");
    }
    // XSAVE: the guest kernel finds CPUID leaf 0xD consistent and keeps XSAVE (and AVX) on
    // every vCPU where the lab's CPU has them.
    let lines = |p: &str| -> Vec<String> {
        r.stdout
            .lines()
            .filter(|l| l.starts_with(p))
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect()
    };
    assert_eq!(
        lines("XSAVE-PROBLEMS="),
        vec!["XSAVE-PROBLEMS=0"; 3],
        "{r:?}"
    );
    let cpus = lines("XSAVE-CPUS=");
    assert_eq!(cpus.len(), 3, "{r:?}");
    let (l1_xsave, l1_avx) = (lines("L1-XSAVE").len() == 1, lines("L1-AVX").len() == 1);
    for (line, n) in cpus.iter().zip([1, 2, 2]) {
        let want = format!(
            "XSAVE-CPUS={} AVX-CPUS={}",
            if l1_xsave { n } else { 0 },
            if l1_avx && l1_xsave { n } else { 0 }
        );
        assert_eq!(*line, want, "{r:?}");
    }
}

#[test]
fn stock_kernel_boots_with_little_memory_and_with_memory_above_4_gib() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    // 80 MiB is about the least Debian's cloud kernel runs in (at 64 MiB it runs out of memory
    // itself); 5 GiB puts 2 GiB above the 32-bit device hole. The lab host gets lazily backed
    // memory enough to accept the larger guest.
    let script = "for m in 80M 5G; do vireo-vmm --kernel /vireo/guest/vmlinux \
        --initrd /vireo/guest/initrd.cpio.gz --memory $m --vcpus 2 \
        --cmdline 'console=ttyS0 panic=-1 quiet'; echo VMM-EXIT=$?; done";
    let r = run_in_lab(script, &["--mem", "8192"]);
    let runs = runs(&r);
    assert_eq!(runs.len(), 2, "{r:?}");
    let mem = |i: usize| -> u64 {
        let ready = runs[i]
            .0
            .as_deref()
            .unwrap_or_else(|| panic!("no ready line: {r:?}"));
        field(ready, "mem_kib").parse().unwrap()
    };
    assert_eq!((runs[0].1, runs[1].1), (0, 0), "{r:?}");
    assert!((40_000..80 * 1024).contains(&mem(0)), "{r:?}");
    // The guest sees more than the 3 GiB below the hole: RAM above 4 GiB is in use.
    assert!(mem(1) > 4_500_000 && mem(1) <= 5 * 1024 * 1024, "{r:?}");
}

#[test]
fn guest_poweroff_and_reboot_end_the_vm_with_distinct_statuses() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let script = format!(
        "for how in poweroff reboot; do vireo-vmm --kernel /vireo/guest/vmlinux {BOOT} \
           --vcpus 2 --cmdline \"console=ttyS0 panic=-1 quiet vireo.exit=$how\"; \
           echo VMM-EXIT=$?; done"
    );
    let r = run_in_lab(&script, &[]);
    let runs = runs(&r);
    assert_eq!(runs.len(), 2, "{r:?}");
    assert!(runs.iter().all(|(ready, _)| ready.is_some()), "{r:?}");
    assert_eq!(runs[0].1, 0, "poweroff exits 0: {r:?}");
    assert_eq!(runs[1].1, 3, "reboot exits 3: {r:?}");
}

#[test]
fn test_guests_behave_the_same_on_hardware_assisted_kvm() {
    let _lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let mut puts = Vec::new();
    for g in ["pio", "mmio", "highmem", "smp", "power"] {
        puts.push("--put".to_string());
        puts.push(format!("{}:/tmp/{g}.elf", guest(g).display()));
    }
    // The lab host gets enough (lazily backed) memory to accept a 6 GiB guest.
    puts.extend(["--mem".to_string(), "8192".to_string()]);
    let extra: Vec<&str> = puts.iter().map(String::as_str).collect();
    let script = "v() { vireo-vmm --memory 64 \"$@\"; echo VMM-EXIT=$?; }; \
        v --kernel /tmp/pio.elf; v --kernel /tmp/mmio.elf; \
        vireo-vmm --kernel /tmp/highmem.elf --memory 6G; echo VMM-EXIT=$?; \
        v --kernel /tmp/smp.elf --vcpus 4; \
        v --kernel /tmp/power.elf --cmdline t; v --kernel /tmp/power.elf --cmdline r; \
        v --kernel /tmp/power.elf --cmdline e";
    let r = run_in_lab(script, &extra);
    let statuses: Vec<i32> = runs(&r).iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses, vec![0, 0, 0, 0, 4, 3, 0], "{r:?}");
    for want in [
        "pio: unclaimed 00000000ffffffff",
        "mmio: read 00000000ffffffff",
        "highmem: ok 5649524545484947",
        "smp: online 4 of 4 apic-ids 1 2 3",
        "power: survived cmpxchg16b",
    ] {
        assert!(r.stdout.contains(want), "want {want:?}: {r:?}");
    }
    assert!(r.stderr.contains("triple-faulted"), "{r:?}");
}
