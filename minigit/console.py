"""Terminal output shared by both CLIs: where text goes and how errors end a command.

Like git: results a script may read go to stdout, progress, warnings and errors
to stderr. Text that came from elsewhere (the server, other users' messages and
paths) goes through ``shown`` or ``quoted_path`` first: a terminal takes control
characters as commands (ESC starts a sequence that can recolour the screen,
retitle the window, or worse), and Unicode's bidirectional controls reorder what
the user reads, so both are written out as escapes instead. A single-line field
(a name, an author) shows every one of them, line breaks included, so that it
cannot forge a line of its own; only a message body keeps its line breaks.
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

# Unicode's bidirectional controls (Bidi_Control): embeddings and overrides
# (U+202A-U+202E), isolates (U+2066-U+2069), the LRM, RLM and ALM marks. They
# change the order in which a terminal shows the text around them.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")

# What a message body may keep as it is.
MESSAGE_KEEP = "\n\t"


def is_control(char: str) -> bool:
    """C0 controls (ESC among them), DEL and the C1 controls (CSI among them)."""
    return unicodedata.category(char) == "Cc"


def is_unsafe(char: str) -> bool:
    """A character a terminal would not simply show: a control, or a bidi control."""
    return is_control(char) or char in BIDI_CONTROLS


def c_escape(char: str) -> str:
    """One character as C writes it in a string: ``\\n``, or its UTF-8 bytes in
    octal (ESC is ``\\033``), as git quotes paths; a bidi control as ``\\u202e``."""
    if char in BIDI_CONTROLS:
        return f"\\u{ord(char):04x}"
    return _C_ESCAPES.get(char) or "".join(f"\\{byte:03o}" for byte in char.encode("utf-8", "surrogatepass"))


def shown(text: str, keep: str = "") -> str:
    """``text`` safe to print on a terminal: every control and bidi control
    character but those in ``keep`` written as an escape. By default nothing is
    kept: the text stays on one line. A message body keeps ``MESSAGE_KEEP``
    (line breaks and tabs). Rich markup is left to ``escape``."""
    return "".join(c_escape(char) if is_unsafe(char) and char not in keep else char for char in text)


def quoted_path(path: str) -> str:
    """A path as git shows one: as it is, or, when it holds a control or bidi
    control character, a double quote or a backslash, in double quotes with
    escapes ("new\\nline")."""
    if not any(is_unsafe(char) or char in '"\\' for char in path):
        return path
    body = "".join(c_escape(char) if is_unsafe(char) else "\\" + char if char in '"\\' else char for char in path)
    return f'"{body}"'


def print_error(error: MinigitError) -> None:
    # minigit's own messages may run over several lines; text from the server in them is one line already
    err.print(f"[bold red]error:[/] {escape(shown(error.message, MESSAGE_KEEP))}")
    if error.hint:
        err.print(f"[yellow]hint:[/] {escape(shown(error.hint, MESSAGE_KEEP))}")


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
