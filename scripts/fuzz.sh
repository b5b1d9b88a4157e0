#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 30) each; fails if any finds
# a crash, a hang (-timeout) or runs out of memory. Crashing inputs land in
# fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/<target>/ (both gitignored).
# Only stable Rust is needed: RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z flags (ASan).
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECONDS:-30}
targets=${FUZZ_TARGETS:-}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || exit 1
export RUSTC_BOOTSTRAP=1
# -a: debug assertions (overflow checks) on top of AddressSanitizer.
cargo fuzz build -a || exit 1
[ -n "$targets" ] || targets=$(cargo fuzz list)
mkdir -p artifacts
failed=()
summary=()
for t in $targets; do
    mkdir -p "corpus/$t"
    log="artifacts/$t.log"
    echo "== $t: ${secs}s"
    if cargo fuzz run -a "$t" "corpus/$t" -- -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        failed+=("$t")
        tail -n 40 "$log"
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1)
    summary+=("$(printf '%-16s %-7s %10s execs %7s exec/s  %s' "$t" "$result" "${runs:-?}" "${rate:-?}" "$cov")")
done
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/artifacts/*.log)" >&2
    exit 1
fi
