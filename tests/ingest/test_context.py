"""Each chunk's title and nearest heading: found in Markdown, in PDF text, carried across pages."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.context import DocumentContext, document_title, indexed_text, looks_like_heading
from ingest.loaders import load_file
from rag.types import Chunk, Page
from tests.conftest import shared_path


@pytest.mark.parametrize(
    "line",
    [
        "Consolidated Statement of Cash Flows",
        "Notes to Consolidated Financial Statements",
        "Cash Flows from Operating Activities",
    ],
)
def test_statement_titles_are_headings(line: str) -> None:
    assert looks_like_heading(line)


@pytest.mark.parametrize(
    "line",
    [
        "Cash and cash equivalents 3,655 4,564",
        "Years ended December 31",
        "Assets",  # a row label of the table under the heading
        "The warranty lasts ten years.",
        "Organic growth/productivity and other:",
        "Common Stock and",
    ],
)
def test_rows_sentences_and_labels_are_not(line: str) -> None:
    assert not looks_like_heading(line)


def test_title_from_the_document_or_its_file_name() -> None:
    assert (
        document_title([Page("x", "/d/report.pdf", metadata={"title": "Annual Report 2022"})]) == "Annual Report 2022"
    )
    assert document_title([Page("x", "/d/3M_2022_10K.pdf", metadata={"title": "Microsoft Word - 10k.docx"})]) == (
        "3M 2022 10K"
    )
    assert document_title([Page("x", "scifact/4983")]) == ""


def test_markdown_headings_form_a_path_and_carry_over() -> None:
    text = "# Manual\nintro\n## Warranty\nThe battery is covered.\n### Exclusions\nFloods.\n## Cleaning\nWipe it."
    context = DocumentContext([Page(text, "/m.md")])
    assert context.heading(0, text.index("Floods")) == "Manual › Warranty › Exclusions"
    assert context.heading(0, text.index("Wipe")) == "Manual › Cleaning"


def test_a_statement_heading_is_carried_to_the_page_after_and_running_heads_are_not_headings() -> None:
    pages = [
        Page(f"Table of Contents\nNorthwind Energy Annual Report\nSome narrative text on page {n}.", "/r.pdf", n)
        for n in range(1, 5)
    ]
    pages.append(Page("Table of Contents\nConsolidated Statement of Cash Flows\nNet income 1,203 1,100", "/r.pdf", 5))
    pages.append(Page("Table of Contents\nCapital expenditures (1,749) (1,603)\nDividends paid (3,369)", "/r.pdf", 6))
    context = DocumentContext(pages)
    assert context.heading(5, 30) == "Consolidated Statement of Cash Flows"
    assert "Table of Contents" not in context.heading(4, 0)


def test_indexed_text_adds_what_the_chunk_does_not_say() -> None:
    chunk = Chunk(
        "Capital expenditures (1,749) (1,603)",
        "/r.pdf",
        6,
        0,
        0,
        36,
        metadata={"title": "3M 2022 10K", "heading": "Consolidated Statement of Cash Flows"},
    )
    assert indexed_text(chunk).splitlines() == [
        "3M 2022 10K",
        "Consolidated Statement of Cash Flows",
        "Capital expenditures (1,749) (1,603)",
    ]
    said = Chunk("Consolidated Statement of Cash Flows\nNet income", "/r.pdf", 5, 0, 0, 40, metadata=chunk.metadata)
    assert indexed_text(said).splitlines()[:2] == ["3M 2022 10K", "Consolidated Statement of Cash Flows"]


def test_a_real_filing_names_its_statements(tmp_path: Path) -> None:
    """Pages 41-70 of 3M's 10-K (the statements and the notes after them), cut out with pypdf so
    the test reads 30 pages rather than 252; enough for its running heads to repeat."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(shared_path("qa", "financebench-dev", "pdfs", "3M_2022_10K.pdf")).pages[40:70]:
        writer.add_page(page)
    path = tmp_path / "3M_2022_10K.pdf"
    with open(path, "wb") as fh:
        writer.write(fh)
    pages = load_file(path, path.read_bytes())
    context = DocumentContext(pages)
    cash_flows = next(i for i, p in enumerate(pages) if "\nConsolidated Statement of Cash Flows\n" in p.text)
    assert "Consolidated Statement of Cash Flows" in context.heading(cash_flows, len(pages[cash_flows].text) // 2)


def test_chunks_carry_title_and_heading(embedder, tmp_path: Path) -> None:
    from ingest.chunking import Chunker
    from rag.config import ChunkSettings

    path = tmp_path / "guide.md"
    path.write_text("# Helios H10 Guide\n\n## Warranty\n\n" + "The module is covered for ten years. " * 60)
    chunker = Chunker(ChunkSettings(), embedder.tokenizer, embedder.max_tokens)
    chunks = chunker.split_pages(load_file(path, path.read_bytes()))
    assert len(chunks) > 2
    assert {c.metadata["heading"] for c in chunks[1:]} == {"Helios H10 Guide › Warranty"}
    assert chunks[-1].metadata["title"] == "guide"
    off = Chunker(ChunkSettings(context=False), embedder.tokenizer, embedder.max_tokens)
    assert "heading" not in off.split_pages(load_file(path, path.read_bytes()))[-1].metadata


def test_a_title_from_a_hostile_file_name_is_plain_text() -> None:
    name = "caf\udce9 \x1b[2K\u202enotes"  # a Latin-1 byte kept as a surrogate, an escape, a bidi override
    assert document_title([Page("x", f"/d/{name}.txt")]) == "caf\ufffd [2Knotes"
