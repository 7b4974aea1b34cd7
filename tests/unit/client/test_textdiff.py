"""minigit.client.textdiff: unified diffs, --stat and --name-status as git prints them (pure)."""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigit.client.merge import diff_lines, split_lines
from minigit.client.textdiff import (
    NO_NEWLINE,
    FileDiff,
    diff_bytes,
    diff_mode,
    format_name_status,
    format_stat,
    group_opcodes,
)

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

OLD = b"".join(b"line %d\n" % n for n in range(1, 13))
NEW = OLD.replace(b"line 2\n", b"line two\n") + b"line 13"  # an edit, and an added last line without newline


def run_git(cwd: Path, *args: str) -> str:
    # no user or system config: nothing may change what git prints
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd), "GIT_CONFIG_GLOBAL": os.devnull}
    done = subprocess.run(["git", "-c", "color.ui=never", *args], cwd=cwd, env=env, capture_output=True, check=False)
    assert done.returncode in (0, 1), done.stderr
    return done.stdout.decode()


# ---------------------------------------------------------------- unified diff


def test_modified_file_gives_headers_hunks_and_counts() -> None:
    diff = diff_bytes(OLD, NEW, "f.txt", "f.txt")
    assert diff.lines == [
        "--- a/f.txt",
        "+++ b/f.txt",
        "@@ -1,5 +1,5 @@",
        " line 1",
        "-line 2",
        "+line two",
        " line 3",
        " line 4",
        " line 5",
        "@@ -10,3 +10,4 @@",
        " line 10",
        " line 11",
        " line 12",
        "+line 13",
        NO_NEWLINE,
    ]
    assert (diff.added, diff.removed, diff.binary, diff.mode_change) == (2, 1, False, None)
    assert diff.status == "M"


@needs_git
def test_the_diff_is_what_git_diff_no_index_prints(tmp_path: Path) -> None:
    # lines that start with a digit: git shows no function name after the @@ of a hunk
    old = b"".join(b"%d\n" % n for n in range(30)) + b"last"
    new = old.replace(b"3\n", b"3\n3.5\n").replace(b"17\n", b"").replace(b"25\n", b"25!\n").replace(b"last", b"last\n")
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    printed = run_git(tmp_path, "diff", "--no-index", "old", "new").splitlines()
    ours = diff_bytes(old, new, "old", "new")
    # git's own first two lines (diff --git, index) name objects minigit does not have
    assert ours.lines[2:] == printed[4:]
    assert printed[2:4] == ["--- a/old", "+++ b/new"]
    assert ours.lines[:2] == ["--- a/old", "+++ b/new"]


def test_added_file_diffs_against_dev_null() -> None:
    diff = diff_bytes(None, b"a\nb\n", None, "new.txt")
    assert diff.lines == ["--- /dev/null", "+++ b/new.txt", "@@ -0,0 +1,2 @@", "+a", "+b"]
    assert (diff.added, diff.removed, diff.status, diff.path) == (2, 0, "A", "new.txt")


def test_deleted_file_diffs_against_dev_null() -> None:
    diff = diff_bytes(b"a\n", None, "gone.txt", None)
    assert diff.lines == ["--- a/gone.txt", "+++ /dev/null", "@@ -1 +0,0 @@", "-a"]
    assert (diff.added, diff.removed, diff.status, diff.path) == (0, 1, "D", "gone.txt")


def test_an_added_empty_file_has_no_hunks() -> None:
    diff = diff_bytes(None, b"", None, "empty")
    assert (diff.lines, diff.added, diff.removed, diff.status) == ([], 0, 0, "A")


def test_missing_final_newline_is_marked_on_both_sides() -> None:
    diff = diff_bytes(b"a\nb", b"a\nb\n", "f", "f")
    assert diff.lines[2:] == ["@@ -1,2 +1,2 @@", " a", "-b", NO_NEWLINE, "+b"]
    assert (diff.added, diff.removed) == (1, 1)


def test_unchanged_last_line_without_newline_is_marked_as_context() -> None:
    diff = diff_bytes(b"a\nb", b"x\nb", "f", "f")
    assert diff.lines[2:] == ["@@ -1,2 +1,2 @@", "-a", "+x", " b", NO_NEWLINE]


def test_crlf_lines_keep_their_carriage_return() -> None:
    diff = diff_bytes(b"a\r\nb\r\n", b"a\r\nc\r\n", "f", "f")
    assert diff.lines[2:] == ["@@ -1,2 +1,2 @@", " a\r", "-b\r", "+c\r"]


def test_undecodable_bytes_are_shown_replaced() -> None:
    diff = diff_bytes(b"caf\xe9\n", b"cafe\n", "f", "f")
    assert diff.lines[3] == "-caf\ufffd"


def test_context_width_is_a_parameter() -> None:
    diff = diff_bytes(OLD, OLD.replace(b"line 6\n", b"six\n"), "f", "f", context=1)
    assert diff.lines[2:] == ["@@ -5,3 +5,3 @@", " line 5", "-line 6", "+six", " line 7"]
    diff = diff_bytes(OLD, OLD.replace(b"line 6\n", b"six\n"), "f", "f", context=0)
    assert diff.lines[2:] == ["@@ -6 +6 @@", "-line 6", "+six"]


def test_binary_content_is_not_diffed() -> None:
    diff = diff_bytes(b"\0\1\2", b"\0\1\3", "b.bin", "b.bin")
    assert (diff.binary, diff.lines, diff.added, diff.removed) == (True, [], 0, 0)
    assert (diff.old_size, diff.new_size) == (3, 3)
    # one side binary is enough; added binary files too
    assert diff_bytes(b"text\n", b"\0", "f", "f").binary
    assert diff_bytes(None, b"\0", None, "f").binary


def test_sizes_given_override_the_content_lengths() -> None:
    diff = diff_bytes(b"\0", b"\0\0", "b", "b", old_size=100, new_size=200)
    assert (diff.old_size, diff.new_size) == (100, 200)


def test_mode_only_change_has_no_lines() -> None:
    diff = diff_bytes(b"#!/bin/sh\n", b"#!/bin/sh\n", "run.sh", "run.sh", old_mode="", new_mode="x")
    assert diff.mode_change == ("100644", "100755")
    assert (diff.lines, diff.binary, diff.added, diff.removed) == ([], False, 0, 0)


def test_binary_file_with_mode_change_only_is_not_binary() -> None:
    diff = diff_bytes(b"\0", b"\0", "b", "b", old_mode="x", new_mode="")
    assert (diff.binary, diff.mode_change) == (False, ("100755", "100644"))


def test_mode_change_is_kept_with_a_content_change() -> None:
    diff = diff_bytes(b"a\n", b"b\n", "f", "f", old_mode="", new_mode="l")
    assert diff.mode_change == ("100644", "120000")
    assert diff.lines[2:] == ["@@ -1 +1 @@", "-a", "+b"]


def test_added_or_deleted_files_have_no_mode_change() -> None:
    assert diff_bytes(None, b"a", None, "f", new_mode="x").mode_change is None
    assert diff_bytes(b"a", None, "f", None, old_mode="x").mode_change is None


def test_diff_mode_maps_to_git_octal() -> None:
    assert diff_mode("", "") is None
    assert diff_mode("x", "x") is None
    assert diff_mode("", "x") == ("100644", "100755")
    assert diff_mode("x", "l") == ("100755", "120000")
    assert diff_mode("l", "") == ("120000", "100644")


def test_equal_content_gives_nothing() -> None:
    diff = diff_bytes(b"same\n", b"same\n", "f", "f")
    assert (diff.lines, diff.added, diff.removed, diff.mode_change) == ([], 0, 0, None)


lines_strategy = st.lists(st.sampled_from([b"a\n", b"b\n", b"c\n", b"d\n"]), max_size=40)


@given(lines_strategy, lines_strategy, st.integers(min_value=0, max_value=4))
def test_grouping_is_difflibs(a: list[bytes], b: list[bytes], context: int) -> None:
    opcodes = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    expected = list(difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(context))
    assert group_opcodes(opcodes, context) == expected


@given(lines_strategy, lines_strategy)
def test_the_diff_applies_and_counts_its_lines(a: list[bytes], b: list[bytes]) -> None:
    diff = diff_bytes(b"".join(a), b"".join(b), "f", "f", context=0)
    minus = [line[1:] + "\n" for line in diff.lines[2:] if line.startswith("-")]
    plus = [line[1:] + "\n" for line in diff.lines[2:] if line.startswith("+")]
    assert (len(plus), len(minus)) == (diff.added, diff.removed)
    # what difflib's unified diff would show has the same hunks when the opcodes agree
    if diff_lines(a, b) == difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        text_a, text_b = [x.decode() for x in a], [x.decode() for x in b]
        expected = [line.rstrip("\n") for line in difflib.unified_diff(text_a, text_b, "a/f", "b/f", n=0)]
        assert diff.lines == expected


def test_lines_split_only_at_newline() -> None:
    assert split_lines(b"a\rb\n") == [b"a\rb\n"]


# ---------------------------------------------------------------- name-status


def test_name_status() -> None:
    diffs = [diff_bytes(None, b"a", None, "new"), diff_bytes(b"a", b"b", "m", "m"), diff_bytes(b"a", None, "old", None)]
    assert format_name_status(diffs) == ["A\tnew", "M\tm", "D\told"]


# ---------------------------------------------------------------- stat


def make_diff(path: str, added: int, removed: int) -> FileDiff:
    return FileDiff(path, path, binary=False, lines=[], added=added, removed=removed)


def test_stat_lines_and_summary() -> None:
    diffs = [make_diff("src/a.py", 8, 4), make_diff("b", 1, 0), diff_bytes(b"\0" * 100, b"\0" * 200, "c.bin", "c.bin")]
    assert format_stat(diffs) == [
        # as git: the counts take the width of "Bin"
        " src/a.py |  12 ++++++++----",
        " b        |   1 +",
        " c.bin    | Bin 100 -> 200 bytes",
        " 3 files changed, 9 insertions(+), 4 deletions(-)",
    ]


def test_stat_of_nothing_is_nothing() -> None:
    assert format_stat([]) == []


@pytest.mark.parametrize(
    ("counts", "summary"),
    [
        ([(1, 0)], " 1 file changed, 1 insertion(+)"),
        ([(0, 1)], " 1 file changed, 1 deletion(-)"),
        ([(2, 0), (0, 0)], " 2 files changed, 2 insertions(+)"),
        ([(0, 3)], " 1 file changed, 3 deletions(-)"),
        ([(1, 1)], " 1 file changed, 1 insertion(+), 1 deletion(-)"),
        ([(5, 7)], " 1 file changed, 5 insertions(+), 7 deletions(-)"),
        # as git: both counts shown when both are zero (a mode change, a binary file)
        ([(0, 0)], " 1 file changed, 0 insertions(+), 0 deletions(-)"),
    ],
)
def test_stat_summary_pluralises_and_leaves_out_zero_counts(counts: list[tuple[int, int]], summary: str) -> None:
    diffs = [make_diff(f"f{n}", added, removed) for n, (added, removed) in enumerate(counts)]
    assert format_stat(diffs)[-1] == summary


def test_binary_lines_count_in_files_not_lines() -> None:
    diffs = [diff_bytes(b"\0", b"\0\0", "b", "b"), make_diff("t", 2, 0)]
    assert format_stat(diffs)[-1] == " 2 files changed, 2 insertions(+)"


def test_mode_only_change_shows_a_zero_count() -> None:
    diff = diff_bytes(b"a", b"a", "run", "run", new_mode="x")
    assert format_stat([diff])[0] == " run | 0"


def test_rename_shows_both_names() -> None:
    assert format_stat([diff_bytes(b"a\n", b"b\n", "old", "new")])[0] == " old => new | 2 +-"


@pytest.mark.parametrize("width", [10, 30, 40, 60, 80, 120, 200])
def test_bars_scale_to_fit_the_width(width: int) -> None:
    diffs = [make_diff("dir/" * 12 + "long_name.py", 900, 300), make_diff("small", 3, 1), make_diff("none", 0, 0)]
    lines = format_stat(diffs, width=max(width, 1))
    for line in lines[:-1]:
        assert len(line) < max(width, 28)  # git's least width: 16 + 6 + the count's digits
    big = lines[0].split("|")[1]
    assert big.startswith(" 1200 +")
    assert abs(big.count("+") - 3 * big.count("-")) <= 3  # in proportion, but for rounding
    small = lines[1].split("|")[1]
    assert "+" in small and "-" in small  # some of each survives scaling
    name = lines[0].split(" | ")[0].strip()
    if width <= 80:
        assert name.startswith("...") and name.endswith("name.py")  # a long name keeps its end
    if 40 <= width <= 80:
        assert name.startswith(".../dir/")  # cut at a directory when one is left
    if width >= 120:
        assert name == "dir/" * 12 + "long_name.py"


def test_bars_are_not_scaled_when_they_fit() -> None:
    assert format_stat([make_diff("f", 3, 2)])[0] == " f | 5 +++--"


@needs_git
def test_stat_is_what_git_diff_stat_prints(tmp_path: Path) -> None:
    files = {
        "small.txt": (b"a\nb\nc\n", b"a\nB\nc\nd\n"),
        "dir/" * 5 + "a_file_with_a_rather_long_name.txt": (b"x\n" * 50, b"y\n" * 150),
        "gone.txt": (b"1\n2\n", None),
        "image.bin": (b"\0" * 1000, b"\0" * 1234),
        "new.txt": (None, b"n\n" * 7),
    }
    for path, (old, _) in files.items():
        if old is not None:
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes(old)
    run_git(tmp_path, "init", "-q")
    run_git(tmp_path, "add", ".")
    for path, (_, new) in files.items():
        if new is None:
            (tmp_path / path).unlink()
        else:
            (tmp_path / path).write_bytes(new)
    run_git(tmp_path, "add", "-N", "new.txt")
    diffs = [
        diff_bytes(old, new, path if old is not None else None, path if new is not None else None)
        for path, (old, new) in sorted(files.items())
    ]
    for width in (80, 50, 200):
        assert format_stat(diffs, width=width) == run_git(tmp_path, "diff", f"--stat={width}").splitlines()
