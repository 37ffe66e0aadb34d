"""What an ingest shows: live progress over files and chunks while it runs, and the summary
table after (`rag ingest`, `rag eval corpus`)."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import TextColumn
from rich.table import Table

from cli.common import out
from cli.display import progress_bar
from ingest.pipeline import IngestReport, Problem, Progress
from rag.terminal import printable


def _name(path: str) -> str:
    """A file's name for one line of the display: control characters shown, not obeyed."""
    return printable(Path(path).name, one_line=True)


class RichProgress(Progress):
    """The ingest progress display: a rich bar over files and a running count of chunks."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = progress_bar(TextColumn("{task.fields[detail]}", markup=False), console=console)
        self.files = self.bar.add_task("files", total=None, detail="")
        self.chunks = self.bar.add_task("chunks embedded", total=None, detail="")
        self.ocr: int | None = None  # a bar of its own once a page needs OCR: the slow part
        self.ocr_counted: dict[str, int] = {}  # per file: its OCR pages already added to the bar's total

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
        if stage == "ocr":
            self._ocr(path, done, total)
            return
        share = f"{done / total:.0%}" if stage == "chunking" else f"{done:,}/{total:,}"
        task = self.files if stage == "chunking" else self.chunks
        self.bar.update(task, detail=f"{_name(path)[:40]}: {stage} {share}")

    def _ocr(self, path: str, done: int, total: int) -> None:
        """Pages read with OCR over the run: each file adds its pages to the total when it starts."""
        if self.ocr is None:
            self.ocr = self.bar.add_task("pages read by OCR", total=0, detail="")
        if path not in self.ocr_counted:
            self.ocr_counted[path] = 0
            self.bar.update(self.ocr, total=(self.bar.tasks[self.ocr].total or 0) + total)
        self.bar.update(self.ocr, advance=done - self.ocr_counted[path], detail=f"{_name(path)[:40]}: {done}/{total}")
        self.ocr_counted[path] = done

    def announce(self, text: str) -> None:
        self.console.print(escape(printable(text)), highlight=False)

    def problem(self, problem: Problem) -> None:
        mark = "[red]failed[/]" if problem.status == "failed" else "[yellow]empty[/]"
        where = escape(printable(problem.path, one_line=True))
        self.console.print(f"{mark} {where}: {escape(printable(problem.reason))}", highlight=False)


# ---- the ingest summary ------------------------------------------------------------------------
def print_report(name: str, report: IngestReport) -> None:
    """What an ingest did: files added, updated, ..., chunks written, and what to do next."""
    out.print(f"[bold]ingest into {name!r}[/] -> generation {report.generation}", highlight=False)
    table = Table(box=box.SIMPLE)
    table.add_column("files")
    table.add_column("", justify="right")
    table.add_column("chunks")
    table.add_column("", justify="right")
    files = ["added", "updated", "unchanged", "duplicate", "removed", "failed", "empty"]
    chunks = [
        ("written", str(report.chunks_written)),
        ("seconds", f"{report.seconds:.1f}"),
        ("chunks/s", f"{report.chunks_per_second:.1f}"),
    ]
    for i, key in enumerate(files):
        right = chunks[i] if i < len(chunks) else ("", "")
        table.add_row(key, str(getattr(report, key)), *right)
    out.print(table)
    if report.interrupted:
        out.print("[yellow]interrupted[/]: finished files are committed; run the same command to continue.")
    elif not (report.added or report.updated or report.removed or report.duplicate or report.problems):
        out.print("nothing new: every file is already in the knowledge base.")
    if report.reindexed and not report.interrupted:
        out.print("rebuilt the keyword (BM25) index from the stored chunks for this version of rag.")
    if report.dense_converted and not report.interrupted:
        out.print(f"converted the vector index to {report.dense_converted} (ingest.dense_index).")
    if report.problems:
        out.print(f"[red]{len(report.problems)} file(s) not ingested[/] (see `rag kb show {name}`).")
    if report.unsupported:
        kinds = report.unsupported.most_common()
        listed = ", ".join(f"{ext} ({n})" for ext, n in kinds[:8]) + (", …" if len(kinds) > 8 else "")
        count = sum(report.unsupported.values())
        out.print(f"left out {count} file(s) in formats rag does not read: {listed}", highlight=False)
