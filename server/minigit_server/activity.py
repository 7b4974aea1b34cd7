"""Live activity figures from the service's three topics, per minute, per repository
and per user (``minigit-server activity``). No Kafka and no Spark here: the Spark
job (minigit_server.sparkjobs.activity_job) feeds each micro-batch's records in.

* repo-requests: every request (who, which repository, which action, when) and
  the chunks uploaded with it: bytes in; a pull from version 0 is a clone.
* repo-log: every write decided, with the replicas' own apply code folded into a
  scratch store (as the audit does), so a push is counted accepted or rejected
  exactly as every replica decided it, sealed replies or not.
* repo-responses: bytes out, and the latency of each request's first answer (the
  answer's record time less the request's). A reply sealed to its requester
  (a private repository) hides which replica answered: its latency counts under
  replica ``sealed``.

A figure belongs to the minute of its request (a decision or an answer whose
request was not seen, under the minute of its own record). Everything is keyed so
that a compacted topic keeps the latest figures of each (scope, name, minute).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from minigit import protocol as p
from minigit import sealing
from minigit.errors import MinigitError
from minigit.protocol import Status
from minigit_server import apply, audit
from minigit_server.apply import Authority, LogRecord

MINUTE_MS = 60_000
RETAIN_MINUTES = 60  # figures and requests kept in memory, behind the newest request
MAX_PENDING_UPLOADS = 100_000
# A request stamped further ahead of the job's clock is not counted: a record's time is
# its producer's (CreateTime), and one stamped years ahead would move the window above
# and make the present's figures forgotten, then rewritten from zero.
MAX_AHEAD_MS = 10 * MINUTE_MS
SEALED = "sealed"  # the replica of an answer sealed to its requester: not readable
ACCOUNT_ACTIONS = {p.RegisterRequest.action, p.RotateRequest.action}
WRITES = (p.PushProposal,)  # a create is counted as an init request


@dataclass
class Figures:
    """One (scope, name, minute)'s figures."""

    requests: dict[str, int] = field(default_factory=dict)  # action -> requests
    pushes_accepted: int = 0
    pushes_rejected: int = 0
    pulls: int = 0
    clones: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    latencies_ms: dict[str, list[int]] = field(default_factory=dict)  # "action@replica" -> first-answer latencies

    def to_json(self) -> dict:
        latency = {key: percentiles(values) for key, values in sorted(self.latencies_ms.items())}
        return {
            "requests": dict(sorted(self.requests.items())),
            "pushes_accepted": self.pushes_accepted,
            "pushes_rejected": self.pushes_rejected,
            "pulls": self.pulls,
            "clones": self.clones,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "latency_ms": latency,
        }


def percentiles(values: list[int]) -> dict[str, int]:
    """count, p50, p95 and max (nearest rank) of some latencies."""
    ordered = sorted(values)

    def rank(q: float) -> int:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"count": len(ordered), "p50": rank(0.5), "p95": rank(0.95), "max": ordered[-1]}


@dataclass(frozen=True)
class Seen:
    """A request, as the figures need it."""

    repo: str
    user: str
    action: str
    minute: int
    sent_ms: int


def figure_key(scope: str, name: str, minute: int) -> str:
    """The compacted topic's key of one set of figures: ``repo/2026-11-28T05:41/lab``."""
    import time

    stamp = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(minute * 60))
    return f"{scope}/{stamp}/{name}"


class ActivityTracker:
    """The figures so far, fed record by record in each topic partition's order."""

    def __init__(self, partitions: int, authority: Authority, now_ms: Callable[[], int] | None = None) -> None:
        """``now_ms``: the clock requests stamped more than MAX_AHEAD_MS ahead of are
        left out by (None: none is; the streaming job gives the wall clock)."""
        self.partitions = partitions
        self.authority = authority
        self.now_ms = now_ms
        self.figures: dict[tuple[str, str, int], Figures] = {}
        self.changed: set[tuple[str, str, int]] = set()
        self.requests: dict[str, Seen] = {}
        self.decided: set[str] = set()
        self.answered: set[str] = set()
        self.uploaded: dict[str, int] = {}  # request id -> bytes of chunks sent before the request
        self._stores = contextlib.ExitStack()
        self.stores = {}

    def close(self) -> None:
        self._stores.close()

    def _store(self, partition: int):
        if partition not in self.stores:
            self.stores[partition] = self._stores.enter_context(audit.scratch_store())
        return self.stores[partition]

    def _touch(self, repo: str, user: str, minute: int) -> list[Figures]:
        found = []
        for scope, name in (("repo", repo), ("user", user)):
            if not name:
                continue
            key = (scope, name, minute)
            self.changed.add(key)
            found.append(self.figures.setdefault(key, Figures()))
        return found

    def feed_request(self, time_ms: int, value: bytes) -> None:
        try:
            request = p.parse_message(value, allowed=p.REQUEST_TYPES)
        except MinigitError:
            return
        if isinstance(request, p.Chunk):  # uploaded before its request, as a rule
            if (seen := self.requests.get(request.request_id)) is not None:
                for figures in self._touch(seen.repo, seen.user, seen.minute):
                    figures.bytes_in += len(value)
            else:
                self.uploaded[request.request_id] = self.uploaded.get(request.request_id, 0) + len(value)
            return
        if self.now_ms is not None and time_ms > self.now_ms() + MAX_AHEAD_MS:
            return
        uploaded = self.uploaded.pop(request.request_id, 0)
        if request.request_id in self.requests:
            return  # a retry of a request already counted
        # an account's requests name the user as their "repository": no repository's figures
        repo = "" if request.action in ACCOUNT_ACTIONS else request.repo
        seen = Seen(repo, request.user, request.action, time_ms // MINUTE_MS, time_ms)
        self.requests[request.request_id] = seen
        for figures in self._touch(seen.repo, seen.user, seen.minute):
            figures.requests[seen.action] = figures.requests.get(seen.action, 0) + 1
            figures.bytes_in += len(value) + uploaded
            if isinstance(request, p.PullRequest) and not request.target:
                if request.version == 0:
                    figures.clones += 1
                else:
                    figures.pulls += 1

    def feed_log(self, partition: int, records: list[tuple[int, int, bytes]]) -> None:
        """One partition's new records, (offset, time_ms, value) in offset order, applied
        in one transaction; then each write's outcome, as every replica stored it."""
        store = self._store(partition)
        times = {offset: time_ms for offset, time_ms, _ in records}
        log_records = [LogRecord(partition, offset, value) for offset, _, value in records]
        with audit.quiet_apply_log():
            done = apply.apply_records(store, log_records, self.partitions, self.authority)
        for record, message in done:
            if not isinstance(message, WRITES) or message.request_id in self.decided:
                continue
            outcome = store.get_outcome(partition, message.request_id)
            if outcome is None:
                continue  # its proof did not hold: skipped by every replica
            self.decided.add(message.request_id)
            seen = self.requests.get(message.request_id)
            minute = seen.minute if seen else times[record.offset] // MINUTE_MS
            status = Status(outcome["status"])
            for figures in self._touch(message.repo, message.user, minute):
                if status == Status.ACCEPTED:
                    figures.pushes_accepted += 1
                elif status == Status.REJECTED:
                    figures.pushes_rejected += 1

    def feed_response(self, time_ms: int, value: bytes) -> None:
        try:
            answer = p.parse_message(value, allowed=p.REPLY_TYPES)
        except MinigitError:
            return
        if isinstance(answer, p.Reply) and not sealing.reply_signed_by(
            self.authority.server_key, answer, self.authority.namespace
        ):
            return  # not the service's: anyone may write the topic (the clients drop it too)
        seen = self.requests.get(answer.request_id)
        if seen is None:
            return  # an answer to a request not seen (before the topics' retention)
        first = answer.request_id not in self.answered and not isinstance(answer, p.Chunk)
        if first:
            self.answered.add(answer.request_id)
        replica = answer.replica if isinstance(answer, p.Reply) else SEALED
        for figures in self._touch(seen.repo, seen.user, seen.minute):
            figures.bytes_out += len(value)
            if first:
                key = f"{seen.action}@{replica}"
                figures.latencies_ms.setdefault(key, []).append(max(0, time_ms - seen.sent_ms))

    def take_changed(self) -> dict[str, str]:
        """The figures changed since the last call, as compacted-topic records (key -> JSON).
        What is older than RETAIN_MINUTES before the newest request is forgotten then
        (its figures stay in the topic): the tracker's memory stays bounded."""
        found = {}
        for scope, name, minute in sorted(self.changed):
            doc = {"scope": scope, "name": name, "minute": figure_key(scope, name, minute).split("/")[1]}
            doc.update(self.figures[(scope, name, minute)].to_json())
            found[figure_key(scope, name, minute)] = json.dumps(doc, sort_keys=True)
        self.changed.clear()
        self.forget_old()
        return found

    def forget_old(self) -> None:
        if not self.requests:
            return
        newest = max(seen.minute for seen in self.requests.values())
        floor = newest - RETAIN_MINUTES
        self.figures = {key: figures for key, figures in self.figures.items() if key[2] >= floor}
        old = [rid for rid, seen in self.requests.items() if seen.minute < floor]
        for rid in old:
            del self.requests[rid]
            self.decided.discard(rid)
            self.answered.discard(rid)
        if len(self.uploaded) > MAX_PENDING_UPLOADS:  # chunks whose request never came
            self.uploaded.clear()


def totals(docs: list[dict]) -> dict[tuple[str, str], dict]:
    """Figures of every minute added up, per (scope, name): for tables and tests."""
    found: dict[tuple[str, str], dict] = defaultdict(
        lambda: (
            {"requests": {}, "pushes_accepted": 0, "pushes_rejected": 0, "pulls": 0, "clones": 0}
            | {"bytes_in": 0, "bytes_out": 0}
        )
    )
    for doc in docs:
        total = found[(doc["scope"], doc["name"])]
        for action, count in doc["requests"].items():
            total["requests"][action] = total["requests"].get(action, 0) + count
        for name in ("pushes_accepted", "pushes_rejected", "pulls", "clones", "bytes_in", "bytes_out"):
            total[name] += doc[name]
    return dict(found)
