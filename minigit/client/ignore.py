"""``.minigitignore``: gitignore-style patterns of files minigit leaves alone.

As with git's ``.gitignore``, there may be one in any folder: its patterns are
relative to that folder (``/x`` is ``x`` there, not at the top), and a deeper
file overrides a shallower one (``!keep.log`` in ``logs/`` brings back what
``*.log`` at the top ignores). Within a file, the last matching pattern wins; a
file in an ignored folder cannot be brought back (the folder is not looked into).
The files are themselves tracked. Ignored files are neither pushed nor reported
by status, unless they are tracked already: ignoring does not untrack.

Parsing is apart from reading: the scan (workspace) reads the files on its way down.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pathspec

IGNORE_NAME = ".minigitignore"


@dataclass(frozen=True)
class Rules:
    """The patterns of one ``.minigitignore``, and its folder ("" at the top, else ending in '/')."""

    folder: str
    spec: pathspec.GitIgnoreSpec


@dataclass(frozen=True)
class Ignores:
    """The ``.minigitignore`` files that apply in a folder: those of the folders
    above it and its own, shallowest first."""

    rules: tuple[Rules, ...] = ()

    def below(self, folder: str, text: str) -> Ignores:
        """These, with the patterns ``text`` of the file in ``folder`` ("" or 'a/b/')."""
        spec = parse_patterns(text)
        if all(pattern.include is None for pattern in spec.patterns):
            return self  # only comments and blank lines: nothing to match, nothing to spend time on
        return Ignores((*self.rules, Rules(folder, spec)))

    def ignored(self, path: str, is_dir: bool) -> bool:
        """Whether ``path`` (from the top) is ignored: the deepest file with a
        pattern that matches it decides."""
        for rules in reversed(self.rules):
            relative = path[len(rules.folder) :]
            include = rules.spec.check_file(relative + "/" if is_dir else relative).include
            if include is not None:
                return include
        return False

    def __bool__(self) -> bool:
        return bool(self.rules)


NO_IGNORES = Ignores()


def parse_patterns(text: str) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines(text.splitlines())


def read_ignore_file(path: Path) -> str | None:
    """The text of a ``.minigitignore`` (undecodable bytes replaced), None if it is
    not a regular file: a link is not followed (as git since 2.32), a fifo not waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    with open(fd, "rb") as file:
        return file.read().decode("utf-8", errors="replace")


def parse_ignore(text: str) -> Callable[[str, bool], bool]:
    """The patterns of one top-level file, as a predicate ``ignored(path, is_dir)``."""
    return NO_IGNORES.below("", text).ignored


def load_ignore(root: Path) -> Callable[[str, bool], bool]:
    """The top-level ``.minigitignore`` of ``root`` as a predicate (the nested ones
    are read by the scan, ``workspace.scan_workdir``)."""
    text = read_ignore_file(root / IGNORE_NAME)
    return parse_ignore(text or "")
