"""minigit.client.merging: what a pull writes for files changed on both sides (no disk)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigit import protocol as p
from minigit.client.changes import Strategy
from minigit.client.merging import needs_base, settle_conflicts
from minigit.client.workspace import ConflictKind
from minigit.errors import PullConflict


class Blobs:
    """A content store: entries made from bytes, read back by hash."""

    def __init__(self) -> None:
        self.by_sha: dict[str, bytes] = {}

    def entry(self, data: bytes, mode: p.FileMode = p.FileMode.REGULAR) -> p.FileEntry:
        sha = hashlib.sha256(data).hexdigest()
        self.by_sha[sha] = data
        return p.FileEntry(sha, len(data), mode)

    def read(self, entry: p.FileEntry) -> bytes:
        return self.by_sha[entry.sha]


def settle(base, local, head, paths, **kwargs):
    blobs = kwargs.pop("blobs")
    return settle_conflicts(paths, base, local, head, blobs.read, **kwargs)


def test_edits_to_different_lines_merge_cleanly():
    b = Blobs()
    base = {"f": b.entry(b"1\n2\n3\n4\n5\n")}
    local = {"f": b.entry(b"one\n2\n3\n4\n5\n")}
    head = {"f": b.entry(b"1\n2\n3\n4\nfive\n")}
    writes = settle(base, local, head, ["f"], blobs=b)
    assert writes.contents == {"f": (b"one\n2\n3\n4\nfive\n", p.FileMode.REGULAR)}
    assert writes.unresolved == {} and writes.reports[0].resolution == "merged"


def test_overlapping_edits_are_marked_and_keep_both_sides_lines():
    b = Blobs()
    base = {"f": b.entry(b"a\nb\n")}
    local = {"f": b.entry(b"a\nmine\n")}
    head = {"f": b.entry(b"a\ntheirs\n")}
    writes = settle(base, local, head, ["f"], blobs=b, theirs_label="version 3")
    content, _ = writes.contents["f"]
    assert content == b"a\n<<<<<<< yours\nmine\n=======\ntheirs\n>>>>>>> version 3\n"
    assert writes.unresolved == {"f": ConflictKind.MARKERS}


def test_binary_keeps_yours_and_writes_theirs_beside_it():
    b = Blobs()
    base = {"img": b.entry(b"\0base")}
    local = {"img": b.entry(b"\0mine")}
    head = {"img": b.entry(b"\0theirs")}
    writes = settle(base, local, head, ["img"], blobs=b)
    assert "img" not in writes.contents and writes.entries == {"img.theirs": head["img"]}
    assert writes.unresolved == {"img": ConflictKind.THEIRS}


def test_a_symlink_is_never_line_merged():
    b = Blobs()
    base = {"l": b.entry(b"a", p.FileMode.SYMLINK)}
    local = {"l": b.entry(b"b", p.FileMode.SYMLINK)}
    head = {"l": b.entry(b"c", p.FileMode.SYMLINK)}
    writes = settle(base, local, head, ["l"], blobs=b)
    assert writes.entries == {"l.theirs": head["l"]} and writes.unresolved == {"l": ConflictKind.THEIRS}


def test_modify_delete_and_delete_modify():
    b = Blobs()
    base = {"x": b.entry(b"1\n"), "y": b.entry(b"2\n")}
    local = {"x": b.entry(b"1 edited\n")}  # y deleted by you
    head = {"y": b.entry(b"2 edited\n")}  # x deleted upstream
    writes = settle(base, local, head, ["x", "y"], blobs=b)
    assert writes.entries == {"y": head["y"]} and "x" not in writes.contents and writes.delete == []
    assert [r.resolution for r in writes.reports] == ["kept-yours", "took-theirs"]


def test_both_added_different_text_merge_against_an_empty_base():
    b = Blobs()
    local = {"n": b.entry(b"mine\n")}
    head = {"n": b.entry(b"theirs\n")}
    writes = settle({}, local, head, ["n"], blobs=b)
    assert writes.unresolved == {"n": ConflictKind.MARKERS}
    assert b"mine\n" in writes.contents["n"][0] and b"theirs\n" in writes.contents["n"][0]


def test_mode_follows_upstream_unless_you_changed_it():
    b = Blobs()
    base = {"s": b.entry(b"1\n2\n3\n")}
    local = {"s": b.entry(b"0\n2\n3\n")}
    head = {"s": b.entry(b"1\n2\n4\n", p.FileMode.EXECUTABLE)}
    writes = settle(base, local, head, ["s"], blobs=b)
    assert writes.contents["s"] == (b"0\n2\n4\n", p.FileMode.EXECUTABLE)


def test_ours_and_theirs_strategies():
    b = Blobs()
    base = {"f": b.entry(b"a\n")}
    local = {"f": b.entry(b"mine\n")}
    head = {"f": b.entry(b"theirs\n")}
    ours = settle(base, local, head, ["f"], blobs=b, strategy=Strategy.OURS)
    assert ours.contents == {} and ours.entries == {} and ours.unresolved == {}
    theirs = settle(base, local, head, ["f"], blobs=b, strategy=Strategy.THEIRS)
    # your bytes survive as f.orig
    assert theirs.entries == {"f": head["f"], "f.orig": local["f"]} and theirs.unresolved == {}


def test_a_taken_theirs_name_refuses_rather_than_overwrites():
    b = Blobs()
    base, local, head = {"i": b.entry(b"\0a")}, {"i": b.entry(b"\0b")}, {"i": b.entry(b"\0c")}
    with pytest.raises(PullConflict):
        settle(base, local, head, ["i"], blobs=b, taken=lambda path: path == "i.theirs")


def test_needs_base_only_for_line_merges():
    b = Blobs()
    base = {"m": b.entry(b"1"), "d": b.entry(b"2")}
    local = {"m": b.entry(b"3")}
    head = {"m": b.entry(b"4"), "d": b.entry(b"5")}
    assert needs_base(["m", "d"], base, local, head) == [base["m"]]


lines = st.lists(st.sampled_from([b"a\n", b"b\n", b"c\n", b"d\n"]), max_size=6).map(b"".join)


@settings(max_examples=200)
@given(lines, lines, lines)
def test_nothing_you_wrote_is_lost(base_text, mine, theirs):
    """Whatever the three sides, every line of yours is in what the pull leaves at the path."""
    b = Blobs()
    base, local, head = {"f": b.entry(base_text)}, {"f": b.entry(mine)}, {"f": b.entry(theirs)}
    writes = settle(base, local, head, ["f"], blobs=b)
    left = writes.contents["f"][0] if "f" in writes.contents else mine
    for line in mine.splitlines(keepends=True):
        if line not in base_text.splitlines(keepends=True):
            assert line in left.splitlines(keepends=True)
