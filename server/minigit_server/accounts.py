"""Who the log says the users are: the accounts folded from log records alone,
with the rules every replica applies (minigit_server.apply), for
``minigit-server users``. No Kafka here: the command feeds records in.

Only account changes are applied (``RegisterProposal``, ``RotateProposal``,
``AdminProposal``): an account is decided in the log partition of its name from
that partition's account changes and nothing else, except one thing a replica
shares with repository writes: the request ids already used in a partition. A
repository write whose proof holds stores an outcome under its request id, and
an account change met later under that id is refused as "request id already
used"; the fold keeps that id too (without deciding the write, which would need
its chunks), so that it reaches the outcome every replica reaches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from minigit import protocol as p
from minigit.errors import MinigitError
from minigit.protocol import Status
from minigit_server import access, apply, decisions
from minigit_server.apply import Authority, LogRecord
from minigit_server.store import MemoryStore

# What a request id used by a repository write is kept as: never read as an
# outcome (no account change has that write's request key), only as "used".
_USED = "a repository write used this request id (not folded)"


@dataclass
class AccountsFold:
    """Accounts folded from log records, fed partition by partition in log order
    (records of different partitions are independent of each other)."""

    partitions: int
    authority: Authority
    store: MemoryStore = field(default_factory=MemoryStore)

    def feed(self, records: Iterable[LogRecord]) -> None:
        for record in records:
            message = parsed(record)
            if message is None or isinstance(message, p.Chunk):
                continue
            if isinstance(message, p.ACCOUNT_PROPOSALS):
                apply.apply_record(self.store, record, self.partitions, self.authority)
            elif isinstance(message, p.Proposal):
                self._keep_request_id(message, record)

    def _keep_request_id(self, proposal: p.Proposal, record: LogRecord) -> None:
        """What applying a repository write does to the request ids of its partition
        (apply.apply_record, apply.apply_proposal): a write outside its repository's
        partition, or whose proof does not hold, uses none."""
        if p.log_partition(proposal.repo, self.partitions) != record.partition:
            return
        found = self.store.get_outcome(record.partition, proposal.request_id)
        if decisions.binding(found, proposal.user, proposal.repo) is not None:
            return
        if access.check_proposal(proposal, self.authority.namespace, self.authority.server_key) is not None:
            return
        used = decisions.Outcome(Status.OK, None, message=_USED, request=decisions.request_key(proposal)).to_json()
        if found is None:
            self.store.put_outcome(record.partition, proposal.request_id, used)
        else:  # a cancellation by others' settles: this write's outcome replaces it
            self.store.replace_outcome(record.partition, proposal.request_id, used)
        if isinstance(proposal, p.SettleProposal):
            # A settle cancels its ``of_request`` for its user and repository unless an
            # outcome is stored, or the settler may not push to its repository (not
            # folded: taken as cancelled).
            known = self.store.get_outcome(record.partition, proposal.of_request)
            _, cancel = decisions.decide_settle(
                known, proposal.repo, proposal.of_request, proposal.tree, None, lambda _: None, user=proposal.user
            )
            if cancel is None:
                return
            if known is None:
                cancel = dataclasses.replace(cancel, request=decisions.request_key(proposal))
                self.store.put_outcome(record.partition, proposal.of_request, cancel.to_json())
            else:
                self.store.replace_outcome(record.partition, proposal.of_request, cancel.to_json())

    def accounts(self) -> list[access.Account]:
        """Every name the log holds, by name (removed ones too: a removed name stays taken)."""
        return self.store.list_accounts()

    def account(self, name: str) -> access.Account | None:
        return self.store.get_account(name)

    def outcome(self, proposal: p.Proposal) -> decisions.Outcome | None:
        """What every replica answers ``proposal`` (an account change fed before),
        as apply.apply_proposal decides it: its stored outcome, or "request id
        already used" if another request stored one under its id; None if it was
        skipped (its proof does not hold) or not fed yet."""
        known = self.store.get_outcome(p.log_partition(proposal.repo, self.partitions), proposal.request_id)
        if known is None:
            return None
        return decisions.outcome_of(known, decisions.request_key(proposal), None)


def parsed(record: LogRecord) -> p.Message | None:
    """A log record's message, or None for one every replica skips as malformed."""
    try:
        return p.parse_message(record.value, allowed=p.LOG_RECORD_TYPES)
    except MinigitError:
        return None


def fold_accounts(records: Iterable[LogRecord], partitions: int, authority: Authority) -> list[access.Account]:
    """The accounts that ``records`` (the log, each partition in order) make."""
    fold = AccountsFold(partitions, authority)
    fold.feed(records)
    return fold.accounts()
