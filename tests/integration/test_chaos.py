"""The short chaos run (bench/chaos.py) as a test: a few hundred operations while
every kind of fault is injected twice (replica SIGKILL and SIGSTOP,
broker SIGKILL + restart and SIGSTOP, a `minigit` CLI killed mid-command), then
the checker must find nothing lost, duplicated, missing or divergent, and
`minigit-server verify` must pass. It kills its broker, so it starts its own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import chaos

pytestmark = pytest.mark.integration


@pytest.fixture
def private_broker(tmp_path: Path, free_ports, minigit_server):
    """A broker of this test alone (the nemesis kills it), stopped at the end."""
    data_dir = tmp_path / "kafka"
    port, controller_port = free_ports(2)
    broker = chaos.Broker(data_dir, port, controller_port)
    args = ["--port", str(port), "--controller-port", str(controller_port), "--data-dir", str(data_dir)]
    started = minigit_server("kafka", "start", *args)
    if started.returncode != 0:
        broker.stop()
        reason = f"could not start Kafka (exit code {started.returncode}): {started.stderr.strip()}"
        if os.environ.get("CI", "").lower() in {"true", "1", "yes"}:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.timeout(600)
def test_a_short_chaos_run_loses_nothing_and_the_replicas_agree(private_broker: chaos.Broker, tmp_path: Path):
    config = chaos.Config(
        ops=300,
        min_rounds=2,  # every fault kind twice, whatever the op count
        seed=int(os.environ.get("MINIGIT_CHAOS_SEED", "1")),
        quiet=(2.0, 4.0),
        replica_down=(2.0, 5.0),
        replica_pause=(2.0, 8.0),
        broker_down=(1.0, 2.0),
        broker_pause=(2.0, 5.0),
        max_seconds=240,
        final_timeout=240,
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = chaos.run(config, private_broker, private_broker.bootstrap, run_dir, print)
    lines: list[str] = []
    chaos.report(result, lines.append)
    print("\n".join(lines))
    summary = result.summary

    assert result.findings.ok, "\n".join(lines)
    assert summary["lost"] == 0 and summary["duplicated"] == 0
    assert summary["ops"] >= 300
    assert set(summary["faults"]) >= set(chaos.KINDS), summary["faults"]
    assert summary["by_f"]["push"].get("ok", 0) > 0
    assert result.verify and all(v["exit_code"] == 0 for v in result.verify)
    # Every repository moved past its first version: the checks had pushes to trace.
    assert len(summary["versions"]) == config.repos and all(v > 1 for v in summary["versions"].values())
