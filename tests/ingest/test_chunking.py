"""Chunks never exceed what the embedder reads, respect sentence ends in both languages, and
point back to the exact span of their page."""

from __future__ import annotations

import itertools

import pytest

from ingest.chunking import Chunker
from rag.config import ChunkSettings
from rag.types import Page
from tests.fixtures.documents import CHINESE_TEXT

ENGLISH = (
    "The Helios H10 is a 10 kWh lithium iron phosphate home battery. It stores surplus solar power during the day. "
    "Continuous output is 5 kW, with a 7.5 kW peak for ten seconds to start motors such as well pumps. "
) * 30


@pytest.fixture(scope="module")
def tokenizer(embedder):
    return embedder.tokenizer


def make(embedder, size: int, overlap: int = 0) -> Chunker:
    return Chunker(ChunkSettings(size=size, overlap=overlap), embedder.tokenizer, embedder.max_tokens)


@pytest.mark.parametrize("size", [32, 100, 254])
def test_no_chunk_exceeds_the_size_in_model_tokens(embedder, size: int) -> None:
    chunker = make(embedder, size, overlap=min(16, size // 4))
    chunks = chunker.split_pages([Page(ENGLISH + CHINESE_TEXT * 5, "doc.txt")])
    assert len(chunks) > 3
    counts = [chunker.count_tokens(c.text) for c in chunks]
    assert max(counts) <= size
    assert max(counts) <= embedder.max_tokens == embedder.model.max_seq_length - 2


def test_size_above_the_model_limit_is_refused(embedder) -> None:
    with pytest.raises(ValueError, match=r"reads at most 254"):
        make(embedder, 300)


def test_spans_point_at_the_exact_page_text(embedder) -> None:
    text = ENGLISH + "\n\n" + CHINESE_TEXT
    chunks = make(embedder, 60, overlap=10).split_pages([Page(text, "doc.txt", page_no=7)])
    for chunk in chunks:
        assert text[chunk.char_start : chunk.char_end] == chunk.text
        assert chunk.page_no == 7
    starts = [c.char_start for c in chunks]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_chinese_is_split_at_sentence_ends(embedder) -> None:
    chunks = make(embedder, 40).split_pages([Page(CHINESE_TEXT, "zh.txt")])
    assert len(chunks) > 2
    # every chunk but the last ends where a Chinese sentence or clause ends
    assert all(c.text[-1] in "。！？；，" for c in chunks[:-1])


def test_english_prefers_sentence_boundaries(embedder) -> None:
    chunks = make(embedder, 50).split_pages([Page(ENGLISH, "en.txt")])
    assert sum(c.text.endswith(".") for c in chunks) >= len(chunks) - 1


def test_overlap_repeats_text_between_neighbours(embedder) -> None:
    chunks = make(embedder, 80, overlap=30).split_pages([Page(ENGLISH, "en.txt")])
    assert any(a.char_end > b.char_start for a, b in itertools.pairwise(chunks))


def test_chunks_never_cross_pages(embedder) -> None:
    pages = [Page("First page text. " * 5, "a.pdf", 1), Page("Second page text. " * 5, "a.pdf", 2)]
    chunks = make(embedder, 200).split_pages(pages)
    assert [c.page_no for c in chunks] == [1, 2]


def test_one_unbreakable_token_run_is_still_cut_below_the_limit(embedder) -> None:
    blob = "x" * 5000  # no separator at all
    chunker = make(embedder, 64)
    chunks = chunker.split_pages([Page(blob, "blob.txt")])
    assert "".join(c.text for c in chunks) == blob
    assert max(chunker.count_tokens(c.text) for c in chunks) <= 64


def test_whitespace_only_page_gives_no_chunks(embedder) -> None:
    assert make(embedder, 64).split_pages([Page(" \n\n \t ", "blank.txt")]) == []
