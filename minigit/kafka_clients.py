"""The Kafka clients both sides build, configured in one place.

The client's transport and the server's bus open their producers, consumers and
admin clients here, so that durability (``acks="all"``), fetch sizes, security
options and the tuning below are the same everywhere, and a broker that cannot
be reached is one ``ServerUnreachable`` error whichever side met it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import selectors
from typing import Any

import kafka.cluster
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import (
    InvalidTopicError,
    KafkaError,
    LeaderNotAvailableError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from minigit.config import FETCH_BYTES, KafkaSettings

log = logging.getLogger("minigit.kafka")

# Failures of Kafka or of the machine, as opposed to a bad request.
INFRASTRUCTURE_ERRORS = (KafkaError, OSError)
# What a metadata answer says of a topic that a client cannot use (or not yet).
TOPIC_ERRORS = (UnknownTopicOrPartitionError, TopicAuthorizationFailedError, LeaderNotAvailableError, InvalidTopicError)

# kafka-python 3.0 builds its metadata cache without passing retry_backoff_ms on,
# so the first metadata request after bootstrap waits its 100 ms default: about
# two thirds of a short command's time. 10 ms keeps a backoff and drops the wait.
kafka.cluster.ClusterMetadata.DEFAULT_CONFIG["retry_backoff_ms"] = 10


# Coming back after a broker outage. kafka-python backs off reconnecting up to
# 30 s (doubling, from 50 ms), so a broker back after a 10 s outage was found
# again up to 30 s later; at most 1 s here, so service resumes within about a
# second of the broker answering. A request to a broker that stopped answering
# (SIGSTOP, a dead host: no reset) fails after 10 s instead of 30, and is retried.
RECOVERY_OPTIONS: dict[str, Any] = {"reconnect_backoff_max_ms": 1000, "request_timeout_ms": 10_000}


class QuietSelector(selectors.DefaultSelector):
    """The default selector, whose ``get_key`` of a socket not registered raises a
    bare KeyError. kafka-python 3.0 asks it before every wait on a socket (and
    unregisters the socket after), and the standard one formats the socket into its
    message (two system calls and a string). Measured with bench/throughput.py, 8
    clients doing up-to-date pulls: client CPU 5.3 -> 3.7 ms an operation, replica
    2.9 -> 2.3 ms (a shared, loaded 2-core machine)."""

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        key = self._fd_to_key.get(self._fileobj_lookup(fileobj))
        if key is None:
            raise KeyError(fileobj)
        return key


# Every client waits on its sockets through it.
TUNING: dict[str, Any] = {"selector": QuietSelector}


def open_producer(settings: KafkaSettings, **extra: Any) -> KafkaProducer:
    """A producer that reports a record sent only once every in-sync replica has it."""
    return _open(settings, KafkaProducer, {"acks": "all", "linger_ms": 0, **extra})


def open_consumer(settings: KafkaSettings, **extra: Any) -> KafkaConsumer:
    """A consumer that commits only when told to, and fetches a whole chunk at once."""
    return _open(
        settings, KafkaConsumer, {"enable_auto_commit": False, "max_partition_fetch_bytes": FETCH_BYTES, **extra}
    )


def topic_partitions(consumer: KafkaConsumer, topics: list[str], timeout_ms: int) -> dict[str, set[int] | None]:
    """The partitions of each of ``topics`` (None: no such topic, or not one this
    client may see), in one metadata request about these topics only.

    kafka-python's ``partitions_for_topic`` asks for the metadata of every topic in
    the cluster: on a shared broker with 2,700 topics that answer took 120 ms of a
    command's 150 ms of connecting, and it grows with every namespace. Give the
    consumer ``allow_auto_create_topics=False``: asking about a topic by name would
    otherwise create it where the broker auto-creates topics (a mistyped namespace).
    KafkaTimeoutError after ``timeout_ms``."""
    cluster = getattr(consumer, "_cluster", None)
    net, manager = getattr(consumer, "_net", None), getattr(consumer, "_manager", None)
    if not (
        inspect.iscoroutinefunction(getattr(cluster, "refresh_metadata", None))
        and hasattr(cluster, "metadata_refresh_in_progress")
        and hasattr(net, "call_soon_with_future")
        and hasattr(manager, "wait_for")
    ):  # a kafka-python built otherwise than 3.0.12: its own way, every topic's metadata
        return {topic: consumer.partitions_for_topic(topic) for topic in topics}

    async def refresh() -> None:  # (on the consumer's network thread)
        if cluster.metadata_refresh_in_progress:  # an answer about other topics: let it land first
            await cluster.refresh_metadata()
        update = cluster.set_topics(topics)
        if update.is_done:  # (already tracked)
            update = cluster.request_update()
        # Asked now: left to kafka-python's refresh loop, the request would first wait
        # out retry_backoff_ms since the bootstrap's own (8 of a connection's 25 ms).
        # Should it fail, that loop asks again, after its backoff.
        with contextlib.suppress(KafkaError):
            await cluster.refresh_metadata()
        await update

    async def refresh_within_timeout() -> None:
        await manager.wait_for(net.call_soon_with_future(refresh), timeout_ms)

    with contextlib.suppress(TOPIC_ERRORS):  # an answer about one topic fails with its error: it is not there
        net.run(refresh_within_timeout)
    return {topic: cluster.partitions_for_topic(topic) for topic in topics}


def open_admin(settings: KafkaSettings, **extra: Any) -> KafkaAdminClient:
    return _open(settings, KafkaAdminClient, extra)


def _open(settings: KafkaSettings, kind: type, extra: dict[str, Any]) -> Any:
    try:
        # The user's settings win: a client_id given for quotas or ACLs replaces ours.
        client = kind(**{**RECOVERY_OPTIONS, **TUNING, **extra, **settings.kafka_options()})
    except INFRASTRUCTURE_ERRORS as error:
        raise settings.unreachable(error) from None
    keep_auto_create_choice(client)
    return client


def keep_auto_create_choice(client: Any) -> None:
    """Make a client's metadata requests say what its allow_auto_create_topics says.
    kafka-python 3.0.12 builds the metadata cache without it, so every request about a
    topic by name asked the broker to create it (a broker with Kafka's default
    auto.create.topics.enable=true made a mistyped namespace's topics). The bootstrap
    asks about no topic: setting it once the client is built is in time."""
    config = getattr(client, "config", None)
    cluster = getattr(client, "_cluster", None) or getattr(client, "_metadata", None)
    cluster_config = getattr(cluster, "config", None)
    if isinstance(config, dict) and isinstance(cluster_config, dict) and "allow_auto_create_topics" in cluster_config:
        cluster_config["allow_auto_create_topics"] = config.get("allow_auto_create_topics", True)


def close_producer(producer: KafkaProducer, timeout_s: float) -> None:
    """Close a producer, sending what it holds for up to ``timeout_s``. With no
    broker to take them, its records are given up (they were never acknowledged,
    so nothing that was reported sent is lost), rather than the flush's timeout
    escaping from a command that has done its work."""
    try:
        producer.close(timeout=timeout_s)
    except INFRASTRUCTURE_ERRORS as error:
        log.info("producer closed with records unsent: %s", error)
        # kafka-python 3.0 leaves such a producer open, its sender running, and closes it
        # again when it is garbage-collected, raising in __del__: stop the sender now.
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
        producer._closed = True
