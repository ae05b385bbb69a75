"""How each system is started, for benches/experiments/run. Standard
library only."""

import os
import shutil
import tempfile
import time
from pathlib import Path

from procs import Proc, log

REPO = Path(__file__).resolve().parents[2]
FLINK_DIR = REPO / "benches" / "flink"
KSTREAMS_DIR = REPO / "benches" / "kstreams"

SYSTEMS = ("fila", "flink", "kstreams")
LABEL = {"fila": "fila", "flink": "Flink", "kstreams": "Kafka Streams"}
COLOR = {"fila": "#1f77b4", "flink": "#d62728", "kstreams": "#2ca02c"}


def flink_spec(shape, slots_total):
    """Source, five stages, sink."""
    s = slots_total
    if shape == "uniform":
        return [s] * 7
    if shape == "stage3":
        h = max(1, s // 2)
        return [h, h, h, s, h, h, h]
    raise ValueError(shape)

def start_system(ctx, system, replicas, threads, in_topic, out_topic, group, tag, flink_cfg, procs):
    """Starts the system's processes, appending each to procs at once (so
    that its CPU is sampled from the start, and it is stopped on any
    failure), and returns once every one is ready."""
    if system == "fila":
        for i in range(replicas):
            argv = [ctx.args.fila, "run", "--source", "kafka", "--brokers", ctx.broker.address,
                    "--input-topic", in_topic, "--output-topic", out_topic, "--group", group,
                    "--workers", threads, "--report", "json"]
            if ctx.args.fila_static_replicas:
                argv += ["--replica", f"{i}/{replicas}"]
            if replicas > 1:
                # Each process pins its worker k to the k-th allowed CPU, so
                # replicas on one machine would all stack on the first CPUs.
                argv += ["--no-pin"]
            # At info level fila logs each partition assignment it gets.
            env = dict(os.environ, FILA_LOG="info")
            procs.append(Proc(f"fila-{i}", argv, ctx.logs / f"{tag}-fila-{i}.log", env=env))
        ctx.on_spawn(procs)
        ready = r"fila: reading" if ctx.args.fila_static_replicas else r"partitions assigned"
        for p in procs:
            if not p.wait_for(ready, 30, tag="err"):
                if not p.alive():
                    raise RuntimeError(f"fila replica {p.name} exited while starting; see {p.log.name}")
                log(f"  {p.name}: no '{ready}' line within 30 s; going on")
        if time.monotonic() - procs[0].started < 2:
            time.sleep(2 - (time.monotonic() - procs[0].started))
    elif system == "flink":
        tmp = Path(tempfile.mkdtemp(prefix="flink-", dir=ctx.work))
        spec = flink_spec(flink_cfg["shape"], replicas * threads)
        argv = ctx.java(tmp) + ["-cp", ctx.flink_cp(), "fila.bench.flink.FibJob",
                                "--brokers", ctx.broker.address, "--input-topic", in_topic,
                                "--output-topic", out_topic, "--group", group,
                                "--parallelism", ",".join(map(str, spec)),
                                "--taskmanagers", replicas, "--slots", threads,
                                "--buffer-timeout-ms", flink_cfg["buffer_timeout_ms"]]
        p = Proc("flink", argv, ctx.logs / f"{tag}-flink.log")
        p.tmpdir = tmp
        procs.append(p)
        ctx.on_spawn(procs)
        if not p.wait_for(r"^flink: RUNNING", 180, tag="out"):
            raise RuntimeError(f"Flink did not report RUNNING; see {p.log.name}")
    elif system == "kstreams":
        for i in range(replicas):
            tmp = Path(tempfile.mkdtemp(prefix="kstreams-", dir=ctx.work))
            argv = ctx.java(tmp) + ["-cp", ctx.kstreams_cp(), "fila.bench.kstreams.FibStreams",
                                    "--brokers", ctx.broker.address, "--input-topic", in_topic,
                                    "--output-topic", out_topic, "--application-id", group,
                                    "--threads", threads]
            p = Proc(f"kstreams-{i}", argv, ctx.logs / f"{tag}-kstreams-{i}.log")
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

def cleanup_procs(procs):
    for p in procs:  # all at once, so that no instance takes over another's work
        p.terminate()
    for p in procs:
        p.stop()
        tmp = getattr(p, "tmpdir", None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
