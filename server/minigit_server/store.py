"""A replica's state: an embedded SQLite store, and an in-memory twin for tests.

Both hold the same things: blob chunks (content-addressed by the sha256 of the
blob's raw bytes), complete blobs, repositories and their versions, write
outcomes by request id, and the next log offset to apply per partition. The
applier writes the offsets in the same transaction as the state they produced,
so a replica killed at any instant resumes without loss or double apply.

Each log partition is its own state machine: chunks, blobs and outcomes are
kept per partition, and a repository lives in one partition only. Kafka orders
records within a partition, not across them, so nothing one partition applies
may depend on how far another has got.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import hashlib
import json
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from minigit import codec
from minigit import protocol as p
from minigit.codec import Piece
from minigit.errors import MinigitError
from minigit_server import collection, digests
from minigit_server.access import Account
from minigit_server.collection import Floors, Upload

# The digest of a repository a store does not hold.
ABSENT_DIGEST = hashlib.sha256(b"no such repository\n").hexdigest()


@dataclass(frozen=True)
class RepoState:
    name: str
    head: int
    partition: int  # the log partition its records live in
    changed_at: int  # log offset of the record that last changed it
    owner: str = ""
    visibility: str = "private"


@dataclass(frozen=True)
class DamageRecord:
    """A stored blob that failed its hash check; ``repaired_ms`` is None while it is quarantined."""

    partition: int
    sha: str
    problem: str
    found_ms: int
    repaired_ms: int | None = None


@dataclass(frozen=True)
class VersionInfo:
    version: int
    tree: str
    author: str
    message: str
    time_ms: int
    request_id: str
    signed: str | None = None  # the JSON of the SignedWrite that made it (log --verify)


class Store(abc.ABC):
    """The small interface the applier and the request handlers need."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]: ...

    @abc.abstractmethod
    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        """A consistent read of several tables (offsets and the state they made)."""

    @abc.abstractmethod
    def applied_offsets(self) -> dict[int, int]: ...

    @abc.abstractmethod
    def set_applied(self, partition: int, next_offset: int) -> None: ...

    @abc.abstractmethod
    def blob_size(self, partition: int, sha: str) -> int | None:
        """The raw size of a complete, verified blob; None if absent."""

    @abc.abstractmethod
    def put_chunk(self, partition: int, sha: str, chunk: Piece) -> bool:
        """Keep the first copy of a chunk; later copies of the same piece are ignored.
        Whether this one was kept (the applier need not read it back then)."""

    @abc.abstractmethod
    def iter_chunks(self, partition: int, sha: str, count: int) -> Iterator[Piece]:
        """Chunks 0..count-1 present for ``sha``, in order (complete or not)."""

    @abc.abstractmethod
    def get_chunk(self, partition: int, sha: str, index: int) -> Piece | None: ...

    @abc.abstractmethod
    def delete_chunks(self, partition: int, sha: str) -> None:
        """Drop a blob's pieces, and every proof that a repository uploaded them."""

    @abc.abstractmethod
    def prove_piece(self, partition: int, repo: str, sha: str, index: int) -> None:
        """Record that an upload to ``repo`` carried piece ``index`` of ``sha`` itself."""

    @abc.abstractmethod
    def count_proven(self, partition: int, repo: str, sha: str) -> int:
        """How many distinct pieces of ``sha`` uploads to ``repo`` carried."""

    @abc.abstractmethod
    def put_blob(self, partition: int, sha: str, size: int, count: int) -> None: ...

    @abc.abstractmethod
    def blob_chunk_count(self, partition: int, sha: str) -> int | None: ...

    @abc.abstractmethod
    def list_blobs(self, after: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` complete blobs as (partition, sha), in order, after ``after``."""

    @abc.abstractmethod
    def restore_blob(self, partition: int, sha: str, size: int, count: int, pieces: Iterable[Piece]) -> None:
        """Replace a blob's pieces and row with ``pieces`` (a repair, in one transaction);
        nothing if the store no longer holds the object (``holds``: it was collected)."""

    @abc.abstractmethod
    def scratch(self) -> contextlib.AbstractContextManager[Store]:
        """An empty store of the same kind, thrown away afterwards (to rebuild one blob in)."""

    @abc.abstractmethod
    def mark_damaged(self, record: DamageRecord) -> None:
        """Quarantine a blob (again, if it was repaired before)."""

    @abc.abstractmethod
    def mark_repaired(self, partition: int, sha: str, repaired_ms: int) -> None: ...

    @abc.abstractmethod
    def list_damage(self, quarantined_only: bool = True) -> list[DamageRecord]: ...

    @abc.abstractmethod
    def get_repo(self, name: str) -> RepoState | None: ...

    @abc.abstractmethod
    def list_repos(self, after: str = "", limit: int | None = None) -> list[RepoState]:
        """Repositories by name: those after ``after``, at most ``limit`` (None: all)."""

    @abc.abstractmethod
    def put_repo(self, repo: RepoState) -> None: ...

    @abc.abstractmethod
    def delete_repo(self, name: str) -> None:
        """Forget a repository: its row, versions, members and the proofs that uploads
        to it carried their pieces (a repository created again under the name must
        upload its content again). Outcomes stay: a request id stays used."""

    @abc.abstractmethod
    def add_version(self, repo: str, info: VersionInfo) -> None: ...

    @abc.abstractmethod
    def get_version(self, repo: str, version: int) -> VersionInfo | None: ...

    @abc.abstractmethod
    def list_versions(self, repo: str) -> list[VersionInfo]:
        """All versions, oldest first."""

    @abc.abstractmethod
    def get_outcome(self, partition: int, request_id: str) -> dict | None: ...

    @abc.abstractmethod
    def get_members(self, repo: str) -> dict[str, str]: ...

    @abc.abstractmethod
    def set_members(self, repo: str, members: dict[str, str]) -> None: ...

    @abc.abstractmethod
    def get_account(self, name: str) -> Account | None: ...

    @abc.abstractmethod
    def put_account(self, account: Account) -> None: ...

    @abc.abstractmethod
    def list_accounts(self) -> list[Account]: ...

    @abc.abstractmethod
    def put_outcome(self, partition: int, request_id: str, outcome: dict) -> None:
        """Store the first outcome of a request id; a later one is ignored."""

    @abc.abstractmethod
    def replace_outcome(self, partition: int, request_id: str, outcome: dict) -> None:
        """Store ``outcome`` whatever was stored for the request id: only where what was
        stored binds some requests only (a cancellation by settles, decisions.binding)."""

    # -- repository digests and report pages (kept by put_repo, add_version,
    # set_members and delete_repo, in their transaction: see minigit_server.digests)

    @abc.abstractmethod
    def digest_state(self, name: str) -> tuple[str, str] | None:
        """A repository's stored (history fold, digest); None if there is no such repository."""

    @abc.abstractmethod
    def set_digest_state(self, name: str, history: str, digest: str) -> None: ...

    @abc.abstractmethod
    def adjust_page(self, partition: int, page: int, count: int, delta: int) -> None:
        """Add ``count`` repositories and ``delta`` (mod 2**256) to a report page's sum."""

    @abc.abstractmethod
    def report_pages(self) -> dict[tuple[int, int], tuple[int, int]]:
        """Every report page ever used: (partition, page) -> (repositories, sum)."""

    @abc.abstractmethod
    def page_reports(self, partition: int, page: int) -> dict[str, p.RepoReport]:
        """The reports of the repositories on one page (an index, not a scan)."""

    # -- what collection keeps and deletes (minigit_server.collection)

    @abc.abstractmethod
    def note_upload(self, partition: int, sha: str, request_id: str, offset: int) -> None:
        """Request ``request_id`` carried a piece of ``sha`` (at log ``offset``): pending
        until its proposal is applied. The first note of a request and object stays."""

    @abc.abstractmethod
    def release_uploads(self, partition: int, request_id: str) -> list[str]:
        """A request's proposal was applied: forget its pending uploads; the objects they were of."""

    @abc.abstractmethod
    def advance_clock(self, partition: int, time_ms: int) -> int:
        """The partition's log time after a proposal of ``time_ms`` (collection.advance_clock);
        the uploads not dated yet are dated with it."""

    @abc.abstractmethod
    def expire_uploads(self, partition: int, floors: Floors) -> list[str]:
        """Forget the uploads that are stale (collection.is_stale); the objects they were of."""

    @abc.abstractmethod
    def list_uploads(self, partition: int) -> list[Upload]:
        """The pending uploads of a partition, by object and request."""

    @abc.abstractmethod
    def is_pending(self, partition: int, sha: str) -> bool: ...

    @abc.abstractmethod
    def add_references(self, partition: int, repo: str, shas: Iterable[str]) -> None:
        """A version of ``repo`` refers to these objects."""

    @abc.abstractmethod
    def drop_references(self, repo: str) -> list[tuple[int, str]]:
        """Forget what ``repo``'s versions referred to; (partition, sha) of each, sorted."""

    @abc.abstractmethod
    def is_referenced(self, partition: int, sha: str) -> bool: ...

    @abc.abstractmethod
    def delete_object(self, partition: int, sha: str) -> int:
        """Collect an object: its pieces, its row, the proofs of its uploads and any
        quarantine record; the bytes its pieces held."""

    @abc.abstractmethod
    def stored_objects(self) -> list[tuple[int, str]]:
        """Every (partition, sha) with pieces stored, complete or not, sorted."""

    def close(self) -> None:  # noqa: B027 - optional: only a store with connections has something to close
        pass

    def holds(self, partition: int, sha: str) -> bool:
        """Whether the log says this store keeps the object: a version refers to it or
        an upload of it is pending. Anything else was collected (or never came)."""
        return self.is_referenced(partition, sha) or self.is_pending(partition, sha)

    def reclaim_space(self) -> int:
        """Give the space of deleted content back to the file system (outside any
        transaction; nothing the log decides). The bytes given back."""
        return 0

    def expect_bulk_writes(self) -> None:
        """The calling thread applies the log: many rows per transaction, at places
        spread by content hash (a store may keep more pages in memory for it)."""
        return None

    # -- derived reads, the same for every store

    def count_present_chunks(self, partition: int, sha: str, count: int) -> int:
        return sum(1 for _ in self.iter_chunks(partition, sha, count))

    def read_blob(self, partition: int, sha: str) -> bytes | None:
        """A whole blob, checked against its name; None if absent."""
        count = self.blob_chunk_count(partition, sha)
        if count is None:
            return None
        return codec.assemble(sha, count, self.iter_chunks(partition, sha, count))

    def check_blob(self, partition: int, sha: str, on_read: Callable[[int], object] = lambda n: None) -> str | None:
        """What is wrong with a stored blob (None: every piece is there and the whole
        hashes to its name). Reads one piece at a time; ``on_read`` gets each piece's
        stored size (to pace a scrub)."""
        count, size = self.blob_chunk_count(partition, sha), self.blob_size(partition, sha)
        if count is None or size is None:
            return "not in the store"
        assembler = codec.Assembler(sha, count)
        try:
            for piece in self.iter_chunks(partition, sha, count):
                on_read(len(piece.payload))
                if piece.index != assembler.next_index:
                    return f"chunk {assembler.next_index} of {count} is missing"
                assembler.add(piece)
        except MinigitError as error:
            return error.message
        if not assembler.complete:
            return f"chunk {assembler.next_index} of {count} is missing"
        if assembler.size != size:
            return f"holds {assembler.size} bytes, its row says {size}"
        return None

    def read_manifest(self, repo: str, version: int) -> p.Manifest:
        if version == 0:
            return {}
        state, info = self.get_repo(repo), self.get_version(repo, version)
        tree = self.read_blob(state.partition, info.tree) if state and info else None
        if tree is None:
            raise LookupError(f"{repo} version {version} has no tree in this store")
        return p.decode_tree(tree)

    def repo_digest(self, name: str) -> str:
        """A digest of everything a repository's history holds, computed from the rows
        themselves (not the kept one), so a damaged store shows a different digest."""
        fresh = self.recompute_digest(name)
        return fresh[1] if fresh else ABSENT_DIGEST

    def kept_digest(self, name: str) -> str | None:
        """The repository's digest as kept at apply time, which heartbeats report
        (None: no such repository). It equals ``repo_digest`` unless the store was
        changed behind the replica's back (``audit_digest`` finds that)."""
        state = self.digest_state(name)
        return state[1] if state else None

    def recompute_digest(self, name: str) -> tuple[str, str] | None:
        """(history fold, digest) computed afresh from the rows; None if no such repository."""
        repo = self.get_repo(name)
        if repo is None:
            return None
        versions = ((v, self.blob_size(repo.partition, v.tree) is not None) for v in self.list_versions(name))
        history = digests.fold_history(versions)
        return history, digests.repo_digest(repo.head, repo.owner, repo.visibility, self.get_members(name), history)

    def _report_element(self, name: str) -> tuple[int, int] | None:
        repo, state = self.get_repo(name), self.digest_state(name)
        if repo is None or state is None:
            return None
        return repo.partition, digests.report_element(name, repo.head, state[1], repo.changed_at)

    def _maintain(self, name: str, change: Callable[[], None], added: VersionInfo | None = None) -> None:
        """Make ``change`` to repository ``name``, then bring its digest and its report
        page's sum up to date: ``added`` is a version the change appended."""
        before = self._report_element(name)
        change()
        repo, state = self.get_repo(name), self.digest_state(name)
        if repo is not None and state is not None:
            history = state[0]
            if added is not None:
                history = digests.history_step(history, added, self.blob_size(repo.partition, added.tree) is not None)
            digest = digests.repo_digest(repo.head, repo.owner, repo.visibility, self.get_members(name), history)
            self.set_digest_state(name, history, digest)
        self._move_element(name, before, self._report_element(name))

    def _move_element(self, name: str, before: tuple[int, int] | None, after: tuple[int, int] | None) -> None:
        if before == after:
            return
        page = p.report_page_of(name)
        if before is not None:
            self.adjust_page(before[0], page, -1, -before[1])
        if after is not None:
            self.adjust_page(after[0], page, 1, after[1])

    def audit_digest(self, name: str) -> bool:
        """Check a repository's kept digest against its rows; if they differ (the store
        was changed behind the replica's back), keep the rows' digest, so that the
        damage shows as a disagreement with the other replicas. True if they matched.
        Call it inside a transaction."""
        fresh = self.recompute_digest(name)
        if fresh is None or fresh == self.digest_state(name):
            return True
        before = self._report_element(name)
        self.set_digest_state(name, *fresh)
        self._move_element(name, before, self._report_element(name))
        return False


class MemoryStore(Store):
    """The in-memory twin: same behaviour, dicts instead of tables."""

    def __init__(self) -> None:
        self.offsets: dict[int, int] = {}
        self.chunks: dict[tuple[int, str], dict[int, Piece]] = {}
        self.blobs: dict[tuple[int, str], tuple[int, int]] = {}
        self.repos: dict[str, RepoState] = {}
        self.versions: dict[str, dict[int, VersionInfo]] = {}
        self.outcomes: dict[tuple[int, str], dict] = {}
        self.damage: dict[tuple[int, str], DamageRecord] = {}
        self.members: dict[str, dict[str, str]] = {}
        self.accounts: dict[str, Account] = {}
        self.proofs: set[tuple[int, str, str, int]] = set()  # (partition, repo, sha, index)
        self.digest_states: dict[str, tuple[str, str]] = {}  # repo -> (history fold, digest)
        self.pages: dict[tuple[int, int], tuple[int, int]] = {}  # (partition, page) -> (repositories, sum)
        self.uploads: dict[
            tuple[int, str, str], tuple[int, int | None]
        ] = {}  # (partition, sha, request) -> (offset, clock)
        self.references: set[tuple[int, str, str]] = set()  # (partition, sha, repo)
        self.clocks: dict[int, int] = {}

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        saved = copy.deepcopy(self.__dict__)
        try:
            yield
        except BaseException:
            self.__dict__.update(saved)
            raise

    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def applied_offsets(self) -> dict[int, int]:
        return dict(self.offsets)

    def set_applied(self, partition: int, next_offset: int) -> None:
        self.offsets[partition] = next_offset

    def blob_size(self, partition: int, sha: str) -> int | None:
        found = self.blobs.get((partition, sha))
        return found[0] if found else None

    def blob_chunk_count(self, partition: int, sha: str) -> int | None:
        found = self.blobs.get((partition, sha))
        return found[1] if found else None

    def put_chunk(self, partition: int, sha: str, chunk: Piece) -> bool:
        pieces = self.chunks.setdefault((partition, sha), {})
        return pieces.setdefault(chunk.index, chunk) is chunk

    def iter_chunks(self, partition: int, sha: str, count: int) -> Iterator[Piece]:
        pieces = self.chunks.get((partition, sha), {})
        yield from (pieces[i] for i in sorted(pieces) if i < count)

    def get_chunk(self, partition: int, sha: str, index: int) -> Piece | None:
        return self.chunks.get((partition, sha), {}).get(index)

    def delete_chunks(self, partition: int, sha: str) -> None:
        self.chunks.pop((partition, sha), None)
        self.proofs = {proof for proof in self.proofs if proof[:1] + proof[2:3] != (partition, sha)}

    def prove_piece(self, partition: int, repo: str, sha: str, index: int) -> None:
        self.proofs.add((partition, repo, sha, index))

    def count_proven(self, partition: int, repo: str, sha: str) -> int:
        return sum(1 for proof in self.proofs if proof[:3] == (partition, repo, sha))

    def put_blob(self, partition: int, sha: str, size: int, count: int) -> None:
        self.blobs[(partition, sha)] = (size, count)

    def list_blobs(self, after: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
        return [key for key in sorted(self.blobs) if after is None or key > after][:limit]

    def restore_blob(self, partition: int, sha: str, size: int, count: int, pieces: Iterable[Piece]) -> None:
        with self.transaction():
            if not self.holds(partition, sha):
                return  # collected meanwhile (by the applier): a repair must not bring it back
            self.chunks[(partition, sha)] = {piece.index: piece for piece in pieces}
            self.blobs[(partition, sha)] = (size, count)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Store]:
        yield MemoryStore()

    def mark_damaged(self, record: DamageRecord) -> None:
        self.damage[(record.partition, record.sha)] = record

    def mark_repaired(self, partition: int, sha: str, repaired_ms: int) -> None:
        if (found := self.damage.get((partition, sha))) is not None:
            self.damage[(partition, sha)] = dataclasses.replace(found, repaired_ms=repaired_ms)

    def list_damage(self, quarantined_only: bool = True) -> list[DamageRecord]:
        found = [self.damage[key] for key in sorted(self.damage)]
        return [d for d in found if d.repaired_ms is None] if quarantined_only else found

    def get_repo(self, name: str) -> RepoState | None:
        return self.repos.get(name)

    def list_repos(self, after: str = "", limit: int | None = None) -> list[RepoState]:
        return [self.repos[name] for name in sorted(self.repos) if name > after][:limit]

    def put_repo(self, repo: RepoState) -> None:
        def change() -> None:
            self.repos[repo.name] = repo
            self.digest_states.setdefault(repo.name, (digests.EMPTY_HISTORY, ""))

        self._maintain(repo.name, change)

    def delete_repo(self, name: str) -> None:
        def change() -> None:
            self.repos.pop(name, None)
            self.versions.pop(name, None)
            self.members.pop(name, None)
            self.digest_states.pop(name, None)
            self.proofs = {proof for proof in self.proofs if proof[1] != name}

        self._maintain(name, change)

    def add_version(self, repo: str, info: VersionInfo) -> None:
        self._maintain(repo, lambda: self.versions.setdefault(repo, {}).__setitem__(info.version, info), info)

    def digest_state(self, name: str) -> tuple[str, str] | None:
        return self.digest_states.get(name) if name in self.repos else None

    def set_digest_state(self, name: str, history: str, digest: str) -> None:
        self.digest_states[name] = (history, digest)

    def adjust_page(self, partition: int, page: int, count: int, delta: int) -> None:
        had, total = self.pages.get((partition, page), (0, 0))
        self.pages[(partition, page)] = (had + count, (total + delta) % digests.PAGE_MODULUS)

    def report_pages(self) -> dict[tuple[int, int], tuple[int, int]]:
        return dict(self.pages)

    def page_reports(self, partition: int, page: int) -> dict[str, p.RepoReport]:
        found = {}
        for name in sorted(self.repos):
            repo = self.repos[name]
            if repo.partition == partition and p.report_page_of(name) == page:
                found[name] = p.RepoReport(
                    head=repo.head, digest=self.digest_states[name][1], partition=partition, changed_at=repo.changed_at
                )
        return found

    def get_version(self, repo: str, version: int) -> VersionInfo | None:
        return self.versions.get(repo, {}).get(version)

    def list_versions(self, repo: str) -> list[VersionInfo]:
        found = self.versions.get(repo, {})
        return [found[v] for v in sorted(found)]

    def get_outcome(self, partition: int, request_id: str) -> dict | None:
        return self.outcomes.get((partition, request_id))

    def put_outcome(self, partition: int, request_id: str, outcome: dict) -> None:
        self.outcomes.setdefault((partition, request_id), outcome)

    def replace_outcome(self, partition: int, request_id: str, outcome: dict) -> None:
        self.outcomes[(partition, request_id)] = outcome

    def get_members(self, repo: str) -> dict[str, str]:
        return dict(self.members.get(repo, {}))

    def set_members(self, repo: str, members: dict[str, str]) -> None:
        self._maintain(repo, lambda: self.members.__setitem__(repo, dict(members)))

    def get_account(self, name: str) -> Account | None:
        return self.accounts.get(name)

    def put_account(self, account: Account) -> None:
        self.accounts[account.name] = account

    def list_accounts(self) -> list[Account]:
        return [self.accounts[name] for name in sorted(self.accounts)]

    def note_upload(self, partition: int, sha: str, request_id: str, offset: int) -> None:
        self.uploads.setdefault((partition, sha, request_id), (offset, None))

    def release_uploads(self, partition: int, request_id: str) -> list[str]:
        mine = [key for key in self.uploads if key[0] == partition and key[2] == request_id]
        for key in mine:
            del self.uploads[key]
        return sorted({key[1] for key in mine})

    def advance_clock(self, partition: int, time_ms: int) -> int:
        clock = collection.advance_clock(self.clocks.get(partition), time_ms)
        self.clocks[partition] = clock
        for key, (offset, dated) in self.uploads.items():
            if key[0] == partition and dated is None:
                self.uploads[key] = (offset, clock)
        return clock

    def expire_uploads(self, partition: int, floors: Floors) -> list[str]:
        stale = [key for key in self.list_upload_keys(partition) if collection.is_stale(self._upload(key), floors)]
        for key in stale:
            del self.uploads[key]
        return sorted({key[1] for key in stale})

    def list_upload_keys(self, partition: int) -> list[tuple[int, str, str]]:
        return sorted(key for key in self.uploads if key[0] == partition)

    def _upload(self, key: tuple[int, str, str]) -> Upload:
        offset, clock = self.uploads[key]
        return Upload(key[1], key[2], offset, clock)

    def list_uploads(self, partition: int) -> list[Upload]:
        return [self._upload(key) for key in self.list_upload_keys(partition)]

    def is_pending(self, partition: int, sha: str) -> bool:
        return any(key[:2] == (partition, sha) for key in self.uploads)

    def add_references(self, partition: int, repo: str, shas: Iterable[str]) -> None:
        self.references.update((partition, sha, repo) for sha in shas)

    def drop_references(self, repo: str) -> list[tuple[int, str]]:
        mine = {ref for ref in self.references if ref[2] == repo}
        self.references -= mine
        return sorted({ref[:2] for ref in mine})

    def is_referenced(self, partition: int, sha: str) -> bool:
        return any(ref[:2] == (partition, sha) for ref in self.references)

    def delete_object(self, partition: int, sha: str) -> int:
        held = sum(len(piece.payload) for piece in self.chunks.get((partition, sha), {}).values())
        self.delete_chunks(partition, sha)
        self.blobs.pop((partition, sha), None)
        self.damage.pop((partition, sha), None)
        return held

    def stored_objects(self) -> list[tuple[int, str]]:
        return sorted(key for key, pieces in self.chunks.items() if pieces)


# Version 2 keeps chunks, blobs and outcomes per log partition (version 1 shared them);
# version 3 adds identity: accounts, owners, visibility, members, signed versions;
# version 4 applies settle and delete records (an older replica skipped them) and
# stores each outcome's repository: a store of version 3 is rebuilt from the log;
# version 5 stores who a settle's cancellation binds (its user and repository: an
# older store's cancellations bind everyone) and checks a push's base_tree;
# version 6 keeps each repository's digest (and its history fold, and its report
# page) with its row, and the sums of the report pages, all kept at apply time; and
# it collects content nothing refers to (minigit_server.collection): it keeps
# pending uploads, the references of versions and each partition's log time, which
# an older store lacks (it would keep its orphans, and decide no collection alike).
SCHEMA_VERSION = 6
_SCHEMA = """
CREATE TABLE IF NOT EXISTS applied (partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    partition INTEGER NOT NULL, sha TEXT NOT NULL, idx INTEGER NOT NULL, encoding TEXT NOT NULL,
    payload BLOB NOT NULL, PRIMARY KEY (partition, sha, idx));
CREATE TABLE IF NOT EXISTS blobs (
    partition INTEGER NOT NULL, sha TEXT NOT NULL, size INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (partition, sha));
CREATE TABLE IF NOT EXISTS repos (
    name TEXT PRIMARY KEY, head INTEGER NOT NULL, partition INTEGER NOT NULL, changed_at INTEGER NOT NULL,
    owner TEXT NOT NULL, visibility TEXT NOT NULL,
    page INTEGER NOT NULL, history TEXT NOT NULL, digest TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS repos_by_page ON repos (partition, page);
CREATE TABLE IF NOT EXISTS report_pages (
    partition INTEGER NOT NULL, page INTEGER NOT NULL, repos INTEGER NOT NULL, total TEXT NOT NULL,
    PRIMARY KEY (partition, page));
CREATE TABLE IF NOT EXISTS versions (
    repo TEXT NOT NULL, version INTEGER NOT NULL, tree TEXT NOT NULL, author TEXT NOT NULL,
    message TEXT NOT NULL, time_ms INTEGER NOT NULL, request_id TEXT NOT NULL, signed TEXT,
    PRIMARY KEY (repo, version));
CREATE TABLE IF NOT EXISTS members (
    repo TEXT NOT NULL, user TEXT NOT NULL, level TEXT NOT NULL, PRIMARY KEY (repo, user));
CREATE TABLE IF NOT EXISTS piece_proofs (
    partition INTEGER NOT NULL, repo TEXT NOT NULL, sha TEXT NOT NULL, idx INTEGER NOT NULL,
    PRIMARY KEY (partition, repo, sha, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY, key TEXT NOT NULL, removed INTEGER NOT NULL, since INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outcomes (
    partition INTEGER NOT NULL, request_id TEXT NOT NULL, outcome TEXT NOT NULL, PRIMARY KEY (partition, request_id));
CREATE TABLE IF NOT EXISTS uploads (
    partition INTEGER NOT NULL, sha TEXT NOT NULL, request_id TEXT NOT NULL, first_offset INTEGER NOT NULL,
    clock_ms INTEGER, PRIMARY KEY (partition, sha, request_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS uploads_by_request ON uploads (partition, request_id);
CREATE INDEX IF NOT EXISTS uploads_by_clock ON uploads (partition, clock_ms);
CREATE INDEX IF NOT EXISTS uploads_by_offset ON uploads (partition, first_offset);
CREATE TABLE IF NOT EXISTS refs (
    partition INTEGER NOT NULL, sha TEXT NOT NULL, repo TEXT NOT NULL,
    PRIMARY KEY (partition, sha, repo)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_by_repo ON refs (repo);
CREATE TABLE IF NOT EXISTS clocks (partition INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL);
"""
# This replica's own findings, not state made by the log (no digest covers it): added
# to a schema-2 store on open, so that a store need not be rebuilt to get it.
_DAMAGE_TABLE = """
CREATE TABLE IF NOT EXISTS damaged (
    partition INTEGER NOT NULL, sha TEXT NOT NULL, problem TEXT NOT NULL, found_ms INTEGER NOT NULL,
    repaired_ms INTEGER, PRIMARY KEY (partition, sha));
"""


class StoreUnusable(Exception):
    """A store file this replica cannot use: another schema version, or not an
    SQLite database (truncated, overwritten). The log can rebuild it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class SqliteStore(Store):
    """One SQLite file per replica. WAL lets readers (request handlers) run beside
    the applier; each thread gets its own connection."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            self._open_schema()
        except sqlite3.DatabaseError as error:
            self.close()
            # Only damage makes a store unusable; a store that cannot be opened or
            # written (permissions, a full disk, a lock) is a failure to report.
            if getattr(error, "sqlite_errorcode", None) in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                raise StoreUnusable(self.path, str(error)) from None
            raise
        except StoreUnusable:
            self.close()
            raise

    def _open_schema(self) -> None:
        db = self._db()
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone():
            db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        elif version != SCHEMA_VERSION:
            raise StoreUnusable(self.path, f"schema version {version}, this replica needs {SCHEMA_VERSION}")
        db.execute(_DAMAGE_TABLE)
        # A damaged page anywhere (reads it all: seconds for a large store, at start only).
        problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise StoreUnusable(self.path, f"damaged: {'; '.join(problems)}")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            # A new file only (before WAL writes its header): collected content gives
            # its pages back to the file system (reclaim_space), not just to SQLite.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            # The log is the source of truth: after a power cut we may lose the last
            # transactions, and with them their offsets, so they are applied again.
            db.execute("PRAGMA synchronous=NORMAL")
            # A large batch grows the WAL; once checkpointed it is cut back to this.
            db.execute("PRAGMA journal_size_limit=67108864")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        db = self._db()
        db.execute("BEGIN")
        try:
            yield
        finally:
            db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    def applied_offsets(self) -> dict[int, int]:
        return dict(self._db().execute("SELECT partition, next_offset FROM applied"))

    def set_applied(self, partition: int, next_offset: int) -> None:
        self._db().execute(
            "INSERT INTO applied VALUES (?, ?) ON CONFLICT(partition) DO UPDATE SET next_offset = excluded.next_offset",
            (partition, next_offset),
        )

    def blob_size(self, partition: int, sha: str) -> int | None:
        row = self._db().execute("SELECT size FROM blobs WHERE partition = ? AND sha = ?", (partition, sha)).fetchone()
        return row[0] if row else None

    def blob_chunk_count(self, partition: int, sha: str) -> int | None:
        row = self._db().execute("SELECT count FROM blobs WHERE partition = ? AND sha = ?", (partition, sha)).fetchone()
        return row[0] if row else None

    def put_chunk(self, partition: int, sha: str, chunk: Piece) -> bool:
        inserted = self._db().execute(
            "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?)",
            (partition, sha, chunk.index, chunk.encoding, chunk.payload),
        )
        return inserted.rowcount == 1

    def count_present_chunks(self, partition: int, sha: str, count: int) -> int:
        query = "SELECT COUNT(*) FROM chunks WHERE partition = ? AND sha = ? AND idx < ?"
        return self._db().execute(query, (partition, sha, count)).fetchone()[0]

    def iter_chunks(self, partition: int, sha: str, count: int) -> Iterator[Piece]:
        # One row at a time: a 100 MiB blob is never in memory at once.
        query = "SELECT encoding, payload FROM chunks WHERE partition = ? AND sha = ? AND idx = ?"
        for index in range(count):
            row = self._db().execute(query, (partition, sha, index)).fetchone()
            if row:
                yield Piece(index, row[0], bytes(row[1]))

    def get_chunk(self, partition: int, sha: str, index: int) -> Piece | None:
        query = "SELECT encoding, payload FROM chunks WHERE partition = ? AND sha = ? AND idx = ?"
        row = self._db().execute(query, (partition, sha, index)).fetchone()
        return Piece(index, row[0], bytes(row[1])) if row else None

    def delete_chunks(self, partition: int, sha: str) -> None:
        self._db().execute("DELETE FROM chunks WHERE partition = ? AND sha = ?", (partition, sha))
        self._db().execute("DELETE FROM piece_proofs WHERE partition = ? AND sha = ?", (partition, sha))

    def prove_piece(self, partition: int, repo: str, sha: str, index: int) -> None:
        self._db().execute("INSERT OR IGNORE INTO piece_proofs VALUES (?, ?, ?, ?)", (partition, repo, sha, index))

    def count_proven(self, partition: int, repo: str, sha: str) -> int:
        query = "SELECT COUNT(*) FROM piece_proofs WHERE partition = ? AND repo = ? AND sha = ?"
        return self._db().execute(query, (partition, repo, sha)).fetchone()[0]

    def put_blob(self, partition: int, sha: str, size: int, count: int) -> None:
        self._db().execute("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)", (partition, sha, size, count))

    def list_blobs(self, after: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
        after = after or (-1, "")
        query = "SELECT partition, sha FROM blobs WHERE (partition, sha) > (?, ?) ORDER BY partition, sha LIMIT ?"
        return [(row[0], row[1]) for row in self._db().execute(query, (*after, limit))]

    def restore_blob(self, partition: int, sha: str, size: int, count: int, pieces: Iterable[Piece]) -> None:
        db = self._db()
        with self.transaction():
            if not self.holds(partition, sha):
                return  # collected meanwhile (by the applier): a repair must not bring it back
            self.delete_chunks(partition, sha)
            for piece in pieces:
                self.put_chunk(partition, sha, piece)
            db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?)", (partition, sha, size, count))

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Store]:
        # On disk beside the store: a blob of gigabytes is rebuilt without being held in memory.
        with tempfile.TemporaryDirectory(prefix="repair-", dir=self.path.parent) as folder:
            store = SqliteStore(Path(folder) / "scratch.sqlite")
            try:
                yield store
            finally:
                store.close()

    def mark_damaged(self, record: DamageRecord) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO damaged VALUES (?, ?, ?, ?, NULL)",
            (record.partition, record.sha, record.problem, record.found_ms),
        )

    def mark_repaired(self, partition: int, sha: str, repaired_ms: int) -> None:
        query = "UPDATE damaged SET repaired_ms = ? WHERE partition = ? AND sha = ?"
        self._db().execute(query, (repaired_ms, partition, sha))

    def list_damage(self, quarantined_only: bool = True) -> list[DamageRecord]:
        where = " WHERE repaired_ms IS NULL" if quarantined_only else ""
        query = f"SELECT partition, sha, problem, found_ms, repaired_ms FROM damaged{where} ORDER BY partition, sha"
        return [DamageRecord(*row) for row in self._db().execute(query)]

    _REPO_COLUMNS = "name, head, partition, changed_at, owner, visibility"
    _VERSION_COLUMNS = "version, tree, author, message, time_ms, request_id, signed"

    def get_repo(self, name: str) -> RepoState | None:
        query = f"SELECT {self._REPO_COLUMNS} FROM repos WHERE name = ?"
        row = self._db().execute(query, (name,)).fetchone()
        return RepoState(*row) if row else None

    def list_repos(self, after: str = "", limit: int | None = None) -> list[RepoState]:
        query = f"SELECT {self._REPO_COLUMNS} FROM repos WHERE name > ? ORDER BY name LIMIT ?"
        rows = self._db().execute(query, (after, -1 if limit is None else limit))
        return [RepoState(*row) for row in rows]

    def delete_repo(self, name: str) -> None:
        db = self._db()

        def change() -> None:
            for table in ("repos WHERE name", "versions WHERE repo", "members WHERE repo", "piece_proofs WHERE repo"):
                db.execute(f"DELETE FROM {table} = ?", (name,))

        self._maintain(name, change)

    def put_repo(self, repo: RepoState) -> None:
        # An upsert, not a replace: the row's digest columns carry over.
        query = (
            "INSERT INTO repos VALUES (?, ?, ?, ?, ?, ?, ?, ?, '') ON CONFLICT(name) DO UPDATE SET "
            "head = excluded.head, partition = excluded.partition, changed_at = excluded.changed_at, "
            "owner = excluded.owner, visibility = excluded.visibility"
        )
        values = (repo.name, repo.head, repo.partition, repo.changed_at, repo.owner, repo.visibility)
        row = (*values, p.report_page_of(repo.name), digests.EMPTY_HISTORY)
        self._maintain(repo.name, lambda: self._db().execute(query, row))

    def add_version(self, repo: str, info: VersionInfo) -> None:
        row = (repo, info.version, info.tree, info.author, info.message, info.time_ms, info.request_id, info.signed)
        self._maintain(
            repo, lambda: self._db().execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row), info
        )

    def digest_state(self, name: str) -> tuple[str, str] | None:
        row = self._db().execute("SELECT history, digest FROM repos WHERE name = ?", (name,)).fetchone()
        return (row[0], row[1]) if row else None

    def set_digest_state(self, name: str, history: str, digest: str) -> None:
        self._db().execute("UPDATE repos SET history = ?, digest = ? WHERE name = ?", (history, digest, name))

    def adjust_page(self, partition: int, page: int, count: int, delta: int) -> None:
        db = self._db()
        row = db.execute(
            "SELECT repos, total FROM report_pages WHERE partition = ? AND page = ?", (partition, page)
        ).fetchone()
        had, total = (row[0], int(row[1], 16)) if row else (0, 0)
        total = f"{(total + delta) % digests.PAGE_MODULUS:064x}"
        db.execute("INSERT OR REPLACE INTO report_pages VALUES (?, ?, ?, ?)", (partition, page, had + count, total))

    def report_pages(self) -> dict[tuple[int, int], tuple[int, int]]:
        rows = self._db().execute("SELECT partition, page, repos, total FROM report_pages")
        return {(r[0], r[1]): (r[2], int(r[3], 16)) for r in rows}

    def page_reports(self, partition: int, page: int) -> dict[str, p.RepoReport]:
        query = "SELECT name, head, digest, changed_at FROM repos WHERE partition = ? AND page = ? ORDER BY name"
        rows = self._db().execute(query, (partition, page))
        return {r[0]: p.RepoReport(head=r[1], digest=r[2], partition=partition, changed_at=r[3]) for r in rows}

    def get_members(self, repo: str) -> dict[str, str]:
        rows = self._db().execute("SELECT user, level FROM members WHERE repo = ? ORDER BY user", (repo,))
        return dict(rows.fetchall())

    def set_members(self, repo: str, members: dict[str, str]) -> None:
        db = self._db()

        def change() -> None:
            db.execute("DELETE FROM members WHERE repo = ?", (repo,))
            db.executemany("INSERT INTO members VALUES (?, ?, ?)", [(repo, u, level) for u, level in members.items()])

        self._maintain(repo, change)

    def get_account(self, name: str) -> Account | None:
        row = self._db().execute("SELECT name, key, removed, since FROM accounts WHERE name = ?", (name,)).fetchone()
        return Account(row[0], row[1], bool(row[2]), row[3]) if row else None

    def put_account(self, account: Account) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?)",
            (account.name, account.key, int(account.removed), account.since),
        )

    def list_accounts(self) -> list[Account]:
        rows = self._db().execute("SELECT name, key, removed, since FROM accounts ORDER BY name")
        return [Account(r[0], r[1], bool(r[2]), r[3]) for r in rows]

    def get_version(self, repo: str, version: int) -> VersionInfo | None:
        row = (
            self._db()
            .execute(
                f"SELECT {self._VERSION_COLUMNS} FROM versions WHERE repo = ? AND version = ?",
                (repo, version),
            )
            .fetchone()
        )
        return VersionInfo(*row) if row else None

    def list_versions(self, repo: str) -> list[VersionInfo]:
        rows = self._db().execute(
            f"SELECT {self._VERSION_COLUMNS} FROM versions WHERE repo = ? ORDER BY version",
            (repo,),
        )
        return [VersionInfo(*row) for row in rows]

    def get_outcome(self, partition: int, request_id: str) -> dict | None:
        query = "SELECT outcome FROM outcomes WHERE partition = ? AND request_id = ?"
        row = self._db().execute(query, (partition, request_id)).fetchone()
        return json.loads(row[0]) if row else None

    def put_outcome(self, partition: int, request_id: str, outcome: dict) -> None:
        self._db().execute(
            "INSERT OR IGNORE INTO outcomes VALUES (?, ?, ?)", (partition, request_id, json.dumps(outcome))
        )

    def replace_outcome(self, partition: int, request_id: str, outcome: dict) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?)", (partition, request_id, json.dumps(outcome))
        )

    def note_upload(self, partition: int, sha: str, request_id: str, offset: int) -> None:
        self._db().execute(
            "INSERT OR IGNORE INTO uploads VALUES (?, ?, ?, ?, NULL)", (partition, sha, request_id, offset)
        )

    def release_uploads(self, partition: int, request_id: str) -> list[str]:
        db = self._db()
        where = "FROM uploads WHERE partition = ? AND request_id = ?"
        shas = sorted({row[0] for row in db.execute(f"SELECT sha {where}", (partition, request_id))})
        if shas:
            db.execute(f"DELETE {where}", (partition, request_id))
        return shas

    def advance_clock(self, partition: int, time_ms: int) -> int:
        db = self._db()
        row = db.execute("SELECT time_ms FROM clocks WHERE partition = ?", (partition,)).fetchone()
        clock = collection.advance_clock(row[0] if row else None, time_ms)
        db.execute("INSERT OR REPLACE INTO clocks VALUES (?, ?)", (partition, clock))
        db.execute("UPDATE uploads SET clock_ms = ? WHERE partition = ? AND clock_ms IS NULL", (clock, partition))
        return clock

    def expire_uploads(self, partition: int, floors: Floors) -> list[str]:
        # collection.is_stale, as two conditions each searched by its index (an upload
        # not dated yet has a NULL clock: never below the floor)
        db = self._db()
        shas: set[str] = set()
        for column, floor in (("first_offset", floors.offset), ("clock_ms", floors.clock_ms)):
            where = f"FROM uploads WHERE partition = ? AND {column} < ?"
            found = {row[0] for row in db.execute(f"SELECT sha {where}", (partition, floor))}
            if found:
                db.execute(f"DELETE {where}", (partition, floor))
                shas |= found
        return sorted(shas)

    def list_uploads(self, partition: int) -> list[Upload]:
        query = (
            "SELECT sha, request_id, first_offset, clock_ms FROM uploads WHERE partition = ? ORDER BY sha, request_id"
        )
        return [Upload(*row) for row in self._db().execute(query, (partition,))]

    def is_pending(self, partition: int, sha: str) -> bool:
        query = "SELECT 1 FROM uploads WHERE partition = ? AND sha = ? LIMIT 1"
        return self._db().execute(query, (partition, sha)).fetchone() is not None

    def add_references(self, partition: int, repo: str, shas: Iterable[str]) -> None:
        self._db().executemany("INSERT OR IGNORE INTO refs VALUES (?, ?, ?)", [(partition, sha, repo) for sha in shas])

    def drop_references(self, repo: str) -> list[tuple[int, str]]:
        db = self._db()
        found = sorted(
            {(row[0], row[1]) for row in db.execute("SELECT partition, sha FROM refs WHERE repo = ?", (repo,))}
        )
        db.execute("DELETE FROM refs WHERE repo = ?", (repo,))
        return found

    def is_referenced(self, partition: int, sha: str) -> bool:
        query = "SELECT 1 FROM refs WHERE partition = ? AND sha = ? LIMIT 1"
        return self._db().execute(query, (partition, sha)).fetchone() is not None

    def delete_object(self, partition: int, sha: str) -> int:
        db = self._db()
        query = "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM chunks WHERE partition = ? AND sha = ?"
        held = db.execute(query, (partition, sha)).fetchone()[0]
        self.delete_chunks(partition, sha)
        db.execute("DELETE FROM blobs WHERE partition = ? AND sha = ?", (partition, sha))
        db.execute("DELETE FROM damaged WHERE partition = ? AND sha = ?", (partition, sha))
        return held

    def stored_objects(self) -> list[tuple[int, str]]:
        query = "SELECT DISTINCT partition, sha FROM chunks ORDER BY partition, sha"
        return [(row[0], row[1]) for row in self._db().execute(query)]

    # Below this much free space (pages of 4 KiB) a store keeps it, to be reused.
    RECLAIM_PAGES = 1024

    # Pages the applying thread's connection keeps in memory (SQLite's default is 2 MiB):
    # 10,000 small files touch about eight B-trees each at places spread by their hash,
    # and with the default every batch read and wrote back the same pages again
    # (apply of 30,000 one-piece chunks: 3.3 s of CPU, 2.6 s with this). Only this one
    # connection: each serving thread has its own, and all of them together would not
    # stay within a replica's memory bound.
    APPLY_CACHE_KIB = 32 * 1024

    def expect_bulk_writes(self) -> None:
        if not getattr(self._local, "bulk", False):
            self._db().execute(f"PRAGMA cache_size=-{self.APPLY_CACHE_KIB}")
            self._local.bulk = True

    def reclaim_space(self) -> int:
        db = self._db()
        if db.in_transaction:
            return 0
        free, page = db.execute("PRAGMA freelist_count").fetchone()[0], db.execute("PRAGMA page_size").fetchone()[0]
        if free < self.RECLAIM_PAGES or db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return 0
        db.executescript("PRAGMA incremental_vacuum;")  # executescript: every step (execute takes one page)
        return (free - db.execute("PRAGMA freelist_count").fetchone()[0]) * page
