"""The progress display (rich), driven as the transport drives it."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from minigit.client.progress import (
    MIB,
    MIN_BAR_BYTES,
    MIN_BAR_FILES,
    WAITING_FOR_REPLICAS,
    WAITING_FOR_SERVER,
    ProgressObserver,
    Tally,
)


def terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=120, color_system=None), buffer


def test_a_big_transfer_shows_files_sizes_and_speed() -> None:
    console, buffer = terminal()
    with ProgressObserver(console, enabled=True) as observer:
        observer.waiting()
        observer.downloading(total_bytes=3 * MIN_BAR_BYTES, blobs=31)  # the tree and 30 files
        for _ in range(31):
            observer.downloaded(3 * MIN_BAR_BYTES // 31)
            observer.downloaded_object()
        observer.downloaded(3 * MIN_BAR_BYTES % 31)
    shown = buffer.getvalue()
    assert "Receiving" in shown and "30/30 files" in shown and "31/31" not in shown  # the tree is no file
    assert "6.0/6.0 MiB" in shown and "MiB/s" in shown  # MiB on both sides, as the summary writes sizes
    assert " MB" not in shown


def test_an_upload_bar_is_followed_by_a_spinner_until_the_answer() -> None:
    console, buffer = terminal()
    with ProgressObserver(console, enabled=True) as observer:
        observer.uploading(total_bytes=5 * MIB, blobs=3)
        observer.uploaded(MIB)
        assert observer.tally is not None and observer.tally.done_files == 0
        observer.uploaded_object()  # the tree
        observer.uploaded(4 * MIB)
        observer.uploaded_object()
        observer.uploaded_object()
        observer.waiting()
        assert observer.bars is None and observer.spinner is not None
        spinner_text = observer.spinner.tasks[0].description
    shown = buffer.getvalue()
    assert spinner_text == WAITING_FOR_REPLICAS and "2/2 files" in shown and "5.0/5.0 MiB" in shown
    assert observer.spinner is None  # stopped when the command ends


def test_without_an_upload_the_wait_is_the_servers() -> None:
    console, _ = terminal()
    with ProgressObserver(console, enabled=True) as observer:
        observer.waiting()
        assert observer.spinner is not None and observer.spinner.tasks[0].description == WAITING_FOR_SERVER
        observer.downloading(total_bytes=10, blobs=2)  # too small for a bar: the spinner goes all the same
        assert observer.spinner is None and observer.bars is None


def test_a_request_sent_again_during_a_download_leaves_its_bar() -> None:
    console, _ = terminal()
    with ProgressObserver(console, enabled=True) as observer:
        observer.downloading(total_bytes=4 * MIB, blobs=3)
        observer.waiting()
        assert observer.bars is not None and observer.spinner is None


def test_small_transfers_quiet_mode_and_pipes_show_nothing() -> None:
    console, buffer = terminal()
    with ProgressObserver(console, enabled=True) as observer:
        observer.uploading(total_bytes=1000, blobs=2)
        observer.uploaded(1000)
    assert "Sending" not in buffer.getvalue()

    console, buffer = terminal()
    with ProgressObserver(console, enabled=False) as observer:  # --quiet / --json
        observer.waiting()
        observer.uploading(total_bytes=10 * MIN_BAR_BYTES, blobs=100)
        observer.uploaded(MIN_BAR_BYTES)
        observer.waiting()
    assert buffer.getvalue() == ""

    piped = Console(file=io.StringIO(), force_terminal=False)
    with ProgressObserver(piped, enabled=True) as observer:
        observer.uploading(total_bytes=10 * MIN_BAR_BYTES, blobs=100)
        observer.waiting()
    assert piped.file.getvalue() == ""


# ---------------------------------------------------------------- the arithmetic


def test_the_tree_is_an_object_but_not_a_file() -> None:
    tally = Tally(total_bytes=100, objects=4)
    assert (tally.files, tally.done_files, tally.files_label) == (3, 0, "0/3 files")
    tally.add_object()  # the tree
    assert tally.done_files == 0
    for _ in range(3):
        tally.add_object()
    assert tally.files_label == "3/3 files"


@pytest.mark.parametrize("objects", [0, 1])
def test_a_transfer_of_its_tree_alone_has_no_files(objects: int) -> None:
    tally = Tally(total_bytes=10, objects=objects)
    tally.add_object()
    assert (tally.files, tally.done_files) == (0, 0)


def test_a_bar_never_says_more_than_there_is() -> None:
    tally = Tally(total_bytes=100, objects=2)
    assert [tally.add_bytes(n) for n in (60, 60, 5, -3)] == [60, 40, 0, 0]
    for _ in range(5):
        tally.add_object()
    assert (tally.done_bytes, tally.done_objects, tally.files_label, tally.complete) == (100, 2, "1/1 files", True)


def test_what_is_worth_a_bar() -> None:
    assert Tally(MIN_BAR_BYTES, 2).worth_a_bar and Tally(10, MIN_BAR_FILES + 1).worth_a_bar
    assert not Tally(MIN_BAR_BYTES - 1, MIN_BAR_FILES).worth_a_bar  # 19 files and the tree


def test_a_restarted_answer_starts_its_count_again() -> None:
    console, _ = terminal()
    with ProgressObserver(console, enabled=True) as observer:
        observer.downloading(total_bytes=4 * MIB, blobs=3)
        observer.downloaded(3 * MIB)
        observer.downloading(total_bytes=4 * MIB, blobs=3)  # a failover: the answer starts over
        observer.downloaded(4 * MIB)
        assert observer.tally is not None and observer.tally.done_bytes == 4 * MIB
        assert observer.bars is not None and len(observer.bars.tasks) == 1
        assert observer.bars.tasks[0].completed == 4 * MIB
