"""The workloads, and how each system is started on one of them, for
benches/experiments/run. Standard library only.

A workload is what `fila load` produces and what every system's job does
with it. The Flink and Kafka Streams jobs, like fila's reference job,
compute fib of the five stage numbers each record carries, so any record
`fila load --stages ...` makes runs on them unchanged. A workload that needs
another job (another main class, another fila binary) says so in
`job_args`, which every system's start code reads.

A system is a class with `settings` (what varies per run and is recorded
with each result, e.g. Flink's parallelism), `commits` (how often it
commits under the sitting's guarantee: a commit interval, or Flink's
checkpoint interval, recorded beside every result) and `start` (its
processes, appended to `procs` as they are spawned, returned once every one
runs). Options that change how every system runs (the delivery guarantee,
`--guarantee`) are read from `ctx.args` in `start`.
"""

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from procs import Proc, log

REPO = Path(__file__).resolve().parents[2]
FLINK_DIR = REPO / "benches" / "flink"
KSTREAMS_DIR = REPO / "benches" / "kstreams"

GUARANTEES = ("at-least-once", "exactly-once")
# Flink's checkpoint interval per guarantee unless --flink-checkpoint-interval-ms
# says otherwise. At least once, the sink writes as it goes and a checkpoint
# only commits the source's offsets, so it barely touches latency. Exactly
# once, an output is visible only once the checkpoint after it completes, so
# the interval sets Flink's latency: see the README.
FLINK_CHECKPOINT_MS = {"at-least-once": 5000, "exactly-once": 100}
# Kafka Streams' commit.interval.ms in both modes: its own default under
# exactly_once_v2 (the at-least-once default is 30 s).
KSTREAMS_COMMIT_MS = 100

# ---------------------------------------------------------------- workloads


class Workload:
    def __init__(self, name, summary, load_args, bursts, quick_burst, flink_shapes, flink_timeouts_ms,
                 job_args=None):
        self.name = name
        self.summary = summary
        self.load_args = list(load_args)  # extra `fila load` flags
        self.bursts = list(bursts)  # burst sizes of the full matrix
        self.quick_burst = quick_burst  # burst size with --quick
        self.flink_shapes = tuple(flink_shapes)  # Flink tuning candidates
        self.flink_timeouts_ms = tuple(flink_timeouts_ms)
        self.job_args = job_args or {}  # system -> extra flags for its job

    def describe(self):
        return {"name": self.name, "summary": self.summary, "load_args": self.load_args}


WORKLOADS = {
    "reference": Workload(
        "reference",
        "the reference record (stages 10, 20, 30, 20, 10: about 2 ms of CPU per record, "
        "fib(30) dominating); `fila load` at its default stages",
        load_args=[], bursts=[1000, 10000], quick_burst=200,
        flink_shapes=("uniform", "stage3"), flink_timeouts_ms=(100, 0)),
    "light": Workload(
        "light",
        "the reference record with every stage at 1 (`fila load --stages 1,1,1,1,1`): "
        "the per-record cost of each system alone",
        load_args=["--stages", "1,1,1,1,1"], bursts=[100000], quick_burst=50000,
        # No stage outweighs another, so there is no stage to widen; the
        # buffer timeout decides how Flink batches at these rates.
        flink_shapes=("uniform",), flink_timeouts_ms=(100, 10, 0)),
}

# ------------------------------------------------------------------ systems

FLINK_SHAPES = ("uniform", "stage3")


def flink_spec(shape, slots_total):
    """Parallelism of source, five stages, sink for S = slots_total."""
    s = slots_total
    if shape == "uniform":
        return [s] * 7
    if shape == "stage3":
        h = max(1, s // 2)
        return [h, h, h, s, h, h, h]
    raise ValueError(shape)


def java(ctx, tmpdir):
    return ["java", f"-Xmx{ctx.args.jvm_heap_mb}m", f"-Djava.io.tmpdir={tmpdir}"]


def kstreams_cp():
    return f"{KSTREAMS_DIR}/target/job.jar:{KSTREAMS_DIR}/target/lib/*"


def flink_cp():
    return f"{FLINK_DIR}/target/job.jar:{FLINK_DIR}/target/lib/*"


class Slot:
    """One system's turn: its experiment, workload, fresh topics and settings."""

    def __init__(self, exp, workload, in_topic, out_topic, group, tag, settings):
        self.exp = exp
        self.replicas = exp["replicas"]
        self.threads = exp["threads"]
        self.workload = workload
        self.in_topic = in_topic
        self.out_topic = out_topic
        self.group = group
        self.tag = tag
        self.settings = settings


class System:
    name = label = color = None

    def settings(self, ctx, exp):
        """What this system runs with on `exp`, recorded with its results."""
        return {}

    def commits(self, ctx):
        """{"interval": "commit" or "checkpoint", "interval_ms": N}: how often
        this system commits its input offsets (under exactly once, how often
        its outputs become visible), recorded beside each of its results."""
        raise NotImplementedError

    def start(self, ctx, slot, procs):
        raise NotImplementedError


def span_ms(text):
    """fila's duration syntax (`100ms`, `2s`, `1m`, or bare seconds) in ms;
    None if it is not one."""
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m)?\s*", text)
    if not m:
        return None
    return int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60000, None: 1000}[m.group(2)]


def fila_commit_interval_ms(fila, fila_args):
    """The commit interval of the measured `fila run`: --commit-interval in
    --fila-args, else the default that `fila run --help` prints; None if
    neither says."""
    value = None
    for i, a in enumerate(fila_args):
        if a == "--commit-interval" and i + 1 < len(fila_args):
            value = fila_args[i + 1]
        elif a.startswith("--commit-interval="):
            value = a.partition("=")[2]
    if value is not None:
        return span_ms(value)
    try:
        r = subprocess.run([fila, "run", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"--commit-interval\b.*?\[default: ([^\]]+)\]", r.stdout, re.S)
    return span_ms(m.group(1)) if m else None


def fila_has_exactly_once(fila):
    """Whether this fila binary knows `fila run --exactly-once`."""
    try:
        r = subprocess.run([fila, "run", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return re.search(r"--exactly-once\b", r.stdout) is not None


class Fila(System):
    name, label, color = "fila", "fila", "#1f77b4"

    def settings(self, ctx, exp):
        return {"extra_args": list(ctx.fila_args)} if ctx.fila_args else {}

    def commits(self, ctx):
        # Each commit interval commits the input offsets; under
        # --exactly-once it is one Kafka transaction.
        return {"interval": "commit", "interval_ms": ctx.fila_commit_interval_ms}

    def start(self, ctx, slot, procs):
        for i in range(slot.replicas):
            argv = ctx.on_system_cpus([
                ctx.args.fila, "run", "--source", "kafka", "--brokers", ctx.broker.address,
                "--input-topic", slot.in_topic, "--output-topic", slot.out_topic, "--group", slot.group,
                "--workers", slot.threads, "--report", "json"])
            if ctx.args.fila_static_replicas:
                argv += ["--replica", f"{i}/{slot.replicas}"]
            if slot.replicas > 1:
                # Each process pins its worker k to the k-th allowed CPU, so
                # replicas on one machine would all stack on the first CPUs.
                argv += ["--no-pin"]
            if ctx.args.guarantee == "exactly-once":
                argv += ["--exactly-once"]
            argv += slot.workload.job_args.get(self.name, []) + list(ctx.fila_args)
            # At info level fila logs each partition assignment it gets.
            env = dict(os.environ, FILA_LOG="info")
            procs.append(Proc(f"fila-{i}", argv, ctx.logs / f"{slot.tag}-fila-{i}.log", env=env))
        ctx.on_spawn(procs)
        ready = r"fila: reading" if ctx.args.fila_static_replicas else r"partitions assigned"
        for p in procs:
            if not p.wait_for(ready, 30, tag="err"):
                if not p.alive():
                    raise RuntimeError(f"fila replica {p.name} exited while starting; see {p.log.name}")
                log(f"  {p.name}: no '{ready}' line within 30 s; going on")
        if time.monotonic() - procs[0].started < 2:
            time.sleep(2 - (time.monotonic() - procs[0].started))


class Flink(System):
    name, label, color = "flink", "Flink", "#d62728"

    def settings(self, ctx, exp, cfg=None):
        cfg = cfg or ctx.flink_cfg[exp["workload"]]
        spec = flink_spec(cfg["shape"], exp["replicas"] * exp["threads"])
        return {"parallelism": "-".join(map(str, spec)), "shape": cfg["shape"],
                "buffer_timeout_ms": cfg["buffer_timeout_ms"],
                "taskmanagers": exp["replicas"], "slots_per_taskmanager": exp["threads"]}

    def commits(self, ctx):
        return {"interval": "checkpoint", "interval_ms": ctx.flink_checkpoint_ms}

    def start(self, ctx, slot, procs):
        s = slot.settings
        tmp = Path(tempfile.mkdtemp(prefix="flink-", dir=ctx.work))
        argv = ctx.on_system_cpus(java(ctx, tmp) + [
            "-cp", flink_cp(), "fila.bench.flink.FibJob",
            "--brokers", ctx.broker.address, "--input-topic", slot.in_topic,
            "--output-topic", slot.out_topic, "--group", slot.group,
            "--parallelism", s["parallelism"].replace("-", ","),
            "--taskmanagers", slot.replicas, "--slots", slot.threads,
            "--buffer-timeout-ms", s["buffer_timeout_ms"],
            "--guarantee", ctx.args.guarantee, "--checkpoint-interval-ms", ctx.flink_checkpoint_ms])
        argv += slot.workload.job_args.get(self.name, [])
        p = Proc("flink", argv, ctx.logs / f"{slot.tag}-flink.log")
        p.tmpdir = tmp
        procs.append(p)
        ctx.on_spawn(procs)
        if not p.wait_for(r"^flink: RUNNING", 180, tag="out"):
            raise RuntimeError(f"Flink did not report RUNNING; see {p.log.name}")


class KStreams(System):
    name, label, color = "kstreams", "Kafka Streams", "#2ca02c"

    def commits(self, ctx):
        return {"interval": "commit", "interval_ms": KSTREAMS_COMMIT_MS}

    def start(self, ctx, slot, procs):
        for i in range(slot.replicas):
            tmp = Path(tempfile.mkdtemp(prefix="kstreams-", dir=ctx.work))
            argv = ctx.on_system_cpus(java(ctx, tmp) + [
                "-cp", kstreams_cp(), "fila.bench.kstreams.FibStreams",
                "--brokers", ctx.broker.address, "--input-topic", slot.in_topic,
                "--output-topic", slot.out_topic, "--application-id", slot.group,
                "--threads", slot.threads, "--guarantee", ctx.args.guarantee,
                "--commit-interval-ms", KSTREAMS_COMMIT_MS])
            argv += slot.workload.job_args.get(self.name, [])
            p = Proc(f"kstreams-{i}", argv, ctx.logs / f"{slot.tag}-kstreams-{i}.log")
            p.tmpdir = tmp
            procs.append(p)
        ctx.on_spawn(procs)
        for p in procs:
            if not p.wait_for(r"^kstreams: RUNNING", 120, tag="out"):
                raise RuntimeError(f"Kafka Streams {p.name} did not report RUNNING; see {p.log.name}")
        # With several instances, wait until every one is RUNNING after the
        # last rebalance, and nothing changed for a second.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [p.matching(r"^kstreams: (RUNNING|REBALANCING)") for p in procs]
            last = max(s[-1][0] for s in states)
            if all("RUNNING" in s[-1][1] for s in states) and time.monotonic() - last > 1.0:
                break
            time.sleep(0.1)


SYSTEMS = {s.name: s for s in (Fila(), Flink(), KStreams())}
LABEL = {name: s.label for name, s in SYSTEMS.items()}
COLOR = {name: s.color for name, s in SYSTEMS.items()}
