"""Retrieval: dense and BM25 candidates from one knowledge base's store, fused, optionally
reranked, filtered by document, and gated on relevance.

Everything here reads indexes that ingest built; nothing is rebuilt per query (the design that
makes Langchain-Chatchat's hybrid search take seconds at 20k documents).  The same Retriever
serves `rag ask`, the UI and the evaluation harness, on any store backend.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from rag.config import RetrieveSettings
from rag.embed import Embedder
from rag.expansion import Lexicon, load_lexicon
from rag.lexical import language, tokenize
from rag.openmp import gives_back_threads
from rag.reranker import Reranker, RerankerError
from rag.store import Allowed, Filters, Store
from rag.types import Chunk

__all__ = ["Filters", "Hit", "Retrieval", "Retriever", "fuse"]

FUSIONS = ("minmax", "zscore", "rrf")
_RETRIEVERS = {"dense": ("dense",), "bm25": ("bm25",), "hybrid": ("dense", "bm25")}
PAGE_WINDOW = 4  # with max_per_page: fused passages read at a time, per place in the top_k, to fill it


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float  # the fused (or reranked) score that ordered the list
    sources: dict[str, int] = field(default_factory=dict)  # retriever -> 1-based rank
    similarity: float = 0.0  # cosine(query, chunk): comparable across modes, used by the gate
    coverage: float = 0.0  # share of the question's distinct tokens found in the chunk
    rerank: float | None = None  # the cross-encoder's probability that it answers (when reranked)


@dataclass
class Retrieval:
    hits: list[Hit]  # the top_k, best first
    relevant: list[Hit]  # those that clear the relevance gate: what an LLM should be shown
    query: str

    @property
    def found(self) -> bool:
        return bool(self.relevant)


class Retriever:
    def __init__(self, kb: Store, embedder: Embedder, settings: RetrieveSettings) -> None:
        kb.check_embedder(embedder.name, embedder.settings.normalize)
        self.kb = kb
        self.embedder = embedder
        self.settings = settings
        self.lexicon: Lexicon = load_lexicon(settings.expansions)
        self._reranker: Reranker | None = None

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """The dense retriever's vectors for `queries` (expanded by the lexicons when expand_dense)."""
        if self.settings.expand_dense:
            queries = [self.lexicon.expand(q) for q in queries]
        return self.embedder.encode_queries(queries)

    # ---- public ----------------------------------------------------------------------------
    @gives_back_threads  # a query's torch work must not slow the answer's generation (rag.openmp)
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
        allowed = self.kb.allowed(filters) if filters and filters.active() else None
        qvec = query_vector if query_vector is not None else self.encode_queries([query])[0]
        lexical_query = self.lexicon.expand(query)
        ranked = self._candidates(mode, lexical_query, qvec, s.candidates, allowed)
        zh = language(query) == "zh"
        dense_weight = s.dense_weight_zh if zh and s.dense_weight_zh is not None else s.dense_weight
        weights = {"dense": dense_weight, "bm25": s.bm25_weight}
        fused = self._fuse(ranked, qvec, lexical_query, weights)
        # Feedback moves the dense search only: weighted 0 (Chinese questions, by default), it is left out.
        if s.feedback_passages and weights["dense"] and "dense" in ranked and fused:
            moved = self._moved_toward(qvec, [cid for cid, _ in fused[: s.feedback_passages]])
            ranked = {**ranked, "dense": self.kb.dense_candidates(moved, s.candidates, allowed)}
            fused = self._fuse(ranked, moved, lexical_query, weights)
        depth = max(top_k, s.rerank_candidates) if s.rerank_model else top_k
        hits = self._hits(fused[:depth], ranked, qvec, query)
        if s.rerank_model and hits:  # the first rerank_candidates, reordered; any deeper ones follow as fused
            hits = self._rerank(query, hits[: s.rerank_candidates]) + hits[s.rerank_candidates :]
        hits = _spread_over_pages(hits, s.max_per_page)
        while len(hits) < top_k and depth < len(fused):  # a page had too many (or chunks were removed): read on
            more = self._hits(fused[depth : depth + PAGE_WINDOW * top_k], ranked, qvec, query)
            hits = _spread_over_pages(hits + more, s.max_per_page)
            depth += PAGE_WINDOW * top_k
        hits = hits[:top_k]
        relevant = [h for h in hits if self._passes(zh, h.similarity, h.coverage, h.rerank)]
        return Retrieval(hits, relevant, query)

    @gives_back_threads
    def relevant_to(self, hits: list[Hit], query: str) -> list[Hit]:
        """Those `hits` that pass the gate for another `query`: a follow-up searched together
        with the previous question's words must still be about what the follow-up asks."""
        qvec = self.embedder.encode_queries([query])[0]
        closeness = self._closeness(qvec, query, [h.chunk.chunk_id for h in hits])
        zh = language(query) == "zh"
        scores = [0.0] * len(hits)
        if self.gate() != "relevance":
            scores = list(self.reranker().score(query, [h.chunk.text for h in hits]))
        return [h for h, sc in zip(hits, scores, strict=True) if self._passes(zh, *closeness[h.chunk.chunk_id], sc)]

    def gate(self) -> str:
        """What decides that a passage may answer: "relevance" (words or cosine), "reranker" (a
        calibrated cross-encoder's score) or "both".  `auto` picks the reranker when it carries a
        calibration from `rag tune reranker`: on SQuAD 2.0 the relevance gate could not tell an
        answering paragraph from its on-topic neighbour at all."""
        s = self.settings
        if s.answer_gate == "auto":
            return "reranker" if s.rerank_model and self.answer_threshold() is not None else "relevance"
        return s.answer_gate

    def answer_threshold(self) -> float | None:
        """retrieve.answer_threshold, else the calibration saved with the reranker."""
        if self.settings.answer_threshold is not None:
            return self.settings.answer_threshold
        if not self.settings.rerank_model:
            return None
        calibration = self.reranker().calibration
        return calibration.threshold if calibration else None

    def _passes(self, zh: bool, similarity: float, coverage: float, rerank_score: float | None) -> bool:
        """The gate: enough of the question's words, or close enough in meaning; and/or, with a
        reranker gate, a cross-encoder score at or above the calibrated threshold."""
        gate = self.gate()
        if gate != "relevance":
            threshold = self.answer_threshold()
            if threshold is None:
                raise RerankerError(
                    f"retrieve.answer_gate = {gate!r} needs retrieve.answer_threshold or a reranker tuned with "
                    f"`rag tune reranker` ({self.settings.rerank_model!r} carries no calibration)"
                )
            if rerank_score is None or rerank_score < threshold:
                return False
            if gate == "reranker":
                return True
        s = self.settings
        threshold = s.min_similarity_zh if zh else s.min_similarity
        return coverage >= s.min_coverage or (threshold is not None and similarity >= threshold)

    # ---- the two retrievers ------------------------------------------------------------------
    def _candidates(
        self, mode: str, query: str, qvec: np.ndarray, k: int, allowed: Allowed | None
    ) -> dict[str, list[tuple[int, float]]]:
        if allowed is not None and allowed.empty:
            return {name: [] for name in _RETRIEVERS[mode]}
        ranked: dict[str, list[tuple[int, float]]] = {}
        if "dense" in _RETRIEVERS[mode]:
            ranked["dense"] = self.kb.dense_candidates(qvec, k, allowed)
        if "bm25" in _RETRIEVERS[mode]:
            ranked["bm25"] = self._break_ties(query, self.kb.lexical_candidates(query, k, allowed))
        return ranked

    def _break_ties(self, query: str, items: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """Equal BM25 scores, ordered by how many of the query's words the chunk itself holds.

        BM25 indexes each chunk with its neighbours (rag.store.bm25.WINDOW), so the chunks of a
        two-chunk document score exactly alike; which came first was up to each store's sort
        (the local store and Milvus disagreed).  The chunk that holds the words is the one to
        show and cite."""
        groups: list[list[tuple[int, float]]] = []
        for item in items:  # runs of (nearly) equal scores, best first
            if groups and math.isclose(item[1], groups[-1][0][1], rel_tol=1e-5):
                groups[-1].append(item)
            else:
                groups.append([item])
        tied = [cid for group in groups if len(group) > 1 for cid, _ in group]
        if not tied:
            return items
        q_tokens = {t for t in tokenize(query) if t}
        own = self.kb.chunk_tokens(tied)
        return [
            item
            for group in groups
            for item in sorted(group, key=lambda it: -_coverage(q_tokens, set(own.get(it[0], ()))))
        ]

    def _fuse(
        self, ranked: dict[str, list[tuple[int, float]]], qvec: np.ndarray, query: str, weights: dict[str, float]
    ) -> list[tuple[int, float]]:
        s = self.settings
        complete = None
        if len(ranked) > 1 and s.fusion != "rrf":
            complete = self._complete_scores(ranked, qvec, query)
        return fuse(ranked, s.fusion, s.rrf_k, weights, complete)

    def _moved_toward(self, qvec: np.ndarray, ids: list[int]) -> np.ndarray:
        """The question's vector plus feedback_weight times the mean of the passages `ids` (Rocchio
        feedback with no negatives).  A short question ("breast cancer cells feed on cholesterol")
        names one side of a topic its passages cover in many words; the first passages found
        carry those words into the second search.  NFCorpus judges about 40 documents relevant
        per question, and the moved vector raised Recall@100 by 0.03 (dev and test alike).
        Only the dense search moves: the gate still measures closeness to the question itself."""
        found = self.kb.vectors(ids)
        found = found[np.any(found != 0, axis=1)]  # a passage removed since the search has no vector
        if not len(found):
            return qvec
        moved = qvec + self.settings.feedback_weight * found.mean(axis=0)
        norm = float(np.linalg.norm(moved))
        return (moved / norm).astype(qvec.dtype) if norm else qvec

    def _complete_scores(
        self, ranked: dict[str, list[tuple[int, float]]], qvec: np.ndarray, query: str
    ) -> dict[str, dict[int, float]]:
        """Both retrievers' scores for every candidate either one found.  A passage that is 101st
        for BM25 still has a BM25 score; fusing it as if it had none cost 0.005 nDCG@10 on
        NFCorpus (dev), so each candidate's true cosine and BM25 score are looked up here."""
        union = list(dict.fromkeys(cid for items in ranked.values() for cid, _ in items))
        return {"dense": self.kb.dense_scores(qvec, union), "bm25": self.kb.lexical_scores(query, union)}

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
        relevance gate decides on.  The cosine is read back from the store (no re-encoding)."""
        sims = self.kb.dense_scores(qvec, ids)
        stored = self.kb.chunk_tokens(ids)
        q_tokens = {t for t in tokenize(query) if t}
        return {cid: (sims.get(cid, 0.0), _coverage(q_tokens, set(stored.get(cid, ())))) for cid in ids}

    def reranker(self) -> Reranker:
        if self._reranker is None:
            if not self.settings.rerank_model:
                raise RerankerError("no reranker: set retrieve.rerank_model")
            self._reranker = Reranker.load(self.settings.rerank_model)
        return self._reranker

    def _rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        """Reordered by the cross-encoder's probability, or, with rerank_weight below 1, by that
        weight of it plus the rest of the first stage's fused score scaled onto [0, 1] (a small
        tuned reranker can know the domain and still miss what the first stage was sure of)."""
        probs = self.reranker().score(query, [h.chunk.text for h in hits])
        w = self.settings.rerank_weight
        order_by = probs.astype(np.float64)
        if w < 1:
            first = np.array([h.score for h in hits], dtype=np.float64)
            order_by = w * order_by + (1 - w) * _normalize(first, first, "minmax")
        order = np.argsort(-order_by, kind="stable")
        return [
            Hit(
                hits[i].chunk,
                float(order_by[i]),
                {**hits[i].sources, "rerank": r},
                hits[i].similarity,
                hits[i].coverage,
                float(probs[i]),
            )
            for r, i in enumerate(order, start=1)
        ]


def _spread_over_pages(hits: list[Hit], cap: int | None) -> list[Hit]:
    """At most `cap` hits of one page, in order.  A dense PDF page is cut into several chunks that
    all match the same words, and they would fill the top_k with one page; the answer then lacks
    the other pages it needs (on FinanceBench, the income statement and the balance sheet).  A
    spreadsheet's sheet is a "page" of any length, and unpaged files have none: neither is capped."""
    if cap is None:
        return hits
    taken: Counter[tuple[str, int]] = Counter()
    kept: list[Hit] = []
    for hit in hits:
        chunk = hit.chunk
        if chunk.page_no is not None and "sheet" not in chunk.metadata:
            page = (chunk.source, chunk.page_no)
            if taken[page] >= cap:
                _widen(kept, hit)
                continue
            taken[page] += 1
        kept.append(hit)
    return kept


def _widen(kept: list[Hit], hit: Hit) -> None:
    """A kept hit whose whole text `hit` repeats at its head (a statement's title, which the
    chunker repeats in its table's first chunk) gives its place to `hit`: the page keeps the
    title's rank, and the model is given the rows the title names, not the title alone."""
    if not hit.chunk.metadata.get("repeated_header"):
        return
    for i, other in enumerate(kept):
        same_page = (other.chunk.source, other.chunk.page_no) == (hit.chunk.source, hit.chunk.page_no)
        if same_page and hit.chunk.text.startswith(other.chunk.text.rstrip()):
            kept[i] = replace(
                hit,
                score=other.score,
                similarity=max(hit.similarity, other.similarity),
                coverage=max(hit.coverage, other.coverage),
            )
            return


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
    return _ranked(total, ranked)


def _ranked(total: dict[int, float], ranked: dict[str, list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Best first; equal scores (common when one retriever has weight 0) by the best rank either
    retriever gave, which does not depend on how a store numbers its chunks."""
    best: dict[int, int] = {}
    for items in ranked.values():
        for rank, (cid, _) in enumerate(items):
            best[cid] = min(best.get(cid, rank), rank)
    return sorted(total.items(), key=lambda kv: (-kv[1], best.get(kv[0], len(best)), kv[0]))


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
    return _ranked(total, ranked)
