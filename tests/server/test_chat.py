"""The chat API through the official `openai` client, as a program would use it: streamed and not,
citations to file and page in the `rag` field and [n] in the text, a follow-up, and "not found"."""

from __future__ import annotations

import re

import openai
import pytest

from tests.conftest import SAMPLES
from tests.server.conftest import copy_of_samples, running, server_settings

WARRANTY = "How long is the battery module covered by the warranty?"
OFF_TOPIC = "What is the capital of France?"


@pytest.fixture(scope="module")
def server(sample_kb_dir, tmp_path_factory, embedder, short_chat_model):
    data = copy_of_samples(sample_kb_dir, tmp_path_factory.mktemp("chat"))
    with running(server_settings(data), embedder, short_chat_model) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    # With no keys created the server answers local programs; the client insists on some key.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def rag_field(obj) -> dict:
    return obj.model_extra["rag"]


def pages(rag: dict) -> set[tuple[str, int | None]]:
    return {(c["file"], c["page"]) for c in rag["citations"]}


def test_the_knowledge_bases_are_the_models(client) -> None:
    assert [m.id for m in client.models.list()] == ["sample"]


@pytest.mark.slow
def test_an_answer_cites_file_and_page_with_markers_in_the_text(client) -> None:
    reply = client.chat.completions.create(model="sample", messages=[{"role": "user", "content": WARRANTY}])
    message = reply.choices[0].message
    rag = rag_field(message)
    assert rag["found"] is True and rag["error"] is None
    assert "ten" in message.content.lower() or "10" in message.content
    assert ("helios-h10-warranty.pdf", 2) in pages(rag)
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", message.content)}
    assert markers and markers <= {c["n"] for c in rag["citations"]}, "every [n] points at a citation"
    cited = next(c for c in rag["citations"] if c["file"] == "helios-h10-warranty.pdf")
    assert cited["char_end"] > cited["char_start"] >= 0 and "ten years" in cited["text"]
    assert cited["document_id"] is not None and cited["score"] > 0


@pytest.mark.slow
def test_a_streamed_answer_arrives_in_pieces_and_ends_with_its_citations(client) -> None:
    stream = client.chat.completions.create(
        model="sample", messages=[{"role": "user", "content": WARRANTY}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len([c for c in chunks if c.choices[0].delta.content]) > 3, "tokens arrive one piece at a time"
    assert "ten" in text.lower() or "10" in text
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    rag = rag_field(last)
    assert rag["found"] and ("helios-h10-warranty.pdf", 2) in pages(rag)
    assert re.search(r"\[\d+\]", text), "the streamed text carries [n] markers too"
    assert all("rag" not in (c.model_extra or {}) for c in chunks[:-1]), "only the last chunk carries rag"


@pytest.mark.slow
def test_a_follow_up_is_understood_with_the_conversation(client) -> None:
    messages = [
        {"role": "user", "content": "How long is the Helios H10 battery module under warranty?"},
        {"role": "assistant", "content": "The battery module is covered for ten years [1]."},
        {"role": "user", "content": "And the inverter?"},
    ]
    rag = rag_field(client.chat.completions.create(model="sample", messages=messages).choices[0].message)
    assert rag["standalone_question"] != "And the inverter?"
    assert "inverter" in rag["standalone_question"].lower()
    assert rag["found"] and "helios-h10-warranty.pdf" in {f for f, _ in pages(rag)}


def test_not_found_is_an_answer_flagged_not_found_with_the_closest_passages(client) -> None:
    for stream in (False, True):
        reply = client.chat.completions.create(
            model="sample", messages=[{"role": "user", "content": OFF_TOPIC}], stream=stream
        )
        if stream:
            chunks = list(reply)
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            rag = rag_field(chunks[-1])
        else:
            text, rag = reply.choices[0].message.content, rag_field(reply.choices[0].message)
        assert text == "I could not find the answer in the documents."
        assert rag["found"] is False and rag["evidence"] == "closest"
        assert rag["citations"], "the closest passages come with it, to check"
        assert not re.search(r"\[\d+\]", text), "passages that do not answer are not cited"


def test_retrieval_options_travel_in_the_request(client) -> None:
    reply = client.chat.completions.create(
        model="sample",
        messages=[{"role": "user", "content": OFF_TOPIC}],
        extra_body={"rag": {"mode": "bm25", "top_k": 1, "only": "*.md"}},
    )
    citations = rag_field(reply.choices[0].message)["citations"]
    assert len(citations) <= 1 and all(c["file"].endswith(".md") for c in citations)


def test_errors_reach_the_client_as_its_own_exceptions(client) -> None:
    with pytest.raises(openai.NotFoundError, match="no knowledge base named 'nowhere'"):
        client.chat.completions.create(model="nowhere", messages=[{"role": "user", "content": WARRANTY}])
    with pytest.raises(openai.BadRequestError, match="the last message must be the user's question"):
        client.chat.completions.create(model="sample", messages=[{"role": "assistant", "content": "hi"}])


def test_a_file_cited_can_be_downloaded(server, client) -> None:
    reply = client.chat.completions.create(model="sample", messages=[{"role": "user", "content": OFF_TOPIC}])
    passage = rag_field(reply.choices[0].message)["citations"][0]
    with server.client() as http:
        got = http.get(f"/v1/kbs/sample/documents/{passage['document_id']}/file")
    assert got.status_code == 200 and passage["file"] in got.headers["content-disposition"]
    assert got.content == (SAMPLES / passage["file"]).read_bytes()


def _on_its_page(passage: dict) -> None:
    """The passage says where it sits on its page: rectangles inside the page, in its units."""
    width, height = passage["page_size"]
    assert width > 0 and height > 0 and passage["boxes"]
    for x0, y0, x1, y1 in passage["boxes"]:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


def test_citations_and_search_hits_say_where_a_pdf_passage_sits_on_its_page(server, client) -> None:
    reply = client.chat.completions.create(
        model="sample", messages=[{"role": "user", "content": OFF_TOPIC}], extra_body={"rag": {"only": "*.pdf"}}
    )
    citations = rag_field(reply.choices[0].message)["citations"]
    assert citations and all(c["file"] == "helios-h10-warranty.pdf" for c in citations)
    for citation in citations:
        _on_its_page(citation)
    with server.client() as http:
        query = {"query": "battery module warranty years", "mode": "bm25", "top_k": 20}
        hits = http.post("/v1/kbs/sample/search", json=query).raise_for_status().json()["hits"]
    on_pages = [h for h in hits if h["file"].endswith(".pdf")]
    assert on_pages and len(on_pages) < len(hits)
    for hit in on_pages:
        _on_its_page(hit)
    assert all(h["boxes"] == [] and h["page_size"] is None for h in hits if h not in on_pages), "no pages, no boxes"
