"""What the terminal shows: text from documents, file names and models made printable (never
obeyed: see rag.terminal), and the progress bar of every long job."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cli.common import err
from rag.terminal import printable


# ---- text --------------------------------------------------------------------------------------
def snippet(text: str, width: int = 160) -> str:
    """A passage on one line, cut to `width` characters."""
    flat = " ".join(text.split())
    flat = flat if len(flat) <= width else flat[: width - 1] + "…"
    return printable(flat, one_line=True)


def display_path(path: str) -> str:
    """A stored document path as the user knows it: relative to here when under here, with
    any control characters shown as escapes."""
    with contextlib.suppress(ValueError):
        path = str(Path(path).relative_to(Path.cwd()))
    return printable(path, one_line=True)


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ---- progress ----------------------------------------------------------------------------------
LOG_EVERY_S = 30.0  # off a terminal: one status line per task at most this often


def progress_bar(*extra: ProgressColumn, console: Console = err) -> Progress:
    """The bar of every long `rag` job (ingest, evaluation, training data, training): description,
    bar, done/total, any extra columns (the file being read, the training loss), elapsed and
    remaining time, on stderr.  Into a log file or a pipe, where rich draws nothing until the job
    ends, the same information comes as plain lines every LOG_EVERY_S seconds instead."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    if console.is_terminal:
        return Progress(*columns, console=console)
    return LoggedProgress(*columns, console=console, every_s=LOG_EVERY_S)


class LoggedProgress(Progress):
    """A progress bar for a log: an hour's ingest under `nohup` or in CI showed nothing until it
    ended.  One line per visible task, at most every `every_s` seconds: after an update, or from a
    ticker while nothing reports (one large file being read), so a log never looks hung."""

    def __init__(self, *columns: ProgressColumn, console: Console, every_s: float, **options: Any) -> None:
        super().__init__(*columns, console=console, auto_refresh=False, **options)  # no live display to redraw
        self.every_s = every_s
        self.logged_at = time.monotonic()
        self._ended = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        self._ended.clear()
        self._ticker = threading.Thread(target=self._tick, name="rag-progress-log", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        self._ended.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        super().stop()

    def update(self, task_id: TaskID, **changes: Any) -> None:
        super().update(task_id, **changes)
        self._log_when_due()

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log_when_due()

    def _tick(self) -> None:
        while not self._ended.wait(max(self.every_s, 0.05)):
            self._log_when_due()

    def _log_when_due(self) -> None:
        with self._lock:  # the ticker and the job's own thread
            now = time.monotonic()
            if now - self.logged_at < self.every_s:
                return
            self.logged_at = now
            lines = [status_line(task) for task in self.tasks if task.visible]
        for line in lines:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def status_line(task: Task) -> str:
    """`files 12/49 · 3:20 elapsed · about 10:05 left · report.pdf: embedding 120/800`; fields
    other than the ingest's `detail` are named (`loss 0.532`)."""
    done = f"{task.completed:,.0f}" + (f"/{task.total:,.0f}" if task.total is not None else "")
    parts = [f"{printable(task.description, one_line=True)} {done}", f"{_clock(task.elapsed or 0)} elapsed"]
    left = _time_left(task)
    if left is not None:
        parts.append(f"about {_clock(left)} left")
    fields = [str(value) if name == "detail" else f"{name} {value}" for name, value in task.fields.items()]
    parts += [printable(field, one_line=True) for field in fields if field]
    return " · ".join(parts)


def _time_left(task: Task) -> float | None:
    """From the whole run's pace.  rich's own estimate is the speed between its updates of the
    last 30 s, and it stands still between them: an ingest of filings a minute each logged
    "about 2:39 left" for 20 minutes at 9 of 49 files."""
    if task.total is None or not task.completed or task.elapsed is None or task.finished:
        return None
    return task.elapsed * max(task.total - task.completed, 0) / task.completed


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
