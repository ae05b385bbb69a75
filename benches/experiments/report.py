"""What benches/experiments/run writes: charts (SVG) and README.md.
Standard library only."""

import datetime
import html
import math
import os
import re
import subprocess
from pathlib import Path

from systems import COLOR, LABEL

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
    left, right, top, bottom = 80, 250, 60, 60
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

def latency_svg(out, exp, all_series):
    series = []
    for s in all_series:
        for phase, dashed, width in (("cold", True, 1.4), ("warm", False, 2)):
            pts = s["latency"].get(phase) or []
            if pts:
                series.append((f"{LABEL[s['system']]} ({phase})", COLOR[s["system"]],
                               binned(pts, bin_width(exp["burst"])), dashed, width))
    note = (f"mean latency per {bin_width(exp['burst'])} consecutive ids; "
            "dashed: cold (first burst after start), solid: warm")
    name = f"exp{exp['n']}-latency.svg"
    svg_chart(out / name,
              f"Experiment {exp['n']}: latency per message ({exp['replicas']} replica(s), "
              f"{exp['threads']} thread(s), {exp['burst']} messages)",
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
        series.append((f"{LABEL[s['system']]}", color, sys_pts, False, 1.6))
        series.append((f"broker ({LABEL[s['system']]} run)", color, brk_pts, True, 1))
        marks += [(t0, color) for _, t0, _ in s["bursts"]]
    name = f"exp{exp['n']}-cpu.svg"
    svg_chart(out / name,
              f"Experiment {exp['n']}: CPU use ({exp['replicas']} replica(s), {exp['threads']} "
              f"thread(s), {exp['burst']} messages)",
              "cores busy (utime+stime per 250 ms) from each system's start: start-up, the cold burst, the warm burst",
              "seconds since the system was started", "CPU cores busy", series, marks)
    return name


# ------------------------------------------------------------------ report

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

def pct(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{(a - b) / b * 100:+.1f}%"

def num(v, digits=1):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}".replace(",", " ")

def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)

def write_report(out, meta, experiments, rows, tuning, flink_cfg, machine, versions, charts):
    systems = meta["systems"]
    started = datetime.datetime.fromisoformat(meta["started"])
    elapsed_s = meta["elapsed_s"]
    by = {(r["experiment"], r["system"], r["warm"]): r for r in rows}
    md = [f"# fila, Flink and Kafka Streams on the thesis's experiments ({started:%Y-%m-%d})", ""]
    md += [f"Made by `{meta['command']}` in {elapsed_s / 60:.1f} min.", ""]
    md += ["## Machine", "",
           f"- CPU: {machine['cpu_model']}, {machine['physical_cores'] or '?'} core(s), "
           f"{machine['logical_cpus']} logical CPU(s)",
           f"- memory: {machine['memory_gib']} GiB; kernel {machine['kernel']}; {machine['java']}",
           f"- date: {started:%Y-%m-%d %H:%M} UTC", ""]
    md += ["## Setup", "",
           f"- broker: one Apache Kafka {versions['kafka']} (KRaft) from `scripts/kafka`, on 127.0.0.1; "
           f"fresh topics per experiment and system, with as many partitions as replicas",
           f"- load: `fila load` ({versions['fila']}"
           + (f", commit {versions['fila_commit']}" if versions['fila_commit'] != "?" else "")
           + ") produces one burst "
           "of the reference message, stamping each `timestamp` when it produces it; latency is "
           "receive time minus that timestamp; throughput is messages over first produce to last receive",
           "- each system: started and waited for (its RUNNING line; fila: every replica logging its partitions assigned), "
           f"then a **cold** burst (the first after start) and a **warm** burst of the same size",
           "- fila: replicas are `fila run` processes in one consumer group (`--group`"
           + (", and `--replica I/N`" if meta.get("fila_static_replicas") else "") + "), threads are `--workers`; with 2 replicas each runs with `--no-pin`, since each process "
           "would pin its workers to the same first CPUs",
           f"- Flink {versions['flink']} (flink-connector-kafka {versions['flink_kafka']}): one local MiniCluster, "
           "replicas are task managers, threads are slots per task manager; at least once, checkpoints every 5 s, "
           "sink producer `linger.ms` = 5",
           f"- Kafka Streams {versions['kstreams']}: replicas are instances with one application id, threads are "
           "`num.stream.threads`; at least once, `commit.interval.ms` = 100, producer `linger.ms` = 5",
           f"- JVMs run with `-Xmx{meta['jvm_heap_mb']}m`; CPU is utime+stime of every process of the system "
           "during the burst (the broker apart); peak RSS is VmHWM summed over the system's processes", ""]
    if tuning:
        md += ["## Flink tuning", "",
               f"On experiment {tuning['experiment']} ({tuning['replicas']} replica(s), {tuning['threads']} "
               f"thread(s), burst {tuning['burst']}), each candidate started fresh, ranked by warm throughput. "
               "Parallelism is source-stage1-…-stage5-sink; `uniform` runs every operator on every slot "
               "(one chain per slot), `stage3` gives the heaviest stage (fib(30)) every slot and the others half.",
               ""]
        trows = []
        for c in tuning["candidates"]:
            cfg = c.get("config") or {}
            trows.append([c["candidate"]["shape"], cfg.get("parallelism", "—"),
                          c["candidate"]["buffer_timeout_ms"], num(c["cold_throughput_msgs_per_s"]),
                          num(c["warm_throughput_msgs_per_s"]), num(c["warm_mean_ms"], 0),
                          c["lost"] if c["lost"] is not None else "failed"])
        md += [md_table(["shape", "parallelism", "buffer timeout ms", "cold msg/s", "warm msg/s",
                         "warm mean ms", "lost"], trows), ""]
    if "flink" in systems:
        md += [f"Flink runs with shape **{flink_cfg['shape']}** and buffer timeout "
               f"**{flink_cfg['buffer_timeout_ms']} ms** in every experiment"
               + (" (chosen by the tuning above)." if tuning else " (given on the command line)."), ""]

    others = [s for s in systems if s != "fila"]
    for warm in (True, False):
        phase = "warm" if warm else "cold"
        md += [f"## Results, {phase} ({'after a warm-up burst of the same size' if warm else 'the first burst after start'})", ""]
        header = ["exp", "replicas", "threads", "N"]
        header += [f"{LABEL[s]} msg/s" for s in systems]
        if "fila" in systems:
            header += [f"fila vs {LABEL[s]} (msg/s)" for s in others]
        header += [f"{LABEL[s]} mean ms" for s in systems]
        if "fila" in systems:
            header += [f"fila vs {LABEL[s]} (mean)" for s in others]
        trows = []
        for e in experiments:
            r = {s: by.get((e["n"], s, warm)) for s in systems}
            tp = {s: r[s]["throughput_msgs_per_s"] if r[s] else None for s in systems}
            ml = {s: r[s]["latency_ms"]["mean"] if r[s] else None for s in systems}
            row = [e["n"], e["replicas"], e["threads"], e["burst"]]
            row += [num(tp[s]) for s in systems]
            if "fila" in systems:
                row += [pct(tp["fila"], tp[s]) for s in others]
            row += [num(ml[s], 0) for s in systems]
            if "fila" in systems:
                row += [pct(ml["fila"], ml[s]) for s in others]
            trows.append(row)
        md += [md_table(header, trows), ""]
        header = ["exp"]
        for s in systems:
            header += [f"{LABEL[s]} p99 ms", f"{LABEL[s]} peak RSS MB", f"{LABEL[s]} CPU s",
                       f"{LABEL[s]} lost/dup"]
        header += ["broker CPU s"]
        trows = []
        for e in experiments:
            row = [e["n"]]
            brk = []
            for s in systems:
                r = by.get((e["n"], s, warm))
                if r is None or r.get("error"):
                    row += ["failed" if r else "—"] * 4
                    continue
                row += [num(r["latency_ms"]["p99"], 0), num(r["peak_rss_mb"], 0), num(r["cpu_s"], 2),
                        f"{r['lost']}/{r['duplicates']}"]
                brk.append(f"{r['broker_cpu_s']:.1f}")
            row.append(" / ".join(brk) if brk else "—")
            trows.append(row)
        md += [md_table(header, trows), ""]
        failed = [r for r in rows if r["warm"] == warm and r.get("error")]
        for r in failed:
            md.append(f"- experiment {r['experiment']}, {LABEL[r['system']]}: failed: {r['error']}")
        if failed:
            md.append("")
    md += ["Variation is (fila − other) / other: positive is more throughput, or more latency. "
           "Broker CPU s lists the broker's CPU during each system's burst, in the order of the columns.", ""]

    md += ["## The thesis's figures, on another machine", "",
           "From the thesis's Table 3: 4 cores / 8 threads (i7-4870HQ), Flink 1.18, threads 4 and 8 "
           "(here 1 and 2 on 2 cores). Not comparable in absolute terms with the tables above.", ""]
    trows = []
    for e in experiments:
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
            md += [f"Experiment {e['n']} ({e['replicas']} replica(s), {e['threads']} thread(s), "
                   f"{e['burst']} messages):", "", f"![latency]({lat})", "", f"![cpu]({cpu})", ""]
    md += ["Raw latencies per burst (`id,latency_ms`) are in `raw/`, process logs in `logs/`, "
           "every number above in `results.json`.", ""]
    (out / "README.md").write_text("\n".join(md))
