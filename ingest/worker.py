"""An ingest in a child process with a memory limit, for callers that must outlive any file.

The web UI (and any server) ingests what users upload.  In its own process, one runaway file (a
parser blowing up on a crafted document, a decompression bomb that slipped past the archive
checks) would take every user's session down with it.  Here the pipeline runs in a child
process whose private memory is capped (RLIMIT_DATA: the heap and anonymous mappings, not the
model files it maps), so the worst a file can do is fail: a parser that runs out of memory fails
that file with a MemoryError and the run goes on; if the child dies outright, the file it was
reading is recorded as failed, and a new child carries on with the rest.  Progress crosses over
as JSON lines; committed work is never lost, because every commit is atomic.

Hand-written rather than multiprocessing: the child must start clean (no copy of the parent's
threads, models or Streamlit state), and a child that is killed must be reported, not hang a pool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import IO, Any

from ingest.pipeline import IngestPipeline, IngestReport, Problem, Progress, open_for_ingest
from rag.config import Settings
from rag.embed import Embedder
from rag.models import ModelNotAvailable
from rag.store import KBError, KBLocked, open_store, store_exists

# What the child needs of the settings; the rest (LLM keys, the UI password) never leaves.
_SECTIONS = {"data_dir", "cache_dir", "embed", "chunk", "ingest", "store", "retrieve"}
MAX_RESTARTS = 3


class WorkerError(RuntimeError):
    """The ingest worker failed in a way no single file explains; the message says what.
    `busy`: the knowledge base was being written by another process (try again later)."""

    def __init__(self, message: str, busy: bool = False) -> None:
        super().__init__(message)
        self.busy = busy


def ingest_in_worker(
    settings: Settings, kb_name: str, paths: list[Path], progress: Progress, memory_mb: float | None
) -> IngestReport:
    """Ingest `paths` into `kb_name` in a child process capped at `memory_mb` of private memory
    (None: no cap).  Returns the report as the pipeline would; a file that killed a child is one
    of its failures."""
    total = IngestReport()
    skip: list[str] = []
    for _ in range(MAX_RESTARTS + 1):
        outcome = _Child(settings, kb_name, paths, skip, progress, memory_mb).run()
        if outcome.report is not None:
            return _merge(total, outcome.report)
        if outcome.culprit is None:
            raise WorkerError(f"the ingest worker stopped ({outcome.how}) before reading any file{outcome.tail}")
        reason = f"the ingest worker {outcome.how} while reading this file; it was left out{outcome.tail}"
        _record_failure(settings, kb_name, outcome.culprit, reason)
        problem = Problem(outcome.culprit, "failed", reason)
        progress.problem(problem)
        total.problems.append(problem)
        total.failed += 1
        skip.append(outcome.culprit)
    raise WorkerError(f"the ingest worker died {MAX_RESTARTS + 1} times; see the failed files")


@dataclasses.dataclass
class _Outcome:
    report: IngestReport | None
    culprit: str | None = None  # the file being read when the child died
    how: str = ""
    tail: str = ""


class _Child:
    """One child process: the job goes in on stdin, events come back on stdout."""

    def __init__(
        self,
        settings: Settings,
        kb_name: str,
        paths: list[Path],
        skip: list[str],
        progress: Progress,
        memory_mb: float | None,
    ) -> None:
        self.job = {
            "settings": _child_settings(settings),
            "kb": kb_name,
            "paths": [os.fsdecode(p) for p in paths],
            "skip": skip,
        }
        self.progress = progress
        self.memory_mb = memory_mb
        self.reading: str | None = None

    def run(self) -> _Outcome:
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ingest.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=_child_env(),
                preexec_fn=_limit(self.memory_mb),
            )
            assert proc.stdin is not None and proc.stdout is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(json.dumps(self.job).encode())
                proc.stdin.close()
            report = self._events(proc.stdout)
            code = proc.wait()
            if report is not None:
                return _Outcome(report)
            return _Outcome(None, self.reading, _how(code), _tail(stderr))

    def _events(self, stream: IO[bytes]) -> IngestReport | None:
        for line in stream:
            event = json.loads(line)
            kind = event.pop("event")
            if kind == "report":
                return _report_from(event)
            if kind == "error":
                raise WorkerError(event["message"], busy=event["busy"])
            if kind == "reading":
                self.reading = event["path"]
                self.progress.working(event["path"], "reading", 0, 0)
            elif kind == "problem":
                self.progress.problem(Problem(**event))
            else:
                getattr(self.progress, kind)(*event["args"])
        return None


def _child_settings(settings: Settings) -> dict[str, Any]:
    """The sections the child needs, as JSON: a store token goes as itself (over the child's stdin,
    never its command line or environment), not as the '**********' a dump shows; ingest.ray is
    dropped."""
    payload = settings.model_dump(mode="json", include=_SECTIONS)
    # Never on Ray: this child exists to contain one file's damage under a memory cap, which a
    # Ray runtime's shared-memory object store would not live under.
    payload["ingest"]["ray"] = None
    token = settings.store.token
    payload["store"]["token"] = token.get_secret_value() if token is not None else None
    return payload


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _limit(memory_mb: float | None):
    if not memory_mb:
        return None
    cap = int(memory_mb * 2**20)

    def apply() -> None:  # runs in the child, before it starts Python
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))

    return apply


def _how(code: int) -> str:
    return f"was stopped by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"


def _tail(stderr: IO[bytes], lines: int = 3) -> str:
    stderr.seek(0)
    last = [line for line in stderr.read().decode(errors="replace").splitlines() if line.strip()][-lines:]
    return ("; it said: " + " | ".join(last)) if last else ""


def _record_failure(settings: Settings, kb_name: str, path: str, reason: str) -> None:
    """Mark the file that killed a child as failed, so `kb show` says why it is missing."""
    if not store_exists(settings, kb_name):
        return
    with open_store(settings, kb_name) as kb, kb.writer() as writer:
        existing = kb.document_by_path(path)
        if existing is None or existing.status not in ("ok", "duplicate"):  # a good old version stays
            writer.put_document(path=path, status="failed", error=reason)
            writer.commit()


def _merge(total: IngestReport, last: IngestReport) -> IngestReport:
    if not total.problems:
        return last
    for f in ("added", "updated", "unchanged", "duplicate", "removed", "failed", "empty", "chunks_written"):
        setattr(last, f, getattr(last, f) + getattr(total, f))
    last.problems = total.problems + last.problems
    return last


def _report_from(event: dict[str, Any]) -> IngestReport:
    event["problems"] = [Problem(**p) for p in event["problems"]]
    event["unsupported"] = Counter(event["unsupported"])
    return IngestReport(**event)


# ---- the child -----------------------------------------------------------------------------
class _Events(Progress):
    """The pipeline's progress, written as JSON lines for the parent (from either thread)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.lock = threading.Lock()

    def send(self, event: str, **fields: Any) -> None:
        with self.lock:
            self.out.write(json.dumps({"event": event, **fields}) + "\n")
            self.out.flush()

    def files_total(self, n: int) -> None:
        self.send("files_total", args=[n])

    def file_done(self, path: str) -> None:
        self.send("file_done", args=[path])

    def chunks_done(self, n: int) -> None:
        self.send("chunks_done", args=[n])

    def problem(self, problem: Problem) -> None:
        self.send("problem", **dataclasses.asdict(problem))

    def note(self, text: str) -> None:
        self.send("note", args=[text])

    def working(self, path: str, stage: str, done: int, total: int) -> None:
        if stage == "reading":
            self.send("reading", path=path)
        else:
            self.send("working", args=[path, stage, done, total])

    def announce(self, text: str) -> None:
        self.send("announce", args=[text])


def main() -> None:
    """The child: read the job, ingest, report.  Everything else it prints goes to stderr, so
    stdout carries only events."""
    events = _Events(os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8"))
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    job = json.loads(sys.stdin.read())
    settings = Settings.model_validate(job["settings"])
    embedder = Embedder(settings.embed)
    try:
        with open_for_ingest(settings, job["kb"], embedder) as kb:
            pipeline = IngestPipeline(settings, embedder, kb)
            report = pipeline.run([Path(p) for p in job["paths"]], progress=events, skip=set(job["skip"]))
    except (KBError, ModelNotAvailable, ValueError) as exc:  # what the CLI says in one line, said here too
        events.send("error", message=str(exc), busy=isinstance(exc, KBLocked))
        raise SystemExit(2) from exc
    events.send("report", **dataclasses.asdict(report))


if __name__ == "__main__":
    main()
