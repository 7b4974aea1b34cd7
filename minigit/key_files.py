"""Ed25519 private key files on disk, by path: PKCS8 PEM, mode 0600, in a
directory of mode 0700, written whole and never replaced.

Like ssh, a key file that others could read, or that others could replace (a
directory they may write, a file they own, a symlink), is refused rather than
used: a key anyone else may have read no longer proves who signed. Shared by the
users' keys (minigit.client.keys) and the service's key
(minigit_server.server_key): the server may not import the client's modules.
The key bytes themselves are handled by ``minigit.identity``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from minigit import identity
from minigit.errors import MinigitError, UnsafeKeyFile

KEYS_DIR = "keys"
KEY_SUFFIX = ".key"
KEY_FILE_MODE = 0o600
KEYS_DIR_MODE = 0o700


def load_key_file(path: Path, elsewhere: str) -> Ed25519PrivateKey | None:
    """The key in ``path``; None when it (or its directory) does not exist.
    UnsafeKeyFile if others could read or replace it, MalformedKey if it holds no
    Ed25519 key. ``elsewhere`` ends the hint of an unreadable directory."""
    if not check_keys_dir(path.parent, path, elsewhere):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO would block
    except FileNotFoundError:
        return None
    except OSError as error:
        if path.is_symlink():
            raise UnsafeKeyFile(str(path), "it is a symbolic link", hint="put the key file itself there") from None
        raise UnsafeKeyFile(str(path), f"cannot open it ({error.strerror})", hint="check its permissions") from None
    try:
        # checked on the open descriptor, before anything wraps it (a directory cannot be
        # read as a file): the name could be switched to another file after a check by name
        check_key_file(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as file:
        data = file.read(identity.MAX_PRIVATE_KEY_FILE_BYTES + 1)
    return identity.load_private_key_pem(data, f"key file {path}")


def check_keys_dir(directory: Path, path: Path, elsewhere: str) -> bool:
    """Whether ``directory`` exists; UnsafeKeyFile if others could replace ``path`` in it."""
    try:
        info = directory.lstat()
    except FileNotFoundError:
        return False
    except OSError as error:  # a part of the path is a file, or may not be searched
        raise MinigitError(
            f"cannot read {directory}: {error.strerror or error}", hint=f"check that path, or {elsewhere}"
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
    return True


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


def write_new_key_file(path: Path, key: Ed25519PrivateKey, elsewhere: str) -> bool:
    """Write ``key`` to ``path`` owner-only; False, writing nothing, if a file is
    there already (a key is never replaced: a new key is a new identity)."""
    make_keys_dir(path.parent, elsewhere)
    if not check_keys_dir(path.parent, path, elsewhere):
        raise cannot_write(path.parent, FileNotFoundError(2, "No such file or directory"), elsewhere)
    # Written whole under a temporary name, then linked to its name: the key file
    # never exists half-written, and link (unlike rename) fails when another
    # command created a key there meanwhile, whose key then stands.
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    except OSError as error:
        raise cannot_write(path, error, elsewhere) from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(identity.private_key_pem(key))
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
        sync_directory(path.parent)
    except FileExistsError:
        return False
    except OSError as error:
        raise cannot_write(path, error, elsewhere) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return True


def make_keys_dir(directory: Path, elsewhere: str) -> None:
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise cannot_write(directory.parent, error, elsewhere) from None
    try:
        directory.mkdir(mode=KEYS_DIR_MODE)
        os.chmod(directory, KEYS_DIR_MODE)  # mkdir's mode passes through the umask
    except FileExistsError:
        return  # check_keys_dir judges it
    except OSError as error:
        raise cannot_write(directory, error, elsewhere) from None


def cannot_write(path: Path, error: OSError, elsewhere: str) -> MinigitError:
    return MinigitError(
        f"cannot write {path}: {error.strerror or error}", hint=f"check that you may write in it, or {elsewhere}"
    )


def sync_directory(directory: Path) -> None:
    """Make a new name in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
