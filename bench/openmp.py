"""OpenMP threads sleeping or spinning: `rag ask`'s time to its first words and to the whole answer
with idle OpenMP threads sleeping (OMP_WAIT_POLICY=PASSIVE, the default), spinning, and spinning
briefly (GOMP_SPINCOUNT=10000), on an idle machine and with another program busy on one core.
Each row's ratio is against the default policy's, measured in the same run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/openmp.py [--repeats 3] [--no-busy]

Every answer is a fresh `rag ask --json` on the sample documents (ingested once into a temporary
data folder), so the policy takes effect before torch loads, as it does for a user.  The models
come from the usual cache (convert them first with `make demo`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
RAG = str(Path(sys.executable).with_name("rag"))
QUESTION = "How long is the battery module covered by the warranty?"
POLICIES = {
    "sleep (default)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin": {"OMP_WAIT_POLICY": ""},  # empty: libgomp's own default, spinning
    "spin briefly": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"},
}
ENGINES = {  # name -> settings overrides
    "transformers": {"RAG_LLM__ENGINE": "transformers"},
    "llama.cpp, 1 decoding thread": {"RAG_LLM__ENGINE": "llamacpp", "RAG_LLM__THREADS": "1"},
    "llama.cpp, 2 decoding threads": {"RAG_LLM__ENGINE": "llamacpp", "RAG_LLM__THREADS": "2"},
}


def ask(env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first words, seconds to the whole answer) of one `rag ask`."""
    done = subprocess.run(
        [RAG, "ask", "--kb", "sample", "--json", QUESTION], env=env, capture_output=True, text=True, check=True
    )
    timings = json.loads(done.stdout)["timings"]
    return timings["first_token_ms"] / 1000, timings["generate_ms"] / 1000


@contextmanager
def busy_core():
    """Another program keeping one core busy for as long as the block runs."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-busy", action="store_true", help="idle machine only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rag-bench-openmp-") as tmp:
        base = {**os.environ, "RAG_DATA_DIR": tmp, "HF_HUB_OFFLINE": "1"}
        subprocess.run([RAG, "ingest", str(REPO / "samples" / "docs"), "--kb", "sample"], env=base, check=False)
        conditions = ["idle"] if args.no_busy else ["idle", "one core busy"]
        print(f"\n`rag ask` on the sample documents, median of {args.repeats}: first words / whole answer")
        print("(ratio of the whole answer to the default policy's, same engine, same condition)\n")
        print("| OpenMP threads | machine | " + " | ".join(ENGINES) + " |")
        print("|---|---|" + "---|" * len(ENGINES))
        for condition in conditions:
            results = {}
            with busy_core() if condition != "idle" else nullcontext():
                for _ in range(args.repeats):  # policies and engines take turns, so drift hits all alike
                    for policy, penv in POLICIES.items():
                        for engine, eenv in ENGINES.items():
                            results.setdefault((policy, engine), []).append(ask({**base, **penv, **eenv}))
            for policy in POLICIES:
                cells = []
                for engine in ENGINES:
                    first, whole = (median(t[i] for t in results[(policy, engine)]) for i in (0, 1))
                    ratio = whole / median(t[1] for t in results[("sleep (default)", engine)])
                    cells.append(f"{first:.2f} s / {whole:.2f} s ({ratio:.2f}x)")
                print(f"| {policy} | {condition} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
