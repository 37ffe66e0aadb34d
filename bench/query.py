"""Query benchmark: retrieval latency (p50, p95) of dense, BM25 and hybrid search at 10k and 100k
chunks, against two references measured in the same run on the same queries:

- the floor: query encoding plus one flat FAISS search (what any dense retrieval must pay);
- the Langchain-Chatchat design: langchain's FAISS vector store plus an ``EnsembleRetriever``
  whose ``BM25Retriever`` is rebuilt from all chunks for every query.

It also reports the memory the query process holds, and the local default LLM's
time-to-first-token and tokens/s on a typical RAG prompt (three retrieved passages).

    .venv/bin/pip install -r bench/requirements.txt        # the baseline only, not a dependency
    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/query.py \\
        [--sizes 10000,100000] [--queries 50] [--baseline-queries 3] [--keep DIR] [--rerank [MODEL]] [--rerank-only]

Chunks: 40-80-word windows (80-160 characters for Chinese) of the real SciFact, NFCorpus and
CMRC2018 corpora in ../shared/data, shifted on each pass until there are enough, so BM25 scores
real text.  Their vectors are random unit vectors: encoding 100k chunks takes over an hour on a
small CPU, and a flat FAISS search costs the same whatever the vectors hold.  Each query is
encoded with the real model.  Queries: real SciFact and NFCorpus queries.  Each size's queries
run in a fresh child process, so its memory is that of a process that only queries.

Targets at 100k chunks on a 2-core machine: hybrid p50 within 1.3x of the floor p50 (BM25,
fusion and chunk lookup nearly free), and the baseline's p50 at least 100x hybrid's.
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
import warnings
from pathlib import Path
from statistics import median

import numpy as np
from langchain_core.embeddings import Embeddings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CACHE = REPO / ".cache" / "rag"  # the converted default LLM lives here
CORPORA_EN = [SHARED / "beir" / "scifact" / "corpus.jsonl", SHARED / "beir" / "nfcorpus" / "corpus.jsonl"]
CORPUS_ZH = SHARED / "qa" / "cmrc2018" / "corpus.jsonl"
QUERY_FILES = [SHARED / "beir" / "scifact" / "queries.jsonl", SHARED / "beir" / "nfcorpus" / "queries.jsonl"]
CHUNKS_PER_DOC = 10
TOP_K = 5
MODES = ("floor", "dense", "bm25", "hybrid", "feedback")  # feedback: hybrid, searched again (retrieve.feedback_*)
FEEDBACK_PASSAGES = 3  # what NFCorpus dev chose for the tuned embedder (README)
FLOOR_TARGET = 1.3
BASELINE_TARGET = 100.0
TARGET_SIZE = 100_000
SEED = 0


# ---- synthetic chunks and real queries ------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        sys.exit(f"needs {path} (the shared data folder beside the repo)")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _windows(units: list[str], offset: int, rng: np.random.Generator, joiner: str, scale: int) -> list[str]:
    """Consecutive windows of 40-80 units (times `scale`) starting at `offset`."""
    out, pos = [], offset
    while pos < len(units):
        size = int(rng.integers(40, 81)) * scale
        piece = units[pos : pos + size]
        if len(piece) >= 20 * scale:
            out.append(joiner.join(piece))
        pos += size
    return out


def synthesize(n: int) -> list[str]:
    """n chunk texts: each pass windows every corpus at a new offset, shuffled, until there are n."""
    rng = np.random.default_rng(SEED)
    english = [f"{d.get('title', '')} {d['text']}".split() for p in CORPORA_EN for d in read_jsonl(p)]
    chinese = [list(d["text"]) for d in read_jsonl(CORPUS_ZH)]
    texts: list[str] = []
    for pass_no in range(100):
        batch = [w for words in english for w in _windows(words, pass_no * 20, rng, " ", 1)]
        batch += [w for chars in chinese for w in _windows(chars, pass_no * 40, rng, "", 2)]
        if not batch:
            break
        texts += [batch[i] for i in rng.permutation(len(batch))]
        if len(texts) >= n:
            return texts[:n]
    sys.exit(f"the corpora yield only {len(texts)} chunks; ask for fewer")


def typical_question() -> str:
    """The first real query phrased as a question (SciFact's are claims, most of NFCorpus' titles)."""
    return next(q for q in load_queries(10_000) if q.rstrip().endswith("?"))


def load_queries(n: int, skip: int = 0) -> list[str]:
    """n real queries, alternating SciFact and NFCorpus, after the first `skip` of that order."""
    rng = np.random.default_rng(SEED + 1)
    pools = []
    for path in QUERY_FILES:
        rows = [r["text"] for r in read_jsonl(path) if len(r["text"].split()) >= 3]
        pools.append([rows[i] for i in rng.permutation(len(rows))])
    mixed = [q for pair in zip(*pools, strict=False) for q in pair]
    return mixed[skip : skip + n]


# ---- building a base without encoding ----------------------------------------------------------
def random_unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    vecs = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs


def build_base(settings, identity, name: str, texts: list[str]) -> tuple[Path, float, bool]:
    """The base `name` holding `texts` (reused when --keep already holds it): path, seconds, reused."""
    from rag.store import local
    from rag.types import Chunk

    root = settings.kb_dir(name)
    if local.exists(root):
        with local.LocalStore.open(root) as kb:
            if kb.chunk_count() == len(texts):
                return root, 0.0, True
        shutil.rmtree(root)
    started = time.perf_counter()
    vectors = random_unit_vectors(len(texts), identity.dimension, SEED + len(texts))
    with local.LocalStore.create(root, identity) as kb, kb.writer() as writer:
        for doc, start in enumerate(range(0, len(texts), CHUNKS_PER_DOC)):
            part = texts[start : start + CHUNKS_PER_DOC]
            source = f"synthetic/{doc:06d}.txt"
            writer.put_document(
                path=source,
                status="ok",
                pages=1,
                chunker="bench",
                chunks=[Chunk(t, source, None, i, 0, len(t)) for i, t in enumerate(part)],
                vectors=vectors[start : start + len(part)],
            )
        writer.commit()
    return root, time.perf_counter() - started, False


# ---- the query process (a child, so its memory is a querying process's own) --------------------
def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
    """This process's own high-water RSS (VmHWM).  Not ru_maxrss: Linux carries that over fork and
    exec, so a child would report its parent's peak (here the builder's, with every chunk in memory)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.asarray(seconds) * 1000, [50, 95])
    return float(p50), float(p95)


def floor_once(emb, kb, query: str, depth: int) -> tuple[float, float]:
    """(encode seconds, flat-search seconds) of the cheapest possible dense retrieval: the
    store's dense search alone, on the one flat FAISS index."""
    started = time.perf_counter()
    qvec = emb.encode_queries([query])
    encoded = time.perf_counter()
    kb.dense_candidates(qvec[0], depth)
    return encoded - started, time.perf_counter() - encoded


def time_modes(retriever, with_feedback, emb, kb, queries: list[str]) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per query for the floor and each mode, interleaved (order rotated per query) so
    that noise from other work on the machine falls on all of them alike.  "feedback" is hybrid
    with pseudo-relevance feedback (`with_feedback`): a second dense search and a second fusion."""
    depth = retriever.settings.candidates
    times: dict[str, list[float]] = {m: [] for m in (*MODES, "encode", "faiss")}
    answered = {m: 0 for m in MODES[1:]}
    for i, query in enumerate(queries):
        for mode in MODES[i % len(MODES) :] + MODES[: i % len(MODES)]:
            if mode == "floor":
                enc, search = floor_once(emb, kb, query, depth)
                times["encode"].append(enc)
                times["faiss"].append(search)
                times["floor"].append(enc + search)
                continue
            started = time.perf_counter()
            if mode == "feedback":
                hits = with_feedback.search(query, mode="hybrid", top_k=TOP_K).hits
            else:
                hits = retriever.search(query, mode=mode, top_k=TOP_K).hits
            times[mode].append(time.perf_counter() - started)
            answered[mode] += bool(hits)
    return times, answered


class QueryEmbeddings(Embeddings):
    """A langchain `Embeddings` over the project's embedder (same model, same query encoding)."""

    def __init__(self, emb) -> None:
        self.emb = emb

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.emb.encode_passages(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.emb.encode_queries([text])[0].tolist()


def baseline_imports():
    """(FAISS, BM25Retriever, EnsembleRetriever) or None when the baseline's packages are missing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # langchain-community announces its own sunset on import
        try:
            import rank_bm25  # noqa: F401 - BM25Retriever imports it lazily
            from langchain_community.retrievers import BM25Retriever
            from langchain_community.vectorstores import FAISS
        except ImportError:
            return None
        try:
            from langchain_classic.retrievers import EnsembleRetriever
        except ImportError:
            try:
                from langchain.retrievers import EnsembleRetriever
            except ImportError:
                return None
    return FAISS, BM25Retriever, EnsembleRetriever


def build_langchain_store(faiss_store_cls, kb, emb):
    """langchain's FAISS store over the same texts and the same vectors as the base."""
    ids = [cid for cid, _ in kb.chunk_ids()]
    vectors = kb.vectors(ids)
    chunks = kb.chunks(ids)
    texts = [chunks[cid].text for cid in ids]
    # Rows as arrays rather than lists of floats: the store turns them into one float32 matrix
    # either way, and 100k x 384 Python floats would cost over a gigabyte just to hand over.
    store = faiss_store_cls.from_embeddings(list(zip(texts, list(vectors), strict=True)), QueryEmbeddings(emb))
    return store, texts


def baseline_once(classes, store, texts: list[str], query: str) -> int:
    """What Langchain-Chatchat does per query: rebuild BM25 over every chunk, then ensemble."""
    _, bm25_cls, ensemble_cls = classes
    bm25 = bm25_cls.from_texts(texts, k=TOP_K)
    ensemble = ensemble_cls(retrievers=[bm25, store.as_retriever(search_kwargs={"k": TOP_K})], weights=[0.5, 0.5])
    return len(ensemble.invoke(query))


def time_baseline(kb, emb, queries: list[str]) -> dict:
    classes = baseline_imports()
    started = time.perf_counter()
    store, texts = build_langchain_store(classes[0], kb, emb)
    build_s = time.perf_counter() - started
    times = []
    for query in queries:
        started = time.perf_counter()
        baseline_once(classes, store, texts, query)
        times.append(time.perf_counter() - started)
    return {"store_build_s": build_s, "times": times}


def child_main(kb_dir: Path, n_queries: int, n_baseline: int) -> None:
    from rag.config import load_settings
    from rag.embed import Embedder
    from rag.retrieve import Retriever
    from rag.store.local import LocalStore

    rss_start = rss_mib()
    settings = load_settings(data_dir=kb_dir.parent.parent, cache_dir=CACHE)
    emb = Embedder(settings.embed)
    emb.encode_queries(["load the model"])
    rss_model = rss_mib()
    kb = LocalStore.open(kb_dir)
    retriever = Retriever(kb, emb, settings.retrieve)
    with_feedback = Retriever(kb, emb, settings.retrieve.model_copy(update={"feedback_passages": FEEDBACK_PASSAGES}))
    warm = load_queries(3, skip=n_queries)
    time_modes(retriever, with_feedback, emb, kb, warm)  # loads both indexes, warms torch, FAISS and SQLite
    rss_loaded = rss_mib()
    load_before = os.getloadavg()[0]
    times, answered = time_modes(retriever, with_feedback, emb, kb, load_queries(n_queries))
    result = {
        "chunks": kb.chunk_count(),
        "disk_mib": kb.size_on_disk() / 2**20,
        "times": times,
        "answered": answered,
        "load_avg": [load_before, os.getloadavg()[0]],
        "rss_start_mib": rss_start,
        "rss_model_mib": rss_model,
        "rss_loaded_mib": rss_loaded,
        "rss_after_mib": rss_mib(),
        "peak_rss_mib": peak_rss_mib(),
    }
    result["baseline"] = time_baseline(kb, emb, load_queries(n_baseline))
    print(json.dumps(result))


def run_child(kb_dir: Path, n_queries: int, n_baseline: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(kb_dir)]
    cmd += ["--queries", str(n_queries), "--baseline-queries", str(n_baseline)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"query process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baseline_count(size: int, asked: int, cap: int) -> int:
    """`asked` baseline queries at 100k chunks, proportionally more at smaller sizes."""
    return max(1, min(cap, max(asked, asked * TARGET_SIZE // size)))


# ---- the LLM ------------------------------------------------------------------------------
FORCED_TOKENS = 64  # decoding is timed over this many tokens


def llm_bench(settings, emb, kb_dir: Path, question: str, runs: int = 3) -> dict:
    """The default model on a typical prompt: instructions, 3 retrieved passages, a question.
    BM25 picks the passages, since the bench's chunk vectors are random.  It runs on the
    transformers engine, whose bare model (`hf_model.generate`) separates prefill from what
    chat.stream adds; bench/llm.py compares it with llama.cpp, the default engine."""
    from rag.llm import make_chat_model, with_token_limit
    from rag.prompts import answer_messages
    from rag.retrieve import Retriever
    from rag.store.local import LocalStore

    with LocalStore.open(kb_dir) as kb:
        hits = Retriever(kb, emb, settings.retrieve).search(question, top_k=3, mode="bm25").hits
    messages = answer_messages(question, hits)
    started = time.perf_counter()
    chat = make_chat_model(
        settings.model_copy(update={"llm": settings.llm.model_copy(update={"engine": "transformers"})})
    )
    load_s = time.perf_counter() - started
    inputs = chat.tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in messages],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with_token_limit(chat, 4).invoke(messages)  # warm-up: first-call allocations, not the model's speed
    streamed = [stream_once(chat, messages) for _ in range(runs)]
    forced = [forced_decode(chat, inputs) for _ in range(runs)]
    return {
        "model": chat.model_name,
        "load_s": load_s,
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "ttft_s": median(m["ttft_s"] for m in streamed),
        "tokens": median(m["tokens"] for m in streamed),
        "stream_tps": median(m["tps"] for m in streamed),
        "prefill_s": median(f[0] for f in forced),
        "decode_tps": median(f[1] for f in forced),
        "forced_tokens": FORCED_TOKENS,
        "question": question,
        "answer": streamed[-1]["text"],
    }


def stream_once(chat, messages) -> dict:
    """What a user sees through `chat.stream`: time to the first non-empty piece, then the rest."""
    started = time.perf_counter()
    first_at, pieces = None, []
    for chunk in chat.stream(messages):
        if chunk.content and first_at is None:
            first_at = time.perf_counter()
        pieces.append(str(chunk.content))
    end = time.perf_counter()
    text = "".join(pieces)
    count = len(chat.tokenizer.encode(text, add_special_tokens=False))
    return {"ttft_s": (first_at or end) - started, "tokens": count, "tps": count / (end - started), "text": text}


def forced_decode(chat, inputs) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) of the bare model on the same prompt, made to write
    exactly FORCED_TOKENS tokens: a small model's answers are too short to time its decoding."""
    pad = chat.tokenizer.pad_token_id or chat.tokenizer.eos_token_id

    def generate(n: int) -> float:
        started = time.perf_counter()
        chat.hf_model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad)
        return time.perf_counter() - started

    prefill = generate(1)
    return prefill, (FORCED_TOKENS - 1) / max(generate(FORCED_TOKENS) - prefill, 1e-9)


# ---- reporting ----------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def report_size(size: int, build_s: float, reused: bool, res: dict) -> dict:
    t = res["times"]
    p = {m: percentiles_ms(t[m]) for m in (*MODES, "encode", "faiss")}
    base = res["baseline"]
    base_p50 = percentiles_ms(base["times"])[0]
    row = {
        "size": size,
        "p": p,
        "floor_ratio": p["hybrid"][0] / p["floor"][0],
        "base_p50": base_p50,
        "base_n": len(base["times"]),
        "base_ratio": base_p50 / p["hybrid"][0],
        "rss": res["rss_after_mib"],
    }
    n = len(t["hybrid"])
    built = "reused from --keep" if reused else f"built in {build_s:.1f} s"
    print(f"\n=== {res['chunks']:,} chunks ({built}; {res['disk_mib']:.0f} MiB on disk), {n} queries ===")
    load = res["load_avg"]
    print(f"  1-minute load average {load[0]:.2f} -> {load[1]:.2f} over the timed queries ({os.cpu_count()} CPUs)")
    print(f"  floor    p50 {p['floor'][0]:7.2f} ms  p95 {p['floor'][1]:7.2f} ms", end="")
    print(f"   (encode p50 {p['encode'][0]:.2f} ms + flat FAISS top-50 p50 {p['faiss'][0]:.2f} ms)")
    for mode in MODES[1:]:
        got = res["answered"][mode]
        print(f"  {mode:<8} p50 {p[mode][0]:7.2f} ms  p95 {p[mode][1]:7.2f} ms   ({got}/{n} queries got hits)")
    print(f"  RATIO feedback p50 / hybrid p50: {p['feedback'][0] / p['hybrid'][0]:.2f}x (the cost of searching again)")
    tail = "" if size == TARGET_SIZE else f" (target applies at {TARGET_SIZE:,})"
    ok = row["floor_ratio"] <= FLOOR_TARGET
    print(f"  RATIO hybrid p50 / floor p50: {row['floor_ratio']:.2f}x (target <= {FLOOR_TARGET}x) {verdict(ok)}{tail}")
    print(
        f"  baseline (langchain FAISS + EnsembleRetriever, BM25Retriever rebuilt per query): "
        f"p50 {base_p50 / 1000:.2f} s over {row['base_n']} queries "
        f"[{', '.join(f'{s:.2f}' for s in base['times'])} s]; store built once in {base['store_build_s']:.1f} s"
    )
    ok = row["base_ratio"] >= BASELINE_TARGET
    print(
        f"  RATIO baseline p50 / hybrid p50: {row['base_ratio']:,.0f}x (target >= {BASELINE_TARGET:.0f}x) "
        f"{verdict(ok)}{tail}"
    )
    print(
        f"  query process RSS: {res['rss_after_mib']:.0f} MiB after the queries (at start "
        f"{res['rss_start_mib']:.0f}, embedder loaded {res['rss_model_mib']:.0f}, base loaded "
        f"{res['rss_loaded_mib']:.0f}); peak {res['peak_rss_mib']:.0f} MiB (all before the baseline was built)"
    )
    return row


# ---- the reranker -------------------------------------------------------------------------
RERANK_DEPTHS = (10, 20, 40)
DEFAULT_RERANKER = "sentence-transformers/all-MiniLM-L6-v2"


def rerank_bench(settings, emb, kb_dir: Path, model: str, queries: list[str]) -> dict:
    """Hybrid search alone against hybrid search plus the cross-encoder over 10, 20 and 40 fused
    candidates, interleaved per query like time_modes; the passages are the base's own chunks."""
    from rag.retrieve import Retriever
    from rag.store.local import LocalStore

    plain = settings.retrieve
    with LocalStore.open(kb_dir) as kb:
        retrievers = {0: Retriever(kb, emb, plain)}
        for depth in RERANK_DEPTHS:
            tuned = plain.model_copy(update={"rerank_model": model, "rerank_candidates": depth})
            retrievers[depth] = Retriever(kb, emb, tuned)
        shared = retrievers[RERANK_DEPTHS[0]].reranker()  # one model in memory for every depth
        for depth in RERANK_DEPTHS:
            retrievers[depth]._reranker = shared
        order = list(retrievers)
        for query in queries[:3]:  # warm-up: torch, FAISS, SQLite
            for r in retrievers.values():
                r.search(query, top_k=TOP_K)
        times: dict[int, list[float]] = {d: [] for d in order}
        for i, query in enumerate(queries):
            for depth in order[i % len(order) :] + order[: i % len(order)]:
                started = time.perf_counter()
                retrievers[depth].search(query, top_k=TOP_K)
                times[depth].append(time.perf_counter() - started)
        hits = retrievers[0].search(queries[0], top_k=max(RERANK_DEPTHS)).hits
        tokenizer = shared.model.tokenizer
        lengths = [len(tokenizer(queries[0], h.chunk.text)["input_ids"]) for h in hits]
    return {"model": model, "p": {d: percentiles_ms(t) for d, t in times.items()}, "pair_tokens": median(lengths)}


def report_rerank(res: dict) -> None:
    p = res["p"]
    print(f"\n=== reranker: {res['model']} (median pair {res['pair_tokens']:.0f} tokens), ms p50/p95 ===")
    print(f"  hybrid alone: {p[0][0]:.1f}/{p[0][1]:.1f}")
    for depth in RERANK_DEPTHS:
        print(
            f"  + rerank of {depth:>2} candidates: {p[depth][0]:.1f}/{p[depth][1]:.1f}  "
            f"({p[depth][0] / p[0][0]:.1f}x hybrid alone; the rerank itself {p[depth][0] - p[0][0]:.0f} ms)"
        )


def report_llm(llm: dict) -> None:
    print(
        f"\n=== LLM: {llm['model']} (local backend, transformers engine, loaded in {llm['load_s']:.1f} s; "
        "llama.cpp: bench/llm.py), medians of 3 runs ==="
    )
    print(f"  prompt: {llm['prompt_tokens']} tokens (instructions + 3 BM25-retrieved passages + question), greedy")
    print(
        f"  streamed through chat.stream: time to first token {llm['ttft_s']:.2f} s, "
        f"{llm['tokens']:.0f} tokens in the answer, {llm['stream_tps']:.1f} tokens/s end to end"
    )
    print(
        f"  bare model on the same prompt: prefill + 1 token {llm['prefill_s']:.2f} s, "
        f"decoding {llm['decode_tps']:.1f} tokens/s (over {llm['forced_tokens']} forced tokens)"
    )
    print(
        f"  chat.stream's first token comes {llm['ttft_s'] - llm['prefill_s']:.2f} s after the bare model's "
        "(stop-string set-up, streaming hold-back, thread hand-off)"
    )
    print(f"  question: {llm['question']!r}")
    print(f"  answer: {llm['answer'][:240]!r}")


def print_summary(rows: list[dict], llm: dict) -> None:
    print("\n=== summary (ms; p50/p95) ===")
    head = f"{'chunks':>8} {'floor':>13} {'dense':>13} {'bm25':>13} {'hybrid':>13} {'feedback':>13} {'hyb/floor':>9}"
    print(head + f" {'baseline p50':>13} {'base/hyb':>9} {'RSS MiB':>8}")
    for r in rows:
        cells = " ".join(f"{r['p'][m][0]:6.1f}/{r['p'][m][1]:<6.1f}" for m in MODES)
        print(
            f"{r['size']:>8,} {cells} {r['floor_ratio']:>8.2f}x {r['base_p50']:>11.0f}ms "
            f"{r['base_ratio']:>8,.0f}x {r['rss']:>8.0f}"
        )
    for r in rows:
        if r["size"] == TARGET_SIZE:
            print(
                f"targets at {TARGET_SIZE:,}: hybrid/floor {r['floor_ratio']:.2f}x <= {FLOOR_TARGET} "
                f"{verdict(r['floor_ratio'] <= FLOOR_TARGET)}; baseline/hybrid {r['base_ratio']:,.0f}x >= "
                f"{BASELINE_TARGET:.0f} {verdict(r['base_ratio'] >= BASELINE_TARGET)}"
            )
    print(
        f"LLM {llm['model']}: time to first token {llm['ttft_s']:.2f} s, {llm['decode_tps']:.1f} tokens/s "
        f"decoding, prompt {llm['prompt_tokens']} tokens"
    )


# ---- main ---------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="chunk counts, comma-separated")
    parser.add_argument("--queries", type=int, default=50, help="timed queries per size and mode")
    parser.add_argument(
        "--baseline-queries",
        type=int,
        default=3,
        help="baseline queries at 100k chunks (each takes seconds); proportionally more at smaller sizes",
    )
    parser.add_argument("--keep", type=Path, default=None, help="work in DIR and keep it; bases there are reused")
    parser.add_argument(
        "--rerank",
        nargs="?",
        const=DEFAULT_RERANKER,
        default=None,
        metavar="MODEL",
        help="also time the cross-encoder at 10/20/40 candidates (default model: the packaged MiniLM-L6, "
        "the size `rag tune reranker` trains); only this, with --rerank-only",
    )
    parser.add_argument("--rerank-only", action="store_true", help="skip the retrieval sizes and the LLM")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # internal: one query process
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        child_main(args.child, args.queries, args.baseline_queries)
        return
    if not args.rerank_only and baseline_imports() is None:
        sys.exit(
            "the baseline needs langchain-community and rank-bm25: .venv/bin/pip install langchain-community rank-bm25"
        )
    from rag.config import load_settings
    from rag.embed import Embedder

    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = args.keep or Path(tempfile.mkdtemp(prefix="rag-bench-query-"))
    started = time.perf_counter()
    settings = load_settings(data_dir=work / "data", cache_dir=CACHE)
    emb = Embedder(settings.embed)
    texts = synthesize(max(sizes))
    print(
        f"chunks: {len(texts):,} windows of SciFact + NFCorpus (40-80 words) and CMRC2018 (80-160 characters); "
        f"vectors: random unit vectors (a flat search costs the same whatever they hold), queries encoded "
        f"with the real {emb.name}; queries: SciFact + NFCorpus; top_k {TOP_K}, "
        f"{settings.retrieve.candidates} candidates per retriever, fusion {settings.retrieve.fusion}"
    )
    try:
        reranker = _cross_encoder(args.rerank or DEFAULT_RERANKER)
        if args.rerank_only:
            kb_dir, _, _ = build_base(settings, emb.identity, f"bench{sizes[0] // 1000}k", texts[: sizes[0]])
            report_rerank(rerank_bench(settings, emb, kb_dir, reranker, load_queries(args.queries)))
            return
        rows, bases = [], []
        for size in sizes:
            kb_dir, build_s, reused = build_base(settings, emb.identity, f"bench{size // 1000}k", texts[:size])
            bases.append(kb_dir)
            res = run_child(kb_dir, args.queries, baseline_count(size, args.baseline_queries, args.queries))
            rows.append(report_size(size, build_s, reused, res))
        if args.rerank:
            report_rerank(rerank_bench(settings, emb, bases[0], reranker, load_queries(args.queries)))
        llm = llm_bench(settings, emb, bases[0], typical_question())
        report_llm(llm)
        print(f"\ntotal run time {time.perf_counter() - started:.0f} s")
        print_summary(rows, llm)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def _cross_encoder(name: str) -> str:
    """A folder or hub id CrossEncoder loads; the packaged embedder's folder gets a fresh head (an
    untrained head costs what a tuned one does)."""
    from rag.models import resolve_embedder

    return resolve_embedder(name)


if __name__ == "__main__":
    main()
