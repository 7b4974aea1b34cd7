"""minigit_server.audit (the log folded with the replicas' own apply code, compared
with replicas' reports) and the pins of the Spark jobs (no Kafka, no Spark here)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from signing import AUTHORITY
from test_apply import Log

from minigit import protocol as p
from minigit_server import audit, digests, health
from minigit_server.health import Verdict
from minigit_server.sparkjobs import runtime
from minigit_server.store import MemoryStore

ROOT = Path(__file__).resolve().parents[3]


def fold(log: Log, partitions: int = 1) -> audit.PartitionAudit:
    return audit.audit_partition(0, ((r.offset, r.value) for r in log.records), partitions, AUTHORITY)


def sample_log() -> Log:
    log = Log()
    v1 = log.tree({"a.txt": b"one\n"})
    log.create(v1)
    v2 = log.tree({"a.txt": b"two\n"})
    log.push(1, v2)
    log.push(1, log.tree({"a.txt": b"stale\n"}))  # rejected: based on 1, head is 2
    log.create(log.tree({"b.txt": b"b\n"}, repo="gone"), repo="gone")
    log.delete("gone")
    return log


def test_the_fold_is_what_a_replica_applying_the_log_reports() -> None:
    log = sample_log()
    folded = fold(log)
    replica = MemoryStore()
    audit.apply.apply_records(replica, log.records, 1, AUTHORITY)
    reported = {
        name: report for page in range(p.REPORT_PAGES) for name, report in replica.page_reports(0, page).items()
    }
    assert [repo.name for repo in folded.repos] == ["repo"]
    repo = folded.repos[0]
    assert (repo.head, repo.versions) == (2, 2)
    assert (repo.head, repo.digest, repo.partition, repo.changed_at) == (
        reported["repo"].head,
        reported["repo"].digest,
        reported["repo"].partition,
        reported["repo"].changed_at,
    )
    assert folded.deleted == {"gone": len(log.records) - 1}
    assert (folded.first, folded.records, folded.end, folded.complete) == (0, len(log.records), len(log.records), True)
    assert audit.PartitionAudit.from_json(folded.to_json()) == folded


def test_records_out_of_log_order_are_refused() -> None:
    log = sample_log()
    shuffled = [(r.offset, r.value) for r in reversed(log.records)]
    with pytest.raises(ValueError, match="not in log order"):
        audit.audit_partition(0, shuffled, 1, AUTHORITY)


def test_a_partition_whose_beginning_was_deleted_is_incomplete() -> None:
    log = sample_log()
    folded = audit.audit_partition(0, ((r.offset, r.value) for r in log.records[3:]), 1, AUTHORITY)
    assert folded.first == 3 and not folded.complete


@dataclass
class View:
    """What compare reads of a replica: its name, its reports and its positions."""

    replica: str
    repos: dict[str, p.RepoReport]
    at: int
    positions: dict[str, int] = field(default_factory=dict)

    def position(self, partition: int, name: str) -> int:
        return self.positions.get(name, self.at)

    def unreadable(self, partition: int, name: str) -> bool:
        return False


def report_of(repo: audit.AuditedRepo, **changes) -> p.RepoReport:
    values = dict(head=repo.head, digest=repo.digest, partition=repo.partition, changed_at=repo.changed_at)
    return p.RepoReport(**{**values, **changes})


def test_compare_agree_disagree_behind_and_newer() -> None:
    folded = fold(sample_log())
    repo = folded.repos[0]
    end = folded.end
    views = [
        View("1", {"repo": report_of(repo)}, end),
        View("2", {"repo": report_of(repo, digest="0" * 64)}, end),  # its store changed
        View("3", {}, repo.changed_at),  # has not applied the record that made it
    ]
    (verdict,) = audit.compare([folded], views)
    assert verdict.status == Verdict.DISAGREE and verdict.disagreeing == ["2"]
    assert verdict.behind == {"3": end - repo.changed_at}
    assert verdict.heads == {"1": 2, "2": 2, "3": None}

    (verdict,) = audit.compare([folded], [views[0], views[2]])
    assert verdict.status == Verdict.BEHIND

    (verdict,) = audit.compare([folded], [views[0]])
    assert (verdict.status, verdict.head, verdict.versions) == (Verdict.AGREE, 2, 2)

    # A replica that changed it after the audit's read is not compared.
    newer = View("4", {"repo": report_of(repo, head=3, changed_at=end)}, end + 1)
    (verdict,) = audit.compare([folded], [views[0], newer])
    assert (verdict.status, verdict.newer) == (Verdict.AGREE, ["4"])


def test_compare_a_repository_the_log_no_longer_holds() -> None:
    folded = fold(sample_log())
    deleted_at = folded.deleted["gone"]
    ghost = p.RepoReport(head=1, digest="1" * 64, partition=0, changed_at=deleted_at - 1)
    slow = View("1", {"gone": ghost}, deleted_at)  # the deletion not applied yet
    wrong = View("2", {"gone": ghost}, folded.end)  # applied, and still holds it
    verdicts = {v.repo: v for v in audit.compare([folded], [slow, wrong])}
    assert verdicts["gone"].status == Verdict.DISAGREE and verdicts["gone"].disagreeing == ["2"]
    assert verdicts["gone"].behind == {"1": folded.end - deleted_at}
    assert verdicts["gone"].head is None


def test_the_spark_pins_are_one_version() -> None:
    """PySpark (the spark extra) and the connector fetched with Maven must be of the
    same Spark version: the seed's authors failed exactly there."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["spark"]
    assert f"pyspark=={runtime.SPARK_VERSION}" in extra
    pom = (ROOT / "server/minigit_server/devkafka/resources/spark-kafka-pom.xml").read_text()
    assert re.search(r"<spark.version>([^<]+)</spark.version>", pom).group(1) == runtime.SPARK_VERSION


def test_kafka_security_settings_reach_spark_s_kafka_source() -> None:
    options = runtime.spark_kafka_options(
        "b1:9093,b2:9093",
        {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "ops",
            "sasl_plain_password": 'p"w',
            "ssl_cafile": "/etc/ca.pem",
        },
    )
    assert options["kafka.bootstrap.servers"] == "b1:9093,b2:9093"
    assert options["kafka.security.protocol"] == "SASL_SSL"
    assert options["kafka.sasl.mechanism"] == "SCRAM-SHA-512"
    assert options["kafka.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="ops" password="p\\"w";'
    )
    assert (options["kafka.ssl.truststore.type"], options["kafka.ssl.truststore.location"]) == ("PEM", "/etc/ca.pem")


def test_a_missing_pyspark_is_one_line_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyspark(name, *args, **kwargs):
        if name == "pyspark" or name.startswith("pyspark."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyspark)
    with pytest.raises(runtime.SparkUnavailable) as caught:
        runtime.check_pyspark()
    assert "PySpark is not installed" in caught.value.message and "minigit[spark]" in caught.value.hint


def test_jars_are_named_by_artifact() -> None:
    assert runtime._artifact(Path("kafka-clients-3.9.2.jar")) == "kafka-clients"
    assert runtime._artifact(Path("spark-sql-kafka-0-10_2.13-4.2.0.jar")) == "spark-sql-kafka-0-10_2.13"
    assert runtime._artifact(Path("scala-parallel-collections_2.13-1.2.0.jar")) == "scala-parallel-collections_2.13"


def test_the_spark_fold_skips_a_tombstone_as_the_local_engine_does() -> None:
    """A record without a value (a tombstone anyone who may write the log can send)
    is skipped by every replica and by the local engine; Spark's Kafka source gives
    its value as None, and the Spark fold must skip it too, not crash."""
    from collections import namedtuple

    from minigit_server.sparkjobs import audit_job

    Row = namedtuple("Row", "partition offset value")
    log = sample_log()
    values: list[bytes | None] = [r.value for r in log.records]
    values.insert(2, None)
    rows = [Row(0, offset, bytearray(v) if v is not None else None) for offset, v in enumerate(values)]
    (doc,) = audit_job.fold_partitions(iter(rows), 1, AUTHORITY.namespace, AUTHORITY.server_key)
    local = audit.audit_partition(0, enumerate(values), 1, AUTHORITY)
    assert audit.PartitionAudit.from_json(doc) == local
    assert local.records == len(values) and [repo.head for repo in local.repos] == [2]


def test_a_failed_spark_job_is_one_line_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged connector jar (Spark finds no 'kafka' source), or any Spark job that
    fails, is one line and a hint, not a traceback of the JVM's and PySpark's frames."""
    pytest.importorskip("pyspark")
    from pyspark.errors import AnalysisException

    from minigit.config import KafkaSettings
    from minigit_server import audit_cli
    from minigit_server.sparkjobs import audit_job

    def damaged(*args, **kwargs):
        raise AnalysisException(
            message="Failed to find data source: kafka. Please deploy the application as per the deployment\n"
            "section of Structured Streaming + Kafka Integration Guide."
        )

    monkeypatch.setattr(audit_job, "audit_log", damaged)
    settings = KafkaSettings("127.0.0.1:1", "t-", {})
    with pytest.raises(runtime.SparkUnavailable) as caught:
        audit_cli.fold_log(object(), settings, None, {0: 1}, AUTHORITY, 10.0)
    assert "\n" not in caught.value.message and "kafka" in caught.value.message
    assert "MINIGIT_SPARK_JARS" in caught.value.hint


def paged_view(replica: str, applied: int, page_digest: str, reports: dict[str, p.RepoReport]) -> health.ReplicaView:
    """A replica whose heartbeat names ``page_digest`` for the page of "repo", and the
    page record it published, holding ``reports``."""
    number = p.report_page_of("repo")
    pages = [""] * p.REPORT_PAGES
    pages[number] = page_digest
    beat = p.Heartbeat(
        replica=replica,
        host="h",
        pid=1,
        started_ms=0,
        sent_ms=10_000,
        serving=[],
        applied={0: applied},
        log_end={},
        partitions={0: p.PartitionReport(repos=len(reports), digest=page_digest, pages=pages)},
    )
    page = p.RepoPage(replica=replica, partition=0, page=number, applied=applied, digest=page_digest, repos=reports)
    return health.ReplicaView.of(beat, {(0, number): page})


def test_a_replica_whose_page_does_not_hash_to_its_heartbeat_is_not_called_behind() -> None:
    """A store changed behind a replica's back (its repos table edited) publishes a
    page that no longer hashes to the digest its heartbeat keeps: the page is not
    read. The replica applied the whole log: it is not 'behind by the whole log'
    (which --max-lag could then pass), it disagrees: what it holds is not the log's
    state as far as anyone can prove."""
    folded = fold(sample_log())
    (repo,) = folded.repos
    element = digests.report_element("repo", repo.head, repo.digest, repo.changed_at)
    sound = digests.page_digest(*digests.page_sum([element]))
    good = paged_view("1", folded.end, sound, {"repo": report_of(repo)})
    altered = paged_view("2", folded.end, sound, {"repo": report_of(repo, digest="0" * 64)})
    (verdict,) = audit.compare([folded], [good, altered])
    assert (verdict.status, verdict.disagreeing, verdict.behind) == (Verdict.DISAGREE, ["2"], {})
    assert verdict.unreadable == ["2"]
    # One that has not applied the last change yet is behind, by its heartbeat's position.
    slow = paged_view("3", repo.changed_at, "f" * 64, {})
    (verdict,) = audit.compare([folded], [good, slow])
    assert (verdict.status, verdict.behind) == (Verdict.BEHIND, {"3": folded.end - repo.changed_at})


def test_a_repository_every_replica_changed_past_the_read_is_not_called_compared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pushed to throughout an audit, a repository is newer than the audit's read on
    every replica: compared with none of them. The audit must not close with 'every
    replica agrees with the log' about it."""
    import io

    from rich.console import Console

    from minigit_server import audit_cli

    folded = fold(sample_log())
    (repo,) = folded.repos
    moved = report_of(repo, head=repo.head + 1, changed_at=folded.end)
    views = [View(name, {"repo": moved}, folded.end + 1) for name in ("1", "2")]
    verdicts = audit.compare([folded], views)
    assert verdicts[0].newer == ["1", "2"]
    text = io.StringIO()
    monkeypatch.setattr(audit_cli, "out", Console(file=text, width=200))
    audit_cli.print_audit(verdicts, ["1", "2"], list_all=False)
    assert "Every replica agrees with the log!" not in text.getvalue()
    assert "not compared" in text.getvalue()


def test_a_java_error_names_its_cause_not_the_py4j_call() -> None:
    """A JVM error reaches Python as 'An error occurred while calling o47.load.':
    the one line names the Java exception instead (a damaged kafka-clients jar)."""
    pytest.importorskip("pyspark")
    from py4j.protocol import Py4JError

    class JavaFailure:
        def toString(self) -> str:  # the Java method's name
            return "java.lang.NoClassDefFoundError: org/apache/kafka/common/serialization/ByteArrayDeserializer"

    class CallFailed(Py4JError):
        java_exception = JavaFailure()

    with pytest.raises(runtime.SparkUnavailable) as caught, runtime.job_failures("folding the log"):
        raise CallFailed("An error occurred while calling o47.load.\n: java.lang.NoClassDefFoundError")
    assert "NoClassDefFoundError: org/apache/kafka" in caught.value.message
    assert "Kafka connector" in caught.value.message and "MINIGIT_SPARK_JARS" in caught.value.hint
