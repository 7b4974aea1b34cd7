"""Progress display for transfers: a spinner while the server works, a bar with
files, bytes and speed when a transfer is big enough to be worth watching."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from minigit.client.exchange import Observer

# Below these a transfer is over before a bar could say anything.
MIN_BAR_BYTES = 2 * 1024 * 1024
MIN_BAR_FILES = 20


class ProgressObserver(Observer):
    """Shows progress on stderr, when it is a terminal and output is not quiet."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.enabled = enabled and console.is_terminal
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.spinner = Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True)
        self.task: TaskID | None = None
        self.waiting_task: TaskID | None = None
        self.files_total = self.files_done = 0

    def __enter__(self) -> ProgressObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_waiting()
        if self.task is not None:
            self.bars.stop()

    def start_bar(self, label: str, total_bytes: int, files: int) -> None:
        self.stop_waiting()
        if not self.enabled or (total_bytes < MIN_BAR_BYTES and files < MIN_BAR_FILES):
            return
        if self.task is None:
            self.bars.start()
        else:
            self.bars.remove_task(self.task)  # an answer sent again after a failover
        self.files_total, self.files_done = files, 0
        self.task = self.bars.add_task(label, total=total_bytes, files=self.files_label())

    def files_label(self) -> str:
        return f"{self.files_done}/{self.files_total} files"

    def advance(self, nbytes: int, files: int = 0) -> None:
        if self.task is not None:
            self.files_done += files
            self.bars.update(self.task, advance=nbytes, files=self.files_label())

    def uploading(self, total_bytes: int, blobs: int) -> None:
        self.start_bar("Sending  ", total_bytes, blobs)

    def uploaded(self, nbytes: int) -> None:
        self.advance(nbytes)

    def uploaded_object(self) -> None:
        self.advance(0, 1)

    def downloading(self, total_bytes: int, blobs: int) -> None:
        self.start_bar("Receiving", total_bytes, blobs)

    def downloaded(self, nbytes: int) -> None:
        self.advance(nbytes)

    def downloaded_object(self) -> None:
        self.advance(0, 1)

    def waiting(self) -> None:
        if self.enabled and self.waiting_task is None and self.task is None:
            self.spinner.start()
            self.waiting_task = self.spinner.add_task("Waiting for the server...")

    def stop_waiting(self) -> None:
        if self.waiting_task is not None:
            self.spinner.stop()
            self.waiting_task = None
