"""minigit.client.exchange: picking one request's answer out of a shared reply partition.

The records are built by hand with the real protocol and codec, then fed to a
real ReplyCollector, as transport.Connection feeds what it polls.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import random
import tempfile
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inprocess import RecordingObserver

from minigit import codec
from minigit import protocol as p
from minigit.client import exchange
from minigit.client.exchange import ReceivedBlob, ReplyCollector, await_answer
from minigit.errors import ExitCode, MinigitError, ProtocolError, ServerUnreachable, UnsafePath

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


def manifest_of(files: list[bytes]) -> p.Manifest:
    return {f"f{number}": p.FileEntry(p.hash_bytes(data), len(data)) for number, data in enumerate(files)}


def tree_of(files: list[bytes]) -> bytes:
    """The tree of a version that holds ``files``."""
    return p.encode_tree(manifest_of(files))


def answer(request_id: str, files: list[bytes], **fields) -> tuple[p.Reply, list[bytes]]:
    """A pull answer and its records, in order: the reply, the tree that lists
    ``files``, then ``files``, as the server sends them."""
    tree = tree_of(files)
    head = reply(request_id, [tree, *files], **{"tree": p.hash_bytes(tree), **fields})
    return head, [head.to_bytes()] + [
        value for data in (tree, *files) for value in chunks(request_id, data, head.stream)
    ]


def feed_all(collector: ReplyCollector, records: list[bytes]) -> list[bool]:
    return [collector.feed(value) for value in records]


def contents(collector: ReplyCollector) -> dict[str, bytes]:
    """The files of the complete answer, by sha (its tree left out)."""
    response = collector.response
    assert response is not None
    return {sha: blob.read() for sha, blob in response.blobs.items() if sha != response.reply.tree}


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
    assert feed_all(collector, records) == [True, True]  # the reply, and its (empty) tree
    assert collector.response.reply == head and collector.response.manifest == {}


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
    files = [BIG, b"", b"small"]
    head, records = answer(request_id, files)
    assert len(records) == 1 + 1 + 3 + 1 + 1
    collector = ReplyCollector(request_id, RecordingObserver())
    for value in records[:-1]:
        collector.feed(value)
        assert collector.response is None
    collector.feed(records[-1])
    response = collector.response
    assert response.reply == head
    assert contents(collector) == {p.hash_bytes(data): data for data in files}
    assert response.blobs[head.tree].read() == tree_of(files)
    assert response.manifest == manifest_of(files)  # the tree, decoded once, as it came
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
    feed_all(collector, records[1:])
    assert contents(collector) == {p.hash_bytes(b"real"): b"real"}


def test_a_chunk_of_a_finished_blob_sent_again_is_ignored() -> None:
    request_id = rid()
    _, records = answer(request_id, [b"first", b"second"])
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, [records[0], records[1], records[2], records[2], records[1], records[3]])
    assert contents(collector) == {p.hash_bytes(b"first"): b"first", p.hash_bytes(b"second"): b"second"}


def test_a_newer_reply_supersedes_an_answer_in_progress() -> None:
    request_id = rid()
    _, old = answer(request_id, [BIG], replica="1")
    second, new = answer(request_id, [BIG], replica="2")
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, old[:4])  # the reply, the tree, two of BIG's three chunks: then replica 1 dies
    cut_off = collector.answer.done[second.tree]
    feed_all(collector, [new[0], *old[4:]])  # the late chunk of the old stream is ignored
    assert cut_off.file.closed and collector.response is None
    feed_all(collector, new[1:])
    assert collector.response.reply == second and collector.response.reply.replica == "2"
    assert contents(collector) == {p.hash_bytes(BIG): BIG}


def test_content_that_does_not_match_its_hash_drops_the_answer() -> None:
    request_id = rid()
    head, records = answer(request_id, [b"good"])
    forged = p.Chunk.of_piece(request_id, "repo", p.hash_bytes(b"good"), 1, codec.encode_piece(0, b"evil"), head.stream)
    collector = ReplyCollector(request_id, RecordingObserver())
    assert feed_all(collector, [*records[:2], forged.to_bytes()]) == [True, True, False]  # no exception, no news
    assert collector.answer is None and collector.response is None
    _, again = answer(request_id, [b"good"])
    feed_all(collector, again)
    assert contents(collector) == {p.hash_bytes(b"good"): b"good"}


@pytest.mark.parametrize("order", [[1, 0, 2], [0, 2, 1], [1, 2]])
def test_a_chunk_out_of_order_drops_the_answer(order: list[int]) -> None:
    request_id = rid()
    _, records = answer(request_id, [BIG])
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, records[:2])  # the reply, the tree
    feed_all(collector, [records[2 + i] for i in order])
    assert collector.answer is None and collector.response is None


def test_a_piece_that_does_not_decode_drops_the_answer() -> None:
    request_id = rid()
    _, records = answer(request_id, [b"data"])
    header, _ = p.unframe(records[1])
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, [records[0], p.frame({**header, "encoding": "lz4"}, b"\xff" * 40)])
    assert collector.answer is None and collector.response is None


def test_chunk_data_that_is_not_base64_is_a_malformed_record() -> None:
    request_id = rid()
    _, records = answer(request_id, [b"data"])
    doc = {**p.unframe(records[1])[0], "data": "%%%"}  # the JSON form of before, its base64 broken
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, [records[0]])
    with pytest.raises(ProtocolError, match="field 'data' is not base64"):
        collector.feed(json.dumps(doc).encode())


# ---------------------------------------------------------------- the blobs an answer may carry


def broken_by(collector: ReplyCollector, records: list[bytes]) -> list[bool]:
    """Feed ``records``; the answer must have broken, leaving nothing behind."""
    fed = feed_all(collector, records)
    assert collector.answer is None and collector.response is None
    return fed


def test_a_first_blob_that_is_not_the_tree_breaks_the_answer() -> None:
    request_id, clock = rid(), Clock()
    head, records = answer(request_id, [b"file"])
    collector = ReplyCollector(request_id, RecordingObserver(), clock)
    assert clock.at(1) and broken_by(collector, [records[0], records[2], records[1]]) == [True, False, False]
    assert (collector.reached, collector.last_news) == (0, 0.0)  # the reply was never news
    assert collector.broken == [f"object {p.hash_bytes(b'file')[:12]} came before the answer's tree {head.tree[:12]}"]


def test_a_blob_the_tree_does_not_list_breaks_the_answer() -> None:
    request_id, clock = rid(), Clock()
    head, records = answer(request_id, [b"listed"], blob_count=3)
    unlisted = chunks(request_id, b"not in the tree", head.stream)
    collector = ReplyCollector(request_id, RecordingObserver(), clock)
    assert clock.at(1) and feed_all(collector, records) == [True, True, True]
    assert clock.at(2) and broken_by(collector, unlisted) == [False]
    assert (collector.reached, collector.last_news) == (0, 0.0)
    assert collector.broken == [f"object {p.hash_bytes(b'not in the tree')[:12]} is not in the answer's tree"]


def test_the_blobs_of_an_answer_without_a_tree_break_it() -> None:
    request_id = rid()
    head = reply(request_id, [b"file"])  # no tree
    collector = ReplyCollector(request_id, RecordingObserver())
    assert broken_by(collector, [head.to_bytes(), *chunks(request_id, b"file", head.stream)]) == [True, False]
    assert collector.broken == [f"object {p.hash_bytes(b'file')[:12]} came with an answer that has no tree"]


@pytest.mark.parametrize(
    "tree, problem",
    [
        (b"tree", "invalid tree: not a minigit tree"),
        (b'{"files": {}, "v": 1}', "invalid tree: not a minigit tree"),  # valid JSON, not canonical
        (tree_of([b"one", b"two"]).replace(b'"f1"', b'"f0"'), "invalid tree: not in canonical form"),
    ],
)
def test_a_tree_that_does_not_decode_stops_the_command(tree: bytes, problem: str) -> None:
    """Complete and matching its id, it is the tree the service meant: no retry mends it."""
    request_id = rid()
    head = reply(request_id, [tree, b"file"], tree=p.hash_bytes(tree))
    collector = ReplyCollector(request_id, RecordingObserver())
    collector.feed(head.to_bytes())
    with pytest.raises(ProtocolError) as stopped:
        feed_all(collector, chunks(request_id, tree, head.stream))
    prefix = f"the service sent a malformed answer: its tree {head.tree[:12]} does not decode: {problem}"
    assert stopped.value.message.startswith(prefix) and stopped.value.exit_code == ExitCode.ERROR
    assert collector.answer is None and collector.response is None


def test_a_tree_with_an_unsafe_path_stops_the_command_as_an_unsafe_path() -> None:
    request_id = rid()
    tree = p.encode_tree({"../escape.txt": p.FileEntry(p.hash_bytes(b"x"), 1)})
    head = reply(request_id, [tree, b"x"], tree=p.hash_bytes(tree))
    collector = ReplyCollector(request_id, RecordingObserver())
    collector.feed(head.to_bytes())
    with pytest.raises(UnsafePath, match=r"^unsafe path '\.\./escape\.txt': '\.\.' part$"):
        feed_all(collector, chunks(request_id, tree, head.stream))
    assert collector.answer is None and collector.response is None


def test_a_tree_larger_than_a_tree_may_be_breaks_the_answer_at_its_first_piece() -> None:
    request_id = rid()
    tree = tree_of([])
    head = reply(request_id, [tree], tree=p.hash_bytes(tree))
    count = exchange.MAX_TREE_CHUNKS + 1
    first = p.Chunk.of_piece(request_id, "repo", head.tree, count, codec.encode_piece(0, b"{"), head.stream)
    collector = ReplyCollector(request_id, RecordingObserver())
    assert broken_by(collector, [head.to_bytes(), first.to_bytes()]) == [True, False]
    assert collector.broken == [f"the tree {head.tree[:12]} is too large: {count} pieces"]


def test_the_tree_is_decoded_once_and_kept_with_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    request_id = rid()
    decoded: list[bytes] = []
    real = p.decode_tree
    monkeypatch.setattr(p, "decode_tree", lambda data: decoded.append(data) or real(data))
    files = [b"one", b"two"]
    _, records = answer(request_id, files)
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, [records[0], records[1], records[1], *records[2:]])  # the tree's piece sent twice
    assert decoded == [tree_of(files)] and collector.response.manifest == manifest_of(files)


def test_a_trickle_of_blobs_the_answer_does_not_call_for_cannot_hold_the_command() -> None:
    """A service that promises many blobs and never sends its tree, then sends a
    new small blob every 2 s: none of it is news, the command gives up in time."""
    clock = Clock()
    request_id = rid()

    def trickle(number: int) -> list[tuple[float, bytes]]:
        head, records = answer(request_id, [b"a"], blob_count=p.MAX_TREE_ENTRIES + 1)
        junk = [chunks(request_id, b"junk %d" % n, head.stream)[0] for n in range(400)]
        if number == 1:  # the tree comes, then blobs it does not list
            return [(0.5, records[0]), (1.0, records[1]), *((2.0 * n, value) for n, value in enumerate(junk, 1))]
        return [(0.5, records[0]), *((2.0 * n, value) for n, value in enumerate(junk, 1))]  # no tree at all

    service = Service(trickle, clock)
    with pytest.raises(ServerUnreachable, match=r"^no answer from the minigit service within 8s \(\d+ broken answers"):
        wait(service, request_id, 8)
    assert clock.now == pytest.approx(8)


# ---------------------------------------------------------------- memory


def in_memory(blob: ReceivedBlob) -> bool:
    file = blob.file
    return isinstance(file, tempfile.SpooledTemporaryFile) and not file._rolled


def test_small_blobs_past_the_memory_budget_share_one_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clone of 100,000 small files ran out of file descriptors (exit 4): every blob
    past SPOOL_BYTES had a temporary file of its own, all open until the end."""
    monkeypatch.setattr(exchange, "SPOOL_BYTES", 1000)
    opened: list[object] = []
    real = tempfile.TemporaryFile

    def counted(*args, **kwargs):
        opened.append(file := real(*args, **kwargs))
        return file

    monkeypatch.setattr(tempfile, "TemporaryFile", counted)
    request_id = rid()
    files = [f"file {n}\n".encode() * 10 for n in range(300)]  # 25 kB in all, 80 B and more each
    _, records = answer(request_id, files)
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, records)
    assert contents(collector) == {p.hash_bytes(data): data for data in files}
    # the tree (larger than the budget: rolled over to a file of its own), and one for all the rest
    assert len(opened) == 2 and sum(in_memory(blob) for blob in collector.response.blobs.values()) >= 10
    out = io.BytesIO()
    collector.response.blobs[p.hash_bytes(files[-1])].copy_to(out)
    assert out.getvalue() == files[-1]
    collector.response.close()
    assert all(file.closed for file in opened)


def test_an_answer_holds_at_most_spool_bytes_in_memory_the_rest_on_disk() -> None:
    request_id = rid()
    files = [random.Random(n).randbytes(3 * 1024 * 1024 + n) for n in range(5)]  # 15 MiB, each under SPOOL_BYTES
    head, records = answer(request_id, files)
    assert head.blob_bytes > exchange.SPOOL_BYTES
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, records)
    blobs = collector.response.blobs.values()
    held = sum(blob.size for blob in blobs if in_memory(blob))
    assert 0 < held <= exchange.SPOOL_BYTES
    assert sum(blob.size for blob in blobs if not in_memory(blob)) >= head.blob_bytes - exchange.SPOOL_BYTES
    assert contents(collector) == {p.hash_bytes(data): data for data in files}
    collector.response.close()


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=8), budget=st.integers(1, 600))
def test_whatever_the_sizes_memory_stays_within_the_budget(sizes: list[int], budget: int) -> None:
    request_id = rid()
    files = [bytes([number]) * (size + 1) for number, size in enumerate(sizes)]  # all different
    _, records = answer(request_id, files)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exchange, "SPOOL_BYTES", budget)
        collector = ReplyCollector(request_id, RecordingObserver())
        feed_all(collector, records)
    response = collector.response
    assert sum(blob.size for blob in response.blobs.values() if in_memory(blob)) <= budget
    assert contents(collector) == {p.hash_bytes(data): data for data in files}
    response.close()


def test_an_answer_received_into_a_spool_writes_each_blob_to_a_file_of_its_own(tmp_path) -> None:
    """Nothing of it in memory or in temporary files: each blob is a file in the
    spool, renamed once to where it goes, copied for any other path after that."""
    request_id = rid()
    files = [random.Random(n).randbytes(codec.CHUNK_SIZE + 1000 * n) for n in range(3)] + [b""]
    _, records = answer(request_id, files)
    collector = ReplyCollector(request_id, RecordingObserver(), spool=tmp_path)
    feed_all(collector, records)
    response = collector.response
    assert all(blob.file is None and blob.path.parent == tmp_path for blob in response.blobs.values())
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(b.path.name for b in response.blobs.values())
    assert contents(collector) == {p.hash_bytes(data): data for data in files}

    blob = response.blobs[p.hash_bytes(files[0])]
    placed, other = tmp_path / "placed", io.BytesIO()
    with open(placed, "wb") as out:  # as a stage_blob would open it
        blob.move_or_copy(placed, out)
    assert placed.read_bytes() == files[0] and blob.moved
    blob.move_or_copy(tmp_path / "unused", other)  # a second path with the same content: copied
    assert other.getvalue() == files[0] and blob.read() == files[0]
    response.close()  # the files not moved go; the one moved is the caller's
    assert sorted(path.name for path in tmp_path.iterdir()) == ["placed"]


def test_a_broken_answer_leaves_nothing_in_the_spool(tmp_path) -> None:
    request_id = rid()
    files = [b"one", random.Random(1).randbytes(2 * codec.CHUNK_SIZE)]
    _, records = answer(request_id, files)
    collector = ReplyCollector(request_id, RecordingObserver(), spool=tmp_path)
    feed_all(collector, records[:-1])  # the tree, the first blob, half of the second
    assert len(list(tmp_path.iterdir())) == 3
    _, again = answer(request_id, files)  # a failover: the answer starts over
    feed_all(collector, again[:1])
    assert list(tmp_path.iterdir()) == []
    feed_all(collector, again[1:])
    assert contents(collector) == {p.hash_bytes(data): data for data in files}
    collector.abandon()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- malformed records


def malformed(request_id: str) -> list[bytes]:
    """Records that carry ``request_id`` but break the reply schema."""
    good_reply = reply(request_id).to_dict()
    header, payload = p.unframe(chunks(request_id, b"x", "s")[0])
    good_chunk = {**header, "data": base64.b64encode(payload).decode()}  # the JSON form of before
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
    frames = [
        p.frame({**header, "index": 1}, payload),
        p.frame({**header, "encoding": "lzma"}, payload),
        p.frame({**good_reply}, b"bytes"),  # a reply is never a frame
    ]
    return [json.dumps(case).encode() for case in cases] + frames


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
    files = [BIG, b""]
    head, records = answer(request_id, files)
    observer = RecordingObserver()
    feed_all(ReplyCollector(request_id, observer), records)
    tree = len(tree_of(files))
    total = tree + len(BIG)
    assert observer.named("downloading") == [("downloading", total, 3)] and head.blob_bytes == total
    assert [event[1] for event in observer.named("downloaded")] == [tree, codec.CHUNK_SIZE, codec.CHUNK_SIZE, 77, 0]
    assert observer.total("downloaded") == total
    assert len(observer.named("downloaded_object")) == 3
    assert observer.events[0][0] == "downloading" and observer.events[-1] == ("downloaded_object",)


def test_observer_starts_again_after_a_failover() -> None:
    request_id = rid()
    _, old = answer(request_id, [b"file"])
    _, new = answer(request_id, [b"file"])
    observer = RecordingObserver()
    feed_all(ReplyCollector(request_id, observer), old[:2] + new)
    assert observer.named("downloading") == [("downloading", len(tree_of([b"file"])) + 4, 2)] * 2
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
@given(blobs=blob_lists, data=st.data())
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
    _, records = answer(request_id, [BIG])
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
    head, records = answer(request_id, [b"good"])
    forged = p.Chunk.of_piece(request_id, "repo", p.hash_bytes(b"good"), 1, codec.encode_piece(0, b"evil"), head.stream)
    assert clock.at(5) and collector.feed(records[0]) is True
    assert clock.at(6) and collector.feed(records[1]) is True
    assert (collector.reached, collector.last_news) == (3, 6)  # the reply, and the tree's only piece
    assert clock.at(7) and collector.feed(forged.to_bytes()) is False
    assert (collector.reached, collector.last_news) == (1, 0.0)  # back to the "working" notice
    assert collector.broken == [f"object {p.hash_bytes(b'good')[:12]} does not match its content hash"]
    assert collector.feed(chunks(request_id, b"late", head.stream)[0]) is False  # the rest of it neither


def test_an_answer_started_again_is_news_only_past_where_the_last_one_got() -> None:
    request_id, clock = rid(), Clock()
    collector = ReplyCollector(request_id, RecordingObserver(), clock)
    _, first = answer(request_id, [BIG])
    second, again = answer(request_id, [BIG])
    feed_all(collector, first[:4])  # the reply, the tree, two of BIG's pieces: then it stops
    assert clock.at(10) and feed_all(collector, again) == [False, False, False, False, True]
    assert collector.last_news == 10 and collector.response.reply == second


def test_an_answer_that_never_finishes_is_not_news_when_sent_again() -> None:
    request_id = rid()
    collector = ReplyCollector(request_id, RecordingObserver(), Clock())
    for attempt in range(3):
        _, records = answer(request_id, [], blob_count=p.MAX_TREE_ENTRIES + 1)
        assert feed_all(collector, records) == ([True, True] if attempt == 0 else [False, False])
    assert collector.response is None


def test_a_blob_started_over_in_the_same_answer_is_not_news() -> None:
    request_id = rid()
    _, records = answer(request_id, [BIG])
    collector = ReplyCollector(request_id, RecordingObserver(), Clock())
    again = [records[2], records[3], records[4]]  # BIG's first two pieces again, then its third
    assert feed_all(collector, [*records[:4], *again]) == [True] * 4 + [False] * 2 + [True]
    assert contents(collector) == {p.hash_bytes(BIG): BIG}


# ---------------------------------------------------------------- await_answer: when to send again, when to give up


class Service:
    """What ``await_answer`` sends to and polls from, over a ``Clock``: each
    sending gets the records ``script(number)`` returns, ``(delay, value)`` pairs."""

    def __init__(self, script, clock: Clock, send_takes: float = 0.0) -> None:
        self.script, self.clock, self.send_takes = script, clock, send_takes
        self.sent: list[tuple[float, int]] = []
        self.scheduled: list[tuple[float, bytes]] = []

    def send(self, attempt: int) -> None:
        self.clock.now += self.send_takes
        self.sent.append((self.clock.now, attempt))
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


@pytest.mark.parametrize(
    "timeout, sends",
    [(1, [0]), (5, [0, 1, 3]), (11, [0, 1, 3, 7]), (30, [0, 1, 3, 7, 15, 25]), (60, [0, 1, 3, 7, 15, 31, 51])],
)
def test_silence_gives_up_at_the_timeout_and_hedges_sooner_and_sooner(timeout: float, sends: list[float]) -> None:
    """Unanswered, a request is sent again after 1 s, then 2, 4, ... up to the
    attempt window (max(5, timeout / 3)), each time as the next attempt."""
    clock = Clock()
    service = Service(lambda number: [], clock)
    with pytest.raises(ServerUnreachable, match=f"^no answer from the minigit service within {timeout:g}s$"):
        wait(service, rid(), timeout)
    assert clock.now == pytest.approx(timeout)
    assert service.sent == [(at, n) for n, at in enumerate(sends)]


def test_the_first_hedge_of_an_upload_waits_for_the_replica_to_take_it_in() -> None:
    assert exchange.resend_delay(1, 30) == exchange.HEDGE_AFTER_S
    big = 64 * 1024 * 1024
    assert exchange.resend_delay(1, 30, big) == exchange.HEDGE_AFTER_S + big / exchange.UPLOAD_INTAKE_BYTES_PER_S
    assert exchange.resend_delay(9, 30) == exchange.attempt_window(30)  # doubling stops at the window
    assert exchange.resend_delay(1, 30, answering=True) == exchange.attempt_window(30)


def test_the_first_hedge_of_many_small_files_waits_for_their_records_to_be_taken_in() -> None:
    """10,000 small files are few bytes but 10,000 records the replica copies into
    the log before it reaches the request: sending them all again after a second
    (to the same busy replica, or to another that copies them too) only doubles the work."""
    records = 10_000
    delay = exchange.resend_delay(1, 600, 1_000_000, upload_records=records)
    assert delay >= records / exchange.UPLOAD_INTAKE_RECORDS_PER_S
    assert exchange.resend_delay(1, 600, 1_000_000, answering=True, upload_records=records) == exchange.attempt_window(
        600
    )


def test_time_spent_sending_is_not_silence() -> None:
    clock = Clock()
    request_id = rid()
    done = reply(request_id, status=p.Status.UP_TO_DATE).to_bytes()
    service = Service(lambda number: [(0.5, done)], clock, send_takes=100.0)  # a long upload, then an answer
    assert wait(service, request_id, 8).status == p.Status.UP_TO_DATE
    assert clock.now == pytest.approx(100.5) and len(service.sent) == 1


def test_a_working_notice_is_hedged_after_a_silence_and_an_answer_after_it_is_taken() -> None:
    """A "working" notice says a replica has the request; if it then dies, another replica
    (the next attempt) answers from the outcome table."""
    clock = Clock()
    request_id = rid()
    working = reply(request_id, status=p.Status.WORKING, action="push").to_bytes()
    done = reply(request_id, status=p.Status.ACCEPTED, action="push", version=2, head=2).to_bytes()
    service = Service(lambda number: [(0.2, working)] if number == 1 else [(0.3, done)], clock)
    assert wait(service, request_id, 8).status == p.Status.ACCEPTED
    assert service.sent == [(0, 0), (pytest.approx(1.2), 1)]  # a second after the notice
    assert clock.now == pytest.approx(1.5)


def test_upload_notices_keep_the_upload_from_being_sent_again_and_are_not_news() -> None:
    """A replica slow to take in a big upload says so every half second: the client
    does not send the whole upload to another replica meanwhile; the notices alone
    never count as news (they cannot hold a command past its timeout)."""
    clock = Clock()
    request_id = rid()
    notice = reply(request_id, status=p.Status.WORKING, action=p.UPLOAD_NOTICE).to_bytes()
    done = reply(request_id, status=p.Status.ACCEPTED, action="push", version=2, head=2).to_bytes()
    notices = [(0.5 * n, notice) for n in range(1, 13)]  # 6 s of taking in after the upload was sent
    service = Service(lambda number: [*notices, (6.3, done)] if number == 1 else [], clock)
    assert wait(service, request_id, 30).status == p.Status.ACCEPTED
    assert service.sent == [(0, 0)] and clock.now == pytest.approx(6.3)

    collector = ReplyCollector(request_id, RecordingObserver(), clock.at(0))
    assert collector.feed(notice) is False and collector.reached == 0
    assert clock.at(3) and collector.feed(notice) is False and collector.last_alive == 3

    clock = Clock()
    service = Service(lambda number: notices if number == 1 else [], clock)  # notices, then nothing
    with pytest.raises(ServerUnreachable):
        wait(service, request_id, 8)
    assert clock.now == pytest.approx(8)
    assert [at for at, _ in service.sent] == [0, pytest.approx(7.0)]  # a second after the last notice


def test_upload_notices_hold_a_hedge_off_for_one_attempt_window_at_most() -> None:
    """A replica sends a signed upload notice for any chunk that names a request id
    and a reply partition, and chunks are signed by no one: anyone who may write
    the requests topic can have a live replica notice someone else's request every
    half second (its id is in its chunks). Those notices must not keep the client
    from bypassing the replica that died with its request: at most an attempt
    window (max(5, timeout / 3)) past the hedge's due time, it is sent again."""
    clock = Clock()
    request_id = rid()
    notice = reply(request_id, status=p.Status.WORKING, action=p.UPLOAD_NOTICE).to_bytes()
    done = reply(request_id, status=p.Status.ACCEPTED, action="push", version=2, head=2).to_bytes()
    forged = [(0.5 * n, notice) for n in range(1, 120)]  # a notice every half second, for a minute

    def script(number: int) -> list[tuple[float, bytes]]:
        return forged if number == 1 else [(0.3, done)]  # the first replica is dead; the next answers

    service = Service(script, clock)
    assert wait(service, request_id, 30).status == p.Status.ACCEPTED
    window = exchange.attempt_window(30)
    assert [n for _, n in service.sent] == [0, 1]
    assert service.sent[1][0] <= window + 2 * exchange.HEDGE_AFTER_S


def test_once_a_replica_has_the_request_it_is_sent_again_without_its_upload() -> None:
    """Its "working" reply says the upload is in the log (every replica reads it):
    the hedge is the request alone, a second after, whatever the upload's size."""
    clock = Clock()
    request_id = rid()
    working = reply(request_id, status=p.Status.WORKING, action="push").to_bytes()
    done = reply(request_id, status=p.Status.ACCEPTED, action="push", version=2, head=2).to_bytes()
    service = Service(lambda number: [(0.2, working)] if number == 1 else [(0.3, done)], clock)
    alone: list[tuple[float, int]] = []

    def send_request(attempt: int) -> None:
        alone.append((clock.now, attempt))
        service.send(attempt)

    big = 640 * 1024 * 1024  # 20 s of intake allowance, were the upload sent again
    response = await_answer(
        request_id, service.send, service.poll, 30, RecordingObserver(), clock, big, send_request=send_request
    )
    assert response.reply.status == p.Status.ACCEPTED
    assert service.sent == [(0, 0), (pytest.approx(1.2), 1)] and alone == [(pytest.approx(1.2), 1)]


def test_an_answer_in_progress_is_waited_for_a_whole_window() -> None:
    """Once a replica's reply has come, a pause in its content is not a reason
    to ask another: only a window without news is (news restarts the wait)."""
    clock = Clock()
    request_id = rid()
    _, records = answer(request_id, [b"a"])
    service = Service(lambda number: [(0.5, records[0]), (4.0, records[1]), (8.5, records[2])], clock)
    assert wait(service, request_id, 8).status == p.Status.OK
    assert clock.now == pytest.approx(8.5) and len(service.sent) == 1


def test_a_broken_answer_each_time_ends_in_a_timeout_that_says_so() -> None:
    clock = Clock()
    request_id = rid()

    def broken(number: int) -> list[tuple[float, bytes]]:
        head = reply(request_id, [b"tree"], tree=p.hash_bytes(b"tree"))
        piece = codec.encode_piece(0, b"evil")
        bad = p.Chunk.of_piece(request_id, "repo", p.hash_bytes(b"tree"), 1, piece, head.stream).to_bytes()
        return [(1.0, head.to_bytes()), (2.0, bad)]

    service = Service(broken, clock)
    with pytest.raises(ServerUnreachable) as error:
        wait(service, request_id, 8)
    # a broken answer sends the request again at once if the hedge delay since the last sending has
    # passed (1 s, then 2, 4, ...): at 0, at 2 (broken at 2), at 4 (broken at 4); broken at 6, due at 8
    assert clock.now == pytest.approx(8) and [at for at, _ in service.sent] == pytest.approx([0, 2, 4])
    assert error.value.message.startswith("no answer from the minigit service within 8s (3 broken answers dropped")


def test_a_malformed_record_ends_the_wait_at_once() -> None:
    clock = Clock()
    request_id = rid()
    service = Service(lambda number: [(1.0, malformed(request_id)[0])], clock)
    with pytest.raises(ProtocolError, match="malformed answer"):
        wait(service, request_id, 30)
    assert clock.now == pytest.approx(1)


def test_a_full_temporary_disk_is_said_as_such_not_taken_for_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    """The blobs past the memory budget go to a temporary file: a full disk there
    (ENOSPC, or `ulimit -f`) escaped as an OSError, which the transport takes for
    Kafka's: 'cannot reach Kafka at ...: OSError', exit 4. It is this machine's
    disk: one error line naming it, exit 1."""
    monkeypatch.setattr(exchange, "SPOOL_BYTES", 1000)

    class FullDisk(io.BytesIO):
        def write(self, data) -> int:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *args, **kwargs: FullDisk())
    request_id = rid()
    _, records = answer(request_id, [f"file {n}\n".encode() * 10 for n in range(300)])
    collector = ReplyCollector(request_id, RecordingObserver())
    with pytest.raises(Exception) as raised:  # (which one is the point)
        feed_all(collector, records)
    assert isinstance(raised.value, MinigitError) and not isinstance(raised.value, OSError)
    assert raised.value.exit_code == ExitCode.ERROR
    assert "No space left on device" in raised.value.message and "temporary" in raised.value.message


def test_a_blob_of_another_size_than_its_tree_says_breaks_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a blob is kept (memory or the one spill file) follows the size its tree
    gives: a tree that says 1 byte for blobs of kilobytes sent each to a temporary file
    of its own (the descriptors a clone of 100,000 files ran out of), and the files
    were written with sizes their manifest does not hold. Nothing received is trusted."""
    monkeypatch.setattr(exchange, "SPOOL_BYTES", 1000)
    request_id = rid()
    files = [random.Random(n).randbytes(2000) for n in range(5)]
    tree = p.encode_tree({f"f{n}": p.FileEntry(p.hash_bytes(data), 1) for n, data in enumerate(files)})
    head = reply(request_id, [tree, *files], tree=p.hash_bytes(tree))
    records = [head.to_bytes()] + [value for data in (tree, *files) for value in chunks(request_id, data, head.stream)]
    collector = ReplyCollector(request_id, RecordingObserver())
    feed_all(collector, records)
    assert collector.response is None
    assert collector.broken and "the tree says" in collector.broken[-1]


def test_a_tree_giving_one_content_two_sizes_or_a_blob_more_pieces_than_its_size_breaks_the_answer() -> None:
    request_id = rid()
    data = b"x" * 3000
    entry = p.FileEntry(p.hash_bytes(data), len(data))
    for listed in ({"a": entry, "b": dataclasses.replace(entry, size=5)}, {"a": dataclasses.replace(entry, size=5)}):
        tree = p.encode_tree(listed)
        head = reply(request_id, [tree, data], tree=p.hash_bytes(tree))
        records = [head.to_bytes()] + [
            value for blob in (tree, data) for value in chunks(request_id, blob, head.stream)
        ]
        collector = ReplyCollector(request_id, RecordingObserver())
        feed_all(collector, records)
        assert collector.response is None and "the tree says" in collector.broken[-1]
