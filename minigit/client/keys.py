"""The user's private keys on disk: one Ed25519 key per user name, in
``<config dir>/keys/<user>.key`` (PKCS8 PEM, mode 0600, in a 0700 directory).

Like ssh, a key file that others could read, or that others could replace (a
directory they may write, a file they own, a symlink), is refused rather than
used: a key anyone else may have read no longer proves who signed. The key
bytes themselves are handled by ``minigit.identity``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from minigit import identity
from minigit.config import CONFIG_DIR_ENV
from minigit.errors import KeyExists, MinigitError, NoKey, UnsafeKeyFile
from minigit.protocol import check_name

KEYS_DIR = "keys"
KEY_SUFFIX = ".key"
KEY_FILE_MODE = 0o600
KEYS_DIR_MODE = 0o700


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
    check_keys_dir(path.parent, user, path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO would block
    except FileNotFoundError:
        raise NoKey(user, str(path.parent)) from None
    except OSError as error:
        if path.is_symlink():
            raise UnsafeKeyFile(str(path), "it is a symbolic link", hint="put the key file itself there") from None
        raise UnsafeKeyFile(str(path), f"cannot open it ({error.strerror})", hint="check its permissions") from None
    with os.fdopen(fd, "rb") as file:
        # checked on the open file: the name could be switched to another file after a check by name
        check_key_file(path, os.fstat(fd))
        data = file.read(identity.MAX_PRIVATE_KEY_FILE_BYTES + 1)
    return identity.load_private_key_pem(data, f"key file {path}")


def check_keys_dir(directory: Path, user: str, path: Path) -> None:
    try:
        info = directory.lstat()
    except FileNotFoundError:
        raise NoKey(user, str(directory)) from None
    except OSError as error:  # a part of the path is a file, or may not be searched
        raise MinigitError(
            f"cannot read {directory}: {error.strerror or error}",
            hint=f"check that path, or choose another config directory with {CONFIG_DIR_ENV}",
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeKeyFile(str(path), f"{directory} is not a directory", hint=f"move {directory} away")
    if info.st_uid != os.getuid():
        raise UnsafeKeyFile(str(path), f"{directory} belongs to another user", hint="use a directory of your own")
    if info.st_mode & 0o022:
        raise UnsafeKeyFile(
            str(path),
            f"others may write in {directory} (mode {stat.S_IMODE(info.st_mode):04o}) and so replace the key",
            hint=f"run 'chmod 700 {directory}'",
        )


def check_key_file(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeKeyFile(str(path), "it is not a regular file", hint=f"move {path} away")
    if info.st_uid != os.getuid():
        raise UnsafeKeyFile(str(path), "it belongs to another user", hint="use a key file of your own")
    if info.st_mode & 0o077:
        raise UnsafeKeyFile(
            str(path),
            f"others may read or change it (mode {stat.S_IMODE(info.st_mode):04o})",
            hint=f"run 'chmod 600 {path}' (ssh refuses such keys too)",
        )


def create_key(config_dir: Path, user: str) -> Ed25519PrivateKey:
    """A new key for ``user``, written owner-only; KeyExists if there is one already
    (it is never replaced: a new key is a new identity)."""
    path = key_path(config_dir, user)
    make_keys_dir(path.parent)
    check_keys_dir(path.parent, user, path)
    key = identity.generate_private_key()
    # Written whole under a temporary name, then linked to its name: the key file
    # never exists half-written, and link (unlike rename) fails when another
    # command created a key for the same user meanwhile, whose key then stands.
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    except OSError as error:
        raise cannot_write(path, error) from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(identity.private_key_pem(key))
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
        sync_directory(path.parent)
    except FileExistsError:
        raise KeyExists(user, str(path.parent)) from None
    except OSError as error:
        raise cannot_write(path, error) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
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


def make_keys_dir(directory: Path) -> None:
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise cannot_write(directory.parent, error) from None
    try:
        directory.mkdir(mode=KEYS_DIR_MODE)
        os.chmod(directory, KEYS_DIR_MODE)  # mkdir's mode passes through the umask
    except FileExistsError:
        return  # check_keys_dir judges it
    except OSError as error:
        raise cannot_write(directory, error) from None


def cannot_write(path: Path, error: OSError) -> MinigitError:
    return MinigitError(
        f"cannot write {path}: {error.strerror or error}",
        hint=f"check that you may write in it, or choose another config directory with {CONFIG_DIR_ENV}",
    )


def sync_directory(directory: Path) -> None:
    """Make a new name in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def key_info(config_dir: Path, user: str) -> KeyInfo:
    """``minigit auth show``: the public half of ``user``'s existing key."""
    return KeyInfo.of(user, key_path(config_dir, user), load_key(config_dir, user))


def generate_key(config_dir: Path, user: str) -> KeyInfo:
    """``minigit auth keygen``: a new key for ``user``, never replacing one."""
    return KeyInfo.of(user, key_path(config_dir, user), create_key(config_dir, user), created=True)
