"""Reports and calibrations are written whole: the new content replaces the old in one rename."""

from __future__ import annotations

import json
from pathlib import Path

from rag.jsonfile import write_json, write_jsonl


def test_a_report_is_replaced_whole_and_keeps_its_unicode_readable(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text('{"old": true}', encoding="utf-8")
    write_json(path, {"question": "海川 H10 的逆变器保修期是几年？", "ndcg@10": 0.73})
    text = path.read_text(encoding="utf-8")
    assert "海川" in text  # as written, not \\u escapes, so a person can read the report
    assert json.loads(text) == {"question": "海川 H10 的逆变器保修期是几年？", "ndcg@10": 0.73}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind


def test_a_question_set_is_one_object_per_line_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "qa" / "qa.jsonl"  # its folder is made
    rows = [{"id": "q1", "question": "逆变器保修几年？"}, {"id": "q2", "question": "How long?"}]
    write_jsonl(path, iter(rows))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows and "逆变器" in lines[0]
    write_jsonl(path, rows[1:])
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == rows[1:]
    assert [p.name for p in path.parent.iterdir()] == ["qa.jsonl"]
