"""minigit.client.keys (and config.user_config_dir): a user's key is written
owner-only, never replaced, and refused, as ssh refuses one, when others could
read it or put another in its place."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from minigit import identity
from minigit.client import keys
from minigit.config import user_config_dir
from minigit.errors import KeyExists, MalformedKey, MinigitError, NoKey, ProtocolError, UnsafeKeyFile


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def public_text(key: object) -> str:
    return identity.public_key_text(key.public_key())  # type: ignore[attr-defined]


# ---------------------------------------------------------------- where


def test_the_config_dir_is_minigit_config_dir_first(tmp_path):
    environ = {"MINIGIT_CONFIG_DIR": str(tmp_path / "mine"), "XDG_CONFIG_HOME": "/xdg"}
    assert user_config_dir(environ) == tmp_path / "mine"


def test_then_xdg_config_home():
    assert user_config_dir({"MINIGIT_CONFIG_DIR": "", "XDG_CONFIG_HOME": "/xdg"}) == Path("/xdg/minigit")


def test_then_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_config_dir({}) == tmp_path / ".config" / "minigit"
    # the XDG spec: a relative path there is invalid and ignored
    assert user_config_dir({"XDG_CONFIG_HOME": "relative/dir"}) == tmp_path / ".config" / "minigit"


def test_a_tilde_in_minigit_config_dir_is_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_config_dir({"MINIGIT_CONFIG_DIR": "~/keys-here"}) == tmp_path / "keys-here"


# ---------------------------------------------------------------- creating and loading


def test_a_new_key_is_owner_only_in_an_owner_only_directory(tmp_path):
    old_umask = os.umask(0o000)  # the most permissive umask must not widen the modes
    try:
        info = keys.generate_key(tmp_path / "cfg", "alice")
    finally:
        os.umask(old_umask)
    path = tmp_path / "cfg" / "keys" / "alice.key"
    assert info.path == path and info.created
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["alice.key"]  # no temporary file left


def test_the_key_shown_is_the_key_created(tmp_path):
    created = keys.generate_key(tmp_path, "alice")
    shown = keys.key_info(tmp_path, "alice")
    assert (shown.public_key, shown.fingerprint, shown.path) == (created.public_key, created.fingerprint, created.path)
    assert not shown.created
    key = keys.load_key(tmp_path, "alice")
    assert public_text(key) == created.public_key
    assert identity.fingerprint(identity.parse_public_key(shown.public_key)) == shown.fingerprint
    assert shown.to_json() == {
        "user": "alice",
        "public_key": created.public_key,
        "fingerprint": created.fingerprint,
        "key_file": str(tmp_path / "keys" / "alice.key"),
        "created": False,
    }


def test_each_user_name_has_its_own_key(tmp_path):
    alice, bob = keys.generate_key(tmp_path, "alice"), keys.generate_key(tmp_path, "bob")
    assert alice.public_key != bob.public_key
    assert keys.key_info(tmp_path, "bob").public_key == bob.public_key


def test_a_key_is_never_replaced(tmp_path):
    first = keys.generate_key(tmp_path, "alice")
    before = first.path.read_bytes()
    with pytest.raises(KeyExists) as raised:
        keys.generate_key(tmp_path, "alice")
    assert "already exists" in raised.value.message and raised.value.hint
    assert first.path.read_bytes() == before
    assert sorted(p.name for p in first.path.parent.iterdir()) == ["alice.key"]


def test_no_key_yet(tmp_path):
    with pytest.raises(NoKey) as raised:
        keys.key_info(tmp_path, "alice")
    assert raised.value.hint == "create one with 'minigit auth keygen --user alice'"
    assert not (tmp_path / "keys").exists()  # showing creates nothing
    keys.generate_key(tmp_path, "bob")
    with pytest.raises(NoKey):
        keys.load_key(tmp_path, "alice")


def test_first_use_creates_the_key_once(tmp_path):
    key, created = keys.load_or_create_key(tmp_path, "alice")
    again, created_again = keys.load_or_create_key(tmp_path, "alice")
    assert created and not created_again
    assert public_text(key) == public_text(again)


def test_first_use_racing_another_command_keeps_the_key_that_won(tmp_path, monkeypatch):
    winner = identity.generate_private_key()
    real_link = os.link

    def another_command_links_first(source: str, target: Path) -> None:
        target.write_bytes(identity.private_key_pem(winner))
        target.chmod(0o600)
        real_link(source, target)  # FileExistsError, as in a real race

    monkeypatch.setattr(keys.os, "link", another_command_links_first)
    key, created = keys.load_or_create_key(tmp_path, "alice")
    assert not created and public_text(key) == public_text(winner)
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["alice.key"]


@pytest.mark.parametrize("user", ["../evil", "a/b", ".hidden", "", "x" * 65])
def test_a_user_name_is_checked_before_it_names_a_file(tmp_path, user):
    with pytest.raises(ProtocolError, match="user name"):
        keys.generate_key(tmp_path, user)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- refused as ssh refuses


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_key_others_may_read_or_change_is_refused(tmp_path, file_mode):
    path = keys.generate_key(tmp_path, "alice").path
    path.chmod(file_mode)
    with pytest.raises(UnsafeKeyFile) as raised:
        keys.load_key(tmp_path, "alice")
    assert raised.value.message == f"unsafe key file {path}: others may read or change it (mode {file_mode:04o})"
    assert raised.value.hint == f"run 'chmod 600 {path}' (ssh refuses such keys too)"
    with pytest.raises(UnsafeKeyFile):
        keys.load_or_create_key(tmp_path, "alice")  # and never replaced by a new one either
    path.chmod(0o600)
    keys.load_key(tmp_path, "alice")


@pytest.mark.parametrize("dir_mode", [0o770, 0o707, 0o777])
def test_a_key_in_a_directory_others_may_write_is_refused(tmp_path, dir_mode):
    path = keys.generate_key(tmp_path, "alice").path
    path.parent.chmod(dir_mode)
    with pytest.raises(UnsafeKeyFile, match="replace the key") as raised:
        keys.load_key(tmp_path, "alice")
    assert raised.value.hint == f"run 'chmod 700 {path.parent}'"
    with pytest.raises(UnsafeKeyFile):
        keys.generate_key(tmp_path, "bob")


def test_a_key_file_of_another_user_is_refused(tmp_path):
    path = keys.generate_key(tmp_path, "alice").path
    own = path.lstat()
    someone_elses = os.stat_result((own.st_mode, own.st_ino, own.st_dev, 1, os.getuid() + 1, 0, 119, 0, 0, 0))
    with pytest.raises(UnsafeKeyFile, match="belongs to another user"):
        keys.check_key_file(path, someone_elses)
    keys.check_key_file(path, own)


def test_a_symbolic_link_is_refused(tmp_path):
    real = keys.generate_key(tmp_path / "elsewhere", "alice").path
    (tmp_path / "keys").mkdir(mode=0o700)
    (tmp_path / "keys" / "alice.key").symlink_to(real)
    with pytest.raises(UnsafeKeyFile, match="symbolic link"):
        keys.load_key(tmp_path, "alice")


def test_a_keys_directory_that_is_a_symbolic_link_is_refused(tmp_path):
    keys.generate_key(tmp_path / "elsewhere", "alice")
    (tmp_path / "keys").symlink_to(tmp_path / "elsewhere" / "keys")
    with pytest.raises(UnsafeKeyFile, match="is not a directory"):
        keys.load_key(tmp_path, "alice")


def test_a_directory_in_the_key_file_s_place_is_refused_in_one_line(tmp_path):
    """It used to end in a traceback (IsADirectoryError) before the check could say so."""
    (tmp_path / "keys").mkdir(mode=0o700)
    keys.key_path(tmp_path, "bob").mkdir(mode=0o700)
    with pytest.raises(UnsafeKeyFile, match="it is not a regular file"):
        keys.load_key(tmp_path, "bob")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    (tmp_path / "keys").mkdir(mode=0o700)
    os.mkfifo(tmp_path / "keys" / "alice.key", 0o600)
    with pytest.raises(UnsafeKeyFile, match="not a regular file"):
        keys.load_key(tmp_path, "alice")


@pytest.mark.parametrize(
    "content", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
)
def test_a_corrupt_key_file_names_itself(tmp_path, content):
    path = keys.generate_key(tmp_path, "alice").path
    path.write_bytes(content)
    with pytest.raises(MalformedKey, match=f"^key file {re.escape(str(path))} "):
        keys.load_key(tmp_path, "alice")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_config_dir_that_cannot_be_written_is_a_clear_error(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(MinigitError, match=r"^cannot write "):
            keys.generate_key(tmp_path / "cfg", "alice")
    finally:
        tmp_path.chmod(0o700)


def test_a_config_dir_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "cfg").write_text("not a directory")
    with pytest.raises(MinigitError, match=r"^cannot write "):
        keys.generate_key(tmp_path / "cfg", "alice")
