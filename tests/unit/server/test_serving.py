"""Serving requests side by side: what may be committed (CommitTracker, exhaustively
against a plain model) and the shared log-end lookup of the read barrier."""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading

import pytest

from minigit.protocol import Status
from minigit_server.bus import RequestRecord
from minigit_server.replica import Replica
from minigit_server.service import QUEUED, Handled
from minigit_server.serving import CommitTracker, LogEndBarrier


def model_commit(kinds: str, answered: set[int], start: int) -> int:
    """The offset a partition may be committed to: before the first record that is
    a request not answered, or a chunk whose request (the next request) is not
    answered or has not come yet."""
    for n in range(len(kinds)):
        owner = next((m for m in range(n, len(kinds)) if kinds[m] == "r"), None)
        if owner is None or owner not in answered:
            return start + n
    return start + len(kinds)


def shapes(max_length: int):
    for length in range(1, max_length + 1):
        yield from ("".join(kinds) for kinds in itertools.product("cr", repeat=length))


@pytest.mark.parametrize("kinds", list(shapes(6)))
def test_a_partition_is_committed_up_to_its_first_record_not_answered_in_every_answer_order(kinds: str) -> None:
    """Every sequence of up to 6 chunks (c) and requests (r), every order in which
    any of its requests are answered: after each answer the commit is exactly the
    model's, it never passes a request not answered nor a chunk whose request is
    not, and it only moves forward."""
    start = 10
    requests = [n for n, kind in enumerate(kinds) if kind == "r"]
    for count in range(len(requests) + 1):
        for order in itertools.permutations(requests, count):
            tracker = CommitTracker()
            for n, kind in enumerate(kinds):
                tracker.received(3, start + n, request=kind == "r")
            committed, answered = start, set()
            for n in order:
                answered.add(n)
                tracker.answered(3, start + n)
                moved = tracker.ready()
                expected = model_commit(kinds, answered, start)
                if expected > committed:
                    assert moved == {3: expected}
                    committed = expected
                else:
                    assert moved == {}
            # read again from: the first record not committed
            left = model_commit(kinds, answered, start)
            assert tracker.unanswered() == ({3: left} if left < start + len(kinds) else {})
            assert tracker.pending() == start + len(kinds) - left


def test_partitions_are_tracked_apart_and_a_request_not_received_changes_nothing() -> None:
    tracker = CommitTracker()
    tracker.received(0, 5, request=False)
    tracker.received(0, 6, request=True)
    tracker.received(1, 3, request=True)
    tracker.answered(1, 3)
    tracker.answered(0, 99)  # an answer to a record read before a rewind: forgotten
    assert tracker.ready() == {1: 4}
    assert tracker.unanswered() == {0: 5}
    tracker.answered(0, 6)
    assert tracker.ready() == {0: 7}
    assert tracker.ready() == {}


def test_forgotten_records_are_not_committed_and_a_commit_never_goes_back() -> None:
    tracker = CommitTracker()
    tracker.received(0, 5, request=True)
    tracker.answered(0, 5)
    assert tracker.ready() == {0: 6}
    tracker.received(0, 6, request=True)
    tracker.forget()  # a rewind: read again from 6
    tracker.answered(0, 6)
    assert tracker.ready() == {} and tracker.pending() == 0
    tracker.received(0, 4, request=True)  # read again from before what was committed
    tracker.answered(0, 4)
    assert tracker.ready() == {}


def test_the_log_end_comes_from_a_lookup_started_after_the_read_arrived() -> None:
    clock = iter(range(100, 1000))
    lookups = []

    def lookup() -> dict[int, int]:
        lookups.append(1)
        return {0: len(lookups)}

    barrier = LogEndBarrier(lookup, clock=lambda: next(clock))
    assert barrier.ends_since(50) == {0: 1}  # the lookup started at 100
    assert barrier.ends_since(100) == {0: 1}  # arrived as it started: it counts
    assert barrier.ends_since(101) == {0: 2}  # arrived after: a new one
    assert len(lookups) == 2


def test_reads_that_arrive_during_a_lookup_share_the_next_one() -> None:
    """One lookup under way (started at 1); reads arriving at 2 and 3 must not use
    it, and both are served by the one lookup that starts after it."""
    now = [1.0]
    release, entered = threading.Event(), threading.Event()
    calls = []

    def lookup() -> dict[int, int]:
        calls.append(now[0])
        if len(calls) == 1:
            entered.set()
            release.wait(10)
        return {0: len(calls)}

    barrier = LogEndBarrier(lookup, clock=lambda: now[0])
    results: dict[str, dict[int, int]] = {}
    first = threading.Thread(target=lambda: results.__setitem__("first", barrier.ends_since(1.0)))
    first.start()
    assert entered.wait(10)
    now[0] = 2.0
    later = [
        threading.Thread(target=lambda name=name, at=at: results.__setitem__(name, barrier.ends_since(at)))
        for name, at in (("a", 2.0), ("b", 2.0))
    ]
    for thread in later:
        thread.start()
    release.set()
    for thread in (first, *later):
        thread.join(10)
    assert results == {"first": {0: 1}, "a": {0: 2}, "b": {0: 2}} or (
        # b may have arrived after the second lookup began: then a third
        results["first"] == {0: 1} and results["a"][0] >= 2 and results["b"][0] >= 2
    )
    assert calls[0] == 1.0 and all(at >= 2.0 for at in calls[1:])


def test_a_failed_lookup_fails_the_reads_that_waited_for_it_and_the_next_read_tries_again() -> None:
    outcomes = iter([TimeoutError("no broker"), {0: 7}])

    def lookup() -> dict[int, int]:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    clock = iter(range(1, 100))
    barrier = LogEndBarrier(lookup, clock=lambda: next(clock))
    with pytest.raises(TimeoutError):
        barrier.ends_since(0)
    assert barrier.ends_since(5) == {0: 7}


class GatedService:
    """Each request (its value is its offset) is answered on a worker once its gate opens."""

    def __init__(self, offsets: list[int]) -> None:
        self.gates = {offset: threading.Event() for offset in offsets}

    def handle(self, timestamp_ms: int, value: bytes, defer=None):
        gate = self.gates[int(value)]

        def job() -> Handled:
            assert gate.wait(10)
            return Handled("u", "pull", "r", Status.OK)

        defer(job)
        return QUEUED


class CommitLog:
    def __init__(self) -> None:
        self.commits: list[tuple[int, int]] = []

    def commit(self, partition: int, next_offset: int) -> None:
        self.commits.append((partition, next_offset))


def test_requests_answered_out_of_order_by_the_workers_are_committed_up_to_the_first_not_answered() -> None:
    replica = object.__new__(Replica)
    replica.log = logging.getLogger("test.replica")
    replica.stop = threading.Event()
    replica.service = GatedService([1, 2, 3])
    replica.serve_pool = concurrent.futures.ThreadPoolExecutor(4)
    consumer = CommitLog()
    try:
        replica.serve_batch(consumer, [RequestRecord(0, n, 0, b"r", str(n).encode()) for n in (1, 2, 3)])
        assert replica.serve_state().in_flight == 3 and consumer.commits == []
        replica.service.gates[2].set()
        replica.service.gates[3].set()
        while replica.serve_state().in_flight > 1:
            replica.collect_answers(wait_s=10)
        replica.commit_answered(consumer)
        assert consumer.commits == []  # 1 is not answered: nothing after it is committed
        replica.service.gates[1].set()
        replica.drain(10)
        replica.commit_answered(consumer)
        assert consumer.commits == [(0, 4)]
    finally:
        for gate in replica.service.gates.values():
            gate.set()
        replica.serve_pool.shutdown(wait=True)


def test_a_record_taken_in_twice_is_committed_once_both_are_answered() -> None:
    """A poll that raced a rebalance: records 5 and 6 taken in, then read again."""
    tracker = CommitTracker()
    for _ in range(2):
        tracker.received(0, 5, request=False)
        tracker.received(0, 6, request=True)
    tracker.answered(0, 6)
    assert tracker.ready() == {0: 7}
    tracker.answered(0, 6)
    assert tracker.ready() == {} and tracker.pending() == 0
