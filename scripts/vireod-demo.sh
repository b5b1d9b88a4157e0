#!/usr/bin/env bash
# The compute service end to end, as `make run` shows it: vireod with the set-up images, an
# instance of the small test guest launched and watched with the vireo CLI, then terminated;
# then the VPC part (scripts/vpc-demo.sh): the Debian guest in a VPC subnet, its private
# address in `vireo ls`, reached by a ping. The Debian kernel needs a hardware-assisted KVM:
# on a host whose KVM is PVM (or absent) that part runs in the lab (lab/lab --net).
# Usage: scripts/vireod-demo.sh BIN_DIR GUEST_DIR
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$(cd "$1" && pwd)
GUEST=$(cd "$2" && pwd)
DATA=$(mktemp -d /tmp/vireod-demo.XXXXXX)
PORT=$((20000 + RANDOM % 20000))
VIREOD_PID=
cleanup() {
    [ -z "$VIREOD_PID" ] || kill "$VIREOD_PID" 2>/dev/null || true
    [ -z "$VIREOD_PID" ] || wait "$VIREOD_PID" 2>/dev/null || true
    # The instance's VPC namespace, TAP, rules and dnsmasq (when vireod made them).
    "$BIN/vireod" remove-hosts --data-dir "$DATA/state" >/dev/null 2>&1 || true
    rm -rf "$DATA"
}
trap cleanup EXIT
# The VPC data plane needs root; elsewhere the instance runs without a NIC.
NET=()
[ "$(id -u)" = 0 ] || NET=(--no-network)
"$BIN/vireod" init --data-dir "$DATA/state" --image "$GUEST/testguest.json" --image "$GUEST/debian.json" \
    --image "$GUEST/debian-ami.json" |
    grep -v "secret access key"
"$BIN/vireod" serve --data-dir "$DATA/state" --listen "127.0.0.1:$PORT" --shutdown-timeout 5 \
    "${NET[@]}" >"$DATA/vireod.log" 2>&1 &
VIREOD_PID=$!
export AWS_SHARED_CREDENTIALS_FILE=$DATA/state/credentials AWS_CONFIG_FILE=$DATA/state/config
export VIREO_ENDPOINT=http://127.0.0.1:$PORT
for _ in $(seq 100); do "$BIN/vireo" types >/dev/null 2>&1 && break; sleep 0.1; done
echo "--- vireo images"
"$BIN/vireo" images
AMI=$("$BIN/vireo" images --json | grep -B2 '"vireo-testguest"' | grep -o 'ami-[0-9a-f]*' | head -1)
echo "--- vireo run --image $AMI --type t3.nano --user-data-text 'hello from make run' --wait"
"$BIN/vireo" run --image "$AMI" --type t3.nano --user-data-text "hello from make run" --wait \
    --ready-line "VIREO-TESTGUEST idle" --timeout 60
echo "--- vireo ls"
"$BIN/vireo" ls
ID=$("$BIN/vireo" ls --json | grep -o 'i-[0-9a-f]*' | head -1)
echo "--- vireo terminate $ID"
"$BIN/vireo" terminate "$ID"
# vireod gives the guest --shutdown-timeout to shut down, then ends its VMM.
for _ in $(seq 300); do
    "$BIN/vireo" describe "$ID" --json | grep -q '"terminated"' && break
    sleep 0.1
done
"$BIN/vireo" ls

# The VPC part, with vireod's data plane (root) and the Debian guest.
cleanup
trap - EXIT
if [ "$(id -u)" != 0 ]; then
    echo "--- the VPC demo is skipped: vireod's data plane needs root"
    exit 0
fi
if [ -e /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    echo "--- the VPC demo, on this host's KVM"
    "$HERE/vpc-demo.sh" "$BIN" "$GUEST"
else
    echo "--- the VPC demo, in the lab (this host's KVM cannot run the Debian kernel)"
    "$HERE/../lab/lab" run --net --timeout 300 --bin-dir "$BIN" \
        --put "$HERE/vpc-demo.sh:/vireo/vpc-demo.sh" -- \
        "ip link set lo up && VPC_DEMO_CAPACITY_MIB=1024 sh /vireo/vpc-demo.sh /vireo/bin /vireo/guest"
fi
