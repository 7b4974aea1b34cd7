"""What a replica may delete from its store: content no version refers to and no
write may still need. Pure: no Kafka, no store; minigit_server.apply calls it.

Content (chunks, and the blob they make) is kept per log partition while

* a version of a repository of the partition refers to it (its tree, or a blob
  the tree names): the *references*; or
* an upload is *pending*: a request carried a piece of it and the proposal of that
  request has not been applied yet (its upload may still be under way).

Everything else is collected, at two moments of the log, never of the clock:

* when a request's proposal is applied, whatever its outcome, its uploads are no
  longer pending: what it uploaded and nothing refers to goes (the upload of a
  rejected push, a blob a push sent but its tree does not name). A client never
  counts on an upload of an earlier request: a push uploads everything its base
  version does not hold, and after "missing objects" it sends everything again;
* when an upload has been pending for longer than ORPHAN_AFTER_MS of *log time*, or
  ORPHAN_AFTER_RECORDS records of the partition: its proposal never came (a client
  killed mid-upload). Log time is the newest ``time_ms`` of the proposals applied
  in the partition (stamped once by their owner, the same on every replica). An
  upload is dated by the first proposal applied after it, never before it: so an
  upload into a partition that was quiet for days is not dated days old.

Every replica applies the same records in the same order, so every replica keeps
exactly the same content: a push decided after a collection finds the same
objects everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from minigit import protocol as p

# Generous beyond any upload still under way: a client waits at most an hour
# (config.MAX_TIMEOUT_S) for its request, and a replica skips a request older than
# its timeout; a day of log time is many times that. The records bound is far
# beyond the records of many concurrent pushes of the largest size (a push of
# 1 GiB is at most a million records of 1 KiB). Every replica must use the same
# bounds: they are part of what applying means, like the decisions.
ORPHAN_AFTER_MS = 24 * 3600 * 1000
ORPHAN_AFTER_RECORDS = 100_000_000


@dataclass(frozen=True)
class Bounds:
    age_ms: int = ORPHAN_AFTER_MS
    records: int = ORPHAN_AFTER_RECORDS


DEFAULT_BOUNDS = Bounds()


@dataclass(frozen=True)
class Upload:
    """A piece of ``sha`` that request ``request_id`` carried: first seen at log
    ``offset``, dated ``clock_ms`` by the first proposal after it (None: none yet)."""

    sha: str
    request_id: str
    offset: int
    clock_ms: int | None


def advance_clock(clock_ms: int | None, proposal_time_ms: int) -> int:
    """The partition's log time after a proposal: it never goes back."""
    return proposal_time_ms if clock_ms is None else max(clock_ms, proposal_time_ms)


@dataclass(frozen=True)
class Floors:
    """An upload dated before ``clock_ms``, or first seen before ``offset``, is stale."""

    clock_ms: int
    offset: int


def expiry_floors(clock_ms: int, offset: int, bounds: Bounds = DEFAULT_BOUNDS) -> Floors:
    """The floors at the proposal at log ``offset`` when the log time is ``clock_ms``."""
    return Floors(clock_ms - bounds.age_ms, offset - bounds.records)


def is_stale(upload: Upload, floors: Floors) -> bool:
    """An upload whose proposal did not come in time. One not dated yet is younger
    than the proposal dating it, so it is stale only by its offset."""
    if upload.offset < floors.offset:
        return True
    return upload.clock_ms is not None and upload.clock_ms < floors.clock_ms


def collectable(
    candidates: Iterable[str], pending: Callable[[str], bool], referenced: Callable[[str], bool]
) -> list[str]:
    """Of ``candidates`` (objects whose last pending upload or reference just went),
    those to delete now: nothing pending and nothing referring to them. Sorted, once
    each, so that every replica deletes in the same order."""
    return [sha for sha in sorted(set(candidates)) if not pending(sha) and not referenced(sha)]


def references(tree: str, manifest: p.Manifest) -> list[str]:
    """What a version refers to: its tree and every blob the tree names, once each, sorted."""
    return sorted({tree, *(entry.sha for entry in manifest.values())})
