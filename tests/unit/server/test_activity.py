"""minigit_server.activity: figures per minute from the three topics' records, push
outcomes as the replicas decide them (no Kafka, no Spark here)."""

from __future__ import annotations

import json

from signing import AUTHORITY, NAMESPACE, SERVER_KEY
from test_apply import Log

from minigit import protocol as p
from minigit import sealing
from minigit.protocol import Status
from minigit_server import activity

T0 = 1_800_000_000_000 - 1_800_000_000_000 % activity.MINUTE_MS  # the start of a minute


def push_request(rid: str, base: int, tree: str, user: str = "alice") -> bytes:
    return p.PushRequest(request_id=rid, repo="repo", user=user, reply_partition=0, base=base, tree=tree).to_bytes()


def pull_request(rid: str, version: int, user: str = "bob") -> bytes:
    return p.PullRequest(request_id=rid, repo="repo", user=user, reply_partition=0, version=version).to_bytes()


def reply(rid: str, action: str, replica: str = "2") -> bytes:
    """A reply as a replica sends it: signed with the service's key."""
    unsigned = p.Reply(request_id=rid, action=action, stream="s1", replica=replica, status=Status.OK)
    return sealing.sign_reply(SERVER_KEY, unsigned, NAMESPACE).to_bytes()


def figures_of(written: dict[str, str]) -> dict[str, dict]:
    return {key: json.loads(value) for key, value in written.items()}


def test_figures_of_a_scripted_minute() -> None:
    log = Log()
    log.create(log.tree({"a.txt": b"1\n"}))
    v2 = log.tree({"a.txt": b"2\n"})
    first = log.push(1, v2)
    stale_tree = log.tree({"a.txt": b"stale\n"})
    stale = log.push(1, stale_tree)  # rejected: the head is 2

    tracker = activity.ActivityTracker(1, AUTHORITY)
    try:
        tracker.feed_request(T0 + 1_000, push_request(first, 1, v2))
        tracker.feed_request(T0 + 1_500, push_request(first, 1, v2))  # a retry: counted once
        tracker.feed_request(T0 + 2_000, push_request(stale, 1, stale_tree))
        tracker.feed_request(T0 + 3_000, pull_request("c" * 32, 0))  # a clone
        tracker.feed_request(T0 + 4_000, pull_request("d" * 32, 1))  # a pull
        tracker.feed_log(0, [(r.offset, T0 + 5_000, r.value) for r in log.records])
        tracker.feed_response(T0 + 1_120, reply(first, "push"))
        tracker.feed_response(T0 + 1_300, reply(first, "push"))  # a second answer: bytes, not latency
        tracker.feed_response(T0 + 2_080, reply(stale, "push", replica="1"))
        tracker.feed_response(T0 + 3_050, reply("c" * 32, "pull"))
        tracker.feed_response(T0 + 9_000, reply("e" * 32, "pull"))  # to a request never seen: not counted
        figures = figures_of(tracker.take_changed())
    finally:
        tracker.close()

    minute = activity.figure_key("repo", "repo", T0 // activity.MINUTE_MS)
    repo = figures[minute]
    assert repo["requests"] == {"pull": 2, "push": 2}
    assert (repo["pushes_accepted"], repo["pushes_rejected"], repo["pulls"], repo["clones"]) == (1, 1, 1, 1)
    assert repo["latency_ms"] == {
        "pull@2": {"count": 1, "p50": 50, "p95": 50, "max": 50},
        "push@1": {"count": 1, "p50": 80, "p95": 80, "max": 80},
        "push@2": {"count": 1, "p50": 120, "p95": 120, "max": 120},
    }
    assert repo["bytes_out"] == len(reply(first, "push")) * 2 + len(reply(stale, "push", "1")) + len(
        reply("c" * 32, "pull")
    )
    alice = figures[activity.figure_key("user", "alice", T0 // activity.MINUTE_MS)]
    assert (alice["pushes_accepted"], alice["pushes_rejected"], alice["clones"]) == (1, 1, 0)
    bob = figures[activity.figure_key("user", "bob", T0 // activity.MINUTE_MS)]
    assert (bob["pulls"], bob["clones"], bob["requests"]) == (1, 1, {"pull": 2})
    # The create was decided too, but it is no push; the log's own account of it
    # (alice's create, request not seen) adds no figure.
    assert set(figures) == {
        minute,
        activity.figure_key("user", "alice", T0 // 60_000),
        activity.figure_key("user", "bob", T0 // 60_000),
    }


def test_nothing_changed_writes_nothing_and_garbage_is_ignored() -> None:
    tracker = activity.ActivityTracker(1, AUTHORITY)
    try:
        tracker.feed_request(T0, b"not a record")
        tracker.feed_response(T0, b"{}")
        assert tracker.take_changed() == {}
    finally:
        tracker.close()


def test_percentiles_are_nearest_rank() -> None:
    assert activity.percentiles(list(range(1, 101))) == {"count": 100, "p50": 50, "p95": 95, "max": 100}
    assert activity.percentiles([7]) == {"count": 1, "p50": 7, "p95": 7, "max": 7}


def test_a_micro_batch_with_tombstones_and_keys_only_is_counted_without_them() -> None:
    """Spark's Kafka source gives a record without a value (a tombstone, a key
    alone) a value of None, in any of the three topics: the batch is fed without
    it, not crashed on (a crash stops the streaming query)."""
    from collections import namedtuple

    from minigit.config import Topics
    from minigit_server.sparkjobs import activity_job

    Row = namedtuple("Row", "topic partition offset time_ms value")
    topics = Topics.for_namespace("t-")
    rid = "c" * 32
    rows = [
        Row(topics.requests, 0, 0, T0, None),
        Row(topics.requests, 0, 1, T0 + 1_000, bytearray(pull_request(rid, 0))),
        Row(topics.log, 0, 0, T0, None),
        Row(topics.responses, 0, 0, T0, None),
        Row(topics.responses, 0, 1, T0 + 1_050, bytearray(reply(rid, "pull"))),
    ]
    tracker = activity.ActivityTracker(1, AUTHORITY)
    try:
        activity_job.feed_rows(tracker, topics, rows)
        figures = figures_of(tracker.take_changed())
    finally:
        tracker.close()
    repo = figures[activity.figure_key("repo", "repo", T0 // activity.MINUTE_MS)]
    assert (repo["requests"], repo["clones"], repo["bytes_out"]) == ({"pull": 1}, 1, len(reply(rid, "pull")))


def test_a_request_stamped_far_in_the_future_does_not_make_the_present_forgotten() -> None:
    """A record's time is its producer's (Kafka's CreateTime): one request stamped
    years ahead must not move the tracker's window, or the present minute's figures
    are forgotten and rewritten from zero (the topic's figures go down)."""
    now = T0 + 30_000
    tracker = activity.ActivityTracker(1, AUTHORITY, now_ms=lambda: now)
    try:
        tracker.feed_request(T0 + 1_000, pull_request("a" * 32, 0))
        tracker.take_changed()
        tracker.feed_request(T0 + 10 * 365 * 86_400_000, pull_request("b" * 32, 0, user="mallory"))
        assert tracker.take_changed() == {}  # not counted: no such minute yet
        tracker.feed_request(T0 + 2_000, pull_request("c" * 32, 0))
        tracker.feed_response(T0 + 1_050, reply("a" * 32, "pull"))
        figures = figures_of(tracker.take_changed())
    finally:
        tracker.close()
    repo = figures[activity.figure_key("repo", "repo", T0 // activity.MINUTE_MS)]
    assert (repo["requests"], repo["clones"]) == ({"pull": 2}, 2)
    assert repo["latency_ms"] == {"pull@2": {"count": 1, "p50": 50, "p95": 50, "max": 50}}


def test_a_forged_reply_is_not_counted() -> None:
    """Anyone who may write repo-responses may write a reply naming any request and
    replica: only one the service's key signed is counted (the clients check the
    same), so a forgery sent first can neither take the latency nor add bytes."""
    rid = "c" * 32
    forged = p.Reply(request_id=rid, action="pull", stream="s1", replica="evil", status=Status.OK).to_bytes()
    tracker = activity.ActivityTracker(1, AUTHORITY)
    try:
        tracker.feed_request(T0 + 1_000, pull_request(rid, 0))
        tracker.feed_response(T0 + 1_001, forged)
        tracker.feed_response(T0 + 1_050, reply(rid, "pull"))
        figures = figures_of(tracker.take_changed())
    finally:
        tracker.close()
    repo = figures[activity.figure_key("repo", "repo", T0 // activity.MINUTE_MS)]
    assert repo["latency_ms"] == {"pull@2": {"count": 1, "p50": 50, "p95": 50, "max": 50}}
    assert repo["bytes_out"] == len(reply(rid, "pull"))


def test_figures_of_the_wrong_types_on_the_topic_are_left_out() -> None:
    """Anyone who may write repo-activity may write anything there: a record with the
    right keys but values of the wrong types is left out, not shown (the table, and
    --show refreshing it, crashed on it)."""
    from minigit_server import audit_cli

    good = {"scope": "repo", "name": "lab", "minute": "2026-11-28T06:15"}
    good |= {"requests": {"push": 1}, "pushes_accepted": 1, "pushes_rejected": 0, "pulls": 0, "clones": 0}
    good |= {"bytes_in": 10, "bytes_out": 20, "latency_ms": {"push@1": {"count": 1, "p50": 5, "p95": 5, "max": 5}}}
    key = b"repo/2026-11-28T06:15/lab"
    assert audit_cli.figures_doc(key, json.dumps(good).encode()) == good
    for change in ({"requests": 5}, {"pulls": "many"}, {"latency_ms": []}, {"requests": {"push": "x"}}):
        assert audit_cli.figures_doc(key, json.dumps(good | change).encode()) is None, change
    table = audit_cli.figures_table([good], 5)
    assert table.row_count == 1
