"""The progress bar into a log: rich draws nothing there until the job ends, so status lines."""

from __future__ import annotations

import io
import time

from rich.console import Console

from cli import display
from cli.display import LoggedProgress, progress_bar, status_line


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    sink = io.StringIO()
    return Console(file=sink, force_terminal=terminal, width=200), sink


def test_into_a_log_each_update_prints_a_line_per_task_when_due(monkeypatch) -> None:
    monkeypatch.setattr(display, "LOG_EVERY_S", 0)
    log, sink = console(terminal=False)
    with progress_bar(console=log) as bar:
        files = bar.add_task("files", total=3, detail="")
        chunks = bar.add_task("chunks embedded", total=None, detail="")
        bar.update(files, advance=1, detail="rapport annuel.pdf")
        bar.advance(chunks, 40)
    lines = sink.getvalue().splitlines()
    assert isinstance(bar, LoggedProgress)
    assert any(line.startswith("files 1/3 · 0:00 elapsed") and line.endswith(" · rapport annuel.pdf") for line in lines)
    assert any(line.startswith("chunks embedded 0 · 0:00 elapsed") for line in lines), "a count with no total yet"
    assert any(line.startswith("chunks embedded 40 · ") for line in lines), "every task at each update"


def test_a_job_that_reports_nothing_for_a_while_still_gets_its_lines() -> None:
    """One large file being read sends no update for minutes; the log must not look hung."""
    log, sink = console(terminal=False)
    with LoggedProgress(console=log, every_s=0.05) as bar:
        bar.add_task("files", total=10, detail="big.pdf")
        give_up = time.monotonic() + 10
        while "files 0/10" not in sink.getvalue() and time.monotonic() < give_up:
            time.sleep(0.01)
    lines = sink.getvalue().splitlines()
    assert any(line.startswith("files 0/10 · ") and line.endswith(" · big.pdf") for line in lines)


def test_lines_come_at_most_every_interval_and_a_terminal_gets_the_live_bar_only() -> None:
    log, sink = console(terminal=False)
    with LoggedProgress(console=log, every_s=3600) as bar:
        task = bar.add_task("questions", total=100)
        for _ in range(100):
            bar.advance(task)
    assert len(sink.getvalue().splitlines()) == 1, "no line before the interval: only the final bar"

    terminal, _ = console(terminal=True)
    assert not isinstance(progress_bar(console=terminal), LoggedProgress)


def test_a_status_line_names_its_extra_fields_and_shows_no_control_characters() -> None:
    log, _ = console(terminal=False)
    bar = LoggedProgress(console=log, every_s=3600)
    task = bar.add_task("training", total=200, completed=50, loss="0.532", detail="evil\x1b[2Jname.pdf")
    line = status_line(bar.tasks[task])
    assert line.startswith("training 50/200 · 0:00 elapsed") and " · loss 0.532 · " in line
    assert "\x1b" not in line and "name.pdf" in line


def test_the_time_left_follows_the_whole_runs_pace_and_grows_while_a_step_takes_long() -> None:
    """rich's estimate froze at "about 2:39 left" for 20 minutes of a 49-file ingest."""
    now = [0.0]
    log, _ = console(terminal=False)
    bar = LoggedProgress(console=log, every_s=3600, get_time=lambda: now[0])
    task = bar.add_task("files", total=49)
    assert "left" not in status_line(bar.tasks[task]), "no estimate before the first step"
    now[0] = 355.0
    bar.update(task, completed=9)
    assert " · 5:55 elapsed · about 26:17 left" in status_line(bar.tasks[task])  # 355 s / 9 files x 40 to go
    now[0] = 415.0  # one file taking long: nothing reported for a minute
    assert " · 6:55 elapsed · about 30:44 left" in status_line(bar.tasks[task])
