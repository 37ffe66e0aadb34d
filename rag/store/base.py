"""The store contract: what the ingest pipeline, the retriever, evaluation, tuning, the UI and the
CLI may ask of a knowledge base, whatever holds it.

A knowledge base is a catalog of documents (one row per file: its content hash, status, and why
it failed), their chunks (text, page, character span), one dense vector per chunk, and a keyword
(BM25) index over the chunks.  Two backends implement it: ``local`` (SQLite + FAISS + bm25s in
one folder; rag.store.local) and ``milvus`` (everything in Milvus collections; rag.store.milvus).
tests/store/test_contract.py runs the same tests against both: it is the definition of a store.

Nothing above this package touches SQL, FAISS or Milvus.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag.types import Chunk

DOCUMENT_STATUSES = ("ok", "failed", "empty", "duplicate")


class KBError(Exception):
    """A knowledge-base problem a user can act on; the message says what and how."""


class ModelMismatch(KBError):
    """The base was built with another embedding model: its vectors mean nothing to this one."""


class KBLocked(KBError):
    """Another process is writing the base: try again when it has finished."""


class KBReadOnly(KBError):
    """The base can be searched but not changed (a read-only filesystem, or not writable by us)."""


class StoreUnavailable(KBError):
    """The store cannot be reached or refuses us (a server that does not answer, a wrong token)."""


@dataclass(frozen=True)
class DocumentInfo:
    doc_id: int
    path: str
    sha256: str | None
    size: int | None
    mtime: float | None
    status: str
    error: str | None  # why it failed or is empty; for an "ok" one, a note (pages OCR read nothing on)
    pages: int | None
    chunks: int
    chunker: str | None
    content_of: int | None
    added_at: float


@dataclass(frozen=True)
class Filters:
    """Which documents may answer: a glob on the file path or name, and/or document ids."""

    path_glob: str | None = None
    doc_ids: Sequence[int] | None = None

    def active(self) -> bool:
        return bool(self.path_glob) or self.doc_ids is not None

    def path_matches(self, path: str) -> bool:
        """The glob matches the whole path or the file name (no glob: every path)."""
        if not self.path_glob:
            return True
        return fnmatch.fnmatch(path, self.path_glob) or fnmatch.fnmatch(path.rsplit("/", 1)[-1], self.path_glob)


@dataclass(frozen=True)
class Allowed:
    """A filter resolved by a store: the chunks (local) or documents (milvus) that may answer,
    in whatever form its searches take.  `empty` means nothing can."""

    chunk_ids: np.ndarray | None = None
    doc_ids: tuple[int, ...] | None = None

    @property
    def empty(self) -> bool:
        ids = self.chunk_ids if self.chunk_ids is not None else self.doc_ids
        return ids is not None and len(ids) == 0


Scored = list[tuple[int, float]]  # (chunk id, score), best first


class Store(ABC):
    """Read side of one knowledge base; `writer()` gives the one way to change it."""

    backend: str
    name: str
    read_only: bool = False
    created_now: bool = False  # made by this open: a failed first ingest removes it
    max_text_bytes: int | None = None  # the longest chunk text it can hold (None: no limit)

    # ---- identity and version ----------------------------------------------------------------
    @property
    @abstractmethod
    def location(self) -> str:
        """Where it lives, for people: a folder, or a Milvus URI and collection."""

    @abstractmethod
    def meta(self) -> dict[str, Any]:
        """embed_model, embed_dim, embed_normalize, generation, created_at, index (a description)."""

    @property
    def generation(self) -> int:
        """Counts commits: a long-running reader (the UI) reloads when it changes."""
        return int(self.meta()["generation"])

    def check_embedder(self, name: str, normalize: bool, dimension: int | None = None) -> None:
        """Refuse vectors from another model: they would be silently meaningless here.
        `dimension` may be left out when the model is not loaded yet (the name decides)."""
        meta = self.meta()
        built = (meta["embed_model"], meta["embed_normalize"])
        if built != (name, normalize) or dimension not in (None, meta["embed_dim"]):
            asked = f"{name!r} (normalize={normalize}" + (f", dim {dimension})" if dimension else ")")
            raise ModelMismatch(
                f"knowledge base {self.name!r} was built with embedding model {meta['embed_model']!r} "
                f"(normalize={meta['embed_normalize']}, dim {meta['embed_dim']}), but the settings ask for "
                f"{asked}. Set embed.model = {meta['embed_model']!r} (or RAG_EMBED__MODEL) to use this base, "
                "or ingest into a new knowledge base with --kb."
            )

    # ---- catalog -----------------------------------------------------------------------------
    @abstractmethod
    def documents(self, status: str | None = None) -> list[DocumentInfo]:
        """Every document (or those with `status`), by path."""

    @abstractmethod
    def document_by_path(self, path: str) -> DocumentInfo | None: ...

    @abstractmethod
    def twin(self, sha256: str, chunker: str, path: str) -> int | None:
        """A stored document elsewhere with the same content and chunker: its chunks can serve."""

    @abstractmethod
    def chunk_count(self) -> int: ...

    @abstractmethod
    def size_on_disk(self) -> int | None:
        """Bytes, where the store can say (a server keeps its own accounts: None)."""

    # ---- chunks ------------------------------------------------------------------------------
    @abstractmethod
    def chunks(self, ids: Sequence[int]) -> dict[int, Chunk]:
        """Chunks by id, with their document's path (ids removed since are left out)."""

    @abstractmethod
    def document_chunk_ids(self, doc_id: int) -> list[int]:
        """A document's chunk ids in reading order (a duplicate's are its original's)."""

    @abstractmethod
    def chunk_ids(self, min_chars: int = 0) -> list[tuple[int, int]]:
        """(chunk id, document id) of every chunk of at least `min_chars` characters."""

    @abstractmethod
    def chunk_tokens(self, ids: Sequence[int]) -> dict[int, list[str]]:
        """The BM25 tokens stored with each chunk at ingest, in order, so queries never re-tokenize
        chunks and a copy of the base indexes exactly what the original did (the tokens can hold
        more than the text: ingest adds the document's title and heading, see chunk.context)."""

    @abstractmethod
    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of `ids`, in that order (copying a base needs no re-embedding)."""

    # ---- search ------------------------------------------------------------------------------
    @abstractmethod
    def allowed(self, filters: Filters) -> Allowed:
        """`filters` resolved once per query, for the searches below."""

    @abstractmethod
    def dense_candidates(self, qvec: np.ndarray, k: int, allowed: Allowed | None = None) -> Scored:
        """The `k` chunks nearest `qvec` (inner product of normalized vectors: cosine)."""

    @abstractmethod
    def lexical_candidates(self, query: str, k: int, allowed: Allowed | None = None) -> Scored:
        """The `k` best BM25 matches for `query`; chunks with no query token are not returned.
        Scores are comparable within one query only: fuse them after normalizing per query."""

    @abstractmethod
    def dense_scores(self, qvec: np.ndarray, ids: Sequence[int]) -> dict[int, float]:
        """The exact cosine of `qvec` with each of `ids` (0 for ids no longer stored)."""

    @abstractmethod
    def lexical_scores(self, query: str, ids: Sequence[int]) -> dict[int, float]:
        """Each of `ids`' BM25 score for `query` (0 when it has none of the query's tokens), on one
        scale for this query: what fusion needs for every candidate either retriever found."""

    # ---- writing and closing -----------------------------------------------------------------
    @abstractmethod
    def writer(self, dense_index: str | None = None) -> StoreWriter:
        """The one writer; KBLocked while another holds the base (local), KBReadOnly if it cannot be
        written. `dense_index`: the kind of vector index wanted from the next commit (local only)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StoreWriter(ABC):
    """Stages changes and makes them visible with `commit()`, which returns the new generation.

    A commit is atomic in the local store (a reader sees the previous generation or the next);
    in Milvus each document becomes visible when its catalog row is written (see rag.store.milvus).
    Either way a run killed at any point leaves a base the next run finishes.
    """

    generation: int
    reindex: bool = False  # the next commit rebuilds the keyword index for this version of rag
    convert: bool = False  # the next commit rebuilds the vector index as another kind
    dense_kind: str = "flat"

    @abstractmethod
    def put_document(
        self,
        *,
        path: str,
        status: str,
        sha256: str | None = None,
        size: int | None = None,
        mtime: float | None = None,
        error: str | None = None,
        pages: int | None = None,
        chunker: str | None = None,
        chunks: Sequence[Chunk] = (),
        vectors: np.ndarray | None = None,
        tokens: Sequence[str] | None = None,
        content_of: int | None = None,
    ) -> int:
        """Insert or replace the document at `path` with its chunks and their vectors; returns its
        id. `tokens`: the space-joined BM25 tokens of each chunk, if the caller has them."""

    @abstractmethod
    def touch(self, doc_id: int, *, path: str, mtime: float, size: int) -> None:
        """Same content seen again (moved back, re-saved): update what identifies it cheaply."""

    @abstractmethod
    def remove_documents(self, doc_ids: Iterable[int]) -> int:
        """Remove documents and their vectors; a duplicate of a removed document inherits its
        chunks, so content stored once stays while any path still holds it. Returns chunks removed."""

    @abstractmethod
    def commit(self) -> int: ...

    @abstractmethod
    def rollback(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_vectors(chunks: Sequence[Chunk], vectors: np.ndarray | None) -> np.ndarray:
    if vectors is None or len(vectors) != len(chunks):
        raise ValueError("every chunk needs exactly one vector")
    return np.ascontiguousarray(vectors, dtype=np.float32)
