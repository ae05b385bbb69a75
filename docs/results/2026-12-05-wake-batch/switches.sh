#!/usr/bin/env bash
# Context switches per thread of one `fila run --source kafka` during a
# warm light burst: a burst to warm it, then the measured one, with each
# thread's voluntary and involuntary switches read from /proc before and
# after. Threads with 50 or fewer are left out.
#   BROKERS=127.0.0.1:19102 FILA=target/release/fila WORKERS=1 switches.sh
set -u
: "${BROKERS:?host:port of a running broker (scripts/kafka up)}"
fila=${FILA:-target/release/fila}
out=${OUT:-/tmp/fila-switches}; mkdir -p "$out"
t="sw$(date +%s%N | tail -c 8)"
"$fila" run --source kafka --brokers "$BROKERS" --input-topic "$t-in" --output-topic "$t-out" \
    --group "$t" --workers "${WORKERS:-1}" 2>"$out/$t.run.err" >/dev/null &
pid=$!
for _ in $(seq 1 200); do grep -q "partitions assigned" "$out/$t.run.err" 2>/dev/null && break; sleep 0.05; done
load() { "$fila" load --brokers "$BROKERS" --input-topic "$t-in" --output-topic "$t-out" \
    --burst "${BURST:-100000}" --stages 1,1,1,1,1 --timeout-s 300 --report json >"$out/$t.$1.json" 2>/dev/null; }
# One line per thread: its index, name, voluntary and involuntary switches.
snap() { for d in /proc/$pid/task/*; do
    printf '%s %s %s\n' "${d##*/}" "$(tr ' ' _ <"$d/comm")" \
        "$(awk '/^voluntary/{v=$2} /^nonvoluntary/{n=$2} END{print v, n}' "$d/status")"
done | sort; }
load cold
snap >"$out/$t.before"
load warm
snap >"$out/$t.after"
kill -TERM $pid; wait $pid
python3 -c "import json; print('%.0f msg/s' % json.load(open('$out/$t.warm.json'))['throughput_msgs_per_s'])"
join "$out/$t.before" "$out/$t.after" |
    awk '{v=$6-$3; n=$7-$4; if (v+n>50) printf "%-16s voluntary %6d involuntary %6d\n", $2, v, n}'
