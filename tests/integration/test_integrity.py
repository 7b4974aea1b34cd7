"""A replica serves only bytes that match their hash: 16 flipped bytes in a stored
chunk are found, the object is repaired from the log and served right, and
`minigit-server verify --deep` names the replica and the object. Real Kafka,
real replica processes; the background scrub is off so that each repair is
the one the test provokes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from minigit import codec
from minigit import protocol as p
from minigit.client import operations
from minigit_server.replica import replica_log_path, store_path

pytestmark = pytest.mark.integration
SERVER = str(Path(sys.executable).with_name("minigit-server"))
REPO = "demo"


def server_cli(service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SERVER, *args, "--bootstrap", service.bootstrap, "--namespace", service.namespace],
        capture_output=True,
        text=True,
        timeout=180,
        env={**service.env(), "COLUMNS": "200"},
    )


def flip_stored_bytes(store: Path, content: bytes, count: int = 16) -> None:
    """Flip ``count`` bytes of ``content`` where they sit in the (stopped) replica's
    SQLite file, as a bad disk would: under SQLite, not through it."""
    with sqlite3.connect(store) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the main file
    data = bytearray(store.read_bytes())
    for start in range(1000, 200_000, 997):
        window = content[start : start + 64]
        at = data.find(window)
        if at >= 0 and data.find(window, at + 1) < 0:
            break
    else:
        raise AssertionError("the chunk's bytes are not in the store file")
    for i in range(at + 20, at + 20 + count):
        data[i] ^= 0xFF
    store.write_bytes(bytes(data))


def clone(service, tmp_path: Path, name: str) -> Path:
    done = service.cli("clone", REPO, name, cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp_path / name


def test_a_flipped_chunk_is_repaired_from_the_log_served_right_and_reported(
    bare_service, tmp_path: Path, monkeypatch
) -> None:
    service = bare_service
    monkeypatch.setenv("MINIGIT_SCRUB_RATE", "0")  # the replicas inherit it: no background scrub
    big = os.urandom(codec.CHUNK_SIZE + 5000)  # random: stored raw, in two pieces
    sha = codec.hash_bytes(big)
    service.start("1", "2")
    work = tmp_path / "work"
    work.mkdir()
    (work / "big.bin").write_bytes(big)
    (work / "a.txt").write_text("a\n")
    operations.init_repository(work, REPO, service.options(timeout=60))
    service.wait_converged(["1", "2"])

    # Damage replica 2's copy while it is stopped, and leave it the only replica.
    service.kill("2", signal.SIGTERM)
    flip_stored_bytes(store_path(service.data_dir, "2"), big)
    service.kill("1", signal.SIGTERM)
    service.start("2")

    first = clone(service, tmp_path, "first")
    assert (first / "big.bin").read_bytes() == big
    said = replica_log_path(service.data_dir, "2").read_text()
    assert f"ERROR DAMAGED object {sha}" in said and "found while serving pull of demo" in said, said
    assert f"ERROR REPAIRED object {sha}" in said, said

    # Damage it again; this time verify --deep finds it (and the scrub repairs it).
    service.kill("2", signal.SIGTERM)
    flip_stored_bytes(store_path(service.data_dir, "2"), big)
    service.start("1", "2")
    done = server_cli(service, "verify", "--deep", "--wait", "90", "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    deep = {result["replica"]: result for result in json.loads(done.stdout)["deep"]}
    assert deep["1"]["state"] == "clean" and deep["1"]["objects"] >= 3
    assert deep["2"]["state"] == "damaged" and deep["2"]["damaged_count"] == 1
    [found] = deep["2"]["damaged"]
    assert (found["sha"], found["partition"], found["repaired"]) == (sha, p.log_partition(REPO, 3), True)

    done = server_cli(service, "verify", "--deep", "--wait", "90")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replica 2: read" in done.stdout and "every one matches its hash" in done.stdout
    assert (clone(service, tmp_path, "second") / "big.bin").read_bytes() == big


def test_verify_deep_says_which_replica_did_not_finish(bare_service, monkeypatch) -> None:
    """A replica that never answers the scrub request (here: an old heartbeat with
    no scrub, kept fresh by hand) fails verify --deep; no pass is assumed."""
    import time

    service = bare_service
    now_ms = int(time.time() * 1000)
    beat = p.Heartbeat(
        replica="9",
        host="h",
        pid=1,
        started_ms=now_ms,
        sent_ms=now_ms + 4000,  # stays "up" for the few seconds this takes
        serving=[],
        applied={},
        log_end={},
        repos={},
    )
    service.bus.publish_heartbeat(beat)
    service.bus.flush()
    done = server_cli(service, "verify", "--deep", "--wait", "1")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "UNCHECKED replica 9: did not finish reading its store within 1s" in done.stdout
