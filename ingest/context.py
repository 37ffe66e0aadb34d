"""What a chunk is about beyond its own words: its document's title and the nearest heading above it.

A page of a financial statement is rows of line items and numbers; the words that say what it is
("Consolidated Statement of Cash Flows") stand once at its top, or on the page before.  A chunk
cut from the middle of it cannot be found by a question that names the statement, so the title
and heading are embedded and BM25-indexed with the chunk (`indexed_text`), while the chunk's
text, which the answer cites and the UI shows, stays what the page says.

Headings are Markdown heading lines where a document has them (Markdown, and DOCX and HTML,
whose loaders write their headings that way).  Elsewhere (PDF text layers and OCR, which carry no
structure pdfium can report reliably: filings set every line in one font size) a heading is a
short title-case line without sentence punctuation, and lines that repeat on many pages (running
heads such as "Table of Contents") are not headings.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path

from rag.types import Chunk, Page

_MARKDOWN_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_LINE = re.compile(r"[^\n]+")
_WORD = re.compile(r"[^\W\d_][\w'’&-]*")
_LONG_NUMBER = re.compile(r"\d\d")
_MAX_HEADING_CHARS = 90
_MAX_HEADING_WORDS = 12
_RUNNING_HEAD_PAGES = 3  # a line on this many pages (and a fifth of them) is a running head or footer
_UNTITLED = re.compile(r"^(untitled|microsoft word|document\d*|\s*)$|\.(docx?|pdf|indd|rtf)$", re.IGNORECASE)


def looks_like_heading(line: str) -> bool:
    """Short, in title case, no sentence end, no long numbers: 'Consolidated Statement of Cash
    Flows' is one; 'Cash and cash equivalents 3,655 4,564' and 'Years ended December 31' are not."""
    line = line.strip()
    if not 3 <= len(line) <= _MAX_HEADING_CHARS or line[-1] in ".,;:" or _LONG_NUMBER.search(line):
        return False
    if any("\u4e00" <= ch <= "\u9fff" for ch in line):  # Chinese has no case: short lines only
        return len(line) <= 20
    words = _WORD.findall(line)
    # Two words at least: a lone "Assets" or "Equity" is a row label of the table below a heading.
    if not 2 <= len(words) <= _MAX_HEADING_WORDS or not words[0][0].isupper() or words[-1].islower():
        return False
    significant = [w for w in words if len(w) > 3]
    return bool(significant) and sum(w[0].isupper() for w in significant) >= 0.7 * len(significant)


def document_title(pages: list[Page]) -> str:
    """The title the document gives itself (PDF /Title, HTML <title>, DOCX core title) when it is
    a real one, else its file name when that has words in it ("3M_2022_10K" -> "3M 2022 10K")."""
    if not pages:
        return ""
    given = str(pages[0].metadata.get("title") or "").strip()
    if given and not _UNTITLED.search(given):
        return given[:200]
    stem = re.sub(r"[_\s]+", " ", _printable(Path(pages[0].source).stem)).strip()
    return stem if _WORD.search(stem) else ""


def _printable(name: str) -> str:
    """A file name as words a tokenizer takes: bytes that were not UTF-8 (kept as surrogates) become
    U+FFFD, and control and format characters (escape sequences, bidi overrides) are dropped."""
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf"))


class DocumentContext:
    """Title and headings of one document's pages, found once, looked up per chunk."""

    def __init__(self, pages: list[Page]) -> None:
        self.title = document_title(pages)
        self.markdown = any(_MARKDOWN_HEADING.search(p.text) for p in pages)
        running = set() if self.markdown else _running_heads(pages)
        self.headings = [_headings(p.text, self.markdown, running) for p in pages]
        self.carried = self._carried()

    def _carried(self) -> list[tuple[str, ...]]:
        """The heading path in force at the top of each page: where the pages before left it."""
        carried, path = [], ()
        for found in self.headings:
            carried.append(path)
            if found:
                path = self._path(path, found)
        return carried

    def _path(self, path: tuple[str, ...], found: list[tuple[int, int, str]]) -> tuple[str, ...]:
        """Markdown: the path down the heading levels.  Elsewhere levels are unknown: the headings
        of the page so far (a page's first headings name it; its last one is nearest), or the
        path carried from the pages before when the page has none yet."""
        if self.markdown:
            for _, level, text in found:
                path = (*path[: level - 1], *[""] * (level - 1 - len(path)), text)
            return tuple(p for p in path if p)
        return tuple(text for _, _, text in found)

    def heading(self, page_index: int, offset: int) -> str:
        """The headings above `offset` of page `page_index`, outermost first, as one line."""
        before = [h for h in self.headings[page_index] if h[0] <= offset]
        carried = self.carried[page_index]
        path = self._path(carried if self.markdown else (), before) if before else carried
        if len(path) > 3:
            path = (*path[:2], path[-1])
        return " › ".join(dict.fromkeys(path))


def _headings(text: str, markdown: bool, running: set[str]) -> list[tuple[int, int, str]]:
    """(offset, level, text) of each heading of a page; level 1 where levels are unknown."""
    if markdown:
        return [(m.start(), len(m.group(1)), m.group(2).strip()) for m in _MARKDOWN_HEADING.finditer(text)]
    found = []
    for m in _LINE.finditer(text):
        line = m.group().strip().lstrip("•◦▪-–*· ").strip()
        if m.group().strip() not in running and looks_like_heading(line):
            found.append((m.start(), 1, line))
    return found


def _running_heads(pages: list[Page]) -> set[str]:
    if len(pages) < _RUNNING_HEAD_PAGES:
        return set()
    seen = Counter(line for p in pages for line in {m.group().strip() for m in _LINE.finditer(p.text)})
    least = max(_RUNNING_HEAD_PAGES, len(pages) // 5)
    return {line for line, n in seen.items() if n >= least}


def indexed_text(chunk: Chunk) -> str:
    """What is embedded and BM25-indexed for a chunk: its title and heading (those its text does
    not already begin with), then its text."""
    head = chunk.text[:300]
    parts = [part for part in (chunk.metadata.get("title"), chunk.metadata.get("heading")) if part and part not in head]
    if len(parts) == 2 and parts[1] in parts[0]:
        parts = parts[:1]
    return "\n".join([*parts, chunk.text])
