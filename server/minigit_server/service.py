"""Answering requests, outside the consume loop: parse, decide, reply. Writes
go through the replication log and are answered only once this replica has
applied them; reads wait for the log end seen on arrival.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from minigit import identity, sealing
from minigit import protocol as p
from minigit.config import DEFAULT_MAX_PUSH_BYTES as DEFAULT_MAX_PUSH_BYTES
from minigit.errors import MinigitError
from minigit.protocol import Status
from minigit_server import access, decisions
from minigit_server.apply import Authority, LogRecord, apply_chunk, apply_records, repo_access
from minigit_server.serving import LogEndBarrier
from minigit_server.store import DamageRecord, Store

log = logging.getLogger("minigit.service")

# Bounds a log reply's entries, as their JSON is written (escapes included), so that
# the reply is one record under Kafka's 1 MiB, sealed too (base64: 4/3 of it).
MAX_LOG_REPLY_BYTES = 600_000
# What the push limit counts for a chunk record at least, however small its payload.
RECORD_CHARGE = 1024
APPLY_WAIT_S = 120.0
# Bytes a replica hands its producer and lets wait for the broker, at most: of one
# answer (a clone of 1 GiB), and of the uploads it copies into the log. kafka-python's
# producer bounds nothing (3.0 has no buffer.memory): a replica that reads its store,
# or the requests topic, faster than the broker takes records held what it read.
ANSWER_WINDOW_BYTES = 8 * 1024 * 1024
INTAKE_WINDOW_BYTES = 16 * 1024 * 1024
# How long a repair may read the log for one object before it gives up.
REPAIR_WAIT_S = 300.0


class AppliedOffsets:
    """The next log offset this replica will apply, per partition; request
    handlers wait on it (the read barrier, and "answer after apply")."""

    # How often a waiting handler looks at ``stopping``.
    STOP_CHECK_S = 0.5

    def __init__(self, initial: dict[int, int], stopping: threading.Event | None = None) -> None:
        self._offsets = dict(initial)
        self._changed = threading.Condition()
        self._stopping = stopping or threading.Event()

    def advance(self, offsets: dict[int, int]) -> None:
        with self._changed:
            for partition, offset in offsets.items():
                if offset > self._offsets.get(partition, 0):
                    self._offsets[partition] = offset
            self._changed.notify_all()

    def wait_for(self, partition: int, offset: int, timeout: float) -> bool:
        """Whether ``offset`` is applied within ``timeout``; False at once when the
        replica stops (its apply loop is gone: nothing would come)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (done := self._offsets.get(partition, 0) >= offset):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    return False
                self._changed.wait(min(remaining, self.STOP_CHECK_S))
            return done

    def snapshot(self) -> dict[int, int]:
        with self._changed:
            return dict(self._offsets)


class Wire(Protocol):
    """What the handlers need from Kafka (minigit_server.bus.Bus provides it)."""

    def append_log(self, partition: int, key: bytes, value: bytes, wait: bool) -> int | None: ...
    def send_reply(self, partition: int, message: p.Message) -> None: ...
    def log_end_offsets(self, partitions: list[int] | None = None) -> dict[int, int]: ...
    def log_partition(self, repo: str) -> int: ...
    def reply_partitions(self) -> int: ...
    def log_partition_count(self) -> int: ...
    def flush(self) -> None: ...
    def scan_log(self, partition: int, end_offset: int, timeout_s: float) -> Iterator[LogRecord]:
        """Records of one log partition from its first offset up to ``end_offset``."""


@dataclass(frozen=True)
class ServerIdentity:
    """Who the service is: its namespace and its Ed25519 key (the same on every
    replica: it attests users' keys in the log and signs replies)."""

    namespace: str
    key: Ed25519PrivateKey

    @property
    def public_key(self) -> str:
        return identity.public_key_text(self.key.public_key())

    @property
    def authority(self) -> Authority:
        return Authority(self.namespace, self.public_key)

    @classmethod
    def generate(cls, namespace: str = "") -> ServerIdentity:
        """A fresh one (tests, and in-process use)."""
        return cls(namespace, identity.generate_private_key())


class MemoryWire:
    """The Wire in memory, for tests and in-process use: a log whose every append
    is applied to ``store`` at once (a replica that is always caught up), and the
    replies kept in the order they were sent, with their partition."""

    def __init__(
        self,
        store: Store,
        applied: AppliedOffsets,
        log_partitions: int = 3,
        reply_partitions: int = 8,
        *,
        authority: Authority,
    ):
        self.store, self.applied, self.authority = store, applied, authority
        self.log_partitions, self.reply_partition_count = log_partitions, reply_partitions
        self.log: dict[int, list[bytes]] = {}
        self.replies: list[tuple[int, p.Message]] = []

    def append_log(self, partition: int, key: bytes, value: bytes, wait: bool) -> int:
        records = self.log.setdefault(partition, [])
        records.append(value)
        apply_records(self.store, [LogRecord(partition, len(records) - 1, value)], self.log_partitions, self.authority)
        self.applied.advance({partition: len(records)})
        return len(records) - 1

    def send_reply(self, partition: int, message: p.Message) -> None:
        self.replies.append((partition, message))

    def log_end_offsets(self, partitions: list[int] | None = None) -> dict[int, int]:
        return {n: len(self.log.get(n, [])) for n in partitions or self.log}

    def log_partition(self, repo: str) -> int:
        return p.log_partition(repo, self.log_partitions)

    def reply_partitions(self) -> int:
        return self.reply_partition_count

    def log_partition_count(self) -> int:
        return self.log_partitions

    def flush(self) -> None:
        pass

    def scan_log(self, partition: int, end_offset: int, timeout_s: float) -> Iterator[LogRecord]:
        for offset, value in enumerate(self.log.get(partition, [])[:end_offset]):
            yield LogRecord(partition, offset, value)


class UploadMeter:
    """Bytes uploaded per request (as stored: compressed, each chunk counted once
    however often a retry sends it), against the server's push size limit, and when
    the request's client was last told its upload is being taken in (``notice_due``).
    It keeps the requests in flight only, and forgets the oldest beyond a bound."""

    def __init__(self, limit: int, tracked: int = 1000) -> None:
        self.limit, self.tracked = limit, tracked
        # request id -> bytes counted, the pieces counted, when its last notice went (ms; None: never)
        self._seen: collections.OrderedDict[str, tuple[int, set[tuple[str, int]], int | None]] = (
            collections.OrderedDict()
        )

    def admit(self, chunk: p.Chunk) -> bool:
        """Count the chunk; False once its request is over the limit."""
        total, seen, noticed = self._seen.pop(chunk.request_id, (0, set(), None))
        if (chunk.sha, chunk.index) not in seen:
            seen.add((chunk.sha, chunk.index))
            total += max(len(chunk.payload), RECORD_CHARGE)  # an empty chunk is a record too
        self._seen[chunk.request_id] = (total, seen, noticed)
        while len(self._seen) > self.tracked:
            self._seen.popitem(last=False)
        return total <= self.limit

    def notice_due(self, request_id: str, now_ms: int) -> int | None:
        """The bytes taken in for ``request_id`` if a notice is due now (the first
        chunk, then at most one per UPLOAD_NOTICE_S), and mark it sent; else None."""
        found = self._seen.get(request_id)
        if found is None:
            return None
        total, seen, noticed = found
        if noticed is not None and 0 <= now_ms - noticed < p.UPLOAD_NOTICE_S * 1000:
            return None
        self._seen[request_id] = (total, seen, now_ms)
        return total

    def settle(self, request_id: str) -> int:
        """Forget a request that arrived; the bytes it uploaded."""
        total, _, _ = self._seen.pop(request_id, (0, set(), None))
        return total


class Unanswered(enum.StrEnum):
    """Why a request got no answer (the client retries, or gives up)."""

    MALFORMED = "malformed"  # unreadable; answered "invalid" when it says where to
    EXPIRED = "expired"  # its client has given up already
    STALLED = "stalled"  # the log was not applied in time
    DAMAGED = "damaged"  # an object it needs failed its hash and could not be repaired
    FAILED = "failed"  # handling it raised; see the replica's log


@dataclass
class ScrubTally:
    """What one scrub pass has read so far."""

    started_ms: int
    objects: int = 0
    bytes: int = 0
    damaged: list[p.DamagedObject] = field(default_factory=list)
    damaged_count: int = 0

    def report(self, request: str, finished_ms: int) -> p.ScrubReport:
        return p.ScrubReport(
            request=request,
            started_ms=self.started_ms,
            finished_ms=finished_ms,
            objects=self.objects,
            bytes=self.bytes,
            damaged=self.damaged[: p.MAX_DAMAGE_LISTED],
            damaged_count=self.damaged_count,
        )


class Integrity:
    """A replica serves only bytes that match their hash. A stored blob that does
    not is quarantined (the ``damaged`` table), logged at ERROR, and rebuilt from
    the log: its chunk records are replayed through the applier into an empty
    scratch store, so a repair writes exactly what applying the log wrote, and
    nothing else. Shared by the serve thread and the scrub thread."""

    SCRUB_PAGE = 200

    def __init__(self, store: Store, wire: Wire, applied: AppliedOffsets, clock_ms: Callable[[], int]) -> None:
        self.store, self.wire, self.applied, self.clock_ms = store, wire, applied, clock_ms

    def ensure_sound(self, partition: int, sha: str, why: str) -> bool:
        """True once the stored blob matches its name, repaired if need be."""
        problem = self.store.check_blob(partition, sha)
        return problem is None or self.quarantine_and_repair(partition, sha, problem, why)

    def quarantine_and_repair(self, partition: int, sha: str, problem: str, why: str) -> bool:
        problem = problem[: p.MAX_PROBLEM_LENGTH]
        self.store.mark_damaged(DamageRecord(partition, sha, problem, self.clock_ms()))
        log.error(
            "DAMAGED object %s (log partition %d) found while %s: %s; quarantined, repairing from the log",
            sha,
            partition,
            why,
            problem,
        )
        try:
            repaired = self.repair(partition, sha)
        except Exception:  # Kafka or a bug: the object stays quarantined, never served
            log.exception("repair of object %s failed", sha)
            repaired = False
        if not repaired:
            log.error(
                "object %s (log partition %d) could not be repaired: stays quarantined and is not served",
                sha,
                partition,
            )
            return False
        self.store.mark_repaired(partition, sha, self.clock_ms())
        log.error("REPAIRED object %s (log partition %d) from the log; it matches its hash again", sha, partition)
        return True

    def repair(self, partition: int, sha: str) -> bool:
        """Rebuild one blob from its chunk records in the log, as applying them did."""
        end = self.applied.snapshot().get(partition, 0)  # the blob was complete by then
        token = sha.encode()
        with self.store.scratch() as scratch:
            for record in self.wire.scan_log(partition, end, REPAIR_WAIT_S):
                if record.value is None or token not in record.value:  # a tombstone; another blob: skip unparsed
                    continue
                try:
                    message = p.parse_message(record.value, allowed=(p.Chunk,))
                except MinigitError:
                    continue
                if message.sha == sha and self.wire.log_partition(message.repo) == partition:
                    apply_chunk(scratch, partition, message)
                    if scratch.blob_size(partition, sha) is not None:
                        break
            size, count = scratch.blob_size(partition, sha), scratch.blob_chunk_count(partition, sha)
            if size is None or count is None:
                return False
            self.store.restore_blob(partition, sha, size, count, scratch.iter_chunks(partition, sha, count))
        return self.store.check_blob(partition, sha) is None

    def scrub(self, pace: Callable[[int], object], should_stop: Callable[[], bool]) -> ScrubTally | None:
        """Read and hash every stored blob, repairing what is damaged; None if stopped
        before the end. ``pace`` gets the bytes of each piece as it is read."""
        tally, after = ScrubTally(self.clock_ms()), None
        while page := self.store.list_blobs(after, self.SCRUB_PAGE):
            for partition, sha in page:
                if should_stop():
                    return None

                def counted(size: int) -> None:
                    tally.bytes += size
                    pace(size)

                problem = self.store.check_blob(partition, sha, counted)
                if problem is not None and not self.store.holds(partition, sha):
                    continue  # collected since it was listed: not damage, and not to be repaired
                tally.objects += 1
                if problem is not None:
                    repaired = self.quarantine_and_repair(partition, sha, problem, "scrubbing")
                    tally.damaged_count += 1
                    if len(tally.damaged) < p.MAX_DAMAGE_LISTED:
                        found = p.DamagedObject(
                            partition=partition, sha=sha, problem=problem[: p.MAX_PROBLEM_LENGTH], repaired=repaired
                        )
                        tally.damaged.append(found)
            after = page[-1]
        return tally

    def quarantined(self) -> tuple[list[p.DamagedObject], int]:
        """The objects quarantined now (bounded list, full count)."""
        found = self.store.list_damage(quarantined_only=True)
        listed = [
            p.DamagedObject(partition=d.partition, sha=d.sha, problem=d.problem, repaired=False)
            for d in found[: p.MAX_DAMAGE_LISTED]
        ]
        return listed, len(found)


class ChangesCache:
    """What versions changed, as computed lately, by the ids of the two trees compared
    (a pair of trees has the same changes forever, in any repository). A log asked
    again, or sent again by a client that heard nothing yet (a read is hedged after a
    second), is answered without reading the trees again. Bounded by the changes it
    holds: the least recently used pairs go first."""

    def __init__(self, max_changes: int = 100_000) -> None:
        self.max_changes = max_changes
        self._pairs: collections.OrderedDict[tuple[str, str], list[p.FileChange]] = collections.OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def get(self, old: str, new: str) -> list[p.FileChange] | None:
        with self._lock:
            found = self._pairs.get((old, new))
            if found is not None:
                self._pairs.move_to_end((old, new))
            return found

    def put(self, old: str, new: str, changes: list[p.FileChange]) -> None:
        size = max(1, len(changes))
        if size > self.max_changes:
            return
        with self._lock:
            if (old, new) in self._pairs:
                return
            self._pairs[(old, new)] = changes
            self._held += size
            while self._held > self.max_changes:
                _, dropped = self._pairs.popitem(last=False)
                self._held -= max(1, len(dropped))


class Pace:
    """Holds a reader to ``bytes_per_s`` (None: as fast as it can)."""

    def __init__(
        self,
        bytes_per_s: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.bytes_per_s, self.clock, self.sleep = bytes_per_s, clock, sleep
        self.started, self.total = clock(), 0

    def __call__(self, size: int) -> None:
        if not self.bytes_per_s:
            return
        self.total += size
        ahead = self.total / self.bytes_per_s - (self.clock() - self.started)
        if ahead > 0:
            self.sleep(ahead)


class Queued(enum.Enum):
    """A request handed to ``Service.handle``'s ``defer``: answered later, by its job."""

    QUEUED = "queued"


QUEUED = Queued.QUEUED


@dataclass(frozen=True)
class Handled:
    """What happened to one record, for the request log."""

    user: str
    action: str
    repo: str
    status: Status | Unanswered
    detail: str = ""

    @classmethod
    def of(cls, request: p.Request, status: Status | Unanswered, detail: str = "") -> Handled:
        return cls(request.user, request.action, request.repo, status, detail)


class Service:
    def __init__(
        self,
        replica_id: str,
        store: Store,
        wire: Wire,
        applied: AppliedOffsets,
        server: ServerIdentity,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        max_push_bytes: int = DEFAULT_MAX_PUSH_BYTES,
        registration_open: bool = True,
    ) -> None:
        self.replica_id = replica_id
        self.store = store
        self.wire = wire
        self.applied = applied
        self.server = server
        self.registration_open = registration_open
        self.clock_ms = clock_ms
        self.uploads = UploadMeter(max_push_bytes)
        self.integrity = Integrity(store, wire, applied, clock_ms)
        self.changes = ChangesCache()
        # every partition's end in one lookup: a read of any repository may share it
        self.log_ends = LogEndBarrier(lambda: self.wire.log_end_offsets())
        self._serving = threading.local()  # the request a worker thread serves: when it arrived
        self.intake_unflushed = 0  # upload bytes appended by ``handle`` since its last flush

    # -- dispatch

    def handle(
        self, timestamp_ms: int, value: bytes, defer: Callable[[Callable[[], Handled]], object] | None = None
    ) -> Handled | Queued | None:
        """Handle one record of repo-requests. Writes and reads of a repository
        use its own log partition, whichever request partition brought them.

        What the record's order matters for is done here, in the caller's thread:
        a chunk goes to the log before the request that follows it. The request is
        then answered at once, or, with ``defer``, handed to it as a job
        (``defer(job)``; the job returns the ``Handled``) and QUEUED is returned."""
        try:
            message = p.parse_message(value, allowed=p.REQUEST_TYPES)
        except MinigitError as error:
            return self.reject_malformed(value, error)
        partition = self.wire.log_partition(message.repo)
        if isinstance(message, p.Chunk):
            # Straight into the log: blob pieces are stored by every replica as
            # they are applied; the request that follows refers to them. Past the
            # push size limit they are dropped, and the request is refused.
            if self.uploads.admit(message):
                self.wire.append_log(partition, message.repo.encode(), value, wait=False)
                self.notice_upload(message)
                self.intake_unflushed += len(value)
                if self.intake_unflushed > INTAKE_WINDOW_BYTES:
                    self.wire.flush()  # the caller's records: the intake keeps the broker's pace
                    self.intake_unflushed = 0
            return None
        request = message
        uploaded = self.uploads.settle(request.request_id)
        if request.reply_partition >= self.wire.reply_partitions():
            detail = f"reply_partition {request.reply_partition} does not exist; not answered"
            return Handled.of(request, Unanswered.MALFORMED, detail)
        if timestamp_ms + request.timeout_ms < self.clock_ms():
            return Handled.of(request, Unanswered.EXPIRED, "client gave up; not answered")
        job = functools.partial(self.serve, partition, request, uploaded, time.monotonic())
        if defer is None:
            return job()
        defer(job)
        return QUEUED

    def notice_upload(self, chunk: p.Chunk) -> None:
        """Tell the client its upload is being taken in (a ``working`` reply with
        action UPLOAD_NOTICE, at most every UPLOAD_NOTICE_S), where its chunks say:
        the request comes after them, and a client that heard nothing for a second
        would send the whole upload again to another replica. Not sealed: it says
        nothing but the request id and a byte count."""
        if chunk.reply_partition is None or chunk.reply_partition >= self.wire.reply_partitions():
            return
        taken = self.uploads.notice_due(chunk.request_id, self.clock_ms())
        if taken is not None:
            message = f"taking in the upload: {taken} bytes so far"
            self.reply(chunk.reply_partition, chunk.request_id, p.UPLOAD_NOTICE, Status.WORKING, message)

    def serve(self, partition: int, request: p.Request, uploaded: int, arrived: float) -> Handled:
        """Answer a request taken in at ``arrived`` (monotonic): on the serve loop's
        worker threads, several at once. Its read barrier needs a log end looked up
        after ``arrived``, and shares it with the other reads (``LogEndBarrier``)."""
        self._serving.arrived = arrived
        try:
            key = self.authenticate(request)
            return HANDLERS[type(request)](self, partition, request, Author(key, uploaded))
        except access.Refused as refused:
            self.answer(request, refused.refusal.status, refused.refusal.text)
            self.wire.flush()
            return Handled.of(request, refused.refusal.status, refused.refusal.message)
        except LogStalled:
            return Handled.of(request, Unanswered.STALLED, "accounts not applied in time; not answered")
        finally:
            self._serving.arrived = None

    # -- who asks

    def authenticate(self, request: p.Request) -> str:
        """The key that signed ``request``, registered to its user (or, for a
        registration, the key it registers); ``access.Refused`` if there is none."""
        namespace = self.server.namespace
        if isinstance(request, p.PingRequest):
            return ""  # decides and reveals nothing but who serves: answered whoever asks (minigit-server ping)
        if not request.signature:  # said first: an unsigned request has no signing time either
            raise access.Refused(access.UNSIGNED)
        if (stale := access.check_fresh(request.signed_ms, self.clock_ms())) is not None:
            raise access.Refused(stale)
        if isinstance(request, p.RegisterRequest):
            if not self.registration_open:
                raise access.Refused(access.REGISTRATION_CLOSED)
            if not identity.request_signed_by(request.public_key, request, namespace):
                raise access.Refused(access.Refusal(Status.UNAUTHENTICATED, "not signed by the key it registers"))
            return request.public_key
        account = self.account_of(request.user)
        if (refusal := access.check_signed(request, account, namespace)) is not None:
            raise access.Refused(refusal)
        return account.key

    def account_of(self, user: str) -> access.Account | None:
        """The user's account, once everything in the log of the name's partition
        as of now is applied (a registration just answered elsewhere counts)."""
        home = self.wire.log_partition(user)
        if not self.catch_up(home):
            raise LogStalled(home)
        return self.store.get_account(user)

    def denied(self, request: p.Request, partition: int) -> Handled | None:
        """Refuse a request its user may not make on its repository (after catch_up)."""
        repo = self.store.get_repo(request.repo)
        if repo is None:
            return None
        refusal = access.check_permission(request.user, request.action, request.repo, repo_access(self.store, repo))
        if refusal is not None:
            self.answer(request, refusal.status, refusal.text)
            self.wire.flush()
            return Handled.of(request, refusal.status, refusal.message)
        if repo.visibility == p.Visibility.PRIVATE and self.sealer_for(request) is None:
            message = "a private repository's content is sent sealed, and this request has no valid reply_key"
            self.answer(request, Status.INVALID, message)
            self.wire.flush()
            return Handled.of(request, Status.INVALID, message)
        return None

    def reject_malformed(self, value: bytes, error: MinigitError) -> Handled:
        address = p.peek_reply_address(value)
        if address is not None and address[1] >= self.wire.reply_partitions():
            address = None
        if address is not None:
            request_id, reply_partition = address
            self.reply(reply_partition, request_id, "unknown", Status.INVALID, f"bad request: {error.message}")
            self.wire.flush()
        detail = error.message + ("" if address else " (no reply address)")
        return Handled("?", "?", "?", Unanswered.MALFORMED, detail)

    def reply(
        self,
        partition: int,
        request_id: str,
        action: str,
        status: Status,
        message: str = "",
        sealer: sealing.StreamSealer | None = None,
        **fields,
    ) -> p.Reply:
        """Send a reply signed with the service's key (sealed, with ``sealer``)."""
        reply = p.Reply(
            request_id=request_id,
            action=action,
            stream=sealer.stream if sealer else uuid.uuid4().hex,
            replica=self.replica_id,
            status=status,
            message=message,
            **fields,
        )
        reply = sealing.sign_reply(self.server.key, reply, self.server.namespace)
        self.wire.send_reply(partition, sealer.seal(reply) if sealer else reply)
        return reply

    def answer(self, request: p.Request, status: Status, message: str = "", **fields) -> p.Reply:
        """Answer ``request``; about a private repository, sealed to its reply key
        (a request without one is refused), so other readers of the reply topic
        learn nothing of it."""
        sealer = self.sealer_for(request)
        return self.reply(
            request.reply_partition, request.request_id, request.action, status, message, sealer, **fields
        )

    def sealer_for(self, request: p.Request) -> sealing.StreamSealer | None:
        repo = self.store.get_repo(request.repo)
        if repo is None or repo.visibility != p.Visibility.PRIVATE or not request.reply_key:
            return None
        try:
            return sealing.StreamSealer(request.reply_key, request.request_id, uuid.uuid4().hex)
        except MinigitError:
            return None  # not a reply key: answered in clear, and a read is refused (Service.denied)

    def catch_up(self, partition: int) -> bool:
        """The read barrier: apply everything in the log as of the request's arrival
        (as of now outside ``serve``) before reading. The log's end comes from a
        lookup that started after that, shared with the reads around it."""
        arrived = getattr(self._serving, "arrived", None)
        ends = self.log_ends.ends_since(time.monotonic() if arrived is None else arrived)
        return self.applied.wait_for(partition, ends.get(partition, 0), APPLY_WAIT_S)

    # -- reads

    def handle_ping(self, partition: int, request: p.PingRequest, author: Author) -> Handled:
        self.answer(request, Status.OK, f"replica {self.replica_id} serves {request.repo} (log partition {partition})")
        self.wire.flush()
        return Handled.of(request, Status.OK)

    def handle_pull(self, partition: int, request: p.PullRequest, author: Author) -> Handled:
        if not self.catch_up(partition):
            return Handled.of(request, Unanswered.STALLED, "log not applied in time; not answered")
        if (refused := self.denied(request, partition)) is not None:
            return refused
        repo = self.store.get_repo(request.repo)
        base = self.store.get_version(request.repo, request.version) if repo and request.version else None
        decision = decisions.decide_pull(
            repo.head if repo else None, request.version, request.target, request.base_tree, base.tree if base else None
        )
        if decision.status != Status.OK:
            self.answer(request, decision.status, decision.message, head=decision.head, version=decision.head)
            self.wire.flush()
            return Handled.of(request, decision.status, f"v{request.version}")
        target = self.store.get_version(request.repo, decision.version)
        # Every object is checked against its hash before a byte is sent (read twice:
        # the store is local), so a damaged one is repaired first or not sent at all.
        why = f"serving {request.action} of {request.repo}"
        for tree in {target.tree} | ({base.tree} if base else set()):
            if not self.integrity.ensure_sound(partition, tree, why):
                return Handled.of(request, Unanswered.DAMAGED, f"object {tree[:12]} damaged; not answered")
        old = self.store.read_manifest(request.repo, request.version)
        new = self.store.read_manifest(request.repo, decision.version)
        wanted = [(target.tree, self.store.blob_size(partition, target.tree))]
        wanted += [(sha, size) for sha, size in decisions.blobs_to_send(old, new, request.lost) if sha != target.tree]
        said = time.monotonic()
        for sha, _ in wanted[1:]:
            if not self.integrity.ensure_sound(partition, sha, why):
                return Handled.of(request, Unanswered.DAMAGED, f"object {sha[:12]} damaged; not answered")
            said = self.still_working(request, said, f"checking the {len(wanted)} objects to send")
        sealer = self.sealer_for(request)  # one stream: the reply and its chunks
        reply = self.reply(
            request.reply_partition,
            request.request_id,
            request.action,
            Status.OK,
            decision.message,
            sealer,
            version=decision.version,
            head=repo.head,
            tree=target.tree,
            blob_count=len(wanted),
            blob_bytes=sum(size for _, size in wanted),
        )
        self._serving.unflushed = 0
        for sha, _ in wanted:
            self.stream_blob(partition, request, reply.stream, sha, sealer)
        self.wire.flush()
        sent = sum(size for _, size in wanted)
        detail = f"v{request.version}->v{decision.version}, {len(wanted)} objects, {sent} bytes"
        return Handled.of(request, Status.OK, detail)

    def still_working(self, request: p.Request, said: float, message: str) -> float:
        """Say "working" when UPLOAD_NOTICE_S have passed since ``said`` (a long check
        before an answer: a client that heard nothing for a second asks another
        replica, which checks and answers all over again); when it was last said."""
        now = time.monotonic()
        if now - said < p.UPLOAD_NOTICE_S:
            return said
        self.answer(request, Status.WORKING, message)
        return now

    def stream_blob(
        self, partition: int, request: p.Request, stream: str, sha: str, sealer: sealing.StreamSealer | None
    ) -> None:
        count = self.store.blob_chunk_count(partition, sha)
        for piece in self.store.iter_chunks(partition, sha, count):
            chunk = p.Chunk.of_piece(request.request_id, request.repo, sha, count, piece, stream)
            self.wire.send_reply(request.reply_partition, sealer.seal(chunk) if sealer else chunk)
            self._serving.unflushed = getattr(self._serving, "unflushed", 0) + len(piece.payload)
            if self._serving.unflushed > ANSWER_WINDOW_BYTES:
                self.wire.flush()  # this thread's records: the answer waits for the broker, not memory
                self._serving.unflushed = 0

    def handle_log(self, partition: int, request: p.LogRequest, author: Author) -> Handled:
        if not self.catch_up(partition):
            return Handled.of(request, Unanswered.STALLED, "log not applied in time; not answered")
        if (refused := self.denied(request, partition)) is not None:
            return refused
        repo = self.store.get_repo(request.repo)
        if repo is None:
            self.answer(request, Status.NOT_FOUND, "no such repository")
            self.wire.flush()
            return Handled.of(request, Status.NOT_FOUND)
        try:
            entries = decisions.fit_log(self.log_entries(partition, request), request.limit, MAX_LOG_REPLY_BYTES)
        except ObjectDamaged as damaged:
            return Handled.of(request, Unanswered.DAMAGED, f"object {damaged.sha[:12]} damaged; not answered")
        self.answer(request, Status.OK, head=repo.head, version=repo.head, entries=entries)
        self.wire.flush()
        return Handled.of(request, Status.OK, f"{len(entries)} entries")

    def log_entries(self, partition: int, request: p.LogRequest) -> Iterator[p.LogEntry]:
        """The versions a log lists, newest first, made as they are read: with paths or
        changes asked, each version's tree is read (once: it is the next one's
        predecessor), checked against its hash as it is read, unless what it changed
        was computed lately (``ChangesCache``). Trees are compared by their entries'
        bytes (``decisions.changes_between_trees``), not decoded: a version of 30,000
        files costs milliseconds, not a third of a second. Versions above ``start`` are
        not read; the caller stops after ``limit`` entries."""
        versions = self.store.list_versions(request.repo)
        by_number = {info.version: info for info in versions}
        trees: dict[int, frozenset[bytes]] = {0: frozenset()}

        def entries(version: int) -> frozenset[bytes]:
            if version not in trees:
                data = self.read_tree(partition, by_number[version].tree, f"serving log of {request.repo}")
                trees.clear()  # newest first: only the one before is needed again
                trees[0] = frozenset()
                trees[version] = p.tree_entries(data)
            return trees[version]

        for info in reversed(versions):
            if request.start and info.version > request.start:
                continue
            signed = p.SignedWrite.from_text(info.signed) if info.signed else None
            entry = p.LogEntry(
                version=info.version,
                author=info.author,
                time_ms=info.time_ms,
                message=info.message,
                signed=signed,
                tree=info.tree,
            )
            if request.paths or request.changes:
                before = by_number[info.version - 1].tree if info.version > 1 else p.EMPTY_TREE_SHA
                changes = self.changes.get(before, info.tree)
                if changes is None:
                    new = entries(info.version)
                    changes = decisions.changes_between_trees(entries(info.version - 1), new)
                    self.changes.put(before, info.tree, changes)
                if not decisions.touches(changes, request.paths):
                    continue
                if request.changes:
                    listed, more = decisions.listed_changes(changes)
                    entry = dataclasses.replace(entry, changes=listed, changes_more=more)
            yield entry

    def read_tree(self, partition: int, sha: str, why: str) -> bytes:
        """A stored tree for a read, checked against its hash as it is read (once); a
        damaged one is repaired from the log first, or ObjectDamaged."""
        try:
            data = self.store.read_blob(partition, sha)
        except MinigitError:
            data = None
        if data is None:
            if not self.integrity.ensure_sound(partition, sha, why):
                raise ObjectDamaged(sha)
            data = self.store.read_blob(partition, sha)
        return data

    def handle_repos(self, partition: int, request: p.ReposRequest, author: Author) -> Handled:
        """A page of the repositories the user may read. Repositories live in every log
        partition: each is caught up first, so the page is as of now everywhere."""
        for log_partition in range(self.wire.log_partition_count()):
            if not self.catch_up(log_partition):
                return Handled.of(request, Unanswered.STALLED, "log not applied in time; not answered")
        sealer = self.sealer_of_key(request)
        if sealer is None:  # names of private repositories travel sealed only
            message = "a repository listing is sent sealed, and this request has no valid reply_key"
            self.reply(request.reply_partition, request.request_id, request.action, Status.INVALID, message)
            self.wire.flush()
            return Handled.of(request, Status.INVALID, message)
        with self.store.snapshot():
            page, more = decisions.repos_page(request.user, self.repo_accesses(request.after), request.limit)
            listed = [self.repo_info(name, word) for name, word in page]
        message = f"{len(listed)} repositories" + (" (more follow)" if more else "")
        self.reply(
            request.reply_partition,
            request.request_id,
            request.action,
            Status.OK,
            message,
            sealer,
            repos=listed,
            more=more,
        )
        self.wire.flush()
        return Handled.of(request, Status.OK, message)

    REPOS_SCAN_PAGE = 500

    def repo_accesses(self, after: str) -> Iterator[tuple[str, access.RepoAccess]]:
        """Every repository after ``after``, by name, with who may read it (read lazily)."""
        while page := self.store.list_repos(after, self.REPOS_SCAN_PAGE):
            for repo in page:
                yield repo.name, repo_access(self.store, repo)
            after = page[-1].name

    def repo_info(self, name: str, word: str) -> p.RepoInfo:
        repo = self.store.get_repo(name)
        head = self.store.get_version(name, repo.head)
        return p.RepoInfo(
            name=name,
            head=repo.head,
            time_ms=head.time_ms,
            author=head.author,
            visibility=p.Visibility(repo.visibility),
            access=word,
        )

    def sealer_of_key(self, request: p.Request) -> sealing.StreamSealer | None:
        """A sealer to the request's reply key, whatever the repository; None if it has no usable one."""
        if not request.reply_key:
            return None
        try:
            return sealing.StreamSealer(request.reply_key, request.request_id, uuid.uuid4().hex)
        except MinigitError:
            return None

    # -- writes

    def handle_init(self, partition: int, request: p.InitRequest, author: Author) -> Handled:
        return self.propose(partition, request, p.CreateProposal, author)

    def handle_push(self, partition: int, request: p.PushRequest, author: Author) -> Handled:
        return self.propose(partition, request, p.PushProposal, author)

    def handle_share(self, partition: int, request: p.ShareRequest, author: Author) -> Handled:
        # Checked at the door only (the member's account is in another log partition):
        # access shared with a name nobody holds would go to whoever registers it first.
        # Permission first: who may not share learns nothing of which names are taken.
        if not self.catch_up(partition):
            return Handled.of(request, Unanswered.STALLED, "log not applied in time; not answered")
        if (refused := self.denied(request, partition)) is not None:
            return refused
        member = self.account_of(request.member) if request.level != p.Access.NONE else None
        if request.level != p.Access.NONE and (member is None or member.removed):
            message = f"no such user: {request.member} has no registered key; they register on first use"
            self.answer(request, Status.INVALID, message)
            self.wire.flush()
            return Handled.of(request, Status.INVALID, message)
        return self.propose(partition, request, p.ShareProposal, author)

    def handle_visibility(self, partition: int, request: p.VisibilityRequest, author: Author) -> Handled:
        return self.propose(partition, request, p.VisibilityProposal, author)

    def handle_register(self, partition: int, request: p.RegisterRequest, author: Author) -> Handled:
        return self.propose(partition, request, p.RegisterProposal, author)

    def handle_rotate(self, partition: int, request: p.RotateRequest, author: Author) -> Handled:
        return self.propose(partition, request, p.RotateProposal, author)

    def handle_outcome(self, partition: int, request: p.OutcomeRequest, author: Author) -> Handled:
        """A write: settled in the log, so every replica agrees on what became of the
        request it names, and that request can change nothing afterwards."""
        return self.propose(partition, request, p.SettleProposal, author)

    def signed_write(self, request: p.Request, author: Author) -> p.SignedWrite:
        """The request's proof of authorship, for the log: the owner stamps the key
        it checked and attests it, so every replica can check it from the record."""
        attestation = (
            ""
            if isinstance(request, p.RegisterRequest)
            else access.attest(self.server.key, self.server.namespace, request, author.key)
        )
        return p.SignedWrite(request=request.to_bytes().decode(), key=author.key, attestation=attestation)

    def propose(self, partition: int, request: p.Request, kind: type[p.Proposal], author: Author) -> Handled:
        """Append the write to the log, wait until this replica has applied it,
        and answer with the outcome that every replica reached. The owner stamps
        the time once, so every replica records the same time."""
        if author.uploaded > self.uploads.limit:
            limit = self.uploads.limit
            message = (
                f"{request.action} too large: {author.uploaded} bytes uploaded (compressed), "
                f"this server accepts at most {limit} per {request.action}"
            )
            self.answer(request, Status.INVALID, message)
            self.wire.flush()
            return Handled.of(request, Status.INVALID, "too large; not proposed")
        proposal = kind(
            **access.proposal_fields(request),
            time_ms=self.clock_ms(),
            proposer=self.replica_id,
            signed=self.signed_write(request, author),
        )
        # What the request meets under its id; a cancellation by others' settles is not its (apply_proposal).
        stored = self.stored_outcome(partition, request)
        if stored is None:
            offset = self.wire.append_log(partition, request.repo.encode(), proposal.to_bytes(), wait=True)
            # Said once the proposal is in the log, so the upload before it is too (one producer,
            # one partition, in order): a client hedges with the request alone after this.
            self.answer(request, Status.WORKING)
            if not self.applied.wait_for(partition, offset + 1, APPLY_WAIT_S):
                return Handled.of(request, Unanswered.STALLED, "not applied in time; not answered")
            stored = self.stored_outcome(partition, request)
            detail = ""
        else:
            detail = " (retry: original outcome)"
        if stored is None:  # the replicas skipped it: its proof did not hold when applied
            message = "the replicas refused the request's proof of authorship"
            self.answer(request, Status.UNAUTHENTICATED, message)
            self.wire.flush()
            return Handled.of(request, Status.UNAUTHENTICATED, message)
        # Another request may have taken this id first: answer for this one only.
        repo = self.store.get_repo(request.repo)
        result = decisions.outcome_of(stored, decisions.request_key(proposal), repo.head if repo else None)
        self.answer(request, result.status, result.message, version=result.version, head=result.head)
        self.wire.flush()
        version = f"v{result.version}" if result.version else f"head v{result.head}"
        base = f"base v{request.base}, " if isinstance(request, p.PushRequest) else ""
        return Handled.of(request, result.status, f"{base}{version}{detail}")

    def stored_outcome(self, partition: int, request: p.Request) -> dict | None:
        found = self.store.get_outcome(partition, request.request_id)
        return decisions.binding(found, request.user, request.repo)


@dataclass(frozen=True)
class Author:
    """Who sent a request, once proven: the registered key that signed it, and
    the bytes it uploaded."""

    key: str
    uploaded: int


class LogStalled(Exception):
    """The log of a partition was not applied in time to answer."""


class ObjectDamaged(Exception):
    """A stored object a read needs failed its hash and could not be repaired."""

    def __init__(self, sha: str) -> None:
        super().__init__(f"object {sha} is damaged")
        self.sha = sha


# Which method answers which request: every request class has one.
HANDLERS: dict[type[p.Request], Callable[[Service, int, p.Request, Author], Handled]] = {
    p.PingRequest: Service.handle_ping,
    p.PullRequest: Service.handle_pull,
    p.LogRequest: Service.handle_log,
    p.InitRequest: Service.handle_init,
    p.PushRequest: Service.handle_push,
    p.ShareRequest: Service.handle_share,
    p.VisibilityRequest: Service.handle_visibility,
    p.RegisterRequest: Service.handle_register,
    p.RotateRequest: Service.handle_rotate,
    p.ReposRequest: Service.handle_repos,
    p.OutcomeRequest: Service.handle_outcome,
}
