"""A working directory on disk: its ``.minigit`` file, its files, safe writes, its lock.

Parsing ``.minigit`` is kept apart from reading it, and every path is checked
with the protocol's rules before anything touches the disk.

A command killed at any instant leaves nothing the next one cannot use: every
temporary file of a working directory is made under its lock and removed by the
next holder of the lock; a clone into a new directory is built in a staging
directory beside it (alive while its creator holds an ``flock`` on it) and renamed
into place whole.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from minigit import codec
from minigit import protocol as p
from minigit.errors import CorruptMetadata, MinigitError, NoRepository, UnsafePath, UsageError, WorkdirBusy

METADATA_NAME = ".minigit"
LOCK_NAME = ".minigit.lock"
TEMP_MARK = ".minigit-tmp-"
CLONE_STAGING_MARK = ".minigit-clone-"
# The version in the .minigit of a clone into an existing directory that has not
# finished installing its files; its manifest is the version being installed.
UNFINISHED_VERSION = 0
METADATA_FORMAT = 1
READ_BLOCK = 1024 * 1024


REQUEST_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class PendingPush:
    """A push sent and not yet answered: recorded before it is sent, so that a
    command interrupted after its upload can ask the service what became of it."""

    request_id: str
    base: int
    tree: str
    manifest: p.Manifest

    def to_json(self) -> dict:
        return {
            "request_id": self.request_id,
            "base": self.base,
            "tree": self.tree,
            "manifest": p.manifest_to_json(self.manifest),
        }

    @classmethod
    def from_json(cls, doc: object) -> PendingPush:
        if not isinstance(doc, dict) or not isinstance(doc.get("base"), int) or isinstance(doc.get("base"), bool):
            raise ValueError("bad pending push")
        request_id = doc["request_id"]
        if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
            raise ValueError("bad pending push id")
        return cls(request_id, doc["base"], p.check_sha(doc["tree"]), p.manifest_from_json(doc["manifest"]))


class ConflictKind(enum.StrEnum):
    """How a conflict a pull left is marked, and so how it is resolved."""

    MARKERS = "markers"  # <<<<<<< markers in the file: resolved once none remain
    THEIRS = "theirs"  # upstream's version is beside yours as PATH.theirs: resolved once it is gone


@dataclass(frozen=True)
class Metadata:
    """What ``.minigit`` holds: which repository, which version, where the server
    is, and the manifest of that version (what the files were when last synced);
    whether it is a read-only view of an older version (``detached``), a push
    whose answer never came (``pending``), and the conflicts a pull left."""

    repository: str
    version: int
    bootstrap: str
    namespace: str
    manifest: p.Manifest
    detached: bool = False
    pending: PendingPush | None = None
    conflicts: dict[str, ConflictKind] = field(default_factory=dict)

    @property
    def unfinished(self) -> bool:
        return self.version == UNFINISHED_VERSION


def format_metadata(meta: Metadata) -> str:
    doc = {
        "format": METADATA_FORMAT,
        "repository": meta.repository,
        "version": meta.version,
        "server": {"bootstrap": meta.bootstrap, "namespace": meta.namespace},
        "manifest": p.manifest_to_json(meta.manifest),
    }
    if meta.detached:
        doc["detached"] = True
    if meta.pending is not None:
        doc["pending"] = meta.pending.to_json()
    if meta.conflicts:
        doc["conflicts"] = {path: str(kind) for path, kind in sorted(meta.conflicts.items())}
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def parse_metadata(text: str, where: str = METADATA_NAME) -> Metadata:
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("format") != METADATA_FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        version, server = doc["version"], doc["server"]
        if not isinstance(version, int) or isinstance(version, bool) or version < UNFINISHED_VERSION:
            raise ValueError("version must be a non-negative integer")
        bootstrap, namespace = server["bootstrap"], server["namespace"]
        if not isinstance(bootstrap, str) or not bootstrap or not isinstance(namespace, str):
            raise ValueError("bad server address")
        detached, conflicts = doc.get("detached", False), doc.get("conflicts", {})
        if not isinstance(detached, bool) or not isinstance(conflicts, dict):
            raise ValueError("bad detached or conflicts")
        return Metadata(
            repository=p.check_name("repository", doc["repository"]),
            version=version,
            bootstrap=bootstrap,
            namespace=namespace,
            manifest=check_no_clash(p.manifest_from_json(doc["manifest"])),
            detached=detached,
            pending=PendingPush.from_json(doc["pending"]) if doc.get("pending") is not None else None,
            conflicts={p.check_path(path): ConflictKind(kind) for path, kind in conflicts.items()},
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
    when the process dies, so a crash never leaves a stale lock behind. Temporary
    files are only made under the lock, so the ones found on taking it were left
    by a command that died: they are removed."""
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirBusy(str(root)) from None
            raise
        remove_leftovers(root)
        yield
    finally:
        os.close(fd)


def tidy_unless_busy(root: Path) -> bool:
    """Remove what dead commands left in ``root``, unless a command is running
    there (then True) or the lock cannot be taken (a directory the user may only read)."""
    try:
        with lock_workdir(root):
            return False
    except WorkdirBusy:
        return True
    except OSError:
        return False


def is_leftover(name: str) -> bool:
    """A temporary file or folder of a minigit command (``.minigit-tmp-*``,
    ``.minigit.minigit-tmp-*``): only ever made under the working directory's lock."""
    return name.startswith(TEMP_MARK) or name.startswith(METADATA_NAME + TEMP_MARK)


def remove_leftovers(root: Path) -> None:
    """Call with the lock held: no one else may be using them."""
    with os.scandir(root) as entries:
        for entry in entries:
            if is_leftover(entry.name):
                remove_tree(Path(entry.path))


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def is_vacant(directory: Path) -> bool:
    """Empty, or holding only what minigit commands leave (the lock, temporary files)."""
    with os.scandir(directory) as entries:
        return all(entry.name == LOCK_NAME or is_leftover(entry.name) for entry in entries)


# ---------------------------------------------------------------- staging a clone


@contextlib.contextmanager
def clone_staging(parent: Path) -> Iterator[Path]:
    """A new hidden directory in ``parent`` to build a clone in, held alive by an
    ``flock`` on it until the block ends; removed then, unless it was renamed away.
    Dead ones (nobody holds their lock) are removed first."""
    remove_dead_clone_stagings(parent)
    while True:
        staging = parent / f"{CLONE_STAGING_MARK}{secrets.token_hex(6)}"
        staging.mkdir()
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        # A cleaner may have judged it dead between mkdir and flock: wait for its
        # removal (it holds the lock meanwhile), then make another.
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(staging))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(fd)


def remove_dead_clone_stagings(parent: Path) -> None:
    """Remove the clone staging directories in ``parent`` whose clone died."""
    try:
        entries = [Path(entry.path) for entry in os.scandir(parent) if entry.name.startswith(CLONE_STAGING_MARK)]
    except OSError:
        return
    for staging in entries:
        try:
            fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone, or not a directory: not one of ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its clone is running
        try:
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            os.close(fd)


def install_clone(staging: Path, directory: Path) -> None:
    """Rename a finished staging directory to ``directory``, which must not exist
    (or be an empty directory, which the rename replaces)."""
    try:
        os.rename(staging, directory)
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise UsageError(f"destination path '{directory}' already exists and is not an empty directory") from None
        raise


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


def safe_target(root: Path, rel: str, removed: Collection[str] = frozenset()) -> Path:
    """The absolute path for ``rel``, refusing anything that would leave ``root``:
    a path the protocol forbids, or a parent directory that is a symlink. A parent
    that is one of the files in ``removed`` (deleted before ``rel`` is written) is
    no obstacle: what is below it is made new."""
    p.check_path(rel)
    current = root
    for part in rel.split("/")[:-1]:
        current = current / part
        if current.relative_to(root).as_posix() in removed:
            break
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
