"""`minigit-server users add | remove | list`: an operator's account changes.

An operator's change is an ``AdminProposal`` signed with the service's key
(``access.sign_operator``), appended to the log partition of the name, where
every replica decides it in order with that account's other changes. Its
outcome is read from the log, not asked of a replica: the command folds the
name's partition up to its record with the rules every replica applies
(minigit_server.accounts), so it knows what every replica will decide, even
one that is down now. ``list`` folds the whole log the same way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from minigit.config import DEFAULT_BOOTSTRAP, MAX_TIMEOUT_S, MIN_TIMEOUT_S, KafkaSettings
from minigit.console import err, exit_on_error, out
from minigit.errors import MinigitError, ServerUnreachable

# The keys, the wire format, the accounts' rules and the health checks are imported
# by the commands that use them: `minigit-server --version` and `--help` need none
# (cryptography, the wire format and the store were ~40 ms of them).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from minigit import protocol as p
    from minigit_server import access

# Defined before the shared options are imported from minigit_server.cli, which
# adds this app to its own at its end: either module may be imported first.
users_app = typer.Typer(
    name="users",
    help="Add, remove and list the service's users: account changes signed with the service's key, "
    "decided in the log by every replica.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

from minigit_server.cli import (  # noqa: E402 - after users_app: see above
    Bootstrap,
    DataDir,
    Json,
    KafkaOption,
    Namespace,
    default_data_dir,
    kafka_settings,
    plain,
)

OperatorKeyPath = Annotated[
    Path | None,
    typer.Option(
        "--server-key",
        envvar="MINIGIT_SERVER_KEY",
        help="The service's Ed25519 key file, as given to 'minigit-server start' (never created here).",
        show_default="DATA_DIR/keys/server.key",
    ),
]
Timeout = Annotated[
    float,
    typer.Option(min=MIN_TIMEOUT_S, max=MAX_TIMEOUT_S, help="Seconds to write the change and read the log up to it."),
]
ListTimeout = Annotated[
    float,
    typer.Option(min=MIN_TIMEOUT_S, max=MAX_TIMEOUT_S, help="Seconds to read each log partition."),
]


def load_service_key(data_dir: Path | None, path: Path | None) -> Ed25519PrivateKey:
    """The key the replicas use: ``path``, else ``<data_dir>/keys/server.key``. Never
    created here: a change signed with a key the replicas do not check is skipped
    by every one of them."""
    from minigit import key_files
    from minigit_server.server_key import ELSEWHERE, load_server_key, server_key_path

    if path is not None:
        return load_server_key(path)
    default = server_key_path(data_dir or default_data_dir())
    key = key_files.load_key_file(default, ELSEWHERE)
    if key is None:
        raise MinigitError(
            f"no service key in {default}",
            hint="give the service's --data-dir (MINIGIT_DATA_DIR) or --server-key: an operator's change is "
            "signed with the key the replicas use, never with a new one",
        )
    return key


def open_bus(settings: KafkaSettings, timeout: float):
    """The service's Kafka connections (replaced by a fake in the unit tests)."""
    from minigit_server.bus import Bus

    return Bus(settings, client_id="minigit-server-users", bootstrap_timeout_s=min(timeout, 10.0))


@contextlib.contextmanager
def connected(settings: KafkaSettings, timeout: float, opener: Callable | None = None) -> Iterator:
    """The service's Kafka connections (``opener``'s, else ``open_bus``'s), Kafka's
    failures turned into the operator's errors."""
    from minigit.kafka_clients import INFRASTRUCTURE_ERRORS

    bus = None
    try:
        bus = (opener or open_bus)(settings, timeout)
        yield bus
    except TimeoutError as error:  # reading the log took too long (an OSError too: caught first)
        raise ServerUnreachable(str(error), hint="raise --timeout") from None
    except INFRASTRUCTURE_ERRORS as error:
        raise settings.unreachable(error) from None
    finally:
        if bus is not None:
            bus.close()


@contextlib.contextmanager
def quiet_apply_log() -> Iterator[None]:
    """The fold skips what every replica skips; the replicas log why, the operator's
    command does not (a hostile record would otherwise print on every list)."""
    logger = logging.getLogger("minigit.apply")
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def check_same_key(beats: list[p.Heartbeat], public_key: str, odd_ones: str) -> None:
    """Refuse a key that is not the one the replicas check the log with (they say
    which in their heartbeats): they would skip every change it signs. A replica
    alone with another key is named, ``odd_ones`` saying what that means (verify
    fails on it), not obeyed."""
    from minigit_server import health
    from minigit_server.replica import HEARTBEAT_INTERVAL_S

    live = health.live_beats(beats, int(time.time() * 1000), HEARTBEAT_INTERVAL_S)
    check = health.check_server_keys(live or beats)
    mine = health.key_fingerprint(public_key)
    reported = sorted({key for key in check.keys.values() if key})
    if not reported:
        return  # no replica said (none ever ran, or all older than the field)
    if check.majority != mine and (check.majority is not None or mine not in reported):
        theirs = check.majority or " or ".join(reported)
        raise MinigitError(
            f"this service key ({mine}) is not the one the replicas use ({theirs}): they skip every change it signs",
            hint="give the service's own --data-dir or --server-key",
        )
    if odd := [replica for replica in check.differing if check.keys[replica] != mine]:
        err.print(
            f"warning: replica {plain(', '.join(odd))} uses another service key: it {odd_ones} "
            "(see 'minigit-server verify')"
        )


def account_json(account: access.Account | None, partitions: int) -> dict | None:
    from minigit import protocol as p
    from minigit_server import health

    if account is None:
        return None
    return {
        "name": account.name,
        "state": "removed" if account.removed else "active",
        "key": account.key,
        "fingerprint": health.key_fingerprint(account.key),
        "partition": p.log_partition(account.name, partitions),
        "since": account.since,
    }


def describe(name: str, account: access.Account | None, partitions: int) -> str:
    from minigit import protocol as p
    from minigit_server import health

    where = f"log partition {p.log_partition(name, partitions)}"
    if account is None:
        return f"{plain(name)} has no account ({where})"
    if account.removed:
        return f"{plain(name)} is removed since offset {account.since} of {where} (the name stays taken)"
    fingerprint = health.key_fingerprint(account.key)
    return f"{plain(name)} is active with key {fingerprint} since offset {account.since} of {where}"


def change(
    op: p.AdminOp,
    name: str,
    public_key: str,
    settings: KafkaSettings,
    key: Ed25519PrivateKey,
    timeout: float,
    as_json: bool,
) -> None:
    """Append the signed change of ``name`` to its log partition, fold that partition
    up to it, and report what every replica decides; exit 1 unless it is done."""
    from minigit import identity
    from minigit import protocol as p
    from minigit_server import access
    from minigit_server.accounts import AccountsFold
    from minigit_server.apply import Authority

    authority = Authority(settings.namespace, identity.public_key_text(key.public_key()))
    deadline = time.monotonic() + timeout
    with connected(settings, timeout) as bus, quiet_apply_log():
        check_same_key(bus.read_heartbeats(), authority.server_key, "skips this change")
        partitions = bus.log_partition_count()
        partition = p.log_partition(name, partitions)
        proposal = p.AdminProposal(
            request_id=p.new_request_id(),
            repo=name,
            user=name,
            time_ms=int(time.time() * 1000),
            proposer="operator",
            op=op,
            public_key=public_key,
        )
        proposal = access.sign_operator(key, proposal, settings.namespace)
        offset = bus.append_log(partition, name.encode(), proposal.to_bytes(), True)
        fold = AccountsFold(partitions, authority)
        fold.feed(bus.scan_log(partition, offset + 1, max(deadline - time.monotonic(), MIN_TIMEOUT_S)))
    outcome = fold.outcome(proposal)
    account = fold.account(name)
    if as_json:
        out.print_json(
            data={
                "name": name,
                "op": str(op),
                "status": str(outcome.status) if outcome else "skipped",
                "message": outcome.message if outcome else "",
                "partition": partition,
                "offset": offset,
                "account": account_json(account, partitions),
            }
        )
    else:
        if outcome is not None:
            out.print(f"{plain(name)}: {plain(outcome.message)} (log partition {partition}, offset {offset})")
        out.print(describe(name, account, partitions))
    if outcome is None:
        why = access.check_proposal(proposal, authority.namespace, authority.server_key) or "its proof does not hold"
        raise MinigitError(f"every replica skips this change of {name}: {why}")
    if outcome.status not in (p.Status.ACCEPTED, p.Status.UP_TO_DATE):
        raise MinigitError(f"cannot {op} {name}: {outcome.message}")


@users_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The user name.")],
    public_key: Annotated[
        str, typer.Argument(help="The user's public key (ed25519:…, from 'minigit auth show' on their machine).")
    ],
    data_dir: DataDir = None,
    server_key: OperatorKeyPath = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    namespace: Namespace = "",
    kafka_option: KafkaOption = None,
    timeout: Timeout = 30.0,
    as_json: Json = False,
) -> None:
    """Register NAME with PUBLIC-KEY, or give NAME a new key (a removed name back too).

    Prints the account as every replica will hold it. Exit code 0: done (or already
    so); 1: refused, with the reason."""
    from minigit import identity
    from minigit import protocol as p

    with exit_on_error():
        p.check_name("user", name)
        identity.parse_public_key(public_key)
        key = load_service_key(data_dir, server_key)
        settings = kafka_settings(bootstrap, namespace, kafka_option)
        change(p.AdminOp.ADD, name, public_key, settings, key, timeout, as_json)


@users_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="The user name.")],
    data_dir: DataDir = None,
    server_key: OperatorKeyPath = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    namespace: Namespace = "",
    kafka_option: KafkaOption = None,
    timeout: Timeout = 30.0,
    as_json: Json = False,
) -> None:
    """Remove NAME: its key no longer signs anything; the name stays taken.

    Whoever claimed the name next would inherit what was shared with it, so nobody
    can ('users add' gives it back). Exit code 0: removed; 1: refused (no such
    user), with the reason."""
    from minigit import protocol as p

    with exit_on_error():
        p.check_name("user", name)
        key = load_service_key(data_dir, server_key)
        settings = kafka_settings(bootstrap, namespace, kafka_option)
        change(p.AdminOp.REMOVE, name, "", settings, key, timeout, as_json)


@users_app.command("list")
def list_users(
    data_dir: DataDir = None,
    server_key: OperatorKeyPath = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    namespace: Namespace = "",
    kafka_option: KafkaOption = None,
    timeout: ListTimeout = 120.0,
    as_json: Json = False,
) -> None:
    """List every user the log holds, removed ones too.

    Folded from the whole log with the rules every replica applies: what every
    replica holds once it has applied the log."""
    from rich.table import Table

    from minigit import identity
    from minigit_server.accounts import AccountsFold
    from minigit_server.apply import Authority

    with exit_on_error():
        key = load_service_key(data_dir, server_key)
        settings = kafka_settings(bootstrap, namespace, kafka_option)
        authority = Authority(settings.namespace, identity.public_key_text(key.public_key()))
        with connected(settings, timeout) as bus, quiet_apply_log():
            check_same_key(bus.read_heartbeats(), authority.server_key, "may hold other accounts")
            ends = bus.log_end_offsets()
            fold = AccountsFold(len(ends), authority)
            for partition, end in sorted(ends.items()):
                fold.feed(bus.scan_log(partition, end, timeout))
        rows = [account_json(account, fold.partitions) for account in fold.accounts()]
        if as_json:
            out.print_json(data={"users": rows})
            return
        if not rows:
            out.print("no users in the log")
            return
        table = Table(title="users (folded from the log)", title_justify="left")
        for column in ("user", "state", "key fingerprint", "since"):
            table.add_column(column, overflow="fold")
        for row in rows:
            since = f"partition {row['partition']} offset {row['since']}"
            state = "[green]active[/]" if row["state"] == "active" else "[dim]removed[/]"
            table.add_row(plain(row["name"]), state, row["fingerprint"] if row["key"] else "-", since)
        out.print(table)
