"""`rag tune embedder`: a short real training run of the packaged MiniLM on a knowledge base's
questions, worded as the documents never word them, and what dense search then finds for pumps
it never trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.datasets import QAItem
from rag.tune.embedder import EmbedderConfig, train_embedder, triplets
from rag.tune.reranker import mine
from rag.tune.train import TrainError
from tests.conftest import qa_settings
from tests.hostile.conftest import rag
from tests.tune.conftest import pump_base

pytestmark = pytest.mark.slow

CITIES = ["Lyon", "Turin", "Porto", "Graz", "Ghent", "Brno", "Cork", "Bergen"]
PUMPS = range(24)
HELD_OUT = (20, 21, 22, 23)


def _docs() -> dict[str, dict[str, str]]:
    """Per pump, its service interval and two passages about the same pump that do not answer, one
    of them worded much as the questions are."""
    docs = {}
    for k in PUMPS:
        docs[f"s{k}"] = {"title": "", "text": f"Pump P{k} needs service every {3 + k % 9} months."}
        docs[f"o{k}"] = {
            "title": "",
            "text": f"Pump P{k} can keep running long and quietly; its next owner is in {CITIES[k % 8]}.",
        }
        docs[f"w{k}"] = {"title": "", "text": f"Pump P{k} weighs {40 + k} kilograms without water."}
    return docs


def _questions(pumps) -> list[QAItem]:
    """The site's own wording: nobody there says "service"."""
    return [
        QAItem(f"q{k}", f"How long can P{k} keep running before its next overhaul?", [f"{3 + k % 9} months"], [f"s{k}"])
        for k in pumps
    ]


@pytest.fixture(scope="module")
def pumps(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:
    return pump_base(tmp_path_factory, embedder, _docs(), _questions([k for k in PUMPS if k not in HELD_OUT]))


def _gold_ranks(data: Path, kb: str, model: str | None = None) -> list[int]:
    """Where each held-out question's service passage comes in dense search (1 = first)."""
    from rag.stack import retriever_for

    settings = qa_settings(data, **({"embed": {"model": model}} if model else {}))
    retriever = retriever_for(settings, kb)
    ranks = []
    for k in HELD_OUT:
        hits = retriever.search(_questions([k])[0].question, top_k=6, mode="dense").hits
        texts = [h.chunk.text for h in hits]
        ranks.append(next((i for i, t in enumerate(texts, 1) if f"P{k} needs service" in t), len(texts) + 1))
    return ranks


def test_triplets_pair_each_positive_with_the_highest_ranked_negatives(pumps: Path, embedder) -> None:
    from rag.stack import retriever_for

    mined = mine(_questions([1, 2]), retriever_for(qa_settings(pumps), "pumps", embedder=embedder), depth=5)
    made = triplets(mined.lists, negatives=2)
    assert len(made) == 4
    for question, positive, negative, _ in made:
        k = question.split(" P")[1].split(" ")[0]
        assert f"P{k} needs service" in positive and f"P{k} needs service" not in negative


def test_a_passage_that_answers_two_questions_of_a_batch_is_neither_ones_negative(pumps: Path, embedder) -> None:
    from rag.models import resolve_embedder
    from rag.stack import retriever_for
    from rag.tune.embedder import _Contrastive, _load_base, _TripletCollator

    same_pump = [*_questions([5, 6]), QAItem("q5b", "When is P5 due for its next overhaul?", ["8 months"], ["s5"])]
    mined = mine(same_pump, retriever_for(qa_settings(pumps), "pumps", embedder=embedder), depth=5)
    made = {t.question: t for t in triplets(mined.lists, negatives=1)}
    batch = [made[q.question] for q in same_pump]  # P5, P6, P5 again
    assert batch[0].positive == batch[2].positive != batch[1].positive
    model = _load_base(EmbedderConfig(out=Path("unused"), base=resolve_embedder(embedder.name)))
    inputs = _TripletCollator(model, "", "")(batch)
    assert inputs["relevant"].tolist() == [
        [False, False, True, False, False, False],
        [False] * 6,
        [True, False, False, False, False, False],
    ]
    loss = _Contrastive(model, 20.0)
    with torch.no_grad():
        masked = loss(**inputs)["loss"].item()
        unmasked = loss(**{**inputs, "relevant": torch.zeros_like(inputs["relevant"])})["loss"].item()
    # Unmasked, each pump-5 question also meets its own positive as a negative, at its positive's
    # score: at least log(1 + p) more loss for each, p being the positive's probability (here 0.2).
    assert unmasked - masked > 0.1, (unmasked, masked)


def test_a_short_training_lowers_the_loss_and_saves_a_folder_that_reloads_to_the_same_vectors(
    pumps: Path, embedder, tmp_path: Path
) -> None:
    from rag.config import EmbedSettings
    from rag.embed import Embedder
    from rag.models import resolve_embedder
    from rag.stack import retriever_for

    mined = mine(_questions(range(16)), retriever_for(qa_settings(pumps), "pumps", embedder=embedder), depth=5)
    out = tmp_path / "emb"
    config = EmbedderConfig(out=out, base=resolve_embedder(embedder.name), max_steps=10, batch_size=8, lr=1e-4)
    result = train_embedder(config, mined, {"qa": "generated"})
    assert result.steps == 10
    first, last = np.mean([x for _, x in result.losses[:3]]), np.mean([x for _, x in result.losses[-3:]])
    assert last < first, result.losses
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 10 and record["train_triplets"] == result.train_triplets > 0
    assert not (out / "checkpoints").exists()
    reloaded = Embedder(EmbedSettings(model=str(out)))
    texts = ["Pump P3 needs service every 6 months.", "How long can P3 keep running before its next overhaul?"]
    again = Embedder(EmbedSettings(model=str(out))).encode_passages(texts)
    assert np.allclose(reloaded.encode_passages(texts), again, atol=1e-6)
    assert not np.allclose(reloaded.encode_passages(texts), embedder.encode_passages(texts), atol=1e-3)
    with pytest.raises(TrainError, match="already holds a trained embedding model"):
        train_embedder(config, mined, {})


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_model(
    pumps: Path, embedder, tmp_path: Path
) -> None:
    from transformers import TrainerCallback

    from rag.config import EmbedSettings
    from rag.embed import Embedder
    from rag.models import resolve_embedder
    from rag.stack import retriever_for

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2:
                raise KeyboardInterrupt

    mined = mine(_questions(range(16)), retriever_for(qa_settings(pumps), "pumps", embedder=embedder), depth=5)

    def config(out: Path, **changes) -> EmbedderConfig:
        settings = {"max_steps": 4, "save_steps": 2, "batch_size": 4, "lr": 1e-4, **changes}
        return EmbedderConfig(out=out, base=resolve_embedder(embedder.name), **settings)

    straight = train_embedder(config(tmp_path / "straight"), mined, {})
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train_embedder(config(out), mined, {}, callbacks=[Interrupt()])
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "training.json").exists()
    with pytest.raises(TrainError, match="different lr"):
        train_embedder(config(out, lr=5e-4), mined, {})
    resumed = train_embedder(config(out), mined, {})
    assert resumed.resumed_from == "checkpoint-2" and resumed.steps == 4
    texts = [t for q in mined.lists for t in q.texts][:8]
    a = Embedder(EmbedSettings(model=str(straight.out))).encode_passages(texts)
    b = Embedder(EmbedSettings(model=str(out))).encode_passages(texts)
    assert np.allclose(a, b, atol=1e-5), "same seed, same model"


def test_rag_tune_embedder_then_a_new_base_ranks_unseen_pumps_answers_higher(pumps: Path, tmp_path: Path) -> None:
    out = tmp_path / "embedders" / "pumps"
    args = ["--kb", "pumps", "--qa", str(pumps.parent / "qa.jsonl"), "--out", str(out)]
    run = rag("tune", "embedder", *args, "--epochs", "4", "--lr", "1e-4", "--batch-size", "8", data=pumps)
    assert run.code == 0, run.text
    assert f"embedding model -> {out}" in run.out and f"RAG_EMBED__MODEL={out}" in run.out
    before = _gold_ranks(pumps, "pumps")

    tuned = {"RAG_EMBED__MODEL": str(out)}
    mismatch = rag("ask", "--kb", "pumps", "anything", data=pumps, **tuned)
    assert mismatch.code != 0 and "was built with embedding model" in mismatch.text, "old vectors are never mixed in"
    ingest = rag("ingest", str(pumps.parent / "corpus"), "--kb", "pumps-tuned", data=pumps, **tuned)
    assert ingest.code == 0, ingest.text
    after = _gold_ranks(pumps, "pumps-tuned", str(out))
    assert sum(after) < sum(before) and after.count(1) > before.count(1), (before, after)
