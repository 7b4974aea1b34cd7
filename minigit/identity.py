"""Who sent a request: Ed25519 keys, their text forms, and signatures over a
canonical encoding of a request. Pure (no disk, no Kafka), so the client signs
and every replica verifies with the same code.

A request's signature covers ``signing_payload``: every field of the request
(its request id among them) but ``UNSIGNED_FIELDS``, the digests of the chunks
it uploaded, the namespace of the service and the time it was signed. Replicas
re-verify signatures of log records long after they were written (a replica
rebuilt from the log, ``log --verify``), so the encoding under
``SIGNING_DOMAIN`` may never change: a new encoding takes a new domain.

Everything received (a key's text, a signature's text, a key file) is bounded
and checked here before use; what is malformed raises ``MalformedKey`` or
``MalformedSignature``, never another exception.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from minigit.codec import hash_bytes
from minigit.config import check_namespace
from minigit.errors import MalformedKey, MalformedSignature, MinigitError
from minigit.protocol import Chunk, Request, check_sha

# Domain separation: a signature over a request can never be taken for one over
# anything else minigit signs later (replies, key rotations), which get their own.
SIGNING_DOMAIN = b"minigit-request-v1\n"
ATTESTATION_DOMAIN = b"minigit-attestation-v1\n"
OPERATOR_DOMAIN = b"minigit-operator-v1\n"

# Fields a request carries about its signature rather than as its content: a
# signature cannot sign itself.
UNSIGNED_FIELDS = frozenset({"signature"})

PUBLIC_KEY_PREFIX = "ed25519:"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
FINGERPRINT_PREFIX = "SHA256:"
# Bounds checked before any decoding: the canonical texts are 52 and 88 characters.
MAX_PUBLIC_KEY_TEXT = len(PUBLIC_KEY_PREFIX) + 44
MAX_SIGNATURE_TEXT = 88
# A PKCS8 PEM Ed25519 private key is 119 bytes; anything much larger is not one.
MAX_PRIVATE_KEY_FILE_BYTES = 4096


# ---------------------------------------------------------------- keys


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(private_key: Ed25519PrivateKey) -> bytes:
    """The key as an unencrypted PKCS8 PEM file (``-----BEGIN PRIVATE KEY-----``),
    which openssl and ssh-keygen read too. Its protection is the file's mode."""
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key_pem(data: bytes, where: str = "private key") -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS8 PEM bytes; ``where`` names them in errors."""
    if not isinstance(data, bytes) or len(data) > MAX_PRIVATE_KEY_FILE_BYTES:
        raise MalformedKey(f"{where} is not an Ed25519 private key: larger than {MAX_PRIVATE_KEY_FILE_BYTES} bytes")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # what cryptography raises for a key encrypted with a password
        raise MalformedKey(f"{where} is encrypted with a password, which minigit does not support") from None
    except (ValueError, UnsupportedAlgorithm):
        raise MalformedKey(f"{where} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise MalformedKey(f"{where} holds another kind of private key, not an Ed25519 key")
    return key


def public_key_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The compact text form of a public key: ``ed25519:`` and base64 of its 32 bytes."""
    return PUBLIC_KEY_PREFIX + base64.b64encode(public_key_bytes(public_key)).decode("ascii")


def parse_public_key(text: object) -> Ed25519PublicKey:
    """A public key from its text form (``public_key_text``), received from anyone.

    Only the canonical spelling is accepted (one key, one text), so that a
    registered key's text can be compared as text; the length is checked before
    anything is decoded."""
    raw = key_text_bytes(text, "public key", PUBLIC_KEY_PREFIX, PUBLIC_KEY_BYTES, MAX_PUBLIC_KEY_TEXT)
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise MalformedKey(f"invalid public key {text!r}: not a point of Ed25519") from None


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """``SHA256:`` and the unpadded base64 of the SHA-256 of the key's 32 raw bytes.
    Shaped like ssh's fingerprints, but not equal to them (ssh hashes its own
    wire encoding of the key)."""
    digest = hashlib.sha256(public_key_bytes(public_key)).digest()
    return FINGERPRINT_PREFIX + base64.b64encode(digest).decode("ascii").rstrip("=")


def key_text_bytes(text: object, what: str, prefix: str, size: int, max_length: int) -> bytes:
    """The raw bytes of a key's text form (``prefix`` and the base64 of ``size``
    bytes), received from anyone: only the canonical spelling, its length checked
    before anything is decoded; ``MalformedKey`` naming ``what`` otherwise."""
    if not isinstance(text, str):
        raise MalformedKey(f"invalid {what}: expected text, got {type(text).__name__}")
    if len(text) > max_length:
        raise MalformedKey(f"invalid {what}: longer than {max_length} characters")
    if not text.startswith(prefix):
        raise MalformedKey(f"invalid {what} {text!r}: it must start with '{prefix}'")
    raw = strict_base64(text[len(prefix) :], size)
    if raw is None:
        raise MalformedKey(f"invalid {what} {text!r}: expected '{prefix}' and the base64 of {size} bytes")
    return raw


def strict_base64(text: str, size: int | None = None) -> bytes | None:
    """The bytes ``text`` spells in standard padded base64 (``size`` of them, if
    given), only if it is their one canonical spelling (no whitespace, no stray
    bits in the padding): one value, one text. None for anything else."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None
    if size is not None and len(raw) != size:
        return None
    if base64.b64encode(raw).decode("ascii") != text:
        return None
    return raw


# ---------------------------------------------------------------- signatures


@dataclass(frozen=True, order=True)
class ChunkDigest:
    """What a signature says about one uploaded chunk: which piece of which blob,
    how it is encoded, and the SHA-256 (hex) of its encoded bytes as sent."""

    sha: str
    index: int
    count: int
    encoding: str
    data_sha256: str

    @classmethod
    def of(cls, chunk: Chunk) -> ChunkDigest:
        """The digest of a chunk record: its piece's bytes as they travel (encoded)."""
        return cls(chunk.sha, chunk.index, chunk.count, chunk.encoding, hash_bytes(chunk.payload))


def chunks_digest(chunk_digests: Iterable[ChunkDigest]) -> str:
    """One SHA-256 (hex) for the chunks a request uploaded: over their digests
    sorted, duplicates dropped (a chunk sent again is the same chunk), as one line
    of JSON. The signature covers it, and a proposal carries it into the log
    instead of a list that grows with the push."""
    # plain tuples: the digests' own order and equality, without dataclasses.astuple
    # and the generated __lt__, which cost seconds for 10,000 small files
    chunks = sorted({(d.sha, d.index, d.count, d.encoding, d.data_sha256) for d in chunk_digests})
    return hash_bytes(json.dumps(chunks, separators=(",", ":"), ensure_ascii=True).encode())


NO_CHUNKS = chunks_digest([])


def signing_payload(request: Request, namespace: str) -> bytes:
    """The bytes a request's signature covers.

    ``SIGNING_DOMAIN``, then one line of JSON (sorted keys, no whitespace, ASCII
    only): the request as it travels (``v``, ``type``, ``action`` and every field,
    defaults included, its ``signed_ms`` and the ``chunks`` digest of what it
    uploaded among them, but ``UNSIGNED_FIELDS``) and the namespace. JSON with
    sorted keys spells distinct values distinctly, so distinct inputs never share
    a payload. A request replayed into another namespace does not verify.

    The chunks digest is what the client says it uploaded; the content itself is
    bound by its hashes (the tree's, which names every file's), so a request whose
    chunks were lost or altered on the way still verifies and is decided "missing
    objects", and a stray chunk sent under its request id cannot spoil it.
    """
    fields = {name: value for name, value in request.to_dict().items() if name not in UNSIGNED_FIELDS}
    document = {"request": fields, "namespace": check_namespace(namespace)}
    return SIGNING_DOMAIN + canonical_json(document)


def canonical_json(document: object) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def attestation_payload(namespace: str, user: str, key: str, request_signature: str) -> bytes:
    """What the server signs when it carries a write into the log: that ``key`` was
    ``user``'s registered key when the request signed ``request_signature`` arrived."""
    document = {"namespace": check_namespace(namespace), "user": user, "key": key, "request": request_signature}
    return ATTESTATION_DOMAIN + canonical_json(document)


def sign(private_key: Ed25519PrivateKey, payload: bytes) -> str:
    """The Ed25519 signature of ``payload``, in standard base64 (88 characters)."""
    return base64.b64encode(private_key.sign(payload)).decode("ascii")


def verify(public_key: Ed25519PublicKey, payload: bytes, signature: object) -> bool:
    """Whether ``signature`` (text, from ``sign``) is ``public_key``'s over ``payload``.

    False for a well-formed signature that does not check; ``MalformedSignature``
    for text that cannot be one (wrong type, length or base64), so a caller can
    tell a forgery from garbage, and both are refused."""
    if not isinstance(signature, str):
        raise MalformedSignature(f"invalid signature: expected text, got {type(signature).__name__}")
    if len(signature) > MAX_SIGNATURE_TEXT:
        raise MalformedSignature(f"invalid signature: longer than {MAX_SIGNATURE_TEXT} characters")
    raw = strict_base64(signature, SIGNATURE_BYTES)
    if raw is None:
        raise MalformedSignature(f"invalid signature: expected the base64 of {SIGNATURE_BYTES} bytes")
    try:
        public_key.verify(raw, payload)
    except InvalidSignature:
        return False
    return True


# ---------------------------------------------------------------- requests


def sign_request(private_key: Ed25519PrivateKey, request: Request, chunks: str, namespace: str) -> Request:
    """``request`` with its ``chunks`` digest and ``signature`` set (its
    ``signed_ms`` must be set before)."""
    unsigned = dataclasses.replace(request, chunks=check_sha(chunks), signature="")
    return dataclasses.replace(unsigned, signature=sign(private_key, signing_payload(unsigned, namespace)))


def request_signed_by(key_text: str, request: Request, namespace: str) -> bool:
    """Whether ``request`` carries a valid signature by the key ``key_text`` names.
    Anything malformed (the key, the signature) is False: a refusal, not a crash."""
    try:
        return verify(parse_public_key(key_text), signing_payload(request, namespace), request.signature)
    except MinigitError:
        return False


def attested_by(
    server_key_text: str, namespace: str, user: str, key: str, request_signature: str, attestation: str
) -> bool:
    """Whether the server key ``server_key_text`` signed that ``key`` was ``user``'s."""
    try:
        payload = attestation_payload(namespace, user, key, request_signature)
        return verify(parse_public_key(server_key_text), payload, attestation)
    except MinigitError:
        return False
