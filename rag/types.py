"""The small records that flow one way: files -> pages -> chunks -> vectors -> hits -> answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Layout:
    """Where a page's text sits on the page, so a citation can be shown on the page itself.

    `boxes[i]` is the rectangle (x0, y0, x1, y1) of character i of the page's text, with the origin
    at the page's top-left corner and y growing down, in the page's own units (PDF points, or pixels
    of an image); NaN for characters with no place (line breaks, text a loader added).  The size is
    the page's (its crop box for a PDF): a renderer scales boxes by image size / page size."""

    width: float
    height: float
    boxes: np.ndarray  # float32, (len(text), 4)


@dataclass(frozen=True)
class Page:
    """A unit of text a loader yields; `page_no` (1-based) is set for paged formats (PDF pages,
    spreadsheet sheets) so every citation can name a page, and None where the format has none.

    `metadata` is copied into every chunk of the page and stored with it (JSON); `layout`, where
    the loader knows it, is turned into each chunk's rectangles and then dropped."""

    text: str
    source: str
    page_no: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    layout: Layout | None = None


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
