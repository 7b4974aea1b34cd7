"""What the audit costs: repo-log folded from its beginning by `minigit-server audit`,
with Spark (local mode, 2 cores) and with the local engine, for logs of 1,000 and
100,000 records (or --records), on a local broker.

    .venv/bin/python bench/audit.py [--bootstrap HOST:PORT] [--records 1000,100000]

The log is written straight to repo-log (2 partitions), as owners write it: for
each repository a create, then pushes of a one-file change, each with its file's
and its tree's chunk records and a signed proposal (3 records per version), built
with the unit tests' signing helpers (tests/unit/server: fixed test keys). No
replica runs: the figures are the fold's alone (reading the log, parsing, checking
every signature, applying), which is what the audit adds to a `verify`. The Spark
session's start (a JVM, once per command) is timed apart. Both engines must give
the same result; the run fails otherwise.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "server"))  # the test keys and log builder

from signing import AUTHORITY  # noqa: E402
from test_apply import Log  # noqa: E402

import bench  # noqa: E402
from minigit import protocol as p  # noqa: E402
from minigit.config import KafkaSettings  # noqa: E402
from minigit.kafka_clients import open_producer  # noqa: E402
from minigit_server import audit  # noqa: E402
from minigit_server.bus import Bus, ensure_topics  # noqa: E402

console = Console()
PARTITIONS = 2


def build_log(partition: int, records: int) -> list:
    """About ``records`` log records of ``partition``: repositories of 100 versions."""
    log = Log(partition)
    repo_number = 0
    while len(log.records) < records:
        repo_number += 1
        name = f"r{partition}-{repo_number}"
        while p.log_partition(name, PARTITIONS) != partition:
            repo_number += 1
            name = f"r{partition}-{repo_number}"
        log.create(log.tree({"f.txt": b"version 1\n"}, repo=name), repo=name)
        for version in range(1, 100):
            if len(log.records) >= records:
                break
            log.push(version, log.tree({"f.txt": f"version {version + 1}\n".encode()}, repo=name), repo=name)
    return log.records


def write_log(settings: KafkaSettings, records: int) -> dict[int, int]:
    producer = open_producer(settings, acks=1, linger_ms=20)
    try:
        for partition in range(PARTITIONS):
            for record in build_log(partition, records // PARTITIONS):
                producer.send(settings.topics.log, value=record.value, partition=partition)
        producer.flush()
    finally:
        producer.close()
    bus = Bus(settings, client_id="bench-audit")
    try:
        return bus.log_end_offsets()
    finally:
        bus.close()


def scan(bus: Bus, partition: int, end: int):
    return bus.scan_log(partition, end, 3600)


def run(bootstrap: str, sizes: list[int]) -> list[dict]:
    from minigit_server.sparkjobs import audit_job, runtime

    started = time.perf_counter()
    session = runtime.get_session("local[2]", "minigit-bench-audit")
    session_s = time.perf_counter() - started
    console.print(f"Spark session (local[2]) started in {session_s:.1f} s")
    rows = []
    try:
        for size in sizes:
            settings = KafkaSettings(bootstrap, f"bench-audit-{uuid.uuid4().hex[:8]}-")
            ensure_topics(settings, PARTITIONS, 1)
            ends = write_log(settings, size)
            bus = Bus(settings, client_id="bench-audit")
            try:
                load = os.getloadavg()[0]
                started = time.perf_counter()
                with audit.quiet_apply_log():
                    local = audit.audit_log(functools.partial(scan, bus), ends, AUTHORITY)
                local_s = time.perf_counter() - started
            finally:
                bus.close()
            options = runtime.spark_kafka_options(bootstrap, {})
            started = time.perf_counter()
            folded = audit_job.audit_log(session, options, settings.topics.log, ends, AUTHORITY)
            spark_s = time.perf_counter() - started
            assert [a.to_json() for a in folded] == [a.to_json() for a in local], "the engines disagree"
            repos = sum(len(a.repos) for a in local)
            rows.append(
                {
                    "records": sum(ends.values()),
                    "repos": repos,
                    "local_s": local_s,
                    "spark_s": spark_s,
                    "session_s": session_s,
                    "load": (load, os.getloadavg()[0]),
                }
            )
            console.print(rows[-1])
    finally:
        session.stop()
    return rows


def report(rows: list[dict]) -> None:
    table = Table(title="audit: repo-log folded from its beginning (2 partitions)", title_justify="left")
    for column in ("log records", "repositories", "--engine local", "--engine spark (local[2])", "load avg"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row['records']:,}",
            f"{row['repos']:,}",
            f"{row['local_s']:.1f} s ({row['records'] / row['local_s']:,.0f}/s)",
            f"{row['spark_s']:.1f} s ({row['records'] / row['spark_s']:,.0f}/s)",
            f"{row['load'][0]:.2f} -> {row['load'][1]:.2f}",
        )
    table.caption = f"plus the Spark session's start, once per command: {rows[0]['session_s']:.1f} s" if rows else ""
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--records", default="1000,100000", help="log sizes, comma-separated")
    args = parser.parse_args()
    sizes = [int(n) for n in args.records.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        bench.use_own_config_dir(Path(tmp))
        if args.bootstrap:
            report(run(args.bootstrap, sizes))
            return
        kafka_dir = Path(tmp) / "kafka"
        bootstrap = bench.start_kafka(kafka_dir)
        try:
            report(run(bootstrap, sizes))
        finally:
            stop = [str(bench.BIN / "minigit-server"), "kafka", "stop", "--data-dir", str(kafka_dir)]
            subprocess.run(stop, capture_output=True, check=False)


if __name__ == "__main__":
    main()
