"""A Jepsen-style chaos run of minigit: clients push, pull and clone while a
nemesis kills and pauses replicas, the broker and clients; then a checker
(bench/chaos_check.py) proves from the replicas' stores that nothing
acknowledged was lost, duplicated or changed, and that the replicas agree.

    .venv/bin/python bench/chaos.py --ops 10000            # starts its own Kafka and 3 replicas
    .venv/bin/python bench/chaos.py --ops 300 --min-rounds 1 --seed 7
    .venv/bin/python bench/chaos.py --help

Every operation is recorded in a JSONL history as ``invoke`` then ``ok``
(acknowledged), ``fail`` (definitely not applied: rejected "fetch first", or
refused) or ``info`` (unknown: timed out, unreachable, or its client killed);
every fault as a ``nemesis`` entry with its start and end. Each push writes the
file ``pushes/<worker>.txt`` with a unique token and uses the token as its
message, so every version is traced to exactly one operation.

Faults (one at a time, each kind once per round, in a shuffled order):
replica-kill (SIGKILL, restarted after a while), replica-pause (SIGSTOP then
SIGCONT), broker-kill (SIGKILL of the Kafka JVM, restarted on the same data dir
and port), broker-pause, client-kill (SIGKILL of a `minigit` CLI process
mid-command). Broker faults need a broker this run started (no --bootstrap).
With --nodes 3 it starts a three-node cluster (`kafka start --nodes 3`: topics
with replication factor 3 and min.insync.replicas 2) and broker faults hit one
node at a time.

Users (issue 9): every client signs its requests with its own key, kept in the
run directory (``config/``, as MINIGIT_CONFIG_DIR); the users are registered
before the run, and the repositories, private, are created by ``chaos-init``,
who shares write access with every worker and read access with ``chaos-final``.
The checker also checks every version's proof of authorship (its author's
signed request, attested by the service's key).

Exit code 0: the checker found nothing; 1: it found a loss, duplicate, gap,
divergence or another violation (the history is kept; its path is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # chaos_check lives beside this file

import chaos_check

from minigit import identity
from minigit import protocol as p
from minigit.client import operations
from minigit.client import workspace as ws
from minigit.client.transport import Connection
from minigit.config import KafkaSettings, ServerFlags
from minigit.errors import (
    MinigitError,
    NotAuthenticated,
    PermissionDenied,
    PullConflict,
    PushRejected,
    RepositoryNotFound,
    ServerUnreachable,
)
from minigit_server.bus import Bus, ensure_topics
from minigit_server.devkafka.broker import KAFKA_VERSION
from minigit_server.replica import store_path
from minigit_server.server_key import load_server_key, server_key_path
from minigit_server.store import SqliteStore
from minigit_server.supervisor import replica_command

BIN = Path(sys.executable).parent
MINIGIT = str(BIN / "minigit")
MINIGIT_SERVER = str(BIN / "minigit-server")
KINDS = ("replica-kill", "replica-pause", "broker-kill", "broker-pause", "client-kill")
REPLICA_IDS = ("1", "2", "3")
PARTITIONS = 6
LOG_LIMIT = 1000  # the most entries one log request may ask for (protocol.LogRequest)
OWNER, READER = "chaos-init", "chaos-final"  # who creates the repositories, who reads them after the run


@dataclass
class Config:
    ops: int = 10_000
    workers: int = 6
    repos: int = 3
    seed: int = 1
    op_timeout: float = 15.0  # the client's --timeout: seconds without news of an answer
    cli_fraction: float = 0.03  # share of operations run as `minigit` CLI processes
    push_weight: float = 0.5
    pull_weight: float = 0.35
    clone_weight: float = 0.15
    kinds: tuple[str, ...] = KINDS
    min_rounds: int = 0  # run on until every fault kind was injected this many times
    max_seconds: float = 3600.0  # stop the workload after this long whatever the counts
    quiet: tuple[float, float] = (5.0, 15.0)  # seconds between two faults
    replica_down: tuple[float, float] = (2.0, 10.0)  # a killed replica stays down this long
    replica_pause: tuple[float, float] = (2.0, 12.0)  # around the 6 s session timeout
    broker_down: tuple[float, float] = (1.0, 5.0)
    broker_pause: tuple[float, float] = (2.0, 10.0)
    final_timeout: float = 300.0  # seconds to wait for the healed service to answer


class Clock:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self.started, 6)


class History:
    """The run's history, in memory for the checker and as JSONL on disk (each line
    flushed, so a run that dies still leaves what happened)."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path, self.clock = path, clock
        self.entries: list[dict] = []
        self._file = path.open("w", encoding="utf-8")
        self._lock = threading.Lock()

    def add(self, process: str, type_: str, f: str, value: dict) -> dict:
        with self._lock:
            entry = {
                "index": len(self.entries),
                "process": process,
                "type": type_,
                "f": f,
                "value": value,
                "time": self.clock.now(),
            }
            self.entries.append(entry)
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()
            return entry

    def close(self) -> None:
        self._file.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_block(count: int) -> int:
    """A first port such that it and the next ``count - 1`` are free, below the
    ephemeral range (outgoing connections take ephemeral ports at any moment)."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    for _ in range(200):
        first = random.randrange(20000, max(ephemeral_low, 21000) - count)
        if all(port_is_free(first + n) for n in range(count)):
            return first
    raise RuntimeError(f"found no {count} consecutive free ports")


# ---------------------------------------------------------------- the processes under test


@dataclass
class Broker:
    """A local Kafka this run may kill and restart: same data dir, same ports. With
    ``nodes`` > 1 a cluster (`kafka start --nodes N`) whose nodes fail one at a time."""

    data_dir: Path
    port: int  # of node 1; node n listens on port + n - 1
    controller_port: int  # of node 1, likewise
    nodes: int = 1

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.port + n}" for n in range(self.nodes))

    @property
    def replication_factor(self) -> int:
        return min(3, self.nodes)

    @property
    def min_insync_replicas(self) -> int | None:
        return 2 if self.nodes >= 3 else None

    def start(self, attempts: int = 3) -> None:
        """Start the nodes that are not running (all of them the first time)."""
        command = [MINIGIT_SERVER, "kafka", "start", "--port", str(self.port)]
        command += ["--controller-port", str(self.controller_port), "--data-dir", str(self.data_dir)]
        command += ["--timeout", "120"]
        if self.nodes > 1:
            command += ["--nodes", str(self.nodes), "--heap", "256m"]  # three JVMs on a two-core machine
        for attempt in range(attempts):
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                return
            if attempt == attempts - 1:
                raise RuntimeError(
                    f"kafka start exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}"
                )
            time.sleep(2)

    def stop(self) -> None:
        self.signal(signal.SIGCONT)  # a paused JVM cannot act on SIGTERM
        subprocess.run(
            [MINIGIT_SERVER, "kafka", "stop", "--data-dir", str(self.data_dir)], capture_output=True, timeout=120
        )

    def pid(self, node: int) -> int | None:
        root = self.data_dir if self.nodes == 1 else self.data_dir / f"node-{node}"
        try:
            pid = int((root / "kafka.pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def all_running(self) -> bool:
        return all(self.pid(node) is not None for node in range(1, self.nodes + 1))

    def signal(self, sig: int, node: int | None = None) -> list[int]:
        """Signal one node's JVM, or every node's; the pids signalled."""
        pids = []
        for n in [node] if node is not None else range(1, self.nodes + 1):
            pid = self.pid(n)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                    pids.append(pid)
        return pids


class Replicas:
    """One `minigit-server start --replica-id` process per replica. A replica that
    exits without being killed by the nemesis is restarted (as the supervisor of
    `minigit-server start` would) and the exit is recorded: it is a finding."""

    def __init__(
        self, bootstrap: str, namespace: str, data_dir: Path, history: History, topic_options: list[str]
    ) -> None:
        self.bootstrap, self.namespace, self.data_dir, self.history = bootstrap, namespace, data_dir, history
        self.topic_options = topic_options
        self.processes: dict[str, subprocess.Popen] = {}
        self.held_down: set[str] = set()  # killed by the nemesis: not restarted by the watch
        self.paused: set[str] = set()
        self.lock = threading.RLock()

    def start(self, replica_id: str) -> None:
        log = (self.data_dir / f"replica-{replica_id}.out").open("ab")
        options = ["--data-dir", str(self.data_dir), "--bootstrap", self.bootstrap, "--namespace", self.namespace]
        command = replica_command(replica_id, [*options, "--partitions", str(PARTITIONS), *self.topic_options])
        with self.lock:
            self.processes[replica_id] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            self.held_down.discard(replica_id)
        log.close()

    def kill(self, replica_id: str) -> None:
        with self.lock:
            self.held_down.add(replica_id)
            process = self.processes[replica_id]
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)

    def pause(self, replica_id: str) -> None:
        with self.lock:
            self.paused.add(replica_id)
            self.processes[replica_id].send_signal(signal.SIGSTOP)

    def resume(self, replica_id: str) -> None:
        with self.lock:
            self.processes[replica_id].send_signal(signal.SIGCONT)
            self.paused.discard(replica_id)

    def watch(self) -> None:
        """Restart replicas that exited on their own."""
        with self.lock:
            for replica_id, process in list(self.processes.items()):
                if replica_id in self.held_down or process.poll() is None:
                    continue
                value = {"target": replica_id, "exit_code": process.returncode}
                self.history.add(chaos_check.NEMESIS, "info", chaos_check.REPLICA_EXIT, {**value, "phase": "start"})
                self.start(replica_id)
                self.history.add(chaos_check.NEMESIS, "info", chaos_check.REPLICA_EXIT, {**value, "phase": "end"})

    def heal(self) -> None:
        with self.lock:
            for replica_id in list(self.paused):
                self.resume(replica_id)
            for replica_id in REPLICA_IDS:
                process = self.processes.get(replica_id)
                if process is None or process.poll() is not None:
                    self.start(replica_id)

    def stop_all(self) -> None:
        with self.lock:
            processes = list(self.processes.values())
            self.processes.clear()
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ---------------------------------------------------------------- the clients


def tree_of(workdir: Path) -> str:
    """The tree hash of the version a working directory is at (from its .minigit)."""
    return p.hash_bytes(p.encode_tree(ws.read_metadata(workdir).manifest))


class Outcome(Exception):
    """How an operation ended, when it did not end ok: ``fail`` or ``info``."""

    def __init__(self, type_: str, error: str, **extra: object) -> None:
        super().__init__(error)
        self.type, self.value = type_, {"error": error, **extra}


def classify(error: Exception) -> Outcome:
    """fail only when the service said the operation was not applied; otherwise unknown."""
    if isinstance(error, PushRejected):
        return Outcome("fail", "rejected", head=error.head)
    if isinstance(error, PullConflict):
        return Outcome("fail", "conflict")
    if isinstance(error, RepositoryNotFound):
        return Outcome("fail", "not-found")
    if isinstance(error, PermissionDenied | NotAuthenticated):  # refused before anything was applied
        return Outcome("fail", f"refused: {error.message}")
    if isinstance(error, ServerUnreachable):
        return Outcome("info", f"unreachable: {error.message}")
    if type(error) is MinigitError and error.message.startswith("the server refused"):
        return Outcome("fail", f"refused: {error.message}")
    return Outcome("info", f"{type(error).__name__}: {error}")


@dataclass
class CliRun:
    process: subprocess.Popen
    started: float
    label: str
    killed: bool = False


def repository_names(count: int, partitions: int) -> list[str]:
    """``count`` names in distinct log partitions (as far as there are partitions),
    so that the repositories are served by different replicas."""
    names: list[str] = []
    n = 0
    while len(names) < count:
        n += 1
        name = f"chaos{n}"
        taken = {p.log_partition(other, partitions) for other in names}
        if p.log_partition(name, partitions) not in taken or len(taken) >= partitions:
            names.append(name)
    return names


class Workload:
    """What the workers share: the history, the service's address, the op count,
    the CLI processes running now (for the nemesis to kill)."""

    def __init__(self, config: Config, history: History, bootstrap: str, namespace: str, root: Path) -> None:
        self.config, self.history, self.root = config, history, root
        self.bootstrap, self.namespace = bootstrap, namespace
        self.config_dir = root / "config"  # every user's key, and the service key they pin
        self.repos = repository_names(config.repos, PARTITIONS)
        self.stop = threading.Event()
        self.cli_wanted = threading.Event()  # the nemesis waits for a CLI process to kill
        self.cli_runs: dict[int, CliRun] = {}
        self.lock = threading.Lock()
        self.completed = 0

    def options(self, user: str, timeout: float | None = None) -> operations.ClientOptions:
        flags = ServerFlags(self.bootstrap, self.namespace)
        return operations.ClientOptions(user, flags, timeout or self.config.op_timeout, config_dir=self.config_dir)

    @property
    def users(self) -> list[str]:
        return [OWNER, READER, "chaos-nemesis"] + [f"chaos-w{n}" for n in range(1, self.config.workers + 1)]

    def env(self, user: str) -> dict[str, str]:
        return {
            **os.environ,
            "MINIGIT_CONFIG_DIR": str(self.config_dir),
            "MINIGIT_USER": user,
            "MINIGIT_BOOTSTRAP": self.bootstrap,
            "MINIGIT_NAMESPACE": self.namespace,
            "MINIGIT_TIMEOUT": str(self.config.op_timeout),
        }

    def record(self, process: str, f: str, invoke: dict, action: Callable[[], dict]) -> tuple[str, dict]:
        self.history.add(process, "invoke", f, invoke)
        try:
            type_, value = "ok", action()
        except Outcome as outcome:
            type_, value = outcome.type, outcome.value
        except Exception as error:  # noqa: BLE001 - anything else is an unknown outcome, recorded with its text
            outcome = classify(error)
            type_, value = outcome.type, outcome.value
        self.history.add(process, type_, f, {"repo": invoke["repo"], **value})
        with self.lock:
            self.completed += 1
        return type_, value

    def run_cli(self, args: list[str], cwd: Path, user: str, label: str) -> tuple[int, str, str, bool]:
        """Run `minigit ARGS`; the nemesis may SIGKILL it meanwhile."""
        process = subprocess.Popen(
            [MINIGIT, *args],
            cwd=cwd,
            env=self.env(user),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        run = CliRun(process, time.monotonic(), label)
        with self.lock:
            self.cli_runs[process.pid] = run
        try:
            out, err = process.communicate(timeout=self.config.op_timeout * 8)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        finally:
            with self.lock:
                self.cli_runs.pop(process.pid, None)
        return process.returncode, out, err, run.killed


def cli_outcome(code: int, err: str, killed: bool, rejected_means: str) -> Outcome:
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if killed:
        return Outcome("info", "client killed mid-command")
    if code == 3:
        return Outcome("fail", rejected_means, stderr=last)
    if code == 6:  # permission denied or not authenticated: refused, nothing applied
        return Outcome("fail", f"refused: {last}")
    if code == 1 and "the server refused" in err:
        return Outcome("fail", f"refused: {last}")
    if code == 1 and "does not exist on the server" in err:
        return Outcome("fail", "not-found")
    return Outcome("info", f"exit {code}: {last}")


class Worker(threading.Thread):
    """One client: pushes, pulls and clones in turn, each recorded. It keeps one
    working directory per repository and is the only writer of pushes/<name>.txt."""

    def __init__(self, index: int, workload: Workload) -> None:
        super().__init__(name=f"w{index}", daemon=True)
        self.workload = workload
        self.user = f"chaos-w{index}"
        self.rng = random.Random(workload.config.seed * 1000 + index)
        self.own_file = f"pushes/{self.name}.txt"
        self.workdirs: dict[str, Path] = {}
        self.written: dict[str, dict[str, bytes]] = {repo: {} for repo in workload.repos}  # sha -> content
        self.sequence = 0
        self.behind: set[str] = set()  # repositories whose last push was rejected

    def run(self) -> None:
        config = self.workload.config
        while not self.workload.stop.is_set():
            repo = self.rng.choice(self.workload.repos)
            via_cli = self.workload.cli_wanted.is_set() or self.rng.random() < config.cli_fraction
            total = config.push_weight + config.pull_weight + config.clone_weight
            pick = self.rng.random() * total
            if repo not in self.workdirs or pick >= config.push_weight + config.pull_weight:
                self.clone(repo, via_cli)
            elif repo in self.behind:  # like a user told "fetch first"
                self.pull(repo, via_cli)
            elif pick < config.push_weight:
                self.push(repo, via_cli)
            else:
                self.pull(repo, via_cli)

    def next_token(self) -> str:
        self.sequence += 1
        return f"{self.name}-{self.sequence}"

    def drop_workdir(self, repo: str) -> None:
        workdir = self.workdirs.pop(repo, None)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    def reset_own_file(self, repo: str) -> bool:
        """Undo a push that was not acknowledged: put back our file as the version
        the directory is at holds it, so that a pull never meets our own edit."""
        workdir = self.workdirs[repo]
        try:
            entry = ws.read_metadata(workdir).manifest.get(self.own_file)
        except MinigitError:
            self.drop_workdir(repo)
            return False
        target = workdir / self.own_file
        if entry is None:
            target.unlink(missing_ok=True)
            return True
        content = self.written[repo].get(entry.sha)
        if content is None:  # not ours: someone else wrote our file; the checker will say so
            self.drop_workdir(repo)
            return False
        target.write_bytes(content)
        return True

    def push(self, repo: str, via_cli: bool) -> None:
        if not self.reset_own_file(repo):
            return
        workdir, token = self.workdirs[repo], self.next_token()
        content = f"{repo} {token}\n"
        (workdir / "pushes").mkdir(exist_ok=True)
        (workdir / self.own_file).write_text(content, encoding="utf-8")
        self.written[repo][p.hash_bytes(content.encode())] = content.encode()
        base = ws.read_metadata(workdir).version
        invoke = {"repo": repo, "token": token, "base": base, "writes": {self.own_file: content}, "cli": via_cli}

        def in_process() -> dict:
            result = operations.push_workdir(workdir, self.workload.options(self.user), token)
            if result.status != operations.PushStatus.ACCEPTED:
                raise Outcome("fail", f"push {result.status}")
            return {"token": token, "version": result.new_version, "tree": tree_of(workdir)}

        def with_cli() -> dict:
            args = ["push", "--json", "-m", token]
            code, out, err, killed = self.workload.run_cli(args, workdir, self.user, f"push {token}")
            if code != 0 or killed:
                raise cli_outcome(code, err, killed, "rejected")
            result = json.loads(out)
            if result["status"] != "accepted":
                raise Outcome("fail", f"push {result['status']}")
            return {"token": token, "version": result["new_version"], "tree": tree_of(workdir)}

        kind, value = self.workload.record(self.name, "push", invoke, with_cli if via_cli else in_process)
        if kind == "fail" and value["error"] == "rejected":
            self.behind.add(repo)

    def pull(self, repo: str, via_cli: bool) -> None:
        if not self.reset_own_file(repo):
            return
        workdir = self.workdirs[repo]

        def in_process() -> dict:
            result = operations.pull_workdir(workdir, self.workload.options(self.user))
            return {"version": result.new_version, "tree": tree_of(workdir), "status": str(result.status)}

        def with_cli() -> dict:
            code, out, err, killed = self.workload.run_cli(["pull", "--json"], workdir, self.user, f"pull {repo}")
            if code != 0 or killed:
                raise cli_outcome(code, err, killed, "conflict")
            result = json.loads(out)
            return {"version": result["new_version"], "tree": tree_of(workdir), "status": result["status"]}

        kind, _ = self.workload.record(
            self.name, "pull", {"repo": repo, "cli": via_cli}, with_cli if via_cli else in_process
        )
        if kind == "ok":
            self.behind.discard(repo)
        if kind == "fail":  # a conflict (a pull killed half-way can leave one): start afresh
            self.drop_workdir(repo)

    def clone(self, repo: str, via_cli: bool) -> None:
        token = self.next_token()  # only names the directory
        target = self.workload.root / "clients" / self.name / f"{repo}-{token}"
        target.parent.mkdir(parents=True, exist_ok=True)

        def in_process() -> dict:
            result = operations.clone_repository(repo, target, self.workload.options(self.user))
            return {"version": result.new_version, "tree": tree_of(target)}

        def with_cli() -> dict:
            code, out, err, killed = self.workload.run_cli(
                ["clone", "--json", repo, str(target)], target.parent, self.user, f"clone {repo}"
            )
            if code != 0 or killed:
                raise cli_outcome(code, err, killed, "refused")
            return {"version": json.loads(out)["new_version"], "tree": tree_of(target)}

        kind, _ = self.workload.record(
            self.name, "clone", {"repo": repo, "cli": via_cli}, with_cli if via_cli else in_process
        )
        if kind == "ok":
            self.drop_workdir(repo)
            self.workdirs[repo] = target
            self.behind.discard(repo)
        else:
            shutil.rmtree(target, ignore_errors=True)


# ---------------------------------------------------------------- the nemesis


class Nemesis(threading.Thread):
    """Injects one fault at a time; every kind once per round, in a shuffled order."""

    def __init__(
        self, config: Config, history: History, replicas: Replicas, broker: Broker | None, workload: Workload
    ) -> None:
        super().__init__(name="nemesis", daemon=True)
        self.config, self.history, self.replicas, self.broker, self.workload = (
            config,
            history,
            replicas,
            broker,
            workload,
        )
        self.rng = random.Random(config.seed * 7919)
        self.kinds = [k for k in config.kinds if broker is not None or not k.startswith("broker")]
        self.rounds = 0
        self.stop = threading.Event()
        self.log = logging.getLogger("chaos.nemesis")

    def run(self) -> None:
        while not self.stop.is_set():
            schedule = list(self.kinds)
            self.rng.shuffle(schedule)
            for kind in schedule:
                if self.stop.wait(self.rng.uniform(*self.config.quiet)):
                    return
                self.inject(kind)
            self.rounds += 1

    def note(self, kind: str, phase: str, target: str, **detail: object) -> None:
        self.history.add(chaos_check.NEMESIS, "info", kind, {"phase": phase, "target": target, **detail})
        self.log.info("%s %s %s %s", kind, phase, target, detail or "")

    def inject(self, kind: str) -> None:
        if kind == "client-kill":
            self.kill_client()
            return
        if kind.startswith("replica"):
            target = self.serving_replica()
            self.note(kind, "start", target)
            if kind == "replica-kill":
                self.replicas.kill(target)
                self.stop.wait(self.rng.uniform(*self.config.replica_down))
                self.replicas.start(target)
            else:
                self.replicas.pause(target)
                self.stop.wait(self.rng.uniform(*self.config.replica_pause))
                self.replicas.resume(target)
            self.note(kind, "end", target)
            return
        assert self.broker is not None
        # Of a cluster, one node at a time (the others keep a quorum and the ISR).
        node = self.rng.randint(1, self.broker.nodes)
        target = "broker" if self.broker.nodes == 1 else f"broker-{node}"
        if kind == "broker-kill":
            pids = self.broker.signal(signal.SIGKILL, node)
            self.note(kind, "start", target, pids=pids)
            self.stop.wait(self.rng.uniform(*self.config.broker_down))
            started = time.monotonic()
            self.broker.start()
            self.note(kind, "end", target, restart_s=round(time.monotonic() - started, 3))
        else:
            pids = self.broker.signal(signal.SIGSTOP, node)
            self.note(kind, "start", target, pids=pids)
            self.stop.wait(self.rng.uniform(*self.config.broker_pause))
            self.broker.signal(signal.SIGCONT, node)
            self.note(kind, "end", target)

    def serving_replica(self) -> str:
        """The replica serving a random repository (so the fault matters), else any."""
        repo = self.rng.choice(self.workload.repos)
        options = self.workload.options("chaos-nemesis", timeout=3)
        settings = options.settings()
        with contextlib.suppress(MinigitError), Connection(settings, options.credentials(settings), 3) as connection:
            request = connection.new_request(p.PingRequest, repo=repo)
            replica = operations.ask(connection, request).reply.replica
            if replica in self.replicas.processes:
                return replica
        return self.rng.choice(REPLICA_IDS)

    def kill_client(self) -> None:
        """SIGKILL a `minigit` CLI process at a random moment of its life."""
        delay = self.rng.uniform(0.2, 1.0)  # about the CLI's start-up (0.3 s) and a request
        self.workload.cli_wanted.set()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not self.stop.is_set():
                with self.workload.lock:
                    runs = [r for r in self.workload.cli_runs.values() if not r.killed]
                    ripe = [r for r in runs if time.monotonic() - r.started >= delay]
                    if ripe:
                        victim = ripe[0]
                        victim.killed = True
                        victim.process.send_signal(signal.SIGKILL)
                        age = round(time.monotonic() - victim.started, 3)
                        self.note("client-kill", "start", victim.label, pid=victim.process.pid, age_s=age)
                        self.note("client-kill", "end", victim.label)
                        return
                time.sleep(0.02)
        finally:
            self.workload.cli_wanted.clear()


# ---------------------------------------------------------------- after the run


def dump_store(path: Path) -> dict:
    """A replica's whole history per repository: each version's row and the
    content of the files it changed against the version before."""
    store = SqliteStore(path)
    try:
        found = {}
        with store.snapshot():
            for repo in store.list_repos():
                rows, previous = [], {}
                for info in store.list_versions(repo.name):
                    try:
                        files = {name: e.sha for name, e in store.read_manifest(repo.name, info.version).items()}
                    except LookupError:
                        files = None
                    changed: dict | None = None
                    if files is not None:
                        changed = {}
                        for name in sorted(set(files) | set(previous)):
                            if files.get(name) == previous.get(name):
                                continue
                            blob = store.read_blob(repo.partition, files[name]) if name in files else None
                            changed[name] = (
                                None
                                if name not in files
                                else (blob.decode("utf-8", "replace") if blob is not None else "<content missing>")
                            )
                        previous = files
                    row = asdict(info)
                    row["changed"] = changed
                    rows.append(row)
                found[repo.name] = {"head": repo.head, "versions": rows}
        return found
    finally:
        store.close()


def wait_applied(settings: KafkaSettings, data_dir: Path, timeout: float) -> bool:
    """Wait until every replica's store has applied the whole log."""
    bus = Bus(settings, client_id="chaos-check")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ends = {k: v for k, v in bus.log_end_offsets().items() if v}
            done = True
            for replica_id in REPLICA_IDS:
                store = SqliteStore(store_path(data_dir, replica_id))
                try:
                    with store.snapshot():
                        applied = {k: v for k, v in store.applied_offsets().items() if v}
                finally:
                    store.close()
                done = done and applied == ends
            if done:
                return True
            time.sleep(1)
        return False
    finally:
        bus.close()


def run_verify(bootstrap: str, namespace: str) -> list[dict]:
    """`minigit-server verify` (and `verify --deep` where this version has it)."""
    base = [MINIGIT_SERVER, "verify", "--bootstrap", bootstrap, "--namespace", namespace]
    base += ["--expect", str(len(REPLICA_IDS))]
    commands = [[*base, "--wait", "60"]]
    help_text = subprocess.run([MINIGIT_SERVER, "verify", "--help"], capture_output=True, text=True).stdout
    if "--deep" in help_text:  # its own default wait: time to read every store
        commands.append([*base, "--deep"])
    results = []
    for command in commands:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"}
        )
        output = (done.stdout + done.stderr).strip()
        results.append({"command": command[1:], "exit_code": done.returncode, "output": output[-2000:]})
    return results


def final_reads(workload: Workload, deadline: float) -> None:
    """After healing: clone each repository (retrying until the service answers)."""
    for repo in workload.repos:
        attempt = 0
        while True:
            attempt += 1
            target = workload.root / "final" / f"{repo}-{attempt}"
            target.parent.mkdir(parents=True, exist_ok=True)

            def clone(target: Path = target, repo: str = repo) -> dict:
                result = operations.clone_repository(repo, target, workload.options(READER))
                return {"version": result.new_version, "tree": tree_of(target)}

            kind, _ = workload.record(chaos_check.FINAL, "clone", {"repo": repo, "cli": False}, clone)
            if kind == "ok" or time.monotonic() > deadline:
                break
            time.sleep(1)


def read_service_logs(workload: Workload) -> dict[str, list[dict]]:
    logs = {}
    for repo in workload.repos:
        for _ in range(10):
            try:
                _, entries, _ = operations.read_log(workload.root, workload.options(READER), LOG_LIMIT, repo)
            except MinigitError:
                time.sleep(2)
                continue
            logs[repo] = [
                {"version": e.version, "author": e.author, "message": e.message, "time_ms": e.time_ms} for e in entries
            ]
            break
    return logs


# ---------------------------------------------------------------- one run


@dataclass
class RunResult:
    summary: dict
    findings: chaos_check.Findings
    history_path: Path
    run_dir: Path
    verify: list[dict] = field(default_factory=list)


def run(
    config: Config, broker: Broker | None, bootstrap: str, run_dir: Path, progress: Callable[[str], None]
) -> RunResult:
    """One chaos run against ``bootstrap``; ``broker`` (if given) is the local broker
    behind it, which the nemesis may kill and pause."""
    clock = Clock()
    history = History(run_dir / "history.jsonl", clock)
    namespace = f"chaos{int(time.time())}{random.Random().randrange(1000):03}-"
    settings = KafkaSettings(bootstrap, namespace)
    server_dir = run_dir / "server"
    server_dir.mkdir(parents=True, exist_ok=True)
    replication = (broker.replication_factor, broker.min_insync_replicas) if broker else (1, None)
    ensure_topics(settings, PARTITIONS, *replication)
    topic_options = ["--replication-factor", str(replication[0])]
    topic_options += ["--min-insync-replicas", str(replication[1])] if replication[1] else []
    replicas = Replicas(bootstrap, namespace, server_dir, history, topic_options)
    workload = Workload(config, history, bootstrap, namespace, run_dir)
    nemesis = Nemesis(config, history, replicas, broker, workload)
    workers = [Worker(n, workload) for n in range(1, config.workers + 1)]
    try:
        for replica_id in REPLICA_IDS:
            replicas.start(replica_id)
        progress(f"namespace {namespace}; registering {len(workload.users)} users")
        register_users(workload)
        progress(f"creating {len(workload.repos)} repositories, shared with the workers")
        for repo in workload.repos:
            create_repository(workload, repo)
        for worker in workers:
            worker.start()
        nemesis.start()
        started = time.monotonic()
        last_report = started
        while True:
            time.sleep(0.5)
            replicas.watch()
            elapsed = time.monotonic() - started
            enough = workload.completed >= config.ops and nemesis.rounds >= config.min_rounds
            if enough or elapsed > config.max_seconds:
                break
            if time.monotonic() - last_report >= 30:
                last_report = time.monotonic()
                progress(f"{elapsed:.0f} s: {workload.completed} ops, {nemesis.rounds} fault rounds")
        progress(f"stopping the workload after {time.monotonic() - started:.0f} s and {workload.completed} ops")
        nemesis.stop.set()
        workload.stop.set()
        nemesis.join()
        for worker in workers:
            worker.join()
        # Heal: nothing paused, every replica and the broker running.
        if broker is not None:
            broker.signal(signal.SIGCONT)
            if not broker.all_running():
                broker.start()
        replicas.heal()
        progress("healed; final clones, then waiting for every replica to apply the whole log")
        final_reads(workload, time.monotonic() + config.final_timeout)
        applied = wait_applied(settings, server_dir, 180)
        verify = run_verify(bootstrap, namespace)
        service_logs = read_service_logs(workload)
    finally:
        nemesis.stop.set()
        workload.stop.set()
        replicas.stop_all()
        history.close()
    stores = {}
    for replica_id in REPLICA_IDS:
        path = store_path(server_dir, replica_id)
        if path.exists():
            stores[replica_id] = dump_store(path)
    findings = chaos_check.check_run(history.entries, stores, service_logs, verify, authorship(server_dir, namespace))
    if not applied:
        findings.divergence.append("the replicas had not all applied the whole log within 180 s of healing")
    summary = chaos_check.summarize(history.entries, stores, findings)
    summary["service_log_entries_compared"] = {repo: len(entries) for repo, entries in service_logs.items()}
    summary["run_seconds"] = clock.now()
    return RunResult(summary, findings, history.path, run_dir, verify)


def create_repository(workload: Workload, repo: str) -> None:
    """Version 1 of ``repo``, recorded like any write."""
    directory = workload.root / "init" / repo
    directory.mkdir(parents=True)
    content = f"{repo} created by the chaos run\n"
    (directory / "README.txt").write_text(content, encoding="utf-8")
    token = f"init-{repo}"
    invoke = {"repo": repo, "token": token, "writes": {"README.txt": content}, "cli": False}
    deadline = time.monotonic() + 120

    def create() -> dict:
        while True:  # the replicas may still be joining their group
            try:
                result = operations.init_repository(directory, repo, workload.options(OWNER), token)
                return {"token": token, "version": result.new_version, "tree": tree_of(directory)}
            except ServerUnreachable:
                if time.monotonic() > deadline:
                    raise

    kind, value = workload.record("init", "init", invoke, create)
    if kind != "ok":
        raise RuntimeError(f"could not create {repo}: {value}")
    # Private, as every repository is at first: the workers may push, the final reader may read.
    levels = {f"chaos-w{n}": p.Access.WRITE for n in range(1, workload.config.workers + 1)} | {READER: p.Access.READ}
    for user, level in levels.items():
        retry_unreachable(
            lambda user=user, level=level: operations.share_repository(
                workload.root, workload.options(OWNER), repo, user, level
            ),
            deadline,
        )


def retry_unreachable(action: Callable[[], object], deadline: float) -> None:
    """``action`` until it does not find the service unreachable (it is starting), or ``deadline``."""
    while True:
        try:
            action()
            return
        except ServerUnreachable:
            if time.monotonic() > deadline:
                raise


def register_users(workload: Workload) -> None:
    """Every user's key registered before the run, as a class's accounts are before a lab
    (a first command would register its user on the way)."""
    deadline = time.monotonic() + 120
    for user in workload.users:
        retry_unreachable(
            lambda user=user: operations.register_account(workload.root, workload.options(user)), deadline
        )


def authorship(server_dir: Path, namespace: str) -> Callable[[dict], str | None]:
    """Why a version row's proof of authorship does not hold (None: it does): its
    author's signed request, and the service key's attestation of the author's key."""
    server_key = identity.public_key_text(load_server_key(server_key_path(server_dir)).public_key())

    def check(row: dict) -> str | None:
        try:
            signed = p.SignedWrite.from_text(row["signed"]) if row.get("signed") else None
        except MinigitError as error:
            return f"its signed write does not parse: {error.message}"
        entry = p.LogEntry(
            version=row["version"], author=row["author"], time_ms=row["time_ms"], message=row["message"], signed=signed
        )
        return operations.verify_entry(entry, namespace, server_key)

    return check


# ---------------------------------------------------------------- reporting


def report(result: RunResult, out: Callable[[str], None] = print) -> None:
    s, findings = result.summary, result.findings
    by_type = s["by_type"]
    out(f"ops: {s['ops']} (ok {by_type.get('ok', 0)}, fail {by_type.get('fail', 0)}, unknown {by_type.get('info', 0)})")
    for f, counts in s["by_f"].items():
        if counts:
            out(f"  {f}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    faults = ", ".join(f"{kind} {n}" for kind, n in sorted(s["faults"].items())) or "none"
    out(f"faults injected: {sum(s['faults'].values())} ({faults})")
    out(f"unplanned replica exits (restarted): {s['unplanned_replica_exits']}")
    u = s["unknown_writes"]
    out(f"unknown writes: {u['total']} ({u['applied']} applied, {u['not_applied']} not applied)")
    out(f"lost: {s['lost']}   duplicated: {s['duplicated']}")
    for name in ("longest_unavailability", "longest_write_unavailability"):
        gap = s[name]
        if gap:
            out(
                f"{name.replace('_', ' ')}: {gap['seconds']:.1f} s (t={gap['start']:.1f}..{gap['end']:.1f} s, "
                f"faults during: {', '.join(gap['faults_during']) or 'none'})"
            )
    for f, lat in s["latency_ok"].items():
        out(f"latency of ok {f}: p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms (n={lat['n']})")
    for when in ("outside", "during"):
        lat = s[f"latency_ok_{when}_faults"].get("all")
        if lat:
            out(f"  {when} a fault: p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms (n={lat['n']})")
    out(f"versions per repository: {s['versions']}")
    out(
        "checked: every version of every repository read from each replica's store (row, tree, "
        "content of the files it changed); each write traced by its token; the service's log answer "
        f"(newest <= {LOG_LIMIT} versions) against the stores; reads against history; "
        + "; ".join(
            " ".join(r["command"][:1] + [a for a in r["command"] if a == "--deep"]) + f" exit {r['exit_code']}"
            for r in result.verify
        )
    )
    out(
        "not provable: whether an unknown write would still be applied later (after the run all replicas "
        "applied the whole log, and the client's requests had expired)"
    )
    for note in findings.notes:
        out(f"  {note}")
    for name in chaos_check.Findings.FAILURES:
        lines = getattr(findings, name)
        for line in lines[:20]:
            out(f"FAIL {name}: {line}")
        if len(lines) > 20:
            out(f"FAIL {name}: ... {len(lines) - 20} more")
    out("RESULT: " + ("no violation found" if findings.ok else "VIOLATIONS FOUND") + f"; history {result.history_path}")


def source_commit() -> str:
    """The commit this run's code came from, "+dirty" if the checkout had changes."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True)
        status = ["git", "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run(status, cwd=here, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + ("+dirty" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=Config.ops, help="operations to run (at least)")
    parser.add_argument("--workers", type=int, default=Config.workers)
    parser.add_argument("--repos", type=int, default=Config.repos)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--op-timeout", type=float, default=Config.op_timeout)
    parser.add_argument("--cli-fraction", type=float, default=Config.cli_fraction)
    parser.add_argument("--kinds", default=",".join(KINDS), help="fault kinds, comma-separated (empty: none)")
    parser.add_argument(
        "--min-rounds", type=int, default=Config.min_rounds, help="rounds of every fault kind, at least"
    )
    parser.add_argument("--max-seconds", type=float, default=Config.max_seconds)
    parser.add_argument("--quiet", type=float, nargs=2, default=Config.quiet, help="seconds between faults (min max)")
    parser.add_argument("--bootstrap", help="use this broker instead of starting one (no broker faults)")
    parser.add_argument("--nodes", type=int, default=1, help="Kafka nodes to start (3: a cluster; faults hit one node)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory even when the run passes")
    parser.add_argument("--save", action="store_true", help="write the figures to bench/results/chaos-<time>.json")
    args = parser.parse_args()
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    config = Config(
        ops=args.ops,
        workers=args.workers,
        repos=args.repos,
        seed=args.seed,
        op_timeout=args.op_timeout,
        cli_fraction=args.cli_fraction,
        kinds=kinds,
        min_rounds=args.min_rounds,
        max_seconds=args.max_seconds,
        quiet=tuple(args.quiet),
    )
    # The nemesis's faults as they happen; the clients' retries and kafka-python's
    # reconnect noise during broker faults would drown them.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("chaos").setLevel(logging.INFO)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    def progress(message: str) -> None:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    run_dir = Path(tempfile.mkdtemp(prefix="minigit-chaos-"))
    broker = None
    # SIGTERM ends the run through the finally blocks, which stop what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            if args.nodes == 1:
                broker = Broker(run_dir / "kafka", free_port(), free_port())
            else:  # node n uses port + n - 1 and controller port + n - 1
                first = free_port_block(2 * args.nodes)
                broker = Broker(run_dir / "kafka", first, first + args.nodes, args.nodes)
            progress(f"starting Kafka on {broker.bootstrap}")
            broker.start()
            bootstrap = broker.bootstrap
        result = run(config, broker, bootstrap, run_dir, progress)
    finally:
        if broker is not None:
            broker.stop()
    report(result)
    if args.save:
        out_dir = Path(__file__).parent / "results"
        out_dir.mkdir(exist_ok=True)
        document = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "kafka": KAFKA_VERSION,
                "kafka-python": importlib.metadata.version("kafka-python"),
            },
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "commit": source_commit(),
            "config": asdict(config),
            "summary": result.summary,
            "findings": {name: getattr(result.findings, name) for name in chaos_check.Findings.FAILURES},
            "verify": result.verify,
        }
        path = out_dir / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(document, indent=1))
        progress(f"figures written to {path}")
    if result.findings.ok and not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        progress(f"run directory kept: {run_dir}")
    sys.exit(0 if result.findings.ok else 1)


if __name__ == "__main__":
    main()
