"""minigit.identity: the signing payload is unambiguous and covers everything a
request says, signatures are standard Ed25519, and whatever arrives malformed
(keys, signatures, key files) is a MinigitError, never another exception."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import assume, given
from hypothesis import strategies as st

from minigit import codec, identity
from minigit import protocol as p
from minigit.errors import MalformedKey, MalformedSignature, MinigitError, ProtocolError, UsageError
from minigit.identity import NO_CHUNKS, ChunkDigest, chunks_digest, signing_payload

# RFC 8032, section 7.1, tests 1 and 2
RFC_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_EMPTY_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
RFC2_SECRET = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
RFC2_SIGNATURE = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)

BASE64_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# RFC 7748, section 6.1: Alice's X25519 public key, as a reply key
RFC_REPLY_KEY = "x25519:hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
ints = st.integers(0, p.MAX_INT - 1)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
shas = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
request_ids = st.from_regex(r"[0-9a-f]{32}", fullmatch=True)
namespaces = st.from_regex(r"[A-Za-z0-9._-]{0,30}", fullmatch=True)
texts = st.text(max_size=40)
key_texts = st.text(max_size=p.MAX_KEY_TEXT)

# A value for every field any request has: a request type with a field missing
# here fails these tests until its values are listed (and so signed-tested).
FIELD_VALUES: dict[str, st.SearchStrategy] = {
    "request_id": request_ids,
    "repo": names,
    "user": names,
    "reply_partition": ints,
    "timeout_ms": ints,
    "signed_ms": ints,
    "chunks": st.one_of(st.just(""), shas),
    "reply_key": key_texts,
    "signature": st.text(max_size=p.MAX_SIGNATURE_TEXT),
    "tree": shas,
    "message": texts,
    "visibility": st.sampled_from(p.Visibility),
    "version": ints,
    "lost": st.lists(shas, max_size=3),
    "base": ints,
    "limit": ints,
    "member": names,
    "level": st.sampled_from(p.Access),
    "public_key": key_texts,
    "new_key": key_texts,
    "target": ints,
    "base_tree": st.one_of(st.just(""), shas),
    "paths": st.lists(st.sampled_from(["a", "src/b.py", "docs"]), max_size=3),
    "changes": st.booleans(),
    "start": ints,
    "after": st.one_of(st.just(""), names),
    "of_request": request_ids,
}
REQUEST_TYPES = sorted(
    (cls for cls in p._registry.values() if issubclass(cls, p.Request)), key=lambda cls: cls.action or ""
)


def signed_fields(cls: type[p.Request]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in identity.UNSIGNED_FIELDS]


def requests_of(cls: type[p.Request]) -> st.SearchStrategy[p.Request]:
    return st.builds(cls, **{f.name: FIELD_VALUES[f.name] for f in dataclasses.fields(cls)})


requests = st.sampled_from(REQUEST_TYPES).flatmap(requests_of)
digests = st.builds(
    ChunkDigest,
    sha=shas,
    index=ints,
    count=ints,
    encoding=st.sampled_from(codec.ENCODINGS),
    data_sha256=shas,
)
digest_lists = st.lists(digests, max_size=4, unique=True)
chunk_digests_texts = digest_lists.map(chunks_digest)
private_keys = st.binary(min_size=32, max_size=32).map(Ed25519PrivateKey.from_private_bytes)


def a_push(**changes: object) -> p.PushRequest:
    fields = {
        "request_id": "0123456789abcdef0123456789abcdef",
        "repo": "lab2",
        "user": "alice",
        "reply_partition": 3,
        "base": 4,
        "tree": "ab" * 32,
        "message": "fix the parser \u2013 \u00f1",
        "signed_ms": 1_700_000_000_123,
        "reply_key": RFC_REPLY_KEY,
    }
    return p.PushRequest(**{**fields, **changes})


A_DIGEST = ChunkDigest("cd" * 32, 0, 2, "zlib", "ef" * 32)
A_DIGEST_SHA = "b21f006c6dcd03b866d0b5a8967832614a5f3ad57ad310f7bc93666035bfec79"
RFC_KEY_TEXT = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
# the RFC 8032 key's signature of a_push(chunks=A_DIGEST_SHA) in namespace "team1-"
A_PUSH_SIGNATURE = "TKfjC/mTUqzx+3n4D9LZV46Pv8nX4WqAYhU0cfKJ+llkjUim5mW6hW3mh2ooXR9a/kzdpvhMo5ReZHZjd8vPDw=="


# ---------------------------------------------------------------- the chunks digest


def test_the_chunks_digest_is_frozen():
    """Signatures cover it, so its encoding may never change either."""
    assert chunks_digest([A_DIGEST]) == A_DIGEST_SHA
    spelled = b'[["' + b"cd" * 32 + b'",0,2,"zlib","' + b"ef" * 32 + b'"]]'
    assert hashlib.sha256(spelled).hexdigest() == A_DIGEST_SHA
    assert identity.NO_CHUNKS == chunks_digest([]) == hashlib.sha256(b"[]").hexdigest()


@given(digest_lists, st.randoms(use_true_random=False))
def test_the_order_of_chunks_and_chunks_sent_twice_do_not_matter(chunk_digests, random):
    """A client names the chunks it uploaded whatever order it sent them in and
    however often it sent them again."""
    again = [*chunk_digests, *chunk_digests[:2]]
    random.shuffle(again)
    assert chunks_digest(again) == chunks_digest(chunk_digests)
    assert chunks_digest(iter(again)) == chunks_digest(chunk_digests)  # any iterable, read once


@given(st.data(), digest_lists.filter(bool))
def test_any_change_to_a_chunk_changes_the_digest(data, chunk_digests):
    position = data.draw(st.integers(0, len(chunk_digests) - 1))
    name = data.draw(st.sampled_from([f.name for f in dataclasses.fields(ChunkDigest)]))
    values = {"sha": shas, "data_sha256": shas, "encoding": st.sampled_from(codec.ENCODINGS)}.get(name, ints)
    original = chunk_digests[position]
    value = data.draw(values.filter(lambda v: v != getattr(original, name)))
    changed = [*chunk_digests]
    changed[position] = dataclasses.replace(original, **{name: value})
    assume(set(changed) != set(chunk_digests))  # not merely another chunk of the list
    assert chunks_digest(changed) != chunks_digest(chunk_digests)
    # a chunk left out, or one more, is a change too
    assert chunks_digest(chunk_digests[1:]) != chunks_digest(chunk_digests)
    extra = dataclasses.replace(original, index=original.index + 1 if original.index + 1 < p.MAX_INT else 0)
    assume(extra not in chunk_digests)
    assert chunks_digest([*chunk_digests, extra]) != chunks_digest(chunk_digests)


@given(digest_lists)
def test_the_chunks_digest_is_a_sha256_the_payload_accepts(chunk_digests):
    digest = chunks_digest(chunk_digests)
    assert p.check_sha(digest) == digest
    rows = [list(dataclasses.astuple(d)) for d in sorted(chunk_digests)]
    assert digest == hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------- the payload


def test_every_request_type_is_covered():
    assert {cls.action for cls in REQUEST_TYPES} == {
        "init",
        "pull",
        "push",
        "log",
        "ping",
        "share",
        "visibility",
        "register",
        "rotate",
        "repos",
        "outcome",
    }


def test_the_payload_is_frozen():
    """Signatures in the log are verified again years later (a replica rebuilt from
    it, log --verify): these bytes, and the signature over them, may never change."""
    payload = signing_payload(a_push(chunks=chunks_digest([A_DIGEST])), "team1-")
    assert payload == (
        b"minigit-request-v1\n"
        b'{"namespace":"team1-",'
        b'"request":{"action":"push","base":4,"chunks":"' + A_DIGEST_SHA.encode() + b'",'
        b'"message":"fix the parser \\u2013 \\u00f1",'
        b'"reply_key":"x25519:hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=","reply_partition":3,'
        b'"repo":"lab2","request_id":"0123456789abcdef0123456789abcdef","signed_ms":1700000000123,'
        b'"timeout_ms":30000,"tree":"' + b"ab" * 32 + b'","type":"request","user":"alice","v":1}}'
    )
    rfc_key = Ed25519PrivateKey.from_private_bytes(RFC_SECRET)
    assert identity.sign(rfc_key, payload) == A_PUSH_SIGNATURE
    # the signature field is not part of what it signs
    assert signing_payload(a_push(chunks=A_DIGEST_SHA, signature=A_PUSH_SIGNATURE), "team1-") == payload


@given(requests, namespaces)
def test_the_payload_spells_out_every_input(request, namespace):
    """Every input can be read back from the payload, so two different inputs
    can never give the same payload."""
    payload = signing_payload(request, namespace)
    assert payload.startswith(identity.SIGNING_DOMAIN)
    body = payload[len(identity.SIGNING_DOMAIN) :]
    assert body.isascii() and b"\n" not in body
    document = json.loads(body)
    fields = {k: v for k, v in request.to_dict().items() if k not in identity.UNSIGNED_FIELDS}
    assert document == {"request": fields, "namespace": namespace}
    assert document["request"]["chunks"] == request.chunks
    # in its one canonical spelling: sorted keys, no whitespace between tokens
    assert body == json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@given(st.data())
def test_any_change_to_any_signed_field_changes_the_payload(data):
    request = data.draw(requests)
    name = data.draw(st.sampled_from(signed_fields(type(request))))
    value = data.draw(FIELD_VALUES[name].filter(lambda v: v != getattr(request, name)))
    changed = dataclasses.replace(request, **{name: value})
    assert signing_payload(changed, "") != signing_payload(request, "")


@given(requests, namespaces, namespaces, ints, ints)
def test_the_namespace_and_the_time_are_signed(request, ns1, ns2, t1, t2):
    assume((ns1, t1) != (ns2, t2))
    first = signing_payload(dataclasses.replace(request, signed_ms=t1), ns1)
    assert first != signing_payload(dataclasses.replace(request, signed_ms=t2), ns2)


@given(requests, chunk_digests_texts, chunk_digests_texts)
def test_the_chunks_are_signed(request, chunks, other_chunks):
    """The digest of what a request uploaded is one of its fields, signed like any other."""
    assume(chunks != other_chunks)
    first = signing_payload(dataclasses.replace(request, chunks=chunks), "")
    assert first != signing_payload(dataclasses.replace(request, chunks=other_chunks), "")
    assert first != signing_payload(dataclasses.replace(request, chunks=""), "")


@given(st.data())
def test_requests_of_different_types_never_share_a_payload(data):
    first, second = data.draw(st.lists(st.sampled_from(REQUEST_TYPES), min_size=2, max_size=2, unique=True))
    common = {name: data.draw(FIELD_VALUES[name]) for name in ("request_id", "repo", "user", "reply_partition")}

    def build(cls: type[p.Request]) -> p.Request:
        extra = {f.name: data.draw(FIELD_VALUES[f.name]) for f in dataclasses.fields(cls) if f.name not in common}
        return cls(**common, **extra)

    assert signing_payload(build(first), "") != signing_payload(build(second), "")


def test_the_signature_field_is_not_signed_and_every_other_is():
    assert {"signature"} == identity.UNSIGNED_FIELDS
    request = p.PingRequest(request_id="ab" * 16, repo="r", user="u", reply_partition=0, signature="one")
    payload = signing_payload(request, "")
    assert payload == signing_payload(dataclasses.replace(request, signature="two"), "")
    assert payload != signing_payload(dataclasses.replace(request, user="v"), "")
    assert payload != signing_payload(dataclasses.replace(request, chunks=NO_CHUNKS), "")
    assert b"signature" not in payload
    for name in ("signed_ms", "chunks", "reply_key", "timeout_ms", "reply_partition"):
        assert f'"{name}":'.encode() in payload


def test_a_chunk_digest_names_its_piece_and_hashes_its_bytes():
    piece = codec.encode_piece(1, b"hello " * 100)
    chunk = p.Chunk.of_piece("ab" * 16, "r", "cd" * 32, 3, piece)
    digest = ChunkDigest.of(chunk)
    assert digest == ChunkDigest("cd" * 32, 1, 3, piece.encoding, hashlib.sha256(piece.payload).hexdigest())
    other = dataclasses.replace(chunk, payload=piece.payload + b"!")
    assert ChunkDigest.of(other) != digest


@pytest.mark.parametrize("chunks", ["", "AB" * 32, "a" * 63, "a" * 65, "not a digest"])
def test_a_chunks_digest_that_is_not_a_sha256_is_refused(chunks):
    rfc_key = Ed25519PrivateKey.from_private_bytes(RFC_SECRET)
    with pytest.raises(ProtocolError, match="invalid object id"):
        identity.sign_request(rfc_key, a_push(), chunks, "")
    if chunks:  # "": a request that names no digest (not signed yet)
        with pytest.raises(ProtocolError, match="invalid object id"):
            p.parse_message(a_push(chunks=chunks, signature=A_PUSH_SIGNATURE).to_bytes())


def test_a_malformed_namespace_is_refused():
    with pytest.raises(UsageError, match="invalid namespace"):
        signing_payload(a_push(), "bad namespace")
    with pytest.raises(UsageError, match="invalid namespace"):
        identity.attestation_payload("bad namespace", "alice", RFC_KEY_TEXT, A_PUSH_SIGNATURE)


# ---------------------------------------------------------------- signed requests


def test_sign_request_signs_the_payload_and_sets_the_signature():
    rfc_key = Ed25519PrivateKey.from_private_bytes(RFC_SECRET)
    request = identity.sign_request(rfc_key, a_push(), A_DIGEST_SHA, "team1-")
    assert request == a_push(chunks=A_DIGEST_SHA, signature=A_PUSH_SIGNATURE)
    # signing it again as it is gives the same request: Ed25519 is deterministic, the old signature is not signed
    assert identity.sign_request(rfc_key, request, A_DIGEST_SHA, "team1-") == request
    assert identity.request_signed_by(RFC_KEY_TEXT, request, "team1-")
    # signed naming other chunks: the digest is set anew, and signed with the rest
    other = identity.sign_request(rfc_key, request, NO_CHUNKS, "team1-")
    assert other.chunks == NO_CHUNKS and other.signature != request.signature
    assert identity.request_signed_by(RFC_KEY_TEXT, other, "team1-")
    assert not identity.request_signed_by(RFC_KEY_TEXT, dataclasses.replace(other, chunks=A_DIGEST_SHA), "team1-")


@given(private_keys, private_keys, requests, chunk_digests_texts, chunk_digests_texts, namespaces, namespaces)
def test_a_signed_request_checks_only_with_its_key_chunks_and_namespace(
    key, other_key, request, chunks, other_chunks, namespace, other_namespace
):
    request = identity.sign_request(key, request, chunks, namespace)
    assert request.chunks == chunks
    key_text = identity.public_key_text(key.public_key())
    assert identity.request_signed_by(key_text, request, namespace)
    other_text = identity.public_key_text(other_key.public_key())
    if other_text != key_text:
        assert not identity.request_signed_by(other_text, request, namespace)
    if other_chunks != chunks:
        assert not identity.request_signed_by(key_text, dataclasses.replace(request, chunks=other_chunks), namespace)
    if other_namespace != namespace:
        assert not identity.request_signed_by(key_text, request, other_namespace)


@given(st.data(), private_keys)
def test_a_signed_request_changed_in_any_signed_field_no_longer_checks(data, key):
    request = identity.sign_request(key, data.draw(requests), NO_CHUNKS, "ns")
    name = data.draw(st.sampled_from(signed_fields(type(request))))
    value = data.draw(FIELD_VALUES[name].filter(lambda v: v != getattr(request, name)))
    changed = dataclasses.replace(request, **{name: value})
    assert not identity.request_signed_by(identity.public_key_text(key.public_key()), changed, "ns")


@pytest.mark.parametrize(
    "key_text, signature",
    [
        ("not a key", A_PUSH_SIGNATURE),
        ("ed25519:" + "A" * 44, A_PUSH_SIGNATURE),
        (RFC_KEY_TEXT, ""),
        (RFC_KEY_TEXT, "not base64!"),
        (RFC_KEY_TEXT, "A" * 10_000),
        (RFC_KEY_TEXT, A_PUSH_SIGNATURE[:-4] + "AAA="),
        (None, A_PUSH_SIGNATURE),
    ],
)
def test_a_malformed_key_or_signature_is_a_refusal_not_a_crash(key_text, signature):
    request = a_push(chunks=A_DIGEST_SHA, signature=signature)
    assert identity.request_signed_by(key_text, request, "team1-") is False
    not_a_digest = dataclasses.replace(request, chunks="not a digest")
    assert identity.request_signed_by(key_text, not_a_digest, "team1-") is False
    good = a_push(chunks=A_DIGEST_SHA, signature=A_PUSH_SIGNATURE)
    assert identity.request_signed_by(RFC_KEY_TEXT, good, "bad ns!") is False
    assert identity.request_signed_by(RFC_KEY_TEXT, good, "team1-") is True  # what each case spoils


# ---------------------------------------------------------------- attestations


def test_the_attestation_payload_is_frozen():
    payload = identity.attestation_payload("team1-", "alice", RFC_KEY_TEXT, A_PUSH_SIGNATURE)
    assert payload == (
        b"minigit-attestation-v1\n"
        b'{"key":"ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=","namespace":"team1-",'
        b'"request":"' + A_PUSH_SIGNATURE.encode() + b'","user":"alice"}'
    )
    rfc_key = Ed25519PrivateKey.from_private_bytes(RFC_SECRET)
    assert identity.sign(rfc_key, payload) == (
        "oRbvjwgC0deHL9BgoetCtzG0X60kld4HBdRiwiCNG8QAQG2ME1p8rxnxh/8BVL+nmkOeuoH+iWvN4IR0aplOCw=="
    )


@given(namespaces, names, texts, texts)
def test_the_attestation_payload_spells_out_every_input(namespace, user, key, request_signature):
    payload = identity.attestation_payload(namespace, user, key, request_signature)
    assert payload.startswith(identity.ATTESTATION_DOMAIN)
    body = payload[len(identity.ATTESTATION_DOMAIN) :]
    assert body.isascii() and b"\n" not in body
    assert json.loads(body) == {"namespace": namespace, "user": user, "key": key, "request": request_signature}


def test_the_domains_keep_every_kind_of_signature_apart():
    domains = [identity.SIGNING_DOMAIN, identity.ATTESTATION_DOMAIN, identity.OPERATOR_DOMAIN]
    assert len(set(domains)) == 3 and all(d.endswith(b"\n") and d.count(b"\n") == 1 for d in domains)
    request_payload = signing_payload(a_push(chunks=A_DIGEST_SHA), "team1-")
    attestation = identity.attestation_payload("team1-", "alice", RFC_KEY_TEXT, A_PUSH_SIGNATURE)
    assert not any(request_payload.startswith(d) for d in domains[1:])
    assert not any(attestation.startswith(d) for d in (domains[0], domains[2]))


@given(private_keys, private_keys, names, names, private_keys, st.data())
def test_an_attestation_checks_only_for_its_server_user_key_and_request(server, other, user, other_user, author, data):
    author_text = identity.public_key_text(author.public_key())
    request_signature = identity.sign(author, b"a request")
    attestation = identity.sign(server, identity.attestation_payload("ns", user, author_text, request_signature))
    server_text = identity.public_key_text(server.public_key())
    assert identity.attested_by(server_text, "ns", user, author_text, request_signature, attestation)
    other_text = identity.public_key_text(other.public_key())
    if other_text != server_text:
        assert not identity.attested_by(other_text, "ns", user, author_text, request_signature, attestation)
    if other_text != author_text:
        assert not identity.attested_by(server_text, "ns", user, other_text, request_signature, attestation)
    if other_user != user:
        assert not identity.attested_by(server_text, "ns", other_user, author_text, request_signature, attestation)
    another_request = identity.sign(author, b"another request")
    assert not identity.attested_by(server_text, "ns", user, author_text, another_request, attestation)
    assert not identity.attested_by(server_text, "other", user, author_text, request_signature, attestation)
    garbage = data.draw(st.one_of(st.text(max_size=100), st.none(), st.integers()))
    assert not identity.attested_by(server_text, "ns", user, author_text, request_signature, garbage)
    assert not identity.attested_by(garbage, "ns", user, author_text, request_signature, attestation)


# ---------------------------------------------------------------- signatures


def test_signatures_are_ed25519_as_rfc_8032_defines_it():
    key = Ed25519PrivateKey.from_private_bytes(RFC_SECRET)
    assert identity.public_key_bytes(key.public_key()) == RFC_PUBLIC
    assert identity.sign(key, b"") == base64.b64encode(RFC_EMPTY_SIGNATURE).decode()
    second = Ed25519PrivateKey.from_private_bytes(RFC2_SECRET)
    assert identity.sign(second, b"\x72") == base64.b64encode(RFC2_SIGNATURE).decode()
    assert identity.verify(second.public_key(), b"\x72", base64.b64encode(RFC2_SIGNATURE).decode())


@given(private_keys, private_keys, requests, namespaces, namespaces)
def test_a_signature_verifies_only_under_its_key_payload_and_namespace(
    key, other_key, request, namespace, other_namespace
):
    payload = signing_payload(request, namespace)
    signature = identity.sign(key, payload)
    assert len(signature) == identity.MAX_SIGNATURE_TEXT
    assert identity.verify(key.public_key(), payload, signature)
    if identity.public_key_bytes(other_key.public_key()) != identity.public_key_bytes(key.public_key()):
        assert not identity.verify(other_key.public_key(), payload, signature)
    if other_namespace != namespace:
        elsewhere = signing_payload(request, other_namespace)
        assert not identity.verify(key.public_key(), elsewhere, signature)
    other_time = request.signed_ms + 1 if request.signed_ms + 1 < p.MAX_INT else request.signed_ms - 1
    later = signing_payload(dataclasses.replace(request, signed_ms=other_time), namespace)
    assert not identity.verify(key.public_key(), later, signature)


@given(private_keys, st.binary(max_size=64), st.integers(0, 64 * 8 - 1))
def test_a_signature_with_any_bit_flipped_does_not_verify(key, payload, bit):
    raw = bytearray(base64.b64decode(identity.sign(key, payload)))
    raw[bit // 8] ^= 1 << (bit % 8)
    assert identity.verify(key.public_key(), payload, base64.b64encode(bytes(raw)).decode()) is False


def test_only_the_canonical_spelling_of_a_signature_is_accepted():
    key = Ed25519PrivateKey.from_private_bytes(RFC_SECRET)
    signature = identity.sign(key, b"")
    assert signature.endswith("==")
    # 64 bytes leave 4 unused bits in the last base64 digit: set one
    last = BASE64_DIGITS[BASE64_DIGITS.index(signature[-3]) ^ 1]
    assert base64.b64decode(signature[:-3] + last + "==") == base64.b64decode(signature)
    for spelling in (signature[:-3] + last + "==", signature[:-2], signature + "\n", " " + signature):
        with pytest.raises(MalformedSignature):
            identity.verify(key.public_key(), b"", spelling)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=100), st.none(), st.integers(), st.lists(st.text())))
def test_whatever_is_passed_as_a_signature_is_a_bool_or_malformed_signature(signature):
    key = Ed25519PrivateKey.from_private_bytes(RFC_SECRET)
    try:
        assert identity.verify(key.public_key(), b"payload", signature) in (True, False)
    except MalformedSignature as error:
        assert "\n" not in error.message


def test_a_huge_signature_is_refused_before_it_is_decoded():
    key = Ed25519PrivateKey.from_private_bytes(RFC_SECRET)
    with pytest.raises(MalformedSignature, match="longer than 88"):
        identity.verify(key.public_key(), b"", "A" * 10_000_000)


# ---------------------------------------------------------------- public keys and fingerprints


@given(private_keys)
def test_a_public_key_text_parses_back_to_the_key(key):
    text = identity.public_key_text(key.public_key())
    assert text.startswith("ed25519:") and len(text) == identity.MAX_PUBLIC_KEY_TEXT
    parsed = identity.parse_public_key(text)
    assert identity.public_key_bytes(parsed) == identity.public_key_bytes(key.public_key())
    assert identity.verify(parsed, b"m", identity.sign(key, b"m"))


def test_the_fingerprint_is_the_sha256_of_the_raw_key():
    key = identity.parse_public_key("ed25519:" + base64.b64encode(RFC_PUBLIC).decode())
    expected = base64.b64encode(hashlib.sha256(RFC_PUBLIC).digest()).decode().rstrip("=")
    assert identity.fingerprint(key) == "SHA256:" + expected
    assert len(identity.fingerprint(key)) == len("SHA256:") + 43


@given(private_keys, private_keys)
def test_different_keys_have_different_fingerprints(key, other):
    assume(identity.public_key_bytes(key.public_key()) != identity.public_key_bytes(other.public_key()))
    assert identity.fingerprint(key.public_key()) != identity.fingerprint(other.public_key())


RFC_TEXT = "ed25519:" + base64.b64encode(RFC_PUBLIC).decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ed25519:",
        RFC_TEXT.upper(),
        "ED25519:" + RFC_TEXT[8:],
        "ssh-ed25519 " + RFC_TEXT[8:],
        RFC_TEXT + "\n",
        " " + RFC_TEXT,
        RFC_TEXT.rstrip("="),  # unpadded
        # a stray bit in the padding: another spelling of the same bytes
        RFC_TEXT[:-2] + BASE64_DIGITS[BASE64_DIGITS.index(RFC_TEXT[-2]) ^ 1] + "=",
        "ed25519:" + base64.b64encode(RFC_PUBLIC + b"\0").decode(),  # 33 bytes
        "ed25519:" + base64.b64encode(RFC_PUBLIC[:31]).decode(),  # 31 bytes
        "ed25519:" + base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # the URL-safe alphabet
        "ed25519:" + "é" * 44,
        RFC_TEXT + "A" * 1_000_000,
    ],
)
def test_malformed_public_keys_are_refused(text):
    if text.endswith("p="):
        assert base64.b64decode(text[8:]) == RFC_PUBLIC
    with pytest.raises(MalformedKey, match="invalid public key"):
        identity.parse_public_key(text)


@given(st.one_of(st.text(max_size=100), st.binary(max_size=60), st.none(), st.integers()))
def test_whatever_is_passed_as_a_public_key_is_a_key_or_malformed_key(text):
    try:
        key = identity.parse_public_key(text)
    except MalformedKey as error:
        assert "\n" not in error.message
    else:
        assert identity.public_key_text(key) == text


@given(st.text(alphabet=BASE64_DIGITS + "=", min_size=44, max_size=44))
def test_any_44_base64_digits_are_a_key_only_in_their_canonical_spelling(digits):
    try:
        key = identity.parse_public_key("ed25519:" + digits)
    except MalformedKey:
        return
    assert identity.public_key_text(key) == "ed25519:" + digits


# ---------------------------------------------------------------- private key files


@given(private_keys)
def test_a_private_key_survives_its_pem_file(key):
    pem = identity.private_key_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    loaded = identity.load_private_key_pem(pem)
    assert identity.public_key_text(loaded.public_key()) == identity.public_key_text(key.public_key())


def other_private_keys() -> list[bytes]:
    ed = Ed25519PrivateKey.from_private_bytes(RFC_SECRET)
    return [
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        ed.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        ),
        ed.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        RFC_SECRET,  # raw bytes are not a file minigit writes
        identity.private_key_pem(ed) * 40,  # over the size bound
        b"",
    ]


@pytest.mark.parametrize("data", other_private_keys())
def test_a_file_that_is_not_an_ed25519_private_key_is_refused(data):
    with pytest.raises(MalformedKey, match=r"^key file /x/alice\.key "):
        identity.load_private_key_pem(data, "key file /x/alice.key")


@given(st.binary(max_size=300))
def test_whatever_bytes_a_key_file_holds_give_a_key_or_malformed_key(data):
    try:
        identity.load_private_key_pem(data)
    except MinigitError as error:
        assert isinstance(error, MalformedKey)
