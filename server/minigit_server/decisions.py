"""The server's decisions, as pure functions: no Kafka, no disk, no clock.

Every replica applies the same log records in the same order and calls these
with the same inputs, so every replica reaches the same outcome. That is the
whole consistency argument; keep these functions deterministic.
"""

from __future__ import annotations

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

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping) -> Outcome:
        return cls(**{**doc, "status": Status(doc["status"])})


def request_key(proposal: p.Proposal) -> str:
    """What makes two proposals one request (a retry), whoever proposed it and when:
    a request id met again with other contents is another request."""
    fields = {k: v for k, v in proposal.to_dict().items() if k not in access.PROPOSER_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


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


def decide_push(
    head: int | None,
    head_tree: str | None,
    base: int,
    tree: str,
    problem: tuple[Status, str] | None,
) -> Outcome:
    """Accepted only if the push was based on the head ("fetch first" otherwise)."""
    if head is None:
        return Outcome(Status.NOT_FOUND, None, message="no such repository")
    if base != head:
        return Outcome(Status.REJECTED, head, message=f"version mismatch: head is {head}, push based on {base}")
    if problem:
        return Outcome(problem[0], head, message=problem[1])
    if tree == head_tree:
        return Outcome(Status.UP_TO_DATE, head, message="nothing to push")
    return Outcome(Status.ACCEPTED, head + 1, version=head + 1, message=f"accepted as version {head + 1}")


@dataclass(frozen=True)
class PullDecision:
    status: Status  # OK (send the head), UP_TO_DATE, NOT_FOUND, INVALID
    head: int | None
    message: str = ""


def decide_pull(head: int | None, version: int) -> PullDecision:
    if head is None:
        return PullDecision(Status.NOT_FOUND, None, "no such repository")
    if version == head:
        return PullDecision(Status.UP_TO_DATE, head, "already up to date")
    if version > head:
        return PullDecision(
            Status.INVALID, head, f"you are at version {version} but the server's head is {head}: clone again"
        )
    return PullDecision(Status.OK, head, f"head is version {head}")


def blobs_to_send(
    old: Mapping[str, p.FileEntry], new: Mapping[str, p.FileEntry], lost: Iterable[str] = ()
) -> list[tuple[str, int]]:
    """The blobs of ``new`` that a holder of ``old`` lacks (including those it
    says it lost since), once each, in a stable order."""
    have = {entry.sha for entry in old.values()} - set(lost)
    wanted = {entry.sha: entry.size for entry in new.values() if entry.sha not in have}
    return sorted(wanted.items())


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
