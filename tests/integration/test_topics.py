"""The service creates its own topics (never broker auto-creation), idempotently."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from minigit.config import KafkaSettings, Topics
from minigit_server.bus import Bus, ensure_topics

pytestmark = pytest.mark.integration
MINIGIT_SERVER = str(Path(sys.executable).with_name("minigit-server"))


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


def test_start_creates_topics_with_the_given_partitions(kafka_bootstrap: str, namespace: str, tmp_path) -> None:
    command = [MINIGIT_SERVER, "start", "--replica-id", "1", "--partitions", "2", "--data-dir", str(tmp_path)]
    output = tmp_path / "start.err"
    with open(output, "wb") as stderr:
        replica = subprocess.Popen([*command, "--bootstrap", kafka_bootstrap, "--namespace", namespace], stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while "created topics" not in output.read_text():
            assert replica.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
    finally:
        replica.send_signal(signal.SIGTERM)
        replica.wait(timeout=60)
    bus = Bus(KafkaSettings(kafka_bootstrap, namespace), client_id="topics-test")
    try:
        assert bus.partition_count(Topics.for_namespace(namespace).log, wait_s=10) == 2
    finally:
        bus.close()


def test_transient_topics_get_bounded_retention_also_when_they_exist(kafka_bootstrap: str, namespace: str) -> None:
    from minigit.config import TopicRetention
    from minigit_server.bus import topic_configs

    settings = KafkaSettings(kafka_bootstrap, namespace)
    topics = Topics.for_namespace(namespace)
    ensure_topics(settings, partitions=2, replication_factor=1)
    names = (topics.requests, topics.responses, topics.log, topics.replicas)
    first = topic_configs(settings, names)
    defaults = TopicRetention()
    assert first[topics.requests]["retention.ms"] == str(defaults.requests_ms)
    assert first[topics.responses]["retention.ms"] == str(defaults.responses_ms)
    for name in (topics.requests, topics.responses):
        assert first[name]["retention.bytes"] == str(defaults.bytes)
        assert int(first[name]["segment.ms"]) < int(first[name]["retention.ms"])  # segments close: retention deletes

    # the topics exist now: a start with other settings alters them, and only them
    shorter = TopicRetention.parse(60_000, 120_000, 16 * 1024**2)
    assert ensure_topics(settings, partitions=2, replication_factor=1, retention=shorter) == []
    then = topic_configs(settings, names)
    assert then[topics.requests]["retention.ms"] == "60000" and then[topics.responses]["retention.ms"] == "120000"
    assert then[topics.requests]["retention.bytes"] == then[topics.responses]["retention.bytes"] == str(16 * 1024**2)
    assert int(then[topics.requests]["segment.bytes"]) <= 8 * 1024**2
    assert then[topics.log]["retention.ms"] == then[topics.log]["retention.bytes"] == "-1"  # the log keeps everything
    assert then[topics.replicas]["cleanup.policy"] == "compact"
