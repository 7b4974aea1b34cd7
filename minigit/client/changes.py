"""Pure decisions of the client: what changed, and what a pull may do.

No disk, no Kafka: manifests in, plans out. The workspace layer carries them out.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from minigit.protocol import FileEntry, FileMode, Manifest


@dataclass(frozen=True)
class Changes:
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.modified or self.deleted)

    @property
    def paths(self) -> set[str]:
        return {*self.added, *self.modified, *self.deleted}

    def to_json(self) -> dict[str, list[str]]:
        return {"added": self.added, "modified": self.modified, "deleted": self.deleted}


def same_content(a: FileEntry | None, b: FileEntry | None) -> bool:
    """Same bytes and same mode: a ``chmod +x`` alone is a change."""
    return (a and (a.sha, a.mode)) == (b and (b.sha, b.mode))


def diff_manifests(old: Mapping[str, FileEntry], new: Mapping[str, FileEntry]) -> Changes:
    return Changes(
        added=sorted(path for path in new if path not in old),
        modified=sorted(path for path in new if path in old and not same_content(old[path], new[path])),
        deleted=sorted(path for path in old if path not in new),
    )


@dataclass(frozen=True)
class PullPlan:
    """What a pull writes and deletes, which files it must merge, or why it must
    not touch anything (``collisions``)."""

    upstream: Changes  # base -> head
    write: dict[str, FileEntry]  # path -> content to put there
    delete: list[str]
    conflicts: list[str]  # changed on both sides, differently: merged (see resolve_conflict)
    kept_local: list[str]  # local edits left as they are
    collisions: list[str] = field(default_factory=list)  # would be both a file and a folder: refuse

    @property
    def refused(self) -> bool:
        return bool(self.collisions)


def plan_pull(base: Manifest, local: Manifest, head: Manifest) -> PullPlan:
    """Bring ``local`` (the working files, based on ``base``) to ``head``.

    Upstream changes are applied; local edits to other files are kept. A file
    changed on both sides is a conflict to merge, unless both sides made it the
    same. An untracked local file where upstream adds one counts as a local edit.
    A pull that would leave a path both a file and a folder touches nothing.
    """
    upstream = diff_manifests(base, head)
    mine = diff_manifests(base, local).paths
    write: dict[str, FileEntry] = {}
    delete: list[str] = []
    conflicts: list[str] = []
    for path in sorted(upstream.paths):
        theirs = head.get(path)
        if path in mine:
            if not same_content(local.get(path), theirs):
                conflicts.append(path)
            continue
        if theirs is None:
            delete.append(path)
        else:
            write[path] = theirs
    # a conflict's file stays (merged, or yours) unless both sides deleted it
    kept = {path: local[path] for path in conflicts if path in local}
    collisions = find_path_collisions({**local, **kept}, {**write, **pick(head, conflicts)}, delete)
    return PullPlan(
        upstream=upstream,
        write={} if collisions else write,
        delete=[] if collisions else delete,
        conflicts=conflicts,
        kept_local=sorted(mine - upstream.paths),
        collisions=collisions,
    )


def pick(manifest: Mapping[str, FileEntry], paths: list[str]) -> dict[str, FileEntry]:
    return {path: manifest[path] for path in paths if path in manifest}


class Resolution(enum.StrEnum):
    """What a pull does with a file changed on both sides."""

    MERGE = "merge"  # a three-way line merge (text); keep both if it is not text
    KEEP_BOTH = "keep-both"  # yours stays at PATH, theirs is written to PATH.theirs
    KEEP_YOURS = "keep-yours"  # you edited it, upstream deleted it: yours stays (to push again, or delete)
    TAKE_THEIRS = "take-theirs"  # you deleted it, upstream edited it: theirs comes back (delete it again)


class Strategy(enum.StrEnum):
    """``pull --ours`` / ``--theirs``: decide every conflict one way, without markers."""

    MERGE = "merge"
    OURS = "ours"
    THEIRS = "theirs"


def resolve_conflict(local: FileEntry | None, head: FileEntry | None) -> Resolution:
    """How a conflict is resolved, from the two sides' entries alone (whether the
    content is text is known only once its bytes are read: MERGE falls back to
    KEEP_BOTH then). A link is never line-merged."""
    if head is None:
        return Resolution.KEEP_YOURS
    if local is None:
        return Resolution.TAKE_THEIRS
    if FileMode.SYMLINK in (local.mode, head.mode):
        return Resolution.KEEP_BOTH
    return Resolution.MERGE


def merged_mode(base: FileEntry | None, local: FileEntry, head: FileEntry) -> FileMode:
    """The mode a merged file gets: upstream's, unless you changed yours."""
    if base is not None and local.mode == base.mode:
        return head.mode
    return local.mode


THEIRS_SUFFIX = ".theirs"
ORIG_SUFFIX = ".orig"


def find_path_collisions(
    local: Mapping[str, FileEntry], write: Mapping[str, FileEntry], delete: list[str]
) -> list[str]:
    """Local files that would have to be both a file and a directory after the pull
    (upstream adds ``a/b`` where a local ``a`` stays, or the other way round)."""
    final = (set(local) - set(delete)) | set(write)
    return sorted(final & parent_directories(final))


def parent_directories(paths: set[str]) -> set[str]:
    parents = set()
    for path in paths:
        parts = path.split("/")[:-1]
        parents.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return parents
