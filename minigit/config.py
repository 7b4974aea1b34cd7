"""Where to reach the service: bootstrap servers, topic namespace, Kafka security.

Precedence everywhere: command-line flag, then MINIGIT_* environment variable,
then (for client commands in a working directory) the .minigit file, then the
default. Typer resolves flag-then-environment; this module holds the rest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from minigit.errors import UsageError

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


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = DEFAULT_BOOTSTRAP
    namespace: str = ""  # prefix of every topic and group name
    options: Mapping[str, object] = field(default_factory=dict)

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap.split(",") if s.strip()]


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
    return {
        name: parse_bool(name, value) if SECURITY_OPTIONS[name] is bool else value for name, value in raw.items()
    }


_NAMESPACE_RE = re.compile(r"[A-Za-z0-9._-]{0,100}")


def check_namespace(namespace: str) -> str:
    """Kafka topic names allow ASCII letters, digits, '.', '_' and '-' (249 at most)."""
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise UsageError(
            f"invalid namespace {namespace!r}: use at most 100 ASCII letters, digits, '.', '_' and '-'"
        )
    return namespace
