"""The chaos run's checker (bench/chaos_check.py) on hand-made histories: a clean
run passes, and each kind of violation is caught."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import chaos_check
from chaos_check import Findings, check_run, longest_unavailability, pair_ops, percentile, summarize


class Recorder:
    """Builds a history: each op is an invoke and its completion, in time order."""

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.time = 0.0

    def add(self, process: str, type_: str, f: str, value: dict, at: float) -> None:
        self.entries.append(
            {"index": len(self.entries), "process": process, "type": type_, "f": f, "value": value, "time": at}
        )

    def op(self, process: str, f: str, invoke: dict, type_: str, result: dict, took: float = 0.1) -> None:
        self.add(process, "invoke", f, invoke, self.time)
        self.time += took
        self.add(process, type_, f, {"repo": invoke["repo"], **result}, self.time)
        self.time += 0.01

    def push(self, process: str, token: str, type_: str, **result: object) -> None:
        writes = {f"pushes/{process}.txt": f"r {token}\n"}
        self.op(process, "push", {"repo": "r", "token": token, "writes": writes}, type_, {"token": token, **result})

    def read(self, process: str, f: str, version: int, tree: str) -> None:
        self.op(process, f, {"repo": "r"}, "ok", {"version": version, "tree": tree})


def row(version: int, message: str, changed: dict, tree: str | None = None) -> dict:
    return {
        "version": version,
        "tree": tree or f"tree-{message}",
        "author": "chaos",
        "message": message,
        "time_ms": 1000 + version,
        "request_id": f"req-{message}",
        "changed": changed,
    }


def clean_run() -> tuple[Recorder, dict]:
    """init v1; w1-1 acknowledged v2; w2-1 rejected; w1-2 unknown but applied as v3;
    reads; a final clone of v3. Three replicas with the same store."""
    h = Recorder()
    h.op(
        "init",
        "init",
        {"repo": "r", "token": "init-r", "writes": {"README.txt": "hi\n"}},
        "ok",
        {"token": "init-r", "version": 1, "tree": "tree-init-r"},
    )
    h.push("w1", "w1-1", "ok", version=2, tree="tree-w1-1")
    h.push("w2", "w2-1", "fail", error="rejected", head=2)
    h.push("w1", "w1-2", "info", error="unreachable")
    h.read("w2", "pull", 3, "tree-w1-2")
    h.read("w3", "clone", 3, "tree-w1-2")
    h.add(chaos_check.NEMESIS, "info", "replica-kill", {"phase": "start", "target": "2"}, h.time)
    h.add(chaos_check.NEMESIS, "info", "replica-kill", {"phase": "end", "target": "2"}, h.time + 1)
    h.time += 2
    h.op(chaos_check.FINAL, "clone", {"repo": "r"}, "ok", {"version": 3, "tree": "tree-w1-2"})
    versions = [
        row(1, "init-r", {"README.txt": "hi\n"}),
        row(2, "w1-1", {"pushes/w1.txt": "r w1-1\n"}),
        row(3, "w1-2", {"pushes/w1.txt": "r w1-2\n"}),
    ]
    store = {"r": {"head": 3, "versions": versions}}
    return h, {replica: copy.deepcopy(store) for replica in ("1", "2", "3")}


def service_log(stores: dict) -> dict:
    rows = stores["1"]["r"]["versions"]
    return {"r": [{k: r[k] for k in ("version", "author", "message", "time_ms")} for r in reversed(rows)]}


def check(h: Recorder, stores: dict, verify_codes: tuple[int, ...] = (0,)) -> Findings:
    verify = [{"command": ["verify"], "exit_code": code, "output": ""} for code in verify_codes]
    return check_run(h.entries, stores, service_log(stores), verify)


def on_every_replica(stores: dict, change) -> dict:
    for store in stores.values():
        change(store["r"])
    return stores


def test_a_clean_run_passes_and_is_summarized():
    h, stores = clean_run()
    for phase in ("start", "end"):  # a replica that exited on its own, restarted by the harness
        h.add(chaos_check.NEMESIS, "info", chaos_check.REPLICA_EXIT, {"phase": phase, "target": "3"}, h.time)
    findings = check(h, stores)
    assert findings.ok, findings.counts()
    summary = summarize(h.entries, stores, findings)
    assert summary["ops"] == 6
    assert summary["by_type"] == {"ok": 4, "fail": 1, "info": 1}
    assert summary["unknown_writes"] == {"total": 1, "applied": 1, "not_applied": 0}
    assert summary["faults"] == {"replica-kill": 1}
    assert summary["unplanned_replica_exits"] == 1
    assert summary["lost"] == summary["duplicated"] == 0
    assert summary["versions"] == {"r": 3}


def test_an_acknowledged_push_missing_from_history_is_lost():
    h, stores = clean_run()

    def drop_w1_1(repo):
        repo["versions"] = [row(1, "init-r", {"README.txt": "hi\n"}), row(2, "w1-2", {"pushes/w1.txt": "r w1-2\n"})]
        repo["head"] = 2

    findings = check(h, on_every_replica(stores, drop_w1_1))
    assert len(findings.lost) == 3  # once per replica
    assert "w1-1" in findings.lost[0]


def test_a_push_in_history_twice_is_duplicated():
    h, stores = clean_run()

    def again(repo):
        repo["versions"].append(row(4, "w1-1", {"pushes/w1.txt": "r w1-1\n"}))
        repo["head"] = 4

    findings = check(h, on_every_replica(stores, again))
    assert findings.duplicated and "w1-1" in findings.duplicated[0]


def test_an_unknown_push_applied_twice_is_duplicated_too():
    h, stores = clean_run()

    def again(repo):
        repo["versions"].append(row(4, "w1-2", {"pushes/w1.txt": "r w1-2\n"}))
        repo["head"] = 4

    assert check(h, on_every_replica(stores, again)).duplicated


def test_a_missing_version_is_a_gap():
    h, stores = clean_run()
    findings = check(h, on_every_replica(stores, lambda repo: repo["versions"].pop(1)))
    assert findings.gaps and "missing [2]" in findings.gaps[0]


def test_a_version_with_other_content_is_wrong_content():
    h, stores = clean_run()
    stores = on_every_replica(stores, lambda repo: repo["versions"][1].update(changed={"pushes/w1.txt": "r w9-9\n"}))
    findings = check(h, stores)
    assert findings.wrong_content and "w1-1" in findings.wrong_content[0]


def test_a_version_with_another_tree_is_wrong_content():
    h, stores = clean_run()
    findings = check(h, on_every_replica(stores, lambda repo: repo["versions"][1].update(tree="tree-other")))
    assert findings.wrong_content


def test_an_acknowledged_push_at_another_version_is_caught():
    h, stores = clean_run()

    def swap(repo):
        repo["versions"] = [
            row(1, "init-r", {"README.txt": "hi\n"}),
            row(2, "w1-2", {"pushes/w1.txt": "r w1-2\n"}),
            row(3, "w1-1", {"pushes/w1.txt": "r w1-1\n"}),
        ]

    assert check(h, on_every_replica(stores, swap)).wrong_version


def test_a_rejected_push_found_in_history_is_caught():
    h, stores = clean_run()

    def apply_rejected(repo):
        repo["versions"].append(row(4, "w2-1", {"pushes/w2.txt": "r w2-1\n"}))
        repo["head"] = 4

    assert check(h, on_every_replica(stores, apply_rejected)).failed_applied


def test_a_version_no_operation_wrote_is_unexplained():
    h, stores = clean_run()

    def ghost(repo):
        repo["versions"].append(row(4, "nobody", {"x": "y"}))
        repo["head"] = 4

    assert check(h, on_every_replica(stores, ghost)).unexplained


def test_one_replica_with_other_content_is_divergence():
    h, stores = clean_run()
    stores["2"]["r"]["versions"][2]["changed"] = {"pushes/w1.txt": "r something else\n"}
    findings = check(h, stores)
    assert findings.divergence and "replicas 1 and 2 differ at 1 versions, first 3" in findings.divergence[0]


def test_one_replica_behind_is_divergence():
    h, stores = clean_run()
    stores["3"]["r"]["versions"].pop()
    stores["3"]["r"]["head"] = 2
    assert any("head 3 on replica 1, 2 on replica 3" in line for line in check(h, stores).divergence)


def test_a_read_older_than_an_acknowledged_push_is_stale():
    h, stores = clean_run()
    h.read("w3", "pull", 1, "tree-init-r")  # after v2 was acknowledged
    findings = check(h, stores)
    assert findings.stale_reads and "read v1 after v2" in findings.stale_reads[0]


def test_a_read_of_a_tree_not_in_history_is_caught():
    h, stores = clean_run()
    h.read("w3", "pull", 3, "tree-forged")
    assert check(h, stores).bad_reads


def test_writes_acknowledged_out_of_real_time_order_are_caught():
    h, stores = clean_run()
    h.push("w1", "w1-3", "ok", version=5, tree="tree-w1-3")
    h.push("w2", "w2-2", "ok", version=4, tree="tree-w2-2")  # invoked after v5 was acknowledged

    def both(repo):
        repo["versions"] += [
            row(4, "w2-2", {"pushes/w2.txt": "r w2-2\n"}),
            row(5, "w1-3", {"pushes/w1.txt": "r w1-3\n"}),
        ]
        repo["head"] = 5

    findings = check(h, on_every_replica(stores, both))
    assert findings.order and "w2-2" in findings.order[0]


def test_a_final_clone_that_is_not_the_head_is_caught():
    h, stores = clean_run()
    h.op(chaos_check.FINAL, "clone", {"repo": "r"}, "ok", {"version": 2, "tree": "tree-w1-1"})
    assert check(h, stores).final_clone


def test_no_final_clone_is_caught():
    h, stores = clean_run()
    h.entries = [e for e in h.entries if e["process"] != chaos_check.FINAL]
    assert check(h, stores).final_clone


def test_a_failing_verify_is_caught():
    h, stores = clean_run()
    assert check(h, stores, verify_codes=(0, 3)).verify


def test_a_service_log_that_differs_from_the_stores_is_caught():
    h, stores = clean_run()
    logs = service_log(stores)
    logs["r"][0]["message"] = "w9-9"
    findings = check_run(h.entries, stores, logs, [])
    assert findings.service_log


def test_an_op_never_completed_is_unknown_and_a_second_invoke_is_refused():
    h = Recorder()
    h.add("w1", "invoke", "push", {"repo": "r", "token": "w1-1", "writes": {}}, 0.0)
    ops = pair_ops(h.entries)
    assert ops[0].type == "info" and ops[0].completed_at is None
    h.add("w1", "invoke", "pull", {"repo": "r"}, 1.0)
    with pytest.raises(ValueError):
        pair_ops(h.entries)


def test_longest_unavailability_is_the_longest_stretch_without_an_ok():
    h = Recorder()
    h.read("w1", "pull", 1, "t")  # ok at 0.1
    h.op("w1", "pull", {"repo": "r"}, "info", {"error": "unreachable"}, took=15)  # 0.11 .. 15.11
    h.read("w1", "pull", 1, "t")  # ok at 15.22
    h.read("w1", "pull", 1, "t")
    gap = longest_unavailability(pair_ops(h.entries))
    assert gap is not None and gap.start == pytest.approx(0.1) and gap.end == pytest.approx(15.22)


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_latency_is_split_by_whether_an_operation_overlapped_a_fault():
    h = Recorder()
    h.read("w1", "pull", 1, "t")  # 0.0 .. 0.1
    h.time = 5.0
    h.add(chaos_check.NEMESIS, "info", "broker-kill", {"phase": "start", "target": "broker"}, 5.0)
    h.read("w1", "pull", 1, "t")  # 5.0 .. 5.1: during the fault
    h.add(chaos_check.NEMESIS, "info", "broker-kill", {"phase": "end", "target": "broker"}, 6.0)
    h.time = 7.0
    h.op("w1", "pull", {"repo": "r"}, "ok", {"version": 1, "tree": "t"}, took=0.3)  # after it
    summary = summarize(h.entries, {}, Findings())
    assert summary["latency_ok_outside_faults"]["pull"]["n"] == 2
    assert summary["latency_ok_during_faults"]["pull"]["n"] == 1
    assert summary["latency_ok_outside_faults"]["pull"]["p99_ms"] == pytest.approx(300)


def test_a_version_whose_proof_of_authorship_fails_is_caught_on_its_replica():
    h, stores = clean_run()
    stores["2"]["r"]["versions"][1]["forged"] = True

    def proof(row: dict) -> str | None:
        return "the signature does not check against the key it names" if row.get("forged") else None

    verify = [{"command": ["verify"], "exit_code": 0, "output": ""}]
    findings = check_run(h.entries, stores, service_log(stores), verify, proof)
    assert findings.authorship == ["replica 2 r v2 by chaos: the signature does not check against the key it names"]
    assert not findings.ok and findings.counts()["authorship"] == 1
    assert "proof of authorship checked on 9 version rows" in findings.notes
    assert check_run(h.entries, stores, service_log(stores), verify, lambda row: None).ok


def test_the_chaos_run_s_authorship_check_holds_for_a_signed_write_and_not_for_a_changed_one(tmp_path: Path):
    """chaos.authorship on store rows: a write signed by its author and attested by
    the service's key holds; the same row with another message, or by another
    author, or attested by another key, does not."""
    import dataclasses

    import chaos

    from minigit import identity
    from minigit import protocol as p
    from minigit.client.exchange import Credentials, make_request, sign_request
    from minigit_server import access
    from minigit_server.server_key import load_or_create_server_key

    namespace = "chaos1-"
    server_key, _ = load_or_create_server_key(tmp_path)
    author = Credentials("chaos-w1", identity.generate_private_key())
    request = make_request(p.PushRequest, author.user, 0, 15.0, repo="chaos1", base=1, tree="a" * 64, message="w1-1")
    request = sign_request(author, request, [], namespace)

    def signed_row(attested_by=server_key, **changes) -> dict:
        signed = p.SignedWrite(
            request=request.to_bytes().decode(),
            key=author.public_key,
            attestation=access.attest(attested_by, namespace, request, author.public_key),
        )
        return {**row(2, "w1-1", {}), "author": "chaos-w1", "signed": signed.to_text(), **changes}

    check = chaos.authorship(tmp_path, namespace)
    assert check(signed_row()) is None
    assert check(signed_row(message="w1-2")) == "the signed request does not say what the version says"
    assert check(signed_row(author="chaos-w2")) == "the signed request does not say what the version says"
    assert check(signed_row(attested_by=identity.generate_private_key())) is not None
    assert check(signed_row(signed=None)) == "no signature"
    assert check(signed_row(signed="{not json")).startswith("its signed write does not parse")
    other = dataclasses.replace(request, tree="b" * 64)
    assert check(signed_row(signed=p.SignedWrite(request=other.to_bytes().decode(), key=author.public_key).to_text()))
