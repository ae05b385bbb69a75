#!/usr/bin/env python3
"""Medians of a turns.sh output, and per-round ratios against one kind.

    python3 summary.py light-2w.txt alo

Each round is one line per kind, in the order turns.sh ran them; a ratio
compares two kinds within the same round only."""
import statistics
import sys

path, base = sys.argv[1], sys.argv[2]
rows = [line.split() for line in open(path)
        if line.strip() and not line.startswith(("#", "kind "))]
kinds = list(dict.fromkeys(r[0] for r in rows))
rounds = [rows[i:i + len(kinds)] for i in range(0, len(rows), len(kinds))]


def spread(xs):
    return "%.0f (%.0f-%.0f)" % (statistics.median(xs), min(xs), max(xs))


def ratio(xs):
    return "%.2f (%.2f-%.2f)" % (statistics.median(xs), min(xs), max(xs))


print("kind  msg/s  mean_ms  fila_cpu_s")
for k in kinds:
    mine = [r for r in rows if r[0] == k]
    print(k, spread([float(r[1]) for r in mine]), spread([float(r[2]) for r in mine]),
          "%.2f" % statistics.median(float(r[6]) for r in mine))
print("per round, against %s: msg/s, mean latency" % base)
for k in kinds:
    if k == base:
        continue
    pairs = [({r[0]: r for r in rd}[k], {r[0]: r for r in rd}[base]) for rd in rounds]
    print(k, ratio([float(a[1]) / float(b[1]) for a, b in pairs]),
          ratio([float(a[2]) / float(b[2]) for a, b in pairs]))
