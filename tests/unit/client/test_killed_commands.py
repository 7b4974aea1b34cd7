"""Clones and pulls killed (SIGKILL) at every change they make to the disk.

Each run forks; the child runs the command against the in-process service
(inprocess.py) with an audit hook that kills the child with SIGKILL just before
its k-th change to the disk (a file opened for writing, a mkdir, a rename, an
unlink, an rmdir), for k = 1, 2, ... until the command finishes before its k-th
change. No ``finally`` runs in the child: the disk is what a real kill leaves.
The parent then checks what the issue asks (issue 8): no target or a complete
clone, or a working directory the next command finishes or cleans up, and no
staging folder left once that next command is done.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import os
import shutil
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from inprocess import InProcessServer
from test_operations import create, files, options, write

from minigit.client import operations as op
from minigit.client import workspace as ws
from minigit.errors import CloneUnfinished, NoRepository, WorkdirBusy

DISK_CHANGES = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
CHILD_TIMEOUT_S = 10
MAX_CHANGES = 500  # far more changes than any command here makes


def changes_disk(event: str, args: tuple, under: str) -> bool:
    """Whether an audit event is a change to the disk below ``under`` (a relative
    path is one made through a directory descriptor, as shutil.rmtree does)."""
    if event == "open":
        path, _mode, flags = args
        if not flags & WRITE_FLAGS:
            return False
    elif event in DISK_CHANGES:
        path = args[0]
    else:
        return False
    if not isinstance(path, str | bytes | os.PathLike):
        return False
    path = os.fsdecode(path)
    return not os.path.isabs(path) or path.startswith(under)


def run_killed(command: Callable[[], object], at: int, under: Path) -> bool:
    """Run ``command`` in a child process that is killed with SIGKILL just before
    its ``at``-th change to the disk below ``under``. True if it was killed, False
    if it finished first (it must not fail)."""
    changes = 0

    def is_the_change(event: str, args: tuple) -> bool:
        nonlocal changes
        if not changes_disk(event, args, str(under)):
            return False
        changes += 1
        return changes == at

    return run_killed_before(command, is_the_change)


def run_killed_before(command: Callable[[], object], is_the_change: Callable[[str, tuple], bool]) -> bool:
    """Run ``command`` in a child process killed with SIGKILL just before the
    first audit event for which ``is_the_change`` is true. True if it was killed,
    False if it finished first (it must not fail)."""
    pid = os.fork()
    if pid == 0:  # the child: leaves only through os._exit or the kill
        faulthandler.dump_traceback_later(CHILD_TIMEOUT_S, exit=True)  # a hung child fails, with its stack
        try:

            def hook(event: str, args: tuple) -> None:
                if is_the_change(event, args):
                    os.kill(os.getpid(), signal.SIGKILL)

            sys.addaudithook(hook)
            command()
        except BaseException:  # noqa: BLE001 - reported to the parent by the exit code
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.waitstatus_to_exitcode(status) == 0, "the command failed in the child"
    return False


def kill_points() -> range:
    """The k of the k-th change to kill at; a test breaks out once the command finished."""
    return range(1, MAX_CHANGES)


def leftovers(directory: Path) -> list[str]:
    """Temporary files and staging folders of minigit in ``directory``."""
    return sorted(
        name for name in os.listdir(directory) if ws.is_leftover(name) or name.startswith(ws.CLONE_STAGING_MARK)
    )


def assert_complete(root: Path, server: InProcessServer, expected: dict[str, bytes]) -> None:
    assert files(root) == expected
    meta = ws.read_metadata(root)
    assert (meta.repository, meta.version) == ("lab", server.head("lab"))
    assert meta.manifest == {path: entry for path, entry in ws.scan_worktree(root).items() if path in meta.manifest}
    assert leftovers(root) == []


@pytest.fixture
def server() -> InProcessServer:
    return InProcessServer()


ORIGIN = {"a.txt": "a", "d/e/bytes.bin": bytes(range(256)), "d/f.txt": "f", "empty": b"", "z/y/x.txt": "deep"}


def test_a_clone_into_a_new_directory_killed_at_any_change_leaves_no_directory_or_a_complete_clone(
    server: InProcessServer, tmp_path: Path
) -> None:
    create(server, tmp_path / "origin", ORIGIN)
    expected = files(tmp_path / "origin")
    for at in kill_points():
        parent = tmp_path / f"killed-at-{at}"
        target = parent / "copy"
        killed = run_killed(lambda target=target: op.clone_repository("lab", target, options(server)), at, tmp_path)
        if target.exists():
            assert_complete(target, server, expected)
        else:
            assert op.clone_repository("lab", target, options(server)).status == op.PullStatus.CLONED
        assert_complete(target, server, expected)
        assert op.read_status(target).changes.empty
        assert os.listdir(parent) == ["copy"]  # the dead clone's staging directory is gone
        if not killed:
            break
    else:
        pytest.fail(f"still killed at change {MAX_CHANGES}")
    assert at > len(ORIGIN) * 2  # it was killed at each file's staging and installing


@pytest.mark.parametrize("next_command", ["pull", "clone"])
def test_a_clone_into_an_existing_directory_killed_at_any_change_is_finished_by_the_next_command(
    server: InProcessServer, tmp_path: Path, next_command: str
) -> None:
    create(server, tmp_path / "origin", ORIGIN)
    expected = files(tmp_path / "origin")
    for at in kill_points():
        here = tmp_path / f"killed-at-{at}"
        here.mkdir()
        # `minigit pull lab` in an empty current directory
        killed = run_killed(lambda here=here: op.pull_here(here, "lab", options(server)), at, tmp_path)
        if not is_finished_clone(here, server):
            if next_command == "pull":
                result = op.pull_here(here, "lab", options(server))
            else:
                result = op.clone_repository("lab", here, options(server))
            assert (result.status, result.new_version, result.kept_local) == (op.PullStatus.CLONED, 1, [])
            assert result.changes.added == sorted(expected)
        assert_complete(here, server, expected)
        assert set(os.listdir(here)) - set(expected) - {"d", "z", ws.INDEX_NAME} == {ws.METADATA_NAME}  # no lock file
        if not killed:
            break
    else:
        pytest.fail(f"still killed at change {MAX_CHANGES}")
    assert at > len(ORIGIN) * 2


def is_finished_clone(here: Path, server: InProcessServer) -> bool:
    """What status says of a clone into an existing directory that was killed:
    nothing there yet, an unfinished clone, or a finished one."""
    try:
        status = op.read_status(here)
    except NoRepository:
        assert ws.is_vacant(here)
        return False
    except CloneUnfinished as unfinished:
        assert "run 'minigit pull' there" in unfinished.hint
        assert (unfinished.repo, unfinished.path) == ("lab", str(here))
        return False
    assert status.changes.empty and status.version == server.head("lab")
    return True


def test_an_unfinished_clone_is_finished_at_the_new_head_without_a_conflict(
    server: InProcessServer, tmp_path: Path
) -> None:
    origin, here = tmp_path / "origin", tmp_path / "here"
    create(server, origin, {"a.txt": "a1", "b.txt": "b1", "c.txt": "c1"})
    here.mkdir()
    # killed after it installed a.txt and b.txt, before c.txt
    installs_c = lambda event, args: event == "os.rename" and args[1] == str(here / "c.txt")  # noqa: E731
    assert run_killed_before(lambda: op.pull_here(here, "lab", options(server)), installs_c)
    assert files(here) == {"a.txt": b"a1", "b.txt": b"b1"}
    write(origin, "a.txt", "a2")
    write(origin, "c.txt", "c2")
    op.push_workdir(origin, options(server, "origin"))
    write(here, "mine.txt", "mine")
    with pytest.raises(CloneUnfinished):
        op.push_workdir(here, options(server))
    result = op.pull_here(here, None, options(server))
    assert (result.status, result.old_version, result.new_version) == (op.PullStatus.CLONED, 0, 2)
    assert result.kept_local == ["mine.txt"]
    assert files(here) == {"a.txt": b"a2", "b.txt": b"b1", "c.txt": b"c2", "mine.txt": b"mine"}
    assert ws.read_metadata(here).version == 2 and op.read_status(here).changes.added == ["mine.txt"]


def test_a_pull_killed_at_any_change_is_finished_by_the_next_pull_without_a_conflict(
    server: InProcessServer, tmp_path: Path
) -> None:
    origin, behind = tmp_path / "origin", tmp_path / "behind"
    create(server, origin, {"keep.txt": "k", "mod.txt": "m1", "gone.txt": "g", "f": "file", "d/x.txt": "x"})
    op.clone_repository("lab", behind, options(server))
    write(behind, "keep.txt", "my edit")  # local edits the pull keeps
    write(behind, "untracked.txt", "mine")
    write(origin, "mod.txt", "m2")
    (origin / "gone.txt").unlink()
    (origin / "f").unlink()
    write(origin, "f/now-a-directory.txt", "dir")
    (origin / "d" / "x.txt").unlink()
    (origin / "d").rmdir()
    write(origin, "d", "now a file")
    write(origin, "new/sub/bytes.bin", bytes(range(256)))
    op.push_workdir(origin, options(server, "origin"))
    expected = {**files(origin), "keep.txt": b"my edit", "untracked.txt": b"mine"}
    for at in kill_points():
        mine = tmp_path / f"killed-at-{at}"
        shutil.copytree(behind, mine, symlinks=True)
        killed = run_killed(lambda mine=mine: op.pull_workdir(mine, options(server)), at, tmp_path)
        status = op.read_status(mine)  # works at either version
        assert status.version in (1, 2)
        result = op.pull_workdir(mine, options(server))
        assert result.status == (op.PullStatus.UP_TO_DATE if status.version == 2 else op.PullStatus.UPDATED)
        assert result.kept_local == ["keep.txt", "untracked.txt"]
        assert files(mine) == expected and ws.read_metadata(mine).version == 2
        assert leftovers(mine) == []
        if not killed:
            break
    else:
        pytest.fail(f"still killed at change {MAX_CHANGES}")
    assert at > 2 * 5


def test_status_removes_what_dead_commands_left_but_not_while_a_command_runs(
    server: InProcessServer, tmp_path: Path
) -> None:
    create(server, tmp_path, {"a.txt": "a"})
    write(tmp_path, f"{ws.TEMP_MARK}dead/0", "staged")
    write(tmp_path, f"{ws.METADATA_NAME}{ws.TEMP_MARK}dead", "{}")
    assert op.read_status(tmp_path).changes.empty
    assert leftovers(tmp_path) == []
    with ws.lock_workdir(tmp_path):
        write(tmp_path, f"{ws.TEMP_MARK}live/0", "staged")
        assert op.read_status(tmp_path).changes.empty
        assert leftovers(tmp_path) == [f"{ws.TEMP_MARK}live"]


def test_status_of_a_clone_that_is_still_running_says_so(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path / "origin", {"a.txt": "a"})
    here = tmp_path / "here"
    op.clone_repository("lab", here, options(server))
    meta = ws.read_metadata(here)
    ws.write_metadata(here, dataclasses.replace(meta, version=ws.UNFINISHED_VERSION))
    with ws.lock_workdir(here), pytest.raises(WorkdirBusy):
        op.read_status(here)
    with pytest.raises(CloneUnfinished):
        op.read_status(here)
