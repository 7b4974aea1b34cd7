"""The client's commands as functions: init, clone, pull, push, status, log.

The CLI calls these and prints their results; they raise MinigitError and never
print. Layers go one way: cli -> operations -> workspace / transport.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from minigit import codec, identity
from minigit import protocol as p
from minigit.client import keys, known_servers
from minigit.client import workspace as ws
from minigit.client.changes import Changes, diff_manifests, plan_pull
from minigit.client.exchange import Connector, Credentials, Link, Observer, Response
from minigit.client.transport import Connection
from minigit.config import KafkaSettings, ServerFlags, user_config_dir
from minigit.console import shown
from minigit.errors import (
    CloneUnfinished,
    CorruptMetadata,
    MinigitError,
    NoRepository,
    NotAuthenticated,
    PermissionDenied,
    ProtocolError,
    PullConflict,
    PushRejected,
    RepositoryExists,
    RepositoryNotFound,
    UsageError,
    WorkdirBusy,
)
from minigit.protocol import Status

# A client that lost more base objects than this locally asks for a full copy.
MAX_LOST_OBJECTS = p.MAX_LOST


@dataclass(frozen=True)
class ClientOptions:
    """What a command was told: who the user is, where the service is (resolved
    against ``.minigit`` once per command), how long to wait, and how to connect."""

    user: str
    flags: ServerFlags = field(default_factory=ServerFlags)
    timeout: float = 30.0
    connector: Connector = Connection
    config_dir: Path | None = None  # keys and known_servers (default: minigit.config.user_config_dir())

    def settings(self, meta: ws.Metadata | None = None, root: Path | None = None) -> KafkaSettings:
        """Where the service is; ``meta`` is the ``.minigit`` of the working directory ``root``."""
        if meta is None:
            return self.flags.resolve()
        where = str(root / ws.METADATA_NAME) if root else ws.METADATA_NAME
        return self.flags.resolve((meta.bootstrap, meta.namespace), where)

    def connect(self, settings: KafkaSettings) -> Link:
        return self.connector(settings, self.credentials(settings), self.timeout)

    def credentials(self, settings: KafkaSettings) -> Credentials:
        """The user's key (created on first use) and the service's pinned key."""
        config_dir = self.config_dir or user_config_dir()
        key, _ = keys.load_or_create_key(config_dir, p.check_name("user", self.user))
        trust = functools.partial(known_servers.check_server_key, config_dir, settings.bootstrap, settings.namespace)
        return Credentials(self.user, key, trust)


class PullStatus(enum.StrEnum):
    CLONED = "cloned"
    UPDATED = "updated"
    UP_TO_DATE = "up-to-date"


class PushStatus(enum.StrEnum):
    CREATED = "created"
    ACCEPTED = "accepted"
    UP_TO_DATE = "up-to-date"


@dataclass(frozen=True)
class PullResult:
    repository: str
    directory: str
    status: PullStatus
    old_version: int
    new_version: int
    changes: Changes
    kept_local: list[str]
    bytes_received: int

    def to_json(self) -> dict:
        return {
            "repository": self.repository,
            "directory": self.directory,
            "status": self.status,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "changes": self.changes.to_json(),
            "kept_local": self.kept_local,
            "bytes_received": self.bytes_received,
        }


@dataclass(frozen=True)
class PushResult:
    repository: str
    server: str
    status: PushStatus
    old_version: int
    new_version: int
    changes: Changes
    bytes_sent: int
    untrackable: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of files not sent

    def to_json(self) -> dict:
        return {
            "repository": self.repository,
            "server": self.server,
            "status": self.status,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "changes": self.changes.to_json(),
            "bytes_sent": self.bytes_sent,
            "untrackable": untrackable_json(self.untrackable),
        }


@dataclass(frozen=True)
class StatusResult:
    repository: str
    version: int
    server: str
    changes: Changes
    untrackable: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of files that cannot be tracked

    def to_json(self) -> dict:
        return {
            "repository": self.repository,
            "version": self.version,
            "server": self.server,
            "changes": self.changes.to_json(),
            "untrackable": untrackable_json(self.untrackable),
        }


def untrackable_json(untrackable: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"path": path, "reason": reason} for path, reason in untrackable]


# ---------------------------------------------------------------- answers


def ask(
    connection: Link, request: p.Request, uploads: Sequence[codec.BlobSource] = (), observer: Observer | None = None
) -> Response:
    """Send ``request`` and return its answer, checked (``check_answer``). A user
    the service does not know yet registers its key (where registration is open)
    and asks again; a refusal raises (exit code 6)."""
    response = connection.call(request, uploads, observer)
    if response.reply.status == Status.UNKNOWN_USER and not isinstance(request, p.RegisterRequest):
        register_user(connection)
        # The same request, same id: a copy of it still on its way (a hedge), applied once the
        # user is registered, and this sending are one request, with one outcome. A late
        # "unknown user" answer to an earlier sending may still come first: ask again.
        for _ in range(UNKNOWN_USER_RETRIES):
            response.close()
            response = connection.call(request, uploads, observer)
            if response.reply.status != Status.UNKNOWN_USER:
                break
    try:
        check_answer(request, response)
        raise_refusal(response.reply)
    except MinigitError:
        response.close()
        raise
    return response


# How often a request is sent again after its user registered, while answers to its
# sendings from before still say "unknown user".
UNKNOWN_USER_RETRIES = 3


def register_user(connection: Link) -> p.Reply:
    """Register the user's key under its name (first come claims a name)."""
    user = connection.credentials.user
    request = connection.new_request(p.RegisterRequest, repo=user, public_key=connection.credentials.public_key)
    reply = ask(connection, request).reply
    if reply.status not in (Status.ACCEPTED, Status.UP_TO_DATE):
        raise PermissionDenied(f"cannot register {user}: {said(reply)}", hint=REGISTER_HINT)
    return reply


REGISTER_HINT = "choose another name with --user, or ask an operator ('minigit-server users add')"


def raise_refusal(reply: p.Reply) -> None:
    """The service's refusals, as errors: the reply says why, and what to do."""
    if reply.status == Status.DENIED:
        raise PermissionDenied(said(reply))
    if reply.status in (Status.UNAUTHENTICATED, Status.UNKNOWN_USER):
        raise NotAuthenticated(said(reply))


def check_answer(request: p.Request, response: Response) -> None:
    """What the commands rely on in an answer, by action and status, beyond the
    wire schema (which the ReplyCollector checked). An answer that breaks it is
    malformed (ProtocolError, exit 1), and the command writes nothing.

    * pull ``ok``: ``version`` >= 1 and above the version asked from, and its
      ``tree``, among the blobs that came with it (decoded by the collector:
      ``response.manifest``);
    * push ``accepted``: ``version`` = ``base`` + 1; init ``accepted``: ``version`` 1;
    * push ``rejected``: the server's ``head``.
    """
    reply = response.reply
    problem = None
    if isinstance(request, p.PullRequest) and reply.status == Status.OK:
        if reply.version is None or reply.version < 1 or reply.version <= request.version:
            problem = f"pull from version {request.version} answered ok at version {reply.version}"
        elif reply.tree is None or reply.tree not in response.blobs or response.manifest is None:
            problem = f"pull answered ok at version {reply.version} without its tree"
    elif isinstance(request, p.InitRequest | p.PushRequest) and reply.status == Status.ACCEPTED:
        expected = request.base + 1 if isinstance(request, p.PushRequest) else 1
        if reply.version != expected:
            problem = f"{request.action} accepted as version {reply.version}, not {expected}"
    elif isinstance(request, p.PushRequest) and reply.status == Status.REJECTED and reply.head is None:
        problem = "push rejected without the server's head"
    if problem is not None:
        raise ProtocolError(f"the service sent a malformed answer: {problem}")


def said(reply: p.Reply) -> str:
    """What the service said in ``reply``, for an error message: on one line, its
    control characters (line breaks too) escaped, so it cannot add lines of its
    own (a forged "hint:") to what the command prints."""
    return shown(reply.message or reply.status)


# ---------------------------------------------------------------- writes


def collect_uploads(root: Path, manifest: p.Manifest, known: p.Manifest) -> tuple[bytes, list[codec.BlobSource]]:
    """The tree of ``manifest`` and the blobs the server may lack: the tree, and
    every content that was not in the version the client is based on."""
    tree = p.encode_tree(manifest)
    uploads, seen = [codec.BlobSource.from_bytes(tree)], {entry.sha for entry in known.values()}
    for path, entry in sorted(manifest.items()):
        if entry.sha not in seen:
            seen.add(entry.sha)
            uploads.append(ws.file_source(root, path, entry))
    return tree, uploads


def init_repository(
    directory: Path,
    name: str,
    options: ClientOptions,
    message: str = "",
    observer: Observer | None = None,
    visibility: p.Visibility = p.Visibility.PRIVATE,
) -> PushResult:
    """Create repository ``name`` from the files in ``directory`` (version 1)."""
    p.check_name("repository", name)
    directory = directory.resolve()
    if (directory / ws.METADATA_NAME).exists():
        raise UsageError(f"{directory} is already a minigit working directory")
    with ws.lock_workdir(directory):
        scan = ws.scan_workdir(directory, {})
        manifest = scan.manifest
        tree, uploads = collect_uploads(directory, manifest, {})
        settings = options.settings()
        fields = {
            "repo": name,
            "tree": p.hash_bytes(tree),
            "message": message or "initial version",
            "visibility": visibility,
        }
        with options.connect(settings) as connection:
            reply = send_write(connection, p.InitRequest, fields, uploads, observer)
        if reply.status == Status.EXISTS:
            raise RepositoryExists(name)
        expect_write_accepted(name, "init", reply)
        ws.write_metadata(directory, ws.Metadata(name, 1, settings.bootstrap, settings.namespace, manifest))
        ws.save_index(directory, scan)  # only now: a failed init leaves nothing
        sent = sum(u.size for u in uploads)
        created = Changes(added=sorted(manifest))
        return PushResult(
            name, settings.bootstrap, PushStatus.CREATED, 0, 1, created, sent, untrackable=scan.untrackable
        )


def push_workdir(
    start: Path, options: ClientOptions, message: str = "", observer: Observer | None = None
) -> PushResult:
    """Send the local changes as the next version, if the server is still at ours."""
    root = ws.require_root(start)
    with ws.lock_workdir(root):
        meta = ws.read_metadata(root)
        require_finished(root, meta)
        scan = ws.scan_workdir(root, meta.manifest)
        ws.save_index(root, scan)
        local = scan.manifest
        changes = diff_manifests(meta.manifest, local)
        settings = options.settings(meta, root)
        unchanged = PushResult(
            meta.repository, settings.bootstrap, PushStatus.UP_TO_DATE, meta.version, meta.version, changes, 0,
            scan.untrackable,
        )  # fmt: skip
        if changes.empty:
            return unchanged
        tree, uploads = collect_uploads(root, local, meta.manifest)
        fields = {"repo": meta.repository, "base": meta.version, "tree": p.hash_bytes(tree), "message": message}
        with options.connect(settings) as connection:
            reply = send_write(connection, p.PushRequest, fields, uploads, observer)
        if reply.status == Status.REJECTED:
            raise PushRejected(meta.repository, settings.bootstrap, meta.version, reply.head)
        if reply.status == Status.UP_TO_DATE:
            return unchanged
        expect_write_accepted(meta.repository, "push", reply)
        ws.write_metadata(root, ws.Metadata(meta.repository, reply.version, meta.bootstrap, meta.namespace, local))
        sent = sum(u.size for u in uploads)
        return PushResult(
            meta.repository, settings.bootstrap, PushStatus.ACCEPTED, meta.version, reply.version, changes, sent,
            scan.untrackable,
        )  # fmt: skip


def send_write(
    connection: Link,
    kind: type[p.InitRequest | p.PushRequest],
    fields: dict[str, object],
    uploads: list[codec.BlobSource],
    observer: Observer | None,
) -> p.Reply:
    """Send a write with its uploads. An upload cut short (its replica died
    mid-way) is answered "missing objects": send it once more, whole, under a
    new request id."""
    reply = ask(connection, connection.new_request(kind, **fields), uploads, observer).reply
    if reply.status == Status.MISSING_OBJECTS:
        reply = ask(connection, connection.new_request(kind, **fields), uploads, observer).reply
    return reply


def expect_write_accepted(repo: str, action: str, reply: p.Reply) -> None:
    if reply.status == Status.NOT_FOUND:
        raise RepositoryNotFound(repo)
    if reply.status != Status.ACCEPTED:
        raise MinigitError(f"the server refused the {action}: {said(reply)}")


# ---------------------------------------------------------------- reads


def fetch_head(
    connection: Link, repo: str, version: int, lost: list[str], observer: Observer | None
) -> tuple[Response, p.Manifest] | None:
    """Ask for the head; None if ``version`` is the head already."""
    request = connection.new_request(p.PullRequest, repo=repo, version=version, lost=lost)
    response = ask(connection, request, observer=observer)
    reply = response.reply
    if reply.status != Status.OK:
        response.close()
        if reply.status == Status.UP_TO_DATE:
            return None
        if reply.status == Status.NOT_FOUND:
            raise RepositoryNotFound(repo)
        raise MinigitError(f"pull failed: {said(reply)}")
    return response, response.manifest  # the head's tree, decoded once by the collector (check_answer: it is there)


def lost_objects(base: p.Manifest, local: p.Manifest) -> list[str]:
    """Contents of the base version that no working file holds any more."""
    return sorted({e.sha for e in base.values()} - {e.sha for e in local.values()})


def apply_pull(root: Path, base: p.Manifest, local: p.Manifest, head: p.Manifest, response: Response) -> tuple:
    """Check, stage, then install: nothing is touched unless everything can be."""
    plan = plan_pull(base, local, head)
    if plan.refused or plan.conflicts:  # conflicts: until pull merges them
        raise PullConflict(sorted({*plan.collisions, *plan.conflicts}))
    if blocked := find_untracked_in_the_way(root, plan.write, plan.delete, local):
        raise PullConflict(blocked)
    sources = {entry.sha: path for path, entry in local.items()}
    deleted = frozenset(plan.delete)
    # links are checked against the tree as it will be: no link may lead outside, even through another
    is_link = ws.links_after(root, {**{path: e for path, e in local.items() if path not in deleted}, **plan.write})
    with staging_area(root) as staging:
        staged = []
        for number, (path, entry) in enumerate(sorted(plan.write.items())):
            ws.safe_target(root, path, removed=deleted)
            blob = response.blobs.get(entry.sha)
            if blob is not None:
                fill: Callable = blob.copy_to
            elif entry.sha in sources:
                fill = functools.partial(ws.copy_local_blob, root, sources[entry.sha], entry.sha)
            else:
                raise MinigitError(f"the server did not send the content of {path}", hint="run the command again")
            staged.append((ws.stage_blob(staging / str(number), path, entry, fill, is_link), path))
        for path in plan.delete:
            ws.remove_file(root, path)
        for target, path in staged:
            ws.install_staged(root, path, target)  # only empty folders are where files go (checked above)
    return plan


def find_untracked_in_the_way(
    root: Path, write: Mapping[str, p.FileEntry], delete: list[str], local: p.Manifest
) -> list[str]:
    """Files the scan did not track (ignored or untrackable ones: a link, a fifo...)
    that a pull would overwrite, or that stand where it needs a directory: never
    overwrite them silently."""
    blocked = set()
    deleted = set(delete)
    for path in write:
        if path in local:
            continue
        target = root / path
        if is_there_not_folder(target):
            blocked.add(path)
        elif target.is_dir():
            # a directory where the file goes: fine if the pull empties it
            for below in target.rglob("*"):
                rel = below.relative_to(root).as_posix()
                if (not below.is_dir() or below.is_symlink()) and rel not in deleted:
                    blocked.add(rel)
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if prefix not in local and is_there_not_folder(root / prefix):
                blocked.add(prefix)
    return sorted(blocked)


def is_there_not_folder(path: Path) -> bool:
    """Something is at ``path`` (a link, even dangling, a fifo...), and it is not a folder."""
    try:
        return not stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


@contextlib.contextmanager
def staging_area(root: Path) -> Iterator[Path]:
    staging = root / f"{ws.TEMP_MARK}{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def pull_workdir(start: Path, options: ClientOptions, observer: Observer | None = None) -> PullResult:
    """Bring the working directory to the head, keeping local edits that don't clash.
    An unfinished clone (``.minigit`` at version 0) is finished."""
    root = ws.require_root(start)
    with ws.lock_workdir(root):
        meta = ws.read_metadata(root)
        scan = ws.scan_workdir(root, meta.manifest)
        ws.save_index(root, scan)
        local = scan.manifest
        base = installed_part(meta, local) if meta.unfinished else meta.manifest
        lost = lost_objects(base, local)
        with options.connect(options.settings(meta, root)) as connection:
            version = meta.version if len(lost) <= MAX_LOST_OBJECTS else 0
            fetched = fetch_head(connection, meta.repository, version, lost[:MAX_LOST_OBJECTS], observer)
        if fetched is None:
            kept = sorted(diff_manifests(meta.manifest, local).paths)
            return PullResult(
                meta.repository, str(root), PullStatus.UP_TO_DATE, meta.version, meta.version, Changes(), kept, 0
            )
        response, head = fetched
        try:
            plan = apply_pull(root, base, local, head, response)
        finally:
            response.close()
        new_version = response.reply.version
        ws.write_metadata(root, ws.Metadata(meta.repository, new_version, meta.bootstrap, meta.namespace, head))
        return PullResult(
            meta.repository,
            str(root),
            PullStatus.CLONED if meta.unfinished else PullStatus.UPDATED,
            meta.version,
            new_version,
            Changes(added=sorted(head)) if meta.unfinished else plan.upstream,
            plan.kept_local,
            sum(b.size for b in response.blobs.values()),
        )


def installed_part(meta: ws.Metadata, local: p.Manifest) -> p.Manifest:
    """The files an unfinished clone installed: those of the version it was
    installing that are there with their content. Files are installed whole
    (renamed into place), so anything else there is not the clone's."""
    return {path: entry for path, entry in meta.manifest.items() if local.get(path) == entry}


def require_finished(root: Path, meta: ws.Metadata) -> None:
    if meta.unfinished:
        raise CloneUnfinished(meta.repository, str(root))


def check_repo_name(name: str) -> str:
    return p.check_name("repository", name)


def pull_here(start: Path, name: str | None, options: ClientOptions, observer: Observer | None = None) -> PullResult:
    """``minigit pull [NAME]``: pull in a working directory; outside one, a first
    pull, which clones NAME into the current (empty) directory."""
    root = ws.find_root(start)
    if root is None:
        if name is None:
            raise NoRepository()
        return clone_repository(name, start, options, observer)
    if name is not None and name != (held := ws.read_metadata(root).repository):
        raise UsageError(f"this working directory holds '{held}', not '{name}'")
    return pull_workdir(root, options, observer)


def clone_repository(
    name: str, directory: Path, options: ClientOptions, observer: Observer | None = None
) -> PullResult:
    """Copy the head of ``name`` into ``directory`` (new, or empty). On any error
    nothing is left behind. Killed at any instant, it leaves no ``directory`` or a
    complete clone (a new directory), or a ``.minigit`` marked unfinished that
    ``pull`` (or this same clone) finishes (an existing directory)."""
    p.check_name("repository", name)
    directory = directory.absolute()
    existed = directory.exists()
    if existed and is_unfinished_clone_of(directory, name):
        return pull_workdir(directory, options, observer)
    if existed and (not directory.is_dir() or not ws.is_vacant(directory)):
        raise not_empty(directory)
    settings = options.settings()
    with options.connect(settings) as connection:
        fetched = fetch_head(connection, name, 0, [], observer)
    if fetched is None:  # version 0 is never a head
        raise RepositoryNotFound(name)
    response, head = fetched
    meta = ws.Metadata(name, response.reply.version, settings.bootstrap, settings.namespace, head)
    try:
        if existed:
            clone_in_place(directory, meta, response)
        else:
            clone_beside(directory, meta, response)
    finally:
        response.close()
    return PullResult(
        name,
        str(directory),
        PullStatus.CLONED,
        0,
        meta.version,
        Changes(added=sorted(head)),
        [],
        sum(b.size for b in response.blobs.values()),
    )


def is_unfinished_clone_of(directory: Path, name: str) -> bool:
    try:
        meta = ws.read_metadata(directory)
    except (NoRepository, CorruptMetadata, OSError):
        return False
    return meta.unfinished and meta.repository == name


def not_empty(directory: Path) -> UsageError:
    return UsageError(f"destination path '{directory}' already exists and is not an empty directory")


def clone_beside(directory: Path, meta: ws.Metadata, response: Response) -> None:
    """Build the clone in a staging directory beside ``directory`` and rename it
    there: until the rename there is no ``directory``, after it a complete one."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with ws.clone_staging(directory.parent) as staging:
        apply_pull(staging, {}, {}, meta.manifest, response)
        ws.write_metadata(staging, meta)
        ws.install_clone(staging, directory)


def clone_in_place(directory: Path, meta: ws.Metadata, response: Response) -> None:
    """Fill an existing empty directory (the user's own: it may be the current
    directory, or one whose parent is not writable). ``.minigit`` comes first,
    marked unfinished, so that a clone killed half-way is a working directory
    the next ``pull`` finishes; it is marked finished last."""
    with ws.lock_workdir(directory):
        if not ws.is_vacant(directory):
            raise not_empty(directory)
        try:
            ws.write_metadata(directory, dataclasses.replace(meta, version=ws.UNFINISHED_VERSION))
            apply_pull(directory, {}, {}, meta.manifest, response)
            ws.write_metadata(directory, meta)
        except BaseException:
            clear_directory(directory)  # it held nothing of the user's (checked under the lock)
            raise


def clear_directory(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def read_status(start: Path) -> StatusResult:
    """Local changes against the local version; does not ask the server (like git)."""
    root = ws.require_root(start)
    busy = ws.tidy_unless_busy(root)
    meta = ws.read_metadata(root)
    if meta.unfinished and busy:
        raise WorkdirBusy(str(root))  # the clone is still running
    require_finished(root, meta)
    with ws.lock_unless_busy(root) as locked:  # the refreshed stat cache is saved only under the lock
        scan = ws.scan_workdir(root, meta.manifest, locked=locked)
        ws.save_index(root, scan)
    return StatusResult(
        meta.repository, meta.version, meta.bootstrap, diff_manifests(meta.manifest, scan.manifest), scan.untrackable
    )


def read_log(
    start: Path, options: ClientOptions, limit: int = 100, repo: str | None = None
) -> tuple[str, list[p.LogEntry], list[str | None]]:
    """The versions of the repository, newest first (asks the server), and for
    each why its proof of authorship does not hold (None: it does)."""
    meta = root = None
    if repo is None:
        root = ws.require_root(start)
        meta = ws.read_metadata(root)
        repo = meta.repository
    p.check_name("repository", repo)
    settings = options.settings(meta, root)
    with options.connect(settings) as connection:
        reply = ask(connection, connection.new_request(p.LogRequest, repo=repo, limit=limit)).reply
    if reply.status == Status.NOT_FOUND:
        raise RepositoryNotFound(repo)
    if reply.status != Status.OK:
        raise MinigitError(f"log failed: {said(reply)}")
    # reply.server_key is the pinned one: the reply's signature was checked against it
    return repo, reply.entries, [verify_entry(e, settings.namespace, reply.server_key) for e in reply.entries]


# ---------------------------------------------------------------- who may do what


def settings_here(start: Path, options: ClientOptions) -> KafkaSettings:
    """Where the service is: this working directory's, if it is one, else the flags'."""
    root = ws.find_root(start)
    return options.settings(ws.read_metadata(root), root) if root else options.settings()


def change_access(start: Path, options: ClientOptions, kind: type[p.Request], repo: str, **fields: object) -> p.Reply:
    """Send a share or visibility change and return the service's answer (accepted,
    or up to date: nothing to change); a refusal raises."""
    p.check_name("repository", repo)
    with options.connect(settings_here(start, options)) as connection:
        reply = ask(connection, connection.new_request(kind, repo=repo, **fields)).reply
    if reply.status == Status.NOT_FOUND:
        raise RepositoryNotFound(repo)
    if reply.status not in (Status.ACCEPTED, Status.UP_TO_DATE):
        raise MinigitError(f"{kind.action} failed: {said(reply)}")
    return reply


def share_repository(start: Path, options: ClientOptions, repo: str, member: str, level: p.Access) -> p.Reply:
    p.check_name("user", member)
    return change_access(start, options, p.ShareRequest, repo, member=member, level=level)


def set_visibility(start: Path, options: ClientOptions, repo: str, visibility: p.Visibility) -> p.Reply:
    return change_access(start, options, p.VisibilityRequest, repo, visibility=visibility)


def register_account(start: Path, options: ClientOptions) -> p.Reply:
    """Register the user's key (created on first use) under the user's name."""
    with options.connect(settings_here(start, options)) as connection:
        return register_user(connection)


def verify_entry(entry: p.LogEntry, namespace: str, server_key: str) -> str | None:
    """Why ``entry``'s proof of authorship does not hold, or None: its request is
    signed by the key it names, that request made this version (author and
    message), and the service (``server_key``, pinned) attested that key as the
    author's when the write was made. Everything is checked from the entry alone."""
    signed = entry.signed
    if signed is None:
        return "no signature"
    try:
        request = signed.parsed_request()
    except MinigitError as error:
        return f"its signed request does not parse: {error.message}"
    if not isinstance(request, p.InitRequest | p.PushRequest):
        return f"signed by a {request.action} request, not a write"
    if request.user != entry.author or request.message != entry.message:
        return "the signed request does not say what the version says"
    if not identity.request_signed_by(signed.key, request, namespace):
        return "the signature does not check against the key it names"
    attested = identity.attested_by(
        server_key, namespace, request.user, signed.key, request.signature, signed.attestation
    )
    return None if attested else "the service did not attest that key as the author's"


def rotate_key(start: Path, options: ClientOptions) -> keys.KeyInfo:
    """Replace the user's registered key by a new one, asked with the old key; the
    new key is kept aside first, and becomes the key once the service accepted it.
    A rotation cut short after the service accepted it is finished by running it
    again: the old key no longer signs, the new one finds itself registered."""
    config_dir = options.config_dir or user_config_dir()
    user = p.check_name("user", options.user)
    following = keys.load_or_create_next_key(config_dir, user)
    settings = settings_here(start, options)
    new_key = identity.public_key_text(following.public_key())
    try:
        reply = ask_rotation(options.connect(settings), user, new_key)
    except NotAuthenticated:
        credentials = dataclasses.replace(options.credentials(settings), key=following)
        reply = ask_rotation(options.connector(settings, credentials, options.timeout), user, new_key)
    if reply.status not in (Status.ACCEPTED, Status.UP_TO_DATE):
        raise MinigitError(f"rotate failed: {said(reply)}")
    return keys.promote_next_key(config_dir, user)


def ask_rotation(link: Link, user: str, new_key: str) -> p.Reply:
    with link as connection:
        return ask(connection, connection.new_request(p.RotateRequest, repo=user, new_key=new_key)).reply
