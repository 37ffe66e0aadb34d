"""The small records that flow one way: files -> pages -> chunks -> vectors -> hits -> answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Page:
    """A unit of text a loader yields; `page_no` (1-based) is set for paged formats (PDF pages,
    spreadsheet sheets) so every citation can name a page, and None where the format has none."""

    text: str
    source: str
    page_no: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """A piece of one page, with its character span in that page's text."""

    text: str
    source: str
    page_no: int | None
    ordinal: int
    char_start: int
    char_end: int
    metadata: dict[str, Any] = field(default_factory=dict)
    chunk_id: int | None = None
    doc_id: int | None = None
