"""The client's commands as functions: init, clone, pull, push, status, log.

The CLI calls these and prints their results; they raise MinigitError and never
print. Layers go one way: cli -> operations -> workspace / transport.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from minigit import codec, identity
from minigit import protocol as p
from minigit.client import keys, known_servers
from minigit.client import workspace as ws
from minigit.client.changes import THEIRS_SUFFIX, Changes, PullPlan, Strategy, diff_manifests, plan_pull
from minigit.client.exchange import Connector, Credentials, Link, Observer, Response
from minigit.client.merge import has_conflict_markers
from minigit.client.merging import ConflictReport, MergeWrites, needs_base, settle_conflicts
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
    ServerUnreachable,
    UnresolvedConflicts,
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
    connector: Connector | None = None  # None: Kafka (transport.Connection), imported only when a command connects
    config_dir: Path | None = None  # keys and known_servers (default: minigit.config.user_config_dir())

    def settings(self, meta: ws.Metadata | None = None, root: Path | None = None) -> KafkaSettings:
        """Where the service is; ``meta`` is the ``.minigit`` of the working directory ``root``."""
        if meta is None:
            return self.flags.resolve()
        where = str(root / ws.METADATA_NAME) if root else ws.METADATA_NAME
        return self.flags.resolve((meta.bootstrap, meta.namespace), where)

    def connect(self, settings: KafkaSettings) -> Link:
        connector = self.connector
        if connector is None:
            from minigit.client.transport import Connection

            connector = Connection
        return connector(settings, self.credentials(settings), self.timeout)

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
    conflicts: list[ConflictReport] = field(default_factory=list)  # files changed on both sides, and how
    settled: str | None = None  # what became of an interrupted push, if there was one

    @property
    def unresolved(self) -> list[str]:
        return [c.path for c in self.conflicts if c.resolution in ("conflict", "both")]

    def to_json(self) -> dict:
        return {
            "conflicts": [c.to_json() for c in self.conflicts],
            "interrupted_push": self.settled,
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
    settled: str | None = None  # what became of an interrupted push, if there was one
    untrackable: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of files not sent

    def to_json(self) -> dict:
        return {
            "interrupted_push": self.settled,
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
    conflicts: list[str] = field(default_factory=list)  # unresolved conflicts a pull left
    detached: bool = False
    settled: str | None = None  # what became of an interrupted push, if there was one
    untrackable: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of files that cannot be tracked

    def to_json(self) -> dict:
        return {
            "conflicts": self.conflicts,
            "detached": self.detached,
            "interrupted_push": self.settled,
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
    connection: Link,
    request: p.Request,
    uploads: Sequence[codec.BlobSource] = (),
    observer: Observer | None = None,
    spool: Path | None = None,
) -> Response:
    """Send ``request`` and return its answer, checked (``check_answer``). A user
    the service does not know yet registers its key (where registration is open)
    and asks again; a refusal raises (exit code 6). ``spool``: where the answer's
    blobs are written (``Link.call``)."""
    received = {"spool": spool} if spool is not None else {}
    response = connection.call(request, uploads, observer, **received)
    if response.reply.status == Status.UNKNOWN_USER and not isinstance(request, p.RegisterRequest):
        register_user(connection)
        # The same request, same id: a copy of it still on its way (a hedge), applied once the
        # user is registered, and this sending are one request, with one outcome. A late
        # "unknown user" answer to an earlier sending may still come first: ask again.
        for _ in range(UNKNOWN_USER_RETRIES):
            response.close()
            response = connection.call(request, uploads, observer, **received)
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

    * pull ``ok``: ``version`` the ``target`` asked for, or (no target: the head)
      >= 1 and above the version asked from, and its ``tree``, among the blobs
      that came with it (decoded by the collector: ``response.manifest``);
    * push ``accepted``: ``version`` = ``base`` + 1; init ``accepted``: ``version`` 1;
    * push ``rejected``: the server's ``head``.
    """
    reply = response.reply
    problem = None
    if isinstance(request, p.PullRequest) and reply.status == Status.OK:
        if request.target and reply.version != request.target:
            problem = f"pull of version {request.target} answered with version {reply.version}"
        elif not request.target and (reply.version is None or reply.version < 1 or reply.version <= request.version):
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
    """Send the local changes as the next version, if the server is still at ours.
    The push is recorded in ``.minigit`` before it is sent, so that if its answer
    never comes (Ctrl-C, a crash), the next command learns what became of it."""
    root = ws.require_root(start)
    with ws.lock_workdir(root):
        meta = ws.read_metadata(root)
        require_finished(root, meta)
        require_pushable(root, meta)
        scan = ws.scan_workdir(root, meta.manifest)
        ws.save_index(root, scan)
        local = scan.manifest
        settings = options.settings(meta, root)
        settled = None
        if meta.pending is not None:
            with options.connect(settings) as connection:
                meta, settled = settle_pending(connection, root, meta)
        changes = diff_manifests(meta.manifest, local)
        unchanged = PushResult(
            meta.repository, settings.bootstrap, PushStatus.UP_TO_DATE, meta.version, meta.version, changes, 0, settled,
            scan.untrackable,
        )  # fmt: skip
        if changes.empty:
            return unchanged
        tree, uploads = collect_uploads(root, local, meta.manifest)
        tree_id = p.hash_bytes(tree)
        fields = {
            "repo": meta.repository,
            "base": meta.version,
            "tree": tree_id,
            "message": message,
            "base_tree": tree_of(meta, meta.version),
        }

        def record_pending(request: p.Request) -> None:
            pending = ws.PendingPush(request.request_id, meta.version, tree_id, local)
            ws.write_metadata(root, dataclasses.replace(meta, pending=pending))

        with options.connect(settings) as connection:
            reply = send_write(connection, p.PushRequest, fields, uploads, observer, record_pending)
        ws.write_metadata(root, dataclasses.replace(meta, pending=None))  # answered: nothing is pending
        if reply.status == Status.REJECTED:
            raise PushRejected(meta.repository, settings.bootstrap, meta.version, reply.head)
        if reply.status == Status.UP_TO_DATE:
            return unchanged
        expect_write_accepted(meta.repository, "push", reply)
        ws.write_metadata(
            root, dataclasses.replace(meta, version=reply.version, manifest=local, pending=None, conflicts={})
        )
        sent = sum(u.size for u in uploads)
        return PushResult(
            meta.repository,
            settings.bootstrap,
            PushStatus.ACCEPTED,
            meta.version,
            reply.version,
            changes,
            sent,
            settled,
            scan.untrackable,
        )


def require_pushable(root: Path, meta: ws.Metadata) -> None:
    """Not a read-only view of an older version, and no conflict left unresolved."""
    if meta.detached:
        raise UsageError(
            f"you are viewing version {meta.version}, an older version: push refuses here",
            hint="run 'minigit checkout --latest' to go back to the head (your changes come along), then push",
        )
    if unresolved := still_unresolved(root, meta.conflicts):
        raise UnresolvedConflicts(sorted(unresolved))


def send_write(
    connection: Link,
    kind: type[p.InitRequest | p.PushRequest],
    fields: dict[str, object],
    uploads: list[codec.BlobSource],
    observer: Observer | None,
    before_send: Callable[[p.Request], object] = lambda request: None,
) -> p.Reply:
    """Send a write with its uploads (``before_send`` is told each request first).
    An upload cut short (its replica died mid-way) is answered "missing objects":
    send it once more, whole, under a new request id."""
    request = connection.new_request(kind, **fields)
    before_send(request)
    reply = ask(connection, request, uploads, observer).reply
    if reply.status == Status.MISSING_OBJECTS:
        request = connection.new_request(kind, **fields)
        before_send(request)
        reply = ask(connection, request, uploads, observer).reply
    return reply


def expect_write_accepted(repo: str, action: str, reply: p.Reply) -> None:
    if reply.status == Status.NOT_FOUND:
        raise RepositoryNotFound(repo)
    if reply.status != Status.ACCEPTED:
        raise MinigitError(f"the server refused the {action}: {said(reply)}")


# ---------------------------------------------------------------- reads


def fetch_head(
    connection: Link,
    repo: str,
    version: int,
    lost: list[str],
    observer: Observer | None,
    base_tree: str = "",
    spool: Path | None = None,
) -> tuple[Response, p.Manifest] | None:
    """Ask for the head; None if ``version`` is the head already. ``base_tree``: the
    tree the client holds as ``version``, which the server checks is its own.
    ``spool``: a directory beside where the files go, to receive them in (each
    then renamed into place: written once)."""
    request = connection.new_request(p.PullRequest, repo=repo, version=version, lost=lost, base_tree=base_tree)
    response = ask(connection, request, observer=observer, spool=spool)
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


def apply_pull(
    root: Path,
    base: p.Manifest,
    local: p.Manifest,
    head: p.Manifest,
    response: Response,
    merges: MergeWrites | None = None,
    more: Sequence[Response] = (),
) -> PullPlan:
    """Check, stage, then install: nothing is touched unless everything can be.
    Files changed on both sides are refused, unless ``merges`` settles them (what
    it writes comes from its bytes, ``response``, ``more`` answers, or working files)."""
    plan = plan_pull(base, local, head)
    if plan.refused or (plan.conflicts and merges is None):
        raise PullConflict(plan.collisions or plan.conflicts)
    merges = merges or MergeWrites()
    write = {**plan.write, **merges.entries}
    delete = [*plan.delete, *merges.delete]
    if blocked := find_untracked_in_the_way(root, {**write, **dict.fromkeys(merges.contents)}, delete, local):
        raise PullConflict(blocked)
    sources = {entry.sha: path for path, entry in local.items()}
    blobs = {sha: blob for answer in (*more, response) for sha, blob in answer.blobs.items()}
    deleted = frozenset(delete)
    # links are checked against the tree as it will be: no link may lead outside, even through another
    is_link = ws.links_after(root, {**{path: e for path, e in local.items() if path not in deleted}, **write})
    checked: ws.SoundFolders = {}  # folders found sound while staging (nothing is changed meanwhile)
    with staging_area(root) as staging:
        staged = []
        for number, (path, (data, mode)) in enumerate(sorted(merges.contents.items())):
            ws.safe_target(root, path, removed=deleted, folders=checked)
            entry = p.FileEntry(p.hash_bytes(data), len(data), mode)
            staged.append((ws.stage_blob(staging / f"m{number}", path, entry, data, is_link), path))
        for number, (path, entry) in enumerate(sorted(write.items())):
            ws.safe_target(root, path, removed=deleted, folders=checked)
            blob = blobs.get(entry.sha)
            if blob is not None and entry.mode == p.FileMode.REGULAR:
                # received into a file of its own beside the staging area: renamed there, not copied
                fill: Callable = functools.partial(blob.move_or_copy, staging / str(number))
            elif blob is not None:
                fill = blob.copy_to
            elif entry.sha in sources:
                fill = functools.partial(ws.copy_local_blob, root, sources[entry.sha], entry.sha)
            else:
                raise MinigitError(f"the server did not send the content of {path}", hint="run the command again")
            staged.append((ws.stage_blob(staging / str(number), path, entry, fill, is_link), path))
        # the files this pull replaces or deletes are still as scanned: an edit made since is never lost
        touched = sorted(({*write, *merges.contents, *delete}) & local.keys())
        if changed := [path for path in touched if not ws.still_as_scanned(root, path, local[path])]:
            raise MinigitError(
                f"{', '.join(changed[:5])} changed while the pull ran; nothing was touched", hint="run it again"
            )
        # and nothing new of yours appeared where a file goes while it downloaded
        if blocked := find_untracked_in_the_way(root, {**write, **dict.fromkeys(merges.contents)}, delete, local):
            raise PullConflict(blocked)
        # beside files first (PATH.orig holds your bytes): a pull killed midway never loses them
        beside = set(merges.entries) - set(plan.write) - local.keys()
        for target, path in staged:
            if path in beside:
                ws.install_staged(root, path, target)
        for path in delete:
            ws.remove_file(root, path)
        made: ws.SoundFolders = {}  # folders made or found by this loop, which removes none
        for target, path in staged:
            if path not in beside:
                ws.install_staged(root, path, target, made)  # only empty folders are where files go (checked above)
    return plan


def find_untracked_in_the_way(
    root: Path, write: Mapping[str, p.FileEntry], delete: list[str], local: p.Manifest
) -> list[str]:
    """Files the scan did not track (ignored or untrackable ones: a link, a fifo...)
    that a pull would overwrite, or that stand where it needs a directory: never
    overwrite them silently. Each folder is looked at once, whatever the number of
    files written in it."""
    blocked = set()
    deleted = set(delete)
    looked: set[str] = set()
    base = os.fspath(root)
    for path in write:
        if path in local:
            continue
        target = os.path.join(base, path)
        try:
            mode: int | None = os.lstat(target).st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = None
        if mode is not None and not stat.S_ISDIR(mode):
            blocked.add(path)
        elif mode is not None:
            # a directory where the file goes: fine if the pull empties it
            for below in Path(target).rglob("*"):
                rel = below.relative_to(root).as_posix()
                if (not below.is_dir() or below.is_symlink()) and rel not in deleted:
                    blocked.add(rel)
        for prefix in ws.parents_of(path):
            if prefix in looked:
                continue
            looked.add(prefix)
            if prefix not in local and is_there_not_folder(os.path.join(base, prefix)):
                blocked.add(prefix)
    return sorted(blocked)


def is_there_not_folder(path: Path | str) -> bool:
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


def pull_workdir(
    start: Path, options: ClientOptions, observer: Observer | None = None, strategy: Strategy = Strategy.MERGE
) -> PullResult:
    """Bring the working directory to the head, keeping local edits. A file changed
    on both sides is merged (see ``merging``): what cannot merge cleanly is marked,
    and recorded in ``.minigit`` until you resolve it. An unfinished clone (``.minigit``
    at version 0) is finished."""
    root = ws.require_root(start)
    with ws.lock_workdir(root), contextlib.ExitStack() as spooling:
        meta = ws.read_metadata(root)
        if meta.detached:
            raise UsageError(
                f"you are viewing version {meta.version} (a read-only view of an older version)",
                hint="run 'minigit checkout --latest' to go back to the head",
            )
        if unresolved := still_unresolved(root, meta.conflicts):  # as git: merging again would nest markers
            raise UnresolvedConflicts(sorted(unresolved))
        local = scan_local(root, meta)
        spool = spooling.enter_context(staging_area(root))  # the files come here, then are renamed into place
        more: list[Response] = []
        with options.connect(options.settings(meta, root)) as connection:
            meta, settled = settle_pending(connection, root, meta)  # may move us to the version it made
            base = installed_part(meta, local) if meta.unfinished else meta.manifest
            lost = lost_objects(base, local)
            version = meta.version if len(lost) <= MAX_LOST_OBJECTS else 0
            fetched = fetch_head(
                connection, meta.repository, version, lost[:MAX_LOST_OBJECTS], observer, tree_of(meta, version), spool
            )
            if fetched is None:
                kept = sorted(diff_manifests(meta.manifest, local).paths)
                return PullResult(
                    meta.repository, str(root), PullStatus.UP_TO_DATE, meta.version, meta.version, Changes(), kept, 0,
                    settled=settled,
                )  # fmt: skip
            response, head = fetched
            try:
                merges = merge_conflicts(connection, root, meta, base, local, head, response, more, strategy)
            except BaseException:
                close_all(response, *more)
                raise
        try:
            plan = apply_pull(root, base, local, head, response, merges, more)
        finally:
            close_all(response, *more)
        new_version = response.reply.version
        ws.write_metadata(
            root, dataclasses.replace(meta, version=new_version, manifest=head, conflicts=merges.unresolved)
        )
        return PullResult(
            meta.repository,
            str(root),
            PullStatus.CLONED if meta.unfinished else PullStatus.UPDATED,
            meta.version,
            new_version,
            Changes(added=sorted(head)) if meta.unfinished else plan.upstream,
            plan.kept_local,
            sum(b.size for b in response.blobs.values()),
            conflicts=merges.reports,
            settled=settled,
        )


def close_all(*responses: Response) -> None:
    for response in responses:
        response.close()


def tree_of(meta: ws.Metadata, version: int) -> str:
    """The id of the tree the client holds as ``version``, for the server to check
    it is the same version (a repository deleted and made again is not)."""
    return p.hash_bytes(p.encode_tree(meta.manifest)) if version and version == meta.version else ""


def merge_conflicts(
    connection: Link,
    root: Path,
    meta: ws.Metadata,
    base: p.Manifest,
    local: p.Manifest,
    head: p.Manifest,
    response: Response,
    more: list[Response],
    strategy: Strategy,
) -> MergeWrites:
    """Settle the files changed on both sides; the local version's bytes a line
    merge needs are fetched by hash (into ``more``)."""
    conflicts = plan_pull(base, local, head).conflicts
    if not conflicts:
        return MergeWrites()
    if strategy == Strategy.MERGE and (shas := missing_shas(needs_base(conflicts, base, local, head), local)):
        more.append(fetch_version(connection, meta.repository, meta.version, meta.version, shas))
    contents = Contents(root, local, [response, *more])
    label = f"version {response.reply.version}"
    return settle_conflicts(
        conflicts,
        base,
        local,
        head,
        contents.read,
        strategy,
        label,
        # on disk, or a file of either side: upstream's own PATH.theirs is never written over
        taken=lambda path: path in head or path in local or os.path.lexists(root / path),
    )


def still_unresolved(root: Path, conflicts: Mapping[str, ws.ConflictKind]) -> dict[str, ws.ConflictKind]:
    """The conflicts a pull left that are not resolved yet: markers still in the
    file, or upstream's version still beside yours."""
    left = {}
    for path, kind in conflicts.items():
        target = root / path
        if kind == ws.ConflictKind.THEIRS:
            if os.path.lexists(root / (path + THEIRS_SUFFIX)):
                left[path] = kind
        elif target.is_file() and not target.is_symlink():
            with contextlib.suppress(OSError):
                if has_conflict_markers(target.read_bytes()):
                    left[path] = kind
    return left


# ---------------------------------------------------------------- an interrupted push


def settle_pending(connection: Link, root: Path, meta: ws.Metadata) -> tuple[ws.Metadata, str | None]:
    """Ask what became of a push whose answer never came (the command was
    interrupted), and record it: accepted, the working directory is at the
    version it made (nothing is downloaded: those files are here); otherwise it
    will never be applied (asking settles it), and its changes are still here."""
    pending = meta.pending
    if pending is None:
        return meta, None
    request = connection.new_request(
        p.OutcomeRequest, repo=meta.repository, of_request=pending.request_id, tree=pending.tree
    )
    reply = ask(connection, request).reply
    if reply.status == Status.ACCEPTED and reply.version is not None:
        meta = dataclasses.replace(meta, version=reply.version, manifest=pending.manifest, pending=None)
        note = f"your interrupted push was accepted as version {reply.version}"
    elif reply.status == Status.NOT_FOUND:
        raise RepositoryNotFound(meta.repository)
    else:
        meta = dataclasses.replace(meta, pending=None)
        note = f"your interrupted push was not applied ({said(reply)}); its changes are still in your files"
    ws.write_metadata(root, meta)
    return meta, note


# ---------------------------------------------------------------- checkout


@dataclass(frozen=True)
class CheckoutResult:
    repository: str
    old_version: int
    new_version: int
    head: int
    detached: bool
    changes: Changes

    def to_json(self) -> dict:
        return {
            "repository": self.repository,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "head": self.head,
            "detached": self.detached,
            "changes": self.changes.to_json(),
        }


def checkout_version(start: Path, options: ClientOptions, version: int | None) -> CheckoutResult:
    """Put the working files at ``version`` (None: the head), carrying local edits
    along unless that version changed the same files (then nothing is touched).
    An older version is a read-only view: push refuses there."""
    root = ws.require_root(start)
    with ws.lock_workdir(root):
        meta = ws.read_metadata(root)
        require_finished(root, meta)
        if unresolved := still_unresolved(root, meta.conflicts):
            raise UnresolvedConflicts(sorted(unresolved))
        local = scan_local(root, meta)
        lost = lost_objects(meta.manifest, local)
        have = meta.version if len(lost) <= MAX_LOST_OBJECTS else 0
        with options.connect(options.settings(meta, root)) as connection:
            if version is None:
                fetched = fetch_head(
                    connection, meta.repository, have, lost[:MAX_LOST_OBJECTS], None, tree_of(meta, have)
                )
                if fetched is None:
                    ws.write_metadata(root, dataclasses.replace(meta, detached=False))
                    return CheckoutResult(meta.repository, meta.version, meta.version, meta.version, False, Changes())
                response = fetched[0]
            else:
                lost = lost[:MAX_LOST_OBJECTS]
                response = fetch_version(
                    connection, meta.repository, have, version, lost, None, False, tree_of(meta, have)
                )
        try:
            tree = response.manifest
            plan = plan_pull(meta.manifest, local, tree)
            if plan.conflicts:
                raise PullConflict(plan.conflicts, action="checkout")
            plan = apply_pull(root, meta.manifest, local, tree, response)
        finally:
            response.close()
        reply = response.reply
        head = reply.head if reply.head is not None else reply.version
        detached = reply.version < head
        ws.write_metadata(
            root, dataclasses.replace(meta, version=reply.version, manifest=tree, detached=detached, conflicts={})
        )
        return CheckoutResult(meta.repository, meta.version, reply.version, head, detached, plan.upstream)


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


def pull_here(
    start: Path,
    name: str | None,
    options: ClientOptions,
    observer: Observer | None = None,
    strategy: Strategy = Strategy.MERGE,
) -> PullResult:
    """``minigit pull [NAME]``: pull in a working directory; outside one, a first
    pull, which clones NAME into the current (empty) directory."""
    root = ws.find_root(start)
    if root is None:
        if name is None:
            raise NoRepository()
        return clone_repository(name, start, options, observer)
    if name is not None and name != (held := ws.read_metadata(root).repository):
        raise UsageError(f"this working directory holds '{held}', not '{name}'")
    return pull_workdir(root, options, observer, strategy)


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
    clone = clone_in_place if existed else clone_beside
    meta, received = clone(directory, name, options, settings, observer)
    return PullResult(
        name, str(directory), PullStatus.CLONED, 0, meta.version, Changes(added=sorted(meta.manifest)), [], received
    )


def fetch_clone(
    name: str, options: ClientOptions, settings: KafkaSettings, observer: Observer | None, spool: Path
) -> tuple[Response, ws.Metadata]:
    """The head of ``name``, its files received into ``spool``, and the working
    directory's metadata for it."""
    with options.connect(settings) as connection:
        fetched = fetch_head(connection, name, 0, [], observer, spool=spool)
    if fetched is None:  # version 0 is never a head
        raise RepositoryNotFound(name)
    response, head = fetched
    return response, ws.Metadata(name, response.reply.version, settings.bootstrap, settings.namespace, head)


def is_unfinished_clone_of(directory: Path, name: str) -> bool:
    try:
        meta = ws.read_metadata(directory)
    except (NoRepository, CorruptMetadata, OSError):
        return False
    return meta.unfinished and meta.repository == name


def not_empty(directory: Path) -> UsageError:
    return UsageError(f"destination path '{directory}' already exists and is not an empty directory")


def clone_beside(
    directory: Path, name: str, options: ClientOptions, settings: KafkaSettings, observer: Observer | None
) -> tuple[ws.Metadata, int]:
    """Build the clone in a staging directory beside ``directory`` and rename it
    there: until the rename there is no ``directory``, after it a complete one.
    The files are received into the staging directory, and renamed into place."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with ws.clone_staging(directory.parent) as staging:
        spool = staging / f"{ws.TEMP_MARK}received"
        spool.mkdir()
        response, meta = fetch_clone(name, options, settings, observer, spool)
        try:
            apply_pull(staging, {}, {}, meta.manifest, response)
        finally:
            response.close()
        shutil.rmtree(spool)
        ws.write_metadata(staging, meta)
        ws.save_index_of_clone(staging, meta.manifest)
        ws.install_clone(staging, directory)
    return meta, sum(b.size for b in response.blobs.values())


def clone_in_place(
    directory: Path, name: str, options: ClientOptions, settings: KafkaSettings, observer: Observer | None
) -> tuple[ws.Metadata, int]:
    """Fill an existing empty directory (the user's own: it may be the current
    directory, or one whose parent is not writable). ``.minigit`` comes first,
    marked unfinished, so that a clone killed half-way is a working directory
    the next ``pull`` finishes; it is marked finished last. The files are
    received into a temporary folder in it, and renamed into place."""
    with ws.lock_workdir(directory):
        if not ws.is_vacant(directory):
            raise not_empty(directory)
        with staging_area(directory) as spool:
            response, meta = fetch_clone(name, options, settings, observer, spool)
            try:
                ws.write_metadata(directory, dataclasses.replace(meta, version=ws.UNFINISHED_VERSION))
                apply_pull(directory, {}, {}, meta.manifest, response)
                ws.write_metadata(directory, meta)
            except BaseException:
                response.close()
                clear_directory(directory)  # it held nothing of the user's (checked under the lock)
                raise
            response.close()
    return meta, sum(b.size for b in response.blobs.values())


def clear_directory(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def read_status(start: Path, options: ClientOptions | None = None) -> StatusResult:
    """Local changes against the local version; does not ask the server (like git),
    unless a push was interrupted: then it asks what became of it (``options``
    say how; without them, or when the service cannot be reached, it stays pending)."""
    root = ws.require_root(start)
    busy = ws.tidy_unless_busy(root)
    meta = ws.read_metadata(root)
    if meta.unfinished and busy:
        raise WorkdirBusy(str(root))  # the clone is still running
    require_finished(root, meta)
    settled = None
    if meta.pending is not None and options is not None and not busy:
        meta, settled = settle_pending_quietly(root, meta, options)
    with ws.lock_unless_busy(root) as locked:  # the refreshed stat cache is saved only under the lock
        scan = ws.scan_workdir(root, meta.manifest, locked=locked)
        ws.save_index(root, scan)
    return StatusResult(
        meta.repository,
        meta.version,
        meta.bootstrap,
        diff_manifests(meta.manifest, scan.manifest),
        sorted(still_unresolved(root, meta.conflicts)),
        meta.detached,
        settled,
        scan.untrackable,
    )


def settle_pending_quietly(root: Path, meta: ws.Metadata, options: ClientOptions) -> tuple[ws.Metadata, str | None]:
    """``settle_pending`` for status: under the lock, and a service out of reach
    leaves the push pending (status works offline)."""
    try:
        with ws.lock_workdir(root):
            meta = ws.read_metadata(root)
            if meta.pending is None:
                return meta, None
            with options.connect(options.settings(meta, root)) as connection:
                return settle_pending(connection, root, meta)
    except (ServerUnreachable, WorkdirBusy) as error:
        return meta, f"a push was interrupted; what became of it is not known yet ({error.message})"


def read_log(
    start: Path,
    options: ClientOptions,
    limit: int = 100,
    repo: str | None = None,
    paths: Sequence[str] = (),
    changes: bool = False,
) -> tuple[str, list[p.LogEntry], list[str | None]]:
    """The versions of the repository, newest first (asks the server), and for
    each why its proof of authorship does not hold (None: it does). ``paths``:
    only versions that changed a file at or under one of them; ``changes``: each
    version lists the files it changed."""
    meta = root = None
    if repo is None:
        root = ws.require_root(start)
        meta = ws.read_metadata(root)
        repo = meta.repository
    p.check_name("repository", repo)
    wanted = [relative_to_root(root, start, path) for path in paths] if root else [path.strip("/") for path in paths]
    wanted = [] if "" in wanted else wanted  # the whole working directory: every version
    settings = options.settings(meta, root)
    with options.connect(settings) as connection:
        request = connection.new_request(p.LogRequest, repo=repo, limit=limit, paths=wanted, changes=changes)
        reply = ask(connection, request).reply
    if reply.status == Status.NOT_FOUND:
        raise RepositoryNotFound(repo)
    if reply.status != Status.OK:
        raise MinigitError(f"log failed: {said(reply)}")
    # reply.server_key is the pinned one: the reply's signature was checked against it
    return repo, reply.entries, [verify_entry(e, settings.namespace, reply.server_key) for e in reply.entries]


def relative_to_root(root: Path, start: Path, given: str) -> str:
    """A path given on the command line (relative to ``start``) as a repository path."""
    absolute = Path(os.path.normpath(Path(start).absolute() / given))
    try:
        text = absolute.relative_to(root.absolute()).as_posix()
    except ValueError:
        raise UsageError(f"{given}: outside the working directory {root}") from None
    return "" if text == "." else text


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


# ---------------------------------------------------------------- any version's files


def fetch_version(
    connection: Link,
    repo: str,
    have: int,
    target: int,
    lost: Sequence[str] = (),
    observer: Observer | None = None,
    asked: bool = False,
    base_tree: str = "",
) -> Response:
    """Version ``target``'s tree, and the blobs of it that a holder of version
    ``have`` lacks, ``lost`` included (``have == target``: the tree, and the blobs
    of ``lost`` it holds: how one version's files are fetched by hash). ``asked``:
    both numbers are versions the user named (diff V1 V2), not one the client holds."""
    fields = {"version": have, "target": target, "lost": list(lost), "base_tree": base_tree}
    request = connection.new_request(p.PullRequest, repo=repo, **fields)
    response = ask(connection, request, observer=observer)
    reply = response.reply
    if reply.status == Status.OK:
        return response
    response.close()
    if reply.status == Status.NOT_FOUND:
        raise RepositoryNotFound(repo)
    if asked and reply.head is not None and max(have, target) > reply.head:
        raise MinigitError(f"version {max(have, target)} of {repo} does not exist: the head is version {reply.head}")
    raise MinigitError(f"cannot read version {target} of {repo}: {said(reply)}")


@dataclass
class Contents:
    """Where the bytes of a version's files come from: the blobs an answer
    brought, else a working file that still holds them (checked as it is read)."""

    root: Path | None
    local: p.Manifest = field(default_factory=dict)
    responses: list[Response] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.holders = {held.sha: (path, held) for path, held in self.local.items()}

    def read(self, entry: p.FileEntry) -> bytes:
        for response in self.responses:
            if (blob := response.blobs.get(entry.sha)) is not None:
                return blob.read()
        if self.root is not None and entry.sha in self.holders:
            return read_checked(self.root, *self.holders[entry.sha])
        raise MinigitError(f"the service did not send object {entry.sha[:12]}", hint="run the command again")

    def close(self) -> None:
        for response in self.responses:
            response.close()


def read_checked(root: Path, rel: str, entry: p.FileEntry) -> bytes:
    """A working file's (or link's) bytes, if they still hash to ``entry``."""
    target = ws.safe_target(root, rel)
    data = os.readlink(os.fsencode(target)) if entry.mode == p.FileMode.SYMLINK else target.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.sha:
        raise MinigitError(f"{rel} changed while minigit was reading it", hint="run the command again")
    return data


def missing_shas(entries: Iterable[p.FileEntry], local: Mapping[str, p.FileEntry]) -> list[str]:
    """The contents among ``entries`` no working file holds, once each."""
    held = {entry.sha for entry in local.values()}
    return sorted({entry.sha for entry in entries} - held)


# ---------------------------------------------------------------- shared by the version commands


def scan_local(root: Path, meta: ws.Metadata, locked: bool = True) -> p.Manifest:
    """The working files, tracked ones kept where an ignore file now matches them;
    under the lock (``locked``) the refreshed stat cache is saved."""
    scan = ws.scan_workdir(root, meta.manifest, locked=locked)
    if locked:
        ws.save_index(root, scan)
    return scan.manifest


def open_workdir(start: Path) -> tuple[Path, ws.Metadata, p.Manifest]:
    """A finished working directory, its ``.minigit`` and its files, read without
    the lock (like ``status``: a read that changes nothing)."""
    root = ws.require_root(start)
    meta = ws.read_metadata(root)
    require_finished(root, meta)
    return root, meta, scan_local(root, meta, locked=False)


def read_workdir(root: Path) -> tuple[ws.Metadata, p.Manifest]:
    """Under the lock: ``.minigit`` and the working files."""
    meta = ws.read_metadata(root)
    require_finished(root, meta)
    return meta, scan_local(root, meta)


def install_entries(
    root: Path, entries: Mapping[str, p.FileEntry], local: p.Manifest, read: Callable[[p.FileEntry], bytes]
) -> None:
    """Put each of ``entries`` in place (with its mode; a link as a link, never
    one leading outside), over what is there: all staged first, then installed."""
    if blocked := find_untracked_in_the_way(root, entries, [], local):
        raise PullConflict(blocked, action="restore")  # a folder of yours, or an ignored file, stands there
    is_link = ws.links_after(root, {**local, **entries})
    with staging_area(root) as staging:
        staged = []
        for number, (path, entry) in enumerate(sorted(entries.items())):
            ws.safe_target(root, path)
            staged.append((ws.stage_blob(staging / str(number), path, entry, read(entry), is_link), path))
        for target, path in staged:
            ws.install_staged(root, path, target)


def options_link(options: ClientOptions, meta: ws.Metadata | None, root: Path | None) -> Link:
    return options.connect(options.settings(meta, root))


def resolve_repo(start: Path, repo: str | None) -> tuple[str, ws.Metadata | None, Path | None]:
    """``repo`` if given (the flags say where the service is), else this working directory's."""
    if repo is not None:
        return p.check_name("repository", repo), None, None
    root = ws.require_root(start)
    meta = ws.read_metadata(root)
    return meta.repository, meta, root
