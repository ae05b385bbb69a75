#!/usr/bin/env bash
# How long each exactly-once commit takes: one `fila run --exactly-once`
# on fresh topics, BURSTS light bursts sent to it one after the other, then
# its commit-time histogram (`fila_commit_seconds`) read from the metrics
# endpoint: the count, the sum, and how many took 50 ms or more.
#   BROKERS=127.0.0.1:19102 FILA=/path/fila BURSTS=8 commit-times.sh
set -u
: "${BROKERS:?host:port of a running broker (scripts/kafka up)}" "${FILA:?the fila binary}"
out=${OUT:-/tmp/fila-commit-times}; mkdir -p "$out"
addr=127.0.0.1:${METRICS_PORT:-19555}
t="ct$(date +%s%N | tail -c 8)"
"$FILA" run --source kafka --brokers "$BROKERS" --input-topic "$t-in" --output-topic "$t-out" \
    --group "$t" --workers "${WORKERS:-2}" --exactly-once --metrics-addr "$addr" \
    2>"$out/$t.run.err" >/dev/null &
pid=$!
for _ in $(seq 1 200); do grep -q "partitions assigned" "$out/$t.run.err" 2>/dev/null && break; sleep 0.05; done
echo "burst msg/s mean_ms"
for b in $(seq 1 "${BURSTS:-8}"); do
    "$FILA" load --brokers "$BROKERS" --input-topic "$t-in" --output-topic "$t-out" \
        --burst "${BURST:-50000}" --stages 1,1,1,1,1 --timeout-s 300 --report json 2>/dev/null |
        python3 -c "import json,sys; r=json.load(sys.stdin); print($b, '%.0f'%r['throughput_msgs_per_s'], '%.0f'%r['latency_ms']['mean'])"
done
curl -s "http://$addr/metrics" >"$out/$t.metrics"
python3 - "$out/$t.metrics" <<'PY'
import sys
m = {}
for line in open(sys.argv[1]):
    if line.startswith("fila_commit_seconds"):
        k, v = line.rsplit(" ", 1)
        m[k] = float(v)
n, s = m["fila_commit_seconds_count"], m["fila_commit_seconds_sum"]
le = lambda b: m['fila_commit_seconds_bucket{le="%s"}' % b]
print("commits %d, mean %.1f ms; up to 10 ms %d, 10-25 ms %d, 25-50 ms %d, 50-100 ms %d, over 100 ms %d" % (
    n, 1000 * s / max(n, 1), le("0.01"), le("0.025") - le("0.01"), le("0.05") - le("0.025"),
    le("0.1") - le("0.05"), n - le("0.1")))
PY
kill -TERM $pid; wait $pid
