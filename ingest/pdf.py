"""PDF -> Pages: the text layer with each character's place on the page, OCR where there is none.

pypdf opens the file first: its errors name what is wrong (encrypted, damaged) in words a user can
act on.  The text then comes from pdfium (pypdfium2), which is about nine times faster than pypdf's
extract_text (5 s against 48 s for a 252-page 10-K here) and gives every character's box, which
is what lets a citation be highlighted on the page.  A page without usable text is rendered and
read with OCR (ingest.ocr), so a mixed PDF keeps its text layer where it has one.  "Usable" is
written here rather than left to the length of the text: a font whose map to Unicode is broken
gives a text layer of the right length in the wrong characters (see `garbled`).  A page whose
characters are right but whose boxes are out of place (`_misplaced`) is read by OCR
too in auto mode, for boxes a highlight can use; without OCR it keeps its text and has no boxes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ingest.errors import LoadError
from ingest.layout import INK_SCALE, INKLESS, inkless, scrambled
from ingest.ocr import OcrSettings, OcrUnavailable, read_image
from ingest.tables import pdf_tables, splice_tables
from rag.types import Layout, Page

PageProgress = Callable[[int, int], None]

# A text layer with this share of control characters is garbled.  On the 7,037 pages of the real
# PDFs in ../shared (49 annual reports, 14 samples), readable pages have none at all; the two pages
# of react_paper.pdf whose figure text is set in a font with a broken Unicode map have 4.2% and 5.2%
# ("$FW\x14\x1d7KLQN" for "Act 1: Think"), and OCR reads them correctly.
GARBLED_SHARE = 0.01
_CID = re.compile(r"\(cid:\d+\)")  # pdfminer's and pypdf's spelling of a glyph with no Unicode
# Control characters (Unicode category Cc) that are not whitespace, less \x02: pdfium's mark for a
# hyphen that ends a line.
_CONTROL = re.compile(r"[\x00\x01\x03-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
_SPACE = re.compile(r"\s")


@contextlib.contextmanager
def _quiet_pypdf() -> Iterator[None]:
    """pypdf logs its repairs ("EOF marker not found", "Ignoring wrong pointing object") to stderr,
    where they tore through the progress bars; what matters is said once, as a LoadError."""
    logger = logging.getLogger("pypdf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_pdf(
    path: Path, data: bytes, ocr: OcrSettings | None = None, progress: PageProgress | None = None
) -> list[Page]:
    """One Page per PDF page, so chunks never straddle pages and citations name the page."""
    ocr = ocr or OcrSettings()
    with _quiet_pypdf():
        reader = _open(data)
        try:
            document = _pdfium(data)
        except Exception:  # pdfium refuses some files pypdf repairs: their text, without boxes
            return _checked(_pypdf_pages(path, reader), ocr, 0)
    try:
        pages, ocr_pages = _pages(path, document, ocr, progress)
    finally:
        document.close()
    return _checked(_with_tables(data, pages), ocr, ocr_pages)


def _with_tables(data: bytes, pages: list[Page]) -> list[Page]:
    """Ruled tables of the text-layer pages as Markdown where they stand (ingest.tables)."""
    text_pages = [p.page_no - 1 for p in pages if p.metadata.get("read") == "text" and p.layout is not None]
    tables = pdf_tables(data, text_pages) if text_pages else {}
    out = []
    for page in pages:
        found = tables.get(page.page_no - 1) if page.page_no is not None else None
        if found and page.layout is not None:
            text, layout = splice_tables(page.text, page.layout, found)
            page = Page(text, page.source, page.page_no, dict(page.metadata), layout)
        out.append(page)
    return out


def _open(data: bytes) -> Any:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise FileNotDecryptedError("password required")
        len(reader.pages)
    except (FileNotDecryptedError, NotImplementedError) as exc:
        raise LoadError(f"encrypted PDF ({exc}); decrypt it first (e.g. qpdf --decrypt in.pdf out.pdf)") from exc
    except (PdfReadError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise LoadError(f"not a readable PDF ({exc}); re-export or repair it") from exc
    return reader


def _pdfium(data: bytes) -> Any:
    import pypdfium2 as pdfium

    return pdfium.PdfDocument(data)


def _pypdf_pages(path: Path, reader: Any) -> list[Page]:
    pages: list[Page] = []
    for number, page in enumerate(reader.pages, start=1):
        try:
            text = page.extract_text() or ""
        except Exception:  # pypdf raises many types on damaged content streams
            continue
        pages.append(Page(text, str(path), page_no=number, metadata={"read": "text"}))
    if not pages:
        raise LoadError("no page could be read (damaged content); re-export or repair it")
    return pages


def _pages(path: Path, document: Any, ocr: OcrSettings, progress: PageProgress | None) -> tuple[list[Page], int]:
    """Text-layer pages as they come; the pages OCR must read, after, with their own progress."""
    pages: list[Page | None] = []
    scanned: dict[int, Page | None] = {}  # page index -> its text layer (garbled, or misplaced), kept if OCR is missing
    for index in range(len(document)):
        page = document[index]
        try:
            text, layout = text_layer(page)
        except Exception:  # a damaged content stream: OCR may still read the page's image
            text, layout = "", None
        read = Page(text, str(path), page_no=index + 1, metadata={"read": "text"}, layout=layout)
        if ocr.mode == "always" or (ocr.mode == "auto" and not usable(text, ocr.min_text_chars)):
            scanned[index] = read if ocr.mode == "auto" and garbled(text) else None
            pages.append(None)
        elif layout is not None and _misplaced(page, text, layout):
            # Right words, boxes in the wrong places: no highlight is better than a wrong one, and
            # OCR's line boxes are where the lines are printed.
            unplaced = replace(read, layout=None)
            if ocr.mode == "auto":
                scanned[index] = unplaced
            pages.append(None if ocr.mode == "auto" else unplaced)
        else:
            pages.append(read)
        page.close()
    for done, (index, garbled_page) in enumerate(scanned.items()):
        if progress is not None:
            progress(done, len(scanned))
        pages[index] = _ocr_page(path, document[index], index + 1, ocr, fallback=garbled_page)
    if progress is not None and scanned:
        progress(len(scanned), len(scanned))
    return [p for p in pages if p is not None], len(scanned)


def _misplaced(page: Any, text: str, layout: Layout) -> bool:
    """Whether the text layer's boxes are not where its glyphs are printed: out of order, and
    then, on the page rendered, too many of them over blank paper."""
    if not scrambled(text, layout):
        return False
    try:
        grey = np.asarray(page.render(scale=INK_SCALE, grayscale=True).to_pil().convert("L"))
    except Exception:  # a page pdfium cannot draw keeps its text and boxes: nothing shows them wrong
        return False
    return inkless(text, layout, grey, INK_SCALE) > INKLESS


def usable(text: str, min_chars: int) -> bool:
    """Whether a page's text layer can stand for the page: enough characters, not garbled."""
    return len(text.strip()) >= min_chars and not garbled(text)


def garbled(text: str) -> bool:
    """Glyph codes where letters should be: control characters (a font whose Unicode map is off
    by a constant, common in LaTeX figures) or "(cid:N)" placeholders, in over GARBLED_SHARE of
    the visible characters.  Private-use characters do not count: symbol fonts put bullets there."""
    visible = len(text) - len(_SPACE.findall(text))
    if not visible:
        return False
    cids = sum(len(m) for m in _CID.findall(text))
    return (len(_CONTROL.findall(text)) + cids) / visible > GARBLED_SHARE


def text_layer(page: Any) -> tuple[str, Layout]:
    """The page's text, with pdfium's "\\r\\n" line ends as "\\n", and each character's box turned
    to top-left coordinates relative to the crop box (what a render of the page shows)."""
    textpage = page.get_textpage()
    try:
        count = textpage.count_chars()
        raw = textpage.get_text_range(0, count) if count else ""
        boxes = np.array([textpage.get_charbox(i) for i in range(len(raw))], dtype=np.float32).reshape(-1, 4)
    finally:
        textpage.close()
    left, bottom, right, top = page.get_cropbox()
    keep = np.array([ch != "\r" for ch in raw], dtype=bool)
    text = raw.replace("\r", "")
    boxes = boxes[keep]
    # pdfium: (left, bottom, right, top) from the bottom-left corner; a render: from the top-left.
    placed = np.stack([boxes[:, 0] - left, top - boxes[:, 3], boxes[:, 2] - left, top - boxes[:, 1]], axis=1)
    placed[np.array([ch == "\n" for ch in text], dtype=bool)] = np.nan
    layout = Layout(float(right - left), float(top - bottom), placed.astype(np.float32))
    if page.get_rotation():
        layout = _rotated(layout, page.get_rotation())
    return text, layout


def _rotated(layout: Layout, degrees: int) -> Layout:
    """Boxes on a page shown turned by `degrees` clockwise (/Rotate), as pdfium renders it."""
    w, h, b = layout.width, layout.height, layout.boxes
    if degrees == 90:
        turned = np.stack([h - b[:, 3], b[:, 0], h - b[:, 1], b[:, 2]], axis=1)
        return Layout(h, w, turned)
    if degrees == 180:
        return Layout(w, h, np.stack([w - b[:, 2], h - b[:, 3], w - b[:, 0], h - b[:, 1]], axis=1))
    if degrees == 270:
        return Layout(h, w, np.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], axis=1))
    return layout


def _ocr_page(path: Path, page: Any, number: int, ocr: OcrSettings, fallback: Page | None = None) -> Page:
    scale = ocr.dpi / 72
    try:
        image = page.render(scale=scale).to_pil()
        result = read_image(image, ocr, scale)
    except OcrUnavailable as exc:
        if fallback is not None:  # a garbled text layer still holds the page's readable words, a misplaced one all
            return fallback
        raise LoadError(f"page {number} has no text layer and {exc}") from exc
    finally:
        page.close()
    metadata = {"read": "ocr", "ocr_confidence": round(result.confidence, 3)}
    return Page(result.text, str(path), page_no=number, metadata=metadata, layout=result.layout)


def _checked(pages: list[Page], ocr: OcrSettings, ocr_pages: int) -> list[Page]:
    if any(p.text.strip() for p in pages):
        return pages
    if ocr_pages:
        raise LoadError(
            f"OCR found no readable text on its {ocr_pages} page image(s) (blank, or too faint or blurred); "
            "re-scan it at 300 dpi or more",
            status="empty",
        )
    hint = "set ingest.ocr = 'auto' to read it with OCR" if ocr.mode == "off" else "run OCR on it first"
    raise LoadError(f"no text layer on any of its {len(pages)} page(s) (scanned?); {hint}", status="empty")
