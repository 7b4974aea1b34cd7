"""`minigit-server kafka start | stop | status` against a real Apache Kafka."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

pytestmark = pytest.mark.integration


def java_processes_mentioning(text: str) -> list[int]:
    """Pids of live java processes whose command line contains text."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if cmdline and Path(cmdline[0]).name == "java" and any(text in arg for arg in cmdline):
            pids.append(int(entry.name))
    return pids


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"  # a zombie has exited


def assert_one_line_error(result, *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), result.stderr
    assert len(lines) <= 2 and all(line.startswith(("error: ", "hint: ")) for line in lines), result.stderr
    for word in words:
        assert word in lines[0]


def test_produce_consume_round_trip(kafka_bootstrap):
    topic = f"test-round-trip-{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="test-round-trip")
    producer = consumer = None
    try:
        admin.create_topics({topic: {"num_partitions": 2, "replication_factor": 1}}, wait_for_metadata=True)
        assert topic in admin.list_topics()

        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        sent = [producer.send(topic, key=b"repo", value=f"message {i}".encode()).get(timeout=30) for i in range(3)]
        assert {record.partition for record in sent} == {sent[0].partition}  # same key, same partition

        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        partition = TopicPartition(topic, sent[0].partition)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        received = []
        deadline = time.monotonic() + 30
        while len(received) < 3 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                received.extend(records)
        assert [(r.key, r.value) for r in received] == [(b"repo", f"message {i}".encode()) for i in range(3)]
        assert [r.offset for r in received] == [r.offset for r in sent]
    finally:
        for client in (producer, consumer):
            if client is not None:
                client.close()
        admin.delete_topics([topic])
        admin.close()


def test_status_reports_the_session_broker_running(kafka_broker, minigit_server):
    if kafka_broker.data_dir is None:
        pytest.skip("MINIGIT_TEST_BOOTSTRAP is set: this session started no broker")
    result = minigit_server("kafka", "status", "--data-dir", str(kafka_broker.data_dir))
    assert result.returncode == 0, result.stderr
    assert "is running" in result.stdout
    assert kafka_broker.bootstrap in result.stdout
    assert "server.log" in result.stdout


def test_a_second_broker_starts_answers_and_stops_without_leftovers(kafka_broker, tmp_path, free_ports, minigit_server):
    # Uses kafka_broker only to be skipped (or failed, under CI) like the rest when no broker can run here.
    port, controller_port = free_ports(2)
    data_dir = tmp_path / "second-kafka"
    ports = ("--port", str(port), "--controller-port", str(controller_port))
    start = minigit_server("kafka", "start", *ports, "--data-dir", str(data_dir))
    pid = None
    try:
        assert start.returncode == 0, start.stderr
        assert f"bootstrap  127.0.0.1:{port}" in start.stdout
        assert "server.log" in start.stdout
        pid = int((data_dir / "kafka.pid").read_text())
        assert java_processes_mentioning(str(data_dir)) == [pid]

        with KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}") as admin:
            assert admin.describe_cluster()["brokers"]

        status = minigit_server("kafka", "status", "--data-dir", str(data_dir))
        assert status.returncode == 0 and f"is running (pid {pid})" in status.stdout

        again = minigit_server("kafka", "start", *ports, "--data-dir", str(data_dir))
        assert again.returncode == 0 and "already running" in again.stdout
        assert java_processes_mentioning(str(data_dir)) == [pid]
    finally:
        stop = minigit_server("kafka", "stop", "--data-dir", str(data_dir))

    assert stop.returncode == 0, stop.stderr
    assert f"stopped (pid {pid})" in stop.stdout
    assert process_gone(pid)
    assert java_processes_mentioning(str(data_dir)) == []
    assert not (data_dir / "kafka.pid").exists()
    for listening in (port, controller_port):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", listening), timeout=1).close()

    status = minigit_server("kafka", "status", "--data-dir", str(data_dir))
    assert status.returncode == 1
    assert "not running" in status.stdout

    stop_again = minigit_server("kafka", "stop", "--data-dir", str(data_dir))
    assert stop_again.returncode == 0 and "not running" in stop_again.stdout


def test_a_broker_listening_on_another_address_advertises_that_address(
    kafka_broker, tmp_path, free_ports, minigit_server
):
    """--listen as a classroom uses it, on a loopback address that stands for the teacher's network address."""
    address = "127.0.0.2"
    with socket.socket() as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            pytest.skip(f"{address} is not a loopback address here (Linux routes all of 127/8 to lo)")
    port, controller_port = free_ports(2)
    data_dir = tmp_path / "classroom-kafka"
    ports = ("--port", str(port), "--controller-port", str(controller_port))
    start = minigit_server("kafka", "start", *ports, "--listen", address, "--data-dir", str(data_dir))
    try:
        assert start.returncode == 0, start.stderr
        assert f"bootstrap  {address}:{port}\n" in start.stdout
        with KafkaAdminClient(bootstrap_servers=f"{address}:{port}") as admin:
            assert [(b["host"], b["port"]) for b in admin.describe_cluster()["brokers"]] == [(address, port)]
        with pytest.raises(OSError):  # bound to that address only
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        status = minigit_server("kafka", "status", "--data-dir", str(data_dir))
        assert status.returncode == 0 and f"bootstrap  {address}:{port}" in status.stdout
    finally:
        stop = minigit_server("kafka", "stop", "--data-dir", str(data_dir))
    assert stop.returncode == 0, stop.stderr


def test_listening_on_every_interface_needs_an_advertised_address(tmp_path, free_ports, minigit_server):
    (port,) = free_ports(1)
    result = minigit_server("kafka", "start", "--port", str(port), "--listen", "0.0.0.0", "--data-dir", str(tmp_path))
    assert_one_line_error(result, "0.0.0.0")
    assert "--advertise" in result.stderr
    assert java_processes_mentioning(str(tmp_path)) == []


@pytest.mark.parametrize("taken", ["--port", "--controller-port"])
def test_start_on_a_taken_port_is_a_one_line_error(taken, tmp_path, free_ports, minigit_server):
    port, controller_port = free_ports(2)
    busy = port if taken == "--port" else controller_port
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", busy))
        listener.listen()
        result = minigit_server(
            "kafka",
            "start",
            "--port",
            str(port),
            "--controller-port",
            str(controller_port),
            "--data-dir",
            str(tmp_path / "kafka"),
        )
    assert_one_line_error(result, str(busy), "already in use")
    assert taken in result.stderr  # the hint names the option to change
    assert java_processes_mentioning(str(tmp_path)) == []


def test_status_of_a_data_dir_without_broker(tmp_path, minigit_server):
    result = minigit_server("kafka", "status", "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert "not running" in result.stdout
    assert "Traceback" not in result.stderr


def _help(minigit_server, *args):
    result = minigit_server(*args, "--help", env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_of_minigit_server(minigit_server):
    text = _help(minigit_server)
    assert "minigit-server" in text and "kafka" in text


def test_help_of_kafka_start(minigit_server):
    text = _help(minigit_server, "kafka", "start")
    for word in ("--port", "--controller-port", "--data-dir", "--timeout", "MINIGIT_KAFKA_PORT", "MINIGIT_KAFKA_DIR"):
        assert word in text
    for word in ("--nodes", "--listen", "--advertise", "MINIGIT_KAFKA_NODES", "MINIGIT_KAFKA_LISTEN"):
        assert word in text


def test_help_of_kafka_stop_offers_one_node(minigit_server):
    assert "--node" in _help(minigit_server, "kafka", "stop")


def test_help_of_kafka_status_documents_its_exit_status(minigit_server):
    text = _help(minigit_server, "kafka", "status")
    assert "0 if it runs (every node of a cluster), 1 if it does not" in text
