"""The Spark jobs' commands.

`minigit-server audit`: every repository recomputed from repo-log alone, with the
replicas' own apply code, and compared with what the replicas report
(minigit_server.audit); `--engine spark` folds the log in Apache Spark
(minigit_server.sparkjobs), `--engine local` in this process. Both give the same
result. `minigit-server activity`: live figures per minute (minigit_server.activity,
a Structured Streaming job), and `--show` to watch them.

Heavy modules (the wire format, Kafka, PySpark) are imported by the commands
themselves, not here: `minigit-server --help` needs none of them.
"""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from minigit.config import DEFAULT_BOOTSTRAP, MAX_TIMEOUT_S, MIN_TIMEOUT_S, KafkaSettings
from minigit.console import err, exit_on_error, out
from minigit.errors import ExitCode, MinigitError, ServerUnreachable
from minigit_server.cli import (
    Bootstrap,
    DataDir,
    Json,
    KafkaOption,
    ListAll,
    Namespace,
    app,
    default_data_dir,
    kafka_settings,
    plain,
)


class Engine(enum.StrEnum):
    SPARK = "spark"
    LOCAL = "local"


EngineOption = Annotated[
    Engine,
    typer.Option("--engine", help="Fold the log in Apache Spark (the 'spark' extra, Java 17+) or in this process."),
]
MasterOption = Annotated[
    str,
    typer.Option(
        "--master", envvar="MINIGIT_SPARK_MASTER", help="Spark master URL (spark://host:7077, yarn, local[N])."
    ),
]
AuditKeyPath = Annotated[
    Path | None,
    typer.Option(
        "--server-key",
        envvar="MINIGIT_SERVER_KEY",
        help="The service's key file: its public key checks the log's signatures as the replicas do "
        "(without it and DATA_DIR/keys/server.key, the key every live replica reports is used).",
        show_default="DATA_DIR/keys/server.key",
    ),
]


def audit_authority(settings: KafkaSettings, data_dir: Path | None, path: Path | None, beats: list):
    """The namespace and service key the log is checked with, and where the key came
    from: the key file given or in the data dir, else the one every live replica reports."""
    from minigit import identity, key_files
    from minigit_server import health
    from minigit_server.apply import Authority
    from minigit_server.server_key import ELSEWHERE, load_server_key, server_key_path

    if path is not None:
        key = load_server_key(path)
        return Authority(settings.namespace, identity.public_key_text(key.public_key())), str(path)
    default = server_key_path(data_dir or default_data_dir())
    if (key := key_files.load_key_file(default, ELSEWHERE)) is not None:
        return Authority(settings.namespace, identity.public_key_text(key.public_key())), str(default)
    keys = {beat.server_key for beat in beats if beat.server_key}
    check = health.check_server_keys(beats)
    if len(keys) != 1 or not check.agree:
        raise MinigitError(
            "no service key to check the log with: none in "
            f"{default}, and the live replicas do not all report the same one",
            hint="give the service's --server-key (or --data-dir)",
        )
    return Authority(settings.namespace, keys.pop()), "the replicas' heartbeats"


def fold_log(session, settings: KafkaSettings, bus, ends: dict[int, int], authority, timeout):
    """The log folded up to ``ends`` in Spark (``session``), or in this process (None):
    a PartitionAudit per partition."""
    from minigit_server import audit

    if session is None:
        with audit.quiet_apply_log():
            return audit.audit_log(lambda n, end: bus.scan_log(n, end, timeout), ends, authority)
    from minigit_server.sparkjobs import audit_job, runtime

    options = runtime.spark_kafka_options(settings.bootstrap, dict(settings.options))
    with runtime.job_failures("folding the log"):
        return audit_job.audit_log(session, options, settings.topics.log, ends, authority)


@app.command()
def audit(
    engine: EngineOption = Engine.SPARK,
    master: MasterOption = "local[*]",
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    namespace: Namespace = "",
    data_dir: DataDir = None,
    server_key: AuditKeyPath = None,
    max_lag: Annotated[int, typer.Option(min=0, help="Records a replica may be behind without failing.")] = 0,
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to let lagging replicas reach the log's end first.")
    ] = 10.0,
    timeout: Annotated[
        float, typer.Option(min=MIN_TIMEOUT_S, max=MAX_TIMEOUT_S, help="Seconds to read each log partition (local).")
    ] = 600.0,
    kafka_option: KafkaOption = None,
    as_json: Json = False,
    list_all: ListAll = False,
) -> None:
    """Recompute every repository's history and head from repo-log alone, with the
    rules every replica applies, and compare them with what each live replica
    reports: agree / disagree / behind, per repository. Unlike 'verify', which
    compares the replicas with each other, this catches a state every replica
    holds alike but the log does not make. Exit code 0: every replica agrees with
    the log; 3: a replica disagrees with it, or lags more than --max-lag records;
    4: Kafka or every replica is unreachable; 1: the audit could not run (Spark,
    Java or its Kafka connector missing: the hint says what to install)."""
    from minigit.kafka_clients import INFRASTRUCTURE_ERRORS
    from minigit_server import audit as auditing
    from minigit_server import health
    from minigit_server.bus import Bus
    from minigit_server.health import Verdict
    from minigit_server.replica import HEARTBEAT_INTERVAL_S

    with exit_on_error():
        settings = kafka_settings(bootstrap, namespace, kafka_option)
        session, session_s = None, 0.0
        if engine == Engine.SPARK:  # before reading anything: a missing Spark fails first
            from minigit_server.sparkjobs import runtime

            started = time.monotonic()
            session = runtime.get_session(master, "minigit-audit", progress=lambda line: err.print(line))
            session_s = time.monotonic() - started
        bus = Bus(settings, client_id="minigit-server-audit", bootstrap_timeout_s=10)
        try:
            ends = bus.log_end_offsets()
            deadline = time.monotonic() + wait
            while True:
                beats, pages = bus.read_reports()
                views = health.replica_views(beats, pages)
                live = health.live_beats(views, bus.reports_read_ms, HEARTBEAT_INTERVAL_S)
                caught_up = all(view.applied.get(n, 0) >= end for view in live for n, end in ends.items())
                # a page read between its record and the heartbeat naming it is unread for a beat
                caught_up = caught_up and not any(view.unread for view in live)
                if (live and caught_up) or time.monotonic() >= deadline:
                    break
                time.sleep(HEARTBEAT_INTERVAL_S / 2)
            authority, key_source = audit_authority(settings, data_dir, server_key, live)
            if others := sorted(view.replica for view in live if view.server_key not in ("", authority.server_key)):
                err.print(
                    f"warning: replicas {plain(', '.join(others))} check the log with another service key than "
                    f"{plain(key_source)}: every write they apply looks forged to this audit"
                )
            started = time.monotonic()
            audits = fold_log(session, settings, bus, ends, authority, timeout)
            seconds = time.monotonic() - started
        except TimeoutError as error:
            raise ServerUnreachable(str(error), hint="raise --timeout") from None
        except INFRASTRUCTURE_ERRORS as error:
            raise settings.unreachable(error) from None
        finally:
            bus.close()
        verdicts = auditing.compare(audits, live)
        replicas = sorted(view.replica for view in live)
        incomplete = [a.partition for a in audits if not a.complete]
        failed = [
            v for v in verdicts if v.status == Verdict.DISAGREE or (v.behind and max(v.behind.values()) > max_lag)
        ]
        if as_json:
            out.print_json(
                data={
                    "engine": str(engine),
                    "seconds": round(seconds, 3),
                    "spark_session_seconds": round(session_s, 3),
                    "service_key": key_source,
                    "replicas": replicas,
                    "partitions": [a.to_json() | {"repos": len(a.repos)} for a in audits],
                    "incomplete": incomplete,
                    "repositories": [v.to_json() for v in verdicts],
                }
            )
        else:
            records = sum(a.records for a in audits)
            out.print(
                f"Audited {records} log records of {len(audits)} partitions ({engine} engine, {seconds:.1f}s"
                + (f", after {session_s:.1f}s starting Spark" if session is not None else "")
                + "): "
                f"{sum(len(a.repos) for a in audits)} repositories, against replicas {plain(', '.join(replicas))}"
            )
            print_audit(verdicts, replicas, list_all)
        for partition in incomplete:
            err.print(
                f"warning: log partition {partition} no longer starts at offset 0 (retention deleted records): "
                "its repositories could not be recomputed from their beginning"
            )
        if not live:
            raise ServerUnreachable(
                "no replica answers: no heartbeat in the last few seconds",
                hint="start the service with 'minigit-server start'",
            )
        if failed or incomplete:
            raise typer.Exit(int(ExitCode.REJECTED))


# Beyond this many repositories the agreeing ones are counted, not listed (unless --all).
LISTED_IN_FULL = 100


def print_audit(verdicts: list, replicas: list[str], list_all: bool) -> None:
    """A table: the log's head and history length, the verdict, each replica's head.
    Names come from the log and from heartbeats: escaped, never markup."""
    from minigit_server.health import Verdict

    table = Table(
        title="repositories: the log's head and verdict, and the head each replica reports", title_justify="left"
    )
    longest = max((len(v.repo) for v in verdicts), default=10)
    table.add_column("repository", min_width=min(longest, 40), overflow="fold")
    table.add_column("log part.", justify="right")
    table.add_column("log head", justify="right")
    table.add_column("verdict")
    for replica in replicas:
        table.add_column(f"replica {plain(replica)}", justify="right")
    brief = not list_all and len(verdicts) > LISTED_IN_FULL
    agreeing = 0
    colours = {Verdict.AGREE: "green", Verdict.DISAGREE: "red", Verdict.BEHIND: "yellow"}
    # changed past the audit's read on every replica: compared with none of them
    uncompared = [v.repo for v in verdicts if replicas and len(v.newer) == len(replicas)]
    for verdict in verdicts:
        if brief and verdict.status == Verdict.AGREE and verdict.repo not in uncompared:
            agreeing += 1
            continue
        cells = []
        for replica in replicas:
            head = verdict.heads.get(replica)
            text = "-" if head is None else str(head)
            if replica in verdict.disagreeing:
                text = f"[red]{text} differs[/]"
            elif replica in verdict.behind:
                text = f"[yellow]{text} (behind {verdict.behind[replica]})[/]"
            elif replica in verdict.newer:
                text = f"[dim]{text} (newer)[/]"
            cells.append(text)
        table.add_row(
            plain(verdict.repo),
            str(verdict.partition),
            "-" if verdict.head is None else str(verdict.head),
            f"[{colours[verdict.status]}]{verdict.status}[/]",
            *cells,
        )
    if agreeing:
        table.caption = f"and {agreeing} more repositories: every replica agrees with the log (--all lists them)"
        table.caption_justify = "left"
    out.print(table)
    for verdict in verdicts:
        if verdict.status == Verdict.DISAGREE:
            names = plain(", ".join(verdict.disagreeing))
            out.print(f"[red]DISAGREE[/]  {plain(verdict.repo)}: replica {names} differs from the log")
            if verdict.unreadable:
                out.print(
                    f"          replica {plain(', '.join(verdict.unreadable))}: its report of it does not hash to "
                    "its heartbeat (its store changed behind its back?)"
                )
    if uncompared:
        out.print(
            f"[yellow]{len(uncompared)} repositories changed past the audit's read on every replica: not compared[/] "
            f"({plain(', '.join(uncompared[:5]))}{', …' if len(uncompared) > 5 else ''}; run the audit again)"
        )
    if verdicts and all(v.status == Verdict.AGREE for v in verdicts) and len(uncompared) < len(verdicts):
        compared = " (on the repositories compared)" if uncompared else ""
        out.print(f"[bold green]Every replica agrees with the log![/]{compared}")


# ---------------------------------------------------------------- activity


def read_figures(settings: KafkaSettings) -> list[dict]:
    """The latest figures of every (scope, name, minute) on the activity topic, oldest
    minute first. A record that is not such figures is left out (anyone who may
    write the topic may write anything there)."""
    from minigit_server.bus import latest_values
    from minigit_server.sparkjobs.activity_job import activity_topic

    found = []
    for key, value in latest_values(settings, activity_topic(settings.topics)).items():
        if (doc := figures_doc(key, value)) is not None:
            found.append(doc)
    return sorted(found, key=lambda doc: (str(doc["minute"]), str(doc["scope"]), str(doc["name"])))


MAX_FIGURES_BYTES = 64 * 1024
FIGURE_NAMES = ("scope", "name", "minute")
FIGURE_COUNTS = ("pushes_accepted", "pushes_rejected", "pulls", "clones", "bytes_in", "bytes_out")
LATENCY_FIELDS = ("count", "p50", "p95", "max")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def figures_doc(key: bytes, value: bytes) -> dict | None:
    """One activity record's figures, or None if it is not figures as the job writes
    them (keyed by its scope, minute and name; every field of its type)."""
    import json

    if len(value) > MAX_FIGURES_BYTES:
        return None
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(name), str) for name in FIGURE_NAMES):
        return None
    if not all(_is_count(doc.get(name)) for name in FIGURE_COUNTS):
        return None
    requests, latency = doc.get("requests"), doc.get("latency_ms")
    if not isinstance(requests, dict) or not all(_is_count(n) for n in requests.values()):
        return None
    if not isinstance(latency, dict) or not all(
        isinstance(v, dict) and all(_is_count(v.get(name)) for name in LATENCY_FIELDS) for v in latency.values()
    ):
        return None
    if key.decode("utf-8", "replace") != f"{doc['scope']}/{doc['minute']}/{doc['name']}":
        return None
    return doc


def figures_table(figures: list[dict], minutes: int) -> Table:
    """The last ``minutes`` minutes' figures: repositories, then users."""
    shown = sorted({str(doc["minute"]) for doc in figures})[-minutes:]
    table = Table(title=f"activity per minute (UTC), last {len(shown)} minutes", title_justify="left")
    for column in ("minute", "scope", "name", "requests", "pushes ok/rejected", "pulls", "clones"):
        table.add_column(column, justify="right" if column in ("pulls", "clones") else "left")
    for column in ("bytes in", "bytes out", "latency p50/p95 ms"):
        table.add_column(column, justify="right")
    for doc in figures:
        if str(doc["minute"]) not in shown:
            continue
        requests = " ".join(f"{plain(str(a))}:{n}" for a, n in sorted(doc["requests"].items()))
        latency = " ".join(
            f"{plain(str(key))} {v.get('p50')}/{v.get('p95')}"
            for key, v in sorted(doc["latency_ms"].items())
            if isinstance(v, dict)
        )
        table.add_row(
            plain(str(doc["minute"])),
            plain(str(doc["scope"])),
            plain(str(doc["name"])),
            requests,
            f"{doc['pushes_accepted']}/{doc['pushes_rejected']}",
            str(doc["pulls"]),
            str(doc["clones"]),
            str(doc["bytes_in"]),
            str(doc["bytes_out"]),
            latency,
        )
    return table


@app.command()
def activity(
    show: Annotated[
        bool, typer.Option("--show", help="Show the figures as a table that refreshes (reads the topic; no Spark).")
    ] = False,
    once: Annotated[
        bool, typer.Option("--once", help="Fold what the topics hold now, write its figures, and stop.")
    ] = False,
    master: MasterOption = "local[*]",
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    namespace: Namespace = "",
    data_dir: DataDir = None,
    server_key: AuditKeyPath = None,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between micro-batches, or refreshes.")] = 2.0,
    minutes: Annotated[int, typer.Option(min=1, help="Minutes shown by --show.")] = 5,
    kafka_option: KafkaOption = None,
    as_json: Json = False,
) -> None:
    """Live figures per minute, per repository and per user: requests by action,
    pushes accepted and rejected, pulls and clones, bytes in and out, latency of the
    first answer by action and replica. Without --show/--json: runs the Structured
    Streaming job (Apache Spark) over repo-requests, repo-log and repo-responses,
    writing the figures to the compacted topic repo-activity, until Ctrl-C (or, with
    --once, until it has read what the topics hold). --json prints the figures on
    the topic now; --show shows them, refreshed. Exit code 0; 1: Spark, Java or its
    Kafka connector missing; 4: Kafka unreachable."""
    from minigit.kafka_clients import INFRASTRUCTURE_ERRORS

    with exit_on_error():
        settings = kafka_settings(bootstrap, namespace, kafka_option)
        try:
            if as_json:
                out.print_json(data={"figures": read_figures(settings)})
                return
            if show:
                show_figures(settings, interval, minutes)
                return
            run_activity(settings, master, data_dir, server_key, once, interval)
        except TimeoutError as error:
            raise ServerUnreachable(str(error)) from None
        except INFRASTRUCTURE_ERRORS as error:
            raise settings.unreachable(error) from None


def show_figures(settings: KafkaSettings, interval: float, minutes: int) -> None:
    from rich.live import Live

    with Live(figures_table(read_figures(settings), minutes), console=out, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(figures_table(read_figures(settings), minutes), refresh=True)
        except KeyboardInterrupt:
            return


def run_activity(
    settings: KafkaSettings, master: str, data_dir: Path | None, server_key: Path | None, once: bool, interval: float
) -> None:
    import shutil

    from minigit_server.bus import Bus, ensure_compacted_topic
    from minigit_server.sparkjobs import activity_job, runtime

    runtime.check_ready(progress=lambda line: err.print(line))
    bus = Bus(settings, client_id="minigit-server-activity", bootstrap_timeout_s=10)
    try:
        partitions = bus.log_partition_count()
        beats = bus.read_heartbeats()
    finally:
        bus.close()
    authority, _ = audit_authority(settings, data_dir, server_key, beats)
    topic = activity_job.activity_topic(settings.topics)
    ensure_compacted_topic(settings, topic)
    session = runtime.get_session(master, "minigit-activity")
    options = runtime.spark_kafka_options(settings.bootstrap, dict(settings.options))

    def told(batch_id: int, written: dict[str, str]) -> None:
        if written:
            err.print(f"batch {batch_id}: {len(written)} figures written to {topic}")

    with runtime.job_failures("of activity"):
        query, tracker, checkpoint = activity_job.start(
            session, options, settings.topics, partitions, authority, once=once, interval_s=interval, on_batch=told
        )
        err.print(f"activity: reading {settings.topics.requests}, {settings.topics.log}, {settings.topics.responses}")
        try:
            query.awaitTermination()
        except KeyboardInterrupt:
            pass
        finally:
            query.stop()
            tracker.close()
            shutil.rmtree(checkpoint, ignore_errors=True)
