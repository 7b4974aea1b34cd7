"""`minigit-server repo delete`: an operator's deletion of a repository.

A deletion is a ``DeleteProposal`` signed with the service's key
(``access.sign_operator``, like an account change), appended to the log partition
of the repository, where every replica applies it in order with the repository's
writes. Its outcome is read from the log, not asked of a replica: the command
replays that partition up to its record into a temporary store, with the rules
every replica applies (minigit_server.apply), so it knows what every replica
decides, even one that is down now.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from minigit.config import DEFAULT_BOOTSTRAP, MAX_TIMEOUT_S, MIN_TIMEOUT_S, KafkaSettings
from minigit.console import exit_on_error, out
from minigit.errors import MinigitError, UsageError

# The keys, the wire format, the rules and the store are imported by the command that
# uses them: `minigit-server --version` and `--help` need none.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from minigit import protocol as p
    from minigit_server import decisions
    from minigit_server.apply import Authority

# Defined before the shared options are imported from minigit_server.cli, which
# adds this app to its own at its end: either module may be imported first.
repo_app = typer.Typer(
    name="repo",
    help="Delete repositories: operator changes signed with the service's key, decided in the log by every replica.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

# The module, not its names: users_cli imports minigit_server.cli, which imports this
# module at its end, so either may be the one still being imported.
from minigit_server import users_cli  # noqa: E402
from minigit_server.cli import (  # noqa: E402 - after repo_app: see above
    Bootstrap,
    DataDir,
    Json,
    KafkaOption,
    Namespace,
    kafka_settings,
    plain,
)

DeleteTimeout = Annotated[
    float,
    typer.Option(
        min=MIN_TIMEOUT_S,
        max=MAX_TIMEOUT_S,
        help="Seconds to write the deletion and replay the repository's log partition up to it.",
    ),
]


def open_bus(settings: KafkaSettings, timeout: float):
    """The service's Kafka connections (replaced by a fake in the unit tests)."""
    from minigit_server.bus import Bus

    return Bus(settings, client_id="minigit-server-repo", bootstrap_timeout_s=min(timeout, 10.0))


def at_terminal() -> bool:
    """Whether someone can answer a question (stdin is a terminal)."""
    return sys.stdin.isatty()


def confirm_deletion(name: str, yes: bool) -> None:
    """Nothing is deleted unasked: --yes, or a yes typed at a terminal. A script
    without --yes is refused rather than left waiting for an answer."""
    if yes:
        return
    if not at_terminal():
        raise UsageError(
            f"refusing to delete {name} without confirmation",
            hint="pass --yes to delete without being asked (there is no undo)",
        )
    question = f"Delete repository {plain(name)}, every version, member and upload of it, for good?"
    if not typer.confirm(question, default=False):
        raise MinigitError(f"{name} was not deleted")


def replay_outcome(
    records, partitions: int, authority: Authority, proposal: p.DeleteProposal
) -> decisions.Outcome | None:
    """What every replica decides for ``proposal``, from its partition's records up
    to it: applied into a temporary store (on disk: the partition's content may not
    fit in memory); None if every replica skips it."""
    from minigit import protocol as p
    from minigit_server import apply, decisions
    from minigit_server.store import SqliteStore

    with tempfile.TemporaryDirectory(prefix="minigit-repo-delete-") as folder:
        store = SqliteStore(Path(folder) / "replay.sqlite")
        try:
            apply.apply_records(store, records, partitions, authority)
            known = store.get_outcome(p.log_partition(proposal.repo, partitions), proposal.request_id)
        finally:
            store.close()
    if known is None:
        return None
    return decisions.outcome_of(known, decisions.request_key(proposal), None)


def delete(name: str, settings: KafkaSettings, key: Ed25519PrivateKey, timeout: float, as_json: bool) -> None:
    """Append the signed deletion of ``name`` to its log partition, replay that
    partition up to it, and report what every replica decides; exit 1 unless deleted."""
    from minigit import identity
    from minigit import protocol as p
    from minigit_server import access
    from minigit_server.apply import Authority

    authority = Authority(settings.namespace, identity.public_key_text(key.public_key()))
    deadline = time.monotonic() + timeout
    with users_cli.connected(settings, timeout, lambda s, t: open_bus(s, t)) as bus, users_cli.quiet_apply_log():
        users_cli.check_same_key(bus.read_heartbeats(), authority.server_key, "skips this deletion")
        partitions = bus.log_partition_count()
        partition = p.log_partition(name, partitions)
        proposal = p.DeleteProposal(
            request_id=p.new_request_id(),
            repo=name,
            user="operator",
            time_ms=int(time.time() * 1000),
            proposer="operator",
        )
        proposal = access.sign_operator(key, proposal, settings.namespace)
        offset = bus.append_log(partition, name.encode(), proposal.to_bytes(), True)
        records = bus.scan_log(partition, offset + 1, max(deadline - time.monotonic(), MIN_TIMEOUT_S))
        outcome = replay_outcome(records, partitions, authority, proposal)
    if as_json:
        out.print_json(
            data={
                "repository": name,
                "status": str(outcome.status) if outcome else "skipped",
                "message": outcome.message if outcome else "",
                "partition": partition,
                "offset": offset,
            }
        )
    elif outcome is not None:
        out.print(f"{plain(name)}: {plain(outcome.message)} (log partition {partition}, offset {offset})")
    if outcome is None:
        why = access.check_proposal(proposal, authority.namespace, authority.server_key) or "its proof does not hold"
        raise MinigitError(f"every replica skips this deletion of {name}: {why}")
    if outcome.status != p.Status.ACCEPTED:
        raise MinigitError(f"cannot delete {name}: {outcome.message}")


@repo_app.command("delete")
def delete_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The repository's name.")],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Delete without asking (needed when not at a terminal).")
    ] = False,
    data_dir: DataDir = None,
    server_key: users_cli.OperatorKeyPath = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    namespace: Namespace = "",
    kafka_option: KafkaOption = None,
    timeout: DeleteTimeout = 120.0,
    as_json: Json = False,
) -> None:
    """Delete repository NAME on every replica: its versions, members, uploads.

    There is no undo. The name is free again afterwards: 'minigit init NAME'
    creates a new repository at version 1, its content uploaded again. Clones
    of the deleted repository are told to clone again. The log keeps every
    record; outcomes of past requests stay, so none can be applied again.

    Exit code 0: deleted; 1: refused (no such repository), with the reason;
    2: not confirmed (pass --yes when not at a terminal)."""
    from minigit import protocol as p

    with exit_on_error():
        p.check_name("repository", name)
        key = users_cli.load_service_key(data_dir, server_key)
        settings = kafka_settings(bootstrap, namespace, kafka_option)
        confirm_deletion(name, yes)
        delete(name, settings, key, timeout, as_json)
