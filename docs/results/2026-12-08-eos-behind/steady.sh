#!/bin/bash
# fila under a steady input, exactly once: the transactions it commits.
#
#   PORT=19510 steady.sh FILA_BINARY RATE RECORDS
#
# A broker from `scripts/kafka up --port PORT`. Kafka's own producer
# performance tool writes RECORDS reference records at RATE records/s to
# a fresh topic while one `fila run --exactly-once` (two workers) reads
# it; the line printed says how many transactions fila committed from
# just before the first record to 2 s after the last (read from its
# metrics), and how many outputs it wrote.
BIN=$1; RATE=$2; N=$3
P=${PORT:?PORT of a scripts/kafka broker}; B=127.0.0.1:$P; M=127.0.0.1:$((P + 89))
root=$(cd "$(dirname "$0")/../../.." && pwd)
cp=$("$root/scripts/kafka" tools-classpath --version 4.1.1 | tail -1)
out=$(mktemp -d)
python3 - "$out/payload" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(2000):
        r = dict(id=i, stage1=10, stage2=20, stage3=30, stage4=20, stage5=10, timestamp=0)
        f.write(json.dumps(r, separators=(",", ":")) + "\n")
PY
t=$(date +%s%N); in=sin-$t; o=sout-$t
FILA_LOG=info $BIN run --source kafka --brokers $B --input-topic $in --output-topic $o \
  --group sg-$t --workers 2 --exactly-once --metrics-addr $M > $out/run.out 2> $out/run.err &
pid=$!
for i in $(seq 1 80); do grep -q "partitions assigned" $out/run.err && break; sleep 0.25; done
m() { curl -s $M/metrics | awk -v k="$1" 'index($0, k " ") == 1 {print $NF}'; }
committed='fila_commits_total{outcome="committed"}'
c0=$(m "$committed")
java -cp "$cp" org.apache.kafka.tools.ProducerPerformance --topic $in --num-records $N \
  --throughput $RATE --payload-file $out/payload --producer-props bootstrap.servers=$B linger.ms=5 \
  > $out/producer.txt 2>&1
sleep 2
c1=$(m "$committed")
echo "$(basename $BIN) $RATE records/s: $((c1 - c0)) transactions; outputs $(m 'fila_records_total{outcome="output"}') of $N; producer: $(tail -1 $out/producer.txt | cut -d, -f1-2)"
kill $pid; wait $pid 2>/dev/null
rm -rf "$out"
