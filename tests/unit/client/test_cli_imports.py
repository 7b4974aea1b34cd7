"""`minigit --version` and `--help` start fast: they import neither Kafka nor
cryptography nor what the commands do. Checked in a fresh interpreter, since this
test process has long imported all of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from minigit import protocol
from minigit.client import cli

ROOT = Path(__file__).resolve().parents[3]

# What a command that only prints must not pay for.
HEAVY = (
    "kafka",
    "cryptography",
    "pathspec",
    "minigit.protocol",
    "minigit.client.operations",
    "minigit.client.transport",
)

PROBE = """
import json, sys
sys.argv = [{prog!r}, *{args!r}]
from {module} import main
try:
    main()
except SystemExit:
    pass
sys.stdout.flush()
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def modules_loaded(module: str, prog: str, args: list[str]) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, prog=prog, args=args)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'server'}", "PATH": "/usr/bin:/bin", "COLUMNS": "100"},
    )
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


def heavy_among(loaded: set[str], heavy: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(name for name in loaded if any(name == h or name.startswith(h + ".") for h in heavy))


@pytest.mark.parametrize("args", [["--version"], ["--help"], [], ["push", "--help"], ["visibility", "--help"]])
def test_printing_the_version_or_help_imports_nothing_heavy(args: list[str]) -> None:
    assert heavy_among(modules_loaded("minigit.client.cli", "minigit", args)) == []


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_the_version_and_the_top_help_do_not_build_typer_s_value_checks(args: list[str]) -> None:
    """Typer checks a command's values with pydantic (tens of milliseconds to import):
    never for the version, nor for the list of commands."""
    assert heavy_among(modules_loaded("minigit.client.cli", "minigit", args), ("pydantic",)) == []


@pytest.mark.parametrize(
    "args",
    [
        ["push", "-q", "-m", "a message", "--timeout", "5", "--kafka-option", "client_id=x", "-u", "alice"],
        ["pull", "--timeout", "7.5", "--namespace", "ns-"],
        ["log", "-n", "3", "--oneline"],
    ],
)
def test_a_command_s_plain_values_are_checked_without_pydantic(args: list[str]) -> None:
    """(minigit.cli_values; outside a working directory the command fails after
    its values were checked)"""
    loaded = modules_loaded("minigit.client.cli", "minigit", args)
    assert "minigit.client.operations" in loaded  # it got past the checks
    assert heavy_among(loaded, ("pydantic",)) == []


def test_the_version_is_printed_without_rich() -> None:
    """(minigit.console makes its rich consoles when first used: about 30 ms)"""
    assert heavy_among(modules_loaded("minigit.client.cli", "minigit", ["--version"]), ("rich",)) == []


def test_the_probe_sees_what_a_command_imports() -> None:
    """The check is real: the modules a command needs do show up."""
    loaded = modules_loaded("minigit.client.cli", "minigit", ["status"])  # (outside a working directory: exit 1)
    assert "minigit.client.operations" in loaded and "minigit.protocol" in loaded


@pytest.mark.parametrize("args", [["--version"]])
def test_the_server_version_imports_nothing_heavy(args: list[str]) -> None:
    loaded = modules_loaded("minigit_server.cli", "minigit-server", args)
    assert not {"kafka", "minigit_server.service", "minigit_server.replica"} & loaded
    # nor the operator commands' keys, wire format and store (users_cli, repo_cli)
    assert heavy_among(loaded, ("cryptography", "minigit.protocol", "minigit.identity", "minigit_server.store")) == []


def test_the_visibility_choices_are_the_protocols() -> None:
    assert [v.value for v in cli.VisibilityLevel] == [v.value for v in protocol.Visibility]
