"""The progress display (rich), driven as the transport drives it."""

from __future__ import annotations

import io

from rich.console import Console

from minigit.client.progress import MIN_BAR_BYTES, ProgressObserver


def terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=120, color_system=None), buffer


def test_a_big_transfer_shows_files_bytes_and_speed() -> None:
    console, buffer = terminal()
    with ProgressObserver(console, enabled=True) as observer:
        observer.waiting()
        observer.downloading(total_bytes=3 * MIN_BAR_BYTES, blobs=30)
        for _ in range(30):
            observer.downloaded(MIN_BAR_BYTES // 10)
            observer.downloaded_object()
    shown = buffer.getvalue()
    assert "Receiving" in shown and "30/30 files" in shown
    assert "MB" in shown and "/s" in shown  # bytes and speed columns


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
    assert buffer.getvalue() == ""

    piped = Console(file=io.StringIO(), force_terminal=False)
    with ProgressObserver(piped, enabled=True) as observer:
        observer.uploading(total_bytes=10 * MIN_BAR_BYTES, blobs=100)
    assert piped.file.getvalue() == ""
