//! The Debian 12 AMI (images/build-debian-ami.sh) boots under vireo-vmm in the lab: Debian's
//! cloud kernel with the image's own initramfs, the root volume on virtio-blk (`lab/lab --ami`
//! gives it as a writable disk whose writes are dropped), a NIC on a TAP with a DHCP server.
//! No metadata service answers, so cloud-init runs with its None datasource. Checked on the
//! serial console: the kernel mounts its root from vda, systemd starts, a getty prompts on ttyS0,
//! cloud-init's four stages run and it finishes, eth0 takes the DHCP lease, the host key
//! fingerprints and keys are printed; and, on the disk after the guest rebooted on Ctrl-Alt-Del
//! (vireo-vmm's status 3): the default user `admin` (locked password, passwordless sudo), host
//! keys made at this boot whose fingerprints are the ones the console showed, a machine id,
//! cloud-init's stages without errors, and in systemd's journal multi-user.target reached and
//! ssh.service started. The boot's milestones are printed.

use std::collections::BTreeSet;
use std::process::Command;

use vireo_tests::{repo_root, run_in_lab, scratch, Ran};

/// The lab's part, in a network namespace of its own (`unshare -n`).
const HOST: &str = r#"
ip link set lo up
tunctl -t vtap0 >/dev/null || { echo "HOST-FAIL tunctl"; exit 1; }
ip addr add 172.16.0.1/24 dev vtap0
ip link set vtap0 up
printf '%s\n' 'start 172.16.0.10' 'end 172.16.0.20' 'interface vtap0' 'option subnet 255.255.255.0' \
    'option router 172.16.0.1' 'option lease 3600' 'lease_file /tmp/udhcpd.leases' >/tmp/udhcpd.conf
: >/tmp/udhcpd.leases
udhcpd -f /tmp/udhcpd.conf >/tmp/udhcpd.log 2>&1 &
DHCPD=$!
CMDLINE=$(sed -n 's/.*"cmdline": *"\([^"]*\)".*/\1/p' /vireo/ami/debian-ami.json)
echo "CMDLINE $CMDLINE"
T0=$EPOCHREALTIME
echo "T0 $T0"
# Each console line with the lab's time in front (the guest's clock drifts in the lab).
{
    vireo-vmm --kernel /vireo/ami/vmlinuz --initrd /vireo/ami/initrd.img --cmdline "$CMDLINE" \
        --memory 1024 --vcpus 2 --drive path=/vireo/ami/root.raw --net tap=vtap0,mac=02:00:00:00:00:02 \
        --api-sock /tmp/api.sock 2>/tmp/vmm.log
    echo $? >/tmp/vmm.rc
} | { while IFS= read -r l; do printf 'C %s %s\n' "$EPOCHREALTIME" "${l%$'\r'}"; done; } >/tmp/console &
VMM=$!
# Until cloud-init says it finished (or the VMM ended, or 7 minutes passed).
i=0
while ! grep -q 'Cloud-init v\..* finished at' /tmp/console && pidof vireo-vmm >/dev/null && [ $i -lt 2100 ]; do
    sleep 0.2
    i=$((i + 1))
done
# The getty's prompt comes a moment later, if it has not yet.
i=0
while ! grep -q 'login: ' /tmp/console && pidof vireo-vmm >/dev/null && [ $i -lt 100 ]; do
    sleep 0.2
    i=$((i + 1))
done
# A moment for systemd to log the end of its start-up ("Startup finished in ...").
sleep 3
echo "SHUTDOWN $EPOCHREALTIME"
# Ctrl-Alt-Del: systemd's ctrl-alt-del.target reboots, which ends the VMM with status 3.
vireo-api /tmp/api.sock PUT /vm/shutdown >/dev/null
wait $VMM
i=0
while pidof vireo-vmm >/dev/null && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
if pidof vireo-vmm >/dev/null; then
    echo "VMM-STILL-RUNNING"
    kill -9 $(pidof vireo-vmm)
    sleep 1
fi
echo "END $EPOCHREALTIME"
echo "VMM-EXIT $(cat /tmp/vmm.rc 2>/dev/null)"
cat /tmp/console
sed 's/^/VMMLOG /' /tmp/vmm.log | tail -n 20
sed 's/^/DHCPD /' /tmp/udhcpd.log
kill $DHCPD
# The root volume as the guest left it.
mkdir -p /mnt/root
mount -t ext4 /vireo/ami/root.raw /mnt/root || { echo "HOST-FAIL mount"; exit 1; }
R=/mnt/root
grep '^admin:' $R/etc/passwd | sed 's/^/PASSWD /'
grep '^admin:' $R/etc/shadow | cut -d: -f1,2 | sed 's/^/SHADOW /'
grep -h 'admin' $R/etc/sudoers.d/* | grep -v '^#' | sed 's/^/SUDOERS /'
grep '^sudo:' $R/etc/group | sed 's/^/GROUP /'
for k in $R/etc/ssh/ssh_host_*_key.pub; do echo "HOSTKEY $(cat "$k")"; done
echo "MACHINE-ID $(cat $R/etc/machine-id)"
for f in $R/var/lib/cloud/instances/*/boot-finished; do echo "BOOT-FINISHED $(cat "$f")"; done
tr -d '\n ' <$R/var/lib/cloud/data/status.json | sed 's/^/STATUS /'
echo
# systemd's own journal (persistent: /var/log/journal); short messages are stored as text.
cat $R/var/log/journal/*/*.journal | grep -a -o -e 'Reached target multi-user.target[^[:cntrl:]]*' \
    -e 'Started ssh.service[^[:cntrl:]]*' -e 'Startup finished in [^[:cntrl:]]*' | sed 's/^/JOURNAL /'
# When each of cloud-init's modules finished (for the saved output; nothing checks them).
grep -E 'finish: [a-z-]+/[a-z_-]+: |mode .* took ' $R/var/log/cloud-init.log | sed 's/^/CILOG /'
umount $R
"#;

/// The console lines (`C <lab time> <text>`), with terminal escapes removed.
fn console(out: &str) -> Vec<(f64, String)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("C "))
        .filter_map(|l| {
            let (t, text) = l.split_once(' ').unwrap_or((l, ""));
            Some((t.parse().ok()?, strip_escapes(text)))
        })
        .collect()
}

/// `text` without ANSI escape sequences (systemd colours its status lines).
fn strip_escapes(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters, then one final byte in @..~.
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The values of the lines of `out` that start with `key`.
fn values<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    out.lines().filter_map(|l| l.strip_prefix(key)).collect()
}

/// The first console line containing `what`, with its time after T0.
fn when(lines: &[(f64, String)], t0: f64, what: &str) -> Option<f64> {
    lines
        .iter()
        .find(|(_, l)| l.contains(what))
        .map(|(t, _)| t - t0)
}

/// `ssh-keygen -l` of each public key: "BITS SHA256:... COMMENT (TYPE)", the form cloud-init prints.
fn fingerprints(keys: &[&str]) -> BTreeSet<String> {
    keys.iter()
        .map(|k| {
            let f = scratch("hostkey.pub");
            std::fs::write(&f, format!("{k}\n")).unwrap();
            let o = Command::new("ssh-keygen")
                .arg("-l")
                .arg("-f")
                .arg(&f)
                .output()
                .expect("ssh-keygen (openssh-client, scripts/install-deps.sh)");
            assert!(o.status.success(), "ssh-keygen -l of {k}: {o:?}");
            String::from_utf8(o.stdout).unwrap().trim().to_string()
        })
        .collect()
}

fn mtime(f: &std::fs::File) -> std::time::SystemTime {
    f.metadata().and_then(|m| m.modified()).unwrap()
}

#[test]
fn debian_ami_boots_with_systemd_cloud_init_and_fresh_host_keys() {
    let host = scratch("ami-host.sh");
    std::fs::write(&host, HOST).unwrap();
    let put = format!("{}:/vireo/ami-host.sh", host.display());
    // The image's root volume as the lab will find it. Held open: a rebuild of the image (make
    // images in another shell) puts a new file in its place, and this one must stay unwritten.
    let root_disk = std::fs::File::open(repo_root().join("build/guest/debian-ami/root.raw")).ok();
    let before = root_disk.as_ref().map(mtime);
    let started = std::time::Instant::now();
    let lab = || {
        run_in_lab(
            "unshare -n bash /vireo/ami-host.sh",
            &["--ami", "--mem", "3072", "--timeout", "720", "--put", &put],
        )
    };
    let mut r: Ran = lab();
    // A nested guest that faults (vireo-vmm's status 4): 1 boot in 12 of this image in the lab
    // triple-faulted on a vCPU midway (2026-12, on a busy host); the emulated host is the
    // suspect, as for the stalls of docs/lab.md. The evidence is kept (on stderr and in
    // build/lab/retries.log, which `make test` prints) and the lab runs once more; a second
    // fault fails the test below.
    if values(&r.stdout, "VMM-EXIT ") == ["4"] {
        let first = scratch("debian-ami-lab-fault.out");
        std::fs::write(&first, &r.stdout).unwrap();
        let why = values(&r.stdout, "VMMLOG ").join(" / ");
        eprintln!(
            "the AMI's VM faulted ({why}); its output is in {}; running the lab again",
            first.display()
        );
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(repo_root().join("build/lab/retries.log"))
            .and_then(|mut f| {
                std::io::Write::write_all(
                    &mut f,
                    format!(
                        "lab_debian_ami: the guest faulted ({why}), ran again; output in {}\n",
                        first.display()
                    )
                    .as_bytes(),
                )
            });
        r = lab();
    }
    let wall = started.elapsed().as_secs_f64();
    let out = &r.stdout;
    let saved = scratch("debian-ami-lab.out");
    std::fs::write(&saved, out).unwrap();
    eprintln!(
        "lab output (the guest's console with lab times): {}",
        saved.display()
    );
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(!out.contains("HOST-FAIL"), "{r:?}");
    // Ctrl-Alt-Del: systemd's ctrl-alt-del.target reboots, which ends vireo-vmm with status 3.
    assert_eq!(
        values(out, "VMM-EXIT "),
        ["3"],
        "{:?}: {r:?}",
        values(out, "VMMLOG ")
    );
    if let (Some(before), Some(f)) = (before, &root_disk) {
        assert_eq!(before, mtime(f), "the lab wrote to the image's root volume");
    }

    let lines = console(out);
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    let all = text.join("\n");
    let t0: f64 = values(out, "T0 ")[0].parse().unwrap();
    let has = |s: &str| text.iter().any(|l| l.contains(s));

    // The kernel, its initramfs and the root volume on virtio-blk over virtio-mmio.
    assert!(has("Linux version 6.1."), "{all}");
    assert!(has("root=/dev/vda"), "{all}");
    assert!(has("virtio_blk virtio0: [vda]"), "{all}");
    assert!(has("EXT4-fs (vda): mounted filesystem"), "{all}");
    // systemd up to multi-user (its journal says so: once the getty owns the console, systemd
    // may stop printing its status there), a getty on the serial console.
    assert!(has("Welcome to Debian GNU/Linux 12 (bookworm)!"), "{all}");
    let journal = values(out, "JOURNAL ");
    assert!(
        journal
            .iter()
            .any(|l| l.starts_with("Reached target multi-user.target")),
        "{journal:?}"
    );
    assert!(
        journal.iter().any(|l| l.starts_with("Started ssh.service")),
        "sshd started (with the host keys cloud-init made): {journal:?}"
    );
    assert!(has("Started serial-getty@ttyS0"), "{all}");
    assert!(has(" login: "), "{all}");
    // cloud-init: its stages, the None datasource (no metadata service here), eth0's lease.
    for stage in [
        "'init-local'",
        "'init'",
        "'modules:config'",
        "'modules:final'",
    ] {
        assert!(
            has(&format!("running {stage}")),
            "cloud-init {stage}: {all}"
        );
    }
    assert!(has("Datasource DataSourceNone"), "{all}");
    assert!(
        has("|  eth0  | True |    172.16.0.1"),
        "eth0 has a lease from the lab's DHCP server: {all}"
    );
    assert!(
        values(out, "DHCPD ")
            .iter()
            .any(|l| l.contains("sending ACK")),
        "{r:?}"
    );

    // The host key fingerprints, as cloud-init prints them for GetConsoleOutput.
    let start = text
        .iter()
        .position(|l| l.contains("-----BEGIN SSH HOST KEY FINGERPRINTS-----"))
        .unwrap_or_else(|| panic!("no host key fingerprints on the console: {all}"));
    let end = start
        + text[start..]
            .iter()
            .position(|l| l.contains("-----END SSH HOST KEY FINGERPRINTS-----"))
            .expect("the end of the fingerprints");
    let printed: BTreeSet<String> = text[start + 1..end]
        .iter()
        .map(|l| {
            l.split_once("cloud-init: ")
                .map_or(*l, |(_, f)| f)
                .trim()
                .to_string()
        })
        .collect();
    let keys = values(out, "HOSTKEY ");
    let types: BTreeSet<&str> = keys.iter().filter_map(|k| k.split(' ').next()).collect();
    assert_eq!(
        types,
        BTreeSet::from(["ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa"]),
        "{r:?}"
    );
    assert_eq!(
        printed,
        fingerprints(&keys),
        "the console's fingerprints are those of the keys on the disk"
    );
    // And the public keys themselves (cloud-init's "SSH HOST KEY KEYS" block).
    for k in &keys {
        let blob = k.split(' ').nth(1).unwrap();
        assert!(has(blob), "public key {k} not on the console");
    }

    // The default user, as on Debian's AMIs.
    assert_eq!(
        values(out, "PASSWD "),
        ["admin:x:1000:1000:Debian:/home/admin:/bin/bash"],
        "{r:?}"
    );
    let shadow = values(out, "SHADOW ");
    assert!(
        shadow.len() == 1 && (shadow[0] == "admin:!" || shadow[0] == "admin:*"),
        "admin's password is locked: {shadow:?}"
    );
    assert_eq!(
        values(out, "SUDOERS "),
        ["admin ALL=(ALL) NOPASSWD:ALL"],
        "{r:?}"
    );
    assert!(
        values(out, "GROUP ").first().is_some_and(|g| g
            .split(':')
            .nth(3)
            .unwrap_or("")
            .split(',')
            .any(|u| u == "admin")),
        "{r:?}"
    );
    let machine_id = values(out, "MACHINE-ID ");
    assert!(
        machine_id.len() == 1 && machine_id[0].len() == 32,
        "a machine id made at first boot: {machine_id:?}"
    );
    assert_eq!(values(out, "BOOT-FINISHED ").len(), 1, "{r:?}");
    let status: serde_json::Value =
        serde_json::from_str(values(out, "STATUS ")[0]).expect("cloud-init's status.json");
    for stage in ["init-local", "init", "modules-config", "modules-final"] {
        let s = &status["v1"][stage];
        assert!(s["finished"].is_number(), "{stage} finished: {status}");
        assert_eq!(s["errors"], serde_json::json!([]), "{stage}: {status}");
    }

    // The reboot was systemd's, a clean one.
    assert!(!out.contains("VMM-STILL-RUNNING"), "{r:?}");
    assert!(has("Reached target reboot.target"), "{all}");
    assert!(has("reboot: Restarting system"), "{all}");

    let at = |what: &str| when(&lines, t0, what).unwrap_or(f64::NAN);
    if let Some(s) = journal.iter().find(|l| l.starts_with("Startup finished")) {
        eprintln!("the guest's systemd: {s}");
    }
    eprintln!(
        "Debian AMI in the lab, seconds from vireo-vmm's start: kernel {:.1}, initramfs {:.1}, \
         systemd {:.1}, cloud-init init-local {:.1}, network up {:.1}, login prompt {:.1}, \
         cloud-init finished {:.1}, fingerprints {:.1}; lab run {wall:.0} s",
        at("Linux version"),
        at("Run /init as init process"),
        at("Welcome to Debian"),
        at("running 'init-local'"),
        at("Reached target network.target"),
        at(" login: "),
        at("finished at"),
        at("-----BEGIN SSH HOST KEY FINGERPRINTS-----"),
    );
}
