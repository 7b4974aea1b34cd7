"""Server throughput: concurrent clients against minigit, next to a raw Kafka echo.

    python bench/throughput.py [--bootstrap HOST:PORT] [--clients 1,8,32] [--replicas 1,3]
                               [--seconds 8] [--client-processes 4] [--only echo,pull,push]

Starts a local Kafka (unless --bootstrap is given), then measures, in one run:

* echo: a raw kafka-python request/reply echo, the ceiling of any service that
  answers over Kafka: one server process in a consumer group on a requests topic
  sends each request's value back to the reply partition it names (replies sent
  and flushed once per poll, offsets committed without waiting, as a replica does); each client assigns itself a
  reply partition and seeks to its end, sends a request to a partition of the
  requests topic, waits for Kafka's acknowledgement, and waits for the reply
  carrying its id, exactly as minigit's client does (minigit/client/transport.py).
  Its producer and consumers are minigit's (minigit.kafka_clients: acks=all).
* pull: each client pulls its own repository, already up to date (one request,
  the read barrier, one reply);
* push: each client pushes a one-file change to its own repository (two small
  uploads, the request, the proposal through the log, the answer after apply).

with 1, 8 and 32 concurrent clients, against 1 and 3 replica processes. Every
client keeps one connection (minigit.client.transport.Connection) for the whole
measure; clients are threads spread over several client processes, so the
client side is not bound by one interpreter's lock, the same layout for the echo
and for minigit. Each row gives ops/s, median and p99 latency and the ratio of
its ops/s to the echo's with the same number of clients.

Results are written to bench/results/throughput-<timestamp>.json. Figures from a
shared 2-core machine are noisy: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kafka import TopicPartition
from rich.console import Console
from rich.table import Table

from minigit import codec
from minigit import protocol as p
from minigit.client import operations
from minigit.config import KafkaSettings, ServerFlags
from minigit.kafka_clients import open_consumer, open_producer
from minigit_server.bus import ensure_topics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BIN, Replicas, start_kafka, use_own_config_dir  # bench/bench.py

console = Console(stderr=True)
PARTITIONS = 6
USER = "bench"


# ---------------------------------------------------------------- the echo


def echo_server(bootstrap: str, namespace: str, ready: multiprocessing.Event, stop: multiprocessing.Event) -> None:
    """Send each request's value back to the reply partition it names."""
    settings = KafkaSettings(bootstrap, namespace)
    topics = settings.topics
    producer = open_producer(settings)
    consumer = open_consumer(settings, group_id=topics.group, auto_offset_reset="latest", max_poll_records=50)
    consumer.subscribe([topics.requests])
    while not consumer.assignment():
        consumer.poll(timeout_ms=200)
    ready.set()
    try:
        while not stop.is_set():
            batches = consumer.poll(timeout_ms=200)
            if not batches:
                continue
            for records in batches.values():
                for record in records:
                    request = json.loads(record.value)
                    producer.send(topics.responses, value=record.value, partition=request["reply"])
            producer.flush()
            consumer.commit_async()  # as a replica commits: the next poll does not wait for it
    finally:
        consumer.close()
        producer.close(timeout=5)


class EchoClient:
    """minigit's client exchange without minigit: a self-assigned reply partition,
    a request acknowledged by Kafka, then the reply with its id."""

    def __init__(self, settings: KafkaSettings, index: int) -> None:
        self.topics = settings.topics
        self.producer = open_producer(settings)
        self.consumer = open_consumer(settings, group_id=None)
        self.reply_partition = random.randrange(PARTITIONS)
        self.request_partition = index % PARTITIONS
        tp = TopicPartition(self.topics.responses, self.reply_partition)
        self.consumer.assign([tp])
        self.consumer.seek(tp, self.consumer.end_offsets([tp])[tp])

    def call(self) -> None:
        request_id = uuid.uuid4().hex
        value = json.dumps({"id": request_id, "reply": self.reply_partition, "pad": "x" * 400}).encode()
        self.producer.send(self.topics.requests, value=value, partition=self.request_partition).get(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=500).values():
                for record in records:
                    if json.loads(record.value)["id"] == request_id:
                        return
        raise TimeoutError("no echo within 30 s")

    def close(self) -> None:
        self.producer.close(timeout=5)
        self.consumer.close()


# ---------------------------------------------------------------- minigit clients


def one_file(content: bytes) -> tuple[p.Manifest, bytes, list[codec.BlobSource]]:
    manifest = {"file.txt": p.FileEntry(sha=p.hash_bytes(content), size=len(content))}
    tree = p.encode_tree(manifest)
    return manifest, tree, [codec.BlobSource.from_bytes(tree), codec.BlobSource.from_bytes(content)]


class MinigitClient:
    """One persistent connection, one repository of its own."""

    def __init__(self, settings: KafkaSettings, options: operations.ClientOptions, repo: str) -> None:
        self.connection = options.connect(settings)
        self.repo = repo
        _, tree, uploads = one_file(f"{repo} version 1\n".encode())
        fields = {"repo": repo, "tree": p.hash_bytes(tree), "message": "v1", "visibility": p.Visibility.PUBLIC}
        reply = operations.send_write(self.connection, p.InitRequest, fields, uploads, None)
        if reply.status != p.Status.ACCEPTED:
            raise RuntimeError(f"init of {repo}: {reply.status} {reply.message}")
        self.version, self.tree, self.pushes = 1, p.hash_bytes(tree), 0

    def pull(self) -> None:
        if operations.fetch_head(self.connection, self.repo, self.version, [], None, self.tree) is not None:
            raise RuntimeError(f"pull of {self.repo}: not up to date")

    def push(self) -> None:
        self.pushes += 1
        _, tree, uploads = one_file(f"{self.repo} push {self.pushes}\n".encode())
        fields = {
            "repo": self.repo,
            "base": self.version,
            "tree": p.hash_bytes(tree),
            "message": f"push {self.pushes}",
            "base_tree": self.tree,
        }
        reply = operations.send_write(self.connection, p.PushRequest, fields, uploads, None)
        if reply.status != p.Status.ACCEPTED:
            raise RuntimeError(f"push to {self.repo}: {reply.status} {reply.message}")
        self.version, self.tree = reply.version, p.hash_bytes(tree)

    def close(self) -> None:
        self.connection.close()


# ---------------------------------------------------------------- one measure


def client_process(
    kind: str,
    bootstrap: str,
    namespace: str,
    tag: str,
    indices: list[int],
    ready: multiprocessing.Queue,
    go: multiprocessing.Event,
    started: multiprocessing.Value,
    seconds: float,
    results: multiprocessing.Queue,
) -> None:
    """Clients ``indices`` as threads: set up, say ready, run from ``go`` for ``seconds``."""
    settings = KafkaSettings(bootstrap, namespace)
    options = operations.ClientOptions(USER, ServerFlags(bootstrap, namespace), timeout=60)

    def run(index: int) -> None:
        latencies: list[float] = []
        error = ""
        client = None
        try:
            if kind == "echo":
                client = EchoClient(settings, index)
                operation = client.call
            else:
                client = MinigitClient(settings, options, f"{kind}-{tag}-{index}")
                operation = client.pull if kind == "pull" else client.push
            operation()  # warm: metadata, connections
        except Exception as failure:  # noqa: BLE001 - reported in the row
            error = f"setup: {failure!r}"
        ready.put(index)
        go.wait()
        end = started.value + seconds
        if index == indices[0]:
            cpu_at_start[0] = process_cpu_s(os.getpid())
        try:
            while not error and time.time() < end:
                before = time.perf_counter()
                operation()
                if time.time() <= end:
                    latencies.append(time.perf_counter() - before)
        except Exception as failure:  # noqa: BLE001
            error = repr(failure)
        finally:
            if client is not None:
                client.close()
        results.put((index, latencies, error))

    cpu_at_start = [0.0]
    threads = [threading.Thread(target=run, args=(n,)) for n in indices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(("cpu", process_cpu_s(os.getpid()) - cpu_at_start[0], ""))


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    kind: str, bootstrap: str, namespace: str, clients: int, processes: int, seconds: float, servers: list[int]
) -> dict:
    """One row; ``servers``: the pids whose CPU time is the server side's."""
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    started = context.Value("d", 0.0)
    tag = uuid.uuid4().hex[:6]
    groups = [list(range(n, clients, processes)) for n in range(min(processes, clients))]
    workers = [
        context.Process(
            target=client_process,
            args=(kind, bootstrap, namespace, tag, group, ready, go, started, seconds, results),
        )
        for group in groups
    ]
    for worker in workers:
        worker.start()
    for _ in range(clients):
        ready.get(timeout=300)
    started.value = time.time() + 0.2
    server_cpu = sum(process_cpu_s(pid) for pid in servers)
    go.set()
    time.sleep(0.2 + seconds)
    server_cpu = sum(process_cpu_s(pid) for pid in servers) - server_cpu
    found = [results.get(timeout=120) for _ in range(clients + len(workers))]
    for worker in workers:
        worker.join(timeout=30)
    rows = [row for row in found if row[0] != "cpu"]
    client_cpu = sum(row[1] for row in found if row[0] == "cpu")
    latencies = sorted(x for _, found, _ in rows for x in found)
    errors = sorted({error for _, _, error in rows if error})
    row = {"kind": kind, "clients": clients, "seconds": seconds, "ops": len(latencies), "errors": errors}
    row["ops_per_s"] = len(latencies) / seconds
    # CPU per operation: the server side's (replicas, or the echo server) and the clients'
    # (their setup and closing included: an upper bound)
    row["server_cpu_ms_per_op"] = 1000 * server_cpu / max(1, len(latencies))
    row["client_cpu_ms_per_op"] = 1000 * client_cpu / max(1, len(latencies))
    if latencies:
        row["p50_ms"] = 1000 * statistics.median(latencies)
        row["p99_ms"] = 1000 * latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return row


def start_replicas(bootstrap: str, count: int, root: Path) -> Replicas:
    namespace = f"tp{int(time.time())}r{count}-"
    replicas = Replicas(bootstrap, namespace, root / f"server-{count}")
    since = int(time.time() * 1000)
    for n in range(1, count + 1):
        replicas.start(str(n))
    replicas.wait_settled(since)
    # registers the user (first use) before the clients start, so they do not race to
    options = operations.ClientOptions(USER, ServerFlags(bootstrap, namespace), timeout=60)
    settings = options.settings()
    with options.connect(settings) as connection:
        operations.register_user(connection)
    return replicas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--clients", default="1,8,32", help="client counts, comma-separated")
    parser.add_argument("--replicas", default="1,3", help="replica counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measure")
    parser.add_argument("--client-processes", type=int, default=4, help="processes the clients are spread over")
    parser.add_argument("--only", default="echo,pull,push", help="which of echo,pull,push to run")
    args = parser.parse_args()
    client_counts = [int(n) for n in args.clients.split(",")]
    replica_counts = [int(n) for n in args.replicas.split(",")]
    kinds = args.only.split(",")

    root = Path(tempfile.mkdtemp(prefix="minigit-throughput-"))
    use_own_config_dir(root)
    kafka_dir = root / "kafka"
    bootstrap = args.bootstrap
    rows: list[dict] = []
    try:
        if bootstrap is None:
            bootstrap = start_kafka(kafka_dir)
        if "echo" in kinds:
            namespace = f"tp{int(time.time())}echo-"
            ensure_topics(KafkaSettings(bootstrap, namespace), PARTITIONS, 1)
            context = multiprocessing.get_context("spawn")
            ready, stop = context.Event(), context.Event()
            server = context.Process(target=echo_server, args=(bootstrap, namespace, ready, stop))
            server.start()
            if not ready.wait(60):
                raise RuntimeError("the echo server did not join its group within 60 s")
            for clients in client_counts:
                console.print(f"echo, {clients} clients")
                row = measure("echo", bootstrap, namespace, clients, args.client_processes, args.seconds, [server.pid])
                rows.append({**row, "replicas": 0})
            stop.set()
            server.join(timeout=30)
        for count in replica_counts:
            if not {"pull", "push"} & set(kinds):
                break
            replicas = start_replicas(bootstrap, count, root)
            try:
                for kind in ("pull", "push"):
                    if kind not in kinds:
                        continue
                    for clients in client_counts:
                        console.print(f"{kind}, {count} replicas, {clients} clients")
                        pids = [process.pid for process in replicas.processes.values()]
                        row = measure(
                            kind, bootstrap, replicas.namespace, clients, args.client_processes, args.seconds, pids
                        )
                        rows.append({**row, "replicas": count})
            finally:
                replicas.stop()
    finally:
        if args.bootstrap is None:
            subprocess.run(
                [str(BIN / "minigit-server"), "kafka", "stop", "--data-dir", str(kafka_dir)], capture_output=True
            )
        shutil.rmtree(root, ignore_errors=True)
    echo = {row["clients"]: row["ops_per_s"] for row in rows if row["kind"] == "echo"}
    for row in rows:
        if row["kind"] != "echo" and echo.get(row["clients"]):
            row["ratio_to_echo"] = row["ops_per_s"] / echo[row["clients"]]
    results = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "client_processes": args.client_processes,
        "rows": rows,
    }
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"throughput-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=1))
    report(rows)


def report(rows: list[dict]) -> None:
    table = Table(title="server throughput (ops/s, latency; ratio = ops/s / echo's with as many clients)")
    columns = (
        "measure",
        "replicas",
        "clients",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "ratio to echo",
        "server CPU ms/op",
        "errors",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("measure", "errors") else "right")
    for row in rows:
        table.add_row(
            {"echo": "raw Kafka echo", "pull": "pull, up to date", "push": "push, own repo"}[row["kind"]],
            str(row["replicas"] or "-"),
            str(row["clients"]),
            f"{row['ops_per_s']:.1f}",
            f"{row.get('p50_ms', 0):.0f}",
            f"{row.get('p99_ms', 0):.0f}",
            f"{row['ratio_to_echo']:.2f}" if "ratio_to_echo" in row else "",
            f"{row['server_cpu_ms_per_op']:.1f}",
            "; ".join(row["errors"])[:80],
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
