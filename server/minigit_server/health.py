"""Reading the replicas' heartbeats: who is alive, how far behind, do they agree.

Pure functions over heartbeats (no Kafka): ``minigit-server status`` and
``verify`` feed them what they read from repo-replicas. Replicas are compared
by checksums of their state, taken at known log positions.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import asdict, dataclass, field

from minigit import identity
from minigit import protocol as p
from minigit.errors import MinigitError
from minigit_server import digests

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
    server_key: str = ""  # the service key it checks the log with ("": not reported)
    key_fingerprint: str = ""  # its fingerprint (see key_fingerprint)

    def to_json(self) -> dict:
        return asdict(self)


def describe_replicas(
    beats: list[p.Heartbeat], now_ms: int, log_end: dict[int, int], interval_s: float
) -> list[ReplicaRow]:
    rows = []
    limit_ms = SILENT_AFTER_INTERVALS * interval_s * 1000
    for beat in beats:
        # A heartbeat from the future (a clock far ahead, or a forged record) would
        # otherwise count as fresh forever: beyond the same margin it proves nothing.
        silent = abs(now_ms - beat.sent_ms) > limit_ms
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
                beat.server_key,
                key_fingerprint(beat.server_key),
            )
        )
    return rows


def live_beats(beats: list[p.Heartbeat], now_ms: int, interval_s: float) -> list[p.Heartbeat]:
    rows = describe_replicas(beats, now_ms, {}, interval_s)
    return [beat for beat, row in zip(beats, rows, strict=True) if row.state == ReplicaState.UP]


def key_fingerprint(key: str) -> str:
    """A reported service key's fingerprint (``SHA256:...``), ``""`` if none was
    reported, or ``invalid`` if the text is not an Ed25519 public key."""
    if not key:
        return ""
    try:
        return identity.fingerprint(identity.parse_public_key(key))
    except MinigitError:
        return "invalid"


@dataclass(frozen=True)
class ServerKeyCheck:
    """The service key the live replicas check the log with. Every replica must
    use the same: a write's proof carries the service's attestation of its author's
    key, and a replica with another key skips every attested write the others
    apply (and every operator's account change), so it diverges for good."""

    keys: dict[str, str]  # replica -> its key's fingerprint ("": not reported)
    majority: str | None  # the fingerprint most replicas report (None: none, or a tie)
    differing: list[str]  # replicas whose key is not the majority's (all reporting ones on a tie)

    @property
    def agree(self) -> bool:
        return not self.differing

    def to_json(self) -> dict:
        return asdict(self)


def check_server_keys(beats: list[p.Heartbeat]) -> ServerKeyCheck:
    """Compare the service key each replica reports. A replica that reports none
    (one older than the field) is not compared; a tie blames every reporting one."""
    keys = {beat.replica: key_fingerprint(beat.server_key) for beat in beats}
    reported = {replica: key for replica, key in keys.items() if key}
    counts = Counter(reported.values())
    if not counts:
        return ServerKeyCheck(keys, None, [])
    ranked = counts.most_common(2)
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return ServerKeyCheck(keys, None, sorted(reported))
    majority = ranked[0][0]
    return ServerKeyCheck(keys, majority, sorted(r for r, key in reported.items() if key != majority))


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
        # asdict's deep copies took half a second for 10,000 repositories
        return {
            "repo": self.repo,
            "partition": self.partition,
            "status": self.status,
            "heads": dict(self.heads),
            "behind": dict(self.behind),
            "disagreeing": list(self.disagreeing),
        }


@dataclass(frozen=True)
class ReplicaView:
    """One replica's heartbeat with the repositories it reports, inline or in report
    pages, and the log position each report page describes its store at."""

    beat: p.Heartbeat
    repos: dict[str, p.RepoReport]
    positions: dict[tuple[int, int], int] = field(default_factory=dict)  # (partition, page) -> next offset
    # pages the heartbeat names but whose record was not read (missing, another digest, not sound)
    unread: frozenset[tuple[int, int]] = frozenset()

    def __getattr__(self, name: str) -> object:
        # Everything else is the heartbeat's: a view goes wherever a heartbeat does.
        if name == "beat":
            raise AttributeError(name)
        return getattr(self.beat, name)

    def position(self, partition: int, name: str) -> int:
        """How far the replica had applied ``partition`` when it reported the page of
        ``name`` (the heartbeat's position when that page is current)."""
        found = self.positions.get((partition, p.report_page_of(name)))
        return self.beat.applied.get(partition, 0) if found is None else found

    def unreadable(self, partition: int, name: str) -> bool:
        """Whether the page of ``name`` is one the heartbeat names but that was not read:
        what the replica holds of ``name`` is not known (position 0)."""
        return (partition, p.report_page_of(name)) in self.unread

    @classmethod
    def of(cls, beat: p.Heartbeat, pages: dict[tuple[int, int], p.RepoPage] | None = None) -> ReplicaView:
        """The view of ``beat`` given the latest page records of its replica.

        A page whose digest is the one the heartbeat names (and whose reports hash to
        it: ``page_is_sound``) holds what the replica held at the heartbeat's
        position; an empty page ("") holds nothing there. Any other page (one newer
        than the heartbeat, read between the page and the heartbeat that follows it;
        one older, its successor lost; one forged) or none holds nothing known:
        position 0, so the replica looks behind on every repository of it, never in
        agreement, until a heartbeat names the page read (pages are published again
        every ``reports.REPUBLISH_EVERY`` heartbeats).
        """
        pages = pages or {}
        repos = dict(beat.repos)
        positions: dict[tuple[int, int], int] = {}
        unread: set[tuple[int, int]] = set()
        for partition, report in beat.partitions.items():
            at = beat.applied.get(partition, 0)
            for number, digest in enumerate(report.pages):
                key = (partition, number)
                page = pages.get(key)
                if not digest:
                    positions[key] = at
                elif page is None or page.digest != digest or not page_is_sound(page, partition):
                    positions[key] = 0
                    unread.add(key)
                else:
                    positions[key] = at
                    repos.update(page.repos)
        return cls(beat, repos, positions, frozenset(unread))


def page_is_sound(page: p.RepoPage, partition: int) -> bool:
    """Whether a page's reports hash to its digest and are all filed under its own
    partition. Anyone who may write repo-replicas may write a page: only the page
    its heartbeat names, holding what hashes to that name, is read (a forged page
    made a diverged replica agree)."""
    if page.partition != partition or any(report.partition != partition for report in page.repos.values()):
        return False
    elements = (digests.report_element(name, r.head, r.digest, r.changed_at) for name, r in page.repos.items())
    return digests.page_digest(*digests.page_sum(elements)) == page.digest


def replica_views(beats: list[p.Heartbeat], pages: list[p.RepoPage]) -> list[ReplicaView]:
    """Each heartbeat's view, with its own replica's pages (a page of a replica with no
    heartbeat here, say one forgotten or not up, is not looked at)."""
    by_replica: dict[str, dict[tuple[int, int], p.RepoPage]] = {}
    for page in pages:
        by_replica.setdefault(page.replica, {})[(page.partition, page.page)] = page
    return [ReplicaView.of(beat, by_replica.get(beat.replica)) for beat in beats]


def _views(beats: list[p.Heartbeat] | list[ReplicaView]) -> list[ReplicaView]:
    return [b if isinstance(b, ReplicaView) else ReplicaView.of(b) for b in beats]


def verify_repositories(beats: list[p.Heartbeat] | list[ReplicaView]) -> list[RepoVerdict]:
    """Compare each repository's digest on replicas that applied the same records.

    Two replicas that both applied the record that last changed a repository
    must hold identical state for it: a different digest is a disagreement. A
    replica that has not applied that record yet is behind, by the number of log
    records between its position and the most advanced replica's (or that record,
    when no replica has applied it); so is a replica that holds a repository that
    replicas further on no longer hold (deleted: it may not have applied that yet).
    A replica that files the repository under another log partition than the
    majority of its holders disagrees.
    """
    views = _views(beats)
    names = sorted({name for view in views for name in view.repos})
    return [_verify_repository(views, name) for name in names]


def _verify_repository(beats: list[ReplicaView], name: str) -> RepoVerdict:
    holders = [beat for beat in beats if name in beat.repos]
    heads = heads_of(beats, name)
    partition, misplaced = _majority_partition(holders, name)
    if misplaced is None:  # a tie: no partition to trust, so no position to compare at
        return RepoVerdict(name, partition, Verdict.DISAGREE, heads, {}, sorted(b.replica for b in holders))
    compared = [beat for beat in beats if beat.replica not in misplaced]
    position = {beat.replica: beat.position(partition, name) for beat in compared}
    # The most recent change of this repository that a replica filing it there has seen.
    last_change = max(beat.repos[name].changed_at for beat in compared if name in beat.repos)
    # Caught up means past that record; if nobody is, everybody is behind it.
    target = max(max(position.values()), last_change + 1)
    caught_up = [beat for beat in compared if position[beat.replica] > last_change]
    behind = {r: target - at for r, at in position.items() if at <= last_change}
    # A deletion leaves no record of its own in a heartbeat: a replica still holding
    # the repository behind one that no longer does may not have applied it yet.
    gone = [position[beat.replica] for beat in caught_up if name not in beat.repos]
    if gone and (furthest := max(gone)) > min(position[beat.replica] for beat in caught_up):
        lagging = [beat for beat in caught_up if name in beat.repos and position[beat.replica] < furthest]
        behind.update({beat.replica: furthest - position[beat.replica] for beat in lagging})
        caught_up = [beat for beat in caught_up if beat not in lagging]
    digests = {beat.replica: beat.repos[name].digest if name in beat.repos else None for beat in caught_up}
    disagreeing = set(misplaced) | set(_minority(digests))
    status = Verdict.DISAGREE if disagreeing else Verdict.BEHIND if behind else Verdict.AGREE
    return RepoVerdict(name, partition, status, heads, behind, sorted(disagreeing))


def _majority_partition(holders: list[ReplicaView], name: str) -> tuple[int, list[str] | None]:
    """The log partition most holders file ``name`` under, and the replicas that
    file it elsewhere (None when two partitions tie for the most holders)."""
    votes = Counter(beat.repos[name].partition for beat in holders)
    ranked = sorted(votes.items(), key=lambda item: (-item[1], item[0]))
    partition, count = ranked[0]
    if len(ranked) > 1 and ranked[1][1] == count:
        return partition, None
    return partition, [beat.replica for beat in holders if beat.repos[name].partition != partition]


def _minority(digests: dict[str, str | None]) -> list[str]:
    """Replicas whose digest differs from the majority's (all of them on a tie)."""
    counts = Counter(digests.values())
    if len(counts) <= 1:
        return []
    (majority, top), (_, second) = counts.most_common(2)
    if top == second:
        return list(digests)  # a tie: no majority to trust
    return [replica for replica, digest in digests.items() if digest != majority]


def heads_of(beats: list[p.Heartbeat] | list[ReplicaView], name: str) -> dict[str, int | None]:
    """Each replica's head of repository ``name`` (None: not there yet)."""
    return {beat.replica: beat.repos[name].head if name in beat.repos else None for beat in beats}


def all_heads(beats: list[p.Heartbeat] | list[ReplicaView]) -> dict[str, dict[str, int | None]]:
    """Every repository's head on each replica, by name (``status``)."""
    views = _views(beats)
    names = sorted({name for view in views for name in view.repos})
    return {name: heads_of(views, name) for name in names}


class DeepState(enum.StrEnum):
    """One replica's answer to a deep check (``verify --deep``)."""

    CLEAN = "clean"  # read and hashed every stored object after the request: all match
    DAMAGED = "damaged"  # some failed their hash in that pass, or are quarantined now
    PENDING = "pending"  # has not finished a pass for this request


@dataclass(frozen=True)
class DeepResult:
    replica: str
    state: DeepState
    objects: int = 0
    bytes: int = 0
    damaged: list[dict] = field(default_factory=list)  # partition, sha, problem, repaired
    damaged_count: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def deep_check(beats: list[p.Heartbeat], request: str) -> list[DeepResult]:
    """Each replica's result for scrub request ``request``. Only a pass that answers
    that request counts (it began after the request was made): an older clean
    pass proves nothing about bytes damaged since."""
    results = []
    for beat in beats:
        scrub = beat.scrub
        if scrub is None or scrub.request != request:
            results.append(DeepResult(beat.replica, DeepState.PENDING))
            continue
        found = {(d.partition, d.sha): d for d in scrub.damaged}
        # Quarantined earlier and still not repaired; a pass meets those again, unless
        # their row is gone too (then only the quarantine remembers them).
        extra = [d for d in beat.quarantined if (d.partition, d.sha) not in found]
        found.update({(d.partition, d.sha): d for d in extra})
        count = scrub.damaged_count + len(extra)
        damaged = [found[key].to_dict() for key in sorted(found)]
        state = DeepState.DAMAGED if count else DeepState.CLEAN
        results.append(DeepResult(beat.replica, state, scrub.objects, scrub.bytes, damaged, count))
    return results
