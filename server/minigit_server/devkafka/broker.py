"""A local single-node Apache Kafka without Docker: jars from Maven Central, one JVM.

The broker is one combined KRaft broker+controller node listening on 127.0.0.1.
Everything it owns lives in a *data dir* (default ``~/.local/state/minigit/kafka``)::

    <data dir>/broker.json            what minigit remembers: ports, cluster id, formatted?
    <data dir>/kafka.pid              pid of the running JVM
    <data dir>/config/                server.properties and log4j2.properties (rewritten each start)
    <data dir>/kraft/                 Kafka's log.dirs (formatted once, reused by restarts)
    <data dir>/logs/server.log        Kafka's log
    <data dir>/logs/console.log       the JVM's own stdout/stderr (crashes, bad options)

The jars are not in the repository: ``ensure_kafka_jars`` fetches them once with
Maven (``resources/kafka-pom.xml``) into a cache outside it, or uses
``$KAFKA_HOME/libs`` when that points at a Kafka distribution.

Core module: it never prints. Failures are ``MinigitError``s (``BrokerError``)
whose message is ready for the user; the CLI (``devkafka.cli``) shows them.
Linux first (``/proc``); macOS works through ``ps``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import functools
import importlib.resources
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from minigit.config import KafkaSettings
from minigit.errors import MinigitError, UsageError

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
MIN_JAVA_VERSION = 17
HOST = "127.0.0.1"
DEFAULT_PORT = 9092
DEFAULT_HEAP = "512m"
DEFAULT_START_TIMEOUT = 60.0  # seconds until the broker must answer
DEFAULT_STOP_TIMEOUT = 30.0  # seconds between SIGTERM and SIGKILL
MAVEN_TIMEOUT = 900.0
MAIN_CLASS = "kafka.Kafka"

Progress = Callable[[str], None]


_DOCKER_HINT = "or run Kafka in Docker instead: 'docker compose up -d kafka'"


class BrokerError(MinigitError):
    """The local Kafka could not be fetched, started or stopped."""


def _file_errors_as_broker_errors(function: Callable) -> Callable:
    """A full disk or a read-only directory becomes a one-line BrokerError, not a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            raise BrokerError(f"{error.strerror or error}{where}") from error

    return wrapper


# --------------------------------------------------------------------------- where things live


def default_data_dir() -> Path:
    """``$MINIGIT_KAFKA_DIR``, else ``$XDG_STATE_HOME/minigit/kafka``, else ``~/.local/state/minigit/kafka``."""
    if env := os.environ.get("MINIGIT_KAFKA_DIR"):
        return Path(env).expanduser()
    state_home = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state_home).expanduser() / "minigit" / "kafka"


def cache_root() -> Path:
    """``$MINIGIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/minigit``, else ``~/.cache/minigit``."""
    if env := os.environ.get("MINIGIT_CACHE_DIR"):
        return Path(env).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home).expanduser() / "minigit"


def kafka_cache_dir(version: str = KAFKA_VERSION) -> Path:
    """Where ``ensure_kafka_jars`` keeps the jars of one Kafka version (``<cache>/kafka-<v>/libs``)."""
    return cache_root() / f"kafka-{version}" / "libs"


@dataclass(frozen=True)
class BrokerPaths:
    """The files of one local broker, all under its data dir (an absolute path)."""

    data_dir: Path

    @classmethod
    def of(cls, data_dir: str | os.PathLike[str] | None) -> BrokerPaths:
        chosen = default_data_dir() if data_dir is None else Path(data_dir)
        return cls(chosen.expanduser().resolve())

    @property
    def state_file(self) -> Path:
        return self.data_dir / "broker.json"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / ".lock"

    @property
    def config_dir(self) -> Path:
        return self.data_dir / "config"

    @property
    def server_properties(self) -> Path:
        return self.config_dir / "server.properties"

    @property
    def log4j_config(self) -> Path:
        return self.config_dir / "log4j2.properties"

    @property
    def kraft_dir(self) -> Path:
        return self.data_dir / "kraft"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / "server.log"

    @property
    def console_file(self) -> Path:
        return self.logs_dir / "console.log"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BrokerInfo:
    """A local broker as ``start_broker`` / ``read_broker_status`` see it."""

    data_dir: Path
    running: bool
    pid: int | None = None
    port: int | None = None
    controller_port: int | None = None
    kafka_version: str | None = None
    already_running: bool = False  # start_broker found it running and left it alone
    elapsed: float | None = None  # seconds start_broker took (jar download included)
    accepting: bool | None = None  # read_broker_status: the port accepts TCP connections

    @property
    def bootstrap(self) -> str | None:
        return None if self.port is None else f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return BrokerPaths(self.data_dir).log_file


@dataclass(frozen=True)
class StopResult:
    data_dir: Path
    was_running: bool
    pid: int | None = None
    killed: bool = False  # it ignored SIGTERM and needed SIGKILL
    elapsed: float = 0.0


@dataclass(frozen=True)
class JavaRuntime:
    path: str
    major: int
    version: str


# --------------------------------------------------------------------------- Java and Maven


def find_java() -> JavaRuntime:
    """The ``java`` of ``$JAVA_HOME`` (or of PATH), checked to be Java 17 or newer."""
    install_hint = (
        "install Java 17 or newer (Debian/Ubuntu: 'sudo apt install openjdk-17-jre-headless', "
        f"macOS: 'brew install openjdk@17') and put it on PATH or set JAVA_HOME; {_DOCKER_HINT}"
    )
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home).expanduser() / "bin" / "java"
        if not (java.is_file() and os.access(java, os.X_OK)):
            raise BrokerError(
                f"JAVA_HOME is {java_home}, but {java} is not an executable java",
                hint="point JAVA_HOME at a Java 17+ installation, or unset it to use the java on PATH",
            )
        java_path = str(java)
    else:
        found = shutil.which("java")
        if not found:
            raise BrokerError(
                "Java 17 or newer is needed to run Apache Kafka, but 'java' is not on PATH", hint=install_hint
            )
        java_path = found
    try:
        proc = subprocess.run([java_path, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BrokerError(f"could not run '{java_path} -version': {error}", hint=install_hint) from error
    output = proc.stderr + proc.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?[^"]*"', output)
    if proc.returncode != 0 or not match:
        first = output.strip().splitlines()[:1]
        raise BrokerError(f"'{java_path} -version' failed" + (f": {first[0]}" if first else ""), hint=install_hint)
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_412" is Java 8
        major = int(match.group(2))
    if major < MIN_JAVA_VERSION:
        raise BrokerError(
            f"Apache Kafka {KAFKA_VERSION} needs Java {MIN_JAVA_VERSION} or newer, but {java_path} is Java {major}",
            hint=install_hint,
        )
    return JavaRuntime(java_path, major, match.group(0).split('"')[1])


def _find_maven() -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError(
            "Maven ('mvn') is needed once to download the Apache Kafka jars, but it is not on PATH",
            hint=(
                "install Maven (Debian/Ubuntu: 'sudo apt install maven', macOS: 'brew install maven'), "
                f"or set KAFKA_HOME to an unpacked Apache Kafka {KAFKA_VERSION.split('.')[0]}.x download; "
                f"{_DOCKER_HINT}"
            ),
        )
    return mvn


# --------------------------------------------------------------------------- jars


def _jars_complete(libs: Path, version: str) -> bool:
    return (
        (libs / f"kafka_{SCALA_VERSION}-{version}.jar").is_file()
        and any(libs.glob("log4j-core-*.jar"))
        and any(libs.glob("log4j-slf4j-impl-*.jar"))
    )


def _jars_version(libs: Path) -> str | None:
    """The Kafka version of a jar directory, from its kafka_<scala>-<version>.jar."""
    for jar in sorted(libs.glob("kafka_*.jar")):
        if match := re.fullmatch(r"kafka_[0-9.]+-([0-9][^-]*)\.jar", jar.name):
            return match.group(1)
    return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAVEN_BOILERPLATE = re.compile(
    r"^\[ERROR\] *$|To see the full stack trace|Re-run Maven using|For more information about the errors"
    r"|^\[ERROR\] \[Help \d+\]"
)


def _maven_messages(output: str) -> list[str]:
    """Maven's output without colour codes and its generic advice lines."""
    lines = (_ANSI.sub("", line).rstrip() for line in output.splitlines())
    return [line for line in lines if line and not _MAVEN_BOILERPLATE.search(line)]


def _kafka_home_libs(kafka_home: str) -> Path:
    libs = Path(kafka_home).expanduser() / "libs"
    if not any(libs.glob("kafka_*.jar")):
        raise BrokerError(
            f"KAFKA_HOME is {kafka_home}, but {libs} holds no kafka_*.jar",
            hint="point KAFKA_HOME at an unpacked Apache Kafka 4.x download, or unset it to fetch the jars with Maven",
        )
    return libs


@_file_errors_as_broker_errors
def ensure_kafka_jars(version: str = KAFKA_VERSION, progress: Progress | None = None) -> Path:
    """The directory of Kafka's jars: ``$KAFKA_HOME/libs``, else the cache, filled with Maven if needed.

    Maven downloads into a temporary directory next to the cache, which is renamed
    into place only when complete: an interrupted download leaves no half cache.
    """
    if kafka_home := os.environ.get("KAFKA_HOME"):
        return _kafka_home_libs(kafka_home)
    libs = kafka_cache_dir(version)
    if _jars_complete(libs, version):
        return libs
    mvn = _find_maven()
    find_java()  # Maven runs on it too; say so before Maven fails more obscurely
    root = libs.parent
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        if _jars_complete(libs, version):  # another process filled it meanwhile
            return libs
        if progress:
            progress(f"downloading the Apache Kafka {version} jars with Maven into {libs} (once)")
        work = Path(tempfile.mkdtemp(prefix="download-", dir=root))
        try:
            pom = work / "pom.xml"
            pom.write_bytes(importlib.resources.files(__package__).joinpath("resources", "kafka-pom.xml").read_bytes())
            target = work / "libs"
            command = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={target}",
                "-DincludeScope=runtime",
                f"-Dkafka.version={version}",
                "-Dstyle.color=never",
            ]
            try:
                proc = subprocess.run(
                    command, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=MAVEN_TIMEOUT
                )
            except subprocess.TimeoutExpired as error:
                raise BrokerError(
                    f"Maven did not finish downloading the Kafka jars within {MAVEN_TIMEOUT:.0f} s"
                ) from error
            if proc.returncode != 0 or not _jars_complete(target, version):
                tail = _last_lines(_maven_messages(proc.stdout + proc.stderr), 8)
                raise BrokerError(
                    f"Maven could not download the Apache Kafka {version} jars (exit code {proc.returncode})"
                    + (":\n" + tail if tail else ""),
                    hint="check the network access to Maven Central (or your ~/.m2/settings.xml mirror); "
                    f"or set KAFKA_HOME to an unpacked Kafka download; {_DOCKER_HINT}",
                )
            if libs.exists():  # a cache someone emptied by hand: replace it
                shutil.rmtree(libs)
            target.rename(libs)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return libs


# --------------------------------------------------------------------------- configuration


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID, base64url without padding (22 characters)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")


def render_server_properties(port: int, controller_port: int, kraft_dir: Path) -> str:
    """The broker's server.properties: one combined broker+controller node on 127.0.0.1."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "controller.quorum.bootstrap.servers": f"{HOST}:{controller_port}",
        "log.dirs": str(kraft_dir),
        # one node: the internal topics cannot have more than one replica
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # minigit creates its topics itself, with the admin client
        "auto.create.topics.enable": "false",
        # message.max.bytes stays at Kafka's default (1 MiB): minigit must work with default limits
    }
    header = "# Written by 'minigit-server kafka start' at every start: edits here are overwritten.\n"
    return header + "".join(f"{key}={escape_property(value)}\n" for key, value in settings.items())


def escape_property(value: str) -> str:
    """Properties-file escaping for the one free-form value (a path)."""
    return value.replace("\\", "\\\\")


def _write_configs(paths: BrokerPaths, port: int, controller_port: int) -> None:
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    paths.logs_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(paths.server_properties, render_server_properties(port, controller_port, paths.kraft_dir))
    template = importlib.resources.files(__package__).joinpath("resources", "kafka-log4j2.properties")
    _write_atomic(paths.log4j_config, template.read_text(encoding="utf-8"))


def _java_command(java: str, libs: Path, paths: BrokerPaths, heap: str, *args: str) -> list[str]:
    return [
        java,
        f"-Xmx{heap}",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={paths.log4j_config}",
        f"-Dkafka.logs.dir={paths.logs_dir}",
        "-cp",
        str(libs / "*"),
        *args,
    ]


# --------------------------------------------------------------------------- state file


def _read_state(paths: BrokerPaths) -> dict | None:
    try:
        state = json.loads(paths.state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise BrokerError(
            f"{paths.state_file} is unreadable: {error}",
            hint=f"remove {paths.data_dir} to start over with an empty Kafka, or use another --data-dir",
        ) from error
    if not isinstance(state, dict) or not isinstance(state.get("controller_port"), int):
        raise BrokerError(
            f"{paths.state_file} is not a minigit Kafka state file",
            hint=f"remove {paths.data_dir} to start over with an empty Kafka, or use another --data-dir",
        )
    return state


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_state(paths: BrokerPaths, state: dict) -> None:
    _write_atomic(paths.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock (released when the process dies, even by SIGKILL)."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_cmdline(pid: int) -> list[str] | None:
    """The arguments of a process, or None if it does not exist (or is a zombie)."""
    proc = Path("/proc")
    if proc.is_dir():
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return None
        except OSError:
            return None
        if not raw:  # zombies and kernel threads have no command line
            return None
        return raw.rstrip(b"\0").decode("utf-8", "replace").split("\0")
    try:  # no /proc (macOS): ask ps
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.split() if out.returncode == 0 and out.stdout.strip() else None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _is_alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _reap(pid: int) -> None:
    """Collect the exit status if the broker is our own child (start and stop in one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _is_our_broker(pid: int, paths: BrokerPaths) -> bool:
    """Whether pid is the Kafka JVM of this data dir (and not a process that reused a stale pid)."""
    cmdline = _read_cmdline(pid)
    if not cmdline or _is_zombie(pid):
        return False
    joined = " ".join(cmdline)
    return MAIN_CLASS in cmdline and str(paths.server_properties) in joined


def _read_pid_file(paths: BrokerPaths) -> int | None:
    try:
        return int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _find_broker_pid(paths: BrokerPaths) -> int | None:
    """The pid of this data dir's running broker: from the pid file, else by scanning /proc."""
    pid = _read_pid_file(paths)
    if pid is not None and _is_our_broker(pid, paths):
        return pid
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _is_our_broker(int(entry.name), paths):
            return int(entry.name)
    return None


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _terminate(pid: int, timeout: float) -> bool:
    """SIGTERM, wait up to timeout, then SIGKILL. Returns whether SIGKILL was needed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    if _wait_gone(pid, timeout):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, 10):
        raise BrokerError(f"Kafka (pid {pid}) did not exit even after SIGKILL")
    return True


def _port_accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_port_free(port: int, option: str = "--port") -> None:
    """Raise if something already listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Java binds with SO_REUSEADDR too: a port in TIME_WAIT is not "taken"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                reason = "already in use" if error.errno == errno.EADDRINUSE else "not allowed"
                raise BrokerError(
                    f"port {port} on {HOST} is {reason}",
                    hint=f"choose another port with {option}, or stop what listens there",
                ) from error
            raise BrokerError(f"cannot use port {port} on {HOST}: {error.strerror}") from error


# --------------------------------------------------------------------------- readiness


@contextlib.contextmanager
def _quiet_kafka_logging() -> Iterator[None]:
    """kafka-python logs every refused connection; while probing, those are expected."""
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _broker_answers(bootstrap: str, timeout: float) -> bool:
    """Whether the broker answers a metadata request and lists itself as a live broker."""
    from minigit.kafka_clients import open_admin  # imported late: `--help` stays fast

    timeout_ms = max(int(timeout * 1000), 500)
    with _quiet_kafka_logging():
        try:
            admin = open_admin(
                KafkaSettings(bootstrap),
                client_id="minigit-kafka-start",
                bootstrap_timeout_ms=timeout_ms,
                request_timeout_ms=timeout_ms,
            )
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        try:
            return bool(admin.describe_cluster().get("brokers"))
        except Exception:  # noqa: BLE001
            return False
        finally:
            with contextlib.suppress(Exception):
                admin.close()


# --------------------------------------------------------------------------- logs


_STACK_FRAME = re.compile(r"^\s+(at |\.\.\. \d+ more)")


def _last_lines(lines: list[str], count: int) -> str:
    useful = [line.rstrip() for line in lines if line.strip() and not _STACK_FRAME.match(line)]
    return "\n".join("  " + line for line in useful[-count:])


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(path: Path, since: int = 0, count: int = 12) -> str:
    """The last lines written to path after byte offset since (the current run only)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            if since > size:  # the log rolled over meanwhile
                since = 0
            handle.seek(max(since, size - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if not line.startswith("=== ")]  # our launch headers
    return _last_lines(lines, count)


def _log_offsets(paths: BrokerPaths) -> dict[Path, int]:
    return {path: _file_size(path) for path in (paths.log_file, paths.console_file)}


def _failure_details(paths: BrokerPaths, offsets: dict[Path, int]) -> str:
    parts = []
    for path, since in offsets.items():
        if tail := _tail(path, since):
            parts.append(f"last lines of {path}:\n{tail}")
    return "\n".join(parts) if parts else f"nothing in {paths.log_file}"


# --------------------------------------------------------------------------- start / stop / status


def _check_data_dir(paths: BrokerPaths) -> None:
    data_dir = paths.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir} is not a directory")
    if data_dir.is_dir() and not paths.state_file.exists():
        others = [p.name for p in data_dir.iterdir() if p.name not in {".lock", "config", "logs", "kafka.pid"}]
        if others:
            raise UsageError(
                f"{data_dir} is not empty and is not a minigit Kafka data dir",
                hint="choose an empty or new directory with --data-dir",
            )


def _format_storage(java: str, libs: Path, paths: BrokerPaths, cluster_id: str, heap: str) -> None:
    if paths.kraft_dir.exists():  # left by an interrupted first start
        shutil.rmtree(paths.kraft_dir)
    command = _java_command(
        java,
        libs,
        paths,
        heap,
        "kafka.tools.StorageTool",
        "format",
        "--standalone",
        "-t",
        cluster_id,
        "-c",
        str(paths.server_properties),
    )
    try:
        proc = subprocess.run(
            command, cwd=paths.data_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired as error:
        raise BrokerError("formatting the Kafka storage took more than 120 s") from error
    if proc.returncode != 0:
        tail = _last_lines((proc.stdout + proc.stderr).splitlines(), 12)
        raise BrokerError(
            f"formatting the Kafka storage in {paths.kraft_dir} failed (exit code {proc.returncode})"
            + (":\n" + tail if tail else ""),
            hint=f"see {paths.log_file}",
        )


@_file_errors_as_broker_errors
def start_broker(
    port: int = DEFAULT_PORT,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    controller_port: int | None = None,
    heap: str = DEFAULT_HEAP,
    timeout: float = DEFAULT_START_TIMEOUT,
    progress: Progress | None = None,
) -> BrokerInfo:
    """Start the local broker in the background; return once it answers a client request.

    ``controller_port`` defaults to ``port + 1`` the first time; a data dir remembers
    the one it was formatted with. If this data dir's broker already runs, returns
    its info with ``already_running=True``. Raises ``BrokerError``/``UsageError``.
    """
    began = time.monotonic()
    say = progress or (lambda _message: None)
    paths = BrokerPaths.of(data_dir)
    _check_data_dir(paths)
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(paths.lock_file):
        state = _read_state(paths)
        running = _find_broker_pid(paths)
        if running is not None:
            return BrokerInfo(
                paths.data_dir,
                True,
                running,
                port=state.get("port") if state else None,
                controller_port=state.get("controller_port") if state else None,
                kafka_version=state.get("kafka_version") if state else None,
                already_running=True,
                elapsed=time.monotonic() - began,
            )
        paths.pid_file.unlink(missing_ok=True)  # stale

        formatted = bool(state and state.get("formatted"))
        if formatted and controller_port is not None and controller_port != state["controller_port"]:
            raise UsageError(
                f"{paths.data_dir} was formatted with controller port {state['controller_port']}, "
                f"not {controller_port}",
                hint=f"use --controller-port {state['controller_port']} (or leave it out), or another --data-dir",
            )
        if formatted:
            controller_port = state["controller_port"]
        elif controller_port is None:
            controller_port = port + 1
        for value, option in ((port, "--port"), (controller_port, "--controller-port")):
            if not 1 <= value <= 65535:
                raise UsageError(f"{option} {value} is not a TCP port (1-65535)")
        if port == controller_port:
            raise UsageError(f"--port and --controller-port must differ (both are {port})")
        if not re.fullmatch(r"[1-9][0-9]*[kKmMgG]?", heap):
            raise UsageError(f"--heap {heap!r} is not a Java heap size such as 512m or 1g")
        check_port_free(port, "--port")
        check_port_free(controller_port, "--controller-port")

        java = find_java().path
        libs = ensure_kafka_jars(progress=say)
        _write_configs(paths, port, controller_port)

        if not formatted:
            state = {
                "cluster_id": (state or {}).get("cluster_id") or new_cluster_id(),
                "controller_port": controller_port,
                "port": port,
                "kafka_version": KAFKA_VERSION,
                "formatted": False,
            }
            _write_state(paths, state)
            say(f"formatting a new single-node Kafka in {paths.kraft_dir}")
            _format_storage(java, libs, paths, state["cluster_id"], heap)
            state["formatted"] = True
        state["port"] = port
        state["kafka_version"] = _jars_version(libs)
        _write_state(paths, state)

        say(f"starting Apache Kafka on {HOST}:{port}")
        offsets = _log_offsets(paths)
        pid = _launch(java, libs, paths, heap)
        try:
            _wait_until_ready(pid, paths, port, timeout, offsets)
        except BaseException:
            _terminate(pid, 10)
            paths.pid_file.unlink(missing_ok=True)
            raise
        return BrokerInfo(
            paths.data_dir,
            True,
            pid,
            port=port,
            controller_port=controller_port,
            kafka_version=state.get("kafka_version"),
            elapsed=time.monotonic() - began,
        )


def _launch(java: str, libs: Path, paths: BrokerPaths, heap: str) -> int:
    """Start the JVM detached from us (own session, no terminal) and record its pid."""
    command = _java_command(java, libs, paths, heap, MAIN_CLASS, str(paths.server_properties))
    with open(paths.console_file, "ab") as console:
        console.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        console.flush()
        try:
            process = subprocess.Popen(
                command,
                cwd=paths.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as error:
            raise BrokerError(f"could not run {java}: {error.strerror}") from error
    _write_atomic(paths.pid_file, f"{process.pid}\n")
    # The broker outlives this process; keep the Popen object (no "still running"
    # warning on garbage collection); _reap collects it if it ends while we live.
    _launched.append(process)
    return process.pid


_launched: list[subprocess.Popen] = []


def _wait_until_ready(pid: int, paths: BrokerPaths, port: int, timeout: float, offsets: dict[Path, int]) -> None:
    bootstrap = f"{HOST}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if not _is_alive(pid):
            raise BrokerError(
                "Apache Kafka exited during startup; " + _failure_details(paths, offsets),
                hint=f"see {paths.log_file}",
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"Apache Kafka did not answer on {bootstrap} within {timeout:.0f} s (stopped it); "
                + _failure_details(paths, offsets),
                hint=f"see {paths.log_file}; a slow machine may need a longer --timeout",
            )
        if _port_accepts(port) and _broker_answers(bootstrap, min(5.0, remaining)):
            return
        time.sleep(0.2)


@_file_errors_as_broker_errors
def stop_broker(data_dir: str | os.PathLike[str] | None = None, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> StopResult:
    """Stop this data dir's broker: SIGTERM, up to ``timeout`` s, then SIGKILL. Not running is fine."""
    began = time.monotonic()
    paths = BrokerPaths.of(data_dir)
    if not paths.data_dir.is_dir():
        return StopResult(paths.data_dir, was_running=False)
    with _locked(paths.lock_file):
        pid = _find_broker_pid(paths)
        if pid is None:
            paths.pid_file.unlink(missing_ok=True)
            return StopResult(paths.data_dir, was_running=False)
        killed = _terminate(pid, timeout)
        paths.pid_file.unlink(missing_ok=True)
        return StopResult(paths.data_dir, True, pid, killed, time.monotonic() - began)


@_file_errors_as_broker_errors
def read_broker_status(data_dir: str | os.PathLike[str] | None = None) -> BrokerInfo:
    """Whether this data dir's broker runs, and where (reads only; changes nothing)."""
    paths = BrokerPaths.of(data_dir)
    state = _read_state(paths) if paths.state_file.exists() else None
    pid = _find_broker_pid(paths) if paths.data_dir.is_dir() else None
    port = state.get("port") if state else None
    return BrokerInfo(
        paths.data_dir,
        running=pid is not None,
        pid=pid,
        port=port,
        controller_port=state.get("controller_port") if state else None,
        kafka_version=state.get("kafka_version") if state else None,
        accepting=(_port_accepts(port) if pid is not None and port else None),
    )
