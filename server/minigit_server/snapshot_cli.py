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

from minigit_server.cli import DataDir, default_data_dir, plain  # noqa: E402 - see above

ReplicaOption = Annotated[str, typer.Option("--replica", help="The replica id (its store is DATA_DIR/replica-ID).")]


def describe(info) -> str:
    partitions = len(info.offsets)
    return (
        f"{info.size / 1e6:.1f} MB, schema {info.schema}, {info.repos} repositories, {info.blobs} objects, "
        f"{info.records} log records applied over {partitions} partition{'s' if partitions != 1 else ''}"
    )


@snapshot_app.command("create")
def create(
    out_file: Annotated[
        Path | None, typer.Argument(metavar="OUT", help="The snapshot file to write (must not exist).")
    ] = None,
    replica: ReplicaOption = "1",
    data_dir: DataDir = None,
) -> None:
    """Copy a replica's store to OUT, consistently, while the replica runs (SQLite's
    online backup), then check the copy."""
    from minigit_server import snapshot
    from minigit_server.replica import store_path

    with exit_on_error():
        source = store_path(data_dir or default_data_dir(), replica)
        target = out_file or Path(snapshot.default_name(replica))
        info = snapshot.create(source, target)
        out.print(f"snapshot of replica {plain(replica)} written to {plain(str(target))}: {describe(info)}")


@snapshot_app.command("check")
def check(snapshot_file: Annotated[Path, typer.Argument(metavar="SNAPSHOT")]) -> None:
    """Check a snapshot (every page, the schema version, the tables) and say what it holds."""
    from minigit_server import snapshot

    with exit_on_error():
        info = snapshot.check(snapshot_file)
        out.print(f"{plain(str(snapshot_file))}: ok: {describe(info)}")


@snapshot_app.command("restore")
def restore(
    snapshot_file: Annotated[Path, typer.Argument(metavar="SNAPSHOT")],
    replica: Annotated[str, typer.Option("--replica", help="The id of the new replica to seed (not running).")],
    data_dir: DataDir = None,
) -> None:
    """Seed a new replica's store with SNAPSHOT (checked first). Then start the
    replica: it applies the log from the snapshot's offsets on."""
    from minigit import protocol as p
    from minigit_server import snapshot
    from minigit_server.replica import store_path

    with exit_on_error():
        p.check_name("replica", replica)
        target = store_path(data_dir or default_data_dir(), replica)
        info = snapshot.restore(snapshot_file, target)
        out.print(f"replica {plain(replica)} seeded from {plain(str(snapshot_file))}: {describe(info)}")
        err.print(
            f"start it with: minigit-server start --replica-id {plain(replica)} (same --data-dir, namespace, key)"
        )
