"""The server's decisions, as pure functions: no Kafka, no disk, no clock.

Every replica applies the same log records in the same order and calls these
with the same inputs, so every replica reaches the same outcome. That is the
whole consistency argument; keep these functions deterministic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

from minigit import identity
from minigit import protocol as p
from minigit.errors import MinigitError
from minigit.protocol import Status
from minigit_server import access


@dataclass(frozen=True)
class Outcome:
    """What a write did. Stored by request id, so a retry gets it back unchanged."""

    status: Status
    head: int | None  # the repository's head after the decision (None: no repository)
    version: int | None = None  # the version this write created, when accepted
    message: str = ""
    request: str = ""  # the request_key of the proposal decided (stored, not sent)
    repo: str = ""  # the repository the request named (stored, not sent): a settle answers for its own only
    # A request id settled as cancelled before any request used it (stored, not sent):
    # the (user, repository) pairs of the settles that cancelled it. Only a request of
    # one of them is refused by it; any other is decided as if nothing were stored.
    cancels: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict:
        doc = asdict(self)
        if self.cancels:
            doc["cancels"] = [list(pair) for pair in self.cancels]
        else:
            del doc["cancels"]  # an outcome of a request: stored as before cancels existed
        return doc

    @classmethod
    def from_json(cls, doc: Mapping) -> Outcome:
        cancels = tuple((user, repo) for user, repo in doc.get("cancels", ()))
        return cls(**{**doc, "status": Status(doc["status"]), "cancels": cancels})


def request_key(proposal: p.Proposal) -> str:
    """What makes two proposals one request (a retry), whoever proposed it and when:
    a request id met again with other contents is another request."""
    fields = {k: v for k, v in proposal.to_dict().items() if k not in access.PROPOSER_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def binding(known: Mapping | None, user: str, repo: str) -> Mapping | None:
    """The stored outcome a request of ``user`` to ``repo`` meets under its request id:
    ``known``, unless it is a cancellation by settles of other users or repositories,
    which binds only theirs (None: decided as if nothing were stored, and its own
    outcome replaces the cancellation). So a settle cancels no one else's request."""
    if known is None or not known.get("cancels"):
        return known
    return known if [user, repo] in [list(pair) for pair in known["cancels"]] else None


def outcome_of(known: Mapping, key: str, head: int | None) -> Outcome:
    """The stored outcome of a request id, for a proposal whose request_key is
    ``key``: its own outcome if it is a retry, else a refusal that stores nothing."""
    outcome = Outcome.from_json(known)
    if outcome.request == key:
        return outcome
    return Outcome(Status.INVALID, head, message="request id already used by another request")


def find_tree_problem(
    tree_size: int | None, read_tree: Callable[[], bytes], blob_size: Callable[[str], int | None]
) -> tuple[Status, str] | None:
    """Why a proposed tree cannot become a version: (status, message), or None.
    A tree too large is refused from its size, before it is read or decoded; a
    file whose size is not its content's size is refused, so that what the
    server later sends about a version is true."""
    if tree_size is None:
        return Status.MISSING_OBJECTS, "the tree was not uploaded completely"
    try:
        p.check_tree_size(tree_size)
        manifest = p.decode_tree(read_tree())
    except MinigitError as error:
        return Status.INVALID, error.message
    sizes = {sha: blob_size(sha) for sha in {entry.sha for entry in manifest.values()}}
    missing = sorted(sha for sha, size in sizes.items() if size is None)
    if missing:
        return Status.MISSING_OBJECTS, f"{len(missing)} object(s) were not uploaded completely"
    for path, entry in sorted(manifest.items()):
        if entry.size != sizes[entry.sha]:
            return Status.INVALID, f"invalid tree: {path!r} says {entry.size} bytes, its content has {sizes[entry.sha]}"
    return None


def decide_create(head: int | None, problem: tuple[Status, str] | None) -> Outcome:
    if head is not None:
        return Outcome(Status.EXISTS, head, message="repository already exists")
    if problem:
        return Outcome(problem[0], None, message=problem[1])
    return Outcome(Status.ACCEPTED, 1, version=1, message="created at version 1")


def not_the_server_s(version: int) -> str:
    """Why a client's version ``version`` is refused: its tree is not the server's."""
    return (
        f"your version {version} is not the server's version {version} "
        "(the repository was deleted and created again?): clone it again"
    )


def decide_push(
    head: int | None,
    head_tree: str | None,
    base: int,
    tree: str,
    problem: tuple[Status, str] | None,
    base_tree: str = "",
    server_base_tree: str | None = None,
) -> Outcome:
    """Accepted only if the push was based on the head ("fetch first" otherwise).
    ``base_tree`` (when set) is the tree the client holds as version ``base``, and
    ``server_base_tree`` the tree of the server's version ``base`` (None: there is
    none): another one means the repository was deleted and created again since
    the client got it, and the push would mix two histories."""
    if head is None:
        return Outcome(Status.NOT_FOUND, None, message="no such repository")
    if base_tree and base <= head and base_tree != server_base_tree:
        return Outcome(Status.INVALID, head, message=not_the_server_s(base))
    if base != head:
        return Outcome(Status.REJECTED, head, message=f"version mismatch: head is {head}, push based on {base}")
    if problem:
        return Outcome(problem[0], head, message=problem[1])
    if tree == head_tree:
        return Outcome(Status.UP_TO_DATE, head, message="nothing to push")
    return Outcome(Status.ACCEPTED, head + 1, version=head + 1, message=f"accepted as version {head + 1}")


@dataclass(frozen=True)
class PullDecision:
    status: Status  # OK (send version ``version``), UP_TO_DATE, NOT_FOUND, INVALID
    head: int | None
    message: str = ""
    version: int | None = None  # the version to send (OK only)


def decide_pull(
    head: int | None, version: int, target: int = 0, base_tree: str = "", version_tree: str | None = None
) -> PullDecision:
    """What a pull from ``version`` to ``target`` (0: the head) gets. ``version_tree``
    is the tree of the server's version ``version``: a client that names another
    (``base_tree``) holds a version of a repository deleted and created again since."""
    if head is None:
        return PullDecision(Status.NOT_FOUND, None, "no such repository")
    if target > head:
        return PullDecision(Status.INVALID, head, f"version {target} does not exist: the head is {head}")
    if version > head:
        return PullDecision(
            Status.INVALID, head, f"you are at version {version} but the server's head is {head}: clone again"
        )
    if version and base_tree and base_tree != version_tree:
        return PullDecision(Status.INVALID, head, not_the_server_s(version))
    if target:  # asked for a version: its tree is sent even if the client has it (to read it)
        return PullDecision(Status.OK, head, f"version {target} (head is version {head})", target)
    if version == head:
        return PullDecision(Status.UP_TO_DATE, head, "already up to date")
    return PullDecision(Status.OK, head, f"head is version {head}", head)


def blobs_to_send(
    old: Mapping[str, p.FileEntry], new: Mapping[str, p.FileEntry], lost: Iterable[str] = ()
) -> list[tuple[str, int]]:
    """The blobs of ``new`` that a holder of ``old`` lacks (including those it
    says it lost since), once each, in a stable order."""
    have = {entry.sha for entry in old.values()} - set(lost)
    wanted = {entry.sha: entry.size for entry in new.values() if entry.sha not in have}
    return sorted(wanted.items())


# ---------------------------------------------------------------- history


def changes_between(old: Mapping[str, p.FileEntry], new: Mapping[str, p.FileEntry]) -> list[p.FileChange]:
    """What a version changed, by path: added, modified (content or mode) and
    deleted files, each with its size and mode in ``new`` (in ``old`` if deleted)."""
    found = []
    for path in sorted(old.keys() | new.keys()):
        before, after = old.get(path), new.get(path)
        if before == after:
            continue
        if after is None:
            found.append(p.FileChange(path=path, kind=p.ChangeKind.DELETED, size=before.size, mode=before.mode))
        else:
            kind = p.ChangeKind.ADDED if before is None else p.ChangeKind.MODIFIED
            found.append(p.FileChange(path=path, kind=kind, size=after.size, mode=after.mode))
    return found


def changes_between_trees(old: frozenset[bytes], new: frozenset[bytes]) -> list[p.FileChange]:
    """``changes_between`` two trees given by their entries (``protocol.tree_entries``):
    an entry in both is the same file unchanged, so only the entries in one of them
    are decoded. The cost is the entries that differ, not the files."""
    return changes_between(p.decode_tree_entries(old - new), p.decode_tree_entries(new - old))


def touches(changes: Iterable[p.FileChange], paths: Iterable[str]) -> bool:
    """Whether a change is to a file equal to or under one of ``paths`` (none: any).
    Each changed path is looked up with its parent directories, so the cost is the
    changes' depth, not changes times paths."""
    wanted = set(paths)
    if not wanted:
        return True
    for change in changes:
        parts = change.path.split("/")
        if any("/".join(parts[:depth]) in wanted for depth in range(1, len(parts) + 1)):
            return True
    return False


def listed_changes(changes: list[p.FileChange], cap: int = p.MAX_LOG_CHANGES) -> tuple[list[p.FileChange], int]:
    """The changes a log entry lists, and how many it leaves off."""
    return changes[:cap], max(0, len(changes) - cap)


def entry_bytes(entry: p.LogEntry) -> int:
    """What an entry adds to a log reply, as its JSON is written (escapes included)."""
    return len(json.dumps(entry.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()) + 1


def fit_log(entries: Iterable[p.LogEntry], limit: int, max_bytes: int) -> list[p.LogEntry]:
    """The newest entries (``entries`` come newest first) that fit one reply: at most
    ``limit``, at most ``max_bytes`` of JSON. Older entries are dropped first; the
    newest alone too large keeps only the changes that fit (the rest counted in
    ``changes_more``), so a log never answers nothing while there are versions."""
    kept: list[p.LogEntry] = []
    size = 0
    for entry in entries:
        grown = size + entry_bytes(entry)
        if grown > max_bytes:
            if kept:
                break
            entry = shrink_entry(entry, max_bytes)
            grown = entry_bytes(entry)
            if grown > max_bytes:
                break
        kept.append(entry)
        size = grown
        if len(kept) == limit:  # not one more: each entry may cost reading a tree
            break
    return kept


def shrink_entry(entry: p.LogEntry, max_bytes: int) -> p.LogEntry:
    """``entry`` with as many of its changes as fit ``max_bytes`` (the rest counted)."""
    bare = dataclasses.replace(entry, changes=[], changes_more=len(entry.changes) + entry.changes_more)
    room = max_bytes - entry_bytes(bare) - 16  # 16: the digits changes_more may lose or gain
    listed = []
    for change in entry.changes:
        room -= len(json.dumps(change.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()) + 1
        if room < 0:
            break
        listed.append(change)
    return dataclasses.replace(entry, changes=listed, changes_more=bare.changes_more - len(listed))


def repos_page(
    user: str, candidates: Iterable[tuple[str, access.RepoAccess]], limit: int
) -> tuple[list[tuple[str, str]], bool]:
    """A page of the repositories ``user`` may read, from ``candidates`` (by name, in
    order): (name, access) of at most ``limit``, and whether more follow. Those the
    user may not read are left out, so a listing tells nothing of them."""
    page: list[tuple[str, str]] = []
    for name, repo in candidates:
        word = access.listed_access(user, repo)
        if word is None:
            continue
        if len(page) == limit:
            return page, True
        page.append((name, word))
    return page, False


# ---------------------------------------------------------------- outcomes and deletion

NEVER_APPLIED = "never applied: it never will be now"


def decide_settle(
    known: Mapping | None,
    repo: str,
    of_request: str,
    tree: str,
    head: int | None,
    tree_of: Callable[[int], str | None],
    *,
    user: str,
) -> tuple[Outcome, Outcome | None]:
    """What became of the write ``of_request`` (that proposed ``tree`` to ``repo``), asked
    by ``user``: the settle's own outcome, and the outcome to store for ``of_request``
    now (None: nothing changes). A write nothing was stored for is cancelled: stored
    so, it changes nothing when it arrives later, if it is ``user``'s to ``repo``. A
    cancellation by others' settles binds only their requests: ``user`` is added to it
    (it stays theirs too). ``tree_of`` gives a version's tree."""
    if known is not None and known.get("cancels"):
        stored = Outcome.from_json(known)
        cancelled = Outcome(Status.CANCELLED, head, message=NEVER_APPLIED)
        if (user, repo) in stored.cancels:
            return cancelled, None
        return cancelled, dataclasses.replace(stored, cancels=(*stored.cancels, (user, repo)))
    if known is None:
        cancelled = Outcome(Status.CANCELLED, head, message=NEVER_APPLIED, repo=repo)
        return cancelled, dataclasses.replace(cancelled, cancels=((user, repo),))
    stored = Outcome.from_json(known)
    if stored.repo != repo:
        return Outcome(Status.INVALID, head, message=f"request {of_request} was not a request to {repo}"), None
    if stored.status == Status.ACCEPTED:
        if stored.version is None or tree_of(stored.version) != tree:
            # what a retry of that write would get: another request took its id
            return Outcome(Status.INVALID, head, message="request id already used by another request"), None
        return Outcome(Status.ACCEPTED, head, version=stored.version, message=stored.message), None
    if stored.status == Status.CANCELLED:
        return Outcome(Status.CANCELLED, head, message=NEVER_APPLIED), None
    return Outcome(stored.status, stored.head, message=stored.message), None


def decide_delete(head: int | None, repo: str) -> Outcome:
    if head is None:
        return Outcome(Status.NOT_FOUND, None, message="no such repository")
    return Outcome(Status.ACCEPTED, None, message=f"{repo} deleted (it was at version {head})")


# ---------------------------------------------------------------- access and accounts


def decide_share(head: int | None, owner: str, members: Mapping[str, str], proposal: p.ShareProposal) -> Outcome:
    if head is None:
        return Outcome(Status.NOT_FOUND, None, message="no such repository")
    if proposal.member == owner:
        return Outcome(Status.INVALID, head, message=f"{owner} owns {proposal.repo}: an owner's access cannot change")
    if members.get(proposal.member, p.Access.NONE) == proposal.level:
        return Outcome(Status.UP_TO_DATE, head, message=f"{proposal.member} already has {proposal.level} access")
    if proposal.level == p.Access.NONE:
        return Outcome(Status.ACCEPTED, head, message=f"{proposal.member} no longer has access to {proposal.repo}")
    return Outcome(
        Status.ACCEPTED, head, message=f"{proposal.member} now has {proposal.level} access to {proposal.repo}"
    )


def decide_visibility(head: int | None, visibility: str, proposal: p.VisibilityProposal) -> Outcome:
    if head is None:
        return Outcome(Status.NOT_FOUND, None, message="no such repository")
    if visibility == proposal.visibility:
        return Outcome(Status.UP_TO_DATE, head, message=f"{proposal.repo} is already {visibility}")
    return Outcome(Status.ACCEPTED, head, message=f"{proposal.repo} is now {proposal.visibility}")


def is_public_key(text: str) -> bool:
    try:
        identity.parse_public_key(text)
    except MinigitError:
        return False
    return True


def decide_register(account: access.Account | None, key: str) -> Outcome:
    """First come claims a name; the same key again is a no-op; a removed name
    stays taken (its permissions would go to whoever took it)."""
    if not is_public_key(key):
        return Outcome(Status.INVALID, None, message="not an Ed25519 public key")
    if account is None:
        return Outcome(Status.ACCEPTED, None, message="registered")
    if account.removed:
        return Outcome(Status.DENIED, None, message=f"the name {account.name} was removed by an operator")
    if account.key == key:
        return Outcome(Status.UP_TO_DATE, None, message="already registered with this key")
    return Outcome(
        Status.DENIED, None, message=f"the name {account.name} is taken by another key; choose another with --user"
    )


def decide_rotate(account: access.Account | None, new_key: str) -> Outcome:
    if not is_public_key(new_key):
        return Outcome(Status.INVALID, None, message="not an Ed25519 public key")
    if account is None or account.removed:
        return Outcome(Status.NOT_FOUND, None, message="no such user")
    if account.key == new_key:
        return Outcome(Status.UP_TO_DATE, None, message="that key is already the registered one")
    return Outcome(Status.ACCEPTED, None, message="key replaced")


def decide_admin(account: access.Account | None, op: p.AdminOp, key: str) -> Outcome:
    if op == p.AdminOp.ADD:
        if not is_public_key(key):
            return Outcome(Status.INVALID, None, message="not an Ed25519 public key")
        if account is not None and not account.removed and account.key == key:
            return Outcome(Status.UP_TO_DATE, None, message="already registered with this key")
        return Outcome(Status.ACCEPTED, None, message="registered" if account is None else "key replaced")
    if account is None:
        return Outcome(Status.NOT_FOUND, None, message="no such user")
    if account.removed:
        return Outcome(Status.UP_TO_DATE, None, message="already removed")
    return Outcome(Status.ACCEPTED, None, message="removed")
