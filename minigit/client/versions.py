"""Any version, not only the head: diff, restore, show, checkout, repos, remote.

The client keeps no copy of the content it cloned beyond the working files
themselves: what a command needs that no working file holds any more (the
local version's bytes of a file you edited, an older version's files) it
fetches by hash from the service, which serves any version (a pull with a
``target``). So ``status`` is offline, and ``diff``/``restore`` of an edited
file ask the service for the version's bytes of that file only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from minigit import protocol as p
from minigit.client import operations as ops
from minigit.client import textdiff
from minigit.client import workspace as ws
from minigit.client.changes import Changes, diff_manifests
from minigit.client.merge import MAX_MERGE_BYTES
from minigit.config import ServerFlags
from minigit.errors import MinigitError, RepositoryNotFound, UsageError
from minigit.protocol import Status

# ---------------------------------------------------------------- diff


@dataclass(frozen=True)
class DiffResult:
    repository: str
    old_version: int
    new_version: int | None  # None: the working files
    files: list[textdiff.FileDiff]

    def to_json(self) -> dict:
        return {
            "repository": self.repository,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "files": [
                {
                    "old_path": f.old_path,
                    "new_path": f.new_path,
                    "status": f.status,
                    "binary": f.binary,
                    "insertions": f.added,
                    "deletions": f.removed,
                    "mode_change": list(f.mode_change) if f.mode_change else None,
                }
                for f in self.files
            ],
        }


def select_paths(paths: Iterable[str], wanted: Sequence[str]) -> list[str]:
    """``paths`` equal to or under one of ``wanted`` (all of them if none is)."""
    prefixes = [w.strip("/") for w in wanted]
    return sorted(
        path for path in paths if not prefixes or any(path == w or path.startswith(w + "/") or not w for w in prefixes)
    )


def needs_bytes(entry: p.FileEntry | None) -> bool:
    """Whether a diff shows this side's lines: not for content too large to diff."""
    return entry is not None and entry.size <= MAX_MERGE_BYTES


def diff_entries(
    old: Mapping[str, p.FileEntry], new: Mapping[str, p.FileEntry], changes: Changes, read_old, read_new
) -> list[textdiff.FileDiff]:
    diffs = []
    for path in sorted(changes.paths):
        before, after = old.get(path), new.get(path)
        same_bytes = before is not None and after is not None and before.sha == after.sha
        old_bytes = read_old(before) if needs_bytes(before) and not same_bytes else None
        new_bytes = read_new(after) if needs_bytes(after) and not same_bytes else None
        if same_bytes:
            old_bytes = new_bytes = b""
        elif (before is not None and old_bytes is None) or (after is not None and new_bytes is None):
            old_bytes, new_bytes = (b"\0" if before else None), (b"\0" if after else None)  # too large: binary
        diffs.append(
            textdiff.diff_bytes(
                old_bytes,
                new_bytes,
                path if before else None,
                path if after else None,
                old_mode=before.mode if before else "",
                new_mode=after.mode if after else "",
                old_size=before.size if before else None,
                new_size=after.size if after else None,
            )
        )
    return diffs


NO_BYTES = (lambda entry: b"", lambda entry: b"")  # a diff of names and modes only


def diff_workdir(
    start: Path, options: ops.ClientOptions, paths: Sequence[str] = (), content: bool = True
) -> DiffResult:
    """The working files against the local version. The local version's bytes of
    the files you changed are fetched from the service (only those); without
    ``content`` (names and A/M/D only) nothing is: that is known offline."""
    root, meta, local = ops.open_workdir(start)
    changes = restrict(
        diff_manifests(meta.manifest, local), [ops.relative_to_root(root, start, path) for path in paths]
    )
    if not content:
        return DiffResult(meta.repository, meta.version, None, diff_entries(meta.manifest, local, changes, *NO_BYTES))
    wanted = [meta.manifest[path] for path in changes.modified + changes.deleted if needs_bytes(meta.manifest[path])]
    contents = ops.Contents(root, local)
    try:
        if shas := ops.missing_shas(wanted, local):
            with ops.options_link(options, meta, root) as connection:
                version = meta.version
                contents.responses.append(ops.fetch_version(connection, meta.repository, version, version, shas))
        diffs = diff_entries(meta.manifest, local, changes, contents.read, contents.read)
    finally:
        contents.close()
    return DiffResult(meta.repository, meta.version, None, diffs)


def restrict(changes: Changes, paths: Sequence[str]) -> Changes:
    if not paths:
        return changes
    keep = set(select_paths(changes.paths, paths))
    return Changes(
        added=[x for x in changes.added if x in keep],
        modified=[x for x in changes.modified if x in keep],
        deleted=[x for x in changes.deleted if x in keep],
    )


def diff_versions(
    start: Path, options: ops.ClientOptions, repo: str | None, old: int, new: int, paths: Sequence[str] = ()
) -> DiffResult:
    """Two versions on the service: each answer brings one side's tree and the
    contents of it that the other side lacks, which are exactly those a diff shows."""
    repo, meta, root = ops.resolve_repo(start, repo)
    if root is not None:  # paths as typed where the command runs
        paths = [ops.relative_to_root(root, start, path) for path in paths]
    with ops.options_link(options, meta, root) as connection:
        old_side = ops.fetch_version(connection, repo, new, old, asked=True)
        new_side = ops.fetch_version(connection, repo, old, new, asked=True)
    contents = ops.Contents(None, responses=[old_side, new_side])
    try:
        changes = restrict(diff_manifests(old_side.manifest, new_side.manifest), paths)
        diffs = diff_entries(old_side.manifest, new_side.manifest, changes, contents.read, contents.read)
    finally:
        contents.close()
    return DiffResult(repo, old, new, diffs)


# ---------------------------------------------------------------- show


@dataclass(frozen=True)
class ShowResult:
    repository: str
    entry: p.LogEntry
    diff: DiffResult
    problem: str | None  # why its proof of authorship does not hold (None: it does)


def show_version(start: Path, options: ops.ClientOptions, version: int, repo: str | None = None) -> ShowResult:
    """A version's author, date and message, and what it changed against the one before."""
    repo, meta, root = ops.resolve_repo(start, repo)
    settings = options.settings(meta, root)
    with options.connect(settings) as connection:
        request = connection.new_request(p.LogRequest, repo=repo, limit=1, start=version)
        reply = ops.ask(connection, request).reply
        if reply.status == Status.NOT_FOUND:
            raise RepositoryNotFound(repo)
        if reply.status != Status.OK:
            raise MinigitError(f"cannot show version {version} of {repo}: {ops.said(reply)}")
        if not reply.entries or reply.entries[0].version != version:
            raise MinigitError(f"version {version} of {repo} does not exist: the head is version {reply.head}")
        entry = reply.entries[0]
        if version == 1:
            new_side = ops.fetch_version(connection, repo, 0, 1)
            old_manifest: p.Manifest = {}
            contents = ops.Contents(None, responses=[new_side])
        else:
            old_side = ops.fetch_version(connection, repo, version, version - 1, asked=True)
            new_side = ops.fetch_version(connection, repo, version - 1, version, asked=True)
            old_manifest = old_side.manifest
            contents = ops.Contents(None, responses=[old_side, new_side])
    try:
        changes = diff_manifests(old_manifest, new_side.manifest)
        diffs = diff_entries(old_manifest, new_side.manifest, changes, contents.read, contents.read)
    finally:
        contents.close()
    problem = ops.verify_entry(entry, settings.namespace, reply.server_key)
    return ShowResult(repo, entry, DiffResult(repo, max(version - 1, 0), version, diffs), problem)


# ---------------------------------------------------------------- restore


@dataclass(frozen=True)
class RestoreResult:
    repository: str
    version: int
    restored: list[str]

    def to_json(self) -> dict:
        return {"repository": self.repository, "version": self.version, "restored": self.restored}


def restore_paths(
    start: Path, options: ops.ClientOptions, paths: Sequence[str], source: int | None = None
) -> RestoreResult:
    """Put ``paths`` (files, or folders: everything under them) back as they are in
    the local version, or in version ``source``. Only what no working file holds
    is fetched. A path the version does not have is an error, as in git; a file of
    yours there that the version lacks is left alone."""
    if not paths:
        raise UsageError("say which files to restore (e.g. 'minigit restore FILE', or '.' for all)")
    root = ws.require_root(start)
    with ws.lock_workdir(root):
        meta, local = ops.read_workdir(root)
        version = source if source is not None else meta.version
        with ops.options_link(options, meta, root) as connection:
            responses = []
            if version == meta.version:
                tree = meta.manifest
            else:
                responses.append(ops.fetch_version(connection, meta.repository, version, version))
                tree = responses[0].manifest
            chosen = pick_paths(tree, paths, root, start)
            wanted = [tree[path] for path in chosen if local.get(path) != tree[path]]
            if shas := ops.missing_shas(wanted, local):
                responses.append(ops.fetch_version(connection, meta.repository, version, version, shas))
        contents = ops.Contents(root, local, responses)
        try:
            restored = [path for path in chosen if local.get(path) != tree[path]]
            ops.install_entries(root, {path: tree[path] for path in restored}, local, contents.read)
        finally:
            contents.close()
        return RestoreResult(meta.repository, version, restored)


def pick_paths(tree: Mapping[str, p.FileEntry], paths: Sequence[str], root: Path, start: Path) -> list[str]:
    """The tree's paths named by ``paths`` (relative to ``start``, inside ``root``)."""
    chosen: set[str] = set()
    for given in paths:
        rel = ops.relative_to_root(root, start, given)
        matched = select_paths(tree, [rel])
        if not matched:
            raise MinigitError(f"pathspec '{given}' did not match any file known to minigit")
        chosen.update(matched)
    return sorted(chosen)


# ---------------------------------------------------------------- repos


@dataclass(frozen=True)
class ReposResult:
    server: str
    repos: list[p.RepoInfo]

    def to_json(self) -> dict:
        return {"server": self.server, "repositories": [info.to_dict() for info in self.repos]}


def list_repositories(start: Path, options: ops.ClientOptions, page_size: int = 200) -> ReposResult:
    """Every repository you may read, with its head and last change, by pages."""
    settings = ops.settings_here(start, options)
    found: list[p.RepoInfo] = []
    with options.connect(settings) as connection:
        user = connection.credentials.user
        after = ""
        while True:
            request = connection.new_request(p.ReposRequest, repo=user, after=after, limit=page_size)
            reply = ops.ask(connection, request).reply
            if reply.status != Status.OK:
                raise MinigitError(f"repos failed: {ops.said(reply)}")
            page = [info for info in reply.repos if info.name > after]
            found += page
            if not reply.more or not page:
                break
            after = page[-1].name
    return ReposResult(settings.bootstrap, found)


# ---------------------------------------------------------------- remote


@dataclass(frozen=True)
class RemoteResult:
    repository: str
    bootstrap: str
    namespace: str

    def to_json(self) -> dict:
        return {"repository": self.repository, "bootstrap": self.bootstrap, "namespace": self.namespace}


def show_remote(start: Path) -> RemoteResult:
    root = ws.require_root(start)
    meta = ws.read_metadata(root)
    return RemoteResult(meta.repository, meta.bootstrap, meta.namespace)


def set_remote(start: Path, bootstrap: str, namespace: str | None = None) -> RemoteResult:
    """Point this working directory at another address of the service (checked
    as --bootstrap is); the repository and version stay."""
    resolved = ServerFlags.parse(bootstrap, namespace).resolve()
    root = ws.require_root(start)
    with ws.lock_workdir(root):
        meta = ws.read_metadata(root)
        new_namespace = resolved.namespace if namespace is not None else meta.namespace
        ws.write_metadata(root, dataclasses.replace(meta, bootstrap=resolved.bootstrap, namespace=new_namespace))
    return RemoteResult(meta.repository, resolved.bootstrap, new_namespace)
