"""The Milvus store: a knowledge base as two collections in Milvus, so any number of `rag`
processes, UIs and API servers on any machines share it with no local state.

The same code talks to Milvus Lite (`store.uri` a path: an embedded engine for one machine and
for the tests) and to a Milvus Standalone or Distributed server (`http(s)://host:19530`).  It
relies on nothing Lite does differently from the server (../shared/notes/milvus.md).

Collections, for knowledge base NAME (see `_collection`):

``rag_NAME_chunks``: one row per chunk: ``chunk_id`` (primary key), ``doc_id``, ``ordinal``,
``page``, ``char_start``, ``char_end``, ``text``, ``metadata`` (JSON), ``tokens`` (the chunk's own
BM25 tokens, for the relevance gate), ``bm25_text`` (the tokens of the chunk and its neighbours,
see rag.store.bm25.WINDOW, encoded below), ``sparse`` (filled by Milvus's BM25 function from
``bm25_text``) and ``dense`` (the embedding).  Its collection properties hold the base's meta:
the embedding model, dimension and normalization, and the generation.

``rag_NAME_docs``: the catalog, one row per file, as in the local store.  Milvus requires a
vector field in every collection, so it has a 2-dimensional one that nothing reads.

Keyword search: Milvus's BM25 function, fed with our own tokens (rag.lexical: English stemmed and
stop-worded, Chinese segmented with jieba, each chunk with its neighbours' tokens), encoded as
ASCII words that Milvus's "standard" analyzer keeps whole.  Milvus's own analyzers differ between
Lite and the server: Lite accepts a stemmer filter and silently ignores it ("run" does not find
"running"), and refuses the "english" and "chinese" analyzer types.  Analyzing before Milvus
gives the same tokens on Lite, on the server and in the local store, so the three rank alike.
BM25 scores come back negative from Lite and positive from the server, with scales that change
with segments and filters, so only their magnitude is used and fusion normalizes per query.

Identity and crashes: a document's id is a hash of its path and a chunk's a hash of the
document, its content and its place in it, so a run repeated after a kill writes the same rows
again (upserts) and converges.  Writes are ordered so that a crash leaves nothing a next run
does not repair: a document's catalog row is first written marked "writing", then its chunks,
then the row for good (a reader ignores the chunks of a row still marked; the next writer
deletes them), and a removal is recorded in the collection's properties before it
starts and cleared when done, so the next writer finishes it.  Milvus Lite keeps a log per
collection, so a kill can keep a document's chunks and lose its catalog row: readers count and
list only the catalog's chunks, and the next writer after a writer that never closed deletes
chunks of no document (a server keeps what it acknowledged, whatever happens to the client).
Lite 3.2.2 also stores every row of a flush twice when a kill falls between the flush's new
manifest and the removal of its log (the log is replayed over the segment): readers show each
key once, and that same next writer writes each doubled row again, which leaves one.

Consistency: every read and search is Strong, so a process sees what any process committed
before it asked.  A reader in the middle of an ingest sees each document as soon as its catalog
row is written (there is no multi-document transaction in Milvus): a document is all there or
not there, but one ingest run is not one atomic step, as it is in the local store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from rag.config import Settings, check_kb_name
from rag.embed import EmbedderIdentity
from rag.lexical import tokenize
from rag.store import bm25
from rag.store.base import (
    Allowed,
    DocumentInfo,
    Filters,
    KBError,
    Scored,
    Store,
    StoreUnavailable,
    StoreWriter,
    check_vectors,
)
from rag.types import Chunk

log = logging.getLogger(__name__)
T = TypeVar("T")
SCHEMA_VERSION = 1
PREFIX = "rag_"
MAX_VARCHAR = 65_535  # bytes: Milvus's longest VARCHAR
_BATCH = 1000  # rows per request: far below Milvus's message size limit
_PATH = 4096
_PROP = "rag."  # collection properties holding the base's meta
# The catalog row of a document whose chunks are being written: what a reader ignores, and what
# the next writer cleans up if the run died before writing the row for good.
_WRITING = "writing"
_FINISHED = f'status != "{_WRITING}"'

_CHUNK_FIELDS = ["chunk_id", "doc_id", "ordinal", "page", "char_start", "char_end", "text", "metadata"]
_DOC_FIELDS = [
    "doc_id",
    "path",
    "sha256",
    "size",
    "mtime",
    "status",
    "error",
    "pages",
    "chunks",
    "chunker",
    "content_of",
    "added_at",
]


def _pymilvus():
    try:
        import pymilvus
        from pymilvus.client.iterator import query_iterator
    except ImportError as exc:
        raise KBError(
            "store.backend = 'milvus' needs pymilvus (and milvus-lite for a local file): "
            "pip install pymilvus milvus-lite (make setup installs both)"
        ) from exc
    # Lite cannot give the iterator a server timestamp; pymilvus then uses the client's, which is
    # what we want, but says so at WARNING on every catalog listing.
    logging.getLogger(query_iterator.__name__).setLevel(logging.ERROR)
    return pymilvus


# ---- names and ids ---------------------------------------------------------------------------
def _collection(name: str, kind: str) -> str:
    """A collection name for base `name`: Milvus allows letters, digits and '_' only, so '_', '-'
    and '.' are spelled out (reversibly: see _base_name)."""
    spelled = name.replace("_", "_u").replace("-", "_h").replace(".", "_d")
    return f"{PREFIX}{spelled}_{kind}"


def _base_name(collection: str) -> str | None:
    if not (collection.startswith(PREFIX) and collection.endswith("_chunks")):
        return None
    spelled = collection[len(PREFIX) : -len("_chunks")]
    return re.sub(r"_([uhd])", lambda m: {"u": "_", "h": "-", "d": "."}[m.group(1)], spelled)


def _hash_id(*parts: object) -> int:
    """A stable positive 63-bit id (Milvus keys are signed 64-bit; 0 is left unused)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass"), digest_size=8)
    return (int.from_bytes(digest.digest(), "big") & (2**63 - 1)) or 1


def doc_id_for(path: str) -> int:
    return _hash_id("doc", path)


# Tokens Milvus's standard analyzer keeps whole: ASCII letters and digits.  Anything else (Chinese
# words, accented or underscored words) becomes "zq" + its UTF-8 bytes in hex.
_PLAIN = re.compile(r"[a-z0-9]+")


def encode_tokens(tokens: Iterable[str]) -> str:
    return " ".join(t if _PLAIN.fullmatch(t) else "zq" + t.encode().hex() for t in tokens if t)


def _clip(text: str, limit: int = MAX_VARCHAR) -> str:
    """`text` cut to fit a VARCHAR of `limit` bytes (at a character boundary)."""
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode(errors="ignore")


# ---- connecting --------------------------------------------------------------------------------
_CLIENTS: dict[tuple[str, str | None, str | None], Any] = {}


def close_clients() -> None:
    """Close every client this process opened, and the Lite engines behind them, so their files
    are free for another process."""
    while _CLIENTS:
        (uri, _, _), conn = _CLIENTS.popitem()
        conn.close()
        if is_lite(uri):
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(uri)


def _uri(settings: Settings) -> str:
    uri = settings.store.uri
    if re.match(r"^[a-z][a-z0-9+.-]*://", uri):
        return uri
    path = Path(uri).expanduser()
    return str(path if path.is_absolute() else settings.data_dir / path)


def is_lite(uri: str) -> bool:
    return "://" not in uri


def client(settings: Settings) -> Any:
    """One client per URI, database and token in a process (a Lite file opens once per process)."""
    uri, store = _uri(settings), settings.store
    token = store.token.get_secret_value() if store.token else None
    key = (uri, store.db_name, token)
    if key not in _CLIENTS:
        _CLIENTS[key] = _connect(uri, token, store.db_name)
    return _CLIENTS[key]


def _connect(uri: str, token: str | None, db_name: str | None) -> Any:
    pymilvus = _pymilvus()
    kwargs: dict[str, Any] = {"uri": uri, "timeout": 10}
    if token:
        kwargs["token"] = token
    if db_name:
        kwargs["db_name"] = db_name
    if is_lite(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        # Lite logs a traceback when its file is locked by another process; we say it in one line.
        logging.getLogger("milvus_lite.server_manager").setLevel(logging.CRITICAL)
    try:
        conn = pymilvus.MilvusClient(**kwargs)
        conn.list_collections()  # a wrong token or database fails here, not on first use
    except Exception as exc:
        raise _unavailable(uri, exc) from exc
    return conn


def _unavailable(uri: str, exc: Exception) -> StoreUnavailable:
    text = str(exc)
    if is_lite(uri) and ("Open local milvus failed" in text or "Locked" in type(exc).__name__ + text):
        return StoreUnavailable(
            f"the Milvus Lite file {uri} is open in another process (Lite allows one); for several processes "
            f"on this machine run `milvus-lite server --data-dir {uri} --host 127.0.0.1 --port 19530` and set "
            "store.uri = 'http://127.0.0.1:19530'"
        )
    if re.search(r"auth|token|credential|permission|denied|unauthenticated", text, re.IGNORECASE):
        return StoreUnavailable(f"Milvus at {uri} refused the credentials in store.token (RAG_STORE__TOKEN): {text}")
    if "database" in text.lower() and "not" in text.lower():
        return StoreUnavailable(f"Milvus at {uri} has no database as named in store.db_name: {text}")
    return StoreUnavailable(
        f"cannot reach Milvus at {uri} ({text.strip() or type(exc).__name__}); is it running? Check store.uri "
        "(RAG_STORE__URI)"
    )


def _call(conn: Any, uri: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """A client call whose connection failures are one clear line, like opening's."""
    pymilvus = _pymilvus()
    try:
        return getattr(conn, method)(*args, **kwargs)
    except pymilvus.MilvusException as exc:
        if getattr(exc, "code", None) in (1, 2) or "connect" in str(exc).lower():
            raise _unavailable(uri, exc) from exc
        raise


# ---- the store -------------------------------------------------------------------------------
class MilvusStore(Store):
    backend = "milvus"
    max_text_bytes = MAX_VARCHAR

    def __init__(self, settings: Settings, name: str) -> None:
        self.name = name
        self.uri = _uri(settings)
        self.conn = client(settings)
        self.chunks_coll = _collection(name, "chunks")
        self.docs_coll = _collection(name, "docs")
        self.ef_search = settings.retrieve.hnsw_ef_search

    def _do(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _call(self.conn, self.uri, method, *args, **kwargs)

    # ---- identity ----------------------------------------------------------------------------
    @property
    def location(self) -> str:
        return f"Milvus {self.uri} ({self.chunks_coll}, {self.docs_coll})"

    def meta(self) -> dict[str, Any]:
        props = self._do("describe_collection", self.chunks_coll).get("properties", {})
        meta = {k[len(_PROP) :]: json.loads(v) for k, v in props.items() if k.startswith(_PROP)}
        meta["index"] = f"Milvus {meta.get('dense_index', 'HNSW')} index"
        return meta

    def _set_meta(self, values: dict[str, Any]) -> None:
        props = {_PROP + k: json.dumps(v) for k, v in values.items()}
        self._do("alter_collection_properties", self.chunks_coll, properties=props)

    # ---- catalog -------------------------------------------------------------------------------
    def _docs(self, expr: str) -> list[DocumentInfo]:
        rows = self._query_all(self.docs_coll, expr, _DOC_FIELDS)
        return [_document(row) for row in rows]

    def documents(self, status: str | None = None) -> list[DocumentInfo]:
        expr = f"status == {json.dumps(status)}" if status else _FINISHED
        return sorted(self._docs(expr), key=lambda d: d.path)

    def document_by_path(self, path: str) -> DocumentInfo | None:
        found = self._docs(f"doc_id == {doc_id_for(path)} and {_FINISHED}")
        return found[0] if found else None

    def twin(self, sha256: str, chunker: str, path: str) -> int | None:
        for doc in self._docs(f'sha256 == {json.dumps(sha256)} and status == "ok"'):
            if doc.chunker == chunker and doc.path != path:
                return doc.doc_id
        return None

    def chunk_count(self) -> int:
        """The catalog's count, not the rows': after a kill Lite may hold chunks of no document
        until the next writer deletes them, and those are no passage a reader can be shown."""
        return sum(d.chunks for d in self.documents("ok"))

    def _finished_chunks(self, expr: str = "") -> str:
        """`expr` restricted to chunks of finished documents: those of a document still being
        written (or whose writer died) are not the base's yet."""
        unfinished = [d.doc_id for d in self._docs(f'status == "{_WRITING}"')]
        if not unfinished:
            return expr
        return f"({expr}) and doc_id not in {unfinished}" if expr else f"doc_id not in {unfinished}"

    def size_on_disk(self) -> int | None:
        if not is_lite(self.uri):
            return None  # a server keeps its own accounts
        root = Path(self.uri)
        return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0

    # ---- chunks --------------------------------------------------------------------------------
    def _chunk_rows(self, ids: Sequence[int], fields: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for part in _parts([int(i) for i in ids]):
            out += self._do("query", self.chunks_coll, filter=f"chunk_id in {part}", output_fields=fields)
        return out

    def chunks(self, ids: Sequence[int]) -> dict[int, Chunk]:
        rows = self._chunk_rows(ids, _CHUNK_FIELDS)
        paths = self._paths({int(r["doc_id"]) for r in rows})
        out: dict[int, Chunk] = {}
        for r in rows:
            path = paths.get(int(r["doc_id"]))
            if path is None:  # written by a run that has not committed its catalog row (or died)
                continue
            page = None if r["page"] < 0 else int(r["page"])
            meta = r["metadata"] if isinstance(r["metadata"], dict) else json.loads(r["metadata"] or "{}")
            cid = int(r["chunk_id"])
            out[cid] = Chunk(
                r["text"], path, page, int(r["ordinal"]), int(r["char_start"]), int(r["char_end"]), meta, cid,
                int(r["doc_id"]),
            )  # fmt: skip
        return out

    def _paths(self, doc_ids: set[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for part in _parts(sorted(doc_ids)):
            for row in self._do(
                "query", self.docs_coll, filter=f"doc_id in {part} and {_FINISHED}", output_fields=["doc_id", "path"]
            ):
                out[int(row["doc_id"])] = row["path"]
        return out

    def document_chunk_ids(self, doc_id: int) -> list[int]:
        found = self._docs(f"doc_id == {int(doc_id)}")
        owner = found[0].content_of if found and found[0].content_of is not None else doc_id
        rows = self._query_all(self.chunks_coll, f"doc_id == {int(owner)}", ["chunk_id", "ordinal"])
        return [int(r["chunk_id"]) for r in sorted(rows, key=lambda r: r["ordinal"])]

    def chunk_ids(self, min_chars: int = 0) -> list[tuple[int, int]]:
        fields = ["chunk_id", "doc_id", "char_start", "char_end"]
        rows = self._query_all(self.chunks_coll, self._finished_chunks("chunk_id >= 0"), fields)
        owners = {d.doc_id for d in self.documents("ok")}
        rows = [r for r in rows if r["doc_id"] in owners and r["char_end"] - r["char_start"] >= min_chars]
        return sorted((int(r["chunk_id"]), int(r["doc_id"])) for r in rows)

    def chunk_tokens(self, ids: Sequence[int]) -> dict[int, list[str]]:
        return {int(r["chunk_id"]): r["tokens"].split() for r in self._chunk_rows(ids, ["chunk_id", "tokens"])}

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        found = {int(r["chunk_id"]): r["dense"] for r in self._chunk_rows(ids, ["chunk_id", "dense"])}
        dim = int(self.meta()["embed_dim"])
        out = np.zeros((len(ids), dim), dtype=np.float32)
        for row, cid in enumerate(ids):
            if int(cid) in found:
                out[row] = found[int(cid)]
        return out

    def _query_all(self, collection: str, expr: str, fields: list[str], *, unique: bool = True) -> list[dict[str, Any]]:
        """Every row matching `expr`, however many (a plain query stops at 16,384), each primary
        key once: Milvus Lite 3.2.2 returns a row twice after a kill between a flush's manifest
        and the removal of its log (see `MilvusWriter._repair`); `unique=False` shows them."""
        key = "chunk_id" if collection == self.chunks_coll else "doc_id"
        wanted = fields if key in fields else [*fields, key]
        iterator = self._do("query_iterator", collection, filter=expr, output_fields=wanted, batch_size=4000)
        rows: list[dict[str, Any]] = []
        try:
            while batch := iterator.next():
                rows += batch
        finally:
            iterator.close()
        return _first_each(rows, lambda r: r[key]) if unique else rows

    # ---- search --------------------------------------------------------------------------------
    def allowed(self, filters: Filters) -> Allowed:
        docs = self.documents()
        if filters.doc_ids is not None:
            wanted = {int(i) for i in filters.doc_ids}
            docs = [d for d in docs if d.doc_id in wanted]
        docs = [d for d in docs if filters.path_matches(d.path)]
        return Allowed(doc_ids=tuple(d.doc_id for d in docs if d.status == "ok"))

    def _filter(self, allowed: Allowed | None) -> str:
        return "" if allowed is None or allowed.doc_ids is None else f"doc_id in {list(allowed.doc_ids)}"

    def dense_candidates(self, qvec: np.ndarray, k: int, allowed: Allowed | None = None) -> Scored:
        if allowed is not None and allowed.empty:
            return []
        hits = self._do(
            "search",
            self.chunks_coll,
            data=[np.asarray(qvec, dtype=np.float32).tolist()],
            anns_field="dense",
            limit=k,
            filter=self._filter(allowed),
            search_params={"metric_type": "IP", "params": {"ef": max(self.ef_search, k)}},
            output_fields=["doc_id"],  # not every field, which a search returns by default
        )[0]
        return _first_each([(int(h.id), float(h.distance)) for h in hits], lambda hit: hit[0])

    def lexical_candidates(self, query: str, k: int, allowed: Allowed | None = None) -> Scored:
        text = encode_tokens(tokenize(query))
        if not text or (allowed is not None and allowed.empty):
            return []
        hits = self._do(
            "search",
            self.chunks_coll,
            data=[text],
            anns_field="sparse",
            limit=k,
            filter=self._filter(allowed),
            search_params={"metric_type": "BM25"},
            output_fields=["doc_id"],
        )[0]
        # Lite returns BM25 scores negated, the server as they are: the magnitude is the score.
        return _first_each([(int(h.id), abs(float(h.distance))) for h in hits if h.distance], lambda hit: hit[0])

    def dense_scores(self, qvec: np.ndarray, ids: Sequence[int]) -> dict[int, float]:
        found = self.vectors(ids) @ np.asarray(qvec, dtype=np.float32)
        return {int(cid): float(s) for cid, s in zip(ids, found, strict=True)}

    def lexical_scores(self, query: str, ids: Sequence[int]) -> dict[int, float]:
        """From one search restricted to `ids`: Milvus's BM25 scale shifts with the filter, so all
        of them come from the same search to be comparable with each other."""
        out = {int(cid): 0.0 for cid in ids}
        text = encode_tokens(tokenize(query))
        if not text or not ids:
            return out
        for part in _parts([int(i) for i in ids]):
            hits = self._do(
                "search",
                self.chunks_coll,
                data=[text],
                anns_field="sparse",
                limit=len(part),
                filter=f"chunk_id in {part}",
                search_params={"metric_type": "BM25"},
                output_fields=["doc_id"],
            )[0]
            out.update({int(h.id): abs(float(h.distance)) for h in hits})
        return out

    # ---- writing -------------------------------------------------------------------------------
    def writer(self, dense_index: str | None = None) -> MilvusWriter:
        return MilvusWriter(self)

    def close(self) -> None:
        """Clients are shared per process (a Lite file opens once); nothing to release per base."""


def _first_each(items: list[T], key: Callable[[T], Any]) -> list[T]:
    """Each key once, where it first comes (a search hit at its best rank): a row Lite holds
    twice after a kill is one row."""
    seen: set[Any] = set()
    out: list[T] = []
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            out.append(item)
    return out


def _parts(ids: list[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), _BATCH):
        yield ids[start : start + _BATCH]


def _doubled(rows: list[dict[str, Any]], key: str) -> set[int]:
    """The keys found in more than one row."""
    counts = Counter(int(r[key]) for r in rows)
    return {k for k, n in counts.items() if n > 1}


def _document(row: dict[str, Any]) -> DocumentInfo:
    return DocumentInfo(
        doc_id=int(row["doc_id"]),
        path=row["path"],
        sha256=row["sha256"] or None,
        size=None if row["size"] < 0 else int(row["size"]),
        mtime=None if row["mtime"] < 0 else float(row["mtime"]),
        status=row["status"],
        error=row["error"] or None,
        pages=None if row["pages"] < 0 else int(row["pages"]),
        chunks=int(row["chunks"]),
        chunker=row["chunker"] or None,
        content_of=None if row["content_of"] < 0 else int(row["content_of"]),
        added_at=float(row["added_at"]),
    )


class MilvusWriter(StoreWriter):
    """Writes as it goes (Milvus has no transactions; see the module docstring for the order that
    makes a crash harmless); `commit` makes the writes durable and searchable and counts a
    generation."""

    def __init__(self, store: MilvusStore) -> None:
        self.store = store
        meta = store.meta()
        self.generation = int(meta["generation"])
        self.dense_kind = str(meta.get("dense_index", "HNSW")).lower()
        self.reindex = False
        self.convert = False
        self.dirty = False
        self._finish_removals(meta.get("removing") or [])
        if meta.get("writer_open") and is_lite(store.uri):
            self._repair()
        store._set_meta({"writer_open": True})

    def _do(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.store._do(method, *args, **kwargs)

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
        self.dirty = True
        doc_id = doc_id_for(path)
        found = self.store._docs(f"doc_id == {doc_id}")
        if found and found[0].status == _WRITING:  # a run died writing it: only its chunks are there
            self._do("delete", self.store.chunks_coll, filter=f"doc_id == {doc_id}")
        elif found:
            self.remove_documents([doc_id])
        row = {
            "doc_id": doc_id, "path": path, "sha256": sha256, "size": size, "mtime": mtime, "error": error,
            "pages": pages, "chunks": len(chunks), "chunker": chunker, "content_of": content_of,
            "added_at": time.time(),
        }  # fmt: skip
        if chunks:
            matrix = check_vectors(chunks, vectors)
            tokens = list(tokens) if tokens is not None else [" ".join(tokenize(c.text)) for c in chunks]
            # Marked before its chunks are written, so that a crash in between is found and
            # cleaned by the next writer; this spares a delete-by-filter per new document, which
            # Milvus runs as a query and which made a copy into Lite slow down as it grew.
            self._upsert_doc(**row, status=_WRITING)
            self._upsert_chunks(doc_id, sha256 or "", chunker or "", chunks, matrix, tokens)
        self._upsert_doc(**row, status=status)
        return doc_id

    def _upsert_chunks(
        self, doc_id: int, sha: str, chunker: str, chunks: Sequence[Chunk], matrix: np.ndarray, tokens: list[str]
    ) -> None:
        rows = list(zip(range(len(chunks)), [doc_id] * len(chunks), tokens, strict=True))
        window = bm25.windows(rows, bm25.WINDOW)
        records = [
            {
                "chunk_id": _hash_id("chunk", doc_id, sha, chunker, c.ordinal),
                "doc_id": doc_id,
                "ordinal": c.ordinal,
                "page": -1 if c.page_no is None else c.page_no,
                "char_start": c.char_start,
                "char_end": c.char_end,
                "text": c.text,
                "metadata": c.metadata,
                "tokens": _clip(toks),
                "bm25_text": _clip(encode_tokens(w)) or "zqempty",
                "dense": vec.tolist(),
            }
            for c, toks, w, vec in zip(chunks, tokens, window, matrix, strict=True)
        ]
        for start in range(0, len(records), _BATCH):
            self._do("upsert", self.store.chunks_coll, records[start : start + _BATCH])

    def _upsert_doc(self, **fields: Any) -> None:
        row = {
            **fields,
            "path": _clip(fields["path"], _PATH),
            "sha256": fields["sha256"] or "",
            "size": -1 if fields["size"] is None else int(fields["size"]),
            "mtime": -1.0 if fields["mtime"] is None else float(fields["mtime"]),
            "error": _clip(fields["error"] or "", _PATH),
            "pages": -1 if fields["pages"] is None else int(fields["pages"]),
            "chunker": fields["chunker"] or "",
            "content_of": -1 if fields["content_of"] is None else int(fields["content_of"]),
            "v": [0.0, 0.0],
        }
        self._do("upsert", self.store.docs_coll, [row])

    def touch(self, doc_id: int, *, path: str, mtime: float, size: int) -> None:
        self.dirty = True
        (doc,) = self.store._docs(f"doc_id == {int(doc_id)}")
        fields = {f: getattr(doc, f) for f in _DOC_FIELDS}
        self._upsert_doc(**{**fields, "path": path, "mtime": mtime, "size": size})

    def remove_documents(self, doc_ids: Iterable[int]) -> int:
        ids = [int(i) for i in doc_ids]
        if not ids:
            return 0
        self.dirty = True
        self.store._set_meta({"removing": ids})  # finished by the next writer if this one dies
        removed = self._remove(ids)
        self.store._set_meta({"removing": []})
        return removed

    def _remove(self, ids: list[int]) -> int:
        removed = 0
        for doc_id in ids:
            found = self.store._docs(f"doc_id == {doc_id}")
            heirs = self.store._docs(f"content_of == {doc_id}")
            if heirs:
                self._promote(found[0] if found else None, sorted(heirs, key=lambda d: d.added_at)[0], heirs, doc_id)
            else:
                removed += len(self._query_ids(f"doc_id == {doc_id}"))
                self._do("delete", self.store.docs_coll, filter=f"doc_id == {doc_id}")
                self._do("delete", self.store.chunks_coll, filter=f"doc_id == {doc_id}")
        return removed

    def _query_ids(self, expr: str) -> list[int]:
        return [int(r["chunk_id"]) for r in self.store._query_all(self.store.chunks_coll, expr, ["chunk_id"])]

    def _promote(self, gone: DocumentInfo | None, heir: DocumentInfo, heirs: list[DocumentInfo], doc_id: int) -> None:
        """`heir` takes over `doc_id`'s chunks and status; the other duplicates follow it."""
        self._rewrite_chunks(f"doc_id == {doc_id}", heir.doc_id)
        if gone is not None:
            keep = {f: getattr(heir, f) for f in ("doc_id", "path", "size", "mtime", "added_at")}
            taken = {f: getattr(gone, f) for f in ("sha256", "status", "error", "pages", "chunks", "chunker")}
            self._upsert_doc(**keep, **taken, content_of=None)
        for other in heirs:
            if other.doc_id != heir.doc_id:
                self._upsert_doc(**{**{f: getattr(other, f) for f in _DOC_FIELDS}, "content_of": heir.doc_id})
        self._do("delete", self.store.docs_coll, filter=f"doc_id == {doc_id}")

    def _finish_removals(self, pending: list[int]) -> None:
        if pending:
            self._remove([int(i) for i in pending])
            self.store._set_meta({"removing": []})

    def _repair(self) -> None:
        """What a writer killed on Milvus Lite 3.2.2 can leave, undone before anything is written:
        - chunks whose document has no catalog row (each collection has its own log);
        - rows stored twice: a kill between a flush's manifest and the removal of its log makes
          the next open replay the log over the segment it was already flushed to.  Readers show
          each key once; writing a row again replaces both copies (an upsert deletes every
          older row of its key)."""
        docs = self.store._query_all(self.store.docs_coll, "doc_id >= 0", _DOC_FIELDS, unique=False)
        rows = self.store._query_all(self.store.chunks_coll, "chunk_id >= 0", ["doc_id"], unique=False)
        orphans = sorted({int(r["doc_id"]) for r in rows} - {int(d["doc_id"]) for d in docs})
        for part in _parts(orphans):
            self._do("delete", self.store.chunks_coll, filter=f"doc_id in {part}")
        doubled_docs = _doubled(docs, "doc_id")
        for row in {int(r["doc_id"]): r for r in docs if int(r["doc_id"]) in doubled_docs}.values():
            doc = _document(row)
            self._upsert_doc(**{f: getattr(doc, f) for f in _DOC_FIELDS})
        orphaned = set(orphans)
        doubled = sorted(_doubled([r for r in rows if int(r["doc_id"]) not in orphaned], "chunk_id"))
        for part in _parts(doubled):
            self._rewrite_chunks(f"chunk_id in {part}")
        if orphans or doubled_docs or doubled:
            log.warning(
                "repaired what a killed run left: chunks of %d documents without a catalog row deleted, "
                "%d catalog rows and %d chunks stored twice rewritten once",
                len(orphans), len(doubled_docs), len(doubled),
            )  # fmt: skip

    def _rewrite_chunks(self, expr: str, doc_id: int | None = None) -> None:
        """Writes the chunks matching `expr` again, moved to `doc_id` if given."""
        fields = ["chunk_id", *_CHUNK_FIELDS[1:], "tokens", "bm25_text", "dense"]
        rows = self.store._query_all(self.store.chunks_coll, expr, fields)
        for row in rows:
            if doc_id is not None:
                row["doc_id"] = doc_id
        for start in range(0, len(rows), _BATCH):
            self._do("upsert", self.store.chunks_coll, rows[start : start + _BATCH])

    def commit(self) -> int:
        if not self.dirty:
            return self.generation
        if is_lite(self.store.uri):  # Lite searches unflushed rows slowly; a server flushes by itself
            self._do("flush", self.store.chunks_coll)
            self._do("flush", self.store.docs_coll)
        self.generation += 1
        self.store._set_meta({"generation": self.generation})
        self.dirty = False
        return self.generation

    def rollback(self) -> None:
        """Milvus has no transactions: what was written stays, and the next run converges."""
        self.dirty = False

    def close(self) -> None:
        self.dirty = False
        with contextlib.suppress(KBError):  # closing after the server went away: say that, once
            self.store._set_meta({"writer_open": False})


# ---- creating, listing, deleting: what rag.store calls ---------------------------------------------
def _schema(pymilvus: Any, dim: int) -> tuple[Any, Any]:
    """The chunks collection's schema and index parameters."""
    DataType, Function, FunctionType = pymilvus.DataType, pymilvus.Function, pymilvus.FunctionType
    schema = pymilvus.MilvusClient.create_schema(auto_id=False)
    schema.add_field("chunk_id", DataType.INT64, is_primary=True)
    for field in ("doc_id", "ordinal", "page", "char_start", "char_end"):
        schema.add_field(field, DataType.INT64)
    schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("tokens", DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field(
        "bm25_text",
        DataType.VARCHAR,
        max_length=MAX_VARCHAR,
        enable_analyzer=True,
        analyzer_params={"tokenizer": "standard"},
    )
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_function(
        Function(
            name="bm25", function_type=FunctionType.BM25, input_field_names=["bm25_text"], output_field_names=["sparse"]
        )
    )
    index = pymilvus.MilvusClient.prepare_index_params()
    index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    index.add_index("dense", index_type="HNSW", metric_type="IP", params={"M": 32, "efConstruction": 80})
    index.add_index("doc_id", index_type="INVERTED")
    return schema, index


def _docs_schema(pymilvus: Any) -> tuple[Any, Any]:
    DataType = pymilvus.DataType
    schema = pymilvus.MilvusClient.create_schema(auto_id=False)
    schema.add_field("doc_id", DataType.INT64, is_primary=True)
    schema.add_field("path", DataType.VARCHAR, max_length=_PATH * 4)
    schema.add_field("sha256", DataType.VARCHAR, max_length=64)
    for field in ("size", "pages", "chunks", "content_of"):
        schema.add_field(field, DataType.INT64)
    for field in ("mtime", "added_at"):
        schema.add_field(field, DataType.DOUBLE)
    schema.add_field("status", DataType.VARCHAR, max_length=16)
    schema.add_field("error", DataType.VARCHAR, max_length=_PATH * 4)
    schema.add_field("chunker", DataType.VARCHAR, max_length=256)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field; nothing reads it
    index = pymilvus.MilvusClient.prepare_index_params()
    index.add_index("v", index_type="FLAT", metric_type="L2")
    return schema, index


def base_exists(settings: Settings, name: str) -> bool:
    conn = client(settings)
    if not _call(conn, _uri(settings), "has_collection", _collection(name, "chunks")):
        return False
    props = conn.describe_collection(_collection(name, "chunks")).get("properties", {})
    return _PROP + "schema_version" in props and _call(
        conn, _uri(settings), "has_collection", _collection(name, "docs")
    )


def open_base(settings: Settings, name: str) -> MilvusStore:
    if not base_exists(settings, name):
        raise KBError(
            f"no knowledge base {name!r} in Milvus at {_uri(settings)}; create it with `rag ingest PATH --kb {name}`"
        )
    store = MilvusStore(settings, name)
    version = store.meta().get("schema_version")
    if version != SCHEMA_VERSION:
        raise KBError(
            f"knowledge base {name!r} in Milvus has schema {version}, this version of rag reads {SCHEMA_VERSION}"
        )
    for coll in (store.chunks_coll, store.docs_coll):
        store._do("load_collection", coll)  # a collection reopens released; searches need it loaded
    return store


def create_base(settings: Settings, name: str, identity: EmbedderIdentity) -> MilvusStore:
    """Create the collections if new. The meta property that marks a base as created is set
    last, so a creation cut short is redone by the next call."""
    if base_exists(settings, name):
        store = open_base(settings, name)
        store.check_embedder(identity.name, identity.normalize, identity.dimension)
        return store
    pymilvus = _pymilvus()
    conn = client(settings)
    uri = _uri(settings)
    chunks, docs = _collection(name, "chunks"), _collection(name, "docs")
    for coll, (schema, index) in ((chunks, _schema(pymilvus, identity.dimension)), (docs, _docs_schema(pymilvus))):
        if _call(conn, uri, "has_collection", coll):
            conn.drop_collection(coll)  # left by a creation that did not finish
        _call(conn, uri, "create_collection", coll, schema=schema, index_params=index, consistency_level="Strong")
    store = MilvusStore(settings, name)
    store._set_meta(
        {
            "embed_model": identity.name,
            "embed_dim": identity.dimension,
            "embed_normalize": identity.normalize,
            "generation": 0,
            "created_at": time.time(),
            "dense_index": "HNSW",
            "bm25_window": bm25.WINDOW,
            "removing": [],
        }
    )
    store._set_meta({"schema_version": SCHEMA_VERSION})
    created = open_base(settings, name)
    created.created_now = True
    return created


def list_names(settings: Settings) -> list[str]:
    conn = client(settings)
    names = [_base_name(c) for c in _call(conn, _uri(settings), "list_collections")]
    return sorted(n for n in names if n and _valid(n) and base_exists(settings, n))


def _valid(name: str) -> bool:
    try:
        check_kb_name(name)
    except ValueError:
        return False
    return True


def base_stamp(settings: Settings, name: str) -> str | None:
    if not base_exists(settings, name):
        return None
    props = client(settings).describe_collection(_collection(name, "chunks")).get("properties", {})
    return props.get(_PROP + "created_at")


def delete_base(settings: Settings, name: str) -> None:
    """Drop the base's collections (and the uploads the web UI kept for it on this machine)."""
    import shutil

    if not base_exists(settings, name):
        raise KBError(f"no knowledge base {name!r} in Milvus at {_uri(settings)}")
    conn = client(settings)
    for kind in ("chunks", "docs"):
        _call(conn, _uri(settings), "drop_collection", _collection(name, kind))
    uploads = settings.kb_dir(name)
    if uploads.is_dir() and not uploads.is_symlink():
        shutil.rmtree(uploads / "files", ignore_errors=True)
        if not any(uploads.iterdir()):
            uploads.rmdir()
