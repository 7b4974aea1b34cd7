"""minigit_server.supervisor: restarts, and giving up on a crash loop.

The children are tiny Python processes (no Kafka): one that dies at once, as a
replica with a store it cannot open does, and one that keeps running.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from minigit_server.supervisor import CrashLoop, Supervisor, last_line


def test_a_crash_loop_is_deaths_in_a_window_without_a_healthy_run() -> None:
    loop = CrashLoop(deaths=3, window_s=100, healthy_after_s=10)
    assert not loop.died(0, ran_s=1) and not loop.died(5, ran_s=1)
    assert loop.died(9, ran_s=1) and loop.span_s() == 9


def test_a_healthy_run_forgets_earlier_deaths() -> None:
    loop = CrashLoop(deaths=3, window_s=100, healthy_after_s=10)
    loop.died(0, ran_s=1)
    loop.died(5, ran_s=1)
    assert not loop.died(60, ran_s=50)  # it ran 50 s: healthy, the count starts again
    assert not loop.died(61, ran_s=1)
    assert loop.died(62, ran_s=1)


def test_deaths_outside_the_window_do_not_count() -> None:
    loop = CrashLoop(deaths=3, window_s=10, healthy_after_s=100)
    assert not any(loop.died(t, ran_s=1) for t in (0, 20, 40, 60))


def test_last_line_is_one_escaped_line(tmp_path: Path) -> None:
    log = tmp_path / "replica.log"
    assert last_line(log) == "" and last_line(None) == ""
    log.write_bytes(b"x" * 10_000 + b"\nfirst\nstore is unusable \x1b[31m\n\n")
    assert last_line(log) == "store is unusable \\033[31m"


CRASH = "import sys; open(sys.argv[1], 'a').write('ERROR cannot open the store: disk I/O error\\n'); sys.exit(3)"
RUN = "import time; time.sleep(60)"
NO_KAFKA = "import sys; sys.exit(4)"  # what a replica does when it cannot reach Kafka at start


def supervise(
    tmp_path: Path, programs: dict[str, str], beside: Callable[[Supervisor], None] | None = None
) -> tuple[Supervisor, int | None, float]:
    """Run a supervisor over ``programs`` (replica id -> Python code) in this thread
    (it sets signal handlers), with a watchdog that stops it after 30 s, and
    ``beside`` in another thread."""

    def command(replica_id: str) -> list[str]:
        return [sys.executable, "-c", programs[replica_id], str(tmp_path / f"replica-{replica_id}.log")]

    chief = Supervisor(
        list(programs),
        command,
        tmp_path / "server.log",
        replica_log=lambda replica_id: tmp_path / f"replica-{replica_id}.log",
        backoff_s=(0.01, 0.05),
        crash_loop=lambda: CrashLoop(deaths=4, window_s=60, healthy_after_s=30),
        poll_s=0.02,
        kafka_wait_s=0.01,
    )
    watchdog = threading.Timer(30, chief.stop.set)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()
    watchdog.start()
    if beside is not None:
        threading.Thread(target=beside, args=(chief,), daemon=True).start()
    try:
        code = chief.run()
    finally:
        watchdog.cancel()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for child in chief.children.values():
            if child.poll() is None:
                child.kill()
    return chief, code, time.monotonic() - started


@pytest.mark.timeout(90)
def test_a_crash_looping_replica_is_reported_once_and_not_restarted(tmp_path: Path) -> None:
    chief, code, seconds = supervise(tmp_path, {"2": CRASH})
    assert code == 1 and seconds < 25  # it stopped by itself, not by the watchdog
    assert chief.given_up == ["2"]
    said = (tmp_path / "server.log").read_text()
    [line] = [line for line in said.splitlines() if "crash-looping:" in line]
    assert "ERROR replica 2 is crash-looping: died 4 times in" in line
    assert "(last: exit code 3)" in line and "not restarting it" in line
    assert f"Its log: {tmp_path / 'replica-2.log'}" in line
    assert "last line: ERROR cannot open the store: disk I/O error" in line
    assert said.count("replica 2 started") == 4  # started, restarted three times, then left alone
    assert "every replica is crash-looping (2); the supervisor stops" in said


@pytest.mark.timeout(90)
def test_the_other_replicas_keep_running_and_the_stop_exit_code_tells(tmp_path: Path) -> None:
    def stop_once_given_up(chief: Supervisor) -> None:
        while not chief.given_up:
            time.sleep(0.02)
        time.sleep(0.3)  # a few more rounds of the loop: replica 1 is left running
        chief.stop.set()

    chief, code, seconds = supervise(tmp_path, {"1": RUN, "2": CRASH}, stop_once_given_up)
    assert chief.given_up == ["2"] and seconds < 25
    assert code == 1  # stopped on request, but a replica had been given up on
    said = (tmp_path / "server.log").read_text()
    assert said.count("replica 1 started") == 1 and "every replica is crash-looping" not in said


@pytest.mark.timeout(90)
def test_a_replica_waiting_for_kafka_is_not_a_crash_loop(tmp_path: Path) -> None:
    """A broker outage makes every starting replica exit 4 (unreachable): the
    supervisor keeps starting them, soon, for as long as it lasts; it used to give
    up on all of them after a few deaths, and the service never came back."""

    def stop_after_many_starts(chief: Supervisor) -> None:
        log = tmp_path / "server.log"
        while not log.exists() or log.read_text().count("replica 2 started") < 20:
            time.sleep(0.02)
        chief.stop.set()

    chief, code, seconds = supervise(tmp_path, {"2": NO_KAFKA}, stop_after_many_starts)
    assert chief.given_up == [] and code == 0 and seconds < 25
    said = (tmp_path / "server.log").read_text()
    assert "replica 2 cannot reach Kafka; starting it again" in said and "crash-looping" not in said
