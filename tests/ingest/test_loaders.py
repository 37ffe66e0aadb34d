"""Every format becomes text a user would recognise, with page numbers where the format has pages;
every kind of bad file becomes a LoadError that says what is wrong and what to do."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ingest.loaders import LoadError, OcrSettings, load_file
from tests.conftest import shared_path
from tests.fixtures.documents import (
    CHINESE_TEXT,
    write_docx,
    write_encrypted_pdf,
    write_scanned_pdf,
    write_xlsx,
)


def load(path: Path):
    return load_file(path, path.read_bytes())


def test_pdf_yields_one_page_per_pdf_page_in_order(pdf_file: Path) -> None:
    pages = load(pdf_file)
    assert [p.page_no for p in pages] == [1, 2, 3]
    assert "installation" in pages[0].text
    assert "ten years" in pages[1].text and "ten years" not in pages[0].text + pages[2].text
    assert all(p.source == str(pdf_file) for p in pages)


def test_txt_and_markdown(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Plain text about heat pumps.\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("# Title\n\nSome *markdown* body.\n", encoding="utf-8")
    assert load(tmp_path / "a.txt")[0].text.startswith("Plain text about heat pumps.")
    md = load(tmp_path / "b.md")[0]
    assert "# Title" in md.text and md.page_no is None


def test_utf8_with_bom_loses_the_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffHello".encode())
    assert load(path)[0].text == "Hello"


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "utf-8"])
def test_chinese_text_in_legacy_encodings_decodes_right(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / f"zh-{encoding}.txt"
    path.write_bytes(CHINESE_TEXT.encode(encoding))
    assert load(path)[0].text == CHINESE_TEXT


WESTERN_TEXTS = [
    "Café crème brûlée is a French dessert made of custard with a caramel top. It is served cold.",
    "Grüße aus München: die schöne Straße am Fluss.",
    "Mañana señor, la niña está en el jardín.",
]


@pytest.mark.parametrize("encoding", ["latin_1", "cp1252"])
@pytest.mark.parametrize("text", WESTERN_TEXTS, ids=["fr", "de", "es"])
def test_western_text_in_legacy_encodings_decodes_right(tmp_path: Path, text: str, encoding: str) -> None:
    # Several code pages fit these equally well; the French one came back as "crčme brűlée" (cp1250).
    path = tmp_path / f"{encoding}.txt"
    path.write_bytes(text.encode(encoding))
    assert load(path)[0].text == text


def test_html_drops_scripts_and_styles_and_keeps_the_title(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title>Support</title><style>p{color:red}</style><script>var x=1;</script></head>"
        "<body><h1>Contact</h1><p>Call us on Monday.</p></body></html>",
        encoding="utf-8",
    )
    page = load(path)[0]
    assert "Contact" in page.text and "Call us on Monday." in page.text
    assert "color:red" not in page.text and "var x" not in page.text
    assert page.metadata == {"title": "Support"}


def test_docx_paragraphs_and_tables(tmp_path: Path) -> None:
    path = write_docx(
        tmp_path / "spec.docx",
        ["The H10 stores 10 kWh.", "It weighs 120 kg."],
        table=[["part", "warranty"], ["module", "10 years"]],
    )
    text = load(path)[0].text
    assert "The H10 stores 10 kWh." in text and "It weighs 120 kg." in text
    assert "module | 10 years" in text


def test_csv_rows_keep_their_header(tmp_path: Path) -> None:
    path = tmp_path / "parts.csv"
    path.write_text("part,price\nmodule,4000\ninverter,1200\n", encoding="utf-8")
    assert load(path)[0].text.splitlines() == ["part: module; price: 4000", "part: inverter; price: 1200"]


def test_xlsx_one_page_per_sheet_rows_with_header(tmp_path: Path) -> None:
    path = write_xlsx(
        tmp_path / "book.xlsx",
        {"Prices": [["part", "price"], ["module", 4000]], "Stock": [["part", "count"], ["inverter", 7]]},
    )
    pages = load(path)
    assert [(p.page_no, p.metadata["sheet"]) for p in pages] == [(1, "Prices"), (2, "Stock")]
    assert pages[0].text == "part: module; price: 4000"
    assert pages[1].text == "part: inverter; count: 7"


# ---- bad input: a clear reason and a status, never a crash -----------------------------------
def test_binary_file_with_text_extension_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(LoadError, match="binary") as err:
        load(path)
    assert err.value.status == "failed"


def test_undecodable_text_is_refused_with_a_fix(tmp_path: Path) -> None:
    path = tmp_path / "mystery.txt"
    path.write_bytes(bytes([0x80 + (i * 37) % 127 for i in range(3000)]))
    with pytest.raises(LoadError) as err:
        load(path)
    assert err.value.status == "failed"
    assert "UTF-8" in str(err.value) or "binary" in str(err.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.md"
    path.write_bytes(b"")
    with pytest.raises(LoadError, match="empty") as err:
        load(path)
    assert err.value.status == "empty"


def test_corrupt_pdf(tmp_path: Path) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage that is not a PDF body\n")
    with pytest.raises(LoadError, match="not a readable PDF") as err:
        load(path)
    # "empty" means a readable file with no text (a scan, a blank page): OCR could help. A file
    # that is not a PDF at all is a failure: only repairing or re-exporting it helps.
    assert err.value.status == "failed"


def test_truncated_pdf(tmp_path: Path, pdf_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "truncated.pdf"
    path.write_bytes(pdf_file.read_bytes()[:400])
    with pytest.raises(LoadError, match="PDF"):
        load(path)
    # Said once, by the LoadError: pypdf's own "EOF marker not found" used to cut through the bars.
    assert not [r for r in caplog.records if r.name.startswith("pypdf")]
    assert logging.getLogger("pypdf").level == logging.NOTSET, "pypdf's logging is left as it was"


def test_encrypted_pdf_says_decrypt_it(tmp_path: Path, pdf_file: Path) -> None:
    path = write_encrypted_pdf(tmp_path / "locked.pdf", pdf_file)
    with pytest.raises(LoadError, match=r"encrypted.*decrypt") as err:
        load(path)
    assert err.value.status == "failed"


def test_pdf_encrypted_with_an_empty_password_is_read(tmp_path: Path, pdf_file: Path) -> None:
    path = write_encrypted_pdf(tmp_path / "owner-only.pdf", pdf_file, password="")
    assert "ten years" in load(path)[1].text


def test_scanned_pdf_is_empty_and_says_ocr(tmp_path: Path) -> None:
    path = write_scanned_pdf(tmp_path / "scan.pdf")
    with pytest.raises(LoadError, match="OCR") as err:
        load(path)
    assert err.value.status == "empty"


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "drawing.dwg"
    path.write_bytes(b"AC1032....")
    with pytest.raises(LoadError, match="unsupported"):
        load(path)


def test_a_broken_image_says_so(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG....")
    with pytest.raises(LoadError, match="not a readable image") as err:
        load(path)
    assert err.value.status == "failed"


# ---- real PDFs from other RAG projects' test suites --------------------------------------------
def test_real_paper_pdf_pages_and_text() -> None:
    path = shared_path("docs", "pdf", "react_paper.pdf")
    pages = load_file(path, path.read_bytes(), ocr=OcrSettings(mode="off"))  # its OCR: tests/ingest/test_ocr.py
    assert len(pages) > 10
    assert [p.page_no for p in pages] == list(range(1, len(pages) + 1))
    assert "ReAct" in pages[0].text


def test_real_pdf_with_a_blank_page_keeps_the_numbers_of_the_others() -> None:
    pages = load(shared_path("docs", "pdf", "sample_pdf_1.pdf"))
    assert [p.page_no for p in pages] == [1, 2, 3, 4]
    assert pages[0].text.strip() and not pages[2].text.strip()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("file_scanned.pdf", "THE SLEREXE COMPANY LIMITED"),
        ("non_text_searchable.pdf", "This is an example of a non-text-searchable PDF"),
        ("file_image.pdf", "This is an example of an “Image-based PDF”"),
    ],
)
def test_real_scanned_pdfs_are_read_with_ocr_and_empty_without(name: str, expected: str) -> None:
    path = shared_path("docs", "pdf", name)
    (page,) = load(path)
    assert expected in page.text and page.metadata["read"] == "ocr"
    with pytest.raises(LoadError, match="no text layer") as err:
        load_file(path, path.read_bytes(), ocr=OcrSettings(mode="off"))
    assert err.value.status == "empty"


def test_every_real_shared_document_loads_or_fails_cleanly() -> None:
    folder = shared_path("docs")
    outcomes = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            try:
                outcomes[path.name] = sum(len(p.text) for p in load(path))
            except LoadError as exc:
                outcomes[path.name] = exc.status
    assert outcomes["test.txt"] > 1000  # a Chinese text file
    assert outcomes["langchain.pdf"] > 1000
    assert outcomes["大模型推理优化策略.md"] > 1000
    assert set(v for v in outcomes.values() if isinstance(v, str)) <= {"empty"}


def test_docx_tables_are_markdown_where_they_stand_and_headings_stay_headings(tmp_path: Path) -> None:
    from tests.fixtures.tables import write_docx_with_table

    text = load(write_docx_with_table(tmp_path / "spec.docx"))[0].text
    assert text.split("\n\n") == [
        "# Helios H10 specification",
        "# Warranty",
        "The warranty terms depend on the part.",
        "| part | warranty | notes |\n| --- | --- | --- |\n"
        "| module | 10 years | or 30 MWh |\n| inverter | 5 years | a \\| b |",
        "Claims go through the installer.",
        "## Cleaning",
        "Wipe the casing with a dry cloth.",
    ]
