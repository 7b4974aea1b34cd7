"""Applying the replication log to a store: the same records, the same order,
the same state on every replica. No Kafka here: the replica's apply loop feeds
records in; tests feed them in directly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from minigit import codec
from minigit import protocol as p
from minigit.errors import MinigitError
from minigit.protocol import Status
from minigit_server import access, collection, decisions
from minigit_server.store import RepoState, Store, VersionInfo

log = logging.getLogger("minigit.apply")


@dataclass(frozen=True)
class LogRecord:
    partition: int
    offset: int
    value: bytes


@dataclass(frozen=True)
class Authority:
    """What a write's proof of authorship is checked against, the same on every
    replica of a service: its namespace (signed into every request) and the
    public key of the service (``ed25519:``), which attests users' keys and signs
    operators' account changes."""

    namespace: str
    server_key: str


def apply_records(
    store: Store, records: Iterable[LogRecord], partitions: int, authority: Authority
) -> list[tuple[LogRecord, p.Message | None]]:
    """Apply a batch in one transaction; the offsets move with the state they made.

    ``partitions`` is the log's partition count: a record whose repository
    belongs to another partition is skipped. Records at or below the stored
    offset of their partition were applied before (a redelivery after a
    restart) and are skipped too.
    """
    done: list[tuple[LogRecord, p.Message | None]] = []
    store.expect_bulk_writes()
    with store.transaction():
        offsets = store.applied_offsets()
        for record in records:
            if record.offset < offsets.get(record.partition, 0):
                continue
            done.append((record, apply_record(store, record, partitions, authority)))
            offsets[record.partition] = record.offset + 1
            store.set_applied(record.partition, record.offset + 1)
    store.reclaim_space()  # what collection deleted, given back to the disk
    return done


def apply_record(store: Store, record: LogRecord, partitions: int, authority: Authority) -> p.Message | None:
    """Apply one record. A record that does not parse, or that sits outside its
    repository's partition, is skipped the same way on every replica (it changes
    nothing), so it cannot make replicas diverge: Kafka orders a partition, not
    the log, so only a repository's own partition may decide its history."""
    try:
        message = p.parse_message(record.value, allowed=p.LOG_RECORD_TYPES)
    except MinigitError as error:
        log.warning("skipped log record %s@%s: %s", record.partition, record.offset, error.message)
        return None
    if (home := p.log_partition(message.repo, partitions)) != record.partition:
        log.warning(
            "skipped log record %s@%s: repository %s belongs to partition %s",
            record.partition,
            record.offset,
            message.repo,
            home,
        )
        return None
    if isinstance(message, p.Chunk):
        apply_chunk(store, record.partition, message, record.offset)
    elif isinstance(message, p.Proposal):
        apply_proposal(store, message, record, authority)
    return message


def apply_proposal(
    store: Store, proposal: p.Proposal, record: LogRecord, authority: Authority
) -> decisions.Outcome | None:
    """Decide a write and store its outcome under its request id. A retry (the same
    request id and contents) gets its first outcome back; a proposal whose proof of
    authorship does not hold changes nothing and stores nothing, so a forged record
    cannot use up someone else's request id. A cancellation stored by settles of other
    users or repositories binds only theirs: this proposal is decided as if it were not
    there, and its outcome replaces it."""
    repo = store.get_repo(proposal.repo)
    key = decisions.request_key(proposal)
    found = store.get_outcome(record.partition, proposal.request_id)
    if (known := decisions.binding(found, proposal.user, proposal.repo)) is not None:
        collect_garbage(store, proposal, record)  # a retry: what it uploaded again is not needed
        return decisions.outcome_of(known, key, repo.head if repo else None)
    account = store.get_account(proposal.user) if isinstance(proposal, p.RotateProposal) else None
    if (why := access.check_proposal(proposal, authority.namespace, authority.server_key, account)) is not None:
        log.warning(
            "skipped log record %s@%s: %s of %s by %s: %s",
            record.partition,
            record.offset,
            proposal.action,
            proposal.repo,
            proposal.user,
            why,
        )
        return None
    outcome = APPLIERS[type(proposal)](store, proposal, record)
    stored = dataclasses.replace(outcome, request=key, repo=proposal.repo)
    if found is None:
        store.put_outcome(record.partition, proposal.request_id, stored.to_json())
    else:
        store.replace_outcome(record.partition, proposal.request_id, stored.to_json())
    collect_garbage(store, proposal, record)
    return outcome


def collect_garbage(store: Store, proposal: p.Proposal, record: LogRecord) -> int:
    """After a proposal (minigit_server.collection): its request's uploads are no
    longer pending, the partition's log time moves to the proposal's, and uploads
    whose proposal never came in time expire; objects left with nothing pending and
    nothing referring to them are deleted. From the log only: every replica deletes
    the same objects at the same record. The bytes deleted."""
    partition = record.partition
    released = store.release_uploads(partition, proposal.request_id)
    clock = store.advance_clock(partition, proposal.time_ms)
    expired = store.expire_uploads(partition, collection.expiry_floors(clock, record.offset, collection.DEFAULT_BOUNDS))
    return collect(store, partition, [*released, *expired])


def collect(store: Store, partition: int, candidates: list[str]) -> int:
    doomed = collection.collectable(
        candidates, lambda sha: store.is_pending(partition, sha), lambda sha: store.is_referenced(partition, sha)
    )
    freed = sum(store.delete_object(partition, sha) for sha in doomed)
    if doomed:
        log.info("collected %d unreferenced objects (%d bytes) of log partition %d", len(doomed), freed, partition)
    return freed


def refer(store: Store, partition: int, repo: str, tree: str) -> None:
    """A version of ``repo`` now refers to ``tree`` and every blob it names."""
    manifest = p.decode_tree(read_sound_blob(store, partition, tree))
    store.add_references(partition, repo, collection.references(tree, manifest))


def apply_chunk(store: Store, partition: int, chunk: p.Chunk, offset: int = 0) -> None:
    """Store a piece (the first copy of each), complete its blob when the last one
    is in, and prove that an upload to the chunk's repository carried it: a tree
    may name only content uploaded to its own repository (``check_tree``), never
    content it merely guessed the hash of from another repository's."""
    try:
        piece = chunk.piece()
    except MinigitError:
        return
    known = store.get_outcome(partition, chunk.request_id)
    if known is not None and not known.get("cancels"):
        # A late copy of a decided request's upload (a hedged resend the second owner
        # copied after the first's proposal): no proposal can use it any more.
        return
    store.note_upload(partition, chunk.sha, chunk.request_id, offset)  # pending until its proposal
    complete = store.blob_size(partition, chunk.sha) is not None
    # (a piece just stored is the stored piece: no need to read it back and compare)
    stored_now = not complete and store.put_chunk(partition, chunk.sha, piece)
    if stored_now or carries_stored_piece(store, partition, chunk.sha, piece):
        store.prove_piece(partition, chunk.repo, chunk.sha, piece.index)
    if complete:
        return
    if stored_now and chunk.count == 1:
        # a one-piece blob just stored (a small file: most of them) is all there, and
        # is checked from the piece in hand, without counting or reading its pieces
        complete_blob(store, partition, chunk.sha, 1, [piece])
    elif store.count_present_chunks(partition, chunk.sha, chunk.count) == chunk.count:
        complete_blob(store, partition, chunk.sha, chunk.count)


def carries_stored_piece(store: Store, partition: int, sha: str, piece: codec.Piece) -> bool:
    """Whether ``piece`` holds the bytes stored for its place (however encoded)."""
    stored = store.get_chunk(partition, sha, piece.index)
    if stored is None:
        return False
    if (stored.encoding, stored.payload) == (piece.encoding, piece.payload):
        return True
    try:
        return codec.decode_piece(stored) == codec.decode_piece(piece)
    except MinigitError:
        return False


def complete_blob(store: Store, partition: int, sha: str, count: int, pieces: list[codec.Piece] | None = None) -> None:
    """All pieces are here (``pieces``, or read from the store): keep the blob only
    if its content hashes to its name."""
    assembler = codec.Assembler(sha, count)
    try:
        for piece in store.iter_chunks(partition, sha, count) if pieces is None else pieces:
            assembler.add(piece)
        whole = assembler.complete
    except MinigitError:
        whole = False
    if whole:
        store.put_blob(partition, sha, assembler.size, count)
    else:
        # Bad pieces (or pieces of two different uploads that don't fit): drop
        # them all, so that a clean upload can complete the blob later.
        store.delete_chunks(partition, sha)


class StoreDamaged(Exception):
    """A stored blob that a decision reads does not match its name: this replica's
    store is damaged. Deciding from it would decide differently from every other
    replica ("invalid tree" for a tree that is sound in the log), so nothing is
    applied; the replica repairs the blob from the log first (Replica.apply_loop)."""

    def __init__(self, partition: int, sha: str, problem: str) -> None:
        super().__init__(f"stored object {sha} (log partition {partition}) is damaged: {problem}")
        self.partition, self.sha, self.problem = partition, sha, problem


def check_tree(store: Store, partition: int, tree: str, repo: str) -> tuple[Status, str] | None:
    """Why ``tree`` cannot be ``repo``'s next version. Only blobs uploaded to
    ``repo`` count: content stored for another repository of the partition stays
    theirs (else a tree naming a guessed hash would confirm it, and read it)."""

    def uploaded_size(sha: str) -> int | None:
        size = recovered_blob_size(store, partition, sha)
        if size is None or store.count_proven(partition, repo, sha) < store.blob_chunk_count(partition, sha):
            return None
        return size

    return decisions.find_tree_problem(
        uploaded_size(tree), lambda: read_sound_blob(store, partition, tree), uploaded_size
    )


def read_sound_blob(store: Store, partition: int, sha: str) -> bytes:
    """A stored blob (its row is there) for a decision; StoreDamaged if its stored
    pieces do not make it: the log had it whole, or it would have no row."""
    try:
        data = store.read_blob(partition, sha)
    except MinigitError as error:
        raise StoreDamaged(partition, sha, error.message) from None
    if data is None:
        raise StoreDamaged(partition, sha, "its row is there, its pieces are not")
    return data


# More pieces than any blob can have: "all the pieces stored", whatever their count.
_ANY_COUNT = codec.count_chunks(p.MAX_BLOB_BYTES) + 1


def recovered_blob_size(store: Store, partition: int, sha: str) -> int | None:
    """A blob's size, for a decision. A blob whose row a damaged store lost while
    its pieces are all still there (they hash to its name) is completed again from
    them, as applying its last piece did: otherwise this replica alone would decide
    "missing objects" where every other decides "accepted", and diverge for good."""
    size = store.blob_size(partition, sha)
    if size is not None:
        return size
    count = 0
    for piece in store.iter_chunks(partition, sha, _ANY_COUNT):
        if piece.index != count:
            return None  # a gap: not all uploaded (the usual case), nothing to recover
        count += 1
    if count == 0:
        return None
    assembler = codec.Assembler(sha, count)
    try:
        for piece in store.iter_chunks(partition, sha, count):
            assembler.add(piece)
    except MinigitError:
        return None  # pieces of an upload still under way, or damaged ones: not this blob
    if not assembler.complete:
        return None
    log.error("blob %s (log partition %d) had lost its row; completed again from its stored pieces", sha, partition)
    store.put_blob(partition, sha, assembler.size, count)
    return assembler.size


def repo_access(store: Store, repo: RepoState) -> access.RepoAccess:
    members = {user: p.Access(level) for user, level in store.get_members(repo.name).items()}
    return access.RepoAccess(repo.owner, p.Visibility(repo.visibility), members)


def permission_refused(store: Store, proposal: p.Proposal, repo: RepoState | None) -> decisions.Outcome | None:
    if repo is None:
        return None
    refusal = access.check_permission(proposal.user, proposal.action, proposal.repo, repo_access(store, repo))
    return None if refusal is None else decisions.Outcome(refusal.status, repo.head, message=refusal.text)


def apply_create(store: Store, proposal: p.CreateProposal, record: LogRecord) -> decisions.Outcome:
    repo = store.get_repo(proposal.repo)
    outcome = decisions.decide_create(
        repo.head if repo else None, check_tree(store, record.partition, proposal.tree, proposal.repo)
    )
    if outcome.status == Status.ACCEPTED:
        created = RepoState(proposal.repo, 1, record.partition, record.offset, proposal.user, proposal.visibility)
        store.put_repo(created)
        store.add_version(proposal.repo, version_of(proposal, 1))
        refer(store, record.partition, proposal.repo, proposal.tree)
    return outcome


def apply_push(store: Store, proposal: p.PushProposal, record: LogRecord) -> decisions.Outcome:
    repo = store.get_repo(proposal.repo)
    if (refused := permission_refused(store, proposal, repo)) is not None:
        return refused
    head_info = store.get_version(repo.name, repo.head) if repo else None
    base_info = store.get_version(repo.name, proposal.base) if repo and proposal.base_tree else None
    problem = (
        check_tree(store, record.partition, proposal.tree, proposal.repo)
        if repo and proposal.base == repo.head
        else None
    )
    outcome = decisions.decide_push(
        repo.head if repo else None,
        head_info.tree if head_info else None,
        proposal.base,
        proposal.tree,
        problem,
        proposal.base_tree,
        base_info.tree if base_info else None,
    )
    if outcome.status == Status.ACCEPTED:
        store.put_repo(dataclasses.replace(repo, head=outcome.version, changed_at=record.offset))
        store.add_version(proposal.repo, version_of(proposal, outcome.version))
        refer(store, record.partition, proposal.repo, proposal.tree)
    return outcome


def apply_share(store: Store, proposal: p.ShareProposal, record: LogRecord) -> decisions.Outcome:
    repo = store.get_repo(proposal.repo)
    if (refused := permission_refused(store, proposal, repo)) is not None:
        return refused
    members = store.get_members(repo.name) if repo else {}
    outcome = decisions.decide_share(repo.head if repo else None, repo.owner if repo else "", members, proposal)
    if outcome.status == Status.ACCEPTED:
        changed = access.shared_members({u: p.Access(v) for u, v in members.items()}, proposal.member, proposal.level)
        store.set_members(repo.name, {user: str(level) for user, level in changed.items()})
        store.put_repo(dataclasses.replace(repo, changed_at=record.offset))
    return outcome


def apply_visibility(store: Store, proposal: p.VisibilityProposal, record: LogRecord) -> decisions.Outcome:
    repo = store.get_repo(proposal.repo)
    if (refused := permission_refused(store, proposal, repo)) is not None:
        return refused
    outcome = decisions.decide_visibility(repo.head if repo else None, repo.visibility if repo else "", proposal)
    if outcome.status == Status.ACCEPTED:
        store.put_repo(dataclasses.replace(repo, visibility=str(proposal.visibility), changed_at=record.offset))
    return outcome


def apply_register(store: Store, proposal: p.RegisterProposal, record: LogRecord) -> decisions.Outcome:
    outcome = decisions.decide_register(store.get_account(proposal.user), proposal.public_key)
    if outcome.status == Status.ACCEPTED:
        store.put_account(access.Account(proposal.user, proposal.public_key, False, record.offset))
    return outcome


def apply_rotate(store: Store, proposal: p.RotateProposal, record: LogRecord) -> decisions.Outcome:
    outcome = decisions.decide_rotate(store.get_account(proposal.user), proposal.new_key)
    if outcome.status == Status.ACCEPTED:
        store.put_account(access.Account(proposal.user, proposal.new_key, False, record.offset))
    return outcome


def apply_admin(store: Store, proposal: p.AdminProposal, record: LogRecord) -> decisions.Outcome:
    outcome = decisions.decide_admin(store.get_account(proposal.user), proposal.op, proposal.public_key)
    if outcome.status == Status.ACCEPTED:
        removed = proposal.op == p.AdminOp.REMOVE
        store.put_account(access.Account(proposal.user, "" if removed else proposal.public_key, removed, record.offset))
    return outcome


def apply_settle(store: Store, proposal: p.SettleProposal, record: LogRecord) -> decisions.Outcome:
    """Settle what became of the write ``of_request``: its outcome if one is stored,
    else it is stored as cancelled (under this settle's request key) for the settle's
    user and repository, so that their write, arriving later, is refused as "request
    id already used". A request of anyone else under that id is not cancelled by it."""
    repo = store.get_repo(proposal.repo)
    if (refused := permission_refused(store, proposal, repo)) is not None:
        return refused

    def tree_of(version: int) -> str | None:
        info = store.get_version(proposal.repo, version)
        return info.tree if info else None

    known = store.get_outcome(record.partition, proposal.of_request)
    outcome, cancel = decisions.decide_settle(
        known,
        proposal.repo,
        proposal.of_request,
        proposal.tree,
        repo.head if repo else None,
        tree_of,
        user=proposal.user,
    )
    if cancel is not None and known is None:
        stored = dataclasses.replace(cancel, request=decisions.request_key(proposal), repo=proposal.repo)
        store.put_outcome(record.partition, proposal.of_request, stored.to_json())
    elif cancel is not None:  # a cancellation by others' settles: now this settle's user and repository's too
        store.replace_outcome(record.partition, proposal.of_request, cancel.to_json())
    return outcome


def apply_delete(store: Store, proposal: p.DeleteProposal, record: LogRecord) -> decisions.Outcome:
    """An operator's deletion: the repository is forgotten (outcomes stay), and its
    name may be created again, from version 1, with its content uploaded again."""
    repo = store.get_repo(proposal.repo)
    outcome = decisions.decide_delete(repo.head if repo else None, proposal.repo)
    if outcome.status == Status.ACCEPTED:
        store.delete_repo(proposal.repo)
        # its content goes with it, unless another version (or a pending upload) needs it
        dropped = store.drop_references(proposal.repo)
        collect(store, record.partition, [sha for partition, sha in dropped if partition == record.partition])
    return outcome


APPLIERS = {
    p.CreateProposal: apply_create,
    p.PushProposal: apply_push,
    p.ShareProposal: apply_share,
    p.VisibilityProposal: apply_visibility,
    p.RegisterProposal: apply_register,
    p.RotateProposal: apply_rotate,
    p.AdminProposal: apply_admin,
    p.SettleProposal: apply_settle,
    p.DeleteProposal: apply_delete,
}


def version_of(proposal: p.TreeProposal, version: int) -> VersionInfo:
    """The version a write made; its author is the user whose signature checked."""
    return VersionInfo(
        version=version,
        tree=proposal.tree,
        author=proposal.user,
        message=proposal.message,
        time_ms=proposal.time_ms,
        request_id=proposal.request_id,
        signed=proposal.signed.to_text() if proposal.signed else None,
    )
