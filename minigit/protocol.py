"""minigit's wire format: every message on every topic, and the rules both sides check.

Imported by the client and by the server alike, so the two cannot drift
(dulwich's protocol.py does the same for git's wire format). Nothing here
touches Kafka or the disk.

Every record value is one UTF-8 JSON object with ``"v": PROTOCOL_VERSION`` and a
``"type"``. Bulk bytes (file contents and trees) never ride inside a control
message: they travel as ``chunk`` records of at most CHUNK_SIZE raw bytes, so
every record stays under Kafka's default 1 MiB limit whatever the file size.
docs/protocol.md describes each message; keep it in step with this module.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
import types
import typing
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from minigit.errors import ProtocolError, UnsafePath

PROTOCOL_VERSION = 1

# Topic names are the seed's, behind an optional namespace prefix so that several
# services (or test runs) can share one cluster.
REQUESTS_TOPIC = "repo-requests"
RESPONSES_TOPIC = "repo-responses"
LOG_TOPIC = "repo-log"
REPLICAS_TOPIC = "repo-replicas"
REPLICA_GROUP = "minigit-replicas"

# 512 KiB of raw bytes is about 700 KB once base64-encoded: under Kafka's default
# message.max.bytes (1 MiB) with room for the JSON around it.
CHUNK_SIZE = 512 * 1024
MAX_RECORD_BYTES = 1_000_000  # what any record minigit writes must stay under (tests check chunks)

MAX_NAME_LENGTH = 64
MAX_PATH_LENGTH = 4096
MAX_PATH_PART_LENGTH = 255
MAX_MESSAGE_LENGTH = 10_000
MAX_LOST = 5000
MAX_INT = 2**63  # every integer field is 0 <= n < MAX_INT, so SQLite can store it

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def topic_name(namespace: str, topic: str) -> str:
    return f"{namespace}{topic}"


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
    if any(0xD800 <= ord(c) <= 0xDFFF for c in path):
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


# ---------------------------------------------------------------- trees and blobs


@dataclass(frozen=True, slots=True)
class FileEntry:
    sha: str
    size: int


Manifest = dict[str, FileEntry]
EMPTY_TREE_SHA = hashlib.sha256(b'{"files":{},"v":1}').hexdigest()


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_tree(manifest: Mapping[str, FileEntry]) -> bytes:
    """The canonical bytes of a tree: equal manifests give equal trees and shas."""
    files = {path: {"sha": e.sha, "size": e.size} for path, e in manifest.items()}
    return json.dumps({"v": 1, "files": files}, sort_keys=True, separators=(",", ":")).encode()


def decode_tree(data: bytes) -> Manifest:
    try:
        doc = json.loads(data.decode("utf-8"))
        files = doc["files"]
        if doc.get("v") != 1 or not isinstance(files, dict):
            raise ValueError("unknown tree format")
        manifest: Manifest = {}
        for path, entry in files.items():
            check_path(path)
            size = entry["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"bad size for {path!r}")
            manifest[path] = FileEntry(check_sha(entry["sha"]), size)
        if clash := find_file_directory_clash(manifest):
            raise ValueError(f"{clash!r} is both a file and a directory")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, ProtocolError) as error:
        raise ProtocolError(f"invalid tree: {error}") from None
    return manifest


def find_file_directory_clash(paths: Mapping[str, object]) -> str | None:
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in paths:
                return "/".join(parts[:i])
    return None


def manifest_to_json(manifest: Mapping[str, FileEntry]) -> dict[str, list]:
    return {path: [e.sha, e.size] for path, e in sorted(manifest.items())}


def manifest_from_json(doc: Any) -> Manifest:
    if not isinstance(doc, dict):
        raise ProtocolError("manifest is not an object")
    out: Manifest = {}
    for path, value in doc.items():
        check_path(path)
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[1], int)
            or isinstance(value[1], bool)
            or value[1] < 0
        ):
            raise ProtocolError(f"bad manifest entry for {path!r}")
        out[path] = FileEntry(check_sha(value[0]), value[1])
    return out


def count_chunks(size: int) -> int:
    """Every blob has at least one chunk, so an empty file is one empty chunk."""
    return max(1, -(-size // CHUNK_SIZE))


def encode_chunk_data(raw: bytes) -> tuple[str, bytes]:
    """Compress when it pays; already-compressed content is sent as it is."""
    sample = raw[:16384]
    if len(raw) > 4 * len(sample) and len(zlib.compress(sample, 1)) > 0.9 * len(sample):
        return "raw", raw  # a sample did not shrink: skip a whole zlib pass over noise
    packed = zlib.compress(raw, 1)
    if len(packed) < len(raw):
        return "zlib", packed
    return "raw", raw


def decode_chunk_data(encoding: str, data: bytes) -> bytes:
    if encoding == "raw":
        if len(data) > CHUNK_SIZE:
            raise ProtocolError("chunk larger than CHUNK_SIZE")
        return data
    if encoding == "zlib":
        try:
            decoder = zlib.decompressobj()
            raw = decoder.decompress(data, CHUNK_SIZE + 1)
        except zlib.error as error:
            raise ProtocolError(f"corrupt chunk: {error}") from None
        if len(raw) > CHUNK_SIZE or decoder.unconsumed_tail:
            raise ProtocolError("chunk larger than CHUNK_SIZE")
        if not decoder.eof or decoder.unused_data:
            raise ProtocolError("corrupt chunk: truncated or trailing data")
        return raw
    raise ProtocolError(f"unknown chunk encoding {encoding!r}")


# ---------------------------------------------------------------- messages

_registry: dict[tuple[str, str | None], type[Message]] = {}


def wire(cls: type[Message]) -> type[Message]:
    """Register a concrete message class, found by its type (and action)."""
    _registry[(cls.type, cls.__dict__.get("action") if isinstance(cls.__dict__.get("action"), str) else None)] = cls
    return cls


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_field(cls_name: str, name: str, annotation: Any, value: Any) -> None:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return
        annotation = next(a for a in options if a is not type(None))
        origin = typing.get_origin(annotation)
    expected = origin or annotation
    ok = _is_int(value) if expected is int else isinstance(value, expected)
    if not ok:
        raise ProtocolError(f"{cls_name}: field '{name}' must be {getattr(expected, '__name__', expected)}")
    if expected is int and not 0 <= value < MAX_INT:
        raise ProtocolError(f"{cls_name}: field '{name}' is out of range")
    if expected in (str, list, dict) and not _is_utf8(value):
        raise ProtocolError(f"{cls_name}: field '{name}' is not valid UTF-8 text")


def _is_utf8(value: Any) -> bool:
    """JSON can spell lone surrogates (\\ud800) that no UTF-8 text holds."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        text.encode("utf-8")
    except (UnicodeEncodeError, TypeError, ValueError):
        return False
    return True


@dataclass(kw_only=True)
class Message:
    """Base of every record minigit writes. Subclasses set ``type`` (and ``action``)."""

    type: ClassVar[str]
    action: ClassVar[str | None] = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": self.type}
        if self.action is not None:
            doc["action"] = self.action
        for f in dataclasses.fields(self):
            doc[f.name] = getattr(self, f.name)
        return doc

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Message:
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in doc:
                _check_field(cls.__name__, f.name, hints[f.name], doc[f.name])
                values[f.name] = doc[f.name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{cls.__name__}: missing field '{f.name}'")
        message = cls(**values)
        message.validate()
        return message

    def validate(self) -> None:
        """Rules beyond types; raise ProtocolError (or UnsafePath)."""


def parse_message(value: bytes, *, allowed: tuple[type[Message], ...] = ()) -> Message:
    """Decode and validate one record value; raise ProtocolError on anything else."""
    try:
        doc = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("malformed message: not UTF-8 JSON") from None
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
    return cls.from_dict(doc)


def peek_reply_address(value: bytes) -> tuple[str, int] | None:
    """Where to send an error reply for a request that failed validation, if it says."""
    try:
        doc = json.loads(value.decode("utf-8"))
        rid, partition = doc["request_id"], doc["reply_partition"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    if isinstance(rid, str) and _ID_RE.fullmatch(rid) and _is_int(partition) and 0 <= partition < MAX_INT:
        return rid, partition
    return None


@wire
@dataclass(kw_only=True)
class Chunk(Message):
    """One piece of a blob (a file's content or a tree), on any topic.

    ``data`` is base64 of the encoded bytes; the chunk is piece ``index`` of
    ``count`` of the blob whose raw content hashes to ``sha``.
    """

    type: ClassVar[str] = "chunk"
    request_id: str
    repo: str
    sha: str
    index: int
    count: int
    encoding: str
    data: str
    stream: str | None = None

    def validate(self) -> None:
        _check_request_id(self.request_id)
        check_name("repository", self.repo)
        check_sha(self.sha)
        if not 0 <= self.index < self.count:
            raise ProtocolError("chunk index out of range")
        if self.encoding not in ("raw", "zlib"):
            raise ProtocolError(f"unknown chunk encoding {self.encoding!r}")

    def raw(self) -> bytes:
        return decode_chunk_data(self.encoding, self.payload())

    def payload(self) -> bytes:
        try:
            return base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("chunk data is not base64") from None


def make_chunk(request_id: str, repo: str, sha: str, index: int, count: int, raw: bytes, stream: str | None = None) -> Chunk:
    encoding, data = encode_chunk_data(raw)
    return Chunk(
        request_id=request_id,
        repo=repo,
        sha=sha,
        index=index,
        count=count,
        encoding=encoding,
        data=base64.b64encode(data).decode("ascii"),
        stream=stream,
    )


def split_blob(request_id: str, repo: str, sha: str, content: bytes, stream: str | None = None) -> Iterator[Chunk]:
    count = count_chunks(len(content))
    for index in range(count):
        raw = content[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]
        yield make_chunk(request_id, repo, sha, index, count, raw, stream)


def _check_request_id(value: str) -> None:
    if not _ID_RE.fullmatch(value):
        raise ProtocolError("request_id must be 32 lowercase hex digits")


def _check_message_text(text: str) -> None:
    if len(text) > MAX_MESSAGE_LENGTH:
        raise ProtocolError(f"message longer than {MAX_MESSAGE_LENGTH} characters")


# -- requests: client -> repo-requests (key = repository name)


@dataclass(kw_only=True)
class Request(Message):
    type: ClassVar[str] = "request"
    request_id: str
    repo: str
    user: str
    reply_partition: int
    timeout_ms: int = 30_000

    def validate(self) -> None:
        _check_request_id(self.request_id)
        check_name("repository", self.repo)
        check_name("user", self.user)
        if self.reply_partition < 0:
            raise ProtocolError("reply_partition must be >= 0")
        if self.timeout_ms <= 0:
            raise ProtocolError("timeout_ms must be > 0")


@wire
@dataclass(kw_only=True)
class InitRequest(Request):
    """Create repository ``repo`` at version 1 with ``tree`` (uploaded as chunks first)."""

    action: ClassVar[str] = "init"
    tree: str
    message: str = ""

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
    lost: list = field(default_factory=list)

    def validate(self) -> None:
        super().validate()
        if self.version < 0:
            raise ProtocolError("version must be >= 0")
        if len(self.lost) > MAX_LOST:
            raise ProtocolError(f"lost lists more than {MAX_LOST} objects")
        for sha in self.lost:
            check_sha(sha)


@wire
@dataclass(kw_only=True)
class PushRequest(Request):
    """Make ``tree`` the next version, if the head is still ``base``."""

    action: ClassVar[str] = "push"
    base: int
    tree: str
    message: str = ""

    def validate(self) -> None:
        super().validate()
        check_sha(self.tree)
        if self.base < 1:
            raise ProtocolError("base must be >= 1")
        _check_message_text(self.message)


@wire
@dataclass(kw_only=True)
class LogRequest(Request):
    action: ClassVar[str] = "log"
    limit: int = 100

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.limit <= 1000:
            raise ProtocolError("limit must be between 1 and 1000")


@wire
@dataclass(kw_only=True)
class PingRequest(Request):
    """Answered by whichever replica serves the repository's partition."""

    action: ClassVar[str] = "ping"


# -- replies: replica -> repo-responses (partition chosen by the client)

# Reply statuses. "ok" for reads; the others are outcomes of writes and errors.
OK = "ok"
UP_TO_DATE = "up-to-date"
ACCEPTED = "accepted"
REJECTED = "rejected"
EXISTS = "exists"
NOT_FOUND = "not-found"
INVALID = "invalid"
MISSING_OBJECTS = "missing-objects"
ERROR = "error"
WORKING = "working"  # not an answer: the request is being processed, keep waiting


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
    status: str
    message: str = ""
    version: int | None = None
    head: int | None = None
    tree: str | None = None
    blob_count: int = 0
    blob_bytes: int = 0
    entries: list = field(default_factory=list)

    def validate(self) -> None:
        _check_request_id(self.request_id)
        if self.tree is not None:
            check_sha(self.tree)


# -- the replication log: owners -> repo-log (key = repository name)


@dataclass(kw_only=True)
class Proposal(Message):
    """A write, decided identically by every replica when it applies the record."""

    type: ClassVar[str] = "propose"
    request_id: str
    repo: str
    user: str
    tree: str
    message: str
    time_ms: int
    proposer: str

    def validate(self) -> None:
        _check_request_id(self.request_id)
        check_name("repository", self.repo)
        check_name("user", self.user)
        check_sha(self.tree)
        _check_message_text(self.message)


@wire
@dataclass(kw_only=True)
class CreateProposal(Proposal):
    action: ClassVar[str] = "init"


@wire
@dataclass(kw_only=True)
class PushProposal(Proposal):
    action: ClassVar[str] = "push"
    base: int


LOG_RECORD_TYPES = (Chunk, Proposal)
REQUEST_TYPES = (Chunk, Request)
REPLY_TYPES = (Chunk, Reply)


# -- membership: replicas -> repo-replicas (compacted, key = replica id)


@wire
@dataclass(kw_only=True)
class Heartbeat(Message):
    """A replica's periodic report: who it is, what it serves, how far it applied,
    and a digest of each repository's state (for ``minigit-server verify``)."""

    type: ClassVar[str] = "heartbeat"
    replica: str
    host: str
    pid: int
    started_ms: int
    sent_ms: int
    serving: list  # request partitions this replica owns now
    applied: dict  # log partition (as str) -> next offset to apply
    log_end: dict  # log partition (as str) -> log end offset seen
    repos: dict  # repo -> {"head": int, "digest": str, "partition": int, "changed_at": int}
    stopping: bool = False
