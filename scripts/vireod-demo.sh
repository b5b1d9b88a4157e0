#!/usr/bin/env bash
# The compute service end to end, as `make run` shows it: vireod with the set-up images, an
# instance of the small test guest launched and watched with the vireo CLI, then terminated.
# Usage: scripts/vireod-demo.sh BIN_DIR GUEST_DIR
set -euo pipefail
BIN=$(cd "$1" && pwd)
GUEST=$(cd "$2" && pwd)
DATA=$(mktemp -d /tmp/vireod-demo.XXXXXX)
PORT=$((20000 + RANDOM % 20000))
VIREOD_PID=
cleanup() {
    [ -z "$VIREOD_PID" ] || kill "$VIREOD_PID" 2>/dev/null || true
    [ -z "$VIREOD_PID" ] || wait "$VIREOD_PID" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT
"$BIN/vireod" init --data-dir "$DATA/state" --image "$GUEST/testguest.json" --image "$GUEST/debian.json" |
    grep -v "secret access key"
"$BIN/vireod" serve --data-dir "$DATA/state" --listen "127.0.0.1:$PORT" --shutdown-timeout 5 \
    >"$DATA/vireod.log" 2>&1 &
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
