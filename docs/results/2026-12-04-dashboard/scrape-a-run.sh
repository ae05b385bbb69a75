#!/usr/bin/env bash
# The run behind fila-dashboard.png: two members of one consumer group on a
# 2-partition topic, a 40,000-record burst of the reference record, the
# second member joining 20 s into it, each member's /metrics scraped every
# 2 s. Needs a broker (scripts/kafka up --port 19102 --version 4.1.1
# --partitions 2) and a release build of fila.
#
#   docs/results/2026-12-04-dashboard/scrape-a-run.sh OUT_DIR
#   deploy/grafana/render --out OUT_DIR/fila-dashboard.png OUT_DIR/fila-a.txt OUT_DIR/fila-b.txt
set -u
cd "$(dirname "$0")/../../.."
bin=target/release/fila
b=${BROKERS:-127.0.0.1:19102}
out=${1:?OUT_DIR}
mkdir -p "$out"
t="dash$(date +%s)"
scrape() { # port file
    while :; do
        echo "# scrape at $(date +%s.%N)"
        curl -s --max-time 1 "127.0.0.1:$1/metrics"
        sleep 2
    done >"$2"
}
run() { # metrics port, log
    $bin run --source kafka --brokers "$b" --input-topic "$t-in" --output-topic "$t-out" \
        --group "$t" --metrics-addr "127.0.0.1:$1" 2>"$2" &
}
run 9901 "$out/a.err"; a=$!
sleep 1; scrape 9901 "$out/fila-a.txt" & sa=$!
sleep 15
$bin load --brokers "$b" --input-topic "$t-in" --output-topic "$t-out" --burst 40000 \
    --report json >"$out/load.json" 2>"$out/load.err" & l=$!
sleep 20
run 9902 "$out/b.err"; bb=$!
sleep 1; scrape 9902 "$out/fila-b.txt" & sb=$!
wait $l
sleep 70
kill -TERM $a $bb; wait $a $bb
sleep 3
kill $sa $sb
