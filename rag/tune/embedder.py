"""The embedding model tuned on one knowledge base's questions: the dense retriever adapted to
the domain, trained on CPU in minutes.

Why this and not only the cross-encoder of `rag tune reranker`: no cross-encoder ships with its
weights through the package registries, so that one starts from the bi-encoder with a new,
untrained scoring head, and a few hundred questions do not teach it relevance (it moved SciFact
and NFCorpus test nDCG@10 by -0.0002 and +0.0001).  The bi-encoder already ranks by relevance;
tuning it only has to move it towards the domain's wording, which the same questions can do.

- **Data.** The lists `rag tune reranker` mines (rag.tune.reranker.mine): each question's gold
  passages as positives and the first-stage retriever's highest-ranked other passages as hard
  negatives.  Unanswerable questions have no positive and teach a bi-encoder nothing: skipped.
- **Loss.** Multiple negatives ranking (InfoNCE): each question against its own positive, its
  hard negatives, and every other passage of the batch, cosine scaled by `scale`.  A passage of
  the batch that the question's own labels call relevant is left out of its negatives: BEIR
  sets judge dozens of documents relevant to a question (NFCorpus: about 40), so another
  question's positive is often this one's too, and the plain loss would push it away.  The loop is
  the transformers Trainer's, so it is seeded, checkpointed and resumable like `rag tune train`.
- **Output.** A plain sentence-transformers folder with `training.json`.  Its vectors differ from
  the base's: a knowledge base is ingested again with `embed.model` set to it, under a new name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from rag.tune.reranker import Mined, QuestionList, run_fingerprint, run_record
from rag.tune.train import TRAINING_FILE, TrainError, prepare_checkpoints, publish, training_arguments


class Triplet(NamedTuple):
    question: str
    positive: str  # a passage that answers it
    negative: str  # a highly ranked passage that does not
    relevant: tuple[str, ...]  # passage_key of every passage it must never be trained away from


def passage_key(text: str) -> str:
    """Short and stable across runs, so the training data's digest (and resuming) holds."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class EmbedderConfig:
    out: Path
    base: str  # a sentence-transformers folder or hub id
    base_name: str | None = None
    negatives: int = 1
    positives: int = 1
    epochs: float = 3.0  # chosen on a SciFact dev split (README, "An embedding model tuned ...")
    lr: float = 3e-5
    max_steps: int | None = None
    batch_size: int = 32
    max_length: int = 256
    scale: float = 20.0  # cosine -> logit: sentence-transformers' default for this loss
    query_prefix: str = ""  # embed.query_prefix / passage_prefix: trained as they will be searched
    passage_prefix: str = ""
    warmup: float = 0.1
    save_steps: int = 50
    seed: int = 0

    def fingerprint(self, data_digest: str) -> dict[str, Any]:
        return run_fingerprint(self, data_digest)


@dataclass
class EmbedderResult:
    out: Path
    steps: int
    seconds: float
    train_triplets: int
    validation_triplets: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    validation_losses: list[tuple[float, float]] = field(default_factory=list)
    resumed_from: str | None = None


def triplets(lists: Sequence[QuestionList], negatives: int, positives: int = 1) -> list[Triplet]:
    """Each question's first `positives` positives (the retriever's order, then those it missed),
    each with the question's first `negatives` hard negatives.  A cap, because a BEIR question
    can have dozens of relevant documents (NFCorpus: 42 on average) and a chunk of each is gold."""
    out: list[Triplet] = []
    for q in lists:
        hard = q.hard_negatives(negatives)
        relevant = tuple(sorted({passage_key(t) for t in q.relevant()}))
        out.extend(Triplet(q.question, p, n, relevant) for p in q.positives()[:positives] for n in hard)
    return out


def train_embedder(
    config: EmbedderConfig, mined: Mined, source: dict[str, Any], callbacks: Sequence[Any] = ()
) -> EmbedderResult:
    """Train (or resume) and save to `config.out`; `source` is recorded in training.json."""
    from transformers import PrinterCallback, Trainer, set_seed

    started = time.perf_counter()
    train = triplets(mined.split("train"), config.negatives, config.positives)
    validation = triplets(mined.split("validation"), config.negatives, config.positives)
    if not train:
        raise TrainError("no question has both a passage that answers it and a hard negative to learn from")
    digest = hashlib.sha256(json.dumps([train, validation]).encode()).hexdigest()
    out = Path(config.out)
    resume = prepare_checkpoints(out, config.fingerprint(digest), TRAINING_FILE, "embedding model")
    set_seed(config.seed)
    model = _load_base(config)
    trainer = Trainer(
        model=_Contrastive(model, config.scale),
        args=training_arguments(config, out / "checkpoints", bool(validation), use_cpu=True),
        train_dataset=train,
        eval_dataset=validation or None,
        data_collator=_TripletCollator(model, config.query_prefix, config.passage_prefix),
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    model.eval()
    history = trainer.state.log_history
    result = EmbedderResult(
        out=out,
        steps=trainer.state.global_step,
        seconds=round(time.perf_counter() - started, 1),
        train_triplets=len(train),
        validation_triplets=len(validation),
        losses=[(h["step"], h["loss"]) for h in history if "loss" in h],
        validation_losses=[(round(h["epoch"], 2), h["eval_loss"]) for h in history if "eval_loss" in h],
        resumed_from=resume.name if resume else None,
    )
    _save(model, config, result, mined, source, digest)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return result


def _load_base(config: EmbedderConfig) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(config.base, device="cpu")
    model.max_seq_length = min(config.max_length, model.max_seq_length or config.max_length)
    return model


class _TripletCollator:
    """Tokenizes questions, positives and negatives the way rag.embed.Embedder encodes them (its
    prefixes, then `SentenceTransformer.preprocess`), so training and search see the same inputs
    and the same truncation."""

    def __init__(self, model: Any, query_prefix: str, passage_prefix: str) -> None:
        self.model, self.query_prefix, self.passage_prefix = model, query_prefix, passage_prefix

    def __call__(self, batch: list[Triplet]) -> dict[str, Any]:
        passages = [t.positive for t in batch] + [t.negative for t in batch]
        return {
            "questions": self.model.preprocess([self.query_prefix + t.question for t in batch]),
            "passages": self.model.preprocess([self.passage_prefix + p for p in passages]),
            # The Trainer reports a validation loss only for batches that carry labels: row i's
            # passage is column i (its positive); the negatives are the columns after the batch.
            "labels": torch.arange(len(batch)),
            "relevant": _relevant_elsewhere(batch, passages),
        }


def _relevant_elsewhere(batch: list[Triplet], passages: list[str]) -> torch.Tensor:
    """[question, passage]: True where a passage other than the question's own positive is one
    its labels call relevant (another question's positive, or a copy of its own).

    Hand-written because sentence-transformers' in-batch losses know nothing of labels: they
    count every other passage of the batch as a negative (GISTEmbedLoss guesses false negatives
    with a second model; here the questions' own judgements say which they are)."""
    keys = [passage_key(p) for p in passages]
    relevant = [set(t.relevant) for t in batch]
    return torch.tensor([[j != i and key in rel for j, key in enumerate(keys)] for i, rel in enumerate(relevant)])


class _Contrastive(torch.nn.Module):
    """The model with its loss, as the Trainer wants it: forward(batch) -> {"loss": ...}."""

    def __init__(self, model: Any, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(
        self, questions: dict, passages: dict, labels: torch.Tensor, relevant: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        q = torch.nn.functional.normalize(self.model(questions)["sentence_embedding"], dim=-1)
        p = torch.nn.functional.normalize(self.model(passages)["sentence_embedding"], dim=-1)
        scores = (self.scale * q @ p.T).masked_fill(relevant, float("-inf"))
        return {"loss": torch.nn.functional.cross_entropy(scores, labels)}


def _save(
    model: Any, config: EmbedderConfig, result: EmbedderResult, mined: Mined, source: dict[str, Any], digest: str
) -> None:
    """The model, then training.json (rag.tune.train.publish)."""
    counts = {"train_triplets": result.train_triplets, "validation_triplets": result.validation_triplets}
    record = run_record(config, result, mined, source, digest, **counts)
    publish(Path(config.out), lambda folder: model.save(str(folder)), record)
