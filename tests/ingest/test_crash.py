"""kill -9 a real ingest process at several points: the base stays readable at its previous
generation every time, and the next run completes it with no chunk stored twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.pipeline import IngestPipeline, open_for_ingest
from rag.store.local import LocalStore
from rag.store.local import exists as local_exists
from tests.conftest import ctrl_c_works
from tests.fixtures.documents import write_pdf
from tests.fixtures.kb_checks import assert_consistent

N_FILES = 40


def make_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(N_FILES):
        body = "\n\n".join(
            f"Document {i}, section {s}: the pump model P{i * 10 + s} runs at {1000 + 37 * i + s} rpm "
            f"and needs service every {3 + (i + s) % 9} months. " * 6
            for s in range(3)
        )
        (folder / f"doc{i:02d}.txt").write_text(body, encoding="utf-8")
    write_pdf(folder / "manual.pdf", [["Page one about pumps."], ["Page two about valves."]])
    return folder


def generation(root: Path) -> int:
    return LocalStore.open(root).generation if local_exists(root) else -1


def kill_when(cmd: list[str], env: dict[str, str], trigger: Callable[[], bool], timeout: float = 180) -> bool:
    """Start the ingest, SIGKILL it the moment `trigger()` holds; False if it finished first."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                fired = trigger()
            except Exception:  # the folder changes under our feet while we look
                fired = False
            if fired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.0005)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_kill_9_at_any_point_leaves_a_readable_base_and_the_next_run_completes(
    tmp_path: Path, settings, embedder
) -> None:
    docs = make_corpus(tmp_path / "docs")
    data = tmp_path / "killed"
    root = data / "kb" / "crash"
    env = {
        **os.environ,
        "RAG_DATA_DIR": str(data),
        "RAG_INGEST__COMMIT_INTERVAL_S": "0",  # commit after every file: many commit points to hit
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "rag", "ingest", str(docs), "--kb", "crash"]

    def tmp_file_present() -> bool:
        return root.exists() and any(n.endswith(".tmp") for n in os.listdir(root))

    start_gen = {}

    def after_commits(n: int) -> Callable[[], bool]:
        def trigger() -> bool:
            start_gen.setdefault(n, generation(root))
            return generation(root) >= start_gen[n] + n

        return trigger

    began = {}

    def after_seconds(s: float) -> Callable[[], bool]:
        def trigger() -> bool:
            began.setdefault(s, time.monotonic())
            return root.exists() and time.monotonic() - began[s] > s

        return trigger

    points = [
        ("as the base is created", lambda: (root / "kb.sqlite").exists()),
        ("while index files are written", tmp_file_present),
        ("right after a commit", after_commits(3)),
        ("while index files are written, later", tmp_file_present),
        ("at an arbitrary moment", after_seconds(14.0)),
    ]
    killed, generations = [], []
    for name, trigger in points:
        if kill_when(cmd, env, trigger):
            killed.append(name)
        if local_exists(root):
            with LocalStore.open(root) as kb:
                assert_consistent(kb)  # readable, every index agrees with the tables
                generations.append(kb.generation)
    assert len(killed) >= 3, f"the ingest finished before most kill points: only {killed}"
    assert generations == sorted(generations), "a kill must never roll a committed generation back"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]

    # The resumed base holds exactly what one uninterrupted ingest produces.
    with open_for_ingest(settings, "clean", embedder) as clean:
        IngestPipeline(settings, embedder, clean).run([docs])
        expected = _content(clean)
    with LocalStore.open(root) as kb:
        assert_consistent(kb)
        assert _content(kb) == expected
        assert len(kb.documents("ok")) == N_FILES + 1


def _content(kb: LocalStore) -> list[tuple[str, int, int | None, str]]:
    rows = kb.conn.execute(
        "SELECT d.path, c.ordinal, c.page, c.text FROM chunks c JOIN documents d USING (doc_id) ORDER BY 1, 2"
    )
    return [tuple(r) for r in rows]


@pytest.mark.slow
def test_ctrl_c_commits_what_is_finished_and_says_how_to_continue(tmp_path: Path) -> None:
    docs = make_corpus(tmp_path / "docs")
    data = tmp_path / "data"
    root = data / "kb" / "ctrlc"
    env = {**os.environ, "RAG_DATA_DIR": str(data), "RAG_INGEST__COMMIT_INTERVAL_S": "0", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "rag", "ingest", str(docs), "--kb", "ctrlc"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ctrl_c_works
    )
    deadline = time.monotonic() + 180
    while generation(root) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output[-2000:]
    assert "interrupted" in output and "run the same command to continue" in output
    with LocalStore.open(root) as kb:
        assert_consistent(kb)
        done = len(kb.documents("ok"))
    assert 0 < done < N_FILES + 1
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0
    with LocalStore.open(root) as kb:
        assert len(kb.documents("ok")) == N_FILES + 1
