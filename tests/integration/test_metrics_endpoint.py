"""A real replica with --metrics-port and --log-format json: after an init, a push,
a clone and a pull with the real client, its /metrics (scraped over HTTP) counts
them by action and outcome, times them, reports its applied offsets equal to the
log's end, and every line of its log file is one JSON object."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_until

from minigit_server.metrics import CONTENT_TYPE
from minigit_server.replica import replica_log_path

pytestmark = pytest.mark.integration
REPO = "observed"
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"] == CONTENT_TYPE
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, labels, value = _SAMPLE.fullmatch(line).groups()
        samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def by_partition(samples: dict, name: str) -> dict[int, float]:
    return {int(dict(labels)["partition"]): v for (n, labels), v in samples.items() if n == name}


def answering(port: int):
    try:
        return scrape(port)
    except (urllib.error.URLError, ConnectionError):
        return None


def test_metrics_count_and_time_requests_and_show_the_replica_caught_up(
    bare_service, tmp_path: Path, free_ports
) -> None:
    service = bare_service
    [port] = free_ports(1)
    service.start("1", extra_args=["--metrics-port", str(port), "--log-format", "json"])
    before = wait_until(lambda: answering(port), 60, message="the metrics endpoint to answer")
    assert value(before, "minigit_up", replica="1") == 1
    assert value(before, "minigit_requests_total", action="push", outcome="accepted") == 0

    work, copy = tmp_path / "work", tmp_path / "copy"
    work.mkdir()
    (work / "a.txt").write_text("one\n")
    for args, where in [(("init", REPO, "-m", "first"), work), (("clone", REPO, str(copy)), tmp_path)]:
        done = service.cli(*args, cwd=where, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
    (work / "a.txt").write_text("two\n")
    pushed = service.cli("push", "-m", "second", cwd=work, timeout=180)
    assert pushed.returncode == 0 and "version 1 -> 2" in pushed.stdout, pushed.stdout + pushed.stderr
    pulled = service.cli("pull", cwd=copy, timeout=180)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (copy / "a.txt").read_text() == "two\n"

    ends = service.bus.log_end_offsets()
    assert sum(ends.values()) > 0

    def caught_up():
        samples = scrape(port)
        applied = by_partition(samples, "minigit_applied_offset")
        if applied == ends and by_partition(samples, "minigit_log_end_offset") == ends:
            return samples
        return None

    after = wait_until(caught_up, 60, message="the applied offsets to reach the log end in /metrics")
    assert set(by_partition(after, "minigit_apply_lag").values()) == {0}
    assert value(after, "minigit_requests_total", action="init", outcome="accepted") == 1
    assert value(after, "minigit_requests_total", action="push", outcome="accepted") == 1
    assert value(after, "minigit_requests_total", action="pull", outcome="ok") >= 2  # the clone and the pull
    for action in ("init", "push", "pull"):
        count = value(after, "minigit_request_seconds_count", action=action)
        assert count >= 1
        assert value(after, "minigit_request_seconds_bucket", action=action, le="+Inf") == count
        assert value(after, "minigit_request_seconds_sum", action=action) > 0
    assert value(after, "minigit_store_bytes") > 0
    assert value(after, "minigit_objects_quarantined") == 0
    assert value(after, "minigit_serving_partitions") == 3  # the only replica serves every partition

    service.stop_all()
    lines = replica_log_path(service.data_dir, "1").read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line, not only the request lines
    assert {entry["replica"] for entry in entries} == {"1"}
    assert any(
        entry["message"].startswith("started (pid") and "metrics on http" in entry["message"] for entry in entries
    )
    push = next(entry for entry in entries if entry.get("action") == "push")
    assert push["status"] == "accepted" and push["repo"] == REPO and push["user"] == "tester"
    assert isinstance(push["partition"], int) and push["ms"] >= 0
    assert entries[-1]["message"] == "stopped"


def test_a_metrics_port_in_use_stops_the_start_with_one_clear_error(bare_service, minigit_server) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = minigit_server(
            "start",
            "--replica-id",
            "1",
            "--data-dir",
            str(bare_service.data_dir),
            "--bootstrap",
            bare_service.bootstrap,
            "--namespace",
            bare_service.namespace,
            "--metrics-port",
            str(port),
            timeout=120,
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}: the port is in use" in done.stderr
