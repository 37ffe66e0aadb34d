"""Huge and pathological text: chunked in linear time, its cost said up front, refused past a
limit, and progress that moves inside one file."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from ingest.pipeline import IngestPipeline, Progress, open_for_ingest
from tests.hostile.conftest import rag

pytestmark = pytest.mark.slow


def write_csv(path: Path, rows: int) -> Path:
    rng = random.Random(0)
    lines = ["order_id,date,customer,product,quantity,amount,region"]
    lines += [
        f"{i},2024-{1 + i % 12:02d}-{1 + i % 28:02d},customer-{rng.randint(1, 50_000)},product-{rng.randint(1, 900)},"
        f"{rng.randint(1, 20)},{rng.random() * 1000:.2f},{rng.choice(['north', 'south', 'east', 'west'])}"
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_file_past_max_chunks_is_refused_with_what_it_would_cost(data: Path, docs: Path) -> None:
    write_csv(docs / "orders.csv", 6000)
    (docs / "blob.txt").write_text("QUJD" * 750_000, encoding="utf-8")  # 3 MB without a space or newline
    run = rag("ingest", str(docs), "--kb", "t", data=data, RAG_INGEST__MAX_CHUNKS_PER_FILE="500")
    assert run.code == 1, run.text
    cost = r"failed .*{name}: ([\d,]+) chunks \(about \d+ (s|min|h) to embed at \d+ chunks/s\) is over "
    cost += r"ingest\.max_chunks_per_file \(500\)"
    orders = re.search(cost.format(name="orders.csv"), run.err)
    blob = re.search(cost.format(name="blob.txt"), run.err)
    assert orders and blob, run.err
    assert int(orders.group(1).replace(",", "")) > 1000 and int(blob.group(1).replace(",", "")) > 10_000
    assert [line.split()[:2] for line in run.out.splitlines() if line.strip().startswith(("added", "failed"))] == [
        ["added", "2"],
        ["failed", "2"],
    ]


class Recorder(Progress):
    def __init__(self) -> None:
        self.working_calls: list[tuple[str, str, int, int]] = []
        self.announced: list[str] = []

    def working(self, path: str, stage: str, done: int, total: int) -> None:
        self.working_calls.append((Path(path).name, stage, done, total))

    def announce(self, text: str) -> None:
        self.announced.append(text)


def test_progress_moves_inside_one_large_file(settings, embedder, tmp_path: Path) -> None:
    short = settings.chunk.model_copy(update={"size": 16, "overlap": 0})  # many chunks, quick to embed
    settings = settings.model_copy(
        update={"chunk": short, "ingest": settings.ingest.model_copy(update={"max_chunks_per_file": 5000})}
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "huge.txt").write_text("the unit needs service twice a year " * 120_000, encoding="utf-8")  # 4.3 MB
    sentences = [f"Unit {i} needs service every {i % 12 + 1} months." for i in range(1500)]
    (docs / "many.txt").write_text(" ".join(sentences), encoding="utf-8")  # ~1,500 chunks
    progress = Recorder()
    with open_for_ingest(settings, "t", embedder) as kb:
        report = IngestPipeline(settings, embedder, kb).run([docs], progress=progress)
    assert (report.added, report.failed) == (1, 1) and "max_chunks_per_file" in report.problems[0].reason

    def calls(name: str, stage: str) -> list[tuple[int, int]]:
        return [(d, t) for n, s, d, t in progress.working_calls if (n, s) == (name, stage)]

    chunking = calls("huge.txt", "chunking")
    assert len(chunking) >= 3 and chunking[-1][0] == chunking[-1][1], "chunking reports within the file"
    assert [d for d, _ in chunking] == sorted(d for d, _ in chunking)
    embedding = calls("many.txt", "embedding")
    assert len(embedding) >= 2 and embedding[-1][0] == embedding[-1][1] == report.chunks_written
    (line,) = progress.announced
    assert re.fullmatch(r"many\.txt: [\d,]+ chunks to embed \(about \d+ (s|min) to embed at \d+ chunks/s\)", line)
