"""Terminal output shared by both CLIs: where text goes and how errors end a command.

Like git: results a script may read go to stdout, progress, warnings and errors
to stderr.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from minigit.errors import ExitCode, MinigitError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(error: MinigitError) -> None:
    err.print(f"[bold red]error:[/] {escape(error.message)}")
    if error.hint:
        err.print(f"[yellow]hint:[/] {escape(error.hint)}")


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn a MinigitError (or Ctrl-C) into one message and an exit code."""
    try:
        yield
    except MinigitError as error:
        print_error(error)
        raise typer.Exit(int(error.exit_code)) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
