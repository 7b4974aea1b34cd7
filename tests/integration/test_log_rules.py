"""What a replica applies depends only on the log: records outside their
repository's partition change nothing, on live and rebuilt replicas alike; a
store a replica cannot use is moved aside and rebuilt from the log."""

from __future__ import annotations

import shutil
import signal
import sqlite3
from pathlib import Path

from kafka import KafkaProducer

from minigit import codec
from minigit import protocol as p
from minigit.client import operations
from minigit.client import workspace as ws
from minigit_server.replica import store_path

REPLICAS = ["1", "2", "3"]


def init_repo(service, root: Path, name: str, files: dict[str, bytes]) -> None:
    root.mkdir(parents=True)
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    operations.init_repository(root, name, service.options(), "first")


def heads(states: dict, name: str) -> set:
    return {repos.get(name, (None,))[0] for _, repos in states.values()}


def test_records_outside_their_partition_change_nothing_live_or_rebuilt(bare_service, tmp_path: Path) -> None:
    service = bare_service
    service.start(*REPLICAS)
    work = tmp_path / "gamma"
    init_repo(service, work, "gamma", {"a.txt": b"one\n"})
    partitions = service.bus.partition_count(service.bus.topics.log)
    home = p.log_partition("gamma", partitions)
    wrong = (home + 1) % partitions
    # A writer that picks the partition itself: a tree and a push for gamma, and a
    # create of another repository, all in a partition that is not theirs.
    stray = p.encode_tree({"stray.txt": p.FileEntry(p.hash_bytes(b"stray"), 5)})
    other = next(f"delta{i}" for i in range(100) if p.log_partition(f"delta{i}", partitions) != wrong)
    producer = KafkaProducer(bootstrap_servers=service.bootstrap)
    rid = p.new_request_id()
    for data in (stray, b"stray"):
        for chunk in p.blob_chunks(rid, "gamma", codec.BlobSource.from_bytes(data)):
            producer.send(service.bus.topics.log, chunk.to_bytes(), key=b"gamma", partition=wrong)
    proposal = dict(repo="gamma", user="mallory", tree=p.hash_bytes(stray), message="stray", time_ms=1, proposer="x")
    producer.send(
        service.bus.topics.log,
        p.PushProposal(request_id=rid, base=1, **proposal).to_bytes(),
        key=b"gamma",
        partition=wrong,
    )
    create = p.CreateProposal(request_id=p.new_request_id(), **(proposal | {"repo": other}))
    producer.send(service.bus.topics.log, create.to_bytes(), key=other.encode(), partition=wrong)
    producer.flush()
    producer.close()

    # The owner's own push is version 2: the stray push did not take that place.
    (work / "a.txt").write_bytes(b"two\n")
    assert operations.push_workdir(work, service.options(), "second").new_version == 2
    live = service.wait_converged(REPLICAS)
    assert heads(live, "gamma") == {2} and heads(live, other) == {None}

    service.kill("2", signal.SIGTERM)
    shutil.rmtree(store_path(service.data_dir, "2").parent)
    service.start("2")
    rebuilt = service.wait_converged(REPLICAS)
    assert rebuilt["2"] == rebuilt["1"] == rebuilt["3"] == live["1"]
    clone = tmp_path / "clone"
    operations.clone_repository("gamma", clone, service.options())
    assert ws.list_files(clone) == ["a.txt"] and (clone / "a.txt").read_bytes() == b"two\n"


def test_an_unusable_store_is_moved_aside_and_rebuilt_from_the_log(bare_service, tmp_path: Path) -> None:
    service = bare_service
    service.start(*REPLICAS)
    init_repo(service, tmp_path / "work", "kept", {"a.txt": b"a\n", "b.bin": bytes(range(256))})
    before = service.wait_converged(REPLICAS)
    for replica_id in ("1", "2"):
        service.kill(replica_id, signal.SIGTERM)
    garbage, old = store_path(service.data_dir, "1"), store_path(service.data_dir, "2")
    for suffix in ("-wal", "-shm"):
        garbage.with_name(garbage.name + suffix).unlink(missing_ok=True)
        old.with_name(old.name + suffix).unlink(missing_ok=True)
    garbage.write_bytes(garbage.read_bytes()[:100] + b"\0" * 4096)  # truncated and overwritten
    old.unlink()
    with sqlite3.connect(old) as db:  # a store of the first schema: no schema version
        db.execute("CREATE TABLE blobs (sha TEXT PRIMARY KEY, size INTEGER NOT NULL, count INTEGER NOT NULL)")
    service.start("1", "2")
    after = service.wait_converged(REPLICAS)
    assert after["1"] == after["2"] == before["3"]
    for path in (garbage, old):
        assert [a.name for a in path.parent.glob("store.sqlite.unusable-*") if a.suffix != ".sqlite-wal"]
        log = (path.parent / "replica.log").read_text()
        assert "is unusable" in log and "rebuilding from the log" in log
