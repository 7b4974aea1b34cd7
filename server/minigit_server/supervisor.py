"""``minigit-server start --replicas N``: N replica processes, kept running.

Each replica is its own OS process (``minigit-server start --replica-id ID``),
exactly what an operator would run on separate hosts. The supervisor restarts
a replica that dies, gives up on one that keeps dying (a crash loop: restarting
it again would only fill the logs), and stops them all on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from minigit.config import DEFAULT_LOGS, NO_METRICS, KafkaSettings, LogSettings, MetricsSettings
from minigit.console import shown
from minigit.errors import ExitCode
from minigit_server.logs import formatter_for, log_handlers
from minigit_server.metrics import MetricsServer, ReplicaMetrics
from minigit_server.replica import Replica, replica_log_path, setup_logging

STOP_GRACE_S = 30.0
# How soon a replica that exited because Kafka could not be reached is started again.
KAFKA_WAIT_S = 2.0
RESTART_BACKOFF_S = (1.0, 30.0)
HEALTHY_AFTER_S = 60.0
# A replica that dies this often within the window, never staying up HEALTHY_AFTER_S
# in between, is crash-looping: it is not restarted again.
CRASH_LOOP_DEATHS = 5
CRASH_LOOP_WINDOW_S = 600.0
TAIL_BYTES = 4096


class CrashLoop:
    """The deaths of one replica, and whether restarting it is still worth it."""

    def __init__(
        self,
        deaths: int = CRASH_LOOP_DEATHS,
        window_s: float = CRASH_LOOP_WINDOW_S,
        healthy_after_s: float = HEALTHY_AFTER_S,
    ) -> None:
        self.limit, self.window_s, self.healthy_after_s = deaths, window_s, healthy_after_s
        self.deaths: deque[float] = deque()

    def died(self, now: float, ran_s: float) -> bool:
        """Count a death at ``now`` after running ``ran_s``; True once it is a crash loop."""
        if ran_s >= self.healthy_after_s:
            self.deaths.clear()  # it was healthy: earlier deaths are not part of a loop
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > self.window_s:
            self.deaths.popleft()
        return len(self.deaths) >= self.limit

    def span_s(self) -> float:
        return self.deaths[-1] - self.deaths[0] if self.deaths else 0.0


def last_line(path: Path | None) -> str:
    """The last line a replica wrote to its log (escaped, one line), or ''."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - TAIL_BYTES))
            lines = [line for line in log.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return shown(lines[-1])[:500] if lines else ""


def exit_description(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def run_replica(
    replica_id: str,
    settings: KafkaSettings,
    data_dir: Path,
    max_push_bytes: int,
    logs: LogSettings = DEFAULT_LOGS,
    metrics: MetricsSettings = NO_METRICS,
    server_key_path: Path | None = None,
    registration_open: bool = True,
) -> None:
    """One replica in the foreground, until SIGTERM/SIGINT."""
    log = setup_logging(replica_id, replica_log_path(data_dir, replica_id), logs)
    recorder = server = None
    if metrics.port is not None:
        # listening before the replica opens its store and joins the group: a taken port fails at once
        recorder = ReplicaMetrics(replica_id, time.time())
        server = MetricsServer(recorder.registry, metrics.host, metrics.port).start()
    try:
        replica = Replica(replica_id, settings, data_dir, max_push_bytes, recorder, server_key_path, registration_open)
        stop_on_signals(replica.stop)
        where = f", metrics on http://{metrics.host}:{server.port}/metrics" if server else ""
        log.info("started (pid %d), store %s%s", os.getpid(), replica.store.path, where)
        replica.run()
        log.info("stopped")
    finally:
        if server is not None:
            server.close()


def replica_command(replica_id: str, options: list[str], metrics: MetricsSettings = NO_METRICS) -> list[str]:
    """The command of replica ``replica_id`` (1 … N): with metrics, replica k listens on port + k - 1."""
    own = metrics.for_replica(int(replica_id)).flags() if metrics.port is not None else []
    return [sys.executable, "-m", "minigit_server", "start", "--replica-id", replica_id, *options, *own]


class Supervisor:
    def __init__(
        self,
        replica_ids: list[str],
        command_for: Callable[[str], list[str]],
        log_file: Path,
        environment: dict[str, str] | None = None,
        replica_log: Callable[[str], Path] | None = None,
        logs: LogSettings = DEFAULT_LOGS,
        backoff_s: tuple[float, float] = RESTART_BACKOFF_S,
        crash_loop: Callable[[], CrashLoop] = CrashLoop,
        poll_s: float = 0.5,
        kafka_wait_s: float = KAFKA_WAIT_S,
    ) -> None:
        self.replica_ids = replica_ids
        self.command_for = command_for
        self.environment = {**os.environ, **(environment or {})}
        self.replica_log = replica_log
        self.backoff_s = backoff_s
        self.poll_s = poll_s
        self.kafka_wait_s = kafka_wait_s
        self.crash_loops = {replica_id: crash_loop() for replica_id in replica_ids}
        self.given_up: list[str] = []
        self.started_at: dict[str, float] = {}
        self.stop = threading.Event()
        self.children: dict[str, subprocess.Popen] = {}
        self.log = logging.getLogger("minigit.supervisor")
        for handler in log_handlers(logs, log_file, formatter_for(logs, "supervisor", None)):
            self.log.addHandler(handler)
        self.log.setLevel(logging.INFO)
        self.log.propagate = False

    def spawn(self, replica_id: str) -> None:
        # Own process group: a Ctrl-C reaches the supervisor, which stops children in order.
        self.children[replica_id] = subprocess.Popen(
            self.command_for(replica_id), start_new_session=True, env=self.environment
        )
        self.started_at[replica_id] = time.monotonic()
        self.log.info("replica %s started (pid %d)", replica_id, self.children[replica_id].pid)

    def run(self) -> int:
        """Until SIGTERM/Ctrl-C, or until every replica crash-loops. Exit code 0, or 1
        when a replica was given up on (the operator must look at it)."""
        stop_on_signals(self.stop)
        for replica_id in self.replica_ids:
            self.spawn(replica_id)
        first, most = self.backoff_s
        backoff = dict.fromkeys(self.replica_ids, first)
        restart_at: dict[str, float] = {}
        while self.children and not self.stop.wait(self.poll_s):
            now = time.monotonic()
            for replica_id, child in list(self.children.items()):
                code = child.poll()
                if code is None:
                    if now - self.started_at[replica_id] > HEALTHY_AFTER_S:
                        backoff[replica_id] = first  # it recovered: forget past crashes
                    continue
                if replica_id not in restart_at:
                    if code == ExitCode.UNREACHABLE:
                        # Kafka is down (it could not start without it): waiting for Kafka is not a
                        # crash loop, however long the outage, and it starts again soon after Kafka is back.
                        self.log.warning(
                            "replica %s cannot reach Kafka; starting it again in %.0fs", replica_id, self.kafka_wait_s
                        )
                        restart_at[replica_id] = now + self.kafka_wait_s
                        continue
                    if self.crash_loops[replica_id].died(now, now - self.started_at[replica_id]):
                        self.give_up(replica_id, code)
                        continue
                    how = exit_description(code)
                    self.log.warning("replica %s died (%s); restarting in %.0fs", replica_id, how, backoff[replica_id])
                    restart_at[replica_id] = now + backoff[replica_id]
                    backoff[replica_id] = min(backoff[replica_id] * 2, most)
                elif now >= restart_at[replica_id]:
                    del restart_at[replica_id]
                    self.spawn(replica_id)
        if not self.children:
            self.log.error("every replica is crash-looping (%s); the supervisor stops", ", ".join(self.given_up))
        return self.shutdown()

    def give_up(self, replica_id: str, code: int) -> None:
        """One loud line: which replica, how it ends, where to read why."""
        loop = self.crash_loops[replica_id]
        log = self.replica_log(replica_id) if self.replica_log else None
        tail = last_line(log)
        self.log.error(
            "replica %s is crash-looping: died %d times in %.0fs (last: %s) without staying up %.0fs; "
            "not restarting it. Its log: %s%s",
            replica_id,
            len(loop.deaths),
            loop.span_s(),
            exit_description(code),
            loop.healthy_after_s,
            log if log else "the supervisor's stderr",
            f"; last line: {tail}" if tail else "",
        )
        del self.children[replica_id]
        self.given_up.append(replica_id)

    def shutdown(self) -> int:
        self.log.info("stopping %d replica(s)", len(self.children))
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for replica_id, child in self.children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.warning("replica %s did not stop in time; killing it", replica_id)
                child.kill()
                child.wait()
        self.log.info("all replicas stopped")
        return 1 if self.given_up else 0
