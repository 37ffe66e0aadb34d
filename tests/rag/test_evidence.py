"""Which passages back an answer, decided once for the CLI, the UI and an API: the closest when
not found, the cited sources, sources matched by wording, else the passages given to the model."""

from __future__ import annotations

from rag.evidence import evidence_for, source_label
from rag.qa import Answer, Citation
from rag.retrieve import Hit
from rag.types import Chunk


def _hit(text: str, n: int, page: int | None = None) -> Hit:
    return Hit(Chunk(text, f"/docs/{n}.pdf", page, 0, 0, len(text), chunk_id=n), 0.5, similarity=0.1 * n)


HITS = [_hit(f"Passage {i} says something about warranty terms.", i, page=i) for i in range(1, 6)]


def _answer(text: str = "", found: bool = True, **kw) -> Answer:
    return Answer("q", text, found, "en", "what is searched", **kw)


def test_not_found_offers_the_three_closest_passages_numbered_in_order() -> None:
    shown = evidence_for(_answer("I could not find the answer in the documents.", False, retrieved=HITS))
    assert shown.kind == "closest" and not shown.cited
    assert [(p.n, p.name, p.page) for p in shown.passages] == [(1, "1.pdf", 1), (2, "2.pdf", 2), (3, "3.pdf", 3)]
    assert shown.reference == "what is searched"
    assert evidence_for(_answer("", False)).passages == ()


def test_cited_sources_keep_their_block_numbers_and_similarity() -> None:
    c = HITS[1].chunk
    citation = Citation(2, c.source, c.page_no, c.text, 0.5, c.chunk_id, 0, len(c.text))
    answer = _answer("Ten years [2].", retrieved=HITS, context=HITS[:3], citations=[citation])
    shown = evidence_for(answer)
    assert shown.kind == "cited" and shown.cited and shown.reference == "Ten years [2]."
    (passage,) = shown.passages
    assert (passage.n, passage.source, passage.similarity) == (2, "/docs/2.pdf", HITS[1].similarity)
    assert source_label(passage) == "2.pdf, p. 2" == source_label(HITS[1]) == source_label(citation)

    matched = evidence_for(_answer("Ten years.", context=HITS[:3], citations=[citation], citations_attributed=True))
    assert matched.kind == "matched" and matched.cited


def test_an_answer_citing_nothing_shows_the_passages_given_to_the_model() -> None:
    shown = evidence_for(_answer("Something.", retrieved=HITS, context=HITS[:2]))
    assert shown.kind == "context" and not shown.cited
    assert [p.n for p in shown.passages] == [1, 2]


def test_highlights_back_the_answer_and_a_source_with_no_standout_sentence_is_backed_whole() -> None:
    text = "The battery module is covered for ten years. Wipe the casing with a dry cloth."
    hit = Hit(Chunk(text, "/docs/w.pdf", 2, 0, 0, len(text), chunk_id=9), 0.5, similarity=0.7)
    citation = Citation(1, "/docs/w.pdf", 2, text, 0.5, 9, 0, len(text))
    cited = evidence_for(_answer("The battery module: ten years [1].", context=[hit], citations=[citation]))
    assert [text[a:b] for a, b in cited.highlights(cited.passages[0])] == [
        "The battery module is covered for ten years."
    ]
    vague = evidence_for(_answer("Yes [1].", context=[hit], citations=[citation]))
    assert vague.highlights(vague.passages[0]) == [(0, len(text))]
    offered = evidence_for(_answer("Nothing cited.", context=[hit]))
    assert offered.highlights(offered.passages[0]) == []
