"""docker-compose.yml and Dockerfile: Docker cannot run here, so check their structure."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# What a classroom sets to reach the broker from other machines (as for `minigit-server kafka start`).
COMPOSE_VARIABLES = {"MINIGIT_KAFKA_LISTEN", "MINIGIT_KAFKA_ADVERTISE"}
_VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)(?::-([^}]*))?\}")  # $${NAME} is a literal ${NAME}


def interpolate(value, env: dict[str, str]):
    """Compose's ${NAME} / ${NAME:-default} substitution, in every string of the file."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, str):
        return _VARIABLE.sub(lambda match: env.get(match.group(1)) or match.group(2) or "", value)
    return value


def load_compose(env: dict[str, str]) -> dict:
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), env)


@pytest.fixture(scope="module")
def compose() -> dict:
    """The file as `docker compose up` reads it with none of its variables set."""
    return load_compose({})


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "KEY=value" form
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """ "NAME://host:port,..." -> {NAME: (host, port)}."""
    parsed = {}
    for item in value.split(","):
        match = re.fullmatch(r"([A-Z_]+)://([^:]*):(\d+)", item.strip())
        assert match, f"not a listener: {item!r}"
        parsed[match.group(1)] = (match.group(2), int(match.group(3)))
    return parsed


def command(service: dict) -> list[str]:
    value = service["command"]
    return value.split() if isinstance(value, str) else [str(part) for part in value]


def option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def test_services(compose):
    assert set(compose["services"]) == {"kafka", "minigit-server"}
    assert set(compose.get("volumes", {})) >= {"kafka-data", "minigit-data"}


def test_kafka_is_the_official_apache_image_4x(compose):
    image = compose["services"]["kafka"]["image"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", image), image


def test_kafka_runs_one_kraft_node(compose):
    env = environment(compose["services"]["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    controller_name = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    bound = listeners(env["KAFKA_LISTENERS"])
    # the single static voter is this node, on its controller listener
    voter = re.fullmatch(r"(\d+)@([\w.-]+):(\d+)", env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
    assert voter, env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voter.group(1) == node_id
    assert voter.group(2) == compose["services"]["kafka"].get("hostname", "kafka")
    assert int(voter.group(3)) == bound[controller_name][1]
    # every listener has a protocol; the controller's is not advertised
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(bound) <= set(protocols)
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    assert set(advertised) <= set(bound) and controller_name not in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    # a valid cluster id: 16 bytes, base64url without padding
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16


def test_kafka_internal_topics_fit_one_node_and_limits_stay_default(compose):
    env = environment(compose["services"]["kafka"])
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
    ):
        assert env[key] == "1", key
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "KAFKA_MESSAGE_MAX_BYTES" not in env  # minigit must work with Kafka's default limits


def test_kafka_ports_and_healthcheck(compose):
    kafka = compose["services"]["kafka"]
    env = environment(kafka)
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(env["KAFKA_LISTENERS"])
    published = published_ports(kafka)
    # the host reaches the broker on localhost:<published port>, as advertised
    host_listeners = [name for name, (host, _) in advertised.items() if host in {"localhost", "127.0.0.1"}]
    assert host_listeners, advertised
    for name in host_listeners:
        assert published[bound[name][1]][1] == advertised[name][1]
    health = kafka["healthcheck"]
    assert health["test"][0] in {"CMD", "CMD-SHELL"} and "kafka" in " ".join(health["test"][1:])
    assert health.get("retries", 0) >= 1


def published_ports(kafka: dict) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port) of the "ADDRESS:HOST:CONTAINER" mappings."""
    published = {}
    for mapping in kafka["ports"]:
        address, host_port, container_port = str(mapping).rsplit(":", 2)
        published[int(container_port)] = (address, int(host_port))
    return published


def test_every_variable_is_a_known_one_with_a_default():
    found = _VARIABLE.findall(COMPOSE_FILE.read_text())
    assert {name for name, _ in found} == COMPOSE_VARIABLES
    assert all(default for _, default in found), found  # `docker compose up` works with none set


def test_by_default_the_broker_is_published_and_advertised_on_this_machine_only(compose):
    kafka = compose["services"]["kafka"]
    advertised = listeners(environment(kafka)["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(environment(kafka)["KAFKA_LISTENERS"])
    assert advertised["PLAINTEXT_HOST"] == ("localhost", 9092)
    assert published_ports(kafka)[bound["PLAINTEXT_HOST"][1]] == ("127.0.0.1", 9092)


def test_a_classroom_publishes_the_broker_on_every_interface_under_the_teachers_address():
    env = {"MINIGIT_KAFKA_LISTEN": "0.0.0.0", "MINIGIT_KAFKA_ADVERTISE": "192.168.1.20"}
    kafka = load_compose(env)["services"]["kafka"]
    advertised = listeners(environment(kafka)["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(environment(kafka)["KAFKA_LISTENERS"])
    assert advertised["PLAINTEXT_HOST"] == ("192.168.1.20", 9092)
    assert published_ports(kafka)[bound["PLAINTEXT_HOST"][1]] == ("0.0.0.0", 9092)
    # the compose network keeps its own name, and the controller is never published
    assert advertised["PLAINTEXT"] == ("kafka", 19092)
    assert bound["CONTROLLER"][1] not in published_ports(kafka)


def test_kafka_healthcheck_asks_the_broker_on_a_listener_it_binds(compose):
    kafka = compose["services"]["kafka"]
    command = " ".join(kafka["healthcheck"]["test"][1:])
    address = re.search(r"--bootstrap-server (\S+):(\d+)", command)
    assert address and "kafka-broker-api-versions" in command, command
    assert int(address.group(2)) in {port for _, port in listeners(environment(kafka)["KAFKA_LISTENERS"]).values()}


def test_the_server_is_healthy_when_verify_finds_every_replica_up_and_agreeing(compose):
    service = compose["services"]["minigit-server"]
    health = service["healthcheck"]
    test = [str(part) for part in health["test"]]
    assert test[0] == "CMD"
    args = test[1:]
    assert args[:2] == ["minigit-server", "verify"]
    started = command(service)
    assert option(args, "--expect") == option(started, "--replicas")
    assert option(args, "--bootstrap") == option(started, "--bootstrap")
    assert health.get("retries", 0) >= 1

    def seconds(text: str) -> float:
        return sum(float(n) * {"s": 1, "m": 60}[unit] for n, unit in re.findall(r"(\d+)([sm])", text))

    # verify waits up to 10 s for lagging replicas (its --wait) before it answers
    assert seconds(health["timeout"]) > 10
    assert seconds(health["start_period"]) >= 30


def test_minigit_server_builds_from_the_dockerfile_and_runs_the_server(compose):
    service = compose["services"]["minigit-server"]
    build = service["build"]
    context, dockerfile = (
        (build, "Dockerfile") if isinstance(build, str) else (build["context"], build.get("dockerfile", "Dockerfile"))
    )
    assert (ROOT / context / dockerfile).resolve() == ROOT / "Dockerfile"
    args = command(service)
    assert args[:2] == ["minigit-server", "start"]
    assert option(args, "--replicas") == "3"
    data_dir = option(args, "--data-dir")
    assert any(str(volume).split(":")[1] == data_dir for volume in service["volumes"])
    # it reaches Kafka on the compose network, through the listener advertised there
    kafka_env = environment(compose["services"]["kafka"])
    in_network = {f"{host}:{port}" for host, port in listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"]).values()}
    assert option(args, "--bootstrap") in in_network
    assert option(args, "--bootstrap").startswith("kafka:")
    assert service["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_dockerfile_installs_the_project():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"^RUN pip install \.", text, re.MULTILINE)
    for copied in ("pyproject.toml", "minigit/", "server/"):
        assert re.search(rf"^COPY .*{re.escape(copied)}", text, re.MULTILINE), copied


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_docker_compose_accepts_the_file():
    """`docker-compose config` validates the file without a Docker engine."""
    tool = _compose_command()
    if tool is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    result = subprocess.run(
        [*tool, "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- docker-compose.secure.yml (an override)

SECURE_FILE = ROOT / "docker-compose.secure.yml"
PASSWORDS = {
    "MINIGIT_KAFKA_ADMIN_PASSWORD": "admin-secret",
    "MINIGIT_KAFKA_SERVER_PASSWORD": "server-secret",
    "MINIGIT_KAFKA_CLIENT_PASSWORD": "client-secret",
}


_REQUIRED = re.compile(r"(?<!\$)\$\{(\w+):\?[^}]*\}")


def secure_text() -> str:
    """The override with its required ${NAME:?message} variables set to PASSWORDS."""
    return _REQUIRED.sub(lambda match: PASSWORDS[match.group(1)], SECURE_FILE.read_text())


@pytest.fixture(scope="module")
def secure_override() -> dict:
    return interpolate(yaml.safe_load(secure_text()), PASSWORDS)


def kafka_script(override: dict) -> str:
    """The secured kafka service's start script, as its shell runs it (compose turns $$ into $)."""
    kafka = override["services"]["kafka"]
    assert kafka["entrypoint"] == ["/bin/bash", "-c"]
    return kafka["command"][0].replace("$$", "$")


def heredoc(script: str, path: str) -> dict[str, str]:
    """The NAME=value lines the script writes to path with `cat > path <<EOF`."""
    body = script.split(f"cat > {path} <<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    return dict(line.split("=", 1) for line in body.splitlines())


def test_the_secured_variant_needs_three_passwords_and_has_no_default_for_any():
    text = SECURE_FILE.read_text().replace("$$", "")  # $$ is the script's own $, not compose's
    assert {name for name, _ in _VARIABLE.findall(text)} <= COMPOSE_VARIABLES  # the only ${NAME:-default}s
    assert set(_REQUIRED.findall(text)) == set(PASSWORDS)


def test_the_secured_broker_takes_only_scram_logins_and_refuses_what_no_acl_allows(secure_override, compose):
    script = kafka_script(secure_override)
    config = heredoc(script, "/tmp/server.properties")
    bound = listeners(config["listeners"])
    protocols = dict(item.split(":") for item in config["listener.security.protocol.map"].split(","))
    # every listener a client reaches is SASL; the controller's is never published
    assert {protocols[name] for name in bound if name != "CONTROLLER"} == {"SASL_PLAINTEXT"}
    assert bound["CONTROLLER"][1] not in published_ports(compose["services"]["kafka"])
    assert published_ports(compose["services"]["kafka"]).keys() <= {port for _, port in bound.values()}
    assert config["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert config["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert config["allow.everyone.if.no.acl.found"] == "false"
    assert set(config["super.users"].split(";")) == {"User:admin", "User:ANONYMOUS"}
    # the three users exist from the first format on
    for user in ("admin", "minigit-server", "minigit-client"):
        assert f'--add-scram "SCRAM-SHA-512=[name={user},password=' in script


def granted_acls(script: str) -> dict[tuple[str, str], set[str]]:
    """(principal, topic or group) -> operations, from the script's `acl ...` lines."""
    found: dict[tuple[str, str], set[str]] = {}
    for line in script.splitlines():
        words = line.split()
        if words[:1] == ["until"]:
            words = words[1:]
        if words[:1] != ["acl"] or "--allow-principal" not in words:
            continue
        resource = option(words, "--topic") if "--topic" in words else "group:" + option(words, "--group")
        operations = {words[i + 1] for i, word in enumerate(words) if word == "--operation"}
        found.setdefault((option(words, "--allow-principal"), resource.rstrip(";")), set()).update(operations)
    return found


def test_the_secured_variant_grants_what_kafka_start_secure_grants(secure_override):
    from minigit_server.devkafka import secure

    expected: dict[tuple[str, str], set[str]] = {}
    for grant in secure.grants(""):
        resource = grant.name if grant.resource == "TOPIC" else f"group:{grant.name}"
        expected.setdefault((grant.principal, resource), set()).add(grant.operation.capitalize())
    assert granted_acls(kafka_script(secure_override)) == expected


def test_the_secured_start_script_is_valid_bash(secure_override):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    checked = subprocess.run([bash, "-n"], input=kafka_script(secure_override), capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_the_secured_server_logs_in_as_the_server_principal(secure_override, compose):
    server = {
        **environment(compose["services"]["minigit-server"]),
        **environment(secure_override["services"]["minigit-server"]),
    }
    assert server["MINIGIT_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert server["MINIGIT_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert server["MINIGIT_KAFKA_SASL_PLAIN_USERNAME"] == "minigit-server"
    assert server["MINIGIT_KAFKA_SASL_PLAIN_PASSWORD"] == PASSWORDS["MINIGIT_KAFKA_SERVER_PASSWORD"]
    # its bootstrap (the compose network's listener) is advertised by the secured broker
    config = heredoc(kafka_script(secure_override), "/tmp/server.properties")
    in_network = {f"{host}:{port}" for host, port in listeners(config["advertised.listeners"]).values()}
    assert option(command(compose["services"]["minigit-server"]), "--bootstrap") in in_network


def test_the_secured_kafka_is_healthy_only_once_its_acls_are_granted(secure_override):
    test = " ".join(secure_override["services"]["kafka"]["healthcheck"]["test"][1:])
    assert "/tmp/acls-granted" in kafka_script(secure_override) and "test -f /tmp/acls-granted" in test
    assert "--command-config /tmp/admin.properties" in test


def test_docker_compose_accepts_the_secured_variant():
    tool = _compose_command()
    if tool is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    files = ["-f", str(COMPOSE_FILE), "-f", str(SECURE_FILE)]
    result = subprocess.run(
        [*tool, *files, "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, **PASSWORDS},
    )
    assert result.returncode == 0, result.stderr
