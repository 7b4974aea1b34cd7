"""minigit_server.apply + minigit_server.store: the replication log applied to a store.

Every scenario runs against both stores (MemoryStore and SqliteStore); the
cross-checks apply one log to both and compare everything they hold.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import sqlite3
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigit import codec
from minigit import protocol as p
from minigit_server import decisions
from minigit_server.apply import LogRecord, apply_record, apply_records
from minigit_server.store import MemoryStore, SqliteStore, Store, VersionInfo

REPO = "repo"
# One log partition: every repository belongs to partition 0 (the tests of
# partition rules say otherwise where they need to).
PARTITIONS = 1


# ---------------------------------------------------------------- building a log


class Log:
    """Builds log records the way owners write them: chunks first, then the proposal."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        self.records: list[LogRecord] = []
        self.counter = 0

    def rid(self) -> str:
        self.counter += 1
        return f"{self.partition:08x}{self.counter:024x}"

    def add(self, value: bytes) -> LogRecord:
        record = LogRecord(self.partition, len(self.records), value)
        self.records.append(record)
        return record

    def chunks(self, content: bytes, sha: str | None = None, repo: str = REPO) -> list[p.Chunk]:
        blob = codec.BlobSource(sha or p.hash_bytes(content), len(content), lambda: codec.split_bytes(content))
        return list(p.blob_chunks(self.rid(), repo, blob))

    def blob(self, content: bytes, repo: str = REPO) -> str:
        for chunk in self.chunks(content, repo=repo):
            self.add(chunk.to_bytes())
        return p.hash_bytes(content)

    def tree(self, files: dict[str, bytes], repo: str = REPO, upload_blobs: bool = True) -> str:
        manifest = {}
        for path, content in files.items():
            manifest[path] = p.FileEntry(p.hash_bytes(content), len(content))
            if upload_blobs:
                self.blob(content, repo)
        return self.blob(p.encode_tree(manifest), repo)

    def raw_tree(self, tree_bytes: bytes, repo: str = REPO) -> str:
        return self.blob(tree_bytes, repo)

    def create(self, tree: str, repo: str = REPO, rid: str | None = None, **extra) -> str:
        rid = rid or self.rid()
        values = dict(request_id=rid, repo=repo, user="alice", tree=tree, message="init", time_ms=1000, proposer="r0")
        values.update(extra)
        self.add(p.CreateProposal(**values).to_bytes())
        return rid

    def push(self, base: int, tree: str, repo: str = REPO, rid: str | None = None, **extra) -> str:
        rid = rid or self.rid()
        values = dict(
            request_id=rid,
            repo=repo,
            user="bob",
            tree=tree,
            message=f"push on {base}",
            time_ms=2000 + self.counter,
            proposer="r1",
            base=base,
        )
        values.update(extra)
        self.add(p.PushProposal(**values).to_bytes())
        return rid


def make_store(kind: str, path: Path) -> Store:
    return MemoryStore() if kind == "memory" else SqliteStore(path / f"{kind}.db")


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = make_store(request.param, tmp_path)
    yield s
    s.close()


@pytest.fixture
def pair(tmp_path):
    a, b = MemoryStore(), SqliteStore(tmp_path / "pair.db")
    yield a, b
    b.close()


def outcome(store: Store, rid: str) -> decisions.Outcome | None:
    """The stored outcome, without the key of the request it decided."""
    found = store.get_outcome(0, rid)
    return dataclasses.replace(decisions.Outcome.from_json(found), request="") if found is not None else None


def state(store: Store, rids=(), shas=()) -> dict:
    """Everything a store holds that matters, in comparable form."""
    return {
        "offsets": store.applied_offsets(),
        "repos": store.list_repos(),
        "versions": {r.name: store.list_versions(r.name) for r in store.list_repos()},
        "digests": {r.name: store.repo_digest(r.name) for r in store.list_repos()},
        "outcomes": {rid: store.get_outcome(0, rid) for rid in rids},
        "blobs": {sha: (store.blob_size(0, sha), store.blob_chunk_count(0, sha)) for sha in shas},
    }


def apply_both(pair, records, rids=(), shas=()):
    a, b = pair
    done_a = apply_records(a, records, PARTITIONS)
    done_b = apply_records(b, records, PARTITIONS)
    assert [(r, m) for r, m in done_a] == [(r, m) for r, m in done_b]
    assert state(a, rids, shas) == state(b, rids, shas)
    return done_a


# ---------------------------------------------------------------- create and push


def test_create_then_pushes(store):
    log = Log()
    t1 = log.tree({"a.txt": b"one", "d/b.bin": b"\x00\x01"})
    created = log.create(t1)
    t2 = log.tree({"a.txt": b"two", "d/b.bin": b"\x00\x01"})
    accepted = log.push(1, t2)
    t3 = log.tree({"a.txt": b"three"})
    stale = log.push(1, t3)
    same = log.push(2, t2)
    ahead = log.push(5, t3)
    missing_repo = log.push(1, t3, repo="nope")
    again = log.create(t3)
    apply_records(store, log.records, PARTITIONS)

    assert outcome(store, created) == decisions.Outcome(p.Status.ACCEPTED, 1, 1, "created at version 1")
    assert outcome(store, accepted) == decisions.Outcome(p.Status.ACCEPTED, 2, 2, "accepted as version 2")
    assert outcome(store, stale) == decisions.Outcome(
        p.Status.REJECTED, 2, None, "version mismatch: head is 2, push based on 1"
    )
    assert outcome(store, same) == decisions.Outcome(p.Status.UP_TO_DATE, 2, None, "nothing to push")
    assert outcome(store, ahead).status == p.Status.REJECTED
    assert outcome(store, missing_repo) == decisions.Outcome(p.Status.NOT_FOUND, None, None, "no such repository")
    assert outcome(store, again) == decisions.Outcome(p.Status.EXISTS, 2, None, "repository already exists")

    repo = store.get_repo(REPO)
    assert repo.head == 2 and repo.partition == 0
    assert repo.changed_at == log.records.index(next(r for r in log.records if accepted in r.value.decode()))
    assert store.get_repo("nope") is None
    versions = store.list_versions(REPO)
    assert [(v.version, v.tree, v.author, v.request_id) for v in versions] == [
        (1, t1, "alice", created),
        (2, t2, "bob", accepted),
    ]
    assert store.read_manifest(REPO, 2) == {
        "a.txt": p.FileEntry(p.hash_bytes(b"two"), 3),
        "d/b.bin": p.FileEntry(p.hash_bytes(b"\x00\x01"), 2),
    }
    assert store.read_manifest(REPO, 0) == {}
    with pytest.raises(LookupError):
        store.read_manifest(REPO, 3)
    assert store.read_blob(0, p.hash_bytes(b"two")) == b"two"
    assert store.applied_offsets() == {0: len(log.records)}


def test_create_with_an_empty_tree_and_empty_file(store):
    log = Log()
    empty = log.tree({})
    assert empty == p.EMPTY_TREE_SHA
    rid = log.create(empty)
    t2 = log.tree({"empty.txt": b""})
    rid2 = log.push(1, t2)
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, rid).status == p.Status.ACCEPTED
    assert outcome(store, rid2).status == p.Status.ACCEPTED
    assert store.blob_size(0, p.hash_bytes(b"")) == 0
    assert store.read_blob(0, p.hash_bytes(b"")) == b""


def test_apply_record_returns_the_message(store):
    log = Log()
    t = log.tree({})
    log.create(t)
    with store.transaction():
        messages = [apply_record(store, r, PARTITIONS) for r in log.records]
    assert isinstance(messages[0], p.Chunk)
    assert isinstance(messages[-1], p.CreateProposal)


# ---------------------------------------------------------------- chunks


def test_chunks_out_of_order_and_duplicated(store):
    content = os.urandom(2 * codec.CHUNK_SIZE + 5)
    sha = p.hash_bytes(content)
    log = Log()
    chunks = log.chunks(content)
    assert len(chunks) == 3
    for index in (2, 0, 2, 0):
        log.add(chunks[index].to_bytes())
    apply_records(store, log.records, PARTITIONS)
    assert store.blob_size(0, sha) is None
    assert store.count_present_chunks(0, sha, 3) == 2
    log.add(chunks[1].to_bytes())
    log.add(chunks[1].to_bytes())
    log.add(chunks[0].to_bytes())
    apply_records(store, log.records, PARTITIONS)
    assert store.blob_size(0, sha) == len(content)
    assert store.blob_chunk_count(0, sha) == 3
    assert store.read_blob(0, sha) == content


def test_compressible_multi_chunk_blob(store):
    content = b"abc" * codec.CHUNK_SIZE
    log = Log()
    sha = log.blob(content)
    apply_records(store, log.records, PARTITIONS)
    assert store.read_blob(0, sha) == content
    assert store.blob_size(0, sha) == len(content)


def test_blob_with_wrong_hash_is_dropped_then_completed_by_a_clean_upload(store):
    good = os.urandom(codec.CHUNK_SIZE + 10)
    sha = p.hash_bytes(good)
    log = Log()
    for chunk in log.chunks(os.urandom(codec.CHUNK_SIZE + 10), sha=sha):  # lies about its sha
        log.add(chunk.to_bytes())
    apply_records(store, log.records, PARTITIONS)
    assert store.blob_size(0, sha) is None
    assert store.count_present_chunks(0, sha, 2) == 0  # the bad pieces are gone
    t = log.tree({"f": good}, upload_blobs=False)
    failed = log.create(t, rid=log.rid())
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, failed).status == p.Status.MISSING_OBJECTS
    log.blob(good)
    t_rid = log.create(t)
    apply_records(store, log.records, PARTITIONS)
    assert store.read_blob(0, sha) == good
    assert outcome(store, t_rid).status == p.Status.ACCEPTED


def test_corrupt_chunk_payload_drops_the_blob(store):
    content = b"hello " * 100
    sha = p.hash_bytes(content)
    log = Log()
    bad = p.Chunk(
        request_id=log.rid(),
        repo=REPO,
        sha=sha,
        index=0,
        count=1,
        encoding="zlib",
        data=base64.b64encode(b"not zlib at all").decode(),
    )
    log.add(bad.to_bytes())
    bomb = p.Chunk(
        request_id=log.rid(),
        repo=REPO,
        sha=sha,
        index=0,
        count=1,
        encoding="zlib",
        data=base64.b64encode(zlib.compress(bytes(codec.CHUNK_SIZE + 1))).decode(),
    )
    log.add(bomb.to_bytes())
    not_b64 = bad.to_dict() | {"data": "!!!"}
    log.add(json.dumps(not_b64).encode())
    apply_records(store, log.records, PARTITIONS)
    assert store.blob_size(0, sha) is None
    assert store.count_present_chunks(0, sha, 1) == 0
    log.blob(content)
    apply_records(store, log.records, PARTITIONS)
    assert store.read_blob(0, sha) == content


def test_chunks_of_a_complete_blob_are_ignored(store):
    content = b"data"
    log = Log()
    sha = log.blob(content)
    apply_records(store, log.records, PARTITIONS)
    liar = log.chunks(b"other", sha=sha)[0]
    log.add(liar.to_bytes())
    apply_records(store, log.records, PARTITIONS)
    assert store.read_blob(0, sha) == content


# ---------------------------------------------------------------- tree problems


def test_push_referencing_a_missing_blob(store):
    log = Log()
    t1 = log.tree({"a": b"1"})
    log.create(t1)
    t2 = log.tree({"a": b"1", "b": b"never uploaded", "c": b"neither"}, upload_blobs=False)
    rid = log.push(1, t2)
    no_tree = log.push(1, p.hash_bytes(b"no such tree"))
    apply_records(store, log.records, PARTITIONS)
    # "a" was uploaded with version 1: two objects are missing
    assert outcome(store, rid) == decisions.Outcome(
        p.Status.MISSING_OBJECTS, 1, None, "2 object(s) were not uploaded completely"
    )
    assert outcome(store, no_tree) == decisions.Outcome(
        p.Status.MISSING_OBJECTS, 1, None, "the tree was not uploaded completely"
    )
    assert store.get_repo(REPO).head == 1
    assert len(store.list_versions(REPO)) == 1


def test_create_referencing_a_missing_blob_creates_nothing(store):
    log = Log()
    t = log.tree({"a": b"1"}, upload_blobs=False)
    rid = log.create(t)
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, rid) == decisions.Outcome(
        p.Status.MISSING_OBJECTS, None, None, "1 object(s) were not uploaded completely"
    )
    assert store.get_repo(REPO) is None
    assert store.list_versions(REPO) == []


def _evil_tree(path: str, sha: str) -> bytes:
    return p.encode_tree({path: p.FileEntry(sha, 1)})


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/.minigit", "a\\b", "a//b"])
def test_tree_with_unsafe_path_is_invalid(store, path):
    log = Log()
    blob = log.blob(b"x")
    evil = log.raw_tree(_evil_tree(path, blob))
    bad_create = log.create(evil, repo="other")
    log.create(log.tree({"ok": b"x"}))
    bad_push = log.push(1, evil)
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, bad_create).status == p.Status.INVALID
    assert outcome(store, bad_create).head is None
    assert store.get_repo("other") is None
    assert outcome(store, bad_push).status == p.Status.INVALID
    assert outcome(store, bad_push).head == 1
    assert store.get_repo(REPO).head == 1


def test_tree_with_file_directory_clash_is_invalid(store):
    log = Log()
    blob = log.blob(b"x")
    evil = log.raw_tree(p.encode_tree({"a": p.FileEntry(blob, 1), "a/b": p.FileEntry(blob, 1)}))
    rid = log.create(evil)
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, rid).status == p.Status.INVALID


# ---------------------------------------------------------------- retries


def test_retried_proposal_gets_the_original_outcome(store):
    log = Log()
    t1 = log.tree({"a": b"1"})
    create = log.create(t1)
    t2 = log.tree({"a": b"2"})
    push = log.push(1, t2)
    log.push(1, t2, rid=push)  # retry: would now be rejected (head is 2)
    log.create(t1, rid=create)  # retry: would now be "exists"
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, push) == decisions.Outcome(p.Status.ACCEPTED, 2, 2, "accepted as version 2")
    assert outcome(store, create).status == p.Status.ACCEPTED
    assert [v.version for v in store.list_versions(REPO)] == [1, 2]


def test_a_request_id_reused_with_other_contents_is_another_request(store):
    """The same id in the same partition for another repository (or other contents)
    is refused, stores nothing, and leaves the first request's outcome as it was."""
    log = Log()
    log.create(log.tree({"a": b"1"}))
    log.create(log.tree({"a": b"1"}, repo="other"), repo="other")
    push = log.push(1, log.tree({"a": b"2"}))
    stolen = log.push(1, log.tree({"a": b"3"}, repo="other"), repo="other", rid=push)
    done = dict(apply_records(store, log.records, PARTITIONS))
    assert stolen == push and outcome(store, push) == decisions.Outcome(
        p.Status.ACCEPTED, 2, 2, "accepted as version 2"
    )
    assert store.get_repo("other").head == 1
    stolen_record = log.records[-1]
    assert isinstance(done[stolen_record], p.PushProposal)
    assert decisions.outcome_of(store.get_outcome(0, push), "another key", 1).message == (
        "request id already used by another request"
    )


def test_retry_of_a_rejected_push_stays_rejected(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    t2 = log.tree({"a": b"2"})
    early = log.push(2, t2)  # head is 1: rejected
    log.push(1, log.tree({"a": b"3"}))  # head becomes 2
    log.push(2, t2, rid=early)  # retry: base == head now, but the original outcome stands
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, early).status == p.Status.REJECTED
    assert outcome(store, early).head == 1
    assert store.get_repo(REPO).head == 2
    assert [v.version for v in store.list_versions(REPO)] == [1, 2]


# ---------------------------------------------------------------- malformed records


def _sample_request() -> bytes:
    return p.PushRequest(request_id="a" * 32, repo=REPO, user="u", reply_partition=0, base=1, tree="b" * 64).to_bytes()


MALFORMED = [
    None,  # a tombstone: a record with no value
    b"[" * 100_000,  # a nesting bomb: deeper than the JSON decoder's recursion limit
    b"",
    b"\xff\xfe",
    b"not json",
    b"[]",
    b"null",
    b'{"v": 2, "type": "chunk"}',
    b'{"v": 1, "type": "nope"}',
    b'{"v": 1, "type": "propose", "action": "delete"}',
    b'{"v": 1, "type": "propose", "action": "push"}',
    _sample_request(),  # a request has no business in the log
    json.dumps(
        {
            "v": 1,
            "type": "propose",
            "action": "push",
            "request_id": "a" * 32,
            "repo": "../x",
            "user": "u",
            "tree": "b" * 64,
            "message": "",
            "time_ms": 1,
            "proposer": "r",
            "base": 1,
        }
    ).encode(),
    json.dumps(
        {
            "v": 1,
            "type": "propose",
            "action": "push",
            "request_id": "a" * 32,
            "repo": REPO,
            "user": "u",
            "tree": "b" * 64,
            "message": "",
            "time_ms": 1,
            "proposer": "r",
            "base": True,
        }
    ).encode(),
    json.dumps(
        {
            "v": 1,
            "type": "chunk",
            "request_id": "a" * 32,
            "repo": REPO,
            "sha": "b" * 64,
            "index": 1,
            "count": 1,
            "encoding": "raw",
            "data": "",
        }
    ).encode(),
]


def test_malformed_records_are_skipped_deterministically(pair):
    log = Log()
    for value in MALFORMED:
        log.add(value)
    t = log.tree({"a": b"1"})
    rid = log.create(t)
    log.add(b"garbage after")
    rid2 = log.push(1, log.tree({"a": b"2"}))
    done = apply_both(pair, log.records, rids=[rid, rid2], shas=[t])
    results = {r.offset: m for r, m in done}
    for offset in range(len(MALFORMED)):
        assert results[offset] is None
    assert len(done) == len(log.records)
    for store in pair:
        assert store.applied_offsets() == {0: len(log.records)}
        assert outcome(store, rid).status == p.Status.ACCEPTED
        assert outcome(store, rid2).status == p.Status.ACCEPTED


@pytest.mark.parametrize("value", [b'{"v": 1, "type": ["chunk"]}', b'{"v": 1, "type": "propose", "action": {}}'])
def test_record_with_unhashable_type_is_skipped(store, value):
    log = Log()
    log.add(value)
    done = apply_records(store, log.records, PARTITIONS)
    assert done == [(log.records[0], None)]
    assert store.applied_offsets() == {0: 1}


@pytest.mark.parametrize("what", ["time_ms", "chunk"])
def test_huge_integers_are_handled_alike(pair, what):
    log = Log()
    t = log.tree({"a": b"1"})
    if what == "time_ms":
        log.create(t, time_ms=10**20)
    else:
        log.add(
            p.Chunk(
                request_id=log.rid(), repo=REPO, sha="c" * 64, index=10**19, count=10**20, encoding="raw", data=""
            ).to_bytes()
        )
        log.create(t)
    apply_both(pair, log.records)


def test_lone_surrogate_in_a_proposal_message(pair):
    log = Log()
    t = log.tree({"a": b"1"})
    doc = p.CreateProposal(
        request_id=log.rid(), repo=REPO, user="u", tree=t, message="x", time_ms=1, proposer="r"
    ).to_dict()
    raw = json.dumps(doc).replace('"message": "x"', '"message": "\\ud800"').encode()
    assert b"\\ud800" in raw
    log.add(raw)
    apply_both(pair, log.records)
    for store in pair:
        store.repo_digest(REPO)


# ---------------------------------------------------------------- offsets and transactions


def test_records_below_the_stored_offset_are_skipped(store):
    log = Log()
    t1 = log.tree({"a": b"1"})
    rid = log.create(t1)
    first = len(log.records)
    apply_records(store, log.records, PARTITIONS)
    assert store.applied_offsets() == {0: first}
    t2 = log.tree({"a": b"2"})
    push = log.push(1, t2)
    # redelivery of everything: only the new records are applied
    done = apply_records(store, log.records, PARTITIONS)
    assert [r.offset for r, _ in done] == list(range(first, len(log.records)))
    assert outcome(store, push).status == p.Status.ACCEPTED
    assert store.get_repo(REPO).head == 2
    # and once more: nothing at all
    assert apply_records(store, log.records, PARTITIONS) == []
    assert store.get_repo(REPO).head == 2
    assert outcome(store, rid).status == p.Status.ACCEPTED


def test_duplicate_within_one_batch_is_applied_once(store):
    log = Log()
    t = log.tree({"a": b"1"})
    log.create(t)
    records = log.records + log.records[:2]
    done = apply_records(store, records, PARTITIONS)
    assert len(done) == len(log.records)
    assert store.applied_offsets() == {0: len(log.records)}


def repo_in(partition: int, partitions: int, prefix: str = "r") -> str:
    """A repository name whose records belong to ``partition``."""
    return next(f"{prefix}{i}" for i in range(1000) if p.log_partition(f"{prefix}{i}", partitions) == partition)


def test_offsets_are_per_partition(store):
    log0, log1 = Log(0), Log(1)
    zero, one = repo_in(0, 2), repo_in(1, 2)
    t0 = log0.tree({"a": b"0"}, repo=zero)
    r0 = log0.create(t0, repo=zero)
    t1 = log1.tree({"a": b"1"}, repo=one)
    r1 = log1.create(t1, repo=one)
    apply_records(store, log0.records, 2)
    apply_records(store, log1.records, 2)  # same offsets, other partition: not skipped
    assert store.applied_offsets() == {0: len(log0.records), 1: len(log1.records)}
    assert decisions.Outcome.from_json(store.get_outcome(0, r0)).status == p.Status.ACCEPTED
    assert decisions.Outcome.from_json(store.get_outcome(1, r1)).status == p.Status.ACCEPTED
    assert store.get_repo(one).partition == 1
    assert [r.name for r in store.list_repos()] == sorted([zero, one])


def test_log_partition_is_kafkas_default_partitioner():
    from kafka.partitioner.default import murmur2

    for name in ["a", "repo", "LaboratorioDistribuidos", "x" * 64, "é", *(f"r{i}" for i in range(200))]:
        for partitions in (1, 3, 6, 50):
            assert p.log_partition(name, partitions) == (murmur2(name.encode()) & 0x7FFFFFFF) % partitions


def test_records_outside_their_repositorys_partition_change_nothing(pair):
    """Two proposals for one repository, one written into another partition: only
    the one in the repository's own partition counts, on every replica."""
    home, away = Log(0), Log(1)
    repo = repo_in(0, 2)
    t1 = home.tree({"a": b"1"}, repo=repo)
    created = home.create(t1, repo=repo)
    stray_tree = away.tree({"a": b"stray"}, repo=repo)  # chunks in the wrong partition
    stray_push = away.push(1, stray_tree, repo=repo)
    stray_create = away.create(stray_tree, repo=repo_in(0, 2, prefix="s"))
    for store in pair:
        done = apply_records(store, away.records, 2) + apply_records(store, home.records, 2)
        assert all(message is None for record, message in done if record.partition == 1)
        assert store.get_repo(repo).head == 1 and store.get_repo(repo).partition == 0
        assert store.get_outcome(1, stray_push) is None and store.get_outcome(1, stray_create) is None
        assert store.blob_size(1, stray_tree) is None and store.blob_size(0, stray_tree) is None
        assert decisions.Outcome.from_json(store.get_outcome(0, created)).status == p.Status.ACCEPTED
        assert store.applied_offsets() == {0: len(home.records), 1: len(away.records)}
    assert pair[0].repo_digest(repo) == pair[1].repo_digest(repo)


def test_a_blob_uploaded_in_another_partition_does_not_count(store):
    """Content seen in another partition is not there for this one: otherwise the
    outcome would depend on how far each partition had been applied."""
    first, second = Log(0), Log(1)
    a, b = repo_in(0, 2), repo_in(1, 2)
    shared = b"the same content in two repositories"
    first.create(first.tree({"f": shared}, repo=a), repo=a)
    tree_b = second.tree({"f": shared}, repo=b, upload_blobs=False)  # its own upload was cut short
    cut_short = second.create(tree_b, repo=b)
    apply_records(store, first.records, 2)
    apply_records(store, second.records, 2)
    assert decisions.Outcome.from_json(store.get_outcome(1, cut_short)).status == p.Status.MISSING_OBJECTS
    assert store.get_repo(b) is None


def test_a_request_id_is_remembered_in_its_own_partition_only(store):
    first, second = Log(0), Log(1)
    a, b = repo_in(0, 2), repo_in(1, 2)
    rid = first.rid()
    first.create(first.tree({}, repo=a), repo=a, rid=rid)
    again = second.create(second.tree({}, repo=b), repo=b, rid=rid)
    apply_records(store, first.records, 2)
    apply_records(store, second.records, 2)
    assert again == rid and store.get_repo(b).head == 1


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 2), min_size=12, max_size=12))
def test_partitions_apply_alike_in_any_interleaving(order):
    """The same partition logs, applied in any interleaving across partitions,
    give the same store: nothing a partition decides depends on another."""
    logs = [Log(n) for n in range(3)]
    names = [repo_in(n, 3) for n in range(3)]
    shared = b"shared content"
    for n, log in enumerate(logs):
        t = log.tree({"s": shared, "own": bytes([n])}, repo=names[n], upload_blobs=n == 0)
        log.create(t, repo=names[n])
        log.push(1, log.tree({"s": shared}, repo=names[n], upload_blobs=False), repo=names[n])
    reference, shuffled = MemoryStore(), MemoryStore()
    for log in logs:
        apply_records(reference, log.records, 3)
    cursors = [0, 0, 0]
    for n in order:
        batch = logs[n].records[cursors[n] : cursors[n] + 2]
        cursors[n] += len(batch)
        apply_records(shuffled, batch, 3)
    for n, log in enumerate(logs):
        apply_records(shuffled, log.records[cursors[n] :], 3)
    assert {name: shuffled.repo_digest(name) for name in names} == {name: reference.repo_digest(name) for name in names}
    assert shuffled.outcomes == reference.outcomes and shuffled.blobs == reference.blobs


def test_failure_mid_batch_persists_nothing(store, monkeypatch):
    log = Log()
    t1 = log.tree({"a": b"1"})
    create = log.create(t1)
    before = state(store, [create], [t1])
    calls = []

    def boom(repo, info):
        calls.append(info)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "add_version", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        apply_records(store, log.records, PARTITIONS)
    assert calls
    monkeypatch.undo()
    if isinstance(store, SqliteStore):
        store.close()
        store = SqliteStore(store.path)  # what a restarted replica sees
    assert state(store, [create], [t1]) == before
    assert store.applied_offsets() == {}
    assert store.blob_size(0, t1) is None
    assert store.count_present_chunks(0, t1, 1) == 0
    assert store.get_outcome(0, create) is None
    # the redelivered batch applies cleanly
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, create).status == p.Status.ACCEPTED
    assert store.applied_offsets() == {0: len(log.records)}


def test_failure_in_a_later_batch_keeps_earlier_batches(store, monkeypatch):
    log = Log()
    t1 = log.tree({"a": b"1"})
    log.create(t1)
    first = len(log.records)
    apply_records(store, log.records, PARTITIONS)
    push = log.push(1, log.tree({"a": b"2"}))
    original = store.set_applied
    calls = {"n": 0}

    def flaky(partition, offset):
        calls["n"] += 1
        if calls["n"] == 2:
            raise sqlite3.OperationalError("database is locked")
        original(partition, offset)

    monkeypatch.setattr(store, "set_applied", flaky)
    with pytest.raises(sqlite3.OperationalError):
        apply_records(store, log.records, PARTITIONS)
    monkeypatch.undo()
    assert store.applied_offsets() == {0: first}
    assert store.get_outcome(0, push) is None
    assert store.get_repo(REPO).head == 1
    apply_records(store, log.records, PARTITIONS)
    assert store.get_repo(REPO).head == 2


def test_sqlite_store_survives_a_restart(tmp_path):
    log = Log()
    t1 = log.tree({"a": b"1"})
    log.create(t1)
    half = len(log.records)
    log.push(1, log.tree({"a": b"2", "b": b"3"}))
    s = SqliteStore(tmp_path / "r.db")
    apply_records(s, log.records[:half], PARTITIONS)
    s.close()
    s = SqliteStore(tmp_path / "r.db")
    apply_records(s, log.records, PARTITIONS)  # the whole log redelivered
    mem = MemoryStore()
    apply_records(mem, log.records, PARTITIONS)
    assert state(s) == state(mem)
    assert s.get_repo(REPO).head == 2
    s.close()


# ---------------------------------------------------------------- digests


def _scenario_log() -> tuple[Log, list[str]]:
    log = Log()
    rids = [log.create(log.tree({"a": b"1", "ü/b": b"2"}))]
    rids.append(log.push(1, log.tree({"a": b"1"}), message="ünïcödé ✓"))
    rids.append(log.push(1, log.tree({"a": b"x"})))
    rids.append(log.push(2, log.tree({"a": b"y"})))
    rids.append(log.create(log.tree({}), repo="second"))
    return log, rids


def test_repo_digest_equal_across_stores(pair):
    log, rids = _scenario_log()
    apply_both(pair, log.records, rids=rids)
    a, b = pair
    assert a.repo_digest(REPO) == b.repo_digest(REPO)
    assert a.repo_digest("second") == b.repo_digest("second")
    assert a.repo_digest(REPO) != a.repo_digest("second")
    assert a.repo_digest("absent") == b.repo_digest("absent")
    # batch boundaries do not matter
    c = MemoryStore()
    for record in log.records:
        apply_records(c, [record], PARTITIONS)
    assert c.repo_digest(REPO) == a.repo_digest(REPO)


@pytest.mark.parametrize(
    "column, value",
    [("message", "tampered"), ("author", "mallory"), ("time_ms", 1), ("tree", "f" * 64), ("request_id", "e" * 32)],
)
def test_repo_digest_differs_when_a_version_row_differs(pair, column, value):
    log, rids = _scenario_log()
    apply_both(pair, log.records, rids=rids)
    mem, sql = pair
    before = sql.repo_digest(REPO)
    with sql.transaction():
        sql._db().execute(f"UPDATE versions SET {column} = ? WHERE repo = ? AND version = 2", (value, REPO))
    assert sql.repo_digest(REPO) != before
    assert sql.repo_digest(REPO) != mem.repo_digest(REPO)
    # the same change in the memory store gives the same digest again
    old = mem.versions[REPO][2]
    mem.versions[REPO][2] = VersionInfo(**{**old.__dict__, column: value})
    assert mem.repo_digest(REPO) == sql.repo_digest(REPO)


def test_repo_digest_differs_when_head_or_tree_blob_differs(pair):
    log, rids = _scenario_log()
    apply_both(pair, log.records, rids=rids)
    mem, sql = pair
    digest = mem.repo_digest(REPO)
    head_tree = mem.get_version(REPO, mem.get_repo(REPO).head).tree
    del mem.blobs[(0, head_tree)]
    assert mem.repo_digest(REPO) != digest
    with sql.transaction():
        sql._db().execute("UPDATE repos SET head = 2 WHERE name = ?", (REPO,))
    assert sql.repo_digest(REPO) != digest


# ---------------------------------------------------------------- interleavings, as a property

TREE_FILES = [{"f": bytes([i]) * (i + 1), "common": b"c"} for i in range(4)]


def _prefix() -> tuple[Log, list[str]]:
    log = Log()
    trees = [log.tree(files) for files in TREE_FILES]
    log.create(trees[0])
    return log, trees


push_actions = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 4), st.integers(1, 6), st.integers(0, 3)),  # client, base, tree
        st.tuples(st.just("retry"), st.integers(0, 50), st.just(0), st.just(0)),
        st.tuples(st.just("junk"), st.just(0), st.just(0), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(push_actions, st.lists(st.integers(1, 40), max_size=5), st.lists(st.integers(1, 40), max_size=5))
def test_interleaved_pushes_give_identical_stores(actions, cuts_a, cuts_b):
    log, trees = _prefix()
    pushes: list[tuple[str, int, str]] = []
    for kind, client, base, tree_index in actions:
        if kind == "push":
            rid = f"f{client:x}" + f"{len(log.records):030x}"  # never one of Log.rid()'s
            log.push(base, trees[tree_index], rid=rid, user=f"client{client}", time_ms=len(log.records))
            pushes.append((rid, base, trees[tree_index]))
        elif kind == "retry" and pushes:
            rid, base, tree = pushes[client % len(pushes)]
            log.push(base, tree, rid=rid, time_ms=len(log.records))
        else:
            log.add(b'{"v": 1, "type": "junk"}')

    def batches(cuts):
        points = sorted({c for c in cuts if c < len(log.records)})
        start = 0
        for point in [*points, len(log.records)]:
            yield log.records[start:point]
            start = point

    with tempfile.TemporaryDirectory() as tmp:
        mem, sql = MemoryStore(), SqliteStore(Path(tmp) / "s.db")
        try:
            for batch in batches(cuts_a):
                apply_records(mem, batch, PARTITIONS)
            for batch in batches(cuts_b):
                apply_records(sql, batch, PARTITIONS)
            rids = [rid for rid, _, _ in pushes]
            assert state(mem, rids) == state(sql, rids)
            assert mem.repo_digest(REPO) == sql.repo_digest(REPO)
        finally:
            sql.close()

    # a model of the rule: the first record of each request id decides; base == head wins
    head, head_tree, seen, expected = 1, trees[0], set(), {}
    for rid, base, tree in pushes:
        if rid in seen:
            continue
        seen.add(rid)
        if base != head:
            expected[rid] = (p.Status.REJECTED, None)
        elif tree == head_tree:
            expected[rid] = (p.Status.UP_TO_DATE, None)
        else:
            head, head_tree = head + 1, tree
            expected[rid] = (p.Status.ACCEPTED, head)
    accepted_bases = []
    for rid, (status, version) in expected.items():
        got = outcome(mem, rid)
        assert (got.status, got.version) == (status, version)
        if status == p.Status.ACCEPTED:
            accepted_bases.append(version - 1)
    assert len(accepted_bases) == len(set(accepted_bases))  # at most one accepted push per base
    versions = mem.list_versions(REPO)
    assert [v.version for v in versions] == list(range(1, head + 1))
    assert mem.get_repo(REPO).head == head
    assert versions[-1].tree == head_tree
    # consecutive versions never share a tree (an unchanged tree is "nothing to push")
    assert all(a.tree != b.tree for a, b in itertools.pairwise(versions))


# ---------------------------------------------------------------- stores this version cannot use


def test_a_store_of_another_schema_or_not_a_database_is_unusable(tmp_path):
    from minigit_server.store import SCHEMA_VERSION, StoreUnusable

    fresh = SqliteStore(tmp_path / "fresh.sqlite")
    fresh.close()
    SqliteStore(tmp_path / "fresh.sqlite").close()  # its own schema: reopens
    (tmp_path / "garbage.sqlite").write_bytes(b"not a database" * 500)
    with pytest.raises(StoreUnusable, match="not a database"):
        SqliteStore(tmp_path / "garbage.sqlite")
    with sqlite3.connect(tmp_path / "first.sqlite") as db:
        db.execute("CREATE TABLE blobs (sha TEXT PRIMARY KEY, size INTEGER NOT NULL, count INTEGER NOT NULL)")
    with pytest.raises(StoreUnusable, match=f"schema version 0, this replica needs {SCHEMA_VERSION}"):
        SqliteStore(tmp_path / "first.sqlite")


def test_an_unusable_store_is_moved_aside_and_a_new_one_opened(tmp_path):
    import logging

    from minigit_server.replica import open_store

    path = tmp_path / "replica-1" / "store.sqlite"
    path.parent.mkdir()
    path.write_bytes(b"\0" * 8192)
    store = open_store(path, logging.getLogger("test"))
    assert store.applied_offsets() == {} and store.list_repos() == []
    store.close()
    [aside] = path.parent.glob("store.sqlite.unusable-*")
    assert aside.read_bytes() == b"\0" * 8192


def test_a_store_with_a_damaged_page_is_unusable(tmp_path):
    from minigit_server.store import StoreUnusable

    store = SqliteStore(tmp_path / "s.sqlite")
    log = Log()
    log.create(log.tree({f"f{n}": os.urandom(3000) for n in range(40)}))
    apply_records(store, log.records, PARTITIONS)
    store.close()
    with open(tmp_path / "s.sqlite", "r+b") as file:  # page 5 overwritten: the header is intact
        file.seek(4 * 4096)
        file.write(b"\xab" * 4096)
    with pytest.raises(StoreUnusable):
        SqliteStore(tmp_path / "s.sqlite")


def test_a_store_that_cannot_be_opened_is_an_error_not_damage(tmp_path):
    """Permissions, a full disk or a directory in the way: nothing to rebuild, a failure to report."""
    from minigit_server.store import StoreUnusable

    (tmp_path / "s.sqlite").mkdir()
    with pytest.raises(sqlite3.OperationalError, match="unable to open") as raised:
        SqliteStore(tmp_path / "s.sqlite")
    assert not isinstance(raised.value, StoreUnusable)


def test_a_replica_reports_a_store_it_cannot_open_and_moves_nothing(tmp_path):
    import logging

    from minigit.errors import MinigitError
    from minigit_server.replica import open_store

    (tmp_path / "store.sqlite").mkdir()
    with pytest.raises(MinigitError, match="cannot open the store"):
        open_store(tmp_path / "store.sqlite", logging.getLogger("test"))
    assert [path.name for path in tmp_path.iterdir()] == ["store.sqlite"]


# ---------------------------------------------------------------- a damaged store


def lose_blob_row(store: Store, sha: str) -> None:
    """What the attack did to one replica's file: its row of a blob deleted, its pieces left."""
    if isinstance(store, MemoryStore):
        del store.blobs[(0, sha)]
    else:
        with store.transaction():
            store._db().execute("DELETE FROM blobs WHERE sha = ?", (sha,))
    assert store.blob_size(0, sha) is None


@pytest.mark.parametrize("lost", ["a file", "the tree"])
def test_a_store_that_lost_a_blob_row_decides_a_push_as_every_other_replica(tmp_path, lost: str) -> None:
    """A replica whose store had lost one blob's row decided a push "missing
    objects" where the others accepted it, and kept a different history for good.
    Its pieces are still there: the blob is completed again, and it decides the same."""
    log = Log()
    old = log.tree({"a.txt": b"one", "b.bin": b"\x00" * 70_000})
    log.create(old)
    new = log.tree({"a.txt": b"two", "b.bin": b"\x00" * 70_000}, upload_blobs=False)
    log.add(log.chunks(b"two")[0].to_bytes())
    pushed = log.push(1, new)
    healthy, damaged = MemoryStore(), SqliteStore(tmp_path / "damaged.db")
    try:
        apply_records(healthy, log.records[:-1], PARTITIONS)
        apply_records(damaged, log.records[:-1], PARTITIONS)
        lose_blob_row(damaged, p.hash_bytes(b"\x00" * 70_000) if lost == "a file" else new)
        apply_records(healthy, log.records[-1:], PARTITIONS)
        apply_records(damaged, log.records[-1:], PARTITIONS)
        assert outcome(damaged, pushed) == outcome(healthy, pushed)
        assert outcome(healthy, pushed).status == p.Status.ACCEPTED
        assert damaged.repo_digest(REPO) == healthy.repo_digest(REPO)
    finally:
        damaged.close()


def test_an_upload_still_under_way_is_not_taken_for_a_lost_row(store) -> None:
    """The first pieces of a blob do not hash to its name: nothing is completed, the push misses it."""
    log = Log()
    log.create(log.tree({"a.txt": b"one"}))
    big = os.urandom(3 * codec.CHUNK_SIZE)
    for chunk in log.chunks(big)[:2]:
        log.add(chunk.to_bytes())
    pushed = log.push(1, log.tree({"big": big}, upload_blobs=False))
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, pushed).status == p.Status.MISSING_OBJECTS
    assert store.blob_size(0, p.hash_bytes(big)) is None
