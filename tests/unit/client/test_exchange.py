"""minigit.client.exchange: picking one request's answer out of a shared reply partition.

The records are built by hand with the real protocol and codec, then fed to a
real ReplyCollector, as transport.Connection feeds what it polls.
"""

from __future__ import annotations

import io
import json
import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inprocess import RecordingObserver

from minigit import codec
from minigit import protocol as p
from minigit.client.exchange import ReplyCollector, await_answer
from minigit.errors import ExitCode, ProtocolError, ServerUnreachable

BIG = random.Random(11).randbytes(2 * codec.CHUNK_SIZE + 77)  # three chunks


def rid() -> str:
    return p.new_request_id()


def reply(request_id: str, blobs: list[bytes] = (), status: p.Status = p.Status.OK, **fields) -> p.Reply:
    values = dict(
        request_id=request_id,
        action="pull",
        stream=uuid.uuid4().hex,
        replica="1",
        status=status,
        blob_count=len(blobs),
        blob_bytes=sum(len(b) for b in blobs),
    )
    return p.Reply(**{**values, **fields})


def chunks(request_id: str, data: bytes, stream: str | None) -> list[bytes]:
    blob = codec.BlobSource.from_bytes(data)
    return [chunk.to_bytes() for chunk in p.blob_chunks(request_id, "repo", blob, stream)]


def answer(request_id: str, blobs: list[bytes], **fields) -> tuple[p.Reply, list[bytes]]:
    """A reply and the records of its whole answer, in order."""
    head = reply(request_id, blobs, **fields)
    return head, [head.to_bytes()] + [value for data in blobs for value in chunks(request_id, data, head.stream)]


def feed_all(collector: ReplyCollector, records: list[bytes]) -> list[bool]:
    return [collector.feed(value) for value in records]


def contents(collector: ReplyCollector) -> dict[str, bytes]:
    response = collector.response
    assert response is not None
    return {sha: blob.read() for sha, blob in response.blobs.items()}


GARBAGE = [
    None,
    b"",
    b"{not json",
    b"[]",
    b"\xff\xfe",
    b'{"v": 2, "type": "reply"}',
    b'{"v": 1, "type": "zap"}',
    b"[" * 100_000,
]


# ---------------------------------------------------------------- what is an answer


def test_other_requests_records_and_garbage_are_ignored() -> None:
    mine, other = rid(), rid()
    collector = ReplyCollector(mine, RecordingObserver())
    _, theirs = answer(other, [b"theirs"])
    assert feed_all(collector, GARBAGE + theirs) == [False] * (len(GARBAGE) + len(theirs))
    assert collector.response is None and collector.observer.events == []
    head, records = answer(mine, [])
    assert feed_all(collector, records) == [True]
    assert collector.response.reply == head


def test_a_working_reply_is_not_an_answer() -> None:
    request_id = rid()
    collector = ReplyCollector(request_id, RecordingObserver())
    assert collector.feed(reply(request_id, status=p.Status.WORKING, action="push").to_bytes()) is True
    assert collector.response is None and collector.answer is None
    accepted = reply(request_id, status=p.Status.ACCEPTED, action="push", version=4, head=4)
    collector.feed(accepted.to_bytes())
    assert (collector.response.reply.status, collector.response.reply.version) == (p.Status.ACCEPTED, 4)


def test_a_working_reply_does_not_interrupt_an_answer() -> None:
    request_id = rid()
    _, records = answer(request_id, [b"one", b"two"])
    working = reply(request_id, status=p.Status.WORKING).to_bytes()
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, [records[0], working, *records[1:]])
    assert sorted(contents(collector).values()) == [b"one", b"two"]


def test_a_reply_without_blobs_completes_at_once() -> None:
    request_id = rid()
    head = reply(request_id, status=p.Status.UP_TO_DATE, version=3, head=3)
    collector = ReplyCollector(request_id, RecordingObserver())
    collector.feed(head.to_bytes())
    assert collector.response.reply == head and collector.response.blobs == {}
    assert collector.observer.events == []


def test_chunks_before_their_reply_are_ignored() -> None:
    request_id = rid()
    _, records = answer(request_id, [b"data"])
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, records[1:] + records[:1])
    assert collector.response is None and collector.answer.done == {}


# ---------------------------------------------------------------- blobs


def test_chunks_are_assembled_and_verified() -> None:
    request_id = rid()
    blobs = [b'{"files":{}}', BIG, b"", b"small"]
    head, records = answer(request_id, blobs)
    assert len(records) == 1 + 1 + 3 + 1 + 1
    collector = ReplyCollector(request_id, RecordingObserver())
    for value in records[:-1]:
        collector.feed(value)
        assert collector.response is None
    collector.feed(records[-1])
    response = collector.response
    assert response.reply == head
    assert contents(collector) == {p.hash_bytes(data): data for data in blobs}
    big = response.blobs[p.hash_bytes(BIG)]
    assert (big.sha, big.size) == (p.hash_bytes(BIG), len(BIG))
    out = io.BytesIO()
    big.copy_to(out)
    assert out.getvalue() == BIG
    response.close()
    assert all(blob.file.closed for blob in response.blobs.values())


def test_chunks_of_another_stream_are_ignored() -> None:
    request_id = rid()
    _, records = answer(request_id, [b"real"])
    stray = chunks(request_id, b"stray", uuid.uuid4().hex) + chunks(request_id, b"stray", None)
    collector = ReplyCollector(request_id, RecordingObserver())
    assert feed_all(collector, [records[0], *stray]) == [True, False, False]  # not news of this answer
    assert collector.response is None and collector.answer.done == {}
    collector.feed(records[1])
    assert contents(collector) == {p.hash_bytes(b"real"): b"real"}


def test_a_chunk_of_a_finished_blob_sent_again_is_ignored() -> None:
    request_id = rid()
    _, records = answer(request_id, [b"first", b"second"])
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, [records[0], records[1], records[1], records[2]])
    assert contents(collector) == {p.hash_bytes(b"first"): b"first", p.hash_bytes(b"second"): b"second"}


def test_a_newer_reply_supersedes_an_answer_in_progress() -> None:
    request_id = rid()
    _, old = answer(request_id, [b"tree", BIG], replica="1")
    second, new = answer(request_id, [b"tree", BIG], replica="2")
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, old[:4])  # the reply, the tree, two of BIG's three chunks: then replica 1 dies
    cut_off = collector.answer.done[p.hash_bytes(b"tree")]
    feed_all(collector, [new[0], *old[4:]])  # the late chunk of the old stream is ignored
    assert cut_off.file.closed and collector.response is None
    feed_all(collector, new[1:])
    assert collector.response.reply == second and collector.response.reply.replica == "2"
    assert contents(collector) == {p.hash_bytes(b"tree"): b"tree", p.hash_bytes(BIG): BIG}


def test_content_that_does_not_match_its_hash_drops_the_answer() -> None:
    request_id = rid()
    head = reply(request_id, [b"good"])
    forged = p.Chunk.of_piece(request_id, "repo", p.hash_bytes(b"good"), 1, codec.encode_piece(0, b"evil"), head.stream)
    collector = ReplyCollector(request_id, RecordingObserver())
    assert feed_all(collector, [head.to_bytes(), forged.to_bytes()]) == [True, False]  # no exception, no news
    assert collector.answer is None and collector.response is None
    _, again = answer(request_id, [b"good"])
    feed_all(collector, again)
    assert contents(collector) == {p.hash_bytes(b"good"): b"good"}


@pytest.mark.parametrize("order", [[1, 0, 2], [0, 2, 1], [1, 2]])
def test_a_chunk_out_of_order_drops_the_answer(order: list[int]) -> None:
    request_id = rid()
    _, records = answer(request_id, [BIG])
    collector = ReplyCollector(request_id, RecordingObserver())
    collector.feed(records[0])
    feed_all(collector, [records[1 + i] for i in order])
    assert collector.answer is None and collector.response is None


def test_chunk_data_that_is_not_base64_drops_the_answer() -> None:
    request_id = rid()
    _, records = answer(request_id, [b"data"])
    doc = json.loads(records[1])
    doc["data"] = "%%%"
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, [records[0], json.dumps(doc).encode()])
    assert collector.answer is None and collector.response is None


# ---------------------------------------------------------------- malformed records


def malformed(request_id: str) -> list[bytes]:
    """Records that carry ``request_id`` but break the reply schema."""
    good_reply = reply(request_id).to_dict()
    good_chunk = json.loads(chunks(request_id, b"x", "s")[0])
    no_time = reply(request_id, entries=[p.LogEntry(version=1, author="a", time_ms=5, message="m")]).to_dict()
    del no_time["entries"][0]["time_ms"]
    cases = [
        {**good_reply, "status": "bogus"},
        {**good_reply, "version": -1},
        {**good_reply, "version": True},
        {k: v for k, v in good_reply.items() if k != "stream"},
        no_time,
        {**good_chunk, "index": 1},  # index >= count
        {**good_chunk, "encoding": "lzma"},
        {"v": 1, "type": "request", "action": "pull", "request_id": request_id},  # not a reply type
    ]
    return [json.dumps(case).encode() for case in cases]


@pytest.mark.parametrize("case", range(len(malformed(rid()))))
def test_a_malformed_record_for_this_request_raises(case: int) -> None:
    request_id = rid()
    value = malformed(request_id)[case]
    collector = ReplyCollector(request_id, RecordingObserver())
    _, records = answer(request_id, [b"a", b"b"])
    feed_all(collector, records[:2])
    with pytest.raises(ProtocolError, match=r"^the service sent a malformed answer: ") as bad:
        collector.feed(value)
    assert bad.value.exit_code == ExitCode.ERROR
    assert collector.answer is None


def test_a_log_entry_without_time_names_the_field() -> None:
    request_id = rid()
    collector = ReplyCollector(request_id, RecordingObserver())
    with pytest.raises(ProtocolError, match=r"Reply: missing field 'entries\[0\]\.time_ms'"):
        collector.feed(malformed(request_id)[4])


def test_a_malformed_record_for_another_request_is_ignored() -> None:
    mine = rid()
    collector = ReplyCollector(mine, RecordingObserver())
    assert feed_all(collector, malformed(rid())) == [False] * len(malformed(mine))
    head, records = answer(mine, [b"x"])
    feed_all(collector, records)
    assert collector.response.reply == head


# ---------------------------------------------------------------- progress


def test_observer_sees_the_download_totals() -> None:
    request_id = rid()
    blobs = [b"tree", BIG, b""]
    head, records = answer(request_id, blobs)
    observer = RecordingObserver()
    feed_all(ReplyCollector(request_id, observer), records)
    total = len(b"tree") + len(BIG)
    assert observer.named("downloading") == [("downloading", total, 3)] and head.blob_bytes == total
    assert [event[1] for event in observer.named("downloaded")] == [4, codec.CHUNK_SIZE, codec.CHUNK_SIZE, 77, 0]
    assert observer.total("downloaded") == total
    assert len(observer.named("downloaded_object")) == 3
    assert observer.events[0][0] == "downloading" and observer.events[-1] == ("downloaded_object",)


def test_observer_starts_again_after_a_failover() -> None:
    request_id = rid()
    _, old = answer(request_id, [b"tree", b"file"])
    _, new = answer(request_id, [b"tree", b"file"])
    observer = RecordingObserver()
    feed_all(ReplyCollector(request_id, observer), old[:2] + new)
    assert observer.named("downloading") == [("downloading", 8, 2)] * 2
    assert len(observer.named("downloaded_object")) == 1 + 2


# ---------------------------------------------------------------- properties


blob_lists = st.lists(st.binary(max_size=64), min_size=0, max_size=4, unique=True)
garbage = st.one_of(st.binary(max_size=40), st.sampled_from(GARBAGE))


@settings(max_examples=150, deadline=None)
@given(mine=blob_lists, theirs=blob_lists, noise=st.lists(garbage, max_size=5), data=st.data())
def test_other_records_interleaved_anywhere_change_nothing(
    mine: list[bytes], theirs: list[bytes], noise: list[bytes], data: st.DataObject
) -> None:
    request_id, other = rid(), rid()
    head, ours = answer(request_id, mine)
    _, others = answer(other, theirs)
    stray = others + malformed(other) + noise
    positions = data.draw(st.lists(st.integers(0, len(ours)), min_size=len(stray), max_size=len(stray)))
    merged = list(ours)
    for position, value in sorted(zip(positions, stray, strict=True), key=lambda pair: -pair[0]):
        merged.insert(position, value)

    collector = ReplyCollector(request_id, RecordingObserver())
    fed = feed_all(collector, merged)
    assert [value for value, taken in zip(merged, fed, strict=True) if taken] == ours
    assert collector.response.reply == head
    assert contents(collector) == {p.hash_bytes(blob): blob for blob in mine}


@settings(max_examples=150, deadline=None)
@given(blobs=blob_lists.filter(bool), data=st.data())
def test_after_a_failover_at_any_point_the_newest_answer_wins(blobs: list[bytes], data: st.DataObject) -> None:
    request_id = rid()
    _, old = answer(request_id, blobs, replica="1")
    second, new = answer(request_id, blobs, replica="2")
    cut = data.draw(st.integers(1, len(old) - 1), label="records of the old answer before the failover")
    late = data.draw(st.lists(st.sampled_from(old[cut:]), max_size=4), label="old records arriving late")
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, old[:cut])
    assert collector.response is None
    records = list(new)
    for value in late:
        records.insert(data.draw(st.integers(1, len(records) - 1)), value)
    for value in records[:-1]:
        collector.feed(value)
        assert collector.response is None
    collector.feed(records[-1])
    assert collector.response.reply == second
    assert contents(collector) == {p.hash_bytes(blob): blob for blob in blobs}


# ---------------------------------------------------------------- news: what restarts the silence timer


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def at(self, when: float) -> Clock:
        self.now = when
        return self


def test_valid_progress_is_news_and_says_when() -> None:
    request_id, clock = rid(), Clock()
    collector = ReplyCollector(request_id, RecordingObserver(), clock)
    _, records = answer(request_id, [b"tree", BIG])
    working = reply(request_id, status=p.Status.WORKING).to_bytes()
    assert collector.last_news == 0.0 and collector.reached == 0
    assert collector.feed(working) is True
    assert clock.at(1) and collector.feed(working) is False  # a second "working" says nothing new
    for when, value in enumerate(records[:-1], start=2):
        assert clock.at(when) and collector.feed(value) is True
        assert collector.last_news == when
    assert collector.reached == 2 + 1 + 2  # the reply, the tree's piece, two of BIG's three


def test_a_broken_answer_was_never_news() -> None:
    request_id, clock = rid(), Clock()
    collector = ReplyCollector(request_id, RecordingObserver(), clock)
    collector.feed(reply(request_id, status=p.Status.WORKING).to_bytes())
    head = reply(request_id, [b"tree", b"good"])
    forged = p.Chunk.of_piece(request_id, "repo", p.hash_bytes(b"good"), 1, codec.encode_piece(0, b"evil"), head.stream)
    assert clock.at(5) and collector.feed(head.to_bytes()) is True
    assert clock.at(6) and collector.feed(chunks(request_id, b"tree", head.stream)[0]) is True
    assert (collector.reached, collector.last_news) == (3, 6)  # the reply, and the tree's only piece
    assert clock.at(7) and collector.feed(forged.to_bytes()) is False
    assert (collector.reached, collector.last_news) == (1, 0.0)  # back to the "working" notice
    assert collector.broken == [f"object {p.hash_bytes(b'good')[:12]} does not match its content hash"]
    assert collector.feed(chunks(request_id, b"late", head.stream)[0]) is False  # the rest of it neither


def test_an_answer_started_again_is_news_only_past_where_the_last_one_got() -> None:
    request_id, clock = rid(), Clock()
    collector = ReplyCollector(request_id, RecordingObserver(), clock)
    _, first = answer(request_id, [b"tree", BIG])
    second, again = answer(request_id, [b"tree", BIG])
    feed_all(collector, first[:4])  # the reply, the tree, two of BIG's pieces: then it stops
    assert clock.at(10) and feed_all(collector, again) == [False, False, False, False, True]
    assert collector.last_news == 10 and collector.response.reply == second


def test_an_answer_that_never_finishes_is_not_news_when_sent_again() -> None:
    request_id = rid()
    collector = ReplyCollector(request_id, RecordingObserver(), Clock())
    for attempt in range(3):
        head = reply(request_id, [b"tree"], blob_count=2**62)
        records = [head.to_bytes(), *chunks(request_id, b"tree", head.stream)]
        assert feed_all(collector, records) == ([True, True] if attempt == 0 else [False, False])
    assert collector.response is None


def test_a_blob_started_over_in_the_same_answer_is_not_news() -> None:
    request_id = rid()
    _, records = answer(request_id, [BIG])
    collector = ReplyCollector(request_id, RecordingObserver(), Clock())
    assert feed_all(collector, [*records[:3], records[1], records[2], records[3]]) == [True] * 3 + [False] * 2 + [True]
    assert contents(collector) == {p.hash_bytes(BIG): BIG}


# ---------------------------------------------------------------- await_answer: when to send again, when to give up


class Service:
    """What ``await_answer`` sends to and polls from, over a ``Clock``: each
    sending gets the records ``script(number)`` returns, ``(delay, value)`` pairs."""

    def __init__(self, script, clock: Clock, send_takes: float = 0.0) -> None:
        self.script, self.clock, self.send_takes = script, clock, send_takes
        self.sent: list[tuple[float, bool]] = []
        self.scheduled: list[tuple[float, bytes]] = []

    def send(self, again: bool) -> None:
        self.clock.now += self.send_takes
        self.sent.append((self.clock.now, again))
        self.scheduled += [(self.clock.now + delay, value) for delay, value in self.script(len(self.sent))]

    def poll(self, seconds: float) -> list[bytes]:
        assert seconds > 0 and self.clock.now < 1000, "waiting forever"
        upcoming = min((at for at, _ in self.scheduled), default=float("inf"))
        self.clock.now = min(self.clock.now + seconds, max(upcoming, self.clock.now))
        ready = [value for at, value in self.scheduled if at <= self.clock.now]
        self.scheduled = [(at, value) for at, value in self.scheduled if at > self.clock.now]
        return ready


def wait(service: Service, request_id: str, timeout: float) -> p.Reply:
    response = await_answer(request_id, service.send, service.poll, timeout, RecordingObserver(), service.clock)
    return response.reply


@pytest.mark.parametrize("timeout, sends", [(1, [0]), (5, [0]), (11, [0, 5, 10]), (30, [0, 10, 20]), (60, [0, 20, 40])])
def test_silence_gives_up_at_the_timeout_and_sends_again_each_window(timeout: float, sends: list[float]) -> None:
    clock = Clock()
    service = Service(lambda number: [], clock)
    with pytest.raises(ServerUnreachable, match=f"^no answer from the minigit service within {timeout:g}s$"):
        wait(service, rid(), timeout)
    assert clock.now == pytest.approx(timeout)
    assert service.sent == [(at, at > 0) for at in sends]


def test_time_spent_sending_is_not_silence() -> None:
    clock = Clock()
    request_id = rid()
    done = reply(request_id, status=p.Status.UP_TO_DATE).to_bytes()
    service = Service(lambda number: [(4.0, done)], clock, send_takes=100.0)  # a long upload, then an answer
    assert wait(service, request_id, 8).status == p.Status.UP_TO_DATE
    assert clock.now == pytest.approx(104) and len(service.sent) == 1


def test_news_restarts_the_wait_and_an_answer_after_it_is_taken() -> None:
    clock = Clock()
    request_id = rid()
    working = reply(request_id, status=p.Status.WORKING, action="push").to_bytes()
    done = reply(request_id, status=p.Status.ACCEPTED, action="push", version=2, head=2).to_bytes()
    service = Service(lambda number: [(4.0, working), (11.0, done)] if number == 1 else [], clock)
    assert wait(service, request_id, 8).status == p.Status.ACCEPTED
    assert clock.now == pytest.approx(11) and [again for _, again in service.sent] == [False, True]  # resent at 9


def test_a_broken_answer_each_time_ends_in_a_timeout_that_says_so() -> None:
    clock = Clock()
    request_id = rid()

    def broken(number: int) -> list[tuple[float, bytes]]:
        head = reply(request_id, [b"tree"])
        piece = codec.encode_piece(0, b"evil")
        bad = p.Chunk.of_piece(request_id, "repo", p.hash_bytes(b"tree"), 1, piece, head.stream).to_bytes()
        return [(1.0, head.to_bytes()), (2.0, bad)]

    service = Service(broken, clock)
    with pytest.raises(ServerUnreachable) as error:
        wait(service, request_id, 8)
    assert clock.now == pytest.approx(8) and len(service.sent) == 2
    assert error.value.message.startswith("no answer from the minigit service within 8s (2 broken answers dropped")


def test_a_malformed_record_ends_the_wait_at_once() -> None:
    clock = Clock()
    request_id = rid()
    service = Service(lambda number: [(1.0, malformed(request_id)[0])], clock)
    with pytest.raises(ProtocolError, match="malformed answer"):
        wait(service, request_id, 30)
    assert clock.now == pytest.approx(1)
