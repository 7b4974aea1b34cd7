"""Shared test fixtures: one real Apache Kafka broker for the whole session.

The broker is started with the real command (``minigit-server kafka start``) on
free ports in a temporary data dir, and stopped at the end of the session. Set
``MINIGIT_TEST_BOOTSTRAP=host:port`` to use a broker you run yourself instead.
Without Java/Maven the integration tests are skipped, except under ``CI=true``,
where a broker that cannot start fails the run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# How fast hypothesis draws inputs is not what the property tests check: on a loaded
# 2-core machine the "too slow" health check failed input-heavy tests (drawing keys
# and requests) that pass everywhere else. Every example is still run and checked.
settings.register_profile("minigit", suppress_health_check=[HealthCheck.too_slow], deadline=None)
settings.load_profile("minigit")

MINIGIT_SERVER = str(Path(sys.executable).with_name("minigit-server"))


def pick_free_ports(count: int = 1) -> list[int]:
    """Distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def pick_free_port() -> int:
    return pick_free_ports(1)[0]


def run_minigit_server(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed `minigit-server` console script (the one next to this Python)."""
    return subprocess.run([MINIGIT_SERVER, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session", autouse=True)
def user_config_dir(tmp_path_factory: pytest.TempPathFactory):
    """Users' keys and pinned service keys go to the session's own directory (the
    commands the tests run inherit it), never to the home directory."""
    directory = tmp_path_factory.mktemp("config")
    saved = os.environ.get("MINIGIT_CONFIG_DIR")
    os.environ["MINIGIT_CONFIG_DIR"] = str(directory)
    yield directory
    if saved is None:
        os.environ.pop("MINIGIT_CONFIG_DIR", None)
    else:
        os.environ["MINIGIT_CONFIG_DIR"] = saved


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1", "yes"}


@dataclass(frozen=True)
class KafkaBroker:
    bootstrap: str  # "127.0.0.1:PORT"
    data_dir: Path | None  # None when MINIGIT_TEST_BOOTSTRAP points at an outside broker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory):
    """The session's broker (started on first use, stopped at the end)."""
    if bootstrap := os.environ.get("MINIGIT_TEST_BOOTSTRAP"):
        yield KafkaBroker(bootstrap, None)
        return
    data_dir = tmp_path_factory.mktemp("kafka")
    port, controller_port = pick_free_ports(2)
    start = run_minigit_server(
        "kafka", "start", "--port", str(port), "--controller-port", str(controller_port), "--data-dir", str(data_dir)
    )
    if start.returncode != 0:
        run_minigit_server("kafka", "stop", "--data-dir", str(data_dir))
        reason = f"could not start Kafka (exit code {start.returncode}): {start.stderr.strip() or start.stdout.strip()}"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield KafkaBroker(f"127.0.0.1:{port}", data_dir)
    finally:
        run_minigit_server("kafka", "stop", "--data-dir", str(data_dir))


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """ "127.0.0.1:PORT" of a running Kafka broker."""
    return kafka_broker.bootstrap


# The helpers as fixtures, so that test modules need not import this conftest.


@pytest.fixture
def free_ports():
    """``free_ports(n)``: n distinct free TCP ports on 127.0.0.1."""
    return pick_free_ports


@pytest.fixture
def minigit_server():
    """``minigit_server(*args)``: run the installed `minigit-server`, capture its output."""
    return run_minigit_server
