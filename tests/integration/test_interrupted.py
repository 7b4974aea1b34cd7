"""A real `minigit clone` / `minigit pull NAME` of a few MiB in many files, killed
with SIGKILL before and while it writes its files, against the real service:
it leaves no directory or a complete clone (a new directory), or one the next
`minigit pull` finishes (an existing directory), and no staging folder outlives
the next command (issue 8)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MINIGIT, Service

pytestmark = pytest.mark.integration

FILES = 400
FILE_SIZE = 8 * 1024  # 3.2 MiB that zlib cannot shrink


@pytest.fixture
def one_replica(bare_service: Service) -> Service:
    bare_service.start("1")
    return bare_service


@pytest.fixture
def repository(one_replica: Service, tmp_path: Path) -> dict[str, bytes]:
    """Repository "big": FILES files in a few directories; returns their contents."""
    origin = tmp_path / "origin"
    randbytes = random.Random(8).randbytes
    content = {f"dir{n % 7}/file{n:04}.bin": randbytes(FILE_SIZE) for n in range(FILES)}
    for rel, data in content.items():
        (origin / rel).parent.mkdir(parents=True, exist_ok=True)
        (origin / rel).write_bytes(data)
    created = one_replica.cli("init", "big", cwd=origin, timeout=300)
    assert created.returncode == 0, created.stderr
    return content


def user_files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and not path.name.startswith(".minigit")
    }


def minigit_leftovers(directory: Path) -> list[str]:
    """What dead commands left (the stat cache, .minigit-index, is no leftover)."""
    names = set(os.listdir(directory)) - {".minigit-index"}
    return sorted(name for name in names if name.startswith((".minigit-", ".minigit.minigit-")))


def count_files(directory: Path, skip_minigit: bool = False) -> int:
    """Files below ``directory``; with ``skip_minigit``, outside minigit's own folders."""
    count = 0
    for _, folders, names in os.walk(directory):
        if skip_minigit:
            folders[:] = [name for name in folders if not name.startswith(".minigit")]
        count += sum(not name.startswith(".minigit") for name in names) if skip_minigit else len(names)
    return count


def kill_when(service: Service, args: list[str], cwd: Path, ready: Callable[[], bool]) -> None:
    """Run `minigit ARGS` and SIGKILL it as soon as ``ready()`` (polled every
    millisecond); fail if it ends first."""
    command = subprocess.Popen(
        [MINIGIT, *args], cwd=cwd, env=service.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert command.poll() is None, f"it ended before the kill: {command.stderr.read().decode()}"
            assert time.monotonic() < deadline, "it never reached the point to kill it at"
            time.sleep(0.001)
        command.send_signal(signal.SIGKILL)
    finally:
        command.wait(30)
        command.stderr.close()
    assert command.returncode == -signal.SIGKILL


def test_a_clone_killed_while_it_downloads_or_writes_leaves_no_directory_then_a_clone_succeeds(
    one_replica: Service, repository: dict[str, bytes], tmp_path: Path
) -> None:
    clones = tmp_path / "clones"
    clones.mkdir()
    target = clones / "copy"
    # while it writes the files: half of them written
    started = time.monotonic()
    kill_when(one_replica, ["clone", "big", "copy"], clones, lambda: count_files(clones) > FILES // 2)
    writing_after = time.monotonic() - started
    assert not target.exists()
    assert minigit_leftovers(clones), "the dead clone's staging directory"
    # before it writes anything (connecting, downloading)
    started = time.monotonic()
    kill_when(one_replica, ["clone", "big", "copy"], clones, lambda: time.monotonic() - started > writing_after / 2)
    if target.exists():  # it went faster this time: killed after its rename, the clone is whole
        assert user_files(target) == repository
        shutil.rmtree(target)

    done = one_replica.cli("clone", "big", "copy", cwd=clones, timeout=300)
    assert done.returncode == 0, done.stderr
    assert os.listdir(clones) == ["copy"]  # the dead one's staging is gone
    assert user_files(target) == repository and minigit_leftovers(target) == []
    status = one_replica.cli("status", cwd=target)
    assert status.returncode == 0 and "working directory clean" in status.stdout


def test_a_pull_into_an_empty_directory_killed_mid_write_is_finished_by_the_next_pull(
    one_replica: Service, repository: dict[str, bytes], tmp_path: Path
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    kill_when(one_replica, ["pull", "big"], here, lambda: 0 < count_files(here, skip_minigit=True) < FILES)

    status = one_replica.cli("status", cwd=here)
    assert status.returncode == 1
    assert "the clone of 'big' into" in status.stderr and "did not finish" in status.stderr
    assert "run 'minigit pull' there to finish it" in status.stderr
    pushed = one_replica.cli("push", cwd=here)
    assert pushed.returncode == 1 and "did not finish" in pushed.stderr

    done = one_replica.cli("pull", cwd=here, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"Cloned big at version 1: {FILES} files" in done.stdout
    assert user_files(here) == repository
    assert sorted(name for name in os.listdir(here) if name.startswith(".")) == [".minigit", ".minigit-index"]
    status = one_replica.cli("status", cwd=here)
    assert status.returncode == 0 and "working directory clean" in status.stdout
