"""Disk per byte of content, and how fast a new replica joins: replay against snapshot.

    .venv/bin/python bench/storage.py [--bootstrap HOST:PORT] [--content-mib 64] [--join-mib 128]

Starts a local Kafka (unless --bootstrap is given) and three replica processes
(bench/bench.py's helpers), with short retention of the transient topics
(--retention-ms, default 60 s), then:

* storage: pushes a known amount of incompressible content in several pushes (an
  init and accepted pushes), two pushes rejected as stale (their uploads reach every
  store, then are collected), and one upload abandoned mid-way (chunks sent, no
  request: kept while pending, collected after a day of log time); reports the
  bytes each topic holds (as the brokers report them) and each store's file, per
  byte of accepted content, right after the pushes and again once retention has
  deleted the transient topics' old segments (up to --retention-wait seconds:
  Kafka looks every log.retention.check.interval.ms, 5 minutes by default), and the
  bytes the replicas logged as collected. The reference: content x (1 + replicas),
  the log once and each store once;
* join: pushes --join-mib of history, then times a new replica that replays the
  whole log from an empty store, against one seeded from a snapshot of a running
  replica (`minigit-server snapshot create` + `restore`, then start), each until it
  has applied the whole log. --join-mib 1024 for the 1 GiB figure (slow: minutes).

Figures are printed, and saved to bench/results/storage-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import BIN, Replicas, start_kafka, use_own_config_dir
from minigit import codec
from minigit import protocol as p
from minigit.client import operations
from minigit.config import ServerFlags, TopicRetention
from minigit.errors import MinigitError
from minigit.kafka_clients import open_producer
from minigit_server.bus import Bus, ensure_topics, topic_sizes
from minigit_server.replica import replica_log_path, store_path
from minigit_server.supervisor import replica_command

console = Console(stderr=True)
MIB = 1024 * 1024
# The replicas' push size limit here: the bench's pushes stay below it, and the
# transient topics may keep as little as twice it (TopicRetention.parse).
MAX_PUSH = 256 * MIB
COLLECTED = re.compile(r"collected (\d+) unreferenced objects \((\d+) bytes\)")


class RetainedReplicas(Replicas):
    """bench.Replicas whose replicas set the given retention on the topics (each
    replica sets it again as it starts)."""

    def __init__(self, bootstrap: str, namespace: str, data_dir: Path, retention: TopicRetention) -> None:
        self.retention = retention
        super().__init__(bootstrap, namespace, data_dir)
        ensure_topics(self.settings, 6, 1, retention=retention)

    def start(self, replica_id: str) -> None:
        options = ["--data-dir", str(self.data_dir), "--bootstrap", self.bootstrap, "--namespace", self.namespace]
        options += ["--max-push-bytes", str(MAX_PUSH), *self.retention.flags()]
        log = open(self.data_dir / f"replica-{replica_id}.out", "ab")  # noqa: SIM115 - the child keeps it
        self.processes[replica_id] = subprocess.Popen(replica_command(replica_id, options), stdout=log, stderr=log)

    def stop_one(self, replica_id: str) -> None:
        process = self.processes.pop(replica_id)
        process.terminate()
        process.wait(timeout=60)


def write_files(folder: Path, prefix: str, total: int, count: int) -> int:
    """``count`` files of random bytes, ``total`` bytes in all."""
    folder.mkdir(parents=True, exist_ok=True)
    size = max(1, total // count)
    for n in range(count):
        (folder / f"{prefix}-{n:04}.bin").write_bytes(os.urandom(size))
    return size * count


def applied(store_file: Path) -> dict[int, int]:
    """A replica's applied offsets, read beside it (no quick_check: it may be large)."""
    if not store_file.exists():
        return {}
    try:
        db = sqlite3.connect(f"{store_file.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return dict(db.execute("SELECT partition, next_offset FROM applied"))
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return {}


def log_end(replicas: Replicas) -> dict[int, int]:
    bus = Bus(replicas.settings, client_id="bench-storage")
    try:
        return {k: v for k, v in bus.log_end_offsets().items() if v}
    finally:
        bus.close()


def wait_applied(replicas: Replicas, replica_ids: list[str], end: dict[int, int], timeout: float) -> float:
    """Seconds until every replica named applied the log up to ``end``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        states = [applied(store_path(replicas.data_dir, r)) for r in replica_ids]
        if all(all(state.get(k, 0) >= v for k, v in end.items()) for state in states):
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"replicas {replica_ids} did not apply the log within {timeout:g}s")


def store_bytes(replicas: Replicas, replica_id: str) -> tuple[int, int]:
    """A store's files (with its WAL), and the bytes of its pages in use."""
    path = store_path(replicas.data_dir, replica_id)
    files = sum(f.stat().st_size for f in path.parent.glob("store.sqlite*") if f.is_file())
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        pages, free, size = (
            db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "freelist_count", "page_size")
        )
    finally:
        db.close()
    return files, (pages - free) * size


def collected_bytes(replicas: Replicas, replica_id: str) -> int:
    path = replica_log_path(replicas.data_dir, replica_id)
    text = path.read_text(errors="replace") if path.exists() else ""
    return sum(int(m.group(2)) for m in COLLECTED.finditer(text))


def disk(replicas: Replicas, replica_ids: list[str], content: int) -> dict:
    topics = replicas.settings.topics
    names = {"repo-requests": topics.requests, "repo-responses": topics.responses, "repo-log": topics.log}
    sizes = topic_sizes(replicas.settings, names.values())
    found = {label: sizes[name] for label, name in names.items()}
    stores = {r: store_bytes(replicas, r) for r in replica_ids}
    found.update({f"store {r}": files for r, (files, _) in stores.items()})
    total = sum(found.values())
    live = {f"store {r}": used for r, (_, used) in stores.items()}
    return {"bytes": found, "total": total, "per_content_byte": total / content, "store_pages_in_use": live}


def abandon_upload(replicas: Replicas, repo: str, size: int) -> int:
    """Send the first half of a blob's chunks to repo-requests, as a client killed
    mid-upload would: no request ever follows."""
    data = os.urandom(size)
    blob = codec.BlobSource(p.hash_bytes(data), len(data), lambda: codec.split_bytes(data))
    chunks = list(p.blob_chunks(p.new_request_id(), repo, blob))
    producer = open_producer(replicas.settings)
    try:
        sent = 0
        for chunk in chunks[: max(1, len(chunks) // 2)]:
            producer.send(replicas.settings.topics.requests, key=repo.encode(), value=chunk.to_bytes())
            sent += len(chunk.data) * 3 // 4
        producer.flush()
    finally:
        producer.close()
    return sent


def bench_storage(replicas: RetainedReplicas, root: Path, content_mib: int, retention_wait: float) -> dict:
    options = operations.ClientOptions("bench", ServerFlags(replicas.bootstrap, replicas.namespace), timeout=300)
    ids = sorted(replicas.processes)
    work, stale = root / "storage-work", root / "storage-stale"
    part = content_mib * MIB // 4
    content = write_files(work, "v1", part, 64)
    operations.init_repository(work, "storage", options)
    operations.clone_repository("storage", stale, options)
    for n in (2, 3, 4):
        content += write_files(work, f"v{n}", part, 64)
        operations.push_workdir(work, options, f"v{n}")
    rejected, stale_content = 0, 0
    for n in (1, 2):  # stale clone: based on version 1, the head is 4
        stale_content += write_files(stale, f"stale{n}", part // 2, 32)
        rejected += stale_content  # each push uploads every stale file again (none was accepted)
        try:
            operations.push_workdir(stale, options, f"stale {n}")
            raise RuntimeError("a stale push was accepted")
        except MinigitError:
            pass
    abandoned = abandon_upload(replicas, "storage", part // 2)
    time.sleep(3)  # the owner copies the abandoned chunks into the log
    end = log_end(replicas)
    wait_applied(replicas, ids, end, 600)
    before = disk(replicas, ids, content)
    collected = {r: collected_bytes(replicas, r) for r in ids}
    console.print(
        f"  pushed {content / MIB:.0f} MiB accepted, {rejected / MIB:.0f} MiB rejected, "
        f"{abandoned / MIB:.0f} MiB abandoned; waiting for retention (up to {retention_wait:g}s)"
    )
    deadline = time.monotonic() + retention_wait
    after = before
    while time.monotonic() < deadline:
        time.sleep(10)
        after = disk(replicas, ids, content)
        transient = after["bytes"]["repo-requests"] + after["bytes"]["repo-responses"]
        if transient < 0.1 * (before["bytes"]["repo-requests"] + before["bytes"]["repo-responses"]):
            break
    waited = retention_wait - max(0.0, deadline - time.monotonic())
    return {
        "content_bytes": content,
        "rejected_upload_bytes": rejected,
        "abandoned_upload_bytes": abandoned,
        "replicas": len(ids),
        "floor_per_content_byte": 1 + len(ids),
        "before_retention": before,
        "after_retention": after,
        "retention_waited_s": round(waited, 1),
        "collected_bytes_per_replica": collected,
        "collected_after_retention_per_replica": {r: collected_bytes(replicas, r) for r in ids},
    }


def bench_join(replicas: RetainedReplicas, root: Path, join_mib: int) -> dict:
    options = operations.ClientOptions("bench", ServerFlags(replicas.bootstrap, replicas.namespace), timeout=600)
    work = root / "join-work"
    per_push = min(join_mib, 128) * MIB
    pushed, n = 0, 0
    while pushed < join_mib * MIB:
        n += 1
        pushed += write_files(work, f"j{n}", min(per_push, join_mib * MIB - pushed), 64)
        if n == 1:
            operations.init_repository(work, "history", options)
        else:
            operations.push_workdir(work, options, f"history {n}")
        for f in work.glob(f"j{n}-*"):  # keep the working copy small: the history is on the server
            f.unlink()
        if n > 1:
            operations.push_workdir(work, options, f"history {n} trimmed")
    ids = sorted(replicas.processes)
    end = log_end(replicas)
    wait_applied(replicas, ids, end, 1800)
    log_bytes = topic_sizes(replicas.settings, [replicas.settings.topics.log])[replicas.settings.topics.log]
    console.print(
        f"  {pushed / MIB:.0f} MiB of history, repo-log {log_bytes / MIB:.0f} MiB; replaying into a new replica"
    )

    started = time.monotonic()
    replicas.start("replay")
    wait_applied(replicas, ["replay"], end, 3600)
    replay_s = time.monotonic() - started
    replicas.stop_one("replay")

    console.print("  seeding a new replica from a snapshot of replica 1 (running)")
    snapshot = root / "r1.snapshot"
    server = str(BIN / "minigit-server")
    service = ["--bootstrap", replicas.bootstrap, "--namespace", replicas.namespace]  # whose snapshot it is
    started = time.monotonic()
    subprocess.run(
        [server, "snapshot", "create", str(snapshot), "--replica", "1", "--data-dir", str(replicas.data_dir), *service],
        check=True,
        capture_output=True,
    )
    created_s = time.monotonic() - started
    subprocess.run(
        [
            server,
            "snapshot",
            "restore",
            str(snapshot),
            "--replica",
            "seeded",
            "--data-dir",
            str(replicas.data_dir),
            *service,
        ],
        check=True,
        capture_output=True,
    )
    restored_s = time.monotonic() - started - created_s
    end = log_end(replicas)
    replicas.start("seeded")
    wait_applied(replicas, ["seeded"], end, 3600)
    snapshot_s = time.monotonic() - started
    replicas.stop_one("seeded")
    return {
        "history_bytes": pushed,
        "log_bytes": log_bytes,
        "snapshot_bytes": snapshot.stat().st_size,
        "replay_join_s": round(replay_s, 2),
        "snapshot_join_s": round(snapshot_s, 2),
        "snapshot_create_s": round(created_s, 2),
        "snapshot_restore_s": round(restored_s, 2),
    }


def report(results: dict) -> None:
    if "storage" in results:
        s = results["storage"]
        table = Table(
            title=f"bytes on disk per byte of accepted content ({s['content_bytes'] / MIB:.0f} MiB, "
            f"{s['replicas']} replicas; floor {s['floor_per_content_byte']}x)"
        )
        table.add_column("where")
        for column in ("before retention", "per content byte", "after retention", "per content byte "):
            table.add_column(column, justify="right")
        for where, size in s["before_retention"]["bytes"].items():
            later = s["after_retention"]["bytes"][where]
            table.add_row(
                where,
                f"{size / MIB:.1f} MiB",
                f"{size / s['content_bytes']:.2f}",
                f"{later / MIB:.1f} MiB",
                f"{later / s['content_bytes']:.2f}",
            )
        table.add_row(
            "total",
            f"{s['before_retention']['total'] / MIB:.1f} MiB",
            f"{s['before_retention']['per_content_byte']:.2f}",
            f"{s['after_retention']['total'] / MIB:.1f} MiB",
            f"{s['after_retention']['per_content_byte']:.2f}",
        )
        Console().print(table)
        in_use = s["after_retention"]["store_pages_in_use"]
        Console().print(
            "store pages in use after retention: "
            + ", ".join(f"{where}: {b / MIB:.1f} MiB ({b / s['content_bytes']:.2f})" for where, b in in_use.items())
        )
        collected = ", ".join(f"replica {r}: {b / MIB:.1f} MiB" for r, b in s["collected_bytes_per_replica"].items())
        Console().print(
            f"collected (rejected pushes, {s['rejected_upload_bytes'] / MIB:.0f} MiB uploaded): {collected}; "
            f"abandoned upload {s['abandoned_upload_bytes'] / MIB:.1f} MiB pending (a day of log time); "
            f"retention waited {s['retention_waited_s']} s"
        )
    if "join" in results:
        j = results["join"]
        table = Table(
            title=f"a new replica joins: {j['history_bytes'] / MIB:.0f} MiB of history "
            f"(repo-log {j['log_bytes'] / MIB:.0f} MiB)"
        )
        for column in ("replay the log", "from a snapshot", "of which create", "of which restore", "ratio"):
            table.add_column(column, justify="right")
        table.add_row(
            f"{j['replay_join_s']:.1f} s",
            f"{j['snapshot_join_s']:.1f} s",
            f"{j['snapshot_create_s']:.1f} s",
            f"{j['snapshot_restore_s']:.1f} s",
            f"{j['replay_join_s'] / max(j['snapshot_join_s'], 0.001):.1f}x",
        )
        Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--content-mib", type=int, default=64, help="accepted content pushed (MiB)")
    parser.add_argument("--join-mib", type=int, default=128, help="history for the join benchmark (MiB; 1024: 1 GiB)")
    parser.add_argument("--retention-ms", type=int, default=60_000, help="retention of the transient topics")
    parser.add_argument("--retention-wait", type=float, default=420, help="seconds to wait for retention to delete")
    parser.add_argument("--skip-storage", action="store_true")
    parser.add_argument("--skip-join", action="store_true")
    args = parser.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(tempfile.mkdtemp(prefix="minigit-bench-storage-"))
    use_own_config_dir(root)
    kafka_dir = root / "kafka"
    bootstrap = args.bootstrap
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "args": vars(args),
    }
    try:
        if bootstrap is None:
            bootstrap = start_kafka(kafka_dir)
        retention = TopicRetention.parse(args.retention_ms, args.retention_ms, 2 * MAX_PUSH, MAX_PUSH)
        (root / "server").mkdir()
        replicas = RetainedReplicas(bootstrap, f"benchstorage{int(time.time())}-", root / "server", retention)
        replicas.start_all()
        replicas.serving("warmup")
        if not args.skip_storage:
            console.print(f"[bold]storage[/] ({args.content_mib} MiB of content, retention {args.retention_ms} ms)")
            results["storage"] = bench_storage(replicas, root, args.content_mib, args.retention_wait)
            save(results, stamp)  # a long join phase may be stopped: this part is kept
            report({"storage": results["storage"]})
        if not args.skip_join:
            console.print(f"[bold]join[/] ({args.join_mib} MiB of history: replay against snapshot)")
            results["join"] = bench_join(replicas, root, args.join_mib)
            save(results, stamp)
        replicas.stop()
    finally:
        if args.bootstrap is None:
            subprocess.run(
                [str(BIN / "minigit-server"), "kafka", "stop", "--data-dir", str(kafka_dir)], capture_output=True
            )
        shutil.rmtree(root, ignore_errors=True)
    if "join" in results:
        report({"join": results["join"]})
    save(results, stamp)


def save(results: dict, stamp: str) -> None:
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"storage-{stamp}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
