"""Tables kept whole: ruled tables in PDFs (and DOCX tables) become Markdown tables in the page
text, where they stand on the page, so the chunker can keep rows whole and repeat the header.

PDF tables are found with pdfplumber (MIT, pure Python on pdfminer.six, actively kept; PyMuPDF
finds tables too but is AGPL).  pdfplumber is slow (about 0.45 s a page on a 10-K), so it only
looks at pages whose vector graphics could draw a table (:func:`may_hold_table`: a few
milliseconds a page with pypdfium2); on a 10-K that is 109 pages of 252, and every page with a
table is among them.  Tables drawn without rules (columns aligned by spaces alone) stay as the
text layer has them.

How the PDF loader uses it (the page text and its per-character boxes come from pypdfium2)::

    from ingest.tables import pdf_tables, splice_tables

    tables = pdf_tables(data, range(len(document)))      # {page index: [Table, ...]}, 0-based
    for i, page in enumerate(document):
        text, layout = ...                                # pypdfium2 text and one box per character
        if i in tables:
            text, layout = splice_tables(text, layout, tables[i])
        pages.append(Page(text, str(path), page_no=i + 1, layout=layout))

`pdf_tables` opens the bytes itself (with pypdfium2 for the pre-filter, then pdfplumber for the
candidate pages) and returns only pages where it found a table of at least two rows and two
columns.  Give it the pages the loader read from the text layer; OCR pages have no rules to find.
A PDF pdfplumber cannot parse gives {} (the text layer stays as it is), never an exception.
"""

from __future__ import annotations

import ctypes
import io
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from rag.types import Layout

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x0, top, x1, bottom: PDF points from the page's top-left

# A path object thinner than this is a rule (a line), not a box.
_RULE_THICKNESS = 3.0

# pdfminer writes a glyph it cannot map to a character as "(cid:N)".  A ruled figure drawn in
# such a font (the ReAct paper's page 2) "extracts" as a table of these codes, which would be
# embedded with the document's heading and outrank the real text; such a table is left out
# (the text layer stands), and stray codes are dropped from real tables' cells.
_CID = re.compile(r"\(cid:\d+\)")
_MOSTLY_CID = 0.3

_CURRENCY = frozenset({"$", "€", "£", "¥", "US$"})

# A header line above a table stands at most this many of its line heights from the one below it,
# and a header reaches at most this many points above the table.
_HEADER_GAP = 1.5
_HEADER_REACH = 80.0
_OVERHANG = 3.0  # points a heading's word may stand outside its column
_YEAR = re.compile(r"(19|20)\d\d")
# A cell that holds an amount, not words: "34,229", "(1,749)", "$", "12.5%", "—".
_VALUE = re.compile(r"[$€£¥(\-—–]*\s*[\d,.]*\d?%?\)?|[—–-]")


@dataclass(frozen=True)
class Table:
    """One table on a page: its cell strings row by row (the first row is the header), each row's
    box and the whole table's box, in PDF points from the page's (crop box's) top-left corner."""

    rows: list[list[str]]
    row_boxes: list[Box]
    bbox: Box


# ---- Markdown ------------------------------------------------------------------------------
def _cell(value: object) -> str:
    """A cell as one line of Markdown: whitespace (line breaks included) collapsed, `|` escaped."""
    text = " ".join(_CID.sub("", str(value)).split()) if value is not None else ""
    return text.replace("|", "\\|")


def markdown_lines(rows: Sequence[Sequence[object]]) -> list[tuple[int | None, str]]:
    """The lines of :func:`to_markdown`, each with the index in `rows` of the row it shows (None
    for the separator line), so a caller can place each line where its row is."""
    cells = [[_cell(c) for c in row] for row in rows]
    width = max((len(r) for r in cells), default=0)
    cells = _amounts_aligned([r + [""] * (width - len(r)) for r in cells])
    keep_cols = [j for j in range(width) if any(r[j] for r in cells)]
    kept = [(i, [r[j] for j in keep_cols]) for i, r in enumerate(cells) if any(r[j] for j in keep_cols)]
    if not kept:
        return []
    lines = [(i, "| " + " | ".join(r) + " |") for i, r in kept]
    lines.insert(1, (None, "|" + " --- |" * len(keep_cols)))
    return lines


def _amounts_aligned(cells: list[list[str]]) -> list[list[str]]:
    """Amounts split over two columns joined into one.  Filings set "$" in a column of its own,
    and pdfplumber puts a row's amount in that column when the row has no "$" (the cells merge),
    so "| Net sales | $ | 34,229 |" stood above "| Cost of sales | 19,232 |  |".  A column of
    amounts and currency signs is joined to the next one when no row holds an amount in both;
    a header cell above it stops the join, so columns a header names stay apart."""
    for j in range(len(cells[0]) - 1 if cells else 0):
        pairs = [(r[j], r[j + 1]) for r in cells]
        if not any(a for a, _ in pairs) or not any(b for _, b in pairs):
            continue
        if all(not a or (a in _CURRENCY and _is_value(b)) or (not b and _is_value(a)) for a, b in pairs):
            for r in cells:
                r[j], r[j + 1] = "", r[j] + r[j + 1]
    return cells


def _is_value(cell: str) -> bool:
    return _VALUE.fullmatch(cell) is not None


def to_markdown(rows: Sequence[Sequence[object]]) -> str:
    """Rows of cells as a Markdown table: the first non-empty row is the header, then the
    `| --- |` separator; rows and columns with no text are dropped, line breaks inside a cell
    become spaces and `|` becomes `\\|`.  "" when there is no text at all.

    >>> print(to_markdown([["item", "2019"], ["Capital expenditure", "(1,699)"]]))
    | item | 2019 |
    | --- | --- |
    | Capital expenditure | (1,699) |
    """
    return "\n".join(line for _, line in markdown_lines(rows))


# ---- finding PDF tables ----------------------------------------------------------------------
def may_hold_table(page) -> bool:
    """Whether a pypdfium2 page's vector graphics could draw a ruled table: rules or boxes at three
    or more heights and two or more horizontal positions (a grid needs both, a lone frame or the
    underlines of a header or footer do not).  Walks the page's path objects, and those inside form
    objects, through pdfium's C API: a few milliseconds, against ~0.45 s for pdfplumber."""
    import pypdfium2.raw as raw

    ys: set[int] = set()
    xs: set[int] = set()
    left, bottom, right, top = (ctypes.c_float() for _ in range(4))

    def walk(owner, count: int, get, depth: int) -> None:
        for i in range(count):
            obj = get(owner, i)
            kind = raw.FPDFPageObj_GetType(obj)
            if kind == raw.FPDF_PAGEOBJ_FORM and depth < 3:
                walk(obj, raw.FPDFFormObj_CountObjects(obj), raw.FPDFFormObj_GetObject, depth + 1)
            if kind != raw.FPDF_PAGEOBJ_PATH or not raw.FPDFPageObj_GetBounds(obj, left, bottom, right, top):
                continue
            x0, y0, x1, y1 = left.value, bottom.value, right.value, top.value
            wide, tall = x1 - x0 > _RULE_THICKNESS, y1 - y0 > _RULE_THICKNESS
            if wide:
                ys.update((round(y0), round(y1)) if tall else (round(y0),))
            if tall:
                xs.update((round(x0), round(x1)) if wide else (round(x0),))

    walk(page.raw, raw.FPDFPage_CountObjects(page.raw), raw.FPDFPage_GetObject, 0)
    return len(ys) >= 3 and len(xs) >= 2


def candidate_pages(data: bytes, page_indexes: Iterable[int]) -> list[int]:
    """The pages among `page_indexes` (0-based) that :func:`may_hold_table`."""
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError:
        return []
    try:
        found = []
        for i in sorted(set(page_indexes)):
            if 0 <= i < len(document):
                page = document[i]
                try:
                    if may_hold_table(page):
                        found.append(i)
                finally:
                    page.close()
        return found
    finally:
        document.close()


def pdf_tables(data: bytes, page_indexes: Iterable[int], prefilter: bool = True) -> dict[int, list[Table]]:
    """Ruled tables on the given pages of a PDF: {0-based page index: tables top to bottom}, only
    for pages that have one.  A table has at least two rows and two columns with text after empty
    ones are dropped (pdfplumber also "finds" framed paragraphs and lone boxes).  With `prefilter`,
    pdfplumber reads only the pages :func:`may_hold_table` accepts."""
    indexes = candidate_pages(data, page_indexes) if prefilter else sorted(set(page_indexes))
    if not indexes:
        return {}
    import pdfplumber

    out: dict[int, list[Table]] = {}
    try:
        with pdfplumber.open(io.BytesIO(data), pages=[i + 1 for i in indexes]) as pdf:
            for page in pdf.pages:
                try:
                    tables = _page_tables(page)
                except Exception as exc:  # pdfminer raises many types on damaged content
                    log.debug("tables of page %d not read: %s", page.page_number, exc)
                    continue
                finally:
                    page.close()
                if tables:
                    out[page.page_number - 1] = tables
    except Exception as exc:  # not parseable by pdfminer: the text layer stands as it is
        log.debug("pdfplumber could not open the PDF: %s", exc)
        return {}
    return out


def _page_tables(page) -> list[Table]:
    # pdfplumber measures from the media box's top-left; the page text's boxes from the crop box's.
    dx = page.cropbox[0] - page.mediabox[0]
    dy = page.cropbox[1] - page.mediabox[1]

    def shift(box) -> Box:
        x0, top, x1, bottom = box
        return (float(x0 - dx), float(top - dy), float(x1 - dx), float(bottom - dy))

    tables = []
    for found in page.find_tables():
        rows = found.extract()
        if _unreadable(rows):
            continue
        lines = markdown_lines(rows)
        shown_rows = {i for i, _ in lines if i is not None}
        columns = lines[1][1].count("---") if len(lines) > 1 else 0
        if len(shown_rows) < 2 or columns < 2:
            continue
        rows = [[c or "" for c in r] for r in rows]
        row_boxes, bbox = [r.bbox for r in found.rows], found.bbox
        header = _header_above(page, found, rows)
        if header is not None:
            cells, box = header
            rows, row_boxes = [cells, *rows], [box, *row_boxes]
            bbox = (min(bbox[0], box[0]), box[1], max(bbox[2], box[2]), bbox[3])
        tables.append(Table(rows, [shift(b) for b in row_boxes], shift(bbox)))
    return sorted(tables, key=lambda t: (t.bbox[1], t.bbox[0]))


def _header_above(page, found, rows: list[list[str]]) -> tuple[list[str], Box] | None:
    """The lines just above a ruled table that name its value columns, as the table's header row,
    with their box; None when there are none.

    Annual reports rule a statement's body and set the years above the rules, so pdfplumber's
    table starts at "Net sales | $ | 34,229" and every number loses its year; a share-repurchase
    table sets "Total Number of / Shares Purchased" over four lines.  Lines are taken from the
    table's top upwards while each stands within one and a half line heights of the one below,
    every word lies within one column, and some word lies over a value column (a title or a
    paragraph's line stops it).  Two or more value columns must be named, and the table's first
    row must have neither words nor years there (a table that names its columns keeps its own)."""
    x0, top, x1, _ = found.bbox
    words = page.crop((x0, max(page.bbox[1], top - _HEADER_REACH), x1, top), strict=False).extract_words()
    spans = _column_spans(found, len(rows[0]))
    cells: list[list[str]] = [[] for _ in spans]
    taken: list[dict] = []
    below = top
    for line in _lines_upwards(words):
        height = max(w["height"] for w in line)
        columns = [_column_of(w, spans) for w in line]
        if below - max(w["bottom"] for w in line) > _HEADER_GAP * height or None in columns or max(columns) < 1:
            break
        for word, j in zip(reversed(line), reversed(columns), strict=True):
            cells[j].insert(0, word["text"])
        taken += line
        below = min(w["top"] for w in line)
    named = [j for j in range(1, len(cells)) if cells[j]]
    own = [rows[0][j].strip() for j in named if rows[0][j].strip()]
    if len(named) < 2 or any(not _is_value(c) or _YEAR.fullmatch(c) for c in own):
        return None
    box = (min(w["x0"] for w in taken), below, max(w["x1"] for w in taken), max(w["bottom"] for w in taken))
    return [" ".join(c) for c in cells], box


def _lines_upwards(words: list[dict]) -> list[list[dict]]:
    """Words grouped into lines (a word joins a line when their bottoms are within half its
    height), lowest line first, each left to right."""
    lines: list[list[dict]] = []
    for word in sorted(words, key=lambda w: -w["bottom"]):
        if lines and lines[-1][0]["bottom"] - word["bottom"] <= word["height"] / 2:
            lines[-1].append(word)
        else:
            lines.append([word])
    return [sorted(line, key=lambda w: w["x0"]) for line in lines]


def _column_of(word: dict, spans: list[tuple[float, float]]) -> int | None:
    """The column that holds the whole word (centred headings overhang a little), or None when it
    crosses a column's edge."""
    x0, x1 = word["x0"], word["x1"]
    holding = [j for j, (a, b) in enumerate(spans) if a - _OVERHANG <= x0 and x1 <= b + _OVERHANG]
    return max(holding, key=lambda j: min(x1, spans[j][1]) - max(x0, spans[j][0]), default=None)


def _column_spans(found, width: int) -> list[tuple[float, float]]:
    """Each column's left and right edge: its narrowest cell in any row (merged cells span several)."""
    spans: list[tuple[float, float] | None] = [None] * width
    for row in found.rows:
        for j, cell in enumerate(row.cells[:width]):
            if cell is not None and (spans[j] is None or cell[2] - cell[0] < spans[j][1] - spans[j][0]):
                spans[j] = (cell[0], cell[2])
    return [s if s is not None else (float("nan"), float("nan")) for s in spans]


def _unreadable(rows: Sequence[Sequence[object]]) -> bool:
    """Mostly unmapped glyphs ("(cid:N)"): a figure in a font without a character map."""
    text = "".join(str(c) for row in rows for c in row if c)
    coded = sum(len(m) for m in _CID.findall(text))
    return bool(text) and coded / len(text) > _MOSTLY_CID


# ---- splicing into the page text -------------------------------------------------------------
def splice_tables(text: str, layout: Layout, tables: Sequence[Table]) -> tuple[str, Layout]:
    """The page text with each table's characters replaced by its Markdown.

    A character belongs to a table when the centre of its box lies inside the table's box; a
    character without a box (a line break the text layer added) goes with a table when the
    nearest placed characters before and after it both do.  The Markdown, between blank lines,
    takes the place of the table's first character; each of its lines gets the box of the row it
    shows (the separator and line breaks get NaN), so a chunk's rectangles cover its rows.  Text
    and boxes stay the same length."""
    boxes = np.asarray(layout.boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes) != len(text):
        raise ValueError(f"layout has {len(boxes)} boxes for {len(text)} characters")
    if not tables or not text:
        return text, layout
    owner = _owners(boxes, tables)
    placed = ~np.isnan(boxes).any(axis=1)
    owner = _fill_unplaced(owner, placed)

    # Where each table goes: its first character, or (none of its text in the text layer) the
    # first character below its top.
    centres_y = (boxes[:, 1] + boxes[:, 3]) / 2
    anchors: dict[int, int] = {}
    for k, table in enumerate(tables):
        hits = np.flatnonzero(owner == k)
        if len(hits):
            anchors[k] = int(hits[0])
        else:
            below = np.flatnonzero(placed & (centres_y > table.bbox[1]) & (owner < 0))
            anchors[k] = int(below[0]) if len(below) else len(text)
    by_anchor: dict[int, list[int]] = {}
    for k, at in sorted(anchors.items(), key=lambda kv: (kv[1], kv[0])):
        by_anchor.setdefault(at, []).append(k)

    out = _Builder(nan_box=np.full((1, 4), np.nan, dtype=np.float32))
    kept = owner < 0
    begin = 0
    for stop in [*sorted(by_anchor), None]:
        end = len(text) if stop is None else stop
        run = np.flatnonzero(kept[begin:end]) + begin
        out.add("".join(text[j] for j in run) if len(run) < end - begin else text[begin:end], boxes[run])
        for k in by_anchor.get(stop, []) if stop is not None else []:
            out.add_block(*_markdown_block(tables[k], out.nan_box))
        begin = end
    new_text, new_boxes = out.result()
    assert len(new_boxes) == len(new_text)
    return new_text, Layout(layout.width, layout.height, new_boxes.astype(np.float32, copy=False))


class _Builder:
    """Text and boxes appended piece by piece; a table block stands between blank lines, and the
    line breaks of the surrounding text that would pile up around it are dropped."""

    def __init__(self, nan_box: np.ndarray) -> None:
        self.nan_box = nan_box
        self.text: list[str] = []
        self.boxes: list[np.ndarray] = []
        self.tail = ""  # the last two characters written
        self.after_block = False

    def add(self, piece: str, boxes: np.ndarray) -> None:
        if self.after_block:
            trimmed = piece.lstrip("\r\n")
            boxes, piece = boxes[len(piece) - len(trimmed) :], trimmed
        if piece:
            self._write(piece, boxes)
            self.after_block = False

    def add_block(self, block: str, boxes: np.ndarray) -> None:
        if not block:
            return
        if self.text:
            lead = "\n" * (2 - (len(self.tail) - len(self.tail.rstrip("\n"))))
            self._write(lead, np.repeat(self.nan_box, len(lead), axis=0))
        self._write(block + "\n\n", np.concatenate((boxes, np.repeat(self.nan_box, 2, axis=0))))
        self.after_block = True

    def _write(self, piece: str, boxes: np.ndarray) -> None:
        self.text.append(piece)
        self.boxes.append(boxes)
        self.tail = (self.tail + piece)[-2:]

    def result(self) -> tuple[str, np.ndarray]:
        boxes = np.concatenate(self.boxes) if self.boxes else np.zeros((0, 4), dtype=np.float32)
        return "".join(self.text), boxes


def _owners(boxes: np.ndarray, tables: Sequence[Table]) -> np.ndarray:
    """Per character, the index of the first table whose box holds its centre, else -1."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    owner = np.full(len(boxes), -1, dtype=np.int64)
    for k, table in enumerate(tables):
        x0, top, x1, bottom = table.bbox
        inside = (cx >= x0) & (cx <= x1) & (cy >= top) & (cy <= bottom) & (owner < 0)
        owner[inside] = k
    return owner


def _fill_unplaced(owner: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """Characters without a box join a table when the placed characters on both sides belong to it."""
    idx = np.arange(len(owner))
    prev_placed = np.maximum.accumulate(np.where(placed, idx, -1))
    next_placed = np.minimum.accumulate(np.where(placed, idx, len(owner))[::-1])[::-1]
    has_both = ~placed & (prev_placed >= 0) & (next_placed < len(owner))
    before = owner[np.clip(prev_placed, 0, len(owner) - 1)]
    after = owner[np.clip(next_placed, 0, len(owner) - 1)]
    out = owner.copy()
    join = has_both & (before >= 0) & (before == after)
    out[join] = before[join]
    return out


def _markdown_block(table: Table, nan_box: np.ndarray) -> tuple[str, np.ndarray]:
    """The table's Markdown and one box per character: its row's box, NaN for the separator and
    the line breaks between lines."""
    lines = markdown_lines(table.rows)
    parts: list[np.ndarray] = []
    for n, (row, line) in enumerate(lines):
        if n:
            parts.append(nan_box)
        box = nan_box if row is None or row >= len(table.row_boxes) else np.asarray([table.row_boxes[row]], np.float32)
        parts.append(np.repeat(box, len(line), axis=0))
    text = "\n".join(line for _, line in lines)
    return text, (np.concatenate(parts) if parts else np.zeros((0, 4), dtype=np.float32))
