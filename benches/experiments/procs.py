"""Processes, CPU and memory sampling, CPU sets, and the Kafka broker, for
benches/experiments/run. Standard library only.

Every process started here is kept in RUNNING until it is stopped, by its
PID: SIGTERM, then SIGKILL after a grace period, also when the runner is
interrupted (stop_all). Every wait is bounded.
"""

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = REPO / "scripts" / "kafka"

SAMPLE_INTERVAL_S = 0.25
STOP_GRACE_S = 30
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- CPU sets

def parse_cpu_list(text):
    """'1', '0-1', '2,4-5' -> sorted list of CPU numbers (taskset's list form)."""
    cpus = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"'{part}' is not a CPU number or range")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"'{part}' is an empty range")
        cpus.update(range(lo, hi + 1))
    if not cpus:
        raise ValueError("no CPUs given")
    return sorted(cpus)


def cpu_list_text(cpus):
    return ",".join(str(c) for c in cpus)


def taskset(cpus):
    """The argv prefix that runs a command on `cpus`; none for None."""
    return ["taskset", "-c", cpu_list_text(cpus)] if cpus else []


# ---------------------------------------------------------------- processes

RUNNING = set()  # every Proc started and not yet stopped
RUNNING_LOCK = threading.Lock()


class Proc:
    """A child process whose stdout and stderr lines are logged and kept."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.lines = []  # (monotonic time, "out" | "err", text)
        self.cond = threading.Condition()
        self.log = open(log_path, "w", encoding="utf-8")
        self.log.write("$ " + " ".join(str(a) for a in argv) + "\n")
        self.log.flush()
        self.started = time.monotonic()
        self.tmpdir = None  # deleted once the process is stopped
        self.p = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # a Ctrl-C reaches the runner only
        )
        # taskset execs its command, so this is the command's PID too.
        self.pid = self.p.pid
        self.terminated = False
        with RUNNING_LOCK:
            RUNNING.add(self)
        self.readers = [
            threading.Thread(target=self._read, args=(self.p.stdout, "out"), daemon=True),
            threading.Thread(target=self._read, args=(self.p.stderr, "err"), daemon=True),
        ]
        for r in self.readers:
            r.start()

    def _read(self, stream, tag):
        for raw in iter(stream.readline, b""):
            text = raw.decode("utf-8", "replace").rstrip("\n")
            with self.cond:
                self.lines.append((time.monotonic(), tag, text))
                self.log.write(f"[{tag}] {text}\n")
                self.log.flush()
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def alive(self):
        return self.p.poll() is None

    def wait_for(self, pattern, timeout, tag=None):
        """Waits for a line matching pattern; False on timeout or exit."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for _, t, text in self.lines[seen:]:
                    if (tag is None or t == tag) and rx.search(text):
                        return True
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive():
                    return False
                self.cond.wait(min(left, 0.2))

    def matching(self, pattern):
        rx = re.compile(pattern)
        with self.cond:
            return [(t, text) for t, _, text in self.lines if rx.search(text)]

    def terminate(self):
        """Sends SIGTERM once."""
        if not self.terminated and self.alive():
            self.terminated = True
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, grace=STOP_GRACE_S):
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
        if self.alive():
            self.terminate()
            try:
                self.p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.pid}) did not stop within {grace} s; killing it")
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(timeout=30)
        for r in self.readers:
            r.join(timeout=5)
        with RUNNING_LOCK:
            RUNNING.discard(self)
        with self.cond:
            if not self.log.closed:
                self.log.write(f"# exit code {self.p.returncode}\n")
                self.log.close()
        return self.p.returncode


def stop_all():
    with RUNNING_LOCK:
        procs = list(RUNNING)
    for p in procs:
        p.terminate()
    for p in procs:
        p.stop(grace=10)


def stop_procs(procs):
    """Stops a system's processes all at once (so that no instance takes
    over another's work) and deletes their temporary folders."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.stop()
        if p.tmpdir is not None:
            shutil.rmtree(p.tmpdir, ignore_errors=True)


def children_cpu_s():
    """CPU seconds of every child this process has waited for."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_checked(argv, what, timeout, cwd=None, env=None, quiet=False):
    """Runs a command to completion; raises with its output on failure."""
    try:
        r = subprocess.run(
            [str(a) for a in argv], cwd=cwd, env=env, timeout=timeout,
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} did not finish within {timeout} s")
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    if not quiet and r.stderr.strip():
        for line in r.stderr.strip().splitlines()[-5:]:
            log(f"  {line}")
    return r


# ------------------------------------------------------------ measurements

def _stat_fields(path):
    try:
        with open(path, "rb") as f:
            data = f.read().decode()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


def cpu_ticks(pid):
    fields = _stat_fields(f"/proc/{pid}/stat")
    if fields is None:
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime


def jit_ticks(pid):
    """CPU ticks of a JVM's JIT compiler threads (named C1/C2 CompilerThre...).
    The JVM may end an idle compiler thread, and its ticks with it, so a
    difference of two readings can undercount; it is never negative here."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if "CompilerThre" not in f.read():
                    continue
        except OSError:
            continue
        fields = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total


def busy_ticks(cpus=None):
    """Ticks the CPUs (all, or those listed) spent busy, from /proc/stat:
    everything but idle and iowait."""
    total = 0
    want = None if cpus is None else {f"cpu{c}" for c in cpus}
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *vals = line.split()
                if not name.startswith("cpu") or name == "cpu":
                    continue
                if want is not None and name not in want:
                    continue
                v = [int(x) for x in vals[:8]]
                total += sum(v) - v[3] - v[4]  # idle, iowait
    except (OSError, ValueError):
        return None
    return total


def pid_alive(pid):
    """True while the process exists and is not a zombie."""
    fields = _stat_fields(f"/proc/{pid}/stat")
    return fields is not None and fields[0] not in ("Z", "X")


def vm_hwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler:
    """CPU seconds of the system's processes and of the broker, every 250 ms."""

    def __init__(self, pids, broker_pid, t0):
        self.pids = list(pids)
        self.broker_pid = broker_pid
        self.last = {}  # pid -> ticks, so an exited process keeps its total
        self.samples = []  # (seconds since t0, system cpu s, broker cpu s)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.t0 = t0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def read(self):
        with self.lock:
            for pid in self.pids + [self.broker_pid]:
                if pid is None:
                    continue
                t = cpu_ticks(pid)
                if t is not None:
                    self.last[pid] = t
            system = sum(self.last.get(p, 0) for p in self.pids) / CLK_TCK
            broker = self.last.get(self.broker_pid, 0) / CLK_TCK
            now = time.monotonic() - self.t0
            self.samples.append((round(now, 3), system, broker))
            return system, broker

    def _loop(self):
        while not self.stopping.wait(SAMPLE_INTERVAL_S):
            self.read()

    def start(self):
        self.read()
        self.thread.start()

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=5)
        self.read()

    def peak_rss_mb(self):
        return round(sum(vm_hwm_kb(p) for p in self.pids) / 1024, 1)


# -------------------------------------------------------------- the broker

class Broker:
    """One local broker from scripts/kafka, on `cpus` if given (taskset:
    the launcher and every thread of the broker's JVM inherit the set)."""

    def __init__(self, port, version, state_dir, cpus=None):
        self.port = port
        self.version = version
        self.cpus = cpus
        self.env = dict(os.environ, FILA_KAFKA_STATE=str(state_dir))
        self.pid_file = Path(state_dir) / str(port) / "pid"
        self.pid = None
        self.address = None
        self.reported_version = version
        self.bursts = 0  # bursts served so far (warm-up, tuning, rounds)

    def up(self):
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", self.port)) == 0:
                raise RuntimeError(f"something already listens on 127.0.0.1:{self.port}; pass another --port")
        argv = taskset(self.cpus) + [KAFKA_SCRIPT, "up", "--port", self.port]
        if self.version:
            argv += ["--version", self.version]
        r = run_checked(argv, "scripts/kafka up", timeout=900, env=self.env, quiet=True)
        self.address = r.stdout.strip().splitlines()[-1]
        self.pid = int(self.pid_file.read_text().strip())
        m = re.search(r"Kafka (\S+) is up", r.stderr)
        if m:
            self.reported_version = m.group(1)
        where = ""
        if self.cpus:
            got = sorted(os.sched_getaffinity(self.pid))
            if got != list(self.cpus):
                raise RuntimeError(f"the broker runs on CPUs {got}, not {list(self.cpus)}")
            where = f", on CPUs {cpu_list_text(self.cpus)}"
        log(f"broker: Kafka {self.reported_version} on {self.address} (pid {self.pid}{where})")

    def cpu_s(self):
        t = cpu_ticks(self.pid)
        return None if t is None else t / CLK_TCK

    def jit_s(self):
        t = jit_ticks(self.pid)
        return None if t is None else t / CLK_TCK

    def down(self):
        if self.pid is None:
            return
        try:
            run_checked([KAFKA_SCRIPT, "down", "--port", self.port], "scripts/kafka down",
                        timeout=90, env=self.env, quiet=True)
        except RuntimeError as e:
            log(f"broker: {e}")
        if pid_alive(self.pid):
            log(f"broker: pid {self.pid} still alive after down; killing it")
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pid = None
