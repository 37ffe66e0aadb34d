"""A cross-encoder tuned on one knowledge base: hard negatives mined with the project's own
retriever, trained on CPU in minutes, and calibrated to say "not found".

- **Lists.** Each question is searched the way `rag ask` searches (hybrid, fused, no reranker)
  down to `retrieve.rerank_candidates`, which is the list the reranker will reorder at query time.
  A passage is labelled 1 when it comes from a gold document (and, when the QA set has answers,
  holds one), 0 otherwise; a passage that holds an answer outside the gold documents is left
  unlabelled.  Every passage of an unanswerable question is a 0, its on-topic gold paragraph
  included: that is what teaches "on topic" from "answers".
- **Training.** Binary cross-entropy on (question, passage) pairs: each question's positives (added
  when the retriever missed them) and its highest-ranked negatives.  The model is the packaged
  MiniLM-L6 with a new scoring head unless `base` names another; the loop is the transformers
  Trainer's, so it is seeded, checkpointed and resumable like `rag tune train`.
- **Calibration.** On the validation questions, the best passage's score in each list: lists
  holding a positive must clear the threshold, lists without one (unanswerable questions, and
  each answerable question's list with its positives taken out) must not.  The threshold is the
  one that separates them best (largest true-found minus false-found rate), saved beside the
  weights in `answerability.json` for `retrieve.answer_gate`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval.answers import contains
from eval.datasets import QAItem
from rag.reranker import Calibration, Reranker, write_calibration
from rag.retrieve import Retriever
from rag.tune.data import GoldIndex, validation_ids
from rag.tune.train import TRAINING_FILE, TrainError, prepare_checkpoints, publish, training_arguments

POSITIVE, NEGATIVE, UNLABELLED = 1, 0, -1


@dataclass
class QuestionList:
    """One question's passages as the retriever ranks them, labelled; `extra` are positives the
    retriever missed (trained on, but not part of the list the gate will see)."""

    qa_id: str
    question: str
    split: str  # "train" or "validation"
    texts: list[str]
    labels: list[int]
    extra: list[str] = field(default_factory=list)

    def positives(self) -> list[str]:
        """In the retriever's order, then those it missed."""
        return [t for t, y in zip(self.texts, self.labels, strict=True) if y == POSITIVE] + self.extra

    def hard_negatives(self, most: int) -> list[str]:
        """The `most` highest-ranked negatives."""
        return [t for t, y in zip(self.texts, self.labels, strict=True) if y == NEGATIVE][:most]

    def relevant(self) -> list[str]:
        """Every passage known not to be a negative: the positives, and the unlabelled (the rest
        of a gold document, or an answer outside the gold documents)."""
        return [t for t, y in zip(self.texts, self.labels, strict=True) if y != NEGATIVE] + self.extra

    def pairs(self, negatives: int) -> list[tuple[str, str, float]]:
        return [(self.question, t, 1.0) for t in self.positives()] + [
            (self.question, t, 0.0) for t in self.hard_negatives(negatives)
        ]


@dataclass
class Mined:
    lists: list[QuestionList]
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> questions

    def split(self, name: str) -> list[QuestionList]:
        return [q for q in self.lists if q.split == name]


def mine(
    items: Sequence[QAItem],
    retriever: Retriever,
    *,
    depth: int,
    validation: float = 0.1,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Mined:
    """Each question's labelled list (`retriever` must not rerank: its lists are what is learnt)."""
    if retriever.settings.rerank_model:
        raise TrainError("mining needs the first-stage retriever: unset retrieve.rerank_model")
    golds = GoldIndex(retriever.kb)
    held_out = validation_ids([it.id for it in items], validation, seed)
    mined = Mined([])
    for i, item in enumerate(items, start=1):
        made = _list_for(item, retriever, golds, depth, "validation" if item.id in held_out else "train")
        if isinstance(made, str):
            mined.skipped[made] += 1
        else:
            mined.lists.append(made)
        if progress:
            progress(i, len(items))
    return mined


def _list_for(item: QAItem, retriever: Retriever, golds: GoldIndex, depth: int, split: str) -> QuestionList | str:
    hits = retriever.search(item.question, top_k=depth).hits
    gold = golds.chunks(item.gold_doc_ids)
    if item.gold_doc_ids and not gold:
        return "gold document not in the knowledge base"
    gold_docs = {c.doc_id for c in gold}
    if not item.answerable:
        return QuestionList(item.id, item.question, split, [h.chunk.text for h in hits], [NEGATIVE] * len(hits))
    pool = gold or [h.chunk for h in hits]
    positives = [c for c in pool if not item.answers or contains(c.text, item.answers)]
    if not positives:
        return "no passage of the gold documents holds the answer"
    positive_ids = {c.chunk_id for c in positives}
    labels = []
    for h in hits:
        if h.chunk.chunk_id in positive_ids:
            labels.append(POSITIVE)
        elif h.chunk.doc_id in gold_docs or (item.answers and contains(h.chunk.text, item.answers)):
            labels.append(UNLABELLED)  # part of a gold document, or an answer elsewhere: no lesson either way
        else:
            labels.append(NEGATIVE)
    found = {h.chunk.chunk_id for h in hits}
    extra = [c.text for c in positives if c.chunk_id not in found]
    return QuestionList(item.id, item.question, split, [h.chunk.text for h in hits], labels, extra)


# ---- training ------------------------------------------------------------------------------
@dataclass
class RerankerConfig:
    out: Path
    base: str  # a CrossEncoder or SentenceTransformer folder or hub id
    base_name: str | None = None
    negatives: int = 7
    epochs: float = 1.0
    lr: float = 3e-5
    max_steps: int | None = None
    batch_size: int = 16
    max_length: int = 256
    warmup: float = 0.1
    save_steps: int = 100
    seed: int = 0

    def fingerprint(self, data_digest: str) -> dict[str, Any]:
        return run_fingerprint(self, data_digest)


def run_fingerprint(config: Any, data_digest: str) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: every setting but the output folder, and
    the data."""
    keys = asdict(config)
    keys.pop("out")
    return {**keys, "data_sha256": data_digest}


@dataclass
class RerankerResult:
    out: Path
    steps: int
    seconds: float
    train_pairs: int
    validation_pairs: int
    calibration: Calibration
    losses: list[tuple[int, float]] = field(default_factory=list)
    validation_losses: list[tuple[float, float]] = field(default_factory=list)
    resumed_from: str | None = None
    reranker: Reranker | None = None


def train_reranker(
    config: RerankerConfig, mined: Mined, source: dict[str, Any], callbacks: Sequence[Any] = ()
) -> RerankerResult:
    """Train (or resume), calibrate and save to `config.out`; `source` is recorded in training.json."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import PrinterCallback, Trainer, set_seed

    started = time.perf_counter()
    train_pairs = [p for q in mined.split("train") for p in q.pairs(config.negatives)]
    val_pairs = [p for q in mined.split("validation") for p in q.pairs(config.negatives)]
    if not train_pairs or not any(y for _, _, y in train_pairs) or all(y for _, _, y in train_pairs):
        raise TrainError("training needs both passages that answer and passages that do not; the lists held one kind")
    digest = hashlib.sha256(json.dumps([train_pairs, val_pairs]).encode()).hexdigest()
    out = Path(config.out)
    resume = prepare_checkpoints(out, config.fingerprint(digest), TRAINING_FILE, "reranker")
    set_seed(config.seed)
    model = _load_base(CrossEncoder, config)
    positives = sum(1 for *_, y in train_pairs if y)
    weight = torch.tensor((len(train_pairs) - positives) / positives)
    trainer = Trainer(
        model=model.model,
        args=_arguments(config, out / "checkpoints", bool(val_pairs)),
        train_dataset=_as_features(train_pairs),
        eval_dataset=_as_features(val_pairs) or None,
        data_collator=_PairCollator(model.tokenizer, config.max_length),
        compute_loss_func=lambda outputs, labels, num_items_in_batch=None: _bce(outputs, labels, weight),
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    model.model.eval()
    reranker = Reranker(model, None, str(out))
    calibration = calibrate(reranker, mined)
    reranker.calibration = calibration
    history = trainer.state.log_history
    result = RerankerResult(
        out=out,
        steps=trainer.state.global_step,
        seconds=round(time.perf_counter() - started, 1),
        train_pairs=len(train_pairs),
        validation_pairs=len(val_pairs),
        calibration=calibration,
        losses=[(h["step"], h["loss"]) for h in history if "loss" in h],
        validation_losses=[(round(h["epoch"], 2), h["eval_loss"]) for h in history if "eval_loss" in h],
        resumed_from=resume.name if resume else None,
        reranker=reranker,
    )
    _save(model, config, result, mined, source, digest)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return result


def _load_base(cross_encoder: Any, config: RerankerConfig) -> Any:
    """The base as a cross-encoder; a sentence-transformers (bi-encoder) base gets a new scoring
    head, which is what training is for, so the libraries' report of its missing weights is hushed."""
    import logging

    from transformers.utils import logging as hf_logging

    st_log = logging.getLogger("sentence_transformers")
    level, hf_level = st_log.level, hf_logging.get_verbosity()
    st_log.setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    try:
        return cross_encoder(config.base, num_labels=1, max_length=config.max_length, device="cpu")
    finally:
        st_log.setLevel(level)
        hf_logging.set_verbosity(hf_level)


def _as_features(pairs: list[tuple[str, str, float]]) -> list[dict[str, Any]]:
    return [{"query": q, "passage": p, "label": y} for q, p, y in pairs]


class _PairCollator:
    """Tokenizes a batch the way CrossEncoder.predict does (both texts, truncated together), so
    training and scoring see the same inputs."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.tokenizer(
            [f["query"] for f in features],
            [f["passage"] for f in features],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.float32)
        return dict(batch)


def _bce(outputs: Any, labels: Any, pos_weight: Any) -> Any:
    """Positives weighted up to the negatives' number: the score stays a balanced probability."""
    import torch

    logits = outputs["logits"].view(-1)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.view(-1), pos_weight=pos_weight)


def _arguments(config: RerankerConfig, checkpoints: Path, validate: bool) -> Any:
    return training_arguments(
        config, checkpoints, validate, per_device_eval_batch_size=config.batch_size * 2, use_cpu=True
    )


# ---- calibration ---------------------------------------------------------------------------
def best_scores(reranker: Reranker, lists: Sequence[QuestionList]) -> tuple[list[float], list[float]]:
    """(best score of each list holding a positive, best score of each list without one)."""
    answered: list[float] = []
    unanswered: list[float] = []
    for q in lists:
        if not q.texts:  # nothing retrieved: "not found" whatever the threshold
            continue
        scores = reranker.score(q.question, q.texts)
        labels = np.asarray(q.labels)
        if (labels == POSITIVE).any():
            answered.append(float(scores.max()))
        rest = scores[labels == NEGATIVE]
        if rest.size:  # the list with its answers (and unlabelled passages) taken out
            unanswered.append(float(rest.max()))
    return answered, unanswered


def threshold_for(answered: Sequence[float], unanswered: Sequence[float]) -> tuple[float, float]:
    """The threshold that maximises (answered lists at or above it) - (unanswered ones at or
    above it), halfway between two neighbouring scores; and that difference."""
    if not answered or not unanswered:
        raise TrainError("calibration needs questions with and without an answering passage in their list")
    pos, neg = np.sort(np.asarray(answered)), np.sort(np.asarray(unanswered))
    scores = np.unique(np.concatenate([pos, neg]))
    cuts = np.concatenate([[scores[0] - 1e-6], (scores[:-1] + scores[1:]) / 2, [scores[-1] + 1e-6]])
    found_right = 1 - np.searchsorted(pos, cuts, side="left") / len(pos)
    found_wrong = 1 - np.searchsorted(neg, cuts, side="left") / len(neg)
    gap = found_right - found_wrong
    best = int(np.argmax(gap))
    return float(cuts[best]), float(gap[best])


def calibrate(reranker: Reranker, mined: Mined) -> Calibration:
    lists, measured_on = mined.split("validation"), "validation"
    answered, unanswered = best_scores(reranker, lists)
    if not answered or not unanswered:  # too few questions to hold any out: the training ones
        lists, measured_on = mined.lists, "train"
        answered, unanswered = best_scores(reranker, lists)
    threshold, gap = threshold_for(answered, unanswered)
    depth = max((len(q.texts) for q in mined.lists), default=0)
    return Calibration(round(threshold, 6), depth, round(gap, 4), measured_on)


# ---- saving --------------------------------------------------------------------------------
def run_record(config: Any, result: Any, mined: Mined, source: dict[str, Any], digest: str, **counts: Any) -> dict:
    """training.json of a model trained on mined lists: where the data came from, the settings,
    and how the run went."""
    return {
        "base": config.base_name or config.base,
        "source": source,
        "questions": {s: len(mined.split(s)) for s in ("train", "validation")},
        "skipped": dict(mined.skipped),
        "data_sha256": digest,
        **{k: v for k, v in config.fingerprint(digest).items() if k not in ("base", "base_name", "data_sha256")},
        "steps": result.steps,
        "seconds": result.seconds,
        **counts,
        "final_train_loss": result.losses[-1][1] if result.losses else None,
        "losses": result.losses,
        "validation_losses": result.validation_losses,
    }


def _save(
    model: Any, config: RerankerConfig, result: RerankerResult, mined: Mined, source: dict[str, Any], digest: str
) -> None:
    """Weights, calibration, then training.json last: once it is there, the folder is complete."""
    counts = {"train_pairs": result.train_pairs, "validation_pairs": result.validation_pairs}
    record = run_record(config, result, mined, source, digest, **counts)
    record["calibration"] = result.calibration.to_json()

    def write(folder: Path) -> None:
        model.save_pretrained(str(folder))
        write_calibration(folder, result.calibration)

    publish(Path(config.out), write, record)
