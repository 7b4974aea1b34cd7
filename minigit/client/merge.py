"""Three-way merge of text files, line by line, like ``git merge-file``.

Pure: bytes in, bytes out. Lines keep their endings (``\\n``, ``\\r\\n``, or none
on the last line), so whatever merges cleanly comes out byte for byte as the
sides wrote it. Where both sides changed the same lines differently the result
holds both versions between git's conflict markers.

Also the line diff that both the merge and ``textdiff`` stand on: difflib-style
opcodes, found by Myers' algorithm when the files are close (difflib's matcher
takes seconds on a large file with many repeated lines, such as blank ones).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

MAX_MERGE_BYTES = 8 * 1024 * 1024  # larger files are not merged (nor diffed) line by line
BINARY_PROBE_BYTES = 8000  # git looks for a NUL byte this far
MAX_EDIT_DISTANCE = 2000  # Myers gives up past this many inserted plus deleted lines

Opcode = tuple[str, int, int, int, int]  # as difflib: tag, a start, a end, b start, b end
Block = tuple[int, int, int]  # a start, b start, length of lines equal on both sides


def is_text(data: bytes) -> bool:
    """git's rule: binary when a NUL byte is among the first 8000; also too large to merge."""
    return len(data) <= MAX_MERGE_BYTES and b"\0" not in data[:BINARY_PROBE_BYTES]


def split_lines(data: bytes) -> list[bytes]:
    """Lines with their endings; only ``\\n`` ends a line (bytes.splitlines also splits at a lone ``\\r``)."""
    lines = data.split(b"\n")
    last = lines.pop()
    keep = [line + b"\n" for line in lines]
    if last:
        keep.append(last)
    return keep


# ---------------------------------------------------------------- line diff


def diff_lines(a: Sequence[bytes], b: Sequence[bytes]) -> list[Opcode]:
    """What turns lines ``a`` into lines ``b``, as ``difflib.SequenceMatcher.get_opcodes`` says it."""
    return opcodes_from_blocks(match_lines(a, b), len(a), len(b))


def match_lines(a: Sequence[bytes], b: Sequence[bytes]) -> list[Block]:
    """Lines equal on both sides, in order, as runs (no two runs adjacent)."""
    head = count_common_prefix(a, b)
    tail = count_common_suffix(a[head:], b[head:])
    ids: dict[bytes, int] = {}
    # small ints compare faster than lines, and equal lines get one id
    middle_a = [ids.setdefault(line, len(ids)) for line in a[head : len(a) - tail]]
    middle_b = [ids.setdefault(line, len(ids)) for line in b[head : len(b) - tail]]
    middle = find_blocks_myers(middle_a, middle_b, MAX_EDIT_DISTANCE)
    if middle is None:
        middle = find_blocks_difflib(middle_a, middle_b)
    shifted = [(i + head, j + head, size) for i, j, size in middle]
    return join_blocks([(0, 0, head), *shifted, (len(a) - tail, len(b) - tail, tail)])


def count_common_prefix(a: Sequence[bytes], b: Sequence[bytes]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def count_common_suffix(a: Sequence[bytes], b: Sequence[bytes]) -> int:
    count = 0
    for x, y in zip(reversed(a), reversed(b), strict=False):
        if x != y:
            break
        count += 1
    return count


def find_blocks_myers(a: list[int], b: list[int], max_d: int) -> list[Block] | None:
    """Myers' O((N+M)D) shortest edit script; None when it needs more than ``max_d`` edits."""
    n, m = len(a), len(b)
    offset = max_d + 1
    v = [0] * (2 * max_d + 3)  # v[offset + k]: furthest x reached on diagonal k = x - y
    trace: list[list[int]] = []
    for d in range(max_d + 1):
        trace.append(v[offset - d - 1 : offset + d + 2])  # what step d reads, kept to walk back
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and v[offset + k - 1] < v[offset + k + 1]):
                x = v[offset + k + 1]  # down: a line of b inserted
            else:
                x = v[offset + k - 1] + 1  # right: a line of a deleted
            y = x - k
            while x < n and y < m and a[x] == b[y]:
                x += 1
                y += 1
            v[offset + k] = x
            if x >= n and y >= m:
                return walk_back(trace, n, m)
    return None


def walk_back(trace: list[list[int]], x: int, y: int) -> list[Block]:
    """The diagonal runs of the path that ends at (x, y), first run first."""
    blocks: list[Block] = []
    for d in range(len(trace) - 1, -1, -1):
        saved, low = trace[d], -d - 1  # saved[i] is v[low + i] as step d found it
        k = x - y
        down = k == -d or (k != d and saved[k - 1 - low] < saved[k + 1 - low])
        prev_k = k + 1 if down else k - 1
        prev_x = saved[prev_k - low]
        run_x = prev_x if down else prev_x + 1  # where the snake of step d began
        if x > run_x:
            blocks.append((run_x, run_x - k, x - run_x))
        x, y = prev_x, prev_x - prev_k
    blocks.reverse()
    return blocks


def find_blocks_difflib(a: list[int], b: list[int]) -> list[Block]:
    # only for files far apart: with autojunk off difflib takes seconds on a large
    # file with popular lines (blank ones); with it on, the diff is barely longer
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=True)
    return [(i, j, size) for i, j, size in matcher.get_matching_blocks() if size]


def join_blocks(blocks: list[Block]) -> list[Block]:
    """Drop empty runs and join runs that touch, as difflib's matching blocks are."""
    joined: list[Block] = []
    for i, j, size in blocks:
        if not size:
            continue
        if joined and joined[-1][0] + joined[-1][2] == i and joined[-1][1] + joined[-1][2] == j:
            joined[-1] = (joined[-1][0], joined[-1][1], joined[-1][2] + size)
        else:
            joined.append((i, j, size))
    return joined


def opcodes_from_blocks(blocks: list[Block], len_a: int, len_b: int) -> list[Opcode]:
    opcodes: list[Opcode] = []
    i = j = 0
    for block_i, block_j, size in [*blocks, (len_a, len_b, 0)]:
        if i < block_i and j < block_j:
            opcodes.append(("replace", i, block_i, j, block_j))
        elif i < block_i:
            opcodes.append(("delete", i, block_i, j, block_j))
        elif j < block_j:
            opcodes.append(("insert", i, block_i, j, block_j))
        if size:
            opcodes.append(("equal", block_i, block_i + size, block_j, block_j + size))
        i, j = block_i + size, block_j + size
    return opcodes


# ---------------------------------------------------------------- merge


@dataclass(frozen=True)
class MergeResult:
    content: bytes  # merged bytes, with conflict markers where both sides changed the same lines
    conflicts: int  # conflicting regions; 0 is a clean merge

    @property
    def clean(self) -> bool:
        return not self.conflicts


@dataclass(frozen=True)
class Hunk:
    """Base lines [base_start, base_end) became side lines [side_start, side_end)."""

    base_start: int
    base_end: int
    side_start: int
    side_end: int


@dataclass(frozen=True)
class Chunk:
    """Base lines [base_start, base_end) and the hunks of each side within them."""

    base_start: int
    base_end: int
    ours: tuple[Hunk, ...]
    theirs: tuple[Hunk, ...]


def merge_text(
    base: bytes, ours: bytes, theirs: bytes, ours_label: str = "yours", theirs_label: str = "theirs"
) -> MergeResult | None:
    """Merge the changes base -> ours and base -> theirs; None when any of the three is not text."""
    if not (is_text(base) and is_text(ours) and is_text(theirs)):
        return None
    if ours in (theirs, base):
        return MergeResult(theirs, 0)
    if theirs == base:
        return MergeResult(ours, 0)
    base_lines, our_lines, their_lines = split_lines(base), split_lines(ours), split_lines(theirs)
    chunks = group_hunks(find_hunks(base_lines, our_lines), find_hunks(base_lines, their_lines))
    markers = conflict_markers(ours_label, theirs_label, choose_line_end(our_lines, their_lines))
    out: list[bytes] = []
    conflicts = 0
    done = 0  # base lines before this are written
    for chunk in chunks:
        out.extend(base_lines[done : chunk.base_start])
        ours_part = side_lines(base_lines, our_lines, chunk, chunk.ours)
        theirs_part = side_lines(base_lines, their_lines, chunk, chunk.theirs)
        if not chunk.theirs or ours_part == theirs_part:
            out.extend(ours_part)
        elif not chunk.ours:
            out.extend(theirs_part)
        else:
            out.extend(write_conflict(ours_part, theirs_part, markers))
            conflicts += 1
        done = chunk.base_end
    out.extend(base_lines[done:])
    return MergeResult(b"".join(out), conflicts)


def find_hunks(base_lines: Sequence[bytes], side_lines: Sequence[bytes]) -> list[Hunk]:
    return [Hunk(i1, i2, j1, j2) for tag, i1, i2, j1, j2 in diff_lines(base_lines, side_lines) if tag != "equal"]


def group_hunks(ours: list[Hunk], theirs: list[Hunk]) -> list[Chunk]:
    """Chunks of hunks that overlap or touch in the base, like git: an edit next to the
    other side's edit is a conflict too (two insertions at one place are one chunk)."""
    tagged = sorted([(hunk, True) for hunk in ours] + [(hunk, False) for hunk in theirs], key=lambda e: e[0].base_start)
    groups: list[tuple[int, int, list[Hunk], list[Hunk]]] = []
    for hunk, is_ours in tagged:
        if not groups or hunk.base_start > groups[-1][1]:
            groups.append((hunk.base_start, hunk.base_end, [], []))
        start, end, our_hunks, their_hunks = groups[-1]
        (our_hunks if is_ours else their_hunks).append(hunk)
        groups[-1] = (start, max(end, hunk.base_end), our_hunks, their_hunks)
    return [Chunk(start, end, tuple(o), tuple(t)) for start, end, o, t in groups]


def side_lines(base_lines: list[bytes], lines: list[bytes], chunk: Chunk, hunks: tuple[Hunk, ...]) -> list[bytes]:
    """The side's lines for the chunk's base lines; between and around its hunks
    the side equals the base line for line, so the offsets carry over."""
    if not hunks:
        return base_lines[chunk.base_start : chunk.base_end]
    start = hunks[0].side_start - (hunks[0].base_start - chunk.base_start)
    end = hunks[-1].side_end + (chunk.base_end - hunks[-1].base_end)
    return lines[start:end]


def choose_line_end(*sides: list[bytes]) -> bytes:
    """``\\r\\n`` for the markers when most lines of the sides end so."""
    crlf = ended = 0
    for lines in sides:
        for line in lines:
            ended += line.endswith(b"\n")
            crlf += line.endswith(b"\r\n")
    return b"\r\n" if crlf * 2 > ended else b"\n"


def conflict_markers(ours_label: str, theirs_label: str, line_end: bytes) -> tuple[bytes, bytes, bytes]:
    return (
        b"<<<<<<< " + ours_label.encode() + line_end,
        b"=======" + line_end,
        b">>>>>>> " + theirs_label.encode() + line_end,
    )


def write_conflict(ours: list[bytes], theirs: list[bytes], markers: tuple[bytes, bytes, bytes]) -> list[bytes]:
    start, middle, end = markers
    line_end = middle[len(b"=======") :]
    return [start, *end_last_line(ours, line_end), middle, *end_last_line(theirs, line_end), end]


def end_last_line(lines: list[bytes], line_end: bytes) -> list[bytes]:
    # a side's last line may lack its newline; the marker after it must still start a line
    if lines and not lines[-1].endswith(b"\n"):
        return [*lines[:-1], lines[-1] + line_end]
    return lines


def has_conflict_markers(data: bytes) -> bool:
    """A ``<<<<<<< `` line, later a ``=======`` line, later a ``>>>>>>> `` line."""
    if b"<<<<<<< " not in data:
        return False
    wanted = 0  # which of the three markers comes next
    for line in split_lines(data):
        if wanted == 0 and line.startswith(b"<<<<<<< "):
            wanted = 1
        elif wanted == 1 and line.rstrip(b"\r\n") == b"=======":
            wanted = 2
        elif wanted == 2 and line.startswith(b">>>>>>> "):
            return True
    return False
