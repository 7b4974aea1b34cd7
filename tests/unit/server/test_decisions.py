"""minigit_server.decisions: the server's pure decisions (the seed's outcome table)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigit import protocol as p
from minigit_server import decisions
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
    assert decisions.decide_pull(head, 0) == PullDecision(p.Status.OK, head, f"head is version {head}")


@pytest.mark.parametrize("head, version", [(1, 1), (5, 5)])
def test_pull_already_up_to_date(head, version):
    assert decisions.decide_pull(head, version) == PullDecision(p.Status.UP_TO_DATE, head, "already up to date")


@pytest.mark.parametrize("head, version", [(2, 1), (5, 3)])
def test_pull_behind_is_updated(head, version):
    assert decisions.decide_pull(head, version) == PullDecision(p.Status.OK, head, f"head is version {head}")


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
