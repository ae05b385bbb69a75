#!/usr/bin/env bash
# Workers pinned (fila's default) against `--no-pin`, one build, in
# interleaved turns: the light job in process, the reference job in
# process, the light job through Kafka (docs/results/2026-12-06-sink-chunks/ab.sh:
# a warm burst, fila in a session of its own), and the re-keyed word count
# of a million lines (benches/wordcount/run, fila only, one member).
#
#   BROKERS=127.0.0.1:19510 FILA=target/release/fila run.sh
#
# BROKERS: a broker whose topics get 1 partition (scripts/kafka up --port
# 19510 --partitions 1); the word count starts a broker of its own. The
# word count runs target/release/examples/wordcount (not built here).
set -euo pipefail
cd "$(dirname "$0")/../../.."
: "${BROKERS:?the broker, host:port}"
fila=$(realpath "${FILA:-target/release/fila}")
out=${OUT:-/tmp/fila-pinning}; mkdir -p "$out"
gauge() { "$fila" run --burst 200 --report json 2>/dev/null |
    python3 -c 'import json,sys; print("gauge w ms", round(json.load(sys.stdin)["ideal"]["work_per_message_ms"], 3))'; }
inproc() { # label, args...
    local label=$1; shift
    "$fila" run --report json "$@" 2>/dev/null | python3 -c "import json,sys
d = json.load(sys.stdin)
print('$label', round(d['throughput_msgs_per_s']), round(d['latency_ms']['mean'], 1))"
}
# A build that runs `fila run` with --no-pin and everything else as fila.
nopin="$out/fila-no-pin"
printf '#!/bin/sh\nif [ "$1" = run ]; then exec "%s" "$@" --no-pin; fi\nexec "%s" "$@"\n' "$fila" "$fila" >"$nopin"
chmod +x "$nopin"
echo "# $(date -u +%FT%TZ) fila $("$fila" --version 2>/dev/null || true); nproc $(nproc)"
gauge
echo "## in process, light (--stages 1,1,1,1,1 --burst 1000000): mode msg/s mean_ms"
for _ in 1 2 3 4 5; do
    inproc pinned --stages 1,1,1,1,1 --burst 1000000
    inproc no-pin --stages 1,1,1,1,1 --burst 1000000 --no-pin
done
echo "## in process, reference (--burst 2000): mode msg/s mean_ms"
for _ in 1 2 3; do
    inproc pinned --burst 2000
    inproc no-pin --burst 2000 --no-pin
done
gauge
echo "## through Kafka, light, warm burst of 1,000,000 (first column: the build; fila-no-pin is --no-pin)"
OUT="$out" BURST=1000000 docs/results/2026-12-06-sink-chunks/ab.sh 3 "$fila" "$nopin"
echo "## through Kafka, light, warm burst of 100,000"
OUT="$out" BURST=100000 docs/results/2026-12-06-sink-chunks/ab.sh 4 "$fila" "$nopin"
gauge
echo "## word count, 1,000,000 lines, 1 member x 2 workers (the harness's table row)"
for r in 1 2 3; do
    for mode in pinned no-pin; do
        extra=(); [ "$mode" = no-pin ] && extra=(--fila-arg=--no-pin)
        d="$out/wordcount-$mode-r$r"; rm -rf "$d"
        benches/wordcount/run --systems fila --members 1 --threads 2 "${extra[@]}" --rounds 1 \
            --lines 1000000 --port "${PORT:-19430}" --out "$d" >"$d.log" 2>&1
        echo "$mode round $r: $(grep '^| fila |' "$d/README.md" | head -1)"
    done
done
gauge
