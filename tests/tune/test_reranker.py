"""`rag tune reranker`: hard negatives from the project's own retriever, a short real training run
of the packaged MiniLM as a cross-encoder, its calibration, and the "not found" it then decides
for questions whose passages are on topic but hold no answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval.datasets import QAItem
from rag.reranker import Reranker, read_calibration
from rag.tune.reranker import NEGATIVE, POSITIVE, RerankerConfig, mine, threshold_for, train_reranker
from rag.tune.train import TrainError
from tests.conftest import qa_settings
from tests.hostile.conftest import rag
from tests.tune.conftest import pump_base

pytestmark = pytest.mark.slow

CITIES = ["Lyon", "Turin", "Porto", "Graz", "Ghent", "Brno", "Cork", "Bergen"]
PUMPS = range(24)
HELD_OUT = (21, 22, 23)  # never trained on: what `rag ask` is asked about


def _docs() -> dict[str, dict[str, str]]:
    """Two documents per pump: its service interval, and where it was built (on topic, but no
    answer to how often it needs service or what colour it is)."""
    docs = {}
    for k in PUMPS:
        docs[f"s{k}"] = {"title": f"Pump P{k} service", "text": f"Pump P{k} needs service every {3 + k % 9} months."}
        docs[f"o{k}"] = {"title": f"Pump P{k} origin", "text": f"Pump P{k} was built in {CITIES[k % 8]}."}
    return docs


def _questions(pumps) -> list[QAItem]:
    items = []
    for k in pumps:
        items.append(QAItem(f"a{k}", f"How often does pump P{k} need service?", [f"{3 + k % 9} months"], [f"s{k}"]))
        items.append(QAItem(f"u{k}", f"What colour is pump P{k} painted?", [], [f"o{k}"], answerable=False))
    return items


@pytest.fixture(scope="module")
def pumps(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:
    return pump_base(tmp_path_factory, embedder, _docs(), _questions([k for k in PUMPS if k not in HELD_OUT]))


def _retriever(data: Path, embedder):
    from rag.stack import retriever_for

    return retriever_for(qa_settings(data), "pumps", embedder=embedder)


def test_hard_negatives_are_the_retrievers_high_ranked_passages_and_never_gold(pumps: Path, embedder) -> None:
    retriever = _retriever(pumps, embedder)
    mined = mine(_questions([1, 2, 3]), retriever, depth=6, validation=0.0)
    by_id = {q.qa_id: q for q in mined.lists}
    assert set(by_id) == {"a1", "a2", "a3", "u1", "u2", "u3"} and not mined.skipped
    for k in (1, 2, 3):
        answered = by_id[f"a{k}"]
        positives = [t for t, y in zip(answered.texts, answered.labels, strict=True) if y == POSITIVE]
        assert positives and all(f"P{k} needs service" in t for t in positives)
        negatives = [t for t, y in zip(answered.texts, answered.labels, strict=True) if y == NEGATIVE]
        assert negatives and not any(f"P{k} needs service" in t for t in negatives), "gold is never a negative"
        assert answered.texts == [h.chunk.text for h in retriever.search(answered.question, top_k=6).hits]
        hard = [passage for _, passage, label in answered.pairs(2) if label == 0.0]
        assert hard == negatives[:2], "the negatives trained on are the highest-ranked ones"
        unanswerable = by_id[f"u{k}"]
        assert set(unanswerable.labels) == {NEGATIVE}, "every passage of an unanswerable question is a negative"
        assert any(f"P{k} was built" in t for t in unanswerable.texts), "its on-topic gold paragraph among them"


def test_the_threshold_separates_answered_lists_from_the_others_best() -> None:
    threshold, gap = threshold_for([0.9, 0.8, 0.7, 0.2], [0.1, 0.3, 0.6])
    assert 0.6 < threshold < 0.7 and gap == pytest.approx(0.75)
    with pytest.raises(TrainError, match="with and without"):
        threshold_for([0.9], [])


def test_a_short_training_lowers_the_loss_saves_a_calibrated_model_that_reloads_to_identical_scores(
    pumps: Path, embedder, tmp_path: Path
) -> None:
    mined = mine(_questions(range(8)), _retriever(pumps, embedder), depth=6, validation=0.25, seed=0)
    config = RerankerConfig(out=tmp_path / "rr", base=_minilm(), max_steps=12, batch_size=8, lr=1e-4, max_length=64)
    result = train_reranker(config, mined, {"qa": "generated"})
    assert result.steps == 12
    first, last = np.mean([x for _, x in result.losses[:3]]), np.mean([x for _, x in result.losses[-3:]])
    assert last < first, result.losses
    record = json.loads((tmp_path / "rr" / "training.json").read_text())
    assert record["steps"] == 12 and record["questions"] == {"train": 12, "validation": 4} and record["seconds"] > 0
    assert read_calibration(tmp_path / "rr") == result.calibration, "the calibration round-trips"
    assert result.calibration.measured_on == "validation" and result.calibration.candidates == 6
    pairs = [(q.question, t) for q in mined.lists for t in q.texts]
    reloaded = Reranker.load(str(tmp_path / "rr"))
    assert reloaded.calibration == result.calibration
    for question, text in pairs[:12]:
        assert reloaded.score(question, [text]) == pytest.approx(result.reranker.score(question, [text]), abs=1e-6)
    with pytest.raises(TrainError, match="already holds a trained reranker"):
        train_reranker(config, mined, {})


def test_rag_tune_reranker_then_rag_ask_says_not_found_for_an_on_topic_passage_without_the_answer(
    pumps: Path, embedder, tmp_path: Path
) -> None:
    out = tmp_path / "rerankers" / "pumps"
    args = ["--kb", "pumps", "--qa", str(pumps.parent / "qa.jsonl"), "--out", str(out), "--max-length", "64"]
    run = rag("tune", "reranker", *args, "--epochs", "3", "--lr", "1e-4", "--batch-size", "8", data=pumps)
    assert run.code == 0, run.text
    assert f"reranker -> {out}" in run.out and '"not found" below a best-passage score of' in run.out
    calibration = read_calibration(out)
    assert calibration is not None and calibration.discrimination >= 0.5, calibration

    colour, service = "What colour is pump P22 painted?", "How often does pump P22 need service?"
    assert _retriever(pumps, embedder).search(colour).found, "the relevance gate lets the on-topic passage through"
    tuned = {"RAG_RETRIEVE__RERANK_MODEL": str(out), "RAG_LLM__MAX_NEW_TOKENS": "8"}
    refused = rag("ask", "--kb", "pumps", "--json", colour, data=pumps, **tuned)
    assert refused.code == 0 and json.loads(refused.out)["found"] is False, refused.text
    answered = json.loads(rag("ask", "--kb", "pumps", "--json", service, data=pumps, **tuned).out)
    assert answered["found"] and any("P22 needs service" in h["text"] for h in answered["retrieved"]), answered


def _minilm() -> str:
    from rag.models import resolve_embedder

    return resolve_embedder("sentence-transformers/all-MiniLM-L6-v2")
