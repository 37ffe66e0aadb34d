"""The Chat page with the real models over the sample knowledge base: answers with source cards,
honest "not found", an LLM server that is down, the sidebar settings, follow-ups."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.evidence import supporting_spans, with_matched_markers
from rag.qa import Answer
from rag.retrieve import Hit
from rag.types import Chunk
from tests.fixtures.openai_server import free_port
from tests.ui.conftest import all_markdown, open_app, texts
from ui.chat import answer_html, sources_for

WARRANTY = "How long is the battery module covered by the warranty?"
OFF_TOPIC = "What is the capital of France?"


def ask(at, question: str):
    at.chat_input[0].set_value(question)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def last_turn(at):
    return at.session_state["_chats"]["sample"][-1]


def cards(at) -> list[str]:
    return [m for m in texts(at.markdown) if 'class="rag-src"' in m]


@pytest.mark.slow
def test_answer_with_citation_cards_naming_file_and_page(sample_data: Path) -> None:
    at = ask(open_app(), WARRANTY)
    turn = last_turn(at)
    assert turn.answer.found and turn.answer.error is None
    assert "ten" in turn.answer.answer.lower() or "10" in turn.answer.answer
    assert any("helios-h10-warranty.pdf" in c and "page 2" in c for c in cards(at))
    # each [n] in the answer links to the card with that number
    assert f'href="#src-{turn.id}-' in all_markdown(at)
    assert any(f'id="src-{turn.id}-{s.n}"' in c for s in turn.sources for c in cards(at))
    assert "<mark>" in "".join(cards(at))  # the supporting sentences are highlighted
    assert any(b.label == "Download file" for b in at.get("download_button"))


@pytest.mark.slow
def test_unknown_topic_is_shown_as_not_found_with_the_closest_passages(sample_data: Path) -> None:
    at = ask(open_app(), OFF_TOPIC)
    assert any(i.startswith("**Not found in the documents.**") for i in texts(at.info))
    assert "**Closest passages**" in all_markdown(at)
    assert 1 <= len(cards(at)) <= 3
    assert not last_turn(at).answer.found


@pytest.mark.slow
def test_llm_server_down_shows_the_error_and_the_passages_and_the_app_keeps_working(
    sample_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAG_LLM__BACKEND", "openai")
    monkeypatch.setenv("RAG_LLM__BASE_URL", f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    at = ask(open_app(), WARRANTY)
    (error,) = texts(at.error)
    assert "The language model did not answer" in error and "cannot reach the LLM server" in error
    assert "**Retrieved passages**" in all_markdown(at)
    assert any("helios-h10-warranty.pdf" in c for c in cards(at))
    ask(at, OFF_TOPIC)  # still usable: the next question is answered (not found, no LLM needed)
    assert any("Not found in the documents" in i for i in texts(at.info))


@pytest.mark.slow
def test_sidebar_settings_apply_to_the_next_question(sample_data: Path) -> None:
    at = open_app()
    at.radio(key="opt_mode").set_value("bm25")
    at.slider(key="opt_top_k").set_value(2)
    at.run()
    ask(at, OFF_TOPIC)
    answer = last_turn(at).answer
    assert len(answer.retrieved) <= 2
    assert all(set(h.sources) == {"bm25"} for h in answer.retrieved)
    at.switch_page("views/knowledge_bases.py").run()
    at.switch_page("views/chat.py").run()
    assert at.slider(key="opt_top_k").value == 2  # the choice survives a visit to another page


@pytest.mark.slow
def test_follow_up_question_is_searched_with_the_conversation(sample_data: Path) -> None:
    at = ask(open_app(), "How long is the Helios H10 battery module under warranty?")
    ask(at, "And the inverter?")
    assert any(c.startswith("Searched for:") and "inverter" in c.lower() for c in texts(at.caption))
    at.button(key="new_conversation").click()
    at.run()
    assert not at.chat_message


def test_without_a_knowledge_base_the_page_says_how_to_start(data_dir: Path) -> None:
    at = open_app()
    assert "There is no knowledge base yet" in texts(at.info)[0]
    assert at.get("page_link")


# ---- rendering ------------------------------------------------------------------------------
def _hit(text: str, n: int) -> Hit:
    return Hit(Chunk(text, f"/docs/{n}.pdf", n, 0, 0, len(text), chunk_id=n), 0.5, similarity=0.6)


def test_answer_text_is_escaped_and_only_real_citations_become_links() -> None:
    text = "See [1] and [2, 3]. <script>alert(1)</script> [click](javascript:alert(1))"
    out = answer_html(text, lambda n: f"src-7-{n}" if n in (1, 3) else None)
    assert '<a class="rag-cite" href="#src-7-1">&#91;1&#93;</a>' in out
    assert '&#91;2&#93;<a class="rag-cite" href="#src-7-3">&#91;3&#93;</a>' in out
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "](" not in out.replace("&#93;(", "")  # no Markdown link survives
    dollars = answer_html("Net sales, 2022: $34,229 [1] and 2021: $35,355", lambda n: None)
    assert "$" not in dollars and dollars.count("&#36;") == 2  # two "$" would render as a LaTeX formula


def test_sentences_that_back_the_answer_are_the_ones_highlighted() -> None:
    passage = (
        "Warranty period and capacity guarantee\nThe battery module is covered for ten years from the date of "
        "installation. The inverter is covered for five years. Wipe the casing with a dry cloth."
    )
    spans = supporting_spans(passage, "The battery module is covered for ten years.")
    assert [passage[a:b] for a, b in spans] == [
        "Warranty period and capacity guarantee\nThe battery module is covered for ten years from the date of "
        "installation."
    ]


def test_an_answer_without_citations_gets_markers_from_matching() -> None:
    context = [_hit("The inverter is covered for five years.", 1), _hit("Wipe the casing with a dry cloth.", 2)]
    answer = Answer("q", "Use a dry cloth on the casing. The inverter has five years.", True, "en", "q")
    answer.context = context
    answer.citations_attributed = True
    assert with_matched_markers(answer) == "Use a dry cloth on the casing.[2] The inverter has five years.[1]"


def test_cards_for_each_outcome() -> None:
    hits = [_hit(f"passage {i}", i) for i in range(1, 6)]
    not_found = Answer("q", "I could not find the answer in the documents.", False, "en", "q", retrieved=hits)
    assert sources_for(not_found)[0] == "Closest passages" and len(sources_for(not_found)[2]) == 3
    failed = Answer("q", "", True, "en", "q", retrieved=hits, context=hits[:2], error="server down")
    assert sources_for(failed)[0] == "Retrieved passages" and len(sources_for(failed)[2]) == 2
    uncited = Answer("q", "Something.", True, "en", "q", retrieved=hits, context=hits[:2])
    assert sources_for(uncited)[:2] == ("Passages given to the model", "The answer cites none of them.")


@pytest.mark.slow
def test_the_chat_works_unchanged_on_a_milvus_base(
    sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.config import load_settings
    from rag.store.copy import copy_base

    uri = str(tmp_path / "kb.db")
    copy_base(load_settings(data_dir=sample_data, store={"uri": uri}), "sample", "sample", to_backend="milvus")
    monkeypatch.setenv("RAG_STORE__BACKEND", "milvus")
    monkeypatch.setenv("RAG_STORE__URI", uri)
    at = ask(open_app(), WARRANTY)
    turn = last_turn(at)
    assert turn.answer.found and turn.answer.error is None
    assert any("helios-h10-warranty.pdf" in c and "page 2" in c for c in cards(at))
    at.switch_page("views/knowledge_bases.py").run()
    assert not at.exception and "sample" in [o for s in at.selectbox for o in s.options]
