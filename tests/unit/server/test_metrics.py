"""minigit_server.metrics: the Prometheus text format (0.0.4) as a scraper reads
it, the registry's rules and thread safety, a replica's metrics, the HTTP endpoint;
and how the replica, the supervisor and ``start`` hand them on (no Kafka)."""

from __future__ import annotations

import http.client
import logging
import math
import re
import socket
import threading
import time

import pytest
from typer.testing import CliRunner

from minigit.config import MetricsSettings
from minigit.errors import MinigitError, UsageError
from minigit_server import bus, cli, supervisor
from minigit_server.metrics import (
    CONTENT_TYPE,
    MetricsServer,
    Registry,
    ReplicaMetrics,
    check_ports_free,
    escape_help,
    escape_label_value,
    format_value,
)
from minigit_server.replica import Replica, store_bytes
from minigit_server.service import Handled, Unanswered

# -- a reader of the text format, strict enough to catch a malformed line

_SAMPLE = re.compile(r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def unescape(text: str) -> str:
    return re.sub(r"\\([\\\"n])", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def parse_labels(text: str) -> dict[str, str]:
    labels, position = {}, 0
    while position < len(text):
        match = _LABEL.match(text, position)
        assert match, f"bad labels at {text[position:]!r}"
        labels[match.group(1)] = unescape(match.group(2))
        position = match.end()
    return labels


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Samples by (name, labels); checks HELP/TYPE come before their samples."""
    assert text.endswith("\n")
    samples: dict[tuple[str, frozenset], float] = {}
    typed: dict[str, str] = {}
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in typed
            typed[name] = kind
            continue
        match = _SAMPLE.fullmatch(line)
        assert match, f"not a sample line: {line!r}"
        name = match.group("name")
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
        assert family in typed, f"{name} has no TYPE line before it"
        key = (name, frozenset(parse_labels(match.group("labels") or "").items()))
        assert key not in samples, f"sample repeated: {key}"
        samples[key] = float(match.group("value"))
    return samples


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


# -- the format's pieces


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("plain", "plain"),
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ("a\nb", "a\\nb"),
        ('\\"', '\\\\\\"'),
        ("\\n", "\\\\n"),  # a backslash then n is not a newline
        ("é ü {}=,", "é ü {}=,"),
        ("", ""),
    ],
)
def test_label_values_escape_backslash_quote_and_newline(value: str, escaped: str) -> None:
    assert escape_label_value(value) == escaped
    assert unescape(escaped) == value


def test_help_text_escapes_backslash_and_newline_but_not_quotes() -> None:
    assert escape_help('say "hi"\\\nnext') == 'say "hi"\\\\\\nnext'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (7, "7"),
        (-3, "-3"),
        (2.0, "2"),
        (0.25, "0.25"),
        (1e-9, "1e-09"),
        (2.0**60, repr(2.0**60)),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_values_are_written_as_prometheus_reads_them(value: float, text: str) -> None:
    assert format_value(value) == text
    if not math.isnan(value):
        assert float(text.replace("Inf", "inf")) == value


# -- counters, gauges, histograms


def test_an_unlabelled_counter_reads_zero_before_its_first_event() -> None:
    registry = Registry()
    served = registry.counter("served_total", "Served.")
    assert parse(registry.render()) == {("served_total", frozenset()): 0}
    served.inc()
    served.inc(2.5)
    assert sample(parse(registry.render()), "served_total") == 3.5
    assert registry.render().startswith("# HELP served_total Served.\n# TYPE served_total counter\n")


def test_a_labelled_counter_shows_each_label_set_seen() -> None:
    registry = Registry()
    requests = registry.counter("requests_total", "Requests.", ["action", "outcome"])
    assert parse(registry.render()) == {}
    requests.inc(action="push", outcome="accepted")
    requests.inc(action="push", outcome="accepted")
    requests.inc(action="pull", outcome="ok")
    samples = parse(registry.render())
    assert sample(samples, "requests_total", action="push", outcome="accepted") == 2
    assert sample(samples, "requests_total", action="pull", outcome="ok") == 1
    assert len(samples) == 2
    assert requests.value(action="push", outcome="accepted") == 2
    assert requests.value(action="init", outcome="ok") == 0


def test_hostile_label_values_come_back_exactly() -> None:
    registry = Registry()
    requests = registry.counter("requests_total", "Requests.", ["action"])
    hostile = ['"', "\\", "\n", 'x"} 99\nfake_total 1', "\\n", "\u2028", "é"]
    for value in hostile:
        requests.inc(action=value)
    samples = parse(registry.render())
    assert {dict(labels)["action"] for _, labels in samples} == set(hostile)
    assert all(value == 1 for value in samples.values())


def test_label_values_are_text_of_what_was_given() -> None:
    registry = Registry()
    offsets = registry.gauge("offset", "Offsets.", ["partition"])
    offsets.set(5, partition=3)
    assert sample(parse(registry.render()), "offset", partition="3") == 5


def test_a_counter_only_goes_up_and_is_named_total() -> None:
    registry = Registry()
    done = registry.counter("done_total", "Done.")
    for wrong in (-1, math.nan):
        with pytest.raises(ValueError, match="only go up"):
            done.inc(wrong)
    with pytest.raises(ValueError, match="_total"):
        registry.counter("done", "Done.")
    with pytest.raises(ValueError, match="negative"):
        done.set_total(-1)
    done.set_total(12)
    assert done.value() == 12


@pytest.mark.parametrize("labels", [{}, {"action": "push"}, {"action": "push", "outcome": "ok", "extra": "x"}])
def test_a_metric_takes_exactly_its_labels(labels: dict) -> None:
    registry = Registry()
    requests = registry.counter("requests_total", "Requests.", ["action", "outcome"])
    with pytest.raises(ValueError, match="takes labels"):
        requests.inc(**labels)


def test_a_gauge_goes_up_and_down_and_is_absent_until_set() -> None:
    registry = Registry()
    lag = registry.gauge("lag", "Lag.", ["partition"])
    size = registry.gauge("size", "Size.")
    assert parse(registry.render()) == {}
    lag.set(5, partition=0)
    lag.set(2, partition=0)
    size.set(-1.5)
    samples = parse(registry.render())
    assert sample(samples, "lag", partition="0") == 2
    assert sample(samples, "size") == -1.5
    assert lag.value(partition=1) is None
    assert "# TYPE lag gauge\n" in registry.render()


def test_histogram_buckets_are_cumulative_and_le_is_inclusive() -> None:
    registry = Registry()
    seconds = registry.histogram("took_seconds", "Took.", ["action"], buckets=[0.1, 1, 10])
    for value in (0.05, 0.1, 0.5, 1, 3, 100):
        seconds.observe(value, action="pull")
    samples = parse(registry.render())
    buckets = {le: sample(samples, "took_seconds_bucket", action="pull", le=le) for le in ("0.1", "1", "10", "+Inf")}
    assert buckets == {"0.1": 2, "1": 4, "10": 5, "+Inf": 6}
    assert sample(samples, "took_seconds_count", action="pull") == 6
    assert sample(samples, "took_seconds_sum", action="pull") == pytest.approx(104.65)
    assert seconds.count(action="pull") == 6
    assert "# TYPE took_seconds histogram\n" in registry.render()
    lines = [line for line in registry.render().splitlines() if line.startswith("took_seconds")]
    # buckets in increasing order, then sum, then count: the order scrapers expect
    assert [line.split(" ")[0] for line in lines][-2:] == [
        'took_seconds_sum{action="pull"}',
        'took_seconds_count{action="pull"}',
    ]
    assert [line for line in lines if "_bucket" in line][-1].startswith('took_seconds_bucket{action="pull",le="+Inf"}')


def test_histogram_label_sets_are_counted_apart_and_infinity_is_a_bucket() -> None:
    registry = Registry()
    seconds = registry.histogram("took_seconds", "Took.", ["action"], buckets=[1, math.inf])
    seconds.observe(math.inf, action="a")
    seconds.observe(0.5, action="b")
    samples = parse(registry.render())
    assert sample(samples, "took_seconds_bucket", action="a", le="1") == 0
    assert sample(samples, "took_seconds_bucket", action="a", le="+Inf") == 1
    assert sample(samples, "took_seconds_bucket", action="b", le="1") == 1
    assert len([key for key in samples if key[0] == "took_seconds_bucket"]) == 4  # +Inf not doubled


@pytest.mark.parametrize("buckets", [[], [1, 1], [2, 1], [math.nan]])
def test_histogram_buckets_must_increase(buckets: list) -> None:
    with pytest.raises(ValueError, match="increasing"):
        Registry().histogram("took_seconds", "Took.", buckets=buckets)


def test_histogram_refuses_an_le_label_and_nan() -> None:
    registry = Registry()
    with pytest.raises(ValueError, match="le"):
        registry.histogram("a_seconds", "A.", ["le"])
    seconds = registry.histogram("b_seconds", "B.")
    with pytest.raises(ValueError, match="NaN"):
        seconds.observe(math.nan)


@pytest.mark.parametrize("name", ["", "1abc", "has space", "dash-ed", "é"])
def test_metric_names_follow_the_format(name: str) -> None:
    with pytest.raises(ValueError, match="bad metric name"):
        Registry().gauge(name, "x")


@pytest.mark.parametrize("label", ["", "1a", "a-b", "__reserved", "a:b"])
def test_label_names_follow_the_format(label: str) -> None:
    with pytest.raises(ValueError, match="bad label name"):
        Registry().gauge("g", "x", [label])


def test_a_label_name_is_given_once() -> None:
    with pytest.raises(ValueError, match="repeated"):
        Registry().gauge("g", "x", ["a", "a"])


def test_a_name_is_taken_once_including_a_histograms_series() -> None:
    registry = Registry()
    registry.gauge("g", "x")
    with pytest.raises(ValueError, match="taken"):
        registry.gauge("g", "y")
    registry.counter("c_total", "x")
    with pytest.raises(ValueError, match="taken"):
        registry.counter("c_total", "x")
    registry.histogram("h_seconds", "x")
    with pytest.raises(ValueError, match="taken"):
        registry.gauge("h_seconds_count", "x")
    registry.gauge("other_sum", "x")
    with pytest.raises(ValueError, match="taken"):
        registry.histogram("other", "x")
    registry.gauge("g_sum", "a gauge named like a series of a histogram that does not exist")


def test_help_text_with_a_newline_stays_on_one_line() -> None:
    registry = Registry()
    registry.gauge("g", "first\nsecond \\ third").set(1)
    assert registry.render().splitlines()[0] == "# HELP g first\\nsecond \\\\ third"
    assert sample(parse(registry.render()), "g") == 1


def test_families_render_in_the_order_they_were_made() -> None:
    registry = Registry()
    for name in ("zeta", "alpha", "mid"):
        registry.gauge(name, name).set(1)
    types = [line.split(" ")[2] for line in registry.render().splitlines() if line.startswith("# TYPE")]
    assert types == ["zeta", "alpha", "mid"]


def test_concurrent_updates_lose_nothing_and_renders_stay_whole() -> None:
    registry = Registry()
    requests = registry.counter("requests_total", "R.", ["action"])
    seconds = registry.histogram("took_seconds", "T.", ["action"], buckets=[0.5])
    threads_n, each = 8, 2000
    rendered: list[str] = []
    done = threading.Event()

    def work(n: int) -> None:
        for i in range(each):
            requests.inc(action=f"a{n % 2}")
            seconds.observe(i % 2, action="x")

    def scrape() -> None:
        while not done.is_set():
            rendered.append(registry.render())

    scraper = threading.Thread(target=scrape)
    scraper.start()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    scraper.join()
    samples = parse(registry.render())
    assert sample(samples, "requests_total", action="a0") + sample(samples, "requests_total", action="a1") == 16000
    assert sample(samples, "took_seconds_count", action="x") == threads_n * each
    assert sample(samples, "took_seconds_bucket", action="x", le="0.5") == threads_n * each / 2
    for text in rendered:  # every snapshot is consistent: count equals the +Inf bucket
        found = parse(text)
        if ("took_seconds_count", frozenset({("action", "x")})) in found:
            assert sample(found, "took_seconds_count", action="x") == sample(
                found, "took_seconds_bucket", action="x", le="+Inf"
            )


# -- a replica's metrics


def test_replica_metrics_start_up_with_their_identity_and_nothing_served() -> None:
    metrics = ReplicaMetrics("east-1", 1700000000.5)
    samples = parse(metrics.registry.render())
    assert sample(samples, "minigit_up", replica="east-1") == 1
    assert sample(samples, "minigit_start_time_seconds") == 1700000000.5
    assert sample(samples, "minigit_serving_partitions") == 0
    for name in ("minigit_objects_damaged_total", "minigit_scrub_passes_total", "minigit_heartbeat_failures_total"):
        assert sample(samples, name) == 0
    text = metrics.registry.render()
    for name, kind in [
        ("minigit_requests_total", "counter"),
        ("minigit_request_seconds", "histogram"),
        ("minigit_applied_offset", "gauge"),
        ("minigit_log_end_offset", "gauge"),
        ("minigit_apply_lag", "gauge"),
        ("minigit_store_bytes", "gauge"),
        ("minigit_objects_quarantined", "gauge"),
    ]:
        assert f"# TYPE {name} {kind}\n" in text


def test_requests_count_by_action_and_outcome_and_time_by_action() -> None:
    metrics = ReplicaMetrics("1", 0)
    metrics.request_handled("push", "accepted", 0.02)
    metrics.request_handled("push", "rejected", 0.2)
    metrics.request_handled("pull", "ok", 3.0)
    samples = parse(metrics.registry.render())
    assert sample(samples, "minigit_requests_total", action="push", outcome="accepted") == 1
    assert sample(samples, "minigit_requests_total", action="push", outcome="rejected") == 1
    assert sample(samples, "minigit_request_seconds_count", action="push") == 2
    assert sample(samples, "minigit_request_seconds_sum", action="push") == pytest.approx(0.22)
    assert sample(samples, "minigit_request_seconds_bucket", action="push", le="0.025") == 1
    assert sample(samples, "minigit_request_seconds_bucket", action="pull", le="2.5") == 0
    assert sample(samples, "minigit_request_seconds_bucket", action="pull", le="5") == 1


def test_offsets_lag_and_partitions_not_applied_yet() -> None:
    metrics = ReplicaMetrics("1", 0)
    metrics.offsets({0: 5, 2: 9}, {0: 7, 1: 4, 2: 9})
    samples = parse(metrics.registry.render())
    assert [sample(samples, "minigit_applied_offset", partition=str(n)) for n in range(3)] == [5, 0, 9]
    assert [sample(samples, "minigit_log_end_offset", partition=str(n)) for n in range(3)] == [7, 4, 9]
    assert [sample(samples, "minigit_apply_lag", partition=str(n)) for n in range(3)] == [2, 4, 0]


def test_applied_offsets_move_without_a_log_end_and_lag_is_never_negative() -> None:
    metrics = ReplicaMetrics("1", 0)
    metrics.offsets({0: 5}, {0: 7})
    metrics.offsets({0: 8})  # Kafka did not say where the log ends: the last known end stays
    samples = parse(metrics.registry.render())
    assert sample(samples, "minigit_applied_offset", partition="0") == 8
    assert sample(samples, "minigit_log_end_offset", partition="0") == 7
    metrics.offsets({0: 9}, {0: 8})  # applied read just after an end read earlier
    assert sample(parse(metrics.registry.render()), "minigit_apply_lag", partition="0") == 0


def test_store_damage_and_scrub() -> None:
    metrics = ReplicaMetrics("1", 0)
    metrics.store_state(4096, 3, 1)
    metrics.scrub_done(1700000123.0)
    metrics.scrub_done(1700000456.0)
    metrics.serving_partitions([0, 4])
    samples = parse(metrics.registry.render())
    assert sample(samples, "minigit_store_bytes") == 4096
    assert sample(samples, "minigit_objects_damaged_total") == 3
    assert sample(samples, "minigit_objects_quarantined") == 1
    assert sample(samples, "minigit_scrub_passes_total") == 2
    assert sample(samples, "minigit_scrub_last_finished_seconds") == 1700000456.0
    assert sample(samples, "minigit_serving_partitions") == 2


def test_store_bytes_counts_the_database_and_its_wal(tmp_path) -> None:
    path = tmp_path / "store.sqlite"
    assert store_bytes(path) == 0
    path.write_bytes(b"x" * 100)
    (tmp_path / "store.sqlite-wal").write_bytes(b"y" * 20)
    assert store_bytes(path) == 120


# -- the replica feeds them (serve loop and scrub hooks), built without Kafka


class Recorded(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def bare_replica(metrics: ReplicaMetrics | None) -> tuple[Replica, Recorded]:
    replica = object.__new__(Replica)
    replica.metrics = metrics
    replica.log = logging.getLogger(f"test.metrics.{id(replica)}")
    replica.log.propagate = False
    recorded = Recorded()
    replica.log.addHandler(recorded)
    replica.log.setLevel(logging.INFO)
    return replica, recorded


def test_each_request_logged_is_counted_with_its_fields() -> None:
    metrics = ReplicaMetrics("1", 0)
    replica, recorded = bare_replica(metrics)
    replica.log_request(Handled("ana", "push", "lab", "rejected", "base v1, head v2"), 2, 0.031)
    replica.log_request(Handled("?", "?", "?", Unanswered.FAILED, "see the traceback above"), 0, 0.001)
    samples = parse(metrics.registry.render())
    assert sample(samples, "minigit_requests_total", action="push", outcome="rejected") == 1
    assert sample(samples, "minigit_requests_total", action="?", outcome="failed") == 1
    assert sample(samples, "minigit_request_seconds_count", action="push") == 1
    first = recorded.records[0]
    assert first.getMessage() == "ana push lab -> rejected (base v1, head v2) [partition 2, 31 ms]"
    fields = {name: getattr(first, name) for name in ("user", "action", "repo", "status", "partition", "ms", "detail")}
    assert fields == {
        "user": "ana",
        "action": "push",
        "repo": "lab",
        "status": "rejected",
        "partition": 2,
        "ms": 31.0,
        "detail": "base v1, head v2",
    }
    assert type(recorded.records[1].status) is str and recorded.records[1].status == "failed"


def test_without_metrics_a_request_is_only_logged() -> None:
    replica, recorded = bare_replica(None)
    replica.log_request(Handled("ana", "pull", "lab", "ok", ""), 1, 0.002)
    assert recorded.records[0].getMessage() == "ana pull lab -> ok [partition 1, 2 ms]"
    assert not hasattr(recorded.records[0], "detail")


def test_the_serving_partitions_follow_each_assignment() -> None:
    metrics = ReplicaMetrics("1", 0)
    replica, _ = bare_replica(metrics)
    replica.on_assignment([1, 3, 5])
    assert metrics.serving.value() == 3
    replica.on_assignment([])
    assert metrics.serving.value() == 0


# -- the endpoint


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


@pytest.fixture
def served() -> tuple[ReplicaMetrics, MetricsServer]:
    metrics = ReplicaMetrics("1", 0)
    server = MetricsServer(metrics.registry, "127.0.0.1", 0).start()
    yield metrics, server
    server.close()


def test_get_metrics_serves_the_text_format(served) -> None:
    metrics, server = served
    metrics.request_handled("push", "accepted", 0.01)
    status, content_type, body = get(server.port, "/metrics")
    assert status == 200 and content_type == CONTENT_TYPE
    assert sample(parse(body), "minigit_requests_total", action="push", outcome="accepted") == 1
    assert get(server.port, "/metrics?name[]=x")[0] == 200


def test_head_answers_without_a_body(served) -> None:
    _, server = served
    status, content_type, body = get(server.port, "/metrics", "HEAD")
    assert (status, content_type, body) == (200, CONTENT_TYPE, "")


@pytest.mark.parametrize("path", ["/", "/metrics/", "/metricsx", "/favicon.ico", "/../metrics"])
def test_any_other_path_is_not_found(served, path: str) -> None:
    _, server = served
    status, _, body = get(server.port, path)
    assert status == 404 and "/metrics" in body


def test_idle_connections_are_let_go_and_cannot_pile_up_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections that never send a request each held a thread forever (319
    threads in 40 s): now they are closed after a timeout, and at most
    MAX_CONNECTIONS are served at once."""
    from minigit_server import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "CONNECTION_TIMEOUT_S", 0.5)
    server = MetricsServer(ReplicaMetrics("1", 0).registry, "127.0.0.1", 0).start()
    idle = []
    try:
        before = threading.active_count()
        for _ in range(metrics_module.MAX_CONNECTIONS * 3):
            idle.append(socket.create_connection(("127.0.0.1", server.port)))
        time.sleep(0.2)
        assert threading.active_count() - before <= metrics_module.MAX_CONNECTIONS
        time.sleep(1.0)  # past the timeout: every idle connection was closed by the server
        assert all(connection.recv(1) == b"" for connection in idle[: metrics_module.MAX_CONNECTIONS])
        assert get(server.port, "/metrics")[0] == 200
    finally:
        for connection in idle:
            connection.close()
        server.close()


def test_other_methods_are_not_served(served) -> None:
    _, server = served
    assert get(server.port, "/metrics", "POST")[0] == 501


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MinigitError, match=f"cannot serve metrics on 127.0.0.1:{port}: the port is in use") as e:
            MetricsServer(Registry(), "127.0.0.1", port)
        assert "--metrics-port" in e.value.hint
        with pytest.raises(MinigitError, match="in use"):
            check_ports_free("127.0.0.1", [port])


def test_an_address_not_of_this_machine_is_a_clear_error() -> None:
    with pytest.raises(MinigitError, match="no such address on this machine"):
        MetricsServer(Registry(), "192.0.2.1", 0)  # TEST-NET-1: never a local address


def test_a_closed_server_frees_its_port_and_free_ports_pass_the_check() -> None:
    server = MetricsServer(Registry(), "127.0.0.1", 0).start()
    port = server.port
    server.close()
    check_ports_free("127.0.0.1", [port])
    again = MetricsServer(Registry(), "127.0.0.1", port).start()
    try:
        assert get(port, "/metrics")[0] == 200
    finally:
        again.close()


def test_a_server_never_started_closes() -> None:
    MetricsServer(Registry(), "127.0.0.1", 0).close()


# -- the settings, and how start hands them to the replicas


def test_metrics_settings_give_replica_k_the_port_plus_k_minus_1() -> None:
    settings = MetricsSettings.parse(" 0.0.0.0 ", 9100, replicas=3)
    assert settings == MetricsSettings("0.0.0.0", 9100)
    assert [settings.for_replica(k).port for k in (1, 2, 3)] == [9100, 9101, 9102]
    assert settings.for_replica(2).flags() == ["--metrics-host", "0.0.0.0", "--metrics-port", "9101"]
    off = MetricsSettings.parse("127.0.0.1", None, replicas=5)
    assert off.for_replica(3) == off and off.flags() == []


@pytest.mark.parametrize(
    ("host", "port", "replicas", "message"),
    [
        ("127.0.0.1", 0, 1, "from 1 to 65535"),
        ("127.0.0.1", 65536, 1, "from 1 to 65535"),
        ("127.0.0.1", 65534, 3, "ports 65534-65536"),
        ("  ", 9100, 1, "--metrics-host"),
    ],
)
def test_metrics_settings_refuse_ports_out_of_range(host: str, port: int, replicas: int, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        MetricsSettings.parse(host, port, replicas)


def test_the_supervisor_gives_each_replica_its_own_port() -> None:
    settings = MetricsSettings("127.0.0.1", 9100)
    command = supervisor.replica_command("3", ["--data-dir", "d"], settings)
    assert command[command.index("--replica-id") :] == [
        "--replica-id",
        "3",
        "--data-dir",
        "d",
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        "9102",
    ]
    assert "--metrics-port" not in supervisor.replica_command("3", ["--data-dir", "d"])


def listening_after_a_free_port() -> socket.socket:
    """A socket listening on port P + 1 where P is free (retried: others use ports too)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        taken = socket.socket()
        try:
            taken.bind(("127.0.0.1", free + 1))
        except OSError:
            taken.close()
            continue
        taken.listen()
        return taken
    raise AssertionError("no two adjacent ports found")


def test_start_checks_every_replicas_port_before_creating_anything(monkeypatch) -> None:
    created = []
    monkeypatch.setattr(bus, "ensure_topics", lambda *args, **kwargs: created.append(args) or [])
    with listening_after_a_free_port() as taken:
        port = taken.getsockname()[1]
        done = CliRunner().invoke(cli.app, ["start", "--replicas", "2", "--metrics-port", str(port - 1)])
    assert done.exit_code == 1, done.output
    assert f"127.0.0.1:{port}: the port is in use" in done.output
    assert created == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics-port", "65535", "--replicas", "2"], "past 65535"),
        (["--replica-id", "1", "--metrics-port", "70000"], "from 1 to 65535"),
    ],
)
def test_start_refuses_bad_metrics_flags_before_creating_topics(monkeypatch, args: list[str], message: str) -> None:
    created = []
    monkeypatch.setattr(bus, "ensure_topics", lambda *a, **k: created.append(a) or [])
    done = CliRunner().invoke(cli.app, ["start", *args])
    assert done.exit_code == 2, done.output
    assert message in done.output
    assert created == []


def test_the_metrics_port_may_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setattr(bus, "ensure_topics", lambda *a, **k: [])
    done = CliRunner().invoke(cli.app, ["start", "--replicas", "2"], env={"MINIGIT_METRICS_PORT": "65535"})
    assert done.exit_code == 2 and "past 65535" in done.output


def test_a_scrape_does_not_wait_for_a_slow_one(served) -> None:
    """Each connection has its own thread: an idle client does not block the next scrape."""
    _, server = served
    idle = socket.create_connection(("127.0.0.1", server.port))
    try:
        started = time.monotonic()
        assert get(server.port, "/metrics")[0] == 200
        assert time.monotonic() - started < 5
    finally:
        idle.close()
