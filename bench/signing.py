"""What identity costs: the signing, verifying and sealing one push and one pull
do, next to the in-process push and pull latency measured in the same run.

    .venv/bin/python bench/signing.py [--bootstrap HOST:PORT] [--rounds N]

Identity cannot be switched off (every request is signed), so the cost is
measured by timing the exact calls each operation makes on the critical path,
on the objects it makes them on, and set against the operation's whole latency
against 3 replica processes on a local broker (one-file change, 100 files):

* push: the client's chunk digests (tree and file) and signature; the serving
  replica's check of the request, its attestation of the key and its two signed
  replies (working, then the outcome); the proposer's apply-time check (request and
  attestation); the client's check of the two replies;
* pull of a public repository: signature, check, one signed reply, its check;
* pull of a private repository: the same, and the reply and its chunks sealed and
  opened (one key agreement per answer, one AEAD pass per record).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
import bench
from minigit import codec, identity, sealing
from minigit import protocol as p
from minigit.client import operations
from minigit.config import ServerFlags
from minigit_server import access

console = Console()
NAMESPACE = "bench-"


def per_call_ms(function, number: int = 300) -> float:
    """The median of 5 runs of ``number`` calls, in milliseconds per call."""
    runs = timeit.repeat(function, number=number, repeat=5)
    return 1000 * statistics.median(runs) / number


def crypto_costs() -> dict[str, float]:
    """Milliseconds of identity work per operation, from its parts."""
    user, server = identity.generate_private_key(), identity.generate_private_key()
    user_text, server_text = identity.public_key_text(user.public_key()), identity.public_key_text(server.public_key())
    file = codec.BlobSource.from_bytes(b"round 1 api\n")
    tree = codec.BlobSource.from_bytes(b'{"files":{}' + b" " * 5000 + b"}")
    chunks = [c for blob in (tree, file) for c in p.blob_chunks(p.new_request_id(), "latency", blob)]
    push = p.PushRequest(
        request_id=p.new_request_id(), repo="latency", user="bench", reply_partition=0, base=3, tree=tree.sha
    )
    signed = identity.sign_request(user, push, identity.chunks_digest(map(identity.ChunkDigest.of, chunks)), NAMESPACE)
    attestation = access.attest(server, NAMESPACE, signed, user_text)
    reply = sealing.sign_reply(
        server,
        p.Reply(
            request_id=push.request_id,
            action="push",
            stream="s" * 32,
            replica="1",
            status=p.Status.ACCEPTED,
            version=4,
            head=4,
        ),
        NAMESPACE,
    )
    parts = {
        "chunk digests (2 chunks)": per_call_ms(lambda: identity.chunks_digest(map(identity.ChunkDigest.of, chunks))),
        "sign a request": per_call_ms(lambda: identity.sign_request(user, push, identity.NO_CHUNKS, NAMESPACE)),
        "verify a request": per_call_ms(lambda: identity.request_signed_by(user_text, signed, NAMESPACE)),
        "attest a key": per_call_ms(lambda: access.attest(server, NAMESPACE, signed, user_text)),
        "verify an attestation": per_call_ms(
            lambda: identity.attested_by(server_text, NAMESPACE, "bench", user_text, signed.signature, attestation)
        ),
        "sign a reply": per_call_ms(lambda: sealing.sign_reply(server, reply, NAMESPACE)),
        "verify a reply": per_call_ms(lambda: sealing.reply_signed_by(server_text, reply, NAMESPACE)),
    }
    reply_key = sealing.new_reply_key()
    reply_key_text = sealing.reply_key_text(reply_key.public_key())
    sealer = sealing.StreamSealer(reply_key_text, push.request_id, "s" * 32)
    sealed_reply = sealer.seal(reply)
    parts["seal: key agreement per answer"] = per_call_ms(
        lambda: sealing.StreamSealer(reply_key_text, push.request_id, "s" * 32), number=100
    )
    parts["seal a record (reply)"] = per_call_ms(lambda: sealer.seal(reply))
    parts["open: key agreement per answer"] = per_call_ms(
        lambda: sealing.StreamOpener(reply_key).open(sealed_reply), number=100
    )
    opener = sealing.StreamOpener(reply_key)
    parts["open a record (reply)"] = per_call_ms(lambda: opener.open(sealed_reply))
    return parts


def per_operation(parts: dict[str, float]) -> dict[str, float]:
    sign_and_check = parts["sign a request"] + parts["verify a request"]
    replies = parts["sign a reply"] + parts["verify a reply"]
    push = (
        parts["chunk digests (2 chunks)"]
        + sign_and_check
        + parts["attest a key"]
        + 2 * replies  # working, then the outcome
        + parts["verify a request"]  # at apply time, on the proposer
        + parts["verify an attestation"]
    )
    pull = sign_and_check + replies
    sealed = (
        parts["seal: key agreement per answer"]
        + parts["open: key agreement per answer"]
        + 3 * (parts["seal a record (reply)"] + parts["open a record (reply)"])  # the reply, a tree, a file
    )
    return {"push": push, "pull (public)": pull, "pull (private, sealed)": pull + sealed}


def latency(bootstrap: str, root: Path, rounds: int) -> dict[str, float]:
    replicas = bench.Replicas(bootstrap, f"sign{int(time.time())}-", root / "server")
    try:
        replicas.start_all()
        options = operations.ClientOptions("bench", ServerFlags(bootstrap, replicas.namespace), timeout=60)
        results = {}
        for visibility in (p.Visibility.PUBLIC, p.Visibility.PRIVATE):
            writer, reader = root / f"writer-{visibility}", root / f"reader-{visibility}"
            writer.mkdir()
            for n in range(100):
                (writer / f"file{n:03}.txt").write_text(f"file {n}\n" * 50)
            operations.init_repository(writer, f"latency-{visibility}", options, visibility=visibility)
            operations.clone_repository(f"latency-{visibility}", reader, options)
            pushes, pulls = [], []
            for n in range(rounds):
                (writer / "file000.txt").write_text(f"round {n} api\n")
                started = time.perf_counter()
                operations.push_workdir(writer, options, f"api {n}")
                pushes.append(time.perf_counter() - started)
                started = time.perf_counter()
                operations.pull_workdir(reader, options)
                pulls.append(time.perf_counter() - started)
            results[f"push ({visibility})"] = 1000 * statistics.median(pushes)
            results[f"pull ({visibility})"] = 1000 * statistics.median(pulls)
        return results
    finally:
        replicas.stop()


@contextlib.contextmanager
def local_kafka(bootstrap: str | None, data_dir: Path):
    """``bootstrap``, or a broker started for the run (stopped after it)."""
    if bootstrap is not None:
        yield bootstrap
        return
    server = str(bench.BIN / "minigit-server")
    port = bench.free_port()
    subprocess.run(
        [
            server,
            "kafka",
            "start",
            "--port",
            str(port),
            "--controller-port",
            str(bench.free_port()),
            "--data-dir",
            str(data_dir),
        ],
        check=True,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([server, "kafka", "stop", "--data-dir", str(data_dir)], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="minigit-signing-"))
    bench.use_own_config_dir(root)  # the bench user's key and the pinned service key: not ~/.config/minigit
    parts = crypto_costs()
    with local_kafka(args.bootstrap, root / "kafka") as bootstrap:
        measured = latency(bootstrap, root, args.rounds)
    costs = per_operation(parts)
    rows = [
        ("push", costs["push"], measured["push (public)"]),
        ("pull (public)", costs["pull (public)"], measured["pull (public)"]),
        ("pull (private, sealed)", costs["pull (private, sealed)"], measured["pull (private)"]),
    ]
    table = Table(title=f"identity cost per operation ({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    for column in ("operation", "signing + verifying + sealing", "in-process latency (median)", "share"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for name, cost, whole in rows:
        table.add_row(name, f"{cost:.2f} ms", f"{whole:.1f} ms", f"{100 * cost / whole:.1f}%")
    console.print(table)
    parts_table = Table(title="the parts (ms per call, median of 5 runs)")
    parts_table.add_column("call")
    parts_table.add_column("ms", justify="right")
    for name, ms in parts.items():
        parts_table.add_row(name, f"{ms:.3f}")
    console.print(parts_table)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    result = {"parts_ms": parts, "per_operation_ms": costs, "latency_ms": measured, "rounds": args.rounds}
    (out_dir / f"signing-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
