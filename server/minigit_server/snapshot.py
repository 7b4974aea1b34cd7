"""Snapshots of a replica's store, so that a new replica joins without replaying
the whole log: copy a running replica's store, seed the new replica's store with
the copy, start it; it tails the log from the offsets the copy holds.

A store keeps its applied offsets in the same transactions as the state they made,
so one consistent copy of the file is a replica's state at some point of the log,
with the offsets to resume from. SQLite's online backup copies the pages within
one read transaction (WAL: the replica goes on applying meanwhile), so the copy is
consistent whatever the replica does while it is taken.

A copy is valid only against the log it was applied from: ``create`` writes into
the copy (never into the live store) whom it belongs to: the service's namespace,
its log partition count and its service key (``Owner``); ``restore`` refuses a
snapshot of another service, or one that does not say (a store copied by hand).

No Kafka here, and nothing a replica's apply loop uses: these are operator commands.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from minigit import identity
from minigit.errors import MinigitError
from minigit_server.store import SCHEMA_VERSION, SqliteStore, StoreUnusable

# The tables a store must have (its schema, and the applied offsets).
REQUIRED_TABLES = (
    *("applied", "chunks", "blobs", "repos", "versions", "members", "piece_proofs", "accounts", "outcomes"),
    *("uploads", "refs", "clocks"),
)


# The table ``create`` adds to the copy; ``restore`` drops it from the seeded store.
OWNER_TABLE = "snapshot_owner"
MAX_NAMESPACE = 200  # bounds what is read back from a file given to check/restore
MAX_PARTITIONS = 100_000


@dataclass(frozen=True)
class Owner:
    """The service a snapshot belongs to: its log is the one its offsets point into."""

    namespace: str
    partitions: int  # of the service's repo-log
    service_key: str  # public key text (identity.public_key_text)

    @property
    def fingerprint(self) -> str:
        try:
            return identity.fingerprint(identity.parse_public_key(self.service_key))
        except MinigitError:
            return "invalid"

    def differences(self, target: Owner) -> list[str]:
        """What differs from ``target``, one phrase each (empty if the same service)."""
        found = []
        if self.namespace != target.namespace:
            found.append(f"namespace {self.namespace!r} (this replica's: {target.namespace!r})")
        if self.service_key != target.service_key:
            found.append(f"service key {self.fingerprint} (this replica's: {target.fingerprint})")
        if self.partitions != target.partitions:
            found.append(f"{self.partitions} log partitions (this service's: {target.partitions})")
        return found


@dataclass(frozen=True)
class SnapshotInfo:
    path: Path
    size: int
    schema: int
    offsets: dict[int, int]  # next log offset to apply, per partition
    repos: int
    blobs: int
    owner: Owner

    @property
    def records(self) -> int:
        return sum(self.offsets.values())


class SnapshotUnusable(MinigitError):
    """A snapshot file that cannot seed a store: damaged, another schema, not a store."""


class SnapshotForeign(MinigitError):
    """A snapshot of another service (namespace, service key or log partitions differ)."""


def write_owner(db: sqlite3.Connection, owner: Owner) -> None:
    db.execute(
        f"CREATE TABLE {OWNER_TABLE} (namespace TEXT NOT NULL, partitions INTEGER NOT NULL, service_key TEXT NOT NULL)"
    )
    db.execute(f"INSERT INTO {OWNER_TABLE} VALUES (?, ?, ?)", (owner.namespace, owner.partitions, owner.service_key))
    db.commit()


def read_owner(db: sqlite3.Connection, snapshot: Path) -> Owner:
    rows = db.execute(f"SELECT namespace, partitions, service_key FROM {OWNER_TABLE} LIMIT 2").fetchall()
    if len(rows) != 1:
        raise SnapshotUnusable(f"{snapshot} does not say which service it belongs to: {len(rows)} owner rows")
    namespace, partitions, service_key = rows[0]
    if not (isinstance(namespace, str) and len(namespace) <= MAX_NAMESPACE):
        raise SnapshotUnusable(f"{snapshot} names no valid namespace")
    if not (isinstance(partitions, int) and 0 < partitions <= MAX_PARTITIONS):
        raise SnapshotUnusable(f"{snapshot} names no valid log partition count")
    try:
        identity.parse_public_key(service_key)
    except MinigitError:
        raise SnapshotUnusable(f"{snapshot} names no valid service key") from None
    return Owner(namespace, partitions, service_key)


def create(store_file: Path, out: Path, owner: Owner, pages_per_step: int = -1) -> SnapshotInfo:
    """Copy the store ``store_file`` (its replica may be running) of the service
    ``owner`` to ``out``, with ``owner`` written into the copy, then check the copy.
    ``out`` must not exist; it appears only once whole and checked."""
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
                write_owner(target, owner)  # into the copy only
            finally:
                target.close()
        finally:
            source.close()
        info = check(partial)
        partial.rename(out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return SnapshotInfo(out, info.size, info.schema, info.offsets, info.repos, info.blobs, info.owner)


def check(snapshot: Path) -> SnapshotInfo:
    """What a snapshot holds, once it is shown to be a whole store of this schema:
    SQLite's integrity_check passes (every page, every index), the schema version is
    this replica's, every table is there, it says which service it belongs to, and
    its offsets and repositories are in that service's log partitions.
    SnapshotUnusable if not."""
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
            if OWNER_TABLE not in tables:
                raise SnapshotUnusable(
                    f"{snapshot} does not say which service it belongs to (no table {OWNER_TABLE})",
                    hint="take it with 'minigit-server snapshot create' (a store copied by hand cannot seed a replica)",
                )
            owner = read_owner(db, snapshot)
            offsets = dict(db.execute("SELECT partition, next_offset FROM applied"))
            (lowest, highest) = db.execute(
                "SELECT MIN(p), MAX(p) FROM (SELECT partition AS p FROM applied UNION ALL SELECT partition FROM repos)"
            ).fetchone()
            if highest is not None and not (
                isinstance(lowest, int) and isinstance(highest, int) and lowest >= 0 and highest < owner.partitions
            ):
                beyond = highest if not isinstance(highest, int) or highest >= owner.partitions else lowest
                raise SnapshotUnusable(
                    f"{snapshot} holds state of log partition {beyond}, "
                    f"but its service has {owner.partitions} log partitions"
                )
            repos = db.execute("SELECT COUNT(*) FROM repos").fetchone()[0]
            blobs = db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError as error:
        raise SnapshotUnusable(f"{snapshot} is not a usable SQLite store: {error}") from None
    return SnapshotInfo(snapshot, snapshot.stat().st_size, schema, offsets, repos, blobs, owner)


def restore(snapshot: Path, store_file: Path, target: Owner) -> SnapshotInfo:
    """Seed the store ``store_file`` (of a replica of the service ``target`` that is
    not running, and that has no store yet) with a checked copy of ``snapshot``;
    SnapshotForeign if the snapshot belongs to another service."""
    snapshot, store_file = Path(snapshot), Path(store_file)
    leftovers = [store_file.with_name(store_file.name + suffix) for suffix in ("", "-wal", "-shm")]
    if found := [path for path in leftovers if path.exists()]:
        raise MinigitError(
            f"the replica has a store already: {found[0]}",
            hint="a snapshot seeds a new replica; stop this one and move its store files away first",
        )
    info = check(snapshot)
    if differences := info.owner.differences(target):
        raise SnapshotForeign(
            f"{snapshot} is a snapshot of another service: {'; '.join(differences)}",
            hint="restore a snapshot of a replica of this service (same --namespace, service key and repo-log)",
        )
    store_file.parent.mkdir(parents=True, exist_ok=True)
    partial = store_file.with_name(f".{store_file.name}.partial-{os.getpid()}")
    try:
        source = sqlite3.connect(f"{snapshot.resolve().as_uri()}?mode=ro", uri=True)
        try:
            target = sqlite3.connect(partial)
            try:
                source.backup(target)
                target.execute(f"DROP TABLE {OWNER_TABLE}")  # the snapshot's, not the store's
                target.commit()
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
    return SnapshotInfo(
        store_file, store_file.stat().st_size, info.schema, info.offsets, info.repos, info.blobs, info.owner
    )


def default_name(replica_id: str) -> str:
    return f"minigit-replica-{replica_id}-{time.strftime('%Y%m%d-%H%M%S')}.snapshot"
