"""Where the service is and how to reach it: Kafka settings, topic names, and the
one place that decides which setting wins.

Precedence, for every command of both CLIs: command-line flag, then MINIGIT_*
environment variable (Typer merges these two), then the working directory's
``.minigit`` (client commands), then the default. ``ServerFlags.resolve`` is
the only code that applies it; a command calls it once and passes the
resulting ``KafkaSettings`` on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from minigit.errors import ServerUnreachable, UsageError

DEFAULT_BOOTSTRAP = "localhost:9092"
KAFKA_ENV_PREFIX = "MINIGIT_KAFKA_"

# kafka-python settings a real cluster may need (SASL/SSL), passed through as given.
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
        """Check the raw values of the --bootstrap, --namespace and --kafka-option flags."""
        return cls(
            bootstrap=bootstrap or None,
            namespace=check_namespace(namespace) if namespace is not None else None,
            options=read_kafka_options(kafka_option_flags or (), environ),
        )

    def resolve(self, saved: tuple[str, str] | None = None) -> KafkaSettings:
        """Flags (and MINIGIT_*) win, then ``saved`` (bootstrap, namespace) from
        ``.minigit``, then the defaults."""
        saved_bootstrap, saved_namespace = saved if saved else (None, None)
        bootstrap = self.bootstrap or saved_bootstrap or DEFAULT_BOOTSTRAP
        namespace = next(n for n in (self.namespace, saved_namespace, "") if n is not None)
        return KafkaSettings(bootstrap, namespace, dict(self.options))


def parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{name} must be true or false, not {text!r}")


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
    return {name: parse_bool(name, value) if SECURITY_OPTIONS[name] is bool else value for name, value in raw.items()}


_NAMESPACE_RE = re.compile(r"[A-Za-z0-9._-]{0,100}")


def check_namespace(namespace: str) -> str:
    """Kafka topic names allow ASCII letters, digits, '.', '_' and '-' (249 at most)."""
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise UsageError(f"invalid namespace {namespace!r}: use at most 100 ASCII letters, digits, '.', '_' and '-'")
    return namespace
