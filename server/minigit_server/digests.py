"""Repository digests and report-page sums, as pure functions (no store, no Kafka).

A repository's digest covers its head, its access (owner, visibility, members) and
its whole history: every version row and whether its tree is present, folded in
version order (``history_step``), so that adding a version costs one hash, not a
pass over the history. The store keeps the fold and the digest with the
repository's row, written in the same transaction as the state they describe, so
they depend only on the log; ``recompute`` folds the rows again to catch a store
changed behind the replica's back.

A report page's sum is the sum, modulo 2**256, of one hash per repository on it
(``report_element``: name, head, digest, last change): adding, changing or removing
one repository moves the sum by the difference of two hashes, whatever the page holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Protocol

from minigit import protocol as p

PAGE_MODULUS = 2**256
EMPTY_HISTORY = hashlib.sha256(b"minigit repository history 1\n").hexdigest()


class VersionRow(Protocol):
    version: int
    tree: str
    author: str
    message: str
    time_ms: int
    request_id: str
    signed: str | None


def history_step(history: str, version: VersionRow, tree_present: bool) -> str:
    """The history digest once ``version`` is added after ``history``."""
    row = [version.version, version.tree, version.author, version.message, version.time_ms, version.request_id]
    row.append(version.signed)
    line = json.dumps(row, ensure_ascii=False) + f"\ntree-present={tree_present}\n"
    return hashlib.sha256(history.encode() + b"\n" + line.encode()).hexdigest()


def fold_history(versions: Iterable[tuple[VersionRow, bool]]) -> str:
    """The history digest of versions (oldest first) with whether each tree is present."""
    history = EMPTY_HISTORY
    for version, tree_present in versions:
        history = history_step(history, version, tree_present)
    return history


def repo_digest(head: int, owner: str, visibility: str, members: Mapping[str, str], history: str) -> str:
    access = [owner, visibility, sorted(members.items())]
    text = f"head={head}\n{json.dumps(access, ensure_ascii=False)}\nhistory={history}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def report_element(name: str, head: int, digest: str, changed_at: int) -> int:
    """One repository's share of its report page's sum."""
    text = json.dumps([name, head, digest, changed_at], ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")


def page_digest(count: int, total: int) -> str:
    """What a heartbeat says of a report page ("": empty)."""
    if count == 0:
        return ""
    return hashlib.sha256(f"{count}:{total:064x}".encode()).hexdigest()[: p.PAGE_DIGEST_LENGTH]


def partition_digest(pages: list[str]) -> str:
    """One digest of a partition's page digests: equal on replicas holding the same."""
    return hashlib.sha256("\n".join(pages).encode()).hexdigest()


def page_sum(elements: Iterable[int]) -> tuple[int, int]:
    """(count, total) of a page's elements, computed afresh (tests, audits)."""
    count = total = 0
    for element in elements:
        count, total = count + 1, (total + element) % PAGE_MODULUS
    return count, total
