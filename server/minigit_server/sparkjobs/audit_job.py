"""``minigit-server audit --engine spark``: repo-log read from its beginning as one
batch of Spark's Kafka source, each partition folded in offset order in a Python
worker with the replicas' own apply code (minigit_server.audit.audit_partition).

The records of a log partition are brought to one Spark partition and sorted by
offset there (Spark's sort spills to disk; the worker folds the rows as they
stream by): Kafka orders a partition, and a fold in any other order would make
another history. Partitions are folded in parallel, as many at a time as Spark
has cores.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

from minigit_server import audit
from minigit_server.apply import Authority

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def fold_partitions(rows: Iterator, partitions: int, namespace: str, server_key: str) -> Iterator[dict]:
    """In a Python worker: the rows of one Spark partition, sorted by (log partition,
    offset), each log partition folded in offset order as the rows stream by (never
    all of them in memory). Yields JSON-ready data (what travels back to the driver)."""
    authority = Authority(namespace, server_key)
    for partition, group in itertools.groupby(rows, key=lambda row: row.partition):
        # a tombstone's value is None: skipped by the fold as by every replica
        records = ((row.offset, None if row.value is None else bytes(row.value)) for row in group)
        with audit.quiet_apply_log():
            yield audit.audit_partition(partition, records, partitions, authority).to_json()


def audit_log(
    session: SparkSession,
    kafka_options: dict[str, str],
    topic: str,
    ends: dict[int, int],
    authority: Authority,
) -> list[audit.PartitionAudit]:
    """Every partition of ``topic`` from its beginning up to ``ends`` (partition -> next
    offset, read before: the replicas' reports are compared at those positions)."""
    partitions = len(ends)
    read = [n for n, end in sorted(ends.items()) if end > 0]
    found: dict[int, audit.PartitionAudit] = {}
    if read:
        frame = (
            session.read.format("kafka")
            .options(**kafka_options)
            .option("assign", json.dumps({topic: read}))
            .option("startingOffsets", json.dumps({topic: {str(n): -2 for n in read}}))
            .option("endingOffsets", json.dumps({topic: {str(n): ends[n] for n in read}}))
            .option("failOnDataLoss", "false")
            .load()
        )
        namespace, server_key = authority.namespace, authority.server_key
        folded = (
            frame.select("partition", "offset", "value")
            .repartition(max(1, len(read)), "partition")
            .sortWithinPartitions("partition", "offset")
            .rdd.mapPartitions(lambda rows: fold_partitions(rows, partitions, namespace, server_key))
            .collect()
        )
        for doc in folded:
            part = audit.PartitionAudit.from_json(doc)
            found[part.partition] = part
    result = []
    for n, end in sorted(ends.items()):
        part = found.get(n) or audit.PartitionAudit(n, end, 0, 0, [], {})
        # the read stopped at ``end``, whatever the last record's offset (a
        # transaction marker or a compacted gap may sit before it)
        result.append(audit.PartitionAudit(part.partition, end, part.first, part.records, part.repos, part.deleted))
    return result
