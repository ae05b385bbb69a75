#!/usr/bin/env bash
# One fila build, two ways of starting it, interleaved, on the warm burst of
# a light job through Kafka: "shared" starts `fila run --source kafka` in
# this script's session (as docs/results/2026-12-05-wake-batch/warm-pair.sh
# does), "own" starts it under setsid, in a session of its own (as
# benches/experiments/run starts every system). With the kernel's autogroup
# scheduling on, each session is one scheduling group, and CPU time is
# shared between groups before it is shared between threads. The load
# client runs in this script's session either way. Each turn: fresh topics,
# a cold burst, then the measured warm burst; who goes first flips every
# round. CPU is utime+stime of `fila run` during the warm burst, per thread
# name as well.
#   BROKERS=127.0.0.1:19500 FILA=/path/fila WORKERS=2 BURST=1000000 ROUNDS=4 pair.sh
set -u
: "${BROKERS:?host:port of a running broker (scripts/kafka up)}"
: "${FILA:?the fila binary}"
out=${OUT:-/tmp/fila-session-groups}; mkdir -p "$out"
burst=${BURST:-1000000} stages=${STAGES:-1,1,1,1,1}
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
threads() { # pid -> "name=ticks ..." summed by thread name
    for t in /proc/"$1"/task/*; do
        printf '%s %s\n' "$(cat "$t/comm")" "$(awk '{print $14+$15}' "$t/stat")"
    done | awk '{a[$1]+=$2} END {for (k in a) printf "%s=%d ", k, a[k]}'
}
one() { # how: shared | own
    local how=$1 t="sg$(date +%s%N | tail -c 8)" pid
    local run=("$FILA" run --source kafka --brokers "$BROKERS" --input-topic "$t-in" --output-topic "$t-out"
        --group "$t" --workers "${WORKERS:-2}")
    if [ "$how" = own ]; then
        setsid "${run[@]}" 2>"$out/$t.run.err" >/dev/null </dev/null &
    else
        "${run[@]}" 2>"$out/$t.run.err" >/dev/null </dev/null &
    fi
    pid=$!
    for _ in $(seq 1 200); do grep -q "partitions assigned" "$out/$t.run.err" 2>/dev/null && break; sleep 0.05; done
    load() { "$FILA" load --brokers "$BROKERS" --input-topic "$t-in" --output-topic "$t-out" --burst "$burst" \
        --stages "$stages" --timeout-s 300 --report json >"$out/$t.$1.json" 2>"$out/$t.$1.err"; }
    load cold
    local c0 c1 th0 th1
    c0=$(ticks "$pid"); th0=$(threads "$pid")
    load warm
    c1=$(ticks "$pid"); th1=$(threads "$pid")
    kill -TERM "$pid"; wait "$pid"
    python3 - "$how" "$out/$t.warm.json" "$c0" "$c1" "$hz" "$th0" "$th1" <<'PY'
import json, sys
how, path, c0, c1, hz, th0, th1 = sys.argv[1:]
r = json.load(open(path))
parse = lambda s: dict(kv.split("=") for kv in s.split())
a, b = parse(th0), parse(th1)
per = " ".join(f"{k}={(int(b[k]) - int(a.get(k, 0))) / int(hz):.2f}"
               for k in sorted(b) if int(b[k]) - int(a.get(k, 0)) > 0)
print(how, f"{r['throughput_msgs_per_s']:.0f}", f"{r['latency_ms']['mean']:.0f}", r["lost"],
      r["duplicates"], f"{(int(c1) - int(c0)) / int(hz):.2f}", per)
PY
}
echo "# $FILA  warm burst $burst, stages $stages, ${WORKERS:-2} worker(s); autogroup: $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo unknown)"
echo "how msg/s mean_ms lost dup fila_cpu_s per-thread_cpu_s"
for r in $(seq 1 "${ROUNDS:-4}"); do
    if [ $((r % 2)) = 1 ]; then one shared; one own; else one own; one shared; fi
done
