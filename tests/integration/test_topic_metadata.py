"""minigit.kafka_clients against a real broker: what a connection asks the broker
about topics. (That asking never creates one is the unit tests' concern: the
development broker does not auto-create topics.)"""

from __future__ import annotations

import pytest

from minigit import kafka_clients
from minigit.config import KafkaSettings, Topics
from minigit_server.bus import ensure_topics

pytestmark = pytest.mark.integration


def test_topic_partitions_asks_about_the_given_topics_only(kafka_bootstrap: str, namespace: str) -> None:
    settings = KafkaSettings(kafka_bootstrap, namespace)
    topics = Topics.for_namespace(namespace)
    ensure_topics(settings, partitions=3, replication_factor=1)
    missing = f"{namespace}no-such-topic"
    consumer = kafka_clients.open_consumer(settings, group_id=None, allow_auto_create_topics=False)
    try:
        found = kafka_clients.topic_partitions(consumer, [topics.responses, topics.requests, missing], 10_000)
        assert found == {topics.responses: {0, 1, 2}, topics.requests: {0, 1, 2}, missing: None}
        # only what was asked about is in the answer (not every topic of the cluster)
        assert consumer._cluster.topics() <= {topics.responses, topics.requests}
    finally:
        consumer.close()
    alone = kafka_clients.open_consumer(settings, group_id=None, allow_auto_create_topics=False)
    try:  # asked about alone, a missing topic's answer is an error
        assert kafka_clients.topic_partitions(alone, [missing], 10_000) == {missing: None}
    finally:
        alone.close()
