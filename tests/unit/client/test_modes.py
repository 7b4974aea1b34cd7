"""Executable files and symbolic links: how the scan sees them, how they are
written (workspace.stage_blob / install_staged), and that they survive init,
push, clone and pull against an in-process service. Also: no lock file, ever."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from inprocess import InProcessServer

from minigit import protocol as p
from minigit.client import operations as op
from minigit.client import workspace as ws
from minigit.config import ServerFlags
from minigit.errors import RepositoryExists, UnsafePath

SYMLINK, EXECUTABLE, REGULAR = p.FileMode.SYMLINK, p.FileMode.EXECUTABLE, p.FileMode.REGULAR


def fe(data: bytes, mode: p.FileMode = REGULAR) -> p.FileEntry:
    return p.FileEntry(p.hash_bytes(data), len(data), mode)


def write(root: Path, rel: str, data: bytes = b"x", mode: int | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    return path


def link(root: Path, rel: str, target: str | bytes) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, os.fsencode(root / rel))


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def permissions(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ---------------------------------------------------------------- the scan


def test_the_owners_x_bit_makes_a_file_executable(tmp_path):
    write(tmp_path, "run.sh", b"#!/bin/sh\n", 0o744)
    write(tmp_path, "group-only", b"g", 0o654)  # x for the group and others only: not the owner's
    write(tmp_path, "plain", b"p", 0o600)
    assert ws.scan_workdir(tmp_path, {}).manifest == {
        "run.sh": fe(b"#!/bin/sh\n", EXECUTABLE),
        "group-only": fe(b"g"),
        "plain": fe(b"p"),
    }


def test_a_link_is_tracked_as_a_link_and_never_followed(tmp_path):
    write(tmp_path, "dir/file.txt", b"the file's content")
    link(tmp_path, "to-file", "dir/file.txt")
    link(tmp_path, "to-dir", "dir")
    link(tmp_path, "dir/up", "../dir/file.txt")
    link(tmp_path, "dangling", "nowhere/at/all")
    link(tmp_path, "to-self", "to-self")  # a loop
    link(tmp_path, "odd", b"caf\xe9")  # not UTF-8: the bytes are the content
    scan = ws.scan_workdir(tmp_path, {})
    assert scan.untrackable == []
    assert scan.manifest == {
        "dir/file.txt": fe(b"the file's content"),
        "to-file": fe(b"dir/file.txt", SYMLINK),
        "to-dir": fe(b"dir", SYMLINK),  # a link to a folder is a link: not walked into
        "dir/up": fe(b"../dir/file.txt", SYMLINK),
        "dangling": fe(b"nowhere/at/all", SYMLINK),
        "to-self": fe(b"to-self", SYMLINK),
        "odd": fe(b"caf\xe9", SYMLINK),
    }


@pytest.mark.parametrize(
    ("rel", "target", "why"),
    [
        ("abs", "/etc/passwd", ws.LINK_ABSOLUTE),
        ("up", "..", ws.LINK_OUTSIDE),
        ("sub/up2", "../..", ws.LINK_OUTSIDE),
        ("sub/sneaky", "x/../../../etc", ws.LINK_OUTSIDE),
        ("sub/through", "../hop/..", ws.LINK_THROUGH_LINK),  # hop is a link: hop/.. is not '.'
    ],
)
def test_a_link_leading_outside_cannot_be_tracked(tmp_path, rel, target, why):
    write(tmp_path, "sub/x/.keep", b"")
    link(tmp_path, "hop", "sub/x")
    link(tmp_path, rel, target)
    scan = ws.scan_workdir(tmp_path, {})
    assert scan.untrackable == [(rel, why)] and rel not in scan.manifest


def test_link_target_problem():
    no_links = lambda rel: False  # noqa: E731
    assert ws.link_target_problem("a/b/l", b"../../c", no_links) is None
    assert ws.link_target_problem("a/b/l", b"./.././/../c/./", no_links) is None
    assert ws.link_target_problem("a/b/l", b"../../../c", no_links) == ws.LINK_OUTSIDE
    assert ws.link_target_problem("l", b"d/../..", no_links) == ws.LINK_OUTSIDE
    assert ws.link_target_problem("l", b"/", no_links) == ws.LINK_ABSOLUTE
    assert ws.link_target_problem("l", b"d/..", lambda rel: rel == "d") == ws.LINK_THROUGH_LINK
    # down through a link is fine: that link's own target is checked
    assert ws.link_target_problem("l", b"d/x", lambda rel: rel == "d") is None
    # but not up again below it: b -> x, x/c -> .., then b/c/.. is outside (b/c is no path of the tree)
    assert ws.link_target_problem("e", b"b/c/..", lambda rel: rel in ("b", "x/c")) == ws.LINK_THROUGH_LINK
    assert ws.link_target_problem("f", b"b/c/../SECRET", lambda rel: rel in ("b", "x/c")) == ws.LINK_THROUGH_LINK
    for bad in (b"", b"a\0b", b"x" * (ws.MAX_LINK_TARGET + 1)):
        assert ws.link_target_problem("l", bad, no_links)


# ---------------------------------------------------------------- writing


def staged_in(root: Path, rel: str, entry: p.FileEntry, data: bytes, is_link=lambda rel: False) -> Path:
    staging = root / ".minigit-tmp-test"
    staging.mkdir(exist_ok=True)
    return ws.stage_blob(staging / rel.replace("/", "_"), rel, entry, lambda out: out.write(data), is_link)


def test_the_exec_bit_survives_a_scan_and_write_round_trip(tmp_path):
    origin, copy = tmp_path / "origin", tmp_path / "copy"
    write(origin, "bin/run", b"#!/bin/sh\necho hi\n", 0o755)
    write(origin, "notes.txt", b"notes", 0o644)
    manifest = ws.scan_workdir(origin, {}).manifest
    copy.mkdir()
    with umask(0o027):
        for rel, entry in manifest.items():
            data = (origin / rel).read_bytes()
            ws.install_staged(copy, rel, staged_in(copy, rel, entry, data))
    assert ws.scan_workdir(copy, {}).manifest == manifest  # the staging folder is a leftover: not scanned
    assert permissions(copy / "bin/run") == 0o750 and permissions(copy / "notes.txt") == 0o640  # per the umask


def test_a_link_is_written_as_a_link(tmp_path):
    entry = fe(b"../target.txt", SYMLINK)
    ws.install_staged(tmp_path, "d/l", staged_in(tmp_path, "d/l", entry, b"../target.txt"))
    assert os.readlink(tmp_path / "d/l") == "../target.txt"
    assert ws.scan_workdir(tmp_path, {}).manifest == {"d/l": entry}
    # replacing a link by a file, and a file by a link
    ws.install_staged(tmp_path, "d/l", staged_in(tmp_path, "d/l", fe(b"now a file"), b"now a file"))
    assert not os.path.islink(tmp_path / "d/l") and (tmp_path / "d/l").read_bytes() == b"now a file"
    ws.install_staged(tmp_path, "d/l", staged_in(tmp_path, "d/l", entry, b"../target.txt"))
    assert os.readlink(tmp_path / "d/l") == "../target.txt"


def test_stage_blob_takes_bytes_too(tmp_path):
    staging = tmp_path / ".minigit-tmp-test"
    staging.mkdir()
    entry = fe(b"#!/bin/sh\n", EXECUTABLE)
    ws.install_staged(tmp_path, "x/run", ws.stage_blob(staging / "0", "x/run", entry, b"#!/bin/sh\n"))
    assert ws.scan_workdir(tmp_path, {}).manifest == {"x/run": entry}


@pytest.mark.parametrize("target", [b"/etc/passwd", b"../x", b"a/../../x", b"", b"a\0b", b"hop/.."])
def test_a_link_that_would_lead_outside_is_refused_before_it_is_made(tmp_path, target):
    staging = tmp_path / ".minigit-tmp-test"
    with pytest.raises(UnsafePath):
        staged_in(tmp_path, "l", fe(target, SYMLINK), target, lambda rel: rel == "hop")
    assert [path.name for path in staging.iterdir()] == ["l"]  # only the content, staged: no link


def test_where_links_cannot_be_made_the_target_is_written_as_a_file(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    entry = fe(b"target.txt", SYMLINK)
    with monkeypatch.context() as patched:
        patched.setattr(os, "symlink", no_links)
        ws.install_staged(tmp_path, "l", staged_in(tmp_path, "l", entry, b"target.txt"))
    assert not os.path.islink(tmp_path / "l") and (tmp_path / "l").read_bytes() == b"target.txt"
    # it is the tracked link while it holds the target (git's core.symlinks=false)
    assert ws.scan_workdir(tmp_path, {"l": entry}).manifest == {"l": entry}
    assert ws.scan_workdir(tmp_path, {}).manifest == {"l": fe(b"target.txt")}
    (tmp_path / "l").write_bytes(b"edited")
    assert ws.scan_workdir(tmp_path, {"l": entry}).manifest == {"l": fe(b"edited")}


def test_other_failures_to_make_a_link_are_errors(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "symlink", disk_full)
    with pytest.raises(OSError, match="No space"):
        staged_in(tmp_path, "l", fe(b"t", SYMLINK), b"t")


def test_a_links_content_is_uploaded_and_copied_as_its_target(tmp_path):
    write(tmp_path, "big.bin", b"a file's bytes, not the link's")
    link(tmp_path, "l", "big.bin")
    entry = ws.scan_workdir(tmp_path, {}).manifest["l"]
    assert b"".join(ws.file_source(tmp_path, "l", entry).read_pieces()) == b"big.bin"
    out = io.BytesIO()
    ws.copy_local_blob(tmp_path, "l", entry.sha, out)
    assert out.getvalue() == b"big.bin"


# ---------------------------------------------------------------- through the service


@pytest.fixture
def server() -> InProcessServer:
    server = InProcessServer()
    server.enrol("origin", "alice")
    return server


def options(server: InProcessServer, user: str = "alice") -> op.ClientOptions:
    return op.ClientOptions(user, ServerFlags(), 30.0, connector=server.connector)


def create(server: InProcessServer, root: Path) -> op.PushResult:
    result = op.init_repository(root, "lab", options(server, "origin"), "v1", visibility=p.Visibility.PUBLIC)
    server.grant("lab", p.Access.WRITE, "alice")
    return result


def test_modes_and_links_survive_init_clone_push_and_pull(server, tmp_path):
    origin, copy = tmp_path / "origin", tmp_path / "copy"
    write(origin, "run.sh", b"#!/bin/sh\n", 0o755)
    write(origin, "lib/data.txt", b"data")
    link(origin, "latest", "lib/data.txt")
    link(origin, "lib-link", "lib")
    created = create(server, origin)
    assert created.untrackable == []
    op.clone_repository("lab", copy, options(server))
    assert ws.scan_workdir(copy, {}).manifest == ws.scan_workdir(origin, {}).manifest
    assert os.readlink(copy / "latest") == "lib/data.txt" and os.access(copy / "run.sh", os.X_OK)
    assert op.read_status(copy).changes.empty

    (copy / "run.sh").chmod(0o644)  # a mode change alone is a change
    (copy / "lib/data.txt").chmod(0o755)
    os.unlink(copy / "latest")
    os.symlink("run.sh", copy / "latest")
    status = op.read_status(copy)
    assert status.changes.modified == ["latest", "lib/data.txt", "run.sh"]
    assert op.push_workdir(copy, options(server), "modes").status == op.PushStatus.ACCEPTED

    assert op.pull_workdir(origin, options(server, "origin")).changes.modified == ["latest", "lib/data.txt", "run.sh"]
    assert not os.access(origin / "run.sh", os.X_OK) and os.access(origin / "lib/data.txt", os.X_OK)
    assert os.readlink(origin / "latest") == "run.sh"
    assert op.read_status(origin).changes.empty


def test_a_pull_that_would_make_a_link_lead_outside_touches_nothing(server, tmp_path, monkeypatch):
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    write(origin, "a.txt", b"a")
    create(server, origin)
    op.clone_repository("lab", mine, options(server))
    write(origin, "a.txt", b"a2")
    write(origin, "b.txt", b"b")
    link(origin, "z-evil", "../../outside")
    with monkeypatch.context() as patched:  # a client that does not check (or a hostile one)
        patched.setattr(ws, "link_target_problem", lambda *args: None)
        op.push_workdir(origin, options(server, "origin"), "evil")
    before = contents(mine)
    with pytest.raises(UnsafePath, match=r"z-evil.*outside"):
        op.pull_workdir(mine, options(server))
    assert contents(mine) == before  # no staging left either
    assert ws.read_metadata(mine).version == 1


def contents(root: Path) -> dict[str, bytes]:
    """What is in ``root`` (its stat cache aside: the scan may refresh it)."""
    return {name: (root / name).read_bytes() for name in os.listdir(root) if name != ws.INDEX_NAME}


def test_a_pull_that_would_make_a_link_lead_out_through_another_touches_nothing(server, tmp_path, monkeypatch):
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    write(origin, "a.txt", b"a")
    create(server, origin)
    op.clone_repository("lab", mine, options(server))
    link(origin, "s/d", "..")  # s/d is the top: fine alone
    link(origin, "t/a", "../s/d/..")  # lexically s/, but s/d/.. is above the top
    with monkeypatch.context() as patched:
        patched.setattr(ws, "link_target_problem", lambda *args: None)
        op.push_workdir(origin, options(server, "origin"), "chained")
    before = contents(mine)
    with pytest.raises(UnsafePath, match=r"t/a.*another link"):
        op.pull_workdir(mine, options(server))
    assert contents(mine) == before
    assert ws.read_metadata(mine).version == 1


def test_untrackable_files_are_reported_by_init_push_and_status(server, tmp_path):
    write(tmp_path, "a.txt", b"a")
    write(tmp_path, ".minigit-notes.txt", b"n")
    link(tmp_path, "out", "/etc")
    created = create(server, tmp_path)
    expected = [(".minigit-notes.txt", ws.RESERVED), ("out", ws.LINK_ABSOLUTE)]
    assert created.untrackable == expected and created.changes.added == ["a.txt"]
    assert op.read_status(tmp_path).untrackable == expected
    os.mkfifo(tmp_path / "pipe")
    write(tmp_path, "b.txt", b"b")
    pushed = op.push_workdir(tmp_path, options(server, "origin"))
    assert pushed.untrackable == [*expected, ("pipe", "a named pipe: only files and symbolic links are tracked")]
    assert pushed.to_json()["untrackable"][0] == {"path": ".minigit-notes.txt", "reason": ws.RESERVED}
    assert op.read_status(tmp_path).to_json()["untrackable"][-1]["path"] == "pipe"


# ---------------------------------------------------------------- no lock file


def test_no_lock_file_is_left_by_init_push_pull_or_status(server, tmp_path):
    origin, copy = tmp_path / "origin", tmp_path / "copy"
    write(origin, "a.txt", b"a")
    create(server, origin)
    assert sorted(os.listdir(origin)) == [".minigit", ".minigit-index", "a.txt"]
    write(origin, "a.txt", b"a2")
    op.push_workdir(origin, options(server, "origin"))
    op.read_status(origin)
    op.clone_repository("lab", copy, options(server))
    op.pull_workdir(copy, options(server))
    for root in (origin, copy):
        assert ws.OLD_LOCK_NAME not in os.listdir(root)
        assert not any(ws.is_leftover(name) for name in os.listdir(root))


def test_a_failed_init_leaves_nothing(server, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write(first, "a.txt", b"a")
    create(server, first)
    write(second, "b.txt", b"b")
    with pytest.raises(RepositoryExists):
        op.init_repository(second, "lab", options(server, "origin"))
    assert os.listdir(second) == ["b.txt"]


def test_an_old_lock_file_is_removed(server, tmp_path):
    write(tmp_path, "a.txt", b"a")
    write(tmp_path, ws.OLD_LOCK_NAME, b"")
    create(server, tmp_path)
    assert ws.OLD_LOCK_NAME not in os.listdir(tmp_path)


# ---------------------------------------------------------------- status and the stat cache


def workdir(root: Path, manifest: p.Manifest) -> None:
    ws.write_metadata(root, ws.Metadata("lab", 1, "localhost:9092", "", manifest))


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files the scans hash, in order."""
    calls: list[str] = []
    real = ws.hash_file

    def spy(path: Path) -> p.FileEntry:
        calls.append(path.name)
        return real(path)

    monkeypatch.setattr(ws, "hash_file", spy)
    return calls


def test_status_saves_the_stat_cache_under_the_lock_only(tmp_path, hashed):
    path = write(tmp_path, "a.txt", b"a")
    os.utime(path, ns=(0, 0))  # long before the scans: not racily clean
    workdir(tmp_path, {"a.txt": fe(b"a")})
    with ws.lock_workdir(tmp_path):  # another command is running
        assert op.read_status(tmp_path).changes.empty
        assert not (tmp_path / ws.INDEX_NAME).exists()
    assert hashed == ["a.txt"]
    assert op.read_status(tmp_path).changes.empty
    assert (tmp_path / ws.INDEX_NAME).exists()
    hashed.clear()
    write(tmp_path, "a.txt", b"b")
    os.utime(path, ns=(0, 0))
    assert op.read_status(tmp_path).changes.modified == ["a.txt"] and hashed == ["a.txt"]
    hashed.clear()
    assert op.read_status(tmp_path).changes.modified == ["a.txt"] and hashed == []
