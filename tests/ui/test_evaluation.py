"""The Evaluation page: past reports (tables, plots, Markdown) and starting a retrieval evaluation."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.ui.conftest import all_markdown, open_app, texts

METRICS = {"ndcg@10": 0.61, "recall@10": 0.74, "recall@100": 0.92, "mrr@10": 0.58, "map@100": 0.55}


def write_report(folder: Path, dataset: str, runs: list[tuple[str, float]], age_s: float = 0) -> Path:
    """A report folder as the eval package writes it: report.json, report.md and a PNG plot."""
    from PIL import Image

    folder.mkdir(parents=True)
    report = {
        "dataset": dataset,
        "split": "test",
        "runs": [
            {"name": name, "mode": name, "settings": {}, "metrics": {**METRICS, "ndcg@10": ndcg}, "seconds": 1.5}
            for name, ndcg in runs
        ],
    }
    (folder / "report.json").write_text(json.dumps(report), encoding="utf-8")
    (folder / "report.md").write_text(f"# Retrieval on {dataset}\n\n![metrics](metrics.png)\n", encoding="utf-8")
    Image.new("RGB", (40, 30), "white").save(folder / "metrics.png")
    stamp = time.time() - age_s
    os.utime(folder / "report.json", (stamp, stamp))
    return folder


def write_beir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    docs = {
        "d1": "The Helios battery is covered for ten years.",
        "d2": "Wipe the casing with a dry cloth.",
        "d3": "The inverter is covered for five years.",
    }
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items()), encoding="utf-8"
    )
    queries = {"q1": "How long is the battery warranty?", "q2": "How do I clean the casing?"}
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items()), encoding="utf-8"
    )
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n", encoding="utf-8")
    return folder


def test_reports_are_listed_newest_first_with_their_table_plots_and_text(data_dir: Path) -> None:
    write_report(data_dir / "eval" / "scifact-old", "scifact", [("bm25", 0.66)], age_s=3600)
    write_report(data_dir / "eval" / "nfcorpus-new", "nfcorpus", [("hybrid", 0.34), ("dense", 0.31)])
    at = open_app("evaluation")
    assert at.selectbox[0].value.name == "nfcorpus-new"
    table = at.dataframe[0].value
    assert table["Run"].tolist() == ["hybrid", "dense"]
    assert table["nDCG@10"].tolist() == [0.34, 0.31] and "Recall@100" in table
    assert [img.captions for img in at.image] == [["metrics"]]
    assert "# Retrieval on nfcorpus" in all_markdown(at) and "![metrics]" not in all_markdown(at)
    at.selectbox[0].select_index(1).run()
    assert at.dataframe[0].value["Run"].tolist() == ["bm25"]


def test_a_report_shows_its_dataset_warnings(data_dir: Path) -> None:
    folder = write_report(data_dir / "eval" / "arguana", "arguana", [("bm25", 0.4)])
    data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    missing = "qrels/test.tsv names 2 documents missing from the corpus (e.g. 'd9', 'd12'); ..."
    data.update(warnings=[missing], identical_ids="dropped")
    data["runs"][0]["identical_id_hits"] = 7
    (folder / "report.json").write_text(json.dumps(data), encoding="utf-8")
    at = open_app("evaluation")
    assert missing in texts(at.warning)
    note = "left out of its ranking, as BEIR does (ignore_identical_ids): 7 hits removed (bm25 7)"
    assert any(note in c for c in texts(at.caption)), texts(at.caption)


def test_an_unreadable_report_is_listed_with_the_reason(data_dir: Path) -> None:
    broken = data_dir / "eval" / "broken"
    broken.mkdir(parents=True)
    (broken / "report.json").write_text("{not json", encoding="utf-8")
    at = open_app("evaluation")
    assert any("cannot be read" in e for e in texts(at.error))


def test_without_reports_the_page_says_where_they_come_from(data_dir: Path) -> None:
    at = open_app("evaluation")
    assert "No evaluation reports yet" in texts(at.info)[0]


def test_new_evaluation_checks_the_dataset_folder_and_the_name(data_dir: Path, tmp_path: Path) -> None:
    at = open_app("evaluation")
    at.text_input(key="eval_dataset").input(str(tmp_path)).run()
    assert any("is not a BEIR folder: missing corpus.jsonl, queries.jsonl" in e for e in texts(at.error))
    beir = write_beir(tmp_path / "tiny")
    write_report(data_dir / "eval" / "taken", "tiny", [("bm25", 0.5)])
    at.text_input(key="eval_dataset").input(str(beir)).run()
    assert at.selectbox[-1].value == "test"
    assert at.text_input(key="eval_name").value.startswith("tiny-test-")
    at.text_input(key="eval_name").input("taken").run()
    assert any("already exists" in e for e in texts(at.error))
    assert at.button(key="run_eval").disabled


def _eval_in_this_checkout() -> bool:
    spec = importlib.util.find_spec("eval")
    return spec is not None and spec.origin is not None and Path(spec.origin).parent == REPO / "eval"


@pytest.mark.slow
@pytest.mark.skipif(not _eval_in_this_checkout(), reason="the eval package (issue 4) is not in this checkout yet")
def test_running_an_evaluation_shows_its_report(data_dir: Path, tmp_path: Path) -> None:
    beir = write_beir(tmp_path / "tiny")
    at = open_app("evaluation")
    at.text_input(key="eval_dataset").input(str(beir)).run()
    at.multiselect(key="eval_modes").set_value(["bm25", "dense"]).run()
    at.text_input(key="eval_name").input("tiny-run").run()
    at.button(key="run_eval").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Evaluation finished" in s for s in texts(at.success)), texts(at.error)
    assert (data_dir / "eval" / "tiny-run" / "report.json").is_file()
    assert at.selectbox[0].value.name == "tiny-run"
    assert sorted(at.dataframe[0].value["Run"]) == ["bm25", "dense"]
