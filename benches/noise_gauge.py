"""The noise gauge of the restore and word-count benchmarks: how busy the
machine is, read with `fila run --burst 200` (its calibrated work per
message, in ms; higher when something else takes the CPU). The
experiments runner has a fuller gauge of its own (benches/experiments)."""

import json
import subprocess
from pathlib import Path

FILA = Path(__file__).resolve().parents[1] / "target" / "release" / "fila"


def read():
    """One reading, in ms; None if it could not be read (is
    target/release/fila built?)."""
    try:
        out = subprocess.run([str(FILA), "run", "--burst", "200", "--report", "json"],
                             capture_output=True, text=True, timeout=300)
        return json.loads(out.stdout.strip().splitlines()[-1])["ideal"]["work_per_message_ms"]
    except (OSError, ValueError, KeyError, IndexError, subprocess.TimeoutExpired):
        return None


def drift(points):
    """How far apart readings are, relative to the lowest; None if one is
    missing."""
    if not points or any(p is None for p in points):
        return None
    return max(points) / min(points) - 1
