"""The blob codec: how a blob (a file's content, or a tree) becomes pieces and
back, on every topic and in every store.

A blob of ``size`` bytes is cut into ``count_chunks(size)`` pieces of at most
CHUNK_SIZE raw bytes; an empty blob is one empty piece. Each piece is stored
and sent encoded (``raw``, or ``lz4`` when that pays; ``zlib`` pieces written
before lz4 are still read), and a blob is whole only when its pieces, decoded
in order, hash to its name (sha256). Nothing here touches Kafka;
``split_stream`` reads whatever it is given.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import lz4.block

from minigit.errors import ProtocolError

# A piece's raw bytes. A chunk record carries them in binary after a small header
# (protocol.Chunk), sealed or not, well under Kafka's default message.max.bytes
# (1 MiB). The size is part of every stored blob's piece count: changing it would
# split a blob pushed again differently from the copy already stored.
CHUNK_SIZE = 512 * 1024
MAX_RECORD_BYTES = 1_000_000  # what any record minigit writes must stay under (tests check chunks)

RAW = "raw"
ZLIB = "zlib"  # written before lz4: still read (old logs and stores), no longer written
LZ4 = "lz4"  # an LZ4 block without its size in front: the piece's raw size is at most CHUNK_SIZE
ENCODINGS = (RAW, ZLIB, LZ4)
# What encode_piece compresses first, to skip content that does not shrink (random,
# already compressed) at the cost of compressing this much of it.
SAMPLE_BYTES = 16384


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
    """Compress (lz4, hundreds of MB/s) when it pays; already-compressed content is
    kept as it is. A piece is never stored larger than its raw bytes."""
    if len(raw) > CHUNK_SIZE:
        raise ValueError(f"a piece holds at most {CHUNK_SIZE} bytes")
    sample = raw[:SAMPLE_BYTES]
    if len(raw) > 4 * len(sample) and len(lz4.block.compress(sample, store_size=False)) > 0.9 * len(sample):
        return Piece(index, RAW, raw)  # a sample did not shrink: skip a whole pass over noise
    packed = lz4.block.compress(raw, store_size=False) if raw else b""
    if len(packed) < 0.97 * len(raw):
        return Piece(index, LZ4, packed)
    return Piece(index, RAW, raw)


def decode_piece(piece: Piece) -> bytes:
    """The raw bytes of a piece; never more than CHUNK_SIZE of them, whatever it claims."""
    if len(piece.payload) > CHUNK_SIZE:  # no encoding writes a piece larger than its raw bytes
        raise ProtocolError("chunk larger than CHUNK_SIZE")
    if piece.encoding == RAW:
        return piece.payload
    if piece.encoding == LZ4:
        if not piece.payload:
            raise ProtocolError("corrupt chunk: an empty lz4 block")
        try:
            # the output buffer is CHUNK_SIZE: a block that would inflate further fails
            return lz4.block.decompress(piece.payload, uncompressed_size=CHUNK_SIZE)
        except lz4.block.LZ4BlockError:
            raise ProtocolError("corrupt chunk: not an lz4 block of at most CHUNK_SIZE bytes") from None
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
