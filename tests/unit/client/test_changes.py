"""minigit.client.changes: manifest diffs and pull plans (pure, no disk)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from minigit import protocol as p
from minigit.client.changes import (
    Changes,
    Resolution,
    diff_manifests,
    find_path_collisions,
    merged_mode,
    parent_directories,
    plan_pull,
    resolve_conflict,
    same_content,
)


def fe(seed: str, size: int | None = None) -> p.FileEntry:
    return p.FileEntry(p.hash_bytes(seed.encode()), len(seed) if size is None else size)


A1, A2, A3 = fe("a1"), fe("a2"), fe("a3")
B1, B2 = fe("b1"), fe("b2")
C1 = fe("c1")


# ---------------------------------------------------------------- diff


def test_diff_manifests():
    old = {"keep": A1, "mod": B1, "gone": C1, "z/same": A2}
    new = {"keep": A1, "mod": B2, "new": C1, "a/new": A3, "z/same": A2}
    changes = diff_manifests(old, new)
    assert changes == Changes(added=["a/new", "new"], modified=["mod"], deleted=["gone"])
    assert changes.paths == {"a/new", "new", "mod", "gone"}
    assert not changes.empty
    assert changes.to_json() == {"added": ["a/new", "new"], "modified": ["mod"], "deleted": ["gone"]}


def test_diff_identical_and_empty():
    assert diff_manifests({}, {}).empty
    assert diff_manifests({"a": A1}, {"a": A1}).empty
    assert diff_manifests({}, {}) == Changes()


def test_diff_compares_content_not_size():
    # a manifest entry is identified by its sha; the size is informative
    assert diff_manifests({"a": p.FileEntry(A1.sha, 1)}, {"a": p.FileEntry(A1.sha, 2)}).empty
    assert diff_manifests({"a": A1}, {"a": p.FileEntry(A2.sha, A1.size)}).modified == ["a"]


def test_diff_is_sorted():
    old = {f"f{i}": A1 for i in (5, 3, 9)}
    new = {f"n{i}": A1 for i in (2, 8, 1)}
    changes = diff_manifests(old, new)
    assert changes.added == ["n1", "n2", "n8"]
    assert changes.deleted == ["f3", "f5", "f9"]


def test_same_content():
    assert same_content(None, None)
    assert same_content(A1, p.FileEntry(A1.sha, 99))
    assert not same_content(A1, None)
    assert not same_content(None, A1)
    assert not same_content(A1, A2)


@given(
    st.dictionaries(st.sampled_from("abcdef"), st.sampled_from([A1, A2, B1])),
    st.dictionaries(st.sampled_from("abcdef"), st.sampled_from([A1, A2, B1])),
)
def test_diff_property(old, new):
    changes = diff_manifests(old, new)
    assert set(changes.added) | set(changes.modified) | set(changes.deleted) == changes.paths
    assert len(changes.added) + len(changes.modified) + len(changes.deleted) == len(changes.paths)
    rebuilt = {k: v for k, v in old.items() if k not in changes.deleted}
    rebuilt.update({k: new[k] for k in changes.added + changes.modified})
    assert {k: v.sha for k, v in rebuilt.items()} == {k: v.sha for k, v in new.items()}
    assert diff_manifests(old, new).empty == (old == new)


# ---------------------------------------------------------------- pull plans


def test_upstream_only_changes_are_applied():
    base = {"a": A1, "b": B1, "c": C1}
    head = {"a": A2, "c": C1, "d/e": B2}
    plan = plan_pull(base, dict(base), head)
    assert not plan.refused
    assert plan.write == {"a": A2, "d/e": B2}
    assert plan.delete == ["b"]
    assert plan.conflicts == [] and plan.kept_local == []
    assert plan.upstream == Changes(added=["d/e"], modified=["a"], deleted=["b"])


def test_local_only_edits_are_kept():
    base = {"a": A1, "b": B1, "c": C1}
    local = {"a": A1, "b": B2, "new": A3}  # b edited, c deleted, new added
    head = {"a": A2, "b": B1, "c": C1}
    plan = plan_pull(base, local, head)
    assert not plan.refused
    assert plan.write == {"a": A2}
    assert plan.delete == []
    assert plan.kept_local == ["b", "c", "new"]


def test_same_file_changed_on_both_sides_is_a_conflict_to_merge():
    base = {"a": A1, "b": B1}
    plan = plan_pull(base, {"a": A2, "b": B1}, {"a": A3, "b": B2})
    assert not plan.refused
    assert plan.conflicts == ["a"]
    # the upstream-only change to b is applied beside the merge of a
    assert plan.write == {"b": B2} and plan.delete == []


def test_same_change_on_both_sides_is_fine():
    base = {"a": A1, "b": B1}
    plan = plan_pull(base, {"a": A2, "b": B1}, {"a": A2, "b": B2})
    assert not plan.refused
    assert plan.write == {"b": B2}  # a already holds the head's content
    assert plan.kept_local == []


def test_local_delete_against_upstream_edit_is_a_conflict():
    plan = plan_pull({"a": A1}, {}, {"a": A2})
    assert plan.conflicts == ["a"]
    assert plan.write == {} and plan.delete == []


def test_local_edit_against_upstream_delete_is_a_conflict():
    plan = plan_pull({"a": A1, "b": B1}, {"a": A2, "b": B1}, {"b": B2})
    assert plan.conflicts == ["a"]
    assert plan.write == {"b": B2} and plan.delete == []
    assert resolve_conflict(A2, None) == Resolution.KEEP_YOURS


def test_deleted_on_both_sides_is_fine():
    plan = plan_pull({"a": A1, "b": B1}, {"b": B1}, {"b": B2})
    assert not plan.refused
    assert plan.delete == []  # already gone
    assert plan.write == {"b": B2}
    assert plan.kept_local == []


def test_untracked_file_where_upstream_adds_one():
    base = {"a": A1}
    plan = plan_pull(base, {"a": A1, "n": B1}, {"a": A1, "n": B2})
    assert plan.conflicts == ["n"] and plan.write == {}
    same = plan_pull(base, {"a": A1, "n": B1}, {"a": A1, "n": B1})
    assert not same.refused and same.write == {} and same.kept_local == []


def test_upstream_adds_file_under_a_local_untracked_file():
    # local has a file 'x'; upstream adds 'x/y': x would have to be a directory
    plan = plan_pull({"a": A1}, {"a": A1, "x": B1}, {"a": A2, "x/y": B2})
    assert plan.refused
    assert plan.collisions == ["x"]
    assert plan.write == {} and plan.delete == []


def test_upstream_adds_file_where_a_local_directory_is():
    # local has an untracked 'x/y'; upstream adds a file 'x'
    plan = plan_pull({"a": A1}, {"a": A1, "x/y": B1}, {"a": A1, "x": B2})
    assert plan.refused
    assert plan.collisions == ["x"]
    assert plan.write == {} and plan.delete == []


def test_upstream_adds_deep_file_under_a_local_file():
    plan = plan_pull({}, {"d": B1}, {"d/e/f": B2})
    assert plan.collisions == ["d"]


def test_upstream_turns_a_file_into_a_directory():
    # no local edits: delete 'a', write 'a/b'
    plan = plan_pull({"a": A1}, {"a": A1}, {"a/b": B1})
    assert not plan.refused
    assert plan.delete == ["a"] and plan.write == {"a/b": B1}


def test_upstream_turns_a_directory_into_a_file():
    plan = plan_pull({"a/b": B1, "a/c": C1}, {"a/b": B1, "a/c": C1}, {"a": A1})
    assert not plan.refused
    assert plan.delete == ["a/b", "a/c"] and plan.write == {"a": A1}


def test_directory_into_file_with_a_local_untracked_file_in_it():
    plan = plan_pull({"a/b": B1}, {"a/b": B1, "a/mine": C1}, {"a": A1})
    assert plan.refused
    assert plan.collisions == ["a"]
    assert plan.write == {} and plan.delete == []


def test_conflicts_are_sorted_and_unique():
    base = {"z": A1, "m": A1, "b": A1}
    plan = plan_pull(base, {"z": B1, "m": B1, "b": B1}, {"z": C1, "m": C1, "b": C1})
    assert plan.conflicts == ["b", "m", "z"]


def test_nothing_to_do():
    base = {"a": A1}
    plan = plan_pull(base, base, base)
    assert not plan.refused and plan.write == {} and plan.delete == [] and plan.upstream.empty


def test_find_path_collisions_and_parents():
    assert parent_directories({"a/b/c", "d"}) == {"a", "a/b"}
    assert find_path_collisions({"a": A1}, {"a/b": B1}, []) == ["a"]
    assert find_path_collisions({"a": A1}, {"a/b": B1}, ["a"]) == []
    assert find_path_collisions({"a/b": A1}, {"a": B1}, ["a/b"]) == []
    assert find_path_collisions({"ab": A1}, {"a/b": B1}, []) == []


# ---------------------------------------------------------------- the property

PATHS = ["a", "b", "a/b", "a/c", "d/e", "d", "d/e/f"]
ENTRIES = [A1, A2, B1, C1]
trees = st.dictionaries(st.sampled_from(PATHS), st.sampled_from(ENTRIES), max_size=5).filter(
    lambda m: p.find_file_directory_clash(m) is None
)


def apply_plan(local, head, plan):
    """The paths after the pull; a conflict's file stays (merged or yours), or theirs comes back."""
    result = {k: v for k, v in local.items() if k not in plan.delete}
    result.update(plan.write)
    for path in plan.conflicts:
        result[path] = local.get(path) or head[path]
    return result


@settings(max_examples=300)
@given(trees, trees, trees)
def test_plan_pull_property(base, local, head):
    plan = plan_pull(base, local, head)
    upstream = diff_manifests(base, head).paths
    mine = diff_manifests(base, local).paths
    both = {path for path in upstream & mine if not same_content(local.get(path), head.get(path))}
    assert set(plan.conflicts) == both
    assert plan.kept_local == sorted(mine - upstream)
    if plan.refused:
        assert plan.write == {} and plan.delete == []
        return
    result = apply_plan(local, head, plan)
    for path in upstream - both:
        assert same_content(result.get(path), head.get(path)), path
    for path in mine - upstream:
        assert result.get(path) == local.get(path), path
    # nothing outside both change sets moves
    for path in set(base) - upstream - mine:
        assert result[path] == local[path]
    # the result can exist on disk
    assert p.find_file_directory_clash(result) is None
    # only upstream paths are touched
    assert set(plan.write) | set(plan.delete) <= upstream


@settings(max_examples=300)
@given(trees, trees, trees)
def test_plan_refused_exactly_when_needed(base, local, head):
    """Refused iff the result would need a path to be both a file and a directory (a path
    changed on both sides is merged: it stays where it is, or theirs comes back)."""
    plan = plan_pull(base, local, head)
    upstream = diff_manifests(base, head).paths
    mine = diff_manifests(base, local).paths
    naive = {k: v for k, v in local.items() if k not in (upstream - mine) or k in head}
    naive.update({k: head[k] for k in upstream - mine if k in head})
    naive.update({k: head[k] for k in upstream & mine if k in head and k not in local})
    collision = p.find_file_directory_clash(naive) is not None
    assert plan.refused == collision


def test_resolutions_and_modes():
    X = p.FileEntry(A1.sha, A1.size, p.FileMode.EXECUTABLE)
    L = p.FileEntry(B1.sha, B1.size, p.FileMode.SYMLINK)
    assert resolve_conflict(A2, A3) == Resolution.MERGE
    assert resolve_conflict(None, A3) == Resolution.TAKE_THEIRS
    assert resolve_conflict(A2, None) == Resolution.KEEP_YOURS
    assert resolve_conflict(L, A3) == resolve_conflict(A2, L) == Resolution.KEEP_BOTH
    # upstream's mode unless you changed yours
    assert merged_mode(A1, A2, X) == p.FileMode.EXECUTABLE
    assert merged_mode(A1, X, A3) == p.FileMode.EXECUTABLE
    assert merged_mode(None, A2, X) == p.FileMode.REGULAR
