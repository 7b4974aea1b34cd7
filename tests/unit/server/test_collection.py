"""Collecting orphan content: minigit_server.collection (pure) and what applying the
log deletes with it, on both stores. The rule that matters most: every replica keeps
exactly the same objects, decided from the log alone, and never one a version needs."""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_apply import REPO, Log, apply_records

from minigit import codec
from minigit import protocol as p
from minigit_server import collection
from minigit_server.collection import Bounds, Floors, Upload
from minigit_server.store import MemoryStore, SqliteStore, Store

DAY = collection.ORPHAN_AFTER_MS


# ---------------------------------------------------------------- the pure rules


def test_log_time_never_goes_back() -> None:
    assert collection.advance_clock(None, 5) == 5
    assert collection.advance_clock(10, 5) == 10
    assert collection.advance_clock(10, 15) == 15


@pytest.mark.parametrize(
    ("offset", "clock_ms", "stale"),
    [
        (100, None, False),  # not dated yet: younger than the proposal that will date it
        (100, 1000, False),  # young by both measures
        (100, 999, True),  # older than the age bound
        (49, None, True),  # beyond the records bound, dated or not
        (49, 5000, True),
        (50, 1000, False),  # exactly on the floors: kept
    ],
)
def test_an_upload_is_stale_past_either_bound_only(offset: int, clock_ms: int | None, stale: bool) -> None:
    assert collection.is_stale(Upload("s", "r", offset, clock_ms), Floors(clock_ms=1000, offset=50)) is stale


def test_floors_are_the_bounds_back_from_now() -> None:
    assert collection.expiry_floors(10_000, 500, Bounds(age_ms=3000, records=200)) == Floors(7000, 300)
    defaults = collection.expiry_floors(0, 0)
    assert (-defaults.clock_ms, -defaults.offset) == (collection.ORPHAN_AFTER_MS, collection.ORPHAN_AFTER_RECORDS)


@given(
    st.lists(st.sampled_from("abcde"), max_size=8),
    st.sets(st.sampled_from("abcde")),
    st.sets(st.sampled_from("abcde")),
)
def test_only_what_nothing_needs_is_collected_once_each_in_order(candidates, pending, referenced) -> None:
    doomed = collection.collectable(candidates, pending.__contains__, referenced.__contains__)
    assert doomed == sorted(set(candidates) - pending - referenced)


def test_a_version_refers_to_its_tree_and_each_blob_once() -> None:
    manifest = {"a": p.FileEntry("1" * 64, 1), "b": p.FileEntry("1" * 64, 1), "c": p.FileEntry("2" * 64, 2)}
    assert collection.references("9" * 64, manifest) == ["1" * 64, "2" * 64, "9" * 64]
    assert collection.references("9" * 64, {}) == ["9" * 64]


# ---------------------------------------------------------------- applied to stores


def label_id(label: str) -> str:
    """A request id (32 hex digits) named by a label, as the tests write them."""
    return label if re.fullmatch("[0-9a-f]{32}", label) else hashlib.md5(label.encode()).hexdigest()


class Client(Log):
    """Writes the log as owners do for real clients: a request's chunks carry its id."""

    def propose(self, kind: type[p.Proposal], values: dict, extra: dict) -> str:
        rid = {**values, **extra}.get("request_id")
        return super().propose(kind, values, {**extra, "request_id": label_id(rid) if rid else None})

    def upload(self, rid: str, files: dict[str, bytes], repo: str = REPO, known: dict[str, bytes] = ()) -> str:
        """The chunks of a write ``rid`` of ``files``: the tree and every content not in ``known``."""
        manifest = {path: p.FileEntry(p.hash_bytes(data), len(data)) for path, data in files.items()}
        tree = p.encode_tree(manifest)
        known_shas = {p.hash_bytes(data) for data in dict(known).values()}
        contents = [tree, *(data for data in files.values() if p.hash_bytes(data) not in known_shas)]
        for data in contents:
            self.send(rid, data, repo)
        return p.hash_bytes(tree)

    def send(self, rid: str, data: bytes, repo: str = REPO, pieces: int | None = None) -> str:
        blob = codec.BlobSource(p.hash_bytes(data), len(data), lambda: codec.split_bytes(data))
        for chunk in list(p.blob_chunks(label_id(rid), repo, blob))[:pieces]:
            self.add(chunk.to_bytes())
        return p.hash_bytes(data)


def make(kind: str, tmp_path: Path) -> Store:
    return MemoryStore() if kind == "memory" else SqliteStore(tmp_path / f"{kind}-{id(tmp_path)}.db")


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = make(request.param, tmp_path)
    yield s
    s.close()


def objects(store: Store) -> set[str]:
    return {sha for _, sha in store.stored_objects()}


def needed(store: Store) -> set[str]:
    """What the versions of every repository refer to."""
    found = set()
    for repo in store.list_repos():
        for info in store.list_versions(repo.name):
            found |= set(collection.references(info.tree, store.read_manifest(repo.name, info.version)))
    return found


BIG = bytes(range(256)) * 4096  # 1 MiB: two pieces


def test_a_rejected_push_leaves_nothing_and_the_head_keeps_everything(store) -> None:
    log = Client()
    v1 = {"a": b"one", "big": BIG}
    log.create(log.upload("c1", v1), rid="c1")
    ahead = {**v1, "a": b"two"}
    log.push(1, log.upload("p2", ahead, known=v1), rid="p2")
    stale = {**v1, "a": b"stale", "new": b"only in the stale push"}
    rejected = log.push(1, log.upload("p3", stale, known=v1), rid="p3")
    apply_records(store, log.records, 1)
    assert store.get_outcome(0, rejected)["status"] == p.Status.REJECTED
    assert objects(store) == needed(store)  # the stale push's tree and blobs are gone
    assert p.hash_bytes(b"stale") not in objects(store) and p.hash_bytes(BIG) in objects(store)
    assert store.list_uploads(0) == []


def test_an_upload_cut_short_is_collected_and_the_whole_resend_accepted(store) -> None:
    log = Client()
    log.create(log.upload("c1", {"a": b"1"}), rid="c1")
    files = {"a": b"1", "big": BIG}
    tree = p.encode_tree({k: p.FileEntry(p.hash_bytes(v), len(v)) for k, v in files.items()})
    log.send("p2", tree)
    log.send("p2", BIG, pieces=1)  # the owner died after one of two pieces
    first = log.push(1, p.hash_bytes(tree), rid="p2")
    log.upload("p3", files, known={"a": b"1"})  # the client sends it all again, under a new id
    second = log.push(1, p.hash_bytes(tree), rid="p3")
    apply_records(store, log.records, 1)
    assert store.get_outcome(0, first)["status"] == p.Status.MISSING_OBJECTS
    assert store.get_outcome(0, second)["status"] == p.Status.ACCEPTED
    assert objects(store) == needed(store) and store.read_manifest(REPO, 2).keys() == {"a", "big"}


def test_the_same_content_uploaded_by_a_request_still_pending_is_kept(store) -> None:
    """bob uploads X (his push not proposed yet); alice's push of X is rejected: X stays
    for bob, whose push then finds it."""
    log = Client()
    other = "r1"
    log.create(log.upload("c1", {"a": b"1"}), rid="c1")
    log.create(log.upload("c2", {"a": b"1"}, repo=other), repo=other, rid="c2")
    shared = {"a": b"1", "x": BIG}
    bob_tree = log.upload("bob", shared, repo=other, known={"a": b"1"})
    alice = log.push(7, log.upload("alice", shared, known={"a": b"1"}), rid="alice")  # wrong base: rejected
    bob = log.push(1, bob_tree, repo=other, rid="bob")
    apply_records(store, log.records, 1)
    assert store.get_outcome(0, alice)["status"] == p.Status.REJECTED
    assert store.get_outcome(0, bob)["status"] == p.Status.ACCEPTED
    assert p.hash_bytes(BIG) in objects(store) and objects(store) == needed(store)


def test_an_accepted_push_keeps_what_its_tree_names_only(store) -> None:
    log = Client()
    log.create(log.upload("c1", {"a": b"1"}), rid="c1")
    tree = log.upload("p2", {"a": b"2"}, known={"a": b"1"})
    log.send("p2", b"sent but named by no tree")
    log.push(1, tree, rid="p2")
    apply_records(store, log.records, 1)
    assert objects(store) == needed(store) and p.hash_bytes(b"sent but named by no tree") not in objects(store)


def test_an_abandoned_upload_goes_after_a_day_of_log_time_not_before(store) -> None:
    log = Client()
    log.create(log.upload("c1", {"a": b"1"}), rid="c1", time_ms=1_000)
    abandoned = log.send("killed", BIG, pieces=1)  # its client was killed: no proposal ever
    # a day of log time passes without a word in this partition; the next proposal dates
    # the upload (it is not a day old: it may have been sent a moment ago)
    log.push(1, log.upload("p2", {"a": b"2"}, known={"a": b"1"}), rid="p2", time_ms=1_000 + 2 * DAY)
    apply_records(store, log.records, 1)
    assert abandoned in objects(store) and [u.request_id for u in store.list_uploads(0)] == [label_id("killed")]
    log.push(2, log.upload("p3", {"a": b"3"}, known={"a": b"2"}), rid="p3", time_ms=1_000 + 3 * DAY)
    apply_records(store, log.records, 1)
    assert abandoned in objects(store)  # exactly a day: kept
    log.push(3, log.upload("p4", {"a": b"4"}, known={"a": b"3"}), rid="p4", time_ms=2_000 + 3 * DAY)
    apply_records(store, log.records, 1)
    assert abandoned not in objects(store) and objects(store) == needed(store) and store.list_uploads(0) == []


def test_an_abandoned_upload_goes_after_the_records_bound(store, monkeypatch) -> None:
    monkeypatch.setattr(collection, "DEFAULT_BOUNDS", Bounds(age_ms=DAY, records=5))
    log = Client()
    abandoned = log.send("killed", b"abandoned")
    log.create(log.upload("c1", {"a": b"1"}), rid="c1")  # records 1..2 and the proposal at 3
    assert len(log.records) == 4
    apply_records(store, log.records, 1)
    assert abandoned in objects(store)
    log.push(1, log.upload("p2", {"a": b"2"}, known={"a": b"1"}), rid="p2")  # its proposal at offset 6
    apply_records(store, log.records, 1)
    assert abandoned not in objects(store) and objects(store) == needed(store)


def test_deleting_a_repository_collects_what_only_it_named(store) -> None:
    log = Client()
    other = "r1"
    log.create(log.upload("c1", {"shared": b"s", "mine": b"m"}), rid="c1")
    log.create(log.upload("c2", {"shared": b"s"}, repo=other), repo=other, rid="c2")
    log.delete()
    apply_records(store, log.records, 1)
    assert p.hash_bytes(b"m") not in objects(store) and p.hash_bytes(b"s") in objects(store)
    assert objects(store) == needed(store)


def test_a_late_copy_of_a_decided_requests_upload_is_not_kept(store) -> None:
    """A hedged resend: a second owner copies the same request's chunks into the log
    after the first owner's proposal was applied, and proposes nothing (it finds the
    outcome). Nothing will ever use them: they are not stored, nothing is pending."""
    log = Client()
    log.create(log.upload("c1", {"a": b"1"}), rid="c1")
    rejected = log.push(5, log.upload("p2", {"a": b"x"}, known={"a": b"1"}), rid="p2")
    log.upload("p2", {"a": b"x"}, known={"a": b"1"})  # the late copy, no proposal after it
    apply_records(store, log.records, 1)
    assert store.get_outcome(0, rejected)["status"] == p.Status.REJECTED
    assert objects(store) == needed(store) and store.list_uploads(0) == []


def test_a_retry_after_its_outcome_collects_what_it_uploaded_again(store) -> None:
    log = Client()
    log.create(log.upload("c1", {"a": b"1"}), rid="c1")
    rejected = log.push(5, log.upload("p2", {"a": b"x"}, known={"a": b"1"}), rid="p2")
    log.upload("p2", {"a": b"x"}, known={"a": b"1"})  # a hedged resend, same id, after the outcome
    log.push(5, p.hash_bytes(p.encode_tree({"a": p.FileEntry(p.hash_bytes(b"x"), 1)})), rid="p2")
    apply_records(store, log.records, 1)
    assert store.get_outcome(0, rejected)["status"] == p.Status.REJECTED
    assert objects(store) == needed(store)


# ---------------------------------------------------------------- determinism


def random_log(steps: list[tuple[int, int, int]]) -> Client:
    """Writes of random content to two repositories (right or wrong base, uploads
    complete or cut short, abandoned uploads, deletions), with log time moving on."""
    log = Client()
    heads = {REPO: 0, "r1": 0}
    files = {REPO: {}, "r1": {}}
    clock = 1_000
    for n, (kind, pick, content) in enumerate(steps):
        repo = [REPO, "r1"][pick % 2]
        rid = f"{n:032x}"
        clock += [1, DAY // 2, DAY + 1][pick % 3]
        data = bytes([content % 7]) * (1 + content % 5) + (BIG if content % 11 == 0 else b"")
        if kind == 0:  # a write based on the head (create when there is none)
            new = {**files[repo], f"f{content % 4}": data}
            tree = log.upload(rid, new, repo, known=files[repo])
            if heads[repo]:
                log.push(heads[repo], tree, repo=repo, rid=rid, time_ms=clock)
            else:
                log.create(tree, repo=repo, rid=rid, time_ms=clock)
            heads[repo], files[repo] = heads[repo] + 1, new
        elif kind == 1:  # a stale write: rejected
            tree = log.upload(rid, {**files[repo], "stale": data}, repo, known=files[repo])
            log.push(heads[repo] + 3, tree, repo=repo, rid=rid, time_ms=clock)
        elif kind == 2:  # an upload abandoned, or cut short and proposed
            sha = log.send(rid, data, repo, pieces=1)
            if content % 2:
                log.push(heads[repo] or 1, sha, repo=repo, rid=rid, time_ms=clock)
        elif kind == 3 and heads[repo]:  # an operator deletes it
            log.delete(repo=repo)
            heads[repo], files[repo] = 0, {}
    return log


def everything(store: Store) -> dict:
    return {
        "objects": store.stored_objects(),
        "blobs": [(sha, store.blob_size(0, sha), store.blob_chunk_count(0, sha)) for _, sha in store.stored_objects()],
        "pieces": [list(store.iter_chunks(0, sha, 3)) for _, sha in store.stored_objects()],
        "uploads": store.list_uploads(0),
        "repos": store.list_repos(),
        "digests": {r.name: store.repo_digest(r.name) for r in store.list_repos()},
        "offsets": store.applied_offsets(),
    }


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 40)), min_size=1, max_size=14),
    data=st.data(),
)
def test_every_store_keeps_the_same_objects_in_any_batching_and_never_one_a_version_needs(
    steps, data, tmp_path_factory
):
    log = random_log(steps)
    folder = tmp_path_factory.mktemp("gc")
    memory, sqlite, batched = MemoryStore(), SqliteStore(folder / "a.db"), SqliteStore(folder / "b.db")
    try:
        apply_records(memory, log.records, 1)
        apply_records(sqlite, log.records, 1)
        cuts = sorted(data.draw(st.sets(st.integers(0, len(log.records)), max_size=5)))
        for start, end in itertools.pairwise([0, *cuts, len(log.records)]):
            apply_records(batched, log.records[start:end], 1)  # a replica restarted between batches
        assert everything(memory) == everything(sqlite) == everything(batched)
        for store in (memory, sqlite):
            kept, pending = objects(store), {u.sha for u in store.list_uploads(0)}
            assert needed(store) <= kept  # every version reads whole
            assert kept <= needed(store) | pending  # nothing else is kept
    finally:
        sqlite.close()
        batched.close()


def test_collected_content_gives_its_disk_space_back(tmp_path: Path) -> None:
    import os

    store = SqliteStore(tmp_path / "space.db")
    try:
        log = Client()
        log.create(log.upload("c1", {"a": b"1"}), rid="c1")
        big = os.urandom(8 * 1024 * 1024)  # incompressible: 8 MiB stored
        log.push(9, log.upload("p2", {"a": b"1", "big": big}, known={"a": b"1"}), rid="p2")  # rejected
        apply_records(store, log.records[:-1], 1)
        store._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        full = store.path.stat().st_size
        apply_records(store, log.records, 1)
        store._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert p.hash_bytes(big) not in objects(store)
        assert store.path.stat().st_size < full - 7 * 1024 * 1024
    finally:
        store.close()


def test_a_repair_never_brings_back_a_collected_object(store) -> None:
    """The scrub lists objects, the applier collects one, the scrub finds it "not in
    the store": restoring it from the log would keep on this replica alone what every
    other one deleted."""
    log = Client()
    log.create(log.upload("c1", {"a": b"1"}), rid="c1")
    log.push(9, log.upload("p2", {"a": b"1", "gone": b"rejected content"}, known={"a": b"1"}), rid="p2")
    apply_records(store, log.records, 1)
    gone = p.hash_bytes(b"rejected content")
    assert gone not in objects(store) and not store.holds(0, gone)
    piece = codec.Piece(0, "raw", b"rejected content")
    store.restore_blob(0, gone, len(b"rejected content"), 1, [piece])
    assert gone not in objects(store) and store.blob_size(0, gone) is None
    kept = p.hash_bytes(b"1")
    assert store.holds(0, kept)
    store.restore_blob(0, kept, 1, 1, [codec.Piece(0, "raw", b"1")])  # a held object is restored as before
    assert store.read_blob(0, kept) == b"1"
