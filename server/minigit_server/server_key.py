"""The service's Ed25519 key: it signs replies (minigit.sealing.sign_reply), and
clients pin its public half on first contact (minigit.client.known_servers).

By default it lives in ``<data dir>/keys/server.key``: the layout of a user's key
(``minigit.client.keys`` with the data dir as config dir and the user name
``server``), written and checked by the same code (``minigit.key_files``), so it
is PKCS8 PEM, mode 0600 in a 0700 directory, created on first start, never
replaced, and refused when others could read or replace it.

Every replica of a service must sign with the same key, or clients would see it
change from one answer to the next: replicas sharing a data dir share it; on
several hosts, copy the file (mode 0600) into each data dir, or give each the
path of a copy. A key given by path is only loaded, never created: a missing
file there is an error, not a new identity made silently on one host.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from minigit import identity, key_files
from minigit.errors import MinigitError

SERVER_KEY_NAME = "server" + key_files.KEY_SUFFIX
# The end of the hint when the data dir cannot be read or written.
ELSEWHERE = "choose another data directory with --data-dir (MINIGIT_DATA_DIR)"


def server_key_path(data_dir: Path) -> Path:
    return data_dir / key_files.KEYS_DIR / SERVER_KEY_NAME


def load_or_create_server_key(data_dir: Path, path: Path | None = None) -> tuple[Ed25519PrivateKey, bool]:
    """The service's key, and whether it was created now: ``path`` if given (which
    must exist), else ``<data_dir>/keys/server.key``, created on first use.
    UnsafeKeyFile if others could read or replace it, MalformedKey if the file
    holds no Ed25519 key."""
    if path is not None:
        return load_server_key(path), False
    default = server_key_path(data_dir)
    key = key_files.load_key_file(default, ELSEWHERE)
    if key is not None:
        return key, False
    key = identity.generate_private_key()
    if key_files.write_new_key_file(default, key, ELSEWHERE):
        return key, True
    return load_server_key(default), False  # another replica created it between the two steps


def load_server_key(path: Path) -> Ed25519PrivateKey:
    """The key in ``path``, with the checks of every key file; an error if there is none."""
    key = key_files.load_key_file(path, ELSEWHERE)
    if key is None:
        raise MinigitError(
            f"no server key in {path}",
            hint="copy the service's key file there (mode 0600, in a directory only you may write), "
            "or leave the key path out to use <data dir>/keys/server.key",
        )
    return key
