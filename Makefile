# Vireo: `make run` (set up, build, boot the Debian guest) and `make test` (set up, all tests).
SHELL := /bin/bash
.DEFAULT_GOAL := run

TARGET      := x86_64-unknown-linux-gnu
# Static binaries: the same build runs on the host and inside the lab's initramfs.
STATIC_ENV  := RUSTFLAGS="-C target-feature=+crt-static"
BIN_DIR     := target/$(TARGET)/release
VMM         := $(BIN_DIR)/vireo-vmm
GUEST_DIR   := build/guest

.PHONY: run test deps build images smoke bench-boot bench-console bench-api bench-io bench-net bench-migrate stress-migrate test-migrate-many fuzz lint fmt clippy clean

deps:
	@scripts/install-deps.sh

build: deps
	$(STATIC_ENV) cargo build --release --target $(TARGET) --workspace --bins

# The Debian 12 AMI (images/build-debian-ami.sh: mmdebstrap, as root or through sudo) takes a
# minute or two when its inputs changed, nothing otherwise.
images: deps
	@images/build-guest.sh $(GUEST_DIR)
	@images/build-testguest.sh $(GUEST_DIR)
	@images/build-debian-ami.sh $(GUEST_DIR) >/dev/null

# Boots the Debian cloud kernel under vireo-vmm with 2 vCPUs and 512 MiB and shows its console:
# directly where the host has VT-x/AMD-V, otherwise inside the lab.
smoke: build images
	@scripts/smoke.sh $(VMM) $(GUEST_DIR)

# The main job: the VMM boots Debian (smoke), then vireod launches an instance through its API.
run: smoke
	@scripts/vireod-demo.sh $(BIN_DIR) $(GUEST_DIR)

# Rust tests (unit, host KVM, lab), then vireod end to end with boto3 and the AWS CLI, then the
# web console in headless Chromium (tests/console; screenshots in build/console-screenshots/).
# Lab runs repeated because the emulated host broke (tests/src/lib.rs run_in_lab) are listed
# at the end.
test: build images
	@rm -f build/lab/retries.log
	VIREO_VMM_BIN=$(CURDIR)/$(VMM) cargo test --workspace --no-fail-fast; rust=$$?; \
	VIREOD_BIN=$(CURDIR)/$(BIN_DIR)/vireod VIREO_VMM_BIN=$(CURDIR)/$(VMM) \
	  build/pyenv/bin/python -m pytest -q -p no:cacheprovider tests/ec2; py=$$?; \
	VIREOD_BIN=$(CURDIR)/$(BIN_DIR)/vireod VIREO_VMM_BIN=$(CURDIR)/$(VMM) \
	  build/pyenv/bin/python -m pytest -q -p no:cacheprovider tests/console; console=$$?; \
	if [ -s build/lab/retries.log ]; then \
	  echo "lab runs repeated because the lab's L1 kernel broke or froze:"; cat build/lab/retries.log; fi; \
	[ $$rust -eq 0 ] && [ $$py -eq 0 ] && [ $$console -eq 0 ]

bench-boot: build images
	@benches/boot.sh

# The console's instance list with 1,000 instances in headless Chromium (navigation to table
# drawn) beside boto3's DescribeInstances of the same 1,000; see docs/console.md.
bench-console: build images
	VIREOD_BIN=$(CURDIR)/$(BIN_DIR)/vireod VIREO_VMM_BIN=$(CURDIR)/$(VMM) build/pyenv/bin/python tests/console/bench_list.py

# vireod's control-plane latency with boto3: RunInstances-to-running over 50 launches (beside
# vireo-vmm started directly) and DescribeInstances over 1,000 and 10,000 records.
bench-api: build images
	VIREOD_BIN=$(CURDIR)/$(BIN_DIR)/vireod VIREO_VMM_BIN=$(CURDIR)/$(VMM) build/pyenv/bin/python benches/api.py

# Snapshot/restore and live-migration times beside QEMU's, in the lab; see docs/snapshots.md.
bench-migrate: build images
	@benches/migrate.sh

# Hundreds of live migrations and snapshot restores of ticking Debian guests in one lab boot,
# alternating with QEMU's migrations of the same guests; counts, for each VMM, the moves whose
# guest stopped, and keeps each one's evidence under build/stress-migrate/. A report, not a
# test (about 45 min); see docs/snapshots.md.
stress-migrate: build images
	@benches/stress-migrate.sh

# The 28-move lab test of a dirty Debian guest (tests/tests/lab_migrate_many.rs), kept out of
# `make test` while the lab's emulated host breaks during long migration runs (issue 21).
test-migrate-many: build images
	VIREO_VMM_BIN=$(CURDIR)/$(VMM) cargo test -p vireo-tests --test lab_migrate_many -- --ignored

# Block (fio) and network (iperf3) throughput in the lab; see docs/benchmarks.md.
bench-io: build images
	@benches/io.sh

# TCP throughput and ping between two instances through the VPC data plane (groups in force,
# then 1,000 more rules) beside the same guests on a bare bridge, and how long a rule change
# takes to be in force, in the lab; see docs/benchmarks.md.
bench-net: build images
	@benches/net.sh

# Each virtio fuzz target (fuzz/, docs/fuzzing.md) for FUZZ_SECONDS; fails on any crash or hang.
FUZZ_SECONDS ?= 30
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

fmt:
	cargo fmt --all

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

lint: clippy
	cargo fmt --all -- --check

clean:
	cargo clean
	rm -rf build
