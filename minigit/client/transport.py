"""The client's only Kafka code: send one request, get its own reply.

The client never joins a consumer group (a join costs seconds): it assigns
itself one random partition of repo-responses, seeks to its end, then sends
the request carrying a request id and that partition. ``exchange.await_answer``
keeps only records that carry its request id; after a short silence it sends
the same request again, same id, to the next partition of repo-requests, which
another replica serves (hedging: a replica that died keeps its partitions for
seconds, until the consumer group notices), and it gives up after ``timeout``
seconds without news.
"""

from __future__ import annotations

import collections
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kafka import TopicPartition

from minigit import codec, sealing
from minigit import protocol as p
from minigit.client.exchange import (
    Credentials,
    Observer,
    ReplyGuard,
    Response,
    await_answer,
    make_request,
    sign_request,
)
from minigit.config import KafkaSettings
from minigit.errors import MinigitError, ServerUnreachable
from minigit.identity import ChunkDigest
from minigit.kafka_clients import (
    INFRASTRUCTURE_ERRORS,
    close_producer,
    open_consumer,
    open_producer,
    topic_partitions,
)

# The options of a command's producer and consumer. It asks about the service's topics
# by name: never have the broker create them (where it auto-creates topics, a mistyped
# --namespace would make a service's topics). Nothing reads kafka-python's metrics of a
# short-lived client: not keeping them saves ~2 ms of CPU a connection.
CLIENT_OPTIONS = {"allow_auto_create_topics": False, "metrics_enabled": False}
# The pause between two tries at the end of the reply partition while opening.
OPEN_RETRY_S = 0.5
# Chunk records made ready ahead of the one being sent (read, compressed, framed
# and hashed in another thread): at most this many pieces, 512 KiB each, wait.
READ_AHEAD = 8
# Upload bytes handed to the producer and not yet acknowledged, at most: a window,
# not a round trip per chunk. Beyond it the next send waits for the oldest
# acknowledgement, so that a slow broker never leaves a piece in the producer's
# buffer until it expires (delivery_timeout_ms) or blocks a send (max_block_ms),
# and the producer holds at most this much of a large push.
UNACKED_BYTES = 16 * 1024 * 1024


def read_ahead(items: Iterable, depth: int = READ_AHEAD) -> Iterator:
    """``items`` as they come, made by a thread of their own at most ``depth`` ahead
    of the caller: reading files, lz4 and SHA-256 release the interpreter, so
    they overlap the producer's work. An exception in the maker is raised here;
    a caller that stops early stops the maker too."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(entry: tuple) -> bool:
        """Queue ``entry`` unless the caller stopped; whether it was queued."""
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((done, None))
        except BaseException as error:  # noqa: BLE001 - handed to the caller, raised there
            offer((done, error))

    maker = threading.Thread(target=make, name="read-ahead", daemon=True)
    maker.start()
    try:
        while True:
            item, error = ready.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        maker.join()


class Acknowledgements:
    """What Kafka has acknowledged of one sending's uploads, told to the observer
    in the order the chunks were sent, from the command's own thread.

    The observer hears of a chunk only once its future succeeded, and of an
    object once all its chunks did: the bytes it hears of never pass the bytes
    sent (``sent_bytes``). ``collect`` takes the chunks acknowledged so far,
    without waiting (between sends: the producer's buffer holds what is not yet
    acknowledged, and a full buffer blocks the next send until acknowledgements
    free it); ``wait`` waits for the rest. A chunk Kafka refused is never counted
    (the service answers "missing objects", and the write is sent again)."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.pending: collections.deque[tuple[Any, int, bool]] = collections.deque()  # future, bytes, ends an object
        self.sent_bytes = self.acknowledged_bytes = self.settled_bytes = 0
        self.object_failed = False  # a chunk of the object being acknowledged was refused

    def track(self, future: Any, nbytes: int, last: bool) -> None:
        """A chunk of ``nbytes`` raw bytes handed to the producer; ``last``: the last of its object."""
        self.sent_bytes += nbytes
        self.pending.append((future, nbytes, last))

    def collect(self) -> None:
        while self.pending and self.pending[0][0].is_done:
            self._settled(*self.pending.popleft())

    def wait(self, deadline: float, unsettled_bytes: int = 0) -> None:
        """Wait until at most ``unsettled_bytes`` of the chunks sent are not settled
        (none by default); KafkaTimeoutError past ``deadline``."""
        while self.pending and self.sent_bytes - self.settled_bytes > unsettled_bytes:
            future = self.pending[0][0]
            if not future.is_done:
                try:
                    future.get(timeout=max(0.0, deadline - time.monotonic()))
                except INFRASTRUCTURE_ERRORS:
                    if not future.is_done:
                        raise  # Kafka did not answer in time
            self._settled(*self.pending.popleft())

    def _settled(self, future: Any, nbytes: int, last: bool) -> None:
        self.settled_bytes += nbytes
        if future.succeeded():
            self.acknowledged_bytes += nbytes
            self.observer.uploaded(nbytes)
        else:
            self.object_failed = True
        if last:
            if not self.object_failed:
                self.observer.uploaded_object()
            self.object_failed = False


class ProducerStart(threading.Thread):
    """Opens the producer on its own thread, then, if told the topic exists
    (``learn_partitions``), asks for its partitions. After ``finish`` (which waits
    for it), ``producer`` is the producer (None if it could not be opened) and
    ``error`` what went wrong, if anything."""

    def __init__(self, open_producer: Callable[[], Any], topic: str) -> None:
        super().__init__(name="minigit-producer-start", daemon=True)
        self.open_producer, self.topic = open_producer, topic
        self.producer: Any = None
        self.partitions: set[int] | None = None
        self.error: BaseException | None = None
        self.decided = threading.Event()
        self.wanted = False

    def run(self) -> None:
        try:
            self.producer = self.open_producer()
            self.decided.wait()
            if self.wanted:
                self.partitions = self.producer.partitions_for(self.topic)
        except Exception as error:  # noqa: BLE001 - re-raised on the command's thread
            self.error = error

    def learn_partitions(self) -> None:
        self.wanted = True
        self.decided.set()

    def finish(self) -> None:
        self.decided.set()
        self.join()


class Connection:
    """A client's link to the service: one producer, one self-assigned reply partition."""

    def __init__(self, settings: KafkaSettings, credentials: Credentials, timeout: float = 30.0) -> None:
        self.settings = settings
        self.credentials = credentials
        self.user = credentials.user
        self.timeout = timeout
        # ephemeral: replies about private repositories are sealed to it, for this command only
        self.reply_key = sealing.new_reply_key()
        self.topics = settings.topics
        self.producer = self.consumer = None
        try:
            self._open()
        except MinigitError:
            self.close()
            raise
        except INFRASTRUCTURE_ERRORS as error:
            self.close()
            raise settings.unreachable(error) from None

    def _open(self) -> None:
        # An unreachable broker fails within the timeout (kafka-python waits 30 s by default).
        bootstrap_timeout_ms = int(min(self.timeout, 10.0) * 1000)
        # The producer starts beside the consumer: each bootstrap is a connection and a few
        # round trips to the broker, and a command used to wait for one, then the other.
        producer_start = ProducerStart(
            lambda: open_producer(self.settings, bootstrap_timeout_ms=bootstrap_timeout_ms, **CLIENT_OPTIONS),
            self.topics.requests,
        )
        producer_start.start()
        topics_exist = False
        try:
            self.consumer = open_consumer(
                self.settings, group_id=None, bootstrap_timeout_ms=bootstrap_timeout_ms, **CLIENT_OPTIONS
            )
            # One metadata answer about both topics (the producer waits for a topic that does
            # not exist: it is asked for its partitions only once the topic is known).
            found = topic_partitions(self.consumer, [self.topics.responses, self.topics.requests], bootstrap_timeout_ms)
            partitions = found[self.topics.responses]
            topics_exist = bool(partitions and found[self.topics.requests])
            if topics_exist:
                producer_start.learn_partitions()
                self._seek_reply_partition(random.choice(sorted(partitions)))
        finally:
            producer_start.finish()
            self.producer = producer_start.producer  # (whatever happened, close() closes it)
        if producer_start.error is not None:
            raise producer_start.error
        self.request_partitions = len(producer_start.partitions or ())
        if not topics_exist or not self.request_partitions:
            raise ServerUnreachable(
                f"the minigit topics do not exist on {self.settings.bootstrap}",
                hint="start the service with 'minigit-server start' (it creates them)",
            )

    def _seek_reply_partition(self, partition: int) -> None:
        self.reply_partition = partition
        tp = TopicPartition(self.topics.responses, partition)
        self.consumer.assign([tp])
        # A broker answered; the partition's leader may not (one killed in a cluster and not
        # yet replaced): nothing is sent yet, so ask again until the command's timeout.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                # end_offsets + seek, not seek_to_end + position (kafka-python #2677)
                self.consumer.seek(tp, self.consumer.end_offsets([tp])[tp])
                return
            except INFRASTRUCTURE_ERRORS:
                if time.monotonic() + OPEN_RETRY_S >= deadline:
                    raise
                time.sleep(OPEN_RETRY_S)

    def close(self) -> None:
        if self.producer is not None:
            close_producer(self.producer, timeout_s=5)
        if self.consumer is not None:
            self.consumer.close()
        self.producer = self.consumer = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        """Send ``request`` (after its uploads) and wait for its answer
        (``exchange.await_answer``; its blobs written into ``spool``, when given):
        sent again, same id, to the next request partition after each silence;
        given up after ``timeout`` seconds without news."""
        observer = observer or Observer()

        def send(attempt: int) -> None:
            self._send(request, uploads, Observer() if attempt else observer, attempt)

        def send_request(attempt: int) -> None:  # its uploads are in the log already
            self._send(request, (), Observer(), attempt)

        upload_bytes = sum(u.size for u in uploads)
        upload_records = sum(codec.count_chunks(u.size) for u in uploads)
        guard = ReplyGuard(self.settings.namespace, self.credentials, self.reply_key)
        try:
            return await_answer(
                request.request_id,
                send,
                self._poll,
                self.timeout,
                observer,
                upload_bytes=upload_bytes,
                guard=guard,
                upload_records=upload_records,
                spool=spool,
                send_request=send_request if uploads else None,
            )
        except INFRASTRUCTURE_ERRORS as error:
            raise self.settings.unreachable(error) from None

    def request_partition(self, repo: str, attempt: int) -> int:
        """Where attempt ``attempt`` of a request goes: the repository's own
        partition first (the key's partition), then each next one in turn."""
        return (p.log_partition(repo, self.request_partitions) + attempt) % self.request_partitions

    def _send(
        self,
        request: p.Request,
        uploads: Sequence[codec.BlobSource],
        observer: Observer,
        attempt: int,
    ) -> None:
        """One attempt: the uploads, then the request signed now (a retry long after
        the first sending stays inside the server's replay window; the same request
        id and contents make it the same request). Returns once Kafka has
        acknowledged the request; the observer hears of each upload's bytes as
        Kafka acknowledges them (``Acknowledgements``)."""
        key = request.repo.encode()
        partition = self.request_partition(request.repo, attempt)
        acks = Acknowledgements(observer)
        if uploads:
            observer.uploading(sum(u.size for u in uploads), len(uploads))
        digests: list[ChunkDigest] = []
        for value, digest, nbytes in read_ahead(upload_records(request, uploads)):
            future = self.producer.send(self.topics.requests, key=key, value=value, partition=partition)
            acks.track(future, nbytes, last=digest.index == digest.count - 1)
            digests.append(digest)
            acks.collect()
            if acks.sent_bytes - acks.settled_bytes > UNACKED_BYTES:
                acks.wait(time.monotonic() + self.timeout, UNACKED_BYTES)
        signed = sign_request(self.credentials, request, digests, self.settings.namespace)
        # Same partition, idempotent producer: the request lands after its chunks.
        sent = self.producer.send(self.topics.requests, key=key, value=signed.to_bytes(), partition=partition)
        deadline = time.monotonic() + self.timeout
        acks.wait(deadline)
        sent.get(timeout=max(0.0, deadline - time.monotonic()))

    def _poll(self, seconds: float) -> list[bytes]:
        """The values of the records that arrive on the reply partition within ``seconds``."""
        batches = self.consumer.poll(timeout_ms=max(1, math.ceil(seconds * 1000)))
        return [record.value for records in batches.values() for record in records]


def upload_records(request: p.Request, uploads: Sequence[codec.BlobSource]) -> Iterator[tuple[bytes, ChunkDigest, int]]:
    """Each chunk record of ``uploads`` as it is sent, its digest (for the request's
    signature) and the raw bytes it carries."""
    for upload in uploads:
        # with the reply partition: the replica that takes them in says so there (upload notices)
        for chunk in p.blob_chunks(request.request_id, request.repo, upload, reply_partition=request.reply_partition):
            yield chunk.to_bytes(), ChunkDigest.of(chunk), codec.piece_size(upload.size, chunk.index)
