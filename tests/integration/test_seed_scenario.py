"""The seed's scenario, through the real CLI against three real replicas.

A repository at version V; client A has no repository, B is at an older
version, C is at V. Each pushes, then each pulls (the three at once, so that
their replies share the response topic). Exactly: A's push is denied (no
repository), B's is rejected (version mismatch), C's is accepted (V+1); A's
pull clones V+1, B's updates to V+1, C's is already up to date.

A, B and C are registered users (their keys sign their requests), and the
repository is private, as every repository is at first: its owner shares write
access with the three of them. Every version is signed by its author.
"""

from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
USERS = ("esteban", "bryan", "willy")  # A, B and C; "tester" owns the repository


def write(directory: Path, name: str, text: str) -> None:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run_all(service, commands: dict[str, tuple[Path, list[str]]]) -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {who: pool.submit(service.cli, *args, cwd=cwd, user=who) for who, (cwd, args) in commands.items()}
        return {who: future.result() for who, future in futures.items()}


def test_seed_scenario(service, tmp_path: Path, audit_agrees) -> None:
    origin, a, b, c = (tmp_path / name for name in ("origin", "a", "b", "c"))
    for directory in (origin, a):
        directory.mkdir()
    write(origin, "README.md", "the lab report\n")
    write(origin, "src/server.py", "print('server')\n")
    write(origin, "src/client.py", "print('client')\n")
    assert service.cli("init", "lab", "-m", "version 1", cwd=origin).returncode == 0

    # The three users register their keys (any first command would do it for them).
    for who in USERS:
        registered = service.cli("auth", "register", cwd=tmp_path, user=who)
        assert registered.returncode == 0 and registered.stdout.strip() == f"{who}: registered", registered
    # The repository is private: no one else may read it, until its owner shares it.
    refused = service.cli("clone", "lab", str(b), cwd=tmp_path, user="bryan")
    assert refused.returncode == 6 and "permission denied: bryan may not read lab (private)" in refused.stderr
    assert not b.exists()
    for who in USERS:
        shared = service.cli("share", "lab", who, "--write", cwd=origin)
        assert shared.returncode == 0 and shared.stdout.strip() == f"{who} now has write access to lab", shared

    # B clones at version 1; then the repository moves to version 2; C clones at 2.
    assert service.cli("clone", "lab", str(b), cwd=tmp_path, user="bryan").returncode == 0
    write(origin, "src/server.py", "print('server v2')\n")
    assert service.cli("push", "-m", "version 2", cwd=origin).returncode == 0
    assert service.cli("clone", "lab", str(c), cwd=tmp_path, user="willy").returncode == 0

    write(b, "src/client.py", "print('client edited by B')\n")
    write(c, "NOTES.md", "C's notes\n")

    pushes = run_all(
        service,
        {
            "esteban": (a, ["push", "--json", "-m", "A"]),
            "bryan": (b, ["push", "--json", "-m", "B"]),
            "willy": (c, ["push", "--json", "-m", "C"]),
        },
    )
    assert pushes["esteban"].returncode == 1
    assert "no repository found: clone first" in pushes["esteban"].stderr
    assert pushes["bryan"].returncode == 3
    assert "fetch first" in pushes["bryan"].stderr
    # B's and C's pushes race: B is rejected whether C's came first (head 3) or not (head 2).
    assert re.search(r"the server is at version [23], you are at version 1", pushes["bryan"].stderr)
    assert pushes["willy"].returncode == 0, pushes["willy"].stderr
    accepted = json.loads(pushes["willy"].stdout)
    assert (accepted["status"], accepted["old_version"], accepted["new_version"]) == ("accepted", 2, 3)
    assert accepted["changes"]["added"] == ["NOTES.md"]

    pulls = run_all(
        service,
        {
            "esteban": (a, ["pull", "lab", "--json"]),
            "bryan": (b, ["pull", "--json"]),
            "willy": (c, ["pull", "--json"]),
        },
    )
    results = {who: json.loads(done.stdout) for who, done in pulls.items()}
    assert all(done.returncode == 0 for done in pulls.values()), {w: d.stderr for w, d in pulls.items()}
    assert (results["esteban"]["status"], results["esteban"]["new_version"]) == ("cloned", 3)
    assert (results["bryan"]["status"], results["bryan"]["old_version"], results["bryan"]["new_version"]) == (
        "updated",
        1,
        3,
    )
    assert results["bryan"]["changes"] == {"added": ["NOTES.md"], "modified": ["src/server.py"], "deleted": []}
    assert results["bryan"]["kept_local"] == ["src/client.py"]
    assert (results["willy"]["status"], results["willy"]["new_version"]) == ("up-to-date", 3)

    # Everyone now holds version 3; B still has its own edit, unpushed.
    for directory in (a, b, c):
        assert (directory / "NOTES.md").read_text() == "C's notes\n"
        assert (directory / "src/server.py").read_text() == "print('server v2')\n"
    assert (a / "src/client.py").read_text() == "print('client')\n"
    assert (b / "src/client.py").read_text() == "print('client edited by B')\n"
    status_b = json.loads(service.cli("status", "--json", cwd=b).stdout)
    assert (status_b["version"], status_b["changes"]["modified"]) == (3, ["src/client.py"])

    # And B can now push its edit on top.
    assert service.cli("push", "-m", "B again", cwd=b, user="bryan").returncode == 0
    states = service.wait_converged(["1", "2", "3"])
    heads = {replica: repos["lab"][0] for replica, (_, repos) in states.items()}
    digests = {repos["lab"][1] for _, repos in states.values()}
    assert heads == {"1": 4, "2": 4, "3": 4} and len(digests) == 1

    # Each version is signed by its author's registered key, as anyone who may read it checks.
    history = service.cli("log", "--verify", cwd=a, user="esteban")
    assert history.returncode == 0, history.stderr
    authors = re.findall(r"^Author: (\S+)$", history.stdout, re.MULTILINE)
    assert authors == ["bryan", "willy", "tester", "tester"]
    assert history.stdout.count("Signed: good signature by") == 4 and "BAD" not in history.stdout

    # An auditor that shares nothing with the replicas (the seed's Spark, at last) folds
    # the log again and finds what every replica holds.
    audit_agrees(service)
