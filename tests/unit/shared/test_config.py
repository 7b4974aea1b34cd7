"""minigit.config: security options, namespaces, topic names, and which setting wins."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigit.config import (
    DEFAULT_BOOTSTRAP,
    SECURITY_OPTIONS,
    KafkaSettings,
    ServerFlags,
    Topics,
    check_bootstrap,
    check_namespace,
    parse_bool,
    read_kafka_options,
    split_bootstrap,
)
from minigit.errors import CorruptMetadata, ExitCode, ServerUnreachable, UsageError


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
    flags = ServerFlags.parse(None, None, ["client_id=me"])
    assert flags == ServerFlags(None, None, {"security_protocol": "SSL", "client_id": "me"})
    with pytest.raises(UsageError, match="invalid namespace"):
        ServerFlags.parse(None, "bad namespace")


# ---------------------------------------------------------------- bootstrap servers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("localhost:9092", "localhost:9092"),
        ("127.0.0.1:1,kafka-2.example.com:65535", "127.0.0.1:1,kafka-2.example.com:65535"),
        (" a:1 , b_2:2 ,", "a:1,b_2:2"),  # blanks and empty entries are dropped, as Kafka's clients do
        ("[::1]:9092", "[::1]:9092"),
        ("[fe80::1%eth0]:9092,h:1", "[fe80::1%eth0]:9092,h:1"),
    ],
)
def test_bootstrap_flags_that_are_accepted(text, expected):
    assert check_bootstrap(text) == expected
    assert ServerFlags.parse(text, None, [], {}).bootstrap == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        (",,,", "no HOST:PORT in it"),
        (" , ", "no HOST:PORT in it"),
        ("[::1", "'[::1' has no ']'"),
        ("[::1]", "'[::1]' has no port"),
        ("[::1]9092", "has no port"),
        ("[nope]:1", "'nope' in '[nope]:1' is not an IPv6 address"),
        ("::1:9092", "write an IPv6 address in brackets"),
        ("localhost", "'localhost' has no port"),
        ("a:1,b", "'b' has no port"),
        ("h:", "'h:' has no port"),
        ("h:0", "the port of 'h:0' is not a number from 1 to 65535"),
        ("h:65536", "not a number from 1 to 65535"),
        ("h:-1", "not a number from 1 to 65535"),
        ("h:\uff19\uff10", "not a number from 1 to 65535"),  # fullwidth digits are not a port
        ("h:x", "not a number from 1 to 65535"),
        (":9092", "'' in ':9092' is not a host name"),
        ("PLAINTEXT://h:1", "is not a host name or an IP address"),
        ("a b:1", "is not a host name"),
        ("-h:1", "is not a host name"),
    ],
)
def test_bad_bootstrap_flags_are_usage_errors(text, reason):
    with pytest.raises(UsageError) as info:
        ServerFlags.parse(text, None, [], {})
    assert info.value.exit_code == ExitCode.USAGE
    assert info.value.message.startswith(f"bad --bootstrap {text!r}: ")
    assert reason in info.value.message and "expected HOST:PORT[,HOST:PORT...]" in info.value.message
    with pytest.raises(ValueError, match=re.escape(reason)):
        split_bootstrap(text)


def test_an_empty_bootstrap_flag_is_a_usage_error_and_an_absent_one_is_not_said():
    with pytest.raises(UsageError, match=r"^bad --bootstrap '': no HOST:PORT in it") as info:
        ServerFlags.parse("", None, [], {})
    assert "MINIGIT_BOOTSTRAP" in info.value.hint
    assert ServerFlags.parse(None, None, [], {}).bootstrap is None


@pytest.mark.parametrize(
    "text",
    [
        "999.999.999.999:9092",  # numbers and dots: an IPv4 address or nothing
        "1.2.3:9092",
        "host..x:9092",  # an empty label
        "a.-b:9092",
        "b-.c:9092",
        f"{'a' * 64}.example:9092",  # a label longer than 63
        f"{'a.' * 127}ab:9092",  # longer than 253
        "h\u00e9:9092",
        "h\t:9092",
    ],
)
def test_host_names_follow_the_dns_rules(text):
    with pytest.raises(UsageError, match="is not a host name or an IP address"):
        check_bootstrap(text)


@pytest.mark.parametrize(
    "text", ["localhost.:9092", "kafka_1:9092", "a-b.c-d:1", f"{'a' * 63}.x:1", "10.0.0.1:9092", "h:09092"]
)
def test_host_names_within_the_rules_are_accepted(text):
    assert check_bootstrap(text) == text


@pytest.mark.parametrize("saved", [",,,", "[::1", "h:99999", "no-port"])
def test_a_bad_bootstrap_in_dot_minigit_is_corrupt_metadata(saved):
    with pytest.raises(CorruptMetadata) as info:
        ServerFlags().resolve((saved, ""), "/w/.minigit")
    assert info.value.exit_code == ExitCode.ERROR
    assert info.value.message.startswith(f"/w/.minigit is corrupt: bad bootstrap {saved!r}: ")
    assert "--bootstrap" in info.value.hint
    # a flag that says where the service is wins, and the saved value is not used
    assert ServerFlags("flag:1").resolve((saved, "")).bootstrap == "flag:1"


def test_a_bad_namespace_in_dot_minigit_is_corrupt_metadata():
    with pytest.raises(CorruptMetadata, match=r"\.minigit is corrupt: bad namespace 'a b'"):
        ServerFlags().resolve(("h:1", "a b"))
    assert ServerFlags(namespace="ok.").resolve(("h:1", "a b")).namespace == "ok."


def test_a_saved_bootstrap_is_written_the_canonical_way():
    assert ServerFlags().resolve((" a:1, b:2 ,", "")).bootstrap == "a:1,b:2"


# ---------------------------------------------------------------- options with a few values


@pytest.mark.parametrize(
    "name, values",
    [
        ("security_protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]),
        ("sasl_mechanism", ["PLAIN", "GSSAPI", "OAUTHBEARER", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
    ],
)
def test_the_values_kafka_python_knows_are_accepted(name, values):
    for value in values:
        assert read_kafka_options([f"{name}={value}"], {}) == {name: value}
        assert read_kafka_options([], {f"MINIGIT_KAFKA_{name.upper()}": value}) == {name: value}
        assert read_kafka_options([f"{name}= {value.lower()} "], {}) == {name: value}  # spelt as kafka-python wants


@pytest.mark.parametrize(
    "name, value",
    [
        ("security_protocol", "SASL-SSL"),
        ("security_protocol", "BOGUS"),
        ("security_protocol", ""),
        ("security_protocol", "SASL_SS"),
        ("security_protocol", "TLS"),
        ("sasl_mechanism", "SCRAM-SHA-1"),
        ("sasl_mechanism", "SCRAM_SHA_256"),
        ("sasl_mechanism", "plain text"),
    ],
)
def test_a_misspelt_security_setting_is_a_usage_error_not_plaintext(name, value):
    for flags, env in (([f"{name}={value}"], {}), ([], {f"MINIGIT_KAFKA_{name.upper()}": value})):
        with pytest.raises(UsageError) as info:
            read_kafka_options(flags, env)
        assert info.value.exit_code == ExitCode.USAGE
        assert info.value.message.startswith(f"{name} must be one of ")
        assert info.value.message.endswith(f", not {value!r}")
        with pytest.raises(UsageError):
            ServerFlags.parse(None, None, flags, env)


def test_a_flag_that_fixes_a_misspelt_variable_wins():
    env = {"MINIGIT_KAFKA_SECURITY_PROTOCOL": "SASL-SSL"}
    assert read_kafka_options(["security_protocol=SASL_SSL"], env) == {"security_protocol": "SASL_SSL"}


# ---------------------------------------------------------------- retention of the transient topics


def test_retention_defaults_outlive_every_client_wait() -> None:
    from minigit.config import MAX_TIMEOUT_S, TopicRetention

    retention = TopicRetention()
    # a request or reply is useless after its client's timeout: kept well beyond the longest one
    assert retention.requests_ms >= 2 * MAX_TIMEOUT_S * 1000
    assert retention.responses_ms >= 2 * MAX_TIMEOUT_S * 1000


def test_retention_segments_close_well_before_retention_so_that_kafka_deletes() -> None:
    from minigit.config import MIN_SEGMENT_BYTES, TopicRetention

    retention = TopicRetention.parse(60_000, 120_000, 16 * MIN_SEGMENT_BYTES)
    configs = retention.topic_configs(retention.requests_ms)
    assert configs["retention.ms"] == "60000" and configs["retention.bytes"] == str(16 * MIN_SEGMENT_BYTES)
    assert int(configs["segment.ms"]) <= 60_000 // 2
    assert MIN_SEGMENT_BYTES <= int(configs["segment.bytes"]) <= 16 * MIN_SEGMENT_BYTES // 2
    assert configs["cleanup.policy"] == "delete"


def test_retention_flags_round_trip() -> None:
    from minigit.config import TopicRetention

    retention = TopicRetention.parse(70_000, 80_000, 64 * 1024**2)
    flags = retention.flags()
    assert flags == [
        "--requests-retention-ms",
        "70000",
        "--responses-retention-ms",
        "80000",
        "--transient-retention-bytes",
        str(64 * 1024**2),
    ]


@pytest.mark.parametrize(
    ("requests_ms", "responses_ms", "size", "max_push", "word"),
    [
        (1000, 3_600_000, 1024**3, 1024, "--requests-retention-ms"),
        (3_600_000, 0, 1024**3, 1024, "--responses-retention-ms"),
        (3_600_000, 3_600_000, 1024, 1024, "--transient-retention-bytes"),
        # smaller than two pushes of the largest size: a request could be deleted unserved
        (3_600_000, 3_600_000, 1024**3, 1024**3, "--transient-retention-bytes"),
    ],
)
def test_retention_that_could_delete_what_is_still_needed_is_refused(
    requests_ms: int, responses_ms: int, size: int, max_push: int, word: str
) -> None:
    from minigit.config import TopicRetention

    with pytest.raises(UsageError, match=re.escape(word)):
        TopicRetention.parse(requests_ms, responses_ms, size, max_push)
