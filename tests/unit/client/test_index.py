"""minigit.client.index, the stat cache, and how scans and status use it."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from minigit import protocol as p
from minigit.client import index
from minigit.client import workspace as ws

HOUR_NS = 3600 * 10**9


def write(root: Path, rel: str, data: bytes = b"x", age_ns: int = HOUR_NS) -> Path:
    """A file last modified ``age_ns`` ago (an hour: well before any scan's clock)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time_ns() - age_ns
    os.utime(path, ns=(then, then))
    return path


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


def scan_and_save(root: Path, tracked: p.Manifest | None = None) -> ws.Scan:
    scan = ws.scan_workdir(root, tracked or {})
    ws.save_index(root, scan)
    return scan


def fe(data: bytes, mode: p.FileMode = p.FileMode.REGULAR) -> p.FileEntry:
    return p.FileEntry(p.hash_bytes(data), len(data), mode)


# ---------------------------------------------------------------- format


def record(n: int) -> index.Record:
    return (n, 10**18 + n, 10**18 + 2 * n, 2**64 - 1 - n, 0o100644, bytes([n % 256]) * 32)


def test_format_round_trip():
    records = {"a": record(1), "dir/ü.txt": record(2), "z" * 300: record(3)}
    assert index.parse_index(index.format_index(records)) == records
    assert index.parse_index(index.format_index({})) == {}


def test_the_format_is_compact_and_fast_for_100000_files():
    records = {f"src/module_{n // 100:04d}/file_{n:06d}.py": record(n) for n in range(100_000)}
    started = time.perf_counter()
    data = index.format_index(records)
    formatted = time.perf_counter()
    assert index.parse_index(data) == records
    parsed = time.perf_counter()
    assert len(data) < 100 * len(records)
    # generous bounds (a loaded CI machine): about 0.1 s each on the development machine
    assert formatted - started < 2 and parsed - formatted < 2


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"",
        lambda data: data[:10],
        lambda data: data[:-1],
        lambda data: data + b"x",
        lambda data: b"XXXXXXXX" + data[8:],
        lambda data: data[:20] + bytes([data[20] ^ 1]) + data[21:],  # a bit flipped in a record
        lambda data: b"\x00" * len(data),
        lambda data: os.urandom(len(data)),
    ],
)
def test_a_damaged_index_is_refused_and_loads_empty(tmp_path, damage):
    data = damage(index.format_index({"a": record(1), "b": record(2)}))
    with pytest.raises(ValueError):
        index.parse_index(data)
    (tmp_path / index.INDEX_NAME).write_bytes(data)
    assert index.load_index(tmp_path / index.INDEX_NAME) == index.StatCache()


def test_a_well_checksummed_index_that_lies_in_its_sizes_is_refused():
    records = {"a": record(1), "b": record(2)}
    for body in (
        index.HEADER.pack(index.MAGIC, 3, 3) + b"".join(index.RECORD.pack(*r) for r in records.values()) + b"a\0b",
        index.HEADER.pack(index.MAGIC, 2, 3) + b"".join(index.RECORD.pack(*r) for r in records.values()) + b"a\0a",
        index.HEADER.pack(index.MAGIC, 2, 3) + b"".join(index.RECORD.pack(*r) for r in records.values()) + b"a\xff",
    ):
        with pytest.raises(ValueError):
            index.parse_index(body + hashlib.sha256(body).digest())


def test_an_unreadable_or_missing_index_loads_empty(tmp_path):
    assert index.load_index(tmp_path / "missing") == index.StatCache()
    (tmp_path / "dir").mkdir()
    assert index.load_index(tmp_path / "dir") == index.StatCache()


# ---------------------------------------------------------------- scans


def test_unchanged_files_are_not_hashed_again(tmp_path, hashed):
    write(tmp_path, "a.txt", b"a")
    write(tmp_path, "sub/b.txt", b"b")
    first = scan_and_save(tmp_path)
    assert sorted(hashed) == ["a.txt", "b.txt"] and first.refreshed
    hashed.clear()
    again = scan_and_save(tmp_path)
    assert hashed == [] and again.manifest == first.manifest and not again.refreshed


def test_a_file_whose_stat_changed_is_hashed_again(tmp_path, hashed):
    write(tmp_path, "size.txt", b"one")
    write(tmp_path, "mtime.txt", b"same")
    write(tmp_path, "mode.txt", b"m")
    write(tmp_path, "same.txt", b"s")
    scan_and_save(tmp_path)
    hashed.clear()
    write(tmp_path, "size.txt", b"longer")
    write(tmp_path, "mtime.txt", b"SAME", age_ns=2 * HOUR_NS)  # same size, older even
    (tmp_path / "mode.txt").chmod(0o755)
    scan = scan_and_save(tmp_path)
    assert sorted(hashed) == ["mode.txt", "mtime.txt", "size.txt"]
    assert scan.manifest["size.txt"] == fe(b"longer") and scan.manifest["mtime.txt"] == fe(b"SAME")
    assert scan.manifest["mode.txt"] == fe(b"m", p.FileMode.EXECUTABLE)


def test_a_file_replaced_by_another_with_the_same_stat_but_inode_is_hashed(tmp_path, hashed):
    path = write(tmp_path, "a.txt", b"one")
    scan_and_save(tmp_path)
    before = os.stat(path)
    hashed.clear()
    (tmp_path / "new").write_bytes(b"two")
    os.utime(tmp_path / "new", ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp_path / "new", path)
    assert scan_and_save(tmp_path).manifest["a.txt"] == fe(b"two") and hashed == ["a.txt"]


def test_a_file_modified_as_the_index_was_written_is_hashed_again(tmp_path, hashed):
    """Racy git: the index file's own mtime is not after the file's: its stat cannot tell."""
    path = write(tmp_path, "a.txt", b"real content")
    st = os.lstat(path)
    wrong = bytes(32)  # what the index says: not the content's sha
    records = {"a.txt": (*index.stat_key(st), wrong)}
    index_path = tmp_path / index.INDEX_NAME
    index.write_index(index_path, tmp_path / ".minigit-tmp-x", records)
    os.utime(index_path, ns=(st.st_mtime_ns, st.st_mtime_ns))  # written in the same granule
    assert ws.scan_workdir(tmp_path, {}).manifest["a.txt"] == fe(b"real content") and hashed == ["a.txt"]
    hashed.clear()
    later = st.st_mtime_ns + 1
    os.utime(index_path, ns=(later, later))  # written after: trusted, the wrong sha included
    assert ws.scan_workdir(tmp_path, {}).manifest["a.txt"].sha == wrong.hex() and hashed == []


def test_a_file_modified_since_the_scan_began_is_not_kept(tmp_path, hashed):
    """The writer's guard: a file modified once the scan began may change again, unseen, in the same granule."""
    write(tmp_path, "old.txt", b"old")
    write(tmp_path, "new.txt", b"new", age_ns=-HOUR_NS)  # as if modified while the scan runs
    scan_and_save(tmp_path)
    assert set(index.load_index(tmp_path / index.INDEX_NAME).records) == {"old.txt"}
    hashed.clear()
    scan_and_save(tmp_path)
    assert hashed == ["new.txt"]


def test_a_corrupt_index_is_ignored_and_rebuilt(tmp_path, hashed):
    write(tmp_path, "a.txt", b"a")
    (tmp_path / index.INDEX_NAME).write_bytes(b"garbage")
    assert scan_and_save(tmp_path).manifest == {"a.txt": fe(b"a")} and hashed == ["a.txt"]
    assert set(index.load_index(tmp_path / index.INDEX_NAME).records) == {"a.txt"}
    hashed.clear()
    scan_and_save(tmp_path)
    assert hashed == []


def test_the_index_is_written_through_a_temporary_name_and_never_tracked(tmp_path, monkeypatch):
    write(tmp_path, "a.txt", b"a")
    temps = []
    real = index.write_index

    def spy(path: Path, temp: Path, records: dict) -> None:
        temps.append(temp.name)
        real(path, temp, records)

    monkeypatch.setattr(index, "write_index", spy)
    scan_and_save(tmp_path)
    assert len(temps) == 1 and ws.is_leftover(temps[0])
    assert sorted(os.listdir(tmp_path)) == [index.INDEX_NAME, "a.txt"]
    scan = ws.scan_workdir(tmp_path, {})
    assert list(scan.manifest) == ["a.txt"] and scan.untrackable == []


def test_links_are_read_every_time(tmp_path, hashed):
    os.symlink("a.txt", tmp_path / "link")
    scan_and_save(tmp_path)
    os.unlink(tmp_path / "link")
    os.symlink("b.txt", tmp_path / "link")
    assert scan_and_save(tmp_path).manifest == {"link": fe(b"b.txt", p.FileMode.SYMLINK)} and hashed == []


def test_an_index_that_is_a_fifo_a_link_or_a_device_is_ignored_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert index.load_index(fifo).records == {}  # no writer: open() would wait forever
    link = tmp_path / "link"
    link.symlink_to("/dev/zero")
    assert index.load_index(link).records == {}  # followed, it would be read without end
    assert index.load_index(Path("/dev/zero")).records == {}
