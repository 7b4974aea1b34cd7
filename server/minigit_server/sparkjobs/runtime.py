"""What the Spark jobs need, checked and fetched like the Kafka jars: PySpark (the
``spark`` extra), Java 17+, and Spark's Kafka connector (``spark-sql-kafka-0-10``)
from Maven Central in PySpark's own version, cached outside the repository
(``<cache>/spark-kafka-<version>/jars``, next to the Kafka jars of devkafka).

The seed's authors dropped Spark over exactly this: a connector of another Spark
version than the runtime's. Both are pinned here (SPARK_VERSION, and the ``spark``
extra in pyproject.toml, which a unit test keeps equal), and a mismatch is refused
before a session starts. Every failure is a one-line ``SparkUnavailable`` with a hint.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from minigit.errors import MinigitError
from minigit_server.devkafka import broker

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SPARK_VERSION = "4.2.0"  # PySpark's and the connector's: pyproject.toml's spark extra pins the same
SCALA_VERSION = "2.13"
CONNECTOR = f"spark-sql-kafka-0-10_{SCALA_VERSION}"
# What the connector needs that PySpark's own jars do not hold (the rest, scala,
# hadoop, lz4, snappy, slf4j, PySpark ships in the versions it was built with).
NEEDED = (CONNECTOR, f"spark-token-provider-kafka-0-10_{SCALA_VERSION}", "kafka-clients", "commons-pool2")
DEFAULT_MASTER = "local[*]"
INSTALL_HINT = "install the extra: pip install 'minigit[spark]' (from a checkout: pip install -e '.[spark]')"

Progress = Callable[[str], None]


class SparkUnavailable(MinigitError):
    """PySpark, Java or the Kafka connector is missing, or of the wrong version."""


def check_pyspark() -> str:
    """PySpark's version, if it is installed and the pinned one."""
    try:
        import pyspark
    except ImportError:
        raise SparkUnavailable("PySpark is not installed (the 'spark' extra)", hint=INSTALL_HINT) from None
    version = pyspark.__version__
    if version != SPARK_VERSION:
        raise SparkUnavailable(
            f"PySpark {version} is installed, but minigit's Spark jobs are pinned to Spark {SPARK_VERSION}",
            hint=f"pip install 'pyspark=={SPARK_VERSION}' (its Kafka connector must be of the same version)",
        )
    return version


def check_java() -> None:
    try:
        broker.find_java()
    except broker.BrokerError as error:
        raise SparkUnavailable(
            error.message.replace("run Apache Kafka", "run Apache Spark"),
            hint="install Java 17 or newer and put it on PATH or set JAVA_HOME",
        ) from None


def connector_dir(version: str = SPARK_VERSION) -> Path:
    """Where the connector's jars are kept (``<cache>/spark-kafka-<version>/jars``)."""
    return broker.cache_root() / f"spark-kafka-{version}" / "jars"


def _artifact(jar: Path) -> str:
    """A jar's artifact name: ``kafka-clients-3.9.2.jar`` -> ``kafka-clients``."""
    return re.sub(r"-[0-9][^-]*(-[A-Za-z0-9]+)?$", "", jar.stem)


def _complete(jars: Path, version: str) -> bool:
    if not (jars / f"{CONNECTOR}-{version}.jar").is_file():
        return False
    found = {_artifact(jar) for jar in jars.glob("*.jar")}
    return all(name in found for name in NEEDED)


def ensure_connector(version: str = SPARK_VERSION, progress: Progress | None = None) -> Path:
    """The directory of the connector's jars: ``$MINIGIT_SPARK_JARS`` if set (a directory
    holding them, for machines without Maven), else the cache, filled with Maven once.
    Maven writes into a temporary directory renamed into place when complete."""
    if given := os.environ.get("MINIGIT_SPARK_JARS"):
        jars = Path(given).expanduser()
        if not _complete(jars, version):
            raise SparkUnavailable(
                f"MINIGIT_SPARK_JARS is {given}, but it does not hold {CONNECTOR}-{version}.jar and its dependencies",
                hint="unset it to fetch the connector with Maven into the cache",
            )
        return jars
    jars = connector_dir(version)
    if _complete(jars, version):
        return jars
    mvn = shutil.which("mvn")
    if not mvn:
        raise SparkUnavailable(
            f"Spark's Kafka connector ({CONNECTOR} {version}) is not in {jars}, and Maven ('mvn') is not on PATH "
            "to fetch it",
            hint="install Maven (Debian/Ubuntu: 'sudo apt install maven'), or set MINIGIT_SPARK_JARS to a directory "
            "holding the connector's jars",
        )
    check_java()
    try:
        return broker.fetch_with_maven(
            mvn,
            "spark-kafka-pom.xml",
            {"spark.version": version},
            jars,
            lambda found: _complete(found, version),
            lambda: (
                progress and progress(f"downloading Spark's Kafka connector {version} with Maven into {jars} (once)")
            ),
        )
    except broker.MavenFetchFailed as failure:
        if failure.returncode is None:
            raise SparkUnavailable(
                f"Maven did not finish downloading Spark's Kafka connector within {broker.MAVEN_TIMEOUT:.0f} s"
            ) from None
        tail = broker._last_lines(failure.messages, 6)
        raise SparkUnavailable(
            f"Maven could not download Spark's Kafka connector {CONNECTOR} {version} "
            f"(exit code {failure.returncode})" + (":\n" + tail if tail else ""),
            hint="check the network access to Maven Central (or your ~/.m2/settings.xml mirror)",
        ) from None


def session_jars(jars: Path) -> list[Path]:
    """The connector's jars that PySpark does not ship itself (two copies of a class
    on the classpath, of two versions, is what breaks a Spark job obscurely)."""
    import pyspark

    shipped = {_artifact(jar) for jar in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    return sorted(jar for jar in jars.glob("*.jar") if _artifact(jar) not in shipped)


def check_ready(progress: Progress | None = None) -> list[Path]:
    """Everything a Spark job needs, checked in the order a user fixes it: the extra,
    Java, the connector. The jars to give the session."""
    check_pyspark()
    check_java()
    return session_jars(ensure_connector(progress=progress))


@contextlib.contextmanager
def jvm_stdout_to_stderr() -> Iterator[None]:
    """Spark's JVM, started in here, inherits this process's stdout, where log4j writes
    warnings of its own: it gets stderr in its place, so that stdout holds only the
    command's output (``--json`` documents)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def get_session(
    master: str = DEFAULT_MASTER, app_name: str = "minigit", progress: Progress | None = None
) -> SparkSession:
    """The process's Spark session (one per process: Spark allows no other), made
    with the connector on its classpath. Its Python workers run this interpreter,
    so they import the same minigit (a real cluster needs minigit installed on its
    nodes: docs/spark.md)."""
    jars = check_ready(progress)
    from pyspark.sql import SparkSession

    if master.startswith("local"):  # this machine: no need to look for a network address
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.jars", ",".join(str(jar) for jar in jars))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", "-Dlog4j2.level=WARN")
    )
    try:
        with jvm_stdout_to_stderr():
            session = builder.getOrCreate()
    except Exception as error:  # noqa: BLE001 - the JVM's failures come as many types; one line for the user
        raise SparkUnavailable(
            f"Spark did not start ({master}): {str(error).splitlines()[0] if str(error) else type(error).__name__}",
            hint="check Java (JAVA_HOME) and --master",
        ) from None
    session.sparkContext.setLogLevel("WARN")
    return session


@contextlib.contextmanager
def job_failures(job: str) -> Iterator[None]:
    """A Spark job that fails (the JVM's or a Python worker's error, as PySpark raises
    it, with pages of frames) is one line and a hint; Spark's log above says more."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    try:
        yield
    except (PySparkException, Py4JError) as error:
        text = str(error)
        if (java := getattr(error, "java_exception", None)) is not None:
            # "An error occurred while calling o47.load.": the Java exception says what
            with contextlib.suppress(Exception):
                text = str(java.toString())
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        # a Python worker's error begins with its traceback's header: its last line says what
        first = (lines[-1] if "Traceback" in lines[0] else lines[0]) if lines else type(error).__name__
        missing_class = ("NoClassDefFoundError" in first or "ClassNotFoundException" in first) and "kafka" in first
        if "Failed to find data source: kafka" in first or missing_class:
            given = os.environ.get("MINIGIT_SPARK_JARS")
            remedy = (
                "set MINIGIT_SPARK_JARS to a directory of good ones, or unset it to fetch them into the cache"
                if given
                else "remove that directory to fetch them again, or set MINIGIT_SPARK_JARS to a directory of good ones"
            )
            raise SparkUnavailable(
                f"Spark could not load its Kafka connector ({CONNECTOR} {SPARK_VERSION}) "
                f"from {given or connector_dir()}: {first}",
                hint=f"a jar there may be damaged: {remedy}",
            ) from None
        raise SparkUnavailable(
            f"the Spark job {job} failed: {first}",
            hint="Spark's log above says why; check --master, and that Spark's executors reach Kafka",
        ) from None


def spark_kafka_options(bootstrap: str, options: dict[str, object]) -> dict[str, str]:
    """The Kafka source's options for the service's Kafka: bootstrap servers, and the
    kafka-python security settings (``--kafka-option`` / ``MINIGIT_KAFKA_*``) in the
    Java client's names, so that a SASL/SSL Kafka needs nothing more."""
    found = {"kafka.bootstrap.servers": bootstrap}
    names = {
        "security_protocol": "security.protocol",
        "sasl_mechanism": "sasl.mechanism",
        "ssl_check_hostname": None,
        "client_id": "client.id",
    }
    for name, value in options.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if name in names:
            if names[name]:
                found[f"kafka.{names[name]}"] = text
        elif name == "ssl_cafile":
            found["kafka.ssl.truststore.type"] = "PEM"
            found["kafka.ssl.truststore.location"] = text
        elif name in ("sasl_plain_username", "sasl_plain_password"):
            continue  # folded into the JAAS line below
        else:
            found[f"kafka.{name.replace('_', '.')}"] = text
    user, password = options.get("sasl_plain_username"), options.get("sasl_plain_password")
    if user is not None and password is not None:
        mechanism = str(options.get("sasl_mechanism", "PLAIN")).upper()
        module = (
            "org.apache.kafka.common.security.scram.ScramLoginModule"
            if mechanism.startswith("SCRAM")
            else "org.apache.kafka.common.security.plain.PlainLoginModule"
        )
        quoted_user = str(user).replace("\\", "\\\\").replace('"', '\\"')
        quoted_password = str(password).replace("\\", "\\\\").replace('"', '\\"')
        found["kafka.sasl.jaas.config"] = f'{module} required username="{quoted_user}" password="{quoted_password}";'
    if options.get("ssl_check_hostname") in (False, "false", "False"):
        found["kafka.ssl.endpoint.identification.algorithm"] = ""
    return found


def main(argv: list[str]) -> int:
    """``python -m minigit_server.sparkjobs.runtime fetch``: check PySpark and Java and
    fetch the connector now (scripts/setup.sh), not at a job's first run."""
    from minigit.console import err, exit_on_error

    if argv != ["fetch"]:
        err.print("usage: python -m minigit_server.sparkjobs.runtime fetch")
        return 2
    import typer

    try:
        with exit_on_error():
            jars = check_ready(progress=lambda line: err.print(line))
    except typer.Exit as error:
        return error.exit_code
    err.print(f"Spark {SPARK_VERSION} and its Kafka connector are ready ({len(jars)} jars in {jars[0].parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
