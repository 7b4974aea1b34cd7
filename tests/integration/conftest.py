"""A replicated service per test: real replica processes on the session's broker,
isolated by a unique topic namespace (unique topics per test)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from minigit import protocol as p
from minigit.client import operations
from minigit.client.exchange import Credentials
from minigit.client.transport import Connection
from minigit.config import KafkaSettings, ServerFlags
from minigit_server.bus import Bus, ensure_topics
from minigit_server.replica import store_path
from minigit_server.store import SqliteStore, StoreUnusable
from minigit_server.supervisor import replica_command

MINIGIT = str(Path(sys.executable).with_name("minigit"))
MINIGIT_SERVER = str(Path(sys.executable).with_name("minigit-server"))
PARTITIONS = 3


def wait_until(condition, timeout: float, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


class Service:
    """Replica processes started with the real command, one per replica id."""

    def __init__(
        self,
        bootstrap: str,
        namespace: str,
        data_dir: Path,
        partitions: int = PARTITIONS,
        replication_factor: int = 1,
        min_insync_replicas: int | None = None,
        kafka_options: Mapping[str, object] | None = None,
    ) -> None:
        """``kafka_options``: security settings (``--kafka-option`` names) of the harness's
        own connections and of the replicas, which get them as MINIGIT_KAFKA_* variables."""
        self.bootstrap = bootstrap
        self.namespace = namespace
        self.data_dir = data_dir
        self.settings = KafkaSettings(bootstrap, namespace, dict(kafka_options or {}))
        self.processes: dict[str, subprocess.Popen] = {}
        # created here, before any replica: a replica's own `start` finds them and keeps their settings
        ensure_topics(self.settings, partitions, replication_factor, min_insync_replicas)
        self.bus = Bus(self.settings, client_id="test-harness")

    def command(self, replica_id: str, extra_args: Sequence[str] = ()) -> list[str]:
        options = ["--data-dir", str(self.data_dir), "--bootstrap", self.bootstrap, "--namespace", self.namespace]
        return replica_command(replica_id, [*options, *extra_args])

    def start(self, *replica_ids: str, extra_args: Sequence[str] = ()) -> None:
        """``extra_args``: more `start` options, the same for each of these replicas."""
        for replica_id in replica_ids:
            log = open(self.data_dir / f"replica-{replica_id}.out", "ab")  # noqa: SIM115
            self.processes[replica_id] = subprocess.Popen(
                self.command(replica_id, extra_args),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.settings.security_environment()},
            )

    def kill(self, replica_id: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(replica_id)
        process.send_signal(sig)
        process.wait(timeout=60)

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        self.bus.close()

    def options(self, user: str = "tester", timeout: float = 30.0) -> operations.ClientOptions:
        """A user's options; keys and pinned service keys are the session's (MINIGIT_CONFIG_DIR)."""
        return operations.ClientOptions(user, ServerFlags(self.bootstrap, self.namespace), timeout)

    def credentials(self, user: str = "tester") -> Credentials:
        """``user``'s key (created on first use) and the service key pinned for this namespace."""
        return self.options(user).credentials(self.settings)

    def connect(self, user: str = "tester", timeout: float = 30.0) -> Connection:
        """A client connection of ``user``'s that signs its requests (``operations.ask``
        registers the user on first use; ``call`` alone does not)."""
        return Connection(self.settings, self.credentials(user), timeout)

    def ping(self, repo: str, timeout: float = 60.0) -> p.Reply:
        with self.connect("tester", timeout) as connection:
            return operations.ask(connection, connection.new_request(p.PingRequest, repo=repo)).reply

    def register(self, *users: str) -> None:
        """Register each user's key (what any command does on first use)."""
        for user in users:
            operations.register_account(self.data_dir, self.options(user))

    def share(self, repo: str, *members: str, level: p.Access = p.Access.WRITE, owner: str = "tester") -> None:
        """The owner gives each member ``level`` access to ``repo`` (repositories are private).
        The members are registered first: access is shared only with a name someone holds."""
        self.register(*members)
        for member in members:
            reply = operations.share_repository(self.data_dir, self.options(owner), repo, member, level)
            assert reply.status in (p.Status.ACCEPTED, p.Status.UP_TO_DATE), reply

    def env(self, user: str = "tester") -> dict[str, str]:
        return {
            **os.environ,
            "MINIGIT_BOOTSTRAP": self.bootstrap,
            "MINIGIT_NAMESPACE": self.namespace,
            "MINIGIT_USER": user,
            "COLUMNS": "200",
        }

    def cli(self, *args: str, cwd: Path, user: str = "tester", timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [MINIGIT, *args], cwd=cwd, env=self.env(user), capture_output=True, text=True, timeout=timeout
        )

    def log_tails(self, lines: int = 30) -> str:
        """The end of every replica's output, for the report of a failed test."""
        parts = []
        for path in sorted(self.data_dir.glob("replica-*.out")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- looking inside the replicas' stores (read-only, beside the running replica)

    def store(self, replica_id: str) -> SqliteStore:
        return SqliteStore(store_path(self.data_dir, replica_id))

    def states(self, replica_ids: list[str]) -> dict[str, tuple]:
        """Per replica: applied offsets and, per repository, head and digest."""
        found = {}
        for replica_id in replica_ids:
            store = self.store(replica_id)
            try:
                with store.snapshot():
                    repos = {r.name: (r.head, store.repo_digest(r.name)) for r in store.list_repos()}
                    found[replica_id] = (store.applied_offsets(), repos)
            finally:
                store.close()
        return found

    def wait_converged(self, replica_ids: list[str], timeout: float = 60.0) -> dict[str, tuple]:
        """Wait until every replica applied the whole log; return their (equal) states."""

        def converged():
            ends = {k: v for k, v in self.bus.log_end_offsets().items() if v}
            try:
                states = self.states(replica_ids)
            except StoreUnusable:
                return None  # a replica has not moved its damaged store aside yet
            if all({k: v for k, v in s[0].items() if v} == ends for s in states.values()):
                return states
            return None

        states = wait_until(converged, timeout, message="replicas to apply the whole log")
        return states


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test's report ends with what its replicas logged: a failure in CI
    cannot be rerun with the replicas' files still there."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for harness in getattr(item, "funcargs", {}).values():
            if isinstance(harness, Service):
                report.sections.append(("replica logs", harness.log_tails()))


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}-"


@pytest.fixture
def service(kafka_bootstrap: str, namespace: str, tmp_path: Path) -> Iterator[Service]:
    """Three replicas, started; stopped at the end of the test."""
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    harness = Service(kafka_bootstrap, namespace, data_dir)
    harness.start("1", "2", "3")
    try:
        yield harness
    finally:
        harness.stop_all()


@pytest.fixture
def bare_service(kafka_bootstrap: str, namespace: str, tmp_path: Path) -> Iterator[Service]:
    """Topics only: the test starts and kills replicas itself."""
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    harness = Service(kafka_bootstrap, namespace, data_dir)
    try:
        yield harness
    finally:
        harness.stop_all()


@pytest.fixture
def audit_agrees() -> Callable[[Service], None]:
    """`minigit-server audit` as an operator runs it, in Apache Spark (local mode) and
    in-process: the log, folded from its beginning with the replicas' own rules, makes
    what every replica reports, and both engines say so alike. Without PySpark the
    Spark half is left out, except under CI=true, where the extra is installed."""

    def check(service: Service) -> None:
        engines = ["local"]
        if importlib.util.find_spec("pyspark") is not None or os.environ.get("CI", "").lower() in {"true", "1"}:
            engines.append("spark")
        found = {}
        for engine in engines:
            command = [MINIGIT_SERVER, "audit", "--engine", engine, "--master", "local[2]", "--json", "--wait", "60"]
            done = subprocess.run(
                [*command, "--data-dir", str(service.data_dir)],
                capture_output=True,
                text=True,
                timeout=600,
                env=service.env(),
            )
            assert done.returncode == 0, (engine, done.stdout[-3000:], done.stderr[-3000:])
            verdicts = json.loads(done.stdout)["repositories"]
            assert verdicts and all(v["status"] == "agree" for v in verdicts), (engine, verdicts)
            found[engine] = [(v["repo"], v["head"], v["versions"]) for v in verdicts]
        assert len({tuple(rows) for rows in found.values()}) == 1, found

    return check
