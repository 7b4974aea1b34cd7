"""Serving several requests at once, without Kafka: which request records may be
committed (``CommitTracker``), and one log-end lookup shared by every read that
arrived before it started (``LogEndBarrier``).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Entry:
    offset: int
    request: bool  # False: a chunk, answered with the request that follows it
    answered: bool = False


class CommitTracker:
    """The records of repo-requests received and not yet committed, per partition,
    in offset order, and which are answered.

    A request is committed only once it is answered, and never before a request
    received earlier in its partition is: the offset to commit is that of the
    first record not answered. A chunk counts as answered with the request that
    follows it (the first request after it in its partition): a request served
    again by the next owner needs its chunks again. Requests are answered in any
    order (they are served concurrently); the commit only moves forward."""

    def __init__(self) -> None:
        self._entries: dict[int, collections.deque[_Entry]] = {}
        self._committed: dict[int, int] = {}  # partition -> the offset committed last

    def received(self, partition: int, offset: int, request: bool) -> None:
        """A record taken from the consumer (in the order the consumer gave them)."""
        self._entries.setdefault(partition, collections.deque()).append(_Entry(offset, request))

    def answered(self, partition: int, offset: int) -> None:
        """The request at ``offset`` was answered (or handled without an answer:
        malformed, expired, failed), with the chunks received just before it."""
        entries = self._entries.get(partition, ())
        # the first such record not answered: a record taken in twice (read again
        # after a rebalance that raced a poll) is answered twice
        at = next(
            (n for n, e in enumerate(entries) if e.offset == offset and e.request and not e.answered),
            None,
        )
        if at is None:
            return
        entries[at].answered = True
        for n in range(at - 1, -1, -1):
            if entries[n].request:
                break
            entries[n].answered = True

    def ready(self) -> dict[int, int]:
        """Per partition, the offset that may be committed now, where it moved
        since the last call (and from then on counts as committed)."""
        moved = {}
        for partition, entries in self._entries.items():
            end = None
            while entries and entries[0].answered:
                end = entries.popleft().offset + 1
            if end is not None and end > self._committed.get(partition, -1):
                self._committed[partition] = moved[partition] = end
        return moved

    def unanswered(self) -> dict[int, int]:
        """Per partition, the first record received and not yet committed (after
        ``ready``: the first whose request is not answered): where to read again."""
        return {partition: entries[0].offset for partition, entries in self._entries.items() if entries}

    def pending(self) -> int:
        """Records received and not yet committed."""
        return sum(len(entries) for entries in self._entries.values())

    def forget(self) -> None:
        """Drop every record received (the consumer reads them again: a rewind, a
        rebalance); answers to them that come later are not counted."""
        self._entries.clear()


class LogEndBarrier:
    """The read barrier's log-end lookup, shared: a read needs the log's end as
    seen by a lookup that started after the read arrived. A read that comes while
    a lookup is under way waits for the next one, which serves every read that
    arrived before it started: one broker round trip for a crowd of reads, none
    of them answered from an end older than itself."""

    def __init__(self, lookup: Callable[[], dict[int, int]], clock: Callable[[], float] = time.monotonic) -> None:
        self._lookup, self._clock = lookup, clock
        self._changed = threading.Condition()
        self._running = False
        # the last lookup done: when it started, its result or its failure
        self._last: tuple[float, dict[int, int] | None, BaseException | None] | None = None

    def ends_since(self, arrived: float) -> dict[int, int]:
        """The log's end per partition, from a lookup that started at ``arrived``
        or later (a failure of that lookup is raised)."""
        with self._changed:
            while True:
                if self._last is not None and self._last[0] >= arrived:
                    return self._result(self._last)
                if not self._running:
                    break
                self._changed.wait()
            self._running = True
            started = self._clock()
        ends: dict[int, int] | None = None
        failure: BaseException | None = None
        try:
            ends = self._lookup()
        except BaseException as error:  # noqa: BLE001 - every reader that waited on it gets it
            failure = error
        with self._changed:
            self._running = False
            self._last = (started, ends, failure)
            self._changed.notify_all()
            return self._result(self._last)

    @staticmethod
    def _result(last: tuple[float, dict[int, int] | None, BaseException | None]) -> dict[int, int]:
        _, ends, failure = last
        if failure is not None:
            raise failure
        assert ends is not None
        return ends
