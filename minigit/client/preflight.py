"""Checks a command makes before it prints anything or connects: pure (they read
the file system, change nothing), and raising the same errors the operation
itself would raise later, so that a command never says what it is about to do
("Cloning into 'x'...") and then refuses to do it.
"""

from __future__ import annotations

import os
from pathlib import Path

from minigit import protocol as p
from minigit.client import workspace as ws
from minigit.errors import CorruptMetadata, MinigitError, NoRepository, UsageError


def clone_destination(name: str, directory: Path | None) -> Path:
    """Where ``minigit clone NAME [DIRECTORY]`` puts the clone (DIRECTORY, else
    NAME), once NAME is a valid repository name and the place is usable: nothing
    there yet, under a directory (the nearest one that exists) this user may
    write in; an empty directory; or an unfinished clone of NAME, which the
    clone finishes. A file, or a directory holding anything else, is a usage
    error, as ``operations.clone_repository`` says it."""
    p.check_name("repository", name)
    target = directory or Path(name)
    path = target.absolute()
    if path.exists() or path.is_symlink():  # a symlink that leads nowhere is in the way too
        if is_unfinished_clone_of(path, name):
            return target
        if not path.is_dir() or not is_vacant(path):
            raise UsageError(f"destination path '{path}' already exists and is not an empty directory")
        return target
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot create '{path}': '{parent}' is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MinigitError(f"cannot create '{path}': permission denied in '{parent}'")
    return target


def is_unfinished_clone_of(directory: Path, name: str) -> bool:
    try:
        meta = ws.read_metadata(directory)
    except (NoRepository, CorruptMetadata, OSError):
        return False
    return meta.unfinished and meta.repository == name


def is_vacant(directory: Path) -> bool:
    try:
        return ws.is_vacant(directory)
    except OSError as error:
        raise MinigitError(f"cannot read '{directory}': {error.strerror or error}") from None
