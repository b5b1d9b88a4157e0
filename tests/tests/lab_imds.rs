//! The instance metadata service from inside real guests, in the lab (`lab/lab --net`):
//! vireod with its data plane launches two stock Debian guests (busybox initramfs) into a VPC.
//! Their user data takes a DHCP lease and talks HTTP to 169.254.169.254 with busybox `nc` (a
//! hand-written request: busybox `wget` cannot PUT), through the guest's default route:
//!
//! - A (10.0.1.10, launched with a key pair) gets an IMDSv2 token, reads its instance id, key,
//!   address and user data with it, its address without it (IMDSv1), its identity document;
//!   a token PUT with `X-Forwarded-For` is refused; it hands its token out on tcp 8080; then it
//!   asks for its instance id without a token every second.
//! - B (10.0.1.11) takes A's token and presents it (refused: tokens are bound to their
//!   instance), gets its own and reads its own id, then asks every second too.
//!
//! The host then sets A's HttpTokens to `required` (A's token-less requests get 401 from the
//! next one on, two of slack) and B's HttpEndpoint to `disabled` (403).

use vireo_tests::vireod_lab::{debian_image, lines, run_vireod_lab};

/// What the test does once vireod serves (vireod_lab's start and shell functions before it).
const HOST: &str = r#"
# Every guest: a lease (guest_lease: busybox udhcpc sets the address and the default route),
# and req, an HTTP/1.0 client of the metadata service: `req METHOD PATH [HEADER]...` prints
# the response without its CRs; `code` keeps its status, `body` its body.
common() {
    guest_lease
    cat <<'SH'
req() {
    m=$1 p=$2
    shift 2
    {
        printf '%s %s HTTP/1.0\r\nHost: 169.254.169.254\r\n' "$m" "$p"
        for h in "$@"; do printf '%s\r\n' "$h"; done
        printf '\r\n'
        # stdin stays open while the answer comes (the service closes after it).
        sleep 2
    } | nc -w 10 169.254.169.254 80 | tr -d '\r'
}
code() { head -n 1 | cut -d ' ' -f 2; }
body() { sed '1,/^$/d'; }
TTL="X-aws-ec2-metadata-token-ttl-seconds: 300"
SH
}
{ common; cat <<'SH'
T=$(req PUT /latest/api/token "$TTL" | body)
echo "A-TOKEN-LEN ${#T}"
H="X-aws-ec2-metadata-token: $T"
echo "A-ID $(req GET /latest/meta-data/instance-id "$H" | body)"
echo "A-KEYNAME $(req GET /latest/meta-data/public-keys/ "$H" | body)"
echo "A-KEY $(req GET /latest/meta-data/public-keys/0/openssh-key "$H" | body | cut -d ' ' -f 1)"
echo "A-USERDATA $(req GET /latest/user-data "$H" | body | head -n 1)"
echo "A-V1-IP $(req GET /latest/meta-data/local-ipv4 | body)"
echo "A-DOC $(req GET /latest/dynamic/instance-identity/document "$H" | body | grep -c '"instanceId"')"
echo "A-XFF $(req PUT /latest/api/token "$TTL" 'X-Forwarded-For: 10.0.1.99' | code)"
while :; do echo "$T" | nc -l -p 8080 >/dev/null 2>&1; done &
while :; do echo "A-V1 $(req GET /latest/meta-data/instance-id | code)"; sleep 1; done
SH
} >/tmp/a.sh
{ common; cat <<'SH'
i=0
AT=
while [ -z "$AT" ] && [ $i -lt 60 ]; do AT=$(echo | nc -w 3 10.0.1.10 8080 2>/dev/null); i=$((i + 1)); sleep 1; done
echo "B-GOT-A-TOKEN ${#AT}"
echo "B-WITH-A-TOKEN $(req GET /latest/meta-data/instance-id "X-aws-ec2-metadata-token: $AT" | code)"
T=$(req PUT /latest/api/token "$TTL" | body)
echo "B-ID $(req GET /latest/meta-data/instance-id "X-aws-ec2-metadata-token: $T" | body)"
while :; do echo "B-V2 $(req GET /latest/meta-data/instance-id "X-aws-ec2-metadata-token: $T" | code)"; sleep 1; done
SH
} >/tmp/b.sh

AMI=$(vireo images --json | id_of ami)
VPC=$(vireo vpc create 10.0.0.0/16 --name imds | id_of vpc) || fail vpc
SUB=$(vireo subnet create "$VPC" 10.0.1.0/24 | id_of subnet) || fail subnet
SG=$(vireo sg create g --vpc "$VPC" | id_of sg)
vireo sg allow "$SG" --proto tcp --port 8080 --cidr 10.0.0.0/16 >/dev/null || fail allow
(cd /tmp && vireo keys create labkey --out /tmp/labkey.pem >/dev/null) || fail key
run() { vireo run --image "$AMI" --type t3.nano --json "$@" | id_of i; }
A=$(run --subnet "$SUB" --sg "$SG" --private-ip 10.0.1.10 --key labkey --user-data /tmp/a.sh) || fail run-a
B=$(run --subnet "$SUB" --sg "$SG" --private-ip 10.0.1.11 --user-data /tmp/b.sh) || fail run-b
echo "INSTANCES $A $B"
[ -n "$A" ] && [ -n "$B" ] || fail "a launch gave no id"
wait_for "$A" "A-V1 " 240 || echo "A-NOT-DONE"
wait_for "$B" "B-V2 " 240 || echo "B-NOT-DONE"
# A: tokens required; B: the endpoint disabled. Each asks about once a second.
a_before=$(console_of "$A" | grep -c '^A-V1 ')
b_before=$(console_of "$B" | grep -c '^B-V2 ')
vireo call ModifyInstanceMetadataOptions InstanceId="$A" HttpTokens=required >/dev/null || echo "MODIFY-A-FAILED"
vireo call ModifyInstanceMetadataOptions InstanceId="$B" HttpEndpoint=disabled >/dev/null || echo "MODIFY-B-FAILED"
echo "MODIFIED-AFTER A=$a_before B=$b_before"
i=0
while { [ "$(console_of "$A" | grep -c '^A-V1 ')" -lt $((a_before + 5)) ] ||
        [ "$(console_of "$B" | grep -c '^B-V2 ')" -lt $((b_before + 5)) ]; } && [ $i -lt 120 ]; do
    sleep 0.5
    i=$((i + 1))
done
echo "ID-A $A"
echo "ID-B $B"
for x in A B; do eval "id=\$$x"; console_of "$id" | sed "s/^/CONSOLE-$x /"; done
vireo terminate "$A" "$B" >/dev/null
end_report 30
"#;

#[test]
fn debian_guests_use_the_metadata_service() {
    let r = run_vireod_lab(
        "imds",
        &debian_image(None),
        "--capacity-memory-mib 2048 --shutdown-timeout 30",
        HOST,
        &["--net", "--mem", "3072", "--timeout", "480"],
    );
    let out = &r.stdout;
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(lines(out, "SETUP-FAILED").is_empty(), "{r:?}");
    let (a_id, b_id) = (lines(out, "ID-A "), lines(out, "ID-B "));
    assert!(a_id.len() == 1 && b_id.len() == 1, "{r:?}");
    let (a, b) = (lines(out, "CONSOLE-A "), lines(out, "CONSOLE-B "));
    let one = |con: &[&str], p: &str| -> String {
        con.iter()
            .find_map(|l| l.strip_prefix(p))
            .unwrap_or_else(|| panic!("no {p:?} in {con:#?}"))
            .trim()
            .to_string()
    };
    assert!(one(&a, "LEASE ").starts_with("ip=10.0.1.10 "), "{a:#?}");
    // IMDSv2 in the guest: a token (55 characters), then its own id, key and user data with it.
    assert_eq!(one(&a, "A-TOKEN-LEN "), "55", "{a:#?}");
    assert_eq!(one(&a, "A-ID "), a_id[0], "{a:#?}");
    assert_eq!(one(&a, "A-KEYNAME "), "0=labkey", "{a:#?}");
    assert_eq!(one(&a, "A-KEY "), "ssh-ed25519", "{a:#?}");
    assert_eq!(one(&a, "A-USERDATA "), "#!/bin/sh", "{a:#?}");
    assert_eq!(one(&a, "A-V1-IP "), "10.0.1.10", "IMDSv1: {a:#?}");
    assert_eq!(one(&a, "A-DOC "), "1", "the identity document: {a:#?}");
    assert_eq!(one(&a, "A-XFF "), "403", "{a:#?}");
    // A's token is A's: B presenting it is refused; B's own token gives B's id.
    assert_eq!(one(&b, "B-GOT-A-TOKEN "), "55", "{b:#?}");
    assert_eq!(one(&b, "B-WITH-A-TOKEN "), "401", "{b:#?}");
    assert_eq!(one(&b, "B-ID "), b_id[0], "{b:#?}");
    // The options changed while they ran: in force from the next requests on.
    let counts = lines(out, "MODIFIED-AFTER ");
    assert_eq!(counts.len(), 1, "{r:?}");
    let num = |k: &str| -> usize {
        counts[0]
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {counts:?}"))
    };
    let codes = |con: &[&str], p: &str| -> Vec<String> {
        con.iter()
            .filter_map(|l| l.strip_prefix(p))
            .map(|c| c.trim().to_string())
            .collect()
    };
    let (a_v1, b_v2) = (codes(&a, "A-V1 "), codes(&b, "B-V2 "));
    let (a_n, b_n) = (num("A="), num("B="));
    assert!(a_n >= 1 && a_v1[..a_n].iter().all(|c| c == "200"), "{a:#?}");
    assert!(b_n >= 1 && b_v2[..b_n].iter().all(|c| c == "200"), "{b:#?}");
    let a_after = &a_v1[(a_n + 2).min(a_v1.len())..];
    let b_after = &b_v2[(b_n + 2).min(b_v2.len())..];
    assert!(
        a_after.len() >= 2 && a_after.iter().all(|c| c == "401"),
        "HttpTokens required: {a:#?}"
    );
    assert!(
        b_after.len() >= 2 && b_after.iter().all(|c| c == "403"),
        "HttpEndpoint disabled: {b:#?}"
    );
    assert_eq!(lines(out, "VMMS-LEFT="), ["0"], "{r:?}");
}
