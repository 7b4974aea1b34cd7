"""The command line as a user meets it: help, configuration precedence, output
habits (stdout vs stderr), exit codes, ignore files, the supervisor."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["minigit"],
        ["minigit", "init"],
        ["minigit", "clone"],
        ["minigit", "pull"],
        ["minigit", "push"],
        ["minigit", "status"],
        ["minigit", "log"],
        ["minigit-server"],
        ["minigit-server", "start"],
        ["minigit-server", "ping"],
        ["minigit-server", "status"],
        ["minigit-server", "verify"],
        ["minigit-server", "kafka"],
        ["minigit-server", "kafka", "start"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    done = subprocess.run([str(BIN / command[0]), *command[1:], "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "Usage:" in done.stdout


def test_minigit_help_documents_exit_codes_and_offers_completion() -> None:
    done = subprocess.run(
        [str(BIN / "minigit"), "--help"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}
    )
    assert "Exit codes" in done.stdout and "push rejected" in done.stdout
    assert "--install-completion" in done.stdout


def test_usage_error_is_exit_code_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "minigit"), "push", "--no-such-flag"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 2


def test_output_habits_and_config_precedence(service, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("a\n")
    (work / ".minigitignore").write_text("*.log\nbuild/\n")
    (work / "debug.log").write_text("noise\n")
    (work / "build").mkdir()
    (work / "build" / "out.bin").write_bytes(b"\x00")
    created = service.cli("init", "habits", "-m", "start", cwd=work)
    assert created.returncode == 0 and "Created repository habits at version 1 with 2 files" in created.stdout

    # The server address lives in .minigit: later commands need no flags or variables
    # (but who the user is, and where its key is kept, which .minigit does not hold).
    kept = {"MINIGIT_USER", "MINIGIT_CONFIG_DIR"}
    bare_env = {k: v for k, v in service.env().items() if not k.startswith("MINIGIT_") or k in kept}
    meta = json.loads((work / ".minigit").read_text())
    assert meta["server"] == {"bootstrap": service.bootstrap, "namespace": service.namespace}
    assert meta["version"] == 1 and set(meta["manifest"]) == {"a.txt", ".minigitignore"}

    def minigit(*args: str, env=bare_env) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "minigit"), *args], cwd=work, env=env, capture_output=True, text=True)

    nothing = minigit("push")
    assert nothing.returncode == 0 and nothing.stdout == "" and "Everything up-to-date" in nothing.stderr
    up_to_date = minigit("pull")
    assert up_to_date.returncode == 0 and up_to_date.stdout.strip() == "Already up to date."

    # A flag beats the environment, which beats .minigit: a wrong address in the
    # environment is used (and fails) unless a flag overrides it.
    wrong = {**bare_env, "MINIGIT_BOOTSTRAP": "127.0.0.1:1", "MINIGIT_TIMEOUT": "2"}
    assert minigit("pull", env=wrong).returncode == 4
    assert minigit("pull", "--bootstrap", service.bootstrap, "--timeout", "30", env=wrong).returncode == 0

    (work / "a.txt").write_text("changed\n")
    (work / "new.txt").write_text("new\n")
    status = minigit("status")
    assert "modified: a.txt" in status.stdout and "added:    new.txt" in status.stdout
    assert "debug.log" not in status.stdout and "build" not in status.stdout
    service.share("habits", "carol")  # private, as every repository is at first: carol may push
    pushed = minigit("push", "-m", "two files", "--user", "carol")
    assert pushed.returncode == 0 and "version 1 -> 2" in pushed.stdout
    quiet = minigit("push", "-q")
    assert quiet.returncode == 0 and quiet.stdout == quiet.stderr == ""

    history = json.loads(minigit("log", "--json").stdout)
    assert [(v["version"], v["author"], v["message"]) for v in history["versions"]] == [
        (2, "carol", "two files"),
        (1, "tester", "start"),
    ]
    text_log = minigit("log", "-n", "1").stdout
    assert text_log.startswith("version 2\nAuthor: carol\n") and "    two files" in text_log


def test_supervisor_restarts_a_dead_replica_and_stops_them_all(
    kafka_bootstrap: str, namespace: str, tmp_path: Path
) -> None:
    server = subprocess.Popen(
        [
            str(BIN / "minigit-server"),
            "start",
            "--replicas",
            "2",
            "--partitions",
            "2",
            "--bootstrap",
            kafka_bootstrap,
            "--namespace",
            namespace,
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        ping = [str(BIN / "minigit-server"), "ping", "--bootstrap", kafka_bootstrap, "--namespace", namespace]
        deadline = time.monotonic() + 60
        while subprocess.run(ping, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the server never answered"
            time.sleep(0.5)
        children = replica_pids(server.pid)
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(pids := replica_pids(server.pid)) < 2 or children[0] in pids:
            assert time.monotonic() < deadline, "the dead replica was not restarted"
            time.sleep(0.2)
        assert subprocess.run(ping, capture_output=True).returncode == 0
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
        assert server.returncode == 0
        assert "restarting" in output and "all replicas stopped" in output
        assert replica_pids(server.pid) == []
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists()
    finally:
        if server.poll() is None:  # the test failed: stop the replicas too (each has a session of its own)
            left = replica_pids(server.pid)
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_minigit_server_ping_is_answered_without_a_user_key(service) -> None:
    """The operator's ping carries no user's signature (the service decides and reveals
    nothing for it but which replica serves): every replica answers it."""
    where = ["--bootstrap", service.bootstrap, "--namespace", service.namespace]
    done = subprocess.run(
        [str(BIN / "minigit-server"), "ping", "--repo", "pinged", *where, "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "serves pinged" in done.stdout and "round trip" in done.stdout


def replica_pids(parent: int) -> list[int]:
    """Live (not zombie) children of ``parent``."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except (OSError, ValueError):
            continue
        if fields.get("PPid", "").strip() == str(parent) and not fields.get("State", "").startswith("Z"):
            found.append(int(status.parent.name))
    return sorted(found)
