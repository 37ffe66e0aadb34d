"""The cross-encoder that reorders fused passages and, once tuned on a domain, decides "not found".

A cross-encoder reads the question and a passage together, so it can tell a passage that answers
from one that is merely on topic, which neither the cosine nor word coverage can (SQuAD 2.0's
unanswerable questions were written against the very paragraphs that answer their neighbours).
`rag tune reranker` trains one and saves, beside its weights, the score of the best passage above
which "a passage answers this" on its validation questions (`answerability.json`).  Any
sentence-transformers CrossEncoder folder or hub id loads here; only a calibrated one can gate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.jsonfile import write_json

CALIBRATION_FILE = "answerability.json"


class RerankerError(RuntimeError):
    """The reranker cannot be loaded or cannot gate; the message says what to do."""


@dataclass(frozen=True)
class Calibration:
    """The best passage's score above which a question counts as answered by the documents."""

    threshold: float
    candidates: int  # passages reranked per question when it was measured
    discrimination: float  # on the validation questions: answered rate with an answer - without
    measured_on: str  # "validation" or "train" (a set too small to hold questions out)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_calibration(folder: str | Path) -> Calibration | None:
    """The calibration saved with a tuned reranker; None for a model that has none."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Calibration(
            float(raw["threshold"]), int(raw["candidates"]), float(raw["discrimination"]), str(raw["measured_on"])
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise RerankerError(f"{path}: not a calibration this version can read ({exc}); retrain or delete it") from exc


def write_calibration(folder: str | Path, calibration: Calibration) -> None:
    write_json(Path(folder) / CALIBRATION_FILE, calibration.to_json())


class Reranker:
    """A loaded cross-encoder: `score` gives each passage's probability of answering the question."""

    def __init__(self, model: Any, calibration: Calibration | None = None, name: str = "") -> None:
        self.model = model
        self.calibration = calibration
        self.name = name

    @classmethod
    def load(cls, name: str) -> Reranker:
        from sentence_transformers import CrossEncoder  # a core dependency, imported when used

        try:
            model = CrossEncoder(name, device="cpu")
        except OSError as exc:
            raise RerankerError(
                f"retrieve.rerank_model {name!r} is neither a cross-encoder folder nor a model the hub has: {exc}"
            ) from exc
        local = Path(name)
        return cls(model, read_calibration(local) if local.is_dir() else None, name)

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, dtype=np.float32)
        pairs = [(query, t) for t in texts]
        return np.asarray(self.model.predict(pairs, show_progress_bar=False, batch_size=32), dtype=np.float32)
