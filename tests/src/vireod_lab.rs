//! The scaffolding shared by the lab tests that run vireod (lab_vireod, lab_vpc, lab_imds,
//! lab_vpc_migrate): the host script's start (vireod initialised with the stock Debian image,
//! served, waited for, the `vireo` CLI's profile set) with the shell functions they all use,
//! the guests' DHCP lease script, and running the whole host script in the lab.
//!
//! A test gives [`run_vireod_lab`] its own part of the host script, which runs after
//! [`vireod_start_script`] and ends with `end_report SECS` once it terminated its instances.

use crate::{run_in_lab, scratch, Ran};

/// The JSON `vireod init --image` registers for the lab's stock Debian guest (kernel and
/// busybox initramfs under /vireo/guest). With `root_disk` (a path inside the lab), the image
/// boots from that disk (`vireo.root=/dev/vda`); without one, from the initramfs alone.
pub fn debian_image(root_disk: Option<&str>) -> String {
    let (disk, root) = match root_disk {
        Some(path) => (
            format!(r#" "root_disk": "{path}","#),
            " vireo.root=/dev/vda",
        ),
        None => (String::new(), ""),
    };
    format!(
        r#"{{"name": "vireo-debian-12", "kernel": "/vireo/guest/vmlinux", "initrd": "/vireo/guest/initrd.cpio.gz",
{disk} "cmdline": "console=ttyS0 panic=-1 quiet{root} vireo.exit=wait"}}"#
    )
}

/// The start of a host script: `set -u`, the `vireo` CLI's endpoint and credentials (the
/// profile `vireod init` writes under /tmp/vd), vireod initialised with `image_json` (see
/// [`debian_image`]) and `vireod serve --listen 127.0.0.1:8787 SERVE_FLAGS` started in the
/// background (its log in /tmp/vireod.log, killed when the script exits) and waited for: the
/// script prints INIT-FAILED or VIREOD-DOWN and exits 1 when it does not come up. Then it
/// defines the shell functions in [`SHELL_FUNCTIONS`].
pub fn vireod_start_script(image_json: &str, serve_flags: &str) -> String {
    format!(
        r#"set -u
export PATH=/vireo/bin:$PATH
export AWS_SHARED_CREDENTIALS_FILE=/tmp/vd/credentials AWS_CONFIG_FILE=/tmp/vd/config
export VIREO_ENDPOINT=http://127.0.0.1:8787
cat >/tmp/debian.json <<'JSON'
{image_json}
JSON
# The lab's loopback starts down; vireod listens on it.
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
vireod init --data-dir /tmp/vd --image /tmp/debian.json >/tmp/init.log 2>&1 || {{ echo INIT-FAILED; cat /tmp/init.log; exit 1; }}
vireod serve --data-dir /tmp/vd --listen 127.0.0.1:8787 {serve_flags} >/tmp/vireod.log 2>&1 &
VIREOD=$!
trap 'kill $VIREOD 2>/dev/null' EXIT
i=0
until vireo types >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 100 ] || {{ echo VIREOD-DOWN; cat /tmp/vireod.log; exit 1; }}
    sleep 0.1
done
{SHELL_FUNCTIONS}
# guest_lease: prints the start of a guest's user data script (GUEST_LEASE_SCRIPT).
guest_lease() {{
    cat <<'LEASE'
{GUEST_LEASE_SCRIPT}LEASE
}}
"#
    )
}

/// The shell functions a host script gets from [`vireod_start_script`].
pub const SHELL_FUNCTIONS: &str = r#"# fail WHAT: a setup step failed: says so (SETUP-FAILED WHAT), prints vireod's log, exits 1.
fail() { echo "SETUP-FAILED $*"; sed 's/^/VIREOD-LOG /' /tmp/vireod.log; exit 1; }
# id_of PREFIX: the first PREFIX-<hex> id in stdin (ami, i, vpc, subnet, sg).
id_of() { grep -o "$1-[0-9a-f]*" | head -1; }
# vmms: how many vireo-vmm processes run.
vmms() { for p in /proc/[0-9]*; do readlink "$p/exe"; done 2>/dev/null | grep -c vireo-vmm; }
# retry SECS PAUSE CMD...: runs CMD every PAUSE seconds until it succeeds; status 1 when it
# did not in SECS/PAUSE tries.
retry() {
    local secs=$1 pause=$2 n i=0
    shift 2
    n=$(awk -v s="$secs" -v p="$pause" 'BEGIN { print int(s / p + 0.5) }')
    until "$@"; do
        i=$((i + 1))
        [ $i -lt "$n" ] || return 1
        sleep "$pause"
    done
}
# console_of ID: the instance's console (GetConsoleOutput) without CRs.
console_of() { vireo console "$1" 2>/dev/null | tr -d '\r'; }
console_has() { console_of "$1" | grep -q "$2"; }
# wait_for ID TEXT SECS [PAUSE]: until the instance's console shows TEXT, polled every PAUSE
# seconds (0.5 unless given); status 1 when it did not in SECS/PAUSE polls.
wait_for() { retry "$3" "${4:-0.5}" console_has "$1" "$2"; }
state_is() { vireo describe "$1" --json | grep -q "\"$2\""; }
# wait_state ID STATE SECS [PAUSE]: the same, until DescribeInstances shows the instance in
# STATE (stopped, running, ...).
wait_state() { retry "$3" "${4:-0.5}" state_is "$1" "$2"; }
no_vmms() { [ "$(vmms)" -eq 0 ]; }
# end_report SECS: once the instances are terminated, waits up to SECS for every VMM to end,
# then prints VMMS-LEFT=N and vireod's log (VIREOD-LOG lines).
end_report() {
    retry "$1" 0.2 no_vmms
    echo "VMMS-LEFT=$(vmms)"
    sed 's/^/VIREOD-LOG /' /tmp/vireod.log
}"#;

/// The start of a guest's user data script (busybox sh): eth0 up and a DHCP lease from the
/// VPC's dnsmasq with busybox `udhcpc`, whose script sets the address and the default route;
/// then the lease is printed, `LEASE ip=.. mask=.. router=.. host=..` (NO-ETH0 or NO-LEASE
/// when it failed). A host script prints it with `guest_lease`.
pub const GUEST_LEASE_SCRIPT: &str = r#"#!/bin/sh
mkdir -p /tmp
cat >/tmp/dhcp.sh <<'S'
#!/bin/sh
case $1 in bound | renew)
    ifconfig "$interface" "$ip" netmask "$subnet" up
    route add default gw "$router" dev "$interface"
    echo "LEASE ip=$ip mask=$subnet router=$router host=$hostname" >/tmp/lease
    ;;
esac
S
chmod +x /tmp/dhcp.sh
ifconfig eth0 up || echo "NO-ETH0"
udhcpc -i eth0 -s /tmp/dhcp.sh -q -n -t 20 -T 1 >/dev/null 2>&1 && cat /tmp/lease || echo "NO-LEASE"
"#;

/// Runs a host script in the lab: [`vireod_start_script`]`(image_json, serve_flags)` followed
/// by `host` (the test's own part), with `lab_args` for `lab/lab run` (`--net`, `--mem`,
/// `--timeout`, more `--put`s); the script is put at /vireo/host.sh. The whole output is kept
/// as the scratch file `NAME-lab.out` (its path printed), for a failure's post-mortem (the
/// assertions show the guests' parts).
pub fn run_vireod_lab(
    name: &str,
    image_json: &str,
    serve_flags: &str,
    host: &str,
    lab_args: &[&str],
) -> Ran {
    let script = scratch(&format!("{name}-host.sh"));
    std::fs::write(&script, vireod_start_script(image_json, serve_flags) + host).unwrap();
    let put = format!("{}:/vireo/host.sh", script.display());
    let mut extra = lab_args.to_vec();
    extra.extend(["--put", put.as_str()]);
    let r = run_in_lab("sh /vireo/host.sh", &extra);
    let saved = scratch(&format!("{name}-lab.out"));
    std::fs::write(&saved, &r.stdout).unwrap();
    eprintln!("lab output: {}", saved.display());
    r
}

/// The rest of each line of `out` that starts with `prefix` (CRs at line ends left out).
pub fn lines<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_boots_from_its_root_disk_only_when_it_has_one() {
        let plain = debian_image(None);
        assert!(!plain.contains("root_disk") && !plain.contains("vireo.root"));
        assert!(plain.contains(r#""cmdline": "console=ttyS0 panic=-1 quiet vireo.exit=wait""#));
        let disk = debian_image(Some("/tmp/rootfs.ext4"));
        assert!(
            disk.contains(r#""root_disk": "/tmp/rootfs.ext4","#),
            "{disk}"
        );
        assert!(
            disk.contains("quiet vireo.root=/dev/vda vireo.exit=wait"),
            "{disk}"
        );
        for json in [plain, disk] {
            let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
            assert_eq!(v["name"], "vireo-debian-12");
        }
    }

    #[test]
    fn the_start_script_is_valid_shell_and_serves_with_the_flags() {
        let s = vireod_start_script(
            &debian_image(None),
            "--capacity-memory-mib 2048 --no-network",
        );
        assert!(s.contains("--listen 127.0.0.1:8787 --capacity-memory-mib 2048 --no-network >"));
        let ok = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(&s)
            .status()
            .expect("sh");
        assert!(ok.success(), "sh -n rejects the start script:\n{s}");
    }

    /// The wait functions, with a stand-in `vireo` whose console shows two lines and whose
    /// instance is running.
    #[test]
    fn the_wait_functions_end_on_the_text_or_the_time() {
        let script = format!(
            r#"{SHELL_FUNCTIONS}
vireo() {{ case $1 in console) printf 'booting\r\nREADY now\r\n' ;; describe) echo '{{"state": "running"}}' ;; esac; }}
wait_for i-1 "READY now" 2 0.1 && echo FOUND
wait_for i-1 NEVER 0.3 0.1 || echo NOT-FOUND
wait_state i-1 running 2 0.1 && echo RUNNING
wait_state i-1 stopped 0.3 0.1 || echo NOT-STOPPED
"#
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("sh");
        let out = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            ["FOUND", "NOT-FOUND", "RUNNING", "NOT-STOPPED"]
        );
    }

    #[test]
    fn lines_strips_the_prefix_and_crs() {
        assert_eq!(lines("A=1\r\nB=2\nA=3\n", "A="), ["1", "3"]);
    }
}
