"""What benches/experiments/run writes: medians over rounds, the noise
gauge, charts (SVG) and README.md. Everything here works from results.json
and raw/ alone, so `run --replot DIR` can redraw an earlier sitting.
Standard library only.
"""

import datetime
import gzip
import html
import json
import math
import os
import re
import statistics
import subprocess
from pathlib import Path

from systems import COLOR, LABEL, WORKLOADS

# The gauge's limit: the same as fila's calibration spread
# (docs/design/measurement.md, `ideal::NOISY_SPREAD`).
NOISY_DRIFT = 0.10

# The thesis's Table 3, measured on another machine (4 cores / 8 threads,
# i7-4870HQ, Flink 1.18): (replicas, thesis threads, burst) ->
# (thesis system msg/s, Flink msg/s, thesis system mean ms, Flink mean ms).
THESIS = {
    (1, 4, 1000): (301.66, 166.58, 2906, 5197),
    (1, 4, 10000): (513.64, 591.23, 16770, 7718),
    (1, 8, 1000): (302.02, 168.35, 2760, 5311),
    (1, 8, 10000): (491.21, 584.69, 17004, 7534),
    (2, 4, 1000): (307.98, 172.24, 2707, 4918),
    (2, 4, 10000): (542.27, 576.17, 14689, 8030),
    (2, 8, 1000): (160.75, 163.72, 5582, 5281),
    (2, 8, 10000): (515.62, 559.72, 15052, 8454),
}
# Threads here stand for the thesis's: half the cores per thread step.
THESIS_THREADS = {1: 4, 2: 8}

# Every figure of a burst that gets a median over the rounds: key in the
# row (dotted for nested), heading, digits.
FIGURES = [
    ("throughput_msgs_per_s", "msg/s", 1),
    ("records_per_cpu_s", "records per CPU-s", 0),
    ("records_per_total_cpu_s", "records per CPU-s with the broker's", 0),
    ("latency_ms.mean", "mean ms", 0),
    ("latency_ms.p50", "p50 ms", 0),
    ("latency_ms.p99", "p99 ms", 0),
    ("latency_ms.max", "max ms", 0),
    ("cpu_s", "CPU s", 2),
    ("broker_cpu_s", "broker CPU s", 2),
    ("broker_jit_s", "broker JIT s", 2),
    ("load_cpu_s", "load CPU s", 2),
    ("peak_rss_mb", "peak RSS MB", 0),
    ("elapsed_s", "elapsed s", 2),
    ("startup_s", "start-up s", 1),
]


# ---------------------------------------------------------------- statistics

def get(row, key):
    v = row
    for k in key.split("."):
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return v


def spread(values):
    """median, min, max and count of the values that exist; None if none."""
    vs = [v for v in values if v is not None]
    if not vs:
        return None
    return {"median": statistics.median(vs), "min": min(vs), "max": max(vs), "n": len(vs)}


def summarize(rows):
    """(experiment, system, warm) -> {figure: spread, "rounds": ..., ...}."""
    groups = {}
    for r in rows:
        groups.setdefault((r["experiment"], r["system"], r["warm"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        ok = [r for r in rs if not r.get("error")]
        s = {fig: spread([get(r, fig) for r in ok]) for fig, _, _ in FIGURES}
        s["rounds"] = len(rs)
        s["failed"] = len(rs) - len(ok)
        s["lost"] = sum(r.get("lost") or 0 for r in ok)
        s["duplicates"] = sum(r.get("duplicates") or 0 for r in ok)
        s["broker_bursts_before"] = spread([r.get("broker_bursts_before") for r in rs])
        mean_before = [r.get("broker_bursts_before") for r in rs if r.get("broker_bursts_before") is not None]
        s["broker_bursts_before_mean"] = sum(mean_before) / len(mean_before) if mean_before else None
        s["positions"] = sorted(r.get("position") for r in rs if r.get("position") is not None)
        out[key] = s
    return out


def broken_promises(rows):
    """(row, what) for every burst that broke its guarantee: in either mode
    a lost id (every system here promises at least once), and under exactly
    once a duplicate, as the load client saw it or as the audit of the
    turn's output topic found it (or an audit that could not be read)."""
    out = []
    for r in rows:
        if r.get("error"):
            continue
        if (r.get("lost") or 0) > 0:
            out.append((r, f"{r['lost']} id(s) lost"))
        if r.get("guarantee") != "exactly-once":
            continue
        if (r.get("duplicates") or 0) > 0:
            out.append((r, f"{r['duplicates']} duplicate(s) read by the load client"))
        audit = r.get("output_audit") or {}
        if audit.get("error"):
            out.append((r, f"the output topic could not be audited: {audit['error']}"))
        elif (audit.get("duplicates") or 0) > 0:
            out.append((r, f"{audit['duplicates']} duplicate(s) in the output topic"))
    return out


def interval_text(c, short=False):
    """A system's commits as text: 'commit 100 ms', 'checkpoint 1 000 ms'."""
    if not c or not c.get("interval"):
        return "—"
    ms = num(c.get("interval_ms"), 0) if c.get("interval_ms") is not None else "?"
    return f"{ms} ms" if short else f"{c['interval']} {ms} ms"


def paired_ratios(rows, exp, a, b, warm, key):
    """Per round, a's figure over b's in that same round (both succeeded)."""
    by_round = {}
    for r in rows:
        if r["experiment"] == exp and r["warm"] == warm and not r.get("error"):
            by_round.setdefault(r.get("round", 1), {})[r["system"]] = get(r, key)
    ratios = []
    for sys_vals in by_round.values():
        va, vb = sys_vals.get(a), sys_vals.get(b)
        if va is not None and vb:
            ratios.append(va / vb)
    return spread(ratios)


def gauge_drift(points):
    """(max - min) / mean of the round's work-per-message readings."""
    ws = [p["w_ms"] for p in points if p.get("w_ms")]
    if len(ws) < 2:
        return None
    return (max(ws) - min(ws)) / (sum(ws) / len(ws))


def judge_round(points):
    """drift, worst calibration spread, flagged, why."""
    drift = gauge_drift(points)
    worst = max((p.get("spread") or 0 for p in points), default=None)
    why = []
    if drift is None:
        why.append("no gauge reading")
    elif drift > NOISY_DRIFT:
        why.append(f"work per message drifted {drift * 100:.1f}%")
    if worst is not None and worst > NOISY_DRIFT:
        why.append(f"a calibration spread of {worst * 100:.1f}%")
    if any(p.get("error") for p in points):
        why.append("a gauge reading failed")
    return {"drift": drift, "worst_spread": worst, "flagged": bool(why), "why": "; ".join(why)}


# --------------------------------------------------------------- formatting

def num(v, digits=1):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}".replace(",", " ")


def cell(s, digits=1):
    """median (min–max), or the value alone when the rounds agree or there is one."""
    if s is None:
        return "—"
    med = num(s["median"], digits)
    if s["n"] == 1 or num(s["min"], digits) == num(s["max"], digits):
        return med
    return f"{med} ({num(s['min'], digits)}–{num(s['max'], digits)})"


def pct_cell(s):
    """A ratio's median and range as variations: +2.0% (−5.1 to +9.3)."""
    if s is None:
        return "—"

    def p(x):
        return f"{(x - 1) * 100:+.1f}%"
    if s["n"] == 1 or p(s["min"]) == p(s["max"]):
        return p(s["median"])
    return f"{p(s['median'])} ({p(s['min'])} to {p(s['max'])})"


def pct(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{(a - b) / b * 100:+.1f}%"


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------- charts

def nice_ticks(hi, count=6):
    if hi <= 0:
        hi = 1
    raw = hi / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks = [0.0]
    while ticks[-1] < hi - 1e-9:
        ticks.append(ticks[-1] + step)
    return ticks


def fmt_tick(v):
    if v == int(v):
        return f"{int(v):,}".replace(",", " ") if abs(v) >= 10000 else str(int(v))
    return f"{v:g}"


def svg_chart(path, title, subtitle, xlabel, ylabel, series, marks=()):
    """A line chart. series: (label, color, points, dashed, width);
    marks: (x, color) drawn as small triangles on the x axis."""
    w, h = 960, 560
    left, right, top, bottom = 80, 270, 60, 60
    pw, ph = w - left - right, h - top - bottom
    xs = [x for s in series for x, _ in s[2]] + [m[0] for m in marks]
    ys = [y for s in series for _, y in s[2]]
    xt = nice_ticks(max(xs) if xs else 1)
    yt = nice_ticks(max(ys) if ys else 1)
    xmax, ymax = xt[-1], yt[-1]

    def px(x):
        return left + pw * x / xmax

    def py(y):
        return top + ph - ph * y / ymax

    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="24" font-size="17">{e(title)}</text>',
           f'<text x="{left}" y="44" fill="#555">{e(subtitle)}</text>']
    for y in yt:
        out.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + pw}" y2="{py(y):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 8}" y="{py(y) + 4:.1f}" text-anchor="end">{fmt_tick(y)}</text>')
    for x in xt:
        out.append(f'<line x1="{px(x):.1f}" y1="{top}" x2="{px(x):.1f}" y2="{top + ph}" stroke="#f0f0f0"/>')
        out.append(f'<text x="{px(x):.1f}" y="{top + ph + 18}" text-anchor="middle">{fmt_tick(x)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 14}" text-anchor="middle">{e(xlabel)}</text>')
    out.append(f'<text transform="translate(20 {top + ph / 2}) rotate(-90)" text-anchor="middle">{e(ylabel)}</text>')
    for label, color, points, dashed, width in reversed(series):  # the first on top
        if not points:
            continue
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="{width}"{dash}/>')
    for x, color in marks:
        out.append(f'<path d="M{px(x):.1f},{top + ph - 1} l-5,-9 h10 z" fill="{color}"/>')
    ly = top + 6
    for label, color, points, dashed, width in series:
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        out.append(f'<line x1="{left + pw + 14}" y1="{ly}" x2="{left + pw + 44}" y2="{ly}" '
                   f'stroke="{color}" stroke-width="{max(width, 2)}"{dash}/>')
        out.append(f'<text x="{left + pw + 50}" y="{ly + 4}">{e(label)}</text>')
        ly += 20
    if marks:
        out.append(f'<path d="M{left + pw + 29},{ly + 5} l-5,-9 h10 z" fill="#777"/>')
        out.append(f'<text x="{left + pw + 50}" y="{ly + 4}">burst starts</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n")


def bin_width(burst):
    """Ids per bin of the latency chart: even and at least 10, so that ids
    that alternate between two partitions do not draw a zigzag; at most
    250 bins."""
    w = max(10, math.ceil(burst / 250))
    return w + w % 2


def binned(points, width):
    """Mean latency per bin of `width` consecutive ids."""
    if not points:
        return points
    acc = {}
    for i, ms in points:
        b = i // width
        s, c = acc.get(b, (0, 0))
        acc[b] = (s + ms, c + 1)
    return [(b * width + width / 2, s / c) for b, (s, c) in sorted(acc.items())]


def raw_name(exp_n, rnd, system, what):
    """raw/ file of one slot: what is 'cold', 'warm' (latency CSV) or 'cpu'."""
    if what == "cpu":
        return f"exp{exp_n}-r{rnd}-{system}-cpu.json"
    return f"exp{exp_n}-r{rnd}-{system}-{what}.csv.gz"


def load_series(out, exp_n, rnd, system):
    """The CPU samples and per-burst latencies of one slot, from raw/."""
    s = {"system": system, "round": rnd, "cpu": [], "bursts": [], "latency": {}}
    raw = Path(out) / "raw"
    try:
        cpu = json.loads((raw / raw_name(exp_n, rnd, system, "cpu")).read_text())
        s["cpu"], s["bursts"] = cpu.get("cpu", []), cpu.get("bursts", [])
    except (OSError, ValueError):
        # A sitting of the one-round runner kept all systems in one file.
        try:
            cpu = json.loads((raw / f"exp{exp_n}-cpu.json").read_text()).get(system, {})
            s["cpu"], s["bursts"] = cpu.get("cpu", []), cpu.get("bursts", [])
        except (OSError, ValueError):
            pass
    for phase in ("cold", "warm"):
        for name in (raw_name(exp_n, rnd, system, phase), f"exp{exp_n}-{system}-{phase}.csv.gz"):
            try:
                with gzip.open(raw / name, "rt") as f:
                    next(f, None)
                    s["latency"][phase] = [tuple(int(x) for x in line.split(",")) for line in f if line.strip()]
                break
            except OSError:
                continue
    return s


def median_round(rows, exp_n, system):
    """The round whose warm throughput is the median of the system's rounds."""
    ok = [r for r in rows if r["experiment"] == exp_n and r["system"] == system and r["warm"]
          and not r.get("error")]
    if not ok:
        return None
    ok.sort(key=lambda r: r["throughput_msgs_per_s"])
    return ok[(len(ok) - 1) // 2].get("round", 1)


def exp_title(exp):
    return (f"{exp['workload']}, {exp['replicas']} replica(s), {exp['threads']} thread(s), "
            f"{exp['burst']} messages")


def latency_svg(out, exp, all_series):
    series = []
    for s in all_series:
        for phase, dashed, width in (("cold", True, 1.4), ("warm", False, 2)):
            pts = s["latency"].get(phase) or []
            if pts:
                series.append((f"{LABEL[s['system']]} ({phase}, round {s['round']})", COLOR[s["system"]],
                               binned(pts, bin_width(exp["burst"])), dashed, width))
    note = (f"mean latency per {bin_width(exp['burst'])} consecutive ids; each system's round with its "
            "median warm throughput; dashed: cold, solid: warm")
    name = f"exp{exp['n']}-latency.svg"
    svg_chart(out / name, f"Experiment {exp['n']}: latency per message ({exp_title(exp)})",
              note, "message id (order produced)", "latency (ms)", series)
    return name


def cpu_svg(out, exp, all_series):
    series, marks = [], []
    for s in all_series:
        cpu = s["cpu"]
        sys_pts, brk_pts = [], []
        for (t0, a0, b0), (t1, a1, b1) in zip(cpu, cpu[1:]):
            dt = t1 - t0
            if dt < 0.05:
                continue
            sys_pts.append((t1, (a1 - a0) / dt))
            brk_pts.append((t1, (b1 - b0) / dt))
        color = COLOR[s["system"]]
        series.append((f"{LABEL[s['system']]} (round {s['round']})", color, sys_pts, False, 1.6))
        series.append((f"broker ({LABEL[s['system']]} run)", color, brk_pts, True, 1))
        marks += [(t0, color) for _, t0, _ in s["bursts"]]
    name = f"exp{exp['n']}-cpu.svg"
    svg_chart(out / name, f"Experiment {exp['n']}: CPU use ({exp_title(exp)})",
              "cores busy (utime+stime per 250 ms) from each system's start: start-up, the cold burst, "
              "the warm burst",
              "seconds since the system was started", "CPU cores busy", series, marks)
    return name


def draw_charts(out, res):
    """Per experiment, latency and CPU charts of each system's median round."""
    charts = {}
    for e in res["experiments"]:
        series = []
        for system in res["meta"]["systems"]:
            rnd = median_round(res["runs"], e["n"], system)
            if rnd is not None:
                series.append(load_series(out, e["n"], rnd, system))
        if series:
            charts[e["n"]] = (latency_svg(out, e, series), cpu_svg(out, e, series))
    return charts


# ------------------------------------------------------------------ machine

def machine_info():
    info = {"cpu_model": "unknown", "logical_cpus": os.cpu_count(), "physical_cores": None,
            "memory_gib": None, "kernel": os.uname().release}
    cores = set()
    try:
        phys = None
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            k, v = k.strip(), v.strip()
            if k == "model name" and info["cpu_model"] == "unknown":
                info["cpu_model"] = v
            elif k == "physical id":
                phys = v
            elif k == "core id":
                cores.add((phys, v))
        info["physical_cores"] = len(cores) or None
    except OSError:
        pass
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        r = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        info["java"] = (r.stderr.strip().splitlines() or ["?"])[0]
    except (OSError, subprocess.TimeoutExpired):
        info["java"] = "?"
    return info


def jar_version(lib, prefix):
    for p in sorted(Path(lib).glob(f"{prefix}-*.jar")):
        m = re.fullmatch(re.escape(prefix) + r"-(\d[\w.\-]*)\.jar", p.name)
        if m:
            return m.group(1)
    return "?"


def fila_version(path):
    v = "?"
    try:
        r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        v = r.stdout.strip() or v
    except (OSError, subprocess.TimeoutExpired):
        pass
    commit = "?"
    try:
        src = Path(path).resolve().parents[2]
        r = subprocess.run(["git", "-C", str(src), "describe", "--always", "--dirty"],
                           capture_output=True, text=True, timeout=30)
        commit = r.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        pass
    return v, commit


# ------------------------------------------------------------------- README

def warmup_text(meta, info):
    if not meta.get("broker_warmup"):
        return "none: the first turn met a broker just started"
    text = (f"{meta['broker_warmup']} untimed burst(s) of {meta.get('broker_warmup_burst', '?')} light records, "
            "produced and read back by `fila load` on a topic of their own, before anything is measured")
    if info:
        text += (f"; the broker's CPU per burst went from {info['first_burst']['broker_cpu_s']} s (JIT "
                 f"{info['first_burst']['broker_jit_s']} s) to {info['last_burst']['broker_cpu_s']} s (JIT "
                 f"{info['last_burst']['broker_jit_s']} s)")
    return text


def upgrade(res):
    """A results.json of the one-round runner, in today's shape."""
    meta = res["meta"]
    meta.setdefault("rounds", 1)
    meta.setdefault("workloads", ["reference"])
    meta.setdefault("broker_warmup", 0)
    meta.setdefault("broker_cpus", None)
    meta.setdefault("system_cpus", None)
    meta.setdefault("fila_args", [])
    # Before --guarantee every sitting ran at least once, Flink checkpointing
    # every 5 s and Kafka Streams committing every 100 ms (both fixed in
    # their jobs then); fila's commit interval was not recorded.
    meta.setdefault("guarantee", "at-least-once")
    meta.setdefault("commits", {"flink": {"interval": "checkpoint", "interval_ms": 5000},
                                "kstreams": {"interval": "commit", "interval_ms": 100}})
    for e in res["experiments"]:
        e.setdefault("workload", "reference")
    for r in res["runs"]:
        r.setdefault("round", 1)
        r.setdefault("guarantee", meta["guarantee"])
        received = r["burst"] - (r.get("lost") or 0)
        cpu, brk = r.get("cpu_s"), r.get("broker_cpu_s")
        if "records_per_cpu_s" not in r and cpu:
            r["records_per_cpu_s"] = round(received / cpu, 1)
        if "records_per_total_cpu_s" not in r and cpu and brk is not None:
            r["records_per_total_cpu_s"] = round(received / (cpu + brk), 1)
    if "flink_cfg" not in res:
        res["flink_cfg"] = {"reference": res.get("flink")} if res.get("flink") else {}
        tuning = res.get("flink_tuning")
        res["flink_tuning"] = {"reference": tuning} if tuning else {}
    res.setdefault("gauge", [])
    return res


def verdict(res):
    """The sitting's noise verdict: (flagged rounds, total rounds) from the gauge."""
    rounds = res.get("gauge") or []
    return [g for g in rounds if g.get("flagged")], rounds


def commits_of(rows, system, meta=None):
    """The system's commits ({"interval", "interval_ms"}) in these rows, or
    the sitting's; None if not recorded, "varies" if they differ."""
    seen = {(r.get("interval"), r.get("interval_ms")) for r in rows
            if r["system"] == system and r.get("interval")}
    if len(seen) > 1:
        return {"interval": "varies", "interval_ms": None}
    if seen:
        kind, ms = seen.pop()
        return {"interval": kind, "interval_ms": ms}
    return ((meta or {}).get("commits") or {}).get(system)


def intervals_line(systems, commits):
    """'commits (Flink: checkpoints) every fila 100 ms, Flink 1 000 ms, ...'"""
    return "commits (Flink: checkpoints) every " + ", ".join(
        f"{LABEL[s]} {interval_text(commits.get(s), True)}" for s in systems)


def gauge_cell(point):
    """A gauge reading's w, and the tries a retake replaced."""
    w = num(point.get("w_ms"), 3)
    tries = [f"{num(r.get('w_ms'), 3)} at {num((r.get('spread') or 0) * 100)}%" for r in point.get("retaken", [])]
    return f"{w} (retake of {', '.join(tries)})" if tries else w


def write_report(out, res, charts):
    meta, machine, versions = res["meta"], res["machine"], res["versions"]
    experiments, rows = res["experiments"], res["runs"]
    systems = meta["systems"]
    others = [s for s in systems if s != "fila"]
    summary = summarize(rows)
    started = datetime.datetime.fromisoformat(meta["started"])
    rounds = meta["rounds"]
    md = [f"# fila, Flink and Kafka Streams side by side ({started:%Y-%m-%d})", ""]
    guarantee = meta.get("guarantee", "at-least-once")
    eos = guarantee == "exactly-once"
    mode = "exactly once" if eos else "at least once"
    commits = {s: commits_of(rows, s, meta) for s in systems}
    md += [f"Made by `{meta['command']}` in {meta['elapsed_s'] / 60:.1f} min: "
           f"{rounds} round(s) per experiment, workloads {', '.join(meta['workloads'])}. Every system ran "
           f"**{mode}**: " + intervals_line(systems, commits) + ".", ""]

    broken = broken_promises(rows)
    what = "no lost record" + (" and no duplicate" if eos else "")
    if broken:
        md += [f"**Broken promise: {len(broken)} burst(s) broke {mode} (see [Checks](#checks)).**", ""]
    elif rows:
        md += [f"Every burst that ran held {mode}: {what} (see [Checks](#checks)).", ""]

    flagged, gauged = verdict(res)
    if not gauged:
        md += ["**No noise gauge was read in this sitting: its numbers are not a result to commit.**", ""]
    elif flagged:
        md += [f"**Noisy sitting: the gauge flagged {len(flagged)} of {len(gauged)} round(s) (see "
               "[Noise gauge](#noise-gauge)). The machine changed speed while it ran, so these numbers "
               "must not be committed as a result: run it again on a quiet machine.**", ""]
    else:
        kept = " kept" if res.get("discarded_rounds") else ""
        md += [f"The gauge stayed within {NOISY_DRIFT * 100:.0f}% in all {len(gauged)} round(s){kept}: the "
               "machine held its speed through them.", ""]
    dropped = res.get("discarded_rounds") or []
    if dropped:
        md += [f"{len(dropped)} flagged round(s) were run again (`--rerun-flagged "
               f"{meta.get('rerun_flagged', '?')}`): their bursts are left out of every table, and their "
               "gauge readings are listed under [Noise gauge](#noise-gauge). A round was kept or run again on "
               "the gauge alone, never on the systems' figures.", ""]

    md += ["## Machine", "",
           f"- CPU: {machine['cpu_model']}, {machine['physical_cores'] or '?'} core(s), "
           f"{machine['logical_cpus']} logical CPU(s)",
           f"- memory: {machine['memory_gib']} GiB; kernel {machine['kernel']}; {machine['java']}",
           f"- date: {started:%Y-%m-%d %H:%M} UTC", ""]

    if meta.get("broker_cpus"):
        placement = (f"the broker, the load client and the topic tool on CPU(s) {meta['broker_cpus']}, "
                     f"the systems and the gauge on CPU(s) {meta['system_cpus']} (`taskset`): the systems "
                     "do not share their cores with the broker")
    else:
        placement = "nothing pinned: the broker, the load client and the systems share every core"
    md += ["## Setup", "",
           f"- broker: one Apache Kafka {versions['kafka']} (KRaft) from `scripts/kafka`, on 127.0.0.1, "
           "for the whole sitting; fresh topics for every system in every round, with as many partitions "
           "as replicas",
           f"- placement: {placement}",
           "- broker warm-up: " + warmup_text(meta, res.get("broker_warmup")),
           f"- rounds: {rounds} per experiment; within a round every system takes its turn, and the first "
           "of each round is the next system in line (round r starts with the r-th), so over any "
           f"{len(systems)} consecutive rounds every system takes every place once. Each figure is the median "
           "of the rounds, with their min–max; a comparison is the median of the per-round ratios, with theirs",
           "- a turn: fresh topics, the system started and waited for (its RUNNING line; fila: every "
           "replica logging its partitions assigned), a **cold** burst (the first after start), then a "
           "**warm** burst of the same size, the system stopped, the topics deleted",
           f"- load: `fila load` ({versions['fila']}"
           + (f", commit {versions['fila_commit']}" if versions.get('fila_commit', '?') != "?" else "")
           + ") produces each burst, stamping each `timestamp` as it produces it; latency is receive time "
           "minus that timestamp; throughput is messages over first produce to last receive",
           *(["- fila: replicas are `fila run` processes in one consumer group (`--group`"
           + (", and `--replica I/N`" if meta.get("fila_static_replicas") else "")
           + "), threads are `--workers`; with 2 replicas each runs with `--no-pin`, since each process "
           "would pin its workers to the same first CPUs; otherwise at fila's defaults"
           + (f", plus `{' '.join(meta['fila_args'])}`" if meta.get("fila_args") else "")
           + (", with `--exactly-once`: each commit interval is one Kafka transaction holding the outputs "
              "and the input offsets" if eos else ", at least once")
           + (f"; it commits every {interval_text(commits.get('fila'), True)}" if commits.get("fila")
              else "; its commit interval was not recorded")] if "fila" in systems else []),
           *([f"- Flink {versions['flink']} (flink-connector-kafka {versions['flink_kafka']}): one local "
           "MiniCluster, replicas are task managers, threads are slots per task manager; "
           + ("exactly once: EXACTLY_ONCE checkpoints, the source reads committed records only, the sink "
              "writes each checkpoint interval in one Kafka transaction (`DeliveryGuarantee.EXACTLY_ONCE`, a "
              "transactional id prefix per run, `transaction.timeout.ms` = 900 000) committed once the "
              "checkpoint completes, so its outputs become visible at checkpoints"
              if eos else "at least once, the sink writes as it goes and a checkpoint commits the source's "
              "offsets and flushes the sink")
           + (f"; checkpoints every {interval_text(commits.get('flink'), True)}" if commits.get("flink") else "")
           + "; sink producer `linger.ms` = 5"] if "flink" in systems else []),
           *([f"- Kafka Streams {versions['kstreams']}: replicas are instances with one application id, threads "
           "are `num.stream.threads`; "
           + ("exactly once (`processing.guarantee` = `exactly_once_v2`: each commit is one transaction, "
              "the consumer reads committed records only)" if eos else "at least once")
           + (f", `commit.interval.ms` = {(commits.get('kstreams') or {}).get('interval_ms')}"
              if commits.get("kstreams") else "") + ", producer `linger.ms` = 5"] if "kstreams" in systems else []),
           "- the load client (`fila load`) reads the output topic with librdkafka's default isolation, "
           "read committed: under exactly once it sees an output once its transaction commits, and never "
           "one of an aborted transaction",
           f"- JVMs run with `-Xmx{meta['jvm_heap_mb']}m`. CPU is utime+stime of every process of the system "
           "during the burst; the broker's is apart, and so is its JIT compiler's share of it (a broker "
           "still warming up spends much of its CPU compiling); load CPU is the load client's. Records per "
           "CPU-s is the burst over the system's CPU s, and over its CPU s plus the broker's. Peak RSS is "
           "VmHWM summed over the system's processes", ""]

    md += ["## Workloads", ""]
    trows = []
    for w in meta["workloads"]:
        wl = WORKLOADS.get(w)
        bursts = sorted({e["burst"] for e in experiments if e["workload"] == w})
        trows.append([w, wl.summary if wl else "—", ", ".join(f"{b:,}".replace(",", " ") for b in bursts)])
    md += [md_table(["workload", "what", "bursts"], trows), ""]

    md += ['<a id="noise-gauge"></a>', "", "## Noise gauge", ""]
    if res.get("gauge"):
        md += ["Before each round and after each system's turn, `fila run --burst "
               f"{meta.get('gauge_burst', '?')}` calibrates the work per message w of the reference record on "
               "the systems' CPUs (docs/design/measurement.md): the same fixed work, timed. A round is flagged "
               f"when its readings drift apart by more than {NOISY_DRIFT * 100:.0f}% ((max − min) / mean), or "
               "when one reading's own calibration spread (before against after) is above that. A reading "
               "with such a spread was disturbed during the second or so it ran, so it is taken again after "
               "a pause, up to twice; the table gives the tries it replaced in brackets. A sitting "
               "with a flagged round is not a result. Others busy is the share of the gauge's CPUs that "
               "other processes (the broker included) kept busy while a reading ran: where the drift "
               "comes from.", ""]
    trows = []
    for g in sorted(res.get("gauge", []) + (res.get("discarded_rounds") or []),
                    key=lambda g: (g["experiment"], g["round"], g.get("attempt", 1))):
        ws = " → ".join(gauge_cell(p) for p in g["points"])
        busy = [p["others_busy"] for p in g["points"] if p.get("others_busy") is not None]
        tried = g.get("attempt", 1) > 1 or g.get("left_out")
        trows.append([g["experiment"], f"{g['round']}, try {g.get('attempt', 1)}" if tried else g["round"],
                      ", ".join(LABEL.get(s, s) for s in g["order"]), ws,
                      f"{max(busy) * 100:.0f}%" if busy else "—",
                      f"{g['drift'] * 100:.1f}%" if g.get("drift") is not None else "—",
                      f"{g['worst_spread'] * 100:.1f}%" if g.get("worst_spread") is not None else "—",
                      (f"**yes**: {g['why']}" if g.get("flagged") else "no")
                      + ("; left out, run again" if g.get("left_out") else "")])
    if trows:
        md += [md_table(["exp", "round", "order", "w ms, before the round and after each turn",
                         "others busy, at most", "drift", "worst spread", "flagged"], trows), ""]
    else:
        md += ["(No gauge readings: this sitting predates the gauge.)", ""]

    tunings = res.get("flink_tuning") or {}
    if "flink" in systems:
        md += ["## Flink tuning", ""]
        for w in meta["workloads"]:
            cfg = (res.get("flink_cfg") or {}).get(w)
            tuning = tunings.get(w)
            if tuning:
                md += [f"Workload **{w}**, on experiment {tuning['experiment']} ({tuning['replicas']} replica(s), "
                       f"{tuning['threads']} thread(s), burst {tuning['burst']}): each candidate started fresh "
                       "once, ranked by warm throughput. Parallelism is source-stage1-…-stage5-sink; `uniform` "
                       "runs every operator on every slot (one chain per slot), `stage3` gives the heaviest stage "
                       "(fib(30) in the reference record) every slot and the others half.", ""]
                trows = []
                for c in tuning["candidates"]:
                    cc = c.get("config") or {}
                    trows.append([c["candidate"]["shape"], cc.get("parallelism", "—"),
                                  c["candidate"]["buffer_timeout_ms"], num(c["cold_throughput_msgs_per_s"]),
                                  num(c["warm_throughput_msgs_per_s"]), num(c["warm_mean_ms"], 0),
                                  f"{c['lost']}/{c.get('duplicates', '?')}" if c["lost"] is not None
                                  else "failed"])
                md += [md_table(["shape", "parallelism", "buffer timeout ms", "cold msg/s", "warm msg/s",
                                 "warm mean ms", "lost/dup"], trows), ""]
            if cfg:
                md += [f"Flink runs workload {w} with shape **{cfg['shape']}** and buffer timeout "
                       f"**{cfg['buffer_timeout_ms']} ms**"
                       + (" (chosen by the tuning above)." if tuning else " (given on the command line, or the "
                          "only candidate)."), ""]

    for w in meta["workloads"]:
        wexps = [e for e in experiments if e["workload"] == w]
        if not wexps:
            continue
        for warm in (True, False):
            phase = "warm" if warm else "cold"
            what = "after a warm-up burst of the same size" if warm else "the first burst after start"
            md += [f"## Results: {w}, {phase} ({what})", "",
                   f"{mode[0].upper() + mode[1:]}; " + intervals_line(systems, commits) + ".", ""]
            header = ["exp", "replicas", "threads", "N"]
            header += [f"{LABEL[s]} msg/s" for s in systems]
            if "fila" in systems:
                header += [f"fila vs {LABEL[s]} (msg/s)" for s in others]
            header += [f"{LABEL[s]} mean ms" for s in systems]
            if "fila" in systems:
                header += [f"fila vs {LABEL[s]} (mean)" for s in others]
            trows = []
            for e in wexps:
                row = [e["n"], e["replicas"], e["threads"], e["burst"]]
                row += [cell((summary.get((e["n"], s, warm)) or {}).get("throughput_msgs_per_s")) for s in systems]
                if "fila" in systems:
                    row += [pct_cell(paired_ratios(rows, e["n"], "fila", s, warm, "throughput_msgs_per_s"))
                            for s in others]
                row += [cell((summary.get((e["n"], s, warm)) or {}).get("latency_ms.mean"), 0) for s in systems]
                if "fila" in systems:
                    row += [pct_cell(paired_ratios(rows, e["n"], "fila", s, warm, "latency_ms.mean"))
                            for s in others]
                trows.append(row)
            md += [md_table(header, trows), ""]

            header = ["exp"] + [f"{LABEL[s]} records per CPU-s" for s in systems]
            if "fila" in systems:
                header += [f"fila vs {LABEL[s]}" for s in others]
            trows = []
            for e in wexps:
                row = [e["n"]]
                row += [cell((summary.get((e["n"], s, warm)) or {}).get("records_per_cpu_s"), 0) for s in systems]
                if "fila" in systems:
                    row += [pct_cell(paired_ratios(rows, e["n"], "fila", s, warm, "records_per_cpu_s"))
                            for s in others]
                trows.append(row)
            md += [md_table(header, trows), ""]

            detail = [f for f in FIGURES if f[0] not in ("throughput_msgs_per_s", "latency_ms.mean",
                                                         "records_per_cpu_s", "elapsed_s")]
            header = (["exp", "system", "commits every"] + [h for _, h, _ in detail]
                      + ["lost/dup", "rounds ok"])
            trows = []
            for e in wexps:
                for s in systems:
                    sm = summary.get((e["n"], s, warm))
                    if sm is None:
                        continue
                    row = ([e["n"], LABEL[s], interval_text(commits_of(
                        [r for r in rows if r["experiment"] == e["n"]], s, meta))]
                        + [cell(sm.get(k), d) for k, _, d in detail])
                    row += [f"{sm['lost']}/{sm['duplicates']}", f"{sm['rounds'] - sm['failed']}/{sm['rounds']}"]
                    trows.append(row)
            md += [md_table(header, trows), ""]
            failed = [r for r in rows if r["warm"] == warm and r.get("error")
                      and any(e["n"] == r["experiment"] for e in wexps)]
            for r in failed:
                md.append(f"- experiment {r['experiment']}, round {r.get('round', 1)}, {LABEL[r['system']]}: "
                          f"failed: {r['error']}")
            if failed:
                md.append("")
        md += ["Each cell is the median of the rounds (min–max). A variation is (fila − other) / other, per "
               "round, then the median (min to max): positive is more throughput, more records per CPU-s, "
               "or more latency. Lost/dup are summed over the rounds.", ""]

    md += ['<a id="checks"></a>', "", "## Checks", "",
           f"What must hold {mode}, in every burst of every round: no system loses a record (every system "
           "here promises at least once)"
           + ("; and no system writes a duplicate" if eos else "; duplicates are allowed at least once, "
              "and counted") + ". Duplicates are counted twice: by the load client, an id it reads again "
           "before it has read every id of its burst; and, once the system has stopped, in an audit of the "
           "turn's whole output topic (both bursts), every committed record read back and counted by id. "
           + ("A lost record, a duplicate or an audit that could not be read fails the run (exit status 1), "
              "like a system that fails." if eos else "A lost record fails the run (exit status 1), like a "
              "system that fails."), ""]
    trows = []
    for s in systems:
        ok = [r for r in rows if r["system"] == s and not r.get("error")]
        lost = sum(r.get("lost") or 0 for r in ok)
        dup = sum(r.get("duplicates") or 0 for r in ok)
        bad = [what for r, what in broken if r["system"] == s]
        audits = [r["output_audit"] for r in ok if r.get("output_audit") is not None]
        done = [a for a in audits if not a.get("error")]
        audit = (f"{len(done)} turn(s): {sum(a['records'] for a in done)} records, "
                 f"{sum(a['ids'] for a in done)} ids, {sum(a['duplicates'] for a in done)} duplicate(s)"
                 if done else "—") + (f"; {len(audits) - len(done)} failed" if len(done) < len(audits) else "")
        trows.append([LABEL[s], guarantee, interval_text(commits.get(s)), len(ok),
                      len([r for r in rows if r["system"] == s]) - len(ok), lost, dup, audit,
                      "**no**: " + "; ".join(sorted(set(bad))) if bad else ("yes" if ok else "—")])
    md += [md_table(["system", "guarantee", "commits every", "bursts", "failed", "lost", "duplicates read",
                     "output topic audit", "held"], trows), ""]

    md += ["## Broker history", "",
           "What the broker had served before each system's warm burst (the warm-up, the Flink tuning, "
           "and every earlier burst of the sitting), and its JIT compiler's CPU during that burst: "
           "a broker still compiling its own code spends CPU that no system asked for.", ""]
    trows = []
    for e in experiments:
        for s in systems:
            sm = summary.get((e["n"], s, True))
            if sm is None:
                continue
            bb = sm.get("broker_bursts_before")
            trows.append([e["n"], LABEL[s], ", ".join(str(p + 1) for p in sm["positions"]) or "—",
                          num(sm.get("broker_bursts_before_mean"), 1),
                          f"{bb['min']}–{bb['max']}" if bb else "—",
                          cell(sm.get("broker_jit_s"), 2), cell(sm.get("broker_cpu_s"), 2)])
    md += [md_table(["exp", "system", "place in each round", "bursts before, mean", "min–max",
                     "broker JIT s", "broker CPU s"], trows), ""]

    ref = [e for e in experiments if e["workload"] == "reference"]
    if ref:
        md += ["## The thesis's figures, on another machine", "",
               "From the thesis's Table 3: 4 cores / 8 threads (i7-4870HQ), Flink 1.18, threads 4 and 8 "
               "(here 1 and 2 on 2 cores), the reference workload. Not comparable in absolute terms with "
               "the tables above.", ""]
        trows = []
        for e in ref:
            t = THESIS.get((e["replicas"], THESIS_THREADS.get(e["threads"]), e["burst"]))
            if t is None:
                continue
            trows.append([e["n"], e["replicas"], THESIS_THREADS[e["threads"]], e["burst"], num(t[0], 2),
                          num(t[1], 2), pct(t[0], t[1]), t[2], t[3], pct(t[2], t[3])])
        if trows:
            md += [md_table(["exp", "replicas", "threads", "N", "thesis msg/s", "Flink msg/s", "variation",
                             "thesis mean ms", "Flink mean ms", "variation"], trows), ""]
        else:
            md += ["(None of the experiments run here has a counterpart in the thesis.)", ""]

    md += ["## Charts", ""]
    for e in experiments:
        lat, cpu = charts.get(e["n"], (None, None))
        if lat:
            md += [f"Experiment {e['n']} ({exp_title(e)}), each system's round with its median warm "
                   "throughput:", "", f"![latency]({lat})", "", f"![cpu]({cpu})", ""]
    md += ["Raw latencies per burst (`id,latency_ms`) and CPU samples of every round are in `raw/`, process "
           "logs in `logs/`, every number above in `results.json`.", ""]
    (out / "README.md").write_text("\n".join(md))
