"""Dense index benchmark: a flat base against an HNSW base (`ingest.dense_index = "hnsw"`) of the
same vectors, through the code `rag ask` runs (`Retriever.search`, dense mode, top 10).

For each size it prints the time to build each base (`KBWriter` commit: index and BM25), the
query latency p50 / p95 of each (the flat base is the baseline, measured in the same run on the
same queries), HNSW's speed-up over flat, and its recall@10 against flat's exact ranking, for a
few `retrieve.hnsw_ef_search` values; then the cost of removing one document from each.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/dense_index.py [--sizes 100000,300000] [--queries 200]
        [--ef 32,128,512] [--centres 2000]

Vectors: unit vectors around 2,000 random centres (sentence embeddings cluster by topic), queries
drawn the same way; `--centres 0` draws them uniformly, the worst case for a graph index. Encoding
300k real chunks takes hours on a small CPU; a search costs the same whatever the vectors mean.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PER_DOC = 10
TOP_K = 10
CENTRES = 2000
SPREAD = 0.6  # noise around a centre, relative to the centre's unit length: neighbours, not copies


def clustered(n: int, dim: int, seed: int, centres: int = CENTRES) -> np.ndarray:
    """Unit vectors around `centres` random centres; uniform on the sphere when `centres` is 0."""
    rng = np.random.default_rng(seed)
    if centres == 0:
        vecs = rng.standard_normal((n, dim)).astype(np.float32)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    points = np.random.default_rng(0).standard_normal((centres, dim)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * (SPREAD / np.sqrt(dim))
    vecs = points[rng.integers(0, centres, n)] + noise
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def build(root: Path, identity, kind: str, vectors: np.ndarray) -> float:
    """Seconds to write a base of `kind` holding `vectors`, PER_DOC chunks a document."""
    from rag.store.local import LocalStore
    from rag.types import Chunk

    started = time.perf_counter()
    with LocalStore.create(root, identity) as kb, kb.writer(kind) as writer:
        for doc, start in enumerate(range(0, len(vectors), PER_DOC)):
            part = vectors[start : start + PER_DOC]
            source = f"synthetic/{doc:06d}.txt"
            chunks = [Chunk(f"chunk {start + i}", source, None, i, 0, 1) for i in range(len(part))]
            writer.put_document(path=source, status="ok", chunks=chunks, vectors=part, tokens=["chunk"] * len(part))
        writer.commit()
    return time.perf_counter() - started


def run_queries(retriever, queries: np.ndarray) -> tuple[list[list[int]], list[float]]:
    rankings, seconds = [], []
    for q in queries:
        started = time.perf_counter()
        hits = retriever.search("q", mode="dense", top_k=TOP_K, query_vector=q).hits
        seconds.append(time.perf_counter() - started)
        rankings.append([h.chunk.chunk_id for h in hits])
    return rankings, seconds


def removal_seconds(root: Path) -> float:
    from rag.store.local import LocalStore

    with LocalStore.open(root) as kb, kb.writer() as writer:
        started = time.perf_counter()
        writer.remove_documents([kb.documents()[0].doc_id])
        writer.commit()
        return time.perf_counter() - started


def ms(seconds: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.asarray(seconds) * 1000, [50, 95])
    return float(p50), float(p95)


def bench_size(n: int, n_queries: int, efs: list[int], centres: int, embedder, work: Path) -> None:
    from rag.config import RetrieveSettings
    from rag.retrieve import Retriever
    from rag.store.local import LocalStore

    identity = embedder.identity
    vectors = clustered(n, identity.dimension, seed=n, centres=centres)
    queries = clustered(n_queries, identity.dimension, seed=n + 1, centres=centres)
    roots = {kind: work / f"{kind}-{n}" for kind in ("flat", "hnsw")}
    built = {kind: build(root, identity, kind, vectors) for kind, root in roots.items()}
    print(f"\n{n:,} chunks: build flat {built['flat']:.1f} s, hnsw {built['hnsw']:.1f} s")
    with LocalStore.open(roots["flat"]) as flat_kb:
        flat_retriever = Retriever(flat_kb, embedder, RetrieveSettings())
        run_queries(flat_retriever, queries[:5])  # load the index before timing
        exact, flat_s = run_queries(flat_retriever, queries)
    f50, f95 = ms(flat_s)
    print(f"  {'index':<16}{'p50 ms':>9}{'p95 ms':>9}{'speed-up':>10}{'recall@10':>11}")
    print(f"  {'flat (baseline)':<16}{f50:>9.2f}{f95:>9.2f}{1.0:>9.1f}x{1.0:>11.3f}")
    for ef in efs:
        with LocalStore.open(roots["hnsw"], ef_search=ef) as hnsw_kb:
            retriever = Retriever(hnsw_kb, embedder, RetrieveSettings(hnsw_ef_search=ef))
            run_queries(retriever, queries[:5])
            found, hnsw_s = run_queries(retriever, queries)
            recall = np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact, strict=True) if b])
            h50, h95 = ms(hnsw_s)
            print(f"  {f'hnsw ef {ef}':<16}{h50:>9.2f}{h95:>9.2f}{f50 / h50:>9.1f}x{recall:>11.3f}")
    removal = {kind: removal_seconds(root) for kind, root in roots.items()}
    print(f"  removing one document and committing: flat {removal['flat']:.1f} s, hnsw {removal['hnsw']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,300000", help="comma-separated chunk counts")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", default="32,128,512", help="retrieve.hnsw_ef_search values to try")
    parser.add_argument(
        "--centres", type=int, default=CENTRES, help="clusters of the vectors; 0: uniform (a graph index's worst case)"
    )
    args = parser.parse_args()

    from rag.config import EmbedSettings
    from rag.embed import Embedder

    embedder = Embedder(EmbedSettings())  # its name and dimension only: queries are given as vectors
    efs = [int(x) for x in args.ef.split(",")]
    with tempfile.TemporaryDirectory(prefix="rag-bench-dense-") as work:
        for n in (int(x) for x in args.sizes.split(",")):
            bench_size(n, args.queries, efs, args.centres, embedder, Path(work))


if __name__ == "__main__":
    main()
