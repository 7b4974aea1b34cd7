"""minigit_server.bus, over a fake Kafka: how heartbeats are filed, and what a
missing topic means. The real broker is in the integration tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from kafka.errors import KafkaError, KafkaTimeoutError

from minigit import protocol as p
from minigit.config import KafkaSettings
from minigit.errors import ExitCode, ServerUnreachable
from minigit_server import bus as bus_module
from minigit_server.bus import Bus


@dataclass
class Record:
    key: bytes | None
    value: bytes | None


class FakeKafka:
    """Topics as lists of records, read by consumers that assign themselves partition 0."""

    def __init__(self) -> None:
        self.topics: dict[str, list[Record]] = {}
        self.failure: Exception | None = None  # what the next offset lookup raises
        self.broker_down = False
        self.consumers: list[FakeConsumer] = []

    def consumer(self, settings, **extra) -> FakeConsumer:
        if self.broker_down:
            raise ServerUnreachable("cannot reach Kafka at broker:9092")
        self.consumers.append(FakeConsumer(self))
        return self.consumers[-1]

    def producer(self, settings, **extra) -> FakeProducer:
        return FakeProducer()


class FakeProducer:
    def close(self, timeout: float | None = None) -> None:
        pass


class FakeConsumer:
    def __init__(self, kafka: FakeKafka) -> None:
        self.kafka = kafka
        self.positions: dict = {}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0} if topic in self.kafka.topics else set()

    def assign(self, tps) -> None:
        self.positions = dict.fromkeys(tps, 0)

    def seek_to_beginning(self, tp) -> None:
        self.positions[tp] = 0

    def end_offsets(self, tps, timeout_ms: int | None = None) -> dict:
        if self.kafka.failure is not None:
            failure, self.kafka.failure = self.kafka.failure, None
            raise failure
        return {tp: len(self.kafka.topics[tp.topic]) for tp in tps}

    def position(self, tp) -> int:
        return self.positions[tp]

    def poll(self, timeout_ms: int = 0) -> dict:
        batches = {}
        for tp, at in self.positions.items():
            records = self.kafka.topics[tp.topic][at : at + 2]  # a few at a time, as Kafka may
            self.positions[tp] = at + len(records)
            if records:
                batches[tp] = records
        return batches

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def kafka(monkeypatch) -> FakeKafka:
    fake = FakeKafka()
    monkeypatch.setattr(bus_module, "open_consumer", fake.consumer)
    monkeypatch.setattr(bus_module, "open_producer", fake.producer)
    return fake


SETTINGS = KafkaSettings("broker:9092", "ns-")


def heartbeat(replica: str, host: str = "h") -> bytes:
    return p.Heartbeat(
        replica=replica,
        host=host,
        pid=1,
        started_ms=0,
        sent_ms=0,
        serving=[],
        applied={},
        log_end={},
        repos={},
    ).to_bytes()


def read(kafka: FakeKafka, *records: tuple[bytes | None, bytes | None]) -> dict[str, str]:
    kafka.topics[SETTINGS.topics.replicas] = [Record(k, v) for k, v in records]
    bus = Bus(SETTINGS, client_id="test")
    try:
        return {beat.replica: beat.host for beat in bus.read_heartbeats()}
    finally:
        bus.close()


def test_the_latest_heartbeat_of_each_replica(kafka: FakeKafka) -> None:
    found = read(kafka, (b"2", heartbeat("2", "old")), (b"1", heartbeat("1")), (b"2", heartbeat("2", "new")))
    assert found == {"1": "h", "2": "new"}


def test_a_tombstone_removes_its_key(kafka: FakeKafka) -> None:
    assert read(kafka, (b"1", heartbeat("1")), (b"2", heartbeat("2")), (b"2", None)) == {"1": "h"}


def test_a_heartbeat_under_another_key_is_ignored(kafka: FakeKafka) -> None:
    # Filed under its replica field, it would outlive the tombstone of its key,
    # and stand for replica 1 although replica 1 never sent it.
    assert read(kafka, (b"x", heartbeat("1", "forged")), (b"x", None)) == {}
    assert read(kafka, (b"1", heartbeat("1")), (b"2", heartbeat("1", "forged"))) == {"1": "h"}
    assert read(kafka, (None, heartbeat("1", "forged"))) == {}


def test_the_last_record_of_a_key_decides_as_compaction_would(kafka: FakeKafka) -> None:
    # Compaction keeps only the last record of key 2: before it runs, the answer is the same.
    assert read(kafka, (b"2", heartbeat("2")), (b"2", heartbeat("1", "forged"))) == {}
    assert read(kafka, (b"2", heartbeat("2")), (b"2", b"not json")) == {}


def test_a_missing_topic_is_what_the_client_says_exit_4(kafka: FakeKafka) -> None:
    bus = Bus(SETTINGS, client_id="test")
    try:
        with pytest.raises(ServerUnreachable) as raised:
            bus.read_heartbeats()
        error = raised.value
        assert error.exit_code == ExitCode.UNREACHABLE
        assert error.message.startswith("the minigit topics do not exist on broker:9092")
        assert "ns-repo-replicas" in error.message
        assert error.hint == "start the service with 'minigit-server start' (it creates them)"
        with pytest.raises(ServerUnreachable):
            bus.partition_count(SETTINGS.topics.responses, wait_s=0)
    finally:
        bus.close()


@pytest.mark.parametrize("failure", [KafkaTimeoutError("no offsets"), RuntimeError("NetworkSelector closed!")])
@pytest.mark.parametrize("lookup", ["log_end_offsets", "reported_log_end_offsets"])
def test_an_offset_lookup_that_fails_is_made_next_time_on_a_new_consumer(
    kafka: FakeKafka, lookup: str, failure: Exception
) -> None:
    """kafka-python's lookups kept failing for minutes after a cluster's partition
    leader came back, and a consumer whose network closed raises RuntimeError
    forever: the next read barrier (or heartbeat) opens a new consumer, even when
    opening one failed in between (no broker yet); every failure is a Kafka error."""
    kafka.topics[SETTINGS.topics.log] = [Record(b"r", b"x")] * 3
    bus = Bus(SETTINGS, client_id="test")
    try:
        getattr(bus, lookup)()
        failing = kafka.consumers[-1]
        kafka.failure = failure
        with pytest.raises(KafkaError):
            getattr(bus, lookup)()
        assert getattr(failing, "closed", False)
        kafka.broker_down = True  # opening a consumer fails now
        with pytest.raises(ServerUnreachable):
            getattr(bus, lookup)()
        kafka.broker_down = False
        assert getattr(bus, lookup)() == {0: 3} and kafka.consumers[-1] is not failing
    finally:
        bus.close()


def test_only_the_transient_topics_get_bounded_retention_and_the_log_keeps_everything() -> None:
    from minigit.config import TopicRetention, Topics
    from minigit_server.bus import REPLICAS_TOPIC_CONFIG, topic_specs, transient_configs

    topics = Topics.for_namespace("t-")
    retention = TopicRetention.parse(60_000, 90_000, 64 * 1024**2)
    specs = {spec.name: spec.topic_configs for spec in topic_specs(topics, 3, 1, 2, retention)}
    assert specs[topics.log] == {"retention.ms": "-1", "retention.bytes": "-1", "min.insync.replicas": "2"}
    assert specs[topics.replicas] == REPLICAS_TOPIC_CONFIG and REPLICAS_TOPIC_CONFIG["cleanup.policy"] == "compact"
    assert specs[topics.requests]["retention.ms"] == "60000" and specs[topics.requests]["min.insync.replicas"] == "2"
    assert specs[topics.responses]["retention.ms"] == "90000"
    assert specs[topics.requests]["retention.bytes"] == specs[topics.responses]["retention.bytes"] == str(64 * 1024**2)
    assert set(transient_configs(topics, retention)) == {topics.requests, topics.responses}  # never the log


def test_a_broker_refusing_to_alter_retention_is_a_warning_not_a_failure(monkeypatch) -> None:
    """A principal without AlterConfigs (ACLs) still starts the service."""
    from kafka.errors import TopicAuthorizationFailedError

    from minigit.config import KafkaSettings
    from minigit_server import bus as bus_module

    settings = KafkaSettings("localhost:9092", "ns-")

    class RefusingAdmin:
        def list_topics(self):
            topics = settings.topics
            return [topics.requests, topics.responses, topics.log, topics.replicas]

        def alter_configs(self, resources, **options):
            assert {r.name for r in resources} == {settings.topics.requests, settings.topics.responses}  # never the log
            raise TopicAuthorizationFailedError()

        def close(self):
            pass

    monkeypatch.setattr(bus_module, "open_admin", lambda settings: RefusingAdmin())
    warnings: list[str] = []
    assert bus_module.ensure_topics(settings, 3, 1, warn=warnings.append) == []
    [warning] = warnings
    assert "could not set the retention of ns-repo-requests, ns-repo-responses" in warning and "AlterConfigs" in warning


def test_retention_is_altered_incrementally_without_the_client_side_name_check(monkeypatch) -> None:
    """kafka-python checks the names against the topic's *dynamic* configs first, and
    a topic that has none (a fresh secured cluster) made start fail with ValueError;
    the broker checks the names itself. Incremental: the topics' other settings stay."""
    from minigit.config import KafkaSettings
    from minigit_server import bus as bus_module

    settings = KafkaSettings("localhost:9092", "ns-")
    calls: list[dict] = []

    class ClientCheckingAdmin:
        def list_topics(self):
            topics = settings.topics
            return [topics.requests, topics.responses, topics.log, topics.replicas]

        def alter_configs(self, resources, raise_on_unknown=True, incremental=None):
            calls.append({"raise_on_unknown": raise_on_unknown, "incremental": incremental})
            if raise_on_unknown:
                raise ValueError("Unrecognized configs: {'retention.ms'}")
            return {"topic": {r.name: "OK" for r in resources}}

        def close(self):
            pass

    monkeypatch.setattr(bus_module, "open_admin", lambda settings: ClientCheckingAdmin())
    warnings: list[str] = []
    assert bus_module.ensure_topics(settings, 3, 1, warn=warnings.append) == []
    assert warnings == [] and calls == [{"raise_on_unknown": False, "incremental": True}]
