"""minigit_server.server_key: the service's key is created once in
<data dir>/keys/server.key, owner-only, loaded as it is afterwards, never
replaced, refused when others could read or replace it; a key given by path is
only loaded."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from minigit import identity
from minigit.errors import MalformedKey, MinigitError, UnsafeKeyFile
from minigit_server import server_key
from minigit_server.server_key import load_or_create_server_key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def public_text(key: object) -> str:
    return identity.public_key_text(key.public_key())  # type: ignore[attr-defined]


def test_the_first_start_creates_the_key_owner_only(tmp_path):
    data_dir = tmp_path / "data"
    old_umask = os.umask(0o000)
    try:
        key, created = load_or_create_server_key(data_dir)
    finally:
        os.umask(old_umask)
    path = data_dir / "keys" / "server.key"
    assert created and server_key.server_key_path(data_dir) == path
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert identity.load_private_key_pem(path.read_bytes()).private_bytes_raw() == key.private_bytes_raw()
    assert [p.name for p in path.parent.iterdir()] == ["server.key"]  # no temporary file left


def test_later_starts_load_the_same_key(tmp_path):
    key, _ = load_or_create_server_key(tmp_path)
    again, created = load_or_create_server_key(tmp_path)
    assert not created and public_text(again) == public_text(key)


def test_it_is_where_the_client_keys_code_would_put_a_user_named_server(tmp_path):
    """The documented layout: a user's key with the data dir as config dir."""
    from minigit.client import keys  # only the test crosses the line, to check the layout matches

    key, _ = load_or_create_server_key(tmp_path)
    assert keys.key_path(tmp_path, "server") == server_key.server_key_path(tmp_path)
    assert public_text(keys.load_key(tmp_path, "server")) == public_text(key)


def test_a_start_racing_another_keeps_the_key_that_won(tmp_path, monkeypatch):
    winner = identity.generate_private_key()
    real_link = os.link

    def another_replica_links_first(source: str, target: Path) -> None:
        target.write_bytes(identity.private_key_pem(winner))
        target.chmod(0o600)
        real_link(source, target)  # FileExistsError, as in a real race

    monkeypatch.setattr(os, "link", another_replica_links_first)
    key, created = load_or_create_server_key(tmp_path)
    assert not created and public_text(key) == public_text(winner)
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["server.key"]


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_others_may_read_is_refused_and_never_replaced(tmp_path, file_mode):
    load_or_create_server_key(tmp_path)
    path = server_key.server_key_path(tmp_path)
    before = path.read_bytes()
    path.chmod(file_mode)
    with pytest.raises(UnsafeKeyFile, match="others may read or change it") as raised:
        load_or_create_server_key(tmp_path)
    assert raised.value.hint == f"run 'chmod 600 {path}' (ssh refuses such keys too)"
    assert path.read_bytes() == before


def test_a_keys_directory_others_may_write_is_refused(tmp_path):
    load_or_create_server_key(tmp_path)
    (tmp_path / "keys").chmod(0o777)
    with pytest.raises(UnsafeKeyFile, match="replace the key"):
        load_or_create_server_key(tmp_path)


def test_a_symbolic_link_is_refused(tmp_path):
    load_or_create_server_key(tmp_path / "elsewhere")
    (tmp_path / "keys").mkdir(mode=0o700)
    (tmp_path / "keys" / "server.key").symlink_to(server_key.server_key_path(tmp_path / "elsewhere"))
    with pytest.raises(UnsafeKeyFile, match="symbolic link"):
        load_or_create_server_key(tmp_path)


@pytest.mark.parametrize(
    "content", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
)
def test_a_corrupt_key_file_names_itself_and_is_not_replaced(tmp_path, content):
    load_or_create_server_key(tmp_path)
    path = server_key.server_key_path(tmp_path)
    path.write_bytes(content)
    with pytest.raises(MalformedKey, match=r"^key file .*server\.key "):
        load_or_create_server_key(tmp_path)
    assert path.read_bytes() == content


def test_a_data_dir_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(MinigitError, match=r"^cannot (read|write) ") as raised:
        load_or_create_server_key(tmp_path / "data")
    assert "--data-dir" in (raised.value.hint or "")


# ---------------------------------------------------------------- a key given by path


def test_the_same_key_copied_to_another_host_is_the_same_identity(tmp_path):
    key, _ = load_or_create_server_key(tmp_path / "host1")
    (tmp_path / "host2" / "keys").mkdir(parents=True, mode=0o700)
    copy = server_key.server_key_path(tmp_path / "host2")
    shutil.copyfile(server_key.server_key_path(tmp_path / "host1"), copy)
    copy.chmod(0o600)
    other, created = load_or_create_server_key(tmp_path / "host2")
    assert not created and public_text(other) == public_text(key)


def test_a_key_given_by_path_is_loaded_with_the_same_checks(tmp_path):
    key, _ = load_or_create_server_key(tmp_path / "origin")
    (tmp_path / "secrets").mkdir(mode=0o700)
    given_path = tmp_path / "secrets" / "service.pem"
    shutil.copyfile(server_key.server_key_path(tmp_path / "origin"), given_path)
    given_path.chmod(0o600)
    loaded, created = load_or_create_server_key(tmp_path / "data", given_path)
    assert not created and public_text(loaded) == public_text(key)
    assert not (tmp_path / "data").exists()  # the default place is not touched
    given_path.chmod(0o640)
    with pytest.raises(UnsafeKeyFile):
        load_or_create_server_key(tmp_path / "data", given_path)


def test_a_key_given_by_path_is_never_created(tmp_path):
    missing = tmp_path / "secrets" / "server.key"
    with pytest.raises(MinigitError, match=f"^no server key in {re.escape(str(missing))}$") as raised:
        load_or_create_server_key(tmp_path / "data", missing)
    assert "mode 0600" in (raised.value.hint or "")
    (tmp_path / "secrets").mkdir(mode=0o700)
    with pytest.raises(MinigitError, match=r"^no server key in "):
        load_or_create_server_key(tmp_path / "data", missing)
    assert not missing.exists() and not (tmp_path / "data").exists()


def test_a_key_given_by_path_in_a_directory_others_may_write_is_refused(tmp_path):
    load_or_create_server_key(tmp_path / "origin")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared").chmod(0o777)
    given_path = tmp_path / "shared" / "server.key"
    shutil.copyfile(server_key.server_key_path(tmp_path / "origin"), given_path)
    given_path.chmod(0o600)
    with pytest.raises(UnsafeKeyFile, match="replace the key"):
        load_or_create_server_key(tmp_path, given_path)


def test_a_fifo_given_by_path_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "server.key", 0o600)
    tmp_path.chmod(0o700)
    with pytest.raises(UnsafeKeyFile, match="not a regular file"):
        load_or_create_server_key(tmp_path / "data", tmp_path / "server.key")
