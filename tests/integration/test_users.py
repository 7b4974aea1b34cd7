"""`minigit-server users` against real replicas started with closed registration:
a user who is not registered is refused with a hint; an operator adds her and
she works; an operator removes her and every replica refuses her; a removed name
cannot be claimed again by someone else."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MINIGIT, PARTITIONS, wait_until

from minigit import identity
from minigit import protocol as p
from minigit.errors import ExitCode
from minigit_server.server_key import load_server_key, server_key_path

pytestmark = pytest.mark.integration
SERVER = str(Path(sys.executable).with_name("minigit-server"))
REPLICAS = ["1", "2", "3"]
CLOSED = ["--registration", "closed"]


def server(service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SERVER, *args, "--bootstrap", service.bootstrap, "--namespace", service.namespace],
        capture_output=True,
        text=True,
        timeout=180,
        env=service.env(),
    )


def users(service, *args: str) -> subprocess.CompletedProcess:
    return server(service, "users", *args, "--data-dir", str(service.data_dir))


def minigit(service, config: Path, user: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A user's command on a machine of their own (their own config dir: keys, pinned service key)."""
    env = {**service.env(user), "MINIGIT_CONFIG_DIR": str(config)}
    return subprocess.run([MINIGIT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def repo_in(partition: int) -> str:
    return next(f"proj{i}" for i in range(1000) if p.log_partition(f"proj{i}", PARTITIONS) == partition)


def start_and_wait(service, extra_args: list[str]) -> None:
    """Start the three replicas; wait until each reports and every request partition is served."""
    service.start(*REPLICAS, extra_args=extra_args)

    def ready() -> dict | None:
        done = server(service, "status", "--json")
        if done.returncode != 0:
            return None
        report = json.loads(done.stdout)
        rows = [row for row in report["replicas"] if row["state"] == "up"]
        served = sorted(part for row in rows for part in row["serving"])
        return report if len(rows) == len(REPLICAS) and served == list(range(PARTITIONS)) else None

    return wait_until(ready, timeout=90, interval=0.5, message="every replica up and every partition served")


def listed(service) -> dict[str, dict]:
    done = users(service, "list", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return {row["name"]: row for row in json.loads(done.stdout)["users"]}


def test_operators_add_and_remove_users_of_a_closed_service(bare_service, tmp_path: Path) -> None:
    service = bare_service
    report = start_and_wait(service, CLOSED)
    service_fingerprint = identity.fingerprint(load_server_key(server_key_path(service.data_dir)).public_key())
    assert {row["key_fingerprint"] for row in report["replicas"]} == {service_fingerprint}  # status shows it

    alice = tmp_path / "alice-machine"
    alice.mkdir()
    works = [alice / f"work-{n}" for n in range(PARTITIONS)]
    names = [repo_in(n) for n in range(PARTITIONS)]  # one repository in each partition: each replica serves one
    for work, name in zip(works, names, strict=True):
        work.mkdir()
        (work / "notes.txt").write_text(f"{name}\n")

    # Not registered, and registration is closed: refused, with whom to ask.
    done = minigit(service, alice, "alice", "init", names[0], cwd=works[0])
    assert done.returncode == ExitCode.AUTH, done.stdout + done.stderr
    assert "registration is closed" in done.stderr and "ask an operator" in done.stderr
    assert "minigit-server users add" in done.stderr

    # The operator adds her key (she gives it from 'minigit auth show').
    shown = minigit(service, alice, "alice", "auth", "show", "--json", cwd=alice)
    assert shown.returncode == 0, shown.stderr
    key = json.loads(shown.stdout)["public_key"]
    fingerprint = json.loads(shown.stdout)["fingerprint"]
    added = users(service, "add", "alice", key)
    assert added.returncode == 0, added.stdout + added.stderr
    assert "alice: registered" in added.stdout and f"alice is active with key {fingerprint}" in added.stdout

    for work, name in zip(works, names, strict=True):
        done = minigit(service, alice, "alice", "init", name, cwd=work)
        assert done.returncode == 0, done.stdout + done.stderr
    row = listed(service)["alice"]
    assert (row["state"], row["fingerprint"], row["key"]) == ("active", fingerprint, key)

    # The operator removes her: every replica refuses her from then on.
    removed = users(service, "remove", "alice")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "alice: removed" in removed.stdout and "the name stays taken" in removed.stdout
    for work in works:
        (work / "notes.txt").write_text("after removal\n")
        for command in (["log"], ["push", "-m", "after removal"]):
            done = minigit(service, alice, "alice", *command, cwd=work)
            assert done.returncode == ExitCode.AUTH, (command, done.stdout + done.stderr)
            assert "alice was removed by an operator" in done.stderr
    service.wait_converged(REPLICAS)
    for replica in REPLICAS:
        store = service.store(replica)
        try:
            account = store.get_account("alice")
            assert account is not None and account.removed and account.key == "", (replica, account)
            assert {store.get_repo(name).head for name in names} == {1}  # her pushes changed nothing
        finally:
            store.close()
    row = listed(service)["alice"]
    assert (row["state"], row["key"], row["fingerprint"]) == ("removed", "", "")
    again = users(service, "remove", "alice")
    assert again.returncode == 0 and "alice: already removed" in again.stdout, again.stdout + again.stderr

    # Someone else cannot take the removed name, even where anyone may register.
    for replica in REPLICAS:
        service.kill(replica, signal.SIGTERM)
    start_and_wait(service, ["--registration", "open"])
    mallory = tmp_path / "mallory-machine"
    mallory.mkdir()
    claim = minigit(service, mallory, "alice", "auth", "register", cwd=mallory)
    assert claim.returncode != 0, claim.stdout + claim.stderr
    assert "the name alice was removed by an operator" in claim.stderr
    taken = minigit(service, mallory, "alice", "log", "--repo", names[0], cwd=mallory)
    assert taken.returncode == ExitCode.AUTH and "alice was removed by an operator" in taken.stderr
    assert listed(service)["alice"]["state"] == "removed"

    # Only an operator gives the name back.
    back = users(service, "add", "alice", key)
    assert back.returncode == 0, back.stdout + back.stderr
    done = minigit(service, alice, "alice", "push", "-m", "back", cwd=works[0])
    assert done.returncode == 0, done.stdout + done.stderr
    assert listed(service)["alice"]["state"] == "active"
