"""Pages -> chunks: recursive splitting on English and Chinese boundaries, sized in the
embedding model's own tokens so no chunk is silently truncated by the embedder.

The splitter is hand-written.  It was langchain's ``RecursiveCharacterTextSplitter`` with the
tokenizer as its length function, which tokenizes every split on its own: once per word at the
" " level and once per character at the "" level.  On text without separators that is millions
of tokenizer calls (3 MB without spaces took 6 minutes, a 30 MB single-line file 9).  This module
runs the same algorithm (same separators in the same order, separator kept at the end of its split,
"good split" below `size`, langchain's merge and overlap rules, whitespace stripped) on character
spans of the page, with token counts taken from one pass over the page, so its time is linear in
the text.  With a WordPiece (BERT) tokenizer, the default, its chunks are the ones langchain made
(tests/ingest/test_chunking.py compares them on real documents) on text without tables.

Markdown tables (a header line, a `| --- |` separator line and rows, every line starting with `|`:
what ingest.tables makes of PDF and DOCX tables) are cut out of the page first; the text between
them goes through the splitter above unchanged.  A table is never split inside a row: its rows are
packed into chunks of at most `size` tokens, and every chunk after the first starts with the
header and separator lines again, so a chunk about "2019 capital expenditure" still says which
column is 2019.  Such a chunk's text is not a slice of the page: `char_start`/`char_end` span its
rows, and its metadata says how many characters of repeated header come first
(``chunk.text[metadata["repeated_header"]:] == page.text[char_start:char_end]``).  A short
passage just before a table (its title, say) shares the table's first chunk when both fit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import numpy as np

from ingest.context import DocumentContext
from ingest.layout import chunk_boxes, page_size
from rag.config import ChunkSettings
from rag.types import Chunk, Page

# Paragraphs, lines, then sentence ends (Chinese full-width and English), clauses, words, chars.
SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", ". ", "! ", "? ", "; ", "，", ", ", " ", ""]

_CONTEXT_CHARS = 160  # title and heading path, each about 30 tokens at most: they ride in the embedder window
# v2: Markdown tables split between rows, header repeated; v3: a PDF table's header lines above its
# rules, amounts aligned under them, and a short title before a table repeated in its first chunk.
CHUNKER_VERSION = "recursive-v3"

Progress = Callable[[int, int], None]

# Token counts come from "units": runs of text up to and including one of the separators' last
# characters, plus the whitespace after it.  Every cut above the character level falls right after
# such a character, so on a unit boundary or inside a unit's trailing whitespace; and WordPiece
# tokenizes text cut at whitespace or punctuation piece by piece.  So a split's count is the sum of
# its units' counts, each unit tokenized alone: what langchain measured, at a dictionary look-up per
# unit once a file's vocabulary has been seen.
_BREAKS = re.escape("".join(sorted({sep[-1] for sep in SEPARATORS if sep})))
_UNIT = re.compile(rf"[^{_BREAKS}]+[ \t\n\r]*|[{_BREAKS}][ \t\n\r]*")
_BREAK = re.compile(rf"[{_BREAKS}]")
_BLOCK = 1 << 20  # characters per pass of the unit regex and per numpy scan: bounds memory
_CACHE_MAX_LEN = 64  # longer units (Chinese clauses, blobs) rarely repeat: not memoized
_CACHE_MAX_ITEMS = 500_000
_CHECK_BATCH = 512  # chunks re-tokenized per tokenizer call by the limit check
_PROGRESS_STEP = 1 << 20  # characters between progress calls
_UNICODE = 0x110000

# A Markdown table: consecutive lines starting with "|", the second of them a separator line.
_TABLE_BLOCK = re.compile(r"^\|[^\n]*(?:\n\|[^\n]*)+", re.MULTILINE)
_TABLE_SEPARATOR = re.compile(r"\|(?:[ \t]*:?-{3,}:?[ \t]*\|)+[ \t\r]*")
# A header taking more than this share of `size` is not repeated: the pieces would be mostly header.
_MAX_HEADER_SHARE = 0.5
# Text before a table on a page taking at most this share of `size` is repeated at the head of its first chunk.
_MAX_TITLE_SHARE = 0.25
_JOIN_SLACK = 2  # tokens the line breaks between a title and its table may add

# (start in the page, text, known to fit, characters of repeated table header at the front of text)
Piece = tuple[int, str, bool, int]


def chunker_fingerprint(settings: ChunkSettings) -> str:
    """Recorded per document: changing chunk settings re-chunks files on the next ingest."""
    if settings.method == "page":
        return "page-v1"
    context = ":context-v1" if settings.context else ""
    return f"{CHUNKER_VERSION}:{settings.size}:{settings.overlap}{context}"


class Chunker:
    def __init__(self, settings: ChunkSettings, tokenizer, max_tokens: int) -> None:
        if settings.method == "recursive" and settings.size > max_tokens:
            raise ValueError(
                f"chunk.size is {settings.size} tokens but the embedding model reads at most {max_tokens}; "
                f"set chunk.size <= {max_tokens} so nothing is silently cut off"
            )
        self.settings = settings
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.wordpiece = _is_wordpiece(tokenizer)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False, verbose=False))

    def split_pages(self, pages: list[Page], progress: Progress | None = None) -> list[Chunk]:
        """Chunks of all pages, numbered in order.  `progress(done, total)`, in characters over all
        pages, is called about every megabyte and once at the end, so a large file shows movement."""
        reporter = _Reporter(progress, sum(len(p.text) for p in pages))
        counter = _TokenCounter(self.tokenizer, self.wordpiece)  # one memo per file: its pages share words
        chunks: list[Chunk] = []
        offset = 0
        context = DocumentContext(pages) if self.settings.context else None
        for index, page in enumerate(pages):
            paged = page.page_no is not None
            for start, piece, repeated in self._split_with_offsets(page.text, counter, reporter.after(offset), paged):
                end = start + len(piece) - repeated  # a table chunk's repeated header is not in the span
                metadata = _placed(page, start, end)
                if context is not None:
                    _add_context(metadata, context, index, start)
                if repeated:
                    metadata["repeated_header"] = repeated
                chunks.append(
                    Chunk(
                        text=piece,
                        source=page.source,
                        page_no=page.page_no,
                        ordinal=len(chunks),
                        char_start=start,
                        char_end=end,
                        metadata=metadata,
                    )
                )
            offset += len(page.text)
            reporter(offset)
        reporter.finish()
        return chunks

    def _split_with_offsets(
        self,
        text: str,
        counter: _TokenCounter | None = None,
        progress: Callable[[int], None] | None = None,
        paged: bool = False,
    ) -> list[tuple[int, str, int]]:
        """(start, text, characters of repeated table header at the front of text) per chunk;
        `paged`: the text is one page of a paged document (a PDF page, an image)."""
        if self.settings.method == "page":
            start = len(text) - len(text.lstrip())
            piece = text.strip()
            return [(start, piece, 0)] if piece else []
        counter = counter or _TokenCounter(self.tokenizer, self.wordpiece)
        tables = _table_blocks(text)
        if not tables:
            pieces = [(*p, 0) for p in _PageSplit(text, self.settings, self.max_tokens, counter, progress).run()]
            return self._enforce_limit(pieces, counter, progress)
        pieces: list[Piece] = []
        done = 0
        for a, b in [*tables, (len(text), len(text))]:
            if done < a:
                sub = None if progress is None else (lambda d, base=done: progress(base + d))
                split = _PageSplit(text[done:a], self.settings, self.max_tokens, counter, sub).run()
                pieces += [(done + start, piece, fits, 0) for start, piece, fits in split]
            if a < b:
                pieces += self._table_after(text, a, b, pieces, counter, paged)
            done = b
        return self._enforce_limit(pieces, counter, progress)

    def _table_after(
        self, text: str, a: int, b: int, pieces: list[Piece], counter: _TokenCounter, paged: bool
    ) -> list[Piece]:
        """The pieces of the table text[a:b], with the last of `pieces`, the text just before it.

        On a page, short text (a statement's title: "Consolidated Statement of Income / Years
        ended December 31") stays a chunk of its own and is also repeated at the head of the
        table's first chunk, which leaves room for it.  On its own, a title is short and all the
        words a question about the statement uses, so it ranks its page well (merged into the
        rows, FinanceBench's own-filing hit@5 fell from 0.723 to 0.663); repeated, the rows carry
        the statement's name, and the retriever gives the model those rows where the title alone
        came up for the page (`_widen`, which needs a page).  Otherwise the text joins the table's
        first chunk when together they fit, else stands apart."""
        before = pieces[-1] if pieces and pieces[-1][3] == 0 and pieces[-1][0] < a else None
        if before is None:
            return self._table_pieces(text, a, b, counter)
        lead = int(np.diff(counter.token_starts([before[1]])[1])[0]) + _JOIN_SLACK
        if paged and lead <= self.settings.size * _MAX_TITLE_SHARE:
            rows = self._table_pieces(text, a, b, counter, lead)
            start, first, _, _ = rows[0]
            prefix = before[1] + "\n\n"
            rows[0] = (start, prefix + first, False, len(prefix))  # re-counted by _enforce_limit
            return rows
        rows = self._table_pieces(text, a, b, counter)
        joined = self._join_before(text, before, rows[0], counter)
        if len(joined) == 1:
            pieces.pop()
            return joined + rows[1:]
        return rows

    def _table_pieces(self, text: str, a: int, b: int, counter: _TokenCounter, lead: int = 0) -> list[Piece]:
        """The Markdown table text[a:b] in chunks of whole rows, at most `size` tokens each where
        a row allows; every chunk after the first starts with the header and separator lines.
        `lead`: tokens the first chunk leaves for the text before the table."""
        starts = [a] + [a + i + 1 for i, ch in enumerate(text[a:b]) if ch == "\n"]
        lines = [text[s:e].rstrip() for s, e in zip(starts, [s - 1 for s in starts[1:]] + [b], strict=True)]
        ends = [s + len(line) for s, line in zip(starts, lines, strict=True)]
        counts = counter.counts(lines).tolist()
        head = text[a : starts[min(2, len(starts) - 1)]]
        head_tokens = counts[0] + counts[1]
        repeat = head_tokens <= self.settings.size * _MAX_HEADER_SHARE

        def piece(first: int, last: int, tokens: int) -> Piece:
            if first == 0:  # the table's first chunk: a plain slice from its header on
                return (a, text[a : ends[last]], self.wordpiece and tokens <= self.max_tokens, 0)
            body = text[starts[first] : ends[last]]
            if repeat and tokens > self.max_tokens:  # the model could not read header and row together
                tokens -= head_tokens
            prefix = head if repeat and tokens <= self.max_tokens else ""
            # WordPiece counts of lines add up across line breaks: exact
            return (starts[first], prefix + body, self.wordpiece and tokens <= self.max_tokens, len(prefix))

        pieces: list[Piece] = []
        first, tokens, rows = 0, head_tokens + lead, 0
        for k in range(2, len(lines)):
            if rows and tokens + counts[k] > self.settings.size:
                pieces.append(piece(first, k - 1, tokens - (lead if first == 0 else 0)))
                first, tokens, rows = k, head_tokens if repeat else 0, 0
            tokens += counts[k]
            rows += 1
        pieces.append(piece(first, len(lines) - 1, tokens - (lead if first == 0 else 0)))
        return pieces

    def _join_before(self, text: str, before: Piece, first: Piece, counter: _TokenCounter) -> list[Piece]:
        """The chunk just before a table and the table's first chunk as one, when together they
        stay within `size` (a table's title then travels with its header); else both as they are."""
        start, _, fits, _ = before
        joined = text[start : first[0] + len(first[1])]
        if not (fits and first[2]):
            return [before, first]
        tokens = int(np.diff(counter.token_starts([joined])[1])[0])
        if tokens > self.settings.size:
            return [before, first]
        return [(start, joined, True, 0)]

    def _enforce_limit(
        self, pieces: list[Piece], counter: _TokenCounter, progress: Callable[[int], None] | None
    ) -> list[tuple[int, str, int]]:
        """The splitter adds up counts of parts; a joined text can tokenize longer (characters
        counted one by one, or a tokenizer whose counts are estimates).  Re-tokenize each chunk not
        known to fit, a batch per call, and cut any over the model's limit at token boundaries, so
        nothing is truncated unseen (a table chunk that must be cut loses its repeated header).
        `pieces` are (start, text, known_to_fit, repeated header characters)."""
        cuts: dict[int, list[tuple[int, str, int]]] = {}
        unsure = [k for k, p in enumerate(pieces) if not p[2]]
        for first in range(0, len(unsure), _CHECK_BATCH):
            batch = unsure[first : first + _CHECK_BATCH]
            starts, bounds = counter.token_starts([pieces[k][1] for k in batch])
            for i in np.flatnonzero(np.diff(bounds) > self.max_tokens).tolist():
                start, piece, _, repeated = pieces[batch[i]]
                if repeated:
                    piece = piece[repeated:]
                    token_starts = counter.token_starts([piece])[0].tolist()
                else:
                    token_starts = starts[bounds[i] : bounds[i + 1]].tolist()
                cuts[batch[i]] = [(s, p, 0) for s, p in self._cut(start, piece, token_starts)]
            if progress is not None:
                progress(pieces[batch[-1]][0])
        out: list[tuple[int, str, int]] = []
        for k, (start, piece, _, repeated) in enumerate(pieces):
            out.extend(cuts.get(k, [(start, piece, repeated)]))
        return out

    def _cut(self, start: int, piece: str, token_starts: list[int]) -> list[tuple[int, str]]:
        """`piece` (at `start` in its page) in windows of max_tokens tokens, each stripped."""
        parts = []
        for i in range(0, len(token_starts), self.max_tokens):
            end = token_starts[i + self.max_tokens] if i + self.max_tokens < len(token_starts) else len(piece)
            parts.extend(_stripped(piece, token_starts[i], end, start))
        return parts


def _add_context(metadata: dict, context: DocumentContext, page_index: int, start: int) -> None:
    """The title and nearest heading, kept short: they ride in the embedder's window with the chunk,
    whose last tokens (also the next chunk's first, by the overlap) they may push out of it."""
    if context.title:
        metadata["title"] = context.title[:_CONTEXT_CHARS]
    heading = context.heading(page_index, start)
    if heading:
        metadata["heading"] = heading[:_CONTEXT_CHARS]


def _placed(page: Page, start: int, end: int) -> dict:
    """The page's metadata, plus where characters start..end-1 sit on the page when it is known."""
    metadata = dict(page.metadata)
    if page.layout is not None:
        metadata["boxes"] = chunk_boxes(page.layout, start, end)
        metadata["page_size"] = page_size(page.layout)
    return metadata


def _table_blocks(text: str) -> list[tuple[int, int]]:
    """Spans of the Markdown tables in `text`, in order: runs of two or more lines starting with
    "|" whose second line is a separator (`| --- | --- |`)."""
    if "|" not in text or "-|" not in text.replace(" ", "").replace(":", ""):
        return []
    found = []
    for m in _TABLE_BLOCK.finditer(text):
        second = m.group().split("\n", 2)[1]
        if _TABLE_SEPARATOR.fullmatch(second):
            found.append((m.start(), m.end()))
    return found


def _is_wordpiece(tokenizer) -> bool:
    """BERT WordPiece tokenizers tokenize text cut at whitespace or punctuation piece by piece, so
    unit counts add up to exact span counts.  Others (SentencePiece, byte-level BPE) mark word
    starts, so a unit counted alone can differ from the same words in context: their counts are
    estimates, chunks can differ from langchain's, and every chunk is re-checked against the limit."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    return type(backend.pre_tokenizer).__name__ == "BertPreTokenizer" and type(backend.model).__name__ == "WordPiece"


def _stripped(text: str, begin: int, end: int, offset: int = 0) -> list[tuple[int, str]]:
    """text[begin:end] without surrounding whitespace, with its start (+ offset); [] if blank."""
    piece = text[begin:end]
    kept = piece.strip()
    if not kept:
        return []
    return [(offset + begin + len(piece) - len(piece.lstrip()), kept)]


class _Reporter:
    """Forwards (done, total) to the caller's callback at most every _PROGRESS_STEP characters and
    never backwards, so the splitter may call it as often as it likes."""

    def __init__(self, callback: Progress | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.done = 0
        self.next = _PROGRESS_STEP

    def __call__(self, done: int) -> None:
        if self.callback is not None and done >= self.next:
            self.done = min(done, self.total)
            self.next = self.done + _PROGRESS_STEP
            self.callback(self.done, self.total)

    def after(self, offset: int) -> Callable[[int], None]:
        """A callback for one page that starts `offset` characters into the file."""
        return lambda done: self(offset + done)

    def finish(self) -> None:
        if self.callback is not None and self.total and self.done < self.total:
            self.callback(self.total, self.total)


class _TokenCounter:
    """Token counts of strings, each tokenized alone as langchain's length function did, memoized:
    a file's words and characters repeat, so most counts are dictionary look-ups and the tokenizer
    sees each distinct short string once, in one call per batch."""

    def __init__(self, tokenizer, wordpiece: bool) -> None:
        self.tokenizer = tokenizer
        self.wordpiece = wordpiece
        self.known: dict[str, int] = {}
        self._char_counts: np.ndarray | None = None  # by code point; -1: not seen yet
        self._char_most: np.ndarray | None = None

    def counts(self, pieces: list[str]) -> np.ndarray:
        known = self.known
        if len(known) > _CACHE_MAX_ITEMS:
            known.clear()
        new = list(set(pieces).difference(known))
        if new:
            known.update(zip(new, np.diff(self.token_starts(new)[1]).tolist(), strict=True))
        out = np.fromiter(map(known.__getitem__, pieces), dtype=np.int64, count=len(pieces))
        for p in new:
            if len(p) > _CACHE_MAX_LEN:
                del known[p]
        return out

    def token_starts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each text tokenized alone: (starts, bounds), text k's tokens starting at offsets
        starts[bounds[k]:bounds[k + 1]] of that text.  WordPiece gets the texts joined by newlines
        in one call (it tokenizes whitespace-delimited pieces independently, and one long string
        costs far less than thousands of short ones); other tokenizers get a batch call."""
        if not texts:
            return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
        if not self.wordpiece:
            offsets = self._offsets(texts)
            counts = np.fromiter(map(len, offsets), dtype=np.int64, count=len(texts))
            starts = np.fromiter((a for row in offsets for a, _ in row), dtype=np.int64, count=int(counts.sum()))
            return starts, np.concatenate(([0], np.cumsum(counts)))
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        text_starts = np.concatenate(([0], np.cumsum(lengths[:-1] + 1)))
        (offsets,) = self._offsets(["\n".join(texts)])
        joined = np.fromiter((a for a, _ in offsets), dtype=np.int64, count=len(offsets))
        owner = np.searchsorted(text_starts, joined, side="right") - 1
        counts = np.bincount(owner, minlength=len(texts))
        return joined - text_starts[owner], np.concatenate(([0], np.cumsum(counts)))

    def _offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        return self.tokenizer(
            texts,
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )["offset_mapping"]

    def char_counts(self, text: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Per character of `text`: its count tokenized alone (langchain's "" level), and for
        WordPiece the most tokens it can add inside a longer word, its normalized length (a word
        piece covers at least one normalized character); None for other tokenizers."""
        if self._char_counts is None:
            self._char_counts = np.full(_UNICODE, -1, dtype=np.int32)
            self._char_most = np.zeros(_UNICODE, dtype=np.int32)
        counts = np.empty(len(text), dtype=np.int32)
        most = np.empty(len(text), dtype=np.int32)
        for begin in range(0, len(text), _BLOCK):
            cp = _codepoints(text[begin : begin + _BLOCK])
            self._learn_chars(np.unique(cp[self._char_counts[cp] < 0]))
            counts[begin : begin + len(cp)] = self._char_counts[cp]
            most[begin : begin + len(cp)] = self._char_most[cp]
        return counts, most if self.wordpiece else None

    def _learn_chars(self, codes: np.ndarray) -> None:
        if not len(codes):
            return
        assert self._char_counts is not None and self._char_most is not None
        chars = [chr(c) for c in codes.tolist()]
        self._char_counts[codes] = self.counts(chars)
        if self.wordpiece:
            normalizer = self.tokenizer.backend_tokenizer.normalizer
            norm = [normalizer.normalize_str(c) for c in chars] if normalizer is not None else chars
            self._char_most[codes] = [sum(not x.isspace() for x in n) for n in norm]


def _codepoints(text: str) -> np.ndarray:
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _separator_ends(text: str, sep: str, a: int, b: int) -> np.ndarray:
    """Offsets just after each non-overlapping occurrence of `sep` in text[a:b], left to right:
    where re.split, as langchain uses it, cuts.  One- and two-character separators are found
    with numpy a block at a time; others (and "\\n\\n", whose matches may overlap) with re."""
    if len(sep) > 2 or (len(sep) == 2 and sep[0] == sep[1]):
        pattern = re.compile(re.escape(sep))
        return np.fromiter((m.end() for m in pattern.finditer(text, a, b)), dtype=np.int64)
    codes = [ord(c) for c in sep]
    found = []
    for begin in range(a, b, _BLOCK):
        cp = _codepoints(text[begin : min(begin + _BLOCK + len(sep) - 1, b)])
        if cp.dtype == np.uint8 and max(codes) > 0x7F:
            continue
        hit = cp == codes[0] if len(sep) == 1 else (cp[:-1] == codes[0]) & (cp[1:] == codes[1])
        found.append(np.flatnonzero(hit) + (begin + len(sep)))
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def _windows(cum: np.ndarray, lo: int, end: int, size: int, overlap: int) -> Iterator[tuple[int, int]]:
    """langchain's _merge_splits over splits lo..end-1 (each under `size` tokens), as windows
    [first, last) of split indices; `cum[i]` is the tokens before split i.  langchain adds one
    split at a time; here each window's end and the next window's start (dropping splits from
    the front until the overlap and the next split fit) are binary searches on `cum`."""
    find = cum.searchsorted  # the bound method: np.searchsorted's dispatch costs more than the search
    while True:
        nxt = int(find(cum[lo] + size, side="right")) - 1  # the first split that no longer fits
        if nxt >= end:
            yield lo, end
            return
        if lo < nxt:
            yield lo, nxt
        within_overlap = int(find(cum[nxt] - overlap))
        next_fits = int(find(cum[nxt + 1] - size))
        nothing_left = int(find(cum[nxt]))
        lo = max(lo, within_overlap, min(next_fits, nothing_left))


class _PageSplit:
    """One page through the recursive splitter.  `run` returns (start, text, known_to_fit) per
    chunk in page order: known_to_fit when the chunk's count is exact (so at most `size`), or
    bounded by the model's limit."""

    def __init__(
        self,
        text: str,
        settings: ChunkSettings,
        max_tokens: int,
        counter: _TokenCounter,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.text = text
        self.size = settings.size
        self.overlap = settings.overlap
        self.max_tokens = max_tokens
        self.counter = counter
        self.progress = progress
        self.out: list[tuple[int, str, bool]] = []
        self._unit_starts: np.ndarray | None = None
        self._unit_cum: np.ndarray | None = None

    def run(self) -> list[tuple[int, str, bool]]:
        self._split(0, len(self.text), 0)
        return self.out

    def _split(self, a: int, b: int, level: int) -> None:
        """langchain's _split_text on text[a:b] with SEPARATORS[level:]: cut after each occurrence
        of the first separator present, merge runs of splits under `size` tokens, recurse into the
        others with the separators after it."""
        level = next(k for k in range(level, len(SEPARATORS)) if self.text.find(SEPARATORS[k], a, b) >= 0)
        if not SEPARATORS[level]:
            self._split_chars(a, b)
            return
        ends = _separator_ends(self.text, SEPARATORS[level], a, b)
        bounds = np.concatenate((np.array([a]), ends, np.array([b] if ends[-1] < b else [], dtype=np.int64)))
        cum = self._tokens_before(bounds)
        lo = 0
        for j in np.flatnonzero(np.diff(cum) >= self.size).tolist():
            self._merge(bounds, cum, lo, j)
            self._split(int(bounds[j]), int(bounds[j + 1]), level + 1)
            lo = j + 1
        self._merge(bounds, cum, lo, len(bounds) - 1)

    def _merge(self, bounds: np.ndarray, cum: np.ndarray, lo: int, end: int) -> None:
        """Splits lo..end-1 merged into chunks; their counts are exact for WordPiece."""
        if lo < end:
            for first, last in _windows(cum, lo, end, self.size, self.overlap):
                self._emit(int(bounds[first]), int(bounds[last]), self.counter.wordpiece)

    def _split_chars(self, a: int, b: int) -> None:
        """The "" level: every character is a split, counted alone as langchain did.  A character
        of `size` tokens or more is a chunk of its own.  A chunk is known to fit when its
        characters' normalized lengths add up to at most the model's limit."""
        per_char, most = self.counter.char_counts(self.text[a:b])
        cum, cum_most = _cumulative(per_char), None if most is None else _cumulative(most)

        def emit(first: int, last: int) -> None:
            fits = cum_most is not None and int(cum_most[last] - cum_most[first]) <= self.max_tokens
            self._emit(a + first, a + last, fits)

        lo = 0
        for j in [*np.flatnonzero(per_char >= self.size).tolist(), len(per_char)]:
            if lo < j:
                for first, last in _windows(cum, lo, j, self.size, self.overlap):
                    emit(first, last)
            if j < len(per_char):
                emit(j, j + 1)
            lo = j + 1

    def _emit(self, start: int, end: int, fits: bool) -> None:
        for begin, piece in _stripped(self.text, start, end):
            self.out.append((begin, piece, fits))

    def _tokens_before(self, positions: np.ndarray) -> np.ndarray:
        """Tokens of the page before each position (a unit boundary or inside a unit's trailing
        whitespace): the counts of the units that start before it."""
        if self._unit_starts is None:
            self._count_units()
        assert self._unit_starts is not None and self._unit_cum is not None
        return self._unit_cum[self._unit_starts.searchsorted(positions)]

    def _count_units(self) -> None:
        """Cut the page into units, a block of about _BLOCK characters at a time (each ending on a
        unit boundary), and count each unit's tokens."""
        text = self.text
        starts, counts = [], []
        begin = 0
        while begin < len(text):
            found = _BREAK.search(text, min(begin + _BLOCK, len(text)))
            end = found.end() if found else len(text)
            units = _UNIT.findall(text, begin, end)
            lengths = np.fromiter(map(len, units), dtype=np.int64, count=len(units))
            starts.append(np.cumsum(lengths) - lengths + begin)
            counts.append(self.counter.counts(units))
            begin = end
            if self.progress is not None:
                self.progress(end)
        self._unit_starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        self._unit_cum = _cumulative(np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64))


def _cumulative(counts: np.ndarray) -> np.ndarray:
    """[0, c0, c0 + c1, ...]: the total before each index."""
    cum = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=cum[1:])
    return cum
