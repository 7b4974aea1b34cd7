"""One replica process: three loops around one store.

* apply: tails every partition of repo-log and applies each record, in order;
* serve: a member of the consumer group on repo-requests, answering requests
  for the partitions Kafka assigned to it (load balancing and failover);
* heartbeat: publishes who it is, what it serves, how far it applied, a
  summary of its repositories per log partition (their reports go in pages of
  their own, when they change), what it holds quarantined and its last scrub
  to repo-replicas;
* scrub: reads and hashes every stored blob, slowly in the background and at
  once when ``verify --deep`` asks, repairing damage from the log.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import os
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from minigit import protocol as p
from minigit.config import DEFAULT_LOGS, KafkaSettings, LogSettings
from minigit.errors import MinigitError, ServerUnreachable
from minigit.kafka_clients import INFRASTRUCTURE_ERRORS
from minigit_server import health
from minigit_server.apply import LogRecord, StoreDamaged, apply_records
from minigit_server.bus import Bus, RequestConsumer, RequestRecord
from minigit_server.logs import formatter_for, log_handlers
from minigit_server.metrics import ReplicaMetrics
from minigit_server.reports import RepoReporter, RepoReports
from minigit_server.server_key import load_or_create_server_key
from minigit_server.service import (
    DEFAULT_MAX_PUSH_BYTES,
    AppliedOffsets,
    Handled,
    Pace,
    ServerIdentity,
    Service,
    Unanswered,
)
from minigit_server.serving import CommitTracker
from minigit_server.store import SqliteStore, Store, StoreUnusable

Polled = TypeVar("Polled")

HEARTBEAT_INTERVAL_S = 2.0
# Requests answered at once by one replica: reads side by side, writes waiting for
# their proposal to be applied. Past MAX_IN_FLIGHT taken in and not answered, the
# serve loop takes no more (backpressure). The poll is short while some are in
# flight, so that their commits follow closely.
SERVE_WORKERS = 32
MAX_IN_FLIGHT = 64
SERVE_POLL_BUSY_S = 0.05
# How long a replica that stops, or loses its partitions, lets requests in flight end.
SERVE_DRAIN_S = 10.0
# The pause before serving again requests that met a Kafka failure.
KAFKA_RETRY_S = 1.0
# The background scrub: MiB/s it reads at (MINIGIT_SCRUB_RATE; 0 turns it off), and
# the pause between its passes. A scrub that verify --deep asks for runs at full speed.
DEFAULT_SCRUB_RATE_MIB_S = 4.0
SCRUB_PAUSE_S = 600.0
SCRUB_RETRY_S = 60.0
# A scrub request older than this is not acted on (a replica starting long after a verify).
SCRUB_REQUEST_TTL_MS = 3600 * 1000
# A request stamped further ahead than this is not acted on (it would stay fresh for ever).
SCRUB_REQUEST_SKEW_MS = 60 * 1000
# The least time between two requested full-speed passes.
SCRUB_REQUEST_GAP_S = 5.0


def scrub_request_is_fresh(request: p.ScrubRequest, answered: str | None, now_ms: int) -> bool:
    """Whether to answer a scrub request: not the one answered last, stamped within
    the last hour by the sender's clock, and not from the future."""
    age_ms = now_ms - request.requested_ms
    return request.request != answered and -SCRUB_REQUEST_SKEW_MS <= age_ms < SCRUB_REQUEST_TTL_MS


class ServiceKeyMismatch(MinigitError):
    """A replica whose service key is not the one the other replicas use."""


def scrub_rate_from_env(environ: dict[str, str] = os.environ) -> float:
    """Bytes per second of the background scrub, from MINIGIT_SCRUB_RATE (MiB/s)."""
    text = environ.get("MINIGIT_SCRUB_RATE", "").strip()
    if not text:
        return DEFAULT_SCRUB_RATE_MIB_S * 1024 * 1024
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0 <= rate < float("inf"):
        raise MinigitError(
            f"MINIGIT_SCRUB_RATE must be a number of MiB/s, 0 or more (got {text!r})",
            hint="0 turns the background scrub off; verify --deep still scrubs on demand",
        )
    return rate * 1024 * 1024


def store_path(data_dir: Path, replica_id: str) -> Path:
    return Path(data_dir) / f"replica-{replica_id}" / "store.sqlite"


def replica_log_path(data_dir: Path, replica_id: str) -> Path:
    return Path(data_dir) / f"replica-{replica_id}" / "replica.log"


def setup_logging(replica_id: str, log_file: Path, settings: LogSettings = DEFAULT_LOGS) -> logging.Logger:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in log_handlers(settings, log_file, formatter_for(settings, f"replica-{replica_id}", replica_id)):
        root.addHandler(handler)
    # kafka-python is chatty at INFO (connections, rebalances); keep its warnings.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    return logging.getLogger("minigit.replica")


def open_store(path: Path, log: logging.Logger) -> SqliteStore:
    """The replica's store; one it cannot use (another schema version, a damaged
    file) is moved aside, and a new one is rebuilt from the log."""
    try:
        return SqliteStore(path)
    except sqlite3.OperationalError as error:
        raise MinigitError(
            f"cannot open the store {path}: {error}", hint="check the data directory's permissions and free space"
        ) from None
    except StoreUnusable as error:
        aside = path.with_name(f"{path.name}.unusable-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                source.rename(aside.with_name(aside.name + suffix))
        log.error("store %s is unusable (%s): moved to %s; rebuilding from the log", path, error.reason, aside)
        return SqliteStore(path)


def store_bytes(path: Path) -> int:
    """The store's size on disk: the database and its -wal and -shm files."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):  # no -wal or -shm while the store is closed
            total += path.with_name(path.name + suffix).stat().st_size
    return total


def collect_repo_states(store: Store, reporter: RepoReporter) -> RepoReports:
    """The repositories' summaries per log partition and the report pages changed since
    ``reporter`` last published them, with the log offsets they correspond to."""
    return reporter.collect(store)


@dataclass(frozen=True)
class Answer:
    """What a worker made of one request: a Handled, or what it raised."""

    record: RequestRecord
    epoch: int
    outcome: Handled | BaseException
    seconds: float


@dataclass
class ServeState:
    """The serve loop's books: records taken in and not committed, requests in
    flight, and the answers the workers finished. ``epoch`` changes when the
    records are read again (a rewind, a rebalance): answers from before count for
    the log, not for the commit."""

    tracker: CommitTracker = field(default_factory=CommitTracker)
    answers: queue.SimpleQueue[Answer] = field(default_factory=queue.SimpleQueue)
    in_flight: int = 0
    epoch: int = 0
    kafka_failed: bool = False
    rebalanced: bool = False  # partitions were revoked: what was taken in is read again

    def forget(self) -> None:
        self.tracker.forget()
        self.epoch += 1
        self.kafka_failed = False


class Replica:
    metrics: ReplicaMetrics | None = None  # only with --metrics-port
    serve_pool: concurrent.futures.ThreadPoolExecutor | None = None  # the serve loop's workers
    reporter: RepoReporter | None = None  # made by the first heartbeat

    def __init__(
        self,
        replica_id: str,
        settings: KafkaSettings,
        data_dir: Path,
        max_push_bytes: int = DEFAULT_MAX_PUSH_BYTES,
        metrics: ReplicaMetrics | None = None,
        server_key_path: Path | None = None,
        registration_open: bool = True,
    ) -> None:
        self.replica_id = replica_id
        self.settings = settings
        self.metrics = metrics
        self.log = logging.getLogger("minigit.replica")
        self.store = open_store(store_path(data_dir, replica_id), self.log)
        self.bus = Bus(settings, client_id=f"minigit-replica-{replica_id}", flush_own_records=True)
        self.stop = threading.Event()
        # a handler waiting for the apply loop gives up when the replica stops
        self.applied = AppliedOffsets(self.store.applied_offsets(), self.stop)
        key, _ = load_or_create_server_key(Path(data_dir), server_key_path)
        self.server = ServerIdentity(settings.namespace, key)
        self.service = Service(
            replica_id,
            self.store,
            self.bus,
            self.applied,
            self.server,
            max_push_bytes=max_push_bytes,
            registration_open=registration_open,
        )
        self.failure: BaseException | None = None
        self.serving: list[int] = []
        self.kafka_failing: set[str] = set()  # the loops whose last poll failed
        self.started_ms = int(time.time() * 1000)
        self.scrub_rate = scrub_rate_from_env()
        self.last_scrub: p.ScrubReport | None = None
        self._check_partition_counts()
        self._check_service_key()

    def _check_partition_counts(self) -> None:
        topics = self.bus.topics
        requests, log_partitions = self.bus.partition_count(topics.requests), self.bus.partition_count(topics.log)
        if requests != log_partitions:
            raise RuntimeError(
                f"{topics.requests} has {requests} partitions but {topics.log} has {log_partitions}: they must match"
            )

    def _check_service_key(self) -> None:
        """Refuse to join replicas that check the log with another service key: this
        one would skip every write they apply (their proofs are attested with theirs),
        and diverge for good. A replica started alone on a new host creates a key of
        its own when none was copied there; this is where that is caught."""
        live = health.live_beats(self.bus.read_heartbeats(settle_s=0.2), int(time.time() * 1000), HEARTBEAT_INTERVAL_S)
        check = health.check_server_keys([beat for beat in live if beat.replica != self.replica_id])
        mine = health.key_fingerprint(self.server.public_key)
        if check.majority is not None and check.majority != mine:
            raise ServiceKeyMismatch(
                f"this replica's service key {mine} is not the one the running replicas use ({check.majority})",
                hint="copy the service's key file (DATA_DIR/keys/server.key of a running replica, mode 0600) "
                "here, or pass it with --server-key",
            )

    def run(self) -> None:
        """Serve until ``stop`` is set (SIGTERM) or a loop fails; then leave cleanly."""
        threads = [
            threading.Thread(target=self._guard(self.apply_loop), name="apply", daemon=True),
            threading.Thread(target=self._guard(self.heartbeat_loop), name="heartbeat", daemon=True),
            threading.Thread(target=self._guard(self.scrub_loop), name="scrub", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            self._guard(self.serve_loop)()
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=10)
            self.publish_heartbeat(stopping=True)
            self.bus.close()
            self.store.close()
        if self.failure is not None:
            raise self.failure

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except BaseException as error:
                if not self.stop.is_set():
                    self.log.exception("%s loop failed; stopping", loop.__name__)
                    self.failure = error
                self.stop.set()

        return run

    # -- loops

    def apply_loop(self) -> None:
        partitions = self.bus.partition_count(self.bus.topics.log)
        reader = self.bus.open_log_reader(self.store.applied_offsets())
        try:
            while not self.stop.is_set():
                records = self.poll_through_outages("apply", reader.poll, 0.2)
                if not records:
                    continue
                self.apply_soundly(records, partitions)
                ends: dict[int, int] = {}
                for record in records:
                    ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
                self.applied.advance(ends)
        finally:
            reader.close()

    def apply_soundly(self, records: list[LogRecord], partitions: int) -> None:
        """Apply a batch; if a decision met a damaged stored object, repair it from
        the log and apply the batch again (nothing of it was applied). Stop the
        replica, rather than decide differently from the others, if it cannot be
        repaired."""
        while True:
            try:
                apply_records(self.store, records, partitions, self.server.authority)
                return
            except StoreDamaged as damage:
                repair = self.service.integrity.quarantine_and_repair
                if not repair(damage.partition, damage.sha, damage.problem, "applying the log"):
                    raise

    def serve_loop(self) -> None:
        """Take requests in and hand them to the workers (``serve_batch``); poll
        briefly while some are in flight, so their commits follow closely."""
        consumer = self.bus.open_request_consumer(self.on_assignment, self.partitions_revoked)
        self.serve_pool = concurrent.futures.ThreadPoolExecutor(SERVE_WORKERS, thread_name_prefix="serve")
        try:
            while not self.stop.is_set():
                wait = SERVE_POLL_BUSY_S if self.serve_state().in_flight else 0.5
                self.serve_batch(consumer, self.poll_through_outages("serve", consumer.poll, wait))
        finally:
            # What is in flight ends (a write waiting for the apply loop, gone, is not
            # answered), what was answered is committed, then the group is left.
            try:
                self.drain(SERVE_DRAIN_S)
                consumer.commit_now(self.serve_state().tracker.ready())
            finally:
                self.serve_pool.shutdown(wait=False)
                consumer.close()  # leaves the group: the partitions move at once

    def poll_through_outages(self, loop: str, poll: Callable[[float], list[Polled]], seconds: float) -> list[Polled]:
        """``poll(seconds)``; nothing (after a pause) while Kafka fails: a broker
        outage is waited out, not a reason to stop. Said once per outage."""
        try:
            records = poll(seconds)
        except INFRASTRUCTURE_ERRORS as error:
            if loop not in self.kafka_failing:
                self.log.warning("%s loop: Kafka failed (%s); waiting for it", loop, error)
                self.kafka_failing.add(loop)
            self.stop.wait(KAFKA_RETRY_S)
            return []
        if loop in self.kafka_failing:
            self.kafka_failing.discard(loop)
            self.log.info("%s loop: Kafka answers again", loop)
        return records

    def serve_state(self) -> ServeState:
        state = self.__dict__.get("_serve_state")
        if state is None:
            state = self.__dict__["_serve_state"] = ServeState()
        return state

    def serve_batch(self, consumer: RequestConsumer, records: list[RequestRecord]) -> None:
        """Take in one poll's records, in order, and commit each request once answered.

        A chunk goes to the log here, before the request that follows it; a request
        goes to a worker (``serve_pool``; without one, it is answered here), several
        at once, up to MAX_IN_FLIGHT (then this waits: backpressure). A partition is
        committed up to its first request not yet answered (``CommitTracker``).

        Kafka failing (a broker outage) is not a request's fault, nor a reason to
        stop: what is in flight ends, what was answered is committed, the consumer
        is rewound to the first record of each partition not yet committed (the
        chunks before a request too), and they are served again a moment later,
        once Kafka answers. The disk or the store failing stops the replica,
        uncommitted; the supervisor restarts it."""
        state = self.serve_state()
        if state.rebalanced:  # the consumer reads from the committed offsets now
            state.rebalanced = False
            state.forget()
        for n, record in enumerate(records):
            while state.in_flight >= MAX_IN_FLIGHT and not self.stop.is_set() and not state.kafka_failed:
                self.collect_answers(wait_s=0.5)
            if self.stop.is_set():
                break
            if state.kafka_failed:
                for later in records[n:]:  # read again
                    state.tracker.received(later.partition, later.offset, request=True)
                break
            started = time.monotonic()
            defer = functools.partial(self.queue_request, record, state.epoch, started)
            try:
                handled = self.service.handle(record.timestamp_ms, record.value, defer)
            except sqlite3.DatabaseError:
                raise
            except (*INFRASTRUCTURE_ERRORS, ServerUnreachable) as error:
                self.note_kafka_failure(record, error)
                for later in records[n:]:  # read again, with the failed record
                    state.tracker.received(later.partition, later.offset, request=True)
                break
            except Exception:
                self.log.exception("request at %d@%d failed; skipped", record.partition, record.offset)
                handled = Handled("?", "?", "?", Unanswered.FAILED, "see the traceback above")
            state.tracker.received(record.partition, record.offset, request=handled is not None)
            if isinstance(handled, Handled):  # answered (or not) at once
                self.log_request(handled, record.partition, time.monotonic() - started)
                state.tracker.answered(record.partition, record.offset)
            self.collect_answers(wait_s=0)
        self.collect_answers(wait_s=0)
        if state.kafka_failed:
            self.drain(None)
            self.commit_answered(consumer)
            consumer.rewind(state.tracker.unanswered())
            state.forget()
            self.stop.wait(KAFKA_RETRY_S)
            return
        self.commit_answered(consumer)

    def queue_request(self, record: RequestRecord, epoch: int, started: float, job: Callable[[], Handled]) -> None:
        """Hand a request's job to a worker (none: answer it now)."""
        self.serve_state().in_flight += 1
        work = functools.partial(self.run_request, job, record, epoch, started)
        if self.serve_pool is None:
            work()
        else:
            self.serve_pool.submit(work)

    def run_request(self, job: Callable[[], Handled], record: RequestRecord, epoch: int, started: float) -> None:
        """On a worker: answer one request; tell the serve loop how it went."""
        try:
            outcome: Handled | BaseException = job()
        except BaseException as error:  # noqa: BLE001 - the serve loop decides (collect_answers)
            outcome = error
        self.serve_state().answers.put(Answer(record, epoch, outcome, time.monotonic() - started))

    def collect_answers(self, wait_s: float | None) -> None:
        """Take in the answers the workers finished (waiting up to ``wait_s`` for a
        first one; None: as long as it takes)."""
        state = self.serve_state()
        block = wait_s is None or wait_s > 0
        while state.in_flight:
            try:
                answer = state.answers.get(block=block, timeout=wait_s)
            except queue.Empty:
                return
            block = False
            state.in_flight -= 1
            record, outcome = answer.record, answer.outcome
            if isinstance(outcome, sqlite3.DatabaseError):
                raise outcome
            if isinstance(outcome, (*INFRASTRUCTURE_ERRORS, ServerUnreachable)):
                self.note_kafka_failure(record, outcome)
                continue
            if isinstance(outcome, Exception):
                self.log.error(
                    "request at %d@%d failed; skipped",
                    record.partition,
                    record.offset,
                    exc_info=(type(outcome), outcome, outcome.__traceback__),
                )
                outcome = Handled("?", "?", "?", Unanswered.FAILED, "see the traceback above")
            elif isinstance(outcome, BaseException):
                raise outcome
            self.log_request(outcome, record.partition, answer.seconds)
            if answer.epoch == state.epoch:  # else: read again since, and answered again
                state.tracker.answered(record.partition, record.offset)

    def note_kafka_failure(self, record: RequestRecord, error: BaseException) -> None:
        state = self.serve_state()
        if not state.kafka_failed:
            self.log.warning(
                "Kafka failed while serving %d@%d (%s); serving it again in a moment",
                record.partition,
                record.offset,
                error,
            )
        state.kafka_failed = True

    def drain(self, timeout_s: float | None) -> None:
        """Wait until nothing is in flight (at most ``timeout_s``)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        state = self.serve_state()
        while state.in_flight:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            self.collect_answers(wait_s=left)

    def commit_answered(self, consumer: RequestConsumer) -> None:
        for partition, offset in sorted(self.serve_state().tracker.ready().items()):
            consumer.commit(partition, offset)

    def partitions_revoked(self) -> None:
        """Partitions move (called on Kafka's network thread, which must not block:
        no commit here). The serve loop forgets what it took in before: the next
        owner of a partition reads from its last commit, made at most one poll
        after the last answer, and what it serves again is answered the same way."""
        self.serve_state().rebalanced = True

    def heartbeat_loop(self) -> None:
        while not self.stop.wait(HEARTBEAT_INTERVAL_S):
            self.publish_heartbeat()

    def scrub_loop(self) -> None:
        """Background passes at ``scrub_rate``; a fresh scrub request interrupts one
        and is answered by a full-speed pass that starts after it arrived."""
        requests = self.bus.open_scrub_requests()
        pending: p.ScrubRequest | None = None
        answered: str | None = None
        next_background = time.monotonic() + SCRUB_PAUSE_S
        checked_at = 0.0
        last_requested = -SCRUB_REQUEST_GAP_S

        def take_request(timeout_s: float) -> None:
            nonlocal pending, checked_at
            checked_at = time.monotonic()
            found = requests.poll(timeout_s)
            if found is not None and scrub_request_is_fresh(found, answered, int(time.time() * 1000)):
                pending = found

        def interrupted() -> bool:
            if time.monotonic() - checked_at > 1.0:
                take_request(0)
            return self.stop.is_set() or pending is not None

        try:
            while not self.stop.is_set():
                try:
                    take_request(1.0)
                    if pending is not None:
                        # requests come from whoever may write repo-replicas: a flood of them
                        # gets a full-speed pass every SCRUB_REQUEST_GAP_S at most
                        if self.stop.wait(max(0.0, last_requested + SCRUB_REQUEST_GAP_S - time.monotonic())):
                            break
                        last_requested = time.monotonic()
                        request, pending = pending, None
                        self.log.info("scrub requested (%s): reading every stored object", request.request)
                        if self.run_scrub(request.request, Pace(None), lambda: self.stop.is_set()):
                            answered = request.request
                    elif self.scrub_rate and time.monotonic() >= next_background:
                        self.run_scrub("", Pace(self.scrub_rate), interrupted)
                        next_background = time.monotonic() + SCRUB_PAUSE_S
                except sqlite3.DatabaseError:
                    raise  # the store itself is failing: stop, as the serve loop does
                except Exception:  # Kafka, say: the scrub waits, serving goes on
                    self.log.exception("scrub failed; trying again in %.0f s", SCRUB_RETRY_S)
                    self.stop.wait(SCRUB_RETRY_S)
        finally:
            requests.close()

    def run_scrub(self, request: str, pace: Pace, should_stop: Callable[[], bool]) -> bool:
        """One pass; False if it was stopped before the end."""
        tally = self.service.integrity.scrub(pace, should_stop)
        if tally is None:
            return False
        self.last_scrub = tally.report(request, int(time.time() * 1000))
        if self.metrics is not None:
            self.metrics.scrub_done(self.last_scrub.finished_ms / 1000)
        log = self.log.error if tally.damaged_count else self.log.info
        log(
            "scrub%s done: %d objects, %d bytes read, %d damaged",
            f" {request}" if request else "",
            tally.objects,
            tally.bytes,
            tally.damaged_count,
        )
        return True

    # -- helpers

    def on_assignment(self, partitions: list[int]) -> None:
        self.serving = partitions
        if self.metrics is not None:
            self.metrics.serving_partitions(partitions)
        if partitions:
            self.log.info("serving request partitions %s", partitions)

    def log_request(self, handled: Handled, partition: int, seconds: float) -> None:
        fields = {
            "user": handled.user,
            "action": handled.action,
            "repo": handled.repo,
            "status": str(handled.status),
            "partition": partition,
            "ms": round(seconds * 1000, 1),
        }
        if handled.detail:
            fields["detail"] = handled.detail
        self.log.info(
            "%s %s %s -> %s%s [partition %d, %.0f ms]",
            handled.user,
            handled.action,
            handled.repo,
            handled.status,
            f" ({handled.detail})" if handled.detail else "",
            partition,
            seconds * 1000,
            extra=fields,  # the fields of a JSON log line (--log-format json)
        )
        if self.metrics is not None:
            self.metrics.request_handled(handled.action, str(handled.status), seconds)

    def publish_heartbeat(self, stopping: bool = False) -> None:
        try:
            if self.reporter is None:
                self.reporter = RepoReporter(self.replica_id)
            if not stopping:
                self.reporter.audit(self.store)
            reports = collect_repo_states(self.store, self.reporter)
            applied = reports.applied
            quarantined, quarantined_count = self.service.integrity.quarantined()
            if self.metrics is not None:
                self.record_store_metrics(self.metrics, applied, quarantined_count)
            log_end = self.log_end_for_heartbeat()
            if self.metrics is not None and log_end:
                self.metrics.offsets(applied, log_end)
            beat = p.Heartbeat(
                replica=self.replica_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                started_ms=self.started_ms,
                sent_ms=int(time.time() * 1000),
                serving=list(self.serving),
                applied=dict(sorted(applied.items())),
                log_end=log_end,
                partitions=reports.partitions,
                stopping=stopping,
                quarantined=quarantined,
                quarantined_count=quarantined_count,
                scrub=self.last_scrub,
                server_key=self.service.server.public_key,
            )
            if reports.pages or reports.emptied:
                self.bus.publish_repo_pages(self.replica_id, reports.pages, reports.emptied)
                self.reporter.sent(reports)
            self.bus.publish_heartbeat(beat)
            if stopping:
                self.bus.flush()
        except Exception as error:  # noqa: BLE001 - a missed heartbeat is not fatal
            self.log.warning("heartbeat not sent: %s", error)
            if self.metrics is not None:
                self.metrics.heartbeats_failed.inc()

    def log_end_for_heartbeat(self) -> dict[int, int]:
        """The log end for a heartbeat, or {} (unknown) when Kafka does not say in
        time: the heartbeat still goes out, since who is alive and what each replica
        holds do not depend on it (a loaded machine missed every lookup for 20 s)."""
        try:
            return dict(sorted(self.bus.reported_log_end_offsets().items()))
        except (*INFRASTRUCTURE_ERRORS, MinigitError) as error:
            self.log.warning("heartbeat sent without the log end: %s", error)
            return {}

    def record_store_metrics(self, metrics: ReplicaMetrics, applied: dict[int, int], quarantined: int) -> None:
        """What the heartbeat read from the store, before it asks Kafka for the log end
        (which may not answer)."""
        damaged_ever = len(self.store.list_damage(quarantined_only=False))
        metrics.store_state(store_bytes(self.store.path), damaged_ever, quarantined)
        metrics.offsets(applied)
