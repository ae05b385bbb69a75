#!/usr/bin/env python3
"""Writes the two inputs of the keyed-order measurement into a folder:
lines.jsonl (200,000 lines of 10 words from 1,000, for wordcount) and
readings.jsonl (500,000 readings of 100 keys, event time rising, for
window_sums). Seeded, so every run writes the same bytes."""
import json
import random
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "."
r = random.Random(7)
words = [f"w{i}" for i in range(1000)]
with open(f"{out}/lines.jsonl", "w") as f:
    for _ in range(200_000):
        f.write(json.dumps({"text": " ".join(r.choice(words) for _ in range(10))}) + "\n")
with open(f"{out}/readings.jsonl", "w") as f:
    for i in range(500_000):
        f.write(json.dumps({"key": f"k{r.randrange(100)}", "value": r.randrange(10), "time": i}) + "\n")
