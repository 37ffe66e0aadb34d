"""Pages -> chunks: recursive splitting on English and Chinese boundaries, sized in the
embedding model's own tokens so no chunk is silently truncated by the embedder."""

from __future__ import annotations

from langchain_text_splitters import RecursiveCharacterTextSplitter

from rag.config import ChunkSettings
from rag.types import Chunk, Page

# Paragraphs, lines, then sentence ends (Chinese full-width and English), clauses, words, chars.
SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", ". ", "! ", "? ", "; ", "，", ", ", " ", ""]

CHUNKER_VERSION = "recursive-v1"


def chunker_fingerprint(settings: ChunkSettings) -> str:
    """Recorded per document: changing chunk settings re-chunks files on the next ingest."""
    if settings.method == "page":
        return "page-v1"
    return f"{CHUNKER_VERSION}:{settings.size}:{settings.overlap}"


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
        self.splitter = RecursiveCharacterTextSplitter(
            chunk_size=settings.size,
            chunk_overlap=settings.overlap,
            length_function=self.count_tokens,
            separators=SEPARATORS,
            keep_separator="end",
            strip_whitespace=True,
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False, verbose=False))

    def split_pages(self, pages: list[Page]) -> list[Chunk]:
        chunks: list[Chunk] = []
        for page in pages:
            for start, piece in self._split_with_offsets(page.text):
                chunks.append(
                    Chunk(
                        text=piece,
                        source=page.source,
                        page_no=page.page_no,
                        ordinal=len(chunks),
                        char_start=start,
                        char_end=start + len(piece),
                        metadata=dict(page.metadata),
                    )
                )
        return chunks

    def _split_with_offsets(self, text: str) -> list[tuple[int, str]]:
        if self.settings.method == "page":
            start = len(text) - len(text.lstrip())
            piece = text.strip()
            return [(start, piece)] if piece else []
        # Chunks come in order and each starts after the previous one's start (overlap only
        # reaches back), so searching from there finds each chunk's own span.
        out: list[tuple[int, str]] = []
        prev = -1
        for piece in self.splitter.split_text(text):
            for part in self._enforce_limit(piece):
                found = text.find(part, prev + 1)
                start = found if found >= 0 else max(prev + 1, 0)
                out.append((start, part))
                prev = start
        return [(s, p) for s, p in out if p.strip()]

    def _enforce_limit(self, piece: str) -> list[str]:
        """The splitter adds up token counts of parts; a joined text can tokenize longer.  Cut any
        chunk still over the model's limit at token boundaries so nothing is truncated unseen."""
        if self.count_tokens(piece) <= self.max_tokens:
            return [piece]
        enc = self.tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        parts = []
        for i in range(0, len(offsets), self.max_tokens):
            window = offsets[i : i + self.max_tokens]
            end = offsets[i + self.max_tokens][0] if i + self.max_tokens < len(offsets) else len(piece)
            parts.append(piece[window[0][0] : end].strip())
        return [p for p in parts if p]
