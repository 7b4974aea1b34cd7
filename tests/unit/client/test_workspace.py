"""minigit.client.workspace on temporary directories: metadata, the lock, scanning
(ignores: test_ignore.py; modes and links: test_modes.py; the stat cache: test_index.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigit import codec
from minigit import protocol as p
from minigit.client import workspace as ws
from minigit.errors import CorruptMetadata, MinigitError, NoRepository, UnsafePath, UsageError, WorkdirBusy


def fe(data: bytes) -> p.FileEntry:
    return p.FileEntry(p.hash_bytes(data), len(data))


def meta(**changes) -> ws.Metadata:
    values = dict(
        repository="repo",
        version=3,
        bootstrap="localhost:9092",
        namespace="ns.",
        manifest={"a.txt": fe(b"a"), "dir/ü.bin": fe(b"\x00\x01"), "e": fe(b"")},
    )
    values.update(changes)
    return ws.Metadata(**values)


def write(root: Path, rel: str, data: bytes = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- metadata


def test_metadata_round_trip():
    m = meta()
    text = ws.format_metadata(m)
    assert ws.parse_metadata(text) == m
    doc = json.loads(text)
    assert doc["format"] == ws.METADATA_FORMAT
    assert doc["version"] == 3 and doc["repository"] == "repo"
    assert doc["server"] == {"bootstrap": "localhost:9092", "namespace": "ns."}
    assert doc["manifest"]["a.txt"] == [p.hash_bytes(b"a"), 1]


sha_entries = st.builds(p.FileEntry, st.binary(max_size=4).map(p.hash_bytes), st.integers(0, 2**40))
path_parts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00"), min_size=1, max_size=8
).filter(lambda s: s not in (".", "..") and not p.is_reserved_name(s))


@given(
    # a manifest where a path is both a file and a directory is corrupt: not one to round-trip
    st.dictionaries(st.lists(path_parts, min_size=1, max_size=3).map("/".join), sha_entries, max_size=6).filter(
        lambda manifest: not p.find_file_directory_clash(manifest)
    ),
    st.integers(ws.UNFINISHED_VERSION, 10**9),
    st.text(max_size=20),
)
def test_metadata_round_trip_property(manifest, version, namespace):
    m = meta(manifest=manifest, version=version, namespace=namespace)
    assert ws.parse_metadata(ws.format_metadata(m)) == m


def test_version_0_is_an_unfinished_clone():
    assert ws.parse_metadata(_doc(version=0)).unfinished
    assert not ws.parse_metadata(_doc(version=1)).unfinished


def _doc(**changes) -> str:
    doc = json.loads(ws.format_metadata(meta()))
    for key, value in changes.items():
        if value is KeyError:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "\x00\x01",
        ws.format_metadata(meta())[:-10],  # truncated
        ws.format_metadata(meta())[: len(ws.format_metadata(meta())) // 2],
        "[]",
        "null",
        "5",
        '"text"',
        "[" * 100_000,  # deeper than the JSON decoder's recursion limit
        _doc(format=2),
        _doc(format="1"),
        _doc(format=KeyError),
        _doc(version=-1),
        _doc(version="3"),
        _doc(version=3.0),
        _doc(version=True),
        _doc(version=None),
        _doc(version=KeyError),
        _doc(repository="../x"),
        _doc(repository=""),
        _doc(repository=5),
        _doc(repository="a b"),
        _doc(repository=KeyError),
        _doc(server=KeyError),
        _doc(server=None),
        _doc(server=[]),
        _doc(server="localhost:9092"),
        _doc(server={"bootstrap": "localhost:9092"}),
        _doc(server={"bootstrap": "", "namespace": ""}),
        _doc(server={"bootstrap": 5, "namespace": ""}),
        _doc(server={"bootstrap": "h:1", "namespace": None}),
        _doc(manifest=KeyError),
        _doc(manifest=[]),
        _doc(manifest=None),
        _doc(manifest={"../x": ["a" * 64, 1]}),
        _doc(manifest={"/etc/passwd": ["a" * 64, 1]}),
        _doc(manifest={"a\\b": ["a" * 64, 1]}),
        _doc(manifest={".minigit": ["a" * 64, 1]}),
        _doc(manifest={"a//b": ["a" * 64, 1]}),
        _doc(manifest={"a": ["nope", 1]}),
        _doc(manifest={"a": ["a" * 64, -1]}),
        _doc(manifest={"a": ["a" * 64]}),
        _doc(manifest={"a": {"sha": "a" * 64, "size": 1}}),
    ],
)
def test_parse_metadata_rejects(text):
    with pytest.raises(CorruptMetadata) as info:
        ws.parse_metadata(text, "/w/.minigit")
    assert info.value.message.startswith("/w/.minigit is corrupt: ")
    assert info.value.hint and "nothing was changed" in info.value.hint


def test_read_and_write_metadata(tmp_path):
    m = meta()
    ws.write_metadata(tmp_path, m)
    assert ws.read_metadata(tmp_path) == m
    assert sorted(os.listdir(tmp_path)) == [".minigit"]  # no temp file left behind
    ws.write_metadata(tmp_path, meta(version=4))
    assert ws.read_metadata(tmp_path).version == 4
    assert sorted(os.listdir(tmp_path)) == [".minigit"]


def test_read_metadata_errors(tmp_path):
    with pytest.raises(NoRepository):
        ws.read_metadata(tmp_path)
    (tmp_path / ".minigit").write_bytes(b"\xff\xfe{")
    with pytest.raises(CorruptMetadata, match="not UTF-8"):
        ws.read_metadata(tmp_path)
    (tmp_path / ".minigit").write_text("{}")
    with pytest.raises(CorruptMetadata, match=str(tmp_path / ".minigit")):
        ws.read_metadata(tmp_path)


# ---------------------------------------------------------------- roots


def test_find_root(tmp_path):
    root = tmp_path / "w"
    deep = root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert ws.find_root(deep) is None
    with pytest.raises(NoRepository, match="no repository found: clone first"):
        ws.require_root(deep)
    (root / ".minigit").write_text("{}")
    assert ws.find_root(deep) == root.resolve()
    assert ws.find_root(root) == root.resolve()
    assert ws.require_root(deep / "..") == root.resolve()
    # the nearest one wins
    (root / "a" / ".minigit").write_text("{}")
    assert ws.find_root(deep) == (root / "a").resolve()


def test_find_root_ignores_a_minigit_directory(tmp_path):
    (tmp_path / "x" / ".minigit").mkdir(parents=True)
    assert ws.find_root(tmp_path / "x") != (tmp_path / "x").resolve()


# ---------------------------------------------------------------- lock


def test_the_lock_makes_no_file(tmp_path):
    with ws.lock_workdir(tmp_path):
        assert list(tmp_path.iterdir()) == []
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_directory_can_be_locked(tmp_path):
    write(tmp_path, ".minigit-tmp-dead", b"left by a dead command")
    tmp_path.chmod(0o555)
    try:
        with ws.lock_workdir(tmp_path):  # best effort: what cannot be removed stays
            pass
        assert not ws.tidy_unless_busy(tmp_path)
    finally:
        tmp_path.chmod(0o755)


def test_lock_unless_busy(tmp_path):
    write(tmp_path, ".minigit-tmp-dead", b"left by a dead command")
    with ws.lock_unless_busy(tmp_path) as held:
        assert held and list(tmp_path.iterdir()) == []
        write(tmp_path, ".minigit-tmp-live", b"this command's")
        with ws.lock_unless_busy(tmp_path) as again:
            assert not again and (tmp_path / ".minigit-tmp-live").exists()  # nothing tidied
        assert ws.tidy_unless_busy(tmp_path)
    assert not ws.tidy_unless_busy(tmp_path) and list(tmp_path.iterdir()) == []


def test_lock_is_exclusive_within_a_process(tmp_path):
    with ws.lock_workdir(tmp_path):
        with pytest.raises(WorkdirBusy) as info, ws.lock_workdir(tmp_path):
            pass
        assert info.value.exit_code == 5
        assert str(tmp_path) in info.value.message
    # released after
    with ws.lock_workdir(tmp_path):
        pass


def test_lock_is_exclusive_across_threads(tmp_path):
    errors: list[BaseException] = []
    entered = threading.Event()
    release = threading.Event()

    def holder():
        with ws.lock_workdir(tmp_path):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert entered.wait(10)

        def contender():
            try:
                with ws.lock_workdir(tmp_path):
                    pass
            except BaseException as error:  # noqa: BLE001
                errors.append(error)

        t2 = threading.Thread(target=contender)
        t2.start()
        t2.join(10)
        assert len(errors) == 1 and isinstance(errors[0], WorkdirBusy)
    finally:
        release.set()
        thread.join(10)
    with ws.lock_workdir(tmp_path):
        pass


def test_lock_is_exclusive_across_processes(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from minigit.client import workspace as ws
        with ws.lock_workdir(Path(sys.argv[1])):
            print("locked", flush=True)
            sys.stdin.read()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusy), ws.lock_workdir(tmp_path):
            pass
    finally:
        child.stdin.close()
        child.wait(30)
    assert child.returncode == 0
    with ws.lock_workdir(tmp_path):
        pass


def test_lock_released_when_the_body_raises(tmp_path):
    with pytest.raises(RuntimeError), ws.lock_workdir(tmp_path):
        raise RuntimeError("boom")
    with ws.lock_workdir(tmp_path):
        pass


def test_taking_the_lock_removes_what_dead_commands_left_and_nothing_else(tmp_path):
    write(tmp_path, ".minigit-tmp-1a2b/0", b"staged")
    write(tmp_path, ".minigit.minigit-tmp-3c4d", b"{}")
    write(tmp_path, ".minigit-clone-5e6f/a.txt", b"a clone's, not this directory's")
    write(tmp_path, "sub/.minigit-tmp-7a8b", b"a user's file, below the top")
    write(tmp_path, "notes.minigit-tmp-1.txt", b"a user's file")
    write(tmp_path, ".minigit.lock", b"")  # the lock file of earlier versions
    write(tmp_path, ".minigit-index", b"a stat cache without its .minigit")
    with ws.lock_workdir(tmp_path):
        left = sorted(path.name for path in tmp_path.iterdir())
    assert left == [".minigit-clone-5e6f", "notes.minigit-tmp-1.txt", "sub"]
    assert (tmp_path / "sub" / ".minigit-tmp-7a8b").exists()
    write(tmp_path, ".minigit", b"{}")
    write(tmp_path, ".minigit-index", b"the stat cache of this working directory")
    with ws.lock_workdir(tmp_path):
        assert (tmp_path / ".minigit-index").exists()


def test_is_vacant(tmp_path):
    assert ws.is_vacant(tmp_path)
    write(tmp_path, ".minigit.lock", b"")
    write(tmp_path, ".minigit-index", b"")
    write(tmp_path, ".minigit-tmp-1a2b/0", b"staged")
    assert ws.is_vacant(tmp_path)
    for name in (".minigit", ".minigitignore", ".minigit-clone-1a2b", "a"):
        write(tmp_path, name, b"")
        assert not ws.is_vacant(tmp_path)
        (tmp_path / name).unlink()


def test_only_clone_stagings_nobody_holds_are_removed(tmp_path):
    dead = tmp_path / ".minigit-clone-dead"
    write(dead, "a.txt", b"a")
    write(tmp_path, ".minigit-clone-a-file", b"not a directory: not ours")
    with ws.clone_staging(tmp_path) as live:  # removes the dead one on the way
        write(live, "a.txt", b"a")
        assert live.name.startswith(ws.CLONE_STAGING_MARK) and not dead.exists()
        write(dead, "a.txt", b"a")
        ws.remove_dead_clone_stagings(tmp_path)
        assert (live / "a.txt").exists() and not dead.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == [".minigit-clone-a-file"]


def test_a_clone_staging_held_by_another_process_is_kept(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from minigit.client import workspace as ws
        with ws.clone_staging(Path(sys.argv[1])) as staging:
            print(staging.name, flush=True)
            sys.stdin.read()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        name = child.stdout.readline().strip()
        ws.remove_dead_clone_stagings(tmp_path)
        assert (tmp_path / name).is_dir()
    finally:
        child.kill()  # SIGKILL: its staging directory stays, and is dead now
        child.wait(30)
    assert (tmp_path / name).is_dir()
    ws.remove_dead_clone_stagings(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_install_clone_refuses_a_directory_that_is_not_empty(tmp_path):
    staging, target = tmp_path / "staging", tmp_path / "target"
    write(staging, "a.txt", b"a")
    write(target, "mine.txt", b"mine")
    with pytest.raises(UsageError, match="already exists and is not an empty directory"):
        ws.install_clone(staging, target)
    (target / "mine.txt").unlink()
    ws.install_clone(staging, target)  # an empty directory is replaced
    assert (target / "a.txt").read_bytes() == b"a" and not staging.exists()


# ---------------------------------------------------------------- listing and scanning


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "w"
    root.mkdir()
    write(root, ".minigit", b"{}")
    write(root, ".minigit.lock", b"")
    write(root, ".minigit-index", b"")
    write(root, "a.txt", b"a")
    write(root, "sub/b.txt", b"b")
    write(root, "sub/deeper/c.txt", b"c")
    write(root, ".minigit.minigit-tmp-abcd", b"temp")
    write(root, ".minigit-tmp-1234/staged", b"temp")
    write(root, ".minigit-clone-5678/x", b"a clone being made")
    write(root, "sub/.minigit.lock", b"")
    write(root, "nested/.minigit", b"{}")
    write(root, "nested/inner.txt", b"inner")
    write(root, "empty/.keep", b"")
    write(root, ".git/config", b"[core]")
    write(root, "sub/.git/HEAD", b"ref: x")
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside, "secret.txt", b"secret")
    os.symlink(outside / "secret.txt", root / "link-out.txt")
    os.symlink(outside, root / "linkdir")
    os.symlink("a.txt", root / "link-in.txt")
    os.symlink("../../outside", root / "sub" / "up-and-out")
    os.symlink(root / "missing", root / "dangling")
    os.mkfifo(root / "fifo")
    return root


def test_list_files_skips_own_names_git_nested_and_untrackable(tree):
    assert ws.list_files(tree) == ["a.txt", "empty/.keep", "link-in.txt", "sub/b.txt", "sub/deeper/c.txt"]


def test_scan_workdir(tree):
    scan = ws.scan_workdir(tree, {})
    assert scan.manifest == {
        "a.txt": fe(b"a"),
        "empty/.keep": fe(b""),
        "link-in.txt": p.FileEntry(p.hash_bytes(b"a.txt"), 5, p.FileMode.SYMLINK),
        "sub/b.txt": fe(b"b"),
        "sub/deeper/c.txt": fe(b"c"),
    }
    # reported, never silently skipped; minigit's own files and .git are neither tracked nor reported
    assert scan.untrackable == [
        ("dangling", ws.LINK_ABSOLUTE),
        ("fifo", "a named pipe: only files and symbolic links are tracked"),
        ("link-out.txt", ws.LINK_ABSOLUTE),
        ("linkdir", ws.LINK_ABSOLUTE),
        ("sub/.minigit.lock", ws.RESERVED),  # minigit's own only at the top
        ("sub/up-and-out", ws.LINK_OUTSIDE),
    ]
    assert ws.scan_worktree(tree) == scan.manifest


def test_untrackable_names_are_reported(tmp_path):
    write(tmp_path, "ok.txt")
    write(tmp_path, "bad\\name.txt")
    write(tmp_path, ".minigit-notes.txt")
    write(tmp_path, ".MINIGIT.txt")
    write(tmp_path, "sub/.MINIGIT")
    write(tmp_path, "sub/.Minigit-tmp-1")
    write(tmp_path, "sub/kept.txt", b"k")
    write(tmp_path, "back\\slash/inner.txt")
    write(tmp_path, ".minigit-folder/inner.txt")
    scan = ws.scan_workdir(tmp_path, {})
    assert scan.manifest == {"ok.txt": fe(b"x"), "sub/kept.txt": fe(b"k")}
    assert scan.untrackable == [
        (".MINIGIT.txt", ws.RESERVED),
        (".minigit-folder/", ws.RESERVED),
        (".minigit-notes.txt", ws.RESERVED),
        ("back\\slash/", "the protocol does not allow it (backslash)"),
        ("bad\\name.txt", "the protocol does not allow it (backslash)"),
        ("sub/.MINIGIT", ws.RESERVED),
        ("sub/.Minigit-tmp-1", ws.RESERVED),
    ]
    # ignoring them silences them
    write(tmp_path, ".minigitignore", b"bad*\n.minigit-*\n.MINIGIT*\n.Minigit*\nback*\n")
    assert ws.scan_workdir(tmp_path, {}).untrackable == []


def test_a_non_utf8_name_is_reported(tmp_path):
    with open(os.fsencode(tmp_path) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"x")
    scan = ws.scan_workdir(tmp_path, {})
    assert scan.manifest == {}
    assert scan.untrackable == [("caf\udce9.txt", "the protocol does not allow it (not valid UTF-8)")]


def test_long_and_non_ascii_paths_are_checked_whole(tmp_path):
    long, accented = "/".join(["d" * 200] * 6) + "/f", "é" * 100 + "/ü"
    write(tmp_path, long)
    write(tmp_path, accented)
    assert sorted(ws.scan_workdir(tmp_path, {}).manifest) == [long, accented]


def test_a_file_gone_while_scanning_is_not_there(tmp_path, monkeypatch):
    write(tmp_path, "a.txt", b"a")
    write(tmp_path, "gone.txt", b"g")
    real = ws.hash_file

    def vanishing(path):
        if path.name == "gone.txt":
            path.unlink()
        return real(path)

    monkeypatch.setattr(ws, "hash_file", vanishing)
    scan = ws.scan_workdir(tmp_path, {})
    assert (scan.manifest, scan.untrackable) == ({"a.txt": fe(b"a")}, [])


def test_scan_hashes_large_files(tmp_path):
    data = os.urandom(ws.READ_BLOCK * 2 + 5)
    write(tmp_path, "big.bin", data)
    assert ws.scan_worktree(tmp_path) == {"big.bin": fe(data)}


def test_the_scan_leaves_nothing_without_the_lock(tmp_path):
    write(tmp_path, "a.txt")
    scan = ws.scan_workdir(tmp_path, {}, locked=False)
    ws.save_index(tmp_path, scan)  # not saved: no clock was taken, and no lock is held
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]


# ---------------------------------------------------------------- reading pieces


@pytest.mark.parametrize(
    "size", [0, 1, codec.CHUNK_SIZE - 1, codec.CHUNK_SIZE, codec.CHUNK_SIZE + 1, 2 * codec.CHUNK_SIZE]
)
def test_file_source_reads_the_codec_pieces(tmp_path, size):
    data = os.urandom(size)
    write(tmp_path, "d/f", data)
    source = ws.file_source(tmp_path, "d/f", ws.hash_file(tmp_path / "d/f"))
    assert (source.sha, source.size) == (codec.hash_bytes(data), size)
    # the same split as for bytes, and again on a retry
    assert list(source.read_pieces()) == list(codec.split_bytes(data)) == list(source.read_pieces())


# ---------------------------------------------------------------- writing safely


def test_safe_target_normal(tmp_path):
    assert ws.safe_target(tmp_path, "a/b/c.txt") == tmp_path / "a" / "b" / "c.txt"
    (tmp_path / "a").mkdir()
    assert ws.safe_target(tmp_path, "a/b/c.txt") == tmp_path / "a/b/c.txt"
    assert ws.safe_target(tmp_path, "top") == tmp_path / "top"


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", ".minigit", "a/.minigit.lock", "a\\b", "", "a//b"])
def test_safe_target_refuses_forbidden_paths(tmp_path, rel):
    with pytest.raises(UnsafePath):
        ws.safe_target(tmp_path, rel)


def test_safe_target_refuses_a_symlinked_parent(tmp_path):
    root, outside = tmp_path / "w", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(UnsafePath, match="link is a symbolic link"):
        ws.safe_target(root, "link/x.txt")
    (root / "d").mkdir()
    os.symlink(outside, root / "d" / "inner")
    with pytest.raises(UnsafePath, match="inner is a symbolic link"):
        ws.safe_target(root, "d/inner/deeper/x.txt")
    # even a link that stays inside is refused
    os.symlink(root / "d", root / "inlink")
    with pytest.raises(UnsafePath, match="symbolic link"):
        ws.safe_target(root, "inlink/x")
    with pytest.raises(UnsafePath):
        ws.make_parents(root, "link/x.txt")
    assert list(outside.iterdir()) == []


def test_safe_target_refuses_a_file_as_parent(tmp_path):
    write(tmp_path, "f", b"x")
    with pytest.raises(UnsafePath, match="not a directory"):
        ws.safe_target(tmp_path, "f/x")
    with pytest.raises(UnsafePath, match="not a directory"):
        ws.make_parents(tmp_path, "f/x")


def test_make_parents_and_remove_file(tmp_path):
    ws.make_parents(tmp_path, "a/b/c.txt")
    assert (tmp_path / "a" / "b").is_dir()
    write(tmp_path, "a/b/c.txt")
    write(tmp_path, "a/other.txt")
    ws.remove_file(tmp_path, "a/b/c.txt")
    assert not (tmp_path / "a" / "b").exists()  # the empty parent is pruned
    assert (tmp_path / "a" / "other.txt").exists()
    ws.remove_file(tmp_path, "a/b/c.txt")  # already gone: fine
    ws.remove_file(tmp_path, "a/other.txt")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UnsafePath):
        ws.remove_file(tmp_path, "../x")


def test_copy_local_blob(tmp_path):
    data = os.urandom(ws.READ_BLOCK + 10)
    write(tmp_path, "d/f.bin", data)
    out = io.BytesIO()
    ws.copy_local_blob(tmp_path, "d/f.bin", p.hash_bytes(data), out)
    assert out.getvalue() == data


def test_copy_local_blob_detects_a_changed_file(tmp_path):
    write(tmp_path, "f.txt", b"new content")
    with pytest.raises(MinigitError, match=r"f\.txt changed while minigit was reading it"):
        ws.copy_local_blob(tmp_path, "f.txt", p.hash_bytes(b"old content"), io.BytesIO())


def test_copy_local_blob_refuses_unsafe_source(tmp_path):
    with pytest.raises(UnsafePath):
        ws.copy_local_blob(tmp_path, "../x", "a" * 64, io.BytesIO())


def test_own_names():
    for name in (".minigit", ".minigit.lock", ".minigit-index", ".minigit.minigit-tmp-1a2b", ".minigit-tmp-x"):
        assert ws.is_own_name(name, top=True) and not ws.is_own_name(name, top=False)
    assert ws.is_own_name(".minigit-clone-1a2b", top=False)
    for name in (".MINIGIT.lock", ".minigit-notes.txt", "foo.minigit-tmp-1a2b", ".minigitignore", "minigit"):
        assert not ws.is_own_name(name, top=True)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.lists(st.sampled_from(["a", "b", "ü", "c d"]), min_size=1, max_size=3).map("/".join),
        st.binary(max_size=50),
        max_size=6,
    )
)
def test_scan_matches_written_files(tmp_path_factory, files):
    if p.find_file_directory_clash(files):
        return
    root = tmp_path_factory.mktemp("scan")
    for rel, data in files.items():
        write(root, rel, data)
    assert ws.scan_worktree(root) == {rel: fe(data) for rel, data in files.items()}


@pytest.mark.parametrize("rel", ["notes.minigit-tmp-1.txt", "dir/x.minigit", "sub/.minigitignore"])
def test_every_path_the_protocol_accepts_is_tracked(tmp_path, rel):
    assert p.check_path(rel) == rel  # the server accepts it in a tree
    write(tmp_path, rel, b"content")
    assert ws.list_files(tmp_path) == [rel]


def test_parents_of_lists_the_folders_a_path_is_in_from_the_top() -> None:
    assert list(ws.parents_of("a/b/c.txt")) == ["a", "a/b"]
    assert list(ws.parents_of("top.txt")) == []


@pytest.mark.parametrize(("swapped", "link_to"), [("a/b", "b"), ("a", ".")])
def test_a_folder_swapped_for_a_link_during_an_install_pass_stops_it(
    tmp_path: Path, swapped: str, link_to: str
) -> None:
    """A pull installs its files in one pass that looks at each folder once. A folder it
    found sound, replaced meanwhile by a link to a folder outside (another process,
    between two files), must not lead the pass's next files out of the working directory."""
    root, outside, staging = tmp_path / "work", tmp_path / "outside", tmp_path / "staging"
    for folder in (root, outside / "b", staging):
        folder.mkdir(parents=True)
    staged = []
    for number in range(3):
        staged.append(staging / str(number))
        staged[-1].write_bytes(b"from the server")
    folders: ws.SoundFolders = {}
    ws.install_staged(root, "a/b/1", staged[0], folders)
    (root / swapped).rename(tmp_path / "moved-away")
    (root / swapped).symlink_to(outside / link_to)
    with pytest.raises(UnsafePath):
        ws.install_staged(root, "a/b/2", staged[1], folders)
    if swapped == "a":
        with pytest.raises(UnsafePath):
            ws.install_staged(root, "a/c/3", staged[2], folders)
    assert sorted(path.relative_to(outside).as_posix() for path in outside.rglob("*")) == ["b"]
