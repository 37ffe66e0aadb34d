"""Where a chunk sits on its page: the rectangles of its lines, from its characters' boxes.

Stored with the chunk (metadata "boxes", in page units with "page_size"), so the UI, the CLI's JSON
and the API can highlight the cited passage on the page image without opening the file's layout
again.  One rectangle per line fragment keeps it small (a few dozen numbers per chunk).
"""

from __future__ import annotations

import numpy as np

from rag.types import Layout

_MIN_EXTENT = 0.5  # points (or pixels): spaces and generated characters have no height and place nothing


def chunk_boxes(layout: Layout, start: int, end: int) -> list[list[float]]:
    """Rectangles [x0, y0, x1, y1] covering characters start..end-1, one per run of characters on
    one line (a new run starts where a character is not beside the previous one: a new line, a
    column break)."""
    boxes = layout.boxes[start:end]
    keep = np.isfinite(boxes).all(axis=1)
    keep &= boxes[:, 3] - boxes[:, 1] >= _MIN_EXTENT  # a space is a flat box on the baseline: no glyph
    boxes = boxes[keep]
    if not len(boxes):
        return []
    centre = (boxes[:, 1] + boxes[:, 3]) / 2
    below = centre[1:] > boxes[:-1, 3]
    above = centre[1:] < boxes[:-1, 1]
    back = boxes[1:, 0] < boxes[:-1, 0] - _MIN_EXTENT
    far = boxes[1:, 0] > boxes[:-1, 2] + 3 * (boxes[:-1, 3] - boxes[:-1, 1])  # a gap wider than ~3 letters
    starts = np.concatenate(([0], np.flatnonzero(below | above | back | far) + 1))
    x0 = np.minimum.reduceat(boxes[:, 0], starts)
    y0 = np.minimum.reduceat(boxes[:, 1], starts)
    x1 = np.maximum.reduceat(boxes[:, 2], starts)
    y1 = np.maximum.reduceat(boxes[:, 3], starts)
    return np.round(np.stack([x0, y0, x1, y1], axis=1), 1).tolist()


def page_size(layout: Layout) -> list[float]:
    return [round(float(layout.width), 1), round(float(layout.height), 1)]


# Over this share out of order, a text layer's boxes may not be where its glyphs are printed: on
# react_paper.pdf's two pages of small-font prompt tables they sit half a line off (13.8% and
# 14.0%).  Order alone does not prove it: 41 of the 6,983 pages of the real PDFs here with a
# readable text layer are over 10%, mostly tables whose cells pdfium reads across rows.
SCRAMBLED = 0.10
# So such a page is rendered, and its boxes are misplaced when this share of its characters'
# boxes cover no ink: 14.6% and 14.9% on those two pages, 15.8% on 3M's 10-K cover (its small
# caps' first letters) and 8.7% on a form in AMD's; at most 2.7% on the other 37.
INKLESS = 0.05
INK_LEVEL = 200  # grey levels under this are ink (light grey type counts)
INK_SCALE = 1.5  # the render's pixels per point: enough for a 6-point glyph to cover a pixel


def disorder(text: str, layout: Layout) -> float:
    """The share of neighbouring characters within a line whose boxes go backwards by over half a
    character or sit more than a character's height apart: near 0 where the boxes are where the
    glyphs are printed."""
    boxes = layout.boxes
    line = np.cumsum([ch == "\n" for ch in text])
    placed = np.flatnonzero(np.isfinite(boxes[:, 0]) & ~np.array([ch.isspace() for ch in text], dtype=bool))
    if len(placed) < 2:
        return 0.0
    prev, cur = boxes[placed[:-1]], boxes[placed[1:]]
    same_line = line[placed[:-1]] == line[placed[1:]]
    width = np.maximum(prev[:, 2] - prev[:, 0], 1.0)
    height = np.maximum(prev[:, 3] - prev[:, 1], 1.0)
    jump = np.abs((cur[:, 1] + cur[:, 3]) / 2 - (prev[:, 1] + prev[:, 3]) / 2)
    bad = (cur[:, 0] < prev[:, 0] - 0.5 * width) | (jump > height)
    return float(bad[same_line].sum() / max(int(same_line.sum()), 1))


def scrambled(text: str, layout: Layout) -> bool:
    return disorder(text, layout) > SCRAMBLED


def inkless(text: str, layout: Layout, grey: np.ndarray, scale: float) -> float:
    """The share of the characters' boxes that cover no ink on `grey`, the page rendered at
    `scale` pixels per point (one summed-area table, then four lookups a box)."""
    visible = np.isfinite(layout.boxes[:, 0]) & ~np.array([ch.isspace() for ch in text], dtype=bool)
    boxes = layout.boxes[visible] * scale
    if not len(boxes):
        return 0.0
    ink = np.zeros((grey.shape[0] + 1, grey.shape[1] + 1), dtype=np.int64)
    ink[1:, 1:] = np.cumsum(np.cumsum(grey < INK_LEVEL, axis=0), axis=1)
    x0 = np.clip(np.floor(boxes[:, 0]), 0, grey.shape[1]).astype(int)
    y0 = np.clip(np.floor(boxes[:, 1]), 0, grey.shape[0]).astype(int)
    x1 = np.clip(np.ceil(boxes[:, 2]), 0, grey.shape[1]).astype(int)
    y1 = np.clip(np.ceil(boxes[:, 3]), 0, grey.shape[0]).astype(int)
    sized = (x1 > x0) & (y1 > y0)
    covered = ink[y1, x1] - ink[y0, x1] - ink[y1, x0] + ink[y0, x0]
    return float((covered[sized] == 0).sum() / max(int(sized.sum()), 1))
