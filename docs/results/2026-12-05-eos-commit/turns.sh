#!/usr/bin/env bash
# fila runs of several kinds, interleaved, on the warm burst of a light job
# through Kafka. Each turn starts a fresh `fila run --source kafka` of one
# kind on fresh topics, sends it one burst to warm it, then measures a
# second burst. Every round runs each kind once; the order rotates by one
# each round. A kind is a tag, a fila binary, and extra `fila run` flags:
#   BROKERS=127.0.0.1:19102 WORKERS=2 BURST=50000 ROUNDS=8 turns.sh \
#     'alo /path/fila' 'eos /path/fila --exactly-once' 'eos-old /old/fila --exactly-once'
# The load (fila load, which reads committed) is the first kind's binary.
# CPU is utime+stime of `fila run` during the measured burst.
set -u
: "${BROKERS:?host:port of a running broker (scripts/kafka up)}"
[ $# -ge 1 ] || { echo "usage: turns.sh 'tag binary [flags]'..." >&2; exit 2; }
out=${OUT:-/tmp/fila-turns}; mkdir -p "$out"
burst=${BURST:-50000} stages=${STAGES:-1,1,1,1,1}
hz=$(getconf CLK_TCK)
kinds=("$@")
read -r _ loader _ <<<"${kinds[0]}"
cpu() { awk -v hz="$hz" '{print ($14+$15)/hz}' "/proc/$1/stat"; }
one() { # tag binary flags...
    local tag=$1 bin=$2; shift 2
    local t="tn$(date +%s%N | tail -c 8)"
    "$bin" run --source kafka --brokers "$BROKERS" --input-topic "$t-in" --output-topic "$t-out" \
        --group "$t" --workers "${WORKERS:-2}" "$@" 2>"$out/$t.run.err" >/dev/null &
    local pid=$!
    for _ in $(seq 1 200); do grep -q "partitions assigned" "$out/$t.run.err" 2>/dev/null && break; sleep 0.05; done
    load() { "$loader" load --brokers "$BROKERS" --input-topic "$t-in" --output-topic "$t-out" \
        --burst "$burst" --stages "$stages" --timeout-s 300 --report json >"$out/$t.$1.json" 2>"$out/$t.$1.err"; }
    load cold
    local c0 c1
    c0=$(cpu $pid)
    load warm
    c1=$(cpu $pid)
    kill -TERM $pid; wait $pid
    python3 -c "
import json
r=json.load(open('$out/$t.warm.json'))
l=r['latency_ms']
print('$tag', '%.0f'%r['throughput_msgs_per_s'], '%.0f'%l['mean'], '%.0f'%l['max'], r['lost'], r['duplicates'], '%.2f'%($c1-$c0))
"
}
echo "# warm burst $burst, stages $stages, ${WORKERS:-2} worker(s), brokers $BROKERS"
for k in "${kinds[@]}"; do echo "# kind: $k"; done
echo "kind msg/s mean_ms max_ms lost dup fila_cpu_s"
n=${#kinds[@]}
for r in $(seq 0 $((${ROUNDS:-6} - 1))); do
    for i in $(seq 0 $((n - 1))); do
        # shellcheck disable=SC2086
        one ${kinds[$(((i + r) % n))]}
    done
done
