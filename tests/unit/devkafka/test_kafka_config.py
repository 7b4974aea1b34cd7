"""The local Kafka's generated configuration and the checks made before any JVM
starts: one node, a three-node cluster, and brokers reachable from other machines."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from pathlib import Path

import pytest

from minigit.errors import UsageError
from minigit_server.devkafka import broker
from minigit_server.devkafka.broker import BrokerPaths, ClusterLayout, check_addresses, render_server_properties


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def config_of(layout: ClusterLayout, node_id: int = 1) -> dict[str, str]:
    return properties(render_server_properties(layout, node_id, Path(f"/data/node-{node_id}/kraft")))


def test_one_node_keeps_its_single_node_config():
    config = config_of(ClusterLayout(1, 9092, 9093))
    assert config["node.id"] == "1"
    assert config["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert config["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert config["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093"  # formatted --standalone
    assert "controller.quorum.voters" not in config
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor", "min.insync.replicas"):
        assert config[key] == "1", key
    assert config["auto.create.topics.enable"] == "false"
    assert "message.max.bytes" not in config


def test_each_node_of_a_cluster_has_its_own_ports_and_all_name_the_same_three_voters():
    layout = ClusterLayout(3, 40000, 40003)
    configs = {node_id: config_of(layout, node_id) for node_id in (1, 2, 3)}
    for node_id, config in configs.items():
        broker_port, controller_port = 40000 + node_id - 1, 40003 + node_id - 1
        assert config["node.id"] == str(node_id)
        assert set(config["process.roles"].split(",")) == {"broker", "controller"}
        assert config["listeners"] == f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}"
        assert config["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{broker_port}"
        assert config["log.dirs"] == f"/data/node-{node_id}/kraft"
        assert "controller.quorum.bootstrap.servers" not in config  # a static quorum
    voters = {config["controller.quorum.voters"] for config in configs.values()}
    assert voters == {"1@127.0.0.1:40003,2@127.0.0.1:40004,3@127.0.0.1:40005"}


def test_a_cluster_keeps_three_copies_and_acknowledges_writes_held_by_two():
    config = config_of(ClusterLayout(3, 40000, 40003), 2)
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "share.coordinator.state.topic.replication.factor",
        "default.replication.factor",
    ):
        assert config[key] == "3", key
    for key in ("min.insync.replicas", "transaction.state.log.min.isr", "share.coordinator.state.topic.min.isr"):
        assert config[key] == "2", key
    assert config["unclean.leader.election.enable"] == "false"


def test_the_bootstrap_of_a_cluster_names_every_broker_as_advertised():
    assert ClusterLayout(3, 40000, 40003).bootstrap == "127.0.0.1:40000,127.0.0.1:40001,127.0.0.1:40002"
    assert ClusterLayout(1, 9092, 9093, "0.0.0.0", "teacher.local").bootstrap == "teacher.local:9092"


def test_listen_binds_the_client_listener_and_advertise_is_what_clients_are_told():
    config = config_of(ClusterLayout(3, 40000, 40003, listen="0.0.0.0", advertise="192.168.1.20"), 3)
    assert config["listeners"] == "PLAINTEXT://0.0.0.0:40002,CONTROLLER://127.0.0.1:40005"  # controllers stay local
    assert config["advertised.listeners"] == "PLAINTEXT://192.168.1.20:40002"
    assert config["controller.quorum.voters"].count("127.0.0.1") == 3


def test_ipv6_addresses_are_bracketed():
    config = config_of(ClusterLayout(1, 9092, 9093, listen="::", advertise="fd00::20"))
    assert config["listeners"].startswith("PLAINTEXT://[::]:9092,")
    assert config["advertised.listeners"] == "PLAINTEXT://[fd00::20]:9092"
    assert ClusterLayout(1, 9092, 9093, "::", "fd00::20").probe_host == "::1"


@pytest.mark.parametrize(
    ("listen", "advertise", "expected"),
    [
        ("127.0.0.1", None, ("127.0.0.1", "127.0.0.1")),
        ("127.0.0.2", None, ("127.0.0.2", "127.0.0.2")),
        ("0.0.0.0", "teacher.local", ("0.0.0.0", "teacher.local")),
        ("0.0.0.0", "192.168.1.20", ("0.0.0.0", "192.168.1.20")),
        ("[::1]", None, ("::1", "::1")),
        ("localhost", "my-laptop", ("localhost", "my-laptop")),
    ],
)
def test_addresses_accepted(listen, advertise, expected):
    assert check_addresses(listen, advertise) == expected


@pytest.mark.parametrize(
    ("listen", "advertise", "words"),
    [
        ("0.0.0.0", None, ["every interface"]),  # clients cannot connect to a wildcard
        ("::", None, ["every interface"]),
        ("0.0.0.0", "0.0.0.0", ["--advertise", "wildcard"]),
        ("127.0.0.1 ", None, ["--listen"]),
        ("bad_host", None, ["--listen", "bad_host"]),
        ("127.0.0.1", "-x.example", ["--advertise"]),
        ("127.0.0.1", "a" * 300, ["--advertise"]),
    ],
)
def test_addresses_refused(listen, advertise, words):
    with pytest.raises(UsageError) as refused:
        check_addresses(listen, advertise)
    assert "\n" not in refused.value.message
    for word in words:
        assert word in refused.value.message


# ---------------------------------------------------------------- checks before any JVM starts


def formatted_state(data_dir: Path, nodes: int, port: int = 40000, controller_port: int | None = None) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    controller_port = controller_port or port + nodes
    state = {"cluster_id": broker.new_cluster_id(), "controller_port": controller_port, "formatted": True}
    (data_dir / "broker.json").write_text(json.dumps({**state, "nodes": nodes, "port": port}))


def test_broker_and_controller_port_ranges_must_not_overlap(tmp_path):
    with pytest.raises(UsageError, match="overlap"):
        broker.start_broker(40000, tmp_path / "kafka", nodes=3, controller_port=40002)
    with pytest.raises(UsageError, match="must differ"):
        broker.start_broker(40000, tmp_path / "kafka", controller_port=40000)


def test_the_last_node_needs_a_tcp_port_too(tmp_path):
    with pytest.raises(UsageError, match=r"--port 65534 \(and the next 2\) is not a TCP port"):
        broker.start_broker(65534, tmp_path / "kafka", nodes=3, controller_port=40000)


def test_a_formatted_data_dir_keeps_its_node_count(tmp_path):
    formatted_state(tmp_path / "kafka", 3)
    with pytest.raises(UsageError, match="holds a Kafka of 3 nodes, not 1") as refused:
        broker.start_broker(40000, tmp_path / "kafka", nodes=1)
    assert "leave out --nodes" in refused.value.hint


def test_status_of_a_stopped_cluster_lists_every_node_down(tmp_path):
    formatted_state(tmp_path / "kafka", 3)
    info = broker.read_broker_status(tmp_path / "kafka")
    assert [(node.node_id, node.running, node.port, node.controller_port) for node in info.nodes] == [
        (1, False, 40000, 40003),
        (2, False, 40001, 40004),
        (3, False, 40002, 40005),
    ]
    assert info.nodes[1].log_path == (tmp_path / "kafka" / "node-2" / "logs" / "server.log").resolve()
    assert not info.running and info.controller_leader is None
    assert info.bootstrap == "127.0.0.1:40000,127.0.0.1:40001,127.0.0.1:40002"


def test_a_single_node_data_dir_keeps_its_layout(tmp_path):
    paths = BrokerPaths.of(tmp_path / "kafka")
    assert paths.node(1, 1).server_properties == paths.data_dir / "config" / "server.properties"
    assert paths.node(2, 3).kraft_dir == paths.data_dir / "node-2" / "kraft"


def test_stop_of_a_node_the_cluster_does_not_have_is_a_usage_error(tmp_path):
    formatted_state(tmp_path / "kafka", 3)
    with pytest.raises(UsageError, match="has 3 nodes") as refused:
        broker.stop_broker(tmp_path / "kafka", node=4)
    assert "1 to 3" in refused.value.hint
    assert not broker.stop_broker(tmp_path / "kafka", node=2).was_running


def test_the_controller_leader_is_the_newest_epoch_among_running_nodes(tmp_path):
    paths = BrokerPaths.of(tmp_path / "kafka")
    nodes = [paths.node(n, 3) for n in (1, 2, 3)]
    for node, (leader, epoch) in zip(nodes, [(1, 4), (2, 5), (2, 5)], strict=True):
        node.quorum_state.parent.mkdir(parents=True)
        node.quorum_state.write_text(json.dumps({"leaderId": leader, "leaderEpoch": epoch, "votedId": -1}))
    assert broker._controller_leader(nodes) == 2
    assert broker._controller_leader(nodes[:1]) == 1  # what node 1 alone saw
    assert broker._controller_leader([nodes[0], nodes[2]]) is None  # node 2 leads, but it is down
    nodes[2].quorum_state.write_text("not json")
    assert broker._controller_leader(nodes[2:]) is None


def test_a_restart_without_port_uses_the_last_starts(tmp_path):
    with socket.socket() as broker_port, socket.socket() as controller_port:
        for taken in (broker_port, controller_port):
            taken.bind(("127.0.0.1", 0))
            taken.listen()
        port, controller = broker_port.getsockname()[1], controller_port.getsockname()[1]
        if abs(port - controller) < 3:
            pytest.skip("the two ports drawn make overlapping ranges")  # about once in 10,000 runs
        formatted_state(tmp_path / "kafka", 3, port, controller)
        # checked (and found taken) before any JVM starts; were 9092 tried, node 1's controller port would be
        with pytest.raises(broker.BrokerError, match=f"port {port} on 127.0.0.1 is already in use"):
            broker.start_broker(data_dir=tmp_path / "kafka")


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-storage would read '-…' as an option: such a draw is drawn again, as Kafka's Uuid does."""
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" + bytes(15))])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(draws))
    assert broker.new_cluster_id() == base64.urlsafe_b64encode(b"\x01" + bytes(15)).rstrip(b"=").decode()
