"""The client's only Kafka code: send one request, get its own reply.

The client never joins a consumer group (a join costs seconds): it assigns
itself one random partition of repo-responses, seeks to its end, then sends
the request carrying a request id and that partition. It keeps only records
that carry its request id. If no answer comes within an attempt window it sends
the same request again with the same id: the server's outcome table makes the
retry harmless.
"""

from __future__ import annotations

import hashlib
import logging
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import kafka.cluster
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from minigit import protocol as p
from minigit.config import KafkaSettings
from minigit.errors import MinigitError, ProtocolError, ServerUnreachable

log = logging.getLogger("minigit.client.transport")

# Blobs received beyond this size spill from memory to a temporary file.
SPOOL_BYTES = 8 * 1024 * 1024

# kafka-python 3.0 builds its metadata cache without passing retry_backoff_ms on,
# so the first metadata request after bootstrap waits its 100 ms default: about
# two thirds of a short command's time. 10 ms keeps a backoff and drops the wait.
kafka.cluster.ClusterMetadata.DEFAULT_CONFIG["retry_backoff_ms"] = 10


def kafka_options(settings: KafkaSettings) -> dict[str, Any]:
    """kafka-python keyword arguments shared by every client and server connection."""
    return {"bootstrap_servers": settings.servers, **settings.options}


def unreachable(settings: KafkaSettings, error: Exception) -> ServerUnreachable:
    return ServerUnreachable(
        f"cannot reach Kafka at {settings.bootstrap}: {error.__class__.__name__}",
        hint="check --bootstrap / MINIGIT_BOOTSTRAP, and that the broker and 'minigit-server start' are running",
    )


@dataclass
class Upload:
    """A blob to send: its id, size, and a way to read it in CHUNK_SIZE pieces."""

    sha: str
    size: int
    read_pieces: Callable[[], Iterator[bytes]]

    @classmethod
    def from_bytes(cls, data: bytes) -> Upload:
        pieces = [data[i : i + p.CHUNK_SIZE] for i in range(0, len(data), p.CHUNK_SIZE)] or [b""]
        return cls(p.hash_bytes(data), len(data), lambda: iter(pieces))


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
    reply: p.Reply
    blobs: dict[str, ReceivedBlob] = field(default_factory=dict)

    def close(self) -> None:
        for blob in self.blobs.values():
            blob.file.close()


class _Stream:
    """One answer being received: the reply, then its chunks in order."""

    def __init__(self, reply: p.Reply, observer: Observer) -> None:
        self.reply = reply
        self.observer = observer
        self.done: dict[str, ReceivedBlob] = {}
        self.current: tuple[str, Any, IO[bytes], int] | None = None  # sha, hasher, file, next index
        if reply.blob_count:
            observer.downloading(reply.blob_bytes, reply.blob_count)

    @property
    def complete(self) -> bool:
        return len(self.done) >= self.reply.blob_count

    def add(self, chunk: p.Chunk) -> None:
        if chunk.sha in self.done:
            return
        if chunk.index == 0:
            self.current = (chunk.sha, hashlib.sha256(), tempfile.SpooledTemporaryFile(SPOOL_BYTES), 0)
        if self.current is None or self.current[0] != chunk.sha or self.current[3] != chunk.index:
            raise ProtocolError(f"chunk {chunk.index} of {chunk.sha[:12]} arrived out of order")
        sha, hasher, file, _ = self.current
        raw = chunk.raw()
        hasher.update(raw)
        file.write(raw)
        self.observer.downloaded(len(raw))
        self.current = (sha, hasher, file, chunk.index + 1)
        if chunk.index + 1 == chunk.count:
            if hasher.hexdigest() != sha:
                raise ProtocolError(f"object {sha[:12]} arrived corrupted")
            self.done[sha] = ReceivedBlob(sha, file.tell(), file)
            self.current = None
            self.observer.downloaded_object()

    def discard(self) -> None:
        for blob in self.done.values():
            blob.file.close()
        if self.current:
            self.current[2].close()


class Connection:
    """A client's link to the service: one producer, one self-assigned reply partition."""

    def __init__(self, settings: KafkaSettings, user: str, timeout: float = 30.0) -> None:
        self.settings = settings
        self.user = user
        self.timeout = timeout
        self.requests_topic = p.topic_name(settings.namespace, p.REQUESTS_TOPIC)
        self.responses_topic = p.topic_name(settings.namespace, p.RESPONSES_TOPIC)
        self.producer: KafkaProducer | None = None
        self.consumer: KafkaConsumer | None = None
        try:
            self._open()
        except MinigitError:
            self.close()
            raise
        except (KafkaError, OSError) as error:
            self.close()
            raise unreachable(settings, error) from None

    def _open(self) -> None:
        # An unreachable broker fails within the timeout (kafka-python waits 30 s by default).
        options = {**kafka_options(self.settings), "bootstrap_timeout_ms": int(min(self.timeout, 10.0) * 1000)}
        self.producer = KafkaProducer(acks="all", linger_ms=0, **options)
        self.consumer = KafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            # a whole chunk (about 700 KB) must fit in one fetch
            max_partition_fetch_bytes=2 * 1024 * 1024,
            **options,
        )
        partitions = self.consumer.partitions_for_topic(self.responses_topic)
        if not partitions or not self.producer.partitions_for(self.requests_topic):
            raise ServerUnreachable(
                f"the minigit topics do not exist on {self.settings.bootstrap}",
                hint="start the service with 'minigit-server start' (it creates them)",
            )
        self.reply_partition = random.choice(sorted(partitions))
        tp = TopicPartition(self.responses_topic, self.reply_partition)
        self.consumer.assign([tp])
        # end_offsets + seek, not seek_to_end + position (kafka-python #2677)
        self.consumer.seek(tp, self.consumer.end_offsets([tp])[tp])

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=5)
        if self.consumer is not None:
            self.consumer.close()
        self.producer = self.consumer = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def new_request(self, cls: type[p.Request], **fields: Any) -> p.Request:
        return cls(
            request_id=p.new_request_id(),
            user=self.user,
            reply_partition=self.reply_partition,
            timeout_ms=int(self.timeout * 1000),
            **fields,
        )

    def call(self, request: p.Request, uploads: Sequence[Upload] = (), observer: Observer | None = None) -> Response:
        """Send ``request`` (after its uploads) and wait for its answer. When the
        service stays silent for an attempt window, send the same request again
        (same id); give up after ``timeout`` seconds without any sign of it."""
        observer = observer or Observer()
        window = max(5.0, self.timeout / 3)
        self._last_heard = time.monotonic()
        first = True
        try:
            while True:
                self._send(request, uploads, observer if first else Observer())
                first = False
                observer.waiting()
                response = self._receive(request.request_id, window, observer)
                if response is not None:
                    return response
                if time.monotonic() - self._last_heard >= self.timeout:
                    raise ServerUnreachable(
                        f"no answer from the minigit service within {self.timeout:g}s",
                        hint="check that 'minigit-server start' is running, or raise --timeout",
                    )
                log.info("no answer yet to %s; sending it again", request.request_id)
        except (KafkaError, OSError) as error:
            raise unreachable(self.settings, error) from None

    def _send(self, request: p.Request, uploads: Sequence[Upload], observer: Observer) -> None:
        key = request.repo.encode()
        if uploads:
            observer.uploading(sum(u.size for u in uploads), len(uploads))
        for upload in uploads:
            count = p.count_chunks(upload.size)
            for index, raw in enumerate(upload.read_pieces()):
                chunk = p.make_chunk(request.request_id, request.repo, upload.sha, index, count, raw)
                self.producer.send(self.requests_topic, key=key, value=chunk.to_bytes())
                observer.uploaded(len(raw))
            observer.uploaded_object()
        # Same key, same partition, idempotent producer: the request lands after its chunks.
        self.producer.send(self.requests_topic, key=key, value=request.to_bytes()).get(timeout=self.timeout)

    def _receive(self, request_id: str, window: float, observer: Observer) -> Response | None:
        """Wait for the answer until ``window`` seconds pass without news of it."""
        stream: _Stream | None = None
        heard = time.monotonic()
        while (left := heard + window - time.monotonic()) > 0:
            batches = self.consumer.poll(timeout_ms=int(min(left, 0.5) * 1000) + 1)
            for records in batches.values():
                for record in records:
                    try:
                        message = p.parse_message(record.value, allowed=p.REPLY_TYPES)
                    except MinigitError:
                        continue  # someone else's garbage is not our answer
                    if message.request_id != request_id:
                        continue
                    heard = self._last_heard = time.monotonic()
                    if isinstance(message, p.Reply):
                        if message.status != p.WORKING:
                            # A newer answer supersedes one in progress: an answer is
                            # repeated when the replica sending it died (failover).
                            if stream is not None:
                                stream.discard()
                            stream = _Stream(message, observer)
                    elif stream is not None and message.stream == stream.reply.stream:
                        try:
                            stream.add(message)
                        except ProtocolError as error:
                            log.warning("dropping a broken answer: %s", error.message)
                            stream.discard()
                            stream = None
                    if stream is not None and stream.complete:
                        return Response(stream.reply, stream.done)
        if stream is not None:
            stream.discard()  # an answer cut off (its replica died): take the next one
        return None
