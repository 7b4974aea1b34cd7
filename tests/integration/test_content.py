"""Files of any content round-trip byte for byte through Kafka and the replicas."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from minigit.client import operations

pytestmark = pytest.mark.integration


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (but minigit's own), with its bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(".minigit"):
            found[rel] = path.read_bytes()
    return found


def fill(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_any_content_round_trips(service, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    fill(
        a,
        {
            "all-bytes.bin": bytes(range(256)) * 64,
            "empty": b"",
            "unicodé/ñandú 🦤.txt": "¿qué tal?\n".encode(),
            "deep/er/and/deeper/file.txt": b"nested\n",
            "with space.txt": b"  spaces  \n",
            "no-newline": b"x",
            "crlf.txt": b"line\r\nline\r\n",
            "same-as-other-1": b"duplicate content\n",
            "same-as-other-2": b"duplicate content\n",
            "compressible.txt": b"a" * 3_000_000,
            ".hidden": b"dotfile\n",
        },
    )
    operations.init_repository(a, "content", service.options())
    operations.clone_repository("content", b, service.options())
    assert snapshot(b) == snapshot(a)

    # Deletions (including a whole folder), edits and additions, then back again.
    (b / "deep/er/and/deeper/file.txt").unlink()
    shutil.rmtree(b / "deep")
    (b / "empty").unlink()
    (b / "all-bytes.bin").write_bytes(os.urandom(70_000))
    fill(b, {"deep": b"now a file where a folder was\n", "new/ünïcode.bin": os.urandom(1000)})
    result = operations.push_workdir(b, service.options(), "reshape")
    assert result.status == "accepted" and result.new_version == 2

    pulled = operations.pull_workdir(a, service.options())
    assert pulled.status == "updated" and pulled.new_version == 2
    assert snapshot(a) == snapshot(b)
    assert not (a / "deep").is_dir() and (a / "deep").read_bytes() == b"now a file where a folder was\n"
    assert not (a / "empty").exists()


def test_100_mib_file_with_default_broker_limits(service, tmp_path: Path) -> None:
    """Kafka's default record limit is 1 MiB: a 100 MiB file goes in chunks."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    big = os.urandom(100 * 1024 * 1024)  # incompressible: the worst case
    (a / "big.bin").write_bytes(big)
    started = time.monotonic()
    operations.init_repository(a, "huge", service.options(timeout=120))
    pushed = time.monotonic()
    result = operations.clone_repository("huge", b, service.options(timeout=120))
    cloned = time.monotonic()
    assert result.bytes_received >= len(big)
    assert (b / "big.bin").read_bytes() == big
    print(f"\n100 MiB: push {pushed - started:.1f}s, clone {cloned - pushed:.1f}s")
