"""One request and its answer, without Kafka: what the operations need from a
connection (``Link``), what an answer is (``Response``), and how the answer to
one request is picked out of a reply partition that many clients share
(``ReplyCollector``). ``transport.Connection`` moves the records; the fakes of
the unit tests feed the same collector.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from minigit import codec
from minigit import protocol as p
from minigit.config import KafkaSettings
from minigit.errors import MinigitError, ProtocolError

log = logging.getLogger("minigit.exchange")

# Blobs received beyond this size spill from memory to a temporary file.
SPOOL_BYTES = 8 * 1024 * 1024


class Observer:
    """Hooks for progress display; the default shows nothing."""

    def uploading(self, total_bytes: int, blobs: int) -> None: ...
    def uploaded(self, nbytes: int) -> None: ...
    def uploaded_object(self) -> None: ...
    def waiting(self) -> None: ...
    def downloading(self, total_bytes: int, blobs: int) -> None: ...
    def downloaded(self, nbytes: int) -> None: ...
    def downloaded_object(self) -> None: ...


@dataclass
class ReceivedBlob:
    sha: str
    size: int
    file: IO[bytes]

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def copy_to(self, out: IO[bytes]) -> None:
        self.file.seek(0)
        while piece := self.file.read(1024 * 1024):
            out.write(piece)


@dataclass
class Response:
    """A complete answer: the reply and the blobs that followed it, all verified."""

    reply: p.Reply
    blobs: dict[str, ReceivedBlob] = field(default_factory=dict)

    def close(self) -> None:
        for blob in self.blobs.values():
            blob.file.close()


class Link(Protocol):
    """A connection to the service, as the operations use it."""

    def new_request(self, cls: type[p.Request], **fields: Any) -> p.Request: ...
    def call(
        self, request: p.Request, uploads: Sequence[codec.BlobSource] = (), observer: Observer | None = None
    ) -> Response: ...
    def close(self) -> None: ...
    def __enter__(self) -> Link: ...
    def __exit__(self, *exc: object) -> None: ...


# How a command opens its link: settings, user, timeout (transport.Connection by default).
Connector = Callable[[KafkaSettings, str, float], Link]


def make_request(cls: type[p.Request], user: str, reply_partition: int, timeout: float, **fields: Any) -> p.Request:
    """A new request, checked as the server will check it, so that one it would
    refuse fails here, before any upload."""
    request = cls(
        request_id=p.new_request_id(),
        user=user,
        reply_partition=reply_partition,
        timeout_ms=int(timeout * 1000),
        **fields,
    )
    request.validate()
    return request


class _Answer:
    """One answer being received: the reply, then its blobs' chunks in order."""

    def __init__(self, reply: p.Reply, observer: Observer) -> None:
        self.reply = reply
        self.observer = observer
        self.done: dict[str, ReceivedBlob] = {}
        self.current: tuple[codec.Assembler, IO[bytes]] | None = None
        if reply.blob_count:
            observer.downloading(reply.blob_bytes, reply.blob_count)

    @property
    def complete(self) -> bool:
        return len(self.done) >= self.reply.blob_count

    def add(self, chunk: p.Chunk) -> None:
        if chunk.sha in self.done:
            return
        if chunk.index == 0:
            self.discard_current()
            file = tempfile.SpooledTemporaryFile(SPOOL_BYTES)  # noqa: SIM115 - the Response closes it
            self.current = (codec.Assembler(chunk.sha, chunk.count, file.write), file)
        if self.current is None or self.current[0].sha != chunk.sha:
            raise ProtocolError(f"chunk {chunk.index} of {chunk.sha[:12]} arrived out of order")
        assembler, file = self.current
        raw = assembler.add(chunk.piece())
        self.observer.downloaded(len(raw))
        if assembler.complete:
            self.done[chunk.sha] = ReceivedBlob(chunk.sha, assembler.size, file)
            self.current = None
            self.observer.downloaded_object()

    def discard_current(self) -> None:
        if self.current is not None:
            self.current[1].close()
            self.current = None

    def discard(self) -> None:
        for blob in self.done.values():
            blob.file.close()
        self.discard_current()


class ReplyCollector:
    """Picks the answer to one request out of the records of a reply partition.

    Records of other requests, and garbage, are ignored. An answer is a reply
    followed by its chunks under the reply's ``stream``. A newer reply replaces
    an answer in progress: a request is answered again when the replica that
    was answering it died (failover), and the older answer will never finish.
    A "working" reply only says the request arrived.
    """

    def __init__(self, request_id: str, observer: Observer) -> None:
        self.request_id = request_id
        self.observer = observer
        self.answer: _Answer | None = None

    def feed(self, value: bytes) -> bool:
        """Take one record; return whether it was part of this request's answer.
        Raise ProtocolError if it is a malformed answer to this request: waiting
        longer would not mend it."""
        try:
            message = p.parse_message(value, allowed=p.REPLY_TYPES)
        except MinigitError as error:
            if p.peek_request_id(value) == self.request_id:
                self.abandon()
                raise ProtocolError(f"the service sent a malformed answer: {error.message}") from None
            return False  # someone else's garbage is not our answer
        if message.request_id != self.request_id:
            return False
        if isinstance(message, p.Reply):
            if message.status != p.Status.WORKING:
                self.abandon()
                self.answer = _Answer(message, self.observer)
        elif self.answer is not None and message.stream == self.answer.reply.stream:
            try:
                self.answer.add(message)
            except ProtocolError as error:
                log.warning("dropping a broken answer: %s", error.message)
                self.abandon()
        return True

    @property
    def response(self) -> Response | None:
        """The whole answer, once its last blob has arrived."""
        if self.answer is not None and self.answer.complete:
            return Response(self.answer.reply, self.answer.done)
        return None

    def abandon(self) -> None:
        """Drop an answer in progress (cut off: its replica died); wait for the next."""
        if self.answer is not None:
            self.answer.discard()
            self.answer = None
