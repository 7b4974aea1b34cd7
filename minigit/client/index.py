"""The stat cache (git's index): for each working file, its ``lstat`` when it was
last hashed and the sha found then, so that a scan reads only the files whose
stat changed.

It is a cache and nothing more: a missing, unreadable or corrupt one is taken as
empty (every file is hashed, and a new one is written); what it says is used only
to skip hashing a file whose size, mtime, ctime, inode and mode are all the same.

Racy git: a file changed in the same timestamp granule as its stat was taken keeps
its mtime, so its stat cannot tell. Two guards, as git's: an entry whose mtime is
not older than the index file's own mtime is not trusted (hashed again), and the
writer leaves out entries not older than the start of the scan that hashed them
(``settled``), so a later index write cannot make them look old.

The format is compact binary, read in a few calls whatever the number of files:
a header (magic, count, size of the path block), ``count`` fixed-size records in
path order, the paths (UTF-8, NUL-separated), then the SHA-256 of all that.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

INDEX_NAME = ".minigit-index"
MAGIC = b"MGINDEX1"
HEADER = struct.Struct("<8sII")  # magic, number of records, bytes of the path block
RECORD = struct.Struct("<qqqQI32s")  # size, mtime_ns, ctime_ns, inode, st_mode, sha256
DIGEST_SIZE = 32
# Far above what a tree of MAX_TREE_ENTRIES paths needs: a larger file is no index of ours.
MAX_INDEX_BYTES = 256 * 1024 * 1024

# What a file's lstat must still be for its recorded sha to hold: size, mtime_ns, ctime_ns, inode, st_mode.
Stat = tuple[int, int, int, int, int]
# A record: the Stat's five fields, then the sha256 of the content (32 raw bytes).
Record = tuple[int, int, int, int, int, bytes]


def stat_key(st: os.stat_result) -> Stat:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)


@dataclass(frozen=True)
class StatCache:
    """The records of an index file, and that file's own mtime (see racy git above)."""

    records: dict[str, Record] = field(default_factory=dict)
    written_ns: int = 0

    def lookup(self, path: str, key: Stat) -> Record | None:
        """The record of ``path`` if its stat is still ``key`` and the record is
        not racily clean (its sha holds); None: hash the file."""
        record = self.records.get(path)
        if record is None or record[1] >= self.written_ns or record[:5] != key:
            return None
        return record


# ---------------------------------------------------------------- format


def format_index(records: Mapping[str, Record]) -> bytes:
    paths = sorted(records)
    block = "\0".join(paths).encode("utf-8")
    body = b"".join(
        [HEADER.pack(MAGIC, len(paths), len(block)), *(RECORD.pack(*records[path]) for path in paths), block]
    )
    return body + hashlib.sha256(body).digest()


def parse_index(data: bytes) -> dict[str, Record]:
    """The records of an index file's bytes; ValueError if they are not one."""
    if len(data) < HEADER.size + DIGEST_SIZE:
        raise ValueError("truncated")
    body, digest = data[:-DIGEST_SIZE], data[-DIGEST_SIZE:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("checksum mismatch")
    magic, count, block_size = HEADER.unpack_from(body)
    if magic != MAGIC:
        raise ValueError("not a minigit index")
    start = HEADER.size + count * RECORD.size
    if start + block_size != len(body):
        raise ValueError("sizes do not add up")
    paths = body[start:].decode("utf-8").split("\0") if count else []
    if len(paths) != count or len(set(paths)) != count:
        raise ValueError("paths do not match the records")
    return dict(zip(paths, RECORD.iter_unpack(body[HEADER.size : start]), strict=True))


def settled(records: Mapping[str, Record], clock_ns: int) -> dict[str, Record]:
    """The records worth keeping from a scan that began at ``clock_ns`` (on the
    filesystem's clock): a file modified since may have changed after it was hashed."""
    return {path: record for path, record in records.items() if record[1] < clock_ns}


# ---------------------------------------------------------------- disk


def load_index(path: Path) -> StatCache:
    """The stat cache at ``path``; an empty one if it is missing, unreadable or corrupt."""
    try:
        # never a link followed, a fifo waited on, or a device read without end
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return StatCache()
    try:
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_INDEX_BYTES:
                return StatCache()
            data = file.read(MAX_INDEX_BYTES + 1)
        return StatCache(parse_index(data), info.st_mtime_ns)
    except (OSError, ValueError, struct.error):
        return StatCache()


def write_index(path: Path, temp: Path, records: Mapping[str, Record]) -> None:
    """Write through ``temp`` (a name the caller's lock protects), renamed over ``path``:
    a reader sees the old index or the new one, whole."""
    try:
        temp.write_bytes(format_index(records))
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
