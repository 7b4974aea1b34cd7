"""What a replica reports of its repositories, each heartbeat (no Kafka).

A heartbeat carries, per log partition, how many repositories the replica holds, a
digest of them and the digest of each report page (``PartitionReport``). The
reports themselves travel in ``RepoPage`` records, one per page, published only
when the page's digest changed since this replica last published it (every page
once after a start), and a tombstone once a page is empty: a heartbeat stays a few
kilobytes and no record nears Kafka's limit, whatever the number of repositories.
Pages and the summary are read in one snapshot of the store, with the applied
offsets, so a page whose digest is the heartbeat's describes the store at them.

Every digest is kept at apply time; ``RepoReporter.audit`` also folds the rows of
a few repositories again each heartbeat, in turn, and keeps the rows' digest where
it differs (a store changed behind the replica's back shows as a disagreement).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from minigit import protocol as p
from minigit_server import digests
from minigit_server.store import Store

log = logging.getLogger("minigit.replica")

# Repositories whose rows a heartbeat folds again (the audit), at most.
AUDIT_REPOS_PER_BEAT = 200


@dataclass
class RepoReports:
    """One heartbeat's worth: the applied offsets, the per-partition summaries, the
    pages to publish (changed since last published) and the pages now empty."""

    applied: dict[int, int]
    partitions: dict[int, p.PartitionReport]
    pages: list[p.RepoPage] = field(default_factory=list)
    emptied: list[tuple[int, int]] = field(default_factory=list)

    @property
    def digests(self) -> dict[tuple[int, int], str]:
        return {(n, page): d for n, report in self.partitions.items() for page, d in enumerate(report.pages)}


def collect(store: Store, replica: str, published: dict[tuple[int, int], str]) -> RepoReports:
    """The summaries and the pages whose digest is not ``published``'s, in one snapshot."""
    with store.snapshot():
        applied = store.applied_offsets()
        by_partition: dict[int, list[str]] = {}
        counts: dict[int, int] = {}
        for (partition, page), (count, total) in store.report_pages().items():
            if not 0 <= page < p.REPORT_PAGES:
                continue
            by_partition.setdefault(partition, [""] * p.REPORT_PAGES)[page] = digests.page_digest(count, total)
            counts[partition] = counts.get(partition, 0) + count
        partitions = {
            n: p.PartitionReport(repos=counts[n], digest=digests.partition_digest(pages), pages=pages)
            for n, pages in sorted(by_partition.items())
        }
        reports = RepoReports(applied, partitions)
        for (partition, page), digest in sorted(reports.digests.items()):
            if published.get((partition, page), "") == digest:
                continue
            if not digest:
                reports.emptied.append((partition, page))
                continue
            repos = store.page_reports(partition, page)
            reports.pages.append(
                p.RepoPage(
                    replica=replica,
                    partition=partition,
                    page=page,
                    applied=applied.get(partition, 0),
                    digest=digest,
                    repos=repos,
                )
            )
        return reports


# Every page is published again this often (heartbeats: about a minute), whether it
# changed or not: a tombstone or a page someone else wrote over one of this
# replica's keys on repo-replicas, or a page lost, made the replica look behind until
# that page next changed (an outside tester's finding). 10,000 repositories are about
# 4 MB of pages a minute per replica, on a compacted topic.
REPUBLISH_EVERY = 30


class RepoReporter:
    """A replica's memory of what it published, and where its audit is."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.published: dict[tuple[int, int], str] = {}
        self.audit_after = ""
        self.collected = 0

    def collect(self, store: Store) -> RepoReports:
        """The reports to publish: the pages changed since the last ones sent, and
        every page every REPUBLISH_EVERY collections."""
        if self.collected % REPUBLISH_EVERY == 0:
            self.published = {}
        self.collected += 1
        return collect(store, self.replica, self.published)

    def sent(self, reports: RepoReports) -> None:
        """The pages of ``reports`` reached the broker."""
        for page in reports.pages:
            self.published[(page.partition, page.page)] = page.digest
        for key in reports.emptied:
            self.published.pop(key, None)

    def audit(self, store: Store, limit: int = AUDIT_REPOS_PER_BEAT) -> list[str]:
        """Fold the rows of the next ``limit`` repositories again (by name, wrapping
        around); the names whose kept digest did not match (now replaced)."""
        names = [repo.name for repo in store.list_repos(self.audit_after, limit)]
        self.audit_after = names[-1] if len(names) == limit else ""
        mismatched = []
        for name in names:
            with store.snapshot():
                fresh = store.recompute_digest(name)
                kept = store.digest_state(name)
            if fresh is None or fresh == kept:
                continue
            with store.transaction():
                if not store.audit_digest(name):
                    mismatched.append(name)
        for name in mismatched:
            log.error(
                "repository %s: its rows do not match the digest kept when they were applied "
                "(the store was changed behind this replica); reporting the rows' digest",
                name,
            )
        return mismatched
