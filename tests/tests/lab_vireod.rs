//! vireod end to end in the lab, where the stock Debian guest runs: the `vireo` CLI (a SigV4
//! client of vireod's EC2 API) launches the registered Debian image; its user data (a script)
//! runs in the guest and writes a file on its root disk (a qcow2 overlay of the image); the
//! guest's ready line is read through GetConsoleOutput; CreateImage (with EC2's default reboot: a
//! graceful shutdown through Ctrl-Alt-Del, the capture, a start) makes a new image, and an
//! instance launched from it sees the first one's file; StopInstances stops a guest cleanly.

use std::path::PathBuf;

use vireo_tests::{repo_root, run_in_lab, scratch};

const HOST: &str = r#"
set -u
export PATH=/vireo/bin:$PATH
export AWS_SHARED_CREDENTIALS_FILE=/tmp/vd/credentials AWS_CONFIG_FILE=/tmp/vd/config
export VIREO_ENDPOINT=http://127.0.0.1:8787
cat >/tmp/debian.json <<'JSON'
{"name": "vireo-debian-12", "kernel": "/vireo/guest/vmlinux", "initrd": "/vireo/guest/initrd.cpio.gz",
 "root_disk": "/tmp/rootfs.ext4", "cmdline": "console=ttyS0 panic=-1 quiet vireo.root=/dev/vda vireo.exit=wait"}
JSON
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
# The lab brings up no network; vireod listens on loopback.
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
vmms() { for p in /proc/[0-9]*; do readlink "$p/exe"; done 2>/dev/null | grep -c vireo-vmm; }
vireod init --data-dir /tmp/vd --image /tmp/debian.json >/tmp/init.log 2>&1 || { echo INIT-FAILED; cat /tmp/init.log; exit 1; }
# No VPC data plane: this lab brings up no network modules or tools (lab_vpc.rs does).
vireod serve --data-dir /tmp/vd --listen 127.0.0.1:8787 --capacity-memory-mib 2048 \
    --shutdown-timeout 60 --no-network >/tmp/vireod.log 2>&1 &
VIREOD=$!
trap 'kill $VIREOD 2>/dev/null' EXIT
i=0
until vireo types >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo VIREOD-DOWN; cat /tmp/vireod.log; exit 1; }
    sleep 0.1
done
id_of() { grep -o "$1-[0-9a-f]*" | head -1; }
AMI=$(vireo images --json | id_of ami)
echo "AMI=$AMI"
ONE=$(vireo run --image "$AMI" --type t3.nano --user-data /tmp/one.sh --json | id_of i)
echo "ONE=$ONE"
# Progress while it boots: the state, then the console up to the ready line.
timeout 120 vireo run --image "$AMI" --type t3.nano --wait --ready-line VIREO-READY >/tmp/run-three.log 2>&1
echo "WAIT-EXIT=$?"
THREE=$(id_of i </tmp/run-three.log)
i=0
until vireo console "$ONE" | grep -q USERDATA-ONE-DONE || [ $i -ge 600 ]; do sleep 0.2; i=$((i + 1)); done
vireo console "$ONE" | sed 's/^/ONE-CONSOLE /'
NEW=$(vireo images create --instance "$ONE" --name from-instance-one --json | id_of ami)
echo "NEW=$NEW"
vireo ls | sed 's/^/LS /'
TWO=$(vireo run --image "$NEW" --type t3.nano --user-data /tmp/two.sh --json | id_of i)
i=0
until vireo console "$TWO" | grep -q TWO-SEES || [ $i -ge 600 ]; do sleep 0.2; i=$((i + 1)); done
vireo console "$TWO" | sed 's/^/TWO-CONSOLE /'
vireo stop "$TWO" >/dev/null
i=0
until vireo describe "$TWO" --json | grep -q '"stopped"' || [ $i -ge 600 ]; do sleep 0.2; i=$((i + 1)); done
vireo describe "$TWO" --json | tr -d '\n' | sed 's/^/TWO-DESCRIBE /'; echo
vireo console "$TWO" | sed 's/^/TWO-AFTER /'
vireo terminate "$ONE" "$TWO" "$THREE" >/dev/null
i=0
while [ "$(vmms)" -gt 0 ] && [ $i -lt 300 ]; do sleep 0.2; i=$((i + 1)); done
echo "VMMS-LEFT=$(vmms)"
sed 's/^/VIREOD-LOG /' /tmp/vireod.log
"#;

fn lines<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix))
        .collect()
}

#[test]
fn vireod_launches_debian_runs_user_data_and_images_an_instance() {
    let guest: PathBuf = std::env::var_os("VIREO_BUILD")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build"))
        .join("guest");
    let host = scratch("vireod-host.sh");
    std::fs::write(&host, HOST).unwrap();
    let puts = [
        format!("{}:/vireo/host.sh", host.display()),
        format!("{}:/tmp/rootfs.ext4", guest.join("rootfs.ext4").display()),
    ];
    let mut extra = vec!["--mem", "3072", "--timeout", "600"];
    for p in &puts {
        extra.extend(["--put", p.as_str()]);
    }
    let r = run_in_lab("sh /vireo/host.sh", &extra);
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
