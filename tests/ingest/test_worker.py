"""Ingests run in a worker process for the web UI: a file that kills or exhausts the worker fails,
alone; the caller lives on and the other files go in."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from ingest.pipeline import Problem, Progress
from ingest.worker import WorkerError, ingest_in_worker
from rag.store.local import LocalStore
from tests.fixtures.kb_checks import assert_consistent

pytestmark = pytest.mark.slow


class Recorder(Progress):
    def __init__(self) -> None:
        self.done: list[str] = []
        self.problems: list[Problem] = []

    def file_done(self, path: str) -> None:
        self.done.append(Path(path).name)

    def problem(self, problem: Problem) -> None:
        self.problems.append(problem)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder / name


def test_a_worker_ingests_like_the_pipeline(settings, tmp_path: Path) -> None:
    a = write(tmp_path / "docs", "a.txt", "The warranty lasts ten years.")
    b = write(tmp_path / "docs", "b.md", "# Care\n\nWipe the casing with a dry cloth.")
    progress = Recorder()
    report = ingest_in_worker(settings, "t", [a, b], progress, memory_mb=4096)
    assert (report.added, report.failed, report.exit_code) == (2, 0, 0)
    assert sorted(progress.done) == ["a.txt", "b.md"]
    with LocalStore.open(settings.kb_dir("t")) as kb:
        assert {Path(d.path).name for d in kb.documents("ok")} == {"a.txt", "b.md"}
        assert_consistent(kb)


class KillWhenReading(Recorder):
    """Kills the worker the moment it starts reading `victim`: what a crashing parser does."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    def working(self, path: str, stage: str, done: int, total: int) -> None:
        if stage == "reading" and Path(path).name == self.victim:
            for child in psutil.Process().children():
                if "ingest.worker" in " ".join(child.cmdline()):
                    os.kill(child.pid, signal.SIGKILL)


def test_a_file_that_kills_the_worker_fails_alone(settings, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    paths = [write(docs, f"{n}.txt", f"Note {n}: the unit needs service every {n} months.") for n in "abcde"]
    paths[2].write_text("words to chunk " * 3_000_000, encoding="utf-8")  # 45 MB: the worker is still on it
    progress = KillWhenReading("c.txt")
    report = ingest_in_worker(settings, "t", paths, progress, memory_mb=4096)
    assert (report.added, report.failed) == (4, 1), report
    (problem,) = progress.problems
    assert Path(problem.path).name == "c.txt"
    assert "the ingest worker was stopped by SIGKILL while reading this file; it was left out" in problem.reason
    with LocalStore.open(settings.kb_dir("t")) as kb:
        docs_by_name = {Path(d.path).name: d for d in kb.documents()}
        assert {n for n, d in docs_by_name.items() if d.status == "ok"} == {"a.txt", "b.txt", "d.txt", "e.txt"}
        assert docs_by_name["c.txt"].status == "failed" and "SIGKILL" in docs_by_name["c.txt"].error
        assert_consistent(kb)


def test_a_file_that_needs_more_memory_than_the_cap_fails_alone(settings, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    small = [write(docs, "a.txt", "The warranty lasts ten years."), write(docs, "c.txt", "Service every year.")]
    big = docs / "b.txt"
    with open(big, "wb") as fh:  # 300 MB of text: reading and decoding it alone needs twice that
        for _ in range(300):
            fh.write(b"lorem ipsum dolor sit amet " * (2**20 // 27))
    report = ingest_in_worker(
        settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"max_file_mb": 1000})}),
        "t",
        [*small, big],
        Recorder(),
        memory_mb=1200,
    )
    assert report.added == 2 and report.failed == 1, report
    (problem,) = report.problems
    assert Path(problem.path).name == "b.txt" and "memory" in problem.reason, problem.reason


def test_a_busy_base_is_a_worker_error_that_says_so(settings, tmp_path: Path) -> None:
    a = write(tmp_path / "docs", "a.txt", "The warranty lasts ten years.")
    ingest_in_worker(settings, "t", [a], Recorder(), memory_mb=None)
    write(tmp_path / "docs", "b.txt", "Something new.")
    with LocalStore.open(settings.kb_dir("t")) as kb, kb.writer(), pytest.raises(WorkerError) as err:
        ingest_in_worker(settings, "t", [a, tmp_path / "docs" / "b.txt"], Recorder(), memory_mb=None)
    assert err.value.busy and "being written by another process" in str(err.value)


def test_the_worker_never_ingests_on_ray_even_when_the_config_says_so(settings) -> None:
    """Uploads are contained by the worker's memory cap; a Ray runtime would escape it."""
    from ingest.worker import _child_settings

    on_ray = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"ray": "auto"})})
    assert _child_settings(on_ray)["ingest"]["ray"] is None
