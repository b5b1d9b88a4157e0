#!/bin/bash
# The lab half of `make bench-net` (benches/net.sh builds its inputs, puts them in a lab booted
# with --net under /vireo/bench-net and runs this there). Two setups of the same two Debian
# guests (t3.nano: 2 vCPUs, 512 MiB; A at 10.0.1.10 serves, B at 10.0.1.11 measures):
#
# - bare: two vireo-vmm processes started here, their TAPs on a Linux bridge in a namespace
#   of their own, with no nftables at all;
# - vpc: two instances launched by vireod with the `vireo` CLI into a VPC subnet, A in group
#   `web` (icmp from the VPC's CIDR, tcp 5201 from members of `client`), B in `client`.
#
# Each guest runs the agent of benches/net.sh: iperf3 server, a listener on tcp 5202, and a
# shell on tcp 7000 that this script drives from the setup's namespace (the bridge's address,
# or the VPC namespace's router side, whose own connections no security group filters). The
# measurements are B's pings and iperf3 runs to A, both setups alternately, first with the
# groups above and then with RULES more ingress rules in `web` ahead of the real ones; and,
# in each of the two states, how long a rule change takes to be in force for B's new
# connections. Lines for the report start with NET-; a failure prints one NET-ERROR line and
# then the logs (NET-LOG) and exits 1.
#
# Environment (set by benches/net.sh): IPERF_TIME PINGS ROUNDS RULES CHANGES PROBE_MS.
set -u
export PATH=/vireo/bin:$PATH
export AWS_SHARED_CREDENTIALS_FILE=/tmp/vd/credentials AWS_CONFIG_FILE=/tmp/vd/config
export VIREO_ENDPOINT=http://127.0.0.1:8787
D=/vireo/bench-net
A=10.0.1.10 B=10.0.1.11
CMDLINE="console=ttyS0 panic=-1 quiet vireo.exit=wait"
NS= TAPA= WEB= CLIENT= IA= IB=
# iproute2's ip by its path: busybox's timeout runs its own applet for a bare "ip", which has
# no netns.
IP=$(command -v ip)

# vireo ARGS...: the CLI with a deadline, so that an API call that hangs fails the run (with
# vireod's log) instead of holding the lab until its timeout.
vireo() { timeout 120 /vireo/bin/vireo "$@"; }

fail() {
    echo "NET-ERROR $*"
    [ -f /tmp/vireod.log ] && tail -n 40 /tmp/vireod.log | sed 's/^/NET-LOG vireod: /'
    for g in a b; do
        [ -f /tmp/bare-$g.con ] && tail -n 20 /tmp/bare-$g.con | sed "s/^/NET-LOG bare-$g console: /"
        [ -f /tmp/bare-$g.log ] && tail -n 5 /tmp/bare-$g.log | sed "s/^/NET-LOG bare-$g vmm: /"
    done
    for i in $IA $IB; do vireo console "$i" 2>&1 | tail -n 20 | sed "s/^/NET-LOG $i console: /"; done
    # What else a stall leaves: the VMMs still running, the TAPs' counters, the lab's kernel.
    echo "NET-LOG vireo-vmm processes: $(for p in /proc/[0-9]*; do readlink "$p/exe"; done 2>/dev/null | grep -c vireo-vmm)"
    for ns in bare $NS; do ip -s -n "$ns" link show 2>&1 | sed "s/^/NET-LOG $ns links: /"; done
    dmesg | tail -n 30 | sed 's/^/NET-LOG lab kernel: /'
    # Each VMM's net counters (frames delivered to the guest, frames it sent) and the VM exits
    # it handled, twice 2 s apart: whether frames still move, and which way.
    local k sock
    for k in 1 2; do
        for sock in /tmp/bare-a.sock /tmp/bare-b.sock $(find /tmp/vd -name vmm.sock 2>/dev/null); do
            [ -S "$sock" ] || continue
            vireo-api "$sock" GET /metrics 2>&1 | grep -E '^vireo_(net_|vm_exits_total)' |
                sed "s|^|NET-LOG metrics $k $sock: |"
        done
        sleep 2
    done
    exit 1
}

# gx NETNS IP COMMAND: runs COMMAND in the guest's agent shell, its output on stdout. A reply
# that has not ended after GX_T seconds (default 60) ends with status 124: a guest or a path
# that stalls fails the run with its evidence instead of holding the lab until its timeout.
gx() {
    local ns=$1 ip=$2
    shift 2
    timeout "${GX_T:-60}" "$IP" netns exec "$ns" nc -w 5 "$ip" 7000 <<<"$*
exit" 2>/dev/null
}

# wait_agent NETNS IP: until the guest's agent answers (boot, DHCP), at most 300 s.
wait_agent() {
    local i=0
    until gx "$1" "$2" "echo AGENT-UP" | grep -q AGENT-UP; do
        i=$((i + 1))
        [ $i -lt 300 ] || fail "the guest at $2 (namespace $1) did not answer in 300 s"
        sleep 1
    done
}

# --- the inputs -------------------------------------------------------------------------------
ip link set lo up
cat /vireo/guest/initrd.cpio.gz $D/extra.cpio.gz >/tmp/bench-initrd.gz || fail "cannot write the guests' initrd"

# --- bare: a Linux bridge, no rules ------------------------------------------------------------
while read -r m; do insmod "$D/mods/$m" || fail "insmod $m failed"; done <$D/mods/order
ip netns add bare || fail "ip netns add bare failed"
ip -n bare link set lo up
ip -n bare link add br0 type bridge || fail "cannot make a bridge"
ip -n bare addr add 10.0.1.1/24 dev br0
ip -n bare link set br0 up
for g in a b; do
    ip -n bare tuntap add dev tap-$g mode tap || fail "cannot make tap-$g"
    ip -n bare link set tap-$g master br0 up || fail "cannot put tap-$g on the bridge"
done
[ -z "$(ip netns exec bare nft list ruleset)" ] || fail "the bare namespace has nftables rules"
bare_vmm() { # bare_vmm NAME IP MAC
    ip netns exec bare vireo-vmm --kernel /vireo/guest/vmlinux --initrd /tmp/bench-initrd.gz \
        --vcpus 2 --memory 512 --net "tap=tap-$1,mac=$3" --serial "file:/tmp/bare-$1.con" --api-sock "/tmp/bare-$1.sock" \
        --cmdline "$CMDLINE vireo.run=benchnet bench.ip=$2/24" >/tmp/bare-$1.log 2>&1 &
}
bare_vmm a $A 02:00:00:00:01:0a
bare_vmm b $B 02:00:00:00:01:0b

# --- vpc: vireod, a VPC, two groups, two instances ---------------------------------------------
cat >/tmp/bench.json <<JSON
{"name": "bench-net", "kernel": "/vireo/guest/vmlinux", "initrd": "/tmp/bench-initrd.gz",
 "cmdline": "$CMDLINE"}
JSON
printf '#!/bin/sh\nexec sh /etc/vireo/benchnet.sh\n' >/tmp/user-data.sh
vireod init --data-dir /tmp/vd --image /tmp/bench.json >/tmp/init.log 2>&1 ||
    fail "vireod init failed: $(tr '\n' ' ' </tmp/init.log)"
vireod serve --data-dir /tmp/vd --listen 127.0.0.1:8787 --capacity-memory-mib 2048 \
    --shutdown-timeout 30 >/tmp/vireod.log 2>&1 &
i=0
until vireo types >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 300 ] || fail "vireod did not answer in 30 s"
    sleep 0.1
done
id_of() { grep -o "$1-[0-9a-f]*" | head -n1; }
AMI=$(vireo images --json | id_of ami)
VPC=$(vireo vpc create 10.0.0.0/16 --name bench | id_of vpc)
SUB=$(vireo subnet create "$VPC" 10.0.1.0/24 | id_of subnet)
WEB=$(vireo sg create web --vpc "$VPC" | id_of sg)
CLIENT=$(vireo sg create client --vpc "$VPC" | id_of sg)
[ -n "$AMI" ] && [ -n "$VPC" ] && [ -n "$SUB" ] && [ -n "$WEB" ] && [ -n "$CLIENT" ] ||
    fail "cannot make the image, VPC, subnet or groups"
# The real rules of A's group (added again behind the RULES others later).
real_rules() { # real_rules allow|revoke
    vireo sg "$1" "$WEB" --proto icmp --cidr 10.0.0.0/16 >/dev/null &&
        vireo sg "$1" "$WEB" --proto tcp --port 5201 --group "$CLIENT" >/dev/null
}
real_rules allow || fail "cannot authorize web's rules"
run() { vireo run --image "$AMI" --type t3.nano --subnet "$SUB" --json --user-data /tmp/user-data.sh "$@" | id_of i; }
IA=$(run --sg "$WEB" --private-ip $A)
IB=$(run --sg "$CLIENT" --private-ip $B)
[ -n "$IA" ] && [ -n "$IB" ] || fail "RunInstances failed"
echo "NET-INSTANCES $IA $IB"
# The VPC namespace (the one routing A's and B's addresses) and A's TAP; the data plane
# applies launches in the background, so wait for the routes.
i=0
while [ -z "$TAPA" ]; do
    for ns in $(ip netns list | awk '{print $1}'); do
        case $ns in vireo-*) ;; *) continue ;; esac
        ip -n "$ns" route show $B 2>/dev/null | grep -q dev || continue
        NS=$ns
        TAPA=$(ip -n "$ns" route show $A | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}')
    done
    i=$((i + 1))
    [ -n "$TAPA" ] || [ $i -lt 240 ] || fail "the data plane made no routes to $A and $B in 120 s"
    [ -n "$TAPA" ] || sleep 0.5
done
echo "NET-NETNS $NS A-TAP $TAPA"
# Rules that accept something in A's ingress chain.
chain_rules() { ip netns exec "$NS" nft list chain inet vireo "in-$TAPA" 2>/dev/null | grep -c 'accept$'; }

for s in bare:$A bare:$B "$NS:$A" "$NS:$B"; do wait_agent "${s%%:*}" "${s#*:}"; done
echo "NET-AGENTS-UP"
for ns in bare "$NS"; do
    gx "$ns" $B "ping -c 3 -W 5 $A" | grep -q 'bytes from' || fail "B does not reach A by ping in namespace $ns"
done

# --- measurements ----------------------------------------------------------------------------
# measure STATE SETUP NETNS ROUND: B's pings to A, then one iperf3 run B -> A (lab clock around it).
measure() {
    local state=$1 setup=$2 ns=$3 r=$4 t0 t1 out
    echo "NET-STEP measure $state $setup $r"
    # Deadlines in the guest, so that a stuck run ends as a failure instead of holding the lab.
    out=$(GX_T=$((PINGS / 20 + 120)) gx "$ns" $B "ping -c $PINGS -i 0.05 -w $((PINGS / 20 + 60)) $A 2>&1") ||
        fail "B's pings to A did not end ($setup, $state, round $r); their output: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
    sed "s/^/NET-PING $state $setup $r /" <<<"$out"
    t0=$EPOCHREALTIME
    out=$(GX_T=$((IPERF_TIME + 120)) gx "$ns" $B "timeout $((IPERF_TIME + 60)) iperf3 -c $A -t $IPERF_TIME -J 2>&1") ||
        fail "B's iperf3 to A did not end ($setup, $state, round $r)"
    out=$(tr -d '\n' <<<"$out")
    t1=$EPOCHREALTIME
    echo "NET-IPERF $state $setup $r $t0 $t1 $out"
}
# rounds STATE: ROUNDS rounds of both setups, which one goes first alternating.
rounds() {
    local r
    for r in $(seq "$ROUNDS"); do
        if [ $((r % 2)) -eq 1 ]; then
            measure "$1" bare bare "$r"
            measure "$1" vpc "$NS" "$r"
        else
            measure "$1" vpc "$NS" "$r"
            measure "$1" bare bare "$r"
        fi
    done
}
# change STATE KIND REP: B probes A:5202 (a new connection every PROBE_MS, each stamped here on
# arrival: "S n" begun, "O n" connected, "F n" not within 1 s) while the rule that opens it to
# B is authorized (KIND allow) or revoked (KIND revoke) through the API.
change() {
    local state=$1 kind=$2 rep=$3 from=F to=O t0 t1 i pnc pst
    [ "$kind" = allow ] || { from=O to=F; }
    echo "NET-STEP change $state $kind $rep"
    rm -f /tmp/pf /tmp/probe.log
    mkfifo /tmp/pf
    timeout 180 "$IP" netns exec "$NS" nc $B 7000 >/tmp/pf 2>/dev/null <<<"rm -f /tmp/probe.stop
sh /etc/vireo/bench-probe.sh $A 5202 $((PROBE_MS * 1000))
exit" &
    pnc=$!
    while IFS= read -r l; do echo "$EPOCHREALTIME $l"; done </tmp/pf >/tmp/probe.log &
    pst=$!
    i=0
    until [ "$(grep -c " $from " /tmp/probe.log)" -ge 2 ]; do
        i=$((i + 1))
        [ $i -lt 600 ] || fail "the probe of A:5202 before the $kind never showed $from (state $state)"
        sleep 0.05
    done
    t0=$EPOCHREALTIME
    vireo sg "$kind" "$WEB" --proto tcp --port 5202 --cidr $B/32 >/dev/null || fail "sg $kind of tcp 5202 failed"
    t1=$EPOCHREALTIME
    # Enough of the new state (three results stamped after the call returned), 15 s at most.
    i=0
    until [ "$(awk -v t="$t1" -v w="$to" '$1 > t && $2 == w' /tmp/probe.log | wc -l)" -ge 3 ] || [ $i -ge 300 ]; do
        i=$((i + 1))
        sleep 0.05
    done
    gx "$NS" $B "touch /tmp/probe.stop" >/dev/null
    wait $pnc $pst
    echo "NET-CHANGE $state $kind $rep $t0 $t1"
    sed "s/^/NET-PROBE $state $kind $rep /" /tmp/probe.log
}
changes() {
    local r
    for r in $(seq "$CHANGES"); do
        change "$1" allow "$r"
        change "$1" revoke "$r"
    done
}

echo "NET-CHAIN groups $(chain_rules)"
rounds groups
changes groups

# RULES more ingress rules in web, distinct sources and ports that B's traffic never matches,
# then the real rules again behind them: a connection's first packet walks all of them.
t0=$EPOCHREALTIME
real_rules revoke || fail "cannot revoke web's rules"
n=0
while [ $n -lt "$RULES" ]; do
    args=()
    k=0
    while [ $k -lt 250 ] && [ $n -lt "$RULES" ]; do
        k=$((k + 1)) n=$((n + 1))
        args+=("IpPermissions.$k.IpProtocol=tcp" "IpPermissions.$k.FromPort=$((20000 + n))"
            "IpPermissions.$k.ToPort=$((20000 + n))"
            "IpPermissions.$k.IpRanges.1.CidrIp=172.16.$((n / 250)).$((n % 250 + 1))/32")
    done
    vireo call AuthorizeSecurityGroupIngress "GroupId=$WEB" "${args[@]}" >/dev/null ||
        fail "AuthorizeSecurityGroupIngress of rules up to $n failed"
done
real_rules allow || fail "cannot authorize web's rules again"
t1=$EPOCHREALTIME
i=0
until [ "$(chain_rules)" -ge $((RULES + 2)) ]; do
    i=$((i + 1))
    [ $i -lt 600 ] || fail "A's chain has $(chain_rules) rules 60 s after the API calls, not $((RULES + 2))"
    sleep 0.1
done
t2=$EPOCHREALTIME
echo "NET-RULES $RULES $t0 $t1 $t2"
echo "NET-CHAIN rules $(chain_rules)"
rounds rules
changes rules

echo "NET-VERSION $(gx "$NS" $A "iperf3 --version" | head -n1)"
vireo terminate "$IA" "$IB" >/dev/null
# vireod's log, for a look at its data plane's timing afterwards (the report skips NET-LOG).
sed 's/^/NET-LOG vireod: /' /tmp/vireod.log
echo "NET-DONE"
