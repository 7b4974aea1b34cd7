"""minigit_server.apply + minigit_server.store: the replication log applied to a store.

Every scenario runs against both stores (MemoryStore and SqliteStore); the
cross-checks apply one log to both and compare everything they hold.
"""

from __future__ import annotations

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
from signing import (
    AUTHORITY,
    NAMESPACE,
    SERVER_KEY,
    admin_proposal,
    delete_proposal,
    key_text,
    signed_proposal,
    user_key,
)

from minigit import codec, identity
from minigit import protocol as p
from minigit_server import access, decisions
from minigit_server import apply as apply_module
from minigit_server.apply import LogRecord
from minigit_server.store import MemoryStore, SqliteStore, Store, VersionInfo

REPO = "repo"
T_ANY = "7" * 64
# One log partition: every repository belongs to partition 0 (the tests of
# partition rules say otherwise where they need to).
PARTITIONS = 1
WINDOW = access.REPLAY_WINDOW_MS


def apply_records(store: Store, records, partitions: int, authority=AUTHORITY):
    """Apply as every replica of the test service does (its namespace and key)."""
    return apply_module.apply_records(store, records, partitions, authority)


def apply_record(store: Store, record: LogRecord, partitions: int, authority=AUTHORITY):
    return apply_module.apply_record(store, record, partitions, authority)


# ---------------------------------------------------------------- building a log


class Log:
    """Builds log records the way owners write them: chunks first, then the proposal,
    which carries its request signed by its user's test key (signing.user_key) and
    the test service's attestation of that key."""

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

    def propose(self, kind: type[p.Proposal], values: dict, extra: dict) -> str:
        """Add a signed ``kind`` proposal; ``extra`` overrides ``values`` and may say
        how it is signed (signing.signed_proposal's key, signed_ms, server_key...)."""
        values = {**values, **extra}
        values["request_id"] = values.get("request_id") or self.rid()
        self.add(signed_proposal(kind, **values).to_bytes())
        return values["request_id"]

    def create(self, tree: str, repo: str = REPO, rid: str | None = None, **extra) -> str:
        values = dict(request_id=rid, repo=repo, user="alice", tree=tree, message="init", time_ms=1000, proposer="r0")
        return self.propose(p.CreateProposal, values, extra)

    def push(self, base: int, tree: str, repo: str = REPO, rid: str | None = None, **extra) -> str:
        values = dict(
            request_id=rid,
            repo=repo,
            user="alice",
            tree=tree,
            message=f"push on {base}",
            time_ms=2000 + self.counter,
            proposer="r1",
            base=base,
        )
        return self.propose(p.PushProposal, values, extra)

    def share(self, member: str, level: p.Access, repo: str = REPO, rid: str | None = None, **extra) -> str:
        values = dict(request_id=rid, repo=repo, user="alice", member=member, level=level, time_ms=3000, proposer="r2")
        return self.propose(p.ShareProposal, values, extra)

    def visibility(self, visibility: p.Visibility, repo: str = REPO, rid: str | None = None, **extra) -> str:
        values = dict(request_id=rid, repo=repo, user="alice", visibility=visibility, time_ms=3000, proposer="r2")
        return self.propose(p.VisibilityProposal, values, extra)

    def register(self, user: str, public_key: str | None = None, rid: str | None = None, **extra) -> str:
        """``user`` claims its name for ``public_key`` (its test key), signed by that key."""
        public_key = public_key or key_text(user_key(user))
        values = dict(request_id=rid, repo=user, user=user, public_key=public_key, time_ms=4000, proposer="r0")
        return self.propose(p.RegisterProposal, values, extra)

    def rotate(self, user: str, new_key: str, rid: str | None = None, **extra) -> str:
        values = dict(request_id=rid, repo=user, user=user, new_key=new_key, time_ms=4000, proposer="r0")
        return self.propose(p.RotateProposal, values, extra)

    def admin(self, user: str, op: p.AdminOp, public_key: str = "", rid: str | None = None, **extra) -> str:
        rid = rid or self.rid()
        self.add(admin_proposal(user, op, public_key, request_id=rid, **extra).to_bytes())
        return rid

    def settle(self, of_request: str, tree: str, repo: str = REPO, rid: str | None = None, **extra) -> str:
        values = dict(
            request_id=rid, repo=repo, user="alice", of_request=of_request, tree=tree, time_ms=5000, proposer="r1"
        )
        return self.propose(p.SettleProposal, values, extra)

    def delete(self, repo: str = REPO, rid: str | None = None, **extra) -> str:
        rid = rid or self.rid()
        self.add(delete_proposal(repo, request_id=rid, **extra).to_bytes())
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
    """The stored outcome, without what is stored and not sent (the key of the request
    it decided, its repository, whose requests a cancellation binds)."""
    found = store.get_outcome(0, rid)
    if found is None:
        return None
    return dataclasses.replace(decisions.Outcome.from_json(found), request="", repo="", cancels=())


def state(store: Store, rids=(), shas=()) -> dict:
    """Everything a store holds that matters, in comparable form."""
    return {
        "offsets": store.applied_offsets(),
        "repos": store.list_repos(),
        "members": {r.name: store.get_members(r.name) for r in store.list_repos()},
        "accounts": store.list_accounts(),
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
    shared = log.share("bob", p.Access.WRITE)
    t2 = log.tree({"a.txt": b"two", "d/b.bin": b"\x00\x01"})
    accepted = log.push(1, t2, user="bob")
    t3 = log.tree({"a.txt": b"three"})
    stale = log.push(1, t3)
    same = log.push(2, t2)
    ahead = log.push(5, t3)
    missing_repo = log.push(1, t3, repo="nope")
    again = log.create(t3)
    apply_records(store, log.records, PARTITIONS)

    assert outcome(store, created) == decisions.Outcome(p.Status.ACCEPTED, 1, 1, "created at version 1")
    assert outcome(store, shared) == decisions.Outcome(p.Status.ACCEPTED, 1, None, "bob now has write access to repo")
    assert outcome(store, accepted) == decisions.Outcome(p.Status.ACCEPTED, 2, 2, "accepted as version 2")
    assert outcome(store, stale) == decisions.Outcome(
        p.Status.REJECTED, 2, None, "version mismatch: head is 2, push based on 1"
    )
    assert outcome(store, same) == decisions.Outcome(p.Status.UP_TO_DATE, 2, None, "nothing to push")
    assert outcome(store, ahead).status == p.Status.REJECTED
    assert outcome(store, missing_repo) == decisions.Outcome(p.Status.NOT_FOUND, None, None, "no such repository")
    assert outcome(store, again) == decisions.Outcome(p.Status.EXISTS, 2, None, "repository already exists")

    repo = store.get_repo(REPO)
    assert (repo.head, repo.partition, repo.owner, repo.visibility) == (2, 0, "alice", "private")
    assert store.get_members(REPO) == {"bob": "write"}
    assert repo.changed_at == log.records.index(next(r for r in log.records if accepted.encode() in r.value))
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
        payload=b"not zlib at all",
    )
    log.add(bad.to_bytes())
    bomb = p.Chunk(
        request_id=log.rid(),
        repo=REPO,
        sha=sha,
        index=0,
        count=1,
        encoding="zlib",
        payload=zlib.compress(bytes(codec.CHUNK_SIZE + 1)),
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
    log.blob(b"x", "other"), log.raw_tree(_evil_tree(path, blob), "other")  # uploaded to "other" too
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
                request_id=log.rid(), repo=REPO, sha="c" * 64, index=10**19, count=10**20, encoding="raw", payload=b""
            ).to_bytes()
        )
        log.create(t)
    apply_both(pair, log.records)


def test_lone_surrogate_in_a_proposal_message(pair):
    log = Log()
    t = log.tree({"a": b"1"})
    doc = signed_proposal(
        p.CreateProposal, request_id=log.rid(), repo=REPO, user="u", tree=t, message="x", time_ms=1, proposer="r"
    ).to_dict()
    raw = json.dumps(doc).replace('"message": "x"', '"message": "\\ud800"').encode()
    assert raw.count(b"\\ud800") == 1
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
    [
        ("message", "tampered"),
        ("author", "mallory"),
        ("time_ms", 1),
        ("tree", "f" * 64),
        ("request_id", "e" * 32),
        ("signed", "{}"),
    ],
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
CLIENTS = 5


def _prefix() -> tuple[Log, list[str]]:
    log = Log()
    trees = [log.tree(files) for files in TREE_FILES]
    log.create(trees[0])
    for client in range(CLIENTS):
        log.share(f"client{client}", p.Access.WRITE)
    return log, trees


def forge(log: Log, how: int, rid: str, user: str, base: int, tree: str, time_ms: int) -> None:
    """A push record whose proof of authorship does not hold, in one of several ways."""
    values = dict(request_id=rid, repo=REPO, user=user, tree=tree, message="forged", base=base, time_ms=time_ms)
    if how == 0:  # signed by another key than the (attested) one it names
        named = key_text(user_key(user))
        proposal = signed_proposal(p.PushProposal, key=user_key("mallory"), named_key=named, **values)
    elif how == 1:  # another key, the service's attestation of it forged too
        proposal = signed_proposal(p.PushProposal, key=user_key("mallory"), server_key=user_key("mallory"), **values)
    elif how == 2:  # a genuine request, its proposal says another tree
        genuine = signed_proposal(p.PushProposal, **values)
        proposal = dataclasses.replace(genuine, tree=p.hash_bytes(tree.encode()))
    elif how == 3:  # signed too long before the owner proposed it: a replay
        proposal = signed_proposal(p.PushProposal, signed_ms=time_ms + WINDOW + 1, **values)
    else:  # no proof at all
        proposal = dataclasses.replace(signed_proposal(p.PushProposal, **values), signed=None)
    log.add(proposal.to_bytes())


push_actions = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 4), st.integers(1, 6), st.integers(0, 3)),  # client, base, tree
        st.tuples(st.just("retry"), st.integers(0, 50), st.just(0), st.just(0)),
        st.tuples(st.just("junk"), st.just(0), st.just(0), st.just(0)),
        # a forged push (in one of 5 ways) that takes the request id the next genuine push will use
        st.tuples(st.just("forged"), st.integers(0, 4), st.integers(1, 6), st.integers(0, 3)),
    ),
    max_size=25,
)


def push_rid(number: int) -> str:
    return f"f{number:031x}"  # never one of Log.rid()'s


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(push_actions, st.lists(st.integers(1, 40), max_size=5), st.lists(st.integers(1, 40), max_size=5))
def test_interleaved_pushes_give_identical_stores(actions, cuts_a, cuts_b):
    log, trees = _prefix()
    pushes: list[tuple[str, int, str]] = []
    users: dict[str, str] = {}
    for kind, client, base, tree_index in actions:
        if kind == "push":
            rid = push_rid(len(users))
            users[rid] = f"client{client}"
            log.push(base, trees[tree_index], rid=rid, user=users[rid], time_ms=len(log.records))
            pushes.append((rid, base, trees[tree_index]))
        elif kind == "retry" and pushes:
            rid, base, tree = pushes[client % len(pushes)]
            log.push(base, tree, rid=rid, user=users[rid], time_ms=len(log.records))
            pushes.append((rid, base, tree))
        elif kind == "forged":
            rid = push_rid(len(users))
            forge(log, client, rid, f"client{client}", base, trees[tree_index], len(log.records))
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

    # a model of the rule: the first genuine record of each request id decides (forged
    # ones are skipped and leave no trace); base == head wins
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


# ---------------------------------------------------------------- proofs of authorship


def test_a_version_keeps_the_proof_of_the_write_that_made_it(store):
    log = Log()
    created = log.create(log.tree({"a": b"1"}))
    apply_records(store, log.records, PARTITIONS)
    proposal = p.parse_message(log.records[-1].value)
    version = store.get_version(REPO, 1)
    assert version.request_id == created and version.signed == proposal.signed.to_text()
    proof = p.SignedWrite.from_text(version.signed)
    request = proof.parsed_request()
    assert isinstance(request, p.InitRequest) and request.signature
    assert identity.request_signed_by(proof.key, request, NAMESPACE)
    assert request.chunks == identity.NO_CHUNKS  # what the Log's owner signed it with
    assert proof.key == key_text(user_key("alice"))
    assert identity.attested_by(
        AUTHORITY.server_key, NAMESPACE, "alice", proof.key, request.signature, proof.attestation
    )


def _mallory_signs(values: dict) -> p.Proposal:
    """Mallory signs alice's request with her own key and names alice's."""
    return signed_proposal(p.PushProposal, key=user_key("mallory"), named_key=key_text(user_key("alice")), **values)


def _attested_by_mallory(values: dict) -> p.Proposal:
    return signed_proposal(p.PushProposal, key=user_key("mallory"), server_key=user_key("mallory"), **values)


def _with_proof(values: dict, **changes) -> p.Proposal:
    genuine = signed_proposal(p.PushProposal, **values)
    return dataclasses.replace(genuine, signed=dataclasses.replace(genuine.signed, **changes))


def _with_signed_request(values: dict, **changes) -> p.Proposal:
    """The genuine proposal, its signed request changed after it was signed."""
    genuine = signed_proposal(p.PushProposal, **values)
    request = dataclasses.replace(genuine.signed.parsed_request(), **changes)
    return _with_proof(values, request=request.to_bytes().decode())


def _attestation_of_another_request(values: dict) -> p.Proposal:
    other = signed_proposal(p.PushProposal, **{**values, "message": "another request"})
    return _with_proof(values, attestation=other.signed.attestation)


def _a_create_signed_as_a_push(values: dict) -> p.Proposal:
    genuine = signed_proposal(p.PushProposal, **values)
    fields = {k: v for k, v in values.items() if k != "base"}
    return p.CreateProposal(**fields, proposer="r1", signed=genuine.signed)


FORGERIES = {
    "unsigned": lambda values: dataclasses.replace(signed_proposal(p.PushProposal, **values), signed=None),
    "another tree than signed": lambda values: dataclasses.replace(
        signed_proposal(p.PushProposal, **values), tree="e" * 64
    ),
    "another base than signed": lambda values: dataclasses.replace(signed_proposal(p.PushProposal, **values), base=2),
    "another message than signed": lambda values: dataclasses.replace(
        signed_proposal(p.PushProposal, **values), message="not what alice said"
    ),
    "another user than signed": lambda values: dataclasses.replace(
        signed_proposal(p.PushProposal, **values), user="bob"
    ),
    "another request id than signed": lambda values: dataclasses.replace(
        signed_proposal(p.PushProposal, **{**values, "request_id": "d" * 32}), request_id=values["request_id"]
    ),
    "another action than signed": _a_create_signed_as_a_push,
    "signed by another key": _mallory_signs,
    "its key attested by another key": _attested_by_mallory,
    "no attestation": lambda values: signed_proposal(p.PushProposal, server_key=None, **values),
    "an attestation of another request": _attestation_of_another_request,
    "another chunks digest than signed": lambda values: _with_signed_request(values, chunks="c" * 64),
    "a signed request that does not parse": lambda values: _with_proof(values, request='{"v": 1}'),
    "signed for another namespace": lambda values: signed_proposal(p.PushProposal, namespace="other-ns", **values),
    "signed too long before": lambda values: signed_proposal(
        p.PushProposal, signed_ms=values["time_ms"] - WINDOW - 1, **values
    ),
    "signed too far ahead": lambda values: signed_proposal(
        p.PushProposal, signed_ms=values["time_ms"] + WINDOW + 1, **values
    ),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_proposal_whose_proof_does_not_hold_is_skipped_and_stores_nothing(store, forgery):
    """Every replica skips it alike, and stores no outcome: so a forged record
    cannot use up a request id the genuine request comes with later."""
    log = Log()
    log.create(log.tree({"a": b"1"}))
    tree = log.tree({"a": b"2"})
    apply_records(store, log.records, PARTITIONS)
    before = state(store, shas=[tree])
    rid = log.rid()
    values = dict(request_id=rid, repo=REPO, user="alice", tree=tree, message="m", time_ms=9000, base=1)
    forged = log.add(FORGERIES[forgery](values).to_bytes())
    done = apply_records(store, log.records, PARTITIONS)
    assert [record for record, _ in done] == [forged]
    assert isinstance(done[0][1], p.Proposal)  # it parsed: what is wrong is its proof
    assert store.get_outcome(0, rid) is None
    assert {**state(store, shas=[tree]), "offsets": None} == {**before, "offsets": None}
    genuine = log.push(1, tree, rid=rid)
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, genuine) == decisions.Outcome(p.Status.ACCEPTED, 2, 2, "accepted as version 2")


@pytest.mark.parametrize("skew_ms", [-WINDOW, WINDOW])
def test_a_request_signed_at_the_edge_of_the_window_counts(store, skew_ms):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    pushed = log.push(1, log.tree({"a": b"2"}), time_ms=10 * WINDOW, signed_ms=10 * WINDOW + skew_ms)
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, pushed).status == p.Status.ACCEPTED


def test_a_forged_retry_of_a_decided_request_gets_its_outcome_and_changes_nothing(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    tree = log.tree({"a": b"2"})
    pushed = log.push(1, tree)
    apply_records(store, log.records, PARTITIONS)
    before = state(store, [pushed])
    values = dict(request_id=pushed, repo=REPO, user="alice", tree=tree, message="push on 1", time_ms=1, base=1)
    log.add(_mallory_signs(values).to_bytes())
    apply_records(store, log.records, PARTITIONS)
    assert {**state(store, [pushed]), "offsets": None} == {**before, "offsets": None}


# ---------------------------------------------------------------- permissions


def test_a_push_without_write_access_is_denied_and_changes_nothing(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))  # private, alice's
    log.create(log.tree({"a": b"1"}, repo="open"), repo="open", visibility=p.Visibility.PUBLIC)
    log.share("carol", p.Access.READ)
    apply_records(store, log.records, PARTITIONS)
    before = state(store)
    tree = log.tree({"a": b"2"})
    stranger = log.push(1, tree, user="bob")
    reader = log.push(1, tree, user="carol")
    public = log.push(1, log.tree({"a": b"2"}, repo="open"), repo="open", user="bob")
    apply_records(store, log.records, PARTITIONS)
    # the refusal, then what to do about it
    assert outcome(store, stranger) == decisions.Outcome(
        p.Status.DENIED,
        1,
        None,
        "permission denied: bob may not push to repo (private); ask its owner to share it with you",
    )
    assert outcome(store, reader) == decisions.Outcome(
        p.Status.DENIED, 1, None, "permission denied: carol may not push to repo (read only); ask its owner (alice)"
    )
    assert outcome(store, public) == decisions.Outcome(
        p.Status.DENIED, 1, None, "permission denied: bob may not push to open (read only); ask its owner (alice)"
    )
    after = state(store)
    assert {**after, "offsets": None} == {**before, "offsets": None}
    writer = log.share("carol", p.Access.WRITE)
    accepted = log.push(1, tree, user="carol")
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, writer).status == outcome(store, accepted).status == p.Status.ACCEPTED
    assert store.get_version(REPO, 2).author == "carol"


def test_the_owner_shares_and_only_admins_change_access(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    apply_records(store, log.records, PARTITIONS)
    steps = [
        (lambda: log.share("bob", p.Access.WRITE), p.Status.ACCEPTED, {"bob": "write"}),
        (lambda: log.share("carol", p.Access.READ, user="bob"), p.Status.DENIED, {"bob": "write"}),
        (lambda: log.share("bob", p.Access.ADMIN), p.Status.ACCEPTED, {"bob": "admin"}),
        (lambda: log.share("carol", p.Access.READ, user="bob"), p.Status.ACCEPTED, {"bob": "admin", "carol": "read"}),
        (lambda: log.share("carol", p.Access.READ), p.Status.UP_TO_DATE, {"bob": "admin", "carol": "read"}),
        (lambda: log.share("alice", p.Access.NONE, user="bob"), p.Status.INVALID, {"bob": "admin", "carol": "read"}),
        (lambda: log.share("carol", p.Access.NONE), p.Status.ACCEPTED, {"bob": "admin"}),
        (lambda: log.share("carol", p.Access.NONE), p.Status.UP_TO_DATE, {"bob": "admin"}),
        (lambda: log.share("dave", p.Access.READ, user="carol"), p.Status.DENIED, {"bob": "admin"}),
    ]
    for number, (share, status, members) in enumerate(steps):
        rid = share()
        apply_records(store, log.records, PARTITIONS)
        assert (number, outcome(store, rid).status, store.get_members(REPO)) == (number, status, members)
    assert outcome(store, rid).message == (
        "permission denied: carol may not share repo (private); ask its owner to share it with you"
    )
    owner_changed = log.share("alice", p.Access.READ)
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, owner_changed).message == "alice owns repo: an owner's access cannot change"
    assert store.get_repo(REPO).owner == "alice" and store.get_repo(REPO).head == 1


def test_visibility_is_changed_by_admins_only(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    log.share("bob", p.Access.ADMIN)
    log.share("carol", p.Access.WRITE)
    by_writer = log.visibility(p.Visibility.PUBLIC, user="carol")
    by_stranger = log.visibility(p.Visibility.PUBLIC, user="dave")
    by_admin = log.visibility(p.Visibility.PUBLIC, user="bob")
    again = log.visibility(p.Visibility.PUBLIC)
    missing = log.visibility(p.Visibility.PUBLIC, repo="nope")
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, by_writer).status == p.Status.DENIED
    assert outcome(store, by_stranger) == decisions.Outcome(
        p.Status.DENIED,
        1,
        None,
        "permission denied: dave may not change repo (private); ask its owner to share it with you",
    )
    assert outcome(store, by_admin) == decisions.Outcome(p.Status.ACCEPTED, 1, None, "repo is now public")
    assert outcome(store, again).status == p.Status.UP_TO_DATE
    assert outcome(store, missing) == decisions.Outcome(p.Status.NOT_FOUND, None, None, "no such repository")
    assert store.get_repo(REPO).visibility == "public"


def test_a_repository_is_owned_by_its_creator_and_created_as_asked(store):
    log = Log()
    private = log.create(log.tree({"a": b"1"}))
    public = log.create(log.tree({}, repo="open"), repo="open", user="bob", visibility=p.Visibility.PUBLIC)
    taken = log.create(log.tree({}), user="bob", visibility=p.Visibility.PUBLIC)
    share_missing = log.share("bob", p.Access.READ, repo="nope")
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, private).status == outcome(store, public).status == p.Status.ACCEPTED
    assert (store.get_repo(REPO).owner, store.get_repo(REPO).visibility) == ("alice", "private")
    assert (store.get_repo("open").owner, store.get_repo("open").visibility) == ("bob", "public")
    assert outcome(store, taken).status == p.Status.EXISTS
    assert (store.get_repo(REPO).owner, store.get_repo(REPO).visibility) == ("alice", "private")
    assert outcome(store, share_missing).status == p.Status.NOT_FOUND


def test_repo_digest_covers_who_may_do_what(pair):
    log, rids = _scenario_log()
    apply_both(pair, log.records, rids=rids)
    mem, _ = pair
    digest = mem.repo_digest(REPO)
    changes = [
        lambda: mem.set_members(REPO, {"bob": "write"}),
        lambda: mem.put_repo(dataclasses.replace(mem.get_repo(REPO), owner="mallory")),
        lambda: mem.put_repo(dataclasses.replace(mem.get_repo(REPO), visibility="public")),
    ]
    for change in changes:
        saved = (dict(mem.members), dict(mem.repos))
        change()
        assert mem.repo_digest(REPO) != digest
        mem.members, mem.repos = saved
        assert mem.repo_digest(REPO) == digest


def _access_log() -> tuple[Log, list[str]]:
    """Every kind of write: repositories, members, visibility and accounts."""
    log = Log()
    rids = [log.register("alice"), log.register("bob")]
    rids.append(log.create(log.tree({"a": b"1", "ü/b": b"2"})))
    rids.append(log.share("bob", p.Access.WRITE))
    rids.append(log.push(1, log.tree({"a": b"x"}), user="bob", message="ünïcödé ✓"))
    rids.append(log.push(1, log.tree({"a": b"y"}), user="carol"))  # denied
    rids.append(log.visibility(p.Visibility.PUBLIC))
    rids.append(log.share("carol", p.Access.READ))
    rids.append(log.rotate("bob", key_text(user_key("bob, new")), key=user_key("bob")))
    rids.append(log.admin("carol", p.AdminOp.ADD, key_text(user_key("carol"))))
    rids.append(log.admin("dave", p.AdminOp.ADD, key_text(user_key("dave"))))
    rids.append(log.admin("dave", p.AdminOp.REMOVE))
    rids.append(log.create(log.tree({}, repo="second"), repo="second", user="carol"))
    return log, rids


def test_two_stores_applying_the_same_records_reach_the_same_state(pair):
    log, rids = _access_log()
    apply_both(pair, log.records, rids=rids)
    a, b = pair
    for name in (REPO, "second"):
        assert a.repo_digest(name) == b.repo_digest(name)
    assert a.list_accounts() == b.list_accounts() and len(a.list_accounts()) == 4
    assert a.get_members(REPO) == b.get_members(REPO) == {"bob": "write", "carol": "read"}
    # one record at a time, or in other batches: the same again
    c = MemoryStore()
    for record in log.records:
        apply_records(c, [record], PARTITIONS)
    assert state(c, rids) == state(a, rids)


# ---------------------------------------------------------------- accounts


def account(store: Store, name: str) -> tuple[str, bool] | None:
    found = store.get_account(name)
    return (found.key, found.removed) if found else None


def test_a_name_goes_to_the_first_key_that_registers_it(store):
    log = Log()
    first = log.register("carol")
    again = log.register("carol")
    taken = log.register("carol", key_text(user_key("mallory")), key=user_key("mallory"))
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, first) == decisions.Outcome(p.Status.ACCEPTED, None, None, "registered")
    assert outcome(store, again) == decisions.Outcome(
        p.Status.UP_TO_DATE, None, None, "already registered with this key"
    )
    assert outcome(store, taken) == decisions.Outcome(
        p.Status.DENIED, None, None, "the name carol is taken by another key; choose another with --user"
    )
    assert account(store, "carol") == (key_text(user_key("carol")), False)
    assert store.get_account("carol").since == log.records.index(
        next(r for r in log.records if first.encode() in r.value)
    )


def test_a_registration_not_signed_by_the_key_it_registers_is_skipped(store):
    log = Log()
    # mallory signs a claim of carol's name for carol's key (she cannot sign with it)
    forged = log.register("carol", key_text(user_key("carol")), key=user_key("mallory"))
    named = log.register(
        "dave", key_text(user_key("dave")), key=user_key("mallory"), named_key=key_text(user_key("dave"))
    )
    apply_records(store, log.records, PARTITIONS)
    assert store.get_outcome(0, forged) is None and store.get_outcome(0, named) is None
    assert store.list_accounts() == []


def test_a_key_is_rotated_only_by_the_current_key(store):
    log = Log()
    log.register("carol")
    new = key_text(user_key("carol, new"))
    by_other = log.rotate("carol", key_text(user_key("mallory")), key=user_key("mallory"))
    rotated = log.rotate("carol", new, key=user_key("carol"))
    by_old = log.rotate("carol", key_text(user_key("carol, old again")), key=user_key("carol"))
    same = log.rotate("carol", new, key=user_key("carol, new"))
    apply_records(store, log.records, PARTITIONS)
    assert store.get_outcome(0, by_other) is None and store.get_outcome(0, by_old) is None
    assert outcome(store, rotated) == decisions.Outcome(p.Status.ACCEPTED, None, None, "key replaced")
    assert outcome(store, same).status == p.Status.UP_TO_DATE
    assert account(store, "carol") == (new, False)


def test_operators_add_and_remove_users_with_the_service_s_key_only(store):
    log = Log()
    carol = key_text(user_key("carol"))
    forged = log.admin("carol", p.AdminOp.ADD, carol, signer=user_key("mallory"))
    added = log.admin("carol", p.AdminOp.ADD, carol)
    again = log.admin("carol", p.AdminOp.ADD, carol)
    replaced = log.admin("carol", p.AdminOp.ADD, key_text(user_key("carol, new")))
    forged_removal = log.admin("carol", p.AdminOp.REMOVE, signer=user_key("carol, new"))
    elsewhere = log.admin("carol", p.AdminOp.REMOVE, namespace="other-ns")
    apply_records(store, log.records, PARTITIONS)
    assert store.get_outcome(0, forged) is None and store.get_outcome(0, forged_removal) is None
    assert store.get_outcome(0, elsewhere) is None
    assert outcome(store, added) == decisions.Outcome(p.Status.ACCEPTED, None, None, "registered")
    assert outcome(store, again).status == p.Status.UP_TO_DATE
    assert outcome(store, replaced) == decisions.Outcome(p.Status.ACCEPTED, None, None, "key replaced")
    assert account(store, "carol") == (key_text(user_key("carol, new")), False)


def test_a_removed_name_stays_taken(store):
    log = Log()
    log.register("carol")
    removed = log.admin("carol", p.AdminOp.REMOVE)
    claimed = log.register("carol", key_text(user_key("mallory")), key=user_key("mallory"))
    reclaimed = log.register("carol")
    rotated = log.rotate("carol", key_text(user_key("carol, new")), key=user_key("carol"))
    removed_again = log.admin("carol", p.AdminOp.REMOVE)
    nobody = log.admin("nobody", p.AdminOp.REMOVE)
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, removed) == decisions.Outcome(p.Status.ACCEPTED, None, None, "removed")
    assert account(store, "carol") == ("", True)
    denied = decisions.Outcome(p.Status.DENIED, None, None, "the name carol was removed by an operator")
    assert outcome(store, claimed) == outcome(store, reclaimed) == denied
    assert store.get_outcome(0, rotated) is None  # a removed name has no key to sign with
    assert outcome(store, removed_again).status == p.Status.UP_TO_DATE  # already removed: nothing to do
    assert outcome(store, nobody).status == p.Status.NOT_FOUND
    given_back = log.admin("carol", p.AdminOp.ADD, key_text(user_key("carol")))
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, given_back) == decisions.Outcome(p.Status.ACCEPTED, None, None, "key replaced")
    assert account(store, "carol") == (key_text(user_key("carol")), False)


def test_account_records_outside_their_name_s_partition_change_nothing(pair):
    name = repo_in(0, 2, prefix="user")
    away = Log(1)
    registered = away.register(name)
    rotated = away.rotate(name, key_text(user_key("x")))
    for store in pair:
        apply_records(store, away.records, 2)
        assert store.get_outcome(1, registered) is None and store.get_outcome(1, rotated) is None
        assert store.list_accounts() == []


def test_an_operator_s_change_outside_the_name_s_partition_changes_nothing(pair):
    name = repo_in(0, 2, prefix="user")
    away = Log(1)
    elsewhere = repo_in(1, 2)
    proposal = admin_proposal(name, p.AdminOp.ADD, key_text(user_key(name)), request_id=away.rid())
    record = away.add(
        access.sign_operator(SERVER_KEY, dataclasses.replace(proposal, repo=elsewhere), NAMESPACE).to_bytes()
    )
    for store in pair:
        apply_records(store, away.records, 2)
        assert store.get_outcome(1, p.parse_message(record.value).request_id) is None
        assert store.list_accounts() == []


def test_a_tree_may_name_only_content_uploaded_to_its_own_repository(store):
    """Stored content is shared by the repositories of a log partition; a tree that
    names a blob by its hash alone, uploaded only to another repository, is missing
    objects: else guessing a hash would confirm it (and then read another's private
    content). Uploading the content itself, even once it is stored, is what counts;
    a chunk that only claims the hash is not."""
    log = Log()
    secret = b"the answer to the exam is 42"
    log.create(log.tree({"secret.txt": secret}))  # alice's repository
    guess = log.raw_tree(p.encode_tree({"guess.txt": p.FileEntry(p.hash_bytes(secret), len(secret))}), "bobs")
    oracle = log.create(guess, repo="bobs")
    (liar,) = log.chunks(b"not it", sha=p.hash_bytes(secret), repo="bobs")  # claims the hash, not the bytes
    log.add(liar.to_bytes())
    still = log.create(guess, repo="bobs")
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, oracle).status == outcome(store, still).status == p.Status.MISSING_OBJECTS
    assert store.get_repo("bobs") is None
    log.blob(secret, "bobs")  # bob has the content itself: it counts, stored once
    known = log.create(guess, repo="bobs")
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, known).status == p.Status.ACCEPTED


# ---------------------------------------------------------------- settling outcomes


def test_settling_an_accepted_push_answers_its_version(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    t2 = log.tree({"a": b"2"})
    push = log.push(1, t2)
    settle = log.settle(push, t2)
    other_tree = log.settle(push, log.tree({"a": b"3"}))
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, settle) == decisions.Outcome(p.Status.ACCEPTED, 2, 2, "accepted as version 2")
    assert outcome(store, other_tree) == decisions.Outcome(
        p.Status.INVALID, 2, None, "request id already used by another request"
    )
    assert outcome(store, push) == decisions.Outcome(p.Status.ACCEPTED, 2, 2, "accepted as version 2")  # unchanged


def test_settling_a_rejected_push_answers_its_refusal(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    log.push(1, log.tree({"a": b"2"}))
    t3 = log.tree({"a": b"3"})
    stale = log.push(1, t3)
    settle = log.settle(stale, t3)
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, settle) == decisions.Outcome(
        p.Status.REJECTED, 2, None, "version mismatch: head is 2, push based on 1"
    )


def test_settling_an_unknown_request_cancels_it_and_it_changes_nothing_later(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    late = log.rid()
    t2 = log.tree({"a": b"2"})
    settle = log.settle(late, t2)
    log.push(1, t2, rid=late)  # the push arrives after its settle
    again = log.settle(late, t2)  # another settle of it, under another id
    apply_records(store, log.records, PARTITIONS)
    cancelled = decisions.Outcome(p.Status.CANCELLED, 1, None, "never applied: it never will be now")
    assert outcome(store, settle) == cancelled
    assert outcome(store, late) == cancelled  # what the late push is answered: refused as another request
    assert decisions.outcome_of(store.get_outcome(0, late), "the push's own key", 1).message == (
        "request id already used by another request"
    )
    assert outcome(store, again) == cancelled
    assert store.get_repo(REPO).head == 1 and [v.version for v in store.list_versions(REPO)] == [1]


def test_a_settle_sent_again_gets_its_first_answer(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    late, tree = log.rid(), log.tree({"a": b"2"})
    settle = log.settle(late, tree)
    log.push(1, tree, rid=late)
    log.add(log.records[-2].value)  # the very same settle, again after the push
    done = dict(apply_records(store, log.records, PARTITIONS))
    assert outcome(store, settle).status == p.Status.CANCELLED
    assert store.get_repo(REPO).head == 1
    assert done[log.records[-1]] is not None  # applied (a known request id), changing nothing


def test_settling_needs_write_access_and_a_refused_settle_cancels_nothing(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    log.share("bob", p.Access.READ)
    late, tree = log.rid(), log.tree({"a": b"2"})
    by_reader = log.settle(late, tree, user="bob")
    by_stranger = log.settle(late, tree, user="mallory")
    push = log.push(1, tree, rid=late)
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, by_reader) == decisions.Outcome(
        p.Status.DENIED,
        1,
        None,
        "permission denied: bob may not settle a push to repo (read only); ask its owner (alice)",
    )
    assert outcome(store, by_stranger).status == p.Status.DENIED
    assert outcome(store, push) == decisions.Outcome(p.Status.ACCEPTED, 2, 2, "accepted as version 2")


def test_settling_a_request_of_another_repository_of_the_partition_cancels_nothing(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    log.create(log.tree({"a": b"1"}, repo="other"), repo="other", user="bob")
    tree = log.tree({"a": b"2"}, repo="other")
    push = log.push(1, tree, repo="other", user="bob")
    settle = log.settle(push, tree)
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, settle) == decisions.Outcome(
        p.Status.INVALID, 1, None, f"request {push} was not a request to repo"
    )
    assert outcome(store, push).status == p.Status.ACCEPTED


def test_a_forged_settle_is_skipped_and_cancels_nothing(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    late, tree = log.rid(), log.tree({"a": b"2"})
    forged = log.settle(late, tree, key=user_key("mallory"), named_key=key_text(user_key("alice")))
    push = log.push(1, tree, rid=late)
    apply_records(store, log.records, PARTITIONS)
    assert store.get_outcome(0, forged) is None
    assert outcome(store, push).status == p.Status.ACCEPTED


def test_a_settle_cancels_no_request_of_another_user_or_repository(store):
    """mallory settles, in her own repository of the same partition, the id of alice's
    push in flight (ids are seen on the topics): her settle is answered "cancelled",
    and alice's push is decided as if it had not been, its outcome replacing the
    cancellation. The same from bob, who may push to alice's repository."""
    log = Log()
    log.create(log.tree({"a": b"1"}))
    log.share("bob", p.Access.WRITE)
    log.create(log.tree({"m": b"1"}, repo="mal3"), repo="mal3", user="mallory")
    first, second = log.rid(), log.rid()
    t2, t3 = log.tree({"a": b"2"}), log.tree({"a": b"3"})
    by_mallory = log.settle(first, t2, repo="mal3", user="mallory")
    by_bob = log.settle(second, t3, user="bob")
    log.push(1, t2, rid=first)
    log.push(2, t3, rid=second)
    apply_records(store, log.records, PARTITIONS)
    cancelled = decisions.Outcome(p.Status.CANCELLED, 1, None, decisions.NEVER_APPLIED)
    assert outcome(store, by_mallory) == outcome(store, by_bob) == cancelled  # their own answers: unaffected
    assert outcome(store, first) == decisions.Outcome(p.Status.ACCEPTED, 2, 2, "accepted as version 2")
    assert outcome(store, second) == decisions.Outcome(p.Status.ACCEPTED, 3, 3, "accepted as version 3")
    assert decisions.Outcome.from_json(store.get_outcome(0, first)).cancels == ()  # replaced by the push's own
    assert store.get_repo(REPO).head == 3


def test_a_cancellation_holds_for_the_settler_whoever_else_settles_or_uses_the_id(store):
    """alice settles her lost push: it is cancelled for her, whatever comes after under
    that id (mallory's settle of it, mallory's own push under it). A cancellation by
    mallory first does not keep alice from cancelling hers."""
    log = Log()
    log.create(log.tree({"a": b"1"}))
    log.create(log.tree({"m": b"1"}, repo="mal3"), repo="mal3", user="mallory")
    lost, squatted = log.rid(), log.rid()
    t2 = log.tree({"a": b"2"})
    mine = log.settle(lost, t2)
    theirs = log.settle(lost, t2, repo="mal3", user="mallory")  # adds mallory: alice's stays
    late = log.push(1, t2, rid=lost)
    mallory_first = log.settle(squatted, t2, repo="mal3", user="mallory")
    mine_after = log.settle(squatted, t2)
    late_too = log.push(1, t2, rid=squatted)
    apply_records(store, log.records, PARTITIONS)
    cancelled = decisions.Outcome(p.Status.CANCELLED, 1, None, decisions.NEVER_APPLIED)
    for settle in (mine, theirs, mallory_first, mine_after):
        assert outcome(store, settle) == cancelled
    assert decisions.Outcome.from_json(store.get_outcome(0, lost)).cancels == (("alice", REPO), ("mallory", "mal3"))
    assert decisions.Outcome.from_json(store.get_outcome(0, squatted)).cancels == (
        ("mallory", "mal3"),
        ("alice", REPO),
    )
    for rid in (late, late_too):  # refused, as the late push is: "request id already used"
        assert decisions.outcome_of(store.get_outcome(0, rid), "the push's own key", 1).status == p.Status.INVALID
    assert store.get_repo(REPO).head == 1
    # mallory's own push under alice's cancelled id: decided (it is not alice's), and alice's stays refused
    log.push(1, log.tree({"m": b"2"}, repo="mal3"), repo="mal3", user="mallory", rid=log.rid())
    other = log.rid()
    log.settle(other, t2)
    hers = log.push(2, log.tree({"m": b"3"}, repo="mal3"), repo="mal3", user="mallory", rid=other)
    log.push(1, t2, rid=other)  # alice's, late
    done = dict(apply_records(store, log.records, PARTITIONS))
    assert outcome(store, hers) == decisions.Outcome(p.Status.ACCEPTED, 3, 3, "accepted as version 3")
    assert done[log.records[-1]] is not None  # applied, and refused: the id holds mallory's push
    late_again = apply_module.apply_proposal(store, done[log.records[-1]], log.records[-1], AUTHORITY)
    assert (late_again.status, late_again.message) == (p.Status.INVALID, "request id already used by another request")
    assert store.get_repo(REPO).head == 1 and store.get_repo("mal3").head == 3


def test_settles_apply_alike_on_both_stores(pair):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    tree = log.tree({"a": b"2"})
    push = log.push(1, tree)
    late = log.rid()
    rids = [push, late, log.settle(push, tree), log.settle(late, tree), log.push(2, tree, rid=late)]
    log.create(log.tree({"m": b"1"}, repo="mal3"), repo="mal3", user="mallory")
    theirs, mine = log.rid(), log.rid()
    rids += [theirs, mine, log.settle(theirs, tree, repo="mal3", user="mallory"), log.settle(mine, tree)]
    rids += [log.settle(mine, tree, repo="mal3", user="mallory"), log.push(2, log.tree({"a": b"3"}), rid=theirs)]
    rids += [log.push(1, log.tree({"m": b"2"}, repo="mal3"), repo="mal3", user="mallory", rid=mine)]
    apply_both(pair, log.records, rids)
    assert pair[1].get_outcome(0, mine)["cancels"] == [["alice", REPO], ["mallory", "mal3"]]
    assert pair[1].get_repo(REPO).head == 3 and pair[1].get_repo("mal3").head == 1


# ---------------------------------------------------------------- deleting a repository


def test_deleting_a_repository_forgets_it_and_its_name_starts_again_at_version_1(store):
    log = Log()
    t1 = log.tree({"a": b"1"})
    created = log.create(t1)
    log.share("bob", p.Access.WRITE)
    pushed = log.push(1, log.tree({"a": b"2"}))
    deleted = log.delete()
    stale = log.push(2, log.tree({"a": b"3"}))
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, deleted) == decisions.Outcome(
        p.Status.ACCEPTED, None, None, "repo deleted (it was at version 2)"
    )
    assert store.get_repo(REPO) is None and store.list_versions(REPO) == [] and store.get_members(REPO) == {}
    assert outcome(store, stale).status == p.Status.NOT_FOUND
    assert outcome(store, created).status == outcome(store, pushed).status == p.Status.ACCEPTED  # outcomes stay
    assert store.count_proven(0, REPO, t1) == 0  # its uploads prove nothing any more
    # its content goes with it: no other repository names it (what is left is the refused push's
    # upload, which this log sends under ids of its own: pending until it expires)
    assert store.blob_size(0, t1) is None
    assert {sha for _, sha in store.stored_objects()} == {upload.sha for upload in store.list_uploads(0)}


def test_a_push_from_a_clone_of_the_deleted_repository_is_refused_not_mixed_in(store):
    """alice clones r at v1 {a}; r is deleted and created again with {a, b}; her stale
    clone's push of an edited a, based on "v1", would be v2 of the new r without b."""
    log = Log()
    old_v1 = log.tree({"a": b"1"})
    log.create(old_v1)
    log.delete()
    new_v1 = log.tree({"a": b"1", "b": b"new"})
    log.create(new_v1)
    edited = log.tree({"a": b"edited"})
    stale = log.push(1, edited, base_tree=old_v1)
    forged = signed_proposal(  # says another base_tree than the request alice signed: skipped
        p.PushProposal, request_id=log.rid(), repo=REPO, user="alice", tree=edited, message="m", time_ms=2000, base=1,
        base_tree=old_v1,
    )  # fmt: skip
    log.add(dataclasses.replace(forged, base_tree=new_v1).to_bytes())
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, stale) == decisions.Outcome(
        p.Status.INVALID,
        1,
        None,
        "your version 1 is not the server's version 1 (the repository was deleted and created again?): clone it again",
    )
    assert store.get_outcome(0, forged.request_id) is None
    assert store.get_repo(REPO).head == 1 and [v.tree for v in store.list_versions(REPO)] == [new_v1]
    fresh = log.push(1, log.tree({"a": b"edited", "b": b"new"}), base_tree=new_v1)  # from a new clone
    unchecked = log.push(2, log.tree({"a": b"again", "b": b"new"}))  # no base_tree: as before it existed
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, fresh).status == outcome(store, unchecked).status == p.Status.ACCEPTED
    assert store.get_repo(REPO).head == 3


def test_a_push_without_base_tree_is_written_and_keyed_as_before_it_existed():
    """Records in the log were signed before base_tree existed: their bytes, their
    signatures and their request keys must not change."""
    log = Log()
    log.push(1, T_ANY)
    old_style = p.parse_message(log.records[-1].value)
    assert b"base_tree" not in log.records[-1].value
    assert b"base_tree" not in old_style.signed.request.encode()
    assert old_style.base_tree == "" and access.check_proposal(old_style, NAMESPACE, AUTHORITY.server_key) is None
    log.push(1, T_ANY, base_tree=T_ANY)
    new_style = p.parse_message(log.records[-1].value)
    assert new_style.base_tree == T_ANY and b'"base_tree"' in log.records[-1].value
    assert access.check_proposal(new_style, NAMESPACE, AUTHORITY.server_key) is None
    assert decisions.request_key(old_style) != decisions.request_key(dataclasses.replace(old_style, base_tree=T_ANY))


def test_a_repository_created_again_must_upload_its_content_again(store):
    log = Log()
    t1 = log.tree({"a": b"1"})
    log.create(t1)
    log.delete()
    without_content = log.create(t1)  # names content uploaded before the deletion only
    recreated = log.create(log.tree({"a": b"1"}))  # uploaded again
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, without_content) == decisions.Outcome(
        p.Status.MISSING_OBJECTS, None, None, "the tree was not uploaded completely"
    )
    assert outcome(store, recreated) == decisions.Outcome(p.Status.ACCEPTED, 1, 1, "created at version 1")
    repo = store.get_repo(REPO)
    assert (repo.head, repo.owner, repo.visibility) == (1, "alice", "private")
    assert [v.request_id for v in store.list_versions(REPO)] == [recreated]


def test_the_new_owner_of_a_name_gets_nothing_of_the_old_repository(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    log.share("bob", p.Access.ADMIN)
    log.delete()
    log.create(log.tree({"b": b"2"}), user="carol")
    by_bob = log.push(1, log.tree({"c": b"3"}), user="bob")
    apply_records(store, log.records, PARTITIONS)
    assert store.get_repo(REPO).owner == "carol" and store.get_members(REPO) == {}
    assert outcome(store, by_bob).status == p.Status.DENIED


def test_deleting_a_missing_repository_is_not_found(store):
    log = Log()
    missing = log.delete("nope")
    apply_records(store, log.records, PARTITIONS)
    assert outcome(store, missing) == decisions.Outcome(p.Status.NOT_FOUND, None, None, "no such repository")


@pytest.mark.parametrize(
    "forgery",
    [
        {"signer": user_key("mallory")},
        {"namespace": "other-ns"},
    ],
    ids=["signed by another key", "signed for another namespace"],
)
def test_a_deletion_not_signed_by_the_service_is_skipped_by_every_replica(pair, forgery):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    forged = log.delete(**forgery)
    apply_both(pair, log.records, [forged])
    for store in pair:
        assert store.get_outcome(0, forged) is None and store.get_repo(REPO).head == 1


def test_a_deletion_with_its_signature_moved_to_another_repository_is_skipped(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    genuine = delete_proposal("elsewhere")
    moved = dataclasses.replace(genuine, repo=REPO)
    log.add(moved.to_bytes())
    apply_records(store, log.records, PARTITIONS)
    assert store.get_outcome(0, moved.request_id) is None and store.get_repo(REPO) is not None


def test_a_deletion_replayed_after_the_repository_is_created_again_changes_nothing(store):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    deleted = log.delete()
    log.create(log.tree({"a": b"1"}))
    log.add(log.records[log.records.index(next(r for r in log.records if deleted.encode() in r.value))].value)
    apply_records(store, log.records, PARTITIONS)
    assert store.get_repo(REPO).head == 1


def test_a_deletion_applies_alike_on_both_stores(pair):
    log = Log()
    log.create(log.tree({"a": b"1"}))
    log.create(log.tree({"b": b"1"}, repo="kept"), repo="kept")
    log.share("bob", p.Access.READ)
    rids = [log.delete(), log.create(log.tree({"a": b"2"}))]
    apply_both(pair, log.records, rids)
    assert [r.name for r in pair[1].list_repos()] == ["kept", "repo"]


def test_repositories_are_listed_by_name_a_page_at_a_time(store):
    log = Log()
    for name in ("c", "a", "b", "d"):
        log.create(log.tree({"f": name.encode()}, repo=name), repo=name)
    apply_records(store, log.records, PARTITIONS)
    names = lambda repos: [r.name for r in repos]  # noqa: E731
    assert names(store.list_repos()) == ["a", "b", "c", "d"]
    assert names(store.list_repos("a", 2)) == ["b", "c"]
    assert names(store.list_repos("c")) == ["d"]
    assert names(store.list_repos("d", 5)) == []
    assert names(store.list_repos("", 0)) == []
