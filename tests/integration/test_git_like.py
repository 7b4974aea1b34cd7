"""Living in minigit as in git, against real Kafka and real replicas: merging on
pull and resolving conflicts, diff, restore, show, log --stat, checkout of an
older version, modes and links, repos and remote, and an interrupted push.

Every refused or conflicted case checks that the user's bytes survive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from minigit import protocol as p
from minigit.client import operations
from minigit.client import workspace as ws
from minigit.client.exchange import Observer
from minigit.errors import PermissionDenied

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent

TEN = "".join(f"line {n}\n" for n in range(1, 11))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def ok(done):
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def two_clones(service, tmp_path: Path, repo: str) -> tuple[Path, Path]:
    """alice's repository (text, binary, script, link) and bob's clone of it (write access)."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice.mkdir()
    write(alice / "a.txt", TEN)
    (alice / "b.bin").write_bytes(b"\0\1\2 base")
    write(alice / "run.sh", "#!/bin/sh\necho hi\n")
    (alice / "run.sh").chmod(0o755)
    os.symlink("a.txt", alice / "link")
    ok(service.cli("init", repo, "-m", "v1", cwd=alice, user="alice"))
    service.share(repo, "bob", owner="alice")
    ok(service.cli("clone", repo, str(bob), cwd=tmp_path, user="bob"))
    return alice, bob


def test_pull_merges_marks_conflicts_and_push_waits_for_them(service, tmp_path: Path) -> None:
    alice, bob = two_clones(service, tmp_path, "merging")
    # clone kept the executable bit and the link (as a link)
    assert os.access(bob / "run.sh", os.X_OK)
    assert (bob / "link").is_symlink() and os.readlink(bob / "link") == "a.txt"

    # edits to different lines: push is rejected, pull merges them cleanly, push goes through
    write(alice / "a.txt", TEN.replace("line 1\n", "line 1 by alice\n"))
    ok(service.cli("push", "-m", "alice 1", cwd=alice, user="alice"))
    write(bob / "a.txt", TEN.replace("line 10\n", "line 10 by bob\n"))
    rejected = service.cli("push", "-m", "bob 1", cwd=bob, user="bob")
    assert rejected.returncode == 3 and "fetch first" in rejected.stderr
    merged = ok(service.cli("pull", cwd=bob, user="bob"))
    assert "Auto-merging a.txt" in merged.stderr
    assert (bob / "a.txt").read_text() == TEN.replace("line 1\n", "line 1 by alice\n").replace(
        "line 10\n", "line 10 by bob\n"
    )
    ok(service.cli("push", "-m", "bob 1", cwd=bob, user="bob"))

    # the same line on both sides: markers, exit 3, status lists it, push refuses, bob's bytes are there
    ok(service.cli("pull", cwd=alice, user="alice"))
    write(alice / "a.txt", (alice / "a.txt").read_text().replace("line 5\n", "line 5 alice\n"))
    ok(service.cli("push", "-m", "alice 2", cwd=alice, user="alice"))
    write(bob / "a.txt", (bob / "a.txt").read_text().replace("line 5\n", "line 5 bob\n"))
    conflicted = service.cli("pull", cwd=bob, user="bob")
    assert conflicted.returncode == 3, conflicted.stderr
    assert "CONFLICT (content)" in conflicted.stderr
    text = (bob / "a.txt").read_text()
    assert "<<<<<<< yours\nline 5 bob\n=======\nline 5 alice\n>>>>>>> version 4\n" in text
    status = ok(service.cli("status", cwd=bob, user="bob"))
    assert "Unresolved conflicts" in status.stdout and "a.txt" in status.stdout
    assert json.loads(ok(service.cli("status", "--json", cwd=bob, user="bob")).stdout)["conflicts"] == ["a.txt"]
    refused = service.cli("push", "-m", "too soon", cwd=bob, user="bob")
    assert refused.returncode == 3 and "unresolved conflicts" in refused.stderr
    assert "line 5 bob" in (bob / "a.txt").read_text()
    write(
        bob / "a.txt",
        text.replace("<<<<<<< yours\nline 5 bob\n=======\nline 5 alice\n>>>>>>> version 4\n", "line 5 both\n"),
    )
    ok(service.cli("push", "-m", "resolved", cwd=bob, user="bob"))

    # a binary file changed on both sides: yours stays, theirs is beside it; push waits until you choose
    ok(service.cli("pull", cwd=alice, user="alice"))
    (alice / "b.bin").write_bytes(b"\0 alice")
    ok(service.cli("push", "-m", "alice bin", cwd=alice, user="alice"))
    (bob / "b.bin").write_bytes(b"\0 bob")
    both = service.cli("pull", cwd=bob, user="bob")
    assert both.returncode == 3 and "CONFLICT (binary)" in both.stderr
    assert (bob / "b.bin").read_bytes() == b"\0 bob" and (bob / "b.bin.theirs").read_bytes() == b"\0 alice"
    assert service.cli("push", cwd=bob, user="bob").returncode == 3
    (bob / "b.bin.theirs").unlink()
    ok(service.cli("push", "-m", "kept mine", cwd=bob, user="bob"))

    # --theirs for scripts: upstream's version, yours kept as .orig
    ok(service.cli("pull", cwd=alice, user="alice"))
    write(alice / "a.txt", "alice wins\n")
    ok(service.cli("push", "-m", "alice 3", cwd=alice, user="alice"))
    write(bob / "a.txt", "bob's text\n")
    ok(service.cli("pull", "--theirs", cwd=bob, user="bob"))
    assert (bob / "a.txt").read_text() == "alice wins\n" and (bob / "a.txt.orig").read_text() == "bob's text\n"


def test_diff_restore_show_log_and_checkout(service, tmp_path: Path) -> None:
    alice, bob = two_clones(service, tmp_path, "history")
    write(alice / "a.txt", TEN.replace("line 3\n", "line three\n"))
    write(alice / "new.txt", "new\n")
    write(alice / "sub" / "f.txt", "in a folder\n")
    (alice / "run.sh").chmod(0o644)  # a mode change alone is a change
    ok(service.cli("push", "-m", "second", cwd=alice, user="alice"))

    # paths are read where the command runs, as git reads them
    write(alice / "sub" / "f.txt", "in a folder, edited\n")
    here = ok(service.cli("diff", "--name-status", "f.txt", cwd=alice / "sub", user="alice")).stdout
    assert here == "M\tsub/f.txt\n"
    assert service.cli("diff", "/", cwd=alice / "sub", user="alice").returncode == 2
    ok(service.cli("restore", "f.txt", cwd=alice / "sub", user="alice"))

    # diff of local changes: unified, --stat, --name-status; needs the local version's bytes
    write(alice / "a.txt", TEN.replace("line 3\n", "line three\n").replace("line 7\n", "line seven\n"))
    (alice / "new.txt").unlink()
    diff = ok(service.cli("diff", cwd=alice, user="alice")).stdout
    assert "--- a/a.txt" in diff and "-line 7" in diff and "+line seven" in diff
    assert "+++ /dev/null" in diff and "-new" in diff
    assert ok(service.cli("diff", "--name-status", cwd=alice, user="alice")).stdout.split("\n")[:2] == [
        "M\ta.txt",
        "D\tnew.txt",
    ]
    assert "2 files changed" in ok(service.cli("diff", "--stat", cwd=alice, user="alice")).stdout

    # restore puts the local version back (the deleted file too), restore --source an older one
    ok(service.cli("restore", "a.txt", "new.txt", cwd=alice, user="alice"))
    assert (alice / "a.txt").read_text() == TEN.replace("line 3\n", "line three\n")
    assert (alice / "new.txt").read_text() == "new\n"
    assert "nothing to push" in ok(service.cli("status", cwd=alice, user="alice")).stdout
    ok(service.cli("restore", "--source", "1", "run.sh", cwd=alice, user="alice"))
    assert os.access(alice / "run.sh", os.X_OK)
    ok(service.cli("restore", "run.sh", cwd=alice, user="alice"))
    missing = service.cli("restore", "nope.txt", cwd=alice, user="alice")
    assert missing.returncode == 1 and "did not match" in missing.stderr

    # versions that do not exist are named as such
    gone = service.cli("diff", "1", "99", cwd=bob, user="bob")
    assert gone.returncode == 1 and "version 99 of history does not exist: the head is version 2" in gone.stderr
    assert "does not exist: the head is version 2" in service.cli("show", "99", cwd=bob, user="bob").stderr

    # diff between versions, show, log --stat / --oneline / -- PATH
    between = ok(service.cli("diff", "1", "2", cwd=bob, user="bob")).stdout
    assert "+line three" in between and "old mode 100755" in between and "new mode 100644" in between
    shown = ok(service.cli("show", "2", cwd=bob, user="bob")).stdout
    assert "second" in shown and "+new" in shown
    stat = ok(service.cli("log", "--stat", cwd=bob, user="bob")).stdout
    assert "M a.txt" in stat and "A new.txt" in stat
    oneline = ok(service.cli("log", "--oneline", cwd=bob, user="bob")).stdout.splitlines()
    assert oneline == ["2 second", "1 v1"]
    only = ok(service.cli("log", "--oneline", "--", "new.txt", cwd=bob, user="bob")).stdout.splitlines()
    assert only == ["2 second"]

    # checkout of an older version: read-only view, local edits come along, push refuses; --latest goes back
    ok(service.cli("pull", cwd=bob, user="bob"))
    write(bob / "notes.md", "mine\n")
    view = ok(service.cli("checkout", "1", cwd=bob, user="bob"))
    assert "read-only" in view.stdout
    assert (bob / "a.txt").read_text() == TEN and not (bob / "new.txt").exists()
    assert (bob / "notes.md").read_text() == "mine\n"
    refused = service.cli("push", cwd=bob, user="bob")
    assert refused.returncode == 2 and "checkout --latest" in refused.stderr
    ok(service.cli("checkout", "--latest", cwd=bob, user="bob"))
    assert (bob / "new.txt").read_text() == "new\n" and (bob / "notes.md").read_text() == "mine\n"
    assert json.loads(ok(service.cli("status", "--json", cwd=bob, user="bob")).stdout)["detached"] is False


def test_repos_remote_and_delete(service, tmp_path: Path) -> None:
    alice, _ = two_clones(service, tmp_path, "listed")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    write(lonely / "x", "x\n")
    ok(service.cli("init", "alices-secret", cwd=lonely, user="alice"))
    mine = json.loads(ok(service.cli("repos", "--json", cwd=tmp_path, user="alice")).stdout)["repositories"]
    assert [(r["name"], r["head"], r["access"]) for r in mine] == [
        ("alices-secret", 1, "owner"),
        ("listed", 1, "owner"),
    ]
    theirs = json.loads(ok(service.cli("repos", "--json", cwd=tmp_path, user="bob")).stdout)["repositories"]
    assert [(r["name"], r["access"]) for r in theirs] == [("listed", "write")]  # the private one is not mentioned
    table = ok(service.cli("repos", cwd=tmp_path, user="alice")).stdout
    assert "alices-secret" in table and "owner" in table

    remote = json.loads(ok(service.cli("remote", "--json", cwd=alice, user="alice")).stdout)
    assert remote == {
        "format": 1,
        "repository": "listed",
        "bootstrap": service.bootstrap,
        "namespace": service.namespace,
    }
    bad = service.cli("remote", "set-url", "localhost:abc", cwd=alice, user="alice")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    ok(service.cli("remote", "set-url", "localhost:1", cwd=alice, user="alice"))
    assert json.loads((alice / ".minigit").read_text())["server"]["bootstrap"] == "localhost:1"
    ok(service.cli("remote", "set-url", service.bootstrap, cwd=alice, user="alice"))

    # an operator deletes it, alice makes it again: bob's old clone is told to clone again, not mixed up
    where = ["--data-dir", str(service.data_dir), "--bootstrap", service.bootstrap, "--namespace", service.namespace]
    deleted = subprocess.run(
        [str(BIN / "minigit-server"), "repo", "delete", "listed", "--yes", *where],
        capture_output=True,
        text=True,
        timeout=180,
        env=service.env(),
        stdin=subprocess.DEVNULL,
    )
    assert deleted.returncode == 0, deleted.stderr
    again = tmp_path / "again"
    again.mkdir()
    write(again / "other.txt", "another history\n")
    ok(service.cli("init", "listed", cwd=again, user="alice"))
    write(again / "other.txt", "another history, v2\n")
    ok(service.cli("push", cwd=again, user="alice"))
    service.share("listed", "bob", owner="alice")
    stale = service.cli("pull", cwd=tmp_path / "bob", user="bob")
    assert stale.returncode == 1 and "clone it again" in stale.stderr, stale.stderr
    stale_view = service.cli("checkout", "1", cwd=tmp_path / "bob", user="bob")
    assert stale_view.returncode == 1 and "clone it again" in stale_view.stderr, stale_view.stderr
    assert (tmp_path / "bob" / "a.txt").read_text() == TEN  # untouched


class InterruptAfterUpload(Observer):
    """Ctrl-C once the upload is done and the client waits for the answer."""

    def waiting(self) -> None:
        raise KeyboardInterrupt


def test_an_interrupted_push_is_found_accepted_by_the_next_command(service, tmp_path: Path) -> None:
    alice, _ = two_clones(service, tmp_path, "ghost")
    write(alice / "a.txt", "pushed, then Ctrl-C\n")
    with pytest.raises(KeyboardInterrupt):
        operations.push_workdir(alice, service.options("alice"), "interrupted", InterruptAfterUpload())
    meta = ws.read_metadata(alice)
    assert meta.pending is not None and meta.version == 1
    status = ok(service.cli("status", cwd=alice, user="alice"))
    assert "your interrupted push was accepted as version 2" in status.stderr
    assert "nothing to push" in status.stdout
    assert ws.read_metadata(alice).version == 2 and ws.read_metadata(alice).pending is None
    # nothing is pushed twice: the next push has nothing to send
    assert "Everything up-to-date" in ok(service.cli("push", cwd=alice, user="alice")).stderr


def test_a_push_interrupted_before_it_was_sent_is_settled_as_never_applied(service, tmp_path: Path) -> None:
    alice, _ = two_clones(service, tmp_path, "unsent")

    class InterruptBeforeSending(Observer):
        def uploading(self, total_bytes: int, blobs: int) -> None:
            raise KeyboardInterrupt

    write(alice / "a.txt", "never sent\n")
    with pytest.raises(KeyboardInterrupt):
        operations.push_workdir(alice, service.options("alice"), "x", InterruptBeforeSending())
    assert ws.read_metadata(alice).pending is not None
    pushed = ok(service.cli("push", "-m", "again", cwd=alice, user="alice"))
    assert "your interrupted push was not applied" in pushed.stderr
    assert ws.read_metadata(alice).version == 2 and (alice / "a.txt").read_text() == "never sent\n"


def test_someone_else_cannot_settle_your_push(service, tmp_path: Path) -> None:
    """Asking what became of a request needs write access to its repository."""
    _, _ = two_clones(service, tmp_path, "settled")
    service.register("mallory")
    with service.connect("mallory") as connection:
        request = connection.new_request(p.OutcomeRequest, repo="settled", of_request="0" * 32, tree="0" * 64)
        with pytest.raises(PermissionDenied):
            operations.ask(connection, request)


def test_a_push_killed_after_its_upload_is_found_by_the_next_command(service, tmp_path: Path) -> None:
    """The client process is stopped the moment its push request is on Kafka (before
    its answer can come back), then killed: the push was applied, the client never
    knew. The next command finds it accepted and says so."""
    alice, _ = two_clones(service, tmp_path, "killed")
    topic = service.settings.topics.requests
    consumer = KafkaConsumer(bootstrap_servers=service.bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, n) for n in consumer.partitions_for_topic(topic)]
    consumer.assign(parts)
    consumer.seek_to_end()
    try:
        for attempt in range(3):  # the answer could beat the stop: then try again
            write(alice / "a.txt", f"pushed, then killed ({attempt})\n")
            client = subprocess.Popen(
                [str(BIN / "minigit"), "push", "-m", "killed"], cwd=alice, env=service.env("alice")
            )
            caught = wait_for_push_request(consumer, client)
            if caught:
                client.send_signal(signal.SIGSTOP)
            pending = ws.read_metadata(alice).pending
            client.kill()
            client.wait()
            if caught and pending is not None:
                break
        else:
            pytest.fail("the push's answer always came before the client could be stopped")
    finally:
        consumer.close()
    version = ws.read_metadata(alice).version
    status = ok(service.cli("status", cwd=alice, user="alice"))
    assert f"your interrupted push was accepted as version {version + 1}" in status.stderr
    assert "nothing to push" in status.stdout
    log = ok(service.cli("log", "--oneline", cwd=alice, user="alice")).stdout.splitlines()
    assert log[0] == f"{version + 1} killed"


def wait_for_push_request(consumer, client: subprocess.Popen, timeout: float = 60.0) -> bool:
    """Until a push request record is on the requests topic (True), or the client exits (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and client.poll() is None:
        for records in consumer.poll(timeout_ms=5).values():
            if any(b'"action":"push"' in record.value and b'"type":"request"' in record.value for record in records):
                return True
    return False
