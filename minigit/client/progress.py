"""Progress display for transfers: a spinner while the server works, a bar with
files, sizes and speed when a transfer is big enough to be worth watching.

What it shows is what happened, not what was asked for: an upload's bar counts
the bytes Kafka acknowledged (``Observer.uploaded``), a download's the bytes
received and verified; once an upload is all acknowledged, a spinner says that
the replicas are applying it, until the answer comes. Files are the objects of
the transfer but its tree (the first object of every upload and download: see
``exchange.Observer``), as the command's summary counts them; sizes are in MiB
on both sides of ``x/y MiB``, as the summary writes them.

Progress goes to stderr, only when it is a terminal, and never under --quiet or
--json (the CLI passes ``enabled``). ``Tally`` holds the arithmetic, so that it
is tested without a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from minigit.client.exchange import Observer

# Below these a transfer is over before a bar could say anything.
MIN_BAR_BYTES = 2 * 1024 * 1024
MIN_BAR_FILES = 20

MIB = 1024 * 1024

WAITING_FOR_SERVER = "Waiting for the server..."
WAITING_FOR_REPLICAS = "Waiting for the replicas to apply it..."


def mib(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f}"


@dataclass
class Tally:
    """One transfer's counts: ``files`` are its objects but the tree (the first
    object), ``total_bytes`` all of them, the tree's included (as the command's
    bytes_sent / bytes_received are). ``done_bytes`` never passes ``total_bytes``
    nor ``done_files`` ``files``: a bar never says more than there is."""

    total_bytes: int
    objects: int
    done_bytes: int = 0
    done_objects: int = 0

    @property
    def files(self) -> int:
        return max(0, self.objects - 1)

    @property
    def done_files(self) -> int:
        return min(self.files, max(0, self.done_objects - 1))

    def add_bytes(self, nbytes: int) -> int:
        """Count ``nbytes`` more; return how many the bar may advance by."""
        before = self.done_bytes
        self.done_bytes = min(self.total_bytes, before + max(0, nbytes))
        return self.done_bytes - before

    def add_object(self) -> None:
        self.done_objects = min(self.objects, self.done_objects + 1)

    @property
    def complete(self) -> bool:
        return self.done_bytes >= self.total_bytes and self.done_objects >= self.objects

    @property
    def files_label(self) -> str:
        return f"{self.done_files}/{self.files} files"

    @property
    def worth_a_bar(self) -> bool:
        return self.total_bytes >= MIN_BAR_BYTES or self.files >= MIN_BAR_FILES


class SizeColumn(ProgressColumn):
    """``1.5/3.2 MiB``: both sides in MiB."""

    def render(self, task: Task) -> Text:
        total = "?" if task.total is None else mib(task.total)
        return Text(f"{mib(task.completed)}/{total} MiB", style="progress.download")


class SpeedColumn(ProgressColumn):
    """``12.3 MiB/s``."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{mib(speed)} MiB/s", style="progress.data.speed")


class ProgressObserver(Observer):
    """Shows progress on stderr, when it is a terminal and output is not quiet.

    One display at a time: the spinner while waiting, the bar of the transfer in
    progress. An upload's bar is left on the screen, full, when the spinner that
    waits for the replicas takes over; a download's when the command ends."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.bars: Progress | None = None
        self.task: TaskID | None = None
        self.spinner: Progress | None = None
        self.tally: Tally | None = None
        self.uploading_now = False  # the bar (or the transfer, too small for one) is an upload's
        self.uploaded_any = False  # this command sent content: the wait is for the replicas to apply it

    def __enter__(self) -> ProgressObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_waiting()
        self.stop_bar()

    # -- the displays

    def new_bars(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            SizeColumn(),
            SpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )

    def start_bar(self, label: str, total_bytes: int, objects: int) -> None:
        self.stop_waiting()
        self.tally = Tally(total_bytes, objects)
        if not self.enabled or not self.tally.worth_a_bar:
            self.stop_bar()
            return
        if self.bars is None:
            self.bars = self.new_bars()
            self.bars.start()
        elif self.task is not None:
            self.bars.remove_task(self.task)  # an answer sent again after a failover, an upload sent again
        self.task = self.bars.add_task(label, total=total_bytes, files=self.tally.files_label)

    def stop_bar(self) -> None:
        if self.bars is not None:
            self.bars.stop()
        self.bars = self.task = None

    def advance(self, nbytes: int, objects: int = 0) -> None:
        if self.tally is None:
            return
        step = self.tally.add_bytes(nbytes)
        for _ in range(objects):
            self.tally.add_object()
        if self.bars is not None and self.task is not None:
            self.bars.update(self.task, advance=step, files=self.tally.files_label)

    def show_spinner(self, text: str) -> None:
        if not self.enabled:
            return
        if self.spinner is not None:
            self.spinner.update(self.spinner.task_ids[0], description=text)
            return
        self.spinner = Progress(SpinnerColumn(), TextColumn("{task.description}"), console=self.console, transient=True)
        self.spinner.start()
        self.spinner.add_task(text)

    def stop_waiting(self) -> None:
        if self.spinner is not None:
            self.spinner.stop()
            self.spinner = None

    # -- the hooks

    def uploading(self, total_bytes: int, blobs: int) -> None:
        self.uploading_now = self.uploaded_any = True
        self.start_bar("Sending  ", total_bytes, blobs)

    def uploaded(self, nbytes: int) -> None:
        self.advance(nbytes)

    def uploaded_object(self) -> None:
        self.advance(0, 1)

    def waiting(self) -> None:
        """The request is sent, its uploads acknowledged: from now on the wait is the service's."""
        if self.bars is not None and not self.uploading_now:
            return  # a download is on its way; a resend of its request changes nothing on the screen
        self.stop_bar()  # an upload's bar stays on the screen, as it ended
        self.uploading_now = False
        self.show_spinner(WAITING_FOR_REPLICAS if self.uploaded_any else WAITING_FOR_SERVER)

    def downloading(self, total_bytes: int, blobs: int) -> None:
        self.uploading_now = False
        self.start_bar("Receiving", total_bytes, blobs)

    def downloaded(self, nbytes: int) -> None:
        self.advance(nbytes)

    def downloaded_object(self) -> None:
        self.advance(0, 1)
