"""Page-level retrieval (`rag eval pages`): three generated filings, questions with evidence pages,
the real default embedder; hits in the own-filing and whole-store scopes, the reused base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.datasets import DatasetError
from eval.pages import first_hit, load_page_questions, pages_kb_name, run_pages_eval, summarize
from tests.fixtures.documents import write_pdf

FILINGS = {
    "ALPHA_2022_10K": [
        ["Alpha Corp annual report 2022.", "Cover page."],
        ["Alpha Corp revenue from turbine sales was 512 million dollars in 2022."],
        ["Alpha Corp employs 4,200 people at its Oslo plant."],
    ],
    "BETA_2022_10K": [
        ["Beta Inc annual report 2022.", "Cover page."],
        ["Beta Inc revenue from bakery sales was 97 million dollars."],
        ["Beta Inc has its headquarters in Lyon, France."],
    ],
    "GAMMA_2022_10K": [
        ["Gamma Ltd annual report 2022.", "Cover page."],
        ["Gamma Ltd sells turbines."],
    ],
}


def _question(qid: str, doc: str, question: str, *pages: int, kind: str = "metrics-generated") -> dict:
    return {
        "financebench_id": qid,
        "doc_name": doc,
        "question_type": kind,
        "question": question,
        "evidence": [{"doc_name": doc, "page": p, "evidence_text": "..."} for p in pages],
    }


QUESTIONS = [
    # found on its page in both scopes
    _question("q1", "ALPHA_2022_10K", "How many people does Alpha Corp employ at the Oslo plant?", 3),
    _question("q2", "BETA_2022_10K", "In which city is Beta Inc headquartered?", 3, kind="domain-relevant"),
    # within Gamma's two pages the turbine page wins; across all filings Alpha's revenue page does
    _question("q3", "GAMMA_2022_10K", "What was the revenue from turbine sales in 2022?", 2),
    # a page the filing does not have: a miss everywhere
    _question("q4", "ALPHA_2022_10K", "Where is the Oslo plant?", 9),
    # a filing not in the folder: a miss everywhere, with a warning
    _question("q5", "DELTA_2022_10K", "What was Beta Inc revenue from bakery sales?", 2),
]


def write_set(root: Path) -> tuple[Path, Path]:
    docs = root / "pdfs"
    for name, pages in FILINGS.items():
        write_pdf(docs / f"{name}.pdf", pages)
    questions = root / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    return questions, docs


def test_first_hit_and_summary_by_hand() -> None:
    evidence = {("A", 3), ("A", 4)}
    assert first_hit([("A", 1), ("B", 3), ("A", 4)], evidence) == 3
    assert first_hit([("A", 1)], evidence) is None
    rows = [{"own": {"rank": 1}, "all": {"rank": 3}}, {"own": {"rank": 2}, "all": {"rank": None}}]
    m = summarize(rows, 5)
    assert m["own_hit@1"] == 0.5 and m["own_hit@5"] == 1.0 and m["own_mrr@5"] == 0.75
    assert m["all_hit@1"] == 0.0 and m["all_hit@5"] == 0.5 and m["all_mrr@5"] == round(1 / 6, 4)


def test_questions_file_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps(_question("q1", "A", "?", 1)) + "\n" + json.dumps({"doc_name": "A", "question": "?"}))
    with pytest.raises(DatasetError, match=r"q.jsonl:2: missing field 'evidence'"):
        load_page_questions(bad)
    bad.write_text(json.dumps({**_question("q1", "A", "?"), "evidence": [{"page": 0}]}))
    with pytest.raises(DatasetError, match=r"q.jsonl:1: evidence 1 needs a 1-based integer 'page'"):
        load_page_questions(bad)


def test_kb_name_follows_what_changes_chunks_not_retrieval(settings, tmp_path: Path) -> None:
    base = pages_kb_name(tmp_path, settings)
    assert base.startswith(f"pages-{tmp_path.name}-")
    bm25 = settings.model_copy(update={"retrieve": settings.retrieve.model_copy(update={"mode": "bm25"})})
    assert pages_kb_name(tmp_path, bm25) == base
    small = settings.model_copy(update={"chunk": settings.chunk.model_copy(update={"size": 128})})
    no_ocr = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"ocr": "off"})})
    assert len({base, pages_kb_name(tmp_path, small), pages_kb_name(tmp_path, no_ocr)}) == 3


@pytest.mark.slow
def test_hits_in_both_scopes_and_the_base_is_reused(settings, embedder, tmp_path: Path) -> None:
    questions, docs = write_set(tmp_path)
    warnings: list[str] = []
    stages: dict[str, tuple[int, int]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        stages[stage] = (done, total)

    folder = run_pages_eval(
        settings, questions, docs, [("hybrid", settings)], tmp_path / "rep", k=1,
        progress=progress, warn=warnings.append,
    )  # fmt: skip
    report = json.loads((folder / "report.json").read_text())
    run = report["runs"][0]
    assert run["metrics"] == {
        "own_hit@1": 0.6, "own_mrr@1": 0.6, "all_hit@1": 0.4, "all_mrr@1": 0.4,
    }  # fmt: skip
    assert run["by_type"]["domain-relevant"] == {
        "questions": 1, "own_hit@1": 1.0, "own_mrr@1": 1.0, "all_hit@1": 1.0, "all_mrr@1": 1.0,
    }  # fmt: skip
    assert any("DELTA_2022_10K" in w and "1 filing" in w for w in warnings)
    assert stages[f"ingest {run['kb']}"] == (3, 3) and stages["queries hybrid"] == (5, 5)

    rows = {r["id"]: r for r in json.loads((folder / "runs" / "hybrid.json").read_text())}
    assert rows["q1"]["own"]["retrieved"][0][:2] == ["ALPHA_2022_10K", 3]
    assert rows["q3"]["own"]["retrieved"][0][:2] == ["GAMMA_2022_10K", 2]
    assert rows["q3"]["own"]["rank"] == 1 and rows["q3"]["all"]["rank"] is None
    assert rows["q3"]["all"]["retrieved"][0][:2] == ["ALPHA_2022_10K", 2]
    assert rows["q4"]["evidence"] == [["ALPHA_2022_10K", 9]] and rows["q4"]["own"]["rank"] is None
    assert rows["q5"]["own"] == {"rank": None, "retrieved": []}
    md = (folder / "report.md").read_text()
    assert "| hybrid | hybrid | 0.600 | 0.600 | 0.600 | 0.400 | 0.400 | 0.400 |" in md

    # a second run reads nothing again: every filing is unchanged in the same base
    from eval.pages import pages_kb

    kb, ingest = pages_kb(settings, docs, embedder, run["kb"])
    with kb:
        assert (ingest.added, ingest.unchanged) == (0, 3)
