"""Where the service is and how to reach it: Kafka settings, topic names, and the
one place that decides which setting wins.

Precedence, for every command of both CLIs: command-line flag, then MINIGIT_*
environment variable (Typer merges these two), then the working directory's
``.minigit`` (client commands), then the default. ``ServerFlags.resolve`` is
the only code that applies it; a command calls it once and passes the
resulting ``KafkaSettings`` on.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from minigit.errors import CorruptMetadata, ServerUnreachable, UsageError

DEFAULT_BOOTSTRAP = "localhost:9092"
KAFKA_ENV_PREFIX = "MINIGIT_KAFKA_"

# The bounds of the client's --timeout (seconds), and of minigit-server ping's.
MIN_TIMEOUT_S = 0.1
MAX_TIMEOUT_S = 3600.0
# What one push may upload (compressed), unless `minigit-server start --max-push-bytes` says otherwise.
DEFAULT_MAX_PUSH_BYTES = 1024**3

# The user's own files (keys, known servers) live in this directory.
CONFIG_DIR_ENV = "MINIGIT_CONFIG_DIR"


def user_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$MINIGIT_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/minigit``, else ``~/.config/minigit``.

    A relative XDG_CONFIG_HOME is ignored, as the XDG Base Directory spec says:
    it would put a user's keys wherever the command happens to run."""
    environ = os.environ if environ is None else environ
    if environ.get(CONFIG_DIR_ENV):
        return Path(environ[CONFIG_DIR_ENV]).expanduser()
    xdg = environ.get("XDG_CONFIG_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "minigit"
    return Path.home() / ".config" / "minigit"


# kafka-python settings a real cluster may need (SASL/SSL), passed through as given
# (booleans parsed, and the values of OPTION_CHOICES checked).
# Set them as MINIGIT_KAFKA_<NAME> (e.g. MINIGIT_KAFKA_SECURITY_PROTOCOL=SASL_SSL)
# or --kafka-option name=value.
SECURITY_OPTIONS: dict[str, type] = {
    "security_protocol": str,
    "sasl_mechanism": str,
    "sasl_plain_username": str,
    "sasl_plain_password": str,
    "sasl_kerberos_service_name": str,
    "sasl_kerberos_domain_name": str,
    "ssl_cafile": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_password": str,
    "ssl_crlfile": str,
    "ssl_ciphers": str,
    "ssl_check_hostname": bool,
    "client_id": str,
}

# Options that take one of a few values. kafka-python itself does not check them:
# it connects in plaintext, without a word, when security_protocol is misspelt.
OPTION_CHOICES: dict[str, tuple[str, ...]] = {
    "security_protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    "sasl_mechanism": ("PLAIN", "GSSAPI", "OAUTHBEARER", "SCRAM-SHA-256", "SCRAM-SHA-512"),
}

# A consumer's fetch from one partition must hold a whole chunk record
# (codec.MAX_RECORD_BYTES, about 700 KB once encoded) with room to spare.
FETCH_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class Topics:
    """The service's topic and group names. The base names are the ones the
    service has always used; a namespace prefix lets several services (or test
    runs) share one cluster."""

    requests: str
    responses: str
    log: str
    replicas: str
    group: str

    @classmethod
    def for_namespace(cls, namespace: str) -> Topics:
        return cls(
            requests=f"{namespace}repo-requests",
            responses=f"{namespace}repo-responses",
            log=f"{namespace}repo-log",
            replicas=f"{namespace}repo-replicas",
            group=f"{namespace}minigit-replicas",
        )


@dataclass(frozen=True)
class KafkaSettings:
    """A resolved address of the service: what every Kafka connection is built from."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    namespace: str = ""  # prefix of every topic and group name
    options: Mapping[str, object] = field(default_factory=dict)

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap.split(",") if s.strip()]

    @property
    def topics(self) -> Topics:
        return Topics.for_namespace(self.namespace)

    def kafka_options(self) -> dict[str, object]:
        """kafka-python keyword arguments shared by every connection of both sides."""
        return {"bootstrap_servers": self.servers, **self.options}

    def unreachable(self, error: Exception) -> ServerUnreachable:
        return ServerUnreachable(
            f"cannot reach Kafka at {self.bootstrap}: {error.__class__.__name__}",
            hint="check --bootstrap / MINIGIT_BOOTSTRAP, and that the broker and 'minigit-server start' are running",
        )

    def security_environment(self) -> dict[str, str]:
        """The security options as MINIGIT_KAFKA_* variables, to hand to a child
        process without putting passwords on its command line."""
        return {
            f"{KAFKA_ENV_PREFIX}{name.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
            for name, value in self.options.items()
        }


@dataclass(frozen=True)
class ServerFlags:
    """What the command line and the environment said about the service; None
    means "not said", so that ``.minigit`` and then the default decide."""

    bootstrap: str | None = None
    namespace: str | None = None
    options: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def parse(
        cls,
        bootstrap: str | None,
        namespace: str | None,
        kafka_option_flags: Iterable[str] | None = (),
        environ: Mapping[str, str] | None = None,
    ) -> ServerFlags:
        """Check the raw values of the --bootstrap, --namespace and --kafka-option
        flags (a usage error names the bad one). An empty --bootstrap is a usage
        error too; an empty MINIGIT_BOOTSTRAP never gets here (click takes an empty
        variable for an unset one)."""
        return cls(
            bootstrap=check_bootstrap(bootstrap) if bootstrap is not None else None,
            namespace=check_namespace(namespace) if namespace is not None else None,
            options=read_kafka_options(kafka_option_flags or (), environ),
        )

    def resolve(self, saved: tuple[str, str] | None = None, where: str = ".minigit") -> KafkaSettings:
        """Flags (and MINIGIT_*) win, then ``saved`` (bootstrap, namespace) from
        ``.minigit`` (the file ``where``), then the defaults. A saved value that
        is used and malformed (the file was edited by hand) is CorruptMetadata."""
        saved_bootstrap, saved_namespace = saved if saved else (None, None)
        if self.bootstrap:
            bootstrap = self.bootstrap
        elif saved_bootstrap:
            try:
                bootstrap = ",".join(split_bootstrap(saved_bootstrap))
            except ValueError as error:
                raise corrupt_setting(where, f"bad bootstrap {saved_bootstrap!r}: {error}", "--bootstrap") from None
        else:
            bootstrap = DEFAULT_BOOTSTRAP
        if self.namespace is not None:
            namespace = self.namespace
        elif saved_namespace is not None:
            if not _NAMESPACE_RE.fullmatch(saved_namespace):
                raise corrupt_setting(where, f"bad namespace {saved_namespace!r}", "--namespace")
            namespace = saved_namespace
        else:
            namespace = ""
        return KafkaSettings(bootstrap, namespace, dict(self.options))


def corrupt_setting(where: str, reason: str, flag: str) -> CorruptMetadata:
    error = CorruptMetadata(where, reason)
    error.hint = f"nothing was changed; give the right value with {flag}, or clone the repository again"
    return error


BOOTSTRAP_FORMAT = "HOST:PORT[,HOST:PORT...], an IPv6 address in brackets as in [::1]:9092"
_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_DOTTED_NUMBERS_RE = re.compile(r"[0-9.]+")
_PORT_RE = re.compile(r"[0-9]{1,5}")


def split_bootstrap(text: str) -> list[str]:
    """The HOST:PORT entries of a bootstrap list (blanks around entries, and empty
    entries, are dropped, as Kafka's own clients do); ValueError says what is wrong."""
    servers = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not servers:
        raise ValueError("no HOST:PORT in it")
    for entry in servers:
        if entry.startswith("["):
            address, bracket, rest = entry[1:].partition("]")
            if not bracket:
                raise ValueError(f"{entry!r} has no ']' after its IPv6 address")
            if not _is_ipv6(address):
                raise ValueError(f"{address!r} in {entry!r} is not an IPv6 address")
            separator, port = rest[:1], rest[1:]
        else:
            host, separator, port = entry.rpartition(":")
            if ":" in host and (_is_ipv6(host) or _is_ipv6(entry)):
                raise ValueError(f"{entry!r}: write an IPv6 address in brackets, as in [::1]:9092")
            if separator and not is_host(host):
                raise ValueError(f"{host!r} in {entry!r} is not a host name or an IP address")
        if separator != ":" or not port:
            raise ValueError(f"{entry!r} has no port")
        if not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
            raise ValueError(f"the port of {entry!r} is not a number from 1 to 65535")
    return servers


def is_host(text: str) -> bool:
    """An IPv4 address, or a host name: at most 253 characters (one final dot
    aside) in dot-separated labels of 1 to 63 letters, digits, '-' and '_' that
    neither start nor end with '-'. Numbers and dots alone must be an IPv4
    address (999.1.1.1 is neither: it would only fail later, as a DNS lookup)."""
    if _DOTTED_NUMBERS_RE.fullmatch(text):
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            return False
        return True
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(_LABEL_RE.fullmatch(label) for label in name.split("."))


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def check_bootstrap(text: str) -> str:
    """A --bootstrap (or MINIGIT_BOOTSTRAP) value, checked and written as
    ``host:port,host:port``; a usage error otherwise."""
    try:
        return ",".join(split_bootstrap(text))
    except ValueError as error:
        raise UsageError(
            f"bad --bootstrap {text!r}: {error}; expected {BOOTSTRAP_FORMAT}",
            hint="the value comes from --bootstrap, else from the MINIGIT_BOOTSTRAP environment variable",
        ) from None


def parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{name} must be true or false, not {text!r}")


def parse_choice(name: str, text: str) -> str:
    """One of the values ``name`` takes (OPTION_CHOICES), in any case, spelt as kafka-python wants it."""
    choices = OPTION_CHOICES[name]
    for choice in choices:
        if text.strip().upper() == choice:
            return choice
    raise UsageError(f"{name} must be one of {', '.join(choices)}, not {text!r}")


def read_kafka_options(flags: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Security options from MINIGIT_KAFKA_* variables, overridden by --kafka-option flags."""
    environ = os.environ if environ is None else environ
    raw: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith(KAFKA_ENV_PREFIX):
            name = key[len(KAFKA_ENV_PREFIX) :].lower()
            if name in SECURITY_OPTIONS:
                raw[name] = value
    for flag in flags:
        name, sep, value = flag.partition("=")
        name = name.strip().lower().replace("-", "_").replace(".", "_")
        if not sep or name not in SECURITY_OPTIONS:
            known = ", ".join(sorted(SECURITY_OPTIONS))
            raise UsageError(f"bad --kafka-option {flag!r}: expected NAME=VALUE with NAME one of {known}")
        raw[name] = value
    return {name: parse_option(name, value) for name, value in raw.items()}


def parse_option(name: str, text: str) -> object:
    if SECURITY_OPTIONS[name] is bool:
        return parse_bool(name, text)
    if name in OPTION_CHOICES:
        return parse_choice(name, text)
    return text


_NAMESPACE_RE = re.compile(r"[A-Za-z0-9._-]{0,100}")


def check_namespace(namespace: str) -> str:
    """Kafka topic names allow ASCII letters, digits, '.', '_' and '-' (249 at most)."""
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise UsageError(f"invalid namespace {namespace!r}: use at most 100 ASCII letters, digits, '.', '_' and '-'")
    return namespace


# -- what a replica tells operators: its logs and its metrics (minigit-server start)

LOG_FORMATS = ("text", "json")
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 5
DEFAULT_METRICS_HOST = "127.0.0.1"
MAX_PORT = 65535


@dataclass(frozen=True)
class LogSettings:
    """How a server process writes its log file: ``format`` text or json (one JSON
    object a line), rotated at ``max_bytes`` (0: never) keeping ``backups`` old files."""

    format: str = "text"
    max_bytes: int = DEFAULT_LOG_MAX_BYTES
    backups: int = DEFAULT_LOG_BACKUPS

    @classmethod
    def parse(cls, log_format: str, max_bytes: int, backups: int) -> LogSettings:
        """The raw --log-format, --log-max-bytes and --log-backups values (or their
        MINIGIT_LOG_* variables, which Typer merged), checked."""
        chosen = log_format.strip().lower()
        if chosen not in LOG_FORMATS:
            raise UsageError(f"bad --log-format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
        if max_bytes < 0:
            raise UsageError(f"bad --log-max-bytes {max_bytes}: use 0 (never rotate) or a number of bytes")
        if backups < 1:
            # RotatingFileHandler never rotates without a backup to rotate to
            raise UsageError(f"bad --log-backups {backups}: keep at least 1 old log file")
        return cls(chosen, max_bytes, backups)

    def flags(self) -> list[str]:
        """These settings as the flags of a replica the supervisor starts."""
        return ["--log-format", self.format, "--log-max-bytes", str(self.max_bytes), "--log-backups", str(self.backups)]


@dataclass(frozen=True)
class MetricsSettings:
    """Where a replica serves its Prometheus metrics; ``port`` None: nowhere."""

    host: str = DEFAULT_METRICS_HOST
    port: int | None = None

    @classmethod
    def parse(cls, host: str, port: int | None, replicas: int = 1) -> MetricsSettings:
        """The raw --metrics-host and --metrics-port values; with ``replicas`` > 1
        every port up to ``port + replicas - 1`` must be a port too."""
        if not host.strip():
            raise UsageError("bad --metrics-host '': give an address to listen on, such as 127.0.0.1 or 0.0.0.0")
        if port is not None:
            if not 1 <= port <= MAX_PORT:
                raise UsageError(f"bad --metrics-port {port}: use a port from 1 to {MAX_PORT}")
            if port + replicas - 1 > MAX_PORT:
                raise UsageError(
                    f"bad --metrics-port {port}: {replicas} replicas need ports {port}-{port + replicas - 1}, "
                    f"past {MAX_PORT}"
                )
        return cls(host.strip(), port)

    def for_replica(self, number: int) -> MetricsSettings:
        """The settings of replica ``number`` (1, 2, ...) of a supervisor: port + number - 1."""
        return self if self.port is None else MetricsSettings(self.host, self.port + number - 1)

    def flags(self) -> list[str]:
        if self.port is None:
            return []
        return ["--metrics-host", self.host, "--metrics-port", str(self.port)]


# Retention of the transient topics (repo-requests, repo-responses). A request is
# served, and a reply read, within its client's timeout (at most MAX_TIMEOUT_S, an
# hour; a hedged resend is a new record, so it restarts the clock): requests are kept
# four times that, which covers a large upload sent before its request record, and
# replies twice that. Kafka deletes whole closed segments only, by their newest
# record: a segment is closed after SEGMENT_SHARE of the retention time (or bytes),
# so nothing is kept much longer than asked, and nothing younger than asked is deleted.
DEFAULT_REQUESTS_RETENTION_MS = 4 * 3600 * 1000
DEFAULT_RESPONSES_RETENTION_MS = 2 * 3600 * 1000
# Bytes kept per partition. A disk cap for a flood, not the guarantee (time is): it
# must hold several pushes of the largest size a replica accepts, so that a request
# waiting behind them is never deleted first (TopicRetention.parse checks it).
DEFAULT_RETENTION_BYTES = 8 * 1024**3
SEGMENT_SHARE = 4
MIN_SEGMENT_BYTES = 1024 * 1024  # Kafka 4 refuses smaller segments
MAX_SEGMENT_BYTES = 1024**3  # Kafka's default segment size
MIN_RETENTION_MS = 60 * 1000
# The largest value of a Kafka LONG setting (retention.ms, retention.bytes).
KAFKA_LONG_MAX = 2**63 - 1


@dataclass(frozen=True)
class TopicRetention:
    """How long (ms) and how much (bytes per partition) Kafka keeps of the transient
    topics: ``requests_ms``/``responses_ms`` and ``bytes`` (the same for both). The
    log (``repo-log``) is the source of truth and keeps everything whatever these say."""

    requests_ms: int = DEFAULT_REQUESTS_RETENTION_MS
    responses_ms: int = DEFAULT_RESPONSES_RETENTION_MS
    bytes: int = DEFAULT_RETENTION_BYTES

    @classmethod
    def parse(
        cls, requests_ms: int, responses_ms: int, per_partition_bytes: int, max_push_bytes: int = 0
    ) -> TopicRetention:
        """The raw --requests-retention-ms, --responses-retention-ms and
        --transient-retention-bytes values (or their MINIGIT_* variables, which Typer
        merged), checked against the push size limit of the replicas."""
        for flag, value in (("--requests-retention-ms", requests_ms), ("--responses-retention-ms", responses_ms)):
            if value < MIN_RETENTION_MS:
                raise UsageError(
                    f"bad {flag} {value}: keep at least {MIN_RETENTION_MS} ms",
                    hint="a request or reply must outlive its client's wait; the default is hours",
                )
        for flag, value in (
            ("--requests-retention-ms", requests_ms),
            ("--responses-retention-ms", responses_ms),
            ("--transient-retention-bytes", per_partition_bytes),
        ):
            if value > KAFKA_LONG_MAX:
                raise UsageError(
                    f"bad {flag} {value}: keep at most {KAFKA_LONG_MAX} (Kafka's largest setting)",
                    hint="these topics are transient: hours and gigabytes are plenty",
                )
        floor = max(2 * max_push_bytes, 4 * MIN_SEGMENT_BYTES)
        if per_partition_bytes < floor:
            raise UsageError(
                f"bad --transient-retention-bytes {per_partition_bytes}: keep at least {floor} bytes per partition",
                hint="a partition must hold two pushes of --max-push-bytes, or a request could be deleted unserved",
            )
        return cls(requests_ms, responses_ms, per_partition_bytes)

    def topic_configs(self, retention_ms: int) -> dict[str, str]:
        """Kafka topic settings of a transient topic kept ``retention_ms``."""
        segment_bytes = min(MAX_SEGMENT_BYTES, max(MIN_SEGMENT_BYTES, self.bytes // SEGMENT_SHARE))
        return {
            "cleanup.policy": "delete",
            "retention.ms": str(retention_ms),
            "retention.bytes": str(self.bytes),
            "segment.ms": str(max(1000, retention_ms // SEGMENT_SHARE)),
            "segment.bytes": str(segment_bytes),
        }

    def flags(self) -> list[str]:
        """These settings as the flags of a replica the supervisor starts."""
        return [
            "--requests-retention-ms",
            str(self.requests_ms),
            "--responses-retention-ms",
            str(self.responses_ms),
            "--transient-retention-bytes",
            str(self.bytes),
        ]


DEFAULT_LOGS = LogSettings()
NO_METRICS = MetricsSettings()
DEFAULT_RETENTION = TopicRetention()
