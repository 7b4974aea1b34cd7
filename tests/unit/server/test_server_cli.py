"""minigit_server.cli: the minigit-server commands, with Kafka replaced by fakes.

What comes from the wire (heartbeats, replies) is text, never rich markup; ping
succeeds only on an ``ok`` answer; flags are checked before anything touches Kafka.
The real Kafka path is covered by tests/integration/test_status_verify.py.
"""

from __future__ import annotations

import math
import time
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from minigit import protocol as p
from minigit.console import err, out
from minigit.errors import ServerUnreachable
from minigit_server import bus, cli, health
from minigit_server.replica import HEARTBEAT_INTERVAL_S

HOSTILE = ["[/]", "[/x]", "[bold]loud", "[link=http://x]y"]


@pytest.fixture(autouse=True)
def wide(monkeypatch) -> None:
    """Room for a whole table row, so that no value is wrapped."""
    for console in (out, err):
        monkeypatch.setattr(console, "_width", 250)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def heartbeat(replica: str, host: str = "h", repos: dict[str, p.RepoReport] | None = None, **fields) -> p.Heartbeat:
    now_ms = wall_ms()
    values = {
        "replica": replica,
        "host": host,
        "pid": 1,
        "started_ms": now_ms,
        "sent_ms": now_ms,
        "serving": [0],
        "applied": {0: 10},
        "log_end": {0: 10},
        "repos": repos if repos is not None else {},
        **fields,
    }
    return p.Heartbeat(**values)


def wall_ms() -> int:
    return int(time.time() * 1000)


def report(head: int = 3, digest: str = "d", changed_at: int = 9) -> p.RepoReport:
    return p.RepoReport(head=head, digest=digest, partition=0, changed_at=changed_at)


# -- 1. values from heartbeats are text, not markup


@pytest.mark.parametrize("host", HOSTILE)
def test_replica_table_prints_a_hostile_host_as_text(host: str) -> None:
    rows = health.describe_replicas([heartbeat("1", host=host)], wall_ms(), {0: 10}, HEARTBEAT_INTERVAL_S)
    with out.capture() as captured:
        out.print(cli.replica_table(rows, wall_ms()))
    assert host in captured.get()


def test_repository_table_and_verdicts_print_names_as_text(monkeypatch) -> None:
    # The name rules keep such names out of parsed heartbeats; the printing must not depend on it.
    heads = {"[/]": {"[/x]": 2, "2": 3}}
    verdicts = [
        health.RepoVerdict("[/]", 0, health.Verdict.DISAGREE, {"[/x]": 2, "2": 3}, {}, ["[/x]"]),
        health.RepoVerdict("[bold]b", 0, health.Verdict.BEHIND, {"[/x]": 2, "2": 3}, {"[/x]": 4}, []),
        health.RepoVerdict("[/c]", 0, health.Verdict.AGREE, {"[/x]": 3, "2": 3}),
    ]
    with out.capture() as captured:
        out.print(cli.repository_table(heads, ["[/x]", "2"]))
        cli.print_verdicts(verdicts, ["[/x]", "2"])
    text = captured.get()
    assert "replica [/x]" in text and "[/]" in text
    assert "DISAGREE  [/] (version 3): replica [/x] differs" in text
    assert "behind    [bold]b (version 3): replica [/x] by 4 records" in text
    assert "ok        [/c] (version 3)" in text


def test_status_and_verify_print_a_hostile_host(runner: CliRunner, monkeypatch) -> None:
    beats = [heartbeat(r, host="[/]", repos={"demo": report()}) for r in ("1", "2")]
    monkeypatch.setattr(cli, "read_cluster", lambda settings: (beats, {0: 10}))
    done = runner.invoke(cli.app, ["status"])
    assert done.exit_code == 0, done.output
    assert "[/]" in done.output and "demo" in done.output
    done = runner.invoke(cli.app, ["verify", "--wait", "0"])
    assert done.exit_code == 0, done.output
    assert "ok        demo (version 3): 2 replicas agree" in done.output


def test_status_says_when_a_heartbeat_comes_from_the_future(runner: CliRunner, monkeypatch) -> None:
    beats = [heartbeat("1", sent_ms=wall_ms() + 3_600_000)]
    monkeypatch.setattr(cli, "read_cluster", lambda settings: (beats, {0: 10}))
    done = runner.invoke(cli.app, ["status"])
    assert done.exit_code == 4, done.output  # its only replica is not up
    assert "silent" in done.output and "in the future" in done.output


# -- ping, with a fake Bus


class FakeBus:
    """What ping needs of minigit_server.bus.Bus; ``reply`` is what the service answers."""

    reply: ClassVar[p.Reply | None] = None
    missing: ClassVar[bool] = False
    opened: ClassVar[list[FakeBus]] = []

    def __init__(self, settings, client_id: str, bootstrap_timeout_s: float | None = None) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.asked: list[tuple[p.Request, float]] = []
        type(self).opened.append(self)

    def partition_count(self, topic: str, wait_s: float = 10.0) -> int:
        if self.missing:
            raise ServerUnreachable(f"the minigit topics do not exist on {self.settings.bootstrap} (no topic {topic})")
        return 3

    def ask(self, request: p.Request, timeout_s: float) -> p.Reply | None:
        self.asked.append((request, timeout_s))
        if self.reply is None:
            return None
        return p.Reply(**{**vars(self.reply), "request_id": request.request_id})

    def close(self) -> None:
        pass


@pytest.fixture
def fake_bus(monkeypatch) -> type[FakeBus]:
    class Fake(FakeBus):
        opened: ClassVar[list[FakeBus]] = []  # this test's buses only

    monkeypatch.setattr(bus, "Bus", Fake)
    return Fake


def answer(status: p.Status, message: str) -> p.Reply:
    return p.Reply(request_id="0" * 32, action="ping", stream="s", replica="2", status=status, message=message)


def test_ping_prints_the_answer_as_text(runner: CliRunner, fake_bus) -> None:
    fake_bus.reply = answer(p.Status.OK, "replica 2 serves [/x] [bold]")
    done = runner.invoke(cli.app, ["ping"])
    assert done.exit_code == 0, done.output
    assert done.output.startswith("replica 2 serves [/x] [bold] (round trip ")


@pytest.mark.parametrize("status", [s for s in p.Status if s not in (p.Status.OK, p.Status.WORKING)])
def test_ping_fails_on_any_answer_but_ok(runner: CliRunner, fake_bus, status: p.Status) -> None:
    fake_bus.reply = answer(status, "bad request: [/x]")
    done = runner.invoke(cli.app, ["ping"])
    assert done.exit_code == 1, done.output
    assert f"error: replica 2 answered {status}: bad request: [/x]" in done.output
    assert "Traceback" not in done.output


def test_ping_without_an_answer_is_unreachable(runner: CliRunner, fake_bus) -> None:
    fake_bus.reply = None
    done = runner.invoke(cli.app, ["ping", "--timeout", "0.1"])
    assert done.exit_code == 4 and "no answer from the minigit service within 0.1s" in done.output


def test_ping_without_the_topics_is_unreachable(runner: CliRunner, fake_bus) -> None:
    fake_bus.missing = True
    done = runner.invoke(cli.app, ["ping", "--namespace", "nosuch-"])
    assert done.exit_code == 4 and "the minigit topics do not exist" in done.output


# -- 5. ping --timeout has the client's bounds


@pytest.mark.parametrize("value", ["0", "-1", "0.09", "nan", "inf", "-inf", "3600.5", "1e400"])
def test_ping_refuses_a_timeout_out_of_bounds(runner: CliRunner, fake_bus, value: str) -> None:
    done = runner.invoke(cli.app, ["ping", "--timeout", value])
    assert done.exit_code == 2, done.output
    assert "--timeout" in done.output and "Traceback" not in done.output
    assert fake_bus.opened == []  # refused before any connection


@pytest.mark.parametrize("value", ["0.1", "3600"])
def test_ping_takes_a_timeout_within_bounds(runner: CliRunner, fake_bus, value: str) -> None:
    fake_bus.reply = answer(p.Status.OK, "replica 2 serves ping")
    done = runner.invoke(cli.app, ["ping", "--timeout", value])
    assert done.exit_code == 0, done.output
    [opened] = fake_bus.opened
    [(request, timeout)] = opened.asked
    assert timeout == float(value) and request.timeout_ms == int(float(value) * 1000)
    assert math.isfinite(timeout)


# -- 8. start checks the replica id before creating anything


@pytest.mark.parametrize("replica_id", ["../../x", "bad id!", "[/]", ""])
def test_start_refuses_a_bad_replica_id_before_creating_topics(runner: CliRunner, monkeypatch, replica_id) -> None:
    created = []
    monkeypatch.setattr(bus, "ensure_topics", lambda *args, **kwargs: created.append(args) or [])
    done = runner.invoke(cli.app, ["start", "--replica-id", replica_id, "--namespace", "nosuch-"])
    assert done.exit_code == 1, done.output
    assert "replica name" in done.output
    assert created == []


def test_plain_shows_control_characters_escaped_and_markup_as_text():
    from minigit_server.cli import plain

    assert plain("host\x1b]0;PWNED\x07[bold]x") == "host\\033]0;PWNED\\a\\[bold]x"


# -- status and verify as health checks


def test_status_fails_when_no_replica_is_up(runner: CliRunner, monkeypatch) -> None:
    beats = [heartbeat("1", stopping=True), heartbeat("2", sent_ms=wall_ms() - 60_000)]
    monkeypatch.setattr(cli, "read_cluster", lambda settings: (beats, {0: 10}))
    done = runner.invoke(cli.app, ["status"])
    assert done.exit_code == 4 and "no replica is up" in done.output
    assert "stopped" in done.output and "silent" in done.output  # the table is still shown
    beats.append(heartbeat("3"))
    assert runner.invoke(cli.app, ["status"]).exit_code == 0


def test_verify_fails_when_a_known_replica_is_down(runner: CliRunner, monkeypatch) -> None:
    beats = [heartbeat(r, repos={"demo": report()}) for r in ("1", "2")]
    beats.append(heartbeat("3", repos={"demo": report()}, stopping=True))
    monkeypatch.setattr(cli, "read_cluster", lambda settings: (beats, {0: 10}))
    done = runner.invoke(cli.app, ["verify", "--wait", "0"])
    assert done.exit_code == 3, done.output
    assert "DOWN      replica 3: stopped" in done.output and "minigit-server forget 3" in done.output
    beats.pop()  # forgotten
    assert runner.invoke(cli.app, ["verify", "--wait", "0"]).exit_code == 0


def test_verify_does_not_call_unreadable_report_pages_agreement(runner: CliRunner, monkeypatch) -> None:
    """A store edited behind its replica's back (on every replica alike): the pages
    the heartbeats name no longer match what was read, so the repositories filed
    there are unknown. verify said "All repositories are available!", exit 0."""
    page = (0, p.report_page_of("lab"))
    beats = [health.ReplicaView(heartbeat(r), {"demo": report()}, unread=frozenset({page})) for r in ("1", "2")]
    monkeypatch.setattr(cli, "read_cluster", lambda settings: (beats, {0: 10}))
    done = runner.invoke(cli.app, ["verify", "--wait", "0"])
    assert done.exit_code == 3, done.output
    assert (
        "UNREAD    replica 1: 1 report page(s)" in done.output and "All repositories are available" not in done.output
    )
    done = runner.invoke(cli.app, ["verify", "--wait", "0", "--json"])
    assert done.exit_code == 3 and '"page": ' in done.output
    beats[:] = [heartbeat(r, repos={"demo": report()}) for r in ("1", "2")]  # published again
    assert runner.invoke(cli.app, ["verify", "--wait", "0"]).exit_code == 0


def test_verify_expect_counts_the_replicas_up(runner: CliRunner, monkeypatch) -> None:
    beats = [heartbeat(r, repos={"demo": report()}) for r in ("1", "2")]
    monkeypatch.setattr(cli, "read_cluster", lambda settings: (beats, {0: 10}))
    done = runner.invoke(cli.app, ["verify", "--wait", "0", "--expect", "3"])
    assert done.exit_code == 3 and "1 of the 3 replicas expected are not up" in done.output
    assert runner.invoke(cli.app, ["verify", "--wait", "0", "--expect", "2"]).exit_code == 0
    done = runner.invoke(cli.app, ["verify", "--wait", "0", "--expect", "3", "--json"])
    assert done.exit_code == 3 and '"expected": 3' in done.output


def test_with_many_repositories_status_and_verify_list_only_those_needing_a_look(
    runner: CliRunner, monkeypatch
) -> None:
    repos = {f"r{n:03d}": report() for n in range(150)}
    beats = [heartbeat("1", repos=repos), heartbeat("2", repos={**repos, "r007": report(head=4, digest="x")})]
    monkeypatch.setattr(cli, "read_cluster", lambda settings: (beats, {0: 10}))
    done = runner.invoke(cli.app, ["status"])
    assert done.exit_code == 0, done.output
    assert "r007" in done.output and "r008" not in done.output
    assert "and 149 more repositories at the same head on every replica (--all lists them)" in done.output
    assert "r008" in runner.invoke(cli.app, ["status", "--all"]).output
    done = runner.invoke(cli.app, ["verify", "--wait", "0"])
    assert done.exit_code == 3, done.output
    assert "DISAGREE  r007 (version 4)" in done.output and "r008" not in done.output
    assert "ok        149 more repositories: every replica agrees (--all lists them)" in done.output
    assert "ok        r008 (version 3): 2 replicas agree" in runner.invoke(cli.app, ["verify", "--all"]).output


# -- retention of the transient topics


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--requests-retention-ms", "1000"], {}, "bad --requests-retention-ms 1000"),
        ([], {"MINIGIT_RESPONSES_RETENTION_MS": "5"}, "bad --responses-retention-ms 5"),
        (["--transient-retention-bytes", "1048576"], {}, "bad --transient-retention-bytes 1048576"),
        # past what Kafka's LONG holds: a CreateTopics error of hundreds of characters before
        (["--requests-retention-ms", str(2**63)], {}, "keep at most"),
        (["--transient-retention-bytes", str(2**63)], {}, "keep at most"),
        # the size cap must hold two pushes of the largest size the replicas accept
        (["--max-push-bytes", str(2 * 1024**3), "--transient-retention-bytes", str(3 * 1024**3)], {}, "keep at least"),
    ],
)
def test_start_refuses_a_retention_that_could_delete_what_is_needed(runner: CliRunner, monkeypatch, args, env, message):
    created = []
    monkeypatch.setattr(bus, "ensure_topics", lambda *a, **k: created.append(a) or [])
    done = runner.invoke(cli.app, ["start", "--replica-id", "1", *args], env=env)
    assert done.exit_code == 2, done.output
    assert message in done.output
    assert created == []


def test_start_sets_retention_from_flags_over_the_environment_and_passes_it_to_every_replica(
    runner: CliRunner, monkeypatch, tmp_path
) -> None:
    from minigit.config import TopicRetention
    from minigit_server import supervisor

    told, commands = [], []
    monkeypatch.setattr(bus, "ensure_topics", lambda *a, **k: told.append(a[4] if len(a) > 4 else k["retention"]) or [])

    class Chief:
        def __init__(self, ids, command_for, *args, **kwargs) -> None:
            commands.extend(command_for(replica_id) for replica_id in ids)

        def run(self) -> int:
            return 0

    monkeypatch.setattr(supervisor, "Supervisor", Chief)
    env = {"MINIGIT_REQUESTS_RETENTION_MS": "70000", "MINIGIT_RESPONSES_RETENTION_MS": "80000"}
    args = ["start", "--replicas", "2", "--data-dir", str(tmp_path), "--responses-retention-ms", "90000"]
    done = runner.invoke(cli.app, args, env=env)
    assert done.exit_code == 0, done.output
    expected = TopicRetention(requests_ms=70000, responses_ms=90000)  # the flag wins over its variable
    assert told == [expected]
    assert len(commands) == 2 and all(" ".join(expected.flags()) in " ".join(c) for c in commands)


def test_a_heartbeat_is_as_old_as_it_was_when_read_not_once_parsed(runner: CliRunner, monkeypatch) -> None:
    """Parsing thousands of reports on a loaded machine takes seconds: the replicas
    were up when their records were read."""
    read_ms = wall_ms() - 60_000
    beats = [heartbeat(r, sent_ms=read_ms - 500, repos={"demo": report()}) for r in ("1", "2")]

    def read_cluster(settings):
        cli.READ_AT_MS[0] = read_ms
        return beats, {0: 10}

    monkeypatch.setattr(cli, "read_cluster", read_cluster)
    done = runner.invoke(cli.app, ["status", "--json"])
    assert done.exit_code == 0 and '"state": "up"' in done.output, done.output
    done = runner.invoke(cli.app, ["verify", "--wait", "0"])
    assert done.exit_code == 0, done.output
