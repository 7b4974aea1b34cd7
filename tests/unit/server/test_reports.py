"""Digests kept at apply time and the report pages a heartbeat summarises: what
is kept incrementally equals what the rows give afresh, on both stores; the
reporter publishes changed pages only; status and verify read pages as they
read inline reports."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigit import protocol as p
from minigit_server import digests, health
from minigit_server.reports import REPUBLISH_EVERY, RepoReporter
from minigit_server.store import MemoryStore, RepoState, SqliteStore, Store, VersionInfo

NAMES = ["a", "b", "c", "repo-1", "zz"]
SHA = "a" * 64

# One step of what applying does to repositories: (kind, name, value).
steps = st.lists(
    st.tuples(
        st.sampled_from(["create", "push", "members", "visibility", "delete"]),
        st.sampled_from(NAMES),
        st.integers(0, 3),
    ),
    max_size=40,
)


def run_steps(store: Store, ops: list[tuple[str, str, int]], start: int = 0) -> None:
    """Apply-like changes, each in its own transaction: as applying does, a version is
    appended in order, and only once its tree is in the store."""
    for offset, (kind, name, value) in enumerate(ops, start):
        with store.transaction():
            repo = store.get_repo(name)
            partition = value % 2
            if kind == "create" and repo is None:
                store.put_blob(partition, SHA, 1, 1)
                store.put_repo(RepoState(name, 1, partition, offset, owner="ann", visibility="private"))
                store.add_version(name, VersionInfo(1, SHA, "ann", "first", offset, f"{offset:032x}"))
            elif repo is None:
                continue
            elif kind == "push":
                head = repo.head + 1
                tree = SHA if value % 2 else "b" * 64
                store.put_blob(repo.partition, tree, 1, 1)
                store.put_repo(RepoState(name, head, repo.partition, offset, repo.owner, repo.visibility))
                store.add_version(name, VersionInfo(head, tree, "bob", f"v{value}", offset, f"{offset:032x}"))
            elif kind == "members":
                store.set_members(name, {f"user{n}": "write" for n in range(value)})
                store.put_repo(RepoState(name, repo.head, repo.partition, offset, repo.owner, repo.visibility))
            elif kind == "visibility":
                visibility = "public" if value % 2 else "private"
                store.put_repo(RepoState(name, repo.head, repo.partition, offset, repo.owner, visibility))
            elif kind == "delete":
                store.delete_repo(name)
            for partition in (0, 1):
                store.set_applied(partition, offset + 1)


def expected_pages(store: Store) -> dict[tuple[int, int], tuple[int, int]]:
    """Every page's (count, sum) from the rows afresh (pages once used stay, empty)."""
    elements: dict[tuple[int, int], list[int]] = {}
    for repo in store.list_repos():
        _, digest = store.recompute_digest(repo.name)
        key = (repo.partition, p.report_page_of(repo.name))
        elements.setdefault(key, []).append(digests.report_element(repo.name, repo.head, digest, repo.changed_at))
    return {key: digests.page_sum(found) for key, found in elements.items()}


def check_kept_equals_recomputed(store: Store) -> None:
    for repo in store.list_repos():
        assert store.digest_state(repo.name) == store.recompute_digest(repo.name), repo.name
        assert store.kept_digest(repo.name) == store.repo_digest(repo.name)
    pages = {key: value for key, value in store.report_pages().items() if value[0]}
    assert pages == expected_pages(store)
    assert all(total == 0 for count, total in store.report_pages().values() if count == 0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_kept_digests_and_page_sums_equal_what_the_rows_give(ops):
    memory = MemoryStore()
    run_steps(memory, ops)
    check_kept_equals_recomputed(memory)
    with tempfile.TemporaryDirectory() as folder:
        sqlite = SqliteStore(Path(folder) / "store.sqlite")
        try:
            run_steps(sqlite, ops)
            check_kept_equals_recomputed(sqlite)
            # Both stores keep the same: the digests depend only on what was applied.
            assert {r.name: sqlite.kept_digest(r.name) for r in sqlite.list_repos()} == {
                r.name: memory.kept_digest(r.name) for r in memory.list_repos()
            }
            assert {k: v for k, v in sqlite.report_pages().items() if v[0]} == {
                k: v for k, v in memory.report_pages().items() if v[0]
            }
        finally:
            sqlite.close()


def test_a_tree_lost_later_changes_the_rows_digest_and_the_audit_reports_that():
    store = MemoryStore()
    run_steps(store, [("create", "a", 0), ("create", "b", 0)])
    kept = store.kept_digest("a")
    reporter = RepoReporter("1")
    assert reporter.audit(store) == []
    del store.blobs[(0, SHA)]  # a damaged store: the tree of both is gone
    assert store.repo_digest("a") != kept == store.kept_digest("a")
    assert reporter.audit(store) == ["a", "b"]
    assert store.kept_digest("a") == store.repo_digest("a") != kept
    check_kept_equals_recomputed(store)
    store.put_blob(0, SHA, 1, 1)  # repaired: the audit goes back to the applied digest
    assert reporter.audit(store) == ["a", "b"] and store.kept_digest("a") == kept


def test_the_audit_goes_round_the_repositories_a_few_at_a_time():
    store = MemoryStore()
    run_steps(store, [("create", name, 0) for name in NAMES])
    reporter = RepoReporter("1")
    seen = []
    for _ in range(3):
        before = reporter.audit_after
        reporter.audit(store, limit=2)
        seen.append((before, reporter.audit_after))
    assert seen == [("", "b"), ("b", "repo-1"), ("repo-1", "")]


# ---------------------------------------------------------------- report pages


def beat_of(reporter_store: Store, reports, replica: str = "1", repos=None) -> p.Heartbeat:
    """The heartbeat of ``reports``; with ``repos``, one of an older replica, listing them inline."""
    return p.Heartbeat(
        replica=replica,
        host="h",
        pid=1,
        started_ms=1,
        sent_ms=2,
        serving=[],
        applied=reports.applied,
        log_end={},
        partitions={} if repos else reports.partitions,
        repos=repos or {},
    )


def make_store(count: int) -> MemoryStore:
    """``count`` repositories, created directly (a MemoryStore transaction copies it all)."""
    store = MemoryStore()
    for n in range(count):
        name = f"r{n:04d}"
        store.put_blob(n % 2, SHA, 1, 1)
        store.put_repo(RepoState(name, 1, n % 2, n, owner="ann", visibility="private"))
        store.add_version(name, VersionInfo(1, SHA, "ann", "first", n, f"{n:032x}"))
    for partition in (0, 1):
        store.set_applied(partition, count)
    return store


def test_a_heartbeat_stays_small_and_pages_stay_under_the_limit_with_many_repositories():
    store = make_store(2000)
    reports = RepoReporter("1").collect(store)
    beat = beat_of(store, reports)
    assert len(beat.to_bytes()) < 20_000
    assert sum(len(page.repos) for page in reports.pages) == 2000
    assert max(len(page.to_bytes()) for page in reports.pages) < 100_000
    assert {n: r.repos for n, r in reports.partitions.items()} == {0: 1000, 1: 1000}
    for page in reports.pages:  # every page record parses back as it went
        assert p.parse_message(page.to_bytes(), allowed=(p.RepoPage,)) == page


def test_the_reporter_publishes_only_changed_pages_and_a_tombstone_for_an_emptied_one():
    store = make_store(200)
    reporter = RepoReporter("1")
    first = reporter.collect(store)
    reporter.sent(first)
    assert len(first.pages) == len([d for d in first.digests.values() if d])
    assert reporter.collect(store).pages == []  # nothing changed: nothing to publish
    run_steps(store, [("push", "r0007", 0)], start=200)
    changed = reporter.collect(store)
    assert [(page.partition, page.page) for page in changed.pages] == [(1, p.report_page_of("r0007"))]
    assert changed.pages[0].repos["r0007"].head == 2
    reporter.sent(changed)
    alone = [r.name for r in store.list_repos() if p.report_page_of(r.name) == p.report_page_of("r0007")]
    run_steps(store, [("delete", name, 0) for name in alone if store.get_repo(name).partition == 1], start=201)
    emptied = reporter.collect(store)
    assert emptied.emptied == [(1, p.report_page_of("r0007"))] and emptied.pages == []


def views_and_inline(stores: dict[str, Store]) -> tuple[list, list]:
    views, inline = [], []
    for rid, store in stores.items():
        reports = RepoReporter(rid).collect(store)
        views += health.replica_views([beat_of(store, reports, rid)], reports.pages)
        repos = {}
        for page in reports.pages:
            repos.update(page.repos)
        inline.append(beat_of(store, reports, rid, repos))
    return views, inline


def test_verify_reads_pages_as_it_reads_inline_reports():
    stores = {rid: make_store(300) for rid in ("1", "2", "3")}
    run_steps(stores["2"], [("push", "r0005", 0)], start=300)  # replica 2 alone applied one more write
    views, inline = views_and_inline(stores)
    by_pages = {v.repo: v for v in health.verify_repositories(views)}
    assert by_pages == {v.repo: v for v in health.verify_repositories(inline)}
    assert len(by_pages) == 300
    assert by_pages["r0005"].status == health.Verdict.BEHIND and by_pages["r0005"].behind == {"1": 1, "3": 1}
    assert {v.status for name, v in by_pages.items() if name != "r0005"} == {health.Verdict.AGREE}
    assert health.all_heads(views)["r0005"] == {"1": 1, "2": 2, "3": 1}
    # the same write applied differently on replica 3: it disagrees
    run_steps(stores["1"], [("push", "r0005", 0)], start=300)
    run_steps(stores["3"], [("push", "r0005", 1)], start=300)
    views, inline = views_and_inline(stores)
    by_pages = {v.repo: v for v in health.verify_repositories(views)}
    assert by_pages == {v.repo: v for v in health.verify_repositories(inline)}
    assert by_pages["r0005"].status == health.Verdict.DISAGREE and by_pages["r0005"].disagreeing == ["3"]


def test_a_stale_or_missing_page_counts_as_behind_never_as_agreement():
    store = make_store(50)
    reports = RepoReporter("1").collect(store)
    old = {(page.partition, page.page): page for page in reports.pages}
    run_steps(store, [("push", "r0003", 1)], start=60)
    store.set_applied(1, 500)
    newer = RepoReporter("1").collect(store)
    key = (1, p.report_page_of("r0003"))
    beat = beat_of(store, newer)
    stale = health.ReplicaView.of(beat, old)  # the newer page has not been read
    assert stale.position(1, "r0003") == 0 and "r0003" not in stale.repos  # not what the heartbeat names: unknown
    missing = health.ReplicaView.of(beat, {k: v for k, v in old.items() if k != key})
    assert missing.position(1, "r0003") == 0 and "r0003" not in missing.repos
    current = health.ReplicaView.of(
        beat, {**old, key: next(pg for pg in newer.pages if (pg.partition, pg.page) == key)}
    )
    assert current.position(1, "r0003") == 500 and current.repos["r0003"].head == 2
    assert current.sent_ms == beat.sent_ms  # a view reads as its heartbeat everywhere else


def test_a_page_newer_than_its_heartbeat_counts_as_behind_never_as_a_disagreement():
    """Read between a page and the heartbeat that follows it, the page is newer than
    the heartbeat: it is not the page the heartbeat names, so what it says is not
    taken (anyone may write a page); the replica looks behind on it until the next
    heartbeat names it, and a deletion it already shows is never a disagreement."""
    stores = {rid: make_store(20) for rid in ("1", "2")}
    old_beat = beat_of(stores["1"], RepoReporter("1").collect(stores["1"]))
    run_steps(stores["1"], [("delete", "r0004", 0)], start=20)  # replica 1 applied the deletion, offset 20
    newer = RepoReporter("1").collect(stores["1"])
    view_1 = health.ReplicaView.of(old_beat, {(pg.partition, pg.page): pg for pg in newer.pages})
    reports_2 = RepoReporter("2").collect(stores["2"])  # replica 2 has not applied it yet
    view_2 = health.replica_views([beat_of(stores["2"], reports_2, "2")], reports_2.pages)[0]
    assert "r0004" not in view_1.repos and view_1.position(0, "r0004") == 0
    verdict = {v.repo: v for v in health.verify_repositories([view_1, view_2])}["r0004"]
    assert verdict.status == health.Verdict.BEHIND and set(verdict.behind) == {"1"} and verdict.disagreeing == []


def test_a_forged_page_never_makes_a_diverged_replica_agree():
    """An outside tester hid a repository and copied another replica's report into
    pages of a diverged replica: verify said every repository agreed. Only the page
    a heartbeat names, whose content hashes to that name, with every report filed
    under the page's own partition, is read."""
    good, bad = make_store(30), make_store(30)
    run_steps(bad, [("push", "r0002", 1)], start=30)  # replica 2 diverged on r0002
    for store in (good, bad):
        store.set_applied(0, 40)
        store.set_applied(1, 40)
    reports_1, reports_2 = RepoReporter("1").collect(good), RepoReporter("2").collect(bad)
    view_1 = health.replica_views([beat_of(good, reports_1, "1")], reports_1.pages)[0]
    beat_2 = beat_of(bad, reports_2, "2")
    key = (good.get_repo("r0002").partition, p.report_page_of("r0002"))
    honest = {(pg.partition, pg.page): pg for pg in reports_2.pages}
    copied = {(pg.partition, pg.page): pg for pg in reports_1.pages}[key]

    def verdict(page: p.RepoPage) -> health.RepoVerdict:
        view_2 = health.replica_views([beat_2], [*(pg for k, pg in honest.items() if k != key), page])[0]
        return {v.repo: v for v in health.verify_repositories([view_1, view_2])}["r0002"]

    assert verdict(honest[key]).status == health.Verdict.DISAGREE
    forged = [
        dataclasses.replace(copied, replica="2", applied=10**9),  # replica 1's page, another digest
        dataclasses.replace(copied, replica="2", digest=honest[key].digest),  # claims the named digest
        dataclasses.replace(honest[key], repos={}),  # hides every repository of the page
    ]
    for page in forged:
        assert verdict(page).status != health.Verdict.AGREE, page
    moved = {
        name: dataclasses.replace(report, partition=report.partition + 1) for name, report in honest[key].repos.items()
    }
    view_2 = health.replica_views([beat_2], [dataclasses.replace(honest[key], repos=moved)])[0]
    assert view_2.position(*key[:1], "r0002") == 0 and "r0002" not in view_2.repos


def test_every_page_is_published_again_now_and_then():
    """A tombstone someone wrote over a page (or a page lost) is mended without a
    change to the page: every REPUBLISH_EVERY heartbeats, every page goes again."""
    store = make_store(40)
    reporter = RepoReporter("1")
    first = reporter.collect(store)
    reporter.sent(first)
    quiet = [reporter.collect(store) for _ in range(REPUBLISH_EVERY - 1)]
    for reports in quiet:
        reporter.sent(reports)
    assert all(reports.pages == [] for reports in quiet)
    again = reporter.collect(store)
    keys = sorted((pg.partition, pg.page) for pg in first.pages)
    assert sorted((pg.partition, pg.page) for pg in again.pages) == keys
