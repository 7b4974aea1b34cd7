"""minigit_server.service: request handling, with the log and replies in memory.

The memory wire applies each appended record at once, as a caught-up replica
would; the real Kafka path is covered by the integration tests. Every request
is signed by a registered user's key (tests/unit/server/signing.py), and every
reply read here is checked against the service's key (sealed ones opened with
the request's reply key) before a test looks at it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import uuid

import pytest
from signing import (
    NAMESPACE,
    NOW_MS,
    Client,
    admin_proposal,
    delete_proposal,
    digest_of,
    key_text,
    make_service,
    register,
    signed,
    user_key,
)

from minigit import codec, identity, sealing
from minigit import protocol as p
from minigit.errors import SealBroken
from minigit_server import access
from minigit_server.service import AppliedOffsets, MemoryWire, Service

WINDOW = access.REPLAY_WINDOW_MS


@pytest.fixture
def service() -> Service:
    return make_service(users=("u", "alice", "bob"))


@pytest.fixture
def u(service: Service) -> Client:
    return Client(service, "u")


def rid() -> str:
    return uuid.uuid4().hex


def create(client: Client, repo: str, files: dict[str, bytes], **fields) -> None:
    assert client.commit(p.InitRequest, repo, files, **fields).status == p.Status.ACCEPTED


def push(client: Client, repo: str, base: int, files: dict[str, bytes], request_id: str | None = None) -> p.Reply:
    return client.commit(p.PushRequest, repo, files, request_id, base=base)


def proposals(service: Service, repo: str) -> list[p.Proposal]:
    """The proposals in the log partition of ``repo``."""
    found = []
    for value in service.wire.log.get(service.wire.log_partition(repo), []):
        message = p.parse_message(value, allowed=p.LOG_RECORD_TYPES)
        if isinstance(message, p.Proposal):
            found.append(message)
    return found


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
    assert sealing.reply_signed_by(service.server.public_key, reply, NAMESPACE)


def test_malformed_request_without_an_address_is_only_logged(service: Service) -> None:
    handled = service.handle(NOW_MS, b"{not json")
    assert (handled.status, service.wire.replies) == ("malformed", [])
    assert "no reply address" in handled.detail


def test_an_expired_request_is_not_answered(u: Client) -> None:
    handled = u.send(u.request(p.PingRequest, "r", timeout_ms=1000), received_ms=NOW_MS - 5000)
    assert handled.status == "expired" and u.service.wire.replies == []


def test_ping_names_the_replica(service: Service) -> None:
    client = Client(service, "u", reply_partition=4)
    reply = client.call(p.PingRequest, "ab")
    partition = service.wire.log_partition("ab")
    assert (reply.status, reply.replica) == (p.Status.OK, "7") and f"log partition {partition}" in reply.message
    assert [n for n, _ in service.wire.replies] == [4]


def test_a_reply_partition_that_does_not_exist_is_not_answered(u: Client) -> None:
    handled = u.send(u.request(p.PingRequest, "r", reply_partition=99))
    assert handled.status == "malformed" and "does not exist" in handled.detail
    assert u.service.wire.replies == []
    value = json.dumps({"v": 1, "type": "request", "request_id": rid(), "reply_partition": 99}).encode()
    assert u.service.handle(NOW_MS, value).status == "malformed" and u.service.wire.replies == []


def test_push_is_answered_with_the_applied_outcome_and_a_retry_with_the_same(u: Client) -> None:
    service = u.service
    create(u, "r", {"a.txt": b"a"})
    request_id = rid()
    first = push(u, "r", 1, {"a.txt": b"b"}, request_id)
    assert (first.status, first.version, first.head) == (p.Status.ACCEPTED, 2, 2)
    proposed = len(proposals(service, "r"))
    handled = u.resend(request_id)  # the client's retry: its chunks, then the same request signed again
    assert "retry: original outcome" in handled.detail
    assert u.answer(request_id).version == 2
    assert len(proposals(service, "r")) == proposed  # no second proposal
    stale = push(u, "r", 1, {"a.txt": b"c"})
    assert (stale.status, stale.head) == (p.Status.REJECTED, 2)


def test_a_request_id_taken_by_another_request_is_refused_not_answered_for_it(service: Service) -> None:
    """Request ids are visible on repo-requests before their request arrives: a
    request with a stolen id must not get the other request's answer."""
    u, bob = Client(service, "u"), Client(service, "bob", reply_partition=2)
    other = "u"  # in the same log partition as "r"
    assert service.wire.log_partition(other) == service.wire.log_partition("r")
    create(u, "r", {"a.txt": b"a"})
    create(bob, other, {"a.txt": b"a"})
    request_id = rid()
    assert push(u, "r", 1, {"a.txt": b"b"}, request_id).status == p.Status.ACCEPTED
    stolen = push(bob, other, 1, {"a.txt": b"b"}, request_id)  # same id, another repository
    assert (stolen.status, stolen.message) == (p.Status.INVALID, "request id already used by another request")
    assert service.store.get_repo(other).head == 1 and service.store.get_repo("r").head == 2


def test_pull_streams_the_tree_and_only_what_changed(u: Client) -> None:
    create(u, "r", {"keep.txt": b"same", "old.txt": b"old"})
    push(u, "r", 1, {"keep.txt": b"same", "new.txt": b"new"})
    request = u.request(p.PullRequest, "r", version=1)
    u.send(request)
    reply, *chunks = u.answers(request.request_id)
    assert (reply.status, reply.version, reply.blob_count) == (p.Status.OK, 2, 2)
    assert [c.sha for c in chunks] == [reply.tree, p.hash_bytes(b"new")]  # the tree first
    assert all(c.stream == reply.stream for c in chunks)
    assert p.decode_tree(chunks[0].raw()).keys() == {"keep.txt", "new.txt"}

    # A client that lost keep.txt's content (edited it locally) gets it again.
    request = u.request(p.PullRequest, "r", version=1, lost=[p.hash_bytes(b"same")])
    u.send(request)
    reply, *chunks = u.answers(request.request_id)
    assert reply.blob_count == 3 and p.hash_bytes(b"same") in {c.sha for c in chunks}


def test_a_pull_slow_to_check_its_objects_says_it_is_working_meanwhile(
    u: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checking 100,000 objects takes seconds before the reply goes: silent, the
    client asked another replica after a second, which sent a second whole answer."""
    create(u, "r", {f"f{n}.txt": f"file {n}".encode() for n in range(5)})
    monkeypatch.setattr(p, "UPLOAD_NOTICE_S", 0.0)  # every check is slow
    request = u.request(p.PullRequest, "r", version=0)
    u.send(request)
    statuses = [m.status for m in u.records(request.request_id) if isinstance(m, p.Reply)]
    assert statuses == [p.Status.WORKING] * 5 + [p.Status.OK]


@pytest.mark.parametrize("version, status", [(2, p.Status.UP_TO_DATE), (5, p.Status.INVALID)])
def test_pull_at_or_past_the_head(u: Client, version: int, status: str) -> None:
    create(u, "r", {"a": b"a"})
    push(u, "r", 1, {"a": b"b"})
    request = u.request(p.PullRequest, "r", version=version)
    u.send(request)
    assert [m.status for m in u.answers(request.request_id)] == [status]


def test_pull_and_log_of_a_missing_repository(u: Client) -> None:
    for cls in (p.PullRequest, p.LogRequest):
        request = u.request(cls, "nope")
        u.send(request)
        assert [m.status for m in u.answers(request.request_id)] == [p.Status.NOT_FOUND]


def test_log_is_newest_first_and_limited(u: Client) -> None:
    create(u, "r", {"a": b"0"})
    for n in range(1, 5):
        push(u, "r", n, {"a": str(n).encode()})
    reply = u.call(p.LogRequest, "r", limit=3)
    assert [e.version for e in reply.entries] == [5, 4, 3] and reply.head == 5


def test_a_log_entry_carries_its_write_s_proof_of_authorship(u: Client) -> None:
    """Anyone with the log reply checks who made each version, with the service's key alone."""
    create(u, "r", {"a": b"0"})
    pushed = rid()
    push(u, "r", 1, {"a": b"1"}, pushed)
    reply = u.call(p.LogRequest, "r")
    assert [e.version for e in reply.entries] == [2, 1]
    for entry in reply.entries:
        proof = entry.signed
        request = proof.parsed_request()
        assert (request.user, proof.key) == (entry.author, key_text(u.key))
        assert identity.request_signed_by(proof.key, request, NAMESPACE)
        server = u.service.server
        assert identity.attested_by(
            server.public_key, NAMESPACE, request.user, proof.key, request.signature, proof.attestation
        )
    newest = reply.entries[0].signed.parsed_request()
    assert newest == u.sent[pushed][0]  # the request as it arrived, signature and all
    assert newest.chunks == digest_of(u.sent[pushed][1])  # naming what it uploaded


def test_every_request_type_has_a_handler():
    from minigit_server.service import HANDLERS

    requests = {cls for cls in p._registry.values() if issubclass(cls, p.Request)}
    assert set(HANDLERS) == requests
    assert all(HANDLERS[cls].__name__ == f"handle_{cls.action}" for cls in requests)


def limited(max_push_bytes: int) -> Client:
    return Client(make_service(max_push_bytes=max_push_bytes), "u")


def test_a_push_over_the_size_limit_is_refused_and_its_excess_never_reaches_the_log() -> None:
    u = limited(max_push_bytes=3 * codec.CHUNK_SIZE)
    service = u.service
    create(u, "r", {"a.txt": b"a"})
    partition = service.wire.log_partition("r")
    log_before = len(service.wire.log[partition])
    big = os.urandom(5 * codec.CHUNK_SIZE)  # random: stored as it is
    reply = push(u, "r", 1, {"big.bin": big})
    assert reply.status == p.Status.INVALID and reply.message.startswith("push too large: ")
    assert f"at most {3 * codec.CHUNK_SIZE} per push" in reply.message
    appended = service.wire.log[partition][log_before:]
    assert len(appended) == 3  # the chunks up to the limit; no proposal
    assert service.store.get_repo("r").head == 1
    # the service goes on: a small push is accepted
    assert push(u, "r", 1, {"a.txt": b"b"}).status == p.Status.ACCEPTED


def test_chunks_sent_again_by_a_retry_are_counted_once() -> None:
    u = limited(max_push_bytes=2 * codec.CHUNK_SIZE)
    create(u, "r", {"a.txt": b"a"})
    request_id = rid()
    data = os.urandom(codec.CHUNK_SIZE + 1)
    for _attempt in range(3):
        u.upload(request_id, "r", data)
    assert push(u, "r", 1, {"f.bin": data}, request_id).status == p.Status.ACCEPTED


def test_the_upload_meter_forgets_the_oldest_requests_beyond_its_bound() -> None:
    from minigit_server.service import RECORD_CHARGE, UploadMeter

    meter = UploadMeter(limit=2000, tracked=2)
    chunk = p.Chunk(request_id="0" * 32, repo="r", sha="a" * 64, index=0, count=1, encoding="raw", payload=b"A" * 3000)
    assert not meter.admit(chunk)  # 3000 bytes: over
    empty = {n: dataclasses.replace(chunk, request_id=f"{n:032x}", payload=b"") for n in (1, 2)}
    for n in (1, 2):
        assert meter.admit(empty[n])  # counted as one record
    forgotten = meter.settle("0" * 32)  # so not refused: its chunks never reached the log anyway
    assert forgotten == 0
    settled = meter.settle(f"{2:032x}")
    assert settled == RECORD_CHARGE <= meter.limit  # its one empty chunk, as one record
    assert len(meter._seen) == 1


def test_the_upload_meter_counts_each_chunk_once_in_any_order() -> None:
    """Each chunk (a blob's piece) once, in any order: a retry's resends cost nothing."""
    from minigit_server.service import RECORD_CHARGE, UploadMeter

    meter = UploadMeter(limit=10**9)
    blob = codec.BlobSource.from_bytes(os.urandom(2 * codec.CHUNK_SIZE + 1))
    chunks = list(p.blob_chunks("1" * 32, "r", blob))
    for chunk in [chunks[2], chunks[0], chunks[2], chunks[1], chunks[0]]:
        assert meter.admit(chunk)
    assert meter.settle("1" * 32) == sum(max(len(c.piece().payload), RECORD_CHARGE) for c in chunks)
    assert meter.settle("1" * 32) == 0  # settled: forgotten


def test_empty_chunks_count_against_the_push_limit_as_records() -> None:
    from minigit_server.service import RECORD_CHARGE

    u = limited(max_push_bytes=10 * RECORD_CHARGE)
    service = u.service
    request_id, partition = rid(), service.wire.log_partition("r")
    for index in range(50):  # 50 records of nothing: a flood of the log, not a push
        u.send_chunk(
            p.Chunk(request_id=request_id, repo="r", sha="a" * 64, index=index, count=50, encoding="raw", payload=b"")
        )
    assert len(service.wire.log.get(partition, [])) == 10
    u.send(u.request(p.PushRequest, "r", request_id, base=1, tree="b" * 64))
    assert u.answer(request_id).message.startswith("push too large")


def test_chunks_that_say_where_to_reply_get_upload_notices_at_most_every_half_second() -> None:
    """While it takes in an upload, a replica says so on the request's reply
    partition: the first chunk, then at most one notice per UPLOAD_NOTICE_S; an
    answer's chunks (no reply partition) or one naming a partition that does not
    exist get none. Each notice is signed, in clear, and says the bytes taken in."""
    now = [NOW_MS]
    service = make_service(clock_ms=lambda: now[0])
    request_id = rid()
    blob = codec.BlobSource.from_bytes(os.urandom(3 * codec.CHUNK_SIZE))
    chunks = list(p.blob_chunks(request_id, "r", blob, reply_partition=5))
    for chunk, at in zip(chunks, (0, 100, 600), strict=True):
        now[0] = NOW_MS + at
        assert service.handle(now[0], chunk.to_bytes()) is None
    notices = [(partition, message) for partition, message in service.wire.replies]
    assert [partition for partition, _ in notices] == [5, 5]  # at 0 ms and 600 ms, not at 100 ms
    first, second = (message for _, message in notices)
    assert (first.status, first.action, first.request_id) == (p.Status.WORKING, p.UPLOAD_NOTICE, request_id)
    assert first.message == f"taking in the upload: {codec.CHUNK_SIZE} bytes so far"
    assert second.message == f"taking in the upload: {3 * codec.CHUNK_SIZE} bytes so far"
    assert sealing.reply_signed_by(service.server.public_key, first, service.server.namespace)
    assert len(service.wire.log[service.wire.log_partition("r")]) == 3  # and each went to the log

    service.wire.replies.clear()
    quiet = [
        dataclasses.replace(chunks[0], request_id=rid(), reply_partition=None),
        dataclasses.replace(chunks[0], request_id=rid(), reply_partition=service.wire.reply_partitions()),
    ]
    for chunk in quiet:
        assert service.handle(now[0], chunk.to_bytes()) is None
    assert service.wire.replies == []


def test_a_write_says_working_only_once_its_proposal_and_so_its_upload_is_in_the_log() -> None:
    """After "working" the client hedges with the request alone (the upload is in the
    log): said before the owner's chunks were in the log, another replica's proposal
    could land first and fail as missing objects (seen under load: a 200 MiB push)."""
    events: list[str] = []

    class Recording(MemoryWire):
        def append_log(self, partition: int, key: bytes, value: bytes, wait: bool) -> int:
            events.append("proposal" if b'"type":"propose"' in value else "chunk")
            return super().append_log(partition, key, value, wait)

        def send_reply(self, partition: int, message: p.Message) -> None:
            events.append(str(getattr(message, "status", "sealed")))
            super().send_reply(partition, message)

    service = make_service(wire_class=Recording)
    reply = Client(service, "u").commit(p.InitRequest, "r", {"a.txt": b"a"}, visibility=p.Visibility.PUBLIC)
    assert reply.status == p.Status.ACCEPTED
    assert events[events.index("proposal") :] == ["proposal", "working", "accepted"]


def test_an_answer_and_an_upload_wait_for_the_broker_every_few_mib_not_at_the_end() -> None:
    """kafka-python's producer holds whatever it is given: a replica streaming a
    clone, or copying an upload into the log, waits for the broker's
    acknowledgements (``flush``) every ANSWER_WINDOW_BYTES / INTAKE_WINDOW_BYTES, so
    it never holds more than that of it in memory."""
    from minigit_server import service as serving

    flushed: list[int] = []

    class Counting(MemoryWire):
        held = 0

        def append_log(self, partition: int, key: bytes, value: bytes, wait: bool) -> int:
            self.held += len(value)
            return super().append_log(partition, key, value, wait)

        def send_reply(self, partition: int, message: p.Message) -> None:
            self.held += len(message.to_bytes())
            super().send_reply(partition, message)

        def flush(self) -> None:
            flushed.append(self.held)
            self.held = 0

    service = make_service(wire_class=Counting)
    data = os.urandom(3 * serving.INTAKE_WINDOW_BYTES)
    u = Client(service, "u")
    assert u.commit(p.InitRequest, "r", {"big.bin": data}).status == p.Status.ACCEPTED
    intake = flushed[:]
    assert len(intake) >= 2 and max(intake) <= serving.INTAKE_WINDOW_BYTES + 2 * codec.CHUNK_SIZE
    flushed.clear()
    reader = Client(service, "u", reply_partition=3)
    assert reader.send(reader.request(p.PullRequest, "r")).status == p.Status.OK
    assert len(flushed) >= len(data) // serving.ANSWER_WINDOW_BYTES
    assert max(flushed) <= serving.ANSWER_WINDOW_BYTES + 2 * codec.CHUNK_SIZE


def test_a_pull_that_checks_its_objects_for_long_says_it_is_working(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checking a big answer's objects before a byte is sent takes seconds: the
    replica says "working" every half second meanwhile, so the client does not ask
    another replica to check and send it all again (a 1 GiB clone was sent three times)."""
    from minigit_server import service as serving

    service = make_service()
    files = {f"f{n}.bin": os.urandom(1000 + n) for n in range(4)}
    assert Client(service, "u").commit(p.InitRequest, "r", files).status == p.Status.ACCEPTED
    ticks = iter(range(0, 10**6))
    monkeypatch.setattr(serving.time, "monotonic", lambda: next(ticks) * 0.3)  # 0.3 s a look at the clock
    reader = Client(service, "u", reply_partition=3)
    request = reader.request(p.PullRequest, "r")
    assert reader.send(request).status == p.Status.OK
    statuses = [m.status for m in reader.records(request.request_id) if isinstance(m, p.Reply)]
    assert statuses[:-1] and set(statuses[:-1]) == {p.Status.WORKING} and statuses[-1] == p.Status.OK


# ---------------------------------------------------------------- who asks


def test_an_unsigned_request_is_refused_and_nothing_is_proposed(u: Client) -> None:
    request_id = rid()
    tree = u.upload(request_id, "r", p.encode_tree({}))
    handled = u.send(u.request(p.InitRequest, "r", request_id, tree=tree, signed_ms=NOW_MS), sign=False)
    reply = u.answer(request_id)
    assert (handled.status, reply.status) == (p.Status.UNAUTHENTICATED, p.Status.UNAUTHENTICATED)
    assert reply.message.startswith("the request is not signed")
    assert proposals(u.service, "r") == [] and u.service.store.get_repo("r") is None
    for cls in (p.PullRequest, p.LogRequest):
        request = u.request(cls, "r", signed_ms=NOW_MS)
        u.send(request, sign=False)
        assert u.answer(request.request_id).status == p.Status.UNAUTHENTICATED


def test_a_ping_is_answered_whoever_asks_and_tells_only_who_serves(u: Client) -> None:
    """minigit-server ping is the operator's probe: it holds no user key."""
    request = u.request(p.PingRequest, "r")  # unsigned, signed_ms 0
    handled = u.send(request, sign=False)
    reply = u.answer(request.request_id)
    assert handled.status == reply.status == p.Status.OK
    assert reply.message.startswith("replica 7 serves r (log partition")


def test_a_user_with_no_registered_key_is_unknown(service: Service) -> None:
    carol = Client(service, "carol")
    request_id = rid()
    reply = carol.commit(p.InitRequest, "r", {"a": b"a"}, request_id)
    assert reply.status == p.Status.UNKNOWN_USER
    assert "unknown user carol" in reply.message and "minigit auth register" in reply.message
    assert proposals(service, "r") == [] and service.store.get_repo("r") is None
    assert carol.call(p.LogRequest, "r").status == p.Status.UNKNOWN_USER


def test_a_request_signed_by_one_user_naming_another_is_refused(service: Service) -> None:
    alice = Client(service, "alice")
    create(alice, "r", {"a": b"a"})
    impostor = Client(service, "alice", key=user_key("bob"))  # bob's key, alice's name
    reply = push(impostor, "r", 1, {"a": b"forged"})
    assert reply.status == p.Status.UNAUTHENTICATED
    assert "does not match alice's registered key" in reply.message
    assert [type(m) for m in proposals(service, "r")] == [p.CreateProposal]
    assert service.store.get_repo("r").head == 1
    pull = impostor.request(p.PullRequest, "r")
    impostor.send(pull)
    assert [m.status for m in impostor.answers(pull.request_id)] == [p.Status.UNAUTHENTICATED]


def test_a_signature_covers_the_namespace_and_the_chunks(u: Client) -> None:
    service = u.service
    elsewhere = u.request(p.LogRequest, "r")
    u.send(elsewhere, namespace="other-ns")  # signed for another service
    assert u.answer(elsewhere.request_id).status == p.Status.UNAUTHENTICATED

    # a chunk altered on the way: the request still verifies (its tree's hash binds
    # the content), the altered chunk is not stored and the write is decided
    # "missing objects" by every replica; nothing is created
    request_id = rid()
    [chunk] = p.blob_chunks(request_id, "r", codec.BlobSource.from_bytes(p.encode_tree({})))
    init = signed(u.request(p.InitRequest, "r", request_id, tree=chunk.sha), u.key, [chunk])
    altered = dataclasses.replace(chunk, payload=b"something else")
    assert service.handle(NOW_MS, altered.to_bytes()) is None
    service.handle(NOW_MS, init.to_bytes())
    reply = u.answer(request_id)
    assert reply.status == p.Status.MISSING_OBJECTS and "the tree was not uploaded completely" in reply.message
    assert [type(m) for m in proposals(service, "r")] == [p.CreateProposal]
    assert service.store.get_repo("r") is None

    # the digest of its chunks is a signed field like any other: changed on the way, refused
    request_id = rid()
    [chunk] = p.blob_chunks(request_id, "r", codec.BlobSource.from_bytes(p.encode_tree({})))
    init = signed(u.request(p.InitRequest, "r", request_id, tree=chunk.sha), u.key, [chunk])
    assert init.chunks == digest_of([chunk])
    assert service.handle(NOW_MS, chunk.to_bytes()) is None
    service.handle(NOW_MS, dataclasses.replace(init, chunks=identity.NO_CHUNKS).to_bytes())
    [reply] = u.answers(request_id)
    assert reply.status == p.Status.UNAUTHENTICATED and "does not match u's registered key" in reply.message
    assert len(proposals(service, "r")) == 1 and service.store.get_repo("r") is None
    service.handle(NOW_MS, init.to_bytes())  # as it was signed
    assert u.answer(request_id).status == p.Status.ACCEPTED and service.store.get_repo("r").head == 1


@pytest.mark.parametrize("skew_ms", [-WINDOW - 1, WINDOW + 1, -10 * WINDOW, 10 * WINDOW])
def test_a_request_signed_outside_the_replay_window_is_refused(u: Client, skew_ms: int) -> None:
    request_id = rid()
    tree = u.upload(request_id, "r", p.encode_tree({}))
    handled = u.send(u.request(p.InitRequest, "r", request_id, tree=tree), signed_ms=NOW_MS + skew_ms)
    reply = u.answer(request_id)
    assert handled.status == reply.status == p.Status.UNAUTHENTICATED
    assert "the server's time" in reply.message and "check this machine's clock" in reply.message
    assert proposals(u.service, "r") == [] and u.service.store.get_repo("r") is None


@pytest.mark.parametrize("skew_ms", [-WINDOW, WINDOW, 0])
def test_a_request_signed_within_the_replay_window_is_served(u: Client, skew_ms: int) -> None:
    request_id = rid()
    tree = u.upload(request_id, "r", p.encode_tree({}))
    u.send(u.request(p.InitRequest, "r", request_id, tree=tree), signed_ms=NOW_MS + skew_ms)
    assert u.answer(request_id).status == p.Status.ACCEPTED


def test_a_replayed_write_gets_its_original_outcome_and_changes_nothing(u: Client) -> None:
    """Whoever reads repo-requests can send a signed request again: within the
    window it is a retry (its original outcome); after a newer push it undoes nothing."""
    service = u.service
    create(u, "r", {"a.txt": b"a"})
    first = rid()
    assert push(u, "r", 1, {"a.txt": b"b"}, first).version == 2
    assert push(u, "r", 2, {"a.txt": b"a"}).version == 3  # back to version 1's tree
    proposed, versions = len(proposals(service, "r")), service.store.list_versions("r")
    digest = service.store.repo_digest("r")

    handled = u.replay(first)
    replayed = u.answer(first)
    assert "retry: original outcome" in handled.detail
    assert (replayed.status, replayed.version, replayed.head) == (p.Status.ACCEPTED, 2, 2)
    assert len(proposals(service, "r")) == proposed
    assert service.store.list_versions("r") == versions and service.store.repo_digest("r") == digest

    # without its chunks it still verifies (it names them, it does not carry them):
    # its original outcome again, and nothing changes either
    handled = u.replay(first, chunks=False)
    assert handled.status == p.Status.ACCEPTED and "retry: original outcome" in handled.detail
    assert u.answer(first).version == 2
    assert service.store.list_versions("r") == versions and service.store.repo_digest("r") == digest
    assert len(proposals(service, "r")) == proposed


def test_a_write_replayed_after_the_window_is_refused() -> None:
    now = [NOW_MS]
    u = Client(make_service(clock_ms=lambda: now[0]), "u")
    create(u, "r", {"a.txt": b"a"})
    first = rid()
    assert push(u, "r", 1, {"a.txt": b"b"}, first).status == p.Status.ACCEPTED
    digest = u.service.store.repo_digest("r")
    proposed = len(proposals(u.service, "r"))
    now[0] += WINDOW + 1
    handled = u.replay(first, received_ms=now[0])
    assert handled.status == p.Status.UNAUTHENTICATED
    assert u.service.store.repo_digest("r") == digest
    # the client's own retry as late is signed at its sending: inside the window, its original outcome
    handled = u.resend(first, received_ms=now[0])
    assert handled.status == p.Status.ACCEPTED and "retry: original outcome" in handled.detail
    assert u.answer(first).version == 2
    assert u.service.store.repo_digest("r") == digest and len(proposals(u.service, "r")) == proposed


# ---------------------------------------------------------------- permissions


def test_a_private_repository_is_read_by_its_members_only(service: Service) -> None:
    alice, bob = Client(service, "alice"), Client(service, "bob")
    create(alice, "r", {"secret.txt": b"secret"})
    for cls in (p.PullRequest, p.LogRequest):
        reply = bob.call(cls, "r")
        assert reply.status == p.Status.DENIED
        assert "bob may not read r (private)" in reply.message
        assert [type(m) for m in bob.answers(reply.request_id)] == [p.Reply]  # nothing follows
    assert alice.call(p.ShareRequest, "r", member="bob", level=p.Access.READ).status == p.Status.ACCEPTED
    reply = bob.call(p.PullRequest, "r")
    assert (reply.status, reply.head) == (p.Status.OK, 1)
    assert bob.call(p.ShareRequest, "r", member="u", level=p.Access.READ).status == p.Status.DENIED
    # who may not share learns nothing of which names are registered
    nobody = bob.call(p.ShareRequest, "r", member="nobody-yet", level=p.Access.READ)
    assert nobody.status == p.Status.DENIED and "no such user" not in nobody.message
    unknown = alice.call(p.ShareRequest, "r", member="nobody-yet", level=p.Access.READ)
    assert unknown.status == p.Status.INVALID and unknown.message.startswith("no such user: nobody-yet")
    assert alice.call(p.ShareRequest, "r", member="bob", level=p.Access.NONE).status == p.Status.ACCEPTED
    assert bob.call(p.PullRequest, "r").status == p.Status.DENIED


def test_a_push_without_write_access_is_denied_and_changes_nothing(service: Service) -> None:
    alice, bob = Client(service, "alice"), Client(service, "bob")
    create(alice, "r", {"a.txt": b"a"}, visibility=p.Visibility.PUBLIC)
    assert bob.call(p.PullRequest, "r").status == p.Status.OK  # a public repository: anyone reads
    digest = service.store.repo_digest("r")
    reply = push(bob, "r", 1, {"a.txt": b"vandalized"})
    assert reply.status == p.Status.DENIED and "bob may not push to r (read only)" in reply.message
    assert service.store.repo_digest("r") == digest
    assert alice.call(p.ShareRequest, "r", member="bob", level=p.Access.WRITE).status == p.Status.ACCEPTED
    assert push(bob, "r", 1, {"a.txt": b"b"}).status == p.Status.ACCEPTED
    assert service.store.get_version("r", 2).author == "bob"
    assert bob.call(p.VisibilityRequest, "r", visibility=p.Visibility.PRIVATE).status == p.Status.DENIED
    reply = alice.call(p.VisibilityRequest, "r", visibility=p.Visibility.PRIVATE)
    assert reply.status == p.Status.ACCEPTED and service.store.get_repo("r").visibility == "private"


def test_replies_are_signed_and_about_a_private_repository_sealed_to_the_request(service: Service) -> None:
    alice = Client(service, "alice")
    create(alice, "r", {"secret.txt": b"the secret content " * 10})
    create(alice, "open", {"public.txt": b"public"}, visibility=p.Visibility.PUBLIC)

    request = alice.request(p.PullRequest, "r")
    alice.send(request)
    raw = [m for n, m in service.wire.replies if m.request_id == request.request_id]
    assert len(raw) == 3 and all(isinstance(m, p.Sealed) for m in raw)  # the reply, the tree, the file
    assert len({m.stream for m in raw}) == 1
    assert not any(b"secret" in m.to_bytes() or b"secret.txt" in m.to_bytes() for m in raw)
    stranger = sealing.StreamOpener(sealing.new_reply_key())
    for sealed in raw:
        with pytest.raises(SealBroken):
            stranger.open(sealed)
    reply, tree, content = alice.records(request.request_id)  # opened, reply signature checked
    assert reply.status == p.Status.OK and reply.server_key == service.server.public_key
    assert p.decode_tree(tree.raw()).keys() == {"secret.txt"} and content.raw() == b"the secret content " * 10

    request = alice.request(p.PullRequest, "open")
    alice.send(request)
    clear = [m for n, m in service.wire.replies if m.request_id == request.request_id]
    assert [type(m) for m in clear] == [p.Reply, p.Chunk, p.Chunk]
    assert sealing.reply_signed_by(service.server.public_key, clear[0], NAMESPACE)
    assert not sealing.reply_signed_by(service.server.public_key, clear[0], "other-ns")
    assert not sealing.reply_signed_by(key_text(user_key("mallory")), clear[0], NAMESPACE)


def test_a_private_repository_is_not_sent_to_a_request_without_a_reply_key(service: Service) -> None:
    alice = Client(service, "alice")
    create(alice, "r", {"a.txt": b"a"})
    for reply_key in ("", "x25519:nope"):
        request = alice.request(p.PullRequest, "r", reply_key=reply_key)
        alice.send(request)
        [reply] = alice.answers(request.request_id)  # in clear: nothing to seal it to
        assert reply.status == p.Status.INVALID and "no valid reply_key" in reply.message
        assert reply.tree is None and reply.blob_count == 0


# ---------------------------------------------------------------- accounts


def test_a_name_is_registered_by_the_first_key_that_claims_it() -> None:
    service = make_service(users=())
    carol = Client(service, "carol")
    reply = carol.call(p.RegisterRequest, "carol", public_key=key_text(carol.key))
    assert reply.status == p.Status.ACCEPTED
    assert service.store.get_account("carol").key == key_text(carol.key)
    [registration] = proposals(service, "carol")
    assert isinstance(registration, p.RegisterProposal) and registration.signed.attestation == ""
    assert carol.call(p.RegisterRequest, "carol", public_key=key_text(carol.key)).status == p.Status.UP_TO_DATE
    create(carol, "r", {"a": b"a"})  # now her requests check

    thief = Client(service, "carol", key=user_key("mallory"))
    reply = thief.call(p.RegisterRequest, "carol", public_key=key_text(thief.key))
    assert reply.status == p.Status.DENIED and "taken" in reply.message
    assert service.store.get_account("carol").key == key_text(carol.key)
    assert thief.call(p.PullRequest, "r").status == p.Status.UNAUTHENTICATED


def test_a_registration_must_be_signed_by_the_key_it_registers() -> None:
    service = make_service(users=())
    carol = Client(service, "carol")
    reply = carol.call(p.RegisterRequest, "carol", public_key=key_text(user_key("someone else")))
    assert reply.status == p.Status.UNAUTHENTICATED and "not signed by the key it registers" in reply.message
    assert service.store.get_account("carol") is None and proposals(service, "carol") == []


def test_a_user_registered_through_the_log_is_known_to_every_request() -> None:
    service = make_service(users=())
    key = register(service, "dave", user_key("dave's laptop"))
    dave = Client(service, "dave", key=key)
    create(dave, "r", {"a": b"a"})
    assert service.store.get_repo("r").owner == "dave"
    assert Client(service, "dave").call(p.LogRequest, "r").status == p.Status.UNAUTHENTICATED  # another key


def test_registration_closed_is_denied() -> None:
    service = make_service(users=(), registration_open=False)
    carol = Client(service, "carol")
    reply = carol.call(p.RegisterRequest, "carol", public_key=key_text(carol.key))
    assert reply.status == p.Status.DENIED and "registration is closed" in reply.message
    assert "minigit-server users add" in reply.message
    assert service.store.get_account("carol") is None and service.wire.log == {}


def test_a_rotated_key_replaces_the_old_one(service: Service) -> None:
    alice = Client(service, "alice")
    new_key = user_key("alice, new")
    reply = alice.call(p.RotateRequest, "alice", new_key=key_text(new_key))
    assert reply.status == p.Status.ACCEPTED
    assert service.store.get_account("alice").key == key_text(new_key)
    assert alice.call(p.LogRequest, "r").status == p.Status.UNAUTHENTICATED  # the old key
    renewed = Client(service, "alice", key=new_key)
    create(renewed, "r", {"a": b"a"})
    # another user cannot rotate alice's key
    bob_as_alice = Client(service, "alice", key=user_key("bob"))
    reply = bob_as_alice.call(p.RotateRequest, "alice", new_key=key_text(user_key("bob")))
    assert reply.status == p.Status.UNAUTHENTICATED
    assert service.store.get_account("alice").key == key_text(new_key)


def test_a_user_removed_by_an_operator_is_refused_and_the_name_stays_taken(service: Service) -> None:
    alice = Client(service, "alice")
    create(alice, "r", {"a": b"a"})
    removal = admin_proposal("alice", p.AdminOp.REMOVE)
    service.wire.append_log(service.wire.log_partition("alice"), b"alice", removal.to_bytes(), wait=True)
    assert service.store.get_account("alice").removed
    reply = alice.call(p.PullRequest, "r")
    assert reply.status == p.Status.UNAUTHENTICATED and "alice was removed by an operator" in reply.message
    claim = Client(service, "alice", key=user_key("mallory"))
    reply = claim.call(p.RegisterRequest, "alice", public_key=key_text(claim.key))
    assert reply.status == p.Status.DENIED and "removed by an operator" in reply.message
    assert service.store.get_repo("r").owner == "alice"


def test_a_request_changed_after_it_was_signed_is_refused(service: Service) -> None:
    """Signatures are checked over the request's fields as they arrived."""
    request = signed(Client(service, "u").request(p.LogRequest, "r"))
    doc = json.loads(request.to_bytes())
    doc["timeout_ms"] += 1  # any change after signing
    service.handle(NOW_MS, json.dumps(doc).encode())
    [(_, reply)] = service.wire.replies
    assert reply.status == p.Status.UNAUTHENTICATED


def test_a_chunk_of_another_repository_under_the_same_request_id_does_not_break_the_signature(u: Client) -> None:
    request_id = rid()
    tree = u.upload(request_id, "r", p.encode_tree({}))
    stray = Client(u.service, "bob")
    stray.upload(request_id, "elsewhere", b"not part of u's request")
    u.send(u.request(p.InitRequest, "r", request_id, tree=tree))
    assert u.answer(request_id).status == p.Status.ACCEPTED


def long_history(visibility: p.Visibility, message: str, versions: int) -> tuple[Client, p.LogRequest]:
    """A repository with ``versions`` versions whose messages are all ``message``; a log request of it all."""
    u = Client(make_service(), "u")
    create(u, "r", {"a": b"0"}, visibility=visibility)
    for n in range(1, versions):
        assert u.commit(p.PushRequest, "r", {"a": str(n).encode()}, base=n, message=message).status == p.Status.ACCEPTED
    return u, u.request(p.LogRequest, "r", limit=1000)


def test_a_long_log_of_a_private_repository_is_answered_in_one_sealed_record() -> None:
    u, request = long_history(p.Visibility.PRIVATE, "m" * p.MAX_MESSAGE_LENGTH, 40)
    u.send(request)
    reply = u.answer(request.request_id)
    assert reply.status == p.Status.OK and reply.entries and reply.entries[0].version == 40
    sent = [m for _, m in u.service.wire.replies if m.request_id == request.request_id]
    assert all(len(m.to_bytes()) < codec.MAX_RECORD_BYTES for m in sent)


def test_a_log_reply_stays_under_the_record_limit_whatever_its_messages_hold() -> None:
    u, request = long_history(p.Visibility.PUBLIC, "\x01" * p.MAX_MESSAGE_LENGTH, 12)
    u.send(request)
    reply = u.answer(request.request_id)
    assert reply.status == p.Status.OK and reply.entries
    assert len(reply.to_bytes()) < codec.MAX_RECORD_BYTES


def test_a_handler_waiting_for_the_log_gives_up_when_the_replica_stops() -> None:
    """A read barrier or a write waiting for its apply held SIGTERM for up to two
    minutes (the apply loop had stopped: nothing would come)."""
    stopping = threading.Event()
    applied = AppliedOffsets({0: 3}, stopping)
    assert applied.wait_for(0, 3, timeout=60)  # there already
    threading.Timer(0.2, stopping.set).start()
    started = time.monotonic()
    assert applied.wait_for(0, 4, timeout=60) is False
    assert time.monotonic() - started < 2 * AppliedOffsets.STOP_CHECK_S + 0.5
    assert AppliedOffsets({}).wait_for(1, 5, timeout=0.3) is False  # a timeout is still a timeout
    later = AppliedOffsets({})
    threading.Timer(0.1, lambda: later.advance({1: 5})).start()
    assert later.wait_for(1, 5, timeout=30)  # woken by the apply, not by the check


def test_an_unsigned_request_is_told_so_not_that_its_clock_is_off(u: Client) -> None:
    request = u.request(p.LogRequest, "r")  # no signature, no signing time
    u.send(request, sign=False)
    assert u.answer(request.request_id).message.startswith("the request is not signed")


# ---------------------------------------------------------------- history: versions, changes, listings, outcomes


def commit_modes(
    client: Client, cls: type[p.Request], repo: str, files: dict[str, tuple[bytes, p.FileMode]], **fields
) -> p.Reply:
    """Like Client.commit, with each file's mode."""
    request_id = rid()
    manifest = {
        path: p.FileEntry(client.upload(request_id, repo, data), len(data), mode)
        for path, (data, mode) in files.items()
    }
    tree = client.upload(request_id, repo, p.encode_tree(manifest))
    client.send(client.request(cls, repo, request_id, tree=tree, **fields))
    return client.answer(request_id)


def pull(client: Client, repo: str, **fields) -> tuple[p.Reply, list[p.Chunk]]:
    request = client.request(p.PullRequest, repo, **fields)
    client.send(request)
    reply, *chunks = client.answers(request.request_id)
    return reply, chunks


def tree_of(service: Service, repo: str, version: int) -> str:
    return service.store.get_version(repo, version).tree


@pytest.fixture
def history(u: Client) -> Client:
    """r: v1 {a: 1, b: b}; v2 {a: 2, b: b, c: c}; v3 {a: 3, c: c}."""
    create(u, "r", {"a": b"1", "b": b"b"})
    push(u, "r", 1, {"a": b"2", "b": b"b", "c": b"c"})
    push(u, "r", 2, {"a": b"3", "c": b"c"})
    return u


def test_a_pull_to_an_older_version_sends_its_tree_and_the_blobs_the_client_lacks(history: Client) -> None:
    reply, chunks = pull(history, "r", version=3, target=1)
    assert (reply.status, reply.version, reply.head, reply.tree) == (
        p.Status.OK,
        1,
        3,
        tree_of(history.service, "r", 1),
    )
    assert reply.message == "version 1 (head is version 3)"
    assert [c.sha for c in chunks] == [reply.tree, *sorted([p.hash_bytes(b"1"), p.hash_bytes(b"b")])]
    assert reply.blob_count == 3 and reply.blob_bytes == sum(len(c.raw()) for c in chunks)


def test_a_pull_to_a_newer_version_than_the_client_s_but_not_the_head(history: Client) -> None:
    reply, chunks = pull(history, "r", version=1, target=2)
    assert (reply.status, reply.version, reply.head) == (p.Status.OK, 2, 3)
    assert [c.sha for c in chunks] == [reply.tree, *sorted([p.hash_bytes(b"2"), p.hash_bytes(b"c")])]


def test_a_pull_to_the_client_s_own_version_sends_the_tree_alone_or_what_it_lost(history: Client) -> None:
    reply, chunks = pull(history, "r", version=2, target=2)
    assert (reply.status, reply.version, reply.blob_count) == (p.Status.OK, 2, 1)
    assert [c.sha for c in chunks] == [tree_of(history.service, "r", 2)]
    reply, chunks = pull(history, "r", version=2, target=2, lost=[p.hash_bytes(b"c"), p.hash_bytes(b"nope")])
    assert [c.sha for c in chunks] == [reply.tree, p.hash_bytes(b"c")]  # only what the version holds


def test_a_pull_to_the_head_as_a_target_is_ok_where_a_plain_pull_is_up_to_date(history: Client) -> None:
    assert pull(history, "r", version=3)[0].status == p.Status.UP_TO_DATE
    reply, chunks = pull(history, "r", version=3, target=3)
    assert (reply.status, reply.version, len(chunks)) == (p.Status.OK, 3, 1)


def test_a_pull_to_a_version_beyond_the_head_is_invalid(history: Client) -> None:
    reply, chunks = pull(history, "r", version=1, target=4)
    assert (reply.status, reply.head, reply.message, chunks) == (
        p.Status.INVALID,
        3,
        "version 4 does not exist: the head is 3",
        [],
    )


def test_a_pull_whose_base_tree_is_not_the_server_s_is_told_to_clone_again(history: Client) -> None:
    service = history.service
    assert pull(history, "r", version=2, base_tree=tree_of(service, "r", 2))[0].version == 3
    for target in (0, 1):
        reply, chunks = pull(history, "r", version=2, target=target, base_tree=tree_of(service, "r", 1))
        assert (reply.status, chunks) == (p.Status.INVALID, [])
        assert reply.message == (
            "your version 2 is not the server's version 2 (the repository was deleted and created again?): "
            "clone it again"
        )


def test_a_log_entry_names_its_tree(history: Client) -> None:
    reply = history.call(p.LogRequest, "r")
    assert [(e.version, e.tree) for e in reply.entries] == [(v, tree_of(history.service, "r", v)) for v in (3, 2, 1)]
    assert all(e.changes == [] and e.changes_more == 0 for e in reply.entries)  # not asked


def test_a_log_lists_each_version_s_changes(u: Client) -> None:
    x = p.FileMode.EXECUTABLE
    commit_modes(u, p.InitRequest, "r", {"run": (b"#!", p.FileMode.REGULAR), "doc/a": (b"a", p.FileMode.REGULAR)})
    commit_modes(u, p.PushRequest, "r", {"run": (b"#!", x), "doc/a": (b"a", p.FileMode.REGULAR)}, base=1)
    commit_modes(u, p.PushRequest, "r", {"run": (b"#!", x), "doc/b": (b"bb", p.FileMode.REGULAR)}, base=2)
    reply = u.call(p.LogRequest, "r", changes=True)
    change = p.FileChange
    assert [(e.version, e.changes, e.changes_more) for e in reply.entries] == [
        (3, [change(path="doc/a", kind="D", size=1), change(path="doc/b", kind="A", size=2)], 0),
        (2, [change(path="run", kind="M", size=2, mode=x)], 0),  # a mode change alone
        (1, [change(path="doc/a", kind="A", size=1), change(path="run", kind="A", size=2)], 0),
    ]


def test_a_log_by_paths_lists_only_the_versions_that_touched_them(u: Client) -> None:
    create(u, "r", {"src/a.py": b"1", "README": b"r"})
    push(u, "r", 1, {"src/a.py": b"1", "README": b"r2"})
    push(u, "r", 2, {"src/a.py": b"2", "README": b"r2"})
    push(u, "r", 3, {"README": b"r2"})
    versions = lambda **fields: [e.version for e in u.call(p.LogRequest, "r", **fields).entries]  # noqa: E731
    assert versions(paths=["src"]) == [4, 3, 1]
    assert versions(paths=["src/a.py"]) == [4, 3, 1]
    assert versions(paths=["README"]) == [2, 1]
    assert versions(paths=["src", "README"]) == [4, 3, 2, 1]
    assert versions(paths=["sr"]) == [] and versions(paths=["src/a.py/x"]) == []
    assert versions(paths=["src"], limit=2) == [4, 3]
    entries = u.call(p.LogRequest, "r", paths=["README"], changes=True).entries
    assert [c.path for c in entries[0].changes] == ["README"]


def test_a_log_from_a_start_version_lists_that_version_down(history: Client) -> None:
    versions = lambda **fields: [e.version for e in history.call(p.LogRequest, "r", **fields).entries]  # noqa: E731
    assert versions(start=2) == [2, 1]
    assert versions(start=2, limit=1) == [2]
    assert versions(start=0) == versions() == [3, 2, 1]
    assert versions(start=9) == [3, 2, 1]


def test_a_log_lists_at_most_a_thousand_changes_per_version_and_counts_the_rest(u: Client) -> None:
    files = {f"f/{n:04}": str(n).encode() for n in range(p.MAX_LOG_CHANGES + 3)}
    create(u, "r", files)
    [entry] = u.call(p.LogRequest, "r", changes=True).entries
    assert (len(entry.changes), entry.changes_more) == (p.MAX_LOG_CHANGES, 3)
    assert entry.changes[0].path == "f/0000" and entry.changes[-1].path == "f/0999"


def test_a_log_with_changes_stays_one_record(u: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from minigit_server import service as service_module

    monkeypatch.setattr(service_module, "MAX_LOG_REPLY_BYTES", 4000)
    files = {f"dir/file-{n:03}": b"x" for n in range(200)}
    create(u, "r", files)
    push(u, "r", 1, {**files, "a": b"1"})
    push(u, "r", 2, {**files, "a": b"2"})
    entries = u.call(p.LogRequest, "r", changes=True).entries
    assert [e.version for e in entries] == [3, 2]  # the oldest, too large, is dropped first
    [first] = u.call(p.LogRequest, "r", changes=True, paths=["dir"]).entries
    assert first.version == 1 and 0 < len(first.changes) < 200 and len(first.changes) + first.changes_more == 200


def test_a_log_reads_each_tree_it_needs_once_and_a_log_asked_again_none(
    u: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log of versions of 30,000 files read and decoded every tree in full (a third of a
    second each), and a client that heard nothing for a second sent it again, served
    again: it timed out. Trees are compared by their bytes now, each read once, and
    what a pair of trees changed is kept for the next log."""
    create(u, "r", {f"f/{n:03}": b"x" for n in range(300)})
    for version in range(1, 5):
        push(u, "r", version, {**{f"f/{n:03}": b"x" for n in range(300)}, "v": str(version).encode()})
    store = u.service.store
    reads: list[str] = []
    original = store.read_blob
    monkeypatch.setattr(store, "read_blob", lambda partition, sha: reads.append(sha) or original(partition, sha))
    monkeypatch.setattr(p, "decode_tree", lambda data: pytest.fail("a log decodes no tree"))
    entries = u.call(p.LogRequest, "r", changes=True, limit=2).entries
    assert [(e.version, [(c.path, c.kind) for c in e.changes]) for e in entries] == [
        (5, [("v", "M")]),
        (4, [("v", "M")]),
    ]
    assert sorted(reads) == sorted(tree_of(u.service, "r", v) for v in (5, 4, 3))  # limit + 1 trees, once each
    reads.clear()
    again = u.call(p.LogRequest, "r", changes=True, limit=2).entries
    assert again == entries and reads == []
    by_path = u.call(p.LogRequest, "r", paths=["v"]).entries
    assert [e.version for e in by_path] == [5, 4, 3, 2]  # version 1 did not touch v
    assert sorted(reads) == sorted(tree_of(u.service, "r", v) for v in (3, 2, 1))  # 5 and 4: known
    assert u.call(p.LogRequest, "r", changes=True, start=1).entries[0].changes_more == 0  # version 1: from the cache


def test_the_changes_cache_keeps_the_most_recently_used_within_its_bound() -> None:
    from minigit_server.service import ChangesCache

    cache = ChangesCache(max_changes=4)
    one = [p.FileChange(path="a", kind=p.ChangeKind.ADDED, size=1)]
    cache.put("t0", "t1", one)
    cache.put("t1", "t2", one * 2)
    cache.put("t2", "t3", [])  # nothing changed: held as one
    assert cache.get("t0", "t1") == one  # used: kept
    cache.put("t3", "t4", one)  # over the bound: the least recently used goes
    assert cache.get("t1", "t2") is None and cache.get("t0", "t1") == one and cache.get("t3", "t4") == one
    cache.put("t4", "t5", one * 5)  # larger than the whole cache: not kept
    assert cache.get("t4", "t5") is None and cache.get("t2", "t3") == []


def test_a_log_does_not_serve_a_damaged_tree(history: Client) -> None:
    service = history.service
    partition = service.wire.log_partition("r")
    tree = tree_of(service, "r", 2)
    service.store.chunks[(partition, tree)][0] = codec.Piece(0, "raw", b"not the tree")
    service.integrity.repair = lambda partition, sha: False  # type: ignore[method-assign]
    request = history.request(p.LogRequest, "r", changes=True)
    handled = history.send(request)
    assert handled.status == "damaged" and history.answers(request.request_id) == []
    assert history.call(p.LogRequest, "r").entries[0].version == 3  # without changes: no tree is read


def repos(client: Client, **fields) -> p.Reply:
    return client.call(p.ReposRequest, client.user, **fields)


@pytest.fixture
def listing(service: Service) -> Service:
    """alice: a-lab (private), b-pub (public); bob: c-bob (private, alice reads),
    d-bob (private), e-pub (public, alice writes); u: f-u (private)."""
    alice, bob, u = Client(service, "alice"), Client(service, "bob"), Client(service, "u")
    create(alice, "a-lab", {"a": b"a"})
    create(alice, "b-pub", {"a": b"a"}, visibility=p.Visibility.PUBLIC)
    create(bob, "c-bob", {"a": b"a"})
    assert bob.call(p.ShareRequest, "c-bob", member="alice", level=p.Access.READ).status == p.Status.ACCEPTED
    create(bob, "d-bob", {"a": b"a"})
    create(bob, "e-pub", {"a": b"a"}, visibility=p.Visibility.PUBLIC)
    assert bob.call(p.ShareRequest, "e-pub", member="alice", level=p.Access.WRITE).status == p.Status.ACCEPTED
    push(bob, "e-pub", 1, {"a": b"b"})
    create(u, "f-u", {"a": b"a"})
    return service


def test_a_listing_names_the_repositories_the_user_may_read_and_how(listing: Service) -> None:
    reply = repos(Client(listing, "alice"))
    assert (reply.status, reply.more) == (p.Status.OK, False)
    assert [(r.name, r.access, r.visibility, r.head, r.author) for r in reply.repos] == [
        ("a-lab", "owner", "private", 1, "alice"),
        ("b-pub", "owner", "public", 1, "alice"),
        ("c-bob", "read", "private", 1, "bob"),
        ("e-pub", "write", "public", 2, "bob"),
    ]
    assert all(r.time_ms == NOW_MS for r in reply.repos)


def test_a_listing_never_mentions_others_private_repositories(listing: Service) -> None:
    reply = repos(Client(listing, "u"))
    assert [(r.name, r.access) for r in reply.repos] == [("b-pub", "public"), ("e-pub", "public"), ("f-u", "owner")]
    assert not any("bob" in r.name or "lab" in r.name for r in reply.repos)


def test_a_listing_pages_with_after_and_limit(listing: Service) -> None:
    alice = Client(listing, "alice")
    first = repos(alice, limit=2)
    assert ([r.name for r in first.repos], first.more) == (["a-lab", "b-pub"], True)
    second = repos(alice, limit=2, after=first.repos[-1].name)
    assert ([r.name for r in second.repos], second.more) == (["c-bob", "e-pub"], False)
    assert (repos(alice, after="e-pub").repos, repos(alice, after="zzz").more) == ([], False)
    assert [r.name for r in repos(alice, after="b").repos] == ["b-pub", "c-bob", "e-pub"]  # any name, taken or not


def test_a_listing_is_sealed_to_the_asker(listing: Service) -> None:
    alice = Client(listing, "alice")
    request = alice.request(p.ReposRequest, "alice")
    alice.send(request)
    [(_, record)] = [(n, m) for n, m in listing.wire.replies if m.request_id == request.request_id]
    assert isinstance(record, p.Sealed)
    without = alice.request(p.ReposRequest, "alice", reply_key="")
    alice.send(without)
    reply = alice.answer(without.request_id)
    assert (reply.status, reply.repos) == (p.Status.INVALID, [])
    assert reply.message == "a repository listing is sent sealed, and this request has no valid reply_key"


def test_a_listing_reads_every_log_partition_up_to_its_end(listing: Service) -> None:
    waited = []
    original = listing.applied.wait_for
    listing.applied.wait_for = lambda partition, offset, timeout: (
        waited.append(partition)
        or original(  # type: ignore[method-assign]
            partition, offset, timeout
        )
    )
    repos(Client(listing, "alice"))
    assert set(range(listing.wire.log_partition_count())) <= set(waited)


def test_a_listing_is_not_answered_while_a_partition_lags(listing: Service) -> None:
    listing.applied.wait_for = lambda partition, offset, timeout: partition != 2  # type: ignore[method-assign]
    alice = Client(listing, "alice")
    if listing.wire.log_partition("alice") == 2:
        pytest.skip("alice's own partition")
    request = alice.request(p.ReposRequest, "alice")
    assert alice.send(request).status == "stalled" and alice.answers(request.request_id) == []


def settle(client: Client, repo: str, of_request: str, tree: str, request_id: str | None = None) -> p.Reply:
    request = client.request(p.OutcomeRequest, repo, request_id, of_request=of_request, tree=tree)
    client.send(request)
    return client.answer(request.request_id)


def test_the_outcome_of_an_accepted_push_is_its_version(u: Client) -> None:
    create(u, "r", {"a": b"1"})
    pushed = rid()
    push(u, "r", 1, {"a": b"2"}, pushed)
    reply = settle(u, "r", pushed, tree_of(u.service, "r", 2))
    assert (reply.status, reply.version, reply.head, reply.message) == (
        p.Status.ACCEPTED,
        2,
        2,
        "accepted as version 2",
    )
    other = settle(u, "r", pushed, tree_of(u.service, "r", 1))
    assert (other.status, other.message) == (p.Status.INVALID, "request id already used by another request")


def test_the_outcome_of_a_rejected_push_is_its_refusal(u: Client) -> None:
    create(u, "r", {"a": b"1"})
    push(u, "r", 1, {"a": b"2"})
    stale = rid()
    assert push(u, "r", 1, {"a": b"3"}, stale).status == p.Status.REJECTED
    reply = settle(u, "r", stale, "e" * 64)
    assert (reply.status, reply.head, reply.message) == (
        p.Status.REJECTED,
        2,
        "version mismatch: head is 2, push based on 1",
    )


def test_the_outcome_of_an_unknown_push_cancels_it_and_the_late_push_changes_nothing(u: Client) -> None:
    create(u, "r", {"a": b"1"})
    late = rid()
    reply = settle(u, "r", late, "e" * 64)
    assert (reply.status, reply.head, reply.message) == (p.Status.CANCELLED, 1, "never applied: it never will be now")
    arrived = push(u, "r", 1, {"a": b"2"}, late)
    assert (arrived.status, arrived.message) == (p.Status.INVALID, "request id already used by another request")
    assert u.service.store.get_repo("r").head == 1


def test_an_outcome_asked_again_gets_the_same_answer(u: Client) -> None:
    create(u, "r", {"a": b"1"})
    late, settle_id = rid(), rid()
    first = settle(u, "r", late, "e" * 64, settle_id)
    proposed = len(proposals(u.service, "r"))
    handled = u.resend(settle_id, received_ms=NOW_MS + 1000)
    again = u.answer(settle_id)
    assert "retry: original outcome" in handled.detail and len(proposals(u.service, "r")) == proposed
    assert (again.status, again.message) == (first.status, first.message)
    other = Client(make_service(u.service.store, users=()), "u")  # another replica of the same state
    other.sent, other.reply_key, other.opener = u.sent, u.reply_key, u.opener
    other.resend(settle_id)
    assert other.answer(settle_id).status == p.Status.CANCELLED


def test_the_outcome_of_a_push_needs_write_access(service: Service) -> None:
    alice, bob = Client(service, "alice"), Client(service, "bob")
    create(alice, "r", {"a": b"1"})
    assert alice.call(p.ShareRequest, "r", member="bob", level=p.Access.READ).status == p.Status.ACCEPTED
    late = rid()
    reply = settle(bob, "r", late, "e" * 64)
    assert reply.status == p.Status.DENIED and "bob may not settle a push to r (read only)" in reply.message
    assert push(alice, "r", 1, {"a": b"2"}, late).status == p.Status.ACCEPTED  # nothing was cancelled


def test_the_outcome_of_a_private_repository_s_push_is_sealed(u: Client) -> None:
    create(u, "r", {"a": b"1"})
    request = u.request(p.OutcomeRequest, "r", of_request=rid(), tree="e" * 64)
    u.send(request)
    sent = [m for _, m in u.service.wire.replies if m.request_id == request.request_id]
    assert sent and all(isinstance(m, p.Sealed) for m in sent)


def same_partition(service: Service, repo: str, prefix: str) -> str:
    """A repository name in the log partition of ``repo``."""
    return next(
        name
        for name in (f"{prefix}{n}" for n in range(1000))
        if service.wire.log_partition(name) == service.wire.log_partition(repo)
    )


def test_another_user_s_outcome_request_does_not_cancel_a_push_in_flight() -> None:
    """mallory names alice's request id (seen on the topics) in an outcome request for
    her own repository of the same log partition: she is answered "cancelled", alice's
    push is not (nor is it refused when it arrives)."""
    service = make_service(users=("alice", "mallory"))
    alice, mallory = Client(service, "alice"), Client(service, "mallory")
    create(alice, "r", {"a": b"1"})
    mal3 = same_partition(service, "r", "mal")
    create(mallory, mal3, {"m": b"1"})
    in_flight, settle_id = rid(), rid()
    reply = settle(mallory, mal3, in_flight, "e" * 64, settle_id)
    assert (reply.status, reply.message) == (p.Status.CANCELLED, "never applied: it never will be now")
    pushed = push(alice, "r", 1, {"a": b"2"}, in_flight)
    assert (pushed.status, pushed.version) == (p.Status.ACCEPTED, 2)
    assert push(alice, "r", 1, {"a": b"2"}, in_flight).version == 2  # its retry: its own outcome
    mallory.resend(settle_id, received_ms=NOW_MS + 1000)
    assert mallory.answer(settle_id).status == p.Status.CANCELLED  # her settle's own answer stays
    assert service.store.get_repo("r").head == 2


def test_a_push_from_a_clone_of_a_deleted_repository_is_told_to_clone_again(history: Client) -> None:
    """A clone of r at v3; r deleted, created again and pushed to v3: a push from that
    clone, based on "v3", would replace the new r's files with the old r's."""
    service = history.service
    old_tree = tree_of(service, "r", 3)
    delete(service, "r")
    create(history, "r", {"a": b"new", "b": b"b"})
    push(history, "r", 1, {"a": b"new", "b": b"b2"})
    assert push(history, "r", 2, {"a": b"new", "b": b"b3"}).version == 3
    stale = history.commit(p.PushRequest, "r", {"a": b"edited", "c": b"c"}, base=3, base_tree=old_tree)
    assert (stale.status, stale.head, stale.message) == (
        p.Status.INVALID,
        3,
        "your version 3 is not the server's version 3 (the repository was deleted and created again?): clone it again",
    )
    assert service.store.get_repo("r").head == 3
    fresh = history.commit(p.PushRequest, "r", {"a": b"edited"}, base=3, base_tree=tree_of(service, "r", 3))
    assert (fresh.status, fresh.version) == (p.Status.ACCEPTED, 4)


def delete(service: Service, repo: str, **options) -> None:
    proposal = delete_proposal(repo, **options)
    service.wire.append_log(service.wire.log_partition(repo), repo.encode(), proposal.to_bytes(), True)


def test_a_deleted_repository_is_created_again_at_version_1(history: Client) -> None:
    service = history.service
    old_tree = tree_of(service, "r", 2)
    delete(service, "r")
    for cls in (p.PullRequest, p.LogRequest):
        assert history.call(cls, "r").status == p.Status.NOT_FOUND
    reply = history.commit(p.InitRequest, "r", {"new": b"content"})
    assert (reply.status, reply.version) == (p.Status.ACCEPTED, 1)
    assert [e.version for e in history.call(p.LogRequest, "r").entries] == [1]
    stale = pull(history, "r", version=1, base_tree=old_tree)[0]
    assert stale.status == p.Status.INVALID and "clone it again" in stale.message


def test_a_deletion_not_signed_by_the_service_changes_nothing(history: Client) -> None:
    delete(history.service, "r", signer=user_key("u"))
    assert history.service.store.get_repo("r").head == 3


def test_a_deleted_repository_leaves_the_listing(listing: Service) -> None:
    delete(listing, "c-bob")
    assert [r.name for r in repos(Client(listing, "alice")).repos] == ["a-lab", "b-pub", "e-pub"]
