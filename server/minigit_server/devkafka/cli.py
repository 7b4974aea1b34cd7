"""`minigit-server kafka start | stop | status | fetch`: thin commands over minigit_server.devkafka.broker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from minigit.console import err, exit_on_error, out
from minigit_server.devkafka import broker, secure

kafka_app = typer.Typer(
    help=(
        "Run a local Apache Kafka (one node, or a cluster of three) for development and tests, without Docker.\n\n"
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
        help="Where Kafka keeps its data, config, pids and logs (of every node).",
        show_default="~/.local/state/minigit/kafka",
        file_okay=False,
    ),
]


def _progress(message: str) -> None:
    err.print(f"[dim]{escape(message)}…[/]")


def _version(info: broker.BrokerInfo) -> str:
    return f" {info.kafka_version}" if info.kafka_version else ""


def _where(info: broker.BrokerInfo) -> None:
    if info.running_nodes and info.bootstrap:
        out.print(f"bootstrap  {info.bootstrap}", markup=False)
    if not info.is_cluster:
        out.print(f"log        {info.log_path}", markup=False)
    out.print(f"data dir   {info.data_dir}", markup=False)
    if info.security:
        out.print(
            f"secured    {secure.PROTOCOL}, {secure.MECHANISM}, ACLs; secrets in {info.security.directory}",
            markup=False,
        )


def _connection_settings(security: secure.SecureAccess) -> None:
    """Ready-to-paste environment lines for each principal (stdout: they are the result)."""
    for user, side in ((secure.SERVER_USER, "replicas ('minigit-server start')"), (secure.CLIENT_USER, "clients")):
        out.print(f"\n# {side}, as {user}; also in {security.environment_file(user)}", markup=False)
        for name, value in security.environment(user).items():
            out.print(f"export {name}={value}", markup=False)


def _node_table(info: broker.BrokerInfo, with_state: bool) -> None:
    """One line per node of a cluster (a single node says it all in one sentence)."""
    if not info.is_cluster:
        return
    rows = [["node", *(["state"] if with_state else []), "pid", "broker", "controller", "log"]]
    for node in info.nodes:
        state = "down"
        if node.running:
            state = "up" if node.accepting is not False else "up, not accepting yet"
            if node.node_id == info.controller_leader:
                state += ", controller leader"
        rows.append(
            [
                str(node.node_id),
                *([state] if with_state else []),
                str(node.pid) if node.pid else "-",
                broker.host_port(info.advertise, node.port) if node.port else "-",
                broker.host_port(broker.HOST, node.controller_port) if node.controller_port else "-",
                str(node.log_path),
            ]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        out.print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), markup=False)


@kafka_app.command()
def start(
    port: Annotated[
        int | None,
        typer.Option(
            envvar="MINIGIT_KAFKA_PORT",
            min=1,
            max=65535,
            help="Broker port (of node 1; node n uses port + n - 1).",
            show_default=f"{broker.DEFAULT_PORT}, or the last start's",
        ),
    ] = None,
    controller_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="KRaft controller port (of node 1; node n uses it + n - 1); fixed once the data dir is formatted.",
            show_default="port + nodes",
        ),
    ] = None,
    nodes: Annotated[
        int | None,
        typer.Option(
            envvar="MINIGIT_KAFKA_NODES",
            min=1,
            max=broker.MAX_NODES,
            help="Nodes (broker + controller each); 3 makes a cluster with replication factor 3 and "
            "min.insync.replicas=2. Fixed once the data dir is formatted.",
            show_default="1, or as formatted",
        ),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option(
            envvar="MINIGIT_KAFKA_LISTEN",
            help="Address the brokers accept clients on; 0.0.0.0 lets other machines in (with --advertise).",
            show_default=f"{broker.HOST}, or the last start's",
        ),
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(
            envvar="MINIGIT_KAFKA_ADVERTISE",
            help="Host name or address clients are told to connect to: the one other machines reach this one by.",
            show_default="the --listen address",
        ),
    ] = None,
    data_dir: DataDir = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the nodes to answer.")
    ] = broker.DEFAULT_START_TIMEOUT,
    heap: Annotated[
        str, typer.Option(envvar="MINIGIT_KAFKA_HEAP", help="Maximum Java heap (-Xmx) of each node.")
    ] = broker.DEFAULT_HEAP,
    secured: Annotated[
        bool,
        typer.Option(
            "--secure",
            help=f"{secure.MECHANISM} logins over TLS, ACLs, and a server and a client principal whose settings "
            "are printed. Fixed once the data dir is formatted.",
        ),
    ] = False,
    acl_namespace: Annotated[
        str | None,
        typer.Option(
            help="Also grant the two principals the topics of this --namespace (a secured Kafka; remembered).",
            show_default="the empty namespace",
        ),
    ] = None,
) -> None:
    """Start Kafka in the background; return once it answers clients.

    The first start formats the data dir; later ones reuse its topics. Already
    running: says so and exits 0. Of a cluster, starts the nodes that are not
    running (after 'kafka stop --node N', or a crash) and leaves the others alone.
    """
    with exit_on_error():
        info = broker.start_broker(
            port,
            data_dir,
            nodes=nodes,
            controller_port=controller_port,
            listen=listen,
            advertise=advertise,
            heap=heap,
            timeout=timeout,
            progress=_progress,
            secured=secured,
            acl_namespace=acl_namespace,
        )
    started = info.started_nodes
    if info.already_running:
        out.print(
            f"Kafka is already running ({broker.node_list(info.nodes) if info.is_cluster else f'pid {info.pid}'})"
        )
    elif not info.is_cluster:
        out.print(f"Kafka{_version(info)} started in {info.elapsed:.1f} s (pid {info.pid})")
    elif len(started) == len(info.nodes):
        out.print(f"Kafka{_version(info)} started: {len(started)} nodes in {info.elapsed:.1f} s")
    else:
        others = [node for node in info.nodes if not node.started]
        took = f"{info.elapsed:.1f} s"
        out.print(f"Kafka {broker.node_list(started)} started in {took}; {broker.node_list(others)} already running")
    if len(started) < len(info.nodes):  # it kept the ports and addresses it runs with
        if port is not None and info.port != port:
            err.print(f"[yellow]note:[/] it listens on port {info.port}, not {port}; stop it first to change the port")
        if listen is not None and (info.listen, info.advertise) != (listen, advertise or listen):
            err.print(
                f"[yellow]note:[/] it listens on {escape(info.listen)} and is advertised as {escape(info.advertise)}; "
                "stop it first to change them"
            )
    _node_table(info, with_state=False)
    _where(info)
    if info.security:
        _connection_settings(info.security)


@kafka_app.command()
def stop(
    data_dir: DataDir = None,
    node: Annotated[
        int | None, typer.Option(min=1, help="Stop only this node of a cluster ('kafka start' brings it back).")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")
    ] = broker.DEFAULT_STOP_TIMEOUT,
) -> None:
    """Stop Kafka and wait until its JVMs have exited. Not running: says so and exits 0."""
    with exit_on_error():
        result = broker.stop_broker(data_dir, node=node, timeout=timeout)
    what = "Kafka" if node is None else f"Kafka node {node}"
    if not result.was_running:
        out.print(f"{what} is not running (data dir {result.data_dir})", markup=False)
        return
    pids = ", ".join(str(stopped.pid) for stopped in result.stopped)
    plural = "s" if len(result.stopped) > 1 else ""
    out.print(f"{what} stopped (pid{plural} {pids}) in {result.elapsed:.1f} s")
    for stopped in result.stopped:
        if stopped.killed and result.without_quorum:
            out.print(
                f"node {stopped.node_id} (pid {stopped.pid}) had no controller quorum to shut down with "
                f"and was killed after {result.grace:.0f} s"
            )
        elif stopped.killed:
            out.print(f"pid {stopped.pid} ignored SIGTERM for {result.grace:.0f} s and was killed")


@kafka_app.command()
def status(data_dir: DataDir = None) -> None:
    """Say whether Kafka runs (each node of a cluster), and where.

    Exit status: 0 if it runs (every node of a cluster), 1 if it does not.
    """
    with exit_on_error():
        info = broker.read_broker_status(data_dir)
    if info.is_cluster:
        leader = f"; controller leader: node {info.controller_leader}" if info.controller_leader else ""
        running = len(info.running_nodes)
        out.print(f"Kafka{_version(info)}: {running} of {len(info.nodes)} nodes running{leader}")
    elif info.running:
        note = "" if info.accepting else " (not accepting connections yet)"
        out.print(f"Kafka{_version(info)} is running (pid {info.pid}){note}")
    else:
        out.print("Kafka is not running")
    _node_table(info, with_state=True)
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
