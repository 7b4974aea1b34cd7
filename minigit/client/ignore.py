"""``.minigitignore``: gitignore-style patterns of files minigit leaves alone.

The file lives at the top of the working directory and is itself tracked
(like ``.gitignore``). Ignored files are neither pushed nor reported by status.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pathspec

IGNORE_NAME = ".minigitignore"


def parse_ignore(text: str) -> Callable[[str, bool], bool]:
    spec = pathspec.GitIgnoreSpec.from_lines(text.splitlines())

    def ignored(path: str, is_dir: bool) -> bool:
        return spec.match_file(path + "/" if is_dir else path)

    return ignored


def load_ignore(root: Path) -> Callable[[str, bool], bool]:
    try:
        text = (root / IGNORE_NAME).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return lambda path, is_dir: False
    return parse_ignore(text)
