"""minigit.sealing: a sealed reply opens only with the request's reply key and
only as it was sealed (same request, same stream, untouched); a 512 KiB chunk
sealed still fits a Kafka record; reply signatures cover every field and the
namespace; and whatever arrives malformed is a MinigitError (or a False), never
another exception."""

from __future__ import annotations

import base64
import dataclasses
import json
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from minigit import codec, identity, sealing
from minigit import protocol as p
from minigit.errors import MalformedKey, MinigitError, ProtocolError, SealBroken
from minigit.sealing import StreamOpener, StreamSealer, open_sealed, parse_reply_key, reply_key_text

# RFC 7748, section 6.1: Alice's X25519 key pair
RFC_ALICE_SECRET = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC_ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
# A point of small order: its shared secret with any key is all zeros, known to all.
SMALL_ORDER_KEY = "x25519:" + base64.b64encode(bytes(32)).decode()
SERVER_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")  # RFC 8032 test 1

RID = "0123456789abcdef0123456789abcdef"
STREAM = "fedcba9876543210fedcba9876543210"
BASE64_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

request_ids = st.from_regex(r"[0-9a-f]{32}", fullmatch=True)
streams = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
namespaces = st.from_regex(r"[A-Za-z0-9._-]{0,30}", fullmatch=True)
small_ints = st.integers(0, 2**40)
anything = st.one_of(
    st.text(max_size=80), st.binary(max_size=60), st.none(), st.integers(), st.floats(), st.lists(st.text(max_size=5))
)


def reply(**fields: object) -> p.Reply:
    values: dict[str, object] = {"request_id": RID, "action": "pull", "stream": STREAM, "replica": "1"}
    values["status"] = p.Status.OK
    return p.Reply(**{**values, **fields})


def chunk(data: bytes = b"hello", request_id: str = RID, repo: str = "repo") -> p.Chunk:
    piece = codec.encode_piece(0, data)
    return p.Chunk.of_piece(request_id, repo, codec.hash_bytes(data), 1, piece, STREAM)


def sealer_for(key: X25519PrivateKey, request_id: str = RID, stream: str = STREAM) -> StreamSealer:
    return StreamSealer(reply_key_text(key.public_key()), request_id, stream)


def reopen(key: X25519PrivateKey, sealed: p.Sealed) -> p.Message:
    """Through the wire and back, as the client receives it."""
    received = p.parse_message(sealed.to_bytes(), allowed=p.REPLY_TYPES)
    assert isinstance(received, p.Sealed)
    return p.parse_message(open_sealed(key, received), allowed=(p.Chunk, p.Reply))


def flip(text: str | bytes, bit: int = 0) -> str | bytes:
    """One bit changed: in bytes (a box), or in the bytes base64 text spells (a nonce)."""
    raw = bytearray(text if isinstance(text, bytes) else base64.b64decode(text))
    raw[bit // 8 % len(raw)] ^= 1 << bit % 8
    return bytes(raw) if isinstance(text, bytes) else base64.b64encode(bytes(raw)).decode()


# ---------------------------------------------------------------- reply keys


def test_a_reply_key_is_x25519_and_the_base64_of_its_32_bytes():
    alice = X25519PrivateKey.from_private_bytes(RFC_ALICE_SECRET)
    text = reply_key_text(alice.public_key())
    assert text == "x25519:" + base64.b64encode(RFC_ALICE_PUBLIC).decode()
    assert len(text) == sealing.MAX_REPLY_KEY_TEXT == 51
    assert sealing.reply_key_bytes(parse_reply_key(text)) == RFC_ALICE_PUBLIC


def test_a_reply_key_fits_the_key_fields_of_a_request():
    assert sealing.MAX_REPLY_KEY_TEXT <= p.MAX_KEY_TEXT
    text = reply_key_text(sealing.new_reply_key().public_key())
    request = p.PingRequest(request_id=RID, repo="r", user="u", reply_partition=0, reply_key=text)
    assert p.parse_message(request.to_bytes()).reply_key == text


def test_each_new_reply_key_is_another():
    texts = {reply_key_text(sealing.new_reply_key().public_key()) for _ in range(20)}
    assert len(texts) == 20


CANONICAL = "x25519:" + base64.b64encode(RFC_ALICE_PUBLIC).decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x25519:",
        "X25519:" + CANONICAL[7:],
        "ed25519:" + CANONICAL[7:],
        CANONICAL[7:],
        CANONICAL.rstrip("="),
        CANONICAL + "\n",
        " " + CANONICAL,
        CANONICAL[:20] + " " + CANONICAL[21:],
        CANONICAL.replace("/", "_"),  # the URL-safe alphabet
        "x25519:" + base64.b64encode(bytes(31)).decode(),
        "x25519:" + base64.b64encode(bytes(33)).decode(),
        CANONICAL[:-2] + "B=",  # stray bits in the padding: a second spelling of the same bytes
        "x25519:" + "é" * 44,
        "x25519:" + "A" * 10_000_000,
    ],
)
def test_only_the_canonical_spelling_is_a_reply_key(text):
    with pytest.raises(MalformedKey):
        parse_reply_key(text)


def test_url_safe_is_not_the_alphabet():
    assert "/" in CANONICAL  # so the URL-safe spelling above differs from it


def test_a_huge_reply_key_is_refused_before_it_is_decoded():
    with pytest.raises(MalformedKey, match="longer than 51"):
        parse_reply_key("x25519:" + "A" * 10_000_000)


@given(anything)
def test_whatever_is_passed_as_a_reply_key_is_a_key_or_malformed_key(text):
    try:
        key = parse_reply_key(text)
    except MalformedKey as error:
        assert "\n" not in error.message
    else:
        assert reply_key_text(key) == text


@given(st.text(alphabet=BASE64_DIGITS + "=", min_size=44, max_size=44))
def test_a_base64_lookalike_is_a_key_only_when_it_spells_one_canonically(body):
    try:
        key = parse_reply_key("x25519:" + body)
    except MalformedKey:
        return
    assert reply_key_text(key) == "x25519:" + body


# ---------------------------------------------------------------- sealing


def test_a_sealed_reply_and_chunk_open_back_to_themselves():
    key = sealing.new_reply_key()
    sealer = sealer_for(key)
    for message in (reply(blob_count=1, tree="a" * 64), chunk(b"secret content")):
        sealed = sealer.seal(message)
        assert (sealed.request_id, sealed.stream) == (RID, STREAM)
        assert reopen(key, sealed) == message


def test_the_box_hides_the_content_and_the_repository():
    key = sealing.new_reply_key()
    sealed = sealer_for(key).seal(chunk(b"top secret words" * 10, repo="confidential-project"))
    wire = sealed.to_bytes()
    assert b"top secret" not in wire and base64.b64encode(b"top secret words") not in wire
    assert b"confidential-project" not in wire


def test_one_ephemeral_key_per_stream_and_a_fresh_nonce_per_record():
    key = sealing.new_reply_key()
    sealer = sealer_for(key)
    records = [sealer.seal(chunk(b"same")) for _ in range(50)]
    assert len({r.sender_key for r in records}) == 1
    assert len({r.nonce for r in records}) == 50
    assert len({r.box for r in records}) == 50  # same content, different boxes
    assert records[0].sender_key != sealer_for(key).sender_key  # another stream, another key
    assert records[0].sender_key != reply_key_text(key.public_key())


def test_the_construction_is_the_documented_one():
    """HKDF-SHA256 (salt: ephemeral then recipient public bytes; info: domain,
    request id, stream) keys ChaCha20-Poly1305 over the record's JSON, with the
    same binding as associated data: rebuilt here from the primitives alone."""
    recipient = sealing.new_reply_key()
    message = reply(message="hi")
    sealed = sealer_for(recipient).seal(message)
    sender = sealing.parse_reply_key(sealed.sender_key)
    sender_raw, recipient_raw = sealing.reply_key_bytes(sender), sealing.reply_key_bytes(recipient.public_key())
    binding = b"minigit-sealed-reply-v1\n" + RID.encode() + STREAM.encode()
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=sender_raw + recipient_raw, info=binding)
    aead = ChaCha20Poly1305(hkdf.derive(recipient.exchange(sender)))
    nonce, box = base64.b64decode(sealed.nonce), sealed.box
    assert len(nonce) == 12 and len(sealed.nonce) == 16
    assert aead.decrypt(nonce, box, binding) == message.to_bytes()


def test_a_record_sealed_to_another_key_does_not_open():
    sealed = sealer_for(sealing.new_reply_key()).seal(reply())
    with pytest.raises(SealBroken, match="not sealed to this reply key, or it was altered"):
        open_sealed(sealing.new_reply_key(), sealed)


OTHER_RID = "ffffffffffffffffffffffffffffffff"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: {"box": flip(s.box, 0)}, id="box-first-bit"),
        pytest.param(lambda s: {"box": flip(s.box, 8 * 40 + 3)}, id="box-middle"),
        pytest.param(lambda s: {"box": flip(s.box, -1)}, id="box-tag"),
        pytest.param(lambda s: {"box": s.box[:-1]}, id="box-cut"),
        pytest.param(lambda s: {"box": b""}, id="box-empty"),
        pytest.param(lambda s: {"nonce": flip(s.nonce, 5)}, id="nonce"),
        pytest.param(lambda s: {"request_id": OTHER_RID}, id="request-id"),
        pytest.param(lambda s: {"stream": STREAM[:-1] + "1"}, id="stream"),
        pytest.param(lambda s: {"stream": STREAM + "x"}, id="stream-longer"),
        pytest.param(lambda s: {"sender_key": reply_key_text(sealing.new_reply_key().public_key())}, id="sender"),
        pytest.param(lambda s: {"sender_key": SMALL_ORDER_KEY}, id="small-order-sender"),
    ],
)
def test_a_record_changed_on_the_way_does_not_open(change):
    key = sealing.new_reply_key()
    sealed = sealer_for(key).seal(reply(message="the truth"))
    altered = dataclasses.replace(sealed, **change(sealed))
    with pytest.raises(SealBroken):
        open_sealed(key, altered)
    assert reopen(key, sealed) == reply(message="the truth")  # the original still opens


def test_a_record_moved_into_another_stream_of_the_same_request_does_not_open():
    key = sealing.new_reply_key()
    first, second = sealer_for(key, stream="a" * 32), sealer_for(key, stream="b" * 32)
    opener = StreamOpener(key)
    one, two = first.seal(reply(stream="a" * 32)), second.seal(reply(stream="b" * 32))
    assert opener.open(one) and opener.open(two)  # both streams' keys are now cached
    with pytest.raises(SealBroken):
        opener.open(dataclasses.replace(one, stream=two.stream, sender_key=two.sender_key))


@pytest.mark.parametrize(
    "fields",
    [
        {"request_id": "NOT-AN-ID"},
        {"request_id": RID.upper()},
        {"request_id": 5},
        {"stream": ""},
        {"stream": "a b"},
        {"stream": "x" * 65},
        {"stream": None},
        {"sender_key": ""},
        {"sender_key": "ed25519:" + "A" * 43 + "="},
        {"sender_key": None},
        {"nonce": ""},
        {"nonce": "AAAA"},
        {"nonce": "A" * 10_000},
        {"nonce": "AAAAAAAAAAAAAAA="},
        {"nonce": b"AAAAAAAAAAAAAAAA"},
        {"box": "not base64!"},
        {"box": "AAA"},
        {"box": "A" * (p.MAX_SEALED_BOX_CHARS + 4)},
        {"box": bytes(p.MAX_SEALED_BOX_BYTES + 1)},
        {"box": None},
    ],
)
def test_malformed_fields_are_seal_broken(fields):
    key = sealing.new_reply_key()
    sealed = dataclasses.replace(sealer_for(key).seal(reply()), **fields)
    with pytest.raises(SealBroken):
        open_sealed(key, sealed)


@given(request_ids | anything, streams | anything, anything, anything, anything)
def test_whatever_a_sealed_record_holds_it_opens_or_is_seal_broken(request_id, stream, sender, nonce, box):
    key = X25519PrivateKey.from_private_bytes(RFC_ALICE_SECRET)
    sealed = p.Sealed(request_id=request_id, stream=stream, sender_key=sender, nonce=nonce, box=box)
    with pytest.raises(SealBroken) as raised:
        open_sealed(key, sealed)
    assert isinstance(raised.value, MinigitError) and "\n" not in raised.value.message


@given(st.binary(max_size=64), st.integers(0, 10_000))
def test_any_bit_flipped_on_the_wire_is_refused_or_seal_broken(noise, position):
    """The record as bytes, damaged: parse_message refuses it (ProtocolError), or
    it parses and does not open (SealBroken), or the damage hit nothing that counts."""
    key = X25519PrivateKey.from_private_bytes(RFC_ALICE_SECRET)
    wire = sealer_for(key).seal(reply()).to_bytes()
    position %= len(wire)
    damaged = wire[:position] + noise + wire[position + len(noise) :]
    try:
        received = p.parse_message(damaged, allowed=p.REPLY_TYPES)
        opened = open_sealed(key, received)  # type: ignore[arg-type]
    except (ProtocolError, SealBroken):
        return
    assert p.parse_message(opened) == reply()


def test_the_sealer_refuses_what_it_cannot_seal_to():
    with pytest.raises(MalformedKey):
        StreamSealer("ed25519:" + base64.b64encode(bytes(32)).decode(), RID, STREAM)
    with pytest.raises(MalformedKey, match="small order"):
        StreamSealer(SMALL_ORDER_KEY, RID, STREAM)
    good = reply_key_text(sealing.new_reply_key().public_key())
    with pytest.raises(ProtocolError):
        StreamSealer(good, "short", STREAM)
    with pytest.raises(ProtocolError):
        StreamSealer(good, RID, "")


def test_a_record_of_another_request_is_not_sealed_into_this_stream():
    sealer = sealer_for(sealing.new_reply_key())
    with pytest.raises(ProtocolError, match="another request"):
        sealer.seal(chunk(request_id=OTHER_RID))


def test_the_opener_derives_each_streams_key_once(monkeypatch):
    derivations = []
    real = sealing.derive_stream_key

    def counting(*args):
        derivations.append(args)
        return real(*args)

    key = sealing.new_reply_key()
    records = [sealer_for(key).seal(chunk(b"x"))]  # derived by the sealer, before counting
    sealer = sealer_for(key, stream="s2")
    records += [sealer.seal(chunk(bytes([i]))) for i in range(200)]
    monkeypatch.setattr(sealing, "derive_stream_key", counting)
    opener = StreamOpener(key)
    for record in records:
        opener.open(record)
    assert len(derivations) == 2


def test_the_opener_keeps_a_bounded_number_of_stream_keys():
    key = sealing.new_reply_key()
    records = [sealer_for(key, stream=f"s{i}").seal(reply(stream=f"s{i}")) for i in range(40)]
    opener = StreamOpener(key)
    for record in records:
        p.parse_message(opener.open(record))
    assert len(opener._streams) == sealing.MAX_OPEN_STREAMS
    assert p.parse_message(opener.open(records[0])) == reply(stream="s0")  # an evicted stream derives again


def test_forged_sender_keys_do_not_fill_the_opener():
    key = sealing.new_reply_key()
    sealed = sealer_for(key).seal(reply())
    opener = StreamOpener(key)
    for _ in range(100):
        with pytest.raises(SealBroken):
            opener.open(dataclasses.replace(sealed, sender_key=reply_key_text(sealing.new_reply_key().public_key())))
    assert len(opener._streams) <= sealing.MAX_OPEN_STREAMS
    assert p.parse_message(opener.open(sealed)) == reply()


def test_a_full_chunk_of_noise_sealed_still_fits_a_kafka_record():
    key = sealing.new_reply_key()
    raw = os.urandom(codec.CHUNK_SIZE)
    piece = codec.encode_piece(0, raw)
    assert piece.encoding == codec.RAW  # incompressible: the largest a chunk record gets
    message = p.Chunk.of_piece(RID, "r" * p.MAX_NAME_LENGTH, codec.hash_bytes(raw), 1, piece, STREAM)
    wire = sealer_for(key).seal(message).to_bytes()
    assert len(wire) < 1_048_576  # Kafka's default max.message.bytes
    assert len(wire) < codec.MAX_RECORD_BYTES  # and the margin minigit keeps under it
    received = p.parse_message(wire, allowed=p.REPLY_TYPES)
    opened = p.parse_message(open_sealed(key, received), allowed=(p.Chunk,))
    assert opened == message and opened.raw() == raw


def test_a_box_too_large_for_a_record_is_not_sealed(monkeypatch):
    monkeypatch.setattr(sealing, "MAX_SEALED_BOX_BYTES", 100)
    with pytest.raises(ProtocolError, match="longer than 100"):
        sealer_for(sealing.new_reply_key()).seal(chunk(b"x" * 200))


@given(st.binary(max_size=2000), request_ids, streams)
def test_any_content_round_trips_through_any_stream(data, request_id, stream):
    key = X25519PrivateKey.from_private_bytes(RFC_ALICE_SECRET)
    message = chunk(data, request_id)
    sealed = StreamSealer(reply_key_text(key.public_key()), request_id, stream).seal(message)
    assert p.parse_message(open_sealed(key, sealed)) == message


# ---------------------------------------------------------------- reply signatures


def server_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SERVER_SECRET)


def server_key_text() -> str:
    return identity.public_key_text(server_key().public_key())


def test_a_signed_reply_names_the_key_and_verifies():
    original = reply(version=3, tree="b" * 64)
    signed = sealing.sign_reply(server_key(), original, "team")
    assert original.signature == "" and original.server_key == ""  # a copy: the original is unchanged
    assert signed.server_key == server_key_text() and len(signed.signature) == 88
    assert dataclasses.replace(signed, server_key="", signature="") == original
    assert sealing.reply_signed_by(server_key_text(), signed, "team")
    received = p.parse_message(signed.to_bytes())  # as the client reads it
    assert sealing.reply_signed_by(server_key_text(), received, "team")  # type: ignore[arg-type]


def test_the_reply_payload_is_frozen():
    """The bytes are pinned: a change (a new Reply field too) makes clients of one
    version refuse the replies of the other, so it must be deliberate."""
    payload = sealing.reply_payload(reply(message="é", version=2), "ns")
    assert payload == (
        b'minigit-reply-v1\n{"namespace":"ns","reply":{"action":"pull","blob_bytes":0,"blob_count":0,'
        b'"entries":[],"head":null,"message":"\\u00e9","more":false,"replica":"1",'
        b'"repos":[],"request_id":"0123456789abcdef0123456789abcdef",'
        b'"server_key":"","status":"ok","stream":"fedcba9876543210fedcba9876543210","tree":null,"type":"reply",'
        b'"v":1,"version":2}}'
    )


def test_the_payload_is_the_domain_and_canonical_json_without_the_signature():
    signed = sealing.sign_reply(server_key(), reply(), "")
    payload = sealing.reply_payload(signed, "")
    assert payload.startswith(sealing.REPLY_DOMAIN) and payload.count(b"\n") == 1
    document = json.loads(payload[len(sealing.REPLY_DOMAIN) :])
    assert document == {"namespace": "", "reply": {k: v for k, v in signed.to_dict().items() if k != "signature"}}
    assert sealing.reply_payload(dataclasses.replace(signed, signature="x"), "") == payload
    assert sealing.REPLY_DOMAIN not in (identity.SIGNING_DOMAIN, identity.ATTESTATION_DOMAIN, sealing.SEAL_DOMAIN)


REPLY_CHANGES = {
    "request_id": OTHER_RID,
    "action": "push",
    "stream": "another",
    "replica": "2",
    "status": p.Status.REJECTED,
    "message": "x",
    "version": 9,
    "head": 9,
    "tree": "c" * 64,
    "blob_count": 1,
    "blob_bytes": 1,
    "entries": [p.LogEntry(version=1, author="a", time_ms=1, message="m")],
    "repos": [p.RepoInfo(name="r", head=1, time_ms=1, author="a", visibility=p.Visibility.PUBLIC, access="public")],
    "more": True,
}


def test_every_reply_field_is_listed_here():
    unsigned = {"server_key", "signature"}
    assert {f.name for f in dataclasses.fields(p.Reply)} - unsigned == set(REPLY_CHANGES)


@pytest.mark.parametrize("name", sorted(REPLY_CHANGES))
def test_a_reply_with_any_field_changed_does_not_verify(name):
    signed = sealing.sign_reply(server_key(), reply(), "ns")
    changed = dataclasses.replace(signed, **{name: REPLY_CHANGES[name]})
    assert not sealing.reply_signed_by(server_key_text(), changed, "ns")


def test_a_reply_is_signed_for_one_namespace():
    signed = sealing.sign_reply(server_key(), reply(), "ns")
    assert not sealing.reply_signed_by(server_key_text(), signed, "ns2")
    assert not sealing.reply_signed_by(server_key_text(), signed, "")


def test_a_reply_signed_by_another_key_is_refused():
    impostor = Ed25519PrivateKey.generate()
    forged = sealing.sign_reply(impostor, reply(), "ns")
    assert not sealing.reply_signed_by(server_key_text(), forged, "ns")  # names the impostor's key
    claiming = dataclasses.replace(forged, server_key=server_key_text())
    assert not sealing.reply_signed_by(server_key_text(), claiming, "ns")  # claims ours, signed by theirs
    unsigned = reply(server_key=server_key_text())
    assert not sealing.reply_signed_by(server_key_text(), unsigned, "ns")


@given(anything, anything, anything)
def test_whatever_the_key_signature_or_namespace_the_answer_is_a_bool(key_text, signature, namespace):
    signed = sealing.sign_reply(server_key(), reply(), "ns")
    forged = dataclasses.replace(signed, signature=signature, server_key=key_text)
    assert sealing.reply_signed_by(key_text, forged, namespace) is False
    assert sealing.reply_signed_by(key_text, signed, "ns") is (key_text == server_key_text())
    assert sealing.reply_signed_by(server_key_text(), signed, namespace) is (namespace == "ns")


def test_another_record_type_is_seal_broken():
    with pytest.raises(SealBroken, match="got a Reply record"):
        open_sealed(sealing.new_reply_key(), reply())  # type: ignore[arg-type]


def test_not_a_reply_at_all_is_false():
    assert sealing.reply_signed_by(server_key_text(), None, "ns") is False  # type: ignore[arg-type]
    odd = dataclasses.replace(reply(server_key=server_key_text()), entries=[object()])  # JSON cannot write it
    assert sealing.reply_signed_by(server_key_text(), odd, "ns") is False


@given(
    st.builds(
        reply,
        request_id=request_ids,
        stream=streams,
        replica=names,
        status=st.sampled_from(p.Status),
        message=st.text(max_size=30),
        version=st.none() | small_ints,
        blob_count=small_ints,
    ),
    namespaces,
    st.builds(
        reply,
        request_id=request_ids,
        stream=streams,
        replica=names,
        status=st.sampled_from(p.Status),
        message=st.text(max_size=30),
        version=st.none() | small_ints,
        blob_count=small_ints,
    ),
    namespaces,
)
def test_distinct_replies_or_namespaces_have_distinct_payloads(one, ns_one, two, ns_two):
    same = (one.to_dict(), ns_one) == (two.to_dict(), ns_two)
    assert (sealing.reply_payload(one, ns_one) == sealing.reply_payload(two, ns_two)) is same


def test_a_bad_namespace_is_refused_when_signing():
    with pytest.raises(MinigitError):
        sealing.sign_reply(server_key(), reply(), "not a namespace!")
