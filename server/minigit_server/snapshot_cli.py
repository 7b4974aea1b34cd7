"""`minigit-server snapshot create|check|restore`: a new replica joins from a copy
of another replica's store instead of replaying the whole log
(minigit_server.snapshot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from minigit.console import err, exit_on_error, out

# Defined before the shared options are imported from minigit_server.cli, which
# adds this app to its own at its end: either module may be imported first.
snapshot_app = typer.Typer(
    name="snapshot",
    help="Copy a replica's store (while it runs) and seed a new replica with it: it then tails the log from there.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

from minigit.config import DEFAULT_BOOTSTRAP  # noqa: E402
from minigit_server.cli import (  # noqa: E402 - see above
    Bootstrap,
    DataDir,
    KafkaOption,
    Namespace,
    ServerKeyPath,
    default_data_dir,
    kafka_settings,
    plain,
)

ReplicaOption = Annotated[str, typer.Option("--replica", help="The replica id (its store is DATA_DIR/replica-ID).")]


def describe(info) -> str:
    partitions = len(info.offsets)
    owner = info.owner
    return (
        f"{info.size / 1e6:.1f} MB, schema {info.schema}, {info.repos} repositories, {info.blobs} objects, "
        f"{info.records} log records applied over {partitions} partition{'s' if partitions != 1 else ''}; "
        f"service: namespace {owner.namespace!r}, {owner.partitions} log partitions, key {owner.fingerprint}"
    )


def this_service(
    bootstrap: str, namespace: str, kafka_option: list[str] | None, data_dir: Path, server_key: Path | None
):
    """The service these options name (snapshot.Owner): its namespace, its key (loaded,
    never created) and its repo-log's partition count, asked of Kafka."""
    from minigit import identity
    from minigit.kafka_clients import INFRASTRUCTURE_ERRORS
    from minigit_server import snapshot
    from minigit_server.bus import Bus
    from minigit_server.server_key import load_server_key, server_key_path

    key = load_server_key(server_key or server_key_path(data_dir))
    settings = kafka_settings(bootstrap, namespace, kafka_option)
    bus = Bus(settings, client_id="minigit-server-snapshot", bootstrap_timeout_s=10)
    try:
        partitions = bus.partition_count(bus.topics.log, wait_s=0)
    except INFRASTRUCTURE_ERRORS as error:
        raise settings.unreachable(error) from None
    finally:
        bus.close()
    return snapshot.Owner(settings.namespace, partitions, identity.public_key_text(key.public_key()))


@snapshot_app.command("create")
def create(
    out_file: Annotated[
        Path | None, typer.Argument(metavar="OUT", help="The snapshot file to write (must not exist).")
    ] = None,
    replica: ReplicaOption = "1",
    data_dir: DataDir = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    namespace: Namespace = "",
    server_key: ServerKeyPath = None,
    kafka_option: KafkaOption = None,
) -> None:
    """Copy a replica's store to OUT, consistently, while the replica runs (SQLite's
    online backup), then check the copy. The copy records the service it belongs to
    (namespace, service key, log partitions: asked of Kafka)."""
    from minigit_server import snapshot
    from minigit_server.replica import store_path

    with exit_on_error():
        data_dir = data_dir or default_data_dir()
        source = store_path(data_dir, replica)
        target = out_file or Path(snapshot.default_name(replica))
        owner = this_service(bootstrap, namespace, kafka_option, data_dir, server_key)
        info = snapshot.create(source, target, owner)
        out.print(f"snapshot of replica {plain(replica)} written to {plain(str(target))}: {describe(info)}")


@snapshot_app.command("check")
def check(snapshot_file: Annotated[Path, typer.Argument(metavar="SNAPSHOT")]) -> None:
    """Check a snapshot (every page, the schema version, the tables, the service it
    belongs to) and say what it holds."""
    from minigit_server import snapshot

    with exit_on_error():
        info = snapshot.check(snapshot_file)
        out.print(f"{plain(str(snapshot_file))}: ok: {describe(info)}")


@snapshot_app.command("restore")
def restore(
    snapshot_file: Annotated[Path, typer.Argument(metavar="SNAPSHOT")],
    replica: Annotated[str, typer.Option("--replica", help="The id of the new replica to seed (not running).")],
    data_dir: DataDir = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    namespace: Namespace = "",
    server_key: ServerKeyPath = None,
    kafka_option: KafkaOption = None,
) -> None:
    """Seed a new replica's store with SNAPSHOT (checked first; refused if it is a
    snapshot of another service: namespace, service key or log partitions differ).
    Then start the replica: it applies the log from the snapshot's offsets on."""
    from minigit import protocol as p
    from minigit_server import snapshot
    from minigit_server.replica import store_path

    with exit_on_error():
        p.check_name("replica", replica)
        data_dir = data_dir or default_data_dir()
        target = store_path(data_dir, replica)
        owner = this_service(bootstrap, namespace, kafka_option, data_dir, server_key)
        info = snapshot.restore(snapshot_file, target, owner)
        out.print(f"replica {plain(replica)} seeded from {plain(str(snapshot_file))}: {describe(info)}")
        err.print(
            f"start it with: minigit-server start --replica-id {plain(replica)} (same --data-dir, namespace, key)"
        )
