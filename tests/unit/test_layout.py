"""The tree's rules: a file's path is its import path, the server does not reach
into the client, and only a few modules talk to Kafka."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOTS = {"minigit": ROOT, "minigit_server": ROOT / "server"}
# devkafka.broker: `kafka start --secure` creates ACLs with the admin client
KAFKA_MODULES = {
    "minigit.kafka_clients",
    "minigit.client.transport",
    "minigit_server.bus",
    "minigit_server.devkafka.broker",
}


def source_modules() -> dict[str, Path]:
    found = {}
    for package, base in PACKAGE_ROOTS.items():
        for path in sorted((base / package).rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_tree_has_the_expected_packages():
    modules = source_modules()
    for name in ("minigit.protocol", "minigit.codec", "minigit.client.cli", "minigit_server.decisions"):
        assert name in modules
    assert "minigit_server.devkafka.broker" in modules


@pytest.mark.parametrize("name", sorted(source_modules()))
def test_a_file_path_is_its_import_path(name):
    spec = importlib.util.find_spec(name)
    assert spec is not None and Path(spec.origin).resolve() == source_modules()[name].resolve()


def test_the_server_imports_nothing_from_the_client():
    for name, path in source_modules().items():
        if name.startswith("minigit_server"):
            client = {m for m in imported_modules(path) if m == "minigit.client" or m.startswith("minigit.client.")}
            assert not client, f"{name} imports {client}"


def test_the_shared_layer_imports_neither_side():
    for name, path in source_modules().items():
        if name.startswith("minigit.") and not name.startswith("minigit.client"):
            sides = {m for m in imported_modules(path) if m.startswith(("minigit.client", "minigit_server"))}
            assert not sides, f"{name} imports {sides}"


def test_only_a_few_modules_import_kafka():
    importers = {
        name
        for name, path in source_modules().items()
        if any(m == "kafka" or m.startswith("kafka.") for m in imported_modules(path))
    }
    assert importers == KAFKA_MODULES


def test_only_the_spark_jobs_import_pyspark():
    """PySpark is an optional extra: only minigit_server.sparkjobs may import it (the
    commands import those modules when they run a job)."""
    importers = {
        name
        for name, path in source_modules().items()
        if any(m == "pyspark" or m.startswith("pyspark.") for m in imported_modules(path))
    }
    assert importers and all(name.startswith("minigit_server.sparkjobs.") for name in importers), importers


def test_test_modules_have_unique_basenames():
    """pytest imports test modules by basename (rootdir mode, no packages): two of
    one name fail the collection of whichever comes second, in a fresh clone only."""
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []
