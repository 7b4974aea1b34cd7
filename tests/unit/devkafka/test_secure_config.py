"""What `kafka start --secure` generates before any JVM starts: the brokers' security
settings, the principals' passwords and settings, the TLS files, and the ACLs."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from minigit.config import Topics, read_kafka_options
from minigit.errors import UsageError
from minigit_server.devkafka import broker, secure
from minigit_server.devkafka.broker import ClusterLayout, render_server_properties
from minigit_server.devkafka.secure import CLIENT_USER, SERVER_USER, Credentials, Grant, SecurePaths


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


@pytest.fixture
def paths(tmp_path) -> SecurePaths:
    return SecurePaths.of(tmp_path / "kafka")


def secured_config(layout: ClusterLayout, credentials: Credentials, paths: SecurePaths) -> dict[str, str]:
    security = secure.broker_properties(secure.PROTOCOL, credentials, paths)
    return properties(render_server_properties(layout, 1, Path("/data/kraft"), security))


def test_clients_and_brokers_share_one_sasl_ssl_listener_and_the_controllers_stay_on_loopback(paths):
    credentials = Credentials.generate()
    config = secured_config(ClusterLayout(1, 9092, 9093, "0.0.0.0", "teacher.local"), credentials, paths)
    assert config["listeners"] == "SASL_SSL://0.0.0.0:9092,CONTROLLER://127.0.0.1:9093"
    assert config["advertised.listeners"] == "SASL_SSL://teacher.local:9092"
    assert config["inter.broker.listener.name"] == "SASL_SSL"
    assert config["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    assert config["sasl.enabled.mechanisms"] == config["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    jaas = config["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert 'username="admin"' in jaas and f'password="{credentials.passwords["admin"]}"' in jaas
    assert config["ssl.keystore.type"] == config["ssl.truststore.type"] == "PEM"
    assert config["ssl.keystore.location"] == str(paths.broker_keystore)
    assert config["ssl.truststore.location"] == str(paths.ca_certificate)


def test_only_acls_and_super_users_grant_anything(paths):
    config = secured_config(ClusterLayout(3, 40000, 40003), Credentials.generate(), paths)
    assert config["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert config["allow.everyone.if.no.acl.found"] == "false"
    # the brokers' own login, and the controllers' listener (PLAINTEXT, loopback only)
    assert set(config["super.users"].split(";")) == {"User:admin", "User:ANONYMOUS"}
    assert SERVER_USER not in config["super.users"] and CLIENT_USER not in config["super.users"]


def test_an_unsecured_broker_keeps_its_plaintext_listener():
    config = properties(render_server_properties(ClusterLayout(1, 9092, 9093), 1, Path("/data/kraft")))
    assert config["listeners"].startswith("PLAINTEXT://")
    assert "authorizer.class.name" not in config and "sasl.enabled.mechanisms" not in config


def allowed(grants: list[Grant], user: str) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for grant in grants:
        if grant.principal == f"User:{user}":
            found.setdefault((grant.resource, grant.name), set()).add(grant.operation)
    return found


def test_a_client_may_write_requests_and_read_replies_and_nothing_else():
    topics = Topics.for_namespace("lab-")
    assert allowed(secure.grants("lab-"), CLIENT_USER) == {
        ("TOPIC", topics.requests): {"WRITE", "DESCRIBE"},
        ("TOPIC", topics.responses): {"READ", "DESCRIBE"},
    }


def test_the_server_reads_requests_and_the_log_and_writes_the_log_replies_and_heartbeats():
    topics = Topics.for_namespace("")
    server = allowed(secure.grants(""), SERVER_USER)
    assert {name for (_, name), operations in server.items() if "READ" in operations} == {
        topics.requests,
        topics.log,
        topics.replicas,  # status and verify read the heartbeats
        topics.group,  # joining the replicas' consumer group
    }
    assert {name for (_, name), operations in server.items() if "WRITE" in operations} == {
        topics.log,
        topics.responses,
        topics.replicas,
    }
    assert server[("GROUP", topics.group)] == {"READ", "DESCRIBE"}
    # the first replica creates the topics it finds missing
    assert all("CREATE" in operations for (kind, _), operations in server.items() if kind == "TOPIC")


def test_no_one_but_the_two_principals_is_granted_anything():
    assert {grant.principal for grant in secure.grants("x-")} == {f"User:{SERVER_USER}", f"User:{CLIENT_USER}"}


def test_passwords_are_random_kept_for_the_owner_only_and_created_at_format_time(paths):
    credentials = Credentials.generate()
    assert len(set(credentials.passwords.values())) == 3
    assert all(len(password) >= 32 for password in credentials.passwords.values())
    credentials.save(paths)
    assert stat.S_IMODE(paths.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.credentials.stat().st_mode) == 0o600
    assert Credentials.load(paths) == credentials
    arguments = credentials.scram_arguments()
    assert arguments[::2] == ["--add-scram"] * 3
    assert arguments[3] == f"SCRAM-SHA-512=[name=minigit-server,password={credentials.passwords[SERVER_USER]}]"


def test_lost_or_damaged_passwords_are_one_line_errors(paths):
    with pytest.raises(secure.SecurityFilesError, match="missing") as lost:
        Credentials.load(paths)
    assert "start over" in lost.value.hint
    paths.root.mkdir(parents=True)
    paths.credentials.write_text(json.dumps({"admin": "x"}))
    with pytest.raises(secure.SecurityFilesError, match="does not hold a password"):
        Credentials.load(paths)


def test_each_principals_settings_are_minigit_variables_in_a_private_file(paths):
    credentials = Credentials.generate()
    secure.write_environment_files("teacher.local:9092", credentials, paths)
    for user in (SERVER_USER, CLIENT_USER):
        file = paths.environment_file(user)
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        environment = dict(line.split("=", 1) for line in file.read_text().splitlines())
        assert environment["MINIGIT_BOOTSTRAP"] == "teacher.local:9092"
        # what minigit reads back from them: exactly the principal's login
        assert read_kafka_options((), environment) == {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": user,
            "sasl_plain_password": credentials.passwords[user],
            "ssl_cafile": str(paths.ca_certificate),
        }


def names_of(certificate: x509.Certificate) -> set[str]:
    alternative = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name.value) for name in alternative}


def test_the_brokers_certificate_is_signed_by_the_local_ca_for_every_address_clients_use(paths):
    secure.ensure_tls(paths, secure.certificate_hosts("0.0.0.0", "192.168.1.20"))
    ca = x509.load_pem_x509_certificate(paths.ca_certificate.read_bytes())
    chain = x509.load_pem_x509_certificates(paths.broker_keystore.read_bytes())
    assert chain[1] == ca
    chain[0].verify_directly_issued_by(ca)
    assert names_of(chain[0]) == {"127.0.0.1", "::1", "localhost", "192.168.1.20"}
    assert "BEGIN PRIVATE KEY" in paths.broker_keystore.read_text()  # PKCS#8, as Kafka reads it
    for file in (paths.broker_keystore, paths.ca_key, paths.ca_certificate):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert isinstance(chain[0].public_key(), ec.EllipticCurvePublicKey)


def test_a_new_advertised_name_gets_a_new_certificate_from_the_same_ca(paths):
    secure.ensure_tls(paths, secure.certificate_hosts("127.0.0.1", "127.0.0.1"))
    ca_before, keystore_before = paths.ca_certificate.read_bytes(), paths.broker_keystore.read_bytes()
    secure.ensure_tls(paths, secure.certificate_hosts("127.0.0.1", "127.0.0.1"))
    assert paths.broker_keystore.read_bytes() == keystore_before  # nothing new to cover
    secure.ensure_tls(paths, secure.certificate_hosts("0.0.0.0", "teacher.local"))
    assert paths.ca_certificate.read_bytes() == ca_before  # clients keep trusting it
    assert "teacher.local" in names_of(x509.load_pem_x509_certificates(paths.broker_keystore.read_bytes())[0])


def formatted_state(data_dir: Path, *, secured: bool) -> None:
    data_dir.mkdir(parents=True)
    state = {"cluster_id": broker.new_cluster_id(), "controller_port": 40001, "port": 40000, "formatted": True}
    (data_dir / "broker.json").write_text(json.dumps({**state, "nodes": 1, "secure": secured}))


def test_a_kafka_formatted_without_secure_cannot_become_secured(tmp_path):
    formatted_state(tmp_path / "kafka", secured=False)
    with pytest.raises(UsageError, match="formatted without --secure") as refused:
        broker.start_broker(data_dir=tmp_path / "kafka", secured=True)
    assert "another --data-dir" in refused.value.hint
    with pytest.raises(UsageError, match="--acl-namespace"):
        broker.start_broker(data_dir=tmp_path / "kafka", acl_namespace="lab-")


def test_a_secured_kafkas_status_names_where_its_secrets_are(tmp_path):
    formatted_state(tmp_path / "kafka", secured=True)
    Credentials.generate().save(SecurePaths.of((tmp_path / "kafka").resolve()))
    info = broker.read_broker_status(tmp_path / "kafka")
    assert info.secured and info.security.directory == (tmp_path / "kafka" / "secure").resolve()
    assert info.security.environment(CLIENT_USER)["MINIGIT_BOOTSTRAP"] == "127.0.0.1:40000"
    assert not broker.read_broker_status(tmp_path / "other").secured
