"""The ingest progress display: a rich bar over files and a running count of chunks."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import TextColumn

from ingest.pipeline import Problem, Progress
from rag.cli import progress_bar
from rag.terminal import printable


def _name(path: str) -> str:
    """A file's name for one line of the display: control characters shown, not obeyed."""
    return printable(Path(path).name, one_line=True)


class RichProgress(Progress):
    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = progress_bar(TextColumn("{task.fields[detail]}", markup=False), console=console)
        self.files = self.bar.add_task("files", total=None, detail="")
        self.chunks = self.bar.add_task("chunks embedded", total=None, detail="")

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def files_total(self, n: int) -> None:
        self.bar.update(self.files, total=n)

    def file_done(self, path: str) -> None:
        self.bar.update(self.files, advance=1, detail=_name(path)[:40])

    def chunks_done(self, n: int) -> None:
        self.bar.update(self.chunks, advance=n)

    def note(self, text: str) -> None:
        self.bar.update(self.files, detail=printable(text, one_line=True))

    def working(self, path: str, stage: str, done: int, total: int) -> None:
        """Inside one large file: how far its chunking (characters) or embedding (chunks) is."""
        if stage == "reading":  # a file just started: a slow one is named while it is read
            self.bar.update(self.files, detail=_name(path)[:40])
            return
        share = f"{done / total:.0%}" if stage == "chunking" else f"{done:,}/{total:,}"
        task = self.files if stage == "chunking" else self.chunks
        self.bar.update(task, detail=f"{_name(path)[:40]}: {stage} {share}")

    def announce(self, text: str) -> None:
        self.console.print(escape(printable(text)), highlight=False)

    def problem(self, problem: Problem) -> None:
        mark = "[red]failed[/]" if problem.status == "failed" else "[yellow]empty[/]"
        where = escape(printable(problem.path, one_line=True))
        self.console.print(f"{mark} {where}: {escape(printable(problem.reason))}", highlight=False)
