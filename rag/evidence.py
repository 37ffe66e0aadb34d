"""What backs an answer, decided once for every surface (the command line, the web UI, an API):
which passages to show with it, and which sentences support it.

The model's own citations are parsed in rag.prompts (`parse_citations`) and turned into the
Answer's Citations in rag.qa; when it cites nothing, `attribute` here matches the answer's
sentences to the passages by wording.  `evidence_for` then picks the passages to show:

- not found: the closest passages (none answers well enough);
- the answer cites passages: those sources;
- it cites none but its wording matches some: those, flagged as matched rather than cited;
- neither: the passages the model was given.

The surfaces only render the result (headings, colours, HTML); none decides it again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rag.lexical import tokenize
from rag.retrieve import Hit

if TYPE_CHECKING:
    from rag.qa import Answer, Citation

CLOSEST = 3  # passages offered when the answer is not in the documents

Box = tuple[float, float, float, float]  # x0, y0, x1, y1: origin at the page's top-left, y down

# What the passages are to the answer: the closest ones when it was not found, its cited sources,
# sources matched to it by wording (the model cited none), or the passages it was given.
Kind = Literal["closest", "cited", "matched", "context"]

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*")
_SENTENCE = re.compile(r"[^.!?。！？]+(?:[.!?。！？]+|$)")


@dataclass(frozen=True)
class Passage:
    """One passage shown with an answer and where it comes from."""

    n: int  # the number the answer cites it by; for passages it does not cite, its place in the list
    source: str  # the document's path
    page: int | None
    text: str
    score: float  # retrieval score
    similarity: float | None  # cosine(query, passage), when known
    chunk_id: int | None = None
    char_start: int | None = None  # where the passage lies in its page's text
    char_end: int | None = None
    doc_id: int | None = None
    # Where it sits on its page (PDF pages and images): a rectangle per line fragment, in the units
    # of page_size (PDF points or image pixels); empty, and None, when that is not known.
    boxes: tuple[Box, ...] = ()
    page_size: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        return Path(self.source).name


@dataclass(frozen=True)
class Evidence:
    """The passages to show with an answer, and the text their sentences are matched against."""

    kind: Kind
    passages: tuple[Passage, ...]
    reference: str  # the answer, for its own sources; otherwise the question that was searched for

    @property
    def cited(self) -> bool:
        """The passages are the answer's own sources (cited, or matched by wording), not
        passages offered in their place."""
        return self.kind in ("cited", "matched")

    def highlights(self, passage: Passage) -> list[tuple[int, int]]:
        """Character spans of the passage's sentences that back the reference; a source of the
        answer where no sentence stands out is backed whole (it is what the answer rests on)."""
        spans = supporting_spans(passage.text, self.reference)
        return spans or ([(0, len(passage.text))] if self.cited else [])


def evidence_for(answer: Answer) -> Evidence:
    """The passages to show with `answer`, by the rules in this module's docstring."""
    if not answer.found:
        hits = answer.retrieved[:CLOSEST]
        return Evidence("closest", _numbered(hits), answer.standalone_question)
    if answer.citations:
        given = {h.chunk.chunk_id: h for h in answer.context}
        passages = tuple(_cited(c, given.get(c.chunk_id)) for c in answer.citations)
        return Evidence("matched" if answer.citations_attributed else "cited", passages, answer.answer)
    return Evidence("context", _numbered(answer.context), answer.standalone_question)


def _cited(c: Citation, hit: Hit | None) -> Passage:
    similarity, doc_id = (hit.similarity, hit.chunk.doc_id) if hit else (None, None)
    return Passage(
        c.n,
        c.source,
        c.page,
        c.text,
        c.score,
        similarity,
        c.chunk_id,
        c.char_start,
        c.char_end,
        doc_id,
        boxes=c.boxes,
        page_size=c.page_size,
    )


def _numbered(hits: Sequence[Hit]) -> tuple[Passage, ...]:
    return tuple(
        Passage(
            i,
            h.chunk.source,
            h.chunk.page_no,
            h.chunk.text,
            h.score,
            h.similarity,
            h.chunk.chunk_id,
            h.chunk.char_start,
            h.chunk.char_end,
            h.chunk.doc_id,
            *on_page(h.chunk.metadata),
        )
        for i, h in enumerate(hits, start=1)
    )


def on_page(metadata: dict[str, Any] | None) -> tuple[tuple[Box, ...], tuple[float, float] | None]:
    """(boxes, page_size) of a chunk from its stored metadata; ((), None) when the chunk's place
    on its page is not recorded (formats without pages, bases ingested before it was) or is
    malformed.  Rectangles with a non-finite corner are left out."""
    metadata = metadata or {}
    size, raw = metadata.get("page_size"), metadata.get("boxes")
    try:
        width, height = (float(v) for v in size)  # type: ignore[union-attr]
        boxes = tuple(_box(b) for b in raw or ())  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return (), None
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        return (), None
    return tuple(b for b in boxes if all(math.isfinite(v) for v in b)), (width, height)


def _box(raw: Any) -> Box:
    x0, y0, x1, y1 = (float(v) for v in raw)
    return (x0, y0, x1, y1)


def layout_json(boxes: Sequence[Box], page_size: tuple[float, float] | None) -> dict[str, Any]:
    """The `boxes` and `page_size` fields of a passage in JSON (rounded to 0.01 page units), so a
    program can mark the passage on a rendered page: scale by image size / page size."""
    return {
        "boxes": [[round(v, 2) for v in box] for box in boxes],
        "page_size": [round(v, 2) for v in page_size] if page_size else None,
    }


def source_label(item: Passage | Citation | Hit) -> str:
    """'file.pdf, p. 2' for display."""
    if isinstance(item, Hit):
        source, page = item.chunk.source, item.chunk.page_no
    else:
        source, page = item.source, item.page
    return Path(source).name + (f", p. {page}" if page is not None else "")


# ---- which sentences support an answer ----------------------------------------------------------
def attribute(answer: str, context: Sequence[Hit], min_overlap: float = 0.5) -> list[int]:
    """Block numbers whose text supports the answer's sentences, for answers that cite nothing.

    Small models rarely write [n] however they are asked; matching each sentence's content words
    against the blocks still lets the user check where an answer came from (flagged as matched,
    not cited, in the output).
    """
    blocks = [set(tokenize(h.chunk.text)) for h in context]
    found: list[int] = []
    for sentence in _SENTENCE_END.split(answer):
        words = set(tokenize(sentence))
        if len(words) < 2:
            continue
        overlaps = [len(words & b) / len(words) for b in blocks]
        best = max(range(len(blocks)), key=lambda i: overlaps[i], default=None)
        if best is not None and overlaps[best] >= min_overlap and best + 1 not in found:
            found.append(best + 1)
    return found


def supporting_spans(passage: str, reference: str, most: int = 3) -> list[tuple[int, int]]:
    """Character spans of the passage's sentences that say most of what `reference` (the answer,
    or the question) says: at least two content words in common, and close to the best sentence.
    These are what a source card highlights."""
    wanted = set(tokenize(reference))
    scored = []
    for m in _SENTENCE.finditer(passage):
        shared = len(set(tokenize(m.group())) & wanted)
        if shared >= 2:
            start = m.start() + len(m.group()) - len(m.group().lstrip())
            scored.append((shared, start, m.start() + len(m.group().rstrip())))
    if not scored:
        return []
    bar = max(2, 0.7 * max(shared for shared, _, _ in scored))
    best = sorted((x for x in scored if x[0] >= bar), key=lambda x: -x[0])[:most]
    return sorted((start, end) for _, start, end in best)


def with_matched_markers(answer: Answer) -> str:
    """The answer text with [n] after each sentence that was matched to passage n, when the
    model cited nothing itself, so the text still links to its sources."""
    if not answer.citations_attributed:
        return answer.answer
    out = []
    for m in _SENTENCE.finditer(answer.answer):
        sentence = m.group()
        numbers = attribute(sentence, answer.context)
        body = sentence.rstrip()
        out.append(body + "".join(f"[{n}]" for n in numbers) + sentence[len(body) :])
    return "".join(out)
