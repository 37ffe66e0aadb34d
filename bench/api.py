"""API benchmark: `POST /v1/kbs/{kb}/search` (BM25 mode, so no LLM) with 1, 8 and 32 concurrent
clients against a real `rag api` on loopback, beside the same searches made by calling the
Retriever in-process, measured in the same run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/api.py [--chunks 5000] [--requests 300] [--seconds 30]

The knowledge base: SciFact's abstracts (../shared/data), one chunk each, written straight into
a new base with random unit vectors (encoding them would take most of an hour here, and BM25 mode
ranks by the text).  Each query is still encoded by the real model, as every search is: the
relevance gate compares it with the hits.  Queries: SciFact's claims, the same list for every row.

Reported per row: requests/s, p50 and p95 latency, and the ratio of its requests/s to the
in-process retriever's (one thread: a process answers one search at a time, so this is the most
a single server process could do).  The clients run on the same machine as the server, so they
take some of its CPU; each row is bounded by --requests and --seconds, and every request goes to
127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query import read_jsonl  # bench/ is not a package

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "data" / "beir" / "scifact"
KB = "scifact-bench"
LEVELS = (1, 8, 32)
TOP_K = 5
SEED = 0


def build_base(settings, n: int) -> None:
    """Base KB holding the first n SciFact abstracts, with random unit vectors (see the docstring)."""
    from rag.stack import embedder_for
    from rag.store import create_store
    from rag.types import Chunk

    docs = read_jsonl(SCIFACT / "corpus.jsonl")[:n]
    identity = embedder_for(settings).identity
    vectors = np.random.default_rng(SEED).standard_normal((len(docs), identity.dimension), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with create_store(settings, KB, identity) as kb, kb.writer() as writer:
        for i, doc in enumerate(docs):
            text = f"{doc.get('title', '')} {doc['text']}".strip()
            source = f"scifact/{doc['_id']}.txt"
            writer.put_document(
                path=source,
                status="ok",
                pages=1,
                chunker="bench",
                chunks=[Chunk(text, source, None, 0, 0, len(text))],
                vectors=vectors[i : i + 1],
            )
        writer.commit()


def percentiles(seconds: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.asarray(seconds) * 1000, [50, 95])
    return float(p50), float(p95)


def in_process(settings, queries: list[str], limit: int, seconds: float) -> dict:
    """The same searches through the Retriever, one after another, in this process."""
    from rag.stack import retriever_for

    retriever = retriever_for(settings, KB)
    for q in queries[:5]:  # load the model and the indexes
        retriever.search(q, mode="bm25", top_k=TOP_K)
    times: list[float] = []
    started = time.perf_counter()
    for q in _cycle(queries, limit):
        t0 = time.perf_counter()
        retriever.search(q, mode="bm25", top_k=TOP_K)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - started > seconds:
            break
    return {"requests": len(times), "rps": len(times) / (time.perf_counter() - started), "latency": times}


def _cycle(queries: list[str], n: int) -> list[str]:
    return [queries[i % len(queries)] for i in range(n)]


async def over_http(url: str, clients: int, queries: list[str], limit: int, seconds: float) -> dict:
    """`clients` concurrent clients, each with its own connection, sending searches until `limit`
    requests in all or `seconds` have passed."""
    import httpx

    todo = iter(_cycle(queries, limit))
    times: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def one_client() -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for q in todo:
                if time.perf_counter() > deadline:
                    return
                t0 = time.perf_counter()
                reply = await http.post(f"/v1/kbs/{KB}/search", json={"query": q, "mode": "bm25", "top_k": TOP_K})
                times.append(time.perf_counter() - t0)
                errors += reply.status_code != 200

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return {
        "requests": len(times),
        "rps": len(times) / (time.perf_counter() - started),
        "latency": times,
        "errors": errors,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "RAG_DATA_DIR": str(data),
        "RAG_API__RATE_LIMIT_PER_MINUTE": "0",  # no limit: measuring throughput, not the limit
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "rag", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import httpx

    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("rag api did not start")
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=5000, help="SciFact abstracts in the base")
    parser.add_argument("--requests", type=int, default=300, help="most requests per row")
    parser.add_argument("--seconds", type=float, default=30.0, help="most seconds per row")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from rag.config import load_settings

    queries = [q["text"] for q in read_jsonl(SCIFACT / "queries.jsonl")]
    with tempfile.TemporaryDirectory(prefix="rag-bench-api-") as tmp:
        data = Path(tmp) / "data"
        settings = load_settings(data_dir=data)
        started = time.perf_counter()
        build_base(settings, args.chunks)
        print(f"base: {args.chunks:,} SciFact abstracts, built in {time.perf_counter() - started:.1f} s", flush=True)
        rows = [("in-process Retriever.search, 1 thread", in_process(settings, queries, args.requests, args.seconds))]
        port = free_port()
        server = start_server(data, port)
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(over_http(url, 1, queries[:10], 10, 60))  # warm up: the server's model and indexes
            for clients in LEVELS:
                measured = asyncio.run(over_http(url, clients, queries, args.requests, args.seconds))
                rows.append((f"rag api, {clients} client{'s' * (clients > 1)}", measured))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
    base = rows[0][1]["rps"]
    print("\n| searches (bm25, top 5) | requests | errors | requests/s | p50 | p95 | requests/s vs in-process |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        p50, p95 = percentiles(r["latency"])
        print(
            f"| {name} | {r['requests']} | {r.get('errors', 0)} | {r['rps']:.1f} | {p50:.1f} ms | {p95:.1f} ms "
            f"| {r['rps'] / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
