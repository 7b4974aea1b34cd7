"""minigit: thin Typer commands over minigit.client.operations; all printing lives here."""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from minigit import __version__, identity
from minigit.client import keys, operations
from minigit.client.changes import Changes
from minigit.client.operations import PullStatus, PushStatus
from minigit.client.progress import ProgressObserver
from minigit.config import DEFAULT_BOOTSTRAP, MAX_TIMEOUT_S, MIN_TIMEOUT_S, ServerFlags, user_config_dir
from minigit.console import MESSAGE_KEEP, err, exit_on_error, out, quoted_path, shown
from minigit.errors import MinigitError, PushRejected, UsageError
from minigit.protocol import Access, Visibility

EXIT_CODES = """\b
Exit codes: 0 success; 1 the operation failed (no such repository, corrupt .minigit, bad
input); 2 usage error; 3 push rejected or pull refused; 4 Kafka or the server unreachable
or timed out; 5 another minigit command is running in this directory; 6 permission denied
or not authenticated (unknown user, wrong key, the service's pinned key changed)."""

app = typer.Typer(
    name="minigit",
    help="A git-like client for a replicated repository service reached through Apache Kafka.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "anonymous"


User = Annotated[str, typer.Option("--user", "-u", envvar="MINIGIT_USER", help="Your user name \\[default: OS user].")]
Bootstrap = Annotated[
    str | None,
    typer.Option(
        "--bootstrap",
        "-b",
        envvar="MINIGIT_BOOTSTRAP",
        help=f"Kafka bootstrap servers, HOST:PORT[,HOST:PORT...] (IPv6 as \\[::1]:9092) "
        f"\\[default: from .minigit, else {DEFAULT_BOOTSTRAP}].",
        show_default=False,
    ),
]
Namespace = Annotated[
    str | None,
    typer.Option("--namespace", envvar="MINIGIT_NAMESPACE", help="Topic prefix of the service.", show_default=False),
]
Timeout = Annotated[
    float,
    typer.Option(
        "--timeout",
        envvar="MINIGIT_TIMEOUT",
        min=MIN_TIMEOUT_S,
        max=MAX_TIMEOUT_S,
        help="Give up after this many seconds without news of the answer (the service's notice that it is working, "
        "or a valid part of the answer that gets further than before; broken answers do not count). "
        "The request is sent again after each max(5, TIMEOUT/3) seconds without news.",
    ),
]
KafkaOption = Annotated[
    list[str] | None,
    typer.Option(
        "--kafka-option",
        help="kafka-python security setting NAME=VALUE, e.g. security_protocol=SASL_SSL (also MINIGIT_KAFKA_<NAME>).",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON (for scripts).")]


def client_options(
    user: str | None, bootstrap: str | None, namespace: str | None, timeout: float, kafka_option: list[str] | None
) -> operations.ClientOptions:
    return operations.ClientOptions(
        user=user or default_user(),
        flags=ServerFlags.parse(bootstrap, namespace, kafka_option),
        timeout=timeout,
    )


def plain(value: str) -> str:
    """A one-line value (a name, an author, an address) printed as text: rich
    never reads it as markup, and control characters, line breaks included, and
    bidi controls show escaped."""
    return escape(shown(value))


def print_json(doc: object) -> None:
    out.print_json(json.dumps(doc))


def print_changes(changes: Changes, indent: str = " ") -> None:
    for code, colour, paths in (
        ("A", "green", changes.added),
        ("M", "yellow", changes.modified),
        ("D", "red", changes.deleted),
    ):
        for path in paths:
            out.print(f"{indent}[{colour}]{code}[/] {escape(quoted_path(path))}")


def summarize(changes: Changes) -> str:
    parts = [
        f"{len(v)} {k}"
        for k, v in (("added", changes.added), ("modified", changes.modified), ("deleted", changes.deleted))
        if v
    ]
    total = len(changes.added) + len(changes.modified) + len(changes.deleted)
    return f"{total} file{'s' if total != 1 else ''} changed" + (f": {', '.join(parts)}" if parts else "")


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


@app.command()
def init(
    name: Annotated[str, typer.Argument(help="Name of the new repository.")],
    message: Annotated[str, typer.Option("--message", "-m", help="Message of version 1.")] = "",
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    public: Annotated[
        bool,
        typer.Option(
            "--public/--private",
            help="Who may read it: every registered user, or only you and those you share it with. "
            "Private by default: on a cluster a class shares, work is not published by forgetting a flag.",
        ),
    ] = False,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Create repository NAME on the server from the files here (version 1); you own it."""
    with exit_on_error():
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        visibility = Visibility.PUBLIC if public else Visibility.PRIVATE
        with ProgressObserver(err, not (quiet or as_json)) as observer:
            result = operations.init_repository(Path.cwd(), name, options, message, observer, visibility)
        if as_json:
            print_json(result.to_json())
        elif not quiet:
            out.print(
                f"Created repository [bold]{plain(name)}[/] at version 1 with {len(result.changes.added)} files "
                f"on {plain(result.server)}"
            )


@app.command()
def clone(
    name: Annotated[str, typer.Argument(help="Repository to clone.")],
    directory: Annotated[
        Path | None, typer.Argument(help="Where to put it \\[default: NAME].", show_default=False)
    ] = None,
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Copy the head version of repository NAME into a new directory."""
    with exit_on_error():
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        target = directory or Path(operations.check_repo_name(name))
        if not (quiet or as_json):
            err.print(f"Cloning into '{plain(str(target))}'...")
        with ProgressObserver(err, not (quiet or as_json)) as observer:
            result = operations.clone_repository(name, target, options, observer)
        report_pull(result, quiet, as_json)


@app.command()
def pull(
    name: Annotated[
        str | None,
        typer.Argument(help="Outside a working directory: clone this repository into the current (empty) directory."),
    ] = None,
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Bring the working directory to the head version, keeping local edits."""
    with exit_on_error():
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        with ProgressObserver(err, not (quiet or as_json)) as observer:
            result = operations.pull_here(Path.cwd(), name, options, observer)
        report_pull(result, quiet, as_json)


def report_pull(result: operations.PullResult, quiet: bool, as_json: bool) -> None:
    if as_json:
        print_json(result.to_json())
        return
    if quiet:
        return
    if result.status == PullStatus.UP_TO_DATE:
        out.print("Already up to date.")
    elif result.status == PullStatus.CLONED:
        out.print(
            f"Cloned [bold]{plain(result.repository)}[/] at version {result.new_version}: "
            f"{len(result.changes.added)} files, {human_bytes(result.bytes_received)}"
        )
    else:
        out.print(f"Updating {plain(result.repository)}: version {result.old_version} -> {result.new_version}")
        print_changes(result.changes)
        out.print(f" {summarize(result.changes)}")
    if result.kept_local and result.status != PullStatus.CLONED:
        err.print(f"Kept your local changes to: {escape(', '.join(map(quoted_path, result.kept_local)))}")


@app.command()
def push(
    message: Annotated[str, typer.Option("--message", "-m", help="Describe the new version.")] = "",
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Send the local changes as the next version (only if you are at the head)."""
    with exit_on_error():
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        try:
            with ProgressObserver(err, not (quiet or as_json)) as observer:
                result = operations.push_workdir(Path.cwd(), options, message, observer)
        except PushRejected as rejected:
            if not as_json:
                err.print(f"To {plain(rejected.server)} ({plain(rejected.repo)})")
                err.print(f" [red]! \\[rejected][/]        version {rejected.base} (fetch first)")
            raise
        if as_json:
            print_json(result.to_json())
        elif quiet:
            return
        elif result.status == PushStatus.UP_TO_DATE:
            err.print("Everything up-to-date")
        else:
            out.print(f"To {plain(result.server)} ({plain(result.repository)})")
            out.print(f"   version {result.old_version} -> {result.new_version}  ({summarize(result.changes)})")


@app.command()
def status(as_json: Json = False) -> None:
    """Show local changes against the local version (does not contact the server)."""
    with exit_on_error():
        result = operations.read_status(Path.cwd())
        if as_json:
            print_json(result.to_json())
            return
        out.print(
            f"On repository [bold]{plain(result.repository)}[/], version {result.version} ({plain(result.server)})"
        )
        if result.changes.empty:
            out.print("nothing to push, working directory clean")
            return
        out.print('Changes not pushed yet:\n  (use "minigit push" to send them)')
        for label, colour, paths in (
            ("added:   ", "green", result.changes.added),
            ("modified:", "yellow", result.changes.modified),
            ("deleted: ", "red", result.changes.deleted),
        ):
            for path in paths:
                out.print(f"\t[{colour}]{label} {escape(quoted_path(path))}[/]")


@app.command()
def log(
    max_count: Annotated[int, typer.Option("--max-count", "-n", min=1, max=1000, help="Show at most this many.")] = 100,
    repo: Annotated[str | None, typer.Option("--repo", help="A repository other than this directory's.")] = None,
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Show whether each version's signature checks against its author's key as the service "
            "attested it when the version was made; exit 1 if one does not.",
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """Show the versions of the repository, newest first."""
    with exit_on_error():
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        name, entries, problems = operations.read_log(Path.cwd(), options, max_count, repo)
        if as_json:
            versions = [
                {**e.to_dict(), "verified": problem is None} for e, problem in zip(entries, problems, strict=True)
            ]
            print_json({"repository": name, "versions": versions})
        else:
            print_log(entries, problems if verify else None)
        if verify and (bad := sum(problem is not None for problem in problems)):
            raise MinigitError(f"{bad} of {len(entries)} versions failed verification", hint="see each version above")


def print_log(entries: list, problems: list[str | None] | None) -> None:
    for number, entry in enumerate(entries):
        when = time.strftime("%a %b %d %H:%M:%S %Y %z", time.localtime(entry.time_ms / 1000))
        out.print(f"[yellow]version {entry.version}[/]")
        out.print(f"Author: {plain(entry.author)}")  # one line: a line break in it shows as \n
        if problems is not None:
            problem = problems[number]
            if problem is None:
                fingerprint = identity.fingerprint(identity.parse_public_key(entry.signed.key))
                out.print(f"Signed: [green]good[/] signature by {plain(entry.author)} ({fingerprint})")
            else:
                out.print(f"Signed: [red]BAD[/] ({plain(problem)})")
        out.print(f"Date:   {when}\n")
        # control characters of other users' messages shown as C escapes (\033), never sent to the terminal;
        # only the message body keeps its line breaks (and tabs)
        for line in shown(entry.message or "(no message)", MESSAGE_KEEP).rstrip("\n").split("\n"):
            out.print(f"    {escape(line)}")
        out.print()


@app.command()
def share(
    name: Annotated[str, typer.Argument(help="Repository (you need admin on it).")],
    member: Annotated[str, typer.Argument(help="User to give access to.")],
    read: Annotated[bool, typer.Option("--read", help="Clone, pull and log.")] = False,
    write: Annotated[bool, typer.Option("--write", help="Read, and push.")] = False,
    admin: Annotated[bool, typer.Option("--admin", help="Write, and share and change visibility.")] = False,
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    quiet: Quiet = False,
) -> None:
    """Give MEMBER read, write or admin access to repository NAME."""
    with exit_on_error():
        levels = [
            level for level, chosen in ((Access.READ, read), (Access.WRITE, write), (Access.ADMIN, admin)) if chosen
        ]
        if len(levels) != 1:
            raise UsageError("choose one of --read, --write, --admin")
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        reply = operations.share_repository(Path.cwd(), options, name, member, levels[0])
        if not quiet:
            out.print(plain(reply.message))


@app.command()
def unshare(
    name: Annotated[str, typer.Argument(help="Repository (you need admin on it).")],
    member: Annotated[str, typer.Argument(help="User whose access to take away.")],
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    quiet: Quiet = False,
) -> None:
    """Take MEMBER's access to repository NAME away (a public one stays readable)."""
    with exit_on_error():
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        reply = operations.share_repository(Path.cwd(), options, name, member, Access.NONE)
        if not quiet:
            out.print(plain(reply.message))


@app.command()
def visibility(
    name: Annotated[str, typer.Argument(help="Repository (you need admin on it).")],
    level: Annotated[Visibility, typer.Argument(help="public: every registered user reads it; private: members only.")],
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    quiet: Quiet = False,
) -> None:
    """Make repository NAME public or private."""
    with exit_on_error():
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        reply = operations.set_visibility(Path.cwd(), options, name, level)
        if not quiet:
            out.print(plain(reply.message))


auth_app = typer.Typer(
    name="auth",
    short_help="Your key pair, which proves who sends your requests.",
    help="Your key pair: the Ed25519 key that signs your requests, one per user name, kept in "
    "$MINIGIT_CONFIG_DIR/keys (else $XDG_CONFIG_HOME/minigit/keys, else ~/.config/minigit/keys).",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(auth_app)

KeyUser = Annotated[
    str | None, typer.Option("--user", "-u", envvar="MINIGIT_USER", help="Whose key \\[default: OS user].")
]


@auth_app.command()
def keygen(user: KeyUser = None, quiet: Quiet = False, as_json: Json = False) -> None:
    """Create your key pair (never replaces one: a new key is a new identity)."""
    with exit_on_error():
        report_key(keys.generate_key(user_config_dir(), user or default_user()), quiet, as_json)


@auth_app.command()
def show(user: KeyUser = None, as_json: Json = False) -> None:
    """Print your public key and its fingerprint (to give to whoever registers users)."""
    with exit_on_error():
        report_key(keys.key_info(user_config_dir(), user or default_user()), False, as_json)


@auth_app.command()
def register(
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    quiet: Quiet = False,
) -> None:
    """Register your public key under your user name on the service (first come claims a name,
    where registration is open; any command does it for you on first use)."""
    with exit_on_error():
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        reply = operations.register_account(Path.cwd(), options)
        if not quiet:
            out.print(f"{plain(options.user)}: {plain(reply.message)}")


@auth_app.command()
def rotate(
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Replace your registered key by a new one (the request is signed with the old key,
    which is kept as KEY.old)."""
    with exit_on_error():
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        report_key(operations.rotate_key(Path.cwd(), options), quiet, as_json)


def report_key(info: keys.KeyInfo, quiet: bool, as_json: bool) -> None:
    if as_json:
        print_json(info.to_json())
        return
    if info.created:
        err.print(f"Created a key for {plain(info.user)} in {escape(quoted_path(str(info.path)))}")
    if not quiet:
        out.print(f"user         {plain(info.user)}")
        out.print(f"public key   {info.public_key}")
        out.print(f"fingerprint  {info.fingerprint}")
        out.print(f"key file     {escape(quoted_path(str(info.path)))}")


def show_version(value: bool) -> None:
    if value:
        out.print(f"minigit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """A git-like client for a replicated repository service reached through Apache Kafka."""


def main() -> None:
    app()
