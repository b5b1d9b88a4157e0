#!/usr/bin/env bash
# make bench-net: TCP throughput (iperf3) and latency (ping) between two Debian guests through
# vireod's VPC data plane with their security groups in force, beside the same two guests on a
# bare Linux bridge with no rules; again with RULES (1,000) more rules in the server's group;
# and how long a rule change takes to be in force for a guest's new connections. One lab boot
# (lab/lab --net); the lab half is benches/net-lab.sh. Not a test: it reports figures and
# targets, and fails (one line) only when something does not work. See docs/benchmarks.md.
#
# iperf3 is not in the guest image: Debian's iperf3 and the libraries it loads (libiperf0,
# libssl3's libcrypto, libsctp1, libc6 with its loader) are fetched with apt-get download
# (images/lib.sh) and go into a small initrd of their own under build/bench-net, appended to the
# standard one in the lab, so the shared guest image stays as it is. Linux's bridge module (and
# stp, llc) comes from the lab kernel's own package.
#
# Environment: BIN_DIR (default the static release build), IPERF_TIME (seconds per iperf3 run,
# default 5), PINGS (per round, 50 ms apart, default 100), ROUNDS (alternating rounds of the two
# setups in each state, default 5), RULES (default 1000), CHANGES (authorize/revoke pairs timed in
# each state, default 3), PROBE_MS (the guest's connection attempts apart, default 50).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC2034 # used by images/lib.sh
PROG=bench-net
# shellcheck source=images/lib.sh
. images/lib.sh

BIN_DIR=${BIN_DIR:-target/x86_64-unknown-linux-gnu/release}
IPERF_TIME=${IPERF_TIME:-5}
PINGS=${PINGS:-100}
ROUNDS=${ROUNDS:-5}
RULES=${RULES:-1000}
CHANGES=${CHANGES:-3}
PROBE_MS=${PROBE_MS:-50}
for v in IPERF_TIME PINGS ROUNDS RULES CHANGES PROBE_MS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v wants a positive number, not '${!v}'"
done
[ "$RULES" -le 10000 ] || die "RULES wants at most 10000 (the ports 20001-30000), not $RULES"
for b in vireo-vmm vireod vireo; do
    [ -x "$BIN_DIR/$b" ] || die "no $BIN_DIR/$b: run make build first"
done
command -v python3 >/dev/null || die "python3 not found"

B="$VIREO_BUILD/bench-net"
mkdir -p "$B"

# --- what goes into the lab: $B/lab --------------------------------------------------------------
# extra.cpio.gz: /opt/iperf3 (the binary, run through its own loader by a wrapper, with only the
# libraries beside it), the guest agent /etc/vireo/benchnet.sh and the probe bench-probe.sh.
build_bundle() {
    local root="$B/root" lp="" p r t d ld libs f iperf_tree="" libc_tree=""
    rm -rf "$root" "$B/lab"
    mkdir -p "$root/opt/iperf3/bin" "$root/opt/iperf3/lib" "$root/etc/vireo" "$B/lab/mods"
    for p in iperf3 libiperf0 libsctp1 libssl3 libc6; do
        r=$(pkg_resolve "$p")
        t=$(pkg_tree "$p" "${r#* }")
        for d in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu; do
            [ ! -d "$t/$d" ] || lp="$lp:$t/$d"
        done
        case $p in iperf3) iperf_tree=$t ;; libc6) libc_tree=$t ;; esac
    done
    ld="$libc_tree/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    [ -x "$ld" ] || die "libc6 has no lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    libs=$("$ld" --library-path "${lp#:}" --list "$iperf_tree/usr/bin/iperf3") ||
        die "cannot list iperf3's libraries with the packaged loader"
    ! grep -q 'not found' <<<"$libs" ||
        die "iperf3 needs libraries that iperf3 libiperf0 libsctp1 libssl3 libc6 lack: $(grep 'not found' <<<"$libs" | tr -s ' \t\n' ' ')"
    for f in $(awk '$2 == "=>" && $3 ~ /^\// && $1 !~ /ld-linux/ { print $3 }' <<<"$libs"); do
        case $f in "$VIREO_BUILD"/pkgs/*) ;; *) die "iperf3: $f does not come from the downloaded packages" ;; esac
        cp -L "$f" "$root/opt/iperf3/lib/"
    done
    cp -L "$ld" "$root/opt/iperf3/lib/"
    cp "$iperf_tree/usr/bin/iperf3" "$root/opt/iperf3/bin/iperf3.real"
    # shellcheck disable=SC2016 # written for the guest's shell
    printf '%s\n' '#!/bin/sh' \
        'exec /opt/iperf3/lib/ld-linux-x86-64.so.2 --library-path /opt/iperf3/lib /opt/iperf3/bin/iperf3.real "$@"' \
        >"$root/opt/iperf3/bin/iperf3"
    chmod 0755 "$root/opt/iperf3/bin/iperf3"

    # The agent: eth0 up (bench.ip=ADDR/LEN on the command line, else a DHCP lease from the
    # VPC), then an iperf3 server, a listener on tcp 5202 for the probe, and a shell on tcp
    # 7000 for benches/net-lab.sh (busybox nc forks one per connection).
    cat >"$root/etc/vireo/benchnet.sh" <<'EOF'
#!/bin/sh
# bench-net's agent (benches/net.sh): eth0 up, then the servers net-lab.sh talks to.
PATH=/opt/iperf3/bin:/bin
export PATH
mkdir -p /tmp
ip link set lo up
ip link set eth0 up || { echo "BENCH-NET-ERROR no eth0"; exit 1; }
addr=
for w in $(cat /proc/cmdline); do
    case $w in bench.ip=*) addr=${w#bench.ip=} ;; esac
done
if [ -n "$addr" ]; then
    ip addr add "$addr" dev eth0
else
    cat >/tmp/dhcp.sh <<'S'
#!/bin/sh
case $1 in bound | renew)
    ifconfig "$interface" "$ip" netmask "$subnet" up
    route add default gw "$router" dev "$interface"
    ;;
esac
S
    chmod +x /tmp/dhcp.sh
    udhcpc -i eth0 -s /tmp/dhcp.sh -q -n -t 30 -T 1 >/dev/null 2>&1 || { echo "BENCH-NET-ERROR no DHCP lease"; exit 1; }
fi
iperf3 -s >/tmp/iperf3-server.log 2>&1 &
nc -ll -p 5202 -e /bin/true >/dev/null 2>&1 &
nc -ll -p 7000 -e /bin/sh >/dev/null 2>&1 &
echo "BENCH-NET-AGENT $(ip -4 -o addr show dev eth0)"
EOF
    # The probe: bench-probe.sh IP PORT INTERVAL_US. A new TCP connection to IP:PORT every
    # INTERVAL_US, each in the background with busybox nc's 1 s connect timeout, until
    # /tmp/probe.stop exists (600 at most): "S n" as attempt n begins, then "O n" (connected)
    # or "F n" (not).
    cat >"$root/etc/vireo/bench-probe.sh" <<'EOF'
#!/bin/sh
# bench-net's probe (benches/net.sh): bench-probe.sh IP PORT INTERVAL_US
i=0
while [ ! -e /tmp/probe.stop ] && [ $i -lt 600 ]; do
    i=$((i + 1))
    echo "S $i"
    (if nc -w 1 "$1" "$2" </dev/null >/dev/null 2>&1; then echo "O $i"; else echo "F $i"; fi) &
    usleep "$3"
done
wait
EOF
    chmod 0755 "$root/etc/vireo/"*.sh
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -n) \
        >"$B/lab/extra.cpio.gz" || die "cannot write the guests' extra initrd"
    rm -rf "$root"

    # bridge.ko and what it needs, from the kernel package the lab boots, in load order.
    kernel_tree
    for f in $(mod_closure "$KTREE" "$KVER" bridge); do
        cp "$KTREE/lib/modules/$KVER/$f" "$B/lab/mods/"
        strip_modsig "$B/lab/mods/${f##*/}"
        echo "${f##*/}" >>"$B/lab/mods/order"
    done
    cp benches/net-lab.sh "$B/lab/lab.sh"
}
exec {LOCK}>"$B/.lock"
flock "$LOCK"
build_bundle

echo "bench-net: running in the lab (about $((60 + ROUNDS * 4 * (IPERF_TIME + PINGS / 20 + 2) + CHANGES * 20 + RULES / 50)) s)..." >&2
st=0
lab/lab run --net --smp 2 --mem 3072 --timeout 900 --bin-dir "$BIN_DIR" --put "$B/lab:/vireo/bench-net" -- \
    "IPERF_TIME=$IPERF_TIME PINGS=$PINGS ROUNDS=$ROUNDS RULES=$RULES CHANGES=$CHANGES PROBE_MS=$PROBE_MS sh /vireo/bench-net/lab.sh" \
    >"$B/last.log" 2>"$B/last.err" || st=$?

python3 - "$B/last.log" "$st" "$IPERF_TIME" "$PINGS" "$ROUNDS" "$RULES" "$PROBE_MS" <<'PY'
import json, statistics, sys

log, st, iperf_time, pings, rounds, rules, probe_ms = sys.argv[1:]
lines = [l.rstrip("\r\n") for l in open(log, errors="replace")]
def fail(why):
    print(f"bench-net: {why} (the lab's output: {log})")
    sys.exit(1)
for l in lines:
    if l.startswith("NET-ERROR "):
        fail(l[len("NET-ERROR "):])
if not any(l == "NET-DONE" for l in lines):
    steps = [l[len("NET-STEP "):] for l in lines if l.startswith("NET-STEP ")]
    at = f", during: {steps[-1]}" if steps else ""
    fail(f"the lab run ended (status {st}) before the benchmark was done{at}")

ping = {}     # (state, setup) -> rtts in ms
iperf = {}    # (state, setup) -> [(bits/s, iperf's seconds, lab seconds)]
chain, version, rules_t = {}, "iperf3", None
change = {}   # (state, kind, rep) -> (t0, t1)
probe = {}    # (state, kind, rep) -> {n: {"S": stamp, "O"/"F": stamp}}
for l in lines:
    f = l.split(" ")
    if f[0] == "NET-PING" and len(f) > 4:
        for w in f[4:]:
            if w.startswith("time="):
                ping.setdefault((f[1], f[2]), []).append(float(w[5:]))
    elif f[0] == "NET-IPERF":
        state, setup, rnd, t0, t1 = f[1:6]
        text = " ".join(f[6:])
        try:
            j = json.loads(text)
            end = j["end"]["sum_received"]
            iperf.setdefault((state, setup), []).append(
                (end["bits_per_second"], end["seconds"], float(t1) - float(t0)))
        except (ValueError, KeyError, TypeError):
            err = ""
            try:
                err = json.loads(text).get("error", "")
            except (ValueError, AttributeError):
                pass
            fail(f"iperf3 B -> A failed ({setup}, {state}, round {rnd}): {err or text[:200] or 'no output'}")
    elif f[0] == "NET-CHAIN":
        chain[f[1]] = int(f[2])
    elif f[0] == "NET-RULES":
        rules_t = (float(f[3]) - float(f[2]), float(f[4]) - float(f[2]))
    elif f[0] == "NET-VERSION":
        version = " ".join(f[1:3])
    elif f[0] == "NET-CHANGE":
        change[(f[1], f[2], f[3])] = (float(f[4]), float(f[5]))
    elif f[0] == "NET-PROBE" and len(f) == 7:
        probe.setdefault((f[1], f[2], f[3]), {}).setdefault(int(f[6]), {})[f[5]] = float(f[4])

def pct(vals, p):
    s = sorted(vals)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]

def tput(state, setup):
    runs = iperf.get((state, setup))
    if not runs:
        fail(f"no iperf3 result for {setup} ({state})")
    return statistics.median(r[0] for r in runs), runs

def rtt(state, setup):
    v = ping.get((state, setup))
    if not v:
        fail(f"no ping reply for {setup} ({state})")
    return v

print("bench-net: in the lab: QEMU-TCG host with emulated SVM, nested KVM guests. Absolute figures")
print("are those of an emulated machine (far below hardware); compare the setups, not the numbers.")
print(f"guests: Debian 6.1 cloud kernel + busybox initramfs, t3.nano (2 vCPUs, 512 MiB); B -> A:")
print(f"  {version}, one TCP stream, {iperf_time} s per run (throughput received by A); busybox ping, "
      f"{pings} per round, 50 ms apart; medians of {rounds} alternating rounds")
print(f"  bare: vireo-vmm TAPs on a Linux bridge, no nftables;  vpc: vireod's data plane (routed "
      f"VPC namespace, stateful groups in nftables, anti-spoofing at each TAP)")
print()
print(f"{'':<36}{'throughput':>14}{'vs bare':>9}{'ping avg':>12}{'p50':>11}{'p99':>11}{'pings':>7}")
titles = {"groups": f"A's group with its {chain.get('groups', '?')} rules",
          "rules": f"A's group with {chain.get('rules', '?')} rules ({rules} more ahead of the real ones)"}
ratios = {}
for state in ("groups", "rules"):
    print(f"{titles[state]}:")
    bare, _ = tput(state, "bare")
    for setup, name in (("bare", "  bare bridge, no rules"), ("vpc", "  VPC data plane, groups in force")):
        t, _ = tput(state, setup)
        r = rtt(state, setup)
        ratio = f"{t / bare:.2f}x" if setup == "vpc" else ""
        if setup == "vpc":
            ratios[state] = t / bare
        ms = lambda v: f"{v:.2f} ms"
        print(f"{name:<36}{t / 1e6:>7,.1f} Mbit/s{ratio:>9}{ms(statistics.mean(r)):>12}"
              f"{ms(statistics.median(r)):>11}{ms(pct(r, 99)):>11}{len(r):>7}")
# Each round's VPC run beside the bare run next to it (load on the lab's host drifts).
paired = {}
for state in ("groups", "rules"):
    b, v = tput(state, "bare")[1], tput(state, "vpc")[1]
    paired[state] = [x[0] / y[0] for x, y in zip(v, b)]
    print(f"  {state}: VPC / bare in each round: "
          + ", ".join(f"{x:.2f}" for x in paired[state])
          + f"; median {statistics.median(paired[state]):.2f}x")
print()
print(f"target: VPC with {rules} rules >= 0.9x the bare bridge: {ratios['rules']:.2f}x "
      f"(median of the rounds' ratios {statistics.median(paired['rules']):.2f}x; "
      f"{'met' if ratios['rules'] >= 0.9 else 'not met'})")
if rules_t:
    print(f"({rules} rules + the real ones authorized in {rules_t[0]:.1f} s of API calls, "
          f"all in A's chain {rules_t[1]:.1f} s after the first)")
print()

# Rule changes, timed by B's connection attempts, each begun PROBE_MS after the one before and
# stamped on the lab host as its lines arrive. The rule came into force between the start of
# the last attempt in the old state and the start of the first one in the new state (allow: the
# first that connected; revoke: the first that failed with none connecting after it). The figure
# is that upper bound, from the moment the API call returned; "before" is the lower bound.
# (The result lines themselves are not used for timing: a connection's "O" is only printed once
# A's listener has run its command, and a failure is only known after nc's 1 s timeout.)
def change_ms(key):
    t0, t1 = change[key]
    att = {n: a for n, a in probe.get(key, {}).items() if "S" in a}
    if key[1] == "allow":
        first = min((n for n, a in att.items() if "O" in a), default=None)
    else:
        last_ok = max((n for n, a in att.items() if "O" in a), default=0)
        first = min((n for n, a in att.items() if n > last_ok and "F" in a), default=None)
    if first is None:
        return None, None, (t1 - t0) * 1000
    before = max((n for n in att if n < first), default=None)
    lo = (att[before]["S"] - t1) * 1000 if before is not None else None
    return max(0.0, (att[first]["S"] - t1) * 1000), lo, (t1 - t0) * 1000

print(f"rule change in force (B begins a new connection to A:5202 every {probe_ms} ms or so; the rule:")
print(f"tcp 5202 from B's /32; ms from the API call's return to the first attempt in the new state)")
worst = 0.0
for state in ("groups", "rules"):
    for kind in ("allow", "revoke"):
        keys = sorted(k for k in change if k[0] == state and k[1] == kind)
        got = [change_ms(k) for k in keys]
        ok = [g[0] for g in got if g[0] is not None]
        worst = max([worst] + [float("inf") if g[0] is None else g[0] for g in got])
        each = ", ".join("never" if g[0] is None else
                         f"{g[0]:.0f}" + (f" (before: {g[1]:.0f})" if g[1] is not None else "")
                         for g in got)
        med = f"{statistics.median(ok):>6.0f} ms" if ok else "   never"
        what = "authorize -> connects" if kind == "allow" else "revoke -> refused"
        label = f"  {state} ({chain.get(state, '?')} rules), {what}"
        print(f"{label:<46}{med}  each: {each}; API call {statistics.median(g[2] for g in got):.0f} ms")
verdict = "met" if worst < 1000 else "not met"
print(f"target: a rule change in force in < 1000 ms: worst "
      f"{'never' if worst == float('inf') else f'{worst:.0f} ms'} ({verdict})")
print()
print("each round (Mbit/s; iperf3's seconds on the guest's clock / the same run on the lab's):")
for state in ("groups", "rules"):
    for setup in ("bare", "vpc"):
        _, runs = tput(state, setup)
        print(f"  {state:<7}{setup:<5}" + "  ".join(f"{b / 1e6:,.1f} ({s:.1f}/{w:.1f} s)" for b, s, w in runs))
print(f"(whole lab output: {log})")
PY
