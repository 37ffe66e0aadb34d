"""Training data: the prompt `rag ask` uses, gold blocks among retrieved distractors, citations in
the target, "not found" targets for unanswerable and no-gold examples, splits by question."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from eval.answers import contains
from eval.datasets import write_qa
from rag.prompts import NOT_FOUND, SYSTEM
from rag.retrieve import Retriever
from rag.store.local import LocalStore
from rag.tune.data import REFUSALS, SFTDataError, build_examples, load_sft, write_sft
from tests.conftest import MODEL_CACHE, qa_settings
from tests.tune.conftest import DOCS, QA

BLOCK = re.compile(r"^\[(\d+)\] \((.+?)\)\n<document>\n(.*?)\n</document>", re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def retriever(mini_kb: Path, embedder) -> Retriever:
    settings = qa_settings(mini_kb)
    return Retriever(LocalStore.open(settings.kb_dir("mini")), embedder, settings.retrieve)


def blocks(example) -> dict[int, str]:
    """Block number -> the document text shown in it."""
    return {int(n): text for n, _, text in BLOCK.findall(example.messages[1]["content"])}


def by_id(examples) -> dict[str, object]:
    return {ex.id: ex for ex in examples}


def test_answer_examples_cite_the_gold_block_shuffled_among_distractors(retriever) -> None:
    result = build_examples(QA, retriever, distractors=3, no_gold=0.0, validation=0.0)
    examples = by_id(result.examples)
    for qa_id, gold_doc in [("a1", "d1"), ("a2", "d3"), ("a4", "d4"), ("a5", "d5"), ("a6", "d2")]:
        ex = examples[qa_id]
        assert ex.kind == "answer"
        assert [m["role"] for m in ex.messages] == ["system", "user", "assistant"]
        assert ex.messages[0]["content"] == SYSTEM["en"]  # the exact prompt of `rag ask`
        item = next(it for it in QA if it.id == qa_id)
        assert ex.messages[1]["content"].endswith(f"Question: {item.question}")
        shown = blocks(ex)
        assert len(shown) == 4, "the gold chunk and three distractors"
        (gold,) = ex.gold_blocks
        assert DOCS[gold_doc][1] in shown[gold]
        assert ex.messages[2]["content"] == f"{item.answers[0]} [{gold}]"
        assert not any(contains(text, item.answers) for n, text in shown.items() if n != gold)
    # the gold block is not always first: the model must find it
    assert len({examples[q].gold_blocks[0] for q in ("a1", "a2", "a4", "a5", "a6")}) > 1


def test_gold_is_found_by_retrieval_when_the_item_names_no_document(retriever) -> None:
    ex = by_id(build_examples(QA, retriever, no_gold=0.0, validation=0.0).examples)["a3"]
    assert ex.kind == "answer" and DOCS["d6"][1] in blocks(ex)[ex.gold_blocks[0]]


def test_unanswerable_and_no_gold_examples_answer_not_found(retriever) -> None:
    result = build_examples(QA, retriever, distractors=2, no_gold=1.0, validation=0.0)
    examples = by_id(result.examples)
    unanswerable = examples["u1"]
    assert unanswerable.kind == "unanswerable" and unanswerable.gold_blocks == []
    assert unanswerable.messages[-1]["content"] == NOT_FOUND["en"]
    assert any(DOCS["d5"][1] in text for text in blocks(unanswerable).values()), "its on-topic passage is shown"
    no_gold = [ex for ex in result.examples if ex.kind == "no_gold"]
    assert {ex.qa_id for ex in no_gold} == {"a1", "a2", "a3", "a4", "a5", "a6"}
    for ex in no_gold:
        item = next(it for it in QA if it.id == ex.qa_id)
        assert ex.messages[-1]["content"] == NOT_FOUND["en"] and ex.gold_blocks == []
        assert blocks(ex) and not any(contains(text, item.answers) for text in blocks(ex).values())


def test_max_refusals_caps_the_not_found_share_and_keeps_every_answer(retriever) -> None:
    full = build_examples(QA, retriever, no_gold=1.0, validation=0.0)
    assert sum(ex.kind in REFUSALS for ex in full.examples) == 8, "6 no-gold and 2 unanswerable"
    capped = build_examples(QA, retriever, no_gold=1.0, validation=0.0, max_refusals=0.25)
    refusals = [ex for ex in capped.examples if ex.kind in REFUSALS]
    answers = [ex for ex in capped.examples if ex.kind == "answer"]
    assert len(answers) == 6 and len(refusals) == 2, "6 answers allow 2 refusals at 25%"
    assert capped.dropped == 6 and all(ex.messages[-1]["content"] == NOT_FOUND["en"] for ex in refusals)
    again = build_examples(QA, retriever, no_gold=1.0, validation=0.0, max_refusals=0.25)
    assert [ex.id for ex in again.examples] == [ex.id for ex in capped.examples], "the sample is seeded"
    none = build_examples(QA, retriever, no_gold=1.0, validation=0.0, max_refusals=0.0)
    assert {ex.kind for ex in none.examples} == {"answer"}
    uncapped = build_examples(QA, retriever, no_gold=1.0, validation=0.0, max_refusals=0.9)
    assert uncapped.dropped == 0 and len(uncapped.examples) == len(full.examples)


def test_unusable_questions_are_counted_not_guessed(retriever) -> None:
    result = build_examples(QA, retriever, validation=0.0)
    assert "x1" not in {ex.qa_id for ex in result.examples} and "x2" not in {ex.qa_id for ex in result.examples}
    assert result.skipped == {
        "gold document not in the knowledge base": 1,
        "no chunk of the gold document holds the answer": 1,
    }


def test_validation_split_is_by_question_and_the_build_is_reproducible(retriever, tmp_path: Path) -> None:
    first = build_examples(QA, retriever, no_gold=0.5, validation=0.3, seed=3)
    again = build_examples(QA, retriever, no_gold=0.5, validation=0.3, seed=3)
    assert [ex.to_json() for ex in first.examples] == [ex.to_json() for ex in again.examples]
    splits: dict[str, set[str]] = {}
    for ex in first.examples:
        splits.setdefault(ex.qa_id, set()).add(ex.split)
    assert all(len(s) == 1 for s in splits.values()), "a question's examples stay in one split"
    counts = first.counts()
    assert counts["validation"].total() >= 1 and counts["train"].total() > counts["validation"].total()
    write_sft(first.examples, tmp_path / "sft.jsonl")
    loaded = load_sft(tmp_path / "sft.jsonl")
    assert len(loaded["train"]) == counts["train"].total() and len(loaded["validation"]) == counts["validation"].total()


@pytest.mark.parametrize(
    ("bad_line", "says"),
    [
        (json.dumps({"messages": [{"role": "user", "content": "q"}]}), "ending with an assistant message"),
        ('{"messages": [', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_load_sft_names_the_bad_line(tmp_path: Path, bad_line: str, says: str) -> None:
    path = tmp_path / "sft.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path.write_text(json.dumps(good) + "\n\n" + bad_line + "\n")
    with pytest.raises(SFTDataError, match=rf"sft\.jsonl:3: .*{says}"):
        load_sft(path)


def test_rag_tune_data_writes_the_set_and_reports_counts(mini_kb: Path, tmp_path: Path) -> None:
    qa_file = tmp_path / "qa.jsonl"
    write_qa(QA, qa_file)
    out = tmp_path / "sft.jsonl"
    env = {"RAG_DATA_DIR": str(mini_kb), "RAG_CACHE_DIR": str(MODEL_CACHE), "COLUMNS": "200"}
    args = ["tune", "data", "--kb", "mini", "--qa", str(qa_file), "--out", str(out), "--distractors", "2"]
    more = ["--validation", "0.2", "--no-gold", "1", "--max-refusals", "0.5"]
    result = CliRunner().invoke(app, [*args, *more], env=env)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {ln["kind"] for ln in lines} >= {"answer", "unanswerable", "no_gold"}
    assert {ln["split"] for ln in lines} == {"train", "validation"}
    for split in ("train", "validation"):  # 8 refusals to 6 answers before the cap
        kinds = [ln["kind"] for ln in lines if ln["split"] == split]
        assert sum(k in REFUSALS for k in kinds) <= 0.5 * len(kinds)
    assert "refusal example(s) to keep them at most 50% of each split" in result.output
    assert f"{len(lines)} examples" in result.output and "skipped 2 question(s)" in result.output
    assert "rag tune train --data" in result.output


def test_rag_tune_data_refuses_a_missing_base(mini_kb: Path, tmp_path: Path) -> None:
    qa_file = tmp_path / "qa.jsonl"
    write_qa(QA, qa_file)
    env = {"RAG_DATA_DIR": str(mini_kb), "RAG_CACHE_DIR": str(MODEL_CACHE)}
    result = CliRunner().invoke(app, ["tune", "data", "--kb", "nope", "--qa", str(qa_file)], env=env)
    assert result.exit_code == 2 and "no knowledge base" in result.output
