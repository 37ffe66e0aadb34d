"""Ingest as a user runs it: every format in, re-runs incremental, bad files reported and recorded
without stopping the rest, duplicates stored once, and the base always consistent."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from ingest.chunking import chunker_fingerprint
from ingest.pipeline import IngestPipeline, IngestReport, open_for_ingest
from rag.config import Settings
from rag.embed import Embedder
from rag.store import KBLocked, ModelMismatch
from rag.store.local import LocalStore
from tests.conftest import shared_path
from tests.fixtures.documents import (
    CHINESE_TEXT,
    write_docx,
    write_encrypted_pdf,
    write_scanned_pdf,
    write_xlsx,
)
from tests.fixtures.kb_checks import assert_consistent, search


def ingest(settings: Settings, embedder, *paths: Path, kb: str = "t", **kw) -> IngestReport:
    with open_for_ingest(settings, kb, embedder) as base:
        report = IngestPipeline(settings, embedder, base).run(list(paths), **kw)
        assert_consistent(base)
    return report


def open_kb(settings: Settings, name: str = "t") -> LocalStore:
    return LocalStore.open(settings.kb_dir(name))


@pytest.fixture
def corpus(tmp_path: Path, pdf_file: Path) -> Path:
    """One file of every supported format, in one folder (pdf_file already lives in docs/)."""
    docs = pdf_file.parent
    (docs / "notes.txt").write_text("The installer must keep 30 cm of clearance on each side.", encoding="utf-8")
    (docs / "guide.md").write_text("# Modes\n\nTime-of-use mode charges when power is cheap.", encoding="utf-8")
    (docs / "page.html").write_text("<html><body><p>Support is open Monday to Friday.</p></body></html>")
    (docs / "zh-gbk.txt").write_bytes(CHINESE_TEXT.encode("gbk"))
    (docs / "parts.csv").write_text("part,price\nmodule,4000 euro\n", encoding="utf-8")
    write_docx(docs / "spec.docx", ["The status light blinks red on a fault."])
    write_xlsx(docs / "stock.xlsx", {"Stock": [["part", "count"], ["inverter", 7]]})
    return docs


def test_every_format_is_ingested_and_findable(settings, embedder, corpus: Path) -> None:
    report = ingest(settings, embedder, corpus)
    assert (report.added, report.failed, report.empty, report.exit_code) == (8, 0, 0, 0)
    assert report.chunks_written >= 10 and report.generation >= 1
    with open_kb(settings) as kb:
        assert {Path(d.path).name for d in kb.documents("ok")} == {
            "handbook.pdf",
            "notes.txt",
            "guide.md",
            "page.html",
            "zh-gbk.txt",
            "parts.csv",
            "spec.docx",
            "stock.xlsx",
        }
        top = search(kb, embedder, "How long does the warranty last?")[0]
        assert (Path(top.source).name, top.page_no) == ("handbook.pdf", 2)
        assert "ten years" in top.text
        zh = [c for c in kb.chunks(range(1, 100)).values() if c.source.endswith("zh-gbk.txt")]
        assert zh and "磷酸铁锂" in "".join(c.text for c in zh)  # GBK decoded, not mojibake


def test_pdf_chunks_know_their_pages(settings, embedder, pdf_file: Path) -> None:
    ingest(settings, embedder, pdf_file)
    with open_kb(settings) as kb:
        chunks = sorted(kb.chunks(range(1, 50)).values(), key=lambda c: c.chunk_id)
        assert [c.page_no for c in chunks] == [1, 2, 3]
        assert "warranty" in chunks[1].text and kb.documents()[0].pages == 3


def test_rerun_on_unchanged_files_adds_nothing_and_never_loads_the_model(settings, embedder, corpus: Path) -> None:
    first = ingest(settings, embedder, corpus)
    fresh = Embedder(settings.embed)  # not loaded yet
    again = ingest(settings, fresh, corpus)
    assert (again.added, again.updated, again.unchanged, again.chunks_written) == (0, 0, 8, 0)
    assert again.generation == first.generation
    assert fresh._model is None


def test_changed_file_replaces_its_chunks(settings, embedder, corpus: Path) -> None:
    ingest(settings, embedder, corpus)
    notes = corpus / "notes.txt"
    notes.write_text("Clearance is now 50 cm on the left side only.", encoding="utf-8")
    report = ingest(settings, embedder, corpus)
    assert (report.updated, report.unchanged, report.added) == (1, 7, 0)
    with open_kb(settings) as kb:
        texts = [c.text for c in kb.chunks(range(1, 200)).values() if c.source == str(notes)]
        assert texts == ["Clearance is now 50 cm on the left side only."]


def test_touched_but_identical_file_is_not_re_embedded(settings, embedder, corpus: Path) -> None:
    ingest(settings, embedder, corpus)
    later = time.time() + 100
    os.utime(corpus / "guide.md", (later, later))
    report = ingest(settings, embedder, corpus)
    assert (report.unchanged, report.chunks_written) == (8, 0)
    with open_kb(settings) as kb:
        assert kb.document_by_path(str(corpus / "guide.md")).mtime == later


def test_deleted_files_are_removed_only_with_sync(settings, embedder, corpus: Path) -> None:
    ingest(settings, embedder, corpus)
    (corpus / "notes.txt").unlink()
    kept = ingest(settings, embedder, corpus)
    assert kept.removed == 0
    with open_kb(settings) as kb:
        assert kb.document_by_path(str(corpus / "notes.txt")) is not None
    synced = ingest(settings, embedder, corpus, sync=True)
    assert synced.removed == 1
    with open_kb(settings) as kb:
        assert kb.document_by_path(str(corpus / "notes.txt")) is None
        assert not any("clearance" in c.text for c in kb.chunks(range(1, 200)).values())


def test_sync_leaves_documents_outside_the_given_paths(settings, embedder, corpus: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("A document from another folder.")
    ingest(settings, embedder, corpus, other)
    report = ingest(settings, embedder, corpus, sync=True)
    assert report.removed == 0
    with open_kb(settings) as kb:
        assert kb.document_by_path(str(other / "keep.txt")) is not None


def test_same_content_under_two_paths_is_stored_once(settings, embedder, corpus: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(corpus / "handbook.pdf", copy / "handbook-copy.pdf")
    report = ingest(settings, embedder, corpus, copy)
    assert (report.added, report.duplicate) == (8, 1)
    paths = [corpus / "handbook.pdf", copy / "handbook-copy.pdf"]
    with open_kb(settings) as kb:
        docs = {p: kb.document_by_path(str(p)) for p in paths}
        assert sorted(d.status for d in docs.values()) == ["duplicate", "ok"]
        original = next(p for p, d in docs.items() if d.status == "ok")
        twin = next(p for p in paths if p != original)
        assert docs[twin].chunks == 0 and docs[twin].content_of == docs[original].doc_id
        n_chunks = kb.chunk_count()
    # The stored original goes; its twin inherits the chunks instead of the content being lost.
    original.unlink()
    report = ingest(settings, embedder, corpus, copy, sync=True)
    assert report.removed == 1 and report.chunks_written == 0
    with open_kb(settings) as kb:
        heir = kb.document_by_path(str(twin))
        assert heir.status == "ok" and heir.chunks == 3 and kb.chunk_count() == n_chunks
        top = search(kb, embedder, "How long does the warranty last?")[0]
        assert (top.source, top.page_no) == (str(twin), 2)


def test_bad_files_are_reported_and_recorded_and_the_rest_ingested(
    settings, embedder, corpus: Path, pdf_file: Path
) -> None:
    bad = corpus
    (bad / "corrupt.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf\n%%EOF")
    write_encrypted_pdf(bad / "locked.pdf", pdf_file)
    write_scanned_pdf(bad / "scan.pdf")
    (bad / "empty.txt").write_bytes(b"")
    (bad / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (bad / "gone.md").symlink_to(bad / "does-not-exist.md")
    report = ingest(settings, embedder, bad)
    assert report.added == 8, "every good file is still ingested"
    assert (report.failed, report.empty, report.exit_code) == (4, 2, 1)
    reasons = {Path(p.path).name: p.reason for p in report.problems}
    assert "encrypted" in reasons["locked.pdf"] and "decrypt" in reasons["locked.pdf"]
    assert "OCR" in reasons["scan.pdf"]
    assert "binary" in reasons["binary.txt"]
    assert "cannot read" in reasons["gone.md"]
    assert "empty" in reasons["empty.txt"]
    assert "not a readable PDF" in reasons["corrupt.pdf"]
    with open_kb(settings) as kb:
        recorded = {Path(d.path).name: (d.status, d.error) for d in kb.documents() if d.status != "ok"}
        assert {k: v[0] for k, v in recorded.items()} == {
            "corrupt.pdf": "failed",
            "locked.pdf": "failed",
            "binary.txt": "failed",
            "gone.md": "failed",
            "scan.pdf": "empty",
            "empty.txt": "empty",
        }
        assert all(error for _, error in recorded.values())


def test_a_good_file_turned_bad_keeps_its_chunks(settings, embedder, corpus: Path) -> None:
    ingest(settings, embedder, corpus)
    pdf = corpus / "handbook.pdf"
    pdf.write_bytes(pdf.read_bytes()[:300])  # a bad save
    report = ingest(settings, embedder, corpus)
    assert report.failed == 1 and report.exit_code == 1
    with open_kb(settings) as kb:
        doc = kb.document_by_path(str(pdf))
        assert doc.status == "ok" and doc.chunks == 3  # still answerable from the last good version


def test_missing_path_argument_is_reported_not_recorded(settings, embedder, corpus: Path) -> None:
    report = ingest(settings, embedder, corpus, corpus / "no-such-folder")
    assert report.added == 8 and report.failed == 1
    assert "no such file" in report.problems[0].reason
    with open_kb(settings) as kb:
        assert kb.document_by_path(str(corpus / "no-such-folder")) is None


def test_unreadable_file_as_a_normal_user(tmp_path: Path) -> None:
    """Root reads every file whatever its mode; as root (as in CI) the command runs without the
    capabilities that allow it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), as a user would."""
    import shutil

    from tests.hostile.conftest import rag

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "open.txt").write_text("Anyone may read this note about the warranty.", encoding="utf-8")
    (docs / "secret.txt").write_text("x", encoding="utf-8")
    (docs / "secret.txt").chmod(0)
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("needs setpriv (util-linux) to run the command without root's file-reading capabilities")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    run = rag("ingest", str(docs), "--kb", "t", data=tmp_path / "data", prefix=prefix)
    assert run.code == 1, run.text
    assert "secret.txt: cannot read: Permission denied" in run.err
    assert [line.split()[:2] for line in run.out.splitlines() if line.strip().startswith(("added", "failed"))] == [
        ["added", "1"],
        ["failed", "1"],
    ]


def test_glob_limits_what_is_ingested(settings, embedder, corpus: Path) -> None:
    report = ingest(settings, embedder, corpus, pattern="*.pdf")
    assert report.added == 1
    with open_kb(settings) as kb:
        assert [Path(d.path).name for d in kb.documents()] == ["handbook.pdf"]


def test_hidden_files_and_unsupported_formats_are_skipped_in_folders(settings, embedder, corpus: Path) -> None:
    (corpus / ".secret.md").write_text("hidden")
    (corpus / "drawing.dwg").write_bytes(b"AC1032")
    (corpus / "old.DOC").write_bytes(b"\xd0\xcf\x11\xe0")
    (corpus / "gone.txt").symlink_to(corpus / "nowhere")  # a broken link is a failure, counted below
    report = ingest(settings, embedder, corpus)
    assert (report.added, report.failed) == (8, 1)
    # Not failures, but the user is told what was left out and why: formats no loader reads.
    assert report.unsupported == {".dwg": 1, ".doc": 1}
    assert ingest(settings, embedder, corpus, pattern="*.pdf").unsupported == {}, "--glob chose the files"


def test_an_hnsw_base_follows_its_folder_like_a_flat_one(settings, embedder, corpus: Path) -> None:
    hnsw = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"dense_index": "hnsw"})})
    assert ingest(hnsw, embedder, corpus).added == 8
    (corpus / "notes.txt").write_text("The pump must be primed with water before its first start.")
    (corpus / "guide.md").unlink()
    report = ingest(settings, embedder, corpus, sync=True)  # unset: the base keeps its kind
    assert (report.updated, report.removed) == (1, 1)
    with open_kb(settings) as kb:
        assert kb.meta()["dense_index"] == "hnsw"
        assert_consistent(kb)  # the replaced and removed chunks left the graph too
        top = search(kb, embedder, "How do I prime the pump?")[0]
        assert Path(top.source).name == "notes.txt" and "primed with water" in top.text


def test_changing_chunk_settings_rechunks_on_the_next_run(settings, embedder, corpus: Path) -> None:
    ingest(settings, embedder, corpus)
    smaller = settings.model_copy(update={"chunk": settings.chunk.model_copy(update={"size": 20, "overlap": 0})})
    report = ingest(smaller, embedder, corpus)
    assert report.updated == 8
    with open_kb(settings) as kb:
        assert {d.chunker for d in kb.documents()} == {chunker_fingerprint(smaller.chunk)}
    assert chunker_fingerprint(smaller.chunk) != chunker_fingerprint(settings.chunk)


def test_a_base_built_with_another_model_is_refused_by_name(settings, embedder, corpus: Path) -> None:
    from rag.embed import EmbedderIdentity

    LocalStore.create(settings.kb_dir("t"), EmbedderIdentity("intfloat/e5-small-v2", 384, True)).close()
    with pytest.raises(ModelMismatch, match=r"built with embedding model 'intfloat/e5-small-v2'.*all-MiniLM"):
        ingest(settings, embedder, corpus)


def test_a_second_writer_is_refused_while_one_holds_the_base(settings, embedder, corpus: Path) -> None:
    ingest(settings, embedder, corpus)
    with open_kb(settings) as kb, kb.writer(), pytest.raises(KBLocked, match="another process"):
        ingest(settings, embedder, corpus)


def test_a_reader_sees_new_generations_without_reopening(settings, embedder, corpus: Path, tmp_path: Path) -> None:
    ingest(settings, embedder, corpus / "notes.txt")
    with open_kb(settings) as reader:
        assert reader.dense_index().ntotal == 1
        ingest(settings, embedder, corpus)
        assert reader.dense_index().ntotal == reader.chunk_count() > 1
        assert_consistent(reader)


def test_nothing_on_disk_is_a_pickle(settings, embedder, corpus: Path) -> None:
    import numpy as np

    ingest(settings, embedder, corpus)
    root = settings.kb_dir("t")
    files = [p for p in root.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".joblib")]
    for npy in [p for p in files if p.suffix == ".npy"]:
        np.load(npy, allow_pickle=False)  # raises if any array needs pickle
    assert {p.name for p in root.iterdir()} >= {"kb.sqlite", "dense-1.faiss", "bm25-1"}


def test_old_generations_are_retired(settings, embedder, corpus: Path) -> None:
    for i in range(4):
        (corpus / "notes.txt").write_text(f"version {i} of the notes")
        ingest(settings, embedder, corpus)
    names = {p.name for p in settings.kb_dir("t").iterdir()}
    gens = sorted(int(n.split("-")[1].split(".")[0]) for n in names if n.startswith("dense-"))
    assert gens == [3, 4], "the current and the previous generation only"


def test_real_shared_documents(settings, embedder) -> None:
    docs = shared_path("docs")
    report = ingest(settings, embedder, docs)
    assert report.failed == 0
    assert report.empty == 0  # the scanned / image-only PDFs are read with OCR
    assert report.added == 21
    with open_kb(settings) as kb:
        top = search(kb, embedder, "ReAct reasoning and acting with language models", k=5)
        assert any(c.source.endswith("react_paper.pdf") and c.page_no == 1 for c in top)
        top = search(kb, embedder, "Slerexe Company Limited telephone", k=3)
        assert top[0].source.endswith("file_scanned.pdf") and top[0].metadata["read"] == "ocr"
        zh = [c for c in kb.chunks(range(1, 3000)).values() if c.source.endswith("大模型推理优化策略.md")]
        assert len(zh) > 3
