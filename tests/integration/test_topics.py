"""The service creates its own topics (never broker auto-creation), idempotently."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from minigit.config import KafkaSettings, Topics
from minigit_server.bus import Bus, ensure_topics

pytestmark = pytest.mark.integration


def test_topic_creation_twice_is_harmless(kafka_bootstrap: str, namespace: str) -> None:
    settings = KafkaSettings(kafka_bootstrap, namespace)
    topics = Topics.for_namespace(namespace)
    created = ensure_topics(settings, partitions=4, replication_factor=1)
    assert sorted(created) == sorted([topics.requests, topics.responses, topics.log, topics.replicas])
    assert ensure_topics(settings, partitions=4, replication_factor=1) == []  # second run: nothing to do

    bus = Bus(settings, client_id="topics-test")
    try:
        assert bus.partition_count(topics.requests) == bus.partition_count(topics.log) == 4
        assert bus.partition_count(topics.responses) == 4 and bus.partition_count(topics.replicas) == 1
    finally:
        bus.close()

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in (topics.log, topics.replicas)]
        # kafka-python 3: {"topic": {name: {config: {"value": ...}}}}
        found = admin.describe_configs(resources)["topic"]
        described = {name: {key: entry["value"] for key, entry in configs.items()} for name, configs in found.items()}
    finally:
        admin.close()
    assert described[topics.log]["retention.ms"] == "-1"  # the log is kept forever: replicas rebuild from it
    assert described[topics.log]["retention.bytes"] == "-1"
    assert described[topics.replicas]["cleanup.policy"] == "compact"


def test_start_creates_topics_with_the_given_partitions(minigit_server, kafka_bootstrap: str, namespace: str) -> None:
    # --replica-id with a bad id fails after the topics are made: a quick way to run only the creation.
    done = minigit_server(
        "start",
        "--replica-id",
        "bad id!",
        "--partitions",
        "2",
        "--bootstrap",
        kafka_bootstrap,
        "--namespace",
        namespace,
    )
    assert done.returncode == 1 and "invalid replica name" in done.stderr
    assert "created topics" in done.stderr
    bus = Bus(KafkaSettings(kafka_bootstrap, namespace), client_id="topics-test")
    try:
        assert bus.partition_count(Topics.for_namespace(namespace).log) == 2
    finally:
        bus.close()
