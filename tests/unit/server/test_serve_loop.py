"""Replica.serve_batch: how one poll's records are served and committed, and what
a Kafka failure in the middle does (no broker: a fake consumer, a real Service
over the in-memory wire)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid

import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError
from signing import make_service, signed

from minigit import codec
from minigit import protocol as p
from minigit_server import replica as replica_module
from minigit_server.bus import RequestRecord
from minigit_server.replica import Replica
from minigit_server.service import MemoryWire

NOW_MS = 1000  # the replica's clock, and when its requests were signed


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[tuple[int, int]] = []
        self.rewinds: list[dict[int, int]] = []

    def commit(self, partition: int, next_offset: int) -> None:
        self.commits.append((partition, next_offset))

    def rewind(self, offsets: dict[int, int]) -> None:
        self.rewinds.append(dict(offsets))


class FlakyWire(MemoryWire):
    """The in-memory wire, whose log appends fail (no broker) while ``down``."""

    down = False

    def append_log(self, partition: int, key: bytes, value: bytes, wait: bool) -> int:
        if self.down:
            raise KafkaTimeoutError("Failed to update metadata after 60.0 secs.")
        return super().append_log(partition, key, value, wait)


@pytest.fixture
def replica() -> Replica:
    replica = object.__new__(Replica)  # without Kafka: what serve_batch uses
    replica.service = make_service(wire_class=FlakyWire, clock_ms=lambda: NOW_MS, replica_id="1")
    replica.wire = replica.service.wire
    replica.log = logging.getLogger("test.replica")
    replica.stop = threading.Event()
    return replica


def record(partition: int, offset: int, message: p.Message) -> RequestRecord:
    return RequestRecord(partition, offset, NOW_MS, b"lab", message.to_bytes())


def init_records(partition: int, offset: int) -> list[RequestRecord]:
    """The chunk of a tree, then the init request that refers to it."""
    request_id = uuid.uuid4().hex
    tree = p.encode_tree({})
    chunk = p.Chunk.of_piece(request_id, "lab", p.hash_bytes(tree), 1, codec.encode_piece(0, tree), "")
    init = p.InitRequest(request_id=request_id, repo="lab", user="u", reply_partition=0, tree=p.hash_bytes(tree))
    return [
        record(partition, offset, chunk),
        record(partition, offset + 1, signed(init, chunks=[chunk], signed_ms=NOW_MS)),
    ]


def ping(partition: int, offset: int) -> RequestRecord:
    request = p.PingRequest(request_id=uuid.uuid4().hex, repo="lab", user="u", reply_partition=0)
    return record(partition, offset, signed(request, signed_ms=NOW_MS))


def test_each_request_is_committed_once_answered_chunks_with_their_request(replica: Replica) -> None:
    consumer = FakeConsumer()
    replica.serve_batch(consumer, [*init_records(0, 5), ping(1, 3)])
    assert consumer.commits == [(0, 7), (1, 4)] and consumer.rewinds == []
    statuses = [m.status for _, m in replica.wire.replies if m.status != p.Status.WORKING]
    assert statuses == [p.Status.ACCEPTED, p.Status.OK]  # signed by a registered user: served


def test_a_kafka_failure_rewinds_to_the_first_record_not_committed_and_keeps_serving(replica: Replica) -> None:
    """A broker outage used to stop the replica (the supervisor restarted it with a
    growing backoff, up to 30 s after the broker was back); now the records are
    read again, the chunks before the request too, and served once Kafka answers."""
    consumer = FakeConsumer()
    replica.wire.down = True
    batch = [ping(1, 2), *init_records(0, 5), ping(1, 3)]
    replica.serve_batch(consumer, batch)  # returns: no exception, the replica goes on
    # the chunk at 0@5 failed at once; the ping at 1@2 was answered and committed first
    assert consumer.commits == [(1, 3)]
    assert consumer.rewinds == [{0: 5, 1: 3}]
    replica.wire.down = False
    replica.serve_batch(consumer, batch[1:])  # what the consumer reads again
    assert consumer.commits[1:] == [(0, 7), (1, 4)]
    assert replica.service.store.get_repo("lab").head == 1


def test_a_failing_store_still_stops_the_replica(replica: Replica, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(replica.service, "handle", broken)
    with pytest.raises(sqlite3.DatabaseError):
        replica.serve_batch(FakeConsumer(), [ping(0, 1)])


def test_a_poll_that_fails_is_waited_out_and_said_once(
    replica: Replica, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group consumer's poll raised KafkaConnectionError while the broker was
    down, and the replica stopped ("serve_loop loop failed"); now it waits."""
    replica.kafka_failing = set()
    outage = iter([True, True, False])

    def poll(seconds: float) -> list[str]:
        if next(outage):
            raise KafkaConnectionError("111 ECONNREFUSED")
        return ["record"]

    monkeypatch.setattr(replica_module, "KAFKA_RETRY_S", 0.001)
    with caplog.at_level(logging.INFO, logger="test.replica"):
        results = [replica.poll_through_outages("serve", poll, 0.5) for _ in range(3)]
    assert results == [[], [], ["record"]]
    said = [record.getMessage() for record in caplog.records]
    assert said == [
        "serve loop: Kafka failed (KafkaConnectionError: 111 ECONNREFUSED); waiting for it",
        "serve loop: Kafka answers again",
    ]


@pytest.mark.parametrize(
    "age_ms, answered, fresh",
    [
        (0, None, True),
        (3_599_000, None, True),
        (3_600_000, None, False),  # older than an hour
        (-30_000, None, True),  # a sender's clock a little ahead
        (-3_600_000, None, False),  # from the future: it would stay fresh for ever
        (0, "a" * 32, False),  # the one answered last
    ],
)
def test_which_scrub_requests_are_answered(age_ms: int, answered: str | None, fresh: bool) -> None:
    request = p.ScrubRequest(request="a" * 32, requested_ms=10_000_000)
    assert replica_module.scrub_request_is_fresh(request, answered, 10_000_000 + age_ms) is fresh
