#!/usr/bin/env bash
# make stress-migrate: in one lab boot (with QEMU), moves ticking Debian guests again and again
# and counts, for each VMM, the moves after which the guest did not keep ticking. Not a test:
# it reports (docs/snapshots.md, "Stress run").
#
# Each case (a guest size in MiB and idle or dirty: 16 MiB of a tmpfs file rewritten every
# 0.1 s) boots one guest under vireo-vmm and one under QEMU (-M microvm), both printing a tick
# line of ~80 bytes every 50 ms on their serial console, and then alternates one move of each, MOVES times:
#   - vireo-vmm: a live migration over loopback to a new vireo-vmm (PUT /vm/migrate, downtime
#     50 ms); every fourth move instead a snapshot (PUT /vm/pause, PUT /vm/snapshot) and a
#     restore in a new vireo-vmm, alternately by `--restore --resume` and by
#     `PUT /vm/snapshot/load` to a VMM waiting with only its API;
#   - QEMU: a live migration over loopback to a new QEMU (QMP migrate, downtime-limit 50 ms).
# A move counts as good when the guest shows 20 more ticks within 30 s of it. A guest that
# does not is a failure: its evidence is kept (console, the VMM's threads, metrics and stderr,
# the lab's kernel messages and, for vireo-vmm, a snapshot of the stuck machine, decoded by
# `vireo-snapshot-dump`), the stuck machine's snapshot is restored once more to see whether it
# ticks from its saved state, then it is stopped and a new guest boots for the next move.
#
# Environment: MOVES (per case and VMM, default 60), CASES (default "1024-1 256-1 1024-0 256-0",
# size-dirty), QEMU (1: alternate with QEMU, default; 0: vireo-vmm only), TIMEOUT (the lab's,
# default 3000 s; no new case starts in its last 10%), BIN_DIR, ALT_VMM (optional: another
# vireo-vmm build that restores each stuck vireo guest's snapshot once more instead of the
# same build), OUT (default build/stress-migrate/<time>); REPORT_ONLY=DIR prints a finished
# run's report again.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/tick-guest.sh
BIN_DIR=${BIN_DIR:-target/x86_64-unknown-linux-gnu/release}
MOVES=${MOVES:-60}
CASES=${CASES:-"1024-1 256-1 1024-0 256-0"}
QEMU=${QEMU:-1}
TIMEOUT=${TIMEOUT:-3000}
OUT=${REPORT_ONLY:-${OUT:-build/stress-migrate/$(date +%Y%m%d-%H%M%S)}}
[[ $MOVES =~ ^[1-9][0-9]*$ ]] || { echo "stress-migrate: MOVES wants a positive number, not '$MOVES'" >&2; exit 1; }
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || { echo "stress-migrate: TIMEOUT wants seconds, not '$TIMEOUT'" >&2; exit 1; }
for c in $CASES; do
  [[ $c =~ ^[1-9][0-9]*-[01]$ ]] || { echo "stress-migrate: a case is SIZE-DIRTY (1024-1), not '$c'" >&2; exit 1; }
done
for b in vireo-vmm vireo-api vireo-snapshot-dump; do
  [ -x "$BIN_DIR/$b" ] || { echo "stress-migrate: $BIN_DIR/$b is missing: run make build first" >&2; exit 1; }
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The lab gets vireo-vmm and vireo-api (and ALT_VMM as vireo-vmm-alt), nothing else it does
# not use.
mkdir -p "$work/bin"
cp "$BIN_DIR/vireo-vmm" "$BIN_DIR/vireo-api" "$work/bin/"
[ -z "${ALT_VMM:-}" ] || cp "$ALT_VMM" "$work/bin/vireo-vmm-alt"

# Each tick line is padded to ~80 bytes: the console's transmit interrupts are then busy
# whenever a move stops the machine (a serial interrupt caught in flight is the classic way a
# migrated guest's console stops).
tick_guest_initrd "$work" stress "" ................................................................

{ tick_lab_prelude; cat <<'LAB'
# No case starts after this (the lab's timeout less a tenth).
STOP_AT=$((EPOCHSECONDS + TIMEOUT * 9 / 10 - 60))
# wait_tick FILE N SECS: until FILE shows tick N; status 1 when SECS pass first.
wait_tick() {
  local until=$((EPOCHSECONDS + $3)) t
  while :; do
    t=$(last "$1")
    [ -n "$t" ] && [ "$t" -ge "$2" ] && return 0
    [ $EPOCHSECONDS -ge $until ] && return 1
    sleep 0.05
  done
}
# wait_listen PORT: until something listens on 127.0.0.1:PORT (10 s at most).
wait_listen() {
  local hex n=0
  hex=$(printf '%04X' "$1")
  until grep -q ":$hex 00000000:0000 0A" /proc/net/tcp; do
    sleep 0.05; n=$((n + 1)); [ $n -lt 200 ] || return 1
  done
}
# threads PID: each thread's name, state, user and system ticks and wait channel.
threads() {
  local t
  for t in /proc/$1/task/*; do
    echo "  $(cat $t/comm 2>/dev/null) $(sed 's/^.*) //' $t/stat 2>/dev/null | cut -d' ' -f1,12,13) $(cat $t/wchan 2>/dev/null)"
  done
}
port=6000
# A vCPU's fault (a triple fault: KVM_EXIT_SHUTDOWN) is logged with the vCPU's registers and
# pending events.
export VIREO_LOG=warn,vmm::vstate::vcpu=debug
vn=0   # vireo-vmm processes started
good_v=0 bad_v=0 fail_v=0 good_q=0 bad_q=0 fail_q=0

# --- vireo-vmm -------------------------------------------------------------------------------
# The running guest: its API socket, pid, stderr; the console file is $vcon.
vboot() {
  vn=$((vn + 1)); vs=/tmp/v$vn.sock ve=/tmp/v$vn.err
  vireo-vmm --kernel $K --initrd /tmp/i.gz --memory $size --cmdline "$cmd" \
      --api-sock $vs --serial file:$vcon 2>$ve & vp=$!
  local t; t=$(last $vcon)
  wait_tick $vcon $((${t:-0} + 20)) 120
}
# vevidence WHY: what the stuck guest's VMM and machine look like, between markers.
vevidence() {
  echo "EVIDENCE-BEGIN vireo $case $move $kind: $1"
  echo "## console (last 15 lines)"; tail -n 15 $vcon
  for i in 1 2; do
    echo "## threads of $vp (name state utime stime wchan), sample $i"; threads $vp
    echo "## metrics, sample $i"; vireo-api $vs GET /metrics 2>&1 | grep -E '^vireo_vcpu|^vireo_(virtio|serial)' | head -30
    sleep 1
  done
  echo "## GET /vm"; vireo-api $vs GET /vm 2>&1
  echo "## stderr (last 20 lines)"; tail -n 20 $ve
  echo "## lab kernel (last 25 lines)"; dmesg | tail -n 25
  rm -rf /tmp/stuck
  if vireo-api $vs PUT /vm/pause >/dev/null 2>&1 && vireo-api $vs PUT /vm/snapshot '{"path": "/tmp/stuck"}' >/dev/null 2>&1; then
    echo "## state (base64)"; base64 /tmp/stuck/state; echo "## end of state"
  else
    echo "## no snapshot of the stuck machine"
  fi
  vireo-api $vs PUT /vm/stop >/dev/null 2>&1 || kill $vp 2>/dev/null
  wait $vp 2>/dev/null
  if [ -f /tmp/stuck/state ]; then
    # Does the stuck machine tick again when restored from what was saved of it (by
    # ALT_VMM if given)? If it does, what stopped it was not in the state a snapshot keeps.
    alt=vireo-vmm; [ -x /vireo/bin/vireo-vmm-alt ] && alt=vireo-vmm-alt
    t=$(last $vcon)
    $alt --restore /tmp/stuck --resume --no-verify-memory --api-sock /tmp/alt.sock \
        --serial file:$vcon 2>/tmp/alt.err & a=$!
    if wait_tick $vcon $((t + 20)) 30; then echo "## $alt --restore of the stuck machine: ticking"; else echo "## $alt --restore of the stuck machine: stuck"; fi
    vireo-api /tmp/alt.sock PUT /vm/stop >/dev/null 2>&1 || kill $a 2>/dev/null; wait $a 2>/dev/null
  fi
  echo "EVIDENCE-END"
}
# vmove: one move of the vireo guest (kind by move number); sets $ok.
vmove() {
  local t r= n2 s2 e2 p2 body
  n2=$((vn + 1)); s2=/tmp/v$n2.sock e2=/tmp/v$n2.err
  if [ $((move % 4)) = 0 ]; then
    kind=restore-exec; [ $((move % 8)) = 0 ] && kind=restore-api
    rm -rf /tmp/snap
    if ! { vireo-api $vs PUT /vm/pause >/dev/null && r=$(vireo-api $vs PUT /vm/snapshot '{"path": "/tmp/snap"}'); }; then
      echo "MOVE vireo $case $move $kind failed: snapshot: $r"; fail_v=$((fail_v + 1)); vireo-api $vs PUT /vm/resume >/dev/null 2>&1; ok=move-failed; return
    fi
    vireo-api $vs PUT /vm/stop >/dev/null; wait $vp
    t=$(last $vcon)
    vn=$n2
    if [ $kind = restore-exec ]; then
      vireo-vmm --restore /tmp/snap --resume --no-verify-memory --api-sock $s2 --serial file:$vcon 2>$e2 & p2=$!
    else
      vireo-vmm --api-sock $s2 --serial file:$vcon 2>$e2 & p2=$!
      n=0; until vireo-api $s2 GET /vm >/dev/null 2>&1; do sleep 0.05; n=$((n + 1)); [ $n -gt 200 ] && break; done
      vireo-api $s2 PUT /vm/snapshot/load '{"path": "/tmp/snap", "resume": true, "verify_memory": false}' >/dev/null
    fi
    vs=$s2 ve=$e2 vp=$p2
  else
    kind=migrate
    port=$((port + 1))
    vireo-vmm --incoming 127.0.0.1:$port --api-sock $s2 --serial file:$vcon 2>$e2 & p2=$!
    vn=$n2
    wait_listen $port || { echo "MOVE vireo $case $move $kind failed: no listener: $(tail -2 $e2)"; kill $p2; wait $p2; fail_v=$((fail_v + 1)); ok=move-failed; return; }
    body="{\"destination\": \"127.0.0.1:$port\", \"downtime_ms\": 50}"
    if ! r=$(vireo-api $vs PUT /vm/migrate "$body" 2>&1); then
      echo "MOVE vireo $case $move $kind failed: $r; source $vp $(kill -0 $vp 2>/dev/null && echo alive || echo gone): $(tail -n 3 $ve | tr '\n' ' ')"
      kill $p2 2>/dev/null; wait $p2; fail_v=$((fail_v + 1)); ok=move-failed; return
    fi
    wait $vp
    vs=$s2 ve=$e2 vp=$p2
    # Counted from the end of the migration: the source ticked on while it ran.
    t=$(last $vcon)
  fi
  if wait_tick $vcon $((t + 20)) 30; then ok=ticking; else ok=stuck; fi
  echo "MOVE vireo $case $move $kind $ok ${r:-}"
}

# --- QEMU --------------------------------------------------------------------------------------
qn=0
# qstart ARGS...: a QEMU (number $qn, pid $qp, console /tmp/q$qn.log, QMP /tmp/q$qn.sock).
qstart() {
  qn=$((qn + 1))
  qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m $size -smp 1 -nodefaults -no-user-config \
      -nographic -display none -kernel $K -initrd /tmp/i.gz -append "$cmd" -serial file:/tmp/q$qn.log \
      -qmp unix:/tmp/q$qn.sock,server=on,wait=off "$@" >/tmp/q$qn.err 2>&1 & qp=$!
  qcon=/tmp/q$qn.log
}
qboot() { qstart; wait_tick $qcon 20 120; }
qevidence() {
  echo "EVIDENCE-BEGIN qemu $case $move migrate: $1"
  echo "## console (last 15 lines)"; tail -n 15 $qcon
  echo "## threads of $qp (name state utime stime wchan)"; threads $qp
  echo "## query-status"; vireo-api --qmp /tmp/q$qn.sock '{"execute": "query-status"}' 2>&1
  # The vCPU's registers (as vireo-snapshot-dump shows vireo's), twice a second apart.
  for i in 1 2; do
    echo "## info registers, sample $i"
    vireo-api --qmp /tmp/q$qn.sock '{"execute": "human-monitor-command", "arguments": {"command-line": "info registers"}}' 2>&1 \
        | sed 's/\\r//g; s/\\n/\n/g'
    sleep 1
  done
  echo "## stderr"; tail -n 10 /tmp/q$qn.err
  echo "## lab kernel (last 25 lines)"; dmesg | tail -n 25
  echo "EVIDENCE-END"
  kill $qp 2>/dev/null; wait $qp 2>/dev/null
}
qmove() {
  local src=$qn sp=$qp st n t
  port=$((port + 1))
  qstart -incoming tcp:127.0.0.1:$port
  wait_listen $port || { echo "MOVE qemu $case $move migrate failed: no listener"; kill $qp; wait $qp; qn=$src qp=$sp qcon=/tmp/q$src.log; fail_q=$((fail_q + 1)); ok=move-failed; return; }
  vireo-api --qmp /tmp/q$src.sock '{"execute": "migrate-set-parameters", "arguments": {"downtime-limit": 50}}' >/dev/null
  vireo-api --qmp /tmp/q$src.sock "{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"tcp:127.0.0.1:$port\"}}" >/dev/null
  n=0; st=
  while [ $n -lt 1200 ]; do
    st=$(vireo-api --qmp /tmp/q$src.sock '{"execute": "query-migrate"}')
    case "$st" in *'"completed"'*|*'"failed"'*) break;; esac
    sleep 0.1; n=$((n + 1))
  done
  case "$st" in
    *'"completed"'*) ;;
    *) echo "MOVE qemu $case $move migrate failed: $(echo "$st" | tr -d '\r\n')"
       vireo-api --qmp /tmp/q$src.sock '{"execute": "migrate_cancel"}' >/dev/null 2>&1
       kill $qp; wait $qp; qn=$src qp=$sp qcon=/tmp/q$src.log; fail_q=$((fail_q + 1)); ok=move-failed; return;;
  esac
  kill $sp 2>/dev/null; wait $sp 2>/dev/null
  # Counted from the end of the migration, on the source's console: the destination's starts
  # empty and its first tick continues the count.
  t=$(last /tmp/q$src.log)
  if wait_tick $qcon $((t + 20)) 30; then ok=ticking; else ok=stuck; fi
  echo "MOVE qemu $case $move migrate $ok $(echo "$st" | tr -d '\r\n' | grep -o '"downtime": [0-9]*')"
}

for case in $CASES; do
  [ $EPOCHSECONDS -lt $STOP_AT ] || { echo "NOTE no time left for case $case"; continue; }
  n_moves=${case#*:} case=${case%:*}
  size=${case%-*} dirty=${case#*-}
  cmd="console=ttyS0 panic=-1 quiet vireo.run=stress vireo.exit=wait vireo.dirty=$dirty"
  vcon=/tmp/vcon-$case.log
  kind=boot
  vboot || echo "NOTE vireo $case: the first guest did not tick"
  [ "$QEMU" = 1 ] && { qboot || echo "NOTE qemu $case: the first guest did not tick"; }
  for move in $(seq $n_moves); do
    [ $EPOCHSECONDS -lt $((STOP_AT + TIMEOUT / 20)) ] || { echo "NOTE $case: out of time after $((move - 1)) moves"; break; }
    # A guest can also die between moves (its VMM ends with "guest failed"): that counts
    # against the move before, whose guest did not keep ticking.
    if ! kill -0 $vp 2>/dev/null; then
      wait $vp; st=$?
      bad_v=$((bad_v + 1))
      echo "DIED vireo $case $((move - 1)) $kind status $st: $(grep -v '^$' $ve | tail -n 2 | tr '\n' ' ')"
      echo "EVIDENCE-BEGIN vireo $case $((move - 1)) $kind: the VMM ended with status $st"
      echo "## stderr (last 20 lines)"; tail -n 20 $ve
      echo "## console (last 15 lines)"; tail -n 15 $vcon
      echo "## lab kernel (last 25 lines)"; dmesg | tail -n 25
      echo "EVIDENCE-END"
      vboot; kind=boot
    fi
    if [ "$QEMU" = 1 ] && ! kill -0 $qp 2>/dev/null; then
      wait $qp; st=$?
      bad_q=$((bad_q + 1))
      echo "DIED qemu $case $((move - 1)) migrate status $st: $(tail -n 2 /tmp/q$qn.err | tr '\n' ' ')"
      qevidence "QEMU ended with status $st"
      qboot
    fi
    kind=migrate; r=
    vmove
    case $ok in
      ticking) good_v=$((good_v + 1));;
      stuck) bad_v=$((bad_v + 1)); vevidence "no tick for 30 s after the move"; vboot; kind=boot;;
    esac
    if [ "$QEMU" = 1 ]; then
      qmove
      case $ok in
        ticking) good_q=$((good_q + 1));;
        stuck) bad_q=$((bad_q + 1)); qevidence "no tick for 30 s after the move"; qboot;;
      esac
    fi
  done
  vireo-api $vs PUT /vm/stop >/dev/null 2>&1 || kill $vp 2>/dev/null; wait $vp 2>/dev/null
  [ "$QEMU" = 1 ] && { kill $qp 2>/dev/null; wait $qp 2>/dev/null; }
  echo "CASE-DONE $case vireo $good_v/$bad_v/$fail_v qemu $good_q/$bad_q/$fail_q"
done
echo "COUNTS vireo good=$good_v stuck=$bad_v failed=$fail_v qemu good=$good_q stuck=$bad_q failed=$fail_q"
echo "LAB-KERNEL-BEGIN"; dmesg | grep -iE 'soft lockup|hung task|rcu|BUG:|panic|kvm|tsc|watchdog' | tail -n 40; echo "LAB-KERNEL-END"
qemu-system-x86_64 --version 2>/dev/null | head -1
LAB
} > "$work/lab.sh"

if [ -n "${REPORT_ONLY:-}" ]; then
  # Only the report, again, from a finished run's out.txt (REPORT_ONLY=its directory).
  rc=0
else
echo "stress-migrate: cases $CASES, $MOVES moves each per VMM, QEMU=$QEMU, lab timeout ${TIMEOUT}s; output in $OUT" >&2
with_qemu=; [ "$QEMU" = 1 ] && with_qemu=--with-qemu
# One lab boot does every case. The emulated host itself breaks now and then (its kernel
# panics or freezes: status 125; docs/lab.md): the moves it did not get to then run in a
# further boot, as long as the time lasts; each broken boot is reported with the line of its
# L1 console that condemned it and the thread it named (lab-console-N.log keeps it all).
rc=0 boot=0 t_end=$((SECONDS + TIMEOUT))
: > "$OUT/out.txt"
# todo: SIZE-DIRTY:MOVES for each case with moves left (vireo-vmm's moves count).
todo() {
  local c done
  for c in $CASES; do
    done=$(grep -c "^MOVE vireo $c " "$OUT/out.txt")
    [ "$done" -lt "$MOVES" ] && printf '%s:%s ' "$c" $((MOVES - done))
  done
}
while [ -n "$(todo)" ] && [ $((t_end - SECONDS)) -gt 240 ]; do
  boot=$((boot + 1)) rc=0
  lab/lab run $with_qemu --smp 2 --mem 4096 --timeout $((t_end - SECONDS)) --bin-dir "$work/bin" \
      --put "$work/extra.gz:/tmp/extra.gz" --put "$work/lab.sh:/tmp/lab.sh" \
      -- "TIMEOUT=$((t_end - SECONDS)) CASES='$(todo)' QEMU=$QEMU bash /tmp/lab.sh" \
      > "$OUT/out-$boot.txt" 2> "$OUT/stderr-$boot.txt" || rc=$?
  cp build/lab/last/console.log "$OUT/lab-console-$boot.log" 2>/dev/null || true
  cat "$OUT/out-$boot.txt" >> "$OUT/out.txt"
  [ $rc = 0 ] && break
  why=$(grep -m1 -E 'BUG:|soft lockup|hung task|Kernel panic|general protection' "$OUT/lab-console-$boot.log" | sed 's/^\[ *[0-9.]*\] //' || true)
  comm=$(grep -m1 -o 'Comm: [^ ]*' "$OUT/lab-console-$boot.log" || true)
  echo "LAB-BROKE boot $boot status $rc: $(tail -1 "$OUT/stderr-$boot.txt"); L1 console: ${why:-nothing}${comm:+ ($comm)}; last move: $(grep '^MOVE' "$OUT/out-$boot.txt" | tail -1 | cut -c1-40)" | tee -a "$OUT/out.txt" >&2
  [ $rc = 125 ] || break
done
fi

# Each failure's evidence in its own file, with the stuck vireo machine's state decoded.
n=0
while IFS= read -r line; do
  case $line in
    EVIDENCE-BEGIN*) n=$((n + 1)); f="$OUT/failure-$n.txt"; : > "$f"; inb64=0;;
  esac
  if [ -n "${f:-}" ]; then
    case $line in
      "## state (base64)") inb64=1; : > "$OUT/failure-$n.state.b64"; continue;;
      "## end of state") inb64=0
        if base64 -d "$OUT/failure-$n.state.b64" > "$OUT/failure-$n.state" 2>/dev/null; then
          { echo "## the stuck machine's state (vireo-snapshot-dump)"
            "$BIN_DIR/vireo-snapshot-dump" "$OUT/failure-$n.state" 2>&1; } >> "$f"
        fi
        continue;;
    esac
    if [ "$inb64" = 1 ]; then echo "$line" >> "$OUT/failure-$n.state.b64"; else echo "$line" >> "$f"; fi
    case $line in EVIDENCE-END*) f=;; esac
  fi
done < "$OUT/out.txt"

python3 - "$OUT" <<'PY'
import collections, re, sys
out = sys.argv[1]
moves = collections.defaultdict(collections.Counter)
notes = []
for line in open(f"{out}/out.txt", errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line.rstrip("\n"))
    m = re.match(r"DIED (\w+) (\S+) \d+ (\S+)", line)
    if m:
        vmm, case, kind = m.groups()
        moves[vmm][(kind, "died")] += 1
        notes.append(line)
        continue
    m = re.match(r"MOVE (\w+) (\S+) \d+ (\S+) (\S+)", line)
    if m:
        vmm, case, kind, ok = m.groups()
        if ok == "failed:":
            ok = "failed"
        moves[vmm][(kind, ok)] += 1
    elif line.startswith(("NOTE", "COUNTS", "LAB-BROKE")):
        notes.append(line)
print(f"stress-migrate ({out}):")
for vmm in ("vireo", "qemu"):
    if vmm not in moves:
        continue
    c = moves[vmm]
    kinds = sorted({k for k, _ in c})
    total = sum(c.values())
    stuck = sum(v for (k, ok), v in c.items() if ok == "stuck")
    died = sum(v for (k, ok), v in c.items() if ok == "died")
    failed = sum(v for (k, ok), v in c.items() if ok == "failed")
    total -= died  # a death is counted against a move already counted
    detail = ", ".join(f"{k}: {sum(v for (kk, ok), v in c.items() if kk == k and ok != 'died')}"
                       f" ({sum(v for (kk, ok), v in c.items() if kk == k and ok in ('stuck', 'died'))} not ticking)"
                       for k in kinds)
    name = "vireo-vmm" if vmm == "vireo" else "QEMU"
    print(f"  {name}: {total} moves, {stuck + died} whose guest did not keep ticking ({stuck} stopped"
          f" ticking, {died} died later: its VMM ended), {failed} that failed (the guest went on"
          f" at the source) [{detail}]")
for n in notes:
    print("  " + n)

# What each failure's evidence says. The signature seen under both VMMs in the lab: the guest
# faults on an instruction fetch (#PF, error code 0x10: not present) again and again because
# its CR3 points 4 GiB above its RAM (vireo: the decoded snapshot; QEMU: info registers); when
# the fault cannot even be delivered the guest triple-faults, and KVM (AMD) resets the vCPU,
# leaving only the last exception: a #PF on an instruction fetch (error code 0x1X).
import glob
sig = collections.defaultdict(collections.Counter)
for f in sorted(glob.glob(f"{out}/failure-*.txt")):
    text = re.sub(r"\x1b\[[0-9;]*m", "", open(f, errors="replace").read())
    head = text.split("\n", 1)[0].split()
    if len(head) < 4:
        continue
    vmm, case = head[1], head[2]
    ram = int(case.split("-")[0]) << 20
    if "IS OUTSIDE GUEST RAM" in text:
        kind = "stuck, CR3 outside RAM"
    elif "triple-faulted" in text and re.search(r"exception [01]/[01]/14/0x1[0-9a-f] ", text):
        kind = "triple fault after a #PF on an instruction fetch"
    else:
        m = re.search(r"CR3=([0-9a-f]+)", text)
        console = text.split("## console", 1)[-1].split("## ", 1)[0]
        if m and int(m.group(1), 16) & ~0xfff >= ram:
            kind = "stuck, CR3 outside RAM"
        elif vmm == "qemu" and re.search(r"\[ *\d+\.\d+\] ", console):
            # QEMU resets a guest that triple-faults: the kernel boots again on its console.
            kind = "triple fault (QEMU reset the guest: it booted again)"
        else:
            kind = "other"
    sig[vmm][kind] += 1
    print(f"  {f.rsplit('/', 1)[1]}: {vmm} {case} move {head[3]}: {kind}")
for vmm, c in sig.items():
    name = "vireo-vmm" if vmm == "vireo" else "QEMU"
    print(f"  {name} failures by signature: " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items())))
PY
exit $rc
