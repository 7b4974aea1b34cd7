"""What a replica applies depends only on the log: records outside their
repository's partition change nothing, on live and rebuilt replicas alike; a
store a replica cannot use is moved aside and rebuilt from the log.

The stray records are signed writes whose proof of authorship holds (a request
signed by a registered user with write access, attested by the service's key,
as a replica proposes it): what makes every replica skip them is the partition
they sit in, not a missing signature."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time
from pathlib import Path

from kafka import KafkaProducer

from minigit import codec, identity
from minigit import protocol as p
from minigit.client import exchange, operations
from minigit.client import workspace as ws
from minigit_server import access
from minigit_server.replica import replica_log_path, store_path
from minigit_server.server_key import load_server_key, server_key_path

REPLICAS = ["1", "2", "3"]
PARTITIONS = 3  # the harness's log partitions


def init_repo(service, root: Path, name: str, files: dict[str, bytes]) -> None:
    root.mkdir(parents=True)
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    operations.init_repository(root, name, service.options(), "first")


def heads(states: dict, name: str) -> set:
    return {repos.get(name, (None,))[0] for _, repos in states.values()}


def signed_write(
    service, user: str, kind: type[p.InitRequest | p.PushRequest], blobs: list[bytes], **fields
) -> tuple[list[p.Chunk], p.Proposal]:
    """The chunks of ``blobs`` and the proposal a replica makes of ``user``'s
    request: the request signed by the user's key over those chunks, the key
    attested by the service's key (an operator's, read from the data dir), stamped now."""
    credentials = service.credentials(user)
    request = exchange.make_request(kind, user, 0, 30.0, **fields)
    chunks = [
        chunk
        for data in blobs
        for chunk in p.blob_chunks(request.request_id, request.repo, codec.BlobSource.from_bytes(data))
    ]
    digests = [identity.ChunkDigest.of(chunk) for chunk in chunks]
    request = exchange.sign_request(credentials, request, digests, service.namespace)
    server_key = load_server_key(server_key_path(service.data_dir))
    signed = p.SignedWrite(
        request=request.to_bytes().decode(),
        key=credentials.public_key,
        attestation=access.attest(server_key, service.namespace, request, credentials.public_key),
    )
    proposal_kind = p.PushProposal if kind is p.PushRequest else p.CreateProposal
    proposal = proposal_kind(
        **access.proposal_fields(request), time_ms=int(time.time() * 1000), proposer="x", signed=signed
    )
    # its proof of authorship holds: a replica would apply it, were it in its repository's partition
    server_public = identity.public_key_text(server_key.public_key())
    assert access.check_proposal(proposal, service.namespace, server_public) is None
    return chunks, proposal


def test_records_outside_their_partition_change_nothing_live_or_rebuilt(bare_service, tmp_path: Path) -> None:
    service = bare_service
    service.start(*REPLICAS)
    work = tmp_path / "gamma"
    init_repo(service, work, "gamma", {"a.txt": b"one\n"})
    service.register("mallory")
    service.share("gamma", "mallory")  # mallory may push to gamma
    partitions = service.bus.partition_count(service.bus.topics.log)
    home = p.log_partition("gamma", partitions)
    wrong = (home + 1) % partitions
    # A writer that picks the partition itself: a tree and a push for gamma, and a
    # create of another repository, all in a partition that is not theirs.
    stray = p.encode_tree({"stray.txt": p.FileEntry(p.hash_bytes(b"stray"), 5)})
    other = next(f"delta{i}" for i in range(100) if p.log_partition(f"delta{i}", partitions) != wrong)
    producer = KafkaProducer(bootstrap_servers=service.bootstrap)
    for repo, kind, fields in ((other, p.InitRequest, {}), ("gamma", p.PushRequest, {"base": 1})):
        chunks, proposal = signed_write(
            service, "mallory", kind, [stray, b"stray"], repo=repo, tree=p.hash_bytes(stray), message="stray", **fields
        )
        for record in [*chunks, proposal]:
            producer.send(service.bus.topics.log, record.to_bytes(), key=repo.encode(), partition=wrong)
    producer.flush()
    producer.close()

    # The owner's own push is version 2: the stray push did not take that place.
    (work / "a.txt").write_bytes(b"two\n")
    assert operations.push_workdir(work, service.options(), "second").new_version == 2
    live = service.wait_converged(REPLICAS)
    assert heads(live, "gamma") == {2} and heads(live, other) == {None}
    check_skipped_for_their_partition(service, REPLICAS, home, wrong, other)

    service.kill("2", signal.SIGTERM)
    shutil.rmtree(store_path(service.data_dir, "2").parent)
    service.start("2")
    rebuilt = service.wait_converged(REPLICAS)
    assert rebuilt["2"] == rebuilt["1"] == rebuilt["3"] == live["1"]
    check_skipped_for_their_partition(service, ["2"], home, wrong, other)
    for replica_id in REPLICAS:
        store = service.store(replica_id)
        try:
            assert [(v.version, v.author, v.message) for v in store.list_versions("gamma")] == [
                (1, "tester", "first"),
                (2, "tester", "second"),
            ]
        finally:
            store.close()
    clone = tmp_path / "clone"
    operations.clone_repository("gamma", clone, service.options())
    assert ws.list_files(clone) == ["a.txt"] and (clone / "a.txt").read_bytes() == b"two\n"


def check_skipped_for_their_partition(service, replica_ids: list[str], home: int, wrong: int, other: str) -> None:
    """Each replica skipped the stray records for the partition they sit in, and for nothing else."""
    for replica_id in replica_ids:
        log = replica_log_path(service.data_dir, replica_id).read_text()
        assert f"repository gamma belongs to partition {home}" in log, log
        assert f"repository {other} belongs to partition {p.log_partition(other, PARTITIONS)}" in log, log
        assert f"skipped log record {wrong}@" in log
        assert "by mallory:" not in log, log  # never skipped for its proof of authorship


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
