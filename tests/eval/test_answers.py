"""Answer metrics on fixed inputs (English and Chinese), and a real run of the default model."""

from __future__ import annotations

import pytest

from eval.answers import contains, exact_match, f1, is_gold_passage, run_answers, summarize, tokens
from eval.datasets import QAItem
from rag.qa import QA, Citation
from rag.retrieve import Retriever
from rag.store.local import LocalStore
from tests.conftest import qa_settings


def test_english_normalization_exact_match_and_f1() -> None:
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("in Paris", ["Paris"]) == 0.0
    # prediction tokens: in, paris, france; gold: paris -> p = 1/3, r = 1, f1 = 0.5
    assert f1("in Paris, France", ["Paris"]) == pytest.approx(0.5)
    assert f1("Paris", ["London", "paris"]) == 1.0  # best over the gold answers
    assert f1("", ["Paris"]) == 0.0
    assert contains("It was built in the 10th and 11th centuries [1].", ["10th and 11th centuries"]) == 1.0


def test_chinese_is_scored_by_character() -> None:
    assert tokens("光荣和ω-force") == ["光", "荣", "和", "ωforce"]
    # prediction chars: 由 光 荣 开 发 (5); gold: 光 荣 (2); common 2 -> p 0.4, r 1
    assert f1("由光荣开发。", ["光荣"]) == pytest.approx(2 * 0.4 / 1.4)
    assert exact_match("村雨城。", ["村雨城"]) == 1.0
    assert contains("答案是「战史演武」", ["战史演武"]) == 1.0


def test_a_citation_is_right_by_gold_document_or_by_holding_the_answer() -> None:
    item = QAItem("1", "Q?", ["ten years"], gold_doc_ids=["Normans#0"])
    gold_doc = Citation(1, "/x/corpora/Normans%230.txt", None, "unrelated", 1.0, 1, 0, 9)
    has_answer = Citation(2, "/docs/other.pdf", 2, "Covered for ten years.", 1.0, 2, 0, 9)
    wrong = Citation(3, "/docs/other.pdf", 3, "Wipe with a cloth.", 1.0, 3, 0, 9)
    assert is_gold_passage(gold_doc, item) and is_gold_passage(has_answer, item)
    assert not is_gold_passage(wrong, item)


def _row(answerable: bool, not_found: bool, em: float = 0.0, cited=(), by_model=False, s=1.0, error=None) -> dict:
    return {
        "answerable": answerable,
        "not_found": not_found,
        "exact_match": em,
        "f1": em,
        "contains": em,
        "citations": [{"gold": g} for g in cited],
        "cited_by_model": by_model,
        "seconds": s,
        "error": error,
    }


def test_summary_counts_each_metric_over_the_right_questions() -> None:
    rows = [
        _row(True, False, 1.0, cited=[True, False], by_model=True, s=1.0),
        _row(True, True, s=2.0),  # refused an answerable question
        _row(False, True, s=3.0),  # rightly not found
        _row(False, False, cited=[True], s=4.0),  # answered the unanswerable
    ]
    m = summarize(rows)
    assert m["exact_match"] == 0.5 and m["f1"] == 0.5
    assert m["not_found_accuracy"] == 0.5
    assert m["false_not_found"] == 0.5
    assert m["refusal_discrimination"] == 0.0  # refuses half of each: "not found" tells nothing
    assert m["citation_precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["citation_compliance"] == 0.5  # 2 answered, 1 cited by the model itself
    assert m["latency_p50_s"] == 2.5
    assert (m["answerable"], m["unanswerable"], m["errors"]) == (2, 2, 0)


def test_refusal_discrimination_separates_knowing_when_to_refuse_from_refusing_a_lot() -> None:
    knows = [_row(True, False, 1.0), _row(True, False), _row(False, True), _row(False, True)]
    refuses_most = [_row(True, True), _row(True, False), _row(False, True), _row(False, True)]
    refuses_all = [_row(True, True), _row(True, True), _row(False, True), _row(False, True)]
    assert summarize(knows)["refusal_discrimination"] == 1.0
    assert summarize(refuses_most)["refusal_discrimination"] == 0.5
    both = summarize(refuses_all)
    assert both["not_found_accuracy"] == 1.0 and both["refusal_discrimination"] == 0.0
    assert summarize([_row(True, False)])["refusal_discrimination"] is None  # no unanswerable questions


@pytest.mark.slow
def test_real_model_answers_and_refuses(sample_kb_dir, embedder, chat_model) -> None:
    settings = qa_settings(sample_kb_dir)
    items = [
        QAItem(
            "w",
            "How long is the battery module covered by the warranty?",
            ["10 years", "ten years"],
            ["helios-h10-warranty.pdf"],
        ),
        QAItem("f", "What is the capital of France?", [], answerable=False),
    ]
    with LocalStore.open(settings.kb_dir("sample")) as kb:
        qa = QA(Retriever(kb, embedder, settings.retrieve), settings, lambda: chat_model)
        rows = run_answers(qa, items)
    by_id = {r["id"]: r for r in rows}
    assert by_id["w"]["contains"] == 1.0 and not by_id["w"]["not_found"]
    assert all(c["gold"] for c in by_id["w"]["citations"]) and by_id["w"]["citations"]
    assert by_id["f"]["not_found"]
    m = summarize(rows)
    assert m["not_found_accuracy"] == 1.0 and m["citation_precision"] == 1.0
