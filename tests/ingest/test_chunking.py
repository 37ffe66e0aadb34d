"""Chunks never exceed what the embedder reads, respect sentence ends in both languages, point
back to the exact span of their page, are the chunks langchain's splitter made before this one
replaced it, and come in time linear in the text (counted in tokenizer calls, not seconds)."""

from __future__ import annotations

import itertools
import json
import random
import string
from pathlib import Path

import pytest
from langchain_text_splitters import RecursiveCharacterTextSplitter

from ingest.chunking import SEPARATORS, Chunker, _table_blocks
from ingest.loaders import LoadError, OcrSettings, load_file
from rag.config import ChunkSettings
from rag.types import Page
from tests.conftest import SAMPLES, shared_path
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


# ---- the same chunks as langchain's splitter, which this chunker replaced --------------------
LANGCHAIN_SETTINGS = [(250, 32), (64, 16), (32, 0)]
WORDS = sorted({w.strip(".,").lower() for w in ENGLISH.split()})
HANZI = "".join(sorted({c for c in CHINESE_TEXT if "\u4e00" <= c <= "\u9fff"}))  # CJK ideographs only


def english_prose(rng: random.Random, paragraphs: int) -> str:
    def sentence() -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 28))]
        for i in range(2, len(words) - 1, rng.randint(4, 9)):
            words[i] += ","
        return " ".join(words).capitalize() + rng.choice(".....!?;")

    return "\n\n".join(" ".join(sentence() for _ in range(rng.randint(1, 12))) for _ in range(paragraphs))


def chinese_prose(rng: random.Random, paragraphs: int) -> str:
    def sentence() -> str:
        clauses = ["".join(rng.choice(HANZI) for _ in range(rng.randint(3, 30))) for _ in range(rng.randint(1, 4))]
        return "，".join(clauses) + rng.choice("。。。。！？；")

    return "\n\n".join("".join(sentence() for _ in range(rng.randint(1, 14))) for _ in range(paragraphs))


def markdown(rng: random.Random, sections: int) -> str:
    parts = []
    for n in range(sections):
        items = "\n".join(f"- {english_prose(rng, 1)[: rng.randint(10, 200)]}" for _ in range(rng.randint(2, 9)))
        parts.append(f"## Section {n}\n\n{english_prose(rng, rng.randint(1, 3))}\n\n{items}\n\n{chinese_prose(rng, 1)}")
    return "# Manual\n\n" + "\n\n".join(parts)


def csv_rows(rng: random.Random, rows: int) -> str:
    def cell() -> str:
        return rng.choice(
            [str(rng.randint(0, 10**6)), f"{rng.random():.4f}", rng.choice(WORDS), f'"{rng.choice(WORDS)}, x"']
        )

    return "\n".join(",".join(cell() for _ in range(rng.randint(3, 15))) for _ in range(rows))


def generated_pages() -> list[Page]:
    rng = random.Random(7)
    texts = {
        "english.txt": english_prose(rng, 40),
        "english-one-paragraph.txt": english_prose(rng, 1) * 30,
        "chinese.txt": chinese_prose(rng, 30),
        "chinese-long-paragraph.txt": chinese_prose(rng, 1) * 40,
        "manual.md": markdown(rng, 8),
        "table.csv": csv_rows(rng, 300),
        "mixed.txt": ENGLISH + "\n" + CHINESE_TEXT * 12 + "\n\n" + english_prose(rng, 5),
    }
    return [Page(text, name) for name, text in texts.items()]


def langchain_chunks(embedder, text: str, size: int, overlap: int) -> list[str]:
    """The chunks of `text` as the chunker made them before it was hand-written: langchain's splitter
    configured as it was, the embedding model's tokenizer as length function."""

    def count(t: str) -> int:
        return len(embedder.tokenizer.encode(t, add_special_tokens=False, verbose=False))

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=size,
        chunk_overlap=overlap,
        length_function=count,
        separators=SEPARATORS,
        keep_separator="end",
        strip_whitespace=True,
    )
    chunks = [c for c in splitter.split_text(text) if c.strip()]
    assert all(count(c) <= embedder.max_tokens for c in chunks)  # so its limit cut left them as they were
    return chunks


def assert_same_as_langchain(embedder, pages: list[Page], size: int, overlap: int) -> int:
    """How many pages were compared.  Pages holding a Markdown table are chunked differently on
    purpose (rows kept whole, the header repeated) and left out."""
    chunks = make(embedder, size, overlap).split_pages(pages)  # one file: its pages share one count memo
    by_page: dict[tuple[str, int | None], list[str]] = {}
    for chunk in chunks:
        by_page.setdefault((chunk.source, chunk.page_no), []).append(chunk.text)
    assert len({(p.source, p.page_no) for p in pages}) == len(pages)
    pages = [page for page in pages if not _table_blocks(page.text)]
    for page in pages:
        expected = langchain_chunks(embedder, page.text, size, overlap)
        assert by_page.get((page.source, page.page_no), []) == expected, f"{page.source} page {page.page_no}"
    return len(pages)


@pytest.mark.parametrize(("size", "overlap"), LANGCHAIN_SETTINGS)
def test_same_chunks_as_langchain_on_the_sample_documents(embedder, size: int, overlap: int) -> None:
    pages = [page for path in sorted(SAMPLES.iterdir()) for page in load_file(path, path.read_bytes())]
    assert {Path(p.source).suffix for p in pages} >= {".pdf", ".md", ".txt", ".html"}
    assert assert_same_as_langchain(embedder, pages, size, overlap) >= 6


@pytest.mark.parametrize(("size", "overlap"), LANGCHAIN_SETTINGS)
def test_same_chunks_as_langchain_on_generated_english_chinese_markdown_and_csv(
    embedder, size: int, overlap: int
) -> None:
    assert assert_same_as_langchain(embedder, generated_pages(), size, overlap) > 0


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize(("size", "overlap"), LANGCHAIN_SETTINGS[:2])
def test_same_chunks_as_langchain_on_shared_documents(embedder, size: int, overlap: int) -> None:
    scifact = shared_path("beir", "scifact", "corpus.jsonl")
    with open(scifact, encoding="utf-8") as fh:
        docs = [json.loads(line) for line in itertools.islice(fh, 40)]
    pages = [Page(f"{d['title']}\n\n{d['text']}", f"scifact/{d['_id']}") for d in docs]
    assert assert_same_as_langchain(embedder, pages, size, overlap) == 40
    pdfs = sorted(shared_path("docs").rglob("*.pdf"))
    assert len(pdfs) > 5
    compared = 0
    for pdf in pdfs:
        try:
            pages = load_file(pdf, pdf.read_bytes(), ocr=OcrSettings(mode="off"))
        except LoadError:  # the scanned ones: no text layer
            continue
        compared += assert_same_as_langchain(embedder, pages, size, overlap)  # a file may be all tables
    assert compared >= 20, "enough PDF pages without tables were compared"


# ---- any text in time linear in its length ---------------------------------------------------
def no_spaces(n_chars: int, seed: int = 0) -> str:
    """Text without whitespace or any other separator, as in an inlined attachment or a minified file."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "+/=-_:." + HANZI[:20]
    return "".join(rng.choices(alphabet, k=n_chars))


def single_line(n_chars: int, seed: int = 0) -> str:
    """Space-separated words with commas and full stops, English and Chinese, and not one newline."""
    rng = random.Random(seed)
    words = [*WORDS, *("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 12))) for _ in range(3000))]
    words += [w + "," for w in words[:40]] + [w + "." for w in words[40:80]] + [HANZI[i : i + 5] for i in range(60)]
    text = " ".join(rng.choices(words, k=n_chars // 6))
    while len(text) < n_chars:
        text = f"{text} {text}"
    return text[:n_chars]


def assert_chunks_cover(embedder, text: str, chunks: list) -> None:
    """Each chunk is its page's text at its offsets and within the model's limit, and together they
    leave out nothing but whitespace between them."""
    assert chunks
    for chunk in chunks:
        assert text[chunk.char_start : chunk.char_end] == chunk.text
    assert chunks[0].char_start == len(text) - len(text.lstrip())
    assert chunks[-1].char_end == len(text.rstrip())
    for a, b in itertools.pairwise(chunks):
        assert a.char_start < b.char_start
        assert b.char_start <= a.char_end or not text[a.char_end : b.char_start].strip()
    ids = embedder.tokenizer([c.text for c in chunks], add_special_tokens=False, verbose=False)["input_ids"]
    assert max(map(len, ids)) <= embedder.max_tokens


@pytest.mark.slow
def test_three_megabytes_without_spaces(embedder) -> None:
    text = no_spaces(3_000_000)
    chunks = make(embedder, 250, overlap=32).split_pages([Page(text, "blob.txt")])
    assert len(chunks) > 10_000
    assert_chunks_cover(embedder, text, chunks)


@pytest.mark.slow
def test_a_multi_megabyte_single_line(embedder) -> None:
    text = single_line(5_000_000)
    chunks = make(embedder, 250, overlap=32).split_pages([Page(text, "export.txt")])
    assert len(chunks) > 5_000
    assert_chunks_cover(embedder, text, chunks)


class CountingTokenizer:
    """The real tokenizer, counting the calls that tokenize text; past `limit` the test fails at
    once, so a splitter that calls it per word or per character fails fast instead of crawling."""

    def __init__(self, inner, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.calls = 0

    def _count(self) -> None:
        self.calls += 1
        if self.calls > self.limit:
            pytest.fail(f"more than {self.limit} tokenizer calls: the text is tokenized piece by piece")

    def __call__(self, *args, **kwargs):
        self._count()
        return self.inner(*args, **kwargs)

    def encode(self, *args, **kwargs):
        self._count()
        return self.inner.encode(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@pytest.mark.parametrize("make_text", [no_spaces, single_line], ids=["no-spaces", "single-line"])
def test_tokenizer_calls_grow_far_slower_than_the_text(embedder, make_text) -> None:
    """1 MB: langchain's splitter tokenized each character (~1,000,000 calls) or each word
    (~170,000); this one tokenizes a file's distinct words in one call per megabyte."""
    text = make_text(1_000_000)
    tokenizer = CountingTokenizer(embedder.tokenizer, limit=100)
    chunks = Chunker(ChunkSettings(), tokenizer, embedder.max_tokens).split_pages([Page(text, "big.txt")])
    assert len(chunks) > 1000
    assert tokenizer.calls <= 100


def test_progress_is_reported_inside_a_large_page(embedder) -> None:
    pages = [Page("A small first page. " * 10, "f.txt", 1), Page(single_line(3_500_000), "f.txt", 2)]
    pages.append(Page(no_spaces(1_500_000), "f.txt", 3))
    calls: list[tuple[int, int]] = []
    make(embedder, 250, 32).split_pages(pages, progress=lambda done, total: calls.append((done, total)))
    total = sum(len(p.text) for p in pages)
    assert calls[-1] == (total, total)
    assert {t for _, t in calls} == {total}
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(set(done)) == len(done)
    assert sum(d < len(pages[0].text) + len(pages[1].text) for d in done) >= 3  # inside page 2, not only after it
    assert len(calls) <= total // 1_000_000 + 2  # about one a megabyte: cheap for the caller


def test_a_tokenizer_that_is_not_wordpiece_still_keeps_every_chunk_within_the_limit(embedder) -> None:
    """Token counts from a tokenizer that marks word starts (SentencePiece style) are estimates:
    every chunk is re-checked against the model's limit."""
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(embedder.tokenizer.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.no_padding()
    backend.no_truncation()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    text = ENGLISH + "\n\n" + CHINESE_TEXT + no_spaces(20_000) + " " + single_line(50_000)
    chunker = Chunker(ChunkSettings(size=64, overlap=8), tokenizer, 64)
    assert not chunker.wordpiece
    chunks = chunker.split_pages([Page(text, "doc.txt")])
    assert len(chunks) > 100
    for chunk in chunks:
        assert text[chunk.char_start : chunk.char_end] == chunk.text
        assert chunker.count_tokens(chunk.text) <= 64


# ---- Markdown tables: rows kept whole, the header repeated -----------------------------------
def table_page(n_rows: int = 80) -> str:
    """A statement's title and a paragraph, its table in Markdown (as ingest.tables makes it), a note."""
    from ingest.tables import to_markdown
    from tests.fixtures.tables import TITLE, cash_flow_rows

    intro = f"{TITLE}\n\n" + "The statement shows where cash came from and went. " * 3
    return f"{intro}\n\n{to_markdown(cash_flow_rows(n_rows))}\n\nThe notes are part of this statement."


@pytest.mark.parametrize(("size", "overlap"), [(250, 32), (64, 16)])
def test_a_long_table_is_split_between_rows_and_every_piece_repeats_the_header(embedder, size, overlap) -> None:
    from ingest.tables import to_markdown
    from tests.fixtures.tables import HEADER

    text = table_page()
    chunker = make(embedder, size, overlap)
    chunks = chunker.split_pages([Page(text, "cf.md", page_no=3, metadata={"read": "text"})])
    header = to_markdown([HEADER, HEADER]).splitlines()[0]
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and ln != header and not ln.startswith("| ---")]
    table_chunks = [c for c in chunks if "| --- |" in c.text]
    assert len(table_chunks) > 2
    seen: list[str] = []
    for chunk in table_chunks:
        lines = chunk.text[chunk.text.index(header) :].splitlines()
        assert lines[0] == header and lines[1].startswith("| --- |")  # every piece starts with the header
        assert all(line in rows for line in lines[2:])  # only whole rows
        seen += lines[2:]
        assert chunker.count_tokens(chunk.text) <= size
        repeated = chunk.metadata.get("repeated_header", 0)
        assert chunk.text[repeated:] == text[chunk.char_start : chunk.char_end]
        assert chunk.metadata["read"] == "text"
    assert seen == rows  # every row once, in order: no overlap inside a table
    first, repeated = table_chunks[0], table_chunks[0].metadata.get("repeated_header")
    assert repeated is None or text.startswith(first.text[:repeated].rstrip()), "only a short intro is repeated"
    assert all(c.metadata["repeated_header"] > 0 for c in table_chunks[1:])
    assert "|" not in "".join(c.text for c in chunks if c not in table_chunks)


def test_a_short_title_is_repeated_in_the_first_table_chunk_of_a_page_and_text_after_is_split_as_before(
    embedder,
) -> None:
    from ingest.tables import to_markdown

    table = to_markdown([["part", "warranty"], ["module", "10 years"], ["inverter", "5 years"]])
    after = ENGLISH[:2000]
    text = f"Warranty terms\n\n{table}\n\n{after}"
    chunker = make(embedder, 60, 10)
    chunks = chunker.split_pages([Page(text, "w.pdf", page_no=1)])
    assert [c.text for c in chunks[:2]] == ["Warranty terms", f"Warranty terms\n\n{table}"]
    assert text[chunks[1].char_start : chunks[1].char_end] == table
    assert [c.text for c in chunks[2:]] == [c.text for c in chunker.split_pages([Page(after, "w.pdf", page_no=1)])]
    unpaged = chunker.split_pages([Page(text, "w.md")])  # no page for the retriever to widen: one chunk
    assert unpaged[0].text == f"Warranty terms\n\n{table}"
    intro = "The warranty terms below depend on the part and on how the system was installed and used. "
    joined = chunker.split_pages([Page(f"{intro}\n\n{table}", "w.md")])  # longer text: one chunk when it fits
    assert joined[0].text == f"{intro}\n\n{table}"


def test_a_statements_title_is_repeated_in_a_long_tables_first_chunk(embedder) -> None:
    from ingest.tables import to_markdown
    from tests.fixtures.tables import TITLE, cash_flow_rows

    title = f"{TITLE}\nYears ended December 31"
    text = f"{title}\n\n{to_markdown(cash_flow_rows(80))}"
    chunker = make(embedder, 250, 32)
    chunks = chunker.split_pages([Page(text, "cf.pdf", page_no=48)])
    assert chunks[0].text == title, "the title stays a chunk of its own"
    first = chunks[1]
    assert first.text.startswith(title) and "| --- |" in first.text and "| Net income including" in first.text
    assert first.text[first.metadata["repeated_header"] :] == text[first.char_start : first.char_end]
    assert text[first.char_start :].startswith("| (in millions"), "its span is the table's"
    assert all(chunker.count_tokens(c.text) <= 250 for c in chunks)
    assert sum(c.text.startswith(TITLE) for c in chunks) == 2


def test_a_row_longer_than_a_chunk_is_kept_whole_with_the_header(embedder) -> None:
    from ingest.tables import to_markdown

    long_cell = "the tariff applies to every kilowatt hour exported to the grid " * 4
    rows = [["term", "meaning"], ["a", "short"], ["export", long_cell], ["b", "short too"]]
    text = to_markdown(rows)
    chunks = make(embedder, 40, 0).split_pages([Page(text, "t.md")])
    header = text.splitlines()[0]
    row = text.splitlines()[3]
    assert any(c.text.endswith(row) and c.text.startswith(header) for c in chunks)
    assert all(c.text.startswith(header) for c in chunks)


def test_a_table_row_over_the_model_limit_is_still_cut_below_it(embedder) -> None:
    from ingest.tables import to_markdown

    text = to_markdown([["k", "v"], ["x", "word " * 600], ["y", "z"]])
    chunker = make(embedder, 100, 0)
    chunks = chunker.split_pages([Page(text, "t.md")])
    assert max(chunker.count_tokens(c.text) for c in chunks) <= embedder.max_tokens
    for c in chunks:
        repeated = c.metadata.get("repeated_header", 0)
        assert c.text[repeated:] == text[c.char_start : c.char_end]
