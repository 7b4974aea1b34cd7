"""History against real replicas: a pull of an older version (its tree and the
blobs the client lacks), a log with changes and by paths, the repositories a user
may read, the outcome of an accepted push and of one never applied (which then
changes nothing), an outcome asked by another user (which cancels nothing of
theirs), and `minigit-server repo delete` followed by a new repository of the same
name at version 1 (which a push from a clone of the old one cannot mix into)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from minigit import codec
from minigit import protocol as p
from minigit.client import operations
from minigit.client.exchange import Response

pytestmark = pytest.mark.integration
SERVER = str(Path(sys.executable).with_name("minigit-server"))
TIMEOUT = 60.0
PARTITIONS = 3  # conftest.PARTITIONS: the log's partitions


def commit(connection, cls: type[p.Request], repo: str, files: dict[str, bytes], **fields) -> Response:
    """Upload ``files`` and their tree (first), then init or push it."""
    blobs = {path: codec.BlobSource.from_bytes(data) for path, data in files.items()}
    tree = codec.BlobSource.from_bytes(p.encode_tree({path: p.FileEntry(b.sha, b.size) for path, b in blobs.items()}))
    unique = {b.sha: b for b in blobs.values()}
    request = connection.new_request(cls, repo=repo, tree=tree.sha, **fields)
    return connection.call(request, [tree, *unique.values()])


def ask(connection, cls: type[p.Request], **fields) -> Response:
    return connection.call(connection.new_request(cls, **fields))


def accepted(response: Response, version: int) -> None:
    assert (response.reply.status, response.reply.version) == (p.Status.ACCEPTED, version), response.reply


def test_history_of_a_repository(service) -> None:
    with service.connect("hist-ann", TIMEOUT) as ann:
        operations.register_user(ann)
        accepted(commit(ann, p.InitRequest, "hist", {"src/a.py": b"one", "README": b"read me"}), 1)
        accepted(commit(ann, p.PushRequest, "hist", {"src/a.py": b"two", "README": b"read me"}, base=1), 2)
        third = {"src/a.py": b"two", "README": b"read me!", "docs/x": b"x"}
        pushed = commit(ann, p.PushRequest, "hist", third, base=2)
        accepted(pushed, 3)

        # version 1's tree and the blobs of it that version 3 lacks (both files changed since)
        old = ask(ann, p.PullRequest, repo="hist", version=3, target=1)
        assert (old.reply.status, old.reply.version, old.reply.head) == (p.Status.OK, 1, 3)
        assert old.manifest is not None and sorted(old.manifest) == ["README", "src/a.py"]
        assert {blob.read() for sha, blob in old.blobs.items() if sha != old.reply.tree} == {b"one", b"read me"}
        alone = ask(ann, p.PullRequest, repo="hist", version=2, target=2, base_tree=old.reply.tree)
        assert alone.reply.status == p.Status.INVALID and "clone it again" in alone.reply.message
        tree_only = ask(ann, p.PullRequest, repo="hist", version=1, target=1, base_tree=old.reply.tree)
        assert (tree_only.reply.status, list(tree_only.blobs)) == (p.Status.OK, [old.reply.tree])
        beyond = ask(ann, p.PullRequest, repo="hist", version=3, target=4)
        assert (beyond.reply.status, beyond.reply.message) == (
            p.Status.INVALID,
            "version 4 does not exist: the head is 3",
        )

        log = ask(ann, p.LogRequest, repo="hist", changes=True).reply
        assert [(e.version, [(c.path, c.kind) for c in e.changes]) for e in log.entries] == [
            (3, [("README", "M"), ("docs/x", "A")]),
            (2, [("src/a.py", "M")]),
            (1, [("README", "A"), ("src/a.py", "A")]),
        ]
        assert log.entries[-1].tree == old.reply.tree
        by_path = ask(ann, p.LogRequest, repo="hist", paths=["src"]).reply
        assert [e.version for e in by_path.entries] == [2, 1] and by_path.entries[0].changes == []

        # what became of a push: an accepted one, and one the service never saw
        settled = ask(ann, p.OutcomeRequest, repo="hist", of_request=pushed.reply.request_id, tree=log.entries[0].tree)
        assert (settled.reply.status, settled.reply.version) == (p.Status.ACCEPTED, 3)
        lost = p.new_request_id()
        gone = ask(ann, p.OutcomeRequest, repo="hist", of_request=lost, tree=log.entries[0].tree).reply
        assert (gone.status, gone.message) == (p.Status.CANCELLED, "never applied: it never will be now")
        late = connection_push(ann, lost, {"late": b"late"}, base=3)
        assert (late.status, late.message) == (p.Status.INVALID, "request id already used by another request")
        assert ask(ann, p.LogRequest, repo="hist").reply.head == 3


def connection_push(connection, request_id: str, files: dict[str, bytes], base: int, repo: str = "hist") -> p.Reply:
    """A push under a request id of our choosing (the one settled before it arrived)."""
    blobs = [codec.BlobSource.from_bytes(data) for data in files.values()]
    manifest = {path: p.FileEntry(b.sha, b.size) for path, b in zip(files, blobs, strict=True)}
    tree = codec.BlobSource.from_bytes(p.encode_tree(manifest))
    request = connection.new_request(p.PushRequest, repo=repo, tree=tree.sha, base=base)
    request = dataclasses.replace(request, request_id=request_id)
    return connection.call(request, [tree, *blobs]).reply


def test_repositories_a_user_may_read(service) -> None:
    with service.connect("list-ann", TIMEOUT) as ann, service.connect("list-bob", TIMEOUT) as bob:
        operations.register_user(ann)
        operations.register_user(bob)
        accepted(commit(ann, p.InitRequest, "ann-private", {"a": b"a"}), 1)
        accepted(commit(ann, p.InitRequest, "ann-public", {"a": b"a"}, visibility=p.Visibility.PUBLIC), 1)
        accepted(commit(bob, p.InitRequest, "bob-private", {"a": b"a"}), 1)
        accepted(commit(bob, p.InitRequest, "bob-shared", {"a": b"a"}), 1)
        shared = ask(bob, p.ShareRequest, repo="bob-shared", member="list-ann", level=p.Access.WRITE).reply
        assert shared.status == p.Status.ACCEPTED, shared

        listed = ask(ann, p.ReposRequest, repo="list-ann").reply
        assert [(r.name, r.access, r.head, r.author) for r in listed.repos] == [
            ("ann-private", "owner", 1, "list-ann"),
            ("ann-public", "owner", 1, "list-ann"),
            ("bob-shared", "write", 1, "list-bob"),
        ]
        assert listed.more is False
        seen_by_bob = ask(bob, p.ReposRequest, repo="list-bob", limit=1).reply
        assert ([r.name for r in seen_by_bob.repos], seen_by_bob.more) == (["ann-public"], True)
        rest = ask(bob, p.ReposRequest, repo="list-bob", after="ann-public").reply
        assert [(r.name, r.access) for r in rest.repos] == [("bob-private", "owner"), ("bob-shared", "owner")]


def repo_delete(service, name: str, *extra: str) -> subprocess.CompletedProcess:
    where = ["--data-dir", str(service.data_dir), "--bootstrap", service.bootstrap, "--namespace", service.namespace]
    return subprocess.run(
        [SERVER, "repo", "delete", name, *extra, *where],
        capture_output=True,
        text=True,
        timeout=180,
        env=service.env(),
        stdin=subprocess.DEVNULL,
    )


def test_a_deleted_repository_starts_again_at_version_1(service) -> None:
    with service.connect("del-ann", TIMEOUT) as ann:
        operations.register_user(ann)
        accepted(commit(ann, p.InitRequest, "doomed", {"a": b"1"}), 1)
        accepted(commit(ann, p.PushRequest, "doomed", {"a": b"2"}, base=1), 2)
        old_tree = ask(ann, p.LogRequest, repo="doomed").reply.entries[0].tree

        refused = repo_delete(service, "doomed")
        assert refused.returncode == 2 and "--yes" in refused.stderr
        done = repo_delete(service, "doomed", "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip().startswith("doomed: doomed deleted (it was at version 2) (log partition ")
        again = repo_delete(service, "doomed", "--yes")
        assert again.returncode == 1 and "cannot delete doomed: no such repository" in again.stderr

        assert ask(ann, p.LogRequest, repo="doomed").reply.status == p.Status.NOT_FOUND
        accepted(commit(ann, p.InitRequest, "doomed", {"b": b"new"}), 1)
        stale = ask(ann, p.PullRequest, repo="doomed", version=2, base_tree=old_tree).reply
        assert stale.status == p.Status.INVALID  # beyond the new head: clone again
        clone = ask(ann, p.PullRequest, repo="doomed", version=1, base_tree=old_tree).reply
        assert clone.status == p.Status.INVALID and "deleted and created again" in clone.message
    service.wait_converged(["1", "2", "3"])


def test_a_push_from_a_clone_of_a_deleted_repository_is_told_to_clone_again(service) -> None:
    """alice clones delr {a}; an operator deletes it; she creates delr again with {a, b};
    from the stale clone she pushes an edited a on "version 1": it was accepted as
    version 2 of the new delr, deleting b. The push names the tree it was made from."""
    with service.connect("delr-ann", TIMEOUT) as ann:
        operations.register_user(ann)
        accepted(commit(ann, p.InitRequest, "delr", {"a": b"a"}), 1)
        old_tree = ask(ann, p.LogRequest, repo="delr").reply.entries[0].tree
        done = repo_delete(service, "delr", "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        accepted(commit(ann, p.InitRequest, "delr", {"a": b"a", "b": b"b"}), 1)
        new_tree = ask(ann, p.LogRequest, repo="delr").reply.entries[0].tree

        stale = commit(ann, p.PushRequest, "delr", {"a": b"edited"}, base=1, base_tree=old_tree).reply
        assert (stale.status, stale.head, stale.message) == (
            p.Status.INVALID,
            1,
            "your version 1 is not the server's version 1 (the repository was deleted and created again?): "
            "clone it again",
        )
        log = ask(ann, p.LogRequest, repo="delr", changes=True).reply
        assert [(e.version, e.tree) for e in log.entries] == [(1, new_tree)]  # b is still there
        accepted(commit(ann, p.PushRequest, "delr", {"a": b"edited", "b": b"b"}, base=1, base_tree=new_tree), 2)
    service.wait_converged(["1", "2", "3"])


def test_an_outcome_asked_by_another_user_cancels_nothing_of_theirs(service) -> None:
    """mallory names alice's request id in an outcome request for her own repository in
    the same log partition: she hears "cancelled"; alice's push under that id, arriving
    later, is accepted all the same."""
    alices = "own-ann"
    mallorys = next(
        name
        for name in (f"mal{n}" for n in range(1000))
        if p.log_partition(name, PARTITIONS) == p.log_partition(alices, PARTITIONS)
    )
    with service.connect("own-ann", TIMEOUT) as ann, service.connect("own-mal", TIMEOUT) as mal:
        operations.register_user(ann)
        operations.register_user(mal)
        accepted(commit(ann, p.InitRequest, alices, {"a": b"1"}), 1)
        accepted(commit(mal, p.InitRequest, mallorys, {"m": b"1"}), 1)
        in_flight = p.new_request_id()
        settled = ask(mal, p.OutcomeRequest, repo=mallorys, of_request=in_flight, tree="e" * 64).reply
        assert (settled.status, settled.message) == (p.Status.CANCELLED, "never applied: it never will be now")
        pushed = connection_push(ann, in_flight, {"a": b"2"}, base=1, repo=alices)
        assert (pushed.status, pushed.version) == (p.Status.ACCEPTED, 2), pushed
    service.wait_converged(["1", "2", "3"])
