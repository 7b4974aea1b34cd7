"""`minigit diff` against `git diff` on large trees, on the same files and edits, in the same run.

    .venv/bin/python bench/diff.py [--rounds 3] [--big-files 2000] [--big-mib 50] [--small-files 20000]
                                   [--bootstrap HOST:PORT] [--dir DIR]

Why the figure includes the service: minigit keeps no second copy of the working
files (a clone of 200 MiB takes 200 MiB), so `minigit diff` with a changed file
fetches the local version's bytes of the changed files from the service, by hash
(docs/everyday.md, "Seeing what changed"; `versions.diff_workdir`). Every
`minigit diff` below therefore makes one request through Kafka and waits for its
answer (the version's tree and those blobs), where `git diff` reads its own object
store. `--stat` and `--name-status` fetch the same (they are computed from the
same diff). `status` is local in both tools and is shown for reference.

Starts a local Kafka (unless --bootstrap is given, 127.0.0.1 only) and three replica
processes as bench/bench.py does, with the run's own MINIGIT_CONFIG_DIR. Two trees
of text files are made in a temporary directory: ``big`` (--big-files files,
--big-mib MiB in all, source-like lines) and ``small`` (--small-files files of about
500 bytes, 100 to a folder). Each is pushed with `minigit init` (CLI, private: the
default) and committed to git in the same directory (git ignores ``.minigit*``
through ``.git/info/exclude``; minigit never tracks ``.git``). The run then waits
until every replica has applied that version (the wait is reported: `init` returns
once the version is decided, and a replica still applying it answers a read only
after it has, so a diff right after a large init waits for that; 11-30 s here for
20,000 files on a shared machine). Then k files are edited (k = 10, then k = 200, the
10 among them; 3 lines changed in each), one `minigit status` and one `git status`
refresh both stat caches as a user's would, and each command is run --rounds times
(median and best kept):

* `minigit diff`, `minigit diff --stat`, `minigit diff --name-status` (CLI, output
  to /dev/null) and the same three `git diff` commands;
* `minigit status` and `git status`; `minigit --version` (interpreter start-up and imports alone);
* `versions.diff_workdir` in-process, split into the scan of the working files,
  the request/reply through Kafka, the text diff, and the rest (connection set-up
  and close, keys); and the bytes: the base sizes of the changed files (what the
  diff needs) and what the answer carried in all (the version's tree and the blobs).

Results are also written to bench/results/diff-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

sys.path.insert(0, str(Path(__file__).parent))
import status

import bench
from minigit.client import operations, versions
from minigit.client.exchange import Observer
from minigit.config import ServerFlags
from minigit_server.bus import Bus
from minigit_server.devkafka.broker import KAFKA_VERSION
from minigit_server.replica import store_path
from minigit_server.store import SqliteStore

BIN = Path(sys.executable).parent
console = Console(stderr=True)
NAMES = ["value", "count", "index", "buffer", "result", "config", "offset", "length", "items", "total", "state", "node"]
CALLS = ["compute", "parse", "lookup", "merge", "encode", "check", "render", "resolve", "update", "flush"]
EDITS = (10, 200)
COMMANDS = {
    "minigit_diff": "minigit diff",
    "git_diff": "git diff",
    "minigit_stat": "minigit diff --stat",
    "git_stat": "git diff --stat",
    "minigit_name_status": "minigit diff --name-status",
    "git_name_status": "git diff --name-status",
    "minigit_status": "minigit status",
    "git_status": "git status",
    "minigit_version": "minigit --version (start-up)",
}


# ---------------------------------------------------------------- trees


def source_text(n: int, size: int) -> str:
    """About ``size`` bytes of source-like lines, different for every ``n``."""
    rng = random.Random(n)
    lines = [f'"""Module {n}."""\n', "\n"]
    total = sum(map(len, lines))
    i = 0
    while total < size:
        if i % 12 == 0:
            line = f"\ndef {rng.choice(CALLS)}_{n}_{i}({rng.choice(NAMES)}, {rng.choice(NAMES)}=None):\n"
        elif i % 12 == 11:
            line = f"    return {rng.choice(NAMES)}_{i}\n"
        else:
            a, b, call = rng.choice(NAMES), rng.choice(NAMES), rng.choice(CALLS)
            line = f"    {a}_{i} = {call}({b}, {rng.randrange(10_000)}, key='{a}{n}')  # {b} {i}\n"
        lines.append(line)
        total += len(line)
        i += 1
    return "".join(lines)


def edited(text: str) -> str:
    """``text`` with 3 of its lines changed (a quarter, half and three quarters down)."""
    lines = text.splitlines(keepends=True)
    for at in (len(lines) // 4, len(lines) // 2, 3 * len(lines) // 4):
        lines[at] = lines[at].rstrip("\n") + "  # edited\n"
    return "".join(lines)


class Tree:
    """``files`` files of ``size`` bytes under ``root``; ``path(n)`` and ``text(n)`` make file n again."""

    def __init__(self, root: Path, files: int, size: int, path: Callable[[int], str]) -> None:
        self.root, self.files, self.size, self.path = root, files, size, path

    def text(self, n: int) -> str:
        return source_text(n, self.size)

    def make(self) -> int:
        total = 0
        for n in range(self.files):
            target = self.root / self.path(n)
            target.parent.mkdir(parents=True, exist_ok=True)
            data = self.text(n).encode()
            target.write_bytes(data)
            total += len(data)
        return total

    def edit(self, k: int) -> tuple[list[int], int]:
        """Edit ``k`` files spread over the tree (every files/k-th); their base bytes in all."""
        chosen = [i * self.files // k for i in range(k)]
        base = 0
        for n in chosen:
            text = self.text(n)
            base += len(text.encode())
            (self.root / self.path(n)).write_text(edited(text))
        return chosen, base


def big_tree(root: Path, files: int, mib: int) -> Tree:
    return Tree(root, files, mib * 1024 * 1024 // files, lambda n: f"src/pkg{n // 100:03d}/module{n:05d}.py")


def small_tree(root: Path, files: int) -> Tree:
    return Tree(root, files, 500, lambda n: f"m{n // 10_000:02d}/d{n // 100 % 100:02d}/file{n:06d}.py")


# ---------------------------------------------------------------- setup


def minigit_env(bootstrap: str) -> dict[str, str]:
    # a long timeout only spares the run a failure on a loaded machine: an answer's time is what it is
    return {**os.environ, "MINIGIT_USER": "bench", "MINIGIT_BOOTSTRAP": bootstrap, "MINIGIT_TIMEOUT": "600"}


def git_env(home: Path) -> dict[str, str]:
    return {**os.environ, **status.GIT_ENV, "HOME": str(home), "GIT_PAGER": "cat"}


def wait_applied(replicas: bench.Replicas, timeout: float = 1800.0) -> float:
    """Seconds until every replica's store has applied the whole log (as bench/chaos.py checks it).
    `minigit init` returns once its version is decided; a replica still applying it answers a
    read only after it has (the read barrier): the first diff would wait for that."""
    started = time.monotonic()
    bus = Bus(replicas.settings, client_id="bench-diff")
    try:
        while time.monotonic() - started < timeout:
            ends = {k: v for k, v in bus.log_end_offsets().items() if v}
            done = True
            for replica_id in replicas.processes:
                store = SqliteStore(store_path(replicas.data_dir, replica_id))
                try:
                    with store.snapshot():
                        done = done and {k: v for k, v in store.applied_offsets().items() if v} == ends
                finally:
                    store.close()
            if done:
                return time.monotonic() - started
            time.sleep(0.5)
        raise RuntimeError(f"the replicas had not applied the whole log within {timeout:g} s")
    finally:
        bus.close()


def init_both(root: Path, name: str, bootstrap: str, namespace: str) -> dict:
    """`minigit init` (CLI) and git init/add/commit of the files under ``root``; their times."""
    started = time.perf_counter()
    subprocess.run(
        [str(BIN / "minigit"), "init", name, "-q", "--namespace", namespace, "--timeout", "900"],
        cwd=root,
        env=minigit_env(bootstrap),
        check=True,
    )
    minigit_s = time.perf_counter() - started
    env = git_env(root.parent)
    started = time.perf_counter()
    subprocess.run(["git", "init", "-q"], cwd=root, env=env, check=True, capture_output=True)
    with open(root / ".git" / "info" / "exclude", "a", encoding="utf-8") as exclude:
        exclude.write(".minigit*\n")
    for command in (["git", "add", "-A"], ["git", "commit", "-q", "-m", "bench"]):
        subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)
    return {"minigit_init_s": minigit_s, "git_add_commit_s": time.perf_counter() - started}


# ---------------------------------------------------------------- measures


class Downloads(Observer):
    def __init__(self) -> None:
        self.total_bytes, self.blobs = 0, 0

    def downloading(self, total_bytes: int, blobs: int) -> None:
        self.total_bytes, self.blobs = total_bytes, blobs


def in_process(root: Path, options: operations.ClientOptions, rounds: int, changed: int) -> dict:
    """``versions.diff_workdir`` in-process, split into its parts (seconds; median of ``rounds``)."""
    parts: dict[str, list[float]] = {"total": [], "scan": [], "request": [], "textdiff": []}
    answer = Downloads()
    open_workdir, fetch_version, diff_entries = operations.open_workdir, operations.fetch_version, versions.diff_entries

    def timing(name: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                parts[name][-1] += time.perf_counter() - started

        return timed

    def fetch(*args, **kwargs):
        return fetch_version(*args, **{**kwargs, "observer": answer})

    operations.open_workdir = timing("scan", open_workdir)
    operations.fetch_version = timing("request", fetch)
    versions.diff_entries = timing("textdiff", diff_entries)
    try:
        for _ in range(rounds):
            for samples in parts.values():
                samples.append(0.0)
            started = time.perf_counter()
            result = versions.diff_workdir(root, options)
            parts["total"][-1] = time.perf_counter() - started
            assert len(result.files) == changed, (len(result.files), changed)
    finally:
        operations.open_workdir, operations.fetch_version, versions.diff_entries = (
            open_workdir,
            fetch_version,
            diff_entries,
        )
    figures = {name: statistics.median(samples) for name, samples in parts.items()}
    figures["other"] = figures["total"] - figures["scan"] - figures["request"] - figures["textdiff"]
    figures["best_total"] = min(parts["total"])
    return {"seconds": figures, "answer_bytes": answer.total_bytes, "answer_blobs": answer.blobs}


def bench_edits(root: Path, bootstrap: str, namespace: str, rounds: int, changed: int) -> dict:
    menv, genv = minigit_env(bootstrap), git_env(root.parent)
    devnull = subprocess.DEVNULL

    def cli(*args: str) -> Callable[[], None]:
        def run() -> None:
            subprocess.run([str(BIN / "minigit"), *args], cwd=root, env=menv, check=True, stdout=devnull)

        return run

    def git(*args: str) -> Callable[[], None]:
        def run() -> None:
            # `git diff` exits 0 with changes unless --exit-code; output to /dev/null as minigit's
            subprocess.run(["git", *args], cwd=root, env=genv, check=True, stdout=devnull)

        return run

    runs = {
        "minigit_diff": cli("diff"),
        "git_diff": git("diff"),
        "minigit_stat": cli("diff", "--stat"),
        "git_stat": git("diff", "--stat"),
        "minigit_name_status": cli("diff", "--name-status"),
        "git_name_status": git("diff", "--name-status"),
        "minigit_status": cli("status"),
        "git_status": git("status"),
        "minigit_version": cli("--version"),
    }

    def nothing() -> None:
        pass

    figures = {key: status.measure(rounds, nothing, run) for key, run in runs.items()}
    options = operations.ClientOptions("bench", ServerFlags(bootstrap, namespace), timeout=120)
    figures["in_process"] = in_process(root, options, rounds, changed)
    return figures


def bench_tree(tree: Tree, name: str, replicas: bench.Replicas, rounds: int) -> dict:
    bootstrap, namespace = replicas.bootstrap, replicas.namespace
    console.print(f"making {name} in {tree.root}")
    total = tree.make()
    console.print(f"minigit init and git commit of {name}")
    results: dict = {
        "files": tree.files,
        "bytes": total,
        **init_both(tree.root, f"diff-{tree.root.parent.name}", bootstrap, namespace),
    }
    results["replicas_applied_after_init_s"] = wait_applied(replicas)
    results["edits"] = {}
    for k in EDITS:
        chosen, base = tree.edit(k)
        time.sleep(2)  # older than the stat caches written next: no racily clean entry for either tool
        env = minigit_env(bootstrap)
        subprocess.run([str(BIN / "minigit"), "status"], cwd=tree.root, env=env, check=True, capture_output=True)
        subprocess.run(["git", "status"], cwd=tree.root, env=git_env(tree.root.parent), check=True, capture_output=True)
        console.print(f"measuring {name}, {k} files edited")
        figures = bench_edits(tree.root, bootstrap, namespace, rounds, len(chosen))
        figures["base_bytes_of_changed"] = base
        results["edits"][str(k)] = figures
    return results


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="use this broker (127.0.0.1) instead of starting one")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each measure (median and best kept)")
    parser.add_argument("--big-files", type=int, default=2000, help="files in the tree of big text files")
    parser.add_argument("--big-mib", type=int, default=50, help="MiB in the tree of big text files")
    parser.add_argument("--small-files", type=int, default=20_000, help="files in the tree of small text files")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the trees (default: a temporary dir)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="minigit-bench-diff-", dir=args.dir))
    bench.use_own_config_dir(root)
    kafka_dir = root / "kafka"
    results: dict = {"machine": status.machine(), "trees": {}}
    results["machine"]["kafka"] = KAFKA_VERSION
    results["machine"]["load_average_before"] = os.getloadavg()
    replicas = None
    try:
        bootstrap = args.bootstrap or bench.start_kafka(kafka_dir)
        replicas = bench.Replicas(bootstrap, f"diff{int(time.time())}-", root / "server")
        replicas.start_all()
        replicas.serving("warmup")  # registers the user
        trees = {
            f"{args.big_files} files, {args.big_mib} MiB": big_tree(
                root / "big" / "work", args.big_files, args.big_mib
            ),
            f"{args.small_files} small files": small_tree(root / "small" / "work", args.small_files),
        }
        for name, tree in trees.items():
            tree.root.mkdir(parents=True)
            results["trees"][name] = bench_tree(tree, name, replicas, args.rounds)
            shutil.rmtree(tree.root.parent)
        results["machine"]["load_average_after"] = os.getloadavg()
    finally:
        if replicas is not None:
            replicas.stop()
        if args.bootstrap is None:
            subprocess.run(
                [str(BIN / "minigit-server"), "kafka", "stop", "--data-dir", str(kafka_dir)], capture_output=True
            )
        shutil.rmtree(root, ignore_errors=True)
    report(results)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"diff-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=1))


def seconds(figure: dict) -> str:
    return f"{figure['median_s']:.2f} s ({figure['best_s']:.2f})"


def report(results: dict) -> None:
    m = results["machine"]
    print(f"{m['date']}: {m['cpus']} x {m['cpu']}, {m['system']}")
    print(f"Python {m['python']}, minigit {m['minigit']}, {m['git']}, Kafka {m['kafka']}")
    load = ", ".join(f"{x:.1f}" for x in m["load_average_before"])
    print(f"load average before: {load}; after: {', '.join(f'{x:.1f}' for x in m.get('load_average_after', ()))}")
    columns = [(name, k) for name in results["trees"] for k in EDITS]
    table = Table("", *(f"{name}\n{k} edited" for name, k in columns))
    cells = {(name, k): results["trees"][name]["edits"][str(k)] for name, k in columns}
    for key, label in COMMANDS.items():
        table.add_row(label, *(seconds(cells[c][key]) for c in columns))
    parts = {
        "total": "in-process diff",
        "scan": "  scan of the files",
        "request": "  request/reply (Kafka)",
        "textdiff": "  text diff",
        "other": "  rest (connect, keys)",
    }
    for key, label in parts.items():
        table.add_row(label, *(f"{cells[c]['in_process']['seconds'][key]:.2f} s" for c in columns))
    table.add_row(
        "base bytes of the changed files", *(f"{cells[c]['base_bytes_of_changed'] / 1e6:.2f} MB" for c in columns)
    )
    table.add_row(
        "answer: tree + blobs",
        *(
            f"{cells[c]['in_process']['answer_bytes'] / 1e6:.2f} MB, {cells[c]['in_process']['answer_blobs']} objects"
            for c in columns
        ),
    )
    Console(width=160).print(table)
    print("median of the rounds (best in parentheses); CLI output to /dev/null")
    for name, tree in results["trees"].items():
        print(
            f"{name}: {tree['bytes'] / 2**20:.1f} MiB; minigit init (CLI) {tree['minigit_init_s']:.1f} s, "
            f"git init + add + commit {tree['git_add_commit_s']:.1f} s; "
            f"every replica applied it {tree['replicas_applied_after_init_s']:.1f} s after the init returned"
        )


if __name__ == "__main__":
    main()
