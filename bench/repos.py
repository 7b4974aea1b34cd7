"""Many repositories: what the replicas report, and what status, verify and repos cost.

    .venv/bin/python bench/repos.py [--bootstrap HOST:PORT] [--checkpoints 100,1000,3000,10000] [--threads 8]

Starts a local Kafka (unless --bootstrap is given) and three replica processes
(bench/bench.py's helpers), then creates repositories (one small file each) with
in-process clients on --threads threads, each keeping its connection. At every
checkpoint (repository count) it waits until every replica has applied every
creation, then measures:

* the records on repo-replicas: each replica's latest heartbeat (bytes, and how
  old it is: a heartbeat that stopped being sent grows old), and the total bytes
  and count of the latest record of every key (heartbeats and report pages);
* `minigit-server status --json` and `verify --json --wait 30` wall time (the CLI,
  a new process each, as an operator runs them), their exit codes and whether
  every repository was checked;
* `minigit repos` wall time (the CLI: it pages through every repository);
* for each command, also its CPU seconds: on a loaded machine the wall time is
  mostly waiting for a core;
* replica CPU (user + system, from /proc) per created repository while creating,
  and per second while idle (the heartbeat's own cost, the apply loop polling).

With --store-only, no Kafka and no replica: a store of each checkpoint's size is
filled in this process, and the CPU of one heartbeat's work on it now (summaries,
changed pages, the audit of 200 repositories) is printed next to what every
heartbeat did before (fold every repository's digest from its rows), with the
sizes of the heartbeat and page records.

With --reports-only, no replica either: what three replicas holding N repositories
each (one store, filled in this process) publish on repo-replicas is written there,
heartbeats kept fresh every 2 s, and `minigit-server status` and `verify` are timed
against it (with and without --json): their own cost at N repositories, in seconds
instead of the hour it takes to create 10,000 repositories on a loaded machine.

The first checkpoint is the reference of the same run. Figures are development
figures: the machine is shared. Results are written to bench/results/repos-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BIN, Replicas, start_kafka, use_own_config_dir
from minigit import protocol as p
from minigit.client import operations
from minigit.config import ServerFlags
from minigit.kafka_clients import open_consumer

console = Console(stderr=True)
USER = "bench"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def replicas_cpu(replicas: Replicas) -> dict[str, float]:
    return {rid: cpu_seconds(proc.pid) for rid, proc in replicas.processes.items()}


def create_repos(replicas: Replicas, root: Path, names: list[str], threads: int) -> float:
    """Create ``names`` (one small file each) on ``threads`` threads, each with one
    connection; seconds taken."""
    options = operations.ClientOptions(USER, ServerFlags(replicas.bootstrap, replicas.namespace), timeout=120)
    settings = options.settings()
    shares = [names[n::threads] for n in range(threads)]
    work = root / "work"
    work.mkdir(exist_ok=True)

    def create(share: list[str]) -> None:
        with options.connect(settings) as connection:
            for name in share:
                folder = work / name
                folder.mkdir()
                (folder / "README").write_text(f"repository {name}\n")
                manifest = {"README": operations.ws.scan_workdir(folder, {}).manifest["README"]}
                tree, uploads = operations.collect_uploads(folder, manifest, {})
                fields = {
                    "repo": name,
                    "tree": p.hash_bytes(tree),
                    "message": "bench",
                    "visibility": p.Visibility.PRIVATE,
                }
                reply = operations.send_write(connection, p.InitRequest, fields, uploads, None)
                operations.expect_write_accepted(name, "init", reply)
                shutil.rmtree(folder)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(create, share) for share in shares if share]:
            done.result()
    return time.perf_counter() - started


def latest_records(replicas: Replicas) -> dict[bytes, bytes]:
    """The latest value of every key on repo-replicas (what compaction keeps)."""
    topic = f"{replicas.namespace}repo-replicas"
    consumer = open_consumer(replicas.settings, group_id=None, enable_auto_commit=False)
    try:
        from kafka import TopicPartition

        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        latest: dict[bytes, bytes] = {}
        deadline = time.monotonic() + 120
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    if record.value is None:
                        latest.pop(record.key, None)
                    else:
                        latest[record.key] = record.value
        return latest
    finally:
        consumer.close()


def wait_applied(replicas: Replicas, count: int, timeout: float = 900) -> float:
    """Wait until every replica's store holds ``count`` repositories (its heartbeat
    says so, or, if heartbeats stopped, its store file does)."""
    import sqlite3

    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = []
        for rid in replicas.processes:
            path = replicas.data_dir / f"replica-{rid}" / "store.sqlite"
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
                counts.append(db.execute("SELECT COUNT(*) FROM repos").fetchone()[0])
        if all(c >= count for c in counts):
            return time.perf_counter() - started
        time.sleep(1)
    raise RuntimeError(f"replicas did not apply {count} creations in {timeout:g}s")


CPU_OF_LAST_RUN = [0.0]


def run_timed(command: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, int, str]:
    """Wall seconds, exit code and output of a command; its CPU seconds (user + system)
    go to CPU_OF_LAST_RUN: on a loaded machine wall time is mostly waiting for a core."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_OF_LAST_RUN[0] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - started, done.returncode, done.stdout


def measure(replicas: Replicas, root: Path, count: int, idle_s: float) -> dict:
    kafka = ["--bootstrap", replicas.bootstrap, "--namespace", replicas.namespace]
    # Let one heartbeat interval pass after the last apply, so every report is current.
    time.sleep(3)
    records = latest_records(replicas)
    now_ms = int(time.time() * 1000)
    beats = {}
    for key, value in records.items():
        try:
            message = json.loads(value)
        except ValueError:
            continue
        if message.get("type") == "heartbeat":
            beats[key.decode()] = {"bytes": len(value), "age_s": (now_ms - message["sent_ms"]) / 1000}
    result: dict = {
        "repos": count,
        "heartbeats": beats,
        "largest_heartbeat_bytes": max((b["bytes"] for b in beats.values()), default=0),
        "replica_records": len(records),
        "replica_records_bytes": sum(len(v) for v in records.values()),
        "largest_record_bytes": max((len(v) for v in records.values()), default=0),
    }
    server = str(BIN / "minigit-server")
    seconds, code, out = run_timed([server, "status", "--json", *kafka])
    listed = json.loads(out)["repositories"] if code in (0, 4) and out.strip() else {}
    result["status"] = {"seconds": seconds, "cpu_s": CPU_OF_LAST_RUN[0], "exit": code, "repositories": len(listed)}
    seconds, code, out = run_timed([server, "verify", "--json", "--wait", "30", *kafka])
    verdicts = json.loads(out)["repositories"] if out.strip() else []
    words: dict[str, int] = {}
    for verdict in verdicts:
        words[verdict["status"]] = words.get(verdict["status"], 0) + 1
    result["verify"] = {
        "seconds": seconds,
        "cpu_s": CPU_OF_LAST_RUN[0],
        "exit": code,
        "repositories": len(verdicts),
        "verdicts": words,
    }
    env = {**os.environ, "MINIGIT_USER": USER}
    seconds, code, out = run_timed([str(BIN / "minigit"), "repos", "--json", *kafka], env=env, cwd=root)
    listed_repos = len(json.loads(out)["repositories"]) if code == 0 else 0
    result["repos_cli"] = {"seconds": seconds, "cpu_s": CPU_OF_LAST_RUN[0], "exit": code, "repositories": listed_repos}
    before = replicas_cpu(replicas)
    time.sleep(idle_s)
    after = replicas_cpu(replicas)
    result["idle_cpu_per_s"] = {rid: (after[rid] - before[rid]) / idle_s for rid in before}
    return result


def store_figures(counts: list[int]) -> list[dict]:
    """Without Kafka, in this process: a store of N repositories (one version each),
    and the CPU of what a heartbeat does with it now (collect the summaries, fold 200
    repositories again) next to what each heartbeat did before (every digest folded
    again from the rows), and the sizes of the records it makes."""
    import tempfile as tmp

    from minigit_server.reports import RepoReporter
    from minigit_server.store import RepoState, SqliteStore, VersionInfo

    rows = []
    for count in counts:
        with tmp.TemporaryDirectory() as folder:
            store = SqliteStore(Path(folder) / "store.sqlite")
            started = time.process_time()
            with store.transaction():
                for n in range(count):
                    name = f"r{n:06d}"
                    store.put_blob(n % 6, "a" * 64, 1, 1)
                    store.put_repo(RepoState(name, 1, n % 6, n, "bench", "private"))
                    store.add_version(name, VersionInfo(1, "a" * 64, "bench", "first", n, f"{n:032x}"))
                for partition in range(6):
                    store.set_applied(partition, count)
            apply_cpu = time.process_time() - started
            reporter = RepoReporter("1")
            started = time.process_time()
            first = reporter.collect(store)
            first_cpu = time.process_time() - started
            reporter.sent(first)
            started = time.process_time()
            reporter.audit(store)
            again = reporter.collect(store)
            beat_cpu = time.process_time() - started
            started = time.process_time()
            with store.snapshot():
                for repo in store.list_repos():
                    store.repo_digest(repo.name)
            before_cpu = time.process_time() - started
            beat = p.Heartbeat(
                replica="1",
                host="h",
                pid=1,
                started_ms=1,
                sent_ms=2,
                serving=[],
                applied=first.applied,
                log_end={},
                partitions=first.partitions,
            )
            pages = [len(page.to_bytes()) for page in first.pages]
            rows.append(
                {
                    "repos": count,
                    "store_writes_cpu_ms_per_repo": 1000 * apply_cpu / count,
                    "heartbeat_cpu_ms_now": 1000 * beat_cpu,
                    "heartbeat_changed_pages_now": len(again.pages),
                    "first_heartbeat_cpu_ms_all_pages": 1000 * first_cpu,
                    "heartbeat_cpu_ms_before_all_digests": 1000 * before_cpu,
                    "heartbeat_bytes_now": len(beat.to_bytes()),
                    "pages": len(pages),
                    "largest_page_bytes": max(pages, default=0),
                    "pages_bytes": sum(pages),
                }
            )
            store.close()
            console.print(json.dumps(rows[-1]))
    return rows


def keep_beating(bus, reports: dict, server_key: str, stop: threading.Event) -> None:
    """Each replica's heartbeat every 2 s, as a running replica sends it, until ``stop``."""
    while not stop.is_set():
        for rid, made in reports.items():
            serving = list(range(6)) if rid == "1" else []
            now_ms = int(time.time() * 1000)
            beat = p.Heartbeat(
                replica=rid, host="bench", pid=1, started_ms=1, sent_ms=now_ms, serving=serving,
                applied=made.applied, log_end={}, partitions=made.partitions, server_key=server_key,
            )  # fmt: skip
            bus.publish_heartbeat(beat)
        bus.flush()
        stop.wait(2)


def reports_figures(bootstrap: str, counts: list[int]) -> list[dict]:
    """Status and verify against the reports of three replicas of N repositories,
    written to repo-replicas by this process (no replica runs)."""
    import tempfile as tmp

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from minigit import identity
    from minigit.config import KafkaSettings
    from minigit_server.bus import Bus, ensure_topics
    from minigit_server.reports import RepoReporter
    from minigit_server.store import RepoState, SqliteStore, VersionInfo

    rows = []
    server_key = identity.public_key_text(Ed25519PrivateKey.generate().public_key())
    for count in counts:
        namespace = f"benchreports{count}x{int(time.time())}-"
        settings = KafkaSettings(bootstrap, namespace)
        ensure_topics(settings, 6, 1)
        with tmp.TemporaryDirectory() as folder:
            store = SqliteStore(Path(folder) / "store.sqlite")
            with store.transaction():
                for n in range(count):
                    name = f"r{n:06d}"
                    partition = p.log_partition(name, 6)
                    store.put_blob(partition, "a" * 64, 1, 1)
                    store.put_repo(RepoState(name, 1, partition, n, USER, "private"))
                    store.add_version(name, VersionInfo(1, "a" * 64, USER, "first", n, f"{n:032x}"))
                for partition in range(6):
                    store.set_applied(partition, count + 1)
            bus = Bus(settings, client_id="bench-reports")
            reports = {rid: RepoReporter(rid).collect(store) for rid in ("1", "2", "3")}
            store.close()
        for rid, made in reports.items():
            bus.publish_repo_pages(rid, made.pages, made.emptied)

        stop = threading.Event()
        beating = threading.Thread(target=keep_beating, args=(bus, reports, server_key, stop), daemon=True)
        beating.start()
        time.sleep(3)
        kafka = ["--bootstrap", bootstrap, "--namespace", namespace]
        row: dict = {"repos": count, "load": os.getloadavg()}
        server = str(BIN / "minigit-server")
        for label, command in (
            ("status_json", ["status", "--json"]),
            ("verify_json", ["verify", "--json", "--wait", "30"]),
            ("status", ["status"]),
            ("verify", ["verify", "--wait", "30"]),
        ):
            seconds, code, out = run_timed([server, *command, *kafka])
            row[label] = {"seconds": seconds, "cpu_s": CPU_OF_LAST_RUN[0], "exit": code, "stdout_bytes": len(out)}
        stop.set()
        beating.join()
        bus.close()
        rows.append(row)
        console.print(json.dumps(row))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument(
        "--checkpoints", default="100,1000,3000,10000", help="repository counts to measure at (comma-separated)"
    )
    parser.add_argument("--threads", type=int, default=8, help="client threads creating repositories")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle replica CPU measured")
    parser.add_argument(
        "--store-only",
        action="store_true",
        help="no Kafka: measure a store and the heartbeat's work at each checkpoint, in this process",
    )
    parser.add_argument(
        "--reports-only",
        action="store_true",
        help="no replica: write three replicas' reports of N repositories to repo-replicas, time status and verify",
    )
    args = parser.parse_args()
    checkpoints = sorted({int(n) for n in args.checkpoints.split(",")})
    if args.reports_only:
        kafka_dir = Path(tempfile.mkdtemp(prefix="minigit-bench-reports-")) / "kafka"
        bootstrap = args.bootstrap or start_kafka(kafka_dir)
        try:
            rows = reports_figures(bootstrap, checkpoints)
        finally:
            if args.bootstrap is None:
                stop = [str(BIN / "minigit-server"), "kafka", "stop", "--data-dir", str(kafka_dir)]
                subprocess.run(stop, capture_output=True)
            shutil.rmtree(kafka_dir.parent, ignore_errors=True)
        table = Table(title="status / verify against three replicas' reports (no replica runs)")
        for column in ("repos", "status --json", "verify --json", "status", "verify", "load"):
            table.add_column(column, justify="right")
        for row in rows:
            cells = [f"{row[k]['seconds']:.2f} s (CPU {row[k]['cpu_s']:.2f}, exit {row[k]['exit']})"
                     for k in ("status_json", "verify_json", "status", "verify")]  # fmt: skip
            table.add_row(str(row["repos"]), *cells, f"{row['load'][0]:.1f}")
        Console(width=200).print(table)
        out_dir = Path(__file__).parent / "results"
        out_dir.mkdir(exist_ok=True)
        (out_dir / f"repos-reports-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(rows, indent=1))
        return
    if args.store_only:
        rows = store_figures(checkpoints)
        out_dir = Path(__file__).parent / "results"
        out_dir.mkdir(exist_ok=True)
        (out_dir / f"repos-store-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(rows, indent=1))
        return

    root = Path(tempfile.mkdtemp(prefix="minigit-bench-repos-"))
    use_own_config_dir(root)
    kafka_dir = root / "kafka"
    bootstrap = args.bootstrap
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "threads": args.threads,
        "checkpoints": [],
    }
    stop_sampling = threading.Event()
    try:
        if bootstrap is None:
            bootstrap = start_kafka(kafka_dir)
        replicas = Replicas(bootstrap, f"benchrepos{int(time.time())}-", root / "server")
        replicas.start_all()
        replicas.serving("warmup")
        made = 0
        for count in checkpoints:
            names = [f"r{n:06d}" for n in range(made, count)]
            cpu_before = replicas_cpu(replicas)
            seconds = create_repos(replicas, root, names, args.threads)
            applied_after = wait_applied(replicas, count)
            cpu_after = replicas_cpu(replicas)
            made = count
            console.print(f"[bold]{count}[/] repositories ({len(names)} created in {seconds:.0f} s); measuring")
            row = measure(replicas, root, count, args.idle)
            row["created"] = len(names)
            row["create_s"] = seconds
            row["create_per_s"] = len(names) / seconds if seconds else None
            row["apply_wait_s"] = applied_after
            row["cpu_ms_per_created_repo"] = {
                rid: 1000 * (cpu_after[rid] - cpu_before[rid]) / max(1, len(names)) for rid in cpu_before
            }
            results["checkpoints"].append(row)
            report_row(row)
        replicas.stop()
    finally:
        stop_sampling.set()
        if args.bootstrap is None:
            subprocess.run(
                [str(BIN / "minigit-server"), "kafka", "stop", "--data-dir", str(kafka_dir)], capture_output=True
            )
        shutil.rmtree(root, ignore_errors=True)
        out_dir = Path(__file__).parent / "results"
        out_dir.mkdir(exist_ok=True)
        (out_dir / f"repos-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=1))
    report(results)


def report_row(row: dict) -> None:
    console.print(json.dumps({k: v for k, v in row.items() if k != "heartbeats"}))


def report(results: dict) -> None:
    table = Table(title="many repositories (3 replicas, local broker)")
    columns = (
        "repos",
        "largest heartbeat B",
        "heartbeat age s",
        "repo-replicas B",
        "status s (CPU s)",
        "verify s (CPU s, exit)",
        "verify verdicts",
        "minigit repos s",
        "idle CPU %",
        "CPU ms / created repo",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in results["checkpoints"]:
        ages = [b["age_s"] for b in row["heartbeats"].values()]
        table.add_row(
            str(row["repos"]),
            str(row["largest_heartbeat_bytes"]),
            f"{max(ages):.1f}" if ages else "-",
            str(row["replica_records_bytes"]),
            f"{row['status']['seconds']:.2f} ({row['status'].get('cpu_s', 0):.2f})",
            f"{row['verify']['seconds']:.2f} ({row['verify'].get('cpu_s', 0):.2f}, {row['verify']['exit']})",
            ", ".join(f"{k} {v}" for k, v in sorted(row["verify"]["verdicts"].items())),
            f"{row['repos_cli']['seconds']:.2f} ({row['repos_cli']['repositories']})",
            "/".join(f"{100 * v:.0f}" for v in row["idle_cpu_per_s"].values()),
            "/".join(f"{v:.0f}" for v in row["cpu_ms_per_created_repo"].values()),
        )
    Console(width=220).print(table)


if __name__ == "__main__":
    main()
