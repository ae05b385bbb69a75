#!/usr/bin/env bash
# Two builds of fila in turns on one broker, the order flipped every round.
#
#   BEFORE=/path/fila AFTER=/path/fila PORT=19511 ab.sh ROUNDS BURST STAGES SINGLES
#
# Each turn: a fresh `fila run --source kafka --workers 2` on fresh topics,
# a cold burst, then the measured warm burst of BURST records with the
# given stages (`fila load`), the broker's and fila's CPU taken across it;
# then, if SINGLES > 0, that many one-record bursts a second apart, each
# one's latency printed. One line per figure: round, build, what, value.
set -euo pipefail
rounds=$1 burst=$2 stages=$3 singles=$4
brokers=127.0.0.1:${PORT:?}
load=${LOAD:-$AFTER}
broker_pid=$(pgrep -f "kafka\.Kafka.*/${PORT}/" | head -1)
cpu_cs() { awk '{print $14 + $15}' "/proc/$1/stat"; }
report() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); l=d["latency_ms"]; print("msg/s %.0f mean %.1f max %.1f lost %d dup %d" % (d["throughput_msgs_per_s"], l["mean"], l["max"], d["lost"], d["duplicates"]))'; }
for round in $(seq "$rounds"); do
    order=(before after)
    [ $((round % 2)) = 0 ] && order=(after before)
    for build in "${order[@]}"; do
        bin=$BEFORE; [ "$build" = after ] && bin=$AFTER
        t=pace-$build-$round-$$-$RANDOM
        FILA_LOG=warn "$bin" run --source kafka --brokers "$brokers" --input-topic "i-$t" \
            --output-topic "o-$t" --group "g-$t" --workers 2 >/dev/null 2>"/tmp/$t.log" &
        fila=$!
        sleep 6
        run_load() { "$load" load --brokers "$brokers" --input-topic "i-$t" --output-topic "o-$t" --report json "$@"; }
        run_load --burst "$burst" --stages "$stages" >/dev/null
        b0=$(cpu_cs "$broker_pid"); f0=$(cpu_cs "$fila")
        warm=$(run_load --burst "$burst" --stages "$stages" | report)
        b1=$(cpu_cs "$broker_pid"); f1=$(cpu_cs "$fila")
        echo "$round $build burst-$burst $warm broker-cs $((b1 - b0)) fila-cs $((f1 - f0))"
        for i in $(seq "$singles"); do
            sleep 1
            echo "$round $build single $(run_load --burst 1 --stages "$stages" | report)"
        done
        kill "$fila"; wait "$fila" || true
        rm -f "/tmp/$t.log"
    done
done
