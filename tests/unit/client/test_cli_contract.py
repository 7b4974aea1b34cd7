"""What scripts rely on (docs/json.md): every --json document has ``format``, a
time in ``time_ms`` has its ISO 8601 twin, and a failed command prints its error
as JSON too; a bad service address is a usage error wherever it comes from,
never a traceback; and a command says what it is about to do only once it has
checked that it can (``Cloning into 'x'...``).

The commands run in process (typer's CliRunner) against the in-process service.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import typer
from inprocess import InProcessServer, edit_reply
from typer.testing import CliRunner

from minigit import console
from minigit import protocol as p
from minigit.client import cli, preflight
from minigit.client import operations as op
from minigit.client import workspace as ws
from minigit.config import ServerFlags
from minigit.errors import ExitCode, MinigitError, UsageError

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


ANY = _Any()
BAD_BOOTSTRAPS = ["localhost:abc", "garbage:::", "", ":9092", "host:0", "host:99999", "local host:9092", "h :1"]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> InProcessServer:
    """Every command of the CLI talks to this in-process service."""
    server = InProcessServer()
    real = cli.client_options

    def client_options(*args: object) -> op.ClientOptions:
        return dataclasses.replace(real(*args), connector=server.connector)

    monkeypatch.setattr(cli, "client_options", client_options)
    return server


def minigit(*args: str, cwd: Path, env: dict[str, str] | None = None):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        return CliRunner().invoke(cli.app, list(args), env=env)


def workdir(server: InProcessServer, root: Path, content: dict[str, str], user: str = "origin") -> Path:
    root.mkdir(parents=True)
    for rel, data in content.items():
        (root / rel).write_text(data)
    options = op.ClientOptions(user, ServerFlags(), connector=server.connector)
    op.init_repository(root, "lab", options, "v1", visibility=p.Visibility.PUBLIC)
    return root


def document(result) -> dict:
    """The one JSON document on stdout."""
    doc = json.loads(result.stdout)
    assert next(iter(doc)) == "format" and doc["format"] == console.JSON_FORMAT
    return doc


def assert_one_line_error(result, code: ExitCode) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))
    assert result.stderr.startswith("error: ")


# ---------------------------------------------------------------- the JSON contract


def test_every_document_has_the_format_and_iso_times(server: InProcessServer, tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    (root / "a.txt").write_text("a")
    created = minigit("init", "lab", "--public", "--json", cwd=root)
    assert created.exit_code == 0, created.output
    assert document(created)["status"] == "created"

    status = document(minigit("status", "--json", cwd=root))
    assert status["version"] == 1 and status["changes"] == {"added": [], "modified": [], "deleted": []}

    logged = document(minigit("log", "--json", cwd=root))
    [entry] = logged["versions"]
    assert ISO_UTC.fullmatch(entry["time"]) and entry["time"] == console.iso_time(entry["time_ms"])
    assert list(entry).index("time") == list(entry).index("time_ms") + 1  # beside it

    cloned = minigit("clone", "lab", "copy", "--json", cwd=tmp_path)
    assert document(cloned)["status"] == "cloned" and cloned.stderr == ""  # no "Cloning into" under --json

    (tmp_path / "copy" / "b.txt").write_text("b")
    assert document(minigit("push", "--json", cwd=tmp_path / "copy"))["new_version"] == 2
    assert document(minigit("pull", "--json", cwd=root))["new_version"] == 2
    assert document(minigit("auth", "show", "--json", cwd=root))["user"] == cli.default_user()


def test_iso_times_are_utc_to_the_millisecond() -> None:
    assert console.iso_time(1795820645123) == "2026-11-27T23:04:05.123Z"
    assert console.iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert console.iso_time(10**20) is None  # no calendar holds it: null, not a crash
    doc = console.json_document({"a": [{"time_ms": 5, "x": {"build_time_ms": 1000}}], "timeout_ms": 7})
    assert doc == {
        "format": 1,
        "a": [{"time_ms": 5, "time": "1970-01-01T00:00:00.005Z", "x": {"build_time_ms": 1000, "build_time": ANY}}],
        "timeout_ms": 7,  # a duration, not a time
    }


def test_json_text_is_safe_on_a_terminal_and_still_the_same_json() -> None:
    hostile = "x\x1b]0;PWNED\x07\u202e\x9b\x7f\u2028 é 日本 \udcff"
    text = console.json_text({"message": hostile})
    assert json.loads(text)["message"] == hostile
    assert not any(console.is_unsafe(char) for char in text.replace("\n", "")) and "\udcff" not in text
    assert "é 日本" in text  # UTF-8 stays readable


def test_json_text_of_ascii_only_is_safe_too() -> None:
    """(ASCII text takes a shorter way: only DEL is left for it to escape)"""
    hostile = "x\x1b]0;PWNED\x07\x7f\x00 end"
    text = console.json_text({"message": hostile, "more": ["\x7f"]})
    assert text.isascii() and json.loads(text)["message"] == hostile
    assert not any(console.is_unsafe(char) for char in text.replace("\n", ""))


def test_a_failure_under_json_is_a_json_error_on_stdout_and_one_line_on_stderr(
    server: InProcessServer, tmp_path: Path
) -> None:
    missing = minigit("clone", "nope", "--json", cwd=tmp_path)
    assert_one_line_error(missing, ExitCode.ERROR)
    assert document(missing) == {
        "format": 1,
        "error": {
            "type": "RepositoryNotFound",
            "message": "repository 'nope' does not exist on the server",
            "hint": None,
            "exit_code": 1,
        },
    }
    assert missing.stderr == "error: repository 'nope' does not exist on the server\n"

    outside = minigit("status", "--json", cwd=tmp_path)
    assert_one_line_error(outside, ExitCode.ERROR)
    assert document(outside)["error"]["type"] == "NoRepository" and document(outside)["error"]["hint"]


def test_a_rejected_push_under_json(server: InProcessServer, tmp_path: Path) -> None:
    origin = workdir(server, tmp_path / "origin", {"a.txt": "a"})
    assert minigit("clone", "lab", "late", cwd=tmp_path).exit_code == 0
    (origin / "a.txt").write_text("first")
    op.push_workdir(origin, op.ClientOptions("origin", ServerFlags(), connector=server.connector))
    (tmp_path / "late" / "a.txt").write_text("second")
    rejected = minigit("push", "--json", "-u", "origin", cwd=tmp_path / "late")
    assert_one_line_error(rejected, ExitCode.REJECTED)
    error = document(rejected)["error"]
    assert (error["type"], error["exit_code"]) == ("PushRejected", 3) and "pull" in error["hint"]
    assert "[rejected]" not in rejected.stderr  # git's report of the refusal is for people


def test_log_verify_under_json_fails_with_the_versions_in_its_document(server: InProcessServer, tmp_path: Path) -> None:
    root = workdir(server, tmp_path / "w", {"a.txt": "a"})
    server.tamper(edit_reply(lambda doc: doc["entries"][0].update(message="not what was signed")))
    checked = minigit("log", "--verify", "--json", "-u", "origin", cwd=root)  # registered: the log is asked first
    assert_one_line_error(checked, ExitCode.ERROR)
    doc = document(checked)
    assert [v["verified"] for v in doc["versions"]] == [False] and doc["repository"] == "lab"
    assert doc["error"]["message"] == "1 of 1 versions failed verification" and "verified" in doc["error"]["hint"]


def test_a_usage_error_of_minigit_under_json_is_json_too(tmp_path: Path) -> None:
    bad = minigit("clone", "lab", "--bootstrap", "h:0", "--json", cwd=tmp_path)
    assert_one_line_error(bad, ExitCode.USAGE)
    assert document(bad)["error"]["type"] == "UsageError"
    assert list(tmp_path.iterdir()) == []


def test_click_usage_errors_stay_clicks(tmp_path: Path) -> None:
    result = minigit("log", "--json", "--max-count", "0", cwd=tmp_path)
    assert result.exit_code == ExitCode.USAGE and result.stdout == ""


def test_keygen_twice_under_json(tmp_path: Path) -> None:
    first = minigit("auth", "keygen", "--json", cwd=tmp_path)
    assert first.exit_code == 0 and document(first)["created"] is True
    again = minigit("auth", "keygen", "--json", cwd=tmp_path)
    assert_one_line_error(again, ExitCode.ERROR)
    assert document(again)["error"]["type"] == "KeyExists"


def test_exit_on_error_under_json(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as stopped, console.exit_on_error(json_output=True):
        raise KeyboardInterrupt
    assert stopped.value.exit_code == ExitCode.INTERRUPTED
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"] == {
        "type": "Interrupted",
        "message": "interrupted",
        "hint": None,
        "exit_code": 130,
    }
    assert captured.err == "interrupted\n"

    with pytest.raises(typer.Exit) as stopped, console.exit_on_error(json_output=True) as found:
        found["versions"] = []
        raise UsageError("no", hint="yes")
    assert stopped.value.exit_code == ExitCode.USAGE
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "format": 1,
        "versions": [],
        "error": {"type": "UsageError", "message": "no", "hint": "yes", "exit_code": 2},
    }
    assert captured.err == "error: no\nhint: yes\n"

    with pytest.raises(typer.Exit), console.exit_on_error():  # without --json: nothing on stdout
        raise MinigitError("plain")
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------- a bad address of the service


@pytest.mark.parametrize("bootstrap", BAD_BOOTSTRAPS)
def test_a_bad_bootstrap_flag_is_a_usage_error_for_every_command(
    server: InProcessServer, tmp_path: Path, bootstrap: str
) -> None:
    root = workdir(server, tmp_path / "w", {"a.txt": "a"})
    (root / "a.txt").write_text("b")
    sent = len(server.log)
    for args, cwd in (
        (["clone", "lab"], tmp_path),
        (["init", "other"], root),
        (["pull"], root),
        (["push"], root),
        (["log"], root),
        (["share", "lab", "bob", "--read"], root),
        (["auth", "register"], root),
    ):
        result = minigit(*args, "--bootstrap", bootstrap, cwd=cwd)
        assert_one_line_error(result, ExitCode.USAGE)
        assert result.stderr.startswith(f"error: bad --bootstrap {bootstrap!r}: ")
        assert "MINIGIT_BOOTSTRAP" in result.stderr  # the hint: where else it may have come from
    assert len(server.log) == sent and sorted(os.listdir(tmp_path)) == ["w"]


@pytest.mark.parametrize("bootstrap", [b for b in BAD_BOOTSTRAPS if b])
def test_a_bad_minigit_bootstrap_variable_is_the_same_usage_error(tmp_path: Path, bootstrap: str) -> None:
    result = minigit("clone", "lab", cwd=tmp_path, env={"MINIGIT_BOOTSTRAP": bootstrap})
    assert_one_line_error(result, ExitCode.USAGE)
    assert result.stderr.startswith(f"error: bad --bootstrap {bootstrap!r}: ")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_minigit_bootstrap_variable_is_unset(server: InProcessServer, tmp_path: Path) -> None:
    workdir(server, tmp_path / "w", {"a.txt": "a"})
    result = minigit("clone", "lab", "copy", cwd=tmp_path, env={"MINIGIT_BOOTSTRAP": ""})
    assert result.exit_code == 0, result.output  # as click reads variables: empty is not set


@pytest.mark.parametrize("saved", ["localhost:abc", "garbage:::", ":9092", "host:0", "host:99999", "a b:1", " , "])
def test_a_corrupt_bootstrap_in_dot_minigit_is_corrupt_metadata(
    server: InProcessServer, tmp_path: Path, saved: str
) -> None:
    root = workdir(server, tmp_path / "w", {"a.txt": "a"})
    meta = ws.read_metadata(root)
    ws.write_metadata(root, dataclasses.replace(meta, bootstrap=saved))
    before = (root / ws.METADATA_NAME).read_text()
    for args in (["pull"], ["push"], ["log"], ["pull", "--json"]):
        result = minigit(*args, cwd=root)
        assert_one_line_error(result, ExitCode.ERROR)
        assert f".minigit is corrupt: bad bootstrap {saved!r}" in result.stderr
        assert "hint: nothing was changed; give the right value with --bootstrap" in result.stderr
    assert (root / ws.METADATA_NAME).read_text() == before
    assert minigit("log", "--bootstrap", "localhost:9092", cwd=root).exit_code == 0  # the flag wins


# ---------------------------------------------------------------- nothing said before it is checked


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda d: d.write_text("a file"), ExitCode.USAGE),
        (lambda d: (d.mkdir(), (d / "x").write_text("x")), ExitCode.USAGE),
        (lambda d: d.symlink_to(d.parent / "nowhere"), ExitCode.USAGE),
    ],
    ids=["a-file", "a-full-directory", "a-dangling-symlink"],
)
def test_clone_says_nothing_before_refusing_its_destination(
    server: InProcessServer, tmp_path: Path, make, code
) -> None:
    workdir(server, tmp_path / "origin", {"a.txt": "a"})
    sent = len(server.log)
    make(tmp_path / "dest")
    result = minigit("clone", "lab", "dest", cwd=tmp_path)
    assert_one_line_error(result, code)
    assert "Cloning into" not in result.output and "already exists and is not an empty directory" in result.stderr
    assert len(server.log) == sent  # nothing asked either


def test_clone_under_a_file_is_refused_before_anything(server: InProcessServer, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    result = minigit("clone", "lab", "afile/sub", cwd=tmp_path)
    assert_one_line_error(result, ExitCode.USAGE)
    assert "Cloning into" not in result.output and "is not a directory" in result.stderr
    assert server.log == []


@pytest.mark.parametrize("name", ["bad/name", "-x", ".hidden", ""])
def test_clone_of_a_bad_name_says_nothing_first(server: InProcessServer, tmp_path: Path, name: str) -> None:
    result = minigit("clone", "--", name, cwd=tmp_path)
    assert_one_line_error(result, ExitCode.ERROR)
    assert "Cloning into" not in result.output and "repository name" in result.stderr
    assert server.log == [] and list(tmp_path.iterdir()) == []


def test_clone_says_where_it_clones_once_it_can(server: InProcessServer, tmp_path: Path) -> None:
    workdir(server, tmp_path / "origin", {"a.txt": "a"})
    (tmp_path / "empty").mkdir()
    for target in ("new/deeper", "empty"):
        result = minigit("clone", "lab", target, cwd=tmp_path)
        assert result.exit_code == 0, result.output
        assert result.stderr.startswith(f"Cloning into '{target}'...\n")


def test_init_says_created_only_once_it_is(server: InProcessServer, tmp_path: Path) -> None:
    workdir(server, tmp_path / "origin", {"a.txt": "a"})
    other = tmp_path / "other"
    other.mkdir()
    taken = minigit("init", "lab", cwd=other)
    assert_one_line_error(taken, ExitCode.ERROR)
    assert "Created" not in taken.output and not (other / ws.METADATA_NAME).exists()


def test_the_clone_destination_checks(tmp_path: Path) -> None:
    assert preflight.clone_destination("lab", None) == Path("lab")
    assert preflight.clone_destination("lab", tmp_path / "a" / "b") == tmp_path / "a" / "b"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    meta = ws.Metadata("lab", ws.UNFINISHED_VERSION, "localhost:9092", "", {})
    ws.write_metadata(unfinished, meta)
    assert preflight.clone_destination("lab", unfinished) == unfinished  # the clone finishes it
    with pytest.raises(UsageError, match="not an empty directory"):
        preflight.clone_destination("other", unfinished)
    with pytest.raises(MinigitError, match="invalid repository name"):
        preflight.clone_destination("a b", None)


def test_the_preflight_errors_are_the_operations_errors() -> None:
    """The words are those ``operations.clone_repository`` uses when it meets the same."""
    assert op.not_empty(Path("/x")).message == "destination path '/x' already exists and is not an empty directory"


def test_a_failure_of_this_machine_s_files_is_one_error_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A clone into a full disk, a pull where a folder may not be written: the OSError
    of the write escaped as rich's traceback (a screen of it), exit 1."""
    with pytest.raises(typer.Exit) as stopped, console.exit_on_error(json_output=True):
        raise OSError(28, "No space left on device")
    assert stopped.value.exit_code == ExitCode.ERROR
    captured = capsys.readouterr()
    assert captured.err == "error: No space left on device\n"
    assert json.loads(captured.out)["error"]["message"] == "No space left on device"

    with pytest.raises(typer.Exit) as stopped, console.exit_on_error():
        raise PermissionError(13, "Permission denied", "/w/a/b.txt")
    assert stopped.value.exit_code == ExitCode.ERROR
    assert capsys.readouterr().err == "error: /w/a/b.txt: Permission denied\n"
