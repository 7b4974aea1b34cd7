"""A working directory on disk: its ``.minigit`` file, its files, safe writes, its lock.

Parsing ``.minigit`` is kept apart from reading it, and every path is checked
with the protocol's rules before anything touches the disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from minigit import codec
from minigit import protocol as p
from minigit.errors import CorruptMetadata, MinigitError, NoRepository, UnsafePath, WorkdirBusy

METADATA_NAME = ".minigit"
LOCK_NAME = ".minigit.lock"
TEMP_MARK = ".minigit-tmp-"
METADATA_FORMAT = 1
READ_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class Metadata:
    """What ``.minigit`` holds: which repository, which version, where the server
    is, and the manifest of that version (what the files were when last synced)."""

    repository: str
    version: int
    bootstrap: str
    namespace: str
    manifest: p.Manifest


def format_metadata(meta: Metadata) -> str:
    doc = {
        "format": METADATA_FORMAT,
        "repository": meta.repository,
        "version": meta.version,
        "server": {"bootstrap": meta.bootstrap, "namespace": meta.namespace},
        "manifest": p.manifest_to_json(meta.manifest),
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def parse_metadata(text: str, where: str = METADATA_NAME) -> Metadata:
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("format") != METADATA_FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        version, server = doc["version"], doc["server"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError("version must be a positive integer")
        bootstrap, namespace = server["bootstrap"], server["namespace"]
        if not isinstance(bootstrap, str) or not bootstrap or not isinstance(namespace, str):
            raise ValueError("bad server address")
        return Metadata(
            repository=p.check_name("repository", doc["repository"]),
            version=version,
            bootstrap=bootstrap,
            namespace=namespace,
            manifest=check_no_clash(p.manifest_from_json(doc["manifest"])),
        )
    except (ValueError, KeyError, TypeError, RecursionError, MinigitError) as error:
        reason = error.message if isinstance(error, MinigitError) else str(error) or type(error).__name__
        raise CorruptMetadata(where, reason) from None


def check_no_clash(manifest: p.Manifest) -> p.Manifest:
    if clash := p.find_file_directory_clash(manifest):
        raise ValueError(f"{clash!r} is both a file and a directory")
    return manifest


def find_root(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` that holds a .minigit file."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / METADATA_NAME).is_file():
            return directory
    return None


def require_root(start: Path) -> Path:
    root = find_root(start)
    if root is None:
        raise NoRepository()
    return root


def read_metadata(root: Path) -> Metadata:
    path = root / METADATA_NAME
    try:
        return parse_metadata(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError:
        raise CorruptMetadata(str(path), "not UTF-8") from None
    except FileNotFoundError:
        raise NoRepository() from None


def write_metadata(root: Path, meta: Metadata) -> None:
    """Written last by every command, atomically: a crash leaves the old one."""
    temp = root / f"{METADATA_NAME}{TEMP_MARK}{secrets.token_hex(4)}"
    temp.write_bytes(format_metadata(meta).encode())
    os.replace(temp, root / METADATA_NAME)


@contextlib.contextmanager
def lock_workdir(root: Path) -> Iterator[None]:
    """One minigit command at a time per working directory. The OS drops the lock
    when the process dies, so a crash never leaves a stale lock behind."""
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirBusy(str(root)) from None
            raise
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- reading files


def is_internal(name: str) -> bool:
    return p.is_reserved_name(name)


def list_files(root: Path, ignored: Callable[[str, bool], bool] = lambda path, is_dir: False) -> list[str]:
    """Relative '/' paths of the regular files under ``root``. Symlinks are not
    followed (a link could lead outside the working directory) and not tracked."""
    found: list[str] = []

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = prefix + entry.name
                if is_internal(entry.name) or entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    # a nested working directory belongs to its own repository
                    nested = os.path.isfile(os.path.join(entry.path, METADATA_NAME))
                    if not nested and not ignored(rel, True):
                        walk(Path(entry.path), rel + "/")
                elif entry.is_file(follow_symlinks=False) and not ignored(rel, False):
                    found.append(rel)

    walk(root, "")
    return found


def hash_file(path: Path) -> p.FileEntry:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as file:
        while block := file.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
    return p.FileEntry(digest.hexdigest(), size)


def scan_worktree(root: Path, ignored: Callable[[str, bool], bool] = lambda path, is_dir: False) -> p.Manifest:
    """The working files as a manifest. A file whose name the protocol forbids
    (a backslash, say) is an error here, before anything is sent."""
    manifest: p.Manifest = {}
    for rel in list_files(root, ignored):
        try:
            p.check_path(rel)
        except UnsafePath as error:
            raise MinigitError(
                f"cannot track {rel!r}: {error.message.split(': ', 1)[-1]}",
                hint="rename it, or list it in .minigitignore",
            ) from None
        manifest[rel] = hash_file(root / rel)
    return manifest


def file_source(root: Path, rel: str, entry: p.FileEntry) -> codec.BlobSource:
    """A working file to upload, read piece by piece when it is sent."""

    def read_pieces() -> Iterator[bytes]:
        with open(root / rel, "rb") as file:
            yield from codec.split_stream(file.read)

    return codec.BlobSource(entry.sha, entry.size, read_pieces)


# ---------------------------------------------------------------- writing files


def safe_target(root: Path, rel: str) -> Path:
    """The absolute path for ``rel``, refusing anything that would leave ``root``:
    a path the protocol forbids, or a parent directory that is a symlink."""
    p.check_path(rel)
    current = root
    for part in rel.split("/")[:-1]:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            raise UnsafePath(rel, f"{current.relative_to(root)} is a symbolic link")
        if not stat.S_ISDIR(mode):
            raise UnsafePath(rel, f"{current.relative_to(root)} is not a directory")
    return root / rel


def make_parents(root: Path, rel: str) -> None:
    current = root
    for part in rel.split("/")[:-1]:
        current = current / part
        with contextlib.suppress(FileExistsError):
            os.mkdir(current)
        if os.path.islink(current) or not current.is_dir():
            raise UnsafePath(rel, f"{current.relative_to(root)} is not a directory")


def remove_file(root: Path, rel: str) -> None:
    target = safe_target(root, rel)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)
    prune_empty_parents(root, rel)


def prune_empty_parents(root: Path, rel: str) -> None:
    parts = rel.split("/")[:-1]
    while parts:
        try:
            os.rmdir(root.joinpath(*parts))
        except OSError:
            return
        parts.pop()


def copy_local_blob(root: Path, source_rel: str, sha: str, out: IO[bytes]) -> None:
    """Copy a working file's content, checking it still is the content expected."""
    digest = hashlib.sha256()
    with open(safe_target(root, source_rel), "rb") as file:
        while block := file.read(READ_BLOCK):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != sha:
        raise MinigitError(f"{source_rel} changed while minigit was reading it", hint="run the command again")
