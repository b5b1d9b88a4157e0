#!/usr/bin/env bash
# make bench-migrate: in one lab boot (with QEMU), for a Debian guest (vmlinux, busybox
# initrd, 1 vCPU) of 256 MiB and 1 GiB, idle and with a memory-dirtying workload (16 MiB of a
# tmpfs file rewritten every 0.1 s), measures:
#   - vireo-vmm snapshot: PUT /vm/snapshot time and size; restore time from exec of
#     `vireo-vmm --restore --resume` to running vCPUs (the `vireo_timing` log line), with the
#     memory checksum checked (default) and without (--no-verify-memory); and from the
#     `PUT /vm/snapshot/load` request of a vireo-vmm started with only its API (3 times);
#   - vireo-vmm live migration over loopback (PUT /vm/migrate, downtime_ms 50), HOPS times in a
#     row: total time and downtime (source pause to the destination's RUNNING), rounds;
#   - QEMU's live migration of the same guest (-M microvm, QMP migrate over tcp, downtime-limit
#     50 ms), HOPS times in a row: total time and downtime as query-migrate reports them (ends on
#     the source), and the downtime the guest sees: the source's STOP event to the
#     destination's RESUME event (QMP events carry the host's time).
# Both VMMs' guests are checked to be still ticking after the move. Not a test: it reports.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/tick-guest.sh
BIN_DIR=${BIN_DIR:-target/x86_64-unknown-linux-gnu/release}
SIZES=${SIZES:-"256 1024"}
HOPS=${HOPS:-3}
[[ $HOPS =~ ^[1-9][0-9]*$ ]] || { echo "bench-migrate: HOPS wants a positive number, not '$HOPS'" >&2; exit 1; }
for b in vireo-vmm vireo-api; do
  [ -x "$BIN_DIR/$b" ] || { echo "bench-migrate: $BIN_DIR/$b is missing: run make build first" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tick_guest_initrd "$work" bench BENCH-READY ""

{ tick_lab_prelude; cat <<'LAB'
# wait_tick FILE N: until FILE shows tick N (90 s at most)
wait_tick() { n=0; while :; do w=$(last "$1"); [ -n "$w" ] && [ "$w" -ge "$2" ] && return 0
    sleep 0.05; n=$((n + 1)); [ $n -gt 1800 ] && { echo "NO-TICK $1 $2"; return 1; }; done; }
port=5000
for size in $SIZES; do for dirty in 0 1; do
  case=$size-$dirty
  cmd="console=ttyS0 panic=-1 quiet vireo.run=bench vireo.exit=wait vireo.dirty=$dirty"
  # --- vireo-vmm: snapshot and restore
  con=/tmp/v-$case.log; rm -rf /tmp/snap
  vireo-vmm --kernel $K --initrd /tmp/i.gz --memory $size --cmdline "$cmd" \
      --api-sock /tmp/a.sock --serial file:$con 2>/tmp/a.err & a=$!
  wait_tick $con 20
  vireo-api /tmp/a.sock PUT /vm/pause >/dev/null
  echo "RESULT $case vireo snapshot $(vireo-api /tmp/a.sock PUT /vm/snapshot '{"path": "/tmp/snap"}')"
  vireo-api /tmp/a.sock PUT /vm/stop >/dev/null; wait $a
  for verify in yes no api api api; do
    t=$(last $con)
    if [ $verify = api ]; then
      # A VMM started with only its API, waiting; the load request is timed to running vCPUs.
      VIREO_LOG=vireo_timing=info vireo-vmm --api-sock /tmp/b.sock --serial file:$con 2>/tmp/b.err & b=$!
      n=0; until vireo-api /tmp/b.sock GET /vm >/dev/null 2>&1; do sleep 0.05; n=$((n + 1)); [ $n -gt 200 ] && break; done
      vireo-api /tmp/b.sock PUT /vm/snapshot/load '{"path": "/tmp/snap", "resume": true, "verify_memory": false}' >/dev/null
      want='after the snapshot load request'
    else
      flag=; [ $verify = no ] && flag=--no-verify-memory
      VIREO_LOG=vireo_timing=info vireo-vmm --restore /tmp/snap --resume $flag --api-sock /tmp/b.sock \
          --serial file:$con 2>/tmp/b.err & b=$!
      want='after process start'
    fi
    wait_tick $con $((t + 3)) && ok=ticking || ok=stuck
    [ $ok = ticking ] || echo "NOTE $case vireo restore ($verify): the guest stopped; stderr: $(grep -v vireo_timing /tmp/b.err | tail -3 | tr '\n' ' ')"
    ms=$(grep "$want" /tmp/b.err | grep -o 'running [0-9.]* ms' | cut -d' ' -f2)
    echo "RESULT $case vireo restore {\"verify_memory\": \"$verify\", \"ms\": ${ms:-null}, \"guest\": \"$ok\"}"
    vireo-api /tmp/b.sock PUT /vm/stop >/dev/null; wait $b
  done
  # --- vireo-vmm: live migration of a restored guest, HOPS times in a row (each destination
  # is the next hop's source)
  t=$(last $con)
  vireo-vmm --restore /tmp/snap --resume --no-verify-memory --api-sock /tmp/b.sock --serial file:$con 2>/tmp/b.err & b=$!
  wait_tick $con $((t + 3))
  bs=/tmp/b.sock be=/tmp/b.err
  # note WHAT: a line the report shows, with the end of both VMMs' stderr and of the console
  note() { echo "NOTE $case vireo migrate, hop $hop: $1; source: $(tail -3 $be | tr '\n' ' ');" \
      "destination: $(tail -3 $ce | tr '\n' ' '); console: $(tail -2 $con | tr '\n' ' ')"; }
  for hop in $(seq "$HOPS"); do
    port=$((port + 1)); cs=/tmp/v-$case-$hop.sock ce=/tmp/v-$case-$hop.err
    vireo-vmm --incoming 127.0.0.1:$port --api-sock $cs --serial file:$con 2>$ce & c=$!
    sleep 0.3
    t=$(last $con); wait_tick $con $((t + 10)) || note "the guest stopped ticking before the migration"
    r=$(vireo-api $bs PUT /vm/migrate "{\"destination\": \"127.0.0.1:$port\", \"downtime_ms\": 50}" 2>&1)
    wait $b
    t=$(last $con); wait_tick $con $((t + 3)) && ok=ticking || ok=stuck
    echo "RESULT $case vireo migrate {\"guest\": \"$ok\", \"report\": $r}"
    [ $ok = ticking ] || { note "the guest is not ticking after it"; kill $c 2>/dev/null; wait $c; break; }
    bs=$cs be=$ce b=$c
  done
  vireo-api $bs PUT /vm/stop >/dev/null; wait $b
  # --- QEMU: live migration of the same guest, HOPS times in a row. Each QEMU has a second
  # QMP monitor on a pipe whose events (STOP, RESUME, with the host's time) go to a file: the
  # source's STOP to the destination's RESUME is the downtime the guest sees, measured the way
  # vireo's is; query-migrate's own figure ends on the source with its last byte sent.
  q="qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m $size -smp 1 -nodefaults
     -no-user-config -nographic -kernel $K -initrd /tmp/i.gz -append"
  qn=0
  qemu_start() { # qemu_start EXTRA-ARGS...: a QEMU whose number is $qn, pid in $qpid
    qn=$((qn + 1)); rm -f /tmp/qev$qn.in /tmp/qev$qn.out; mkfifo /tmp/qev$qn.in /tmp/qev$qn.out
    cat /tmp/qev$qn.out > /tmp/qev$qn.log & 
    $q "$cmd" -serial file:/tmp/q$qn.log -qmp unix:/tmp/q$qn.sock,server=on,wait=off -display none \
       -chardev pipe,id=ev,path=/tmp/qev$qn -mon chardev=ev,mode=control "$@" >/tmp/q$qn.err 2>&1 & qpid=$!
    echo '{"execute": "qmp_capabilities"}' > /tmp/qev$qn.in
  }
  # qemu_event N EVENT: the time of QEMU N's last EVENT in microseconds
  qemu_event() { sed -n "s/.*\"seconds\": \([0-9]*\), \"microseconds\": \([0-9]*\)}, \"event\": \"$2\".*/\1 \2/p" \
      /tmp/qev$1.log | tail -1 | { read -r s u && echo $((s * 1000000 + 10#$u)) || echo null; }; }
  qemu_start; qa=$qpid; na=$qn
  if wait_tick /tmp/q$na.log 20; then
    for hop in $(seq "$HOPS"); do
      port=$((port + 1))
      qemu_start -incoming tcp:127.0.0.1:$port; qb=$qpid; nb=$qn
      sleep 0.3
      t=$(last /tmp/q$na.log); wait_tick /tmp/q$na.log $((t + 10))
      vireo-api --qmp /tmp/q$na.sock '{"execute": "migrate-set-parameters", "arguments": {"downtime-limit": 50}}' >/dev/null
      vireo-api --qmp /tmp/q$na.sock "{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"tcp:127.0.0.1:$port\"}}" >/dev/null
      n=0; st=
      while [ $n -lt 1200 ]; do
        st=$(vireo-api --qmp /tmp/q$na.sock '{"execute": "query-migrate"}')
        case "$st" in *'"completed"'*|*'"failed"'*) break;; esac
        sleep 0.1; n=$((n + 1))
      done
      case "$st" in *'"completed"'*) ;; *) vireo-api --qmp /tmp/q$na.sock '{"execute": "migrate_cancel"}' >/dev/null 2>&1;; esac
      t=$(last /tmp/q$nb.log); t=${t:-0}
      wait_tick /tmp/q$nb.log $((t + 3)) && ok=ticking || ok=stuck
      echo "RESULT $case qemu migrate {\"guest\": \"$ok\", \"stop_us\": $(qemu_event $na STOP), \"resume_us\": $(qemu_event $nb RESUME), \"report\": $(echo "$st" | tr -d '\r\n')}"
      kill $qa 2>/dev/null; wait $qa 2>/dev/null
      qa=$qb; na=$nb
      [ $ok = ticking ] || break
    done
  else
    echo "RESULT $case qemu migrate {\"guest\": \"no-boot\", \"report\": null}"
  fi
  kill $qa 2>/dev/null; wait $qa 2>/dev/null
done; done
qemu-system-x86_64 --version | head -1
LAB
} > "$work/lab.sh"

# One lab boot per guest size (vireo-vmm and QEMU measured in the same boot). Nested KVM under
# TCG is not flawless: the lab's L1 kernel has been seen to crash inside QEMU's KVM_RUN during
# a migration (a kernel stack overflow in its FPU switch); such a boot (status 125) is retried
# once and reported.
: > "$work/out.txt"
for size in $SIZES; do
  for try in 1 2; do
    rc=0
    out=$(lab/lab run --with-qemu --smp 2 --mem 4096 --timeout 900 --bin-dir "$BIN_DIR" \
          --put "$work/extra.gz:/tmp/extra.gz" --put "$work/lab.sh:/tmp/lab.sh" \
          -- "SIZES='$size' HOPS='$HOPS' bash /tmp/lab.sh") || rc=$?
    # A retried boot's results replace the failed one's (which may have got halfway).
    [ $rc = 125 ] || break
    echo "bench-migrate: the lab failed for $size MiB (try $try): $(tail -1 build/lab/last/console.log)" >&2
  done
  printf '%s\n' "$out" >> "$work/out.txt"
done
python3 - "$work/out.txt" <<'PY'
import json, sys
res = {}
notes = []
qemu = "QEMU"
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("NOTE ") or line.startswith("NO-TICK"):
        notes.append(line)
    if line.startswith("QEMU emulator version"):
        qemu = "QEMU " + line.split()[3]
    if not line.startswith("RESULT "):
        continue
    _, case, vmm, what, js = line.split(" ", 4)
    try:
        v = json.loads(js)
    except json.JSONDecodeError:
        v = {"raw": js}
    res.setdefault(case, {}).setdefault((vmm, what), []).append(v)

def g(d, *ks):
    for k in ks:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d

def fmt(v, unit="ms"):
    return "n/a" if v is None else f"{v:.0f} {unit}" if isinstance(v, float) else f"{v} {unit}"

print("bench-migrate: Debian 6.1 cloud vmlinux + busybox initrd, 1 vCPU, in the lab (TCG host, nested KVM);")
print("idle = a shell printing a tick every 50 ms; dirty = also 16 MiB of tmpfs rewritten every 0.1 s\n")
print("restore: exec of vireo-vmm --restore --resume to running vCPU threads; API load: a waiting")
print("vireo-vmm's PUT /vm/snapshot/load request to running vCPU threads (median of 3, range).")
print("All times in ms.\n")
print(f"{'guest':<14}{'snapshot':>16}{'API load':>14}{'restore,':>12}{'restore,':>12}")
print(f"{'':<14}{'(data written)':>16}{'no verify':>14}{'no verify':>12}{'verified':>12}")
cases = sorted(res, key=lambda c: [int(x) for x in c.split('-')])
def label(case):
    size, dirty = case.split("-")
    return f"{size} MiB {'dirty' if dirty == '1' else 'idle'}"
def med(xs):
    xs = sorted(x for x in xs if isinstance(x, (int, float)))
    return None if not xs else xs[len(xs) // 2]
for case in cases:
    r = res[case]
    # The last of each (a retried lab boot leaves the first try's lines before).
    snap = (r.get(("vireo", "snapshot")) or [{}])[-1]
    rest = {x.get("verify_memory"): x for x in r.get(("vireo", "restore"), [])}
    api = sorted(x["ms"] for x in r.get(("vireo", "restore"), [])
                 if x.get("verify_memory") == "api" and isinstance(x.get("ms"), (int, float)))
    api_s = "n/a" if not api else f"{api[len(api) // 2]:.0f} ({api[0]:.0f}-{api[-1]:.0f})"
    s = f"{snap.get('millis', 'n/a')} ms ({(snap.get('memory_data_bytes') or 0) >> 20} MiB)"
    print(f"{label(case):<14}{s:>16}{api_s:>14}{fmt(rest.get('no', {}).get('ms')):>12}"
          f"{fmt(rest.get('yes', {}).get('ms')):>12}")
    bad = [x for x in r.get(("vireo", "restore"), []) if x.get("guest") not in (None, "ticking")]
    if bad:
        print(f"  !! a restored guest did not keep ticking: {bad}")

print("\nlive migration, each guest moved several times in a row (one line per VMM and guest).")
print("downtime: the pause on the source to the guest running on the destination (vireo: pause to")
print("the destination's RUNNING; QEMU: the source's STOP event to the destination's RESUME event);")
print("in brackets what ends on the source, with the last byte sent (vireo's downtime_source_ms,")
print("QEMU's query-migrate downtime). Per hop, then the median.\n")
print(f"{'guest':<15}{'VMM':<12}{'total (median)':>16}  downtime per hop (source side)      median")
for case in cases:
    r = res[case]
    rows = []
    for x in r.get(("vireo", "migrate"), []):
        rep = x.get("report") if isinstance(x.get("report"), dict) else {}
        if rep.get("state") != "completed":
            rows.append(("vireo", None, None, None, f"failed: {x.get('report')}", x))
            continue
        rows.append(("vireo", rep.get("total_ms"), rep.get("downtime_ms"),
                     rep.get("downtime_source_ms"), f"{rep.get('rounds')} rounds", x))
    for x in r.get(("qemu", "migrate"), []):
        rep = g(x, "report", "return") or {}
        if rep.get("status") != "completed":
            rows.append((qemu, None, None, None, f"{rep.get('status', x.get('guest'))}", x))
            continue
        seen = None
        if isinstance(x.get("stop_us"), int) and isinstance(x.get("resume_us"), int):
            seen = round((x["resume_us"] - x["stop_us"]) / 1000)
        rows.append((qemu, rep.get("total-time"), seen, rep.get("downtime"), "", x))
    for vmm in ("vireo", qemu):
        mine = [row for row in rows if row[0] == vmm]
        if not mine:
            continue
        hops = " ".join("failed" if d is None and t is None else f"{d if d is not None else '?'} ({src})"
                        for _, t, d, src, _, _ in mine)
        dm = med([row[2] for row in mine])
        sm = med([row[3] for row in mine])
        tm = med([row[1] for row in mine])
        notes = "; ".join(sorted({row[4] for row in mine if row[4]}))
        print(f"{label(case):<15}{vmm:<12}{fmt(tm):>16}  {hops:<34} {fmt(dm)} ({fmt(sm)})  {notes}")
        bad = [row[5] for row in mine if row[5].get("guest") not in (None, "ticking")]
        if bad:
            print(f"  !! a migrated guest did not keep ticking: {bad}")
for n in notes:
    print("  !!", n)
print("\ntargets: restore <= 20 ms; idle downtime <= 50 ms and below QEMU's")
print("raw:", json.dumps({k: {f'{a}/{b}': v for (a, b), v in d.items()} for k, d in res.items()}))
PY
