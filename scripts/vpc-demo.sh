#!/bin/sh
# The VPC part of `make run`: vireod with its data plane launches the Debian guest into a VPC
# subnet; the guest takes its address by DHCP and pings its router, `vireo ls` shows the
# instance with that private address, and a ping from the VPC's network namespace reaches it.
# Everything it made is removed at the end (instance, vireod, namespaces, data directory).
# It needs root (the data plane) and a KVM that runs the Debian kernel: scripts/vireod-demo.sh
# runs it directly where the host has one, and inside the lab (lab/lab --net) elsewhere.
# POSIX sh: the lab has busybox's.
# Usage: scripts/vpc-demo.sh BIN_DIR GUEST_DIR
set -eu
[ $# -eq 2 ] || { echo "usage: $0 BIN_DIR GUEST_DIR" >&2; exit 2; }
BIN=$(cd "$1" && pwd)
GUEST=$(cd "$2" && pwd)
[ "$(id -u)" = 0 ] || { echo "vpc-demo: needs root (vireod's VPC data plane)" >&2; exit 1; }
DATA=$(mktemp -d /tmp/vireo-vpc-demo.XXXXXX)
PORT=$((20000 + ${RANDOM:-$$} % 20000))
VIREOD_PID=
cleanup() {
    if [ -n "$VIREOD_PID" ]; then
        kill "$VIREOD_PID" 2>/dev/null || true
        wait "$VIREOD_PID" 2>/dev/null || true
    fi
    # The VPC's namespace, TAP, rules and dnsmasq (the instance's VMM is gone with vireod's
    # terminate below, or ends when its TAP does).
    "$BIN/vireod" remove-hosts --data-dir "$DATA/state" >/dev/null 2>&1 || true
    rm -rf "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
vireo() { "$BIN/vireo" "$@"; }
id_of() { grep -o "$1-[0-9a-f]*" | head -1; }
fail() {
    echo "vpc-demo: FAILED: $*" >&2
    sed 's/^/vireod: /' "$DATA/vireod.log" | tail -20 >&2
    exit 1
}

# The Debian guest from its initramfs alone (busybox: udhcpc, ping), waiting after its user data.
cat >"$DATA/debian.json" <<EOF
{"name": "vireo-debian-12", "kernel": "$GUEST/vmlinux", "initrd": "$GUEST/initrd.cpio.gz",
 "cmdline": "console=ttyS0 panic=-1 quiet vireo.exit=wait"}
EOF
# Its user data: a DHCP lease for eth0 (busybox udhcpc; the script sets the address and the
# default route), then a ping to the VPC's router.
cat >"$DATA/user-data.sh" <<'EOF'
#!/bin/sh
cat >/tmp/dhcp.sh <<'S'
#!/bin/sh
case $1 in bound | renew)
    ifconfig "$interface" "$ip" netmask "$subnet" up
    route add default gw "$router" dev "$interface"
    echo "$ip $router $hostname" >/tmp/lease
    ;;
esac
S
chmod +x /tmp/dhcp.sh
ifconfig eth0 up
if udhcpc -i eth0 -s /tmp/dhcp.sh -q -n -t 20 -T 1 >/dev/null 2>&1; then
    read -r ip router name </tmp/lease
    echo "demo-guest: DHCP lease $ip (router $router, host name $name)"
    if ping -c 3 -W 2 "$router" >/dev/null 2>&1; then r=answers; else r="does not answer"; fi
    echo "demo-guest: the router $router $r"
else
    echo "demo-guest: no DHCP lease"
fi
EOF

"$BIN/vireod" init --data-dir "$DATA/state" --image "$DATA/debian.json" >"$DATA/init.log" 2>&1 ||
    { cat "$DATA/init.log" >&2; echo "vpc-demo: FAILED: vireod init" >&2; exit 1; }
"$BIN/vireod" serve --data-dir "$DATA/state" --listen "127.0.0.1:$PORT" --shutdown-timeout 5 \
    ${VPC_DEMO_CAPACITY_MIB:+--capacity-memory-mib "$VPC_DEMO_CAPACITY_MIB"} >"$DATA/vireod.log" 2>&1 &
VIREOD_PID=$!
export AWS_SHARED_CREDENTIALS_FILE="$DATA/state/credentials" AWS_CONFIG_FILE="$DATA/state/config"
export VIREO_ENDPOINT="http://127.0.0.1:$PORT"
i=0
until vireo types >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 300 ] || fail "vireod did not answer"
    sleep 0.1
done
AMI=$(vireo images --json | id_of ami)
echo "--- vireo vpc create 10.0.0.0/16 --name demo"
out=$(vireo vpc create 10.0.0.0/16 --name demo) || fail "vpc create"
echo "$out"
VPC=$(echo "$out" | id_of vpc)
echo "--- vireo subnet create $VPC 10.0.1.0/24"
out=$(vireo subnet create "$VPC" 10.0.1.0/24) || fail "subnet create"
echo "$out"
SUB=$(echo "$out" | id_of subnet)
[ -n "$VPC" ] && [ -n "$SUB" ] || fail "no VPC or subnet"
echo "--- vireo run --image $AMI --type t3.nano --subnet $SUB --user-data (udhcpc, ping the router) --wait"
vireo run --image "$AMI" --type t3.nano --subnet "$SUB" --user-data "$DATA/user-data.sh" --wait \
    --ready-line "demo-guest: " --timeout 240 >"$DATA/run.out" ||
    { cat "$DATA/run.out"; fail "the instance did not come up"; }
cat "$DATA/run.out"
ID=$(id_of i <"$DATA/run.out")
[ -n "$ID" ] || fail "no instance id"
# The guest's lines after the lease (the ready line may have come before the router's ping).
i=0
until vireo console "$ID" | grep -q "demo-guest: the router\|demo-guest: no DHCP"; do
    i=$((i + 1))
    [ $i -lt 60 ] || break
    sleep 0.5
done
echo "--- vireo console $ID | grep demo-guest"
vireo console "$ID" | tr -d '\r' | grep "demo-guest:" || true
echo "--- vireo ls"
vireo ls
IP=$(vireo describe "$ID" --json | grep -o '"private_ip": *"[0-9.]*"' | grep -o '[0-9.]*"$' | tr -d '"')
[ -n "$IP" ] || fail "$ID has no private address"
vireo console "$ID" | grep -q "demo-guest: DHCP lease $IP " || fail "the guest's lease is not $IP"
NS=$(ip netns list | awk '{print $1}' | grep -- "-$VPC-h0$" | head -1)
[ -n "$NS" ] || fail "no network namespace for $VPC"
echo "--- ip netns exec $NS ping -c 3 $IP"
if ip netns exec "$NS" ping -c 3 -W 2 "$IP"; then
    echo "vpc-demo: reached $ID at its private address $IP (its DHCP lease) from its VPC's namespace"
else
    fail "no answer from $IP"
fi
echo "--- vireo terminate $ID"
vireo terminate "$ID"
i=0
until vireo describe "$ID" --json | grep -q '"terminated"'; do
    i=$((i + 1))
    [ $i -lt 300 ] || break
    sleep 0.1
done
vireo ls
