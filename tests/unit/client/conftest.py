"""Each client test gets its own config directory: its users' keys and the
service keys it pins (every in-process service has a key of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def own_config_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    # not under tmp_path: tests use that as a working directory, whose files are pushed
    directory = tmp_path_factory.mktemp("minigit-config")
    monkeypatch.setenv("MINIGIT_CONFIG_DIR", str(directory))
    return directory
