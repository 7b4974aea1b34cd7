"""`minigit-server status` and `verify` against real replicas, including one
whose store was damaged on purpose."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minigit.client import operations
from minigit_server.replica import HEARTBEAT_INTERVAL_S, store_path

pytestmark = pytest.mark.integration
SERVER = str(Path(sys.executable).with_name("minigit-server"))


def server_cli(service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SERVER, *args, "--bootstrap", service.bootstrap, "--namespace", service.namespace],
        capture_output=True,
        text=True,
        timeout=120,
        env={**service.env(), "COLUMNS": "200"},
    )


def make_repos(service, tmp_path: Path) -> None:
    for name in ("alpha", "beta"):
        work = tmp_path / name
        work.mkdir()
        (work / "f.txt").write_text(f"{name}\n")
        operations.init_repository(work, name, service.options())
        (work / "f.txt").write_text(f"{name} v2\n")
        operations.push_workdir(work, service.options(), "second")
    service.wait_converged(["1", "2", "3"])
    final = {"alpha": {"1": 2, "2": 2, "3": 2}, "beta": {"1": 2, "2": 2, "3": 2}}
    wait_for(lambda: json.loads(server_cli(service, "status", "--json").stdout)["repositories"] == final)


def wait_for(condition, timeout: float = 10 * HEARTBEAT_INTERVAL_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(HEARTBEAT_INTERVAL_S / 4)


def test_status_shows_replicas_partitions_and_heads(service, tmp_path: Path) -> None:
    make_repos(service, tmp_path)
    done = server_cli(service, "status", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    replicas = {row["replica"]: row for row in report["replicas"]}
    assert set(replicas) == {"1", "2", "3"}
    assert all(row["state"] == "up" for row in replicas.values())
    served = sorted(part for row in replicas.values() for part in row["serving"])
    assert served == [0, 1, 2]  # every request partition has exactly one owner
    assert all(set(row["lag"].values()) == {0} for row in replicas.values())
    assert report["repositories"] == {"alpha": {"1": 2, "2": 2, "3": 2}, "beta": {"1": 2, "2": 2, "3": 2}}

    table = server_cli(service, "status")
    assert table.returncode == 0 and "replicas" in table.stdout and "alpha" in table.stdout


def test_verify_agrees_then_catches_a_damaged_replica(service, tmp_path: Path) -> None:
    make_repos(service, tmp_path)
    done = server_cli(service, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All repositories are available!" in done.stdout

    # Damage replica 2's copy of alpha behind its back (a bad disk, a bad hand).
    with sqlite3.connect(store_path(service.data_dir, "2"), timeout=30) as db:
        db.execute("UPDATE versions SET message = 'tampered' WHERE repo = 'alpha' AND version = 2")

    # The next heartbeats carry the damaged digest; verify says so as soon as they do.
    wait_for(lambda: server_cli(service, "verify", "--wait", "0").returncode == 3)
    done = server_cli(service, "verify", "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    verdicts = {v["repo"]: v for v in json.loads(done.stdout)["repositories"]}
    assert verdicts["alpha"]["status"] == "disagree" and verdicts["alpha"]["disagreeing"] == ["2"]
    assert verdicts["beta"]["status"] == "agree"
    text = server_cli(service, "verify", "--wait", "0")
    assert text.returncode == 3 and "DISAGREE" in text.stdout and "replica 2 differs" in text.stdout


def replica_states(service) -> dict[str, str]:
    report = json.loads(server_cli(service, "status", "--json").stdout)
    return {row["replica"]: row["state"] for row in report["replicas"]}


def test_verify_fails_when_no_replica_answers_and_forget_drops_a_replica(service) -> None:
    wait_for(lambda: replica_states(service) == {"1": "up", "2": "up", "3": "up"})
    for replica in ("1", "2", "3"):
        service.kill(replica, signal.SIGTERM)  # each says it is stopping in its last heartbeat
    done = server_cli(service, "verify", "--wait", "0")
    assert done.returncode == 4 and "no replica answers" in done.stderr

    assert replica_states(service) == {"1": "stopped", "2": "stopped", "3": "stopped"}
    assert server_cli(service, "forget", "2").returncode == 0
    assert replica_states(service) == {"1": "stopped", "3": "stopped"}
