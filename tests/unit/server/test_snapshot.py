"""minigit_server.snapshot: a consistent copy of a replica's store seeds a new one."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from minigit.errors import MinigitError
from minigit_server import snapshot
from minigit_server.store import SCHEMA_VERSION, RepoState, SqliteStore


def filled_store(path: Path, repos: int = 3) -> SqliteStore:
    store = SqliteStore(path)
    with store.transaction():
        for n in range(repos):
            store.put_repo(RepoState(f"repo{n}", n + 1, 0, n, "alice"))
            store.set_applied(0, n + 1)
    return store


def test_a_snapshot_seeds_a_store_with_the_same_state_and_offsets(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "a" / "store.sqlite")
    info = snapshot.create(source.path, tmp_path / "copy.snapshot")
    assert (info.schema, info.repos, info.offsets) == (SCHEMA_VERSION, 3, {0: 3})
    seeded_path = tmp_path / "b" / "store.sqlite"
    snapshot.restore(tmp_path / "copy.snapshot", seeded_path)
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
            info = snapshot.create(source.path, tmp_path / f"copy{n}")
            assert info.repos == info.offsets.get(0, 0)
    finally:
        stop.set()
        thread.join()
        source.close()


def test_create_never_overwrites_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "store.sqlite")
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(MinigitError, match="exists already"):
        snapshot.create(source.path, tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "mine"
    with pytest.raises(MinigitError, match="no store"):
        snapshot.create(tmp_path / "none.sqlite", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    source.close()


def test_restore_refuses_a_replica_that_has_a_store(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "a" / "store.sqlite")
    snapshot.create(source.path, tmp_path / "copy")
    existing = filled_store(tmp_path / "b" / "store.sqlite", repos=1)
    existing.close()
    with pytest.raises(MinigitError, match="has a store already"):
        snapshot.restore(tmp_path / "copy", existing.path)
    source.close()


def test_a_damaged_snapshot_is_refused(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "a" / "store.sqlite", repos=200)
    snapshot.create(source.path, tmp_path / "copy")
    source.close()
    data = bytearray((tmp_path / "copy").read_bytes())
    page = 4096
    data[3 * page : 4 * page] = b"\xff" * page  # a page of a table overwritten
    (tmp_path / "copy").write_bytes(bytes(data))
    with pytest.raises(snapshot.SnapshotUnusable):
        snapshot.restore(tmp_path / "copy", tmp_path / "b" / "store.sqlite")
    assert not (tmp_path / "b" / "store.sqlite").exists()


def test_a_truncated_or_foreign_file_is_refused(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "a" / "store.sqlite")
    snapshot.create(source.path, tmp_path / "copy")
    source.close()
    whole = (tmp_path / "copy").read_bytes()
    (tmp_path / "half").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text").write_text("not a database at all" * 100)
    for bad in ("half", "text"):
        with pytest.raises(snapshot.SnapshotUnusable):
            snapshot.check(tmp_path / bad)


def test_a_snapshot_of_another_schema_or_not_a_store_is_refused(tmp_path: Path) -> None:
    source = filled_store(tmp_path / "a" / "store.sqlite")
    snapshot.create(source.path, tmp_path / "copy")
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
