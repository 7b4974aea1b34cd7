"""Bad input gets a clear error and loses nothing: malformed requests, unsafe
paths (checked by the server on push and by the client on pull), a corrupt
.minigit, two commands in one directory.

Requests are signed (issue 9): a hostile request that is about something else
than signatures is signed by a registered user who may make it, so that what
refuses it is the check under test, not the signature or a permission."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from minigit import identity, sealing
from minigit import protocol as p
from minigit.client import operations
from minigit.client import workspace as ws
from minigit.codec import BlobSource
from minigit.errors import PermissionDenied, UnsafePath

pytestmark = pytest.mark.integration
MINIGIT = str(Path(sys.executable).with_name("minigit"))


def init_origin(service, tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    """A working directory holding ``files``, pushed as repository ``name`` version 1."""
    origin = tmp_path / "origin"
    origin.mkdir()
    for rel, text in files.items():
        (origin / rel).write_text(text)
    operations.init_repository(origin, name, service.options())
    return origin


def read_replies(consumer: KafkaConsumer, wanted: set[str], timeout: float = 30.0) -> dict[str, dict]:
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while wanted - set(found) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            for record in records:
                doc = json.loads(record.value)
                if doc.get("request_id") in wanted and doc.get("status") != p.Status.WORKING:
                    found[doc["request_id"]] = doc
    return found


def as_reply(doc: dict) -> p.Reply:
    message = p.parse_message(json.dumps(doc).encode(), allowed=(p.Reply,))
    assert isinstance(message, p.Reply)
    return message


def test_malformed_requests_get_error_replies_and_the_replica_keeps_serving(service) -> None:
    topics = service.bus.topics
    consumer = KafkaConsumer(bootstrap_servers=service.bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topics.responses, 0)
    consumer.assign([tp])
    consumer.seek(tp, consumer.end_offsets([tp])[tp])
    producer = KafkaProducer(bootstrap_servers=service.bootstrap)

    def request(**fields) -> tuple[str, bytes]:
        rid = uuid.uuid4().hex
        doc = {"v": 1, "type": "request", "request_id": rid, "reply_partition": 0, **fields}
        return rid, json.dumps(doc).encode()

    addressed = {
        "unknown action": request(action="fork", repo="r", user="u"),
        "missing fields": request(action="push", user="u"),
        "wrong types": request(action="pull", repo="r", user="u", version="3"),
        "bad name": request(action="pull", repo="../etc", user="u"),
        "wrong protocol version": request(action="pull", repo="r", user="u", v=99),
    }
    # Well formed, from a registered user, but unsigned, or with a signature that is not
    # one: refused, not served.
    service.register("tester")
    now_ms = int(time.time() * 1000)
    unsigned = {
        "unsigned": request(action="pull", repo="r", user="tester", version=0, signed_ms=now_ms),
        "unsigned, no time": request(action="pull", repo="r", user="tester", version=0),
        "garbled signature": request(
            action="pull", repo="r", user="tester", version=0, signed_ms=now_ms, signature="not base64!"
        ),
    }
    unaddressed = [b"not json at all", b"\xff\xfe", b"[1, 2, 3]", b'{"v": 1, "type": "request"}']
    log_before = service.bus.log_end_offsets()
    for value in unaddressed:
        producer.send(topics.requests, key=b"r", value=value)
    for _, value in [*addressed.values(), *unsigned.values()]:
        producer.send(topics.requests, key=b"r", value=value)
    producer.flush()

    replies = read_replies(consumer, {rid for rid, _ in [*addressed.values(), *unsigned.values()]})
    for what, (rid, _) in addressed.items():
        assert rid in replies, f"no error reply for {what}"
        assert replies[rid]["status"] == p.Status.INVALID
        assert replies[rid]["message"].startswith("bad request:")
    assert "unknown message type" in replies[addressed["unknown action"][0]]["message"]
    assert "missing field 'repo'" in replies[addressed["missing fields"][0]]["message"]
    assert "field 'version' must be int" in replies[addressed["wrong types"][0]]["message"]
    for what, (rid, _) in unsigned.items():
        assert rid in replies, f"no reply to a request {what}"
        assert replies[rid]["status"] == p.Status.UNAUTHENTICATED, (what, replies[rid])
    assert "the request is not signed" in replies[unsigned["unsigned"][0]]["message"]
    assert "signature does not match" in replies[unsigned["garbled signature"][0]]["message"]
    # Every error reply is the service's, signed with its key, whoever can write the reply topic.
    [server_key] = {doc["server_key"] for doc in replies.values()}
    assert all(sealing.reply_signed_by(server_key, as_reply(doc), service.namespace) for doc in replies.values())
    # Nothing of it reached the log.
    assert service.bus.log_end_offsets() == log_before

    # Still serving; and every bad record left a line in the replica's log.
    serving = service.ping("r").replica
    log = (service.data_dir / f"replica-{serving}" / "replica.log").read_text()
    assert log.count("-> malformed") >= len(unaddressed) + len(addressed)
    assert "no reply address" in log
    consumer.close()
    producer.close()


UNSAFE_PATHS = ["../escape.txt", "/etc/passwd", "a\\b", "nul\x00byte", ".minigit", "x/.minigit/y", "a/./b", "a//b"]


def test_server_refuses_unsafe_paths_on_push(service, tmp_path: Path) -> None:
    init_origin(service, tmp_path, "safe", {"ok.txt": "fine\n"})
    blob = b"payload"

    def push_unsafe(connection, bad: str) -> p.Reply:
        tree = p.encode_tree({bad: p.FileEntry(p.hash_bytes(blob), len(blob))})
        request = connection.new_request(p.PushRequest, repo="safe", base=1, tree=p.hash_bytes(tree))
        return operations.ask(connection, request, [BlobSource.from_bytes(tree), BlobSource.from_bytes(blob)]).reply

    with service.connect("mallory") as connection:
        # Without access, mallory's push is refused before its tree is looked at.
        with pytest.raises(PermissionDenied, match="may not push to safe"):
            push_unsafe(connection, UNSAFE_PATHS[0])
        service.share("safe", "mallory")  # mallory may push: what refuses these is the tree
        before = service.wait_converged(["1", "2", "3"])
        for bad in UNSAFE_PATHS:
            reply = push_unsafe(connection, bad)
            assert reply.status == p.Status.INVALID and "unsafe path" in reply.message, bad
            assert reply.head == 1  # nothing changed
    states = service.wait_converged(["1", "2", "3"])
    assert {repos["safe"] for _, repos in states.values()} == {before["1"][1]["safe"]}  # head and digest
    for replica in ("1", "2", "3"):
        store = service.store(replica)
        try:
            assert [(v.version, v.author) for v in store.list_versions("safe")] == [(1, "tester")]
        finally:
            store.close()


def test_client_refuses_unsafe_paths_on_pull(bare_service, tmp_path: Path) -> None:
    """A rogue server (no replicas: a fake answers) sends a tree that escapes the
    working directory: the client refuses it and writes nothing anywhere. The
    rogue signs its replies with a key of its own, which the client pins on first
    contact with this (new) namespace: what refuses the tree is the client's path
    check, not the signature check."""
    service = bare_service
    rogue_key = identity.generate_private_key()
    evil = b"owned\n"
    tree = p.encode_tree({"../escape.txt": p.FileEntry(p.hash_bytes(evil), len(evil))})
    stop = threading.Event()

    def rogue() -> None:
        consumer = KafkaConsumer(
            service.bus.topics.requests,
            bootstrap_servers=service.bootstrap,
            group_id=f"{service.namespace}rogue",
            auto_offset_reset="earliest",
        )
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    request = p.parse_message(record.value)
                    if not isinstance(request, p.PullRequest):
                        continue
                    stream = uuid.uuid4().hex
                    reply = p.Reply(
                        request_id=request.request_id,
                        action="pull",
                        stream=stream,
                        replica="rogue",
                        status=p.Status.OK,
                        version=1,
                        head=1,
                        tree=p.hash_bytes(tree),
                        blob_count=2,
                        blob_bytes=len(tree) + len(evil),
                    )
                    reply = sealing.sign_reply(rogue_key, reply, service.namespace)
                    service.bus.send_reply(request.reply_partition, reply)
                    for data in (tree, evil):
                        for chunk in p.blob_chunks(
                            request.request_id, request.repo, BlobSource.from_bytes(data), stream
                        ):
                            service.bus.send_reply(request.reply_partition, chunk)
                    service.bus.flush()
        consumer.close()

    thread = threading.Thread(target=rogue, daemon=True)
    thread.start()
    try:
        target = tmp_path / "work" / "clone"
        with pytest.raises(UnsafePath, match=r"'\.\.' part"):
            operations.clone_repository("victim", target, service.options(timeout=30))
        assert not (tmp_path / "work" / "escape.txt").exists()
        assert not (tmp_path / "escape.txt").exists()
        assert not target.exists()  # nothing left behind
    finally:
        stop.set()
        thread.join(timeout=10)


def test_corrupt_metadata_is_a_clear_error_and_nothing_is_touched(service, tmp_path: Path) -> None:
    origin = init_origin(service, tmp_path, "corrupt", {"a.txt": "a\n"})
    (origin / "a.txt").write_text("edited\n")
    for garbage in ("{not json", '{"format": 1, "repository": "x"}', "\x00\x01\x02"):
        (origin / ".minigit").write_text(garbage)
        for command in (["push", "-m", "x"], ["pull"], ["status"]):
            done = service.cli(*command, cwd=origin)
            assert done.returncode == 1, (command, done.stderr)
            assert "is corrupt" in done.stderr and "Traceback" not in done.stderr
            assert (origin / ".minigit").read_text() == garbage
            assert (origin / "a.txt").read_text() == "edited\n"


def test_two_commands_in_one_directory(service, tmp_path: Path) -> None:
    origin = init_origin(service, tmp_path, "locked", {"a.txt": "a\n"})
    (origin / "a.txt").write_text("b\n")
    with ws.lock_workdir(origin):  # another minigit command is running here
        done = service.cli("push", "-m", "while busy", cwd=origin)
    assert done.returncode == 5
    assert "another minigit command is running" in done.stderr
    assert json.loads(service.cli("push", "--json", cwd=origin).stdout)["new_version"] == 2


def test_clone_errors_leave_nothing_behind(service, tmp_path: Path) -> None:
    done = service.cli("clone", "no-such-repo", cwd=tmp_path)
    assert done.returncode == 1 and "does not exist" in done.stderr
    assert not (tmp_path / "no-such-repo").exists()

    init_origin(service, tmp_path, "there", {"a.txt": "a\n"})
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep me\n")
    done = service.cli("clone", "there", "occupied", cwd=tmp_path)
    assert done.returncode == 2 and "not an empty directory" in done.stderr
    assert sorted(x.name for x in occupied.iterdir()) == ["mine.txt"]


def test_unreachable_kafka_is_one_line_and_exit_code_4(tmp_path: Path, free_ports) -> None:
    (port,) = free_ports(1)
    started = time.monotonic()
    done = subprocess.run(
        [MINIGIT, "clone", "x", "--bootstrap", f"127.0.0.1:{port}", "--timeout", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4
    assert "cannot reach Kafka" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 20
    assert not (tmp_path / "x").exists()
