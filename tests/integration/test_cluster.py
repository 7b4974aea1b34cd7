"""A local three-broker Kafka (`minigit-server kafka start --nodes 3`) under failure:
SIGKILL the broker that leads a repository's log partition while a client pushes.
Nothing accepted is lost, pushes go on through the two other brokers, and the
killed broker rejoins every in-sync replica set when `kafka start` restarts it."""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from conftest import PARTITIONS, Service, wait_until
from kafka import KafkaAdminClient

from minigit import protocol as p
from minigit.client import operations
from minigit.client.exchange import Credentials
from minigit.client.transport import Connection
from minigit.errors import ServerUnreachable
from minigit_server.devkafka import broker

pytestmark = pytest.mark.integration

NODES = 3
REPLICAS = ["1", "2"]
HEAP = "256m"  # three JVMs on a two-core CI machine


@dataclass(frozen=True)
class Cluster:
    data_dir: Path
    port: int  # of node 1; node n listens on port + n - 1

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.port + n}" for n in range(NODES))


def free_port_block(count: int) -> int:
    """A first port such that it and the next count - 1 are free on 127.0.0.1.

    Taken below the ephemeral range, unlike pick_free_ports: on a busy machine
    outgoing connections take ephemeral ports at any moment, and a cluster's six
    must stay free for the many seconds before its JVMs bind them.
    """
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    for _ in range(200):
        first = random.randrange(20000, max(ephemeral_low, 20000 + 1000) - count)
        if all(port_is_free(first + n) for n in range(count)):
            return first
    raise AssertionError(f"found no {count} consecutive free ports")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def cluster(tmp_path: Path, minigit_server) -> Iterator[Cluster]:
    """Three nodes, started with the real command; stopped at the end."""
    try:
        broker.find_java()
    except broker.BrokerError as error:  # as the session's broker: skipped without Java, except under CI
        if os.environ.get("CI", "").lower() in {"true", "1", "yes"}:
            pytest.fail(error.message, pytrace=False)
        pytest.skip(error.message)
    data_dirs = []
    try:
        for attempt in range(3):
            port = free_port_block(2 * NODES)  # brokers port..port+2, controllers port+3..port+5
            data_dirs.append(tmp_path / f"cluster-{attempt}")
            began = time.monotonic()
            start = minigit_server(
                "kafka", "start", "--nodes", str(NODES), "--port", str(port), "--data-dir", str(data_dirs[-1]),
                "--heap", HEAP, "--timeout", "120",
            )  # fmt: skip
            # a port found free can still be taken by another program before Kafka binds it
            if start.returncode == 0 or "already in use" not in start.stderr:
                break
        assert start.returncode == 0, start.stderr
        print(f"\ncluster of {NODES} nodes started in {time.monotonic() - began:.1f} s")
        cluster = Cluster(data_dirs[-1], port)
        assert f"bootstrap  {cluster.bootstrap}\n" in start.stdout
        yield cluster
    finally:
        for data_dir in data_dirs:
            stop = minigit_server("kafka", "stop", "--data-dir", str(data_dir))
            assert stop.returncode == 0, stop.stderr


def partitions_of(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], dict]:
    """(topic, partition) -> kafka-python's description: leader_id, replica_nodes, isr_nodes."""

    def describe():
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-cluster", request_timeout_ms=10_000)
        try:
            described = admin.describe_topics(topics)
        finally:
            admin.close()
        # a new topic is unknown to a broker until the controller's metadata reaches it
        return described if all(topic["error_code"] == 0 for topic in described) else None

    described = wait_until(describe, timeout=30, interval=0.5, message=f"every broker to know {topics}")
    return {(topic["name"], part["partition_index"]): part for topic in described for part in topic["partitions"]}


@dataclass
class ReopeningConnector:
    """The client's connection, opened again when opening it failed.

    Right after topics are created, and until the controller fences a killed
    broker (broker.session.timeout.ms, 9 s), the metadata a broker serves can lack
    a topic or name the dead broker as a partition's leader: the client's first
    requests fail while it opens. Nothing has been sent then, so opening again
    cannot lose or repeat a push; a failure after opening still fails the test.
    """

    failures: list[str] = field(default_factory=list)  # what kafka-python raised, or the client's message

    def __call__(self, settings, credentials: Credentials, timeout: float) -> Connection:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return Connection(settings, credentials, timeout)
            except ServerUnreachable as error:
                self.failures.append(repr(error.__context__) if error.__context__ else error.message)
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)


@dataclass
class Pusher:
    """One client pushing a new version after another, from a thread, until stopped."""

    options: operations.ClientOptions
    workdir: Path
    accepted: dict[int, str] = field(default_factory=dict)  # version -> tree hash the client sent
    accepted_at: dict[int, float] = field(default_factory=dict)
    failure: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        round_ = 0
        try:
            while not self.stop.is_set():
                (self.workdir / "counter.txt").write_text(f"{round_}\n")
                result = operations.push_workdir(self.workdir, self.options, f"push {round_}")
                # The only client: every push is accepted, a lost answer is retried with its request id.
                assert result.status == "accepted", result
                self.accepted[result.new_version] = p.hash_bytes(
                    p.encode_tree(operations.ws.scan_worktree(self.workdir))
                )
                self.accepted_at[result.new_version] = time.monotonic()
                round_ += 1
        except BaseException as error:  # noqa: BLE001 - reported by the test's thread
            self.failure = error

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count:
            if self.failure is not None:
                raise AssertionError(f"the pushing client failed: {self.failure!r}") from self.failure
            assert time.monotonic() < deadline, f"only {len(self.accepted)} pushes accepted, waiting for {count}"
            time.sleep(0.05)


def test_killing_the_leader_of_the_repository_partition_loses_nothing(cluster, tmp_path: Path, minigit_server):
    status = minigit_server("kafka", "status", "--data-dir", str(cluster.data_dir))
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"3 of {NODES} nodes running; controller leader: node" in status.stdout

    data_dir = tmp_path / "server"
    data_dir.mkdir()
    namespace = f"t{uuid.uuid4().hex[:10]}-"
    service = Service(cluster.bootstrap, namespace, data_dir, replication_factor=3, min_insync_replicas=2)
    topics = service.settings.topics
    service_topics = [topics.requests, topics.responses, topics.log, topics.replicas]
    pusher = None
    thread = None
    try:
        service.start(*REPLICAS)
        assert all(
            len(part["replica_nodes"]) == NODES for part in partitions_of(cluster.bootstrap, service_topics).values()
        )
        repo = "chaos"
        origin = tmp_path / "origin"
        origin.mkdir()
        (origin / "README.md").write_text("three brokers\n")
        connector = ReopeningConnector()
        options = replace(service.options(user="chaos", timeout=60.0), connector=connector)
        operations.init_repository(origin, repo, options)
        pusher = Pusher(options, origin)
        thread = threading.Thread(target=pusher.run, name="pusher")
        thread.start()
        pusher.wait_for(3, timeout=60)

        log_partition = (topics.log, p.log_partition(repo, PARTITIONS))
        leader = partitions_of(cluster.bootstrap, [topics.log])[log_partition]["leader_id"]
        victim = broker.read_broker_status(cluster.data_dir).nodes[leader - 1]
        assert victim.node_id == leader and victim.running
        before = len(pusher.accepted)
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)

        pusher.wait_for(before + 5, timeout=90)
        first_after = min(at for at in pusher.accepted_at.values() if at > killed_at)
        recovery = first_after - killed_at
        print(f"killed broker {leader}, leader of {log_partition}; next push accepted {recovery:.1f} s later")
        new_leader = partitions_of(cluster.bootstrap, [topics.log])[log_partition]
        assert new_leader["leader_id"] not in (leader, -1)
        assert leader not in new_leader["isr_nodes"] and len(new_leader["isr_nodes"]) == NODES - 1
        status = minigit_server("kafka", "status", "--data-dir", str(cluster.data_dir))
        assert status.returncode == 1 and f"2 of {NODES} nodes running" in status.stdout

        pusher.stop.set()
        thread.join(timeout=90)
        assert not thread.is_alive() and pusher.failure is None, repr(pusher.failure)

        restarted_at = time.monotonic()
        restart = minigit_server("kafka", "start", "--data-dir", str(cluster.data_dir), "--heap", HEAP)
        assert restart.returncode == 0, restart.stderr
        assert f"Kafka node {leader} started" in restart.stdout
        wait_until(
            lambda: all(
                len(part["isr_nodes"]) == NODES for part in partitions_of(cluster.bootstrap, service_topics).values()
            ),
            timeout=60,
            interval=0.5,
            message="the restarted broker to be back in every in-sync replica set",
        )
        print(f"broker {leader} restarted and back in sync {time.monotonic() - restarted_at:.1f} s later")

        # Nothing accepted is lost: every replica holds versions 1..head without a gap,
        # each accepted version as the client sent it, and a fresh clone is the last one.
        head = max(pusher.accepted)
        assert sorted(pusher.accepted) == list(range(2, head + 1))
        service.wait_converged(REPLICAS, timeout=60)
        for replica in REPLICAS:
            store = service.store(replica)
            try:
                versions = {info.version: info for info in store.list_versions(repo)}
            finally:
                store.close()
            assert sorted(versions) == list(range(1, head + 1))
            assert all(versions[version].tree == tree for version, tree in pusher.accepted.items())
        clone = tmp_path / "clone"
        operations.clone_repository(repo, clone, options)
        assert p.hash_bytes(p.encode_tree(operations.ws.scan_worktree(clone))) == pusher.accepted[head]
        print(f"{len(pusher.accepted)} pushes accepted, none lost; {len(connector.failures)} connections opened again")
        if connector.failures:
            print("opening failed with:", ", ".join(sorted(set(connector.failures))))
    except BaseException:
        for log in sorted(data_dir.glob("replica-*.out")):  # what the replicas met, for the failure report
            print(f"--- last lines of {log.name}:", *log.read_text(errors="replace").splitlines()[-12:], sep="\n")
        raise
    finally:
        if pusher is not None:
            pusher.stop.set()
        if thread is not None:
            thread.join(timeout=90)
        service.stop_all()
