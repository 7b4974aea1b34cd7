"""minigit.client.cli: flags are checked before anything connects, and what other
users and the server wrote is shown, never obeyed, by the terminal.

The commands run in process (typer's CliRunner) against the in-process service
(tests/unit/client/inprocess.py) instead of Kafka.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import typer
from inprocess import InProcessServer, edit_reply
from typer.testing import CliRunner

from minigit import protocol as p
from minigit.client import cli
from minigit.client import operations as op
from minigit.client import workspace as ws
from minigit.config import ServerFlags
from minigit.console import BIDI_CONTROLS, MESSAGE_KEEP, exit_on_error, quoted_path, shown
from minigit.errors import ExitCode, MinigitError

HOSTILE_MESSAGE = "hi\x1b]0;PWNED\x07\x1b[31mRED\x1b[2J\r\x9b1m\x7f\tend\nsecond line"
HOSTILE_PATHS = ["evil\x1b[31m.txt", "new\nline.txt", 'say "hi".txt', "tab\there", "invoice\u202etxt.exe"]
# What each bidi control is written as.
BIDI = {
    "\u202a": "\\u202a",
    "\u202e": "\\u202e",
    "\u2066": "\\u2066",
    "\u2069": "\\u2069",
    "\u200e": "\\u200e",
    "\u200f": "\\u200f",
}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> InProcessServer:
    """Every command of the CLI talks to this in-process service."""
    server = InProcessServer()
    real = cli.client_options

    def client_options(*args: object) -> op.ClientOptions:
        return dataclasses.replace(real(*args), connector=server.connector)

    monkeypatch.setattr(cli, "client_options", client_options)
    return server


def minigit(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> object:
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(cli.app, list(args), env=env)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        return runner.invoke(cli.app, list(args), env=env)


def workdir(server: InProcessServer, root: Path, content: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for rel, data in content.items():
        (root / rel).write_text(data)
    owner = op.ClientOptions("origin", ServerFlags(), connector=server.connector)
    # public: every user of these tests reads it (and the replies travel in clear, for the hooks)
    op.init_repository(root, "lab", owner, "v1", visibility=p.Visibility.PUBLIC)
    for user in WRITERS:  # registered already, so a tampering hook meets the answer it expects
        op.register_account(root, op.ClientOptions(user, ServerFlags(), connector=server.connector))
        op.share_repository(root, owner, "lab", user, p.Access.WRITE)
    return root


# Who pushes in these tests besides the owner: the one who runs them, and mallory.
WRITERS = (cli.default_user(), "mallory")


def assert_harmless(text: str) -> None:
    """No control character from the hostile texts reached the terminal."""
    for raw in ("\x1b]0;", "\x07", "\x1b[31m", "\x1b[2J", "\r", "\x9b", "\x7f", "evil\x1b", *BIDI_CONTROLS):
        assert raw not in text


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize("bootstrap", [",,,", "[::1", "::1:9092", "h:0", "h:70000", "host"])
def test_a_bad_bootstrap_is_a_usage_error_naming_it(tmp_path: Path, bootstrap: str) -> None:
    for args, env in (
        (["clone", "lab", "-b", bootstrap], None),
        (["clone", "lab"], {"MINIGIT_BOOTSTRAP": bootstrap}),
        (["log", "--repo", "lab", "--bootstrap", bootstrap], None),
    ):
        result = minigit(*args, cwd=tmp_path, env=env)
        assert result.exit_code == ExitCode.USAGE, result.output
        assert f"error: bad --bootstrap {bootstrap!r}: " in result.output and "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "setting",
    ["security_protocol=SASL-SSL", "security_protocol=BOGUS", "sasl_mechanism=SCRAM-SHA-1", "sasl_mechanism=PLAN"],
)
def test_a_misspelt_security_setting_is_a_usage_error(tmp_path: Path, setting: str) -> None:
    name, value = setting.split("=")
    for args, env in (
        (["clone", "lab", "--kafka-option", setting], None),
        (["clone", "lab"], {f"MINIGIT_KAFKA_{name.upper()}": value}),
    ):
        result = minigit(*args, cwd=tmp_path, env=env)
        assert result.exit_code == ExitCode.USAGE, result.output
        assert f"error: {name} must be one of " in result.output and f"not {value!r}" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("timeout", ["inf", "-inf", "nan", "3600.5", "1e9", "0.05", "0"])
def test_timeouts_outside_0_1_to_3600_seconds_are_usage_errors(
    server: InProcessServer, tmp_path: Path, timeout: str
) -> None:
    workdir(server, tmp_path / "origin", {"a.txt": "a"})
    sent = len(server.log)  # the init's (and its user's registration)
    for args, env in ((["clone", "lab", "--timeout", timeout], None), (["clone", "lab"], {"MINIGIT_TIMEOUT": timeout})):
        result = minigit(*args, cwd=tmp_path / "origin", env=env)
        assert result.exit_code == ExitCode.USAGE, result.output
        assert "--timeout" in result.output and "Traceback" not in result.output
    assert len(server.log) == sent  # nothing was sent


@pytest.mark.parametrize("timeout", ["0.1", "3600"])
def test_the_bounds_of_the_timeout_are_allowed(server: InProcessServer, tmp_path: Path, timeout: str) -> None:
    workdir(server, tmp_path / "origin", {"a.txt": "a"})
    result = minigit("clone", "lab", "--timeout", timeout, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert server.log[-1].request.timeout_ms == int(float(timeout) * 1000)


# ---------------------------------------------------------------- text from others


def test_shown_and_quoted_path_write_control_characters_as_c_escapes() -> None:
    escaped = "hi\\033]0;PWNED\\a\\033[31mRED\\033[2J\\r\\302\\2331m\\177"
    assert shown(HOSTILE_MESSAGE, MESSAGE_KEEP) == escaped + "\tend\nsecond line"  # a message body
    assert shown(HOSTILE_MESSAGE) == escaped + "\\tend\\nsecond line"  # a one-line field: nothing kept
    assert shown("a\tb\nc", keep="") == shown("a\tb\nc") == "a\\tb\\nc"
    assert shown("café ünïcode [bold]") == "café ünïcode [bold]"
    assert [quoted_path(path) for path in HOSTILE_PATHS] == [
        '"evil\\033[31m.txt"',
        '"new\\nline.txt"',
        '"say \\"hi\\".txt"',
        '"tab\\there"',
        '"invoice\\u202etxt.exe"',
    ]
    assert quoted_path("plain/dir/file name.txt") == "plain/dir/file name.txt"


@pytest.mark.parametrize("char", sorted(BIDI_CONTROLS))
def test_bidi_controls_are_shown_escaped_in_messages_and_paths(char: str) -> None:
    written = f"\\u{ord(char):04x}"
    assert shown(f"a{char}b\nc", MESSAGE_KEEP) == f"a{written}b\nc" and shown(f"a{char}b") == f"a{written}b"
    assert quoted_path(f"a{char}b.txt") == f'"a{written}b.txt"'


def test_the_bidi_controls_are_those_unicode_names() -> None:
    assert set(BIDI) <= BIDI_CONTROLS
    assert {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F]} <= BIDI_CONTROLS
    assert [shown(char) for char in BIDI] == list(BIDI.values())


def test_log_shows_escape_sequences_in_messages_instead_of_sending_them(
    server: InProcessServer, tmp_path: Path
) -> None:
    root = workdir(server, tmp_path / "w", {"a.txt": "a"})
    (root / "a.txt").write_text("b")
    pushed = minigit("push", "-m", HOSTILE_MESSAGE, "-u", "mallory", cwd=root)
    assert pushed.exit_code == 0, pushed.output

    shown_log = minigit("log", cwd=root)
    assert shown_log.exit_code == 0, shown_log.output
    assert_harmless(shown_log.stdout)
    assert "Author: mallory" in shown_log.stdout
    # a tab is kept (rich expands it), a line break starts an indented line
    assert "    hi\\033]0;PWNED\\a\\033[31mRED\\033[2J\\r\\302\\2331m\\177  end\n    second line\n" in shown_log.stdout

    as_json = minigit("log", "--json", cwd=root)
    assert json.loads(as_json.stdout)["versions"][0]["message"] == HOSTILE_MESSAGE  # scripts get the raw text


def test_log_shows_a_line_break_in_an_author_escaped_so_it_cannot_forge_a_line(
    server: InProcessServer, tmp_path: Path
) -> None:
    root = workdir(server, tmp_path / "w", {"a.txt": "a"})
    forged = "mallory\nDate:   Mon Jan 01 00:00:00 2001 +0000\x1b[2J\u202e"
    server.tamper(edit_reply(lambda doc: doc["entries"][0].update(author=forged, message="one\u202eeno\nline two")))
    shown_log = minigit("log", cwd=root)
    assert shown_log.exit_code == 0, shown_log.output
    assert_harmless(shown_log.stdout)
    lines = shown_log.stdout.split("\n")
    assert "Author: mallory\\nDate:   Mon Jan 01 00:00:00 2001 +0000\\033[2J\\u202e" in lines
    assert [line for line in lines if line.startswith("Date:")] == [lines[lines.index("version 1") + 2]]
    assert "    one\\u202eeno" in lines and "    line two" in lines  # the message keeps its line break


def test_a_message_from_the_server_in_an_error_cannot_add_a_line(server: InProcessServer, tmp_path: Path) -> None:
    root = workdir(server, tmp_path / "w", {"a.txt": "a"})
    (root / "a.txt").write_text("b")
    server.tamper(edit_reply(lambda doc: doc.update(status="invalid", message="no\nhint: run 'curl evil | sh'")))
    refused = minigit("push", cwd=root)
    assert refused.exit_code == ExitCode.ERROR
    assert refused.output == "error: the server refused the push: no\\nhint: run 'curl evil | sh'\n"


def test_pull_and_status_show_paths_with_control_characters_quoted_like_git(
    server: InProcessServer, tmp_path: Path
) -> None:
    origin = workdir(server, tmp_path / "origin", {"a.txt": "a"})
    mine = tmp_path / "mine"
    assert minigit("clone", "lab", str(mine), cwd=tmp_path).exit_code == 0
    for path in HOSTILE_PATHS:
        (origin / path).write_text(path)
    assert minigit("push", "-m", "paths", cwd=origin).exit_code == 0
    (mine / "a.txt").write_text("mine")  # kept
    (mine / "mine\x1b[2J.txt").write_text("local")

    pulled = minigit("pull", cwd=mine)
    assert pulled.exit_code == 0, pulled.output
    assert_harmless(pulled.output)
    for path in HOSTILE_PATHS:
        assert f" A {quoted_path(path)}\n" in pulled.stdout
        assert (mine / path).read_text() == path  # the files themselves are as named
    assert 'Kept your local changes to: a.txt, "mine\\033[2J.txt"' in pulled.output

    status = minigit("status", cwd=mine)
    assert_harmless(status.stdout)
    assert '"mine\\033[2J.txt"' in status.stdout

    as_json = minigit("status", "--json", cwd=mine)
    assert json.loads(as_json.stdout)["changes"]["added"] == ["mine\x1b[2J.txt"]


def test_messages_from_the_server_in_errors_are_shown_escaped(server: InProcessServer, tmp_path: Path) -> None:
    root = workdir(server, tmp_path / "w", {"a.txt": "a"})
    (root / "a.txt").write_text("b")
    server.tamper(edit_reply(lambda doc: doc.update(status="invalid", message="no\x1b]0;PWNED\x07 [bold]way")))
    refused = minigit("push", cwd=root)
    assert refused.exit_code == ExitCode.ERROR
    assert "error: the server refused the push: no\\033]0;PWNED\\a [bold]way" in refused.output
    assert_harmless(refused.output)
    assert ws.read_metadata(root).version == 1


def test_print_error_keeps_line_breaks_and_tabs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as ended, exit_on_error():
        raise MinigitError("files:\n\tone\x1b[2J", hint="do \x07this")
    assert ended.value.exit_code == ExitCode.ERROR
    printed = capsys.readouterr().err  # rich expands the tab
    assert printed == "error: files:\n        one\\033[2J\nhint: do \\athis\n"


# ---------------------------------------------------------------- minigit auth


def test_auth_keygen_then_show_print_the_same_public_key(tmp_path: Path) -> None:
    env = {"MINIGIT_CONFIG_DIR": str(tmp_path / "cfg")}
    made = minigit("auth", "keygen", "--user", "alice", env=env)
    assert made.exit_code == 0, made.output
    key_file = tmp_path / "cfg" / "keys" / "alice.key"
    assert made.stderr == f"Created a key for alice in {key_file}\n"
    lines = made.stdout.splitlines()
    assert lines[0] == "user         alice"
    assert re.fullmatch(r"public key   ed25519:[A-Za-z0-9+/]{43}=", lines[1])
    assert re.fullmatch(r"fingerprint  SHA256:[A-Za-z0-9+/]{43}", lines[2])
    assert lines[3] == f"key file     {key_file}"

    shown_key = minigit("auth", "show", "-u", "alice", env=env)
    assert shown_key.exit_code == 0, shown_key.output
    assert shown_key.stdout == made.stdout and shown_key.stderr == ""
    as_json = json.loads(minigit("auth", "show", "--json", env={**env, "MINIGIT_USER": "alice"}).stdout)
    assert f"public key   {as_json['public_key']}" in made.stdout
    assert f"fingerprint  {as_json['fingerprint']}" in made.stdout


def test_auth_keygen_never_replaces_a_key(tmp_path: Path) -> None:
    env = {"MINIGIT_CONFIG_DIR": str(tmp_path)}
    first = minigit("auth", "keygen", "-u", "alice", "--quiet", env=env)
    assert first.exit_code == 0 and first.stdout == "", first.output
    before = (tmp_path / "keys" / "alice.key").read_bytes()
    again = minigit("auth", "keygen", "-u", "alice", env=env)
    assert again.exit_code == ExitCode.ERROR
    assert again.stderr.startswith(f"error: a key for user 'alice' already exists in {tmp_path / 'keys'}\nhint: ")
    assert (tmp_path / "keys" / "alice.key").read_bytes() == before


def test_auth_show_without_a_key_says_how_to_make_one(tmp_path: Path) -> None:
    shown_key = minigit("auth", "show", "-u", "bob", env={"MINIGIT_CONFIG_DIR": str(tmp_path)})
    assert shown_key.exit_code == ExitCode.ERROR
    assert shown_key.stderr == (
        f"error: no key for user 'bob' in {tmp_path / 'keys'}\nhint: create one with 'minigit auth keygen --user bob'\n"
    )
    assert not (tmp_path / "keys").exists()


def test_auth_refuses_a_key_others_may_read(tmp_path: Path) -> None:
    env = {"MINIGIT_CONFIG_DIR": str(tmp_path)}
    assert minigit("auth", "keygen", "-u", "alice", env=env).exit_code == 0
    (tmp_path / "keys" / "alice.key").chmod(0o644)
    refused = minigit("auth", "show", "-u", "alice", env=env)
    assert refused.exit_code == ExitCode.ERROR
    assert "others may read or change it (mode 0644)" in refused.stderr and "chmod 600" in refused.stderr


def test_auth_checks_the_user_name(tmp_path: Path) -> None:
    refused = minigit("auth", "keygen", "-u", "../../etc/x", env={"MINIGIT_CONFIG_DIR": str(tmp_path)})
    assert refused.exit_code == ExitCode.ERROR
    assert refused.stderr.startswith("error: invalid user name '../../etc/x'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["auth", "--help"], ["auth", "keygen", "--help"], ["auth", "show", "--help"]])
def test_auth_help(args: list[str]) -> None:
    helped = minigit(*args)
    assert helped.exit_code == 0, helped.output
    assert "Usage: minigit auth" in helped.stdout


def test_auth_without_a_command_shows_its_commands() -> None:
    listed = minigit("auth")
    assert listed.exit_code == ExitCode.USAGE  # as plain 'minigit': a command is missing
    assert "keygen" in listed.output and "show" in listed.output


@pytest.mark.parametrize("name", [cli.command_name(info) for info in cli.app.registered_commands])
@pytest.mark.parametrize("extra", [["--help"], ["--no-such-option"]])
def test_the_app_of_one_command_answers_as_the_whole_app(name: str, extra: list[str]) -> None:
    """(cli.app_for: Typer builds only the command that runs)"""
    narrow = cli.app_for([name, *extra])
    assert narrow is not cli.app and len(narrow.registered_commands) == 1
    whole = CliRunner().invoke(cli.app, [name, *extra], env={"COLUMNS": "100"})
    alone = CliRunner().invoke(narrow, [name, *extra], env={"COLUMNS": "100"})
    assert (alone.exit_code, alone.output) == (whole.exit_code, whole.output)


@pytest.mark.parametrize("argv", [[], ["--help"], ["auth", "show"], ["remote"], ["no-such-command"]])
def test_groups_and_the_top_level_run_in_the_whole_app(argv: list[str]) -> None:
    assert cli.app_for(argv) is cli.app
