"""The guarantees under contention and faults, against real replicas on real Kafka:
at most one accepted push per base version, no accepted push lost, every
replica ends with the same state, a killed replica catches up, a deleted store
rebuilds from the log."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from minigit import protocol as p
from minigit.client import operations
from minigit.errors import PushRejected
from minigit_server.replica import store_path

pytestmark = pytest.mark.integration
REPLICAS = ["1", "2", "3"]


@dataclass
class Accepted:
    client: str
    base: int
    version: int
    tree: str


@dataclass
class Ledger:
    """What the clients were told: every accepted push, in the order seen."""

    accepted: list[Accepted] = field(default_factory=list)
    rejections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, entry: Accepted) -> None:
        with self.lock:
            self.accepted.append(entry)


def create_repo(service, root: Path, name: str, writers: list[str] = ()) -> None:
    """Repository ``name``, owned by tester, who shares write access with ``writers``."""
    origin = root / "origin"
    origin.mkdir()
    (origin / "README.md").write_text("shared\n")
    operations.init_repository(origin, name, service.options())
    service.share(name, *writers)


def push_until_accepted(
    service, workdir: Path, client: str, message: str, ledger: Ledger, timeout: float = 30.0
) -> None:
    options = service.options(user=client, timeout=timeout)
    while True:
        try:
            result = operations.push_workdir(workdir, options, message)
        except PushRejected:
            ledger.rejections += 1
            operations.pull_workdir(workdir, options)
            continue
        # A push whose answer was lost is retried by the transport with the same
        # request id, so the client always learns its outcome: never "up-to-date" here.
        assert result.status == "accepted", result
        if result.status == "accepted":
            tree = p.hash_bytes(p.encode_tree(operations.ws.scan_worktree(workdir)))
            ledger.record(Accepted(client, result.old_version, result.new_version, tree))
            return


def check_ledger(service, name: str, ledger: Ledger, expected_pushes: int) -> None:
    states = service.wait_converged(REPLICAS, timeout=120)
    heads = {replica: repos[name][0] for replica, (_, repos) in states.items()}
    digests = {repos[name][1] for _, repos in states.values()}
    assert len(digests) == 1, f"replicas disagree: {states}"
    assert set(heads.values()) == {1 + expected_pushes}

    bases = [entry.base for entry in ledger.accepted]
    assert len(bases) == len(set(bases)) == expected_pushes, "two pushes accepted on one base version"
    assert sorted(entry.version for entry in ledger.accepted) == list(range(2, 2 + expected_pushes))
    assert all(entry.version == entry.base + 1 for entry in ledger.accepted)

    for replica in REPLICAS:
        store = service.store(replica)
        try:
            versions = {info.version: info for info in store.list_versions(name)}
        finally:
            store.close()
        for entry in ledger.accepted:  # nothing accepted is lost, on any replica
            assert versions[entry.version].tree == entry.tree
            assert versions[entry.version].author == entry.client
        assert sorted(versions) == list(range(1, 2 + expected_pushes))


def test_concurrent_pushes(service, tmp_path: Path, audit_agrees) -> None:
    """8 clients x 20 pushes each to one repository, pulling and retrying when rejected."""
    clients, rounds = 8, 20
    create_repo(service, tmp_path, "busy", [f"c{n}" for n in range(clients)])
    workdirs = {}
    for n in range(clients):
        workdirs[f"c{n}"] = tmp_path / f"c{n}"
        operations.clone_repository("busy", workdirs[f"c{n}"], service.options(user=f"c{n}"))
    ledger = Ledger()

    def client(name: str) -> None:
        for round_ in range(rounds):
            (workdirs[name] / f"{name}.txt").write_text(f"{name} round {round_}\n")
            push_until_accepted(service, workdirs[name], name, f"{name} #{round_}", ledger)

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client, name) for name in workdirs]:
            future.result()

    check_ledger(service, "busy", ledger, clients * rounds)
    # The final content is the last accepted push: pull anywhere and compare.
    last = max(ledger.accepted, key=lambda entry: entry.version)
    final = tmp_path / "final"
    operations.clone_repository("busy", final, service.options())
    assert p.hash_bytes(p.encode_tree(operations.ws.scan_worktree(final))) == last.tree
    for n in range(clients):
        assert (final / f"c{n}.txt").read_text() == f"c{n} round {rounds - 1}\n"
    print(f"\n{clients * rounds} accepted pushes, {ledger.rejections} rejections (fetch first) retried")
    audit_agrees(service)  # and the log, folded again by an auditor, makes what they hold


def test_failover_keeps_accepted_pushes(bare_service, tmp_path: Path) -> None:
    """SIGKILL the replica serving the repository while clients push: service resumes
    after the rebalance, nothing accepted is lost, the restarted replica catches up."""
    service = bare_service
    service.start(*REPLICAS)
    clients = {f"f{n}": tmp_path / f"f{n}" for n in range(3)}
    create_repo(service, tmp_path, "failover", list(clients))
    owner = service.ping("failover").replica
    for name, workdir in clients.items():
        operations.clone_repository("failover", workdir, service.options(user=name))
    ledger = Ledger()
    stop = threading.Event()

    def client(name: str) -> None:
        round_ = 0
        while not stop.is_set():
            (clients[name] / f"{name}.txt").write_text(f"{name} {round_}\n")
            push_until_accepted(service, clients[name], name, f"{name} {round_}", ledger, timeout=60)
            round_ += 1

    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(client, name) for name in clients]
        wait_for_count(ledger, 5)
        before = len(ledger.accepted)
        killed_at = time.monotonic()
        service.kill(owner, signal.SIGKILL)
        wait_for_count(ledger, before + 1, timeout=90)
        recovery = time.monotonic() - killed_at
        wait_for_count(ledger, before + 6, timeout=90)
        stop.set()
        for future in futures:
            future.result()

    assert service.ping("failover").replica != owner
    service.start(owner)  # the killed replica comes back and catches up
    check_ledger(service, "failover", ledger, len(ledger.accepted))
    print(f"\nkilled replica {owner}; next accepted push {recovery:.1f}s later; {len(ledger.accepted)} accepted")


def wait_for_count(ledger: Ledger, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(ledger.accepted) < count:
        assert time.monotonic() < deadline, f"only {len(ledger.accepted)} pushes accepted, waiting for {count}"
        time.sleep(0.05)


def test_deleted_store_rebuilds_from_log(bare_service, tmp_path: Path) -> None:
    service = bare_service
    service.start(*REPLICAS)
    create_repo(service, tmp_path, "rebuild")
    work = tmp_path / "work"
    operations.clone_repository("rebuild", work, service.options())
    ledger = Ledger()
    for n in range(5):
        (work / f"file{n}.bin").write_bytes(bytes([n]) * (n * 1000 + 1))
        push_until_accepted(service, work, "tester", f"push {n}", ledger)
    before = service.wait_converged(REPLICAS)

    service.kill("2", signal.SIGTERM)
    shutil.rmtree(store_path(service.data_dir, "2").parent)
    service.start("2")
    after = service.wait_converged(REPLICAS)
    assert after["2"] == before["2"] == before["1"]
    check_ledger(service, "rebuild", ledger, 5)
