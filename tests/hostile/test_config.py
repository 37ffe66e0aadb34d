"""Configuration mistakes are errors that say what to change, before anything is created."""

from __future__ import annotations

from pathlib import Path

from tests.hostile.conftest import rag


def test_an_empty_data_dir_is_an_error_not_the_current_folder(data: Path, docs: Path) -> None:
    run = rag("ingest", str(docs), "--kb", "x", data=data, cwd=docs, RAG_DATA_DIR="")
    assert run.code == 2 and "data_dir = '' (from RAG_DATA_DIR): is empty" in run.err, run.text
    assert not (docs / "kb").exists()


def test_a_misspelt_environment_section_is_an_error_with_a_guess(data: Path) -> None:
    run = rag("kb", "list", data=data, RAG_CHUNKK__SIZE="3")
    assert run.code == 2 and "RAG_CHUNKK__SIZE: not a setting; did you mean RAG_CHUNK__SIZE?" in run.err, run.text


def test_similarity_gates_are_bounded(data: Path) -> None:
    run = rag("kb", "list", data=data, RAG_RETRIEVE__MIN_SIMILARITY="5", RAG_RETRIEVE__MIN_SIMILARITY_ZH="-3")
    assert run.code == 2, run.text
    assert "retrieve.min_similarity = '5'" in run.err and "less than or equal to 1" in run.err
    assert "retrieve.min_similarity_zh = '-3'" in run.err and "greater than or equal to -1" in run.err


def test_a_chunk_size_the_model_cannot_read_leaves_no_base_behind(data: Path, docs: Path) -> None:
    run = rag("ingest", str(docs), "--kb", "new", data=data, RAG_CHUNK__SIZE="100000")
    assert run.code == 2 and "chunk.size is 100000 tokens but the embedding model reads at most" in run.err, run.text
    assert not (data / "kb" / "new").exists()


def test_a_data_dir_that_cannot_be_created_is_one_line(data: Path, docs: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    run = rag("ingest", str(docs), "--kb", "x", data=data, RAG_DATA_DIR=str(blocker / "data"))
    assert run.code == 2 and "Traceback" not in run.text, run.text  # a configuration error
    assert "cannot create the knowledge base folder" in run.err and "data_dir" in run.err
    listing = rag("kb", "list", data=data, RAG_DATA_DIR=str(blocker / "data"))
    assert listing.code == 0 and "no knowledge bases" in listing.out
