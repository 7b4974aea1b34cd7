"""minigit.codec: blobs into pieces and back, and the chunk records that carry them."""

from __future__ import annotations

import base64
import io
import json
import os
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigit import codec
from minigit import protocol as p
from minigit.errors import ProtocolError

RID = "0123456789abcdef0123456789abcdef"
SHA = "a" * 64


def chunks_of(content: bytes, repo: str = "repo", stream: str | None = None) -> list[p.Chunk]:
    return list(p.blob_chunks(RID, repo, codec.BlobSource.from_bytes(content), stream))


# ---------------------------------------------------------------- chunks


@pytest.mark.parametrize(
    "size, count",
    [
        (0, 1),
        (1, 1),
        (codec.CHUNK_SIZE - 1, 1),
        (codec.CHUNK_SIZE, 1),
        (codec.CHUNK_SIZE + 1, 2),
        (2 * codec.CHUNK_SIZE, 2),
        (2 * codec.CHUNK_SIZE + 1, 3),
        (100 * 1024 * 1024, 200),
    ],
)
def test_count_chunks(size, count):
    assert codec.count_chunks(size) == count


def _round_trip_blob(content: bytes, through_wire: bool = True) -> list[p.Chunk]:
    sha = p.hash_bytes(content)
    chunks = list(chunks_of(content, stream="st"))
    assert len(chunks) == codec.count_chunks(len(content))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.count == len(chunks) and c.sha == sha and c.stream == "st" for c in chunks)
    if through_wire:
        chunks = [p.parse_message(c.to_bytes(), allowed=p.LOG_RECORD_TYPES) for c in chunks]
    assert b"".join(c.raw() for c in chunks) == content
    return chunks


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        100,
        codec.CHUNK_SIZE - 1,
        codec.CHUNK_SIZE,
        codec.CHUNK_SIZE + 1,
        2 * codec.CHUNK_SIZE,
        2 * codec.CHUNK_SIZE + 7,
    ],
)
@pytest.mark.parametrize("kind", ["random", "zeros", "text"])
def test_blob_chunks_round_trip(size, kind):
    if kind == "random":
        content = os.urandom(size)
    elif kind == "zeros":
        content = bytes(size)
    else:
        content = (b"line of text %d\n" * (size // 10 + 1))[:size]
    chunks = _round_trip_blob(content)
    for c in chunks[:-1]:
        assert len(c.raw()) == codec.CHUNK_SIZE
    if kind == "zeros":
        assert all(c.encoding == "lz4" for c in chunks if len(c.raw()) > 1000)
    if kind == "random":
        assert all(c.encoding == "raw" for c in chunks if len(c.raw()) > 1000)


def test_empty_blob_is_one_empty_chunk():
    chunks = list(chunks_of(b""))
    assert len(chunks) == 1
    assert chunks[0].raw() == b"" and chunks[0].index == 0 and chunks[0].count == 1


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_blob_chunks_round_trip_property(content):
    _round_trip_blob(content)


def test_encode_piece_only_compresses_when_it_pays():
    assert codec.encode_piece(0, b"a" * 1000).encoding == "lz4"
    random = os.urandom(1000)
    assert codec.encode_piece(3, random) == codec.Piece(3, "raw", random)
    assert codec.encode_piece(0, b"") == codec.Piece(0, "raw", b"")


def test_random_chunk_records_stay_under_the_record_limit():
    content = os.urandom(codec.CHUNK_SIZE)
    chunk = chunks_of(content, repo="r" * p.MAX_NAME_LENGTH, stream="s" * 64)[0]
    assert chunk.encoding == "raw"
    assert len(chunk.to_bytes()) < codec.MAX_RECORD_BYTES
    # every piece of a multi-chunk random blob too
    content = os.urandom(2 * codec.CHUNK_SIZE + 3)
    for chunk in chunks_of(content, repo="r" * p.MAX_NAME_LENGTH, stream="s" * 64):
        assert len(chunk.to_bytes()) < codec.MAX_RECORD_BYTES


def test_zlib_bomb_is_rejected():
    bomb = zlib.compress(bytes(codec.CHUNK_SIZE + 1), 9)
    with pytest.raises(ProtocolError, match="larger than CHUNK_SIZE"):
        codec.decode_piece(codec.Piece(0, "zlib", bomb))
    big_bomb = zlib.compress(bytes(64 * 1024 * 1024), 9)  # 64 MiB of zeros, about 64 KB
    assert len(big_bomb) < 100_000
    with pytest.raises(ProtocolError, match="larger than CHUNK_SIZE"):
        codec.decode_piece(codec.Piece(0, "zlib", big_bomb))
    for value in (legacy_chunk_json("zlib", base64.b64encode(bomb).decode()), binary_chunk("zlib", bomb)):
        with pytest.raises(ProtocolError, match="larger than CHUNK_SIZE"):
            p.parse_message(value).raw()


def legacy_chunk_json(encoding: str, data: str) -> bytes:
    """A chunk record in the JSON form of before (base64 in ``data``), as old logs hold."""
    doc = {"v": 1, "type": "chunk", "request_id": RID, "repo": "r", "sha": SHA, "index": 0, "count": 1}
    return json.dumps({**doc, "encoding": encoding, "data": data}).encode()


def binary_chunk(encoding: str, payload: bytes) -> bytes:
    return p.Chunk(request_id=RID, repo="r", sha=SHA, index=0, count=1, encoding=encoding, payload=payload).to_bytes()


def test_an_old_json_chunk_record_is_still_read():
    value = legacy_chunk_json("zlib", base64.b64encode(zlib.compress(b"hello" * 100)).decode())
    chunk = p.parse_message(value, allowed=p.LOG_RECORD_TYPES)
    assert chunk.raw() == b"hello" * 100 and chunk.encoding == "zlib"
    assert p.parse_message(chunk.to_bytes()) == chunk  # written again, as a frame


def test_lz4_bomb_is_rejected():
    """An lz4 block inflates about 255 times at most: one that would pass CHUNK_SIZE fails, bounded."""
    import lz4.block

    for size in (codec.CHUNK_SIZE + 1, 64 * 1024 * 1024):
        bomb = lz4.block.compress(bytes(size), store_size=False)
        if len(bomb) <= codec.CHUNK_SIZE:
            with pytest.raises(ProtocolError, match="corrupt chunk"):
                codec.decode_piece(codec.Piece(0, "lz4", bomb))
    # a bomb of more than CHUNK_SIZE compressed bytes is refused before decoding
    with pytest.raises(ProtocolError, match="larger than CHUNK_SIZE"):
        codec.decode_piece(codec.Piece(0, "lz4", bytes(codec.CHUNK_SIZE + 1)))
    with pytest.raises(ProtocolError, match="payload larger than"):
        p.parse_message(binary_chunk("lz4", bytes(codec.CHUNK_SIZE + 1)))


def test_lz4_exactly_chunk_size_is_accepted():
    import lz4.block

    data = lz4.block.compress(bytes(codec.CHUNK_SIZE), store_size=False)
    assert codec.decode_piece(codec.Piece(0, "lz4", data)) == bytes(codec.CHUNK_SIZE)


@pytest.mark.parametrize("data", [b"", b"\xff" * 40, b"\x00"])  # (lz4 has no check: the blob hash is it)
def test_corrupt_lz4_is_rejected(data):
    if data == b"\x00":  # the block of an empty input: decodes to nothing, which is fine
        assert codec.decode_piece(codec.Piece(0, "lz4", data)) == b""
        return
    with pytest.raises(ProtocolError, match="corrupt chunk"):
        codec.decode_piece(codec.Piece(0, "lz4", data))


def test_truncated_lz4_is_rejected():
    piece = codec.encode_piece(0, b"hello world " * 1000)
    assert piece.encoding == "lz4"
    with pytest.raises(ProtocolError, match="corrupt chunk"):
        codec.decode_piece(codec.Piece(0, "lz4", piece.payload[: len(piece.payload) // 2]))


def test_zlib_exactly_chunk_size_is_accepted():
    data = zlib.compress(bytes(codec.CHUNK_SIZE), 9)
    assert codec.decode_piece(codec.Piece(0, "zlib", data)) == bytes(codec.CHUNK_SIZE)


@pytest.mark.parametrize("data", [b"garbage", b"\x78\x9c\xff\xff", b"\x00" * 10])
def test_corrupt_zlib_is_rejected(data):
    with pytest.raises(ProtocolError, match="corrupt chunk"):
        codec.decode_piece(codec.Piece(0, "zlib", data))


def test_truncated_zlib_is_rejected():
    data = zlib.compress(b"hello world " * 1000)
    with pytest.raises(ProtocolError):
        codec.decode_piece(codec.Piece(0, "zlib", data[: len(data) // 2]))


def test_unknown_encoding_is_rejected():
    with pytest.raises(ProtocolError, match="unknown chunk encoding"):
        codec.decode_piece(codec.Piece(0, "gzip", b""))


@pytest.mark.parametrize("data", ["not base64!", "aGVsbG8", "aGVs\nbG8="])
def test_chunk_with_bad_base64(data):
    with pytest.raises(ProtocolError, match="not base64"):
        p.parse_message(legacy_chunk_json("raw", data))


# ---------------------------------------------------------------- splitting and assembling


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        codec.CHUNK_SIZE - 1,
        codec.CHUNK_SIZE,
        codec.CHUNK_SIZE + 1,
        2 * codec.CHUNK_SIZE,
        2 * codec.CHUNK_SIZE + 9,
    ],
)
def test_split_stream_cuts_chunk_size_pieces_and_an_empty_blob_is_one_empty_piece(size):
    data = os.urandom(size)
    pieces = list(codec.split_stream(io.BytesIO(data).read))
    assert len(pieces) == codec.count_chunks(size)
    assert b"".join(pieces) == data
    assert [len(piece) for piece in pieces] == [codec.piece_size(size, i) for i in range(len(pieces))]
    assert pieces == list(codec.split_bytes(data))


def test_split_stream_stops_at_a_short_read_even_if_more_would_come():
    reads = iter([b"x" * 10, b"never read"])
    assert list(codec.split_stream(lambda n: next(reads))) == [b"x" * 10]


def test_blob_source_from_bytes_can_be_read_again():
    source = codec.BlobSource.from_bytes(b"abc")
    assert (source.sha, source.size) == (codec.hash_bytes(b"abc"), 3)
    assert list(source.read_pieces()) == list(source.read_pieces()) == [b"abc"]


def pieces_of(data: bytes) -> list[codec.Piece]:
    return [codec.encode_piece(i, raw) for i, raw in enumerate(codec.split_bytes(data))]


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000) | st.sampled_from([bytes(codec.CHUNK_SIZE + 3), os.urandom(2 * codec.CHUNK_SIZE)]))
def test_assemble_gives_back_the_blob(data):
    pieces = pieces_of(data)
    assert codec.assemble(codec.hash_bytes(data), len(pieces), pieces) == data
    sunk = []
    assembler = codec.Assembler(codec.hash_bytes(data), len(pieces), sunk.append)
    for piece in pieces:
        assembler.add(piece)
    assert assembler.complete and assembler.size == len(data) and b"".join(sunk) == data


def test_assembler_refuses_pieces_out_of_order_and_after_the_end():
    data = os.urandom(codec.CHUNK_SIZE + 1)
    first, second = pieces_of(data)
    assembler = codec.Assembler(codec.hash_bytes(data), 2)
    with pytest.raises(ProtocolError, match="out of order"):
        assembler.add(second)
    assembler.add(first)
    with pytest.raises(ProtocolError, match="out of order"):
        assembler.add(first)
    assembler.add(second)
    with pytest.raises(ProtocolError, match="out of order"):
        assembler.add(second)


def test_a_blob_that_does_not_hash_to_its_name_is_refused():
    pieces = pieces_of(b"the real content")
    with pytest.raises(ProtocolError, match="does not match its content hash"):
        codec.assemble(codec.hash_bytes(b"other content"), 1, pieces)


def test_assemble_refuses_a_blob_with_pieces_missing():
    data = os.urandom(codec.CHUNK_SIZE + 1)
    with pytest.raises(ProtocolError, match="missing chunks"):
        codec.assemble(codec.hash_bytes(data), 2, pieces_of(data)[:1])


def test_chunk_of_piece_and_back():
    piece = codec.encode_piece(2, b"hello" * 100)
    chunk = p.Chunk.of_piece(RID, "repo", SHA, 5, piece, "st")
    parsed = p.parse_message(chunk.to_bytes())
    assert parsed.piece() == piece and parsed.raw() == b"hello" * 100
    assert (parsed.index, parsed.count, parsed.stream) == (2, 5, "st")
