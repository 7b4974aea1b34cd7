"""Diffs of files for people to read: unified diffs, ``--stat`` and ``--name-status``, as git prints them.

Pure: the caller hands over the bytes of both versions and prints what comes back.
"""

from __future__ import annotations

from dataclasses import dataclass

from minigit.client.merge import Opcode, diff_lines, is_text, split_lines

NO_NEWLINE = "\\ No newline at end of file"
GIT_MODES = {"": "100644", "x": "100755", "l": "120000"}  # our file modes as git writes them


@dataclass(frozen=True)
class FileDiff:
    old_path: str | None  # None: the file is added
    new_path: str | None  # None: the file is deleted
    binary: bool  # either side is not text: "Binary files differ"
    lines: list[str]  # unified diff lines without their newline; empty when binary or the content is equal
    added: int  # lines added (0 when binary)
    removed: int  # lines removed (0 when binary)
    mode_change: tuple[str, str] | None = None  # git's octal modes, old and new, when they differ
    old_size: int = 0  # bytes, for the "Bin 100 -> 200 bytes" of --stat
    new_size: int = 0

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or ""

    @property
    def status(self) -> str:
        """git's --name-status letter: A(dded), D(eleted) or M(odified)."""
        if self.old_path is None:
            return "A"
        return "D" if self.new_path is None else "M"


def diff_mode(old_mode: str, new_mode: str) -> tuple[str, str] | None:
    """Git's octal text of both modes ("" regular, "x" executable, "l" symlink); None when equal."""
    if old_mode == new_mode:
        return None
    return GIT_MODES[old_mode], GIT_MODES[new_mode]


def diff_bytes(
    old: bytes | None,
    new: bytes | None,
    old_path: str | None,
    new_path: str | None,
    context: int = 3,
    *,
    old_mode: str = "",
    new_mode: str = "",
    old_size: int | None = None,
    new_size: int | None = None,
) -> FileDiff:
    """What ``git diff`` shows for one file; ``None`` content (and path) for the missing side."""
    old_data, new_data = old or b"", new or b""
    changed = old_data != new_data
    binary = changed and not (is_text(old_data) and is_text(new_data))
    shown = changed and not binary
    lines, added, removed = diff_text(old_data, new_data, old_path, new_path, context) if shown else ([], 0, 0)
    return FileDiff(
        old_path=old_path,
        new_path=new_path,
        binary=binary,
        lines=lines,
        added=added,
        removed=removed,
        # a mode changes only on a file that stays
        mode_change=diff_mode(old_mode, new_mode) if old is not None and new is not None else None,
        old_size=len(old_data) if old_size is None else old_size,
        new_size=len(new_data) if new_size is None else new_size,
    )


def diff_text(
    old_data: bytes, new_data: bytes, old_path: str | None, new_path: str | None, context: int
) -> tuple[list[str], int, int]:
    """The unified diff lines, and the counts of lines added and removed."""
    old_lines, new_lines = split_lines(old_data), split_lines(new_data)
    opcodes = diff_lines(old_lines, new_lines)
    lines = [f"--- {label_path('a', old_path)}", f"+++ {label_path('b', new_path)}"]
    for group in group_opcodes(opcodes, context):
        lines.extend(format_hunk(group, old_lines, new_lines))
    added = sum(j2 - j1 for tag, _, _, j1, j2 in opcodes if tag != "equal")
    removed = sum(i2 - i1 for tag, i1, i2, _, _ in opcodes if tag != "equal")
    return lines, added, removed


def label_path(side: str, path: str | None) -> str:
    return f"{side}/{path}" if path is not None else "/dev/null"


def group_opcodes(opcodes: list[Opcode], context: int) -> list[list[Opcode]]:
    """The hunks: changes with ``context`` equal lines around them, joined when
    closer than twice that (``difflib.SequenceMatcher.get_grouped_opcodes``)."""
    codes = list(opcodes)
    if not codes:
        return []
    if codes[0][0] == "equal":
        tag, i1, i2, j1, j2 = codes[0]
        codes[0] = tag, max(i1, i2 - context), i2, max(j1, j2 - context), j2
    if codes[-1][0] == "equal":
        tag, i1, i2, j1, j2 = codes[-1]
        codes[-1] = tag, i1, min(i2, i1 + context), j1, min(j2, j1 + context)
    groups: list[list[Opcode]] = []
    group: list[Opcode] = []
    for tag, i1, i2, j1, j2 in codes:
        if tag == "equal" and i2 - i1 > 2 * context:
            group.append((tag, i1, min(i2, i1 + context), j1, min(j2, j1 + context)))
            groups.append(group)
            group = []
            i1, j1 = max(i1, i2 - context), max(j1, j2 - context)
        group.append((tag, i1, i2, j1, j2))
    groups.append(group)
    return [g for g in groups if not all(op[0] == "equal" for op in g)]


def format_hunk(group: list[Opcode], old_lines: list[bytes], new_lines: list[bytes]) -> list[str]:
    first, last = group[0], group[-1]
    lines = [f"@@ -{format_range(first[1], last[2])} +{format_range(first[3], last[4])} @@"]
    for tag, i1, i2, j1, j2 in group:
        if tag == "equal":
            lines.extend(show_lines(" ", old_lines[i1:i2]))
        else:
            lines.extend(show_lines("-", old_lines[i1:i2]))
            lines.extend(show_lines("+", new_lines[j1:j2]))
    return lines


def format_range(start: int, stop: int) -> str:
    """``start,length`` counted from 1, as unified diffs write it (an empty range names the line before)."""
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start + 1 if length else start},{length}"


def show_lines(prefix: str, lines: list[bytes]) -> list[str]:
    shown = []
    for line in lines:
        ended = line.endswith(b"\n")
        # for display: a file need not be UTF-8
        shown.append(prefix + (line[:-1] if ended else line).decode("utf-8", errors="replace"))
        if not ended:
            shown.append(NO_NEWLINE)
    return shown


# ---------------------------------------------------------------- summaries


def format_name_status(diffs: list[FileDiff]) -> list[str]:
    return [f"{diff.status}\t{diff.path}" for diff in diffs]


def stat_name(diff: FileDiff) -> str:
    if diff.old_path is not None and diff.new_path is not None and diff.old_path != diff.new_path:
        return f"{diff.old_path} => {diff.new_path}"
    return diff.path


@dataclass(frozen=True)
class StatLayout:
    name_width: int
    number_width: int
    graph_width: int
    max_change: int


def format_stat(diffs: list[FileDiff], width: int = 80) -> list[str]:
    """git's ``--stat``: a line per file, its +/- bar scaled to fit ``width``, then the totals."""
    if not diffs:
        return []
    names = [stat_name(diff) for diff in diffs]
    layout = plan_stat_layout(diffs, names, width)
    lines = [format_stat_line(diff, name, layout) for diff, name in zip(diffs, names, strict=True)]
    lines.append(format_stat_summary(diffs))
    return lines


def plan_stat_layout(diffs: list[FileDiff], names: list[str], width: int) -> StatLayout:
    """git's diff.c show_stats: the name and the graph share what the
    `` | NNN `` column leaves, the graph taking at most 3/8 when both do not fit."""
    max_change = max((diff.added + diff.removed for diff in diffs if not diff.binary), default=0)
    bin_width = max((14 + len(str(d.old_size)) + len(str(d.new_size)) for d in diffs if d.binary), default=0)
    number_width = max(len(str(max_change)), 3 if bin_width else 0)  # "Bin" lines up with the counts
    width = max(width, 16 + 6 + number_width)
    graph_width = max_change if max_change + 4 > bin_width else bin_width - 4
    name_width = max(len(name) for name in names)
    if name_width + number_width + 6 + graph_width > width:
        if graph_width > width * 3 // 8 - number_width - 6:
            graph_width = max(width * 3 // 8 - number_width - 6, 6)
        if name_width > width - number_width - 6 - graph_width:
            name_width = width - number_width - 6 - graph_width
        else:
            graph_width = width - number_width - 6 - name_width
    return StatLayout(name_width, number_width, graph_width, max_change)


def format_stat_line(diff: FileDiff, name: str, layout: StatLayout) -> str:
    shown = fit_name(name, layout.name_width)
    head = f" {shown}{' ' * (layout.name_width - len(shown))} | "
    if diff.binary:
        sizes = f" {diff.old_size} -> {diff.new_size} bytes" if diff.old_size or diff.new_size else ""
        return f"{head}{'Bin':>{layout.number_width}}{sizes}"
    plus, minus = scale_bar(diff.added, diff.removed, layout)
    count = diff.added + diff.removed
    return f"{head}{count:>{layout.number_width}}{' ' if count else ''}{'+' * plus}{'-' * minus}"


def fit_name(name: str, width: int) -> str:
    """A name too long keeps its end, from a directory boundary when it can: ``.../dir/file``."""
    if len(name) <= width:
        return name
    tail = name[len(name) - max(width - 3, 0) :]
    slash = tail.find("/")
    return "..." + (tail[slash:] if slash >= 0 else tail)


def scale_bar(added: int, removed: int, layout: StatLayout) -> tuple[int, int]:
    if layout.graph_width > layout.max_change:
        return added, removed
    total = scale_linear(added + removed, layout)
    if total < 2 and added and removed:
        total = 2  # both signs shown when there are both
    if added < removed:
        plus = scale_linear(added, layout)
        return plus, total - plus
    minus = scale_linear(removed, layout)
    return total - minus, minus


def scale_linear(count: int, layout: StatLayout) -> int:
    # at least one sign for any change: scale to one column less, then add it
    if not count:
        return 0
    return 1 + count * (layout.graph_width - 1) // layout.max_change


def format_stat_summary(diffs: list[FileDiff]) -> str:
    """`` 3 files changed, 10 insertions(+), 2 deletions(-)``: git leaves out a zero
    count unless both are zero, and binary files count no lines."""
    files = len(diffs)
    insertions = sum(diff.added for diff in diffs if not diff.binary)
    deletions = sum(diff.removed for diff in diffs if not diff.binary)
    parts = [f" {files} file{'s' if files != 1 else ''} changed"]
    if insertions or not deletions:
        parts.append(f"{insertions} insertion{'s' if insertions != 1 else ''}(+)")
    if deletions or not insertions:
        parts.append(f"{deletions} deletion{'s' if deletions != 1 else ''}(-)")
    return ", ".join(parts)
