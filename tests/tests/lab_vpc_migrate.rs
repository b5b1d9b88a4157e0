//! A live migration under traffic in a VPC (issue 16), in the lab: vireod with its data plane
//! (`lab/lab --net`) and one migration host launches two stock Debian guests into one subnet
//! with the `vireo` CLI. Their user data takes a DHCP lease (busybox `udhcpc`), then:
//!
//! - A (10.0.1.10, stays on host 0) pings B every 0.2 s (`ping -i 0.2`, its output kept in the
//!   guest) and, beside that, streams numbered lines `SEQ 0`, `SEQ 1`, ... one per 0.2 s to B
//!   over one TCP connection (busybox `nc`), until the host pings A from the VPC namespace
//!   (A watches its own ICMP InEchos counter); then it ends the stream with `SEQ-END` and
//!   prints its ping's statistics and the answered sequence numbers as ranges;
//! - B (10.0.1.11) accepts that one connection (`nc -l -e`, no second accept) and, when it
//!   ends, checks the numbers it got;
//! - and a second stream on a connection B opened itself: B connects to A:9001 and A sends
//!   numbered lines on it the same way. B only acknowledges them, and its group lets in tcp
//!   9000 and 9001 and ICMP: after a move, A's segments reach B's new host, which never
//!   forwarded that connection, as new packets to B's ephemeral port, which no rule allows.
//!   The connection goes on only because the switch-over carries B's conntrack entries to the
//!   new host (`vireo_net::carry_conntrack`).
//!
//! While both run, B is live-migrated to host 1 with `vireo migrate` and, once its echo
//! replies and both streams' TCP segments reach A again (counted by a probe chain in host 0's
//! VPC namespace), back to host 0.
//!
//! Checked: each migration succeeds (its answer names the hosts, B's VMM then runs in the
//! target host's network namespace and B's TAP is in the target host's VPC namespace only); B
//! keeps its private address (`vireo describe`); after each move B's echo replies and TCP
//! segments of both streams reach A again (how long that took and how many pings were lost is
//! printed, not judged, as are vireod's switch-over times); A's last pings were answered; both
//! TCP connections survive both moves (B got every line A sent, in order, and the end marker,
//! on the one connection of each).

use vireo_tests::vireod_lab::{debian_image, lines, run_vireod_lab};

/// What the test does once vireod serves (vireod_lab's start and shell functions before it).
/// Every guest's user data starts with eth0 up and a DHCP lease from the VPC's dnsmasq
/// (guest_lease).
const HOST: &str = r#"
# A: once B answers, pings B every 0.2 s and, beside that, streams numbered lines 0.2 s apart
# to B:9000 on one connection, until the host pings A (from the VPC namespace: A's InEchos
# counter moves). Then the ping's answered sequence numbers as ranges.
{ guest_lease; cat <<'SH'
in_echos() {
    awk '/^Icmp:/ { if (!c) { for (i = 1; i <= NF; i++) if ($i == "InEchos") c = i } else print $c }' /proc/net/snmp
}
# The second stream: on the connection B opens to A:9001 (nc runs send.sh on it), A sends
# numbered lines 0.2 s apart until /tmp/stop, then the end marker.
cat >/tmp/send.sh <<'S'
#!/bin/sh
touch /tmp/s2
i=0
while [ ! -f /tmp/stop ]; do echo "SEQ $i"; i=$((i + 1)); sleep 0.2; done
echo "SEQ-END"
echo $i >/tmp/sent2
S
chmod +x /tmp/send.sh
nc -l -p 9001 -e /tmp/send.sh &
i=0
until ping -c 1 -W 1 10.0.1.11 >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 120 ] || { echo "A-NEVER-SAW-B"; break; }
done
i=0
while [ ! -f /tmp/s2 ] && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
[ -f /tmp/s2 ] || echo "A-NO-STREAM2"
sleep 2
base=$(in_echos)
echo "A-STARTED"
ping -i 0.2 10.0.1.11 >/tmp/ping 2>&1 &
PING=$!
(
    {
        i=0
        while [ ! -f /tmp/stop ]; do echo "SEQ $i"; i=$((i + 1)); sleep 0.2; done
        echo "SEQ-END"
        echo $i >/tmp/sent
    } | nc 10.0.1.11 9000
    echo $? >/tmp/nc.rc
) &
i=0
while [ "$(in_echos)" = "$base" ] && [ $i -lt 600 ]; do sleep 0.5; i=$((i + 1)); done
echo "A-STOPPING after=$((i / 2))s"
kill -INT $PING
wait $PING
touch /tmp/stop
i=0
while [ ! -f /tmp/nc.rc ] && [ $i -lt 120 ]; do sleep 1; i=$((i + 1)); done
echo "A-TCP-SENT lines=$(cat /tmp/sent 2>/dev/null || echo none) rc=$(cat /tmp/nc.rc 2>/dev/null || echo none)"
i=0
while [ ! -f /tmp/sent2 ] && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
echo "A-TCP2-SENT lines=$(cat /tmp/sent2 2>/dev/null || echo none)"
awk '/bytes from/ {
        s = -1
        for (i = 1; i <= NF; i++) if ($i ~ /^seq=/) s = substr($i, 5) + 0
        if (s < 0 || (n > 0 && s <= last)) next
        if (n == 0) lo = s; else if (s != last + 1) { r = r " " lo "-" last; lo = s }
        last = s; n++
    }
    /packets transmitted/ { tx = $1; rx = $4 }
    END { if (n) r = r " " lo "-" last; printf "A-PING tx=%d rx=%d ranges=%s\n", tx, rx, r }' /tmp/ping
echo "A-DONE"
SH
} >/tmp/a.sh
# B: one connection on tcp 9000 (nc runs recv.sh on it; no second accept), its lines kept;
# when it ends, whether they are 0, 1, 2, ... and the end marker came.
{ guest_lease; cat <<'SH'
cat >/tmp/recv.sh <<'R'
#!/bin/sh
cat >/tmp/recv
echo $? >/tmp/recv.rc
R
chmod +x /tmp/recv.sh
nc -l -p 9000 -e /tmp/recv.sh &
echo "B-LISTENING"
# The connection B opens itself: to A:9001 (retried until A listens), A's lines kept.
(
    i=0
    until [ -s /tmp/recv2 ] || [ $i -ge 120 ]; do
        nc 10.0.1.10 9001 </dev/null >/tmp/recv2
        echo $? >/tmp/recv2.rc
        [ -s /tmp/recv2 ] || sleep 1
        i=$((i + 1))
    done
    touch /tmp/recv2.done
) &
i=0
while [ ! -f /tmp/recv.rc ] && [ $i -lt 420 ]; do sleep 1; i=$((i + 1)); done
i=0
while [ ! -f /tmp/recv2.done ] && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
check() {
    awk -v tag="$1" 'BEGIN { n = 0; bad = 0; c = 0; end = 0 }
        $1 == "SEQ" { if ($2 != n) bad++; n = $2 + 1; c++ }
        $1 == "SEQ-END" { end = 1 }
        END { printf "%s lines=%d last=%d out_of_order=%d end=%d\n", tag, c, n - 1, bad, end }' "$2"
}
check B-TCP /tmp/recv
echo "B-TCP-RC $(cat /tmp/recv.rc 2>/dev/null || echo none)"
check B-TCP2 /tmp/recv2
echo "B-TCP2-RC $(cat /tmp/recv2.rc 2>/dev/null || echo none)"
SH
} >/tmp/b.sh

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
AMI=$(vireo images --json | id_of ami)
VPC=$(vireo vpc create 10.0.0.0/16 --name moving | id_of vpc) || fail vpc
SUB=$(vireo subnet create "$VPC" 10.0.1.0/24 | id_of subnet) || fail subnet
SG=$(vireo sg create peers --vpc "$VPC" | id_of sg) || fail sg
vireo sg allow "$SG" --proto icmp --cidr 10.0.0.0/16 >/dev/null || fail allow-icmp
vireo sg allow "$SG" --proto tcp --port 9000 --cidr 10.0.0.0/16 >/dev/null || fail allow-tcp
vireo sg allow "$SG" --proto tcp --port 9001 --cidr 10.0.0.0/16 >/dev/null || fail allow-tcp2
run() { vireo run --image "$AMI" --type t3.nano --subnet "$SUB" --sg "$SG" --json "$@" | id_of i; }
A=$(run --private-ip 10.0.1.10 --user-data /tmp/a.sh) || fail run-a
B=$(run --private-ip 10.0.1.11 --user-data /tmp/b.sh) || fail run-b
[ -n "$A" ] && [ -n "$B" ] || fail "a launch gave no id"
echo "INSTANCES $A $B"
# where ID: the network namespace of the instance's VMM (its working directory is the
# instance's), "root" for vireod's own.
where() {
    for p in /proc/[0-9]*; do
        case $(readlink "$p/exe" 2>/dev/null) in */vireo-vmm) ;; *) continue ;; esac
        case $(readlink "$p/cwd" 2>/dev/null) in
        *"$1"*) ns=$(ip netns identify "${p#/proc/}"); echo "${ns:-root}" ;;
        esac
    done
}
# tap_ns: the VPC namespaces whose route to B's address goes to a TAP (not over VXLAN).
tap_ns() {
    for ns in $(ip netns list | awk '{print $1}' | grep -- "-$VPC-h"); do
        ip -n "$ns" route show 10.0.1.11 | grep -q 'dev vt' && echo "$ns"
    done
}
wait_for "$A" "A-STARTED" 240 1 || fail "A never started (no lease, or B never answered)"
T0=$(now)
echo "TRAFFIC-STARTED B-ON $(where "$B")"
# What of B's traffic to A gets through: counted where it leaves for A's TAP (A stays on
# host 0).
NS0=$(ip netns list | awk '{print $1}' | grep -- "-$VPC-h0")
ip netns exec "$NS0" nft -f - <<NFT || fail "probe"
table inet probe {
  chain post { type filter hook postrouting priority 400; policy accept;
    ip saddr 10.0.1.11 ip daddr 10.0.1.10 icmp type echo-reply counter
    ip saddr 10.0.1.11 ip daddr 10.0.1.10 tcp sport 9000 counter
    ip saddr 10.0.1.11 ip daddr 10.0.1.10 tcp dport 9001 counter
  }
}
NFT
# counts: "ECHO-REPLIES TCP-SEGMENTS TCP2-SEGMENTS" from B to A so far (TCP2: B's
# acknowledgements of A's second stream, on the connection B opened).
counts() { ip netns exec "$NS0" nft list table inet probe | grep -o 'packets [0-9]*' | awk '{printf "%s ", $2}'; }
sleep 5
echo "BEFORE-MIGRATION $(counts)"
for to in 1 0; do
    t=$(now)
    echo "MIGRATE-BEGIN to=$to at=+$(since "$T0")"
    out=$(vireo migrate "$B" --to "$to" 2>&1)
    rc=$?
    t=$(now)
    set -- $(counts)
    p0=$1 s0=$2 q0=$3
    echo "MIGRATE to=$to rc=$rc at=+$(since "$T0") out=$out"
    # Until B's echo replies (10) and both streams' TCP segments reach A again; at most 90 s
    # (of the lab's clock: a loaded lab takes seconds per poll). (The times are from when the
    # migration's answer came, to within a poll of 0.5 s and an nft call.)
    ping_after=never tcp_after=never tcp2_after=never
    while awk -v a="$t" -v b="$(now)" 'BEGIN { exit !(b - a < 90) }'; do
        set -- $(counts)
        [ "$ping_after" != never ] || [ "$1" -le "$p0" ] || ping_after=$(since "$t")
        [ "$tcp_after" != never ] || [ "$2" -le "$s0" ] || tcp_after=$(since "$t")
        [ "$tcp2_after" != never ] || [ "$3" -le "$q0" ] || tcp2_after=$(since "$t")
        [ "$1" -lt $((p0 + 10)) ] || [ "$tcp_after" = never ] || [ "$tcp2_after" = never ] || break
        sleep 0.5
    done
    echo "RESUMED to=$to ping_after=$ping_after tcp_after=$tcp_after tcp2_after=$tcp2_after replies=$(($1 - p0)) segments=$(($2 - s0)) segments2=$(($3 - q0))"
    echo "WHERE to=$to vmm=$(where "$B") tap=$(tap_ns | sed 's/.*-h/h/' | tr '\n' , | sed 's/,$//')"
done
sleep 3
# Stop A's ping and stream: a ping to A from the VPC's router address.
ip netns exec "$NS0" ping -c 3 -W 1 10.0.1.10 >/dev/null 2>&1
echo "STOP-SENT at=+$(since "$T0")"
wait_for "$A" "A-DONE" 180 1 || echo "A-NOT-DONE"
wait_for "$B" "B-TCP-RC" 180 1 || echo "B-NOT-DONE"
echo "B-DESCRIBED-IP $(vireo describe "$B" --json | grep -o '"private_ip": *"[0-9.]*"' | sed 's/.*: *"\([0-9.]*\)"/\1/')"
for x in A B; do eval "id=\$$x"; console_of "$id" | sed "s/^/CONSOLE-$x /"; done
vireo terminate "$A" "$B" >/dev/null
end_report 30
"#;

/// `key=value` out of a line of space-separated pairs.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn a_migrated_instance_keeps_its_address_pings_and_tcp_connection() {
    let r = run_vireod_lab(
        "vpc-migrate",
        &debian_image(None),
        "--capacity-memory-mib 2048 --migration-hosts 1 --shutdown-timeout 30",
        HOST,
        &["--net", "--mem", "3072", "--timeout", "420"],
    );
    let out = &r.stdout;
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(lines(out, "SETUP-FAILED").is_empty(), "{r:?}");
    let (a, b) = (lines(out, "CONSOLE-A "), lines(out, "CONSOLE-B "));
    let has = |con: &[&str], l: &str| con.iter().any(|x| x.starts_with(l));
    assert!(has(&a, "LEASE ip=10.0.1.10 "), "A's lease: {a:#?}");
    assert!(has(&b, "LEASE ip=10.0.1.11 "), "B's lease: {b:#?}");
    assert_eq!(
        lines(out, "TRAFFIC-STARTED B-ON "),
        ["root"],
        "B started on host 0: {r:?}"
    );

    // Both moves succeeded: the answer names the hosts, B's VMM runs in the target host's
    // namespace (host 0 is vireod's own) and B's TAP is in the target host's VPC namespace.
    let moves = lines(out, "MIGRATE ");
    let wheres = lines(out, "WHERE ");
    assert_eq!(moves.len(), 2, "two migrations: {r:?}");
    for (to, from) in [("1", "0"), ("0", "1")] {
        let m = moves
            .iter()
            .find(|l| field(l, "to") == Some(to))
            .unwrap_or_else(|| panic!("no migration to host {to}: {r:?}"));
        assert_eq!(field(m, "rc"), Some("0"), "migration to host {to}: {m}");
        assert!(
            m.contains(&format!("host {from} -> host {to}")),
            "migration to host {to}: {m}"
        );
        let w = wheres
            .iter()
            .find(|l| field(l, "to") == Some(to))
            .unwrap_or_else(|| panic!("where B went: {r:?}"));
        let vmm = field(w, "vmm").unwrap_or("");
        let on_target = if to == "0" {
            vmm == "root"
        } else {
            vmm.ends_with(&format!("-h{to}"))
        };
        assert!(on_target, "B's VMM after the move to host {to}: {w}");
        assert_eq!(
            field(w, "tap"),
            Some(format!("h{to}").as_str()),
            "B's TAP (and only it) on host {to}: {w}"
        );
    }
    assert_eq!(
        lines(out, "B-DESCRIBED-IP "),
        ["10.0.1.11"],
        "B keeps its private address: {r:?}"
    );

    // After each move B's echo replies and TCP segments reached A again (counted on host 0
    // where they leave for A's TAP); how long that took is printed, not judged.
    for to in ["1", "0"] {
        let resumed = lines(out, "RESUMED ")
            .into_iter()
            .find(|l| field(l, "to") == Some(to))
            .unwrap_or_else(|| panic!("no traffic check after the move to host {to}: {r:?}"));
        eprintln!("after the move to host {to}: {resumed}");
        assert!(
            field(resumed, "ping_after") != Some("never"),
            "B's echo replies reached A after the move to host {to}: {resumed}"
        );
        assert!(
            field(resumed, "tcp_after") != Some("never"),
            "the TCP stream went on after the move to host {to}: {resumed}"
        );
        assert!(
            field(resumed, "tcp2_after") != Some("never"),
            "the stream on B's own connection went on after the move to host {to}: {resumed}"
        );
    }
    for l in lines(out, "VIREOD-LOG ") {
        // Without tracing's colour codes (ESC [ ... m).
        let mut plain = String::new();
        let mut rest = l;
        while let Some(i) = rest.find('\u{1b}') {
            plain.push_str(&rest[..i]);
            rest = rest[i..].split_once('m').map_or("", |(_, r)| r);
        }
        plain.push_str(rest);
        if plain.contains("routed to host") || plain.contains("not carried") {
            eprintln!("switch-over: {}", plain.trim());
        }
    }
    for m in &moves {
        eprintln!("migration: {m}");
    }
    // A's ping, stopped after both moves: what it lost (the last echo may still have been in
    // flight when it was stopped).
    let ping = a
        .iter()
        .find_map(|l| l.strip_prefix("A-PING "))
        .unwrap_or_else(|| panic!("A's ping summary: {a:#?}"));
    let num = |k: &str| -> u64 {
        field(ping, k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {ping}"))
    };
    let (tx, rx) = (num("tx"), num("rx"));
    let ranges: Vec<(u64, u64)> = ping
        .split_once("ranges=")
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|r| {
            let (lo, hi) = r.split_once('-')?;
            Some((lo.parse().ok()?, hi.parse().ok()?))
        })
        .collect();
    let gaps: Vec<u64> = ranges.windows(2).map(|w| w[1].0 - w[0].1 - 1).collect();
    eprintln!(
        "pings: {tx} sent 0.2 s apart, {rx} answered, {} lost (runs of lost pings: {gaps:?})",
        tx.saturating_sub(rx)
    );
    assert!(rx > 0, "A pinged B: {ping}");
    // The pings keep going: no run of lost pings as long as 10 s (50), generous for a loaded
    // lab (what is lost is the downtime, the source VMM's answer and one `ip` per host: 0-11
    // pings per move in the runs here). Before the switch-over and the fixed TAP MACs, each
    // move lost a run of 24 to 131 pings (4 runs); with the fixed MACs alone, 12 to 65.
    assert!(
        gaps.iter().all(|&g| g <= 50),
        "A's pings to B kept going through both moves: {ping} (runs of lost pings: {gaps:?})"
    );
    assert!(
        ranges.last().is_some_and(|l| l.1 + 2 >= tx),
        "A's last pings were answered: {ping}"
    );

    // The TCP connection: every line A sent, in order, and the end, on the one connection B
    // accepted.
    let sent = a
        .iter()
        .find_map(|l| l.strip_prefix("A-TCP-SENT "))
        .unwrap_or_else(|| panic!("A's sender: {a:#?}"));
    assert_eq!(
        field(sent, "rc"),
        Some("0"),
        "A's sender ended cleanly: {a:#?}"
    );
    let n: u64 = field(sent, "lines")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("A's line count: {sent}"));
    assert!(n > 0, "{sent}");
    assert!(
        has(
            &b,
            &format!("B-TCP lines={n} last={} out_of_order=0 end=1", n - 1)
        ),
        "B received the {n} lines A sent, in order, on one connection: {b:#?}"
    );
    assert!(
        has(&b, "B-TCP-RC 0"),
        "B's connection ended cleanly: {b:#?}"
    );
    // The connection B opened: every line A sent on it, in order, and the end.
    assert!(!has(&a, "A-NO-STREAM2"), "B connected to A:9001: {a:#?}");
    let sent2 = a
        .iter()
        .find_map(|l| l.strip_prefix("A-TCP2-SENT "))
        .unwrap_or_else(|| panic!("A's second sender: {a:#?}"));
    let n2: u64 = field(sent2, "lines")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("A's second line count: {sent2}"));
    assert!(n2 > 0, "{sent2}");
    assert!(
        has(
            &b,
            &format!("B-TCP2 lines={n2} last={} out_of_order=0 end=1", n2 - 1)
        ),
        "B received the {n2} lines A sent on the connection B opened: {b:#?}"
    );
    assert!(
        has(&b, "B-TCP2-RC 0"),
        "B's own connection ended cleanly: {b:#?}"
    );
    assert_eq!(
        lines(out, "VMMS-LEFT="),
        ["0"],
        "terminate ends every VMM: {r:?}"
    );
}
