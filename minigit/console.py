"""Terminal output shared by both CLIs: where text goes and how errors end a command.

Like git: results a script may read go to stdout, progress, warnings and errors
to stderr. Text that came from elsewhere (the server, other users' messages and
paths) goes through ``shown`` or ``quoted_path`` first: a terminal takes control
characters as commands (ESC starts a sequence that can recolour the screen,
retitle the window, or worse), and Unicode's bidirectional controls reorder what
the user reads, so both are written out as escapes instead. A single-line field
(a name, an author) shows every one of them, line breaks included, so that it
cannot forge a line of its own; only a message body keeps its line breaks.

Under ``--json`` a command prints one JSON document on stdout (``print_json``),
success or failure: ``format`` (JSON_FORMAT) first, an ISO 8601 UTC ``time``
beside every ``time_ms``, and, when the command failed, ``error``
(``exit_on_error(json_output=True)``). docs/json.md is the contract.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import typer

from minigit.errors import ExitCode, MinigitError

if TYPE_CHECKING:
    from rich.console import Console

# ``out`` (stdout) and ``err`` (stderr): rich consoles, made when first used
# (``from minigit.console import out`` makes it): importing rich is about 30 ms, which
# a command that prints nothing (-q) or only its version need not pay. Code of this
# module writes through ``stdout()`` and ``stderr()``.
CONSOLES: dict[str, Console] = {}


def stdout() -> Console:
    return _console("out")


def stderr() -> Console:
    return _console("err")


def _console(name: str) -> Console:
    console = CONSOLES.get(name)
    if console is None:
        from rich.console import Console

        console = CONSOLES[name] = Console(stderr=name == "err", highlight=False, soft_wrap=True)
    return console


def __getattr__(name: str) -> Any:
    if name in ("out", "err"):
        return _console(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def escape(markup: str) -> str:
    """``markup`` that rich prints as it is (rich.markup.escape, imported when first needed)."""
    from rich.markup import escape as rich_escape

    return rich_escape(markup)


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
    stderr().print(f"[bold red]error:[/] {escape(shown(error.message, MESSAGE_KEEP))}")
    if error.hint:
        stderr().print(f"[yellow]hint:[/] {escape(shown(error.hint, MESSAGE_KEEP))}")


# The version of the JSON documents the commands print (docs/json.md): raised only
# when a field changes meaning or goes away; new fields may come at any time.
JSON_FORMAT = 1


def iso_time(time_ms: int) -> str | None:
    """Milliseconds since the epoch as ISO 8601 UTC: ``2026-11-27T23:04:05.123Z``
    (None for a time no calendar holds)."""
    try:
        when = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(milliseconds=time_ms)
    except OverflowError:
        return None
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_time_ms(key: str, value: object) -> bool:
    return (key == "time_ms" or key.endswith("_time_ms")) and isinstance(value, int) and not isinstance(value, bool)


def with_iso_times(value: Any) -> Any:
    """``value`` with, beside every ``time_ms`` (or ``*_time_ms``) integer of its
    objects, the same time as ISO 8601 UTC under the name without ``_ms``."""
    if isinstance(value, Mapping):
        done: dict[str, Any] = {}
        for key, item in value.items():
            done[key] = with_iso_times(item)
            if is_time_ms(key, item) and key[: -len("_ms")] not in value:
                done[key[: -len("_ms")]] = iso_time(item)
        return done
    if isinstance(value, list | tuple):
        return [with_iso_times(item) for item in value]
    return value


def json_document(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What a command prints under --json: ``format`` first, then ``doc`` with its times also in ISO 8601."""
    return {"format": JSON_FORMAT, **with_iso_times(doc)}


def _json_unsafe(char: str) -> bool:
    # what JSON leaves as it is but a terminal would not just show: DEL, the C1
    # controls, bidi controls, lone surrogates (undecodable file names), line
    # separators. The line breaks of the indentation stay (in strings JSON escapes them).
    return char != "\n" and (is_unsafe(char) or unicodedata.category(char) in ("Cs", "Zl", "Zp"))


def json_text(doc: Mapping[str, Any]) -> str:
    """``json_document(doc)`` as text: UTF-8 kept readable, and every character a
    terminal would act on written as a ``\\uXXXX`` escape (valid JSON all the same)."""
    text = json.dumps(json_document(doc), indent=2, ensure_ascii=False)
    if text.isascii():  # (the common case, fast: JSON escaped the C0 controls of strings already)
        return text.replace("\x7f", "\\u007f")
    return "".join(f"\\u{ord(char):04x}" if _json_unsafe(char) else char for char in text)


def print_json(doc: Mapping[str, Any]) -> None:
    """The one JSON document of a command, on stdout (coloured only on a terminal:
    elsewhere written as it is, since rich takes seconds to lay out a large one)."""
    text = json_text(doc)
    console = stdout()
    if console.is_terminal:
        from rich.highlighter import JSONHighlighter
        from rich.text import Text

        console.print(JSONHighlighter()(Text(text)), soft_wrap=True)
    else:
        console.file.write(text + "\n")
        console.file.flush()


def error_json(error: MinigitError) -> dict[str, Any]:
    return {
        "type": type(error).__name__,
        "message": error.message,
        "hint": error.hint,
        "exit_code": int(error.exit_code),
    }


def machine_error(error: OSError) -> MinigitError:
    """An OSError of this machine's files as the one error line of a command."""
    reason = error.strerror or str(error) or type(error).__name__
    if isinstance(error.filename, str | bytes):
        return MinigitError(f"{quoted_path(os.fsdecode(error.filename))}: {reason}")
    return MinigitError(reason)


@contextlib.contextmanager
def exit_on_error(json_output: bool = False) -> Iterator[dict[str, Any]]:
    """Turn a MinigitError (an OSError of this machine's files, or Ctrl-C) into one message and an exit code.

    The message goes to stderr, always; with ``json_output`` (a command's --json)
    stdout also gets a JSON document whose ``error`` says the same (its type,
    message, hint and exit code), as the only document the command prints. The
    context yields a dict the command may fill with what it found before it
    failed (``log --verify``: the versions): that document holds it too."""
    partial: dict[str, Any] = {}
    try:
        yield partial
    except MinigitError as error:
        print_error(error)
        if json_output:
            print_json({**partial, "error": error_json(error)})
        raise typer.Exit(int(error.exit_code)) from None
    except OSError as error:
        if isinstance(error, BrokenPipeError):
            raise  # (stdout closed by a pager or `head`: nothing to say)
        # this machine's files (a full disk, a folder that may not be written...): one line, as git
        local = machine_error(error)
        print_error(local)
        if json_output:
            print_json({**partial, "error": error_json(local)})
        raise typer.Exit(int(local.exit_code)) from None
    except KeyboardInterrupt:
        stderr().print("interrupted")
        if json_output:
            interrupted = {"type": "Interrupted", "message": "interrupted", "hint": None}
            print_json({**partial, "error": {**interrupted, "exit_code": int(ExitCode.INTERRUPTED)}})
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


def version_option(print_version: Callable[[], None]) -> Any:
    """The ``--version`` option of both commands: ``print_version``, then exit."""

    def show(value: bool) -> None:
        if value:
            print_version()
            raise typer.Exit()

    return typer.Option("--version", callback=show, is_eager=True, help="Show the version and exit.")
