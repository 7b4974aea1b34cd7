"""minigit.client.merge: three-way line merge like git merge-file, and the line diff under it (pure)."""

from __future__ import annotations

import difflib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigit.client import merge as m
from minigit.client.merge import (
    MAX_MERGE_BYTES,
    MergeResult,
    diff_lines,
    find_blocks_myers,
    has_conflict_markers,
    is_text,
    merge_text,
    split_lines,
)

BASE = b"".join(b"line %d\n" % n for n in range(1, 13))


def edit(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1
    return data.replace(old, new)


def merged(base: bytes, ours: bytes, theirs: bytes, **labels: str) -> MergeResult:
    result = merge_text(base, ours, theirs, **labels)
    assert result is not None
    return result


# ---------------------------------------------------------------- trivial merges


def test_same_change_on_both_sides_is_clean() -> None:
    ours = edit(BASE, b"line 3\n", b"three\n")
    assert merged(BASE, ours, ours) == MergeResult(ours, 0)


def test_one_side_unchanged_takes_the_other() -> None:
    theirs = edit(BASE, b"line 3\n", b"three\n")
    assert merged(BASE, BASE, theirs) == MergeResult(theirs, 0)
    assert merged(BASE, theirs, BASE) == MergeResult(theirs, 0)


def test_clean_property() -> None:
    assert MergeResult(b"", 0).clean
    assert not MergeResult(b"", 2).clean


# ---------------------------------------------------------------- line merges


def test_edits_far_apart_both_apply() -> None:
    ours = edit(BASE, b"line 1\n", b"one\n")
    theirs = edit(BASE, b"line 10\n", b"ten\n")
    result = merged(BASE, ours, theirs)
    assert result == MergeResult(edit(edit(BASE, b"line 1\n", b"one\n"), b"line 10\n", b"ten\n"), 0)
    assert result.clean


def test_insertions_and_deletions_far_apart_both_apply() -> None:
    ours = edit(BASE, b"line 2\n", b"line 2\nafter two\n")
    theirs = edit(BASE, b"line 9\nline 10\n", b"")
    expected = edit(edit(BASE, b"line 2\n", b"line 2\nafter two\n"), b"line 9\nline 10\n", b"")
    assert merged(BASE, ours, theirs) == MergeResult(expected, 0)


def test_overlapping_edits_conflict_with_markers_and_labels() -> None:
    ours = edit(BASE, b"line 5\nline 6\n", b"mine 5\nmine 6\n")
    theirs = edit(BASE, b"line 6\n", b"their 6\n")
    result = merged(BASE, ours, theirs, ours_label="local", theirs_label="server")
    assert result.conflicts == 1
    assert result.content == (
        b"line 1\nline 2\nline 3\nline 4\n"
        b"<<<<<<< local\n"
        b"mine 5\nmine 6\n"
        b"=======\n"
        b"line 5\ntheir 6\n"
        b">>>>>>> server\n"
        b"line 7\nline 8\nline 9\nline 10\nline 11\nline 12\n"
    )


def test_default_labels_are_yours_and_theirs() -> None:
    result = merged(b"a\n", b"b\n", b"c\n")
    assert result.content == b"<<<<<<< yours\nb\n=======\nc\n>>>>>>> theirs\n"


def test_each_conflicting_region_counts() -> None:
    ours = edit(edit(BASE, b"line 2\n", b"o2\n"), b"line 10\n", b"o10\n")
    theirs = edit(edit(BASE, b"line 2\n", b"t2\n"), b"line 10\n", b"t10\n")
    result = merged(BASE, ours, theirs)
    assert result.conflicts == 2
    assert result.content.count(b"<<<<<<< yours\n") == 2


def test_edits_on_adjacent_lines_conflict_as_in_git() -> None:
    # git merge-file reports these as one conflict: nobody checked the two edits together
    ours = edit(BASE, b"line 4\n", b"four\n")
    theirs = edit(BASE, b"line 5\n", b"five\n")
    result = merged(BASE, ours, theirs)
    assert result.conflicts == 1
    assert b"<<<<<<< yours\nfour\nline 5\n=======\nline 4\nfive\n>>>>>>> theirs\n" in result.content


def test_edits_one_line_apart_merge() -> None:
    ours = edit(BASE, b"line 4\n", b"four\n")
    theirs = edit(BASE, b"line 6\n", b"six\n")
    assert merged(BASE, ours, theirs) == MergeResult(edit(ours, b"line 6\n", b"six\n"), 0)


def test_both_deleting_the_same_lines_is_clean() -> None:
    ours = edit(BASE, b"line 4\nline 5\n", b"")
    assert merged(BASE, ours, ours) == MergeResult(ours, 0)
    # and with another edit elsewhere on one side
    theirs = edit(ours, b"line 11\n", b"eleven\n")
    assert merged(BASE, ours, theirs) == MergeResult(theirs, 0)


def test_delete_against_edit_conflicts() -> None:
    ours = edit(BASE, b"line 4\n", b"")
    theirs = edit(BASE, b"line 4\n", b"four\n")
    result = merged(BASE, ours, theirs)
    assert result.conflicts == 1
    assert b"line 3\n<<<<<<< yours\n=======\nfour\n>>>>>>> theirs\nline 5\n" in result.content


def test_different_insertions_at_one_place_conflict() -> None:
    ours = edit(BASE, b"line 4\n", b"line 4\nours\n")
    theirs = edit(BASE, b"line 4\n", b"line 4\ntheirs\n")
    result = merged(BASE, ours, theirs)
    assert result.conflicts == 1
    assert b"line 4\n<<<<<<< yours\nours\n=======\ntheirs\n>>>>>>> theirs\nline 5\n" in result.content


def test_the_same_insertion_at_one_place_is_clean() -> None:
    ours = edit(BASE, b"line 4\n", b"line 4\nsame\n")
    theirs = edit(ours, b"line 12\n", b"twelve\n")
    assert merged(BASE, ours, theirs) == MergeResult(theirs, 0)


def test_insertions_at_both_ends() -> None:
    ours = b"top\n" + BASE
    theirs = BASE + b"bottom\n"
    assert merged(BASE, ours, theirs) == MergeResult(b"top\n" + BASE + b"bottom\n", 0)


def test_merging_into_an_empty_base() -> None:
    assert merged(b"", b"a\n", b"a\n") == MergeResult(b"a\n", 0)
    assert merged(b"", b"a\n", b"b\n").content == b"<<<<<<< yours\na\n=======\nb\n>>>>>>> theirs\n"


# ---------------------------------------------------------------- bytes kept exactly


def test_crlf_lines_survive_a_clean_merge() -> None:
    base = BASE.replace(b"\n", b"\r\n")
    ours = edit(base, b"line 2\r\n", b"two\r\n")
    theirs = edit(base, b"line 11\r\n", b"eleven\r\n")
    assert merged(base, ours, theirs) == MergeResult(edit(ours, b"line 11\r\n", b"eleven\r\n"), 0)


def test_mixed_line_ends_survive_a_clean_merge() -> None:
    base = b"a\r\nb\nc\r\nd\ne\r\nf\n"
    ours = b"A\r\nb\nc\r\nd\ne\r\nf\n"
    theirs = b"a\r\nb\nc\r\nd\ne\r\nF"
    assert merged(base, ours, theirs) == MergeResult(b"A\r\nb\nc\r\nd\ne\r\nF", 0)


def test_missing_final_newline_survives_a_clean_merge() -> None:
    base = BASE + b"last"
    ours = edit(base, b"line 1\n", b"one\n")
    theirs = edit(base, b"line 11\n", b"eleven\n")
    result = merged(base, ours, theirs)
    assert result == MergeResult(edit(ours, b"line 11\n", b"eleven\n"), 0)
    assert result.content.endswith(b"\nlast")


def test_one_side_adding_the_final_newline_merges() -> None:
    base = BASE + b"last"
    ours = edit(base, b"line 1\n", b"one\n")
    theirs = base + b"\n"
    assert merged(base, ours, theirs) == MergeResult(ours + b"\n", 0)


def test_a_conflict_side_without_final_newline_still_puts_markers_at_line_starts() -> None:
    result = merged(b"a\nb", b"a\nmine", b"a\ntheirs")
    assert result.content == b"a\n<<<<<<< yours\nmine\n=======\ntheirs\n>>>>>>> theirs\n"
    assert has_conflict_markers(result.content)


def test_crlf_files_get_crlf_markers() -> None:
    result = merged(b"a\r\nb\r\n", b"a\r\nx\r\n", b"a\r\ny\r\n")
    assert result.content == b"a\r\n<<<<<<< yours\r\nx\r\n=======\r\ny\r\n>>>>>>> theirs\r\n"


def test_a_lone_carriage_return_does_not_end_a_line() -> None:
    assert split_lines(b"a\rb\nc") == [b"a\rb\n", b"c"]
    assert split_lines(b"") == []
    assert split_lines(b"\n\n") == [b"\n", b"\n"]


# ---------------------------------------------------------------- binary


def test_binary_input_is_not_merged() -> None:
    assert merge_text(b"a\0", b"b\0", b"c\0") is None
    assert merge_text(b"a\n", b"\0", b"c\n") is None
    assert merge_text(b"a\n", b"b\n", b"\0") is None
    assert merge_text(b"\0", b"b\n", b"c\n") is None


def test_is_text_follows_git() -> None:
    assert is_text(b"")
    assert is_text("caf\u00e9\n".encode())
    assert is_text(b"\xff\xfe not utf-8 is still text")
    assert not is_text(b"abc\0def")
    assert not is_text(b"x" * 7999 + b"\0")
    assert is_text(b"x" * 8000 + b"\0")  # git looks no further than 8000 bytes


def test_too_large_files_are_not_text() -> None:
    assert is_text(b"x" * MAX_MERGE_BYTES)
    assert not is_text(b"x" * (MAX_MERGE_BYTES + 1))
    assert merge_text(b"x" * (MAX_MERGE_BYTES + 1), b"", b"y") is None


# ---------------------------------------------------------------- markers


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (b"<<<<<<< yours\na\n=======\nb\n>>>>>>> theirs\n", True),
        (b"x\n<<<<<<< a\n=======\n>>>>>>> b", True),
        (b"<<<<<<< a\r\n=======\r\n>>>>>>> b\r\n", True),
        (b"<<<<<<< a\nmore\n<<<<<<< b\n=======\n>>>>>>> c\n", True),
        (b"", False),
        (b"plain text\n", False),
        (b"=======\n<<<<<<< a\n>>>>>>> b\n", False),  # out of order
        (b">>>>>>> b\n=======\n<<<<<<< a\n", False),
        (b"<<<<<<< a\n>>>>>>> b\n=======\n", False),
        (b"<<<<<<< a\n========\n>>>>>>> b\n", False),  # not exactly the separator
        (b"<<<<<<<a\n=======\n>>>>>>> b\n", False),  # no space after the marker
        (b"<<<<<<< a\n=======\n>>>>>>>b\n", False),
        (b" <<<<<<< a\n=======\n>>>>>>> b\n", False),  # not at the line start
        (b"<<<<<<< a\n=======\n", False),
    ],
)
def test_has_conflict_markers(data: bytes, found: bool) -> None:
    assert has_conflict_markers(data) is found


# ---------------------------------------------------------------- properties

line = st.sampled_from([b"a\n", b"b\n", b"c\n", b"d\n", b"a\r\n", b"e\n"])


@st.composite
def texts(draw: st.DrawFn) -> bytes:
    data = b"".join(draw(st.lists(line, max_size=12)))
    if data and draw(st.booleans()):
        data = data[:-1]  # no final newline
    return data


@st.composite
def edits_of(draw: st.DrawFn, base: bytes) -> bytes:
    """A side: usually the base with a few lines replaced, deleted or inserted, so sides overlap often."""
    if draw(st.booleans()):
        return draw(texts())
    lines = split_lines(base)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(lines)))
        new = draw(st.lists(line, max_size=2))
        lines[at : at + draw(st.integers(0, 2))] = new
    return b"".join(lines)


@st.composite
def triples(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    base = draw(texts())
    return base, draw(edits_of(base)), draw(edits_of(base))


@given(texts(), texts())
def test_property_a_change_merged_with_itself(base: bytes, x: bytes) -> None:
    assert merged(base, x, x) == MergeResult(x, 0)


@given(texts(), texts())
def test_property_a_change_merged_with_no_change(base: bytes, x: bytes) -> None:
    assert merged(base, base, x) == MergeResult(x, 0)
    assert merged(base, x, base) == MergeResult(x, 0)


@settings(max_examples=300)
@given(triples())
def test_property_merge_commutes(sides: tuple[bytes, bytes, bytes]) -> None:
    base, ours, theirs = sides
    forward, backward = merged(base, ours, theirs), merged(base, theirs, ours)
    assert forward.conflicts == backward.conflicts
    if forward.clean:
        assert forward.content == backward.content


@settings(max_examples=300)
@given(triples())
def test_property_nothing_written_is_lost(sides: tuple[bytes, bytes, bytes]) -> None:
    base, ours, theirs = sides
    result = merged(base, ours, theirs)
    kept = set(split_lines(result.content))
    for side in (ours, theirs):
        for added in set(split_lines(side)) - set(split_lines(base)):
            # a conflicting side's last line gains the markers' line end
            assert added in kept or added + b"\n" in kept or added + b"\r\n" in kept


@settings(max_examples=300)
@given(triples())
def test_property_markers_only_for_conflicts(sides: tuple[bytes, bytes, bytes]) -> None:
    base, ours, theirs = sides
    result = merged(base, ours, theirs)
    lines = split_lines(result.content)
    assert lines.count(b"<<<<<<< yours\n") + lines.count(b"<<<<<<< yours\r\n") == result.conflicts
    assert has_conflict_markers(result.content) is (not result.clean)


@settings(max_examples=300)
@given(triples())
def test_property_sides_apart_merge_cleanly(sides: tuple[bytes, bytes, bytes]) -> None:
    """Edits put in different halves, with an untouched line between, always merge."""
    base, ours, theirs = sides
    ours_part = ours.removesuffix(b"\n") + b"\n"
    theirs_part = theirs.removesuffix(b"\n") + b"\n"
    base_part = base.removesuffix(b"\n") + b"\n"
    wall = b"=== untouched ===\n"
    result = merged(base_part + wall + base_part, ours_part + wall + base_part, base_part + wall + theirs_part)
    assert result == MergeResult(ours_part + wall + theirs_part, 0)


# ---------------------------------------------------------------- the line diff


def apply_opcodes(a: list[bytes], b: list[bytes], opcodes: list[m.Opcode]) -> list[bytes]:
    out: list[bytes] = []
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal":
            assert a[i1:i2] == b[j1:j2]
            out.extend(a[i1:i2])
        else:
            out.extend(b[j1:j2])
    return out


def check_opcodes(a: list[bytes], b: list[bytes], opcodes: list[m.Opcode]) -> None:
    assert apply_opcodes(a, b, opcodes) == b
    i = j = 0
    for n, (tag, i1, i2, j1, j2) in enumerate(opcodes):
        assert (i1, j1) == (i, j)  # contiguous, as difflib's
        if tag == "equal":
            assert i2 - i1 == j2 - j1 > 0
        else:
            assert tag == {(True, True): "replace", (True, False): "delete", (False, True): "insert"}[i2 > i1, j2 > j1]
        if n:
            assert "equal" in (tag, opcodes[n - 1][0])  # never two changes in a row
        i, j = i2, j2
    assert (i, j) == (len(a), len(b))


def edit_count(opcodes: list[m.Opcode]) -> int:
    return sum(i2 - i1 + j2 - j1 for tag, i1, i2, j1, j2 in opcodes if tag != "equal")


small_lines = st.lists(st.sampled_from([b"a\n", b"b\n", b"c\n", b"\n"]), max_size=40)


@given(small_lines, small_lines)
def test_property_diff_lines_is_a_shortest_valid_script(a: list[bytes], b: list[bytes]) -> None:
    opcodes = diff_lines(a, b)
    check_opcodes(a, b, opcodes)
    # Myers finds a shortest edit script: never longer than difflib's
    assert edit_count(opcodes) <= edit_count(difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes())


@given(small_lines, small_lines)
def test_property_diff_lines_falls_back_when_files_are_far_apart(a: list[bytes], b: list[bytes]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(m, "MAX_EDIT_DISTANCE", 1)
        check_opcodes(a, b, diff_lines(a, b))


def test_myers_gives_up_past_its_limit() -> None:
    assert find_blocks_myers([1, 2, 3], [4, 5, 6], 5) is None
    assert find_blocks_myers([1, 2, 3], [4, 5, 6], 6) == []
    assert find_blocks_myers([1, 2, 3], [1, 9, 3], 2) == [(0, 0, 1), (2, 2, 1)]


def test_diff_lines_of_empty_inputs() -> None:
    assert diff_lines([], []) == []
    assert diff_lines([], [b"a\n"]) == [("insert", 0, 0, 0, 1)]
    assert diff_lines([b"a\n"], []) == [("delete", 0, 1, 0, 0)]


# ---------------------------------------------------------------- speed


def source_like_file(size: int) -> bytes:
    """Code-like text with many repeated lines (blank ones, braces): what makes difflib slow."""
    chunk = b"def function_%d(x):\n    if x:\n        return %d\n    }\n\n"
    return b"".join(chunk % (n, n) for n in range(size // 40))[:size]


def test_a_large_file_with_a_few_edits_each_side_merges_fast() -> None:
    base = source_like_file(1 << 20)
    assert len(base) == 1 << 20
    lines = split_lines(base)
    ours, theirs = list(lines), list(lines)
    for at in (100, 5000, 20000, 40000):
        ours[at] = b"# ours %d\n" % at
        theirs[at + 3000] = b"# theirs %d\n" % at
    del ours[30000:30005]
    theirs.insert(50000, b"# inserted\n")
    started = time.perf_counter()
    result = merged(base, b"".join(ours), b"".join(theirs))
    elapsed = time.perf_counter() - started
    assert result.clean
    assert result.content.count(b"# ours") == 4 and result.content.count(b"# theirs") == 4
    assert elapsed < 1.0, elapsed
