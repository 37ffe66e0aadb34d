"""The local store: one folder per knowledge base, ``<data_dir>/kb/<name>/``.

- ``kb.sqlite`` (WAL): the catalog (rag.store.catalog).
- ``dense-<G>.faiss``: the vectors of generation G (rag.store.dense).
- ``bm25-<G>/``: the keyword index of generation G (rag.store.bm25).
- ``write.lock``: held (flock) by the one process writing.

Atomicity: the SQLite COMMIT that bumps ``meta.generation`` is the single commit point.  The
index files of generation G+1 are written completely (tmp + fsync + rename) *before* that
commit, under names no reader opens until the commit says G+1 exists.  A crash at any moment
therefore leaves generation G intact and readable; the next writer deletes the orphans.
The previous generation's files are kept one commit longer so that a reader that has just read
the generation number can still open them.  Nothing is pickled.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag.config import Settings, check_kb_name
from rag.embed import EmbedderIdentity
from rag.lexical import tokenize
from rag.store import bm25, catalog, dense, files
from rag.store.base import (
    Allowed,
    DocumentInfo,
    Filters,
    KBError,
    KBLocked,
    KBReadOnly,
    Scored,
    Store,
    StoreWriter,
    check_vectors,
)
from rag.types import Chunk

_GEN_FILE = re.compile(r"^(dense|bm25)-(\d+)(\.faiss)?(\.tmp)?$")


def exists(root: Path) -> bool:
    """True once a base's creation has committed (a crash during creation leaves none)."""
    return catalog.committed(root / catalog.DB_NAME)


class LocalStore(Store):
    """Read side: the catalog, and the indexes of the latest committed generation, loaded lazily
    and reloaded when another process commits, so a long-running reader (the UI) always sees a
    complete generation."""

    backend = "local"

    def __init__(self, root: Path, conn: sqlite3.Connection, read_only: bool = False, ef_search: int = 128) -> None:
        self.root = root
        self.name = root.name
        self.conn = conn
        self.catalog = catalog.Catalog(conn)
        self.read_only = read_only
        self.ef_search = ef_search
        self._dense: tuple[int, Any] | None = None
        self._bm25: tuple[int, bm25.Scorer | None] | None = None

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: Path, ef_search: int = 128) -> LocalStore:
        """For reading (and for a writer); a base we cannot write is opened read-only, so it can
        still be searched."""
        if not exists(root):
            raise KBError(f"no knowledge base at {root}; create it with `rag ingest PATH --kb {root.name}`")
        db = root / catalog.DB_NAME
        try:
            if catalog.writable(root):
                store = cls(root, catalog.connect(db), ef_search=ef_search)
            else:
                store = cls(root, catalog.connect_read_only(db), read_only=True, ef_search=ef_search)
        except sqlite3.DatabaseError as exc:
            raise KBError(f"cannot open the knowledge base at {root}: {exc}") from exc
        store._check_schema()
        return store

    @classmethod
    def create(cls, root: Path, identity: EmbedderIdentity, ef_search: int = 128) -> LocalStore:
        """Open, creating the folder and an empty generation 0 if it is new."""
        try:
            root.mkdir(parents=True, exist_ok=True)
            conn = catalog.connect(root / catalog.DB_NAME)
        except (OSError, sqlite3.OperationalError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise KBError(
                f"cannot create the knowledge base folder {root}: {reason}; set data_dir (or RAG_DATA_DIR) "
                "to a folder you can write"
            ) from exc
        store = cls(root, conn, ef_search=ef_search)
        store.created_now = store.catalog.create(
            {
                "embed_model": identity.name,
                "embed_dim": identity.dimension,
                "embed_normalize": identity.normalize,
                "generation": 0,
                "next_chunk_id": 1,
                "created_at": time.time(),
            }
        )
        store._check_schema()
        store.check_embedder(identity.name, identity.normalize, identity.dimension)
        return store

    def close(self) -> None:
        self.conn.close()

    def _check_schema(self) -> None:
        version = self.meta().get("schema_version")
        if version != catalog.SCHEMA_VERSION:
            raise KBError(
                f"{self.root} has storage schema {version}, this version of rag reads {catalog.SCHEMA_VERSION}"
            )

    # ---- identity and catalog ------------------------------------------------------------------
    @property
    def location(self) -> str:
        return str(self.root)

    def meta(self) -> dict[str, Any]:
        meta = self.catalog.meta()
        meta.setdefault("dense_index", "flat")
        meta["index"] = f"{meta['dense_index']} index"
        return meta

    @property
    def generation(self) -> int:
        return self.catalog.generation()

    def documents(self, status: str | None = None) -> list[DocumentInfo]:
        return self.catalog.documents(status)

    def document_by_path(self, path: str) -> DocumentInfo | None:
        return self.catalog.document_by_path(path)

    def twin(self, sha256: str, chunker: str, path: str) -> int | None:
        return self.catalog.twin(sha256, chunker, path)

    def chunk_count(self) -> int:
        return self.catalog.chunk_count()

    def size_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())

    def chunks(self, ids: Sequence[int]) -> dict[int, Chunk]:
        return self.catalog.chunks(ids)

    def document_chunk_ids(self, doc_id: int) -> list[int]:
        return self.catalog.document_chunk_ids(doc_id)

    def chunk_ids(self, min_chars: int = 0) -> list[tuple[int, int]]:
        return self.catalog.chunk_ids(min_chars)

    def chunk_tokens(self, ids: Sequence[int]) -> dict[int, list[str]]:
        return self.catalog.chunk_tokens(ids)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        return dense.vectors(self.dense_index(), list(ids))

    # ---- search --------------------------------------------------------------------------------
    def allowed(self, filters: Filters) -> Allowed:
        keep = [cid for cid, path in self.catalog.chunk_paths(filters.doc_ids) if filters.path_matches(path)]
        return Allowed(chunk_ids=np.array(keep, dtype=np.int64))

    def dense_candidates(self, qvec: np.ndarray, k: int, allowed: Allowed | None = None) -> Scored:
        return dense.search(self.dense_index(), qvec, k, _chunk_ids(allowed), self.ef_search)

    def lexical_candidates(self, query: str, k: int, allowed: Allowed | None = None) -> Scored:
        scorer = self.bm25_scorer()
        return scorer.top(query, k, _chunk_ids(allowed)) if scorer else []

    def dense_scores(self, qvec: np.ndarray, ids: Sequence[int]) -> dict[int, float]:
        found = dense.vectors(self.dense_index(), list(ids)) @ qvec
        return {int(cid): float(s) for cid, s in zip(ids, found, strict=True)}

    def lexical_scores(self, query: str, ids: Sequence[int]) -> dict[int, float]:
        scorer = self.bm25_scorer()
        return scorer.of(query, ids) if scorer else {int(cid): 0.0 for cid in ids}

    # ---- indexes of the committed generation -----------------------------------------------------
    def dense_index(self):
        """The FAISS index of the latest generation (reloaded when it changes)."""
        for _ in range(3):  # a writer may retire the file between reading meta and opening it
            gen = self.generation
            if self._dense and self._dense[0] == gen:
                return self._dense[1]
            try:
                self._dense = (gen, dense.read(self.root, gen, self.meta()["embed_dim"]))
                return self._dense[1]
            except FileNotFoundError:
                continue
        raise KBError(f"{self.root}: dense index for generation {self.generation} is missing")

    def bm25_scorer(self) -> bm25.Scorer | None:
        """The keyword index of the latest generation, or None when it holds no chunks."""
        for _ in range(3):
            gen = self.generation
            if self._bm25 and self._bm25[0] == gen:
                return self._bm25[1]
            src = bm25.folder(self.root, gen)
            if gen == 0 or (not src.exists() and self.chunk_count() == 0):
                self._bm25 = (gen, None)
                return None
            try:
                self._bm25 = (gen, bm25.Scorer(*bm25.read(src)))
            except FileNotFoundError:
                continue
            return self._bm25[1]
        raise KBError(f"{self.root}: BM25 index for generation {self.generation} is missing")

    # ---- writing -------------------------------------------------------------------------------
    def writer(self, dense_index: str | None = None) -> LocalWriter:
        return LocalWriter(self, dense_index)


def _chunk_ids(allowed: Allowed | None) -> np.ndarray | None:
    return None if allowed is None else allowed.chunk_ids


class LocalWriter(StoreWriter):
    """The one writer of a base: stages changes in an open SQLite transaction and commits them
    together with freshly written index files (see the module docstring)."""

    def __init__(self, store: LocalStore, dense_index: str | None = None) -> None:
        """`dense_index`: the index kind this base should have from the next commit on; None keeps
        the base's (a new base: flat)."""
        if dense_index is not None:  # checked before taking the lock, which a raise would keep
            dense.check_kind(dense_index)
        self.store = store
        self.catalog = store.catalog
        self._lock_fh = _take_write_lock(store)
        self._lock_fh.seek(0)
        self._lock_fh.truncate()
        self._lock_fh.write(str(os.getpid()))
        self._lock_fh.flush()
        self._remove_orphans()
        meta = store.meta()
        self.dim = int(meta["embed_dim"])
        self.generation = store.generation
        self._index: Any = None
        self.dirty = False
        # A base whose BM25 index was built another way (an older version) is re-indexed by the
        # next commit, even one with nothing else to do: re-running an ingest upgrades it.
        self.reindex = meta.get("bm25_window") != bm25.WINDOW
        self.dense_kind = dense_index or meta["dense_index"]
        self.convert = self.dense_kind != meta["dense_index"]  # the next commit rebuilds the index as asked

    @property
    def index(self):
        """The writer's private copy of the dense index, read on first use: a run that changes
        nothing never pays for loading a large index."""
        if self._index is None:
            index = dense.read(self.store.root, self.generation, self.dim, self.dense_kind)
            self._index = index if dense.kind_of(index) == self.dense_kind else dense.rebuild(index, self.dense_kind)
        return self._index

    # ---- staging (inside one open transaction) ----------------------------------------------
    def _begin(self) -> None:
        self.catalog.begin()
        self.dirty = True

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
        self._begin()
        old = self.catalog.doc_id_of(path)
        if old is not None:
            self.remove_documents([old])
        doc_id = self.catalog.insert_document(
            path=path,
            sha256=sha256,
            size=size,
            mtime=mtime,
            status=status,
            error=error,
            pages=pages,
            chunks=len(chunks),
            chunker=chunker,
            content_of=content_of,
        )
        if chunks:
            matrix = check_vectors(chunks, vectors)
            ids = self.catalog.next_ids(len(chunks))
            if tokens is None:
                tokens = [" ".join(tokenize(c.text)) for c in chunks]
            self.catalog.insert_chunks(doc_id, ids, chunks, tokens)
            self.index.add_with_ids(matrix, ids)
        return doc_id

    def touch(self, doc_id: int, *, path: str, mtime: float, size: int) -> None:
        self._begin()
        self.catalog.touch(doc_id, path, mtime, size)

    def remove_documents(self, doc_ids: Iterable[int]) -> int:
        self._begin()
        removed: list[np.ndarray] = []
        for doc_id in doc_ids:
            heir = self.catalog.heir(doc_id)
            if heir is not None:
                self.catalog.promote(doc_id, heir)
            else:
                removed.append(self.catalog.delete_chunks_of(doc_id))
            self.catalog.delete_document(doc_id)
        removed = [ids for ids in removed if len(ids)]
        if removed:  # once for all the documents: relabelling an HNSW id map costs O(size of the base)
            dense.remove(self.index, np.concatenate(removed))
        return sum(len(ids) for ids in removed)

    # ---- committing ----------------------------------------------------------------------
    def commit(self) -> int:
        """Make everything staged since the last commit durable and visible, as one generation."""
        if not self.dirty and not self.reindex and not self.convert:
            return self.generation
        gen = self.generation + 1
        try:
            self._begin()
            self.catalog.set_meta({"bm25_window": bm25.WINDOW, "dense_index": self.dense_kind})
            if dense.needs_compacting(self.index):
                self._index = dense.rebuild(self.index, "hnsw")
            dense.write(self.index, self.store.root, gen)
            rows = self.catalog.window_rows()
            if rows:
                bm25.write(rows, bm25.folder(self.store.root, gen))
            self.catalog.set_generation(gen)
            self.catalog.conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        self.generation = gen
        self.dirty = False
        self.reindex = False
        self.convert = False
        self._retire_old(gen)
        return gen

    def rollback(self) -> None:
        if self.catalog.conn.in_transaction:
            self.catalog.conn.execute("ROLLBACK")
        self._index = None  # re-read the committed generation when next needed
        self.dirty = False

    def _generation_files(self) -> list[tuple[Path, int, bool]]:
        out = []
        for entry in self.store.root.iterdir():
            m = _GEN_FILE.match(entry.name)
            if m:
                out.append((entry, int(m.group(2)), bool(m.group(4))))
        return out

    def _remove_orphans(self) -> None:
        """Files of generations that never committed (a crash mid-commit), and temp files."""
        committed = self.store.generation
        for entry, gen, is_tmp in self._generation_files():
            if is_tmp or gen > committed:
                files.remove(entry)

    def _retire_old(self, gen: int) -> None:
        for entry, g, _ in self._generation_files():
            if g < gen - 1:
                files.remove(entry)

    def close(self) -> None:
        if self.catalog.conn.in_transaction:
            self.rollback()
        self.release_lock()

    def release_lock(self) -> None:
        if not self._lock_fh.closed:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()


def _take_write_lock(store: LocalStore) -> Any:
    """The base's write.lock, held (flock) until the writer closes; every way this fails is a
    sentence, not a traceback."""
    if store.read_only:
        raise _read_only(store)
    if store.root.is_symlink():
        raise KBError(
            f"{store.root} is a symbolic link (to {os.readlink(store.root)}); rag changes only knowledge bases stored "
            f"inside {store.root.parent}"
        )
    try:
        fh = open(store.root / "write.lock", "a+")  # noqa: SIM115 - held until close()
    except FileNotFoundError as exc:
        raise KBError(
            f"knowledge base {store.name!r} was deleted while this command was starting; nothing was written"
        ) from exc
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise _read_only(store) from exc
        raise
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise KBLocked(
            f"knowledge base {store.name!r} is being written by another process{who}; try again when it has finished"
        ) from exc
    return fh


def _read_only(store: LocalStore) -> KBReadOnly:
    return KBReadOnly(
        f"knowledge base {store.name!r} at {store.root} is read-only (a read-only filesystem, or not writable by "
        "this user): it can be searched, but nothing can be added, changed or removed"
    )


# ---- the data directory: what rag.store calls ---------------------------------------------------
def open_base(settings: Settings, name: str) -> LocalStore:
    return LocalStore.open(settings.kb_dir(name), settings.retrieve.hnsw_ef_search)


def create_base(settings: Settings, name: str, identity: EmbedderIdentity) -> LocalStore:
    return LocalStore.create(settings.kb_dir(name), identity, settings.retrieve.hnsw_ef_search)


def base_exists(settings: Settings, name: str) -> bool:
    return exists(settings.kb_dir(name))


def base_stamp(settings: Settings, name: str) -> str | None:
    """When the base was created (an inode can be reused by the next one)."""
    root = settings.kb_dir(name)
    if not exists(root):
        return None
    conn = catalog.connect_read_only(root / catalog.DB_NAME)
    try:
        return str(catalog.Catalog(conn).meta().get("created_at"))
    finally:
        conn.close()


def list_names(settings: Settings) -> list[str]:
    """The bases in <data_dir>/kb whose names are valid (anything else there is not ours)."""
    root = settings.data_dir / "kb"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _valid_name(p.name) and exists(p))


def _valid_name(name: str) -> bool:
    try:
        check_kb_name(name)
    except ValueError:
        return False
    return True


def delete_base(settings: Settings, name: str) -> None:
    """Delete knowledge base `name`, and nothing else: only a folder directly inside
    <data_dir>/kb, not a symbolic link, that holds a base's database; refuses while a writer
    holds it."""
    container = settings.data_dir / "kb"
    root = container / check_kb_name(name)
    if root.is_symlink():
        raise KBError(
            f"{root} is a symbolic link (to {os.readlink(root)}); rag deletes only knowledge bases stored inside "
            f"{container}. Remove the link yourself if it should go"
        )
    if not exists(root) or root.resolve().parent != container.resolve():
        raise KBError(f"no knowledge base named {name!r} in {container}")
    store = LocalStore.open(root)
    writer = LocalWriter(store)  # holds the lock while the folder goes
    store.close()
    try:
        shutil.rmtree(root)
    finally:
        writer.release_lock()
