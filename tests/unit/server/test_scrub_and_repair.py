"""A replica serves only bytes that match their hash: damaged objects are
quarantined and repaired from the log (minigit_server.service.Integrity), by
the serve path and by the scrub. Kafka is the in-memory wire; the real path is
tests/integration/test_integrity.py."""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from pathlib import Path

import pytest
from signing import AUTHORITY, NOW_MS, Client, make_service, signed_proposal

from minigit import codec
from minigit import protocol as p
from minigit_server.apply import LogRecord, apply_records
from minigit_server.service import Pace, Service, Unanswered
from minigit_server.store import MemoryStore, SqliteStore, Store

BIG = os.urandom(codec.CHUNK_SIZE + 4000)  # random: stored raw, in two pieces


def rid() -> str:
    return uuid.uuid4().hex


def new_service(store: Store | None = None) -> Service:
    return make_service(store)


@pytest.fixture
def service() -> Service:
    return new_service()


def create(service: Service, repo: str, files: dict[str, bytes]) -> str:
    """Create ``repo`` (private) with ``files``, as user u; return its tree id."""
    reply = Client(service, "u").commit(p.InitRequest, repo, files)
    assert reply.status == p.Status.ACCEPTED
    return service.store.get_version(repo, 1).tree


def flip(store: Store, partition: int, sha: str, index: int, count: int = 16) -> None:
    """Flip ``count`` bytes of one stored piece, as a bad disk would."""
    if isinstance(store, MemoryStore):
        piece = store.chunks[(partition, sha)][index]
        payload = bytes(b ^ 0xFF if i < count else b for i, b in enumerate(piece.payload))
        store.chunks[(partition, sha)][index] = codec.Piece(index, piece.encoding, payload)
    else:
        with sqlite3.connect(store.path) as db:
            query = "SELECT payload FROM chunks WHERE partition = ? AND sha = ? AND idx = ?"
            payload = db.execute(query, (partition, sha, index)).fetchone()[0]
            payload = bytes(b ^ 0xFF if i < count else b for i, b in enumerate(payload))
            db.execute(
                "UPDATE chunks SET payload = ? WHERE partition = ? AND sha = ? AND idx = ?",
                (payload, partition, sha, index),
            )


def clone(service: Service, repo: str) -> tuple[object, list[p.Message]]:
    """A clone by user u: what the service did, and what it sent (opened: sealed to u's reply key)."""
    client = Client(service, "u", reply_partition=3)
    request = client.request(p.PullRequest, repo)
    handled = client.send(request)
    return handled, client.records(request.request_id)


def blobs_sent(sent: list[p.Message]) -> dict[str, bytes]:
    """Every blob of an answer, put together and checked against its name."""
    pieces: dict[str, list[p.Chunk]] = {}
    for message in sent:
        if isinstance(message, p.Chunk):
            pieces.setdefault(message.sha, []).append(message)
    return {sha: codec.assemble(sha, chunks[0].count, (c.piece() for c in chunks)) for sha, chunks in pieces.items()}


def test_a_flipped_stored_chunk_is_never_sent_and_is_repaired_from_the_log(service: Service, caplog) -> None:
    create(service, "r", {"big.bin": BIG, "small.txt": b"small"})
    partition, sha = service.wire.log_partition("r"), codec.hash_bytes(BIG)
    flip(service.store, partition, sha, index=1)
    assert service.store.check_blob(partition, sha) == f"object {sha[:12]} does not match its content hash"

    with caplog.at_level(logging.ERROR, logger="minigit.service"):
        handled, sent = clone(service, "r")

    assert handled.status == p.Status.OK
    assert blobs_sent(sent)[sha] == BIG  # assemble() would raise on one bad byte
    assert service.store.check_blob(partition, sha) is None and service.store.read_blob(partition, sha) == BIG
    [record] = service.store.list_damage(quarantined_only=False)
    assert (record.sha, record.repaired_ms) == (sha, NOW_MS)
    assert service.store.list_damage() == []  # nothing quarantined any more
    said = caplog.text
    assert f"DAMAGED object {sha}" in said and "serving pull of r" in said and f"REPAIRED object {sha}" in said


def test_a_damaged_tree_is_repaired_before_it_is_read(service: Service) -> None:
    tree = create(service, "r", {"a.txt": b"a"})
    partition = service.wire.log_partition("r")
    flip(service.store, partition, tree, index=0, count=3)
    handled, sent = clone(service, "r")
    assert handled.status == p.Status.OK and tree in blobs_sent(sent)


def test_an_object_the_log_cannot_repair_is_not_sent_and_the_request_not_answered(service: Service) -> None:
    """No bad byte goes out, and no answer either: the client's retry reaches another replica."""
    create(service, "r", {"big.bin": BIG})
    partition, sha = service.wire.log_partition("r"), codec.hash_bytes(BIG)
    flip(service.store, partition, sha, index=0)
    log = service.wire.log[partition]
    log[:] = [value for value in log if sha.encode() not in value or b'"type":"chunk"' not in value]

    handled, sent = clone(service, "r")

    assert handled.status == Unanswered.DAMAGED and sha[:12] in handled.detail
    assert sent == []
    [record] = service.store.list_damage()
    assert (record.sha, record.repaired_ms) == (sha, None)
    assert service.integrity.quarantined() == (
        [p.DamagedObject(partition=partition, sha=sha, problem=record.problem, repaired=False)],
        1,
    )


def test_a_repair_writes_what_applying_the_log_wrote_even_after_a_bad_upload() -> None:
    """A hostile upload of the same sha with wrong bytes came first in the log; the
    applier dropped it, and the repair must drop it the same way."""
    service = new_service()
    partition, sha = service.wire.log_partition("r"), codec.hash_bytes(BIG)
    wrong = codec.BlobSource(sha, len(BIG), lambda: codec.split_bytes(os.urandom(len(BIG))))
    for chunk in p.blob_chunks(rid(), "r", wrong):
        service.handle(NOW_MS, chunk.to_bytes())
    create(service, "r", {"big.bin": BIG})
    expected = list(service.store.iter_chunks(partition, sha, 2))
    flip(service.store, partition, sha, index=0)
    assert service.integrity.ensure_sound(partition, sha, "testing")
    assert list(service.store.iter_chunks(partition, sha, 2)) == expected


def test_a_missing_piece_and_a_missing_blob_row_are_damage_too(service: Service) -> None:
    create(service, "r", {"big.bin": BIG})
    partition, sha = service.wire.log_partition("r"), codec.hash_bytes(BIG)
    del service.store.chunks[(partition, sha)][1]
    assert service.store.check_blob(partition, sha) == "chunk 1 of 2 is missing"
    assert service.integrity.ensure_sound(partition, sha, "testing")
    del service.store.blobs[(partition, sha)]
    assert service.store.check_blob(partition, sha) == "not in the store"
    assert service.integrity.ensure_sound(partition, sha, "testing")
    assert service.store.read_blob(partition, sha) == BIG


def test_a_scrub_reads_every_byte_reports_and_repairs_damage(service: Service) -> None:
    create(service, "r", {"big.bin": BIG, "small.txt": b"small"})
    create(service, "q", {"other.txt": b"other"})
    partition, sha = service.wire.log_partition("r"), codec.hash_bytes(BIG)
    flip(service.store, partition, sha, index=1)
    stored = sum(
        len(piece.payload) for (part, blob), pieces in service.store.chunks.items() for piece in pieces.values()
    )
    paced: list[int] = []

    tally = service.integrity.scrub(paced.append, lambda: False)

    assert tally.objects == len(service.store.blobs) == 5 and tally.bytes == sum(paced) == stored
    assert tally.damaged_count == 1
    [found] = tally.damaged
    assert (found.sha, found.partition, found.repaired) == (sha, partition, True)
    report = tally.report(request="0" * 32, finished_ms=NOW_MS + 1)
    assert p.ScrubReport.from_dict(report.to_dict()) == report  # fits the wire's own rules
    again = service.integrity.scrub(lambda n: None, lambda: False)
    assert (again.objects, again.damaged_count) == (5, 0)


def test_a_scrub_stops_when_asked(service: Service) -> None:
    create(service, "r", {"a.txt": b"a"})
    assert service.integrity.scrub(lambda n: None, lambda: True) is None


def test_a_scrub_lists_a_bounded_number_of_damaged_objects(service: Service) -> None:
    files = {f"f{n}.txt": f"content {n}".encode() for n in range(p.MAX_DAMAGE_LISTED + 5)}
    create(service, "r", files)
    partition = service.wire.log_partition("r")
    service.wire.log[partition].clear()  # nothing can be repaired
    for data in files.values():
        flip(service.store, partition, codec.hash_bytes(data), index=0, count=1)
    tally = service.integrity.scrub(lambda n: None, lambda: False)
    assert tally.damaged_count == len(files) and len(tally.damaged) == p.MAX_DAMAGE_LISTED
    listed, count = service.integrity.quarantined()
    assert count == len(files) and len(listed) == p.MAX_DAMAGE_LISTED
    p.ScrubReport.from_dict(tally.report("", NOW_MS).to_dict())


def test_pace_holds_a_reader_to_its_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pace = Pace(1000, clock=lambda: now[0], sleep=sleep)
    pace(500)
    pace(1500)
    assert slept == [0.5, 1.5] and now[0] == 2.0
    now[0] += 10  # a slow disk: no sleeping to catch up on
    pace(100)
    assert len(slept) == 2
    unlimited = Pace(None, clock=lambda: 0.0, sleep=sleep)
    unlimited(10**9)
    assert len(slept) == 2


def test_the_sqlite_store_repairs_and_remembers_damage(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite")
    service = new_service(store)
    create(service, "r", {"big.bin": BIG})
    partition, sha = service.wire.log_partition("r"), codec.hash_bytes(BIG)
    assert store.list_blobs(None, 100) == sorted(store.list_blobs(None, 100)) and len(store.list_blobs(None, 100)) == 2
    first = store.list_blobs(None, 1)
    assert store.list_blobs(first[0], 100) == store.list_blobs(None, 100)[1:]
    flip(store, partition, sha, index=1)
    handled, sent = clone(service, "r")
    assert handled.status == p.Status.OK and blobs_sent(sent)[sha] == BIG
    assert store.check_blob(partition, sha) is None
    assert [(d.sha, d.repaired_ms) for d in store.list_damage(quarantined_only=False)] == [(sha, NOW_MS)]
    assert not list(tmp_path.glob("repair-*"))  # the scratch store is gone
    store.close()


def test_a_schema_2_store_without_the_damage_table_gets_it_on_open(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE damaged")
    store = SqliteStore(path)
    assert store.list_damage() == []
    store.close()


def test_apply_alone_never_reads_the_damage_table() -> None:
    """Quarantine is this replica's finding, not state: applying the same log to a
    store with and without damage records makes the same digests."""
    source = new_service()
    create(source, "r", {"a.txt": b"a"})
    records = [LogRecord(n, o, v) for n, values in source.wire.log.items() for o, v in enumerate(values)]
    clean, marked = MemoryStore(), MemoryStore()
    from minigit_server.store import DamageRecord

    marked.mark_damaged(DamageRecord(0, "a" * 64, "x", 1))
    apply_records(clean, records, 3, AUTHORITY)
    apply_records(marked, records, 3, AUTHORITY)
    assert clean.repo_digest("r") == marked.repo_digest("r") == source.store.repo_digest("r")
    assert clean.get_repo("r").head == 1


def test_a_damaged_tree_a_decision_reads_is_repaired_before_deciding(service: Service) -> None:
    """A push whose tree this replica holds damaged (here: a revert to version 1's
    tree) was decided "invalid tree" by it alone, and "accepted" by every other
    replica. Now nothing is applied until the tree is repaired from the log."""
    import logging as logging_module

    from minigit_server.apply import StoreDamaged
    from minigit_server.replica import Replica

    first = create(service, "r", {"a.txt": b"a"})
    partition = service.wire.log_partition("r")
    pushed = Client(service, "u").commit(p.PushRequest, "r", {"b.txt": b"a"}, base=1)
    assert pushed.status == p.Status.ACCEPTED and service.store.get_repo("r").head == 2
    flip(service.store, partition, first, index=0, count=3)
    revert = signed_proposal(
        p.PushProposal, request_id=rid(), repo="r", user="u", tree=first, message="back", time_ms=NOW_MS, base=2
    )
    record = LogRecord(partition, len(service.wire.log[partition]), revert.to_bytes())
    service.wire.log[partition].append(revert.to_bytes())

    with pytest.raises(StoreDamaged):  # applying alone decides nothing
        apply_records(service.store, [record], service.wire.log_partitions, AUTHORITY)
    assert service.store.get_repo("r").head == 2

    replica = object.__new__(Replica)
    replica.store, replica.service, replica.log = service.store, service, logging_module.getLogger("test")
    replica.server = service.server
    replica.apply_soundly([record], service.wire.log_partitions)
    assert service.store.get_repo("r").head == 3 and service.store.check_blob(partition, first) is None
    assert service.store.get_version("r", 3).tree == first


def test_a_tombstone_in_the_log_does_not_stop_a_repair(service: Service, monkeypatch) -> None:
    """Anyone who may write repo-log can write a record without a value; a repair
    reading past one must skip it, not fail (an outside tester's finding)."""
    create(service, "r", {"big.bin": BIG})
    partition, sha = service.wire.log_partition("r"), codec.hash_bytes(BIG)
    records = service.wire.scan_log

    def with_a_tombstone_first(partition: int, end_offset: int, timeout_s: float):
        yield LogRecord(partition, 0, None)
        yield from records(partition, end_offset, timeout_s)

    monkeypatch.setattr(service.wire, "scan_log", with_a_tombstone_first)
    flip(service.store, partition, sha, index=1)
    handled, sent = clone(service, "r")
    assert handled.status == p.Status.OK and blobs_sent(sent)[sha] == BIG
    assert service.store.check_blob(partition, sha) is None
