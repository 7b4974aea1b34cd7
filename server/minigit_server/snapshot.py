"""Snapshots of a replica's store, so that a new replica joins without replaying
the whole log: copy a running replica's store, seed the new replica's store with
the copy, start it; it tails the log from the offsets the copy holds.

A store keeps its applied offsets in the same transactions as the state they made,
so one consistent copy of the file is a replica's state at some point of the log,
with the offsets to resume from. SQLite's online backup copies the pages within
one read transaction (WAL: the replica goes on applying meanwhile), so the copy is
consistent whatever the replica does while it is taken.

No Kafka here, and nothing a replica's apply loop uses: these are operator commands.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from minigit.errors import MinigitError
from minigit_server.store import SCHEMA_VERSION, SqliteStore, StoreUnusable

# The tables a store must have (its schema, and the applied offsets).
REQUIRED_TABLES = (
    *("applied", "chunks", "blobs", "repos", "versions", "members", "piece_proofs", "accounts", "outcomes"),
    *("uploads", "refs", "clocks"),
)


@dataclass(frozen=True)
class SnapshotInfo:
    path: Path
    size: int
    schema: int
    offsets: dict[int, int]  # next log offset to apply, per partition
    repos: int
    blobs: int

    @property
    def records(self) -> int:
        return sum(self.offsets.values())


class SnapshotUnusable(MinigitError):
    """A snapshot file that cannot seed a store: damaged, another schema, not a store."""


def create(store_file: Path, out: Path, pages_per_step: int = -1) -> SnapshotInfo:
    """Copy the store ``store_file`` (its replica may be running) to ``out``, then
    check the copy. ``out`` must not exist; it appears only once whole and checked."""
    store_file, out = Path(store_file), Path(out)
    if not store_file.is_file():
        raise MinigitError(f"no store at {store_file}", hint="give the --data-dir and --replica of a replica")
    if out.exists():
        raise MinigitError(f"{out} exists already", hint="give a new file name; a snapshot never overwrites")
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        # Read-only: the copy never writes to (or checkpoints) the replica's store.
        source = sqlite3.connect(f"{store_file.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            target = sqlite3.connect(partial)
            try:
                # pages=-1: every page in one step, within one read transaction of the
                # source: a consistent copy even while the replica commits beside it.
                source.backup(target, pages=pages_per_step)
                target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            finally:
                target.close()
        finally:
            source.close()
        info = check(partial)
        partial.rename(out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return SnapshotInfo(out, info.size, info.schema, info.offsets, info.repos, info.blobs)


def check(snapshot: Path) -> SnapshotInfo:
    """What a snapshot holds, once it is shown to be a whole store of this schema:
    SQLite's integrity_check passes (every page, every index), the schema version is
    this replica's, and every table is there. SnapshotUnusable if not."""
    snapshot = Path(snapshot)
    if not snapshot.is_file():
        raise SnapshotUnusable(f"no snapshot at {snapshot}")
    try:
        db = sqlite3.connect(f"{snapshot.resolve().as_uri()}?mode=ro", uri=True)
        try:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check(5)")]
            if problems != ["ok"]:
                raise SnapshotUnusable(f"{snapshot} is damaged: {'; '.join(problems)}")
            schema = db.execute("PRAGMA user_version").fetchone()[0]
            if schema != SCHEMA_VERSION:
                raise SnapshotUnusable(
                    f"{snapshot} holds a store of schema version {schema}, this replica needs {SCHEMA_VERSION}",
                    hint="take a snapshot of a replica that runs this version",
                )
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if missing := [name for name in REQUIRED_TABLES if name not in tables]:
                raise SnapshotUnusable(f"{snapshot} is not a minigit store: no table {', '.join(missing)}")
            offsets = dict(db.execute("SELECT partition, next_offset FROM applied"))
            repos = db.execute("SELECT COUNT(*) FROM repos").fetchone()[0]
            blobs = db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError as error:
        raise SnapshotUnusable(f"{snapshot} is not a usable SQLite store: {error}") from None
    return SnapshotInfo(snapshot, snapshot.stat().st_size, schema, offsets, repos, blobs)


def restore(snapshot: Path, store_file: Path) -> SnapshotInfo:
    """Seed the store ``store_file`` (of a replica that is not running, and that has
    no store yet) with a checked copy of ``snapshot``."""
    snapshot, store_file = Path(snapshot), Path(store_file)
    leftovers = [store_file.with_name(store_file.name + suffix) for suffix in ("", "-wal", "-shm")]
    if found := [path for path in leftovers if path.exists()]:
        raise MinigitError(
            f"the replica has a store already: {found[0]}",
            hint="a snapshot seeds a new replica; stop this one and move its store files away first",
        )
    info = check(snapshot)
    store_file.parent.mkdir(parents=True, exist_ok=True)
    partial = store_file.with_name(f".{store_file.name}.partial-{os.getpid()}")
    try:
        source = sqlite3.connect(f"{snapshot.resolve().as_uri()}?mode=ro", uri=True)
        try:
            target = sqlite3.connect(partial)
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()
        try:  # the replica opens it this way: a copy it could not open is not installed
            SqliteStore(partial).close()
        except StoreUnusable as error:
            raise SnapshotUnusable(f"{snapshot}: {error.reason}") from None
        for suffix in ("-wal", "-shm"):  # opening it made them; the store is whole without them
            with contextlib.suppress(FileNotFoundError):
                partial.with_name(partial.name + suffix).unlink()
        partial.rename(store_file)
    finally:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                partial.with_name(partial.name + suffix).unlink()
    return SnapshotInfo(store_file, store_file.stat().st_size, info.schema, info.offsets, info.repos, info.blobs)


def default_name(replica_id: str) -> str:
    return f"minigit-replica-{replica_id}-{time.strftime('%Y%m%d-%H%M%S')}.snapshot"
