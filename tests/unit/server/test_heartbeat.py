"""Replica.publish_heartbeat: what a heartbeat carries, and that it goes out when
Kafka does not tell the log end in time (no broker: a fake bus)."""

from __future__ import annotations

import logging

import pytest
from kafka.errors import KafkaTimeoutError
from signing import make_service

from minigit import protocol as p
from minigit.errors import ServerUnreachable
from minigit_server.replica import Replica


class FakeBus:
    def __init__(self) -> None:
        self.lookup_failure: Exception | None = None
        self.published: list[p.Heartbeat] = []

    def reported_log_end_offsets(self) -> dict[int, int]:
        if self.lookup_failure is not None:
            raise self.lookup_failure
        return {1: 7, 0: 3}

    def publish_heartbeat(self, beat: p.Heartbeat) -> None:
        self.published.append(beat)


@pytest.fixture
def replica() -> Replica:
    replica = object.__new__(Replica)  # without Kafka: what publish_heartbeat uses
    replica.replica_id = "1"
    replica.bus = FakeBus()
    replica.service = make_service(users=(), clock_ms=lambda: 1000, replica_id="1")
    replica.store = replica.service.store
    replica.log = logging.getLogger("test.replica")
    replica.started_ms = 1
    replica.serving = [2]
    replica.last_scrub = None
    return replica


def test_a_heartbeat_carries_the_log_end(replica: Replica) -> None:
    replica.publish_heartbeat()
    (beat,) = replica.bus.published
    assert beat.replica == "1" and beat.serving == [2] and beat.log_end == {0: 3, 1: 7}


@pytest.mark.parametrize("failure", [KafkaTimeoutError("no offsets in 2 s"), ServerUnreachable("no broker")])
def test_a_heartbeat_goes_out_without_the_log_end_when_kafka_does_not_say(
    replica: Replica, failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """Liveness and what the replica holds do not depend on the log end: a loaded
    machine whose lookups all timed out left status without news for 20 s."""
    replica.bus.lookup_failure = failure
    replica.publish_heartbeat()
    (beat,) = replica.bus.published
    assert beat.log_end == {} and beat.stopping is False
    assert "heartbeat sent without the log end" in caplog.text
