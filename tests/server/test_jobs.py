"""Ingest jobs run one knowledge base at a time (others wait their turn, a bounded queue of them),
wait for a base another process is writing, and leave a record any replica can read.  The ingest
itself is stood in for here (tests/server/test_kbs.py runs the real worker)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from ingest.pipeline import IngestReport
from ingest.worker import WorkerError
from rag.config import load_settings
from rag.store import create_store
from server.errors import APIError
from server.jobs import FileOutcome, Jobs


class Gate:
    """A stand-in ingest that holds each job until released, and notes what ran at once."""

    def __init__(self, busy_times: int = 0) -> None:
        self.release = threading.Event()
        self.running: Counter[str] = Counter()
        self.most: Counter[str] = Counter()  # the most jobs of each base that ran at once
        self.side_by_side = False  # two bases' jobs ran at once
        self.busy_times = busy_times
        self.lock = threading.Lock()

    def __call__(self, settings, kb, paths, progress, memory_mb) -> IngestReport:
        with self.lock:
            if self.busy_times:
                self.busy_times -= 1
                raise WorkerError("knowledge base is being written by another process", busy=True)
            self.running[kb] += 1
            self.most[kb] = max(self.most[kb], self.running[kb])
            self.side_by_side |= len(+self.running) > 1
        progress.files_total(len(paths))
        self.release.wait(30)
        with self.lock:
            self.running[kb] -= 1
        return IngestReport(added=len(paths), generation=1)


@pytest.fixture
def settings(isolated: Path, embedder):
    settings = load_settings(data_dir=isolated / "data", api={"max_queued_jobs": 1, "busy_wait_s": 5})
    for name in ("a", "b"):
        create_store(settings, name, embedder.identity).close()
    return settings


def files(tmp: Path, name: str) -> list[FileOutcome]:
    path = tmp / name
    path.write_text("hello")
    return [FileOutcome(name, "queued", path=str(path))]


def wait_for(job, *statuses: str) -> None:
    deadline = time.monotonic() + 10
    while job.status not in statuses:
        assert time.monotonic() < deadline, job
        time.sleep(0.02)


def test_one_job_per_base_at_a_time_others_queue_and_a_full_queue_is_429(settings, tmp_path: Path) -> None:
    gate = Gate()
    jobs = Jobs(settings, gate)
    a1 = jobs.submit("a", files(tmp_path, "1.txt"))
    wait_for(a1, "running")
    a2 = jobs.submit("a", files(tmp_path, "2.txt"))
    b1 = jobs.submit("b", files(tmp_path, "3.txt"))
    deadline = time.monotonic() + 10
    while +gate.running != Counter(a=1, b=1):  # a1 and b1 inside their ingests, a2 waiting
        assert time.monotonic() < deadline, gate.running
        time.sleep(0.02)
    assert a2.status == "queued" and jobs.busy("a") and jobs.busy("b")
    with pytest.raises(APIError) as full:
        jobs.submit("a", files(tmp_path, "4.txt"))
    assert full.value.status == 429 and full.value.retry_after and "api.max_queued_jobs" in full.value.message
    gate.release.set()
    for job in (a1, a2, b1):
        wait_for(job, "done", "failed")
    assert gate.most == {"a": 1, "b": 1}, "one job per base at a time"
    assert gate.side_by_side, "different bases ingest side by side"
    assert [j.status for j in (a1, a2, b1)] == ["done"] * 3 and not jobs.busy("a")
    # Each file's fate is read back from the base (these stand-in ingests stored nothing).
    assert a1.files[0].status == "failed" and a1.files[0].message == "not ingested"


def test_a_job_waits_for_a_base_another_process_is_writing(settings, tmp_path: Path) -> None:
    gate = Gate(busy_times=2)
    gate.release.set()
    job = Jobs(settings, gate, retry_s=0.05).submit("a", files(tmp_path, "1.txt"))
    wait_for(job, "done", "failed")
    assert job.status == "done" and job.report["added"] == 1


def test_a_job_gives_up_on_a_base_busy_past_busy_wait(settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"api": settings.api.model_copy(update={"busy_wait_s": 0})})
    job = Jobs(settings, Gate(busy_times=1), retry_s=0.05).submit("a", files(tmp_path, "1.txt"))
    wait_for(job, "done", "failed")
    assert job.status == "failed" and "being written by another process" in job.error
    assert job.files[0].status == "failed"


def test_a_job_record_is_read_back_by_another_server_on_the_same_data_dir(settings, tmp_path: Path) -> None:
    gate = Gate()
    gate.release.set()
    job = Jobs(settings, gate).submit("b", files(tmp_path, "1.txt"))
    wait_for(job, "done")
    elsewhere = Jobs(settings).get(job.id)
    assert elsewhere is not None and elsewhere.to_json() == job.to_json()
    assert Jobs(settings).get("../../etc/passwd") is None and Jobs(settings).get("job_missing") is None
