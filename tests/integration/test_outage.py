"""A broker outage: the broker is SIGKILLed under three live replicas, stays down,
and comes back on the same data directory. Service must resume within seconds of
the broker answering (it took 35-45 s, heartbeats 22-30 s: kafka-python backs off
reconnecting up to 30 s, and a Kafka failure mid-request stopped the replica)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from conftest import Service, wait_until

from minigit.client import operations
from minigit.errors import MinigitError

# Seconds from the broker answering again to service resumed, on a loaded 2-core machine.
RESUMED_WITHIN_S = 12.0


@pytest.fixture
def own_broker(free_ports, minigit_server, tmp_path: Path):
    """A broker of this test's own (it is killed): (bootstrap, start, kill)."""
    port, controller_port = free_ports(2)
    data_dir = tmp_path / "kafka"
    arguments = ["--port", str(port), "--controller-port", str(controller_port), "--data-dir", str(data_dir)]

    def start() -> None:
        started = minigit_server("kafka", "start", *arguments)
        assert started.returncode == 0, started.stderr

    def kill() -> None:
        pid = int((data_dir / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or "zombie" in _status(pid), 30, message="broker gone")

    start()
    try:
        yield f"127.0.0.1:{port}", start, kill
    finally:
        minigit_server("kafka", "stop", "--data-dir", str(data_dir))


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_service_resumes_within_seconds_of_the_broker_coming_back(own_broker, tmp_path: Path) -> None:
    bootstrap, start_broker, kill_broker = own_broker
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    service = Service(bootstrap, f"t{uuid.uuid4().hex[:10]}-", data_dir)
    service.start("1", "2", "3")
    try:
        work = tmp_path / "work"
        work.mkdir()
        (work / "a.txt").write_text("0\n")
        options = service.options(timeout=20)
        wait_until(lambda: service.ping("outage"), 90, message="the service to answer")
        operations.init_repository(work, "outage", options)

        kill_broker()
        time.sleep(8)  # long enough for kafka-python's reconnect backoff to grow to seconds
        start_broker()
        back, back_ms = time.monotonic(), int(time.time() * 1000)

        def heartbeats_fresh() -> bool:
            try:
                beats = {beat.replica: beat.sent_ms for beat in service.bus.read_heartbeats(settle_s=0.2)}
            except MinigitError:
                return False
            return all(beats.get(replica, 0) > back_ms for replica in ("1", "2", "3"))

        wait_until(heartbeats_fresh, 60, interval=0.25, message="every replica's heartbeat")
        heartbeats_s = time.monotonic() - back

        (work / "a.txt").write_text("1\n")

        def pushed() -> bool:
            try:
                return operations.push_workdir(work, service.options(timeout=5)).new_version == 2
            except MinigitError:
                return False

        wait_until(pushed, 60, interval=0.2, message="a push to be accepted")
        push_s = time.monotonic() - back
        assert heartbeats_s <= RESUMED_WITHIN_S, f"heartbeats resumed {heartbeats_s:.1f} s after the broker"
        assert push_s <= RESUMED_WITHIN_S, f"the first push was accepted {push_s:.1f} s after the broker"
        assert all(process.poll() is None for process in service.processes.values()), "a replica stopped"
    finally:
        service.stop_all()
