"""minigit_server.decisions: the server's pure decisions (the seed's outcome table)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from signing import NAMESPACE

from minigit import identity
from minigit import protocol as p
from minigit_server import access, decisions
from minigit_server.access import Account, RepoAccess
from minigit_server.decisions import Outcome, PullDecision

T1 = "1" * 64
T2 = "2" * 64
PROBLEM = (p.Status.MISSING_OBJECTS, "1 object(s) were not uploaded completely")


def fe(seed: str, size: int = 1) -> p.FileEntry:
    return p.FileEntry(p.hash_bytes(seed.encode()), size)


# ---------------------------------------------------------------- push


def test_push_no_such_repository():
    assert decisions.decide_push(None, None, 1, T1, None) == Outcome(
        p.Status.NOT_FOUND, None, None, "no such repository"
    )


def test_push_no_such_repository_wins_over_everything():
    assert decisions.decide_push(None, None, 5, T1, PROBLEM).status == p.Status.NOT_FOUND


@pytest.mark.parametrize("head, base", [(3, 2), (3, 1), (3, 4), (1, 2), (10, 9)])
def test_push_version_mismatch(head, base):
    outcome = decisions.decide_push(head, T1, base, T2, None)
    assert outcome == Outcome(p.Status.REJECTED, head, None, f"version mismatch: head is {head}, push based on {base}")


def test_push_version_mismatch_wins_over_a_problem_and_over_same_tree():
    assert decisions.decide_push(3, T1, 2, T2, PROBLEM).status == p.Status.REJECTED
    assert decisions.decide_push(3, T1, 2, T1, None).status == p.Status.REJECTED


@pytest.mark.parametrize("head", [1, 2, 41])
def test_push_accepted(head):
    outcome = decisions.decide_push(head, T1, head, T2, None)
    assert outcome == Outcome(p.Status.ACCEPTED, head + 1, head + 1, f"accepted as version {head + 1}")


def test_push_nothing_to_push():
    assert decisions.decide_push(4, T1, 4, T1, None) == Outcome(p.Status.UP_TO_DATE, 4, None, "nothing to push")


@pytest.mark.parametrize(
    "problem",
    [
        PROBLEM,
        (p.Status.INVALID, "invalid tree: bad"),
        (p.Status.MISSING_OBJECTS, "the tree was not uploaded completely"),
    ],
)
def test_push_with_a_tree_problem(problem):
    assert decisions.decide_push(2, T1, 2, T2, problem) == Outcome(problem[0], 2, None, problem[1])


def test_push_when_head_tree_unknown_is_accepted():
    assert decisions.decide_push(1, None, 1, T1, None).status == p.Status.ACCEPTED


STALE_BASE = (
    "your version 1 is not the server's version 1 (the repository was deleted and created again?): clone it again"
)


@pytest.mark.parametrize("head, base", [(1, 1), (3, 1), (3, 3)])
def test_a_push_whose_base_tree_is_not_the_server_s_is_invalid(head, base):
    """A stale clone of a repository deleted and created again: pushing from it would
    make its tree the next version of another history (and delete what that one added)."""
    outcome = decisions.decide_push(head, T1, base, T2, None, base_tree=T1, server_base_tree=T2)
    assert outcome == Outcome(p.Status.INVALID, head, None, STALE_BASE.replace("1", str(base)))
    # whatever else the push would have met: the tree it was made from is not the server's
    assert decisions.decide_push(head, T1, base, T1, PROBLEM, base_tree=T1, server_base_tree=T2) == outcome


def test_a_push_whose_base_tree_is_the_server_s_or_none_is_decided_as_before():
    assert decisions.decide_push(2, T1, 2, T2, None, base_tree=T1, server_base_tree=T1) == decisions.decide_push(
        2, T1, 2, T2, None
    )
    assert decisions.decide_push(2, T1, 2, T2, None, base_tree="", server_base_tree=T2).status == p.Status.ACCEPTED
    assert decisions.decide_push(3, T1, 1, T2, None, base_tree=T1, server_base_tree=T1).status == p.Status.REJECTED
    # based on a version the server does not have: "fetch first", whose pull then says "clone again"
    assert decisions.decide_push(2, T1, 5, T2, None, base_tree=T1, server_base_tree=None).status == p.Status.REJECTED
    assert decisions.decide_push(None, None, 1, T2, None, base_tree=T1).status == p.Status.NOT_FOUND


# ---------------------------------------------------------------- create


def test_create_new_repository():
    assert decisions.decide_create(None, None) == Outcome(p.Status.ACCEPTED, 1, 1, "created at version 1")


@pytest.mark.parametrize("head", [1, 7])
def test_create_existing_repository(head):
    assert decisions.decide_create(head, None) == Outcome(p.Status.EXISTS, head, None, "repository already exists")
    assert decisions.decide_create(head, PROBLEM) == Outcome(p.Status.EXISTS, head, None, "repository already exists")


@pytest.mark.parametrize("problem", [PROBLEM, (p.Status.INVALID, "invalid tree")])
def test_create_with_a_tree_problem(problem):
    assert decisions.decide_create(None, problem) == Outcome(problem[0], None, None, problem[1])


# ---------------------------------------------------------------- pull / clone


def test_pull_no_such_repository():
    assert decisions.decide_pull(None, 0) == PullDecision(p.Status.NOT_FOUND, None, "no such repository")
    assert decisions.decide_pull(None, 3) == PullDecision(p.Status.NOT_FOUND, None, "no such repository")


@pytest.mark.parametrize("head", [1, 5])
def test_clone_existing_repository(head):
    assert decisions.decide_pull(head, 0) == PullDecision(p.Status.OK, head, f"head is version {head}", head)


@pytest.mark.parametrize("head, version", [(1, 1), (5, 5)])
def test_pull_already_up_to_date(head, version):
    assert decisions.decide_pull(head, version) == PullDecision(p.Status.UP_TO_DATE, head, "already up to date")


@pytest.mark.parametrize("head, version", [(2, 1), (5, 3)])
def test_pull_behind_is_updated(head, version):
    assert decisions.decide_pull(head, version) == PullDecision(p.Status.OK, head, f"head is version {head}", head)


@pytest.mark.parametrize("head, version", [(1, 2), (5, 9)])
def test_pull_ahead_of_server_is_invalid(head, version):
    decision = decisions.decide_pull(head, version)
    assert decision.status == p.Status.INVALID and decision.head == head
    assert f"you are at version {version}" in decision.message and "clone again" in decision.message


# ---------------------------------------------------------------- trees


def has_only(*shas):
    """Blob sizes as a store gives them: present blobs are 1 byte (as ``fe`` makes them)."""
    return lambda sha: 1 if sha in shas else None


def problem(tree: bytes | None, has_blob) -> tuple | None:
    return decisions.find_tree_problem(None if tree is None else len(tree), lambda: tree, has_blob)


def test_find_tree_problem_tree_missing():
    assert problem(None, has_only()) == (
        p.Status.MISSING_OBJECTS,
        "the tree was not uploaded completely",
    )


def test_find_tree_problem_none_when_complete():
    a, b = fe("a"), fe("b")
    tree = p.encode_tree({"x": a, "d/y": b, "z": a})
    assert problem(tree, has_only(a.sha, b.sha)) is None
    assert problem(p.encode_tree({}), has_only()) is None


def test_find_tree_problem_counts_distinct_missing_blobs():
    a, b, c = fe("a"), fe("b"), fe("c")
    tree = p.encode_tree({"x": a, "y": b, "z": b, "w": c})
    assert problem(tree, has_only(a.sha)) == (
        p.Status.MISSING_OBJECTS,
        "2 object(s) were not uploaded completely",
    )


@pytest.mark.parametrize(
    "tree",
    [
        b"garbage",
        b"[]",
        json.dumps({"v": 1, "files": {}}).encode(),  # not in canonical form
        p.encode_tree({"../x": fe("a")}),
        p.encode_tree({"/abs": fe("a")}),
        p.encode_tree({"a/.minigit": fe("a")}),
        p.encode_tree({"a": p.FileEntry("a" * 64, -1)}),
        p.encode_tree({"a": fe("a"), "a/b": fe("a")}),
    ],
)
def test_find_tree_problem_invalid(tree):
    status, message = problem(tree, lambda sha: 1)
    assert status == p.Status.INVALID
    assert message


def test_a_tree_too_large_is_refused_from_its_size_without_reading_it():
    def never_read() -> bytes:
        raise AssertionError("read a tree that its size already refused")

    status, message = decisions.find_tree_problem(p.MAX_TREE_BYTES + 1, never_read, lambda sha: 1)
    assert status == p.Status.INVALID and message.startswith("tree too large")


def test_a_tree_with_too_many_files_is_refused():
    files = {f"f{n}": fe("x") for n in range(p.MAX_TREE_ENTRIES + 1)}
    status, message = problem(p.encode_tree(files), lambda sha: 1)
    assert (status, message) == (p.Status.INVALID, f"tree too large: more than {p.MAX_TREE_ENTRIES} files")


def test_a_file_whose_size_is_not_its_contents_is_refused():
    a = fe("a")
    tree = p.encode_tree({"x": a, "y": p.FileEntry(a.sha, 2**63 - 1)})
    status, message = problem(tree, lambda sha: a.size)
    assert (
        status == p.Status.INVALID and message == f"invalid tree: 'y' says {2**63 - 1} bytes, its content has {a.size}"
    )


def test_a_tree_at_the_limits_is_accepted():
    files = {f"f{n}": fe("x") for n in range(p.MAX_TREE_ENTRIES)}
    assert len(p.decode_tree(p.encode_tree(files))) == p.MAX_TREE_ENTRIES


def test_outcome_json_round_trip():
    for outcome in (
        Outcome(p.Status.ACCEPTED, 3, 3, "m"),
        Outcome(p.Status.NOT_FOUND, None),
        Outcome(p.Status.REJECTED, 2, None, "x"),
    ):
        assert Outcome.from_json(json.loads(json.dumps(outcome.to_json()))) == outcome


# ---------------------------------------------------------------- blobs_to_send


def test_blobs_to_send_clone_sends_everything_once_sorted():
    a, b = fe("a", 10), fe("b", 20)
    new = {"x": a, "y": b, "z": a}
    assert decisions.blobs_to_send({}, new) == sorted([(a.sha, 10), (b.sha, 20)])


def test_blobs_to_send_only_what_changed():
    a, b, c = fe("a", 1), fe("b", 2), fe("c", 3)
    old = {"x": a, "y": b}
    new = {"x": a, "y": c, "moved": b}
    assert decisions.blobs_to_send(old, new) == [(c.sha, 3)]


def test_blobs_to_send_nothing_when_same_or_deleted():
    a, b = fe("a"), fe("b")
    assert decisions.blobs_to_send({"x": a, "y": b}, {"x": a}) == []
    assert decisions.blobs_to_send({"x": a}, {"x": a}) == []


def test_blobs_to_send_includes_lost():
    a, b, c = fe("a", 1), fe("b", 2), fe("c", 3)
    old = {"x": a, "y": b}
    new = {"x": a, "y": b, "z": c}
    assert decisions.blobs_to_send(old, new, lost=[a.sha]) == sorted([(a.sha, 1), (c.sha, 3)])
    # a lost object the head does not need is not sent
    assert decisions.blobs_to_send(old, {"z": c}, lost=[a.sha]) == [(c.sha, 3)]
    # lost names unknown to both sides change nothing
    assert decisions.blobs_to_send(old, new, lost=["f" * 64]) == [(c.sha, 3)]


entries = st.builds(p.FileEntry, st.sampled_from([p.hash_bytes(bytes([i])) for i in range(6)]), st.just(1))
manifests = st.dictionaries(st.sampled_from(["a", "b", "c", "d/e", "f"]), entries, max_size=5)


@given(manifests, manifests, st.lists(st.sampled_from([p.hash_bytes(bytes([i])) for i in range(6)])))
def test_blobs_to_send_property(old, new, lost):
    sent = decisions.blobs_to_send(old, new, lost)
    shas = [sha for sha, _ in sent]
    assert shas == sorted(set(shas))
    held = {e.sha for e in old.values()} - set(lost)
    assert set(shas) == {e.sha for e in new.values()} - held


# ---------------------------------------------------------------- the push rule as a property

trees = st.sampled_from([T1, T2, "3" * 64])
problems = st.one_of(
    st.none(),
    st.just(PROBLEM),
    st.just((p.Status.INVALID, "invalid tree: x")),
    st.just((p.Status.MISSING_OBJECTS, "tree")),
)


@given(
    head=st.one_of(st.none(), st.integers(min_value=1, max_value=6)),
    head_tree=st.one_of(st.none(), trees),
    base=st.integers(min_value=1, max_value=7),
    tree=trees,
    problem=problems,
)
def test_push_accepted_iff_based_on_head(head, head_tree, base, tree, problem):
    outcome = decisions.decide_push(head, head_tree, base, tree, problem)
    should_accept = head is not None and base == head and problem is None and tree != head_tree
    assert (outcome.status == p.Status.ACCEPTED) == should_accept
    if should_accept:
        assert outcome.version == head + 1 == outcome.head
    else:
        assert outcome.version is None
        assert outcome.head == head
    if head is None:
        assert outcome.status == p.Status.NOT_FOUND
    elif base != head:
        assert outcome.status == p.Status.REJECTED
    elif problem is not None:
        assert outcome.status == problem[0]
    elif tree == head_tree:
        assert outcome.status == p.Status.UP_TO_DATE
    # deterministic: the same inputs give the same outcome on every replica
    assert decisions.decide_push(head, head_tree, base, tree, problem) == outcome


@given(head=st.one_of(st.none(), st.integers(min_value=1, max_value=6)), version=st.integers(min_value=0, max_value=7))
def test_pull_decision_property(head, version):
    decision = decisions.decide_pull(head, version)
    assert decision.head == head
    if head is None:
        assert decision.status == p.Status.NOT_FOUND
    elif version == head:
        assert decision.status == p.Status.UP_TO_DATE
    elif version < head:
        assert decision.status == p.Status.OK
    else:
        assert decision.status == p.Status.INVALID


# ---------------------------------------------------------------- what makes one request


def a_push(**changes) -> p.PushProposal:
    values = dict(request_id="ab" * 16, repo="r", user="alice", tree=T1, message="m", time_ms=1, proposer="r0", base=1)
    return p.PushProposal(**{**values, **changes})


def test_a_request_key_ignores_who_proposed_it_when_and_its_proof():
    """A retry proposed again by another owner, later, carrying its proof again, is the same request."""
    key = decisions.request_key(a_push())
    proof = p.SignedWrite(request="{}", key="ed25519:k", attestation="a")
    assert decisions.request_key(a_push(time_ms=99, proposer="r2", signed=proof)) == key
    for change in (
        {"tree": T2},
        {"base": 2},
        {"message": "n"},
        {"user": "bob"},
        {"repo": "s"},
        {"request_id": "c" * 32},
    ):
        assert decisions.request_key(a_push(**change)) != key, change
    create = p.CreateProposal(
        request_id="ab" * 16, repo="r", user="alice", tree=T1, message="m", time_ms=1, proposer=""
    )
    assert decisions.request_key(create) != key
    operator = p.AdminProposal(request_id="ab" * 16, repo="x", user="x", time_ms=1, proposer="", op=p.AdminOp.ADD)
    assert decisions.request_key(operator) == decisions.request_key(
        p.AdminProposal(**{**operator.__dict__, "operator_signature": "s", "time_ms": 5})
    )


def test_a_stored_outcome_answers_its_own_request_only():
    stored = {**Outcome(p.Status.ACCEPTED, 2, 2, "accepted as version 2").to_json(), "request": "key"}
    assert decisions.outcome_of(stored, "key", 5) == Outcome(p.Status.ACCEPTED, 2, 2, "accepted as version 2", "key")
    assert decisions.outcome_of(stored, "other", 5) == Outcome(
        p.Status.INVALID, 5, None, "request id already used by another request"
    )


# ---------------------------------------------------------------- access


def share(member: str, level: p.Access) -> p.ShareProposal:
    return p.ShareProposal(
        request_id="ab" * 16, repo="r", user="alice", time_ms=1, proposer="", member=member, level=level
    )


def test_share_decisions():
    members = {"bob": "write"}
    assert decisions.decide_share(None, "", {}, share("bob", p.Access.READ)) == Outcome(
        p.Status.NOT_FOUND, None, None, "no such repository"
    )
    assert decisions.decide_share(3, "alice", members, share("alice", p.Access.NONE)) == Outcome(
        p.Status.INVALID, 3, None, "alice owns r: an owner's access cannot change"
    )
    assert decisions.decide_share(3, "alice", members, share("bob", p.Access.WRITE)).status == p.Status.UP_TO_DATE
    assert decisions.decide_share(3, "alice", members, share("carol", p.Access.NONE)).status == p.Status.UP_TO_DATE
    assert decisions.decide_share(3, "alice", members, share("bob", p.Access.NONE)) == Outcome(
        p.Status.ACCEPTED, 3, None, "bob no longer has access to r"
    )
    assert decisions.decide_share(3, "alice", members, share("carol", p.Access.ADMIN)) == Outcome(
        p.Status.ACCEPTED, 3, None, "carol now has admin access to r"
    )


def test_visibility_decisions():
    def change(to: p.Visibility) -> p.VisibilityProposal:
        return p.VisibilityProposal(request_id="ab" * 16, repo="r", user="a", time_ms=1, proposer="", visibility=to)

    assert decisions.decide_visibility(None, "", change(p.Visibility.PUBLIC)).status == p.Status.NOT_FOUND
    assert decisions.decide_visibility(2, "private", change(p.Visibility.PRIVATE)) == Outcome(
        p.Status.UP_TO_DATE, 2, None, "r is already private"
    )
    assert decisions.decide_visibility(2, "private", change(p.Visibility.PUBLIC)) == Outcome(
        p.Status.ACCEPTED, 2, None, "r is now public"
    )


KEY = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="  # RFC 8032 tests 1 and 2
KEY2 = "ed25519:PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw="


@pytest.mark.parametrize("key", ["", "ed25519:", "not a key", KEY + "x", KEY.replace("ed25519", "ssh-ed25519")])
def test_accounts_take_ed25519_keys_only(key):
    assert not decisions.is_public_key(key)
    assert decisions.decide_register(None, key).status == p.Status.INVALID
    assert decisions.decide_rotate(Account("a", KEY), key).status == p.Status.INVALID
    assert decisions.decide_admin(None, p.AdminOp.ADD, key).status == p.Status.INVALID


def test_register_decisions():
    assert decisions.is_public_key(KEY)
    assert decisions.decide_register(None, KEY) == Outcome(p.Status.ACCEPTED, None, None, "registered")
    assert decisions.decide_register(Account("a", KEY), KEY).status == p.Status.UP_TO_DATE
    assert decisions.decide_register(Account("a", KEY), KEY2) == Outcome(
        p.Status.DENIED, None, None, "the name a is taken by another key; choose another with --user"
    )
    removed = Account("a", "", removed=True)
    assert decisions.decide_register(removed, KEY) == Outcome(
        p.Status.DENIED, None, None, "the name a was removed by an operator"
    )


def test_rotate_decisions():
    assert decisions.decide_rotate(Account("a", KEY), KEY2) == Outcome(p.Status.ACCEPTED, None, None, "key replaced")
    assert decisions.decide_rotate(Account("a", KEY), KEY).status == p.Status.UP_TO_DATE
    assert decisions.decide_rotate(None, KEY).status == p.Status.NOT_FOUND
    assert decisions.decide_rotate(Account("a", "", removed=True), KEY).status == p.Status.NOT_FOUND


def test_operator_decisions():
    add, remove = p.AdminOp.ADD, p.AdminOp.REMOVE
    assert decisions.decide_admin(None, add, KEY) == Outcome(p.Status.ACCEPTED, None, None, "registered")
    assert decisions.decide_admin(Account("a", KEY), add, KEY).status == p.Status.UP_TO_DATE
    assert decisions.decide_admin(Account("a", KEY), add, KEY2).message == "key replaced"
    assert decisions.decide_admin(Account("a", "", removed=True), add, KEY).status == p.Status.ACCEPTED
    assert decisions.decide_admin(Account("a", KEY), remove, "") == Outcome(p.Status.ACCEPTED, None, None, "removed")
    assert decisions.decide_admin(None, remove, "").status == p.Status.NOT_FOUND
    assert decisions.decide_admin(Account("a", "", removed=True), remove, "") == Outcome(
        p.Status.UP_TO_DATE, None, None, "already removed"
    )


LEVELS = [p.Access.NONE, p.Access.READ, p.Access.WRITE, p.Access.ADMIN]


@pytest.mark.parametrize("visibility", list(p.Visibility))
def test_the_owner_is_admin_members_have_what_was_shared_others_read_public_only(visibility):
    members = {"reader": p.Access.READ, "writer": p.Access.WRITE, "admin": p.Access.ADMIN, "gone": p.Access.NONE}
    repo = RepoAccess("owner", visibility, members)
    public = visibility == p.Visibility.PUBLIC
    assert access.access_of("owner", repo) == p.Access.ADMIN
    for user, level in members.items():
        expected = p.Access.READ if public and level == p.Access.NONE else level
        assert access.access_of(user, repo) == expected
    assert access.access_of("stranger", repo) == (p.Access.READ if public else p.Access.NONE)


@given(
    st.sampled_from(LEVELS),
    st.sampled_from(list(p.Visibility)),
    st.sampled_from(["ping", "pull", "log", "push", "share", "visibility", "anything else"]),
)
def test_an_action_is_allowed_iff_the_level_is_enough(level, visibility, action):
    repo = RepoAccess("owner", visibility, {"user": level} if level != p.Access.NONE else {})
    has = LEVELS.index(access.access_of("user", repo))
    needed = LEVELS.index(access.REQUIRED_ACCESS.get(action, p.Access.ADMIN))
    refusal = access.check_permission("user", action, "r", repo)
    assert (refusal is None) == (has >= needed)
    if refusal is not None:
        assert refusal.status == p.Status.DENIED and refusal.message.startswith("permission denied: user may not")
    assert access.check_permission("owner", action, "r", repo) is None
    assert access.check_permission("user", action, "r", None) is None  # no repository: its own answer says so


@given(st.integers(0, 10**13), st.integers(-(10**7), 10**7))
def test_a_request_is_fresh_within_the_window_only(now_ms, skew_ms):
    signed_ms = max(0, now_ms + skew_ms)
    refusal = access.check_fresh(signed_ms, now_ms)
    assert (refusal is None) == (abs(now_ms - signed_ms) <= access.REPLAY_WINDOW_MS)
    if refusal is not None:
        assert refusal.status == p.Status.UNAUTHENTICATED
        assert ("before" if signed_ms < now_ms else "after") in refusal.message


def test_proposal_fields_are_what_a_request_says_to_do():
    request = p.PushRequest(
        request_id="ab" * 16, repo="r", user="alice", reply_partition=3, timeout_ms=9, base=2, tree=T1,
        message="m", signed_ms=5, reply_key="x25519:k", signature="s",
    )  # fmt: skip
    assert access.proposal_fields(request) == {
        "request_id": "ab" * 16,
        "repo": "r",
        "user": "alice",
        "tree": T1,
        "message": "m",
        "base": 2,
        "base_tree": "",  # decided when the push is applied
    }
    pull = p.PullRequest(
        request_id="ab" * 16, repo="r", user="a", reply_partition=0, version=3, lost=[T1], base_tree=T2
    )
    assert access.proposal_fields(pull) == {"request_id": "ab" * 16, "repo": "r", "user": "a"}


def test_every_proposal_says_exactly_what_its_request_says_to_do():
    """check_proposal compares the two field by field: a field one has and the other
    lacks would make every replica skip every such write."""
    from signing import REQUEST_OF

    assert set(REQUEST_OF) == {cls for cls in p._registry.values() if issubclass(cls, p.Proposal)} - set(
        p.OPERATOR_PROPOSALS
    )
    for proposal, request in REQUEST_OF.items():
        assert proposal.action == request.action
        said = {f.name for f in dataclasses.fields(proposal)} - access.PROPOSER_FIELDS
        asked = {f.name for f in dataclasses.fields(request)} - access._REQUEST_ONLY_FIELDS
        assert said == asked, proposal.__name__


def test_a_request_is_signed_by_its_user_s_current_key_or_refused():
    from signing import key_text, signed, user_key

    ping = p.PingRequest(request_id="ab" * 16, repo="r", user="alice", reply_partition=0)
    alice = access.Account("alice", key_text(user_key("alice")))
    good = signed(ping, user_key("alice"))
    assert good.chunks == identity.NO_CHUNKS
    assert access.check_signed(good, alice, NAMESPACE) is None
    unsigned = access.check_signed(ping, alice, NAMESPACE)
    assert (unsigned.status, unsigned.message) == (p.Status.UNAUTHENTICATED, "the request is not signed")
    unknown = access.check_signed(good, None, NAMESPACE)
    assert unknown.status == p.Status.UNKNOWN_USER and "minigit auth register" in unknown.text
    removed = access.check_signed(good, access.Account("alice", "", removed=True), NAMESPACE)
    assert removed.status == p.Status.UNAUTHENTICATED and "removed by an operator" in removed.message
    other_chunks = dataclasses.replace(good, chunks=T1)  # the digest of its uploads is signed too
    for other in (signed(ping, user_key("bob")), good, other_chunks):
        namespace = NAMESPACE if other is not good else "elsewhere"
        refusal = access.check_signed(other, alice, namespace)
        assert refusal.status == p.Status.UNAUTHENTICATED and "does not match alice's registered key" in refusal.message
        assert refusal.hint


# ---------------------------------------------------------------- pull to a target version


@pytest.mark.parametrize("version", [0, 1, 3, 5])
@pytest.mark.parametrize("target", [1, 3, 5])
def test_pull_to_a_target_is_ok_from_any_version_even_its_own(version, target):
    """Older, newer or the same: the target's tree is sent (how a client reads a version)."""
    decision = decisions.decide_pull(5, version, target)
    assert decision == PullDecision(p.Status.OK, 5, f"version {target} (head is version 5)", target)


@pytest.mark.parametrize("version", [0, 2, 5, 9])
def test_pull_to_a_target_beyond_the_head_is_invalid(version):
    assert decisions.decide_pull(5, version, 6) == PullDecision(
        p.Status.INVALID, 5, "version 6 does not exist: the head is 5"
    )


def test_pull_to_a_target_of_no_repository_is_not_found():
    assert decisions.decide_pull(None, 0, 3).status == p.Status.NOT_FOUND


MISMATCH = (
    "your version 2 is not the server's version 2 (the repository was deleted and created again?): clone it again"
)


@pytest.mark.parametrize("target", [0, 1, 2, 4])
def test_a_base_tree_that_is_not_the_server_s_is_invalid(target):
    assert decisions.decide_pull(4, 2, target, T1, T2) == PullDecision(p.Status.INVALID, 4, MISMATCH)
    assert decisions.decide_pull(4, 2, target, T1, None) == PullDecision(p.Status.INVALID, 4, MISMATCH)


def test_a_base_tree_that_is_the_server_s_or_none_changes_nothing():
    assert (
        decisions.decide_pull(4, 2, 0, T1, T1) == decisions.decide_pull(4, 2) == decisions.decide_pull(4, 2, 0, "", T2)
    )
    assert decisions.decide_pull(4, 4, 0, T1, T1).status == p.Status.UP_TO_DATE
    assert decisions.decide_pull(4, 0, 0, T1, None).status == p.Status.OK  # a clone has no version to compare


def test_a_pull_ahead_of_the_server_says_so_before_comparing_trees():
    assert "clone again" in decisions.decide_pull(4, 7, 0, T1, None).message


def test_the_blobs_of_an_older_target_that_the_client_lacks_are_sent():
    old = {"a": fe("a3"), "b": fe("b")}
    target = {"a": fe("a1"), "b": fe("b"), "c": fe("c")}
    assert decisions.blobs_to_send(old, target) == sorted([(fe("a1").sha, 1), (fe("c").sha, 1)])
    assert decisions.blobs_to_send(target, target) == []  # the tree alone
    assert decisions.blobs_to_send(target, target, [fe("b").sha]) == [(fe("b").sha, 1)]


# ---------------------------------------------------------------- log: changes and paths


def change(path: str, kind: str, size: int = 1, mode: p.FileMode = p.FileMode.REGULAR) -> p.FileChange:
    return p.FileChange(path=path, kind=p.ChangeKind(kind), size=size, mode=mode)


def test_changes_between_two_manifests():
    x = p.FileMode.EXECUTABLE
    old = {"same": fe("s"), "edit": fe("e1"), "gone": p.FileEntry(fe("g").sha, 7, x), "chmod": fe("c")}
    new = {"same": fe("s"), "edit": fe("e2", 2), "chmod": p.FileEntry(fe("c").sha, 1, x), "new/file": fe("n", 3)}
    assert decisions.changes_between(old, new) == [
        change("chmod", "M", 1, x),  # a mode change alone is a change
        change("edit", "M", 2),
        change("gone", "D", 7, x),  # a deletion: the size and mode it had
        change("new/file", "A", 3),
    ]
    assert decisions.changes_between({}, {"a": fe("a")}) == [change("a", "A")]
    assert decisions.changes_between(new, new) == []


# Paths that a tree's bytes make awkward: escapes, quotes, the separators of its entries
# ('},"' after a path ending with "},", '":{' inside one), non-ASCII.
AWKWARD_PATHS = ["a", "a b", "a!", "a/b", 'q"uote', "x},", 'y":{z', "}", ",", "é/ü", "tab\tx", "a},/b", "日本"]
awkward_paths = st.one_of(
    st.sampled_from(AWKWARD_PATHS),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\\/"), min_size=1, max_size=6),
).filter(lambda path: path not in (".", "..") and not p.is_reserved_name(path))
tree_files = st.builds(
    p.FileEntry,
    st.sampled_from([p.hash_bytes(bytes([i])) for i in range(4)]),
    st.integers(0, 3),
    st.sampled_from(p.FileMode),
)
tree_manifests = st.dictionaries(awkward_paths, tree_files, max_size=8).filter(
    lambda manifest: not p.find_file_directory_clash(manifest)
)


@given(tree_manifests, tree_manifests)
def test_changes_between_trees_by_their_bytes_are_the_changes_between_their_manifests(old, new):
    old_tree, new_tree = p.encode_tree(old), p.encode_tree(new)
    assert p.decode_tree(old_tree) == old and p.decode_tree(new_tree) == new
    found = decisions.changes_between_trees(p.tree_entries(old_tree), p.tree_entries(new_tree))
    assert found == decisions.changes_between(old, new)
    assert p.decode_tree_entries(p.tree_entries(new_tree)) == new


def test_a_tree_is_cut_into_its_entries_even_when_a_path_ends_like_an_entry():
    plain = {"a": fe("a"), "b/c": p.FileEntry(fe("c").sha, 3, p.FileMode.EXECUTABLE)}
    assert p.tree_entries(p.encode_tree(plain)) == {
        b'a":{"sha":"' + fe("a").sha.encode() + b'","size":1',
        b'b/c":{"mode":"x","sha":"' + fe("c").sha.encode() + b'","size":3',
    }
    assert p.tree_entries(p.encode_tree({})) == frozenset() and p.decode_tree_entries([]) == {}
    tricky = {"x},": fe("x"), 'y":{"sha":"': fe("y"), "z": fe("z")}  # cut wrongly: decoded instead
    entries = p.tree_entries(p.encode_tree(tricky))
    assert len(entries) == 3 and p.decode_tree_entries(entries) == tricky
    edited = {**tricky, "x},": fe("x2", 2)}
    assert decisions.changes_between_trees(entries, p.tree_entries(p.encode_tree(edited))) == [change("x},", "M", 2)]


def test_a_symlink_becoming_a_file_with_the_same_content_is_modified():
    link = p.FileEntry(fe("target").sha, 6, p.FileMode.SYMLINK)
    assert decisions.changes_between({"l": link}, {"l": fe("target", 6)}) == [change("l", "M", 6)]


@pytest.mark.parametrize(
    "paths, touched",
    [
        ([], True),
        (["src"], True),
        (["src/a.py"], True),
        (["docs", "src/a.py"], True),
        (["sr"], False),  # a prefix that is not a directory
        (["src/a"], False),
        (["srcs"], False),
        (["src/a.py/x"], False),
        (["docs"], False),
    ],
)
def test_a_version_touches_the_paths_equal_to_or_above_a_changed_file(paths, touched):
    assert decisions.touches([change("src/a.py", "M"), change("README", "D")], paths) is touched


def test_a_version_that_changed_nothing_touches_no_path_but_is_listed_without_paths():
    assert decisions.touches([], ["a"]) is False
    assert decisions.touches([], []) is True


def test_changes_are_listed_up_to_the_cap_and_the_rest_counted():
    many = [change(f"f{i:04}", "A") for i in range(p.MAX_LOG_CHANGES + 5)]
    listed, more = decisions.listed_changes(many)
    assert (len(listed), more, listed[0].path) == (p.MAX_LOG_CHANGES, 5, "f0000")
    assert decisions.listed_changes(many[:3]) == (many[:3], 0)


def entry(version: int, changes: int = 0, message: str = "m") -> p.LogEntry:
    return p.LogEntry(
        version=version,
        author="alice",
        time_ms=1,
        message=message,
        tree=T1,
        changes=[change(f"dir/file-{i:05}", "A", i) for i in range(changes)],
    )


def test_a_log_keeps_at_most_limit_entries_newest_first():
    entries = [entry(v) for v in (5, 4, 3, 2, 1)]
    assert decisions.fit_log(entries, 2, 10_000) == entries[:2]
    assert decisions.fit_log(entries, 100, 10_000) == entries
    assert decisions.fit_log([], 3, 10_000) == []


def test_a_log_reads_no_entry_beyond_its_limit():
    read = []

    def lazily():
        for v in (3, 2, 1):
            read.append(v)
            yield entry(v)

    decisions.fit_log(lazily(), 2, 10_000)
    assert read == [3, 2]


def test_a_log_drops_older_entries_first_when_the_bytes_run_out():
    entries = [entry(v, message="x" * 300) for v in (3, 2, 1)]
    one = decisions.entry_bytes(entries[0])
    assert decisions.fit_log(entries, 10, 2 * one + 10) == entries[:2]


def test_the_newest_entry_alone_too_large_keeps_the_changes_that_fit():
    big = entry(9, changes=p.MAX_LOG_CHANGES)
    budget = 5_000
    [kept] = decisions.fit_log([big, entry(8)], 10, budget)
    assert decisions.entry_bytes(kept) <= budget
    assert 0 < len(kept.changes) < p.MAX_LOG_CHANGES
    assert kept.changes == big.changes[: len(kept.changes)]
    assert len(kept.changes) + kept.changes_more == p.MAX_LOG_CHANGES
    counted = dataclasses.replace(big, changes_more=7)
    [kept] = decisions.fit_log([counted], 10, budget)
    assert len(kept.changes) + kept.changes_more == p.MAX_LOG_CHANGES + 7  # those left off before still count


def test_an_entry_too_large_even_without_its_changes_is_left_out():
    assert decisions.fit_log([entry(1, message="x" * 2000)], 10, 1000) == []


@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.integers(1, 12), st.integers(300, 6000))
def test_a_log_reply_always_fits_and_keeps_a_prefix(change_counts, limit, budget):
    entries = [entry(len(change_counts) - i, n) for i, n in enumerate(change_counts)]
    kept = decisions.fit_log(entries, limit, budget)
    assert len(kept) <= limit
    assert sum(decisions.entry_bytes(e) for e in kept) <= budget
    assert [e.version for e in kept] == [e.version for e in entries[: len(kept)]]
    assert kept[1:] == entries[1 : len(kept)]  # only the newest may lose changes
    if decisions.entry_bytes(dataclasses.replace(entries[0], changes=[], changes_more=99)) + 16 <= budget:
        assert kept  # there are versions: the newest is always listed


# ---------------------------------------------------------------- repository listings


def repo_access(owner: str, visibility: str = "private", **members: str) -> RepoAccess:
    return RepoAccess(owner, p.Visibility(visibility), {u: p.Access(level) for u, level in members.items()})


@pytest.mark.parametrize(
    "repo, word",
    [
        (repo_access("alice"), "owner"),
        (repo_access("alice", "public"), "owner"),
        (repo_access("bob", alice="admin"), "admin"),
        (repo_access("bob", alice="write"), "write"),
        (repo_access("bob", alice="read"), "read"),
        (repo_access("bob", "public", alice="write"), "write"),  # a member of a public one: their level
        (repo_access("bob", "public"), "public"),
        (repo_access("bob", "public", carol="admin"), "public"),
        (repo_access("bob"), None),
        (repo_access("bob", carol="read"), None),
    ],
)
def test_how_a_listing_names_a_user_s_access(repo, word):
    assert access.listed_access("alice", repo) == word
    readable = access.check_permission("alice", "pull", "r", repo) is None
    assert readable == (word is not None)  # listed exactly when it may be read


CANDIDATES = [
    ("a-mine", repo_access("alice")),
    ("b-secret", repo_access("bob")),
    ("c-public", repo_access("bob", "public")),
    ("d-shared", repo_access("carol", alice="read")),
    ("e-secret", repo_access("carol", bob="admin")),
    ("f-mine", repo_access("alice", "public")),
]


def test_a_listing_leaves_out_what_the_user_may_not_read():
    page, more = decisions.repos_page("alice", CANDIDATES, 100)
    assert page == [("a-mine", "owner"), ("c-public", "public"), ("d-shared", "read"), ("f-mine", "owner")]
    assert more is False
    assert decisions.repos_page("dave", CANDIDATES, 100) == ([("c-public", "public"), ("f-mine", "public")], False)


def test_a_listing_pages_by_limit_and_says_when_more_follow():
    assert decisions.repos_page("alice", CANDIDATES, 2) == ([("a-mine", "owner"), ("c-public", "public")], True)
    assert decisions.repos_page("alice", CANDIDATES, 4) == (decisions.repos_page("alice", CANDIDATES, 100)[0], False)
    assert decisions.repos_page("alice", CANDIDATES[:5], 3) == (
        [("a-mine", "owner"), ("c-public", "public"), ("d-shared", "read")],
        False,  # what follows is not the user's to read: no more
    )


def test_a_listing_reads_candidates_only_as_far_as_it_needs():
    read = []

    def lazily():
        for name, repo in CANDIDATES:
            read.append(name)
            yield name, repo

    decisions.repos_page("alice", lazily(), 1)
    assert read == ["a-mine", "b-secret", "c-public"]  # the next readable one says "more"


# ---------------------------------------------------------------- settling an outcome, deleting

RID = "ab" * 16


def stored(status: p.Status, head: int | None, version: int | None = None, message: str = "", repo: str = "r"):
    return {**Outcome(status, head, version, message, request="k" * 64, repo=repo).to_json()}


def trees(**by_version: str):
    return lambda version: by_version.get(f"v{version}")


def test_settling_an_unknown_request_cancels_it():
    answer, cancel = decisions.decide_settle(None, "r", RID, T1, 4, trees(), user="alice")
    assert answer == Outcome(p.Status.CANCELLED, 4, None, "never applied: it never will be now", repo="r")
    # stored for the request: the same words, whoever asks again; binding alice's requests to r only
    assert cancel == dataclasses.replace(answer, cancels=(("alice", "r"),))


def test_settling_an_accepted_push_of_the_same_tree():
    known = stored(p.Status.ACCEPTED, 3, 3, "accepted as version 3")
    answer, cancel = decisions.decide_settle(known, "r", RID, T1, 5, trees(v3=T1), user="alice")
    assert (answer, cancel) == (Outcome(p.Status.ACCEPTED, 5, 3, "accepted as version 3"), None)


def test_settling_an_accepted_init_of_the_same_tree():
    known = stored(p.Status.ACCEPTED, 1, 1, "created at version 1")
    answer, _ = decisions.decide_settle(known, "r", RID, T1, 1, trees(v1=T1), user="alice")
    assert (answer.status, answer.version) == (p.Status.ACCEPTED, 1)


@pytest.mark.parametrize(
    "known",
    [
        stored(p.Status.ACCEPTED, 3, 3, "accepted as version 3"),  # another tree became version 3
        stored(p.Status.ACCEPTED, 1, None, "bob now has write access to r"),  # not a push
    ],
)
def test_settling_an_accepted_request_of_another_tree_is_what_a_retry_would_get(known):
    answer, cancel = decisions.decide_settle(known, "r", RID, T1, 5, trees(v3=T2), user="alice")
    assert (answer, cancel) == (
        Outcome(p.Status.INVALID, 5, message="request id already used by another request"),
        None,
    )


def test_settling_a_push_whose_version_was_deleted_is_not_accepted():
    known = stored(p.Status.ACCEPTED, 3, 3, "accepted as version 3")
    answer, _ = decisions.decide_settle(known, "r", RID, T1, None, trees(), user="alice")
    assert answer.status == p.Status.INVALID


@pytest.mark.parametrize(
    "status, head, message",
    [
        (p.Status.REJECTED, 4, "version mismatch: head is 4, push based on 2"),
        (p.Status.MISSING_OBJECTS, 4, "1 object(s) were not uploaded completely"),
        (p.Status.INVALID, 4, "invalid tree: not a minigit tree"),
        (p.Status.UP_TO_DATE, 4, "nothing to push"),
        (p.Status.DENIED, 4, "permission denied: bob may not push to r (read only)"),
        (p.Status.NOT_FOUND, None, "no such repository"),
        (p.Status.EXISTS, 2, "repository already exists"),
    ],
)
def test_settling_a_refused_request_is_its_outcome(status, head, message):
    answer, cancel = decisions.decide_settle(
        stored(status, head, None, message), "r", RID, T1, 9, trees(v4=T1), user="alice"
    )
    assert (answer, cancel) == (Outcome(status, head, None, message), None)


def test_settling_a_cancelled_request_again_is_cancelled():
    known = stored(p.Status.CANCELLED, 2, message=decisions.NEVER_APPLIED)
    answer, cancel = decisions.decide_settle(known, "r", RID, T1, 3, trees(), user="alice")
    assert (answer, cancel) == (Outcome(p.Status.CANCELLED, 3, message=decisions.NEVER_APPLIED), None)


def test_settling_a_request_to_another_repository_tells_nothing_of_it():
    known = stored(p.Status.REJECTED, 7, message="version mismatch: head is 7, push based on 1", repo="secret")
    answer, cancel = decisions.decide_settle(known, "r", RID, T1, 2, trees(), user="alice")
    assert (answer, cancel) == (Outcome(p.Status.INVALID, 2, message=f"request {RID} was not a request to r"), None)


def cancelled_by(*pairs: tuple[str, str]) -> dict:
    return Outcome(
        p.Status.CANCELLED, 2, message=decisions.NEVER_APPLIED, request="k" * 64, repo=pairs[0][1], cancels=pairs
    ).to_json()


def test_a_cancellation_binds_only_requests_of_the_users_and_repositories_that_settled():
    known = cancelled_by(("alice", "r"), ("bob", "s"))
    assert decisions.binding(known, "alice", "r") == known
    assert decisions.binding(known, "bob", "s") == known
    for user, repo in (("mallory", "r"), ("alice", "s"), ("bob", "r"), ("mallory", "mal3")):
        assert decisions.binding(known, user, repo) is None  # decided as if nothing were stored
    request = stored(p.Status.ACCEPTED, 3, 3, "accepted as version 3")
    assert decisions.binding(request, "mallory", "mal3") == request  # a request's outcome binds every other
    own = stored(p.Status.CANCELLED, 2, message=decisions.NEVER_APPLIED)  # a settle's own outcome
    assert decisions.binding(own, "mallory", "mal3") == own
    assert decisions.binding(None, "alice", "r") is None


def test_settling_a_request_cancelled_by_another_user_s_settle_cancels_it_for_this_user_too():
    known = cancelled_by(("mallory", "mal3"))
    answer, cancel = decisions.decide_settle(known, "r", RID, T1, 4, trees(), user="alice")
    assert answer == Outcome(p.Status.CANCELLED, 4, message=decisions.NEVER_APPLIED)
    assert Outcome.from_json(cancel.to_json()).cancels == (("mallory", "mal3"), ("alice", "r"))
    assert (cancel.request, cancel.repo) == ("k" * 64, "mal3")  # the first settle's, as stored
    # asked again by one it binds: cancelled, nothing changes
    again, nothing = decisions.decide_settle(cancel.to_json(), "r", RID, T1, 5, trees(), user="alice")
    assert (again, nothing) == (Outcome(p.Status.CANCELLED, 5, message=decisions.NEVER_APPLIED), None)


def test_outcomes_are_stored_as_before_unless_they_cancel():
    assert "cancels" not in Outcome(p.Status.ACCEPTED, 1, 1, "m").to_json()
    doc = Outcome(p.Status.CANCELLED, 1, cancels=(("alice", "r"),)).to_json()
    assert doc["cancels"] == [["alice", "r"]]
    assert json.loads(json.dumps(doc)) == doc  # the same dict from either store
    assert Outcome.from_json(doc).cancels == (("alice", "r"),)


def test_deleting():
    assert decisions.decide_delete(None, "r") == Outcome(p.Status.NOT_FOUND, None, message="no such repository")
    assert decisions.decide_delete(4, "r") == Outcome(
        p.Status.ACCEPTED, None, message="r deleted (it was at version 4)"
    )


def test_outcomes_stored_before_they_named_their_repository_still_read():
    old = {"status": "accepted", "head": 1, "version": 1, "message": "created at version 1", "request": "k"}
    assert decisions.Outcome.from_json(old).repo == ""
