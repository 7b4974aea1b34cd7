"""minigit_server.accounts and `minigit-server users`: the accounts folded from the
log alone are the accounts every replica holds, and an operator's change is
signed with the service's key, appended to its name's partition and reported
from the fold (Kafka replaced by a fake log)."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from signing import AUTHORITY, NAMESPACE, SERVER_KEY, admin_proposal, key_text, signed_proposal, user_key
from typer.testing import CliRunner

from minigit import codec, identity
from minigit import protocol as p
from minigit.console import err, out
from minigit_server import access, accounts, decisions, users_cli
from minigit_server import apply as apply_module
from minigit_server.apply import Authority, LogRecord
from minigit_server.cli import app
from minigit_server.server_key import load_or_create_server_key
from minigit_server.store import MemoryStore

PARTITIONS = 2
TREE = "a" * 64


def name_in(partition: int, prefix: str) -> str:
    """A name whose records belong to ``partition`` (of PARTITIONS)."""
    return next(f"{prefix}{i}" for i in range(1000) if p.log_partition(f"{prefix}{i}", PARTITIONS) == partition)


ALICE, BOB = name_in(0, "alice"), name_in(0, "bob")
CAROL = name_in(1, "carol")
REPO_HERE, REPO_AWAY = name_in(0, "repo"), name_in(1, "repo")


class Log:
    """Records of the log, each partition numbered from 0."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []

    def add(self, partition: int, message: p.Message | bytes) -> LogRecord:
        value = message if isinstance(message, bytes) else message.to_bytes()
        record = LogRecord(partition, sum(r.partition == partition for r in self.records), value)
        self.records.append(record)
        return record

    def account(self, message: p.Proposal) -> p.Proposal:
        self.add(p.log_partition(message.repo, PARTITIONS), message)
        return message


def register(user: str, label: str | None = None, rid: str | None = None, **extra) -> p.Proposal:
    key = user_key(label or user)
    return signed_proposal(
        p.RegisterProposal,
        request_id=rid or uuid.uuid4().hex,
        repo=user,
        user=user,
        public_key=key_text(key),
        time_ms=4000,
        key=key,
        **extra,
    )


def rotate(user: str, signer: str, new: str, rid: str | None = None) -> p.Proposal:
    return signed_proposal(
        p.RotateProposal,
        request_id=rid or uuid.uuid4().hex,
        repo=user,
        user=user,
        new_key=key_text(user_key(new)),
        time_ms=4000,
        key=user_key(signer),
    )


def push(repo: str, rid: str | None = None, user: str = "someone", **extra) -> p.Proposal:
    return signed_proposal(
        p.PushProposal,
        request_id=rid or uuid.uuid4().hex,
        repo=repo,
        user=user,
        tree=TREE,
        message="m",
        base=1,
        time_ms=4000,
        **extra,
    )


def add(user: str, label: str | None = None, rid: str | None = None, **extra) -> p.AdminProposal:
    return admin_proposal(user, p.AdminOp.ADD, key_text(user_key(label or user)), request_id=rid, **extra)


def remove(user: str, rid: str | None = None, **extra) -> p.AdminProposal:
    return admin_proposal(user, p.AdminOp.REMOVE, request_id=rid, **extra)


def replica_applies(records: list[LogRecord]) -> MemoryStore:
    """Everything a replica applies: chunks, repository writes and account changes."""
    store = MemoryStore()
    apply_module.apply_records(store, records, PARTITIONS, AUTHORITY)
    return store


def fold(records: list[LogRecord]) -> accounts.AccountsFold:
    folded = accounts.AccountsFold(PARTITIONS, AUTHORITY)
    folded.feed(records)
    return folded


def replica_outcome(store: MemoryStore, proposal: p.Proposal) -> tuple | None:
    known = store.get_outcome(p.log_partition(proposal.repo, PARTITIONS), proposal.request_id)
    if known is None:
        return None
    outcome = decisions.outcome_of(known, decisions.request_key(proposal), None)
    return outcome.status, outcome.message


def fold_outcome(folded: accounts.AccountsFold, proposal: p.Proposal) -> tuple | None:
    outcome = folded.outcome(proposal)
    return None if outcome is None else (outcome.status, outcome.message)


def assert_same(records: list[LogRecord], proposals: list[p.Proposal]) -> accounts.AccountsFold:
    store, folded = replica_applies(records), fold(records)
    assert folded.accounts() == store.list_accounts()
    assert accounts.fold_accounts(records, PARTITIONS, AUTHORITY) == store.list_accounts()
    for proposal in proposals:
        assert fold_outcome(folded, proposal) == replica_outcome(store, proposal), proposal
    return folded


# ---------------------------------------------------------------- the fold


def test_the_fold_holds_every_name_the_log_made() -> None:
    log = Log()
    first = log.account(register(ALICE))
    log.account(rotate(ALICE, ALICE, "alice-new"))
    log.account(add(CAROL))
    log.account(register(BOB))
    gone = log.account(remove(BOB))
    folded = assert_same(log.records, [first, gone])
    assert [(a.name, a.key, a.removed, a.since) for a in folded.accounts()] == [
        (ALICE, key_text(user_key("alice-new")), False, 1),
        (BOB, "", True, 3),
        (CAROL, key_text(user_key(CAROL)), False, 0),
    ]
    assert folded.outcome(first).status == p.Status.ACCEPTED
    assert (folded.outcome(gone).status, folded.outcome(gone).message) == (p.Status.ACCEPTED, "removed")


def test_chunks_and_repository_writes_change_no_account() -> None:
    log = Log()
    blob = codec.BlobSource.from_bytes(b"content")
    for chunk in p.blob_chunks(uuid.uuid4().hex, REPO_HERE, blob):
        log.add(0, chunk)
    log.add(0, push(REPO_HERE))
    log.add(0, b"not json at all")
    log.account(register(ALICE))
    folded = assert_same(log.records, [])
    assert [a.name for a in folded.accounts()] == [ALICE]
    assert folded.store.repos == {} and folded.store.chunks == {}  # nothing of repositories is kept


def test_a_request_id_a_repository_write_used_is_used_for_the_fold_too() -> None:
    # Every replica refuses a registration under a request id a push of the same
    # partition already used: so must the fold, which does not decide the push.
    rid = uuid.uuid4().hex
    log = Log()
    log.add(0, push(REPO_HERE, rid))
    claim = log.account(register(ALICE, rid=rid))
    folded = assert_same(log.records, [claim])
    assert folded.accounts() == []
    assert fold_outcome(folded, claim) == (p.Status.INVALID, "request id already used by another request")


def test_a_write_that_uses_no_request_id_does_not_use_one_in_the_fold() -> None:
    rid, other = uuid.uuid4().hex, uuid.uuid4().hex
    log = Log()
    log.add(1, push(REPO_AWAY, rid))
    log.add(0, push(REPO_AWAY, rid))  # outside its repository's partition: skipped
    log.add(0, push(REPO_HERE, other, server_key=None))  # not attested
    log.add(0, dataclasses.replace(push(REPO_HERE, other), user="mallory"))  # a proof that does not hold
    claims = [log.account(register(ALICE, rid=rid)), log.account(register(BOB, rid=other))]
    folded = assert_same(log.records, claims)
    assert [a.name for a in folded.accounts()] == [ALICE, BOB]


def test_an_operator_change_not_signed_by_the_service_key_is_skipped() -> None:
    log = Log()
    forged = log.account(add(ALICE, signer=user_key("mallory")))
    other_ns = log.account(add(BOB, namespace="elsewhere"))
    folded = assert_same(log.records, [forged, other_ns])
    assert folded.accounts() == [] and folded.outcome(forged) is None and folded.outcome(other_ns) is None


def test_an_account_change_outside_its_name_s_partition_is_skipped() -> None:
    log = Log()
    away = access.sign_operator(SERVER_KEY, dataclasses.replace(add(CAROL), repo=REPO_HERE), NAMESPACE)
    log.add(0, away)  # REPO_HERE is in partition 0: the record is in its repo's partition, not CAROL's
    folded = assert_same(log.records, [])
    assert folded.accounts() == []
    why = access.check_proposal(away, NAMESPACE, AUTHORITY.server_key)
    assert why is not None and "log partition" in why


def test_a_removed_name_stays_taken_until_an_operator_gives_it_back() -> None:
    log = Log()
    log.account(register(ALICE))
    log.account(remove(ALICE))
    again = log.account(register(ALICE, "mallory"))
    back = log.account(add(ALICE, "alice-laptop"))
    folded = assert_same(log.records, [again, back])
    assert fold_outcome(folded, again) == (p.Status.DENIED, f"the name {ALICE} was removed by an operator")
    assert folded.account(ALICE).key == key_text(user_key("alice-laptop"))


def test_a_retried_operator_change_gets_its_first_outcome() -> None:
    log = Log()
    change = log.account(add(ALICE))
    log.account(dataclasses.replace(change, time_ms=change.time_ms + 5))  # resent: the same request
    log.account(access.sign_operator(SERVER_KEY, change, NAMESPACE))
    folded = assert_same(log.records, [change])
    assert folded.outcome(change).status == p.Status.ACCEPTED and folded.account(ALICE).since == 0


USERS = [ALICE, BOB, CAROL]
LABELS = ["k1", "k2", "k3"]


@st.composite
def records(draw) -> tuple[list[LogRecord], list[p.Proposal]]:
    """A log of account changes, forged ones, and repository writes whose request
    ids collide with theirs."""
    rids = [f"{n:032x}" for n in range(1, 5)]
    log, proposals = Log(), []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["register", "rotate", "add", "remove", "forged", "push"]))
        user, label, rid = draw(st.sampled_from(USERS)), draw(st.sampled_from(LABELS)), draw(st.sampled_from(rids))
        if kind == "push":
            log.add(draw(st.integers(0, 1)), push(draw(st.sampled_from([REPO_HERE, REPO_AWAY])), rid))
            continue
        if kind == "register":
            proposal = register(user, label, rid)
        elif kind == "rotate":
            proposal = rotate(user, draw(st.sampled_from(LABELS)), label, rid)
        elif kind == "add":
            proposal = add(user, label, rid)
        elif kind == "remove":
            proposal = remove(user, rid)
        else:
            proposal = add(user, label, rid, signer=user_key("mallory"))
        proposals.append(log.account(proposal))
    return log.records, proposals


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_the_fold_decides_as_every_replica_does(log: tuple[list[LogRecord], list[p.Proposal]]) -> None:
    assert_same(*log)


# ---------------------------------------------------------------- minigit-server users, over a fake log


class FakeBus:
    """The log and heartbeats `users` reads and writes (minigit_server.bus.Bus's methods)."""

    def __init__(self, partitions: int = PARTITIONS) -> None:
        self.log: dict[int, list[LogRecord]] = {n: [] for n in range(partitions)}
        self.beats: list[p.Heartbeat] = []
        self.appended: list[tuple[int, bytes, bytes]] = []
        self.opened = 0
        self.closed = 0

    def read_heartbeats(self) -> list[p.Heartbeat]:
        return list(self.beats)

    def log_partition_count(self) -> int:
        return len(self.log)

    def log_end_offsets(self) -> dict[int, int]:
        return {n: len(records) for n, records in self.log.items()}

    def append_log(self, partition: int, key: bytes, value: bytes, wait: bool) -> int:
        assert wait
        self.appended.append((partition, key, value))
        self.log[partition].append(LogRecord(partition, len(self.log[partition]), value))
        return len(self.log[partition]) - 1

    def scan_log(self, partition: int, end_offset: int, timeout_s: float) -> Iterator[LogRecord]:
        assert timeout_s > 0
        yield from self.log[partition][:end_offset]

    def close(self) -> None:
        self.closed += 1

    def heartbeat(self, replica: str, server_key: str) -> None:
        self.beats.append(
            p.Heartbeat(
                replica=replica,
                host="h",
                pid=1,
                started_ms=0,
                sent_ms=int(time.time() * 1000),
                serving=[],
                applied={},
                log_end={},
                repos={},
                server_key=server_key,
            )
        )


@pytest.fixture(autouse=True)
def wide(monkeypatch) -> None:
    for console in (out, err):
        monkeypatch.setattr(console, "_width", 250)


@pytest.fixture
def fake(monkeypatch) -> FakeBus:
    bus = FakeBus()

    def opened(settings, timeout):
        bus.opened += 1
        return bus

    monkeypatch.setattr(users_cli, "open_bus", opened)
    return bus


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A data dir holding the service's key (as `start` made it)."""
    directory = tmp_path / "data"
    load_or_create_server_key(directory)
    monkeypatch.setenv("MINIGIT_DATA_DIR", str(directory))
    monkeypatch.delenv("MINIGIT_SERVER_KEY", raising=False)
    return directory


def service_key(data_dir) -> str:
    key, _ = load_or_create_server_key(data_dir)
    return identity.public_key_text(key.public_key())


def run(*args: str):
    return CliRunner().invoke(app, ["users", *args])


def alice_key(label: str = "alice") -> str:
    return key_text(user_key(label))


def test_add_appends_a_change_signed_with_the_service_key_to_the_name_s_partition(fake, data_dir) -> None:
    done = run("add", ALICE, alice_key())
    assert done.exit_code == 0, done.output
    [(partition, key, value)] = fake.appended
    assert (partition, key) == (p.log_partition(ALICE, PARTITIONS), ALICE.encode())
    proposal = p.parse_message(value)
    assert isinstance(proposal, p.AdminProposal)
    assert (proposal.repo, proposal.user, proposal.op, proposal.public_key) == (ALICE, ALICE, "add", alice_key())
    assert proposal.proposer == "operator" and abs(proposal.time_ms - time.time() * 1000) < 60_000
    assert access.check_operator(proposal, "", service_key(data_dir)) is None  # the default namespace
    fingerprint = identity.fingerprint(identity.parse_public_key(alice_key()))
    assert f"{ALICE}: registered (log partition 0, offset 0)" in done.output
    assert f"{ALICE} is active with key {fingerprint} since offset 0 of log partition 0" in done.output
    assert fake.closed == 1


def test_add_the_same_key_again_is_up_to_date_and_another_key_replaces_it(fake, data_dir) -> None:
    assert run("add", ALICE, alice_key()).exit_code == 0
    done = run("add", ALICE, alice_key(), "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert (report["status"], report["offset"]) == ("up-to-date", 1)
    assert report["message"] == "already registered with this key"
    assert report["account"] == {
        "name": ALICE,
        "state": "active",
        "key": alice_key(),
        "fingerprint": identity.fingerprint(identity.parse_public_key(alice_key())),
        "partition": 0,
        "since": 0,
    }
    done = run("add", ALICE, alice_key("alice-new"), "--json")
    assert json.loads(done.output)["message"] == "key replaced"
    assert json.loads(done.output)["account"]["since"] == 2


def test_remove_takes_the_name_s_key_away_and_keeps_the_name(fake, data_dir) -> None:
    assert run("add", ALICE, alice_key()).exit_code == 0
    done = run("remove", ALICE)
    assert done.exit_code == 0, done.output
    assert f"{ALICE}: removed (log partition 0, offset 1)" in done.output
    assert f"{ALICE} is removed since offset 1 of log partition 0 (the name stays taken)" in done.output
    done = run("list", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["users"] == [
        {"name": ALICE, "state": "removed", "key": "", "fingerprint": "", "partition": 0, "since": 1}
    ]


def test_removing_a_name_nobody_has_fails_with_the_reason(fake, data_dir) -> None:
    done = run("remove", BOB)
    assert done.exit_code == 1
    assert f"{BOB}: no such user" in done.output and f"{BOB} has no account (log partition 0)" in done.output
    assert f"error: cannot remove {BOB}: no such user" in done.output
    assert fake.appended  # decided in the log, like every other change


def test_list_folds_every_partition(fake, data_dir) -> None:
    for name in (CAROL, ALICE):
        assert run("add", name, alice_key(name)).exit_code == 0
    assert run("remove", CAROL).exit_code == 0
    forged = add(BOB, signer=user_key("mallory"))  # another key: every replica skips it
    fake.log[0].append(LogRecord(0, len(fake.log[0]), forged.to_bytes()))
    done = run("list")
    assert done.exit_code == 0, done.output
    fingerprint = identity.fingerprint(identity.parse_public_key(alice_key(ALICE)))
    assert ALICE in done.output and fingerprint in done.output and "partition 0 offset 0" in done.output
    assert CAROL in done.output and "removed" in done.output and "partition 1 offset 1" in done.output
    assert BOB not in done.output
    users = json.loads(run("list", "--json").output)["users"]
    assert [(u["name"], u["state"]) for u in users] == [(ALICE, "active"), (CAROL, "removed")]


def test_list_of_an_empty_log(fake, data_dir) -> None:
    done = run("list")
    assert done.exit_code == 0 and "no users in the log" in done.output
    assert json.loads(run("list", "--json").output) == {"users": []}


def test_an_operator_command_never_creates_the_service_key(fake, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MINIGIT_SERVER_KEY", raising=False)
    empty = tmp_path / "empty"
    for args in (["add", ALICE, alice_key()], ["remove", ALICE], ["list"]):
        done = run(*args, "--data-dir", str(empty))
        assert done.exit_code == 1, done.output
        assert f"no service key in {empty / 'keys' / 'server.key'}" in done.output and "--data-dir" in done.output
    done = run("add", ALICE, alice_key(), "--server-key", str(tmp_path / "nokey"))
    assert done.exit_code == 1 and "no server key in" in done.output
    assert not empty.exists() and fake.opened == 0 and fake.appended == []


def test_a_key_given_by_path_signs(fake, data_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MINIGIT_DATA_DIR")
    path = data_dir / "keys" / "server.key"
    done = run("add", ALICE, alice_key(), "--server-key", str(path), "--data-dir", str(tmp_path / "elsewhere"))
    assert done.exit_code == 0, done.output
    proposal = p.parse_message(fake.appended[0][2])
    assert access.check_operator(proposal, "", service_key(data_dir)) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "bad name", "ed25519:x"], "invalid user name"),
        (["add", ALICE, "ssh-ed25519 AAAA"], "must start with 'ed25519:'"),
        (["add", ALICE, "ed25519:AAAA"], "invalid public key"),
        (["remove", "../x"], "invalid user name"),
    ],
)
def test_bad_names_and_keys_are_refused_before_anything_is_written(fake, data_dir, args, message) -> None:
    done = run(*args)
    assert done.exit_code == 1, done.output
    assert message in done.output and "Traceback" not in done.output
    assert fake.opened == 0


def test_a_key_the_replicas_do_not_use_is_refused(fake, data_dir) -> None:
    theirs = key_text(user_key("*another service*"))
    for replica in "123":
        fake.heartbeat(replica, theirs)
    for args in (["add", ALICE, alice_key()], ["remove", ALICE], ["list"]):
        done = run(*args)
        assert done.exit_code == 1, done.output
        assert "is not the one the replicas use" in done.output
        assert identity.fingerprint(identity.parse_public_key(theirs)) in done.output
    assert fake.appended == []


def test_a_lone_replica_with_another_key_is_named_not_obeyed(fake, data_dir) -> None:
    fake.heartbeat("1", service_key(data_dir))
    fake.heartbeat("2", service_key(data_dir))
    fake.heartbeat("3", key_text(user_key("*another service*")))
    fake.heartbeat("4", "")  # an older replica: says nothing
    done = run("add", ALICE, alice_key())
    assert done.exit_code == 0, done.output
    assert "warning: replica 3 uses another service key: it skips this change" in done.output


def test_the_namespace_is_signed(fake, data_dir) -> None:
    assert run("add", ALICE, alice_key(), "--namespace", "team-").exit_code == 0
    proposal = p.parse_message(fake.appended[0][2])
    assert access.check_operator(proposal, "team-", service_key(data_dir)) is None
    assert access.check_operator(proposal, "", service_key(data_dir)) is not None


def test_the_fold_uses_the_authority_it_is_given() -> None:
    log = Log()
    change = log.account(add(ALICE))
    elsewhere = accounts.AccountsFold(PARTITIONS, Authority(NAMESPACE, key_text(user_key("other"))))
    elsewhere.feed(log.records)
    assert elsewhere.accounts() == [] and elsewhere.outcome(change) is None


def settle(repo: str, of_request: str, user: str = "someone") -> p.Proposal:
    return signed_proposal(
        p.SettleProposal,
        request_id=uuid.uuid4().hex,
        repo=repo,
        user=user,
        of_request=of_request,
        tree=TREE,
        time_ms=4000,
    )


def test_a_request_id_a_settle_cancelled_is_used_for_the_fold_too() -> None:
    """A settle of an unknown id (by the user, of a repository named like the user: same
    partition) stores it as cancelled: a registration arriving under it later is refused alike."""
    log = Log()
    late = uuid.uuid4().hex
    log.account(settle(ALICE, late, user=ALICE))
    refused = log.account(register(ALICE, rid=late))
    log.account(add(CAROL, rid=uuid.uuid4().hex))
    deletion = log.account(dataclasses.replace(add(BOB), repo=BOB))  # an operator's change alongside
    folded = assert_same(log.records, [refused, deletion])
    assert folded.account(ALICE) is None
    assert fold_outcome(folded, refused) == (p.Status.INVALID, "request id already used by another request")


def test_a_settle_by_another_user_cancels_no_account_change_in_the_fold_either() -> None:
    """Someone's settle of an id cancels that id for their own requests to their own
    repository only: alice's registration under it is decided, by replicas and fold alike."""
    log = Log()
    late = uuid.uuid4().hex
    log.account(settle(ALICE, late))  # by "someone", of a repository named like alice
    registered = log.account(register(ALICE, rid=late))
    log.account(settle(ALICE, late, user=ALICE))  # alice asks: her registration's outcome stays
    folded = assert_same(log.records, [registered])
    assert folded.account(ALICE) is not None
    assert fold_outcome(folded, registered) == (p.Status.ACCEPTED, "registered")
