//! vireod end to end in the lab, where the stock Debian guest runs: the `vireo` CLI (a SigV4
//! client of vireod's EC2 API) launches the registered Debian image; its user data (a script)
//! runs in the guest and writes a file on its root disk (a qcow2 overlay of the image); the
//! guest's ready line is read through GetConsoleOutput; CreateImage (with EC2's default reboot: a
//! graceful shutdown through Ctrl-Alt-Del, the capture, a start) makes a new image, and an
//! instance launched from it sees the first one's file; StopInstances stops a guest cleanly.

use std::path::PathBuf;

use vireo_tests::repo_root;
use vireo_tests::vireod_lab::{debian_image, lines, run_vireod_lab};

/// What the test does once vireod serves (vireod_lab's start and shell functions before it).
const HOST: &str = r#"
cat >/tmp/one.sh <<'SH'
#!/bin/sh
echo "written by the first instance" >/marker.txt
sync
echo "USERDATA-ONE-DONE"
SH
cat >/tmp/two.sh <<'SH'
#!/bin/sh
echo "TWO-SEES: $(cat /marker.txt)"
SH
AMI=$(vireo images --json | id_of ami)
echo "AMI=$AMI"
ONE=$(vireo run --image "$AMI" --type t3.nano --user-data /tmp/one.sh --json | id_of i)
echo "ONE=$ONE"
# Progress while it boots: the state, then the console up to the ready line.
timeout 120 vireo run --image "$AMI" --type t3.nano --wait --ready-line VIREO-READY >/tmp/run-three.log 2>&1
echo "WAIT-EXIT=$?"
THREE=$(id_of i </tmp/run-three.log)
wait_for "$ONE" USERDATA-ONE-DONE 120 0.2
vireo console "$ONE" | sed 's/^/ONE-CONSOLE /'
NEW=$(vireo images create --instance "$ONE" --name from-instance-one --json | id_of ami)
echo "NEW=$NEW"
vireo ls | sed 's/^/LS /'
TWO=$(vireo run --image "$NEW" --type t3.nano --user-data /tmp/two.sh --json | id_of i)
wait_for "$TWO" TWO-SEES 120 0.2
vireo console "$TWO" | sed 's/^/TWO-CONSOLE /'
vireo stop "$TWO" >/dev/null
wait_state "$TWO" stopped 120 0.2
vireo describe "$TWO" --json | tr -d '\n' | sed 's/^/TWO-DESCRIBE /'; echo
vireo console "$TWO" | sed 's/^/TWO-AFTER /'
vireo terminate "$ONE" "$TWO" "$THREE" >/dev/null
end_report 60
"#;

#[test]
fn vireod_launches_debian_runs_user_data_and_images_an_instance() {
    let guest: PathBuf = std::env::var_os("VIREO_BUILD")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build"))
        .join("guest");
    let rootfs = format!("{}:/tmp/rootfs.ext4", guest.join("rootfs.ext4").display());
    let r = run_vireod_lab(
        "vireod",
        &debian_image(Some("/tmp/rootfs.ext4")),
        // No VPC data plane: this lab brings up no network modules or tools (lab_vpc.rs does).
        "--capacity-memory-mib 2048 --shutdown-timeout 60 --no-network",
        HOST,
        &["--mem", "3072", "--timeout", "600", "--put", &rootfs],
    );
    let out = &r.stdout;
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(
        lines(out, "AMI=ami-").len() == 1,
        "the Debian image is registered: {r:?}"
    );
    assert_eq!(
        lines(out, "WAIT-EXIT="),
        ["0"],
        "vireo run --wait saw the ready line: {r:?}"
    );
    let one = lines(out, "ONE-CONSOLE ");
    assert!(
        one.iter().any(|l| l.starts_with("VIREO-READY")),
        "ready line through GetConsoleOutput: {one:#?}"
    );
    assert!(
        one.contains(&"USERDATA-ONE-DONE"),
        "the user data script ran: {one:#?}"
    );
    assert!(
        lines(out, "NEW=ami-").len() == 1,
        "CreateImage made an image: {r:?}"
    );
    let two = lines(out, "TWO-CONSOLE ");
    assert!(
        two.contains(&"TWO-SEES: written by the first instance"),
        "the new image holds the first instance's file: {two:#?}"
    );
    let after = lines(out, "TWO-AFTER ");
    assert!(
        after.contains(&"vireo-init: ctrl-alt-del, powering off"),
        "StopInstances shut the guest down through its init: {after:#?}"
    );
    let describe = lines(out, "TWO-DESCRIBE ").join("");
    assert!(describe.contains("\"stopped\""), "{describe}");
    assert_eq!(
        lines(out, "VMMS-LEFT="),
        ["0"],
        "terminate ends every VMM: {r:?}"
    );
}
