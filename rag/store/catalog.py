"""The local store's catalog: one SQLite database (WAL) holding documents, chunks and meta.

``documents`` (path, sha256, size, mtime, status, error, pages, chunk count, chunker,
content_of for duplicates), ``chunks`` (chunk_id = the FAISS id, doc_id, ordinal, page,
character span, text, BM25 tokens, metadata JSON) and ``meta`` (schema version, embedding
model, generation, ...).  The SQL of the local store lives here and nowhere else.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag.store.base import DocumentInfo
from rag.types import Chunk

SCHEMA_VERSION = 1
DB_NAME = "kb.sqlite"
_BATCH = 900  # SQLite's bound-parameter limit, with room to spare

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


def connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def connect_read_only(db: Path) -> sqlite3.Connection:
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


def committed(db: Path) -> bool:
    """True once a base's creation has committed (a crash during creation leaves none); only
    looks, so it works on a read-only base too."""
    if not db.is_file():
        return False
    try:
        conn = connect_read_only(db)
    except sqlite3.DatabaseError:  # not a database we can read
        return False
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError:  # no meta table: creation never committed
        return False
    finally:
        conn.close()
    return row is not None


def writable(root: Path) -> bool:
    return os.access(root, os.W_OK) and os.access(root / DB_NAME, os.W_OK)


class Catalog:
    """Queries and statements over one connection.  Writes happen inside the writer's open
    transaction (`begin`), which the writer commits together with the index files."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # ---- creating ----------------------------------------------------------------------------
    def create(self, defaults: dict[str, Any]) -> bool:
        """Tables and meta, in one transaction; True when they were new."""
        self.conn.execute("BEGIN IMMEDIATE")  # tables and meta appear together or not at all
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self.conn.execute(statement)
        existed = self.conn.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone() is not None
        self.conn.executemany(
            "INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in {"schema_version": SCHEMA_VERSION, **defaults}.items()],
        )
        self.conn.execute("COMMIT")
        return not existed

    # ---- reading -----------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    def generation(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(json.loads(row[0]))

    def documents(self, status: str | None = None) -> list[DocumentInfo]:
        sql, args = "SELECT * FROM documents", ()
        if status:
            sql, args = sql + " WHERE status = ?", (status,)
        return [DocumentInfo(*row) for row in self.conn.execute(sql + " ORDER BY path", args)]

    def document_by_path(self, path: str) -> DocumentInfo | None:
        row = self.conn.execute("SELECT * FROM documents WHERE path = ?", (path,)).fetchone()
        return DocumentInfo(*row) if row else None

    def twin(self, sha256: str, chunker: str, path: str) -> int | None:
        row = self.conn.execute(
            "SELECT doc_id FROM documents WHERE sha256 = ? AND status = 'ok' AND chunker = ? AND path != ? LIMIT 1",
            (sha256, chunker, path),
        ).fetchone()
        return int(row[0]) if row else None

    def chunk_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def chunks(self, ids: Sequence[int]) -> dict[int, Chunk]:
        out: dict[int, Chunk] = {}
        for part, marks in _batches(ids):
            rows = self.conn.execute(
                "SELECT c.chunk_id, c.doc_id, c.ordinal, c.page, c.char_start, c.char_end, c.text, "
                f"c.metadata, d.path FROM chunks c JOIN documents d USING (doc_id) WHERE c.chunk_id IN ({marks})",
                part,
            )
            for cid, did, ordinal, page, start, end, text, meta, path in rows:
                out[cid] = Chunk(text, path, page, ordinal, start, end, json.loads(meta), cid, did)
        return out

    def chunk_tokens(self, ids: Sequence[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for part, marks in _batches(ids):
            for cid, tokens in self.conn.execute(
                f"SELECT chunk_id, tokens FROM chunks WHERE chunk_id IN ({marks})", part
            ):
                out[cid] = tokens.split()
        return out

    def document_chunk_ids(self, doc_id: int) -> list[int]:
        row = self.conn.execute("SELECT content_of FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
        owner = row[0] if row and row[0] is not None else doc_id
        rows = self.conn.execute("SELECT chunk_id FROM chunks WHERE doc_id = ? ORDER BY ordinal", (owner,))
        return [int(r[0]) for r in rows]

    def chunk_ids(self, min_chars: int = 0) -> list[tuple[int, int]]:
        return self.conn.execute(
            "SELECT chunk_id, doc_id FROM chunks WHERE length(text) >= ? ORDER BY chunk_id", (min_chars,)
        ).fetchall()

    def chunk_paths(self, doc_ids: Sequence[int] | None) -> list[tuple[int, str]]:
        """(chunk id, document path) of every chunk, or of those of `doc_ids`."""
        sql = "SELECT c.chunk_id, d.path FROM chunks c JOIN documents d USING (doc_id)"
        if doc_ids is None:
            return self.conn.execute(sql).fetchall()
        out: list[tuple[int, str]] = []
        for part, marks in _batches(doc_ids):
            out += self.conn.execute(sql + f" WHERE c.doc_id IN ({marks})", part).fetchall()
        return out

    def window_rows(self) -> list[tuple[int, int, str]]:
        """(chunk id, doc id, tokens) of every chunk in document and reading order: the BM25 input."""
        return self.conn.execute("SELECT chunk_id, doc_id, tokens FROM chunks ORDER BY doc_id, ordinal").fetchall()

    # ---- writing (inside the writer's transaction) ----------------------------------------------
    def begin(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")

    def set_meta(self, values: dict[str, Any]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()]
        )

    def next_ids(self, n: int) -> np.ndarray:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'next_chunk_id'").fetchone()
        first = int(json.loads(row[0]))
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'next_chunk_id'", (json.dumps(first + n),))
        return np.arange(first, first + n, dtype=np.int64)

    def doc_id_of(self, path: str) -> int | None:
        row = self.conn.execute("SELECT doc_id FROM documents WHERE path = ?", (path,)).fetchone()
        return int(row[0]) if row else None

    def insert_document(self, **fields: Any) -> int:
        cur = self.conn.execute(
            "INSERT INTO documents(path, sha256, size, mtime, status, error, pages, chunks, chunker, "
            "content_of, added_at) VALUES (:path, :sha256, :size, :mtime, :status, :error, :pages, :chunks, "
            ":chunker, :content_of, :added_at)",
            {"added_at": time.time(), **fields},
        )
        return int(cur.lastrowid)

    def insert_chunks(self, doc_id: int, ids: np.ndarray, chunks: Sequence[Chunk], tokens: Sequence[str]) -> None:
        self.conn.executemany(
            "INSERT INTO chunks(chunk_id, doc_id, ordinal, page, char_start, char_end, text, tokens, metadata) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (int(cid), doc_id, c.ordinal, c.page_no, c.char_start, c.char_end, c.text, toks, _json(c.metadata))
                for cid, c, toks in zip(ids, chunks, tokens, strict=True)
            ],
        )

    def touch(self, doc_id: int, path: str, mtime: float, size: int) -> None:
        self.conn.execute(
            "UPDATE documents SET path = ?, mtime = ?, size = ? WHERE doc_id = ?", (path, mtime, size, doc_id)
        )

    def heir(self, doc_id: int) -> int | None:
        """The first duplicate of `doc_id`, which inherits its chunks when it goes."""
        row = self.conn.execute(
            "SELECT doc_id FROM documents WHERE content_of = ? ORDER BY doc_id LIMIT 1", (doc_id,)
        ).fetchone()
        return int(row[0]) if row else None

    def delete_chunks_of(self, doc_id: int) -> np.ndarray:
        ids = np.array(
            [r[0] for r in self.conn.execute("SELECT chunk_id FROM chunks WHERE doc_id = ?", (doc_id,))],
            dtype=np.int64,
        )
        if len(ids):
            self.conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
        return ids

    def delete_document(self, doc_id: int) -> None:
        self.conn.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))

    def promote(self, doc_id: int, heir: int) -> None:
        """`heir` takes over `doc_id`'s chunks and status; `doc_id`'s other duplicates follow it."""
        self.conn.execute("UPDATE chunks SET doc_id = ? WHERE doc_id = ?", (heir, doc_id))
        self.conn.execute(
            "UPDATE documents SET (status, error, pages, chunks, chunker, content_of) = "
            "(SELECT status, error, pages, chunks, chunker, NULL FROM documents WHERE doc_id = ?) "
            "WHERE doc_id = ?",
            (doc_id, heir),
        )
        self.conn.execute("UPDATE documents SET content_of = ? WHERE content_of = ?", (heir, doc_id))

    def set_generation(self, gen: int) -> None:
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (json.dumps(gen),))


def _batches(ids: Iterable[int]) -> Iterable[tuple[list[int], str]]:
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), _BATCH):
        part = ids[start : start + _BATCH]
        yield part, ",".join("?" * len(part))


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
