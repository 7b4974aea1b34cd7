"""minigit_server.logs: JSON lines (one object a line, whatever the message holds),
text lines as before, files rotated by size; and the --log-* settings of start."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from minigit.config import LogSettings
from minigit.errors import UsageError
from minigit_server import bus, cli
from minigit_server.logs import JsonLineFormatter, formatter_for, log_handlers
from minigit_server.replica import Replica
from minigit_server.service import Handled
from minigit_server.supervisor import Supervisor


def record(message: str = "hello %s", args: tuple = ("world",), **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("minigit.replica", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_json_line_has_time_level_replica_logger_and_message() -> None:
    line = JsonLineFormatter("2").format(record())
    entry = json.loads(line)
    assert list(entry) == ["time", "level", "replica", "logger", "message"]
    assert entry["level"] == "WARNING" and entry["replica"] == "2" and entry["logger"] == "minigit.replica"
    assert entry["message"] == "hello world"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    when = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
    assert when.utcoffset().total_seconds() == 0


def test_the_time_is_the_records_own_in_utc() -> None:
    made = record()
    made.created = 0.5
    assert json.loads(JsonLineFormatter("1").format(made))["time"] == "1970-01-01T00:00:00.500Z"


def test_a_process_that_is_no_replica_has_no_replica_field() -> None:
    assert "replica" not in json.loads(JsonLineFormatter(None).format(record()))


def test_request_fields_given_as_extra_are_fields_of_the_line() -> None:
    fields = {"user": "ana", "action": "push", "repo": "lab", "status": "accepted", "partition": 3, "ms": 12.5}
    entry = json.loads(JsonLineFormatter("1").format(record(**fields)))
    assert {name: entry[name] for name in fields} == fields
    assert "detail" not in entry


def test_a_value_json_cannot_write_is_written_as_text() -> None:
    entry = json.loads(JsonLineFormatter("1").format(record(repo=Path("a/b"))))
    assert entry["repo"] == "a/b"


@pytest.mark.parametrize(
    "text", ["two\nlines", "carriage\rreturn", "sep\u2028arator", "para\u2029graph", 'q"uo\\te', "é"]
)
def test_whatever_the_message_holds_a_json_entry_is_one_ascii_line(text: str) -> None:
    line = JsonLineFormatter("1").format(record("%s", (text,), user=text))
    assert line.isascii()
    assert len(line.splitlines()) == 1
    assert json.loads(line)["message"] == text and json.loads(line)["user"] == text


def test_an_exception_is_an_exc_field_not_more_lines() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        made = logging.LogRecord("minigit.replica", logging.ERROR, __file__, 1, "loop failed", (), sys.exc_info())
    line = JsonLineFormatter("1").format(made)
    assert len(line.splitlines()) == 1
    entry = json.loads(line)
    assert entry["message"] == "loop failed"
    assert entry["exc"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad\nthing" in entry["exc"]


def test_text_lines_are_as_they_always_were() -> None:
    formatter = formatter_for(LogSettings(), "replica-2", "2")
    line = formatter.format(record())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} replica-2 WARNING hello world", line)
    assert isinstance(formatter_for(LogSettings("json"), "supervisor", None), JsonLineFormatter)


@pytest.fixture
def logger(request: pytest.FixtureRequest):
    """A logger of its own, its handlers closed at the end."""
    made = logging.getLogger(f"test.logs.{request.node.name}")
    made.propagate = False
    made.setLevel(logging.INFO)
    yield made
    for handler in list(made.handlers):
        made.removeHandler(handler)
        handler.close()


def test_a_log_file_rotates_at_its_size_keeping_its_backups(tmp_path: Path, logger: logging.Logger) -> None:
    log_file = tmp_path / "replica-1" / "replica.log"
    settings = LogSettings("json", max_bytes=1000, backups=2)
    handlers = log_handlers(settings, log_file, formatter_for(settings, "replica-1", "1"))
    logger.addHandler(handlers[1])  # the file only: stderr stays quiet
    for n in range(200):
        logger.info("line %d %s", n, "x" * 40)
    files = sorted(path.name for path in log_file.parent.iterdir())
    assert files == ["replica.log", "replica.log.1", "replica.log.2"]
    for path in log_file.parent.iterdir():
        assert path.stat().st_size <= 1000
        for line in path.read_text().splitlines():
            json.loads(line)
    assert json.loads(log_file.read_text().splitlines()[-1])["message"].startswith("line 199 ")
    assert isinstance(handlers[0], logging.StreamHandler) and handlers[0].formatter is handlers[1].formatter


def test_max_bytes_zero_never_rotates(tmp_path: Path, logger: logging.Logger) -> None:
    log_file = tmp_path / "server.log"
    settings = LogSettings("text", max_bytes=0, backups=1)
    logger.addHandler(log_handlers(settings, log_file, formatter_for(settings, "supervisor", None))[1])
    for n in range(100):
        logger.info("line %d %s", n, "x" * 40)
    assert [path.name for path in tmp_path.iterdir()] == ["server.log"]
    assert len(log_file.read_text().splitlines()) == 100


def test_a_replicas_request_line_in_json_carries_its_fields(tmp_path: Path, logger: logging.Logger) -> None:
    settings = LogSettings("json")
    logger.addHandler(log_handlers(settings, tmp_path / "replica.log", formatter_for(settings, "replica-1", "1"))[1])
    replica = object.__new__(Replica)
    replica.log = logger
    replica.log_request(Handled("ana", "push", "lab", "rejected", "base v1, head v2"), 2, 0.0314)
    entry = json.loads((tmp_path / "replica.log").read_text())
    assert entry["message"] == "ana push lab -> rejected (base v1, head v2) [partition 2, 31 ms]"
    assert {k: entry[k] for k in ("user", "action", "repo", "status", "detail", "partition", "ms")} == {
        "user": "ana",
        "action": "push",
        "repo": "lab",
        "status": "rejected",
        "detail": "base v1, head v2",
        "partition": 2,
        "ms": 31.4,
    }


def test_the_supervisor_writes_its_log_in_the_format_asked(tmp_path: Path) -> None:
    chief = Supervisor([], lambda replica_id: [], tmp_path / "server.log", logs=LogSettings("json", 1000, 1))
    try:
        chief.log.warning("replica %s died", "2")
        entry = json.loads((tmp_path / "server.log").read_text().splitlines()[-1])
        assert entry["logger"] == "minigit.supervisor" and entry["message"] == "replica 2 died"
        assert "replica" not in entry
    finally:
        for handler in list(chief.log.handlers):
            chief.log.removeHandler(handler)
            handler.close()


# -- the settings


def test_log_settings_take_a_format_in_any_case_and_become_flags() -> None:
    settings = LogSettings.parse(" JSON ", 2048, 3)
    assert settings == LogSettings("json", 2048, 3)
    assert settings.flags() == ["--log-format", "json", "--log-max-bytes", "2048", "--log-backups", "3"]
    assert LogSettings.parse("text", 0, 1).max_bytes == 0


@pytest.mark.parametrize(
    ("log_format", "max_bytes", "backups", "message"),
    [
        ("xml", 1, 1, "bad --log-format 'xml': use one of text, json"),
        ("", 1, 1, "bad --log-format"),
        ("text", -1, 1, "bad --log-max-bytes -1"),
        ("text", 1, 0, "bad --log-backups 0"),
    ],
)
def test_log_settings_refuse_what_cannot_work(log_format: str, max_bytes: int, backups: int, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        LogSettings.parse(log_format, max_bytes, backups)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--log-format", "xml"], {}, "bad --log-format 'xml'"),
        ([], {"MINIGIT_LOG_FORMAT": "yaml"}, "bad --log-format 'yaml'"),
        (["--log-format", "xml"], {"MINIGIT_LOG_FORMAT": "json"}, "bad --log-format 'xml'"),  # the flag wins
        ([], {"MINIGIT_LOG_BACKUPS": "0"}, "bad --log-backups 0"),
        (["--log-max-bytes", "-5"], {}, "bad --log-max-bytes -5"),
    ],
)
def test_start_refuses_bad_log_settings_before_creating_topics(monkeypatch, args, env, message) -> None:
    created = []
    monkeypatch.setattr(bus, "ensure_topics", lambda *a, **k: created.append(a) or [])
    done = CliRunner().invoke(cli.app, ["start", "--replica-id", "1", *args], env=env)
    assert done.exit_code == 2, done.output
    assert message in done.output
    assert created == []
