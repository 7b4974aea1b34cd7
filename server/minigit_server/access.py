"""Who may do what: authentication of requests and of the writes in the log, and
permissions on repositories. Pure functions (no Kafka, no disk, no clock): the
replica that serves a read calls them with its clock, every replica applying a
write calls them with what the log holds, so all decide alike.

Identity lives in the log: a user's key is registered by a write in the log
partition of the user's name (``RegisterProposal``), and changed there
(``RotateProposal``, ``AdminProposal``). A write to a repository in another
partition cannot read that partition deterministically (Kafka orders each
partition alone), so it carries the key it was checked against and the
server's attestation of it (``SignedWrite``): every replica checks both
signatures from the record alone. Permissions live in the repository's own
partition (owner, visibility, members), so they are decided in order with the
writes they govern.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from minigit import identity
from minigit import protocol as p
from minigit.errors import MinigitError
from minigit.protocol import Access, Status, Visibility

# A request signed longer ago (or further ahead) than this is refused: a replay,
# or a clock far off. Checked by the serving replica against its clock, and at
# apply time against the time the proposer stamped (the same on every replica).
REPLAY_WINDOW_MS = 5 * 60 * 1000

# What each action needs on the repository it names.
REQUIRED_ACCESS: dict[str, Access] = {
    "ping": Access.NONE,
    "pull": Access.READ,
    "log": Access.READ,
    "push": Access.WRITE,
    "share": Access.ADMIN,
    "visibility": Access.ADMIN,
    "outcome": Access.WRITE,  # settling a push may cancel it: only who may push
}
_RANK = {Access.NONE: 0, Access.READ: 1, Access.WRITE: 2, Access.ADMIN: 3}
_LEVEL_WORDS = {Access.NONE: "no access", Access.READ: "read only", Access.WRITE: "read and write"}
_ACTION_WORDS = {
    "pull": "read",
    "log": "read",
    "push": "push to",
    "share": "share",
    "visibility": "change",
    "outcome": "settle a push to",
}


@dataclass(frozen=True)
class Account:
    """A name as the log made it: its current key, or removed by an operator
    (a removed name stays taken: whoever registers it next would inherit the
    permissions granted to that name)."""

    name: str
    key: str
    removed: bool = False
    since: int = 0  # log offset (in the name's partition) of the last change


@dataclass(frozen=True)
class RepoAccess:
    owner: str
    visibility: Visibility
    members: Mapping[str, Access]


@dataclass(frozen=True)
class Refusal:
    status: Status  # UNAUTHENTICATED or DENIED
    message: str
    hint: str = ""

    @property
    def text(self) -> str:
        """What the reply says: the refusal, then what to do about it."""
        return f"{self.message}; {self.hint}" if self.hint else self.message


class Refused(Exception):
    """A request that is answered with a refusal."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


UNSIGNED = Refusal(Status.UNAUTHENTICATED, "the request is not signed", "upgrade minigit: requests are signed")
REGISTRATION_CLOSED = Refusal(
    Status.DENIED,
    "registration is closed on this server",
    "ask an operator to add you: minigit-server users add NAME PUBLIC-KEY",
)


# ---------------------------------------------------------------- permissions


def access_of(user: str, repo: RepoAccess) -> Access:
    """The level ``user`` has: the owner is admin; a member has what was shared;
    anyone else reads a public repository and nothing of a private one."""
    if user == repo.owner:
        return Access.ADMIN
    shared = repo.members.get(user, Access.NONE)
    if repo.visibility == Visibility.PUBLIC and _RANK[shared] < _RANK[Access.READ]:
        return Access.READ
    return shared


def listed_access(user: str, repo: RepoAccess) -> str | None:
    """How a repository listing names ``user``'s access: ``owner``, the level shared
    (``admin``, ``write``, ``read``), ``public`` (readable by everyone, without
    membership); None: it may not read it, and the listing leaves it out."""
    if user == repo.owner:
        return "owner"
    shared = repo.members.get(user, Access.NONE)
    if shared != Access.NONE:
        return str(shared)
    return "public" if repo.visibility == Visibility.PUBLIC else None


def check_permission(user: str, action: str, repo_name: str, repo: RepoAccess | None) -> Refusal | None:
    """Why ``user`` may not do ``action`` on ``repo_name``, or None. A repository
    that does not exist is not a permission question (its own answer says so)."""
    needed = REQUIRED_ACCESS.get(action, Access.ADMIN)
    if repo is None or needed == Access.NONE:
        return None
    has = access_of(user, repo)
    if _RANK[has] >= _RANK[needed]:
        return None
    if has == Access.NONE and repo.visibility == Visibility.PRIVATE:
        # no owner named to those who may not read it (its existence shows: names are global)
        return Refusal(
            Status.DENIED,
            f"permission denied: {user} may not {_ACTION_WORDS.get(action, action)} {repo_name} (private)",
            "ask its owner to share it with you",
        )
    return Refusal(
        Status.DENIED,
        f"permission denied: {user} may not {_ACTION_WORDS.get(action, action)} {repo_name} ({_LEVEL_WORDS[has]})",
        f"ask its owner ({repo.owner})",
    )


def shared_members(members: Mapping[str, Access], member: str, level: Access) -> dict[str, Access]:
    """The members after sharing ``level`` with ``member`` (``none`` removes them)."""
    changed = dict(members)
    changed.pop(member, None)
    if level != Access.NONE:
        changed[member] = level
    return changed


# ---------------------------------------------------------------- authentication


def check_signed(request: p.Request, account: Account | None, namespace: str) -> Refusal | None:
    """Whether ``request`` is signed by the registered key of the user it names."""
    if not request.signature:
        return UNSIGNED
    if account is None:
        return Refusal(
            Status.UNKNOWN_USER,
            f"unknown user {request.user}: no key is registered under that name",
            "register it with 'minigit auth register'",
        )
    if account.removed:
        return Refusal(Status.UNAUTHENTICATED, f"user {request.user} was removed by an operator", "ask an operator")
    if not identity.request_signed_by(account.key, request, namespace):
        return Refusal(
            Status.UNAUTHENTICATED,
            f"the request's signature does not match {request.user}'s registered key",
            "check which key 'minigit auth show' uses, or ask an operator",
        )
    return None


def check_fresh(signed_ms: int, now_ms: int, window_ms: int = REPLAY_WINDOW_MS) -> Refusal | None:
    """A request signed outside the window around ``now_ms`` is refused (a replay,
    or a clock far off)."""
    if abs(now_ms - signed_ms) <= window_ms:
        return None
    return Refusal(
        Status.UNAUTHENTICATED,
        f"the request was signed {abs(now_ms - signed_ms) // 1000} s "
        f"{'before' if signed_ms < now_ms else 'after'} the server's time (at most {window_ms // 1000} s)",
        "check this machine's clock; a replayed request is refused",
    )


def attest(server_key, namespace: str, request: p.Request, key: str) -> str:
    """The server's attestation that ``key`` is the signer's registered key."""
    return identity.sign(server_key, identity.attestation_payload(namespace, request.user, key, request.signature))


# What the proposer adds to a request: not part of what makes it that request.
PROPOSER_FIELDS = frozenset({"time_ms", "proposer", "signed", "operator_signature"})
# Fields of a request that say how to answer it, not what to do: not in its proposal.
_REQUEST_ONLY_FIELDS = frozenset(
    {
        *("reply_partition", "timeout_ms", "signed_ms", "chunks", "reply_key", "signature"),
        *("lost", "version", "target", "limit", "paths", "changes", "after", "start"),  # reads only
    }
)
# A field a read shares by name with a write: a pull's ``base_tree`` says how to answer
# it (a read is never proposed), a push's is decided when its proposal is applied.
_READ_ONLY_FIELDS: dict[type[p.Request], frozenset[str]] = {p.PullRequest: frozenset({"base_tree"})}


def proposal_fields(request: p.Request) -> dict:
    """The fields a proposal takes from its request (all but how to answer it)."""
    skipped = _REQUEST_ONLY_FIELDS | _READ_ONLY_FIELDS.get(type(request), frozenset())
    return {f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.name not in skipped}


def check_proposal(
    proposal: p.Proposal,
    namespace: str,
    server_key: str,
    account: Account | None = None,
    window_ms: int = REPLAY_WINDOW_MS,
) -> str | None:
    """Why every replica skips ``proposal`` (its proof of authorship does not hold),
    or None. ``account`` is the user's account when the proposal is decided in the
    partition of the user's name (account changes), where the key must be the
    current one; elsewhere the server's attestation vouches for the key.

    An account change counts only in the log partition of its name, the one
    partition that orders every change of that account: apply skips a record
    outside its ``repo``'s partition, so its ``repo`` must be the name."""
    if isinstance(proposal, p.ACCOUNT_PROPOSALS) and proposal.repo != proposal.user:
        return f"an account change of {proposal.user} must be in the log partition of that name (repo {proposal.repo})"
    if isinstance(proposal, p.OPERATOR_PROPOSALS):
        return check_operator(proposal, namespace, server_key)
    signed = proposal.signed
    if signed is None:
        return "not signed"
    try:
        request = signed.parsed_request()
    except MinigitError as error:
        return f"its signed request does not parse: {error.message}"
    if request.action != proposal.action:
        return f"its signed request is a {request.action}, not a {proposal.action}"
    mine = proposal_fields(request)
    theirs = {f.name: getattr(proposal, f.name) for f in dataclasses.fields(proposal) if f.name not in PROPOSER_FIELDS}
    if mine != theirs:
        return "it does not say what its signed request says"
    if not identity.request_signed_by(signed.key, request, namespace):
        return "the request's signature does not check against the key it names"
    if (stale := check_fresh(request.signed_ms, proposal.time_ms, window_ms)) is not None:
        return stale.message
    if isinstance(proposal, p.RegisterProposal):
        return None if signed.key == proposal.public_key else "a registration must be signed by the key it registers"
    if account is not None:
        return None if (not account.removed and account.key == signed.key) else "not signed by the current key"
    if not identity.attested_by(server_key, namespace, request.user, signed.key, request.signature, signed.attestation):
        return "the server's attestation of the key does not check"
    return None


OperatorProposal = p.AdminProposal | p.DeleteProposal
_Operator = TypeVar("_Operator", p.AdminProposal, p.DeleteProposal)


def operator_payload(proposal: OperatorProposal, namespace: str) -> bytes:
    fields = {k: v for k, v in proposal.to_dict().items() if k != "operator_signature"}
    return identity.OPERATOR_DOMAIN + identity.canonical_json({"proposal": fields, "namespace": namespace})


def sign_operator(server_key, proposal: _Operator, namespace: str) -> _Operator:
    """An operator's change (of an account, or a deletion), signed with the service's
    key. The payload names the proposal's type and action, so one kind's signature
    is never another's."""
    unsigned = dataclasses.replace(proposal, operator_signature="")
    return dataclasses.replace(
        unsigned, operator_signature=identity.sign(server_key, operator_payload(unsigned, namespace))
    )


def check_operator(proposal: OperatorProposal, namespace: str, server_key: str) -> str | None:
    try:
        ok = identity.verify(
            identity.parse_public_key(server_key), operator_payload(proposal, namespace), proposal.operator_signature
        )
    except MinigitError:
        ok = False
    return None if ok else "not signed by the service's key"
