"""The `rag` command as a user types it: exit codes, summaries, kb management, config."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import display
from cli.main import app
from tests.conftest import MODEL_CACHE, REPO

SAMPLES = REPO / "samples" / "docs"


@pytest.fixture
def run(isolated: Path):
    env = {"RAG_DATA_DIR": str(isolated / "data"), "COLUMNS": "160"}

    def invoke(*args: str, **extra_env: str):
        return CliRunner().invoke(app, list(args), env={**env, **extra_env})

    return invoke


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return Path(shutil.copytree(SAMPLES, tmp_path / "docs"))


def test_ingest_the_samples_then_rerun(run, docs: Path, isolated: Path) -> None:
    (docs / "slides.pptx").write_bytes(b"PK")
    first = run("ingest", str(docs), "--kb", "sample")
    assert first.exit_code == 0, first.output
    assert "ingest into 'sample'" in first.output and "rebuilt" not in first.output
    assert "left out 1 file(s) in formats rag does not read: .pptx (1)" in first.output
    assert [line.split() for line in first.output.splitlines() if line.strip().startswith("added")] == [
        ["added", "5", "written", "10"]
    ]
    again = run("ingest", str(docs), "--kb", "sample")
    assert again.exit_code == 0
    assert "nothing new" in again.output and "rebuilt" not in again.output

    # A base indexed by an older version (BM25 chunk by chunk) is upgraded, and the user is told.
    with sqlite3.connect(isolated / "data" / "kb" / "sample" / "kb.sqlite") as db:
        db.execute("UPDATE meta SET value = '0' WHERE key = 'bm25_window'")
    upgraded = run("ingest", str(docs), "--kb", "sample")
    assert upgraded.exit_code == 0 and "rebuilt the keyword (BM25) index" in upgraded.output
    assert "nothing new" in upgraded.output

    converted = run("ingest", str(docs), "--kb", "sample", RAG_INGEST__DENSE_INDEX="hnsw")
    assert converted.exit_code == 0 and "converted the vector index to hnsw" in converted.output
    assert "converted" not in run("ingest", str(docs), "--kb", "sample").output, "the base keeps its new kind"

    show = run("kb", "show", "sample")
    assert show.exit_code == 0 and "hnsw index" in show.output
    for name in ["helios-h10-warranty.pdf", "helios-h10-manual.md", "faq.txt", "support.html", "海川储能电池说明.md"]:
        assert name in show.output
    assert "all-MiniLM-L6-v2" in show.output and "5 documents" in show.output


def test_an_ingest_into_a_log_reports_its_progress_in_lines(run, docs: Path, monkeypatch) -> None:
    """Under nohup or in CI the live bar draws nothing until the end: an hour's ingest looked hung."""
    monkeypatch.setattr(display, "LOG_EVERY_S", 0)  # a line at every update rather than every 30 s
    result = run("ingest", str(docs), "--kb", "sample")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("files 5/5 · ") for line in lines), result.output
    assert any(line.startswith("chunks embedded 10 · ") for line in lines)
    assert any(line.startswith("files ") and "faq.txt" in line for line in lines), "the file being read"


def test_bad_file_exit_1_with_one_clear_line_and_the_rest_committed(run, docs: Path) -> None:
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 nothing here")
    result = run("ingest", str(docs), "--kb", "sample")
    assert result.exit_code == 1
    line = next(line for line in result.output.splitlines() if "broken.pdf" in line and "failed" in line)
    assert "PDF" in line
    show = run("kb", "show", "sample")
    assert "not ingested" in show.output and "broken.pdf (failed): not a readable PDF" in show.output
    assert "6 documents" in show.output


def test_usage_errors_exit_2(run, docs: Path, tmp_path: Path) -> None:
    assert run("ingest").exit_code == 2  # no PATH
    assert run("ingest", str(docs), "--bogus").exit_code == 2
    (tmp_path / "rag.toml").write_text("[chunk]\nsize = 'big'\n")
    bad = run("ingest", str(docs))
    assert bad.exit_code == 2 and "rag.toml" in bad.output


def test_model_mismatch_says_which_model_built_the_base(run, docs: Path) -> None:
    assert run("ingest", str(docs / "faq.txt"), "--kb", "k").exit_code == 0
    other = run("ingest", str(docs), "--kb", "k", RAG_EMBED__MODEL="BAAI/bge-small-en-v1.5")
    assert other.exit_code == 2
    assert "built with embedding model 'sentence-transformers/all-MiniLM-L6-v2'" in other.output


def test_kb_list_rm_delete(run, docs: Path) -> None:
    assert run("ingest", str(docs), "--kb", "one").exit_code == 0
    listing = run("kb", "list")
    assert "one" in listing.output and "all-MiniLM-L6-v2" in listing.output

    removed = run("kb", "rm", "one", "faq.txt")
    assert removed.exit_code == 0 and "removed 1 document" in removed.output
    assert "faq.txt" not in run("kb", "show", "one").output
    assert run("kb", "rm", "one", "no-such.txt").exit_code == 2

    assert run("kb", "delete", "one", "--yes").exit_code == 0
    assert "no knowledge bases" in run("kb", "list").output
    assert run("kb", "delete", "one", "--yes").exit_code == 2
    assert run("kb", "show", "one").exit_code == 2


def test_kb_delete_asks_first(run, docs: Path, tmp_path: Path) -> None:
    run("ingest", str(docs / "faq.txt"), "--kb", "keep")
    env = {"RAG_DATA_DIR": str(tmp_path / "data")}
    declined = CliRunner().invoke(app, ["kb", "delete", "keep"], input="n\n", env=env)
    assert declined.exit_code == 1
    assert "keep" in run("kb", "list").output


def test_config_show_prints_effective_settings_as_toml(run) -> None:
    import tomllib

    result = run("config", "show", RAG_CHUNK__SIZE="123")
    assert result.exit_code == 0
    parsed = tomllib.loads(result.output)
    assert parsed["chunk"]["size"] == 123
    assert parsed["embed"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert parsed["retrieve"]["mode"] == "hybrid" and parsed["llm"]["backend"] == "local"
    assert "# retrieve.rerank_model is unset" in result.output


def test_help_is_useful(run) -> None:
    result = run("ingest", "--help")
    assert result.exit_code == 0
    for flag in ["--kb", "--glob", "--sync"]:
        assert flag in result.output


def _commands(group, path=()):
    for name, command in group.commands.items():
        yield (*path, name), command
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))


def test_every_help_text_reads_in_whole_sentences(run) -> None:
    # Typer kept the source's line breaks after a docstring's first paragraph, so `--help` broke
    # sentences mid-line ("... 0 all files\n ingested, 1 ..."). On a wide terminal each paragraph
    # must come out on one line.
    import typer

    checked = 0
    for path, command in _commands(typer.main.get_command(app)):
        result = run(*path, "--help", COLUMNS="400")
        assert result.exit_code == 0, (path, result.output)
        lines = [" ".join(line.strip(" │").split()) for line in result.output.splitlines()]
        for paragraph in (command.help or "").split("\n\n"):
            assert " ".join(paragraph.split()) in lines, (path, paragraph, result.output)
            checked += 1
    assert checked >= 25, "every command, with its multi-paragraph help, was checked"


def test_ask_json_says_where_each_pdf_passage_sits_on_its_page(run, pdf_file: Path) -> None:
    (pdf_file.parent / "notes.md").write_text("# Care\n\nThe warranty card is kept in the box.\n", encoding="utf-8")
    assert run("ingest", str(pdf_file.parent), "--kb", "handbook").exit_code == 0
    question = "How long does the warranty last?"
    llm = {"RAG_CACHE_DIR": str(MODEL_CACHE), "RAG_LLM__MAX_NEW_TOKENS": "32"}
    result = run("ask", question, "--kb", "handbook", "--json", "--mode", "bm25", **llm)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stderr may hold a one-time model conversion note
    pdf = [r for r in data["retrieved"] if r["source"].endswith(".pdf")]
    assert pdf and any(r["page"] == 2 for r in pdf)
    for passage in pdf + [c for c in data["citations"] if c["source"].endswith(".pdf")]:
        width, height = passage["page_size"]
        assert 590 < width < 600 and 835 < height < 845, "A4, in PDF points"
        assert passage["boxes"] and all(
            0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height for x0, y0, x1, y1 in passage["boxes"]
        )
    notes = [r for r in data["retrieved"] if r["source"].endswith(".md")]
    assert notes and all(r["boxes"] == [] and r["page_size"] is None for r in notes), "no pages, no boxes"


def test_kb_show_lists_the_pages_read_with_ocr_and_flags_low_scores(run, tmp_path: Path) -> None:
    from PIL.ImageFilter import GaussianBlur

    from tests.fixtures.scans import degraded, image_pdf, page_image

    docs = tmp_path / "scans"
    image_pdf(docs / "scan.pdf", [page_image(["Helios H10 service report", "The inverter was replaced."])] * 2)
    blurred = degraded(page_image(["Battery capacity measured at 9.6 kWh."]), 1.0, 30).filter(GaussianBlur(2.5))
    blurred.save(docs / "photo.png")  # read right, with a score a little under 1
    ingested = run("ingest", str(docs), "--kb", "scans")
    assert ingested.exit_code == 0, ingested.output
    show = run("kb", "show", "scans", RAG_INGEST__OCR_LOW_CONFIDENCE="0.999")
    assert show.exit_code == 0, show.output
    lines = show.output.split("read with OCR")[1].splitlines()
    scan = next(line for line in lines if "scan.pdf" in line)
    assert "pages 1, 2, mean score" in scan and "low confidence" not in scan
    photo = next(line for line in lines if "photo.png" in line)
    assert "page 1, mean score" in photo and "low confidence (< 0.999, ingest.ocr_low_confidence): 1 (0.99" in photo
