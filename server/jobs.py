"""Ingest jobs: the files of an upload, ingested in a memory-capped worker process, one job per
knowledge base at a time (others wait their turn, at most api.max_queued_jobs of them).

A job's record (its status, progress, and what became of each file) is kept in memory and
written to ``<data_dir>/api/jobs/<id>.json`` as it changes, so that with a shared data directory
any replica can answer `GET /v1/jobs/{id}`.  The ingest itself is ingest.worker's: a file that
crashes or exhausts the worker fails on its own and the rest go in.  When another process is
writing the base (`rag ingest`, another replica), the job waits for it, up to api.busy_wait_s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ingest.pipeline import IngestReport, Progress, document_key
from ingest.worker import WorkerError, ingest_in_worker
from rag.config import Settings
from rag.store import KBError, open_store
from server.errors import RETRY_BUSY_S, APIError

log = logging.getLogger("rag.server")

Status = Literal["queued", "running", "done", "failed"]
KEEP_S = 7 * 24 * 3600  # finished jobs are forgotten after a week
SAVE_EVERY_S = 1.0  # progress is written at most this often
Ingest = Callable[[Settings, str, list[Path], Progress, float | None], IngestReport]


@dataclass
class FileOutcome:
    """What became of one file of an upload."""

    name: str  # as the client sent it
    # rejected (never stored) | queued | ingested | duplicate (same content as a document already
    # in the base) | failed | empty (no text: run OCR)
    status: str
    message: str = ""
    stored_as: str | None = None  # the file name it was saved under
    document_id: int | None = None
    chunks: int | None = None
    path: str | None = field(default=None, repr=False)  # where it lies on the server; never sent


@dataclass
class Job:
    id: str
    kb: str
    files: list[FileOutcome]
    status: Status = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    progress: dict[str, Any] = field(
        default_factory=lambda: {"files_total": 0, "files_done": 0, "chunks_embedded": 0, "current": ""}
    )
    notes: list[str] = field(default_factory=list)  # what large files will cost, said up front
    report: dict[str, Any] | None = None  # the ingest's counts: added, updated, failed, ..., generation
    error: str | None = None  # why the whole job failed

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for item in data["files"]:
            item.pop("path")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        files = [FileOutcome(**f) for f in data.pop("files")]
        return cls(files=files, **data)


class _JobProgress(Progress):
    """The pipeline's progress, kept on the job (read by GET /v1/jobs/{id})."""

    def __init__(self, job: Job, save: Callable[[Job, bool], None]) -> None:
        self.job = job
        self.save = save

    def files_total(self, n: int) -> None:
        self.job.progress["files_total"] = n
        self.save(self.job, False)

    def file_done(self, path: str) -> None:
        self.job.progress["files_done"] += 1
        self.job.progress["current"] = Path(path).name
        self.save(self.job, False)

    def chunks_done(self, n: int) -> None:
        self.job.progress["chunks_embedded"] += n
        self.save(self.job, False)

    def working(self, path: str, stage: str, done: int, total: int) -> None:
        detail = f" {done:,} of {total:,}" if stage == "embedding" and total else ""
        self.job.progress["current"] = f"{Path(path).name}: {stage}{detail}"
        self.save(self.job, False)

    def announce(self, text: str) -> None:
        self.job.notes.append(text)


class Jobs:
    """The ingest jobs of this server process, run one base at a time each."""

    def __init__(self, settings: Settings, ingest: Ingest = ingest_in_worker, retry_s: float = RETRY_BUSY_S) -> None:
        """`ingest`: what runs one job's files (ingest.worker's, in a child process); `retry_s`:
        the pause before trying again a base another process is writing."""
        self.settings = settings
        self.folder = settings.data_dir / "api" / "jobs"
        self._ingest = ingest
        self._retry_s = retry_s
        self._jobs: dict[str, Job] = {}
        self._queues: dict[str, deque[Job]] = {}
        self._draining: set[str] = set()  # bases with a thread running their jobs
        self._lock = threading.Lock()
        self._saved_at: dict[str, float] = {}

    # ---- asking --------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        """The job, from this process or from the data directory (another replica's)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None or not job_id.replace("_", "").isalnum():
            return job
        try:
            return Job.from_json(json.loads((self.folder / f"{job_id}.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def busy(self, kb: str) -> bool:
        """A job of this process is running or waiting for `kb`: read from the jobs' own status,
        so a client that has just seen its last job finish is not told the base is still busy
        while the queue's thread winds down."""
        with self._lock:
            return any(j.kb == kb and j.status in ("queued", "running") for j in self._jobs.values())

    def check_room(self, kb: str) -> None:
        """APIError 429 when `kb` already has api.max_queued_jobs jobs waiting."""
        limit = self.settings.api.max_queued_jobs
        with self._lock:
            waiting = len(self._queues.get(kb, ()))
        if waiting >= limit:
            raise APIError(
                429,
                f"{waiting} ingest jobs already wait for knowledge base {kb!r} (api.max_queued_jobs); "
                "try again when some have finished",
                "jobs_queue_full",
                retry_after=30,
            )

    # ---- running ------------------------------------------------------------------------------
    def submit(self, kb: str, files: list[FileOutcome]) -> Job:
        """Queue the stored files of an upload for ingest into `kb`; the job is returned at once."""
        self.check_room(kb)
        job = Job("job_" + secrets.token_hex(8), kb, files)
        with self._lock:
            self._forget_old()
            self._jobs[job.id] = job
            self._queues.setdefault(kb, deque()).append(job)
            start = kb not in self._draining
            self._draining.add(kb)
        self._save(job, True)
        if start:
            threading.Thread(target=self._drain, args=(kb,), name=f"rag-api-ingest-{kb}", daemon=True).start()
        return job

    def _drain(self, kb: str) -> None:
        while True:
            with self._lock:
                queue = self._queues.get(kb)
                if not queue:
                    self._draining.discard(kb)
                    self._queues.pop(kb, None)
                    return
                job = queue.popleft()
            try:
                self._run(job)
            except Exception as exc:  # a job must never take the queue down with it
                log.exception("ingest job %s failed", job.id)
                self._finish(job, "failed", f"the ingest failed: {type(exc).__name__}: {exc}")

    def _run(self, job: Job) -> None:
        job.status, job.started_at = "running", time.time()
        self._save(job, True)
        paths = [Path(f.path) for f in job.files if f.path is not None]
        if not paths:
            self._finish(job, "done")
            return
        progress = _JobProgress(job, self._save)
        give_up = time.monotonic() + self.settings.api.busy_wait_s
        while True:
            try:
                report = self._ingest(self.settings, job.kb, paths, progress, self.settings.ingest.worker_memory_mb)
                break
            except WorkerError as exc:
                if exc.busy and time.monotonic() < give_up:
                    job.progress["current"] = "waiting: another process is writing this knowledge base"
                    self._save(job, True)
                    time.sleep(self._retry_s)
                    continue
                self._finish(job, "failed", str(exc))
                return
            except KBError as exc:
                self._finish(job, "failed", str(exc))
                return
        job.report = {
            k: getattr(report, k)
            for k in ("added", "updated", "unchanged", "duplicate", "failed", "empty", "chunks_written", "generation")
        }
        self._record_outcomes(job, report)
        self._finish(job, "done")

    def _record_outcomes(self, job: Job, report: IngestReport) -> None:
        """Each stored file's fate, as the knowledge base now records it."""
        problems = {p.path: p for p in report.problems}
        with open_store(self.settings, job.kb) as kb:
            for f in job.files:
                if f.path is None:
                    continue
                key = document_key(Path(os.path.abspath(f.path)))
                doc = kb.document_by_path(key)
                problem = problems.get(key)
                if doc is None:
                    f.status, f.message = "failed", problem.reason if problem else "not ingested"
                    continue
                f.document_id, f.chunks = doc.doc_id, doc.chunks
                if doc.status == "ok":
                    f.status = "ingested"
                elif doc.status == "duplicate":
                    f.status, f.message = "duplicate", "the same content as a document already in the base"
                else:
                    f.status, f.message = doc.status, doc.error or (problem.reason if problem else "")

    def _finish(self, job: Job, status: Status, error: str | None = None) -> None:
        job.status, job.error, job.finished_at = status, error, time.time()
        if error:
            for f in job.files:
                if f.status == "queued":
                    f.status, f.message = "failed", error
        self._save(job, True)

    # ---- the records ----------------------------------------------------------------------------
    def _save(self, job: Job, now: bool) -> None:
        """Write the job's record; progress (now=False) at most every SAVE_EVERY_S."""
        moment = time.monotonic()
        if not now and moment - self._saved_at.get(job.id, 0.0) < SAVE_EVERY_S:
            return
        self._saved_at[job.id] = moment
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".job-", dir=self.folder)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(job.to_json(), fh)
            os.replace(tmp, self.folder / f"{job.id}.json")
        except OSError as exc:  # the record is a convenience for other replicas; the job goes on
            log.warning("cannot write the record of ingest job %s: %s", job.id, exc)

    def _forget_old(self) -> None:
        """Drop finished jobs older than KEEP_S, here and on disk (called under the lock)."""
        cutoff = time.time() - KEEP_S
        for job_id, job in list(self._jobs.items()):
            if job.finished_at is not None and job.finished_at < cutoff:
                del self._jobs[job_id]
                self._saved_at.pop(job_id, None)
        if self.folder.is_dir():
            for path in self.folder.glob("job_*.json"):
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
