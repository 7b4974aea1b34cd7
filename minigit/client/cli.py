"""minigit: thin Typer commands over minigit.client.operations; all printing lives here."""

from __future__ import annotations

import contextlib
import copy
import enum
import getpass
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from minigit import __version__, cli_values, console
from minigit.config import DEFAULT_BOOTSTRAP, MAX_TIMEOUT_S, MIN_TIMEOUT_S, ServerFlags, user_config_dir
from minigit.console import MESSAGE_KEEP, escape, exit_on_error, quoted_path, shown, version_option
from minigit.errors import MergeConflicts, MinigitError, PushRejected, UsageError

# What a command does is imported when it runs, not here: `minigit --version` and
# `--help` (and every command) would otherwise pay for Kafka, cryptography, the
# wire format and the working directory code before doing anything
# (tests/unit/client/test_cli_imports.py checks it).
if TYPE_CHECKING:
    from minigit.client import keys, operations, textdiff
    from minigit.client.changes import Changes
    from minigit.client.merging import ConflictReport

# Typer checks option values with pydantic (90 ms to import): plain values are checked without it.
cli_values.install()

EXIT_CODES = """\b
Exit codes: 0 success; 1 the operation failed (no such repository, corrupt .minigit, bad
input); 2 usage error; 3 push rejected, pull refused or left conflicts to resolve; 4 Kafka
or the server unreachable or timed out; 5 another minigit command is running in this directory; 6 permission denied
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
    from minigit.client import operations

    return operations.ClientOptions(
        user=user or default_user(),
        flags=ServerFlags.parse(bootstrap, namespace, kafka_option),
        timeout=timeout,
    )


def progress(wanted: bool) -> contextlib.AbstractContextManager:
    """The progress bars (on a terminal's stderr, if ``wanted``): a ProgressObserver,
    else None (the operation's own silent observer), without importing rich.progress."""
    if not wanted:
        return contextlib.nullcontext()
    from minigit.client.progress import ProgressObserver

    return ProgressObserver(console.err, True)


def plain(value: str) -> str:
    """A one-line value (a name, an author, an address) printed as text: rich
    never reads it as markup, and control characters, line breaks included, and
    bidi controls show escaped."""
    return escape(shown(value))


def print_json(doc: dict) -> None:
    """The --json document: ``format`` and ISO times added, errors too (docs/json.md)."""
    console.print_json(doc)


def print_changes(changes: Changes, indent: str = " ") -> None:
    for code, colour, paths in (
        ("A", "green", changes.added),
        ("M", "yellow", changes.modified),
        ("D", "red", changes.deleted),
    ):
        for path in paths:
            console.out.print(f"{indent}[{colour}]{code}[/] {escape(quoted_path(path))}")


def display_path(path: str) -> str:
    """A path from the disk as git shows it; bytes that are not UTF-8 (kept by the
    scan as surrogate escapes) show as escapes too, never raw."""
    raw = path.encode("utf-8", "surrogateescape")
    return quoted_path(raw.decode("utf-8", "backslashreplace"))


def warn_untrackable(untrackable: list[tuple[str, str]]) -> None:
    for path, reason in untrackable:
        console.err.print(f"[yellow]warning:[/] not tracked: {escape(display_path(path))} ({escape(shown(reason))})")


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
    from minigit.client import operations
    from minigit.protocol import Visibility

    with exit_on_error(json_output=as_json):
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        visibility = Visibility.PUBLIC if public else Visibility.PRIVATE
        with progress(not (quiet or as_json)) as observer:
            result = operations.init_repository(Path.cwd(), name, options, message, observer, visibility)
        if as_json:
            print_json(result.to_json())
        elif not quiet:
            console.out.print(
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
    from minigit.client import operations, preflight

    with exit_on_error(json_output=as_json):
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        target = preflight.clone_destination(name, directory)  # before a word is printed
        if not (quiet or as_json):
            console.err.print(f"Cloning into '{plain(str(target))}'...")
        with progress(not (quiet or as_json)) as observer:
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
    ours: Annotated[
        bool, typer.Option("--ours", help="Files changed on both sides keep your version (no merge, no markers).")
    ] = False,
    theirs: Annotated[
        bool,
        typer.Option(
            "--theirs", help="Files changed on both sides take upstream's version; yours is kept as PATH.orig."
        ),
    ] = False,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Bring the working directory to the head version, keeping local edits. A file changed on both
    sides is merged line by line; overlapping edits are marked with <<<<<<< ======= >>>>>>> (exit 3)
    and a file that is not text keeps yours, with upstream's beside it as PATH.theirs."""
    from minigit.client import operations
    from minigit.client.changes import Strategy

    with exit_on_error(json_output=as_json) as found:
        if ours and theirs:
            raise UsageError("choose one of --ours and --theirs")
        strategy = Strategy.OURS if ours else Strategy.THEIRS if theirs else Strategy.MERGE
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        with progress(not (quiet or as_json)) as observer:
            result = operations.pull_here(Path.cwd(), name, options, observer, strategy)
        if result.unresolved:  # the pull is done; the error says what is left (its JSON holds the result)
            if as_json:
                found.update(result.to_json())
            else:
                report_pull(result, quiet, as_json=False)
            raise MergeConflicts(result.new_version, result.unresolved)
        report_pull(result, quiet, as_json)


def report_pull(result: operations.PullResult, quiet: bool, as_json: bool) -> None:
    from minigit.client.operations import PullStatus

    if as_json:
        print_json(result.to_json())
        return
    if result.settled:
        console.err.print(f"note: {escape(result.settled)}")
    if quiet:
        return
    if result.status == PullStatus.UP_TO_DATE:
        console.out.print("Already up to date.")
    elif result.status == PullStatus.CLONED:
        console.out.print(
            f"Cloned [bold]{plain(result.repository)}[/] at version {result.new_version}: "
            f"{len(result.changes.added)} files, {human_bytes(result.bytes_received)}"
        )
    else:
        console.out.print(f"Updating {plain(result.repository)}: version {result.old_version} -> {result.new_version}")
        print_changes(result.changes)
        console.out.print(f" {summarize(result.changes)}")
    if result.kept_local and result.status != PullStatus.CLONED:
        console.err.print(f"Kept your local changes to: {escape(', '.join(map(quoted_path, result.kept_local)))}")
    for conflict in result.conflicts:
        print_conflict(conflict)


CONFLICT_LINES = {
    "merged": ("green", "Auto-merging {path}"),
    "conflict": ("red", "CONFLICT (content): merge conflict in {path}: {note}"),
    "both": ("red", "CONFLICT (binary): {note}"),
    "kept-yours": ("yellow", "CONFLICT (modify/delete): {path} {note}"),
    "took-theirs": ("yellow", "CONFLICT (delete/modify): {path}: {note}"),
    "ours": ("yellow", "Kept yours: {path}"),
    "theirs": ("yellow", "{path}: {note}"),
}


def print_conflict(conflict: ConflictReport) -> None:
    colour, text = CONFLICT_LINES[conflict.resolution]
    line = text.format(path=quoted_path(conflict.path), note=conflict.note)
    console.err.print(f"[{colour}]{escape(line)}[/]")


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
    from minigit.client import operations
    from minigit.client.operations import PushStatus

    with exit_on_error(json_output=as_json):
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        try:
            with progress(not (quiet or as_json)) as observer:
                result = operations.push_workdir(Path.cwd(), options, message, observer)
        except PushRejected as rejected:
            if not as_json:
                console.err.print(f"To {plain(rejected.server)} ({plain(rejected.repo)})")
                console.err.print(f" [red]! \\[rejected][/]        version {rejected.base} (fetch first)")
            raise
        if result.settled and not as_json:
            console.err.print(f"note: {escape(result.settled)}")
        if not as_json:
            warn_untrackable(result.untrackable)
        if as_json:
            print_json(result.to_json())
        elif quiet:
            return
        elif result.status == PushStatus.UP_TO_DATE:
            console.err.print("Everything up-to-date")
        else:
            console.out.print(f"To {plain(result.server)} ({plain(result.repository)})")
            console.out.print(f"   version {result.old_version} -> {result.new_version}  ({summarize(result.changes)})")


@app.command()
def status(
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    as_json: Json = False,
) -> None:
    """Show local changes against the local version (does not contact the server, unless a push
    was interrupted: then it asks what became of it)."""
    from minigit.client import operations

    with exit_on_error(json_output=as_json):
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        result = operations.read_status(Path.cwd(), options)
        if as_json:
            print_json(result.to_json())
            return
        if result.settled:
            console.err.print(f"note: {escape(result.settled)}")
        console.out.print(
            f"On repository [bold]{plain(result.repository)}[/], version {result.version} ({plain(result.server)})"
        )
        if result.detached:
            console.out.print(
                f"[yellow]Viewing version {result.version}, an older version (read-only: push refuses here)[/]\n"
                '  (use "minigit checkout --latest" to go back to the head)'
            )
        if result.conflicts:
            console.out.print(
                "Unresolved conflicts:\n  (fix them: remove the markers, or choose between PATH and PATH.theirs)"
            )
            for path in result.conflicts:
                console.out.print(f"\t[red]both modified: {escape(quoted_path(path))}[/]")
        if result.untrackable:
            console.out.print("Files that cannot be tracked:\n  (rename them, or list them in .minigitignore)")
            for path, reason in result.untrackable:
                console.out.print(f"\t[red]{escape(display_path(path))}[/]: {escape(shown(reason))}")
        if result.changes.empty:
            if not result.conflicts:
                console.out.print("nothing to push, working directory clean")
            return
        console.out.print('Changes not pushed yet:\n  (use "minigit push" to send them)')
        for label, colour, paths in (
            ("added:   ", "green", result.changes.added),
            ("modified:", "yellow", result.changes.modified),
            ("deleted: ", "red", result.changes.deleted),
        ):
            for path in paths:
                console.out.print(f"\t[{colour}]{label} {escape(quoted_path(path))}[/]")


@app.command()
def log(
    paths: Annotated[
        list[str] | None,
        typer.Argument(help="Only versions that changed these files or folders (after --).", show_default=False),
    ] = None,
    max_count: Annotated[int, typer.Option("--max-count", "-n", min=1, max=1000, help="Show at most this many.")] = 100,
    repo: Annotated[str | None, typer.Option("--repo", help="A repository other than this directory's.")] = None,
    stat: Annotated[bool, typer.Option("--stat", help="List the files each version changed.")] = False,
    oneline: Annotated[bool, typer.Option("--oneline", help="One line per version.")] = False,
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
    from minigit.client import operations

    with exit_on_error(json_output=as_json) as found:
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        name, entries, problems = operations.read_log(Path.cwd(), options, max_count, repo, paths or [], stat)
        if as_json:
            versions = [
                {**e.to_dict(), "verified": problem is None} for e, problem in zip(entries, problems, strict=True)
            ]
            found.update(repository=name, versions=versions)  # in the error's document too, if --verify fails
        elif oneline:
            for entry in entries:
                first = (entry.message or "(no message)").split("\n", 1)[0]
                console.out.print(f"[yellow]{entry.version}[/] {escape(shown(first))}")
                print_entry_changes(entry, stat)
        else:
            print_log(entries, problems if verify else None, stat)
        if verify and (bad := sum(problem is not None for problem in problems)):
            hint = "see the versions whose 'verified' is false" if as_json else "see each version above"
            raise MinigitError(f"{bad} of {len(entries)} versions failed verification", hint=hint)
        if as_json:
            print_json(found)


def print_entry_changes(entry, stat: bool) -> None:
    """The files a version changed (``log --stat``): A/M/D, the path, its size."""
    if not stat:
        return
    for change in entry.changes:
        colour = {"A": "green", "M": "yellow", "D": "red"}.get(change.kind, "")
        console.out.print(
            f" [{colour}]{change.kind}[/] {escape(quoted_path(change.path))} ({human_bytes(change.size)})"
        )
    if entry.changes_more:
        console.out.print(f" ... and {entry.changes_more} more")
    count = len(entry.changes) + entry.changes_more
    console.out.print(f" {count} file{'s' if count != 1 else ''} changed\n")


def print_log(entries: list, problems: list[str | None] | None, stat: bool = False) -> None:
    from minigit import identity

    for number, entry in enumerate(entries):
        when = time.strftime("%a %b %d %H:%M:%S %Y %z", time.localtime(entry.time_ms / 1000))
        console.out.print(f"[yellow]version {entry.version}[/]")
        console.out.print(f"Author: {plain(entry.author)}")  # one line: a line break in it shows as \n
        if problems is not None:
            problem = problems[number]
            if problem is None:
                fingerprint = identity.fingerprint(identity.parse_public_key(entry.signed.key))
                console.out.print(f"Signed: [green]good[/] signature by {plain(entry.author)} ({fingerprint})")
            else:
                console.out.print(f"Signed: [red]BAD[/] ({plain(problem)})")
        console.out.print(f"Date:   {when}\n")
        # control characters of other users' messages shown as C escapes (\033), never sent to the terminal;
        # only the message body keeps its line breaks (and tabs)
        for line in shown(entry.message or "(no message)", MESSAGE_KEEP).rstrip("\n").split("\n"):
            console.out.print(f"    {escape(line)}")
        console.out.print()
        print_entry_changes(entry, stat)


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
    from minigit.client import operations
    from minigit.protocol import Access

    with exit_on_error():
        levels = [
            level for level, chosen in ((Access.READ, read), (Access.WRITE, write), (Access.ADMIN, admin)) if chosen
        ]
        if len(levels) != 1:
            raise UsageError("choose one of --read, --write, --admin")
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        reply = operations.share_repository(Path.cwd(), options, name, member, levels[0])
        if not quiet:
            console.out.print(plain(reply.message))


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
    from minigit.client import operations
    from minigit.protocol import Access

    with exit_on_error():
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        reply = operations.share_repository(Path.cwd(), options, name, member, Access.NONE)
        if not quiet:
            console.out.print(plain(reply.message))


class VisibilityLevel(enum.StrEnum):
    """The choices of `minigit visibility`: protocol.Visibility's values, copied so that
    building the commands (for --help too) does not import the wire format."""

    PUBLIC = "public"
    PRIVATE = "private"


@app.command()
def visibility(
    name: Annotated[str, typer.Argument(help="Repository (you need admin on it).")],
    level: Annotated[
        VisibilityLevel, typer.Argument(help="public: every registered user reads it; private: members only.")
    ],
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    quiet: Quiet = False,
) -> None:
    """Make repository NAME public or private."""
    from minigit.client import operations
    from minigit.protocol import Visibility

    with exit_on_error():
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        reply = operations.set_visibility(Path.cwd(), options, name, Visibility(level))
        if not quiet:
            console.out.print(plain(reply.message))


@app.command()
def diff(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="[V1 V2] [PATH...]: two versions on the server to compare (else your working files against "
            "your local version), then the paths to limit it to.",
            show_default=False,
        ),
    ] = None,
    stat: Annotated[bool, typer.Option("--stat", help="Only how much each file changed.")] = False,
    name_status: Annotated[bool, typer.Option("--name-status", help="Only each file's name and A/M/D.")] = False,
    repo: Annotated[
        str | None, typer.Option("--repo", help="With V1 V2: a repository other than this directory's.")
    ] = None,
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    as_json: Json = False,
) -> None:
    """Show changes: your working files against your local version, or version V1 against V2.

    The local version's bytes of the files you changed are fetched from the server (minigit keeps
    no second copy of your files), so diff needs the server when you changed a file; status does not."""
    from minigit.client import versions as versions_mod

    with exit_on_error(json_output=as_json):
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        versions, paths = split_versions(args or [])
        if versions:
            result = versions_mod.diff_versions(Path.cwd(), options, repo, versions[0], versions[1], paths)
        else:
            if repo is not None:
                raise UsageError("--repo needs two versions: minigit diff --repo NAME V1 V2")
            result = versions_mod.diff_workdir(Path.cwd(), options, paths, content=not name_status)
        if as_json:
            print_json(result.to_json())
        else:
            print_diffs(result.files, stat, name_status)


def split_versions(args: list[str]) -> tuple[tuple[int, int] | None, list[str]]:
    """``V1 V2 PATH...`` or ``PATH...``: two leading whole numbers are versions."""
    if len(args) >= 2 and all(arg.isdigit() for arg in args[:2]):
        first, second = int(args[0]), int(args[1])
        if first < 1 or second < 1:
            raise UsageError("versions start at 1")
        return (first, second), args[2:]
    if args and args[0].isdigit() and not Path(args[0]).exists():
        raise UsageError(f"give two versions to compare ({args[0]} and another), or none for your working files")
    return None, args


DIFF_STYLES = {"+": "green", "-": "red", "@": "cyan"}


def print_diffs(files: list[textdiff.FileDiff], stat: bool, name_status: bool) -> None:
    from rich.text import Text

    from minigit.client import textdiff

    if name_status:  # for scripts: tab-separated, as git writes it (rich would expand the tab)
        for line in textdiff.format_name_status(files):
            typer.echo(shown(line, "\t"))
        return
    if stat:
        for line in textdiff.format_stat(files, width=max(40, min(console.out.width, 120))):
            console.out.print(Text(shown(line)))
        return
    for file in files:
        print_file_diff(file)


def print_file_diff(file: textdiff.FileDiff) -> None:
    """One file as git prints it: a header, then its hunks coloured on a terminal;
    the content's control characters shown as escapes, never sent to the terminal."""
    from rich.text import Text

    from minigit.client import textdiff

    path = file.new_path or file.old_path or ""
    console.out.print(Text(f"diff --minigit a/{shown(path)} b/{shown(path)}", style="bold"))
    if file.old_path is None:
        console.out.print(
            Text(
                f"new file mode {textdiff.GIT_MODES[file.mode_change[1]] if file.mode_change else '100644'}",
                style="bold",
            )
        )
    if file.mode_change and file.old_path and file.new_path:
        console.out.print(Text(f"old mode {file.mode_change[0]}\nnew mode {file.mode_change[1]}", style="bold"))
    if file.binary:
        console.out.print(
            f"Binary files {'a/' + shown(path) if file.old_path else '/dev/null'} and "
            f"{'b/' + shown(path) if file.new_path else '/dev/null'} differ",
            markup=False,
        )
        return
    for line in file.lines:
        style = "bold" if line.startswith(("--- ", "+++ ")) else DIFF_STYLES.get(line[:1], "")
        console.out.print(Text(shown(line, "\t"), style=style))


@app.command()
def restore(
    paths: Annotated[list[str], typer.Argument(help="Files or folders to put back ('.' for everything).")],
    source: Annotated[
        int | None,
        typer.Option("--source", "-s", min=1, help="Take them from this version \\[default: your local version]."),
    ] = None,
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Put files back as they are in your local version (or --source V): your changes to them are
    discarded. Only content no working file still holds is fetched from the server."""
    from minigit.client import versions as versions_mod

    with exit_on_error(json_output=as_json):
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        result = versions_mod.restore_paths(Path.cwd(), options, paths, source)
        if as_json:
            print_json(result.to_json())
        elif not quiet:
            count = len(result.restored)
            console.out.print(f"Restored {count} file{'s' if count != 1 else ''} from version {result.version}")


@app.command("show")
def show_command(
    version: Annotated[int, typer.Argument(min=1, help="The version to show.")],
    stat: Annotated[bool, typer.Option("--stat", help="Only how much each file changed.")] = False,
    name_status: Annotated[bool, typer.Option("--name-status", help="Only each file's name and A/M/D.")] = False,
    repo: Annotated[str | None, typer.Option("--repo", help="A repository other than this directory's.")] = None,
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    as_json: Json = False,
) -> None:
    """Show a version: its author, date and message, and what it changed."""
    from minigit.client import versions as versions_mod

    with exit_on_error(json_output=as_json):
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        result = versions_mod.show_version(Path.cwd(), options, version, repo)
        if as_json:
            print_json({"entry": result.entry.to_dict(), "verified": result.problem is None, **result.diff.to_json()})
            return
        print_log([result.entry], [result.problem])
        print_diffs(result.diff.files, stat, name_status)


@app.command()
def checkout(
    version: Annotated[int | None, typer.Argument(min=1, help="The version to look at.", show_default=False)] = None,
    latest: Annotated[bool, typer.Option("--latest", help="Back to the head version (pull).")] = False,
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Put the working files at an older version, as a read-only view (push refuses there), or back at
    the head with --latest. Your local changes come along unless the version changed the same files."""
    from minigit.client import operations

    with exit_on_error(json_output=as_json):
        if (version is None) == (not latest):
            raise UsageError("give a version to look at, or --latest to go back to the head")
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        result = operations.checkout_version(Path.cwd(), options, version)
        if as_json:
            print_json(result.to_json())
        elif quiet:
            return
        elif result.detached:
            console.out.print(
                f"You are viewing version {result.new_version} of {plain(result.repository)} "
                f"(the head is {result.head}). This view is read-only: push refuses here."
            )
            console.err.print("hint: run 'minigit checkout --latest' to go back to the head")
        else:
            console.out.print(f"Back at the head of {plain(result.repository)}: version {result.new_version}")


@app.command()
def repos(
    user: User = None,
    bootstrap: Bootstrap = None,
    namespace: Namespace = None,
    timeout: Timeout = 30.0,
    kafka_option: KafkaOption = None,
    as_json: Json = False,
) -> None:
    """List the repositories you may read, with their head version and last change."""
    from rich.table import Table

    from minigit.client import versions as versions_mod

    with exit_on_error(json_output=as_json):
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        result = versions_mod.list_repositories(Path.cwd(), options)
        if as_json:
            print_json(result.to_json())
            return
        if not result.repos:
            console.err.print(f"No repositories you may read on {plain(result.server)}.")
            return
        # names are shown whole (folded if they must), never cut; visibility is in --json
        longest = max(len(info.name) for info in result.repos)
        table = Table(box=None, header_style="bold")
        table.add_column("repository", overflow="fold", min_width=min(longest, 24))
        table.add_column("head", justify="right", no_wrap=True)
        for column in ("last change", "by", "access"):
            table.add_column(column, no_wrap=True)
        for info in result.repos:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.time_ms / 1000))
            access = f"{info.access} ({info.visibility})" if info.access == "owner" else info.access
            table.add_row(plain(info.name), str(info.head), when, plain(info.author), access)
        console.out.print(table)


remote_app = typer.Typer(
    name="remote",
    help="Show or change where this working directory's service is (its Kafka address, kept in .minigit).",
    invoke_without_command=True,
    rich_markup_mode="rich",
)
app.add_typer(remote_app)


@remote_app.callback()
def remote(ctx: typer.Context, as_json: Json = False) -> None:
    """Show the repository and the service's address kept in .minigit."""
    from minigit.client import versions as versions_mod

    if ctx.invoked_subcommand is not None:
        return
    with exit_on_error(json_output=as_json):
        result = versions_mod.show_remote(Path.cwd())
        if as_json:
            print_json(result.to_json())
        else:
            console.out.print(f"repository  {plain(result.repository)}")
            console.out.print(f"bootstrap   {plain(result.bootstrap)}")
            console.out.print(f"namespace   {plain(result.namespace) or '(none)'}")


@remote_app.command("set-url")
def set_url(
    address: Annotated[str, typer.Argument(help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].")],
    namespace: Annotated[str | None, typer.Option("--namespace", help="Also change the topic prefix.")] = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Point this working directory at another address of the service."""
    from minigit.client import versions as versions_mod

    with exit_on_error(json_output=as_json):
        result = versions_mod.set_remote(Path.cwd(), address, namespace)
        if as_json:
            print_json(result.to_json())
        elif not quiet:
            console.out.print(f"{plain(result.repository)} now uses {plain(result.bootstrap)}")


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
    from minigit.client import keys

    with exit_on_error(json_output=as_json):
        report_key(keys.generate_key(user_config_dir(), user or default_user()), quiet, as_json)


@auth_app.command()
def show(user: KeyUser = None, as_json: Json = False) -> None:
    """Print your public key and its fingerprint (to give to whoever registers users)."""
    from minigit.client import keys

    with exit_on_error(json_output=as_json):
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
    from minigit.client import operations

    with exit_on_error():
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        reply = operations.register_account(Path.cwd(), options)
        if not quiet:
            console.out.print(f"{plain(options.user)}: {plain(reply.message)}")


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
    from minigit.client import operations

    with exit_on_error(json_output=as_json):
        options = client_options(user, bootstrap, namespace, timeout, kafka_option)
        report_key(operations.rotate_key(Path.cwd(), options), quiet, as_json)


def report_key(info: keys.KeyInfo, quiet: bool, as_json: bool) -> None:
    if as_json:
        print_json(info.to_json())
        return
    if info.created:
        console.err.print(f"Created a key for {plain(info.user)} in {escape(quoted_path(str(info.path)))}")
    if not quiet:
        console.out.print(f"user         {plain(info.user)}")
        console.out.print(f"public key   {info.public_key}")
        console.out.print(f"fingerprint  {info.fingerprint}")
        console.out.print(f"key file     {escape(quoted_path(str(info.path)))}")


def print_version() -> None:
    print(f"minigit {__version__}")  # (plain text: no need of rich)


@app.callback()
def main_options(
    version: Annotated[bool, version_option(print_version)] = False,
) -> None:
    """A git-like client for a replicated repository service reached through Apache Kafka."""


def command_name(info: typer.models.CommandInfo) -> str:
    return info.name or typer.main.get_command_name(info.callback.__name__)


def app_for(argv: list[str]) -> typer.Typer:
    """The app that runs ``minigit ARGV``: for one of the commands (not a group such as
    `auth`), the app with that command alone, since Typer builds the options of every
    command it holds before it runs one (14 ms of CPU, 4% of a push); else the whole app."""
    chosen = [info for info in app.registered_commands if argv and command_name(info) == argv[0]]
    if len(chosen) != 1:
        return app
    narrow = copy.copy(app)
    narrow.registered_commands, narrow.registered_groups = chosen, []
    return narrow


def main(args: list[str] | None = None) -> None:
    """The `minigit` command. A bare `minigit --version` answers before Typer builds
    every command's options (a third of its time); anything else goes through Typer."""
    argv = sys.argv[1:] if args is None else args
    if argv == ["--version"]:
        print_version()
        return
    app_for(argv)(args)
