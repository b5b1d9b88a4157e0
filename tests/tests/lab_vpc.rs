//! VPC networking end to end in the lab (issue 16): vireod with its data plane (namespaces,
//! TAPs, nftables, dnsmasq; `lab/lab --net` brings the modules and tools) launches stock Debian
//! guests with the `vireo` CLI into two VPCs with the same CIDR. Each guest's user data brings
//! `eth0` up with busybox `udhcpc` and prints its lease, then talks to the others:
//!
//! - A (10.0.1.10, group `web`: tcp 8080 from members of `client`, icmp from the VPC's CIDR)
//!   serves a line on tcp 8080;
//! - B (10.0.1.11, group `client`) pings A and connects to A:8080 every few seconds;
//! - C (address chosen by vireod, group `other`) pings A, connects to A:8080 the same way, and
//!   sends pings to A from B's address (spoofed);
//! - D (10.0.1.11 in a second VPC, also 10.0.0.0/16) pings A's address.
//!
//! Checked: A and B reach each other; C's DHCP lease is the private address `vireo describe`
//! shows; the port open only to `client` answers B and never C (which does reach A by ICMP);
//! after revoking the rule B's new connections fail; D never reaches A's address (its own router
//! answers it); C's spoofed packets arrive at its TAP and none gets past it (counted by probe
//! rules the test adds around the data plane's anti-spoofing chain).

use vireo_tests::vireod_lab::{debian_image, lines, run_vireod_lab};

/// What the test does once vireod serves (vireod_lab's start and shell functions before it).
const HOST: &str = r#"
# Every guest: eth0 up, a DHCP lease from the VPC's dnsmasq (guest_lease), then its part.
lease() {
    guest_lease
    cat <<'SH'
# try_tcp WHO: one connection to A's port 8080; OK when A's line came back. 8 s at most: nc's
# -w bounds its connect only, and once connected it waits for the peer to close.
try_tcp() {
    if echo hi | timeout 8 nc -w 3 10.0.1.10 8080 2>/dev/null | grep -q HELLO-FROM-A; then
        echo "$1-TCP OK"
    else
        echo "$1-TCP FAIL"
    fi
}
SH
}
{ lease; cat <<'SH'
while :; do echo HELLO-FROM-A | nc -l -p 8080 >/dev/null 2>&1; done &
ping -c 60 -W 1 10.0.1.11 2>&1 | grep -m1 -q 'bytes from' && echo "A-PING-B OK"
SH
} >/tmp/a.sh
{ lease; cat <<'SH'
ping -c 60 -W 1 10.0.1.10 2>&1 | grep -m1 -q 'bytes from' && echo "B-PING-A OK"
while :; do try_tcp B; sleep 1; done
SH
} >/tmp/b.sh
{ lease; cat <<'SH'
ping -c 60 -W 1 10.0.1.10 2>&1 | grep -m1 -q 'bytes from' && echo "C-PING-A OK"
i=0
while [ $i -lt 12 ]; do try_tcp C; sleep 1; i=$((i + 1)); done
# Pings to A from B's address (a second address on eth0). A real ping first, so that A's
# neighbour entry is fresh: the spoofed pings go out with it, no ARP needed.
ping -c 1 -W 1 10.0.1.10 >/dev/null 2>&1
ip addr add 10.0.1.11/32 dev eth0
ping -c 5 -W 1 -I 10.0.1.11 10.0.1.10 >/dev/null 2>&1
echo "C-SPOOF-SENT"
SH
} >/tmp/c.sh
{ lease; cat <<'SH'
ping -c 3 -W 1 10.0.1.1 2>&1 | grep -m1 -q 'bytes from' && echo "D-PING-ROUTER OK"
if ping -c 10 -W 1 10.0.1.10 2>&1 | grep -q 'bytes from'; then echo "D-PING-A REACHED"; else echo "D-PING-A NONE"; fi
SH
} >/tmp/d.sh

AMI=$(vireo images --json | id_of ami)
VPC=$(vireo vpc create 10.0.0.0/16 --name one | id_of vpc) || fail vpc
SUB=$(vireo subnet create "$VPC" 10.0.1.0/24 | id_of subnet) || fail subnet
WEB=$(vireo sg create web --vpc "$VPC" | id_of sg)
CLIENT=$(vireo sg create client --vpc "$VPC" | id_of sg)
OTHER=$(vireo sg create other --vpc "$VPC" | id_of sg)
vireo sg allow "$WEB" --proto tcp --port 8080 --group "$CLIENT" >/dev/null || fail allow-tcp
vireo sg allow "$WEB" --proto icmp --cidr 10.0.0.0/16 >/dev/null || fail allow-icmp
vireo sg allow "$CLIENT" --proto icmp --cidr 10.0.0.0/16 >/dev/null || fail allow-icmp-client
VPC2=$(vireo vpc create 10.0.0.0/16 --name two | id_of vpc) || fail vpc2
SUB2=$(vireo subnet create "$VPC2" 10.0.1.0/24 | id_of subnet) || fail subnet2
echo "VPCS $VPC $VPC2"
run() { vireo run --image "$AMI" --type t3.nano --json "$@" | id_of i; }
A=$(run --subnet "$SUB" --sg "$WEB" --private-ip 10.0.1.10 --user-data /tmp/a.sh) || fail run-a
B=$(run --subnet "$SUB" --sg "$CLIENT" --private-ip 10.0.1.11 --user-data /tmp/b.sh) || fail run-b
C=$(run --subnet "$SUB" --sg "$OTHER" --user-data /tmp/c.sh) || fail run-c
D=$(run --subnet "$SUB2" --private-ip 10.0.1.11 --user-data /tmp/d.sh) || fail run-d
echo "INSTANCES $A $B $C $D"
[ -n "$A" ] && [ -n "$B" ] && [ -n "$C" ] && [ -n "$D" ] || fail "a launch gave no id"
vireo ls | sed 's/^/LS /'
C_IP=$(vireo describe "$C" --json | grep -o '"private_ip": *"[0-9.]*"' | sed 's/.*: *"\([0-9.]*\)"/\1/')
echo "C-DESCRIBED-IP $C_IP"
# C's TAP: the one its /32 route points to, in the VPC namespace that routes A's address. The
# data plane's worker applies launches in the background (RunInstances answers before): wait.
NS1=none CTAP=none
i=0
while [ "$CTAP" = none ] || [ -z "$CTAP" ]; do
    for ns in $(ip netns list | awk '{print $1}'); do
        ip -n "$ns" route show 10.0.1.10 2>/dev/null | grep -q dev || continue
        [ -z "$C_IP" ] || CTAP=$(ip -n "$ns" route show "$C_IP" | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}')
        NS1=$ns
    done
    i=$((i + 1))
    [ $i -lt 120 ] || break
    sleep 0.5
done
echo "VPC-NETNS $NS1 C-TAP $CTAP"
# Probes around the anti-spoofing chain (priority filter, 0): what C's TAP receives from B's
# address (netdev ingress at -500, before it) and what of it reaches routing (inet prerouting).
ip netns exec "$NS1" nft -f - <<NFT || echo "PROBE-FAILED"
table netdev probe {
  chain tap { type filter hook ingress device "$CTAP" priority -500; policy accept;
    ip saddr 10.0.1.11 ip daddr 10.0.1.10 counter
  }
}
table inet probe {
  chain pre { type filter hook prerouting priority -400; policy accept;
    iifname "$CTAP" ip saddr 10.0.1.11 counter
  }
}
NFT
wait_for "$B" "B-TCP OK" 150 || echo "B-NEVER-CONNECTED"
wait_for "$C" "C-SPOOF-SENT" 90 || echo "C-NOT-DONE"
wait_for "$A" "A-PING-B OK" 30 || echo "A-NO-PING"
wait_for "$D" "D-PING-A " 60 || echo "D-NOT-DONE"
# Revoke the rule: it is in force once the call has answered, so every connection B begins
# after the one it was in then must fail. B's attempts are counted after the answer.
vireo sg revoke "$WEB" --proto tcp --port 8080 --group "$CLIENT" || echo "REVOKE-FAILED"
before=$(console_of "$B" | grep -c '^B-TCP ')
echo "REVOKED-AFTER $before"
# Five more attempts of B's (each at most 4 s: a dropped connect, then a sleep), 60 s at most.
end=$((SECONDS + 60))
while [ "$(console_of "$B" | grep -c '^B-TCP ')" -lt $((before + 5)) ] && [ $SECONDS -lt $end ]; do sleep 0.5; done
for x in A B C D; do eval "id=\$$x"; console_of "$id" | sed "s/^/CONSOLE-$x /"; done
ip netns exec "$NS1" nft list table netdev probe | grep -o 'packets [0-9]*' | sed 's/^/PROBE-TAP /'
ip netns exec "$NS1" nft list table inet probe | grep -o 'packets [0-9]*' | sed 's/^/PROBE-ROUTED /'
vireo terminate "$A" "$B" "$C" "$D" >/dev/null
end_report 30
"#;

#[test]
fn debian_guests_get_dhcp_and_security_groups_in_vpcs() {
    let r = run_vireod_lab(
        "vpc",
        &debian_image(None),
        "--capacity-memory-mib 2560 --shutdown-timeout 30",
        HOST,
        &["--net", "--mem", "3072", "--timeout", "420"],
    );
    let out = &r.stdout;
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(lines(out, "SETUP-FAILED").is_empty(), "{r:?}");
    let (a, b, c, d) = (
        lines(out, "CONSOLE-A "),
        lines(out, "CONSOLE-B "),
        lines(out, "CONSOLE-C "),
        lines(out, "CONSOLE-D "),
    );
    let has = |con: &[&str], l: &str| con.iter().any(|x| x.starts_with(l));
    // DHCP: the addresses asked for, and the one vireod chose is what DescribeInstances shows.
    assert!(
        has(
            &a,
            "LEASE ip=10.0.1.10 mask=255.255.255.0 router=10.0.1.1 host=ip-10-0-1-10"
        ),
        "A's lease: {a:#?}"
    );
    assert!(has(&b, "LEASE ip=10.0.1.11 "), "B's lease: {b:#?}");
    assert!(
        has(&d, "LEASE ip=10.0.1.11 "),
        "D's lease (same CIDR, other VPC): {d:#?}"
    );
    let c_ip = lines(out, "C-DESCRIBED-IP ");
    assert!(
        c_ip.len() == 1 && c_ip[0].starts_with("10.0.1."),
        "C's private address from describe: {r:?}"
    );
    assert!(
        has(&c, &format!("LEASE ip={} ", c_ip[0])),
        "C's lease is the described address {}: {c:#?}",
        c_ip[0]
    );
    // Two instances of a subnet reach each other.
    assert!(has(&b, "B-PING-A OK"), "B pings A: {b:#?}");
    assert!(has(&a, "A-PING-B OK"), "A pings B: {a:#?}");
    assert!(
        has(&c, "C-PING-A OK"),
        "C reaches A by ICMP (allowed from the CIDR): {c:#?}"
    );
    // The port open to `client` only: B gets through, C never does.
    let tcp = |con: &[&str], who: &str| -> Vec<bool> {
        con.iter()
            .filter_map(|l| l.strip_prefix(&format!("{who}-TCP ")))
            .map(|v| v == "OK")
            .collect()
    };
    let (b_tcp, c_tcp) = (tcp(&b, "B"), tcp(&c, "C"));
    assert!(b_tcp.contains(&true), "B reaches A:8080: {b:#?}");
    assert!(c_tcp.len() >= 10, "C tried A:8080: {c:#?}");
    assert!(
        !c_tcp.contains(&true),
        "C (not in `client`) never reaches A:8080: {c:#?}"
    );
    // Revoked: every connection B began after the one it was in when the revoke answered
    // fails.
    let before: usize = lines(out, "REVOKED-AFTER ")
        .first()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no revoke: {r:?}"));
    let after = &b_tcp[(before + 1).min(b_tcp.len())..];
    assert!(after.len() >= 3, "B kept trying after the revoke: {b:#?}");
    assert!(
        after.iter().all(|ok| !ok),
        "no new connection after the revoke: {b:#?}"
    );
    // Two VPCs with the same CIDR: D's router answers, A's address is not reachable from D.
    assert!(has(&d, "D-PING-ROUTER OK"), "D reaches its router: {d:#?}");
    assert!(
        has(&d, "D-PING-A NONE"),
        "D (other VPC) does not reach A: {d:#?}"
    );
    // Anti-spoofing: C's packets from B's address reached its TAP, none reached routing.
    assert!(has(&c, "C-SPOOF-SENT"), "{c:#?}");
    let tap: Vec<u64> = lines(out, "PROBE-TAP packets ")
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    let routed: Vec<u64> = lines(out, "PROBE-ROUTED packets ")
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        tap.len() == 1 && tap[0] >= 5,
        "C's spoofed pings arrived at its TAP: {tap:?} {r:?}"
    );
    assert_eq!(routed, [0], "no spoofed packet got past the TAP: {r:?}");
    assert_eq!(
        lines(out, "VMMS-LEFT="),
        ["0"],
        "terminate ends every VMM: {r:?}"
    );
}
