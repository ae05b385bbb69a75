#!/usr/bin/env bash
# One fila build, two sets of `fila run` flags, interleaved: A and B take
# turns each round and the first of them flips every round. Each turn is a
# fresh `fila run --source kafka` on fresh topics and one `fila load` burst
# through it; CPU is utime+stime of fila and of the broker during the burst.
#   BROKERS=127.0.0.1:19102 BROKER_PID=... A="--sink-linger 25ms" B="" \
#     BURST=10000 STAGES=10,20,30,20,10 ROUNDS=5 compare.sh
set -u
: "${BROKERS:?host:port of a running broker (scripts/kafka up)}"
: "${BROKER_PID:?its pid, to read its CPU time}"
A=${A-} B=${B-}
out=${OUT:-/tmp/fila-compare}; mkdir -p "$out"
cd "$(dirname "$0")/../../.."
fila=target/release/fila
hz=$(getconf CLK_TCK)
cpu() { awk -v hz="$hz" '{print ($14+$15)/hz}' /proc/$1/stat; }
one() { # tag flags
    local tag=$1 flags=$2 t="cmp$(date +%s%N | tail -c 8)"
    # shellcheck disable=SC2086
    $fila run --source kafka --brokers "$BROKERS" --input-topic $t-in --output-topic $t-out --group $t $flags 2>$out/$t.run.err >/dev/null &
    local pid=$!
    for _ in $(seq 1 200); do grep -q "partitions assigned" $out/$t.run.err 2>/dev/null && break; sleep 0.05; done
    sleep 2
    local f0 k0 f1 k1
    f0=$(cpu $pid); k0=$(cpu "$BROKER_PID")
    $fila load --brokers "$BROKERS" --input-topic $t-in --output-topic $t-out --burst "${BURST:-10000}" \
        --stages "${STAGES:-10,20,30,20,10}" --timeout-s 300 --report json >$out/$t.load.json 2>$out/$t.load.err
    f1=$(cpu $pid); k1=$(cpu "$BROKER_PID")
    kill -TERM $pid; wait $pid
    python3 -c "
import json
r=json.load(open('$out/$t.load.json'))
print('$tag', '%.0f'%r['throughput_msgs_per_s'], '%.0f'%r['latency_ms']['mean'], r['lost'], r['duplicates'], '%.2f'%($f1-$f0), '%.2f'%($k1-$k0))
"
}
echo "# A: ${A:-(defaults)}  B: ${B:-(defaults)}  burst ${BURST:-10000}, stages ${STAGES:-10,20,30,20,10}"
echo "flags msg/s mean_ms lost dup fila_cpu_s broker_cpu_s"
for r in $(seq 1 "${ROUNDS:-5}"); do
    if [ $((r % 2)) = 1 ]; then one A "$A"; one B "$B"; else one B "$B"; one A "$A"; fi
done
