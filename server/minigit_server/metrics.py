"""A replica's metrics in the Prometheus text exposition format (version 0.0.4),
served at ``GET /metrics`` by a small HTTP server in a daemon thread.

The format is a few lines of text, so this is the standard library only: a
thread-safe ``Registry`` of counters, gauges and histograms that renders itself,
``ReplicaMetrics`` (the names a replica reports, in the words of its loops), and
``MetricsServer``. Format: https://prometheus.io/docs/instrumenting/exposition_formats/
"""

from __future__ import annotations

import errno
import itertools
import math
import re
import socket
import socketserver
import threading
from collections.abc import Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from minigit.errors import MinigitError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_PATH = "/metrics"

# Seconds. Requests range from a ping (a few ms) to a clone of a large repository
# or a read that waits for the log (the read barrier gives up after 120 s).
REQUEST_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def escape_label_value(value: str) -> str:
    """A label value between double quotes: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text: backslash and newline escaped (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Prometheus reads it: integers without a fraction, +Inf, -Inf, NaN."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def format_labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs) + "}"


class _Metric:
    """One metric family: its samples by label values, guarded by the registry's lock."""

    kind = ""

    def __init__(self, lock: threading.Lock, name: str, help_text: str, label_names: Sequence[str]) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"bad metric name {name!r}")
        for label in label_names:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"bad label name {label!r} for {name}")
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"repeated label name in {name}: {list(label_names)}")
        self._lock, self.name, self.help, self.label_names = lock, name, help_text, tuple(label_names)

    def _key(self, labels: Mapping[str, object]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {list(self.label_names)}, not {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.label_names)

    def _pairs(self, key: tuple[str, ...]) -> list[tuple[str, str]]:
        return list(zip(self.label_names, key, strict=True))

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def sample_lines(self) -> list[str]:  # called with the lock held
        raise NotImplementedError


class Counter(_Metric):
    """A count that only goes up (reset when the process restarts)."""

    kind = "counter"

    def __init__(self, lock: threading.Lock, name: str, help_text: str, label_names: Sequence[str]) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends with _total: {name!r}")
        super().__init__(lock, name, help_text, label_names)
        # an unlabelled counter reads 0 before its first event; a labelled one shows the label values seen
        self._values: dict[tuple[str, ...], float] = {} if label_names else {(): 0}

    def inc(self, amount: float = 1, /, **labels: object) -> None:
        if not amount >= 0:
            raise ValueError(f"{self.name} can only go up (got {amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def set_total(self, total: float, /, **labels: object) -> None:
        """The count as read from elsewhere (a table that only grows)."""
        if not total >= 0:
            raise ValueError(f"{self.name} cannot be negative (got {total})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = total

    def value(self, **labels: object) -> float:
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0)

    def sample_lines(self) -> list[str]:
        return [f"{self.name}{format_labels(self._pairs(k))} {format_value(v)}" for k, v in self._values.items()]


class Gauge(_Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def __init__(self, lock: threading.Lock, name: str, help_text: str, label_names: Sequence[str]) -> None:
        super().__init__(lock, name, help_text, label_names)
        self._values: dict[tuple[str, ...], float] = {}

    def set(self, value: float, /, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = value

    def value(self, **labels: object) -> float | None:
        key = self._key(labels)
        with self._lock:
            return self._values.get(key)

    def sample_lines(self) -> list[str]:
        return [f"{self.name}{format_labels(self._pairs(k))} {format_value(v)}" for k, v in self._values.items()]


class Histogram(_Metric):
    """Observations counted into cumulative buckets (``le``: less than or equal),
    with their sum and count."""

    kind = "histogram"

    def __init__(
        self, lock: threading.Lock, name: str, help_text: str, label_names: Sequence[str], buckets: Iterable[float]
    ) -> None:
        if "le" in label_names:
            raise ValueError(f"a histogram cannot have a label named le: {name}")
        super().__init__(lock, name, help_text, label_names)
        bounds = [float(b) for b in buckets]
        if not bounds or any(math.isnan(b) for b in bounds) or any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"{name}: buckets must be increasing numbers, got {bounds}")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        self._counts: dict[tuple[str, ...], list[int]] = {}  # per bucket, not cumulative
        self._sums: dict[tuple[str, ...], float] = {}

    def observe(self, value: float, /, **labels: object) -> None:
        if math.isnan(value):
            raise ValueError(f"{self.name}: cannot observe NaN")
        key = self._key(labels)
        index = next(i for i, bound in enumerate(self.bounds) if value <= bound)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * len(self.bounds))
            counts[index] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: object) -> int:
        key = self._key(labels)
        with self._lock:
            return sum(self._counts.get(key, ()))

    def sample_lines(self) -> list[str]:
        lines = []
        for key, counts in self._counts.items():
            pairs = self._pairs(key)
            cumulative = 0
            for bound, count in zip(self.bounds, counts, strict=True):
                cumulative += count
                lines.append(f"{self.name}_bucket{format_labels([*pairs, ('le', format_value(bound))])} {cumulative}")
            lines.append(f"{self.name}_sum{format_labels(pairs)} {format_value(self._sums[key])}")
            lines.append(f"{self.name}_count{format_labels(pairs)} {cumulative}")
        return lines


class Registry:
    """Metric families in the order they were made, rendered together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> _Metric:
        taken = {metric.name, *self._derived(metric)}
        with self._lock:
            clash = taken & {n for m in self._metrics.values() for n in (m.name, *self._derived(m))}
            if clash:
                raise ValueError(f"metric name {metric.name!r} is already taken")
            self._metrics[metric.name] = metric
        return metric

    @staticmethod
    def _derived(metric: _Metric) -> tuple[str, ...]:
        if isinstance(metric, Histogram):
            return tuple(f"{metric.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        return ()

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(self._lock, name, help_text, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(self._lock, name, help_text, labels))  # type: ignore[return-value]

    def histogram(
        self, name: str, help_text: str, labels: Sequence[str] = (), buckets: Iterable[float] = REQUEST_SECONDS_BUCKETS
    ) -> Histogram:
        return self._add(Histogram(self._lock, name, help_text, labels, buckets))  # type: ignore[return-value]

    def render(self) -> str:
        """Every family: HELP, TYPE, then its samples; one consistent snapshot."""
        lines: list[str] = []
        with self._lock:
            for metric in self._metrics.values():
                lines += metric.header()
                lines += metric.sample_lines()
        return "\n".join(lines) + "\n"


class ReplicaMetrics:
    """What one replica reports, fed by its loops: each request handled (serve),
    offsets, store and damage (heartbeat), scrub passes (scrub)."""

    def __init__(self, replica_id: str, started_s: float) -> None:
        self.registry = registry = Registry()
        registry.gauge("minigit_up", "1 while this replica runs (the label names it).", ["replica"]).set(
            1, replica=replica_id
        )
        registry.gauge("minigit_start_time_seconds", "When this replica process started, Unix time.").set(started_s)
        self.requests = registry.counter(
            "minigit_requests_total",
            "Requests handled, by action and outcome (the reply status, or why none was sent).",
            ["action", "outcome"],
        )
        self.request_seconds = registry.histogram(
            "minigit_request_seconds", "Time from reading a request to having handled it, by action.", ["action"]
        )
        self.serving = registry.gauge("minigit_serving_partitions", "repo-requests partitions this replica serves.")
        self.serving.set(0)
        self.applied = registry.gauge(
            "minigit_applied_offset",
            "Next repo-log offset this replica will apply, per log partition (equal to the log end once caught up).",
            ["partition"],
        )
        self.log_end = registry.gauge("minigit_log_end_offset", "End offset of repo-log, per partition.", ["partition"])
        self.lag = registry.gauge(
            "minigit_apply_lag", "Records of repo-log not yet applied by this replica, per partition.", ["partition"]
        )
        self.store_bytes = registry.gauge(
            "minigit_store_bytes", "Size of this replica's SQLite store on disk (with its -wal and -shm files)."
        )
        self.damaged = registry.counter(
            "minigit_objects_damaged_total",
            "Stored objects found failing their hash check, each object once, since the store was created.",
        )
        self.quarantined = registry.gauge(
            "minigit_objects_quarantined", "Stored objects quarantined now: damaged and not repaired, never served."
        )
        self.scrub_passes = registry.counter("minigit_scrub_passes_total", "Scrub passes finished over the store.")
        self.scrub_finished = registry.gauge(
            "minigit_scrub_last_finished_seconds", "When the last scrub pass finished, Unix time."
        )
        self.heartbeats_failed = registry.counter(
            "minigit_heartbeat_failures_total", "Heartbeats not sent (Kafka did not take them)."
        )

    def request_handled(self, action: str, outcome: str, seconds: float) -> None:
        self.requests.inc(action=action, outcome=outcome)
        self.request_seconds.observe(seconds, action=action)

    def serving_partitions(self, partitions: Sequence[int]) -> None:
        self.serving.set(len(partitions))

    def store_state(self, size_bytes: int, damaged_ever: int, quarantined: int) -> None:
        self.store_bytes.set(size_bytes)
        self.damaged.set_total(damaged_ever)
        self.quarantined.set(quarantined)

    def offsets(self, applied: Mapping[int, int], log_end: Mapping[int, int] | None = None) -> None:
        """Applied offsets (a partition not in it has applied nothing: 0), and, when
        the log end could be read, the log end and the lag behind it."""
        partitions = set(applied) | set(log_end or {})
        for partition in sorted(partitions):
            self.applied.set(applied.get(partition, 0), partition=partition)
        if log_end is not None:
            for partition in sorted(partitions):
                end = log_end.get(partition, 0)
                self.log_end.set(end, partition=partition)
                self.lag.set(max(0, end - applied.get(partition, 0)), partition=partition)

    def scrub_done(self, finished_s: float) -> None:
        self.scrub_passes.inc()
        self.scrub_finished.set(finished_s)


# A scrape is one short request: a connection idle longer than this is closed, and
# connections beyond this many at once are refused, so idle ones cannot pile up threads.
CONNECTION_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 16


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: socket.socket, client_address: object) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: refused, not queued
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def server_bind(self) -> None:
        # HTTPServer's own also looks up the host's full name: a DNS query that can hang a start
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """``GET /metrics`` (and HEAD) in the text format, 404 elsewhere, in a daemon thread."""

    def __init__(self, registry: Registry, host: str, port: int) -> None:
        handler = _handler_for(registry)
        server_class = _IPv6Server if ":" in host else _Server
        try:
            self.server = server_class((host.strip("[]"), port), handler)
        except OSError as error:
            raise _bind_error(host, port, error) from None
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


def _bind_error(host: str, port: int, error: OSError) -> MinigitError:
    where = f"{host}:{port}"
    if error.errno == errno.EADDRINUSE:
        return MinigitError(
            f"cannot serve metrics on {where}: the port is in use",
            hint="give another --metrics-port (MINIGIT_METRICS_PORT), or stop what listens there",
        )
    if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
        return MinigitError(
            f"cannot serve metrics on {where}: no such address on this machine",
            hint="give --metrics-host an address of this machine (127.0.0.1, or 0.0.0.0 for every interface)",
        )
    return MinigitError(
        f"cannot serve metrics on {where}: {error.strerror or error}",
        hint="ports below 1024 need privileges; give another --metrics-port",
    )


def check_ports_free(host: str, ports: Iterable[int]) -> None:
    """Raise the error a replica would meet on the first of ``ports`` it could not
    listen on, before a supervisor starts replicas that would each die of it."""
    for port in ports:
        MetricsServer(Registry(), host, port).close()


def _handler_for(registry: Registry) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        server_version = "minigit-metrics"
        timeout = CONNECTION_TIMEOUT_S  # of the connection's socket: an idle client is let go

        def do_GET(self) -> None:  # the name http.server calls
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _answer(self, send_body: bool) -> None:
            if urlsplit(self.path).path == METRICS_PATH:
                status, content_type, body = 200, CONTENT_TYPE, registry.render().encode()
            else:
                status, content_type, body = 404, "text/plain; charset=utf-8", b"not found: metrics are at /metrics\n"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds would drown the replica's log

    return MetricsHandler
