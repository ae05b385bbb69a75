#!/usr/bin/env bash
# One-record bursts through builds of fila running side by side.
#
#   PORT=19511 singles.sh ROUNDS PER_ROUND name=/path/fila ...
#
# Each round starts every build's `fila run --source kafka --workers 2` on
# topics of its own, sends each a first burst of 10, then PER_ROUND
# one-record bursts to each in turn, half a second apart. One line per
# record: round, build, latency ms, lost, duplicated.
set -euo pipefail
rounds=$1 per_round=$2
shift 2
brokers=127.0.0.1:${PORT:?}
load=${LOAD:-${1#*=}}
for round in $(seq "$rounds"); do
    pids=()
    for build in "$@"; do
        name=${build%%=*} bin=${build#*=} t=single-${build%%=*}-$round-$$
        FILA_LOG=warn "$bin" run --source kafka --brokers "$brokers" --input-topic "i-$t" \
            --output-topic "o-$t" --group "g-$t" --workers 2 >/dev/null 2>&1 &
        pids+=($!)
    done
    sleep 6
    run_load() { "$load" load --brokers "$brokers" --input-topic "i-$1" --output-topic "o-$1" --stages 1,1,1,1,1 --report json --burst "$2"; }
    for build in "$@"; do run_load "single-${build%%=*}-$round-$$" 10 >/dev/null; done
    for i in $(seq "$per_round"); do
        for build in "$@"; do
            sleep 0.5
            echo "$round ${build%%=*} $(run_load "single-${build%%=*}-$round-$$" 1 | tail -1 |
                python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["latency_ms"]["mean"], d["lost"], d["duplicates"])')"
        done
    done
    kill "${pids[@]}"; wait "${pids[@]}" || true
done
