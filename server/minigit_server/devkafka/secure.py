"""What ``minigit-server kafka start --secure`` adds to a local Kafka: SASL/SCRAM-SHA-512
over TLS, the standard authorizer, three principals and the ACLs of the minigit topics.

Principals (SCRAM users, created when the data dir is formatted):

* ``admin``: the super user. The brokers use it among themselves, and ``kafka
  start`` uses it to probe the brokers and to create the ACLs.
* ``minigit-server``: the replicas. They read requests and the log, write the log,
  the replies and the heartbeats, and use the replicas' consumer group.
* ``minigit-client``: the ``minigit`` command. It writes requests and reads replies,
  nothing else.

Everything secret lives under ``<data dir>/secure/`` (a directory only its owner may
enter; every file in it 0600): the passwords, the TLS key and certificates, and one
``.env`` file per principal holding its ready-to-use ``MINIGIT_*`` settings.

Core module, pure: no Kafka client and no JVM here (``broker.py`` runs them); it
never prints.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from minigit.config import KafkaSettings, Topics
from minigit.errors import MinigitError

MECHANISM = "SCRAM-SHA-512"
PROTOCOL = "SASL_SSL"
ADMIN_USER = "admin"
SERVER_USER = "minigit-server"
CLIENT_USER = "minigit-client"
USERS = (ADMIN_USER, SERVER_USER, CLIENT_USER)
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
# The brokers reach the controllers on the PLAINTEXT controller listener (loopback
# only), where a connection's principal is ANONYMOUS; the controllers must let that
# principal register brokers and fetch the metadata log. See docs/security.md.
CONTROLLER_PRINCIPAL = "User:ANONYMOUS"
CERTIFICATE_DAYS = 825  # the longest validity TLS clients accept for a server certificate


class SecurityFilesError(MinigitError):
    """The secured Kafka's credentials or certificates cannot be read or written."""


# --------------------------------------------------------------------------- where things live


@dataclass(frozen=True)
class SecurePaths:
    """The secrets of one secured local Kafka: ``<data dir>/secure/``."""

    root: Path

    @classmethod
    def of(cls, data_dir: Path) -> SecurePaths:
        return cls(data_dir / "secure")

    @property
    def credentials(self) -> Path:
        return self.root / "credentials.json"

    @property
    def ca_certificate(self) -> Path:
        """What clients trust (``ssl_cafile``): the certificate of the local certificate authority."""
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The local certificate authority's private key: issues the brokers' certificate again when needed."""
        return self.root / "ca-key.pem"

    @property
    def broker_keystore(self) -> Path:
        """The brokers' private key and certificate chain, one PEM file (Kafka's ``ssl.keystore.type=PEM``)."""
        return self.root / "broker.pem"

    def environment_file(self, user: str) -> Path:
        return self.root / f"{user}.env"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read, atomically; the mode is set before any secret is in it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # mkdir's mode is filtered by the umask, and an existing dir keeps its own


# --------------------------------------------------------------------------- passwords


@dataclass(frozen=True)
class Credentials:
    """The SCRAM password of each principal."""

    passwords: dict[str, str]

    @classmethod
    def generate(cls) -> Credentials:
        # URL-safe characters only: the value goes into the StorageTool's
        # 'name=...,password=...' argument and a JAAS string unescaped
        return cls({user: secrets.token_urlsafe(24) for user in USERS})

    @classmethod
    def load(cls, paths: SecurePaths) -> Credentials:
        try:
            stored = json.loads(paths.credentials.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SecurityFilesError(
                f"{paths.credentials} is missing: the passwords of this secured Kafka are lost",
                hint=f"remove {paths.root.parent} to start over with a new secured Kafka",
            ) from None
        except (OSError, ValueError) as error:
            raise SecurityFilesError(f"{paths.credentials} is unreadable: {error}") from error
        if not isinstance(stored, dict) or not all(isinstance(stored.get(user), str) for user in USERS):
            raise SecurityFilesError(
                f"{paths.credentials} does not hold a password for each of {', '.join(USERS)}",
                hint=f"remove {paths.root.parent} to start over with a new secured Kafka",
            )
        return cls({user: stored[user] for user in USERS})

    def save(self, paths: SecurePaths) -> None:
        make_private_dir(paths.root)
        write_private(paths.credentials, json.dumps(self.passwords, indent=2, sort_keys=True) + "\n")

    def scram_arguments(self) -> list[str]:
        """The StorageTool ``--add-scram`` options that create every principal at format time."""
        arguments = []
        for user in USERS:
            arguments += ["--add-scram", f"{MECHANISM}=[name={user},password={self.passwords[user]}]"]
        return arguments


# --------------------------------------------------------------------------- TLS


def ensure_tls(paths: SecurePaths, hosts: list[str]) -> None:
    """A certificate authority of this data dir only (made once: clients keep trusting
    ``ca.pem``), and the brokers' certificate signed by it, valid for ``hosts`` (the
    addresses clients connect to, which TLS clients check); issued again when a start
    adds an address (a new --advertise)."""
    from cryptography import x509  # imported late: only --secure needs it
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if paths.broker_keystore.exists() and paths.ca_key.exists():
        try:
            current = x509.load_pem_x509_certificates(paths.broker_keystore.read_bytes())[0]
            covered = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, x509.ExtensionNotFound):
            covered = None
        if covered is not None and set(_alternative_names(hosts)) <= set(covered):
            return

    now = datetime.datetime.now(datetime.UTC)
    valid_from, valid_until = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=CERTIFICATE_DAYS)
    make_private_dir(paths.root)
    if paths.ca_key.exists() and paths.ca_certificate.exists():
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        ca_certificate = x509.load_pem_x509_certificate(paths.ca_certificate.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minigit local Kafka CA")])
        ca_certificate = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid_from)
            .not_valid_after(valid_until + datetime.timedelta(days=CERTIFICATE_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )  # signs certificates and CRLs, nothing else
            .sign(ca_key, hashes.SHA256())
        )
        write_private(paths.ca_key, _private_pem(ca_key))
        write_private(paths.ca_certificate, _certificate_pem(ca_certificate))

    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minigit local Kafka broker")]))
        .issuer_name(ca_certificate.subject)
        .public_key(broker_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_until)
        .add_extension(x509.SubjectAlternativeName(_alternative_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # the brokers are TLS clients of each other too (replication)
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH, x509.OID_CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    chain = _private_pem(broker_key) + _certificate_pem(broker_certificate) + _certificate_pem(ca_certificate)
    write_private(paths.broker_keystore, chain)


def _alternative_names(hosts: list[str]) -> list:
    from cryptography import x509

    names = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _private_pem(key) -> str:
    from cryptography.hazmat.primitives import serialization

    # Kafka reads an unencrypted PKCS#8 key (no ssl.key.password to keep); the file's 0600 mode protects it
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _certificate_pem(certificate) -> str:
    from cryptography.hazmat.primitives import serialization

    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def certificate_hosts(listen: str, advertise: str) -> list[str]:
    """Every address a client of this machine or of another may be told or may use."""
    hosts = ["127.0.0.1", "::1", "localhost", advertise]
    if listen not in {"0.0.0.0", "::"}:
        hosts.append(listen)
    return list(dict.fromkeys(hosts))


# --------------------------------------------------------------------------- broker settings


def jaas_scram(user: str, password: str) -> str:
    return f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" password="{password}";'


def broker_properties(listener: str, credentials: Credentials, paths: SecurePaths) -> dict[str, str]:
    """The server.properties entries that secure the client listener named ``listener``."""
    prefix = f"listener.name.{listener.lower()}"
    return {
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        # the brokers' own login among themselves (replication) on the secured listener
        f"{prefix}.{MECHANISM.lower()}.sasl.jaas.config": jaas_scram(ADMIN_USER, credentials.passwords[ADMIN_USER]),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(paths.broker_keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(paths.ca_certificate),
        "authorizer.class.name": AUTHORIZER,
        # what no ACL allows is refused, to everyone but the super users
        "allow.everyone.if.no.acl.found": "false",
        "super.users": f"User:{ADMIN_USER};{CONTROLLER_PRINCIPAL}",
    }


# --------------------------------------------------------------------------- what each side passes


def kafka_options(user: str, credentials: Credentials, paths: SecurePaths) -> dict[str, object]:
    """The kafka-python settings (minigit's ``--kafka-option`` names) of one principal."""
    return {
        "security_protocol": PROTOCOL,
        "sasl_mechanism": MECHANISM,
        "sasl_plain_username": user,
        "sasl_plain_password": credentials.passwords[user],
        "ssl_cafile": str(paths.ca_certificate),
    }


def environment(bootstrap: str, user: str, credentials: Credentials, paths: SecurePaths) -> dict[str, str]:
    """The ``MINIGIT_*`` variables a replica (``SERVER_USER``) or a client (``CLIENT_USER``) needs."""
    settings = KafkaSettings(bootstrap, options=kafka_options(user, credentials, paths))
    return {"MINIGIT_BOOTSTRAP": bootstrap, **settings.security_environment()}


def write_environment_files(bootstrap: str, credentials: Credentials, paths: SecurePaths) -> None:
    """``<user>.env`` for the server and the client principal: NAME=value lines, for
    ``set -a; . FILE; set +a``, Docker's ``env_file`` or systemd's ``EnvironmentFile``."""
    make_private_dir(paths.root)
    for user in (SERVER_USER, CLIENT_USER):
        lines = environment(bootstrap, user, credentials, paths)
        write_private(paths.environment_file(user), "".join(f"{name}={value}\n" for name, value in lines.items()))


# --------------------------------------------------------------------------- ACLs


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW ACL on a literal resource name, from any host."""

    principal: str  # "User:minigit-client"
    resource: str  # "TOPIC" or "GROUP" (kafka-python's ResourceType names)
    name: str
    operation: str  # "READ", "WRITE", "DESCRIBE", "CREATE" (kafka-python's ACLOperation names)


def grants(namespace: str) -> list[Grant]:
    """What the server and client principals may do with the topics of one namespace.

    DESCRIBE is what a metadata request needs (partitions, leaders, end offsets);
    CREATE lets the first replica create the topics it finds missing. The client
    reads its reply partition without a consumer group, so it needs no group ACL.
    Literal names: Kafka's prefixed patterns match a name's start only, and every
    topic of a namespace starts alike.
    """
    topics = Topics.for_namespace(namespace)
    server, client = f"User:{SERVER_USER}", f"User:{CLIENT_USER}"
    allowed = {
        (server, "TOPIC", topics.requests): ("READ", "DESCRIBE", "CREATE"),
        (server, "TOPIC", topics.log): ("READ", "WRITE", "DESCRIBE", "CREATE"),
        (server, "TOPIC", topics.responses): ("WRITE", "DESCRIBE", "CREATE"),
        (server, "TOPIC", topics.replicas): ("READ", "WRITE", "DESCRIBE", "CREATE"),
        (server, "GROUP", topics.group): ("READ", "DESCRIBE"),
        (client, "TOPIC", topics.requests): ("WRITE", "DESCRIBE"),
        (client, "TOPIC", topics.responses): ("READ", "DESCRIBE"),
    }
    return [
        Grant(principal, resource, name, operation)
        for (principal, resource, name), operations in allowed.items()
        for operation in operations
    ]


# --------------------------------------------------------------------------- the whole picture


@dataclass(frozen=True)
class SecureAccess:
    """How each side reaches a secured local Kafka: what ``kafka start --secure`` prints."""

    directory: Path
    credentials: Credentials
    bootstrap: str

    @classmethod
    def load(cls, data_dir: Path, bootstrap: str) -> SecureAccess:
        paths = SecurePaths.of(data_dir)
        return cls(paths.root, Credentials.load(paths), bootstrap)

    @property
    def paths(self) -> SecurePaths:
        return SecurePaths(self.directory)

    def options(self, user: str) -> dict[str, object]:
        return kafka_options(user, self.credentials, self.paths)

    def environment(self, user: str) -> dict[str, str]:
        return environment(self.bootstrap, user, self.credentials, self.paths)

    def environment_file(self, user: str) -> Path:
        return self.paths.environment_file(user)
