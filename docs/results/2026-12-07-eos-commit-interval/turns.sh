#!/bin/bash
# Interleaved turns of fila alone on the reference job, one line per turn.
#
#   PORT=19510 turns.sh ROUNDS BURST 'label|fila binary|run args' ...
#
# A broker from `scripts/kafka up --port PORT` (its pid file gives the
# broker's CPU). Each round runs every spec in turn: a fresh `fila run`
# on fresh topics and group, a cold burst, then the warm burst measured,
# with the broker's and fila's CPU (utime+stime) across the warm burst.
# LOAD_ARGS, if set, goes to both bursts' `fila load` (e.g. the light job:
# LOAD_ARGS='--stages 1,1,1,1,1').
ROUNDS=$1; BURST=$2; shift 2
P=${PORT:?PORT of a scripts/kafka broker}; B=127.0.0.1:$P
out=${OUT:-$(mktemp -d)}
bpid=$(cat "${FILA_KAFKA_STATE:-${TMPDIR:-/tmp}/fila-kafka}/$P/pid")
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
for r in $(seq 1 $ROUNDS); do
 for spec in "$@"; do
  label=${spec%%|*}; rest=${spec#*|}; BIN=${rest%%|*}; args=${rest#*|}
  t=$(date +%s%N); in=ein-$t; outt=eout-$t; g=eg-$t
  $BIN run --source kafka --brokers $B --input-topic $in --output-topic $outt --group $g --workers 2 $args > $out/run.out 2> $out/run.err &
  pid=$!
  for i in $(seq 1 80); do grep -q "partitions assigned" $out/run.err && break; sleep 0.25; done
  grep -q "partitions assigned" $out/run.err || { echo "round $r $label: fila did not start"; kill $pid; wait $pid; continue; }
  $BIN load --brokers $B --input-topic $in --output-topic $outt --burst $BURST $LOAD_ARGS --timeout-s 120 --report json > $out/cold.json 2>/dev/null
  b0=$(ticks $bpid); f0=$(ticks $pid)
  $BIN load --brokers $B --input-topic $in --output-topic $outt --burst $BURST $LOAD_ARGS --timeout-s 120 --report json > $out/warm.json 2>/dev/null \
    || { echo "round $r $label: the warm burst failed"; kill $pid; wait $pid; continue; }
  b1=$(ticks $bpid); f1=$(ticks $pid)
  python3 - "$label" $r $b0 $b1 $f0 $f1 $out/warm.json <<'PY'
import json,sys
label,r,b0,b1,f0,f1,path=sys.argv[1],sys.argv[2],*map(int,sys.argv[3:7]),sys.argv[7]
j=json.load(open(path))
print(f"round {r} {label:12s} msg/s {j['throughput_msgs_per_s']:8.1f} mean {j.get('mean_latency_ms', j.get('latency_ms',{}).get('mean','?'))} broker_cpu {(b1-b0)/100:.2f} fila_cpu {(f1-f0)/100:.2f} lost {j.get('lost','?')} dup {j.get('duplicates','?')}", flush=True)
PY
  kill $pid; wait $pid 2>/dev/null
 done
done
