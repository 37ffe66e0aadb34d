"""Ingest on a real local Ray runtime (2 CPUs): the same knowledge base as a plain ingest, bad
files reported without stopping the rest, incremental re-runs, and a kill -9 mid-run that the
next run completes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest.pipeline import IngestPipeline, IngestReport, open_for_ingest
from rag.config import IngestSettings, Settings, StoreSettings
from rag.store import open_store
from rag.store.local import LocalStore
from rag.store.local import exists as local_exists
from tests.fixtures.documents import write_docx, write_encrypted_pdf, write_pdf, write_xlsx
from tests.fixtures.kb_checks import assert_consistent, assert_store_consistent, content

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'ray[data]==2.60.0' (make setup does)")

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "docs"
RAY_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_BACKEND_LOG_LEVEL")


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    """One local runtime for the in-process tests (each CLI run starts its own)."""
    from ingest.cluster import connect

    saved = {k: os.environ.get(k) for k in RAY_ENV}
    assert connect(IngestSettings(ray="local", ray_cpus=2))
    yield
    import ray

    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def make_corpus(folder: Path) -> Path:
    """The samples (a PDF with page rectangles, Chinese Markdown, HTML), 24 text files, Office
    files, a copy of one file, and three bad ones."""
    shutil.copytree(SAMPLES, folder)
    (folder / "pumps").mkdir()
    for i in range(24):
        body = "\n\n".join(
            f"Document {i}, section {s}: pump P{i * 10 + s} runs at {1000 + 37 * i + s} rpm and needs "
            f"service every {3 + (i + s) % 9} months. " * 5
            for s in range(3)
        )
        (folder / "pumps" / f"p{i:02d}.txt").write_text(body, encoding="utf-8")
    shutil.copy(folder / "pumps" / "p03.txt", folder / "copy-of-p03.txt")
    write_docx(folder / "spec.docx", ["The status light blinks red on a fault."], [["part", "price"], ["fan", "12"]])
    write_xlsx(folder / "stock.xlsx", {"Stock": [["part", "count"], ["inverter", 7]]})
    pdf = write_pdf(folder / "valves.pdf", [["Valve V1 opens at 2 bar."], ["Valve V2 opens at 3 bar."]])
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not a PDF body at all")
    (folder / "blank.txt").write_text("   \n", encoding="utf-8")
    write_encrypted_pdf(folder / "locked.pdf", pdf)
    return folder


def on_ray(settings: Settings) -> Settings:
    return settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"ray": "local", "ray_cpus": 2})})


def ingest(settings: Settings, embedder, docs: Path, kb: str, check=assert_consistent, **kw: Any) -> IngestReport:
    with open_for_ingest(settings, kb, embedder) as base:
        report = IngestPipeline(settings, embedder, base).run([docs], **kw)
        check(base)
    return report


def snapshot(settings: Settings, name: str) -> tuple[dict[str, tuple], dict[str, np.ndarray]]:
    """Everything a base holds per document, ids left out: its record, its chunks (text, page,
    span, metadata with the page rectangles), their BM25 tokens; and the vectors apart."""
    records, vectors = {}, {}
    with open_store(settings, name) as kb:
        paths = {d.doc_id: d.path for d in kb.documents()}
        for d in kb.documents():
            ids = kb.document_chunk_ids(d.doc_id)
            chunks, tokens = kb.chunks(ids), kb.chunk_tokens(ids)
            rows = [(c.text, c.page_no, c.ordinal, c.char_start, c.char_end, c.metadata) for c in chunks.values()]
            copy_of = paths.get(d.content_of) if d.content_of else None
            record = (d.status, d.error, d.pages, d.chunks, d.sha256, d.size, d.mtime, copy_of, d.chunker)
            records[d.path] = (record, rows, [tokens[i] for i in ids])
            vectors[d.path] = kb.vectors(ids) if ids else np.zeros((0,))
    return records, vectors


def test_a_ray_ingest_builds_the_same_base_as_a_plain_one_and_re_runs_send_only_what_changed(
    tmp_path: Path, settings, embedder, ray_runtime
) -> None:
    docs = make_corpus(tmp_path / "docs")
    plain = ingest(settings, embedder, docs, "plain")
    clustered = ingest(on_ray(settings), embedder, docs, "ray")

    counts = ("added", "duplicate", "failed", "empty", "chunks_written", "exit_code")
    assert [getattr(clustered, c) for c in counts] == [getattr(plain, c) for c in counts]
    assert (clustered.added, clustered.duplicate, clustered.failed, clustered.empty) == (32, 1, 2, 1)
    assert sorted(map(vars, clustered.problems), key=str) == sorted(map(vars, plain.problems), key=str)
    reasons = {Path(p.path).name: p.reason for p in clustered.problems}
    assert "password" in reasons["locked.pdf"] and reasons["blank.txt"] == "file is empty"

    records, vectors = snapshot(settings, "ray")
    expected, expected_vectors = snapshot(settings, "plain")
    assert records == expected  # the same chunks, pages, spans, rectangles and tokens
    assert any(row[5].get("boxes") for _, rows, _ in records.values() for row in rows), "no page rectangles kept"
    for path, wanted in expected_vectors.items():
        np.testing.assert_allclose(vectors[path], wanted, atol=2e-5, err_msg=path)

    # A re-run sends only what changed: the two files that failed are tried again (a locked PDF
    # may have been unlocked), the rest are unchanged; and it still matches a plain ingest.
    again = ingest(on_ray(settings), embedder, docs, "ray")
    assert (again.unchanged, again.failed, again.added, again.updated, again.chunks_written) == (34, 2, 0, 0, 0)
    (docs / "pumps" / "p05.txt").write_text("Pump P55 was withdrawn in 2024.", encoding="utf-8")
    (docs / "pumps" / "p07.txt").unlink()
    (docs / "new.md").write_text("# Filters\n\nChange the filter every spring.", encoding="utf-8")
    changed = ingest(on_ray(settings), embedder, docs, "ray", sync=True)
    assert (changed.updated, changed.added, changed.removed, changed.chunks_written) == (1, 1, 1, 2)
    ingest(settings, embedder, docs, "plain", sync=True)
    assert snapshot(settings, "ray")[0] == snapshot(settings, "plain")[0]


def test_a_ray_ingest_into_milvus_holds_what_a_plain_local_one_does(
    tmp_path: Path, settings, embedder, ray_runtime
) -> None:
    docs = make_corpus(tmp_path / "docs")
    milvus = on_ray(settings).model_copy(update={"store": StoreSettings(backend="milvus", uri="./kb.db")})
    report = ingest(milvus, embedder, docs, "m", check=assert_store_consistent)
    assert (report.added, report.duplicate, report.failed, report.empty) == (32, 1, 2, 1)
    ingest(settings, embedder, docs, "plain")
    with open_store(milvus, "m") as on_milvus, open_store(settings, "plain") as local:
        assert content(on_milvus) == content(local)


def test_without_ray_installed_the_ingest_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from ingest.cluster import ClusterError, connect

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(ClusterError, match=r"pip install 'ray\[data\]"):
        connect(IngestSettings(ray="local"))


@pytest.mark.slow
def test_kill_9_during_a_ray_ingest_then_a_rerun_converges(tmp_path: Path, settings, embedder) -> None:
    docs = make_corpus(tmp_path / "docs")
    data = tmp_path / "killed"
    root = data / "kb" / "k"
    env = {
        **os.environ,
        "RAG_DATA_DIR": str(data),
        "RAG_INGEST__COMMIT_INTERVAL_S": "0",  # a commit after every file: many points to be killed at
        "RAG_INGEST__RAY_CPUS": "2",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "rag", "ingest", str(docs), "--kb", "k", "--ray"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and _generation(root) < 3:
        time.sleep(0.02)
    assert proc.poll() is None, "the ingest finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with LocalStore.open(root) as kb:
        assert_consistent(kb)
        assert 0 < len(kb.documents()) < 36

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]  # 1: the bad files, tried again
    assert "broken.pdf" in done.stderr and "locked.pdf" in done.stderr
    ingest(settings, embedder, docs, "plain")
    records, _ = snapshot(settings.model_copy(update={"data_dir": data}), "k")
    expected, _ = snapshot(settings, "plain")
    assert {p: r[1] for p, r in records.items()} == {p: r[1] for p, r in expected.items()}
    assert {p: r[0][0] for p, r in records.items()} == {p: r[0][0] for p, r in expected.items()}


def _generation(root: Path) -> int:
    if not local_exists(root):
        return -1
    try:
        with LocalStore.open(root) as kb:
            return kb.generation
    except Exception:  # mid-creation
        return -1


def test_the_embedding_actors_take_the_gpus_or_leave_a_cpu_for_parsing() -> None:
    from ingest.cluster import ClusterError, plan

    on_cpus = plan(IngestSettings(ray="auto"), cpus=16, gpus=0)
    assert (on_cpus.embedders, on_cpus.embedder_gpus, on_cpus.device) == (15, 0, None)
    on_gpus = plan(IngestSettings(ray="auto"), cpus=16, gpus=4)
    assert (on_gpus.embedders, on_gpus.embedder_gpus, on_gpus.device) == (4, 1.0, "cuda")
    packed = plan(IngestSettings(ray="auto", ray_embedder_gpus=0.5), cpus=16, gpus=4)
    assert packed.embedders == 8
    with pytest.raises(ClusterError, match="no CPU for parsing"):
        plan(IngestSettings(ray="local", ray_embedders=2), cpus=2, gpus=0)
    with pytest.raises(ClusterError, match="more GPUs than the cluster's 0"):
        plan(IngestSettings(ray="auto", ray_embedder_gpus=1), cpus=16, gpus=0)


def test_an_unreachable_cluster_is_said_at_once_and_leaves_no_base(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Pump P1 runs at 1500 rpm.", encoding="utf-8")
    env = {**os.environ, "RAG_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "rag", "ingest", str(tmp_path / "a.txt"), "--kb", "k", "--ray-address", "127.0.0.1:9"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in " ".join(done.stderr.split())
    assert not (tmp_path / "data" / "kb" / "k").exists()
