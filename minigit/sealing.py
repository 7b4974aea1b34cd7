"""Confidential replies, and the service's signature on its replies. Pure (no
disk, no Kafka): the server seals and signs, the client opens and checks, with
this same code.

Sealing. Every client login may read the whole responses topic, so a reply about
a private repository travels sealed to the requester: the request carries a
fresh X25519 ``reply_key`` (``new_reply_key``, one per request, dropped after),
and each record of the answer becomes a ``protocol.Sealed``. Per answer stream
the server makes one ephemeral X25519 key; HKDF-SHA256 turns the two keys'
shared secret into one ChaCha20-Poly1305 key, bound to the request id and the
stream (``SEAL_DOMAIN``, the request id, the stream as HKDF's info; both public
keys as its salt). Each record gets a fresh random 96-bit nonce, and the request
id and stream are its associated data too, so a record moved to another request
or stream does not open. Once the ephemeral key and the reply key are dropped,
nobody can open a recorded answer again.

Signing. The server's Ed25519 key signs each Reply (``reply_payload``: its own
domain, the namespace and every field but the signature, ``server_key``
included), so a client that pinned the key (minigit.client.known_servers) can
refuse a forged reply. The content that follows a reply is bound to it by hashes.

Everything received is bounded and checked before use: a malformed key is
``MalformedKey``, a record that does not open is ``SealBroken``, a reply
signature that is malformed or does not check is ``reply_signed_by``'s False.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
from collections import OrderedDict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from minigit import identity
from minigit.config import check_namespace
from minigit.errors import MalformedKey, MinigitError, ProtocolError, SealBroken
from minigit.protocol import MAX_SEALED_BOX_BYTES, Message, Reply, Sealed

# Domain separation: the sealing keys and the reply signatures can never be
# taken for anything else minigit derives or signs. A new format takes a new domain.
SEAL_DOMAIN = b"minigit-sealed-reply-v1\n"
REPLY_DOMAIN = b"minigit-reply-v1\n"

# Fields a reply carries about its signature rather than as its content.
UNSIGNED_REPLY_FIELDS = frozenset({"signature"})

REPLY_KEY_PREFIX = "x25519:"
REPLY_KEY_BYTES = 32
# The canonical text is 51 characters (protocol.MAX_KEY_TEXT, 60, bounds key fields).
MAX_REPLY_KEY_TEXT = len(REPLY_KEY_PREFIX) + 44
NONCE_BYTES = 12
NONCE_TEXT = 16  # base64 of 12 bytes, no padding needed
STREAM_KEY_BYTES = 32
# Streams the opener keeps keys for: one command follows one request, and a
# failover adds a stream or two; a bound keeps forged streams from growing it.
MAX_OPEN_STREAMS = 16

# A request id is 32 hex digits (fixed length, so request id + stream is
# unambiguous without a separator); a stream is a short name (the server uses
# uuid4 hex), bounded so nothing long is ever hashed.
_REQUEST_ID_RE = re.compile(r"[0-9a-f]{32}")
_STREAM_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


# ---------------------------------------------------------------- base64


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# ---------------------------------------------------------------- reply keys


def new_reply_key() -> X25519PrivateKey:
    """A fresh key for one request's replies; dropped once the answer is read."""
    return X25519PrivateKey.generate()


def reply_key_bytes(public_key: X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def reply_key_text(public_key: X25519PublicKey) -> str:
    """``x25519:`` and the standard base64 of the key's 32 raw bytes."""
    return REPLY_KEY_PREFIX + b64(reply_key_bytes(public_key))


def parse_reply_key(text: object) -> X25519PublicKey:
    """A reply key from its text form, received from anyone: only the canonical
    spelling, its length checked before anything is decoded; ``MalformedKey``
    otherwise (the rules of ``identity.parse_public_key``)."""
    raw = identity.key_text_bytes(text, "reply key", REPLY_KEY_PREFIX, REPLY_KEY_BYTES, MAX_REPLY_KEY_TEXT)
    return X25519PublicKey.from_public_bytes(raw)  # any 32 bytes are an X25519 public key


# ---------------------------------------------------------------- sealing


def check_binding(request_id: object, stream: object) -> bytes:
    """What a stream's key and every record's box are bound to: ``SEAL_DOMAIN``,
    the request id and the stream. ``ProtocolError`` for ids that cannot be ours."""
    if not isinstance(request_id, str) or not _REQUEST_ID_RE.fullmatch(request_id):
        raise ProtocolError("sealed record: request_id must be 32 lowercase hex digits")
    if not isinstance(stream, str) or not _STREAM_RE.fullmatch(stream):
        raise ProtocolError("sealed record: stream must be 1 to 64 ASCII letters, digits, '.', '_' or '-'")
    return SEAL_DOMAIN + request_id.encode("ascii") + stream.encode("ascii")


def derive_stream_key(
    private_key: X25519PrivateKey, peer: X25519PublicKey, sender: bytes, recipient: bytes, binding: bytes
) -> ChaCha20Poly1305:
    """The AEAD of one stream, the same on both sides: ``sender`` and ``recipient``
    are the raw public keys (the ephemeral one first). ``ValueError`` for a peer
    key of small order, whose shared secret would be known to all."""
    shared = private_key.exchange(peer)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=STREAM_KEY_BYTES, salt=sender + recipient, info=binding)
    return ChaCha20Poly1305(hkdf.derive(shared))


class StreamSealer:
    """Seals the records of one answer stream to the request's reply key.

    One ephemeral key per stream (not per record): the derivation is done once
    and a large answer costs one AEAD pass per record."""

    def __init__(self, reply_key: str, request_id: str, stream: str) -> None:
        recipient = parse_reply_key(reply_key)
        self.request_id, self.stream = request_id, stream
        self._binding = check_binding(request_id, stream)
        ephemeral = X25519PrivateKey.generate()
        sender = reply_key_bytes(ephemeral.public_key())
        try:
            self._aead = derive_stream_key(ephemeral, recipient, sender, reply_key_bytes(recipient), self._binding)
        except ValueError:
            raise MalformedKey(f"invalid reply key {reply_key!r}: a key of small order, which seals nothing") from None
        self.sender_key = REPLY_KEY_PREFIX + b64(sender)

    def seal(self, message: Message) -> Sealed:
        """``message`` (a Reply or Chunk of this request) as a Sealed record."""
        if getattr(message, "request_id", self.request_id) != self.request_id:
            raise ProtocolError("cannot seal a record of another request into this stream")
        nonce = os.urandom(NONCE_BYTES)
        box = self._aead.encrypt(nonce, message.to_bytes(), self._binding)
        if len(box) > MAX_SEALED_BOX_BYTES:
            raise ProtocolError(f"sealed box longer than {MAX_SEALED_BOX_BYTES} bytes")
        return Sealed(
            request_id=self.request_id, stream=self.stream, sender_key=self.sender_key, nonce=b64(nonce), box=box
        )


class StreamOpener:
    """Opens the sealed records sent to one reply key. Each stream's key is
    derived once (a 100 MiB clone is ~200 records) and kept for the last
    ``MAX_OPEN_STREAMS`` streams only."""

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._private_key = private_key
        self._recipient = reply_key_bytes(private_key.public_key())
        self._streams: OrderedDict[tuple[str, str, str], ChaCha20Poly1305] = OrderedDict()

    def open(self, sealed: Sealed) -> bytes:
        """The inner record's bytes (``protocol.parse_message`` them); ``SealBroken``
        for anything that is not a record sealed to this key and left intact."""
        if not isinstance(sealed, Sealed):
            raise SealBroken(f"cannot open a sealed reply: got a {type(sealed).__name__} record")
        binding = self._check_binding(sealed)
        nonce = self._decode(sealed.nonce, NONCE_TEXT, NONCE_BYTES, "its nonce is not the base64 of 12 bytes")
        box = sealed.box
        # bounded: a record built by hand skipped protocol's checks
        if not isinstance(box, bytes) or len(box) > MAX_SEALED_BOX_BYTES:
            raise SealBroken(f"cannot open a sealed reply: its box is not at most {MAX_SEALED_BOX_BYTES} bytes")
        aead = self._stream_key(sealed.sender_key, sealed.request_id, sealed.stream, binding)
        try:
            return aead.decrypt(nonce, box, binding)
        except InvalidTag:
            raise broken(sealed, "it was not sealed to this reply key, or it was altered") from None

    def _check_binding(self, sealed: Sealed) -> bytes:
        try:
            return check_binding(sealed.request_id, sealed.stream)
        except ProtocolError as error:
            raise SealBroken(f"cannot open a sealed reply: {error.message}") from None

    def _decode(self, text: object, limit: int, size: int | None, reason: str) -> bytes:
        # bounded before decoding: a record built by hand skipped protocol's checks
        raw = identity.strict_base64(text, size) if isinstance(text, str) and len(text) <= limit else None
        if raw is None:
            raise SealBroken(f"cannot open a sealed reply: {reason}")
        return raw

    def _stream_key(self, sender_key: object, request_id: str, stream: str, binding: bytes) -> ChaCha20Poly1305:
        if not isinstance(sender_key, str):
            raise SealBroken("cannot open a sealed reply: its sender key is not text")
        cache_key = (sender_key, request_id, stream)
        if cache_key in self._streams:
            self._streams.move_to_end(cache_key)
            return self._streams[cache_key]
        try:
            sender = parse_reply_key(sender_key)
            aead = derive_stream_key(self._private_key, sender, reply_key_bytes(sender), self._recipient, binding)
        except (MalformedKey, ValueError):
            raise SealBroken("cannot open a sealed reply: its sender key is not a usable X25519 key") from None
        self._streams[cache_key] = aead
        if len(self._streams) > MAX_OPEN_STREAMS:
            self._streams.popitem(last=False)
        return aead


def broken(sealed: Sealed, reason: str) -> SealBroken:
    return SealBroken(f"cannot open a sealed reply to request {sealed.request_id}: {reason}")


def open_sealed(private_key: X25519PrivateKey, sealed: Sealed) -> bytes:
    """One sealed record's inner bytes; a caller opening many keeps a StreamOpener."""
    return StreamOpener(private_key).open(sealed)


# ---------------------------------------------------------------- reply signatures


def reply_payload(reply: Reply, namespace: str) -> bytes:
    """The bytes a reply's signature covers: ``REPLY_DOMAIN``, then one line of
    JSON (sorted keys, no whitespace, ASCII only) of the namespace and the reply as
    it travels without ``UNSIGNED_REPLY_FIELDS``. Its request id ties it to one
    request; its ``server_key`` says which key signed."""
    fields = {name: value for name, value in reply.to_dict().items() if name not in UNSIGNED_REPLY_FIELDS}
    document = {"namespace": check_namespace(namespace), "reply": fields}
    return REPLY_DOMAIN + json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_reply(server_private_key: Ed25519PrivateKey, reply: Reply, namespace: str) -> Reply:
    """A copy of ``reply`` naming the server's key and signed by it."""
    key_text = identity.public_key_text(server_private_key.public_key())
    unsigned = dataclasses.replace(reply, server_key=key_text, signature="")
    signature = identity.sign(server_private_key, reply_payload(unsigned, namespace))
    return dataclasses.replace(unsigned, signature=signature)


def reply_signed_by(key_text: str, reply: Reply, namespace: str) -> bool:
    """Whether ``reply`` names the key ``key_text`` and carries its valid signature.
    Anything malformed (the key, the signature, the reply) is False, never an
    exception: a refusal, not a crash."""
    try:
        if not isinstance(key_text, str) or reply.server_key != key_text:
            return False
        payload = reply_payload(reply, namespace)
        return identity.verify(identity.parse_public_key(key_text), payload, reply.signature)
    except (MinigitError, TypeError, ValueError, AttributeError):
        # a reply built by hand with values JSON cannot write, or not a Reply at all
        return False
