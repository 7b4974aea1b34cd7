"""minigit_server.health: who is alive, who is behind, who disagrees (no Kafka)."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from minigit import identity
from minigit import protocol as p
from minigit.errors import ProtocolError
from minigit_server import health


def beat(replica: str, applied: dict[int, int], repos: dict[str, tuple], sent_ms: int = 10_000, stopping: bool = False):
    """repos: name -> (head, digest, changed_at); every repository lives in partition 0."""
    return p.Heartbeat(
        replica=replica,
        host="h",
        pid=1,
        started_ms=0,
        sent_ms=sent_ms,
        serving=[],
        applied=applied,
        log_end={},
        repos={n: p.RepoReport(head=h, digest=d, partition=0, changed_at=c) for n, (h, d, c) in repos.items()},
        stopping=stopping,
    )


def test_all_agree() -> None:
    beats = [beat(r, {0: 10}, {"demo": (3, "d3", 9)}) for r in "123"]
    [verdict] = health.verify_repositories(beats)
    assert (verdict.status, verdict.behind, verdict.disagreeing) == ("agree", {}, [])
    assert verdict.heads == {"1": 3, "2": 3, "3": 3}


def test_a_verdict_as_json_is_every_field_of_it() -> None:
    """(written out by hand for speed: 10,000 verdicts; a field added must be added there too)"""
    beats = [beat("1", {0: 10}, {"demo": (3, "d3", 9)}), beat("2", {0: 5}, {"demo": (2, "d2", 4)})]
    [verdict] = health.verify_repositories(beats)
    assert verdict.behind
    assert verdict.to_json() == dataclasses.asdict(verdict)
    assert json.loads(json.dumps(verdict.to_json()))["status"] == "behind"


def test_a_replica_that_has_not_applied_the_last_change_is_behind_not_wrong() -> None:
    beats = [
        beat("1", {0: 10}, {"demo": (3, "d3", 9)}),
        beat("2", {0: 10}, {"demo": (3, "d3", 9)}),
        beat("3", {0: 7}, {"demo": (2, "d2", 5)}),
    ]
    [verdict] = health.verify_repositories(beats)
    assert (verdict.status, verdict.behind) == ("behind", {"3": 3})


def test_same_position_different_digest_is_a_disagreement_of_the_minority() -> None:
    beats = [
        beat("1", {0: 10}, {"demo": (3, "d3", 9)}),
        beat("2", {0: 10}, {"demo": (3, "XX", 9)}),
        beat("3", {0: 10}, {"demo": (3, "d3", 9)}),
    ]
    [verdict] = health.verify_repositories(beats)
    assert (verdict.status, verdict.disagreeing) == ("disagree", ["2"])


def test_a_tie_blames_every_replica() -> None:
    beats = [beat("1", {0: 10}, {"demo": (3, "a", 9)}), beat("2", {0: 10}, {"demo": (3, "b", 9)})]
    [verdict] = health.verify_repositories(beats)
    assert (verdict.status, verdict.disagreeing) == ("disagree", ["1", "2"])


def test_later_records_of_other_repositories_do_not_matter() -> None:
    # Replica 3 is behind in the partition, but past demo's last change: it must agree on demo.
    beats = [
        beat("1", {0: 50}, {"demo": (3, "d3", 9), "other": (7, "o7", 49)}),
        beat("3", {0: 20}, {"demo": (3, "d3", 9), "other": (4, "o4", 18)}),
    ]
    verdicts = {v.repo: v for v in health.verify_repositories(beats)}
    assert verdicts["demo"].status == "agree"
    assert (verdicts["other"].status, verdicts["other"].behind) == ("behind", {"3": 30})


def test_a_replica_missing_a_repository_it_should_have_disagrees() -> None:
    beats = [
        beat("1", {0: 10}, {"demo": (1, "d1", 3)}),
        beat("2", {0: 10}, {}),
        beat("3", {0: 10}, {"demo": (1, "d1", 3)}),
    ]
    [verdict] = health.verify_repositories(beats)
    assert (verdict.status, verdict.disagreeing, verdict.heads["2"]) == ("disagree", ["2"], None)


@pytest.mark.parametrize("holders", [1, 2])
def test_a_replica_that_has_not_applied_a_deletion_yet_is_behind_not_wrong(holders: int) -> None:
    beats = [beat(r, {0: 12}, {}) for r in "123"[holders:]]
    beats += [beat(r, {0: 10}, {"demo": (2, "d2", 6)}) for r in "123"[:holders]]
    [verdict] = health.verify_repositories(beats)
    assert (verdict.status, verdict.disagreeing) == ("behind", [])
    assert verdict.behind == {r: 2 for r in "123"[:holders]}


def test_a_replica_missing_a_repository_behind_the_ones_holding_it_disagrees() -> None:
    beats = [
        beat("1", {0: 12}, {"demo": (1, "d1", 3)}),
        beat("2", {0: 10}, {}),
        beat("3", {0: 12}, {"demo": (1, "d1", 3)}),
    ]
    [verdict] = health.verify_repositories(beats)
    assert (verdict.status, verdict.disagreeing) == ("disagree", ["2"])


def test_replica_states_and_lag() -> None:
    beats = [
        beat("1", {0: 10, 1: 4}, {}, sent_ms=10_000),
        beat("2", {0: 10}, {}, sent_ms=1_000),
        beat("3", {0: 10}, {}, sent_ms=10_000, stopping=True),
    ]
    rows = {r.replica: r for r in health.describe_replicas(beats, 11_000, {0: 12, 1: 4}, interval_s=2.0)}
    assert (rows["1"].state, rows["2"].state, rows["3"].state) == ("up", "silent", "stopped")
    assert rows["1"].lag == {0: 2, 1: 0} and rows["2"].lag == {0: 2, 1: 4}
    assert [b.replica for b in health.live_beats(beats, 11_000, 2.0)] == ["1"]


def test_a_change_no_replica_has_applied_makes_every_replica_behind_not_a_crash() -> None:
    # A heartbeat claims a change at offset 40 (its own applied offset says otherwise): nobody is past it.
    beats = [
        beat("1", {0: 10}, {"demo": (3, "d3", 40)}),
        beat("2", {0: 10}, {"demo": (3, "d3", 9)}),
        beat("3", {0: 8}, {"demo": (2, "d2", 5)}),
    ]
    [verdict] = health.verify_repositories(beats)
    assert (verdict.status, verdict.disagreeing) == ("behind", [])
    assert verdict.behind == {"1": 31, "2": 31, "3": 33}  # records up to and including offset 40


def placed(replica: str, partition: int, applied: dict[int, int], digest: str = "d3") -> p.Heartbeat:
    report = p.RepoReport(head=3, digest=digest, partition=partition, changed_at=9)
    return p.Heartbeat(
        replica=replica,
        host="h",
        pid=1,
        started_ms=0,
        sent_ms=10_000,
        serving=[],
        applied=applied,
        log_end={},
        repos={"demo": report},
    )


def test_a_replica_filing_a_repository_in_another_partition_disagrees() -> None:
    # The first holder is the odd one out: the majority's partition is the one to compare in.
    beats = [placed("1", 1, {0: 10, 1: 10}), placed("2", 0, {0: 10, 1: 10}), placed("3", 0, {0: 10, 1: 10})]
    [verdict] = health.verify_repositories(beats)
    assert (verdict.status, verdict.partition, verdict.disagreeing) == ("disagree", 0, ["1"])
    assert verdict.behind == {}


def test_a_misplaced_replica_is_not_compared_at_the_majority_partition() -> None:
    # Replica 1 is far along partition 0 but files demo in partition 1: it neither
    # makes the others behind nor hides their digest disagreement.
    beats = [
        placed("1", 1, {0: 90, 1: 10}),
        placed("2", 0, {0: 10, 1: 0}),
        placed("3", 0, {0: 10, 1: 0}),
        placed("4", 0, {0: 10, 1: 0}, digest="XX"),
    ]
    [verdict] = health.verify_repositories(beats)
    assert (verdict.status, verdict.partition, verdict.disagreeing, verdict.behind) == ("disagree", 0, ["1", "4"], {})


def test_a_tie_between_partitions_blames_every_holder() -> None:
    beats = [placed("1", 1, {0: 10, 1: 10}), placed("2", 0, {0: 10, 1: 10})]
    [verdict] = health.verify_repositories(beats)
    assert (verdict.status, verdict.disagreeing) == ("disagree", ["1", "2"])


def test_a_heartbeat_from_the_future_is_not_up() -> None:
    now = 100_000
    beats = [
        beat("1", {}, {}, sent_ms=now + 1_000),  # a clock slightly ahead: within the margin
        beat("2", {}, {}, sent_ms=now + 7_000),  # more than 3 intervals of 2 s ahead
        beat("3", {}, {}, sent_ms=2**62),  # forged: would otherwise be "up" forever
    ]
    rows = {r.replica: r.state for r in health.describe_replicas(beats, now, {}, interval_s=2.0)}
    assert rows == {"1": "up", "2": "silent", "3": "silent"}
    assert [b.replica for b in health.live_beats(beats, now, 2.0)] == ["1"]


REQUEST, OLDER = "1" * 32, "2" * 32


def scrubbed(replica: str, request: str, damaged: list[p.DamagedObject] = (), quarantined=()) -> p.Heartbeat:
    report = p.ScrubReport(
        request=request,
        started_ms=1,
        finished_ms=2,
        objects=7,
        bytes=900,
        damaged=list(damaged),
        damaged_count=len(damaged),
    )
    found = list(quarantined)
    return dataclasses.replace(beat(replica, {}, {}), scrub=report, quarantined=found, quarantined_count=len(found))


def damaged(sha: str, repaired: bool) -> p.DamagedObject:
    return p.DamagedObject(partition=1, sha=sha * 64, problem="does not match its content hash", repaired=repaired)


def test_deep_check_passes_only_on_a_clean_pass_that_answers_this_request() -> None:
    results = health.deep_check(
        [scrubbed("1", REQUEST), scrubbed("2", OLDER), beat("3", {}, {})],
        REQUEST,
    )
    states = {r.replica: r.state for r in results}
    assert states == {"1": health.DeepState.CLEAN, "2": health.DeepState.PENDING, "3": health.DeepState.PENDING}
    assert (results[0].objects, results[0].bytes) == (7, 900)


def test_deep_check_names_damage_found_repaired_or_not_and_what_stays_quarantined() -> None:
    found = [damaged("a", repaired=True), damaged("b", repaired=False)]
    quarantined = [damaged("b", repaired=False), damaged("c", repaired=False)]  # c: no row left to scrub
    [result] = health.deep_check([scrubbed("2", REQUEST, found, quarantined)], REQUEST)
    assert result.state == health.DeepState.DAMAGED and result.damaged_count == 3
    assert [(d["sha"][0], d["repaired"]) for d in result.damaged] == [("a", True), ("b", False), ("c", False)]
    # Damage repaired while serving, and not found again by the pass: the pass is clean.
    [clean] = health.deep_check([scrubbed("2", REQUEST)], REQUEST)
    assert clean.state == health.DeepState.CLEAN and clean.damaged == []


def test_a_heartbeat_bounds_its_damage_lists() -> None:
    many = [damaged("a", False)] * (p.MAX_DAMAGE_LISTED + 1)
    doc = beat("1", {}, {}).to_dict()
    with pytest.raises(ProtocolError, match="lists more than"):
        p.Heartbeat.from_dict({**doc, "quarantined": [d.to_dict() for d in many], "quarantined_count": 99})
    with pytest.raises(ProtocolError, match="counts fewer"):
        p.Heartbeat.from_dict({**doc, "quarantined": [damaged("a", False).to_dict()], "quarantined_count": 0})
    with pytest.raises(ProtocolError, match="problem longer"):
        p.DamagedObject(partition=0, sha="a" * 64, problem="x" * 201, repaired=False).validate()


# ---------------------------------------------------------------- the service key each replica uses

KEY_A = identity.public_key_text(Ed25519PrivateKey.from_private_bytes(b"a" * 32).public_key())
KEY_B = identity.public_key_text(Ed25519PrivateKey.from_private_bytes(b"b" * 32).public_key())


def keyed(replica: str, server_key: str, sent_ms: int = 10_000) -> p.Heartbeat:
    return dataclasses.replace(beat(replica, {0: 10}, {}, sent_ms=sent_ms), server_key=server_key)


def fingerprint(key: str) -> str:
    return identity.fingerprint(identity.parse_public_key(key))


def test_replicas_with_one_service_key_agree() -> None:
    check = health.check_server_keys([keyed(r, KEY_A) for r in "123"])
    assert check.agree and check.differing == [] and check.majority == fingerprint(KEY_A)
    assert check.keys == {r: fingerprint(KEY_A) for r in "123"}


def test_a_replica_with_another_service_key_differs_from_the_majority() -> None:
    check = health.check_server_keys([keyed("1", KEY_A), keyed("2", KEY_B), keyed("3", KEY_A)])
    assert not check.agree
    assert (check.majority, check.differing) == (fingerprint(KEY_A), ["2"])
    assert check.to_json()["keys"]["2"] == fingerprint(KEY_B)


def test_a_tie_of_service_keys_blames_every_replica() -> None:
    check = health.check_server_keys([keyed("1", KEY_A), keyed("2", KEY_B)])
    assert (check.majority, check.differing) == (None, ["1", "2"])


def test_a_replica_that_reports_no_service_key_is_not_compared() -> None:
    # one older than the field: neither blamed nor counted
    check = health.check_server_keys([keyed("1", KEY_A), keyed("2", ""), keyed("3", KEY_A)])
    assert check.agree and check.keys["2"] == "" and check.majority == fingerprint(KEY_A)
    assert health.check_server_keys([keyed("1", "")]) == health.ServerKeyCheck({"1": ""}, None, [])
    assert health.check_server_keys([]).agree


def test_a_service_key_that_is_not_a_key_differs() -> None:
    check = health.check_server_keys([keyed("1", KEY_A), keyed("2", "ed25519:nonsense"), keyed("3", KEY_A)])
    assert check.keys["2"] == "invalid" and check.differing == ["2"]


def test_the_replica_rows_show_each_service_key_and_its_fingerprint() -> None:
    [row] = health.describe_replicas([keyed("1", KEY_A)], 11_000, {0: 10}, interval_s=2.0)
    assert (row.server_key, row.key_fingerprint) == (KEY_A, fingerprint(KEY_A))
    assert row.to_json()["key_fingerprint"] == fingerprint(KEY_A)
    [row] = health.describe_replicas([keyed("1", "")], 11_000, {0: 10}, interval_s=2.0)
    assert (row.server_key, row.key_fingerprint) == ("", "")


def test_a_heartbeat_carries_its_service_key_within_the_key_bound() -> None:
    sent = keyed("1", KEY_A)
    assert p.parse_message(sent.to_bytes(), allowed=(p.Heartbeat,)).server_key == KEY_A
    old = {k: v for k, v in sent.to_dict().items() if k != "server_key"}
    assert p.Heartbeat.from_dict(old).server_key == ""  # a heartbeat of an older replica
    with pytest.raises(ProtocolError, match="server_key longer than"):
        p.parse_message(dataclasses.replace(sent, server_key="ed25519:" + "A" * 100).to_bytes())


# verify and status print what check_server_keys finds (minigit_server.cli, with the
# cluster read replaced by these heartbeats)


def test_verify_fails_on_a_replica_with_another_service_key(monkeypatch) -> None:
    from typer.testing import CliRunner

    from minigit.console import out
    from minigit_server import cli

    monkeypatch.setattr(out, "_width", 250)
    now = int(time.time() * 1000)
    beats = [keyed("1", KEY_A, now), keyed("2", KEY_B, now), keyed("3", KEY_A, now)]
    monkeypatch.setattr(cli, "read_cluster", lambda settings: (beats, {0: 10}))
    done = CliRunner().invoke(cli.app, ["verify", "--wait", "0"])
    assert done.exit_code == 3, done.output
    assert (
        f"KEY       replica 2: service key {fingerprint(KEY_B)} differs from {fingerprint(KEY_A)} "
        "(it would skip every write the others attest)"
    ) in done.output
    done = CliRunner().invoke(cli.app, ["verify", "--wait", "0", "--json"])
    assert done.exit_code == 3 and json.loads(done.output)["server_keys"]["differing"] == ["2"]

    done = CliRunner().invoke(cli.app, ["status"])
    assert done.exit_code == 0 and fingerprint(KEY_A) in done.output and fingerprint(KEY_B) in done.output
    done = CliRunner().invoke(cli.app, ["status", "--json"])
    rows = {row["replica"]: row for row in json.loads(done.output)["replicas"]}
    assert rows["2"]["key_fingerprint"] == fingerprint(KEY_B) and rows["1"]["server_key"] == KEY_A

    beats[1] = keyed("2", KEY_A, now)
    done = CliRunner().invoke(cli.app, ["verify", "--wait", "0"])
    assert done.exit_code == 0 and "KEY" not in done.output, done.output
