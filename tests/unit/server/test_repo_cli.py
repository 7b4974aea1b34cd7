"""`minigit-server repo delete`: an operator's deletion is signed with the service's
key, appended to the repository's log partition and reported from a replay of that
partition, as every replica decides it (Kafka replaced by a fake log)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from signing import key_text, signed_proposal, user_key
from typer.testing import CliRunner

from minigit import codec
from minigit import protocol as p
from minigit.console import err, out
from minigit_server import access, repo_cli
from minigit_server.apply import LogRecord
from minigit_server.cli import app
from minigit_server.server_key import load_or_create_server_key

PARTITIONS = 2
LAB = next(f"lab{i}" for i in range(100) if p.log_partition(f"lab{i}", PARTITIONS) == 1)


class FakeBus:
    """The log and heartbeats `repo delete` reads and writes (minigit_server.bus.Bus's methods)."""

    def __init__(self) -> None:
        self.log: dict[int, list[LogRecord]] = {n: [] for n in range(PARTITIONS)}
        self.beats: list[p.Heartbeat] = []
        self.appended: list[tuple[int, bytes, p.Message]] = []
        self.opened = self.closed = 0

    def read_heartbeats(self) -> list[p.Heartbeat]:
        return list(self.beats)

    def log_partition_count(self) -> int:
        return len(self.log)

    def add(self, partition: int, value: bytes) -> int:
        self.log[partition].append(LogRecord(partition, len(self.log[partition]), value))
        return len(self.log[partition]) - 1

    def append_log(self, partition: int, key: bytes, value: bytes, wait: bool) -> int:
        assert wait
        self.appended.append((partition, key, p.parse_message(value)))
        return self.add(partition, value)

    def scan_log(self, partition: int, end_offset: int, timeout_s: float) -> Iterator[LogRecord]:
        assert timeout_s > 0
        yield from self.log[partition][:end_offset]

    def close(self) -> None:
        self.closed += 1


@pytest.fixture(autouse=True)
def wide(monkeypatch) -> None:
    for console in (out, err):
        monkeypatch.setattr(console, "_width", 250)


@pytest.fixture
def fake(monkeypatch) -> FakeBus:
    bus = FakeBus()

    def opened(settings, timeout):
        bus.opened += 1
        return bus

    monkeypatch.setattr(repo_cli, "open_bus", opened)
    return bus


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    directory = tmp_path / "data"
    load_or_create_server_key(directory)
    monkeypatch.setenv("MINIGIT_DATA_DIR", str(directory))
    monkeypatch.delenv("MINIGIT_SERVER_KEY", raising=False)
    return directory


def service_key(data_dir):
    return load_or_create_server_key(data_dir)[0]


def create(bus: FakeBus, data_dir, name: str = LAB) -> None:
    """alice creates ``name`` (the empty tree), as an owner writes it to the log."""
    partition = p.log_partition(name, PARTITIONS)
    request_id = p.new_request_id()
    for chunk in p.blob_chunks(request_id, name, codec.BlobSource.from_bytes(p.encode_tree({}))):
        bus.add(partition, chunk.to_bytes())
    proposal = signed_proposal(
        p.CreateProposal,
        request_id=request_id,
        repo=name,
        user="alice",
        tree=p.EMPTY_TREE_SHA,
        message="init",
        time_ms=int(time.time() * 1000),
        server_key=service_key(data_dir),
        namespace="",
    )
    bus.add(partition, proposal.to_bytes())


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, ["repo", *args], input=input)


def test_delete_appends_a_deletion_signed_with_the_service_key_and_reports_it(fake, data_dir) -> None:
    create(fake, data_dir)
    done = run("delete", LAB, "--yes")
    assert done.exit_code == 0, done.output
    [(partition, key, proposal)] = fake.appended
    assert (partition, key) == (1, LAB.encode()) and isinstance(proposal, p.DeleteProposal)
    assert (proposal.repo, proposal.proposer) == (LAB, "operator")
    key_text_ = key_text(service_key(data_dir))
    assert access.check_operator(proposal, "", key_text_) is None
    assert done.output.strip() == f"{LAB}: {LAB} deleted (it was at version 1) (log partition 1, offset 2)"
    assert fake.closed == 1


def test_deleting_a_missing_repository_fails_with_the_reason(fake, data_dir) -> None:
    done = run("delete", LAB, "--yes")
    assert done.exit_code == 1
    assert f"error: cannot delete {LAB}: no such repository" in done.output
    assert len(fake.appended) == 1  # decided in the log, like every other change


def test_deleting_twice_the_second_finds_nothing(fake, data_dir) -> None:
    create(fake, data_dir)
    assert run("delete", LAB, "--yes").exit_code == 0
    assert run("delete", LAB, "--yes").exit_code == 1


def test_delete_as_json(fake, data_dir) -> None:
    create(fake, data_dir)
    done = run("delete", LAB, "-y", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {
        "repository": LAB,
        "status": "accepted",
        "message": f"{LAB} deleted (it was at version 1)",
        "partition": 1,
        "offset": 2,
    }


def test_a_script_without_yes_is_refused_before_anything_is_written(fake, data_dir) -> None:
    create(fake, data_dir)
    done = run("delete", LAB)
    assert done.exit_code == 2, done.output
    assert f"refusing to delete {LAB} without confirmation" in done.output and "--yes" in done.output
    assert fake.opened == 0 and fake.appended == []


@pytest.mark.parametrize(("answer", "code"), [("n\n", 1), ("\n", 1), ("y\n", 0)])
def test_at_a_terminal_it_asks_first(fake, data_dir, monkeypatch, answer, code) -> None:
    create(fake, data_dir)
    monkeypatch.setattr(repo_cli, "at_terminal", lambda: True)
    done = run("delete", LAB, input=answer)
    assert done.exit_code == code, done.output
    assert f"Delete repository {LAB}" in done.output
    if code:
        assert f"{LAB} was not deleted" in done.output and fake.appended == []
    else:
        assert "deleted (it was at version 1)" in done.output


def test_a_key_the_replicas_do_not_use_is_refused(fake, data_dir) -> None:
    theirs = key_text(user_key("*another service*"))
    fake.beats = [
        p.Heartbeat(
            replica=r,
            host="h",
            pid=1,
            started_ms=0,
            sent_ms=int(time.time() * 1000),
            serving=[],
            applied={},
            log_end={},
            repos={},
            server_key=theirs,
        )
        for r in "12"
    ]
    done = run("delete", LAB, "--yes")
    assert done.exit_code == 1 and "is not the one the replicas use" in done.output
    assert fake.appended == []


def test_a_deletion_the_replicas_skip_is_reported_as_skipped(fake, data_dir, monkeypatch) -> None:
    create(fake, data_dir)
    monkeypatch.setattr(access, "sign_operator", lambda key, proposal, namespace: proposal)  # unsigned
    done = run("delete", LAB, "--yes")
    assert done.exit_code == 1
    assert f"every replica skips this deletion of {LAB}: not signed by the service's key" in done.output


def test_the_namespace_is_signed(fake, data_dir) -> None:
    run("delete", LAB, "--yes", "--namespace", "team-")
    [(_, _, proposal)] = fake.appended
    public = key_text(service_key(data_dir))
    assert access.check_operator(proposal, "team-", public) is None
    assert access.check_operator(proposal, "", public) is not None


def test_a_bad_name_is_refused_before_anything_is_written(fake, data_dir) -> None:
    done = run("delete", "../x", "--yes")
    assert done.exit_code == 1 and "invalid repository name" in done.output
    assert fake.opened == 0
