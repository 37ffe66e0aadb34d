"""Tables kept whole: ruled PDF tables found and turned into Markdown where they stand on the page,
with each row's box, and a question about one cell of a long financial table retrieves the row
together with the header that says which column is which year."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ingest import loaders
from ingest.tables import Table, candidate_pages, pdf_tables, splice_tables, to_markdown
from rag.types import Layout, Page
from tests.conftest import shared_path
from tests.fixtures.documents import write_pdf
from tests.fixtures.tables import (
    CAPEX,
    CAPEX_VALUES,
    FILING_ROWS,
    HEADER,
    TITLE,
    cash_flow_rows,
    pdfium_text_pages,
    write_filing_pdf,
    write_table_pdf,
)

HEADER_LINE = to_markdown([HEADER, ["x"] * 4]).splitlines()[0]  # "| (in millions of dollars) | 2019 | 2020 | 2021 |"
CAPEX_LINE = "| " + " | ".join([CAPEX, *CAPEX_VALUES]) + " |"


@pytest.fixture(scope="module")
def table_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_table_pdf(tmp_path_factory.mktemp("tables") / "cash-flows.pdf")


# ---- Markdown --------------------------------------------------------------------------------
def test_markdown_has_a_header_a_separator_and_escaped_cells() -> None:
    rows = [
        ["", "item", "", "2019"],
        ["", "", "", ""],
        ["", "Capital\nexpenditure", None, "(1,699)"],
        ["", "a | b", "", "7"],
    ]
    assert to_markdown(rows).splitlines() == [
        "| item | 2019 |",
        "| --- | --- |",
        "| Capital expenditure | (1,699) |",
        "| a \\| b | 7 |",
    ]
    assert to_markdown([["", None], [" ", ""]]) == ""


def test_amounts_split_over_a_currency_column_line_up_under_their_year() -> None:
    # as pdfplumber reads a filing: "$" has a column, and a row without "$" has its amount there
    rows = [
        ["(Millions)", "", "", "2022", "", "", "2021"],
        ["Net sales", "", "$", "34,229", "", "$", "35,355"],
        ["Cost of sales", "", "19,232", "", "", "18,795", ""],
        ["Other", "", "—", "", "", "(12)", ""],
    ]
    assert to_markdown(rows).splitlines() == [
        "| (Millions) | 2022 | 2021 |",
        "| --- | --- | --- |",
        "| Net sales | $34,229 | $35,355 |",
        "| Cost of sales | 19,232 | 18,795 |",
        "| Other | — | (12) |",
    ]
    named = [["part", "Q1", "Q2"], ["a", "5", ""], ["b", "", "7"]]  # a header keeps named columns apart
    assert to_markdown(named).splitlines()[2:] == ["| a | 5 |  |", "| b |  | 7 |"]


# ---- finding tables in a PDF -------------------------------------------------------------------
def test_the_years_set_above_a_filings_rules_become_its_header(tmp_path: Path) -> None:
    data = write_filing_pdf(tmp_path / "income.pdf").read_bytes()
    (table,) = pdf_tables(data, range(1))[0]
    assert table.rows[0][0] == FILING_ROWS[0][0] and [c for c in table.rows[0][1:] if c] == ["2022", "2021"]
    assert table.bbox[1] == table.row_boxes[0][1] < table.row_boxes[1][1], "the table's box takes in the line"
    assert to_markdown(table.rows).splitlines()[:4] == [
        "| (Millions, except per share amounts) | 2022 | 2021 |",
        "| --- | --- | --- |",
        "| Net sales | $34,229 | $35,355 |",
        "| Cost of sales | 19,232 | 18,795 |",
    ]
    (page,) = loaders.load_file(tmp_path / "income.pdf", data)
    assert page.text.count("2022") == 1 and "| Operating income | $6,539 | $7,369 |" in page.text
    # a table that names its own columns keeps its first row as the header
    (ruled,) = pdf_tables(write_table_pdf(tmp_path / "ruled.pdf").read_bytes(), range(1))[0]
    assert ruled.rows[0] == HEADER


def test_unmapped_glyphs_are_dropped_from_cells_and_a_table_of_them_is_no_table() -> None:
    assert to_markdown([["item", "2019(cid:3)"], ["Capex", "(cid:80)(1,699)"]]).splitlines()[2] == "| Capex | (1,699) |"
    react = shared_path("docs", "pdf", "react_paper.pdf")
    found = pdf_tables(react.read_bytes(), range(4))
    assert not any("(cid:" in cell for tables in found.values() for t in tables for row in t.rows for cell in row)
    (page_two,) = [p for p in loaders.load_file(react, react.read_bytes()) if p.page_no == 2]
    assert "(cid:" not in page_two.text and "ReAct" in page_two.text, "the figure's codes stay out; the text stays"


def test_a_multi_page_ruled_table_is_found_on_every_page_with_its_header(table_pdf: Path) -> None:
    data = table_pdf.read_bytes()
    n_pages = len(pdfium_text_pages(data))
    assert n_pages >= 3
    tables = pdf_tables(data, range(n_pages))
    assert sorted(tables) == list(range(n_pages))
    rows = [row for i in range(n_pages) for table in tables[i] for row in table.rows]
    for i in range(n_pages):
        (table,) = tables[i]
        assert table.rows[0] == HEADER  # reportlab repeats the header row on every page
        assert len(table.row_boxes) == len(table.rows)
        tops = [box[1] for box in table.row_boxes]
        assert tops == sorted(tops)  # rows top to bottom, in top-left coordinates
    body = [row for row in rows if row != HEADER]
    assert body == cash_flow_rows()[1:]  # every line item once, every cell as written
    assert [CAPEX, *CAPEX_VALUES] in body


def test_pages_without_rules_are_not_given_to_pdfplumber(tmp_path: Path, table_pdf: Path) -> None:
    text_only = write_pdf(tmp_path / "text.pdf", [["Just a paragraph.", "And another line."]] * 3).read_bytes()
    assert candidate_pages(text_only, range(3)) == []
    assert pdf_tables(text_only, range(3)) == {}
    data = table_pdf.read_bytes()
    assert candidate_pages(data, range(3)) == [0, 1, 2]
    assert candidate_pages(data, [2, 7]) == [2]  # pages past the end are ignored
    assert pdf_tables(b"not a pdf", range(3)) == {}


def test_pdf_without_drawn_tables_skips_pdfplumber() -> None:
    """table.pdf in the shared documents holds its tables as images: nothing to find, found fast."""
    data = shared_path("docs", "pdf", "table.pdf").read_bytes()
    started = time.perf_counter()
    assert pdf_tables(data, range(1)) == {}
    assert time.perf_counter() - started < 1.0


# ---- splicing into the page text ---------------------------------------------------------------
def test_splice_puts_the_table_where_it_stands_and_boxes_each_row() -> None:
    # "Intro" on one line, a 2x2 table below it (its text as the text layer has it), then "End".
    lines = [("Intro", 10), ("h1 h2", 30), ("a b", 40), ("End", 80)]
    text = "\n".join(line for line, _ in lines)
    boxes = []
    for n, (line, top) in enumerate(lines):
        boxes += [(10.0 + 5 * k, top, 14.0 + 5 * k, top + 8) for k in range(len(line))]
        if n < len(lines) - 1:
            boxes.append((np.nan,) * 4)
    layout = Layout(100, 100, np.asarray(boxes, dtype=np.float32))
    table = Table([["h1", "h2"], ["a", "b"]], [(5, 28, 60, 38), (5, 38, 60, 50)], (5, 28, 60, 50))
    new_text, new_layout = splice_tables(text, layout, [table])
    assert new_text == "Intro\n\n| h1 | h2 |\n| --- | --- |\n| a | b |\n\nEnd"
    assert len(new_layout.boxes) == len(new_text)
    header_at = new_text.index("| h1")
    assert (new_layout.boxes[header_at : header_at + len("| h1 | h2 |")] == (5, 28, 60, 38)).all()
    row_at = new_text.index("| a |")
    assert (new_layout.boxes[row_at : row_at + len("| a | b |")] == (5, 38, 60, 50)).all()
    assert np.isnan(new_layout.boxes[new_text.index("| ---")]).all()
    assert (new_layout.boxes[new_text.index("End")] == layout.boxes[text.index("End")]).all()
    assert splice_tables(text, layout, []) == (text, layout)


def test_spliced_pdf_pages_read_in_order_with_one_box_per_character(table_pdf: Path) -> None:
    data = table_pdf.read_bytes()
    tables = pdf_tables(data, range(3))
    pages = [splice_tables(text, layout, tables.get(i, [])) for i, (text, layout) in enumerate(pdfium_text_pages(data))]
    for text, layout in pages:
        assert len(layout.boxes) == len(text)
        assert text.count(HEADER_LINE) == 1 and text.count("| --- | --- | --- | --- |") == 1
        assert "Depreciation and amortization 47" not in text  # no cell left behind as loose text
    first, last = pages[0][0], pages[-1][0]
    assert first.index(TITLE) < first.index("The statement below") < first.index(HEADER_LINE)
    assert last.index(HEADER_LINE) < last.index("The accompanying notes")
    # the row's characters carry the row's box, which lies where pdfplumber found the row
    text, layout = pages[1]
    at = text.index(CAPEX_LINE)
    box = layout.boxes[at]
    assert (layout.boxes[at : at + len(CAPEX_LINE)] == box).all()
    (table,) = tables[1]
    assert tuple(box) == pytest.approx(table.row_boxes[table.rows.index([CAPEX, *CAPEX_VALUES])])


# ---- the table test of issue 17 ----------------------------------------------------------------
def pdf_loader_with_tables(monkeypatch: pytest.MonkeyPatch, probe: Path) -> str:
    """The PDF loader as ingest runs it; if it does not splice tables into its pages yet, wrapped
    so that it does (pdf_tables + splice_tables on its own text and boxes).  Says which it was."""
    original = loaders.load_pdf

    def load_pdf(path: Path, data: bytes, **kw) -> list[Page]:
        pages = original(path, data, **kw)
        if any("| --- |" in p.text for p in pages):
            return pages
        tables = pdf_tables(data, [p.page_no - 1 for p in pages])
        text_layer = pdfium_text_pages(data)  # a loader without character boxes: pypdfium2's
        spliced = []
        for p in pages:
            found = tables.get(p.page_no - 1)
            if found:
                text, layout = (p.text, p.layout) if p.layout is not None else text_layer[p.page_no - 1]
                text, layout = splice_tables(text, layout, found)
                p = Page(text, p.source, p.page_no, p.metadata, layout)
            spliced.append(p)
        return spliced

    if any("| --- |" in p.text for p in original(probe, probe.read_bytes())):
        return "loader"
    monkeypatch.setattr(loaders, "load_pdf", load_pdf)
    monkeypatch.setitem(loaders.LOADERS, ".pdf", load_pdf)
    return "wrapped in the test"


@pytest.mark.slow
def test_a_question_about_one_cell_retrieves_its_row_with_the_header(
    settings, embedder, table_pdf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingest.pipeline import IngestPipeline, open_for_ingest
    from rag.retrieve import Retriever
    from rag.store.local import LocalStore

    how = pdf_loader_with_tables(monkeypatch, table_pdf)
    with open_for_ingest(settings, "t", embedder) as kb:
        report = IngestPipeline(settings, embedder, kb).run([table_pdf])
    assert report.added == 1 and report.exit_code == 0, how
    with LocalStore.open(settings.kb_dir("t")) as kb:
        chunks = list(kb.chunks(range(1, 200)).values())
        for chunk in chunks:  # every chunk holding table rows starts with the header row
            if "| ---" in chunk.text:
                assert HEADER_LINE in chunk.text, how
        # the retriever `rag ask` uses, with the default settings (hybrid: dense + BM25)
        top = Retriever(kb, embedder, settings.retrieve).search("What was the capital expenditure in 2019?").hits[0]
        top = top.chunk
    assert CAPEX_LINE in top.text and HEADER_LINE in top.text, (how, top.text)
    assert top.text.index(HEADER_LINE) < top.text.index(CAPEX_LINE)
