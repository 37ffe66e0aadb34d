"""Retrieval-augmented training examples (SFT, chat format) from a knowledge base and a QA set.

Each example is what `rag ask` would show the model: the question and numbered context blocks
built by `rag.prompts.answer_messages` (the very function the answering path calls, so training
matches inference), followed by the answer the model should give:

- ``answer``: the gold chunk(s) shuffled among distractors retrieved from the same base for the
  same question (hard negatives); the target is the gold answer citing its block, like ``Rollo [3]``;
- ``unanswerable``: a question the documents do not answer (SQuAD 2.0 style: its gold passage
  is on topic but lacks the answer), shown with that passage and distractors; the target is the
  "not found" sentence;
- ``no_gold``: an answerable question shown with distractors only; the target is "not found".

Small instruct models almost never refuse and are easily distracted; these three kinds are what
teach them to answer from the right block, cite it, and refuse when no block holds the answer.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.answers import contains
from eval.datasets import DatasetError, QAItem, doc_id_of, read_jsonl
from rag.jsonfile import write_jsonl
from rag.lexical import language
from rag.prompts import NOT_FOUND, answer_messages
from rag.retrieve import Hit, Retriever
from rag.store import Store
from rag.types import Chunk

KINDS = ("answer", "unanswerable", "no_gold")
REFUSALS = ("unanswerable", "no_gold")  # kinds whose target is the "not found" sentence
SPLITS = ("train", "validation")


class SFTDataError(ValueError):
    """A training-data file is missing or malformed; the message names the file and line."""


@dataclass
class Example:
    id: str
    qa_id: str
    kind: str  # one of KINDS
    split: str  # one of SPLITS
    messages: list[dict[str, str]]  # system, user (sources + question), assistant (the target)
    gold_blocks: list[int] = field(default_factory=list)  # 1-based numbers of the gold blocks shown

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "qa_id": self.qa_id,
            "kind": self.kind,
            "split": self.split,
            "gold_blocks": self.gold_blocks,
            "messages": self.messages,
        }


@dataclass
class BuildResult:
    examples: list[Example]
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> questions skipped for it
    dropped: int = 0  # refusal examples left out to honour `max_refusals`

    def counts(self) -> dict[str, Counter[str]]:
        """split -> kind -> number of examples."""
        out: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
        for ex in self.examples:
            out[ex.split][ex.kind] += 1
        return out


class GoldIndex:
    """Finds a QA item's gold documents in a knowledge base.  A gold id may be a corpus id (bases
    made by `rag eval corpus` name each file after it), a document's full path, or its file name."""

    def __init__(self, kb: Store) -> None:
        self.kb = kb
        self._docs: dict[str, list[int]] = {}
        for doc in kb.documents():
            if doc.status in ("ok", "duplicate"):
                for key in {doc_id_of(doc.path), doc.path, Path(doc.path).name}:
                    self._docs.setdefault(key, []).append(doc.doc_id)

    def chunks(self, gold_ids: Sequence[str]) -> list[Chunk]:
        doc_ids = list(dict.fromkeys(d for g in gold_ids for d in self._docs.get(g, [])))
        chunk_ids = [cid for d in doc_ids for cid in self.kb.document_chunk_ids(d)]
        found = self.kb.chunks(chunk_ids)
        return [found[cid] for cid in chunk_ids if cid in found]


def build_examples(
    items: Sequence[QAItem],
    retriever: Retriever,
    *,
    distractors: int = 3,
    no_gold: float = 0.2,
    validation: float = 0.1,
    max_refusals: float | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """One example per usable QA item, plus a `no_gold` share of extra distractor-only ones.

    `max_refusals` caps the share of "not found" targets in each split (a seeded sample of them is
    left out).  Why: a small model decodes greedily, and a refusal is one fixed sentence while
    answers spread over many first tokens, so it refuses more often than its training data did
    (measured on SQuAD 2.0 with the 135M default: 55% refusals in the data gave 73% refusals on
    answerable questions; 45% gave 67%).

    Deterministic for a given seed.  The validation split is drawn by question, so the examples
    of one question never straddle the two splits.
    """
    rng = random.Random(seed)
    golds = GoldIndex(retriever.kb)
    held_out = validation_ids([it.id for it in items], validation, seed)
    result = BuildResult([])
    for i, item in enumerate(items, start=1):
        split = "validation" if item.id in held_out else "train"
        made = _examples_for(item, retriever, golds, distractors, no_gold, rng, split)
        if isinstance(made, str):
            result.skipped[made] += 1
        else:
            result.examples += made
        if progress:
            progress(i, len(items))
    if max_refusals is not None:
        result.examples, result.dropped = cap_refusals(result.examples, max_refusals, seed)
    return result


def cap_refusals(examples: list[Example], share: float, seed: int) -> tuple[list[Example], int]:
    """The examples with at most `share` refusals in each split, and how many were left out."""
    rng = random.Random(seed + 2)
    drop: set[int] = set()
    for split in SPLITS:
        refusals = [i for i, ex in enumerate(examples) if ex.split == split and ex.kind in REFUSALS]
        others = sum(1 for ex in examples if ex.split == split and ex.kind not in REFUSALS)
        keep = len(refusals) if share >= 1 else min(len(refusals), int(share * others / (1 - share)))
        drop.update(rng.sample(refusals, len(refusals) - keep))
    return [ex for i, ex in enumerate(examples) if i not in drop], len(drop)


def _examples_for(
    item: QAItem,
    retriever: Retriever,
    golds: GoldIndex,
    distractors: int,
    no_gold: float,
    rng: random.Random,
    split: str,
) -> list[Example] | str:
    """The item's examples, or the reason it was skipped."""
    hits = retriever.search(item.question, top_k=max(10, 3 * distractors + 4)).hits
    gold_docs = golds.chunks(item.gold_doc_ids)
    if item.gold_doc_ids and not gold_docs:
        return "gold document not in the knowledge base"
    if item.answerable:
        pool = gold_docs or [h.chunk for h in hits]
        gold = [c for c in pool if contains(c.text, item.answers)][: 1 if not gold_docs else 2]
        if not gold:
            return "no chunk of the gold document holds the answer"
    else:
        ranked = {h.chunk.chunk_id: r for r, h in enumerate(hits)}
        gold = sorted(gold_docs, key=lambda c: ranked.get(c.chunk_id, len(ranked)))[:2]
    gold_ids = {c.chunk_id for c in gold}
    gold_doc_ids = {c.doc_id for c in gold_docs}
    clean = [
        h.chunk
        for h in hits
        if h.chunk.chunk_id not in gold_ids
        and h.chunk.doc_id not in gold_doc_ids
        and not (item.answers and contains(h.chunk.text, item.answers))
    ]
    lang = language(item.question)
    refusal = NOT_FOUND[lang]
    if not item.answerable:
        return [_example(item, "unanswerable", split, gold + clean[:distractors], set(), refusal, lang, rng)]
    examples = [_example(item, "answer", split, gold + clean[:distractors], gold_ids, None, lang, rng)]
    if clean and rng.random() < no_gold:
        examples.append(_example(item, "no_gold", split, clean[: distractors + len(gold)], set(), refusal, lang, rng))
    return examples


def _example(
    item: QAItem,
    kind: str,
    split: str,
    chunks: list[Chunk],
    gold_ids: set[int | None],
    target: str | None,
    lang: str,
    rng: random.Random,
) -> Example:
    """Shuffle the blocks, number them as the prompt does, and write the target."""
    blocks = list(chunks)
    rng.shuffle(blocks)
    numbers = [n for n, c in enumerate(blocks, start=1) if c.chunk_id in gold_ids]
    if target is None:
        answer = next(a for a in item.answers if any(contains(c.text, [a]) for c in blocks if c.chunk_id in gold_ids))
        target = f"{answer.strip()} " + "".join(f"[{n}]" for n in numbers)
    prompt = answer_messages(item.question, [Hit(c, 0.0) for c in blocks], lang)
    messages = [{"role": role, "content": text} for role, text in prompt]
    messages.append({"role": "assistant", "content": target})
    suffix = "" if kind != "no_gold" else "#no_gold"
    return Example(f"{item.id}{suffix}", item.id, kind, split, messages, numbers)


def validation_ids(ids: Sequence[str], share: float, seed: int) -> set[str]:
    if share <= 0 or len(ids) < 2:
        return set()
    n = min(len(ids) - 1, max(1, round(share * len(ids))))
    return set(random.Random(seed + 1).sample(list(ids), n))


# ---- files ---------------------------------------------------------------------------------
def write_sft(examples: Sequence[Example], path: Path) -> None:
    """JSONL, one example per line; written beside and renamed, so a failed run leaves no half file."""
    write_jsonl(path, (ex.to_json() for ex in examples))


def load_sft(path: Path) -> dict[str, list[list[dict[str, str]]]]:
    """split -> list of conversations.  Lines without a "split" count as training data, so any
    chat-format JSONL ({"messages": [...]} per line, ending with the assistant's answer) works."""
    if not path.is_file():
        raise SFTDataError(f"{path}: file not found (make one with `rag tune data`)")
    out: dict[str, list[list[dict[str, str]]]] = {s: [] for s in SPLITS}
    try:
        for lineno, obj in read_jsonl(path):
            messages = obj.get("messages")
            if not _is_conversation(messages):
                raise SFTDataError(
                    f"{path}:{lineno}: expected {{'messages': [{{'role', 'content'}}, ...]}} ending with an "
                    "assistant message"
                )
            split = obj.get("split", "train")
            if split not in SPLITS:
                raise SFTDataError(f"{path}:{lineno}: split {split!r} is neither 'train' nor 'validation'")
            out[split].append(messages)
    except DatasetError as exc:  # not JSON, or not an object: the message names the line
        raise SFTDataError(str(exc)) from exc
    if not out["train"]:
        raise SFTDataError(f"{path}: no training examples")
    return out


def _is_conversation(messages: Any) -> bool:
    return (
        isinstance(messages, list)
        and len(messages) >= 2
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in messages)
        and messages[-1]["role"] == "assistant"
    )
