"""Reports: the JSON record, the Markdown table with published numbers beside ours, real PNGs."""

from __future__ import annotations

import json
from pathlib import Path

from eval.datasets import load_beir
from eval.report import list_reports, load_report, write_answer_report, write_report
from eval.retrieval import RunResult
from tests.fixtures.beir import write_beir

PNG = b"\x89PNG\r\n\x1a\n"


def _result(name: str, mode: str, ndcg: float) -> RunResult:
    metrics = {"ndcg@10": ndcg, "recall@10": 0.8, "recall@100": 0.95, "mrr@10": 0.7, "map@100": 0.6}
    curve = {1: 0.4, 10: 0.8, 100: 0.95}
    per_query = {"q1": {"ndcg@10": ndcg, "top10": ["d1"]}}
    return RunResult(name, mode, {"chunk": {"method": "page"}}, metrics, 1.5, "eval-x", 0.2, curve, per_query)


def test_retrieval_report_files(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "scifact")  # named like the benchmark: published rows appear
    ds = load_beir(root)
    out = write_report(tmp_path / "rep", ds, [_result("dense", "dense", 0.6451), _result("hybrid", "hybrid", 0.7312)])
    report = load_report(out)
    assert report["dataset"] == "scifact" and report["split"] == "test"
    assert [r["name"] for r in report["runs"]] == ["dense", "hybrid"]
    assert set(report["runs"][0]["metrics"]) == {"ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"}
    assert report["runs"][1]["seconds"] == 1.5
    md = (out / "report.md").read_text()
    assert "| hybrid | hybrid | 0.7312 |" in md
    assert "all-MiniLM-L6-v2 (MTEB) |  | 0.6451 |" in md  # the published row beside ours
    for png in ("metrics.png", "recall_at_k.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    assert json.loads((out / "runs" / "hybrid.json").read_text())["q1"]["top10"] == ["d1"]
    assert list_reports(tmp_path) == [out]


def test_answer_report_shows_differences(tmp_path: Path) -> None:
    runs = [
        {
            "name": "base",
            "backend": "local",
            "model": "m",
            "adapter": None,
            "seconds": 10.0,
            "questions": 4,
            "metrics": {"exact_match": 0.25, "f1": 0.5, "not_found_accuracy": 0.0, "refusal_discrimination": -0.1},
        },
        {
            "name": "base+lora",
            "backend": "local",
            "model": "m",
            "adapter": "/a",
            "seconds": 11.0,
            "questions": 4,
            "metrics": {"exact_match": 0.5, "f1": 0.55, "not_found_accuracy": 0.75, "refusal_discrimination": 0.4},
        },
    ]
    out = write_answer_report(tmp_path / "ans", Path("qa.jsonl"), "kb", "test", runs, {"base": [], "base+lora": []})
    md = (out / "report.md").read_text()
    assert "Difference from base" in md
    assert "| base+lora | local | m | +0.250 | +0.050 | +0.750 | +0.500 |" in md
    assert "| base | local | m | 0.250 | 0.500 | 0.000 | -0.100 |" in md
    assert (out / "answers.png").read_bytes().startswith(PNG)


def test_retrieval_report_records_missing_documents_and_identical_ids(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "mini")
    with (root / "qrels" / "test.tsv").open("a") as fh:
        fh.write("q1\tgone\t1\n")
    ds = load_beir(root)
    dense, bm25 = _result("dense", "dense", 0.5), _result("bm25", "bm25", 0.4)
    dense.identical_id_hits, bm25.identical_id_hits = 3, 2
    report = load_report(write_report(tmp_path / "rep", ds, [dense, bm25]))
    assert report["qrels_missing_documents"] == {"judgements": 1, "documents": 1, "queries": 0, "sample": ["gone"]}
    assert report["warnings"] == ds.warnings() and "1 document missing from the corpus ('gone')" in ds.warnings()[0]
    assert report["identical_ids"] == "dropped"
    assert [r["identical_id_hits"] for r in report["runs"]] == [3, 2]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert ds.warnings()[0] in md
    assert "as BEIR does (ignore_identical_ids): 5 hits removed (dense 3, bm25 2)" in md

    kept = load_report(write_report(tmp_path / "kept", load_beir(write_beir(tmp_path / "clean")), [dense], True))
    assert kept["identical_ids"] == "kept" and kept["warnings"] == []
    assert kept["qrels_missing_documents"]["judgements"] == 0
    md = (tmp_path / "kept" / "report.md").read_text()
    assert "kept (--keep-identical-ids)" in md and "3 rankings hold their query's own document (dense 3)" in md


def test_an_older_report_without_these_fields_still_renders() -> None:
    from eval.report import render_markdown

    old = {"dataset": "x", "split": "test", "queries": 1, "documents": 2, "runs": []}
    assert "# Retrieval: x (test split)" in render_markdown(old)
