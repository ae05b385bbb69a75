#!/usr/bin/env bash
# Two fila builds, interleaved, on the warm burst of a light job through
# Kafka: each turn starts a fresh `fila run --source kafka` of one build on
# fresh topics, sends it one burst to warm it, then measures a second
# burst. The builds take turns and the first of them flips every round.
# CPU is utime+stime of `fila run` during the measured burst; faults are
# its minor page faults then.
#   BROKERS=127.0.0.1:19102 OLD=/path/fila-old NEW=/path/fila-new \
#     WORKERS=1 BURST=100000 ROUNDS=5 warm-pair.sh
set -u
: "${BROKERS:?host:port of a running broker (scripts/kafka up)}"
: "${OLD:?the baseline fila binary}" "${NEW:?the fila binary measured against it}"
out=${OUT:-/tmp/fila-warm-pair}; mkdir -p "$out"
burst=${BURST:-100000} stages=${STAGES:-1,1,1,1,1}
hz=$(getconf CLK_TCK)
stat() { awk -v hz="$hz" '{print $10, ($14+$15)/hz}' "/proc/$1/stat"; }
one() { # tag binary
    local tag=$1 bin=$2 t="wp$(date +%s%N | tail -c 8)"
    "$bin" run --source kafka --brokers "$BROKERS" --input-topic "$t-in" --output-topic "$t-out" \
        --group "$t" --workers "${WORKERS:-1}" 2>"$out/$t.run.err" >/dev/null &
    local pid=$!
    for _ in $(seq 1 200); do grep -q "partitions assigned" "$out/$t.run.err" 2>/dev/null && break; sleep 0.05; done
    load() { "$OLD" load --brokers "$BROKERS" --input-topic "$t-in" --output-topic "$t-out" --burst "$burst" \
        --stages "$stages" --timeout-s 300 --report json >"$out/$t.$1.json" 2>"$out/$t.$1.err"; }
    load cold
    local f0 c0 f1 c1
    read -r f0 c0 < <(stat $pid)
    load warm
    read -r f1 c1 < <(stat $pid)
    kill -TERM $pid; wait $pid
    python3 -c "
import json
r=json.load(open('$out/$t.warm.json'))
print('$tag', '%.0f'%r['throughput_msgs_per_s'], '%.0f'%r['latency_ms']['mean'], r['lost'], r['duplicates'], '%.2f'%($c1-$c0), $f1-$f0)
"
}
echo "# OLD: $OLD  NEW: $NEW  warm burst $burst, stages $stages, ${WORKERS:-1} worker(s)"
echo "build msg/s mean_ms lost dup fila_cpu_s minor_faults"
for r in $(seq 1 "${ROUNDS:-5}"); do
    if [ $((r % 2)) = 1 ]; then one old "$OLD"; one new "$NEW"; else one new "$NEW"; one old "$OLD"; fi
done
