"""Store benchmark: the local store (SQLite + FAISS + bm25s) and Milvus Lite side by side, at 10k
and 100k chunks, measured in the same run:

- write cost: writing the chunks (text, BM25 tokens, vectors) and committing, as a ratio to
  encoding them with the bare model: the ingest's throughput relative to bare encode is
  encode / (encode + write), since parsing overlaps the encoder (bench/ingest.py measures that);
- p50 / p95 of dense, BM25 and hybrid retrieval through the Retriever `rag ask` uses;
- the resident memory of a process that opened the base and answered the queries.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/store.py \\
        [--sizes 10000,100000] [--queries 50] [--keep DIR]

Chunks are bench/query.py's: windows of the real SciFact, NFCorpus and CMRC2018 corpora (so BM25
scores real text), with random unit vectors (encoding 100k chunks takes over an hour here; a
search costs the same whatever the vectors hold).  The bare encode rate is measured on 512 of
the same texts in this run and scaled to each size.  Milvus Lite is an embedded engine for one
machine: a Milvus server or cluster runs the same code with `store.uri = http://host:19530`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query import load_queries, random_unit_vectors, synthesize  # bench/ is not a package

REPO = Path(__file__).resolve().parents[1]
PER_DOC = 10
COMMIT_EVERY_DOCS = 2_000
STORES = ("local", "milvus")


def settings_for(data: Path, backend: str):
    from rag.config import load_settings

    return load_settings(data_dir=data, store={"backend": backend, "uri": str(data / "milvus.db")})


def encode_rate(texts: list[str]) -> float:
    """Chunks/s of the bare SentenceTransformer on these texts (warmed up)."""
    from sentence_transformers import SentenceTransformer

    from rag.config import EmbedSettings
    from rag.models import resolve_embedder

    settings = EmbedSettings()
    model = SentenceTransformer(resolve_embedder(settings.model), device="cpu")
    model.encode(texts[:32], batch_size=settings.batch_size)
    started = time.perf_counter()
    model.encode(texts, batch_size=settings.batch_size, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - started)


def build(data: Path, backend: str, texts: list[str], identity) -> float:
    """Seconds to write `texts` (random vectors, real BM25 tokens) through the store and commit."""
    from rag.lexical import tokenize
    from rag.store import create_store
    from rag.types import Chunk

    vectors = random_unit_vectors(len(texts), identity.dimension, len(texts))
    tokens = [" ".join(tokenize(t)) for t in texts]  # the pipeline makes these while parsing
    started = time.perf_counter()
    with create_store(settings_for(data, backend), "bench", identity) as kb, kb.writer() as writer:
        for doc, start in enumerate(range(0, len(texts), PER_DOC)):
            part = texts[start : start + PER_DOC]
            path = f"synthetic/{doc:06d}.txt"
            writer.put_document(
                path=path,
                status="ok",
                sha256=path,
                pages=1,
                chunker="bench",
                chunks=[Chunk(t, path, None, i, 0, len(t)) for i, t in enumerate(part)],
                vectors=vectors[start : start + len(part)],
                tokens=tokens[start : start + len(part)],
            )
            if (doc + 1) % COMMIT_EVERY_DOCS == 0:
                writer.commit()
        writer.commit()
    seconds = time.perf_counter() - started
    if backend == "milvus":
        from rag.store.milvus import close_clients

        close_clients()  # Lite lets one process hold its file: the query child opens it next
    return seconds


CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from store import settings_for
from pathlib import Path
from rag.embed import Embedder
from rag.retrieve import Retriever
from rag.store import open_store
data, backend, queries = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
settings = settings_for(data, backend)
emb = Embedder(settings.embed)
emb.encode_queries(["load"])
kb = open_store(settings, "bench")
retriever = Retriever(kb, emb, settings.retrieve)
deadline = time.monotonic() + 300
while time.monotonic() < deadline:  # Milvus Lite builds its indexes in the background after a flush
    t = time.perf_counter()
    for mode in ("dense", "bm25", "hybrid"):
        retriever.search(queries[0], mode=mode)
    if time.perf_counter() - t < 1.0:
        break
times = {m: [] for m in ("dense", "bm25", "hybrid")}
for i, q in enumerate(queries):
    vec = emb.encode_queries([q])[0]
    for mode in list(times)[i % 3 :] + list(times)[: i % 3]:
        t = time.perf_counter()
        retriever.search(q, mode=mode, query_vector=vec)
        times[mode].append(time.perf_counter() - t)
# VmHWM, not ru_maxrss: Linux carries the forking parent's peak into a child's ru_maxrss.
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"times": times, "rss_mib": int(hwm.split()[1]) / 1024}))
"""


def query_child(data: Path, backend: str, queries: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-c", CHILD, str(data), backend, json.dumps(queries), str(Path(__file__).parent)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        sys.exit(f"query child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def pct(values: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.asarray(values) * 1000, [50, 95])
    return float(p50), float(p95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    from rag.config import EmbedSettings
    from rag.embed import Embedder

    sizes = [int(s) for s in args.sizes.split(",")]
    texts = synthesize(max(sizes))
    identity = Embedder(EmbedSettings()).identity
    rate = encode_rate(texts[:512])
    print(f"bare encode: {rate:.1f} chunks/s (measured on 512 of the chunks)")
    queries = load_queries(args.queries)
    work = args.keep or Path(tempfile.mkdtemp(prefix="rag-store-bench-"))
    print(f"\n{'store':<8}{'chunks':>9}{'write s':>9}{'write/encode':>14}{'ingest ratio':>14}"
          f"{'dense p50/p95':>16}{'bm25 p50/p95':>16}{'hybrid p50/p95':>17}{'RSS MiB':>9}")  # fmt: skip
    for size in sizes:
        encode_s = size / rate
        for backend in STORES:
            data = work / f"{backend}-{size}"
            shutil.rmtree(data, ignore_errors=True)
            write_s = build(data, backend, texts[:size], identity)
            result = query_child(data, backend, queries)
            cells = [
                f"{p50:.1f}/{p95:.1f}" for p50, p95 in (pct(result["times"][m]) for m in ("dense", "bm25", "hybrid"))
            ]
            ratio = encode_s / (encode_s + write_s)
            print(
                f"{backend:<8}{size:>9,}{write_s:>9.1f}{write_s / encode_s:>14.3f}{ratio:>14.3f}"
                f"{cells[0]:>16}{cells[1]:>16}{cells[2]:>17}{result['rss_mib']:>9.0f}",
                flush=True,
            )
    print(f"\n(ingest ratio = encode / (encode + write), encode = chunks / {rate:.1f} chunks/s; peak RSS of the driver "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")  # fmt: skip
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
