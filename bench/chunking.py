"""Chunking benchmark: the hand-written recursive splitter in ingest/chunking.py on the texts that
made langchain's RecursiveCharacterTextSplitter crawl, against that splitter measured in the same run.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/chunking.py \\
        [--words-mb 30] [--nospace-mb 3] [--baseline-kb 200]

Texts, generated from a fixed seed:
- words: one line (no newline, no punctuation) of space-separated lowercase words, drawn with
  Zipf-like frequencies from a 100,000-word vocabulary, as in a large single-line export;
- no spaces: base64 of random bytes, as in an inlined attachment.

Baseline: langchain's splitter configured as the chunker used it (the embedding model's tokenizer
as length function, the same separators, separator kept at the end, whitespace stripped), on the
first --baseline-kb of each text: it tokenizes every split on its own (every word, every
character), so the whole texts would take minutes to hours.  The new chunker also chunks that
prefix, and its chunks must be langchain's.

Each measurement runs in a child process, so its peak RSS is its own: "before" is the RSS with the
embedding model loaded (for its tokenizer) and the text generated, "peak" the maximum while chunking.
Sizes are in MB of 10^6 characters (ASCII, so also bytes).  Default chunk settings (250 tokens,
overlap 32).  Target: the 30 MB single-line text chunked in under 60 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED = 0
VOCABULARY = 100_000
TARGET_S = 60.0
TARGET_TEXT = "words"
KINDS = {"words": "single-line words", "nospace": "no spaces (base64)"}


# ---- texts ----------------------------------------------------------------------------------
def words_text(n_chars: int) -> str:
    """One line of space-separated words, Zipf-like frequencies over a fixed vocabulary."""
    rng = np.random.default_rng(SEED)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    vocab = [rng.choice(letters, int(rng.integers(2, 11))).tobytes().decode() for _ in range(VOCABULARY)]
    weights = 1.0 / (np.arange(VOCABULARY) + 10.0)
    picks = rng.choice(VOCABULARY, size=n_chars // 6 + 1, p=weights / weights.sum())
    text = " ".join(vocab[i] for i in picks.tolist())
    while len(text) < n_chars:
        text = f"{text} {text}"
    return text[:n_chars].rstrip()


def nospace_text(n_chars: int) -> str:
    return base64.b64encode(np.random.default_rng(SEED).bytes(n_chars * 3 // 4 + 3)).decode()[:n_chars]


def make_text(kind: str, n_chars: int) -> str:
    return words_text(n_chars) if kind == "words" else nospace_text(n_chars)


# ---- one measurement, in a child process ------------------------------------------------------
def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child_main(kind: str, n_chars: int, impl: str) -> None:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from ingest.chunking import SEPARATORS, Chunker
    from rag.config import ChunkSettings, EmbedSettings
    from rag.embed import Embedder
    from rag.types import Page

    embedder = Embedder(EmbedSettings())
    settings = ChunkSettings()
    chunker = Chunker(settings, embedder.tokenizer, embedder.max_tokens)
    text = make_text(kind, n_chars)
    before = current_rss_mib()
    started = time.perf_counter()
    if impl == "new":
        chunks = [c.text for c in chunker.split_pages([Page(text, kind)])]
    else:
        splitter = RecursiveCharacterTextSplitter(
            chunk_size=settings.size,
            chunk_overlap=settings.overlap,
            length_function=chunker.count_tokens,
            separators=SEPARATORS,
            keep_separator="end",
            strip_whitespace=True,
        )
        chunks = [c for c in splitter.split_text(text) if c.strip()]
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "chunks": len(chunks), "before": before, "peak": rss_mib(), "chars": len(text)}
    if impl == "langchain":
        result["same"] = chunks == [c.text for c in chunker.split_pages([Page(text, kind)])]
    print(json.dumps(result))


def run_child(kind: str, n_chars: int, impl: str) -> dict:
    # As a module from the repo root: run as a script, bench/ingest.py would shadow the ingest package.
    cmd = [sys.executable, "-m", "bench.chunking", "--child", kind, str(n_chars), impl]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- report --------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def print_table(rows: list[dict]) -> None:
    print(f"\n{'text':<20} {'chunker':<10} {'MB':>7} {'seconds':>9} {'MB/s':>8} {'chunks':>8} ", end="")
    print(f"{'RSS before':>11} {'peak MiB':>9} {'growth':>7}  same chunks")
    for r in rows:
        mb = r["chars"] / 1e6
        same = "" if "same" not in r else ("yes" if r["same"] else "NO")
        print(
            f"{KINDS[r['kind']]:<20} {r['impl']:<10} {mb:>7.2f} {r['seconds']:>9.2f} {mb / r['seconds']:>8.3f} "
            f"{r['chunks']:>8,} {r['before']:>11.0f} {r['peak']:>9.0f} {r['peak'] - r['before']:>7.0f}  {same}"
        )


def print_summary(rows: list[dict]) -> None:
    print("\n=== summary ===")
    for kind, label in KINDS.items():
        new = next(r for r in rows if r["kind"] == kind and r["impl"] == "new")
        old = next(r for r in rows if r["kind"] == kind and r["impl"] == "langchain")
        ratio = (new["chars"] / new["seconds"]) / (old["chars"] / old["seconds"])
        print(
            f"{label}: new {new['chars'] / 1e6:.1f} MB in {new['seconds']:.1f} s; throughput new/langchain "
            f"{ratio:,.0f}x; langchain would need ~{new['chars'] / old['chars'] * old['seconds'] / 60:,.0f} min "
            f"for the whole text (linear extrapolation); same chunks on the prefix: {'yes' if old['same'] else 'NO'}"
        )
        if kind == TARGET_TEXT:
            print(
                f"target: {new['chars'] / 1e6:.0f} MB single-line text in {new['seconds']:.1f} s < {TARGET_S:.0f} s "
                f"{verdict(new['seconds'] < TARGET_S)}"
            )


# ---- main ---------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words-mb", type=float, default=30.0, help="size of the single-line words text")
    parser.add_argument("--nospace-mb", type=float, default=3.0, help="size of the text without spaces")
    parser.add_argument("--baseline-kb", type=float, default=200.0, help="prefix the langchain baseline chunks")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)  # internal: KIND CHARS IMPL
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        kind, n_chars, impl = args.child
        child_main(kind, int(n_chars), impl)
        return
    sizes = {"words": int(args.words_mb * 1e6), "nospace": int(args.nospace_mb * 1e6)}
    baseline = int(args.baseline_kb * 1e3)
    print(f"default chunk settings; baseline on the first {baseline / 1e3:.0f} KB of each text; {os.cpu_count()} CPUs")
    started = time.perf_counter()
    rows = []
    for kind, n_chars in sizes.items():
        for impl, n in (("new", n_chars), ("langchain", min(baseline, n_chars))):
            rows.append({"kind": kind, "impl": impl, **run_child(kind, n, impl)})
            r = rows[-1]
            print(f"  {KINDS[kind]}, {impl}: {r['chars'] / 1e6:.2f} MB in {r['seconds']:.2f} s", flush=True)
    print(f"total run time {time.perf_counter() - started:.0f} s")
    print_table(rows)
    print_summary(rows)


if __name__ == "__main__":
    main()
