"""Nothing received is unbounded: a tree bomb is refused from its size, without
the replicas decoding it, and the service keeps answering."""

from __future__ import annotations

import json
from pathlib import Path

from minigit import codec
from minigit import protocol as p
from minigit.client import operations

REPLICAS = ["1", "2", "3"]


def peak_memory_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_tree_bomb_is_refused_without_decoding_it(bare_service, tmp_path: Path) -> None:
    service = bare_service
    service.start(*REPLICAS)
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_bytes(b"a\n")
    operations.init_repository(work, "bombed", service.options(), "first")
    # mallory is registered and may push: what refuses the bomb is its size, not who sent it
    service.register("mallory")
    service.share("bombed", "mallory")
    converged = service.wait_converged(REPLICAS)
    before = {rid: peak_memory_kib(process.pid) for rid, process in service.processes.items()}

    # 400,000 paths, about 36 MB of tree: decoding it took hundreds of MB per replica.
    blob = b"x"
    entry = {"sha": p.hash_bytes(blob), "size": 1}
    tree = json.dumps({"v": 1, "files": {f"d/{n:07d}": entry for n in range(400_000)}}).encode()
    assert len(tree) > p.MAX_TREE_BYTES
    with service.connect("mallory", timeout=120) as connection:
        request = connection.new_request(p.PushRequest, repo="bombed", base=1, tree=p.hash_bytes(tree))
        uploads = [codec.BlobSource.from_bytes(tree), codec.BlobSource.from_bytes(blob)]
        reply = operations.ask(connection, request, uploads).reply
    assert reply.status == p.Status.INVALID and reply.message.startswith("tree too large")

    states = service.wait_converged(REPLICAS)
    # nothing changed: the same head and digest on every replica, and no version by mallory
    assert {repos["bombed"] for _, repos in states.values()} == {converged["1"][1]["bombed"]}
    for replica_id in REPLICAS:
        store = service.store(replica_id)
        try:
            assert [(v.version, v.author) for v in store.list_versions("bombed")] == [(1, "tester")]
        finally:
            store.close()
    for replica_id, process in service.processes.items():
        grown_mib = (peak_memory_kib(process.pid) - before[replica_id]) / 1024
        assert grown_mib < 100, f"replica {replica_id} grew by {grown_mib:.0f} MiB"
    (work / "a.txt").write_bytes(b"b\n")
    assert operations.push_workdir(work, service.options(), "after the bomb").new_version == 2
