"""`minigit-server kafka start | stop | status | fetch`: thin commands over minigit_server.devkafka.broker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from minigit.console import err, exit_on_error, out
from minigit_server.devkafka import broker

kafka_app = typer.Typer(
    help=(
        "Run a local single-node Apache Kafka for development and tests, without Docker.\n\n"
        f"Needs Java {broker.MIN_JAVA_VERSION}+; the first start downloads the Kafka {broker.KAFKA_VERSION} "
        "jars with Maven into ~/.cache/minigit (or uses $KAFKA_HOME/libs)."
    ),
    no_args_is_help=True,
)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="MINIGIT_KAFKA_DIR",
        help="Where the broker keeps its data, config, pid and log.",
        show_default="~/.local/state/minigit/kafka",
        file_okay=False,
    ),
]


def _progress(message: str) -> None:
    err.print(f"[dim]{escape(message)}…[/]")


def _version(info: broker.BrokerInfo) -> str:
    return f" {info.kafka_version}" if info.kafka_version else ""


def _where(info: broker.BrokerInfo) -> None:
    if info.running and info.bootstrap:
        out.print(f"bootstrap  {info.bootstrap}", markup=False)
    out.print(f"log        {info.log_path}", markup=False)
    out.print(f"data dir   {info.data_dir}", markup=False)


@kafka_app.command()
def start(
    port: Annotated[
        int, typer.Option(envvar="MINIGIT_KAFKA_PORT", min=1, max=65535, help="Port of the broker on 127.0.0.1.")
    ] = broker.DEFAULT_PORT,
    controller_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Port of the KRaft controller; fixed once the data dir is formatted.",
            show_default="port + 1",
        ),
    ] = None,
    data_dir: DataDir = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the broker to answer.")
    ] = broker.DEFAULT_START_TIMEOUT,
    heap: Annotated[
        str, typer.Option(envvar="MINIGIT_KAFKA_HEAP", help="Maximum Java heap (-Xmx).")
    ] = broker.DEFAULT_HEAP,
) -> None:
    """Start Kafka in the background; return once it answers clients.

    The first start formats the data dir; later ones reuse its topics.
    Already running: says so and exits 0.
    """
    with exit_on_error():
        info = broker.start_broker(
            port, data_dir, controller_port=controller_port, heap=heap, timeout=timeout, progress=_progress
        )
    if info.already_running:
        out.print(f"Kafka is already running (pid {info.pid})")
        if info.port is not None and info.port != port:
            err.print(f"[yellow]note:[/] it listens on port {info.port}, not {port}; stop it first to change the port")
    else:
        out.print(f"Kafka{_version(info)} started in {info.elapsed:.1f} s (pid {info.pid})")
    _where(info)


@kafka_app.command()
def stop(
    data_dir: DataDir = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")
    ] = broker.DEFAULT_STOP_TIMEOUT,
) -> None:
    """Stop Kafka and wait until its JVM has exited. Not running: says so and exits 0."""
    with exit_on_error():
        result = broker.stop_broker(data_dir, timeout=timeout)
    if not result.was_running:
        out.print(f"Kafka is not running (data dir {result.data_dir})", markup=False)
    elif result.killed:
        out.print(f"Kafka (pid {result.pid}) ignored SIGTERM for {timeout:.0f} s and was killed")
    else:
        out.print(f"Kafka stopped (pid {result.pid}) in {result.elapsed:.1f} s")


@kafka_app.command()
def status(data_dir: DataDir = None) -> None:
    """Say whether Kafka runs, and where.

    Exit status: 0 if it runs, 1 if it does not.
    """
    with exit_on_error():
        info = broker.read_broker_status(data_dir)
    if info.running:
        note = "" if info.accepting else " (not accepting connections yet)"
        out.print(f"Kafka{_version(info)} is running (pid {info.pid}){note}")
    else:
        out.print("Kafka is not running")
    _where(info)
    raise typer.Exit(0 if info.running else 1)


@kafka_app.command()
def fetch() -> None:
    """Download the Kafka jars into the cache (once) and print where they are.

    Handy for a CI install step; start does it too when needed.
    """
    with exit_on_error():
        libs = broker.ensure_kafka_jars(progress=_progress)
    jars = list(libs.glob("*.jar"))
    size = sum(jar.stat().st_size for jar in jars)
    err.print(f"{len(jars)} jars, {size / 1e6:.0f} MB", markup=False)
    out.print(str(libs), markup=False)
