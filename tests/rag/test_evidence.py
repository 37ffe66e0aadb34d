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


def test_passages_carry_where_they_sit_on_the_page_from_the_chunk_metadata() -> None:
    from rag.evidence import layout_json, on_page
    from rag.qa import _citation

    placed = {"boxes": [[72, 60.5, 300, 72], [72, 78, 210.25, 90]], "page_size": [595.28, 841.89], "read": "text"}
    text = "The warranty lasts ten years."
    hit = Hit(Chunk(text, "/docs/w.pdf", 2, 0, 0, len(text), metadata=placed, chunk_id=7), 0.5, similarity=0.6)
    plain = Hit(Chunk(text, "/docs/w.md", None, 0, 0, len(text), chunk_id=8), 0.4, similarity=0.5)
    closest = evidence_for(_answer("", False, retrieved=[hit, plain])).passages
    assert closest[0].boxes == ((72.0, 60.5, 300.0, 72.0), (72.0, 78.0, 210.25, 90.0))
    assert closest[0].page_size == (595.28, 841.89)
    assert (closest[1].boxes, closest[1].page_size) == ((), None)
    citation = _citation(1, hit)
    cited = evidence_for(_answer("Ten years [1].", context=[hit], citations=[citation])).passages[0]
    assert (cited.boxes, cited.page_size) == (closest[0].boxes, closest[0].page_size)
    assert layout_json(cited.boxes, cited.page_size) == {
        "boxes": [[72.0, 60.5, 300.0, 72.0], [72.0, 78.0, 210.25, 90.0]],
        "page_size": [595.28, 841.89],
    }
    # malformed or partial metadata is "not known", never an error
    for bad in ({"boxes": [[1, 2, 3]], "page_size": [10, 10]}, {"boxes": [[1, 2, 3, 4]]}, {"page_size": [0, 5]}):
        assert on_page(bad) == ((), None)
    assert on_page({"boxes": [[1, 2, 3, float("nan")], [1, 2, 3, 4]], "page_size": [10, 10]}) == (
        ((1.0, 2.0, 3.0, 4.0),),
        (10.0, 10.0),
    )
