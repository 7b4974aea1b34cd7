"""minigit.client.versions against the in-process service: restore never writes over what it does not know."""

from __future__ import annotations

from pathlib import Path

import pytest
from inprocess import InProcessServer
from test_operations import create, make_server, options, write

from minigit import protocol as p
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


def test_diff_names_are_known_offline_and_content_is_fetched_only_for_changed_files(server, tmp_path: Path) -> None:
    origin, mine = tmp_path / "origin", tmp_path / "mine"
    create(server, origin, {"a": "1\n2\n", "b": "same\n", "c": "gone\n"})
    op.clone_repository("lab", mine, options(server))
    write(mine, "a", "1\ntwo\n")
    (mine / "c").unlink()
    asked = len(server.requests)
    names = versions.diff_workdir(mine, options(server), content=False)
    assert [(f.status, f.path) for f in names.files] == [("M", "a"), ("D", "c")]
    assert len(server.requests) == asked  # no request
    full = versions.diff_workdir(mine, options(server))
    assert [line for line in full.files[0].lines if line[:1] in "+-"] == ["--- a/a", "+++ b/a", "-2", "+two"]
    pulls = [r for r in server.requests[asked:] if isinstance(r, p.PullRequest)]
    assert len(pulls) == 1 and pulls[0].target == pulls[0].version == 1 and len(pulls[0].lost) == 2  # a's and c's
