"""Benchmarks of minigit against git on the same machine, in the same run.

    .venv/bin/python bench/bench.py [--bootstrap HOST:PORT] [--rounds 30] [--skip-clone]
                                    [--only startup|latency|failover]

Starts a local Kafka (unless --bootstrap is given) and three replica processes,
then measures, printing figures (not pass/fail):

* start-up: `minigit --version`/`--help` and `minigit-server --version`/`--help`
  (median of --startup-rounds runs) next to `git --version` and `python -c pass`;
  needs no broker (`--only startup` runs nothing else);
* push and pull latency of a one-file change (median, p95): the `minigit` CLI
  as a user runs it, the same operation in-process (no interpreter start-up),
  and `git push` / `git pull` against a local bare repository;
* clone of 1,000 files / 100 MiB: `minigit clone` next to `git clone --no-local`;
* time from SIGKILL of the replica serving a repository to the next accepted push,
  with the client's hedging (a request unanswered for a second goes to another
  replica) and without it (the consumer group's rebalance alone).

Results are also written to bench/results/<timestamp>.json. The user's key, and
the service key it pins, are kept in the run's own directory (MINIGIT_CONFIG_DIR),
never in ~/.config/minigit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from minigit import protocol as p
from minigit.client import exchange, operations
from minigit.config import KafkaSettings, ServerFlags
from minigit.errors import PushRejected, ServerUnreachable
from minigit_server.bus import Bus, ensure_topics
from minigit_server.supervisor import replica_command

BIN = Path(sys.executable).parent
console = Console(stderr=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_kafka(kafka_dir: Path) -> str:
    """A development broker on free ports in ``kafka_dir`` (every benchmark's own); its bootstrap."""
    port = free_port()
    command = [str(BIN / "minigit-server"), "kafka", "start", "--port", str(port)]
    command += ["--controller-port", str(free_port()), "--data-dir", str(kafka_dir)]
    subprocess.run(command, check=True)
    return f"127.0.0.1:{port}"


def timed(command: list[str], cwd: Path, env: dict | None = None, cpu: list[float] | None = None) -> float:
    """Wall seconds of ``command``; its CPU seconds (user + system) appended to ``cpu``:
    on a machine other work loads, CPU time moves far less than wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall


def installed_environment(root: Path) -> dict[str, str]:
    """The environment of the commands timed: Python's compiled modules kept (under
    ``root``) as an installed package has them. Without them (PYTHONDONTWRITEBYTECODE,
    as on the development machine) every command compiled minigit's modules from
    source first: 40-120 ms of each one."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(root / "pycache")}


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median_ms": 1000 * statistics.median(ordered), "p95_ms": 1000 * p95, "n": len(ordered)}


class Replicas:
    def __init__(self, bootstrap: str, namespace: str, data_dir: Path) -> None:
        self.bootstrap, self.namespace, self.data_dir = bootstrap, namespace, data_dir
        self.settings = KafkaSettings(bootstrap, namespace)
        self.processes: dict[str, subprocess.Popen] = {}
        ensure_topics(self.settings, 6, 1)

    def start(self, replica_id: str) -> None:
        options = ["--data-dir", str(self.data_dir), "--bootstrap", self.bootstrap, "--namespace", self.namespace]
        self.processes[replica_id] = subprocess.Popen(
            replica_command(replica_id, options),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_settled(self, since_ms: int, timeout: float = 90.0) -> None:
        """Wait until every running replica has reported, after ``since_ms``, that it
        serves request partitions: the consumer group has settled."""
        bus = Bus(self.settings, client_id="bench")
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    beats = {beat.replica: beat for beat in bus.read_heartbeats(settle_s=0.2)}
                except ServerUnreachable:  # the topics just created are not in the metadata yet
                    beats = {}
                serving = [beats.get(r) for r in self.processes]
                if all(b is not None and b.sent_ms > since_ms and b.serving and not b.stopping for b in serving):
                    partitions = sorted(n for b in serving for n in b.serving)
                    if partitions == sorted(set(partitions)):  # no partition claimed twice (mid-rebalance)
                        return
                time.sleep(0.5)
            raise RuntimeError(f"the replicas did not all serve within {timeout:g}s")
        finally:
            bus.close()

    def start_all(self, replica_ids: Sequence[str] = ("1", "2", "3")) -> None:
        """Start these replicas and wait until they all serve (their group settled)."""
        started_ms = int(time.time() * 1000)
        for replica_id in replica_ids:
            self.start(replica_id)
        self.wait_settled(started_ms)

    def register_user(self) -> None:
        """Register the bench user's key before anything is timed: a user's first
        request is answered "unknown user" and sent again, uploads and all, once the
        key is registered (a ping does not register)."""
        options = operations.ClientOptions("bench", ServerFlags(self.bootstrap, self.namespace), 60)
        with options.connect(self.settings) as connection:
            operations.register_user(connection)

    def serving(self, repo: str) -> str:
        """The replica that answers a request about ``repo`` (registering the user on first use)."""
        options = operations.ClientOptions("bench", ServerFlags(self.bootstrap, self.namespace), 60)
        with options.connect(self.settings) as connection:
            return operations.ask(connection, connection.new_request(p.PingRequest, repo=repo)).reply.replica

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(timeout=30)


STARTUP_COMMANDS = {
    "minigit_version": [str(BIN / "minigit"), "--version"],
    "minigit_help": [str(BIN / "minigit"), "--help"],
    "server_version": [str(BIN / "minigit-server"), "--version"],
    "server_help": [str(BIN / "minigit-server"), "--help"],
    "git_version": ["git", "--version"],
    "python_pass": [sys.executable, "-c", "pass"],
}


def bench_startup(root: Path, rounds: int) -> dict:
    """Wall time of commands that only start and print (interpreter, imports,
    building the commands), each next to references of the same run. The commands
    take turns, so that a burst of load from elsewhere hits them all alike."""
    samples: dict[str, list[float]] = {key: [] for key in STARTUP_COMMANDS}
    cpu: dict[str, list[float]] = {key: [] for key in STARTUP_COMMANDS}
    exit_codes: dict[str, int] = {}
    env = installed_environment(root)
    for command in STARTUP_COMMANDS.values():  # (not timed: compiles the modules once)
        subprocess.run(command, cwd=root, env=env, capture_output=True)
    for _ in range(rounds):
        for key, command in STARTUP_COMMANDS.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run(command, cwd=root, env=env, capture_output=True)
            samples[key].append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[key].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            exit_codes[key] = done.returncode  # (an older version without the option exits 2)
    return {
        key: {**summary(values), "cpu_median_ms": 1000 * statistics.median(cpu[key]), "exit_code": exit_codes[key]}
        for key, values in samples.items()
    }


def bench_latency(replicas: Replicas, root: Path, rounds: int) -> dict:
    options = operations.ClientOptions("bench", ServerFlags(replicas.bootstrap, replicas.namespace), timeout=60)
    env = {**installed_environment(root), "MINIGIT_USER": "bench"}
    writer, reader = root / "writer", root / "reader"
    writer.mkdir()
    for n in range(100):
        (writer / f"file{n:03}.txt").write_text(f"file {n}\n" * 50)
    operations.init_repository(writer, "latency", options)
    operations.clone_repository("latency", reader, options)

    git_bare, git_writer, git_reader = root / "git-bare", root / "git-writer", root / "git-reader"
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(git_bare)], check=True)
    shutil.copytree(writer, git_writer, ignore=shutil.ignore_patterns(".minigit*"))
    for command in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["commit", "-qm", "v1"],
        ["push", "-q", str(git_bare), "main"],
    ):
        subprocess.run([*git, *command], cwd=git_writer, check=True)
    subprocess.run(["git", "clone", "-q", str(git_bare), str(git_reader)], check=True, capture_output=True)

    samples: dict[str, list[float]] = {
        k: [] for k in ("cli_push", "cli_pull", "api_push", "api_pull", "git_push", "git_pull")
    }
    cpu: dict[str, list[float]] = {"cli_push": [], "cli_pull": []}
    subprocess.run([str(BIN / "minigit"), "pull", "-q"], cwd=reader, env=env, check=True)  # (compiles the modules)
    for n in range(rounds):
        (writer / "file000.txt").write_text(f"round {n} cli\n")
        push = [str(BIN / "minigit"), "push", "-q", "-m", f"cli {n}"]
        samples["cli_push"].append(timed(push, writer, env, cpu["cli_push"]))
        samples["cli_pull"].append(timed([str(BIN / "minigit"), "pull", "-q"], reader, env, cpu["cli_pull"]))
        (writer / "file000.txt").write_text(f"round {n} api\n")
        started = time.perf_counter()
        operations.push_workdir(writer, options, f"api {n}")
        samples["api_push"].append(time.perf_counter() - started)
        started = time.perf_counter()
        operations.pull_workdir(reader, options)
        samples["api_pull"].append(time.perf_counter() - started)
        (git_writer / "file000.txt").write_text(f"round {n}\n")
        subprocess.run([*git, "commit", "-qam", f"r{n}"], cwd=git_writer, check=True)
        samples["git_push"].append(timed([*git, "push", "-q", str(git_bare), "main"], git_writer))
        samples["git_pull"].append(timed([*git, "pull", "-q", "--ff-only"], git_reader))
    results = {name: summary(values) for name, values in samples.items()}
    for name, values in cpu.items():
        results[name]["cpu_median_ms"] = 1000 * statistics.median(values)
    return results


def bench_clone(replicas: Replicas, root: Path, files: int, total_mib: int) -> dict:
    options = operations.ClientOptions("bench", ServerFlags(replicas.bootstrap, replicas.namespace), timeout=120)
    env = {
        **os.environ,
        "MINIGIT_USER": "bench",
        "MINIGIT_BOOTSTRAP": replicas.bootstrap,
        "MINIGIT_NAMESPACE": replicas.namespace,
    }
    source = root / "big-source"
    source.mkdir()
    size = total_mib * 1024 * 1024 // files
    for n in range(files):
        (source / f"dir{n % 10}" / f"blob{n:04}.bin").parent.mkdir(exist_ok=True)
        (source / f"dir{n % 10}" / f"blob{n:04}.bin").write_bytes(os.urandom(size))
    started = time.perf_counter()
    operations.init_repository(source, "big", options)
    init_s = time.perf_counter() - started
    minigit_s = timed([str(BIN / "minigit"), "clone", "-q", "big", str(root / "big-clone")], root, env)

    bare = root / "big-bare.git"
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    work = root / "big-git-work"
    shutil.copytree(source, work, ignore=shutil.ignore_patterns(".minigit*"))
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "v1"]):
        subprocess.run([*git, *command], cwd=work, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    git_s = timed(["git", "clone", "-q", "--no-local", str(bare), str(root / "big-git-clone")], root)
    return {
        "files": files,
        "mib": total_mib,
        "minigit_init_s": init_s,
        "minigit_clone_s": minigit_s,
        "git_clone_no_local_s": git_s,
    }


def bench_failover(replicas: Replicas, root: Path, trials: int, hedge: bool) -> dict:
    """Seconds from SIGKILL of the replica serving a repository to the next
    accepted push; without ``hedge`` the client never sends a request to
    another partition, so only the consumer group's rebalance brings an answer."""
    options = operations.ClientOptions("bench", ServerFlags(replicas.bootstrap, replicas.namespace), timeout=60)
    name = f"failover-{'hedged' if hedge else 'rebalance'}"
    work = root / name
    work.mkdir()
    (work / "f.txt").write_text("0\n")
    operations.init_repository(work, name, options)
    hedge_after = exchange.HEDGE_AFTER_S
    gaps = []
    try:
        if not hedge:
            exchange.HEDGE_AFTER_S = 3600.0  # never within the command's timeout
        for trial in range(trials):
            owner = replicas.serving(name)
            (work / "f.txt").write_text(f"before {trial}\n")
            operations.push_workdir(work, options)
            replicas.processes.pop(owner).send_signal(signal.SIGKILL)
            killed = time.perf_counter()
            (work / "f.txt").write_text(f"after {trial}\n")
            while True:
                try:
                    operations.push_workdir(work, options)
                    break
                except PushRejected:
                    operations.pull_workdir(work, options)
            gaps.append(time.perf_counter() - killed)
            restarted_ms = int(time.time() * 1000)
            replicas.start(owner)
            replicas.wait_settled(restarted_ms)  # every replica serving again before the next trial
    finally:
        exchange.HEDGE_AFTER_S = hedge_after
    return {"trials": trials, "seconds": gaps, "median_s": statistics.median(gaps), "max_s": max(gaps)}


def use_own_config_dir(root: Path) -> None:
    """Keys and pinned service keys under ``root`` for this run, in process and in the
    commands it runs (they inherit the environment)."""
    os.environ["MINIGIT_CONFIG_DIR"] = str(root / "config")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--failover-trials", type=int, default=3)
    parser.add_argument("--skip-clone", action="store_true")
    parser.add_argument("--startup-rounds", type=int, default=30)
    parser.add_argument("--only", choices=["startup", "latency", "failover"], help="run only this benchmark")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="minigit-bench-"))
    use_own_config_dir(root)
    kafka_dir = root / "kafka"
    bootstrap = args.bootstrap
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    try:
        if args.only in (None, "startup"):
            console.print("[bold]start-up[/] (--version, --help)")
            results["startup"] = bench_startup(root, args.startup_rounds)
        if args.only == "startup":
            return finish(results)
        if bootstrap is None:
            bootstrap = start_kafka(kafka_dir)
        replicas = Replicas(bootstrap, f"bench{int(time.time())}-", root / "server")
        replicas.start_all()
        replicas.serving("warmup")
        if args.only in (None, "latency"):
            console.print("[bold]latency[/] (one-file change, 100-file repository)")
            results["latency"] = bench_latency(replicas, root, args.rounds)
        if not args.skip_clone and args.only is None:
            console.print(f"[bold]clone[/] ({args.files} files, {args.mib} MiB)")
            results["clone"] = bench_clone(replicas, root, args.files, args.mib)
        if args.only in (None, "failover"):
            console.print("[bold]failover[/] (SIGKILL of the serving replica -> next accepted push)")
            results["failover"] = bench_failover(replicas, root, args.failover_trials, hedge=True)
            console.print("[bold]failover, rebalance only[/] (the same, the client never hedging)")
            results["failover_rebalance_only"] = bench_failover(replicas, root, args.failover_trials, hedge=False)
        replicas.stop()
    finally:
        if args.bootstrap is None and kafka_dir.exists():
            subprocess.run(
                [str(BIN / "minigit-server"), "kafka", "stop", "--data-dir", str(kafka_dir)], capture_output=True
            )
        shutil.rmtree(root, ignore_errors=True)
    finish(results)


def finish(results: dict) -> None:
    report(results)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=1))


STARTUP_LABELS = {
    "minigit_version": "minigit --version",
    "minigit_help": "minigit --help",
    "server_version": "minigit-server --version",
    "server_help": "minigit-server --help",
    "git_version": "git --version (reference)",
    "python_pass": "python -c pass (reference)",
}


def report(results: dict) -> None:
    if "startup" in results:
        startup = Table(title="start-up (commands that only print)")
        for column in ("command", "median ms", "p95 ms", "CPU ms", "n"):
            startup.add_column(column, justify="right" if column != "command" else "left")
        for key, label in STARTUP_LABELS.items():
            row = results["startup"][key]
            failed = f" (exit {row['exit_code']})" if row.get("exit_code") else ""
            cpu = f"{row['cpu_median_ms']:.0f}" if "cpu_median_ms" in row else ""
            startup.add_row(label + failed, f"{row['median_ms']:.0f}", f"{row['p95_ms']:.0f}", cpu, str(row["n"]))
        Console().print(startup)
    table = Table(title="push / pull latency, one-file change (3 replicas, local broker)")
    for column in ("operation", "median ms", "p95 ms", "CPU ms", "n"):
        table.add_column(column, justify="right" if column != "operation" else "left")
    labels = {
        "cli_push": "minigit push (CLI)",
        "api_push": "minigit push (in-process)",
        "git_push": "git push (bare repo)",
        "cli_pull": "minigit pull (CLI)",
        "api_pull": "minigit pull (in-process)",
        "git_pull": "git pull (bare repo)",
    }
    if "latency" in results:
        for key, label in labels.items():
            row = results["latency"][key]
            cpu = f"{row['cpu_median_ms']:.0f}" if "cpu_median_ms" in row else ""
            table.add_row(label, f"{row['median_ms']:.0f}", f"{row['p95_ms']:.0f}", cpu, str(row["n"]))
        Console().print(table)
    if "clone" in results:
        c = results["clone"]
        Console().print(
            f"clone {c['files']} files / {c['mib']} MiB: minigit clone {c['minigit_clone_s']:.1f} s, "
            f"git clone --no-local {c['git_clone_no_local_s']:.1f} s "
            f"(minigit init/push of it: {c['minigit_init_s']:.1f} s)"
        )
    for key, how in (("failover", "hedged"), ("failover_rebalance_only", "rebalance only")):
        if key not in results:
            continue
        f = results[key]
        gaps = ", ".join(f"{s:.1f}" for s in f["seconds"])
        Console().print(
            f"SIGKILL of the serving replica -> next accepted push ({how}): "
            f"median {f['median_s']:.1f} s, max {f['max_s']:.1f} s (runs: {gaps} s)"
        )


if __name__ == "__main__":
    main()
