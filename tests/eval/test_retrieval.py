"""Retrieval evaluation: metric values against hand-computed cases, document-level aggregation,
and real runs (a generated corpus always; a slice of SciFact when ../shared is there)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from eval.datasets import load_beir
from eval.retrieval import (
    DOC_DEPTH,
    best_per_document,
    drop_identical_ids,
    eval_kb_name,
    evaluate_config,
    run_retrieval_eval,
    score,
)
from tests.conftest import shared_path
from tests.fixtures.beir import ARGUMENTS, write_beir, write_beir_self_queries


def test_metrics_match_hand_computed_values() -> None:
    qrels = {"q1": {"a": 1, "b": 2}, "q2": {"c": 1}}
    ranked = {"q1": ["a", "x", "b"], "q2": ["y", "z", "c"]}
    metrics, curve, per_query = score(qrels, ranked)
    # q1: DCG = 1/log2(2) + 2/log2(4) = 2; ideal = 2/log2(2) + 1/log2(3)
    ndcg_q1 = 2 / (2 + 1 / math.log2(3))
    ndcg_q2 = (1 / math.log2(4)) / 1
    assert per_query["q1"]["ndcg@10"] == pytest.approx(ndcg_q1, abs=1e-4)
    assert metrics["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-4)
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 3) / 2, abs=1e-4)
    # AP q1 = (1/1 + 2/3) / 2; q2 = (1/3) / 1
    assert metrics["map@100"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2, abs=1e-4)
    assert metrics["recall@10"] == 1.0
    assert curve[1] == pytest.approx(0.25)  # q1 finds 1 of 2 at rank 1, q2 none
    assert curve[3] == 1.0


def test_a_query_with_no_results_scores_zero_not_an_error() -> None:
    metrics, _, per_query = score({"q1": {"a": 1}, "q2": {"b": 1}}, {"q1": ["a"], "q2": []})
    assert per_query["q2"]["ndcg@10"] == 0.0
    assert metrics["recall@10"] == 0.5


def test_judged_documents_missing_from_the_corpus_count_as_misses_like_beir() -> None:
    # q1 finds d1 but can never find "ghost"; q3 judges only a missing document.  BEIR's
    # EvaluateRetrieval.evaluate (pytrec_eval) on this input: NDCG@10 0.53772, Recall@10 0.5.
    qrels = {"q1": {"d1": 1, "ghost": 1}, "q2": {"d2": 1}, "q3": {"ghost2": 1}}
    metrics, _, per_query = score(qrels, {"q1": ["d1", "x"], "q2": ["d2"], "q3": ["d3"]})
    ndcg_q1 = 1 / (1 + 1 / math.log2(3))  # ideal DCG counts the missing document
    assert per_query["q1"]["ndcg@10"] == pytest.approx(ndcg_q1, abs=1e-4)
    assert per_query["q3"]["ndcg@10"] == 0.0
    assert metrics["ndcg@10"] == pytest.approx(0.53772, abs=1e-4)
    assert metrics["recall@10"] == pytest.approx(0.5)


def test_the_query_itself_leaves_its_ranking_before_the_depth_cut() -> None:
    # As BEIR's searchers do (top_k + 1 fetched, the query's id skipped): DOC_DEPTH others remain.
    others = [f"d{i}" for i in range(DOC_DEPTH)]
    ranked = {"q1": ["d0", "q1", *others[1:]], "q2": [*others, "extra"]}
    kept, removed = drop_identical_ids(ranked, keep=False)
    assert kept == {"q1": others, "q2": others} and removed == 1
    kept, held = drop_identical_ids(ranked, keep=True)
    assert kept["q1"] == ["d0", "q1", *others[1 : DOC_DEPTH - 1]] and len(kept["q2"]) == DOC_DEPTH and held == 1


def test_a_document_ranks_at_its_best_chunk() -> None:
    # chunks of d2 at ranks 1 and 3, d1 at 2: documents d2, d1, then d3
    assert best_per_document(["d2", "d1", "d2", "d3", "d1"]) == ["d2", "d1", "d3"]


def test_kb_name_depends_on_what_changes_the_vectors_only(tmp_path: Path, settings) -> None:
    ds = load_beir(write_beir(tmp_path / "mini"))
    base = eval_kb_name(ds, settings)
    hybrid_rrf = settings.model_copy(update={"retrieve": settings.retrieve.model_copy(update={"fusion": "zscore"})})
    whole = settings.model_copy(update={"chunk": settings.chunk.model_copy(update={"method": "page"})})
    assert eval_kb_name(ds, hybrid_rrf) == base
    assert eval_kb_name(ds, whole) != base
    assert base.startswith("eval-mini-")
    # flat and HNSW bases of one corpus coexist, so the two can be compared in one report
    hnsw = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"dense_index": "hnsw"})})
    flat = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"dense_index": "flat"})})
    assert eval_kb_name(ds, hnsw) != base and eval_kb_name(ds, flat) == base


@pytest.mark.slow
def test_generated_corpus_end_to_end(tmp_path: Path, settings, embedder) -> None:
    root = write_beir(tmp_path / "mini")
    configs = [
        (m, settings.model_copy(update={"retrieve": settings.retrieve.model_copy(update={"mode": m})}))
        for m in ("dense", "bm25", "hybrid")
    ]
    out = run_retrieval_eval(settings, root, "test", configs, tmp_path / "report")
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["dense", "bm25", "hybrid"]
    for run in report["runs"]:
        assert run["metrics"]["ndcg@10"] == pytest.approx(1.0), run  # every query's answer is unmistakable
        assert run["seconds"] > 0
    per_query = json.loads((out / "runs" / "hybrid.json").read_text())
    # d5copy is stored once, as a duplicate of d5: a hit on the text is a hit on both ids.
    assert per_query["q3"]["top10"][:2] == ["d5", "d5copy"]
    # The second run finds the corpus already ingested: nothing re-embedded.
    again = run_retrieval_eval(settings, root, "test", configs[:1], tmp_path / "report2")
    assert json.loads((again / "report.json").read_text())["runs"][0]["ingest_seconds"] < 5


@pytest.mark.slow
def test_queries_that_are_documents_never_find_themselves(tmp_path: Path, settings, embedder) -> None:
    """ArguAna-shaped: each query is a corpus document and judges its counter-argument.  With
    BEIR's default the counter-argument is first (every metric 1); kept, the query's own document
    takes rank 1 and the answer rank 2: nDCG@10 = 1/log2(3), MRR@10 = MAP = 1/2."""
    dataset = load_beir(write_beir_self_queries(tmp_path / "args"))
    embedders = {settings.embed.model_dump_json(): embedder}
    modes = ("dense", "bm25", "hybrid")
    for mode in modes:
        cfg = settings.model_copy(update={"retrieve": settings.retrieve.model_copy(update={"mode": mode})})
        result = evaluate_config(mode, cfg, dataset, embedders)
        for qid, row in result.per_query.items():
            assert qid not in row["top10"] and row["top10"][0] == qid.replace("-pro", "-con"), (mode, row)
        assert result.metrics == {"ndcg@10": 1.0, "recall@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0, "map@100": 1.0}
        assert result.identical_id_hits == len(ARGUMENTS)  # removed from every query's ranking

        kept = evaluate_config(mode, cfg, dataset, embedders, keep_identical_ids=True)
        assert all(row["top10"][:2] == [q, q.replace("-pro", "-con")] for q, row in kept.per_query.items()), mode
        assert kept.metrics["ndcg@10"] == pytest.approx(1 / math.log2(3), abs=1e-4)
        assert kept.metrics["mrr@10"] == kept.metrics["map@100"] == 0.5 and kept.metrics["recall@10"] == 1.0
        assert kept.identical_id_hits == len(ARGUMENTS)


@pytest.mark.slow
@pytest.mark.shared
def test_scifact_slice_scores_like_the_full_benchmark(tmp_path: Path, settings) -> None:
    """30 test queries against their judged documents plus 250 distractors: real queries, real
    abstracts, the shipped hybrid default; the scores must be in SciFact's range, not broken."""
    src = shared_path("beir", "scifact")
    root = _slice(src, tmp_path / "scifact-slice", n_queries=30, n_distractors=250)
    cfg = [
        ("hybrid", settings),
        ("bm25", settings.model_copy(update={"retrieve": settings.retrieve.model_copy(update={"mode": "bm25"})})),
    ]
    out = run_retrieval_eval(settings, root, "test", cfg, tmp_path / "report")
    runs = {r["name"]: r["metrics"] for r in json.loads((out / "report.json").read_text())["runs"]}
    assert runs["hybrid"]["ndcg@10"] > 0.7
    assert runs["hybrid"]["recall@100"] > 0.9
    assert runs["bm25"]["ndcg@10"] > 0.6
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _slice(src: Path, dst: Path, n_queries: int, n_distractors: int) -> Path:
    (dst / "qrels").mkdir(parents=True)
    lines = (src / "qrels" / "test.tsv").read_text().splitlines()
    qrels: dict[str, list[str]] = {}
    for line in lines[1:]:
        q, d, _ = line.split("\t")
        qrels.setdefault(q, []).append(d)
    keep_q = sorted(qrels)[:n_queries]
    keep_d = {d for q in keep_q for d in qrels[q]}
    docs = [json.loads(line) for line in (src / "corpus.jsonl").open()]
    distractors = [d["_id"] for d in docs if d["_id"] not in keep_d][:n_distractors]
    keep_d |= set(distractors)
    with (dst / "corpus.jsonl").open("w") as fh:
        fh.writelines(json.dumps(d) + "\n" for d in docs if d["_id"] in keep_d)
    queries = [json.loads(line) for line in (src / "queries.jsonl").open()]
    with (dst / "queries.jsonl").open("w") as fh:
        fh.writelines(json.dumps(q) + "\n" for q in queries if q["_id"] in keep_q)
    rows = [lines[0]] + [line for line in lines[1:] if line.split("\t")[0] in keep_q]
    (dst / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return dst
