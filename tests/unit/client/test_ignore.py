"""minigit.client.ignore, and how the scan applies .minigitignore files as git applies .gitignore."""

from __future__ import annotations

import os
from pathlib import Path

from minigit import protocol as p
from minigit.client import workspace as ws
from minigit.client.ignore import NO_IGNORES, load_ignore, parse_ignore, read_ignore_file


def fe(data: bytes) -> p.FileEntry:
    return p.FileEntry(p.hash_bytes(data), len(data))


def write(root: Path, rel: str, data: bytes = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tracked(root: Path, base: p.Manifest | None = None) -> list[str]:
    return sorted(ws.scan_workdir(root, base or {}).manifest)


# ---------------------------------------------------------------- parsing


def test_parse_ignore_negation_order():
    ignored = parse_ignore("*.txt\n!important.txt\nimportant.txt\n")
    assert ignored("important.txt", False)  # the last matching pattern wins
    ignored = parse_ignore("data/\n!data/keep\n")
    assert ignored("data", True)
    assert not ignored("other", True)


def test_a_deeper_file_decides_first_and_patterns_are_relative_to_their_folder():
    ignores = NO_IGNORES.below("", "*.log\n/top.txt\n").below("sub/", "!keep.log\n/only-here.txt\n")
    assert ignores.ignored("x.log", False) and ignores.ignored("sub/x.log", False)
    assert not ignores.ignored("sub/keep.log", False) and ignores.ignored("keep.log", False)
    assert ignores.ignored("top.txt", False) and not ignores.ignored("sub/top.txt", False)
    assert ignores.ignored("sub/only-here.txt", False) and not ignores.ignored("only-here.txt", False)
    assert not ignores.ignored("sub/deeper/only-here.txt", False)  # anchored to sub/
    assert not NO_IGNORES and not NO_IGNORES.below("sub/", "# only a comment\n\n")  # nothing to match


def test_load_ignore_without_file(tmp_path):
    ignored = load_ignore(tmp_path)
    assert not ignored("x.log", False) and not ignored("build", True)
    (tmp_path / ".minigitignore").mkdir()
    assert not load_ignore(tmp_path)("x", False)


def test_read_ignore_file_reads_only_a_regular_file(tmp_path):
    write(tmp_path, "real", b"*.log\n\xff\n")
    assert read_ignore_file(tmp_path / "real") == "*.log\n\ufffd\n"
    os.symlink("real", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for name in ("link", "fifo", "dir", "missing"):
        assert read_ignore_file(tmp_path / name) is None


# ---------------------------------------------------------------- the scan


def test_ignore_patterns(tmp_path):
    write(tmp_path, ".minigitignore", b"# comment\n*.log\n!keep.log\nbuild/\n/rootonly.txt\nsub/deeper\n\n")
    for rel in ("a.txt", "x.log", "keep.log", "sub/y.log", "sub/keep.log", "sub/b.txt", "sub/deeper/c.txt"):
        write(tmp_path, rel)
    for rel in ("build/out.o", "src/build/out2.o", "rootonly.txt", "sub/rootonly.txt"):
        write(tmp_path, rel)
    write(tmp_path, "other/build", b"a file called build: build/ is for folders")
    assert tracked(tmp_path) == [
        ".minigitignore",
        "a.txt",
        "keep.log",
        "other/build",
        "sub/b.txt",
        "sub/keep.log",
        "sub/rootonly.txt",
    ]


def test_nested_ignore_files(tmp_path):
    write(tmp_path, ".minigitignore", b"*.log\n/top-only.txt\n")
    write(tmp_path, "logs/.minigitignore", b"!keep.log\n/here.txt\n*.tmp\n")
    write(tmp_path, "logs/deeper/.minigitignore", b"!*.tmp\n")
    for rel in ("a.log", "top-only.txt", "logs/top-only.txt", "logs/a.log", "logs/keep.log", "other/keep.log"):
        write(tmp_path, rel)
    for rel in ("logs/here.txt", "logs/deeper/here.txt", "here.txt", "logs/x.tmp", "logs/deeper/y.tmp", "z.tmp"):
        write(tmp_path, rel)
    assert tracked(tmp_path) == [
        ".minigitignore",
        "here.txt",  # logs/'s /here.txt is logs/here.txt
        "logs/.minigitignore",
        "logs/deeper/.minigitignore",
        "logs/deeper/here.txt",
        "logs/deeper/y.tmp",  # brought back by the deeper file
        "logs/keep.log",  # brought back in logs/ only
        "logs/top-only.txt",  # the top's /top-only.txt is at the top
        "z.tmp",  # logs/'s *.tmp does not reach up
    ]


def test_an_ignored_folder_cannot_be_brought_back_from_inside(tmp_path):
    write(tmp_path, ".minigitignore", b"build/\n")
    write(tmp_path, "build/.minigitignore", b"!*\n")
    write(tmp_path, "build/out.o")
    assert tracked(tmp_path) == [".minigitignore"]


def test_git_folders_are_never_tracked_nor_reported(tmp_path):
    write(tmp_path, ".git/config")
    write(tmp_path, "vendor/lib/.git/HEAD")
    write(tmp_path, "vendor/lib/code.py")
    write(tmp_path, ".minigitignore", b"!.git\n!.git/\n")
    scan = ws.scan_workdir(tmp_path, {})
    assert sorted(scan.manifest) == [".minigitignore", "vendor/lib/code.py"] and scan.untrackable == []


def test_a_tracked_file_stays_tracked_when_it_becomes_ignored(tmp_path):
    write(tmp_path, "app.log", b"v1")
    write(tmp_path, "build/keep.o", b"o")
    write(tmp_path, "build/deep/keep2.o", b"o2")
    base = ws.scan_workdir(tmp_path, {}).manifest
    write(tmp_path, ".minigitignore", b"*.log\nbuild/\n")
    write(tmp_path, "new.log")
    write(tmp_path, "build/new.o")
    write(tmp_path, "build/deep/new2.o")
    write(tmp_path, "build/fifo-dir/x")
    os.mkfifo(tmp_path / "build" / "pipe")  # ignored: not reported
    write(tmp_path, "app.log", b"v2")
    scan = ws.scan_workdir(tmp_path, base)
    assert sorted(scan.manifest) == [".minigitignore", "app.log", "build/deep/keep2.o", "build/keep.o"]
    assert scan.manifest["app.log"] == fe(b"v2") and scan.untrackable == []  # its change is seen
    (tmp_path / "build" / "keep.o").unlink()
    assert "build/keep.o" not in ws.scan_workdir(tmp_path, base).manifest  # deleted, as it is
    assert tracked(tmp_path) == [".minigitignore"]  # untracked, they are ignored
