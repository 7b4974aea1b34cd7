"""One request and its answer, without Kafka: what the operations need from a
connection (``Link``), what an answer is (``Response``), how the answer to one
request is picked out of a reply partition that many clients share
(``ReplyCollector``), and how long to wait for it and when to send the request
again (``await_answer``). ``transport.Connection`` moves the records; the fakes
of the unit tests run the same loop and feed the same collector.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from minigit import codec
from minigit import protocol as p
from minigit.config import KafkaSettings
from minigit.errors import MinigitError, ProtocolError, ServerUnreachable

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


# How far a request has got, in steps: the service's "working" notice, then the
# reply of an answer, then each piece of its content (see ReplyCollector.reached).
WORKING_STEP = 1
REPLY_STEP = 2


class _Answer:
    """One answer being received: the reply, then its blobs' chunks in order.
    ``before`` is how far the request had got, and when, before this answer
    began: what stands if the answer breaks."""

    def __init__(self, reply: p.Reply, observer: Observer, before: tuple[int, float]) -> None:
        self.reply = reply
        self.observer = observer
        self.before = before
        self.done: dict[str, ReceivedBlob] = {}
        self.pieces_done = 0  # pieces of the blobs in ``done``
        self.current: tuple[codec.Assembler, IO[bytes]] | None = None
        if reply.blob_count:
            observer.downloading(reply.blob_bytes, reply.blob_count)

    @property
    def complete(self) -> bool:
        return len(self.done) >= self.reply.blob_count

    @property
    def steps(self) -> int:
        """How far this answer has got: its reply, and every piece received since."""
        return REPLY_STEP + self.pieces_done + (self.current[0].next_index if self.current else 0)

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
            self.pieces_done += assembler.count
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
    """Picks the answer to one request out of the records of a reply partition,
    and tells whether each record is news of it.

    Records of other requests, and garbage, are ignored. An answer is a reply
    followed by its chunks under the reply's ``stream``. A newer reply replaces
    an answer in progress: a request is answered again when the replica that
    was answering it died (failover), and the older answer will never finish.
    A "working" reply only says the request arrived.

    News is a valid record that takes the request further than it has been
    (``reached``): the first "working" reply, a reply, each next piece of
    content. ``last_news`` is when (by ``clock``) the last news came. An answer
    that breaks (a piece out of order, content that does not match its hash) was
    never news: ``reached`` and ``last_news`` go back to what they were before
    it began. An answer sent again from the start (after a failover, or because
    the request was sent again) is news only once it gets further than the one
    before: a service that keeps starting answers it never finishes cannot hold
    the command forever.
    """

    def __init__(self, request_id: str, observer: Observer, clock: Callable[[], float] = time.monotonic) -> None:
        self.request_id = request_id
        self.observer = observer
        self.clock = clock
        self.answer: _Answer | None = None
        self.reached = 0
        self.last_news = clock()
        self.broken: list[str] = []  # why each dropped answer broke

    def feed(self, value: bytes) -> bool:
        """Take one record; return whether it is news of this request's answer.
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
            if message.status == p.Status.WORKING:
                return self._advance(WORKING_STEP)
            self.abandon()
            self.answer = _Answer(message, self.observer, (self.reached, self.last_news))
            return self._advance(self.answer.steps)
        if self.answer is None or message.stream != self.answer.reply.stream:
            return False
        try:
            self.answer.add(message)
        except ProtocolError as error:
            log.warning("dropping a broken answer: %s", error.message)
            self.broken.append(error.message)
            self.reached, self.last_news = self.answer.before
            self.abandon()
            return False
        return self._advance(self.answer.steps)

    def _advance(self, steps: int) -> bool:
        if steps <= self.reached:
            return False
        self.reached, self.last_news = steps, self.clock()
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


# ---------------------------------------------------------------- waiting


def attempt_window(timeout: float) -> float:
    """Seconds without news after which a request is sent again (same id)."""
    return max(5.0, timeout / 3)


class _WaitingClock:
    """Seconds spent waiting for the service: time spent sending (an upload can
    take minutes) is not silence."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.sending = 0.0

    def __call__(self) -> float:
        return self.clock() - self.sending

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        started = self.clock()
        try:
            yield
        finally:
            self.sending += self.clock() - started


def await_answer(
    request_id: str,
    send: Callable[[bool], None],
    poll: Callable[[float], Iterable[bytes]],
    timeout: float,
    observer: Observer,
    clock: Callable[[], float] | None = None,
) -> Response:
    """Send a request and wait for its answer.

    ``send(again)`` sends the request (its uploads, then the request itself);
    ``poll(seconds)`` returns the records of the reply partition that arrive
    within at most ``seconds``. Every attempt window (``attempt_window``) without
    news the request is sent again, same id: the server's outcome table makes
    that harmless. After ``timeout`` seconds without news (ReplyCollector) the
    command gives up with ServerUnreachable, within a poll of that moment.
    """
    waited = _WaitingClock(clock or time.monotonic)
    collector = ReplyCollector(request_id, observer, waited)
    window = attempt_window(timeout)
    try:
        with waited.paused():
            send(False)
        observer.waiting()
        sent = waited()
        while True:
            now = waited()
            if now - collector.last_news >= timeout:
                raise no_answer(timeout, collector.broken)
            quiet_since = max(sent, collector.last_news)
            if now - quiet_since >= window:
                log.info("no news of %s for %.1fs; sending it again", request_id, now - quiet_since)
                with waited.paused():
                    send(True)
                observer.waiting()
                sent = waited()
                continue
            for value in poll(min(collector.last_news + timeout, quiet_since + window) - now):
                collector.feed(value)
                if (response := collector.response) is not None:
                    return response
    except BaseException:
        collector.abandon()
        raise


def no_answer(timeout: float, broken: Sequence[str] = ()) -> ServerUnreachable:
    message = f"no answer from the minigit service within {timeout:g}s"
    if broken:
        count = f"{len(broken)} broken answer{'s' if len(broken) != 1 else ''}"
        message += f" ({count} dropped, the last because {broken[-1]})"
    return ServerUnreachable(message, hint="check that 'minigit-server start' is running, or raise --timeout")
