"""minigit_server.snapshot: a consistent copy of a replica's store seeds a new one."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from minigit import identity
from minigit.errors import MinigitError
from minigit_server import snapshot
from minigit_server.store import SCHEMA_VERSION, RepoState, SqliteStore

# the service the snapshots in these tests belong to
OURS = snapshot.Owner("att-", 3, identity.public_key_text(identity.generate_private_key().public_key()))


def filled_store(path: Path, repos: int = 3) -> SqliteStore:
    store = SqliteStore(path)
    with store.transaction():
        for n in range(repos):
            store.put_repo(RepoState(f"repo{n}", n + 1, 0, n, "alice"))
            store.set_applied(0, n + 1)
    return store


def test_a_snapshot_seeds_a_store_with_the_same_state_and_offsets(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "a" / "store.sqlite")
    info = snapshot.create(source.path, tmp_path / "copy.snapshot", OURS)
    assert (info.schema, info.repos, info.offsets) == (SCHEMA_VERSION, 3, {0: 3})
    seeded_path = tmp_path / "b" / "store.sqlite"
    snapshot.restore(tmp_path / "copy.snapshot", seeded_path, OURS)
    seeded = SqliteStore(seeded_path)
    try:
        assert seeded.applied_offsets() == source.applied_offsets()
        assert seeded.list_repos() == source.list_repos()
        assert [seeded.repo_digest(r.name) for r in seeded.list_repos()] == [
            source.repo_digest(r.name) for r in source.list_repos()
        ]
    finally:
        seeded.close()
        source.close()


def test_a_snapshot_taken_while_the_replica_applies_is_one_point_of_the_log(tmp_path: Path) -> None:
    """Offsets and state move together: whatever the applier commits during the copy,
    the copy holds exactly the repositories its offsets account for."""
    source = filled_store(tmp_path / "a" / "store.sqlite", repos=0)
    stop = threading.Event()

    def apply_forever() -> None:
        writer = SqliteStore(source.path)
        n = 0
        while not stop.is_set():
            with writer.transaction():
                writer.put_repo(RepoState(f"r{n:06}", 1, 0, n, "alice"))
                writer.set_applied(0, n + 1)
            n += 1
        writer.close()

    thread = threading.Thread(target=apply_forever)
    thread.start()
    try:
        for n in range(5):
            info = snapshot.create(source.path, tmp_path / f"copy{n}", OURS)
            assert info.repos == info.offsets.get(0, 0)
    finally:
        stop.set()
        thread.join()
        source.close()


def test_create_never_overwrites_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "store.sqlite")
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(MinigitError, match="exists already"):
        snapshot.create(source.path, tmp_path / "taken", OURS)
    assert (tmp_path / "taken").read_text() == "mine"
    with pytest.raises(MinigitError, match="no store"):
        snapshot.create(tmp_path / "none.sqlite", tmp_path / "x", OURS)
    assert not (tmp_path / "x").exists()
    source.close()


def test_restore_refuses_a_replica_that_has_a_store(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "a" / "store.sqlite")
    snapshot.create(source.path, tmp_path / "copy", OURS)
    existing = filled_store(tmp_path / "b" / "store.sqlite", repos=1)
    existing.close()
    with pytest.raises(MinigitError, match="has a store already"):
        snapshot.restore(tmp_path / "copy", existing.path, OURS)
    source.close()


def test_a_damaged_snapshot_is_refused(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "a" / "store.sqlite", repos=200)
    snapshot.create(source.path, tmp_path / "copy", OURS)
    source.close()
    data = bytearray((tmp_path / "copy").read_bytes())
    page = 4096
    data[3 * page : 4 * page] = b"\xff" * page  # a page of a table overwritten
    (tmp_path / "copy").write_bytes(bytes(data))
    with pytest.raises(snapshot.SnapshotUnusable):
        snapshot.restore(tmp_path / "copy", tmp_path / "b" / "store.sqlite", OURS)
    assert not (tmp_path / "b" / "store.sqlite").exists()


def test_a_truncated_or_foreign_file_is_refused(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "a" / "store.sqlite")
    snapshot.create(source.path, tmp_path / "copy", OURS)
    source.close()
    whole = (tmp_path / "copy").read_bytes()
    (tmp_path / "half").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text").write_text("not a database at all" * 100)
    for bad in ("half", "text"):
        with pytest.raises(snapshot.SnapshotUnusable):
            snapshot.check(tmp_path / bad)


def test_a_snapshot_of_another_schema_or_not_a_store_is_refused(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "a" / "store.sqlite")
    snapshot.create(source.path, tmp_path / "copy", OURS)
    source.close()
    db = sqlite3.connect(tmp_path / "copy")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    db.commit()
    db.close()
    with pytest.raises(snapshot.SnapshotUnusable, match="schema version"):
        snapshot.check(tmp_path / "copy")
    other = sqlite3.connect(tmp_path / "other")
    other.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    other.execute("CREATE TABLE applied (partition INTEGER)")
    other.commit()
    other.close()
    with pytest.raises(snapshot.SnapshotUnusable, match="not a minigit store"):
        snapshot.check(tmp_path / "other")


# --- whom a snapshot belongs to: a snapshot of another service is refused ---


def test_a_snapshot_records_its_service_and_check_shows_it(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "a" / "store.sqlite")
    snapshot.create(source.path, tmp_path / "copy", OURS)
    source.close()
    assert snapshot.check(tmp_path / "copy").owner == OURS
    live = sqlite3.connect(source.path)  # written into the copy only, never into the live store
    assert snapshot.OWNER_TABLE not in {row[0] for row in live.execute("SELECT name FROM sqlite_master")}
    live.close()


def test_restore_refuses_a_snapshot_of_another_service(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "a" / "store.sqlite")
    other_key = identity.public_key_text(identity.generate_private_key().public_key())
    snapshot.create(source.path, tmp_path / "copy", snapshot.Owner("att3-", 6, other_key))
    source.close()
    target = tmp_path / "b" / "store.sqlite"
    with pytest.raises(snapshot.SnapshotForeign) as refused:
        snapshot.restore(tmp_path / "copy", target, OURS)
    message = refused.value.message
    assert "namespace 'att3-'" in message and "'att-'" in message
    assert "service key" in message and "6 log partitions" in message and "3" in message
    assert refused.value.hint
    assert not target.exists()
    for differs in (
        snapshot.Owner("att3-", 3, OURS.service_key),
        snapshot.Owner("att-", 6, OURS.service_key),
        snapshot.Owner("att-", 3, other_key),
    ):
        with pytest.raises(snapshot.SnapshotForeign):
            snapshot.restore(tmp_path / "copy", target, differs)
    assert not target.exists()


def test_a_snapshot_without_its_service_is_refused(tmp_path: Path) -> None:
    """A store copied by hand says nothing of whom it belongs to."""
    source = filled_store(tmp_path / "a" / "store.sqlite")
    source.close()
    (tmp_path / "copy").write_bytes(source.path.read_bytes())
    with pytest.raises(snapshot.SnapshotUnusable, match="does not say which service") as refused:
        snapshot.check(tmp_path / "copy")
    assert "snapshot create" in refused.value.hint
    with pytest.raises(snapshot.SnapshotUnusable):
        snapshot.restore(tmp_path / "copy", tmp_path / "b" / "store.sqlite", OURS)
    assert not (tmp_path / "b" / "store.sqlite").exists()


def test_offsets_or_repositories_beyond_the_partition_count_are_refused(tmp_path: Path) -> None:
    for name, change in (
        ("applied", "INSERT INTO applied VALUES (4, 10)"),
        ("repos", "UPDATE repos SET partition = 4 WHERE name = 'repo1'"),
    ):
        store = filled_store(tmp_path / name / "store.sqlite")
        store.close()
        db = sqlite3.connect(store.path)
        db.execute(change)
        db.commit()
        db.close()
        with pytest.raises(snapshot.SnapshotUnusable, match="partition 4"):
            snapshot.create(store.path, tmp_path / f"{name}.snapshot", OURS)
        assert not (tmp_path / f"{name}.snapshot").exists()
