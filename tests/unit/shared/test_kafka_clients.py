"""minigit.kafka_clients: every client is built with the same options (no broker)."""

from __future__ import annotations

from typing import Any

import pytest

from minigit import kafka_clients
from minigit.config import KafkaSettings


class Recorded:
    """Stands in for a kafka-python client class: keeps the options it was built with."""

    def __init__(self, **options: Any) -> None:
        self.options = options


@pytest.mark.parametrize("open_client", [kafka_clients.open_producer, kafka_clients.open_consumer])
def test_clients_reconnect_within_a_second_of_the_broker_coming_back(monkeypatch, open_client) -> None:
    for name in ("KafkaProducer", "KafkaConsumer", "KafkaAdminClient"):
        monkeypatch.setattr(kafka_clients, name, Recorded)
    client = open_client(KafkaSettings("127.0.0.1:1"))
    # kafka-python's defaults: backoff doubling up to 30 s, requests timing out after 30 s
    assert client.options["reconnect_backoff_max_ms"] == 1000
    assert client.options["request_timeout_ms"] == 10_000


def test_the_admin_client_too_and_the_users_settings_win(monkeypatch) -> None:
    monkeypatch.setattr(kafka_clients, "KafkaAdminClient", Recorded)
    settings = KafkaSettings("127.0.0.1:1")
    monkeypatch.setattr(KafkaSettings, "kafka_options", lambda self: {"request_timeout_ms": 45_000})
    client = kafka_clients.open_admin(settings, request_timeout_ms=20_000)
    assert client.options["reconnect_backoff_max_ms"] == 1000
    assert client.options["request_timeout_ms"] == 45_000  # the user's, over ours and the caller's


class UnflushableProducer:
    """A producer whose records no broker takes, as kafka-python 3.0's close() leaves it."""

    def __init__(self) -> None:
        self._closed = False
        self._sender = self
        self.forced = False

    def close(self, timeout: float | None = None) -> None:
        raise kafka_clients.KafkaError("KafkaTimeoutError: Timeout waiting for future")

    def force_close(self) -> None:
        self.forced = True


def test_a_producer_closed_with_no_broker_gives_up_its_records_without_raising() -> None:
    """The flush's timeout escaped from a command that had done its work (a push
    reported failed after its answer came), and again from __del__."""
    producer = UnflushableProducer()
    kafka_clients.close_producer(producer, timeout_s=0.1)
    assert producer.forced and producer._closed


class EveryTopicConsumer:
    """A consumer without kafka-python 3.0.12's metadata internals."""

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {0, 1} if topic == "there" else None


def test_topic_partitions_of_another_kafka_python_falls_back_to_its_own_way() -> None:
    found = kafka_clients.topic_partitions(EveryTopicConsumer(), ["there", "missing"], 1000)
    assert found == {"there": {0, 1}, "missing": None}


@pytest.mark.parametrize("open_client", [kafka_clients.open_producer, kafka_clients.open_consumer])
def test_a_client_told_not_to_create_topics_asks_its_metadata_so(open_client) -> None:
    """kafka-python 3.0.12 does not hand a client's allow_auto_create_topics on to its
    metadata cache, which asks with auto-creation on: against a broker with Kafka's
    default auto.create.topics.enable=true, a command with a mistyped --namespace made
    that namespace's two topics (it then said they did not exist; the next command
    waited for a service that was not there)."""
    extra = {"group_id": None} if open_client is kafka_clients.open_consumer else {}
    # (api_version given: built without a broker)
    client = open_client(KafkaSettings("127.0.0.1:1"), api_version=(3, 0), allow_auto_create_topics=False, **extra)
    try:
        cluster = getattr(client, "_cluster", None) or client._metadata
        cluster.set_topics(["t1"])
        assert cluster.metadata_request().allow_auto_topic_creation is False
    finally:
        client.close()
