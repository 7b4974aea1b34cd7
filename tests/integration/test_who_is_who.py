"""Who is who, against real replicas on real Kafka: impersonation, replays, stale
requests, permissions, private content on the reply topic, a forged service, a
rotated key and a rebuilt replica (issue 9)."""

from __future__ import annotations

import base64
import dataclasses
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import wait_until
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from minigit import identity, sealing
from minigit import protocol as p
from minigit.client import operations
from minigit.client.exchange import Credentials
from minigit.client.transport import Connection
from minigit.errors import ExitCode, NotAuthenticated, PermissionDenied, ServerKeyChanged
from minigit_server.replica import store_path
from minigit_server.supervisor import replica_command

pytestmark = pytest.mark.integration

MARKER = b"the answer to the exam is 42, do not share"


def make_repo(service, root: Path, name: str = "lab", owner: str = "tester", **content: bytes) -> None:
    root.mkdir(parents=True)
    for rel, data in (content or {"notes.txt": MARKER}).items():
        (root / rel).write_bytes(data)
    operations.init_repository(root, name, service.options(owner), "version 1")


def head_everywhere(service, repo: str) -> set[int | None]:
    states = service.wait_converged(["1", "2", "3"])
    return {state[1].get(repo, (None,))[0] for state in states.values()}


def raw_records(service, topic: str) -> list[bytes]:
    """Every record value of a topic, read with a plain kafka-python consumer."""
    consumer = KafkaConsumer(bootstrap_servers=service.bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, n) for n in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in parts) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values += [record.value for record in records if record.value is not None]
        return values
    finally:
        consumer.close()


def test_a_request_signed_by_bob_naming_alice_is_refused_and_changes_nothing(service, tmp_path: Path) -> None:
    make_repo(service, tmp_path / "lab", owner="alice")
    service.register("bob")
    impostor = Credentials("alice", service.credentials("bob").key)  # bob's key, alice's name
    with Connection(service.settings, impostor, 30.0) as link:
        request = link.new_request(p.VisibilityRequest, repo="lab", visibility=p.Visibility.PUBLIC)
        with pytest.raises(NotAuthenticated, match="does not match alice's registered key") as refused:
            operations.ask(link, request)
    assert refused.value.exit_code == ExitCode.AUTH
    service.wait_converged(["1", "2", "3"])  # every replica applied the whole log, the creation included
    for replica in ("1", "2", "3"):
        assert service.store(replica).get_repo("lab").visibility == "private"


def test_a_push_to_a_repository_you_may_only_read_is_refused_and_nothing_changes(service, tmp_path: Path) -> None:
    make_repo(service, tmp_path / "lab")
    service.register("reader")
    service.share("lab", "reader", level=p.Access.READ)
    copy = tmp_path / "copy"
    assert service.cli("clone", "lab", str(copy), cwd=tmp_path, user="reader").returncode == 0
    (copy / "notes.txt").write_text("vandalised")
    pushed = service.cli("push", "-m", "mine now", cwd=copy, user="reader")
    assert pushed.returncode == ExitCode.AUTH, pushed.stderr
    assert "permission denied: reader may not push to lab (read only); ask its owner (tester)" in pushed.stderr
    assert head_everywhere(service, "lab") == {1}
    outsider = service.cli("clone", "lab", str(tmp_path / "no"), cwd=tmp_path, user="outsider")
    assert outsider.returncode == ExitCode.AUTH and "(private)" in outsider.stderr
    assert not (tmp_path / "no").exists()


def test_a_replayed_push_changes_nothing_and_a_stale_one_is_refused(service, tmp_path: Path) -> None:
    root = tmp_path / "lab"
    make_repo(service, root)
    (root / "notes.txt").write_text("v2")
    operations.push_workdir(root, service.options(), "v2")
    captured = [
        value
        for value in raw_records(service, service.settings.topics.requests)
        if b'"action":"push"' in value and b'"type":"request"' in value
    ]
    (root / "notes.txt").write_text("v3")
    operations.push_workdir(root, service.options(), "v3")
    assert captured
    replayed = p.parse_message(captured[0], allowed=(p.PushRequest,))
    answers_before = count_answers(service, replayed.request_id)
    producer = KafkaProducer(bootstrap_servers=service.bootstrap)
    try:
        for value in captured:  # the same signed push, as an eavesdropper would send it again
            producer.send(service.settings.topics.requests, key=b"lab", value=value)
        producer.flush()
    finally:
        producer.close()
    # it is answered (its original outcome, sealed to its sender: unreadable here) and changes nothing
    deadline = time.monotonic() + 60
    while count_answers(service, replayed.request_id) <= answers_before:
        assert time.monotonic() < deadline, "the replayed push was never answered"
        time.sleep(0.5)
    assert head_everywhere(service, "lab") == {3}

    with service.connect() as link:  # a request signed 10 minutes ago, properly
        request = link.new_request(p.LogRequest, repo="lab")
        old = dataclasses.replace(request, signed_ms=int(time.time() * 1000) - 600_000)
        stale = identity.sign_request(link.credentials.key, old, identity.NO_CHUNKS, service.namespace)
        reply = send_signed_as_is(link, stale)
    assert reply.status == p.Status.UNAUTHENTICATED and "check this machine's clock" in reply.message


def count_answers(service, request_id: str) -> int:
    """Sealed reply records of one request on the reply topic."""
    needle = f'"request_id":"{request_id}"'.encode()
    return sum(1 for v in raw_records(service, service.settings.topics.responses) if needle in v and b"sealed" in v)


def send_signed_as_is(link: Connection, request: p.Request) -> p.Reply:
    """Send a request exactly as signed (``call`` would sign it again, now)."""
    original = link._send

    def as_is(request_, uploads, observer, attempt):
        partition = link.request_partition(request.repo, attempt)
        link.producer.send(
            link.topics.requests, key=request.repo.encode(), value=request.to_bytes(), partition=partition
        )
        link.producer.flush()

    link._send = as_is
    try:
        return link.call(request).reply
    finally:
        link._send = original


def test_a_private_repository_never_travels_in_clear_on_the_reply_topic(service, tmp_path: Path) -> None:
    make_repo(service, tmp_path / "lab")
    service.register("friend")
    service.share("lab", "friend", level=p.Access.READ)
    for user in ("tester", "friend"):
        clone = tmp_path / f"clone-{user}"
        operations.clone_repository("lab", clone, service.options(user))
        assert (clone / "notes.txt").read_bytes() == MARKER
        assert operations.read_log(clone, service.options(user))[2] == [None]  # and its signature checks
    replies = raw_records(service, service.settings.topics.responses)
    forms = [MARKER, base64.b64encode(MARKER), b"do not share", b"version 1"]
    assert not [value for value in replies if any(form in value for form in forms)]
    sealed = [p.parse_message(v, allowed=p.REPLY_TYPES) for v in replies if b'"type":"sealed"' in v]
    assert len(sealed) >= 4  # two clones (reply + chunks) and two logs, all sealed


def test_a_reply_signed_by_another_key_is_refused(bare_service, tmp_path: Path) -> None:
    """A rogue producer answers every request, well formed and signed with its own
    key: the client that pinned the service's key believes none of it."""
    service = bare_service
    service.start("1")
    service.ping("lab")  # first contact: the client pins the service's key
    service.kill("1", signal.SIGTERM)
    rogue_key = identity.generate_private_key()
    stop = threading.Event()
    rogue = threading.Thread(target=answer_everything, args=(service, rogue_key, stop), daemon=True)
    rogue.start()
    try:
        started = time.monotonic()
        with service.connect(timeout=6.0) as link, pytest.raises(ServerKeyChanged) as changed:
            link.call(link.new_request(p.LogRequest, repo="lab"))
        assert time.monotonic() - started < 30
    finally:
        stop.set()
        rogue.join(timeout=10)
    assert changed.value.exit_code == ExitCode.AUTH
    assert identity.fingerprint(rogue_key.public_key()) in changed.value.message


def answer_everything(service, key, stop: threading.Event) -> None:
    consumer = KafkaConsumer(bootstrap_servers=service.bootstrap, enable_auto_commit=False)
    producer = KafkaProducer(bootstrap_servers=service.bootstrap)
    try:
        topic = service.settings.topics.requests
        parts = [TopicPartition(topic, n) for n in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        consumer.seek_to_end(*parts)
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    request = p.parse_message(record.value, allowed=p.REQUEST_TYPES)
                    if not isinstance(request, p.Request):
                        continue
                    forged = p.Reply(
                        request_id=request.request_id,
                        action=request.action,
                        stream=uuid.uuid4().hex,
                        replica="1",
                        status=p.Status.OK,
                        head=7,
                        version=7,
                    )
                    signed = sealing.sign_reply(key, forged, service.namespace)
                    topic_out = service.settings.topics.responses
                    producer.send(topic_out, value=signed.to_bytes(), partition=request.reply_partition)
                    producer.send(topic_out, value=forged.to_bytes(), partition=request.reply_partition)  # unsigned
            producer.flush()
    finally:
        consumer.close()
        producer.close()


def test_a_rotated_key_and_the_permissions_hold_on_every_replica_and_a_rebuilt_one(service, tmp_path: Path) -> None:
    root = tmp_path / "lab"
    make_repo(service, root)
    service.register("ana", "ben")
    service.share("lab", "ana", level=p.Access.ADMIN)
    operations.share_repository(root, service.options("ana"), "lab", "ben", p.Access.WRITE)
    operations.set_visibility(root, service.options("ana"), "lab", p.Visibility.PUBLIC)
    old_key = service.credentials("ben").key
    operations.rotate_key(root, service.options("ben"))
    new_key = identity.public_key_text(service.credentials("ben").key.public_key())
    with Connection(service.settings, Credentials("ben", old_key), 30.0) as link, pytest.raises(NotAuthenticated):
        operations.ask(link, link.new_request(p.LogRequest, repo="lab"))
    copy = tmp_path / "ben"
    operations.clone_repository("lab", copy, service.options("ben"))
    (copy / "b.txt").write_text("ben's")
    assert operations.push_workdir(copy, service.options("ben"), "with the new key").new_version == 2

    states = service.wait_converged(["1", "2", "3"])
    assert len({str(state) for state in states.values()}) == 1  # repository digests: owner, members, visibility
    for replica in ("1", "2", "3"):
        store = service.store(replica)
        assert store.get_account("ben").key == new_key
        assert store.get_members("lab") == {"ana": "admin", "ben": "write"}
        assert store.get_repo("lab").visibility == "public"
        store.close()

    # replica 3 loses its store and rebuilds it from the log alone
    service.kill("3", signal.SIGKILL)
    shutil.rmtree(store_path(service.data_dir, "3").parent)
    service.start("3")
    rebuilt = service.wait_converged(["1", "2", "3"], timeout=120)
    assert rebuilt["3"] == rebuilt["1"]
    store = service.store("3")
    assert {a.name: a.key for a in store.list_accounts()} == {a.name: a.key for a in service.store("1").list_accounts()}
    assert store.get_members("lab") == {"ana": "admin", "ben": "write"}
    store.close()
    service.register("mallory")  # a name someone holds: what refuses the share is ben's access
    with pytest.raises(PermissionDenied):  # ben writes, but may not share
        operations.share_repository(root, service.options("ben"), "lab", "mallory", p.Access.ADMIN)


def test_a_replica_with_another_service_key_refuses_to_join(service, tmp_path: Path) -> None:
    """A replica started on a new host without the service's key file would make a
    key of its own and skip every write the others apply: it stops at once instead."""

    def reporting_a_key() -> bool:
        return len([beat for beat in service.bus.read_heartbeats() if beat.server_key]) == 3

    wait_until(reporting_a_key, 30, message="three replicas reporting their service key")
    options = ["--data-dir", str(tmp_path / "elsewhere"), "--bootstrap", service.bootstrap]
    command = replica_command("4", [*options, "--namespace", service.namespace])
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "is not the one the running replicas use" in done.stderr, done.stderr
    assert "--server-key" in done.stderr and "Traceback" not in done.stderr
