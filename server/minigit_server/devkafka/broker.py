"""A local Apache Kafka without Docker: jars from Maven Central, one JVM per node.

Each node is a combined KRaft broker+controller. One node (the default) is a
development broker; ``nodes=3`` is a small cluster on one machine (static quorum
of three controllers, replication factor 3, ``min.insync.replicas=2``) for
failover tests. Node n listens on broker port ``port + n - 1`` and controller
port ``controller_port + n - 1``. Controllers listen on 127.0.0.1 only; the
brokers' client listener binds ``listen`` (127.0.0.1 unless told otherwise) and
is advertised as ``advertise``. Everything lives in a *data dir* (default
``~/.local/state/minigit/kafka``)::

    <data dir>/broker.json            what minigit remembers: nodes, ports, addresses, cluster id, formatted?
    <data dir>/.lock                  held while a command starts or stops nodes
    <node dir>/kafka.pid              pid of the node's running JVM
    <node dir>/config/                server.properties and log4j2.properties (rewritten each start)
    <node dir>/kraft/                 Kafka's log.dirs (formatted once, reused by restarts)
    <node dir>/logs/server.log        Kafka's log
    <node dir>/logs/console.log       the JVM's own stdout/stderr (crashes, bad options)
    <data dir>/secure/                a secured Kafka's passwords, TLS files and settings (see devkafka.secure)

where ``<node dir>`` is the data dir itself for one node (the layout of earlier
versions) and ``<data dir>/node-<n>`` in a cluster.

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
import ipaddress
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from minigit.config import KafkaSettings, check_namespace
from minigit.errors import MinigitError, UsageError
from minigit_server.devkafka import secure

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
MIN_JAVA_VERSION = 17
HOST = "127.0.0.1"
DEFAULT_PORT = 9092
MAX_NODES = 9  # each node is a JVM on this one machine
DEFAULT_HEAP = "512m"
DEFAULT_START_TIMEOUT = 60.0  # seconds until the broker must answer
DEFAULT_STOP_TIMEOUT = 30.0  # seconds between SIGTERM and SIGKILL
NO_QUORUM_STOP_TIMEOUT = 5.0  # the same, for cluster nodes left without a controller quorum
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
class NodePaths:
    """The files of one node (one JVM): the data dir itself for a single node, ``node-<n>/`` in a cluster."""

    root: Path
    node_id: int

    @property
    def pid_file(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def server_properties(self) -> Path:
        return self.config_dir / "server.properties"

    @property
    def log4j_config(self) -> Path:
        return self.config_dir / "log4j2.properties"

    @property
    def kraft_dir(self) -> Path:
        return self.root / "kraft"

    @property
    def quorum_state(self) -> Path:
        """Kafka's record of the controller leader as this node last saw it (JSON)."""
        return self.kraft_dir / "__cluster_metadata-0" / "quorum-state"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / "server.log"

    @property
    def console_file(self) -> Path:
        return self.logs_dir / "console.log"


@dataclass(frozen=True)
class BrokerPaths:
    """The data dir of one local Kafka (an absolute path) and the files it holds for all its nodes."""

    data_dir: Path

    @classmethod
    def of(cls, data_dir: str | os.PathLike[str] | None) -> BrokerPaths:
        chosen = default_data_dir() if data_dir is None else Path(data_dir)
        return cls(chosen.expanduser().resolve())

    @property
    def state_file(self) -> Path:
        return self.data_dir / "broker.json"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / ".lock"

    def node(self, node_id: int, nodes: int) -> NodePaths:
        # one node keeps the layout of the single-node versions, so their data dirs still start
        return NodePaths(self.data_dir if nodes == 1 else self.data_dir / f"node-{node_id}", node_id)


@dataclass(frozen=True)
class ClusterLayout:
    """Where the nodes of one local Kafka listen.

    Node n (1-based) has broker port ``port + n - 1`` and controller port
    ``controller_port + n - 1``. Controllers bind 127.0.0.1; the brokers bind
    ``listen`` and tell clients to connect to ``advertise``.
    """

    nodes: int = 1
    port: int = DEFAULT_PORT
    controller_port: int = DEFAULT_PORT + 1
    listen: str = HOST
    advertise: str = HOST

    @property
    def node_ids(self) -> range:
        return range(1, self.nodes + 1)

    def broker_port(self, node_id: int) -> int:
        return self.port + node_id - 1

    def node_controller_port(self, node_id: int) -> int:
        return self.controller_port + node_id - 1

    @property
    def bootstrap(self) -> str:
        """What clients pass as bootstrap servers: every broker, as advertised."""
        return ",".join(host_port(self.advertise, self.broker_port(n)) for n in self.node_ids)

    @property
    def probe_host(self) -> str:
        """Where this machine reaches the brokers' listener (a wildcard listen includes loopback)."""
        return {"0.0.0.0": HOST, "::": "::1"}.get(self.listen, self.listen)

    @property
    def replication_factor(self) -> int:
        """Of Kafka's internal topics: three copies once there are three nodes."""
        return min(self.nodes, 3)

    @property
    def min_insync_replicas(self) -> int:
        # with three copies, an acknowledged write is on two brokers and survives losing one
        return 2 if self.replication_factor >= 3 else 1


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets as Kafka and clients expect."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class NodeInfo:
    """One node as ``start_broker`` / ``read_broker_status`` see it."""

    node_id: int
    running: bool
    log_path: Path
    pid: int | None = None
    port: int | None = None
    controller_port: int | None = None
    started: bool = False  # this start_broker call launched it
    accepting: bool | None = None  # read_broker_status: its broker port accepts TCP connections


@dataclass(frozen=True)
class BrokerInfo:
    """A local Kafka (one node or a cluster) as ``start_broker`` / ``read_broker_status`` see it."""

    data_dir: Path
    nodes: tuple[NodeInfo, ...]
    kafka_version: str | None = None
    advertise: str = HOST
    listen: str = HOST
    elapsed: float | None = None  # seconds start_broker took (jar download included)
    controller_leader: int | None = None  # read_broker_status of a cluster: the active controller's node id
    security: secure.SecureAccess | None = None  # started with --secure: how each side connects

    @property
    def secured(self) -> bool:
        return self.security is not None

    @property
    def running(self) -> bool:
        """Every node runs."""
        return all(node.running for node in self.nodes)

    @property
    def running_nodes(self) -> list[NodeInfo]:
        return [node for node in self.nodes if node.running]

    @property
    def started_nodes(self) -> list[NodeInfo]:
        return [node for node in self.nodes if node.started]

    @property
    def already_running(self) -> bool:
        """start_broker found every node running and left them alone."""
        return self.running and not self.started_nodes

    @property
    def is_cluster(self) -> bool:
        return len(self.nodes) > 1

    @property
    def bootstrap(self) -> str | None:
        ports = [node.port for node in self.nodes]
        if None in ports:
            return None
        return ",".join(host_port(self.advertise, port) for port in ports)

    # The single-node view, as the single-node versions showed it.

    @property
    def accepting(self) -> bool:
        """Every running node's broker port accepts TCP connections (as far as read_broker_status checked)."""
        return all(node.accepting is not False for node in self.running_nodes)

    @property
    def pid(self) -> int | None:
        return self.nodes[0].pid

    @property
    def port(self) -> int | None:
        return self.nodes[0].port

    @property
    def log_path(self) -> Path:
        return self.nodes[0].log_path


@dataclass(frozen=True)
class StoppedNode:
    node_id: int
    pid: int
    killed: bool  # it ignored SIGTERM and needed SIGKILL


@dataclass(frozen=True)
class StopResult:
    data_dir: Path
    stopped: tuple[StoppedNode, ...] = ()
    elapsed: float = 0.0
    grace: float = DEFAULT_STOP_TIMEOUT  # seconds it waited between SIGTERM and SIGKILL
    without_quorum: bool = False  # fewer than a majority of the cluster's nodes were running

    @property
    def was_running(self) -> bool:
        return bool(self.stopped)

    @property
    def killed(self) -> bool:
        return any(node.killed for node in self.stopped)


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
    try:
        return fetch_with_maven(
            mvn,
            "kafka-pom.xml",
            {"kafka.version": version},
            libs,
            lambda jars: _jars_complete(jars, version),
            lambda: progress and progress(f"downloading the Apache Kafka {version} jars with Maven into {libs} (once)"),
        )
    except MavenFetchFailed as failure:
        if failure.returncode is None:
            raise BrokerError(f"Maven did not finish downloading the Kafka jars within {MAVEN_TIMEOUT:.0f} s") from None
        tail = _last_lines(failure.messages, 8)
        raise BrokerError(
            f"Maven could not download the Apache Kafka {version} jars (exit code {failure.returncode})"
            + (":\n" + tail if tail else ""),
            hint="check the network access to Maven Central (or your ~/.m2/settings.xml mirror); "
            f"or set KAFKA_HOME to an unpacked Kafka download; {_DOCKER_HINT}",
        ) from None


class MavenFetchFailed(Exception):
    """Maven left no complete set of jars: ``returncode`` None when it timed out;
    ``messages``: what it said (``_maven_messages``)."""

    def __init__(self, returncode: int | None, messages: str = "") -> None:
        super().__init__(returncode, messages)
        self.returncode = returncode
        self.messages = messages


def fetch_with_maven(
    mvn: str,
    pom_resource: str,
    properties: dict[str, str],
    dest: Path,
    complete: Callable[[Path], bool],
    starting: Callable[[], object],
) -> Path:
    """``dest`` filled, once, with the runtime dependencies of the pom
    ``resources/<pom_resource>`` (``properties`` given to Maven as -D options): the
    Kafka jars, Spark's Kafka connector. Under the cache's lock (another process
    may be filling it too); Maven downloads into a temporary directory beside it,
    renamed into place only when ``complete`` says so, so an interrupted download
    leaves no half cache. ``starting`` is called before Maven runs (a progress line).
    MavenFetchFailed otherwise."""
    root = dest.parent
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        if complete(dest):  # another process filled it meanwhile
            return dest
        starting()
        work = Path(tempfile.mkdtemp(prefix="download-", dir=root))
        try:
            pom = work / "pom.xml"
            pom.write_bytes(importlib.resources.files(__package__).joinpath("resources", pom_resource).read_bytes())
            target = work / "jars"
            command = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={target}",
                "-DincludeScope=runtime",
                *(f"-D{name}={value}" for name, value in properties.items()),
                "-Dstyle.color=never",
            ]
            try:
                proc = subprocess.run(
                    command, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=MAVEN_TIMEOUT
                )
            except subprocess.TimeoutExpired:
                raise MavenFetchFailed(None) from None
            if proc.returncode != 0 or not complete(target):
                raise MavenFetchFailed(proc.returncode, _maven_messages(proc.stdout + proc.stderr))
            if dest.exists():  # a cache someone emptied by hand: replace it
                shutil.rmtree(dest)
            target.rename(dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------- configuration


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID, base64url without padding (22 characters),
    never starting with '-': the storage tool would read such an id as an option
    (one format in 64 failed), and Kafka's own Uuid.randomUuid draws again for it too."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


def render_server_properties(
    layout: ClusterLayout, node_id: int, kraft_dir: Path, security: dict[str, str] | None = None
) -> str:
    """The server.properties of one combined broker+controller node of ``layout``.

    With ``security`` (``secure.broker_properties``), clients and the brokers among
    themselves use one SASL_SSL listener, and those entries are added. The
    controllers' listener stays PLAINTEXT on 127.0.0.1 either way (see docs/security.md).
    """
    listener = secure.PROTOCOL if security else "PLAINTEXT"
    port = layout.broker_port(node_id)
    controller_port = layout.node_controller_port(node_id)
    copies, min_insync = str(layout.replication_factor), str(layout.min_insync_replicas)
    if layout.nodes == 1:
        # a dynamic quorum of one, formatted with --standalone
        quorum = {"controller.quorum.bootstrap.servers": host_port(HOST, controller_port)}
    else:
        # a static quorum: every node is formatted alike with the cluster id, no voter
        # directory ids to collect first (a dynamic quorum would need them)
        voters = ",".join(f"{n}@{host_port(HOST, layout.node_controller_port(n))}" for n in layout.node_ids)
        quorum = {"controller.quorum.voters": voters}
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "listeners": f"{listener}://{host_port(layout.listen, port)},CONTROLLER://{host_port(HOST, controller_port)}",
        "advertised.listeners": f"{listener}://{host_port(layout.advertise, port)}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": listener,
        "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{listener}:{listener}",
        **quorum,
        "log.dirs": str(kraft_dir),
        # internal topics: one copy per node, up to three; with three, writes need two in sync
        "offsets.topic.replication.factor": copies,
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": copies,
        "transaction.state.log.min.isr": min_insync,
        "share.coordinator.state.topic.replication.factor": copies,
        "share.coordinator.state.topic.min.isr": min_insync,
        # topics created without a replication factor, and acks=all writes to any topic
        "default.replication.factor": copies,
        "min.insync.replicas": min_insync,
        # a replica that missed writes never becomes leader: an acknowledged write is never lost
        "unclean.leader.election.enable": "false",
        "group.initial.rebalance.delay.ms": "0",
        # minigit creates its topics itself, with the admin client
        "auto.create.topics.enable": "false",
        # message.max.bytes stays at Kafka's default (1 MiB): minigit must work with default limits
        **(security or {}),
    }
    header = "# Written by 'minigit-server kafka start' at every start: edits here are overwritten.\n"
    return header + "".join(f"{key}={escape_property(value)}\n" for key, value in settings.items())


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _is_wildcard(address: str) -> bool:
    return address in {"0.0.0.0", "::"}


def _check_host(option: str, value: str) -> str:
    """An IP address or a host name, as Kafka accepts in a listener."""
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise UsageError(f"{option} {value!r} is neither an IP address nor a host name")
    return value


def check_addresses(listen: str, advertise: str | None) -> tuple[str, str]:
    """The brokers' bind address and the host clients are told to use, checked.

    ``advertise`` defaults to ``listen``; a wildcard ``listen`` (0.0.0.0, ::) needs
    it said, since no client can connect to a wildcard.
    """
    listen = _check_host("--listen", listen)
    if advertise is None:
        if _is_wildcard(listen):
            raise UsageError(
                f"--listen {listen} accepts connections on every interface, but clients need one address to use",
                hint="add --advertise HOST: the name or address other machines reach this one by "
                "(e.g. --advertise 192.168.1.20)",
            )
        return listen, listen
    advertise = _check_host("--advertise", advertise)
    if _is_wildcard(advertise):
        raise UsageError(
            f"--advertise {advertise} is a wildcard, not an address clients can connect to",
            hint="give the name or address other machines reach this one by (e.g. --advertise 192.168.1.20)",
        )
    return listen, advertise


def escape_property(value: str) -> str:
    """Properties-file escaping for the one free-form value (a path)."""
    return value.replace("\\", "\\\\")


def _write_configs(node: NodePaths, layout: ClusterLayout, security: dict[str, str] | None = None) -> None:
    node.config_dir.mkdir(parents=True, exist_ok=True)
    node.logs_dir.mkdir(parents=True, exist_ok=True)
    properties = render_server_properties(layout, node.node_id, node.kraft_dir, security)
    if security:  # it holds the brokers' own password
        secure.write_private(node.server_properties, properties)
    else:
        _write_atomic(node.server_properties, properties)
    template = importlib.resources.files(__package__).joinpath("resources", "kafka-log4j2.properties")
    _write_atomic(node.log4j_config, template.read_text(encoding="utf-8"))


def _java_command(java: str, libs: Path, node: NodePaths, heap: str, *args: str) -> list[str]:
    return [
        java,
        f"-Xmx{heap}",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={node.log4j_config}",
        f"-Dkafka.logs.dir={node.logs_dir}",
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
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("controller_port"), int)
        or not isinstance(state.get("port"), int)
        or not isinstance(state.get("nodes", 1), int)
        or state.get("nodes", 1) < 1
    ):
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


def _is_our_broker(pid: int, node: NodePaths) -> bool:
    """Whether pid is the Kafka JVM of this node (and not a process that reused a stale pid)."""
    cmdline = _read_cmdline(pid)
    if not cmdline or _is_zombie(pid):
        return False
    joined = " ".join(cmdline)
    return MAIN_CLASS in cmdline and str(node.server_properties) in joined


def _read_pid_file(node: NodePaths) -> int | None:
    try:
        return int(node.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _find_broker_pid(node: NodePaths) -> int | None:
    """The pid of this node's running JVM: from the pid file, else by scanning /proc."""
    pid = _read_pid_file(node)
    if pid is not None and _is_our_broker(pid, node):
        return pid
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _is_our_broker(int(entry.name), node):
            return int(entry.name)
    return None


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _terminate(pids: list[int], timeout: float) -> set[int]:
    """SIGTERM to all at once, wait up to timeout, then SIGKILL. Returns the pids that needed SIGKILL.

    A cluster's nodes stop together: one by one, the last ones would wait for a
    controller quorum that is already gone.
    """
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    killed = set()
    for pid in pids:
        if _wait_gone(pid, max(deadline - time.monotonic(), 0)):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    for pid in killed:
        if not _wait_gone(pid, 10):
            raise BrokerError(f"Kafka (pid {pid}) did not exit even after SIGKILL")
    return killed


def _port_accepts(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_port_free(port: int, option: str = "--port", address: str = HOST) -> None:
    """Raise if something already listens on address:port (a wildcard address: on any)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Java binds with SO_REUSEADDR too: a port in TIME_WAIT is not "taken"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                reason = "already in use" if error.errno == errno.EADDRINUSE else "not allowed"
                raise BrokerError(
                    f"port {port} on {address} is {reason}",
                    hint=f"choose another port with {option}, or stop what listens there",
                ) from error
            if error.errno == errno.EADDRNOTAVAIL:
                raise UsageError(
                    f"{address} is not an address of this machine", hint="check --listen (see 'ip address')"
                ) from error
            raise BrokerError(f"cannot use port {port} on {address}: {error.strerror}") from error
        except socket.gaierror as error:
            raise UsageError(f"cannot resolve {address}: {error.strerror}", hint="check --listen") from error


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


def _broker_answers(bootstrap: str, node_id: int, timeout: float, options: dict[str, object]) -> bool:
    """Whether the broker answers a metadata request and lists itself among the live brokers
    (a restarted cluster node does so once the controller has let it back in)."""
    from minigit.kafka_clients import open_admin  # imported late: `--help` stays fast

    timeout_ms = max(int(timeout * 1000), 500)
    with _quiet_kafka_logging():
        try:
            admin = open_admin(
                KafkaSettings(bootstrap, options=options),
                client_id="minigit-kafka-start",
                bootstrap_timeout_ms=timeout_ms,
                request_timeout_ms=timeout_ms,
            )
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        try:
            brokers = admin.describe_cluster().get("brokers") or []
            return any(broker.get("broker_id") == node_id and not broker.get("is_fenced") for broker in brokers)
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


def _log_offsets(node: NodePaths) -> dict[Path, int]:
    return {path: _file_size(path) for path in (node.log_file, node.console_file)}


def _failure_details(node: NodePaths, offsets: dict[Path, int]) -> str:
    parts = []
    for path, since in offsets.items():
        if tail := _tail(path, since):
            parts.append(f"last lines of {path}:\n{tail}")
    return "\n".join(parts) if parts else f"nothing in {node.log_file}"


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


def _format_storage(
    java: str,
    libs: Path,
    layout: ClusterLayout,
    nodes: list[NodePaths],
    cluster_id: str,
    heap: str,
    scram: Sequence[str] = (),
) -> None:
    """Format every node's log dir with one cluster id, all at once (each is a JVM start).

    ``scram``: ``--add-scram`` options, the SCRAM users written into the metadata log
    (KRaft has no other place to hold them before the brokers run). The passwords are
    on this JVM's command line for the second it runs; they are URL-safe random strings
    that the data dir's owner alone keeps.
    """
    running: list[tuple[NodePaths, subprocess.Popen]] = []
    deadline = time.monotonic() + 120
    try:
        for node in nodes:
            if node.kraft_dir.exists():  # left by an interrupted first start
                shutil.rmtree(node.kraft_dir)
            quorum = ["--standalone"] if layout.nodes == 1 else []  # a cluster's voters are in its config
            command = _java_command(
                java, libs, node, heap, "kafka.tools.StorageTool", "format", *quorum, "-t", cluster_id,
                "-c", str(node.server_properties), *scram,
            )  # fmt: skip
            process = subprocess.Popen(
                command, cwd=node.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            running.append((node, process))
        for node, process in running:
            try:
                output, _ = process.communicate(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired as error:
                raise BrokerError("formatting the Kafka storage took more than 120 s") from error
            if process.returncode != 0:
                tail = _last_lines(output.decode("utf-8", "replace").splitlines(), 12)
                raise BrokerError(
                    f"formatting the Kafka storage in {node.kraft_dir} failed (exit code {process.returncode})"
                    + (":\n" + tail if tail else ""),
                    hint=f"see {node.log_file}",
                )
    finally:
        for _, process in running:
            if process.poll() is None:
                process.kill()
                process.wait()


def _remembered_layout(state: dict) -> ClusterLayout:
    return ClusterLayout(
        nodes=state.get("nodes", 1),
        port=state["port"],
        controller_port=state["controller_port"],
        listen=str(state.get("listen", HOST)),
        advertise=str(state.get("advertise", HOST)),
    )


def _check_layout(layout: ClusterLayout) -> None:
    last = layout.nodes - 1
    for first, option in ((layout.port, "--port"), (layout.controller_port, "--controller-port")):
        if not 1 <= first <= 65535 - last:
            span = f" (and the next {last})" if last else ""
            raise UsageError(f"{option} {first}{span} is not a TCP port (1-65535)")
    if abs(layout.port - layout.controller_port) <= last:
        if not last:
            raise UsageError(f"--port and --controller-port must differ (both are {layout.port})")
        raise UsageError(
            f"the broker ports {layout.port}-{layout.port + last} and the controller ports "
            f"{layout.controller_port}-{layout.controller_port + last} overlap",
            hint=f"leave out --controller-port (it defaults to port + {layout.nodes}), or choose another",
        )


def _node_name(node_id: int, nodes: int) -> str:
    return "Apache Kafka" if nodes == 1 else f"Kafka node {node_id}"


@_file_errors_as_broker_errors
def start_broker(
    port: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    nodes: int | None = None,
    controller_port: int | None = None,
    listen: str | None = None,
    advertise: str | None = None,
    heap: str = DEFAULT_HEAP,
    timeout: float = DEFAULT_START_TIMEOUT,
    progress: Progress | None = None,
    secured: bool = False,
    acl_namespace: str | None = None,
) -> BrokerInfo:
    """Start the nodes of the local Kafka that are not running, in the background;
    return once each of them answers clients.

    ``secured`` (fixed when the data dir is formatted, like ``nodes``): SASL/SCRAM over
    TLS, the standard authorizer, a server and a client principal, and the ACLs of the
    minigit topics of ``acl_namespace`` (default: the empty namespace), granted at every
    start of a secured Kafka (running or not) and remembered for the next ones
    (see ``devkafka.secure``). ``info.security`` then says how each side connects.

    The first start formats the data dir for ``nodes`` nodes (default 1), with
    ``controller_port`` defaulting to ``port + nodes``; both are then fixed, and
    ``nodes`` may be left out. ``port`` (default 9092), ``listen`` and ``advertise``
    (default 127.0.0.1) left out are those of the last start. When some nodes run,
    the missing ones start with the ports and addresses the running ones use,
    whatever is passed. When all run, returns their info (no node ``started``).
    Raises ``BrokerError``/``UsageError``.
    """
    began = time.monotonic()
    say = progress or (lambda _message: None)
    paths = BrokerPaths.of(data_dir)
    _check_data_dir(paths)
    if not re.fullmatch(r"[1-9][0-9]*[kKmMgG]?", heap):
        raise UsageError(f"--heap {heap!r} is not a Java heap size such as 512m or 1g")
    if nodes is not None and nodes < 1:
        raise UsageError(f"--nodes {nodes}: a Kafka has at least one node")
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(paths.lock_file):
        state = _read_state(paths)
        formatted = bool(state and state.get("formatted"))
        if formatted:
            count = state.get("nodes", 1)
            if nodes is not None and nodes != count:
                raise UsageError(
                    f"{paths.data_dir} holds a Kafka of {_count(count, 'node')}, not {nodes}",
                    hint="leave out --nodes, or use another --data-dir for a new Kafka",
                )
            if secured and not state.get("secure"):
                raise UsageError(
                    f"{paths.data_dir} holds a Kafka formatted without --secure",
                    hint="use another --data-dir for a secured Kafka (its users are created when it is formatted)",
                )
            secured = bool(state.get("secure"))
        else:
            count = nodes or 1
        if acl_namespace is not None:
            if not secured:
                raise UsageError("--acl-namespace grants ACLs, which only a Kafka started with --secure has")
            check_namespace(acl_namespace)
        running = {n: pid for n in range(1, count + 1) if (pid := _find_broker_pid(paths.node(n, count)))}
        last = state or {}
        if port is None:
            port = last.get("port", DEFAULT_PORT)
        if listen is None:
            listen = str(last.get("listen", HOST))
            advertise = advertise or last.get("advertise")

        if running:  # complete what runs, as it runs
            layout = _remembered_layout(state) if state else ClusterLayout(count, port, port + count)
        else:
            if formatted and controller_port is not None and controller_port != state["controller_port"]:
                raise UsageError(
                    f"{paths.data_dir} was formatted with controller port {state['controller_port']}, "
                    f"not {controller_port}",
                    hint=f"use --controller-port {state['controller_port']} (or leave it out), or another --data-dir",
                )
            if formatted:
                controller_port = state["controller_port"]
            elif controller_port is None:
                controller_port = port + count
            layout = ClusterLayout(count, port, controller_port, *check_addresses(listen, advertise))
            _check_layout(layout)
        to_start = [paths.node(n, count) for n in layout.node_ids if n not in running]
        if not to_start:
            security = _grant_acls(paths, layout, state, acl_namespace) if secured else None
            return _info(paths, layout, state, running, {}, time.monotonic() - began, security)
        for node in to_start:
            check_port_free(layout.broker_port(node.node_id), "--port", layout.listen)
            check_port_free(layout.node_controller_port(node.node_id), "--controller-port")
            node.pid_file.unlink(missing_ok=True)  # stale

        java = find_java().path
        libs = ensure_kafka_jars(progress=say)
        if not formatted:
            state = {
                "cluster_id": (state or {}).get("cluster_id") or new_cluster_id(),
                "controller_port": layout.controller_port,
                "nodes": count,
                "formatted": False,
                "secure": secured,
            }
        state.update(
            port=layout.port, listen=layout.listen, advertise=layout.advertise, kafka_version=_jars_version(libs)
        )
        _write_state(paths, state)
        credentials, security_properties = None, None
        if secured:
            secure_paths = secure.SecurePaths.of(paths.data_dir)
            if formatted:
                credentials = secure.Credentials.load(secure_paths)
            else:  # new passwords for a new Kafka (an interrupted first start left unused ones)
                credentials = secure.Credentials.generate()
                credentials.save(secure_paths)
            secure.ensure_tls(secure_paths, secure.certificate_hosts(layout.listen, layout.advertise))
            security_properties = secure.broker_properties(secure.PROTOCOL, credentials, secure_paths)
        for node in to_start:
            _write_configs(node, layout, security_properties)
        if not formatted:
            kind = "single-node Kafka" if count == 1 else f"Kafka cluster of {count} nodes"
            say(f"formatting a new {'secured ' if secured else ''}{kind} in {paths.data_dir}")
            scram = credentials.scram_arguments() if credentials else ()
            _format_storage(java, libs, layout, to_start, state["cluster_id"], heap, scram)
            state["formatted"] = True
            _write_state(paths, state)

        if count == 1:
            say(f"starting Apache Kafka on {layout.bootstrap}")
        else:
            ports = ", ".join(host_port(layout.listen, layout.broker_port(node.node_id)) for node in to_start)
            say(f"starting Apache Kafka {node_list(to_start)} on {ports}")
        started: dict[int, int] = {}
        try:
            offsets = {node.node_id: _log_offsets(node) for node in to_start}
            for node in to_start:
                started[node.node_id] = _launch(java, libs, node, heap)
            probe_options = credentials and secure.kafka_options(
                secure.ADMIN_USER, credentials, secure.SecurePaths.of(paths.data_dir)
            )
            launched = {paths.node(n, count): pid for n, pid in started.items()}
            _wait_until_ready(layout, launched, offsets, timeout, probe_options or {})
        except BaseException:
            _terminate(list(started.values()), 10)
            for node in to_start:
                node.pid_file.unlink(missing_ok=True)
            raise
        security = _grant_acls(paths, layout, state, acl_namespace) if secured else None
        return _info(paths, layout, state, running, started, time.monotonic() - began, security)


def _grant_acls(
    paths: BrokerPaths, layout: ClusterLayout, state: dict, acl_namespace: str | None
) -> secure.SecureAccess:
    """Grant the server and client principals their ACLs on the topics of every namespace
    this Kafka was started for (granting again what exists changes nothing), and write
    each principal's settings file. Runs under the data dir's lock."""
    namespaces = list(state.get("acl_namespaces", [""]))
    if acl_namespace is not None and acl_namespace not in namespaces:
        namespaces.append(acl_namespace)
    access = secure.SecureAccess.load(paths.data_dir, layout.bootstrap)
    secure.write_environment_files(layout.bootstrap, access.credentials, access.paths)
    grants = [grant for namespace in namespaces for grant in secure.grants(namespace)]
    probe = ",".join(host_port(layout.probe_host, layout.broker_port(n)) for n in layout.node_ids)
    create_acls(KafkaSettings(probe, options=access.options(secure.ADMIN_USER)), grants)
    if namespaces != state.get("acl_namespaces"):
        state["acl_namespaces"] = namespaces
        _write_state(paths, state)
    return access


def create_acls(settings: KafkaSettings, grants: Sequence[secure.Grant]) -> None:
    """Create one ALLOW ACL per grant, on its literal resource name, from any host."""
    from kafka.admin import (  # imported late: `--help` stays fast
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )
    from kafka.errors import KafkaError

    from minigit.kafka_clients import open_admin

    acls = [
        ACL(
            principal=grant.principal,
            host="*",
            operation=ACLOperation[grant.operation],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(ResourceType[grant.resource], grant.name, ACLResourcePatternType.LITERAL),
        )
        for grant in grants
    ]
    admin = open_admin(settings, client_id="minigit-kafka-start")
    try:
        result = admin.create_acls(acls)
    except KafkaError as error:
        raise BrokerError(f"could not create the ACLs of the minigit topics: {error}") from error
    finally:
        with contextlib.suppress(Exception):
            admin.close()
    if result.get("failed"):
        acl, error = result["failed"][0]
        raise BrokerError(
            f"Kafka refused {len(result['failed'])} of {len(acls)} ACLs, the first "
            f"({acl.principal} {acl.operation.name} {acl.resource_pattern.resource_name}): {error}"
        )


def node_list(nodes: Sequence[NodePaths] | Sequence[NodeInfo]) -> str:
    """ "node 2" or "nodes 1, 3"."""
    return ("node " if len(nodes) == 1 else "nodes ") + ", ".join(str(node.node_id) for node in nodes)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _info(
    paths: BrokerPaths,
    layout: ClusterLayout,
    state: dict | None,
    running: dict[int, int],
    started: dict[int, int],
    elapsed: float,
    security: secure.SecureAccess | None = None,
) -> BrokerInfo:
    return BrokerInfo(
        paths.data_dir,
        tuple(
            NodeInfo(
                n,
                True,
                paths.node(n, layout.nodes).log_file,
                pid=running.get(n) or started.get(n),
                port=layout.broker_port(n),
                controller_port=layout.node_controller_port(n),
                started=n in started,
            )
            for n in layout.node_ids
        ),
        kafka_version=(state or {}).get("kafka_version"),
        advertise=layout.advertise,
        listen=layout.listen,
        elapsed=elapsed,
        security=security,
    )


def _launch(java: str, libs: Path, node: NodePaths, heap: str) -> int:
    """Start the node's JVM detached from us (own session, no terminal) and record its pid."""
    command = _java_command(java, libs, node, heap, MAIN_CLASS, str(node.server_properties))
    with open(node.console_file, "ab") as console:
        console.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        console.flush()
        try:
            process = subprocess.Popen(
                command,
                cwd=node.root,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as error:
            raise BrokerError(f"could not run {java}: {error.strerror}") from error
    _write_atomic(node.pid_file, f"{process.pid}\n")
    # The broker outlives this process; keep the Popen object (no "still running"
    # warning on garbage collection); _reap collects it if it ends while we live.
    _launched.append(process)
    return process.pid


_launched: list[subprocess.Popen] = []


def _wait_until_ready(
    layout: ClusterLayout,
    launched: dict[NodePaths, int],
    offsets: dict[int, dict[Path, int]],
    timeout: float,
    options: dict[str, object],
) -> None:
    """Until every launched node answers (``options``: a secured Kafka's admin login);
    nodes of a new cluster wait for each other (quorum)."""
    deadline = time.monotonic() + timeout
    waiting = dict(launched)
    while waiting:
        for node, pid in list(waiting.items()):
            name = _node_name(node.node_id, layout.nodes)
            if not _is_alive(pid):
                raise BrokerError(
                    f"{name} exited during startup; " + _failure_details(node, offsets[node.node_id]),
                    hint=f"see {node.log_file}",
                )
            port = layout.broker_port(node.node_id)
            address = host_port(layout.probe_host, port)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"{name} did not answer on {address} within {timeout:.0f} s "
                    f"(stopped {'it' if layout.nodes == 1 else 'the nodes this start launched'}); "
                    + _failure_details(node, offsets[node.node_id]),
                    hint=f"see {node.log_file}; a slow machine may need a longer --timeout",
                )
            if _port_accepts(port, layout.probe_host) and _broker_answers(
                address, node.node_id, min(5.0, remaining), options
            ):
                del waiting[node]
        if waiting:
            time.sleep(0.2)


@_file_errors_as_broker_errors
def stop_broker(
    data_dir: str | os.PathLike[str] | None = None, *, node: int | None = None, timeout: float = DEFAULT_STOP_TIMEOUT
) -> StopResult:
    """Stop this data dir's nodes (or only ``node``): SIGTERM, up to ``timeout`` s, then SIGKILL.

    Not running is fine.
    """
    began = time.monotonic()
    paths = BrokerPaths.of(data_dir)
    if not paths.data_dir.is_dir():
        return StopResult(paths.data_dir)
    with _locked(paths.lock_file):
        state = _read_state(paths)
        count = state.get("nodes", 1) if state else 1
        if node is not None and not 1 <= node <= count:
            raise UsageError(
                f"--node {node}: the Kafka in {paths.data_dir} has {_count(count, 'node')}",
                hint=f"choose a node from 1 to {count}" if count > 1 else "leave out --node",
            )
        running = {n: pid for n in range(1, count + 1) if (pid := _find_broker_pid(paths.node(n, count)))}
        pids = {n: pid for n, pid in running.items() if node in (None, n)}
        # Without a majority of controllers, a node's controlled shutdown waits for an
        # answer that never comes: it would only sit there until SIGKILL.
        without_quorum = count > 1 and len(running) <= count // 2
        grace = min(timeout, NO_QUORUM_STOP_TIMEOUT) if without_quorum else timeout
        killed = _terminate(list(pids.values()), grace)
        for n in range(1, count + 1):
            if node in (None, n):
                paths.node(n, count).pid_file.unlink(missing_ok=True)
        stopped = tuple(StoppedNode(n, pid, pid in killed) for n, pid in pids.items())
        return StopResult(paths.data_dir, stopped, time.monotonic() - began, grace, without_quorum)


@_file_errors_as_broker_errors
def read_broker_status(data_dir: str | os.PathLike[str] | None = None) -> BrokerInfo:
    """Whether each node of this data dir runs, and where (reads only; changes nothing)."""
    paths = BrokerPaths.of(data_dir)
    state = _read_state(paths) if paths.state_file.exists() else None
    layout = _remembered_layout(state) if state else None
    count = layout.nodes if layout else 1
    nodes = []
    for n in range(1, count + 1):
        node = paths.node(n, count)
        pid = _find_broker_pid(node) if paths.data_dir.is_dir() else None
        port = layout.broker_port(n) if layout else None
        nodes.append(
            NodeInfo(
                n,
                pid is not None,
                node.log_file,
                pid=pid,
                port=port,
                controller_port=layout.node_controller_port(n) if layout else None,
                accepting=_port_accepts(port, layout.probe_host) if pid is not None and layout else None,
            )
        )
    up = [paths.node(info.node_id, count) for info in nodes if info.running]
    security = secure.SecureAccess.load(paths.data_dir, layout.bootstrap) if state and state.get("secure") else None
    return BrokerInfo(
        paths.data_dir,
        tuple(nodes),
        kafka_version=state.get("kafka_version") if state else None,
        advertise=layout.advertise if layout else HOST,
        listen=layout.listen if layout else HOST,
        controller_leader=_controller_leader(up) if count > 1 else None,
        security=security,
    )


def _controller_leader(running: list[NodePaths]) -> int | None:
    """The active controller, as the running nodes last recorded it (newest epoch wins)."""
    seen = []
    for node in running:
        try:
            quorum = json.loads(node.quorum_state.read_text(encoding="utf-8"))
            seen.append((int(quorum["leaderEpoch"]), int(quorum["leaderId"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not seen:
        return None
    leader = max(seen)[1]
    return leader if leader in {node.node_id for node in running} else None  # a dead leader's successor is pending
