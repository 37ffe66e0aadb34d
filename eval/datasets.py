"""Evaluation data: BEIR folders (corpus, queries, qrels) and QA sets, read with line-numbered errors.

A BEIR corpus becomes a knowledge base through the normal ingest pipeline, one text file per
document, so evaluation measures exactly what `rag ask` runs.  The file name is the document id
(percent-encoded), which is how hits are mapped back to corpus ids.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from rag.jsonfile import write_jsonl


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and line."""


MISSING_SAMPLE = 3  # document ids named in the warning and the report


@dataclass
class MissingDocuments:
    """Judgements naming documents the corpus lacks; several official BEIR sets have a few.

    BEIR's loader keeps them and its scorer (pytrec_eval) counts each as a relevant document that
    was never retrieved: recall's denominator and nDCG's ideal ranking include it, and a query
    judging only such documents scores 0.  They stay in the qrels for the same reason, so our
    numbers stay comparable with the published ones; this only counts them for the warning."""

    judgements: int = 0
    documents: list[str] = field(default_factory=list)  # in qrels order
    queries: list[str] = field(default_factory=list)  # judged queries whose judged documents are all missing

    def to_json(self) -> dict[str, Any]:
        return {
            "judgements": self.judgements,
            "documents": len(self.documents),
            "queries": len(self.queries),
            "sample": self.documents[:MISSING_SAMPLE],
        }

    def message(self, qrels_name: str) -> str:
        """One line for the terminal, the report and the UI."""
        n, j, q = len(self.documents), self.judgements, len(self.queries)
        sample = ", ".join(repr(d) for d in self.documents[:MISSING_SAMPLE])
        sample = f"e.g. {sample}" if n > 1 else sample
        text = (
            f"{qrels_name} names {plural(n, 'document')} missing from the corpus ({sample}); "
            + (
                "its judgement is scored as a miss (a relevant document never retrieved)"
                if j == 1
                else f"their {j} judgements are scored as misses (relevant documents never retrieved)"
            )
            + ", as BEIR does"
        )
        if q:
            verbs = "judges only missing documents and scores" if q == 1 else "judge only missing documents and score"
            text += f"; {plural(q, 'query', 'queries')} {verbs} 0"
        return text


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


@dataclass
class BeirDataset:
    root: Path
    corpus: dict[str, dict[str, str]]  # doc id -> {"title", "text"}
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> relevance (> 0 only); may name missing documents
    split: str
    missing: MissingDocuments = field(default_factory=MissingDocuments)

    @property
    def name(self) -> str:
        return self.root.name

    def warnings(self) -> list[str]:
        """What a reader of the scores should know about the data: printed before the run, kept in the report."""
        return [self.missing.message(f"qrels/{self.split}.tsv")] if self.missing.judgements else []

    def corpus_digest(self) -> str:
        """Names the files folder, so an edited corpus never reuses another's files."""
        h = hashlib.sha256()
        for doc_id in sorted(self.corpus):
            h.update(json.dumps([doc_id, document_text(self.corpus[doc_id])], ensure_ascii=False).encode())
        return h.hexdigest()[:12]


@dataclass
class QAItem:
    id: str
    question: str
    answers: list[str]
    gold_doc_ids: list[str] = field(default_factory=list)
    answerable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # other fields (article, split, ...)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "answers": self.answers,
            "gold_doc_ids": self.gold_doc_ids,
            "answerable": self.answerable,
            **self.extra,
        }


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a bad line is an error naming it."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _field(path: Path, lineno: int, obj: dict[str, Any], key: str, kind: type = str) -> Any:
    if key not in obj:
        raise DatasetError(f"{path}:{lineno}: missing field {key!r}")
    value = obj[key]
    if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # BEIR ids are sometimes numbers
    if not isinstance(value, kind):
        raise DatasetError(f"{path}:{lineno}: field {key!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def load_corpus(path: Path) -> dict[str, dict[str, str]]:
    corpus: dict[str, dict[str, str]] = {}
    for lineno, obj in read_jsonl(path):
        doc_id = _field(path, lineno, obj, "_id")
        text = _field(path, lineno, obj, "text")
        title = obj.get("title") or ""
        if doc_id in corpus:
            raise DatasetError(f"{path}:{lineno}: duplicate document id {doc_id!r}")
        corpus[doc_id] = {"title": str(title), "text": text}
    if not corpus:
        raise DatasetError(f"{path}: no documents")
    return corpus


def load_queries(path: Path) -> dict[str, str]:
    return {_field(path, lineno, obj, "_id"): _field(path, lineno, obj, "text") for lineno, obj in read_jsonl(path)}


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """TREC-style TSV (query-id, corpus-id, score) with an optional header; score 0 = not relevant."""
    if not path.is_file():
        splits = sorted(p.stem for p in path.parent.glob("*.tsv"))
        raise DatasetError(f"{path}: file not found (splits here: {', '.join(splits) or 'none'})")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not row or not "".join(row).strip():
                continue
            if lineno == 1 and row[-1].strip().lower() == "score":
                continue
            if len(row) == 4:  # TREC qrels: qid 0 docid score
                row = [row[0], row[2], row[3]]
            if len(row) != 3:
                raise DatasetError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(row)}")
            qid, doc_id, score = (c.strip() for c in row)
            try:
                rel = int(float(score))
            except ValueError as exc:
                raise DatasetError(f"{path}:{lineno}: score {score!r} is not a number") from exc
            if rel > 0:
                qrels.setdefault(qid, {})[doc_id] = rel
    return qrels


def load_beir(root: Path, split: str = "test") -> BeirDataset:
    """A BEIR folder; only queries judged in `split` are kept, as BEIR's GenericDataLoader does.

    A judged query missing from queries.jsonl is an error (BEIR's loader fails there too: the query
    cannot be run).  Judged documents missing from the corpus are not: BEIR scores them as misses,
    so they are kept, and counted in `missing` for the warning and the report."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (a BEIR dataset has corpus.jsonl, queries.jsonl, qrels/)")
    corpus = load_corpus(root / "corpus.jsonl")
    queries = load_queries(root / "queries.jsonl")
    qrels = load_qrels(root / "qrels" / f"{split}.tsv")
    missing_q = sorted(set(qrels) - set(queries))
    if missing_q:
        raise DatasetError(f"{root}: qrels/{split}.tsv judges {len(missing_q)} unknown queries, e.g. {missing_q[0]!r}")
    missing = missing_documents(qrels, corpus)
    return BeirDataset(root, corpus, {q: queries[q] for q in qrels}, qrels, split, missing)


def missing_documents(qrels: dict[str, dict[str, int]], corpus: dict[str, Any]) -> MissingDocuments:
    """The judgements whose document is not in the corpus, counted (see MissingDocuments)."""
    found = MissingDocuments()
    for qid, rels in qrels.items():
        absent = [d for d in rels if d not in corpus]
        found.judgements += len(absent)
        found.documents.extend(absent)
        if absent and len(absent) == len(rels):
            found.queries.append(qid)
    found.documents = list(dict.fromkeys(found.documents))
    return found


def document_text(doc: dict[str, str]) -> str:
    """Title and text, as BEIR baselines index them."""
    return f"{doc['title']}\n\n{doc['text']}" if doc.get("title") else doc["text"]


def doc_file_name(doc_id: str) -> str:
    return quote(doc_id, safe="") + ".txt"


def doc_id_of(path: str) -> str:
    """The corpus id a written document file stands for (inverse of doc_file_name)."""
    name = path.rsplit("/", 1)[-1]
    return unquote(name.removesuffix(".txt"))


def write_corpus(corpus: dict[str, dict[str, str]], folder: Path) -> Path:
    """One text file per document.  Files already holding the same text are left alone, so their
    mtimes stay put and a re-ingest skips them without reading."""
    folder.mkdir(parents=True, exist_ok=True)
    for doc_id, doc in corpus.items():
        path = folder / doc_file_name(doc_id)
        data = document_text(doc).encode("utf-8")
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            continue
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return folder


# ---- QA sets -------------------------------------------------------------------------------
def load_qa(path: Path, split: str | None = None) -> list[QAItem]:
    """A QA file: one `{"id", "question", "answers": [...], "gold_doc_ids"?, "answerable"?}` per line.
    With `split`, only items whose "split" field equals it (sets without that field are refused)."""
    items: list[QAItem] = []
    seen: set[str] = set()
    for lineno, obj in read_jsonl(Path(path)):
        item_id = _field(path, lineno, obj, "id")
        question = _field(path, lineno, obj, "question")
        answers = _field(path, lineno, obj, "answers", list)
        answerable = obj.get("answerable", bool(answers))
        if not isinstance(answerable, bool):
            raise DatasetError(f"{path}:{lineno}: field 'answerable' should be true or false")
        if answerable and not answers:
            raise DatasetError(f"{path}:{lineno}: an answerable question needs at least one answer")
        if item_id in seen:
            raise DatasetError(f"{path}:{lineno}: duplicate id {item_id!r}")
        seen.add(item_id)
        gold = [str(g) for g in obj.get("gold_doc_ids") or []]
        known = {"id", "question", "answers", "gold_doc_ids", "answerable"}
        extra = {k: v for k, v in obj.items() if k not in known}
        items.append(QAItem(item_id, question, [str(a) for a in answers], gold, answerable, extra))
    if split is not None:
        if items and not any("split" in it.extra for it in items):
            raise DatasetError(f"{path}: --split {split} given but the items have no 'split' field")
        items = [it for it in items if it.extra.get("split") == split]
    if not items:
        raise DatasetError(f"{path}: no questions" + (f" in split {split!r}" if split else ""))
    return items


def sample(items: list[QAItem], limit: int | None, seed: int = 0) -> list[QAItem]:
    """A reproducible subset, keeping the file's order (so reports line up across runs)."""
    if limit is None or limit >= len(items):
        return items
    keep = set(random.Random(seed).sample(range(len(items)), limit))
    return [it for i, it in enumerate(items) if i in keep]


def write_qa(items: list[QAItem], path: Path) -> None:
    write_jsonl(path, (it.to_json() for it in items))


def beir_to_qa(root: Path, split: str, *, need_answers: bool = True) -> list[QAItem]:
    """A BEIR folder whose `answers.jsonl` holds `{"_id", "answers"}` per query (CMRC2018 as shipped
    here) as a QA set: gold documents from the qrels, every question answerable.  Without
    `need_answers`, a folder with no answers.jsonl (SciFact, NFCorpus) gives its judged queries
    with their gold documents only (what training a reranker needs)."""
    root = Path(root)
    queries = load_queries(root / "queries.jsonl")
    qrels = load_qrels(root / "qrels" / f"{split}.tsv")
    answers_path = root / "answers.jsonl"
    answers: dict[str, list] = {}
    if need_answers or answers_path.is_file():
        answers = {
            _field(answers_path, n, o, "_id"): _field(answers_path, n, o, "answers", list)
            for n, o in read_jsonl(answers_path)
        }
    items = []
    for qid, text in queries.items():
        if qid not in qrels or (need_answers and not answers.get(qid)):
            continue
        golds = list(dict.fromkeys(str(a) for a in answers.get(qid, [])))  # annotators often repeat a span
        items.append(QAItem(qid, text, golds, sorted(qrels[qid]), True, {"split": split}))
    if not items:
        wanted = f"both qrels/{split}.tsv entries and answers" if need_answers else f"qrels/{split}.tsv entries"
        raise DatasetError(f"{root}: no query has {wanted}")
    return items
