"""`minigit-server audit`: the log folded with the replicas' own code, in Apache
Spark (local mode, one session for the test session) and in-process, against real
replicas on real Kafka. Both engines must give the same result; a replica whose
store was changed behind its back is named, and so is every replica when all were
changed alike (which `verify`, comparing replicas with each other, cannot see).
`minigit-server activity`'s figures match a scripted sequence of operations exactly.

Without PySpark (the 'spark' extra) or Java the Spark half is skipped, except
under CI=true, where it fails: CI installs the extra (scripts/setup.sh).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from minigit import identity
from minigit.client import operations
from minigit.errors import MinigitError, PushRejected
from minigit_server import audit, health
from minigit_server.apply import Authority
from minigit_server.bus import Bus
from minigit_server.replica import HEARTBEAT_INTERVAL_S, store_path
from minigit_server.server_key import load_server_key, server_key_path

pytestmark = pytest.mark.integration
SERVER = str(Path(sys.executable).with_name("minigit-server"))
REPLICAS = ["1", "2", "3"]


def in_ci() -> bool:
    import os

    return os.environ.get("CI", "").lower() in {"true", "1", "yes"}


@pytest.fixture(scope="session")
def spark():
    """One Spark session (local, 2 cores) for every test of the session."""
    from minigit_server.sparkjobs import runtime

    try:
        session = runtime.get_session("local[2]", "minigit-tests")
    except MinigitError as error:
        if in_ci():
            pytest.fail(f"Spark is needed under CI: {error.message} ({error.hint})")
        pytest.skip(f"Spark unavailable: {error.message}")
    yield session
    session.stop()


def authority_of(service) -> Authority:
    key = load_server_key(server_key_path(service.data_dir))
    return Authority(service.namespace, identity.public_key_text(key.public_key()))


def live_views(service, bus: Bus) -> list[health.ReplicaView]:
    beats, pages = bus.read_reports()
    views = health.replica_views(beats, pages)
    return health.live_beats(views, bus.reports_read_ms, HEARTBEAT_INTERVAL_S)


def audit_with(service, engine, spark_session=None) -> tuple[list[audit.PartitionAudit], list[audit.AuditVerdict]]:
    """What `minigit-server audit` computes, in this process (one Spark session)."""
    bus = Bus(service.settings, client_id="test-audit")
    try:
        ends = bus.log_end_offsets()
        views = live_views(service, bus)
        if engine == "local":
            with audit.quiet_apply_log():
                audits = audit.audit_log(lambda n, end: bus.scan_log(n, end, 60), ends, authority_of(service))
        else:
            from minigit_server.sparkjobs import audit_job, runtime

            options = runtime.spark_kafka_options(service.bootstrap, {})
            audits = audit_job.audit_log(
                spark_session, options, service.settings.topics.log, ends, authority_of(service)
            )
        return audits, audit.compare(audits, views)
    finally:
        bus.close()


def wait_for(condition, timeout: float = 12 * HEARTBEAT_INTERVAL_S, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(HEARTBEAT_INTERVAL_S / 4)
    return value


def reports_current(service) -> bool:
    """Every live replica's reports describe the whole log (so a comparison is not 'behind')."""
    bus = Bus(service.settings, client_id="test-audit-wait")
    try:
        ends = bus.log_end_offsets()
        views = live_views(service, bus)
        return len(views) == len(REPLICAS) and all(
            view.position(n, name) >= ends[n] for view in views for name in view.repos for n in ends
        )
    finally:
        bus.close()


def seed_and_concurrent_pushes(service, tmp_path: Path) -> None:
    """The seed's scenario in brief (a repository, a rejected stale push, an accepted
    one), a second repository, then four clients pushing to one at once."""
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "README.md").write_text("the lab report\n")
    operations.init_repository(origin, "lab", service.options())
    service.register("bryan", "willy", *(f"c{n}" for n in range(4)))
    service.share("lab", "bryan", "willy", *(f"c{n}" for n in range(4)))
    b, c = tmp_path / "b", tmp_path / "c"
    operations.clone_repository("lab", b, service.options(user="bryan"))
    (origin / "src.py").write_text("print('v2')\n")
    operations.push_workdir(origin, service.options(), "version 2")
    operations.clone_repository("lab", c, service.options(user="willy"))
    (b / "b.txt").write_text("B\n")
    with pytest.raises(PushRejected):
        operations.push_workdir(b, service.options(user="bryan"), "B")
    (c / "NOTES.md").write_text("C's notes\n")
    operations.push_workdir(c, service.options(user="willy"), "C")

    other = tmp_path / "other"
    other.mkdir()
    (other / "f.txt").write_text("other\n")
    operations.init_repository(other, "other", service.options())

    lock = threading.Lock()
    accepted = []

    def client(n: int) -> None:
        work = tmp_path / f"c{n}"
        options = service.options(user=f"c{n}")
        operations.clone_repository("lab", work, options)
        for round_ in range(3):
            (work / f"c{n}.txt").write_text(f"round {round_}\n")
            while True:
                try:
                    result = operations.push_workdir(work, options, f"c{n} #{round_}")
                    break
                except PushRejected:
                    operations.pull_workdir(work, options)
            with lock:
                accepted.append(result.new_version)

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(client, n) for n in range(4)]:
            future.result()
    assert sorted(accepted) == list(range(4, 16))
    service.wait_converged(REPLICAS)
    wait_for(lambda: reports_current(service), what="every replica to report the whole log")


def verdicts_json(verdicts: list[audit.AuditVerdict]) -> list[dict]:
    return [v.to_json() for v in verdicts]


def test_audit_agrees_then_names_a_tampered_replica(service, tmp_path: Path, spark) -> None:
    seed_and_concurrent_pushes(service, tmp_path)

    local, local_verdicts = audit_with(service, "local")
    folded, spark_verdicts = audit_with(service, "spark", spark)
    # The same computation, whichever engine: partition by partition, repository by repository.
    assert [a.to_json() for a in folded] == [a.to_json() for a in local]
    assert verdicts_json(spark_verdicts) == verdicts_json(local_verdicts)
    by_name = {v.repo: v for v in spark_verdicts}
    assert set(by_name) == {"lab", "other"}
    assert all(v.status == health.Verdict.AGREE for v in spark_verdicts), verdicts_json(spark_verdicts)
    assert (by_name["lab"].head, by_name["lab"].versions) == (15, 15)
    assert by_name["lab"].heads == {"1": 15, "2": 15, "3": 15}
    assert sum(a.records for a in folded) == sum(service.bus.log_end_offsets().values())

    # The command itself (local engine: no second Spark session in this process's test).
    done = subprocess.run(
        [SERVER, "audit", "--engine", "local", "--json", "--data-dir", str(service.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=service.env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["repositories"] == verdicts_json(local_verdicts)

    # Change one version row of replica 2 behind its back: its next reports carry it.
    with sqlite3.connect(store_path(service.data_dir, "2"), timeout=30) as db:
        db.execute("UPDATE versions SET message = 'tampered' WHERE repo = 'lab' AND version = 2")

    def lab_disagrees():
        verdicts = {v.repo: v for v in audit_with(service, "local")[1]}
        return verdicts["lab"] if verdicts["lab"].status == health.Verdict.DISAGREE else None

    lab = wait_for(lab_disagrees, what="replica 2's reports to show the changed row")
    assert lab.disagreeing == ["2"]
    _, spark_verdicts = audit_with(service, "spark", spark)
    by_name = {v.repo: v for v in spark_verdicts}
    assert by_name["lab"].status == health.Verdict.DISAGREE and by_name["lab"].disagreeing == ["2"]
    assert by_name["other"].status == health.Verdict.AGREE

    text = subprocess.run(
        [SERVER, "audit", "--engine", "local", "--data-dir", str(service.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=service.env(),
    )
    assert text.returncode == 3, text.stdout + text.stderr
    assert "DISAGREE" in text.stdout and "lab: replica 2 differs from the log" in text.stdout

    # The same change on the other two: the replicas agree with each other again
    # (verify passes), but not with the log, and the audit names all three.
    for replica in ("1", "3"):
        with sqlite3.connect(store_path(service.data_dir, replica), timeout=30) as db:
            db.execute("UPDATE versions SET message = 'tampered' WHERE repo = 'lab' AND version = 2")

    def all_three_differ():
        verdicts = {v.repo: v for v in audit_with(service, "local")[1]}
        return verdicts["lab"] if verdicts["lab"].disagreeing == REPLICAS else None

    wait_for(all_three_differ, what="every replica's reports to show the changed row")
    verify = subprocess.run(
        [SERVER, "verify", "--wait", "0"], capture_output=True, text=True, timeout=120, env=service.env()
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr  # alike: verify cannot tell
    _, spark_verdicts = audit_with(service, "spark", spark)
    lab = {v.repo: v for v in spark_verdicts}["lab"]
    assert lab.status == health.Verdict.DISAGREE and lab.disagreeing == REPLICAS


def test_activity_counts_a_scripted_sequence_exactly(service, tmp_path: Path, spark) -> None:
    """tester creates a repository and shares it with bob; bob clones; tester pushes
    twice; bob's stale push is rejected, he pulls and pushes again."""
    from minigit_server import activity
    from minigit_server.audit_cli import read_figures
    from minigit_server.bus import ensure_compacted_topic
    from minigit_server.sparkjobs import activity_job, runtime

    origin, bob = tmp_path / "origin", tmp_path / "bob"
    origin.mkdir()
    (origin / "a.txt").write_text("a\n")
    operations.init_repository(origin, "act", service.options())
    service.register("bob")
    service.share("act", "bob")
    operations.clone_repository("act", bob, service.options(user="bob"))
    for n in range(2):
        (origin / "a.txt").write_text(f"a {n}\n")
        operations.push_workdir(origin, service.options(), f"tester {n}")
    (bob / "b.txt").write_text("b\n")
    with pytest.raises(PushRejected):
        operations.push_workdir(bob, service.options(user="bob"), "stale")
    operations.pull_workdir(bob, service.options(user="bob"))
    operations.push_workdir(bob, service.options(user="bob"), "bob")
    service.wait_converged(REPLICAS)

    topic = activity_job.activity_topic(service.settings.topics)
    ensure_compacted_topic(service.settings, topic)
    options = runtime.spark_kafka_options(service.bootstrap, {})
    partitions = service.bus.log_partition_count()
    query, tracker, _ = activity_job.start(
        spark, options, service.settings.topics, partitions, authority_of(service), once=True
    )
    try:
        query.awaitTermination(300)
    finally:
        query.stop()
        tracker.close()
    figures = read_figures(service.settings)
    shown = subprocess.run(
        [SERVER, "activity", "--json"], capture_output=True, text=True, timeout=120, env=service.env()
    )
    assert shown.returncode == 0 and json.loads(shown.stdout) == {"figures": figures}, shown.stderr
    totals = activity.totals(figures)
    print(json.dumps({f"{k[0]}/{k[1]}": v for k, v in totals.items()}, indent=1))
    assert {key for key in totals if key[0] == "repo"} == {("repo", "act")}  # registrations are users' only
    repo = totals[("repo", "act")]
    assert (repo["pushes_accepted"], repo["pushes_rejected"], repo["clones"], repo["pulls"]) == (3, 1, 1, 1)
    assert repo["requests"]["push"] == 4 and repo["requests"]["init"] == 1
    bob_figures = totals[("user", "bob")]
    assert (bob_figures["pushes_accepted"], bob_figures["pushes_rejected"]) == (1, 1)
    assert (bob_figures["clones"], bob_figures["pulls"]) == (1, 1)
    tester = totals[("user", "tester")]
    assert (tester["pushes_accepted"], tester["pushes_rejected"], tester["clones"]) == (2, 0, 0)
    assert repo["bytes_in"] > 0 and repo["bytes_out"] > 0
    latencies = [doc["latency_ms"] for doc in figures if doc["scope"] == "repo" and doc["name"] == "act"]
    assert sum(v["count"] for by_key in latencies for k, v in by_key.items() if k.startswith("push@")) == 4


def test_activity_json_before_the_job_ever_ran_is_no_figures(bare_service) -> None:
    """No activity topic yet (the streaming job never ran in this namespace): no
    figures, not 'cannot reach Kafka' after a timeout (Kafka is there)."""
    shown = subprocess.run(
        [SERVER, "activity", "--json"], capture_output=True, text=True, timeout=120, env=bare_service.env()
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert json.loads(shown.stdout) == {"figures": []}


def test_audit_spark_json_is_json_alone(service, tmp_path: Path) -> None:
    """`audit --engine spark --json` in a process of its own: stdout is the JSON
    document alone (the JVM Spark starts inherits stdout, where log4j writes its own
    warnings), and a tombstone in the log changes nothing (every replica skips it)."""
    from minigit.kafka_clients import open_producer
    from minigit.protocol import log_partition

    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "a.txt").write_text("a\n")
    operations.init_repository(origin, "lab", service.options())
    producer = open_producer(service.settings)
    try:
        home = log_partition("lab", service.bus.log_partition_count())
        producer.send(service.settings.topics.log, key=b"lab", value=None, partition=home).get(30)
    finally:
        producer.close()
    service.wait_converged(REPLICAS)
    wait_for(lambda: reports_current(service), what="every replica to report the whole log")
    done = subprocess.run(
        [SERVER, "audit", "--engine", "spark", "--master", "local[2]", "--json", "--data-dir", str(service.data_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env=service.env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert [(v["repo"], v["status"]) for v in report["repositories"]] == [("lab", "agree")]
