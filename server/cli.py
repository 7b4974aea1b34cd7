"""minigit-server: thin Typer commands over the server's core modules."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from minigit import protocol as p
from minigit.config import KafkaSettings, check_namespace, read_kafka_options
from minigit.console import err, exit_on_error, out
from minigit.errors import UsageError
from minigit_server.cli_kafka import kafka_app

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
    list[str],
    typer.Option(
        "--kafka-option",
        help="kafka-python security setting NAME=VALUE (e.g. security_protocol=SASL_SSL); "
        "also read from MINIGIT_KAFKA_<NAME>.",
    ),
]
DataDir = Annotated[
    Path,
    typer.Option("--data-dir", envvar="MINIGIT_DATA_DIR", help="Where replicas keep their stores and logs."),
]


def kafka_settings(bootstrap: str, namespace: str, kafka_option: list[str]) -> KafkaSettings:
    return KafkaSettings(bootstrap, check_namespace(namespace), read_kafka_options(kafka_option))


@app.command()
def start(
    replicas: Annotated[int, typer.Option("--replicas", "-n", min=1, help="Number of replica processes to run.")] = 3,
    replica_id: Annotated[
        str | None,
        typer.Option("--replica-id", help="Run only this one replica (to spread replicas over hosts)."),
    ] = None,
    data_dir: DataDir = default_data_dir(),
    bootstrap: Bootstrap = "localhost:9092",
    namespace: Namespace = "",
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of each topic (created if missing).")] = 6,
    replication_factor: Annotated[int, typer.Option(min=1, help="Replication factor of created topics.")] = 1,
    min_insync_replicas: Annotated[
        int | None, typer.Option(min=1, help="min.insync.replicas of the request and log topics.")
    ] = None,
    kafka_option: KafkaOption = [],  # noqa: B006 - Typer reads the default
) -> None:
    """Start the replicated service in the foreground (Ctrl-C or SIGTERM stops every replica)."""
    from minigit_server import bus, supervisor

    with exit_on_error():
        settings = kafka_settings(bootstrap, namespace, kafka_option)
        created = bus.ensure_topics(settings, partitions, replication_factor, min_insync_replicas)
        if created:
            err.print(f"created topics: {', '.join(created)}")
        if replica_id is not None:
            p.check_name("replica", replica_id)
            supervisor.run_replica(replica_id, settings, data_dir)
            return
        passed = ["--data-dir", str(data_dir), "--bootstrap", bootstrap, "--namespace", namespace]
        passed += [arg for option in kafka_option for arg in ("--kafka-option", option)]
        err.print(f"starting {replicas} replicas on {bootstrap}; data and logs in {data_dir}")
        ids = [str(n) for n in range(1, replicas + 1)]
        chief = supervisor.Supervisor(ids, lambda rid: supervisor.replica_command(rid, passed), data_dir / "server.log")
        raise typer.Exit(chief.run())


@app.command()
def ping(
    repo: Annotated[str, typer.Option("--repo", help="Ask the replica serving this repository's partition.")] = "ping",
    bootstrap: Bootstrap = "localhost:9092",
    namespace: Namespace = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer.")] = 30.0,
    kafka_option: KafkaOption = [],  # noqa: B006
) -> None:
    """Send one request through Kafka and print which replica answered, and how fast."""
    from minigit.transport import Connection

    with exit_on_error():
        settings = kafka_settings(bootstrap, namespace, kafka_option)
        p.check_name("repository", repo)
        started = time.monotonic()
        with Connection(settings, user="minigit-server", timeout=timeout) as connection:
            connected = time.monotonic()
            response = connection.call(connection.new_request(p.PingRequest, repo=repo))
        done = time.monotonic()
        out.print(
            f"{response.reply.message} (round trip {1000 * (done - connected):.0f} ms, "
            f"connect {1000 * (connected - started):.0f} ms)"
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
