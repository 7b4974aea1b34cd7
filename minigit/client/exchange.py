"""One request and its answer, without Kafka: what the operations need from a
connection (``Link``), what an answer is (``Response``), how the answer to one
request is picked out of a reply partition that many clients share
(``ReplyCollector``), and how long to wait for it and when to send the request
again (``await_answer``). ``transport.Connection`` moves the records; the fakes
of the unit tests run the same loop and feed the same collector.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from minigit import codec, identity, sealing
from minigit import protocol as p
from minigit.config import KafkaSettings
from minigit.errors import MinigitError, ProtocolError, SealBroken, ServerKeyChanged, ServerUnreachable, UnsafePath

log = logging.getLogger("minigit.exchange")

# The most received content one answer holds in memory, all its blobs together;
# the rest goes to temporary files.
SPOOL_BYTES = 8 * 1024 * 1024

# The most pieces a tree can have: a larger one is refused before it is received.
MAX_TREE_CHUNKS = codec.count_chunks(p.MAX_TREE_BYTES)


class Observer:
    """Hooks for progress display; the default shows nothing. All are called
    from the command's own thread, in this order for one sending of a request:

    - ``uploading(total_bytes, blobs)``: the request carries ``blobs`` objects of
      ``total_bytes`` raw bytes in all, its tree first (a write's uploads begin
      with the tree it names: ``operations.collect_uploads``);
    - ``uploaded(nbytes)``: ``nbytes`` more of them were acknowledged by Kafka
      (stored by every in-sync replica), not merely handed to the producer: in
      all, never more than were sent;
    - ``uploaded_object()``: every piece of one more object acknowledged;
    - ``waiting()``: the request itself is sent and acknowledged, after all its
      uploads: what remains is the service's work (called again after each
      sending of the request again);
    - ``downloading(total_bytes, blobs)``: an answer brings ``blobs`` objects, its
      tree first (``_Answer.expect`` refuses anything else), ``total_bytes`` in
      all; called again when an answer starts over (a failover);
    - ``downloaded(nbytes)``, ``downloaded_object()``: received and verified.
    """

    def uploading(self, total_bytes: int, blobs: int) -> None: ...
    def uploaded(self, nbytes: int) -> None: ...
    def uploaded_object(self) -> None: ...
    def waiting(self) -> None: ...
    def downloading(self, total_bytes: int, blobs: int) -> None: ...
    def downloaded(self, nbytes: int) -> None: ...
    def downloaded_object(self) -> None: ...


@dataclass
class ReceivedBlob:
    """One blob of an answer, verified: ``size`` bytes at ``offset`` in ``file``
    (memory, or a temporary file; blobs past the memory budget share one file: one
    each ran out of file descriptors at 100,000 small files), or, when the answer
    was received into a spool directory, in a file of its own at ``path`` (``file``
    None), which ``move_or_copy`` renames into place once."""

    sha: str
    size: int
    file: IO[bytes] | None
    offset: int = 0
    path: Path | None = None
    moved: bool = False  # ``path`` was renamed by ``move_or_copy``: it is the caller's now

    def read(self) -> bytes:
        if self.file is None:
            return self.path.read_bytes()
        self.file.seek(self.offset)
        return self.file.read(self.size)

    def copy_to(self, out: IO[bytes]) -> None:
        if self.file is None:
            with open(self.path, "rb") as source:
                while piece := source.read(1024 * 1024):
                    out.write(piece)
            return
        self.file.seek(self.offset)
        left = self.size
        while left and (piece := self.file.read(min(left, 1024 * 1024))):
            out.write(piece)
            left -= len(piece)

    def move_or_copy(self, target: Path, out: IO[bytes]) -> None:
        """Put the blob's content at ``target``, a new file ``out`` is open on: the
        first time, by renaming the blob's own file over it (the spool is made beside
        where files go, on the same filesystem), so a received byte is written once;
        otherwise (in memory, a temporary file, or moved already) by copying it into
        ``out``. Once moved, the content is read from ``target``."""
        if self.path is None or self.moved:
            self.copy_to(out)
            return
        os.replace(self.path, target)
        self.path, self.moved = target, True

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        elif not self.moved:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


@dataclass
class Response:
    """A complete answer: the reply and the blobs that followed it, all verified.
    ``manifest`` is the reply's tree, decoded, when the answer carried it."""

    reply: p.Reply
    blobs: dict[str, ReceivedBlob] = field(default_factory=dict)
    manifest: p.Manifest | None = None

    def close(self) -> None:
        for blob in self.blobs.values():
            blob.close()


@dataclass(frozen=True)
class Credentials:
    """Who the client is, and how it knows the service: the user's name and key
    (every request is signed with it), and ``trust_server``, which is told the
    key a validly signed reply names and raises ServerKeyChanged unless it is the
    service's (the client's known_servers pins it on first contact)."""

    user: str
    key: Ed25519PrivateKey
    trust_server: Callable[[str], object] = lambda key: None

    @property
    def public_key(self) -> str:
        return identity.public_key_text(self.key.public_key())


class Link(Protocol):
    """A connection to the service, as the operations use it. ``call`` signs the
    request (with the digest of its uploads) before it sends it; with ``spool`` (an
    empty directory of the caller's, removed by it), the answer's blobs are written
    there, each in a file of its own (``ReceivedBlob.move_or_copy``)."""

    credentials: Credentials

    def new_request(self, cls: type[p.Request], **fields: Any) -> p.Request: ...
    def call(
        self,
        request: p.Request,
        uploads: Sequence[codec.BlobSource] = (),
        observer: Observer | None = None,
        spool: Path | None = None,
    ) -> Response: ...
    def close(self) -> None: ...
    def __enter__(self) -> Link: ...
    def __exit__(self, *exc: object) -> None: ...


# How a command opens its link: settings, credentials, timeout (transport.Connection by default).
Connector = Callable[[KafkaSettings, Credentials, float], Link]


def make_request(
    cls: type[p.Request], user: str, reply_partition: int, timeout: float, reply_key: str = "", **fields: Any
) -> p.Request:
    """A new request, checked as the server will check it, so that one it would
    refuse fails here, before any upload. ``call`` signs it."""
    request = cls(
        request_id=p.new_request_id(),
        user=user,
        reply_partition=reply_partition,
        timeout_ms=int(timeout * 1000),
        reply_key=reply_key,
        **fields,
    )
    request.validate()
    return request


def sign_request(
    credentials: Credentials, request: p.Request, digests: Iterable[identity.ChunkDigest], namespace: str
) -> p.Request:
    """``request`` signed now by the user's key over it, the digests of the chunks
    uploaded with it, and the namespace."""
    now = dataclasses.replace(request, signed_ms=int(time.time() * 1000))
    return identity.sign_request(credentials.key, now, identity.chunks_digest(digests), namespace)


class ReplyGuard:
    """What a reply must be before the client believes it: signed by the service's
    key (``Credentials.trust_server`` says which that is), and, when sealed to this
    client's reply key, opened with it. Without a guard (tests of the waiting
    alone), records are taken as they come."""

    def __init__(self, namespace: str, credentials: Credentials, reply_key: X25519PrivateKey | None) -> None:
        self.namespace = namespace
        self.credentials = credentials
        self.opener = sealing.StreamOpener(reply_key) if reply_key is not None else None
        self.key_changed: ServerKeyChanged | None = None  # a validly signed reply by another key

    def open(self, sealed: p.Sealed) -> p.Message:
        """The record inside (SealBroken, ProtocolError if it is not one of ours)."""
        if self.opener is None:
            raise SealBroken("a sealed reply arrived, and this request has no reply key")
        inner = p.parse_message(self.opener.open(sealed), allowed=(p.Chunk, p.Reply))
        if inner.request_id != sealed.request_id:
            raise SealBroken("a sealed reply holds a record of another request")
        return inner

    def check(self, reply: p.Reply) -> str | None:
        """Why ``reply`` is not the service's, or None."""
        if not reply.signature or not reply.server_key:
            return "a reply was not signed by the service"
        if not sealing.reply_signed_by(reply.server_key, reply, self.namespace):
            return "a reply's signature does not check"
        try:
            self.credentials.trust_server(reply.server_key)
        except ServerKeyChanged as changed:
            self.key_changed = changed
            return changed.message
        return None


# How far a request has got, in steps: the service's "working" notice, then the
# reply of an answer, then each piece of its content (see ReplyCollector.reached).
WORKING_STEP = 1
REPLY_STEP = 2


class _Answer:
    """One answer being received: the reply, then its blobs' chunks in order.
    ``before`` is how far the request had got, and when, before this answer
    began: what stands if the answer breaks.

    The blobs of an answer are its reply's tree first, then blobs that tree
    lists (the server sends nothing else): a first blob that is not the tree, or
    a later one the tree does not list, breaks the answer (ProtocolError), so a
    service cannot keep a command waiting with blobs of its choosing. The tree
    is decoded once, when it is complete (``manifest``); a tree that does not
    decode is the answer the service meant, which no retry mends (BadTree).

    With a ``spool`` directory, each blob is written there as it arrives, in a file
    of its own (``ReceivedBlob.path``): the caller renames it into place, so a
    received byte is written to disk once. Without one, at most SPOOL_BYTES of the
    answer's content is held in memory, all its blobs together; blobs beyond that
    go to one temporary file (``spill``)."""

    def __init__(
        self, reply: p.Reply, observer: Observer, before: tuple[int, float], spool: Path | None = None
    ) -> None:
        self.reply = reply
        self.observer = observer
        self.before = before
        self.spool = spool
        self.done: dict[str, ReceivedBlob] = {}
        self.pieces_done = 0  # pieces of the blobs in ``done``
        self.current: tuple[codec.Assembler, IO[bytes], int, int, Path | None] | None = None
        # (its file, memory budget, offset in that file, spool path)
        self.spill: IO[bytes] | None = None  # the one file of every blob past the memory budget
        self.manifest: p.Manifest | None = None
        self.listed: frozenset[str] = frozenset()  # the blobs the tree lists
        self.sizes: dict[str, int | None] = {}  # and their sizes (sizes_of)
        self.memory_left = SPOOL_BYTES  # of the in-memory budget, after the blobs in ``done``
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
        try:
            self._add(chunk)
        except OSError as error:
            # this machine's disk (full, `ulimit -f`...), not Kafka's: the transport takes an
            # OSError for a broken connection (exit 4) and a resend would only fill it again
            raise TemporaryFileError(error) from None

    def _add(self, chunk: p.Chunk) -> None:
        if chunk.sha in self.done:
            return
        if chunk.index == 0:
            self.expect(chunk)
            self.discard_current()
            self.current = self.open_blob(chunk)
        if self.current is None or self.current[0].sha != chunk.sha:
            raise ProtocolError(f"chunk {chunk.index} of {chunk.sha[:12]} arrived out of order")
        assembler, file, budget, offset, path = self.current
        raw = assembler.add(chunk.piece())
        self.observer.downloaded(len(raw))
        if assembler.complete:
            if path is not None:
                file.close()
                blob = ReceivedBlob(chunk.sha, assembler.size, None, path=path)
            else:
                blob = ReceivedBlob(chunk.sha, assembler.size, file, offset)  # the Response closes its file
            if chunk.sha == self.reply.tree:
                self.manifest = decode_received_tree(blob)
                self.listed = frozenset(entry.sha for entry in self.manifest.values())
                self.sizes = sizes_of(self.manifest)
            elif assembler.size != self.sizes.get(chunk.sha):
                raise ProtocolError(
                    f"object {chunk.sha[:12]} is {assembler.size} bytes, the tree says {self.sizes.get(chunk.sha)}"
                )
            self.done[chunk.sha] = blob
            self.pieces_done += assembler.count
            self.current = None
            if path is None and budget > 0 and assembler.size <= budget:  # it never left memory
                self.memory_left -= assembler.size
            self.observer.downloaded_object()

    def open_blob(self, chunk: p.Chunk) -> tuple[codec.Assembler, IO[bytes], int, int, Path | None]:
        """Where the blob that ``chunk`` starts is written as it arrives: its
        assembler, file, memory budget, offset in that file, and spool path."""
        if self.spool is not None:
            # a name of its own: the answer's blobs are distinct (``add`` drops a repeat)
            path = self.spool / f"{next(_spooled)}-{chunk.sha[:16]}"
            file = open(path, "xb")  # noqa: SIM115 - closed when complete, or by discard
            return codec.Assembler(chunk.sha, chunk.count, file.write), file, 0, 0, path
        budget, offset = self.memory_left, 0
        size = self.sizes.get(chunk.sha)  # (as the tree says: the tree itself comes first)
        if budget > 0 and (size is None or size <= budget):
            # a SpooledTemporaryFile moves to disk once it holds more than its budget
            file: IO[bytes] = tempfile.SpooledTemporaryFile(budget)  # noqa: SIM115
        else:
            budget = 0
            file = self.spill = self.spill or tempfile.TemporaryFile()  # noqa: SIM115
            offset = file.seek(0, 2)  # (after what a broken blob left: never read)
        return codec.Assembler(chunk.sha, chunk.count, file.write), file, budget, offset, None

    def expect(self, chunk: p.Chunk) -> None:
        """Raise ProtocolError unless ``chunk`` starts the blob that may come next:
        the reply's tree first, then any blob the tree lists."""
        if self.manifest is None:
            if self.reply.tree is None:
                raise ProtocolError(f"object {chunk.sha[:12]} came with an answer that has no tree")
            if chunk.sha != self.reply.tree:
                raise ProtocolError(f"object {chunk.sha[:12]} came before the answer's tree {self.reply.tree[:12]}")
            if chunk.count > MAX_TREE_CHUNKS:
                raise ProtocolError(f"the tree {chunk.sha[:12]} is too large: {chunk.count} pieces")
        elif chunk.sha not in self.listed:
            raise ProtocolError(f"object {chunk.sha[:12]} is not in the answer's tree")
        elif (size := self.sizes[chunk.sha]) is None or chunk.count != codec.count_chunks(size):
            raise ProtocolError(f"object {chunk.sha[:12]} comes in {chunk.count} pieces, the tree says {size} bytes")

    def discard_current(self) -> None:
        if self.current is not None:
            _, file, _, _, path = self.current
            if file is not self.spill:  # (the spill file holds finished blobs too)
                file.close()
            if path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            self.current = None

    def discard(self) -> None:
        for blob in self.done.values():
            blob.close()
        self.discard_current()
        if self.spill is not None:
            self.spill.close()


# Names the spooled blobs of a process apart (an answer that starts over writes anew).
_spooled = itertools.count()


def sizes_of(manifest: p.Manifest) -> dict[str, int | None]:
    """The size of each blob a tree lists (None where two of its files with that
    content disagree: no size is then right)."""
    sizes: dict[str, int | None] = {}
    for entry in manifest.values():
        sizes[entry.sha] = entry.size if sizes.get(entry.sha, entry.size) == entry.size else None
    return sizes


class TemporaryFileError(MinigitError):
    """The received content could not be kept in a temporary file."""

    def __init__(self, error: OSError) -> None:
        super().__init__(
            f"cannot keep the received content in a temporary file: {error.strerror or error}",
            hint=f"free some space in {tempfile.gettempdir()} (or set TMPDIR to another directory) and run it again",
        )


class BadTree(Exception):
    """The tree of an answer, complete and matching its id, is not a valid tree.
    It is what the service meant to send (another replica holds the same tree
    under that id): the command stops with ``error`` rather than wait."""

    def __init__(self, error: MinigitError) -> None:
        super().__init__(error.message)
        self.error = error


def decode_received_tree(blob: ReceivedBlob) -> p.Manifest:
    """The manifest of a received tree; BadTree if it is not a valid tree."""
    try:
        return p.decode_tree(blob.read())
    except UnsafePath as error:
        raise BadTree(error) from None  # a path that would escape the working directory, as everywhere
    except (MinigitError, ValueError) as error:
        detail = error.message if isinstance(error, MinigitError) else str(error)
        message = f"the service sent a malformed answer: its tree {blob.sha[:12]} does not decode: {detail}"
        raise BadTree(ProtocolError(message)) from None


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
    that breaks (a piece out of order, content that does not match its hash, a
    blob its tree does not call for: see ``_Answer``) was never news:
    ``reached`` and ``last_news`` go back to what they were before it began. An
    answer sent again from the start (after a failover, or because the request
    was sent again) is news only once it gets further than the one before: a
    service that keeps starting answers it never finishes cannot hold the
    command forever.
    """

    def __init__(
        self,
        request_id: str,
        observer: Observer,
        clock: Callable[[], float] = time.monotonic,
        guard: ReplyGuard | None = None,
        spool: Path | None = None,
    ) -> None:
        self.request_id = request_id
        self.guard = guard
        self.spool = spool
        self.observer = observer
        self.clock = clock
        self.answer: _Answer | None = None
        self.reached = 0
        self.last_news = clock()
        self.last_alive = self.last_news  # the last valid reply or piece of this request, news or not
        # the same but upload notices: a replica notices any chunk naming the request, which anyone may send
        self.last_heard = self.last_news
        self.broken: list[str] = []  # why each dropped answer broke

    def feed(self, value: bytes) -> bool:
        """Take one record; return whether it is news of this request's answer.
        Raise ProtocolError if it is a malformed answer to this request (or
        UnsafePath, for a tree with an unsafe path): waiting longer would not
        mend it."""
        try:
            message = p.parse_message(value, allowed=p.REPLY_TYPES)
        except MinigitError as error:
            if p.peek_request_id(value) != self.request_id:
                return False  # someone else's garbage is not our answer
            if self.guard is not None:
                # unsigned, since unreadable: anyone who may write the topic could have sent it
                self.broken.append(f"an unreadable record came ({error.message})")
                return False
            self.abandon()
            raise ProtocolError(f"the service sent a malformed answer: {error.message}") from None
        if message.request_id != self.request_id:
            return False
        if self.guard is not None and (message := self._guarded(message)) is None:
            return False
        if isinstance(message, p.Reply):
            self.last_alive = self.clock()
            if message.status == p.Status.WORKING and message.action == p.UPLOAD_NOTICE:
                return False  # a replica is taking in the upload; the request has not arrived
            self.last_heard = self.last_alive
            if message.status == p.Status.WORKING:
                return self._advance(WORKING_STEP)
            self.abandon()
            self.answer = _Answer(message, self.observer, (self.reached, self.last_news), self.spool)
            return self._advance(self.answer.steps)
        if self.answer is None or message.stream != self.answer.reply.stream:
            return False
        try:
            self.answer.add(message)
        except BadTree as bad:
            self.abandon()
            raise bad.error from None
        except ProtocolError as error:
            log.warning("dropping a broken answer: %s", error.message)
            self.broken.append(error.message)
            self.reached, self.last_news = self.answer.before
            self.abandon()
            return False
        self.last_alive = self.last_heard = self.clock()
        return self._advance(self.answer.steps)

    def _guarded(self, message: p.Message) -> p.Message | None:
        """The record to use: opened if sealed, a reply only if the service signed
        it; None (and why, in ``broken``) for one the service did not send."""
        try:
            if isinstance(message, p.Sealed):
                message = self.guard.open(message)
        except MinigitError as error:
            self.broken.append(error.message)
            return None
        if isinstance(message, p.Reply) and (problem := self.guard.check(message)) is not None:
            log.info("ignoring a reply: %s", problem)  # said once, at the end, if nothing else came
            self.broken.append(problem)
            return None
        return message

    def _advance(self, steps: int) -> bool:
        if steps <= self.reached:
            return False
        self.reached, self.last_news = steps, self.clock()
        return True

    @property
    def response(self) -> Response | None:
        """The whole answer, once its last blob has arrived."""
        if self.answer is not None and self.answer.complete:
            return Response(self.answer.reply, self.answer.done, self.answer.manifest)
        return None

    def abandon(self) -> None:
        """Drop an answer in progress (cut off: its replica died); wait for the next."""
        if self.answer is not None:
            self.answer.discard()
            self.answer = None


# ---------------------------------------------------------------- waiting


def attempt_window(timeout: float) -> float:
    """The longest silence after which a request is sent again (same id)."""
    return max(5.0, timeout / 3)


# The first silence after which a request is sent again, to another replica: a
# live replica says "working", or answers, within milliseconds; one that died
# keeps its partitions until the consumer group notices (seconds).
HEDGE_AFTER_S = 1.0
# The pace at which a replica takes in an upload it was sent: the first hedge
# of a request with uploads waits this much longer per byte uploaded, and per
# record: a replica copies each chunk record into the log before it reaches the
# request, so 10,000 small files take seconds to take in for few bytes.
UPLOAD_INTAKE_BYTES_PER_S = 32 * 1024 * 1024
UPLOAD_INTAKE_RECORDS_PER_S = 1000


def resend_delay(
    attempt: int, timeout: float, upload_bytes: int = 0, answering: bool = False, upload_records: int = 0
) -> float:
    """Seconds of silence after which attempt number ``attempt`` (1, 2, ...) is
    sent. While no answer has begun: the hedge first, then doubling, up to the
    attempt window. While an answer is coming (``answering``), its replica is
    alive: only a whole attempt window of silence sends the request again."""
    window = attempt_window(timeout)
    if answering:
        return window
    hedge = HEDGE_AFTER_S + upload_bytes / UPLOAD_INTAKE_BYTES_PER_S + upload_records / UPLOAD_INTAKE_RECORDS_PER_S
    return min(hedge * 2 ** (attempt - 1), max(hedge, window))


def resend_due(
    collector: ReplyCollector,
    attempt: int,
    sent: float,
    broken: int,
    timeout: float,
    upload_bytes: int,
    upload_records: int = 0,
) -> float:
    """When attempt number ``attempt`` is due, the last having been sent at
    ``sent`` when ``broken`` answers had broken. An answer coming (its reply
    received) is waited for until a window without news; a request no replica
    has begun to answer is hedged after a short silence; so is one whose answer
    broke since it was last sent (it came from a replica that serves damage)."""
    if len(collector.broken) > broken:
        return sent + resend_delay(attempt, timeout, upload_bytes, upload_records=upload_records)
    if collector.answer is not None:
        return max(sent, collector.last_news) + resend_delay(attempt, timeout, upload_bytes, answering=True)
    delay = resend_delay(attempt, timeout, upload_bytes, upload_records=upload_records)
    # Upload notices prove nothing of the request's replica (a chunk naming the request, which
    # anyone may send, gets one): they hold the hedge off one attempt window at most.
    noticed = min(collector.last_alive, sent + delay + attempt_window(timeout))
    return max(sent, collector.last_heard, noticed) + delay


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
    send: Callable[[int], None],
    poll: Callable[[float], Iterable[bytes]],
    timeout: float,
    observer: Observer,
    clock: Callable[[], float] | None = None,
    upload_bytes: int = 0,
    guard: ReplyGuard | None = None,
    upload_records: int = 0,
    spool: Path | None = None,
    send_request: Callable[[int], None] | None = None,
) -> Response:
    """Send a request and wait for its answer (its blobs written into ``spool``,
    when given: see ``_Answer``).

    ``send(attempt)`` sends the request (its uploads, then the request itself):
    attempt 0 first, then 1, 2, ... each to the next partition of the requests
    topic, so to another replica (hedging: the server's outcome table makes a
    request sent twice harmless, whichever replicas answer it). ``poll(seconds)``
    returns the records of the reply partition that arrive within at most
    ``seconds``. A request is sent again after a silence of ``resend_delay``
    (about a second while no answer has begun; see ``resend_due``). After ``timeout``
    seconds without news (ReplyCollector) the command gives up with
    ServerUnreachable, within a poll of that moment.

    Once the request itself has reached a replica (a ``working`` reply that is not
    an upload notice), that replica had taken its upload into the log, which every
    replica reads: later attempts go through ``send_request(attempt)``, which sends
    the request alone, when given, and are not delayed for the upload's size.
    """
    waited = _WaitingClock(clock or time.monotonic)
    collector = ReplyCollector(request_id, observer, waited, guard, spool)
    attempt = 0
    try:
        with waited.paused():
            send(attempt)
        observer.waiting()
        sent, broken = waited(), 0
        while True:
            now = waited()
            if now - collector.last_news >= timeout:
                if guard is not None and guard.key_changed is not None and collector.reached == 0:
                    raise guard.key_changed  # only replies by another key came: that is the news
                raise no_answer(timeout, collector.broken)
            uploaded = collector.reached >= WORKING_STEP  # into the log, by the replica that said so
            due = resend_due(
                collector,
                attempt + 1,
                sent,
                broken,
                timeout,
                0 if uploaded else upload_bytes,
                0 if uploaded else upload_records,
            )
            if now >= due:
                attempt += 1
                log.info("no answer to %s after %.1fs; sending it again (attempt %d)", request_id, now - sent, attempt)
                with waited.paused():
                    (send_request if uploaded and send_request is not None else send)(attempt)
                observer.waiting()
                sent, broken = waited(), len(collector.broken)
                continue
            for value in poll(max(0.001, min(collector.last_news + timeout, due) - now)):
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
