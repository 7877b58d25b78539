"""`logs`: which files, merged history, and following appended lines."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from model_cli.errors import LogsError
from model_cli.logs import LogFollower, LogSource, history, log_sources, read_source


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    logs = tmp_path / "logs"
    runtime = tmp_path / "runtime"
    logs.mkdir()
    (runtime / "logs").mkdir(parents=True)
    (logs / "gateway.log").write_text(
        "2026-01-01 10:00:01,500 INFO gateway a: started\n"
        "2026-01-01 10:00:03,000 ERROR gateway a: boom\n"
        "Traceback (most recent call last):\n"
        "  ValueError: x\n"
    )
    (logs / "registry.log").write_text(
        "2026-01-01 10:00:01,100 INFO registry r: serving\n"
        "2026-01-01 10:00:02,000 INFO registry r: packaged\n"
    )
    (runtime / "logs" / "w-abc.log").write_text("main: loading model\nsrv: listening\n")
    return logs, runtime


def lines_of(
    logs: Path, runtime: Path, services: list[str], *, engines: bool = True, tail: int | None = None
) -> list[str]:
    sources = log_sources(logs, runtime, services, engines=engines)
    return history([(s, read_source(s)[0]) for s in sources], tail=tail)


def test_services_merge_by_time_and_keep_continuation_lines(dirs: tuple[Path, Path]) -> None:
    assert lines_of(*dirs, []) == [
        "2026-01-01 10:00:01,100 INFO registry r: serving",
        "2026-01-01 10:00:01,500 INFO gateway a: started",
        "2026-01-01 10:00:02,000 INFO registry r: packaged",
        "2026-01-01 10:00:03,000 ERROR gateway a: boom",
        "Traceback (most recent call last):",
        "  ValueError: x",
        "[llama-server w-abc] main: loading model",
        "[llama-server w-abc] srv: listening",
    ]


def test_selection_and_tail(dirs: tuple[Path, Path]) -> None:
    assert lines_of(*dirs, ["registry"]) == [
        "2026-01-01 10:00:01,100 INFO registry r: serving",
        "2026-01-01 10:00:02,000 INFO registry r: packaged",
    ]
    assert lines_of(*dirs, ["llama-server"]) == [
        "[llama-server w-abc] main: loading model",
        "[llama-server w-abc] srv: listening",
    ]
    assert lines_of(*dirs, [], engines=False, tail=2) == [
        "Traceback (most recent call last):",
        "  ValueError: x",
    ]
    assert lines_of(*dirs, [], tail=1) == ["  ValueError: x", "[llama-server w-abc] srv: listening"]
    assert lines_of(*dirs, [], tail=0) == []


def test_missing_directory_or_service(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    logs, runtime = dirs
    with pytest.raises(
        LogsError, match=r"no log directory at .*nowhere: the local stack \(`make run`\)"
    ):
        log_sources(tmp_path / "nowhere", runtime, [], engines=True)
    with pytest.raises(LogsError, match="no scheduler log at"):
        log_sources(logs, runtime, ["scheduler"], engines=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LogsError, match="no log files in"):
        log_sources(empty, tmp_path / "no-runtime", [], engines=True)


def test_a_line_still_being_written_is_left_for_the_follower(tmp_path: Path) -> None:
    (tmp_path / "gateway.log").write_text("one\ntw")
    (source,) = log_sources(tmp_path, tmp_path, ["gateway"], engines=False)
    lines, end = read_source(source)
    assert (lines, end) == (["one"], 4)
    out = io.StringIO()
    follower = LogFollower([source], {source.path: end}, discover=lambda: [source], out=out)
    with source.path.open("a") as log:
        log.write("o\nthree")
    assert follower.poll() == 1
    with source.path.open("a") as log:
        log.write("\n")
    assert follower.poll() == 1
    assert out.getvalue() == "two\nthree\n"


def test_follow_handles_truncation_and_new_engine_logs(dirs: tuple[Path, Path]) -> None:
    logs, runtime = dirs

    def find() -> list[LogSource]:
        return log_sources(logs, runtime, [], engines=True)

    sources = find()
    offsets = {s.path: read_source(s)[1] for s in sources}
    out = io.StringIO()
    follower = LogFollower(list(sources), offsets, discover=find, out=out)
    assert follower.poll() == 0

    (logs / "registry.log").write_text("2026-01-01 11:00:00,000 INFO registry r: restarted\n")
    (runtime / "logs" / "w-new.log").write_text("main: new runner\n")
    steps = iter(range(2))

    def wait() -> None:
        if next(steps) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        follower.follow(wait)
    assert out.getvalue().splitlines() == [
        "2026-01-01 11:00:00,000 INFO registry r: restarted",
        "[llama-server w-new] main: new runner",
    ]
