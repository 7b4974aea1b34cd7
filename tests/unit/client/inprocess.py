"""A minigit service in the test process, reached through the client's ``Link``.

``InProcessServer`` holds a real ``Service`` over a ``MemoryStore`` and the
service's ``MemoryWire`` (each appended log record applied at once, as by a
caught-up replica). An ``InProcessConnection`` does what ``transport.Connection`` does, minus Kafka:
it runs the same ``exchange.await_answer`` loop (sending again after each attempt
window, giving up after its timeout without news, with a real ``ReplyCollector``)
on a simulated clock (``server.clock``, in seconds: waiting for records that will
not come moves it on at once). Each sending encodes the uploads and the request
to their wire bytes and hands them to ``Service.handle``; the records that
landed on its reply partition are what the next poll returns, in order.

Between the server and the collector a test may tamper with the records of
the next attempts (``server.tamper(...)``, with the hooks below: drop, corrupt,
swap, inject, failover, edit_reply, chain), and with the uploads of the next attempts
(``server.tamper_uploads(...)``).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minigit import codec, identity, sealing
from minigit import protocol as p
from minigit.client import keys
from minigit.client.exchange import (
    Credentials,
    Observer,
    ReplyGuard,
    Response,
    await_answer,
    make_request,
    sign_request,
)
from minigit.config import KafkaSettings, user_config_dir
from minigit.errors import MinigitError
from minigit.identity import ChunkDigest
from minigit_server.access import Account
from minigit_server.service import AppliedOffsets, Handled, MemoryWire, ServerIdentity, Service
from minigit_server.store import MemoryStore

REPLY_PARTITIONS = 4
LOG_PARTITIONS = 3

# A hook sees one attempt's request and its records, and returns the records to deliver.
Tamper = Callable[[p.Request, list[bytes]], list[bytes]]


@dataclass
class Attempt:
    """One sending of one request, as its connection saw it."""

    connection: InProcessConnection
    request: p.Request
    uploaded: list[bytes]  # chunk record values that reached the service
    handled: Handled | None
    replies: list[bytes]  # what the service wrote on the reply partition
    delivered: list[bytes]  # what reached the collector, after tampering
    response: Response | None = None


class InProcessServer:
    """A real Service over a MemoryStore. ``attempts`` is how many sendings of
    one request reach the service (the connection keeps sending it, after each
    attempt window without news, until its timeout; later sendings are lost).
    ``bootstrap``/``namespace``, when given, are the only address it answers at;
    elsewhere connecting is ServerUnreachable. ``clock`` is the clients'
    simulated monotonic clock, in seconds."""

    def __init__(
        self, attempts: int = 1, bootstrap: str | None = None, namespace: str | None = None, replica: str = "1"
    ) -> None:
        self.store = MemoryStore()
        self.applied = AppliedOffsets({})
        self.identity = ServerIdentity.generate(namespace or "")
        self.wire = MemoryWire(
            self.store, self.applied, LOG_PARTITIONS, REPLY_PARTITIONS, authority=self.identity.authority
        )
        self.now_ms = int(time.time() * 1000)  # requests are signed at the real time
        self.clock = 0.0
        self.service = Service(
            replica, self.store, self.wire, self.applied, self.identity, clock_ms=lambda: self.now_ms
        )
        self.attempts = attempts
        self.bootstrap, self.namespace = bootstrap, namespace
        self.connections: list[InProcessConnection] = []
        self.log: list[Attempt] = []
        self._reply_hooks: list[Tamper] = []
        self._upload_hooks: list[Tamper] = []

    def connector(self, settings: KafkaSettings, credentials: Credentials, timeout: float) -> InProcessConnection:
        """A ``Connector``: pass it as ``ClientOptions(..., connector=server.connector)``."""
        wrong_place = (self.bootstrap is not None and settings.bootstrap != self.bootstrap) or (
            self.namespace is not None and settings.namespace != self.namespace
        )
        if wrong_place:
            raise settings.unreachable(ConnectionRefusedError())
        connection = InProcessConnection(self, settings, credentials, timeout, len(self.connections) % REPLY_PARTITIONS)
        self.connections.append(connection)
        return connection

    def tamper(self, *hooks: Tamper) -> None:
        """Pass the reply records of each of the next attempts through one hook."""
        self._reply_hooks.extend(hooks)

    def tamper_uploads(self, *hooks: Tamper) -> None:
        """Pass the upload chunk records of each of the next attempts through one hook."""
        self._upload_hooks.extend(hooks)

    def enrol(self, *users: str) -> None:
        """Register users' keys (from the config directory) and nothing else: the
        setup of tests about something else than registering (no request sent)."""
        for user in users:
            key, _ = keys.load_or_create_key(user_config_dir(), user)
            self.store.put_account(Account(user, identity.public_key_text(key.public_key())))

    def grant(self, repo: str, level: p.Access, *users: str) -> None:
        """Give users access to a repository (test setup, no request sent)."""
        members = self.store.get_members(repo)
        self.store.set_members(repo, {**members, **dict.fromkeys(users, str(level))})

    def serve_namespace(self, namespace: str) -> None:
        """A server that answers at any address answers as the service of the
        namespace it was reached at (signatures name the namespace)."""
        self.identity = dataclasses.replace(self.identity, namespace=namespace)
        self.service.server = self.identity
        self.wire.authority = self.identity.authority

    def resign(self, value: bytes) -> bytes:
        """A reply record signed again with the service's key (others as they are)."""
        try:
            message = parse(value)
        except MinigitError:
            return value
        if not isinstance(message, p.Reply):
            return value
        return sealing.sign_reply(self.identity.key, message, self.identity.namespace).to_bytes()

    @property
    def requests(self) -> list[p.Request]:
        return [attempt.request for attempt in self.log]

    def head(self, repo: str) -> int | None:
        state = self.store.get_repo(repo)
        return state.head if state else None

    def exchange(self, connection: InProcessConnection, request: p.Request, uploads: list[bytes]) -> Attempt:
        """One attempt: the uploads, then the request, each at the next second."""
        if self.namespace is None:
            self.serve_namespace(connection.settings.namespace)
        if self._upload_hooks:
            uploads = self._upload_hooks.pop(0)(request, list(uploads))
        start = len(self.wire.replies)
        for value in uploads:
            self.now_ms += 1
            self.service.handle(self.now_ms, value)
        self.now_ms += 1000
        handled = self.service.handle(self.now_ms, request.to_bytes())
        # as a consumer of the request's reply partition reads them: record values, in order
        replies = [m.to_bytes() for n, m in self.wire.replies[start:] if n == request.reply_partition]
        delivered = list(replies)
        if self._reply_hooks:
            hook = self._reply_hooks.pop(0)
            delivered = hook(request, delivered)
            if getattr(hook, "as_the_service", False):  # a service that erred, not a forger: it signs what it sent
                delivered = [self.resign(value) for value in delivered]
        attempt = Attempt(connection, request, uploads, handled, replies, delivered)
        self.log.append(attempt)
        return attempt


class InProcessConnection:
    """What ``transport.Connection`` does, with the service in the same process."""

    def __init__(
        self,
        server: InProcessServer,
        settings: KafkaSettings,
        credentials: Credentials,
        timeout: float,
        reply_partition: int,
    ) -> None:
        self.server, self.settings, self.credentials, self.timeout = server, settings, credentials, timeout
        self.user = credentials.user
        self.reply_partition = reply_partition
        self.reply_key = sealing.new_reply_key()
        self.closed = False

    def __enter__(self) -> InProcessConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True

    def new_request(self, cls: type[p.Request], **fields: Any) -> p.Request:
        reply_key = sealing.reply_key_text(self.reply_key.public_key())
        return make_request(cls, self.user, self.reply_partition, self.timeout, reply_key, **fields)

    def call(
        self,
        request: p.Request,
        uploads: Sequence[codec.BlobSource] = (),
        observer: Observer | None = None,
        spool: Path | None = None,
    ) -> Response:
        if self.closed:
            raise AssertionError("call on a closed connection")
        observer = observer or Observer()
        attempts: list[Attempt] = []
        pending: list[bytes] = []

        namespace = self.settings.namespace

        def send(attempt: int) -> None:
            if len(attempts) >= self.server.attempts:
                return  # lost on the way
            values = self._encode_uploads(request, uploads, Observer() if attempt else observer)
            digests = [ChunkDigest.of(p.parse_message(value, allowed=(p.Chunk,))) for value in values]
            signed = sign_request(self.credentials, request, digests, namespace)  # signed now, as the transport's
            attempts.append(self.server.exchange(self, signed, values))
            pending.extend(attempts[-1].delivered)

        def poll(seconds: float) -> list[bytes]:
            if not pending:
                self.server.clock += seconds
            records = list(pending)
            pending.clear()
            return records

        # a ProtocolError goes to the caller, as from the transport
        upload_bytes = sum(u.size for u in uploads)
        guard = ReplyGuard(namespace, self.credentials, self.reply_key)
        response = await_answer(
            request.request_id,
            send,
            poll,
            self.timeout,
            observer,
            lambda: self.server.clock,
            upload_bytes,
            guard,
            upload_records=sum(codec.count_chunks(u.size) for u in uploads),
            spool=spool,
        )
        attempts[-1].response = response
        return response

    @staticmethod
    def _encode_uploads(request: p.Request, uploads: Sequence[codec.BlobSource], observer: Observer) -> list[bytes]:
        if uploads:
            observer.uploading(sum(u.size for u in uploads), len(uploads))
        values = []
        for upload in uploads:
            for chunk in p.blob_chunks(request.request_id, request.repo, upload):
                values.append(chunk.to_bytes())
                observer.uploaded(codec.piece_size(upload.size, chunk.index))
            observer.uploaded_object()
        return values


# ---------------------------------------------------------------- observing


@dataclass
class RecordingObserver(Observer):
    """Every hook call, in order, as (name, *arguments)."""

    events: list[tuple] = field(default_factory=list)

    def uploading(self, total_bytes: int, blobs: int) -> None:
        self.events.append(("uploading", total_bytes, blobs))

    def uploaded(self, nbytes: int) -> None:
        self.events.append(("uploaded", nbytes))

    def uploaded_object(self) -> None:
        self.events.append(("uploaded_object",))

    def waiting(self) -> None:
        self.events.append(("waiting",))

    def downloading(self, total_bytes: int, blobs: int) -> None:
        self.events.append(("downloading", total_bytes, blobs))

    def downloaded(self, nbytes: int) -> None:
        self.events.append(("downloaded", nbytes))

    def downloaded_object(self) -> None:
        self.events.append(("downloaded_object",))

    def named(self, name: str) -> list[tuple]:
        return [event for event in self.events if event[0] == name]

    def total(self, name: str) -> int:
        return sum(event[1] for event in self.named(name))


# ---------------------------------------------------------------- tampering hooks


def parse(value: bytes) -> p.Message:
    return p.parse_message(value, allowed=p.REPLY_TYPES)


def is_answer(value: bytes) -> bool:
    try:
        message = parse(value)
    except MinigitError:
        return False
    return isinstance(message, p.Reply) and message.status != p.Status.WORKING


def answer_index(records: list[bytes]) -> int:
    """Where the (last) answer starts: its reply, not a "working" one."""
    found = [i for i, value in enumerate(records) if is_answer(value)]
    if not found:
        raise AssertionError("no answer among the reply records")
    return found[-1]


def drop(*indices: int) -> Tamper:
    """Lose the records at ``indices`` (negative ones count from the end); no index: lose them all."""

    def hook(request: p.Request, records: list[bytes]) -> list[bytes]:
        if not indices:
            return []
        gone = {i % len(records) for i in indices}
        return [value for i, value in enumerate(records) if i not in gone]

    return hook


def corrupt(index: int) -> Tamper:
    """Change the content of the chunk at ``index``, keeping it a well-formed record:
    its blob no longer matches its hash."""

    def hook(request: p.Request, records: list[bytes]) -> list[bytes]:
        at = index % len(records)
        chunk = parse(records[at])
        assert isinstance(chunk, p.Chunk), "corrupt() needs a chunk"
        raw = chunk.raw()
        raw = bytes([raw[0] ^ 1]) + raw[1:] if raw else b"?"
        piece = codec.encode_piece(chunk.index, raw)
        changed = dataclasses.replace(chunk, encoding=piece.encoding, payload=piece.payload)
        return [*records[:at], changed.to_bytes(), *records[at + 1 :]]

    return hook


def swap(i: int, j: int) -> Tamper:
    def hook(request: p.Request, records: list[bytes]) -> list[bytes]:
        records = list(records)
        records[i], records[j] = records[j], records[i]
        return records

    return hook


def inject(index: int, *values: bytes) -> Tamper:
    """Insert ``values`` before the record at ``index`` (``len`` appends)."""

    def hook(request: p.Request, records: list[bytes]) -> list[bytes]:
        at = index if index >= 0 else len(records) + 1 + index
        return [*records[:at], *values, *records[at:]]

    return hook


def restream(value: bytes, stream: str, replica: str | None = None) -> bytes:
    message = parse(value)
    changes: dict[str, Any] = {"stream": stream}
    if replica is not None and isinstance(message, p.Reply):
        changes["replica"] = replica
    return dataclasses.replace(message, **changes).to_bytes()


def failover(cut: int = 1, late: bool = False) -> Tamper:
    """The answering replica dies after sending ``cut`` records of its answer (the
    reply counts); another answers the same request in full under a new stream.
    With ``late``, the dead replica's unsent records still arrive, after the new reply."""

    def hook(request: p.Request, records: list[bytes]) -> list[bytes]:
        start = answer_index(records)
        answer = records[start:]
        stream = uuid.uuid4().hex
        second = [restream(value, stream, replica="2") for value in answer]
        leftovers = answer[cut:] if late else []
        return [*records[: start + cut], second[0], *leftovers, *second[1:]]

    hook.as_the_service = True  # type: ignore[attr-defined]
    return hook


def edit_reply(change: Callable[[dict], object]) -> Tamper:
    """Rewrite the answer's reply as JSON (``change`` edits the dict in place), valid or not."""

    def hook(request: p.Request, records: list[bytes]) -> list[bytes]:
        start = answer_index(records)
        doc = json.loads(records[start])
        change(doc)
        return [*records[:start], json.dumps(doc).encode(), *records[start + 1 :]]

    hook.as_the_service = True  # type: ignore[attr-defined]
    return hook


def chain(*hooks: Tamper) -> Tamper:
    """Several hooks on one attempt, in order."""

    def hook(request: p.Request, records: list[bytes]) -> list[bytes]:
        for each in hooks:
            records = each(request, records)
        return records

    hook.as_the_service = any(getattr(each, "as_the_service", False) for each in hooks)  # type: ignore[attr-defined]
    return hook
