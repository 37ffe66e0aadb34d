"""KnowledgeBase: one folder on disk holding documents, chunks, vectors and a BM25 index.

Layout of ``<data_dir>/kb/<name>/``:

- ``kb.sqlite`` (WAL): ``documents``, ``chunks`` (chunk_id = FAISS id), ``meta``.
- ``dense-<G>.faiss``: ``IndexIDMap2`` over an inner-product index, for generation G: flat
  (exact, the default) or HNSW (approximate, for bases past ~1M chunks; ``meta.dense_index``).
- ``bm25-<G>/``: a bm25s index (each chunk with its neighbours, see BM25_WINDOW) plus
  ``ids.npy`` (row -> chunk_id), for generation G.
- ``write.lock``: held by the one process writing.

Atomicity: the SQLite COMMIT that bumps ``meta.generation`` is the single commit point.  The
index files of generation G+1 are written completely (tmp + fsync + rename) *before* that
commit, under names no reader opens until the commit says G+1 exists.  A crash at any moment
therefore leaves generation G intact and readable; the next writer deletes the orphans.
(DESIGN.md sketched fixed names swapped in *after* the commit; that leaves a window where the
database says G+1 while the files still hold G, so generation-named files are used instead.)
The previous generation's files are kept one commit longer so that a reader that has just read
the generation number can still open them.  Nothing is pickled.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from rag.config import check_kb_name
from rag.embed import EmbedderIdentity
from rag.lexical import tokenize
from rag.types import Chunk

SCHEMA_VERSION = 1
# BM25 indexes each chunk together with this many neighbours on each side (same document).  A
# chunk often leaves what it is about to the sentences around it (a title, a heading, the
# subject named once), so its own words miss queries that its window matches; the chunk itself
# is still what is shown, cited and gated.  Hybrid nDCG@10 on chunked BEIR, chosen on SciFact
# train (0.726 -> 0.734) and NFCorpus dev (0.325 -> 0.327).  Ours, not bm25s': it indexes
# whatever token lists it is given.  Stored in meta; a base indexed otherwise is re-indexed
# from its stored tokens by the next writer.
BM25_WINDOW = 1

DENSE_KINDS = ("flat", "hnsw")
# HNSW graph: links per vector and the breadth of the search while building it. FAISS's usual
# values for sentence embeddings; the search breadth per query is retrieve.hnsw_ef_search.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
# HNSW cannot delete from its graph. A removed chunk's vector stays in it (where it still helps
# the walk) under the label DEAD, which every search excludes (LIVE_IDS); a commit that finds a
# fifth of the graph dead rebuilds it. So removing a document from a large HNSW base costs no
# rebuild (measured in bench/dense_index.py).
DEAD = -1
LIVE_IDS = (0, 2**62)
COMPACT_AT = 0.2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    path       TEXT NOT NULL UNIQUE,
    sha256     TEXT,
    size       INTEGER,
    mtime      REAL,
    status     TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'empty', 'duplicate')),
    error      TEXT,
    pages      INTEGER,
    chunks     INTEGER NOT NULL DEFAULT 0,
    chunker    TEXT,
    content_of INTEGER REFERENCES documents(doc_id),
    added_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_sha ON documents(sha256);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id   INTEGER PRIMARY KEY,
    doc_id     INTEGER NOT NULL REFERENCES documents(doc_id),
    ordinal    INTEGER NOT NULL,
    page       INTEGER,
    char_start INTEGER NOT NULL,
    char_end   INTEGER NOT NULL,
    text       TEXT NOT NULL,
    tokens     TEXT NOT NULL,
    metadata   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
"""

_GEN_FILE = re.compile(r"^(dense|bm25)-(\d+)(\.faiss)?(\.tmp)?$")


class KBError(Exception):
    """A knowledge-base problem a user can act on; the message says what and how."""


class ModelMismatch(KBError):
    pass


class KBLocked(KBError):
    """Another process is writing the base: try again when it has finished."""


class KBReadOnly(KBError):
    """The base can be searched but not changed (a read-only filesystem, or not writable by us)."""


@dataclass(frozen=True)
class DocumentInfo:
    doc_id: int
    path: str
    sha256: str | None
    size: int | None
    mtime: float | None
    status: str
    error: str | None
    pages: int | None
    chunks: int
    chunker: str | None
    content_of: int | None
    added_at: float


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _connect_read_only(db: Path) -> sqlite3.Connection:
    """A connection that never writes: a WAL database needs its -shm file, which a read-only
    folder cannot hold, so when plain read-only mode cannot open it, open it as immutable (the
    folder cannot change under us either)."""
    uri = "file:" + urllib.parse.quote(str(db.absolute()))
    last: sqlite3.Error | None = None
    for flags in ("?mode=ro", "?immutable=1"):
        conn = sqlite3.connect(uri + flags, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.DatabaseError as exc:
            conn.close()
            last = exc
    assert last is not None
    raise last


def _writable(root: Path) -> bool:
    return os.access(root, os.W_OK) and os.access(root / "kb.sqlite", os.W_OK)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in path.iterdir():
        with open(file, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(path)


class KnowledgeBase:
    """Read side: documents, chunks and the indexes of the latest committed generation.

    Index objects are loaded lazily and reloaded when another process commits a new generation,
    so a long-running reader (the UI) always sees a complete generation.
    """

    def __init__(self, root: Path, conn: sqlite3.Connection, read_only: bool = False) -> None:
        self.root = root
        self.conn = conn
        self.read_only = read_only
        self.created_now = False  # True when create() made it: a failed first ingest removes it
        self._dense: tuple[int, Any] | None = None
        self._bm25: tuple[int, Any, np.ndarray] | None = None

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def exists(cls, root: Path) -> bool:
        """True once a base's creation has committed (a crash during creation leaves none)."""
        db = root / "kb.sqlite"
        if not db.is_file():
            return False
        try:
            conn = _connect_read_only(db)  # only looks: works on a read-only base too
        except sqlite3.DatabaseError:  # not a database we can read
            return False
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError:  # no meta table: creation never committed
            return False
        finally:
            conn.close()
        return row is not None

    @classmethod
    def open(cls, root: Path) -> KnowledgeBase:
        """Open for reading (and for a KBWriter); a base we cannot write is opened read-only,
        so it can still be searched."""
        if not cls.exists(root):
            raise KBError(f"no knowledge base at {root}; create it with `rag ingest PATH --kb {root.name}`")
        db = root / "kb.sqlite"
        try:
            kb = cls(root, _connect(db)) if _writable(root) else cls(root, _connect_read_only(db), read_only=True)
        except sqlite3.DatabaseError as exc:
            raise KBError(f"cannot open the knowledge base at {root}: {exc}") from exc
        kb._check_schema()
        return kb

    @classmethod
    def create(cls, root: Path, identity: EmbedderIdentity) -> KnowledgeBase:
        """Open, creating the folder and an empty generation 0 if it is new."""
        try:
            root.mkdir(parents=True, exist_ok=True)
            conn = _connect(root / "kb.sqlite")
        except (OSError, sqlite3.OperationalError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise KBError(
                f"cannot create the knowledge base folder {root}: {reason}; set data_dir (or RAG_DATA_DIR) "
                "to a folder you can write"
            ) from exc
        conn.execute("BEGIN IMMEDIATE")  # tables and meta appear together or not at all
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        existed = conn.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone() is not None
        defaults = {
            "schema_version": SCHEMA_VERSION,
            "embed_model": identity.name,
            "embed_dim": identity.dimension,
            "embed_normalize": identity.normalize,
            "generation": 0,
            "next_chunk_id": 1,
            "created_at": time.time(),
        }
        conn.executemany(
            "INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in defaults.items()],
        )
        conn.execute("COMMIT")
        kb = cls(root, conn)
        kb.created_now = not existed
        kb._check_schema()
        kb.check_embedder(identity.name, identity.normalize, identity.dimension)
        return kb

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_schema(self) -> None:
        version = self.meta().get("schema_version")
        if version != SCHEMA_VERSION:
            raise KBError(f"{self.root} has storage schema {version}, this version of rag reads {SCHEMA_VERSION}")

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

    # ---- metadata ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.root.name

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    @property
    def generation(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(json.loads(row[0]))

    def documents(self, status: str | None = None) -> list[DocumentInfo]:
        sql = "SELECT * FROM documents"
        args: tuple[Any, ...] = ()
        if status:
            sql += " WHERE status = ?"
            args = (status,)
        return [DocumentInfo(*row) for row in self.conn.execute(sql + " ORDER BY path", args)]

    def document_by_path(self, path: str) -> DocumentInfo | None:
        row = self.conn.execute("SELECT * FROM documents WHERE path = ?", (path,)).fetchone()
        return DocumentInfo(*row) if row else None

    def chunk_tokens(self, ids: Sequence[int]) -> dict[int, set[str]]:
        """The BM25 tokens stored with each chunk at ingest, so queries never re-tokenize chunks."""
        out: dict[int, set[str]] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            part = [int(i) for i in ids[start : start + 900]]
            marks = ",".join("?" * len(part))
            for cid, tokens in self.conn.execute(
                f"SELECT chunk_id, tokens FROM chunks WHERE chunk_id IN ({marks})", part
            ):
                out[cid] = set(tokens.split())
        return out

    def chunk_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def size_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())

    def chunks(self, ids: Sequence[int]) -> dict[int, Chunk]:
        """Chunks by id, joined to their document's path (ids missing since are left out)."""
        out: dict[int, Chunk] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            part = [int(i) for i in ids[start : start + 900]]
            marks = ",".join("?" * len(part))
            rows = self.conn.execute(
                "SELECT c.chunk_id, c.doc_id, c.ordinal, c.page, c.char_start, c.char_end, c.text, "
                f"c.metadata, d.path FROM chunks c JOIN documents d USING (doc_id) WHERE c.chunk_id IN ({marks})",
                part,
            )
            for cid, did, ordinal, page, start_, end, text, meta, path in rows:
                out[cid] = Chunk(text, path, page, ordinal, start_, end, json.loads(meta), cid, did)
        return out

    def document_chunk_ids(self, doc_id: int) -> list[int]:
        """A document's chunk ids in reading order (a duplicate's are its original's)."""
        row = self.conn.execute("SELECT content_of FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
        owner = row[0] if row and row[0] is not None else doc_id
        rows = self.conn.execute("SELECT chunk_id FROM chunks WHERE doc_id = ? ORDER BY ordinal", (owner,))
        return [int(r[0]) for r in rows]

    # ---- indexes of the committed generation ---------------------------------------------
    def dense_index(self):
        """The FAISS index of the latest generation (reloaded when it changes)."""
        for _ in range(3):  # a writer may retire the file between reading meta and opening it
            gen = self.generation
            if self._dense and self._dense[0] == gen:
                return self._dense[1]
            try:
                self._dense = (gen, read_dense(self.root, gen, self.meta()["embed_dim"]))
                return self._dense[1]
            except FileNotFoundError:
                continue
        raise KBError(f"{self.root}: dense index for generation {self.generation} is missing")

    def bm25_index(self) -> tuple[Any, np.ndarray] | None:
        """(bm25s.BM25, row -> chunk_id) of the latest generation, or None when it holds no chunks."""
        for _ in range(3):
            gen = self.generation
            if self._bm25 and self._bm25[0] == gen:
                return self._bm25[1], self._bm25[2]
            folder = self.root / f"bm25-{gen}"
            if gen == 0 or (not folder.exists() and self.chunk_count() == 0):
                return None
            try:
                import bm25s

                model = bm25s.BM25.load(str(folder), mmap=False, load_corpus=False)
                ids = np.load(folder / "ids.npy", allow_pickle=False)
            except FileNotFoundError:
                continue
            self._bm25 = (gen, model, ids)
            return model, ids
        raise KBError(f"{self.root}: BM25 index for generation {self.generation} is missing")


def dense_path(root: Path, gen: int) -> Path:
    return root / f"dense-{gen}.faiss"


def read_dense(root: Path, gen: int, dim: int, kind: str = "flat"):
    import faiss

    if gen == 0:
        return new_dense(dim, kind)
    return faiss.read_index(str(dense_path(root, gen)))


def new_dense(dim: int, kind: str):
    """An empty index of `kind` ("flat" or "hnsw") whose ids are chunk ids."""
    import faiss

    _check_dense_kind(kind)
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return faiss.IndexIDMap2(inner)


def _check_dense_kind(kind: str) -> None:
    if kind not in DENSE_KINDS:
        raise KBError(f"unknown dense index {kind!r}; use one of {', '.join(DENSE_KINDS)}")


def dense_kind(index: Any) -> str:
    import faiss

    return "hnsw" if isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW) else "flat"


def rebuild_dense(index: Any, kind: str):
    """The live vectors in a fresh index of `kind` (converting a base, or compacting an HNSW graph)."""
    import faiss

    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    vectors = index.index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), np.float32)
    keep = ids != DEAD
    fresh = new_dense(index.d, kind)
    if keep.any():
        fresh.add_with_ids(np.ascontiguousarray(vectors[keep]), ids[keep])
    return fresh


def bury(index: Any, ids: np.ndarray) -> None:
    """Remove `ids` from an HNSW index by relabelling their vectors DEAD (see DEAD)."""
    import faiss

    labels = faiss.vector_to_array(index.id_map)
    labels[np.isin(labels, ids)] = DEAD
    faiss.copy_array_to_vector(labels, index.id_map)
    index.construct_rev_map()


def dead_count(index: Any) -> int:
    import faiss

    return int(np.count_nonzero(faiss.vector_to_array(index.id_map) == DEAD)) if index.ntotal else 0


class KBWriter:
    """The one writer of a base: stages changes in an open SQLite transaction and commits them
    together with freshly written index files (see the module docstring)."""

    def __init__(self, kb: KnowledgeBase, dense_index: str | None = None) -> None:
        """`dense_index`: the index kind this base should have from the next commit on; None keeps
        the base's (a new base: flat)."""
        if dense_index is not None:  # checked before taking the lock, which a raise would keep
            _check_dense_kind(dense_index)
        self.kb = kb
        self._lock_fh = _take_write_lock(kb)
        self._lock_fh.seek(0)
        self._lock_fh.truncate()
        self._lock_fh.write(str(os.getpid()))
        self._lock_fh.flush()
        self._remove_orphans()
        self.conn = kb.conn
        self.dim = int(kb.meta()["embed_dim"])
        self.generation = kb.generation
        self._index: Any = None
        self.dirty = False
        # A base whose BM25 index was built another way (an older version) is re-indexed by the
        # next commit, even one with nothing else to do: re-running an ingest upgrades it.
        self.reindex = kb.meta().get("bm25_window") != BM25_WINDOW
        recorded = kb.meta().get("dense_index", "flat")
        self.dense_kind = dense_index or recorded
        self.convert = self.dense_kind != recorded  # the next commit rebuilds the index as asked

    @property
    def index(self):
        """The writer's private copy of the dense index, read on first use: a run that changes
        nothing never pays for loading a large index."""
        if self._index is None:
            index = read_dense(self.kb.root, self.generation, self.dim, self.dense_kind)
            self._index = index if dense_kind(index) == self.dense_kind else rebuild_dense(index, self.dense_kind)
        return self._index

    # ---- staging (inside one open transaction) ----------------------------------------------
    def _begin(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
        self.dirty = True

    def _next_ids(self, n: int) -> np.ndarray:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'next_chunk_id'").fetchone()
        first = int(json.loads(row[0]))
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'next_chunk_id'", (json.dumps(first + n),))
        return np.arange(first, first + n, dtype=np.int64)

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
        """Insert or replace the document at `path` with its chunks and their vectors.
        `tokens` (space-joined BM25 tokens per chunk) may be precomputed by the caller."""
        self._begin()
        old = self.conn.execute("SELECT doc_id FROM documents WHERE path = ?", (path,)).fetchone()
        if old:
            self.remove_documents([old[0]])
        cur = self.conn.execute(
            "INSERT INTO documents(path, sha256, size, mtime, status, error, pages, chunks, chunker, "
            "content_of, added_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (path, sha256, size, mtime, status, error, pages, len(chunks), chunker, content_of, time.time()),
        )
        doc_id = int(cur.lastrowid)
        if chunks:
            if vectors is None or len(vectors) != len(chunks):
                raise ValueError("every chunk needs exactly one vector")
            ids = self._next_ids(len(chunks))
            if tokens is None:
                tokens = [" ".join(tokenize(c.text)) for c in chunks]
            self.conn.executemany(
                "INSERT INTO chunks(chunk_id, doc_id, ordinal, page, char_start, char_end, text, tokens, "
                "metadata) VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        int(cid),
                        doc_id,
                        c.ordinal,
                        c.page_no,
                        c.char_start,
                        c.char_end,
                        c.text,
                        toks,
                        json.dumps(c.metadata, ensure_ascii=False),
                    )
                    for cid, c, toks in zip(ids, chunks, tokens, strict=True)
                ],
            )
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        return doc_id

    def touch(self, doc_id: int, *, path: str, mtime: float, size: int) -> None:
        """Same content seen again (moved back, re-saved): update what identifies it cheaply."""
        self._begin()
        self.conn.execute(
            "UPDATE documents SET path = ?, mtime = ?, size = ? WHERE doc_id = ?", (path, mtime, size, doc_id)
        )

    def remove_documents(self, doc_ids: Iterable[int]) -> int:
        """Remove documents and their vectors; a duplicate of a removed document inherits its
        chunks, so content stored once stays while any path still holds it. Returns chunks removed."""
        self._begin()
        removed: list[np.ndarray] = []
        for doc_id in doc_ids:
            heir = self.conn.execute(
                "SELECT doc_id FROM documents WHERE content_of = ? ORDER BY doc_id LIMIT 1", (doc_id,)
            ).fetchone()
            if heir:
                self._promote(doc_id, heir[0])
            else:
                ids = np.array(
                    [r[0] for r in self.conn.execute("SELECT chunk_id FROM chunks WHERE doc_id = ?", (doc_id,))],
                    dtype=np.int64,
                )
                if len(ids):
                    self.conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
                    removed.append(ids)
            self.conn.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))
        if removed:  # once for all the documents: relabelling an HNSW id map costs O(size of the base)
            ids = np.concatenate(removed)
            if self.dense_kind == "hnsw":
                bury(self.index, ids)
            else:
                self.index.remove_ids(ids)
        return sum(len(ids) for ids in removed)

    def _promote(self, doc_id: int, heir: int) -> None:
        self.conn.execute("UPDATE chunks SET doc_id = ? WHERE doc_id = ?", (heir, doc_id))
        self.conn.execute(
            "UPDATE documents SET (status, error, pages, chunks, chunker, content_of) = "
            "(SELECT status, error, pages, chunks, chunker, NULL FROM documents WHERE doc_id = ?) "
            "WHERE doc_id = ?",
            (doc_id, heir),
        )
        self.conn.execute("UPDATE documents SET content_of = ? WHERE content_of = ?", (heir, doc_id))

    # ---- committing ----------------------------------------------------------------------
    def commit(self) -> int:
        """Make everything staged since the last commit durable and visible, as one generation."""
        if not self.dirty and not self.reindex and not self.convert:
            return self.generation
        gen = self.generation + 1
        try:
            self._begin()
            self.conn.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                [("bm25_window", json.dumps(BM25_WINDOW)), ("dense_index", json.dumps(self.dense_kind))],
            )
            self._write_dense(gen)
            self._write_bm25(gen)
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (json.dumps(gen),))
            self.conn.execute("COMMIT")
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
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self._index = None  # re-read the committed generation when next needed
        self.dirty = False

    def _write_dense(self, gen: int) -> None:
        import faiss

        if self.dense_kind == "hnsw" and dead_count(self.index) > COMPACT_AT * self.index.ntotal:
            self._index = rebuild_dense(self.index, "hnsw")
        final = dense_path(self.kb.root, gen)
        tmp = final.with_name(final.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.kb.root)

    def _write_bm25(self, gen: int) -> None:
        rows = self.conn.execute("SELECT chunk_id, doc_id, tokens FROM chunks ORDER BY doc_id, ordinal").fetchall()
        if not rows:
            return
        import bm25s

        model = bm25s.BM25()
        # An all-stopword window has no tokens; bm25s needs at least one per document.
        model.index([w or [""] for w in windows(rows, BM25_WINDOW)], show_progress=False)
        final = self.kb.root / f"bm25-{gen}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(str(tmp), show_progress=False)
        np.save(tmp / "ids.npy", np.array([r[0] for r in rows], dtype=np.int64), allow_pickle=False)
        _fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(self.kb.root)

    def _generation_files(self) -> list[tuple[Path, int, bool]]:
        out = []
        for entry in self.kb.root.iterdir():
            m = _GEN_FILE.match(entry.name)
            if m:
                out.append((entry, int(m.group(2)), bool(m.group(4))))
        return out

    def _remove_orphans(self) -> None:
        """Files of generations that never committed (a crash mid-commit), and temp files."""
        committed = self.kb.generation
        for entry, gen, is_tmp in self._generation_files():
            if is_tmp or gen > committed:
                _remove(entry)

    def _retire_old(self, gen: int) -> None:
        for entry, g, _ in self._generation_files():
            if g < gen - 1:
                _remove(entry)

    def close(self) -> None:
        if self.conn.in_transaction:
            self.rollback()
        self.release_lock()

    def release_lock(self) -> None:
        if not self._lock_fh.closed:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()

    def __enter__(self) -> KBWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _take_write_lock(kb: KnowledgeBase) -> Any:
    """The base's write.lock, held (flock) until the writer closes; every way this fails is a
    sentence, not a traceback."""
    if kb.read_only:
        raise _read_only(kb)
    try:
        fh = open(kb.root / "write.lock", "a+")  # noqa: SIM115 - held until close()
    except FileNotFoundError as exc:
        raise KBError(
            f"knowledge base {kb.name!r} was deleted while this command was starting; nothing was written"
        ) from exc
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise _read_only(kb) from exc
        raise
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise KBLocked(
            f"knowledge base {kb.name!r} is being written by another process{who}; try again when it has finished"
        ) from exc
    return fh


def _read_only(kb: KnowledgeBase) -> KBReadOnly:
    return KBReadOnly(
        f"knowledge base {kb.name!r} at {kb.root} is read-only (a read-only filesystem, or not writable by this "
        "user): it can be searched, but nothing can be added, changed or removed"
    )


def windows(rows: Sequence[tuple[int, int, str]], width: int) -> list[list[str]]:
    """BM25 tokens of each chunk with those of `width` neighbours on each side in its document.
    `rows`: (chunk_id, doc_id, space-joined tokens), in document and reading order."""
    out = []
    for _, doc_rows in groupby(rows, key=lambda row: row[1]):
        tokens = [t.split() for _, _, t in doc_rows]
        for i in range(len(tokens)):
            out.append([t for part in tokens[max(0, i - width) : i + width + 1] for t in part])
    return out


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def list_bases(data_dir: Path) -> list[Path]:
    """The bases in <data_dir>/kb whose names are valid (anything else there is not ours)."""
    root = data_dir / "kb"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _valid_name(p.name) and KnowledgeBase.exists(p))


def _valid_name(name: str) -> bool:
    try:
        check_kb_name(name)
    except ValueError:
        return False
    return True


def delete_base(data_dir: Path, name: str) -> None:
    """Delete knowledge base `name`, and nothing else: only a folder directly inside
    <data_dir>/kb, not a symbolic link, that holds a base's database; refuses while a writer
    holds it."""
    container = data_dir / "kb"
    root = container / check_kb_name(name)
    if root.is_symlink():
        raise KBError(
            f"{root} is a symbolic link (to {os.readlink(root)}); rag deletes only knowledge bases stored inside "
            f"{container}. Remove the link yourself if it should go"
        )
    if not KnowledgeBase.exists(root) or root.resolve().parent != container.resolve():
        raise KBError(f"no knowledge base named {name!r} in {container}")
    kb = KnowledgeBase.open(root)
    writer = KBWriter(kb)  # holds the lock while the folder goes
    kb.close()
    try:
        shutil.rmtree(root)
    finally:
        writer.release_lock()
