"""minigit.client.operations against an in-process service (tests/unit/client/inprocess.py).

Real Service, MemoryStore, protocol, codec and ReplyCollector; no Kafka. Every
request and answer goes through the wire format, so what the client sends and
reads here is what it sends and reads through Kafka.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from inprocess import InProcessServer, RecordingObserver, corrupt, drop, edit_reply, failover, swap

from minigit import codec, identity
from minigit import protocol as p
from minigit.client import exchange, keys
from minigit.client import operations as op
from minigit.client import workspace as ws
from minigit.client.changes import Strategy
from minigit.client.exchange import Credentials
from minigit.config import DEFAULT_BOOTSTRAP, KafkaSettings, ServerFlags
from minigit.errors import (
    CorruptMetadata,
    ExitCode,
    MinigitError,
    NoRepository,
    NotAuthenticated,
    ProtocolError,
    PullConflict,
    PushRejected,
    RepositoryExists,
    RepositoryNotFound,
    ServerUnreachable,
    UnresolvedConflicts,
    UnsafePath,
    UsageError,
)

BIG = random.Random(7).randbytes(2 * codec.CHUNK_SIZE + 321)  # three chunks that zlib cannot shrink


@pytest.fixture
def server() -> InProcessServer:
    return make_server()


def make_server(**options: object) -> InProcessServer:
    """An in-process service where the users of these tests are registered."""
    server = InProcessServer(**options)
    server.enrol("origin", *MEMBERS)
    return server


def same_request(one: p.Request, other: p.Request) -> bool:
    """The same request (id and contents), whenever each sending was signed."""
    return dataclasses.replace(one, signed_ms=0, signature="") == dataclasses.replace(other, signed_ms=0, signature="")


def options(server: InProcessServer, user: str = "alice", flags: ServerFlags | None = None) -> op.ClientOptions:
    return op.ClientOptions(user, flags or ServerFlags(), 30.0, connector=server.connector)


def write(root: Path, rel: str, data: bytes | str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def files(root: Path) -> dict[str, bytes]:
    """The user's files under ``root`` (minigit's own left out)."""
    return {rel: (root / rel).read_bytes() for rel in ws.list_files(root)}


def create(server: InProcessServer, root: Path, content: dict[str, bytes | str], name: str = "lab") -> op.PushResult:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in content.items():
        write(root, rel, data)
    # public, so that replies travel in clear, where the tampering hooks can reach them
    created = op.init_repository(root, name, options(server, "origin"), "version 1", visibility=p.Visibility.PUBLIC)
    server.grant(name, p.Access.WRITE, "origin", *MEMBERS)  # everyone writes (an owner's level cannot change)
    return created


# The users of these tests besides the owner, "origin"; none of them owns what they clone.
MEMBERS = ("alice", "bob", "bryan", "willy", "esteban", "carol")


def history(server: InProcessServer, repo: str = "lab") -> list[int]:
    return [info.version for info in server.store.list_versions(repo)]


# ---------------------------------------------------------------- the seed's scenario


def test_seed_scenario(server: InProcessServer, tmp_path: Path) -> None:
    origin, a, b, c = (tmp_path / name for name in ("origin", "a", "b", "c"))
    a.mkdir()
    create(server, origin, {"README.md": "the lab report\n", "src/server.py": "server\n", "src/client.py": "client\n"})
    op.clone_repository("lab", b, options(server, "bryan"))
    write(origin, "src/server.py", "server v2\n")
    assert op.push_workdir(origin, options(server, "origin"), "version 2").new_version == 2
    op.clone_repository("lab", c, options(server, "willy"))
    write(b, "src/client.py", "client edited by B\n")
    write(c, "NOTES.md", "C's notes\n")
    b_metadata = (b / ws.METADATA_NAME).read_bytes()

    with pytest.raises(NoRepository) as no_repo:
        op.push_workdir(a, options(server, "esteban"), "A")
    assert no_repo.value.exit_code == ExitCode.ERROR
    with pytest.raises(PushRejected) as rejected:
        op.push_workdir(b, options(server, "bryan"), "B")
    error = rejected.value
    assert (error.repo, error.server, error.base, error.head) == ("lab", DEFAULT_BOOTSTRAP, 1, 2)
    assert error.exit_code == ExitCode.REJECTED and "fetch first" in error.message
    assert (b / ws.METADATA_NAME).read_bytes() == b_metadata and history(server) == [1, 2]
    accepted = op.push_workdir(c, options(server, "willy"), "C")
    assert (accepted.status, accepted.old_version, accepted.new_version) == (op.PushStatus.ACCEPTED, 2, 3)
    assert accepted.changes.added == ["NOTES.md"] and history(server) == [1, 2, 3]

    cloned = op.pull_here(a, "lab", options(server, "esteban"))
    updated = op.pull_here(b, None, options(server, "bryan"))
    current = op.pull_here(c, None, options(server, "willy"))
    assert (cloned.status, cloned.new_version) == (op.PullStatus.CLONED, 3)
    assert (updated.status, updated.old_version, updated.new_version) == (op.PullStatus.UPDATED, 1, 3)
    assert updated.changes.to_json() == {"added": ["NOTES.md"], "modified": ["src/server.py"], "deleted": []}
    assert updated.kept_local == ["src/client.py"]
    assert (current.status, current.old_version, current.new_version) == (op.PullStatus.UP_TO_DATE, 3, 3)
    for directory in (a, b, c):
        assert files(directory)["NOTES.md"] == b"C's notes\n"
        assert files(directory)["src/server.py"] == b"server v2\n"
        assert ws.read_metadata(directory).version == 3
    assert files(a)["src/client.py"] == b"client\n"
    assert files(b)["src/client.py"] == b"client edited by B\n"
    again = op.push_workdir(b, options(server, "bryan"), "B again")
    assert (again.status, again.new_version, server.head("lab")) == (op.PushStatus.ACCEPTED, 4, 4)


# ---------------------------------------------------------------- init


def test_init_creates_version_1(server: InProcessServer, tmp_path: Path) -> None:
    result = create(server, tmp_path / "w", {"a.txt": "a", "big.bin": BIG, "empty": b""})
    assert (result.status, result.old_version, result.new_version) == (op.PushStatus.CREATED, 0, 1)
    assert result.changes.added == ["a.txt", "big.bin", "empty"]
    tree = p.encode_tree(ws.scan_worktree(tmp_path / "w"))
    assert result.bytes_sent == len(tree) + 1 + len(BIG)
    meta = ws.read_metadata(tmp_path / "w")
    assert (meta.repository, meta.version, meta.bootstrap, meta.namespace) == ("lab", 1, DEFAULT_BOOTSTRAP, "")
    assert server.store.read_blob(server.wire.log_partition("lab"), p.hash_bytes(BIG)) == BIG
    assert server.store.get_version("lab", 1).author == "origin"


def test_init_of_an_existing_name_is_refused(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path / "one", {"a": "1"})
    with pytest.raises(RepositoryExists):
        create(server, tmp_path / "two", {"a": "2"})
    assert not (tmp_path / "two" / ws.METADATA_NAME).exists() and history(server) == [1]


def test_init_in_a_working_directory_is_refused_before_connecting(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path, {"a": "1"})
    with pytest.raises(UsageError, match="already a minigit working directory"):
        op.init_repository(tmp_path, "other", options(server))
    assert len(server.connections) == 1


def test_init_sends_an_upload_cut_short_once_more_as_push_does(server: InProcessServer, tmp_path: Path) -> None:
    server.tamper_uploads(lambda request, values: values[:-1])
    result = create(server, tmp_path, {"a.txt": "a"})
    assert (result.new_version, server.head("lab")) == (1, 1)
    first, second = server.log
    assert json.loads(first.replies[-1])["status"] == p.Status.MISSING_OBJECTS
    assert second.request.request_id != first.request.request_id and len(second.uploaded) == len(first.uploaded) + 1


def test_init_with_uploads_cut_short_twice_fails_and_writes_nothing(server: InProcessServer, tmp_path: Path) -> None:
    server.tamper_uploads(*[lambda request, values: values[:-1]] * 2)
    with pytest.raises(MinigitError, match=r"the server refused the init: .*not uploaded completely") as failed:
        create(server, tmp_path, {"a.txt": "a"})
    assert failed.value.exit_code == ExitCode.ERROR
    assert not (tmp_path / ws.METADATA_NAME).exists() and server.head("lab") is None
    assert create(server, tmp_path, {}).new_version == 1


def test_a_request_the_server_would_refuse_fails_before_anything_is_sent(
    server: InProcessServer, tmp_path: Path
) -> None:
    create(server, tmp_path, {"a.txt": "a"})
    write(tmp_path, "b.txt", BIG)
    sent = len(server.log)
    with pytest.raises(ProtocolError, match="message longer than"):
        op.push_workdir(tmp_path, options(server), "m" * (p.MAX_MESSAGE_LENGTH + 1))
    assert len(server.log) == sent and server.head("lab") == 1


# ---------------------------------------------------------------- pull


def test_pull_at_the_head_is_up_to_date(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path, {"a.txt": "a", "b.txt": "b"})
    write(tmp_path, "a.txt", "edited")
    before = (tmp_path / ws.METADATA_NAME).read_bytes()
    result = op.pull_workdir(tmp_path, options(server))
    assert (result.status, result.old_version, result.new_version) == (op.PullStatus.UP_TO_DATE, 1, 1)
    assert (result.kept_local, result.bytes_received, result.changes.empty) == (["a.txt"], 0, True)
    assert (tmp_path / ws.METADATA_NAME).read_bytes() == before and files(tmp_path)["a.txt"] == b"edited"


def test_pull_applies_upstream_and_keeps_local_edits(server: InProcessServer, tmp_path: Path) -> None:
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    create(server, origin, {"up.txt": "1", "gone.txt": "g", "edit.txt": "e", "drop.txt": "d"})
    op.clone_repository("lab", mine, options(server))
    write(origin, "up.txt", "2")
    (origin / "gone.txt").unlink()
    write(origin, "sub/new.txt", "new")
    op.push_workdir(origin, options(server, "origin"))
    write(mine, "edit.txt", "my edit")
    (mine / "drop.txt").unlink()
    write(mine, "extra.txt", "untracked")

    result = op.pull_workdir(mine, options(server))
    assert (result.status, result.old_version, result.new_version) == (op.PullStatus.UPDATED, 1, 2)
    assert result.changes.to_json() == {"added": ["sub/new.txt"], "modified": ["up.txt"], "deleted": ["gone.txt"]}
    assert result.kept_local == ["drop.txt", "edit.txt", "extra.txt"]
    # The tree, what changed upstream, and the contents the client said it lost (edit.txt's, drop.txt's).
    assert result.bytes_received == len(p.encode_tree(ws.scan_worktree(origin))) + len("2" + "new" + "e" + "d")
    assert files(mine) == {"up.txt": b"2", "sub/new.txt": b"new", "edit.txt": b"my edit", "extra.txt": b"untracked"}
    assert ws.read_metadata(mine).manifest == ws.scan_worktree(origin)


def test_a_binary_conflict_keeps_both_and_the_users_bytes_survive(server: InProcessServer, tmp_path: Path) -> None:
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    create(server, origin, {"a.txt": "base"})
    op.clone_repository("lab", mine, options(server))
    write(origin, "a.txt", "theirs")
    write(origin, "new.txt", "new")
    op.push_workdir(origin, options(server, "origin"))
    write(mine, "a.txt", b"mine \x00\xff")
    result = op.pull_workdir(mine, options(server))
    assert result.unresolved == ["a.txt"] and result.new_version == 2
    assert files(mine) == {"a.txt": b"mine \x00\xff", "a.txt.theirs": b"theirs", "new.txt": b"new"}
    meta = ws.read_metadata(mine)
    assert meta.version == 2 and meta.conflicts == {"a.txt": ws.ConflictKind.THEIRS}
    assert {e.name for e in mine.iterdir()} - {ws.INDEX_NAME} == {ws.METADATA_NAME, "a.txt", "a.txt.theirs", "new.txt"}
    with pytest.raises(UnresolvedConflicts):  # push waits until the user chose
        op.push_workdir(mine, options(server))
    with pytest.raises(UnresolvedConflicts):  # and pull too, as git's: a merge over markers would nest them
        op.pull_workdir(mine, options(server))
    (mine / "a.txt.theirs").unlink()
    assert op.push_workdir(mine, options(server)).new_version == 3
    assert ws.read_metadata(mine).conflicts == {}


def test_pull_is_refused_when_an_untracked_file_is_in_the_way(server: InProcessServer, tmp_path: Path) -> None:
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    create(server, origin, {"a.txt": "base"})
    op.clone_repository("lab", mine, options(server))
    write(origin, "a.txt", "theirs")
    write(origin, "debug.log", "upstream's")
    op.push_workdir(origin, options(server, "origin"))
    write(mine, ".minigitignore", "*.log\n")
    write(mine, "debug.log", "mine, ignored")
    before = (mine / ws.METADATA_NAME).read_bytes()
    with pytest.raises(PullConflict) as conflict:
        op.pull_workdir(mine, options(server))
    assert conflict.value.paths == ["debug.log"] and conflict.value.exit_code == ExitCode.REJECTED
    assert (mine / "debug.log").read_text() == "mine, ignored" and (mine / "a.txt").read_text() == "base"
    assert (mine / ws.METADATA_NAME).read_bytes() == before


def test_what_stands_in_the_way_is_found_once_for_files_that_share_folders(tmp_path: Path) -> None:
    """Each folder is looked at once (a pull of 10,000 files in 100 folders), and
    still every file or link in the way is found, whichever file needs the folder."""
    (tmp_path / "a").write_text("an ignored file where a folder goes")
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "b" / "c" / "x.txt").write_text("untracked, where a file goes")
    (tmp_path / "d").symlink_to("b")
    entry = p.FileEntry(p.hash_bytes(b""), 0)
    write_set = {path: entry for path in ("a/1", "a/2", "b/c/x.txt", "b/c/y.txt", "d/e/1", "d/e/2", "f/g/h")}
    assert op.find_untracked_in_the_way(tmp_path, write_set, [], {}) == ["a", "b/c/x.txt", "d"]
    # tracked files are the pull's own to replace
    assert op.find_untracked_in_the_way(tmp_path, write_set, [], {"a": entry, "b/c/x.txt": entry, "d": entry}) == []


def test_pull_gets_back_content_the_client_lost(server: InProcessServer, tmp_path: Path) -> None:
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    create(server, origin, {"a.txt": "shared"})
    op.clone_repository("lab", mine, options(server))
    write(origin, "copy.txt", "shared")  # upstream adds a file with a.txt's old content
    op.push_workdir(origin, options(server, "origin"))
    write(mine, "a.txt", "mine")  # the client no longer holds that content
    result = op.pull_workdir(mine, options(server))
    [pull] = [a.request for a in server.log if isinstance(a.request, p.PullRequest)][-1:]
    assert pull.lost == [p.hash_bytes(b"shared")] and pull.version == 1
    assert files(mine) == {"a.txt": b"mine", "copy.txt": b"shared"} and result.kept_local == ["a.txt"]


def test_pull_here_outside_a_working_directory(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path / "origin", {"a": "1"})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoRepository):
        op.pull_here(empty, None, options(server))
    assert op.pull_here(empty, "lab", options(server)).status == op.PullStatus.CLONED
    with pytest.raises(UsageError, match="holds 'lab', not 'other'"):
        op.pull_here(empty, "other", options(server))
    assert files(empty) == {"a": b"1"}


def test_pull_answer_arriving_out_of_order_is_not_applied(server: InProcessServer, tmp_path: Path) -> None:
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    create(server, origin, {"a": "1"})
    op.clone_repository("lab", mine, options(server))
    write(origin, "big.bin", BIG)
    op.push_workdir(origin, options(server, "origin"))
    before = (mine / ws.METADATA_NAME).read_bytes()
    server.tamper(swap(-1, -2))  # the last two chunks of big.bin
    with pytest.raises(ServerUnreachable) as silent:
        op.pull_workdir(mine, options(server))
    assert silent.value.exit_code == ExitCode.UNREACHABLE
    assert files(mine) == {"a": b"1"} and (mine / ws.METADATA_NAME).read_bytes() == before
    assert op.pull_workdir(mine, options(server)).new_version == 2
    assert files(mine)["big.bin"] == BIG


def test_pull_with_an_unreadable_answer_drops_it_and_writes_nothing(server: InProcessServer, tmp_path: Path) -> None:
    """A record that does not parse carries no signature: anyone who may write the
    reply topic could have sent it, so it is dropped, never taken as the answer (one
    forged record used to fail a command whose write the service had applied)."""
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    create(server, origin, {"a": "1"})
    op.clone_repository("lab", mine, options(server))
    write(origin, "a", "2")
    op.push_workdir(origin, options(server, "origin"))
    server.tamper(edit_reply(lambda doc: doc.update(status="bogus")))
    with pytest.raises(ServerUnreachable, match=r"unreadable record came \(.*unknown value 'bogus'") as bad:
        op.pull_workdir(mine, options(server))
    assert bad.value.exit_code == ExitCode.UNREACHABLE
    assert files(mine) == {"a": b"1"} and ws.read_metadata(mine).version == 1


def one_version_behind(server: InProcessServer, tmp_path: Path) -> tuple[Path, bytes]:
    """A clone at version 1 of a repository now at version 2, and its .minigit."""
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    create(server, origin, {"a": "1"})
    op.clone_repository("lab", mine, options(server))
    write(origin, "a", "2")
    op.push_workdir(origin, options(server, "origin"))
    return mine, (mine / ws.METADATA_NAME).read_bytes()


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"version": None}, "pull from version 1 answered ok at version None"),
        ({"version": 0}, "pull from version 1 answered ok at version 0"),
        ({"version": 1}, "pull from version 1 answered ok at version 1"),  # not ahead of the client
        ({"tree": None, "blob_count": 0, "blob_bytes": 0}, "pull answered ok at version 2 without its tree"),
        ({"blob_count": 0, "blob_bytes": 0}, "pull answered ok at version 2 without its tree"),
    ],
)
def test_pull_ok_without_a_usable_version_or_tree_is_malformed_and_writes_nothing(
    server: InProcessServer, tmp_path: Path, change: dict, problem: str
) -> None:
    mine, before = one_version_behind(server, tmp_path)
    server.tamper(edit_reply(lambda doc: doc.update(change)))
    with pytest.raises(ProtocolError) as bad:
        op.pull_workdir(mine, options(server))
    assert bad.value.message == f"the service sent a malformed answer: {problem}"
    assert bad.value.exit_code == ExitCode.ERROR
    assert files(mine) == {"a": b"1"} and (mine / ws.METADATA_NAME).read_bytes() == before
    assert ws.read_metadata(mine).version == 1


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"tree": None}, "came with an answer that has no tree"),
        ({"tree": "0" * 64}, "came before the answer's tree 000000000000"),
    ],
)
def test_pull_ok_whose_blobs_are_not_its_tree_and_what_it_lists_is_dropped_and_writes_nothing(
    server: InProcessServer, tmp_path: Path, change: dict, reason: str
) -> None:
    mine, before = one_version_behind(server, tmp_path)
    server.tamper(edit_reply(lambda doc: doc.update(change)))
    with pytest.raises(ServerUnreachable) as dropped:
        op.pull_workdir(mine, options(server))
    assert "(1 broken answer dropped, the last because object " in dropped.value.message
    assert dropped.value.message.endswith(f"{reason})")
    assert files(mine) == {"a": b"1"} and (mine / ws.METADATA_NAME).read_bytes() == before


def test_the_client_decodes_the_head_tree_once(
    server: InProcessServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(server, tmp_path / "origin", {"a.txt": "a", "d/b.txt": "b"})
    real, by_client = p.decode_tree, []

    def decode_tree(data: bytes) -> p.Manifest:
        if sys._getframe(1).f_globals["__name__"].startswith("minigit.client"):
            by_client.append(data)
        return real(data)

    monkeypatch.setattr(p, "decode_tree", decode_tree)
    op.clone_repository("lab", tmp_path / "copy", options(server))
    assert by_client == [p.encode_tree(ws.scan_worktree(tmp_path / "origin"))]


@pytest.mark.parametrize("version", [None, 0])
def test_clone_answered_ok_without_a_version_is_malformed_and_leaves_nothing(
    server: InProcessServer, tmp_path: Path, version: int | None
) -> None:
    create(server, tmp_path / "origin", {"a": "1"})
    server.tamper(edit_reply(lambda doc: doc.update(version=version)))
    with pytest.raises(ProtocolError, match=f"^the service sent a malformed answer: .* at version {version}$"):
        op.clone_repository("lab", tmp_path / "copy", options(server))
    assert not (tmp_path / "copy").exists()


# ---------------------------------------------------------------- clone


def test_clone_copies_the_head(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path / "origin", {"a.txt": "a", "d/e/big.bin": BIG, "empty": b""})
    observer = RecordingObserver()
    result = op.clone_repository("lab", tmp_path / "new" / "copy", options(server), observer)
    copy = tmp_path / "new" / "copy"
    assert (result.status, result.old_version, result.new_version) == (op.PullStatus.CLONED, 0, 1)
    assert (result.directory, result.changes.added) == (str(copy), ["a.txt", "d/e/big.bin", "empty"])
    assert files(copy) == {"a.txt": b"a", "d/e/big.bin": BIG, "empty": b""}
    tree_size = len(p.encode_tree(ws.scan_worktree(copy)))
    assert result.bytes_received == tree_size + 1 + len(BIG)
    assert observer.named("downloading") == [("downloading", result.bytes_received, 4)]
    assert observer.total("downloaded") == result.bytes_received and len(observer.named("downloaded_object")) == 4
    assert ws.read_metadata(copy).manifest == ws.scan_worktree(tmp_path / "origin")


def test_a_clone_leaves_a_stat_cache_so_its_first_status_hashes_nothing(
    server: InProcessServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(server, tmp_path / "origin", {"a.txt": "a", "d/e/f.txt": "f", "empty": b""})
    copy = tmp_path / "copy"
    # Where file times are coarse, files written in the granule of the clock (or of the
    # index's own mtime) are rightly left to be hashed: both are put past it here.
    later_ns = time.time_ns() + 10**10
    monkeypatch.setattr(ws, "filesystem_clock", lambda root: later_ns)
    op.clone_repository("lab", copy, options(server))
    os.utime(copy / ws.INDEX_NAME, ns=(later_ns, later_ns))
    hashed: list[str] = []
    real = ws.hash_file
    monkeypatch.setattr(ws, "hash_file", lambda path: hashed.append(path.name) or real(path))
    assert op.read_status(copy).changes.empty and hashed == []
    # edited after the clone, same size, its mtime put back: its ctime tells
    before = os.stat(copy / "a.txt")
    write(copy, "a.txt", "b")
    os.utime(copy / "a.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert op.read_status(copy).changes.modified == ["a.txt"] and hashed == ["a.txt"]


def test_a_clone_leaves_out_of_its_stat_cache_files_as_new_as_its_clock(
    server: InProcessServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Racy git: a file whose mtime is not older than the clock read after the writes
    may have changed in the same granule: it is not remembered, but hashed."""
    create(server, tmp_path / "origin", {"a.txt": "a", "b.txt": "b"})
    monkeypatch.setattr(ws, "filesystem_clock", lambda root: 0)
    op.clone_repository("lab", tmp_path / "copy", options(server))
    hashed: list[str] = []
    real = ws.hash_file
    monkeypatch.setattr(ws, "hash_file", lambda path: hashed.append(path.name) or real(path))
    assert op.read_status(tmp_path / "copy").changes.empty and sorted(hashed) == ["a.txt", "b.txt"]


@pytest.mark.parametrize("where", ["new", "empty", "pull"])
def test_received_files_are_written_once_renamed_into_place(
    server: InProcessServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A clone or a pull receives each file into a folder beside where it goes and
    renames it there: no received byte is copied, but for a second path with the
    same content; nothing of the folder is left."""
    content = {"a.txt": "a", "d/big.bin": BIG, "same-as-a.txt": "a", "x.sh": "#!/bin/sh\n"}
    origin, copy = tmp_path / "origin", tmp_path / "copy"
    create(server, origin, {"old.txt": "old"})
    copied: list[str] = []
    real_copy = exchange.ReceivedBlob.copy_to
    monkeypatch.setattr(
        exchange.ReceivedBlob, "copy_to", lambda blob, out: copied.append(blob.sha) or real_copy(blob, out)
    )
    if where == "pull":
        op.clone_repository("lab", copy, options(server))
    for rel, data in content.items():
        write(origin, rel, data)
    op.push_workdir(origin, options(server, "origin"), "version 2")
    copied.clear()
    if where == "pull":
        op.pull_workdir(copy, options(server))
    else:
        if where == "empty":
            copy.mkdir()
        op.clone_repository("lab", copy, options(server))
    assert files(copy) == files(origin)
    assert copied == [p.hash_bytes(b"a")]  # "same-as-a.txt", after "a.txt" took the received file
    assert not [name for name in os.listdir(copy) if ws.is_leftover(name)]  # the folder they came to is gone
    assert sorted(os.listdir(tmp_path)) == ["copy", "origin"]  # and so is a clone's staging


def test_clone_into_a_non_empty_directory_is_refused(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path / "origin", {"a": "1"})
    target = tmp_path / "full"
    write(target, "mine.txt", "keep")
    with pytest.raises(UsageError, match="not an empty directory"):
        op.clone_repository("lab", target, options(server))
    assert files(target) == {"mine.txt": b"keep"} and len(server.connections) == 1
    write(tmp_path, "a-file", "x")
    with pytest.raises(UsageError):
        op.clone_repository("lab", tmp_path / "a-file", options(server))


def test_clone_of_a_missing_repository_leaves_nothing(server: InProcessServer, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFound) as missing:
        op.clone_repository("nope", tmp_path / "new", options(server))
    assert missing.value.name == "nope" and missing.value.exit_code == ExitCode.ERROR
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryNotFound):
        op.clone_repository("nope", tmp_path / "empty", options(server))
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("existed", [False, True])
def test_clone_that_fails_part_way_leaves_nothing(server: InProcessServer, tmp_path: Path, existed: bool) -> None:
    create(server, tmp_path / "origin", {"a.txt": "a", "b.txt": "b"})
    target = tmp_path / "copy"
    if existed:
        target.mkdir()
    # An answer that promises only the tree: the files' content never comes.
    server.tamper(edit_reply(lambda doc: doc.update(blob_count=1)))
    with pytest.raises(MinigitError, match="did not send the content"):
        op.clone_repository("lab", target, options(server))
    assert target.exists() == existed
    assert not existed or list(target.iterdir()) == []


def test_clone_survives_a_failover(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path / "origin", {"a.txt": "a", "big.bin": BIG})
    server.tamper(failover(cut=3, late=True))  # cut off after the reply and two chunks; the rest arrives late
    result = op.clone_repository("lab", tmp_path / "copy", options(server))
    assert files(tmp_path / "copy") == {"a.txt": b"a", "big.bin": BIG} and result.new_version == 1
    [pull] = [attempt for attempt in server.log if isinstance(attempt.request, p.PullRequest)]
    assert pull.response.reply.replica == "2" and len(pull.delivered) == 2 * len(pull.replies)


def test_a_corrupt_answer_is_dropped_and_the_retry_answered(tmp_path: Path) -> None:
    server = make_server(attempts=2)
    create(server, tmp_path / "origin", {"a.txt": "a"})
    server.tamper(corrupt(-1))
    op.clone_repository("lab", tmp_path / "copy", options(server))
    assert files(tmp_path / "copy") == {"a.txt": b"a"}
    first, second = server.log[-2:]
    assert same_request(first.request, second.request) and first.response is None and second.response is not None


# ---------------------------------------------------------------- push


def test_push_of_no_changes_sends_nothing(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path, {"a.txt": "a"})
    sent = (len(server.connections), len(server.log))
    result = op.push_workdir(tmp_path, options(server), "nothing")
    assert (result.status, result.old_version, result.new_version) == (op.PushStatus.UP_TO_DATE, 1, 1)
    assert (result.bytes_sent, result.changes.empty) == (0, True)
    assert (len(server.connections), len(server.log)) == sent and history(server) == [1]


def test_push_sends_only_new_content(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path, {"a.txt": "a", "b.txt": "b"})
    write(tmp_path, "a.txt", "changed")
    write(tmp_path, "c.txt", "b")  # content the server has already
    observer = RecordingObserver()
    result = op.push_workdir(tmp_path, options(server, "bob"), "second", observer)
    assert (result.status, result.old_version, result.new_version) == (op.PushStatus.ACCEPTED, 1, 2)
    assert result.changes.to_json() == {"added": ["c.txt"], "modified": ["a.txt"], "deleted": []}
    tree = p.encode_tree(ws.scan_worktree(tmp_path))
    assert result.bytes_sent == len(tree) + len("changed")
    assert observer.named("uploading") == [("uploading", result.bytes_sent, 2)]
    [push] = server.log[-1:]
    assert len(push.uploaded) == 2 and push.request.base == 1 and push.request.message == "second"
    info = server.store.get_version("lab", 2)
    assert (info.author, info.message, info.tree) == ("bob", "second", p.hash_bytes(tree))
    assert ws.read_metadata(tmp_path).version == 2


def test_push_with_an_upload_cut_short_is_sent_again_whole(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path, {"a.txt": "a"})
    write(tmp_path, "b.txt", "b")
    server.tamper_uploads(lambda request, values: values[:-1])
    result = op.push_workdir(tmp_path, options(server))
    first, second = server.log[-2:]
    assert json.loads(first.replies[-1])["status"] == p.Status.MISSING_OBJECTS
    assert first.request.request_id != second.request.request_id and first.connection is second.connection
    assert (result.status, result.new_version, history(server)) == (op.PushStatus.ACCEPTED, 2, [1, 2])


def test_a_push_answer_lost_then_sent_again_is_applied_once(tmp_path: Path) -> None:
    server = make_server(attempts=2)
    create(server, tmp_path, {"a.txt": "a"})
    write(tmp_path, "a.txt", "b")
    server.tamper(drop())
    result = op.push_workdir(tmp_path, options(server))
    assert (result.status, result.new_version, history(server)) == (op.PushStatus.ACCEPTED, 2, [1, 2])
    first, second = server.log[-2:]
    assert same_request(first.request, second.request) and "retry: original outcome" in second.handled.detail


def test_no_answer_is_unreachable_and_writes_nothing(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path, {"a.txt": "a"})
    write(tmp_path, "a.txt", "b")
    before = (tmp_path / ws.METADATA_NAME).read_bytes()
    server.tamper(drop())
    with pytest.raises(ServerUnreachable, match="no answer from the minigit service within 30s") as silent:
        op.push_workdir(tmp_path, options(server))
    assert silent.value.exit_code == ExitCode.UNREACHABLE
    # only the push is recorded as pending, for the next command to ask what became of it
    assert_only_pending(tmp_path, before)


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"version": None}, "push accepted as version None, not 2"),
        ({"version": 1}, "push accepted as version 1, not 2"),
        ({"version": 3}, "push accepted as version 3, not 2"),
        ({"status": "rejected", "head": None}, "push rejected without the server's head"),
    ],
)
def test_push_answers_without_the_version_the_client_relies_on_are_malformed(
    server: InProcessServer, tmp_path: Path, change: dict, problem: str
) -> None:
    create(server, tmp_path, {"a.txt": "a"})
    write(tmp_path, "a.txt", "b")
    before = (tmp_path / ws.METADATA_NAME).read_bytes()
    server.tamper(edit_reply(lambda doc: doc.update(change)))
    with pytest.raises(ProtocolError) as bad:
        op.push_workdir(tmp_path, options(server))
    assert bad.value.message == f"the service sent a malformed answer: {problem}"
    assert_only_pending(tmp_path, before)
    assert ws.read_metadata(tmp_path).version == 1  # every later command can still read it


def assert_only_pending(root: Path, before: bytes) -> None:
    """``.minigit`` is as ``before`` but for the push it records as pending."""
    meta = ws.read_metadata(root)
    assert meta.pending is not None
    assert dataclasses.replace(meta, pending=None) == ws.parse_metadata(before.decode())


@pytest.mark.parametrize("version", [None, 0, 2])
def test_init_accepted_at_another_version_than_1_is_malformed(
    server: InProcessServer, tmp_path: Path, version: int | None
) -> None:
    server.tamper(edit_reply(lambda doc: doc.update(version=version)))
    with pytest.raises(ProtocolError, match=f"malformed answer: init accepted as version {version}, not 1$"):
        create(server, tmp_path, {"a.txt": "a"})
    assert not (tmp_path / ws.METADATA_NAME).exists()


def test_broken_answers_to_every_sending_end_in_a_timeout(tmp_path: Path) -> None:
    server = make_server(attempts=1000)
    create(server, tmp_path / "origin", {"a.txt": "a"})
    server.tamper(*[corrupt(-1)] * 1000)
    started = server.clock
    with pytest.raises(ServerUnreachable, match=r"within 30s \(6 broken answers dropped"):
        op.clone_repository("lab", tmp_path / "copy", options(server))
    assert server.clock - started == pytest.approx(30)  # sent at 0, 1, 3, 7, 15 and 25 s
    assert not (tmp_path / "copy").exists()


# ---------------------------------------------------------------- log


def test_log_lists_versions_newest_first(server: InProcessServer, tmp_path: Path) -> None:
    root = tmp_path / "w"
    create(server, root, {"a.txt": "0"})
    for n, user in ((1, "bob"), (2, "carol")):
        write(root, "a.txt", str(n))
        op.push_workdir(root, options(server, user), f"change {n}")
    name, entries, problems = op.read_log(root, options(server))
    assert name == "lab" and all(isinstance(entry, p.LogEntry) for entry in entries)
    assert problems == [None, None, None]  # each version's signature checks, as the service attested its key
    assert [(e.version, e.author, e.message) for e in entries] == [
        (3, "carol", "change 2"),
        (2, "bob", "change 1"),
        (1, "origin", "version 1"),
    ]
    assert entries[0].time_ms > entries[1].time_ms > entries[2].time_ms
    assert [e.version for e in op.read_log(root, options(server), limit=2)[1]] == [3, 2]
    assert op.read_log(tmp_path, options(server), repo="lab")[:2] == ("lab", entries)  # outside a working directory


def test_log_of_a_missing_repository(server: InProcessServer, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFound, match="'nope' does not exist"):
        op.read_log(tmp_path, options(server), repo="nope")
    with pytest.raises(NoRepository):
        op.read_log(tmp_path, options(server))


def test_log_entry_without_time_is_dropped_as_unreadable(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path, {"a.txt": "0"})
    server.tamper(edit_reply(lambda doc: doc["entries"][0].pop("time_ms")))
    with pytest.raises(ServerUnreachable, match=r"unreadable record came \(.*entries\[0\]\.time_ms") as bad:
        op.read_log(tmp_path, options(server))
    assert bad.value.exit_code == ExitCode.UNREACHABLE


# ---------------------------------------------------------------- where the service is


@dataclass(frozen=True)
class CountingFlags(ServerFlags):
    """ServerFlags that remember every resolution."""

    resolved: list[KafkaSettings] = field(default_factory=list, compare=False)

    def resolve(self, saved: tuple[str, str] | None = None, where: str = ".minigit") -> KafkaSettings:
        settings = super().resolve(saved, where)
        self.resolved.append(settings)
        return settings


def saved_workdir(server: InProcessServer, root: Path) -> Path:
    """A working directory whose .minigit says saved:1 / ns."""
    root.mkdir()
    write(root, "a.txt", "a")
    op.init_repository(root, "lab", options(server, flags=ServerFlags("saved:1", "ns.")))
    server.grant("lab", p.Access.WRITE, "origin", *MEMBERS)
    return root


@pytest.mark.parametrize(
    "flags, expected",
    [
        (ServerFlags(), ("saved:1", "ns.")),
        (ServerFlags(bootstrap="flag:2"), ("flag:2", "ns.")),
        (ServerFlags(namespace=""), ("saved:1", "")),
        (ServerFlags("flag:2", "other."), ("flag:2", "other.")),
    ],
)
def test_flags_win_over_minigit_which_wins_over_the_default(
    server: InProcessServer, tmp_path: Path, flags: ServerFlags, expected: tuple[str, str]
) -> None:
    root = saved_workdir(server, tmp_path / "w")
    write(root, "a.txt", "b")
    pushed = op.push_workdir(root, options(server, flags=flags))
    op.pull_workdir(root, options(server, flags=flags))
    op.read_log(root, options(server, flags=flags))
    assert pushed.server == expected[0]
    assert [(c.settings.bootstrap, c.settings.namespace) for c in server.connections[1:]] == [expected] * 3
    assert (ws.read_metadata(root).bootstrap, ws.read_metadata(root).namespace) == ("saved:1", "ns.")


def test_without_flags_or_minigit_the_default_address(server: InProcessServer, tmp_path: Path) -> None:
    create(server, tmp_path / "origin", {"a": "1"})
    op.clone_repository("lab", tmp_path / "copy", options(server))
    op.read_log(tmp_path, options(server), repo="lab")
    assert {(c.settings.bootstrap, c.settings.namespace) for c in server.connections} == {(DEFAULT_BOOTSTRAP, "")}
    meta = ws.read_metadata(tmp_path / "copy")
    assert (meta.bootstrap, meta.namespace) == (DEFAULT_BOOTSTRAP, "")


@pytest.mark.parametrize("flags", [ServerFlags(), ServerFlags(bootstrap="flag:2")])
def test_rejected_and_accepted_pushes_name_the_same_server(
    server: InProcessServer, tmp_path: Path, flags: ServerFlags
) -> None:
    origin = saved_workdir(server, tmp_path / "origin")
    op.clone_repository("lab", tmp_path / "b", options(server, flags=ServerFlags("saved:1", "ns.")))
    write(origin, "a.txt", "origin's")
    op.push_workdir(origin, options(server, "origin"))
    write(tmp_path / "b", "b.txt", "b's")
    with pytest.raises(PushRejected) as rejected:
        op.push_workdir(tmp_path / "b", options(server, "bob", flags))
    op.pull_workdir(tmp_path / "b", options(server, "bob", flags))
    accepted = op.push_workdir(tmp_path / "b", options(server, "bob", flags))
    expected = flags.bootstrap or "saved:1"
    assert rejected.value.server == accepted.server == expected
    assert server.connections[-3].settings.bootstrap == expected


def test_a_server_elsewhere_is_unreachable(tmp_path: Path) -> None:
    server = InProcessServer(bootstrap="here:1", namespace="")
    with pytest.raises(ServerUnreachable, match="cannot reach Kafka at localhost:9092"):
        create(server, tmp_path, {"a": "1"})
    assert not (tmp_path / ws.METADATA_NAME).exists()
    result = op.init_repository(tmp_path, "lab", options(server, flags=ServerFlags("here:1")))
    assert result.server == "here:1"


@pytest.mark.parametrize("bootstrap", [",,,", "[::1", "host"])
def test_a_malformed_bootstrap_in_dot_minigit_is_corrupt_metadata(
    server: InProcessServer, tmp_path: Path, bootstrap: str
) -> None:
    create(server, tmp_path, {"a.txt": "a"})
    doc = json.loads((tmp_path / ws.METADATA_NAME).read_text())
    doc["server"]["bootstrap"] = bootstrap
    (tmp_path / ws.METADATA_NAME).write_text(json.dumps(doc))
    write(tmp_path, "a.txt", "b")
    for command in (
        lambda flags: op.push_workdir(tmp_path, options(server, flags=flags)),
        lambda flags: op.pull_workdir(tmp_path, options(server, flags=flags)),
        lambda flags: op.read_log(tmp_path, options(server, flags=flags)),
    ):
        with pytest.raises(CorruptMetadata) as corrupt_file:
            command(ServerFlags())
        message = corrupt_file.value.message
        assert message.startswith(f"{tmp_path / ws.METADATA_NAME} is corrupt: bad bootstrap {bootstrap!r}: ")
        assert corrupt_file.value.exit_code == ExitCode.ERROR
    assert len(server.connections) == 1  # only the init's
    assert op.push_workdir(tmp_path, options(server, flags=ServerFlags("flag:1"))).new_version == 2


def test_each_command_resolves_once_and_opens_one_connection(server: InProcessServer, tmp_path: Path) -> None:
    origin, copy = tmp_path / "origin", tmp_path / "copy"
    origin.mkdir()
    write(origin, "a.txt", "a")
    flags = CountingFlags(namespace="ns.")
    opts = op.ClientOptions("alice", flags, 30.0, connector=server.connector)

    def edit_and_push() -> None:
        write(origin, "a.txt", str(len(server.log)))
        op.push_workdir(origin, opts)

    def cut_upload_and_push() -> None:
        server.tamper_uploads(lambda request, values: values[:-1])
        edit_and_push()

    commands = {
        "init": lambda: op.init_repository(origin, "lab", opts),
        "clone": lambda: op.clone_repository("lab", copy, opts),
        "push": edit_and_push,
        "push sent twice": cut_upload_and_push,
        "pull": lambda: op.pull_workdir(copy, opts),
        "pull at the head": lambda: op.pull_workdir(copy, opts),
        "log": lambda: op.read_log(copy, opts),
    }
    for name, command in commands.items():
        connections, resolutions, attempts = len(server.connections), len(flags.resolved), len(server.log)
        command()
        assert len(server.connections) == connections + 1, name
        assert len(flags.resolved) == resolutions + 1, name
        [connection] = server.connections[connections:]
        assert connection.closed, name
        assert {a.connection for a in server.log[attempts:]} == {connection}, name
        assert len(server.log) - attempts == (2 if name == "push sent twice" else 1), name
    assert history(server) == [1, 2, 3]


def test_an_invalid_user_name_fails_before_connecting(server: InProcessServer, tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="invalid user name"):
        op.clone_repository("lab", tmp_path / "copy", options(server, "no spaces"))
    assert server.connections == [] and not (tmp_path / "copy").exists()


def test_requests_carry_the_user_and_the_timeout(server: InProcessServer, tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    op.init_repository(root, "lab", op.ClientOptions("zoe", ServerFlags(), 2.5, connector=server.connector))
    attempt = server.log[-1]  # after zoe's registration
    assert (attempt.request.user, attempt.request.timeout_ms, attempt.connection.timeout) == ("zoe", 2500, 2.5)
    assert attempt.request.reply_partition == attempt.connection.reply_partition


def test_pull_where_upstream_turned_a_file_into_a_directory_and_back(server: InProcessServer, tmp_path: Path) -> None:
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    create(server, origin, {"f": "file", "d/x.txt": "x"})
    op.clone_repository("lab", mine, options(server))
    (origin / "f").unlink()
    write(origin, "f/inner.txt", "now a directory")
    (origin / "d" / "x.txt").unlink()
    (origin / "d").rmdir()
    write(origin, "d", "now a file")
    op.push_workdir(origin, options(server, "origin"))
    result = op.pull_workdir(mine, options(server))
    assert result.changes.to_json() == {"added": ["d", "f/inner.txt"], "modified": [], "deleted": ["d/x.txt", "f"]}
    assert files(mine) == {"d": b"now a file", "f/inner.txt": b"now a directory"}


# ---------------------------------------------------------------- identity


def test_a_rotated_key_signs_from_then_on_and_the_old_one_no_longer_does(
    server: InProcessServer, tmp_path: Path, own_config_dir: Path
) -> None:
    root = tmp_path / "w"
    create(server, root, {"a.txt": "a"})
    old_key = keys.load_key(own_config_dir, "alice")
    info = op.rotate_key(root, options(server))
    assert info.public_key == server.store.get_account("alice").key != identity.public_key_text(old_key.public_key())
    assert keys.load_key(own_config_dir, "alice").private_bytes_raw() != old_key.private_bytes_raw()
    assert (own_config_dir / "keys" / "alice.key.old").exists()
    write(root, "a.txt", "b")
    assert op.push_workdir(root, options(server)).new_version == 2  # with the new key
    old = server.connector(KafkaSettings(), Credentials("alice", old_key), 30.0)
    with old, pytest.raises(NotAuthenticated, match="does not match alice's registered key"):
        op.ask(old, old.new_request(p.LogRequest, repo="lab"))


def test_a_rotation_cut_short_after_the_service_accepted_it_is_finished_by_running_it_again(
    server: InProcessServer, tmp_path: Path, own_config_dir: Path
) -> None:
    root = tmp_path / "w"
    create(server, root, {"a.txt": "a"})
    following = keys.load_or_create_next_key(own_config_dir, "alice")
    new_key = identity.public_key_text(following.public_key())
    with op.ClientOptions("alice", ServerFlags(), connector=server.connector).connect(KafkaSettings()) as link:
        op.ask(link, link.new_request(p.RotateRequest, repo="alice", new_key=new_key))  # then the command died
    assert server.store.get_account("alice").key == new_key
    assert op.rotate_key(root, options(server)).public_key == new_key  # signed by the old key: up to date
    assert keys.load_key(own_config_dir, "alice").private_bytes_raw() == following.private_bytes_raw()


def push_tree(server: InProcessServer, repo: str, base: int, content: dict[str, tuple[bytes, p.FileMode]]) -> None:
    """A push of any tree, made without the client's own checks (a hostile user's)."""
    manifest = {path: p.FileEntry(p.hash_bytes(data), len(data), mode) for path, (data, mode) in content.items()}
    tree = p.encode_tree(manifest)
    uploads = [codec.BlobSource.from_bytes(tree), *(codec.BlobSource.from_bytes(d) for d, _ in content.values())]
    fields = {"repo": repo, "base": base, "tree": p.hash_bytes(tree), "message": "hostile"}
    with options(server, "mallory").connect(options(server).settings()) as connection:
        reply = op.send_write(connection, p.PushRequest, fields, uploads, None)
    assert reply.status == p.Status.ACCEPTED, reply


def test_links_chained_to_lead_outside_are_never_made(server: InProcessServer, tmp_path: Path) -> None:
    """b -> x and x/c -> .. are each inside; b/c/.. is the working directory's parent."""
    origin, victim = tmp_path / "origin", tmp_path / "work" / "victim"
    create(server, origin, {"a.txt": "a"})
    server.grant("lab", p.Access.WRITE, "mallory")
    link = p.FileMode.SYMLINK
    push_tree(server, "lab", 1, {"b": (b"x", link), "x/c": (b"..", link), "e": (b"b/c/../SECRET", link)})
    (tmp_path / "work" / "SECRET").parent.mkdir(parents=True)
    with pytest.raises(UnsafePath, match="goes up out of another link"):
        op.clone_repository("lab", victim, options(server))
    assert not victim.exists()


def test_an_edit_made_while_the_pull_runs_is_never_overwritten(
    server: InProcessServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    create(server, origin, {"a.txt": "base"})
    op.clone_repository("lab", mine, options(server))
    write(origin, "a.txt", "theirs")
    op.push_workdir(origin, options(server, "origin"))
    stage = ws.stage_blob

    def edit_then_stage(*args, **kwargs):
        write(mine, "a.txt", "typed while the pull downloaded")
        return stage(*args, **kwargs)

    monkeypatch.setattr(ws, "stage_blob", edit_then_stage)
    with pytest.raises(MinigitError, match=r"a\.txt changed while the pull ran; nothing was touched"):
        op.pull_workdir(mine, options(server))
    assert (mine / "a.txt").read_text() == "typed while the pull downloaded"
    assert ws.read_metadata(mine).version == 1


@pytest.mark.parametrize("survives", [0, 1, 2])
def test_pull_theirs_killed_between_installs_keeps_the_users_bytes(
    server: InProcessServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, survives: int
) -> None:
    """Killed after ``survives`` files were put in place, for each point: yours is at PATH or PATH.orig."""
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    create(server, origin, {"x": "base", "y": "base"})
    op.clone_repository("lab", mine, options(server))
    write(origin, "x", "theirs")
    (origin / "y").unlink()
    op.push_workdir(origin, options(server, "origin"))
    write(mine, "x", "mine x")
    write(mine, "y", "mine y")
    steps: list[str] = []

    def step_then_die(real):
        def step(root: Path, rel: str, *rest) -> None:
            if len(steps) == survives:
                raise KeyboardInterrupt
            real(root, rel, *rest)
            steps.append(rel)

        return step

    monkeypatch.setattr(ws, "install_staged", step_then_die(ws.install_staged))
    monkeypatch.setattr(ws, "remove_file", step_then_die(ws.remove_file))
    with pytest.raises(KeyboardInterrupt):
        op.pull_workdir(mine, options(server), strategy=Strategy.THEIRS)
    on_disk = files(mine)
    assert b"mine x" in (on_disk.get("x"), on_disk.get("x.orig"))
    assert b"mine y" in (on_disk.get("y"), on_disk.get("y.orig"))


def test_a_file_of_yours_made_while_the_pull_downloads_is_never_overwritten(
    server: InProcessServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    create(server, origin, {"a.txt": "base"})
    op.clone_repository("lab", mine, options(server))
    write(origin, "n.txt", "upstream's new file")
    op.push_workdir(origin, options(server, "origin"))
    stage = ws.stage_blob

    def create_then_stage(*args, **kwargs):
        write(mine, "n.txt", "my new file")
        return stage(*args, **kwargs)

    monkeypatch.setattr(ws, "stage_blob", create_then_stage)
    with pytest.raises(PullConflict) as refused:
        op.pull_workdir(mine, options(server))
    assert refused.value.paths == ["n.txt"] and (mine / "n.txt").read_text() == "my new file"
    assert ws.read_metadata(mine).version == 1
