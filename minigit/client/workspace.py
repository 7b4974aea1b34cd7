"""A working directory on disk: its ``.minigit`` file, its files, safe writes, its lock.

Parsing ``.minigit`` is kept apart from reading it, and every path is checked
with the protocol's rules before anything touches the disk.

A command killed at any instant leaves nothing the next one cannot use: the lock
is an ``flock`` on the working directory itself (no file is made for it, and the
OS drops it when the process dies); every temporary file of a working directory
is made under its lock and removed by the next holder of the lock; a clone into
a new directory is built in a staging directory beside it (alive while its
creator holds an ``flock`` on it) and renamed into place whole.

What is tracked (``scan_workdir``): regular files, with their owner's executable
bit, and symbolic links as links (their content is their target; never followed).
``.git`` folders and minigit's own files are never tracked; ignored files are not,
unless tracked already; anything else that cannot be tracked is reported, with why.
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
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from minigit import codec
from minigit import protocol as p
from minigit.client import index
from minigit.client.ignore import IGNORE_NAME, NO_IGNORES, Ignores, read_ignore_file
from minigit.errors import CorruptMetadata, MinigitError, NoRepository, UnsafePath, UsageError, WorkdirBusy

METADATA_NAME = ".minigit"
INDEX_NAME = index.INDEX_NAME
OLD_LOCK_NAME = ".minigit.lock"  # the lock file of earlier versions: removed as a leftover
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
    """One minigit command at a time per working directory: an ``flock`` on the
    directory itself, so no file is made for it. The OS drops the lock when the
    process dies, so a crash never leaves a stale lock behind. Temporary files are
    only made under the lock, so the ones found on taking it were left by a
    command that died: they are removed."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
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


@contextlib.contextmanager
def lock_unless_busy(root: Path) -> Iterator[bool]:
    """The lock for the block (True), unless a command is running in ``root``
    (False: the block runs without it, and nothing is tidied)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(lock_workdir(root))
        except WorkdirBusy:
            held = False
        else:
            held = True
        yield held


def tidy_unless_busy(root: Path) -> bool:
    """Remove what dead commands left in ``root``, unless a command is running
    there (then True) or the directory cannot be locked (one the user may not read)."""
    try:
        with lock_unless_busy(root) as held:
            return not held
    except OSError:
        return False


def is_leftover(name: str) -> bool:
    """A temporary file or folder of a minigit command (``.minigit-tmp-*``,
    ``.minigit.minigit-tmp-*``): only ever made under the working directory's lock."""
    return name.startswith(TEMP_MARK) or name.startswith(METADATA_NAME + TEMP_MARK)


def is_own_name(name: str, top: bool) -> bool:
    """minigit's own files, neither tracked nor reported: clone stagings anywhere,
    and at the top of a working directory ``.minigit``, the stat cache, temporary
    files and the lock file of older versions."""
    if name.startswith(CLONE_STAGING_MARK):
        return True
    return top and (name in (METADATA_NAME, INDEX_NAME, OLD_LOCK_NAME) or is_leftover(name))


def remove_leftovers(root: Path) -> None:
    """Call with the lock held: no one else may be using them. Also the lock file
    of older versions, and a stat cache left where there is no ``.minigit`` (a
    working directory's that was removed). Best effort: what cannot be removed
    (a directory the user may only read) stays."""
    with os.scandir(root) as entries:
        names = {entry.name: entry.path for entry in entries}
    for name, path in names.items():
        stale_index = name == INDEX_NAME and METADATA_NAME not in names
        if is_leftover(name) or name == OLD_LOCK_NAME or stale_index:
            with contextlib.suppress(OSError):
                remove_tree(Path(path))


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def is_vacant(directory: Path) -> bool:
    """Empty, or holding only what minigit commands leave (temporary files, the
    lock file of older versions, a stat cache without its ``.minigit``)."""
    with os.scandir(directory) as entries:
        return all(entry.name in (OLD_LOCK_NAME, INDEX_NAME) or is_leftover(entry.name) for entry in entries)


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

GIT_DIR_NAME = ".git"  # never tracked, at any depth, as git never tracks it
# The longest target of a symbolic link (Linux's PATH_MAX, less the NUL): a longer one is no link's.
MAX_LINK_TARGET = 4095

# Why a file cannot be tracked, as status and push report it.
RESERVED = "its name is reserved for minigit's own files"
LINK_ABSOLUTE = "a symbolic link to an absolute path"
LINK_OUTSIDE = "a symbolic link that leads outside the working directory"
LINK_THROUGH_LINK = "a symbolic link whose target goes up out of another link"
REGULAR, EXECUTABLE, SYMLINK = p.FileMode.REGULAR, p.FileMode.EXECUTABLE, p.FileMode.SYMLINK
# A regular file holding a tracked link's target is that link (see stage_blob).
LINK_AS_FILE = {REGULAR: SYMLINK, EXECUTABLE: None}
SPECIAL_KINDS = {
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
}


@dataclass(frozen=True)
class Scan:
    """A working directory's files as a manifest, beside the files that cannot be
    tracked, each with why (by path; a folder's path ends with '/')."""

    manifest: p.Manifest
    untrackable: list[tuple[str, str]] = field(default_factory=list)
    # for save_index: the stat and sha of each regular file, and the filesystem's
    # clock when the scan began (None: not to be saved); refreshed: worth saving
    records: dict[str, index.Record] = field(default_factory=dict, repr=False)
    clock_ns: int | None = field(default=None, repr=False)
    refreshed: bool = field(default=False, repr=False)


def scan_workdir(root: Path, tracked: Mapping[str, p.FileEntry], *, locked: bool = True) -> Scan:
    """The files of the working directory ``root``. A file whose stat is the one
    in the stat cache is not read again.

    ``tracked`` (the manifest the working directory is based on) stays tracked
    where a ``.minigitignore`` now ignores it, as in git. ``locked``: the caller
    holds the lock, so the scan may be saved as the stat cache (``save_index``)."""
    cache = index.load_index(root / INDEX_NAME)
    clock = filesystem_clock(root) if locked else None
    walk = Walk(root, tracked, cache)
    walk.folder(str(root), "", NO_IGNORES, only_tracked=False)
    refreshed = walk.hashed > 0 or len(walk.records) != len(cache.records)
    return Scan(walk.manifest, sorted(walk.untrackable), walk.records, clock, refreshed)


class Walk:
    """One scan's way down a working directory (``scan_workdir``)."""

    def __init__(self, root: Path, tracked: Mapping[str, p.FileEntry], cache: index.StatCache) -> None:
        self.root, self.tracked, self.cache = str(root), tracked, cache
        self.tracked_folders = folders_of(tracked)
        self.manifest: p.Manifest = {}
        self.untrackable: list[tuple[str, str]] = []
        self.records: dict[str, index.Record] = {}
        self.hashed = 0

    def folder(self, path: str, prefix: str, ignores: Ignores, only_tracked: bool) -> None:
        """The folder ``prefix`` ("" or ending in '/') at ``path``. ``only_tracked``:
        it is ignored, and holds tracked files: only they are looked at."""
        with os.scandir(path) as listing:
            entries = list(listing)
        for entry in entries:
            # a nested working directory's files belong to its own repository
            if entry.name == METADATA_NAME and prefix and entry.is_file(follow_symlinks=False):
                return
            if entry.name == IGNORE_NAME and not only_tracked:
                ignores = ignores.below(prefix, read_ignore_file(Path(entry.path)) or "")
        for entry in entries:
            name = entry.name
            problem = None
            if name[0] == ".":
                if name == GIT_DIR_NAME or is_own_name(name, not prefix):
                    continue
                if p.is_reserved_name(name):
                    problem = RESERVED
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue  # gone since listed
            if is_dir:
                self.subfolder(entry, prefix + name, problem, ignores, only_tracked)
            else:
                self.file(entry, prefix + name, problem, ignores, only_tracked)

    def subfolder(
        self, entry: os.DirEntry, rel: str, problem: str | None, ignores: Ignores, only_tracked: bool
    ) -> None:
        ignored = only_tracked or (bool(ignores) and ignores.ignored(rel, True))
        if ignored and rel not in self.tracked_folders:
            return
        if not ignored and (problem := problem or name_problem(entry.name, rel)):
            self.untrackable.append((rel + "/", problem))
            return
        self.folder(entry.path, rel + "/", ignores, ignored)

    def file(self, entry: os.DirEntry, rel: str, problem: str | None, ignores: Ignores, only_tracked: bool) -> None:
        before = self.tracked.get(rel)
        if before is None:
            if only_tracked or (ignores and ignores.ignored(rel, False)):
                return
            problem = problem or name_problem(entry.name, rel)
        try:
            st = entry.stat(follow_symlinks=False)
            if problem is None and stat.S_ISREG(st.st_mode):
                self.manifest[rel] = self.regular_file(entry.path, rel, st, before)
                return
            if problem is None and stat.S_ISLNK(st.st_mode):
                target = os.readlink(os.fsencode(entry.path))
                problem = link_target_problem(rel, target, self.is_link)
                if problem is None:
                    sha = hashlib.sha256(target).hexdigest()
                    self.manifest[rel] = p.FileEntry(sha, len(target), SYMLINK)
                    return
        except FileNotFoundError:
            return  # gone since listed
        kind = SPECIAL_KINDS.get(stat.S_IFMT(st.st_mode), "a special file")
        self.untrackable.append((rel, problem or f"{kind}: only files and symbolic links are tracked"))

    def regular_file(self, path: str, rel: str, st: os.stat_result, before: p.FileEntry | None) -> p.FileEntry:
        """``before``: its entry in the tracked manifest, if it has one."""
        key = index.stat_key(st)
        record = self.cache.lookup(rel, key)
        if record is not None:
            sha, size = record[5].hex(), st.st_size
            self.records[rel] = record
        else:
            found = hash_file(Path(path))
            sha, size = found.sha, found.size
            self.hashed += 1
            if size == st.st_size:  # else it changed while it was read: not to be remembered
                self.records[rel] = (*key, bytes.fromhex(sha))
        mode = EXECUTABLE if st.st_mode & stat.S_IXUSR else REGULAR
        unchanged = before is not None and before.sha == sha and before.size == size
        if unchanged and before.mode in (mode, LINK_AS_FILE[mode]):
            return before  # or a tracked link written as a file, where links cannot be made (stage_blob)
        return p.FileEntry(sha, size, mode)

    def is_link(self, rel: str) -> bool:
        return os.path.islink(os.path.join(self.root, rel))


def folders_of(paths: Collection[str]) -> set[str]:
    """Every folder above the paths ('a' and 'a/b' for 'a/b/c')."""
    folders = set()
    for path in paths:
        end = path.rfind("/")
        while end > 0 and path[:end] not in folders:
            folders.add(path[:end])
            end = path.rfind("/", 0, end)
    return folders


def name_problem(name: str, rel: str) -> str | None:
    """Why a tree may not hold ``rel``, or None. Its folders were checked on the
    way down: only its last part ``name``, and its length, are left to check."""
    short = len(name) <= p.MAX_PATH_PART_LENGTH and len(rel) * 4 <= p.MAX_PATH_LENGTH  # 4: UTF-8's longest
    if short and name.isascii() and "\\" not in name:
        return RESERVED if p.is_reserved_name(name) else None  # the usual case, without the full check
    if p.is_reserved_name(name):
        return RESERVED
    try:
        p.check_path(rel)
    except UnsafePath as error:
        return f"the protocol does not allow it ({error.message.rsplit(': ', 1)[-1]})"
    return None


def link_target_problem(rel: str, target: bytes, is_link: Callable[[str], bool]) -> str | None:
    """Why a working directory may not hold a symbolic link at ``rel`` to ``target``,
    or None: its target must be relative and stay inside, resolved lexically from
    the link's folder. A '..' below a folder that is a link, or that lies under one
    (``is_link`` of any of its parents), does not go where the words say (``b/c/..``
    leaves the working directory if ``b`` leads to a folder whose ``c`` is ``..``):
    refused, so that links chained through others, each inside on its own, cannot
    lead out. Down through a link is fine: that link's own target is checked."""
    if not target:
        return "a symbolic link with an empty target"
    if len(target) > MAX_LINK_TARGET or b"\0" in target:
        return "a symbolic link with a target no system can hold"
    if target.startswith(b"/"):
        return LINK_ABSOLUTE
    folder = rel.split("/")[:-1]
    for part in target.split(b"/"):
        if part in (b"", b"."):
            continue
        if part != b"..":
            folder.append(os.fsdecode(part))
        elif not folder:
            return LINK_OUTSIDE
        elif any(is_link("/".join(folder[:depth])) for depth in range(1, len(folder) + 1)):
            return LINK_THROUGH_LINK
        else:
            folder.pop()
    return None


def hash_file(path: Path) -> p.FileEntry:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as file:
        while block := file.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
    return p.FileEntry(digest.hexdigest(), size)


def still_as_scanned(root: Path, rel: str, entry: p.FileEntry) -> bool:
    """Whether the file at ``rel`` still is ``entry`` (content and mode): checked
    again just before a command replaces or deletes it, so that an edit made while
    the command ran is never overwritten."""
    path = root / rel
    try:
        mode = os.lstat(path).st_mode
        if entry.mode == p.FileMode.SYMLINK:
            return stat.S_ISLNK(mode) and hashlib.sha256(os.readlink(os.fsencode(path))).hexdigest() == entry.sha
        executable = bool(mode & stat.S_IXUSR)
        if not stat.S_ISREG(mode) or executable != (entry.mode == p.FileMode.EXECUTABLE):
            return False
        return hash_file(path).sha == entry.sha
    except OSError:
        return False


def filesystem_clock(root: Path) -> int | None:
    """The time on the clock of ``root``'s filesystem (a new file's mtime), to
    tell which files changed since (racy git, see index.py); None if nothing can
    be made there. Call with the lock held: it makes a temporary file."""
    probe = root / f"{TEMP_MARK}{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return None
    try:
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def save_index(root: Path, scan: Scan) -> None:
    """Keep ``scan``'s stats as the stat cache of ``root``, if it is worth it and
    the scan was made under the lock. A cache that cannot be written (a directory
    the user may only read) is no error: the next scan hashes again."""
    if scan.clock_ns is None or not scan.refreshed:
        return
    temp = root / f"{TEMP_MARK}{secrets.token_hex(4)}"
    with contextlib.suppress(OSError):
        index.write_index(root / INDEX_NAME, temp, index.settled(scan.records, scan.clock_ns))


def save_index_of_clone(staging: Path, manifest: p.Manifest) -> None:
    """The stat cache of a clone just written in its staging directory (``clone_staging``:
    hidden, locked, nobody else's to write in), so that its first status hashes
    nothing, as git's checkout fills its index: each regular file's stat now, with
    the sha its content was checked against as it arrived. The racy-git guards of a
    scan hold: the clock is read after the last file was written, and a file whose
    mtime is not older is left out (hashed by the next scan)."""
    clock = filesystem_clock(staging)
    if clock is None:
        return
    base = os.fspath(staging)
    records: dict[str, index.Record] = {}
    for rel, entry in manifest.items():
        try:
            st = os.lstat(os.path.join(base, rel))
        except OSError:
            continue
        # (a link written as a file where links cannot be made holds its target: its sha too)
        if stat.S_ISREG(st.st_mode) and st.st_size == entry.size:
            records[rel] = (*index.stat_key(st), bytes.fromhex(entry.sha))
    temp = staging / f"{TEMP_MARK}{secrets.token_hex(4)}"
    with contextlib.suppress(OSError):
        index.write_index(staging / INDEX_NAME, temp, index.settled(records, clock))


def scan_worktree(root: Path) -> p.Manifest:
    """The working files as a manifest, nothing tracked before, no stat cache (for
    tests and tools)."""
    return scan_workdir(root, {}, locked=False).manifest


def list_files(root: Path) -> list[str]:
    """The paths ``scan_worktree`` tracks, sorted."""
    return sorted(scan_worktree(root))


def file_source(root: Path, rel: str, entry: p.FileEntry) -> codec.BlobSource:
    """A working file to upload, read piece by piece when it is sent; a link's
    content is its target."""

    def read_pieces() -> Iterator[bytes]:
        if entry.mode == SYMLINK:
            yield from codec.split_bytes(os.readlink(os.fsencode(root / rel)))
            return
        with open(root / rel, "rb") as file:
            yield from codec.split_stream(file.read)

    return codec.BlobSource(entry.sha, entry.size, read_pieces)


# ---------------------------------------------------------------- writing files


# Folders a pass found sound (real folders inside the working directory), each with the
# (st_dev, st_ino) it had then: what a later call of the pass checks again in one lstat.
SoundFolders = dict[str, tuple[int, int]]


def safe_target(
    root: Path, rel: str, removed: Collection[str] = frozenset(), folders: SoundFolders | None = None
) -> Path:
    """The absolute path for ``rel``, refusing anything that would leave ``root``:
    a path the protocol forbids, or a parent directory that is a symlink. A parent
    that is one of the files in ``removed`` (deleted before ``rel`` is written) is
    no obstacle: what is below it is made new. ``folders``: parents found to be
    real folders by earlier calls of the same pass, not looked at again (a pass
    over 10,000 files in 100 folders looks at each folder once), and added to."""
    p.check_path(rel)
    base = os.fspath(root)
    for parent in parents_of(rel):  # (strings, not Paths: this runs for every file a pull writes)
        if parent in removed:
            break
        if folders is not None and parent in folders:
            continue
        try:
            st = os.lstat(os.path.join(base, parent))
            mode = st.st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            raise UnsafePath(rel, f"{parent} is a symbolic link")
        if not stat.S_ISDIR(mode):
            raise UnsafePath(rel, f"{parent} is not a directory")
        if folders is not None:
            folders[parent] = (st.st_dev, st.st_ino)
    return root / rel


def parents_of(rel: str) -> Iterator[str]:
    """``a``, ``a/b`` for ``a/b/c``: the folders ``rel`` is in, from the top."""
    end = rel.find("/")
    while end != -1:
        yield rel[:end]
        end = rel.find("/", end + 1)


def make_parents(root: Path, rel: str, folders: SoundFolders | None = None) -> None:
    """Make the folders ``rel`` is in. ``folders``: those made or found by earlier
    calls of the same pass (nothing of the pass removes a folder), skipped."""
    base = os.fspath(root)
    for parent in parents_of(rel):
        if folders is not None and parent in folders:
            continue
        current = os.path.join(base, parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(current)
        try:
            st: os.stat_result | None = os.lstat(current)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):  # (a link to a folder is not one)
            raise UnsafePath(rel, f"{parent} is not a directory")
        if folders is not None:
            folders[parent] = (st.st_dev, st.st_ino)


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
    """Copy a working file's content (a link's: its target), checking it still
    is the content expected."""
    digest = hashlib.sha256()
    source = safe_target(root, source_rel)
    if os.path.islink(source):
        target = os.readlink(os.fsencode(source))
        digest.update(target)
        out.write(target)
    else:
        with open(source, "rb") as file:
            while block := file.read(READ_BLOCK):
                digest.update(block)
                out.write(block)
    if digest.hexdigest() != sha:
        raise MinigitError(f"{source_rel} changed while minigit was reading it", hint="run the command again")


# What os.symlink raises where links cannot be made (a FAT or exFAT filesystem, say).
NO_SYMLINKS = (errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP)


def stage_blob(
    staged: Path,
    rel: str,
    entry: p.FileEntry,
    fill: Callable[[IO[bytes]], object] | bytes,
    is_link: Callable[[str], bool] = lambda rel: False,
) -> Path:
    """Make, at ``staged`` (a new name in a staging area of the working
    directory), what ``entry`` is to become at ``rel``, its content written by
    ``fill`` (or ``fill`` itself, bytes); return where it is (``install_staged``
    puts it in place).

    A regular file gets the permissions the umask leaves of 0o666, an executable
    one of 0o777. A link's content is its target: it is checked first
    (``link_target_problem``; ``is_link`` tells which paths of the working
    directory will be links), UnsafePath if it would lead outside. Where links
    cannot be made (``os.symlink`` fails as unsupported), the link is written as
    a regular file holding its target, as git does with ``core.symlinks=false``;
    the scan takes such a file, while its content is that target, for the link."""
    if entry.mode == SYMLINK and entry.size > MAX_LINK_TARGET:
        raise UnsafePath(rel, "a symbolic link with a target no system can hold")
    permissions = 0o777 if entry.mode == EXECUTABLE else 0o666
    with open(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, permissions), "wb") as out:
        if isinstance(fill, bytes):
            out.write(fill)
        else:
            fill(out)
    if entry.mode != SYMLINK:
        return staged
    target = staged.read_bytes()
    if problem := link_target_problem(rel, target, is_link):
        raise UnsafePath(rel, problem)
    link = staged.with_name(staged.name + "-link")
    try:
        os.symlink(target, link)
    except NotImplementedError:
        return staged
    except OSError as error:
        if error.errno in NO_SYMLINKS:
            return staged
        raise
    staged.unlink()
    return link


def links_after(root: Path, final: Mapping[str, p.FileEntry]) -> Callable[[str], bool]:
    """Which paths will be symbolic links once the files ``final`` are installed:
    theirs, and the links on disk that they do not name (ignored ones), for
    ``stage_blob``."""
    links = {path for path, entry in final.items() if entry.mode == SYMLINK}
    return lambda rel: rel in links or (rel not in final and os.path.islink(root / rel))


def still_sound(root: Path, rel: str, folders: SoundFolders) -> bool:
    """Whether the deepest folder of ``rel`` that ``folders`` holds is still the folder
    found sound: one lstat, through every folder above it, so that a folder swapped
    since for a link (to a folder elsewhere) is noticed, wherever it is above ``rel``."""
    deepest = next((parent for parent in reversed(list(parents_of(rel))) if parent in folders), None)
    if deepest is None:
        return True
    try:
        st = os.lstat(os.path.join(os.fspath(root), deepest))
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == folders[deepest]


def install_staged(root: Path, rel: str, staged: Path, folders: SoundFolders | None = None) -> None:
    """Put what ``stage_blob`` made in place at ``rel``, replacing what is there
    (a file, a link, or a folder the caller checked is empty of files).
    ``folders``: as ``make_parents``'s, for a pass that installs many files."""
    if folders and not still_sound(root, rel, folders):
        folders.clear()  # changed under the pass (a folder swapped for a link?): look at every one again
    make_parents(root, rel, folders)
    destination = safe_target(root, rel, folders=folders)
    try:
        is_folder = stat.S_ISDIR(os.lstat(destination).st_mode)  # (a link to a folder is not one)
    except FileNotFoundError:
        is_folder = False
    if is_folder:
        shutil.rmtree(destination)
    os.replace(staged, destination)
