"""Retrieval: dense (FAISS) and BM25 (bm25s) over one knowledge base, fused, optionally reranked,
filtered by document, and gated on relevance.

Everything here reads indexes that ingest built; nothing is rebuilt per query (the design that
makes Langchain-Chatchat's hybrid search take seconds at 20k documents).  The same Retriever
serves `rag ask`, the UI and the evaluation harness.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag.config import RetrieveSettings
from rag.embed import Embedder
from rag.kb import LIVE_IDS, KnowledgeBase, dense_kind
from rag.lexical import language, tokenize
from rag.types import Chunk

FUSIONS = ("minmax", "zscore", "rrf")


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float  # the fused (or reranked) score that ordered the list
    sources: dict[str, int] = field(default_factory=dict)  # retriever -> 1-based rank
    similarity: float = 0.0  # cosine(query, chunk): comparable across modes, used by the gate
    coverage: float = 0.0  # share of the question's distinct tokens found in the chunk


@dataclass(frozen=True)
class Filters:
    """Which documents may answer: a glob on the file path or name, and/or document ids."""

    path_glob: str | None = None
    doc_ids: Sequence[int] | None = None

    def active(self) -> bool:
        return bool(self.path_glob) or self.doc_ids is not None


@dataclass
class Retrieval:
    hits: list[Hit]  # the top_k, best first
    relevant: list[Hit]  # those that clear the relevance gate: what an LLM should be shown
    query: str

    @property
    def found(self) -> bool:
        return bool(self.relevant)


class Retriever:
    def __init__(self, kb: KnowledgeBase, embedder: Embedder, settings: RetrieveSettings) -> None:
        kb.check_embedder(embedder.name, embedder.settings.normalize)
        self.kb = kb
        self.embedder = embedder
        self.settings = settings
        self._reranker: Any = None
        self._row_map: tuple[np.ndarray, dict[int, int]] | None = None

    # ---- public ----------------------------------------------------------------------------
    def search(
        self,
        query: str,
        *,
        top_k: int | None = None,
        mode: str | None = None,
        filters: Filters | None = None,
        query_vector: np.ndarray | None = None,
    ) -> Retrieval:
        """`query_vector`: the query already encoded (evaluation encodes its queries in batches)."""
        s = self.settings
        mode = mode or s.mode
        top_k = top_k or s.top_k
        allowed = self._allowed_ids(filters) if filters and filters.active() else None
        qvec = query_vector if query_vector is not None else self.embedder.encode_queries([query])[0]
        ranked: dict[str, list[tuple[int, float]]] = {}
        bm25_all = None
        if mode in ("dense", "hybrid"):
            ranked["dense"] = self._dense(qvec, s.candidates, allowed)
        if mode in ("bm25", "hybrid"):
            bm25_all = self._bm25_scores(query, allowed)
            ranked["bm25"] = _top(bm25_all, s.candidates)
        complete = None
        if mode == "hybrid" and s.fusion != "rrf":
            complete = self._complete_scores(ranked, qvec, bm25_all)
        zh = language(query) == "zh"
        dense_weight = s.dense_weight_zh if zh and s.dense_weight_zh is not None else s.dense_weight
        weights = {"dense": dense_weight, "bm25": s.bm25_weight}
        fused = fuse(ranked, s.fusion, s.rrf_k, weights, complete)
        depth = max(top_k, s.rerank_candidates) if s.rerank_model else top_k
        hits = self._hits(fused[:depth], ranked, qvec, query)
        if s.rerank_model and hits:
            hits = self._rerank(query, hits)
        hits = hits[:top_k]
        relevant = [h for h in hits if self._passes(zh, h.similarity, h.coverage)]
        return Retrieval(hits, relevant, query)

    def relevant_to(self, hits: list[Hit], query: str) -> list[Hit]:
        """Those `hits` that pass the gate for another `query`: a follow-up searched together
        with the previous question's words must still be about what the follow-up asks."""
        qvec = self.embedder.encode_queries([query])[0]
        closeness = self._closeness(qvec, query, [h.chunk.chunk_id for h in hits])
        zh = language(query) == "zh"
        return [h for h in hits if self._passes(zh, *closeness[h.chunk.chunk_id])]

    def _passes(self, zh: bool, similarity: float, coverage: float) -> bool:
        """The relevance gate: enough of the question's words, or close enough in meaning."""
        s = self.settings
        threshold = s.min_similarity_zh if zh else s.min_similarity
        return coverage >= s.min_coverage or (threshold is not None and similarity >= threshold)

    # ---- the two retrievers ------------------------------------------------------------------
    def _dense(self, qvec: np.ndarray, k: int, allowed: np.ndarray | None) -> list[tuple[int, float]]:
        import faiss

        index = self.kb.dense_index()
        if index.ntotal == 0 or (allowed is not None and len(allowed) == 0):
            return []
        hnsw = dense_kind(index) == "hnsw"
        if hnsw and allowed is not None and len(allowed) <= _EXACT_FILTERED:
            try:
                return _exact(index, qvec, allowed, k)
            except RuntimeError:  # a chunk committed after this index was read: search the graph
                pass
        params = None
        if hnsw:
            # Removed chunks stay in the graph, labelled DEAD; neither selector lets them out.
            sel = faiss.IDSelectorBatch(allowed) if allowed is not None else faiss.IDSelectorRange(*LIVE_IDS)
            params = faiss.SearchParametersHNSW(efSearch=max(self.settings.hnsw_ef_search, k), sel=sel)
        elif allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        scores, ids = index.search(qvec[None, :], min(k, index.ntotal), params=params)
        return [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0], strict=True) if i >= 0]

    def _bm25_scores(self, query: str, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        """(score per indexed chunk, row -> chunk id), or None when nothing can match."""
        loaded = self.kb.bm25_index()
        if loaded is None:
            return None
        model, row_ids = loaded
        token_ids = model.get_tokens_ids(tokenize(query))
        if not token_ids:
            return None
        scores = model.get_scores_from_ids(token_ids)
        if allowed is not None:
            scores = np.where(np.isin(row_ids, allowed), scores, 0.0)
        return scores, row_ids

    def _complete_scores(
        self, ranked: dict[str, list[tuple[int, float]]], qvec: np.ndarray, bm25_all: tuple | None
    ) -> dict[str, dict[int, float]]:
        """Both retrievers' scores for every candidate either one found.  A passage that is 101st
        for BM25 still has a BM25 score; fusing it as if it had none cost 0.005 nDCG@10 on
        NFCorpus (dev), so each candidate's true cosine and BM25 score are looked up here."""
        union = list(dict.fromkeys(cid for items in ranked.values() for cid, _ in items))
        complete = {"dense": self._similarities(qvec, union)}
        if bm25_all is not None:
            scores, row_ids = bm25_all
            rows = self._rows(row_ids)
            complete["bm25"] = {cid: float(scores[rows[cid]]) if cid in rows else 0.0 for cid in union}
        return complete

    def _rows(self, row_ids: np.ndarray) -> dict[int, int]:
        """chunk id -> BM25 row, built once per loaded index."""
        if self._row_map is None or self._row_map[0] is not row_ids:
            self._row_map = (row_ids, {int(c): r for r, c in enumerate(row_ids)})
        return self._row_map[1]

    # ---- assembling hits -------------------------------------------------------------------
    def _hits(
        self, fused: list[tuple[int, float]], ranked: dict[str, list[tuple[int, float]]], qvec: np.ndarray, query: str
    ) -> list[Hit]:
        chunks = self.kb.chunks([cid for cid, _ in fused])
        ranks = {name: {cid: r for r, (cid, _) in enumerate(lst, start=1)} for name, lst in ranked.items()}
        closeness = self._closeness(qvec, query, [cid for cid, _ in fused if cid in chunks])
        hits = []
        for cid, score in fused:
            chunk = chunks.get(cid)
            if chunk is None:  # removed by a commit since the index was read
                continue
            sources = {name: r[cid] for name, r in ranks.items() if cid in r}
            hits.append(Hit(chunk, score, sources, *closeness[cid]))
        return hits

    def _closeness(self, qvec: np.ndarray, query: str, ids: list[int]) -> dict[int, tuple[float, float]]:
        """chunk id -> (cosine with the query, share of the query's words in the chunk): what the
        relevance gate decides on."""
        sims = self._similarities(qvec, ids)
        stored = self.kb.chunk_tokens(ids)
        q_tokens = {t for t in tokenize(query) if t}
        return {cid: (sims[cid], _coverage(q_tokens, stored.get(cid, set()))) for cid in ids}

    def _similarities(self, qvec: np.ndarray, ids: list[int]) -> dict[int, float]:
        """Cosine of the query with each chunk, read back from the FAISS index (no re-encoding)."""
        index = self.kb.dense_index()
        out = {}
        for cid in ids:
            try:
                out[cid] = float(np.dot(index.reconstruct(cid), qvec))
            except RuntimeError:  # id not in this generation
                out[cid] = 0.0
        return out

    def _allowed_ids(self, filters: Filters) -> np.ndarray:
        sql = "SELECT c.chunk_id, d.path FROM chunks c JOIN documents d USING (doc_id)"
        args: list[Any] = []
        if filters.doc_ids is not None:
            sql += f" WHERE c.doc_id IN ({','.join('?' * len(filters.doc_ids))})"
            args = [int(i) for i in filters.doc_ids]
        rows = self.kb.conn.execute(sql, args).fetchall()
        glob = filters.path_glob
        keep = [cid for cid, path in rows if not glob or _glob_match(path, glob)]
        return np.array(keep, dtype=np.int64)

    def _rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        if self._reranker is None:
            self._reranker = load_reranker(self.settings.rerank_model)
        scores = self._reranker.predict([(query, h.chunk.text) for h in hits], show_progress_bar=False)
        order = np.argsort(-np.asarray(scores), kind="stable")
        return [
            Hit(hits[i].chunk, float(scores[i]), {**hits[i].sources, "rerank": r}, hits[i].similarity, hits[i].coverage)
            for r, i in enumerate(order, start=1)
        ]


def load_reranker(name: str):
    try:
        from sentence_transformers import CrossEncoder
    except ImportError as exc:  # pragma: no cover - sentence-transformers is a core dependency
        raise RuntimeError("the reranker needs sentence-transformers: pip install sentence-transformers") from exc
    return CrossEncoder(name, device="cpu")


def _top(all_scores: tuple[np.ndarray, np.ndarray] | None, k: int) -> list[tuple[int, float]]:
    if all_scores is None:
        return []
    scores, row_ids = all_scores
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(row_ids[r]), float(scores[r])) for r in top if scores[r] > 0]


def _glob_match(path: str, pattern: str) -> bool:
    return fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern)


def _coverage(q_tokens: set[str], chunk_tokens: set[str]) -> float:
    if not q_tokens:
        return 0.0
    return len(q_tokens & chunk_tokens) / len(q_tokens)


def fuse(
    ranked: dict[str, list[tuple[int, float]]],
    method: str,
    rrf_k: int,
    weights: dict[str, float],
    complete: dict[str, dict[int, float]] | None = None,
) -> list[tuple[int, float]]:
    """Merge ranked lists of (chunk_id, score) into one, best first.

    rrf: sum of w / (k + rank) — robust to incomparable score scales.
    minmax: sum of w * (score - min) / (max - min) — each retriever's scores mapped onto [0, 1].
    zscore: sum of w * (score - mean) / std — keeps how far ahead a hit is.
    With `complete` (every candidate's score in each retriever) a candidate is scored by what it
    really got, and minmax scales over all candidates; without, a list's miss counts as that
    list's worst hit and each list is scaled over itself.
    """
    if method not in FUSIONS:
        raise ValueError(f"unknown fusion method {method!r}: use one of {', '.join(FUSIONS)}")
    if method != "rrf" and complete:
        return _fuse_complete(ranked, method, weights, complete)
    total: dict[int, float] = {}
    for name, items in ranked.items():
        if not items:
            continue
        w = weights.get(name, 1.0)
        if method == "rrf":
            for rank, (cid, _) in enumerate(items, start=1):
                total[cid] = total.get(cid, 0.0) + w / (rrf_k + rank)
            continue
        scores = np.array([sc for _, sc in items], dtype=np.float64)
        normal = _normalize(scores, scores, method)
        floor = normal.min()  # a list's miss counts as its worst hit
        for (cid, _), x in zip(items, normal, strict=True):
            total[cid] = total.get(cid, 0.0) + w * (x - floor)
    return sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))


def _normalize(scores: np.ndarray, over: np.ndarray, method: str) -> np.ndarray:
    """`scores` on the scale of `over`: min-max onto [0, 1], or standardized."""
    if method == "minmax":
        low, span = over.min(), over.max() - over.min()
        return (scores - low) / (span or 1.0)
    return (scores - over.mean()) / (over.std() or 1.0)


def _fuse_complete(
    ranked: dict[str, list[tuple[int, float]]],
    method: str,
    weights: dict[str, float],
    complete: dict[str, dict[int, float]],
) -> list[tuple[int, float]]:
    """zscore standardizes by each retriever's own list (its top candidates); minmax scales over
    every candidate, so the best and worst of the union span [0, 1] in each retriever."""
    total: dict[int, float] = {cid: 0.0 for items in ranked.values() for cid, _ in items}
    cids = list(total)
    for name, items in ranked.items():
        if not items or name not in complete:
            continue
        scores = np.array([complete[name].get(cid, 0.0) for cid in cids], dtype=np.float64)
        over = scores if method == "minmax" else np.array([sc for _, sc in items], dtype=np.float64)
        w = weights.get(name, 1.0)
        for cid, x in zip(cids, _normalize(scores, over, method), strict=True):
            total[cid] += w * x
    return sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))


# An HNSW graph searched with a filter finds few of the allowed vectors when they are few (the
# walk rarely meets them: 1 of 3 in a test), so up to this many allowed chunks are scored exactly.
_EXACT_FILTERED = 50_000


def _exact(index: Any, qvec: np.ndarray, allowed: np.ndarray, k: int) -> list[tuple[int, float]]:
    ids = np.asarray(allowed, dtype=np.int64)
    scores = index.reconstruct_batch(ids) @ qvec
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(ids[i]), float(scores[i])) for i in order]
