#!/usr/bin/env bash
# Light job through Kafka at each build's defaults: old (before commit by
# time) and new, interleaved, on the 19300 broker's plaintext listener.
set -u
out=${OUT:-/tmp/fila-old-new}; mkdir -p "$out"
: "${OLD_FILA:?the fila binary built at 0e0d442, before commits went by time}"
cd "$(dirname "$0")/../../.."
b=$(scripts/kafka plaintext --port 19300)
bpid=$(cat /tmp/fila-kafka/19300/pid)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
one() { # tag bin
    local tag=$1 bin=$2 t="on$(date +%s%N | tail -c 8)"
    $bin run --source kafka --brokers $b --input-topic $t-in --output-topic $t-out --group $t 2>$out/$t.run.err >/dev/null &
    local pid=$!
    for i in $(seq 1 200); do grep -q "partitions assigned\|reading" $out/$t.run.err 2>/dev/null && break; sleep 0.05; done
    sleep 2
    local f0 k0 f1 k1
    f0=$(cpu $pid); k0=$(cpu $bpid)
    target/release/fila load --brokers $b --input-topic $t-in --output-topic $t-out --burst ${BURST:-20000} --stages 1,1,1,1,1 --timeout-s 120 --report json >$out/$t.load.json 2>$out/$t.load.err
    f1=$(cpu $pid); k1=$(cpu $bpid)
    kill -TERM $pid; wait $pid
    python3 -c "
import json
r=json.load(open('$out/$t.load.json'))
print('$tag', '%.0f'%r['throughput_msgs_per_s'], '%.0f'%r['latency_ms']['mean'], r['lost'], r['duplicates'], '%.2f'%(($f1-$f0)/100), '%.2f'%(($k1-$k0)/100))
"
}
echo "build msg/s mean_ms lost dup fila_cpu_s broker_cpu_s"
for r in 1 2 3; do
    if [ $((r % 2)) = 1 ]; then one old "$OLD_FILA"; one new target/release/fila; else one new target/release/fila; one old "$OLD_FILA"; fi
done
