#!/usr/bin/env bash
# Installs what the build, the guest artifacts and the lab need from Debian's packages, if it is
# missing. Quiet and quick when everything is already there.
set -euo pipefail

want() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" || need+=("$1"); }
# qemu-utils: qemu-img cross-checks the qcow2 images vireo-storage writes (its tests).
# nftables, dnsmasq-base, iproute2, conntrack: the VPC data plane (crates/net); iputils-ping and
# netcat-openbsd: its host tests (ping, nc -s for a spoofed source). openssh-client and
# openssl: tests/ec2/test_keypairs.py recomputes key fingerprints with ssh-keygen and openssl.
# mmdebstrap: images/build-debian-ami.sh builds the Debian 12 AMI's root file system with it.
# chromium, chromium-driver: the web console's browser tests (tests/console, Selenium).
missing() {
    need=()
    for p in qemu-system-x86 qemu-utils busybox-static cpio xz-utils zstd e2fsprogs binutils libc6-dev \
             nftables dnsmasq-base iproute2 conntrack iputils-ping netcat-openbsd openssh-client openssl mmdebstrap \
             chromium chromium-driver; do want "$p"; done
}
command -v cargo >/dev/null || { echo "install-deps: cargo (Rust) is missing; install rustup's stable toolchain" >&2; exit 1; }

# Twice at most: installing one package can remove another that conflicts with it (a machine
# with backports' qemu-utils 10 lost it to bookworm's qemu-system-x86 7.2), which the second
# round puts back at the matching version.
for _ in 1 2; do
    missing
    [ ${#need[@]} -gt 0 ] || break
    echo "install-deps: installing ${need[*]}"
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    # The package index may be missing on a fresh machine; update once if so.
    if ! $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
        $SUDO apt-get update -qq >/dev/null
        $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
done
missing
[ ${#need[@]} -eq 0 ] || { echo "install-deps: ${need[*]} still missing after apt-get install" >&2; exit 1; }

# The real EC2 clients the tests drive vireod with (boto3, the AWS CLI), pytest, and Selenium for
# the console's browser tests, from PyPI, in a virtual environment under build/ (reinstalled when
# tests/ec2/requirements.txt or tests/console/requirements.txt changes).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/build/pyenv"
REQS=("$ROOT/tests/ec2/requirements.txt" "$ROOT/tests/console/requirements.txt")
if [ ! -x "$VENV/bin/python" ] || ! cat "${REQS[@]}" | cmp -s - "$VENV/.requirements" 2>/dev/null; then
    command -v python3 >/dev/null || { echo "install-deps: python3 is missing" >&2; exit 1; }
    echo "install-deps: installing boto3, the AWS CLI, pytest and Selenium into build/pyenv"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${REQS[@]/#/-r}"
    cat "${REQS[@]}" > "$VENV/.requirements"
fi
