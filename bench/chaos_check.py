"""The checker of a chaos run (bench/chaos.py): pure functions over what the run
recorded, no Kafka, no disk.

Inputs:

* the history: Jepsen-style entries ``{process, type, f, value, time}``, type
  ``invoke`` then one of ``ok`` (acknowledged), ``fail`` (definitely not applied)
  or ``info`` (unknown: may or may not have been applied, now or later). A
  process runs one operation at a time, so an invoke pairs with the next entry
  of the same process. Entries of the ``nemesis`` process are faults
  (``value.phase`` ``start`` / ``end``).
* what each replica's store holds after the run, per repository: the head and
  every version row (version, tree, author, message, time, request id) with the
  content of the files that version changed against the one before
  (``changed``: path -> text, None for a deleted file).
* the newest entries of each repository's log as the service answered them.
* the exit codes of ``minigit-server verify`` after healing.
* optionally, how to check a version row's proof of authorship (its author's
  signed request; a callable, so that this module stays pure).

Writes carry a unique token as their message, and the files they write
(``value.writes``), so a version is traced to exactly one operation.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

WRITES = ("init", "push")
READS = ("pull", "clone")
NEMESIS = "nemesis"
FINAL = "final"  # the process of the reads done after healing
REPLICA_EXIT = "replica-exit"  # a replica that exited on its own (not a fault the nemesis injected)


@dataclass
class Op:
    """One operation: its invocation and how it ended (``info`` if it never did)."""

    process: str
    f: str
    type: str  # ok | fail | info
    invoke: dict
    result: dict
    invoked_at: float
    completed_at: float | None  # None: the run ended with it still open

    @property
    def repo(self) -> str:
        return self.invoke["repo"]

    @property
    def token(self) -> str | None:
        return self.invoke.get("token")

    @property
    def latency(self) -> float | None:
        return None if self.completed_at is None else self.completed_at - self.invoked_at


@dataclass
class Fault:
    kind: str
    target: str
    started_at: float
    ended_at: float | None
    detail: dict = field(default_factory=dict)


def pair_ops(history: Iterable[Mapping]) -> list[Op]:
    """Operations in invocation order. An invoke that never completed is unknown."""
    open_ops: dict[str, Op] = {}
    ops: list[Op] = []
    for entry in history:
        process = str(entry["process"])
        if process == NEMESIS:
            continue
        if entry["type"] == "invoke":
            if process in open_ops:
                raise ValueError(f"process {process} invoked {entry['f']} with an operation still open")
            op = Op(process, entry["f"], "info", dict(entry["value"]), {}, entry["time"], None)
            open_ops[process] = op
            ops.append(op)
        else:
            op = open_ops.pop(process, None)
            if op is None or op.f != entry["f"]:
                raise ValueError(f"process {process}: {entry['type']} {entry['f']} without its invoke")
            op.type, op.result, op.completed_at = entry["type"], dict(entry["value"]), entry["time"]
    return ops


def pair_faults(history: Iterable[Mapping]) -> list[Fault]:
    faults: list[Fault] = []
    open_faults: dict[tuple[str, str], Fault] = {}
    for entry in history:
        if str(entry["process"]) != NEMESIS:
            continue
        value = entry["value"]
        key = (entry["f"], str(value.get("target")))
        if value["phase"] == "start":
            fault = Fault(entry["f"], str(value.get("target")), entry["time"], None, dict(value))
            faults.append(fault)
            open_faults[key] = fault
        elif (fault := open_faults.pop(key, None)) is not None:
            fault.ended_at = entry["time"]
    return faults


# ---------------------------------------------------------------- figures


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Gap:
    seconds: float
    start: float
    end: float


def longest_unavailability(ops: list[Op], fs: tuple[str, ...] | None = None) -> Gap | None:
    """The longest interval with no acknowledged operation (of kinds ``fs``, all by
    default) while one of them was being attempted. It starts at the first invoke
    or an ok and ends at the next ok or the last completion."""
    chosen = [op for op in ops if fs is None or op.f in fs]
    if not chosen:
        return None
    first = min(op.invoked_at for op in chosen)
    last = max(op.completed_at if op.completed_at is not None else op.invoked_at for op in chosen)
    marks = [first, *sorted(op.completed_at for op in chosen if op.type == "ok"), last]
    # An op was being attempted during (a, b) if invoked before b and completed after a (or never).
    best: Gap | None = None
    for a, b in itertools.pairwise(marks):
        if b - a <= (best.seconds if best else 0):
            continue
        attempted = any(op.invoked_at < b and (op.completed_at is None or op.completed_at > a) for op in chosen)
        if attempted:
            best = Gap(b - a, a, b)
    return best


def overlaps_fault(op: Op, faults: list[Fault]) -> bool:
    """Whether ``op`` was in flight at some moment of a fault (from its start to its end)."""
    end = op.completed_at if op.completed_at is not None else math.inf
    return any(
        f.started_at <= end and (f.ended_at if f.ended_at is not None else math.inf) >= op.invoked_at for f in faults
    )


def latency_figures(ops: list[Op]) -> dict:
    """p50/p99 of acknowledged operations, in ms, overall and per kind."""
    figures = {}
    groups = {"all": [op for op in ops if op.type == "ok"]}
    for f in (*WRITES, *READS):
        groups[f] = [op for op in groups["all"] if op.f == f]
    for name, group in groups.items():
        values = [op.latency * 1000 for op in group if op.latency is not None]
        if values:
            figures[name] = {"n": len(values), "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}
    return figures


# ---------------------------------------------------------------- the checks


@dataclass
class Findings:
    """What the checker found. Every list holds one human-readable line per case."""

    lost: list[str] = field(default_factory=list)  # acknowledged write missing from history
    duplicated: list[str] = field(default_factory=list)  # a write in history more than once
    wrong_version: list[str] = field(default_factory=list)  # acknowledged at v, found at another
    wrong_content: list[str] = field(default_factory=list)  # tree or changed files not what was written
    failed_applied: list[str] = field(default_factory=list)  # a definite failure that is in history
    unexplained: list[str] = field(default_factory=list)  # a version no operation wrote
    gaps: list[str] = field(default_factory=list)  # versions not exactly 1..head
    divergence: list[str] = field(default_factory=list)  # replicas that do not hold the same history
    stale_reads: list[str] = field(default_factory=list)  # a read older than an earlier acknowledged write
    bad_reads: list[str] = field(default_factory=list)  # a read whose version/tree is not in history
    order: list[str] = field(default_factory=list)  # writes acknowledged out of real-time order
    final_clone: list[str] = field(default_factory=list)
    service_log: list[str] = field(default_factory=list)  # the service's log answer differs from the stores
    verify: list[str] = field(default_factory=list)
    authorship: list[str] = field(default_factory=list)  # a version whose author's signature does not hold
    notes: list[str] = field(default_factory=list)  # what was checked, for the report; not failures

    FAILURES = (
        "lost",
        "duplicated",
        "wrong_version",
        "wrong_content",
        "failed_applied",
        "unexplained",
        "gaps",
        "divergence",
        "stale_reads",
        "bad_reads",
        "order",
        "final_clone",
        "service_log",
        "verify",
        "authorship",
    )

    @property
    def ok(self) -> bool:
        return not any(getattr(self, name) for name in self.FAILURES)

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in self.FAILURES}


def row_key(row: Mapping) -> tuple:
    """What two replicas must agree on for a version: the row and its content."""
    changed = tuple(sorted((row.get("changed") or {}).items(), key=lambda item: item[0]))
    return (row["version"], row["tree"], row["author"], row["message"], row["time_ms"], row["request_id"], changed)


def check_divergence(stores: Mapping[str, Mapping[str, Mapping]], findings: Findings) -> None:
    """Every replica holds the same repositories, heads, version rows and content."""
    replicas = sorted(stores)
    if len(replicas) < 2:
        findings.divergence.append(f"only {len(replicas)} replica stores could be read")
        return
    reference = replicas[0]
    for other in replicas[1:]:
        a, b = stores[reference], stores[other]
        for repo in sorted(set(a) | set(b)):
            if repo not in a or repo not in b:
                holder = reference if repo in a else other
                findings.divergence.append(f"{repo}: only replica {holder} of {reference},{other} has it")
                continue
            if a[repo]["head"] != b[repo]["head"]:
                findings.divergence.append(
                    f"{repo}: head {a[repo]['head']} on replica {reference}, {b[repo]['head']} on replica {other}"
                )
            rows_a = {r["version"]: row_key(r) for r in a[repo]["versions"]}
            rows_b = {r["version"]: row_key(r) for r in b[repo]["versions"]}
            differing = sorted(v for v in set(rows_a) | set(rows_b) if rows_a.get(v) != rows_b.get(v))
            if differing:
                findings.divergence.append(
                    f"{repo}: replicas {reference} and {other} differ at {len(differing)} versions, "
                    f"first {differing[0]}"
                )


def check_chain(replica: str, repo: str, state: Mapping, findings: Findings) -> None:
    versions = sorted(r["version"] for r in state["versions"])
    expected = list(range(1, state["head"] + 1))
    if versions != expected:
        missing = sorted(set(expected) - set(versions))
        extra = sorted(set(versions) - set(expected))
        repeated = sorted(v for v, n in Counter(versions).items() if n > 1)
        findings.gaps.append(
            f"replica {replica} {repo}: head {state['head']}, versions missing {missing[:10]}, "
            f"beyond the head {extra[:10]}, repeated {repeated[:10]}"
        )


def check_writes(replica: str, repo: str, state: Mapping, writes: list[Op], findings: Findings) -> None:
    """Trace every version to the write whose token is its message, and every
    write to the versions that carry its token."""
    by_token = {op.token: op for op in writes}
    where: dict[str, list[dict]] = defaultdict(list)
    for row in state["versions"]:
        if row["message"] in by_token:
            where[row["message"]].append(row)
        else:
            findings.unexplained.append(
                f"replica {replica} {repo} v{row['version']}: message {row['message']!r} is no write's token"
            )
    for op in writes:
        rows = where.get(op.token, [])
        label = f"replica {replica} {repo} {op.f} {op.token} ({op.process}, {op.type})"
        if len(rows) > 1:
            findings.duplicated.append(f"{label}: at versions {[r['version'] for r in rows]}")
        if op.type == "ok" and not rows:
            findings.lost.append(f"{label}: acknowledged as v{op.result.get('version')}, not in history")
        if op.type == "fail" and rows:
            findings.failed_applied.append(
                f"{label}: failed ({op.result.get('error')}) but in history at v{rows[0]['version']}"
            )
        for row in rows:
            if op.type == "ok" and row["version"] != op.result.get("version"):
                findings.wrong_version.append(
                    f"{label}: acknowledged as v{op.result.get('version')}, is v{row['version']}"
                )
            if op.type == "ok" and op.result.get("tree") and row["tree"] != op.result["tree"]:
                findings.wrong_content.append(
                    f"{label}: tree {row['tree'][:12]}, acknowledged {op.result['tree'][:12]}"
                )
            if op.f == "push" and row.get("changed") != op.invoke["writes"]:
                findings.wrong_content.append(f"{label}: v{row['version']} changed {row.get('changed')!r}")
            if op.f == "init" and row["version"] != 1:
                findings.wrong_version.append(f"{label}: an init at v{row['version']}")


def check_order(repo: str, writes: list[Op], findings: Findings) -> None:
    """An acknowledged write that completed before another was invoked holds a lower version."""
    acknowledged = sorted((op for op in writes if op.type == "ok"), key=lambda op: op.completed_at)
    by_invoke = sorted((op for op in writes if op.type == "ok"), key=lambda op: op.invoked_at)
    highest, i = None, 0
    for op in by_invoke:
        while i < len(acknowledged) and acknowledged[i].completed_at < op.invoked_at:
            if highest is None or acknowledged[i].result["version"] > highest.result["version"]:
                highest = acknowledged[i]
            i += 1
        if highest is not None and op.result["version"] <= highest.result["version"]:
            findings.order.append(
                f"{repo}: {op.token} acknowledged as v{op.result['version']} though {highest.token} "
                f"was acknowledged as v{highest.result['version']} before it was invoked"
            )


def check_reads(repo: str, state: Mapping, writes: list[Op], reads: list[Op], findings: Findings) -> None:
    """A read returns a version of the history with that version's tree, no older
    than any write acknowledged before the read began, and not written after it ended."""
    rows = {r["version"]: r for r in state["versions"]}
    writer_of = {op.token: op for op in writes}
    acknowledged = sorted((op for op in writes if op.type == "ok"), key=lambda op: op.completed_at)
    i, highest = 0, 0
    for op in sorted((r for r in reads if r.type == "ok"), key=lambda r: r.invoked_at):
        while i < len(acknowledged) and acknowledged[i].completed_at < op.invoked_at:
            highest = max(highest, acknowledged[i].result["version"])
            i += 1
        version, label = op.result.get("version"), f"{repo} {op.f} by {op.process} at t={op.invoked_at:.3f}"
        row = rows.get(version)
        if row is None:
            findings.bad_reads.append(f"{label}: read v{version}, which is not in history")
            continue
        if op.result.get("tree") != row["tree"]:
            findings.bad_reads.append(f"{label}: v{version} read as tree {str(op.result.get('tree'))[:12]}")
        if version < highest:
            findings.stale_reads.append(f"{label}: read v{version} after v{highest} was acknowledged")
        writer = writer_of.get(row["message"])
        if writer is not None and op.completed_at is not None and writer.invoked_at > op.completed_at:
            findings.bad_reads.append(f"{label}: read v{version}, written by an operation invoked after the read")


def check_final_clones(repo: str, state: Mapping, finals: list[Op], writes: list[Op], findings: Findings) -> None:
    clones = [op for op in finals if op.f == "clone" and op.type == "ok"]
    if not clones:
        findings.final_clone.append(f"{repo}: no final clone succeeded")
        return
    head = state["head"]
    row = next((r for r in state["versions"] if r["version"] == head), None)
    for op in clones:
        if op.result.get("version") != head or row is None or op.result.get("tree") != row["tree"]:
            findings.final_clone.append(
                f"{repo}: final clone v{op.result.get('version')} tree {str(op.result.get('tree'))[:12]}, "
                f"head v{head} tree {row['tree'][:12] if row else None}"
            )
    last = next((w for w in writes if row is not None and w.token == row["message"]), None)
    how = "acknowledged" if last and last.type == "ok" else "applied, not acknowledged"
    findings.notes.append(f"{repo}: the final clone is head v{head}, the last applied write ({how})")


def check_service_log(repo: str, state: Mapping, entries: list[Mapping], findings: Findings) -> None:
    rows = {r["version"]: r for r in state["versions"]}
    for entry in entries:
        row = rows.get(entry["version"])
        fields = ("author", "message", "time_ms")
        if row is None or any(row[name] != entry[name] for name in fields):
            findings.service_log.append(f"{repo}: log entry v{entry['version']} {dict(entry)} differs from the stores")
    if entries and max(e["version"] for e in entries) != state["head"]:
        findings.service_log.append(f"{repo}: the service's newest log entry is not head v{state['head']}")


def check_authorship(
    stores: Mapping[str, Mapping[str, Mapping]], proof: Callable[[Mapping], str | None], findings: Findings
) -> None:
    """Every version, on every replica, carries its author's proof of authorship."""
    checked = 0
    for replica in sorted(stores):
        for repo, state in sorted(stores[replica].items()):
            for row in state["versions"]:
                checked += 1
                if (problem := proof(row)) is not None:
                    findings.authorship.append(
                        f"replica {replica} {repo} v{row['version']} by {row['author']}: {problem}"
                    )
    findings.notes.append(f"proof of authorship checked on {checked} version rows")


def check_run(
    history: list[Mapping],
    stores: Mapping[str, Mapping[str, Mapping]],
    service_logs: Mapping[str, list[Mapping]] | None = None,
    verify_results: list[Mapping] | None = None,
    authorship: Callable[[Mapping], str | None] | None = None,
) -> Findings:
    """Every check over one run. ``stores``: replica -> repository -> {head, versions}.
    ``authorship``: why a version row's proof of authorship does not hold (None: it
    does), checked on every row of every replica."""
    findings = Findings()
    ops = pair_ops(history)
    workload = [op for op in ops if op.process != FINAL]
    finals = [op for op in ops if op.process == FINAL]
    check_divergence(stores, findings)
    repos = sorted({op.repo for op in ops} | {repo for store in stores.values() for repo in store})
    for repo in repos:
        writes = [op for op in workload if op.f in WRITES and op.repo == repo]
        reads = [op for op in workload if op.f in READS and op.repo == repo]
        for replica in sorted(stores):
            state = stores[replica].get(repo)
            if state is None:
                if any(op.type == "ok" for op in writes):
                    findings.lost.append(f"replica {replica}: repository {repo} is missing")
                continue
            check_chain(replica, repo, state, findings)
            check_writes(replica, repo, state, writes, findings)
        reference = next((stores[r][repo] for r in sorted(stores) if repo in stores[r]), None)
        if reference is None:
            continue
        check_order(repo, writes, findings)
        check_reads(repo, reference, writes, reads, findings)
        check_final_clones(repo, reference, [op for op in finals if op.repo == repo], writes, findings)
        if service_logs is not None:
            check_service_log(repo, reference, service_logs.get(repo, []), findings)
    if authorship is not None:
        check_authorship(stores, authorship, findings)
    for result in verify_results or []:
        if result["exit_code"] != 0:
            findings.verify.append(f"{' '.join(result['command'])} exited {result['exit_code']}: {result['output']}")
    return findings


def summarize(history: list[Mapping], stores: Mapping[str, Mapping[str, Mapping]], findings: Findings) -> dict:
    """The figures of a run: operations, faults, outcomes of unknown writes,
    unavailability and latency, and what the checker found."""
    ops = pair_ops(history)
    workload = [op for op in ops if op.process != FINAL]
    faults = pair_faults(history)
    reference = stores[sorted(stores)[0]] if stores else {}
    tokens_in_history = {row["message"] for state in reference.values() for row in state["versions"]}
    unknown_writes = [op for op in workload if op.f in WRITES and op.type == "info"]
    applied = sum(1 for op in unknown_writes if op.token in tokens_in_history)
    outage = longest_unavailability(workload)
    write_outage = longest_unavailability(workload, WRITES)

    def gap_json(gap: Gap | None) -> dict | None:
        if gap is None:
            return None
        during = sorted(
            {f.kind for f in faults if f.started_at < gap.end and (f.ended_at is None or f.ended_at > gap.start)}
        )
        return {"seconds": gap.seconds, "start": gap.start, "end": gap.end, "faults_during": during}

    return {
        "ops": len(workload),
        "by_type": dict(Counter(op.type for op in workload)),
        "by_f": {f: dict(Counter(op.type for op in workload if op.f == f)) for f in (*WRITES, *READS)},
        "faults": dict(Counter(f.kind for f in faults if f.kind != REPLICA_EXIT)),
        "unplanned_replica_exits": sum(1 for f in faults if f.kind == REPLICA_EXIT),
        "unknown_writes": {
            "total": len(unknown_writes),
            "applied": applied,
            "not_applied": len(unknown_writes) - applied,
        },
        "lost": len(findings.lost),
        "duplicated": len(findings.duplicated),
        "longest_unavailability": gap_json(outage),
        "longest_write_unavailability": gap_json(write_outage),
        "latency_ok": latency_figures(workload),
        # Split by whether an operation overlapped a fault window: the cost of faults apart.
        "latency_ok_outside_faults": latency_figures([op for op in workload if not overlaps_fault(op, faults)]),
        "latency_ok_during_faults": latency_figures([op for op in workload if overlaps_fault(op, faults)]),
        "versions": {repo: state["head"] for repo, state in reference.items()},
        "findings": findings.counts(),
        "ok": findings.ok,
    }
