"""minigit-server: thin Typer commands over the server's core modules."""

from __future__ import annotations

import enum
import functools
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from minigit import __version__, cli_values
from minigit.config import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_LOG_BACKUPS,
    DEFAULT_LOG_MAX_BYTES,
    DEFAULT_MAX_PUSH_BYTES,
    DEFAULT_METRICS_HOST,
    DEFAULT_REQUESTS_RETENTION_MS,
    DEFAULT_RESPONSES_RETENTION_MS,
    DEFAULT_RETENTION_BYTES,
    MAX_TIMEOUT_S,
    MIN_TIMEOUT_S,
    KafkaSettings,
    LogSettings,
    MetricsSettings,
    ServerFlags,
    TopicRetention,
)
from minigit.console import err, exit_on_error, out, shown, version_option
from minigit.errors import ExitCode, MinigitError, ServerUnreachable
from minigit_server.devkafka.cli import kafka_app

# The wire format, the health computations and the service are imported by the
# commands that use them, not here: `minigit-server --version` and `--help` need none.
if TYPE_CHECKING:
    from minigit_server import health

# Typer checks option values with pydantic (90 ms to import): plain values are checked without it.
cli_values.install()

app = typer.Typer(
    name="minigit-server",
    help="Run the replicated minigit repository service and a local Apache Kafka.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(kafka_app, name="kafka")


def default_data_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "minigit" / "server"


Bootstrap = Annotated[
    str, typer.Option("--bootstrap", "-b", envvar="MINIGIT_BOOTSTRAP", help="Kafka bootstrap servers, host:port[,...].")
]
Namespace = Annotated[
    str,
    typer.Option("--namespace", envvar="MINIGIT_NAMESPACE", help="Prefix of every topic and group name."),
]
KafkaOption = Annotated[
    list[str] | None,
    typer.Option(
        "--kafka-option",
        help="kafka-python security setting NAME=VALUE (e.g. security_protocol=SASL_SSL); "
        "also read from MINIGIT_KAFKA_<NAME>.",
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="MINIGIT_DATA_DIR",
        help="Where replicas keep their stores and logs.",
        show_default="$XDG_STATE_HOME/minigit/server or ~/.local/state/minigit/server",
    ),
]

ServerKeyPath = Annotated[
    Path | None,
    typer.Option(
        "--server-key",
        envvar="MINIGIT_SERVER_KEY",
        help="The service's Ed25519 key file (created if missing); every replica of a service needs the same.",
        show_default="DATA_DIR/keys/server.key",
    ),
]


class Registration(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        envvar="MINIGIT_METRICS_PORT",
        help="Serve Prometheus metrics at http://HOST:PORT/metrics; with --replicas N, replica k uses PORT+k-1.",
        show_default="off",
    ),
]
MetricsHost = Annotated[
    str,
    typer.Option("--metrics-host", envvar="MINIGIT_METRICS_HOST", help="Address the metrics endpoint listens on."),
]
LogFormat = Annotated[
    str,
    typer.Option("--log-format", envvar="MINIGIT_LOG_FORMAT", help="Log lines as text, or json (one object a line)."),
]
LogMaxBytes = Annotated[
    int,
    typer.Option("--log-max-bytes", envvar="MINIGIT_LOG_MAX_BYTES", help="Rotate a log file at this size (0: never)."),
]
LogBackups = Annotated[
    int,
    typer.Option("--log-backups", envvar="MINIGIT_LOG_BACKUPS", help="Rotated log files kept (FILE.1 … FILE.N)."),
]


def plain(value: str) -> str:
    """A value from the wire (heartbeats, replies) or the command line, printed as
    text: rich never reads it as markup, and control characters show escaped."""
    return escape(shown(value))


def kafka_settings(bootstrap: str, namespace: str, kafka_option: list[str] | None) -> KafkaSettings:
    return ServerFlags.parse(bootstrap, namespace, kafka_option).resolve()


@app.command()
def start(
    replicas: Annotated[int, typer.Option("--replicas", "-n", min=1, help="Number of replica processes to run.")] = 3,
    replica_id: Annotated[
        str | None,
        typer.Option("--replica-id", help="Run only this one replica (to spread replicas over hosts)."),
    ] = None,
    data_dir: DataDir = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    namespace: Namespace = "",
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of each topic (created if missing).")] = 6,
    replication_factor: Annotated[int, typer.Option(min=1, help="Replication factor of created topics.")] = 1,
    min_insync_replicas: Annotated[
        int | None, typer.Option(min=1, help="min.insync.replicas of the request and log topics.")
    ] = None,
    max_push_bytes: Annotated[
        int,
        typer.Option(
            envvar="MINIGIT_MAX_PUSH_BYTES",
            min=1,
            help="Most bytes (as uploaded, compressed) one push or init may send; more is refused as too large.",
        ),
    ] = DEFAULT_MAX_PUSH_BYTES,
    registration: Annotated[
        Registration,
        typer.Option(
            envvar="MINIGIT_REGISTRATION",
            help="open: anyone may claim a free user name with 'minigit auth register'; "
            "closed: only 'minigit-server users add' registers users. Give every replica the same.",
        ),
    ] = Registration.OPEN,
    server_key: ServerKeyPath = None,
    kafka_option: KafkaOption = None,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = DEFAULT_METRICS_HOST,
    log_format: LogFormat = "text",
    log_max_bytes: LogMaxBytes = DEFAULT_LOG_MAX_BYTES,
    log_backups: LogBackups = DEFAULT_LOG_BACKUPS,
    requests_retention_ms: Annotated[
        int,
        typer.Option(
            envvar="MINIGIT_REQUESTS_RETENTION_MS",
            help="How long Kafka keeps repo-requests (ms; set on the topic, also when it exists).",
        ),
    ] = DEFAULT_REQUESTS_RETENTION_MS,
    responses_retention_ms: Annotated[
        int,
        typer.Option(
            envvar="MINIGIT_RESPONSES_RETENTION_MS",
            help="How long Kafka keeps repo-responses (ms; set on the topic, also when it exists).",
        ),
    ] = DEFAULT_RESPONSES_RETENTION_MS,
    transient_retention_bytes: Annotated[
        int,
        typer.Option(
            envvar="MINIGIT_TRANSIENT_RETENTION_BYTES",
            help="Most bytes Kafka keeps per partition of repo-requests and of repo-responses "
            "(repo-log keeps everything).",
        ),
    ] = DEFAULT_RETENTION_BYTES,
) -> None:
    """Start the replicated service in the foreground (Ctrl-C or SIGTERM stops every replica)."""
    from minigit import identity
    from minigit import protocol as p
    from minigit_server import bus, metrics, supervisor
    from minigit_server.server_key import load_or_create_server_key

    data_dir = data_dir or default_data_dir()
    with exit_on_error():
        if replica_id is not None:
            p.check_name("replica", replica_id)  # before anything is created on the cluster
        logs = LogSettings.parse(log_format, log_max_bytes, log_backups)
        count = 1 if replica_id is not None else replicas
        served = MetricsSettings.parse(metrics_host, metrics_port, count)
        if served.port is not None:  # each replica listens on its own: a port in use fails now, not in a crash loop
            metrics.check_ports_free(served.host, range(served.port, served.port + count))
        retention = TopicRetention.parse(
            requests_retention_ms, responses_retention_ms, transient_retention_bytes, max_push_bytes
        )
        settings = kafka_settings(bootstrap, namespace, kafka_option)
        created = bus.ensure_topics(
            settings,
            partitions,
            replication_factor,
            min_insync_replicas,
            retention,
            warn=lambda text: err.print(f"warning: {plain(text)}"),
        )
        if created:
            err.print(f"created topics: {plain(', '.join(created))}")
        is_open = registration == Registration.OPEN
        if replica_id is not None:
            supervisor.run_replica(replica_id, settings, data_dir, max_push_bytes, logs, served, server_key, is_open)
            return
        # made once here, not by three replicas at once; each replica loads it
        key, key_created = load_or_create_server_key(data_dir, server_key)
        if key_created:
            err.print(f"created the service's key: {identity.fingerprint(key.public_key())}")
        passed = ["--data-dir", str(data_dir), "--bootstrap", bootstrap, "--namespace", namespace]
        passed += ["--max-push-bytes", str(max_push_bytes), "--registration", str(registration), *logs.flags()]
        passed += retention.flags()  # each replica sets the topics' retention again as it starts: the same
        if server_key is not None:
            passed += ["--server-key", str(server_key)]
        err.print(f"starting {replicas} replicas on {plain(bootstrap)}; data and logs in {plain(str(data_dir))}")
        ids = [str(n) for n in range(1, replicas + 1)]
        command = functools.partial(supervisor.replica_command, options=passed, metrics=served)
        # Security settings (passwords) reach the replicas by environment, not on their command lines.
        chief = supervisor.Supervisor(
            ids,
            command,
            data_dir / "server.log",
            settings.security_environment(),
            replica_log=functools.partial(supervisor.replica_log_path, data_dir),
            logs=logs,
        )
        raise typer.Exit(chief.run())


@app.command()
def ping(
    repo: Annotated[str, typer.Option("--repo", help="Ask the replica serving this repository's partition.")] = "ping",
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    namespace: Namespace = "",
    timeout: Annotated[
        float, typer.Option(min=MIN_TIMEOUT_S, max=MAX_TIMEOUT_S, help="Seconds to wait for an answer.")
    ] = 30.0,
    kafka_option: KafkaOption = None,
) -> None:
    """Send one request through Kafka and print which replica answered, and how fast."""
    from minigit import protocol as p
    from minigit.kafka_clients import INFRASTRUCTURE_ERRORS
    from minigit_server.bus import Bus

    with exit_on_error():
        settings = kafka_settings(bootstrap, namespace, kafka_option)
        p.check_name("repository", repo)
        started = time.monotonic()
        bus = Bus(settings, client_id="minigit-server-ping", bootstrap_timeout_s=min(timeout, 10.0))
        try:
            request = p.PingRequest(
                request_id=p.new_request_id(),
                repo=repo,
                user="minigit-server",
                reply_partition=random.randrange(bus.partition_count(bus.topics.responses, wait_s=0)),
                timeout_ms=int(timeout * 1000),
            )
            connected = time.monotonic()
            reply = bus.ask(request, timeout)
        except INFRASTRUCTURE_ERRORS as error:
            raise settings.unreachable(error) from None
        finally:
            bus.close()
        if reply is None:
            raise ServerUnreachable(
                f"no answer from the minigit service within {timeout:g}s",
                hint="check that 'minigit-server start' is running, or raise --timeout",
            )
        done = time.monotonic()
        if reply.status != p.Status.OK:
            detail = f": {reply.message}" if reply.message else ""
            raise MinigitError(
                f"replica {reply.replica} answered {reply.status}{detail}",
                hint=f"the replica's log says why: <data-dir>/replica-{reply.replica}/replica.log",
            )
        out.print(
            f"{plain(reply.message)} (round trip {1000 * (done - connected):.0f} ms, "
            f"connect {1000 * (connected - started):.0f} ms)"
        )


Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON (for scripts).")]
# Beyond this many repositories, the text output lists only those that need a look.
LISTED_IN_FULL = 100
ListAll = Annotated[
    bool,
    typer.Option(
        "--all", help=f"List every repository (beyond {LISTED_IN_FULL}, only those needing a look are listed)."
    ),
]


# When read_cluster last had every record read (before parsing them): how old a
# heartbeat is is measured from there, so that parsing the reports of thousands of
# repositories on a loaded machine does not make live replicas look silent.
READ_AT_MS: list[int | None] = [None]


def read_time_ms() -> int:
    """The time of the last read_cluster's reading (now, if it did not say), once."""
    read, READ_AT_MS[0] = READ_AT_MS[0], None
    return read if read is not None else int(time.time() * 1000)


def read_cluster(settings: KafkaSettings) -> tuple[list, dict[int, int]]:
    """The latest heartbeat of every replica, seen with its report pages
    (``health.ReplicaView``), and the log end offsets now."""
    from minigit.kafka_clients import INFRASTRUCTURE_ERRORS
    from minigit_server import health
    from minigit_server.bus import Bus

    bus = Bus(settings, client_id="minigit-server-status", bootstrap_timeout_s=10)
    try:
        beats, pages = bus.read_reports()
        READ_AT_MS[0] = bus.reports_read_ms
        return health.replica_views(beats, pages), bus.log_end_offsets()
    except INFRASTRUCTURE_ERRORS as error:
        raise settings.unreachable(error) from None
    finally:
        bus.close()


def print_document(data: dict) -> None:
    """A --json document: pretty-printed by rich for a person at a terminal, written
    as it is elsewhere (rich took seconds to lay out 10,000 repositories' verdicts)."""
    if out.is_terminal:
        out.print_json(data=data)
    else:
        out.file.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        out.file.flush()


def clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000))


@app.command()
def status(
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    namespace: Namespace = "",
    kafka_option: KafkaOption = None,
    as_json: Json = False,
    list_all: ListAll = False,
) -> None:
    """Show the replicas (health, partitions served, applied offsets and lag) and
    each repository's head version on every replica. Exit code 0: a replica is up;
    4: none is (so that status works as a health check)."""
    from minigit_server import health
    from minigit_server.health import ReplicaState
    from minigit_server.replica import HEARTBEAT_INTERVAL_S

    with exit_on_error():
        settings = kafka_settings(bootstrap, namespace, kafka_option)
        beats, log_end = read_cluster(settings)
        now_ms = read_time_ms()
        rows = health.describe_replicas(beats, now_ms, log_end, HEARTBEAT_INTERVAL_S)
        heads = health.all_heads(beats)
        if as_json:
            print_document({"replicas": [r.to_json() for r in rows], "repositories": heads, "log_end": log_end})
        elif rows:
            out.print(replica_table(rows, now_ms, health.check_server_keys(beats).differing))
            out.print(repository_table(heads, [r.replica for r in rows], list_all))
        if not rows:
            raise ServerUnreachable(
                f"no replica has reported on {plain(bootstrap)} (namespace {namespace!r})",
                hint="start the service with 'minigit-server start'",
            )
        if not any(row.state == ReplicaState.UP for row in rows):
            raise ServerUnreachable("no replica is up", hint="start the service with 'minigit-server start'")


def age(now_ms: int, then_ms: int) -> str:
    seconds = (now_ms - then_ms) / 1000
    return f"{seconds:.1f}s ago" if seconds >= 0 else f"{-seconds:.1f}s in the future"


def replica_table(rows: list, now_ms: int, odd_keys: list[str] | None = None) -> Table:
    """Every value from a heartbeat is escaped: the wire is not markup. A replica
    in ``odd_keys`` checks the log with another service key than the others."""
    from minigit_server.health import ReplicaState

    table = Table(title="replicas", title_justify="left")
    columns = ("replica", "state", "host", "pid", "up since", "last heartbeat", "serves", "applied / lag")
    for column in (*columns, "service key"):
        table.add_column(column)
    colours = {ReplicaState.UP: "green", ReplicaState.STOPPED: "dim", ReplicaState.SILENT: "red"}
    for row in rows:
        table.add_row(
            plain(row.replica),
            f"[{colours[row.state]}]{row.state}[/]",
            plain(row.host),
            str(row.pid),
            clock(row.started_ms),
            age(now_ms, row.last_heartbeat_ms),
            ",".join(map(str, row.serving)) or "-",
            " ".join(f"{part}:{row.applied.get(part, 0)}/{lag}" for part, lag in row.lag.items()),
            f"[red]{plain(row.key_fingerprint)}[/]"
            if row.replica in (odd_keys or [])
            else plain(row.key_fingerprint or "-"),
        )
    return table


def repository_table(heads: dict, replicas: list[str], list_all: bool = True) -> Table:
    """Every repository's head on each replica; beyond LISTED_IN_FULL (unless
    ``list_all``), only those whose heads differ, and a count of the others."""
    table = Table(title="repositories (head version on each replica)", title_justify="left")
    table.add_column("repository")
    for replica in replicas:
        table.add_column(f"replica {plain(replica)}", justify="right")
    brief = not list_all and len(heads) > LISTED_IN_FULL
    same = 0
    for name, by_replica in heads.items():
        values = {v for v in by_replica.values()}
        if brief and len(values) == 1 and len(by_replica) == len(replicas):
            same += 1
            continue
        cells = [str(by_replica.get(r)) if by_replica.get(r) is not None else "-" for r in replicas]
        if len(values) > 1:
            cells = [f"[yellow]{c}[/]" for c in cells]
        table.add_row(plain(name), *cells)
    if same:
        table.caption = f"and {same} more repositories at the same head on every replica (--all lists them)"
        table.caption_justify = "left"
    return table


@app.command()
def verify(
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    namespace: Namespace = "",
    max_lag: Annotated[int, typer.Option(min=0, help="Records a replica may be behind without failing.")] = 0,
    wait: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Seconds to let lagging or restarting replicas catch up first (with --deep: to read their stores).",
            show_default="10, or 600 with --deep",
        ),
    ] = None,
    expect: Annotated[
        int, typer.Option(min=0, help="Replicas that must be up (besides every replica that ever reported).")
    ] = 0,
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="Also have every replica read and hash every stored object now; fail on any damage found.",
        ),
    ] = False,
    kafka_option: KafkaOption = None,
    as_json: Json = False,
    list_all: ListAll = False,
) -> None:
    """Check that the replicas agree on every repository, comparing their state
    digests at the same log position, and that every replica that ever reported
    is up (forget a removed one with 'minigit-server forget ID'). With --deep, every
    replica up also reads and hashes every stored object after this command starts.
    Exit code 0: all agree; 3: a replica disagrees (on a repository, or on the
    service key it checks the log with), lags more than --max-lag records, is
    down, reports pages that cannot be read, fewer than --expect are up, or (--deep)
    holds damaged objects or did not finish reading in time; 4: no replica answers."""
    from minigit_server import health
    from minigit_server.health import ReplicaState, Verdict
    from minigit_server.replica import HEARTBEAT_INTERVAL_S

    with exit_on_error():
        settings = kafka_settings(bootstrap, namespace, kafka_option)
        wait = wait if wait is not None else DEEP_WAIT_S if deep else 10.0
        deadline = time.monotonic() + wait
        scrub = ask_for_scrub(settings) if deep else None
        while True:
            beats, _ = read_cluster(settings)
            now_ms = read_time_ms()
            live = health.live_beats(beats, now_ms, HEARTBEAT_INTERVAL_S)
            down = [
                row
                for row in health.describe_replicas(beats, now_ms, {}, HEARTBEAT_INTERVAL_S)
                if row.state != ReplicaState.UP
            ]
            verdicts = health.verify_repositories(live) if live else []
            keys = health.check_server_keys(live)
            scrubs = health.deep_check(live, scrub) if scrub else []
            settled = live and all(v.status != Verdict.BEHIND or max(v.behind.values()) <= max_lag for v in verdicts)
            settled = settled and not down and len(live) >= expect
            settled = settled and all(r.state != health.DeepState.PENDING for r in scrubs)
            # pages a heartbeat names but that were not read: what those replicas hold of
            # the repositories filed there is not known (not agreement: a store edited
            # behind a replica's back shows so until the page is published again)
            unread = sorted((v.replica, part, page) for v in live for part, page in getattr(v, "unread", ()))
            settled = settled and not unread
            disagree = any(v.status == Verdict.DISAGREE for v in verdicts) or not keys.agree
            if settled or disagree or time.monotonic() >= deadline:
                break
            time.sleep(HEARTBEAT_INTERVAL_S / 2)
        failed = [
            v for v in verdicts if v.status == Verdict.DISAGREE or (v.behind and max(v.behind.values()) > max_lag)
        ]
        damaged = [r for r in scrubs if r.state != health.DeepState.CLEAN]
        if as_json:
            report = {
                "replicas": sorted(b.replica for b in live),
                "down": [
                    {"replica": r.replica, "state": r.state, "last_heartbeat_ms": r.last_heartbeat_ms} for r in down
                ],
                "expected": expect,
                "repositories": [v.to_json() for v in verdicts],
                "server_keys": keys.to_json(),
                "unread_pages": [{"replica": r, "partition": part, "page": page} for r, part, page in unread],
            }
            if deep:
                report["deep"] = [r.to_json() for r in scrubs]
            print_document(report)
        if not live:
            raise ServerUnreachable(
                "no replica answers: no heartbeat in the last few seconds",
                hint="start the service with 'minigit-server start'",
            )
        if not as_json:
            print_verdicts(verdicts, sorted(b.replica for b in live), list_all, unknown=bool(unread))
            print_keys(keys)
            print_deep(scrubs, wait)
            print_unread(unread)
            print_missing(down, len(live), expect, now_ms)
        if failed or down or len(live) < expect or damaged or not keys.agree or unread:
            raise typer.Exit(int(ExitCode.REJECTED))


# verify --deep waits this long by default for every replica to read its whole store.
DEEP_WAIT_S = 600.0


def ask_for_scrub(settings: KafkaSettings) -> str:
    """Ask every replica to scrub now; the request id its answer will carry."""
    from minigit import protocol as p
    from minigit.kafka_clients import INFRASTRUCTURE_ERRORS
    from minigit_server.bus import Bus

    request = p.ScrubRequest(request=p.new_request_id(), requested_ms=int(time.time() * 1000))
    bus = Bus(settings, client_id="minigit-server-verify", bootstrap_timeout_s=10)
    try:
        bus.partition_count(bus.topics.replicas, wait_s=0)  # a clear error if the service never ran here
        bus.request_scrub(request)
    except INFRASTRUCTURE_ERRORS as error:
        raise settings.unreachable(error) from None
    finally:
        bus.close()
    return request.request


def print_keys(keys: health.ServerKeyCheck) -> None:
    """One line per replica whose service key is not the majority's: it would skip
    every write whose author's key the others' service key attests."""
    for replica in keys.differing:
        theirs = plain(keys.keys[replica])
        if keys.majority is None:
            others = plain(
                ", ".join(f"{key} (replica {r})" for r, key in sorted(keys.keys.items()) if r != replica and key)
            )
            out.print(f"[red]KEY[/]       replica {plain(replica)}: service key {theirs}, no majority among {others}")
        else:
            out.print(
                f"[red]KEY[/]       replica {plain(replica)}: service key {theirs} differs from {plain(keys.majority)} "
                "(it would skip every write the others attest)"
            )


def print_deep(results: list, wait: float) -> None:
    """One line per replica; one more per damaged object (its sha names it)."""
    from minigit_server import health

    for result in results:
        replica = plain(result.replica)
        if result.state == health.DeepState.CLEAN:
            out.print(
                f"[green]ok[/]        replica {replica}: read {result.objects} objects "
                f"({result.bytes} bytes stored), every one matches its hash"
            )
        elif result.state == health.DeepState.PENDING:
            out.print(f"[red]UNCHECKED[/] replica {replica}: did not finish reading its store within {wait:g}s")
        else:
            out.print(f"[red]DAMAGED[/]   replica {replica}: {result.damaged_count} objects failed their hash check")
            for found in result.damaged:
                fate = "repaired from the log" if found["repaired"] else "quarantined, not repaired"
                out.print(
                    f"          object {plain(found['sha'])} (log partition {found['partition']}): "
                    f"{plain(found['problem'])}; {fate}"
                )


@app.command()
def forget(
    replica_id: Annotated[str, typer.Argument(help="The id of a replica that was removed for good.")],
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    namespace: Namespace = "",
    kafka_option: KafkaOption = None,
) -> None:
    """Drop a removed replica from status and verify (its data is untouched)."""
    from minigit import protocol as p
    from minigit.kafka_clients import INFRASTRUCTURE_ERRORS
    from minigit_server.bus import Bus

    with exit_on_error():
        p.check_name("replica", replica_id)
        settings = kafka_settings(bootstrap, namespace, kafka_option)
        bus = Bus(settings, client_id="minigit-server-forget", bootstrap_timeout_s=10)
        try:
            bus.partition_count(bus.topics.replicas, wait_s=0)
            known = bus.forget_replica(replica_id)
        except INFRASTRUCTURE_ERRORS as error:
            raise settings.unreachable(error) from None
        finally:
            bus.close()
        if not known:
            raise MinigitError(
                f"no replica {plain(replica_id)} is known to this service",
                hint="minigit-server status lists the replicas it knows",
            )
        out.print(f"forgot replica {plain(replica_id)}")


def print_unread(unread: list[tuple[str, int, int]]) -> None:
    by_replica: dict[str, int] = {}
    for replica, _, _ in unread:
        by_replica[replica] = by_replica.get(replica, 0) + 1
    for replica, count in sorted(by_replica.items()):
        out.print(
            f"[yellow]UNREAD[/]    replica {plain(replica)}: {count} report page(s) its heartbeat names were not"
            " read (missing, or another digest: its repositories there are not known; a replica publishes"
            " its pages again every minute or so)"
        )


def print_missing(down: list, live: int, expect: int, now_ms: int) -> None:
    for row in down:
        last = age(now_ms, row.last_heartbeat_ms)
        out.print(
            f"[red]DOWN[/]      replica {plain(row.replica)}: {row.state}, last heartbeat {last}"
            f" (if it was removed for good: minigit-server forget {plain(row.replica)})"
        )
    if live < expect:
        out.print(f"[red]MISSING[/]   {expect - live} of the {expect} replicas expected are not up")


def print_verdicts(verdicts: list, replicas: list[str], list_all: bool = True, unknown: bool = False) -> None:
    """Replica and repository names come from heartbeats: escaped, never markup.
    Beyond LISTED_IN_FULL repositories (unless ``list_all``) the agreeing ones are counted, not listed.
    ``unknown``: some repositories could not be compared (unread report pages)."""
    from minigit_server.health import Verdict

    out.print(f"Checked {len(verdicts)} repositories on replicas {plain(', '.join(replicas))}")
    brief = not list_all and len(verdicts) > LISTED_IN_FULL
    agreeing = 0
    for verdict in verdicts:
        head = max((h for h in verdict.heads.values() if h is not None), default=None)
        repo = plain(verdict.repo)
        if verdict.status == Verdict.AGREE and brief:
            agreeing += 1
            continue
        if verdict.status == Verdict.AGREE:
            line = f"[green]ok[/]        {repo} (version {head}): {len(verdict.heads)} replicas agree"
        elif verdict.status == Verdict.DISAGREE:
            others = plain(", ".join(verdict.disagreeing))
            line = f"[red]DISAGREE[/]  {repo} (version {head}): replica {others} differs from the others"
        else:
            lagging = plain(", ".join(f"replica {r} by {n} records" for r, n in sorted(verdict.behind.items())))
            line = f"[yellow]behind[/]    {repo} (version {head}): {lagging}"
        out.print(line)
    if agreeing:
        out.print(f"[green]ok[/]        {agreeing} more repositories: every replica agrees (--all lists them)")
    if all(v.status == Verdict.AGREE for v in verdicts) and not unknown:
        out.print("[bold green]All repositories are available![/]")


from minigit_server import audit_cli  # noqa: E402, F401 - its commands (audit) take this module's options
from minigit_server.repo_cli import repo_app  # noqa: E402 - it takes its options from this module
from minigit_server.snapshot_cli import snapshot_app  # noqa: E402 - it takes its options from this module
from minigit_server.users_cli import users_app  # noqa: E402 - it takes its options from this module

app.add_typer(users_app)
app.add_typer(repo_app)
app.add_typer(snapshot_app)


def print_version() -> None:
    out.print(f"minigit-server {__version__}")


@app.callback()
def main_options(
    version: Annotated[bool, version_option(print_version)] = False,
) -> None:
    """Run the replicated minigit repository service and a local Apache Kafka."""


def main(args: list[str] | None = None) -> None:
    """The `minigit-server` command; a bare `--version` answers before Typer builds every command."""
    if (sys.argv[1:] if args is None else args) == ["--version"]:
        print_version()
        return
    app(args)


if __name__ == "__main__":
    main()
