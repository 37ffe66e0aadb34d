"""The local store's vectors: a FAISS ``IndexIDMap2`` (ids are chunk ids) over an inner-product
index of normalized vectors, flat (exact, the default) or HNSW (approximate, for bases past ~1M
chunks), one file per generation.  The FAISS of the local store lives here and nowhere else.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from rag.store import files
from rag.store.base import KBError, Scored

KINDS = ("flat", "hnsw")
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
# An HNSW graph searched with a filter finds few of the allowed vectors when they are few (the
# walk rarely meets them: 1 of 3 in a test), so up to this many allowed chunks are scored exactly.
EXACT_FILTERED = 50_000


def path(root: Path, gen: int) -> Path:
    return root / f"dense-{gen}.faiss"


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise KBError(f"unknown dense index {kind!r}; use one of {', '.join(KINDS)}")


def new(dim: int, kind: str):
    """An empty index of `kind` ("flat" or "hnsw") whose ids are chunk ids."""
    import faiss

    check_kind(kind)
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return faiss.IndexIDMap2(inner)


def read(root: Path, gen: int, dim: int, kind: str = "flat"):
    import faiss

    if gen == 0:
        return new(dim, kind)
    return faiss.read_index(str(path(root, gen)))


def write(index: Any, root: Path, gen: int) -> None:
    """Written completely under a temporary name, fsynced, then renamed into place."""
    import faiss

    final = path(root, gen)
    tmp = final.with_name(final.name + ".tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    files.replace(tmp, final)


def kind_of(index: Any) -> str:
    import faiss

    return "hnsw" if isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW) else "flat"


def rebuild(index: Any, kind: str):
    """The live vectors in a fresh index of `kind` (converting a base, or compacting an HNSW graph)."""
    import faiss

    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    vectors = index.index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), np.float32)
    keep = ids != DEAD
    fresh = new(index.d, kind)
    if keep.any():
        fresh.add_with_ids(np.ascontiguousarray(vectors[keep]), ids[keep])
    return fresh


def remove(index: Any, ids: np.ndarray) -> None:
    """Remove `ids`: from a flat index at once; from HNSW by relabelling their vectors DEAD."""
    import faiss

    if kind_of(index) == "flat":
        index.remove_ids(ids)
        return
    labels = faiss.vector_to_array(index.id_map)
    labels[np.isin(labels, ids)] = DEAD
    faiss.copy_array_to_vector(labels, index.id_map)
    index.construct_rev_map()


def dead_count(index: Any) -> int:
    import faiss

    return int(np.count_nonzero(faiss.vector_to_array(index.id_map) == DEAD)) if index.ntotal else 0


def needs_compacting(index: Any) -> bool:
    return kind_of(index) == "hnsw" and dead_count(index) > COMPACT_AT * index.ntotal


def search(index: Any, qvec: np.ndarray, k: int, allowed: np.ndarray | None, ef_search: int) -> Scored:
    """The `k` nearest chunks, only among `allowed` when given."""
    import faiss

    if index.ntotal == 0 or (allowed is not None and len(allowed) == 0):
        return []
    hnsw = kind_of(index) == "hnsw"
    if hnsw and allowed is not None and len(allowed) <= EXACT_FILTERED:
        try:
            return _exact(index, qvec, allowed, k)
        except RuntimeError:  # a chunk committed after this index was read: search the graph
            pass
    params = None
    if hnsw:
        # Removed chunks stay in the graph, labelled DEAD; neither selector lets them out.
        sel = faiss.IDSelectorBatch(allowed) if allowed is not None else faiss.IDSelectorRange(*LIVE_IDS)
        params = faiss.SearchParametersHNSW(efSearch=max(ef_search, k), sel=sel)
    elif allowed is not None:
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
    scores, ids = index.search(qvec[None, :], min(k, index.ntotal), params=params)
    return [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0], strict=True) if i >= 0]


def _exact(index: Any, qvec: np.ndarray, allowed: np.ndarray, k: int) -> Scored:
    ids = np.asarray(allowed, dtype=np.int64)
    scores = index.reconstruct_batch(ids) @ qvec
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(ids[i]), float(scores[i])) for i in order]


def vectors(index: Any, ids: list[int]) -> np.ndarray:
    """The stored vectors of `ids` (a zero vector for an id this generation does not hold)."""
    out = np.zeros((len(ids), index.d), dtype=np.float32)
    for row, cid in enumerate(ids):
        with contextlib.suppress(RuntimeError):  # an id this generation does not hold stays zero
            out[row] = index.reconstruct(int(cid))
    return out
