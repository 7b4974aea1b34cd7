"""Pure decisions of the client: what changed, and what a pull may do.

No disk, no Kafka: manifests in, plans out. The workspace layer carries them out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from minigit.protocol import FileEntry, Manifest


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
    """What a pull writes and deletes, or why it must not touch anything."""

    upstream: Changes  # base -> head
    write: dict[str, FileEntry]  # path -> content to put there
    delete: list[str]
    conflicts: list[str]  # local edits a pull would overwrite: refuse
    kept_local: list[str]  # local edits left as they are

    @property
    def refused(self) -> bool:
        return bool(self.conflicts)


def plan_pull(base: Manifest, local: Manifest, head: Manifest) -> PullPlan:
    """Bring ``local`` (the working files, based on ``base``) to ``head``.

    Upstream changes are applied; local edits to other files are kept. A file
    changed on both sides is a conflict, unless both sides made it the same.
    An untracked local file where upstream adds one counts as a local edit.
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
    conflicts += find_path_collisions(local, write, delete)
    return PullPlan(
        upstream=upstream,
        write={} if conflicts else write,
        delete=[] if conflicts else delete,
        conflicts=sorted(set(conflicts)),
        kept_local=sorted(mine - upstream.paths),
    )


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
