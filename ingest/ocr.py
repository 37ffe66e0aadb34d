"""Page images -> text with RapidOCR (Chinese and English models inside its wheel, offline).

A scanned PDF page or a photo becomes a Page like any other: its text, one box per character (so
a citation can be shown on the page), how it was read, and the mean recognition score.  The
engine is loaded once per process, on the first page that needs it.

onnxruntime, which RapidOCR runs on, sends Microsoft telemetry (it writes ~/.cache/Microsoft and
looks up hosts) unless ORT_DISABLE_TELEMETRY is set before it is first imported: `_engine` sets it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag.config import IngestSettings
from rag.types import Layout

_LOCK = threading.Lock()
_ENGINES: dict[tuple[int, bool], Any] = {}


class OcrUnavailable(Exception):
    """RapidOCR or onnxruntime is not installed."""


@dataclass(frozen=True)
class OcrPage:
    """What OCR read from one image: text (lines in reading order), one box per character in
    the image's pixels, and the mean recognition score of its lines (0 when nothing was read)."""

    text: str
    layout: Layout
    confidence: float
    lines: int


@dataclass(frozen=True)
class OcrSettings:
    mode: str = "auto"  # auto: pages without a text layer; always: every page; off: never
    dpi: int = 200
    threads: int = 1
    min_text_chars: int = 20
    low_confidence: float = 0.8
    upside_down_lines: bool = False

    @classmethod
    def from_settings(cls, ingest: IngestSettings) -> OcrSettings:
        return cls(
            ingest.ocr,
            ingest.ocr_dpi,
            ingest.ocr_threads,
            ingest.ocr_min_text_chars,
            ingest.ocr_low_confidence,
            ingest.ocr_upside_down_lines,
        )


def _engine(threads: int, upside_down_lines: bool = False) -> Any:
    key = (threads, upside_down_lines)
    with _LOCK:
        if key not in _ENGINES:
            os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported
            try:
                from rapidocr import RapidOCR
            except ImportError as exc:
                raise OcrUnavailable(
                    "OCR needs rapidocr and onnxruntime: run `make setup` (or pip install rapidocr onnxruntime)"
                ) from exc
            params = {
                "Global.log_level": "error",
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
                # RapidOCR's detector defaults (0.3/0.5) missed a whole line of 12 pt Helvetica on a
                # 200 dpi A4 render (the page is shrunk to 2000 px first); these found it, and read
                # the shared scans no worse (bench/ocr.py measures the error rate).
                "Det.thresh": 0.2,
                "Det.box_thresh": 0.3,
                # The line-angle classifier turns lines it believes upside down before reading them.
                # On a real PDF page rendered upright it turned a whole sentence, which came out as
                # "Tat t -t st t = s a ss e st at": it is on only when asked for.
                "Global.use_cls": upside_down_lines,
            }
            _ENGINES[key] = RapidOCR(params=params)
        return _ENGINES[key]


def read_image(image: Any, settings: OcrSettings, scale: float = 1.0) -> OcrPage:
    """OCR one PIL image.  Boxes are divided by `scale` (a PDF page rendered at dpi/72 gets its
    boxes back in points)."""
    rgb = np.asarray(image.convert("RGB"))
    out = _engine(settings.threads, settings.upside_down_lines)(rgb)
    boxes = [] if out.boxes is None else list(out.boxes)
    found = zip(boxes, out.txts or (), out.scores or (), strict=False)
    lines = [(np.asarray(b, dtype=np.float32) / scale, t, float(s)) for b, t, s in found if t.strip()]
    width, height = image.size[0] / scale, image.size[1] / scale
    text, char_boxes = _lay_out(_reading_order(lines))
    confidence = float(np.mean([s for _, _, s in lines])) if lines else 0.0
    return OcrPage(text, Layout(width, height, char_boxes), confidence, len(lines))


def _reading_order(lines: list[tuple[np.ndarray, str, float]]) -> list[tuple[np.ndarray, str, float]]:
    """Top to bottom, and left to right within a row: lines whose vertical centres lie within half
    a line height of each other are one row (a table's cells, a two-part heading)."""
    ordered = sorted(lines, key=lambda line: float(line[0][:, 1].mean()))
    rows: list[list[tuple[np.ndarray, str, float]]] = []
    for line in ordered:
        centre = float(line[0][:, 1].mean())
        height = float(np.ptp(line[0][:, 1]))
        if rows:
            last = rows[-1][-1][0]
            if abs(float(last[:, 1].mean()) - centre) < 0.5 * max(height, float(np.ptp(last[:, 1]))):
                rows[-1].append(line)
                continue
        rows.append([line])
    return [line for row in rows for line in sorted(row, key=lambda line: float(line[0][:, 0].min()))]


def _lay_out(lines: list[tuple[np.ndarray, str, float]]) -> tuple[str, np.ndarray]:
    """Rows joined by newlines (cells of one row by spaces); each character gets a slice of its
    line's box, in proportion to its position in the line (OCR gives boxes per line)."""
    parts: list[str] = []
    boxes: list[np.ndarray] = []
    previous: np.ndarray | None = None
    for quad, text, _ in lines:
        x0, y0 = quad.min(axis=0)
        x1, y1 = quad.max(axis=0)
        if previous is not None:
            same_row = abs(float(quad[:, 1].mean()) - float(previous[:, 1].mean())) < 0.5 * float(np.ptp(quad[:, 1]))
            parts.append(" " if same_row else "\n")
            boxes.append(np.full((1, 4), np.nan, dtype=np.float32))
        edges = np.linspace(x0, x1, len(text) + 1, dtype=np.float32)
        line_boxes = np.empty((len(text), 4), dtype=np.float32)
        line_boxes[:, 0], line_boxes[:, 2] = edges[:-1], edges[1:]
        line_boxes[:, 1], line_boxes[:, 3] = y0, y1
        parts.append(text)
        boxes.append(line_boxes)
        previous = quad
    if not parts:
        return "", np.zeros((0, 4), dtype=np.float32)
    return "".join(parts), np.concatenate(boxes)


def ocr_pages(base: Any, doc_id: int) -> dict[int | None, float]:
    """The pages of a stored document that were read with OCR, and each one's mean score, from
    what its chunks recorded (a page OCR read nothing on has no chunks: see the document's note)."""
    scores: dict[int | None, float] = {}
    for chunk in base.chunks(base.document_chunk_ids(doc_id)).values():
        if chunk.metadata.get("read") == "ocr":
            scores[chunk.page_no] = float(chunk.metadata.get("ocr_confidence", 0.0))
    return scores
