"""The answering stack from settings, built in one place for every surface: the chat model is
made on first need only, through the hooks a surface hands in."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from rag.qa import QA
from rag.stack import answering, embedder_for, lazy_chat_model, retriever_for
from rag.store import KBError
from rag.store.local import LocalStore
from tests.conftest import qa_settings


def test_a_not_found_answer_never_makes_the_chat_model(sample_kb_dir, embedder) -> None:
    def no_model():
        raise AssertionError("the LLM must not be loaded for an off-topic question")

    qa = answering(qa_settings(sample_kb_dir), "sample", embedder=embedder, chat_model=no_model)
    assert isinstance(qa, QA) and qa.retriever.embedder is embedder
    assert not qa.ask("What is the capital of France?").found


def test_an_open_store_is_used_as_it_is(sample_kb_dir, embedder) -> None:
    settings = qa_settings(sample_kb_dir)
    with LocalStore.open(settings.kb_dir("sample")) as kb:
        assert retriever_for(settings, kb, embedder=embedder).kb is kb


def test_a_missing_base_is_a_kb_error(sample_kb_dir) -> None:
    with pytest.raises(KBError):
        answering(qa_settings(sample_kb_dir), "nope")


def test_embedders_are_shared_per_embedding_settings(sample_kb_dir) -> None:
    settings = qa_settings(sample_kb_dir)
    shared: dict = {}
    first = embedder_for(settings, shared)
    assert embedder_for(settings.model_copy(), shared) is first and len(shared) == 1
    assert embedder_for(settings) is not first


def test_the_chat_model_is_made_inside_the_loading_hook(monkeypatch, sample_kb_dir) -> None:
    events: list[str] = []

    def fake_make(settings, notify):
        notify("downloading")
        events.append("made")
        return "model"

    @contextmanager
    def loading(what: str):
        events.append(f"start {what}")
        yield
        events.append("end")

    monkeypatch.setattr("rag.llm.make_chat_model", fake_make)
    settings = qa_settings(sample_kb_dir)
    make = lazy_chat_model(settings, notify=events.append, loading=loading)
    assert events == []
    assert make() == "model"
    assert events == [f"start local model {settings.llm.model}", "downloading", "made", "end"]
