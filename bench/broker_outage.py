"""How fast the service comes back after its Kafka broker does.

    .venv/bin/python bench/broker_outage.py [--trials 3] [--down 10]

Starts a local broker and three replica processes, keeps pushing and pulling
from a client thread, then SIGKILLs the broker, leaves it down ``--down``
seconds and starts it again on the same data directory. For each outage it
prints, counted from the moment the restarted broker answers:

* the first accepted push and the first answered pull;
* the first fresh heartbeat of every replica (all three reporting again);

and the longest window with no successful operation. Results go to
bench/results/outage-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import BIN, Replicas, console, free_port, use_own_config_dir
from minigit.client import operations
from minigit.config import ServerFlags
from minigit.errors import MinigitError
from minigit_server.bus import Bus

REPLICAS = ("1", "2", "3")


@dataclass
class Broker:
    port: int
    controller_port: int
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        ports = ["--port", str(self.port), "--controller-port", str(self.controller_port)]
        command = [str(BIN / "minigit-server"), "kafka", "start", *ports, "--data-dir", str(self.data_dir)]
        subprocess.run(command, check=True, capture_output=True)

    def kill(self) -> None:
        for pid in self.pids():
            os.kill(pid, signal.SIGKILL)
        while self.pids():
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """The broker's JVMs: java processes whose command line names its data directory."""
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                command = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ours = command and command[0].endswith(b"java") and str(self.data_dir).encode() in b" ".join(command)
            if ours and "zombie" not in _state(int(proc.name)):
                found.append(int(proc.name))
        return found

    def stop(self) -> None:
        subprocess.run([str(BIN / "minigit-server"), "kafka", "stop", "--data-dir", str(self.data_dir)], check=False)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


@dataclass
class Traffic:
    """Pushes and pulls from one client, each recorded as (finished at, kind, ok)."""

    work: Path
    options: operations.ClientOptions
    done: list[tuple[float, str, bool]] = field(default_factory=list)
    timeline: list[tuple[float, float, str, bool, str]] = field(default_factory=list)  # wall clock, for --keep
    stop: threading.Event = field(default_factory=threading.Event)
    stale: bool = False

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            if self.stale:  # a failed push may have been applied: start from a fresh clone
                shutil.rmtree(self.work, ignore_errors=True)
                if not self.record("clone", lambda: operations.clone_repository("outage", self.work, self.options)):
                    continue
                self.stale = False
            (self.work / "f.txt").write_text(f"change {n}\n")
            self.stale = not self.record("push", self.push_once)
            if not self.stale:
                self.stale = not self.record("pull", lambda: operations.pull_workdir(self.work, self.options))

    def push_once(self) -> None:
        operations.push_workdir(self.work, self.options)

    def record(self, kind: str, operation) -> bool:
        started = time.time()
        try:
            operation()
            ok, error = True, ""
        except Exception as failure:  # noqa: BLE001 - every failure is a data point; the traffic goes on
            ok, error = False, getattr(failure, "message", repr(failure))
            time.sleep(0.1)
        self.done.append((time.monotonic(), kind, ok))
        self.timeline.append((started, time.time(), kind, ok, error))
        return ok

    def first_ok(self, kind: str, after: float) -> float | None:
        return next((at - after for at, k, ok in self.done if k == kind and ok and at > after), None)

    def longest_gap(self, start: float, end: float) -> float:
        oks = [start] + [at for at, _, ok in self.done if ok and start < at < end] + [end]
        return max(b - a for a, b in itertools.pairwise(oks))


def heartbeats_back(bus: Bus, after_wall_ms: int, after: float, limit_s: float) -> float | None:
    """Seconds after ``after`` at which every replica had sent a heartbeat stamped after ``after_wall_ms``."""
    deadline = after + limit_s
    while time.monotonic() < deadline:
        try:
            beats = {b.replica: b.sent_ms for b in bus.read_heartbeats(settle_s=0.2)}
        except MinigitError:
            beats = {}
        if all(beats.get(r, 0) > after_wall_ms for r in REPLICAS):
            return time.monotonic() - after
        time.sleep(0.25)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--down", type=float, default=10.0, help="seconds the broker stays down")
    parser.add_argument("--limit", type=float, default=120.0, help="give up waiting for recovery after this")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (replica logs) for a look")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="minigit-outage-"))
    use_own_config_dir(root)
    broker = Broker(free_port(), free_port(), root / "kafka")
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "down_s": args.down}
    trials: list[dict] = []
    events: list[tuple[float, str]] = []
    traffic = None
    try:
        broker.start()
        replicas = Replicas(broker.bootstrap, f"outage{int(time.time())}-", root / "server")
        replicas.start_all(REPLICAS)
        replicas.serving("outage")
        options = operations.ClientOptions("bench", ServerFlags(broker.bootstrap, replicas.namespace), timeout=10)
        work = root / "work"
        work.mkdir()
        (work / "f.txt").write_text("0\n")
        operations.init_repository(work, "outage", options)
        traffic = Traffic(work, options)
        thread = threading.Thread(target=traffic.run, daemon=True)
        thread.start()
        observer = Bus(replicas.settings, client_id="outage-bench")
        for trial in range(args.trials):
            time.sleep(5)
            console.print(f"trial {trial + 1}: SIGKILL the broker, {args.down:g} s down")
            killed = time.monotonic()
            events.append((time.time(), "broker killed"))
            broker.kill()
            time.sleep(args.down)
            events.append((time.time(), "broker starting"))
            broker.start()
            up, up_wall_ms = time.monotonic(), int(time.time() * 1000)
            events.append((time.time(), "broker answering"))
            beats = heartbeats_back(observer, up_wall_ms, up, args.limit)
            while time.monotonic() < up + args.limit and not (
                traffic.first_ok("push", up) is not None and traffic.first_ok("pull", up) is not None
            ):
                time.sleep(0.2)
            trial_result = {
                "broker_restart_s": up - killed - args.down,
                "first_push_s": traffic.first_ok("push", up),
                "first_pull_s": traffic.first_ok("pull", up),
                "all_heartbeats_s": beats,
                "longest_gap_s": traffic.longest_gap(killed, time.monotonic()),
            }
            console.print(trial_result)
            trials.append(trial_result)
        traffic.stop.set()
        thread.join(timeout=60)
        observer.close()
        replicas.stop()
    finally:
        broker.stop()
        if args.keep:
            timeline = (traffic.timeline if traffic else []) + events
            (root / "timeline.json").write_text(json.dumps(sorted(timeline), indent=0))
            console.print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    results["trials"] = trials
    for key in ("first_push_s", "first_pull_s", "all_heartbeats_s"):
        values = [t[key] for t in trials if t[key] is not None]
        results[f"median_{key}"] = statistics.median(values) if values else None
    print(json.dumps(results, indent=1))
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"outage-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
