"""Bus.flush on a replica: each thread waits for what it sent, not for the replies
of every other request in flight (a fake producer; no broker)."""

from __future__ import annotations

import threading

import pytest
from kafka.errors import KafkaTimeoutError

from minigit import protocol as p
from minigit.config import KafkaSettings
from minigit_server import bus as bus_module
from minigit_server.bus import Bus


class Sent:
    """A record's future: done when the test says the broker acknowledged it."""

    def __init__(self) -> None:
        self.acknowledged = threading.Event()
        self.error: Exception | None = None

    @property
    def is_done(self) -> bool:
        return self.acknowledged.is_set()

    def get(self, timeout: float | None = None) -> object:
        if not self.acknowledged.wait(timeout):
            raise KafkaTimeoutError("not acknowledged in time")
        if self.error is not None:
            raise self.error
        return object()


class Producer:
    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.flushed = 0

    def send(self, topic: str, **record: object) -> Sent:
        self.sent.append(Sent())
        return self.sent[-1]

    def flush(self, timeout: float | None = None) -> None:
        self.flushed += 1

    def close(self, timeout: float | None = None) -> None:
        pass


class Consumer:
    def close(self) -> None:
        pass


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> Producer:
    made = Producer()
    monkeypatch.setattr(bus_module, "open_producer", lambda settings, **extra: made)
    monkeypatch.setattr(bus_module, "open_consumer", lambda settings, **extra: Consumer())
    return made


REPLY = p.PingRequest(request_id="a" * 32, repo="lab", user="u", reply_partition=0)


def test_a_replica_thread_flushes_what_it_sent_and_not_what_others_did(producer: Producer) -> None:
    bus = Bus(KafkaSettings("broker:9092", "ns-"), client_id="test", flush_own_records=True)
    other = threading.Thread(target=lambda: bus.send_reply(0, REPLY))
    other.start()
    other.join()
    bus.send_reply(1, REPLY)
    mine, theirs = producer.sent[1], producer.sent[0]
    mine.acknowledged.set()
    bus.flush(timeout_s=5)  # returns although the other thread's reply is not acknowledged
    assert not theirs.is_done and producer.flushed == 0


def test_a_refused_reply_fails_the_flush_and_a_silent_broker_times_it_out(producer: Producer) -> None:
    bus = Bus(KafkaSettings("broker:9092", "ns-"), client_id="test", flush_own_records=True)
    bus.send_reply(0, REPLY)
    producer.sent[0].error = KafkaTimeoutError("Batch expired")
    producer.sent[0].acknowledged.set()
    with pytest.raises(KafkaTimeoutError, match="Batch expired"):
        bus.flush(timeout_s=5)
    bus.send_reply(0, REPLY)
    with pytest.raises(KafkaTimeoutError, match="not acknowledged"):
        bus.flush(timeout_s=0.01)


def test_other_buses_flush_the_whole_producer(producer: Producer) -> None:
    bus = Bus(KafkaSettings("broker:9092", "ns-"), client_id="test")
    bus.send_reply(0, REPLY)
    bus.flush()
    assert producer.flushed == 1
