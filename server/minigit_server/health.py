"""Reading the replicas' heartbeats: who is alive, how far behind, do they agree.

Pure functions over heartbeats (no Kafka): ``minigit-server status`` and
``verify`` feed them what they read from repo-replicas. Replicas are compared
by checksums of their state, taken at known log positions.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import asdict, dataclass, field

from minigit import protocol as p

# A replica silent for this many heartbeat intervals is considered down.
SILENT_AFTER_INTERVALS = 3


class ReplicaState(enum.StrEnum):
    UP = "up"
    STOPPED = "stopped"  # said goodbye
    SILENT = "silent"  # no heartbeat for a while: dead, or cut off


class Verdict(enum.StrEnum):
    """One repository across the live replicas."""

    AGREE = "agree"
    DISAGREE = "disagree"
    BEHIND = "behind"


@dataclass(frozen=True)
class ReplicaRow:
    replica: str
    host: str
    pid: int
    state: ReplicaState
    started_ms: int
    last_heartbeat_ms: int
    serving: list[int]
    applied: dict[int, int]  # partition -> next offset to apply
    lag: dict[int, int]  # partition -> records not applied yet

    def to_json(self) -> dict:
        return asdict(self)


def describe_replicas(
    beats: list[p.Heartbeat], now_ms: int, log_end: dict[int, int], interval_s: float
) -> list[ReplicaRow]:
    rows = []
    for beat in beats:
        silent = now_ms - beat.sent_ms > SILENT_AFTER_INTERVALS * interval_s * 1000
        state = ReplicaState.STOPPED if beat.stopping else ReplicaState.SILENT if silent else ReplicaState.UP
        lag = {part: max(0, end - beat.applied.get(part, 0)) for part, end in sorted(log_end.items())}
        rows.append(
            ReplicaRow(
                beat.replica,
                beat.host,
                beat.pid,
                state,
                beat.started_ms,
                beat.sent_ms,
                sorted(beat.serving),
                dict(beat.applied),
                lag,
            )
        )
    return rows


def live_beats(beats: list[p.Heartbeat], now_ms: int, interval_s: float) -> list[p.Heartbeat]:
    rows = describe_replicas(beats, now_ms, {}, interval_s)
    return [beat for beat, row in zip(beats, rows, strict=True) if row.state == ReplicaState.UP]


@dataclass(frozen=True)
class RepoVerdict:
    """One repository across the live replicas."""

    repo: str
    partition: int
    status: Verdict
    heads: dict[str, int | None]  # replica -> head version (None: not there yet)
    behind: dict[str, int] = field(default_factory=dict)  # replica -> records behind the most advanced one
    disagreeing: list[str] = field(default_factory=list)  # replicas whose state differs from the majority

    def to_json(self) -> dict:
        return asdict(self)


def verify_repositories(beats: list[p.Heartbeat]) -> list[RepoVerdict]:
    """Compare each repository's digest on replicas that applied the same records.

    Two replicas that both applied the record that last changed a repository
    must hold identical state for it: a different digest is a disagreement. A
    replica that has not applied that record yet is behind, by the number of log
    records between its position and the most advanced replica's.
    """
    names = sorted({name for beat in beats for name in beat.repos})
    verdicts = []
    for name in names:
        holders = [beat for beat in beats if name in beat.repos]
        partition = holders[0].repos[name].partition
        position = {beat.replica: beat.applied.get(partition, 0) for beat in beats}
        # The most recent change of this repository that any replica has seen.
        last_change = max(beat.repos[name].changed_at for beat in holders)
        caught_up = [beat for beat in beats if position[beat.replica] > last_change]
        furthest = max(position.values())
        behind = {b.replica: furthest - position[b.replica] for b in beats if position[b.replica] <= last_change}
        digests = {beat.replica: beat.repos[name].digest if name in beat.repos else None for beat in caught_up}
        majority, _ = Counter(digests.values()).most_common(1)[0]
        counts = Counter(digests.values())
        if len(counts) > 1 and list(counts.values()).count(counts[majority]) > 1:
            disagreeing = sorted(digests)  # a tie: no majority to trust
        else:
            disagreeing = sorted(r for r, d in digests.items() if d != majority)
        status = Verdict.DISAGREE if disagreeing else Verdict.BEHIND if behind else Verdict.AGREE
        heads = heads_of(beats, name)
        verdicts.append(RepoVerdict(name, partition, status, heads, behind, disagreeing))
    return verdicts


def heads_of(beats: list[p.Heartbeat], name: str) -> dict[str, int | None]:
    """Each replica's head of repository ``name`` (None: not there yet)."""
    return {beat.replica: beat.repos[name].head if name in beat.repos else None for beat in beats}
