"""`minigit-server status` and `verify` against real replicas, including one
whose store was damaged on purpose."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minigit import protocol as p
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
    last: list[dict] = [{}]

    def caught_up() -> bool:
        last[0] = status_report(service)
        return last[0]["repositories"] == final

    wait_for(caught_up, what=lambda: f"status to show every head; it said {last[0]}")


def status_report(service) -> dict:
    """What ``status --json`` says; exit code 4 (no replica up yet) prints it too."""
    done = server_cli(service, "status", "--json")
    assert done.returncode in (0, 4), done.stderr
    return json.loads(done.stdout)


def wait_for(condition, timeout: float = 10 * HEARTBEAT_INTERVAL_S, what=lambda: "the condition"):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what()}"
        time.sleep(HEARTBEAT_INTERVAL_S / 4)
    return value


def served_partitions(report: dict) -> list[int]:
    return sorted(part for row in report["replicas"] for part in row["serving"])


def test_status_shows_replicas_partitions_and_heads(service, tmp_path: Path) -> None:
    make_repos(service, tmp_path)

    # Replicas join the group one by one: once the rebalances are over (and the
    # heartbeats, up to one interval old, say so), every request partition has
    # exactly one owner.
    def settled() -> dict | None:
        report = status_report(service)
        return report if served_partitions(report) == [0, 1, 2] else None

    report = wait_for(settled)
    replicas = {row["replica"]: row for row in report["replicas"]}
    assert set(replicas) == {"1", "2", "3"}
    assert all(row["state"] == "up" for row in replicas.values())
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
    return {row["replica"]: row["state"] for row in status_report(service)["replicas"]}


def test_verify_fails_when_no_replica_answers_and_forget_drops_a_replica(service) -> None:
    wait_for(lambda: replica_states(service) == {"1": "up", "2": "up", "3": "up"})
    assert server_cli(service, "verify", "--wait", "0", "--expect", "3").returncode == 0
    service.kill("3", signal.SIGTERM)  # it says it is stopping in its last heartbeat
    wait_for(lambda: replica_states(service)["3"] == "stopped")
    done = server_cli(service, "verify", "--wait", "0")
    assert done.returncode == 3 and "DOWN      replica 3: stopped" in done.stdout, done.stdout
    assert server_cli(service, "status").returncode == 0  # two are up
    for replica in ("1", "2"):
        service.kill(replica, signal.SIGTERM)
    done = server_cli(service, "verify", "--wait", "0")
    assert done.returncode == 4 and "no replica answers" in done.stderr
    done = server_cli(service, "status")
    assert done.returncode == 4 and "no replica is up" in done.stderr

    assert replica_states(service) == {"1": "stopped", "2": "stopped", "3": "stopped"}
    assert server_cli(service, "forget", "2").returncode == 0
    assert replica_states(service) == {"1": "stopped", "3": "stopped"}
    # a replica it never knew (a typo) is not "forgotten": nothing is written, exit 1
    done = server_cli(service, "forget", "9")
    assert done.returncode == 1 and "no replica 9 is known" in done.stderr, (done.stdout, done.stderr)
    assert "forgot" not in done.stdout


def run_cli(program: str, bootstrap: str, namespace: str, *args: str, cwd: Path | None = None):
    return subprocess.run(
        [str(Path(sys.executable).with_name(program)), *args, "--bootstrap", bootstrap, "--namespace", namespace],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_missing_topics_are_unreachable_on_both_sides(kafka_bootstrap: str, namespace: str, tmp_path: Path) -> None:
    # A namespace where the service never ran: the client and every server command say the same, exit 4.
    client = run_cli("minigit", kafka_bootstrap, namespace, "clone", "x", cwd=tmp_path)
    said = f"the minigit topics do not exist on {kafka_bootstrap}"
    assert client.returncode == 4 and said in client.stderr
    for command in (["ping"], ["status"], ["status", "--json"], ["verify", "--wait", "0"], ["forget", "2"]):
        done = run_cli("minigit-server", kafka_bootstrap, namespace, *command)
        assert done.returncode == 4, (command, done.stderr)
        assert said in done.stderr and "minigit-server start" in done.stderr, (command, done.stderr)
        assert "Traceback" not in done.stderr
    # Nothing asked for them to be created, and nothing did.
    assert run_cli("minigit-server", kafka_bootstrap, namespace, "status").returncode == 4


def test_status_and_verify_read_hostile_heartbeats_as_data(bare_service) -> None:
    """The tester's attack records on repo-replicas, through the real broker and CLI."""
    replicas_topic = bare_service.bus.topics.replicas

    def send(key: bytes, replica: str, host: str, sent_ms: int) -> None:
        beat = p.Heartbeat(
            replica=replica,
            host=host,
            pid=1,
            started_ms=sent_ms,
            sent_ms=sent_ms,
            serving=[0],
            applied={0: 10},
            log_end={0: 10},
            repos={"demo": p.RepoReport(head=2, digest="d", partition=0, changed_at=5)},
        )
        bare_service.bus.producer.send(replicas_topic, key=key, value=beat.to_bytes())

    def beats(host: str = "[/]") -> None:
        now_ms = int(time.time() * 1000)
        send(b"1", "1", host, now_ms)  # a live replica with a host name that looks like markup
        send(b"2", "3", "forged", now_ms)  # a heartbeat for replica 3 under replica 2's key
        send(b"4", "4", "ahead", now_ms + 3_600_000)  # from an hour in the future
        bare_service.bus.flush()

    beats()
    done = server_cli(bare_service, "status", "--json")
    assert done.returncode == 0, done.stderr
    states = {row["replica"]: row["state"] for row in json.loads(done.stdout)["replicas"]}
    assert states == {"1": "up", "4": "silent"}

    for host in ("[/]", "[/x]", "[bold]h"):
        beats(host)
        done = server_cli(bare_service, "status")
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert host in done.stdout and "forged" not in done.stdout

    beats()
    done = server_cli(bare_service, "verify", "--wait", "0")
    assert done.returncode == 3, done.stdout + done.stderr  # replica 4 is not up: verify says so
    assert "Checked 1 repositories on replicas 1\n" in done.stdout
    assert "ok        demo (version 2): 1 replicas agree" in done.stdout
    assert "DOWN      replica 4: silent" in done.stdout
    bare_service.bus.forget_replica("4")
    done = server_cli(bare_service, "verify", "--wait", "0")
    assert done.returncode == 0, done.stdout + done.stderr
