"""minigit.client.versions against the in-process service: restore never writes over what it does not know."""

from __future__ import annotations

from pathlib import Path

import pytest
from inprocess import InProcessServer
from test_operations import create, make_server, options, write

from minigit.client import operations as op
from minigit.client import versions
from minigit.errors import PullConflict


@pytest.fixture
def server() -> InProcessServer:
    return make_server()


def test_restore_never_deletes_a_folder_of_yours_where_a_file_goes_back(server, tmp_path: Path) -> None:
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    create(server, origin, {"x": "base", "y": "base"})
    op.clone_repository("lab", mine, options(server))
    (mine / "x").unlink()
    write(mine, "x/new.txt", "work")
    write(mine, "y", "edited")
    with pytest.raises(PullConflict, match="would be overwritten by restore") as refused:
        versions.restore_paths(mine, options(server), ["."])
    assert refused.value.paths == ["x/new.txt"]
    assert (mine / "x" / "new.txt").read_text() == "work" and (mine / "y").read_text() == "edited"
    assert versions.restore_paths(mine, options(server), ["y"]).restored == ["y"]
    assert (mine / "y").read_text() == "base"
