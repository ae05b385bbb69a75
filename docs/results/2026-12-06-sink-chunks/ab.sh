#!/usr/bin/env bash
# Two or more fila builds, in turns, on the warm burst of a light job
# through Kafka: each build runs `fila run --source kafka` in a session of
# its own (as benches/experiments/run starts every system), takes a cold
# burst from `fila load` and then the measured warm one. Rounds alternate
# the order of the builds. Prints per turn: build, msg/s, mean latency ms,
# lost, duplicates, fila's CPU-s during the warm burst, and per thread name.
#
#   BROKERS=127.0.0.1:19510 BURST=1000000 ab.sh ROUNDS BUILD_A BUILD_B
#
# With COUNT set to perf events (`syscalls:sys_enter_poll`, or uprobes made
# with `perf probe -x BUILD -a NAME=rd_kafka_ProduceRequest`), each warm
# burst also prints those events per thread (`perf stat --per-thread`).
set -euo pipefail
: "${BROKERS:?the broker, host:port}"
burst=${BURST:-1000000} stages=${STAGES:-1,1,1,1,1}
out=${OUT:-/tmp/fila-sink-chunks}; mkdir -p "$out"
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
threads() { # pid -> "name=ticks ..." summed by thread name
    for t in /proc/"$1"/task/*; do
        printf '%s %s\n' "$(cat "$t/comm")" "$(awk '{print $14+$15}' "$t/stat")"
    done | awk '{a[$1]+=$2} END {for (k in a) printf "%s=%d ", k, a[k]}'
}
one() {
    local build=$1 t="ab$(date +%s%N | tail -c 8)" pid c0 c1 th0 th1 sp
    setsid "$build" run --source kafka --brokers "$BROKERS" --input-topic "$t-in" \
        --output-topic "$t-out" --group "$t" --workers "${WORKERS:-2}" \
        2>"$out/$t.run.err" >/dev/null </dev/null &
    pid=$!
    for _ in $(seq 1 200); do grep -q "partitions assigned" "$out/$t.run.err" 2>/dev/null && break; sleep 0.05; done
    load() { "$build" load --brokers "$BROKERS" --input-topic "$t-in" --output-topic "$t-out" \
        --burst "$burst" --stages "$stages" --timeout-s 300 --report json >"$out/$t.$1.json" 2>"$out/$t.$1.err"; }
    load cold
    c0=$(ticks "$pid"); th0=$(threads "$pid")
    if [ -n "${COUNT:-}" ]; then
        perf stat --per-thread -p "$pid" -e "$COUNT" -o "$out/$t.count" >/dev/null 2>&1 & sp=$!
    fi
    load warm
    if [ -n "${COUNT:-}" ]; then
        kill -INT "$sp"; wait "$sp" || true
        awk '$2 ~ /^[0-9,]+$/ && $2 != "0" {print "    " $1, $2, $3}' "$out/$t.count"
    fi
    c1=$(ticks "$pid"); th1=$(threads "$pid")
    kill -TERM "$pid"; wait "$pid" || true
    python3 - "$build" "$out/$t.warm.json" "$c0" "$c1" "$hz" "$th0" "$th1" <<'PY'
import json, sys
build, path, c0, c1, hz, th0, th1 = sys.argv[1:]
r = json.load(open(path))
parse = lambda s: dict(kv.split("=") for kv in s.split())
a, b = parse(th0), parse(th1)
per = " ".join(f"{k}={(int(b[k]) - int(a.get(k, 0))) / int(hz):.2f}"
               for k in sorted(b) if int(b[k]) - int(a.get(k, 0)) > 0)
print(build, f"{r['throughput_msgs_per_s']:.0f}", f"{r['latency_ms']['mean']:.0f}", r["lost"],
      r["duplicates"], f"{(int(c1) - int(c0)) / int(hz):.2f}", per, flush=True)
PY
}
rounds=$1; shift
echo "# warm burst $burst, stages $stages, ${WORKERS:-2} worker(s); autogroup: $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo unknown)"
echo "build msg/s mean_ms lost dup fila_cpu_s per-thread_cpu_s"
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order=("$@"); else order=(); for b in "$@"; do order=("$b" "${order[@]}"); done; fi
    for b in "${order[@]}"; do one "$b"; done
done
