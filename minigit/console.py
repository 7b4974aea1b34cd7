"""Terminal output shared by both CLIs: where text goes and how errors end a command.

Like git: results a script may read go to stdout, progress, warnings and errors
to stderr. Text that came from elsewhere (the server, other users' messages and
paths) goes through ``shown`` or ``quoted_path`` first: a terminal takes control
characters as commands (ESC starts a sequence that can recolour the screen,
retitle the window, or worse), so they are written out as C escapes instead.
"""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from minigit.errors import ExitCode, MinigitError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


_C_ESCAPES = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r"}


def is_control(char: str) -> bool:
    """C0 controls (ESC among them), DEL and the C1 controls (CSI among them)."""
    return unicodedata.category(char) == "Cc"


def c_escape(char: str) -> str:
    """One character as C writes it in a string: ``\\n``, or its UTF-8 bytes in
    octal (ESC is ``\\033``), as git quotes paths."""
    return _C_ESCAPES.get(char) or "".join(f"\\{byte:03o}" for byte in char.encode("utf-8", "surrogatepass"))


def shown(text: str, keep: str = "\n\t") -> str:
    """``text`` safe to print on a terminal: every control character but those in
    ``keep`` written as a C escape. Rich markup is left to ``escape``."""
    return "".join(c_escape(char) if is_control(char) and char not in keep else char for char in text)


def quoted_path(path: str) -> str:
    """A path as git shows one: as it is, or, when it holds a control character,
    a double quote or a backslash, in double quotes with C escapes ("new\\nline")."""
    if not any(is_control(char) or char in '"\\' for char in path):
        return path
    body = "".join(c_escape(char) if is_control(char) else "\\" + char if char in '"\\' else char for char in path)
    return f'"{body}"'


def print_error(error: MinigitError) -> None:
    err.print(f"[bold red]error:[/] {escape(shown(error.message))}")
    if error.hint:
        err.print(f"[yellow]hint:[/] {escape(shown(error.hint))}")


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
