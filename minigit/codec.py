"""The blob codec: how a blob (a file's content, or a tree) becomes pieces and
back, on every topic and in every store.

A blob of ``size`` bytes is cut into ``count_chunks(size)`` pieces of at most
CHUNK_SIZE raw bytes; an empty blob is one empty piece. Each piece is stored
and sent encoded (``raw``, or ``zlib`` when that pays), and a blob is whole
only when its pieces, decoded in order, hash to its name (sha256). Nothing
here touches Kafka; ``split_stream`` reads whatever it is given.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from minigit.errors import ProtocolError

# 512 KiB of raw bytes is about 700 KB once base64-encoded: under Kafka's default
# message.max.bytes (1 MiB) with room for the JSON around it.
CHUNK_SIZE = 512 * 1024
MAX_RECORD_BYTES = 1_000_000  # what any record minigit writes must stay under (tests check chunks)

RAW = "raw"
ZLIB = "zlib"
ENCODINGS = (RAW, ZLIB)


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def count_chunks(size: int) -> int:
    return max(1, -(-size // CHUNK_SIZE))


def piece_size(size: int, index: int) -> int:
    """The raw size of piece ``index`` of a blob of ``size`` bytes."""
    return max(0, min(CHUNK_SIZE, size - index * CHUNK_SIZE))


def split_stream(read: Callable[[int], bytes]) -> Iterator[bytes]:
    """Pieces of CHUNK_SIZE bytes from ``read`` (a file's or a buffer's), the last
    one shorter; an empty stream is one empty piece."""
    piece = read(CHUNK_SIZE)
    yield piece
    while len(piece) == CHUNK_SIZE:
        piece = read(CHUNK_SIZE)
        if not piece:
            return
        yield piece


def split_bytes(data: bytes) -> Iterator[bytes]:
    return split_stream(io.BytesIO(data).read)


@dataclass(frozen=True)
class BlobSource:
    """A blob to send: its name, its size, and a way to read it piece by piece
    (as many times as a retry needs)."""

    sha: str
    size: int
    read_pieces: Callable[[], Iterator[bytes]]

    @classmethod
    def from_bytes(cls, data: bytes) -> BlobSource:
        return cls(hash_bytes(data), len(data), lambda: split_bytes(data))


@dataclass(frozen=True)
class Piece:
    """One encoded piece of a blob, as a chunk record and a store carry it."""

    index: int
    encoding: str
    payload: bytes


def encode_piece(index: int, raw: bytes) -> Piece:
    """Compress when it pays; already-compressed content is kept as it is."""
    sample = raw[:16384]
    if len(raw) > 4 * len(sample) and len(zlib.compress(sample, 1)) > 0.9 * len(sample):
        return Piece(index, RAW, raw)  # a sample did not shrink: skip a whole zlib pass over noise
    packed = zlib.compress(raw, 1)
    if len(packed) < len(raw):
        return Piece(index, ZLIB, packed)
    return Piece(index, RAW, raw)


def decode_piece(piece: Piece) -> bytes:
    """The raw bytes of a piece; never more than CHUNK_SIZE of them, whatever it claims."""
    if piece.encoding == RAW:
        if len(piece.payload) > CHUNK_SIZE:
            raise ProtocolError("chunk larger than CHUNK_SIZE")
        return piece.payload
    if piece.encoding == ZLIB:
        try:
            decoder = zlib.decompressobj()
            raw = decoder.decompress(piece.payload, CHUNK_SIZE + 1)
        except zlib.error as error:
            raise ProtocolError(f"corrupt chunk: {error}") from None
        if len(raw) > CHUNK_SIZE or decoder.unconsumed_tail:
            raise ProtocolError("chunk larger than CHUNK_SIZE")
        if not decoder.eof or decoder.unused_data:
            raise ProtocolError("corrupt chunk: truncated or trailing data")
        return raw
    raise ProtocolError(f"unknown chunk encoding {piece.encoding!r}")


class Assembler:
    """Puts one blob back together from its pieces, in order, and checks the
    whole against its name when the last piece arrives. ``sink`` receives the
    raw bytes as they come (a file, say), so a large blob is never in memory."""

    def __init__(self, sha: str, count: int, sink: Callable[[bytes], object] = lambda raw: None) -> None:
        self.sha = sha
        self.count = count
        self.sink = sink
        self.size = 0
        self.next_index = 0
        self._digest = hashlib.sha256()

    @property
    def complete(self) -> bool:
        return self.next_index == self.count

    def add(self, piece: Piece) -> bytes:
        """Take the next piece; raise ProtocolError if it is not the next one, or
        if it is the last and the blob's content does not match its name."""
        if piece.index != self.next_index or self.complete:
            raise ProtocolError(f"chunk {piece.index} of {self.sha[:12]} arrived out of order")
        raw = decode_piece(piece)
        self._digest.update(raw)
        self.sink(raw)
        self.size += len(raw)
        self.next_index += 1
        if self.complete and self._digest.hexdigest() != self.sha:
            raise ProtocolError(f"object {self.sha[:12]} does not match its content hash")
        return raw


def assemble(sha: str, count: int, pieces: Iterable[Piece]) -> bytes:
    """A whole blob from all its pieces, checked against its name."""
    parts: list[bytes] = []
    assembler = Assembler(sha, count, parts.append)
    for piece in pieces:
        assembler.add(piece)
    if not assembler.complete:
        raise ProtocolError(f"object {sha[:12]} is missing chunks")
    return b"".join(parts)
