"""`rag eval` as a user types it: a report from one command, `show`, and clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import MODEL_CACHE, SAMPLES
from tests.fixtures.beir import ARGUMENTS, write_beir, write_beir_self_queries
from tests.fixtures.openai_server import free_port

JUDGE = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def run(isolated: Path):
    env = {"RAG_DATA_DIR": str(isolated / "data"), "RAG_CACHE_DIR": str(MODEL_CACHE), "COLUMNS": "200"}

    def invoke(*args: str, **extra_env: str):
        return CliRunner().invoke(app, list(args), env={**env, **extra_env})

    return invoke


@pytest.mark.slow
def test_retrieval_report_in_one_command_then_show(run, tmp_path: Path) -> None:
    data = write_beir(tmp_path / "mini")
    whole = tmp_path / "whole.toml"
    whole.write_text('[chunk]\nmethod = "page"\n')
    result = run(
        "eval", "retrieval", "--dataset", str(data), "--mode", "dense", "--mode", "bm25",
        "--config", str(whole), "--out", str(tmp_path / "rep"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "whole/dense" in result.output and "whole/bm25" in result.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["whole/dense", "whole/bm25"]
    assert report["runs"][0]["settings"]["chunk"]["method"] == "page"
    shown = run("eval", "show", str(tmp_path / "rep"))
    assert shown.exit_code == 0 and "nDCG@10" in shown.output and "1.0000" in shown.output


@pytest.mark.slow
def test_a_query_is_left_out_of_its_own_ranking_unless_kept(run, tmp_path: Path) -> None:
    data = write_beir_self_queries(tmp_path / "args")
    result = run("eval", "retrieval", "--dataset", str(data), "--mode", "bm25", "--out", str(tmp_path / "drop"))
    assert result.exit_code == 0, result.output
    top10 = json.loads((tmp_path / "drop" / "runs" / "bm25.json").read_text())
    assert [qid for qid, row in top10.items() if qid in row["top10"]] == []
    report = json.loads((tmp_path / "drop" / "report.json").read_text())
    assert report["runs"][0]["metrics"]["ndcg@10"] == 1.0  # the counter-argument first, every time
    assert report["identical_ids"] == "dropped"
    assert report["runs"][0]["identical_id_hits"] == len(ARGUMENTS)
    md = (tmp_path / "drop" / "report.md").read_text()
    assert "as BEIR does (ignore_identical_ids): 6 hits removed (bm25 6)" in md

    result = run(
        "eval", "retrieval", "--dataset", str(data), "--mode", "bm25", "--keep-identical-ids",
        "--out", str(tmp_path / "keep"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "keep" / "report.json").read_text())
    assert report["identical_ids"] == "kept"
    top10 = json.loads((tmp_path / "keep" / "runs" / "bm25.json").read_text())
    assert all(row["top10"][0] == qid for qid, row in top10.items())  # each query finds itself first
    assert report["runs"][0]["metrics"]["mrr@10"] == 0.5
    assert "kept (--keep-identical-ids)" in (tmp_path / "keep" / "report.md").read_text()


@pytest.mark.slow
def test_qrels_naming_missing_documents_warn_and_score_them_as_misses(run, tmp_path: Path) -> None:
    data = write_beir(tmp_path / "mini")
    with (data / "qrels" / "test.tsv").open("a") as fh:
        fh.write("q1\td9\t1\nq2\td12\t1\nq2\td9\t1\nq-unjudged\tghost\t1\n")
    result = run("eval", "retrieval", "--dataset", str(data), "--mode", "bm25", "--out", str(tmp_path / "rep"))
    assert result.exit_code == 0, result.output
    warning = (
        "warning: qrels/test.tsv names 3 documents missing from the corpus (e.g. 'd9', 'd12', 'ghost'); "
        "their 4 judgements are scored as misses (relevant documents never retrieved), as BEIR does; "
        "1 query judges only missing documents and scores 0"
    )
    assert warning in result.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["qrels_missing_documents"] == {
        "judgements": 4, "documents": 3, "queries": 1, "sample": ["d9", "d12", "ghost"],
    }  # fmt: skip
    assert report["queries"] == 4 and report["warnings"] == [warning.removeprefix("warning: ")]
    # Each query's judged corpus document is first (see the generated set), so by hand:
    # q1 {d1, d9}: 1/(1 + 1/log2 3); q2 {d3, d12, d9}: 1/(1 + 1/log2 3 + 1/2); q3: 1; q-unjudged: 0.
    ndcg = (1 / (1 + 1 / math.log2(3)) + 1 / (1 + 1 / math.log2(3) + 0.5) + 1 + 0) / 4
    metrics = report["runs"][0]["metrics"]
    assert metrics["ndcg@10"] == pytest.approx(ndcg, abs=1e-4)
    assert metrics["recall@10"] == pytest.approx((1 / 2 + 1 / 3 + 1 + 0) / 4, abs=1e-4)
    assert warning.removeprefix("warning: ") in (tmp_path / "rep" / "report.md").read_text()


def test_malformed_dataset_is_a_usage_error_naming_the_line(run, tmp_path: Path) -> None:
    data = write_beir(tmp_path / "mini")
    with (data / "queries.jsonl").open("a") as fh:
        fh.write("{not json\n")
    result = run("eval", "retrieval", "--dataset", str(data))
    assert result.exit_code == 2
    assert "queries.jsonl:5: not valid JSON" in result.output


def test_bad_mode_and_missing_report_are_clear(run, tmp_path: Path) -> None:
    result = run("eval", "retrieval", "--dataset", str(tmp_path), "--mode", "fuzzy")
    assert result.exit_code == 2 and "--mode must be one of dense, bm25, hybrid" in result.output
    result = run("eval", "show", str(tmp_path))
    assert result.exit_code == 2 and "no report.json here" in result.output


@pytest.mark.slow
def test_answers_against_a_stopped_server_stop_with_the_reason(run, tmp_path: Path) -> None:
    assert run("ingest", str(SAMPLES), "--kb", "sample").exit_code == 0
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"id": "1", "question": "How long is the battery warranty?", "answers": ["10 years"]}))
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = run("eval", "answers", "--qa", str(qa), "--kb", "sample", "--backend", "openai", RAG_LLM__BASE_URL=url)
    assert result.exit_code == 1
    assert "cannot reach the LLM server" in result.output


@pytest.mark.slow
def test_convert_then_answer_with_the_local_model(run, tmp_path: Path) -> None:
    assert run("ingest", str(SAMPLES), "--kb", "sample").exit_code == 0
    qa = tmp_path / "qa.jsonl"
    rows = [
        {"id": "w", "question": "How long is the battery module covered by the warranty?",
         "answers": ["10 years", "ten years"], "gold_doc_ids": ["helios-h10-warranty.pdf"]},
        {"id": "x", "question": "Who won the 1998 football world cup?", "answers": [], "answerable": False},
    ]  # fmt: skip
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run(
        "eval", "answers", "--qa", str(qa), "--kb", "sample", "--backend", "local",
        "--max-new-tokens", "40", "--out", str(tmp_path / "ans"), "--judge", JUDGE,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ans" / "report.json").read_text())
    metrics = report["runs"][0]["metrics"]
    assert metrics["contains"] == 1.0 and metrics["not_found_accuracy"] == 1.0
    per_question = json.loads((tmp_path / "ans" / "runs" / "SmolLM2-135M-Instruct.json").read_text())
    assert [r["id"] for r in per_question] == ["w", "x"]
    # The judge (the 135M itself: too small to grade well, but a real model's reply) graded the
    # answerable question, and its grade is what judge_accuracy reports.
    graded, unanswerable = per_question
    assert graded["judge_reply"].strip() and graded["judge"] in (True, False)
    assert metrics["judge_accuracy"] == float(graded["judge"]) and metrics["judge_unclear"] == 0
    assert "judge" not in unanswerable and report["runs"][0]["judge"] == JUDGE
    assert f"judge_accuracy graded by {JUDGE}" in (tmp_path / "ans" / "report.md").read_text()


def test_gate_only_scores_the_not_found_decision_without_generating(run, tmp_path: Path) -> None:
    assert run("ingest", str(SAMPLES), "--kb", "sample").exit_code == 0
    qa = tmp_path / "qa.jsonl"
    rows = [
        {"id": "w", "question": "How long is the battery module covered by the warranty?", "answers": ["10 years"]},
        {"id": "x", "question": "Who won the 1998 football world cup?", "answers": [], "answerable": False},
    ]
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "gate"
    result = run("eval", "answers", "--qa", str(qa), "--kb", "sample", "--gate-only", "--out", str(out))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "report.json").read_text())["runs"][0]["metrics"]
    assert metrics["not_found_accuracy"] == 1.0 and metrics["false_not_found"] == 0.0
    assert metrics["refusal_discrimination"] == 1.0
    assert metrics["exact_match"] is None and metrics["contains"] is None, "no answer was written to score"
    per_question = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert [(r["id"], r["not_found"], r["prediction"]) for r in per_question] == [("w", False, ""), ("x", True, "")]
    refused = run("eval", "answers", "--qa", str(qa), "--kb", "sample", "--gate-only", "--judge", JUDGE)
    assert refused.exit_code == 2 and "--gate-only writes no answers" in refused.output


def test_a_judge_that_cannot_be_reached_stops_the_run_before_any_answer(run, tmp_path: Path) -> None:
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"id": "1", "question": "Why?", "answers": ["because"]}) + "\n")
    down = f"http://127.0.0.1:{free_port()}/v1"
    result = run(
        "eval", "answers", "--qa", str(qa), "--out", str(tmp_path / "ans"),
        "--judge", "grader", "--judge-base-url", down, RAG_LLM__MAX_RETRIES="0",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "--judge: judge 'grader': cannot reach the LLM server" in " ".join(result.output.split())
    assert not (tmp_path / "ans").exists(), "nothing was answered, so nothing was written"


def test_no_base_runs_only_the_adapters(run, isolated: Path, tmp_path: Path) -> None:
    from cli.eval import variants
    from rag.config import load_settings

    adapter = tmp_path / "my-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    settings = load_settings()
    both = [label for label, _ in variants(settings, "local", [], [adapter], None)]
    assert both == ["SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct+my-adapter"]
    only = variants(settings, "local", [], [adapter], None, base=False)
    assert [label for label, _ in only] == ["SmolLM2-135M-Instruct+my-adapter"]
    assert only[0][1].llm.adapter == str(adapter)

    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"id": "1", "question": "Why?", "answers": ["because"]}) + "\n")
    result = run("eval", "answers", "--qa", str(qa), "--no-base")
    assert result.exit_code == 2 and "--no-base leaves nothing to run without --adapter" in result.output


@pytest.mark.slow
def test_pages_report_in_one_command_then_show(run, tmp_path: Path) -> None:
    from tests.eval.test_pages import write_set

    questions, docs = write_set(tmp_path)
    args = ["eval", "pages", str(questions), "--docs", str(docs), "--k", "1", "--mode", "hybrid"]
    result = run(*args, "--out", str(tmp_path / "rep"))
    assert result.exit_code == 0, result.output
    assert "DELTA_2022_10K" in result.output  # the filing the folder lacks is named
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["kind"] == "pages" and report["runs"][0]["metrics"]["own_hit@1"] == 0.6
    again = run(*args, "--kb", "fb", "--out", str(tmp_path / "rep2"))
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "rep2" / "report.json").read_text())["runs"][0]["kb"] == "fb"
    shown = run("eval", "show", str(tmp_path / "rep"))
    assert shown.exit_code == 0 and "own filing hit@1" in shown.output and "0.400" in shown.output
    missing = run("eval", "pages", str(questions), "--docs", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "not a folder" in missing.output
