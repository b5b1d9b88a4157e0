//! The EC2 workflow end to end with the Debian 12 AMI (images/build-debian-ami.sh), in the lab
//! (`lab/lab --ami --net`): vireod with its data plane, a public pool and an uplink namespace
//! `outside` that stands for the internet (192.0.2.1 on its loopback is "the user's address").
//!
//! With the `vireo` CLI: `keys create` (the private key in ./labkey.pem), a VPC with a subnet,
//! an internet gateway and a default route to it, a group allowing tcp 22 from 192.0.2.1/32
//! only (and tcp 8080 inside the VPC), then RunInstances of the AMI with that key, a public
//! address and cloud-config user data that writes a file; beside it a second instance, the
//! busybox Debian guest (seconds to boot), whose user data waits for a token on tcp 8080.
//! Once the console (GetConsoleOutput) shows cloud-init's host keys, `vireo ssh` logs in as
//! `admin` from `outside` (`--netns outside`, `-o BindAddress=192.0.2.1`), the real OpenSSH
//! client checking the server's host key against the console's keys. Checked:
//!
//! - the console through GetConsoleOutput: the kernel with the image's initramfs and its root
//!   on vda, systemd, cloud-init's stages with the EC2 datasource, the host key fingerprints and
//!   keys; the fingerprints are those of the key the client was shown (its debug log) and of the
//!   guest's own /etc/ssh keys, and the console's public keys are the guest's;
//! - over SSH: Debian 12, `dmidecode` (system UUID starting with ec2, asset tag = instance id),
//!   IMDSv2 with curl (a token, then its instance id with it), IMDSv1 answered, the user data's
//!   file, cloud-init done with cloud id `aws`, `admin` with a locked password and passwordless
//!   sudo, a machine id, sshd running;
//! - another instance cannot read this one's metadata: A sends its token to B over the VPC; B
//!   presenting it gets 401, B's own IMDSv1 request answers B's id;
//! - after ModifyInstanceMetadataOptions HttpTokens=required, a second SSH session: IMDSv1 gets
//!   401, IMDSv2 still works;
//! - a wrong key is refused by sshd (`Permission denied (publickey)`); from another address
//!   of `outside` (not 192.0.2.1) the group lets no connection through;
//! - terminate ends both VMMs.
//!
//! RunInstances → running → host keys on the console → first SSH login are timed (lab clock)
//! and printed.
//!
//! Out of `make test` (`--ignored`, a second AMI boot): the same, then CreateImage of the
//! instance (`--no-reboot`, after a file was added over SSH) and an instance of the new image,
//! logged in to with `vireo ssh`: the file is there, and its host keys are new ones.

use std::collections::BTreeSet;
use std::process::Command;

use vireo_tests::{repo_root, run_in_lab, scratch, Ran};

/// The lab's part.
const HOST: &str = r#"
set -u
export PATH=/vireo/bin:$PATH
export AWS_SHARED_CREDENTIALS_FILE=/tmp/vd/credentials AWS_CONFIG_FILE=/tmp/vd/config
export VIREO_ENDPOINT=http://127.0.0.1:8787
now() { echo "${EPOCHREALTIME}"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
fail() { echo "SETUP-FAILED $*"; sed 's/^/VIREOD-LOG /' /tmp/vireod.log 2>/dev/null | tail -n 40; exit 1; }
id_of() { grep -o "$1-[0-9a-f]*" | head -1; }
ip link set lo up

# The AMI as vireod registers it: its kernel and initramfs, and its root volume as a regular
# file (lab/lab gives it as a disk; RegisterImage copies it into vireod's image store, sparse).
mkdir -p /tmp/ami
T=$(now)
cp /vireo/ami/root.raw /tmp/ami/root.raw || fail "copy of the root volume"
echo "COPIED $(since "$T") s"
T=$(now)
CMDLINE=$(sed -n 's/.*"cmdline": *"\([^"]*\)".*/\1/p' /vireo/ami/debian-ami.json)
cat >/tmp/ami/debian-ami.json <<JSON
{"name": "debian-12-cloud", "kernel": "/vireo/ami/vmlinuz", "initrd": "/vireo/ami/initrd.img",
 "root_disk": "root.raw", "cmdline": "$CMDLINE"}
JSON
cat >/tmp/debian.json <<'JSON'
{"name": "vireo-debian-12", "kernel": "/vireo/guest/vmlinux", "initrd": "/vireo/guest/initrd.cpio.gz",
 "cmdline": "console=ttyS0 panic=-1 quiet vireo.exit=wait"}
JSON
vireod init --data-dir /tmp/vd --image /tmp/ami/debian-ami.json --image /tmp/debian.json >/tmp/init.log 2>&1 ||
    { cat /tmp/init.log; fail init; }
rm -f /tmp/ami/root.raw
echo "REGISTERED $(since "$T") s"
AMI=$(grep ': debian-12-cloud$' /tmp/init.log | id_of ami)
BUSYBOX=$(grep ': vireo-debian-12$' /tmp/init.log | id_of ami)

# The internet: a namespace whose loopback has the user's address.
ip netns add outside
ip -n outside link set lo up
ip -n outside addr add 192.0.2.1/32 dev lo
vireod serve --data-dir /tmp/vd --listen 127.0.0.1:8787 --capacity-memory-mib 2560 \
    --public-cidr 198.51.100.0/24 --uplink-netns outside --shutdown-timeout 30 >/tmp/vireod.log 2>&1 &
VIREOD=$!
trap 'kill $VIREOD 2>/dev/null' EXIT
i=0
until vireo types >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 100 ] || fail "vireod did not answer"
    sleep 0.1
done
VPC=$(vireo vpc create 10.0.0.0/16 --name ami | id_of vpc)
[ -n "$VPC" ] || fail vpc
# DNS names for the instances, as in EC2's default VPCs (sudo looks its host name up).
vireo call ModifyVpcAttribute VpcId="$VPC" EnableDnsHostnames.Value=true >/dev/null || fail dns-hostnames
SUB=$(vireo subnet create "$VPC" 10.0.1.0/24 | id_of subnet)
[ -n "$SUB" ] || fail subnet
IGW=$(vireo call CreateInternetGateway | id_of igw)
vireo call AttachInternetGateway InternetGatewayId="$IGW" VpcId="$VPC" >/dev/null || fail attach
RTB=$(vireo call DescribeRouteTables Filter.1.Name=vpc-id Filter.1.Value.1="$VPC" | id_of rtb)
vireo call CreateRoute RouteTableId="$RTB" DestinationCidrBlock=0.0.0.0/0 GatewayId="$IGW" >/dev/null || fail route
SG=$(vireo sg create ssh --vpc "$VPC" | id_of sg)
[ -n "$SG" ] || fail sg
vireo sg allow "$SG" --proto tcp --port 22 --cidr 192.0.2.1/32 >/dev/null || fail allow-22
vireo sg allow "$SG" --proto tcp --port 8080 --cidr 10.0.0.0/16 >/dev/null || fail allow-8080
# The key pair: vireo keys create writes ./labkey.pem, where vireo ssh looks for it.
cd /tmp
vireo keys create labkey | sed 's/^/KEY /'
[ -f /tmp/labkey.pem ] || fail "no labkey.pem"
cat >/tmp/cloud-config.yaml <<'YAML'
#cloud-config
write_files:
  - path: /etc/vireo-lab.txt
    content: |
      written by cloud-init from the user data
YAML
# B: the busybox guest. A lease, then a token from A on tcp 8080, presented to the service.
cat >/tmp/b.sh <<'SH'
#!/bin/sh
cat >/tmp/dhcp.sh <<'S'
#!/bin/sh
case $1 in bound | renew)
    ifconfig "$interface" "$ip" netmask "$subnet" up
    route add default gw "$router" dev "$interface"
    ;;
esac
S
chmod +x /tmp/dhcp.sh
ifconfig eth0 up
udhcpc -i eth0 -s /tmp/dhcp.sh -q -n -t 20 -T 1 >/dev/null 2>&1 || echo "B-NO-LEASE"
req() {
    m=$1 p=$2
    shift 2
    {
        printf '%s %s HTTP/1.0\r\nHost: 169.254.169.254\r\n' "$m" "$p"
        for h in "$@"; do printf '%s\r\n' "$h"; done
        printf '\r\n'
        sleep 2
    } | nc -w 10 169.254.169.254 80 | tr -d '\r'
}
echo "B-LISTENING"
AT=$(nc -l -p 8080 </dev/null | tr -d '\r\n')
echo "B-GOT-TOKEN ${#AT}"
echo "B-WITH-A-TOKEN $(req GET /latest/meta-data/instance-id "X-aws-ec2-metadata-token: $AT" | head -n 1 | cut -d ' ' -f 2)"
echo "B-V1-ID $(req GET /latest/meta-data/instance-id | sed '1,/^$/d')"
echo "B-DONE"
SH
T_RUN=$(now)
A=$(vireo run --image "$AMI" --type t3.micro --subnet "$SUB" --sg "$SG" --private-ip 10.0.1.10 --public-ip \
    --key labkey --user-data /tmp/cloud-config.yaml --json | id_of i)
B=$(vireo run --image "$BUSYBOX" --type t3.nano --subnet "$SUB" --sg "$SG" --private-ip 10.0.1.11 \
    --user-data /tmp/b.sh --json | id_of i)
echo "ID-A $A"
echo "ID-B $B"
[ -n "$A" ] && [ -n "$B" ] || fail "a launch gave no id"
state_of() { vireo describe "$1" --json | sed -n 's/.*"state": *"\([a-z-]*\)".*/\1/p' | head -1; }
PUB=$(vireo describe "$A" --json | sed -n 's/.*"public_ip": *"\([0-9.]*\)".*/\1/p')
echo "PUBLIC-A $PUB"
console_of() { vireo console "$1" 2>/dev/null | tr -d '\r'; }
# Running, then cloud-init's host keys on the console (at most 15 minutes from the launch:
# the lab's guest runs several times slower on a busy host). Polled every 2 s, the state every
# 20 s: each poll is a vireo process and a request that the guest's vCPUs wait for.
END=$((EPOCHSECONDS + 900))
until [ "$(state_of "$A")" = running ]; do
    [ $EPOCHSECONDS -lt $END ] || fail "A not running: $(state_of "$A")"
    sleep 0.5
done
echo "RUNNING-AFTER $(since "$T_RUN") s"
i=0
until console_of "$A" | grep -q -- '-----END SSH HOST KEY KEYS-----'; do
    i=$((i + 1))
    if [ $((i % 10)) = 0 ]; then
        st=$(state_of "$A")
        if [ "$st" != running ]; then
            echo "A-DIED $st $(vireo describe "$A" --json | sed -n 's/.*"state_reason": *"\([^"]*\)".*/\1/p')"
            break
        fi
    fi
    [ $EPOCHSECONDS -lt $END ] || { echo "A-NO-KEYS"; break; }
    sleep 2
done
echo "KEYS-AFTER $(since "$T_RUN") s"
# The end: B's lines, A's console, both terminated.
finish() {
    local i=0
    until console_of "$B" | grep -q '^B-DONE'; do
        i=$((i + 1))
        [ $i -lt 60 ] || { echo "B-NOT-DONE"; break; }
        sleep 1
    done
    console_of "$B" | grep '^B-' | sed 's/^/CONSOLE-B /'
    # A's console as GetConsoleOutput gives it (its last 64 KiB), and the whole of it (vireod's file).
    console_of "$A" | sed 's/^/C /'
    tr -d '\r' </tmp/vd/instances/"$A"/console.log | sed 's/^/F /'
    [ ! -f /vireo/create-image ] || [ -z "${LOGGED_IN:-}" ] || image_phase
    vireo terminate "$A" "$B" ${C:+"$C"} >/dev/null
    vmms() { for p in /proc/[0-9]*; do readlink "$p/exe"; done 2>/dev/null | grep -c vireo-vmm; }
    i=0
    while [ "$(vmms)" -gt 0 ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i + 1)); done
    echo "VMMS-LEFT=$(vmms)"
    sed 's/^/VIREOD-LOG /' /tmp/vireod.log | tail -n 60
    exit 0
}
# With /vireo/create-image: CreateImage of A (a file added over SSH first), then an instance C
# of the new image, logged in to: the file is there, the host keys are new (cloud-init's
# per-instance modules ran again for the new instance id).
image_phase() {
    ssh_a "$A" -- 'echo made on A | sudo -n tee /etc/vireo-from-a.txt >/dev/null && sync'
    echo "MARKED rc=$?"
    local t
    t=$(now)
    IMG=$(timeout 600 vireo images create --instance "$A" --name from-a --no-reboot | id_of ami)
    echo "IMAGE $IMG $(vireo call DescribeImages ImageId.1="$IMG" | grep -o '<imageState>[a-z]*' | cut -d '>' -f 2) after $(since "$t") s"
    [ -n "$IMG" ] || return
    vireo terminate "$A" "$B" >/dev/null
    t=$(now)
    C=$(vireo run --image "$IMG" --type t3.micro --subnet "$SUB" --sg "$SG" --private-ip 10.0.1.12 --public-ip \
        --key labkey --json | id_of i)
    echo "ID-C $C"
    [ -n "$C" ] || return
    local end=$((EPOCHSECONDS + 900))
    until console_of "$C" | grep -q -- '-----END SSH HOST KEY KEYS-----'; do
        [ $EPOCHSECONDS -lt $end ] || { echo "C-NO-KEYS"; return; }
        sleep 2
    done
    echo "C-KEYS-AFTER $(since "$t") s"
    cat >/tmp/session3.sh <<'SH'
echo "S3-FILE $(cat /etc/vireo-from-a.txt)"
echo "S3-ID $(curl -s -m 10 -H "X-aws-ec2-metadata-token: $(curl -s -m 10 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)" http://169.254.169.254/latest/meta-data/instance-id)"
for k in /etc/ssh/ssh_host_*_key.pub; do echo "S3-HOSTKEY $(cat "$k")"; done
SH
    local n=0 rc
    while :; do
        ssh_a "$C" -- bash -s </tmp/session3.sh 2>/tmp/ssh3.err
        rc=$?
        n=$((n + 1))
        [ $rc = 255 ] && [ $n -lt 4 ] || break
        sleep 5
    done
    echo "SESSION3 rc=$rc after $(since "$t") s"
    sed 's/^/SSH3-ERR /' /tmp/ssh3.err | tail -n 5
    console_of "$C" | sed 's/^/D /'
}
# Nothing to log in to: the rest would only wait for its bounds.
console_of "$A" | grep -q -- '-----END SSH HOST KEY KEYS-----' || finish

# ssh_a ARGS...: vireo ssh to A from the user's address in `outside`, bounded.
SSHOPTS="-o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=10 -o ServerAliveCountMax=6"
ssh_a() { timeout 180 vireo ssh --netns outside -o BindAddress=192.0.2.1 $SSHOPTS "$@"; }
# The first login, retried while sshd is not there yet (status 255), at most 4 tries.
n=0
while :; do
    ssh_a -o LogLevel=DEBUG1 "$A" -- true 2>/tmp/ssh-first.err
    rc=$?
    n=$((n + 1))
    [ $rc = 255 ] && [ $n -lt 4 ] || break
    sleep 5
done
echo "FIRST-LOGIN rc=$rc tries=$n after $(since "$T_RUN") s"
[ $rc != 0 ] || LOGGED_IN=1
sed 's/^/SSH-FIRST /' /tmp/ssh-first.err | grep -e 'Server host key' -e 'Authenticated to' -e 'Permission denied' \
    -e 'Host key verification' -e 'Connection' -e 'ssh:' -e 'vireo:'

# One session: what the guest says about itself; A's token to B.
cat >/tmp/session1.sh <<'SH'
echo "S1-OS $(. /etc/os-release; echo "$PRETTY_NAME")"
echo "S1-WHOAMI $(id -un) $(hostname)"
echo "S1-UUID $(sudo -n dmidecode -s system-uuid)"
echo "S1-SERIAL $(sudo -n dmidecode -s system-serial-number)"
echo "S1-ASSET $(sudo -n dmidecode -s chassis-asset-tag)"
TOKEN=$(curl -s -m 10 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" http://169.254.169.254/latest/api/token)
echo "S1-TOKEN-LEN ${#TOKEN}"
echo "S1-V2-ID $(curl -s -m 10 -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/instance-id)"
echo "S1-V2-KEY $(curl -s -m 10 -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/public-keys/0/openssh-key | cut -d ' ' -f 1)"
echo "S1-V1-CODE $(curl -s -m 10 -o /dev/null -w '%{http_code}' http://169.254.169.254/latest/meta-data/instance-id)"
echo "S1-FILE $(cat /etc/vireo-lab.txt)"
echo "S1-CLOUD-ID $(cat /run/cloud-init/cloud-id 2>/dev/null)"
cloud-init status --long 2>&1 | sed 's/^/S1-CI-STATUS /'
echo "S1-PASSWD $(getent passwd admin)"
echo "S1-SHADOW $(sudo -n grep '^admin:' /etc/shadow | cut -d: -f1,2)"
echo "S1-SUDO $(sudo -n id -un)"
echo "S1-MACHINE-ID $(cat /etc/machine-id)"
echo "S1-SSHD $(systemctl is-active ssh)"
echo "S1-SYSTEM $(systemctl is-system-running)"
for k in /etc/ssh/ssh_host_*_key.pub; do echo "S1-HOSTKEY $(cat "$k")"; done
i=0
until echo "$TOKEN" 2>/dev/null >/dev/tcp/10.0.1.11/8080; do
    i=$((i + 1))
    [ $i -lt 30 ] || { echo "S1-TOKEN-NOT-SENT"; break; }
    sleep 1
done
echo "S1-END"
SH
ssh_a "$A" -- bash -s </tmp/session1.sh 2>/tmp/ssh1.err
echo "SESSION1 rc=$?"
sed 's/^/SSH1-ERR /' /tmp/ssh1.err | tail -n 5

# Tokens required from now on: IMDSv1 refused, IMDSv2 still served.
vireo call ModifyInstanceMetadataOptions InstanceId="$A" HttpTokens=required >/dev/null || echo "MODIFY-FAILED"
cat >/tmp/session2.sh <<'SH'
echo "S2-V1-CODE $(curl -s -m 10 -o /dev/null -w '%{http_code}' http://169.254.169.254/latest/meta-data/instance-id)"
TOKEN=$(curl -s -m 10 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" http://169.254.169.254/latest/api/token)
echo "S2-V2-CODE $(curl -s -m 10 -o /dev/null -w '%{http_code}' -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/instance-id)"
SH
ssh_a "$A" -- bash -s </tmp/session2.sh 2>/tmp/ssh2.err
echo "SESSION2 rc=$?"
sed 's/^/SSH2-ERR /' /tmp/ssh2.err | tail -n 5

# A key that is not the instance's: sshd refuses it.
ssh_a -i /vireo/wrong.pem "$A" -- echo WRONG-KEY-GOT-IN 2>/tmp/ssh-wrong.err
echo "WRONG-KEY rc=$?"
sed 's/^/SSH-WRONG /' /tmp/ssh-wrong.err | tail -n 3
# From another address of the outside (its side of the uplink): the group lets nothing in.
timeout 60 vireo ssh --netns outside -o BatchMode=yes -o ConnectTimeout=5 "$A" -- echo OTHER-ADDRESS-GOT-IN 2>/tmp/ssh-other.err
echo "OTHER-ADDRESS rc=$?"
sed 's/^/SSH-OTHER /' /tmp/ssh-other.err | tail -n 3
finish
"#;

/// The console lines behind `prefix` (`C `: GetConsoleOutput's, `F `: the whole file's),
/// with terminal escapes removed.
fn console(out: &str, prefix: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(strip_escapes)
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

/// The one value of `key` in `out`.
fn one<'a>(out: &'a str, key: &str) -> &'a str {
    let v = values(out, key);
    assert_eq!(v.len(), 1, "one {key:?} line wanted: {v:?}");
    v[0].trim()
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

/// The lines between the console's `-----BEGIN what-----` and `-----END what-----` (the
/// last such block), each without cloud-init's logger prefix.
fn block(text: &[String], what: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {what}-----");
    let end = format!("-----END {what}-----");
    let start = text
        .iter()
        .rposition(|l| l.contains(&begin))
        .unwrap_or_else(|| panic!("no {begin} on the console: {}", text.join("\n")));
    let stop = start
        + text[start..]
            .iter()
            .position(|l| l.contains(&end))
            .unwrap_or_else(|| panic!("no {end} after {begin}"));
    text[start + 1..stop]
        .iter()
        .map(|l| {
            // "<14>Dec  8 01:02:03 ec2: 256 SHA256:... (ED25519)" or the bare line: neither a
            // fingerprint nor a key has ": " in it.
            l.rsplit_once(": ")
                .map_or(l.as_str(), |(_, v)| v)
                .trim()
                .to_string()
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// A private key no instance has (ssh-keygen), mode 0600 as ssh wants it.
fn wrong_key() -> std::path::PathBuf {
    let f = scratch("wrong.pem");
    let _ = std::fs::remove_file(&f);
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "wrong", "-f"])
        .arg(&f)
        .output()
        .expect("ssh-keygen (openssh-client, scripts/install-deps.sh)");
    assert!(o.status.success(), "ssh-keygen: {o:?}");
    f
}

/// Runs HOST in the lab (once more if the AMI's instance died), with the CreateImage phase
/// when `create_image`; the output, and the seconds it took.
fn lab_run(create_image: bool) -> (Ran, f64) {
    let host = scratch("ami-host.sh");
    std::fs::write(&host, HOST).unwrap();
    let wrong = wrong_key();
    let put_host = format!("{}:/vireo/ami-host.sh", host.display());
    let put_key = format!("{}:/vireo/wrong.pem", wrong.display());
    let mut args = vec![
        "--ami".to_string(),
        "--net".into(),
        "--mem".into(),
        "4096".into(),
        "--timeout".into(),
        if create_image { "2100" } else { "1200" }.into(),
        "--put".into(),
        put_host,
        "--put".into(),
        put_key,
    ];
    if create_image {
        let flag = scratch("create-image");
        std::fs::write(&flag, "").unwrap();
        args.extend([
            "--put".into(),
            format!("{}:/vireo/create-image", flag.display()),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let lab = || run_in_lab("bash /vireo/ami-host.sh", &args);
    let mut r: Ran = lab();
    // A nested guest that faults: 1 boot in 12 of this image in the lab triple-faulted on a
    // vCPU midway (2026-12, on a busy host, vireo-vmm's status 4); the emulated host is the
    // suspect, as for the stalls of docs/lab.md. The evidence is kept (on stderr and in
    // build/lab/retries.log, which `make test` prints) and the lab runs once more; a second
    // fault fails the test below.
    if let Some(why) = values(&r.stdout, "A-DIED ").first() {
        let first = scratch("debian-ami-lab-fault.out");
        std::fs::write(&first, &r.stdout).unwrap();
        eprintln!(
            "the AMI's instance died ({why}); its output is in {}; running the lab again",
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
                        "lab_debian_ami: the instance died ({why}), ran again; output in {}\n",
                        first.display()
                    )
                    .as_bytes(),
                )
            });
        r = lab();
    }
    let wall = started.elapsed().as_secs_f64();
    let saved = scratch("debian-ami-lab.out");
    std::fs::write(&saved, &r.stdout).unwrap();
    eprintln!("lab output: {}", saved.display());
    (r, wall)
}

#[test]
fn debian_ami_over_ssh_with_key_pair_user_data_and_metadata() {
    let (r, wall) = lab_run(false);
    check_instance(&r, wall);
}

// Out of `make test` for its time: a second AMI boot, ~2 minutes on a quiet host and many
// more on a busy one. Run it with
// `cargo test -p vireo-tests --test lab_debian_ami -- --ignored create_image`.
#[test]
#[ignore = "a second AMI boot; run with --ignored (see the comment)"]
fn create_image_of_the_instance_boots_with_its_file_and_new_host_keys() {
    let (r, wall) = lab_run(true);
    let printed_a = check_instance(&r, wall);
    let out = &r.stdout;
    assert_eq!(one(out, "MARKED "), "rc=0", "{r:?}");
    let image = one(out, "IMAGE ");
    assert!(
        image.starts_with("ami-") && image.contains(" available after "),
        "{image}"
    );
    let c_id = one(out, "ID-C ");
    assert!(values(out, "C-NO-KEYS").is_empty(), "{r:?}");
    assert!(one(out, "SESSION3 ").starts_with("rc=0 "), "{r:?}");
    assert_eq!(
        one(out, "S3-FILE "),
        "made on A",
        "the file added before CreateImage"
    );
    assert_eq!(one(out, "S3-ID "), c_id);
    // New host keys, printed on C's console and used by C's sshd (vireo ssh checked them).
    let printed_c: BTreeSet<String> = block(&console(out, "D "), "SSH HOST KEY FINGERPRINTS")
        .into_iter()
        .collect();
    assert_eq!(printed_c, fingerprints(&values(out, "S3-HOSTKEY ")));
    assert!(
        printed_c.is_disjoint(&printed_a),
        "the new instance kept the old host keys: {printed_c:?}"
    );
    eprintln!(
        "CreateImage: {image}; the new instance's first login {}",
        one(out, "SESSION3 ")
    );
}

/// The checks of the first instance (and the second one's metadata requests); the host key
/// fingerprints its console showed.
fn check_instance(r: &Ran, wall: f64) -> BTreeSet<String> {
    let out = &r.stdout;
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(values(out, "SETUP-FAILED").is_empty(), "{r:?}");
    assert!(values(out, "A-DIED ").is_empty(), "{r:?}");
    assert!(values(out, "A-NO-KEYS").is_empty(), "{r:?}");
    let a_id = one(out, "ID-A ");
    let b_id = one(out, "ID-B ");
    assert!(a_id.starts_with("i-") && b_id.starts_with("i-") && a_id != b_id);

    // The whole console: the image's kernel, initramfs and root volume, systemd, cloud-init
    // with the EC2 datasource. GetConsoleOutput gives its end (64 KiB at most).
    let full = console(out, "F ");
    let text = console(out, "C ");
    let all = full.join("\n");
    let has = |s: &str| full.iter().any(|l| l.contains(s));
    for s in [
        "Linux version 6.1.",
        "root=/dev/vda",
        "EXT4-fs (vda): mounted filesystem",
        "Welcome to Debian GNU/Linux 12 (bookworm)!",
        "running 'init-local'",
        "running 'modules:final'",
        "Datasource DataSourceEc2",
    ] {
        assert!(has(s), "{s:?} on the console: {all}");
    }
    // (Its first line may begin mid-line; the guest may have written more since.)
    assert!(
        text.len() > 1 && full.windows(text.len() - 1).any(|w| w == &text[1..]),
        "GetConsoleOutput gives the console's end: {text:#?}"
    );
    // The host key fingerprints and keys cloud-init printed, and the guest's own keys.
    let printed: BTreeSet<String> = block(&text, "SSH HOST KEY FINGERPRINTS")
        .into_iter()
        .collect();
    let guest_keys = values(out, "S1-HOSTKEY ");
    let types: BTreeSet<&str> = guest_keys
        .iter()
        .filter_map(|k| k.split(' ').next())
        .collect();
    assert_eq!(
        types,
        BTreeSet::from(["ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa"]),
        "{r:?}"
    );
    assert_eq!(
        printed,
        fingerprints(&guest_keys),
        "the console's fingerprints are those of the guest's host keys"
    );
    let console_keys: BTreeSet<String> = block(&text, "SSH HOST KEY KEYS")
        .iter()
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    let guest_pub: BTreeSet<String> = guest_keys
        .iter()
        .map(|k| k.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        console_keys, guest_pub,
        "the console's host keys are the guest's"
    );

    // The first login: the key the client was shown is one the console printed.
    assert!(one(out, "FIRST-LOGIN ").starts_with("rc=0 "), "{r:?}");
    let first = values(out, "SSH-FIRST ");
    let shown: Vec<&str> = first
        .iter()
        .filter_map(|l| l.split_once("Server host key: ").map(|(_, k)| k.trim()))
        .collect();
    assert_eq!(shown.len(), 1, "{first:?}");
    // "ssh-ed25519 SHA256:..." against "256 SHA256:... root@host (ED25519)".
    let shown_fp = shown[0].split(' ').nth(1).unwrap();
    assert!(
        printed
            .iter()
            .any(|p| p.split(' ').nth(1) == Some(shown_fp)),
        "the server's key {shown_fp} is not among the console's {printed:?}"
    );
    assert!(
        first.iter().any(|l| l.contains("Authenticated to")),
        "{first:?}"
    );

    // The session: the image, SMBIOS, IMDSv2 and v1, the user data, cloud-init, the user.
    assert_eq!(one(out, "SESSION1 "), "rc=0", "{r:?}");
    assert_eq!(one(out, "S1-OS "), "Debian GNU/Linux 12 (bookworm)");
    assert!(
        one(out, "S1-WHOAMI ").starts_with("admin ip-10-0-1-10"),
        "{r:?}"
    );
    let uuid = one(out, "S1-UUID ").to_ascii_lowercase();
    assert!(uuid.starts_with("ec2") && uuid.len() == 36, "{uuid}");
    assert_eq!(one(out, "S1-SERIAL ").to_ascii_lowercase(), uuid);
    assert_eq!(one(out, "S1-ASSET "), a_id);
    assert_eq!(one(out, "S1-TOKEN-LEN "), "55", "{r:?}");
    assert_eq!(one(out, "S1-V2-ID "), a_id, "IMDSv2: {r:?}");
    assert_eq!(one(out, "S1-V2-KEY "), "ssh-ed25519", "{r:?}");
    assert_eq!(
        one(out, "S1-V1-CODE "),
        "200",
        "IMDSv1 while optional: {r:?}"
    );
    assert_eq!(
        one(out, "S1-FILE "),
        "written by cloud-init from the user data"
    );
    assert_eq!(one(out, "S1-CLOUD-ID "), "aws", "{r:?}");
    let ci = values(out, "S1-CI-STATUS ");
    assert!(ci.contains(&"status: done"), "{ci:?}");
    assert_eq!(
        one(out, "S1-PASSWD "),
        "admin:x:1000:1000:Debian:/home/admin:/bin/bash"
    );
    let shadow = one(out, "S1-SHADOW ");
    assert!(
        shadow == "admin:!" || shadow == "admin:*",
        "admin's password is locked: {shadow}"
    );
    assert_eq!(one(out, "S1-SUDO "), "root", "passwordless sudo");
    assert_eq!(one(out, "S1-MACHINE-ID ").len(), 32, "{r:?}");
    assert_eq!(one(out, "S1-SSHD "), "active");
    assert!(values(out, "S1-TOKEN-NOT-SENT").is_empty(), "{r:?}");
    assert!(values(out, "S1-END").len() == 1, "{r:?}");

    // Another instance cannot use A's metadata: A's token is refused; its own request is its own.
    let b = values(out, "CONSOLE-B ");
    assert!(b.contains(&"B-GOT-TOKEN 55"), "{b:?}");
    assert!(b.contains(&"B-WITH-A-TOKEN 401"), "{b:?}");
    assert!(b.contains(&format!("B-V1-ID {b_id}").as_str()), "{b:?}");

    // Tokens required: IMDSv1 refused, IMDSv2 served.
    assert!(values(out, "MODIFY-FAILED").is_empty(), "{r:?}");
    assert_eq!(one(out, "SESSION2 "), "rc=0", "{r:?}");
    assert_eq!(one(out, "S2-V1-CODE "), "401", "{r:?}");
    assert_eq!(one(out, "S2-V2-CODE "), "200", "{r:?}");

    // A wrong key, and an address the group does not allow.
    assert_eq!(one(out, "WRONG-KEY "), "rc=255", "{r:?}");
    assert!(!out.contains("WRONG-KEY-GOT-IN"), "{r:?}");
    assert!(
        values(out, "SSH-WRONG ")
            .iter()
            .any(|l| l.contains("Permission denied (publickey")),
        "{r:?}"
    );
    assert_eq!(one(out, "OTHER-ADDRESS "), "rc=255", "{r:?}");
    assert!(!out.contains("OTHER-ADDRESS-GOT-IN"), "{r:?}");
    assert_eq!(values(out, "VMMS-LEFT="), ["0"], "{r:?}");

    eprintln!(
        "Debian AMI through vireod in the lab: image registered in {}; RunInstances -> running \
         {}, -> host keys on the console {}, -> first SSH login {}; lab run {wall:.0} s",
        one(out, "REGISTERED "),
        one(out, "RUNNING-AFTER "),
        one(out, "KEYS-AFTER "),
        one(out, "FIRST-LOGIN ")
    );
    printed
}
