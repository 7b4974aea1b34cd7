"""minigit.client.transport: how long Connection.call waits, and when it sends again.

No broker: the connection's producer and consumer are fakes over a simulated
clock (``time.monotonic`` is replaced), and a scripted service answers each
request it receives. Waiting for records that will not come moves the clock on
at once, so these tests take no time whatever the timeouts.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from inprocess import RecordingObserver
from kafka.errors import KafkaTimeoutError

from minigit import codec, identity, sealing
from minigit import protocol as p
from minigit.client.exchange import Credentials
from minigit.client.transport import Connection
from minigit.config import KafkaSettings
from minigit.errors import ExitCode, ServerUnreachable

REQUEST_PARTITIONS = 6

# A simulated command still waiting after this long is waiting forever.
FOREVER = 1000.0

# What the service does with one request: (seconds after it arrived, record value) pairs.
Script = Callable[[p.Request, int], list[tuple[float, bytes]]]


@dataclass
class Record:
    value: bytes


@dataclass
class World:
    """The simulated clock, and the records scheduled on the reply partition."""

    script: Script
    now: float = 0.0
    requests: list[tuple[float, p.Request]] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)  # of repo-requests, each request's
    scheduled: list[tuple[float, bytes]] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def receive(self, value: bytes, partition: int) -> None:
        message = p.parse_message(value)
        if isinstance(message, p.Request):
            self.requests.append((self.now, message))
            self.partitions.append(partition)
            self.scheduled += [(self.now + delay, record) for delay, record in self.script(message, len(self.requests))]

    def due(self) -> list[bytes]:
        ready = [value for at, value in self.scheduled if at <= self.now]
        self.scheduled = [(at, value) for at, value in self.scheduled if at > self.now]
        return ready


class FakeFuture:
    """A record Kafka acknowledged at once."""

    is_done = True

    def succeeded(self) -> bool:
        return True

    def get(self, timeout: float | None = None) -> None:
        return None


@dataclass
class FakeProducer:
    world: World

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"", partition: int = -1) -> FakeFuture:
        self.world.receive(value, partition)
        return FakeFuture()


@dataclass
class FakeConsumer:
    world: World

    def poll(self, timeout_ms: int = 0) -> dict[str, list[Record]]:
        world = self.world
        if not (ready := world.due()):
            upcoming = min((at for at, _ in world.scheduled), default=float("inf"))
            world.now = min(world.now + timeout_ms / 1000, upcoming)
            ready = world.due()
        if world.now > FOREVER:
            raise AssertionError(f"still waiting after {FOREVER:g} simulated seconds")
        return {"tp": [Record(value) for value in ready]} if ready else {}


SERVER_KEY = identity.generate_private_key()  # the scripted services sign their replies with it
ALICE = Credentials("alice", identity.generate_private_key())


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Callable[[Script, float], tuple[Connection, World]]:
    def make(script: Script, timeout: float) -> tuple[Connection, World]:
        world = World(script)
        monkeypatch.setattr(time, "monotonic", world.monotonic)
        connection = object.__new__(Connection)  # without Kafka: what _open would have set
        connection.settings = KafkaSettings()
        connection.credentials, connection.reply_key = ALICE, sealing.new_reply_key()
        connection.user, connection.timeout = "alice", timeout
        connection.topics = connection.settings.topics
        connection.producer, connection.consumer = FakeProducer(world), FakeConsumer(world)
        connection.reply_partition, connection.request_partitions = 0, REQUEST_PARTITIONS
        return connection, world

    return make


def clone_request(connection: Connection) -> p.Request:
    return connection.new_request(p.PullRequest, repo="lab", version=0)


# ---------------------------------------------------------------- scripted services

TREE = b'{"files":{"a.txt":{"sha":"' + p.hash_bytes(b"a").encode() + b'","size":1}},"v":1}'


def pull_reply(request: p.Request, blobs: list[bytes], **fields: object) -> p.Reply:
    values: dict[str, object] = dict(
        request_id=request.request_id,
        action="pull",
        stream=uuid.uuid4().hex,
        replica="1",
        status=p.Status.OK,
        version=1,
        head=1,
        tree=p.hash_bytes(TREE),
        blob_count=len(blobs),
        blob_bytes=sum(map(len, blobs)),
    )
    return sealing.sign_reply(SERVER_KEY, p.Reply(**{**values, **fields}), KafkaSettings().namespace)


def chunks(request: p.Request, data: bytes, stream: str) -> list[bytes]:
    blob = codec.BlobSource.from_bytes(data)
    return [chunk.to_bytes() for chunk in p.blob_chunks(request.request_id, request.repo, blob, stream)]


def forged(request: p.Request, sha_of: bytes, data: bytes, stream: str) -> bytes:
    """A chunk that claims to be ``sha_of`` but holds ``data``."""
    piece = codec.encode_piece(0, data)
    return p.Chunk.of_piece(request.request_id, request.repo, p.hash_bytes(sha_of), 1, piece, stream).to_bytes()


def silent(request: p.Request, number: int) -> list[tuple[float, bytes]]:
    return []


def broken_every_time(request: p.Request, number: int) -> list[tuple[float, bytes]]:
    """A whole answer, at once, whose file does not match its hash."""
    reply = pull_reply(request, [TREE, b"a"])
    records = [reply.to_bytes(), *chunks(request, TREE, reply.stream), forged(request, b"a", b"evil", reply.stream)]
    return [(0.1, value) for value in records]


def never_finished(request: p.Request, number: int) -> list[tuple[float, bytes]]:
    """An answer that promises more blobs than it ever sends."""
    reply = pull_reply(request, [TREE, b"a"], blob_count=p.MAX_TREE_ENTRIES + 1)
    return [(0.1, reply.to_bytes()), *((0.1, value) for value in chunks(request, TREE, reply.stream))]


def slow_but_steady(request: p.Request, number: int) -> list[tuple[float, bytes]]:
    """The first sending only: a valid answer at once, then 12 pieces, one every 3 seconds."""
    if number > 1:
        return []
    big = bytes(range(256)) * (11 * codec.CHUNK_SIZE // 256) + b"tail"
    tree = p.encode_tree({"big": p.FileEntry(p.hash_bytes(big), len(big))})
    reply = pull_reply(request, [tree, big], tree=p.hash_bytes(tree))
    records = [reply.to_bytes(), *chunks(request, tree, reply.stream), *chunks(request, big, reply.stream)]
    return [(0.1, records[0]), *((3.0 * n, value) for n, value in enumerate(records[1:], start=1))]


def trickle(request: p.Request, number: int) -> list[tuple[float, bytes]]:
    """An answer that promises many blobs, sends its tree, then a new small blob the
    tree does not list every 2 s; sent again, it does not even send its tree."""
    reply = pull_reply(request, [TREE, b"a"], blob_count=p.MAX_TREE_ENTRIES + 1)
    junk = [value for n in range(200) for value in chunks(request, b"junk %d" % n, reply.stream)]
    tree = chunks(request, TREE, reply.stream) if number == 1 else []
    return [(0.1, reply.to_bytes()), *((0.2, value) for value in tree), *((2.0 * n, v) for n, v in enumerate(junk, 1))]


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize(
    "timeout, sends", [(1.0, [0]), (8.0, [0, 1, 3, 7]), (11.0, [0, 1, 3, 7]), (30.0, [0, 1, 3, 7, 15, 25])]
)
def test_with_no_answer_at_all_the_command_gives_up_at_its_timeout(connect, timeout: float, sends: list) -> None:
    connection, world = connect(silent, timeout)
    request = clone_request(connection)
    with pytest.raises(ServerUnreachable, match=f"no answer from the minigit service within {timeout:g}s") as error:
        connection.call(request)
    assert error.value.exit_code == ExitCode.UNREACHABLE
    assert timeout <= world.now <= timeout + 1  # not a whole attempt window later (was 5.4 s for 1, 15.4 s for 11)
    # sent again, same request, after 1 s, then 2, 4, ... up to the window of max(5, timeout / 3)
    assert [at for at, _ in world.requests] == pytest.approx(sends)
    # the same request every time (same id and contents), signed at each sending
    unsigned = {"signed_ms": 0, "chunks": "", "signature": ""}
    assert all(dataclasses.replace(sent, **unsigned) == request for _, sent in world.requests)
    assert all(identity.request_signed_by(ALICE.public_key, sent, "") for _, sent in world.requests)
    assert all(sent.chunks == identity.NO_CHUNKS for _, sent in world.requests)


def test_each_sending_goes_to_the_next_partition_so_to_another_replica(connect) -> None:
    """The repository's own partition first (its key's), then each next one: the
    service's consumer group assigns partitions round robin, so partition n + 1
    is another replica's than partition n."""
    connection, world = connect(silent, 30.0)
    with pytest.raises(ServerUnreachable):
        connection.call(clone_request(connection))
    home = p.log_partition("lab", REQUEST_PARTITIONS)
    assert world.partitions == [(home + n) % REQUEST_PARTITIONS for n in range(6)]


def test_a_hedged_push_sends_its_uploads_with_it(connect) -> None:
    """The other replica needs the pieces too: they go to the partition of the attempt, before it."""
    received: list[tuple[int, str]] = []
    connection, world = connect(silent, 4.0)
    original = world.receive

    def receive(value: bytes, partition: int) -> None:
        received.append((partition, type(p.parse_message(value)).__name__))
        original(value, partition)

    world.receive = receive
    request = connection.new_request(p.PushRequest, repo="lab", base=1, tree=p.hash_bytes(b"t"), message="m")
    with pytest.raises(ServerUnreachable):
        connection.call(request, [codec.BlobSource.from_bytes(b"t")])
    home = p.log_partition("lab", REQUEST_PARTITIONS)
    expected = [(home + n) % REQUEST_PARTITIONS for n in range(3)]  # sent at 0, 1 and 3 s
    assert received == [(n, kind) for n in expected for kind in ("Chunk", "PushRequest")]


@pytest.mark.parametrize("script", [broken_every_time, never_finished, trickle])
def test_broken_answers_sent_again_and_again_do_not_hold_the_command(connect, script: Script) -> None:
    connection, world = connect(script, 8.0)
    with pytest.raises(ServerUnreachable, match="no answer from the minigit service within 8s") as error:
        connection.call(clone_request(connection))
    assert world.now <= 8 + 1  # used to wait forever: every broken answer counted as news
    assert 2 <= len(world.requests) <= 4  # hedged, at most at 0, 1, 3 and 7 s
    if script is broken_every_time:
        assert "broken answers dropped, the last because object" in error.value.message
    if script is trickle:
        assert "broken answers dropped, the last because object " in error.value.message
        assert error.value.message.endswith("came before the answer's tree " + p.hash_bytes(TREE)[:12] + ")")


def test_a_slow_answer_that_keeps_coming_is_waited_for(connect) -> None:
    connection, world = connect(slow_but_steady, 8.0)
    response = connection.call(clone_request(connection))
    assert response.reply.status == p.Status.OK and len(response.blobs) == 2
    assert world.now == pytest.approx(3.0 * 13) and len(world.requests) == 1  # 39 s, never 8 s without news


# ---------------------------------------------------------------- opening


@pytest.fixture(autouse=True)
def fake_topic_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake consumers below say what topics exist (kafka_clients.topic_partitions
    reads a real consumer's metadata cache)."""
    import minigit.client.transport as transport

    monkeypatch.setattr(
        transport,
        "topic_partitions",
        lambda consumer, topics, timeout_ms: {t: consumer.partitions_for_topic(t) for t in topics},
    )


class OpeningConsumer:
    """A consumer whose reply partition's leader does not answer the first ``failures`` times."""

    def __init__(self, failures: int) -> None:
        self.failures, self.asked, self.position = failures, 0, None

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1}

    def assign(self, tps) -> None:
        pass

    def end_offsets(self, tps) -> dict:
        self.asked += 1
        if self.asked <= self.failures:
            raise KafkaTimeoutError("Failed to get offsets by timestamps in 10000 ms")
        return dict.fromkeys(tps, 7)

    def seek(self, tp, offset: int) -> None:
        self.position = offset

    def close(self) -> None:
        pass


class OpeningProducer:
    def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def close(self, timeout: float | None = None) -> None:
        pass


@pytest.mark.parametrize("failures, opens", [(0, True), (3, True), (1000, False)])
def test_opening_asks_again_while_a_partition_leader_does_not_answer(monkeypatch, failures: int, opens: bool) -> None:
    """A cluster whose killed leader is not replaced yet: the bootstrap worked, the
    reply partition's end did not; nothing is sent yet, so it is asked again until
    the timeout (it used to fail the command at once)."""
    import minigit.client.transport as transport

    consumer = OpeningConsumer(failures)
    monkeypatch.setattr(transport, "open_consumer", lambda settings, **extra: consumer)
    monkeypatch.setattr(transport, "open_producer", lambda settings, **extra: OpeningProducer())
    monkeypatch.setattr(transport, "OPEN_RETRY_S", 0.001)
    if opens:
        connection = Connection(KafkaSettings(), ALICE, timeout=5)
        assert consumer.position == 7 and connection.request_partitions == 3
    else:
        with pytest.raises(ServerUnreachable, match="KafkaTimeoutError"):
            Connection(KafkaSettings(), ALICE, timeout=0.2)
        assert consumer.asked > 10


class NoTopicsConsumer(OpeningConsumer):
    def partitions_for_topic(self, topic: str) -> set[int]:
        return set()


class CountingProducer(OpeningProducer):
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.closed = False

    def partitions_for(self, topic: str) -> set[int]:
        self.asked.append(topic)
        return super().partitions_for(topic)

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def test_where_the_topics_do_not_exist_the_producer_is_not_asked_for_them(monkeypatch) -> None:
    """(kafka-python's producer waits for a topic that does not exist until max_block_ms.)"""
    import minigit.client.transport as transport

    producer = CountingProducer()
    monkeypatch.setattr(transport, "open_consumer", lambda settings, **extra: NoTopicsConsumer(0))
    monkeypatch.setattr(transport, "open_producer", lambda settings, **extra: producer)
    with pytest.raises(ServerUnreachable, match="the minigit topics do not exist"):
        Connection(KafkaSettings(), ALICE, timeout=5)
    assert producer.asked == [] and producer.closed


def test_the_producer_opens_beside_the_consumer_and_learns_the_request_partitions(monkeypatch) -> None:
    import minigit.client.transport as transport

    producer = CountingProducer()
    monkeypatch.setattr(transport, "open_consumer", lambda settings, **extra: OpeningConsumer(0))
    monkeypatch.setattr(transport, "open_producer", lambda settings, **extra: producer)
    connection = Connection(KafkaSettings(), ALICE, timeout=5)
    assert connection.producer is producer and producer.asked == [KafkaSettings().topics.requests]
    assert connection.request_partitions == 3


def test_a_connection_never_has_the_broker_create_the_topics_it_asks_about(monkeypatch) -> None:
    """Asked about by name, a topic is created where the broker auto-creates topics:
    a mistyped --namespace would make a service's topics."""
    import minigit.client.transport as transport

    options: dict[str, dict] = {}

    def opening(kind, client):
        def open_client(settings, **extra):
            options[kind] = extra
            return client

        return open_client

    monkeypatch.setattr(transport, "open_consumer", opening("consumer", OpeningConsumer(0)))
    monkeypatch.setattr(transport, "open_producer", opening("producer", CountingProducer()))
    Connection(KafkaSettings(), ALICE, timeout=5)
    assert options["consumer"]["allow_auto_create_topics"] is False
    assert options["producer"]["allow_auto_create_topics"] is False
    assert options["consumer"]["metrics_enabled"] is options["producer"]["metrics_enabled"] is False


def test_a_producer_that_cannot_open_fails_the_connection(monkeypatch) -> None:
    import minigit.client.transport as transport

    consumer = OpeningConsumer(0)
    closed = []
    consumer.close = lambda: closed.append(True)

    def unreachable(settings, **extra):
        raise ServerUnreachable("cannot reach Kafka at localhost:9092")

    monkeypatch.setattr(transport, "open_consumer", lambda settings, **extra: consumer)
    monkeypatch.setattr(transport, "open_producer", unreachable)
    with pytest.raises(ServerUnreachable, match="cannot reach Kafka"):
        Connection(KafkaSettings(), ALICE, timeout=5)
    assert closed == [True]


# ---------------------------------------------------------------- what the upload bar is told


class LaterFuture:
    """A record Kafka acknowledges (or refuses) only when the test says so."""

    def __init__(self, on_wait: Callable[[], None]) -> None:
        self.is_done, self.exception, self.on_wait = False, None, on_wait

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def settle(self, error: Exception | None = None) -> None:
        self.is_done, self.exception = True, error

    def get(self, timeout: float | None = None) -> None:
        if not self.is_done:
            self.on_wait()  # the broker acknowledges what it holds
        if not self.is_done:
            raise KafkaTimeoutError(f"Timeout after waiting for {timeout} secs.")
        if self.exception is not None:
            raise self.exception


@dataclass
class SlowBroker:
    """A producer whose records are acknowledged ``lag`` sends later, or when a
    record is waited for; chunks whose number is in ``refused`` fail."""

    world: World
    lag: int = 3
    refused: frozenset[int] = frozenset()
    futures: list[LaterFuture] = field(default_factory=list)
    handed: int = 0  # raw bytes of the chunks handed to the producer so far

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"", partition: int = -1) -> LaterFuture:
        message = p.parse_message(value)
        if isinstance(message, p.Chunk):
            self.handed += len(message.raw())
        self.world.receive(value, partition)
        future = LaterFuture(self.acknowledge_all)
        self.futures.append(future)
        if len(self.futures) > self.lag:
            self.acknowledge(len(self.futures) - self.lag)
        return future

    def acknowledge(self, upto: int) -> None:
        for number, future in enumerate(self.futures[:upto]):
            if not future.is_done:
                future.settle(KafkaTimeoutError("expired") if number in self.refused else None)

    def acknowledge_all(self) -> None:
        self.acknowledge(len(self.futures))


class CheckedObserver(RecordingObserver):
    """Records the hooks, and checks at each acknowledgement that no more was told than was handed over."""

    def __init__(self, broker: SlowBroker) -> None:
        super().__init__()
        self.broker = broker
        self.handed_then: list[int] = []  # what had been handed over at each acknowledgement

    def uploaded(self, nbytes: int) -> None:
        super().uploaded(nbytes)
        self.handed_then.append(self.broker.handed)
        assert self.total("uploaded") <= self.broker.handed


def answered_push(request: p.Request, number: int) -> list[tuple[float, bytes]]:
    accepted = p.Reply(
        request_id=request.request_id, action="push", stream="s", replica="1", status=p.Status.ACCEPTED, version=2
    )
    return [(0.5, sealing.sign_reply(SERVER_KEY, accepted, "").to_bytes())]


def push_with(connection: Connection, *contents: bytes) -> tuple[p.Request, list[codec.BlobSource]]:
    uploads = [codec.BlobSource.from_bytes(data) for data in contents]
    request = connection.new_request(p.PushRequest, repo="lab", base=1, tree=uploads[0].sha, message="m")
    return request, uploads


BIG = bytes(range(256)) * (2 * codec.CHUNK_SIZE // 256) + b"tail"  # three chunks


def test_the_upload_bar_hears_only_of_what_kafka_acknowledged(connect) -> None:
    connection, world = connect(answered_push, 30.0)
    broker = connection.producer = SlowBroker(world)
    observer = CheckedObserver(broker)
    request, uploads = push_with(connection, b"tree", BIG, b"small")
    connection.call(request, uploads, observer)
    total = 4 + len(BIG) + 5
    assert observer.named("uploading") == [("uploading", total, 3)]
    assert observer.total("uploaded") == total == broker.handed
    names = [event[0] for event in observer.events]
    assert names.count("uploaded_object") == 3 and names.index("waiting") > max(
        i for i, name in enumerate(names) if name.startswith("uploaded")
    )  # everything acknowledged before the wait for the service begins
    # told in the order sent, each piece once: the tree, the three pieces of BIG, the small file
    assert [event[1] for event in observer.named("uploaded")] == [4, codec.CHUNK_SIZE, codec.CHUNK_SIZE, 4, 5]


def test_acknowledgements_come_while_sending_not_all_at_the_end(connect) -> None:
    connection, world = connect(answered_push, 30.0)
    broker = connection.producer = SlowBroker(world, lag=1)
    observer = CheckedObserver(broker)
    request, uploads = push_with(connection, b"tree", BIG)
    connection.call(request, uploads, observer)
    # with one record in flight, the first pieces were told of before the last was handed over
    assert observer.total("uploaded") == 4 + len(BIG)
    assert observer.handed_then[0] < 4 + len(BIG) and observer.handed_then == sorted(observer.handed_then)
    assert [event[0] for event in observer.events][:4] == ["uploading", "uploaded", "uploaded_object", "uploaded"]


def test_a_refused_chunk_is_never_counted_nor_its_object(connect) -> None:
    connection, world = connect(answered_push, 30.0)
    broker = connection.producer = SlowBroker(world, refused=frozenset({2}))  # the second piece of BIG
    observer = CheckedObserver(broker)
    request, uploads = push_with(connection, b"tree", BIG, b"small")
    connection.call(request, uploads, observer)
    assert observer.total("uploaded") == 4 + len(BIG) - codec.CHUNK_SIZE + 5
    assert len(observer.named("uploaded_object")) == 2  # the tree and the small file


def test_acknowledgements_that_never_come_are_kafka_unreachable(connect) -> None:
    connection, world = connect(answered_push, 2.0)
    broker = connection.producer = SlowBroker(world, lag=1000)
    broker.acknowledge_all = lambda: None  # the broker keeps everything unacknowledged
    observer = CheckedObserver(broker)
    request, uploads = push_with(connection, b"tree", b"a")
    with pytest.raises(ServerUnreachable, match="cannot reach Kafka"):
        connection.call(request, uploads, observer)
    assert observer.named("uploaded") == [] and observer.named("waiting") == []


# ---------------------------------------------------------------- read_ahead


def test_read_ahead_gives_every_item_in_order() -> None:
    from minigit.client.transport import read_ahead

    assert list(read_ahead(iter(range(100)), depth=3)) == list(range(100))
    assert list(read_ahead(iter([]))) == []


def test_read_ahead_raises_the_makers_error_where_it_is_read() -> None:
    from minigit.client.transport import read_ahead

    def items():
        yield 1
        raise OSError("the file went away")

    got = []
    with pytest.raises(OSError, match="went away"):
        for item in read_ahead(items()):
            got.append(item)
    assert got == [1]


def test_read_ahead_stops_its_maker_when_the_reader_stops() -> None:
    import threading

    from minigit.client.transport import read_ahead

    made = []

    def items():
        for n in range(1000):
            made.append(n)
            yield n

    reader = read_ahead(items(), depth=2)
    assert next(reader) == 0
    reader.close()  # joins the maker
    assert len(made) <= 5 and not any(t.name == "read-ahead" for t in threading.enumerate())
