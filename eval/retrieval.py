"""Retrieval evaluation: a BEIR corpus ingested by the normal pipeline, every query run through the
same Retriever `rag ask` uses, scored at document level with ranx.

A document's rank is that of its best chunk, so chunked and whole-document knowledge bases are
scored on the same terms as the published (whole-document) numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.datasets import BeirDataset, doc_id_of, load_beir, write_corpus
from ingest.pipeline import IngestPipeline, IngestReport, Problem, Progress, open_for_ingest
from rag.config import Settings
from rag.embed import Embedder
from rag.retrieve import Retriever
from rag.stack import embedder_for, retriever_for
from rag.store import Store

METRICS = ["ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"]
RECALL_CURVE_K = [1, 2, 3, 5, 10, 20, 30, 50, 100]
DOC_DEPTH = 100  # documents ranked per query: enough for recall@100 and map@100
MAX_CHUNK_DEPTH = 1000
QUERY_BATCH = 64

# (stage, done, total): e.g. ("ingest eval-scifact-…", 120, 5183) or ("queries hybrid", 10, 300).
ProgressFn = Callable[[str, int, int], None]


@dataclass
class RunResult:
    name: str
    mode: str
    settings: dict[str, Any]
    metrics: dict[str, float]
    seconds: float  # running the queries (ingest is shared and cached: see ingest_seconds)
    kb: str
    ingest_seconds: float
    recall_curve: dict[int, float] = field(default_factory=dict)
    per_query: dict[str, dict[str, Any]] = field(default_factory=dict)
    identical_id_hits: int = 0  # rankings the query's own document was dropped from (or, kept, is in)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "settings": self.settings,
            "metrics": self.metrics,
            "seconds": round(self.seconds, 2),
            "kb": self.kb,
            "ingest_seconds": round(self.ingest_seconds, 2),
            "recall_curve": {str(k): v for k, v in self.recall_curve.items()},
            "identical_id_hits": self.identical_id_hits,
        }


# ---- the corpus as a knowledge base --------------------------------------------------------
def eval_kb_name(dataset: BeirDataset, settings: Settings) -> str:
    """Everything that changes the stored vectors or chunks names the base; retrieval settings do
    not, so configurations that differ only in how they search share one ingest."""
    from ingest.chunking import chunker_fingerprint

    e = settings.embed
    parts = [dataset.corpus_digest(), e.model, e.normalize, e.passage_prefix, chunker_fingerprint(settings.chunk)]
    if settings.ingest.dense_index == "hnsw":  # its own base, so flat and HNSW can be compared side by side
        parts.append("hnsw")
    key = json.dumps(parts)
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset.name)[:40]  # a folder name may hold anything
    return f"eval-{label}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


class _IngestProgress(Progress):
    def __init__(self, stage: str, report: ProgressFn | None) -> None:
        self.stage, self.report = stage, report
        self.total = self.done = 0
        self.problems: list[Problem] = []

    def files_total(self, n: int) -> None:
        self.total = n
        if self.report:
            self.report(self.stage, 0, n)

    def file_done(self, path: str) -> None:
        self.done += 1
        if self.report and (self.done % 50 == 0 or self.done == self.total):
            self.report(self.stage, self.done, self.total)

    def problem(self, problem: Problem) -> None:
        self.problems.append(problem)


def corpus_kb(
    settings: Settings, dataset: BeirDataset, embedder: Embedder, progress: ProgressFn | None = None
) -> tuple[Store, IngestReport]:
    """The corpus ingested with `settings`' embedder and chunker; a second call with the same
    corpus and settings finds every file unchanged and returns in about a second."""
    folder = settings.cache_dir / "eval" / "corpora" / f"{dataset.name}-{dataset.corpus_digest()}"
    write_corpus(dataset.corpus, folder)
    name = eval_kb_name(dataset, settings)
    kb = open_for_ingest(settings, name, embedder)
    report = IngestPipeline(settings, embedder, kb).run([folder], sync=True, progress=_IngestProgress(name, progress))
    if report.interrupted:
        raise KeyboardInterrupt
    return kb, report


# ---- running queries -----------------------------------------------------------------------
def chunk_depth(kb: Store) -> int:
    """Chunks to fetch so that about DOC_DEPTH distinct documents remain after keeping each
    document's best chunk (more chunks per document need a deeper list)."""
    docs = max(1, len(kb.documents(status="ok")))
    per_doc = kb.chunk_count() / docs
    return min(MAX_CHUNK_DEPTH, max(DOC_DEPTH, math.ceil(DOC_DEPTH * per_doc * 1.5)))


def twins(kb: Store) -> dict[int, list[str]]:
    """doc_id -> corpus ids of the documents stored as its duplicates.  Ingest keeps identical
    content once (NFCorpus has 40 such pairs); a hit on it is a hit on each of its copies."""
    out: dict[int, list[str]] = {}
    for doc in kb.documents(status="duplicate"):
        if doc.content_of is not None:
            out.setdefault(doc.content_of, []).append(doc_id_of(doc.path))
    return out


def run_queries(
    retriever: Retriever,
    queries: dict[str, str],
    mode: str,
    depth: int,
    progress: Callable[[int], None] | None = None,
    deep: Retriever | None = None,
) -> dict[str, list[str]]:
    """query id -> corpus ids, best first, each document once (at its best chunk's rank):
    DOC_DEPTH + 1 of them, so that leaving out the query's own document (drop_identical_ids)
    still leaves DOC_DEPTH, as BEIR's searchers fetch top_k + 1 for the same reason.

    The head of each ranking is exactly what `retriever` (the configuration as shipped) returns.
    Its candidate lists may hold fewer than DOC_DEPTH documents, so `deep` (the same settings
    with deeper candidate lists) fills the tail for recall@100.  Fusing deeper lists instead
    would change the top ranks too (min-max and z-score scale over the candidates): SciFact
    nDCG@10 would then describe a configuration nobody runs."""
    copies = twins(retriever.kb)
    if deep is None:
        searchers = [retriever]
    elif mode == "hybrid":
        searchers = [retriever, deep]  # the head as shipped, then the tail
    else:
        searchers = [deep]  # one retriever alone: its deep list starts with exactly the shallow one
    ids = list(queries)
    ranked: dict[str, list[str]] = {}
    for start in range(0, len(ids), QUERY_BATCH):
        batch = ids[start : start + QUERY_BATCH]
        # Encoded in batches even for bm25: every hit carries its cosine similarity.
        vectors = retriever.encode_queries([queries[q] for q in batch])
        for qid, qvec in zip(batch, vectors, strict=True):
            hits = [
                h for r in searchers for h in r.search(queries[qid], top_k=depth, mode=mode, query_vector=qvec).hits
            ]
            docs = [d for h in hits for d in [doc_id_of(h.chunk.source), *copies.get(h.chunk.doc_id, [])]]
            ranked[qid] = best_per_document(docs)[: DOC_DEPTH + 1]
        if progress:
            progress(min(start + QUERY_BATCH, len(ids)))
    return ranked


def best_per_document(doc_ids_by_chunk: list[str]) -> list[str]:
    """Chunks' documents in rank order -> documents in rank order, each at its first (best) chunk."""
    return list(dict.fromkeys(doc_ids_by_chunk))


def drop_identical_ids(ranked: dict[str, list[str]], keep: bool = False) -> tuple[dict[str, list[str]], int]:
    """Rankings cut to DOC_DEPTH, without the document whose id is the query's own unless `keep`;
    and how many rankings held it.

    Where queries are also corpus documents (ArguAna, Quora, CQADupStack) each would otherwise
    find itself at rank 1.  BEIR's evaluation drops such hits (`ignore_identical_ids`, on by
    default) and its searchers skip them before the top-k cut, so the published numbers rank
    top_k other documents: the id is dropped here before the cut too."""
    out: dict[str, list[str]] = {}
    hits = 0
    for qid, docs in ranked.items():
        if keep:
            out[qid] = docs[:DOC_DEPTH]
            hits += qid in out[qid]
        else:
            out[qid] = [d for d in docs if d != qid][:DOC_DEPTH]
            hits += qid in docs
    return out, hits


def score(qrels: dict[str, dict[str, int]], ranked: dict[str, list[str]]) -> tuple[dict[str, float], dict, dict]:
    """(mean metrics, recall@k curve, per-query metrics) through ranx."""
    from ranx import Qrels, Run, evaluate

    run_dict = {}
    for qid in qrels:
        docs = ranked.get(qid) or []
        # ranx wants every judged query in the run; a query with no results gets a sentinel miss.
        run_dict[qid] = {d: float(len(docs) - r) for r, d in enumerate(docs)} or {"__no_results__": 0.0}
    qr, run = Qrels(qrels), Run(run_dict)
    curve_metrics = [f"recall@{k}" for k in RECALL_CURVE_K]
    means = evaluate(qr, run, METRICS + curve_metrics, make_comparable=True)
    per_query = {qid: {m: round(float(run.scores[m][qid]), 4) for m in METRICS} for qid in qrels}
    metrics = {m: round(float(means[m]), 4) for m in METRICS}
    curve = {k: round(float(means[f"recall@{k}"]), 4) for k in RECALL_CURVE_K}
    return metrics, curve, per_query


def _settings_summary(settings: Settings) -> dict[str, Any]:
    """What a reader needs to rebuild the configuration: embedder, chunker, retrieval."""
    return {
        "embed": settings.embed.model_dump(include={"model", "normalize", "query_prefix", "passage_prefix"}),
        "chunk": settings.chunk.model_dump(),
        "retrieve": settings.retrieve.model_dump(
            exclude={"top_k", "min_similarity", "min_coverage", "min_similarity_zh"}
        ),
    }


def evaluate_config(
    name: str,
    settings: Settings,
    dataset: BeirDataset,
    embedders: dict[str, Embedder],
    progress: ProgressFn | None = None,
    keep_identical_ids: bool = False,
) -> RunResult:
    """One configuration (its retrieve.mode included) over the dataset's judged queries; a query's
    own document is left out of its ranking unless `keep_identical_ids` (see drop_identical_ids)."""
    embedder = embedder_for(settings, embedders)
    t0 = time.perf_counter()
    kb, _ = corpus_kb(settings, dataset, embedder, progress)
    ingest_seconds = time.perf_counter() - t0
    with kb:
        depth = chunk_depth(kb)
        retrieve = settings.retrieve
        retriever = retriever_for(settings, kb, embedder=embedder)
        deeper = retrieve.model_copy(update={"candidates": max(retrieve.candidates, depth)})
        if retrieve.mode == "hybrid":  # the tail only: the head, reranked as shipped, comes from `retriever`
            deeper = deeper.model_copy(update={"rerank_model": None, "answer_gate": "relevance"})
        deep = retriever_for(settings.model_copy(update={"retrieve": deeper}), kb, embedder=embedder)
        stage = f"queries {name}"
        total = len(dataset.queries)
        if progress:
            progress(stage, 0, total)
        t1 = time.perf_counter()
        tick = (lambda done: progress(stage, done, total)) if progress else None
        ranked = run_queries(retriever, dataset.queries, retrieve.mode, depth, tick, deep=deep)
        seconds = time.perf_counter() - t1
    ranked, identical_id_hits = drop_identical_ids(ranked, keep_identical_ids)
    metrics, curve, per_query = score(dataset.qrels, ranked)
    for qid, row in per_query.items():
        row["top10"] = ranked.get(qid, [])[:10]
    summary = _settings_summary(settings)
    return RunResult(
        name, retrieve.mode, summary, metrics, seconds, kb.name, ingest_seconds, curve, per_query, identical_id_hits
    )


def run_retrieval_eval(
    settings: Settings,
    dataset_dir: Path,
    split: str,
    configs: list[tuple[str, Settings]],
    out_dir: Path,
    progress: ProgressFn | None = None,
    keep_identical_ids: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Path:
    """Evaluate each named configuration and write the report folder (report.json, report.md,
    plots, per-query results).  Knowledge bases live in `settings`' data_dir whatever the
    configurations say, so every configuration with the same embedder and chunker shares one.

    `warn` hears the dataset's warnings (judged documents missing from the corpus) before the
    long part starts, so a user sees them while the scores can still be put in context."""
    from eval.report import write_report

    dataset = load_beir(dataset_dir, split)
    for message in dataset.warnings() if warn else []:
        warn(message)
    embedders: dict[str, Embedder] = {}
    results = []
    for name, cfg in configs:
        cfg = cfg.model_copy(update={"data_dir": settings.data_dir, "cache_dir": settings.cache_dir})
        results.append(evaluate_config(name, cfg, dataset, embedders, progress, keep_identical_ids))
    return write_report(out_dir, dataset, results, keep_identical_ids)
