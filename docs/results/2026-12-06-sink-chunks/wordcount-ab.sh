#!/usr/bin/env bash
# Two builds of the wordcount example, in turns, through
# benches/wordcount/run (fila only, one round per turn, a broker of its own
# per turn): the harness runs target/release/examples/wordcount, so each
# turn copies its build there first, and the last turn's build is left.
#
#   LINES=1000000 MEMBERS=1 wordcount-ab.sh ROUNDS BUILD_A BUILD_B
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=${OUT:-/tmp/fila-sink-chunks}; mkdir -p "$out"
rounds=$1; shift
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order=("$@"); else order=(); for b in "$@"; do order=("$b" "${order[@]}"); done; fi
    for b in "${order[@]}"; do
        cp "$b" target/release/examples/wordcount
        dir="$out/wc-$(basename "$b")-m${MEMBERS:-1}-r$r"
        benches/wordcount/run --systems fila --members "${MEMBERS:-1}" --rounds 1 \
            --lines "${LINES:-1000000}" --port "${PORT:-19430}" --out "$dir" >"$dir.log" 2>&1
        echo "$(basename "$b") round $r: $(grep '^| fila |' "$dir/README.md" | head -1)"
    done
done
