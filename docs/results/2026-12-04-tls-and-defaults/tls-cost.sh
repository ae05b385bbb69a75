#!/usr/bin/env bash
# TLS cost: fila run + fila load over the same broker's plaintext and
# SASL_SSL (SCRAM-SHA-512) listeners, interleaved, ROUNDS rounds per workload.
set -u
out=${OUT:-/tmp/fila-tls-cost}; mkdir -p "$out"
cd "$(dirname "$0")/../../.."
bin=target/release/fila
port=19300
rounds=${ROUNDS:-3}
plain=$(scripts/kafka plaintext --port $port)
conf=$(scripts/kafka client-config --port $port --mechanism scram-sha-512)
bpid=$(cat /tmp/fila-kafka/$port/pid)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
one() { # mode workload
    local mode=$1 wl=$2 t="tls$(date +%s%N | tail -c 8)" conn burst stages
    if [ "$mode" = plain ]; then conn=(--brokers "$plain"); else conn=(--kafka-config "$conf"); fi
    if [ "$wl" = light ]; then burst=50000; stages=1,1,1,1,1; else burst=1000; stages=10,20,30,20,10; fi
    $bin run --source kafka "${conn[@]}" --input-topic $t-in --output-topic $t-out --group $t 2>$out/$t.run.err >/dev/null &
    local pid=$!
    for i in $(seq 1 200); do grep -q "partitions assigned" $out/$t.run.err 2>/dev/null && break; sleep 0.05; done
    sleep 1
    local f0 k0 f1 k1
    f0=$(cpu $pid); k0=$(cpu $bpid)
    $bin load "${conn[@]}" --input-topic $t-in --output-topic $t-out --burst $burst --stages $stages --timeout-s 120 --report json >$out/$t.load.json 2>$out/$t.load.err
    f1=$(cpu $pid); k1=$(cpu $bpid)
    kill -TERM $pid; wait $pid
    python3 -c "
import json
r=json.load(open('$out/$t.load.json'))
print('$wl $mode', '%.0f'%r['throughput_msgs_per_s'], '%.0f'%r['latency_ms']['mean'], r['lost'], r['duplicates'], '%.2f'%(($f1-$f0)/100), '%.2f'%(($k1-$k0)/100))
"
}
echo "workload mode msg/s mean_ms lost dup fila_cpu_s broker_cpu_s"
for wl in light reference; do
    for r in $(seq 1 $rounds); do
        if [ $((r % 2)) = 1 ]; then one plain $wl; one tls $wl; else one tls $wl; one plain $wl; fi
    done
done
