"""Push, clone and status of a tree of many small files, next to git in the same run.

    .venv/bin/python bench/trees.py [--files 100000] [--bootstrap HOST:PORT] [--rounds 1]

Starts a local Kafka (unless --bootstrap is given) and three replica processes,
makes --files files of about 100 bytes (100 to a folder, as bench/status.py does),
then measures, each with the `minigit` and `git` commands a user runs:

* push: `minigit init` of the tree (the first push: every file is scanned,
  hashed and uploaded) next to `git add -A` + `git commit` + `git push` to a local
  bare repository (and `git push` alone);
* clone: `minigit clone` next to `git clone --no-local` of that bare repository;
* status of the clone: `minigit status` right after the clone (the stat cache the
  clone left), without the stat cache (every file hashed) and with the one that
  status wrote, next to `git status`.

The user registers its key before anything is timed (git has no such step; a
first push of an unknown user is answered "unknown user" and sent again).

With --rounds N each measure is taken N times (a new repository name for each
push) and the median kept. Results are also written to bench/results/trees-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from status import GIT_ENV, machine, make_small

from bench import BIN, Replicas, start_kafka, use_own_config_dir
from minigit.client import workspace as ws

console = Console(stderr=True)


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[-3:])}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - started


def median(samples: list[float]) -> dict:
    return {"median_s": statistics.median(samples), "best_s": min(samples), "n": len(samples)}


def bench_trees(replicas: Replicas, root: Path, files: int, rounds: int) -> dict:
    env = {
        **os.environ,
        "MINIGIT_USER": "bench",
        "MINIGIT_BOOTSTRAP": replicas.bootstrap,
        "MINIGIT_NAMESPACE": replicas.namespace,
        "MINIGIT_TIMEOUT": "600",
    }
    git_env = {**os.environ, **GIT_ENV, "HOME": str(root)}
    source = root / "source"
    source.mkdir()
    console.print(f"making {files} files")
    make_small(source, files)
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "minigit_push",
            "minigit_clone",
            "minigit_status_after_clone",
            "minigit_status_cold",
            "minigit_status_warm",
            "git_add_commit_push",
            "git_push",
            "git_clone",
            "git_status",
        )
    }
    for n in range(rounds):
        console.print(f"round {n + 1}: minigit")
        work = root / f"minigit-{n}"
        shutil.copytree(source, work)
        samples["minigit_push"].append(timed([str(BIN / "minigit"), "init", "-q", f"trees-{n}"], work, env))
        clone = root / f"minigit-clone-{n}"
        samples["minigit_clone"].append(
            timed([str(BIN / "minigit"), "clone", "-q", f"trees-{n}", str(clone)], root, env)
        )
        samples["minigit_status_after_clone"].append(timed([str(BIN / "minigit"), "status"], clone, env))
        (clone / ws.INDEX_NAME).unlink(missing_ok=True)
        samples["minigit_status_cold"].append(timed([str(BIN / "minigit"), "status"], clone, env))
        samples["minigit_status_warm"].append(timed([str(BIN / "minigit"), "status"], clone, env))
        shutil.rmtree(work)
        shutil.rmtree(clone)
        console.print({key: round(values[-1], 2) for key, values in samples.items() if values})

        console.print(f"round {n + 1}: git")
        work, bare, clone = root / f"git-{n}", root / f"git-{n}.git", root / f"git-clone-{n}"
        shutil.copytree(source, work)
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True, env=git_env)
        started = time.perf_counter()
        for command in (
            ["git", "init", "-q", "-b", "main"],
            ["git", "add", "-A"],
            ["git", "commit", "-q", "-m", "trees"],
        ):
            subprocess.run(command, cwd=work, check=True, env=git_env, capture_output=True)
        push_s = timed(["git", "push", "-q", str(bare), "main"], work, git_env)
        samples["git_add_commit_push"].append(time.perf_counter() - started)
        samples["git_push"].append(push_s)
        samples["git_clone"].append(timed(["git", "clone", "-q", "--no-local", str(bare), str(clone)], root, git_env))
        samples["git_status"].append(timed(["git", "status", "--porcelain"], clone, git_env))
        console.print({key: round(values[-1], 2) for key, values in samples.items() if key.startswith("git")})
        for path in (work, bare, clone):
            shutil.rmtree(path, ignore_errors=True)  # (git's gc --auto may still be removing loose objects)
    return {"files": files, **{key: median(values) for key, values in samples.items()}}


ROWS = [
    ("push (first, whole tree)", "minigit_push", "git_add_commit_push", "minigit init / git add+commit+push"),
    ("clone", "minigit_clone", "git_clone", "git clone --no-local"),
    ("status right after clone", "minigit_status_after_clone", "git_status", ""),
    ("status, no stat cache", "minigit_status_cold", "git_status", ""),
    ("status, stat cache", "minigit_status_warm", "git_status", ""),
]


def report(results: dict) -> None:
    m = results["machine"]
    print(f"{m['date']}: {m['cpus']} x {m['cpu']}, Python {m['python']}, minigit {m['minigit']}, {m['git']}")
    figures = results["trees"]
    table = Table(title=f"{figures['files']} small files (median of {figures['minigit_push']['n']} rounds)")
    for column in ("operation", "minigit", "git", "minigit / git"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for label, mine, theirs, _ in ROWS:
        a, b = figures[mine]["median_s"], figures[theirs]["median_s"]
        table.add_row(label, f"{a:.2f} s", f"{b:.2f} s", f"{a / b:.1f}x")
    table.add_row("(git push alone)", "", f"{figures['git_push']['median_s']:.2f} s", "")
    Console(width=120).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where to make the trees (default: a temporary dir)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="minigit-bench-trees-", dir=args.dir))
    use_own_config_dir(root)
    kafka_dir = root / "kafka"
    results: dict = {"machine": machine()}
    bootstrap = args.bootstrap
    replicas = None
    try:
        if bootstrap is None:
            bootstrap = start_kafka(kafka_dir)
        replicas = Replicas(bootstrap, f"trees{int(time.time())}-", root / "server")
        replicas.start_all()
        replicas.serving("warmup")
        replicas.register_user()
        results["trees"] = bench_trees(replicas, root, args.files, args.rounds)
    finally:
        if replicas is not None:
            replicas.stop()
        if args.bootstrap is None and kafka_dir.exists():
            stop = [str(BIN / "minigit-server"), "kafka", "stop", "--data-dir", str(kafka_dir)]
            subprocess.run(stop, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    report(results)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"trees-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
