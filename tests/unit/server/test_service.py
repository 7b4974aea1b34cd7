"""minigit_server.service: request handling, with the log and replies in memory.

The memory wire applies each appended record at once, as a caught-up replica
would; the real Kafka path is covered by the integration tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid

import pytest

from minigit import codec
from minigit import protocol as p
from minigit_server.service import AppliedOffsets, MemoryWire, Service
from minigit_server.store import MemoryStore

NOW_MS = 1_800_000_000_000


@pytest.fixture
def service() -> Service:
    store = MemoryStore()
    applied = AppliedOffsets({})
    return Service("7", store, MemoryWire(store, applied), applied, clock_ms=lambda: NOW_MS)


def rid() -> str:
    return uuid.uuid4().hex


def send(service: Service, message: p.Message):
    return service.handle(NOW_MS, message.to_bytes())


def upload(service: Service, request_id: str, repo: str, data: bytes) -> str:
    blob = codec.BlobSource.from_bytes(data)
    for chunk in p.blob_chunks(request_id, repo, blob):
        assert send(service, chunk) is None  # chunks go straight to the log, unanswered
    return blob.sha


def answers(service: Service, request_id: str) -> list[p.Message]:
    return [
        m
        for _, m in service.wire.replies
        if m.request_id == request_id and getattr(m, "status", "") != p.Status.WORKING
    ]


def create(service: Service, repo: str, files: dict[str, bytes]) -> None:
    request_id = rid()
    manifest = {path: p.FileEntry(upload(service, request_id, repo, data), len(data)) for path, data in files.items()}
    tree = upload(service, request_id, repo, p.encode_tree(manifest))
    send(service, p.InitRequest(request_id=request_id, repo=repo, user="u", reply_partition=1, tree=tree))
    assert answers(service, request_id)[-1].status == p.Status.ACCEPTED


def push(service: Service, repo: str, base: int, files: dict[str, bytes], request_id: str | None = None) -> p.Reply:
    request_id = request_id or rid()
    manifest = {path: p.FileEntry(upload(service, request_id, repo, data), len(data)) for path, data in files.items()}
    tree = upload(service, request_id, repo, p.encode_tree(manifest))
    send(service, p.PushRequest(request_id=request_id, repo=repo, user="u", reply_partition=2, base=base, tree=tree))
    return answers(service, request_id)[-1]


def test_malformed_request_with_an_address_gets_an_error_reply(service: Service) -> None:
    request_id = rid()
    value = json.dumps(
        {"v": 1, "type": "request", "action": "zap", "request_id": request_id, "reply_partition": 3}
    ).encode()
    handled = service.handle(NOW_MS, value)
    assert handled.status == "malformed"
    [(partition, reply)] = service.wire.replies
    assert (partition, reply.request_id, reply.status) == (3, request_id, p.Status.INVALID)
    assert reply.message.startswith("bad request: unknown message type")


def test_malformed_request_without_an_address_is_only_logged(service: Service) -> None:
    handled = service.handle(NOW_MS, b"{not json")
    assert (handled.status, service.wire.replies) == ("malformed", [])
    assert "no reply address" in handled.detail


def test_an_expired_request_is_not_answered(service: Service) -> None:
    request = p.PingRequest(request_id=rid(), repo="r", user="u", reply_partition=0, timeout_ms=1000)
    handled = service.handle(NOW_MS - 5000, request.to_bytes())
    assert handled.status == "expired" and service.wire.replies == []


def test_ping_names_the_replica(service: Service) -> None:
    request_id = rid()
    send(service, p.PingRequest(request_id=request_id, repo="ab", user="u", reply_partition=4))
    [reply] = answers(service, request_id)
    partition = service.wire.log_partition("ab")
    assert (reply.status, reply.replica) == (p.Status.OK, "7") and f"log partition {partition}" in reply.message


def test_a_reply_partition_that_does_not_exist_is_not_answered(service: Service) -> None:
    request = p.PingRequest(request_id=rid(), repo="r", user="u", reply_partition=99)
    handled = send(service, request)
    assert handled.status == "malformed" and "does not exist" in handled.detail
    assert service.wire.replies == []
    value = json.dumps({"v": 1, "type": "request", "request_id": rid(), "reply_partition": 99}).encode()
    assert service.handle(NOW_MS, value).status == "malformed" and service.wire.replies == []


def test_push_is_answered_with_the_applied_outcome_and_a_retry_with_the_same(service: Service) -> None:
    create(service, "r", {"a.txt": b"a"})
    request_id = rid()
    first = push(service, "r", 1, {"a.txt": b"b"}, request_id)
    assert (first.status, first.version, first.head) == (p.Status.ACCEPTED, 2, 2)
    log_length = len(service.wire.log[service.wire.log_partition("r")])
    tree = p.hash_bytes(p.encode_tree({"a.txt": p.FileEntry(p.hash_bytes(b"b"), 1)}))
    again = p.PushRequest(request_id=request_id, repo="r", user="u", reply_partition=2, base=1, tree=tree)
    handled = send(service, again)
    assert "retry: original outcome" in handled.detail
    assert answers(service, request_id)[-1].version == 2
    assert len(service.wire.log[service.wire.log_partition("r")]) == log_length  # no second proposal
    stale = push(service, "r", 1, {"a.txt": b"c"})
    assert (stale.status, stale.head) == (p.Status.REJECTED, 2)


def test_a_request_id_taken_by_another_request_is_refused_not_answered_for_it(service: Service) -> None:
    """Request ids are visible on repo-requests before their request arrives: a
    request with a stolen id must not get the other request's answer."""
    other = "u"  # in the same log partition as "r"
    assert service.wire.log_partition(other) == service.wire.log_partition("r")
    create(service, "r", {"a.txt": b"a"})
    create(service, other, {"a.txt": b"a"})
    request_id = rid()
    assert push(service, "r", 1, {"a.txt": b"b"}, request_id).status == p.Status.ACCEPTED
    stolen = push(service, other, 1, {"a.txt": b"b"}, request_id)  # same id, another repository
    assert (stolen.status, stolen.message) == (p.Status.INVALID, "request id already used by another request")
    assert service.store.get_repo(other).head == 1 and service.store.get_repo("r").head == 2


def test_pull_streams_the_tree_and_only_what_changed(service: Service) -> None:
    create(service, "r", {"keep.txt": b"same", "old.txt": b"old"})
    push(service, "r", 1, {"keep.txt": b"same", "new.txt": b"new"})
    request_id = rid()
    send(service, p.PullRequest(request_id=request_id, repo="r", user="u", reply_partition=5, version=1))
    reply, *chunks = answers(service, request_id)
    assert (reply.status, reply.version, reply.blob_count) == (p.Status.OK, 2, 2)
    assert [c.sha for c in chunks] == [reply.tree, p.hash_bytes(b"new")]  # the tree first
    assert all(c.stream == reply.stream for c in chunks)
    assert p.decode_tree(chunks[0].raw()).keys() == {"keep.txt", "new.txt"}

    # A client that lost keep.txt's content (edited it locally) gets it again.
    request_id = rid()
    send(
        service,
        p.PullRequest(
            request_id=request_id, repo="r", user="u", reply_partition=5, version=1, lost=[p.hash_bytes(b"same")]
        ),
    )
    reply, *chunks = answers(service, request_id)
    assert reply.blob_count == 3 and p.hash_bytes(b"same") in {c.sha for c in chunks}


@pytest.mark.parametrize("version, status", [(2, p.Status.UP_TO_DATE), (5, p.Status.INVALID)])
def test_pull_at_or_past_the_head(service: Service, version: int, status: str) -> None:
    create(service, "r", {"a": b"a"})
    push(service, "r", 1, {"a": b"b"})
    request_id = rid()
    send(service, p.PullRequest(request_id=request_id, repo="r", user="u", reply_partition=0, version=version))
    assert [m.status for m in answers(service, request_id)] == [status]


def test_pull_and_log_of_a_missing_repository(service: Service) -> None:
    for cls in (p.PullRequest, p.LogRequest):
        request_id = rid()
        send(service, cls(request_id=request_id, repo="nope", user="u", reply_partition=0))
        assert [m.status for m in answers(service, request_id)] == [p.Status.NOT_FOUND]


def test_log_is_newest_first_and_limited(service: Service) -> None:
    create(service, "r", {"a": b"0"})
    for n in range(1, 5):
        push(service, "r", n, {"a": str(n).encode()})
    request_id = rid()
    send(service, p.LogRequest(request_id=request_id, repo="r", user="u", reply_partition=0, limit=3))
    [reply] = answers(service, request_id)
    assert [e.version for e in reply.entries] == [5, 4, 3] and reply.head == 5


def test_every_request_type_has_a_handler():
    from minigit_server.service import HANDLERS

    requests = {cls for cls in p._registry.values() if issubclass(cls, p.Request)}
    assert set(HANDLERS) == requests
    assert all(HANDLERS[cls].__name__ == f"handle_{cls.action}" for cls in requests)


def limited(max_push_bytes: int) -> Service:
    store = MemoryStore()
    applied = AppliedOffsets({})
    wire = MemoryWire(store, applied)
    return Service("7", store, wire, applied, clock_ms=lambda: NOW_MS, max_push_bytes=max_push_bytes)


def test_a_push_over_the_size_limit_is_refused_and_its_excess_never_reaches_the_log() -> None:
    service = limited(max_push_bytes=3 * codec.CHUNK_SIZE)
    create(service, "r", {"a.txt": b"a"})
    partition = service.wire.log_partition("r")
    log_before = len(service.wire.log[partition])
    big = os.urandom(5 * codec.CHUNK_SIZE)  # random: stored as it is
    reply = push(service, "r", 1, {"big.bin": big})
    assert reply.status == p.Status.INVALID and reply.message.startswith("push too large: ")
    assert f"at most {3 * codec.CHUNK_SIZE} per push" in reply.message
    appended = service.wire.log[partition][log_before:]
    assert len(appended) == 3  # the chunks up to the limit; no proposal
    assert service.store.get_repo("r").head == 1
    # the service goes on: a small push is accepted
    assert push(service, "r", 1, {"a.txt": b"b"}).status == p.Status.ACCEPTED


def test_chunks_sent_again_by_a_retry_are_counted_once() -> None:
    service = limited(max_push_bytes=2 * codec.CHUNK_SIZE)
    create(service, "r", {"a.txt": b"a"})
    request_id = rid()
    data = os.urandom(codec.CHUNK_SIZE + 1)
    for _attempt in range(3):
        upload(service, request_id, "r", data)
    assert push(service, "r", 1, {"f.bin": data}, request_id).status == p.Status.ACCEPTED


def test_the_upload_meter_forgets_the_oldest_requests_beyond_its_bound() -> None:
    from minigit_server.service import UploadMeter

    meter = UploadMeter(limit=2000, tracked=2)
    chunk = p.Chunk(request_id="0" * 32, repo="r", sha="a" * 64, index=0, count=1, encoding="raw", data="A" * 4000)
    assert not meter.admit(chunk)  # 3000 bytes: over
    for n in (1, 2):
        assert meter.admit(dataclasses.replace(chunk, request_id=f"{n:032x}", data=""))  # counted as one record
    assert meter.settle("0" * 32) is None  # forgotten, so not refused: its chunks never reached the log anyway
    assert meter.settle(f"{2:032x}") is None and len(meter._seen) == 1


def test_empty_chunks_count_against_the_push_limit_as_records() -> None:
    from minigit_server.service import RECORD_CHARGE

    service = limited(max_push_bytes=10 * RECORD_CHARGE)
    request_id, partition = rid(), service.wire.log_partition("r")
    for index in range(50):  # 50 records of nothing: a flood of the log, not a push
        chunk = p.Chunk(request_id=request_id, repo="r", sha="a" * 64, index=index, count=50, encoding="raw", data="")
        send(service, chunk)
    assert len(service.wire.log.get(partition, [])) == 10
    push_request = p.PushRequest(request_id=request_id, repo="r", user="u", reply_partition=2, base=1, tree="b" * 64)
    send(service, push_request)
    assert answers(service, request_id)[-1].message.startswith("push too large")
