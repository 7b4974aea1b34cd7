"""``minigit-server activity``: a Structured Streaming query over repo-requests,
repo-log and repo-responses (Spark's Kafka source), each micro-batch folded into
the figures of minigit_server.activity, and the figures it changed written to a
compacted topic (Spark's Kafka sink), one record per (scope, name, minute).

The figures' state lives in the driver (an ``ActivityTracker``, holding the log's
fold for the push outcomes): the query always starts from the topics' beginning
with a fresh checkpoint, and rebuilds it. Within a micro-batch, requests are fed
first, then the log, then the answers (each topic partition in offset order), so
an answer meets its request whichever came first in the batch.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from minigit.config import Topics
from minigit_server.activity import ActivityTracker
from minigit_server.apply import Authority

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery


MAX_RECORDS_PER_BATCH = 20_000


def activity_topic(topics: Topics) -> str:
    """The compacted topic of the figures, beside the service's (``<namespace>repo-activity``)."""
    return topics.log.removesuffix("repo-log") + "repo-activity"


def feed_rows(tracker: ActivityTracker, topics: Topics, rows: Iterable) -> None:
    """One micro-batch's rows (topic, partition, offset, time_ms, value) fed to the
    tracker: requests first, then the log, then the answers, each topic partition in
    offset order. A record without a value (a tombstone, a key alone: anyone who may
    write a topic may send one) is left out: it is no request, answer or log record."""
    valued = (row for row in rows if row.value is not None)
    rows = sorted(valued, key=lambda row: (row.topic, row.partition, row.offset))
    by_topic: dict[str, list] = {topics.requests: [], topics.log: [], topics.responses: []}
    for row in rows:
        by_topic[row.topic].append(row)
    for row in by_topic[topics.requests]:
        tracker.feed_request(row.time_ms, bytes(row.value))
    log_partitions: dict[int, list] = {}
    for row in by_topic[topics.log]:
        log_partitions.setdefault(row.partition, []).append((row.offset, row.time_ms, bytes(row.value)))
    for partition, records in sorted(log_partitions.items()):
        tracker.feed_log(partition, records)
    for row in by_topic[topics.responses]:
        tracker.feed_response(row.time_ms, bytes(row.value))


def start(
    session: SparkSession,
    kafka_options: dict[str, str],
    topics: Topics,
    partitions: int,
    authority: Authority,
    once: bool = False,
    interval_s: float = 1.0,
    on_batch: Callable[[int, dict[str, str]], None] | None = None,
) -> tuple[StreamingQuery, ActivityTracker, str]:
    """Start the query: every record now in the topics, then (unless ``once``) what
    arrives, a micro-batch every ``interval_s``. ``on_batch(batch_id, written)`` is
    told the records each batch wrote. Returns the query, the tracker and the
    checkpoint directory (the caller removes it once the query stopped)."""
    from pyspark.sql import functions as F

    tracker = ActivityTracker(partitions, authority, now_ms=lambda: int(time.time() * 1000))
    output = activity_topic(topics)
    stream = (
        session.readStream.format("kafka")
        .options(**kafka_options)
        .option("subscribe", ",".join((topics.requests, topics.log, topics.responses)))
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "false")
        # each batch is collected to the driver: a backlog is read in bounded batches
        .option("maxOffsetsPerTrigger", MAX_RECORDS_PER_BATCH)
        .load()
        .select(
            "topic",
            "partition",
            "offset",
            (F.col("timestamp").cast("double") * 1000).cast("long").alias("time_ms"),
            "value",
        )
    )

    def handle(batch: DataFrame, batch_id: int) -> None:
        feed_rows(tracker, topics, batch.collect())
        written = tracker.take_changed()
        if written:
            (
                session.createDataFrame(sorted(written.items()), "key string, value string")
                .write.format("kafka")
                .options(**kafka_options)
                .option("topic", output)
                .save()
            )
        if on_batch is not None:
            on_batch(batch_id, written)

    checkpoint = tempfile.mkdtemp(prefix="minigit-activity-")
    writer = stream.writeStream.foreachBatch(handle).option("checkpointLocation", checkpoint)
    writer = writer.trigger(availableNow=True) if once else writer.trigger(processingTime=f"{interval_s} seconds")
    return writer.start(), tracker, checkpoint
