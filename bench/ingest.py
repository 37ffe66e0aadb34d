"""Ingest benchmark: pipeline throughput against the bare model's encode throughput, measured in
the same run on the same chunks; re-run time on an unchanged corpus; peak memory of an ingest.

    .venv/bin/python bench/ingest.py [--limit N] [--keep DIR] [--store local|milvus]

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
import json, sys, time
from pathlib import Path
from rag.config import load_settings
from rag.embed import Embedder
from ingest.pipeline import IngestPipeline, open_for_ingest

settings = load_settings()
embedder = Embedder(settings.embed)
load_started = time.perf_counter()
embedder.model  # load before timing: the bare-encode baseline does not count loading either
load_s = time.perf_counter() - load_started
with open_for_ingest(settings, "bench", embedder) as kb:
    report = IngestPipeline(settings, embedder, kb).run([Path(sys.argv[1])])
print(json.dumps({
    "chunks": report.chunks_written, "seconds": report.seconds, "added": report.added,
    "unchanged": report.unchanged, "failed": report.failed, "empty": report.empty, "load_s": load_s,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="only the first N SciFact documents")
    parser.add_argument("--keep", type=Path, default=None, help="work in DIR and keep it (default: a temp dir)")
    parser.add_argument("--store", choices=["local", "milvus"], default="local", help="the store to ingest into")
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
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
