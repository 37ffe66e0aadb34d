"""Embedder: a sentence-transformers model, batched and normalized, with its identity recorded.

The identity (name, dimension, normalize flag) is what a knowledge base stores, so that a base
is never queried with vectors from another model.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rag.config import EmbedSettings
from rag.models import resolve_embedder

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


@dataclass(frozen=True)
class EmbedderIdentity:
    name: str
    dimension: int
    normalize: bool


class Embedder:
    """Loads its model on first use: importing sentence-transformers alone takes ~10 s on a small
    machine, and a re-run over unchanged files should not pay for a model it never calls."""

    def __init__(self, settings: EmbedSettings) -> None:
        self.settings = settings
        self._model: SentenceTransformer | None = None
        self._loading = threading.Lock()  # the ingest reader thread and the caller may both ask
        # One encode at a time: the web UI's sessions and the API's requests share one embedder
        # from many threads, and a fast tokenizer used by two threads at once can fail ("Already
        # borrowed"); on a small CPU two encodes at once are no faster than one after the other.
        self._encoding = threading.Lock()

    @property
    def name(self) -> str:
        return self.settings.model

    @property
    def model(self) -> SentenceTransformer:
        with self._loading:
            return self._load()

    def _load(self) -> SentenceTransformer:
        if self._model is None:
            # Before torch loads: idle OpenMP threads sleep instead of spinning, so a busy second
            # core does not stall every parallel step of the model (bench/query.py: a query's
            # encoding 28 ms instead of 330 ms; ingest throughput is the same either way).  Set
            # here so every entry point gets it, not only the CLI; an explicit setting wins (spinning
            # answers faster while the cores are free: README, "OpenMP threads").
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # the weight-loading bar is noise inside our own progress
            self._model = SentenceTransformer(resolve_embedder(self.settings.model), device=self.settings.device)
        return self._model

    @property
    def identity(self) -> EmbedderIdentity:
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"cannot tell the output dimension of embedding model {self.name!r}")
        return EmbedderIdentity(self.name, int(dim), self.settings.normalize)

    @property
    def max_tokens(self) -> int:
        """Word-pieces the model reads before it silently truncates (special tokens excluded)."""
        specials = self.tokenizer.num_special_tokens_to_add(pair=False)
        return int(self.model.max_seq_length) - specials

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        prefix = self.settings.passage_prefix
        return self._encode([prefix + t for t in texts] if prefix else texts)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        prefix = self.settings.query_prefix
        return self._encode([prefix + t for t in texts] if prefix else texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.identity.dimension), dtype=np.float32)
        model = self.model
        with self._encoding:
            vectors = model.encode(
                texts,
                batch_size=self.settings.batch_size,
                normalize_embeddings=self.settings.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)
