"""The bytes path: big pushes, clone speed, memory and disk, next to git in the same run.

    .venv/bin/python bench/transfer.py [--bootstrap HOST:PORT] [--memory] [--only push|clone|memory]

Starts a local Kafka (unless --bootstrap is given) and three replica processes
(bench/bench.py's helpers), then measures, printing figures (not pass/fail):

* push of 200 MiB in 2,000 files (half random, half text-like, so compressible)
  with the `minigit push` CLI, next to `git add + commit` and `git push` of the
  same files to a local bare repository, and `minigit clone` of the result;
* clone of 1,000 files / 100 MiB of random (incompressible) content with the
  `minigit clone` CLI, in MB/s, next to `git clone --no-local`;
* with --memory: peak RSS (VmHWM) of the client and of each replica for a push
  and a clone of 1 GiB (slow: a few minutes);
* the bytes on disk of repo-requests, repo-log and repo-responses (the Kafka
  data directory; only when this run started its own Kafka) and of each
  replica's store, per byte of content pushed.

Results are also written to bench/results/transfer-<timestamp>.json. Figures from
a shared 2-core development machine are noisy: compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kafka import TopicPartition
from rich.console import Console
from rich.table import Table

from bench import BIN, Replicas, start_kafka, use_own_config_dir
from minigit import codec
from minigit.client import operations
from minigit.config import KafkaSettings, ServerFlags
from minigit.kafka_clients import open_admin, open_consumer, open_producer
from minigit_server.bus import Bus, ensure_topics

console = Console(stderr=True)
MIB = 1024 * 1024
# A command's patience: a replica still applying an earlier big push answers a read late.
TIMEOUT = ["--timeout", "600"]
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "core.bigFileThreshold=512m"]
WORDS = [f"{w}{n}" for w in ("alpha", "beta", "gamma", "delta", "kafka", "chunk", "piece", "repo") for n in range(64)]


def write_files(root: Path, files: int, total_bytes: int, compressible: bool, seed: int) -> None:
    """``files`` files of ``total_bytes`` together under ``root``, in 10 directories:
    random bytes, or (``compressible``) every other file text-like words."""
    rng = random.Random(seed)
    size = total_bytes // files
    for n in range(files):
        path = root / f"dir{n % 10}" / f"file{n:05}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        if compressible and n % 2:
            line_words = rng.choices(WORDS, k=size // 6 + 16)
            path.write_bytes(" ".join(line_words).encode()[:size])
        else:
            path.write_bytes(os.urandom(size))


def run_measured(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of one command, waited for on its own."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {process.stderr.read().decode()[-2000:]}")
    process.stderr.close()
    return elapsed, usage.ru_maxrss * 1024


def peak_rss(pid: int) -> int:
    """VmHWM of a running process, in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def wait_applied(replicas: Replicas, timeout: float = 600.0) -> float:
    """Wait until every replica has applied the whole log (its heartbeats say so), so
    that a measure does not include another's backlog; the seconds it took."""
    started, since_ms = time.monotonic(), int(time.time() * 1000)
    bus = Bus(replicas.settings, client_id="bench-transfer")
    try:
        while time.monotonic() < started + timeout:
            beats = {beat.replica: beat for beat in bus.read_heartbeats(settle_s=0.2)}
            fresh = [beats.get(r) for r in replicas.processes]
            if all(b is not None and b.log_end and b.sent_ms > since_ms and caught_up(b) for b in fresh):
                return time.monotonic() - started
            time.sleep(0.5)
        raise RuntimeError(f"the replicas did not apply the log within {timeout:g}s")
    finally:
        bus.close()


def caught_up(beat) -> bool:
    return all(beat.applied.get(partition, 0) >= end for partition, end in beat.log_end.items())


def client_env(replicas: Replicas) -> dict:
    return {
        **os.environ,
        "MINIGIT_USER": "bench",
        "MINIGIT_BOOTSTRAP": replicas.bootstrap,
        "MINIGIT_NAMESPACE": replicas.namespace,
    }


def minigit_push_new(replicas: Replicas, root: Path, name: str, source: Path) -> tuple[float, int]:
    """A repository ``name`` made with one small file, then ``source``'s files added
    and pushed with the CLI: the push alone is timed (hashing included)."""
    work = root / f"{name}-work"
    work.mkdir()
    (work / "README").write_text("bench\n")
    env = client_env(replicas)
    run_measured([str(BIN / "minigit"), "init", "-q", *TIMEOUT, name], work, env)
    for item in source.iterdir():
        shutil.copytree(item, work / item.name)
    return run_measured([str(BIN / "minigit"), "push", "-q", *TIMEOUT, "-m", "big"], work, env)


def git_push_new(root: Path, name: str, source: Path) -> dict:
    """The same files, committed and pushed to a local bare repository."""
    bare, work = root / f"{name}-bare.git", root / f"{name}-git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    work.mkdir()
    (work / "README").write_text("bench\n")
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "v1"]):
        subprocess.run([*GIT, *command], cwd=work, check=True)
    subprocess.run([*GIT, "push", "-q", str(bare), "main"], cwd=work, check=True)
    for item in source.iterdir():
        shutil.copytree(item, work / item.name)
    add_s = run_measured([*GIT, "add", "-A"], work)[0] + run_measured([*GIT, "commit", "-qm", "big"], work)[0]
    push_s = run_measured([*GIT, "push", "-q", str(bare), "main"], work)[0]
    return {"git_add_commit_s": add_s, "git_push_s": push_s, "bare": str(bare)}


def bench_push(replicas: Replicas, root: Path, files: int, mib: int) -> dict:
    source = root / "push-source"
    write_files(source, files, mib * MIB, compressible=True, seed=1)
    push_s, push_rss = minigit_push_new(replicas, root, "bigpush", source)
    backlog_s = wait_applied(replicas)
    clone_s, clone_rss = run_measured(
        [str(BIN / "minigit"), "clone", "-q", *TIMEOUT, "bigpush", str(root / "bigpush-clone")],
        root,
        client_env(replicas),
    )
    git = git_push_new(root, "bigpush", source)
    shutil.rmtree(root / "bigpush-work")
    shutil.rmtree(root / "bigpush-clone")
    shutil.rmtree(root / "bigpush-git")
    shutil.rmtree(source)
    return {
        "files": files,
        "mib": mib,
        "minigit_push_s": push_s,
        "minigit_push_mb_s": mib * MIB / push_s / 1e6,
        "minigit_push_client_rss": push_rss,
        "replicas_backlog_after_push_s": backlog_s,
        "minigit_clone_s": clone_s,
        "minigit_clone_client_rss": clone_rss,
        "git_add_commit_s": git["git_add_commit_s"],
        "git_push_s": git["git_push_s"],
    }


def bench_clone(replicas: Replicas, root: Path, files: int, mib: int, rounds: int) -> dict:
    options = operations.ClientOptions("bench", ServerFlags(replicas.bootstrap, replicas.namespace), timeout=120)
    source = root / "clone-source"
    write_files(source, files, mib * MIB, compressible=False, seed=2)
    started = time.perf_counter()
    operations.init_repository(source, "bigclone", options)
    init_s = time.perf_counter() - started
    wait_applied(replicas)
    samples = []
    for n in range(rounds):
        target = root / f"bigclone-{n}"
        samples.append(
            run_measured(
                [str(BIN / "minigit"), "clone", "-q", *TIMEOUT, "bigclone", str(target)], root, client_env(replicas)
            )
        )
        shutil.rmtree(target)
    work = root / "clone-git-work"
    shutil.copytree(source, work, ignore=shutil.ignore_patterns(".minigit*"))
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "v1"]):
        subprocess.run([*GIT, *command], cwd=work, check=True)
    bare = root / "clone-bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    git_s = run_measured(["git", "clone", "-q", "--no-local", str(bare), str(root / "clone-git")], root)[0]
    for path in (work, root / "clone-git", bare, source):
        shutil.rmtree(path)
    best = min(s for s, _ in samples)
    raw = raw_kafka_pipeline(replicas.bootstrap, mib)
    disk = disk_write(root, files, mib)
    return {
        "files": files,
        "mib": mib,
        "minigit_init_s": init_s,
        "minigit_clone_s": [s for s, _ in samples],
        "minigit_clone_best_mb_s": mib * MIB / best / 1e6,
        "minigit_clone_client_rss": max(r for _, r in samples),
        "git_clone_no_local_s": git_s,
        "git_clone_mb_s": mib * MIB / git_s / 1e6,
        "raw_kafka_pipeline_mb_s": raw["mb_s"],
        "raw_kafka_pipeline": raw,
        "disk_write_mb_s": disk["mb_s"],
        "load_average": os.getloadavg(),
    }


RAW_RECORD = codec.CHUNK_SIZE + 300  # a chunk record: a piece and its frame's header


def raw_producer(bootstrap: str, topic: str, records: int, go) -> None:
    """(In a process of its own, as a replica is.) Sends ``records`` records of
    RAW_RECORD random bytes to partition 0 of ``topic`` once ``go`` is set."""
    producer = open_producer(KafkaSettings(bootstrap))
    producer.partitions_for(topic)
    payload = os.urandom(RAW_RECORD)
    go.wait()
    for _ in range(records):
        producer.send(topic, value=payload, partition=0)
    producer.flush()
    producer.close()


def raw_kafka_pipeline(bootstrap: str, mib: int) -> dict:
    """The bound a clone's bytes path has on this machine and broker: a bare
    kafka-python producer process sending ``mib`` MiB as chunk-sized records while
    a bare consumer (this process, minigit's consumer settings) reads them, both
    running at once, as a replica's answer and a client do. No minigit code, no
    hashing, no disk: the records are only counted."""
    settings = KafkaSettings(bootstrap, f"rawpipe{int(time.time())}-")
    topic = settings.topics.responses
    ensure_topics(settings, 1, 1)
    records = mib * MIB // codec.CHUNK_SIZE
    consumer = open_consumer(settings, group_id=None)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, consumer.end_offsets([tp])[tp])
    go = multiprocessing.Event()
    producer = multiprocessing.Process(target=raw_producer, args=(bootstrap, topic, records, go))
    producer.start()
    time.sleep(3.0)  # the producer connected and knows the partition
    cpu, started = time.process_time(), time.perf_counter()
    go.set()
    received = count = 0
    while count < records and time.perf_counter() - started < 300:
        for batch in consumer.poll(timeout_ms=1000).values():
            count += len(batch)
            received += sum(len(record.value) for record in batch)
    elapsed = time.perf_counter() - started
    consumer_cpu = time.process_time() - cpu
    producer.join(60)
    consumer.close()
    admin = open_admin(settings)
    try:
        admin.delete_topics([topic for topic in (settings.topics.requests, settings.topics.responses,
                                                 settings.topics.log, settings.topics.replicas)])  # fmt: skip
    finally:
        admin.close()
    return {"bytes": received, "s": elapsed, "mb_s": received / elapsed / 1e6, "consumer_cpu_s": consumer_cpu}


def disk_write(root: Path, files: int, mib: int) -> dict:
    """Writing ``files`` new files of ``mib`` MiB in all (random bytes, made first)
    into a new directory, each opened, written and closed, as a clone does (no
    fsync, like a clone and git)."""
    size = mib * MIB // files
    blocks = [os.urandom(size) for _ in range(min(files, 16))]
    target = root / "disk-write"
    started = time.perf_counter()
    for n in range(files):
        folder = target / f"dir{n % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"file{n:05}.bin", "xb") as out:
            out.write(blocks[n % len(blocks)])
    elapsed = time.perf_counter() - started
    shutil.rmtree(target)
    return {"s": elapsed, "mb_s": mib * MIB / elapsed / 1e6}


def bench_memory(replicas: Replicas, root: Path, mib: int) -> dict:
    """Peak RSS of the client and the replicas for a push and a clone of ``mib`` MiB
    (64 files of random content, so each file is 16 MiB for 1 GiB)."""
    source = root / "memory-source"
    write_files(source, 64, mib * MIB, compressible=False, seed=3)
    before = {rid: peak_rss(proc.pid) for rid, proc in replicas.processes.items()}
    push_s, push_rss = minigit_push_new(replicas, root, "bigmemory", source)
    shutil.rmtree(source)
    backlog_s = wait_applied(replicas)
    clone_s, clone_rss = run_measured(
        [str(BIN / "minigit"), "clone", "-q", *TIMEOUT, "bigmemory", str(root / "bigmemory-clone")],
        root,
        client_env(replicas),
    )
    after = {rid: peak_rss(proc.pid) for rid, proc in replicas.processes.items()}
    shutil.rmtree(root / "bigmemory-clone")
    shutil.rmtree(root / "bigmemory-work")
    return {
        "mib": mib,
        "push_s": push_s,
        "replicas_backlog_after_push_s": backlog_s,
        "clone_s": clone_s,
        "client_push_rss": push_rss,
        "client_clone_rss": clone_rss,
        "replica_rss_before": before,
        "replica_rss_after": after,
    }


def dir_bytes(path: Path) -> int:
    """Bytes allocated on disk: Kafka preallocates each active segment's index files
    (10 MiB each, sparse), which their sizes would count as data."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def disk_usage(settings: KafkaSettings, kafka_dir: Path | None, server_dir: Path, content_bytes: int) -> dict:
    """Bytes on disk per topic (every partition's directory) and per store, and per byte of content."""
    out: dict = {"content_bytes": content_bytes, "topics": {}, "stores": {}}
    topics = settings.topics
    if kafka_dir is not None:
        for label, topic in (
            ("repo-requests", topics.requests),
            ("repo-log", topics.log),
            ("repo-responses", topics.responses),
        ):
            total = sum(dir_bytes(d) for d in kafka_dir.rglob(f"{topic}-*") if d.is_dir())
            out["topics"][label] = {"bytes": total, "per_content_byte": total / max(1, content_bytes)}
    for store in sorted(server_dir.iterdir()) if server_dir.exists() else []:
        total = dir_bytes(store)
        out["stores"][store.name] = {"bytes": total, "per_content_byte": total / max(1, content_bytes)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one (no topic disk figures then)")
    parser.add_argument("--push-files", type=int, default=2000)
    parser.add_argument("--push-mib", type=int, default=200)
    parser.add_argument("--clone-files", type=int, default=1000)
    parser.add_argument("--clone-mib", type=int, default=100)
    parser.add_argument(
        "--clone-rounds", type=int, default=3, help="clones of the 100 MiB repository (best is reported)"
    )
    parser.add_argument("--memory", action="store_true", help="also push and clone --memory-mib (slow)")
    parser.add_argument("--memory-mib", type=int, default=1024)
    parser.add_argument("--only", choices=["push", "clone", "memory"], help="run only this benchmark")
    parser.add_argument("--label", default="", help="a word kept in the results file's name (before, after)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="minigit-transfer-"))
    use_own_config_dir(root)
    # the replicas' push limit (1 GiB by default) would refuse the 1 GiB push: its tree and README are over it
    os.environ.setdefault("MINIGIT_MAX_PUSH_BYTES", str(max(2 * args.memory_mib * MIB, 1024**3)))
    kafka_dir = None if args.bootstrap else root / "kafka"
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "label": args.label}
    content = 0
    replicas = None
    try:
        bootstrap = args.bootstrap or start_kafka(kafka_dir)
        replicas = Replicas(bootstrap, f"transfer{int(time.time())}-", root / "server")
        replicas.start_all()
        replicas.serving("warmup")
        replicas.register_user()
        sections = [
            ("push", args.only in (None, "push"), args.push_mib, f"{args.push_files} files, {args.push_mib} MiB",
             lambda: bench_push(replicas, root, args.push_files, args.push_mib)),
            ("clone", args.only in (None, "clone"), args.clone_mib, f"{args.clone_files} files, {args.clone_mib} MiB",
             lambda: bench_clone(replicas, root, args.clone_files, args.clone_mib, args.clone_rounds)),
            ("memory", args.memory or args.only == "memory", args.memory_mib, f"{args.memory_mib} MiB",
             lambda: bench_memory(replicas, root, args.memory_mib)),
        ]  # fmt: skip
        for name, wanted, mib, what, run in sections:
            if not wanted:
                continue
            console.print(f"[bold]{name}[/] ({what})")
            content += mib * MIB
            try:
                results[name] = run()
                console.print_json(json.dumps(results[name]))  # each section's figures as soon as they are in
            except (RuntimeError, OSError, subprocess.CalledProcessError) as error:  # a failure is a figure too
                console.print(f"[red]{name} failed:[/] {error}")
                results[f"{name}_failed"] = str(error)[-2000:]
        results["replica_rss"] = {rid: peak_rss(proc.pid) for rid, proc in replicas.processes.items()}
        replicas.stop()
        results["disk"] = disk_usage(replicas.settings, kafka_dir, root / "server", content)
    finally:
        if replicas is not None:  # stopped already, or left running by an error or Ctrl-C
            for process in replicas.processes.values():
                if process.poll() is None:
                    process.kill()
        if kafka_dir is not None:
            subprocess.run(
                [str(BIN / "minigit-server"), "kafka", "stop", "--data-dir", str(kafka_dir)], capture_output=True
            )
        shutil.rmtree(root, ignore_errors=True)
    report(results)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    label = f"-{args.label}" if args.label else ""
    (out_dir / f"transfer-{time.strftime('%Y%m%d-%H%M%S')}{label}.json").write_text(json.dumps(results, indent=1))


def report(results: dict) -> None:
    out = Console()
    if "push" in results:
        r = results["push"]
        table = Table(title=f"push of {r['mib']} MiB in {r['files']} files (half compressible)")
        for column in ("operation", "seconds", "MB/s", "client peak RSS MiB"):
            table.add_column(column, justify="left" if column == "operation" else "right")
        size = r["mib"] * MIB / 1e6
        rss = f"{r['minigit_push_client_rss'] / MIB:.0f}"
        table.add_row("minigit push (CLI)", f"{r['minigit_push_s']:.1f}", f"{size / r['minigit_push_s']:.0f}", rss)
        rss = f"{r['minigit_clone_client_rss'] / MIB:.0f}"
        table.add_row(
            "minigit clone of it (CLI)", f"{r['minigit_clone_s']:.1f}", f"{size / r['minigit_clone_s']:.0f}", rss
        )
        table.add_row("git add + commit", f"{r['git_add_commit_s']:.1f}", f"{size / r['git_add_commit_s']:.0f}", "")
        table.add_row("git push (bare repo)", f"{r['git_push_s']:.1f}", f"{size / r['git_push_s']:.0f}", "")
        both = r["git_add_commit_s"] + r["git_push_s"]
        table.add_row("git add + commit + push", f"{both:.1f}", f"{size / both:.0f}", "")
        out.print(table)
    if "clone" in results:
        c = results["clone"]
        runs = ", ".join(f"{s:.2f}" for s in c["minigit_clone_s"])
        out.print(
            f"clone of {c['files']} files / {c['mib']} MiB (random): "
            f"minigit clone {c['minigit_clone_best_mb_s']:.0f} MB/s "
            f"(best of {runs} s; client peak RSS {c['minigit_clone_client_rss'] / MIB:.0f} MiB), "
            f"git clone --no-local {c['git_clone_mb_s']:.0f} MB/s ({c['git_clone_no_local_s']:.2f} s); "
            f"bounds: bare kafka-python producer -> consumer at once {c['raw_kafka_pipeline_mb_s']:.0f} MB/s, "
            f"writing the files {c['disk_write_mb_s']:.0f} MB/s"
        )
    if "memory" in results:
        m = results["memory"]
        replicas = ", ".join(f"{rid}: {v / MIB:.0f}" for rid, v in m["replica_rss_after"].items())
        out.print(
            f"{m['mib']} MiB: push {m['push_s']:.1f} s, client peak RSS {m['client_push_rss'] / MIB:.0f} MiB; "
            f"clone {m['clone_s']:.1f} s, client peak RSS {m['client_clone_rss'] / MIB:.0f} MiB; "
            f"replicas' peak RSS (MiB) {replicas}"
        )
    if "disk" in results:
        d = results["disk"]
        parts = [f"{k} {v['bytes'] / MIB:.0f} MiB ({v['per_content_byte']:.2f}x)" for k, v in d["topics"].items()]
        parts += [
            f"store {k} {v['bytes'] / MIB:.0f} MiB ({v['per_content_byte']:.2f}x)" for k, v in d["stores"].items()
        ]
        out.print(f"disk for {d['content_bytes'] / MIB:.0f} MiB of content: " + ", ".join(parts))


if __name__ == "__main__":
    main()
