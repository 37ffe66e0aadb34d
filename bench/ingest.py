"""Ingest benchmark: pipeline throughput against the bare model's encode throughput, measured in
the same run on the same chunks; re-run time on an unchanged corpus; peak memory of an ingest.

    .venv/bin/python bench/ingest.py [--limit N] [--keep DIR] [--store local|milvus] [--ray]

--ray adds ingests of the same corpus on a local Ray runtime with 1 and 2 embedding actors, as
ratios against the plain ingest, and the measurements behind a model of throughput on N
machines: Ray's rate on this machine, the driver's share of its CPU, and the driver's bounds
(its hashing of the files, and the store's write rate).

Corpus: BEIR SciFact (5,183 abstracts) written out as .txt files, plus the real PDFs in
../shared/data/docs.  Targets: ratio >= 0.9, re-run < 2 s for 5,000 documents, peak < 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# Runs in a child process so its peak RSS is the ingest's own, model included.
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from rag.config import load_settings
from rag.embed import Embedder
from ingest.pipeline import IngestPipeline, open_for_ingest

settings = load_settings()
embedder = Embedder(settings.embed)
load_started = time.perf_counter()
embedder.model  # load before timing: the bare-encode baseline does not count loading either
if settings.ingest.ray:  # the runtime's start-up is timed apart, like the model's loading
    from ingest.cluster import connect
    connect(settings.ingest)
load_s = time.perf_counter() - load_started
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # this process's, not Ray's workers'
cpu_before = cpu()
with open_for_ingest(settings, sys.argv[2] if len(sys.argv) > 2 else "bench", embedder) as kb:
    report = IngestPipeline(settings, embedder, kb).run([Path(sys.argv[1])])
print(json.dumps({
    "chunks": report.chunks_written, "seconds": report.seconds, "added": report.added,
    "unchanged": report.unchanged, "failed": report.failed, "empty": report.empty, "load_s": load_s,
    "cpu_s": cpu() - cpu_before,
    # VmHWM, this process's own peak: ru_maxrss would carry the forking parent's.
    "max_rss_kib": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]),
}))
"""

BARE = r"""
import json, sys, time
from pathlib import Path
from sentence_transformers import SentenceTransformer
from rag.models import resolve_embedder
from rag.config import load_settings
from rag.store import open_store

settings = load_settings()
with open_store(settings, "bench") as kb:
    ids = [cid for cid, _ in kb.chunk_ids()]
    chunks = kb.chunks(ids)
texts = [chunks[cid].text for cid in ids]
model = SentenceTransformer(resolve_embedder(settings.embed.model), device="cpu")
model.encode(texts[:64], batch_size=settings.embed.batch_size)  # warm-up
started = time.perf_counter()
model.encode(texts, batch_size=settings.embed.batch_size, normalize_embeddings=True)
print(json.dumps({"chunks": len(texts), "seconds": time.perf_counter() - started}))
"""


# The driver's own bounds: examining every file as for a first ingest (stat, read, hash), and the
# store's write rate (a copy of the base: it reads the source too, so a lower bound).
BOUNDS = r"""
import json, sys, time
from pathlib import Path
from ingest.pipeline import IngestPipeline, discover
from rag.config import load_settings
from rag.embed import Embedder
from rag.store import open_store
from rag.store.copy import copy_base

settings = load_settings()
files = discover([Path(sys.argv[1])])[0]
with open_store(settings, "bench") as kb:
    pipe = IngestPipeline(settings, Embedder(settings.embed), kb)  # examine() never loads the model
    started = time.perf_counter()
    for path in files:
        pipe.examine(path, None)
    hash_s = time.perf_counter() - started
started = time.perf_counter()
copy_base(settings, "bench", "bench-copy")
print(json.dumps({"hash_s": hash_s, "copy_s": time.perf_counter() - started}))
"""


def write_corpus(folder: Path, limit: int | None) -> int:
    corpus = SHARED / "beir" / "scifact" / "corpus.jsonl"
    if not corpus.exists():
        sys.exit(f"needs {corpus} (the shared data folder beside the repo)")
    n = 0
    with open(corpus, encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and n >= limit:
                break
            doc = json.loads(line)
            sub = folder / "scifact" / doc["_id"][-2:]  # a realistic tree, not one huge folder
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{doc['_id']}.txt").write_text(f"{doc.get('title', '')}\n\n{doc['text']}", encoding="utf-8")
            n += 1
    for pdf in sorted((SHARED / "docs").rglob("*.pdf")):
        shutil.copy(pdf, folder / pdf.name)
        n += 1
    return n


def run_json(code: str, *args: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ray_bench(docs: Path, env: dict[str, str], plain: dict) -> None:
    """The same corpus on a local Ray runtime, with 1 and 2 embedding actors, against the plain
    ingest of this run; then what bounds it on N machines."""
    plain_rate = plain["chunks"] / plain["seconds"]
    cores = os.cpu_count() or 1
    runs = {}
    for actors in (1, 2):
        ray_env = {**env, "RAG_INGEST__RAY": "local", "RAG_INGEST__RAY_EMBEDDERS": str(actors)}
        ray_env["RAG_INGEST__RAY_CPUS"] = str(max(cores, actors + 1))  # a CPU for parsing beside the actors
        got = runs[actors] = run_json(CHILD, str(docs), f"bench-ray{actors}", env=ray_env)
        assert got["chunks"] == plain["chunks"], (got, plain)
        rate = got["chunks"] / got["seconds"]
        print(
            f"ray, {actors} embedding actor(s): {got['chunks']} chunks in {got['seconds']:.1f} s = {rate:.1f} chunks/s "
            f"(start-up and model load {got['load_s']:.1f} s, not counted); RATIO ray/plain: {rate / plain_rate:.3f}"
        )
    best = max(runs.values(), key=lambda r: r["chunks"] / r["seconds"])
    ray_rate = best["chunks"] / best["seconds"]
    driver_share = best["cpu_s"] / best["seconds"] / cores  # of one machine like this one
    bounds = run_json(BOUNDS, str(docs), env=env)
    hash_rate = plain["chunks"] / bounds["hash_s"]
    write_rate = plain["chunks"] / bounds["copy_s"]
    print(
        f"bounds: Ray here {ray_rate:.1f} chunks/s with the driver taking {driver_share:.0%} of this machine's "
        f"{cores} cores; the driver hashes {hash_rate:,.0f} chunks/s worth of files; the store writes "
        f">= {write_rate:,.0f} chunks/s"
    )
    print("model: chunks/s on N machines like this ~ min(ray x (N - driver) / (1 - driver), hashing, store writes)")
    for n in (1, 2, 4, 8, 16, 32, 64):
        predicted = min(ray_rate * (n - driver_share) / (1 - driver_share), hash_rate, write_rate)
        print(f"  N = {n:>2}: {predicted:>8,.0f} chunks/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="only the first N SciFact documents")
    parser.add_argument("--keep", type=Path, default=None, help="work in DIR and keep it (default: a temp dir)")
    parser.add_argument("--store", choices=["local", "milvus"], default="local", help="the store to ingest into")
    parser.add_argument("--ray", action="store_true", help="also ingest on a local Ray runtime (1 and 2 actors)")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="rag-bench-"))
    docs, data = work / "docs", work / "data"
    shutil.rmtree(work, ignore_errors=True)
    files = write_corpus(docs, args.limit)
    env = {**os.environ, "RAG_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["RAG_STORE__BACKEND"] = args.store  # Milvus Lite in <data>/milvus.db
    print(f"corpus: {files} files in {docs}; store: {args.store}")

    first = run_json(CHILD, str(docs), env=env)
    pipe_rate = first["chunks"] / first["seconds"]
    print(
        f"ingest: {first['added']} added, {first['empty']} empty, {first['failed']} failed, "
        f"{first['chunks']} chunks in {first['seconds']:.1f} s = {pipe_rate:.1f} chunks/s "
        f"(model load {first['load_s']:.1f} s, not counted)"
    )

    bare = run_json(BARE, env=env)
    bare_rate = bare["chunks"] / bare["seconds"]
    print(
        f"bare SentenceTransformer.encode of the same {bare['chunks']} chunks: {bare['seconds']:.1f} s "
        f"= {bare_rate:.1f} chunks/s"
    )
    ratio = pipe_rate / bare_rate
    print(f"RATIO ingest/bare-encode throughput: {ratio:.3f} (target >= 0.9) {'OK' if ratio >= 0.9 else 'MISSED'}")

    again = run_json(CHILD, str(docs), env=env)
    started = time.perf_counter()
    cli = subprocess.run(
        [sys.executable, "-m", "rag", "ingest", str(docs), "--kb", "bench"], env=env, capture_output=True, text=True
    )
    cli_s = time.perf_counter() - started
    print(
        f"re-run on the unchanged corpus: {again['unchanged']} unchanged in {again['seconds']:.2f} s "
        f"(pipeline), {cli_s:.2f} s for the whole `rag ingest` command (exit {cli.returncode}); "
        f"target < 2 s for 5,000 documents {'OK' if again['seconds'] < 2 else 'MISSED'}"
    )

    peak_gib = first["max_rss_kib"] / 2**20
    print(f"peak RSS of the ingest process: {peak_gib:.2f} GiB (target < 2 GiB) {'OK' if peak_gib < 2 else 'MISSED'}")
    size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    print(f"knowledge base on disk: {size / 2**20:.1f} MiB for {first['chunks']} chunks")
    from collections import Counter

    from rag.config import load_settings
    from rag.store import open_store

    with open_store(load_settings(data_dir=data, store={"backend": args.store}), "bench") as kb:
        statuses = dict(Counter(d.status for d in kb.documents()))
    print(f"documents by status: {statuses}")
    if args.ray:
        ray_bench(docs, env, first)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
