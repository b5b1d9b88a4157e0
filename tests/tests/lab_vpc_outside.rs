//! VPC networking across subnets and to the outside, in the lab (issue 16): vireod with its
//! data plane (`lab/lab --net`), a public pool (`--public-cidr 198.51.100.0/24`) and an uplink
//! namespace `outside` that stands for the internet (`--uplink-netns`; it has 192.0.2.1 on its
//! loopback and listeners on tcp 9001 and 9002). With the `vireo` CLI (`vireo call` for the
//! internet gateway, the route and the Elastic IP) the test makes one VPC 10.0.0.0/16 with
//! subnets S1 10.0.1.0/24 and S2 10.0.2.0/24, an internet gateway attached to it and a
//! 0.0.0.0/0 route to it in the main route table, and launches four stock Debian guests. Each
//! guest's user data brings `eth0` up with busybox `udhcpc`, prints its lease and default
//! route, serves a line on tcp 8080, then:
//!
//! - A (S1, 10.0.1.10, group `ga`: tcp 8080 from S2's CIDR, tcp 8081 from C's /32, icmp from
//!   anywhere; no public address) also serves tcp 8081, pings and connects to B, then tries
//!   the outside ten times (ping 192.0.2.1, tcp 9001);
//! - B (S2, 10.0.2.20, group `gb`: icmp from the VPC, tcp 8080 from S1) pings A and its
//!   router, connects to A:8080 and A:8081, then pings and connects to A every second for ever;
//! - C (S1, 10.0.1.11, group `pub`: icmp and tcp 8080 from anywhere, a public address on
//!   launch) pings A, connects to A:8080 and A:8081, then reaches the outside;
//! - D (S2, 10.0.2.30, group `pub`, an Elastic IP: AllocateAddress + AssociateAddress) reaches
//!   the outside.
//!
//! Checked: the leases and default routes are the subnets' first addresses; A and B, in
//! different subnets, reach each other by ICMP and TCP through the VPC router; A:8080 (open to
//! S2) answers B and never C, A:8081 (open to C's /32) answers C and never B; from
//! `outside`, C's and D's public addresses answer ping and tcp 8080 while A's private address
//! (routed to the edge by the outside) never answers; C and D reach the outside's listeners,
//! A never does. Security group changes are in force once their API call has answered (how
//! long the calls took is printed, not asserted): after RevokeSecurityGroupIngress of `pub`'s
//! tcp 8080 rule the one connection the outside begins right after the answer is dropped, and
//! after AuthorizeSecurityGroupIngress the one begun right after it is answered; after
//! revoking B's group's allow-all egress rule (RevokeSecurityGroupEgress) B's egress chain has
//! no allowing rule when the call answers and every round B begins after the one it was in
//! fails, and after authorizing it again they work.
//!
//! Every step is bounded: the guests' probes by `timeout` (busybox nc's `-w` bounds its
//! connect only; once connected it waits for the peer to close, for ever if the peer never
//! answers), the script's waits by wall time (a B that stops printing rounds is reported as
//! `B-STALLED` with its last lines, not waited for), each `vireo` call at 90 s, the lab run at
//! 600 s. An earlier version waited for B's rounds by a count of polls, each a `vireo console`
//! of a second or more in the loaded lab: once B stopped printing, that wait outlasted the
//! run's bound with nothing printed.

use vireo_tests::{run_in_lab, scratch};

const HOST: &str = r#"
set -u
export PATH=/vireo/bin:$PATH
export AWS_SHARED_CREDENTIALS_FILE=/tmp/vd/credentials AWS_CONFIG_FILE=/tmp/vd/config
export VIREO_ENDPOINT=http://127.0.0.1:8787
cat >/tmp/debian.json <<'JSON'
{"name": "vireo-debian-12", "kernel": "/vireo/guest/vmlinux", "initrd": "/vireo/guest/initrd.cpio.gz",
 "cmdline": "console=ttyS0 panic=-1 quiet vireo.exit=wait"}
JSON
# Every guest (and this script): a DHCP lease from the VPC's dnsmasq (busybox udhcpc; its script
# sets the address and the default route and prints the lease), its default route, a listener
# on tcp 8080, and the helpers of its part.
helpers() {
    cat <<'SH'
# serve NAME PORT: answers every connection on PORT with HELLO-FROM-NAME, in the background.
serve() { while :; do echo "HELLO-FROM-$1" | nc -l -p "$2" >/dev/null 2>&1; done & }
# tcp IP PORT: OK when a listener's line came back, else FAIL; 8 s at most. busybox nc's -w
# bounds its connect only: once connected it reads until the peer closes, for ever if the
# peer's answer and close never come (a handshake whose last ACK was dropped leaves it so).
tcp() { if echo hi | timeout 8 nc -w 3 "$1" "$2" 2>/dev/null | grep -q HELLO-FROM; then echo OK; else echo FAIL; fi; }
# png IP: OK when one ping was answered, else FAIL; 5 s at most.
png() { if timeout 5 ping -c 1 -W 1 "$1" 2>/dev/null | grep -q 'bytes from'; then echo OK; else echo FAIL; fi; }
# until_ok N LABEL CHECK...: CHECK up to N times, 1 s apart, until it prints OK; then
# "LABEL OK", or "LABEL FAIL" after the last try.
until_ok() {
    local n=$1 label=$2 i=0 r=FAIL
    shift 2
    while [ $i -lt "$n" ]; do
        r=$("$@")
        [ "$r" = OK ] && break
        i=$((i + 1))
        sleep 1
    done
    echo "$label $r"
}
# tries N LABEL CHECK...: CHECK N times, each result on a line "LABEL OK|FAIL".
tries() {
    local n=$1 label=$2 i=0
    shift 2
    while [ $i -lt "$n" ]; do echo "$label $("$@")"; i=$((i + 1)); done
}
SH
}
guest() {
    cat <<'SH'
#!/bin/sh
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
echo "ROUTE default via $(route -n | awk '$1 == "0.0.0.0" { print $2 }')"
SH
    helpers
}
{ guest; cat <<'SH'
serve A 8080
serve A 8081
until_ok 60 A-PING-B png 10.0.2.20
until_ok 30 A-TCP-B tcp 10.0.2.20 8080
# No public address: never out.
i=0
while [ $i -lt 10 ]; do
    echo "A-OUT-PING $(png 192.0.2.1)"
    echo "A-OUT-TCP $(tcp 192.0.2.1 9001)"
    i=$((i + 1))
done
echo "A-DONE"
SH
} >/tmp/a.sh
{ guest; cat <<'SH'
serve B 8080
until_ok 60 B-PING-A png 10.0.1.10
echo "B-PING-ROUTER $(png 10.0.2.1)"
until_ok 30 B-TCP-8080 tcp 10.0.1.10 8080
tries 3 B-TCP-8081 tcp 10.0.1.10 8081
# Outbound rounds for ever; the host revokes B's egress and authorizes it again meanwhile.
while :; do
    echo "B-ROUND ping=$(png 10.0.1.10) tcp=$(tcp 10.0.1.10 8080)"
    sleep 1
done
SH
} >/tmp/b.sh
{ guest; cat <<'SH'
serve C 8080
until_ok 60 C-PING-A png 10.0.1.10
tries 3 C-TCP-8080 tcp 10.0.1.10 8080
until_ok 20 C-TCP-8081 tcp 10.0.1.10 8081
until_ok 60 C-OUT-PING png 192.0.2.1
until_ok 20 C-OUT-TCP tcp 192.0.2.1 9001
echo "C-DONE"
SH
} >/tmp/c.sh
{ guest; cat <<'SH'
serve D 8080
until_ok 90 D-OUT-PING png 192.0.2.1
until_ok 20 D-OUT-TCP tcp 192.0.2.1 9002
echo "D-DONE"
SH
} >/tmp/d.sh
eval "$(helpers)"

ip link set lo up
# The internet: a namespace with an address of its own and two listeners.
ip netns add outside
ip -n outside link set lo up
ip -n outside addr add 192.0.2.1/32 dev lo
LISTENERS=""
for port in 9001 9002; do
    ip netns exec outside sh -c "while :; do echo HELLO-FROM-OUTSIDE | nc -l -p $port >/dev/null 2>&1; done" &
    LISTENERS="$LISTENERS $!"
done
vireod init --data-dir /tmp/vd --image /tmp/debian.json >/tmp/init.log 2>&1 || { echo INIT-FAILED; cat /tmp/init.log; exit 1; }
VIREO_LOG=info,vireo_control::service::dataplane=debug \
    vireod serve --data-dir /tmp/vd --listen 127.0.0.1:8787 --capacity-memory-mib 2560 \
    --public-cidr 198.51.100.0/24 --uplink-netns outside \
    --shutdown-timeout 30 >/tmp/vireod.log 2>&1 &
VIREOD=$!
trap 'kill $VIREOD $LISTENERS 2>/dev/null' EXIT
# Every call of the CLI is bounded (a vireod that stopped answering ends the run with the log).
vireo() { timeout 90 vireo "$@"; }
now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }
i=0
until vireo types >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo VIREOD-DOWN; cat /tmp/vireod.log; exit 1; }
    sleep 0.1
done
fail() { echo "SETUP-FAILED $*"; sed 's/^/VIREOD-LOG /' /tmp/vireod.log; exit 1; }
id_of() { grep -o "$1-[0-9a-f]*" | head -1; }
AMI=$(vireo images --json | id_of ami)
VPC=$(vireo vpc create 10.0.0.0/16 --name outside-test | id_of vpc)
[ -n "$VPC" ] || fail vpc
S1=$(vireo subnet create "$VPC" 10.0.1.0/24 | id_of subnet)
S2=$(vireo subnet create "$VPC" 10.0.2.0/24 | id_of subnet)
[ -n "$S1" ] && [ -n "$S2" ] || fail subnets
IGW=$(vireo call CreateInternetGateway | id_of igw)
[ -n "$IGW" ] || fail igw
vireo call AttachInternetGateway InternetGatewayId="$IGW" VpcId="$VPC" >/dev/null || fail attach
RTB=$(vireo call DescribeRouteTables Filter.1.Name=vpc-id Filter.1.Value.1="$VPC" | id_of rtb)
[ -n "$RTB" ] || fail rtb
vireo call CreateRoute RouteTableId="$RTB" DestinationCidrBlock=0.0.0.0/0 GatewayId="$IGW" >/dev/null || fail route
GA=$(vireo sg create ga --vpc "$VPC" | id_of sg)
GB=$(vireo sg create gb --vpc "$VPC" | id_of sg)
PUB=$(vireo sg create pub --vpc "$VPC" | id_of sg)
[ -n "$GA" ] && [ -n "$GB" ] && [ -n "$PUB" ] || fail groups
vireo sg allow "$GA" --proto tcp --port 8080 --cidr 10.0.2.0/24 >/dev/null || fail allow-ga-8080
vireo sg allow "$GA" --proto tcp --port 8081 --cidr 10.0.1.11/32 >/dev/null || fail allow-ga-8081
vireo sg allow "$GA" --proto icmp --cidr 0.0.0.0/0 >/dev/null || fail allow-ga-icmp
vireo sg allow "$GB" --proto icmp --cidr 10.0.0.0/16 >/dev/null || fail allow-gb-icmp
vireo sg allow "$GB" --proto tcp --port 8080 --cidr 10.0.1.0/24 >/dev/null || fail allow-gb-8080
vireo sg allow "$PUB" --proto icmp --cidr 0.0.0.0/0 >/dev/null || fail allow-pub-icmp
vireo sg allow "$PUB" --proto tcp --port 8080 --cidr 0.0.0.0/0 >/dev/null || fail allow-pub-8080
vireo sg show "$GB" | sed 's/^/SG-GB /'
run() { vireo run --image "$AMI" --type t3.nano --json "$@" | id_of i; }
A=$(run --subnet "$S1" --sg "$GA" --private-ip 10.0.1.10 --user-data /tmp/a.sh)
B=$(run --subnet "$S2" --sg "$GB" --private-ip 10.0.2.20 --user-data /tmp/b.sh)
C=$(run --subnet "$S1" --sg "$PUB" --private-ip 10.0.1.11 --public-ip --user-data /tmp/c.sh)
D=$(run --subnet "$S2" --sg "$PUB" --private-ip 10.0.2.30 --user-data /tmp/d.sh)
echo "INSTANCES $A $B $C $D"
[ -n "$A" ] && [ -n "$B" ] && [ -n "$C" ] && [ -n "$D" ] || fail "a launch gave no id"
ALLOC=$(vireo call AllocateAddress Domain=vpc) || fail allocate
D_PUB=$(echo "$ALLOC" | sed -n 's/.*<publicIp>\([0-9.]*\)<.*/\1/p')
EIP=$(echo "$ALLOC" | id_of eipalloc)
vireo call AssociateAddress AllocationId="$EIP" InstanceId="$D" >/dev/null || fail associate
public_of() { vireo describe "$1" --json | grep -o '"public_ip": *"[0-9.]*"' | sed 's/.*: *"\([0-9.]*\)"/\1/'; }
C_PUB=$(public_of "$C")
echo "PUBLIC C=$C_PUB D=$D_PUB D-DESCRIBED=$(public_of "$D") A-DESCRIBED=$(public_of "$A")"
[ -n "$C_PUB" ] && [ -n "$D_PUB" ] || fail "no public address"
vireo ls | sed 's/^/LS /'

# console_of ID: the lines the guest printed after its user data started (20 s at most).
console_of() { timeout 20 vireo console "$1" 2>/dev/null | tr -d '\r'; }
# wait_for ID TEXT SECS: until the guest has printed TEXT, at most SECS seconds of wall time.
wait_for() {
    local end=$(($(now_ms) + $3 * 1000))
    until console_of "$1" | grep -q "$2"; do
        [ "$(now_ms)" -lt $end ] || return 1
        sleep 0.5
    done
}
# From the outside: the public addresses answer (retried until the guests are up). `timeout`
# goes inside `ip netns exec`: busybox's timeout runs its own applets first, and busybox `ip`
# has no `netns`.
png_ns() { if ip netns exec outside timeout 5 ping -c 1 -W 1 "$1" 2>/dev/null | grep -q 'bytes from'; then echo OK; else echo FAIL; fi; }
tcp_ns() { if echo hi | ip netns exec outside timeout 8 nc -w 5 "$1" 8080 2>/dev/null | grep -q "HELLO-FROM-$2"; then echo OK; else echo FAIL; fi; }
# within SECS LABEL CHECK...: CHECK until it prints OK, at most SECS seconds of wall time;
# then "LABEL OK" or "LABEL FAIL".
within() {
    local end=$(($(now_ms) + $1 * 1000)) label=$2 r
    shift 2
    until r=$("$@"); [ "$r" = OK ] || [ "$(now_ms)" -ge $end ]; do sleep 1; done
    echo "$label $r"
}
within 120 OUT-PING-D png_ns "$D_PUB"
within 40 OUT-TCP-D tcp_ns "$D_PUB" D
within 60 OUT-PING-C png_ns "$C_PUB"
within 40 OUT-TCP-C tcp_ns "$C_PUB" C
# What the outside path looked like, for a failure's post-mortem.
VNS=$(ip netns list | awk '{print $1}' | grep -- "-$VPC-h0\$")
EDGE=$(ip netns list | awk '{print $1}' | grep -- '-edge-h0$')
{
    ip -n outside -br addr; ip -n outside route
    ip -n "$EDGE" -br addr; ip -n "$EDGE" route
    ip -n "$VNS" route
    ip netns exec "$VNS" nft list ruleset | grep -E 'uplink|dnat|snat|198\.51'
    ip netns exec "$VNS" nft list chain inet vireo forward
} 2>&1 | sed 's/^/OUTSIDE-PATH /'
grep -iE 'warn|error' /tmp/vireod.log | tail -n 20 | sed 's/^/VIREOD-WARN /'
# A has no public address: even with its private address routed to the edge, no answer.
ip -n outside route replace 10.0.0.0/16 via 169.254.1.1 || echo "OUTSIDE-ROUTE-FAILED"
tries 5 OUT-PING-A-PRIVATE png_ns 10.0.1.10

# Ingress: `pub`'s tcp 8080 rule revoked and authorized again, each with one API call
# (`vireo call`). Each change is in force once the call has answered: the one connection the
# outside begins right after the answer is refused (dropped), then answered. How long each
# call took is printed, beside a DescribeSecurityGroups of the same group (what the CLI and
# HTTP cost in the lab without the data plane).
PERM="GroupId=$PUB IpPermissions.1.IpProtocol=tcp IpPermissions.1.FromPort=8080 IpPermissions.1.ToPort=8080 IpPermissions.1.IpRanges.1.CidrIp=0.0.0.0/0"
T0=$(now_ms)
vireo call DescribeSecurityGroups GroupId.1="$PUB" >/dev/null || echo "DESCRIBE-FAILED"
echo "DESCRIBE-ANSWERED $(($(now_ms) - T0)) ms"
T0=$(now_ms)
vireo call RevokeSecurityGroupIngress $PERM >/dev/null || echo "INGRESS-REVOKE-FAILED"
echo "INGRESS-REVOKE-ANSWERED $(($(now_ms) - T0)) ms"
echo "INGRESS-REVOKED-PROBE $(tcp_ns "$C_PUB" C)"
T0=$(now_ms)
echo "INGRESS-ALLOW-CALLED $(date -u +%T.%N)"
vireo call AuthorizeSecurityGroupIngress $PERM >/dev/null || echo "INGRESS-ALLOW-FAILED"
echo "INGRESS-ALLOW-ANSWERED $(($(now_ms) - T0)) ms"
echo "INGRESS-ALLOWED-PROBE $(tcp_ns "$C_PUB" C)"

# Egress: B's outbound works, stops when its group's allow-all egress rule goes, and works
# again when it is back.
rounds() { console_of "$B" | grep -c '^B-ROUND '; }
# more_rounds N: waits until B has printed N more rounds, at most 12 s a round of wall time
# (a round is a ping of 1 s, a connection of 3 s and a sleep of 1 s); says so if B stalls,
# with B's last lines.
more_rounds() {
    local want=$(($(rounds) + $1)) end=$(($(now_ms) + $1 * 12000)) have
    while have=$(rounds); [ "$have" -lt $want ]; do
        if [ "$(now_ms)" -ge $end ]; then
            echo "B-STALLED have=$have want=$want"
            console_of "$B" | tail -n 4 | sed 's/^/B-STALLED-CONSOLE /'
            return 1
        fi
        sleep 0.5
    done
}
# B's egress chain in the VPC namespace (the one whose /32 route B's address has), for the
# time a change takes to be in force (printed, for the post-mortem).
NS=$(for ns in $(ip netns list | awk '{print $1}'); do ip -n "$ns" route show 10.0.2.20 2>/dev/null | grep -q dev && echo "$ns"; done | head -1)
BTAP=$(ip -n "$NS" route show 10.0.2.20 | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}')
echo "B-TAP $NS $BTAP"
egress_rules() { ip netns exec "$NS" nft list chain inet vireo "out-$BTAP" 2>/dev/null | grep -c return; }
# at_answer: B's egress chain and B's rounds, read once right after a call has answered:
# "rules=<allowing rules>, rounds=<rounds printed by then>".
at_answer() { echo "rules=$(egress_rules), rounds=$(rounds)"; }
wait_for "$B" "B-ROUND ping=OK tcp=OK" 120 || echo "B-NEVER-OUT"
more_rounds 1
echo "EGRESS-RULES-BEFORE $(egress_rules)"
echo "EGRESS-REVOKED-AFTER $(rounds)"
T0=$(now_ms)
vireo sg revoke "$GB" --egress --proto all --cidr 0.0.0.0/0 | sed 's/^/EGRESS-REVOKE /'
echo "EGRESS-REVOKE-ANSWERED $(($(now_ms) - T0)) ms"
echo "EGRESS-REVOKE-AT-ANSWER $(at_answer)"
more_rounds 5
echo "EGRESS-RESTORED-AFTER $(rounds)"
T0=$(now_ms)
vireo sg allow "$GB" --egress --proto all --cidr 0.0.0.0/0 | sed 's/^/EGRESS-ALLOW /'
echo "EGRESS-ALLOW-ANSWERED $(($(now_ms) - T0)) ms"
echo "EGRESS-ALLOW-AT-ANSWER $(at_answer)"
more_rounds 4
wait_for "$A" "A-DONE" 60 || echo "A-NOT-DONE"
wait_for "$C" "C-DONE" 60 || echo "C-NOT-DONE"
wait_for "$D" "D-DONE" 60 || echo "D-NOT-DONE"
for x in A B C D; do eval "id=\$$x"; console_of "$id" | sed "s/^/CONSOLE-$x /"; done
EDGE=$(ip netns list | awk '{print $1}' | grep -- '-edge-h0$')
ip -n "$EDGE" route | sed 's/^/EDGE-ROUTE /'
ip -n outside route | sed 's/^/OUTSIDE-ROUTE /'
vireo terminate "$A" "$B" "$C" "$D" >/dev/null
vmms() { for p in /proc/[0-9]*; do readlink "$p/exe"; done 2>/dev/null | grep -c vireo-vmm; }
i=0
while [ "$(vmms)" -gt 0 ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i + 1)); done
echo "VMMS-LEFT=$(vmms)"
sed 's/^/VIREOD-LOG /' /tmp/vireod.log
"#;

fn lines<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix))
        .collect()
}

#[test]
fn debian_guests_across_subnets_and_to_the_outside() {
    let host = scratch("vpc-outside-host.sh");
    std::fs::write(&host, HOST).unwrap();
    let put = format!("{}:/vireo/host.sh", host.display());
    let r = run_in_lab(
        "sh /vireo/host.sh",
        &["--net", "--mem", "3072", "--timeout", "600", "--put", &put],
    );
    let out = &r.stdout;
    // The whole output, for a failure's post-mortem (the assertions show the guests' parts).
    let saved = scratch("vpc-outside-lab.out");
    std::fs::write(&saved, out).unwrap();
    eprintln!("lab output: {}", saved.display());
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(lines(out, "SETUP-FAILED").is_empty(), "{r:?}");
    let (a, b, c, d) = (
        lines(out, "CONSOLE-A "),
        lines(out, "CONSOLE-B "),
        lines(out, "CONSOLE-C "),
        lines(out, "CONSOLE-D "),
    );
    let has = |con: &[&str], l: &str| con.contains(&l);
    let starts = |con: &[&str], l: &str| con.iter().any(|x| x.starts_with(l));
    // DHCP in both subnets, and the default route is the subnet's first address.
    assert!(
        starts(
            &a,
            "LEASE ip=10.0.1.10 mask=255.255.255.0 router=10.0.1.1 host=ip-10-0-1-10"
        ),
        "A's lease: {a:#?}"
    );
    assert!(
        starts(
            &b,
            "LEASE ip=10.0.2.20 mask=255.255.255.0 router=10.0.2.1 host=ip-10-0-2-20"
        ),
        "B's lease: {b:#?}"
    );
    assert!(
        has(&a, "ROUTE default via 10.0.1.1"),
        "A's default route: {a:#?}"
    );
    assert!(
        has(&b, "ROUTE default via 10.0.2.1"),
        "B's default route: {b:#?}"
    );
    assert!(has(&b, "B-PING-ROUTER OK"), "B's router answers: {b:#?}");
    // Across subnets through the VPC router: ICMP and TCP, both ways.
    assert!(has(&b, "B-PING-A OK"), "B pings A: {b:#?}");
    assert!(has(&a, "A-PING-B OK"), "A pings B: {a:#?}");
    assert!(
        has(&b, "B-TCP-8080 OK"),
        "B reaches A:8080 (S2's CIDR): {b:#?}"
    );
    assert!(
        has(&a, "A-TCP-B OK"),
        "A reaches B:8080 (S1's CIDR): {a:#?}"
    );
    // Ports open to a CIDR: exactly the instances in it.
    let results = |con: &[&str], label: &str| -> Vec<bool> {
        con.iter()
            .filter_map(|l| l.strip_prefix(label))
            .map(|v| v == " OK")
            .collect()
    };
    let c_8080 = results(&c, "C-TCP-8080");
    assert!(
        c_8080.len() == 3 && !c_8080.contains(&true),
        "C (S1) never reaches A:8080, open to S2: {c:#?}"
    );
    assert!(has(&c, "C-PING-A OK"), "C pings A: {c:#?}");
    assert!(
        has(&c, "C-TCP-8081 OK"),
        "C reaches A:8081, open to its /32: {c:#?}"
    );
    let b_8081 = results(&b, "B-TCP-8081");
    assert!(
        b_8081.len() == 3 && !b_8081.contains(&true),
        "B never reaches A:8081, open to C's /32: {b:#?}"
    );
    // Ingress revoke and authorize of `pub`'s tcp 8080: in force once the call has answered.
    let ms = |prefix: &str| -> u64 {
        lines(out, prefix)
            .first()
            .and_then(|l| l.strip_suffix(" ms"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}: {r:?}"))
    };
    let (describe_ms, ingress_revoke_ms, ingress_allow_ms) = (
        ms("DESCRIBE-ANSWERED "),
        ms("INGRESS-REVOKE-ANSWERED "),
        ms("INGRESS-ALLOW-ANSWERED "),
    );
    for failed in [
        "DESCRIBE-FAILED",
        "INGRESS-REVOKE-FAILED",
        "INGRESS-ALLOW-FAILED",
    ] {
        assert!(lines(out, failed).is_empty(), "{failed}: {r:?}");
    }
    assert_eq!(
        lines(out, "INGRESS-REVOKED-PROBE "),
        ["FAIL"],
        "the connection begun right after the ingress revoke answered is refused: {r:?}"
    );
    assert_eq!(
        lines(out, "INGRESS-ALLOWED-PROBE "),
        ["OK"],
        "the connection begun right after the authorize answered gets through: {r:?}"
    );
    // Egress revoke: B's rounds (ping and tcp to A). Right after each call has answered, B's
    // egress chain has the change, and every round B begins after that fails (or, after the
    // authorize, works again); the round B was in when the call answered is the only slack.
    let round = |l: &&str| -> Option<(bool, bool)> {
        let rest = l.strip_prefix("B-ROUND ping=")?;
        let (ping, tcp) = rest.split_once(" tcp=")?;
        Some((ping == "OK", tcp == "OK"))
    };
    let rounds: Vec<(bool, bool)> = b.iter().filter_map(round).collect();
    let count = |prefix: &str| -> usize {
        lines(out, prefix)
            .first()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}: {r:?}"))
    };
    // "rules=<n>, rounds=<r>": B's egress chain right after the call answered, and how many
    // rounds B had printed by then.
    let at_answer = |prefix: &str| -> (usize, usize) {
        let l = lines(out, prefix);
        let parsed = l.first().and_then(|l| {
            let (rules, rounds) = l.strip_prefix("rules=")?.split_once(", rounds=")?;
            Some((rules.parse().ok()?, rounds.parse().ok()?))
        });
        parsed.unwrap_or_else(|| panic!("no {prefix}: {r:?}"))
    };
    let revoked = count("EGRESS-REVOKED-AFTER ");
    let (rules_left, revoke_rounds) = at_answer("EGRESS-REVOKE-AT-ANSWER ");
    let (rules_back, allow_rounds) = at_answer("EGRESS-ALLOW-AT-ANSWER ");
    let (revoke_ms, allow_ms) = (ms("EGRESS-REVOKE-ANSWERED "), ms("EGRESS-ALLOW-ANSWERED "));
    // Printed, not asserted: how long the calls took in the lab (nested guests, 2 cores).
    eprintln!(
        "answered (in force) after: RevokeSecurityGroupIngress {ingress_revoke_ms} ms, \
         AuthorizeSecurityGroupIngress {ingress_allow_ms} ms (one `vireo call` each; \
         DescribeSecurityGroups {describe_ms} ms), `vireo sg revoke --egress` \
         {revoke_ms} ms, `vireo sg allow --egress` {allow_ms} ms"
    );
    assert!(
        lines(out, "B-STALLED ").is_empty(),
        "B's rounds went on: {r:?}"
    );
    assert_eq!(
        lines(out, "EGRESS-REVOKE ").len(),
        1,
        "one egress rule revoked: {r:?}"
    );
    assert_eq!(
        rules_left, 0,
        "the revoke is in B's egress chain once it answered: {r:?}"
    );
    assert_eq!(
        rules_back, 1,
        "the allow is in B's egress chain once it answered: {r:?}"
    );
    assert!(
        rounds[..revoked.min(rounds.len())].contains(&(true, true)),
        "B's outbound worked before the revoke: {b:#?}"
    );
    // From the round after the one B was in when the revoke answered, until the allow:
    // nothing gets out.
    let restored = count("EGRESS-RESTORED-AFTER ");
    let blocked = &rounds[(revoke_rounds + 1).min(rounds.len())..restored.min(rounds.len())];
    assert!(blocked.len() >= 3, "B kept trying after the revoke: {b:#?}");
    assert!(
        blocked.iter().all(|&(p, t)| !p && !t),
        "no ping or connection from B while its egress is revoked: {b:#?}"
    );
    let again = &rounds[(allow_rounds + 1).min(rounds.len())..];
    assert!(
        again.contains(&(true, true)),
        "B's outbound works again after the egress rule is back: {b:#?}"
    );
    assert_eq!(
        again.last(),
        Some(&(true, true)),
        "B's last round got through: {b:#?}"
    );
    // Outside: public and Elastic IPs answer, a private address does not.
    let public = lines(out, "PUBLIC ");
    assert!(
        public.len() == 1
            && public[0].contains("C=198.51.100.")
            && public[0].contains("D=198.51.100."),
        "C and D have public addresses from the pool: {r:?}"
    );
    assert!(
        public[0].ends_with("A-DESCRIBED="),
        "A has no public address: {public:?}"
    );
    for l in [
        "OUT-PING-D OK",
        "OUT-TCP-D OK",
        "OUT-PING-C OK",
        "OUT-TCP-C OK",
    ] {
        assert!(
            lines(out, "").contains(&l),
            "{l} (from the outside namespace): {r:?}"
        );
    }
    let a_private = lines(out, "OUT-PING-A-PRIVATE ");
    assert_eq!(
        a_private, ["FAIL"; 5],
        "A's private address is not reachable from the outside: {r:?}"
    );
    // And out: C and D reach the outside's listeners, A never does.
    for l in ["C-OUT-PING OK", "C-OUT-TCP OK"] {
        assert!(has(&c, l), "{l}: {c:#?}");
    }
    for l in ["D-OUT-PING OK", "D-OUT-TCP OK"] {
        assert!(has(&d, l), "{l}: {d:#?}");
    }
    let (a_ping, a_tcp) = (results(&a, "A-OUT-PING"), results(&a, "A-OUT-TCP"));
    assert!(
        a_ping.len() == 10 && a_tcp.len() == 10,
        "A tried the outside: {a:#?}"
    );
    assert!(
        !a_ping.contains(&true) && !a_tcp.contains(&true),
        "A (no public address) never reaches the outside: {a:#?}"
    );
    assert_eq!(
        lines(out, "VMMS-LEFT="),
        ["0"],
        "terminate ends every VMM: {r:?}"
    );
}
