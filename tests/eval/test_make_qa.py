"""Drafting a QA set from a knowledge base: passages spread over documents, only drafts whose
answer is copied from their passage kept, and the real OpenAI wire protocol end to end."""

from __future__ import annotations

import json
from pathlib import Path

from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import AIMessage
from typer.testing import CliRunner

from cli.main import app
from eval.datasets import load_qa
from eval.make_qa import draft_qa, parse_draft, sample_chunks
from rag.store.local import LocalStore
from tests.conftest import qa_settings
from tests.fixtures.openai_server import serve


class Teacher:
    """Replies in turn: a good draft (its answer is the passage's first word), prose with no JSON,
    and a draft whose answer is not in the passage — what weak teachers really produce."""

    def __init__(self) -> None:
        self.calls = 0

    def invoke(self, messages):
        prompt = messages[-1][1]
        passage = prompt.split("Passage:\n", 1)[-1].split("段落：\n", 1)[-1]
        self.calls += 1
        kind = self.calls % 3
        if kind == 1:
            first = next(w for w in passage.split() if sum(ch.isalnum() for ch in w) >= 3 and '"' not in w)
            return AIMessage(f'Sure! ```json\n{{"question": "What comes first?", "answer": "{first}"}}\n```')
        if kind == 2:
            return AIMessage("Here is a question about the passage: what is it about?")
        return AIMessage('{"question": "Who?", "answer": "a phrase that is nowhere in the text"}')


def test_parse_draft_finds_the_json_among_prose() -> None:
    assert parse_draft('ok {"question": "Q?", "answer": "A"} done') == {"question": "Q?", "answer": "A"}
    assert parse_draft('{"question": "", "answer": "A"} {"question": "Q2?", "answer": "B"}')["answer"] == "B"
    assert parse_draft("no json here") is None


def test_passages_are_spread_over_documents(sample_kb_dir) -> None:
    with LocalStore.open(qa_settings(sample_kb_dir).kb_dir("sample")) as kb:
        chunks = sample_chunks(kb, 4, seed=1)
        assert len({c.source for c in chunks}) == 4
        assert [c.chunk_id for c in sample_chunks(kb, 4, seed=1)] == [c.chunk_id for c in chunks]


def test_only_answers_copied_from_the_passage_are_kept(sample_kb_dir) -> None:
    with LocalStore.open(qa_settings(sample_kb_dir).kb_dir("sample")) as kb:
        teacher = Teacher()
        items, tried = draft_qa(kb, teacher, n=2, seed=0)
        assert len(items) == 2 and tried == 4  # good, junk, wrong, good
        for item in items:
            chunk = kb.chunks([item.extra["chunk_id"]])[item.extra["chunk_id"]]
            assert item.answers[0] in chunk.text
            assert item.gold_doc_ids == [chunk.source] and item.answerable


def test_make_qa_command_through_an_openai_server(sample_kb_dir, tmp_path: Path) -> None:
    reply = json.dumps({"question": "Which product is this about?", "answer": "H10"})
    with serve({"teacher": FakeListChatModel(responses=[reply])}) as base_url:
        result = CliRunner().invoke(
            app,
            ["eval", "make-qa", "--kb", "sample", "--n", "3", "--backend", "openai", "--model", "teacher",
             "--out", str(tmp_path / "qa.jsonl")],
            env={"RAG_DATA_DIR": str(sample_kb_dir), "RAG_LLM__BASE_URL": base_url},
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    items = load_qa(tmp_path / "qa.jsonl")
    assert len(items) == 3 and all(it.answers == ["H10"] for it in items)
    assert "3 questions from" in result.output
