"""How fast `minigit-server activity` shows an operation: from a push's answer to its
figure readable on the compacted topic repo-activity, with the Structured Streaming
job in local mode (2 cores, a micro-batch every --interval seconds) beside 2 replicas
on a local broker. The push's own latency is measured in the same run (reference).

    .venv/bin/python bench/activity.py [--bootstrap HOST:PORT] [--pushes 10] [--interval 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
import bench
from minigit import identity
from minigit.client import operations
from minigit.config import ServerFlags
from minigit_server.apply import Authority
from minigit_server.audit_cli import read_figures
from minigit_server.bus import ensure_compacted_topic
from minigit_server.server_key import load_server_key, server_key_path

console = Console()


def accepted_pushes(settings, repo: str) -> int:
    return sum(d["pushes_accepted"] for d in read_figures(settings) if d["scope"] == "repo" and d["name"] == repo)


def run(bootstrap: str, root: Path, pushes: int, interval: float) -> dict:
    from minigit_server.sparkjobs import activity_job, runtime

    namespace = f"bench-activity-{uuid.uuid4().hex[:8]}-"
    replicas = bench.Replicas(bootstrap, namespace, root / "server")
    since = int(time.time() * 1000)
    for replica_id in ("1", "2"):
        replicas.start(replica_id)
    query = tracker = None
    try:
        replicas.wait_settled(since)
        options = operations.ClientOptions("bench", ServerFlags(bootstrap, namespace), 60)
        work = root / "work"
        work.mkdir()
        (work / "f.txt").write_text("0\n")
        operations.init_repository(work, "act", options)
        key = load_server_key(server_key_path(root / "server"))
        authority = Authority(namespace, identity.public_key_text(key.public_key()))
        settings = replicas.settings
        ensure_compacted_topic(settings, activity_job.activity_topic(settings.topics))
        session = runtime.get_session("local[2]", "minigit-bench-activity")
        spark_options = runtime.spark_kafka_options(bootstrap, {})
        query, tracker, _ = activity_job.start(
            session, spark_options, settings.topics, 6, authority, interval_s=interval
        )
        deadline = time.monotonic() + 120
        while not read_figures(settings):  # the first batch (the init) is out
            assert time.monotonic() < deadline, "no figures within 120 s"
            time.sleep(0.2)
        delays, push_ms = [], []
        for n in range(1, pushes + 1):
            (work / "f.txt").write_text(f"{n}\n")
            started = time.perf_counter()
            operations.push_workdir(work, options, f"push {n}")
            answered = time.perf_counter()
            push_ms.append(1000 * (answered - started))
            while accepted_pushes(settings, "act") < n:
                assert time.perf_counter() - answered < 60, "the figure did not appear within 60 s"
                time.sleep(0.05)
            delays.append(1000 * (time.perf_counter() - answered))
            time.sleep(0.3)
        return {
            "pushes": pushes,
            "interval_s": interval,
            "delay_ms": {"median": statistics.median(delays), "max": max(delays), "all": [round(d) for d in delays]},
            "push_ms": {"median": statistics.median(push_ms), "max": max(push_ms)},
            "load": os.getloadavg(),
        }
    finally:
        if query is not None:
            query.stop()
        if tracker is not None:
            tracker.close()
        replicas.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--pushes", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between micro-batches")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-activity-") as tmp:
        root = Path(tmp)
        bench.use_own_config_dir(root)
        console.print(f"load average before: {os.getloadavg()}")
        if args.bootstrap:
            result = run(args.bootstrap, root, args.pushes, args.interval)
        else:
            kafka_dir = root / "kafka"
            bootstrap = bench.start_kafka(kafka_dir)
            try:
                result = run(bootstrap, root, args.pushes, args.interval)
            finally:
                stop = [str(bench.BIN / "minigit-server"), "kafka", "stop", "--data-dir", str(kafka_dir)]
                subprocess.run(stop, capture_output=True, check=False)
    console.print_json(json.dumps(result))
    delay, push = result["delay_ms"], result["push_ms"]
    console.print(
        f"activity: a push's figure readable on repo-activity {delay['median']:.0f} ms after its answer "
        f"(median of {result['pushes']}, max {delay['max']:.0f} ms; micro-batch every {result['interval_s']:g} s); "
        f"reference, the push itself: median {push['median']:.0f} ms"
    )


if __name__ == "__main__":
    main()
