"""What the terminal shows: text from documents, file names and models made printable (never
obeyed: see rag.terminal), and the progress bar of every long job."""

from __future__ import annotations

import contextlib
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
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
def progress_bar(*extra: ProgressColumn, console: Console = err) -> Progress:
    """The bar of every long `rag` job (ingest, evaluation, training data, training): description,
    bar, done/total, any extra columns (the file being read, the training loss), elapsed and
    remaining time, on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
