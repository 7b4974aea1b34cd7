"""A new replica joins from a snapshot of a running replica's store, then tails the
log: it ends with the same state as the replicas that applied the whole log.
Real Kafka, real replica processes, the operator commands as an operator runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from minigit.client import operations

pytestmark = pytest.mark.integration
SERVER = str(Path(sys.executable).with_name("minigit-server"))


def snapshot_cli(service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SERVER, "snapshot", *args, "--data-dir", str(service.data_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        env=service.env(),
    )


def test_a_replica_seeded_from_a_snapshot_converges_with_the_others(bare_service, tmp_path: Path) -> None:
    service = bare_service
    service.start("1", "2")
    options = service.options(timeout=60)
    work = tmp_path / "work"
    work.mkdir()
    for n in range(20):
        (work / f"f{n}.txt").write_text(f"file {n}\n" * 100)
    operations.init_repository(work, "joined", options)
    (work / "f0.txt").write_text("changed\n")
    operations.push_workdir(work, options, "second")
    service.wait_converged(["1", "2"])

    # taken while replica 1 runs
    taken = snapshot_cli(service, "create", str(tmp_path / "r1.snapshot"), "--replica", "1")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert "snapshot of replica 1 written" in taken.stdout
    checked = subprocess.run(
        [SERVER, "snapshot", "check", str(tmp_path / "r1.snapshot")], capture_output=True, text=True
    )
    assert checked.returncode == 0 and ": ok:" in checked.stdout, checked.stdout + checked.stderr

    # history goes on after the snapshot: the new replica must tail it from the snapshot's offsets
    (work / "f1.txt").write_text("after the snapshot\n")
    operations.push_workdir(work, options, "third")

    seeded = snapshot_cli(service, "restore", str(tmp_path / "r1.snapshot"), "--replica", "3")
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    again = snapshot_cli(service, "restore", str(tmp_path / "r1.snapshot"), "--replica", "3")
    assert again.returncode != 0 and "has a store already" in again.stdout + again.stderr

    service.start("3")
    states = service.wait_converged(["1", "2", "3"], timeout=90)
    assert states["3"] == states["1"] == states["2"]
    assert states["3"][1]["joined"][0] == 3  # the push made after the snapshot is there

    # and it serves: a clone answered by whichever replica owns the partition
    service.kill("1")
    service.kill("2")
    clone = tmp_path / "clone"
    operations.clone_repository("joined", clone, service.options(timeout=60))
    assert (clone / "f1.txt").read_text() == "after the snapshot\n"


def test_a_snapshot_of_another_service_is_refused(bare_service, kafka_bootstrap: str, tmp_path: Path) -> None:
    """A snapshot's offsets point into its own service's log: restored into another
    namespace (other key, other partition count) it would skip records and hold
    repositories that do not exist there."""
    from minigit_server.server_key import load_or_create_server_key

    target = bare_service  # 3 log partitions
    Service = type(bare_service)  # (not "from conftest import": another conftest may be imported by that name)
    load_or_create_server_key(target.data_dir)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = Service(kafka_bootstrap, target.namespace.rstrip("-") + "x3-", other_dir, partitions=6)
    try:
        other.start("1")
        work = tmp_path / "work"
        work.mkdir()
        (work / "a.txt").write_text("theirs\n")
        operations.init_repository(work, "theirs", other.options(timeout=60))
        other.wait_converged(["1"])
        taken = snapshot_cli(other, "create", str(tmp_path / "theirs.snapshot"), "--replica", "1")
        assert taken.returncode == 0, taken.stdout + taken.stderr
    finally:
        other.stop_all()
        other.bus.close()

    refused = snapshot_cli(target, "restore", str(tmp_path / "theirs.snapshot"), "--replica", "3")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    said = refused.stdout + refused.stderr
    assert "another service" in said and "namespace" in said and "service key" in said, said
    assert "6 log partitions" in said, said
    assert not list((target.data_dir).glob("replica-3*/store.sqlite*"))
