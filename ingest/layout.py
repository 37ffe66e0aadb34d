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
