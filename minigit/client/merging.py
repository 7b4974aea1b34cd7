"""What a pull writes for the files changed on both sides.

Given the three sides' entries and a way to read their bytes, decide each
conflict (``changes.resolve_conflict``), merge text line by line
(``merge.merge_text``), and say what to write: merged bytes, upstream's file
beside yours (``PATH.theirs``), or yours kept. Nothing here touches the disk
or the network; the pull stages and installs what this returns, with its other
writes, all or nothing.

Nothing you wrote is lost: a conflicted merge keeps your lines between
markers, a file that cannot be merged stays as you left it (upstream's beside
it), and ``--theirs`` keeps your version as ``PATH.orig``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from minigit import protocol as p
from minigit.client.changes import ORIG_SUFFIX, THEIRS_SUFFIX, Resolution, Strategy, merged_mode, resolve_conflict
from minigit.client.merge import merge_text
from minigit.client.workspace import ConflictKind
from minigit.errors import PullConflict

Read = Callable[[p.FileEntry], bytes]


@dataclass(frozen=True)
class ConflictReport:
    """How one file changed on both sides was settled, for the command's output."""

    path: str
    resolution: str  # merged | conflict | both | kept-yours | took-theirs | ours | theirs
    note: str = ""

    def to_json(self) -> dict:
        return {"path": self.path, "resolution": self.resolution, "note": self.note}


@dataclass
class MergeWrites:
    """What the pull installs for its conflicts, beside its plan's own writes."""

    contents: dict[str, tuple[bytes, p.FileMode]] = field(default_factory=dict)  # path -> bytes to write
    entries: dict[str, p.FileEntry] = field(default_factory=dict)  # path -> a version's content (.theirs)
    delete: list[str] = field(default_factory=list)
    unresolved: dict[str, ConflictKind] = field(default_factory=dict)
    reports: list[ConflictReport] = field(default_factory=list)


def needs_base(conflicts: list[str], base: Mapping, local: Mapping, head: Mapping) -> list[p.FileEntry]:
    """The base entries a line merge of ``conflicts`` reads."""
    return [
        base[path]
        for path in conflicts
        if path in base and resolve_conflict(local.get(path), head.get(path)) == Resolution.MERGE
    ]


def settle_conflicts(
    conflicts: list[str],
    base: Mapping[str, p.FileEntry],
    local: Mapping[str, p.FileEntry],
    head: Mapping[str, p.FileEntry],
    read: Read,
    strategy: Strategy = Strategy.MERGE,
    theirs_label: str = "theirs",
    taken: Callable[[str], bool] = lambda path: False,
) -> MergeWrites:
    """Decide every conflict. ``read`` gives any side's bytes; ``taken`` says whether
    a path beside a file (``.theirs``, ``.orig``) is already used, which refuses."""
    writes = MergeWrites()
    for path in conflicts:
        ours, theirs, was = local.get(path), head.get(path), base.get(path)
        if strategy == Strategy.OURS:
            writes.reports.append(ConflictReport(path, "ours", "kept your version"))
        elif strategy == Strategy.THEIRS:
            take_theirs(writes, path, ours, theirs, taken)
        else:
            merge_one(writes, path, was, ours, theirs, read, theirs_label, taken)
    return writes


def take_theirs(
    writes: MergeWrites, path: str, ours: p.FileEntry | None, theirs: p.FileEntry | None, taken: Callable
) -> None:
    note = "took upstream's version"
    if ours is not None:
        writes.entries[beside(path, ORIG_SUFFIX, taken)] = ours
        note += f"; yours is kept as {path}{ORIG_SUFFIX}"
    if theirs is None:
        writes.delete.append(path)
    else:
        writes.entries[path] = theirs
    writes.reports.append(ConflictReport(path, "theirs", note))


def merge_one(
    writes: MergeWrites,
    path: str,
    was: p.FileEntry | None,
    ours: p.FileEntry | None,
    theirs: p.FileEntry | None,
    read: Read,
    theirs_label: str,
    taken: Callable,
) -> None:
    resolution = resolve_conflict(ours, theirs)
    if resolution == Resolution.KEEP_YOURS:
        writes.reports.append(ConflictReport(path, "kept-yours", "deleted upstream; your edited version stays"))
        return
    if resolution == Resolution.TAKE_THEIRS:
        writes.entries[path] = theirs
        writes.reports.append(ConflictReport(path, "took-theirs", "you deleted it; upstream changed it: it is back"))
        return
    assert ours is not None and theirs is not None
    result = None
    if resolution == Resolution.MERGE:
        result = merge_text(read(was) if was else b"", read(ours), read(theirs), "yours", theirs_label)
    if result is None:  # a link, or not text: both stay, nothing is guessed
        writes.entries[beside(path, THEIRS_SUFFIX, taken)] = theirs
        writes.unresolved[path] = ConflictKind.THEIRS
        writes.reports.append(ConflictReport(path, "both", f"not text: upstream's version is {path}{THEIRS_SUFFIX}"))
        return
    writes.contents[path] = (result.content, merged_mode(was, ours, theirs))
    if result.clean:
        writes.reports.append(ConflictReport(path, "merged"))
    else:
        writes.unresolved[path] = ConflictKind.MARKERS
        count = f"{result.conflicts} conflict{'s' if result.conflicts != 1 else ''}"
        writes.reports.append(ConflictReport(path, "conflict", f"{count} marked in the file"))


def beside(path: str, suffix: str, taken: Callable[[str], bool]) -> str:
    """``PATH.theirs`` (or ``.orig``): refused if something is there already, rather
    than written over."""
    name = p.check_path(path + suffix)  # a name too long for a file system is refused here, before any write
    if taken(name):
        raise PullConflict([name])
    return name
