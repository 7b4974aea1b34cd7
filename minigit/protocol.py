"""minigit's wire format: every message on every topic, and the rules both sides check.

Imported by the client and by the server alike, so the two cannot drift.
Nothing here touches Kafka or the disk.

Every record value is one UTF-8 JSON object with ``"v": PROTOCOL_VERSION`` and a
``"type"``, or, for the two messages that carry bulk bytes (``chunk`` and
``sealed``), a binary frame: FRAME_MAGIC, the length of a header, the header (that
same JSON object without the bytes) and the bytes themselves (``frame``,
``unframe``). Bulk bytes (file contents and trees) never ride inside a control
message: they travel as ``chunk`` records of at most codec.CHUNK_SIZE raw bytes,
so every record stays under Kafka's default 1 MiB limit whatever the file size.
Chunk records in the JSON form of before (base64 in ``data``) are still read:
a replica rebuilding from an old log meets them.
Each message is a dataclass whose annotations are its schema: ``parse_message``
checks every field, nested records included, before anything uses it.
docs/protocol.md describes each message; keep it in step with this module.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import functools
import json
import re
import struct
import types
import typing
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from minigit import codec
from minigit.codec import hash_bytes
from minigit.errors import ProtocolError, UnsafePath

PROTOCOL_VERSION = 1

MAX_NAME_LENGTH = 64
MAX_PATH_LENGTH = 4096
MAX_PATH_PART_LENGTH = 255
MAX_MESSAGE_LENGTH = 10_000
MAX_LOST = 5000
MAX_LOG_LIMIT = 1000  # versions in one log reply
MAX_LOG_PATHS = 100  # paths a log request may filter by
MAX_LOG_CHANGES = 1000  # changed files listed per version (the rest are counted)
MAX_REPOS_LIMIT = 1000  # repositories in one listing page
# Every replica decides with these, so they are part of the protocol, not settings:
# a tree is refused before it is decoded when its bytes or its entries exceed them.
MAX_TREE_BYTES = 16 * 1024 * 1024
MAX_TREE_ENTRIES = 100_000
MAX_BLOB_BYTES = 4 * 1024**3  # a chunk's count may not promise more than this
MAX_INT = 2**63  # every integer field is 0 <= n < MAX_INT, so SQLite can store it
# Key and signature texts (minigit.identity, minigit.sealing check them fully): a
# bound checked while parsing, so nothing larger is ever kept or decoded.
MAX_KEY_TEXT = 60
MAX_SIGNATURE_TEXT = 88
# A signed request carried into the log (SignedWrite.request): a write request's JSON.
MAX_SIGNED_REQUEST_BYTES = 64 * 1024
# A sealed record's box, in bytes: a chunk record (CHUNK_SIZE bytes and a header)
# or a reply, sealed (16 more bytes), under Kafka's default 1 MiB.
MAX_SEALED_BOX_BYTES = codec.MAX_RECORD_BYTES
# The same box in the JSON form of before (base64), still read.
MAX_SEALED_BOX_CHARS = 1024 * 1024

# A binary record: FRAME_MAGIC, the header's length (2 bytes, big-endian), the
# header (a message's JSON without its bytes), then the bytes. A JSON record starts
# with '{', never with NUL, so the first byte tells the two forms apart.
FRAME_MAGIC = b"\x00mg1"
_FRAME_PREFIX = struct.Struct(">4sH")
MAX_FRAME_HEADER = 2048  # a chunk's or sealed record's header is about 300 bytes

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_INT_KEY_RE = re.compile(r"^(0|[1-9][0-9]{0,18})$")


def new_request_id() -> str:
    return uuid.uuid4().hex


# ---------------------------------------------------------------- names and paths


def check_name(kind: str, name: str) -> str:
    """Repository and user names: a small safe alphabet, bounded length."""
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{kind} name is missing")
    if len(name) > MAX_NAME_LENGTH:
        raise ProtocolError(f"{kind} name is longer than {MAX_NAME_LENGTH} characters")
    if not _NAME_RE.fullmatch(name) or name in {".", ".."}:
        raise ProtocolError(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return name


def is_reserved_name(part: str) -> bool:
    """Names minigit keeps for itself in a working directory: ``.minigit``, its lock
    and temporary files (``.minigit.*``, ``.minigit-*``). ``.minigitignore`` is a user file."""
    lowered = part.lower()
    return lowered == ".minigit" or lowered.startswith((".minigit.", ".minigit-"))


def check_path(path: str) -> str:
    """A file path inside a repository: relative, '/'-separated, normalized.

    Both sides call this on every path they receive, so nothing can be written
    outside a working directory or over minigit's own metadata.
    """
    if not isinstance(path, str) or not path:
        raise UnsafePath(str(path), "empty path")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_LENGTH:
        raise UnsafePath(path[:80], "path too long")
    if "\x00" in path:
        raise UnsafePath(path, "NUL byte")
    if "\\" in path:
        raise UnsafePath(path, "backslash")
    if path.startswith("/"):
        raise UnsafePath(path, "absolute path")
    if not path.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in path):  # (most paths: one fast test)
        raise UnsafePath(path, "not valid UTF-8")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePath(path, f"'{part}' part" if part else "empty part")
        if is_reserved_name(part):
            raise UnsafePath(path, f"'{part}' is reserved for minigit")
        if len(part.encode("utf-8")) > MAX_PATH_PART_LENGTH:
            raise UnsafePath(path[:80], "a part is too long")
    return path


def check_sha(value: str) -> str:
    if not isinstance(value, str) or not _SHA_RE.fullmatch(value):
        raise ProtocolError(f"invalid object id {str(value)[:80]!r}")
    return value


def murmur2(data: bytes) -> int:
    """Kafka's default partitioner hash (the Java client's Utils.murmur2), unsigned."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    whole = len(data) - len(data) % 4
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * m) & mask
        k = ((k ^ (k >> 24)) * m) & mask
        h = ((h * m) & mask) ^ k
    if whole < len(data):
        h = ((h ^ int.from_bytes(data[whole:], "little")) * m) & mask
    h = ((h ^ (h >> 13)) * m) & mask
    return h ^ (h >> 15)


def log_partition(repo: str, partitions: int) -> int:
    """The partition of repo-log that holds a repository's records (and of
    repo-requests that carries its requests): Kafka's default partitioner of
    the name, so a record keyed by the name lands there whoever writes it."""
    return (murmur2(repo.encode()) & 0x7FFFFFFF) % partitions


# ---------------------------------------------------------------- trees


class FileMode(enum.StrEnum):
    """What a tree entry is, besides its content: a regular file, an executable
    one (git's 100755), or a symbolic link whose content is its target (git's 120000)."""

    REGULAR = ""
    EXECUTABLE = "x"
    SYMLINK = "l"


@dataclass(frozen=True, slots=True)
class FileEntry:
    sha: str
    size: int
    mode: FileMode = FileMode.REGULAR


Manifest = dict[str, FileEntry]
EMPTY_TREE_SHA = hash_bytes(b'{"files":{},"v":1}')


def encode_tree(manifest: Mapping[str, FileEntry]) -> bytes:
    """The canonical bytes of a tree: equal manifests give equal trees and shas."""
    files = {path: encode_entry(e) for path, e in manifest.items()}
    return json.dumps({"v": 1, "files": files}, sort_keys=True, separators=(",", ":")).encode()


def encode_entry(entry: FileEntry) -> dict[str, object]:
    """A tree entry's object; a regular file has no ``mode`` key, so trees made
    before modes existed keep their bytes and their ids."""
    doc: dict[str, object] = {"sha": entry.sha, "size": entry.size}
    if entry.mode:
        doc["mode"] = str(entry.mode)
    return doc


def check_tree_size(size: int, entries: int | None = None) -> None:
    """Refuse a tree too large to decode, from its size (and its entry count, which
    its bytes tell without decoding them), before any work is done on it."""
    if size > MAX_TREE_BYTES:
        raise ProtocolError(f"tree too large: {size} bytes, at most {MAX_TREE_BYTES} are accepted")
    if entries is not None and entries > MAX_TREE_ENTRIES:
        raise ProtocolError(f"tree too large: more than {MAX_TREE_ENTRIES} files")


_TREE_HEAD, _TREE_TAIL = b'{"files":{', b'},"v":1}'
# One entry of a canonical tree: a path as json.dumps writes it (ASCII, escaped),
# then its object with the keys in order and no spaces.
_TREE_ENTRY = re.compile(
    rb'("(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\bfnrt]|\\u[0-9a-f]{4})*")'
    rb':\{(?:"mode":"([xl])",)?"sha":"([0-9a-f]{64})","size":(0|[1-9][0-9]{0,18})\}'
)


def decode_tree(data: bytes) -> Manifest:
    """A manifest from a tree's bytes, which must be exactly what ``encode_tree``
    writes: so one manifest has one tree id, and the tree is read entry by entry,
    its cost bounded by MAX_TREE_ENTRIES before any entry is decoded."""
    check_tree_size(len(data))
    end = len(data) - len(_TREE_TAIL)
    if not data.startswith(_TREE_HEAD) or not data.endswith(_TREE_TAIL) or end < len(_TREE_HEAD):
        raise ProtocolError("invalid tree: not a minigit tree")
    manifest: Manifest = {}
    pos, previous = len(_TREE_HEAD), None
    while pos < end:
        if manifest:
            if data[pos : pos + 1] != b",":
                raise ProtocolError(f"invalid tree: not in canonical form at byte {pos}")
            pos += 1
        entry = _TREE_ENTRY.match(data, pos, end)
        if entry is None:
            raise ProtocolError(f"invalid tree: not in canonical form at byte {pos}")
        if len(manifest) == MAX_TREE_ENTRIES:
            check_tree_size(len(data), MAX_TREE_ENTRIES + 1)
        quoted = entry[1].decode("ascii")
        path, size = json.loads(quoted), int(entry[4])
        if json.dumps(path) != quoted or (previous is not None and path <= previous):
            raise ProtocolError(f"invalid tree: not in canonical form at byte {pos}")
        check_path(path)  # an unsafe path is UnsafePath, as everywhere
        if size >= MAX_INT:
            raise ProtocolError(f"invalid tree: size of {path!r} is out of range")
        mode = FileMode(entry[2].decode("ascii")) if entry[2] else FileMode.REGULAR
        manifest[path] = FileEntry(entry[3].decode("ascii"), size, mode)
        pos, previous = entry.end(), path
    if clash := find_file_directory_clash(manifest):
        raise ProtocolError(f"invalid tree: {clash!r} is both a file and a directory")
    return manifest


def tree_entries(data: bytes) -> frozenset[bytes]:
    """A tree's entries, each as its bytes in the tree (``path":{...``, without the
    quote that opens the path and the brace that closes the entry), to compare two
    trees without decoding them: the encoding is canonical, so a file unchanged has
    the same bytes in both, and only the entries that differ need decoding
    (``decode_tree_entries``). Decoding every entry of a tree of 30,000 files costs a
    third of a second; cutting it apart costs milliseconds.

    For a tree already checked (``decode_tree``: one that is a version): it is cut
    where each entry ends (``},"``), which is right unless a path ends with ``},``;
    then (as many cuts as entries tells) it is decoded whole instead."""
    body = data[len(_TREE_HEAD) : len(data) - len(_TREE_TAIL)]
    canonical = data.startswith(_TREE_HEAD) and data.endswith(_TREE_TAIL) and len(data) >= len(_TREE_HEAD + _TREE_TAIL)
    if canonical and not body:
        return frozenset()
    if canonical and body.startswith(b'"') and body.endswith(b"}"):
        # '"sha":"' opens every entry's fields, and never appears in a path (its quotes are escaped there)
        parts = body[1:-1].split(b'},"')
        if len(parts) == body.count(b'"sha":"'):
            return frozenset(parts)
    return frozenset(_entry_bytes(path, entry) for path, entry in decode_tree(data).items())


def _entry_bytes(path: str, entry: FileEntry) -> bytes:
    fields = json.dumps(encode_entry(entry), sort_keys=True, separators=(",", ":"))
    return f"{json.dumps(path)[1:]}:{fields[:-1]}".encode()


def decode_tree_entries(entries: Iterable[bytes]) -> Manifest:
    """Paths and their entries, from entries of one tree as ``tree_entries`` gives
    them: put back together as one JSON object, read at once."""
    joined = b'},"'.join(entries)
    if not joined:
        return {}
    files = json.loads(b'{"' + joined + b"}}")
    regular = FileMode.REGULAR
    return {
        path: FileEntry(doc["sha"], doc["size"], FileMode(doc["mode"]) if "mode" in doc else regular)
        for path, doc in files.items()
    }


def find_file_directory_clash(paths: Mapping[str, object]) -> str | None:
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in paths:
                return "/".join(parts[:i])
    return None


def manifest_to_json(manifest: Mapping[str, FileEntry]) -> dict[str, list]:
    """``[sha, size]``, and the mode third when it is not a regular file's."""
    return {path: [e.sha, e.size, *([str(e.mode)] if e.mode else [])] for path, e in sorted(manifest.items())}


def manifest_from_json(doc: Any) -> Manifest:
    if not isinstance(doc, dict):
        raise ProtocolError("manifest is not an object")
    out: Manifest = {}
    for path, value in doc.items():
        check_path(path)
        if (
            not isinstance(value, list)
            or len(value) not in (2, 3)
            or not isinstance(value[1], int)
            or isinstance(value[1], bool)
            or value[1] < 0
            or (len(value) == 3 and value[2] not in (FileMode.EXECUTABLE, FileMode.SYMLINK))
        ):
            raise ProtocolError(f"bad manifest entry for {path!r}")
        out[path] = FileEntry(
            check_sha(value[0]), value[1], FileMode(value[2]) if len(value) == 3 else FileMode.REGULAR
        )
    return out


# ---------------------------------------------------------------- typed records


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_utf8(text: str) -> bool:
    """JSON can spell lone surrogates (\\ud800) that no UTF-8 text holds."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decode(annotation: Any, value: Any, owner: str, path: str) -> Any:
    """``value`` (from JSON) checked against ``annotation``, nested records built.
    ``owner`` and ``path`` name the field for errors: "Reply: field 'entries[0].time_ms'"."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
        origin = typing.get_origin(annotation)
    label = f"{owner}: field '{path}'"

    def wrong() -> ProtocolError:  # made only when needed: most fields parse
        return ProtocolError(f"{label} must be {getattr(origin or annotation, '__name__', annotation)}")

    if annotation is int:
        if not _is_int(value):
            raise wrong()
        if not 0 <= value < MAX_INT:
            raise ProtocolError(f"{label} is out of range")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        if not isinstance(value, str):
            raise wrong()
        if not _is_utf8(value):
            raise ProtocolError(f"{label} is not valid UTF-8 text")
        if annotation is str:
            return value
        try:
            return annotation(value)
        except ValueError:
            raise ProtocolError(f"{label} has an unknown value {value[:40]!r}") from None
    if origin is list:
        if not isinstance(value, list):
            raise wrong()
        (item,) = typing.get_args(annotation)
        return [_decode(item, v, owner, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong()
        key_type, item = typing.get_args(annotation)
        return {
            _decode_key(key_type, k, owner, path): _decode(item, v, owner, f"{path}[{k!r}]") for k, v in value.items()
        }
    if isinstance(annotation, type) and issubclass(annotation, Record):
        if not isinstance(value, dict):
            raise wrong()
        return annotation.from_dict(value, owner, f"{path}.")
    raise TypeError(f"no wire decoding for {annotation!r}")  # a schema bug, not bad input


def _decode_key(key_type: type, key: str, owner: str, path: str) -> Any:
    """JSON keys are strings; an ``int`` key travels as its decimal digits."""
    if key_type is int:
        if not _INT_KEY_RE.fullmatch(key):
            raise ProtocolError(f"{owner}: field '{path}' has a key that is not a number: {key[:40]!r}")
        return _decode(int, int(key), owner, f"{path} key")
    return _decode(str, key, owner, f"{path} key")


def _encode(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


# Metadata of a field added to a record that is signed and kept in repo-log: it is left
# out of the JSON while it holds its default, so a record written before it existed has
# the same bytes, the same signature payload (identity.signing_payload) and the same
# request key (decisions.request_key) as before. Every other field is always written.
_ADDED_LATER = "added later: written only when set"


def added_later(default: str) -> Any:
    """A field with ``default``, left out of the record's JSON while it holds it."""
    return field(default=default, metadata={_ADDED_LATER: True})


@functools.cache
def _typed_fields(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    """A record class's fields, each with its annotation resolved: once per class, as
    ``typing.get_type_hints`` evaluates every annotation's text again at each call
    (it was over half of a clone's time, a call per record received)."""
    hints = typing.get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls))


# Metadata of a message's bulk bytes: never in its JSON, carried after its header in
# a binary frame (at most one such field per message).
_BINARY = "carried as the bytes of a binary frame"


def binary_field() -> Any:
    return field(repr=False, metadata={_BINARY: True})


def frame(header: Mapping[str, Any], payload: bytes) -> bytes:
    """A binary record: the header as compact JSON, then ``payload`` as it is."""
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(head) > MAX_FRAME_HEADER:
        raise ProtocolError(f"frame header longer than {MAX_FRAME_HEADER} bytes")
    return _FRAME_PREFIX.pack(FRAME_MAGIC, len(head)) + head + payload


def is_frame(value: bytes | None) -> bool:
    return value is not None and value[:4] == FRAME_MAGIC


def unframe(value: bytes) -> tuple[dict[str, Any], bytes]:
    """A binary record's header (a JSON object) and bytes; ProtocolError for
    anything else: a wrong magic, a length past the record or the bound, a header
    that is not one JSON object."""
    if len(value) < _FRAME_PREFIX.size:
        raise ProtocolError("malformed frame: shorter than its prefix")
    magic, length = _FRAME_PREFIX.unpack_from(value)
    if magic != FRAME_MAGIC:
        raise ProtocolError("malformed frame: wrong magic")
    if length > MAX_FRAME_HEADER:
        raise ProtocolError(f"malformed frame: header longer than {MAX_FRAME_HEADER} bytes")
    end = _FRAME_PREFIX.size + length
    if end > len(value):
        raise ProtocolError("malformed frame: truncated header")
    header = load_json(bytes(value[_FRAME_PREFIX.size : end]))
    if not isinstance(header, dict):
        raise ProtocolError("malformed frame: its header is not a JSON object")
    return header, bytes(value[end:])


@dataclass(kw_only=True)
class Record:
    """A JSON object with a fixed schema: its dataclass fields, typed."""

    def to_dict(self) -> dict[str, Any]:
        """The record's JSON object (without its bulk bytes, if it has any)."""
        doc = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get(_BINARY):
                continue
            if not (f.metadata.get(_ADDED_LATER) and value == f.default):
                doc[f.name] = _encode(value)
        return doc

    @classmethod
    def from_dict(
        cls, doc: dict[str, Any], owner: str | None = None, path: str = "", payload: bytes | None = None
    ) -> typing.Self:
        """Check every field against its annotation, then the record's own rules.
        Unknown fields are ignored (a newer writer may add some). The bulk bytes
        field takes ``payload`` (a frame's bytes), or, for a record in JSON, what
        ``legacy_payload`` finds in ``doc``."""
        owner = owner or cls.__name__
        values = {}
        for f, annotation in _typed_fields(cls):
            if f.metadata.get(_BINARY):
                values[f.name] = payload if payload is not None else cls.legacy_payload(doc, owner)
            elif f.name in doc:
                values[f.name] = _decode(annotation, doc[f.name], owner, path + f.name)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{owner}: missing field '{path}{f.name}'")
        record = cls(**values)
        record.validate()
        return record

    def validate(self) -> None:
        """Rules beyond types; raise ProtocolError (or UnsafePath)."""

    @classmethod
    def legacy_payload(cls, doc: dict[str, Any], owner: str) -> bytes:
        """A record with bulk bytes, in JSON: where its bytes were (none here)."""
        raise ProtocolError(f"{owner}: its bytes travel in a binary frame, not in JSON")


def _legacy_bytes(doc: dict[str, Any], name: str, max_chars: int, owner: str) -> bytes:
    """A JSON record's bytes field of before: ``name``, base64 of at most ``max_chars``."""
    if name not in doc:
        raise ProtocolError(f"{owner}: missing field '{name}'")
    return _strict_base64(doc[name], max_chars, f"{owner}: field '{name}'")


def _strict_base64(text: Any, max_chars: int, label: str) -> bytes:
    """Bytes from canonical base64 text, its length bounded before decoding."""
    if not isinstance(text, str):
        raise ProtocolError(f"{label} must be str")
    if len(text) > max_chars:
        raise ProtocolError(f"{label} is longer than {max_chars} characters")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{label} is not base64") from None


# ---------------------------------------------------------------- messages

_registry: dict[tuple[str, str | None], type[Message]] = {}


def wire(cls: type[Message]) -> type[Message]:
    """Register a concrete message class, found by its type (and action)."""
    action = cls.__dict__.get("action")
    _registry[(cls.type, action if isinstance(action, str) else None)] = cls
    return cls


@dataclass(kw_only=True)
class Message(Record):
    """Base of every record minigit writes. Subclasses set ``type`` (and ``action``)."""

    type: ClassVar[str]
    action: ClassVar[str | None] = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": self.type}
        if self.action is not None:
            doc["action"] = self.action
        return {**doc, **super().to_dict()}

    binary: ClassVar[bool] = False  # carried as a binary frame (it has a binary_field)

    def to_bytes(self) -> bytes:
        if self.binary:
            payload = next(getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get(_BINARY))
            return frame(self.to_dict(), payload)
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


def load_json(value: bytes | None) -> Any:
    """A record's JSON, or ProtocolError. A record with no value (a tombstone, which
    anyone may write to any topic) and nesting deeper than the decoder's recursion
    limit (a few bytes of '[' can be) are malformed too, not a crash."""
    if value is None:
        raise ProtocolError("malformed message: the record has no value")
    try:
        return json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("malformed message: not UTF-8 JSON") from None


def parse_message(value: bytes | None, *, allowed: tuple[type[Message], ...] = ()) -> Message:
    """Decode and validate one record value, JSON or a binary frame; raise
    ProtocolError on anything else."""
    payload = None
    if is_frame(value):
        doc, payload = unframe(value)
    else:
        doc = load_json(value)
    if not isinstance(doc, dict):
        raise ProtocolError("malformed message: not a JSON object")
    version = doc.get("v")
    if not _is_int(version) or version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r} (this side speaks {PROTOCOL_VERSION})")
    kind, action = doc.get("type"), doc.get("action")
    if not isinstance(kind, str) or not isinstance(action, str | None):
        raise ProtocolError("malformed message: 'type' and 'action' must be strings")
    cls = _registry.get((kind, None)) or _registry.get((kind, action))
    if cls is None:
        raise ProtocolError(f"unknown message type {doc.get('type')!r} action {doc.get('action')!r}")
    if allowed and not issubclass(cls, allowed):
        raise ProtocolError(f"message type {cls.type!r} is not expected here")
    if payload is not None and not cls.binary:
        raise ProtocolError(f"message type {cls.type!r} does not travel in a binary frame")
    return cls.from_dict(doc, payload=payload)


def _peek(value: bytes | None) -> dict[str, Any]:
    """The top-level object (a frame's header) of a record that failed validation, or {}."""
    try:
        doc = unframe(value)[0] if is_frame(value) else load_json(value)
    except ProtocolError:
        return {}
    return doc if isinstance(doc, dict) else {}


def peek_request_id(value: bytes | None) -> str | None:
    """The request a record that failed validation says it belongs to, if any."""
    rid = _peek(value).get("request_id")
    return rid if isinstance(rid, str) and _ID_RE.fullmatch(rid) else None


def peek_reply_address(value: bytes | None) -> tuple[str, int] | None:
    """Where to send an error reply for a request that failed validation, if it says."""
    rid, partition = peek_request_id(value), _peek(value).get("reply_partition")
    if rid is not None and _is_int(partition) and 0 <= partition < MAX_INT:
        return rid, partition
    return None


def _check_request_id(value: str) -> None:
    if not _ID_RE.fullmatch(value):
        raise ProtocolError("request_id must be 32 lowercase hex digits")


def _check_message_text(text: str) -> None:
    if len(text) > MAX_MESSAGE_LENGTH:
        raise ProtocolError(f"message longer than {MAX_MESSAGE_LENGTH} characters")


class Visibility(enum.StrEnum):
    """Who may read a repository: anyone registered (public), or its members (private)."""

    PUBLIC = "public"
    PRIVATE = "private"


class Access(enum.StrEnum):
    """A member's level on a repository; each includes the ones before it."""

    NONE = "none"
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


@wire
@dataclass(kw_only=True)
class Chunk(Message):
    """One piece of a blob (a file's content or a tree), on any topic.

    ``payload`` is the encoded piece, the frame's bytes (base64 in ``data`` in the
    JSON form of before, still read); the chunk is piece ``index`` of ``count`` of
    the blob whose raw content hashes to ``sha`` (see minigit.codec).

    An upload's chunks carry their request's ``reply_partition`` (left out when
    null: an answer's chunks, and uploads written before it existed), where the
    replica taking them in sends upload notices (``UPLOAD_NOTICE``).
    """

    type: ClassVar[str] = "chunk"
    binary: ClassVar[bool] = True
    request_id: str
    repo: str
    sha: str
    index: int
    count: int
    encoding: str
    payload: bytes = binary_field()
    stream: str | None = None
    reply_partition: int | None = added_later(None)

    @classmethod
    def legacy_payload(cls, doc: dict[str, Any], owner: str) -> bytes:
        # base64 of at most CHUNK_SIZE bytes, checked again by validate
        return _legacy_bytes(doc, "data", 4 * (codec.CHUNK_SIZE // 3 + 1), owner)

    def validate(self) -> None:
        _check_request_id(self.request_id)
        check_name("repository", self.repo)
        check_sha(self.sha)
        if not 0 <= self.index < self.count:
            raise ProtocolError("chunk index out of range")
        if self.count > codec.count_chunks(MAX_BLOB_BYTES):
            raise ProtocolError(f"chunk count too large: a blob holds at most {MAX_BLOB_BYTES} bytes")
        if self.encoding not in codec.ENCODINGS:
            raise ProtocolError(f"unknown chunk encoding {self.encoding!r}")
        if not isinstance(self.payload, bytes) or len(self.payload) > codec.CHUNK_SIZE:
            raise ProtocolError(f"chunk payload larger than {codec.CHUNK_SIZE} bytes")

    @classmethod
    def of_piece(
        cls, request_id: str, repo: str, sha: str, count: int, piece: codec.Piece, stream: str | None = None
    ) -> Chunk:
        return cls(
            request_id=request_id,
            repo=repo,
            sha=sha,
            index=piece.index,
            count=count,
            encoding=piece.encoding,
            payload=piece.payload,
            stream=stream,
        )

    def piece(self) -> codec.Piece:
        return codec.Piece(self.index, self.encoding, self.payload)

    def raw(self) -> bytes:
        return codec.decode_piece(self.piece())


def blob_chunks(
    request_id: str, repo: str, blob: codec.BlobSource, stream: str | None = None, reply_partition: int | None = None
) -> Iterator[Chunk]:
    """The chunk records that carry ``blob``, in order (an upload's: with its request's ``reply_partition``)."""
    count = codec.count_chunks(blob.size)
    for index, raw in enumerate(blob.read_pieces()):
        chunk = Chunk.of_piece(request_id, repo, blob.sha, count, codec.encode_piece(index, raw), stream)
        chunk.reply_partition = reply_partition
        yield chunk


# -- requests: client -> repo-requests (key = repository name)


def _check_key_text(name: str, text: str) -> None:
    if len(text) > MAX_KEY_TEXT:
        raise ProtocolError(f"{name} longer than {MAX_KEY_TEXT} characters")


def _check_signature_text(name: str, text: str) -> None:
    if len(text) > MAX_SIGNATURE_TEXT:
        raise ProtocolError(f"{name} longer than {MAX_SIGNATURE_TEXT} characters")


@dataclass(kw_only=True)
class Request(Message):
    """What every request carries. ``user`` is who signed it: ``signature`` is that
    user's Ed25519 signature over ``minigit.identity.signing_payload`` (every other
    field, its ``chunks`` digest of what it uploaded among them, and the namespace). ``signed_ms`` bounds
    a replay in time; ``reply_key`` (``x25519:``) is the key replies about a
    private repository are sealed to (minigit.sealing)."""

    type: ClassVar[str] = "request"
    request_id: str
    repo: str
    user: str
    reply_partition: int
    timeout_ms: int = 30_000
    signed_ms: int = 0
    chunks: str = ""  # identity.chunks_digest of the chunks uploaded with it ("": none yet)
    reply_key: str = ""
    signature: str = ""

    def validate(self) -> None:
        _check_request_id(self.request_id)
        check_name("repository", self.repo)
        check_name("user", self.user)
        if self.reply_partition < 0:
            raise ProtocolError("reply_partition must be >= 0")
        if self.timeout_ms <= 0:
            raise ProtocolError("timeout_ms must be > 0")
        if self.chunks:
            check_sha(self.chunks)
        _check_key_text("reply_key", self.reply_key)
        _check_signature_text("signature", self.signature)


@wire
@dataclass(kw_only=True)
class InitRequest(Request):
    """Create repository ``repo`` at version 1 with ``tree`` (uploaded as chunks first)."""

    action: ClassVar[str] = "init"
    tree: str
    message: str = ""
    visibility: Visibility = Visibility.PRIVATE

    def validate(self) -> None:
        super().validate()
        check_sha(self.tree)
        _check_message_text(self.message)


@wire
@dataclass(kw_only=True)
class PullRequest(Request):
    """Bring a client at ``version`` (0 = nothing yet: a clone) to the head.

    ``lost`` lists contents of that version the client no longer holds (files it
    edited or deleted), so the server sends them again if the head needs them.
    """

    action: ClassVar[str] = "pull"
    version: int = 0
    lost: list[str] = field(default_factory=list)
    # The version to bring the client to; 0: the head. With a target the answer is
    # ``ok`` even when ``version == target``: how a client fetches a version's tree
    # (and, through ``lost``, some of its blobs).
    target: int = 0
    # The tree the client believes its ``version`` has (""): not the server's one
    # means the repository was deleted and created again since the client got it.
    base_tree: str = ""

    def validate(self) -> None:
        super().validate()
        if len(self.lost) > MAX_LOST:
            raise ProtocolError(f"lost lists more than {MAX_LOST} objects")
        for sha in self.lost:
            check_sha(sha)
        if self.target < 0:
            raise ProtocolError("target must be >= 0")
        if self.base_tree:
            check_sha(self.base_tree)


@wire
@dataclass(kw_only=True)
class PushRequest(Request):
    """Make ``tree`` the next version, if the head is still ``base``."""

    action: ClassVar[str] = "push"
    base: int
    tree: str
    message: str = ""
    # The tree the client holds as version ``base`` (""): not the server's one means
    # the repository was deleted and created again since. Carried into the proposal,
    # decided when it is applied. Not written while "": a push signed before it existed
    # keeps its signature.
    base_tree: str = added_later("")

    def validate(self) -> None:
        super().validate()
        check_sha(self.tree)
        if self.base < 1:
            raise ProtocolError("base must be >= 1")
        _check_message_text(self.message)
        if self.base_tree:
            check_sha(self.base_tree)


@wire
@dataclass(kw_only=True)
class LogRequest(Request):
    """The newest ``limit`` versions (from version ``start`` down, when given); with
    ``paths``, only those that added, changed or deleted a file equal to or under one
    of them; with ``changes``, each listing what it changed."""

    action: ClassVar[str] = "log"
    limit: int = 100
    paths: list[str] = field(default_factory=list)
    changes: bool = False
    start: int = 0  # the newest version to list (0: the head): how ``show V`` reaches any version

    def validate(self) -> None:
        super().validate()
        if self.start < 0:
            raise ProtocolError("start must be >= 0")
        if not 1 <= self.limit <= MAX_LOG_LIMIT:
            raise ProtocolError(f"limit must be between 1 and {MAX_LOG_LIMIT}")
        if len(self.paths) > MAX_LOG_PATHS:
            raise ProtocolError(f"paths lists more than {MAX_LOG_PATHS} paths")
        for path in self.paths:
            check_path(path)


@wire
@dataclass(kw_only=True)
class PingRequest(Request):
    """Answered by whichever replica serves the repository's partition."""

    action: ClassVar[str] = "ping"


@wire
@dataclass(kw_only=True)
class ShareRequest(Request):
    """Give ``member`` a level of access to ``repo`` (``none``: take it away)."""

    action: ClassVar[str] = "share"
    member: str
    level: Access

    def validate(self) -> None:
        super().validate()
        check_name("user", self.member)


@wire
@dataclass(kw_only=True)
class VisibilityRequest(Request):
    action: ClassVar[str] = "visibility"
    visibility: Visibility


@wire
@dataclass(kw_only=True)
class RegisterRequest(Request):
    """Claim the name ``user`` for ``public_key``, signed by that key (proof that
    the sender holds it). Account requests are routed by the user's name: ``repo``
    is the user's name, and its log partition decides the claim."""

    action: ClassVar[str] = "register"
    public_key: str

    def validate(self) -> None:
        super().validate()
        _check_key_text("public_key", self.public_key)
        if self.repo != self.user:
            raise ProtocolError("an account request is routed by its user's name: repo must equal user")


@wire
@dataclass(kw_only=True)
class RotateRequest(Request):
    """Replace the user's registered key by ``new_key``, signed by the old key."""

    action: ClassVar[str] = "rotate"
    new_key: str

    def validate(self) -> None:
        super().validate()
        _check_key_text("new_key", self.new_key)
        if self.repo != self.user:
            raise ProtocolError("an account request is routed by its user's name: repo must equal user")


@wire
@dataclass(kw_only=True)
class ReposRequest(Request):
    """The repositories ``user`` may read, by name, a page at a time: names after
    ``after`` (""), at most ``limit``. Routed like an account request (``repo`` is
    the user's name); the answer reads every log partition."""

    action: ClassVar[str] = "repos"
    after: str = ""
    limit: int = 100

    def validate(self) -> None:
        super().validate()
        if self.repo != self.user:
            raise ProtocolError("a repository listing is routed by its user's name: repo must equal user")
        if self.after:
            check_name("repository", self.after)
        if not 1 <= self.limit <= MAX_REPOS_LIMIT:
            raise ProtocolError(f"limit must be between 1 and {MAX_REPOS_LIMIT}")


@wire
@dataclass(kw_only=True)
class OutcomeRequest(Request):
    """ "What became of my write ``of_request`` (which proposed ``tree``)?" A write
    itself (a ``SettleProposal``): once applied, the original request can no longer
    change anything, so its answer is final."""

    action: ClassVar[str] = "outcome"
    of_request: str
    tree: str

    def validate(self) -> None:
        super().validate()
        _check_request_id(self.of_request)
        check_sha(self.tree)
        if self.of_request == self.request_id:
            raise ProtocolError("of_request must name another request than this one")


ACCOUNT_REQUESTS = (RegisterRequest, RotateRequest)


# -- replies: replica -> repo-responses (partition chosen by the client)

# The ``action`` of an upload notice: a ``working`` reply a replica sends, at most every
# UPLOAD_NOTICE_S per request, while it takes in chunks of the request's upload, before
# the request itself arrives. The client is not waiting on a dead replica then, and
# does not send the upload again to another (see docs/protocol.md, "Retries and hedging").
UPLOAD_NOTICE = "upload"
UPLOAD_NOTICE_S = 0.5


class Status(enum.StrEnum):
    """A reply's status. ``ok`` for reads; the others are outcomes of writes and errors."""

    OK = "ok"
    UP_TO_DATE = "up-to-date"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EXISTS = "exists"
    NOT_FOUND = "not-found"
    INVALID = "invalid"
    MISSING_OBJECTS = "missing-objects"
    DENIED = "denied"  # the verified user may not do this (permissions)
    UNAUTHENTICATED = "unauthenticated"  # unsigned, a bad signature, a removed user, a replay
    UNKNOWN_USER = "unknown-user"  # no key is registered under the request's user name
    ERROR = "error"
    WORKING = "working"  # not an answer: the request is being processed, keep waiting
    CANCELLED = "cancelled"  # a write that was never applied, and never will be (OutcomeRequest)


@dataclass(kw_only=True)
class SignedWrite(Record):
    """A write's proof of authorship, carried from the request into the log and
    kept with the version it made: any replica, and any auditor with the log,
    checks ``request``'s signature against ``key`` (minigit.identity).

    ``request`` is the request as it arrived (its JSON, signature included);
    ``key`` the author's key as registered when the write was proposed, and
    ``attestation`` the server's signature saying so (``identity.attestation_payload``),
    empty for a registration (its request is signed by the key it registers)."""

    request: str
    key: str
    attestation: str = ""

    def validate(self) -> None:
        if len(self.request.encode()) > MAX_SIGNED_REQUEST_BYTES:
            raise ProtocolError(f"a signed request is larger than {MAX_SIGNED_REQUEST_BYTES} bytes")
        _check_key_text("key", self.key)
        _check_signature_text("attestation", self.attestation)

    def to_text(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_text(cls, text: str) -> SignedWrite:
        """One kept in a store or a reply (ProtocolError if it is not one)."""
        doc = load_json(text.encode())
        if not isinstance(doc, dict):
            raise ProtocolError("a signed write is not a JSON object")
        return cls.from_dict(doc)

    def parsed_request(self) -> Request:
        """The request inside (ProtocolError if it is not one)."""
        message = parse_message(self.request.encode(), allowed=(Request,))
        assert isinstance(message, Request)
        return message


class ChangeKind(enum.StrEnum):
    ADDED = "A"
    MODIFIED = "M"  # its content or its mode changed
    DELETED = "D"


@dataclass(kw_only=True)
class FileChange(Record):
    """One file a version changed: its size and mode in that version (for a
    deletion, the ones it had before)."""

    path: str
    kind: ChangeKind
    size: int
    mode: FileMode = FileMode.REGULAR

    def validate(self) -> None:
        check_path(self.path)


@dataclass(kw_only=True)
class LogEntry(Record):
    """One version, as a log reply lists it."""

    version: int
    author: str
    time_ms: int
    message: str
    signed: SignedWrite | None = None
    tree: str | None = None  # the version's tree
    changes: list[FileChange] = field(default_factory=list)  # when the request asked, by path
    changes_more: int = 0  # changes left off the list (at most MAX_LOG_CHANGES are listed)

    def validate(self) -> None:
        if self.tree is not None:
            check_sha(self.tree)
        if len(self.changes) > MAX_LOG_CHANGES:
            raise ProtocolError(f"a log entry lists more than {MAX_LOG_CHANGES} changes")


# What a user's access to a listed repository is.
REPO_ACCESS_KINDS = ("owner", "admin", "write", "read", "public")


@dataclass(kw_only=True)
class RepoInfo(Record):
    """One repository in a ``repos`` reply: its head version, when and by whom it
    was made, and the asking user's access (``public``: readable by everyone,
    without membership)."""

    name: str
    head: int
    time_ms: int
    author: str
    visibility: Visibility
    access: str

    def validate(self) -> None:
        check_name("repository", self.name)
        check_name("user", self.author)
        if self.access not in REPO_ACCESS_KINDS:
            raise ProtocolError(f"unknown access {self.access[:40]!r}")


@wire
@dataclass(kw_only=True)
class Reply(Message):
    """The answer to one request. ``stream`` names this answer: a request answered
    twice (after a failover) yields two streams; the client follows the newest,
    since an older one still arriving was cut off when its replica died.

    For a pull that brings content, ``blob_count`` chunked blobs follow the reply
    on the same partition, the tree first; ``blob_bytes`` is their raw size.
    """

    type: ClassVar[str] = "reply"
    request_id: str
    action: str  # type: ignore[misc]  # the action of the request this answers
    stream: str
    replica: str
    status: Status
    message: str = ""
    version: int | None = None
    head: int | None = None
    tree: str | None = None
    blob_count: int = 0
    blob_bytes: int = 0
    entries: list[LogEntry] = field(default_factory=list)
    repos: list[RepoInfo] = field(default_factory=list)  # a repos answer's page
    more: bool = False  # a repos answer: more repositories follow the page's last
    server_key: str = ""  # the service's public key (ed25519:): the client pins it
    signature: str = ""  # the server key's signature over the reply (minigit.sealing)

    def validate(self) -> None:
        _check_request_id(self.request_id)
        _check_key_text("server_key", self.server_key)
        _check_signature_text("signature", self.signature)
        if self.tree is not None:
            check_sha(self.tree)
        # an answer carries a tree and the blobs it lists, never more
        if self.blob_count > MAX_TREE_ENTRIES + 1:
            raise ProtocolError(f"blob_count {self.blob_count} is more than a version can hold")
        if self.blob_bytes > MAX_TREE_BYTES + MAX_TREE_ENTRIES * MAX_BLOB_BYTES:
            raise ProtocolError(f"blob_bytes {self.blob_bytes} is more than a version can hold")
        if len(self.entries) > MAX_LOG_LIMIT:
            raise ProtocolError(f"a reply lists more than {MAX_LOG_LIMIT} log entries")
        if len(self.repos) > MAX_REPOS_LIMIT:
            raise ProtocolError(f"a reply lists more than {MAX_REPOS_LIMIT} repositories")


# -- the replication log: owners -> repo-log (key = repository name)


@dataclass(kw_only=True)
class Proposal(Message):
    """A write, decided identically by every replica when it applies the record.
    ``signed`` proves who asked for it; a proposal whose proof does not check
    against the request it names is skipped by every replica alike."""

    type: ClassVar[str] = "propose"
    request_id: str
    repo: str
    user: str
    time_ms: int
    proposer: str
    signed: SignedWrite | None = None

    def validate(self) -> None:
        _check_request_id(self.request_id)
        check_name("repository", self.repo)
        check_name("user", self.user)


@dataclass(kw_only=True)
class TreeProposal(Proposal):
    tree: str
    message: str

    def validate(self) -> None:
        super().validate()
        check_sha(self.tree)
        _check_message_text(self.message)


@wire
@dataclass(kw_only=True)
class CreateProposal(TreeProposal):
    action: ClassVar[str] = "init"
    visibility: Visibility = Visibility.PRIVATE


@wire
@dataclass(kw_only=True)
class PushProposal(TreeProposal):
    action: ClassVar[str] = "push"
    base: int
    base_tree: str = added_later("")  # the PushRequest's; "" (not written): not checked

    def validate(self) -> None:
        super().validate()
        if self.base_tree:
            check_sha(self.base_tree)


@wire
@dataclass(kw_only=True)
class ShareProposal(Proposal):
    action: ClassVar[str] = "share"
    member: str
    level: Access

    def validate(self) -> None:
        super().validate()
        check_name("user", self.member)


@wire
@dataclass(kw_only=True)
class VisibilityProposal(Proposal):
    action: ClassVar[str] = "visibility"
    visibility: Visibility


@wire
@dataclass(kw_only=True)
class RegisterProposal(Proposal):
    """In the log partition of the user's name (``repo`` is the name)."""

    action: ClassVar[str] = "register"
    public_key: str

    def validate(self) -> None:
        super().validate()
        _check_key_text("public_key", self.public_key)


@wire
@dataclass(kw_only=True)
class RotateProposal(Proposal):
    action: ClassVar[str] = "rotate"
    new_key: str

    def validate(self) -> None:
        super().validate()
        _check_key_text("new_key", self.new_key)


class AdminOp(enum.StrEnum):
    ADD = "add"  # register a name (or give a removed one back) with a key
    REMOVE = "remove"  # the name keeps no key and stays taken


@wire
@dataclass(kw_only=True)
class AdminProposal(Proposal):
    """An operator's account change (``minigit-server users add/remove``), in the
    log partition of the name, signed with the service's key (no user signs it)."""

    action: ClassVar[str] = "admin"
    op: AdminOp
    public_key: str = ""
    operator_signature: str = ""

    def validate(self) -> None:
        super().validate()
        _check_key_text("public_key", self.public_key)
        _check_signature_text("operator_signature", self.operator_signature)


@wire
@dataclass(kw_only=True)
class SettleProposal(Proposal):
    """An ``OutcomeRequest`` in the log of its repository's partition: settles what
    became of the write ``of_request``. If nothing is stored for that id yet, it is
    stored as cancelled, so that the write, arriving later, changes nothing."""

    action: ClassVar[str] = "outcome"
    of_request: str
    tree: str

    def validate(self) -> None:
        super().validate()
        _check_request_id(self.of_request)
        check_sha(self.tree)


@wire
@dataclass(kw_only=True)
class DeleteProposal(Proposal):
    """An operator's deletion of repository ``repo`` (``minigit-server repo delete``),
    in its log partition, signed with the service's key like an ``AdminProposal``."""

    action: ClassVar[str] = "delete"
    operator_signature: str = ""

    def validate(self) -> None:
        super().validate()
        _check_signature_text("operator_signature", self.operator_signature)


ACCOUNT_PROPOSALS = (RegisterProposal, RotateProposal, AdminProposal)
OPERATOR_PROPOSALS = (AdminProposal, DeleteProposal)
LOG_RECORD_TYPES = (Chunk, Proposal)
REQUEST_TYPES = (Chunk, Request)


@wire
@dataclass(kw_only=True)
class Sealed(Message):
    """A reply record about a private repository, sealed to the request's
    ``reply_key`` (minigit.sealing): ``box`` holds the bytes of a Reply or Chunk
    record, readable only by the requester; it is the frame's bytes (base64 in
    the JSON form of before, still read). ``sender_key`` is the server's
    ephemeral X25519 key for this stream; ``nonce`` is this record's."""

    type: ClassVar[str] = "sealed"
    binary: ClassVar[bool] = True
    request_id: str
    stream: str
    sender_key: str
    nonce: str
    box: bytes = binary_field()

    @classmethod
    def legacy_payload(cls, doc: dict[str, Any], owner: str) -> bytes:
        return _legacy_bytes(doc, "box", MAX_SEALED_BOX_CHARS, owner)

    def validate(self) -> None:
        _check_request_id(self.request_id)
        _check_key_text("sender_key", self.sender_key)
        if len(self.nonce) > 32:
            raise ProtocolError("nonce longer than 32 characters")
        if not isinstance(self.box, bytes) or len(self.box) > MAX_SEALED_BOX_BYTES:
            raise ProtocolError(f"sealed box longer than {MAX_SEALED_BOX_BYTES} bytes")


REPLY_TYPES = (Chunk, Reply, Sealed)


# -- membership: replicas -> repo-replicas (compacted, key = replica id)


@dataclass(kw_only=True)
class RepoReport(Record):
    """One repository as a replica holds it, for ``minigit-server verify``."""

    head: int
    digest: str
    partition: int  # the log partition its records live in
    changed_at: int  # log offset of the record that last changed it


# A replica reports its repositories in pages of their own records, not in its
# heartbeat: each log partition's repositories are spread over REPORT_PAGES pages by
# a hash of their name (report_page_of), so that a change republishes one page only.
# A page holds at most MAX_PAGE_REPORTS reports (about 0.7 MB at the longest names),
# which bounds a replica's repositories at REPORT_PAGES * MAX_PAGE_REPORTS per partition.
REPORT_PAGES = 64
MAX_PAGE_REPORTS = 4000
MAX_REPORTED_PARTITIONS = 1024
PAGE_DIGEST_LENGTH = 16


def report_page_of(name: str) -> int:
    """The report page a repository is listed on (the same on every replica)."""
    return int(hash_bytes(name.encode())[:8], 16) % REPORT_PAGES


def report_page_key(replica: str, partition: int, page: int) -> bytes:
    """The repo-replicas key of a report page ('/' is in no replica name)."""
    return f"{replica}/{partition}/{page}".encode()


@dataclass(kw_only=True)
class PartitionReport(Record):
    """A replica's repositories of one log partition, in a heartbeat: how many, a
    digest of them all, and the digest of each report page ("": an empty page). A
    page record whose digest is the heartbeat's holds what the replica held when it
    had applied the heartbeat's ``applied`` offset."""

    repos: int
    digest: str
    pages: list[str]

    def validate(self) -> None:
        if len(self.pages) != REPORT_PAGES:
            raise ProtocolError(f"a partition report lists {len(self.pages)} pages, not {REPORT_PAGES}")
        if len(self.digest) > 64 or any(len(page) > PAGE_DIGEST_LENGTH for page in self.pages):
            raise ProtocolError("a partition report's digest is too long")


@wire
@dataclass(kw_only=True)
class RepoPage(Message):
    """One page of a replica's repository reports, on repo-replicas under the key
    ``report_page_key``; published when its digest changes, a tombstone once empty.
    ``applied`` is the partition's next offset to apply when the page was read."""

    type: ClassVar[str] = "repo-page"
    replica: str
    partition: int
    page: int
    applied: int
    digest: str
    repos: dict[str, RepoReport]

    def validate(self) -> None:
        check_name("replica", self.replica)
        if not 0 <= self.page < REPORT_PAGES or not 0 <= self.partition < MAX_REPORTED_PARTITIONS:
            raise ProtocolError(f"no report page {self.partition}/{self.page}")
        if len(self.digest) > PAGE_DIGEST_LENGTH:
            raise ProtocolError("a page digest is too long")
        if len(self.repos) > MAX_PAGE_REPORTS:
            raise ProtocolError(f"a report page lists more than {MAX_PAGE_REPORTS} repositories")
        for name in self.repos:
            check_name("repository", name)
            if report_page_of(name) != self.page:
                raise ProtocolError(f"repository {name!r} is not on report page {self.page}")

    @property
    def key(self) -> bytes:
        return report_page_key(self.replica, self.partition, self.page)


# A heartbeat lists at most this many damaged objects (it counts them all).
MAX_DAMAGE_LISTED = 50
MAX_PROBLEM_LENGTH = 200


@dataclass(kw_only=True)
class DamagedObject(Record):
    """A stored blob that failed its hash check on one replica."""

    partition: int
    sha: str
    problem: str
    repaired: bool

    def validate(self) -> None:
        check_sha(self.sha)
        if len(self.problem) > MAX_PROBLEM_LENGTH:
            raise ProtocolError(f"problem longer than {MAX_PROBLEM_LENGTH} characters")


def _check_damage_list(owner: str, listed: list[DamagedObject], count: int) -> None:
    if len(listed) > MAX_DAMAGE_LISTED:
        raise ProtocolError(f"{owner} lists more than {MAX_DAMAGE_LISTED} damaged objects")
    if count < len(listed):
        raise ProtocolError(f"{owner} counts fewer damaged objects than it lists")


@dataclass(kw_only=True)
class ScrubReport(Record):
    """One finished pass over every stored blob: each one read and hashed.

    ``request`` is the scrub request it answered ("" for a background pass);
    ``damaged`` lists what failed its hash in this pass, repaired from the log or not.
    """

    request: str
    started_ms: int
    finished_ms: int
    objects: int
    bytes: int
    damaged: list[DamagedObject] = field(default_factory=list)
    damaged_count: int = 0

    def validate(self) -> None:
        if self.request:
            _check_request_id(self.request)
        _check_damage_list("ScrubReport", self.damaged, self.damaged_count)


@wire
@dataclass(kw_only=True)
class ScrubRequest(Message):
    """``minigit-server verify --deep`` asks every replica to read and hash every
    stored blob now. On repo-replicas under the key SCRUB_REQUEST_KEY (no replica
    id can be spelled so); a replica answers in its heartbeats' ``scrub``."""

    type: ClassVar[str] = "scrub-request"
    request: str  # 32 hex digits, named again by the ScrubReport that answers it
    requested_ms: int

    def validate(self) -> None:
        _check_request_id(self.request)


SCRUB_REQUEST_KEY = b"*scrub"


@wire
@dataclass(kw_only=True)
class Heartbeat(Message):
    """A replica's periodic report: who it is, what it serves, how far it applied,
    a digest of each repository's state (for ``minigit-server verify``), the objects
    it holds quarantined, and its last full scrub (for ``verify --deep``)."""

    type: ClassVar[str] = "heartbeat"
    replica: str
    host: str
    pid: int
    started_ms: int
    sent_ms: int
    serving: list[int]  # request partitions this replica owns now
    applied: dict[int, int]  # log partition -> next offset to apply
    log_end: dict[int, int]  # log partition -> log end offset seen ({}: the lookup failed)
    # Repositories reported inline (an older replica, or a handful); a replica lists
    # them in RepoPage records instead, summed up here per log partition.
    repos: dict[str, RepoReport] = field(default_factory=dict)
    partitions: dict[int, PartitionReport] = field(default_factory=dict)
    stopping: bool = False
    quarantined: list[DamagedObject] = field(default_factory=list)  # damaged now, not repaired
    quarantined_count: int = 0
    scrub: ScrubReport | None = None  # the last finished scrub
    server_key: str = ""  # the service's public key this replica checks the log with (ed25519:)

    def validate(self) -> None:
        check_name("replica", self.replica)
        _check_key_text("server_key", self.server_key)
        for name in self.repos:
            check_name("repository", name)
        if len(self.repos) > MAX_PAGE_REPORTS:
            raise ProtocolError(f"a heartbeat lists more than {MAX_PAGE_REPORTS} repositories")
        if len(self.partitions) > MAX_REPORTED_PARTITIONS or any(
            not 0 <= n < MAX_REPORTED_PARTITIONS for n in self.partitions
        ):
            raise ProtocolError("a heartbeat reports partitions out of range")
        _check_damage_list("Heartbeat", self.quarantined, self.quarantined_count)
