"""The user's private keys on disk: one Ed25519 key per user name, in
``<config dir>/keys/<user>.key`` (PKCS8 PEM, mode 0600, in a 0700 directory).

Like ssh, a key file that others could read, or that others could replace (a
directory they may write, a file they own, a symlink), is refused rather than
used: a key anyone else may have read no longer proves who signed. The files
are handled by ``minigit.key_files`` (shared with the server's key), the key
bytes by ``minigit.identity``.
"""

from __future__ import annotations

import os as os  # re-exported: tests patch keys.os, the os module key_files writes with
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from minigit import identity, key_files
from minigit.config import CONFIG_DIR_ENV
from minigit.errors import KeyExists, NoKey
from minigit.key_files import KEY_FILE_MODE as KEY_FILE_MODE
from minigit.key_files import KEY_SUFFIX, KEYS_DIR
from minigit.key_files import KEYS_DIR_MODE as KEYS_DIR_MODE
from minigit.key_files import check_key_file as check_key_file
from minigit.protocol import check_name

# The end of the hint when the config directory cannot be read or written.
ELSEWHERE = f"choose another config directory with {CONFIG_DIR_ENV}"


def key_path(config_dir: Path, user: str) -> Path:
    """Where ``user``'s key lives; the name is checked first, so it is one plain file name."""
    return config_dir / KEYS_DIR / f"{check_name('user', user)}{KEY_SUFFIX}"


@dataclass(frozen=True)
class KeyInfo:
    """What ``minigit auth show`` tells about a key: nothing secret."""

    user: str
    path: Path
    public_key: str  # identity.public_key_text
    fingerprint: str
    created: bool = False  # made by this command

    @classmethod
    def of(cls, user: str, path: Path, key: Ed25519PrivateKey, created: bool = False) -> KeyInfo:
        public = key.public_key()
        return cls(user, path, identity.public_key_text(public), identity.fingerprint(public), created)

    def to_json(self) -> dict[str, object]:
        return {
            "user": self.user,
            "public_key": self.public_key,
            "fingerprint": self.fingerprint,
            "key_file": str(self.path),
            "created": self.created,
        }


def load_key(config_dir: Path, user: str) -> Ed25519PrivateKey:
    """``user``'s private key: NoKey if there is none, UnsafeKeyFile if others could
    read or replace it, MalformedKey if the file holds no Ed25519 key."""
    path = key_path(config_dir, user)
    key = key_files.load_key_file(path, ELSEWHERE)
    if key is None:
        raise NoKey(user, str(path.parent))
    return key


def create_key(config_dir: Path, user: str) -> Ed25519PrivateKey:
    """A new key for ``user``, written owner-only; KeyExists if there is one already
    (it is never replaced: a new key is a new identity)."""
    path = key_path(config_dir, user)
    key = identity.generate_private_key()
    if not key_files.write_new_key_file(path, key, ELSEWHERE):
        raise KeyExists(user, str(path.parent))
    return key


def load_or_create_key(config_dir: Path, user: str) -> tuple[Ed25519PrivateKey, bool]:
    """``user``'s key, created on first use; and whether it was created now."""
    try:
        return load_key(config_dir, user), False
    except NoKey:
        pass
    try:
        return create_key(config_dir, user), True
    except KeyExists:  # another command created it between the two steps
        return load_key(config_dir, user), False


def key_info(config_dir: Path, user: str) -> KeyInfo:
    """``minigit auth show``: the public half of ``user``'s existing key."""
    return KeyInfo.of(user, key_path(config_dir, user), load_key(config_dir, user))


def generate_key(config_dir: Path, user: str) -> KeyInfo:
    """``minigit auth keygen``: a new key for ``user``, never replacing one."""
    return KeyInfo.of(user, key_path(config_dir, user), create_key(config_dir, user), created=True)


# ---------------------------------------------------------------- rotation

NEXT_SUFFIX = ".next"
OLD_SUFFIX = ".old"


def next_key_path(config_dir: Path, user: str) -> Path:
    """Where a rotation keeps the new key until the service has accepted it."""
    return key_path(config_dir, user).with_name(f"{user}{KEY_SUFFIX}{NEXT_SUFFIX}")


def load_or_create_next_key(config_dir: Path, user: str) -> Ed25519PrivateKey:
    """The key a rotation moves to: one left by a rotation that did not finish
    (the service may have accepted it already), else a new one, written before it
    is sent so that an accepted key is never lost."""
    path = next_key_path(config_dir, user)
    key = key_files.load_key_file(path, ELSEWHERE)
    if key is not None:
        return key
    key = identity.generate_private_key()
    if not key_files.write_new_key_file(path, key, ELSEWHERE):  # another rotation made one meanwhile
        return key_files.load_key_file(path, ELSEWHERE)
    return key


def promote_next_key(config_dir: Path, user: str) -> KeyInfo:
    """After the service accepted the rotation: the next key becomes the key, and
    the old one is kept beside it as ``<user>.key.old`` (it signed earlier versions)."""
    current, following = key_path(config_dir, user), next_key_path(config_dir, user)
    key = key_files.load_key_file(following, ELSEWHERE)
    if key is None:
        raise NoKey(user, str(following.parent))
    os.replace(current, current.with_name(f"{user}{KEY_SUFFIX}{OLD_SUFFIX}"))
    os.replace(following, current)
    key_files.sync_directory(current.parent)
    return KeyInfo.of(user, current, key)
