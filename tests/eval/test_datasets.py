"""BEIR and QA loading: the happy path, and malformed input that names its file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.datasets import (
    DatasetError,
    beir_to_qa,
    doc_file_name,
    doc_id_of,
    load_beir,
    load_qa,
    sample,
    write_corpus,
    write_qa,
)
from tests.conftest import shared_path
from tests.fixtures.beir import write_beir


def test_load_beir_keeps_judged_queries_of_the_split(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "mini")
    ds = load_beir(root, "test")
    assert ds.name == "mini"
    assert set(ds.queries) == {"q1", "q2", "q3"}  # q-unjudged has no qrels in test
    assert ds.qrels["q1"] == {"d1": 1}
    assert ds.corpus["d1"]["title"] == "Solar panels"


def test_zero_relevance_and_header_lines_are_not_judgements(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "mini")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n")
    ds = load_beir(root, "test")
    assert ds.qrels == {"q1": {"d1": 1}}


def test_malformed_corpus_line_names_file_and_line(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "mini")
    with (root / "corpus.jsonl").open("a") as fh:
        fh.write('{"_id": "d9", "text": "ok"}\n{"_id": "d10", "text": broken}\n')
    lines = len((root / "corpus.jsonl").read_text().splitlines())
    with pytest.raises(DatasetError, match=rf"corpus.jsonl:{lines}: not valid JSON"):
        load_beir(root, "test")


def test_missing_field_and_bad_score_are_named(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "mini")
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"id": "q2", "text": "b"}\n')
    with pytest.raises(DatasetError, match=r"queries.jsonl:2: missing field '_id'"):
        load_beir(root, "test")
    root = write_beir(tmp_path / "mini2")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(DatasetError, match=r"test.tsv:2: score 'high' is not a number"):
        load_beir(root, "test")


def test_unknown_split_lists_the_ones_there(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "mini")
    with pytest.raises(DatasetError, match="splits here: test"):
        load_beir(root, "dev")


def test_qrels_naming_missing_documents_load_counted_and_kept_for_scoring(tmp_path: Path) -> None:
    """Several official BEIR sets judge a few documents their corpus lacks.  BEIR loads them and
    scores them as relevant documents never retrieved; so do we, and say so once."""
    root = write_beir(tmp_path / "mini")
    with (root / "qrels" / "test.tsv").open("a") as fh:
        fh.write("q1\td9\t1\nq2\td12\t1\nq2\td9\t1\nq-unjudged\tghost\t1\n")
    ds = load_beir(root, "test")
    assert ds.qrels["q1"] == {"d1": 1, "d9": 1}
    assert "q-unjudged" in ds.queries  # judges only a missing document: BEIR scores it (0)
    missing = ds.missing
    assert (missing.judgements, missing.documents, missing.queries) == (4, ["d9", "d12", "ghost"], ["q-unjudged"])
    assert ds.warnings() == [
        "qrels/test.tsv names 3 documents missing from the corpus (e.g. 'd9', 'd12', 'ghost'); "
        "their 4 judgements are scored as misses (relevant documents never retrieved), as BEIR does; "
        "1 query judges only missing documents and scores 0"
    ]
    assert load_beir(write_beir(tmp_path / "clean")).warnings() == []


def test_qrels_naming_an_unknown_query_is_still_refused(tmp_path: Path) -> None:
    # BEIR's GenericDataLoader fails here too (KeyError): a judged query without its text cannot be run.
    root = write_beir(tmp_path / "mini")
    with (root / "qrels" / "test.tsv").open("a") as fh:
        fh.write("q404\td1\t1\n")
    with pytest.raises(DatasetError, match=r"judges 1 unknown queries, e\.g\. 'q404'"):
        load_beir(root, "test")


def test_corpus_files_round_trip_odd_ids_and_keep_mtimes(tmp_path: Path) -> None:
    corpus = {"a/b#1": {"title": "T", "text": "body"}, "中文 id": {"title": "", "text": "正文"}}
    folder = write_corpus(corpus, tmp_path / "files")
    names = sorted(p.name for p in folder.iterdir())
    assert all("/" not in n for n in names)
    assert sorted(doc_id_of(str(folder / n)) for n in names) == sorted(corpus)
    assert (folder / doc_file_name("a/b#1")).read_text() == "T\n\nbody"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    write_corpus(corpus, folder)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_qa_file_loading_split_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    rows = [
        {"id": "1", "question": "Q1?", "answers": ["A"], "gold_doc_ids": ["d1"], "split": "train"},
        {"id": "2", "question": "Q2?", "answers": [], "answerable": False, "split": "test"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = load_qa(path)
    assert [it.answerable for it in items] == [True, False]
    assert items[0].extra == {"split": "train"}
    assert [it.id for it in load_qa(path, split="test")] == ["2"]
    write_qa(items, tmp_path / "copy.jsonl")
    assert [it.to_json() for it in load_qa(tmp_path / "copy.jsonl")] == [it.to_json() for it in items]

    path.write_text('{"id": "1", "question": "Q?", "answers": "A"}\n')
    with pytest.raises(DatasetError, match=r"qa.jsonl:1: field 'answers' should be list"):
        load_qa(path)
    path.write_text('{"id": "1", "question": "Q?", "answers": [], "answerable": true}\n')
    with pytest.raises(DatasetError, match=r":1: an answerable question needs at least one answer"):
        load_qa(path)


def test_sample_is_seeded_and_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "question": "q", "answers": ["a"]}) + "\n" for i in range(50)))
    items = load_qa(path)
    a, b = sample(items, 10, seed=3), sample(items, 10, seed=3)
    assert [i.id for i in a] == [i.id for i in b]
    assert [int(i.id) for i in a] == sorted(int(i.id) for i in a)
    assert sample(items, None) == items


@pytest.mark.shared
def test_cmrc2018_converts_to_a_qa_set() -> None:
    items = beir_to_qa(shared_path("qa", "cmrc2018"), "dev")
    assert len(items) > 3000
    first = items[0]
    assert first.question.endswith("？") and first.answers == ["光荣和ω-force"]
    assert first.gold_doc_ids == ["p0_DEV_0"] and first.answerable
