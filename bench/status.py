"""`minigit status` against `git status` on the same files, with and without the stat cache.

    .venv/bin/python bench/status.py [--small-files 100000] [--big-files 2000] [--big-mib 200] [--rounds 3]

No server and no network: status is local. Two trees are made in a temporary
directory: ``big`` (--big-mib MiB of random bytes in --big-files files) and
``small`` (--small-files files of about 100 bytes, 100 to a folder). Each becomes
a minigit working directory without any server (a ``.minigit`` written by
``workspace.write_metadata`` with the manifest of a scan) and a git repository
(git init, add, commit). Then, for each tree, it measures (median and best of --rounds):

* `minigit status` cold: no stat cache (``.minigit-index`` removed before each
  round: every file is hashed), in-process (``operations.read_status``: no
  interpreter start-up) and as a user runs it (the CLI, a new process);
* `minigit status` warm: the stat cache written by the previous status;
* `git status` on the same files (its index is warm after the commit).

The page cache is warm in every case (the files were just written and read):
"cold" means without a stat cache, not from disk. Results are also written to
bench/results/status-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

import minigit
from minigit.client import operations
from minigit.client import workspace as ws

BIN = Path(sys.executable).parent
console = Console(stderr=True)
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def make_big(root: Path, files: int, mib: int) -> None:
    size = mib * 1024 * 1024 // files
    for n in range(files):
        path = root / f"d{n // 100:03d}" / f"blob{n:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def make_small(root: Path, files: int) -> None:
    for n in range(files):
        path = root / f"m{n // 10_000:02d}" / f"d{n // 100 % 100:02d}" / f"file{n:06d}.txt"
        if n % 100 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"line {n}\n".encode() * 10)


def make_workdir(root: Path) -> None:
    """A minigit working directory at version 1, without a server: status is local."""
    manifest = ws.scan_workdir(root, {}, locked=False).manifest
    ws.write_metadata(root, ws.Metadata("bench", 1, "127.0.0.1:9", "", manifest))


def make_git(root: Path) -> None:
    env = {**os.environ, **GIT_ENV, "HOME": str(root.parent)}
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "bench"]):
        subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)


def measure(rounds: int, prepare: Callable[[], None], run: Callable[[], None]) -> dict:
    """The median and the best of ``rounds`` runs, in seconds (the best: least disturbed by other work)."""
    samples = []
    for _ in range(rounds):
        prepare()
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return {"median_s": statistics.median(samples), "best_s": min(samples), "n": rounds}


def bench_tree(root: Path, rounds: int) -> dict:
    index = root / ws.INDEX_NAME

    def no_index() -> None:
        index.unlink(missing_ok=True)

    def nothing() -> None:
        pass

    def in_process() -> None:
        assert operations.read_status(root).changes.empty

    def cli() -> None:
        subprocess.run([str(BIN / "minigit"), "status"], cwd=root, check=True, capture_output=True)

    def git() -> None:
        subprocess.run(["git", "status", "--porcelain"], cwd=root, check=True, capture_output=True)

    git()  # git refreshes its index once after the commit
    figures = {
        "minigit_in_process_cold": measure(rounds, no_index, in_process),
        "minigit_cli_cold": measure(rounds, no_index, cli),
    }
    in_process()  # the stat cache is written
    figures["minigit_in_process_warm"] = measure(rounds, nothing, in_process)
    figures["minigit_cli_warm"] = measure(rounds, nothing, cli)
    figures["git_status"] = measure(rounds, nothing, git)
    figures["index_bytes"] = index.stat().st_size
    return figures


def machine() -> dict:
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    git = subprocess.run(["git", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpu": model,
        "cpus": os.cpu_count(),
        "system": platform.platform(),
        "python": sys.version.split()[0],
        "minigit": minigit.__version__,
        "git": git,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-files", type=int, default=100_000, help="files in the tree of small files")
    parser.add_argument("--big-files", type=int, default=2000, help="files in the tree of big files")
    parser.add_argument("--big-mib", type=int, default=200, help="MiB in the tree of big files")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each measure (the median is kept)")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the trees (default: a temporary dir)")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="minigit-bench-status-", dir=args.dir))
    results: dict = {"machine": machine(), "trees": {}}
    filesystem = subprocess.run(["df", "-T", str(base)], capture_output=True, text=True).stdout.splitlines()[-1:]
    results["machine"]["filesystem"] = filesystem[0].split()[1] if filesystem else "?"
    try:
        trees = {
            f"{args.big_files} files, {args.big_mib} MiB": lambda root: make_big(root, args.big_files, args.big_mib),
            f"{args.small_files} small files": lambda root: make_small(root, args.small_files),
        }
        for number, (name, make) in enumerate(trees.items()):
            root = base / f"tree{number}" / "work"
            root.mkdir(parents=True)
            console.print(f"making {name} in {root}")
            make(root)
            make_git(root)
            make_workdir(root)
            console.print(f"measuring {name}")
            results["trees"][name] = bench_tree(root, args.rounds)
            shutil.rmtree(root.parent)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report(results)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"status-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=1))


def report(results: dict) -> None:
    m = results["machine"]
    print(f"{m['date']}: {m['cpus']} x {m['cpu']}, {m['system']}, {m['filesystem']}")
    print(f"Python {m['python']}, minigit {m['minigit']}, {m['git']}")
    columns = {
        "minigit_in_process_cold": "minigit cold in-process",
        "minigit_cli_cold": "minigit cold CLI",
        "minigit_in_process_warm": "minigit warm in-process",
        "minigit_cli_warm": "minigit warm CLI",
        "git_status": "git status",
    }
    table = Table("tree", *columns.values())
    keys = list(columns)
    for name, figures in results["trees"].items():
        table.add_row(name, *(f"{figures[key]['median_s']:.2f} s ({figures[key]['best_s']:.2f})" for key in keys))
    Console(width=140).print(table)
    print("median of the rounds (best in parentheses); cold: no stat cache; stat cache:", end=" ")
    print(", ".join(f"{figures['index_bytes'] / 1e6:.1f} MB" for figures in results["trees"].values()))


if __name__ == "__main__":
    main()
