"""``minigit-server start --replicas N``: N replica processes, kept running.

Each replica is its own OS process (``minigit-server start --replica-id ID``),
exactly what an operator would run on separate hosts. The supervisor restarts
a replica that dies and stops them all on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from minigit.config import KafkaSettings
from minigit_server.replica import Replica, replica_log_path, setup_logging

STOP_GRACE_S = 30.0
RESTART_BACKOFF_S = (1.0, 30.0)
HEALTHY_AFTER_S = 60.0


def stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def run_replica(replica_id: str, settings: KafkaSettings, data_dir: Path, max_push_bytes: int) -> None:
    """One replica in the foreground, until SIGTERM/SIGINT."""
    log = setup_logging(replica_id, replica_log_path(data_dir, replica_id))
    replica = Replica(replica_id, settings, data_dir, max_push_bytes)
    stop_on_signals(replica.stop)
    log.info("started (pid %d), store %s", os.getpid(), replica.store.path)
    replica.run()
    log.info("stopped")


def replica_command(replica_id: str, options: list[str]) -> list[str]:
    return [sys.executable, "-m", "minigit_server", "start", "--replica-id", replica_id, *options]


class Supervisor:
    def __init__(
        self,
        replica_ids: list[str],
        command_for: Callable[[str], list[str]],
        log_file: Path,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.replica_ids = replica_ids
        self.command_for = command_for
        self.environment = {**os.environ, **(environment or {})}
        self.started_at: dict[str, float] = {}
        self.stop = threading.Event()
        self.children: dict[str, subprocess.Popen] = {}
        self.log = logging.getLogger("minigit.supervisor")
        log_file.parent.mkdir(parents=True, exist_ok=True)
        formatter = logging.Formatter("%(asctime)s supervisor %(levelname)s %(message)s")
        for handler in (logging.StreamHandler(), logging.FileHandler(log_file)):
            handler.setFormatter(formatter)
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
        stop_on_signals(self.stop)
        for replica_id in self.replica_ids:
            self.spawn(replica_id)
        backoff = dict.fromkeys(self.replica_ids, RESTART_BACKOFF_S[0])
        restart_at: dict[str, float] = {}
        while not self.stop.wait(0.5):
            now = time.monotonic()
            for replica_id, child in list(self.children.items()):
                code = child.poll()
                if code is None:
                    if now - self.started_at[replica_id] > HEALTHY_AFTER_S:
                        backoff[replica_id] = RESTART_BACKOFF_S[0]  # it recovered: forget past crashes
                    continue
                if replica_id not in restart_at:
                    how = f"signal {-code}" if code < 0 else f"exit code {code}"
                    self.log.warning("replica %s died (%s); restarting in %.0fs", replica_id, how, backoff[replica_id])
                    restart_at[replica_id] = now + backoff[replica_id]
                    backoff[replica_id] = min(backoff[replica_id] * 2, RESTART_BACKOFF_S[1])
                elif now >= restart_at[replica_id]:
                    del restart_at[replica_id]
                    self.spawn(replica_id)
        return self.shutdown()

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
        return 0
