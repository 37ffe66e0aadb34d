"""The LLM judge: what it is asked, how its reply becomes a grade, which answers it grades, and
how the grades become judge_accuracy. The judge here is a rule written in the test: the real
model's part (its replies) is exercised by the `rag eval answers --judge` CLI test."""

from __future__ import annotations

import pytest

from eval.answers import summarize
from eval.judge import judge_messages, judge_rows, verdict


@pytest.mark.parametrize(
    ("reply", "grade"),
    [
        ("Yes", True),
        ("yes.", True),
        ("Correct", True),
        ("No", False),
        ("No, the candidate does not answer the question.", False),
        ("The candidate answer is correct.", True),
        ("The candidate answer is not correct.", False),  # the negation wins
        ("是", True),
        ("正确", True),
        ("否", False),
        ("不正确", False),  # holds "正确", but says the opposite
        ("Maybe", None),
        ("", None),
        ("你根据参考", None),  # an echo of the instruction is no grade
    ],
)
def test_a_reply_becomes_yes_no_or_no_grade(reply: str, grade: bool | None) -> None:
    assert verdict(reply) is grade


def test_the_prompt_carries_question_references_and_answer_without_citation_marks() -> None:
    system, user = judge_messages("Who led the Norse?", ["Rollo", "Rollo of Normandy"], "Rollo [1][2].")
    assert "yes or no" in system[1]
    assert "Question: Who led the Norse?" in user[1]
    assert "Reference answer: Rollo | Rollo of Normandy" in user[1]
    assert "Candidate answer: Rollo." in user[1] and "[1]" not in user[1]
    zh = judge_messages("电池保修多久？", ["十年"], "十年 [1]")
    assert "参考答案：十年" in zh[1][1] and "待评回答：十年\n" in zh[1][1]


def _row(answerable: bool, prediction: str, not_found: bool = False, error: str | None = None) -> dict:
    return {
        "question": "Who led the Norse?",
        "answers": ["Rollo"] if answerable else [],
        "answerable": answerable,
        "prediction": prediction,
        "not_found": not_found,
        "error": error,
        "exact_match": 0.0,
        "f1": 0.0,
        "contains": 0.0,
        "citations": [],
        "cited_by_model": False,
        "seconds": 1.0,
    }


def test_only_answered_answerable_questions_reach_the_judge_and_grades_sum_up() -> None:
    asked: list[str] = []

    def judge(messages: list[tuple[str, str]]) -> str:
        candidate = messages[1][1].split("Candidate answer: ")[1].split("\n")[0]
        asked.append(candidate)
        return {"Rollo": "Yes", "It was Rollo, a Viking.": "Yes.", "Charles III": "No"}.get(candidate, "Hmm")

    rows = [
        _row(True, "Rollo [1]"),
        _row(True, "It was Rollo, a Viking. [2]"),  # F1 would punish this; the judge does not
        _row(True, "Charles III"),
        _row(True, "Perhaps"),  # the judge says neither yes nor no
        _row(True, "", not_found=True),  # refused: wrong, without asking
        _row(True, "", error="server down"),
        _row(False, "I could not find the answer in the documents.", not_found=True),
    ]
    seen: list[int] = []
    judge_rows(judge, rows, lambda done, total: seen.append(done))
    assert asked == ["Rollo", "It was Rollo, a Viking.", "Charles III", "Perhaps"]
    assert [r.get("judge") for r in rows] == [True, True, False, None, False, False, None]
    assert rows[0]["judge_reply"] == "Yes" and "judge" not in rows[-1], "unanswerable questions are not graded"
    assert seen == list(range(1, 8))
    metrics = summarize(rows)
    assert metrics["judge_accuracy"] == 0.4  # 2 right of the 5 graded (the unclear one left out)
    assert metrics["judge_unclear"] == 1


def test_without_a_judge_the_summary_has_no_judge_metrics() -> None:
    metrics = summarize([_row(True, "Rollo"), _row(False, "", not_found=True)])
    assert "judge_accuracy" not in metrics and "judge_unclear" not in metrics
