"""Progress rendering: throttled plain lines off a terminal, rich bars on one."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from model_cli.errors import StreamError
from model_cli.progress import LiveDisplay, PlainDisplay, open_display, show_transfer, verbs_for
from model_cli.wire import LayerProgress, TransferEvent
from tests.unit.cli.conftest import ManualClock

WEIGHTS = "sha256:" + "1" * 64
LICENSE = "sha256:" + "2" * 64
MB = 1_000_000


def plain(
    clock: ManualClock, interval: float = 1.0, mode: str = "pull"
) -> tuple[PlainDisplay, io.StringIO]:
    out = io.StringIO()
    return PlainDisplay(Console(file=out, width=200), verbs_for(mode), clock, interval), out


def progress(digest: str, current: int, size: int, message: str = "") -> TransferEvent:
    return TransferEvent("progress", message, "pull", size, LayerProgress(digest, size, current))


def test_plain_lines_are_throttled_per_layer(clock: ManualClock) -> None:
    display, out = plain(clock)
    display.update("w", "111111111111", 0, 100 * MB)
    clock.advance(0.5)
    display.update("w", "111111111111", 10 * MB, 100 * MB)  # within the interval: dropped
    display.update("l", "222222222222", 0, 10 * MB)  # another layer has its own throttle
    clock.advance(0.6)
    display.update("w", "111111111111", 30 * MB, 100 * MB)
    assert out.getvalue().splitlines() == [
        "Downloading 111111111111: 0 bytes / 100.0 MB (0%)",
        "Downloading 222222222222: 0 bytes / 10.0 MB (0%)",
        "Downloading 111111111111: 30.0 MB / 100.0 MB (30%)",
    ]


def test_a_finished_layer_always_says_so_once(clock: ManualClock) -> None:
    display, out = plain(clock, interval=3600)
    display.update("w", "111111111111", 0, 100 * MB)
    display.update("w", "111111111111", 100 * MB, 100 * MB)
    display.update("w", "111111111111", 100 * MB, 100 * MB)
    assert out.getvalue().splitlines() == [
        "Downloading 111111111111: 0 bytes / 100.0 MB (0%)",
        "Downloaded 111111111111: 100.0 MB",
    ]


def test_push_verbs_existing_layers_and_unknown_sizes(clock: ManualClock) -> None:
    display, out = plain(clock, mode="push")
    display.update("a", "aaaaaaaaaaaa", 5, 0)
    display.update("b", "bbbbbbbbbbbb", 10, 10, exists=True)
    display.update("c", "cccccccccccc", 10, 10)
    assert out.getvalue().splitlines() == [
        "Uploading aaaaaaaaaaaa: 5 bytes",
        "bbbbbbbbbbbb: already exists",
        "Pushed cccccccccccc: 10 bytes",
    ]


def test_show_transfer_returns_the_success_message(clock: ManualClock) -> None:
    out = io.StringIO()
    events = [
        progress(WEIGHTS, 0, 2 * MB),
        TransferEvent("warning", "slow registry", "pull"),
        progress(WEIGHTS, 2 * MB, 2 * MB),
        progress(LICENSE, 10, 10, message="Layer already exists: x"),
        TransferEvent("success", "Model pulled successfully", "pull"),
    ]
    message = show_transfer(events, Console(file=out, width=200), "pull", clock=clock, interval=1)
    assert message == "Model pulled successfully"
    assert out.getvalue().splitlines() == [
        "Downloading 111111111111: 0 bytes / 2.0 MB (0%)",
        "Warning: slow registry",
        "Downloaded 111111111111: 2.0 MB",
        "222222222222: already exists",
    ]


def test_an_error_line_fails_the_transfer(clock: ManualClock) -> None:
    events = [
        progress(WEIGHTS, 0, MB),
        TransferEvent("error", "Error: registry unavailable", "pull"),
    ]
    with pytest.raises(StreamError, match=r"^registry unavailable$"):
        show_transfer(events, Console(file=io.StringIO()), "pull", clock=clock, interval=1)


def test_a_stream_that_ends_without_success_fails(clock: ManualClock) -> None:
    with pytest.raises(StreamError, match="push ended before it reported success"):
        show_transfer(
            [progress(WEIGHTS, 0, MB)], Console(file=io.StringIO()), "push", clock=clock, interval=1
        )


def test_the_display_follows_the_terminal(clock: ManualClock) -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True)
    pipe = Console(file=io.StringIO(), force_terminal=False)
    assert isinstance(open_display(terminal, "pull", clock=clock, interval=1), LiveDisplay)
    assert isinstance(open_display(pipe, "pull", clock=clock, interval=1), PlainDisplay)


def test_live_bars_show_bytes_and_state() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    display = LiveDisplay(console, verbs_for("pull"))
    display.update(WEIGHTS, "111111111111", 50 * MB, 100 * MB)
    display.update(LICENSE, "222222222222", 10, 10, exists=True)
    display.update(WEIGHTS, "111111111111", 100 * MB, 100 * MB)
    display.close()
    text = out.getvalue()
    assert "\x1b[" in text  # cursor control: a live display, not lines
    assert "Downloaded  111111111111" in text
    assert "Exists      222222222222" in text
    assert "100.0/100.0 MB" in text


def test_a_cache_hit_draws_no_bars(clock: ManualClock) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True)
    message = show_transfer(
        [TransferEvent("success", "Using cached model: 98.36 MB", "pull")],
        console,
        "pull",
        clock=clock,
        interval=1,
    )
    assert message.startswith("Using cached model")
    assert out.getvalue() == ""
