"""Copying a knowledge base, within a backend or between them, without re-embedding: the
vectors are read from the source, so a user can start local and move to Milvus (or back)."""

from __future__ import annotations

from collections.abc import Callable

from rag.config import Settings
from rag.embed import EmbedderIdentity
from rag.store import KBError, create_store, open_store, store_exists
from rag.store.base import DocumentInfo, Store, StoreWriter

COMMIT_EVERY = 500  # documents between commits: a long copy that stops keeps what it wrote


def copy_base(
    settings: Settings,
    source: str,
    dest: str,
    to_backend: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Copy base `source` (in store.backend) to a new base `dest` in `to_backend` (default: the
    same); returns the documents copied.  `dest` must not exist yet."""
    backend = to_backend or settings.store.backend
    if store_exists(settings, dest, backend):
        raise KBError(f"knowledge base {dest!r} already exists in the {backend} store; delete it or pick another name")
    with open_store(settings, source) as src:
        meta = src.meta()
        identity = EmbedderIdentity(meta["embed_model"], int(meta["embed_dim"]), bool(meta["embed_normalize"]))
        with create_store(settings, dest, identity, backend) as dst, dst.writer() as writer:
            return _copy(src, writer, progress)


def _copy(src: Store, writer: StoreWriter, progress: Callable[[int, int], None] | None) -> int:
    docs = src.documents()
    # Originals first, so each duplicate can point at its original's new id.
    order = sorted(docs, key=lambda d: d.status == "duplicate")
    new_ids: dict[int, int] = {}
    for done, doc in enumerate(order, start=1):
        new_ids[doc.doc_id] = _copy_document(src, writer, doc, new_ids)
        if done % COMMIT_EVERY == 0:
            writer.commit()
        if progress:
            progress(done, len(order))
    writer.commit()
    return len(order)


def _copy_document(src: Store, writer: StoreWriter, doc: DocumentInfo, new_ids: dict[int, int]) -> int:
    fields = {
        "path": doc.path,
        "status": doc.status,
        "sha256": doc.sha256,
        "size": doc.size,
        "mtime": doc.mtime,
        "error": doc.error,
        "pages": doc.pages,
        "chunker": doc.chunker,
    }
    if doc.status == "duplicate":
        return writer.put_document(**fields, content_of=new_ids.get(doc.content_of))
    ids = src.document_chunk_ids(doc.doc_id) if doc.status == "ok" else []
    if not ids:
        return writer.put_document(**fields)
    found = src.chunks(ids)
    chunks = [found[i] for i in ids if i in found]
    vectors = src.vectors([c.chunk_id for c in chunks])
    # The stored BM25 tokens, not the text re-tokenized: ingest indexes each chunk with its
    # document's title and heading too (chunk.context), which the text alone does not hold.
    stored = src.chunk_tokens([c.chunk_id for c in chunks])
    tokens = [" ".join(stored.get(c.chunk_id, [])) for c in chunks]
    return writer.put_document(**fields, chunks=chunks, vectors=vectors, tokens=tokens)
