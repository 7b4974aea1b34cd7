"""The server's Kafka code: topics, the request consumer group, the log reader,
and the producer. The rest of the server sees plain records and offsets.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

from minigit import protocol as p
from minigit.config import DEFAULT_RETENTION, KafkaSettings, TopicRetention, Topics
from minigit.errors import MinigitError, ProtocolError, ServerUnreachable
from minigit.kafka_clients import INFRASTRUCTURE_ERRORS, close_producer, open_admin, open_consumer, open_producer
from minigit_server.apply import LogRecord

log = logging.getLogger("minigit.bus")

DAY_MS = 24 * 3600 * 1000
# repo-replicas keeps the latest record of each key: segments roll every minute (or
# 16 MiB), so that compaction, which never touches the active segment, keeps what
# status and verify read from its beginning small (Kafka's defaults: a week, 1 GiB).
REPLICAS_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": str(60_000),
    "segment.bytes": str(16 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.1",
}
# A heartbeat reports the log's end if a broker gives it within this; else it is skipped.
HEARTBEAT_OFFSETS_TIMEOUT_S = 2.0
# The longest a flush waits for Kafka to acknowledge what a thread sent.
FLUSH_TIMEOUT_S = 60.0


def topic_specs(
    topics: Topics,
    partitions: int,
    replication_factor: int,
    min_insync: int | None,
    retention: TopicRetention = DEFAULT_RETENTION,
) -> list[NewTopic]:
    durable = {"min.insync.replicas": str(min_insync)} if min_insync else {}
    return [
        NewTopic(
            topics.requests,
            partitions,
            replication_factor,
            topic_configs={**transient_configs(topics, retention)[topics.requests], **durable},
        ),
        NewTopic(
            topics.responses,
            partitions,
            replication_factor,
            topic_configs=transient_configs(topics, retention)[topics.responses],
        ),
        # The log is the source of truth (a replica rebuilds from it): keep it forever.
        NewTopic(
            topics.log,
            partitions,
            replication_factor,
            topic_configs={"retention.ms": "-1", "retention.bytes": "-1", **durable},
        ),
        NewTopic(topics.replicas, 1, replication_factor, topic_configs=REPLICAS_TOPIC_CONFIG),
    ]


def transient_configs(topics: Topics, retention: TopicRetention) -> dict[str, dict[str, str]]:
    """The retention settings of the two transient topics, by topic name. Only these
    two are ever altered: the log's infinite retention is never touched."""
    return {
        topics.requests: retention.topic_configs(retention.requests_ms),
        topics.responses: retention.topic_configs(retention.responses_ms),
    }


def ensure_topics(
    settings: KafkaSettings,
    partitions: int,
    replication_factor: int,
    min_insync: int | None = None,
    retention: TopicRetention = DEFAULT_RETENTION,
    warn: Callable[[str], object] = log.warning,
) -> list[str]:
    """Create the service's topics that are missing; return the names created.
    The transient topics that existed already get ``retention`` (an incremental
    change: their other settings stay); if the broker refuses, ``warn`` is told why.

    Never relies on broker auto-creation. Running it twice is harmless.
    """
    admin = open_admin(settings)
    try:
        existing = set(admin.list_topics())
        created = []
        for spec in topic_specs(settings.topics, partitions, replication_factor, min_insync, retention):
            if spec.name in existing:
                continue
            try:
                admin.create_topics([spec])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # another replica created it first
        altered = [
            ConfigResource(ConfigResourceType.TOPIC, name, configs=configs)
            for name, configs in transient_configs(settings.topics, retention).items()
            if name in existing
        ]
        if altered:
            # Best effort: a principal without AlterConfigs on the topics (ACLs) still
            # runs the service, with the retention the topics have.
            try:
                # raise_on_unknown=False: kafka-python's own check compares the names with
                # the topic's *dynamic* configs, none on a fresh topic; the broker checks them.
                answers = admin.alter_configs(altered, raise_on_unknown=False, incremental=True)
                failed = [str(answer) for answer in _config_errors(answers)]
            except (KafkaError, ValueError) as error:
                failed = [str(error)]
            if failed:
                warn(
                    f"could not set the retention of {', '.join(r.name for r in altered)}: {'; '.join(failed)} "
                    "(grant AlterConfigs on them, or set retention.ms/retention.bytes with kafka-configs.sh)"
                )
        return created
    except KafkaError as error:
        raise MinigitError(f"could not create the minigit topics: {error}") from None
    finally:
        admin.close()


def ensure_compacted_topic(settings: KafkaSettings, name: str, replication_factor: int = 1) -> bool:
    """A compacted topic of one partition (the activity figures: the latest record of
    each key is what counts); True if it was created now."""
    admin = open_admin(settings)
    try:
        if name in set(admin.list_topics()):
            return False
        try:
            admin.create_topics([NewTopic(name, 1, replication_factor, topic_configs=REPLICAS_TOPIC_CONFIG)])
        except TopicAlreadyExistsError:
            return False
        return True
    except KafkaError as error:
        raise MinigitError(f"could not create topic {name}: {error}") from None
    finally:
        admin.close()


def latest_values(settings: KafkaSettings, topic: str, timeout_s: float = 10.0) -> dict[bytes, bytes]:
    """The latest value under every key of a one-partition compacted topic, read from
    its beginning to its end now (tombstoned keys left out). A topic that does not
    exist holds nothing (asking its end offsets would wait for it, then time out)."""
    consumer = open_consumer(settings, group_id=None, enable_auto_commit=False)
    try:
        if not consumer.partitions_for_topic(topic):
            return {}
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        latest: dict[bytes, bytes] = {}
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took over {timeout_s:g}s")
            for records in consumer.poll(timeout_ms=200).values():
                keep_latest(latest, records)
        return latest
    finally:
        consumer.close()


def keep_latest(latest: dict[bytes, bytes], records: Iterable[ConsumerRecord]) -> None:
    """The latest value under each key, as compaction keeps it: a tombstone drops its
    key, a record without a key is no one's."""
    for record in records:
        if record.key is None:
            continue
        latest.pop(record.key, None)
        if record.value is not None:
            latest[record.key] = record.value


def _config_errors(answers: object) -> list[object]:
    """The errors in alter_configs' answer ({type: {name: error or result}})."""
    found = []
    for by_name in (answers or {}).values() if isinstance(answers, dict) else ():
        for name, result in by_name.items():
            if isinstance(result, Exception) or (getattr(result, "errno", 0) or 0) != 0:
                found.append(f"{name}: {result}")
    return found


def topic_configs(settings: KafkaSettings, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """The settings of topics as the broker has them (for tests and benchmarks)."""
    admin = open_admin(settings)
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        found = admin.describe_configs(resources, config_filter="all")["topic"]
        return {name: {key: entry["value"] for key, entry in configs.items()} for name, configs in found.items()}
    finally:
        admin.close()


def topic_sizes(settings: KafkaSettings, names: Iterable[str]) -> dict[str, int]:
    """Bytes each topic holds on the brokers' disks (every partition, every copy),
    as the brokers report them (for benchmarks and operators)."""
    names = list(names)
    admin = open_admin(settings)
    try:
        sizes = dict.fromkeys(names, 0)
        for broker in admin.describe_log_dirs(names):
            for log_dir in broker.get("log_dirs", []):
                for topic in log_dir.get("topics", []):
                    if topic["name"] in sizes:
                        sizes[topic["name"]] += sum(part["partition_size"] for part in topic["partitions"])
        return sizes
    finally:
        admin.close()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, on_change: Callable[[list[int]], None], before_revoke: Callable[[], None] | None = None) -> None:
        self.on_change = on_change
        self.before_revoke = before_revoke

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        if self.before_revoke is not None:
            self.before_revoke()  # on Kafka's network thread: must not block
        self.on_change([])

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.on_change(sorted(tp.partition for tp in assigned))


@dataclass(frozen=True)
class RequestRecord:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes


class Bus:
    """One replica's connections. The producer is shared by its threads (kafka-python's
    producer is thread-safe); each consumer belongs to one thread."""

    def __init__(
        self,
        settings: KafkaSettings,
        client_id: str,
        bootstrap_timeout_s: float | None = None,
        flush_own_records: bool = False,
    ) -> None:
        self.settings = settings
        # A replica's threads each flush only what they sent (``flush``).
        self.flush_own_records = flush_own_records
        self.topics = settings.topics
        self.extra: dict[str, object] = {"client_id": client_id}
        if bootstrap_timeout_s:
            self.extra["bootstrap_timeout_ms"] = int(bootstrap_timeout_s * 1000)
        self.producer = open_producer(settings, **self.extra)
        self._sent = threading.local()  # each thread's records not yet acknowledged (flush)
        self._offsets_lock = threading.Lock()
        self._offsets_consumer: KafkaConsumer | None = self._consumer()
        # The heartbeat's own: a heartbeat stuck on a broker that does not answer
        # never holds up the read barrier (which uses the one above).
        self._report_lock = threading.Lock()
        self._report_consumer: KafkaConsumer | None = None
        self._partition_counts: dict[str, int] = {}

    def _consumer(self, **extra: object) -> KafkaConsumer:
        return open_consumer(self.settings, **self.extra, **extra)

    def partition_count(self, topic: str, wait_s: float = 10.0) -> int:
        """The partitions of one of the service's topics. A missing topic is what the
        client reports too: the service is not there (ServerUnreachable, exit 4)."""
        if topic in self._partition_counts:
            return self._partition_counts[topic]
        deadline = time.monotonic() + wait_s  # a topic just created may not be in metadata yet
        while True:
            with self._offsets_lock:
                if self._offsets_consumer is None:
                    self._offsets_consumer = self._consumer()
                found = self._offsets_consumer.partitions_for_topic(topic)
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not found:
            raise ServerUnreachable(
                f"the minigit topics do not exist on {self.settings.bootstrap} (no topic {topic})",
                hint="start the service with 'minigit-server start' (it creates them)",
            )
        # Partition counts never change (adding partitions would move repositories).
        self._partition_counts[topic] = len(found)
        return len(found)

    def log_partition(self, repo: str) -> int:
        """The log partition of a repository, computed here (not by the producer's
        partitioner), so that every write of a repository lands in its partition."""
        return p.log_partition(repo, self.partition_count(self.topics.log))

    def reply_partitions(self) -> int:
        return self.partition_count(self.topics.responses)

    def log_partition_count(self) -> int:
        return self.partition_count(self.topics.log)

    def log_end_offsets(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """The end of the log now (the read barrier): KafkaTimeoutError after the
        clients' request timeout if no broker answers."""
        if partitions is None:
            partitions = range(self.partition_count(self.topics.log))
        tps = [TopicPartition(self.topics.log, n) for n in partitions]
        with self._offsets_lock:
            ends = self._end_offsets("_offsets_consumer", tps, None)
        return {tp.partition: offset for tp, offset in ends.items()}

    def _end_offsets(self, which: str, tps: list[TopicPartition], timeout_ms: int | None) -> dict[TopicPartition, int]:
        """End offsets on the consumer in attribute ``which``, opened first if there
        is none. One whose lookup failed is dropped, and the next lookup opens a
        new one: kafka-python's kept failing for minutes after a cluster's leader
        came back, and a consumer whose network closed only raises RuntimeError
        ("NetworkSelector closed!") from then on. Every failure is a Kafka error."""
        consumer = getattr(self, which)
        if consumer is None:
            consumer = self._consumer()  # ServerUnreachable while no broker answers
            setattr(self, which, consumer)
        try:
            return consumer.end_offsets(tps, timeout_ms=timeout_ms)
        except (*INFRASTRUCTURE_ERRORS, RuntimeError) as error:
            setattr(self, which, None)
            with contextlib.suppress(Exception):
                consumer.close()
            if isinstance(error, RuntimeError):
                raise KafkaConnectionError(f"the consumer failed: {error}") from error
            raise

    def reported_log_end_offsets(self, timeout_s: float = HEARTBEAT_OFFSETS_TIMEOUT_S) -> dict[int, int]:
        """The end of every log partition, for a heartbeat: on a consumer of its
        own, and given up after ``timeout_s`` (KafkaTimeoutError)."""
        tps = [TopicPartition(self.topics.log, n) for n in range(self.partition_count(self.topics.log))]
        with self._report_lock:
            ends = self._end_offsets("_report_consumer", tps, int(timeout_s * 1000))
        return {tp.partition: offset for tp, offset in ends.items()}

    # -- producing

    def append_log(self, partition: int, key: bytes, value: bytes, wait: bool) -> int | None:
        """Append to the replication log; with ``wait``, return the record's offset
        once the broker has it (and, by ordering, everything sent before it)."""
        future = self._send(self.topics.log, key=key, value=value, partition=partition)
        if wait:
            return future.get(timeout=60).offset
        return None

    def send_reply(self, partition: int, message: p.Message) -> None:
        self._send(self.topics.responses, value=message.to_bytes(), partition=partition)

    def publish_heartbeat(self, beat: p.Heartbeat) -> None:
        self._send(self.topics.replicas, key=beat.replica.encode(), value=beat.to_bytes())

    def publish_repo_pages(self, replica: str, pages: list[p.RepoPage], emptied: list[tuple[int, int]]) -> None:
        """Publish report pages, and tombstones for pages now empty; return once the
        broker has them all, so that the heartbeat naming their digests follows them."""
        topic = self.topics.replicas
        sent = [self.producer.send(topic, key=page.key, value=page.to_bytes()) for page in pages]
        sent += [self.producer.send(topic, key=p.report_page_key(replica, n, page), value=None) for n, page in emptied]
        for future in sent:
            future.get(timeout=30)

    def request_scrub(self, request: p.ScrubRequest) -> None:
        """Ask every replica to read and hash its whole store now (verify --deep)."""
        self._send(self.topics.replicas, key=p.SCRUB_REQUEST_KEY, value=request.to_bytes())
        self.flush()

    def forget_replica(self, replica_id: str) -> bool:
        """Tombstones for the replica's heartbeat and every report page it published:
        compaction drops them; status and verify forget it. False, and nothing
        written, when repo-replicas holds nothing of that replica."""
        prefix = f"{replica_id}/".encode()
        latest = self._latest_records()
        keys = [key for key in latest if key == replica_id.encode() or key.startswith(prefix)]
        for key in keys:
            self._send(self.topics.replicas, key=key, value=None)
        self.flush()
        return bool(keys)

    def _send(self, topic: str, **record: object) -> FutureRecordMetadata:
        """Send a record and remember it in the sending thread's own list (``flush``)."""
        future = self.producer.send(topic, **record)
        if not self.flush_own_records:
            return future
        sent = getattr(self._sent, "futures", None)
        if sent is None:
            sent = self._sent.futures = collections.deque()
        while sent and sent[0].is_done:  # bounded by what the producer holds
            sent.popleft()
        sent.append(future)
        return future

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Wait until Kafka has what was sent. With ``flush_own_records`` (a
        replica): every record this thread sent through the bus (a reply before its
        request is committed), raising the failure of one Kafka refused; other
        threads' records are theirs to wait for, so a handler does not wait behind
        the replies of every request in flight (producer.flush would). Otherwise
        every record of the producer."""
        if not self.flush_own_records:
            self.producer.flush(timeout=timeout_s)
            return
        sent = getattr(self._sent, "futures", None)
        deadline = time.monotonic() + timeout_s
        while sent:  # a failure is raised once: the request it served is served again
            sent.popleft().get(timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        try:
            close_producer(self.producer, timeout_s=10)
        finally:
            for consumer in (self._offsets_consumer, self._report_consumer):
                if consumer is not None:
                    consumer.close()

    def ask(self, request: p.Request, timeout_s: float) -> p.Reply | None:
        """Send one request and wait for its answer on ``request.reply_partition``:
        an operator's check (ping), so no uploads, no retries, no chunks."""
        reply_tp = TopicPartition(self.topics.responses, request.reply_partition)
        consumer = self._consumer(group_id=None)
        try:
            consumer.assign([reply_tp])
            consumer.seek(reply_tp, consumer.end_offsets([reply_tp])[reply_tp])
            sent = self.producer.send(self.topics.requests, key=request.repo.encode(), value=request.to_bytes())
            sent.get(timeout=timeout_s)
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                for records in consumer.poll(timeout_ms=int(min(left, 0.5) * 1000) + 1).values():
                    for record in records:
                        try:
                            reply = p.parse_message(record.value, allowed=(p.Reply,))
                        except MinigitError as error:
                            if p.peek_request_id(record.value) == request.request_id:
                                raise ProtocolError(f"the service sent a malformed answer: {error.message}") from None
                            continue
                        if reply.request_id == request.request_id and reply.status != p.Status.WORKING:
                            return reply
            return None
        finally:
            consumer.close()

    # -- consuming

    def open_request_consumer(
        self, on_assignment: Callable[[list[int]], None], before_revoke: Callable[[], None] | None = None
    ) -> RequestConsumer:
        consumer = self._consumer(
            group_id=self.topics.group,
            # With no committed offset, serve what is already waiting: a request
            # sent before the first replica joined is still answered.
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1500,
            max_poll_records=50,
            # Partition n+1 is served by another replica than partition n (when
            # there are two or more): a client that hedges a request to the next
            # partition reaches another replica (transport.Connection).
            partition_assignment_strategy=[RoundRobinPartitionAssignor],
        )
        consumer.subscribe([self.topics.requests], listener=_Listener(on_assignment, before_revoke))
        return RequestConsumer(consumer, self.topics.requests)

    def open_log_reader(self, start_offsets: dict[int, int]) -> LogReader:
        consumer = self._consumer(group_id=None, auto_offset_reset="earliest")
        count = self.partition_count(self.topics.log)
        tps = [TopicPartition(self.topics.log, n) for n in range(count)]
        consumer.assign(tps)
        for tp in tps:
            if tp.partition in start_offsets:
                consumer.seek(tp, start_offsets[tp.partition])
            else:
                consumer.seek_to_beginning(tp)
        return LogReader(consumer)

    def scan_log(self, partition: int, end_offset: int, timeout_s: float) -> Iterator[LogRecord]:
        """Records of one log partition from its beginning up to ``end_offset`` (a
        repair reads a blob's chunks again); TimeoutError if that takes too long."""
        if end_offset <= 0:
            return
        tp = TopicPartition(self.topics.log, partition)
        consumer = self._consumer(group_id=None, auto_offset_reset="earliest")
        try:
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            deadline = time.monotonic() + timeout_s
            while consumer.position(tp) < end_offset:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {self.topics.log} partition {partition} took over {timeout_s:g}s")
                for records in consumer.poll(timeout_ms=500, max_records=100).values():
                    for r in records:
                        if r.offset >= end_offset:
                            return
                        yield LogRecord(r.partition, r.offset, r.value)
        finally:
            consumer.close()

    def open_scrub_requests(self) -> ScrubRequestReader:
        """Follow repo-replicas for scrub requests, from its beginning (compacted: small)."""
        consumer = self._consumer(group_id=None, auto_offset_reset="earliest")
        tp = TopicPartition(self.topics.replicas, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        return ScrubRequestReader(consumer)

    def read_heartbeats(self, settle_s: float = 1.0) -> list[p.Heartbeat]:
        """The latest heartbeat of every replica that ever reported (a compacted topic).

        Everything is filed by record key, as compaction and tombstones do: the last
        record of a key decides, and one that is not a heartbeat of the replica its
        key names (a tombstone, a malformed value, another replica's name) leaves
        that key with none, whether or not compaction has run yet.
        """
        return self.read_reports(settle_s, pages=False)[0]

    def read_reports(self, settle_s: float = 1.0, pages: bool = True) -> tuple[list[p.Heartbeat], list[p.RepoPage]]:
        """The latest heartbeat of every replica, and (``pages``) the latest report page
        under each page key, each checked against its key as heartbeats are."""
        latest = self._latest_records(settle_s)
        beats, found = [], []
        for key, value in latest.items():
            if b"/" not in key:
                if (beat := _heartbeat_of(key, value)) is not None:
                    beats.append(beat)
            elif pages and (page := _page_of(key, value)) is not None:
                found.append(page)
        return sorted(beats, key=lambda beat: beat.replica), found

    def _latest_records(self, settle_s: float = 1.0) -> dict[bytes, bytes]:
        """The latest value under every key of repo-replicas (tombstoned keys left out),
        unparsed: only what compaction would keep is decoded."""
        self.partition_count(self.topics.replicas, wait_s=0)  # a clear error if the service never ran here
        consumer = self._consumer(group_id=None)
        try:
            tp = TopicPartition(self.topics.replicas, 0)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            latest: dict[bytes, bytes] = {}
            deadline = time.monotonic() + max(settle_s, 5.0)
            while consumer.position(tp) < end and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=200).values():
                    keep_latest(latest, records)
            self.reports_read_ms = int(time.time() * 1000)
            return latest
        finally:
            consumer.close()


def _page_of(key: bytes, value: bytes) -> p.RepoPage | None:
    """The report page a repo-replicas record holds, if it is the one its key names."""
    try:
        page = p.parse_message(value, allowed=(p.RepoPage,))
    except MinigitError:
        return None
    return page if key == page.key else None


def _heartbeat_of(key: bytes | None, value: bytes | None) -> p.Heartbeat | None:
    """The heartbeat a repo-replicas record holds, if it is one of the replica its key names."""
    if value is None:  # a tombstone: that replica was removed
        return None
    try:
        beat = p.parse_message(value, allowed=(p.Heartbeat,))
    except MinigitError:
        return None
    return beat if key == beat.replica.encode() else None


class RequestConsumer:
    def __init__(self, consumer: KafkaConsumer, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic

    def poll(self, timeout_s: float) -> list[RequestRecord]:
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000))
        out = []
        for records in batches.values():
            for r in records:
                out.append(RequestRecord(r.partition, r.offset, r.timestamp, r.key, r.value))
        return out

    def rewind(self, offsets: dict[int, int]) -> None:
        """Read again from these offsets (partition -> offset): requests that met a
        Kafka failure are served again once it answers. A partition no longer
        assigned is skipped (its next owner reads from the committed offset)."""
        for partition, offset in offsets.items():
            try:
                self.consumer.seek(TopicPartition(self.topic, partition), offset)
            except (KafkaError, AssertionError, ValueError) as error:
                log.info("cannot rewind %s to %s: %s", partition, offset, error)

    def commit(self, partition: int, next_offset: int) -> None:
        """Commit without waiting for the broker (the serve loop goes on): a commit
        lost (a rebalance, a broker outage) only makes the next owner serve answered
        requests again, which the outcome table answers the same way. Commits of a
        partition reach the group coordinator in the order they were made."""
        tp = TopicPartition(self.topic, partition)

        def failed(offsets: object, error: object) -> None:
            if isinstance(error, BaseException):
                log.info("commit of %s@%s failed: %s", partition, next_offset, error)

        try:
            self.consumer.commit_async({tp: OffsetAndMetadata(next_offset, "", -1)}, callback=failed)
        except KafkaError as error:
            log.info("commit of %s@%s failed: %s", partition, next_offset, error)

    def commit_now(self, offsets: dict[int, int], timeout_s: float = 5.0) -> None:
        """Commit and wait, ``timeout_s`` at most (leaving the group: the next owner
        of these partitions reads from here). Not from a rebalance listener: it runs
        on kafka-python's network thread, where a blocking call raises."""
        if not offsets:
            return
        found = {TopicPartition(self.topic, n): OffsetAndMetadata(offset, "", -1) for n, offset in offsets.items()}
        try:
            self.consumer.commit(found, timeout_ms=int(timeout_s * 1000))
        except KafkaError as error:
            # Lost the partition in a rebalance: its next owner serves the request
            # again, and the outcome table answers it the same way.
            log.info("commit of %s failed: %s", offsets, error)

    def close(self) -> None:
        self.consumer.close()


class LogReader:
    def __init__(self, consumer: KafkaConsumer) -> None:
        self.consumer = consumer

    def poll(self, timeout_s: float) -> list[LogRecord]:
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=500)
        out = []
        for records in batches.values():
            out.extend(LogRecord(r.partition, r.offset, r.value) for r in records)
        return out

    def close(self) -> None:
        self.consumer.close()


class ScrubRequestReader:
    def __init__(self, consumer: KafkaConsumer) -> None:
        self.consumer = consumer

    def poll(self, timeout_s: float) -> p.ScrubRequest | None:
        """The latest scrub request among the records that arrived; None if none did.
        Heartbeats share the topic: only the scrub key is parsed."""
        latest = None
        for records in self.consumer.poll(timeout_ms=int(timeout_s * 1000)).values():
            for record in records:
                if record.key != p.SCRUB_REQUEST_KEY or record.value is None:
                    continue
                try:
                    latest = p.parse_message(record.value, allowed=(p.ScrubRequest,))
                except MinigitError as error:
                    log.warning("skipped a malformed scrub request: %s", error.message)
        return latest

    def close(self) -> None:
        self.consumer.close()
