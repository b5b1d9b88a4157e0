//! vireo-vmm on this host's KVM with the project's own test guests (no Linux needed, so these
//! also run on a PVM host).

use vireo_tests::{guest, run_vmm, scratch};
use vireo_vmm_api::{ExitSummary, Stop};

/// Runs test guest `name` with 64 MiB and returns what happened and the VMM's summary.
fn run_with_summary(name: &str) -> (vireo_tests::Ran, ExitSummary) {
    let g = guest(name);
    let s = scratch(&format!("{name}.json"));
    let r = run_vmm(
        &[
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64",
            "--summary-json",
            s.to_str().unwrap(),
        ],
        30,
    );
    assert_eq!(r.status, Some(0), "{r:?}");
    let summary = ExitSummary::from_file_text(&std::fs::read_to_string(&s).unwrap()).unwrap();
    (r, summary)
}

#[test]
fn port_io_reaches_the_console_and_unclaimed_ports_read_all_ones() {
    let (r, sum) = run_with_summary("pio");
    assert!(r.stdout.contains("pio: hello\n"), "{r:?}");
    assert!(r.stdout.contains("pio: lsr thre\n"), "{r:?}");
    assert!(
        r.stdout.contains("pio: unclaimed 00000000ffffffff\n"),
        "{r:?}"
    );
    assert_eq!(sum.stop, Stop::PowerOff);
    assert!(sum.exits_total.io_in >= 2);
}

#[test]
fn mmio_to_the_device_hole_exits_to_the_vmm_and_reads_all_ones() {
    let (r, sum) = run_with_summary("mmio");
    assert!(r.stdout.contains("mmio: read 00000000ffffffff"), "{r:?}");
    assert_eq!(sum.exits_total.mmio_read, 10);
    assert_eq!(sum.exits_total.mmio_write, 10);
}

#[test]
fn memory_above_4_gib_is_usable() {
    let g = guest("highmem");
    for mem in ["6G", "16G"] {
        let r = run_vmm(&["--kernel", g.to_str().unwrap(), "--memory", mem], 60);
        assert_eq!(r.status, Some(0), "{mem}: {r:?}");
        assert!(
            r.stdout.contains("highmem: ok 5649524545484947"),
            "{mem}: {r:?}"
        );
    }
}

#[test]
fn every_vcpu_comes_online_through_init_sipi() {
    let g = guest("smp");
    for n in [2, 4] {
        let r = run_vmm(
            &[
                "--kernel",
                g.to_str().unwrap(),
                "--memory",
                "64",
                "--vcpus",
                &n.to_string(),
            ],
            60,
        );
        assert_eq!(r.status, Some(0), "{r:?}");
        let ids: Vec<String> = (1..n).map(|i| i.to_string()).collect();
        let want = format!("smp: online {n} of {n} apic-ids {}\n", ids.join(" "));
        assert!(r.stdout.contains(&want), "want {want:?}: {r:?}");
    }
}

fn power(mode: &str) -> vireo_tests::Ran {
    let g = guest("power");
    run_vmm(
        &[
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64",
            "--vcpus",
            "2",
            "--cmdline",
            mode,
        ],
        30,
    )
}

#[test]
fn poweroff_exits_0() {
    let r = power("p");
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(r.stdout.contains("power: poweroff"), "{r:?}");
}

#[test]
fn acpi_reset_and_i8042_reset_exit_3() {
    for (mode, said) in [("r", "acpi reset"), ("k", "i8042 reset")] {
        let r = power(mode);
        assert_eq!(r.status, Some(3), "{mode}: {r:?}");
        assert!(r.stdout.contains(said), "{r:?}");
    }
}

#[test]
fn triple_fault_is_reported_as_a_guest_failure() {
    let r = power("t");
    assert_eq!(r.status, Some(4), "{r:?}");
    assert!(r.stderr.contains("triple-fault"), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "one line: {r:?}");
}

#[test]
fn serial_output_to_a_file() {
    let g = guest("pio");
    let log = scratch("console.log");
    let _ = std::fs::remove_file(&log);
    let r = run_vmm(
        &[
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64",
            "--serial",
            &format!("file:{}", log.display()),
        ],
        30,
    );
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(!r.stdout.contains("pio: hello"), "{r:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("pio: hello\n"), "{text:?}");
}

#[test]
fn json_config_file_with_flag_overrides() {
    let g = guest("power");
    let cfg = scratch("vm.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"kernel": "{}", "cmdline": "r", "vcpus": 2, "memory_mib": 64}}"#,
            g.display()
        ),
    )
    .unwrap();
    let r = run_vmm(&["--config", cfg.to_str().unwrap()], 30);
    assert_eq!(r.status, Some(3), "config says reset: {r:?}");
    let r = run_vmm(&["--config", cfg.to_str().unwrap(), "--cmdline", "p"], 30);
    assert_eq!(r.status, Some(0), "flag overrides to poweroff: {r:?}");
}

#[test]
fn an_instruction_kvm_cannot_emulate_is_one_clear_error() {
    // On KVM-PVM, guest kernel mode runs in KVM's instruction emulator, which lacks
    // cmpxchg16b; elsewhere the instruction runs natively and the guest powers off.
    let r = power("e");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(r.status, Some(4), "{r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
        assert!(
            r.stderr.contains("PVM-enabled guest kernels"),
            "the error names PVM: {r:?}"
        );
    } else {
        assert_eq!(r.status, Some(0), "{r:?}");
        assert!(r.stdout.contains("survived cmpxchg16b"), "{r:?}");
    }
}
