"""Answer evaluation: the full `rag ask` path (retrieve, gate, prompt, LLM) over a QA set.

Metrics, each over the questions it makes sense for:
- exact match and token F1 against the best of the gold answers (SQuAD normalization for English;
  characters for Chinese, as CMRC2018 scores), and `contains`: the gold span appears in the
  answer (what a generative model's sentence-long answer can fairly be held to);
- not-found accuracy on unanswerable questions, and the false not-found rate on answerable ones;
- citation precision (a cited passage comes from a gold document or holds a gold answer) and
  citation compliance (the model itself cited at least one real block);
- latency per question (p50 / p95);
- optionally, the share of answerable questions a judge model grades correct (eval/judge.py).
"""

from __future__ import annotations

import re
import string
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval.datasets import QAItem, doc_id_of
from rag.lexical import language
from rag.qa import QA, Answer, Citation

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CJK_OR_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ZH_PUNCT = "，。！？；：、“”‘’（）《》「」『』【】—…·～"
_PUNCT = set(string.punctuation) | set(_ZH_PUNCT)


class AnswerEvalError(RuntimeError):
    pass


def normalize(text: str) -> str:
    """SQuAD's normalization (lower case, no punctuation, no articles, single spaces), which also
    drops Chinese punctuation and folds full-width characters."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    """Words for English; each Chinese character on its own (CMRC2018's F1), words for the rest."""
    out: list[str] = []
    for word in normalize(text).split():
        if _CJK.search(word):
            out += _CJK_OR_RUN.findall(word)
        else:
            out.append(word)
    return out


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    pred = normalize(prediction).replace(" ", "") if _CJK.search(prediction) else normalize(prediction)
    for gold in golds:
        g = normalize(gold).replace(" ", "") if _CJK.search(gold) else normalize(gold)
        if pred == g:
            return 1.0
    return 0.0


def f1(prediction: str, golds: Sequence[str]) -> float:
    pred = tokens(prediction)
    best = 0.0
    for gold in golds:
        ref = tokens(gold)
        common = sum((Counter(pred) & Counter(ref)).values())
        if not pred or not ref or common == 0:
            continue
        p, r = common / len(pred), common / len(ref)
        best = max(best, 2 * p * r / (p + r))
    return best


def contains(prediction: str, golds: Sequence[str]) -> float:
    pred = normalize(prediction).replace(" ", "")
    return float(any(normalize(g).replace(" ", "") in pred for g in golds if normalize(g)))


def is_gold_passage(citation: Citation, item: QAItem) -> bool:
    """A cited passage is right when its document is a gold one or its text holds a gold answer."""
    source = citation.source
    keys = {doc_id_of(source), source, source.rsplit("/", 1)[-1]}
    if keys & set(item.gold_doc_ids):
        return True
    return bool(item.answers) and contains(citation.text, item.answers) > 0


@dataclass
class QuestionResult:
    item: QAItem
    answer: Answer
    seconds: float

    @property
    def not_found(self) -> bool:
        return not self.answer.found

    def row(self) -> dict[str, Any]:
        a, it = self.answer, self.item
        scored = it.answerable and not self.not_found
        return {
            "id": it.id,
            "question": it.question,
            "answers": it.answers,
            "answerable": it.answerable,
            "prediction": a.answer,
            "not_found": self.not_found,
            "exact_match": exact_match(a.answer, it.answers) if scored else 0.0,
            "f1": round(f1(a.answer, it.answers), 4) if scored else 0.0,
            "contains": contains(a.answer, it.answers) if scored else 0.0,
            "citations": [
                {"n": c.n, "source": c.source, "page": c.page, "gold": is_gold_passage(c, it)} for c in a.citations
            ],
            "cited_by_model": bool(a.citations) and not a.citations_attributed,
            "seconds": round(self.seconds, 3),
            "first_token_ms": a.timings.get("first_token_ms"),
            "error": a.error,
        }


def summarize(rows: list[dict[str, Any]]) -> dict[str, float | int | None]:
    """Aggregate per-question rows (from QuestionResult.row) into the report's metrics."""
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    answered = [r for r in rows if not r["not_found"] and not r["error"]]
    cited = [c for r in rows for c in r["citations"]]
    latencies = np.array([r["seconds"] for r in rows]) if rows else np.zeros(1)

    def mean(values: list[float]) -> float | None:
        return round(float(np.mean(values)), 4) if values else None

    generated = all(r.get("generated", True) for r in rows)
    refused_right = mean([float(r["not_found"]) for r in unanswerable])
    refused_wrong = mean([float(r["not_found"]) for r in answerable])
    scored = answerable if generated else []  # --gate-only: no answer was written, so none is scored
    if not generated:
        answered, cited = [], []
    return {
        "exact_match": mean([r["exact_match"] for r in scored]),
        "f1": mean([r["f1"] for r in scored]),
        "contains": mean([r["contains"] for r in scored]),
        "not_found_accuracy": refused_right,
        "false_not_found": refused_wrong,
        # Whether "not found" tells anything: an adapter that refuses three questions in four meets a
        # not-found target on paper while refusing answerable questions just as often.  0 = refuses
        # as often with the answer in hand as without; 1 = refuses exactly the unanswerable ones.
        "refusal_discrimination": (
            round(refused_right - refused_wrong, 4) if refused_right is not None and refused_wrong is not None else None
        ),
        "citation_precision": mean([float(c["gold"]) for c in cited]),
        "citation_compliance": mean([float(r["cited_by_model"]) for r in answered]),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "errors": sum(1 for r in rows if r["error"]),
        **_judged(answerable),
    }


def _judged(answerable: list[dict[str, Any]]) -> dict[str, float | int | None]:
    """judge_accuracy over the answerable questions the judge gave a verdict on (refused ones
    count as wrong), and how many replies were neither yes nor no; nothing when no judge ran."""
    if not any("judge" in r for r in answerable):
        return {}
    graded = [float(r["judge"]) for r in answerable if r.get("judge") is not None]
    return {
        "judge_accuracy": round(float(np.mean(graded)), 4) if graded else None,
        "judge_unclear": sum(1 for r in answerable if r.get("judge") is None),
    }


def run_answers(
    qa: QA, items: list[QAItem], progress: Callable[[int, int], None] | None = None, *, generate: bool = True
) -> list[dict[str, Any]]:
    """Ask every question; per-question rows.  A backend that fails on the first question that
    reaches it (server down, unknown model) stops the run: hundreds of identical errors help no one.

    Without `generate`, only retrieval and its gate run: the "not found" decision `rag ask` makes
    before any model is called, which is every refusal a model that never refuses on its own makes
    (the 135M default), in seconds instead of an hour; the answer metrics are then left empty."""
    rows = []
    for i, item in enumerate(items, start=1):
        started = time.perf_counter()
        answer = qa.ask(item.question) if generate else _gate_only(qa, item.question)
        result = QuestionResult(item, answer, time.perf_counter() - started)
        if answer.error and not any(r["first_token_ms"] is not None for r in rows):
            raise AnswerEvalError(answer.error)
        rows.append({**result.row(), "generated": generate})
        if progress:
            progress(i, len(items))
    return rows


def _gate_only(qa: QA, question: str) -> Answer:
    found = qa.retriever.search(question)
    lang = language(question)
    return Answer(question, "", found.found, lang, question, retrieved=found.hits, context=found.relevant)
