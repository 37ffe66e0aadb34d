"""The ingest progress display: a rich bar over files and a running count of chunks."""

from __future__ import annotations

from rich.console import Console
from rich.progress import TextColumn

from ingest.pipeline import Problem, Progress
from rag.cli import progress_bar


class RichProgress(Progress):
    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = progress_bar(TextColumn("{task.fields[detail]}"), console=console)
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
        name = path.rsplit("/", 1)[-1]
        self.bar.update(self.files, advance=1, detail=name[:40])

    def chunks_done(self, n: int) -> None:
        self.bar.update(self.chunks, advance=n)

    def note(self, text: str) -> None:
        self.bar.update(self.files, detail=text)

    def problem(self, problem: Problem) -> None:
        mark = "[red]failed[/]" if problem.status == "failed" else "[yellow]empty[/]"
        self.console.print(f"{mark} {problem.path}: {problem.reason}", highlight=False)
