"""Binary records (protocol.frame / unframe): chunk and sealed records carry their
bytes after a small JSON header, and whatever arrives is refused cleanly."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigit import codec
from minigit import protocol as p
from minigit.errors import MinigitError, ProtocolError

RID = "0123456789abcdef0123456789abcdef"
SHA = "a" * 64


def chunk(payload: bytes = b"hello", **changes) -> p.Chunk:
    fields = {"request_id": RID, "repo": "repo", "sha": SHA, "index": 0, "count": 1, "encoding": "raw"}
    return p.Chunk(**{**fields, **changes}, payload=payload)


def header_of(message: p.Message) -> dict:
    return p.unframe(message.to_bytes())[0]


def test_a_chunk_is_a_frame_its_bytes_as_they_are():
    value = chunk(b"\x00\xffbinary").to_bytes()
    assert value.startswith(p.FRAME_MAGIC)
    assert value.endswith(b"\x00\xffbinary")
    header, payload = p.unframe(value)
    assert payload == b"\x00\xffbinary"
    assert header["type"] == "chunk" and "payload" not in header and "data" not in header
    assert len(value) - len(payload) < 300  # the header is small


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.binary(max_size=4096),
    index=st.integers(0, 10),
    extra=st.integers(1, 10),
    encoding=st.sampled_from(codec.ENCODINGS),
    stream=st.none() | st.text("abc019_-", min_size=1, max_size=64),
)
def test_a_chunk_round_trips(payload, index, extra, encoding, stream):
    message = chunk(payload, index=index, count=index + extra, encoding=encoding, stream=stream)
    parsed = p.parse_message(message.to_bytes(), allowed=p.REQUEST_TYPES)
    assert parsed == message and parsed.payload == payload


def test_a_full_piece_sealed_or_not_stays_under_the_record_limit():
    import os

    message = chunk(os.urandom(codec.CHUNK_SIZE), repo="r" * p.MAX_NAME_LENGTH, stream="s" * 64)
    assert len(message.to_bytes()) < codec.CHUNK_SIZE + 400 < codec.MAX_RECORD_BYTES
    sealed = p.Sealed(request_id=RID, stream="s" * 64, sender_key="k" * 51, nonce="n" * 16, box=message.to_bytes())
    assert len(sealed.to_bytes()) < codec.CHUNK_SIZE + 800 < codec.MAX_RECORD_BYTES


def test_a_sealed_record_is_a_frame_too():
    sealed = p.Sealed(request_id=RID, stream="st", sender_key="x25519:k", nonce="AAAAAAAAAAAAAAAA", box=b"\x01\x02")
    value = sealed.to_bytes()
    assert value.startswith(p.FRAME_MAGIC) and value.endswith(b"\x01\x02")
    assert p.parse_message(value, allowed=p.REPLY_TYPES) == sealed
    # the JSON form of before (base64 in "box") is still read
    legacy = json.dumps({**header_of(sealed), "box": base64.b64encode(b"\x01\x02").decode()}).encode()
    assert p.parse_message(legacy, allowed=p.REPLY_TYPES) == sealed


def prefix(length: int, magic: bytes = p.FRAME_MAGIC) -> bytes:
    return struct.pack(">4sH", magic, length)


GOOD_HEADER = json.dumps(header_of(chunk())).encode()


@pytest.mark.parametrize(
    "value, match",
    [
        pytest.param(p.FRAME_MAGIC, "shorter than its prefix", id="only-the-magic"),
        pytest.param(p.FRAME_MAGIC + b"\x00", "shorter than its prefix", id="cut-in-the-prefix"),
        pytest.param(prefix(len(GOOD_HEADER)) + GOOD_HEADER[:-1], "truncated header", id="truncated-header"),
        pytest.param(prefix(50_000) + GOOD_HEADER, "header longer than", id="oversized-header"),
        pytest.param(prefix(p.MAX_FRAME_HEADER + 1) + b"{" * 3000, "header longer than", id="just-over-the-bound"),
        pytest.param(prefix(0), "not UTF-8 JSON", id="empty-header"),
        pytest.param(prefix(2) + b"[]", "not a JSON object", id="header-a-list"),
        pytest.param(prefix(4) + b"\xff\xfe{}", "not UTF-8 JSON", id="header-not-utf8"),
        pytest.param(prefix(3000) + b"[" * 3000, "header longer than", id="deep-nesting"),
        pytest.param(prefix(1000) + b"[" * 1000, "not UTF-8 JSON|not a JSON object", id="nesting-in-bound"),
    ],
)
def test_a_malformed_frame_is_refused(value, match):
    with pytest.raises(ProtocolError, match=match):
        p.unframe(value)
    with pytest.raises(ProtocolError):
        p.parse_message(value)


def test_a_wrong_magic_is_not_a_frame():
    value = prefix(len(GOOD_HEADER), magic=b"\x00mg2") + GOOD_HEADER + b"x"
    with pytest.raises(ProtocolError, match="wrong magic"):
        p.unframe(value)
    with pytest.raises(ProtocolError, match="not UTF-8 JSON"):  # neither a frame nor JSON
        p.parse_message(value)


@pytest.mark.parametrize(
    "header, payload, match",
    [
        pytest.param({**header_of(chunk()), "index": 1}, b"x", "index out of range", id="index-past-count"),
        pytest.param({**header_of(chunk()), "count": 10**12}, b"x", "count too large", id="count-too-large"),
        pytest.param({**header_of(chunk()), "encoding": "lzma"}, b"x", "unknown chunk encoding", id="encoding"),
        pytest.param({**header_of(chunk()), "v": 2}, b"x", "unsupported protocol version", id="version"),
        pytest.param({**header_of(chunk()), "sha": "A" * 64}, b"x", "invalid object id", id="sha"),
        pytest.param({**header_of(chunk()), "repo": "../x"}, b"x", "repository name", id="repo"),
        pytest.param(header_of(chunk()), bytes(codec.CHUNK_SIZE + 1), "payload larger than", id="payload-too-large"),
        pytest.param({"v": 1, "type": "request", "action": "ping"}, b"", "does not travel in a binary", id="request"),
        pytest.param({"v": 1, "type": "nope"}, b"", "unknown message type", id="unknown-type"),
    ],
)
def test_a_frame_that_breaks_the_schema_is_refused(header, payload, match):
    with pytest.raises(ProtocolError, match=match):
        p.parse_message(p.frame(header, payload))


def test_a_frame_header_too_large_is_never_written():
    with pytest.raises(ProtocolError, match="header longer than"):
        p.frame({"v": 1, "type": "chunk", "padding": "x" * p.MAX_FRAME_HEADER}, b"")


def test_the_request_id_of_a_broken_frame_is_read_for_the_error_reply():
    broken = p.frame({**header_of(chunk()), "index": 5, "reply_partition": 3}, b"x")
    assert p.peek_request_id(broken) == RID
    assert p.peek_reply_address(broken) == (RID, 3)
    assert p.peek_request_id(p.FRAME_MAGIC + b"\xff\xff") is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.integers(0, 400))
def test_any_bytes_after_the_magic_are_a_clean_refusal_or_a_valid_message(noise, cut):
    """Hostile values: a frame's prefix, then anything; or a good frame cut anywhere."""
    good = chunk(b"payload").to_bytes()
    for value in (p.FRAME_MAGIC + noise, good[: cut % len(good)], prefix(len(noise)) + noise):
        try:
            message = p.parse_message(value, allowed=p.REQUEST_TYPES)
        except MinigitError:
            continue
        assert isinstance(message, p.Chunk) and len(message.payload) <= codec.CHUNK_SIZE
