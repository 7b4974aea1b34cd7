"""The auditor: every repository's history and head recomputed from repo-log alone,
and compared with what the replicas report (``minigit-server audit``). No Kafka here.

A log partition is folded with the very code every replica applies it with
(``apply.apply_records`` into a fresh store of the replicas' own kind, a scratch
SQLite file: the decisions of minigit_server.decisions, not a copy of them, and
the store's indexes: the in-memory twin scans every upload proof per lookup), in
offset order, and from nothing
else: records of different partitions never decide each other's repositories. The
fold shares no state with any replica, so a bug or a hand that changed every
replica's store alike shows here as a disagreement with the log.

Engines feed records in: ``audit_log`` reads them through a ``scan`` function (the
local engine: kafka-python through the bus), and the Spark engine
(minigit_server.sparkjobs.audit_job) calls ``audit_partition`` in its Python
workers, one call per log partition with the records sorted by offset. Both give
``PartitionAudit``s, compared here with the replicas' reports (``compare``) in the
verdict words of ``minigit-server verify``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from minigit import protocol as p
from minigit_server import apply, health
from minigit_server.apply import Authority, LogRecord
from minigit_server.health import Verdict
from minigit_server.store import SqliteStore, Store

# Records applied in one transaction by the fold (the replicas apply what one poll
# brought; where a transaction ends changes nothing in what the log makes).
FOLD_BATCH_RECORDS = 500


@dataclass(frozen=True)
class AuditedRepo:
    """One repository as the log makes it: what a replica that applied the whole
    partition reports of it (head, digest, last change), and its history's length."""

    name: str
    partition: int
    head: int
    digest: str
    changed_at: int
    versions: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PartitionAudit:
    """One log partition folded from ``first`` (its first record's offset) up to
    ``end`` (the next offset, not read): ``records`` records, the repositories they
    leave, and the offset of the last deletion each deleted repository met."""

    partition: int
    end: int
    first: int
    records: int
    repos: list[AuditedRepo]
    deleted: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether the fold began at offset 0 (retention deleted nothing before it)."""
        return self.first == 0 or self.records == 0

    def to_json(self) -> dict:
        return {**asdict(self), "repos": [repo.to_json() for repo in self.repos]}

    @classmethod
    def from_json(cls, doc: dict) -> PartitionAudit:
        return cls(**{**doc, "repos": [AuditedRepo(**repo) for repo in doc["repos"]]})


@contextlib.contextmanager
def scratch_store() -> Iterator[Store]:
    """An empty store of the replicas' kind in a temporary directory, removed after."""
    with tempfile.TemporaryDirectory(prefix="minigit-audit-") as directory:
        store = SqliteStore(Path(directory) / "fold.db")
        try:
            yield store
        finally:
            store.close()


def audit_partition(
    partition: int, records: Iterable[tuple[int, bytes]], partitions: int, authority: Authority, end: int = 0
) -> PartitionAudit:
    """Fold one partition's records, given as (offset, value) in offset order, with
    the replicas' own apply code into an empty store. ``end``: the offset the read
    stopped at (the last record's next offset when larger or not given)."""
    with scratch_store() as store:
        return fold_into(store, partition, records, partitions, authority, end)


def fold_into(
    store: Store, partition: int, records: Iterable[tuple[int, bytes]], partitions: int, authority: Authority, end: int
) -> PartitionAudit:
    first, count, last = None, 0, -1

    def log_records() -> Iterator[LogRecord]:
        nonlocal first, count, last
        for offset, value in records:
            if offset <= last:
                raise ValueError(f"log partition {partition}: offset {offset} after {last} (not in log order)")
            first = offset if first is None else first
            count, last = count + 1, offset
            yield LogRecord(partition, offset, value)

    deletions: dict[str, int] = {}
    pending = log_records()
    # in batches: one transaction per batch, and at most a batch of records (chunk
    # payloads included) held at once, however long the log
    while batch := list(itertools.islice(pending, FOLD_BATCH_RECORDS)):
        for record, message in apply.apply_records(store, batch, partitions, authority):
            if isinstance(message, p.DeleteProposal):
                deletions[message.repo] = record.offset
    deleted = {name: offset for name, offset in deletions.items() if store.get_repo(name) is None}
    repos = []
    for page in range(p.REPORT_PAGES):
        for name, report in store.page_reports(partition, page).items():
            versions = len(store.list_versions(name))
            repos.append(AuditedRepo(name, partition, report.head, report.digest, report.changed_at, versions))
    repos.sort(key=lambda repo: repo.name)
    return PartitionAudit(partition, max(end, last + 1), first or 0, count, repos, deleted)


def audit_log(
    scan: Callable[[int, int], Iterable[LogRecord]], ends: dict[int, int], authority: Authority
) -> list[PartitionAudit]:
    """Every partition of the log up to ``ends`` (partition -> next offset), read by
    ``scan(partition, end)`` from its beginning: the local engine."""
    partitions = len(ends)
    return [
        audit_partition(n, ((r.offset, r.value) for r in scan(n, end)), partitions, authority, end)
        for n, end in sorted(ends.items())
    ]


@contextlib.contextmanager
def quiet_apply_log() -> Iterator[None]:
    """The fold skips what every replica skips; the replicas log why, the audit does not."""
    logger = logging.getLogger("minigit.apply")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------- compared with the replicas


@dataclass(frozen=True)
class AuditVerdict:
    """One repository: the log's state against each live replica's report."""

    repo: str
    partition: int
    status: Verdict
    head: int | None  # the head the log makes (None: the log holds no such repository)
    versions: int
    heads: dict[str, int | None]  # replica -> head it reports (None: it holds none)
    behind: dict[str, int] = field(default_factory=dict)  # replica -> log records it has not applied yet
    disagreeing: list[str] = field(default_factory=list)  # replicas whose state is not the log's
    newer: list[str] = field(default_factory=list)  # replicas that changed it past the audit's read: not compared
    # disagreeing replicas whose report of it does not hash to their heartbeat (a store changed behind their back?)
    unreadable: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def compare(audits: list[PartitionAudit], views: list[health.ReplicaView]) -> list[AuditVerdict]:
    """Each repository the log or a replica holds, against every replica in ``views``.

    A replica that applied the record that last changed a repository must report
    exactly the log's state of it (head, digest, partition, last change), or it
    disagrees; one that has not applied it yet is behind, by the records between
    its position and the end of the audit's read. A repository the log no longer
    holds is behind on a replica that has not applied its deletion, and disagrees
    on one that has (or that holds one the log never made). A replica whose state
    of it is newer than the audit's read (changed, or maybe deleted, after its end)
    is not compared: ``newer``. A replica whose heartbeat names a page for a
    repository that could not be read (it does not hash to the heartbeat's digest:
    after --wait, a store changed behind the replica's back, as a rule) is placed by
    its heartbeat's position: behind if that is before the last change, else it
    disagrees (``unreadable``): nothing it reports proves it holds the log's state.
    """
    by_partition = {audit.partition: audit for audit in audits}
    partitions = len(by_partition)
    audited = {repo.name: repo for audit in audits for repo in audit.repos}
    deleted = {name: offset for audit in audits for name, offset in audit.deleted.items()}
    names = sorted(audited.keys() | {name for view in views for name in view.repos})
    verdicts = []
    for name in names:
        repo = audited.get(name)
        partition = repo.partition if repo else p.log_partition(name, partitions) if partitions else 0
        end = by_partition[partition].end if partition in by_partition else 0
        heads: dict[str, int | None] = {}
        behind: dict[str, int] = {}
        disagreeing: list[str] = []
        newer: list[str] = []
        unreadable: list[str] = []
        for view in views:
            report = view.repos.get(name)
            heads[view.replica] = report.head if report else None
            at = view.position(partition, name)
            if view.unreadable(partition, name):
                at = view.beat.applied.get(partition, 0)  # how far it applied, by its heartbeat
                if report is None and repo is not None and repo.changed_at < at <= end:
                    unreadable.append(view.replica)
            if (report.changed_at >= end) if report is not None else (at > end):
                newer.append(view.replica)
            elif repo is not None:
                if at <= repo.changed_at:
                    behind[view.replica] = max(1, end - at)
                elif report is None or (report.head, report.digest, report.partition, report.changed_at) != (
                    repo.head,
                    repo.digest,
                    repo.partition,
                    repo.changed_at,
                ):
                    disagreeing.append(view.replica)
            elif report is not None:
                if at <= deleted.get(name, -1):
                    behind[view.replica] = max(1, end - at)
                else:
                    disagreeing.append(view.replica)
        status = Verdict.DISAGREE if disagreeing else Verdict.BEHIND if behind else Verdict.AGREE
        verdicts.append(
            AuditVerdict(
                name,
                partition,
                status,
                repo.head if repo else None,
                repo.versions if repo else 0,
                heads,
                behind,
                sorted(disagreeing),
                sorted(newer),
                sorted(unreadable),
            )
        )
    return verdicts
