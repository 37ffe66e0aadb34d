"""The local store's keyword index: bm25s over each chunk's tokens with its neighbours', saved
per generation (``bm25-<G>/`` with ``ids.npy``: row -> chunk id); never rebuilt per query.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from rag.lexical import tokenize
from rag.store import files
from rag.store.base import Scored

# BM25 indexes each chunk together with this many neighbours on each side (same document).  A
# chunk often leaves what it is about to the sentences around it (a title, a heading, the
# subject named once), so its own words miss queries that its window matches; the chunk itself
# is still what is shown, cited and gated.  Hybrid nDCG@10 on chunked BEIR, chosen on SciFact
# train (0.726 -> 0.734) and NFCorpus dev (0.325 -> 0.327).  Ours, not bm25s': it indexes
# whatever token lists it is given.  Stored in meta; a base indexed otherwise is re-indexed
# from its stored tokens by the next writer.
WINDOW = 1


def folder(root: Path, gen: int) -> Path:
    return root / f"bm25-{gen}"


def windows(rows: Sequence[tuple[int, int, str]], width: int) -> list[list[str]]:
    """BM25 tokens of each chunk with those of `width` neighbours on each side in its document.
    `rows`: (chunk_id, doc_id, space-joined tokens), in document and reading order."""
    out = []
    for _, doc_rows in groupby(rows, key=lambda row: row[1]):
        tokens = [t.split() for _, _, t in doc_rows]
        for i in range(len(tokens)):
            out.append([t for part in tokens[max(0, i - width) : i + width + 1] for t in part])
    return out


def write(rows: Sequence[tuple[int, int, str]], dest: Path) -> None:
    """Index `rows` (see windows) into `dest`, written under a temporary name and renamed."""
    import bm25s

    model = bm25s.BM25()
    # An all-stopword window has no tokens; bm25s needs at least one per document.
    model.index([w or [""] for w in windows(rows, WINDOW)], show_progress=False)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp), show_progress=False)
    np.save(tmp / "ids.npy", np.array([r[0] for r in rows], dtype=np.int64), allow_pickle=False)
    files.fsync_tree(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    files.replace(tmp, dest)


def read(src: Path) -> tuple[Any, np.ndarray]:
    """(bm25s.BM25, row -> chunk id); FileNotFoundError when a writer has retired it meanwhile."""
    import bm25s

    model = bm25s.BM25.load(str(src), mmap=False, load_corpus=False)
    return model, np.load(src / "ids.npy", allow_pickle=False)


class Scorer:
    """One loaded index; remembers the last query's scores, since the retriever asks for the top
    candidates and then for the exact scores of the fused candidates of the same query."""

    def __init__(self, model: Any, row_ids: np.ndarray) -> None:
        self.model = model
        self.row_ids = row_ids
        self.rows = {int(c): r for r, c in enumerate(row_ids)}
        self._last: tuple[str, np.ndarray | None] | None = None

    def scores(self, query: str) -> np.ndarray | None:
        """The BM25 score of every indexed chunk, or None when no query token is indexed."""
        if self._last is None or self._last[0] != query:
            token_ids = self.model.get_tokens_ids(tokenize(query))
            self._last = (query, self.model.get_scores_from_ids(token_ids) if token_ids else None)
        return self._last[1]

    def top(self, query: str, k: int, allowed: np.ndarray | None) -> Scored:
        scores = self.scores(query)
        if scores is None:
            return []
        if allowed is not None:
            scores = np.where(np.isin(self.row_ids, allowed), scores, 0.0)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(self.row_ids[r]), float(scores[r])) for r in top if scores[r] > 0]

    def of(self, query: str, ids: Sequence[int]) -> dict[int, float]:
        scores = self.scores(query)
        if scores is None:
            return {int(cid): 0.0 for cid in ids}
        return {int(cid): float(scores[self.rows[cid]]) if cid in self.rows else 0.0 for cid in ids}
