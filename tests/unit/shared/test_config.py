"""minigit.config: security options, namespaces, topic names, and which setting wins."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigit.config import (
    DEFAULT_BOOTSTRAP,
    SECURITY_OPTIONS,
    KafkaSettings,
    ServerFlags,
    Topics,
    check_namespace,
    parse_bool,
    read_kafka_options,
)
from minigit.errors import ExitCode, ServerUnreachable, UsageError


def test_nothing_set():
    assert read_kafka_options([], {}) == {}


def test_environment_variables():
    env = {
        "MINIGIT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "MINIGIT_KAFKA_SASL_MECHANISM": "PLAIN",
        "MINIGIT_KAFKA_SASL_PLAIN_USERNAME": "me",
        "MINIGIT_KAFKA_SASL_PLAIN_PASSWORD": "p=a=s=s",
        "MINIGIT_KAFKA_SSL_CAFILE": "/etc/ca.pem",
        "PATH": "/bin",
        "KAFKA_SECURITY_PROTOCOL": "SSL",  # not ours
    }
    assert read_kafka_options([], env) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "me",
        "sasl_plain_password": "p=a=s=s",
        "ssl_cafile": "/etc/ca.pem",
    }


def test_other_minigit_kafka_variables_are_not_options():
    # MINIGIT_KAFKA_DIR/PORT/HEAP belong to `minigit-server kafka`; they share the prefix
    env = {"MINIGIT_KAFKA_DIR": "/tmp/k", "MINIGIT_KAFKA_PORT": "9092", "MINIGIT_KAFKA_HEAP": "1g"}
    assert read_kafka_options([], env) == {}


def test_flags():
    flags = ["security_protocol=SSL", "ssl-cafile=/ca.pem", "sasl.mechanism=SCRAM-SHA-256", "CLIENT_ID=me"]
    assert read_kafka_options(flags, {}) == {
        "security_protocol": "SSL",
        "ssl_cafile": "/ca.pem",
        "sasl_mechanism": "SCRAM-SHA-256",
        "client_id": "me",
    }


def test_flag_value_may_contain_equals_signs():
    assert read_kafka_options(["sasl_plain_password=a=b=c"], {}) == {"sasl_plain_password": "a=b=c"}


def test_flags_win_over_environment():
    env = {"MINIGIT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "MINIGIT_KAFKA_CLIENT_ID": "from-env"}
    assert read_kafka_options(["security_protocol=SSL"], env) == {"security_protocol": "SSL", "client_id": "from-env"}
    # the last flag wins among flags
    assert read_kafka_options(["client_id=a", "client_id=b"], env)["client_id"] == "b"


@pytest.mark.parametrize(
    "text, value",
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_booleans(text, value):
    assert read_kafka_options([f"ssl_check_hostname={text}"], {}) == {"ssl_check_hostname": value}
    assert read_kafka_options([], {"MINIGIT_KAFKA_SSL_CHECK_HOSTNAME": text}) == {"ssl_check_hostname": value}
    assert parse_bool("x", text) is value


@pytest.mark.parametrize("text", ["", "maybe", "2", "tru", "yes please"])
def test_bad_booleans(text):
    with pytest.raises(UsageError, match="ssl_check_hostname must be true or false"):
        read_kafka_options([f"ssl_check_hostname={text}"], {})
    with pytest.raises(UsageError, match="must be true or false"):
        read_kafka_options([], {"MINIGIT_KAFKA_SSL_CHECK_HOSTNAME": text})


def test_only_booleans_are_converted():
    options = read_kafka_options(["client_id=true"], {})
    assert options == {"client_id": "true"}
    assert all(SECURITY_OPTIONS[name] in (str, bool) for name in SECURITY_OPTIONS)


@pytest.mark.parametrize(
    "flag", ["bootstrap_servers=x:1", "nonsense=1", "security_protocol", "=SSL", "", "sasl_plain_pass=x", "acks=all"]
)
def test_unknown_or_malformed_flags(flag):
    with pytest.raises(UsageError) as info:
        read_kafka_options([flag], {})
    assert info.value.exit_code == ExitCode.USAGE
    assert "expected NAME=VALUE" in info.value.message
    assert "security_protocol" in info.value.message  # lists the known names


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("MINIGIT_KAFKA_SECURITY_PROTOCOL", "SSL")
    assert read_kafka_options([])["security_protocol"] == "SSL"
    monkeypatch.delenv("MINIGIT_KAFKA_SECURITY_PROTOCOL")
    assert "security_protocol" not in read_kafka_options([])


@pytest.mark.parametrize("namespace", ["", "test.", "a-b_c.1", "ABC", "run-1234."])
def test_check_namespace_accepts(namespace):
    assert check_namespace(namespace) == namespace


@pytest.mark.parametrize("namespace", ["a b", "a/b", "a:b", "ns*", "x\n", "a\\b", "tab\t"])
def test_check_namespace_rejects(namespace):
    with pytest.raises(UsageError, match="invalid namespace"):
        check_namespace(namespace)


@pytest.mark.parametrize("namespace", ["café.", "ns²", "日本", "x" * 250])
def test_check_namespace_rejects_what_kafka_rejects(namespace):
    with pytest.raises(UsageError):
        check_namespace(namespace)


def test_kafka_settings_servers():
    assert KafkaSettings().bootstrap == DEFAULT_BOOTSTRAP == "localhost:9092"
    assert KafkaSettings().servers == ["localhost:9092"]
    assert KafkaSettings(bootstrap=" a:1, b:2 ,,").servers == ["a:1", "b:2"]
    assert KafkaSettings().namespace == "" and dict(KafkaSettings().options) == {}


def test_topic_names_carry_the_namespace():
    assert Topics.for_namespace("") == Topics(
        "repo-requests", "repo-responses", "repo-log", "repo-replicas", "minigit-replicas"
    )
    topics = KafkaSettings(namespace="test.").topics
    assert (topics.requests, topics.log, topics.group) == (
        "test.repo-requests",
        "test.repo-log",
        "test.minigit-replicas",
    )


def test_kafka_options_and_unreachable():
    settings = KafkaSettings("a:1,b:2", options={"security_protocol": "SSL"})
    assert settings.kafka_options() == {"bootstrap_servers": ["a:1", "b:2"], "security_protocol": "SSL"}
    error = settings.unreachable(OSError("refused"))
    assert isinstance(error, ServerUnreachable) and error.exit_code == ExitCode.UNREACHABLE
    assert error.message == "cannot reach Kafka at a:1,b:2: OSError"


def test_security_environment_round_trips_through_read_kafka_options():
    options = {"security_protocol": "SASL_SSL", "sasl_plain_password": "p=w", "ssl_check_hostname": False}
    environment = KafkaSettings(options=options).security_environment()
    assert environment["MINIGIT_KAFKA_SSL_CHECK_HOSTNAME"] == "false"
    assert read_kafka_options([], environment) == options


# ---------------------------------------------------------------- precedence

SAVED = ("saved:9092", "saved.")


def test_defaults_when_nothing_is_said():
    assert ServerFlags().resolve() == KafkaSettings(DEFAULT_BOOTSTRAP, "", {})


def test_dot_minigit_beats_the_defaults():
    assert ServerFlags().resolve(SAVED) == KafkaSettings("saved:9092", "saved.")


def test_flags_beat_dot_minigit():
    flags = ServerFlags("flag:1", "flag.", {"security_protocol": "SSL"})
    assert flags.resolve(SAVED) == KafkaSettings("flag:1", "flag.", {"security_protocol": "SSL"})


def test_an_empty_namespace_flag_is_said_and_wins():
    assert ServerFlags(namespace="").resolve(SAVED) == KafkaSettings("saved:9092", "")


@given(
    st.one_of(st.none(), st.sampled_from(["f:1", "g:2"])),
    st.one_of(st.none(), st.sampled_from(["", "f."])),
    st.one_of(st.none(), st.tuples(st.sampled_from(["s:1", "t:2"]), st.sampled_from(["", "s."]))),
)
def test_precedence_is_flag_then_saved_then_default(bootstrap, namespace, saved):
    settings = ServerFlags(bootstrap, namespace).resolve(saved)
    assert settings.bootstrap == bootstrap or (saved and saved[0]) or DEFAULT_BOOTSTRAP
    expected_namespace = namespace if namespace is not None else saved[1] if saved else ""
    assert settings.namespace == expected_namespace


def test_parse_checks_the_raw_flags(monkeypatch):
    monkeypatch.setenv("MINIGIT_KAFKA_SECURITY_PROTOCOL", "SSL")
    flags = ServerFlags.parse("", None, ["client_id=me"])
    assert flags == ServerFlags(None, None, {"security_protocol": "SSL", "client_id": "me"})
    with pytest.raises(UsageError, match="invalid namespace"):
        ServerFlags.parse(None, "bad namespace")
